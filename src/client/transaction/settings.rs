//! The settings a transaction-mode client's session carries: its startup parameters and what it
//! changed since with a session-level SET, so that every server connection it gets is brought
//! to them first (a checkout SETs what differs), and none of them leaks to another client.
//!
//! A SET, RESET or RESET ALL counts once the server says it took effect outside any
//! transaction block: a simple query (with any statements but transaction control around it),
//! or a batch whose one Bind runs it, that ends idle and without an error. Anything else that
//! changes a setting (inside a transaction block, next to a BEGIN or ROLLBACK, a RESET of a
//! startup parameter) pins the client instead: its server connection then carries the truth.
//!
//! RESET ALL takes the server connection back to its own defaults, which are the client's
//! startup parameters only if the connection was opened with them: what the connection carries
//! afterwards is worked out from its own startup parameters, so the next checkout brings it
//! back to the client's.

use std::sync::Arc;

use crate::protocol::{StartupParams, TransactionStatus};
use crate::sql;

/// One change a statement makes to the session's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Set(String, String),
    Reset(String),
    ResetAll,
}

/// The changes one SQL text makes, if they are of the kind that can be carried.
pub(super) type Changes = Arc<[Change]>;

/// What a statement's settings changes come to.
pub(super) enum Outcome {
    /// None.
    Nothing,
    /// These, once the server says they took effect.
    Track(Changes),
    /// Something only the server connection can carry.
    Pin,
}

/// The client's settings.
pub(super) struct Settings {
    startup: StartupParams,
    wanted: StartupParams,
    /// The changes since a RESET ALL in the current attach, if there was one: the server
    /// connection carries its own defaults with these on top.
    since_reset_all: Option<Vec<Change>>,
}

impl Settings {
    pub(super) fn new(startup: StartupParams) -> Settings {
        Settings { wanted: startup.clone(), startup, since_reset_all: None }
    }

    /// What a server connection must carry to serve the client.
    pub(super) fn wanted(&self) -> &StartupParams {
        &self.wanted
    }

    /// What the statements of one SQL text do to the settings.
    pub(super) fn outcome(&self, statements: &[sql::Statement]) -> Outcome {
        let mut changes = Vec::new();
        for statement in statements {
            changes.push(match statement {
                sql::Statement::Set { name, value } => Change::Set(name.clone(), value.clone()),
                // RESET goes back to the session's own default, which for a startup parameter
                // the server connection may not share.
                sql::Statement::Reset { name } if spelled(&self.startup, name).is_some() => return Outcome::Pin,
                sql::Statement::Reset { name } => Change::Reset(name.clone()),
                sql::Statement::ResetAll => Change::ResetAll,
                _ => continue,
            });
        }
        if changes.is_empty() {
            Outcome::Nothing
        } else if statements.contains(&sql::Statement::TransactionControl) {
            // A ROLLBACK among them may undo the change, a BEGIN keep it in a block.
            Outcome::Pin
        } else {
            Outcome::Track(changes.into())
        }
    }

    /// Applies `changes`, which the server carried out and which ended with `status`; false
    /// if they happened inside a transaction block that is still open, so only the server
    /// connection knows whether they will last.
    pub(super) fn apply(&mut self, changes: &[Change], status: TransactionStatus) -> bool {
        if status != TransactionStatus::Idle {
            return false;
        }
        for change in changes {
            change_params(&mut self.wanted, change, &self.startup);
            match (change, &mut self.since_reset_all) {
                (Change::ResetAll, since) => *since = Some(Vec::new()),
                (change, Some(since)) => since.push(change.clone()),
                (_, None) => {}
            }
        }
        true
    }

    /// What a server connection opened with `opened_with` carries once the client is done
    /// with it (for the pool to know at the next checkout).
    pub(super) fn carried(&mut self, opened_with: &StartupParams) -> StartupParams {
        match self.since_reset_all.take() {
            None => self.wanted.clone(),
            Some(changes) => {
                let mut carried = opened_with.clone();
                for change in &changes {
                    change_params(&mut carried, change, opened_with);
                }
                carried
            }
        }
    }
}

