//! What SQL text does to session state: the state that outlives a transaction, so that a
//! server connection carrying it cannot be handed to another client in transaction mode.
//!
//! [`classify()`] reads the text of a simple Query or a Parse message without a parser: a
//! lexer that knows PostgreSQL's quoting (`lexer.rs`, with the values of literals in
//! `literal.rs`), a split into statements on `;` the way `psql` splits them (`split.rs`),
//! and a look at each statement's leading keywords plus a scan for the few function calls
//! and clauses that leave state behind (`classify.rs`, with SET, RESET and `set_config` in
//! `settings.rs`). It needs no catalog and never fails: text it does not understand is
//! either harmless or answered with a [`Statement::Pin`].
//!
//! It runs on every Query, so the text is read once; only a statement holding one of the
//! few tokens that can matter (a leading `SET`, `LISTEN`, ..., or `CREATE`,
//! `set_config`, `pg_advisory_lock`, ...) is read again as a list of tokens.
//!
//! Limits:
//! * the bodies of `DO` blocks, of functions and of procedures (`CALL`) are strings or
//!   catalog entries, so whatever they do (`LISTEN`, `SET`, advisory locks) goes unseen;
//! * user functions that wrap `set_config` or `pg_advisory_lock` are not recognised;
//! * state a session gathers as a side effect of ordinary queries (`currval`, `lastval`) is
//!   not tracked;
//! * string constants are read with `standard_conforming_strings` on, the default since
//!   PostgreSQL 9.1; turning it off is reported as a pin, so the text of a session that does
//!   so no longer matters.

mod classify;
mod lexer;
mod literal;
mod settings;
mod split;
#[cfg(test)]
mod tests;

use lexer::{Lexer, Token};
use split::Splitter;

/// What one statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Nothing that outlives the transaction: queries, DML, DDL,
    /// SET LOCAL, SET TRANSACTION, set_config(..., true), pg_advisory_xact_lock*, UNLISTEN,
    /// DISCARD TEMP/PLANS/SEQUENCES, EXECUTE, CLOSE, FETCH, DECLARE without HOLD,
    /// CREATE TEMP ... ON COMMIT DROP, ...
    Plain,
    /// Transaction control: BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, SAVEPOINT,
    /// RELEASE, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED. Nothing that outlives the
    /// transaction either, but it decides whether the statements around it last.
    TransactionControl,
    /// Session state the pooler cannot carry to another server connection.
    Pin(PinReason),
    /// `SET [SESSION] name {TO|=} value`, plus the spellings with their own syntax
    /// (`SET TIME ZONE`, `SET NAMES`, `SET SCHEMA`, `SET XML OPTION`), and
    /// `SELECT set_config('name', 'value', false)` with literal arguments as the whole
    /// statement (elsewhere in a query the call may run any number of times, or never).
    Set {
        /// The parameter's name in lower case (the server matches names without regard to
        /// case): dot-separated parts of ASCII letters, digits, `_` and `$`.
        name: String,
        /// The value as the server receives it from `SET name TO 'value'`: a string
        /// constant's text with its quoting undone, an identifier as the server folds it, a
        /// number as written. Sending it back as a quoted string constant repeats the SET.
        value: String,
    },
    /// `RESET name`, `SET name TO DEFAULT`, `SET TIME ZONE LOCAL`, `set_config(name, NULL, false)`.
    Reset {
        /// The parameter's name, as in [`Statement::Set`].
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`: the name as PostgreSQL resolves it (unquoted folded to
    /// lower case, quoted kept exactly, `""` escapes undone, cut to 63 bytes).
    Deallocate(String),
    /// `DISCARD ALL`.
    DiscardAll,
}

/// Why a statement ties its client to the server connection it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// `LISTEN`: notifications arrive on this connection only.
    Listen,
    /// `PREPARE name AS ...`: a prepared statement the pooler does not manage.
    SqlPrepare,
    /// `pg_advisory_lock`, `pg_advisory_lock_shared`, `pg_try_advisory_lock` or
    /// `pg_try_advisory_lock_shared`: a lock held until the session unlocks or ends.
    AdvisoryLock,
    /// A temporary table, sequence, view or function (`CREATE TEMP ...` unless
    /// `ON COMMIT DROP`, `CREATE ... pg_temp.x`, `SELECT ... INTO TEMP ...`).
    TempObject,
    /// `DECLARE ... WITH HOLD`: a cursor that survives its transaction.
    HoldCursor,
    /// `LOAD 'library'`.
    Load,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION` and their RESETs: the session's identity,
    /// which decides what every later statement may do.
    Role,
    /// A session-level setting [`Statement::Set`] cannot express: `SET SESSION
    /// CHARACTERISTICS`, `SET x FROM CURRENT`, a list value, `set_config` with arguments that
    /// are not literals, or a form this module does not know.
    UntrackedSet,
    /// An unnamed statement too long for the pooler to keep, so it cannot be prepared again on
    /// another connection (not a classification of SQL: the pooler's own reason).
    LongStatement,
    /// `DISCARD ALL`: the session's settings go back to the server connection's own defaults,
    /// which a pooler's connection need not share with its client (the pooler's own reason).
    Discard,
}

impl PinReason {
    /// A short snake_case name for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            PinReason::Listen => "listen",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::TempObject => "temp_object",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::Load => "load",
            PinReason::Role => "role",
            PinReason::UntrackedSet => "untracked_set",
            PinReason::LongStatement => "long_statement",
            PinReason::Discard => "discard_all",
        }
    }
}

/// Splits `sql` into statements and classifies each one.
///
/// Statements end at `;` outside quotes, comments and parentheses, and not inside the
/// `BEGIN ATOMIC ... END` body of `CREATE FUNCTION` or `CREATE PROCEDURE` (as `psql` splits
/// them). Empty statements (only whitespace, comments or `;`) yield nothing, so the result
/// lines up with the statements the server runs.
pub fn classify(sql: &str) -> Vec<Statement> {
    let mut tokens: Vec<Token> = Vec::new();
    Splitter::new(sql)
        .map(|piece| {
            if !piece.notable {
                return Statement::Plain;
            }
            tokens.clear();
            tokens.extend(Lexer::new(piece.text));
            classify::statement(&tokens)
        })
        .collect()
}
