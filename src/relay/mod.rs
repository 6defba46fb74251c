//! The relay: moves messages between a client and its server connection in both directions
//! at once, unchanged, reading only the message headers (and ReadyForQuery's one-byte body).
//!
//! Both directions are driven from one task by polling, in the manner of
//! `tokio::io::copy_bidirectional`: no stream splitting, no locks. Message bodies are streamed
//! as they arrive, so a message of any size costs at most one read buffer.
//!
//! The relay keeps its two buffers and nothing else of note. What it learns of the server (the
//! replies owed and to whom, the transaction status, the statements the proxy prepared; see
//! [`ProtocolState`] and [`PreparedStatements`]) is kept on the [`ServerConnection`] it
//! describes: it carries from one relay to the next, and the pool reads from the connection
//! alone whether it is clean to reuse.
//!
//! A [`Hook`] may insert messages of the proxy's own ahead of a client message: a Parse of a
//! statement the server has not prepared, say, before the client's Bind of it. Their replies
//! are kept from the client, except an ErrorResponse: when an inserted message fails, the
//! client sees the error (it explains why the server then skips the client's own messages up to
//! its Sync without a word) and the ReadyForQuery of its Sync, as if its own message had failed.
//! Only client messages of the types the hook asks for are held until whole and shown to it;
//! the default hook, [`Passthrough`], asks for none, so the session-mode path reads headers
//! only, as it did before hooks existed.

mod pipe;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::{backend, frontend, messages};
use crate::upstream::{Delivery, PreparedStatements, ProtocolState, ServerConnection};
use pipe::{Pipe, PumpEnd, PumpError, Scan, Verdict};

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

impl RelayEnd {
    /// The relay ended on the client's side (or detached), so the server got what the relay
    /// counted: no violation dropped scanned messages, and the server is still there.
    fn leaves_server_in_step(&self) -> bool {
        matches!(self, RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) | RelayEnd::Idle)
    }
}

/// A say in what reaches the server: sees client messages of the types it wants before they
/// go on, and may insert messages of the proxy's own ahead of them.
pub trait Hook {
    /// Whether client messages of type `tag` are held until whole and shown to
    /// [`Hook::before`]. Everything else streams past unread, so this should be true for as
    /// few types as will do.
    fn wants(&self, tag: u8) -> bool;

    /// Sees a client message of a wanted type on its way to the server. `body` is whole unless
    /// it is longer than [`MAX_BUFFERED_MESSAGE`](crate::protocol::frame::MAX_BUFFERED_MESSAGE),
    /// then cut to that length (the names a Bind, Describe or Close carries are at its start).
    fn before(&mut self, tag: u8, body: &[u8], insert: &mut Insert<'_>);
}

/// The hook of a session-mode relay: wants nothing, so every message streams by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl Hook for Passthrough {
    fn wants(&self, _tag: u8) -> bool {
        false
    }

    fn before(&mut self, _tag: u8, _body: &[u8], _insert: &mut Insert<'_>) {}
}

/// Where a [`Hook`] puts messages of the proxy's own, ahead of the client message it is shown.
pub struct Insert<'a> {
    out: &'a mut BytesMut,
    protocol: &'a mut ProtocolState,
    prepared: &'a mut PreparedStatements,
}

impl Insert<'_> {
    /// The statements the server has prepared, or has a Parse of on the way.
    pub fn prepared(&self) -> &PreparedStatements {
        self.prepared
    }

    /// Sends a message of type `tag` with `body` to the server ahead of the client's message.
    /// Its replies are kept from the client, except an ErrorResponse (see the module docs); a
    /// Parse of a named statement records the name as prepared, until it fails.
    ///
    /// Only extended-protocol messages (Parse, Bind, Describe, Execute, Close) may be inserted,
    /// and only ahead of an extended-protocol message or a Sync: if one fails, the server skips
    /// to the next Sync, and that must be one the client sends.
    pub fn message(&mut self, tag: u8, body: &[u8]) {
        debug_assert!(is_extended(tag), "only extended-protocol messages are inserted, not '{}'", tag.escape_ascii());
        self.protocol.proxy_sent(tag, body, self.prepared);
        messages::raw(self.out, tag, body);
    }
}

fn is_extended(tag: u8) -> bool {
    matches!(tag, frontend::PARSE | frontend::BIND | frontend::DESCRIBE | frontend::EXECUTE | frontend::CLOSE)
}

/// Client messages, read by header alone unless the hook wants them.
struct FromClient<'a, H> {
    hook: &'a mut H,
    protocol: &'a mut ProtocolState,
    prepared: &'a mut PreparedStatements,
}

impl<H: Hook> Scan for FromClient<'_, H> {
    fn wants_body(&self, tag: u8) -> bool {
        tag != frontend::TERMINATE && self.hook.wants(tag)
    }

    fn message(&mut self, tag: u8, body: Option<&[u8]>, insert: &mut BytesMut) -> Verdict {
        // The upstream must not see Terminate: its connection goes back to the pool.
        if tag == frontend::TERMINATE {
            return Verdict::Stop;
        }
        if let Some(body) = body {
            self.hook.before(tag, body, &mut Insert { out: insert, protocol: self.protocol, prepared: self.prepared });
            debug_assert!(
                insert.is_empty() || is_extended(tag) || tag == frontend::SYNC,
                "messages inserted ahead of a '{}' would leave a failure without a Sync",
                tag.escape_ascii()
            );
        }
        self.protocol.client_sent(tag);
        Verdict::Forward
    }
}

