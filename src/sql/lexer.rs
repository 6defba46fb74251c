//! Tokens of PostgreSQL's SQL, as far as telling code from quoted text needs.
//!
//! Follows the server's scanner (`scan.l`) with `standard_conforming_strings` on: comments
//! (`--`, nested `/* */`) and whitespace vanish, literals and quoted identifiers become single
//! tokens whose contents are never mistaken for keywords. Unterminated literals and comments
//! run to the end of the text, where the server would report a syntax error. Token
//! boundaries fall only on ASCII bytes, so slicing the text never splits a character.

/// The double quote byte, written as a number: `scripts/check-layers.py` pairs double quotes
/// to skip Rust strings and would misread one inside a byte literal.
const DOUBLE_QUOTE: u8 = 0x22;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A keyword or unquoted identifier, as written.
    Word,
    /// A quoted identifier; the text is between the quotes with `""` still doubled.
    Quoted {
        /// `Some(escape)` for `U&"..."`, whose text still holds its escapes.
        unicode: Option<char>,
    },
    /// A string constant; the text is its raw body.
    Str(StrKind),
    /// A numeric constant.
    Number,
    /// A parameter placeholder, `$1`.
    Param,
    /// An operator such as `=`, `-` or `::`, or any other punctuation.
    Punct,
}

/// How a string constant's body encodes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrKind {
    /// `'...'`, `B'...'`, `X'...'`, `N'...'`: only `''` stands for something else.
    Standard,
    /// `E'...'`: backslash escapes as well.
    Escape,
    /// `U&'...'` with this escape character (`\` unless `UESCAPE` names another).
    Unicode(char),
    /// `$tag$...$tag$`: taken as written.
    Dollar,
}

/// One token and its text (see [`Kind`] for what the text covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
}

impl Token<'_> {
    /// Whether this is the keyword or unquoted identifier `word` (given in lower case).
    pub fn is_word(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(word)
    }

    /// Whether this is an identifier, quoted or not (or a keyword, which may be one).
    pub fn is_name(&self) -> bool {
        matches!(self.kind, Kind::Word | Kind::Quoted { .. })
    }

    /// Whether this is the punctuation `punct`.
    pub fn is_punct(&self, punct: &str) -> bool {
        self.kind == Kind::Punct && self.text == punct
    }
}

