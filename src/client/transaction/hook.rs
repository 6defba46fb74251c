//! What a transaction-mode client's messages become on whichever server connection it has at
//! the moment: its statement names mapped to the pool's shared statements, statements
//! prepared where they are missing, replies the server cannot give answered in place, and the
//! SQL that ties a session to its server noticed.
//!
//! A client's names live with the client ([`Names`]); what a server has prepared lives with
//! the server connection ([`PreparedStatements`](crate::upstream::PreparedStatements)). A
//! client's Parse always reaches the server, so the plan it gets is as fresh as a direct
//! connection's (after a DDL the server's old copy is closed first); a Bind or Describe of a
//! statement the server lacks is preceded by a Parse of the proxy's own, whose reply the
//! client never sees. A Close of a name is answered in place: other clients may share the
//! server's statement. Errors PostgreSQL would give about names (already exists, does not
//! exist) are given by sending the server a message that fails in its place, so the server
//! ends the transaction and skips to the Sync exactly as it would have.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::names::{Lookup, Names};
use super::settings::{Batch, Change, Changes, Outcome, Settings};
use tracing::info;

use crate::metrics;
use crate::ops::view::ClientHandle;
use crate::pool::{Pool, Statement};
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{StartupParams, TransactionStatus, backend, frontend, sqlstate};
use crate::relay::{Decision, Hook, Insert};
use crate::sql::{self, PinReason};
use crate::upstream::{Settled, StatementEffect, close_statement_body};

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
    pub(super) names: Names,
    pub(super) settings: Settings,
    /// The settings changes of the batch being sent.
    batch: Batch,
    /// Messages of the client seen so far.
    sequence: u64,
    /// Why the client must keep its server connection, once it must.
    pin: Option<PinReason>,
    /// The client's entry in the admin console, which shows a pin.
    console: ClientHandle,
}

impl TransactionHook {
    pub(super) fn new(client: u64, pool: Arc<Pool>, startup: StartupParams, console: ClientHandle) -> TransactionHook {
        let max_prepared = pool.upstream().settings().max_prepared_statements;
        TransactionHook {
            client,
            pool,
            max_prepared,
            names: Names::default(),
            settings: Settings::new(startup),
            batch: Batch::default(),
            sequence: 0,
            pin: None,
            console,
        }
    }

    /// Why the client must keep its server connection, if it must.
    pub(super) fn pinned(&self) -> Option<PinReason> {
        self.pin
    }

    /// Pins the client, saying so once: in the log, a metric and the console.
    fn pin(&mut self, reason: PinReason) {
        if self.pin.is_some() {
            return;
        }
        self.pin = Some(reason);
        info!(reason = reason.label(), "client pinned to its server connection");
        metrics::client_pinned(&self.pool.upstream().label, reason.label());
        self.console.update(|info| info.pinned = Some(reason.label()));
    }

    /// Notes what `sql` does to the session: pins it, or returns the settings it changes (to
    /// track once they take effect), with its statements.
    fn read_sql(&mut self, sql: &[u8]) -> (Vec<sql::Statement>, Option<Changes>) {
        let statements = sql::classify(&String::from_utf8_lossy(sql));
        for statement in &statements {
            match statement {
                sql::Statement::Pin(reason) => self.pin(*reason),
                sql::Statement::DiscardAll => self.pin(PinReason::Discard),
                _ => {}
            }
        }
        let changes = match self.settings.outcome(&statements) {
            Outcome::Nothing => None,
            Outcome::Track(changes) => Some(changes),
            Outcome::Pin => {
                self.pin(PinReason::UntrackedSet);
                None
            }
        };
        (statements, changes)
    }

    /// Pins the client where its settings changes took effect inside a transaction block.
    fn apply_settings(&mut self, changes: &[Change], status: TransactionStatus) {
        if !self.settings.apply(changes, status) {
            self.pin(PinReason::UntrackedSet);
        }
    }

    /// Takes a Parse while the client has no server connection (see
    /// [`answer_without_server`](super::answer_without_server)): the name is the client's at
    /// once, and the statement is prepared where it is first used. A name already in use is
    /// PostgreSQL's error.
    pub(super) fn parse_without_server(&mut self, body: &[u8]) -> Result<(), ErrorFields> {
        self.sequence += 1;
        let (name, definition) = split_cstr(body).unwrap_or((body, &[]));
        let changes = split_cstr(definition).and_then(|(query, _)| self.read_sql(query).1);
        if name.is_empty() {
            self.names.set_unnamed(Some(definition), changes, self.sequence);
            return Ok(());
        }
        if let Lookup::Found(..) | Lookup::Unsettled = self.names.lookup(name) {
            return Err(already_exists(name));
        }
        self.names.add(name, self.pool.statements().statement(definition), changes);
        Ok(())
    }

