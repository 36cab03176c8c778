//! One measured run: load threads started, connected, given one timeline, and their
//! results gathered into a [`Report`], with the run's output files written. `bench`
//! makes one; an SLO search (`slo`) makes one per step.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;

use super::ctrl_c::CtrlC;
use super::model::{Counters, Timeline};
use super::progress::{GO_MARGIN, Hlog, Progress, unix_secs};
use super::recorder::Recorder;
use super::report::{Histograms, LatencySummary, Report, SegmentInfo, SendLag};
use super::settings::{Load, Settings};
use super::thread::{self, Msg, ThreadResult};
use crate::cli::common::{CliError, idle_strategy};
use crate::cli::procfs::{cpu_between, cpu_reading as cpu_sample, peak_rss_kib};

/// Where a run writes besides its report; each is opened before any load, so a bad path
/// costs nothing.
#[derive(Default)]
pub(super) struct Outputs {
    /// `--json-lines`: a line per interval, then the report; with its name.
    pub(super) json_lines: Option<Box<dyn Write>>,
    pub(super) json_lines_name: Option<String>,
    /// `--hgrm`: the percentile distribution at the end.
    pub(super) hgrm: Option<(File, PathBuf)>,
    /// `--hlog`: the interval log.
    pub(super) hlog: Option<(io::LineWriter<File>, PathBuf)>,
}

/// What a run measured.
pub(super) struct Measured {
    pub(super) report: Report,
    /// The report as JSON (already written to `--json-lines` and `--hlog`).
    pub(super) json: String,
    pub(super) c: Counters,
    pub(super) first_error: Option<String>,
    /// Ctrl-C cut the window short.
    pub(super) interrupted: bool,
    /// The window's round trips, whole and in its two halves.
    pub(super) rtt: Recorder,
    pub(super) halves: [Recorder; 2],
    /// Open loop: round trips from when messages went out.
    pub(super) rtt_uncorrected: Option<Recorder>,
}

/// An output file failed mid-run: said once; the run and its report go on without it.
pub(super) fn log_lost(option: &str, path: Option<&std::path::Path>, e: &io::Error) {
    let name = path.map_or_else(|| "-".to_owned(), |p| p.display().to_string());
    errln!("echoloop: {option} {name}: {e}; nothing more is written there");
}

