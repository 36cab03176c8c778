//! cargo bench --bench latency
//!
//! Round-trip latency at this machine's limit: one connection, 64-byte ping-pong on
//! loopback, server pinned to core 0 and client to core 1, for five pairs on the same
//! work — (1) `echoloop bench` ↔ `echoloop serve`, blocking; (2) the same pair, both with
//! `--busy-poll`; (3) `sockperf ping-pong` ↔ `sockperf server` with defaults; (4) sockperf
//! with both sides `--nonblocked --timeout 0`; (5) `echoloop bench --busy-poll --sockperf`
//! ↔ the busy `sockperf server` of (4) — over TCP and UDP, alternating the pairs round by
//! round, each round starting one pair later (A B C D E, B C D E A, ...). sockperf's client talks only to its own server (its server
//! flips a header flag in each reply), so (1)-(4) compare pair against pair; (5) speaks
//! sockperf's format, so (5) against (4) compares the two clients on the same server.
//! sockperf reports round trips with `--full-rtt`. Then the CPU a `--busy-poll` server
//! uses in the second after the last message, and 10 and 100 connections with and without
//! busy polling (messages per second, server CPU per message).
//!
//! Without sockperf (Debian package `sockperf`) it says how to install it and runs the
//! echoloop rows alone. Environment: `ECHOLOOP_BENCH_SECS` (default 3) seconds per run,
//! `ECHOLOOP_BENCH_ROUNDS` (default 5: each pair once in each place), `ECHOLOOP_BUSY_POLL` (default `1ms`).

mod common;

use common::{env_num, median, pinned};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::procfs::{clock_ticks_per_sec, proc_cpu_ticks};

const ECHOLOOP: &str = env!("CARGO_BIN_EXE_echoloop");

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency: run with `cargo bench --bench latency`");
        return;
    }
    let secs: f64 = env_num("ECHOLOOP_BENCH_SECS", 3.0);
    let rounds = env_num("ECHOLOOP_BENCH_ROUNDS", 5.0) as usize;
    let busy = std::env::var("ECHOLOOP_BUSY_POLL").unwrap_or_else(|_| "1ms".into());
    let pin = Path::new("/usr/bin/taskset").exists();
    let sockperf = Command::new("sockperf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !sockperf {
        println!(
            "sockperf not found: install it with `apt-get install -y sockperf` (Debian package \
             sockperf) to compare; running the echoloop rows alone."
        );
    }
    println!(
        "1 connection, 64 B ping-pong; {rounds} rounds x {secs} s, alternating; medians; \
         server on core 0, client on core 1{}\n",
        if pin {
            ""
        } else {
            " (taskset missing: not pinned)"
        }
    );
    println!(
        "{:<5} {:<42} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "pair", "min us", "p50 us", "p99 us", "p99.9 us", "msgs/s"
    );
    for transport in ["tcp", "udp"] {
        let pairs: Vec<Pair> = [
            Pair::Echoloop { busy: None },
            Pair::Echoloop {
                busy: Some(busy.clone()),
            },
            Pair::Sockperf { spin: false },
            Pair::Sockperf { spin: true },
            Pair::EcholoopOnSockperf { busy: busy.clone() },
        ]
        .into_iter()
        .filter(|p| sockperf || matches!(p, Pair::Echoloop { .. }))
        .collect();
        let mut results: Vec<Vec<Sample>> = vec![Vec::new(); pairs.len()];
        for round in 0..rounds {
            // Each round starts one pair later: on this shared VM a run's place in the
            // round (just after a blocking pair that left the cores idle, say) moved
            // medians by several percent when the order was fixed.
            for k in 0..pairs.len() {
                let i = (round + k) % pairs.len();
                let pair = &pairs[i];
                match pair.run(transport, secs, pin) {
                    Ok(s) => results[i].push(s),
                    Err(e) => eprintln!("{transport} {}: {e}", pair.name()),
                }
            }
        }
        for (pair, r) in pairs.iter().zip(&results) {
            let m = |f: fn(&Sample) -> f64| median(r.iter().map(f).collect());
            println!(
                "{:<5} {:<42} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0}",
                transport,
                pair.name(),
                m(|s| s.min),
                m(|s| s.p50),
                m(|s| s.p99),
                m(|s| s.p999),
                m(|s| s.msgs_per_sec)
            );
        }
        if results.len() == 5 {
            // Round by round, each pair against the one measured next to it in time: the
            // median, and the range over the rounds, so that a reader sees how far this
            // machine's noise reaches before reading anything into a few per cent.
            let paired = |a: usize, b: usize| {
                let ratios: Vec<f64> = results[a]
                    .iter()
                    .zip(&results[b])
                    .map(|(x, y)| x.p50 / y.p50)
                    .collect();
                if ratios.is_empty() {
                    return "n/a (no round ran both)".to_string();
                }
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(0.0, f64::max);
                format!("{:.2}x (rounds {lo:.2}-{hi:.2})", median(ratios))
            };
            println!(
                "{:<5}   ratio p50: busy-poll pair / sockperf busy pair {}; blocking pair / sockperf default pair {}",
                "",
                paired(1, 3),
                paired(0, 2)
            );
            println!(
                "{:<5}   ratio p50: echoloop bench --busy-poll / sockperf client, both against sockperf's busy server {}",
                "",
                paired(4, 3)
            );
        }
    }
    idle_cpu(&busy, pin);
    many_connections(&busy, secs, rounds, pin);
}

