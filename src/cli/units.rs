//! Human-friendly quantities on the command line: sizes (`16k`), durations
//! (`250ms`) and rates (`10k`), plus the matching formatters for output.
//!
//! The parsers have the `fn(&str) -> Result<T, String>` shape that clap 4
//! accepts as a `value_parser`, and their errors quote the offending input.
//! Sizes and durations are computed with exact decimal arithmetic rather than
//! through `f64`, so `0.3s` is exactly 300 ms and `1.5k` exactly 1536 bytes.

use std::time::Duration;

/// More fractional digits than this are rejected rather than silently
/// rounded; it also keeps `10^digits` well inside a `u128`.
const MAX_FRAC_DIGITS: usize = 30;

/// A non-negative decimal literal as written: `int.frac`, either part may be
/// empty but not both.
struct Decimal<'a> {
    text: &'a str,
    int: &'a str,
    frac: &'a str,
}

impl Decimal<'_> {
    /// Returns `self * unit` truncated to an integer, and whether the
    /// multiplication was exact (no fractional part was dropped).
    fn scale(&self, unit: u128) -> Result<(u128, bool), &'static str> {
        const TOO_LARGE: &str = "too large";
        let int = self.int.trim_start_matches('0');
        let frac = self.frac.trim_end_matches('0');
        if frac.len() > MAX_FRAC_DIGITS {
            return Err("too many decimal places");
        }
        let mut mantissa: u128 = 0;
        for digit in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or(TOO_LARGE)?;
        }
        // frac.len() <= MAX_FRAC_DIGITS, so neither the cast nor the power overflows.
        let denominator = 10_u128.pow(frac.len() as u32);
        let total = mantissa.checked_mul(unit).ok_or(TOO_LARGE)?;
        Ok((total / denominator, total % denominator == 0))
    }
}

/// Splits a trimmed input into its leading decimal number and the unit suffix
/// (with any spaces between the two removed). `None` when there is no number.
fn split_number(s: &str) -> Option<(Decimal<'_>, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (text, suffix) = s.split_at(end);
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    Some((Decimal { text, int, frac }, suffix.trim_start()))
}

/// Parses a byte count: `64`, `64B`, `16k`, `16KiB`, `1.5M`, `1G`.
///
/// The `k`, `M` and `G` suffixes (case-insensitive, optionally followed by
/// `B` or `iB`) are binary multiples: `1k` is 1024 bytes, including when
/// spelled `kB`. Fractions are accepted only if they come to a whole number
/// of bytes (`1.5k` is fine, `1.5` is not). Zero is accepted; callers that
/// need a positive size check for it themselves.
///
/// # Errors
///
/// Empty, negative, fractional-byte, out-of-`u64` or unknown-suffix input,
/// with a message quoting it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HELP: &str = "expected a number with an optional k, M or G suffix";
    let err = |why: &str| format!("invalid size {s:?}: {why}");
    let t = s.trim();
    if t.starts_with('-') {
        return Err(err("must not be negative"));
    }
    let (number, suffix) = split_number(t).ok_or_else(|| err(HELP))?;
    let unit: u128 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(err(HELP)),
    };
    let (bytes, exact) = number.scale(unit).map_err(err)?;
    if !exact {
        return Err(err("not a whole number of bytes"));
    }
    u64::try_from(bytes).map_err(|_| err("too large"))
}

