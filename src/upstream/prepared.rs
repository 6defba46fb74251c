//! What a server connection has prepared on the proxy's behalf, and the names statements have
//! there.

use std::collections::{HashMap, HashSet};

use crate::protocol::frontend;

/// A statement as the proxy prepares it on server connections, whatever the clients call it;
/// see [`server_statement_name`]. Ids are never reused.
pub type StatementId = u64;

/// The name statement `id` has on every server connection that prepared it. Clients never
/// see or reach it: their own names are mapped.
pub fn server_statement_name(id: StatementId) -> String {
    format!("_lbp{id}")
}

/// The body of a Close of statement `id` on a server connection.
pub fn close_statement_body(id: StatementId) -> Vec<u8> {
    let mut body = vec![frontend::OF_STATEMENT];
    body.extend_from_slice(server_statement_name(id).as_bytes());
    body.push(0);
    body
}

/// The statements a server connection has prepared on the proxy's behalf (or has a Parse of
/// on the way), with when each was last used, so the least recently used can be closed when
/// there are too many. Statements a client prepares under its own name in session mode are
/// not read from its messages and not listed.
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    entries: HashMap<StatementId, Prepared>,
    /// Counts uses, to order them.
    clock: u64,
    /// Whose unnamed statement the server holds, as the hook that sent it labelled it.
    unnamed: Option<UnnamedOwner>,
    /// Statements whose plan the server refused to use after the tables under them changed
    /// (`0A000 cached plan must not change result type`): prepared again before their next use.
    pub(super) stale: HashSet<StatementId>,
}

/// Who sent the Parse of the unnamed statement a server holds: a client's id and which of its
/// unnamed statements it was.
pub type UnnamedOwner = (u64, u64);

#[derive(Debug, Clone, Copy)]
struct Prepared {
    /// Sequence number of the message that prepares it (see [`ProtocolState::sequence`]).
    since: u64,
    last_used: u64,
}

impl PreparedStatements {
    /// Whether the server has statement `id`, or has a Parse of it on the way.
    pub fn contains(&self, id: StatementId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Whether the server's copy of `id` must be closed and prepared again before it is used.
    pub fn is_stale(&self, id: StatementId) -> bool {
        self.stale.contains(&id)
    }

    /// Notes a use of `id`, for the least-recently-used order.
    pub fn touch(&mut self, id: StatementId) {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_used = self.clock;
        }
    }

    /// How many statements the server has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the server has none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The statement used least recently.
    pub fn least_recently_used(&self) -> Option<StatementId> {
        self.entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(&id, _)| id)
    }

    /// Whose unnamed statement the server holds, if the proxy knows.
    pub fn unnamed_owner(&self) -> Option<UnnamedOwner> {
        self.unnamed
    }

    /// Notes whose unnamed statement the server holds (`None`: nobody's, or unknown).
    pub fn set_unnamed_owner(&mut self, owner: Option<UnnamedOwner>) {
        self.unnamed = owner;
    }

    /// Notes that the server has (or is about to have) statement `id`, prepared by the message
    /// with sequence number `since`.
    pub(crate) fn record(&mut self, id: StatementId, since: u64) {
        self.clock += 1;
        self.entries.insert(id, Prepared { since, last_used: self.clock });
        self.stale.remove(&id);
    }

    /// Notes that the server no longer has statement `id`.
    pub(crate) fn forget(&mut self, id: StatementId) {
        self.entries.remove(&id);
        self.stale.remove(&id);
    }

    /// Notes that the server has none (after `DISCARD ALL` or `DEALLOCATE ALL`).
    pub(crate) fn forget_all(&mut self) {
        self.entries.clear();
        self.stale.clear();
        self.unnamed = None;
    }

    /// Notes that the server dropped every statement prepared by messages sent before the
    /// one with sequence number `sequence` (a `DISCARD ALL` there): those sent after it
    /// stay.
    pub(super) fn forget_before(&mut self, sequence: u64) {
        self.entries.retain(|_, entry| entry.since > sequence);
        let entries = &self.entries;
        self.stale.retain(|id| entries.contains_key(id));
    }
}
