//! `echoloop bench merge FILE...`: one report from the reports (or interval logs) of
//! several generators that measured one run together (`--segment`, `--start-at`).
//!
//! Totals are summed; latency histograms are added — percentiles are never averaged,
//! since the p99 of two runs is not the mean of their p99s. The window is the one every
//! generator measured: the overlap of theirs. From JSON reports, each generator's whole
//! window counts (with `--start-at` they coincide); from `--hlog` logs, only the
//! intervals inside the overlap do. Inputs that do not belong together are refused,
//! naming the files and what differs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry, LogIteratorError};

use crate::cli::bench::recorder::{Recorder, decode_histogram};
use crate::cli::bench::report::{GeneratorRow, Histograms, LatencySummary, Report, SegmentInfo};
use crate::cli::common::CliError;

/// Arguments of `echoloop bench merge`.
#[derive(Debug, clap::Args)]
pub(super) struct MergeArgs {
    /// Final reports written with `bench --json`, or interval logs written with `--hlog`.
    #[arg(value_name = "FILE", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Print the merged report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One histogram line of an interval log.
struct LogInterval {
    tag: String,
    /// Unix time in seconds.
    start: f64,
    length: f64,
    /// Values in microseconds.
    hist: Histogram<u64>,
}

/// One generator's contribution.
struct Part {
    source: String,
    report: Report,
    /// `None` for a JSON report; the intervals for a log.
    log: Option<Vec<LogInterval>>,
}

fn read_part(path: &PathBuf) -> Result<Part, CliError> {
    let part = read_part_unchecked(path)?;
    check_part(&part)?;
    Ok(part)
}

/// What a report must hold to be merged, whoever wrote the file: a segment that
/// `--segment` could have given, and a window of real, ordered instants.
fn check_part(p: &Part) -> Result<(), CliError> {
    let r = &p.report;
    let seg = &r.segment;
    if seg.count == 0 || seg.index >= seg.count {
        return Err(format!(
            "{}: segment {}/{} is not one --segment gives (I must be below N, N at least 1)",
            p.source, seg.index, seg.count
        )
        .into());
    }
    let (a, b) = (r.window_start_unix, r.window_end_unix);
    if !(a.is_finite() && b.is_finite() && a >= 0.0 && b > a) {
        return Err(format!(
            "{}: its measured window ({a}..{b}) is not a span of Unix time",
            p.source
        )
        .into());
    }
    // Figures no run can produce are damage (or a hand-made file), not data: a 1 ns
    // window would make 82 trillion messages a second of a few thousand.
    let span = b - a;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&span) {
        return Err(format!(
            "{}: a measured window of {span} s; bench measures from {MIN_WINDOW} s to 30 days",
            p.source
        )
        .into());
    }
    let percents = [
        ("generator_cpu_percent", r.generator_cpu_percent),
        ("server_cpu_percent", r.server_cpu_percent),
    ];
    for (name, v) in percents {
        if let Some(v) = v.filter(|v| !(v.is_finite() && (0.0..=MAX_CPU_PERCENT).contains(v))) {
            return Err(format!(
                "{}: {name} {v} is not a CPU share (0 to {MAX_CPU_PERCENT}: 100 per core)",
                p.source
            )
            .into());
        }
    }
    let per_msg = [
        ("generator_cpu_us_per_msg", r.generator_cpu_us_per_msg),
        ("server_cpu_us_per_msg", r.server_cpu_us_per_msg),
    ];
    for (name, v) in per_msg {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!("{}: {name} {v} is not a time", p.source).into());
        }
    }
    Ok(())
}

/// The shortest and longest windows a bench run measures (its `--duration` bounds).
const MIN_WINDOW: f64 = 0.0001;
const MAX_WINDOW: f64 = 30.0 * 24.0 * 3600.0;
/// CPU shares are 100 per core; no generator has more than this many.
const MAX_CPU_PERCENT: f64 = 100.0 * 4096.0;

/// The largest input `merge` reads: an hour's `--hlog` with three tags a second is some
/// 25 MB; a file far larger than any run writes is refused before it is read into memory.
const MAX_INPUT: u64 = 256 << 20;

