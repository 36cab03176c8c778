//! `echoloop bench`: an echo load generator built on the library's own reactor.
//!
//! # Shape
//!
//! `--threads T` threads each run one [`echoloop::EventLoop`] with every T-th connection of
//! the run (`thread`). A stream connection (TCP, TLS, Unix) is a `stream` handler; a
//! datagram "connection" (UDP, Unix datagram) is one socket with a `dgram` handler.
//! The handlers of one thread share the settings (`settings`) and a random template
//! their payloads are cut from (`pattern`), and count into the thread's loop state.
//! Each thread hands finished intervals to the main thread, which merges them into the
//! progress line, `--json-lines` and `--hlog` (`progress`), and at the end into the
//! report (`report`: its text and JSON). The latency histograms behind all of these, and
//! their codec, are `recorder`'s.
//! The command line's `procfs` reads CPU time and memory (the generator's, and
//! `--server-pid`'s); `merge` joins the reports of several generators. The arguments are
//! in `args`, the thread's state model in `model`.
//!
//! # Load models
//!
//! * Closed loop (default): each connection keeps `--pipeline K` messages in flight; each
//!   complete echo records its round trip and sends the next message in the same callback.
//! * Open loop (`--rate R`): each of the N connections sends one message every N/R seconds
//!   (staggered so the total is smooth), driven by a per-connection timer. Latency counts
//!   from the moment a message was *due*, not when it went out, so a slow server cannot
//!   hide its stalls by delaying our sends (coordinated omission); the uncorrected figure
//!   is reported beside it. Sends leave within microseconds of when they are due, not
//!   the poll timeout's milliseconds (`precise`), and how late they left is reported
//!   (`send lag`). A connection whose schedule is over closes and stays closed.
//! * `--reconnect`: connect (plus TLS handshake), one echo, graceful close, repeat.
//!
//! # Timeline
//!
//! connect everything → go (`--start-at`, or at once) → `--warmup` → measured window →
//! grace (`--timeout`, for the last echoes) → stop. No message is sent before every
//! connection has been tried once, so a slow connect phase (`-c 17000`) cannot eat the
//! window. Round trips, bytes and losses count only inside the window; everything else
//! that can go wrong (verify errors, connect failures, timeouts, closes by the server,
//! broken connections, late, duplicated and misaddressed datagrams) for the whole run. Connect latency covers the
//! connect phase and the run, or with `--reconnect` only the window.
//!
//! # Several generators
//!
//! `--segment I/N` makes this generator one of N: it opens its share of `--connections`,
//! sends its share of `--rate`, and I is mixed into every payload. With `--start-at` the
//! N generators (on N machines, clocks kept by NTP) measure the same window, and
//! `echoloop bench merge` adds their histograms.
//!
//! # Ctrl-C
//!
//! The first SIGINT ends the measured window at once; the last echoes get their grace, and
//! the report (marked `interrupted`, with the window's real length) and every output file
//! are completed as after a normal end. The second exits at once. Before the window
//! (while connecting) there is nothing to report, and the first one exits.
//!
//! # Exit status
//!
//! 130 after Ctrl-C; else 0 after a run; 1 when an echo failed verification, a reply came from the wrong
//! address, or no echo completed in the window (the report is printed all the same), or
//! for bad input (nothing is sent then).

#[cfg(test)]
mod alloc_test;
mod args;
mod ctrl_c;
mod dgram;
mod merge;
mod model;
mod pattern;
mod plot;
mod precise;
mod progress;
pub mod recorder;
pub mod report;
mod run;
mod runs;
mod settings;
mod sizes;
mod slo;
mod stream;
mod thread;

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;

use super::common::{CliError, init_logging};
use super::units;
pub use args::BenchArgs;
use args::BenchCommand;
use ctrl_c::{CtrlC, INTERRUPTED};
use run::{Measured, Outputs, measure};
use settings::Settings;

/// Opens where the JSON lines go: `-` is standard output.
fn open_json_lines(spec: &str) -> Result<Box<dyn Write>, CliError> {
    if spec == "-" {
        return Ok(Box::new(io::stdout()));
    }
    let f = File::create(spec).map_err(|e| format!("--json-lines {spec}: {e}"))?;
    Ok(Box::new(io::BufWriter::new(f)))
}

