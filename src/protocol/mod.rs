//! The PostgreSQL wire protocol, as far as the proxy needs it.
//!
//! The proxy relays almost every message untouched; this module holds the few pieces it does
//! read or write: message framing, the untagged startup packets, and the handful of backend
//! messages the proxy composes itself (greeting, errors, notices).

pub mod codes;
pub mod frame;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use codes::{AuthRequest, TransactionStatus, backend, frontend};
pub use frame::{FrameHeader, HEADER_LEN};
pub use startup::{CancelKey, StartupParams, StartupRequest};
