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

/// A string field of a message body: the bytes, then a NUL.
fn cstr(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

/// Parameter values as a Bind or FunctionCall carries them: a count, then each value's
/// length (-1 for NULL, `None`) and bytes.
fn values(out: &mut Vec<u8>, params: &[Option<&[u8]>]) {
    out.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

/// A Parse of `sql` into statement `name` (`""` is the unnamed one), with the given parameter
/// type OIDs (0 leaves a type to the server).
pub fn parse(name: &str, sql: &str, param_types: &[u32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + sql.len() + 4 + 4 * param_types.len());
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&(param_types.len() as u16).to_be_bytes());
    for oid in param_types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    message(b'P', &body)
}

/// A Bind of `statement` into `portal`, every parameter and result column in text format (no
/// format codes, which means text); `None` is NULL.
pub fn bind(portal: &str, statement: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&0u16.to_be_bytes()); // parameter format codes: none, all text
    values(&mut body, params);
    body.extend_from_slice(&0u16.to_be_bytes()); // result format codes: none, all text
    message(b'B', &body)
}

/// A Describe of a statement (`kind` `b'S'`) or a portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// An Execute of `portal`, returning at most `max_rows` rows (0: all of them).
pub fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

/// A Close of a statement (`kind` `b'S'`) or a portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name);
    message(b'C', &body)
}

/// A Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// A Flush.
pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

/// A CopyData carrying `data`.
pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

/// A CopyDone.
pub fn copy_done() -> Vec<u8> {
    message(b'c', b"")
}

/// A CopyFail with the client's `reason`.
pub fn copy_fail(reason: &str) -> Vec<u8> {
    message(b'f', &[reason.as_bytes(), b"\0"].concat())
}

/// A FunctionCall of the function with OID `function`, arguments and result in text format;
/// `None` is NULL.
pub fn function_call(function: u32, args: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = function.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes()); // argument format codes: none, all text
    values(&mut body, args);
    body.extend_from_slice(&0u16.to_be_bytes()); // result format: text
    message(b'F', &body)
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
    fn extended_query_messages_match_the_documented_bytes() {
        assert_eq!(parse("s", "SELECT $1", &[23]), b"P\0\0\0\x16s\0SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            bind("p", "s", &[Some(b"42"), None]),
            b"B\0\0\0\x18p\0s\0\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\0"
        );
        assert_eq!(describe(b'S', "s"), b"D\0\0\0\x07Ss\0");
        assert_eq!(execute("", 5), b"E\0\0\0\x09\0\0\0\0\x05");
        assert_eq!(close(b'P', ""), b"C\0\0\0\x06P\0");
        assert_eq!(sync(), b"S\0\0\0\x04");
        assert_eq!(flush(), b"H\0\0\0\x04");
        assert_eq!(copy_data(b"1\n"), b"d\0\0\0\x061\n");
        assert_eq!(copy_done(), b"c\0\0\0\x04");
        assert_eq!(copy_fail("no"), b"f\0\0\0\x07no\0");
        assert_eq!(function_call(177, &[Some(b"1")]), b"F\0\0\0\x13\0\0\0\xb1\0\0\0\x01\0\0\0\x011\0\0");
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
