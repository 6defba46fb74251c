//! What a server connection owes and where it stands, as the relay sees it pass: the replies
//! still to come, in order, and for each whether it answers the client or the proxy.
//!
//! The state is held by the [`ServerConnection`](crate::upstream::ServerConnection) it
//! describes, so it outlives any one relay; the relay only keeps it up to date.
//!
//! Every client message owes its replies in the order it was sent, so the queue holds one
//! entry per message that gets a reply, and a server message is attributed to the entry at
//! its front:
//!
//! | sent         | answered by (before an error)                                  |
//! |--------------|----------------------------------------------------------------|
//! | Parse        | ParseComplete                                                  |
//! | Bind         | BindComplete                                                   |
//! | Describe     | ParameterDescription (statements only), then RowDescription or NoData |
//! | Execute      | rows or COPY traffic, then CommandComplete, EmptyQueryResponse or PortalSuspended |
//! | Close        | CloseComplete                                                  |
//! | Sync         | ReadyForQuery                                                  |
//! | Query        | anything, then ReadyForQuery                                   |
//! | FunctionCall | FunctionCallResponse, then ReadyForQuery                       |
//! | Flush, COPY data, Terminate | nothing                                         |
//!
//! NoticeResponse, ParameterStatus and NotificationResponse can come at any time and answer
//! nothing. An ErrorResponse to an extended-protocol message (Parse to Close) ends its answer,
//! and the server then skips every message up to the next Sync, Query and FunctionCall
//! included: their entries are dropped, and if the Sync has not been sent yet, so is what the
//! client sends before it. An ErrorResponse within a sync point's answer is part of it.
//! A ReadyForQuery closes the first sync point owed, and with it whatever was owed before it
//! (replies the server skipped), which also keeps the queue in step should a reply ever be
//! miscounted.
//!
//! A COPY's traffic is part of its Query's or Execute's answer and streams like any other.
//! During COPY FROM STDIN the server ignores Sync and Flush (tokio-postgres sends a Sync
//! before the COPY's data and another after it): from the server's CopyInResponse until the
//! client's CopyDone or CopyFail (or an error that ends the COPY), Syncs the client sends owe
//! nothing, including those already queued when the CopyInResponse arrives.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::prepared::{PreparedStatements, StatementId};

use crate::protocol::{TransactionStatus, backend, frontend, messages, sqlstate};

/// Command tags after which the server holds no prepared statements.
pub(crate) const DROPS_ALL_STATEMENTS: [&[u8]; 2] = [b"DISCARD ALL", b"DEALLOCATE ALL"];

/// What the server did with a message that carried a [`Token`], for the hook that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The message succeeded (its last reply came; for a Sync, Query or FunctionCall, its
    /// ReadyForQuery, with no error in what it answers), or, for a reply the proxy made
    /// itself, that reply went out. With the transaction status then.
    Done(Token, TransactionStatus),
    /// The message failed or the server skipped it after an earlier error.
    Failed(Token),
    /// A `DISCARD ALL` or `DEALLOCATE ALL`, sent as the message with this sequence number
    /// (see [`ProtocolState::sequence`]), dropped every statement prepared before it.
    DroppedStatements(u64),
}

/// What a message does to the statements a server connection has prepared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatementEffect {
    /// Nothing.
    #[default]
    None,
    /// A Parse of the statement: recorded at once, forgotten if it fails or is skipped.
    Prepares(StatementId),
    /// A Parse that prepares again a statement the server had, right after a Close of it: if
    /// both are skipped after an earlier error, the server still has its old copy.
    Replaces(StatementId),
    /// A Bind or Describe of the statement: if the server says its plan no longer fits
    /// (`0A000`), its copy is stale.
    Uses(StatementId),
}

/// A mark a hook puts on a message to hear what became of it (see [`Settled`]).
pub type Token = u32;

/// A message that the server owes replies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

/// How a server message relates to the request at the front of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Part of its answer, with more to come.
    Partial,
    /// The end of its answer.
    Final,
    /// Not a reply to it at all: the queue is out of step, and the message is passed on.
    Foreign,
}

impl Request {
    fn for_tag(tag: u8) -> Option<Request> {
        Some(match tag {
            frontend::PARSE => Request::Parse,
            frontend::BIND => Request::Bind,
            frontend::DESCRIBE => Request::Describe,
            frontend::EXECUTE => Request::Execute,
            frontend::CLOSE => Request::Close,
            frontend::SYNC => Request::Sync,
            frontend::QUERY => Request::Query,
            frontend::FUNCTION_CALL => Request::FunctionCall,
            _ => return None,
        })
    }

