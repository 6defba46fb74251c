//! Statements: where each one lies in the text, and whether it needs a closer look.
//!
//! Statements end at `;` outside quotes, comments and parentheses, and not inside the
//! `BEGIN ATOMIC ... END` body of `CREATE FUNCTION` or `CREATE PROCEDURE`, as `psql` splits
//! them. A statement holding none of the tokens that can touch session state (see
//! [`classify::is_notable`]) is settled here, so ordinary queries, however long, are read
//! once and never stored as tokens.

use super::classify;
use super::lexer::{Kind, Lexer, Token};

/// One statement.
pub(super) struct Piece<'a> {
    /// From its first token's start to its last token's end.
    pub text: &'a str,
    /// Whether it holds a token that can touch session state.
    pub notable: bool,
}

/// The statements of a text, in order; empty ones are skipped.
pub(super) struct Splitter<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
}

impl<'a> Splitter<'a> {
    pub fn new(src: &'a str) -> Self {
        Splitter { src, lexer: Lexer::new(src) }
    }
}

impl<'a> Iterator for Splitter<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let mut span: Option<(usize, usize)> = None;
        // The first tokens, enough to tell a CREATE FUNCTION or PROCEDURE.
        let mut head = [Token { kind: Kind::Punct, text: "" }; 4];
        let mut count = 0usize;
        let (mut parens, mut begins) = (0usize, 0usize);
        let (mut notable, mut selects) = (false, false);
        while let Some((start, token, end)) = self.lexer.next_spanned() {
            if token.is_punct(";") && parens == 0 && begins == 0 {
                match span {
                    Some(_) => break,
                    None => continue,
                }
            }
            span = Some((span.map_or(start, |(start, _)| start), end));
            if count == 0 {
                selects = classify::is_select(&token);
            }
            if count < head.len() {
                head[count] = token;
            }
            notable = notable || classify::is_notable(&token, count == 0, selects);
            count += 1;
            if token.is_punct("(") {
                parens += 1;
            } else if token.is_punct(")") {
                parens = parens.saturating_sub(1);
            } else if parens == 0 && classify::is_routine(&head[..count.min(head.len())]) {
                // Only routine bodies open blocks here; CASE needs its END inside one too.
                if token.is_word("begin") || (token.is_word("case") && begins > 0) {
                    begins += 1;
                } else if token.is_word("end") {
                    begins = begins.saturating_sub(1);
                }
            }
        }
        span.map(|(start, end)| Piece { text: &self.src[start..end], notable })
    }
}
