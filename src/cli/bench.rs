//! `echoloop bench`: an echo load generator built on the library's own reactor.
//!
//! # Shape
//!
//! `--threads T` threads each run one [`EventLoop`] with every T-th connection of the run.
//! A stream connection (TCP, TLS, Unix) is a `StreamConn` handler; a datagram "connection"
//! (UDP, Unix datagram) is one socket with a `DgramSock` handler. The handlers of one
//! thread share an `Env`: the settings, the run's timeline, a random template the payloads
//! are cut from, and the thread's counters and latency [`Recorder`]s. Once a second each
//! thread sends a progress sample to the main thread, which prints the status line; at the
//! end each thread sends its totals, which the main thread merges into the [`Report`].
//!
//! Connections are opened by the thread's driver loop between `run_once` calls, from a
//! queue ordered by due time: all at once, or at `--connect-rate` (the poll timeout is the
//! ramp's timer). Connections that fail, break or (with `--reconnect`) finish are put back
//! in the same queue, so the requested concurrency holds for the whole run.
//!
//! # Load models
//!
//! * Closed loop (default): each connection keeps `--pipeline K` messages in flight; each
//!   complete echo records its round trip and sends the next message in the same callback.
//! * Open loop (`--rate R`): each of the N connections sends one message every N/R seconds
//!   (staggered so the total is smooth), driven by a per-connection timer. Latency counts
//!   from the moment a message was *due*, not when it went out, so a slow server cannot
//!   hide its stalls by delaying our sends (coordinated omission). The timer wakes up at
//!   millisecond granularity (the poll timeout), so up to ~1 ms of the generator's own
//!   lateness is included; that errs on the honest side.
//! * `--reconnect`: connect (plus TLS handshake), one echo, graceful close, repeat.
//!
//! # Verification
//!
//! Message `seq` of the connection with key `k` (unique per connection, including
//! reconnections) is 8 header bytes, `k ^ seq` little-endian, then a slice of the thread's
//! random template at an offset mixed from `k` and `seq` (messages shorter than 8 bytes
//! carry a prefix of the header). Sending is two `Ctx::send` calls from the template, with
//! no per-message allocation; checking is a slice comparison at the known stream offset, so
//! echoes that arrive in pieces are fine. A wrong byte counts one verify error; the stream
//! can no longer be trusted to be aligned, so the connection is aborted and reopened after
//! a short pause (its unanswered messages are not counted as timeouts).
//!
//! # Datagrams and loss
//!
//! A datagram carries its sequence number in the header, so `--size` must be at least 8.
//! Each socket keeps its messages in a queue covering a contiguous range of sequence
//! numbers; an echo finds its entry by `seq - first`. A sweep timer declares entries older
//! than `--timeout` lost. An echo for an entry already answered or declared lost counts as
//! late (and is still checked), never as the answer to a newer message.
//!
//! # Timeline
//!
//! `start` → `--warmup` → measured window → `end` → grace (`--timeout`, for the last
//! echoes) → stop. Round trips, bytes and losses count only inside the window; verify
//! errors, connect failures and timeouts count for the whole run. Connect latency is kept
//! for every initial connection (most happen during the warm-up); with `--reconnect` only
//! inside the window.
//!
//! # Exit status
//!
//! 0 after a run; 1 when an echo failed verification or no echo completed in the window
//! (the report is printed all the same), or for bad input (nothing is sent then).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::common::{
    BUSY_POLL_HELP, CliError, Transport, idle_strategy, init_logging, parse_level,
};
use super::report::{LatencySummary, Recorder, Report, status_line};
use super::units::{parse_duration, parse_rate, parse_size};
use crate::net::{Endpoint, PeerAddr, UnixName, resolve_one};
use crate::tls_config::{ClientTlsOptions, client_config, server_name};
use crate::{
    CloseReason, Config, ConnectOptions, Ctx, DatagramHandler, DgramCtx, EventLoop, Handler,
    TimerId,
};

/// Arguments of `echoloop bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Transport to load.
    #[arg(value_enum)]
    transport: Transport,
    /// Server address: host:port for tcp, tls and udp; a path or @name for unix and unix-dgram.
    #[arg(value_name = "ADDR")]
    addr: String,
    /// Concurrent connections (datagram sockets for udp and unix-dgram); 10k is accepted.
    #[arg(long, short = 'c', value_name = "N", value_parser = parse_count, default_value = "1")]
    connections: usize,
    /// Message size (64, 16k, 1M). Datagrams need at least 8 bytes and at most 65507.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64")]
    size: u64,
    /// Length of the measured window (10s, 2m).
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Run this long first and discard its measurements.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "0")]
    warmup: Duration,
    /// Messages each connection keeps in flight (closed loop; 1 is ping-pong).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pipeline: usize,
    /// Open loop: send this many messages per second in total (10k, 1M), latency measured
    /// from when each message was due.
    #[arg(long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Open connections at this many per second instead of all at once.
    #[arg(long, value_name = "CONNS_PER_S", value_parser = parse_rate)]
    connect_rate: Option<f64>,
    /// Use a new connection for every message: connect, TLS handshake, one echo, close.
    #[arg(long)]
    reconnect: bool,
    /// Reactor threads sharing the connections.
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: usize,
    /// Local source address, repeatable: connections use them in turn.
    #[arg(long, value_name = "IP")]
    source: Vec<IpAddr>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text) to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Trust the CAs in this PEM file instead of the system store (tls).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Name to verify the server certificate against (tls; default: the host of ADDR).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Let TLS reconnections resume sessions (default: every handshake is a full one).
    #[arg(long)]
    tls_resume: bool,
    /// A datagram with no echo within this is lost; also the grace for the last echoes.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "1s")]
    timeout: Duration,
    /// Give up on a connect (and TLS handshake) after this.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, default_value = "5s")]
    connect_timeout: Duration,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0", help = BUSY_POLL_HELP)]
    busy_poll: Duration,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level, default_value = "warn")]
    log_level: log::LevelFilter,
}

/// The clock ticks per second that `/proc/PID/stat` counts CPU time in (`USER_HZ`), as
/// the system says (`sysconf(_SC_CLK_TCK)`); 100 if it will not say.
pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf takes a plain integer and touches no memory of ours.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
    })
}

