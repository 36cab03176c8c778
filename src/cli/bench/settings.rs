//! The run's settings: command-line arguments checked, resolved and turned into what the
//! load threads read. Every refusal names the option and says what would work, before a
//! single connection is opened.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::args::{BenchArgs, Segment};
use super::pattern::{HEADER, Payload, SOCKPERF_HEADER};
use super::sizes::Sizes;
use crate::cli::common::{CliError, Transport};
use crate::cli::procfs::{proc_cpu_ticks, raise_fd_limit};
use echoloop::net::{Endpoint, UnixName, resolve_all};
use echoloop::tls_config::{client_config, server_name};

/// Largest datagram over IPv4 (65,535 minus the IP and UDP headers).
pub(super) const MAX_DATAGRAM: u64 = 65_507;
/// Largest stream message. Each message is cut from a template held whole in memory, and
/// sits whole in the connection's write buffer until the kernel takes it; past this size
/// a message measures the same thing (the stream's bandwidth) as a 64 MiB one does.
pub(super) const MAX_STREAM_MESSAGE: u64 = 64 << 20;
/// Largest message a `sockperf server` accepts, whatever its `-m` (its `MAX_TCP_SIZE`);
/// without `-m`, 65507.
const MAX_SOCKPERF_MESSAGE: u64 = (1 << 20) - 1;
/// Most bytes a closed-loop generator may have queued at once (its connections × pipeline
/// × size): what it must be able to hold in write buffers when the server stops reading.
const MAX_QUEUED: u128 = 4 << 30;
/// Open-loop messages a connection may have unanswered before sending waits for echoes
/// (they are still sent later, with their latency counted from when they were due); for
/// streams also bounded by [`OPEN_LOOP_QUEUED`].
const OPEN_LOOP_CAP: usize = 1 << 16;
/// Most bytes an open-loop generator may have unanswered: a server that stops reading
/// makes the schedule pile up at once, where a closed loop waits at `--pipeline`.
const OPEN_LOOP_QUEUED: u128 = 1 << 30;
/// The longest duration any option may give: long enough for any run, short enough that
/// instants computed from it cannot overflow.
const MAX_SPAN: Duration = Duration::from_secs(30 * 86_400);
/// Most load threads (also a 12-bit field of connection keys).
const MAX_THREADS: usize = 4096;

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub(super) enum Load {
    /// Each connection keeps `pipeline` messages in flight.
    Closed { pipeline: usize },
    /// `rate` messages per second in total over every generator of the run; each
    /// connection sends every `interval` seconds.
    Open { rate: f64, interval: f64 },
    /// One message per connection.
    Reconnect,
}

/// Everything a run needs, checked and resolved; shared read-only by the threads.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) transport: Transport,
    pub(super) target: Endpoint,
    pub(super) target_text: String,
    /// This generator's share of `--connections`.
    pub(super) connections: usize,
    /// The largest message (buffers and memory bounds are sized for it).
    pub(super) size: usize,
    /// How big each message is.
    pub(super) sizes: Sizes,
    /// What each message starts with (`--sockperf`).
    pub(super) payload: Payload,
    /// `--trace`: narrate the loop's decisions.
    pub(super) trace: bool,
    pub(super) load: Load,
    /// This generator's connections opened per second, when ramped.
    pub(super) connect_rate: Option<f64>,
    pub(super) threads: usize,
    pub(super) sources: Vec<IpAddr>,
    pub(super) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub(super) tls_resume: bool,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    pub(super) interval: Duration,
    pub(super) segment: Segment,
    /// When the measured window is to start (`--start-at`).
    pub(super) start_at: Option<SystemTime>,
    pub(super) server_pid: Option<u32>,
    /// Open loop: messages a connection may have unanswered before it waits.
    pub(super) open_loop_cap: usize,
    /// The idle strategy of every load thread's loop.
    pub(super) busy_poll: Option<Duration>,
}