/// Server messages, read by header alone except ReadyForQuery, whose status byte counts.
struct FromServer<'a> {
    protocol: &'a mut ProtocolState,
    prepared: &'a mut PreparedStatements,
    round_trips: &'a mut u64,
}

impl Scan for FromServer<'_> {
    fn wants_body(&self, tag: u8) -> bool {
        tag == backend::READY_FOR_QUERY
    }

    fn message(&mut self, tag: u8, body: Option<&[u8]>, _insert: &mut BytesMut) -> Verdict {
        match self.protocol.server_sent(tag, body.unwrap_or_default(), self.prepared) {
            Delivery::Forward => {
                if tag == backend::READY_FOR_QUERY {
                    *self.round_trips += 1;
                }
                Verdict::Forward
            }
            Delivery::Swallow => Verdict::Swallow,
        }
    }
}

/// Relays between a client and a server connection until one side ends; see [`RelayEnd`].
pub struct Relay<H = Passthrough> {
    to_upstream: Pipe,
    to_client: Pipe,
    hook: H,
    /// ReadyForQuery messages passed to the client: query round trips.
    round_trips: u64,
    /// End with [`RelayEnd::Idle`] as soon as the session is idle outside a transaction with
    /// nothing in flight (a draining shutdown now; transaction pooling later).
    pub detach_when_idle: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::with_hook(Passthrough)
    }
}

impl<H: Hook> Relay<H> {
    /// A relay whose client messages pass `hook`.
    pub fn with_hook(hook: H) -> Relay<H> {
        Relay {
            to_upstream: Pipe::default(),
            to_client: Pipe::default(),
            hook,
            round_trips: 0,
            detach_when_idle: false,
        }
    }

    /// Feeds bytes already read from either side (a client's first message read while
    /// deciding whether to attach, server messages read past a login) into the relay so they
    /// are forwarded before anything else.
    pub fn preload(
        &mut self,
        server: &mut ServerConnection,
        from_client: &[u8],
        from_upstream: &[u8],
    ) -> io::Result<()> {
        let (_, protocol, prepared) = server.relay_parts();
        self.to_client.preload(from_upstream);
        self.to_upstream.preload(from_client);
        // The server's bytes were read first: they cannot answer what the client sends now.
        let scanned = self
            .to_client
            .scan(&mut FromServer { protocol, prepared, round_trips: &mut self.round_trips })
            .and_then(|()| self.to_upstream.scan(&mut FromClient { hook: &mut self.hook, protocol, prepared }));
        if scanned.is_err() {
            protocol.lost = true;
        }
        scanned
    }

    /// Runs until the client terminates or either side goes away. The connection's
    /// [`ProtocolState`] is kept current at every step, so it stays true to the stream even if
    /// this future is dropped before it ends.
    pub async fn run<C>(&mut self, client: &mut C, server: &mut ServerConnection) -> RelayEnd
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        poll_fn(|cx| {
            let (stream, protocol, prepared) = server.relay_parts();
            let polled = self.poll_run(cx, client, stream, protocol, prepared);
            protocol.between_messages =
                self.to_upstream.delivered_to_message_boundary() && self.to_client.read_to_message_boundary();
            if let Poll::Ready(end) = &polled
                && !end.leaves_server_in_step()
            {
                protocol.lost = true;
            }
            polled
        })
        .await
    }

    fn poll_run<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        protocol: &mut ProtocolState,
        prepared: &mut PreparedStatements,
    ) -> Poll<RelayEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let Relay { to_upstream, to_client, hook, round_trips, detach_when_idle } = self;
        let outbound =
            to_upstream.poll_pump(cx, client, upstream, |pipe| pipe.scan(&mut FromClient { hook, protocol, prepared }));
        if let Poll::Ready(end) = outbound {
            return Poll::Ready(match end {
                Ok(PumpEnd::Stopped) => RelayEnd::ClientTerminated,
                Ok(PumpEnd::Eof) => RelayEnd::ClientGone(None),
                Err(PumpError::Read(error)) => RelayEnd::ClientGone(Some(error)),
                Err(PumpError::Write(error)) => RelayEnd::UpstreamGone(Some(error)),
                Err(PumpError::Protocol(error)) => RelayEnd::ClientProtocolViolation(error),
            });
        }
        let inbound = to_client
            .poll_pump(cx, upstream, client, |pipe| pipe.scan(&mut FromServer { protocol, prepared, round_trips }));
        match inbound {
            // Idle outside a transaction, nothing half-read from either side and nothing waiting
            // to be written or flushed.
            Poll::Pending
                if *detach_when_idle && protocol.is_idle() && to_upstream.drained() && to_client.drained() =>
            {
                Poll::Ready(RelayEnd::Idle)
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(end) => Poll::Ready(match end {
                Ok(PumpEnd::Eof | PumpEnd::Stopped) => RelayEnd::UpstreamGone(None),
                Err(PumpError::Read(error)) => RelayEnd::UpstreamGone(Some(error)),
                Err(PumpError::Write(error)) => RelayEnd::ClientGone(Some(error)),
                Err(PumpError::Protocol(error)) => RelayEnd::UpstreamProtocolViolation(error),
            }),
        }
    }

    /// Bytes sent to the upstream, bytes sent to the client, and ReadyForQuery messages the
    /// client got (query round trips), for metrics.
    pub fn traffic(&self) -> (u64, u64, u64) {
        (self.to_upstream.forwarded, self.to_client.forwarded, self.round_trips)
    }

    /// Whether anything reached the server, so its session may have changed.
    pub fn used(&self) -> bool {
        self.to_upstream.forwarded > 0
    }
}
