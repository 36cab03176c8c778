//! The per-connection buffer of bytes the kernel has not taken yet.
//!
//! Teaches: partial sends. `write` on a non-blocking socket takes what fits in the kernel's
//! send buffer and returns how much that was; the rest is ours to keep and send when the
//! socket reports writable again. Only those unsent bytes are kept per connection, so an idle
//! connection owns no buffer at all.

use std::io;

/// Buffers above this capacity are freed once drained, so one burst does not pin memory on
/// a connection that then goes quiet; smaller ones are kept to avoid an allocation per
/// message in steady state.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Unsent bytes of one connection, in order.
#[derive(Debug, Default)]
pub(crate) struct SendBuf {
    buf: Vec<u8>,
    /// Bytes before `pos` were sent already; compacting lazily avoids a memmove per write.
    pos: usize,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Flush {
    /// Everything was sent.
    Done,
    /// The kernel stopped taking bytes (`WouldBlock`); wait for writability.
    Blocked,
}

impl SendBuf {
    /// An empty buffer; allocates nothing until bytes are pushed.
    pub(crate) fn new() -> SendBuf {
        SendBuf::default()
    }

    /// Bytes waiting to be sent.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The unsent bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Appends bytes after those already waiting.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.vec_for_append().extend_from_slice(data);
    }

    /// Gives the writer a place to append directly (used by TLS to write records in place).
    pub(crate) fn vec_for_append(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // More than half is dead space: move the live tail down before growing.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        &mut self.buf
    }

    /// Marks `n` bytes from the front as sent.
    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n.min(self.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }

    /// Writes as much as `write` takes, until empty or `WouldBlock`. Returns the bytes sent
    /// and whether everything went. Other errors are returned for the caller to close on.
    /// (The loop itself offers a connection's bytes with [`write_until_blocked`] and
    /// consumes what went through the connection's state machine.)
    #[cfg(test)]
    pub(crate) fn flush_with(
        &mut self,
        write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<(usize, Flush)> {
        let (sent, result) = write_until_blocked(self.as_slice(), write);
        self.consume(sent);
        result.map(|flush| (sent, flush))
    }

    /// Bytes of memory held (for tests and memory accounting).
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Uses `buf` (a spare from a [`BufPool`]) for the bytes to come; only while empty
    /// and without a buffer of its own.
    pub(crate) fn adopt(&mut self, buf: Vec<u8>) {
        if self.buf.capacity() == 0 {
            self.buf = buf;
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Gives up the (empty) buffer, for a [`BufPool`]; nothing if bytes are still owed.
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        if self.is_empty() {
            self.pos = 0;
            std::mem::take(&mut self.buf)
        } else {
            Vec::new()
        }
    }
}

/// Spare output buffers, shared by all the connections of a loop.
///
/// A connection needs a buffer only while it owes bytes: from the moment a reply is queued
/// until the kernel has taken it, usually within the same turn. Lending buffers from one
/// pool gives both things a server wants: no allocation per message in steady state, and
/// no memory held by a connection between messages (10,000 quiet connections hold none),
/// however large the replies they once sent. What the pool itself keeps is bounded.
///
/// The pool also holds the turn's shared output ([`Shared`]): bytes that many connections
/// are sent in the same turn, kept once.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    spare: Vec<Vec<u8>>,
    /// Capacity held in `spare`.
    bytes: usize,
    pub(crate) shared: Shared,
}

impl BufPool {
    /// Capacity the pool keeps at most; buffers given back beyond it are freed.
    pub(crate) const KEEP_BYTES: usize = 4 << 20;

    /// Capacity held for reuse.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// A spare buffer (empty), or a new one with no capacity yet.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        match self.spare.pop() {
            Some(v) => {
                self.bytes -= v.capacity();
                v
            }
            None => Vec::new(),
        }
    }

    /// Takes a buffer back for reuse, unless it is too large or the pool is full.
    pub(crate) fn give(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > KEEP_CAPACITY || self.bytes + cap > Self::KEEP_BYTES {
            return;
        }
        buf.clear();
        self.bytes += cap;
        self.spare.push(buf);
    }
}

