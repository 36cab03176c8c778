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

/// Header bytes carried by every message: the sequence number mixed with the connection key.
pub(super) const HEADER: usize = 8;
/// Number of different body offsets into the template.
pub(super) const SPREAD: usize = 4096;

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
}

impl<'a> Pattern<'a> {
    pub(super) fn header_len(&self) -> usize {
        self.size.min(HEADER)
    }

    pub(super) fn header(key: u64, seq: u64) -> [u8; HEADER] {
        (key ^ seq).to_le_bytes()
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

    /// Whether `got` equals bytes `at..at + got.len()` of message `seq`; the caller keeps
    /// `at + got.len() <= size`.
    pub(super) fn matches(&self, key: u64, seq: u64, at: usize, got: &[u8]) -> bool {
        let hl = self.header_len();
        let (mut at, mut got) = (at, got);
        if at < hl {
            let h = Self::header(key, seq);
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
        buf[..hl].copy_from_slice(&Self::header(key, seq)[..hl]);
        buf[hl..].copy_from_slice(self.body(key, seq));
    }
}

#[cfg(test)]
mod tests {
    use super::{Pattern, SPREAD, connection_key, random_template};

    #[test]
    fn pattern_differs_per_connection_and_message_and_checks_pieces() {
        let template = random_template(SPREAD + 100, 7);
        let p = Pattern {
            template: &template,
            size: 100,
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
        };
        let mut c = vec![0; 3];
        short.fill(9, 1, &mut c);
        assert_eq!(c[..], Pattern::header(9, 1)[..3]);
        assert!(short.matches(9, 1, 1, &c[1..]));
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