/// One measured run: round trips in µs.
#[derive(Debug, Clone, Copy)]
struct Sample {
    min: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    msgs_per_sec: f64,
}

/// One client and one server, measured together.
enum Pair {
    /// `echoloop bench` ↔ `echoloop serve`, both with `--busy-poll` when `busy` is set.
    Echoloop { busy: Option<String> },
    /// `sockperf ping-pong` ↔ `sockperf server`, both `--nonblocked --timeout 0` with `spin`.
    Sockperf { spin: bool },
    /// `echoloop bench --busy-poll --sockperf` against sockperf's busy server.
    EcholoopOnSockperf { busy: String },
}

impl Pair {
    fn name(&self) -> String {
        match self {
            Pair::Echoloop { busy: None } => "(1) echoloop bench/serve, blocking".into(),
            Pair::Echoloop { busy: Some(b) } => format!("(2) echoloop, both --busy-poll {b}"),
            Pair::Sockperf { spin: false } => "(3) sockperf pp/sr, defaults".into(),
            Pair::Sockperf { spin: true } => "(4) sockperf, --nonblocked --timeout 0".into(),
            Pair::EcholoopOnSockperf { busy } => {
                format!("(5) echoloop --busy-poll {busy} -> sr of (4)")
            }
        }
    }

    fn run(&self, transport: &str, secs: f64, pin: bool) -> Result<Sample, String> {
        match self {
            Pair::Echoloop { busy } => {
                echoloop_pair(transport, busy.as_deref(), 1, secs, pin).map(|(s, _)| s)
            }
            Pair::Sockperf { spin } => sockperf_pair(transport, *spin, secs, pin),
            Pair::EcholoopOnSockperf { busy } => {
                let (server, port) = sockperf_server(transport, true, pin)?;
                let addr = format!("127.0.0.1:{port}");
                let r = echoloop_bench(transport, &addr, Some(busy), 1, secs, pin, &["--sockperf"]);
                drop(server);
                r.map(|(s, _)| s)
            }
        }
    }
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `echoloop serve` for `transport`; returns it with its address.
fn echoloop_server(
    transport: &str,
    busy: Option<&str>,
    pin: bool,
) -> Result<(Server, String), String> {
    let mut c = common::serve_command(ECHOLOOP, transport, pin);
    if let Some(b) = busy {
        c.args(["--busy-poll", b]);
    }
    let (child, addr) = common::spawn_listening(&mut c)?;
    Ok((Server(child), addr))
}

/// `echoloop bench` against `echoloop serve`; also returns the server's CPU µs per
/// message over the run.
fn echoloop_pair(
    transport: &str,
    busy: Option<&str>,
    connections: usize,
    secs: f64,
    pin: bool,
) -> Result<(Sample, f64), String> {
    let (server, addr) = echoloop_server(transport, busy, pin)?;
    let pid = server.0.id();
    let before = proc_cpu_ticks(pid).map_err(|e| e.to_string())?;
    let (sample, messages) = echoloop_bench(transport, &addr, busy, connections, secs, pin, &[])?;
    let after = proc_cpu_ticks(pid).map_err(|e| e.to_string())?;
    let cpu_us = (after - before) as f64 / clock_ticks_per_sec() as f64 * 1e6;
    Ok((sample, cpu_us / messages.max(1.0)))
}

/// `echoloop bench` (on core 1) against the server at `addr`, with `extra` options;
/// returns its sample and the messages it completed.
fn echoloop_bench(
    transport: &str,
    addr: &str,
    busy: Option<&str>,
    connections: usize,
    secs: f64,
    pin: bool,
    extra: &[&str],
) -> Result<(Sample, f64), String> {
    let mut c = pinned(pin, "1", ECHOLOOP);
    c.args([
        "bench",
        transport,
        addr,
        "--connections",
        &connections.to_string(),
        "--size",
        "64",
        "--duration",
        &format!("{secs}s"),
        "--warmup",
        "200ms",
        "--json",
    ]);
    if let Some(b) = busy {
        c.args(["--busy-poll", b]);
    }
    c.args(extra);
    let out = c
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("bench failed: {json}"));
    }
    let lat = json
        .find("\"latency_us\":")
        .map(|i| &json[i..])
        .ok_or("no latency in report")?;
    let num = |text: &str, key: &str| json_num(text, key).ok_or(format!("no {key} in {json}"));
    Ok((
        Sample {
            min: num(lat, "min")?,
            p50: num(lat, "p50")?,
            p99: num(lat, "p99")?,
            p999: num(lat, "p99_9")?,
            msgs_per_sec: num(&json, "msgs_per_sec")?,
        },
        num(&json, "messages")?,
    ))
}

