//! Message sizes: one (`--size 64`), uniform in a range (`--size 64..16k`), or a weighted
//! mix (`--size 64:90,1k:9,64k:1`: 90% of 64 bytes, 9% of 1 KiB, 1% of 64 KiB).
//!
//! A message's size is a function of its connection key and sequence number, so the
//! receiving side knows how long the echo it waits for is without any length on the wire,
//! and every byte is still checked.

use std::fmt;

use super::pattern::mix64;
use crate::cli::units::parse_size;

/// The most entries a mix may have.
const MAX_ENTRIES: usize = 64;

/// How big messages are.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Sizes {
    Fixed(usize),
    /// Each size from `lo` to `hi` (both included) equally likely.
    Uniform {
        lo: usize,
        hi: usize,
    },
    /// Sizes with weights; `total` is their sum.
    Mix {
        entries: Vec<(usize, u32)>,
        total: u64,
    },
}

impl Sizes {
    /// The size of message `seq` of the connection with key `key`.
    pub(super) fn of(&self, key: u64, seq: u64) -> usize {
        match self {
            Sizes::Fixed(n) => *n,
            Sizes::Uniform { lo, hi } => {
                let span = (hi - lo + 1) as u64;
                lo + (draw(key, seq) % span) as usize
            }
            Sizes::Mix { entries, total } => {
                let mut pick = draw(key, seq) % total;
                for &(size, weight) in entries {
                    if pick < u64::from(weight) {
                        return size;
                    }
                    pick -= u64::from(weight);
                }
                // Not reached: the weights add up to `total`.
                entries.last().map_or(1, |e| e.0)
            }
        }
    }

    /// The smallest size a message can have.
    pub(super) fn min(&self) -> usize {
        match self {
            Sizes::Fixed(n) => *n,
            Sizes::Uniform { lo, .. } => *lo,
            Sizes::Mix { entries, .. } => entries.iter().map(|e| e.0).min().unwrap_or(1),
        }
    }

    /// The largest: buffers and memory bounds are sized for it.
    pub(super) fn max(&self) -> usize {
        match self {
            Sizes::Fixed(n) => *n,
            Sizes::Uniform { hi, .. } => *hi,
            Sizes::Mix { entries, .. } => entries.iter().map(|e| e.0).max().unwrap_or(1),
        }
    }

    /// The mean size.
    pub(super) fn mean(&self) -> f64 {
        match self {
            Sizes::Fixed(n) => *n as f64,
            Sizes::Uniform { lo, hi } => (*lo + *hi) as f64 / 2.0,
            Sizes::Mix { entries, total } => {
                let sum: f64 = entries.iter().map(|&(s, w)| s as f64 * f64::from(w)).sum();
                sum / *total as f64
            }
        }
    }

    pub(super) fn is_fixed(&self) -> bool {
        matches!(self, Sizes::Fixed(_))
    }
}

/// A size drawn for message `seq`: mixed apart from the body's offset, which uses the
/// same inputs.
fn draw(key: u64, seq: u64) -> u64 {
    mix64(key ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_5a5a)
}

impl fmt::Display for Sizes {
    /// `64`, `64..16384`, `64:90,1024:9,65536:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sizes::Fixed(n) => write!(f, "{n}"),
            Sizes::Uniform { lo, hi } => write!(f, "{lo}..{hi}"),
            Sizes::Mix { entries, .. } => {
                let parts: Vec<String> = entries.iter().map(|(s, w)| format!("{s}:{w}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Parses `--size`: `64`, `64..16k`, `64:90,1k:9,64k:1`.
pub(super) fn parse_sizes(s: &str) -> Result<Sizes, String> {
    let bad = |why: String| {
        format!("invalid --size {s:?}: {why} (expected 64, 64..16k, or 64:90,1k:9,64k:1)")
    };
    let one = |t: &str| -> Result<usize, String> {
        let n = parse_size(t).map_err(&bad)?;
        usize::try_from(n).map_err(|_| bad(format!("{t} is too large")))
    };
    if let Some((lo, hi)) = s.split_once("..") {
        let (lo, hi) = (one(lo)?, one(hi)?);
        if lo > hi {
            return Err(bad(format!("the range runs down ({lo} > {hi})")));
        }
        return Ok(if lo == hi {
            Sizes::Fixed(lo)
        } else {
            Sizes::Uniform { lo, hi }
        });
    }
    if !s.contains(':') {
        return one(s).map(Sizes::Fixed);
    }
    let mut entries = Vec::new();
    for part in s.split(',') {
        let (size, weight) = part
            .split_once(':')
            .ok_or_else(|| bad(format!("{part:?} is not SIZE:WEIGHT")))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| bad(format!("weight {weight:?} is not a whole number")))?;
        if weight == 0 {
            return Err(bad(format!("{part:?} has a weight of zero")));
        }
        entries.push((one(size)?, weight));
    }
    if entries.len() > MAX_ENTRIES {
        return Err(bad(format!("more than {MAX_ENTRIES} sizes")));
    }
    let total = entries.iter().map(|e| u64::from(e.1)).sum();
    Ok(Sizes::Mix { entries, total })
}

#[cfg(test)]
mod tests {
    use super::{Sizes, parse_sizes};

    #[test]
    fn parses_one_range_and_mix() {
        assert_eq!(parse_sizes("64"), Ok(Sizes::Fixed(64)));
        assert_eq!(parse_sizes("1k..1k"), Ok(Sizes::Fixed(1024)));
        assert_eq!(
            parse_sizes("64..16k"),
            Ok(Sizes::Uniform { lo: 64, hi: 16384 })
        );
        let mix = parse_sizes("64:90,1k:9,64k:1").unwrap();
        assert_eq!((mix.min(), mix.max()), (64, 65536));
        assert!((mix.mean() - (64.0 * 90.0 + 1024.0 * 9.0 + 65536.0) / 100.0).abs() < 1e-9);
        for bad in ["", "16k..64", "64:0", "64:x", "a..b", "64:1,", "-1"] {
            assert!(parse_sizes(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mix = parse_sizes("64:90,1000:9,64000:1").unwrap();
        let mut counts = [0u32; 3];
        for seq in 0..100_000 {
            match mix.of(7, seq) {
                64 => counts[0] += 1,
                1000 => counts[1] += 1,
                64000 => counts[2] += 1,
                other => panic!("drew {other}"),
            }
        }
        assert!((88_500..91_500).contains(&counts[0]), "{counts:?}");
        assert!((8_300..9_700).contains(&counts[1]), "{counts:?}");
        assert!((800..1_200).contains(&counts[2]), "{counts:?}");
        let range = parse_sizes("10..20").unwrap();
        let drawn: Vec<usize> = (0..10_000).map(|seq| range.of(3, seq)).collect();
        assert!(drawn.iter().all(|n| (10..=20).contains(n)));
        assert!(drawn.contains(&10) && drawn.contains(&20));
        // The same message always has the same size: sender and checker agree.
        assert_eq!(range.of(3, 42), range.of(3, 42));
    }
}
