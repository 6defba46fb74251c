//! What a transaction-mode client's messages become on whichever server connection it has at
//! the moment: its statement names mapped to the pool's shared statements, statements
//! prepared where they are missing, replies the server cannot give answered in place, and the
//! SQL that ties a session to its server noticed.
//!
//! A client's names live here, with the client; what a server has prepared lives with the
//! server connection ([`PreparedStatements`]). A client's Parse of a statement the server
//! already has is answered with a ParseComplete of the proxy's own, in order; a Bind or
//! Describe of a statement the server lacks is preceded by a Parse of the proxy's own, whose
//! reply the client never sees. Errors PostgreSQL would give about names (already exists,
//! does not exist) are given by sending the server a message that fails in its place, so the
//! server ends the transaction and skips to the Sync exactly as it would have.
//!
//! Name changes take effect when the server's reply says they happened (a failed or skipped
//! Parse creates no name). Within one batch that needs no waiting: if an earlier message
//! fails, the server skips the rest of the batch anyway. A message that depends on the
//! outcome of a message in an earlier batch still unanswered is held until that answer
//! comes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::metrics;
use crate::pool::{Pool, Statement};
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{backend, frontend, sqlstate};
use crate::relay::{Decision, Hook, Insert};
use crate::sql::{self, PinReason};
use crate::upstream::{Settled, Token, server_statement_name};

/// A statement name no client can reach (client names are always mapped), used to make the
/// server fail in place of a message the proxy refuses.
const MISSING_STATEMENT: &[u8] = b"_lbp_missing\0";

/// The transaction-mode hook of one client.
pub(super) struct TransactionHook {
    /// The client, as the server's unnamed statement owner.
    client: u64,
    pool: Arc<Pool>,
    /// Most statements a server connection keeps.
    max_prepared: usize,
    names: HashMap<Box<[u8]>, Named>,
    unnamed: Option<Unnamed>,
    pending: HashMap<Token, Pending>,
    next_token: Token,
    /// Messages of the client seen so far.
    sequence: u64,
    /// Syncs of the client seen so far: the batch its messages belong to.
    batch: u64,
    /// Why the client must keep its server connection, once it must.
    pin: Option<PinReason>,
    cache: metrics::StatementCache,
}

/// A statement name of the client's.
struct Named {
    statement: Arc<Statement>,
    /// The client's message that created it.
    since: u64,
    /// Its Parse is unanswered: (batch, token).
    pending: Option<(u64, Token)>,
    /// A Close of it is unanswered: (batch, token).
    closing: Option<(u64, Token)>,
}

/// Where a name stands for a message of the current batch.
enum Lookup {
    Found(Arc<Statement>),
    /// No such name (or it is closed earlier in this batch).
    Absent,
    /// It depends on a reply to an earlier batch.
    Unsettled,
}

/// The client's unnamed statement: its definition, to prepare it again on another server.
struct Unnamed {
    definition: Bytes,
    /// The client's message that created it.
    since: u64,
}

/// What a tokened message does to the client's names once settled.
enum Pending {
    Prepare(Box<[u8]>),
    Close(Box<[u8]>),
    Unnamed(u64),
    DropAll(u64),
}

impl TransactionHook {
    pub(super) fn new(client: u64, pool: Arc<Pool>) -> TransactionHook {
        let max_prepared = pool.upstream().settings().max_prepared_statements;
        TransactionHook {
            client,
            cache: metrics::StatementCache::new(&pool.upstream().label),
            pool,
            max_prepared,
            names: HashMap::new(),
            unnamed: None,
            pending: HashMap::new(),
            next_token: 0,
            sequence: 0,
            batch: 0,
            pin: None,
        }
    }

    /// Why the client must keep its server connection, if it must.
    pub(super) fn pinned(&self) -> Option<PinReason> {
        self.pin
    }

    /// Pins the client (the first reason is the one kept).
    pub(super) fn pin(&mut self, reason: PinReason) {
        self.pin.get_or_insert(reason);
    }

