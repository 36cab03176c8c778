//! `echoloop bench` against real servers on loopback: `echoloop serve` for every transport,
//! a real `sockperf server` for `--sockperf` (Debian package `sockperf`), and small
//! misbehaving servers written here (one corrupts a byte, one drops datagrams, one answers
//! late or twice) to prove the generator notices.
//!
//! Every run is short (well under a second of load; the sockperf runs a second) and every
//! helper server stops with the test or at `common::DEADLINE`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Proc;
use common::certs::TestPki;

/// A report, or one line of `--json-lines`.
type Json = serde_json::Value;

/// Typed access to a report's fields, failing the test with the report when one is
/// missing or of the wrong type.
trait Field {
    fn at(&self, key: &str) -> &Json;
    fn num(&self, key: &str) -> f64;
    fn str(&self, key: &str) -> &str;
}

impl Field for Json {
    fn at(&self, key: &str) -> &Json {
        self.get(key)
            .unwrap_or_else(|| panic!("missing key {key:?} in {self}"))
    }

    fn num(&self, key: &str) -> f64 {
        self.at(key)
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number in {self}"))
    }

    fn str(&self, key: &str) -> &str {
        self.at(key)
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string in {self}"))
    }
}

fn parse(line: &str) -> Json {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Runs `echoloop bench <args> --json`; returns the exit status, the parsed report and
/// stderr.
fn bench(args: &[&str]) -> (ExitStatus, Json, String) {
    let mut full = vec!["bench"];
    full.extend_from_slice(args);
    full.push("--json");
    let (status, out, err) = common::run(&full, None);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("no JSON report; status {status}\nstdout:\n{out}\nstderr:\n{err}")
    });
    (status, parse(line), err)
}

/// Every field the issue asks for is present, of the right type, and consistent.
fn assert_report_sane(r: &Json, transport: &str, connections: u64, size: u64) {
    assert_eq!(r.str("transport"), transport, "{r:?}");
    assert!(!r.str("mode").is_empty());
    assert!(!r.str("target").is_empty());
    assert_eq!(r.num("connections_requested"), connections as f64);
    let duration = r.num("duration_secs");
    assert!(duration > 0.0);
    let messages = r.num("messages");
    assert!(messages > 0.0, "no messages: {r:?}");
    let rate = r.num("msgs_per_sec");
    assert!(
        (rate - messages / duration).abs() < 1e-6 * rate.max(1.0),
        "{r:?}"
    );
    for key in ["bytes_sent", "bytes_received"] {
        let bytes = r.num(key);
        // Counted as they cross the window's edges, so a few messages either way.
        let slack = (connections * 64 * size) as f64;
        let expected = messages * size as f64;
        assert!(
            (bytes - expected).abs() <= slack,
            "{key} {bytes} vs {expected} for {messages} messages: {r:?}"
        );
    }
    let mb_sent = r.num("mb_per_sec_sent");
    assert!(
        (mb_sent - r.num("bytes_sent") / duration / 1e6).abs() < 1e-6,
        "{r:?}"
    );
    assert!(r.num("mb_per_sec_received") > 0.0);
    let lat = r.at("latency_us");
    assert_eq!(lat.num("count"), messages, "one latency sample per message");
    let quantiles = ["p50", "p90", "p99", "p99_9", "max"].map(|k| lat.num(k));
    assert!(quantiles[0] >= 1.0, "{lat:?}");
    assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{lat:?}");
    assert!(lat.num("mean") > 0.0 && lat.num("mean") <= quantiles[4]);
    assert_intervals_sane(lat);
    let cpu = r.num("generator_cpu_percent");
    assert!(cpu > 0.0 && cpu < 100.0 * 64.0, "{cpu}");
    // Present even when null.
    r.at("connect_latency_us");
    r.at("reconnects_per_sec");
}

/// Each percentile's 95% confidence interval (issue 21) holds the percentile, and is
/// `null` exactly when too few samples stand behind it: ranks `n q ± 1.96 sqrt(n q (1-q))`
/// (the upper one plus one) must both fall inside the `n` samples.
fn assert_intervals_sane(lat: &Json) {
    let n = lat.num("count");
    for (key, q) in [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99_9", 0.999),
        ("p99_99", 0.9999),
    ] {
        let ci = lat.at(&format!("{key}_ci95"));
        let spread = 1.96 * (n * q * (1.0 - q)).sqrt();
        let bounded = (n * q - spread).floor() >= 1.0 && (n * q + spread).ceil() + 1.0 <= n;
        if !bounded {
            assert!(
                ci.is_null(),
                "{key} of {n} samples cannot be bounded: {lat:?}"
            );
            continue;
        }
        let pair = ci
            .as_array()
            .unwrap_or_else(|| panic!("{key}_ci95: {lat:?}"));
        let (low, high) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
        // Histogram values carry 0.1% precision.
        let value = lat.num(key);
        assert!(
            low <= value * 1.001 && value <= high * 1.001,
            "{key} {value} outside [{low}, {high}]"
        );
    }
}

/// Runs `bench <transport> <addr> -c <connections> <rest..>`, which must succeed.
fn bench_ok(transport: &str, addr: &str, connections: u64, rest: &[&str]) -> Json {
    let c = connections.to_string();
    let mut args = vec![transport, addr, "-c", &c];
    args.extend_from_slice(rest);
    let (status, r, err) = bench(&args);
    assert!(status.success(), "{transport}: {err}");
    r
}

/// [`bench_ok`] with a sane report for `size`-byte messages and a clean run.
fn clean_run(transport: &str, addr: &str, connections: u64, size: u64, rest: &[&str]) -> Json {
    let r = bench_ok(transport, addr, connections, rest);
    assert_report_sane(&r, transport, connections, size);
    assert_clean(&r, connections);
    r
}

fn assert_clean(r: &Json, connections: u64) {
    assert_eq!(r.num("verify_errors"), 0.0, "{r:?}");
    assert_eq!(r.num("timeouts"), 0.0, "{r:?}");
    assert_eq!(r.num("lost"), 0.0, "{r:?}");
    assert_eq!(r.num("connect_failures"), 0.0, "{r:?}");
    assert_eq!(r.num("connections_up"), connections as f64, "{r:?}");
}

#[test]
fn bench_tcp_closed_loop_clean_run() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let cpu_before = common::procfs::proc_cpu_ticks(server.pid()).unwrap();
    let rest = ["--size", "100", "--duration", "0.5"];
    let r = clean_run("tcp", &addr, 4, 100, &rest);
    assert_eq!(r.str("mode"), "closed-loop pipeline=1");
    assert_eq!(r.str("target"), addr);
    assert_eq!(r.at("connect_latency_us").num("count"), 4.0);
    assert_eq!(r.at("reconnects_per_sec"), &Json::Null);
    // The server did the echoing: its CPU time grew (what the benches compare).
    let cpu_after = common::procfs::proc_cpu_ticks(server.pid()).unwrap();
    assert!(cpu_after > cpu_before, "{cpu_before} -> {cpu_after}");
}

#[test]
fn bench_tcp_pipeline_and_threads() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let rest = [
        "--size",
        "1k",
        "--duration",
        "0.5",
        "--pipeline",
        "8",
        "--threads",
        "2",
        "--warmup",
        "200ms",
    ];
    let r = clean_run("tcp", &addr, 6, 1024, &rest);
    assert_eq!(r.str("mode"), "closed-loop pipeline=8");
    assert_eq!(r.num("duration_secs"), 0.5, "the warm-up is not measured");
}

#[test]
fn bench_tcp_large_messages_arrive_in_pieces() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let rest = ["--size", "256k", "--duration", "0.5"];
    clean_run("tcp", &addr, 2, 256 * 1024, &rest);
}

#[test]
fn bench_udp_clean_run() {
    let server = Proc::serve(&["--udp", "127.0.0.1:0"]);
    let addr = server.addr("udp");
    let rest = ["--size", "64", "--duration", "0.5", "--pipeline", "4"];
    let r = clean_run("udp", &addr, 3, 64, &rest);
    assert_eq!(r.at("connect_latency_us"), &Json::Null);
}

