//! Accepting client connections on TCP and unix sockets.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info, warn};

use crate::metrics;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;
use crate::shutdown::Shutdown;

use super::phases::TargetContext;
use super::session::serve;
use super::stream::{ClientStream, Peer};

/// A bound listening socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket at this path (removed again when the listener is dropped).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds TCP.
    pub async fn tcp(address: SocketAddr) -> io::Result<Listener> {
        Ok(Listener::Tcp(TcpListener::bind(address).await?))
    }

    /// Binds `dir/.s.PGSQL.<port>`, the name libpq looks for with `host=dir`. A socket file
    /// left behind by a process that died is replaced; one that still answers is not.
    pub async fn unix(dir: &Path, port: u16) -> io::Result<Listener> {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if path.exists() {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        Ok(Listener::Unix(UnixListener::bind(&path)?, path))
    }

    /// What it listens on, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }

    /// The TCP address, if this is a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    async fn accept(&self) -> io::Result<(ClientStream, Peer)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, address) = listener.accept().await?;
                // Small protocol messages must not wait for Nagle's algorithm.
                stream.set_nodelay(true)?;
                Ok((ClientStream::Tcp(stream), Peer::Tcp(address)))
            }
            Listener::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                Ok((ClientStream::Unix(stream), Peer::Unix))
            }
        }
    }

    /// Accepts clients and serves each in its own task until the proxy shuts down or `removed`
    /// fires. Beyond
    /// the client limit, a new client gets SQLSTATE 53300 and is closed.
    pub async fn run(self, ctx: Arc<TargetContext>, mut removed: Shutdown) {
        info!(listen = %self.describe(), target = %ctx.target, "accepting clients");
        let mut shutdown = ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.requested() => break,
                // A reload removed this target.
                _ = removed.requested() => break,
                accepted = self.accept() => match accepted {
                    Ok((stream, peer)) => match ctx.client_slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            metrics::client_accepted(&ctx.pools.upstream().label);
                            ctx.sessions.spawn(serve(stream, peer, ctx.clone(), slot));
                        }
                        Err(_) => {
                            ctx.sessions.spawn(refuse_over_limit(stream, peer));
                        }
                    },
                    Err(error) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        error!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// Tells a client beyond `--max-client-connections` so, as PostgreSQL does, and closes.
async fn refuse_over_limit(mut stream: ClientStream, peer: Peer) {
    warn!(%peer, "client refused: --max-client-connections reached");
    metrics::client_refused("limit");
    let mut buf = bytes::BytesMut::new();
    ErrorFields::new(Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already")
        .with_hint("lakebase-proxy's --max-client-connections is reached.")
        .write_error(&mut buf);
    // The client's startup packet is not read: the error needs no protocol negotiation, and a
    // slow client must not hold the task. Closing may reset the connection; that is fine.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Leave no socket file behind for the next start to trip over.
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
