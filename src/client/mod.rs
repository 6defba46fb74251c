//! The client side: listening sockets, the startup handshake, and the session that ties a
//! client to an upstream connection.

mod admin;
mod error;
mod handshake;
mod listener;
mod phases;
mod request;
mod session;
mod stream;
mod transaction;

pub use error::{SessionEnd, SessionError};
pub use handshake::HandshakeError;
pub use listener::Listener;
pub use phases::TargetContext;
pub use stream::{ClientStream, Peer};
