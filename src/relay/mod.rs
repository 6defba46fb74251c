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

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::{backend, frontend, messages};
use crate::upstream::{
    Delivery, PreparedStatements, ProtocolState, RelayParts, Sent, ServerConnection, Settled, StatementEffect,
    StatementId, Token, UnnamedOwner, close_statement_body,
};
use pipe::{Pipe, PumpEnd, PumpError, Scan, Splice, Verdict};

/// Replies the proxy made itself while reading the client go to it after what the server
/// sent before them.
fn move_local_replies(protocol: &mut ProtocolState, to_client: &mut Pipe) {
    if !protocol.local_replies.is_empty() {
        to_client.append(&protocol.local_replies);
        protocol.local_replies.clear();
    }
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

impl RelayEnd {
    /// The relay ended on the client's side (or detached), so the server got what the relay
    /// counted: no violation dropped scanned messages, and the server is still there.
    fn leaves_server_in_step(&self) -> bool {
        matches!(self, RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) | RelayEnd::Idle)
    }
}

/// A say in what reaches the server: sees client messages of the types it wants before they
/// go on, and may rewrite them, answer them itself, or insert messages of the proxy's own
/// ahead of them.
pub trait Hook {
    /// Whether client messages of type `tag` are held until whole and shown to
    /// [`Hook::before`]. Everything else streams past unread, so this should be true for as
    /// few types as will do.
    fn wants(&self, tag: u8) -> bool;

    /// Whether the relay ends as soon as the session is idle outside a transaction with nothing
    /// in flight, so the server connection can serve someone else.
    fn detaches_when_idle(&self) -> bool {
        false
    }

    /// Whether the server's CommandComplete and ErrorResponse bodies are read, to follow what
    /// happens to its prepared statements: a `DISCARD ALL` or `DEALLOCATE ALL` among the
    /// client's statements drops them, an `0A000` on a Bind makes one stale.
    fn follows_statements(&self) -> bool {
        false
    }

    /// Sees a client message of a wanted type on its way to the server. `body` is whole unless
    /// `len` is more than [`MAX_BUFFERED_MESSAGE`](crate::protocol::frame::MAX_BUFFERED_MESSAGE),
    /// then cut to that length (the names a Bind, Describe or Close carries are at its start).
    fn before(&mut self, tag: u8, body: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision;

    /// Hears what became of a message it marked with a token.
    fn settled(&mut self, _settled: Settled) {}
}

/// What becomes of the client message a [`Hook`] was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It goes on as it is (after whatever the hook inserted).
    Forward,
    /// Its header and the first `cut` bytes of its body are replaced by what
    /// [`Insert::rewrite`] wrote.
    Rewrite {
        /// Body bytes replaced.
        cut: usize,
    },
    /// It is dropped: the hook answered it ([`Insert::answer`], [`Insert::refuse`]).
    Drop,
    /// It waits, with everything the client sends after it, until a reply owed now has come
    /// (a decision that depends on whether an earlier message succeeds); it is shown again then.
    Hold,
}

/// The session-mode hook: wants nothing, so every message streams by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl Hook for Passthrough {
    fn wants(&self, _tag: u8) -> bool {
        false
    }

    fn before(&mut self, _tag: u8, _body: &[u8], _len: usize, _insert: &mut Insert<'_>) -> Decision {
        Decision::Forward
    }
}

/// Where a [`Hook`] puts messages of the proxy's own, ahead of (or in place of) the client
/// message it is shown, and what it learns of the server connection from.
pub struct Insert<'a> {
    out: &'a mut BytesMut,
    protocol: &'a mut ProtocolState,
    prepared: &'a mut PreparedStatements,
    /// The token the client's own message carries when it goes on.
    token: Option<Token>,
}

