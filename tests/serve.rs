//! Integration tests for issue 2: `echoloop serve` and the reactor under it, on real loopback
//! sockets (127.0.0.1, ::1, Unix paths and Linux abstract names).
//!
//! Most tests drive the real binary through `common::Proc`. The partial-send test runs the
//! library's `EventLoop` in-process instead, so that a handler can observe the write buffer.
//! Every wait has a deadline; sleeps only create idle time or pace a polling loop.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use echoloop::{Config, Ctx, Endpoint, EventLoop, Handler, ListenKind, StopHandle};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use common::{DEADLINE, Proc};

/// Per-call socket timeout: a single read or write that takes this long means the test is
/// stuck, so it fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------

/// Length of the random block patterns are cut from. Prime, so that shifting a stream by any
/// plausible chunk size (a lost or repeated 64 KiB read, say) never lines up with itself.
const BLOCK: usize = 1_048_573;
/// Distance between the starting points of two seeds in the block.
const STRIDE: u64 = 7_919;

fn block() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        // xorshift64*: any fixed pseudo-random sequence will do.
        let mut x: u64 = 0x243F_6A88_85A3_08D3;
        let mut v = Vec::with_capacity(BLOCK + 8);
        while v.len() < BLOCK {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v.truncate(BLOCK);
        v
    })
}

/// A byte stream that shows loss, duplication, reordering and cross-talk: byte `pos` of
/// stream `seed` is `block[(pos + seed * STRIDE) % BLOCK]`. Different seeds (below `BLOCK`)
/// read different parts of the random block, so one connection's bytes never pass for
/// another's. Filling and checking are `memcpy`/`memcmp`, fast even in a debug build.
#[derive(Debug, Clone, Copy)]
struct Pattern(u64);

impl Pattern {
    fn start(self, pos: u64) -> usize {
        ((pos + self.0 * STRIDE) % BLOCK as u64) as usize
    }

    fn fill(self, pos: u64, buf: &mut [u8]) {
        let b = block();
        let (mut i, mut at) = (0, self.start(pos));
        while i < buf.len() {
            let n = (BLOCK - at).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&b[at..at + n]);
            i += n;
            at = 0;
        }
    }

    fn bytes(self, pos: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(pos, &mut v);
        v
    }

    /// Panics, naming the first wrong offset, unless `data` is this stream at `pos`.
    fn check(self, pos: u64, data: &[u8]) {
        let b = block();
        let (mut i, mut at) = (0, self.start(pos));
        while i < data.len() {
            let n = (BLOCK - at).min(data.len() - i);
            if data[i..i + n] != b[at..at + n] {
                let k = (0..n).find(|&k| data[i + k] != b[at + k]).unwrap_or(0);
                panic!(
                    "stream {}: wrong byte at offset {}",
                    self.0,
                    pos + (i + k) as u64
                );
            }
            i += n;
            at = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

/// A stream socket that can be split between a reading and a writing thread.
trait Duplex: Read + Write + Send + Sized + 'static {
    fn dup(&self) -> Self;
    fn set_timeouts(&self, t: Duration);
}

impl Duplex for TcpStream {
    fn dup(&self) -> Self {
        self.try_clone().expect("clone tcp stream")
    }
    fn set_timeouts(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
        self.set_write_timeout(Some(t)).unwrap();
    }
}

impl Duplex for UnixStream {
    fn dup(&self) -> Self {
        self.try_clone().expect("clone unix stream")
    }
    fn set_timeouts(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
        self.set_write_timeout(Some(t)).unwrap();
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_timeouts(IO_TIMEOUT);
    s
}

/// Sends `msg` and expects exactly it back.
fn ping(s: &mut impl Duplex, msg: &[u8]) {
    s.write_all(msg).expect("write ping");
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).expect("read ping echo");
    assert!(back == msg, "echo differs from what was sent");
}

/// Expects the peer's EOF (and no stray bytes before it).
fn expect_eof(s: &mut impl Read, what: &str) {
    let mut b = [0u8; 4096];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: {n} unexpected bytes instead of EOF"),
        Err(e) => panic!("{what}: expected EOF, got {e}"),
    }
}

/// Writes `total` bytes of `pat` from a new thread, publishing the count written so far in
/// `progress` (so the caller can see when the writer blocks). Uses plain `write`, so a
/// partial write is visible as progress.
fn spawn_writer<S: Duplex>(
    mut w: S,
    pat: Pattern,
    total: u64,
    progress: Arc<AtomicU64>,
) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * KIB as usize];
        let mut pos = 0;
        while pos < total {
            let n = (total - pos).min(buf.len() as u64) as usize;
            pat.fill(pos, &mut buf[..n]);
            let k = w.write(&buf[..n])?;
            if k == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pos += k as u64;
            progress.store(pos, Ordering::SeqCst);
        }
        Ok(())
    })
}

/// Reads exactly `total` bytes, checking each against `pat`; fails past `deadline`.
fn read_verify(r: &mut impl Read, pat: Pattern, total: u64, deadline: Instant) {
    let mut buf = vec![0u8; 256 * KIB as usize];
    let mut pos = 0;
    while pos < total {
        assert!(
            Instant::now() < deadline,
            "stream {}: only {pos} of {total} bytes back by the deadline",
            pat.0
        );
        let want = (total - pos).min(buf.len() as u64) as usize;
        let n = r
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("read at {pos} of {total}: {e}"));
        assert!(n > 0, "EOF after {pos} of {total} bytes");
        pat.check(pos, &buf[..n]);
        pos += n as u64;
    }
}

/// Reads until EOF, checking that what arrives is a prefix of `pat`; returns its length.
fn read_prefix_until_eof(r: &mut impl Read, pat: Pattern, deadline: Instant) -> u64 {
    let mut buf = vec![0u8; 256 * KIB as usize];
    let mut pos = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no EOF by the deadline ({pos} bytes read)"
        );
        match r.read(&mut buf) {
            Ok(0) => return pos,
            Ok(n) => {
                pat.check(pos, &buf[..n]);
                pos += n as u64;
            }
            Err(e) => panic!("read after {pos} bytes: {e}"),
        }
    }
}

