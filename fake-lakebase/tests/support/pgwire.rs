//! A minimal PostgreSQL wire client over TLS, for what psql cannot show: SQLSTATE codes,
//! direct TLS with ALPN, CancelRequest inside TLS. The bytes are test-support's
//! ([`test_support::wire`], [`test_support::tls`]); this adds the login and query loops the
//! gateway tests need.
#![allow(dead_code)]

use std::io;

use test_support::wire;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use test_support::wire::read_message;

/// An ErrorResponse's SQLSTATE and message, or an I/O failure (`code` "io").
#[derive(Debug)]
pub struct PgError {
    pub code: String,
    pub message: String,
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> PgError {
        PgError { code: "io".into(), message: e.to_string() }
    }
}

/// The SQLSTATE and message of an ErrorResponse body (empty if missing).
pub fn parse_error(body: &[u8]) -> PgError {
    let field = |code| wire::error_field(body, code).unwrap_or_default();
    PgError { code: field(b'C'), message: field(b'M') }
}

/// A logged-in session.
pub struct Session<S> {
    pub stream: S,
    /// BackendKeyData body (pid + secret).
    pub cancel_key: Vec<u8>,
}

/// Logs in over `stream` (startup, cleartext password) up to ReadyForQuery.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    user: &str,
    password: &str,
    database: Option<&str>,
) -> Result<Session<S>, PgError> {
    let mut params = vec![("user", user), ("application_name", "fake-lakebase-test")];
    if let Some(db) = database {
        params.push(("database", db));
    }
    stream.write_all(&wire::startup_message(wire::PROTOCOL_3_0, &params)).await?;
    let mut cancel_key = Vec::new();
    loop {
        let (ty, body) = read_message(&mut stream).await?;
        match ty {
            b'R' if body[..4] == [0, 0, 0, 3] => stream.write_all(&wire::password(password)).await?,
            b'R' if body[..4] == [0, 0, 0, 0] => {}
            b'R' => panic!("unexpected auth request {body:?}"),
            b'K' => cancel_key = body,
            b'E' => return Err(parse_error(&body)),
            b'Z' => return Ok(Session { stream, cancel_key }),
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs a simple query; returns the first column of each row ("NULL" for a NULL).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<String>, PgError> {
        self.stream.write_all(&wire::query(sql)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (ty, body) = read_message(&mut self.stream).await?;
            match ty {
                b'D' => rows.push(wire::data_row_first(&body).unwrap_or_else(|| "NULL".to_string())),
                b'E' => error = Some(parse_error(&body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}
