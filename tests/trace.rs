//! The loop narrates its decisions (issue 22): a [`Tracer`] on `Config` receives one
//! event per decision, with the words a learner can search for. Each test provokes one
//! concept on loopback and checks the lines it must produce.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use echoloop::tls_config::{ClientTlsOptions, ServerTlsOptions, client_config, server_config};
use echoloop::trace::{TraceEvent, Tracer};
use echoloop::{Config, Ctx, Echo, Endpoint, EventLoop, Handler, ListenKind};

/// A loop serving `handler` on a loopback port, with every trace line kept.
struct Traced {
    el: EventLoop,
    addr: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

fn traced(config: Config, handler: fn() -> Box<dyn Handler>) -> Traced {
    traced_on(config, ListenKind::Tcp, handler)
}

fn traced_on(mut config: Config, kind: ListenKind, handler: fn() -> Box<dyn Handler>) -> Traced {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&lines);
    config.trace = Some(Tracer::new(move |ev: &TraceEvent<'_>| {
        keep.lock().unwrap().push(ev.to_string());
    }));
    let mut el = EventLoop::new(config).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el.listen(&any, kind, handler).unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!("not an IP listener")
    };
    Traced { el, addr, lines }
}

impl Traced {
    /// Runs the loop until a line containing each of `words`, in order, was traced.
    fn until(&mut self, words: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            let mut want = words.iter().peekable();
            for l in &lines {
                if want.peek().is_some_and(|w| l.contains(*w)) {
                    want.next();
                }
            }
            if want.peek().is_none() {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "never traced {words:?} in order; got:\n{}",
                lines.join("\n")
            );
            self.el.run_once(Some(Duration::from_millis(10))).unwrap();
        }
    }
}

/// A non-blocking client with a small receive buffer, set before connecting (the window
/// is agreed in the handshake): an echo it does not read fills the kernel's buffers soon.
fn small_window_client(addr: std::net::SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let c: TcpStream = sock.into();
    c.set_nonblocking(true).unwrap();
    c
}

#[test]
fn a_64_byte_echo_is_read_short_read_and_written_whole() {
    let mut t = traced(Config::default(), || Box::new(Echo));
    let mut c = TcpStream::connect(t.addr).unwrap();
    c.write_all(&[7; 64]).unwrap();
    let lines = t.until(&[
        "accepted",
        "readable",
        "read 64 bytes",
        "short read (64 of",
        "wrote 64 of 64",
    ]);
    let mut back = [0u8; 64];
    c.read_exact(&mut back).unwrap();
    // Every line names the guide's section.
    assert!(lines.iter().all(|l| l.contains("[guide: ")), "{lines:?}");
}

#[test]
fn a_half_close_is_eof_then_our_own_shutdown() {
    let mut t = traced(Config::default(), || Box::new(Echo));
    let mut c = TcpStream::connect(t.addr).unwrap();
    c.write_all(b"bye").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    t.until(&["read 3 bytes", "eof", "shutdown(write)"]);
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"bye");
    t.until(&["close: closed cleanly"]);
}

#[test]
fn a_slow_reader_brings_partial_writes_and_backpressure_both_ways() {
    let mut config = Config::default();
    config.high_water = 64 * 1024;
    config.low_water = 16 * 1024;
    let mut t = traced(config, || Box::new(Echo));
    let mut c = small_window_client(t.addr);
    // Send 8 MiB without reading: the server's writes turn partial, it buffers, and
    // past the high-water mark it stops reading.
    let data = vec![1u8; 8 << 20];
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        match c.write(&data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        t.el.run_once(Some(Duration::from_millis(1))).unwrap();
        let lines = t.lines.lock().unwrap().clone();
        if lines
            .iter()
            .any(|l| l.contains("paused reading (high water"))
        {
            break lines;
        }
        assert!(Instant::now() < deadline && sent < data.len(), "{lines:?}");
    };
    assert!(
        lines.iter().any(|l| l.contains("partial write:")),
        "{lines:?}"
    );
    // Now read everything: the owed bytes drain below the low-water mark.
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = c.read(&mut buf);
        t.el.run_once(Some(Duration::from_millis(1))).unwrap();
        if t.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("resumed reading (low water)"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never resumed");
    }
}

/// Aborts the connection on its first bytes.
struct AbortOnData;

impl Handler for AbortOnData {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, _data: &[u8]) {
        ctx.send(b"this will never be seen");
        ctx.abort();
    }
}

#[test]
fn an_abort_is_a_reset() {
    let mut t = traced(Config::default(), || Box::new(AbortOnData));
    let mut c = TcpStream::connect(t.addr).unwrap();
    c.write_all(b"hello").unwrap();
    t.until(&["read 5 bytes", "close: ", "reset (SO_LINGER 0"]);
    let mut buf = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let got = c.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{got:?}"
    );
}

