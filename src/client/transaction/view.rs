//! What a transaction-mode client was told of the server's parameters (ParameterStatus), kept
//! as the differences from the pool's shared greeting: most clients of one application differ
//! in nothing or a value or two, and an idle client should cost next to nothing.

use crate::pool::ServerParams;

/// The parameters a client was last told.
pub(super) struct ParamView {
    base: ServerParams,
    /// (name, value) where the client was told otherwise than `base` says.
    changed: Vec<(String, String)>,
}

impl ParamView {
    /// The view of a client greeted with `greeted`, over the pool's greeting `base`.
    pub(super) fn new(base: ServerParams, greeted: &[(String, String)]) -> ParamView {
        let mut view = ParamView { base, changed: Vec::new() };
        view.update(greeted);
        view
    }

    /// What the client was told of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        let changed = self.changed.iter().find(|(n, _)| n == name);
        changed.or_else(|| self.base.iter().find(|(n, _)| n == name)).map(|(_, v)| v.as_str())
    }

    /// The parameters among `current` whose values differ from what the client was told, as
    /// (name, value): what a ParameterStatus must now tell it.
    pub(super) fn differences<'a>(&self, current: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
        current
            .iter()
            .filter(|(name, value)| self.get(name).is_some_and(|seen| seen != value))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    /// The client has now been told `current`.
    pub(super) fn update(&mut self, current: &[(String, String)]) {
        for (name, value) in current {
            let in_base = self.base.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            self.changed.retain(|(n, _)| n != name);
            if in_base != Some(value) {
                self.changed.push((name.clone(), value.clone()));
            }
        }
        if self.changed.is_empty() {
            self.changed = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_what_the_client_was_not_told_is_different() {
        let base: ServerParams = params(&[("application_name", ""), ("TimeZone", "UTC")]).into();
        let mut view = ParamView::new(base, &params(&[("application_name", "psql"), ("TimeZone", "UTC")]));
        assert_eq!(view.changed.len(), 1, "only the application name differs from the greeting");
        let server = params(&[("application_name", "psql"), ("TimeZone", "Europe/Paris")]);
        assert_eq!(view.differences(&server), [("TimeZone", "Europe/Paris")]);
        view.update(&server);
        assert!(view.differences(&server).is_empty());
        view.update(&params(&[("application_name", ""), ("TimeZone", "UTC")]));
        assert!(view.changed.is_empty() && view.changed.capacity() == 0);
    }
}
