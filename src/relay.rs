//! The relay: moves messages between a client and its upstream connection in both directions
//! at once, unchanged, reading only the message headers (and ReadyForQuery's one-byte body)
//! so the pool can tell afterwards whether the upstream connection is clean enough to reuse.
//!
//! Both directions are driven from one task by polling, in the manner of
//! `tokio::io::copy_bidirectional`: no stream splitting, no locks, and all state stays
//! inspectable when the relay ends. Message bodies are streamed as they arrive, so a message
//! of any size costs at most one read buffer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use crate::protocol::frame::{FrameHeader, HEADER_LEN, MAX_BUFFERED_MESSAGE};
use crate::protocol::{TransactionStatus, backend, frontend};

/// Free space below which a read buffer grows before the next read.
const MIN_READ_SPACE: usize = 4 * 1024;
/// How much a read buffer grows by.
const READ_CHUNK: usize = 16 * 1024;
/// A drained buffer bigger than this is dropped so one burst does not pin memory for the
/// rest of a session.
const MAX_IDLE_CAPACITY: usize = 64 * 1024;

/// What the relay has seen of the session's transaction state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Sync points (Query, Sync, FunctionCall) sent whose ReadyForQuery has not come back.
    pub awaiting_ready: u32,
    /// Extended-protocol messages were sent after the last Sync.
    pub unsynced: bool,
    /// Transaction status of the last ReadyForQuery.
    pub transaction_status: TransactionStatus,
    /// The client sent at least one message.
    pub used: bool,
    /// ReadyForQuery messages seen: query round trips.
    pub round_trips: u64,
    /// Type of the last message the upstream sent; an ErrorResponse before a close means the server
    /// explained itself (a FATAL) and the client needs no further word.
    pub last_upstream_message: u8,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            awaiting_ready: 0,
            unsynced: false,
            transaction_status: TransactionStatus::Idle,
            used: false,
            last_upstream_message: 0,
            round_trips: 0,
        }
    }
}

impl SessionState {
    /// True when the upstream is idle outside any transaction with nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.awaiting_ready == 0 && !self.unsynced && self.transaction_status == TransactionStatus::Idle
    }

    fn client_message(&mut self, tag: u8) -> Flow {
        match tag {
            frontend::TERMINATE => return Flow::Stop,
            frontend::QUERY | frontend::FUNCTION_CALL => self.awaiting_ready += 1,
            frontend::SYNC => {
                self.awaiting_ready += 1;
                self.unsynced = false;
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::EXECUTE
            | frontend::DESCRIBE
            | frontend::CLOSE
            | frontend::FLUSH => self.unsynced = true,
            _ => {}
        }
        self.used = true;
        Flow::Forward
    }

    fn server_message(&mut self, tag: u8, body: &[u8]) -> Flow {
        self.last_upstream_message = tag;
        if tag == backend::READY_FOR_QUERY {
            self.round_trips += 1;
            self.awaiting_ready = self.awaiting_ready.saturating_sub(1);
            self.transaction_status = TransactionStatus::from_byte(body.first().copied().unwrap_or_default());
        }
        Flow::Forward
    }
}

/// Whether a scanned message is passed on or ends the relay (the client's Terminate, which
/// the upstream must not see: its connection goes back to the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Forward,
    Stop,
}

/// How one direction stopped.
#[derive(Debug)]
enum PumpEnd {
    Eof,
    Stopped,
}

/// An error in one direction, by where it happened.
#[derive(Debug)]
enum PumpError {
    Read(io::Error),
    Write(io::Error),
    Protocol(io::Error),
}

/// One direction's buffer and framing position.
#[derive(Debug, Default)]
struct Pipe {
    buf: BytesMut,
    /// Bytes at the front of `buf` that are scanned and may be written on.
    ready: usize,
    /// Body bytes of the current message still to come; they are forwarded unscanned.
    body_left: usize,
    unflushed: bool,
    stopped: bool,
    /// Bytes written on so far.
    forwarded: u64,
}

