//! Message framing: every message after startup is `tag: u8, length: i32 (self-inclusive), body`.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes in a tagged message header: the tag and the four-byte length.
pub const HEADER_LEN: usize = 5;

/// Largest message the proxy buffers whole when it must read a body (for example a server's
/// error during login). Relayed messages are streamed and have no such limit.
pub const MAX_BUFFERED_MESSAGE: usize = 1 << 20;

/// The parsed header of one tagged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte.
    pub tag: u8,
    /// Length of the body that follows the header.
    pub body_len: usize,
}

impl FrameHeader {
    /// Parses a header from the first [`HEADER_LEN`] bytes, or `Ok(None)` when fewer arrived.
    ///
    /// A declared length below 4 cannot occur in a valid stream: the length counts itself.
    pub fn parse(bytes: &[u8]) -> io::Result<Option<FrameHeader>> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if !(4..=i32::MAX as u32).contains(&declared) {
            return Err(invalid(format!(
                "message '{}' declares an impossible length {declared}",
                header[0].escape_ascii()
            )));
        }
        Ok(Some(FrameHeader { tag: header[0], body_len: declared as usize - 4 }))
    }

    /// Header plus body.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Splits one whole message off the front of `buf` if it has fully arrived.
///
/// Used where the proxy holds a conversation itself (upstream login, session reset) rather
/// than relaying; `limit` guards against a peer that declares an enormous message.
pub fn take_message(buf: &mut BytesMut, limit: usize) -> io::Result<Option<(u8, Bytes)>> {
    let Some(header) = FrameHeader::parse(buf)? else {
        return Ok(None);
    };
    if header.body_len > limit {
        return Err(invalid(format!(
            "message '{}' of {} bytes exceeds the {limit}-byte limit",
            header.tag.escape_ascii(),
            header.body_len
        )));
    }
    if buf.len() < header.total_len() {
        buf.reserve(header.total_len() - buf.len());
        return Ok(None);
    }
    let mut message = buf.split_to(header.total_len());
    let body = message.split_off(HEADER_LEN).freeze();
    Ok(Some((header.tag, body)))
}

/// Reads until one whole message is at the front of `buf` and splits it off; `Ok(None)` when
/// the stream ends cleanly between messages. Bytes read past that message stay in `buf`.
pub async fn read_message<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<Option<(u8, Bytes)>> {
    loop {
        if let Some(message) = take_message(buf, limit)? {
            return Ok(Some(message));
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
    }
}

pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(FrameHeader::parse(b"Z\0\0\0").unwrap(), None);
        let header = FrameHeader::parse(b"Z\0\0\0\x05I").unwrap().unwrap();
        assert_eq!(header, FrameHeader { tag: b'Z', body_len: 1 });
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        assert!(FrameHeader::parse(b"Q\0\0\0\x03").is_err());
        assert!(FrameHeader::parse(b"Q\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn take_message_waits_for_the_whole_body() {
        let mut buf = BytesMut::from(&b"S\0\0\0\x08ab"[..]);
        assert!(take_message(&mut buf, 100).unwrap().is_none());
        buf.extend_from_slice(b"\0\0Z");
        let (tag, body) = take_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!((tag, &body[..]), (b'S', &b"ab\0\0"[..]));
        assert_eq!(&buf[..], b"Z");
    }

    #[tokio::test]
    async fn read_message_reads_across_short_reads_and_tells_a_clean_end_from_a_cut() {
        // Two reads: the header arrives cut in the middle.
        let mut stream = (&b"Z\0\0"[..]).chain(&b"\0\x05IQ"[..]);
        let mut buf = BytesMut::new();
        let (tag, body) = read_message(&mut stream, &mut buf, 100).await.unwrap().unwrap();
        assert_eq!((tag, &body[..]), (b'Z', &b"I"[..]));
        assert_eq!(&buf[..], b"Q", "bytes past the message are kept");
        assert_eq!(read_message(&mut stream, &mut buf, 100).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(read_message(&mut &b""[..], &mut BytesMut::new(), 100).await.unwrap().is_none());
    }

    #[test]
    fn take_message_enforces_its_limit() {
        let mut buf = BytesMut::from(&b"E\0\0\x10\0"[..]);
        assert!(take_message(&mut buf, 1024).is_err());
    }
}
