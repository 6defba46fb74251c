//! The backend messages the proxy composes itself, and the error/notice fields it reads.

use bytes::{BufMut, BytesMut};
use std::fmt;

use super::codes::{TransactionStatus, backend};
use super::sqlstate;
use super::startup::CancelKey;

/// Appends one tagged message whose body `write_body` produces, fixing up the length after.
fn message(buf: &mut BytesMut, tag: u8, write_body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let length_at = buf.len();
    buf.put_u32(0);
    write_body(buf);
    let length = (buf.len() - length_at) as u32;
    buf[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, text: &str) {
    // A NUL inside would end the field early and corrupt the message; none of the texts the
    // proxy writes should contain one, but never let one through.
    buf.extend(text.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, backend::AUTHENTICATION, |body| body.put_u32(0));
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, backend::PARAMETER_STATUS, |body| {
        put_cstr(body, name);
        put_cstr(body, value);
    });
}

/// The name and value a ParameterStatus body carries.
pub fn read_parameter_status(body: &[u8]) -> (String, String) {
    let mut fields = body.split(|&b| b == 0);
    let mut text = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    (text(), text())
}

/// Records a reported parameter in `params`: a new value replaces the old one in its place,
/// so the list keeps the order in which the server first reported each.
pub fn record_parameter(params: &mut Vec<(String, String)>, name: String, value: String) {
    match params.iter_mut().find(|(n, _)| *n == name) {
        Some(entry) => entry.1 = value,
        None => params.push((name, value)),
    }
}

/// Any message, its body as given (a message of the proxy's own that it passes on unread).
pub fn raw(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    message(buf, tag, |out| out.extend_from_slice(body));
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, key: CancelKey) {
    message(buf, backend::BACKEND_KEY_DATA, |body| {
        body.put_i32(key.pid);
        body.put_u32(key.secret);
    });
}

/// ReadyForQuery with the given transaction status.
pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    message(buf, backend::READY_FOR_QUERY, |body| body.put_u8(status.as_byte()));
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u16, unsupported: &[String]) {
    message(buf, backend::NEGOTIATE_PROTOCOL_VERSION, |body| {
        body.put_u32((3 << 16) | u32::from(minor));
        body.put_u32(unsupported.len() as u32);
        for option in unsupported {
            put_cstr(body, option);
        }
    });
}

/// RowDescription for text columns named `names` (used by the admin console).
pub fn row_description(buf: &mut BytesMut, names: &[&str]) {
    const TEXT_OID: u32 = 25;
    message(buf, backend::ROW_DESCRIPTION, |body| {
        body.put_i16(names.len() as i16);
        for name in names {
            put_cstr(body, name);
            body.put_u32(0); // not from a table
            body.put_i16(0);
            body.put_u32(TEXT_OID);
            body.put_i16(-1); // variable length
            body.put_i32(-1); // no type modifier
            body.put_i16(0); // text format
        }
    });
}

/// DataRow of text values; `None` is NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    message(buf, backend::DATA_ROW, |body| {
        body.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(text) => {
                    body.put_i32(text.len() as i32);
                    body.extend_from_slice(text.as_bytes());
                }
                None => body.put_i32(-1),
            }
        }
    });
}

/// CommandComplete with `tag` (e.g. `SHOW`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    message(buf, backend::COMMAND_COMPLETE, |body| put_cstr(body, tag));
}

/// EmptyQueryResponse.
pub fn empty_query_response(buf: &mut BytesMut) {
    message(buf, backend::EMPTY_QUERY_RESPONSE, |_| {});
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the server process (and every session).
    Panic,
    /// Ends the session.
    Fatal,
    /// Ends the current statement.
    Error,
    /// A warning (notice).
    Warning,
    /// Informational notice.
    Notice,
    /// Debug output (notice).
    Debug,
    /// Information (notice).
    Info,
    /// Log output (notice).
    Log,
}

