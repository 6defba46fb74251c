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
//! During COPY FROM STDIN the server ignores Sync and Flush, and libpq and tokio-postgres
//! send a Sync before the COPY's data (and another after it): that first Sync stays owed, so
//! such a connection is not reused, as before the queue existed.

use std::collections::{HashSet, VecDeque};

use crate::protocol::{TransactionStatus, backend, frontend};

/// The names of the statements a server connection has prepared, as far as the proxy made
/// them: empty unless the proxy inserts Parse messages of its own (statements the client
/// prepares itself are not read from its messages).
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    names: HashSet<String>,
}

impl PreparedStatements {
    /// Notes that the server has (or is about to have) statement `name`.
    pub fn record(&mut self, name: &str) {
        self.names.insert(name.to_owned());
    }

    /// Notes that the server no longer has statement `name`.
    pub fn forget(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// Whether the server has statement `name`, or has a Parse of it on the way.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Notes that the server has none (after `DISCARD ALL` or `DEALLOCATE ALL`).
    pub(crate) fn forget_all(&mut self) {
        self.names.clear();
    }
}

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

/// Who sent a request, and so who its replies go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Client,
    Proxy,
    /// The proxy's Parse of a named statement, whose name is at the front of
    /// [`ProtocolState::preparing`] once this request is at the front of the queue.
    ProxyPreparing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owed {
    request: Request,
    sender: Sender,
}

/// Whether a server message goes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Forward,
    /// It answers a message the proxy inserted.
    Swallow,
}

/// What a server connection owes and where it stands; see the module docs.
#[derive(Debug, Clone)]
pub struct ProtocolState {
    owed: VecDeque<Owed>,
    /// Names of the statements the proxy's Parse messages in `owed` prepare, in the same order.
    preparing: VecDeque<Box<str>>,
    /// Extended-protocol messages were sent after the last Sync: the server is inside a batch.
    unsynced: bool,
    /// An error ended a batch whose Sync is not sent yet: the server discards what comes
    /// before it.
    skipping: bool,
    transaction_status: TransactionStatus,
    /// Type of the last message the server sent.
    last_message_type: u8,
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
            preparing: VecDeque::new(),
            unsynced: false,
            skipping: false,
            transaction_status: TransactionStatus::Idle,
            last_message_type: 0,
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

    /// A ReadyForQuery read outside the relay (the proxy's own queries) gives the status.
    pub(crate) fn set_transaction_status(&mut self, status: TransactionStatus) {
        self.transaction_status = status;
    }

    /// The client sent a message of type `tag`.
    pub(crate) fn client_sent(&mut self, tag: u8) {
        self.sent(tag, Sender::Client);
    }

