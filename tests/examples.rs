//! Runs every example the way its first line says, against real loopback sockets.
//! `cargo test` builds the examples before running this file.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// `target/<profile>/examples/<name>`, found from this test binary's own path
/// (`target/<profile>/deps/examples-<hash>`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// Starts a server example and returns it with the address from its `listening` line.
fn start(name: &str, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(common::DEADLINE).expect("listening line");
    let addr = line
        .split_whitespace()
        .nth(2)
        .expect("address in listening line");
    (child, addr.to_string())
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "example did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs an example that must succeed; returns its standard output.
fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .output()
        .expect("run example")
}

#[test]
fn example_echo_server_and_client() {
    let (server, addr) = start("echo_server", &["127.0.0.1:0"]);
    let stdout = run_ok("echo_client", &[&addr, "hello", "wörld"]);
    assert!(
        stdout.contains("RCVD hello") && stdout.contains("RCVD wörld"),
        "{stdout}"
    );
    // A raw client too: half-close, read to EOF.
    let mut s = TcpStream::connect(addr.as_str()).unwrap();
    s.write_all(b"raw").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"raw");
    assert!(stop(server).success());
}

#[test]
fn example_echo_client_reports_refused() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run("echo_client", &[&port.to_string(), "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

#[test]
fn example_udp_echo_server_client_and_retry() {
    let (server, addr) = start("udp_echo", &["server", "127.0.0.1:0"]);
    let stdout = run_ok("udp_echo", &["client", &addr, "a datagram"]);
    assert!(stdout.contains("RCVD a datagram"), "{stdout}");
    assert!(stop(server).success());

    // Nobody answers: the client retries, then gives up with a failure.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = run(
        "udp_echo",
        &["client", &silent.local_addr().unwrap().to_string(), "lost"],
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(try 4)"), "{stdout}");
}

#[test]
fn example_tls_echo_verifies_and_echoes() {
    let stdout = run_ok("tls_echo", &[]);
    assert!(
        stdout.contains("verified") && stdout.contains("RCVD hello over TLS"),
        "{stdout}"
    );
}

#[test]
fn example_line_upper_handles_split_and_joined_lines() {
    let (server, addr) = start("line_upper", &["127.0.0.1:0"]);
    let mut s = TcpStream::connect(addr.as_str()).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    // A line split across two writes, then two lines in one write, then a last line with
    // no newline before EOF.
    s.write_all(b"hel").unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let the first piece arrive alone
    s.write_all(b"lo\nab\ncd\nlast").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "HELLO\nAB\nCD\nLAST");
    assert!(stop(server).success());
}

#[test]
fn example_embed_stops_from_another_thread() {
    let stdout = run_ok("embed", &[]);
    assert!(
        stdout.contains("RCVD message 2") && stdout.contains("3 accepted"),
        "{stdout}"
    );
}

// ----- proxy, chat, host_poll, embed's channel -----

/// Starts a server example with its output collected as it runs (stderr can be read
/// while it runs, and a chatty example never blocks on a full pipe); waits for its
/// `listening` line.
fn start_collected(name: &str, args: &[&str]) -> common::Proc {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    let mut p = common::Proc::spawn_command(cmd);
    p.wait_listening(1);
    p
}

/// Waits (bounded) until the example's stderr contains `needle`; returns the text.
fn wait_stderr(p: &common::Proc, needle: &str) -> String {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let text = p.stderr_text();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not on stderr in time; stderr:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM and expects a clean exit.
fn term_ok(p: &mut common::Proc) {
    p.signal("TERM");
    let st = p.wait_exit(common::DEADLINE);
    assert!(st.success(), "exit {st}; stderr:\n{}", p.stderr_text());
}

/// `n` bytes of a pattern that a shifted or dropped chunk cannot match by accident.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}

/// A listener on a free loopback port with small kernel buffers (inherited by the
/// connections it accepts), so that a peer that stops reading is felt quickly.
fn small_buffer_listener() -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 * 1024).unwrap();
    s.set_send_buffer_size(64 * 1024).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(16).unwrap();
    s.into()
}

