//! Latency recording and the final report of `echoloop bench`.
//!
//! [`Recorder`] is a fixed-range HdrHistogram of nanosecond latencies that
//! each connection (or the whole run) feeds; [`LatencySummary`] condenses one
//! into the figures the report prints. [`Report`] collects the run's totals
//! and renders them for humans ([`Display`](fmt::Display)) or machines
//! ([`Report::to_json`], read back by [`Report::from_json`] for `bench merge`);
//! [`status_line`] is the progress line.
//!
//! Percentiles cannot be averaged: the p99 of two runs is not the mean of their
//! p99s. So the JSON report carries its histograms whole (HdrHistogram's V2
//! format, deflate-compressed, base64), and merging adds histograms.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::cli::units::{format_bytes_per_sec, format_count};

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
    #[cfg(test)]
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

/// The latency figures of one [`Recorder`], in microseconds (with their fractions).
///
/// In JSON: `count`, `min`, `p50`, `p90`, `p99`, `p99_9`, `p99_99`, `max`, `mean`,
/// `stddev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    #[serde(rename = "min")]
    pub min_us: f64,
    /// Median.
    #[serde(rename = "p50")]
    pub p50_us: f64,
    /// 90th percentile.
    #[serde(rename = "p90")]
    pub p90_us: f64,
    /// 99th percentile.
    #[serde(rename = "p99")]
    pub p99_us: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99_9")]
    pub p999_us: f64,
    /// 99.99th percentile.
    #[serde(rename = "p99_99")]
    pub p9999_us: f64,
    /// Largest sample.
    #[serde(rename = "max")]
    pub max_us: f64,
    /// Arithmetic mean (0 when there are no samples).
    #[serde(rename = "mean")]
    pub mean_us: f64,
    /// Standard deviation (0 when there are no samples).
    #[serde(rename = "stddev", default)]
    pub stddev_us: f64,
}

impl LatencySummary {
    /// Summarises the samples in `r`.
    pub fn from_recorder(r: &Recorder) -> Self {
        Self {
            count: r.len(),
            min_us: r.min_us(),
            p50_us: r.percentile_us(0.5),
            p90_us: r.percentile_us(0.9),
            p99_us: r.percentile_us(0.99),
            p999_us: r.percentile_us(0.999),
            p9999_us: r.percentile_us(0.9999),
            max_us: r.max_us(),
            mean_us: r.mean_us(),
            stddev_us: r.stddev_us(),
        }
    }
}

impl fmt::Display for LatencySummary {
    /// `min 61  p50 80  p90 120  p99 300  p99.9 900  p99.99 1200  max 4000  mean 90.1 ± 12.0`
    /// (µs, with one decimal below 100 µs; ± is the standard deviation), or `no samples`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("no samples");
        }
        let v = |x: f64| {
            if x < 100.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.0}")
            }
        };
        write!(
            f,
            "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.1} ± {:.1}",
            v(self.min_us),
            v(self.p50_us),
            v(self.p90_us),
            v(self.p99_us),
            v(self.p999_us),
            v(self.p9999_us),
            v(self.max_us),
            self.mean_us,
            self.stddev_us
        )
    }
}

/// Which part of a run one generator measured (`--segment I/N`); `0/1` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// This generator's number, from 0.
    pub index: u32,
    /// How many generators share the run.
    pub count: u32,
}

impl Default for SegmentInfo {
    fn default() -> Self {
        SegmentInfo { index: 0, count: 1 }
    }
}

/// The run's histograms, whole: HdrHistogram V2 deflate, base64, values in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// Round trips of the window (what `latency_us` summarises).
    pub rtt: String,
    /// Open loop: round trips from when messages actually went out.
    #[serde(default)]
    pub rtt_uncorrected: Option<String>,
    /// Connects (what `connect_latency_us` summarises).
    #[serde(default)]
    pub connect: Option<String>,
}

/// One generator's line in a merged report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorRow {
    /// Its segment number.
    pub segment: u32,
    /// The file its figures came from.
    pub source: String,
    /// Round trips per second over its window.
    pub msgs_per_sec: f64,
    /// Its CPU use, in percent of one core (a generator near 100% per thread is
    /// saturated: the server may be faster than it measured).
    pub generator_cpu_percent: Option<f64>,
}