    /// The server's statements are capped: while nothing is owed, the least recently used go.
    fn evict(&mut self, insert: &mut Insert<'_>) {
        while insert.protocol().owes_nothing() && insert.prepared().len() >= self.max_prepared {
            let Some(victim) = insert.prepared().least_recently_used() else { break };
            insert.close(victim);
            self.pool.upstream().statement_metrics.eviction.increment(1);
        }
    }

    /// Makes sure the server has a usable copy of `statement`, preparing it ahead if not.
    fn ensure_prepared(&self, statement: &Statement, insert: &mut Insert<'_>) {
        let id = statement.id;
        if insert.prepared().contains(id) && !insert.prepared().is_stale(id) {
            insert.touch(id);
            self.pool.upstream().statement_metrics.hit.increment(1);
            return;
        }
        self.pool.upstream().statement_metrics.miss.increment(1);
        let effect = if insert.prepared().contains(id) {
            insert.message(frontend::CLOSE, &close_statement_body(id), StatementEffect::None);
            StatementEffect::Replaces(id)
        } else {
            StatementEffect::Prepares(id)
        };
        insert.message(frontend::PARSE, &statement.parse_body(), effect);
    }

    /// Makes the server's unnamed statement the client's own before a Bind or Describe of it.
    fn ensure_unnamed(&self, insert: &mut Insert<'_>) {
        let owner = insert.prepared().unnamed_owner();
        match self.names.unnamed() {
            Some(unnamed) if owner != Some((self.client, unnamed.generation)) => {
                let mut body = BytesMut::with_capacity(1 + unnamed.definition.len());
                body.extend_from_slice(b"\0");
                body.extend_from_slice(&unnamed.definition);
                insert.message(frontend::PARSE, &body, StatementEffect::None);
                insert.set_unnamed_owner(Some((self.client, unnamed.generation)));
            }
            // Another client's unnamed statement must not be what this client binds: close it
            // and let the server say there is none.
            None if owner.is_some_and(|(client, _)| client != self.client) => {
                insert.message(frontend::CLOSE, &[frontend::OF_STATEMENT, 0], StatementEffect::None);
                insert.set_unnamed_owner(None);
            }
            _ => {}
        }
    }

    fn parse(&mut self, body: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        let Some((name, definition)) = split_cstr(body) else { return Decision::Forward };
        let changes = split_cstr(definition).and_then(|(query, _)| self.read_sql(query).1);
        if name.is_empty() {
            let whole = body.len() == len;
            if !whole {
                // Too long to keep for preparing again elsewhere: keep the server instead.
                self.pin(PinReason::LongStatement);
            }
            if let Some(token) = self.names.set_unnamed(whole.then_some(definition), changes, self.sequence) {
                insert.track(token);
            }
            insert.set_unnamed_owner(Some((self.client, self.sequence)));
            return Decision::Forward;
        }
        match self.names.lookup(name) {
            Lookup::Unsettled => return Decision::Hold,
            Lookup::Found(..) => {
                return refuse(insert, sqlstate::DUPLICATE_PREPARED_STATEMENT, already_exists(name).message);
            }
            Lookup::Absent => {}
        }
        if body.len() < len {
            let message =
                "lakebase-proxy: a statement longer than 1 MiB cannot be prepared by name in transaction mode";
            return refuse(insert, sqlstate::PROGRAM_LIMIT_EXCEEDED, message.into());
        }
        let statement = self.pool.statements().statement(definition);
        let id = statement.id;
        // The client's own Parse always reaches the server, for a plan as fresh as a direct
        // connection's: a copy the server has is closed first (its plan may predate a DDL).
        let effect = if insert.prepared().contains(id) {
            insert.message(frontend::CLOSE, &close_statement_body(id), StatementEffect::None);
            StatementEffect::Replaces(id)
        } else {
            StatementEffect::Prepares(id)
        };
        let token = self.names.add_pending(name, statement.clone(), changes, insert.protocol().sequence());
        insert.track(token);
        insert.rewrite(frontend::PARSE, statement.server_name(), len - name.len() - 1, effect);
        Decision::Rewrite { cut: name.len() + 1 }
    }