#[test]
fn bench_unix_clean_run() {
    let path = common::temp_sock("bench-unix");
    let _cleanup = RemoveOnDrop(path.clone());
    let p = path.to_str().unwrap();
    let server = Proc::serve(&["--unix", p]);
    clean_run("unix", &server.addr("unix"), 3, 64, &["--duration", "0.5"]);
}

#[test]
fn bench_unix_dgram_clean_run() {
    let path = common::temp_sock("bench-dgram");
    let _cleanup = RemoveOnDrop(path.clone());
    let p = path.to_str().unwrap();
    let server = Proc::serve(&["--unix-dgram", p]);
    let rest = ["--size", "2k", "--duration", "0.5"];
    clean_run("unix-dgram", &server.addr("unix-dgram"), 3, 2048, &rest);
}

/// A `sockperf server` on loopback for `transport` with `extra` options, and its address.
/// sockperf takes its port on the command line, so a port free a moment ago is named; if
/// another process took it meanwhile, the server exits, and another port is tried. Ready
/// when it says how it waits for messages (its `[tid N]` line, after binding).
fn sockperf_server(transport: &str, extra: &[&str]) -> (Proc, String) {
    if let Err(e) = std::process::Command::new("sockperf")
        .arg("--version")
        .output()
    {
        panic!(
            "cannot run sockperf ({e}): the --sockperf tests need it; install it with \
             `apt-get install -y sockperf`"
        );
    }
    for _ in 0..3 {
        let port = if transport == "tcp" {
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
        } else {
            UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
        }
        .unwrap()
        .port()
        .to_string();
        let mut cmd = std::process::Command::new("sockperf");
        cmd.args(["server", "-i", "127.0.0.1", "-p", &port]);
        if transport == "tcp" {
            cmd.arg("--tcp");
        }
        cmd.args(extra);
        let server = Proc::spawn_command(cmd);
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.stdout.recv_timeout(left) {
                Ok(line) if line.contains("[tid") => return (server, format!("127.0.0.1:{port}")),
                Ok(_) => {}
                // Its stdout closed: it exited (the port was taken, most likely).
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("sockperf server did not start: {}", server.stderr_text())
                }
            }
        }
    }
    panic!("sockperf server exited at once on three free ports");
}

/// `echoloop bench <transport> --sockperf` for a second against `addr`, which must be a
/// clean run: echoes completed, every one as expected, nothing else gone wrong.
fn sockperf_clean_run(transport: &str, addr: &str, connections: u64, rest: &[&str]) -> Json {
    let args = [&["--sockperf", "--duration", "1s"], rest].concat();
    let r = bench_ok(transport, addr, connections, &args);
    assert_eq!(r.str("payload"), "sockperf", "{r}");
    assert!(r.num("messages") > 0.0, "{r}");
    assert_clean(&r, connections);
    for key in [
        "late",
        "duplicates",
        "wrong_source",
        "closed_by_server",
        "broken",
        "unanswered",
    ] {
        assert_eq!(r.num(key), 0.0, "{key}: {r}");
    }
    r
}

#[test]
fn bench_sockperf_udp_against_a_sockperf_server() {
    let (_server, addr) = sockperf_server("udp", &[]);
    // Sizes that vary: sockperf frames datagrams by the length in their header too, so
    // each must carry its own.
    let rest = ["--size", "14..2k", "--pipeline", "2"];
    sockperf_clean_run("udp", &addr, 2, &rest);
}

#[test]
fn bench_sockperf_tcp_against_a_sockperf_server() {
    let (_server, addr) = sockperf_server("tcp", &[]);
    let rest = ["--size", "100", "--pipeline", "4"];
    let r = sockperf_clean_run("tcp", &addr, 2, &rest);
    assert_report_sane(&r, "tcp", 2, 100);
    // A stream of varying sizes: framed by each header's length.
    sockperf_clean_run("tcp", &addr, 1, &["--size", "14:5,1k:3,60k:1"]);
}

#[test]
fn bench_sockperf_busy_poll_against_a_sockperf_server() {
    let (_server, addr) = sockperf_server("tcp", &[]);
    let r = sockperf_clean_run("tcp", &addr, 1, &["--busy-poll", "1ms"]);
    assert_eq!(r.str("idle_strategy"), "busy-poll 1ms", "{r}");
}

/// `args` followed by the options to trust `ca` for the name `localhost`.
fn trusting<'a>(args: &[&'a str], ca: &'a std::path::Path) -> Vec<&'a str> {
    let ca = ca.to_str().unwrap();
    [args, &["--ca", ca, "--server-name", "localhost"]].concat()
}

#[test]
fn bench_tls_clean_run() {
    let pki = TestPki::generate();
    let server = common::serve_tls(&pki, &[], &[]);
    let rest = ["--size", "1k", "--duration", "0.5", "--pipeline", "2"];
    let rest = trusting(&rest, &pki.ca_pem);
    clean_run("tls", &server.addr("tls"), 3, 1024, &rest);
}

#[test]
fn bench_tls_wrong_ca_counts_connect_failures() {
    let pki = TestPki::generate();
    let server = common::serve_tls(&pki, &[], &[]);
    let addr = server.addr("tls");
    let args = ["tls", &addr, "-c", "2", "--duration", "0.3"];
    let (status, r, err) = bench(&trusting(&args, &pki.other_ca_pem));
    assert!(!status.success(), "nothing was echoed: {err}");
    assert!(r.num("connect_failures") >= 2.0, "{r:?}");
    assert_eq!(r.num("connections_up"), 0.0);
    assert_eq!(r.num("messages"), 0.0);
    assert!(err.contains("TLS"), "the first failure is explained: {err}");
}

#[test]
fn bench_tls_reconnect_reports_handshakes_per_second() {
    let pki = TestPki::generate();
    let server = common::serve_tls(&pki, &[], &[]);
    let rest = trusting(&["--duration", "0.5", "--reconnect"], &pki.ca_pem);
    let r = bench_ok("tls", &server.addr("tls"), 2, &rest);
    assert_report_sane(&r, "tls", 2, 64);
    assert!(r.str("mode").starts_with("reconnect"), "{r:?}");
    let per_sec = r.num("reconnects_per_sec");
    assert!(per_sec > 0.0, "{r:?}");
    // One echo per connection: connections track messages.
    assert!(r.num("connections_up") >= r.num("messages"), "{r:?}");
    assert!(r.at("connect_latency_us").num("count") > 0.0);
    assert_eq!(r.num("verify_errors"), 0.0);
    assert_eq!(r.num("connect_failures"), 0.0);
}

#[test]
fn bench_tcp_reconnect_reports_connections_per_second() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let rest = ["--duration", "0.5", "--reconnect"];
    let r = bench_ok("tcp", &server.addr("tcp"), 3, &rest);
    assert_report_sane(&r, "tcp", 3, 64);
    let per_sec = r.num("reconnects_per_sec");
    let opened_in_window = per_sec * r.num("duration_secs");
    // Every message had its own connection (a few open at the window's edges).
    assert!((opened_in_window - r.num("messages")).abs() <= 6.0, "{r:?}");
}

#[test]
fn bench_open_loop_sends_at_the_rate() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    for kind in ["tcp", "udp"] {
        let rest = ["--duration", "0.5", "--rate", "2k"];
        let r = clean_run(kind, &server.addr(kind), 4, 64, &rest);
        assert_eq!(r.str("mode"), "open-loop rate=2000/s");
        // 2000/s for 0.5 s: about 1000 messages, never a closed loop's many more.
        let m = r.num("messages");
        assert!((800.0..=1100.0).contains(&m), "{kind}: {m} messages: {r:?}");
    }
}

