//! The payload of every message, and how an echo is checked against it.
//!
//! Message `seq` of the connection with key `k` is 8 header bytes, `k ^ seq` little-endian,
//! then a slice of the thread's random template at an offset mixed from `k` and `seq`
//! (messages shorter than 8 bytes carry a prefix of the header). How long message `seq` is
//! comes from `--size` (`sizes`), drawn from the key and `seq` too, so the checker knows
//! the length of the echo it waits for without any length on the wire. Keys are unique across
//! the run — thread, serial and `--segment` index are mixed into them — so no two
//! connections, and no two generators of one run, send the same bytes. Sending is two
//! `Ctx::send` calls from the template, with no per-message allocation; checking is a slice
//! comparison at the known stream offset, so echoes that arrive in pieces are fine.
//!
//! With `--sockperf` ([`Payload::Sockperf`]) the first 14 bytes are a `sockperf server`'s
//! header instead (sockperf's `src/message.h`, all fields big-endian): its sequence number
//! field holds the same 8 bytes as above, then flags CLIENT|PONG, then the message's
//! length. The server answers only messages with both flags, framing a TCP stream (and,
//! in sockperf 3.7, each datagram too) by that length, and sends the same bytes back with
//! CLIENT cleared: that is the echo checked. It treats the sequence number as opaque
//! (converted to host order and back, only read for `sockperf server -g`'s gap report),
//! so [`Pattern::seq_of`] still reads it as ours.

/// Header bytes carried by every message: the sequence number mixed with the connection key.
pub(super) const HEADER: usize = 8;
/// Number of different body offsets into the template.
pub(super) const SPREAD: usize = 4096;
/// Length of sockperf's header (`MsgHeader::EFFECTIVE_SIZE`: u64 sequence number, u16
/// flags, u32 length, packed).
pub(super) const SOCKPERF_HEADER: usize = 14;
/// sockperf's flag for a message from a client; its server ignores messages without it,
/// and clears it in the reply.
const SOCKPERF_CLIENT: u16 = 1;
/// sockperf's flag asking for a reply ("pong request").
const SOCKPERF_PONG: u16 = 2;

/// What each message starts with (`--sockperf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Payload {
    /// Our own 8-byte header; the echo is the message unchanged.
    Echoloop,
    /// sockperf's 14-byte header, for a `sockperf server`; the echo has CLIENT cleared.
    Sockperf,
}

impl Payload {
    /// The name the report gives it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Payload::Echoloop => "echoloop",
            Payload::Sockperf => "sockperf",
        }
    }

    /// Header bytes of a message long enough to hold them all.
    pub(super) fn header_len(self) -> usize {
        match self {
            Payload::Echoloop => HEADER,
            Payload::Sockperf => SOCKPERF_HEADER,
        }
    }
}

/// The splitmix64 finaliser: a cheap bijective mix, so distinct inputs stay distinct.
pub(super) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A connection key no other connection of the run has: segment, thread and serial in
/// separate bit fields (12, 12 and 40 bits), mixed bijectively.
pub(super) fn connection_key(segment: u32, thread: usize, serial: u64) -> u64 {
    let segment = u64::from(segment) & 0xfff;
    let thread = thread as u64 & 0xfff;
    mix64((segment << 52) | (thread << 40) | (serial & ((1 << 40) - 1)))
}

/// Pseudo-random bytes (xorshift64*), enough to make any misplaced byte visible.
pub(super) fn random_template(len: usize, seed: u64) -> Box<[u8]> {
    let mut x = mix64(seed) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = word.len().min(len - out.len());
        out.extend_from_slice(&word[..n]);
    }
    out.into_boxed_slice()
}

/// The payload of every message: see the module docs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pattern<'a> {
    pub(super) template: &'a [u8],
    pub(super) size: usize,
    pub(super) payload: Payload,
}

/// A message's header bytes, room for the longest; the message holds the first
/// [`Pattern::header_len`] of them.
pub(super) type Header = [u8; SOCKPERF_HEADER];

impl<'a> Pattern<'a> {
    pub(super) fn header_len(&self) -> usize {
        self.size.min(self.payload.header_len())
    }

    /// The header of message `seq` as sent.
    pub(super) fn header(&self, key: u64, seq: u64) -> Header {
        self.header_with(key, seq, SOCKPERF_CLIENT | SOCKPERF_PONG)
    }

    /// The header its echo must carry: the same, but for sockperf's reply flags.
    fn echo_header(&self, key: u64, seq: u64) -> Header {
        self.header_with(key, seq, SOCKPERF_PONG)
    }

    /// The header with sockperf's `flags` (not used by our own payload).
    fn header_with(&self, key: u64, seq: u64, flags: u16) -> Header {
        let mut h = [0; SOCKPERF_HEADER];
        h[..HEADER].copy_from_slice(&(key ^ seq).to_le_bytes());
        if self.payload == Payload::Sockperf {
            h[HEADER..HEADER + 2].copy_from_slice(&flags.to_be_bytes());
            // Settings keep sockperf messages within what its server accepts (1 MiB), so
            // the size fits its u32 field.
            h[HEADER + 2..].copy_from_slice(&(self.size as u32).to_be_bytes());
        }
        h
    }

    /// The sequence number a datagram's header claims (`data` holds at least 8 bytes).
    pub(super) fn seq_of(key: u64, data: &[u8]) -> Option<u64> {
        let h: [u8; HEADER] = data.get(..HEADER)?.try_into().ok()?;
        Some(u64::from_le_bytes(h) ^ key)
    }