    /// A Bind or a Describe of a statement naming `name`, whose body starts with `lead` (the
    /// portal name and its NUL, or the Describe's kind byte) before the name.
    fn use_statement(&mut self, tag: u8, lead: &[u8], name: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        let binds = tag == frontend::BIND;
        if name.is_empty() {
            if binds {
                self.batch.bind(self.names.unnamed().and_then(|unnamed| unnamed.changes.clone()));
            }
            self.ensure_unnamed(insert);
            return Decision::Forward;
        }
        match self.names.lookup(name) {
            Lookup::Found(statement, changes) => {
                if binds {
                    self.batch.bind(changes);
                }
                self.ensure_prepared(&statement, insert);
                let mut head = Vec::with_capacity(lead.len() + statement.server_name().len());
                head.extend_from_slice(lead);
                head.extend_from_slice(statement.server_name());
                let cut = lead.len() + name.len() + 1;
                insert.rewrite(tag, &head, len - cut, StatementEffect::Uses(statement.id));
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
            self.names.set_unnamed(None, None, self.sequence);
            insert.set_unnamed_owner(None);
            return Decision::Forward;
        }
        match self.names.lookup(name) {
            Lookup::Found(..) => {
                if let Some(token) = self.names.remove_pending(name) {
                    insert.track(token);
                }
            }
            Lookup::Unsettled => return Decision::Hold,
            // Closing a name that does not exist is no error.
            Lookup::Absent => {}
        }
        insert.answer(frontend::CLOSE, reply(backend::CLOSE_COMPLETE));
        Decision::Drop
    }

    fn query(&mut self, body: &[u8], insert: &mut Insert<'_>) -> Decision {
        // A simple query destroys the unnamed statement, the client's and the server's.
        self.names.set_unnamed(None, None, self.sequence);
        insert.set_unnamed_owner(None);
        let idle = insert.protocol().is_idle();
        let (statements, changes) = self.read_sql(split_cstr(body).map_or(body, |(sql, _)| sql));
        if let [sql::Statement::Deallocate(name)] = statements.as_slice()
            && insert.protocol().owes_nothing()
            && let Lookup::Found(..) = self.names.lookup(name.as_bytes())
        {
            return self.deallocate(name.as_bytes(), insert);
        }
        match changes {
            Some(changes) if idle => {
                let token = self.names.settings_token(changes);
                insert.track(token);
            }
            Some(_) => self.pin(PinReason::UntrackedSet),
            None => {}
        }
        Decision::Forward
    }

    /// `DEALLOCATE name` of one of the client's protocol-level statements (PHP's PDO does
    /// this), answered as PostgreSQL would: the server's statement may be shared, so it stays.
    /// Only while nothing is owed, so the transaction status is known.
    fn deallocate(&mut self, name: &[u8], insert: &mut Insert<'_>) -> Decision {
        let status = insert.protocol().transaction_status();
        let mut answer = BytesMut::new();
        if status == TransactionStatus::Failed {
            ErrorFields::new(
                Severity::Error,
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
            .write_error(&mut answer);
        } else {
            if let Some(token) = self.names.remove_pending(name) {
                insert.track(token);
            }
            messages::command_complete(&mut answer, "DEALLOCATE");
        }
        messages::ready_for_query(&mut answer, status);
        insert.answer(frontend::QUERY, answer.freeze());
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

    fn follows_statements(&self) -> bool {
        true
    }

    fn detaches_when_idle(&self) -> bool {
        self.pin.is_none()
    }

    fn before(&mut self, tag: u8, body: &[u8], len: usize, insert: &mut Insert<'_>) -> Decision {
        self.sequence += 1;
        if tag == frontend::SYNC {
            self.names.synced();
            match self.batch.sync() {
                Outcome::Track(changes) => {
                    let token = self.names.settings_token(changes);
                    insert.track(token);
                }
                Outcome::Pin => self.pin(PinReason::UntrackedSet),
                Outcome::Nothing => {}
            }
            return Decision::Forward;
        }
        if tag != frontend::QUERY {
            self.batch.message(insert.protocol().is_idle());
        }
        // The server discards everything up to the Sync: there is nothing to map.
        if insert.protocol().skipping() {
            return Decision::Forward;
        }
        self.evict(insert);
        match tag {
            frontend::PARSE => self.parse(body, len, insert),
            frontend::BIND => match split_cstr(body).and_then(|(portal, rest)| Some((portal, split_cstr(rest)?.0))) {
                Some((portal, name)) => self.use_statement(tag, &body[..portal.len() + 1], name, len, insert),
                None => Decision::Forward,
            },
            frontend::DESCRIBE => match statement_name(body) {
                Some(name) => self.use_statement(tag, &[frontend::OF_STATEMENT], name, len, insert),
                None => Decision::Forward,
            },
            frontend::CLOSE => match statement_name(body) {
                Some(name) => self.close(name, insert),
                None => Decision::Forward,
            },
            frontend::QUERY => self.query(body, insert),
            _ => Decision::Forward,
        }
    }

    fn settled(&mut self, settled: Settled) {
        if let Some((changes, status)) = self.names.settled(settled) {
            self.apply_settings(&changes, status);
        }
    }
}

/// PostgreSQL's error for a Parse of a name in use.
fn already_exists(name: &[u8]) -> ErrorFields {
    let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
    ErrorFields::new(Severity::Error, sqlstate::DUPLICATE_PREPARED_STATEMENT, message)
}

/// Refuses the client's message with an error PostgreSQL would give in its place.
fn refuse(insert: &mut Insert<'_>, code: &str, message: String) -> Decision {
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

/// The statement a Describe or Close body names, if it names a statement (not a portal).
fn statement_name(body: &[u8]) -> Option<&[u8]> {
    match body.split_first() {
        Some((&frontend::OF_STATEMENT, rest)) => split_cstr(rest).map(|(name, _)| name),
        _ => None,
    }
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}