/// Opens the run's output files, before any load, so a bad path costs nothing.
fn open_outputs(args: &BenchArgs) -> Result<Outputs, CliError> {
    Ok(Outputs {
        json_lines: args
            .json_lines
            .as_deref()
            .map(open_json_lines)
            .transpose()?,
        json_lines_name: args.json_lines.clone(),
        hgrm: match &args.hgrm {
            Some(p) => Some((
                File::create(p).map_err(|e| format!("--hgrm {}: {e}", p.display()))?,
                p.clone(),
            )),
            None => None,
        },
        hlog: match &args.hlog {
            Some(p) => Some((
                io::LineWriter::new(
                    File::create(p).map_err(|e| format!("--hlog {}: {e}", p.display()))?,
                ),
                p.clone(),
            )),
            None => None,
        },
    })
}

/// `--runs N`: the run N times, then the median and range of each figure. Per-run files
/// are refused (N runs would overwrite them); a verify error in any run fails the whole.
fn run_several(args: &BenchArgs) -> Result<ExitCode, CliError> {
    let refused = [
        (args.json_lines.is_some(), "--json-lines"),
        (args.hlog.is_some(), "--hlog"),
        (args.hgrm.is_some(), "--hgrm"),
        (args.plot.is_some(), "--plot"),
        (args.segment.is_some(), "--segment"),
        (args.start_at.is_some(), "--start-at"),
    ];
    if let Some((_, what)) = refused.iter().find(|(given, _)| *given) {
        return Err(format!("--runs does not go with {what} (one file or window per run)").into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let s = Arc::new(Settings::from_args(args)?);
    let ctrl_c = CtrlC::install()?;
    let mut reports = Vec::new();
    let (mut wrong, mut interrupted) = (false, false);
    for i in 0..args.runs {
        if ctrl_c.pressed() {
            interrupted = true;
            break;
        }
        errln!("echoloop: run {} of {}", i + 1, args.runs);
        let Some(m) = measure(&s, Outputs::default(), &ctrl_c)? else {
            interrupted = true;
            break;
        };
        wrong |= m.c.verify_errors > 0 || m.c.wrong_source > 0 || m.c.messages == 0;
        interrupted |= m.interrupted;
        reports.push(m.report);
        if interrupted {
            break;
        }
    }
    let summary = runs::summarise(&reports);
    let mut out = io::stdout().lock();
    if args.json {
        let runs: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| serde_json::from_str(&r.to_json()).unwrap_or(serde_json::Value::Null))
            .collect();
        let figures: serde_json::Map<String, serde_json::Value> = summary
            .figures
            .iter()
            .map(|(name, s)| (name.clone(), serde_json::json!(s)))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "runs": runs, "summary": figures, "interrupted": interrupted })
        )?;
    } else {
        for (i, r) in reports.iter().enumerate() {
            writeln!(out, "run {}\n{r}\n", i + 1)?;
        }
        write!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(if interrupted {
        ExitCode::from(INTERRUPTED)
    } else if wrong {
        errln!("echoloop: a run had wrong echoes or none (see its report)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `--plot` after a search: the distribution at the best rate with the bound to `path`,
/// and the percentile by offered rate to `path` with `-rates` before its extension. A
/// plot that cannot be written is said; the result stands.
fn draw_search(path: &std::path::Path, objective: args::Slo, r: &slo::Search) {
    let name = objective.name();
    if let Some(rtt) = &r.best_rtt {
        let title = format!(
            "latency at {}/s, the best rate with {name} within the bound",
            units::format_count(r.max_rate.unwrap_or(0.0))
        );
        let series = [plot::Series {
            label: "corrected (from when due)".to_owned(),
            rtt,
        }];
        if let Err(e) = plot::distribution(path, &title, &series, Some(r.bound_us)) {
            errln!("echoloop: {e}");
        }
    }
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into());
    let rates = path.with_file_name(format!("{stem}-rates.svg"));
    let points: Vec<plot::RatePoint> = r
        .steps
        .iter()
        .map(|s| (s.offered_rate, s.value_us, s.passed))
        .collect();
    if let Err(e) = plot::search(&rates, &name, &points, r.bound_us, r.max_rate) {
        errln!("echoloop: {e}");
    }
}

/// `--slo`: the search (see `slo`), with the options it cannot take refused by name.
fn run_search(args: &BenchArgs) -> Result<ExitCode, CliError> {
    let Some(objective) = args.slo else {
        return Err("no --slo given".into());
    };
    let refused = [
        (args.pipeline != 1, "--pipeline (a search runs open loop)"),
        (args.reconnect, "--reconnect (a search runs open loop)"),
        (
            args.segment.is_some(),
            "--segment (one generator searches alone)",
        ),
        (
            args.start_at.is_some(),
            "--start-at (each step starts when the last ends)",
        ),
        (
            args.json_lines.is_some(),
            "--json-lines (a search is many runs)",
        ),
        (args.hlog.is_some(), "--hlog (a search is many runs)"),
        (args.hgrm.is_some(), "--hgrm (a search is many runs)"),
    ];
    if let Some((_, what)) = refused.iter().find(|(given, _)| *given) {
        return Err(format!("--slo does not go with {what}").into());
    }
    if args.max_steps == 0 {
        return Err("--max-steps must be at least 1".into());
    }
    if args.step_duration < std::time::Duration::from_millis(100) {
        return Err("--step-duration must be at least 100ms".into());
    }
    let base = Settings::from_args(args)?;
    let ctrl_c = CtrlC::install()?;
    let start = args.rate.unwrap_or(slo::DEFAULT_START);
    let (result, clean) = slo::search(
        &base,
        objective,
        start,
        args.step_duration,
        args.max_steps,
        args.json,
        &ctrl_c,
    )?;
    let line = slo::summary(objective, &result);
    if let Some(path) = &args.plot {
        draw_search(path, objective, &result);
    }
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "slo": result, "summary": line })
        )?;
    } else {
        if result.interrupted {
            writeln!(out, "interrupted: the best rate proven so far")?;
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(if result.interrupted {
        ExitCode::from(INTERRUPTED)
    } else if !clean {
        errln!("echoloop: some echoes were wrong during the search (see the steps)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the load generator: prints progress on stderr, then the report on stdout. See the
/// module docs for the exit status.
pub fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    match &args.command {
        Some(BenchCommand::Merge(m)) => return merge::run(m),
        Some(BenchCommand::Plot(p)) => return plot::run(p),
        None => {}
    }
    init_logging(args.log_level);
    if args.slo.is_some() {
        return run_search(&args);
    }
    if args.runs != 1 {
        return run_several(&args);
    }
    let s = Arc::new(Settings::from_args(&args)?);
    let out = open_outputs(&args)?;
    let ctrl_c = CtrlC::install()?;
    let Some(Measured {
        report,
        json,
        c,
        first_error,
        interrupted,
        rtt,
        rtt_uncorrected,
        ..
    }) = measure(&s, out, &ctrl_c)?
    else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    if let Some(path) = &args.plot {
        let mut series = vec![plot::Series {
            label: if rtt_uncorrected.is_some() {
                "corrected (from when due)".to_owned()
            } else {
                "round trip".to_owned()
            },
            rtt: &rtt,
        }];
        if let Some(u) = &rtt_uncorrected {
            series.push(plot::Series {
                label: "uncorrected (from when sent)".to_owned(),
                rtt: u,
            });
        }
        let title = format!("{} {}, {}", report.transport, report.target, report.mode);
        // The report still comes: the run is not lost with the picture.
        if let Err(e) = plot::distribution(path, &title, &series, None) {
            errln!("echoloop: {e}");
        }
    }
    let json_lines_to_stdout = args.json_lines.as_deref() == Some("-");
    if !json_lines_to_stdout {
        let mut out = io::stdout().lock();
        if args.json {
            writeln!(out, "{json}")?;
        } else {
            writeln!(out, "{report}")?;
        }
        out.flush()?;
    }
    if let Some(e) = &first_error {
        errln!("echoloop: first problem seen: {e}");
    }
    let mut code = ExitCode::SUCCESS;
    if c.verify_errors > 0 {
        errln!(
            "echoloop: {} echoes differed from what was sent",
            c.verify_errors
        );
        code = ExitCode::FAILURE;
    }
    if c.wrong_source > 0 {
        errln!(
            "echoloop: {} replies came from an address other than {}",
            c.wrong_source,
            s.target_text
        );
        code = ExitCode::FAILURE;
    }
    if c.messages == 0 {
        errln!("echoloop: no echo completed in the measured window");
        code = ExitCode::FAILURE;
    }
    if interrupted {
        // As a shell reports a command stopped by Ctrl-C, report or not.
        code = ExitCode::from(INTERRUPTED);
    }
    Ok(code)
}
