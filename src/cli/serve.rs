//! `echoloop serve`: echo on every listener given, all in one poll loop per worker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::common::{BUSY_POLL_HELP, CliError, idle_strategy, init_logging, parse_level};
use super::units::{parse_duration, parse_size};
use crate::net::{Endpoint, UnixName, resolve_one};
use crate::tls_config::{ServerTlsOptions, server_config};
use crate::{Bound, Config, Echo, EchoDatagram, EventLoop, ListenKind, StopHandle};

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
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, default_value = "info")]
    log_level: log::LevelFilter,
}

/// One listener to create.
#[derive(Debug, Clone)]
struct Spec {
    kind: &'static str,
    addr: Endpoint,
}

/// Runs the server until a signal stops it.
pub fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    init_logging(args.log_level);
    let specs = plan(&args)?;
    if args.low_water > args.high_water {
        return Err("--low-water must not exceed --high-water".into());
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    // Certificates are checked before anything is bound, so a bad file fails fast.
    let tls = if args.tls.is_empty() {
        if args.cert.is_some() || args.key.is_some() || args.client_ca.is_some() {
            log::warn!("--cert, --key and --client-ca only apply to --tls listeners");
        }
        None
    } else {
        let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
            return Err("--tls needs --cert CHAIN.pem and --key KEY.pem".into());
        };
        Some(server_config(&ServerTlsOptions {
            cert_chain: cert,
            key,
            client_ca: args.client_ca.as_deref(),
        })?)
    };
    let config = Config {
        max_connections: args.max_connections,
        idle_timeout: args.idle_timeout,
        handshake_timeout: args.handshake_timeout,
        close_timeout: args.shutdown_timeout,
        high_water: usize::try_from(args.high_water).unwrap_or(usize::MAX),
        low_water: usize::try_from(args.low_water).unwrap_or(usize::MAX),
        reuse_port: args.workers > 1,
        // With --workers every loop spins on its own.
        busy_poll: Some(args.busy_poll).filter(|d| !d.is_zero()),
        ..Config::default()
    };

    if config.busy_poll.is_some() {
        log::info!("idle strategy: {}", idle_strategy(config.busy_poll));
    }
    if args.workers == 1 {
        let mut el = EventLoop::new(config)?;
        // Signals are caught before the listening lines go out: a script that signals as
        // soon as it reads them must get a graceful stop, not the default action.
        el.handle_signals(args.shutdown_timeout)?;
        let bound = bind_all(&mut el, &specs, tls.as_ref(), true)?;
        announce(&specs, &bound)?;
        el.run()?;
        log::info!("stopped");
        return Ok(ExitCode::SUCCESS);
    }
    run_workers(args.workers, args.shutdown_timeout, config, specs, tls)
}

/// Resolves every listener address before binding any, so a typo fails before a port is
/// taken.
fn plan(args: &ServeArgs) -> Result<Vec<Spec>, CliError> {
    let mut specs = Vec::new();
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
            specs.push(Spec { kind, addr });
        }
    }
    if specs.is_empty() {
        // The classic echo ports, on loopback so a first run exposes nothing.
        specs.push(Spec {
            kind: "tcp",
            addr: Endpoint::Inet(([127, 0, 0, 1], 8881).into()),
        });
        specs.push(Spec {
            kind: "udp",
            addr: Endpoint::Inet(([127, 0, 0, 1], 8883).into()),
        });
    }
    Ok(specs)
}

/// Binds `specs` in `el`. Unix sockets cannot be shared between reactors, so only the
/// first worker (`with_unix`) binds them.
fn bind_all(
    el: &mut EventLoop,
    specs: &[Spec],
    tls: Option<&Arc<rustls::ServerConfig>>,
    with_unix: bool,
) -> Result<Vec<Option<Bound>>, CliError> {
    let mut bound = Vec::new();
    for s in specs {
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
            _ => None,
        };
        if let Some(b) = &b {
            log::info!("serving {} echo on {}", s.kind, b.addr);
        }
        bound.push(b);
    }
    Ok(bound)
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
/// asked); the others bind the same addresses through SO_REUSEPORT. The main thread waits
/// for SIGINT/SIGTERM and stops them all.
fn run_workers(
    workers: usize,
    grace: Duration,
    config: Config,
    specs: Vec<Spec>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<ExitCode, CliError> {
    // Block the signals' default action before any thread starts.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let mut handles = Vec::new();
    let mut stops: Vec<StopHandle> = Vec::new();
    let mut specs = specs;
    for w in 0..workers {
        let (tx, rx) = mpsc::channel::<Result<(Vec<Option<Bound>>, StopHandle), String>>();
        let config = config.clone();
        let worker_specs = specs.clone();
        let tls = tls.clone();
        let handle = std::thread::Builder::new()
            .name(format!("echoloop-worker-{w}"))
            .spawn(move || -> Result<crate::Stats, String> {
                let setup = EventLoop::new(config)
                    .map_err(|e| e.to_string())
                    .and_then(|mut el| {
                        let b = bind_all(&mut el, &worker_specs, tls.as_ref(), w == 0)
                            .map_err(|e| e.to_string())?;
                        Ok((el, b))
                    });
                match setup {
                    Ok((mut el, b)) => {
                        let _ = tx.send(Ok((b, el.stop_handle())));
                        el.run().map_err(|e| e.to_string())?;
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
            announce(&specs, &bound)?;
            // Later workers bind the real addresses (the ports chosen for port 0).
            for (s, b) in specs.iter_mut().zip(&bound) {
                if let Some(b) = b {
                    s.addr = b.addr.clone();
                }
            }
        }
    }
    log::info!("{workers} workers running");
    if signals.forever().next().is_some() {
        log::info!("signal received: shutting down (grace {grace:?})");
        stop_all(&stops, grace);
    }
    let mut failed = false;
    for (w, h) in handles.into_iter().enumerate() {
        match h.join() {
            // One line per worker, so an operator (and the tests) can see the kernel
            // spread the load across the reactors.
            Ok(Ok(st)) => log::info!(
                "worker {w}: {} connections accepted, {} datagrams received",
                st.accepted,
                st.datagrams_in
            ),
            Ok(Err(e)) => {
                log::error!("worker: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
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