/// A client connection with small kernel buffers (set before connecting, so the window
/// it advertises is small from the start).
fn small_buffer_client(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 * 1024).unwrap();
    s.set_send_buffer_size(64 * 1024).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// Writes until the peer stops taking bytes (a write waits `STALL` for room, then
/// returns what fitted, if anything) or `cap` bytes are written; returns how many were
/// written.
fn write_until_stalled(s: &mut TcpStream, cap: usize) -> usize {
    const STALL: Duration = Duration::from_millis(300);
    s.set_write_timeout(Some(STALL)).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let deadline = Instant::now() + common::DEADLINE;
    let mut total = 0;
    while total < cap && Instant::now() < deadline {
        let started = Instant::now();
        match s.write(&chunk) {
            // A trickle (a window update now and then) is not flow.
            Ok(n) if started.elapsed() >= STALL => {
                total += n;
                break;
            }
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write after {total} bytes: {e}"),
        }
    }
    total
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Err(e)),
        }
    }
}

#[test]
fn example_proxy_relays_a_large_payload_byte_exact_both_ways() {
    // A blocking echo upstream, which does not read while it is blocked writing.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap().to_string();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut echoed = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
            echoed += n;
        }
        s.shutdown(Shutdown::Write).unwrap();
        echoed
    });
    let mut proxy = start_collected("proxy", &["127.0.0.1:0", &up_addr]);
    let mut client = TcpStream::connect(proxy.sockaddr("tcp")).unwrap();
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let payload = pattern(4 << 20);
    let mut writer = client.try_clone().unwrap();
    let sent = payload.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let (back, end) = read_all(&mut client);
    end.expect("clean EOF after the echo");
    w.join().unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "relayed bytes differ");
    assert_eq!(echo.join().unwrap(), payload.len());
    term_ok(&mut proxy);
    // Read after the exit, by a thread: wait for the last line to come through.
    wait_stderr(&proxy, "proxy stopped: 1 clients");
}

#[test]
fn example_proxy_carries_half_close_both_ways() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap().to_string();
    let request = pattern(300 * 1024);
    let reply = b"an answer sent after the client's EOF".repeat(1000);
    let want_reply = reply.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        // EOF must come, and only after every byte of the request.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        // Our direction is still open: answer, then finish it.
        s.write_all(&reply).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let mut proxy = start_collected("proxy", &["127.0.0.1:0", &up_addr]);
    let mut client = TcpStream::connect(proxy.sockaddr("tcp")).unwrap();
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    client.write_all(&request).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (back, end) = read_all(&mut client);
    end.expect("clean EOF after the reply");
    assert!(back == want_reply, "reply differs ({} bytes)", back.len());
    assert!(server.join().unwrap() == request, "request differs");
    // Both ended cleanly, with nothing aborted.
    wait_stderr(&proxy, "client done");
    let stderr = wait_stderr(&proxy, "upstream done");
    assert!(!stderr.contains("resetting"), "{stderr}");
    term_ok(&mut proxy);
}

#[test]
fn example_proxy_directions_do_not_stall_each_other() {
    // An upstream that sends its whole answer before it reads the request, to a client
    // that sends its whole request while reading: only independent directions finish.
    // A relay that stopped reading the upstream because the *request* is backed up
    // (owed to the upstream) would leave the upstream blocked writing, never reading.
    const REQUEST: usize = 16 << 20;
    const ANSWER: usize = 8 << 20;
    let upstream = small_buffer_listener();
    let up_addr = upstream.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        s.set_write_timeout(Some(common::DEADLINE)).unwrap();
        s.write_all(&pattern(ANSWER)).unwrap();
        let (got, end) = read_all(&mut s);
        end.unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got.len()
    });
    let mut proxy = start_collected("proxy", &["127.0.0.1:0", &up_addr]);
    let mut client = small_buffer_client(proxy.sockaddr("tcp"));
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    client.set_write_timeout(Some(common::DEADLINE)).unwrap();
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        writer.write_all(&vec![b'r'; REQUEST]).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let (answer, end) = read_all(&mut client);
    end.expect("clean EOF after the answer");
    assert!(
        answer == pattern(ANSWER),
        "answer differs ({} bytes)",
        answer.len()
    );
    w.join().unwrap();
    assert_eq!(server.join().unwrap(), REQUEST);
    term_ok(&mut proxy);
}