    /// The proxy sent a message of type `tag` with `body`, whose replies the client must not
    /// see. A Parse of a named statement is recorded in `prepared` at once, so that a second
    /// Bind in the same batch finds it, and forgotten again if it fails or is skipped.
    pub(crate) fn proxy_sent(&mut self, tag: u8, body: &[u8], prepared: &mut PreparedStatements) {
        let name = (tag == frontend::PARSE)
            .then(|| String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or_default()))
            .filter(|name| !name.is_empty());
        let sender = if name.is_some() { Sender::ProxyPreparing } else { Sender::Proxy };
        if self.sent(tag, sender)
            && let Some(name) = name
        {
            prepared.record(&name);
            self.preparing.push_back(name.into());
        }
    }

    /// Queues the replies a message of type `tag` is owed; false when it is owed none.
    fn sent(&mut self, tag: u8, sender: Sender) -> bool {
        if tag == frontend::FLUSH {
            self.unsynced = true;
        }
        let Some(request) = Request::for_tag(tag) else {
            return false;
        };
        if request == Request::Sync {
            self.unsynced = false;
            self.skipping = false;
        } else if self.skipping {
            return false;
        } else if !request.is_sync_point() {
            self.unsynced = true;
        }
        self.owed.push_back(Owed { request, sender });
        true
    }

    /// The server sent a message of type `tag`; `body` is read for ReadyForQuery only.
    pub(crate) fn server_sent(&mut self, tag: u8, body: &[u8], prepared: &mut PreparedStatements) -> Delivery {
        self.last_message_type = tag;
        match tag {
            backend::NOTICE_RESPONSE | backend::PARAMETER_STATUS | backend::NOTIFICATION_RESPONSE => Delivery::Forward,
            backend::READY_FOR_QUERY => {
                self.transaction_status = TransactionStatus::from_byte(body.first().copied().unwrap_or_default());
                while let Some(owed) = self.owed.pop_front() {
                    if owed.request.is_sync_point() {
                        return delivery(owed.sender);
                    }
                    self.abandon(owed, prepared);
                }
                Delivery::Forward
            }
            // Always passed on, even when it answers the proxy: the client's own messages up
            // to its Sync are skipped without a reply, and this is what tells it why.
            backend::ERROR_RESPONSE => {
                if self.owed.front().is_some_and(|owed| !owed.request.is_sync_point()) {
                    while let Some(owed) = self.owed.front().copied()
                        && owed.request != Request::Sync
                    {
                        self.owed.pop_front();
                        self.abandon(owed, prepared);
                    }
                    self.skipping = self.owed.is_empty();
                }
                Delivery::Forward
            }
            _ => {
                let Some(&owed) = self.owed.front() else {
                    return Delivery::Forward;
                };
                match owed.request.answer(tag) {
                    Answer::Foreign => Delivery::Forward,
                    Answer::Partial => delivery(owed.sender),
                    Answer::Final => {
                        self.owed.pop_front();
                        if owed.sender == Sender::ProxyPreparing {
                            // Prepared: the name stays recorded.
                            self.preparing.pop_front();
                        }
                        delivery(owed.sender)
                    }
                }
            }
        }
    }

    /// Drops a request whose answer will not come (skipped after an error, or ended by one).
    fn abandon(&mut self, owed: Owed, prepared: &mut PreparedStatements) {
        if owed.sender == Sender::ProxyPreparing
            && let Some(name) = self.preparing.pop_front()
        {
            prepared.forget(&name);
        }
    }
}

fn delivery(sender: Sender) -> Delivery {
    match sender {
        Sender::Client => Delivery::Forward,
        Sender::Proxy | Sender::ProxyPreparing => Delivery::Swallow,
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
                b'>' => state.client_sent(bytes[1]),
                b'+' => state.proxy_sent(bytes[1], b"s1\0SELECT 1\0\0\0", prepared),
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
        assert!(prepared.contains("s1"), "recorded as soon as it is sent");
        assert_eq!(play(&mut state, &mut prepared, "<1 <2 <D <C <ZI"), "2DCZ");
        assert!(prepared.contains("s1") && state.preparing.is_empty() && state.is_idle());
    }

    #[test]
    fn a_failed_inserted_parse_is_forgotten_and_its_error_passed_on() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >E >S");
        assert_eq!(play(&mut state, &mut prepared, "<E <ZI"), "EZ");
        assert!(!prepared.contains("s1") && state.preparing.is_empty() && state.is_idle());
    }

    #[test]
    fn an_inserted_parse_skipped_after_an_earlier_error_is_forgotten() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, ">B +P >B >S <E");
        assert!(!prepared.contains("s1") && state.preparing.is_empty());
        play(&mut state, &mut prepared, "<ZI");
        // Inserted while the server skips to a Sync not sent yet: it never counts as sent.
        play(&mut state, &mut prepared, ">P <E +P");
        assert!(!prepared.contains("s1") && state.owes_nothing());
        play(&mut state, &mut prepared, ">S <ZI");
        assert!(state.is_idle());
    }

    #[test]
    fn an_inserted_parse_whose_answer_never_came_is_forgotten_at_ready_for_query() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >S");
        assert_eq!(play(&mut state, &mut prepared, "<ZI"), "Z");
        assert!(!prepared.contains("s1") && state.preparing.is_empty());
    }

    #[test]
    fn replies_out_of_step_are_passed_on_and_leave_the_queue_alone() {
        let (mut state, mut prepared) = fresh();
        play(&mut state, &mut prepared, "+P >B >S");
        assert_eq!(play(&mut state, &mut prepared, "<C <2"), "C2", "not a ParseComplete: not swallowed");
        assert_eq!(state.owed.len(), 3);
    }
}
