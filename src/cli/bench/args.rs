//! `echoloop bench`'s command line: the arguments as clap reads them, and the parsers of
//! the values only bench takes. `settings` turns them into the run's settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::merge;
use super::sizes::{Sizes, parse_sizes};
use crate::cli::common::{
    BUSY_POLL_HELP, CliError, TlsClientArgs, Transport, TransportArg, parse_level,
};
use crate::cli::units::{parse_duration, parse_rate};

/// Most segments a run may be cut into (the index is a 12-bit field of connection keys).
const MAX_SEGMENTS: u32 = 4096;

/// Generator `index` of `count` taking part in one run (`--segment I/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) index: u32,
    pub(super) count: u32,
}

/// Parses `--segment I/N`: generator I (from 0) of N.
pub(super) fn parse_segment(s: &str) -> Result<Segment, String> {
    let bad = || format!("invalid segment {s:?}: expected I/N, e.g. 0/4 for the first of four");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(n) {
        return Err(bad());
    }
    let index: u32 = i.parse().map_err(|_| bad())?;
    let count: u32 = n.parse().map_err(|_| bad())?;
    if count == 0 || count > MAX_SEGMENTS {
        return Err(format!(
            "invalid segment {s:?}: N must be from 1 to {MAX_SEGMENTS}"
        ));
    }
    if index >= count {
        return Err(format!(
            "invalid segment {s:?}: I counts from 0, so it must be below N ({count})"
        ));
    }
    Ok(Segment { index, count })
}

/// `--start-at` as written: an instant, or an offset from when the command started.
#[derive(Debug, Clone, Copy)]
pub(super) enum StartAt {
    /// Unix time in seconds.
    Unix(Duration),
    /// From now.
    After(Duration),
}

impl StartAt {
    /// The instant, checked: not past, and not absurdly far (milliseconds for seconds).
    pub(super) fn resolve(self) -> Result<SystemTime, CliError> {
        let now = SystemTime::now();
        let at = match self {
            StartAt::After(d) => now.checked_add(d),
            StartAt::Unix(d) => UNIX_EPOCH.checked_add(d),
        }
        .ok_or("--start-at is too far away")?;
        match at.duration_since(now) {
            Err(past) => Err(format!(
                "--start-at is {:.3} s in the past: give a later time, or +DURATION from now",
                past.duration().as_secs_f64()
            )
            .into()),
            Ok(ahead) if ahead > Duration::from_secs(86_400) => Err(format!(
                "--start-at is {:.0} s away, more than a day: expected Unix time in seconds \
                 (not milliseconds), or +DURATION from now",
                ahead.as_secs_f64()
            )
            .into()),
            Ok(_) => Ok(at),
        }
    }
}

/// Parses `--start-at`: Unix seconds with an optional fraction (`1767225600.5`) or `+5s`.
pub(super) fn parse_start_at(s: &str) -> Result<StartAt, String> {
    if let Some(rest) = s.strip_prefix('+') {
        return parse_duration(rest)
            .map(StartAt::After)
            .map_err(|e| format!("invalid --start-at {s:?}: {e}"));
    }
    let bad = || {
        format!(
            "invalid --start-at {s:?}: expected Unix time in seconds (1767225600.25) or +DURATION (+5s)"
        )
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let secs: u64 = int.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(StartAt::Unix(Duration::new(secs, nanos)))
}

/// Parses a count such as `100`, `10k` or `1M` (decimal multiples, whole numbers only).
pub(super) fn parse_count(s: &str) -> Result<usize, String> {
    let value = parse_rate(s).map_err(|_| {
        format!(
            "invalid count {s:?}: expected a positive whole number with an optional k or M suffix"
        )
    })?;
    if value.fract() != 0.0 || value > u32::MAX as f64 {
        return Err(format!(
            "invalid count {s:?}: expected a positive whole number with an optional k or M suffix"
        ));
    }
    Ok(value as usize)
}

/// A service level objective: percentile `q` (a fraction: 0.99 for p99) at most `bound`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Slo {
    pub(super) q: f64,
    pub(super) bound: Duration,
}

