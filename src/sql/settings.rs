//! Run-time parameters: `SET`, `RESET` and `set_config`.
//!
//! A session-level change the pooler can repeat on another connection comes back as
//! [`Statement::Set`] or [`Statement::Reset`]; anything it could not repeat faithfully is a
//! pin ([`UntrackedSet`], or [`Role`] for the session's identity).

use super::PinReason::{Role, UntrackedSet};
use super::Statement::{self, Pin, Plain};
use super::lexer::{Kind, Token};
use super::literal;

/// `SET ...` (the tokens after `SET`).
pub(super) fn set(rest: &[Token]) -> Statement {
    // LOCAL and SESSION may also be parameter names: `SET local = 1`.
    let scope = |word: &str| rest.first().is_some_and(|t| t.is_word(word)) && !assigns(rest, 1);
    if scope("local") {
        return Plain;
    }
    // SESSION is the default scope, except where it is part of the syntax.
    let rest = match rest {
        [_, next, ..] if scope("session") && !next.is_word("characteristics") && !next.is_word("authorization") => {
            &rest[1..]
        }
        _ => rest,
    };
    let keyword = |word: &str| rest.first().is_some_and(|t| t.is_word(word)) && !assigns(rest, 1);
    match rest {
        // Both last for the transaction only.
        _ if keyword("transaction") || keyword("constraints") => Plain,
        [session, characteristics, ..] if session.is_word("session") && characteristics.is_word("characteristics") => {
            Pin(UntrackedSet)
        }
        [session, authorization, ..] if session.is_word("session") && authorization.is_word("authorization") => {
            Pin(Role)
        }
        _ if keyword("role") => Pin(Role),
        [time, zone, value @ ..] if time.is_word("time") && zone.is_word("zone") => time_zone(value),
        [_, value @ ..] if keyword("names") => match value {
            [] => reset_named("client_encoding"),
            [default] if default.is_word("default") => reset_named("client_encoding"),
            [name] if matches!(name.kind, Kind::Str(_)) => {
                setting("client_encoding".into(), literal::string(name).into())
            }
            _ => Pin(UntrackedSet),
        },
        [schema, name] if schema.is_word("schema") && matches!(name.kind, Kind::Str(_)) => {
            setting("search_path".into(), literal::string(name).into())
        }
        [xml, option, kind] if xml.is_word("xml") && option.is_word("option") => {
            if kind.is_word("document") || kind.is_word("content") {
                setting("xmloption".into(), Value::To(kind.text.to_ascii_lowercase()))
            } else {
                Pin(UntrackedSet)
            }
        }
        _ => generic_set(rest),
    }
}

/// `SET name {TO | =} {value | DEFAULT}` and `SET name FROM CURRENT`.
fn generic_set(tokens: &[Token]) -> Statement {
    let Some((name, rest)) = var_name(tokens) else { return Pin(UntrackedSet) };
    match rest {
        [_, value @ ..] if assigns(rest, 0) => match value {
            [default] if default.is_word("default") => setting(name, Value::Default),
            _ => setting(name, single_value(value).into()),
        },
        _ => Pin(UntrackedSet),
    }
}

/// `SET TIME ZONE ...` (the tokens after `ZONE`).
fn time_zone(value: &[Token]) -> Statement {
    match value {
        [word] if word.is_word("local") || word.is_word("default") => reset_named("timezone"),
        // An INTERVAL value is not a constant SET could repeat.
        [interval, ..] if interval.is_word("interval") => Pin(UntrackedSet),
        _ => setting("timezone".into(), single_value(value).into()),
    }
}

/// `RESET ...` (the tokens after `RESET`).
pub(super) fn reset(rest: &[Token]) -> Statement {
    match rest {
        [all] if all.is_word("all") => Statement::ResetAll,
        [session, authorization] if session.is_word("session") && authorization.is_word("authorization") => Pin(Role),
        [time, zone] if time.is_word("time") && zone.is_word("zone") => reset_named("timezone"),
        [transaction, ..] if transaction.is_word("transaction") => Plain,
        _ => match var_name(rest) {
            Some((name, [])) => setting(name, Value::Default),
            _ => Pin(UntrackedSet),
        },
    }
}

/// `set_config(name, value, is_local)` called at `tokens[at]`: its effect, and
/// [`Statement::Set`] only when the call is all the statement does
/// (`SELECT set_config(...) [[AS] alias]`), since elsewhere it may run any number of times.
pub(super) fn set_config(tokens: &[Token], at: usize) -> Statement {
    let Some(close) = closing_paren(tokens, at + 1) else { return Pin(UntrackedSet) };
    let args = &tokens[at + 2..close];
    let mut parts = args_of(args);
    let (Some(name), Some(value), Some(is_local), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Pin(UntrackedSet);
    };
    match single(is_local).and_then(literal_bool) {
        Some(true) => return Plain,
        Some(false) => {}
        None => return Pin(UntrackedSet),
    }
    let Some(name) = single(name).and_then(literal::string) else { return Pin(UntrackedSet) };
    let value = match single(value) {
        // A NULL value asks for the default.
        Some(null) if null.is_word("null") => Value::Default,
        Some(value) => literal::string(value).into(),
        None => Value::Unknown,
    };
    let effect = setting(name.to_ascii_lowercase(), value);
    let alone = match (tokens, &tokens[close + 1..]) {
        ([select, ..], rest) if select.is_word("select") => {
            let named_at = if at == 3 && tokens[2].is_punct(".") { 3 } else { 1 };
            at == named_at
                && match rest {
                    [] => true,
                    [alias] => alias.is_name(),
                    [as_, alias] => as_.is_word("as") && alias.is_name(),
                    _ => false,
                }
        }
        _ => false,
    };
    match effect {
        Statement::Set { .. } | Statement::Reset { .. } if !alone => Pin(UntrackedSet),
        effect => effect,
    }
}