/// Applies `change` to `params`, whose session defaults are `defaults`.
fn change_params(params: &mut StartupParams, change: &Change, defaults: &StartupParams) {
    match change {
        Change::Set(name, value) => {
            let name = spelled(params, name).unwrap_or(name).to_owned();
            params.set(&name, value);
        }
        Change::Reset(name) => {
            if let Some(name) = spelled(params, name).map(str::to_owned) {
                params.remove(&name);
            }
        }
        Change::ResetAll => *params = defaults.clone(),
    }
}

/// How `params` spells setting `name` (setting names are case-insensitive), if it has it.
fn spelled<'a>(params: &'a StartupParams, name: &str) -> Option<&'a str> {
    params.iter().map(|(key, _)| key).find(|key| key.eq_ignore_ascii_case(name))
}

/// The settings changes of the batch the client is sending (extended protocol, up to its
/// Sync): tracked only if the batch began with the server idle and runs exactly one Bind.
#[derive(Default)]
pub(super) struct Batch {
    began: bool,
    clean: bool,
    binds: u32,
    changes: Option<Changes>,
}

impl Batch {
    /// A message of the batch; `idle` says whether the server owes nothing and is outside a
    /// transaction block.
    pub(super) fn message(&mut self, idle: bool) {
        if !self.began {
            self.began = true;
            self.clean = idle;
        }
    }

    /// A Bind of a statement that makes `changes`.
    pub(super) fn bind(&mut self, changes: Option<Changes>) {
        self.binds += 1;
        if changes.is_some() {
            self.changes = changes;
        }
    }

    /// The Sync: what the batch comes to; the next one begins.
    pub(super) fn sync(&mut self) -> Outcome {
        let batch = std::mem::take(self);
        match batch.changes {
            None => Outcome::Nothing,
            Some(changes) if batch.clean && batch.binds == 1 => Outcome::Track(changes),
            Some(_) => Outcome::Pin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> StartupParams {
        pairs.iter().copied().collect()
    }

    fn track(settings: &Settings, sql: &str) -> Changes {
        match settings.outcome(&sql::classify(sql)) {
            Outcome::Track(changes) => changes,
            _ => panic!("{sql} is not tracked"),
        }
    }

    #[test]
    fn sets_next_to_other_statements_are_tracked_but_not_next_to_transaction_control() {
        let settings = Settings::new(params(&[("application_name", "psql")]));
        assert_eq!(track(&settings, "SET work_mem = '8MB'").len(), 1);
        assert_eq!(track(&settings, "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;").len(), 1);
        for pinned in ["BEGIN; SET work_mem = '8MB'", "SET work_mem = '8MB'; ROLLBACK", "RESET application_name"] {
            assert!(matches!(settings.outcome(&sql::classify(pinned)), Outcome::Pin), "{pinned}");
        }
        assert!(matches!(settings.outcome(&sql::classify("SELECT 1; COMMIT")), Outcome::Nothing));
    }

    #[test]
    fn a_change_counts_only_outside_a_transaction_block() {
        let mut settings = Settings::new(params(&[]));
        assert!(!settings.apply(&track(&settings, "SET work_mem = '8MB'"), TransactionStatus::InTransaction));
        assert!(settings.apply(&track(&settings, "SET work_mem = '8MB'"), TransactionStatus::Idle));
        assert_eq!(settings.wanted().get("work_mem"), Some("8MB"));
        assert!(settings.apply(&track(&settings, "RESET work_mem"), TransactionStatus::Idle));
        assert_eq!(settings.wanted().get("work_mem"), None);
    }

    #[test]
    fn after_reset_all_the_connection_carries_its_own_defaults_and_what_followed() {
        let mut settings = Settings::new(params(&[("application_name", "app")]));
        settings.apply(&track(&settings, "SET work_mem = '8MB'"), TransactionStatus::Idle);
        let opened_with = params(&[("application_name", "other")]);
        assert_eq!(settings.carried(&opened_with), params(&[("application_name", "app"), ("work_mem", "8MB")]));
        settings.apply(&track(&settings, "RESET ALL; SET statement_timeout = '5s'"), TransactionStatus::Idle);
        assert_eq!(settings.wanted(), &params(&[("application_name", "app"), ("statement_timeout", "5s")]));
        assert_eq!(
            settings.carried(&opened_with),
            params(&[("application_name", "other"), ("statement_timeout", "5s")])
        );
        assert_eq!(settings.carried(&opened_with), *settings.wanted(), "until the next RESET ALL");
    }
}