impl Slo {
    /// `p99`, `p99.9`, `p50`.
    pub(super) fn name(&self) -> String {
        let pct = format!("{:.4}", self.q * 100.0);
        format!("p{}", pct.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// `p99=2ms`, `p99.9=500us`, `p50=1ms`.
pub(super) fn parse_slo(s: &str) -> Result<Slo, String> {
    let bad = |why: &str| format!("invalid SLO {s:?}: {why} (expected pQ=BOUND, e.g. p99=2ms)");
    let (p, bound) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    let pct: f64 = p
        .strip_prefix('p')
        .ok_or_else(|| bad("the percentile starts with p"))?
        .parse()
        .map_err(|_| bad("the percentile is not a number"))?;
    if !(pct > 0.0 && pct < 100.0) {
        return Err(bad("the percentile lies between 0 and 100, both excluded"));
    }
    let bound = crate::cli::units::parse_duration(bound)?;
    if bound.is_zero() {
        return Err(bad("a bound of zero cannot be met"));
    }
    Ok(Slo {
        q: pct / 100.0,
        bound,
    })
}

/// Arguments of `echoloop bench`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub(super) command: Option<BenchCommand>,
    /// Transport to load.
    #[arg(value_parser = TransportArg, required = true)]
    pub(super) transport: Option<Transport>,
    /// Server address: host:port for tcp, tls and udp; a path or @name for unix and unix-dgram.
    #[arg(value_name = "ADDR", required = true)]
    pub(super) addr: Option<String>,
    /// Concurrent connections (datagram sockets for udp and unix-dgram); 10k is accepted.
    /// With --segment, the whole run's: this generator opens its share.
    #[arg(long, short = 'c', value_name = "N", value_parser = parse_count, default_value = "1")]
    pub(super) connections: usize,
    /// Message size (64, 16k, 1M), uniform in a range (64..16k), or a weighted mix
    /// (64:90,1k:9,64k:1). Datagrams need at least 8 bytes and at most 65507; stream
    /// messages at most 64M.
    #[arg(long, value_name = "BYTES", value_parser = parse_sizes, default_value = "64")]
    pub(super) size: Sizes,
    /// Speak sockperf's message format, to measure a `sockperf server` (each message
    /// starts with its 14-byte header; the echo is expected with the client flag
    /// cleared). tcp and udp; --size from 14 to 1048575 bytes, though a sockperf server takes
    /// messages above 65507 bytes only when started with `-m SIZE`.
    #[arg(long)]
    pub(super) sockperf: bool,
    /// Length of the measured window (10s, 2m).
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_duration, default_value = "10s")]
    pub(super) duration: Duration,
    /// Run this long first and discard its measurements.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "0")]
    pub(super) warmup: Duration,
    /// Messages each connection keeps in flight (closed loop; 1 is ping-pong).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub(super) pipeline: usize,
    /// Open loop: send this many messages per second in total (10k, 1M), latency measured
    /// from when each message was due. With --segment, the whole run's rate.
    #[arg(long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    pub(super) rate: Option<f64>,
    /// Open connections at this many per second instead of all at once (the whole run's).
    #[arg(long, value_name = "CONNS_PER_S", value_parser = parse_rate)]
    pub(super) connect_rate: Option<f64>,
    /// Use a new connection for every message: connect, TLS handshake, one echo, close.
    #[arg(long)]
    pub(super) reconnect: bool,
    /// Reactor threads sharing the connections.
    #[arg(long, value_name = "T", default_value_t = 1)]
    pub(super) threads: usize,
    /// Local source address, repeatable: connections use them in turn.
    #[arg(long, value_name = "IP")]
    pub(super) source: Vec<IpAddr>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
    /// Progress period: the status line, --json-lines and --hlog come this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub(super) interval: Duration,
    /// Write one JSON object per interval to FILE (- for standard output), then the final
    /// report as the last line.
    #[arg(long, value_name = "FILE")]
    pub(super) json_lines: Option<String>,
    /// Write an HdrHistogram interval log to FILE: per interval, histograms tagged rtt,
    /// connect and (open loop) rtt_uncorrected, in microseconds.
    #[arg(long, value_name = "FILE")]
    pub(super) hlog: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(super) hgrm: Option<PathBuf>,
    /// Connect first, then start the measured window at TIME: Unix seconds (fractions
    /// allowed) or +DURATION from now. Generators on several machines with clocks kept
    /// by NTP then measure the same interval.
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    pub(super) start_at: Option<StartAt>,
    /// This generator is number I (from 0) of N sharing the run: it takes its share of
    /// --connections and --rate, and sends bytes no other generator sends.
    #[arg(long, value_name = "I/N", value_parser = parse_segment)]
    pub(super) segment: Option<Segment>,
    /// Also report this process's CPU per message and peak memory (the server's cost).
    #[arg(long, value_name = "PID")]
    pub(super) server_pid: Option<u32>,
    #[command(flatten)]
    pub(super) tls: TlsClientArgs,
    /// Let TLS reconnections resume sessions (default: every handshake is a full one).
    #[arg(long)]
    pub(super) tls_resume: bool,
    /// A datagram with no echo within this is lost; also the grace for the last echoes.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "1s")]
    pub(super) timeout: Duration,
    /// Give up on a connect (and TLS handshake) after this.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "5s")]
    pub(super) connect_timeout: Duration,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0", help = BUSY_POLL_HELP)]
    pub(super) busy_poll: Duration,
    /// Find the highest rate at which a latency percentile stays within a bound, e.g.
    /// p99=2ms: open-loop steps, doubling from --rate (default 1k/s) until the bound
    /// breaks, then halving the gap to 2%.
    #[arg(long, value_name = "pQ=BOUND", value_parser = parse_slo)]
    pub(super) slo: Option<Slo>,
    /// Measured length of each step of an --slo search (after a warm-up of --warmup,
    /// at least 1 s).
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "5s")]
    pub(super) step_duration: Duration,
    /// Steps an --slo search takes at most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(super) max_steps: usize,
    /// Repeat the whole run N times, on new connections each time, and report each
    /// figure's median and range over the runs (JSON: every run's report under `runs`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(super) runs: usize,
    /// Draw the latency distribution to this SVG file (percentiles on a "nines" axis);
    /// with --slo, also the percentile against offered rate to FILE-rates.svg.
    #[arg(long, value_name = "FILE.svg")]
    pub(super) plot: Option<PathBuf>,
    /// Print every decision the loop makes for the one connection of the run (-c 1) on
    /// stderr: reads, partial writes, half-close, TLS handshake…
    #[arg(long)]
    pub(super) trace: bool,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, default_value = "warn")]
    pub(super) log_level: log::LevelFilter,
}

/// What `echoloop bench` does besides generating load.
#[derive(Debug, clap::Subcommand)]
pub(super) enum BenchCommand {
    /// Merge the final JSON reports (--json) or the --hlog logs of several generators of
    /// one run into one report.
    Merge(merge::MergeArgs),
    /// Overlay the latency distributions of several reports (--json) on one SVG plot.
    Plot(PlotArgs),
}

/// Arguments of `echoloop bench plot`.
#[derive(Debug, clap::Args)]
pub(super) struct PlotArgs {
    /// Final reports written with `bench --json` (or `bench merge --json`).
    #[arg(value_name = "FILE", required = true, num_args = 1..)]
    pub(super) files: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(short = 'o', long, value_name = "FILE.svg", required = true)]
    pub(super) output: PathBuf,
    /// A name for each report's line, in order (default: the file's name).
    #[arg(long, value_name = "NAME")]
    pub(super) label: Vec<String>,
}