/// Echoes `total` bytes over `s`: written by a second thread while this one reads and
/// checks, so neither side's buffers fill up and deadlock.
fn echo_concurrently<S: Duplex>(s: &S, pat: Pattern, total: u64) {
    let deadline = Instant::now() + DEADLINE;
    let writer = spawn_writer(s.dup(), pat, total, Arc::new(AtomicU64::new(0)));
    let mut r = s.dup();
    read_verify(&mut r, pat, total, deadline);
    writer.join().expect("writer thread").expect("write");
}

/// Polls `counter` until it has not moved for `quiet` (the writer is blocked, or done);
/// returns its value then.
fn wait_until_still(counter: &AtomicU64, quiet: Duration) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "writer never stopped ({last} bytes)"
        );
        thread::sleep(Duration::from_millis(25));
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

/// Polls until `cond` holds; fails with `what` after `DEADLINE`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn abstract_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "echoloop-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs `echoloop <args>` to completion, failing after `DEADLINE` (unlike `common::run`,
/// which would hang if a bad argument were accepted and the server started).
fn run_bounded(args: &[&str]) -> (ExitStatus, String, String) {
    common::run_bounded(args, None, DEADLINE)
}

/// A failed start: non-zero exit, nothing announced, exactly one line on stderr of the
/// form `echoloop: error: ...` mentioning `needle`, and no panic.
fn assert_one_line_error(result: &(ExitStatus, String, String), needle: &str) {
    let (status, stdout, stderr) = result;
    assert!(
        !status.success(),
        "expected failure, got {status}; stderr:\n{stderr}"
    );
    assert_no_panic(stderr);
    assert!(
        !stdout.contains("listening"),
        "announced a listener: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("echoloop: error: "),
        "unexpected message: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(needle),
        "message {:?} does not mention {needle:?}",
        lines[0]
    );
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "the process panicked:\n{stderr}"
    );
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name (field 2) may contain spaces; fields after it are plain numbers.
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// Starts `echoloop serve` through `sh -c`, so the shell can lower a resource limit first,
/// and waits for its `listening` lines.
fn serve_via_shell(script: &str, listeners: usize) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg(common::bin()); // $0 in the script
    let mut p = Proc::spawn_command(cmd);
    p.wait_listening(listeners);
    p
}

// ---------------------------------------------------------------------------------------
// In-process event loop
// ---------------------------------------------------------------------------------------

/// An `EventLoop` serving TCP on 127.0.0.1 from its own thread. The loop is built inside
/// that thread because handlers need not be `Send`.
struct InProcess {
    addr: SocketAddr,
    stop: StopHandle,
    done: mpsc::Receiver<io::Result<()>>,
}

impl InProcess {
    fn start(
        config: Config,
        factory: impl FnMut() -> Box<dyn Handler> + Send + 'static,
    ) -> InProcess {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            let mut el = EventLoop::new(config).expect("create event loop");
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let bound = el
                .listen(&Endpoint::Inet(any), ListenKind::Tcp, factory)
                .expect("listen");
            let Endpoint::Inet(addr) = bound.addr else {
                panic!("tcp listener bound to {}", bound.addr);
            };
            ready_tx.send((addr, el.stop_handle())).unwrap();
            let _ = done_tx.send(el.run());
        });
        let (addr, stop) = ready_rx.recv_timeout(DEADLINE).expect("event loop started");
        InProcess { addr, stop, done }
    }

    fn finish(self) {
        self.stop.stop(Duration::ZERO);
        self.done
            .recv_timeout(DEADLINE)
            .expect("event loop stopped")
            .expect("event loop ran without error");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Also on a failed assertion: do not leave the loop thread serving.
        self.stop.stop(Duration::ZERO);
    }
}

/// Echo that records what the reactor's write buffer held when data arrived, and how often
/// a full socket drained.
struct Recorder {
    max_pending: Arc<AtomicUsize>,
    drained: Arc<AtomicUsize>,
}

impl Handler for Recorder {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        self.max_pending
            .fetch_max(ctx.pending_output(), Ordering::SeqCst);
        ctx.send(data);
    }

    fn on_drained(&mut self, _ctx: &mut Ctx<'_>) {
        self.drained.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// TCP echo
// ---------------------------------------------------------------------------------------

/// Small messages ping-pong, then 1 MiB and 64 MiB written and read at once on the same
/// connection, then a small one again (nothing extra or missing in between), then
/// half-close and EOF.
fn echo_all_sizes(addr: SocketAddr) {
    let mut s = tcp(addr);
    ping(&mut s, b"x");
    ping(&mut s, b"hello, echo\n");
    ping(&mut s, &Pattern(1).bytes(0, 1400));
    echo_concurrently(&s, Pattern(2), MIB);
    echo_concurrently(&s, Pattern(3), 64 * MIB);
    ping(&mut s, b"tail");
    s.shutdown(Shutdown::Write).unwrap();
    expect_eof(&mut s, "after half-close");
}

#[test]
fn tcp_echo_byte_exact_ipv4() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    echo_all_sizes(p.sockaddr("tcp"));
    assert_no_panic(&p.stderr_text());
}

#[test]
fn tcp_echo_byte_exact_ipv6() {
    let p = Proc::serve(&["--tcp", "[::1]:0"]);
    let addr = p.sockaddr("tcp");
    assert!(addr.is_ipv6() && addr.ip().is_loopback(), "bound {addr}");
    echo_all_sizes(addr);
    assert_no_panic(&p.stderr_text());
}

/// Partial sends: with a tiny client receive window the server's writes come up short at
/// once. The client writes 8 MiB and reads nothing for a while, then reads it all: every
/// byte arrives in order, so the remainder waited in the connection's write buffer and
/// went out on writability (`on_drained` fired). The handler also sees that the buffer never
/// held more than the high-water mark when it was given more input (backpressure).
#[test]
fn tcp_echo_partial_write() {
    let max_pending = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(AtomicUsize::new(0));
    let (mp, dr) = (Arc::clone(&max_pending), Arc::clone(&drained));
    let config = Config::default();
    let high_water = config.high_water;
    let server = InProcess::start(config, move || {
        Box::new(Recorder {
            max_pending: Arc::clone(&mp),
            drained: Arc::clone(&dr),
        })
    });

    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_timeouts(IO_TIMEOUT);

    let total = 8 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(s.dup(), Pattern(7), total, Arc::clone(&progress));
    // Read nothing until the writer is stuck (or done: kernel buffers may take it all).
    // Either way the server could not send everything: it holds at most a few MiB in its
    // socket and our window is tiny, so it has had to keep a remainder.
    wait_until_still(&progress, Duration::from_millis(300));
    assert!(
        max_pending.load(Ordering::SeqCst) > 0,
        "the server never had unsent bytes waiting"
    );
    read_verify(&mut s.dup(), Pattern(7), total, Instant::now() + DEADLINE);
    writer.join().unwrap().expect("write");
    assert!(
        drained.load(Ordering::SeqCst) > 0,
        "on_drained never fired: the buffered remainder did not go out on writability"
    );
    let max = max_pending.load(Ordering::SeqCst);
    assert!(
        max <= high_water,
        "the server read more input while owing {max} bytes (high water {high_water})"
    );
    s.shutdown(Shutdown::Write).unwrap();
    expect_eof(&mut s.dup(), "after half-close");
    server.finish();
}