/// Pulls the number after `"key":` out of a flat stretch of JSON.
fn json_num(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat)? + pat.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// A port free a moment ago (sockperf needs one named on its command line).
fn free_port(transport: &str) -> Result<u16, String> {
    let port = if transport == "tcp" {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    port.map(|a| a.port()).map_err(|e| e.to_string())
}

/// `sockperf ping-pong` against `sockperf server`, round trips (`--full-rtt`).
fn sockperf_pair(transport: &str, spin: bool, secs: f64, pin: bool) -> Result<Sample, String> {
    let (server, port) = sockperf_server(transport, spin, pin)?;
    let mut pp = pinned(pin, "1", "sockperf");
    pp.args([
        "ping-pong",
        "-i",
        "127.0.0.1",
        "-p",
        &port,
        "-m",
        "64",
        "-t",
        &format!("{}", secs.ceil() as u64),
        "--full-rtt",
    ]);
    if transport == "tcp" {
        pp.arg("--tcp");
    }
    if spin {
        pp.args(["--nonblocked", "--timeout", "0"]);
    }
    let out = pp
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_sockperf(&text).ok_or_else(|| format!("cannot read sockperf's output:\n{text}"))
}

/// Starts `sockperf server` on core 0 (busy with `spin`: `--nonblocked --timeout 0`);
/// returns it, ready, with its port.
fn sockperf_server(transport: &str, spin: bool, pin: bool) -> Result<(Server, String), String> {
    let port = free_port(transport)?.to_string();
    let mut sr = pinned(pin, "0", "sockperf");
    sr.args(["server", "-i", "127.0.0.1", "-p", &port]);
    if transport == "tcp" {
        sr.arg("--tcp");
    }
    if spin {
        sr.args(["--nonblocked", "--timeout", "0"]);
    }
    let mut child = sr
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let server = Server(child);
    // The server says how it waits once its socket is set up: that is the readiness wait.
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("[tid") => break,
            Some(Ok(_)) => {}
            _ => return Err("sockperf server did not start".into()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((server, port))
}

/// Reads sockperf's percentile lines and its valid-duration message count.
fn parse_sockperf(text: &str) -> Option<Sample> {
    let clean: String = strip_ansi(text);
    let after_eq = |needle: &str| -> Option<f64> {
        let line = clean.lines().find(|l| l.contains(needle))?;
        line.rsplit('=').next()?.trim().parse().ok()
    };
    let valid = clean.lines().find(|l| l.contains("[Valid Duration]"))?;
    let field = |name: &str| -> Option<f64> {
        let i = valid.find(name)? + name.len();
        let rest = &valid[i..];
        let end = rest.find([';', ' ']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    };
    let runtime = field("RunTime=")?;
    let received = field("ReceivedMessages=")?;
    Some(Sample {
        min: after_eq("<MIN> observation")?,
        p50: after_eq("percentile 50.000")?,
        p99: after_eq("percentile 99.000")?,
        p999: after_eq("percentile 99.900")?,
        msgs_per_sec: received / runtime,
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The CPU a busy-polling server uses in the second after the last message.
fn idle_cpu(busy: &str, pin: bool) {
    let Ok((server, addr)) = echoloop_server("tcp", Some(busy), pin) else {
        return;
    };
    let pid = server.0.id();
    let _ = Command::new(ECHOLOOP)
        .args([
            "bench",
            "tcp",
            &addr,
            "--duration",
            "1s",
            "--busy-poll",
            busy,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let (Ok(t0), _) = (proc_cpu_ticks(pid), ()) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(1));
    let Ok(t1) = proc_cpu_ticks(pid) else {
        return;
    };
    let percent = (t1 - t0) as f64 / clock_ticks_per_sec() as f64 * 100.0;
    println!(
        "\nidle: a --busy-poll {busy} server used {percent:.1}% of a core in the second after the last message"
    );
}

/// With many connections the loop seldom sleeps anyway: busy polling buys little there.
fn many_connections(busy: &str, secs: f64, rounds: usize, pin: bool) {
    println!(
        "\n{:<5} {:<30} {:>12} {:>12} {:>16} {:>16}",
        "",
        "tcp, 64 B ping-pong",
        "msgs/s block",
        "msgs/s busy",
        "server us/msg bl",
        "server us/msg bu"
    );
    for conns in [10, 100] {
        let mut block = Vec::new();
        let mut spin = Vec::new();
        for _ in 0..rounds.max(1) {
            if let Ok(r) = echoloop_pair("tcp", None, conns, secs, pin) {
                block.push(r);
            }
            if let Ok(r) = echoloop_pair("tcp", Some(busy), conns, secs, pin) {
                spin.push(r);
            }
        }
        let m =
            |v: &[(Sample, f64)], f: fn(&(Sample, f64)) -> f64| median(v.iter().map(f).collect());
        println!(
            "{:<5} {:<30} {:>12.0} {:>12.0} {:>16.2} {:>16.2}",
            "",
            format!("{conns} connections"),
            m(&block, |r| r.0.msgs_per_sec),
            m(&spin, |r| r.0.msgs_per_sec),
            m(&block, |r| r.1),
            m(&spin, |r| r.1),
        );
    }
}
