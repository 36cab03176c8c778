//! cargo bench --bench compare
//!
//! Side by side: `echoloop serve` against a baseline echo server written here with tokio on
//! a current_thread runtime (one core, like ours). Both are driven by the same
//! `echoloop bench` scenarios, alternating A B A B, the server pinned to core 0 and the
//! generator to core 1. On two cores the generator pays the kernel about as much per
//! message as the server, so msgs/s mostly measures the generator; the figure that
//! compares servers is the server's CPU time per echoed message (user+sys from
//! /proc/PID/stat over the run, divided by messages). Each row prints the medians and the
//! ratio echoloop / tokio (lower is better for CPU and memory), taken as the median of the
//! rounds' own ratios so that the machine's slow and fast phases cancel. The last columns
//! split off the user-space part of the server's CPU per message (utime alone): the cost
//! of each server's own code, without the kernel's TCP/UDP work that dominates on loopback.
//!
//! For plain TCP and UDP a third server runs too, printed under the row: the floor, a bare
//! mio loop that does nothing but echo (`mod floor`). No design can do much better than it,
//! so its ratio against tokio shows what is left to win at all.
//!
//! Row h is fan-out (`mod fanout`, in benches/fanout/): one publisher, 100 subscribers,
//! 64-byte messages relayed by a broker to every subscriber, the publisher pipelining.
//! Not an echo, so not `echoloop bench`: the brokers and the generator are written here.
//! Three brokers run in each round: (i) an echoloop broker calling
//! `ctx.conn(sub).send(msg)` per message per subscriber, the natural code; (ii) the same
//! gathering each callback's messages by hand and sending once per subscriber; (iii) a
//! tokio current_thread broker. Each is measured per delivery (a message received by one
//! subscriber): deliveries/s, server CPU, and write system calls (counted with
//! `perf stat` over the same window). Under it, the targets as same-round ratios:
//! deliveries/s (i) ÷ (ii) ≥ 0.9, CPU (i) ÷ tokio ≤ 1.0, write calls (i) ≤ 0.05.
//!
//! Row i (not the broker (i) above) is fairness (`mod fair`, in benches/fair/): plain TCP echoes on a loop that 500
//! clients keep busy with TLS handshakes, with an ECDSA and an RSA certificate: the
//! echoes' p50 and p99, and handshakes per second.
//!
//! Environment: `ECHOLOOP_BENCH_SECS` (default 5) seconds per run, `ECHOLOOP_BENCH_ROUNDS`
//! (default 3) runs per server, `ECHOLOOP_BENCH_ONLY=a,c` to pick scenarios, and
//! `ECHOLOOP_BENCH_PREVIOUS=/path/to/echoloop` to add a fourth server: another build of
//! echoloop (say, the previous main), run the same way and printed under each row as the
//! paired ratio of this build to it — how a change is shown to cost nothing (not for row h,
//! whose brokers are built into this binary).
//!
//! The same binary is also the baseline server: run with
//! `ECHOLOOP_BASELINE=<tcp|udp|tls|floor-tcp|floor-udp|fanout-send|fanout-outbox|fanout-tokio>`
//! and `ECHOLOOP_BASELINE_ADDR`, it prints `listening <kind> <addr>` and serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

mod common;
mod fair;
mod fanout;

use crate::common::procfs::proc_cpu_split;
use common::{Pki, env_num, median, pinned};

const ECHOLOOP: &str = env!("CARGO_BIN_EXE_echoloop");

