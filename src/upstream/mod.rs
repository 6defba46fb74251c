//! The upstream side: verified-TLS connections to the real PostgreSQL, the login on them, the
//! [`Connect`] trait through which the pool asks for connections, the server connection with
//! what it owes and has prepared, and the few conversations the proxy holds itself (session
//! reset, applying client settings).

mod connect;
mod connection;
mod connector;
mod error;
mod login;
mod prepared;
mod state;
mod stream;

pub use connect::{Endpoint, MovableHost};
pub(crate) use connection::RelayParts;
pub use connection::ServerConnection;
pub use connector::{Connect, Connector, HostResolver};
pub use error::ConnectError;
pub use prepared::{PreparedStatements, StatementId, UnnamedOwner, close_statement_body, server_statement_name};
pub(crate) use state::{Delivery, Sent};
pub use state::{ProtocolState, Settled, StatementEffect, Token};
pub use stream::{ServerStream, UpstreamStream};