#[test]
fn example_proxy_refused_upstream_ends_the_client_promptly() {
    // A port that was free a moment ago: nothing listens there.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut proxy = start_collected("proxy", &["127.0.0.1:0", &free]);
    let mut client = TcpStream::connect(proxy.sockaddr("tcp")).unwrap();
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let started = Instant::now();
    // May already fail: the proxy may have reset us.
    let _ = client.write_all(b"hello?");
    let (got, end) = read_all(&mut client);
    assert!(got.is_empty(), "{got:?}");
    match end {
        Ok(()) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_stderr(&proxy, "connect failed");
    term_ok(&mut proxy);
    wait_stderr(&proxy, "proxy stopped: 1 clients, 1 upstream failures");
}

#[test]
fn example_proxy_backpressure_keeps_memory_bounded() {
    // Two pairs through one proxy: an upstream that never reads while its client sends
    // all it can, and an upstream that sends all it can to a client that never reads.
    let upstream = small_buffer_listener();
    let up_addr = upstream.local_addr().unwrap().to_string();
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ups = std::thread::spawn(move || {
        let (silent, _) = upstream.accept().unwrap();
        accepted_tx.send(0).unwrap();
        let (mut flooder, _) = upstream.accept().unwrap();
        let flooded = write_until_stalled(&mut flooder, 256 << 20);
        accepted_tx.send(flooded).unwrap();
        // Hold both until the test has measured.
        let _ = done_rx.recv_timeout(common::DEADLINE);
        drop((silent, flooder));
    });
    let proxy = start_collected("proxy", &["127.0.0.1:0", &up_addr]);
    let addr = proxy.sockaddr("tcp");
    let before = proxy.rss_kib();

    let mut sender = small_buffer_client(addr);
    // The proxy connects upstream for this client first: the silent one.
    accepted_rx.recv_timeout(common::DEADLINE).unwrap();
    let _not_reading = small_buffer_client(addr);
    let sent = write_until_stalled(&mut sender, 256 << 20);
    let flooded = accepted_rx.recv_timeout(common::DEADLINE).unwrap();

    let after = proxy.rss_kib();
    eprintln!("sent {sent} and flooded {flooded} bytes; proxy RSS {before} -> {after} KiB");
    // Stalled: the kernel buffers on the way are full and the proxy stopped reading,
    // instead of buffering everything.
    assert!(sent < 256 << 20 && flooded < 256 << 20, "{sent} {flooded}");
    assert!(
        sent > 256 * 1024 && flooded > 256 * 1024,
        "{sent} {flooded}"
    );
    assert!(
        after < before + 16 * 1024,
        "proxy RSS grew from {before} to {after} KiB"
    );
    let _ = done_tx.send(());
    ups.join().unwrap();
}

/// A chat member: its socket and a line reader over it.
struct Member {
    s: TcpStream,
    lines: BufReader<TcpStream>,
}

impl Member {
    fn join(addr: SocketAddr) -> Member {
        Member::over(TcpStream::connect(addr).unwrap())
    }

    /// A member whose kernel buffers hold a lot: on a busy machine its reader may fall
    /// behind for a moment without the server counting it as a member that does not read.
    fn join_roomy(addr: SocketAddr) -> Member {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4 << 20).unwrap();
        s.connect(&addr.into()).unwrap();
        Member::over(s.into())
    }

    fn over(s: TcpStream) -> Member {
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        // Small pieces go out as written (the partial-line test depends on it).
        s.set_nodelay(true).unwrap();
        let lines = BufReader::new(s.try_clone().unwrap());
        Member { s, lines }
    }

    fn say(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).unwrap();
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line
    }
}