#[test]
fn bench_connect_rate_ramps_connections_before_the_window() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    // 8 connections at 10/s: due at 0, 0.1 ... 0.7 s. All are connected before the window
    // opens, however short it is; the ramp itself shows in the run's length.
    let started = Instant::now();
    let rest = ["--duration", "0.2", "--connect-rate", "10"];
    let r = bench_ok("tcp", &server.addr("tcp"), 8, &rest);
    assert!(started.elapsed() >= Duration::from_millis(700 + 200));
    assert_eq!(r.num("connections_up"), 8.0, "{r}");
    assert_eq!(r.num("connect_failures"), 0.0);
    assert_eq!(r.at("connect_latency_us").num("count"), 8.0);
    assert!(r.num("messages") > 0.0);
}

#[test]
fn bench_connects_everything_before_a_short_window() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    // Connecting 400 takes longer than the 50 ms window; before, the window closed on
    // unfinished connects and counted them as failures.
    let rest = ["--duration", "50ms", "--connect-rate", "2000"];
    let r = bench_ok("tcp", &server.addr("tcp"), 400, &rest);
    assert_clean(&r, 400);
    assert!(r.num("messages") >= 400.0, "every connection echoed: {r}");
}

#[test]
fn bench_connect_failures_are_counted_not_fatal() {
    // A port nobody listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (status, r, err) = bench(&["tcp", &addr, "-c", "2", "--duration", "0.3"]);
    assert!(!status.success());
    assert!(r.num("connect_failures") >= 2.0, "{r:?}");
    assert_eq!(r.num("connections_up"), 0.0);
    assert!(err.contains("no echo completed"), "{err}");
}

#[test]
fn bench_source_address() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    for kind in ["tcp", "udp"] {
        let rest = ["--duration", "0.3", "--source", "127.0.0.1"];
        let r = bench_ok(kind, &server.addr(kind), 2, &rest);
        assert_clean(&r, 2);
    }
    // 192.0.2.1 (TEST-NET-1) is not a local address: refused up front, nothing sent.
    let (status, _, err) = common::run(
        &[
            "bench",
            "tcp",
            &server.addr("tcp"),
            "--duration",
            "0.3",
            "--source",
            "192.0.2.1",
        ],
        None,
    );
    assert!(!status.success());
    assert!(err.contains("--source 192.0.2.1"), "{err}");
}

#[test]
fn bench_hgrm_and_human_report() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let path = std::env::temp_dir().join(format!("echoloop-bench-{}.hgrm", std::process::id()));
    let (status, out, err) = common::run(
        &[
            "bench",
            "tcp",
            &server.addr("tcp"),
            "-c",
            "2",
            "--duration",
            "1.1",
            "--hgrm",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("closed-loop pipeline=1"), "{out}");
    assert!(out.contains("latency (µs)"), "{out}");
    assert!(
        out.contains("errors         0 verify, 0 timeouts, 0 lost"),
        "{out}"
    );
    let hgrm = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
        "{hgrm}"
    );
    assert!(hgrm.contains("#[Max     ="), "{hgrm}");
}

/// The word after `name` on the report's line that starts with `label`, up to the
/// next two spaces: `p50 80.1 [79.5-80.9]` gives `80.1 [79.5-80.9]`.
fn figure<'a>(report: &'a str, label: &str, name: &str) -> &'a str {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in {report}"));
    let at = line
        .find(&format!("  {name} "))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let rest = &line[at + name.len() + 3..];
    rest.split("  ").next().unwrap_or(rest)
}

/// Issue 21: a percentile comes with its 95% confidence interval, or with the words
/// that too few samples stand behind it (here about 40: enough for the median, not p99).
#[test]
fn bench_percentiles_say_how_sure_they_are() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let (status, out, err) = common::run(
        &[
            "bench",
            "tcp",
            &server.addr("tcp"),
            "-c",
            "1",
            "--rate",
            "40",
            "--duration",
            "1",
        ],
        None,
    );
    assert!(status.success(), "{err}");
    let p50 = figure(&out, "latency (µs)", "p50");
    let (value, interval) = p50.split_once(' ').expect("a value and an interval");
    let interval = interval.trim_start_matches('[').trim_end_matches(']');
    let (low, high) = interval.split_once('-').expect("low-high");
    let num = |t: &str| t.parse::<f64>().unwrap_or_else(|_| panic!("{t} in {out}"));
    assert!(num(low) <= num(value) && num(value) <= num(high), "{p50}");
    for name in ["p99", "p99.9", "p99.99"] {
        assert!(
            figure(&out, "latency (µs)", name).ends_with("[too few samples]"),
            "{name}: {out}"
        );
    }
}