/// Parses a duration: `10` (seconds), `10s`, `1.5s`, `250ms`, `500us`
/// (or `µs`), `100ns`, `2m` (or `2min`), `1h`.
///
/// Fractions are allowed with any unit; anything below a nanosecond is
/// truncated. Zero is accepted; callers that need a positive duration check
/// for it themselves.
///
/// # Errors
///
/// Empty, negative, non-numeric (`NaN`, `inf`, `1e3`), overflowing or
/// unknown-suffix input, with a message quoting it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "expected a number with an optional ns, us, ms, s, m or h suffix";
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let err = |why: &str| format!("invalid duration {s:?}: {why}");
    let t = s.trim();
    if t.starts_with('-') {
        return Err(err("must not be negative"));
    }
    let (number, suffix) = split_number(t).ok_or_else(|| err(HELP))?;
    let unit_nanos: u128 = match suffix {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        _ => return Err(err(HELP)),
    };
    let (nanos, _) = number.scale(unit_nanos).map_err(err)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| err("too large"))?;
    // The remainder is below 10^9, so it always fits in a u32.
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// Parses a message rate in messages per second: `500`, `2.5k`, `1M`,
/// optionally followed by `/s` (`10k/s`).
///
/// The suffixes are decimal (`10k` is 10 000). The result is finite and
/// strictly positive.
///
/// # Errors
///
/// Empty, zero, negative, non-numeric, infinite or unknown-suffix input, with
/// a message quoting it.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    const HELP: &str =
        "expected a positive number of messages per second with an optional k or M suffix";
    let err = |why: &str| format!("invalid rate {s:?}: {why}");
    let t = s.trim();
    if t.starts_with('-') {
        return Err(err("must be greater than zero"));
    }
    let (number, suffix) = split_number(t).ok_or_else(|| err(HELP))?;
    let suffix = suffix.strip_suffix("/s").unwrap_or(suffix).trim_end();
    let multiplier = match suffix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        _ => return Err(err(HELP)),
    };
    let value = number.text.parse::<f64>().map_err(|_| err(HELP))? * multiplier;
    if !value.is_finite() {
        Err(err("too large"))
    } else if value <= 0.0 {
        Err(err("must be greater than zero"))
    } else {
        Ok(value)
    }
}

/// Decimal (SI) prefixes, in steps of 1000.
const SI_PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];

/// Divides `v` by 1000 until it would print with `decimals` places as less
/// than 1000, returning the scaled value and its prefix. Deciding on the
/// rounded value avoids outputs like "1000.0k" instead of "1.0M".
fn si_scale(mut v: f64, decimals: i32) -> (f64, &'static str) {
    let factor = 10_f64.powi(decimals);
    let last = SI_PREFIXES.len() - 1;
    for (i, prefix) in SI_PREFIXES.iter().enumerate() {
        if i == last || (v.abs() * factor).round() < 1000.0 * factor {
            return (v, prefix);
        }
        v /= 1000.0;
    }
    (v, SI_PREFIXES[last])
}

/// Formats a throughput with decimal units and two decimals, e.g.
/// `"12.34 MB/s"`, `"512.00 B/s"`, `"1.25 GB/s"`. Non-finite input gives `"n/a"`.
pub fn format_bytes_per_sec(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() {
        return "n/a".to_owned();
    }
    let (v, prefix) = si_scale(bytes_per_sec, 2);
    format!("{v:.2} {prefix}B/s")
}

