use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client connection: TCP, a unix socket, or TCP upgraded to TLS after SSLRequest.
pub enum ClientStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A unix-domain socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Between giving up TCP and receiving TLS; only seen if a handshake failed midway.
    Upgrading,
}

impl ClientStream {
    /// Performs the server side of a TLS handshake on a TCP stream in place.
    pub async fn upgrade_to_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let ClientStream::Tcp(tcp) = std::mem::replace(self, ClientStream::Upgrading) else {
            return Err(io::Error::other("TLS is only offered on plain TCP connections"));
        };
        *self = ClientStream::Tls(Box::new(TlsAcceptor::from(config).accept(tcp).await?));
        Ok(())
    }

    /// True for TCP connections (TLS or not), where TLS can be offered.
    pub fn is_tcp(&self) -> bool {
        matches!(self, ClientStream::Tcp(_))
    }

    /// Waits for the client's next bytes and returns them (empty when it closed). Idle
    /// clients wait on socket readiness, holding no heap buffer until something arrives.
    pub async fn read_some(&mut self) -> io::Result<BytesMut> {
        // Readiness can be stale (left over from the startup read): `try_read` tells, and a
        // `WouldBlock` clears it so the next wait really parks.
        let mut first = [0u8; 512];
        let read = match self {
            ClientStream::Tcp(tcp) => loop {
                tcp.readable().await?;
                match tcp.try_read(&mut first) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => break result?,
                }
            },
            ClientStream::Unix(unix) => loop {
                unix.readable().await?;
                match unix.try_read(&mut first) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => break result?,
                }
            },
            ClientStream::Tls(_) | ClientStream::Upgrading => {
                let mut buf = BytesMut::with_capacity(8 * 1024);
                self.read_buf(&mut buf).await?;
                return Ok(buf);
            }
        };
        Ok(BytesMut::from(&first[..read]))
    }
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            ClientStream::Tcp($stream) => $call,
            ClientStream::Unix($stream) => $call,
            ClientStream::Tls($stream) => $call,
            ClientStream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    };
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Where a client connected from.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A unix-socket peer (only local users can reach it; file permissions guard it).
    Unix,
}

impl Peer {
    /// Loopback and unix-socket clients are trusted without a password.
    pub fn is_trusted(&self) -> bool {
        match self {
            Peer::Tcp(address) => address.ip().is_loopback(),
            Peer::Unix => true,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}