fn main() {
    if let Ok(kind) = std::env::var("ECHOLOOP_BASELINE") {
        if let Some(broker) = kind.strip_prefix("fanout-") {
            fanout::serve(broker);
        } else if let Some(transport) = kind.strip_prefix("floor-") {
            floor::serve(transport);
        } else {
            baseline::serve(&kind);
        }
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Only
    // measure when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: run with `cargo bench --bench compare`");
        return;
    }
    let secs: f64 = env_num("ECHOLOOP_BENCH_SECS", 5.0);
    let rounds: usize = env_num("ECHOLOOP_BENCH_ROUNDS", 3.0) as usize;
    let only = std::env::var("ECHOLOOP_BENCH_ONLY").unwrap_or_default();
    let previous = std::env::var("ECHOLOOP_BENCH_PREVIOUS").ok();
    let pki = Pki::generate("compare");
    let pin = Path::new("/usr/bin/taskset").exists();
    if !pin {
        eprintln!("taskset not found: server and generator are not pinned");
    }

    let scenarios = [
        Scenario::load(
            "a",
            "tcp, 100 conns, 64 B, ping-pong",
            "tcp",
            &["--connections", "100", "--size", "64"],
        ),
        Scenario::load(
            "b",
            "tcp, 1000 conns, 512 B, pipeline 4",
            "tcp",
            &[
                "--connections",
                "1000",
                "--size",
                "512",
                "--pipeline",
                "4",
                "--connect-rate",
                "5000",
            ],
        ),
        Scenario::load(
            "c",
            "tcp, 10 conns, 64 KiB bulk",
            "tcp",
            &["--connections", "10", "--size", "64k"],
        ),
        Scenario::load(
            "d",
            "udp, 16 sockets, 64 B",
            "udp",
            &["--connections", "16", "--size", "64"],
        ),
        // Not one of the scenarios: the same clients with 8 datagrams in flight
        // each, so the server's queue runs deep and receiving in batches pays.
        Scenario::load(
            "d8",
            "udp, 16 sockets, 64 B, pipeline 8",
            "udp",
            &["--connections", "16", "--size", "64", "--pipeline", "8"],
        ),
        Scenario::load(
            "e",
            "tls, 100 conns, 1 KiB",
            "tls",
            &["--connections", "100", "--size", "1k"],
        ),
        Scenario::load(
            "f",
            "tls --reconnect (handshakes)",
            "tls",
            &["--connections", "10", "--size", "64", "--reconnect"],
        ),
        Scenario::idle("g", "10,000 idle tcp conns: server RSS"),
    ];
    println!("echoloop vs tokio current_thread baseline; {rounds} rounds x {secs} s; medians\n");
    println!(
        "{:<3} {:<38} {:>13} {:>13} {:>7} | {:>11} {:>11} | {:>8} {:>8} | {:>17} {:>6}",
        "",
        "scenario",
        "echoloop",
        "tokio",
        "ratio",
        "msgs/s el",
        "msgs/s tk",
        "gen% el",
        "gen% tk",
        "user us/msg el tk",
        "ratio"
    );
    for sc in &scenarios {
        if !only.is_empty() && !only.split(',').any(|o| o == sc.id) {
            continue;
        }
        // One entry per round: echoloop, tokio, floor, previous (None: not run, or failed).
        let mut results: Vec<[Option<Sample>; 4]> = Vec::new();
        for _ in 0..rounds {
            let mut round = [None; 4];
            let servers = [
                ServerKind::Echoloop(ECHOLOOP),
                ServerKind::Tokio,
                ServerKind::Floor,
                ServerKind::Echoloop(previous.as_deref().unwrap_or("")),
            ];
            for (i, server) in servers.into_iter().enumerate() {
                if matches!(server, ServerKind::Floor) && !sc.floor
                    || matches!(server, ServerKind::Echoloop(""))
                {
                    continue;
                }
                match run_one(sc, server, secs, &pki, pin) {
                    Ok(s) => round[i] = Some(s),
                    Err(e) => eprintln!("{} {:?}: {e}", sc.id, server),
                }
            }
            results.push(round);
        }
        print_row(sc, &results);
    }
    // Its own servers and generator, and a row of its own shape (three servers, and
    // figures per delivery): see `mod fanout`.
    if only.is_empty() || only.split(',').any(|o| o == "h") {
        fanout::bench(secs, rounds, pin);
    }
    // Plain echoes on a loop busy with TLS handshakes: see `mod fair`.
    if only.is_empty() || only.split(',').any(|o| o == "i") {
        fair::bench(secs, rounds, pin, previous.as_deref());
    }
}

#[derive(Debug, Clone, Copy)]
enum ServerKind<'a> {
    /// `echoloop serve` from this binary (this build, or another one given by path).
    Echoloop(&'a str),
    Tokio,
    /// The bare mio loop of `mod floor` (plain TCP and UDP scenarios only).
    Floor,
}

struct Scenario {
    id: &'static str,
    title: &'static str,
    transport: &'static str,
    args: Vec<&'static str>,
    idle: bool,
    /// Also measure the bare-loop floor server.
    floor: bool,
}