/// A TLS echo of two bytes and a clean end (both close_notify); returns the lines traced.
fn tls_scenario() -> Vec<String> {
    let pki = common::certs::TestPki::generate();
    let server = server_config(&ServerTlsOptions {
        cert_chain: &pki.server_chain,
        key: &pki.server_key,
        client_ca: None,
    })
    .unwrap();
    let client = client_config(&ClientTlsOptions {
        ca: Some(&pki.ca_pem),
        client_cert: None,
    })
    .unwrap();
    let mut t = traced_on(Config::default(), ListenKind::Tls(server), || {
        Box::new(Echo)
    });
    let addr = t.addr;
    let talk = std::thread::spawn(move || {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client, name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(b"hi").unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).unwrap();
        // The clean end of a TLS stream: our close_notify, then the server's.
        s.conn.send_close_notify();
        s.flush().unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        back
    });
    t.until(&[
        "close_notify received",
        "close_notify sent",
        "shutdown(write)",
    ]);
    // The loop keeps serving until the client has its echo and the end.
    while !talk.is_finished() {
        t.el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(&talk.join().unwrap(), b"hi");
    t.lines.lock().unwrap().clone()
}

#[test]
fn a_tls_connection_traces_its_handshake() {
    let lines = tls_scenario();
    let mut want = [
        "accepted",
        "handshake started",
        "handshake done (TLSv1_3, TLS13_",
        "read ",
        "wrote ",
        "close_notify received",
        "close_notify sent",
        "shutdown(write)",
    ]
    .iter()
    .peekable();
    for l in &lines {
        if want.peek().is_some_and(|w| l.contains(*w)) {
            want.next();
        }
    }
    assert!(
        want.peek().is_none(),
        "missing {:?} in {lines:?}",
        want.peek()
    );
}

/// `echoloop serve --trace` prints the same lines on stderr, one per decision.
#[test]
fn serve_trace_prints_every_decision() {
    let server = common::Proc::serve(&["--tcp", "127.0.0.1:0", "--trace"]);
    let mut c = TcpStream::connect(server.sockaddr("tcp")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&[5; 64]).unwrap();
    let mut back = [0u8; 64];
    c.read_exact(&mut back).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let want = [
        "accepted",
        "read 64 bytes",
        "short read (64 of",
        "wrote 64 of 64",
        "eof",
        "shutdown(write)",
        "close: closed cleanly",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = server.stderr_text();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("trace: ")).collect();
        let mut next = want.iter().peekable();
        for l in &lines {
            if next.peek().is_some_and(|w| l.contains(*w)) {
                next.next();
            }
        }
        if next.peek().is_none() {
            assert!(lines.iter().all(|l| l.ends_with(']')), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?} in:\n{text}",
            next.peek()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guide's "Watch it" transcripts (`src/guide.rs`, section 15), by scenario: the trace
/// lines each shows, without their `trace: ` prefix.
fn guide_transcripts() -> Vec<(String, Vec<String>)> {
    let guide = include_str!("../src/guide.rs");
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in guide.lines() {
        let text = line.trim_start_matches("//!").trim();
        if let Some(name) = text.strip_prefix("### Watch it: ") {
            out.push((name.to_owned(), Vec::new()));
        } else if let (Some(t), Some((_, lines))) = (text.strip_prefix("trace: "), out.last_mut()) {
            lines.push(t.to_owned());
        }
    }
    out
}

/// A line with its numbers (ids, ports, sizes) masked: what must match.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// Runs one of the guide's scenarios on loopback; returns the lines the loop traced.
fn run_scenario(name: &str) -> Vec<String> {
    let mut config = Config::default();
    config.high_water = 64 * 1024;
    config.low_water = 16 * 1024;
    match name {
        "an echo" => {
            let mut t = traced(config, || Box::new(Echo));
            let mut c = TcpStream::connect(t.addr).unwrap();
            c.write_all(&[1; 64]).unwrap();
            t.until(&["wrote 64 of 64"])
        }
        "a half-close" => {
            let mut t = traced(config, || Box::new(Echo));
            let mut c = TcpStream::connect(t.addr).unwrap();
            c.write_all(b"bye").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            t.until(&["close: "])
        }
        "a slow reader" => {
            let mut t = traced(config, || Box::new(Echo));
            let mut c = small_window_client(t.addr);
            let data = vec![1u8; 8 << 20];
            let (mut sent, mut buf) = (0, vec![0u8; 1 << 20]);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let lines = t.lines.lock().unwrap().clone();
                let paused = lines.iter().any(|l| l.contains("paused reading"));
                if lines.iter().any(|l| l.contains("resumed reading")) {
                    return lines;
                }
                if paused {
                    // Read again: the backlog drains to the low-water mark.
                    let _ = c.read(&mut buf);
                } else if let Ok(n) = c.write(&data[sent..]) {
                    sent += n;
                }
                t.el.run_once(Some(Duration::from_millis(1))).unwrap();
                assert!(Instant::now() < deadline && sent < data.len(), "{lines:?}");
            }
        }
        "a reset" => {
            config.idle_timeout = Some(Duration::from_millis(300));
            let mut t = traced(config, || Box::new(Echo));
            let mut c = small_window_client(t.addr);
            let data = vec![1u8; 8 << 20];
            let mut sent = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let lines = t.lines.lock().unwrap().clone();
                if lines.iter().any(|l| l.contains("reset (")) {
                    return lines;
                }
                // Send until the server stops reading, then go quiet: neither side moves,
                // and the idle timeout ends it while echo bytes are still owed.
                if !lines.iter().any(|l| l.contains("paused reading")) {
                    if let Ok(n) = c.write(&data[sent..]) {
                        sent += n;
                    }
                }
                t.el.run_once(Some(Duration::from_millis(5))).unwrap();
                assert!(Instant::now() < deadline && sent < data.len(), "{lines:?}");
            }
        }
        "a datagram" => {
            let mut t = traced(config, || Box::new(Echo));
            let bound =
                t.el.bind_udp(
                    "127.0.0.1:0".parse().unwrap(),
                    Box::new(echoloop::EchoDatagram),
                )
                .unwrap();
            let Endpoint::Inet(server) = bound.addr else {
                panic!("not an IP socket")
            };
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(b"hello", server).unwrap();
            // The peer is named as it is: the client's own address, both ways.
            let me = c.local_addr().unwrap();
            t.until(&[
                &format!("received 5 bytes from {me}"),
                &format!("sent 5 bytes to {me}"),
            ])
        }
        "a TLS handshake" => tls_scenario(),
        other => panic!("the guide has a scenario this test does not know: {other:?}"),
    }
}