/// CPU time (user + system, all threads) that process `pid` has used so far, in ticks of
/// [`clock_ticks_per_sec`], read from `/proc/PID/stat`.
///
/// Sample it at the start and the end of a measured window: the difference divided by
/// `clock_ticks_per_sec()` is the CPU seconds the process spent in between.
///
/// # Errors
///
/// The process does not exist (any more), or the file is not in the expected format.
pub fn proc_cpu_ticks(pid: u32) -> io::Result<u64> {
    proc_cpu_split(pid).map(|t| t.user + t.system)
}

/// A process's CPU time split by where it was spent, in ticks of [`clock_ticks_per_sec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time running the program's own code (utime).
    pub user: u64,
    /// Time in the kernel on the program's behalf: system calls, and for a network server
    /// most of the network stack (stime).
    pub system: u64,
}

/// Like [`proc_cpu_ticks`], but user and system time apart: for a server on loopback the
/// system part is mostly the kernel's TCP/UDP work, the same for any server making the same
/// system calls, while the user part is what the server's own code costs.
///
/// # Errors
///
/// As [`proc_cpu_ticks`].
pub fn proc_cpu_split(pid: u32) -> io::Result<CpuTicks> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)?;
    parse_stat_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: unexpected format"),
        )
    })
}

/// utime and stime from the text of `/proc/PID/stat`.
fn parse_stat_ticks(stat: &str) -> Option<CpuTicks> {
    // Field 2, the command name, is in parentheses and may itself contain spaces and ')':
    // the fields after the *last* ')' are the unambiguous ones.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// Parses a count such as `100`, `10k` or `1M` (decimal multiples, whole numbers only).
fn parse_count(s: &str) -> Result<usize, String> {
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

/// Header bytes carried by every message: the sequence number mixed with the connection key.
const HEADER: usize = 8;
/// Number of different body offsets into the template.
const SPREAD: usize = 4096;
/// Largest datagram over IPv4 (65,535 minus the IP and UDP headers).
const MAX_DATAGRAM: u64 = 65_507;
/// Open-loop messages a connection may have in flight before sending waits for echoes
/// (they are still sent later, with their latency counted from when they were due).
const OPEN_LOOP_CAP: usize = 1 << 16;
/// Pause before reopening a connection that failed or broke, so a refusing server does
/// not get a connect storm.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Progress lines come this often.
const TICK: Duration = Duration::from_secs(1);

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Each connection keeps `pipeline` messages in flight.
    Closed { pipeline: usize },
    /// `rate` messages per second in total; each connection sends every `interval` seconds.
    Open { rate: f64, interval: f64 },
    /// One message per connection.
    Reconnect,
}

/// Everything a run needs, checked and resolved; shared read-only by the threads.
#[derive(Debug)]
struct Settings {
    transport: Transport,
    target: Endpoint,
    target_text: String,
    connections: usize,
    size: usize,
    load: Load,
    connect_rate: Option<f64>,
    threads: usize,
    sources: Vec<IpAddr>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    tls_resume: bool,
    timeout: Duration,
    connect_timeout: Duration,
    warmup: Duration,
    duration: Duration,
    /// The idle strategy of every load thread's loop.
    busy_poll: Option<Duration>,
}

impl Settings {
    fn from_args(a: &BenchArgs) -> Result<Settings, CliError> {
        let t = a.transport;
        if a.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if a.threads == 0 {
            return Err("--threads must be at least 1".into());
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
        if a.size == 0 {
            return Err("--size must be at least 1 byte".into());
        }
        if t.is_datagram() && a.size < HEADER as u64 {
            return Err(format!(
                "--size must be at least {HEADER} bytes for {}: each datagram carries a sequence number",
                t.name()
            )
            .into());
        }
        if t.is_datagram() && a.size > MAX_DATAGRAM {
            return Err(format!(
                "--size must be at most {MAX_DATAGRAM} bytes for {} (the largest datagram)",
                t.name()
            )
            .into());
        }
        let size = usize::try_from(a.size).map_err(|_| "--size is too large")?;
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
        if t != Transport::Tls && (a.ca.is_some() || a.server_name.is_some() || a.tls_resume) {
            return Err("--ca, --server-name and --tls-resume apply to tls only".into());
        }
        if !a.source.is_empty() && !t.is_ip() {
            return Err("--source applies to tcp, tls and udp only".into());
        }
        let target = if t.is_ip() {
            Endpoint::Inet(resolve_one(&a.addr)?)
        } else {
            Endpoint::Unix(UnixName::parse(&a.addr)?)
        };
        if let Endpoint::Inet(addr) = &target {
            for ip in &a.source {
                check_source(*ip, *addr, t)?;
            }
        }
        let tls = if t == Transport::Tls {
            let cfg = client_config(&ClientTlsOptions {
                ca: a.ca.as_deref(),
                client_cert: None,
            })?;
            let cfg = if a.tls_resume {
                cfg
            } else {
                // Full handshakes by default: that is the cost "handshakes per second"
                // usually means, and what a server pays for a new client.
                let mut c = (*cfg).clone();
                c.resumption = rustls::client::Resumption::disabled();
                Arc::new(c)
            };
            let name = match &a.server_name {
                Some(n) => n.clone(),
                None => host_of(&a.addr),
            };
            Some((cfg, server_name(&name)?))
        } else {
            None
        };
        let load = if a.reconnect {
            Load::Reconnect
        } else if let Some(rate) = a.rate {
            Load::Open {
                rate,
                interval: a.connections as f64 / rate,
            }
        } else {
            Load::Closed {
                pipeline: a.pipeline,
            }
        };
        warn_fd_limit(a.connections);
        Ok(Settings {
            transport: t,
            target,
            target_text: a.addr.clone(),
            connections: a.connections,
            size,
            load,
            connect_rate: a.connect_rate,
            threads: a.threads.min(a.connections),
            sources: a.source.clone(),
            tls,
            tls_resume: a.tls_resume,
            timeout: a.timeout,
            connect_timeout: a.connect_timeout,
            warmup: a.warmup,
            duration: a.duration,
            busy_poll: Some(a.busy_poll).filter(|d| !d.is_zero()),
        })
    }

    /// The source address for connection `slot`, round robin.
    fn source_for(&self, slot: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[slot % self.sources.len()])
        }
    }

    fn mode(&self) -> String {
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

/// The host part of `host:port`, without IPv6 brackets' port.
fn host_of(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.to_owned(),
        None => addr.to_owned(),
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

/// Warns when the connections cannot all get a descriptor under the soft open-file limit.
fn warn_fd_limit(connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        // A few descriptors go to the poller, the waker, stdio.
        if connections + 16 > soft {
            log::warn!(
                "{connections} connections need more descriptors than the open-file limit ({soft}); \
                 raise it with `ulimit -n`, or the excess connects will fail"
            );
        }
    }
}

/// The instants that divide a run.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    start: Instant,
    /// End of the warm-up: measuring starts.
    measure_start: Instant,
    /// End of the measured window: no new messages.
    end: Instant,
    /// The last echoes have had their chance; whatever is left is closed.
    grace_end: Instant,
}

impl Timeline {
    fn new(start: Instant, s: &Settings) -> Timeline {
        let measure_start = start + s.warmup;
        let end = measure_start + s.duration;
        Timeline {
            start,
            measure_start,
            end,
            grace_end: end + s.timeout + sweep_period(s.timeout) + Duration::from_millis(50),
        }
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }
}

/// How often a datagram socket looks for messages that timed out.
fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// `base + secs`, or `None` when that is too far away to represent (treated as "never").
fn after(base: Instant, secs: f64) -> Option<Instant> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| base.checked_add(d))
}