    /// The bytes after the header; the offset depends on both key and sequence number, so
    /// checking an echo against the wrong message fails.
    pub(super) fn body(&self, key: u64, seq: u64) -> &'a [u8] {
        let start = (mix64(key.wrapping_add(seq.rotate_left(32))) % SPREAD as u64) as usize;
        &self.template[start..start + self.size - self.header_len()]
    }

    /// Whether `got` equals bytes `at..at + got.len()` of the echo of message `seq` (the
    /// message itself, or with sockperf's reply flags); the caller keeps
    /// `at + got.len() <= size`.
    pub(super) fn matches(&self, key: u64, seq: u64, at: usize, got: &[u8]) -> bool {
        let hl = self.header_len();
        let (mut at, mut got) = (at, got);
        if at < hl {
            let h = self.echo_header(key, seq);
            let n = (hl - at).min(got.len());
            if got[..n] != h[at..at + n] {
                return false;
            }
            at += n;
            got = &got[n..];
        }
        if got.is_empty() {
            return true;
        }
        let body = self.body(key, seq);
        body.get(at - hl..at - hl + got.len()) == Some(got)
    }

    /// Writes message `seq` into `buf` (exactly `size` bytes long).
    pub(super) fn fill(&self, key: u64, seq: u64, buf: &mut [u8]) {
        let hl = self.header_len();
        buf[..hl].copy_from_slice(&self.header(key, seq)[..hl]);
        buf[hl..].copy_from_slice(self.body(key, seq));
    }
}

#[cfg(test)]
mod tests {
    use super::{Pattern, Payload, SOCKPERF_HEADER, SPREAD, connection_key, random_template};

    #[test]
    fn pattern_differs_per_connection_and_message_and_checks_pieces() {
        let template = random_template(SPREAD + 100, 7);
        let p = Pattern {
            template: &template,
            size: 100,
            payload: Payload::Echoloop,
        };
        let mut a = vec![0; 100];
        let mut b = vec![0; 100];
        p.fill(1, 5, &mut a);
        p.fill(1, 6, &mut b);
        assert_ne!(a, b);
        p.fill(2, 5, &mut b);
        assert_ne!(a, b);
        // Any split of the message checks out; any flipped byte does not.
        for cut in 0..100 {
            assert!(p.matches(1, 5, 0, &a[..cut]));
            assert!(p.matches(1, 5, cut, &a[cut..]));
            let mut bad = a.clone();
            bad[cut] ^= 0x20;
            assert!(!p.matches(1, 5, 0, &bad), "flip at {cut}");
        }
        assert!(!p.matches(1, 6, 0, &a));
        assert_eq!(Pattern::seq_of(1, &a), Some(5));
        // Messages shorter than the header carry a prefix of it.
        let short = Pattern {
            template: &template,
            size: 3,
            payload: Payload::Echoloop,
        };
        let mut c = vec![0; 3];
        short.fill(9, 1, &mut c);
        assert_eq!(c[..], short.header(9, 1)[..3]);
        assert!(short.matches(9, 1, 1, &c[1..]));
    }

    #[test]
    fn sockperf_header_layout_and_its_echo() {
        let template = random_template(SPREAD + 300, 7);
        let p = Pattern {
            template: &template,
            size: 300,
            payload: Payload::Sockperf,
        };
        let (key, seq) = (0x0123_4567_89ab_cdef, 42);
        let mut msg = vec![0; 300];
        p.fill(key, seq, &mut msg);
        // sockperf's MsgHeader: the sequence number field (our 8 bytes, opaque to its
        // server), flags CLIENT|PONG and the whole message's length, big-endian.
        assert_eq!(msg[..8], (key ^ seq).to_le_bytes());
        assert_eq!(msg[8..10], [0, 3]);
        assert_eq!(msg[10..14], 300u32.to_be_bytes());
        assert_eq!(msg[SOCKPERF_HEADER..], *p.body(key, seq));
        assert_eq!(Pattern::seq_of(key, &msg), Some(seq));
        // The message as sent is not its echo: the server clears CLIENT.
        assert!(!p.matches(key, seq, 0, &msg));
        let mut echo = msg.clone();
        echo[9] = 2;
        assert!(p.matches(key, seq, 0, &echo));
        for cut in 0..300 {
            assert!(p.matches(key, seq, 0, &echo[..cut]));
            assert!(p.matches(key, seq, cut, &echo[cut..]));
            let mut bad = echo.clone();
            bad[cut] ^= 0x01;
            assert!(!p.matches(key, seq, 0, &bad), "flip at {cut}");
        }
        // CLIENT left set, seen in a piece that starts inside the header.
        assert!(!p.matches(key, seq, 5, &msg[5..12]));
        // Another message's length in the header does not pass.
        let other = Pattern { size: 299, ..p };
        let mut shorter = vec![0; 299];
        other.fill(key, seq, &mut shorter);
        assert_eq!(shorter[10..14], 299u32.to_be_bytes());
        shorter[9] = 2;
        assert!(!p.matches(key, seq, 0, &shorter));
    }

    #[test]
    fn keys_differ_across_segments_threads_and_serials() {
        let mut seen = std::collections::HashSet::new();
        for segment in 0..4 {
            for thread in 0..4 {
                for serial in 0..64 {
                    assert!(seen.insert(connection_key(segment, thread, serial)));
                }
            }
        }
    }
}