/// Issue 21, part 3: Ctrl-C after about a second of a 30 s run ends the window at once;
/// the report comes, marked interrupted, for the second or so that was measured; every
/// output file is complete (the interval log merges, the .hgrm has its footer); the exit
/// status is 130.
#[test]
fn bench_ctrl_c_keeps_the_report_and_its_files() {
    use std::io::BufRead;
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let dir = std::env::temp_dir().join(format!("echoloop-ctrl-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (hlog, hgrm) = (dir.join("run.hlog"), dir.join("run.hgrm"));
    let addr = server.addr("tcp");
    let mut child = std::process::Command::new(common::bin())
        .args([
            "bench",
            "tcp",
            &addr,
            "-c",
            "2",
            "--warmup",
            "0",
            "--duration",
            "30",
        ])
        .args(["--json-lines", "-", "--hlog", hlog.to_str().unwrap()])
        .args(["--hgrm", hgrm.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The first interval of the window (1 s): then Ctrl-C.
    loop {
        let line = lines.next().expect("an interval line").unwrap();
        let v = parse(&line);
        if v.get("warmup") == Some(&Json::Bool(false)) {
            break;
        }
        assert!(started.elapsed() < common::DEADLINE, "no interval came");
    }
    let interrupted_at = started.elapsed();
    common::signal(child.id(), "INT");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        started.elapsed() < interrupted_at + Duration::from_secs(10),
        "the run went on after Ctrl-C: {err}"
    );
    let report = parse(rest.last().expect("the report line"));
    assert_eq!(report.at("interrupted"), &Json::Bool(true), "{report:?}");
    let secs = report.num("duration_secs");
    assert!((0.9..10.0).contains(&secs), "a window of {secs} s");
    assert!(report.num("messages") > 0.0, "{report:?}");
    assert_eq!(report.num("verify_errors"), 0.0);
    let hgrm_text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(hgrm_text.contains("#[Max     ="), "{hgrm_text}");
    // The log is complete: merge takes it, and finds the same window.
    let (st, out, merge_err) =
        common::run(&["bench", "merge", "--json", hlog.to_str().unwrap()], None);
    assert!(st.success(), "{merge_err}");
    let merged = parse(out.lines().find(|l| l.starts_with('{')).unwrap());
    assert_eq!(merged.num("messages"), report.num("messages"));
    assert_eq!(merged.at("interrupted"), &Json::Bool(true));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small check that `svg` is well-formed XML: every element that opens closes, in
/// order. Returns the names of the elements seen.
fn well_formed(svg: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let end = rest.find('>').expect("a tag that ends");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.trim()),
                "unbalanced </{name}>"
            );
        } else {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            seen.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    seen
}

/// Issue 21, part 4: `--plot` draws a run's latency distribution (open loop: corrected
/// and uncorrected), and `bench plot` overlays several reports, one line each, with
/// labelled axes.
#[test]
fn bench_plots_are_svg_with_a_line_per_series_and_labelled_axes() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let dir = std::env::temp_dir().join(format!("echoloop-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let series = |svg: &str| svg.matches("stroke-width=\"2\" points=").count();
    let run = |args: &[&str], report: &str| {
        let mut full = vec!["bench", "tcp", &addr, "-c", "2", "-d", "0.5", "--json"];
        full.extend_from_slice(args);
        let (status, out, err) = common::run(&full, None);
        assert!(status.success(), "{err}");
        std::fs::write(report, out).unwrap();
    };
    let (open, closed, one) = (path("open.json"), path("closed.json"), path("one.svg"));
    run(&["--rate", "2000", "--plot", &one], &open);
    run(&[], &closed);
    let svg = std::fs::read_to_string(&one).unwrap();
    assert!(well_formed(&svg).contains(&"svg".to_owned()));
    assert_eq!(series(&svg), 2, "corrected and uncorrected: {svg}");
    for text in ["percentile", "latency (µs)", "99%"] {
        assert!(svg.contains(text), "no {text:?} in {svg}");
    }
    let both = path("both.svg");
    let (status, _, err) = common::run(
        &[
            "bench",
            "plot",
            &open,
            &closed,
            "-o",
            &both,
            "--label",
            "open loop",
        ],
        None,
    );
    assert!(status.success(), "{err}");
    let svg = std::fs::read_to_string(&both).unwrap();
    well_formed(&svg);
    assert_eq!(series(&svg), 2, "one line per report: {svg}");
    // The first is named by its label, the second by its file.
    assert!(svg.contains("open loop") && svg.contains("closed"), "{svg}");
    // A file that is not a report is named, and nothing is drawn.
    let (status, _, err) = common::run(&["bench", "plot", &one, "-o", &path("x.svg")], None);
    assert!(!status.success() && err.contains("one.svg"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 21, part 2: `--runs N` repeats the run on new connections and gives each
/// figure's median and range; every run's report is kept.
#[test]
fn bench_runs_give_median_and_range_over_whole_runs() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let (status, r, err) = bench(&["tcp", &addr, "-c", "2", "-d", "0.3", "--runs", "3"]);
    assert!(status.success(), "{err}");
    let runs = r.at("runs").as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{r}");
    for run in runs {
        assert_report_sane(run, "tcp", 2, 64);
        assert_eq!(
            run.num("connections_up"),
            2.0,
            "new connections each run: {run}"
        );
    }
    let rates: Vec<f64> = runs.iter().map(|run| run.num("msgs_per_sec")).collect();
    let s = r.at("summary").at("msgs_per_sec");
    let (lo, mid, hi) = (s.num("min"), s.num("median"), s.num("max"));
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        (lo, mid, hi),
        (sorted[0], sorted[1], sorted[2]),
        "{rates:?}"
    );
    let p99 = r.at("summary").at("latency_p99_us");
    assert!(p99.num("min") <= p99.num("median") && p99.num("median") <= p99.num("max"));
    // Files written per run cannot take N runs.
    let (status, _, err) = common::run(
        &[
            "bench",
            "tcp",
            &addr,
            "--runs",
            "2",
            "--hgrm",
            "/tmp/x.hgrm",
        ],
        None,
    );
    assert!(!status.success() && err.contains("--hgrm"), "{err}");
}

/// Issue 21, part 5: sizes from a range or a weighted mix, every byte still checked,
/// over a stream and over datagrams; the report states the mix and the mean.
#[test]
fn bench_message_sizes_from_a_range_or_a_mix_are_all_verified() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    for (transport, sizes, stated, mean) in [
        ("tcp", "64..16k", "64..16384", (64.0 + 16384.0) / 2.0),
        (
            "tcp",
            "64:90,1k:9,64k:1",
            "64:90,1024:9,65536:1",
            (64.0 * 90.0 + 1024.0 * 9.0 + 65536.0) / 100.0,
        ),
        (
            "udp",
            "8:1,1k:1,9000:2",
            "8:1,1024:1,9000:2",
            (8.0 + 1024.0 + 2.0 * 9000.0) / 4.0,
        ),
    ] {
        let addr = server.addr(transport);
        let r = bench_ok(
            transport,
            &addr,
            2,
            &["--size", sizes, "-d", "0.5", "--pipeline", "4"],
        );
        assert_clean(&r, 2);
        assert!(r.num("messages") > 50.0, "{r}");
        assert_eq!(r.num("verify_errors"), 0.0, "{r}");
        assert_eq!(r.str("size_mix"), stated, "{r}");
        assert!((r.num("mean_size") - mean).abs() < 1e-6, "{r}");
        // The bytes sent follow the mean (loosely: a few hundred messages are a sample).
        let per_msg = r.num("bytes_sent") / r.num("messages");
        assert!(
            per_msg > mean * 0.5 && per_msg < mean * 1.6,
            "{per_msg} vs {mean}: {r}"
        );
    }
    let (status, _, err) = common::run(&["bench", "udp", "127.0.0.1:9", "--size", "4..64"], None);
    assert!(!status.success() && err.contains("--size"), "{err}");
}

/// Removes a socket file when the test ends (the server is killed, so it cannot).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stops a helper server thread when the test ends.
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn new() -> (Stop, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (Stop(Arc::clone(&flag)), flag)
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn running(stop: &AtomicBool, started: Instant) -> bool {
    !stop.load(Ordering::SeqCst) && started.elapsed() < common::DEADLINE
}

/// A TCP echo server that flips one bit of the 4th byte it echoes on each connection.
fn corrupting_tcp_server() -> (String, Stop) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let (guard, stop) = Stop::new();
    std::thread::spawn(move || {
        let started = Instant::now();
        while running(&stop, started) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let mut echoed = 0usize;
                        while running(&stop, started) {
                            let n = match s.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => n,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                                Err(_) => return,
                            };
                            if echoed <= 3 && echoed + n > 3 {
                                buf[3 - echoed] ^= 0x04;
                            }
                            echoed += n;
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (addr, guard)
}

#[test]
fn bench_tcp_corrupted_echo_is_a_verify_error() {
    let (addr, _stop) = corrupting_tcp_server();
    let (status, r, err) = bench(&["tcp", &addr, "-c", "2", "--duration", "0.4"]);
    assert!(!status.success(), "a wrong byte must fail the run: {err}");
    assert!(r.num("verify_errors") >= 1.0, "{r:?}");
    assert!(err.contains("differ"), "{err}");
    // Broken connections are reopened: more connections than asked for.
    assert!(r.num("connections_up") > 2.0, "{r:?}");
}

/// A UDP server with a policy for each datagram (numbered from 0): echo it now, drop it,
/// echo it after a delay, or echo it twice.
#[derive(Clone, Copy)]
enum Policy {
    DropOdd,
    DelayEveryFifth(Duration),
    DelayAll(Duration),
    Twice,
}

fn udp_server(policy: Policy) -> (String, Stop) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (guard, stop) = Stop::new();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 65536];
        let mut n_seen = 0u64;
        let mut held: Vec<(Instant, Vec<u8>, std::net::SocketAddr)> = Vec::new();
        while running(&stop, started) {
            let now = Instant::now();
            held.retain(|(at, data, to)| {
                if *at <= now {
                    let _ = s.send_to(data, to);
                    false
                } else {
                    true
                }
            });
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            let i = n_seen;
            n_seen += 1;
            match policy {
                Policy::DropOdd if i % 2 == 1 => {}
                Policy::DelayEveryFifth(d) if i % 5 == 4 => {
                    held.push((Instant::now() + d, buf[..n].to_vec(), from));
                }
                Policy::DelayAll(d) => {
                    held.push((Instant::now() + d, buf[..n].to_vec(), from));
                }
                Policy::Twice => {
                    let _ = s.send_to(&buf[..n], from);
                    let _ = s.send_to(&buf[..n], from);
                }
                _ => {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        }
    });
    (addr, guard)
}

#[test]
fn bench_udp_dropped_datagrams_are_lost() {
    let (addr, _stop) = udp_server(Policy::DropOdd);
    let (status, r, err) = bench(&[
        "udp",
        &addr,
        "-c",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "0.5",
        "--timeout",
        "50ms",
    ]);
    assert!(status.success(), "losses are reported, not fatal: {err}");
    assert!(r.num("lost") > 0.0, "{r:?}");
    assert!(r.num("messages") > 0.0, "{r:?}");
    assert_eq!(r.num("verify_errors"), 0.0, "{r:?}");
}

#[test]
fn bench_udp_late_echo_is_not_taken_for_a_newer_one() {
    // Every fifth datagram comes back 200 ms late, after its 50 ms timeout.
    let (addr, _stop) = udp_server(Policy::DelayEveryFifth(Duration::from_millis(200)));
    let (status, r, err) = bench(&[
        "udp",
        &addr,
        "-c",
        "1",
        "--pipeline",
        "2",
        "--duration",
        "0.6",
        "--timeout",
        "50ms",
    ]);
    assert!(status.success(), "{err}");
    assert!(r.num("lost") > 0.0, "{r:?}");
    assert_eq!(r.num("verify_errors"), 0.0, "{r:?}");
    assert!(r.num("late") > 0.0, "{r}");
    assert_eq!(r.num("duplicates"), 0.0, "{r}");
    // No latency sample comes from a late echo: all are far below the 200 ms delay.
    assert!(r.at("latency_us").num("max") < 150_000.0, "{r:?}");
}

#[test]
fn bench_udp_echo_after_the_timeout_is_late_whenever_the_sweep_runs() {
    // Every echo comes 150 ms late, past a 100 ms timeout: none is an answer.
    let (addr, _stop) = udp_server(Policy::DelayAll(Duration::from_millis(150)));
    let args = [
        "udp",
        &addr,
        "-c",
        "2",
        "--rate",
        "100",
        "-d",
        "0.5",
        "--timeout",
        "100ms",
    ];
    let (_, r, err) = bench(&args);
    assert_eq!(r.num("messages"), 0.0, "{r}\n{err}");
    assert!(r.num("late") >= 20.0, "{r}");
    assert!(r.num("lost") >= 20.0, "{r}");
}

#[test]
fn bench_udp_duplicate_echo_is_counted_once() {
    let (addr, _stop) = udp_server(Policy::Twice);
    let (status, r, err) = bench(&["udp", &addr, "-c", "2", "--duration", "0.3"]);
    assert!(status.success(), "{err}");
    assert_clean(&r, 2);
    // Every echo came twice: the second copy of each is counted, never as an answer.
    let (dups, msgs) = (r.num("duplicates"), r.num("messages"));
    assert!(dups >= msgs * 0.9 && dups <= msgs + 4.0, "{r}");
    assert_eq!(r.at("latency_us").num("count"), msgs);
    assert!(err.contains("came twice"), "{err}");
}

#[test]
fn bench_bad_arguments_fail_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench", "carrier-pigeon", "127.0.0.1:1"],
            "carrier-pigeon",
        ),
        (&["bench", "tcp", "127.0.0.1:1", "--size", "0"], "--size"),
        (&["bench", "tcp", "127.0.0.1:1", "--size", "12q"], "12q"),
        (
            &["bench", "udp", "127.0.0.1:1", "--size", "4"],
            "at least 8",
        ),
        (&["bench", "udp", "127.0.0.1:1", "--size", "100k"], "65507"),
        (&["bench", "tcp", "127.0.0.1:1", "--duration", "5x"], "5x"),
        (
            &["bench", "tcp", "127.0.0.1:1", "--duration", "0"],
            "--duration",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--connections", "0"],
            "--connections",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--pipeline", "0"],
            "--pipeline",
        ),
        (&["bench", "tcp", "127.0.0.1:1", "--rate", "-3"], "-3"),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "--rate",
                "1k",
                "--pipeline",
                "4",
            ],
            "--rate",
        ),
        (
            &["bench", "udp", "127.0.0.1:1", "--reconnect"],
            "--reconnect",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--ca", "/nonexistent"],
            "tls only",
        ),
        (&["bench", "tcp", "nonsense"], "nonsense"),
        (
            &["bench", "unix", "/tmp/x.sock", "--source", "127.0.0.1"],
            "--source",
        ),
        (
            &["bench", "tls", "127.0.0.1:1", "--ca", "/nonexistent/ca.pem"],
            "/nonexistent/ca.pem",
        ),
        // Bounded, and saying why, rather than 4.9 GB resident and a hang.
        (&["bench", "tcp", "127.0.0.1:1", "--size", "10G"], "64 MiB"),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "-c",
                "1k",
                "--pipeline",
                "100",
                "--size",
                "1M",
            ],
            "write buffers",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--segment", "2/2"],
            "below N",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--segment", "0/3"],
            "segments",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--start-at", "1000"],
            "in the past",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--start-at", "+5q"],
            "--start-at",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--server-pid", "4000000000"],
            "no such process",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--interval", "1ms"],
            "--interval",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--cert", "/x.pem"],
            "--key",
        ),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "--hlog",
                "/nonexistent/dir/x.hlog",
            ],
            "--hlog",
        ),
        (&["bench", "merge"], "FILE"),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "--hgrm",
                "/nonexistent/x.hgrm",
            ],
            "--hgrm",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "-d", "18446744073709551615"],
            "at most 30 days",
        ),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "--start-at",
                "+18446744073709551615",
            ],
            "--start-at",
        ),
        (
            &["bench", "merge", "/nonexistent.json"],
            "/nonexistent.json",
        ),
        (
            &["bench", "tls", "127.0.0.1:1", "--sockperf"],
            "--sockperf applies to tcp and udp only",
        ),
        (
            &["bench", "unix", "/tmp/x.sock", "--sockperf"],
            "--sockperf applies to tcp and udp only",
        ),
        (
            &["bench", "unix-dgram", "/tmp/x.sock", "--sockperf"],
            "--sockperf applies to tcp and udp only",
        ),
        (
            &["bench", "udp", "127.0.0.1:1", "--sockperf", "--size", "13"],
            "14-byte header",
        ),
        (
            &[
                "bench",
                "tcp",
                "127.0.0.1:1",
                "--sockperf",
                "--size",
                "8:1,1k:1",
            ],
            "14-byte header",
        ),
        (
            &["bench", "tcp", "127.0.0.1:1", "--sockperf", "--size", "1M"],
            "at most 1048575",
        ),
    ];
    for (args, needle) in cases {
        let started = Instant::now();
        let (status, out, err) = common::run(args, None);
        assert!(!status.success(), "{args:?} succeeded: {out}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: no report on bad input: {out}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} ran a load"
        );
    }
}

