//! `echoloop serve`: echo on every listener given, all in one poll loop per worker. This
//! file holds the arguments, their checks and the plan of listeners, and runs the server.
//! Its parts: `activation` (descriptors handed over by systemd), `listeners` (binding them
//! and the `listening` lines), `server_loop` (one loop's state and the loop itself), `workers`
//! (`--workers N`: the threads, the signals), `live` (the statistics lines and the counters
//! shared by the workers), `metrics` (the Prometheus endpoint).

mod activation;
mod listeners;
mod live;
mod metrics;
mod server_loop;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use activation::Activated;
use listeners::{Spec, announce, bind_all};
use live::{Board, Sampler};
use metrics::RenderCache;
use server_loop::{Report, ServeState, serve_loop};
use workers::run_workers;

use super::common::{BUSY_POLL_HELP, CliError, idle_strategy, init_logging, parse_level};
use super::units::{parse_duration, parse_size};
use echoloop::net::{Endpoint, UnixName, resolve_one};
use echoloop::tls_config::{ServerTlsOptions, server_config};
use echoloop::{Config, EventLoop};

/// Arguments of `echoloop serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    // The help text is this comment as written: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Serve TCP echo on ADDR (host:port, IPv6 as [::1]:port; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<String>,
    /// Serve UDP echo on ADDR.
    #[arg(long, value_name = "ADDR")]
    udp: Vec<String>,
    /// Serve TLS echo on ADDR (needs --cert and --key).
    #[arg(long, value_name = "ADDR")]
    tls: Vec<String>,
    /// Serve Unix stream echo on PATH (@name for a Linux abstract name).
    #[arg(long, value_name = "PATH")]
    unix: Vec<String>,
    /// Serve Unix datagram echo on PATH (@name for a Linux abstract name).
    #[arg(long = "unix-dgram", value_name = "PATH")]
    unix_dgram: Vec<String>,
    /// PEM certificate chain for --tls listeners.
    #[arg(long, value_name = "CHAIN.pem")]
    cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls listeners.
    #[arg(long, value_name = "KEY.pem")]
    key: Option<PathBuf>,
    /// Require TLS clients to present a certificate signed by this CA (mutual TLS).
    #[arg(long = "client-ca", value_name = "CA.pem")]
    client_ca: Option<PathBuf>,
    /// Accept at most N connections at once per worker; more are accepted and closed at once.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close connections with no traffic for this long (seconds, or 500ms, 2m...).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close TLS connections whose handshake is not done within this.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "10")]
    handshake_timeout: Duration,
    /// Echo large reads with read and write through user space, as small ones are, instead of moving them socket -> pipe -> socket with splice(2) (zero-copy, the default for plain TCP and Unix streams).
    #[arg(long)]
    no_zero_copy: bool,
    /// Fair TLS handshakes: per turn of the loop, spend at most this long on handshake steps (at least one), so that other connections are served between them (0: one step per turn).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "250us")]
    handshake_budget: Duration,
    /// On SIGINT/SIGTERM, give connections this long to finish before closing them.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "5")]
    shutdown_timeout: Duration,
    /// Stop reading a connection when this much output is owed to it (backpressure).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "256k")]
    high_water: u64,
    /// Resume reading when output owed falls to this.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64k")]
    low_water: u64,
    /// Run N reactors, each on its own thread, sharing IP addresses through SO_REUSEPORT.
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0", help = BUSY_POLL_HELP)]
    busy_poll: Duration,
    /// Drop UDP datagrams from these source ports unanswered (comma-separated, or none):
    /// answering a spoofed datagram "from" another echo, discard, daytime, qotd, chargen
    /// or time service would bounce it between the two forever.
    #[arg(long, value_name = "LIST", value_parser = parse_ports, default_value = "0,7,9,13,17,19,37")]
    udp_drop_ports: PortList,
    /// Print a line of statistics on stderr every DURATION (and a summary at exit):
    /// connections open, accepted and closed by reason, traffic per second, CPU.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stats_interval: Option<Duration>,
    /// With --stats-interval (and for SIGUSR1): one JSON object per line instead.
    #[arg(long)]
    stats_json: bool,
    /// Serve Prometheus metrics (GET /metrics) on ADDR, from the same loop (scrapes are not counted as echo connections).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Behind a load balancer: every connection on the TCP, TLS and Unix stream listeners
    /// starts with a PROXY protocol header (v1 or v2) naming the real client; it is
    /// removed before echoing, and a connection without a valid one is closed.
    #[arg(long)]
    proxy_protocol: bool,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, default_value = "info")]
    log_level: log::LevelFilter,
    /// Print every decision the loop makes on stderr (readable, short read, partial
    /// write, paused reading, eof, shutdown(write), reset…), each naming the guide's
    /// section that explains it. Lines that stderr cannot take at once are dropped and
    /// counted, never waited for.
    #[arg(long)]
    trace: bool,
}

