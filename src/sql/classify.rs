//! One statement's effect on session state, from its tokens.
//!
//! The leading keywords decide most statements (`SET`, `RESET`, `LISTEN`, `PREPARE`, ...).
//! Any statement may also call `pg_advisory_lock` or `set_config`, or create a temporary
//! object, so the tokens are scanned for those as well. Whenever the text is not understood
//! the answer is a pin: keeping a connection for one client is always safe, handing session
//! state to another client is not.

use super::PinReason::{self, AdvisoryLock, HoldCursor, Load, SqlPrepare, TempObject, UntrackedSet};
use super::Statement::{self, Pin, Plain};
use super::lexer::{Kind, Token};
use super::{literal, settings};

/// Functions whose locks outlive the transaction (the `_xact_` ones do not).
const SESSION_LOCKS: [&str; 4] =
    ["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// Statements these words start are decided by their leading keywords.
const HEADS: [&str; 16] = [
    "set",
    "reset",
    "listen",
    "load",
    "prepare",
    "deallocate",
    "discard",
    "declare",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
];

/// The words that start transaction control statements.
const TRANSACTION_CONTROL: [&str; 8] = ["begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"];

/// Whether a statement holding `token` may touch session state and so needs [`statement`];
/// `first` says the token starts the statement, `selects` that the statement is a query
/// (see [`is_select`]). Any statement holding none of these is [`Plain`].
pub(super) fn is_notable(token: &Token, first: bool, selects: bool) -> bool {
    match token.kind {
        Kind::Word if first && HEADS.iter().any(|word| token.is_word(word)) => true,
        Kind::Word if token.is_word("create") || (selects && token.is_word("into")) => true,
        Kind::Word | Kind::Quoted { .. } => {
            SESSION_LOCKS.iter().any(|name| literal::ident_is(token, name)) || literal::ident_is(token, "set_config")
        }
        _ => false,
    }
}

/// Whether a statement starting with `first` is a query, whose `INTO` makes a new table.
pub(super) fn is_select(first: &Token) -> bool {
    first.is_word("select") || first.is_word("with") || first.is_punct("(")
}

/// Whether the statement so far is `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, whose
/// `BEGIN ATOMIC ... END` body holds semicolons and whose calls are not run by creating it.
pub(super) fn is_routine(tokens: &[Token]) -> bool {
    let Some((create, mut rest)) = tokens.split_first() else { return false };
    if let [or, replace, after @ ..] = rest
        && or.is_word("or")
        && replace.is_word("replace")
    {
        rest = after;
    }
    create.is_word("create") && rest.first().is_some_and(|t| t.is_word("function") || t.is_word("procedure"))
}

/// Classifies one statement (`tokens` is not empty).
pub(super) fn statement(tokens: &[Token]) -> Statement {
    let Some((first, rest)) = tokens.split_first() else { return Plain };
    let head = if first.is_word("set") {
        settings::set(rest)
    } else if first.is_word("reset") {
        settings::reset(rest)
    } else if first.is_word("listen") {
        Pin(PinReason::Listen)
    } else if first.is_word("load") {
        Pin(Load)
    } else if TRANSACTION_CONTROL.iter().any(|word| first.is_word(word)) {
        Statement::TransactionControl
    } else if first.is_word("prepare") {
        // PREPARE TRANSACTION 'gid' hands the transaction over; the session stays clean.
        match rest {
            [transaction, gid, ..] if transaction.is_word("transaction") && matches!(gid.kind, Kind::Str(_)) => {
                Statement::TransactionControl
            }
            _ => Pin(SqlPrepare),
        }
    } else if first.is_word("deallocate") {
        deallocate(rest)
    } else if first.is_word("discard") {
        match rest {
            [all] if all.is_word("all") => Statement::DiscardAll,
            _ => Plain,
        }
    } else if first.is_word("declare") {
        let options = &rest[..rest.iter().position(|token| token.is_word("for")).unwrap_or(rest.len())];
        if options.windows(2).any(|pair| pair[0].is_word("with") && pair[1].is_word("hold")) {
            Pin(HoldCursor)
        } else {
            Plain
        }
    } else {
        Plain
    };
    if matches!(head, Pin(_)) {
        return head;
    }
    combine(head, scan(tokens))
}

/// Two effects of one statement as one: a pin wins, and two different session changes
/// cannot be told as one.
fn combine(a: Statement, b: Statement) -> Statement {
    match (a, b) {
        (Plain, other) | (other, Plain) => other,
        (Pin(reason), _) | (_, Pin(reason)) => Pin(reason),
        _ => Pin(UntrackedSet),
    }
}

/// Effects anywhere in a statement: session locks, `set_config`, temporary objects.
fn scan(tokens: &[Token]) -> Statement {
    let first = &tokens[0];
    let creates = first.is_word("create");
    let routine = is_routine(tokens);
    let selects = is_select(first);
    let mut found = Plain;
    for (at, token) in tokens.iter().enumerate() {
        let after = &tokens[at + 1..];
        let temp = if token.is_word("create") {
            creates_temp(after) && !on_commit_drop(tokens)
        } else if creates && is_temp_schema(token) && after.first().is_some_and(|t| t.is_punct(".")) {
            !on_commit_drop(tokens)
        } else {
            // INSERT INTO and MERGE INTO name an existing table, which may be called `temp`.
            selects && token.is_word("into") && at > 0 && !is_insert(&tokens[at - 1]) && into_temp(after)
        };
        let effect = if temp {
            Pin(TempObject)
        } else if !routine && after.first().is_some_and(|t| t.is_punct("(")) {
            if SESSION_LOCKS.iter().any(|name| literal::ident_is(token, name)) {
                Pin(AdvisoryLock)
            } else if literal::ident_is(token, "set_config") {
                settings::set_config(tokens, at)
            } else {
                Plain
            }
        } else {
            Plain
        };
        found = combine(found, effect);
    }
    found
}

/// `DEALLOCATE [PREPARE] {name | ALL}`.
fn deallocate(rest: &[Token]) -> Statement {
    let rest = match rest {
        [prepare, name] if prepare.is_word("prepare") => std::slice::from_ref(name),
        _ => rest,
    };
    match rest {
        [all] if all.is_word("all") => Statement::DeallocateAll,
        [name] => literal::ident(name).map_or(Plain, Statement::Deallocate),
        _ => Plain,
    }
}

fn is_insert(token: &Token) -> bool {
    token.is_word("insert") || token.is_word("merge")
}

/// Whether the tokens after `CREATE` make the object temporary.
fn creates_temp(mut after: &[Token]) -> bool {
    if let [or, replace, rest @ ..] = after
        && or.is_word("or")
        && replace.is_word("replace")
    {
        after = rest;
    }
    if let [scope, rest @ ..] = after
        && (scope.is_word("global") || scope.is_word("local"))
    {
        after = rest;
    }
    after.first().is_some_and(is_temp_word)
}

fn is_temp_word(token: &Token) -> bool {
    token.is_word("temp") || token.is_word("temporary")
}

/// Whether the tokens after a `SELECT`'s `INTO` name a new temporary table (and not a
/// table that happens to be called `temp`).
fn into_temp(mut after: &[Token]) -> bool {
    if let [scope, rest @ ..] = after
        && (scope.is_word("global") || scope.is_word("local"))
    {
        after = rest;
    }
    match after {
        [temp, rest @ ..] if is_temp_word(temp) => {
            let rest = if rest.first().is_some_and(|t| t.is_word("table")) { &rest[1..] } else { rest };
            rest.first().is_some_and(|name| name.is_name() && !name.is_word("from") && !name.is_word("where"))
        }
        [table, schema, dot, ..] if table.is_word("table") => is_temp_schema(schema) && dot.is_punct("."),
        [schema, dot, ..] => is_temp_schema(schema) && dot.is_punct("."),
        _ => false,
    }
}

/// `pg_temp`, or a numbered `pg_temp_N`: the session's own temporary schema.
fn is_temp_schema(token: &Token) -> bool {
    let Some(prefix) = token.text.get(..7) else { return false };
    let suffix = &token.text[7..];
    let prefix_matches = match token.kind {
        Kind::Word => prefix.eq_ignore_ascii_case("pg_temp"),
        Kind::Quoted { unicode: None } => prefix == "pg_temp",
        _ => false,
    };
    prefix_matches
        && (suffix.is_empty() || suffix.strip_prefix('_').is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
}

/// `ON COMMIT DROP`: the temporary table goes with the transaction.
fn on_commit_drop(tokens: &[Token]) -> bool {
    tokens.windows(3).any(|w| w[0].is_word("on") && w[1].is_word("commit") && w[2].is_word("drop"))
}