impl Severity {
    /// The non-localised name, as in the `V` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Panic => "PANIC",
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }

    /// Parses a non-localised severity name.
    pub fn parse(name: &str) -> Option<Severity> {
        [
            Severity::Panic,
            Severity::Fatal,
            Severity::Error,
            Severity::Warning,
            Severity::Notice,
            Severity::Debug,
            Severity::Info,
            Severity::Log,
        ]
        .into_iter()
        .find(|severity| severity.as_str() == name)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Field types inside an ErrorResponse or NoticeResponse.
mod field {
    pub const SEVERITY_LOCALIZED: u8 = b'S';
    pub const SEVERITY: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
}

/// The SQLSTATE of an ErrorResponse or NoticeResponse body, without parsing the rest.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    body.split(|&b| b == 0).find_map(|field| field.strip_prefix(&[field::CODE]))
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy writes or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// Severity: the non-localised one when the server gave it (servers since 9.6 do).
    pub severity: Severity,
    /// The SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint: what to do about it.
    pub hint: Option<String>,
}

impl ErrorFields {
    /// Builds fields with the given severity, SQLSTATE and message.
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> ErrorFields {
        ErrorFields { severity, code: code.to_owned(), message: message.into(), detail: None, hint: None }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorFields {
        self.hint = Some(hint.into());
        self
    }

    /// Parses the body of an ErrorResponse or NoticeResponse.
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::new(Severity::Error, sqlstate::INTERNAL_ERROR, "");
        let (mut plain_severity, mut localized_severity) = (None, None);
        for field in body.split(|&b| b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                field::SEVERITY => plain_severity = Some(value),
                field::SEVERITY_LOCALIZED => localized_severity = Some(value),
                field::CODE => fields.code = value,
                field::MESSAGE => fields.message = value,
                field::DETAIL => fields.detail = Some(value),
                field::HINT => fields.hint = Some(value),
                _ => {}
            }
        }
        // A localised severity is only understood where it happens to be English.
        if let Some(severity) = plain_severity.or(localized_severity).and_then(|name| Severity::parse(&name)) {
            fields.severity = severity;
        }
        fields
    }

    /// Appends this as an ErrorResponse.
    pub fn write_error(&self, buf: &mut BytesMut) {
        self.write(buf, backend::ERROR_RESPONSE);
    }

    /// Appends this as a NoticeResponse.
    pub fn write_notice(&self, buf: &mut BytesMut) {
        self.write(buf, backend::NOTICE_RESPONSE);
    }

    fn write(&self, buf: &mut BytesMut, tag: u8) {
        message(buf, tag, |body| {
            for (kind, value) in [
                (field::SEVERITY_LOCALIZED, Some(self.severity.as_str())),
                (field::SEVERITY, Some(self.severity.as_str())),
                (field::CODE, Some(self.code.as_str())),
                (field::MESSAGE, Some(self.message.as_str())),
                (field::DETAIL, self.detail.as_deref()),
                (field::HINT, self.hint.as_deref()),
            ] {
                if let Some(value) = value {
                    body.put_u8(kind);
                    put_cstr(body, value);
                }
            }
            body.put_u8(0);
        });
    }
}

impl fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; {detail}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::take_message;

    #[test]
    fn error_fields_round_trip() {
        let fields = ErrorFields::new(Severity::Fatal, "08001", "cannot reach it").with_hint("check the host");
        let mut buf = BytesMut::new();
        fields.write_error(&mut buf);
        let (tag, body) = take_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(tag, backend::ERROR_RESPONSE);
        assert_eq!(ErrorFields::parse(&body), fields);
    }

    #[test]
    fn the_plain_severity_wins_over_the_localised_one() {
        let parsed = ErrorFields::parse(b"SFATAL\0C28P01\0Mnope\0\0");
        assert_eq!(parsed.severity, Severity::Fatal, "an English localised severity is understood");
        let parsed = ErrorFields::parse(b"SFATALE\0C28P01\0Mnope\0\0");
        assert_eq!(parsed.severity, Severity::Error, "an unknown one is taken as ERROR");
        let parsed = ErrorFields::parse(b"SFATALE\0VFATAL\0C28P01\0Mnope\0\0");
        assert_eq!(parsed.severity, Severity::Fatal);
        assert_eq!(parsed.code, "28P01");
    }

    #[test]
    fn greeting_messages_have_correct_lengths() {
        let mut buf = BytesMut::new();
        authentication_ok(&mut buf);
        parameter_status(&mut buf, "server_version", "15.0");
        backend_key_data(&mut buf, CancelKey { pid: 7, secret: 9 });
        ready_for_query(&mut buf, TransactionStatus::Idle);
        let tags: Vec<u8> = std::iter::from_fn(|| take_message(&mut buf, 1024).unwrap().map(|(t, _)| t)).collect();
        assert_eq!(tags, b"RSKZ");
        assert!(buf.is_empty());
    }
}