/// Runs the server until a signal stops it.
pub fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    init_logging(args.log_level);
    check_settings(&args)?;
    // Every connection is a descriptor; the soft limit (often 1024) is raised to the hard
    // one, which is what the administrator allows.
    if let Some(limit) = super::procfs::raise_fd_limit() {
        log::debug!("open-file limit: {limit}");
        let wanted = (args.max_connections.unwrap_or(0) as u64).saturating_mul(args.workers as u64);
        if wanted.saturating_add(64) > limit {
            log::warn!(
                "--max-connections {} per worker needs more descriptors than the open-file \
                 limit ({limit}); past it, accepts fail with EMFILE",
                args.max_connections.unwrap_or(0)
            );
        }
    }
    let specs = plan(&args, activation::take()?)?;
    // Certificates are checked before anything is bound, so a bad file fails fast.
    let tls = if !specs.iter().any(|s| s.kind == "tls") {
        if args.cert.is_some() || args.key.is_some() || args.client_ca.is_some() {
            log::warn!("--cert, --key and --client-ca only apply to --tls listeners");
        }
        None
    } else {
        let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
            return Err("--tls (or a socket handed over named tls) needs --cert CHAIN.pem and --key KEY.pem".into());
        };
        Some(server_config(&ServerTlsOptions {
            cert_chain: cert,
            key,
            client_ca: args.client_ca.as_deref(),
        })?)
    };
    let mut config = Config::default();
    config.max_connections = args.max_connections;
    config.idle_timeout = args.idle_timeout;
    config.handshake_timeout = args.handshake_timeout;
    config.handshake_budget = args.handshake_budget;
    config.zero_copy_echo = !args.no_zero_copy;
    config.close_timeout = args.shutdown_timeout;
    config.high_water = usize::try_from(args.high_water).unwrap_or(usize::MAX);
    config.low_water = usize::try_from(args.low_water).unwrap_or(usize::MAX);
    config.reuse_port = args.workers > 1;
    // With --workers every loop spins on its own.
    config.busy_poll = Some(args.busy_poll).filter(|d| !d.is_zero());
    config.udp_drop_ports = args.udp_drop_ports.0.clone();
    if args.trace {
        // Through the outlet: a slow terminal costs dropped lines, not a stalled loop.
        config.trace = Some(crate::cli::common::tracer());
    }

    if config.busy_poll.is_some() {
        log::info!("idle strategy: {}", idle_strategy(config.busy_poll));
    }
    let board = Arc::new(Board::new(args.workers));
    let report = Report {
        interval: args.stats_interval.filter(|d| !d.is_zero()),
        json: args.stats_json,
        proxy: args.proxy_protocol,
    };
    if args.workers == 1 {
        let state = ServeState {
            board: Arc::clone(&board),
            worker: 0,
            sampler: Sampler::new(report.json, board.started),
            proxy: args.proxy_protocol,
            metrics_page: RenderCache::default(),
        };
        let mut el = EventLoop::with_state(config, state)?;
        // Signals are caught before the listening lines go out: a script that signals as
        // soon as it reads them must get a graceful stop, not the default action.
        el.handle_signals(args.shutdown_timeout)?;
        el.on_info_signal(|ctx| {
            let total = ctx.stats();
            errln!("{}", ctx.state().sampler.summary(&total));
        });
        let bound = bind_all(&mut el, &specs, tls.as_ref(), true)?;
        announce(&specs, &bound)?;
        serve_loop(&mut el, report.interval)?;
        if report.interval.is_some() {
            errln!("{}", el.state().sampler.final_summary(&el.stats()));
        }
        log::info!("stopped");
        return Ok(ExitCode::SUCCESS);
    }
    run_workers(
        args.workers,
        args.shutdown_timeout,
        config,
        specs,
        tls,
        board,
        report,
    )
}

/// The most reactors `--workers` starts: each is a thread with its own poller, and more of
/// them than cores only adds contention.
const MAX_WORKERS: usize = 256;

/// Settings that would make the server useless are refused, each with what to do instead.
/// The longest duration a setting may have.
const MAX_SETTING: Duration = Duration::from_secs(30 * 86_400);
/// The shortest `--stats-interval`.
const MIN_STATS_INTERVAL: Duration = Duration::from_millis(10);

