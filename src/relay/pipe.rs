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

/// What becomes of a scanned message. Whatever the scan put in [`Splice::before`] goes out
/// in its place first, whatever the verdict (but [`Verdict::Stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Passed on.
    Forward,
    /// Dropped, body and all.
    Swallow,
    /// Its header and the first `cut` bytes of its body are dropped (the scan wrote their
    /// replacement, with the new length, ahead); the rest is passed on.
    Rewrite { cut: usize },
    /// Left unread for now; the pipe reads nothing more until [`Pipe::scan`] is called again.
    Hold,
    /// Not passed on, and the pipe stops (the client's Terminate).
    Stop,
}

/// Where a scan puts messages of the proxy's own around the one it judges.
#[derive(Debug, Default)]
pub(super) struct Splice {
    /// Sent ahead of the message (or in its place).
    pub(super) before: BytesMut,
    /// Sent right after the message, once its body has passed.
    pub(super) after: BytesMut,
}

/// What a pipe asks about the messages passing through it.
pub(super) trait Scan {
    /// Whether a message of type `tag` is held until its body is at hand (up to
    /// [`MAX_BUFFERED_MESSAGE`] bytes of it) and shown to [`Scan::message`]; all others are
    /// judged by their header and their bodies streamed.
    fn wants_body(&self, tag: u8) -> bool;

    /// Judges one message of `len` body bytes: `body` is there when wanted (cut to
    /// [`MAX_BUFFERED_MESSAGE`]).
    fn message(&mut self, tag: u8, body: Option<&[u8]>, len: usize, splice: &mut Splice) -> Verdict;
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
    /// A message is held back (see [`Verdict::Hold`]).
    held: bool,
    /// Bytes written on so far.
    pub(super) forwarded: u64,
    /// Messages a scan inserts around the one it judged; empty (and unallocated) unless a
    /// hook inserts.
    splice: Splice,
}

impl Pipe {
    /// Takes in bytes already read from this direction's source.
    pub(super) fn preload(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Advances the framing over newly read bytes (and a held message), asking `scan` about
    /// each message.
    pub(super) fn scan(&mut self, scan: &mut impl Scan) -> io::Result<()> {
        self.held = false;
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
                self.splice_after();
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
            let verdict = scan.message(header.tag, body, header.body_len, &mut self.splice);
            if verdict == Verdict::Stop {
                self.stopped = true;
                return Ok(());
            }
            self.splice_before();
            match verdict {
                Verdict::Forward => {
                    self.ready += HEADER_LEN + shown;
                    self.dropping = false;
                }
                Verdict::Swallow => {
                    self.cut(HEADER_LEN + shown);
                    self.dropping = true;
                }
                Verdict::Rewrite { cut } => {
                    debug_assert!(cut <= shown, "only the part of a message shown can be rewritten");
                    self.cut(HEADER_LEN + cut);
                    self.ready += shown - cut;
                    self.dropping = false;
                }
                Verdict::Hold => {
                    self.held = true;
                    return Ok(());
                }
                Verdict::Stop => unreachable!("handled above"),
            }
            self.body_left = header.body_len - shown;
            if self.body_left == 0 {
                self.splice_after();
            }
        }
        Ok(())
    }

    /// Adds `bytes` to the stream after the last message scanned, once its body has passed:
    /// replies of the proxy's own that are due.
    pub(super) fn append(&mut self, bytes: &[u8]) {
        self.splice.after.extend_from_slice(bytes);
        if self.body_left == 0 {
            self.splice_after();
        }
    }

    fn splice_before(&mut self) {
        if !self.splice.before.is_empty() {
            Self::splice_in(&mut self.buf, &mut self.ready, &mut self.splice.before);
        }
    }

    fn splice_after(&mut self) {
        if !self.splice.after.is_empty() {
            Self::splice_in(&mut self.buf, &mut self.ready, &mut self.splice.after);
        }
    }

    /// Moves `insert`'s messages in at the scan position, ready to write.
    fn splice_in(buf: &mut BytesMut, ready: &mut usize, insert: &mut BytesMut) {
        let (at, len, added) = (*ready, buf.len(), insert.len());
        buf.resize(len + added, 0);
        buf.copy_within(at..len, at + added);
        buf[at..at + added].copy_from_slice(insert);
        *ready += added;
        if insert.capacity() > MAX_IDLE_CAPACITY {
            *insert = BytesMut::new();
        } else {
            insert.clear();
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
            if self.held {
                // Nothing more is read until the held message can be judged.
                return Poll::Pending;
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

    /// Drops the buffers if nothing is in them.
    pub(super) fn release_buffer(&mut self) {
        if self.drained() {
            self.buf = BytesMut::new();
        }
        if self.splice.before.is_empty() && self.splice.after.is_empty() {
            self.splice = Splice::default();
        }
    }

    /// A message is held back until the scan is run again.
    pub(super) fn held(&self) -> bool {
        self.held
    }

    /// Nothing half-read, nothing waiting to be written or flushed.
    pub(super) fn drained(&self) -> bool {
        self.buf.is_empty() && self.body_left == 0 && !self.unflushed
    }
}