/// The splitmix64 finaliser: a cheap bijective mix, so distinct inputs stay distinct.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Pseudo-random bytes (xorshift64*), enough to make any misplaced byte visible.
fn random_template(len: usize, seed: u64) -> Box<[u8]> {
    let mut x = mix64(seed) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = word.len().min(len - out.len());
        out.extend_from_slice(&word[..n]);
    }
    out.into_boxed_slice()
}

/// The payload of every message: see the module docs ("Verification").
#[derive(Debug, Clone, Copy)]
struct Pattern<'a> {
    template: &'a [u8],
    size: usize,
}

impl<'a> Pattern<'a> {
    fn header_len(&self) -> usize {
        self.size.min(HEADER)
    }

    fn header(key: u64, seq: u64) -> [u8; HEADER] {
        (key ^ seq).to_le_bytes()
    }

    /// The sequence number a datagram's header claims (`data` holds at least 8 bytes).
    fn seq_of(key: u64, data: &[u8]) -> Option<u64> {
        let h: [u8; HEADER] = data.get(..HEADER)?.try_into().ok()?;
        Some(u64::from_le_bytes(h) ^ key)
    }

    /// The bytes after the header; the offset depends on both key and sequence number, so
    /// checking an echo against the wrong message fails.
    fn body(&self, key: u64, seq: u64) -> &'a [u8] {
        let start = (mix64(key.wrapping_add(seq.rotate_left(32))) % SPREAD as u64) as usize;
        &self.template[start..start + self.size - self.header_len()]
    }

    /// Whether `got` equals bytes `at..at + got.len()` of message `seq`; the caller keeps
    /// `at + got.len() <= size`.
    fn matches(&self, key: u64, seq: u64, at: usize, got: &[u8]) -> bool {
        let hl = self.header_len();
        let (mut at, mut got) = (at, got);
        if at < hl {
            let h = Self::header(key, seq);
            let n = (hl - at).min(got.len());
            if got[..n] != h[at..at + n] {
                return false;
            }
            at += n;
            got = &got[n..];
        }
        if got.is_empty() {
            return true;
        }
        let body = self.body(key, seq);
        body.get(at - hl..at - hl + got.len()) == Some(got)
    }

    /// Writes message `seq` into `buf` (exactly `size` bytes long).
    fn fill(&self, key: u64, seq: u64, buf: &mut [u8]) {
        let hl = self.header_len();
        buf[..hl].copy_from_slice(&Self::header(key, seq)[..hl]);
        buf[hl..].copy_from_slice(self.body(key, seq));
    }
}

/// Counters of one thread (and, merged, of the run).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    messages: u64,
    bytes_sent: u64,
    bytes_received: u64,
    verify_errors: u64,
    timeouts: u64,
    lost: u64,
    /// Echoes of messages already answered or declared lost (datagrams).
    late: u64,
    connects_ok: u64,
    connect_failures: u64,
    /// Connections established inside the measured window (for `--reconnect`).
    opened_in_window: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.messages += o.messages;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.verify_errors += o.verify_errors;
        self.timeouts += o.timeouts;
        self.lost += o.lost;
        self.late += o.late;
        self.connects_ok += o.connects_ok;
        self.connect_failures += o.connect_failures;
        self.opened_in_window += o.opened_in_window;
    }

    fn errors(&self) -> u64 {
        self.verify_errors + self.timeouts + self.lost + self.connect_failures
    }
}

/// What the handlers of one thread record into.
#[derive(Debug, Default)]
struct ThreadState {
    /// Connection keys handed out so far (see [`Env::key`]).
    serial: u64,
    c: Counters,
    latency: Recorder,
    connect: Recorder,
    /// Round trips since the last progress line (warm-up included).
    tick: Recorder,
    tick_msgs: u64,
    tick_bytes: u64,
    /// Connections to open again, not before the given instant.
    requeue: Vec<(Instant, usize)>,
    first_error: Option<String>,
}

impl ThreadState {
    /// A message's echo is complete and correct.
    fn complete(&mut self, tl: &Timeline, now: Instant, since: Instant, size: usize) {
        let rtt = now.saturating_duration_since(since);
        self.tick.record(rtt);
        self.tick_msgs += 1;
        self.tick_bytes += size as u64;
        if tl.in_window(now) {
            self.c.messages += 1;
            self.latency.record(rtt);
        }
    }

    fn note_error(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            let msg = what();
            log::debug!("{msg}");
            self.first_error = Some(msg);
        }
    }
}

/// What every handler of one thread reads: the run's settings, timeline and payload.
/// Read-only, so handlers share it freely; what they count goes to the loop's state
/// ([`ThreadState`], reached through `ctx.state()`).
#[derive(Debug)]
struct Env {
    s: Arc<Settings>,
    tl: Timeline,
    thread: usize,
    template: Box<[u8]>,
}