/// Output that many connections are sent during one loop turn, kept once.
///
/// Fan-out — one message to each of 100 subscribers — would otherwise copy the message
/// into 100 send buffers, only for the kernel to copy it again from each: 100 buffers of
/// tens of KiB each push each other out of the CPU's caches, and the copies, not the system
/// calls, become the cost. Here a message is appended once; a connection whose output
/// this turn is all shared holds a [`Span`] of it (two numbers in place of a buffer),
/// successive messages to it extend the span when they follow each other here, and the
/// end of the turn writes the span straight from this buffer, as a server that shares
/// one reference-counted chunk between its subscribers would. Sending the same bytes to
/// several connections in a row is recognised by comparing them with the last piece
/// appended (a comparison reads what a copy would write, and stays in cache).
///
/// A span is only valid until the end of the turn (or until this buffer is full, which
/// brings the end of the turn's writing forward): then every connection holding one has
/// been written, and what the kernel did not take has been copied to the connection's own
/// buffer ([`Shared::reset`] runs after that).
#[derive(Debug)]
pub(crate) struct Shared {
    bytes: Vec<u8>,
    /// The last piece appended, which the next send may repeat.
    last: Span,
    /// Accepting pieces: not while the end of the turn writes the spans out.
    open: bool,
    /// Sends this turn that found their bytes already here: whether sharing pays.
    repeats: u32,
}

/// A range of [`Shared`]'s bytes. Offsets are `u32` so that a span fits beside a
/// connection's flags: the shared buffer never exceeds [`Shared::LIMIT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub(crate) fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// `a == b`, without a call to `memcmp` for small pieces: the fan-out case compares one
/// short message per receiver, and a branch-free compare of a few machine words is
/// several times cheaper than the library call.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 128 {
        return a == b;
    }
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            bytes: Vec::new(),
            last: Span::default(),
            open: true,
            repeats: 0,
        }
    }
}

impl Shared {
    /// Bytes kept at most (and the capacity kept between turns): small enough to stay in
    /// the CPU's cache. When a send finds no room, the driver writes the spans out at
    /// once and starts again ([`Shared::needs_room`]); a piece larger than this is copied
    /// into the connection's own buffer as without sharing.
    pub(crate) const LIMIT: usize = 256 * 1024;

    /// Where `data` is in the shared output for a connection holding `span`: the last
    /// piece again if it holds the same bytes, else a new piece appended — only if the
    /// connection can use it (its span empty, or ending where the piece would start), so
    /// that bytes one connection alone is sent are not kept here and then copied again.
    /// `None` when sharing is closed or full, or the piece would be of no use.
    #[inline]
    pub(crate) fn place(&mut self, data: &[u8], span: Span) -> Option<Span> {
        if !self.open {
            return None;
        }
        if same(self.get(self.last), data) {
            self.repeats += 1;
            return Some(self.last);
        }
        let end = self.bytes.len();
        if end + data.len() > Self::LIMIT || !(span.is_empty() || span.end as usize == end) {
            return None;
        }
        if self.bytes.capacity() == 0 {
            // Once, at the first shared send: growing by doubling would overshoot LIMIT.
            self.bytes.reserve_exact(Self::LIMIT);
        }
        // Fits in u32: LIMIT does.
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.last = Span {
            start,
            end: self.bytes.len() as u32,
        };
        Some(self.last)
    }

    /// Whether this turn's sends have found their bytes here already: the buffer holds
    /// fan-out, and when it is full, writing the spans out early to make room pays. If
    /// not (each connection sent bytes of its own), sharing only moved copies here, and a
    /// full buffer should close sharing for the rest of the turn instead, so that each
    /// connection is still written once per turn.
    pub(crate) fn pays(&self) -> bool {
        self.repeats > 0
    }