impl Settings {
    pub(super) fn from_args(a: &BenchArgs) -> Result<Settings, CliError> {
        let t = a
            .transport
            .ok_or("bench needs a transport and an address")?;
        let addr = a.addr.as_deref().ok_or("bench needs an address")?;
        if a.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if a.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if a.threads > MAX_THREADS {
            return Err(format!("--threads must be at most {MAX_THREADS}").into());
        }
        if a.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        if a.duration.is_zero() {
            return Err("--duration must be greater than zero".into());
        }
        if a.timeout.is_zero() {
            return Err("--timeout must be greater than zero".into());
        }
        if a.interval < Duration::from_millis(10) {
            return Err("--interval must be at least 10ms".into());
        }
        for (name, d) in [
            ("--duration", a.duration),
            ("--warmup", a.warmup),
            ("--timeout", a.timeout),
            ("--connect-timeout", a.connect_timeout),
            ("--interval", a.interval),
        ] {
            if d > MAX_SPAN {
                return Err(format!("{name} must be at most 30 days").into());
            }
        }
        // Every size the mix can draw must fit: its smallest and its largest.
        check_size(t, a.size.min() as u64)?;
        check_size(t, a.size.max() as u64)?;
        let payload = if a.sockperf {
            check_sockperf(t, &a.size)?;
            Payload::Sockperf
        } else {
            Payload::Echoloop
        };
        let size = a.size.max();
        let segment = a.segment.unwrap_or(Segment { index: 0, count: 1 });
        if a.connections < segment.count as usize {
            return Err(format!(
                "--connections {} cannot be shared by {} segments: each needs at least one",
                a.connections, segment.count
            )
            .into());
        }
        // This generator's share: the first `total % count` segments take one more.
        let total = a.connections;
        let (i, n) = (segment.index as usize, segment.count as usize);
        let connections = total / n + usize::from(i < total % n);
        let queued = connections as u128 * a.pipeline as u128 * size as u128;
        if t.is_stream() && queued > MAX_QUEUED {
            return Err(format!(
                "--connections × --pipeline × --size is {} MiB for this generator: it would \
                 have to hold that much in write buffers when the server stops reading; keep \
                 it within {} MiB",
                queued >> 20,
                MAX_QUEUED >> 20
            )
            .into());
        }
        // Open loop sends on schedule whether or not the server keeps up: what may wait
        // unanswered is bounded too, per connection.
        let open_loop_cap = if t.is_stream() {
            let per_conn = OPEN_LOOP_QUEUED / (connections as u128 * size as u128).max(1);
            per_conn.clamp(1, OPEN_LOOP_CAP as u128) as usize
        } else {
            OPEN_LOOP_CAP
        };
        if a.trace && total != 1 {
            return Err(format!(
                "--trace follows one connection: use -c 1 (with {total}, their lines would \
                 interleave past reading)"
            )
            .into());
        }
        if a.reconnect && t.is_datagram() {
            return Err("--reconnect needs a stream transport (tcp, tls or unix)".into());
        }
        if a.rate.is_some() && a.pipeline > 1 {
            return Err(
                "--pipeline sets the closed loop; --rate runs an open loop: use one".into(),
            );
        }
        if a.reconnect && (a.rate.is_some() || a.pipeline > 1) {
            return Err(
                "--reconnect sends one message per connection: drop --rate and --pipeline".into(),
            );
        }
        if t != Transport::Tls {
            let mut given = a.tls.given();
            if a.tls_resume {
                given.push("--tls-resume");
            }
            if !given.is_empty() {
                return Err(format!("{} apply to tls only", given.join(", ")).into());
            }
        }
        if !a.source.is_empty() && !t.is_ip() {
            return Err("--source applies to tcp, tls and udp only".into());
        }
        let server_pid = match a.server_pid {
            Some(pid) => Some(check_pid(pid)?),
            None => None,
        };
        let target = if t.is_ip() {
            // A server to reach: port 0 and IPv4-mapped literals are refused with the
            // reason; a name with several addresses is reached at its first.
            let first = resolve_all(addr)?.into_iter().next();
            Endpoint::Inet(first.ok_or_else(|| format!("{addr} resolves to no address"))?)
        } else {
            Endpoint::Unix(UnixName::parse(addr)?)
        };
        if let Endpoint::Inet(target) = &target {
            for ip in &a.source {
                check_source(*ip, *target, t)?;
            }
        }
        let tls = if t == Transport::Tls {
            let cfg = client_config(&a.tls.options())?;
            let cfg = if a.tls_resume {
                cfg
            } else {
                // Full handshakes by default: that is the cost "handshakes per second"
                // usually means, and what a server pays for a new client.
                let mut c = (*cfg).clone();
                c.resumption = rustls::client::Resumption::disabled();
                Arc::new(c)
            };
            let name = match &a.tls.server_name {
                Some(n) => n.clone(),
                None => crate::cli::common::host_of(addr).to_owned(),
            };
            Some((cfg, server_name(&name)?))
        } else {
            None
        };
        let load = if a.reconnect {
            Load::Reconnect
        } else if let Some(rate) = a.rate {
            // Every connection of the run sends at the same pace, so a segment's rate is
            // its share of the connections.
            Load::Open {
                rate,
                interval: total as f64 / rate,
            }
        } else {
            Load::Closed {
                pipeline: a.pipeline,
            }
        };
        let start_at = a.start_at.map(|s| s.resolve()).transpose()?;
        let limit = raise_fd_limit();
        warn_fd_limit(connections, limit);
        Ok(Settings {
            transport: t,
            target,
            target_text: addr.to_owned(),
            connections,
            size,
            sizes: a.size.clone(),
            payload,
            trace: a.trace,
            load,
            connect_rate: a.connect_rate.map(|r| r / f64::from(segment.count)),
            threads: a.threads.min(connections),
            sources: a.source.clone(),
            tls,
            tls_resume: a.tls_resume,
            timeout: a.timeout,
            connect_timeout: a.connect_timeout,
            warmup: a.warmup,
            duration: a.duration,
            interval: a.interval,
            segment,
            start_at,
            server_pid,
            open_loop_cap,
            busy_poll: Some(a.busy_poll).filter(|d| !d.is_zero()),
        })
    }