impl Env {
    fn pattern(&self) -> Pattern<'_> {
        Pattern {
            template: &self.template,
            size: self.s.size,
        }
    }

    /// A key no other connection of the run has: the thread in the high bits, a serial in
    /// the low ones, mixed bijectively.
    fn key(&self, serial: u64) -> u64 {
        mix64(((self.thread as u64) << 48) | (serial & ((1 << 48) - 1)))
    }

    /// When open-loop message `k` of connection `slot` is due, given when the connection's
    /// schedule started (`None`: never).
    fn due(&self, anchor: Instant, k: u64) -> Option<Instant> {
        match self.s.load {
            Load::Open { interval, .. } => after(anchor, k as f64 * interval),
            _ => None,
        }
    }

    /// Open loop: what a sender with `in_flight` unanswered messages, whose next message is
    /// number `k` of a schedule started at `anchor`, should do at `now`.
    fn open_loop_step(&self, anchor: Instant, k: u64, in_flight: usize, now: Instant) -> Step {
        match self.due(anchor, k) {
            Some(due) if due < self.tl.end => {
                if due > now {
                    Step::WaitUntil(due)
                } else if in_flight >= OPEN_LOOP_CAP {
                    // The next echo asks again; the backlog keeps its due times.
                    Step::Full
                } else {
                    Step::Send(due)
                }
            }
            _ => Step::Finish,
        }
    }

    /// Staggers the connections' schedules so the total rate is smooth.
    fn anchor(&self, now: Instant, slot: usize) -> Instant {
        match self.s.load {
            Load::Open { rate, .. } => after(now, slot as f64 / rate).unwrap_or(now),
            _ => now,
        }
    }
}

/// What an open-loop sender does next (see [`Env::open_loop_step`]).
enum Step {
    /// Send the message that was due at this time.
    Send(Instant),
    /// Nothing is due yet: wake up then.
    WaitUntil(Instant),
    /// Too many in flight: wait for echoes.
    Full,
    /// The schedule ends inside the measured window: stop sending.
    Finish,
}

/// One stream connection of the load.
struct StreamConn {
    env: Rc<Env>,
    slot: usize,
    key: u64,
    connect_started: Instant,
    opened: bool,
    /// No more messages: close once the last echo is in.
    finishing: bool,
    /// An echo was wrong: the stream's alignment cannot be trusted any more.
    broken: bool,
    /// Send (closed loop) or due (open loop) times of the messages in flight, oldest first.
    inflight: VecDeque<Instant>,
    /// Messages sent so far (the next sequence number).
    sent: u64,
    /// Bytes of the oldest message in flight already received and checked.
    recv_off: usize,
    /// Start of the open-loop schedule.
    anchor: Instant,
    timer_armed: bool,
}

impl StreamConn {
    fn new(env: Rc<Env>, slot: usize, key: u64, now: Instant) -> StreamConn {
        let cap = match env.s.load {
            Load::Closed { pipeline } => pipeline,
            Load::Open { .. } => 16,
            Load::Reconnect => 1,
        };
        StreamConn {
            env,
            slot,
            key,
            connect_started: now,
            opened: false,
            finishing: false,
            broken: false,
            inflight: VecDeque::with_capacity(cap),
            sent: 0,
            recv_off: 0,
            anchor: now,
            timer_armed: false,
        }
    }

    /// Sends the next message; `t` is when its latency starts counting.
    fn send_one(&mut self, ctx: &mut Ctx<'_, ThreadState>, t: Instant, now: Instant) {
        let p = self.env.pattern();
        let seq = self.sent;
        ctx.send(&Pattern::header(self.key, seq)[..p.header_len()]);
        let body = p.body(self.key, seq);
        if !body.is_empty() {
            ctx.send(body);
        }
        self.inflight.push_back(t);
        self.sent += 1;
        if self.env.tl.in_window(now) {
            ctx.state().c.bytes_sent += p.size as u64;
        }
    }

    /// Open loop: sends every message that is due, then arms the timer for the next one.
    fn pump(&mut self, ctx: &mut Ctx<'_, ThreadState>, now: Instant) {
        loop {
            match self
                .env
                .open_loop_step(self.anchor, self.sent, self.inflight.len(), now)
            {
                Step::Send(due) => self.send_one(ctx, due, now),
                Step::WaitUntil(due) => {
                    if !self.timer_armed {
                        // Measured from the loop's clock, which the timer heap uses too.
                        ctx.set_timer(due.saturating_duration_since(ctx.now()));
                        self.timer_armed = true;
                    }
                    return;
                }
                Step::Full => return,
                Step::Finish => {
                    self.finishing = true;
                    return;
                }
            }
        }
    }

    fn maybe_finish(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        if self.finishing && self.inflight.is_empty() {
            ctx.close();
        }
    }

    /// A wrong byte: count it and drop the connection (on_close reopens it).
    fn verify_failed(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        self.broken = true;
        let st = ctx.state();
        st.c.verify_errors += 1;
        let slot = self.slot;
        st.note_error(|| format!("connection {slot}: echo differs from what was sent"));
        ctx.abort();
    }
}

