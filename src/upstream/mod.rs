//! The upstream side: verified-TLS connections to the real PostgreSQL, the login on them, and
//! the few conversations the proxy holds itself (session reset, applying client settings).

mod connect;
mod connection;
mod error;
mod login;

pub use connect::Endpoint;
pub use connection::{ServerConnection, UpstreamStream};
pub use error::ConnectError;
