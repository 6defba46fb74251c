//! PostgreSQL protocol messages built and read by hand, for tests and benchmarks that play a
//! client or a server at the byte level: to send what no driver sends (garbage, early data,
//! odd protocol versions) or to see what a driver hides (a SQLSTATE, a tag).
//!
//! Written from the protocol documentation ("Message Formats"), not taken from the proxy's
//! `protocol` module nor from fake-lakebase's gateway: a test that encodes with the code under
//! test could not catch a bug in it. The encoders build whole messages, length included
//! (except [`startup_body`], for parsers that take a body), and do not check their input (a
//! NUL inside a string goes through as it is), so tests can build malformed messages on
//! purpose.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version 3.0, as a StartupMessage carries it.
pub const PROTOCOL_3_0: u32 = 3 << 16;
/// The "version" of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The "version" of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The "version" of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// One tagged message: tag, self-inclusive length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One untagged packet of the startup phase: self-inclusive length, body.
pub fn packet(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a StartupMessage (what follows its length): `version`, then each name and
/// value NUL-terminated, then a NUL.
pub fn startup_body<K: AsRef<str>, V: AsRef<str>>(version: u32, params: &[(K, V)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (name, value) in params {
        for field in [name.as_ref(), value.as_ref()] {
            body.extend_from_slice(field.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    body
}

/// A StartupMessage with its length.
pub fn startup_message<K: AsRef<str>, V: AsRef<str>>(version: u32, params: &[(K, V)]) -> Vec<u8> {
    packet(&startup_body(version, params))
}

/// The StartupMessage psql 15 sends for `user` and `database` (a realistic one for
/// benchmarks).
pub fn psql_startup(user: &str, database: &str) -> Vec<u8> {
    let params = [("user", user), ("database", database), ("application_name", "psql"), ("client_encoding", "UTF8")];
    startup_message(PROTOCOL_3_0, &params)
}

/// An SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    packet(&SSL_REQUEST_CODE.to_be_bytes())
}

/// A GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    packet(&GSSENC_REQUEST_CODE.to_be_bytes())
}

/// A CancelRequest for `key`, a BackendKeyData body (process id, then secret).
pub fn cancel_request(key: &[u8]) -> Vec<u8> {
    packet(&[&CANCEL_REQUEST_CODE.to_be_bytes()[..], key].concat())
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// A PasswordMessage (cleartext, or any password-ish answer).
pub fn password(password: &str) -> Vec<u8> {
    message(b'p', &[password.as_bytes(), b"\0"].concat())
}

/// A Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', b"")
}

/// A RowDescription of `columns`, all `int4` in text format with no table behind them.
pub fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for name in columns {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&0u32.to_be_bytes()); // table oid
        body.extend_from_slice(&0u16.to_be_bytes()); // column attnum
        body.extend_from_slice(&23u32.to_be_bytes()); // int4
        body.extend_from_slice(&4i16.to_be_bytes()); // type size
        body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        body.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    message(b'T', &body)
}

/// A DataRow with the given (non-NULL) values.
pub fn data_row(values: &[&[u8]]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for value in values {
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    message(b'D', &body)
}

/// A CommandComplete with `tag` (`SELECT 1`).
pub fn command_complete(tag: &str) -> Vec<u8> {
    message(b'C', &[tag.as_bytes(), b"\0"].concat())
}

/// A ReadyForQuery with the transaction status `status` (`b'I'`, `b'T'` or `b'E'`).
pub fn ready_for_query(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

/// Reads one tagged message: `(tag, body)`.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

/// The first column of a DataRow body as text; `None` if it is NULL.
pub fn data_row_first(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

/// The field `code` (`b'C'` SQLSTATE, `b'M'` message, ...) of an ErrorResponse or
/// NoticeResponse body.
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    let mut fields = body.split(|&b| b == 0).filter(|f| !f.is_empty());
    let field = fields.find(|f| f[0] == code)?;
    Some(String::from_utf8_lossy(&field[1..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets_match_the_documented_bytes() {
        assert_eq!(ssl_request(), [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert_eq!(gssenc_request(), [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
        assert_eq!(cancel_request(&[0, 0, 0, 7, 1, 2, 3, 4]), [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(startup_message(PROTOCOL_3_0, &[("user", "x")]), b"\0\0\0\x10\0\x03\0\0user\0x\0\0");
    }

    #[test]
    fn messages_carry_their_length() {
        assert_eq!(query("SELECT 1"), b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(terminate(), b"X\0\0\0\x04");
        assert_eq!(ready_for_query(b'I'), b"Z\0\0\0\x05I");
    }

    #[test]
    fn fields_are_read_back() {
        let row = data_row(&[b"42", b"x"]);
        assert_eq!(data_row_first(&row[5..]).as_deref(), Some("42"));
        assert_eq!(data_row_first(&[0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        let error = b"SERROR\0C28P01\0Mbad password\0\0";
        assert_eq!(error_field(error, b'C').as_deref(), Some("28P01"));
        assert_eq!(error_field(error, b'M').as_deref(), Some("bad password"));
        assert_eq!(error_field(error, b'H'), None);
    }
}