impl Handler<ThreadState> for StreamConn {
    fn on_open(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        let now = Instant::now();
        self.opened = true;
        let env = Rc::clone(&self.env);
        {
            let st = ctx.state();
            st.c.connects_ok += 1;
            let in_window = env.tl.in_window(now);
            if in_window {
                st.c.opened_in_window += 1;
            }
            if in_window || !matches!(env.s.load, Load::Reconnect) {
                st.connect
                    .record(now.saturating_duration_since(self.connect_started));
            }
        }
        if now >= env.tl.end {
            self.finishing = true;
            ctx.close();
            return;
        }
        match env.s.load {
            Load::Closed { pipeline } => {
                for _ in 0..pipeline {
                    self.send_one(ctx, now, now);
                }
            }
            Load::Reconnect => self.send_one(ctx, now, now),
            Load::Open { .. } => {
                self.anchor = env.anchor(now, self.slot);
                self.pump(ctx, now);
                self.maybe_finish(ctx);
            }
        }
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, ThreadState>, data: &[u8]) {
        if self.broken {
            return;
        }
        let now = Instant::now();
        let env = Rc::clone(&self.env);
        let p = env.pattern();
        let mut data = data;
        let mut received = 0;
        while !data.is_empty() {
            let Some(&since) = self.inflight.front() else {
                // More bytes than we sent.
                self.verify_failed(ctx);
                return;
            };
            let seq = self.sent - self.inflight.len() as u64;
            let n = (p.size - self.recv_off).min(data.len());
            if !p.matches(self.key, seq, self.recv_off, &data[..n]) {
                self.verify_failed(ctx);
                return;
            }
            received += n;
            self.recv_off += n;
            data = &data[n..];
            if self.recv_off < p.size {
                continue;
            }
            self.recv_off = 0;
            self.inflight.pop_front();
            ctx.state().complete(&env.tl, now, since, p.size);
            match env.s.load {
                Load::Closed { .. } if now < env.tl.end => self.send_one(ctx, now, now),
                Load::Open { .. } if !self.finishing => self.pump(ctx, now),
                _ => self.finishing = true,
            }
        }
        if env.tl.in_window(now) {
            ctx.state().c.bytes_received += received as u64;
        }
        self.maybe_finish(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, ThreadState>, _timer: TimerId) {
        self.timer_armed = false;
        if !self.finishing {
            self.pump(ctx, Instant::now());
        }
        self.maybe_finish(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, ThreadState>, reason: &CloseReason) {
        let now = Instant::now();
        let env = &self.env;
        let st = ctx.state();
        let slot = self.slot;
        if !self.opened {
            st.c.connect_failures += 1;
            let target = &env.s.target_text;
            st.note_error(|| format!("connect to {target}: {reason}"));
        } else if !self.broken {
            // Never answered: the connection ended (or the grace ran out) first.
            st.c.timeouts += self.inflight.len() as u64;
            if !self.finishing {
                st.note_error(|| format!("connection {slot} ended early: {reason}"));
            }
        }
        if now < env.tl.end {
            let normal = self.opened && !self.broken && matches!(env.s.load, Load::Reconnect);
            let at = if normal { now } else { now + RETRY_BACKOFF };
            st.requeue.push((at, slot));
        }
    }
}

/// One sent datagram.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Send (closed loop) or due (open loop) time.
    at: Instant,
    /// Sent inside the measured window: its loss counts.
    counted: bool,
    /// Answered, declared lost, or never sent.
    done: bool,
}

/// One datagram socket of the load.
struct DgramSock {
    env: Rc<Env>,
    slot: usize,
    key: u64,
    target: PeerAddr,
    /// The outgoing datagram, rebuilt in place for each message.
    buf: Vec<u8>,
    /// Messages `first..first + inflight.len()`, oldest first.
    inflight: VecDeque<Sent>,
    first: u64,
    /// Entries not done yet.
    pending: usize,
    finishing: bool,
    anchor: Instant,
    schedule_timer: Option<TimerId>,
    sweep_timer: Option<TimerId>,
}

impl DgramSock {
    fn new(env: Rc<Env>, slot: usize, key: u64, target: PeerAddr) -> DgramSock {
        let size = env.s.size;
        DgramSock {
            env,
            slot,
            key,
            target,
            buf: vec![0; size],
            inflight: VecDeque::with_capacity(64),
            first: 0,
            pending: 0,
            finishing: false,
            anchor: Instant::now(),
            schedule_timer: None,
            sweep_timer: None,
        }
    }

    fn next_seq(&self) -> u64 {
        self.first + self.inflight.len() as u64
    }

    fn send_one(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, t: Instant, now: Instant) {
        let seq = self.next_seq();
        let env = Rc::clone(&self.env);
        env.pattern().fill(self.key, seq, &mut self.buf);
        let counted = env.tl.in_window(now);
        let result = ctx.send_to(&self.buf, &self.target);
        let st = ctx.state();
        match result {
            Ok(()) => {
                self.inflight.push_back(Sent {
                    at: t,
                    counted,
                    done: false,
                });
                self.pending += 1;
                if counted {
                    st.c.bytes_sent += self.buf.len() as u64;
                }
            }
            Err(e) => {
                // Never left: lost, without waiting for the timeout. The entry keeps the
                // sequence numbers contiguous.
                self.inflight.push_back(Sent {
                    at: t,
                    counted,
                    done: true,
                });
                if counted {
                    st.c.lost += 1;
                }
                let target = &self.target;
                st.note_error(|| format!("send to {target}: {e}"));
            }
        }
    }

    /// Closed loop: back to `pipeline` messages in flight.
    fn top_up(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, now: Instant) {
        if let Load::Closed { pipeline } = self.env.s.load {
            if now < self.env.tl.end {
                // Bounded: a failed send does not raise `pending`.
                for _ in self.pending..pipeline {
                    self.send_one(ctx, now, now);
                }
            } else {
                self.finishing = true;
            }
        }
    }

    /// Open loop: sends what is due and arms the timer for the next message.
    fn pump(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, now: Instant) {
        loop {
            match self
                .env
                .open_loop_step(self.anchor, self.next_seq(), self.pending, now)
            {
                Step::Send(due) => self.send_one(ctx, due, now),
                Step::WaitUntil(due) => {
                    if self.schedule_timer.is_none() {
                        let after = due.saturating_duration_since(ctx.now());
                        self.schedule_timer = Some(ctx.set_timer(after));
                    }
                    return;
                }
                Step::Full => return,
                Step::Finish => {
                    self.finishing = true;
                    return;
                }
            }
        }
    }

    /// Drops answered entries from the front and declares the ones past the timeout lost.
    fn sweep(&mut self, st: &mut ThreadState, now: Instant) {
        let timeout = self.env.s.timeout;
        let mut lost = 0;
        while let Some(front) = self.inflight.front() {
            if !front.done {
                if now.saturating_duration_since(front.at) < timeout {
                    break;
                }
                // Entries are in time order: everything behind this one is younger.
                self.pending -= 1;
                if front.counted {
                    lost += 1;
                }
            }
            self.inflight.pop_front();
            self.first += 1;
        }
        if lost > 0 {
            st.c.lost += lost;
        }
    }

    /// Drops answered entries from the front (cheap; no clock).
    fn trim(&mut self) {
        while self.inflight.front().is_some_and(|s| s.done) {
            self.inflight.pop_front();
            self.first += 1;
        }
    }