/// Echo that pauses reading after every chunk and resumes from a timer a little later.
struct Stutter;

impl Handler for Stutter {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.send(data);
        ctx.pause_reading();
        ctx.set_timer(Duration::from_millis(2));
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: echoloop::TimerId) {
        ctx.resume_reading();
    }
}

/// Edge-triggered readiness: bytes that wait in the kernel while reading is paused raise no
/// new event when reading resumes, so the loop must look again by itself. The client sends
/// everything at once and then only reads, so nothing else would wake the connection.
#[test]
fn tcp_resume_reading_rereads_waiting_data() {
    let server = InProcess::start(Config::default(), || Box::new(Stutter));
    let s = tcp(server.addr);
    let (pat, n) = (Pattern(8), MIB);
    let mut w = s.dup();
    let writer = thread::spawn(move || {
        w.write_all(&pat.bytes(0, n as usize))?;
        w.shutdown(Shutdown::Write)
    });
    let got = read_prefix_until_eof(&mut s.dup(), pat, Instant::now() + DEADLINE);
    writer.join().unwrap().expect("write then shutdown");
    assert_eq!(got, n);
    server.finish();
}

/// Echo that also re-arms a zero-length timer from its own callback, until told to stop
/// (or 5 s pass, so a regression costs seconds, not a hung test run).
struct Ticker {
    ticks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    until: Instant,
}

impl Handler for Ticker {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(Duration::ZERO);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.send(data);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: echoloop::TimerId) {
        self.ticks.fetch_add(1, Ordering::SeqCst);
        // The wall clock, not ctx.now(): the loop's clock stands still within one pass.
        if !self.stop.load(Ordering::SeqCst) && Instant::now() < self.until {
            ctx.set_timer(Duration::ZERO);
        }
    }
}

/// A timer set for "now" from a timer callback fires on the next turn, not in the same pass:
/// otherwise a handler that re-arms a zero delay (or a zero accept backoff) keeps the loop in
/// its timer pass forever and no socket is served.
#[test]
fn timer_zero_delay_rearm_does_not_starve_io() {
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(5);
    let (t, st) = (Arc::clone(&ticks), Arc::clone(&stop));
    let server = InProcess::start(Config::default(), move || {
        Box::new(Ticker {
            ticks: Arc::clone(&t),
            stop: Arc::clone(&st),
            until,
        })
    });
    let mut a = tcp(server.addr);
    wait_for("the timer to tick", || ticks.load(Ordering::SeqCst) > 100);
    let started = Instant::now();
    ping(&mut a, b"served between ticks?");
    let mut b = tcp(server.addr);
    ping(&mut b, b"and a new connection?");
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    assert!(
        took < Duration::from_secs(2),
        "echo took {took:?} while a zero-delay timer re-armed itself"
    );
    server.finish();
}

/// Backpressure: a client sends up to 64 MiB without reading. The server must stop reading
/// (its memory stays flat) until the client reads; then everything arrives, which needs the
/// server to resume reading below the low-water mark although no new readiness event comes
/// for the data that waited in its receive queue.
#[test]
fn tcp_backpressure_bounds_memory_then_resumes() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let mut warm = tcp(addr);
    echo_concurrently(&warm, Pattern(10), MIB);
    ping(&mut warm, b"warm");
    let before = p.rss_kib();

    let s = tcp(addr);
    let total = 64 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(s.dup(), Pattern(11), total, Arc::clone(&progress));
    let written = wait_until_still(&progress, Duration::from_millis(500));
    let grown = p.rss_kib().saturating_sub(before);
    eprintln!("client sent {written} bytes unread; server grew {grown} KiB");
    assert!(
        grown < 16 * 1024,
        "server memory grew by {grown} KiB while the client sent {written} bytes without reading"
    );
    assert!(
        written < total,
        "the writer never blocked: nothing pushed back"
    );

    read_verify(&mut s.dup(), Pattern(11), total, Instant::now() + DEADLINE);
    writer.join().unwrap().expect("write");
    let grown = p.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "server memory grew by {grown} KiB");
    ping(&mut s.dup(), b"still echoing");
    ping(&mut warm, b"other connection fine");
}

/// Half-close: everything sent before our FIN comes back, then the server's EOF.
#[test]
fn tcp_half_close_echoes_everything_then_eof() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    for (i, n) in [0, 1, 100 * KIB, 8 * MIB].into_iter().enumerate() {
        let s = tcp(addr);
        let pat = Pattern(20 + i as u64);
        let w = s.dup();
        let writer = thread::spawn(move || -> io::Result<()> {
            let mut w = w;
            w.write_all(&pat.bytes(0, n as usize))?;
            w.shutdown(Shutdown::Write)
        });
        let got = read_prefix_until_eof(&mut s.dup(), pat, Instant::now() + DEADLINE);
        writer.join().unwrap().expect("write then shutdown");
        assert_eq!(got, n, "bytes echoed before EOF");
    }
}

/// Half-close while much is owed: with backpressure out of the way (high water 64 MiB) the
/// client sends 16 MiB and its FIN before reading anything, so the EOF reaches the server
/// while megabytes wait in its write buffer (more than kernel buffers hold). They must all
/// still arrive, then EOF.
#[test]
fn tcp_half_close_flushes_owed_bytes_first() {
    let p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--high-water",
        "64m",
        "--low-water",
        "1m",
    ]);
    let s = tcp(p.sockaddr("tcp"));
    let (pat, n) = (Pattern(25), 16 * MIB);
    let mut w = s.dup();
    w.write_all(&pat.bytes(0, n as usize)).unwrap();
    w.shutdown(Shutdown::Write).unwrap();
    let got = read_prefix_until_eof(&mut s.dup(), pat, Instant::now() + DEADLINE);
    assert_eq!(got, n, "bytes echoed before EOF");
}

