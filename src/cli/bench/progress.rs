//! What the run shows while it runs: the progress line on stderr, one JSON object per
//! interval (`--json-lines`) and the HdrHistogram interval log (`--hlog`).
//!
//! The load threads hand over their finished [`Interval`]s; an interval is shown once
//! every thread has handed in its part, merged — the histograms added, never percentiles
//! averaged. The window's merged intervals are also summed into the run's totals here, so
//! the final report and the interval log are made of the same samples.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{
    IntervalLogWriter, IntervalLogWriterBuilder, IntervalLogWriterError, Tag,
};

use super::model::{Interval, Timeline};
use crate::cli::bench::recorder::Recorder;
use crate::cli::bench::report::status_line;

/// The run's histograms, summed from the merged intervals.
#[derive(Debug, Default)]
pub(super) struct Totals {
    /// Round trips inside the window.
    pub(super) rtt: Recorder,
    /// Open loop: the same, from the actual send times.
    pub(super) rtt_uncorrected: Recorder,
    /// Connects inside the window.
    pub(super) connect_window: Recorder,
    /// Connects during the warm-up.
    pub(super) connect_warmup: Recorder,
}

/// Merges the threads' intervals and shows each one when complete.
pub(super) struct Progress {
    threads: usize,
    tl: Timeline,
    terminal: bool,
    /// Per interval index: how many threads have reported it, and their sum so far.
    pending: BTreeMap<u32, (usize, Interval)>,
    /// Each thread's latest error count and connections up.
    errors: Vec<u64>,
    up: Vec<u64>,
    drawn: bool,
    json_lines: Option<Box<dyn Write>>,
    /// Where they go, for the error message if writing fails.
    json_lines_name: Option<String>,
    pub(super) totals: Totals,
}

impl Progress {
    pub(super) fn new(
        threads: usize,
        tl: Timeline,
        json_lines: Option<Box<dyn Write>>,
        json_lines_name: Option<String>,
    ) -> Progress {
        Progress {
            threads,
            tl,
            terminal: io::stderr().is_terminal(),
            pending: BTreeMap::new(),
            errors: vec![0; threads],
            up: vec![0; threads],
            drawn: false,
            json_lines,
            json_lines_name,
            totals: Totals::default(),
        }
    }

    /// Ctrl-C cut the window short: this is the timeline now.
    pub(super) fn cut_short(&mut self, tl: Timeline) {
        self.tl = tl;
    }

    /// One thread's part of one interval. Returns the merged interval when it was the
    /// last part, after showing it.
    pub(super) fn add(
        &mut self,
        thread: usize,
        iv: Interval,
        errors: u64,
        up: u64,
    ) -> Option<Interval> {
        if let Some(e) = self.errors.get_mut(thread) {
            *e = errors;
        }
        if let Some(u) = self.up.get_mut(thread) {
            *u = up;
        }
        let index = iv.index;
        let complete = match self.pending.remove(&index) {
            None => {
                if self.threads > 1 {
                    self.pending.insert(index, (1, iv));
                    return None;
                }
                iv
            }
            Some((n, mut sum)) => {
                sum.merge(&iv);
                if n + 1 < self.threads {
                    self.pending.insert(index, (n + 1, sum));
                    return None;
                }
                sum
            }
        };
        if complete.warmup {
            self.totals.connect_warmup.merge(&complete.connect);
        } else {
            self.totals.rtt.merge(&complete.rtt);
            self.totals.rtt_uncorrected.merge(&complete.rtt_uncorrected);
            self.totals.connect_window.merge(&complete.connect);
        }
        self.show(&complete);
        Some(complete)
    }

    fn show(&mut self, iv: &Interval) {
        let secs = iv.end.saturating_duration_since(iv.start).as_secs_f64();
        let per_sec = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        let elapsed = iv.end.saturating_duration_since(self.tl.start);
        let errors: u64 = self.errors.iter().sum();
        let up: u64 = self.up.iter().sum();
        let mut line = status_line(
            elapsed,
            per_sec(iv.messages),
            per_sec(iv.bytes_received),
            iv.rtt.percentile_us(0.99).round() as u64,
            errors,
        );
        if iv.warmup {
            line.push_str("  (warm-up)");
        }
        // Progress is best effort, and never blocks the run: through the outlet.
        if self.terminal {
            crate::cli::outlet::text(format!("\r{line}\x1b[K"));
        } else {
            crate::cli::outlet::line(line);
        }
        self.drawn = true;
        if let Some(out) = &mut self.json_lines {
            let r = &iv.rtt;
            let obj = serde_json::json!({
                "type": "interval",
                "index": iv.index,
                "elapsed_secs": elapsed.as_secs_f64(),
                "interval_secs": secs,
                "warmup": iv.warmup,
                "messages": iv.messages,
                "msgs_per_sec": per_sec(iv.messages),
                "bytes_sent": iv.bytes_sent,
                "bytes_received": iv.bytes_received,
                "latency_us": {
                    "count": r.len(),
                    "p50": r.percentile_us(0.5),
                    "p90": r.percentile_us(0.9),
                    "p99": r.percentile_us(0.99),
                    "p99_9": r.percentile_us(0.999),
                    "max": r.max_us(),
                },
                "errors": errors,
                "connections_up": up,
            });
            let written = writeln!(out, "{obj}").and_then(|()| out.flush());
            self.json_lines_failed(written);
        }
    }