    fn maybe_finish(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        if self.finishing && self.pending == 0 {
            ctx.close();
        }
    }
}

impl DatagramHandler<ThreadState> for DgramSock {
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        let now = Instant::now();
        ctx.state().c.connects_ok += 1;
        self.sweep_timer = Some(ctx.set_timer(sweep_period(self.env.s.timeout)));
        if now >= self.env.tl.end {
            self.finishing = true;
        } else if let Load::Open { .. } = self.env.s.load {
            self.anchor = self.env.anchor(now, self.slot);
            self.pump(ctx, now);
        } else {
            self.top_up(ctx, now);
        }
        self.maybe_finish(ctx);
    }

    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, data: &[u8], _from: &PeerAddr) {
        let now = Instant::now();
        let env = Rc::clone(&self.env);
        let p = env.pattern();
        let seq = Pattern::seq_of(self.key, data);
        let valid = |seq: u64| data.len() == p.size && p.matches(self.key, seq, 0, data);
        let st = ctx.state();
        match seq {
            Some(seq) if seq < self.first => {
                // Answered or declared lost already: never taken for a newer message.
                if valid(seq) {
                    st.c.late += 1;
                } else {
                    st.c.verify_errors += 1;
                }
            }
            Some(seq) if seq < self.next_seq() => {
                let entry = &mut self.inflight[(seq - self.first) as usize];
                if entry.done {
                    if valid(seq) {
                        st.c.late += 1;
                    } else {
                        st.c.verify_errors += 1;
                    }
                } else {
                    entry.done = true;
                    let since = entry.at;
                    self.pending -= 1;
                    if valid(seq) {
                        st.complete(&env.tl, now, since, p.size);
                        if env.tl.in_window(now) {
                            st.c.bytes_received += data.len() as u64;
                        }
                    } else {
                        st.c.verify_errors += 1;
                    }
                }
            }
            // Too short, or a sequence number never sent: corrupted.
            _ => {
                st.c.verify_errors += 1;
                let slot = self.slot;
                st.note_error(|| format!("socket {slot}: echo differs from what was sent"));
            }
        }
        self.trim();
        match env.s.load {
            Load::Open { .. } if !self.finishing => self.pump(ctx, now),
            Load::Open { .. } => {}
            _ => self.top_up(ctx, now),
        }
        self.maybe_finish(ctx);
    }

    fn on_timer(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, timer: TimerId) {
        let now = Instant::now();
        if Some(timer) == self.schedule_timer {
            self.schedule_timer = None;
            if !self.finishing {
                self.pump(ctx, now);
            }
        } else if Some(timer) == self.sweep_timer {
            self.sweep(ctx.state(), now);
            match self.env.s.load {
                Load::Open { .. } => {
                    if now >= self.env.tl.end {
                        self.finishing = true;
                    } else if !self.finishing {
                        self.pump(ctx, now);
                    }
                }
                _ => self.top_up(ctx, now),
            }
            self.sweep_timer = Some(ctx.set_timer(sweep_period(self.env.s.timeout)));
        }
        self.maybe_finish(ctx);
    }

    fn on_close(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        // Still unanswered when the run was cut off: lost.
        let lost = self
            .inflight
            .iter()
            .filter(|s| !s.done && s.counted)
            .count();
        ctx.state().c.lost += lost as u64;
    }
}

/// Messages from the load threads to the main thread.
#[derive(Debug)]
enum Msg {
    /// Once a second: the last second's figures of one thread.
    Tick {
        thread: usize,
        tick: u64,
        msgs: u64,
        bytes: u64,
        p99_us: u64,
        errors: u64,
    },
    /// The thread is done.
    Done(usize, Box<Result<ThreadResult, String>>),
}

/// A thread's totals.
#[derive(Debug)]
struct ThreadResult {
    c: Counters,
    latency: Recorder,
    connect: Recorder,
    first_error: Option<String>,
}

/// The target as a datagram destination.
fn datagram_target(target: &Endpoint) -> io::Result<PeerAddr> {
    match target {
        Endpoint::Inet(a) => Ok(PeerAddr::Inet(*a)),
        Endpoint::Unix(UnixName::Path(p)) => {
            std::os::unix::net::SocketAddr::from_pathname(p).map(PeerAddr::Unix)
        }
        Endpoint::Unix(UnixName::Abstract(n)) => {
            std::os::unix::net::SocketAddr::from_abstract_name(n).map(PeerAddr::Unix)
        }
    }
}

/// Starts connection (or socket) `slot` in `el`.
fn open_slot(el: &mut EventLoop<ThreadState>, env: &Rc<Env>, slot: usize) -> Result<(), String> {
    let s = &env.s;
    let serial = el.state().serial;
    el.state_mut().serial += 1;
    let key = env.key(serial);
    let now = Instant::now();
    match s.transport {
        Transport::Tcp | Transport::Tls | Transport::Unix => {
            let mut opts = ConnectOptions::new().timeout(s.connect_timeout);
            if let Some((cfg, name)) = &s.tls {
                opts = opts.tls(Arc::clone(cfg), name.clone());
            }
            if let Some(ip) = s.source_for(slot) {
                opts = opts.source(ip);
            }
            let handler = StreamConn::new(Rc::clone(env), slot, key, now);
            // A connect that fails, even at once (no descriptor, address unavailable...),
            // is counted and retried by the handler's `on_close`.
            el.connect(&s.target, opts, Box::new(handler));
            Ok(())
        }
        Transport::Udp => {
            let Endpoint::Inet(target) = &s.target else {
                return Err("udp needs host:port".into());
            };
            let ip = s.source_for(slot).unwrap_or(if target.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            });
            let handler = DgramSock::new(Rc::clone(env), slot, key, PeerAddr::Inet(*target));
            el.bind_udp(SocketAddr::new(ip, 0), Box::new(handler))
                .map(drop)
                .map_err(|e| format!("cannot open a udp socket: {e}"))
        }
        Transport::UnixDgram => {
            let target = datagram_target(&s.target).map_err(|e| format!("{}: {e}", s.target))?;
            // The server can only answer a named socket; an abstract name leaves no file
            // behind.
            let name = UnixName::Abstract(
                format!(
                    "echoloop-bench-{}-{}-{key:016x}",
                    std::process::id(),
                    env.thread
                )
                .into_bytes(),
            );
            let handler = DgramSock::new(Rc::clone(env), slot, key, target);
            el.bind_unix_datagram(&name, Box::new(handler))
                .map(drop)
                .map_err(|e| format!("cannot open a unix-dgram socket: {e}"))
        }
    }
}