fn check_settings(args: &ServeArgs) -> Result<(), CliError> {
    if args.max_connections == Some(0) {
        return Err("--max-connections 0 would refuse every connection: give at least 1, or leave it out for no limit".into());
    }
    if args.idle_timeout.is_some_and(|d| d.is_zero()) {
        return Err("--idle-timeout 0 would close every connection at once: give a duration, or leave it out for no idle timeout".into());
    }
    if args.handshake_timeout.is_zero() {
        return Err(
            "--handshake-timeout 0 would fail every TLS handshake: give a duration (default 10s)"
                .into(),
        );
    }
    if args.low_water > args.high_water {
        let default = if args.low_water == DEFAULT_LOW_WATER {
            " (its default)"
        } else {
            ""
        };
        return Err(format!(
            "--high-water {} is below --low-water {}{default}: give a --low-water of at most {} too",
            size_text(args.high_water),
            size_text(args.low_water),
            size_text(args.high_water),
        )
        .into());
    }
    // Deadlines are instants: a duration of centuries would overflow them.
    for (flag, d) in [
        ("--idle-timeout", args.idle_timeout),
        ("--handshake-timeout", Some(args.handshake_timeout)),
        ("--handshake-budget", Some(args.handshake_budget)),
        ("--shutdown-timeout", Some(args.shutdown_timeout)),
        ("--busy-poll", Some(args.busy_poll)),
        ("--stats-interval", args.stats_interval),
    ] {
        if d.is_some_and(|d| d > MAX_SETTING) {
            return Err(format!("{flag} is more than 30 days: give a shorter duration").into());
        }
    }
    if let Some(d) = args
        .stats_interval
        .filter(|d| !d.is_zero() && *d < MIN_STATS_INTERVAL)
    {
        return Err(format!(
            "--stats-interval {d:?} is below 10ms: a line that often would flood stderr and \
             cost the server a core; give at least 10ms (0 turns the lines off)"
        )
        .into());
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if args.workers > MAX_WORKERS {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        return Err(format!(
            "--workers {} is more than {MAX_WORKERS}: each worker is a thread with its own \
             poller and descriptors, and this machine has {cores} cores; one per core is plenty",
            args.workers
        )
        .into());
    }
    Ok(())
}

/// Source ports given to `--udp-drop-ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortList(Vec<u16>);

/// Parses `7,9,13` (or `none`) for clap.
fn parse_ports(s: &str) -> Result<PortList, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(PortList(Vec::new()));
    }
    s.split(',')
        .map(|p| {
            let p = p.trim();
            // Digits only: u16's parser would take `+7`.
            match p.parse::<u16>() {
                Ok(n) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(format!(
                    "invalid port {p:?} in {s:?}: expected comma-separated port numbers (0-65535) or none"
                )),
            }
        })
        .collect::<Result<Vec<u16>, String>>()
        .map(PortList)
}

/// `--low-water`'s default, in bytes.
const DEFAULT_LOW_WATER: u64 = 64 * 1024;

/// A byte count the way it is written on the command line: `64k`, `1M`, `1500`.
fn size_text(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

/// Resolves every listener address before binding any, so a typo fails before a port is
/// taken.
fn plan(args: &ServeArgs, activated: Vec<Activated>) -> Result<Vec<Spec>, CliError> {
    // Sockets handed over by systemd come first; with them, no default listeners.
    let mut specs: Vec<Spec> = activated
        .into_iter()
        .map(|a| Spec {
            kind: a.kind,
            // Replaced by the real address once adopted.
            addr: Endpoint::Unix(UnixName::Abstract(Vec::new())),
            fd: Some(Arc::new(a.fd)),
        })
        .collect();
    for (kind, addrs, ip) in [
        ("tcp", &args.tcp, true),
        ("udp", &args.udp, true),
        ("tls", &args.tls, true),
        ("unix", &args.unix, false),
        ("unix-dgram", &args.unix_dgram, false),
    ] {
        for a in addrs {
            let addr = if ip {
                Endpoint::Inet(resolve_one(a)?)
            } else {
                Endpoint::Unix(UnixName::parse(a)?)
            };
            specs.push(Spec {
                kind,
                addr,
                fd: None,
            });
        }
    }
    let metrics = match &args.metrics {
        Some(a) => Some(Spec {
            kind: "metrics",
            addr: Endpoint::Inet(resolve_one(a)?),
            fd: None,
        }),
        None => None,
    };
    if specs.is_empty() {
        // The classic echo ports, on loopback so a first run exposes nothing.
        specs.push(Spec {
            kind: "tcp",
            addr: Endpoint::Inet(([127, 0, 0, 1], 8881).into()),
            fd: None,
        });
        specs.push(Spec {
            kind: "udp",
            addr: Endpoint::Inet(([127, 0, 0, 1], 8883).into()),
            fd: None,
        });
    }
    specs.extend(metrics);
    Ok(specs)
}
