//! One direction of the relay: a buffer, and where the message framing stands in it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use crate::protocol::frame::{FrameHeader, HEADER_LEN, MAX_BUFFERED_MESSAGE};

/// Free space below which a read buffer grows before the next read.
const MIN_READ_SPACE: usize = 4 * 1024;
/// How much a read buffer grows by.
const READ_CHUNK: usize = 16 * 1024;
/// A drained buffer bigger than this is dropped so one burst does not pin memory for the
/// rest of a session.
pub(super) const MAX_IDLE_CAPACITY: usize = 64 * 1024;

/// What becomes of a scanned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Passed on, after whatever the scan put in the insert buffer.
    Forward,
    /// Dropped, body and all.
    Swallow,
    /// Not passed on, and the pipe stops (the client's Terminate).
    Stop,
}

/// What a pipe asks about the messages passing through it.
pub(super) trait Scan {
    /// Whether a message of type `tag` is held until its body is at hand (up to
    /// [`MAX_BUFFERED_MESSAGE`] bytes of it) and shown to [`Scan::message`]; all others are
    /// judged by their header and their bodies streamed.
    fn wants_body(&self, tag: u8) -> bool;

    /// Judges one message: `body` is there when wanted. Bytes appended to `insert` are sent
    /// ahead of a forwarded message.
    fn message(&mut self, tag: u8, body: Option<&[u8]>, insert: &mut BytesMut) -> Verdict;
}

/// How one direction stopped.
#[derive(Debug)]
pub(super) enum PumpEnd {
    Eof,
    Stopped,
}

/// An error in one direction, by where it happened.
#[derive(Debug)]
pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
    Protocol(io::Error),
}

/// One direction's buffer and framing position.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    pub(super) buf: BytesMut,
    /// Bytes at the front of `buf` that are scanned and may be written on.
    ready: usize,
    /// Body bytes of the current message still to come; they pass unscanned.
    body_left: usize,
    /// The rest of the current message is dropped rather than written on.
    dropping: bool,
    unflushed: bool,
    stopped: bool,
    /// Bytes written on so far.
    pub(super) forwarded: u64,
    /// Messages a scan inserts ahead of the one it judged; empty (and unallocated) unless
    /// a hook inserts.
    insert: BytesMut,
}

impl Pipe {
    /// Takes in bytes already read from this direction's source.
    pub(super) fn preload(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Advances the framing over newly read bytes, asking `scan` about each message.
    pub(super) fn scan(&mut self, scan: &mut impl Scan) -> io::Result<()> {
        while !self.stopped {
            if self.body_left > 0 {
                let take = self.body_left.min(self.buf.len() - self.ready);
                if self.dropping {
                    self.cut(take);
                } else {
                    self.ready += take;
                }
                self.body_left -= take;
                if self.body_left > 0 {
                    return Ok(());
                }
            }
            let Some(header) = FrameHeader::parse(&self.buf[self.ready..])? else {
                return Ok(());
            };
            let wanted = scan.wants_body(header.tag);
            let shown = if wanted { header.body_len.min(MAX_BUFFERED_MESSAGE) } else { 0 };
            let end = self.ready + HEADER_LEN + shown;
            if self.buf.len() < end {
                return Ok(());
            }
            let body = wanted.then(|| &self.buf[self.ready + HEADER_LEN..end]);
            match scan.message(header.tag, body, &mut self.insert) {
                Verdict::Forward => {
                    if !self.insert.is_empty() {
                        self.splice_insert();
                    }
                    self.ready += HEADER_LEN + shown;
                    self.dropping = false;
                }
                Verdict::Swallow => {
                    self.cut(HEADER_LEN + shown);
                    self.dropping = true;
                }
                Verdict::Stop => {
                    self.stopped = true;
                    return Ok(());
                }
            }
            self.body_left = header.body_len - shown;
        }
        Ok(())
    }

    /// Moves the insert buffer's messages in at the scan position, ready to write.
    fn splice_insert(&mut self) {
        let (at, len, added) = (self.ready, self.buf.len(), self.insert.len());
        self.buf.resize(len + added, 0);
        self.buf.copy_within(at..len, at + added);
        self.buf[at..at + added].copy_from_slice(&self.insert);
        self.ready += added;
        if self.insert.capacity() > MAX_IDLE_CAPACITY {
            self.insert = BytesMut::new();
        } else {
            self.insert.clear();
        }
    }

    /// Removes `len` bytes at the scan position.
    fn cut(&mut self, len: usize) {
        if self.ready == 0 {
            self.buf.advance(len);
        } else {
            let total = self.buf.len();
            self.buf.copy_within(self.ready + len..total, self.ready);
            self.buf.truncate(total - len);
        }
    }

    /// Writes out what is ready, then reads and scans more, until the reader ends, the scan
    /// says stop, or either side would block.
    pub(super) fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        mut scan: impl FnMut(&mut Pipe) -> io::Result<()>,
    ) -> Poll<Result<PumpEnd, PumpError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.ready > 0 {
                let written =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[..self.ready])).map_err(PumpError::Write)?;
                if written == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.buf.advance(written);
                self.ready -= written;
                self.forwarded += written as u64;
                self.unflushed = true;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(PumpError::Write)?;
                self.unflushed = false;
                if self.buf.is_empty() && self.buf.capacity() > MAX_IDLE_CAPACITY {
                    self.buf = BytesMut::new();
                }
            }
            if self.stopped {
                return Poll::Ready(Ok(PumpEnd::Stopped));
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ_SPACE {
                self.buf.reserve(READ_CHUNK);
            }
            let read = ready!(poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf)).map_err(PumpError::Read)?;
            if read == 0 {
                return Poll::Ready(Ok(PumpEnd::Eof));
            }
            scan(self).map_err(PumpError::Protocol)?;
        }
    }

    /// Everything scanned has been written on, and the stream written to stands between two
    /// messages.
    pub(super) fn delivered_to_message_boundary(&self) -> bool {
        self.ready == 0 && self.body_left == 0
    }

    /// Everything read has been scanned and the last message is complete, so the stream read
    /// from stands between two messages.
    pub(super) fn read_to_message_boundary(&self) -> bool {
        self.body_left == 0 && self.buf.len() == self.ready
    }

    /// Nothing half-read, nothing waiting to be written or flushed.
    pub(super) fn drained(&self) -> bool {
        self.buf.is_empty() && self.body_left == 0 && !self.unflushed
    }
}