    /// A failed write stops the JSON lines (said once), not the run.
    fn json_lines_failed(&mut self, written: io::Result<()>) {
        if let Err(e) = written {
            let name = self.json_lines_name.as_deref().unwrap_or("-");
            errln!("echoloop: --json-lines {name}: {e}; nothing more is written there");
            self.json_lines = None;
        }
    }

    /// Ends the progress line, and writes the final report as the last JSON line if
    /// there are JSON lines (an empty report: the run failed, there is none).
    pub(super) fn finish(&mut self, report_json: &str) {
        if self.terminal && self.drawn {
            errln!();
            self.drawn = false;
        }
        if report_json.is_empty() {
            return;
        }
        if let Some(out) = &mut self.json_lines {
            let written = writeln!(out, "{report_json}").and_then(|()| out.flush());
            self.json_lines_failed(written);
        }
    }
}

/// Seconds since the Unix epoch.
pub(super) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `--hlog` interval log: tags `rtt`, `connect` and, in open loop,
/// `rtt_uncorrected`; values in microseconds. `BaseTime` is when connecting began, so the
/// connect phase is the first interval (tag `connect`) and the window's intervals follow.
/// `StartTime` is the same instant: HdrHistogram's own readers skip every interval that
/// starts before it, so it cannot be the window's start (the connect interval comes
/// first, and float rounding can put the first window interval a hair before it); the
/// window is in the report line. A comment line starting `#echoloop ` at the top
/// says what was measured, and one starting `#echoloop-report ` at the end holds the final
/// report: `bench merge` reads both. Written through a [`io::LineWriter`], so a log of a
/// long run can be read (or plotted) while it grows.
pub(super) struct Hlog<'a, 'b, W: Write> {
    log: IntervalLogWriter<'a, 'b, W, V2DeflateSerializer>,
    base: Instant,
    open_loop: bool,
}

/// A log line's tag (the constants are valid tags: no commas or spaces).
fn tag(name: &'static str) -> Option<Tag<'static>> {
    Tag::new(name)
}

impl<'a, 'b, W: Write> Hlog<'a, 'b, W> {
    /// Writes the headers: `meta` is the `#echoloop` line's JSON.
    pub(super) fn begin(
        out: &'a mut W,
        serializer: &'b mut V2DeflateSerializer,
        base: (Instant, SystemTime),
        meta: &str,
        open_loop: bool,
    ) -> io::Result<Hlog<'a, 'b, W>> {
        let log = IntervalLogWriterBuilder::new()
            .add_comment("Latency intervals of `echoloop bench`: values in microseconds")
            .add_comment(&format!("echoloop {meta}"))
            .with_start_time(base.1)
            .with_base_time(base.1)
            .begin_log_with(out, serializer)?;
        Ok(Hlog {
            log,
            base: base.0,
            open_loop,
        })
    }

    /// One histogram line.
    fn line(
        &mut self,
        r: &Recorder,
        start: Instant,
        end: Instant,
        name: &'static str,
    ) -> io::Result<()> {
        let from = start.saturating_duration_since(self.base);
        let length = end.saturating_duration_since(start);
        self.log
            .write_histogram(&r.to_micros(), from, length, tag(name))
            .map_err(|e| match e {
                IntervalLogWriterError::IoError(e) => e,
                other => io::Error::other(other.to_string()),
            })
    }

    /// The connects before traffic started, as one interval.
    pub(super) fn connect_phase(&mut self, r: &Recorder, until: Instant) -> io::Result<()> {
        self.line(r, self.base, until, "connect")
    }

    /// One merged interval of the window (warm-up intervals are left out).
    pub(super) fn interval(&mut self, iv: &Interval) -> io::Result<()> {
        if iv.warmup {
            return Ok(());
        }
        self.line(&iv.rtt, iv.start, iv.end, "rtt")?;
        if self.open_loop {
            self.line(&iv.rtt_uncorrected, iv.start, iv.end, "rtt_uncorrected")?;
        }
        self.line(&iv.connect, iv.start, iv.end, "connect")
    }

    /// The final report, as the last line.
    pub(super) fn finish(&mut self, report_json: &str) -> io::Result<()> {
        self.log
            .write_comment(&format!("echoloop-report {report_json}"))
    }
}

/// How long the go message may take to reach every thread: traffic starts this long
/// after the last thread is connected, so that all start at the same instant.
pub(super) const GO_MARGIN: Duration = Duration::from_millis(20);
