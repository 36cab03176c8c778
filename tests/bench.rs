//! `echoloop bench` against real servers on loopback: `echoloop serve` for every transport,
//! and small misbehaving servers written here (one corrupts a byte, one drops datagrams,
//! one answers late or twice) to prove the generator notices.
//!
//! Every run is short (well under a second of load) and every helper server stops with the
//! test or at `common::DEADLINE`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use common::Proc;
use common::certs::TestPki;

/// Counts allocations process-wide while `COUNT_NOW` is on. Only the allocation test turns
/// it on, and it holds [`GATE`] exclusively, so nothing else in this binary runs then.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNT_NOW: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// bumps a counter, which neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_NOW.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's; forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT_NOW.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`; forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests share it; the allocation test takes it alone.
static GATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|e| e.into_inner())
}

/// A parsed JSON value: just enough for the report.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut p = Parser {
            s: text.trim().as_bytes(),
            pos: 0,
        };
        let v = p.value();
        assert_eq!(p.pos, p.s.len(), "trailing data in {text}");
        v
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m
                .get(key)
                .unwrap_or_else(|| panic!("missing key {key:?} in {self:?}")),
            _ => panic!("not an object: {self:?}"),
        }
    }

    fn num(&self, key: &str) -> f64 {
        match self.get(key) {
            Json::Num(n) => *n,
            other => panic!("{key} is not a number: {other:?}"),
        }
    }

    fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Json::Str(s) => s,
            other => panic!("{key} is not a string: {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        *self.s.get(self.pos).expect("unexpected end of JSON")
    }

    fn eat(&mut self, b: u8) {
        assert_eq!(self.peek() as char, b as char, "at {}", self.pos);
        self.pos += 1;
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => {
                self.pos += 1;
                let mut m = BTreeMap::new();
                if self.peek() == b'}' {
                    self.pos += 1;
                    return Json::Obj(m);
                }
                loop {
                    let k = self.string();
                    self.eat(b':');
                    let v = self.value();
                    assert!(m.insert(k.clone(), v).is_none(), "duplicate key {k}");
                    if self.peek() == b',' {
                        self.pos += 1;
                    } else {
                        self.eat(b'}');
                        return Json::Obj(m);
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b'n' => self.word("null", Json::Null),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            _ => {
                let start = self.pos;
                while self.pos < self.s.len()
                    && matches!(
                        self.s[self.pos],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.pos += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.pos]).unwrap();
                Json::Num(t.parse().unwrap_or_else(|_| panic!("bad number {t:?}")))
            }
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Json {
        assert!(
            self.s[self.pos..].starts_with(w.as_bytes()),
            "at {}",
            self.pos
        );
        self.pos += w.len();
        v
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            let b = self.peek();
            self.pos += 1;
            match b {
                b'"' => return out,
                b'\\' => {
                    let e = self.peek();
                    self.pos += 1;
                    match e {
                        b'u' => {
                            let hex = std::str::from_utf8(&self.s[self.pos..self.pos + 4]).unwrap();
                            self.pos += 4;
                            out.push(
                                char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap(),
                            );
                        }
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        other => out.push(other as char),
                    }
                }
                _ => {
                    // Copy a whole UTF-8 sequence.
                    let start = self.pos - 1;
                    let len = match b {
                        0xf0.. => 4,
                        0xe0.. => 3,
                        0xc0.. => 2,
                        _ => 1,
                    };
                    self.pos = start + len;
                    out.push_str(std::str::from_utf8(&self.s[start..start + len]).unwrap());
                }
            }
        }
    }
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
    (status, Json::parse(line), err)
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
    let lat = r.get("latency_us");
    assert_eq!(lat.num("count"), messages, "one latency sample per message");
    let quantiles = ["p50", "p90", "p99", "p99_9", "max"].map(|k| lat.num(k));
    assert!(quantiles[0] >= 1.0, "{lat:?}");
    assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{lat:?}");
    assert!(lat.num("mean") > 0.0 && lat.num("mean") <= quantiles[4]);
    let cpu = r.num("generator_cpu_percent");
    assert!(cpu > 0.0 && cpu < 100.0 * 64.0, "{cpu}");
    // Present even when null.
    r.get("connect_latency_us");
    r.get("reconnects_per_sec");
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
    let _gate = shared();
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let cpu_before = echoloop::cli::bench::proc_cpu_ticks(server.pid()).unwrap();
    let rest = ["--size", "100", "--duration", "0.5"];
    let r = clean_run("tcp", &addr, 4, 100, &rest);
    assert_eq!(r.str("mode"), "closed-loop pipeline=1");
    assert_eq!(r.str("target"), addr);
    assert_eq!(r.get("connect_latency_us").num("count"), 4.0);
    assert_eq!(r.get("reconnects_per_sec"), &Json::Null);
    // The server did the echoing: its CPU time grew (what the benches compare).
    let cpu_after = echoloop::cli::bench::proc_cpu_ticks(server.pid()).unwrap();
    assert!(cpu_after > cpu_before, "{cpu_before} -> {cpu_after}");
}

#[test]
fn bench_tcp_pipeline_and_threads() {
    let _gate = shared();
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
    let _gate = shared();
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let rest = ["--size", "256k", "--duration", "0.5"];
    clean_run("tcp", &addr, 2, 256 * 1024, &rest);
}

#[test]
fn bench_udp_clean_run() {
    let _gate = shared();
    let server = Proc::serve(&["--udp", "127.0.0.1:0"]);
    let addr = server.addr("udp");
    let rest = ["--size", "64", "--duration", "0.5", "--pipeline", "4"];
    let r = clean_run("udp", &addr, 3, 64, &rest);
    assert_eq!(r.get("connect_latency_us"), &Json::Null);
}

#[test]
fn bench_unix_clean_run() {
    let _gate = shared();
    let path = common::temp_sock("bench-unix");
    let _cleanup = RemoveOnDrop(path.clone());
    let p = path.to_str().unwrap();
    let server = Proc::serve(&["--unix", p]);
    clean_run("unix", &server.addr("unix"), 3, 64, &["--duration", "0.5"]);
}

#[test]
fn bench_unix_dgram_clean_run() {
    let _gate = shared();
    let path = common::temp_sock("bench-dgram");
    let _cleanup = RemoveOnDrop(path.clone());
    let p = path.to_str().unwrap();
    let server = Proc::serve(&["--unix-dgram", p]);
    let rest = ["--size", "2k", "--duration", "0.5"];
    clean_run("unix-dgram", &server.addr("unix-dgram"), 3, 2048, &rest);
}

/// `args` followed by the options to trust `ca` for the name `localhost`.
fn trusting<'a>(args: &[&'a str], ca: &'a std::path::Path) -> Vec<&'a str> {
    let ca = ca.to_str().unwrap();
    [args, &["--ca", ca, "--server-name", "localhost"]].concat()
}