/// Everything `echoloop bench` reports at the end of a run.
///
/// As JSON ([`Report::to_json`]), the fields keep these names except where noted, and
/// three derived numbers are added: `msgs_per_sec`, `mb_per_sec_sent` and
/// `mb_per_sec_received` (MB = 10^6 bytes). Numbers that were not measured are `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Load model, e.g. `closed-loop pipeline=4` or `open-loop rate=10000/s` (the whole
    /// run's rate, every segment's).
    pub mode: String,
    /// Transport name, e.g. `tcp`, `udp`, `tls`, `unix`.
    pub transport: String,
    /// Address the load was sent to.
    pub target: String,
    /// How the generator's loops wait for events: `block`, or `busy-poll 50µs`...
    pub idle_strategy: String,
    /// Message size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Which generator of the run this is.
    #[serde(default)]
    pub segment: SegmentInfo,
    /// Connections this generator was asked to open (its share of the run's).
    pub connections_requested: u64,
    /// Connections that were established.
    pub connections_up: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Length of the measured window in seconds (warm-up excluded).
    pub duration_secs: f64,
    /// Start of the measured window, Unix time in seconds.
    #[serde(default)]
    pub window_start_unix: f64,
    /// End of the measured window, Unix time in seconds.
    #[serde(default)]
    pub window_end_unix: f64,
    /// Echo round trips completed in the window.
    pub messages: u64,
    /// Payload bytes written in the window.
    pub bytes_sent: u64,
    /// Payload bytes read in the window.
    pub bytes_received: u64,
    /// Echoes whose content did not match what was sent.
    pub verify_errors: u64,
    /// Messages with no echo when their time ran out (the grace after the window).
    pub timeouts: u64,
    /// Datagrams never answered within the timeout (0 for streams).
    pub lost: u64,
    /// Datagram echoes that came after the timeout.
    #[serde(default)]
    pub late: u64,
    /// Datagram echoes of a message already answered.
    #[serde(default)]
    pub duplicates: u64,
    /// Datagrams from an address other than the server's (ignored).
    #[serde(default)]
    pub wrong_source: u64,
    /// Connections the server closed while the run still wanted them.
    #[serde(default)]
    pub closed_by_server: u64,
    /// Connections reset, or failed with another I/O or TLS error, mid-run.
    #[serde(default)]
    pub broken: u64,
    /// Messages in flight on connections closed by the server or broken.
    #[serde(default)]
    pub unanswered: u64,
    /// Round-trip latency (open loop: from when each message was due).
    #[serde(rename = "latency_us")]
    pub latency: LatencySummary,
    /// Open loop: round-trip latency from when each message actually went out, which
    /// hides the server's stalls (coordinated omission); shown for comparison.
    #[serde(rename = "latency_uncorrected_us", default)]
    pub latency_uncorrected: Option<LatencySummary>,
    /// Connect latency, when connections were timed.
    #[serde(rename = "connect_latency_us")]
    pub connect_latency: Option<LatencySummary>,
    /// Reconnections per second, when the run reconnects.
    pub reconnects_per_sec: Option<f64>,
    /// CPU used by the generator process over the window, in percent of one
    /// core, when measured.
    pub generator_cpu_percent: Option<f64>,
    /// Generator CPU time per message, in µs.
    #[serde(default)]
    pub generator_cpu_us_per_msg: Option<f64>,
    /// CPU used by the `--server-pid` process over the window, percent of one core.
    #[serde(default)]
    pub server_cpu_percent: Option<f64>,
    /// Server CPU time per message (its "service demand"), in µs.
    #[serde(default)]
    pub server_cpu_us_per_msg: Option<f64>,
    /// The server's peak resident memory over its life so far (`VmHWM`), in KiB.
    #[serde(default)]
    pub server_peak_rss_kib: Option<u64>,
    /// In a merged report: one row per generator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generators: Vec<GeneratorRow>,
    /// The histograms behind the latency figures, for `bench merge`.
    #[serde(default)]
    pub histograms: Option<Histograms>,
}

/// The JSON form: the report's own fields, then the derived rates.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(flatten)]
    report: &'a Report,
    msgs_per_sec: f64,
    mb_per_sec_sent: f64,
    mb_per_sec_received: f64,
}