/// One load thread: its own reactor, its share of the connections, until the run is over.
fn drive(
    thread: usize,
    s: Arc<Settings>,
    tl: Timeline,
    slots: Vec<usize>,
    tx: &mpsc::Sender<Msg>,
) -> Result<ThreadResult, String> {
    let config = Config {
        // A closing connection waits this long for the server's side of the close.
        close_timeout: s.timeout,
        // Every thread's loop spins on its own.
        busy_poll: s.busy_poll,
        ..Config::default()
    };
    let mut el = EventLoop::with_state(config, ThreadState::default())
        .map_err(|e| format!("cannot create a poller: {e}"))?;
    let template = random_template(SPREAD + s.size, thread as u64);
    let env = Rc::new(Env {
        s: Arc::clone(&s),
        tl,
        thread,
        template,
    });

    // Connections to open, earliest first. With --connect-rate connection i is due at
    // i / rate: the poll timeout below is the ramp's timer.
    let mut queue: BinaryHeap<Reverse<(Instant, usize)>> = slots
        .iter()
        .map(|&i| {
            let at = match s.connect_rate {
                Some(r) => after(tl.start, i as f64 / r).unwrap_or(tl.grace_end),
                None => tl.start,
            };
            Reverse((at, i))
        })
        .collect();
    let mut next_tick = tl.start + TICK;
    let mut tick = 1;
    loop {
        let now = Instant::now();
        queue.extend(
            el.state_mut()
                .requeue
                .drain(..)
                .map(|(at, slot)| Reverse((at, slot))),
        );
        if now < tl.end {
            while let Some(&Reverse((at, slot))) = queue.peek() {
                if at > now {
                    break;
                }
                queue.pop();
                open_slot(&mut el, &env, slot)?;
            }
        }
        if now >= next_tick && next_tick <= tl.end {
            let st = el.state_mut();
            let msg = Msg::Tick {
                thread,
                tick,
                msgs: st.tick_msgs,
                bytes: st.tick_bytes,
                p99_us: st.tick.percentile_us(0.99).round() as u64,
                errors: st.c.errors(),
            };
            st.tick.reset();
            st.tick_msgs = 0;
            st.tick_bytes = 0;
            // The main thread only stops listening when it gave up on us.
            let _ = tx.send(msg);
            tick += 1;
            next_tick += TICK;
        }
        if (now >= tl.end && el.is_empty()) || now >= tl.grace_end {
            break;
        }
        let mut wake = tl.grace_end;
        if now < tl.end {
            wake = wake.min(tl.end);
            if let Some(&Reverse((at, _))) = queue.peek() {
                wake = wake.min(at);
            }
        }
        if next_tick <= tl.end {
            wake = wake.min(next_tick);
        }
        el.run_once(Some(wake.saturating_duration_since(now)))
            .map_err(|e| format!("event loop: {e}"))?;
    }
    // Whatever is still open has had its grace: a short graceful close, then a forced one.
    // Closing reports every connection's unanswered messages to its handler.
    el.stop(Duration::from_millis(100));
    let hard_stop = Instant::now() + Duration::from_secs(2);
    while el
        .run_once(Some(Duration::from_millis(20)))
        .map_err(|e| format!("event loop: {e}"))?
    {
        if Instant::now() >= hard_stop {
            break;
        }
    }
    let st = std::mem::take(el.state_mut());
    drop(el);
    Ok(ThreadResult {
        c: st.c,
        latency: st.latency,
        connect: st.connect,
        first_error: st.first_error,
    })
}

/// Prints the once-a-second status line from the threads' samples.
#[derive(Debug)]
struct Progress {
    threads: usize,
    terminal: bool,
    warmup: Duration,
    /// Per tick: (threads reported, msgs, bytes, worst p99).
    pending: BTreeMap<u64, (usize, u64, u64, u64)>,
    errors: Vec<u64>,
    drawn: bool,
}

impl Progress {
    fn new(threads: usize, warmup: Duration) -> Progress {
        Progress {
            threads,
            terminal: io::stderr().is_terminal(),
            warmup,
            pending: BTreeMap::new(),
            errors: vec![0; threads],
            drawn: false,
        }
    }