#[test]
fn bench_messages_larger_than_the_socket_buffers_do_not_deadlock() {
    let path = common::temp_sock("bench-large");
    let _cleanup = RemoveOnDrop(path.clone());
    let server = Proc::serve(&["--tcp", "127.0.0.1:0", "--unix", path.to_str().unwrap()]);
    let pki = TestPki::generate();
    let tls = common::serve_tls(&pki, &[], &[]);
    let tls_addr = tls.addr("tls");
    // Each message is far more than the socket buffers plus the loop's high-water mark:
    // the generator must read echoes while its own message is still being written.
    let tls_args = trusting(
        &["tls", &tls_addr, "--size", "16M", "-d", "0.6"],
        &pki.ca_pem,
    );
    let (tcp, unix) = (server.addr("tcp"), server.addr("unix"));
    let cases: Vec<Vec<&str>> = vec![
        vec!["tcp", &tcp, "--size", "10M", "-d", "0.4"],
        vec!["unix", &unix, "--size", "1M", "-d", "0.4"],
        vec![
            "tcp",
            &tcp,
            "--pipeline",
            "200",
            "--size",
            "64k",
            "-d",
            "0.4",
        ],
        tls_args,
    ];
    for args in cases {
        let (status, r, err) = bench(&args);
        assert!(status.success(), "{args:?}: {err}");
        assert!(r.num("messages") >= 1.0, "{args:?}: {r}");
        assert_eq!(r.num("verify_errors") + r.num("timeouts"), 0.0, "{r}");
    }
}