/// Formats a count or per-second figure compactly with a decimal suffix, e.g.
/// `"950"`, `"12.5"`, `"123.4k"`, `"1.2M"`. Non-finite input gives `"n/a"`.
pub fn format_count(n: f64) -> String {
    if !n.is_finite() {
        return "n/a".to_owned();
    }
    let (v, prefix) = si_scale(n, 1);
    if prefix.is_empty() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{prefix}")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Duration, format_bytes_per_sec, format_count, parse_duration, parse_rate, parse_size,
    };

    #[test]
    fn sizes() {
        let cases = [
            ("0", 0),
            ("64", 64),
            ("64B", 64),
            ("64b", 64),
            ("16k", 16 * 1024),
            ("16K", 16 * 1024),
            ("16kB", 16 * 1024),
            ("16KiB", 16 * 1024),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("1G", 1 << 30),
            ("1.5k", 1536),
            ("0.5M", 512 * 1024),
            (" 4 k ", 4096),
            ("16384G", 1 << 44),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn size_errors() {
        for (input, needle) in [
            ("", "expected a number"),
            ("   ", "expected a number"),
            ("12q", "expected a number with an optional k, M or G suffix"),
            ("k", "expected a number"),
            ("1.2.3", "expected a number"),
            ("16KiBB", "expected a number"),
            ("-5", "must not be negative"),
            ("1.5", "not a whole number of bytes"),
            ("0.1k", "not a whole number of bytes"),
            ("18446744073709551616", "too large"),
            ("17179869184G", "too large"),
            ("999999999999999999999999999999999999999999", "too large"),
        ] {
            let e = parse_size(input).unwrap_err();
            assert!(e.contains(needle), "{input}: {e}");
            assert!(e.contains(&format!("{input:?}")), "{input}: {e}");
        }
        assert_eq!(
            parse_size("12q").unwrap_err(),
            r#"invalid size "12q": expected a number with an optional k, M or G suffix"#
        );
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn durations() {
        let cases = [
            ("10", Duration::from_secs(10)),
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.3s", Duration::from_millis(300)),
            ("250ms", Duration::from_millis(250)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.5h", Duration::from_secs(1800)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("1.5us", Duration::from_nanos(1500)),
            ("100ns", Duration::from_nanos(100)),
            ("0.5ns", Duration::ZERO),
            (".25s", Duration::from_millis(250)),
            ("0", Duration::ZERO),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn duration_errors() {
        for (input, needle) in [
            ("", "expected a number"),
            ("-1s", "must not be negative"),
            ("NaN", "expected a number"),
            ("nans", "expected a number"),
            ("inf", "expected a number"),
            ("10x", "expected a number"),
            ("10S", "expected a number"),
            ("1e3", "expected a number"),
            ("99999999999999999999999h", "too large"),
        ] {
            let e = parse_duration(input).unwrap_err();
            assert!(e.starts_with("invalid duration "), "{input}: {e}");
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn rates() {
        let cases = [
            ("1", 1.0),
            ("0.5", 0.5),
            ("10k", 10_000.0),
            ("2.5K", 2_500.0),
            ("1M", 1_000_000.0),
            ("10k/s", 10_000.0),
            ("300/s", 300.0),
        ];
        for (input, want) in cases {
            assert_eq!(parse_rate(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rate_errors() {
        for (input, needle) in [
            ("", "expected a positive number"),
            ("0", "greater than zero"),
            ("0.0k", "greater than zero"),
            ("-5", "greater than zero"),
            ("NaN", "expected a positive number"),
            ("inf", "expected a positive number"),
            ("10G", "expected a positive number"),
            ("10m", "expected a positive number"),
            (&"9".repeat(400), "too large"),
        ] {
            let e = parse_rate(input).unwrap_err();
            assert!(e.starts_with("invalid rate "), "{input}: {e}");
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes_per_sec(12_340_000.0), "12.34 MB/s");
        assert_eq!(format_bytes_per_sec(512.0), "512.00 B/s");
        assert_eq!(format_bytes_per_sec(0.0), "0.00 B/s");
        assert_eq!(format_bytes_per_sec(1_250_000_000.0), "1.25 GB/s");
        assert_eq!(format_bytes_per_sec(999_999.0), "1.00 MB/s");
        assert_eq!(format_bytes_per_sec(f64::NAN), "n/a");

        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(950.0), "950");
        assert_eq!(format_count(12.54), "12.5");
        assert_eq!(format_count(123_400.0), "123.4k");
        assert_eq!(format_count(1_234_567.0), "1.2M");
        assert_eq!(format_count(999_960.0), "1.0M");
        assert_eq!(format_count(999.96), "1.0k");
        assert_eq!(format_count(f64::INFINITY), "n/a");
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config(256))]

        /// Any text: a clear answer, never a panic; errors quote the input.
        #[test]
        fn units_fuzz_never_panic(input in ".{0,30}") {
            for r in [
                parse_size(&input).err(),
                parse_duration(&input).err(),
                parse_rate(&input).err(),
            ]
            .into_iter()
            .flatten()
            {
                proptest::prop_assert!(r.contains(&format!("{input:?}")), "{r}");
            }
        }

        #[test]
        fn units_fuzz_sizes_round_trip(n in 0u64..(1 << 40)) {
            proptest::prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            proptest::prop_assert_eq!(parse_size(&format!("{n}k")), Ok(n << 10));
            proptest::prop_assert_eq!(parse_size(&format!("{n} KiB")), Ok(n << 10));
        }

        #[test]
        fn units_fuzz_durations_round_trip(ms in 0u64..(1 << 40)) {
            proptest::prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
            let text = format!("{}.{:03}s", ms / 1000, ms % 1000);
            proptest::prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(ms)));
        }
    }
}