/// Splits SQL text into tokens, one at a time.
#[derive(Debug, Clone)]
pub(super) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    /// The next token with its extent in the text, quotes and prefixes included: (start,
    /// token, end).
    pub fn next_spanned(&mut self) -> Option<(usize, Token<'a>, usize)> {
        self.skip_trivia();
        let start = self.pos;
        let token = self.next()?;
        Some((start, token, self.pos))
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    fn token(&mut self, kind: Kind, start: usize, end: usize, next: usize) -> Token<'a> {
        self.pos = next;
        Token { kind, text: &self.src[start..end] }
    }

    /// Skips whitespace and comments; an unterminated block comment swallows the rest.
    fn skip_trivia(&mut self) {
        let bytes = self.src.as_bytes();
        while let Some(ahead) = bytes.get(self.pos..) {
            match ahead {
                [b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, ..] => self.pos += 1,
                // The server ends a line comment at either line break character.
                [b'-', b'-', ..] => {
                    self.pos += ahead.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(ahead.len());
                }
                [b'/', b'*', ..] => {
                    let mut depth = 0usize;
                    while let Some(inside) = bytes.get(self.pos..).filter(|rest| !rest.is_empty()) {
                        match inside {
                            [b'/', b'*', ..] => (depth, self.pos) = (depth + 1, self.pos + 2),
                            [b'*', b'/', ..] => {
                                (depth, self.pos) = (depth - 1, self.pos + 2);
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// A quoted body starting at `body`, ending at the first lone `quote`; with `backslash`,
    /// a backslash also hides the byte after it. Returns (body end, position after the quote).
    fn quoted(&self, body: usize, quote: u8, backslash: bool) -> (usize, usize) {
        let bytes = self.src.as_bytes();
        let mut at = body;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' if backslash => at += 2,
                b if b == quote && self.byte(at + 1) == Some(quote) => at += 2,
                b if b == quote => return (at, at + 1),
                _ => at += 1,
            }
        }
        (bytes.len(), bytes.len())
    }

    fn string(&mut self, body: usize, kind: StrKind) -> Token<'a> {
        let (end, next) = self.quoted(body, b'\'', kind == StrKind::Escape);
        self.token(Kind::Str(kind), body, end, next)
    }

    /// The escape character a `UESCAPE 'c'` after a Unicode literal names, consuming it.
    fn uescape(&mut self) -> char {
        let mut ahead = self.clone();
        if let Some(word) = ahead.next()
            && word.is_word("uescape")
            && let Some(Token { kind: Kind::Str(StrKind::Standard), text }) = ahead.next()
            && let Some(escape) = text.chars().next()
            && escape.len_utf8() == text.len()
        {
            *self = ahead;
            return escape;
        }
        '\\'
    }

    /// `$1`, or a dollar-quoted string, or else a lone `$`.
    fn dollar(&mut self, start: usize) -> Token<'a> {
        let bytes = self.src.as_bytes();
        let mut at = start + 1;
        if bytes.get(at).is_some_and(u8::is_ascii_digit) {
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            return self.token(Kind::Param, start, at, at);
        }
        // A tag is an identifier without `$`; it cannot start with a digit, taken above.
        while bytes.get(at).is_some_and(|&b| is_ident_byte(b) && b != b'$') {
            at += 1;
        }
        if bytes.get(at) != Some(&b'$') {
            return self.token(Kind::Punct, start, start + 1, start + 1);
        }
        let tag = &self.src[start..=at];
        let body = at + 1;
        match self.src[body..].find(tag) {
            Some(n) => self.token(Kind::Str(StrKind::Dollar), body, body + n, body + n + tag.len()),
            None => self.token(Kind::Str(StrKind::Dollar), body, bytes.len(), bytes.len()),
        }
    }

    fn number(&mut self, start: usize) -> Token<'a> {
        let bytes = self.src.as_bytes();
        let mut at = start;
        loop {
            while bytes.get(at).is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
                at += 1;
            }
            let text = &self.src[start..at];
            let decimal = !(text.starts_with('0') && text[1..].starts_with(['x', 'X', 'o', 'O', 'b', 'B']));
            let exponent = decimal && text.ends_with(['e', 'E']);
            match bytes.get(at..at + 2) {
                Some([b'+' | b'-', digit]) if exponent && digit.is_ascii_digit() => at += 1,
                _ => return self.token(Kind::Number, start, at, at),
            }
        }
    }

    /// An operator: the longest run of operator characters, cut before a comment start, and
    /// (as the server does) never ending in `+` or `-` unless it holds a character only
    /// operators use, so that `=-1` is `=` followed by `-1`.
    fn operator(&mut self, start: usize) -> Token<'a> {
        let bytes = self.src.as_bytes();
        let mut end = start;
        while end < bytes.len() && is_operator_byte(bytes[end]) {
            if end > start && matches!(&bytes[end..(end + 2).min(bytes.len())], b"--" | b"/*") {
                break;
            }
            end += 1;
        }
        let text = &bytes[start..end];
        if !text.iter().any(|b| b"~!@#^&|`?%".contains(b)) {
            while end > start + 1 && matches!(bytes[end - 1], b'+' | b'-') {
                end -= 1;
            }
        }
        self.token(Kind::Punct, start, end, end)
    }

    /// A keyword or identifier, or the string or identifier it prefixes (`E'..'`, `U&'..'`).
    fn word(&mut self, start: usize) -> Token<'a> {
        let bytes = self.src.as_bytes();
        let mut end = start;
        while bytes.get(end).is_some_and(|&b| is_ident_byte(b)) {
            end += 1;
        }
        let word = &self.src[start..end];
        let next = self.byte(end);
        if end == start + 1 && next == Some(b'\'') {
            if word.eq_ignore_ascii_case("e") {
                return self.string(end + 1, StrKind::Escape);
            }
            if ["b", "x", "n"].iter().any(|prefix| word.eq_ignore_ascii_case(prefix)) {
                return self.string(end + 1, StrKind::Standard);
            }
        }
        if word.eq_ignore_ascii_case("u") && next == Some(b'&') {
            match self.byte(end + 1) {
                Some(b'\'') => {
                    let (body_end, after) = self.quoted(end + 2, b'\'', false);
                    self.pos = after;
                    let escape = self.uescape();
                    return Token { kind: Kind::Str(StrKind::Unicode(escape)), text: &self.src[end + 2..body_end] };
                }
                Some(DOUBLE_QUOTE) => {
                    let (body_end, after) = self.quoted(end + 2, DOUBLE_QUOTE, false);
                    self.pos = after;
                    let escape = self.uescape();
                    return Token { kind: Kind::Quoted { unicode: Some(escape) }, text: &self.src[end + 2..body_end] };
                }
                _ => {}
            }
        }
        self.token(Kind::Word, start, end, end)
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let start = self.pos;
        let first = self.byte(start)?;
        let second = self.byte(start + 1);
        Some(match first {
            b'\'' => self.string(start + 1, StrKind::Standard),
            DOUBLE_QUOTE => {
                let (end, next) = self.quoted(start + 1, DOUBLE_QUOTE, false);
                self.token(Kind::Quoted { unicode: None }, start + 1, end, next)
            }
            b'$' => self.dollar(start),
            b if b.is_ascii_digit() => self.number(start),
            b'.' if second.is_some_and(|b| b.is_ascii_digit()) => self.number(start),
            b':' if second == Some(b':') => self.token(Kind::Punct, start, start + 2, start + 2),
            b if is_operator_byte(b) => self.operator(start),
            b if is_ident_byte(b) && !b.is_ascii_digit() => self.word(start),
            // Any other single ASCII byte: `(`, `)`, `,`, `;`, `.`, `[`, `:`, ...
            _ => self.token(Kind::Punct, start, start + 1, start + 1),
        })
    }
}

/// Bytes an identifier may continue with; every byte of a non-ASCII character counts, so a
/// character is never cut.
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_operator_byte(b: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?".contains(&b)
}