/// Counts what a plain TCP echo server sees: connections accepted, bytes echoed.
fn counting_tcp_server() -> (String, Arc<AtomicU64>, Arc<AtomicU64>, Stop) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let (accepted, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (guard, stop) = Stop::new();
    let (acc, by) = (Arc::clone(&accepted), Arc::clone(&bytes));
    std::thread::spawn(move || {
        let started = Instant::now();
        while running(&stop, started) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (stop, by) = (Arc::clone(&stop), Arc::clone(&by));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while running(&stop, started) {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            by.fetch_add(n as u64, Ordering::SeqCst);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (addr, accepted, bytes, guard)
}

#[test]
fn bench_open_loop_at_a_low_rate_keeps_its_connection_and_its_count() {
    let (addr, accepted, bytes, _stop) = counting_tcp_server();
    // 2 messages per second for 1.2 s: due at 0, 0.5 and 1.0 s. Before, the connection
    // closed after each schedule gap and reopened, sending more than asked.
    let (status, r, err) = bench(&["tcp", &addr, "--rate", "2", "-d", "1.2s"]);
    assert!(status.success(), "{err}");
    assert_eq!(r.num("messages"), 3.0, "{r}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for one asked"
    );
    assert_eq!(bytes.load(Ordering::SeqCst), 3 * 64, "three messages sent");
    assert_eq!(r.num("connections_up"), 1.0);
    // Open loop reports the uncorrected latency beside the corrected one.
    assert_eq!(r.at("latency_uncorrected_us").num("count"), 3.0, "{r}");
}

/// A TCP server on its own thread that hands each connection, blocking with a 2 s read
/// timeout, to `each`, one after the other, until the test ends.
fn serve_each(mut each: impl FnMut(TcpStream) + Send + 'static) -> (String, Stop) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let (guard, stop) = Stop::new();
    std::thread::spawn(move || {
        let started = Instant::now();
        while running(&stop, started) {
            let Ok((s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            each(s);
        }
    });
    (addr, guard)
}

/// A TCP server that does `what` with each connection once its first bytes arrive.
fn misbehaving_tcp_server(what: &'static str) -> (String, Stop) {
    let mut held = Vec::new();
    serve_each(move |mut s| {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        match what {
            // Read, answer nothing, keep the connection open.
            "silent" => held.push(s),
            // Close cleanly without answering.
            "close" => drop(s),
            // Abort: a linger of zero makes close send a reset.
            _ => {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(s);
            }
        }
    })
}

#[test]
fn bench_failures_are_named_for_what_happened() {
    // A server that never answers: the messages time out when the grace runs out; the
    // generator's own stop is not a failure of any kind.
    let (addr, _stop) = misbehaving_tcp_server("silent");
    let (status, r, err) = bench(&["tcp", &addr, "-c", "2", "-d", "0.3", "--timeout", "0.2"]);
    assert!(!status.success(), "nothing echoed");
    assert_eq!(
        r.num("timeouts"),
        2.0,
        "one message owed per connection: {r}"
    );
    for key in [
        "connect_failures",
        "closed_by_server",
        "broken",
        "verify_errors",
    ] {
        assert_eq!(r.num(key), 0.0, "{key}: {r}");
    }
    assert_eq!(r.num("connections_up"), 2.0);
    assert!(
        !err.contains("shutting down") && !err.contains("closed cleanly"),
        "{err}"
    );

    let (addr, _stop) = misbehaving_tcp_server("close");
    let (_, r, err) = bench(&["tcp", &addr, "-c", "2", "-d", "0.3"]);
    assert!(r.num("closed_by_server") >= 2.0, "{r}");
    assert!(r.num("unanswered") >= 2.0, "{r}");
    assert_eq!(r.num("timeouts") + r.num("broken"), 0.0, "{r}");
    assert!(err.contains("the server closed connection"), "{err}");

    let (addr, _stop) = misbehaving_tcp_server("reset");
    let (_, r, err) = bench(&["tcp", &addr, "-c", "2", "-d", "0.3"]);
    assert!(r.num("broken") >= 2.0, "{r}");
    assert_eq!(r.num("timeouts") + r.num("closed_by_server"), 0.0, "{r}");
    assert!(err.contains("reset"), "{err}");
}

#[test]
fn bench_udp_replies_from_another_port_are_not_echoes() {
    // Receives on one socket and answers from another, as a broken NAT or server would.
    let inbound = UdpSocket::bind("127.0.0.1:0").unwrap();
    let outbound = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = inbound.local_addr().unwrap().to_string();
    inbound
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (_stop, stop) = Stop::new();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 2048];
        while running(&stop, started) {
            if let Ok((n, from)) = inbound.recv_from(&mut buf) {
                let _ = outbound.send_to(&buf[..n], from);
            }
        }
    });
    let (status, r, err) = bench(&["udp", &addr, "-d", "0.3", "--timeout", "50ms"]);
    assert!(!status.success(), "{err}");
    assert!(r.num("wrong_source") >= 1.0, "{r}");
    assert_eq!(r.num("messages"), 0.0, "{r}");
    assert!(err.contains("from an address other than"), "{err}");
}

/// Runs two generators of one run at once, segments 0/2 and 1/2, the second starting
/// `stagger` seconds after the first (0: one --start-at); returns the paths of their JSON
/// reports, each with its `--hlog` beside it (`.hlog` for `.json`).
fn two_generators(addr: &str, tag: &str, stagger: f64) -> [std::path::PathBuf; 2] {
    let dir = std::env::temp_dir();
    let paths = [0, 1].map(|i| dir.join(format!("echoloop-{tag}-{}-{i}.json", std::process::id())));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 1.0;
    let handles: Vec<_> = [0, 1]
        .map(|i| {
            let seg = format!("{i}/2");
            let mut args: Vec<String> = ["tcp", addr, "-c", "4", "-d", "0.5", "--start-at"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let at = start + stagger * i as f64;
            let hlog = paths[i].with_extension("hlog").to_str().unwrap().to_owned();
            args.extend([
                format!("{at:.3}"),
                "--segment".into(),
                seg,
                "--hlog".into(),
                hlog,
            ]);
            let path = paths[i].clone();
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let (status, r, err) = bench(&refs);
                assert!(status.success(), "{err}");
                std::fs::write(&path, r.to_string()).unwrap();
            })
        })
        .into_iter()
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    paths
}

#[test]
fn bench_two_generators_merge_into_one_report() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let paths = two_generators(&addr, "merge", 0.0);
    let reports: Vec<Json> = paths
        .iter()
        .map(|p| parse(&std::fs::read_to_string(p).unwrap()))
        .collect();
    // Each took half of the connections, and they measured the same window.
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.num("connections_requested"), 2.0, "{r}");
        assert_eq!(r.at("segment").num("index"), i as f64);
        assert_clean(r, 2);
    }
    let starts = reports.iter().map(|r| r.num("window_start_unix"));
    let (lo, hi) = starts.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    assert!(hi - lo < 0.05, "windows start {lo} and {hi}");

    let p: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let (status, out, err) = common::run(&["bench", "merge", p[0], p[1], "--json"], None);
    assert!(status.success(), "{err}");
    let m = parse(out.trim());
    let sum = |k: &str| reports.iter().map(|r| r.num(k)).sum::<f64>();
    assert_eq!(m.num("messages"), sum("messages"), "{m}");
    assert_eq!(m.at("latency_us").num("count"), sum("messages"));
    assert_eq!(m.num("connections_up"), 4.0);
    for q in ["p50", "p99", "max"] {
        let each: Vec<f64> = reports.iter().map(|r| r.at("latency_us").num(q)).collect();
        let merged = m.at("latency_us").num(q);
        let (lo, hi) = (each[0].min(each[1]), each[0].max(each[1]));
        assert!(
            merged >= lo && merged <= hi,
            "{q}: {merged} not within {each:?}"
        );
    }
    assert_eq!(m.at("generators").as_array().unwrap().len(), 2, "{m}");

    // Their interval logs merge to the same count: the logs hold the same samples.
    let h: Vec<String> = paths
        .iter()
        .map(|p| p.with_extension("hlog").to_str().unwrap().to_owned())
        .collect();
    let (status, out, err) = common::run(&["bench", "merge", &h[0], &h[1], "--json"], None);
    assert!(status.success(), "{err}");
    let from_logs = parse(out.trim());
    assert_eq!(from_logs.num("messages"), sum("messages"), "{from_logs}");
    assert_eq!(from_logs.at("latency_us").num("count"), sum("messages"));

    // The human form has a row per generator.
    let (status, out, _) = common::run(&["bench", "merge", p[0], p[1]], None);
    assert!(status.success());
    assert_eq!(out.matches("\ngenerator      ").count(), 2, "{out}");

    // Inputs that are not one run are refused, naming what differs.
    let other =
        std::env::temp_dir().join(format!("echoloop-merge-other-{}.json", std::process::id()));
    let (status, r, err) = bench(&[
        "tcp",
        &addr,
        "-d",
        "0.2",
        "--size",
        "100",
        "--segment",
        "1/2",
        "-c",
        "2",
    ]);
    assert!(status.success(), "{err}");
    std::fs::write(&other, r.to_string()).unwrap();
    let o = other.to_str().unwrap();
    let three = std::env::temp_dir().join(format!("echoloop-merge-3-{}.json", std::process::id()));
    let (status, r, err) = bench(&["tcp", &addr, "-d", "0.2", "--segment", "1/3", "-c", "3"]);
    assert!(status.success(), "{err}");
    std::fs::write(&three, r.to_string()).unwrap();
    let t = three.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&[p[0], o], "message sizes"),
        (&[p[0], t], "segment counts"),
        (&[p[0], p[0]], "appears twice"),
        (&[p[1]], "missing"),
    ];
    for (files, needle) in cases {
        let mut args = vec!["bench", "merge"];
        args.extend_from_slice(files);
        let (status, out, err) = common::run(&args, None);
        assert!(!status.success(), "{files:?}: {out}");
        assert!(err.contains(needle), "{files:?}: {err}");
    }

    // Files edited by hand (or damaged) are refused, naming the file, and never wrap or
    // panic; wrong echoes in a part fail the merge as they fail a run.
    let edited = |tag: &str, from: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(from).unwrap().trim()).unwrap();
        edit(&mut v);
        let path =
            std::env::temp_dir().join(format!("echoloop-merge-{tag}-{}.json", std::process::id()));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let seg7 = edited("seg7", p[0], &|v| {
        v["segment"] = serde_json::json!({"index": 7, "count": 1})
    });
    let seg0 = edited("seg0", p[0], &|v| {
        v["segment"] = serde_json::json!({"index": 0, "count": 0})
    });
    let window = edited("window", p[0], &|v| {
        v["window_start_unix"] = serde_json::json!(1e308);
        v["window_end_unix"] = serde_json::json!(-1e308);
    });
    let huge0 = edited("huge0", p[0], &|v| {
        v["messages"] = serde_json::json!(u64::MAX)
    });
    let huge1 = edited("huge1", p[1], &|v| {
        v["messages"] = serde_json::json!(u64::MAX)
    });
    let bad0 = edited("bad0", p[0], &|v| v["verify_errors"] = serde_json::json!(3));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let cases: [(Vec<String>, &str); 5] = [
        (vec![s(&seg7)], "segment 7/1 is not one --segment gives"),
        (vec![s(&seg0)], "segment 0/0 is not one --segment gives"),
        (vec![s(&window)], "is not a span of Unix time"),
        (vec![s(&huge0), s(&huge1)], "too large to add up"),
        (vec![s(&bad0), p[1].to_owned()], "3 echoes differed"),
    ];
    for (files, needle) in cases {
        let mut args = vec!["bench", "merge"];
        args.extend(files.iter().map(String::as_str));
        let (status, out, err) = common::run(&args, None);
        assert!(!status.success(), "{files:?}: {out}");
        assert!(err.contains(needle), "{files:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for f in paths
        .iter()
        .chain([&other, &three, &seg7, &seg0, &window, &huge0, &huge1, &bad0])
    {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(f.with_extension("hlog"));
    }
}

#[test]
fn bench_merge_refuses_reports_of_windows_that_only_overlap() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    // The second generator starts 0.3 s into the first one's 0.5 s window: their report
    // totals cover different windows and cannot be added up as one.
    let paths = two_generators(&server.addr("tcp"), "stagger", 0.3);
    let p: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    let (status, out, err) = common::run(&["bench", "merge", p[0], p[1]], None);
    assert!(!status.success(), "{out}");
    assert!(err.contains("not the one the generators share"), "{err}");
    for f in &paths {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(f.with_extension("hlog"));
    }
}