impl Report {
    /// Completed round trips per second over the measured window.
    pub fn msgs_per_sec(&self) -> f64 {
        self.per_sec(self.messages as f64)
    }

    /// Send throughput in decimal megabytes (10^6 bytes) per second.
    pub fn mb_per_sec_sent(&self) -> f64 {
        self.per_sec(self.bytes_sent as f64) / 1e6
    }

    /// Receive throughput in decimal megabytes (10^6 bytes) per second.
    pub fn mb_per_sec_received(&self) -> f64 {
        self.per_sec(self.bytes_received as f64) / 1e6
    }

    /// `x` divided by the window; 0 for an empty or invalid window rather
    /// than infinity.
    fn per_sec(&self, x: f64) -> f64 {
        if self.duration_secs > 0.0 {
            x / self.duration_secs
        } else {
            0.0
        }
    }

    /// Renders the report as one JSON object on a single line (see the type's docs for
    /// the keys). JSON has no NaN or infinity: such numbers are written as `null`.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            report: self,
            msgs_per_sec: self.msgs_per_sec(),
            mb_per_sec_sent: self.mb_per_sec_sent(),
            mb_per_sec_received: self.mb_per_sec_received(),
        };
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_string(&wire).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Reads a report written by [`Report::to_json`].
    ///
    /// # Errors
    ///
    /// The text is not JSON, or lacks a field a report must have.
    pub fn from_json(text: &str) -> Result<Report, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

