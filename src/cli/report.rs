//! Latency recording and the final report of `echoloop bench`.
//!
//! [`Recorder`] is a fixed-range HdrHistogram of nanosecond latencies that
//! each connection (or the whole run) feeds; [`LatencySummary`] condenses one
//! into the figures the report prints. [`Report`] collects the run's totals
//! and renders them for humans ([`Display`](fmt::Display)) or machines
//! ([`Report::to_json`]); [`status_line`] is the once-a-second progress line.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::units::{format_bytes_per_sec, format_count};

/// Smallest trackable latency, in nanoseconds.
const LOWEST_NS: u64 = 1;
/// Largest trackable latency, in nanoseconds (one hour).
const HIGHEST_NS: u64 = 3_600_000_000_000;
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

    /// Forgets all samples (e.g. at the end of the warm-up period).
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

/// The latency figures of one [`Recorder`], in microseconds (with their fractions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Arithmetic mean (0 when there are no samples).
    pub mean_us: f64,
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
        }
    }

    /// Appends this summary as a JSON object.
    fn write_json(&self, out: &mut String) {
        let _ = write!(out, r#"{{"count":{}"#, self.count);
        for (key, v) in [
            ("min", self.min_us),
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99_9", self.p999_us),
            ("p99_99", self.p9999_us),
            ("max", self.max_us),
            ("mean", self.mean_us),
        ] {
            let _ = write!(out, r#","{key}":"#);
            json_f64(out, v);
        }
        out.push('}');
    }
}

impl fmt::Display for LatencySummary {
    /// `min 61  p50 80  p90 120  p99 300  p99.9 900  p99.99 1200  max 4000  mean 90.1`
    /// (µs, with one decimal below 100 µs), or `no samples`.
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
            "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.1}",
            v(self.min_us),
            v(self.p50_us),
            v(self.p90_us),
            v(self.p99_us),
            v(self.p999_us),
            v(self.p9999_us),
            v(self.max_us),
            self.mean_us
        )
    }
}

/// Everything `echoloop bench` reports at the end of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Load model, e.g. `closed-loop pipeline=4` or `open-loop rate=10000/s`.
    pub mode: String,
    /// Transport name, e.g. `tcp`, `udp`, `tls`, `unix`.
    pub transport: String,
    /// Address the load was sent to.
    pub target: String,
    /// How the generator's loops wait for events: `block`, or `busy-poll 50µs`...
    pub idle_strategy: String,
    /// Connections asked for on the command line.
    pub connections_requested: u64,
    /// Connections that were established.
    pub connections_up: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Length of the measured window in seconds (warm-up excluded).
    pub duration_secs: f64,
    /// Echo round trips completed in the window.
    pub messages: u64,
    /// Payload bytes written in the window.
    pub bytes_sent: u64,
    /// Payload bytes read in the window.
    pub bytes_received: u64,
    /// Echoes whose content did not match what was sent.
    pub verify_errors: u64,
    /// Requests that got no reply within the timeout.
    pub timeouts: u64,
    /// Datagrams never answered (UDP only; 0 otherwise).
    pub lost: u64,
    /// Round-trip latency.
    pub latency: LatencySummary,
    /// Connect latency, when connections were timed.
    pub connect_latency: Option<LatencySummary>,
    /// Reconnections per second, when the run reconnects.
    pub reconnects_per_sec: Option<f64>,
    /// CPU used by the generator process over the window, in percent of one
    /// core, when measured.
    pub generator_cpu_percent: Option<f64>,
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

    /// Renders the report as one JSON object on a single line.
    ///
    /// Keys, in order: `mode`, `transport`, `target`, `idle_strategy` (strings);
    /// `connections_requested`, `connections_up`, `connect_failures`,
    /// `duration_secs`, `messages`, `bytes_sent`, `bytes_received`,
    /// `verify_errors`, `timeouts`, `lost` (numbers); the derived
    /// `msgs_per_sec`, `mb_per_sec_sent`, `mb_per_sec_received` (numbers,
    /// MB = 10^6 bytes); `latency_us`, an object with `count`, `p50`, `p90`,
    /// `min`, `p99`, `p99_9`, `p99_99`, `max` and `mean` (all µs, with fractions, except
    /// `count`);
    /// `connect_latency_us` (same shape, or `null`); `reconnects_per_sec`
    /// and `generator_cpu_percent` (number or `null`).
    ///
    /// Non-finite floats are written as `null`, since JSON has no NaN or
    /// infinity.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push('{');
        for (key, value) in [
            ("mode", &self.mode),
            ("transport", &self.transport),
            ("target", &self.target),
            ("idle_strategy", &self.idle_strategy),
        ] {
            json_key(&mut out, key);
            json_str(&mut out, value);
            out.push(',');
        }
        for (key, value) in [
            ("connections_requested", self.connections_requested),
            ("connections_up", self.connections_up),
            ("connect_failures", self.connect_failures),
        ] {
            json_key(&mut out, key);
            let _ = write!(out, "{value},");
        }
        json_key(&mut out, "duration_secs");
        json_f64(&mut out, self.duration_secs);
        out.push(',');
        for (key, value) in [
            ("messages", self.messages),
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
            ("verify_errors", self.verify_errors),
            ("timeouts", self.timeouts),
            ("lost", self.lost),
        ] {
            json_key(&mut out, key);
            let _ = write!(out, "{value},");
        }
        for (key, value) in [
            ("msgs_per_sec", self.msgs_per_sec()),
            ("mb_per_sec_sent", self.mb_per_sec_sent()),
            ("mb_per_sec_received", self.mb_per_sec_received()),
        ] {
            json_key(&mut out, key);
            json_f64(&mut out, value);
            out.push(',');
        }
        json_key(&mut out, "latency_us");
        self.latency.write_json(&mut out);
        out.push(',');
        json_key(&mut out, "connect_latency_us");
        match &self.connect_latency {
            Some(summary) => summary.write_json(&mut out),
            None => out.push_str("null"),
        }
        for (key, value) in [
            ("reconnects_per_sec", self.reconnects_per_sec),
            ("generator_cpu_percent", self.generator_cpu_percent),
        ] {
            out.push(',');
            json_key(&mut out, key);
            json_f64(&mut out, value.unwrap_or(f64::NAN));
        }
        out.push('}');
        out
    }
}