#[test]
fn bench_tls_clean_run() {
    let _gate = shared();
    let pki = TestPki::generate();
    let server = common::serve_tls(&pki, &[], &[]);
    let rest = ["--size", "1k", "--duration", "0.5", "--pipeline", "2"];
    let rest = trusting(&rest, &pki.ca_pem);
    clean_run("tls", &server.addr("tls"), 3, 1024, &rest);
}

#[test]
fn bench_tls_wrong_ca_counts_connect_failures() {
    let _gate = shared();
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
    let _gate = shared();
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
    assert!(r.get("connect_latency_us").num("count") > 0.0);
    assert_eq!(r.num("verify_errors"), 0.0);
    assert_eq!(r.num("connect_failures"), 0.0);
}

#[test]
fn bench_tcp_reconnect_reports_connections_per_second() {
    let _gate = shared();
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
    let _gate = shared();
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
fn bench_connect_rate_ramps_connections() {
    let _gate = shared();
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    // 8 connections at 5/s: due at 0, 0.2, 0.4, 0.6 s... only ~3-4 fit in 0.7 s.
    let rest = ["--duration", "0.7", "--connect-rate", "5"];
    let r = bench_ok("tcp", &server.addr("tcp"), 8, &rest);
    let up = r.num("connections_up");
    assert!((3.0..=5.0).contains(&up), "{up} up: {r:?}");
    assert_eq!(r.num("connect_failures"), 0.0);
    assert_eq!(r.get("connect_latency_us").num("count"), up);
    assert!(r.num("messages") > 0.0);
}

#[test]
fn bench_connect_failures_are_counted_not_fatal() {
    let _gate = shared();
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
    let _gate = shared();
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
    let _gate = shared();
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
    let _gate = shared();
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
    let _gate = shared();
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
    let _gate = shared();
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
    assert!(err.contains("late or duplicate echoes"), "{err}");
    // No latency sample comes from a late echo: all are far below the 200 ms delay.
    assert!(r.get("latency_us").num("max") < 150_000.0, "{r:?}");
}

#[test]
fn bench_udp_duplicate_echo_is_counted_once() {
    let _gate = shared();
    let (addr, _stop) = udp_server(Policy::Twice);
    let (status, r, err) = bench(&["udp", &addr, "-c", "2", "--duration", "0.3"]);
    assert!(status.success(), "{err}");
    assert_clean(&r, 2);
    assert!(err.contains("late or duplicate echoes"), "{err}");
}

#[test]
fn bench_bad_arguments_fail_with_a_message() {
    let _gate = shared();
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

/// `echoloop bench` run in this process, with its allocations counted; returns
/// (allocations, messages in the report).
fn counted_run(addr: &str, duration: &str, extra: &[&str]) -> (u64, u64) {
    use clap::Parser;
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: echoloop::cli::bench::BenchArgs,
    }
    let hgrm = std::env::temp_dir().join(format!(
        "echoloop-bench-alloc-{}-{duration}.hgrm",
        std::process::id()
    ));
    let mut argv = vec!["bench", "tcp", addr, "--duration", duration, "--json"];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&["--hgrm", hgrm.to_str().unwrap()]);
    let cmd = Cmd::try_parse_from(argv).unwrap();
    ALLOCS.store(0, Ordering::SeqCst);
    COUNT_NOW.store(true, Ordering::SeqCst);
    let code = echoloop::cli::bench::run(cmd.args);
    COUNT_NOW.store(false, Ordering::SeqCst);
    assert_eq!(code.unwrap(), ExitCode::SUCCESS);
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let _ = std::fs::remove_file(&hgrm);
    // "#[Max     =   1234.000, Total count    =   5678]"
    let total = text
        .lines()
        .find_map(|l| l.split("Total count    =").nth(1))
        .and_then(|v| v.trim().trim_end_matches(']').trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in {text}"));
    (ALLOCS.load(Ordering::SeqCst), total)
}

#[test]
fn bench_steady_state_allocates_nothing_per_message() {
    let _alone = GATE.write().unwrap_or_else(|e| e.into_inner());
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");
    let extra = ["-c", "4", "--pipeline", "2"];
    let (short_allocs, short_msgs) = counted_run(&addr, "0.3", &extra);
    let (long_allocs, long_msgs) = counted_run(&addr, "1.3", &extra);
    assert!(
        long_msgs > short_msgs + 10_000,
        "{short_msgs} vs {long_msgs}"
    );
    // Setup and per-connection costs are the same in both runs; what differs is a second
    // of messages and one progress line. One allocation per message would be tens of
    // thousands.
    let extra_allocs = long_allocs.saturating_sub(short_allocs);
    assert!(
        extra_allocs < 200,
        "{extra_allocs} more allocations for {} more messages ({short_allocs} -> {long_allocs})",
        long_msgs - short_msgs
    );
}