impl fmt::Display for Report {
    /// The human-readable report: one aligned `label  value` line per topic,
    /// without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const W: usize = 15;
        writeln!(f, "{:<W$}{}", "mode", self.mode)?;
        writeln!(f, "{:<W$}{} {}", "target", self.transport, self.target)?;
        if self.segment.count > 1 && self.generators.is_empty() {
            writeln!(
                f,
                "{:<W$}{} of {}",
                "segment", self.segment.index, self.segment.count
            )?;
        }
        if !self.idle_strategy.is_empty() {
            writeln!(f, "{:<W$}{}", "idle", self.idle_strategy)?;
        }
        writeln!(
            f,
            "{:<W$}{} up, {} failed ({} requested)",
            "connections", self.connections_up, self.connect_failures, self.connections_requested
        )?;
        writeln!(f, "{:<W$}{:.2} s", "duration", self.duration_secs)?;
        writeln!(
            f,
            "{:<W$}{} ({} msgs/s)",
            "messages",
            self.messages,
            format_count(self.msgs_per_sec())
        )?;
        writeln!(
            f,
            "{:<W$}{} sent, {} received",
            "throughput",
            format_bytes_per_sec(self.per_sec(self.bytes_sent as f64)),
            format_bytes_per_sec(self.per_sec(self.bytes_received as f64))
        )?;
        writeln!(f, "{:<W$}{}", "latency (µs)", self.latency)?;
        if let Some(u) = &self.latency_uncorrected {
            writeln!(f, "{:<W$}{}", "uncorrected", u)?;
        }
        if let Some(connect) = &self.connect_latency {
            writeln!(f, "{:<W$}{}", "connect (µs)", connect)?;
        }
        if let Some(rate) = self.reconnects_per_sec {
            writeln!(f, "{:<W$}{}/s", "reconnects", format_count(rate))?;
        }
        if let Some(cpu) = self.generator_cpu_percent {
            write!(f, "{:<W$}{:.1}% of one core", "generator cpu", cpu)?;
            if let Some(per) = self.generator_cpu_us_per_msg {
                write!(f, ", {per:.2} µs/msg")?;
            }
            writeln!(f)?;
        }
        if let Some(cpu) = self.server_cpu_percent {
            write!(f, "{:<W$}{:.1}% of one core", "server cpu", cpu)?;
            if let Some(per) = self.server_cpu_us_per_msg {
                write!(f, ", {per:.2} µs/msg")?;
            }
            if let Some(rss) = self.server_peak_rss_kib {
                write!(f, ", peak RSS {rss} KiB")?;
            }
            writeln!(f)?;
        }
        for g in &self.generators {
            let cpu = g
                .generator_cpu_percent
                .map_or_else(|| "cpu ?".to_owned(), |c| format!("cpu {c:.1}%"));
            writeln!(
                f,
                "{:<W$}{}/{}  {} msgs/s  {cpu}  ({})",
                "generator",
                g.segment,
                self.segment.count,
                format_count(g.msgs_per_sec),
                g.source
            )?;
        }
        write!(
            f,
            "{:<W$}{} verify, {} timeouts, {} lost",
            "errors", self.verify_errors, self.timeouts, self.lost
        )?;
        for (n, what) in [
            (self.late, "late"),
            (self.duplicates, "duplicated"),
            (self.wrong_source, "from another address"),
            (self.closed_by_server, "connections closed by the server"),
            (self.broken, "connections reset or failed"),
            (self.unanswered, "messages unanswered on those"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

/// The progress line, e.g.
/// `[   3.0s]  123.4k msgs/s  7.90 MB/s  p99 300 µs  0 errors`.
pub fn status_line(
    elapsed: Duration,
    msgs_per_sec: f64,
    bytes_per_sec: f64,
    p99_us: u64,
    errors: u64,
) -> String {
    format!(
        "[{:>7.1}s]  {} msgs/s  {}  p99 {} µs  {} errors",
        elapsed.as_secs_f64(),
        format_count(msgs_per_sec),
        format_bytes_per_sec(bytes_per_sec),
        p99_us,
        errors
    )
}

#[cfg(test)]
mod tests {
    use super::{Duration, HIGHEST_NS, Histograms, LatencySummary, Recorder, Report, status_line};

    fn uniform_1_to_1000() -> Recorder {
        let mut r = Recorder::new();
        for us in 1..=1000 {
            r.record(Duration::from_micros(us));
        }
        r
    }

    /// Within the histogram's precision (three significant figures: 0.1%).
    #[track_caller]
    fn near(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= want.abs() * 0.001 + 1e-9,
            "{got} is not within 0.1% of {want}"
        );
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

    fn sample_report() -> Report {
        let mut connect = Recorder::new();
        connect.record(Duration::from_micros(150));
        let rtt = uniform_1_to_1000();
        Report {
            mode: "closed-loop pipeline=1".into(),
            transport: "tcp".into(),
            target: "odd \"host\"\\path\n\u{1}".into(),
            idle_strategy: "busy-poll 50µs".into(),
            size: 64,
            connections_requested: 100,
            connections_up: 100,
            connect_failures: 0,
            duration_secs: 10.0,
            window_start_unix: 1_767_225_600.5,
            window_end_unix: 1_767_225_610.5,
            messages: 1_234_567,
            bytes_sent: 79_000_000,
            bytes_received: 79_000_000,
            verify_errors: 0,
            timeouts: 2,
            lost: 0,
            latency: LatencySummary::from_recorder(&rtt),
            connect_latency: Some(LatencySummary::from_recorder(&connect)),
            reconnects_per_sec: None,
            generator_cpu_percent: Some(f64::NAN),
            histograms: Some(Histograms {
                rtt: rtt.encode().unwrap(),
                rtt_uncorrected: None,
                connect: Some(connect.encode().unwrap()),
            }),
            ..Report::default()
        }
    }

    #[test]
    fn derived_rates() {
        let r = sample_report();
        assert!((r.msgs_per_sec() - 123_456.7).abs() < 1e-6);
        assert!((r.mb_per_sec_sent() - 7.9).abs() < 1e-9);
        assert!((r.mb_per_sec_received() - 7.9).abs() < 1e-9);
        let empty = Report::default();
        assert_eq!(empty.msgs_per_sec(), 0.0);
    }

    #[test]
    fn json_is_valid_complete_and_reads_back() {
        let report = sample_report();
        let json = report.to_json();
        assert!(!json.contains('\n'), "{json}");
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        for key in [
            "mode",
            "transport",
            "target",
            "idle_strategy",
            "size",
            "segment",
            "connections_requested",
            "connections_up",
            "connect_failures",
            "duration_secs",
            "window_start_unix",
            "window_end_unix",
            "messages",
            "bytes_sent",
            "bytes_received",
            "verify_errors",
            "timeouts",
            "lost",
            "late",
            "duplicates",
            "wrong_source",
            "closed_by_server",
            "broken",
            "unanswered",
            "msgs_per_sec",
            "mb_per_sec_sent",
            "mb_per_sec_received",
            "latency_us",
            "latency_uncorrected_us",
            "connect_latency_us",
            "reconnects_per_sec",
            "generator_cpu_percent",
            "generator_cpu_us_per_msg",
            "server_cpu_percent",
            "server_cpu_us_per_msg",
            "server_peak_rss_kib",
            "histograms",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {json}");
        }
        let lat = &v["latency_us"];
        for key in [
            "count", "min", "p50", "p90", "p99", "p99_9", "p99_99", "max", "mean", "stddev",
        ] {
            assert!(lat[key].is_number(), "latency_us.{key}: {json}");
        }
        assert_eq!(lat["count"], 1000);
        assert_eq!(v["target"], report.target.as_str());
        assert_eq!(v["segment"]["count"], 1);
        assert_eq!(v["msgs_per_sec"], 123_456.7);
        assert!(v["reconnects_per_sec"].is_null());
        assert!(
            v["generator_cpu_percent"].is_null(),
            "NaN is written as null"
        );
        assert!(
            v.get("generators").is_none(),
            "only merged reports have rows"
        );

        // What merge reads: the same report, histograms included (NaN came back as null).
        let back = Report::from_json(&json).unwrap();
        let expected = Report {
            generator_cpu_percent: None,
            ..report.clone()
        };
        assert_eq!(back, expected);
        let rtt = Recorder::decode(&back.histograms.unwrap().rtt).unwrap();
        assert_eq!(rtt.len(), 1000);

        let none = Report {
            connect_latency: None,
            duration_secs: f64::INFINITY,
            ..report
        };
        let v: serde_json::Value = serde_json::from_str(&none.to_json()).unwrap();
        assert!(v["connect_latency_us"].is_null());
        assert!(v["duration_secs"].is_null());
        assert!(Report::from_json("{\"mode\":1}").is_err());
        assert!(Report::from_json("not json").is_err());
    }

    #[test]
    fn human_report() {
        let mut report = sample_report();
        report.target = "127.0.0.1:8881".into();
        report.generator_cpu_percent = Some(87.25);
        report.generator_cpu_us_per_msg = Some(7.07);
        let text = report.to_string();
        let expected = "\
mode           closed-loop pipeline=1
target         tcp 127.0.0.1:8881
idle           busy-poll 50µs
connections    100 up, 0 failed (100 requested)
duration       10.00 s
messages       1234567 (123.5k msgs/s)
throughput     7.90 MB/s sent, 7.90 MB/s received
latency (µs)   min 1.0  p50 500  p90 900  p99 990  p99.9 999  p99.99 1000  max 1000  mean 500.5 ± 288.7
connect (µs)   min 150  p50 150  p90 150  p99 150  p99.9 150  p99.99 150  max 150  mean 150.0 ± 0.0
generator cpu  87.2% of one core, 7.07 µs/msg
errors         0 verify, 2 timeouts, 0 lost";
        assert_eq!(text, expected);

        report.connect_latency = None;
        report.generator_cpu_percent = None;
        report.reconnects_per_sec = Some(1500.0);
        report.latency = LatencySummary::default();
        report.server_cpu_percent = Some(40.0);
        report.server_cpu_us_per_msg = Some(3.25);
        report.server_peak_rss_kib = Some(1652);
        report.closed_by_server = 3;
        report.unanswered = 5;
        let text = report.to_string();
        assert!(!text.contains("connect (µs)"));
        assert!(text.contains("\nreconnects     1.5k/s\n"), "{text}");
        assert!(text.contains("\nlatency (µs)   no samples\n"), "{text}");
        assert!(
            text.contains("\nserver cpu     40.0% of one core, 3.25 µs/msg, peak RSS 1652 KiB\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "2 timeouts, 0 lost, 3 connections closed by the server, 5 messages unanswered on those"
            ),
            "{text}"
        );
    }

    #[test]
    fn status() {
        let line = status_line(Duration::from_millis(3000), 123_400.0, 7_900_000.0, 300, 0);
        assert_eq!(
            line,
            "[    3.0s]  123.4k msgs/s  7.90 MB/s  p99 300 µs  0 errors"
        );
    }
}