/// A TCP echo server that closes each connection after `n` echoed messages of 64 bytes;
/// counts the messages it echoed.
fn closing_after(n: usize) -> (String, Arc<AtomicU64>, Stop) {
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    let (addr, stop) = serve_each(move |mut s| {
        let mut msg = [0u8; 64];
        for _ in 0..n {
            if s.read_exact(&mut msg).is_err() || s.write_all(&msg).is_err() {
                break;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, received, stop)
}

#[test]
fn bench_open_loop_sends_what_came_due_while_a_connection_was_down() {
    // 200 messages come due in the second; the server drops the connection every 20, and
    // each reopening waits 100 ms. What came due meanwhile is sent late (its latency
    // counted from when it was due), not skipped.
    let (addr, echoed, _stop) = closing_after(20);
    let (_, r, err) = bench(&["tcp", &addr, "--rate", "200", "-d", "1s"]);
    let answered = r.num("messages");
    assert!(answered >= 150.0, "{answered} of 200 answered: {r}\n{err}");
    assert!(echoed.load(Ordering::SeqCst) as f64 >= answered);
    // The outages show in the corrected latency: each waited out a 100 ms backoff.
    assert!(r.at("latency_us").num("max") > 50_000.0, "{r}");
    assert!(r.num("closed_by_server") >= 5.0, "{r}");
}

#[test]
fn bench_hlog_is_read_back_by_the_hdrhistogram_crate() {
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let path = std::env::temp_dir().join(format!("echoloop-{}.hlog", std::process::id()));
    let p = path.to_str().unwrap();
    let addr = server.addr("tcp");
    for (extra, tags) in [
        (&[][..], &["connect", "rtt"][..]),
        (
            &["--rate", "2k"][..],
            &["connect", "rtt", "rtt_uncorrected"][..],
        ),
    ] {
        let mut args = vec!["tcp", &addr, "-c", "2", "-d", "0.6", "--interval", "0.2"];
        args.extend_from_slice(&["--hlog", p, "--warmup", "0.1"]);
        args.extend_from_slice(extra);
        let (status, r, err) = bench(&args);
        assert!(status.success(), "{err}");
        let text = std::fs::read(&path).unwrap();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut rtt_intervals = 0;
        let mut base = None;
        for entry in IntervalLogIterator::new(&text) {
            match entry.expect("a well-formed interval log") {
                LogEntry::BaseTime(t) => base = Some(t),
                LogEntry::StartTime(_) => {}
                LogEntry::Interval(iv) => {
                    let bytes = base64_decode(iv.encoded_histogram());
                    let h: hdrhistogram::Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .unwrap();
                    let tag = iv.tag().expect("every line is tagged").as_str().to_owned();
                    if tag == "rtt" {
                        rtt_intervals += 1;
                    }
                    *counts.entry(tag).or_default() += h.len();
                }
            }
        }
        assert!(base.is_some(), "a BaseTime header");
        no_interval_before_start_time(&String::from_utf8_lossy(&text));
        let found: Vec<&str> = counts.keys().map(String::as_str).collect();
        assert_eq!(found, tags, "{counts:?}");
        // The window's intervals hold exactly the report's messages.
        assert_eq!(counts["rtt"] as f64, r.num("messages"), "{counts:?} {r}");
        assert!(
            (3..=4).contains(&rtt_intervals),
            "0.6 s in 0.2 s intervals: {rtt_intervals}"
        );
        assert_eq!(counts["connect"], 2, "the two connects");
    }
    let _ = std::fs::remove_file(&path);
}

/// issue 18, item 12: HdrHistogram's own log readers (Java's `HistogramLogReader`,
/// HdrHistogram_py) skip every interval that starts before the log's `StartTime`, in
/// double arithmetic on the text: read the text that way, independently of the crate.
fn no_interval_before_start_time(text: &str) {
    let header = |name: &str| -> f64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#[{name}: ")))
            .unwrap_or_else(|| panic!("no {name} header"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    let (start_time, base_time) = (header("StartTime"), header("BaseTime"));
    let mut seen = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('"'))
    {
        let fields: Vec<&str> = line.split(',').collect();
        let at = if fields[0].starts_with("Tag=") { 1 } else { 0 };
        let Ok(offset) = fields[at].parse::<f64>() else {
            continue;
        };
        seen += 1;
        assert!(
            base_time + offset >= start_time,
            "an interval at {} starts before StartTime {start_time}: {line:.60}",
            base_time + offset
        );
    }
    assert!(seen > 0, "no interval lines");
}

/// Standard base64 (the tests do not link a base64 crate of their own).
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[test]
fn bench_server_pid_reports_the_servers_cost() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let pid = server.pid().to_string();
    let (status, r, err) = bench(&[
        "tcp",
        &server.addr("tcp"),
        "-d",
        "0.4",
        "--server-pid",
        &pid,
    ]);
    assert!(status.success(), "{err}");
    let per_msg = r.num("server_cpu_us_per_msg");
    assert!(per_msg > 0.0 && per_msg < 10_000.0, "{r}");
    assert!(r.num("server_cpu_percent") > 0.0, "{r}");
    assert!(r.num("server_peak_rss_kib") > 100.0, "{r}");
    assert!(r.num("generator_cpu_us_per_msg") > 0.0, "{r}");
}

/// issue 18, item 9: a `--server-pid` process that exits during the run is reported, not
/// silently left out.
#[test]
fn bench_server_pid_that_exits_during_the_run_is_reported() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let mut short = std::process::Command::new("sleep")
        .arg("0.2")
        .spawn()
        .unwrap();
    let pid = short.id().to_string();
    // Reaped as soon as it exits, so that /proc no longer has it.
    let reaper = std::thread::spawn(move || short.wait());
    let (status, r, err) = bench(&[
        "tcp",
        &server.addr("tcp"),
        "-d",
        "0.8",
        "--server-pid",
        &pid,
    ]);
    reaper.join().unwrap().unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains(&format!("--server-pid {pid}")) && err.contains("did it exit?"),
        "{err}"
    );
    assert!(r.num("messages") > 0.0, "{r}");
}

/// issue 18, item 9: an `--hlog` that cannot be written (a full disk: /dev/full) is named
/// once, and the run and its report go on.
#[test]
fn bench_hlog_on_a_full_disk_is_named_and_the_report_kept() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let (status, r, err) = bench(&[
        "tcp",
        &server.addr("tcp"),
        "-d",
        "0.3",
        "--hlog",
        "/dev/full",
    ]);
    assert!(status.success(), "{err}");
    assert!(err.contains("--hlog /dev/full"), "{err}");
    assert_eq!(err.matches("--hlog").count(), 1, "said once: {err}");
    assert!(r.num("messages") > 0.0, "{r}");
}

