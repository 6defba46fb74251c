//! The client side: listening sockets, the startup handshake, and the session that ties a
//! client to an upstream connection.

mod admin;
mod handshake;
mod listener;
mod request;
mod session;
mod stream;

pub use handshake::HandshakeError;
pub use listener::{Listener, Peer};
pub use session::{SessionError, TargetContext};
pub use stream::ClientStream;