#[test]
fn example_chat_relays_complete_lines_to_the_others_only() {
    let mut chat = start_collected("chat", &["127.0.0.1:0"]);
    let addr = chat.sockaddr("tcp");
    // Each member's first line, heard by the others, proves it has joined (the room
    // lists a connection before its first data).
    let mut a = Member::join(addr);
    let mut b = Member::join(addr);
    b.say("b here\n");
    assert_eq!(a.next_line(), "b here\n");
    let mut c = Member::join(addr);
    c.say("c here\n");
    assert_eq!(a.next_line(), "c here\n");
    assert_eq!(b.next_line(), "c here\n");

    a.say("hello from a\n");
    assert_eq!(b.next_line(), "hello from a\n");
    assert_eq!(c.next_line(), "hello from a\n");
    // Not to a itself: the next line a hears is b's.
    b.say("ping from b\n");
    assert_eq!(a.next_line(), "ping from b\n");
    assert_eq!(c.next_line(), "ping from b\n");

    // A partial line waits for its newline.
    a.say("par");
    std::thread::sleep(Duration::from_millis(50)); // let the first piece arrive alone
    c.say("marker\n");
    assert_eq!(b.next_line(), "marker\n");
    a.say("tial\ntwo\nlines\n");
    for m in [&mut b, &mut c] {
        assert_eq!(m.next_line(), "partial\n");
        assert_eq!(m.next_line(), "two\n");
        assert_eq!(m.next_line(), "lines\n");
    }
    assert_eq!(a.next_line(), "marker\n");
    // Gone before the stop, which otherwise waits (bounded) for them to finish.
    drop((a, b, c));
    term_ok(&mut chat);
}

#[test]
fn example_chat_disconnects_a_member_that_does_not_read() {
    let mut chat = start_collected("chat", &["127.0.0.1:0"]);
    let addr = chat.sockaddr("tcp");
    let mut a = Member::join(addr);
    let mut b = Member::join_roomy(addr);
    // Small kernel buffers, so the chat it leaves unread piles up in the server soon.
    let mut idle = small_buffer_client(addr);
    idle.set_read_timeout(Some(common::DEADLINE)).unwrap();
    idle.write_all(b"idle here\n").unwrap();
    assert_eq!(a.next_line(), "idle here\n");
    assert_eq!(b.next_line(), "idle here\n");

    // b reads everything until "end".
    let mut lines = b.lines;
    let reader = std::thread::spawn(move || {
        let mut total = 0;
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).unwrap();
            assert!(n > 0, "EOF before the end line");
            total += n;
            if line == "end\n" {
                return total;
            }
        }
    });

    // a talks until the server gives up on the idle member, then a little more.
    let mut line = vec![b'x'; 1023];
    line.push(b'\n');
    let batch = line.repeat(64);
    let deadline = Instant::now() + common::DEADLINE;
    let mut sent = 0;
    let mut after_cut = None;
    while after_cut.is_none_or(|n| n < 8) {
        assert!(sent < 256 << 20, "the idle member was never disconnected");
        assert!(
            Instant::now() < deadline,
            "the idle member was not disconnected in time"
        );
        a.s.write_all(&batch).unwrap();
        sent += batch.len();
        if let Some(n) = after_cut.as_mut() {
            *n += 1;
        } else if chat.stderr_text().contains("1 MiB of chat unread") {
            after_cut = Some(0);
        }
    }
    a.say("end\n");
    sent += 4;
    // The others heard everything, the idle one did not stall them.
    assert_eq!(reader.join().unwrap(), sent);
    let stderr = chat.stderr_text();
    assert!(
        stderr.contains("disconnecting #") && stderr.contains(": 1 MiB of chat unread"),
        "{stderr}"
    );
    // The idle member finds its connection reset (after what its buffers held).
    let (got, end) = read_all(&mut idle);
    assert!(got.len() < sent, "{} of {sent}", got.len());
    if let Err(e) = end {
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
    drop((a, b.s));
    term_ok(&mut chat);
}