/// issue 18, item 9: `merge` refuses figures no run can produce — a 1 ns window, a CPU
/// share of 1e308 — naming the file and the figure.
#[test]
fn bench_merge_refuses_impossible_figures() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let (status, out, err) = common::run(
        &["bench", "tcp", &server.addr("tcp"), "-d", "0.2", "--json"],
        None,
    );
    assert!(status.success(), "{err}");
    let line = out.lines().find(|l| l.starts_with('{')).expect("a report");
    let good: serde_json::Value = serde_json::from_str(line).unwrap();
    let dir = std::env::temp_dir();
    for (case, field, value) in [
        ("1 ns window", "window_end_unix", None),
        ("CPU 1e308", "generator_cpu_percent", Some(1e308)),
        ("negative CPU time", "generator_cpu_us_per_msg", Some(-1.0)),
    ] {
        let mut bad = good.clone();
        let v = value.unwrap_or_else(|| bad["window_start_unix"].as_f64().unwrap() + 1e-9);
        bad[field] = serde_json::json!(v);
        let path = dir.join(format!(
            "echoloop-impossible-{}-{field}.json",
            std::process::id()
        ));
        std::fs::write(&path, bad.to_string()).unwrap();
        let p = path.to_str().unwrap();
        let (status, out, err) = common::run(&["bench", "merge", p, p], None);
        assert!(!status.success(), "{case}: {out}");
        assert!(err.contains(p) && err.lines().count() == 1, "{case}: {err}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn bench_json_lines_one_per_interval_then_the_report() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let path = std::env::temp_dir().join(format!("echoloop-{}.jsonl", std::process::id()));
    let args = ["bench", "tcp", &addr, "-d", "1s", "--interval", "200ms"];
    for to in [path.to_str().unwrap(), "-"] {
        let mut full = args.to_vec();
        full.extend(["--json-lines", to]);
        let (status, out, err) = common::run(&full, None);
        assert!(status.success(), "{err}");
        let text = if to == "-" {
            out
        } else {
            assert!(!out.contains("{\""), "the human report on stdout: {out}");
            std::fs::read_to_string(&path).unwrap()
        };
        let lines: Vec<Json> = text.lines().map(parse).collect();
        let (report, intervals) = lines.split_last().expect("lines");
        assert_eq!(report.str("transport"), "tcp", "the report is last");
        assert!(
            (4..=6).contains(&intervals.len()),
            "{} lines: {text}",
            intervals.len()
        );
        let mut total = 0.0;
        for l in intervals {
            assert_eq!(l.str("type"), "interval");
            for key in [
                "elapsed_secs",
                "msgs_per_sec",
                "bytes_sent",
                "bytes_received",
                "errors",
                "connections_up",
            ] {
                l.num(key);
            }
            for q in ["p50", "p90", "p99", "p99_9", "max"] {
                l.at("latency_us").num(q);
            }
            total += l.num("messages");
        }
        assert_eq!(total, report.num("messages"), "the intervals add up");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bench_tls_presents_a_client_certificate() {
    let pki = TestPki::generate();
    let ca = pki.ca_pem.to_str().unwrap();
    let server = common::serve_tls(&pki, &[], &["--client-ca", ca]);
    let addr = server.addr("tls");
    let (cert, key) = (
        pki.client_chain.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let args = trusting(
        &["tls", &addr, "-d", "0.3", "--cert", cert, "--key", key],
        &pki.ca_pem,
    );
    let (status, r, err) = bench(&args);
    assert!(status.success(), "{err}");
    assert_clean(&r, 1);
    // Without one, the server refuses every handshake. In TLS 1.3 the client has
    // finished its part before the server checks, so the refusal breaks a connection
    // the client already counts as open.
    let args = trusting(&["tls", &addr, "-d", "0.3"], &pki.ca_pem);
    let (status, r, err) = bench(&args);
    assert!(!status.success());
    assert_eq!(r.num("messages"), 0.0, "{r}");
    assert!(r.num("connect_failures") + r.num("broken") >= 1.0, "{r}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// issue 18, item 2: `merge` refuses what is not a regular file (a FIFO, `/dev/zero`, a
/// directory) by name, instead of reading it forever into memory.
#[test]
fn bench_merge_refuses_inputs_that_are_not_regular_files() {
    let dir = std::env::temp_dir().join(format!("echoloop-merge-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let mut inputs = vec!["/dev/zero".to_string(), dir.display().to_string()];
    if made.is_ok_and(|s| s.success()) {
        inputs.push(fifo.display().to_string());
    }
    for input in &inputs {
        let (status, out, err) = common::run_bounded(
            &["bench", "merge", input, input],
            None,
            std::time::Duration::from_secs(20),
        );
        assert!(!status.success(), "{input}: {out}");
        assert!(err.contains("not a regular file"), "{input}: {err}");
        assert_eq!(err.lines().count(), 1, "{input}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