/// Appends `"key":`; keys are plain snake_case literals, so no escaping.
fn json_key(out: &mut String, key: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a JSON number, or `null` for NaN and infinities. Rust's `Display`
/// for `f64` never uses exponent notation, so the output is valid JSON.
fn json_f64(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        out.push_str("null");
    }
}

impl fmt::Display for Report {
    /// The human-readable report: one aligned `label  value` line per topic,
    /// without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const W: usize = 15;
        writeln!(f, "{:<W$}{}", "mode", self.mode)?;
        writeln!(f, "{:<W$}{} {}", "target", self.transport, self.target)?;
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
        if let Some(connect) = &self.connect_latency {
            writeln!(f, "{:<W$}{}", "connect (µs)", connect)?;
        }
        if let Some(rate) = self.reconnects_per_sec {
            writeln!(f, "{:<W$}{}/s", "reconnects", format_count(rate))?;
        }
        if let Some(cpu) = self.generator_cpu_percent {
            writeln!(f, "{:<W$}{:.1}% of one core", "generator cpu", cpu)?;
        }
        write!(
            f,
            "{:<W$}{} verify, {} timeouts, {} lost",
            "errors", self.verify_errors, self.timeouts, self.lost
        )
    }
}

/// The once-a-second progress line, e.g.
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
    use super::{Duration, HIGHEST_NS, LatencySummary, Recorder, Report, status_line};
    use std::collections::BTreeSet;

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

    fn sample_report() -> Report {
        let mut connect = Recorder::new();
        connect.record(Duration::from_micros(150));
        Report {
            mode: "closed-loop pipeline=1".into(),
            transport: "tcp".into(),
            target: "odd \"host\"\\path\n\u{1}".into(),
            idle_strategy: "busy-poll 50µs".into(),
            connections_requested: 100,
            connections_up: 100,
            connect_failures: 0,
            duration_secs: 10.0,
            messages: 1_234_567,
            bytes_sent: 79_000_000,
            bytes_received: 79_000_000,
            verify_errors: 0,
            timeouts: 2,
            lost: 0,
            latency: LatencySummary::from_recorder(&uniform_1_to_1000()),
            connect_latency: Some(LatencySummary::from_recorder(&connect)),
            reconnects_per_sec: None,
            generator_cpu_percent: Some(f64::NAN),
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

    /// A minimal JSON reader for the tests: validates the syntax and collects
    /// every object key (dotted with its parents) and every string value.
    struct Json<'a> {
        s: &'a [u8],
        pos: usize,
        keys: BTreeSet<String>,
        strings: Vec<String>,
    }

    impl Json<'_> {
        fn parse(s: &str) -> Result<(BTreeSet<String>, Vec<String>), String> {
            let mut p = Json {
                s: s.as_bytes(),
                pos: 0,
                keys: BTreeSet::new(),
                strings: Vec::new(),
            };
            p.value("")?;
            if p.pos != p.s.len() {
                return Err(format!("trailing data at {}", p.pos));
            }
            Ok((p.keys, p.strings))
        }

        fn peek(&self) -> Option<u8> {
            self.s.get(self.pos).copied()
        }

        fn eat(&mut self, b: u8) -> Result<(), String> {
            if self.peek() == Some(b) {
                self.pos += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", b as char, self.pos))
            }
        }

        fn value(&mut self, path: &str) -> Result<(), String> {
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(());
                    }
                    loop {
                        let key = self.string()?;
                        let key = if path.is_empty() {
                            key
                        } else {
                            format!("{path}.{key}")
                        };
                        self.eat(b':')?;
                        self.value(&key)?;
                        self.keys.insert(key);
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            _ => return self.eat(b'}'),
                        }
                    }
                }
                Some(b'"') => {
                    let s = self.string()?;
                    self.strings.push(s);
                    Ok(())
                }
                Some(b'n') if self.s[self.pos..].starts_with(b"null") => {
                    self.pos += 4;
                    Ok(())
                }
                Some(b'-' | b'0'..=b'9') => {
                    let start = self.pos;
                    while matches!(
                        self.peek(),
                        Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    ) {
                        self.pos += 1;
                    }
                    let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap();
                    text.parse::<f64>()
                        .map(drop)
                        .map_err(|e| format!("{text}: {e}"))
                }
                _ => Err(format!("unexpected input at {}", self.pos)),
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out = Vec::new();
            loop {
                let b = self.peek().ok_or("unterminated string")?;
                self.pos += 1;
                match b {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b if b < 0x20 => return Err(format!("raw control byte at {}", self.pos)),
                    b'\\' => {
                        let e = self.peek().ok_or("dangling escape")?;
                        self.pos += 1;
                        let c = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'u' => {
                                let hex =
                                    std::str::from_utf8(&self.s[self.pos..self.pos + 4]).unwrap();
                                self.pos += 4;
                                char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap()
                            }
                            _ => return Err(format!("bad escape at {}", self.pos)),
                        };
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    b => out.push(b),
                }
            }
        }
    }

    #[test]
    fn json_is_valid_and_complete() {
        let report = sample_report();
        let json = report.to_json();
        assert!(!json.contains('\n'), "{json}");
        let (keys, strings) = Json::parse(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        for key in [
            "mode",
            "transport",
            "target",
            "connections_requested",
            "connections_up",
            "connect_failures",
            "duration_secs",
            "messages",
            "bytes_sent",
            "bytes_received",
            "verify_errors",
            "timeouts",
            "lost",
            "msgs_per_sec",
            "mb_per_sec_sent",
            "mb_per_sec_received",
            "latency_us",
            "latency_us.count",
            "latency_us.p50",
            "latency_us.p90",
            "latency_us.p99",
            "latency_us.p99_9",
            "latency_us.p99_99",
            "latency_us.min",
            "latency_us.max",
            "idle_strategy",
            "latency_us.mean",
            "connect_latency_us",
            "connect_latency_us.p50",
            "reconnects_per_sec",
            "generator_cpu_percent",
        ] {
            assert!(keys.contains(key), "missing {key}: {json}");
        }
        assert!(strings.contains(&report.target), "{json}");
        assert!(
            json.contains(r#""target":"odd \"host\"\\path\n\u0001""#),
            "{json}"
        );
        assert!(
            json.contains(r#""latency_us":{"count":1000,"min":1,"p50":500.223,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""idle_strategy":"busy-poll 50µs","#),
            "{json}"
        );
        assert!(json.contains(r#""msgs_per_sec":123456.7,"#), "{json}");
        assert!(json.contains(r#""reconnects_per_sec":null"#), "{json}");
        assert!(json.contains(r#""generator_cpu_percent":null}"#), "{json}");

        let none = Report {
            connect_latency: None,
            duration_secs: f64::INFINITY,
            ..report
        };
        let json = none.to_json();
        Json::parse(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert!(json.contains(r#""connect_latency_us":null,"#), "{json}");
        assert!(json.contains(r#""duration_secs":null,"#), "{json}");
    }

    #[test]
    fn human_report() {
        let mut report = sample_report();
        report.target = "127.0.0.1:8881".into();
        report.generator_cpu_percent = Some(87.25);
        let text = report.to_string();
        let expected = "\
mode           closed-loop pipeline=1
target         tcp 127.0.0.1:8881
idle           busy-poll 50µs
connections    100 up, 0 failed (100 requested)
duration       10.00 s
messages       1234567 (123.5k msgs/s)
throughput     7.90 MB/s sent, 7.90 MB/s received
latency (µs)   min 1.0  p50 500  p90 900  p99 990  p99.9 999  p99.99 1000  max 1000  mean 500.5
connect (µs)   min 150  p50 150  p90 150  p99 150  p99.9 150  p99.99 150  max 150  mean 150.0
generator cpu  87.2% of one core
errors         0 verify, 2 timeouts, 0 lost";
        assert_eq!(text, expected);

        report.connect_latency = None;
        report.generator_cpu_percent = None;
        report.reconnects_per_sec = Some(1500.0);
        report.latency = LatencySummary::default();
        let text = report.to_string();
        assert!(!text.contains("connect (µs)"));
        assert!(text.contains("\nreconnects     1.5k/s\n"), "{text}");
        assert!(text.contains("\nlatency (µs)   no samples\n"), "{text}");
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