    /// The source address for connection `slot`, round robin.
    pub(super) fn source_for(&self, slot: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[slot % self.sources.len()])
        }
    }

    /// Connection `slot` of this generator as numbered over the whole run: segments take
    /// the slots in turn, so staggered open-loop schedules interleave across generators.
    pub(super) fn global_slot(&self, slot: usize) -> usize {
        self.segment.index as usize + slot * self.segment.count as usize
    }

    pub(super) fn is_open_loop(&self) -> bool {
        matches!(self.load, Load::Open { .. })
    }

    /// The load model over the whole run (every segment of it).
    pub(super) fn mode(&self) -> String {
        match self.load {
            Load::Closed { pipeline } => format!("closed-loop pipeline={pipeline}"),
            Load::Open { rate, .. } => {
                if rate.fract() == 0.0 {
                    format!("open-loop rate={rate:.0}/s")
                } else {
                    format!("open-loop rate={rate}/s")
                }
            }
            Load::Reconnect => match (&self.tls, self.tls_resume) {
                (Some(_), false) => "reconnect (one echo per connection, full TLS handshakes)",
                (Some(_), true) => "reconnect (one echo per connection, TLS resumption allowed)",
                (None, _) => "reconnect (one echo per connection)",
            }
            .to_owned(),
        }
    }
}

/// `--size` within what the transport can carry and the generator can hold.
fn check_size(t: Transport, size: u64) -> Result<(), CliError> {
    if size == 0 {
        return Err("--size must be at least 1 byte".into());
    }
    if t.is_datagram() && size < HEADER as u64 {
        return Err(format!(
            "--size must be at least {HEADER} bytes for {}: each datagram carries a sequence number",
            t.name()
        )
        .into());
    }
    if t.is_datagram() && size > MAX_DATAGRAM {
        return Err(format!(
            "--size must be at most {MAX_DATAGRAM} bytes for {} (the largest datagram)",
            t.name()
        )
        .into());
    }
    if size > MAX_STREAM_MESSAGE {
        return Err(format!(
            "--size must be at most {} MiB: each message is built and checked whole in memory, \
             and a larger one measures nothing a 64 MiB one does not (the stream's bandwidth)",
            MAX_STREAM_MESSAGE >> 20
        )
        .into());
    }
    Ok(())
}

/// `--sockperf` needs a transport a `sockperf server` listens on, and sizes its header
/// and its server fit: every message carries the whole header and its length.
fn check_sockperf(t: Transport, sizes: &Sizes) -> Result<(), CliError> {
    if !matches!(t, Transport::Tcp | Transport::Udp) {
        return Err(format!(
            "--sockperf applies to tcp and udp only (a sockperf server listens on those), not {}",
            t.name()
        )
        .into());
    }
    if sizes.min() < SOCKPERF_HEADER {
        return Err(format!(
            "--sockperf needs --size of at least {SOCKPERF_HEADER} bytes: each message starts \
             with sockperf's {SOCKPERF_HEADER}-byte header"
        )
        .into());
    }
    if sizes.max() as u64 > MAX_SOCKPERF_MESSAGE {
        return Err(format!(
            "--sockperf needs --size of at most {MAX_SOCKPERF_MESSAGE} bytes: no sockperf \
             server accepts more (and without its -m, not more than 65507)"
        )
        .into());
    }
    Ok(())
}