impl Insert<'_> {
    /// The statements the server has prepared, or has a Parse of on the way.
    pub fn prepared(&self) -> &PreparedStatements {
        self.prepared
    }

    /// Notes a use of statement `id` on this server.
    pub fn touch(&mut self, id: StatementId) {
        self.prepared.touch(id);
    }

    /// Notes whose unnamed statement the server holds.
    pub fn set_unnamed_owner(&mut self, owner: Option<UnnamedOwner>) {
        self.prepared.set_unnamed_owner(owner);
    }

    /// Closes statement `id` on the server ahead of the client's message; it counts as gone at
    /// once. Only while nothing is owed, so that no message on its way needs it.
    pub fn close(&mut self, id: StatementId) {
        debug_assert!(self.protocol.owes_nothing(), "a statement is closed only while nothing is owed");
        self.message(frontend::CLOSE, &close_statement_body(id), StatementEffect::None);
        self.prepared.forget(id);
    }

    /// What the server connection owes and where it stands.
    pub fn protocol(&self) -> &ProtocolState {
        self.protocol
    }

    /// Marks the client's message, when it goes on as it is, so the hook hears what became of
    /// it.
    pub fn track(&mut self, token: Token) {
        self.token = Some(token);
    }

    /// Sends a message of type `tag` with `body` to the server ahead of the client's message.
    /// Its replies are kept from the client, except an ErrorResponse (see the module docs).
    /// `effect` says what it does to the server's statements.
    ///
    /// Only extended-protocol messages (Parse, Bind, Describe, Execute, Close) may be inserted,
    /// and only ahead of an extended-protocol message or a Sync: if one fails, the server skips
    /// to the next Sync, and that must be one the client sends. A Close of a statement cannot
    /// fail and may also go ahead of a Query.
    pub fn message(&mut self, tag: u8, body: &[u8], effect: StatementEffect) {
        debug_assert!(is_extended(tag), "only extended-protocol messages are inserted, not '{}'", tag.escape_ascii());
        if self.protocol.sent(tag, Sent::proxy().affecting(effect), self.prepared) {
            messages::raw(self.out, tag, body);
        }
    }

    /// Sends the client's message rewritten: a message of type `tag` whose body is `head`
    /// followed by the client's body from [`Decision::Rewrite`]'s `cut` on (`rest` bytes). Its
    /// replies go to the client; `effect` says what it does to the server's statements.
    pub fn rewrite(&mut self, tag: u8, head: &[u8], rest: usize, effect: StatementEffect) {
        self.protocol.sent(tag, Sent::client().affecting(effect).tracked(self.token.take()), self.prepared);
        self.out.put_u8(tag);
        self.out.put_u32((4 + head.len() + rest) as u32);
        self.out.extend_from_slice(head);
    }

    /// Answers the client's message of type `tag` with `reply` instead of sending it: the
    /// reply goes out in its place among the server's, unless an earlier error makes the
    /// server skip to the Sync (then, as the server would, nothing goes out).
    pub fn answer(&mut self, tag: u8, reply: Bytes) {
        self.protocol.sent(tag, Sent::local(reply).tracked(self.token.take()), self.prepared);
    }

    /// Refuses the client's message with `error` (an ErrorResponse) in its place: the server
    /// is sent `probe` (a message of type `tag` that fails), so that it skips to the Sync and
    /// ends the transaction just as it would after the client's own message failed.
    pub fn refuse(&mut self, tag: u8, probe: &[u8], error: Bytes) {
        let sent = Sent::refused(error).tracked(self.token.take());
        if self.protocol.sent(tag, sent, self.prepared) {
            messages::raw(self.out, tag, probe);
        }
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

    fn message(&mut self, tag: u8, body: Option<&[u8]>, len: usize, splice: &mut Splice) -> Verdict {
        // The upstream must not see Terminate: its connection goes back to the pool.
        if tag == frontend::TERMINATE {
            return Verdict::Stop;
        }
        let Some(body) = body else {
            self.protocol.client_sent(tag, self.prepared);
            return Verdict::Forward;
        };
        for settled in self.protocol.settled.drain(..) {
            self.hook.settled(settled);
        }
        let mut insert =
            Insert { out: &mut splice.before, protocol: self.protocol, prepared: self.prepared, token: None };
        let decision = self.hook.before(tag, body, len, &mut insert);
        let token = insert.token.take();
        match decision {
            Decision::Forward => {
                debug_assert!(
                    splice.before.is_empty() || is_extended(tag) || tag == frontend::SYNC || tag == frontend::QUERY,
                    "messages inserted ahead of a '{}' would leave a failure without a Sync",
                    tag.escape_ascii()
                );
                self.protocol.sent(tag, Sent::client().tracked(token), self.prepared);
                Verdict::Forward
            }
            Decision::Rewrite { cut } => Verdict::Rewrite { cut },
            Decision::Drop => Verdict::Swallow,
            Decision::Hold => {
                // The replies the decision waits for must not wait for the client.
                if !self.protocol.flushed() {
                    self.protocol.sent(frontend::FLUSH, Sent::proxy(), self.prepared);
                    messages::raw(&mut splice.before, frontend::FLUSH, &[]);
                }
                Verdict::Hold
            }
        }
    }
}

/// Server messages, read by header alone except ReadyForQuery, whose status byte counts, and
/// CommandComplete, ErrorResponse and ParameterStatus (recorded on the connection) when the
/// hook follows statements.
struct FromServer<'a, H> {
    hook: &'a mut H,
    protocol: &'a mut ProtocolState,
    prepared: &'a mut PreparedStatements,
    params: &'a mut Vec<(String, String)>,
    counts: &'a mut Counts,
}

impl<H: Hook> Scan for FromServer<'_, H> {
    fn wants_body(&self, tag: u8) -> bool {
        tag == backend::READY_FOR_QUERY
            || (matches!(tag, backend::COMMAND_COMPLETE | backend::ERROR_RESPONSE | backend::PARAMETER_STATUS)
                && self.hook.follows_statements())
    }

    fn message(&mut self, tag: u8, body: Option<&[u8]>, _len: usize, splice: &mut Splice) -> Verdict {
        self.counts.server_messages += 1;
        if tag == backend::PARAMETER_STATUS
            && let Some(body) = body
        {
            let (name, value) = messages::read_parameter_status(body);
            messages::record_parameter(self.params, name, value);
        }
        let delivery = self.protocol.server_sent(tag, body.unwrap_or_default(), self.prepared);
        if !self.protocol.local_replies.is_empty() {
            splice.after.extend_from_slice(&self.protocol.local_replies);
            self.protocol.local_replies.clear();
        }
        for settled in self.protocol.settled.drain(..) {
            self.hook.settled(settled);
        }
        match delivery {
            Delivery::Forward => {
                if tag == backend::READY_FOR_QUERY {
                    self.counts.round_trips += 1;
                }
                Verdict::Forward
            }
            Delivery::Swallow => Verdict::Swallow,
        }
    }
}