/// The highest resident memory of a process so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn example_chat_bounds_the_rooms_backlog_with_a_thousand_idle_members() {
    let mut chat = start_collected("chat", &["127.0.0.1:0"]);
    let addr = chat.sockaddr("tcp");
    let reader = Member::join(addr);
    let mut speaker = Member::join(addr);
    // 1,000 members that never read, with small kernel buffers: what they leave unread
    // piles up in the server at once.
    let idle: Vec<TcpStream> = (0..1000).map(|_| small_buffer_client(addr)).collect();
    wait_stderr(&chat, "(1002 online)");
    let before = chat.rss_kib();

    // 2 MiB of lines; the reader must get every one, in order.
    let mut line = vec![b'y'; 1023];
    line.push(b'\n');
    let said: Vec<u8> = (0..2048u32)
        .flat_map(|i| {
            let mut l = line.clone();
            l[..4].copy_from_slice(&i.to_le_bytes().map(|b| b'a' + b % 26));
            l
        })
        .collect();
    let want = said.clone();
    let mut lines = reader.lines;
    let heard = std::thread::spawn(move || {
        let mut got = vec![0u8; want.len()];
        match lines.read_exact(&mut got) {
            Ok(()) => got == want,
            Err(e) => panic!("the reader: {e}"),
        }
    });
    speaker.s.write_all(&said).unwrap();
    let heard = heard.join();
    let log = || {
        let text = chat.stderr_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" joined (")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    assert!(
        heard.is_ok_and(|same| same),
        "the reader did not hear every line, in order; the server said:\n{}",
        log()
    );

    let peak = peak_rss_kib(chat.pid());
    let stderr = chat.stderr_text();
    let cut = stderr
        .matches("furthest behind, 32 MiB of chat unread")
        .count();
    assert!(
        cut > 0,
        "nobody was cut off:\n{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    let grew = peak.saturating_sub(before);
    // The documented bound: 32 MiB for the room, 64 KiB per member for the turn in which
    // it falls behind, 1 MiB for the speaker; 16 MiB of slack for the allocator. Without
    // the room's bound: up to 1,000 x 1 MiB.
    assert!(
        grew < (32 + 1000 / 16 + 1 + 16) * 1024,
        "the chat server grew by {grew} KiB with 1,000 idle members ({cut} cut off)"
    );
    drop((idle, speaker, reader.s));
    term_ok(&mut chat);
}

#[test]
fn example_host_poll_echoes_ticks_and_stops_on_sigterm() {
    let mut host = start_collected("host_poll", &["127.0.0.1:0"]);
    let mut s = TcpStream::connect(host.sockaddr("tcp")).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let payload = pattern(1 << 20);
    let mut writer = s.try_clone().unwrap();
    let sent = payload.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let (back, end) = read_all(&mut s);
    end.unwrap();
    w.join().unwrap();
    assert!(back == payload, "echo differs ({} bytes)", back.len());
    wait_stderr(&host, "host tick");
    term_ok(&mut host);
    wait_stderr(&host, "loop stopped after");
}

