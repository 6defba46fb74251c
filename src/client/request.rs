//! What a client asked for in its startup message, mapped onto the target, and the
//! greeting messages that complete its login.

use bytes::BytesMut;

use super::error::SessionError;
use super::handshake::SessionStartup;
use crate::pool::PoolKey;
use crate::protocol::messages;
use crate::protocol::{CancelKey, StartupParams, TransactionStatus};
use crate::target::Target;

/// A client's startup value for `name` as the server would report it, where that is known to
/// differ: `client_encoding` names are canonicalised (`'utf-8'` is reported as `UTF8`).
pub(super) fn canonical_setting(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("client_encoding") {
        let value = value.trim().trim_matches('\'');
        let compact: String = value.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_uppercase();
        return match compact.as_str() {
            "UTF8" | "UNICODE" => "UTF8".to_owned(),
            "SQLASCII" => "SQL_ASCII".to_owned(),
            _ => value.to_ascii_uppercase(),
        };
    }
    value.to_owned()
}

/// Writes what completes a login after AuthenticationOk: parameters, cancel key, ReadyForQuery.
pub(super) fn write_ready<'a>(buf: &mut BytesMut, params: impl Iterator<Item = (&'a str, &'a str)>, key: CancelKey) {
    for (name, value) in params {
        messages::parameter_status(buf, name, value);
    }
    messages::backend_key_data(buf, key);
    messages::ready_for_query(buf, TransactionStatus::Idle);
}

/// A client's startup message turned into what the pool needs.
pub(super) struct SessionRequest {
    pub(super) key: PoolKey,
    /// Startup parameters to reproduce upstream (besides user and database).
    pub(super) params: StartupParams,
    startup: SessionStartup,
}

impl SessionRequest {
    /// Maps the client's startup onto the target. The upstream role is the target's user when
    /// it names one, else the client's. The database is the client's, except that a client
    /// naming none, or libpq's default (the user name), gets the target's database.
    pub(super) fn new(mut startup: SessionStartup, target: &Target) -> Result<SessionRequest, SessionError> {
        if startup.params.get("replication").is_some_and(|v| v != "false" && v != "off" && v != "0") {
            return Err(SessionError::Replication);
        }
        let mut params = startup.params.clone();
        let client_user = params.remove("user").unwrap_or_default();
        let client_database = params.remove("database").filter(|db| !db.is_empty());
        params.remove("replication");
        let database = match (client_database, &target.database) {
            (Some(db), Some(default)) if db == client_user => default.clone(),
            (Some(db), _) => db,
            (None, Some(default)) => default.clone(),
            (None, None) => target.user.clone().unwrap_or_else(|| client_user.clone()),
        };
        let user = target.user.clone().unwrap_or(client_user);
        let options = params.get("options").map(str::to_owned);
        startup.params = StartupParams::default();
        Ok(SessionRequest { key: PoolKey { database, user, options }, params, startup })
    }

    /// Writes the protocol negotiation, if needed, and AuthenticationOk.
    pub(super) fn write_authentication(&self, buf: &mut BytesMut) {
        if self.startup.needs_negotiation() {
            messages::negotiate_protocol_version(buf, 0, &self.startup.protocol_options);
        }
        messages::authentication_ok(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(params: &[(&str, &str)], target: &str) -> SessionRequest {
        let startup = SessionStartup { minor: 0, params: params.iter().copied().collect(), protocol_options: vec![] };
        SessionRequest::new(startup, &target.parse().unwrap()).unwrap()
    }

    #[test]
    fn libpq_defaults_land_in_the_target_database() {
        let r = request(
            &[("user", "root"), ("database", "root"), ("application_name", "psql")],
            "postgresql://app@h/sales",
        );
        assert_eq!(r.key, PoolKey { database: "sales".into(), user: "app".into(), options: None });
        assert_eq!(r.params.get("application_name"), Some("psql"));
        assert_eq!(r.params.get("user"), None);
    }

    #[test]
    fn an_explicit_database_wins() {
        let r = request(&[("user", "root"), ("database", "other"), ("options", "-c x=1")], "postgresql://app@h/sales");
        assert_eq!(r.key.database, "other");
        assert_eq!(r.key.options.as_deref(), Some("-c x=1"));
        let r = request(&[("user", "bob")], "postgresql://h");
        assert_eq!((r.key.user.as_str(), r.key.database.as_str()), ("bob", "bob"));
    }

    #[test]
    fn client_encodings_are_reported_canonically() {
        assert_eq!(canonical_setting("client_encoding", "'utf-8'"), "UTF8");
        assert_eq!(canonical_setting("client_encoding", "unicode"), "UTF8");
        assert_eq!(canonical_setting("client_encoding", "sql_ascii"), "SQL_ASCII");
        assert_eq!(canonical_setting("client_encoding", "latin1"), "LATIN1");
        assert_eq!(canonical_setting("application_name", "My App"), "My App");
    }

    #[test]
    fn replication_is_refused() {
        let startup = SessionStartup {
            minor: 0,
            params: [("user", "a"), ("replication", "database")].into_iter().collect(),
            protocol_options: vec![],
        };
        assert!(matches!(
            SessionRequest::new(startup, &"postgresql://h".parse().unwrap()),
            Err(SessionError::Replication)
        ));
    }
}
