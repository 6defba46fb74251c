//! The transport under a server connection: verified TLS in production, an in-memory pipe
//! where tests stand in for the server (the pool's and the relay's unit tests).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use super::ConnectError;
use crate::protocol::frame::{MAX_BUFFERED_MESSAGE, read_message};

/// The upstream TLS transport.
pub type UpstreamStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A server connection's transport.
// The TLS stream is the one production uses; boxing it to even out the sizes would add an
// indirection to every relayed read and write.
#[allow(clippy::large_enum_variant)]
pub enum ServerStream {
    /// TLS over TCP to the real server.
    Tls(UpstreamStream),
    /// An in-memory pipe to a stand-in server.
    Memory(DuplexStream),
}

impl ServerStream {
    /// A cheap check that an idle connection is still there: the server sends nothing to an
    /// idle session, so readable bytes (a FATAL before a shutdown) or EOF mean it is gone.
    pub fn looks_alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            // Peek at the socket under TLS: nothing to read means nothing happened.
            ServerStream::Tls(stream) => matches!(stream.get_ref().0.poll_peek(&mut cx, &mut buf), Poll::Pending),
            // A pipe cannot peek; reading is as good, since a connection with anything to
            // read is discarded anyway.
            ServerStream::Memory(pipe) => matches!(Pin::new(pipe).poll_read(&mut cx, &mut buf), Poll::Pending),
        }
    }
}

/// Reads one whole server message in a conversation the proxy holds itself (the login, its
/// own queries), where the server closing the connection is an error.
pub(super) async fn read_server_message<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    inbound: &mut BytesMut,
) -> Result<(u8, Bytes), ConnectError> {
    read_message(stream, inbound, MAX_BUFFERED_MESSAGE)
        .await?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof).into())
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
            ServerStream::Memory(pipe) => Pin::new(pipe).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tls(stream) => Pin::new(stream).poll_write(cx, data),
            ServerStream::Memory(pipe) => Pin::new(pipe).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(stream) => Pin::new(stream).poll_flush(cx),
            ServerStream::Memory(pipe) => Pin::new(pipe).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
            ServerStream::Memory(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
    }
}