fn read_part_unchecked(path: &PathBuf) -> Result<Part, CliError> {
    let source = path.display().to_string();
    let text = read_bounded(path).map_err(|e| format!("{source}: {e}"))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        // The last line that is a report (a --json-lines file ends with one).
        let line = trimmed
            .lines()
            .rev()
            .find(|l| l.starts_with('{') && !l.contains(r#""type":"interval""#))
            .ok_or_else(|| {
                format!("{source}: interval lines but no final report (was the run cut short?)")
            })?;
        let report =
            Report::from_json(line).map_err(|e| format!("{source}: not a bench report: {e}"))?;
        return Ok(Part {
            source,
            report,
            log: None,
        });
    }
    read_log(source, &text)
}

/// Reads a regular file of at most [`MAX_INPUT`] bytes as text. A FIFO, a device
/// (`/dev/zero`) or a directory is refused by name, not read forever.
fn read_bounded(path: &PathBuf) -> Result<String, String> {
    use std::io::Read;
    // Looked at before opening: opening a FIFO for reading waits for a writer.
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (merge reads the files `bench` wrote)".into());
    }
    if meta.len() > MAX_INPUT {
        return Err(format!(
            "{} bytes, more than any bench run writes (at most {} MiB)",
            meta.len(),
            MAX_INPUT >> 20
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    // Bounded again while reading: the file may grow after the check.
    file.take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_INPUT {
        return Err(format!("more than {} MiB", MAX_INPUT >> 20));
    }
    Ok(text)
}

/// An interval log: the trailing `#echoloop-report` line and the histograms.
fn read_log(source: String, text: &str) -> Result<Part, CliError> {
    let report_line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("#echoloop-report "))
        .ok_or_else(|| {
            format!(
                "{source}: neither a JSON report nor an `echoloop bench --hlog` log with its \
                 final report line (was the run cut short?)"
            )
        })?;
    let report = Report::from_json(report_line)
        .map_err(|e| format!("{source}: the log's report line is damaged: {e}"))?;
    let mut base = 0.0;
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        let entry = entry.map_err(|LogIteratorError::ParseError { offset }| {
            // A byte offset, which need not fall on a character boundary: count bytes.
            let before = &text.as_bytes()[..offset.min(text.len())];
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            format!("{source}: not an interval log: cannot read line {line}")
        })?;
        match entry {
            LogEntry::BaseTime(d) => base = d.as_secs_f64(),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(iv) => {
                let hist = decode_histogram(iv.encoded_histogram())
                    .map_err(|e| format!("{source}: {e}"))?;
                intervals.push(LogInterval {
                    tag: iv.tag().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                    start: base + iv.start_timestamp().as_secs_f64(),
                    length: iv.duration().as_secs_f64(),
                    hist,
                });
            }
        }
    }
    Ok(Part {
        source,
        report,
        log: Some(intervals),
    })
}

/// Refuses inputs that are not parts of one run.
fn check_together(parts: &[Part]) -> Result<(f64, f64), CliError> {
    let first = &parts[0];
    let a = &first.report;
    for p in &parts[1..] {
        let b = &p.report;
        let differ = |what: &str, x: &dyn std::fmt::Display, y: &dyn std::fmt::Display| {
            format!(
                "{} and {} are not parts of one run: {what} {x} and {y}",
                first.source, p.source
            )
        };
        if a.transport != b.transport {
            return Err(differ("transports", &a.transport, &b.transport).into());
        }
        if a.payload != b.payload {
            return Err(differ("payloads", &a.payload, &b.payload).into());
        }
        if a.size != b.size {
            return Err(differ("message sizes", &a.size, &b.size).into());
        }
        if a.mode != b.mode {
            return Err(differ("load models", &a.mode, &b.mode).into());
        }
        if a.segment.count != b.segment.count {
            return Err(differ("segment counts", &a.segment.count, &b.segment.count).into());
        }
    }
    let count = a.segment.count;
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    for p in parts {
        let i = p.report.segment.index;
        if let Some(other) = seen.insert(i, &p.source) {
            return Err(format!(
                "segment {i}/{count} appears twice: {other} and {}",
                p.source
            )
            .into());
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !seen.contains_key(i))
        .map(|i| i.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "segment {} of 0..{count} missing: merge every generator's file of the run",
            missing.join(", ")
        )
        .into());
    }
    let start = parts
        .iter()
        .map(|p| p.report.window_start_unix)
        .fold(f64::MIN, f64::max);
    let end = parts
        .iter()
        .map(|p| p.report.window_end_unix)
        .fold(f64::MAX, f64::min);
    if end <= start {
        let windows: Vec<String> = parts
            .iter()
            .map(|p| {
                format!(
                    "{} {:.3}..{:.3}",
                    p.source, p.report.window_start_unix, p.report.window_end_unix
                )
            })
            .collect();
        return Err(format!(
            "the measured windows do not overlap (Unix seconds: {}); start the generators \
             with one --start-at",
            windows.join(", ")
        )
        .into());
    }
    Ok((start, end))
}