/// Where the parenthesis opened at `tokens[open]` closes.
fn closing_paren(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (at, token) in tokens.iter().enumerate().skip(open) {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth -= 1;
            if depth == 0 {
                return Some(at);
            }
        }
    }
    None
}

/// The comma-separated arguments of a call.
fn args_of<'t, 'a>(args: &'t [Token<'a>]) -> impl Iterator<Item = &'t [Token<'a>]> {
    let mut depth = 0usize;
    args.split(move |token| {
        if token.is_punct("(") || token.is_punct("[") {
            depth += 1;
        } else if token.is_punct(")") || token.is_punct("]") {
            depth = depth.saturating_sub(1);
        }
        depth == 0 && token.is_punct(",")
    })
}

fn single<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<&'t Token<'a>> {
    match tokens {
        [token] => Some(token),
        _ => None,
    }
}

/// A literal boolean as the server reads `boolean` input: `true`, `false`, `NULL` (taken as
/// false by `set_config`), or a string such as `'on'`, `'f'`, `'yes'`.
fn literal_bool(token: &Token) -> Option<bool> {
    if token.is_word("true") {
        return Some(true);
    }
    if token.is_word("false") || token.is_word("null") {
        return Some(false);
    }
    parse_bool(&literal::string(token)?)
}

/// PostgreSQL's `parse_bool`: any unambiguous prefix of true/false/yes/no/on/off, or 1/0.
fn parse_bool(text: &str) -> Option<bool> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace()).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| text.len() >= min && word.starts_with(text.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || text == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || text == "0" {
        Some(false)
    } else {
        None
    }
}

/// Whether `tokens[at]` is `TO` or `=`.
fn assigns(tokens: &[Token], at: usize) -> bool {
    tokens.get(at).is_some_and(|t| t.is_word("to") || t.is_punct("="))
}

/// A parameter name, `part[.part...]`, and the tokens after it.
fn var_name<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<(String, &'t [Token<'a>])> {
    let mut name = literal::ident(tokens.first()?)?;
    let mut at = 1;
    while let [dot, part, ..] = &tokens[at..]
        && dot.is_punct(".")
    {
        name.push('.');
        name.push_str(&literal::ident(part)?);
        at += 2;
    }
    Some((name.to_ascii_lowercase(), &tokens[at..]))
}

/// A value SET could be given again as one string constant: a string, an identifier, a
/// keyword, or a decimal number with an optional sign. Lists and expressions are not.
fn single_value(tokens: &[Token]) -> Option<String> {
    let decimal = |text: &str| text.bytes().all(|b| b.is_ascii_digit() || b".eE+-".contains(&b));
    match tokens {
        [token] => match token.kind {
            Kind::Str(_) => literal::string(token),
            Kind::Word | Kind::Quoted { .. } => literal::ident(token),
            Kind::Number if decimal(token.text) => Some(token.text.to_owned()),
            _ => None,
        },
        [sign, number] if number.kind == Kind::Number && decimal(number.text) => {
            if sign.is_punct("-") {
                Some(format!("-{}", number.text))
            } else if sign.is_punct("+") {
                Some(number.text.to_owned())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What a session-level SET gives a parameter.
enum Value {
    /// This value.
    To(String),
    /// The parameter's default.
    Default,
    /// Something that could not be read as one constant.
    Unknown,
}

impl From<Option<String>> for Value {
    fn from(value: Option<String>) -> Self {
        value.map_or(Value::Unknown, Value::To)
    }
}

/// Reset of a parameter known by its proper name.
fn reset_named(name: &str) -> Statement {
    setting(name.to_owned(), Value::Default)
}

/// The effect of giving `name` a value at session level.
fn setting(name: String, value: Value) -> Statement {
    let valid = name
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$'));
    match name.as_str() {
        _ if !valid => Pin(UntrackedSet),
        "role" | "session_authorization" => Pin(Role),
        // Taken afresh from the default_transaction_* parameters by every transaction.
        "transaction_isolation" | "transaction_read_only" | "transaction_deferrable" => Plain,
        _ => match value {
            Value::Unknown => Pin(UntrackedSet),
            // Another reading of backslashes would change what this module sees as quoted.
            Value::To(value) if name == "standard_conforming_strings" && parse_bool(&value) != Some(true) => {
                Pin(UntrackedSet)
            }
            Value::To(value) => Statement::Set { name, value },
            Value::Default => Statement::Reset { name },
        },
    }
}