    /// A message answered by a ReadyForQuery, which ends what came before.
    fn is_sync_point(self) -> bool {
        matches!(self, Request::Sync | Request::Query | Request::FunctionCall)
    }

    /// How a server message of type `tag` (not ReadyForQuery, ErrorResponse or an asynchronous
    /// one) answers this request.
    fn answer(self, tag: u8) -> Answer {
        use backend::*;
        match (self, tag) {
            (Request::Parse, PARSE_COMPLETE)
            | (Request::Bind, BIND_COMPLETE)
            | (Request::Close, CLOSE_COMPLETE)
            | (Request::Describe, ROW_DESCRIPTION | NO_DATA)
            | (Request::Execute, COMMAND_COMPLETE | EMPTY_QUERY_RESPONSE | PORTAL_SUSPENDED) => Answer::Final,
            (Request::Describe, PARAMETER_DESCRIPTION) => Answer::Partial,
            // Replies that only other requests get.
            (
                Request::Execute,
                PARSE_COMPLETE | BIND_COMPLETE | CLOSE_COMPLETE | PARAMETER_DESCRIPTION | ROW_DESCRIPTION | NO_DATA,
            ) => Answer::Foreign,
            // Rows, and a COPY's responses and data, whose types are many.
            (Request::Execute, _) => Answer::Partial,
            (Request::Sync | Request::Query | Request::FunctionCall, _) => Answer::Partial,
            _ => Answer::Foreign,
        }
    }
}

/// Who sent a request, and so what becomes of its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sender {
    /// The client: its replies go to it.
    Client,
    /// The proxy: its replies are kept from the client, except an ErrorResponse.
    Proxy,
    /// Nobody: the proxy answers the client's message itself with these bytes when every
    /// reply owed before it has gone out, and the server never sees it.
    Local(Bytes),
    /// The proxy sent a message bound to fail in place of a client message it must refuse, so
    /// that the server skips to the Sync and ends the transaction as it would have: the
    /// server's ErrorResponse is replaced with this one.
    Refused(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owed {
    request: Request,
    sender: Sender,
    /// Sequence number of the message.
    sequence: u64,
    /// What it does to the server's statements.
    effect: StatementEffect,
    /// Reported to the hook as [`Settled`].
    token: Option<Token>,
    /// For a sync point: an error came in what it answers (its batch, or its query).
    errored: bool,
}

/// Whether a server message goes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Forward,
    /// It answers a message the proxy inserted, or the proxy sends its own in its place.
    Swallow,
}

/// A message sent to the server, as the relay tells [`ProtocolState::sent`] about it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    sender: Option<Sender>,
    effect: StatementEffect,
    token: Option<Token>,
}

impl Sent {
    /// A client message, forwarded as it is or rewritten.
    pub(crate) fn client() -> Sent {
        Sent { sender: Some(Sender::Client), ..Sent::default() }
    }

    /// A message of the proxy's own.
    pub(crate) fn proxy() -> Sent {
        Sent { sender: Some(Sender::Proxy), ..Sent::default() }
    }

    /// A client message the proxy answers itself with `reply`.
    pub(crate) fn local(reply: Bytes) -> Sent {
        Sent { sender: Some(Sender::Local(reply)), ..Sent::default() }
    }

    /// A message bound to fail, whose error the client sees as `error`.
    pub(crate) fn refused(error: Bytes) -> Sent {
        Sent { sender: Some(Sender::Refused(error)), ..Sent::default() }
    }

    /// The same, with `effect` on the server's statements.
    pub(crate) fn affecting(self, effect: StatementEffect) -> Sent {
        Sent { effect, ..self }
    }

    /// The same, carrying `token` (if any).
    pub(crate) fn tracked(self, token: Option<Token>) -> Sent {
        Sent { token, ..self }
    }
}