impl Scenario {
    fn load(
        id: &'static str,
        title: &'static str,
        transport: &'static str,
        args: &[&'static str],
    ) -> Self {
        Scenario {
            id,
            title,
            transport,
            args: args.to_vec(),
            idle: false,
            floor: transport != "tls",
        }
    }
    fn idle(id: &'static str, title: &'static str) -> Self {
        Scenario {
            id,
            title,
            transport: "tcp",
            args: Vec::new(),
            idle: true,
            floor: false,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Server CPU microseconds per message, or RSS KiB for the idle scenario.
    value: f64,
    /// The user-space part of `value`: the server's own code, without the kernel.
    user: f64,
    msgs_per_sec: f64,
    gen_cpu: f64,
}

fn print_row(sc: &Scenario, r: &[[Option<Sample>; 4]]) {
    let m = |i: usize, f: fn(&Sample) -> f64| {
        median(r.iter().filter_map(|x| x[i]).map(|s| f(&s)).collect())
    };
    // Ratios are taken round by round — each run against the tokio run of the same round,
    // next to it in time — and the median of those is reported: this shared machine drifts
    // between slower and faster phases lasting seconds, which neighbouring runs mostly
    // share and a ratio of medians does not cancel. A round where either run failed is
    // left out of the ratio.
    let paired_to = |i: usize, base: usize, f: fn(&Sample) -> f64| {
        let ratios = r.iter().filter_map(|x| Some(f(&x[i]?) / f(&x[base]?)));
        median(ratios.collect())
    };
    let paired = |i: usize, f: fn(&Sample) -> f64| paired_to(i, 1, f);
    let has = |i: usize| r.iter().any(|x| x[i].is_some());
    let (a, b) = (m(0, |s| s.value), m(1, |s| s.value));
    let unit = if sc.idle { "KiB" } else { "us/msg" };
    let fmt = |v: f64| {
        if sc.idle {
            format!("{v:.0} {unit}")
        } else {
            format!("{v:.2} {unit}")
        }
    };
    let (ua, ub) = (m(0, |s| s.user), m(1, |s| s.user));
    // The user-space share: what each server's own code costs per message, with the
    // kernel's network stack (the same for both) left out.
    let user = if sc.idle {
        String::new()
    } else {
        format!(" | {ua:>8.3} {ub:>8.3} {:>5.2}x", paired(0, |s| s.user))
    };
    println!(
        "{:<3} {:<38} {:>13} {:>13} {:>6.2}x | {:>11.0} {:>11.0} | {:>7.0}% {:>7.0}%{user}",
        sc.id,
        sc.title,
        fmt(a),
        fmt(b),
        paired(0, |s| s.value),
        m(0, |s| s.msgs_per_sec),
        m(1, |s| s.msgs_per_sec),
        m(0, |s| s.gen_cpu),
        m(1, |s| s.gen_cpu),
    );
    if has(2) {
        let f = m(2, |s| s.value);
        println!(
            "{:<3} {:<38} {:>13} {:>13} {:>6.2}x | {:>11.0} {:>11} | {:>7.0}% {:>8} | {:>8.3} {:>8} {:>5.2}x",
            "",
            "  floor: bare mio loop (ratio vs tokio)",
            fmt(f),
            "",
            paired(2, |s| s.value),
            m(2, |s| s.msgs_per_sec),
            "",
            m(2, |s| s.gen_cpu),
            "",
            m(2, |s| s.user),
            "",
            paired(2, |s| s.user),
        );
    }
    if has(3) {
        let user = if sc.idle {
            String::new()
        } else {
            format!(
                " | {:>8.3} {:>8} {:>5.2}x",
                m(3, |s| s.user),
                "",
                paired_to(0, 3, |s| s.user)
            )
        };
        println!(
            "{:<3} {:<38} {:>13} {:>13} {:>6.2}x | {:>11.0} {:>11} | {:>7.0}% {:>8}{user}",
            "",
            "  previous build (this ÷ previous)",
            fmt(m(3, |s| s.value)),
            "",
            paired_to(0, 3, |s| s.value),
            m(3, |s| s.msgs_per_sec),
            "",
            m(3, |s| s.gen_cpu),
            "",
        );
    }
}

/// A server process, pinned, with its first `listening` address.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(kind: ServerKind, transport: &str, pki: &Pki, pin: bool) -> Result<Server, String> {
    let mut cmd = match kind {
        ServerKind::Echoloop(program) => {
            let mut c = common::serve_command(program, transport, pin);
            if transport == "tls" {
                c.arg("--cert").arg(&pki.chain).arg("--key").arg(&pki.key);
            }
            c
        }
        ServerKind::Tokio | ServerKind::Floor => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut c = pinned(pin, "0", &exe.to_string_lossy());
            let baseline = match kind {
                ServerKind::Floor => format!("floor-{transport}"),
                _ => transport.to_string(),
            };
            c.env("ECHOLOOP_BASELINE", baseline)
                .env("ECHOLOOP_BASELINE_ADDR", "127.0.0.1:0")
                .env("ECHOLOOP_BASELINE_CERT", &pki.chain)
                .env("ECHOLOOP_BASELINE_KEY", &pki.key);
            c
        }
    };
    let (child, addr) = common::spawn_listening(&mut cmd)?;
    Ok(Server { child, addr })
}

fn rss_kib(pid: u32) -> Result<f64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

/// The server's real pid (taskset execs the program, so the child's pid is the server's).
fn run_one(
    sc: &Scenario,
    kind: ServerKind,
    secs: f64,
    pki: &Pki,
    pin: bool,
) -> Result<Sample, String> {
    let server = start_server(kind, sc.transport, pki, pin)?;
    let pid = server.child.id();
    if sc.idle {
        return idle_rss(&server, pid);
    }
    let before = proc_cpu_split(pid).map_err(|e| e.to_string())?;
    let mut generator = pinned(pin, "1", ECHOLOOP);
    generator.args([
        "bench",
        sc.transport,
        &server.addr,
        "--duration",
        &format!("{secs}s"),
        "--json",
    ]);
    generator.args(&sc.args);
    if sc.transport == "tls" {
        generator
            .arg("--ca")
            .arg(&pki.ca)
            .args(["--server-name", "localhost"]);
    }
    let out = generator
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let after = proc_cpu_split(pid).map_err(|e| e.to_string())?;
    let json = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("bench failed: {json}"));
    }
    let messages = json_num(&json, "messages").ok_or("no messages in report")?;
    if messages <= 0.0 {
        return Err("no messages echoed".into());
    }
    let (cpu_us, user_us) = common::cpu_us_between(&before, &after);
    Ok(Sample {
        value: cpu_us / messages,
        user: user_us / messages,
        msgs_per_sec: json_num(&json, "msgs_per_sec").unwrap_or(f64::NAN),
        gen_cpu: json_num(&json, "generator_cpu_percent").unwrap_or(f64::NAN),
    })
}