#[test]
fn example_embed_broadcasts_through_its_channel_and_sees_closed_after_stop() {
    let stdout = run_ok("embed", &[]);
    assert!(stdout.contains("the loop has 3 clients"), "{stdout}");
    for i in 0..3 {
        assert!(
            stdout.contains(&format!("client {i} RCVD 100 broadcasts in order")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("after stop: Closed (the loop has stopped)"),
        "{stdout}"
    );
}

#[test]
fn example_servers_reject_bad_arguments_with_one_line() {
    for (name, args) in [
        ("proxy", &["127.0.0.1:0"][..]),
        ("proxy", &["127.0.0.1:0", "nohost"][..]),
        ("chat", &[][..]),
        ("chat", &["127.0.0.1:99999"][..]),
        ("host_poll", &["a", "b"][..]),
    ] {
        let out = run(name, args);
        assert!(!out.status.success(), "{name} {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
        assert!(out.stdout.is_empty(), "{name} {args:?}");
    }
}

#[test]
fn example_chat_cuts_off_an_endless_line() {
    let mut chat = start_collected("chat", &["127.0.0.1:0"]);
    let mut s = TcpStream::connect(chat.sockaddr("tcp")).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    // More than the 64 KiB an unfinished line may take, and no newline.
    s.write_all(&vec![b'y'; 100 * 1024]).unwrap();
    let (got, end) = read_all(&mut s);
    end.expect("a clean close after the error line");
    assert_eq!(got, b"ERROR line too long\n");
    wait_stderr(&chat, "line longer than");
    drop(s);
    term_ok(&mut chat);
}

// ----- tail: a command's output to every client -----

/// A fresh directory under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "echoloop-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A FIFO in this directory.
    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let st = Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("run mkfifo");
        assert!(st.success(), "mkfifo {}", path.display());
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lets a command blocked in `read x < FIFO` go on: opening the FIFO for writing waits
/// until the command opens it for reading (on a thread, so a command that never does
/// fails the test instead of hanging it).
fn release(fifo: &std::path::Path) {
    let (tx, rx) = mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let wrote = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"go\n"));
        let _ = tx.send(wrote);
    });
    rx.recv_timeout(common::DEADLINE)
        .expect("the command did not open its FIFO in time")
        .expect("write to the FIFO");
}

/// Starts `tail` running `sh -c SCRIPT FIFO...` (the script names the FIFOs `$0`, `$1`...).
fn start_tail(script: &str, fifos: &[&std::path::Path]) -> common::Proc {
    let mut args = vec!["127.0.0.1:0", "--", "sh", "-c", script];
    args.extend(
        fifos
            .iter()
            .map(|f| f.to_str().expect("temp paths are UTF-8")),
    );
    start_collected("tail", &args)
}

/// Resident memory of a process in KiB, or `None` once it has exited (a zombie has none).
fn rss_kib_if_running(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn example_tail_sends_every_line_then_the_exit_status_then_eof() {
    let dir = TempDir::new("tail-lines");
    let (first, second) = (dir.fifo("first"), dir.fifo("second"));
    // The command waits for the test before any output, and again before the rest, so a
    // client can join in between: two FIFOs, because reopening one could find the first
    // release's writer still there, and not wait. Separate printfs are separate writes:
    // lines may arrive split; the last one has no newline.
    let script = r#"read x < "$0"; printf 'one\n'; read x < "$1"; printf 'two\nthr'; printf 'ee\n'; printf 'last without newline'; exit 3"#;
    let mut tail = start_tail(script, &[&first, &second]);
    let addr = tail.sockaddr("tcp");
    let mut a = Member::join(addr);
    let mut b = Member::join(addr);
    wait_stderr(&tail, "(2 watching)");
    release(&first);
    assert_eq!(a.next_line(), "one\n");
    assert_eq!(b.next_line(), "one\n");
    // A late client gets only what comes after it joined.
    let mut c = Member::join(addr);
    wait_stderr(&tail, "(3 watching)");
    release(&second);
    let rest = "two\nthree\nlast without newline\nexited with status 3\n";
    for (name, m) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        let mut got = String::new();
        m.lines
            .read_to_string(&mut got)
            .unwrap_or_else(|e| panic!("client {name}: {e} after {got:?}"));
        assert_eq!(got, rest, "client {name}");
    }
    drop((a, b, c));
    // It stops by itself once the clients have everything.
    let st = tail.wait_exit(common::DEADLINE);
    let stderr = tail.stderr_text();
    assert!(st.success(), "exit {st}; stderr:\n{stderr}");
    assert!(
        stderr.contains("the command exited with status 3"),
        "{stderr}"
    );
}