/// Fairness: while one connection floods the server, another's round trips still finish.
#[test]
fn tcp_flood_does_not_starve_other_connections() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let flood = tcp(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + DEADLINE;

    let writer = {
        let (mut w, stop) = (flood.dup(), Arc::clone(&stop));
        thread::spawn(move || {
            let chunk = Pattern(30).bytes(0, 256 * KIB as usize);
            let mut sent = 0u64;
            // Bounded by a flag, a byte count and the deadline.
            while !stop.load(Ordering::SeqCst) && sent < 4096 * MIB && Instant::now() < deadline {
                w.write_all(&chunk).expect("flood write");
                sent += chunk.len() as u64;
            }
            w.shutdown(Shutdown::Write).expect("flood shutdown");
        })
    };
    let reader = {
        let (mut r, received) = (flood.dup(), Arc::clone(&received));
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * KIB as usize];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) => panic!("flood read: {e}"),
                }
            }
        })
    };
    wait_for("the flood to get going", || {
        received.load(Ordering::SeqCst) >= 8 * MIB
    });

    let mut s = tcp(addr);
    let flood_before = received.load(Ordering::SeqCst);
    let mut worst = Duration::ZERO;
    // At least 50 round trips, and on until the flood has moved too: 50 quick ones can
    // all fall between two of the flood reader's time slices on a busy machine.
    let mut i = 0;
    let mut flood_moved = false;
    while i < 50 || !flood_moved {
        assert!(
            Instant::now() < deadline,
            "the flood stalled during the round trips"
        );
        let t = Instant::now();
        ping(&mut s, &Pattern(31 + i).bytes(0, 64));
        worst = worst.max(t.elapsed());
        i += 1;
        flood_moved = received.load(Ordering::SeqCst) > flood_before;
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("flood writer");
    reader.join().expect("flood reader");

    assert!(
        worst < Duration::from_secs(2),
        "a round trip took {worst:?} while another connection flooded"
    );
}

/// 500 connections open at once, each echoing its own data: the listener's queue is drained
/// (a burst of connects arrives as one readiness event).
#[test]
fn tcp_many_connections_at_once() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let mut conns: Vec<TcpStream> = (0..500).map(|_| tcp(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&Pattern(100 + i as u64).bytes(0, 1000))
            .expect("write");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut back = vec![0; 1000];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        Pattern(100 + i as u64).check(0, &back);
    }
    for c in &conns {
        c.shutdown(Shutdown::Write).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        expect_eof(c, &format!("connection {i}"));
    }
}

/// A peer that resets (RST) mid-stream ends only its own connection.
#[test]
fn tcp_reset_mid_stream_closes_only_that_connection() {
    let mut p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let mut other = tcp(addr);
    ping(&mut other, b"before");
    for round in 0..20u64 {
        let mut victim = tcp(addr);
        victim
            .write_all(&Pattern(200 + round).bytes(0, 200 * KIB as usize))
            .unwrap();
        if round % 2 == 0 {
            // The server is echoing: part of the answer is here, more is in flight.
            let mut some = [0u8; 1024];
            victim.read_exact(&mut some).unwrap();
            Pattern(200 + round).check(0, &some);
        }
        // SO_LINGER 0: close sends RST instead of FIN, dropping queued data.
        SockRef::from(&victim)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(victim);
        ping(&mut other, &Pattern(300 + round).bytes(0, 100));
    }
    let mut fresh = tcp(addr);
    ping(&mut fresh, b"after the resets");
    assert!(p.child.try_wait().unwrap().is_none(), "server exited");
    assert_no_panic(&p.stderr_text());
}

/// `--max-connections 3`: the 4th is accepted and closed at once (EOF or reset, not left
/// hanging in the kernel's queue); the first 3 keep working; a freed slot is usable again.
#[test]
fn tcp_max_connections_rejects_extra_at_once() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0", "--max-connections", "3"]);
    let addr = p.sockaddr("tcp");
    // One at a time, echoing, so the server has surely accepted each before the next.
    let mut kept: Vec<TcpStream> = (0..3u8)
        .map(|i| {
            let mut s = tcp(addr);
            ping(&mut s, &[i; 10]);
            s
        })
        .collect();

    let mut extra = tcp(addr);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match extra.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("connection 4 was not closed at once: {other:?}"),
    }
    for s in &mut kept {
        ping(s, b"first three still served");
    }
    wait_for("the rejection to be logged", || {
        p.stderr_text().contains("rejecting connection")
    });

    // Closing one frees a slot; the server may need a moment to see the close.
    let mut closed = kept.pop().unwrap();
    closed.shutdown(Shutdown::Write).unwrap();
    expect_eof(&mut closed, "closing connection");
    drop(closed);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut s = tcp(addr);
        s.write_all(b"again").unwrap();
        let mut back = [0u8; 5];
        match s.read_exact(&mut back) {
            Ok(()) => {
                assert_eq!(&back, b"again");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no slot freed: {e}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `--idle-timeout 0.3`: a silent connection is closed after about 0.3 s; one that sends
/// every 100 ms for 1.5 s (five idle periods) is not.
#[test]
fn tcp_idle_timeout_closes_idle_keeps_busy() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0", "--idle-timeout", "0.3"]);
    let addr = p.sockaddr("tcp");
    let mut idle = tcp(addr);
    ping(&mut idle, b"then silence");
    let quiet_since = Instant::now();

    let mut busy = tcp(addr);
    let busy_thread = thread::spawn(move || {
        for i in 0..15u64 {
            ping(&mut busy, &Pattern(400 + i).bytes(0, 32));
            thread::sleep(Duration::from_millis(100));
        }
        busy
    });

    expect_eof(&mut idle, "idle connection");
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");

    let mut busy = busy_thread.join().expect("busy connection kept echoing");
    ping(&mut busy, b"still open");
    // Once it goes quiet it is closed too.
    expect_eof(&mut busy, "busy connection after going quiet");
}

/// Slot reuse: connections opening and closing quickly (FIN, half-close, RST, RST before any
/// data) while two others keep echoing. Every connection gets back only its own bytes.
#[test]
fn tcp_slot_reuse_no_cross_talk() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Vec<JoinHandle<u64>> = (0..2u64)
        .map(|k| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut s = tcp(addr);
                let pat = Pattern(1_000_000 + k);
                let (mut buf, mut back) = (vec![0u8; 4096], vec![0u8; 4096]);
                let (mut pos, mut rounds) = (0u64, 0u64);
                let deadline = Instant::now() + DEADLINE;
                while !stop.load(Ordering::SeqCst) && rounds < 100_000 {
                    assert!(Instant::now() < deadline, "steady connection ran too long");
                    pat.fill(pos, &mut buf);
                    s.write_all(&buf).unwrap();
                    s.read_exact(&mut back).unwrap();
                    pat.check(pos, &back);
                    pos += 4096;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let churn: Vec<JoinHandle<()>> = (0..4u64)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..150u64 {
                    let pat = Pattern(2000 + t * 1000 + i);
                    let mut s = tcp(addr);
                    let data = pat.bytes(0, 2048);
                    if i % 4 != 3 {
                        s.write_all(&data).unwrap();
                        let mut back = vec![0u8; 2048];
                        s.read_exact(&mut back).unwrap();
                        pat.check(0, &back);
                    }
                    match i % 4 {
                        0 => drop(s),
                        1 => {
                            s.shutdown(Shutdown::Write).unwrap();
                            expect_eof(&mut s, "churn half-close");
                        }
                        _ => {
                            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                            drop(s);
                        }
                    }
                }
            })
        })
        .collect();
    for c in churn {
        c.join().expect("churn thread");
    }
    stop.store(true, Ordering::SeqCst);
    for s in steady {
        let rounds = s.join().expect("steady thread");
        assert!(rounds > 0);
    }
    assert_no_panic(&p.stderr_text());
}