    fn token(&mut self, pending: Pending) -> Token {
        self.next_token = self.next_token.wrapping_add(1);
        self.pending.insert(self.next_token, pending);
        self.next_token
    }

    /// Notes what `sql` does to the session.
    fn read_sql(&mut self, sql: &[u8]) -> bool {
        let mut drops_statements = false;
        for statement in sql::classify(&String::from_utf8_lossy(sql)) {
            match statement {
                sql::Statement::Pin(reason) => self.pin(reason),
                sql::Statement::Set { .. } | sql::Statement::Reset { .. } | sql::Statement::ResetAll => {
                    self.pin(PinReason::UntrackedSet)
                }
                sql::Statement::DeallocateAll | sql::Statement::DiscardAll => drops_statements = true,
                sql::Statement::Deallocate(_) | sql::Statement::Plain => {}
            }
        }
        drops_statements
    }

    /// The server's statements are capped: while nothing is owed, the least recently used go.
    fn evict(&mut self, insert: &mut Insert<'_>) {
        while insert.protocol().owes_nothing() && insert.prepared().len() >= self.max_prepared {
            let Some(victim) = insert.prepared().least_recently_used() else { break };
            insert.close(victim);
            self.cache.eviction.increment(1);
        }
    }

    /// Makes sure the server has `statement`, preparing it ahead if not.
    fn ensure_prepared(&self, statement: &Statement, insert: &mut Insert<'_>) {
        if insert.prepared().contains(statement.id) {
            insert.touch(statement.id);
            self.cache.hit.increment(1);
        } else {
            insert.message(frontend::PARSE, &statement.parse_body(), Some(statement.id));
            self.cache.miss.increment(1);
        }
    }

    /// Makes the server's unnamed statement the client's own before a Bind or Describe of it.
    fn ensure_unnamed(&self, insert: &mut Insert<'_>) {
        let owner = insert.prepared().unnamed_owner();
        match &self.unnamed {
            Some(unnamed) if owner != Some((self.client, unnamed.since)) => {
                let mut body = BytesMut::with_capacity(1 + unnamed.definition.len());
                body.extend_from_slice(b"\0");
                body.extend_from_slice(&unnamed.definition);
                insert.message(frontend::PARSE, &body, None);
                insert.set_unnamed_owner(Some((self.client, unnamed.since)));
            }
            // Another client's unnamed statement must not be what this client binds: close it
            // and let the server say there is none.
            None if owner.is_some_and(|(client, _)| client != self.client) => {
                insert.message(frontend::CLOSE, &[frontend::OF_STATEMENT, 0], None);
                insert.set_unnamed_owner(None);
            }
            _ => {}
        }
    }

    /// Where the client's name `name` stands. Within one batch a change counts at once: if
    /// the message that made it fails, the server skips the rest of the batch anyway.
    fn lookup(&self, name: &[u8]) -> Lookup {
        let Some(named) = self.names.get(name) else { return Lookup::Absent };
        let unsettled = |change: Option<(u64, Token)>| change.is_some_and(|(batch, _)| batch != self.batch);
        if unsettled(named.pending) || unsettled(named.closing) {
            Lookup::Unsettled
        } else if named.closing.is_some() {
            Lookup::Absent
        } else {
            Lookup::Found(named.statement.clone())
        }
    }

    /// Takes a Parse while the client has no server connection (see
    /// [`answer_without_server`](super::answer_without_server)): the name is the client's at
    /// once, and the statement is prepared where it is first used. A name already in use is
    /// PostgreSQL's error.
    pub(super) fn parse_without_server(&mut self, body: &[u8]) -> Result<(), ErrorFields> {
        self.sequence += 1;
        let (name, definition) = split_cstr(body).unwrap_or((body, &[]));
        if let Some((query, _)) = split_cstr(definition) {
            self.read_sql(query);
        }
        if name.is_empty() {
            self.unnamed = Some(Unnamed { definition: Bytes::copy_from_slice(definition), since: self.sequence });
            return Ok(());
        }
        if let Lookup::Found(_) | Lookup::Unsettled = self.lookup(name) {
            let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
            return Err(ErrorFields::new(Severity::Error, sqlstate::DUPLICATE_PREPARED_STATEMENT, message));
        }
        let statement = self.pool.statements().statement(definition);
        self.names.insert(name.into(), Named { statement, since: self.sequence, pending: None, closing: None });
        Ok(())
    }

