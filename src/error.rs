//! What clients are told when something fails.
//!
//! Each module has its own error type; those a client can see implement [`UserFacing`], which
//! decides the SQLSTATE and the words. Messages say what to do and never carry secrets.

use crate::protocol::messages::{ErrorFields, Severity};

/// An error that can be reported to a PostgreSQL client as an ErrorResponse.
pub trait UserFacing: std::fmt::Display {
    /// The ErrorResponse fields to send. The default is a FATAL `08006` with this error's
    /// text; connection errors override it with something more precise.
    fn to_client(&self) -> ErrorFields {
        ErrorFields::new(Severity::Fatal, sqlstate::CONNECTION_FAILURE, format!("lakebase-proxy: {self}"))
    }
}

/// The SQLSTATE codes the proxy itself reports.
pub mod sqlstate {
    /// The upstream cannot be reached or refused the connection before login.
    pub const CONNECTION_UNABLE: &str = "08001";
    /// The connection failed after it was made.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// The client broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The client asked for something the proxy does not do.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Credentials are missing or refused.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// No free connection within the wait limit, or too many clients.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// The proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
}