/// Ten thousand idle connections cost the server under 8 MiB (the target): buffers
/// are allocated lazily, only for bytes owed.
#[test]
fn tcp_idle_connections_hold_little_memory() {
    let p = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let mut first = tcp(addr);
    echo_concurrently(&first, Pattern(500), MIB);
    ping(&mut first, b"warm");
    let before = p.rss_kib();

    let n = 10_000;
    let mut conns = Vec::with_capacity(n);
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..n {
        assert!(Instant::now() < deadline, "connecting took too long");
        conns.push(TcpStream::connect(addr).expect("connect"));
    }
    // The accept queue is first in, first out: once the last one echoes, all are accepted.
    let last = conns.last_mut().unwrap();
    last.set_timeouts(IO_TIMEOUT);
    ping(last, b"last");
    let grown = p.rss_kib().saturating_sub(before);
    eprintln!("{n} idle connections: server grew {grown} KiB");
    assert!(
        grown < 8 * 1024,
        "{n} idle connections cost the server {grown} KiB"
    );
    for c in conns.iter_mut().step_by(997) {
        c.set_timeouts(IO_TIMEOUT);
        ping(c, b"sample");
    }
}

/// Out of descriptors (`ulimit -n 64`): the server logs the accept error, keeps serving the
/// connections it has, does not spin, and accepts the waiting ones once some close.
#[test]
fn tcp_accept_emfile_backs_off_and_recovers() {
    let p = serve_via_shell("ulimit -n 64 && exec \"$0\" serve --tcp 127.0.0.1:0", 1);
    let addr = p.sockaddr("tcp");
    let mut first = tcp(addr);
    ping(&mut first, b"first");

    // More than the server has descriptors for; the kernel completes the handshakes and
    // queues the rest.
    let mut conns: Vec<TcpStream> = (0..100).map(|_| tcp(addr)).collect();
    wait_for("the accept error in the log", || {
        p.stderr_text().contains("Too many open files")
    });
    ping(&mut first, b"existing connection still served");
    ping(&mut conns[0], b"accepted before the limit");

    let cpu_before = cpu_time(p.pid());
    let wall = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let used = cpu_time(p.pid()) - cpu_before;
    let elapsed = wall.elapsed();
    assert!(
        used * 4 < elapsed,
        "server used {used:?} of CPU in {elapsed:?} while out of descriptors: spinning"
    );

    // Free descriptors: the server sees the EOFs and closes its ends.
    conns.drain(..60).for_each(drop);
    let last = conns.last_mut().unwrap();
    ping(last, b"accepted after descriptors freed");
    for (i, c) in conns.iter_mut().enumerate() {
        ping(c, format!("waiting connection {i}").as_bytes());
    }
    ping(&mut first, b"first still fine");
    assert_no_panic(&p.stderr_text());
}

// ---------------------------------------------------------------------------------------
// Datagrams
// ---------------------------------------------------------------------------------------

const DGRAM_SIZES: [usize; 4] = [0, 1, 1400, 65_507];

/// UDP over IPv4 and IPv6: datagrams of 0, 1, 1400 and 65,507 bytes come back whole and
/// unchanged from the server's address.
#[test]
fn udp_echo_datagram_sizes_ipv4_ipv6() {
    let p = Proc::serve(&["--udp", "127.0.0.1:0", "--udp", "[::1]:0"]);
    assert_eq!(p.listeners.len(), 2);
    for (kind, a) in &p.listeners {
        assert_eq!(kind, "udp");
        let server: SocketAddr = a.parse().unwrap();
        let local = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let c = UdpSocket::bind(local).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 70_000];
        for (i, size) in DGRAM_SIZES.into_iter().enumerate() {
            let pat = Pattern(600 + i as u64);
            c.send_to(&pat.bytes(0, size), server).unwrap();
            let (n, from) = c
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{size}-byte datagram to {server}: {e}"));
            assert_eq!(n, size, "datagram size via {server}");
            assert_eq!(from, server);
            pat.check(0, &buf[..n]);
        }
    }
}

/// A Unix datagram client whose address Linux chose (autobind): binding an address that is
/// only the family field, `sizeof(sa_family_t)` long, gives a unique abstract name.
fn autobound_dgram() -> UnixDatagram {
    let s = Socket::new(Domain::UNIX, Type::DGRAM, None).unwrap();
    // socket2 gives the empty path exactly that length.
    s.bind(&SockAddr::unix("").unwrap()).unwrap();
    let d: UnixDatagram = s.into();
    let local = d.local_addr().unwrap();
    assert_eq!(
        local.as_abstract_name().map(<[u8]>::len),
        Some(5),
        "not autobound: {local:?}"
    );
    d
}