    /// Counts a Sync the server never saw.
    pub(super) fn sync_without_server(&mut self) {
        self.sequence += 1;
        self.batch += 1;
    }

    fn parse(&mut self, body: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        let Some((name, definition)) = split_cstr(body) else { return Decision::Forward };
        if let Some((query, _)) = split_cstr(definition) {
            self.read_sql(query);
        }
        if name.is_empty() {
            self.unnamed = (body.len() == len)
                .then(|| Unnamed { definition: Bytes::copy_from_slice(definition), since: self.sequence });
            if self.unnamed.is_none() {
                // Too long to keep for preparing again elsewhere: keep the server instead.
                self.pin(PinReason::LongStatement);
            }
            insert.set_unnamed_owner(Some((self.client, self.sequence)));
            let token = self.token(Pending::Unnamed(self.sequence));
            insert.track(token);
            return Decision::Forward;
        }
        match self.lookup(name) {
            Lookup::Unsettled => return Decision::Hold,
            Lookup::Found(_) => {
                let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
                return refuse(insert, sqlstate::DUPLICATE_PREPARED_STATEMENT, message);
            }
            Lookup::Absent => {}
        }
        if body.len() < len {
            let message =
                "lakebase-proxy: a statement longer than 1 MiB cannot be prepared by name in transaction mode";
            return refuse(insert, sqlstate::PROGRAM_LIMIT_EXCEEDED, message.into());
        }
        let statement = self.pool.statements().statement(definition);
        let name: Box<[u8]> = name.into();
        let token = self.token(Pending::Prepare(name.clone()));
        let id = statement.id;
        self.names.insert(
            name.clone(),
            Named { statement, since: self.sequence, pending: Some((self.batch, token)), closing: None },
        );
        insert.track(token);
        if insert.prepared().contains(id) {
            insert.touch(id);
            self.cache.hit.increment(1);
            insert.answer(frontend::PARSE, reply(backend::PARSE_COMPLETE));
            return Decision::Drop;
        }
        self.cache.miss.increment(1);
        let mut head = server_statement_name(id).into_bytes();
        head.push(0);
        insert.rewrite(frontend::PARSE, &head, len - name.len() - 1, Some(id));
        Decision::Rewrite { cut: name.len() + 1 }
    }

    /// A Bind or a Describe of a statement naming `name`, whose body starts with `lead` (the
    /// portal name and its NUL, or the Describe's kind byte) before the name.
    fn use_statement(&mut self, tag: u8, lead: &[u8], name: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        if name.is_empty() {
            self.ensure_unnamed(insert);
            return Decision::Forward;
        }
        match self.lookup(name) {
            Lookup::Found(statement) => {
                self.ensure_prepared(&statement, insert);
                let mut head = lead.to_vec();
                head.extend_from_slice(server_statement_name(statement.id).as_bytes());
                head.push(0);
                let cut = lead.len() + name.len() + 1;
                insert.rewrite(tag, &head, len - cut, None);
                Decision::Rewrite { cut }
            }
            Lookup::Absent => {
                let message = format!("prepared statement \"{}\" does not exist", String::from_utf8_lossy(name));
                refuse(insert, sqlstate::UNDEFINED_PREPARED_STATEMENT, message)
            }
            Lookup::Unsettled => Decision::Hold,
        }
    }

    fn close(&mut self, name: &[u8], insert: &mut Insert<'_>) -> Decision {
        if name.is_empty() {
            self.unnamed = None;
            insert.set_unnamed_owner(None);
            return Decision::Forward;
        }
        match self.lookup(name) {
            Lookup::Found(_) => {
                let token = self.token(Pending::Close(name.into()));
                let batch = self.batch;
                if let Some(named) = self.names.get_mut(name) {
                    named.closing = Some((batch, token));
                }
                insert.track(token);
            }
            Lookup::Unsettled => return Decision::Hold,
            // Closing a name that does not exist is no error.
            Lookup::Absent => {}
        }
        insert.answer(frontend::CLOSE, reply(backend::CLOSE_COMPLETE));
        Decision::Drop
    }
}

