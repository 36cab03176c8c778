//! The latency histogram of `echoloop bench` and its written forms: [`Recorder`] is what
//! every connection (or the whole run) records into, kept apart from the report because
//! the load threads, the progress line, `--hlog` and `bench merge` all use it.
//!
//! Percentiles cannot be averaged: the p99 of two runs is not the mean of their
//! p99s. So histograms travel whole ([`Recorder::encode`]: HdrHistogram's V2 format,
//! deflate-compressed, base64), and merging adds histograms; [`decode_histogram`] reads
//! them back, checking first what a file may declare.

use std::io::{self, Write};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

/// Smallest trackable latency, in nanoseconds.
const LOWEST_NS: u64 = 1;
/// Largest trackable latency, in nanoseconds (one hour).
const HIGHEST_NS: u64 = 3_600_000_000_000;
/// The same hour in microseconds, the unit of `--hlog` files.
const HIGHEST_US: u64 = HIGHEST_NS / 1000;
/// Significant decimal digits kept by the histogram.
const SIGFIG: u8 = 3;

/// A latency histogram with nanosecond resolution covering 1 ns to one hour at three
/// significant figures; read out in microseconds with their fractions.
///
/// Nanoseconds, not microseconds: a busy-polling round trip on loopback takes 5–8 µs, and
/// whole microseconds would make the instrument's rounding an eighth of what it measures.
///
/// Recording never fails: out-of-range samples are clamped to the range, so a
/// stalled request shows up as a one-hour outlier rather than vanishing.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Creates an empty recorder.
    pub fn new() -> Self {
        // The bounds are constants known to be valid, so this cannot fail.
        let hist = Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGFIG)
            .expect("constant histogram bounds are valid");
        Self { hist }
    }

    /// Records one latency sample, clamped to 1 ns ..= 1 h.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
    }

    /// Adds all of `other`'s samples to this recorder.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms share the same bounds, so `add` cannot run out of
        // range; should that ever change, clamp sample by sample instead of
        // losing them.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of samples recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether no samples have been recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Forgets all samples.
    #[cfg(test)]
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// The latency in µs at quantile `q`, where `q` is a fraction in
    /// `0.0..=1.0` (`0.99` for p99, not `99.0`); out-of-range `q` is clamped.
    /// Returns 0 when empty.
    pub fn percentile_us(&self, q: f64) -> f64 {
        // NaN would otherwise propagate into the histogram's index arithmetic.
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        us(self.hist.value_at_quantile(q))
    }

    /// The 95% confidence interval of the latency at quantile `q`, in µs: the values of
    /// two order statistics chosen so that the true quantile lies between them with 95%
    /// confidence, whatever the distribution. For `n` samples their ranks are
    /// `floor(nq - 1.96 s)` and `ceil(nq + 1.96 s) + 1`, where `s = sqrt(n q (1 - q))`
    /// (the normal approximation of the binomial count of samples below the quantile,
    /// as in Le Boudec, *Performance Evaluation of Computer and Communication Systems*,
    /// §2.2.2). `None` when a rank falls outside the samples: too few stand behind
    /// that percentile to bound it (p99.99 of 10,000 samples rests on about one).
    pub fn percentile_ci95_us(&self, q: f64) -> Option<(f64, f64)> {
        let n = self.len() as f64;
        if n == 0.0 || q.is_nan() || q <= 0.0 || q >= 1.0 {
            return None;
        }
        let spread = 1.96 * (n * q * (1.0 - q)).sqrt();
        let low = (n * q - spread).floor();
        let high = (n * q + spread).ceil() + 1.0;
        if low < 1.0 || high > n {
            return None;
        }
        Some((
            self.value_at_rank(low as u64),
            self.value_at_rank(high as u64),
        ))
    }

    /// The `rank`-th smallest sample (from 1) in µs, up to histogram precision.
    fn value_at_rank(&self, rank: u64) -> f64 {
        let mut seen = 0;
        for v in self.hist.iter_recorded() {
            seen += v.count_at_value();
            if seen >= rank {
                return us(v.value_iterated_to());
            }
        }
        self.max_us()
    }

    /// The distribution as (nines, µs) points, as the `.hgrm` lists it: 5 points per
    /// halving of the distance to 100%. Nines are `-log10(1 - q)`; the last sample
    /// (q = 1, infinitely many nines) sits one sample's worth past the one before.
    pub fn quantile_points(&self) -> Vec<(f64, f64)> {
        let n = self.len() as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let top = -(1.0 / n).log10();
        self.hist
            .iter_quantiles(5)
            .map(|v| {
                let q = v.quantile_iterated_to();
                let x = if q < 1.0 { -(1.0 - q).log10() } else { top };
                (x.min(top), us(v.value_iterated_to()))
            })
            .collect()
    }

    /// The largest recorded latency in µs (up to histogram precision), 0 when empty.
    pub fn max_us(&self) -> f64 {
        us(self.hist.max())
    }

    /// The smallest recorded latency in µs (up to histogram precision), 0 when empty.
    pub fn min_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            us(self.hist.min())
        }
    }

    /// The mean in µs, 0 when empty.
    pub fn mean_us(&self) -> f64 {
        self.hist.mean() / 1000.0
    }

    /// The standard deviation in µs, 0 when empty.
    pub fn stddev_us(&self) -> f64 {
        self.hist.stdev() / 1000.0
    }

    /// The histogram in HdrHistogram's V2 format, deflate-compressed, as base64 text
    /// (values in nanoseconds). Any HdrHistogram implementation decodes it.
    ///
    /// # Errors
    ///
    /// The compressor failed (not expected for an in-memory buffer).
    pub fn encode(&self) -> Result<String, String> {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.hist, &mut bytes)
            .map_err(|e| format!("cannot encode a histogram: {e:?}"))?;
        Ok(BASE64.encode(bytes))
    }

    /// Decodes what [`Recorder::encode`] wrote (values in nanoseconds).
    ///
    /// # Errors
    ///
    /// The text is not base64, or not an HdrHistogram in V2 (or V2 deflate) format.
    pub fn decode(text: &str) -> Result<Recorder, String> {
        let hist = decode_histogram(text)?;
        let mut r = Recorder::new();
        r.add_scaled(&hist, 1);
        Ok(r)
    }

    /// Adds a histogram of microseconds (as `--hlog` files hold) to this one.
    pub fn add_micros(&mut self, hist: &Histogram<u64>) {
        self.add_scaled(hist, 1000);
    }

    /// Adds every sample of `hist`, multiplied by `factor`, clamped to the range.
    fn add_scaled(&mut self, hist: &Histogram<u64>, factor: u64) {
        for v in hist.iter_recorded() {
            let ns = v.value_iterated_to().saturating_mul(factor);
            self.hist
                .saturating_record_n(ns.clamp(LOWEST_NS, HIGHEST_NS), v.count_at_value());
        }
    }

    /// The same samples in whole microseconds, the unit of `--hlog` interval logs (the
    /// unit most HdrHistogram tools expect of latency logs). Sub-microsecond detail is
    /// rounded away there; the JSON report keeps nanoseconds.
    pub fn to_micros(&self) -> Histogram<u64> {
        // The bounds are constants known to be valid, so this cannot fail.
        let mut out = Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG)
            .expect("constant histogram bounds are valid");
        for v in self.hist.iter_recorded() {
            let us = (v.value_iterated_to() as f64 / 1000.0).round() as u64;
            out.saturating_record_n(us.clamp(1, HIGHEST_US), v.count_at_value());
        }
        out
    }

    /// Writes the classic HdrHistogram percentile distribution (`.hgrm`)
    /// text, values in microseconds (with their fractions), as produced by the Java
    /// `outputPercentileDistribution` with 5 ticks per half distance.
    /// Plotters such as HdrHistogram's `plotFiles.html` read this format.
    ///
    /// # Errors
    ///
    /// Whatever `w` returns.
    pub fn write_hgrm(&self, w: &mut dyn Write) -> io::Result<()> {
        let prec = usize::from(SIGFIG);
        writeln!(
            w,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        )?;
        let mut total = 0_u64;
        for v in self.hist.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = us(v.value_iterated_to());
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let inverse = 1.0 / (1.0 - q);
                writeln!(w, "{value:12.prec$} {q:2.12} {total:10} {inverse:14.2}")?;
            } else {
                // 1/(1-1) is infinite, so the last line leaves that column out.
                writeln!(w, "{value:12.prec$} {q:2.12} {total:10}")?;
            }
        }
        let (mean, stdev) = (self.hist.mean() / 1000.0, self.hist.stdev() / 1000.0);
        let max = us(self.hist.max());
        // The histogram keeps unit resolution up to 2 * 10^sigfig, rounded up
        // to a power of two; that is its sub-bucket count.
        let sub_buckets = (2 * 10_u64.pow(u32::from(SIGFIG))).next_power_of_two();
        writeln!(
            w,
            "#[Mean    = {mean:12.prec$}, StdDeviation   = {stdev:12.prec$}]"
        )?;
        writeln!(
            w,
            "#[Max     = {max:12.prec$}, Total count    = {:12}]",
            self.hist.len()
        )?;
        writeln!(
            w,
            "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
            self.hist.buckets()
        )
    }
}

