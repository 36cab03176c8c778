//! `echoloop serve`: echo on every listener given, all in one poll loop per worker. Its
//! parts: `activation` (descriptors handed over by systemd), `live` (the statistics lines
//! and the counters shared by the workers), `metrics` (the Prometheus endpoint).

mod activation;
mod live;
mod metrics;

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use activation::Activated;
use live::{Board, Sampler};
use metrics::{Metrics, RenderCache, StatsSource};

use super::common::{BUSY_POLL_HELP, CliError, idle_strategy, init_logging, parse_level};
use super::units::{parse_duration, parse_size};
use echoloop::event_loop::{HANDLED_SIGNALS, SignalAction, SignalPolicy};
use echoloop::net::{Endpoint, UnixName, resolve_one};
use echoloop::tls_config::{ServerTlsOptions, server_config};
use echoloop::{Bound, Config, Echo, EchoDatagram, EventLoop, ListenKind, StopHandle};

/// Arguments of `echoloop serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
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
}

/// How often each worker publishes its counters for the whole-server views (the stats
/// line and the metrics of `--workers`).
const PUBLISH: Duration = Duration::from_millis(200);

/// The loop state of a serving worker: where the whole server's numbers are, and how to
/// report them.
#[derive(Debug)]
struct ServeState {
    board: Arc<Board>,
    worker: usize,
    sampler: Sampler,
    /// `--proxy-protocol`.
    proxy: bool,
    /// The metrics page of this turn, for every scrape in it.
    metrics_page: RenderCache,
}

impl StatsSource for ServeState {
    fn server_stats(&self, own: echoloop::Stats) -> echoloop::Stats {
        self.board.total(Some((self.worker, own)))
    }
    fn started(&self) -> Instant {
        self.board.started
    }
    fn render_cache(&mut self) -> &mut RenderCache {
        &mut self.metrics_page
    }
}

