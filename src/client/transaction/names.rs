//! A transaction-mode client's prepared-statement names, as PostgreSQL would keep them for its
//! session: each name stands for one of the pool's shared [`Statement`]s, plus the client's
//! unnamed statement, kept so it can be prepared again on another server connection.
//!
//! A name changes when the server's reply says the message that changes it went through (a
//! failed or skipped Parse creates no name; a skipped Close removes none), so each change is
//! pending until then, under a [`Token`] the relay reports back. Within one batch a pending
//! change already counts: if the message behind it fails, the server skips the rest of the
//! batch anyway. Across batches it does not, and a message that depends on it waits.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::settings::Changes;
use crate::pool::Statement;
use crate::protocol::TransactionStatus;
use crate::upstream::{Settled, Token};

/// PostgreSQL keeps statement names in a table keyed by their first 63 bytes
/// (`NAMEDATALEN - 1`), so longer names that share those are one name.
const NAME_KEY_LEN: usize = 63;

/// The client's names and unnamed statement.
#[derive(Default)]
pub(super) struct Names {
    names: HashMap<Box<[u8]>, Named>,
    unnamed: Option<Unnamed>,
    pending: HashMap<Token, Pending>,
    next_token: Token,
    /// Attaches to a server connection so far: names from an earlier one came first.
    attach: u64,
    /// Syncs of the client seen so far: the batch its messages belong to.
    batch: u64,
}

/// One of the client's names.
struct Named {
    statement: Arc<Statement>,
    /// The settings it changes when run.
    changes: Option<Changes>,
    /// When its Parse was sent: (attach, the server connection's sequence number).
    since: (u64, u64),
    /// Its Parse is unanswered: (batch, token).
    pending: Option<(u64, Token)>,
    /// A Close of it is unanswered: (batch, token).
    closing: Option<(u64, Token)>,
}

/// The client's unnamed statement: the Parse body after the (empty) name.
pub(super) struct Unnamed {
    pub(super) definition: Bytes,
    /// The settings it changes when run.
    pub(super) changes: Option<Changes>,
    /// Which of the client's unnamed statements it is.
    pub(super) generation: u64,
}

/// What a tokened message does once settled.
enum Pending {
    Prepare(Box<[u8]>),
    Close(Box<[u8]>),
    Unnamed(u64),
    /// Settings changes, for [`Settings`](super::settings::Settings) to apply.
    Settings(Changes),
}

/// Where a name stands for a message of the current batch.
pub(super) enum Lookup {
    Found(Arc<Statement>, Option<Changes>),
    /// No such name (or it is closed earlier in this batch).
    Absent,
    /// It depends on a reply to an earlier batch.
    Unsettled,
}

fn key(name: &[u8]) -> &[u8] {
    &name[..name.len().min(NAME_KEY_LEN)]
}

impl Names {
    /// A new attach begins: what follows is sent on another server connection.
    pub(super) fn attached(&mut self) {
        self.attach += 1;
    }

    /// The client sent a Sync.
    pub(super) fn synced(&mut self) {
        self.batch += 1;
    }

    /// Where name `name` stands.
    pub(super) fn lookup(&self, name: &[u8]) -> Lookup {
        let Some(named) = self.names.get(key(name)) else { return Lookup::Absent };
        let unsettled = |change: Option<(u64, Token)>| change.is_some_and(|(batch, _)| batch != self.batch);
        if unsettled(named.pending) || unsettled(named.closing) {
            Lookup::Unsettled
        } else if named.closing.is_some() {
            Lookup::Absent
        } else {
            Lookup::Found(named.statement.clone(), named.changes.clone())
        }
    }

    /// Names `statement` `name` at once (no server saw it; see `answer_without_server`).
    pub(super) fn add(&mut self, name: &[u8], statement: Arc<Statement>, changes: Option<Changes>) {
        let named = Named { statement, changes, since: (self.attach, 0), pending: None, closing: None };
        self.names.insert(key(name).into(), named);
    }

    /// Names `statement` `name` once the Parse sent as the server's message number `sequence`
    /// goes through; returns the token it carries.
    pub(super) fn add_pending(
        &mut self,
        name: &[u8],
        statement: Arc<Statement>,
        changes: Option<Changes>,
        sequence: u64,
    ) -> Token {
        let name: Box<[u8]> = key(name).into();
        let token = self.token(Pending::Prepare(name.clone()));
        let since = (self.attach, sequence);
        let named = Named { statement, changes, since, pending: Some((self.batch, token)), closing: None };
        self.names.insert(name, named);
        token
    }

    /// Removes name `name` once the Close it carries goes through; `None` if there is no such
    /// name (closing it is no error).
    pub(super) fn remove_pending(&mut self, name: &[u8]) -> Option<Token> {
        self.names.get(key(name))?;
        let token = self.token(Pending::Close(key(name).into()));
        let batch = self.batch;
        self.names.get_mut(key(name)).expect("looked up above").closing = Some((batch, token));
        Some(token)
    }

    /// The client's unnamed statement.
    pub(super) fn unnamed(&self) -> Option<&Unnamed> {
        self.unnamed.as_ref()
    }

    /// The client's unnamed statement is now `definition` (or, with `None`, gone: a simple
    /// query or a Close destroys it); returns the token its Parse carries.
    pub(super) fn set_unnamed(
        &mut self,
        definition: Option<&[u8]>,
        changes: Option<Changes>,
        generation: u64,
    ) -> Option<Token> {
        self.unnamed = definition.map(|definition| Unnamed {
            definition: Bytes::copy_from_slice(definition),
            changes,
            generation,
        });
        self.unnamed.is_some().then(|| self.token(Pending::Unnamed(generation)))
    }

    /// A token for a message that makes settings `changes`.
    pub(super) fn settings_token(&mut self, changes: Changes) -> Token {
        self.token(Pending::Settings(changes))
    }

    fn token(&mut self, pending: Pending) -> Token {
        self.next_token = self.next_token.wrapping_add(1);
        self.pending.insert(self.next_token, pending);
        self.next_token
    }

    /// Applies what the server did with a tokened message; returns the settings changes that
    /// took effect, with the transaction status after them.
    pub(super) fn settled(&mut self, settled: Settled) -> Option<(Changes, TransactionStatus)> {
        let (token, done) = match settled {
            Settled::Done(token, _) => (token, true),
            Settled::Failed(token) => (token, false),
            Settled::DroppedStatements(sequence) => {
                let attach = self.attach;
                self.names.retain(|_, named| named.since > (attach, sequence));
                return None;
            }
        };
        match self.pending.remove(&token) {
            Some(Pending::Prepare(name)) => {
                if let Some(named) = self.names.get_mut(&name)
                    && named.pending.is_some_and(|(_, t)| t == token)
                {
                    if done {
                        named.pending = None;
                    } else {
                        self.names.remove(&name);
                    }
                }
            }
            Some(Pending::Close(name)) => {
                if let Some(named) = self.names.get_mut(&name)
                    && named.closing.is_some_and(|(_, t)| t == token)
                {
                    if done {
                        self.names.remove(&name);
                    } else {
                        named.closing = None;
                    }
                }
            }
            // A failed Parse of the unnamed statement leaves none (the server drops the old
            // one before it parses the new).
            Some(Pending::Unnamed(generation))
                if !done && self.unnamed.as_ref().is_some_and(|unnamed| unnamed.generation == generation) =>
            {
                self.unnamed = None;
            }
            Some(Pending::Settings(changes)) => {
                if let Settled::Done(_, status) = settled {
                    return Some((changes, status));
                }
            }
            Some(Pending::Unnamed(_)) | None => {}
        }
        None
    }
}