/// One part's histogram of one kind: whole from a report, the intervals inside `window`
/// from a log (`window` `None`: all of them). `None` when the part has none of that kind.
fn part_histogram(
    p: &Part,
    pick: impl Fn(&Histograms) -> Option<&String>,
    tag: &str,
    window: Option<(f64, f64)>,
) -> Result<Option<Recorder>, CliError> {
    match &p.log {
        None => {
            let Some(text) = p.report.histograms.as_ref().and_then(pick) else {
                return Ok(None);
            };
            let r = Recorder::decode(text).map_err(|e| format!("{}: {e}", p.source))?;
            Ok(Some(r))
        }
        Some(intervals) => {
            let mut out = Recorder::new();
            let mut any = false;
            for iv in intervals.iter().filter(|iv| iv.tag == tag) {
                any = true;
                let mid = iv.start + iv.length / 2.0;
                if window.is_none_or(|(s, e)| mid >= s && mid < e) {
                    out.add_micros(&iv.hist);
                }
            }
            Ok(any.then_some(out))
        }
    }
}

/// The histogram of one kind over every part; `None` unless every part has it.
fn gather(
    parts: &[Part],
    pick: impl Fn(&Histograms) -> Option<&String> + Copy,
    tag: &str,
    window: Option<(f64, f64)>,
) -> Result<Option<Recorder>, CliError> {
    let mut out = Recorder::new();
    for p in parts {
        match part_histogram(p, pick, tag, window)? {
            Some(r) => out.merge(&r),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// A report's totals cover its whole window, and cannot be cut to the common one: its
/// window must be the common one, give or take the clocks' and the start's jitter.
fn check_report_window(p: &Part, window: (f64, f64)) -> Result<(), CliError> {
    let r = &p.report;
    let tolerance = (0.02 * (window.1 - window.0)).max(0.05);
    let off = (r.window_start_unix - window.0)
        .abs()
        .max((r.window_end_unix - window.1).abs());
    if off > tolerance {
        return Err(format!(
            "{}: its window ({:.3}..{:.3}) is not the one the generators share \
             ({:.3}..{:.3}, {off:.3} s apart): the totals of a JSON report cover its whole \
             window; start the generators with one --start-at, or merge their --hlog logs, \
             which are cut to the shared window",
            p.source, r.window_start_unix, r.window_end_unix, window.0, window.1
        )
        .into());
    }
    Ok(())
}

fn too_big(p: &Part) -> CliError {
    format!("{}: its counts are too large to add up", p.source).into()
}

/// Merges the parts (already checked) over the common window.
fn merge(parts: &[Part], window: (f64, f64)) -> Result<Report, CliError> {
    for p in parts.iter().filter(|p| p.log.is_none()) {
        check_report_window(p, window)?;
    }
    let first = &parts[0].report;
    let duration = window.1 - window.0;
    let mut m = Report {
        mode: first.mode.clone(),
        transport: first.transport.clone(),
        idle_strategy: first.idle_strategy.clone(),
        payload: first.payload.clone(),
        size: first.size,
        segment: SegmentInfo {
            index: 0,
            count: first.segment.count,
        },
        duration_secs: duration,
        window_start_unix: window.0,
        window_end_unix: window.1,
        // One generator stopped early shortens the window they all measured.
        interrupted: parts.iter().any(|p| p.report.interrupted),
        ..Report::default()
    };
    let mut targets: Vec<&str> = parts.iter().map(|p| p.report.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    m.target = targets.join(", ");
    let mut rtt = Recorder::new();
    for p in parts {
        let r = &p.report;
        let own = part_histogram(p, |h| Some(&h.rtt), "rtt", Some(window))?.ok_or_else(|| {
            if p.log.is_some() {
                format!("{}: the log holds no rtt intervals to merge", p.source)
            } else {
                format!("{}: the report holds no histograms to merge", p.source)
            }
        })?;
        // From a log, what the shared window holds; from a report, its own totals.
        let (messages, sent, received) = match &p.log {
            Some(_) => {
                let n = own.len();
                let bytes = n.checked_mul(r.size).ok_or_else(|| too_big(p))?;
                (n, bytes, bytes)
            }
            None => (r.messages, r.bytes_sent, r.bytes_received),
        };
        rtt.merge(&own);
        // Counts from files anyone may have written: a sum past u64 is refused, not wrapped.
        for (total, x) in [
            (&mut m.messages, messages),
            (&mut m.bytes_sent, sent),
            (&mut m.bytes_received, received),
            (&mut m.connections_requested, r.connections_requested),
            (&mut m.connections_up, r.connections_up),
            (&mut m.connect_failures, r.connect_failures),
            (&mut m.verify_errors, r.verify_errors),
            (&mut m.timeouts, r.timeouts),
            (&mut m.lost, r.lost),
            (&mut m.late, r.late),
            (&mut m.duplicates, r.duplicates),
            (&mut m.wrong_source, r.wrong_source),
            (&mut m.closed_by_server, r.closed_by_server),
            (&mut m.broken, r.broken),
            (&mut m.unanswered, r.unanswered),
        ] {
            *total = total.checked_add(x).ok_or_else(|| too_big(p))?;
        }
        if let Some(x) = r.reconnects_per_sec {
            *m.reconnects_per_sec.get_or_insert(0.0) += x;
        }
        m.generators.push(GeneratorRow {
            segment: r.segment.index,
            source: p.source.clone(),
            msgs_per_sec: if duration > 0.0 {
                messages as f64 / duration
            } else {
                0.0
            },
            generator_cpu_percent: r.generator_cpu_percent,
        });
    }
    m.generators.sort_by_key(|g| g.segment);
    let uncorrected = gather(
        parts,
        |h| h.rtt_uncorrected.as_ref(),
        "rtt_uncorrected",
        Some(window),
    )?;
    let connect = gather(parts, |h| h.connect.as_ref(), "connect", None)?;
    // The server's cost, if a generator measured it: its CPU seconds over all messages.
    if let Some(r) = parts
        .iter()
        .map(|p| &p.report)
        .find(|r| r.server_cpu_percent.is_some())
    {
        let pct = r.server_cpu_percent.unwrap_or(0.0);
        m.server_cpu_percent = Some(pct);
        let secs = pct / 100.0 * r.duration_secs;
        m.server_cpu_us_per_msg = (m.messages > 0).then(|| secs * 1e6 / m.messages as f64);
    }
    m.server_peak_rss_kib = parts
        .iter()
        .filter_map(|p| p.report.server_peak_rss_kib)
        .max();
    m.latency = LatencySummary::from_recorder(&rtt);
    m.latency_uncorrected = uncorrected.as_ref().map(LatencySummary::from_recorder);
    m.connect_latency = connect.as_ref().map(LatencySummary::from_recorder);
    m.histograms = Some(Histograms {
        rtt: rtt.encode()?,
        rtt_uncorrected: uncorrected.map(|r| r.encode()).transpose()?,
        connect: connect.map(|r| r.encode()).transpose()?,
    });
    Ok(m)
}

/// Runs `bench merge`.
pub(super) fn run(args: &MergeArgs) -> Result<ExitCode, CliError> {
    let parts = args
        .files
        .iter()
        .map(read_part)
        .collect::<Result<Vec<_>, _>>()?;
    let window = check_together(&parts)?;
    let merged = merge(&parts, window)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", merged.to_json())?;
    } else {
        writeln!(out, "{merged}")?;
    }
    out.flush()?;
    // A window of at least a few milliseconds is what --start-at gives; less means the
    // generators barely ran together.
    if merged.duration_secs < Duration::from_millis(100).as_secs_f64() {
        errln!(
            "echoloop: the generators measured together for only {:.3} s",
            merged.duration_secs
        );
    }
    // As a single run would: wrong echoes, or none at all, fail.
    let mut code = ExitCode::SUCCESS;
    for (n, what) in [
        (merged.verify_errors, "echoes differed from what was sent"),
        (merged.wrong_source, "replies came from another address"),
    ] {
        if n > 0 {
            errln!("echoloop: {n} {what}");
            code = ExitCode::FAILURE;
        }
    }
    if merged.messages == 0 {
        errln!("echoloop: no echo completed in the shared window");
        code = ExitCode::FAILURE;
    }
    Ok(code)
}