/// Unix datagrams on a path and an abstract name: replies reach senders bound to a path,
/// to an abstract name and autobound; an unnamed sender gets nothing (the server logs it)
/// and the server keeps working.
#[test]
fn unix_dgram_replies_to_named_abstract_and_autobound_senders() {
    let path = common::temp_sock("dgram");
    let name = abstract_name("dgram");
    let at_name = format!("@{name}");
    let p = Proc::serve(&[
        "--unix-dgram",
        path_str(&path),
        "--unix-dgram",
        &at_name,
        "--log-level",
        "debug",
    ]);
    assert_eq!(
        p.listeners,
        vec![
            ("unix-dgram".to_string(), path.display().to_string()),
            ("unix-dgram".to_string(), at_name.clone()),
        ]
    );
    let servers = [
        UnixAddr::from_pathname(&path).unwrap(),
        UnixAddr::from_abstract_name(name.as_bytes()).unwrap(),
    ];
    let client_path = common::temp_sock("dgram-client");
    let clients = [
        ("path-bound", UnixDatagram::bind(&client_path).unwrap()),
        (
            "abstract",
            UnixDatagram::bind_addr(
                &UnixAddr::from_abstract_name(format!("{name}-client").as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        ("autobound", autobound_dgram()),
    ];
    let mut buf = vec![0u8; 70_000];
    for (what, c) in &clients {
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        for server in &servers {
            for (i, size) in DGRAM_SIZES.into_iter().enumerate() {
                let pat = Pattern(700 + i as u64);
                c.send_to_addr(&pat.bytes(0, size), server).unwrap();
                let (n, from) = c
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("{what} client, {size} bytes: {e}"));
                assert_eq!(n, size, "{what} client");
                assert_eq!(from.as_pathname(), server.as_pathname());
                assert_eq!(from.as_abstract_name(), server.as_abstract_name());
                pat.check(0, &buf[..n]);
            }
        }
    }

    let anon = UnixDatagram::unbound().unwrap();
    anon.send_to_addr(b"who am i", &servers[0]).unwrap();
    wait_for("the unaddressable sender to be logged", || {
        p.stderr_text().contains("no address to reply to")
    });
    anon.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match anon.recv(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("an unnamed sender got an answer: {other:?}"),
    }
    let (_, c) = &clients[0];
    c.send_to_addr(b"still here?", &servers[0]).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here?");
    let _ = std::fs::remove_file(&client_path);
}

/// Datagram sends can block too: a Unix datagram receiver holds only a few datagrams
/// (`net.unix.max_dgram_qlen`, 10 by default), so replies to a client that does not read
/// make the server's sends fail with `EAGAIN`. They wait in the server's bounded queue and go
/// out, in order, as the client reads. With more outstanding than the queue holds
/// (1024), the server stops receiving (the client's sends block) and resumes once the
/// queue drains.
#[test]
fn unix_dgram_replies_wait_while_receiver_is_full() {
    let path = common::temp_sock("dgram-full");
    let p = Proc::serve(&["--unix-dgram", path_str(&path)]);
    let client_path = common::temp_sock("dgram-full-client");
    let c = UnixDatagram::bind(&client_path).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let datagram = |i: u64| Pattern(1100 + i).bytes(0, 1000);

    // More than the client's queue holds, fewer than the server's: nothing is dropped.
    for i in 0..300 {
        c.send_to(&datagram(i), &path).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    for i in 0..300 {
        let n = c.recv(&mut buf).unwrap();
        assert!(buf[..n] == datagram(i), "reply {i} out of order or altered");
    }

    // More than the server's queue holds: it must stop receiving, then resume.
    let total = 3000u64;
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
        let (w, path, progress) = (c.try_clone().unwrap(), path.clone(), Arc::clone(&progress));
        thread::spawn(move || {
            for i in 0..total {
                w.send_to(&datagram(i), &path)?;
                progress.store(i + 1, Ordering::SeqCst);
            }
            io::Result::Ok(())
        })
    };
    let sent = wait_until_still(&progress, Duration::from_millis(300));
    assert!(
        (1024..total).contains(&sent),
        "the server stopped receiving after {sent} datagrams (its queue holds 1024)"
    );
    for i in 0..total {
        let n = c.recv(&mut buf).unwrap();
        assert!(buf[..n] == datagram(i), "reply {i} out of order or altered");
    }
    writer.join().unwrap().expect("send");
    drop(p);
    let _ = std::fs::remove_file(&client_path);
}

// ---------------------------------------------------------------------------------------
// Unix stream sockets
// ---------------------------------------------------------------------------------------

fn unix_echo(mut s: UnixStream) {
    s.set_timeouts(IO_TIMEOUT);
    ping(&mut s, b"hello over unix");
    echo_concurrently(&s, Pattern(800), 4 * MIB);
    s.shutdown(Shutdown::Write).unwrap();
    expect_eof(&mut s, "unix half-close");
}

/// Unix stream echo on a path and on an abstract `@name`, each announced as given.
#[test]
fn unix_stream_echo_path_and_abstract() {
    let path = common::temp_sock("stream");
    let name = abstract_name("stream");
    let at_name = format!("@{name}");
    let p = Proc::serve(&["--unix", path_str(&path), "--unix", &at_name]);
    assert_eq!(
        p.listeners,
        vec![
            ("unix".to_string(), path.display().to_string()),
            ("unix".to_string(), at_name.clone()),
        ]
    );
    unix_echo(UnixStream::connect(&path).unwrap());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    unix_echo(UnixStream::connect_addr(&addr).unwrap());
}

/// A socket file left by a dead server is replaced (stream and datagram).
#[test]
fn unix_stale_socket_file_is_replaced() {
    let stream_path = common::temp_sock("stale");
    let dgram_path = common::temp_sock("stale-dgram");
    // std does not unlink on drop: exactly what a crashed server leaves behind.
    drop(UnixListener::bind(&stream_path).unwrap());
    drop(UnixDatagram::bind(&dgram_path).unwrap());
    assert!(stream_path.exists() && dgram_path.exists());

    let p = Proc::serve(&[
        "--unix",
        path_str(&stream_path),
        "--unix-dgram",
        path_str(&dgram_path),
    ]);
    let mut s = UnixStream::connect(&stream_path).unwrap();
    s.set_timeouts(IO_TIMEOUT);
    ping(&mut s, b"replaced");
    let c = UnixDatagram::bind(common::temp_sock("stale-client")).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.send_to(b"replaced too", &dgram_path).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"replaced too");
    wait_for("the stale file's removal to be logged", || {
        p.stderr_text().contains("removing stale socket file")
    });
    if let Some(path) = c.local_addr().unwrap().as_pathname() {
        let _ = std::fs::remove_file(path);
    }
}

/// A socket a live server answers on is not stolen: the start fails with one line and the
/// other server keeps its address.
#[test]
fn unix_live_socket_is_an_error() {
    let path = common::temp_sock("live");
    let live = UnixListener::bind(&path).unwrap();
    let result = run_bounded(&["serve", "--unix", path_str(&path)]);
    assert_one_line_error(&result, "live server");
    // Still ours: a client reaches the original listener.
    let _client = UnixStream::connect(&path).expect("the live socket was taken over");
    live.set_nonblocking(true).unwrap();
    live.accept()
        .expect("connection reached the original server");
    let _ = std::fs::remove_file(&path);
}

/// The socket files the server created are gone after SIGTERM.
#[test]
fn unix_socket_files_removed_on_sigterm() {
    let stream_path = common::temp_sock("rm");
    let dgram_path = common::temp_sock("rm-dgram");
    let mut p = Proc::serve(&[
        "--unix",
        path_str(&stream_path),
        "--unix-dgram",
        path_str(&dgram_path),
    ]);
    assert!(stream_path.exists() && dgram_path.exists());
    // A round trip first: `serve` prints its listening lines before it installs its signal
    // handlers, so a signal sent at once may still kill it the default way (see
    // `shutdown_signal_right_after_listening_exits_cleanly`).
    let mut s = UnixStream::connect(&stream_path).unwrap();
    s.set_timeouts(IO_TIMEOUT);
    ping(&mut s, b"up and running");
    drop(s);
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit {status}");
    assert!(
        !stream_path.exists(),
        "{} left behind",
        stream_path.display()
    );
    assert!(!dgram_path.exists(), "{} left behind", dgram_path.display());
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------

/// On a signal: connections that sent data get all of it back and then EOF; an idle one
/// gets EOF; new connections are refused; the process exits 0 within 5 s.
fn shutdown_after_echo(signal: &str) {
    let mut p = Proc::serve(&["--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    let addr = p.sockaddr("tcp");
    let mut busy = tcp(addr);
    echo_concurrently(&busy, Pattern(900), 100 * KIB);
    ping(&mut busy, b"last words");
    let mut idle = tcp(addr);
    ping(&mut idle, b"x");

    p.signal(signal);
    let signalled = Instant::now();
    expect_eof(&mut busy, "busy connection at shutdown");
    expect_eof(&mut idle, "idle connection at shutdown");
    // No new connections are served. Usually refused; a connect that races the listener's
    // close (at the end of the same turn) is queued, then reset when the listener goes.
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect during shutdown: {e}"),
        Ok(mut late) => {
            late.set_timeouts(IO_TIMEOUT);
            let _ = late.write_all(b"late");
            match late.read(&mut [0u8; 8]) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("a connection made during shutdown got {other:?}"),
            }
        }
    }
    drop((busy, idle));
    let status = p.wait_exit(Duration::from_secs(5).saturating_sub(signalled.elapsed()));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        p.stderr_text()
    );
    // The process is gone, but its last stderr lines may still be on their way to us.
    wait_for("the shutdown to be logged", || {
        p.stderr_text().contains("stopped")
    });
    assert!(p.stderr_text().contains("signal received"));
    assert_no_panic(&p.stderr_text());
}

#[test]
fn shutdown_sigterm_closes_cleanly() {
    shutdown_after_echo("TERM");
}

#[test]
fn shutdown_sigint_closes_cleanly() {
    shutdown_after_echo("INT");
}

/// SIGTERM while the server owes a client more than 16 MiB (that client sent without
/// reading until the server stopped reading it): every byte owed arrives, in order, then
/// EOF, and the process exits 0 within 5 s. Far more is owed than kernel buffers hold, so
/// dropping the write buffer at shutdown would show as a short read.
#[test]
fn shutdown_sigterm_delivers_every_owed_byte() {
    let mut p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--high-water",
        "16m",
        "--low-water",
        "4m",
    ]);
    let addr = p.sockaddr("tcp");
    let s = tcp(addr);
    let progress = Arc::new(AtomicU64::new(0));
    let pat = Pattern(950);
    let writer = spawn_writer(s.dup(), pat, 64 * MIB, Arc::clone(&progress));
    let written = wait_until_still(&progress, Duration::from_millis(500));
    assert!(
        written >= 16 * MIB,
        "server stopped reading after {written} bytes"
    );

    p.signal("TERM");
    let signalled = Instant::now();
    let got = read_prefix_until_eof(&mut s.dup(), pat, Instant::now() + DEADLINE);
    assert!(
        got >= 16 * MIB,
        "only {got} bytes came back of the more than 16 MiB owed"
    );
    // Our side is done too; this also ends the writer if it is still going. The server
    // may already be gone: closing with our writer's bytes unread, its kernel resets the
    // connection, and shutdown then says NotConnected. Both are fine here.
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join().expect("writer thread");
    let status = p.wait_exit(Duration::from_secs(5).saturating_sub(signalled.elapsed()));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        p.stderr_text()
    );
    assert_no_panic(&p.stderr_text());
}