/// What a server connection owes and where it stands; see the module docs.
#[derive(Debug, Clone)]
pub struct ProtocolState {
    owed: VecDeque<Owed>,
    /// Messages sent so far, counting the proxy's own and those it answered itself.
    sequence: u64,
    /// Extended-protocol messages were sent after the last Sync: the server is inside a batch.
    unsynced: bool,
    /// An error ended a batch whose Sync is not sent yet: the server discards what comes
    /// before it.
    skipping: bool,
    /// The last message sent makes the server send what it has (Flush, Sync, Query).
    flushed: bool,
    /// The server is in COPY FROM STDIN, ignoring Syncs, until the client's CopyDone or
    /// CopyFail.
    copy_in: bool,
    /// Sequence number of the client's last CopyDone or CopyFail.
    copy_ended: u64,
    /// An error ended the batch whose Sync is not sent yet.
    batch_failed: bool,
    transaction_status: TransactionStatus,
    /// Type of the last message the server sent.
    last_message_type: u8,
    /// Replies the proxy made itself that are due now, to go to the client next.
    pub(crate) local_replies: BytesMut,
    /// What became of tokened messages since the hook last looked.
    pub(crate) settled: Vec<Settled>,
    /// Whether the relay left the stream between two messages both ways, with every message
    /// it counted delivered to the server.
    pub(crate) between_messages: bool,
    /// The relay lost track of the stream (a protocol violation, the server gone).
    pub(crate) lost: bool,
}

impl Default for ProtocolState {
    fn default() -> Self {
        ProtocolState {
            owed: VecDeque::new(),
            sequence: 0,
            unsynced: false,
            skipping: false,
            flushed: true,
            copy_in: false,
            copy_ended: 0,
            batch_failed: false,
            transaction_status: TransactionStatus::Idle,
            last_message_type: 0,
            local_replies: BytesMut::new(),
            settled: Vec::new(),
            between_messages: true,
            lost: false,
        }
    }
}

