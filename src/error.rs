//! What clients are told when something fails.
//!
//! Each module has its own error type; those a client can see implement [`UserFacing`], which
//! decides the SQLSTATE and the words. Messages say what to do and never carry secrets.

use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;

/// An error that can be reported to a PostgreSQL client as an ErrorResponse.
pub trait UserFacing: std::fmt::Display {
    /// The ErrorResponse fields to send. The default is a FATAL `08006` with this error's
    /// text; connection errors override it with something more precise.
    fn to_client(&self) -> ErrorFields {
        ErrorFields::new(Severity::Fatal, sqlstate::CONNECTION_FAILURE, format!("lakebase-proxy: {self}"))
    }
}