    fn add(&mut self, thread: usize, tick: u64, msgs: u64, bytes: u64, p99: u64, errors: u64) {
        if let Some(e) = self.errors.get_mut(thread) {
            *e = errors;
        }
        let entry = self.pending.entry(tick).or_default();
        entry.0 += 1;
        entry.1 += msgs;
        entry.2 += bytes;
        // With several threads this is the slowest thread's p99: an upper bound.
        entry.3 = entry.3.max(p99);
        if entry.0 >= self.threads {
            let (_, msgs, bytes, p99) = *entry;
            self.pending.remove(&tick);
            let elapsed = TICK * tick as u32;
            let secs = TICK.as_secs_f64();
            let mut line = status_line(
                elapsed,
                msgs as f64 / secs,
                bytes as f64 / secs,
                p99,
                self.errors.iter().sum(),
            );
            if elapsed <= self.warmup {
                line.push_str("  (warm-up)");
            }
            let mut err = io::stderr().lock();
            // Progress is best effort: a closed stderr must not stop the run.
            let _ = if self.terminal {
                write!(err, "\r{line}\x1b[K")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
            self.drawn = true;
        }
    }

    fn finish(&mut self) {
        if self.terminal && self.drawn {
            eprintln!();
        }
    }
}

/// This process's CPU ticks now, with the instant they were read.
fn self_cpu() -> Option<(Instant, u64)> {
    proc_cpu_ticks(std::process::id())
        .ok()
        .map(|t| (Instant::now(), t))
}

/// Runs the load generator: prints progress on stderr, then the report on stdout. See the
/// module docs for the exit status.
pub fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    init_logging(args.log_level);
    let s = Arc::new(Settings::from_args(&args)?);
    let tl = Timeline::new(Instant::now(), &s);
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for t in 0..s.threads {
        let slots: Vec<usize> = (t..s.connections).step_by(s.threads).collect();
        let s = Arc::clone(&s);
        let tx = tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("echoloop-bench-{t}"))
            .spawn(move || {
                let r = drive(t, s, tl, slots, &tx);
                let _ = tx.send(Msg::Done(t, Box::new(r)));
            })?;
        handles.push(h);
    }
    drop(tx);

    let mut progress = Progress::new(s.threads, s.warmup);
    let mut cpu_start = None;
    let mut cpu_end = None;
    let mut results: Vec<Option<ThreadResult>> = (0..s.threads).map(|_| None).collect();
    let mut remaining = s.threads;
    // Threads stop by themselves at grace_end plus a bounded close; this only guards
    // against a bug hanging the run.
    let give_up = tl.grace_end + Duration::from_secs(10);
    while remaining > 0 {
        let now = Instant::now();
        if cpu_start.is_none() && now >= tl.measure_start {
            cpu_start = self_cpu();
        }
        if cpu_end.is_none() && now >= tl.end {
            cpu_end = self_cpu();
        }
        let wake = if cpu_start.is_none() {
            tl.measure_start
        } else if cpu_end.is_none() {
            tl.end
        } else {
            give_up
        };
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Tick {
                thread,
                tick,
                msgs,
                bytes,
                p99_us,
                errors,
            }) => progress.add(thread, tick, msgs, bytes, p99_us, errors),
            Ok(Msg::Done(t, r)) => {
                let r = r.inspect_err(|_| progress.finish())?;
                results[t] = Some(r);
                remaining -= 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= give_up {
                    progress.finish();
                    return Err("the load threads did not finish".into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    progress.finish();
    // On a loaded machine this thread may first run again only when the load threads are
    // done, past the window's end: take the missing reading now rather than report none.
    if cpu_start.is_none() {
        cpu_start = self_cpu();
    }
    if cpu_end.is_none() {
        cpu_end = self_cpu();
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
    let mut latency = Recorder::new();
    let mut connect = Recorder::new();
    let mut first_error = None;
    for r in results.into_iter().flatten() {
        c.add(&r.c);
        latency.merge(&r.latency);
        connect.merge(&r.connect);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let generator_cpu_percent = match (cpu_start, cpu_end) {
        (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
            let cpu_secs = b.saturating_sub(a) as f64 / clock_ticks_per_sec() as f64;
            Some(100.0 * cpu_secs / (t1 - t0).as_secs_f64())
        }
        _ => None,
    };
    let duration_secs = s.duration.as_secs_f64();
    let report = Report {
        mode: s.mode(),
        transport: s.transport.name().to_owned(),
        target: s.target_text.clone(),
        idle_strategy: idle_strategy(s.busy_poll),
        connections_requested: s.connections as u64,
        connections_up: c.connects_ok,
        connect_failures: c.connect_failures,
        duration_secs,
        messages: c.messages,
        bytes_sent: c.bytes_sent,
        bytes_received: c.bytes_received,
        verify_errors: c.verify_errors,
        timeouts: c.timeouts,
        lost: c.lost,
        latency: LatencySummary::from_recorder(&latency),
        connect_latency: if s.transport.is_datagram() {
            None
        } else {
            Some(LatencySummary::from_recorder(&connect))
        },
        reconnects_per_sec: match s.load {
            Load::Reconnect => Some(c.opened_in_window as f64 / duration_secs),
            _ => None,
        },
        generator_cpu_percent,
    };
    if let Some(path) = &args.hgrm {
        let write = || -> io::Result<()> {
            let mut f = io::BufWriter::new(std::fs::File::create(path)?);
            latency.write_hgrm(&mut f)?;
            f.flush()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    {
        let mut out = io::stdout().lock();
        if args.json {
            writeln!(out, "{}", report.to_json())?;
        } else {
            writeln!(out, "{report}")?;
        }
        out.flush()?;
    }
    if c.late > 0 {
        eprintln!(
            "echoloop: {} late or duplicate echoes (answered or declared lost before)",
            c.late
        );
    }
    if let Some(e) = &first_error {
        eprintln!("echoloop: first problem seen: {e}");
    }
    if c.verify_errors > 0 {
        eprintln!(
            "echoloop: {} echoes differed from what was sent",
            c.verify_errors
        );
        return Ok(ExitCode::FAILURE);
    }
    if c.messages == 0 {
        eprintln!("echoloop: no echo completed in the measured window");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{
        CpuTicks, Duration, Instant, Pattern, SPREAD, mix64, parse_count, parse_stat_ticks,
        proc_cpu_ticks, random_template,
    };

    #[test]
    fn stat_parsing_uses_fields_after_the_last_paren() {
        // Field 2 holds a name with spaces and parentheses; utime=1234, stime=56.
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat_ticks(stat),
            Some(CpuTicks {
                user: 1234,
                system: 56
            })
        );
        assert_eq!(parse_stat_ticks("42 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("no paren"), None);
    }

    #[test]
    fn own_cpu_ticks_grow_with_work() {
        let before = proc_cpu_ticks(std::process::id()).unwrap();
        let t0 = Instant::now();
        let mut x = 0_u64;
        while t0.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(mix64(x));
        }
        let after = proc_cpu_ticks(std::process::id()).unwrap();
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn pattern_differs_per_connection_and_message_and_checks_pieces() {
        let template = random_template(SPREAD + 100, 7);
        let p = Pattern {
            template: &template,
            size: 100,
        };
        let mut a = vec![0; 100];
        let mut b = vec![0; 100];
        p.fill(1, 5, &mut a);
        p.fill(1, 6, &mut b);
        assert_ne!(a, b);
        p.fill(2, 5, &mut b);
        assert_ne!(a, b);
        // Any split of the message checks out; any flipped byte does not.
        for cut in 0..100 {
            assert!(p.matches(1, 5, 0, &a[..cut]));
            assert!(p.matches(1, 5, cut, &a[cut..]));
            let mut bad = a.clone();
            bad[cut] ^= 0x20;
            assert!(!p.matches(1, 5, 0, &bad), "flip at {cut}");
        }
        assert!(!p.matches(1, 6, 0, &a));
        assert_eq!(Pattern::seq_of(1, &a), Some(5));
        // Messages shorter than the header carry a prefix of it.
        let short = Pattern {
            template: &template,
            size: 3,
        };
        let mut c = vec![0; 3];
        short.fill(9, 1, &mut c);
        assert_eq!(c[..], Pattern::header(9, 1)[..3]);
        assert!(short.matches(9, 1, 1, &c[1..]));
    }

    #[test]
    fn counts_accept_suffixes() {
        assert_eq!(parse_count("100"), Ok(100));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("0").is_err());
        assert!(parse_count("x").is_err());
    }
}