impl Pipe {
    /// Advances the framing over newly read bytes, asking `inspect` about each message.
    /// Messages for which `wants_body` is true are held until whole; all others stream.
    fn scan(&mut self, wants_body: impl Fn(u8) -> bool, mut inspect: impl FnMut(u8, &[u8]) -> Flow) -> io::Result<()> {
        while !self.stopped {
            if self.body_left > 0 {
                let take = self.body_left.min(self.buf.len() - self.ready);
                self.ready += take;
                self.body_left -= take;
                if self.body_left > 0 {
                    return Ok(());
                }
            }
            let Some(header) = FrameHeader::parse(&self.buf[self.ready..])? else {
                return Ok(());
            };
            let flow = if wants_body(header.tag) {
                if header.body_len > MAX_BUFFERED_MESSAGE {
                    return Err(crate::protocol::frame::invalid(format!(
                        "oversized '{}' message",
                        header.tag.escape_ascii()
                    )));
                }
                let Some(message) = self.buf.get(self.ready..self.ready + header.total_len()) else {
                    return Ok(());
                };
                let flow = inspect(header.tag, &message[HEADER_LEN..]);
                if flow == Flow::Forward {
                    self.ready += header.total_len();
                }
                flow
            } else {
                let flow = inspect(header.tag, &[]);
                if flow == Flow::Forward {
                    self.ready += HEADER_LEN;
                    self.body_left = header.body_len;
                }
                flow
            };
            self.stopped = flow == Flow::Stop;
        }
        Ok(())
    }

    /// Writes out what is ready, then reads and scans more, until the reader ends, the scan
    /// says stop, or either side would block.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        mut scan: impl FnMut(&mut Pipe) -> io::Result<()>,
    ) -> Poll<Result<PumpEnd, PumpError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.ready > 0 {
                let written =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[..self.ready])).map_err(PumpError::Write)?;
                if written == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.buf.advance(written);
                self.ready -= written;
                self.forwarded += written as u64;
                self.unflushed = true;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(PumpError::Write)?;
                self.unflushed = false;
                if self.buf.is_empty() && self.buf.capacity() > MAX_IDLE_CAPACITY {
                    self.buf = BytesMut::new();
                }
            }
            if self.stopped {
                return Poll::Ready(Ok(PumpEnd::Stopped));
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ_SPACE {
                self.buf.reserve(READ_CHUNK);
            }
            let read = ready!(poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf)).map_err(PumpError::Read)?;
            if read == 0 {
                return Poll::Ready(Ok(PumpEnd::Eof));
            }
            scan(self).map_err(PumpError::Protocol)?;
        }
    }

    /// True when everything read has been scanned and the last message is complete, so the
    /// stream this pipe reads from stands between two messages.
    fn read_to_message_boundary(&self) -> bool {
        self.body_left == 0 && self.buf.len() == self.ready
    }
}

/// Client messages are read by header alone.
fn scan_from_client(pipe: &mut Pipe, state: &mut SessionState) -> io::Result<()> {
    pipe.scan(|_| false, |tag, _| state.client_message(tag))
}

/// Upstream messages too, except ReadyForQuery, whose status byte the pool needs.
fn scan_from_upstream(pipe: &mut Pipe, state: &mut SessionState) -> io::Result<()> {
    pipe.scan(|tag| tag == backend::READY_FOR_QUERY, |tag, body| state.server_message(tag, body))
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The session reached an idle point and [`Relay::detach_when_idle`] was set.
    Idle,
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its connection or it failed.
    ClientGone(Option<io::Error>),
    /// The upstream closed its connection (after a FATAL, a shutdown) or it failed.
    UpstreamGone(Option<io::Error>),
    /// The client broke the message framing.
    ClientProtocolViolation(io::Error),
    /// The upstream broke the message framing.
    UpstreamProtocolViolation(io::Error),
}

/// Relays between `client` and `upstream` until one side ends; see [`RelayEnd`].
pub struct Relay {
    to_upstream: Pipe,
    to_client: Pipe,
    /// Transaction state as seen on the wire.
    pub state: SessionState,
    /// End with [`RelayEnd::Idle`] as soon as the session is idle outside a transaction with
    /// nothing in flight (a draining shutdown now; transaction pooling later).
    pub detach_when_idle: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new(SessionState::default())
    }
}

impl Relay {
    /// A relay for a session whose upstream is in `state`.
    pub fn new(state: SessionState) -> Relay {
        Relay { to_upstream: Pipe::default(), to_client: Pipe::default(), state, detach_when_idle: false }
    }

