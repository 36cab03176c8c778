//! What every example sets up first: a logger, so that the library's own messages (a
//! refused accept, a signal received) reach stderr, and `--trace`, which prints each
//! decision the loop makes about a socket, as `echoloop serve --trace` does.
//!
//! - [`init_logger`]: `[LEVEL] message` lines on stderr, at the level named by the
//!   environment variable `ECHOLOOP_LOG` (`error`, `warn`, `info`, `debug`, `trace`, or
//!   `off`; `info` when unset or unknown). At `trace`, the loop's decisions come through
//!   `log` too.
//! - [`take_trace`]: removes `--trace` from the arguments and returns the tracer to put
//!   into `Config::trace`, printing `trace: #2.3 read 64 bytes [guide: readiness]` lines.
//!
//! Both write to stderr directly, from the loop's thread. That is fine for a toy, and
//! wrong for a server: a stderr nobody reads (a full pipe, a paused terminal) blocks the
//! write, and with it every connection of the loop. The `echoloop` binary hands its lines
//! to a thread of their own instead; `src/cli/outlet.rs` shows how.
//!
//! Cargo builds `examples/*.rs` as examples, not this folder: each example includes it
//! with `mod common;`.

use std::io::Write;

use echoloop::trace::{TraceEvent, Tracer};

/// Writes `[LEVEL] message` lines to stderr.
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // A closed stderr is no reason to stop serving: the error is ignored.
            let _ = writeln!(
                std::io::stderr().lock(),
                "[{}] {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger, at the level `ECHOLOOP_LOG` names (`info` by default).
/// Call it before making the loop: the loop asks `log` once, when it is made, whether
/// its decisions are wanted at trace level.
#[allow(dead_code)]
pub fn init_logger() {
    let level = match std::env::var("ECHOLOOP_LOG") {
        Ok(name) => name.parse().unwrap_or(log::LevelFilter::Info),
        Err(_) => log::LevelFilter::Info,
    };
    // `log` keeps the logger for the rest of the program, hence `'static` (leaked once:
    // `set_boxed_logger` would do the same, but needs `log`'s `std` feature, which only
    // the command line's dependencies turn on). Fails only if a logger is installed
    // already: the first one stays.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Removes every `--trace` from `args` (up to a `--`, after which arguments belong to
/// someone else, such as `tail`'s command) and returns a tracer printing each event as a
/// `trace: …` line on stderr if there was one.
#[allow(dead_code)]
pub fn take_trace<T: PartialEq<str>>(args: &mut Vec<T>) -> Option<Tracer> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let mut theirs = args.split_off(end);
    let before = args.len();
    args.retain(|a| a != "--trace");
    let found = args.len() < before;
    args.append(&mut theirs);
    found.then(|| {
        Tracer::new(|ev: &TraceEvent<'_>| {
            let _ = writeln!(std::io::stderr().lock(), "trace: {ev}");
        })
    })
}

/// Both of the above for an example whose arguments are plain strings: installs the
/// logger, and returns the arguments (without the program's name and `--trace`) and the
/// tracer.
#[allow(dead_code)]
pub fn setup() -> (Vec<String>, Option<Tracer>) {
    init_logger();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let trace = take_trace(&mut args);
    (args, trace)
}