/// Nanoseconds as microseconds with their fraction.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Decodes a base64 V2 (or V2 deflate) histogram, whatever its unit.
///
/// The input comes from files (`bench merge`), so it is checked before the decoder sees
/// it: the decoder allocates whatever length a header declares.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| format!("not a base64 histogram: {e}"))?;
    check_histogram_header(&bytes)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("a damaged histogram ({e:?})"))
}

/// HdrHistogram's V2 cookies, plain and deflate-compressed.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
/// A V2 header: cookie, payload length, offset, digits, low, high, ratio.
const V2_HEADER: usize = 40;
/// The largest payload a histogram of ours can have (every counter of a 1 ns..1 h, three
/// digit histogram at its longest encoding is some 300 KiB); more is not one of ours.
const MAX_PAYLOAD: usize = 4 << 20;

/// Refuses a histogram whose header declares more than it holds, or than any histogram
/// of ours needs; for a compressed one, the header inside is checked too.
fn check_histogram_header(bytes: &[u8]) -> Result<(), String> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(w) as usize)
    };
    let long = |b: &[u8], at: usize| -> Option<u64> {
        let w: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(w))
    };
    let plain = |b: &[u8], whole: bool| -> Result<(), String> {
        let len = word(b, 4).ok_or("a histogram cut short")?;
        if len > MAX_PAYLOAD || (whole && V2_HEADER + len > b.len()) {
            return Err(format!(
                "a damaged histogram (it declares {len} bytes of counts)"
            ));
        }
        // The decoder sizes its counters by the declared range and precision, whatever
        // the payload holds: 1..2^62 at 5 digits is 48 MB per histogram. Ours are at
        // most 1 ns..1 h at 3 digits (in ns or µs); anything wider is not ours.
        let digits = word(b, 12).ok_or("a histogram cut short")?;
        let low = long(b, 16).ok_or("a histogram cut short")?;
        let high = long(b, 24).ok_or("a histogram cut short")?;
        if digits > usize::from(SIGFIG) || low == 0 || high > HIGHEST_NS || high < 2 * low {
            return Err(format!(
                "a histogram that `echoloop bench` does not write (range {low}..{high} at \
                 {digits} significant digits; at most 1..{HIGHEST_NS} at {SIGFIG})"
            ));
        }
        Ok(())
    };
    match word(bytes, 0).map(|c| c as u32) {
        Some(V2_COOKIE) => plain(bytes, true),
        Some(V2_DEFLATE_COOKIE) => {
            let len = word(bytes, 4).ok_or("a histogram cut short")?;
            let compressed = bytes
                .get(8..8 + len)
                .ok_or("a damaged histogram (shorter than it declares)")?;
            let mut inner = [0u8; V2_HEADER];
            let mut z = flate2::read::ZlibDecoder::new(compressed);
            std::io::Read::read_exact(&mut z, &mut inner)
                .map_err(|_| "a damaged histogram (cannot be decompressed)")?;
            if word(&inner, 0).map(|c| c as u32) != Some(V2_COOKIE) {
                return Err("a damaged histogram (not V2 inside)".into());
            }
            plain(&inner, false)
        }
        _ => Err("not an HdrHistogram in V2 format".into()),
    }
}