    /// Feeds bytes already read from either side (a client's first message read while
    /// deciding whether to attach, server messages read past a login) into the relay so they
    /// are forwarded before anything else.
    pub fn preload(&mut self, from_client: &[u8], from_upstream: &[u8]) -> io::Result<()> {
        self.to_upstream.buf.extend_from_slice(from_client);
        scan_from_client(&mut self.to_upstream, &mut self.state)?;
        self.to_client.buf.extend_from_slice(from_upstream);
        scan_from_upstream(&mut self.to_client, &mut self.state)
    }

    /// Runs until the client terminates or either side goes away.
    pub async fn run<C, U>(&mut self, client: &mut C, upstream: &mut U) -> RelayEnd
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        poll_fn(|cx| self.poll_run(cx, client, upstream)).await
    }

    fn poll_run<C, U>(&mut self, cx: &mut Context<'_>, client: &mut C, upstream: &mut U) -> Poll<RelayEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let state = &mut self.state;
        let outbound = self.to_upstream.poll_pump(cx, client, upstream, |pipe| scan_from_client(pipe, state));
        if let Poll::Ready(end) = outbound {
            return Poll::Ready(match end {
                Ok(PumpEnd::Stopped) => RelayEnd::ClientTerminated,
                Ok(PumpEnd::Eof) => RelayEnd::ClientGone(None),
                Err(PumpError::Read(error)) => RelayEnd::ClientGone(Some(error)),
                Err(PumpError::Write(error)) => RelayEnd::UpstreamGone(Some(error)),
                Err(PumpError::Protocol(error)) => RelayEnd::ClientProtocolViolation(error),
            });
        }
        let inbound = self.to_client.poll_pump(cx, upstream, client, |pipe| scan_from_upstream(pipe, state));
        match inbound {
            Poll::Pending if self.detach_when_idle && self.at_rest() => Poll::Ready(RelayEnd::Idle),
            Poll::Pending => Poll::Pending,
            Poll::Ready(end) => Poll::Ready(match end {
                Ok(PumpEnd::Eof | PumpEnd::Stopped) => RelayEnd::UpstreamGone(None),
                Err(PumpError::Read(error)) => RelayEnd::UpstreamGone(Some(error)),
                Err(PumpError::Write(error)) => RelayEnd::ClientGone(Some(error)),
                Err(PumpError::Protocol(error)) => RelayEnd::UpstreamProtocolViolation(error),
            }),
        }
    }

    /// Bytes sent to the upstream, bytes sent to the client, and ReadyForQuery messages seen
    /// (query round trips), for metrics.
    pub fn traffic(&self) -> (u64, u64, u64) {
        (self.to_upstream.forwarded, self.to_client.forwarded, self.state.round_trips)
    }

    /// Idle outside a transaction, nothing half-read from either side and nothing waiting to
    /// be written or flushed.
    fn at_rest(&self) -> bool {
        self.state.is_idle()
            && self.to_upstream.buf.is_empty()
            && self.to_upstream.body_left == 0
            && !self.to_upstream.unflushed
            && self.to_client.buf.is_empty()
            && self.to_client.body_left == 0
            && !self.to_client.unflushed
    }

    /// Whether the upstream connection can serve another client after the relay ended with
    /// `end`: the upstream is still there, idle outside a transaction, and neither direction
    /// stopped in the middle of a message.
    pub fn upstream_reusable(&self, end: &RelayEnd) -> bool {
        matches!(end, RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) | RelayEnd::Idle)
            && self.state.is_idle()
            // Whatever the client sent after its last whole message never reached the upstream.
            && self.to_upstream.body_left == 0
            && self.to_client.read_to_message_boundary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Runs a relay between two in-memory pipes; returns the far ends and the relay task.
    fn start() -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<(Relay, RelayEnd)>) {
        let (client_far, mut client_near) = duplex(64 * 1024);
        let (upstream_far, mut upstream_near) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut relay = Relay::default();
            let end = relay.run(&mut client_near, &mut upstream_near).await;
            (relay, end)
        });
        (client_far, upstream_far, task)
    }

    async fn read_exactly(stream: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn terminate_ends_the_relay_and_is_not_forwarded() {
        let (mut client, mut upstream, task) = start();
        let query = message(b'Q', b"SELECT 1\0");
        client.write_all(&query).await.unwrap();
        assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
        let answer = [message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
        upstream.write_all(&answer).await.unwrap();
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
        client.write_all(&message(b'X', b"")).await.unwrap();
        let (relay, end) = task.await.unwrap();
        assert!(matches!(end, RelayEnd::ClientTerminated));
        assert!(relay.upstream_reusable(&end));
        drop(relay);
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the upstream never sees Terminate");
    }

    #[tokio::test]
    async fn an_open_transaction_or_unanswered_query_is_not_reusable() {
        let (mut client, mut upstream, task) = start();
        client.write_all(&message(b'Q', b"BEGIN\0")).await.unwrap();
        upstream.write_all(&[message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat()).await.unwrap();
        read_exactly(&mut client, 17).await;
        drop(client);
        let (relay, end) = task.await.unwrap();
        assert!(matches!(end, RelayEnd::ClientGone(None)));
        assert_eq!(relay.state.transaction_status, TransactionStatus::InTransaction);
        assert!(!relay.upstream_reusable(&end));

        let (mut client, _upstream, task) = start();
        client.write_all(&message(b'Q', b"SELECT pg_sleep(9)\0")).await.unwrap();
        client.write_all(&message(b'X', b"")).await.unwrap();
        let (relay, end) = task.await.unwrap();
        assert_eq!(relay.state.awaiting_ready, 1);
        assert!(!relay.upstream_reusable(&end));
    }

    #[tokio::test]
    async fn extended_protocol_without_sync_is_not_reusable() {
        let (mut client, mut upstream, task) = start();
        let parse = message(b'P', b"\0SELECT 1\0\0\0");
        client.write_all(&parse).await.unwrap();
        read_exactly(&mut upstream, parse.len()).await;
        client.write_all(&message(b'X', b"")).await.unwrap();
        let (relay, end) = task.await.unwrap();
        assert!(relay.state.unsynced);
        assert!(!relay.upstream_reusable(&end));
    }

    #[tokio::test]
    async fn a_message_cut_short_by_the_client_is_not_reusable() {
        let (mut client, mut upstream, task) = start();
        let copy_data = message(b'd', &[7u8; 1000]);
        client.write_all(&copy_data[..600]).await.unwrap();
        read_exactly(&mut upstream, 600).await;
        drop(client);
        let (relay, end) = task.await.unwrap();
        assert!(!relay.upstream_reusable(&end), "the upstream holds half a message");
    }

    #[tokio::test]
    async fn large_messages_stream_through_a_small_buffer() {
        let (mut client, mut upstream, task) = start();
        client.write_all(&message(b'Q', b"SELECT big\0")).await.unwrap();
        read_exactly(&mut upstream, 16).await;
        let row = message(b'D', &vec![42u8; 8 * 1024 * 1024]);
        let row_len = row.len();
        let writer = tokio::spawn(async move {
            upstream.write_all(&row).await.unwrap();
            upstream.write_all(&message(b'Z', b"I")).await.unwrap();
            upstream
        });
        let received = read_exactly(&mut client, row_len + 6).await;
        assert_eq!(&received[row_len..], &message(b'Z', b"I")[..]);
        let _upstream = writer.await.unwrap();
        client.write_all(&message(b'X', b"")).await.unwrap();
        let (relay, end) = task.await.unwrap();
        assert!(relay.upstream_reusable(&end));
        assert!(relay.to_client.buf.capacity() <= MAX_IDLE_CAPACITY, "capacity {}", relay.to_client.buf.capacity());
    }

    #[tokio::test]
    async fn pipelined_syncs_wait_for_every_ready_for_query() {
        let (mut client, mut upstream, task) = start();
        let batch = [message(b'S', b""), message(b'S', b""), message(b'Q', b"SELECT 1\0")].concat();
        client.write_all(&batch).await.unwrap();
        read_exactly(&mut upstream, batch.len()).await;
        upstream.write_all(&[message(b'Z', b"I"), message(b'Z', b"I")].concat()).await.unwrap();
        read_exactly(&mut client, 12).await;
        client.write_all(&message(b'X', b"")).await.unwrap();
        let (relay, end) = task.await.unwrap();
        assert_eq!(relay.state.awaiting_ready, 1, "one answer is still owed");
        assert!(!relay.upstream_reusable(&end));
    }

    #[tokio::test]
    async fn a_broken_length_from_the_client_is_a_protocol_violation() {
        let (mut client, _upstream, task) = start();
        client.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
        let (_, end) = task.await.unwrap();
        assert!(matches!(end, RelayEnd::ClientProtocolViolation(_)));
    }
}