/// Scripts wait for the `listening` lines and may signal at once: the signal must already
/// mean "graceful shutdown" then (exit 0, socket file removed), not the default "die".
#[test]
fn shutdown_signal_right_after_listening_exits_cleanly() {
    for _ in 0..20 {
        let path = common::temp_sock("early-signal");
        let mut p = Proc::serve(&["--tcp", "127.0.0.1:0", "--unix", path_str(&path)]);
        // Directly, not through `Proc::signal`: starting a `kill` process takes long enough
        // to hide the window.
        let pid = libc::pid_t::try_from(p.pid()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own live child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = p.wait_exit(Duration::from_secs(5));
        assert!(
            status.success(),
            "exit {status}: killed by the signal's default action"
        );
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

/// The defaults (TCP 8881, UDP 8883) are documented; not started here, because tests never
/// bind fixed ports.
#[test]
fn cli_help_mentions_default_listeners() {
    let (status, stdout, _) = run_bounded(&["serve", "--help"]);
    assert!(status.success());
    assert!(
        stdout.contains("127.0.0.1:8881") && stdout.contains("127.0.0.1:8883"),
        "{stdout}"
    );
}

#[test]
fn cli_rejects_unparsable_address() {
    assert_one_line_error(
        &run_bounded(&["serve", "--tcp", "nonsense"]),
        "invalid address",
    );
    assert_one_line_error(
        &run_bounded(&["serve", "--udp", "127.0.0.1:99999"]),
        "not a port number",
    );
    assert_one_line_error(&run_bounded(&["serve", "--tcp", "::1:80"]), "brackets");
}

#[test]
fn cli_rejects_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    assert_one_line_error(&run_bounded(&["serve", "--tcp", &a]), "already in use");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    assert_one_line_error(&run_bounded(&["serve", "--udp", &a]), "already in use");
}

/// Unknown flags are reported by the argument parser (clap), which also prints a usage
/// hint: the first line names the problem, the exit code is clap's 2.
#[test]
fn cli_rejects_unknown_flag() {
    let (status, stdout, stderr) = run_bounded(&["serve", "--bogus"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stdout.is_empty());
    assert_no_panic(&stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error:") && first.contains("--bogus"),
        "first line: {first:?}"
    );
}

#[test]
fn cli_rejects_privileged_port() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(1024);
    if euid == 0 || unprivileged_start <= 1 {
        eprintln!(
            "skipped: running as root (or port 1 unprivileged here), binding port 1 would succeed"
        );
        return;
    }
    assert_one_line_error(
        &run_bounded(&["serve", "--tcp", "127.0.0.1:1"]),
        "permission denied",
    );
}

#[test]
fn cli_rejects_missing_unix_directory() {
    let path = std::env::temp_dir().join(format!("echoloop-missing-{}/s.sock", std::process::id()));
    assert_one_line_error(
        &run_bounded(&["serve", "--unix", path_str(&path)]),
        "No such file or directory",
    );
}

/// A path that is not a socket is never removed to make room.
#[test]
fn cli_rejects_path_that_is_not_a_socket() {
    let path = common::temp_sock("regular-file");
    std::fs::write(&path, b"precious").unwrap();
    assert_one_line_error(
        &run_bounded(&["serve", "--unix", path_str(&path)]),
        "not a socket",
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let _ = std::fs::remove_file(&path);
}

/// Many clients' datagrams queued at once are received and answered in batches
/// (recvmmsg/sendmmsg); each reply must still reach its own sender, unchanged.
#[test]
fn udp_burst_from_many_clients_each_gets_its_own_echoes() {
    let server = Proc::serve(&["--udp", "127.0.0.1:0"]);
    let addr = server.sockaddr("udp");
    // Small enough in total (64 datagrams under 600 bytes) to fit the server's default
    // receive buffer: UDP may drop what does not fit, and this test is about batching.
    let clients: Vec<std::net::UdpSocket> = (0..16)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s
        })
        .collect();
    // Everyone sends before anyone reads, so datagrams pile up in the server's queue.
    for (c, s) in clients.iter().enumerate() {
        for m in 0..4u8 {
            let size = 1 + (c * 97 + m as usize * 131) % 600;
            let msg: Vec<u8> = (0..size).map(|i| (i as u8) ^ (c as u8) ^ m).collect();
            s.send_to(&msg, addr).unwrap();
        }
    }
    let mut buf = vec![0u8; 65536];
    for (c, s) in clients.iter().enumerate() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            got.push(buf[..n].to_vec());
        }
        got.sort();
        let mut want: Vec<Vec<u8>> = (0..4u8)
            .map(|m| {
                let size = 1 + (c * 97 + m as usize * 131) % 600;
                (0..size).map(|i| (i as u8) ^ (c as u8) ^ m).collect()
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "client {c} got someone else's datagrams");
    }
}

