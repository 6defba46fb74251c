//! The values tokens stand for: what the server makes of a string constant or an identifier.
//!
//! Each function answers `None` where the server would reject the token (a bad escape, an
//! empty quoted identifier, a NUL), so that callers fall back to their cautious answer.

use std::iter::Peekable;
use std::str::Chars;

use super::lexer::{Kind, StrKind, Token};

/// Longest identifier the server keeps (`NAMEDATALEN - 1`); it cuts longer ones, so a name
/// is matched only by its first 63 bytes.
const MAX_IDENT_LEN: usize = 63;

/// The value of a string constant token.
pub(super) fn string(token: &Token) -> Option<String> {
    let Kind::Str(kind) = token.kind else { return None };
    let raw = token.text;
    let value = match kind {
        StrKind::Standard => raw.replace("''", "'"),
        StrKind::Dollar => raw.to_owned(),
        StrKind::Escape => backslash_escapes(raw)?,
        StrKind::Unicode(escape) => unicode_escapes(&raw.replace("''", "'"), escape)?,
    };
    (!value.contains('\0')).then_some(value)
}

/// The name an identifier token resolves to: unquoted folded to lower case, quoted kept
/// exactly with its escapes undone, both cut to the server's identifier length.
pub(super) fn ident(token: &Token) -> Option<String> {
    let mut name = match token.kind {
        Kind::Word => token.text.to_ascii_lowercase(),
        Kind::Quoted { unicode: None } => token.text.replace("\"\"", "\""),
        Kind::Quoted { unicode: Some(escape) } => unicode_escapes(&token.text.replace("\"\"", "\""), escape)?,
        _ => return None,
    };
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    if name.len() > MAX_IDENT_LEN {
        let mut cut = MAX_IDENT_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    Some(name)
}

/// Whether a token names `name`: unquoted in any case, or quoted exactly.
pub(super) fn ident_is(token: &Token, name: &str) -> bool {
    match token.kind {
        Kind::Word => token.text.eq_ignore_ascii_case(name),
        Kind::Quoted { unicode: None } if !token.text.contains('"') => token.text == name,
        Kind::Quoted { .. } => ident(token).is_some_and(|ident| ident == name),
        _ => false,
    }
}

/// The body of an `E'...'` constant: `''`, `\b \f \n \r \t`, octal `\ooo`, hex `\xhh`,
/// `\uXXXX`, `\UXXXXXXXX`, and a backslash before anything else standing for that character.
/// Octal and hex escapes give bytes, so the result is checked as UTF-8 at the end.
fn backslash_escapes(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        let escape = if c == '\\' { Some(chars.next()?) } else { None };
        if pending_high.is_some() && !matches!(escape, Some('u' | 'U')) {
            return None;
        }
        let decoded = match escape {
            None => {
                if c == '\'' {
                    chars.next_if_eq(&'\'');
                }
                c
            }
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(first @ '0'..='7') => {
                out.push(u8::try_from(take_digits(&mut chars, 8, 2, first.to_digit(8)?)).ok()?);
                continue;
            }
            Some('x') if chars.peek().is_some_and(char::is_ascii_hexdigit) => {
                out.push(u8::try_from(take_digits(&mut chars, 16, 2, 0)).ok()?);
                continue;
            }
            Some(u @ ('u' | 'U')) => {
                let code = hex(&mut chars, if u == 'u' { 4 } else { 8 })?;
                match combine_surrogates(&mut pending_high, code)? {
                    Some(c) => c,
                    None => continue,
                }
            }
            Some(other) => other,
        };
        out.extend_from_slice(decoded.encode_utf8(&mut [0; 4]).as_bytes());
    }
    if pending_high.is_some() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Adds up to `max` more digits in `radix` to `value`, as many as follow.
fn take_digits(chars: &mut Peekable<Chars>, radix: u32, max: usize, mut value: u32) -> u32 {
    for _ in 0..max {
        match chars.peek().and_then(|c| c.to_digit(radix)) {
            Some(digit) => {
                value = value * radix + digit;
                chars.next();
            }
            None => break,
        }
    }
    value
}

/// The body of a `U&'...'` constant or `U&"..."` identifier: `<escape>XXXX`,
/// `<escape>+XXXXXX`, and the escape character doubled standing for itself.
fn unicode_escapes(raw: &str, escape: char) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != escape {
            if pending_high.is_some() {
                return None;
            }
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&escape).is_some() {
            if pending_high.is_some() {
                return None;
            }
            out.push(escape);
            continue;
        }
        let digits = if chars.next_if_eq(&'+').is_some() { 6 } else { 4 };
        let code = hex(&mut chars, digits)?;
        if let Some(c) = combine_surrogates(&mut pending_high, code)? {
            out.push(c);
        }
    }
    pending_high.is_none().then_some(out)
}

/// Exactly `digits` hex digits as a number.
fn hex(chars: &mut impl Iterator<Item = char>, digits: usize) -> Option<u32> {
    (0..digits).try_fold(0u32, |value, _| Some(value * 16 + chars.next()?.to_digit(16)?))
}

/// Turns a code point into a character, pairing UTF-16 surrogates as the server does:
/// `Some(None)` while a high surrogate waits for its low half, `None` for anything invalid.
fn combine_surrogates(pending_high: &mut Option<u32>, code: u32) -> Option<Option<char>> {
    match (pending_high.take(), code) {
        (None, 0xD800..=0xDBFF) => {
            *pending_high = Some(code);
            Some(None)
        }
        (Some(high), 0xDC00..=0xDFFF) => char::from_u32(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)).map(Some),
        (Some(_), _) | (None, 0xDC00..=0xDFFF) => None,
        (None, _) => char::from_u32(code).map(Some),
    }
}