/// What the relay counts as it goes.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// ReadyForQuery messages passed to the client: query round trips.
    round_trips: u64,
    /// Server messages read.
    server_messages: u64,
}

/// Relays between a client and a server connection until one side ends; see [`RelayEnd`].
pub struct Relay<H = Passthrough> {
    to_upstream: Pipe,
    to_client: Pipe,
    hook: H,
    counts: Counts,
    /// End with [`RelayEnd::Idle`] as soon as the session is idle outside a transaction with
    /// nothing in flight (a draining shutdown, transaction pooling).
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
            counts: Counts::default(),
            detach_when_idle: false,
        }
    }

    /// The hook.
    pub fn hook(&mut self) -> &mut H {
        &mut self.hook
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
        let RelayParts { protocol, prepared, params, .. } = server.relay_parts();
        self.to_client.preload(from_upstream);
        self.to_upstream.preload(from_client);
        // The server's bytes were read first: they cannot answer what the client sends now.
        let Relay { to_upstream, to_client, hook, counts, .. } = self;
        let scanned = to_client
            .scan(&mut FromServer { hook, protocol, prepared, params, counts })
            .and_then(|()| to_upstream.scan(&mut FromClient { hook, protocol, prepared }));
        move_local_replies(protocol, to_client);
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
            let RelayParts { stream, protocol, prepared, params } = server.relay_parts();
            let polled = self.poll_run(cx, client, stream, protocol, prepared, params);
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
        params: &mut Vec<(String, String)>,
    ) -> Poll<RelayEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let Relay { to_upstream, to_client, hook, counts, detach_when_idle } = self;
        loop {
            if to_upstream.held()
                && let Err(error) = to_upstream.scan(&mut FromClient { hook, protocol, prepared })
            {
                return Poll::Ready(RelayEnd::ClientProtocolViolation(error));
            }
            let outbound = to_upstream
                .poll_pump(cx, client, upstream, |pipe| pipe.scan(&mut FromClient { hook, protocol, prepared }));
            move_local_replies(protocol, to_client);
            if let Poll::Ready(end) = outbound {
                return Poll::Ready(match end {
                    Ok(PumpEnd::Stopped) => RelayEnd::ClientTerminated,
                    Ok(PumpEnd::Eof) => RelayEnd::ClientGone(None),
                    Err(PumpError::Read(error)) => RelayEnd::ClientGone(Some(error)),
                    Err(PumpError::Write(error)) => RelayEnd::UpstreamGone(Some(error)),
                    Err(PumpError::Protocol(error)) => RelayEnd::ClientProtocolViolation(error),
                });
            }
            let server_messages = counts.server_messages;
            let inbound = to_client.poll_pump(cx, upstream, client, |pipe| {
                pipe.scan(&mut FromServer { hook, protocol, prepared, params, counts })
            });
            match inbound {
                // A held client message may be decided now that replies came.
                Poll::Pending if to_upstream.held() && counts.server_messages != server_messages => continue,
                // Idle outside a transaction, nothing half-read from either side and nothing
                // waiting to be written or flushed.
                Poll::Pending
                    if (*detach_when_idle || hook.detaches_when_idle())
                        && protocol.is_idle()
                        && to_upstream.drained()
                        && to_client.drained() =>
                {
                    return Poll::Ready(RelayEnd::Idle);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(end) => {
                    return Poll::Ready(match end {
                        Ok(PumpEnd::Eof | PumpEnd::Stopped) => RelayEnd::UpstreamGone(None),
                        Err(PumpError::Read(error)) => RelayEnd::UpstreamGone(Some(error)),
                        Err(PumpError::Write(error)) => RelayEnd::ClientGone(Some(error)),
                        Err(PumpError::Protocol(error)) => RelayEnd::UpstreamProtocolViolation(error),
                    });
                }
            }
        }
    }

    /// Bytes sent to the upstream, bytes sent to the client, and ReadyForQuery messages the
    /// client got (query round trips), for metrics.
    pub fn traffic(&self) -> (u64, u64, u64) {
        (self.to_upstream.forwarded, self.to_client.forwarded, self.counts.round_trips)
    }

    /// Frees the buffers of a relay that is between attaches, so an idle client costs little.
    pub fn release_buffers(&mut self) {
        self.to_upstream.release_buffer();
        self.to_client.release_buffer();
    }

    /// Whether anything reached the server, so its session may have changed.
    pub fn used(&self) -> bool {
        self.to_upstream.forwarded > 0
    }
}
