//! Ports for servers the tests start.

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before the caller binds it, so another process may take it in
/// between: a caller that can tell a failed bind apart retries with a new one (as
/// [`crate::postgres::PgServer`] does).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