impl ProtocolState {
    /// Transaction status of the last ReadyForQuery.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.transaction_status
    }

    /// Extended-protocol messages were sent after the last Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// The server skips what it is sent until the client's next Sync, after an error.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// The server has been told to send every reply it has (the last message sent was a
    /// Flush, a Sync or a Query): waiting for replies cannot wait for the client.
    pub fn flushed(&self) -> bool {
        self.flushed
    }

    /// Sequence number the next message sent gets.
    pub fn sequence(&self) -> u64 {
        self.sequence + 1
    }

    /// No reply is owed.
    pub fn owes_nothing(&self) -> bool {
        self.owed.is_empty()
    }

    /// Sync points (Sync, Query, FunctionCall) sent whose ReadyForQuery has not come back.
    pub fn ready_owed(&self) -> usize {
        self.owed.iter().filter(|owed| owed.request.is_sync_point()).count()
    }

    /// Type of the last message the server sent: an ErrorResponse before it closed the
    /// connection means it explained itself (a FATAL).
    pub fn last_message_type(&self) -> u8 {
        self.last_message_type
    }

    /// Idle outside any transaction, with nothing owed and no batch open.
    pub fn is_idle(&self) -> bool {
        self.owed.is_empty() && !self.unsynced && self.transaction_status == TransactionStatus::Idle
    }

    /// Whether the connection can serve another client: idle (see [`Self::is_idle`]), and its
    /// stream stands between two messages with nothing lost track of.
    pub fn reusable(&self) -> bool {
        self.is_idle() && self.between_messages && !self.lost
    }

    /// Whether the connection is inside a transaction block (open or failed) but otherwise as
    /// [`Self::reusable`] asks: a ROLLBACK makes it reusable.
    pub fn in_transaction_between_messages(&self) -> bool {
        self.owed.is_empty()
            && !self.unsynced
            && self.transaction_status != TransactionStatus::Idle
            && self.between_messages
            && !self.lost
    }

    /// A ReadyForQuery read outside the relay (the proxy's own queries) gives the status.
    pub(crate) fn set_transaction_status(&mut self, status: TransactionStatus) {
        self.transaction_status = status;
    }

    /// The client sent a message of type `tag`, forwarded as it is.
    pub(crate) fn client_sent(&mut self, tag: u8, prepared: &mut PreparedStatements) {
        self.sent(tag, Sent::client(), prepared);
    }

    /// A message of type `tag` went to the server (or, for a local answer, would have), from
    /// whom `sent` says. A Parse of a statement is recorded in `prepared` at once, so that a
    /// Bind later in the same batch finds it, and forgotten again if it fails or is skipped.
    /// Returns false when nothing is owed for it: it owes no reply, or the server skips it.
    pub(crate) fn sent(&mut self, tag: u8, sent: Sent, prepared: &mut PreparedStatements) -> bool {
        self.sequence += 1;
        let local = matches!(sent.sender, Some(Sender::Local(_)));
        if !local {
            self.flushed = matches!(tag, frontend::FLUSH | frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL);
        }
        match tag {
            frontend::FLUSH => self.unsynced = true,
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.copy_in = false;
                self.copy_ended = self.sequence;
            }
            _ => {}
        }
        let Some(request) = Request::for_tag(tag) else {
            return false;
        };
        if request == Request::Sync && self.copy_in {
            return false;
        }
        if request == Request::Sync {
            self.unsynced = false;
            self.skipping = false;
        } else if self.skipping {
            if let Some(token) = sent.token {
                self.settled.push(Settled::Failed(token));
            }
            return false;
        } else if request.is_sync_point() {
            // A Query or FunctionCall ends the implicit transaction of the messages before it.
            self.unsynced = false;
        } else {
            self.unsynced = true;
        }
        if let StatementEffect::Prepares(id) | StatementEffect::Replaces(id) = sent.effect {
            prepared.record(id, self.sequence);
        }
        let sender = sent.sender.unwrap_or(Sender::Client);
        let errored = request == Request::Sync && std::mem::take(&mut self.batch_failed);
        let (sequence, effect, token) = (self.sequence, sent.effect, sent.token);
        self.owed.push_back(Owed { request, sender, sequence, effect, token, errored });
        self.answer_locally();
        true
    }

    /// The server sent a message of type `tag`; `body` is read for ReadyForQuery and
    /// CommandComplete only.
    pub(crate) fn server_sent(&mut self, tag: u8, body: &[u8], prepared: &mut PreparedStatements) -> Delivery {
        self.last_message_type = tag;
        let delivery = match tag {
            backend::NOTICE_RESPONSE | backend::PARAMETER_STATUS | backend::NOTIFICATION_RESPONSE => {
                return Delivery::Forward;
            }
            backend::READY_FOR_QUERY => {
                self.transaction_status = TransactionStatus::from_byte(body.first().copied().unwrap_or_default());
                let mut delivery = Delivery::Forward;
                while let Some(owed) = self.owed.pop_front() {
                    if owed.request.is_sync_point() {
                        delivery = self.delivery(&owed);
                        self.settle(owed, true);
                        break;
                    }
                    self.abandon(owed, false, prepared);
                }
                delivery
            }
            backend::COPY_IN_RESPONSE => {
                self.enter_copy_in();
                Delivery::Forward
            }
            // Passed on even when it answers the proxy: the client's own messages up to its
            // Sync are skipped without a reply, and this is what tells it why.
            backend::ERROR_RESPONSE => {
                self.copy_in = false;
                let mut delivery = Delivery::Forward;
                if let Some(Owed { sender: Sender::Refused(error), .. }) = self.owed.front() {
                    self.local_replies.extend_from_slice(error);
                    delivery = Delivery::Swallow;
                }
                if let Some(Owed { effect: StatementEffect::Uses(id), .. }) = self.owed.front()
                    && messages::error_code(body) == Some(sqlstate::FEATURE_NOT_SUPPORTED.as_bytes())
                {
                    // "cached plan must not change result type": the tables under the
                    // statement changed, and only a new Parse gives it a plan again.
                    prepared.stale.insert(*id);
                }
                if self.owed.front().is_some_and(|owed| !owed.request.is_sync_point()) {
                    let mut failed = true;
                    while let Some(owed) = self.owed.front()
                        && owed.request != Request::Sync
                    {
                        let owed = self.owed.pop_front().expect("front exists");
                        self.abandon(owed, failed, prepared);
                        failed = false;
                    }
                    self.skipping = self.owed.is_empty();
                    self.batch_failed = self.skipping;
                }
                if let Some(owed) = self.owed.front_mut() {
                    owed.errored = true;
                }
                delivery
            }
            _ => {
                let Some(owed) = self.owed.front() else {
                    return Delivery::Forward;
                };
                if tag == backend::COMMAND_COMPLETE
                    && DROPS_ALL_STATEMENTS.contains(&body.strip_suffix(b"\0").unwrap_or(body))
                {
                    prepared.forget_before(owed.sequence);
                    self.settled.push(Settled::DroppedStatements(owed.sequence));
                }
                match owed.request.answer(tag) {
                    Answer::Foreign => Delivery::Forward,
                    Answer::Partial => self.delivery(owed),
                    Answer::Final => {
                        let owed = self.owed.pop_front().expect("front exists");
                        let delivery = self.delivery(&owed);
                        self.settle(owed, true);
                        delivery
                    }
                }
            }
        };
        self.answer_locally();
        delivery
    }

    /// The server waits for COPY data: the Syncs queued behind the COPY that the client sent
    /// before ending it are ignored by the server and owe nothing.
    fn enter_copy_in(&mut self) {
        let Some(copy) = self.owed.front().map(|owed| owed.sequence) else { return };
        let copy_ended = self.copy_ended;
        let ended = copy_ended > copy;
        let ignored = |owed: &Owed| {
            owed.request == Request::Sync && owed.sequence > copy && (!ended || owed.sequence < copy_ended)
        };
        self.owed.retain(|owed| !ignored(owed));
        self.copy_in = !ended;
    }

    fn delivery(&self, owed: &Owed) -> Delivery {
        match owed.sender {
            Sender::Client => Delivery::Forward,
            Sender::Proxy | Sender::Local(_) | Sender::Refused(_) => Delivery::Swallow,
        }
    }

    /// Sends the replies the proxy makes itself that are now first in line.
    fn answer_locally(&mut self) {
        while let Some(Owed { sender: Sender::Local(reply), .. }) = self.owed.front() {
            self.local_replies.extend_from_slice(reply);
            let owed = self.owed.pop_front().expect("front exists");
            self.settle(owed, true);
        }
    }

    fn settle(&mut self, owed: Owed, done: bool) {
        if let Some(token) = owed.token {
            let done = done && !owed.errored;
            self.settled.push(if done {
                Settled::Done(token, self.transaction_status)
            } else {
                Settled::Failed(token)
            });
        }
    }

    /// Drops a request whose answer will not come: it `failed`, or the server skipped it
    /// after an earlier error.
    fn abandon(&mut self, owed: Owed, failed: bool, prepared: &mut PreparedStatements) {
        match owed.effect {
            StatementEffect::Prepares(id) => prepared.forget(id),
            // Skipped with the Close before it: the old copy is still there.
            StatementEffect::Replaces(id) if failed => prepared.forget(id),
            StatementEffect::Replaces(_) | StatementEffect::Uses(_) | StatementEffect::None => {}
        }
        self.settle(owed, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays `script` (`>X` a client message, `+X` an inserted one, `<X` a server message,
    /// `<Z?` a ReadyForQuery with status `?`) and returns the server messages delivered.
    fn play(state: &mut ProtocolState, prepared: &mut PreparedStatements, script: &str) -> String {
        let mut delivered = String::new();
        for step in script.split_whitespace() {
            let bytes = step.as_bytes();
            match bytes[0] {
                b'>' => state.client_sent(bytes[1], prepared),
                b'+' => {
                    let effect = if bytes[1] == b'P' { StatementEffect::Prepares(1) } else { StatementEffect::None };
                    state.sent(bytes[1], Sent::proxy().affecting(effect), prepared);
                }
                b'<' => {
                    if state.server_sent(bytes[1], &bytes[2..], prepared) == Delivery::Forward {
                        delivered.push(bytes[1] as char);
                    }
                }
                other => panic!("bad step {}", other as char),
            }
        }
        delivered
    }

    fn fresh() -> (ProtocolState, PreparedStatements) {
        (ProtocolState::default(), PreparedStatements::default())
    }

    #[test]
    fn an_extended_batch_is_owed_until_its_ready_for_query() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">P >B >D >E >S");
        assert!(!state.unsynced() && state.ready_owed() == 1 && !state.is_idle());
        let delivered = play(&mut state, &mut prepared, "<1 <2 <t <T <D <D <C");
        assert_eq!(delivered, "12tTDDC");
        assert_eq!(state.owed.len(), 1);
        play(&mut state, &mut prepared, "<ZI");
        assert!(state.owes_nothing() && state.is_idle() && state.reusable());
    }

    #[test]
    fn flush_opens_a_batch_that_only_sync_closes() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">P >H <1");
        assert!(state.owes_nothing() && state.unsynced() && !state.is_idle());
        play(&mut state, &mut prepared, ">S <ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn an_error_in_a_batch_skips_to_its_sync_queries_included() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">P >B >Q >E >S >Q");
        assert_eq!(state.ready_owed(), 3);
        assert_eq!(play(&mut state, &mut prepared, "<1 <E"), "1E");
        assert_eq!(state.ready_owed(), 2, "the Query before the Sync is skipped");
        play(&mut state, &mut prepared, "<ZI <C <ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn an_error_before_the_sync_is_sent_skips_what_the_client_sends_until_it() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">P >H <E >B >E >Q");
        assert!(state.owes_nothing(), "the server discards all of it");
        play(&mut state, &mut prepared, ">S");
        assert_eq!(state.ready_owed(), 1);
        play(&mut state, &mut prepared, "<ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn syncs_sent_during_copy_from_stdin_owe_nothing() {
        for script in [
            // tokio-postgres: a Sync before the data, another after it.
            ">B >E >S <2 <G >d >c >S <C <ZI",
            // The whole COPY sent before the server asks for the data.
            ">B >E >S >d >c >S <2 <G <C <ZI",
            // Simple protocol.
            ">Q <G >d >d >c <C <ZI",
            // The server fails the COPY: it skips to the next Sync.
            ">B >E >S <2 <G >d <E >c >S <ZI",
        ] {
            let (mut state, mut prepared) = fresh();
            play(&mut state, &mut prepared, script);
            assert!(state.is_idle(), "{script}: {state:?}");
        }
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">B >E >S <2 <G >d >S");
        assert!(state.copy_in && state.ready_owed() == 0, "a Sync amid the data is ignored");
    }

    #[test]
    fn an_error_in_a_query_or_at_a_sync_is_part_of_its_answer() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">Q >Q <E");
        assert_eq!(state.ready_owed(), 2, "a failed Query still gets its ReadyForQuery");
        play(&mut state, &mut prepared, "<ZE <ZE");
        assert!(state.owes_nothing());
        assert_eq!(state.transaction_status(), TransactionStatus::Failed);
        // A commit failing at the Sync.
        play(&mut state, &mut prepared, ">P >S <1 <E");
        assert_eq!(state.ready_owed(), 1);
        play(&mut state, &mut prepared, "<ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn asynchronous_messages_answer_nothing() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">P <N <S <A");
        assert_eq!(state.owed.len(), 1);
        assert_eq!(play(&mut state, &mut prepared, "<N"), "N");
    }

    #[test]
    fn ready_for_query_settles_what_was_owed_before_it() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">B >E >S <ZT");
        assert!(state.owes_nothing());
        assert_eq!(state.transaction_status(), TransactionStatus::InTransaction);
        // Unsolicited: passed on, owes nothing still.
        assert_eq!(play(&mut state, &mut prepared, "<ZI"), "Z");
        assert!(state.is_idle());
    }

    #[test]
    fn replies_to_inserted_messages_are_swallowed_and_the_statement_recorded() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >E >S");
        assert!(prepared.contains(1), "recorded as soon as it is sent");
        assert_eq!(play(&mut state, &mut prepared, "<1 <2 <D <C <ZI"), "2DCZ");
        assert!(prepared.contains(1) && state.is_idle());
    }

    #[test]
    fn a_failed_inserted_parse_is_forgotten_and_its_error_passed_on() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >E >S");
        assert_eq!(play(&mut state, &mut prepared, "<E <ZI"), "EZ");
        assert!(!prepared.contains(1) && state.is_idle());
    }

    #[test]
    fn an_inserted_parse_skipped_after_an_earlier_error_is_forgotten() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">B +P >B >S <E");
        assert!(!prepared.contains(1));
        play(&mut state, &mut prepared, "<ZI");
        // Inserted while the server skips to a Sync not sent yet: it never counts as sent.
        play(&mut state, &mut prepared, ">P <E +P");
        assert!(!prepared.contains(1) && state.owes_nothing());
        play(&mut state, &mut prepared, ">S <ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn an_inserted_parse_whose_answer_never_came_is_forgotten_at_ready_for_query() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >S");
        assert_eq!(play(&mut state, &mut prepared, "<ZI"), "Z");
        assert!(!prepared.contains(1));
    }

    #[test]
    fn replies_out_of_step_are_passed_on_and_leave_the_queue_alone() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >S");
        assert_eq!(play(&mut state, &mut prepared, "<C <2"), "C2", "not a ParseComplete: not swallowed");
        assert_eq!(state.owed.len(), 3);
    }
}