#[test]
fn example_tail_cuts_off_a_client_that_does_not_read() {
    const LINES: u32 = 2_000_000; // about 15 MB of output
    const RSS_LIMIT_KIB: u64 = 64 * 1024;
    let dir = TempDir::new("tail-slow");
    let fifo = dir.fifo("go");
    let script = format!(r#"read x < "$0"; seq 1 {LINES}"#);
    let mut tail = start_tail(&script, &[&fifo]);
    let addr = tail.sockaddr("tcp");
    // The reading client sets the pace (tail stops reading the command's output while
    // every client is behind), so however slowly it reads on a loaded machine it is never
    // cut off; the idle one falls behind it. Small kernel buffers, so what the idle one
    // leaves unread piles up in the server soon.
    let mut idle = small_buffer_client(addr);
    idle.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let idle_addr = idle.local_addr().unwrap();
    let mut reader = TcpStream::connect(addr).unwrap();
    reader.set_read_timeout(Some(common::DEADLINE)).unwrap();
    wait_stderr(&tail, "(2 watching)");
    release(&fifo);

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(read_all(&mut reader));
    });
    // Watch the server's memory while the output flows.
    let pid = tail.pid();
    let deadline = Instant::now() + common::DEADLINE;
    let mut max_rss = 0;
    let (got, end) = loop {
        if let Some(kib) = rss_kib_if_running(pid) {
            max_rss = max_rss.max(kib);
        }
        match done_rx.recv_timeout(Duration::from_millis(5)) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "the reader did not finish in time"
                )
            }
            Err(e) => panic!("reader thread: {e}"),
        }
    };
    end.expect("a clean EOF for the reading client");
    let mut want = String::new();
    for i in 1..=LINES {
        want.push_str(&i.to_string());
        want.push('\n');
    }
    want.push_str("exited with status 0\n");
    assert!(
        got == want.as_bytes(),
        "the reading client got {} bytes of {}, ending {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[got.len().saturating_sub(64)..])
    );

    // The idle client was cut off, and the log names it.
    wait_stderr(&tail, &format!("({idle_addr}): more than 1 MiB behind"));
    let (cut, end) = read_all(&mut idle);
    end.expect("a clean EOF after the cut-off line");
    assert!(cut.len() < want.len(), "{} of {}", cut.len(), want.len());
    assert!(
        cut.ends_with(b"\ntail: cut off: too far behind\n"),
        "ends {:?}",
        String::from_utf8_lossy(&cut[cut.len().saturating_sub(64)..])
    );
    drop(idle);
    let st = tail.wait_exit(common::DEADLINE);
    assert!(st.success(), "exit {st}; stderr:\n{}", tail.stderr_text());
    assert!(max_rss < RSS_LIMIT_KIB, "tail's RSS reached {max_rss} KiB");
    eprintln!("tail's RSS peaked at {max_rss} KiB");
}

#[test]
fn example_tail_rejects_bad_arguments_with_one_line() {
    for (args, code) in [
        (&[][..], 2),
        (&["127.0.0.1:0"][..], 2),
        (&["127.0.0.1:0", "--"][..], 2),
        (&["127.0.0.1:0", "true"][..], 2),
        (&["127.0.0.1:0", "echo", "hi"][..], 2),
        (&["127.0.0.1:99999", "--", "true"][..], 2),
        (&["nohost", "--", "true"][..], 2),
        // Arguments fine, but the command cannot be started.
        (&["127.0.0.1:0", "--", "/nonexistent/command"][..], 1),
    ] {
        let mut cmd = Command::new(example("tail"));
        cmd.args(args);
        let mut p = common::Proc::spawn_command(cmd);
        let st = p.wait_exit(common::DEADLINE);
        assert_eq!(st.code(), Some(code), "{args:?}: {}", p.stderr_text());
        let stderr = p.stderr_text();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("tail: "), "{args:?}: {stderr}");
        // Nothing on stdout (no listening line): its reader ends without a line.
        assert!(
            matches!(
                p.stdout.recv_timeout(common::DEADLINE),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "{args:?}"
        );
    }
}

