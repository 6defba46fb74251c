//! The untagged packets a client sends before the session starts: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage with its parameters.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest startup packet accepted, as PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// How much one read asks for while the packet's length is unknown: enough for any common
/// StartupMessage, so a login takes one read per packet.
const READ_AHEAD: usize = 1024;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0, the version the proxy speaks on both sides.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// What a client asked for in one startup packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupRequest {
    /// The client wants TLS.
    Ssl,
    /// The client wants GSSAPI encryption, which the proxy never offers.
    GssEnc,
    /// The client asks to cancel the query running on the session with this key.
    Cancel(CancelKey),
    /// The client opens a session.
    Startup {
        /// The 3.x minor version asked for; the proxy answers anything above 0 with
        /// NegotiateProtocolVersion.
        minor: u16,
        /// Ordinary parameters (`user`, `database`, `application_name`, ...), in client order.
        params: StartupParams,
        /// Names of `_pq_.*` protocol options, none of which the proxy supports.
        protocol_options: Vec<String>,
    },
}

/// The (process id, secret) pair that identifies a session to CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Backend process id as told to the client.
    pub pid: i32,
    /// The secret that goes with it.
    pub secret: u32,
}

/// Startup parameters in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams(Vec<(String, String)>);

impl StartupParams {
    /// The value of `name`, if the client sent it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Sets `name`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(key, _)| key == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Removes `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.0.iter().position(|(key, _)| key == name)?;
        Some(self.0.remove(index).1)
    }

    /// All parameters as (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value.as_str()))
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for StartupParams {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut params = StartupParams::default();
        for (key, value) in iter {
            params.set(key, value);
        }
        params
    }
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Reading failed or the client hung up mid-packet.
    #[error("reading the startup packet: {0}")]
    Io(#[from] std::io::Error),
    /// The declared length is outside 8..=10000 bytes.
    #[error("invalid startup packet length {0}")]
    BadLength(usize),
    /// A protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: lakebase-proxy speaks protocol 3")]
    UnsupportedProtocol {
        /// Major version asked for.
        major: u16,
        /// Minor version asked for.
        minor: u16,
    },
    /// The packet's contents do not follow the protocol.
    #[error("invalid startup packet: {0}")]
    Malformed(&'static str),
}

/// Encodes a StartupMessage with its length prefix, as a client sends it (for tools, tests
/// and benchmarks that play the client).
pub fn encode_startup(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = vec![0; 4];
    packet.extend_from_slice(&version.to_be_bytes());
    for (key, value) in params {
        for field in [key, value] {
            packet.extend_from_slice(field.as_bytes());
            packet.push(0);
        }
    }
    packet.push(0);
    let length = (packet.len() as u32).to_be_bytes();
    packet[..4].copy_from_slice(&length);
    packet
}

/// Reads one length-prefixed startup packet and returns its body; `Ok(None)` when the client
/// closed before sending anything (health checkers and port scanners do this).
///
/// Reads go through `buf` and may take more than the packet (one read per packet instead of
/// two); whatever the client sent after the packet stays in `buf`, in order.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<BytesMut>, StartupError> {
    loop {
        let wanted = match buf.first_chunk::<4>() {
            Some(length) => {
                let total = u32::from_be_bytes(*length) as usize;
                if !(8..=MAX_STARTUP_PACKET).contains(&total) {
                    return Err(StartupError::BadLength(total));
                }
                if buf.len() >= total {
                    let mut packet = buf.split_to(total);
                    packet.advance(4);
                    return Ok(Some(packet));
                }
                total - buf.len()
            }
            None => READ_AHEAD,
        };
        buf.reserve(wanted);
        if reader.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(StartupError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Interprets a startup packet body (everything after the length).
pub fn parse(body: &[u8]) -> Result<StartupRequest, StartupError> {
    let (code, rest) = body.split_first_chunk::<4>().ok_or(StartupError::Malformed("too short"))?;
    match u32::from_be_bytes(*code) {
        SSL_REQUEST if rest.is_empty() => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupRequest::GssEnc),
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::Malformed("encryption request with a body")),
        CANCEL_REQUEST => parse_cancel(rest),
        version => parse_startup(version, rest),
    }
}

fn parse_cancel(rest: &[u8]) -> Result<StartupRequest, StartupError> {
    // Protocol 3.2 allows longer secrets; the proxy hands out 4-byte ones only, so anything
    // else cannot match a session and is refused as malformed.
    let bytes: [u8; 8] = rest.try_into().map_err(|_| StartupError::Malformed("cancel request of the wrong size"))?;
    Ok(StartupRequest::Cancel(CancelKey {
        pid: i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        secret: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    }))
}

fn parse_startup(version: u32, rest: &[u8]) -> Result<StartupRequest, StartupError> {
    let (major, minor) = ((version >> 16) as u16, version as u16);
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut params = StartupParams::default();
    let mut protocol_options = Vec::new();
    // The list is NUL-terminated name/value strings closed by one more NUL.
    let list = rest.strip_suffix(&[0]).ok_or(StartupError::Malformed("parameters are not terminated"))?;
    let mut fields = list.split(|&b| b == 0);
    loop {
        let key = fields.next().ok_or(StartupError::Malformed("parameters are not terminated"))?;
        if key.is_empty() {
            break;
        }
        let value = fields.next().ok_or(StartupError::Malformed("parameter without a value"))?;
        let key = std::str::from_utf8(key).map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        if key.starts_with("_pq_.") {
            protocol_options.push(key.to_owned());
        } else {
            params.set(key, value);
        }
    }
    if fields.next().is_some() {
        return Err(StartupError::Malformed("data after the parameter list"));
    }
    if params.get("user").is_none_or(str::is_empty) {
        return Err(StartupError::Malformed("no PostgreSQL user name specified in startup packet"));
    }
    Ok(StartupRequest::Startup { minor, params, protocol_options })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body `parse` takes: everything after the length.
    fn startup_body(version: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        encode_startup(version, pairs).split_off(4)
    }

    #[test]
    fn parses_a_startup_message() {
        let body = startup_body(PROTOCOL_3_0, &[("user", "alice"), ("database", "db"), ("_pq_.x", "1")]);
        let StartupRequest::Startup { minor, params, protocol_options } = parse(&body).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!(minor, 0);
        assert_eq!(params.get("user"), Some("alice"));
        assert_eq!(params.get("database"), Some("db"));
        assert_eq!(protocol_options, vec!["_pq_.x".to_owned()]);
    }

    #[test]
    fn newer_minor_versions_are_accepted_for_negotiation() {
        let body = startup_body(PROTOCOL_3_0 | 2, &[("user", "a")]);
        assert!(matches!(parse(&body).unwrap(), StartupRequest::Startup { minor: 2, .. }));
    }

    #[test]
    fn rejects_other_major_versions_and_missing_user() {
        assert!(matches!(
            parse(&startup_body(2 << 16, &[("user", "a")])),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(parse(&startup_body(PROTOCOL_3_0, &[("database", "a")])).is_err());
    }

    #[test]
    fn rejects_unterminated_and_trailing_data() {
        let mut body = startup_body(PROTOCOL_3_0, &[("user", "a")]);
        body.pop();
        assert!(parse(&body).is_err());
        let mut body = startup_body(PROTOCOL_3_0, &[("user", "a")]);
        body.extend_from_slice(b"junk");
        assert!(parse(&body).is_err());
    }

    #[test]
    fn parses_special_requests() {
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()).unwrap(), StartupRequest::Ssl);
        assert_eq!(parse(&GSSENC_REQUEST.to_be_bytes()).unwrap(), StartupRequest::GssEnc);
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&42i32.to_be_bytes());
        cancel.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(parse(&cancel).unwrap(), StartupRequest::Cancel(CancelKey { pid: 42, secret: 7 }));
        assert!(parse(&cancel[..10]).is_err());
    }

    #[tokio::test]
    async fn read_packet_enforces_the_size_limit() {
        let mut huge = &(100_000u32).to_be_bytes()[..];
        assert!(matches!(read_packet(&mut huge, &mut BytesMut::new()).await, Err(StartupError::BadLength(100_000))));
        let mut empty: &[u8] = &[];
        assert!(read_packet(&mut empty, &mut BytesMut::new()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_packet_keeps_what_follows_the_packet() {
        let mut input = encode_startup(PROTOCOL_3_0, &[("user", "a")]);
        input.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        let mut buf = BytesMut::new();
        let body = read_packet(&mut &input[..], &mut buf).await.unwrap().unwrap();
        assert_eq!(&body[..], &startup_body(PROTOCOL_3_0, &[("user", "a")])[..]);
        assert_eq!(&buf[..], b"Q\0\0\0\x0dselect 1\0");
    }
}
