//! The final report of `echoloop bench`, for humans and for machines: [`Report`] holds
//! the run's totals, kept apart from the recorder because it is about presenting a run,
//! not measuring one.
//!
//! [`LatencySummary`] condenses a [`Recorder`] into the figures the report prints.
//! [`Report`] renders them for humans ([`Display`](fmt::Display)) or machines
//! ([`Report::to_json`], read back by [`Report::from_json`] for `bench merge`), with its
//! histograms whole ([`Histograms`]); [`status_line`] is the progress line.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::bench::recorder::Recorder;
use crate::cli::units::{format_bytes_per_sec, format_count};

/// The latency figures of one [`Recorder`], in microseconds (with their fractions).
///
/// In JSON: `count`, `min`, `p50`, `p90`, `p99`, `p99_9`, `p99_99`, `max`, `mean`,
/// `stddev`, and `p50_ci95` … `p99_99_ci95` (`[low, high]` or `null`).
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
    /// 95% confidence intervals of the percentiles above, `[low, high]`; `None` (JSON
    /// `null`) when too few samples stand behind a percentile to bound it. Absent from
    /// reports written before they existed.
    #[serde(rename = "p50_ci95", default)]
    pub p50_ci95: Option<[f64; 2]>,
    /// The interval of p90.
    #[serde(rename = "p90_ci95", default)]
    pub p90_ci95: Option<[f64; 2]>,
    /// The interval of p99.
    #[serde(rename = "p99_ci95", default)]
    pub p99_ci95: Option<[f64; 2]>,
    /// The interval of p99.9.
    #[serde(rename = "p99_9_ci95", default)]
    pub p999_ci95: Option<[f64; 2]>,
    /// The interval of p99.99.
    #[serde(rename = "p99_99_ci95", default)]
    pub p9999_ci95: Option<[f64; 2]>,
}