/// Opens 10,000 connections, echoes one small message on each, then reads the server's
/// resident memory growth while they sit idle.
fn idle_rss(server: &Server, pid: u32) -> Result<Sample, String> {
    let addr: SocketAddr = server.addr.parse().map_err(|e| format!("{e}"))?;
    let base = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        let mut s = TcpStream::connect(addr).map_err(|e| format!("connect #{i}: {e}"))?;
        s.write_all(b"x").map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.read_exact(&mut b)
            .map_err(|e| format!("echo #{i}: {e}"))?;
        conns.push(s);
    }
    let grown = rss_kib(pid)? - base;
    drop(conns);
    Ok(Sample {
        value: grown,
        user: f64::NAN,
        msgs_per_sec: f64::NAN,
        gen_cpu: f64::NAN,
    })
}

/// Pulls a number out of the one-line JSON report (a flat key is enough here).
fn json_num(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat)? + pat.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The tokio baseline: what a careful async server looks like, one core.
mod baseline {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(super) fn serve(kind: &str) {
        let addr = std::env::var("ECHOLOOP_BASELINE_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            match kind {
                "tcp" => tcp(&addr, None).await,
                "tls" => {
                    let cert = std::env::var("ECHOLOOP_BASELINE_CERT").expect("cert");
                    let key = std::env::var("ECHOLOOP_BASELINE_KEY").expect("key");
                    let cfg = echoloop::tls_config::server_config(
                        &echoloop::tls_config::ServerTlsOptions {
                            cert_chain: Path::new(&cert),
                            key: Path::new(&key),
                            client_ca: None,
                        },
                    )
                    .expect("tls config");
                    tcp(&addr, Some(tokio_rustls::TlsAcceptor::from(cfg))).await
                }
                "udp" => udp(&addr).await,
                other => panic!("unknown baseline {other}"),
            }
        });
    }

    pub(super) fn announce(kind: &str, addr: SocketAddr) {
        println!("listening {kind} {addr}");
        let _ = std::io::stdout().flush();
    }

    async fn tcp(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        announce(
            if tls.is_some() { "tls" } else { "tcp" },
            listener.local_addr().expect("addr"),
        );
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            echo(s).await;
                        }
                    }
                    None => echo(sock).await,
                }
            });
        }
    }

    /// Echo with a 4 KiB buffer allocated on the first readable event, as a careful tokio
    /// server does to keep idle connections cheap.
    async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.is_empty() {
                buf = vec![0u8; 4096];
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown().await;
    }

    async fn udp(addr: &str) {
        let sock = Arc::new(tokio::net::UdpSocket::bind(addr).await.expect("bind"));
        announce("udp", sock.local_addr().expect("addr"));
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let _ = sock.send_to(&buf[..n], from).await;
        }
    }
}