#[test]
fn example_tail_on_sigterm_kills_the_command_and_ends_its_clients() {
    let dir = TempDir::new("tail-term");
    let fifo = dir.fifo("never");
    // Never released: without the kill it would wait for ever.
    let mut tail = start_tail(r#"read x < "$0"; echo never"#, &[&fifo]);
    let mut client = TcpStream::connect(tail.sockaddr("tcp")).unwrap();
    client.set_read_timeout(Some(common::DEADLINE)).unwrap();
    wait_stderr(&tail, "(1 watching)");
    term_ok(&mut tail);
    let (got, end) = read_all(&mut client);
    end.expect("a clean EOF");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let stderr = tail.stderr_text();
    assert!(
        stderr.contains("killing the command") && stderr.contains("killed by signal 9"),
        "{stderr}"
    );
}

/// The bare mio loop (issue 22): echoes a message larger than the kernel's buffers
/// exactly, however its writes are cut, to a client that reads as it sends.
#[test]
fn example_mio_echo_echoes_what_it_reads_through_partial_writes() {
    let (child, addr) = start("mio_echo", &["127.0.0.1:0"]);
    let mut c = std::net::TcpStream::connect(&addr).expect("connect");
    c.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut reader = c.try_clone().unwrap();
    let expect = data.clone();
    let got = std::thread::spawn(move || {
        let mut back = vec![0u8; expect.len()];
        reader.read_exact(&mut back).expect("the whole echo");
        back == expect
    });
    c.write_all(&data).unwrap();
    assert!(got.join().unwrap(), "the echo differs from what was sent");
    drop(c);
    let _ = stop(child);
}

// ----- issue 22: --trace on every example, and the failure cases -----

/// `--trace` (anywhere in the arguments) prints the loop's decisions as `trace: ` lines
/// on stderr: the read of the message and the write of its echo among them.
#[test]
fn example_echo_server_traces_its_reads_and_writes() {
    let mut server = start_collected("echo_server", &["--trace", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(server.sockaddr("tcp")).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    s.write_all(b"traced").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"traced");
    // The echo is back, so its write has been traced; the line may still be in the pipe.
    wait_stderr(&server, "wrote 6 of 6");
    term_ok(&mut server);
    let stderr = server.stderr_text();
    let traced = |what: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with("trace: ") && l.contains(what))
    };
    assert!(traced(" read 6 bytes"), "{stderr}");
    assert!(traced(" wrote 6 of 6"), "{stderr}");
    assert!(traced(" accepted on "), "{stderr}");
}

/// The client asks for a name the server's certificate does not carry: the handshake
/// fails on the certificate check, and the example says so and exits non-zero.
#[test]
fn example_tls_echo_fails_on_a_certificate_name_mismatch() {
    let out = run("tls_echo", &["--wrong-name"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("certificate verification failed")
            && stderr.contains("not valid for name \"wrong.example\""),
        "{stderr}"
    );
    assert!(
        !stdout.contains("verified") && !stdout.contains("RCVD"),
        "{stdout}"
    );
}

/// A closed port: the connected client hears ECONNREFUSED after its first datagram; the
/// unconnected one is told nothing, retries, and gives up (4 tries of 500 ms).
#[test]
fn example_udp_echo_closed_port_refused_when_connected_silent_otherwise() {
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = gone.local_addr().unwrap().to_string();
    drop(gone);

    let out = run("udp_echo", &["client", &closed, "anyone?", "--connected"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(try 1)") && !stdout.contains("(try 2)"),
        "{stdout}"
    );
    assert!(stderr.contains("refused: nothing listens on"), "{stderr}");

    let started = Instant::now();
    let out = run("udp_echo", &["client", &closed, "anyone?"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(try 4)"), "{stdout}");
    assert!(stderr.contains("no answer after 4 tries"), "{stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");
    assert!(
        started.elapsed() < common::DEADLINE,
        "took {:?}",
        started.elapsed()
    );
}