impl LatencySummary {
    /// Summarises the samples in `r`.
    pub fn from_recorder(r: &Recorder) -> Self {
        let ci = |q: f64| r.percentile_ci95_us(q).map(|(low, high)| [low, high]);
        Self {
            p50_ci95: ci(0.5),
            p90_ci95: ci(0.9),
            p99_ci95: ci(0.99),
            p999_ci95: ci(0.999),
            p9999_ci95: ci(0.9999),
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
    /// `min 61  p50 80 [79.6-80.4]  …  p99.99 1200 [too few samples]  max 4000  mean 90.1 ± 12.0`
    /// (µs, with one decimal below 100 µs; each percentile's 95% confidence interval in
    /// brackets; ± is the standard deviation), or `no samples`.
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
        // Each percentile with its interval, or a word that it has none.
        let p = |x: f64, ci: Option<[f64; 2]>| match ci {
            Some([low, high]) => format!("{} [{}-{}]", v(x), v(low), v(high)),
            None => format!("{} [too few samples]", v(x)),
        };
        write!(
            f,
            "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.1} ± {:.1}",
            v(self.min_us),
            p(self.p50_us, self.p50_ci95),
            p(self.p90_us, self.p90_ci95),
            p(self.p99_us, self.p99_ci95),
            p(self.p999_us, self.p999_ci95),
            p(self.p9999_us, self.p9999_ci95),
            v(self.max_us),
            self.mean_us,
            self.stddev_us
        )
    }
}

/// How late open-loop sends left against their schedule, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SendLag {
    /// Median.
    #[serde(default)]
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The latest one.
    pub max: f64,
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
    /// What each message starts with: `echoloop` (its own 8-byte header) or `sockperf`
    /// (sockperf's 14-byte header, `--sockperf`, for a `sockperf server`). Reports
    /// written before this field read as `echoloop`.
    #[serde(default = "echoloop_payload")]
    pub payload: String,
    /// Message size in bytes: the largest, when sizes vary.
    #[serde(default)]
    pub size: u64,
    /// Sizes that vary: the `--size` range or mix (`64..16384`, `64:90,1024:9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mix: Option<String>,
    /// Sizes that vary: the mean size they are drawn with, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_size: Option<f64>,
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
    /// Ctrl-C ended the window before `--duration` was over: the figures cover the
    /// shorter window that was measured.
    #[serde(default)]
    pub interrupted: bool,
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
    /// Each load thread's CPU over the window, in percent of one core (threads that
    /// could not be read are left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generator_thread_cpu_percent: Vec<f64>,
    /// Each load thread's share of the window on a core or waiting for one (not idle),
    /// in percent: near 100, the thread was the limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generator_thread_busy_percent: Vec<f64>,
    /// Open loop: how late the generator's timer let sends go out, against their schedule.
    #[serde(default)]
    pub send_lag_us: Option<SendLag>,
    /// The generator, not the server, may have set the figures (a load thread near a
    /// whole core, or open-loop sends falling behind their schedule).
    #[serde(default)]
    pub generator_saturated: bool,
    /// Why it is thought saturated, and what to do, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator_note: Option<String>,
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

/// [`Report::payload`] of a run without `--sockperf`, and of reports older than the field.
fn echoloop_payload() -> String {
    "echoloop".into()
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
        // Only the unusual one is worth a line.
        if !self.payload.is_empty() && self.payload != echoloop_payload() {
            writeln!(f, "{:<W$}{}", "payload", self.payload)?;
        }
        writeln!(
            f,
            "{:<W$}{} up, {} failed ({} requested)",
            "connections", self.connections_up, self.connect_failures, self.connections_requested
        )?;
        write!(f, "{:<W$}{:.2} s", "duration", self.duration_secs)?;
        if self.interrupted {
            write!(f, " (interrupted: Ctrl-C ended the window early)")?;
        }
        writeln!(f)?;
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
        if let (Some(mix), Some(mean)) = (&self.size_mix, self.mean_size) {
            writeln!(f, "{:<W$}{mix} bytes, mean {mean:.0}", "sizes")?;
        }
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
            if !self.generator_thread_cpu_percent.is_empty() {
                let each: Vec<String> = self
                    .generator_thread_cpu_percent
                    .iter()
                    .map(|c| format!("{c:.0}%"))
                    .collect();
                write!(f, " (threads {})", each.join(" "))?;
            }
            writeln!(f)?;
        }
        if let Some(lag) = &self.send_lag_us {
            writeln!(
                f,
                "{:<W$}p50 {:.0}  p99 {:.0}  max {:.0}  (how late sends left against their schedule)",
                "send lag (µs)", lag.p50, lag.p99, lag.max
            )?;
        }
        if let Some(note) = &self.generator_note {
            writeln!(f, "{:<W$}{note}", "warning")?;
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
    use super::{Duration, Histograms, LatencySummary, Recorder, Report, status_line};
    use crate::cli::bench::recorder::uniform_1_to_1000;

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
            interrupted: false,
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
            "payload",
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
    fn payload_is_written_and_older_reports_read_as_ours() {
        let report = Report {
            payload: "sockperf".into(),
            ..sample_report()
        };
        let mut v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["payload"], "sockperf");
        assert!(report.to_string().contains("\npayload        sockperf\n"));
        v.as_object_mut().unwrap().remove("payload");
        let old = Report::from_json(&v.to_string()).unwrap();
        assert_eq!(old.payload, "echoloop");
        assert!(!old.to_string().contains("payload"));
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
latency (µs)   min 1.0  p50 500 [469-532]  p90 900 [881-920]  p99 990 [983-998]  p99.9 999 [too few samples]  p99.99 1000 [too few samples]  max 1000  mean 500.5 ± 288.7
connect (µs)   min 150  p50 150 [too few samples]  p90 150 [too few samples]  p99 150 [too few samples]  p99.9 150 [too few samples]  p99.99 150 [too few samples]  max 150  mean 150.0 ± 0.0
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