/// Runs the load as `s` says, writing `out`; `None` when Ctrl-C came before the window
/// (nothing measured). Progress goes to stderr as it runs.
pub(super) fn measure(
    s: &Arc<Settings>,
    out: Outputs,
    ctrl_c: &CtrlC,
) -> Result<Option<Measured>, CliError> {
    let run_start = Instant::now();
    let run_start_wall = SystemTime::now();
    let (tx, rx) = mpsc::channel();
    let _watch = ctrl_c.watch(tx.clone());
    let mut handles = Vec::new();
    for t in 0..s.threads {
        let slots: Vec<usize> = (t..s.connections).step_by(s.threads).collect();
        let s = Arc::clone(s);
        let tx = tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("echoloop-bench-{t}"))
            .spawn(move || {
                let r = thread::drive(t, s, run_start, slots, &tx);
                let _ = tx.send(Msg::Done(t, Box::new(r)));
            })?;
        handles.push(h);
    }
    drop(tx);

    let Some(Started {
        mut tl,
        window_start,
        mut connect_phase,
        senders,
    }) = go(s, &rx, run_start)?
    else {
        return Ok(None);
    };
    let mut interrupted = false;
    let mut serializer = V2DeflateSerializer::new();
    let meta = serde_json::json!({
        "transport": s.transport.name(),
        "target": s.target_text,
        "mode": s.mode(),
        "payload": s.payload.name(),
        "size": s.size,
        "segment": {"index": s.segment.index, "count": s.segment.count},
        "window_start_unix": unix_secs(window_start),
        "window_end_unix": unix_secs(window_start + s.duration),
    })
    .to_string();
    let Outputs {
        json_lines,
        json_lines_name,
        hgrm,
        hlog,
    } = out;
    let (mut hlog_file, hlog_path) = match hlog {
        Some((f, p)) => (Some(f), Some(p)),
        None => (None, None),
    };
    let mut hlog = match hlog_file.as_mut() {
        Some(f) => {
            // A write that fails here (a full disk) is said with the option's name, and
            // the run goes on without the log, as for any later failure.
            let begun = Hlog::begin(
                f,
                &mut serializer,
                (run_start, run_start_wall),
                &meta,
                s.is_open_loop(),
            )
            .and_then(|mut h| h.connect_phase(&connect_phase, tl.start).map(|()| h));
            match begun {
                Ok(h) => Some(h),
                Err(e) => {
                    log_lost("--hlog", hlog_path.as_deref(), &e);
                    None
                }
            }
        }
        None => None,
    };
    let mut progress = Progress::new(s.threads, tl, json_lines, json_lines_name);
    // The window's two halves, for a step of an SLO search to see whether latency was
    // still rising through it.
    let mut halves = [Recorder::new(), Recorder::new()];

    let own = std::process::id();
    let (mut cpu_start, mut cpu_end) = (None, None);
    let (mut server_start, mut server_end) = (None, None);
    let mut results: Vec<Option<ThreadResult>> = (0..s.threads).map(|_| None).collect();
    let mut remaining = s.threads;
    // Threads stop by themselves at grace_end plus a bounded close; this only guards
    // against a bug hanging the run.
    let mut give_up = tl.grace_end + Duration::from_secs(10);
    while remaining > 0 {
        let now = Instant::now();
        if cpu_start.is_none() && now >= tl.measure_start {
            cpu_start = cpu_sample(own);
            server_start = s.server_pid.and_then(cpu_sample);
        }
        if cpu_end.is_none() && now >= tl.end {
            cpu_end = cpu_sample(own);
            server_end = s.server_pid.and_then(cpu_sample);
        }
        let wake = if cpu_start.is_none() {
            tl.measure_start
        } else if cpu_end.is_none() {
            tl.end
        } else {
            give_up
        };
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Interval {
                thread,
                iv,
                errors,
                up,
            }) => {
                if let Some(iv) = progress.add(thread, *iv, errors, up) {
                    if !iv.warmup {
                        let mid = tl.measure_start + (tl.end - tl.measure_start) / 2;
                        halves[usize::from(iv.start >= mid)].merge(&iv.rtt);
                    }
                    if let Some(Err(e)) = hlog.as_mut().map(|h| h.interval(&iv)) {
                        // The run goes on, and its report still comes: only the log stops.
                        log_lost("--hlog", hlog_path.as_deref(), &e);
                        hlog = None;
                    }
                }
            }
            Ok(Msg::Done(t, r)) => {
                let r = r.inspect_err(|_| {
                    progress.finish("");
                })?;
                results[t] = Some(r);
                remaining -= 1;
            }
            Ok(Msg::Connected { .. }) => {}
            Ok(Msg::Interrupted) => {
                let cut = cut_short(tl, Instant::now());
                // After the window (in the grace for the last echoes) there is nothing to
                // cut: the run ends as it would have.
                if cut.end < tl.end {
                    interrupted = true;
                    tl = cut;
                    give_up = tl.grace_end + Duration::from_secs(10);
                    progress.cut_short(tl);
                    for tx in &senders {
                        // Each thread took the first timeline long ago: room for this one.
                        let _ = tx.try_send(tl);
                    }
                    errln!(
                        "echoloop: interrupted: the window ends now; the report follows \
                         (Ctrl-C again to quit at once)"
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= give_up {
                    return Err("the load threads did not finish".into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // On a loaded machine this thread may first run again only when the load threads are
    // done, past the window's end: take the missing reading now rather than report none.
    if cpu_start.is_none() {
        cpu_start = cpu_sample(own);
        server_start = s.server_pid.and_then(cpu_sample);
    }
    if cpu_end.is_none() {
        cpu_end = cpu_sample(own);
        server_end = s.server_pid.and_then(cpu_sample);
    }
    let server_rss = s.server_pid.and_then(|p| peak_rss_kib(p).ok());
    if let Some(pid) = s.server_pid {
        if server_start.is_none() || server_end.is_none() || server_rss.is_none() {
            // Checked at the start, gone by the end: the report's server figures are empty,
            // and a benchmarker must not mistake that for "not asked".
            errln!(
                "echoloop: --server-pid {pid}: the process could not be read at the window's {} \
                 (did it exit?); the server's CPU and memory are left out of the report",
                if server_start.is_none() {
                    "start"
                } else {
                    "end"
                }
            );
        }
    }
    for h in handles {
        if h.join().is_err() {
            return Err("a load thread panicked".into());
        }
    }
    if results.iter().any(Option::is_none) {
        return Err("a load thread ended without a result".into());
    }

    let mut c = Counters::default();
    let mut first_error = None;
    let mut send_lag = Recorder::new();
    // Each thread read its own CPU time at the window's edges (one that could not is
    // left out, not guessed).
    let thread_cpu: Vec<f64> = results
        .iter()
        .flatten()
        .filter_map(|r| r.cpu_percent)
        .collect();
    // Busy: on a core or waiting for one. A generator that never idles is the limit
    // even when another process keeps it off its core part of the time; where the
    // kernel does not say, the CPU share stands in.
    let thread_busy: Vec<f64> = results
        .iter()
        .flatten()
        .filter_map(|r| r.busy_percent.or(r.cpu_percent))
        .collect();
    for r in results.into_iter().flatten() {
        c.add(&r.c);
        send_lag.merge(&r.send_lag);
        connect_phase.merge(&r.connect_phase);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let totals = &progress.totals;
    let connect = if matches!(s.load, Load::Reconnect) {
        totals.connect_window.clone()
    } else {
        let mut all = connect_phase;
        all.merge(&totals.connect_warmup);
        all.merge(&totals.connect_window);
        all
    };
    let per_msg = |secs: f64| (c.messages > 0).then(|| secs * 1e6 / c.messages as f64);
    let lag_p50 = (!send_lag.is_empty()).then(|| send_lag.percentile_us(0.5));
    let saturation_note = saturation(s, &thread_busy, lag_p50);
    let own_cpu = cpu_between(cpu_start, cpu_end);
    let server_cpu = cpu_between(server_start, server_end);
    // The window measured: shorter than asked when Ctrl-C cut it.
    let window = tl.end.saturating_duration_since(tl.measure_start);
    let duration_secs = window.as_secs_f64();
    let encode = |r: &Recorder| match r.encode() {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("{e}");
            None
        }
    };
    let histograms = encode(&totals.rtt).map(|rtt| Histograms {
        rtt,
        rtt_uncorrected: if s.is_open_loop() {
            encode(&totals.rtt_uncorrected)
        } else {
            None
        },
        connect: if s.transport.is_stream() {
            encode(&connect)
        } else {
            None
        },
    });
    let report = Report {
        mode: s.mode(),
        transport: s.transport.name().to_owned(),
        target: s.target_text.clone(),
        idle_strategy: idle_strategy(s.busy_poll),
        payload: s.payload.name().to_owned(),
        size: s.size as u64,
        size_mix: (!s.sizes.is_fixed()).then(|| s.sizes.to_string()),
        mean_size: (!s.sizes.is_fixed()).then(|| s.sizes.mean()),
        segment: SegmentInfo {
            index: s.segment.index,
            count: s.segment.count,
        },
        connections_requested: s.connections as u64,
        connections_up: c.connects_ok,
        connect_failures: c.connect_failures,
        duration_secs,
        window_start_unix: unix_secs(window_start),
        window_end_unix: unix_secs(window_start + window),
        interrupted,
        messages: c.messages,
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        verify_errors: c.verify_errors,
        timeouts: c.timeouts,
        lost: c.lost,
        late: c.late,
        duplicates: c.duplicates,
        wrong_source: c.wrong_source,
        closed_by_server: c.closed_by_server,
        broken: c.broken,
        unanswered: c.unanswered,
        latency: LatencySummary::from_recorder(&totals.rtt),
        latency_uncorrected: s
            .is_open_loop()
            .then(|| LatencySummary::from_recorder(&totals.rtt_uncorrected)),
        connect_latency: s
            .transport
            .is_stream()
            .then(|| LatencySummary::from_recorder(&connect)),
        reconnects_per_sec: match s.load {
            Load::Reconnect => Some(c.opened_in_window as f64 / duration_secs),
            _ => None,
        },
        generator_cpu_percent: own_cpu.map(|(pct, _)| pct),
        generator_cpu_us_per_msg: own_cpu.and_then(|(_, secs)| per_msg(secs)),
        generator_thread_cpu_percent: thread_cpu,
        generator_thread_busy_percent: thread_busy,
        send_lag_us: (s.is_open_loop() && !send_lag.is_empty()).then(|| SendLag {
            p50: send_lag.percentile_us(0.5),
            p99: send_lag.percentile_us(0.99),
            max: send_lag.max_us(),
        }),
        generator_saturated: saturation_note.is_some(),
        generator_note: saturation_note,
        server_cpu_percent: server_cpu.map(|(pct, _)| pct),
        server_cpu_us_per_msg: server_cpu.and_then(|(_, secs)| per_msg(secs)),
        server_peak_rss_kib: server_rss,
        generators: Vec::new(),
        histograms,
    };
    if c.messages != report.latency.count {
        // Both count the window's echoes by their completion time; a difference is a bug.
        log::warn!(
            "{} messages but {} latency samples",
            c.messages,
            report.latency.count
        );
    }
    if let Some((f, path)) = hgrm {
        let write = || -> io::Result<()> {
            let mut f = io::BufWriter::new(f);
            totals.rtt.write_hgrm(&mut f)?;
            f.flush()
        };
        // The report still goes out: the run is not lost with the file.
        if let Err(e) = write() {
            errln!("echoloop: cannot write {}: {e}", path.display());
        }
    }
    let json = report.to_json();
    if let Some(h) = &mut hlog {
        if let Err(e) = h.finish(&json) {
            log_lost("--hlog", hlog_path.as_deref(), &e);
        }
    }
    drop(hlog);
    let rtt = totals.rtt.clone();
    let rtt_uncorrected = s.is_open_loop().then(|| totals.rtt_uncorrected.clone());
    progress.finish(&json);
    Ok(Some(Measured {
        rtt,
        report,
        json,
        c,
        first_error,
        interrupted,
        halves,
        rtt_uncorrected,
    }))
}

/// Waits until every thread is connected, then fixes the timeline and sends it to them.
/// Returns it with the connect phase's latencies; `None` when Ctrl-C came first.
fn go(
    s: &Settings,
    rx: &mpsc::Receiver<Msg>,
    run_start: Instant,
) -> Result<Option<Started>, CliError> {
    let mut senders = Vec::new();
    let mut connect_phase = Recorder::new();
    // A thread announces itself after every first attempt ended. The ramp and the
    // connect timeout bound that: at worst (every SYN dropped) each batch of
    // MAX_CONNECTING connects takes the whole timeout. This only guards against a bug.
    let ramp = s
        .connect_rate
        .map_or(0.0, |r| s.connections as f64 / r.max(1e-9));
    let per_thread = s.connections.div_ceil(s.threads.max(1));
    let batches = per_thread.div_ceil(thread::MAX_CONNECTING) as f64;
    // At most a year: an Instant that far ahead is always representable.
    let bound = (ramp + batches * s.connect_timeout.as_secs_f64() + 30.0).min(3.2e7);
    let give_up = run_start + Duration::from_secs_f64(bound);
    while senders.len() < s.threads {
        let wait = give_up.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Connected { go, phase }) => {
                connect_phase.merge(&phase);
                senders.push(go);
            }
            Ok(Msg::Done(_, r)) => {
                (*r)?;
                return Err("a load thread ended while connecting".into());
            }
            Ok(Msg::Interval { .. }) => {}
            Ok(Msg::Interrupted) => {
                // Nothing is measured yet, so there is no report to keep.
                errln!(
                    "echoloop: interrupted while connecting ({} of {} load threads ready); \
                     nothing was measured",
                    senders.len(),
                    s.threads
                );
                return Ok(None);
            }
            Err(_) => return Err("the load threads did not finish connecting".into()),
        }
    }
    let now = Instant::now();
    let wall = SystemTime::now();
    let earliest = now + GO_MARGIN + s.warmup;
    let measure_start = match s.start_at {
        None => earliest,
        Some(at) => {
            // How far after the asked-for instant the window can start at the earliest
            // (negative: it is still ahead).
            let ahead = match at.duration_since(wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            let late = (earliest - now).as_secs_f64() - ahead;
            if late <= 0.0 {
                now + Duration::from_secs_f64(ahead)
            } else {
                log::warn!(
                    "connecting (and the warm-up) took until after --start-at: the window \
                     starts {late:.3} s late, so it is not the one other generators measure"
                );
                earliest
            }
        }
    };
    let tl = Timeline::new(measure_start - s.warmup, s);
    let window_start = wall + measure_start.saturating_duration_since(now);
    for tx in &senders {
        // Capacity one, sent once (and once more if Ctrl-C cuts the window); the thread
        // only closes it by ending, which it reports with Done.
        let _ = tx.try_send(tl);
    }
    Ok(Some(Started {
        tl,
        window_start,
        connect_phase,
        senders,
    }))
}

/// What [`go`] started: the timeline, the wall-clock instant the window starts, the
/// connect phase's latencies, and where to send a changed timeline.
struct Started {
    tl: Timeline,
    window_start: SystemTime,
    connect_phase: Recorder,
    senders: Vec<echoloop::Sender<Timeline>>,
}

/// Whether the generator itself, not the server, may have set the figures, and in what
/// words to say so.
///
/// * Closed loop: a load thread was busy (`thread_busy`: on a core or waiting for one)
///   for nearly the whole window. Not with `--busy-poll`, whose threads spin by design.
/// * Open loop: the median send left later than a connection's interval between sends,
///   so due messages queued up on our side. Busy time says nothing here: the loop polls
///   without sleeping for the last stretch before each due send (`precise`), which at
///   high rates is all the time, by choice.
fn saturation(s: &Settings, thread_busy: &[f64], lag_p50_us: Option<f64>) -> Option<String> {
    const BUSY: f64 = 90.0;
    match s.load {
        Load::Open { interval, .. } => {
            let interval_us = interval * 1e6;
            let p50 = lag_p50_us?;
            (p50 > interval_us).then(|| {
                format!(
                    "half the sends left more than {p50:.0} µs late, longer than a \
                     connection's {interval_us:.0} µs between sends: the generator fell \
                     behind its schedule, so the latency includes its own backlog; use more \
                     --threads, a generator on another machine, or several generators \
                     (--segment)"
                )
            })
        }
        _ if s.busy_poll.is_some() => None,
        _ => {
            let (i, &busy) = thread_busy
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))?;
            (busy >= BUSY).then(|| {
                format!(
                    "load thread {i} was busy (on a core or waiting for one) {busy:.0}% of \
                     the window: the generator was the likely limit, not the server; use \
                     more --threads, a generator on another machine, or several generators \
                     (--segment)"
                )
            })
        }
    }
}

/// The window cut short at `now` (or, in the warm-up, where it was to start: then it is
/// empty); the grace for the last echoes stays as long as it was.
fn cut_short(tl: Timeline, now: Instant) -> Timeline {
    let end = now.clamp(tl.measure_start, tl.end);
    Timeline {
        end,
        grace_end: end + tl.grace_end.saturating_duration_since(tl.end),
        ..tl
    }
}