/// A Unix datagram larger than the server's buffer is dropped (and logged), never echoed
/// cut short; the server keeps answering normal ones.
#[test]
fn unix_dgram_oversized_is_not_echoed_truncated() {
    let path = common::temp_sock("big-dgram");
    let server = Proc::serve(&[
        "--unix-dgram",
        path.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let client_path = common::temp_sock("big-dgram-client");
    let c = UnixDatagram::bind(&client_path).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Larger than any IP datagram, still within the default Unix socket buffer.
    let big = vec![7u8; 100_000];
    c.send_to(&big, &path).unwrap();
    let mut buf = vec![0u8; 200_000];
    match c.recv_from(&mut buf) {
        Ok((n, _)) => panic!("got a {n}-byte reply to a 100000-byte datagram"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_to(b"small", &path).unwrap();
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"small");
    // The log line is read from the server's stderr by another thread: wait for it.
    let deadline = Instant::now() + DEADLINE;
    while !server.stderr_text().contains("100000-byte datagram") {
        assert!(
            Instant::now() < deadline,
            "no drop logged:\n{}",
            server.stderr_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&client_path);
}

/// One Unix datagram client that never reads must not freeze the socket for the others:
/// its replies wait (in order) while other receivers are served, and replies it leaves
/// unread longer than the close timeout are dropped so the queue drains.
#[test]
fn unix_dgram_client_that_never_reads_does_not_block_others() {
    let path = common::temp_sock("dgram-hog");
    let p = Proc::serve(&["--unix-dgram", path_str(&path), "--shutdown-timeout", "1"]);
    let hog_path = common::temp_sock("dgram-hog-client");
    let hog = UnixDatagram::bind(&hog_path).unwrap();
    hog.set_nonblocking(true).unwrap();
    // Send until the server's receive queue is full too, never reading a reply.
    let payload = vec![9u8; 1000];
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while sent < 5000 && Instant::now() < until {
        match hog.send_to(&payload, &path) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("hog send: {e}"),
        }
    }
    assert!(sent > 100, "the hog could only send {sent}");
    // Another client is still answered, within a bounded time.
    let other_path = common::temp_sock("dgram-other-client");
    let other = UnixDatagram::bind(&other_path).unwrap();
    other
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    other.send_to(b"am I served?", &path).unwrap();
    let mut buf = [0u8; 64];
    let n = other.recv(&mut buf).expect("the other client got no reply");
    assert_eq!(&buf[..n], b"am I served?");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    drop(p);
    let _ = std::fs::remove_file(&hog_path);
    let _ = std::fs::remove_file(&other_path);
}