/// A server PID must be readable now, or the numbers at the end would be missing.
fn check_pid(pid: u32) -> Result<u32, CliError> {
    match proc_cpu_ticks(pid) {
        Ok(_) => Ok(pid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("--server-pid {pid}: no such process").into())
        }
        Err(e) => Err(format!("--server-pid {pid}: cannot read /proc/{pid}/stat: {e}").into()),
    }
}

/// A source address must be local and of the target's family; checked once up front so a
/// typo is one clear error rather than a connect failure per connection.
fn check_source(ip: IpAddr, target: SocketAddr, t: Transport) -> Result<(), CliError> {
    if ip.is_ipv4() != target.is_ipv4() {
        return Err(
            format!("--source {ip}: not the same address family as the target {target}").into(),
        );
    }
    let probe = if t == Transport::Udp {
        std::net::UdpSocket::bind((ip, 0)).map(drop)
    } else {
        std::net::TcpListener::bind((ip, 0)).map(drop)
    };
    probe.map_err(|e| format!("--source {ip}: cannot use this local address: {e}").into())
}

/// Warns when the connections cannot all get a descriptor under the open-file limit (the
/// soft limit has been raised to the hard one already).
fn warn_fd_limit(connections: usize, limit: Option<u64>) {
    if let Some(limit) = limit {
        // A few descriptors go to the pollers, the wakers, stdio, the output files.
        if connections as u64 + 64 > limit {
            log::warn!(
                "{connections} connections need more descriptors than the open-file limit \
                 ({limit}, the hard limit); raise it (ulimit -Hn, LimitNOFILE=), or the excess \
                 connects will fail"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::args::{Segment, StartAt, parse_count, parse_segment, parse_start_at};
    use std::time::Duration;

    #[test]
    fn counts_accept_suffixes() {
        assert_eq!(parse_count("100"), Ok(100));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("0").is_err());
        assert!(parse_count("x").is_err());
    }

    fn settings(args: &[&str]) -> Result<super::Settings, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: super::super::BenchArgs,
        }
        let argv = std::iter::once("bench").chain(args.iter().copied());
        let cmd = Cmd::try_parse_from(argv).map_err(|e| e.to_string())?;
        super::Settings::from_args(&cmd.args).map_err(|e| e.to_string())
    }

    #[test]
    fn queues_are_bounded_in_open_loop_too() {
        // 1 GiB over 4 connections of 64 MiB messages: 4 unanswered each at most.
        let s = settings(&[
            "tcp",
            "127.0.0.1:7",
            "-c",
            "4",
            "--size",
            "64M",
            "--rate",
            "100",
        ]);
        assert_eq!(s.unwrap().open_loop_cap, 4);
        let s = settings(&["tcp", "127.0.0.1:7", "--rate", "1k"]).unwrap();
        assert_eq!(s.open_loop_cap, 1 << 16);
        // The budget is this generator's: its share of the connections.
        let big = [
            "tcp",
            "127.0.0.1:7",
            "-c",
            "100",
            "--pipeline",
            "100",
            "--size",
            "1M",
        ];
        assert!(settings(&big).unwrap_err().contains("write buffers"));
        let share = [&big[..], &["--segment", "0/4"]].concat();
        assert_eq!(settings(&share).unwrap().connections, 25);
    }

    #[test]
    fn segments() {
        assert_eq!(parse_segment("0/1"), Ok(Segment { index: 0, count: 1 }));
        assert_eq!(parse_segment("3/4"), Ok(Segment { index: 3, count: 4 }));
        for bad in [
            "4/4", "1/0", "-1/2", "+1/2", "1", "a/b", "1/2/3", " 1/2", "0/5000",
        ] {
            assert!(parse_segment(bad).is_err(), "{bad}");
        }
        assert!(parse_segment("4/4").unwrap_err().contains("below N"));
    }

    #[test]
    fn start_times() {
        assert!(matches!(
            parse_start_at("+5s"),
            Ok(StartAt::After(d)) if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            parse_start_at("1767225600.25"),
            Ok(StartAt::Unix(d)) if d == Duration::new(1_767_225_600, 250_000_000)
        ));
        for bad in ["", "x", "-5", "+", "+5x", "1.2.3", "1e9", "12.1234567891"] {
            assert!(parse_start_at(bad).is_err(), "{bad}");
        }
        // Resolution refuses the past and milliseconds taken for seconds.
        let past = parse_start_at("1000").unwrap().resolve().unwrap_err();
        assert!(past.to_string().contains("in the past"), "{past}");
        let far = parse_start_at("99999999999")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(far.to_string().contains("more than a day"), "{far}");
        assert!(parse_start_at("+1s").unwrap().resolve().is_ok());
    }
}