/// The floor: the least a readiness-based echo server can do per message, written straight
/// on mio with nothing else — no slab, timers, handlers, statistics, fairness or limits. It
/// trusts its peers and is not a product; it is here to show how much of a server's CPU
/// per message any design could still save once the kernel's share is paid.
mod floor {
    use std::io::{ErrorKind, Read, Write};

    use mio::net::{TcpListener, TcpStream, UdpSocket};
    use mio::{Events, Interest, Poll, Token};

    const LISTENER: Token = Token(usize::MAX);

    pub(super) fn serve(transport: &str) {
        let addr = std::env::var("ECHOLOOP_BASELINE_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:0".into())
            .parse()
            .expect("address");
        match transport {
            "tcp" => tcp(addr),
            "udp" => udp(addr),
            other => panic!("no floor server for {other}"),
        }
    }

    fn wait(poll: &mut Poll, events: &mut Events) {
        match poll.poll(events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
    }

    /// One connection: its socket and the bytes a partial write left over.
    struct Conn {
        sock: TcpStream,
        owed: Vec<u8>,
    }

    fn tcp(addr: std::net::SocketAddr) {
        let mut poll = Poll::new().expect("poll");
        let mut listener = TcpListener::bind(addr).expect("bind");
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .expect("register");
        super::baseline::announce("tcp", listener.local_addr().expect("addr"));
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut events = Events::with_capacity(1024);
        loop {
            wait(&mut poll, &mut events);
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    while let Ok((mut sock, _)) = listener.accept() {
                        let _ = sock.set_nodelay(true);
                        let k = free.pop().unwrap_or(conns.len());
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if poll
                            .registry()
                            .register(&mut sock, Token(k), interest)
                            .is_err()
                        {
                            if k < conns.len() {
                                free.push(k);
                            }
                            continue;
                        }
                        let conn = Some(Conn {
                            sock,
                            owed: Vec::new(),
                        });
                        if k == conns.len() {
                            conns.push(conn);
                        } else {
                            conns[k] = conn;
                        }
                    }
                    continue;
                }
                let k = ev.token().0;
                let Some(c) = conns[k].as_mut() else {
                    continue;
                };
                if !echo(c, &mut buf) {
                    let _ = poll.registry().deregister(&mut c.sock);
                    conns[k] = None;
                    free.push(k);
                }
            }
        }
    }

    /// Writes what is owed, then reads and echoes until the socket is drained (a short read
    /// proves it) or a write would block. False when the connection is finished.
    fn echo(c: &mut Conn, buf: &mut [u8]) -> bool {
        if !c.owed.is_empty() {
            match c.sock.write(&c.owed) {
                Ok(0) => return false,
                Ok(n) => {
                    c.owed.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => return echo(c, buf),
                Err(_) => return false,
            }
            if !c.owed.is_empty() {
                return true;
            }
        }
        loop {
            let n = match c.sock.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let mut sent = 0;
            while sent < n {
                match c.sock.write(&buf[sent..n]) {
                    Ok(0) => return false,
                    Ok(m) => sent += m,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if sent < n {
                // Wait for writability before reading more (the next writable edge).
                c.owed.extend_from_slice(&buf[sent..n]);
                return true;
            }
            if n < buf.len() {
                return true;
            }
        }
    }

    fn udp(addr: std::net::SocketAddr) {
        let mut poll = Poll::new().expect("poll");
        let mut sock = UdpSocket::bind(addr).expect("bind");
        poll.registry()
            .register(&mut sock, Token(0), Interest::READABLE)
            .expect("register");
        super::baseline::announce("udp", sock.local_addr().expect("addr"));
        let mut buf = vec![0u8; 65536];
        let mut events = Events::with_capacity(16);
        loop {
            wait(&mut poll, &mut events);
            loop {
                match sock.recv_from(&mut buf) {
                    // A reply that would block is dropped: UDP may lose it anyway.
                    Ok((n, from)) => {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {}
                }
            }
        }
    }
}