/// 1 to 1000 µs, one sample each: a distribution whose percentiles are known, for the
/// tests here and the report's.
#[cfg(test)]
pub(super) fn uniform_1_to_1000() -> Recorder {
    let mut r = Recorder::new();
    for us in 1..=1000 {
        r.record(Duration::from_micros(us));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::{Duration, HIGHEST_NS, Recorder, uniform_1_to_1000};
    use crate::cli::bench::report::LatencySummary;

    /// Within the histogram's precision (three significant figures: 0.1%).
    #[track_caller]
    fn near(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= want.abs() * 0.001 + 1e-9,
            "{got} is not within 0.1% of {want}"
        );
    }

    #[test]
    fn percentile_intervals_come_from_order_statistics_or_not_at_all() {
        let r = uniform_1_to_1000();
        // n = 1000, q = 0.5: 1.96 s = 1.96 sqrt(250) = 31.0, ranks floor(469.0) and
        // ceil(531.0) + 1.
        let (low, high) = r.percentile_ci95_us(0.5).expect("the median is bounded");
        near(low, 469.0);
        near(high, 532.0);
        assert!(low <= r.percentile_us(0.5) && r.percentile_us(0.5) <= high);
        // q = 0.99: s = 3.15, ranks floor(983.8) and ceil(996.2) + 1.
        let (low, high) = r.percentile_ci95_us(0.99).expect("p99 of 1000 is bounded");
        near(low, 983.0);
        assert!((998.0..999.0).contains(&high), "{high}");
        // p99.9 of 1000 samples rests on one sample: no interval.
        assert_eq!(r.percentile_ci95_us(0.999), None);
        assert_eq!(Recorder::new().percentile_ci95_us(0.5), None);
        // More samples narrow it: a million of the same distribution.
        let mut big = Recorder::new();
        for _ in 0..1000 {
            big.merge(&r);
        }
        let (low, high) = big.percentile_ci95_us(0.999).expect("p99.9 of a million");
        assert!(high - low <= 2.0, "{low}..{high}");
    }

    #[test]
    fn percentiles_of_uniform_distribution() {
        let r = uniform_1_to_1000();
        assert_eq!(r.len(), 1000);
        near(r.percentile_us(0.5), 500.0);
        near(r.percentile_us(0.9), 900.0);
        near(r.percentile_us(0.99), 990.0);
        near(r.percentile_us(0.999), 999.0);
        near(r.percentile_us(1.0), 1000.0);
        near(r.percentile_us(7.0), 1000.0); // q is clamped
        near(r.percentile_us(f64::NAN), 1.0);
        near(r.max_us(), 1000.0);
        near(r.min_us(), 1.0);

        let s = LatencySummary::from_recorder(&r);
        assert_eq!(s.count, 1000);
        near(s.p50_us, 500.0);
        near(s.p999_us, 999.0);
        near(s.p9999_us, 1000.0);
        near(s.max_us, 1000.0);
        assert!((s.mean_us - 500.5).abs() < 0.5, "{}", s.mean_us);
    }

    #[test]
    fn sub_microsecond_resolution() {
        // A busy-polling round trip: 5.1 µs must not read as 5.
        let mut r = Recorder::new();
        r.record(Duration::from_nanos(5_100));
        near(r.percentile_us(0.5), 5.1);
    }

    #[test]
    fn large_values_within_precision() {
        let mut r = Recorder::new();
        r.record(Duration::from_millis(1234));
        near(r.percentile_us(0.5), 1_234_000.0);
    }

    #[test]
    fn clamps_out_of_range_samples() {
        let mut r = Recorder::new();
        r.record(Duration::ZERO);
        assert_eq!(r.percentile_us(1.0), 0.001, "clamped to the smallest, 1 ns");
        r.record(Duration::from_secs(7200));
        r.record(Duration::MAX);
        assert_eq!(r.len(), 3);
        // Clamped to one hour, give or take histogram precision.
        near(r.max_us(), HIGHEST_NS as f64 / 1000.0);
    }

    #[test]
    fn merge_and_reset() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for us in 1..=500 {
            a.record(Duration::from_micros(us));
        }
        for us in 501..=1000 {
            b.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.len(), 1000);
        near(a.percentile_us(0.5), 500.0);
        near(a.max_us(), 1000.0);
        assert_eq!(b.len(), 500);
        a.merge(&Recorder::new());
        assert_eq!(a.len(), 1000);

        a.reset();
        assert!(a.is_empty());
        assert_eq!((a.percentile_us(0.99), a.max_us()), (0.0, 0.0));
        assert_eq!(LatencySummary::from_recorder(&a), LatencySummary::default());
    }

    #[test]
    fn hgrm_format() {
        let mut out = Vec::new();
        uniform_1_to_1000().write_hgrm(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        let field = |line: &str, i: usize| -> f64 {
            line.split_whitespace().nth(i).unwrap().parse().unwrap()
        };
        near(field(lines[2], 0), 1.0);
        assert_eq!(field(lines[2], 1), 0.0);
        let median = lines
            .iter()
            .find(|l| l.contains(" 0.500000000000 "))
            .expect("a line at the median");
        near(field(median, 0), 500.0);
        assert_eq!(field(median, 2), 500.0);
        let last_value = lines[lines.len() - 4];
        near(field(last_value, 0), 1000.0);
        assert!(
            last_value.ends_with(" 1.000000000000       1000"),
            "{last_value}"
        );
        assert!(lines[lines.len() - 3].starts_with("#[Mean    = "));
        assert!(lines[lines.len() - 2].starts_with("#[Max     = "));
        assert!(lines[lines.len() - 2].ends_with("Total count    =         1000]"));
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with(", SubBuckets     =         2048]"));

        // An empty histogram still yields a well-formed header and footer.
        let mut out = Vec::new();
        Recorder::new().write_hgrm(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
    }

    #[test]
    fn histograms_survive_encoding_and_unit_change() {
        let r = uniform_1_to_1000();
        let text = r.encode().unwrap();
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text}");
        let back = Recorder::decode(&text).unwrap();
        assert_eq!(back.len(), 1000);
        near(back.percentile_us(0.5), r.percentile_us(0.5));
        near(back.max_us(), r.max_us());
        assert!(Recorder::decode("not base64!").is_err());
        assert!(
            Recorder::decode("aGVsbG8=").is_err(),
            "base64, but no histogram"
        );
        // A header declaring 4 GB of counts is refused before anything is allocated.
        let mut huge = super::V2_COOKIE.to_be_bytes().to_vec();
        huge.extend_from_slice(&0xFFFF_FFF0_u32.to_be_bytes());
        huge.resize(40, 0);
        let err = Recorder::decode(&base64::Engine::encode(&super::BASE64, &huge)).unwrap_err();
        assert!(err.contains("declares"), "{err}");
        // issue 18, item 2: a small histogram declaring a range and precision no bench
        // writes (1..2^62 at 5 digits: 48 MB of counters to decode) is refused, compressed
        // or not.
        for deflate in [false, true] {
            let wide = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 62, 5).unwrap();
            let mut bytes = Vec::new();
            if deflate {
                use hdrhistogram::serialization::Serializer;
                hdrhistogram::serialization::V2DeflateSerializer::new()
                    .serialize(&wide, &mut bytes)
                    .unwrap();
            } else {
                use hdrhistogram::serialization::Serializer;
                hdrhistogram::serialization::V2Serializer::new()
                    .serialize(&wide, &mut bytes)
                    .unwrap();
            }
            assert!(bytes.len() < 64 * 1024, "small on disk: {}", bytes.len());
            let text = base64::Engine::encode(&super::BASE64, &bytes);
            let err = super::decode_histogram(&text).unwrap_err();
            assert!(err.contains("does not write"), "{err}");
        }

        // Microseconds for interval logs, and back.
        let micros = r.to_micros();
        assert_eq!(micros.len(), 1000);
        assert_eq!(micros.value_at_quantile(0.5), 500);
        let mut again = Recorder::new();
        again.add_micros(&micros);
        near(again.percentile_us(0.9), 900.0);
        assert!((r.stddev_us() - 288.7).abs() < 1.0, "{}", r.stddev_us());
    }
}