    /// Whether placing `data` would find sharing open but no room: then the spans given
    /// out should be written and this buffer reset first (or sharing closed).
    #[inline]
    pub(crate) fn needs_room(&self, data: &[u8]) -> bool {
        self.open
            && self.bytes.len() + data.len() > Self::LIMIT
            && data.len() <= Self::LIMIT
            && !same(self.get(self.last), data)
    }

    #[inline]
    pub(crate) fn get(&self, span: Span) -> &[u8] {
        &self.bytes[span.start as usize..span.end as usize]
    }

    /// The end of the turn is writing the spans out: what is sent meanwhile goes to the
    /// connections' own buffers (it is written next turn, after this buffer is reset).
    pub(crate) fn close(&mut self) {
        self.open = false;
    }

    /// Everything kept this turn.
    #[cfg(test)]
    pub(crate) fn get_all(&self) -> &[u8] {
        &self.bytes
    }

    /// Forgets this turn's bytes once no connection holds a span of them.
    pub(crate) fn reset(&mut self) {
        self.bytes.clear();
        self.last = Span::default();
        self.open = true;
        self.repeats = 0;
    }
}

/// Offers `data` to `write` until all is taken or it would block (a partial send).
/// Returns how much was taken, and the outcome; on error, the bytes after `sent` were not
/// sent. A writer that takes nothing without blocking is an error, not a reason to spin.
pub(crate) fn write_until_blocked(
    data: &[u8],
    mut write: impl FnMut(&[u8]) -> io::Result<usize>,
) -> (usize, io::Result<Flush>) {
    let mut sent = 0;
    while sent < data.len() {
        match write(&data[sent..]) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes");
                return (sent, Err(e));
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (sent, Ok(Flush::Blocked)),
            Err(e) => return (sent, Err(e)),
        }
    }
    (sent, Ok(Flush::Done))
}

#[cfg(test)]
mod tests {
    use super::{Flush, SendBuf, io};

    #[test]
    fn sendbuf_partial_write_keeps_rest_in_order() {
        let mut b = SendBuf::new();
        b.push(b"hello ");
        b.push(b"world");
        let mut out = Vec::new();
        // A "kernel" that takes 4 bytes, then blocks.
        let mut budget = 4;
        let (n, f) = b
            .flush_with(|d| {
                if budget == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let k = d.len().min(budget);
                budget -= k;
                out.extend_from_slice(&d[..k]);
                Ok(k)
            })
            .unwrap();
        assert_eq!((n, f), (4, Flush::Blocked));
        assert_eq!(b.as_slice(), b"o world");
        b.push(b"!");
        let (_, f) = b
            .flush_with(|d| {
                out.extend_from_slice(d);
                Ok(d.len())
            })
            .unwrap();
        assert_eq!(f, Flush::Done);
        assert_eq!(out, b"hello world!");
        assert!(b.is_empty());
    }

    #[test]
    fn sendbuf_frees_large_capacity_when_drained() {
        let mut b = SendBuf::new();
        b.push(&vec![1u8; 1 << 20]);
        b.consume(1 << 20);
        assert_eq!(b.capacity(), 0);
        b.push(&[1u8; 100]);
        b.consume(100);
        assert!(b.capacity() >= 100, "small buffers are kept for reuse");
    }

    #[test]
    fn sendbuf_compacts_instead_of_growing_forever() {
        let mut b = SendBuf::new();
        for _ in 0..1000 {
            b.push(&[7u8; 1000]);
            b.consume(900);
        }
        assert_eq!(b.len(), 100 * 1000);
        assert!(b.capacity() < 400 * 1000, "capacity {}", b.capacity());
    }

    #[test]
    fn sendbuf_reports_write_errors() {
        let mut b = SendBuf::new();
        b.push(b"x");
        let e = b
            .flush_with(|_| Err(io::ErrorKind::ConnectionReset.into()))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(b.len(), 1);
    }
}