impl Hook for TransactionHook {
    fn wants(&self, tag: u8) -> bool {
        matches!(
            tag,
            frontend::PARSE | frontend::BIND | frontend::DESCRIBE | frontend::CLOSE | frontend::QUERY | frontend::SYNC
        )
    }

    fn reads_command_tags(&self) -> bool {
        true
    }

    fn detaches_when_idle(&self) -> bool {
        self.pin.is_none()
    }

    fn before(&mut self, tag: u8, body: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        self.sequence += 1;
        if tag == frontend::SYNC {
            self.batch += 1;
            return Decision::Forward;
        }
        // The server discards everything up to the Sync: there is nothing to map.
        if insert.protocol().skipping() {
            return Decision::Forward;
        }
        self.evict(insert);
        match tag {
            frontend::PARSE => self.parse(body, len, insert),
            frontend::BIND => match split_cstr(body).and_then(|(portal, rest)| Some((portal, split_cstr(rest)?.0))) {
                Some((portal, name)) => {
                    let lead = &body[..portal.len() + 1];
                    self.use_statement(tag, lead, name, len, insert)
                }
                None => Decision::Forward,
            },
            frontend::DESCRIBE => match body.split_first() {
                Some((&frontend::OF_STATEMENT, rest)) => match split_cstr(rest) {
                    Some((name, _)) => self.use_statement(tag, &[frontend::OF_STATEMENT], name, len, insert),
                    None => Decision::Forward,
                },
                _ => Decision::Forward,
            },
            frontend::CLOSE => match body.split_first() {
                Some((&frontend::OF_STATEMENT, rest)) => match split_cstr(rest) {
                    Some((name, _)) => self.close(name, insert),
                    None => Decision::Forward,
                },
                _ => Decision::Forward,
            },
            frontend::QUERY => {
                // A simple query destroys the unnamed statement, the client's and the server's.
                self.unnamed = None;
                insert.set_unnamed_owner(None);
                if self.read_sql(split_cstr(body).map_or(body, |(sql, _)| sql)) {
                    let token = self.token(Pending::DropAll(self.sequence));
                    insert.track(token);
                }
                Decision::Forward
            }
            _ => Decision::Forward,
        }
    }

    fn settled(&mut self, settled: Settled) {
        let (token, done) = match settled {
            Settled::Done(token) => (token, true),
            Settled::Failed(token) => (token, false),
            Settled::DroppedStatements(token) => {
                if let Some(Pending::DropAll(since)) = self.pending.get(&token) {
                    let since = *since;
                    self.names.retain(|_, named| named.since > since);
                }
                return;
            }
        };
        let Some(pending) = self.pending.remove(&token) else { return };
        match pending {
            Pending::Prepare(name) => {
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
            Pending::Close(name) => {
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
            Pending::Unnamed(since) => {
                if !done && self.unnamed.as_ref().is_some_and(|unnamed| unnamed.since == since) {
                    self.unnamed = None;
                }
            }
            Pending::DropAll(_) => {}
        }
    }
}

/// Refuses the client's message with an error PostgreSQL would give in its place.
pub(super) fn refuse(insert: &mut Insert<'_>, code: &str, message: String) -> Decision {
    let mut error = BytesMut::new();
    ErrorFields::new(Severity::Error, code, message).write_error(&mut error);
    let mut probe = vec![frontend::OF_STATEMENT];
    probe.extend_from_slice(MISSING_STATEMENT);
    insert.refuse(frontend::DESCRIBE, &probe, error.freeze());
    Decision::Drop
}

/// A reply message with an empty body.
pub(super) fn reply(tag: u8) -> Bytes {
    let mut buf = BytesMut::with_capacity(5);
    messages::raw(&mut buf, tag, &[]);
    buf.freeze()
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}