/// One listener to create.
#[derive(Debug, Clone)]
struct Spec {
    kind: &'static str,
    addr: Endpoint,
    /// Handed over by systemd rather than bound here (each worker serves a duplicate).
    fd: Option<Arc<OwnedFd>>,
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
    config.close_timeout = args.shutdown_timeout;
    config.high_water = usize::try_from(args.high_water).unwrap_or(usize::MAX);
    config.low_water = usize::try_from(args.low_water).unwrap_or(usize::MAX);
    config.reuse_port = args.workers > 1;
    // With --workers every loop spins on its own.
    config.busy_poll = Some(args.busy_poll).filter(|d| !d.is_zero());
    config.udp_drop_ports = args.udp_drop_ports.0.clone();

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

/// What `--stats-interval` and `--stats-json` ask for.
#[derive(Debug, Clone, Copy)]
struct Report {
    interval: Option<Duration>,
    json: bool,
    proxy: bool,
}

/// Runs a worker's loop until it stops, publishing its counters for the whole-server
/// views and, with one worker and `--stats-interval`, printing the interval lines.
fn serve_loop(el: &mut EventLoop<ServeState>, print_every: Option<Duration>) -> io::Result<()> {
    let start = Instant::now();
    let mut next_publish = start + PUBLISH;
    let mut next_print = print_every.map(|d| start + d);
    // One clock read per turn: the time after the last turn stands for the time before
    // the next (they differ by a few microseconds of bookkeeping).
    let mut now = start;
    loop {
        let until = next_print.map_or(next_publish, |p| p.min(next_publish));
        if !el.run_once(Some(until.saturating_duration_since(now)))? {
            break;
        }
        now = Instant::now();
        if now >= next_publish {
            let (w, s) = (el.state().worker, el.stats());
            el.state().board.publish(w, s);
            next_publish = now + PUBLISH;
        }
        if let (Some(at), Some(every)) = (next_print, print_every) {
            if now >= at {
                let s = el.stats();
                let line = el.state_mut().sampler.interval(&s);
                errln!("{line}");
                // From the planned time, so the lines keep their rhythm.
                next_print = Some(at + every).filter(|t| *t > now).or(Some(now + every));
            }
        }
    }
    let (w, s) = (el.state().worker, el.stats());
    el.state().board.publish(w, s);
    Ok(())
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

/// Binds `specs` in `el`. Unix sockets cannot be shared between reactors, so only the
/// first worker (`with_unix`) binds them.
fn bind_all(
    el: &mut EventLoop<ServeState>,
    specs: &[Spec],
    tls: Option<&Arc<rustls::ServerConfig>>,
    with_unix: bool,
) -> Result<Vec<Option<Bound>>, CliError> {
    let mut bound = Vec::new();
    for s in specs {
        if let Some(fd) = &s.fd {
            bound.push(Some(adopt(el, s.kind, fd, tls)?));
            continue;
        }
        let b = match (s.kind, &s.addr) {
            ("tcp", a) => Some(el.listen(a, ListenKind::Tcp, || Box::new(Echo))?),
            ("tls", a) => {
                // plan() only makes tls specs when a config was loaded.
                let cfg = tls.ok_or("--tls needs --cert and --key")?;
                Some(el.listen(a, ListenKind::Tls(Arc::clone(cfg)), || Box::new(Echo))?)
            }
            ("udp", Endpoint::Inet(a)) => Some(el.bind_udp(*a, Box::new(EchoDatagram))?),
            ("unix", a) if with_unix => Some(el.listen(a, ListenKind::Unix, || Box::new(Echo))?),
            ("unix-dgram", Endpoint::Unix(n)) if with_unix => {
                Some(el.bind_unix_datagram(n, Box::new(EchoDatagram))?)
            }
            // One metrics listener for the whole server, on the first worker. Its scrapes
            // are not echo connections: not in the statistics, not under the limit.
            ("metrics", a) if with_unix => {
                let b = el.listen(a, ListenKind::Tcp, || Box::new(Metrics::default()))?;
                el.count_in_stats(b.id, false)?;
                Some(b)
            }
            _ => None,
        };
        if let (Some(b), true) = (&b, el.state().proxy && takes_proxy_header(s.kind)) {
            el.expect_proxy_header(b.id, true)?;
        }
        if let Some(b) = &b {
            match s.kind {
                "metrics" => log::info!("serving metrics on http://{}/metrics", b.addr),
                kind => log::info!("serving {kind} echo on {}", b.addr),
            }
        }
        bound.push(b);
    }
    Ok(bound)
}

/// With `--proxy-protocol`, the listeners whose connections start with a PROXY header:
/// the echo stream listeners (a load balancer speaks to them), never datagrams or metrics.
fn takes_proxy_header(kind: &str) -> bool {
    matches!(kind, "tcp" | "tls" | "unix")
}

/// Serves a socket systemd handed over (a duplicate of it: each worker has its own).
fn adopt(
    el: &mut EventLoop<ServeState>,
    kind: &str,
    fd: &OwnedFd,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Bound, CliError> {
    let fd = fd.try_clone()?;
    let proxy = el.state().proxy && takes_proxy_header(kind);
    let b = match kind {
        "tcp" => el.adopt_listener(fd, ListenKind::Tcp, || Box::new(Echo))?,
        "unix" => el.adopt_listener(fd, ListenKind::Unix, || Box::new(Echo))?,
        "tls" => {
            let cfg = tls.ok_or("a socket named tls needs --cert and --key")?;
            el.adopt_listener(fd, ListenKind::Tls(Arc::clone(cfg)), || Box::new(Echo))?
        }
        _ => el.adopt_datagram(fd, Box::new(EchoDatagram))?,
    };
    if proxy {
        el.expect_proxy_header(b.id, true)?;
    }
    log::info!("serving {kind} echo on {} (socket activation)", b.addr);
    Ok(b)
}

/// Prints one `listening <kind> <address>` line per listener, then flushes: tests and
/// scripts wait for these lines instead of sleeping.
fn announce(specs: &[Spec], bound: &[Option<Bound>]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for (s, b) in specs.iter().zip(bound) {
        if let Some(b) = b {
            writeln!(out, "listening {} {}", s.kind, b.addr)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `--workers N`: N reactors on N threads. The first binds (choosing ports where 0 was
/// asked); the others bind the same addresses through SO_REUSEPORT. The main thread takes
/// the signals (SIGINT/SIGTERM/SIGHUP stop them all, SIGUSR1 prints the whole server's
/// statistics) and, with `--stats-interval`, a printer thread reports on the whole server.
fn run_workers(
    workers: usize,
    grace: Duration,
    config: Config,
    specs: Vec<Spec>,
    tls: Option<Arc<rustls::ServerConfig>>,
    board: Arc<Board>,
    report: Report,
) -> Result<ExitCode, CliError> {
    // Block the signals' default action before any thread starts.
    let mut signals = signal_hook::iterator::Signals::new(HANDLED_SIGNALS)?;
    let mut handles = Vec::new();
    let mut stops: Vec<StopHandle> = Vec::new();
    let mut specs = specs;
    let mut first_bound = Vec::new();
    let proxy = report.proxy;
    for w in 0..workers {
        let (tx, rx) = mpsc::channel::<Result<(Vec<Option<Bound>>, StopHandle), String>>();
        let config = config.clone();
        let worker_specs = specs.clone();
        let tls = tls.clone();
        let state = ServeState {
            board: Arc::clone(&board),
            worker: w,
            sampler: Sampler::new(report.json, board.started),
            proxy,
            metrics_page: RenderCache::default(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("echoloop-worker-{w}"))
            .spawn(move || -> Result<echoloop::Stats, String> {
                let setup = EventLoop::with_state(config, state)
                    .map_err(|e| e.to_string())
                    .and_then(|mut el| {
                        let b = bind_all(&mut el, &worker_specs, tls.as_ref(), w == 0)
                            .map_err(|e| e.to_string())?;
                        Ok((el, b))
                    });
                match setup {
                    Ok((mut el, b)) => {
                        let _ = tx.send(Ok((b, el.stop_handle())));
                        serve_loop(&mut el, None).map_err(|e| e.to_string())?;
                        Ok(el.stats())
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        Err(e)
                    }
                }
            })?;
        handles.push(handle);
        let (bound, stop) = match rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                stop_all(&stops, Duration::ZERO);
                return Err(e.into());
            }
            Err(_) => {
                stop_all(&stops, Duration::ZERO);
                return Err("worker thread failed to start".into());
            }
        };
        stops.push(stop);
        if w == 0 {
            // Later workers bind the real addresses (the ports chosen for port 0).
            for (s, b) in specs.iter_mut().zip(&bound) {
                if let (Some(b), None) = (b, &s.fd) {
                    s.addr = b.addr.clone();
                }
            }
            first_bound = bound;
        }
    }
    // Only now is every worker's socket in the kernel's SO_REUSEPORT group: a client
    // that connects on reading these lines can reach any of them.
    announce(&specs, &first_bound)?;
    log::info!("{workers} workers running");
    let printer = report.interval.map(|every| {
        let board = Arc::clone(&board);
        let (quit, quit_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut sampler = Sampler::new(report.json, board.started);
            let mut next = Instant::now() + every;
            // A message or a hang-up on `quit_rx` ends it; a timeout is the next line.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                quit_rx.recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                errln!("{}", sampler.interval(&board.total(None)));
                next += every;
            }
        });
        (quit, thread)
    });
    let summary = Sampler::new(report.json, board.started);
    // The workers are joined on a thread of their own, which then ends the signal loop
    // below: signals keep their meaning during the grace period (a second one stops at
    // once, SIGUSR1 still reports), and workers that end on their own end the server.
    let closer = signals.handle();
    let joiner = std::thread::spawn(move || {
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        closer.close();
        results
    });
    let mut policy = SignalPolicy::new(grace);
    for sig in signals.forever() {
        match policy.on_signal(sig) {
            SignalAction::Report => errln!("{}", summary.summary(&board.total(None))),
            SignalAction::Stop(grace) => stop_all(&stops, grace),
            _ => {}
        }
    }
    let results = joiner
        .join()
        .map_err(|_| CliError::from("the thread joining the workers failed"))?;
    let mut failed = false;
    let mut total = echoloop::Stats::default();
    for (w, h) in results.into_iter().enumerate() {
        match h {
            // One line per worker, so an operator (and the tests) can see the kernel
            // spread the load across the reactors.
            Ok(Ok(st)) => {
                log::info!(
                    "worker {w}: {} connections accepted, {} datagrams received",
                    st.accepted,
                    st.datagrams_in
                );
                total = total.merged(&st);
            }
            Ok(Err(e)) => {
                log::error!("worker: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    if let Some((quit, thread)) = printer {
        drop(quit);
        let _ = thread.join();
        errln!("{}", summary.final_summary(&total));
    }
    log::info!("stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn stop_all(stops: &[StopHandle], grace: Duration) {
    for s in stops {
        s.stop(grace);
    }
}