/// The guide cannot drift from the code: each "Watch it" transcript's lines are printed,
/// in that order, by the scenario it describes.
#[test]
fn guide_transcripts_are_what_the_loop_prints() {
    let transcripts = guide_transcripts();
    assert!(transcripts.len() >= 5, "{transcripts:?}");
    for (name, want) in transcripts {
        assert!(!want.is_empty(), "{name}: no trace lines in the guide");
        let got: Vec<String> = run_scenario(&name).iter().map(|l| shape(l)).collect();
        let mut at = 0;
        for w in &want {
            let w = shape(w);
            match got[at..].iter().position(|g| *g == w) {
                Some(i) => at += i + 1,
                None => panic!(
                    "{name}: the guide shows\n  {w}\nbut the loop printed:\n{}",
                    got.join("\n")
                ),
            }
        }
    }
}

/// Half-closes on the first bytes, then closes from a timer while the peer still sends.
struct CloseLater;

impl Handler for CloseLater {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, _data: &[u8]) {
        if ctx.pending_output() == 0 {
            ctx.shutdown_write();
            ctx.set_timer(Duration::from_millis(10));
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: echoloop::TimerId) {
        ctx.close();
    }
}

#[test]
fn timers_and_a_close_after_our_fin_linger() {
    let mut t = traced(Config::default(), || Box::new(CloseLater));
    let mut c = TcpStream::connect(t.addr).unwrap();
    c.write_all(b"x").unwrap();
    t.until(&[
        "timer set (10 ms)",
        "shutdown(write)",
        "timer fired (timer)",
        "lingering: our FIN is out",
    ]);
    // The client's FIN ends the lingering close cleanly.
    c.shutdown(Shutdown::Write).unwrap();
    t.until(&["eof", "close: "]);
}

/// A stderr nobody reads cannot stall the loop: `--trace` lines that do not fit are
/// dropped and counted, and echo goes on.
#[test]
fn serve_trace_to_a_stderr_nobody_reads_keeps_echoing() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::bin())
        .args(["serve", "--tcp", "127.0.0.1:0", "--trace"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening tcp ")
        .unwrap()
        .parse()
        .unwrap();
    // Held, never read: some 6 lines per echo fill the 64 KiB pipe within a few hundred.
    let _stderr = child.stderr.take().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    for i in 0..5_000u32 {
        let msg = i.to_le_bytes();
        c.write_all(&msg).unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    // A loop blocked on stderr would never answer; the bound only keeps a broken build
    // from hanging the suite.
    assert!(started.elapsed() < Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
}
