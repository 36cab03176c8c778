//! `echoloop client` end to end: against `echoloop serve` and against small servers written
//! here with the standard library (one that replies in 1-byte pieces, one that never
//! answers, one that answers late, one that sends stale replies first...). Loopback only;
//! every wait is bounded.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::certs::TestPki;
use common::{DEADLINE, Proc};

/// Runs `echoloop client <args>` and returns (status, stdout, stderr).
fn client(args: &[&str], stdin: Option<&[u8]>) -> (ExitStatus, String, String) {
    let mut full = vec!["client"];
    full.extend_from_slice(args);
    common::run(&full, stdin)
}

/// Runs `echoloop client <args>` with `stdin`, keeping standard output as bytes: lines
/// that are not UTF-8 must come back exactly as they were sent.
fn client_bytes(args: &[&OsStr], stdin: &[u8]) -> (ExitStatus, Vec<u8>, String) {
    let mut child = Command::new(common::bin())
        .arg("client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echoloop");
    // Dropped at the end of the statement: the client sees EOF after the input.
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, out.stdout, err)
}

/// Runs `echoloop client <transport> <addr> <opts..>` with `-m <msg>` for each of `msgs`.
fn send(transport: &str, addr: &str, opts: &[&str], msgs: &[&str]) -> (ExitStatus, String, String) {
    let mut args = vec![transport, addr];
    args.extend_from_slice(opts);
    for m in msgs {
        args.extend(["-m", m]);
    }
    client(&args, None)
}

/// The lines a successful exchange of `msgs` with `peer` prints.
fn expected_lines(msgs: &[&str], peer: &str) -> String {
    msgs.iter()
        .map(|m| {
            format!(
                "SENT {m} ({n} bytes)\nRCVD {m} ({n} bytes) from {peer}\n",
                n = m.len()
            )
        })
        .collect()
}

/// Asserts a clean run that echoed exactly `msgs`.
fn assert_echoed(result: &(ExitStatus, String, String), msgs: &[&str], peer: &str) {
    let (status, out, err) = result;
    assert!(
        status.success(),
        "exit {status}; stderr:\n{err}\nstdout:\n{out}"
    );
    assert_eq!(out, &expected_lines(msgs, peer), "stderr:\n{err}");
}

/// Asserts a failed run whose last stderr line is one `echoloop: error:` line containing
/// `needle`; returns that line.
fn assert_failed(result: &(ExitStatus, String, String), needle: &str) -> String {
    let (status, out, err) = result;
    assert!(!status.success(), "expected failure; stdout:\n{out}");
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("echoloop: error: ") && last.contains(needle),
        "want an error line with {needle:?}; stderr:\n{err}"
    );
    last
}

/// A port on which nothing listens: bound, then released.
fn closed_tcp_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A one-connection TCP server; `serve` gets the accepted stream. Accept waits at most
/// DEADLINE (the listener polls non-blocking so the thread always ends).
fn tcp_server(serve: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(DEADLINE)).unwrap();
                    return serve(s);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no client connected: {e}"),
            }
        }
    });
    (addr, h)
}

/// A UDP server on loopback; `serve` gets the socket (reads time out after DEADLINE).
fn udp_server(serve: impl FnOnce(UdpSocket) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    (addr, std::thread::spawn(move || serve(s)))
}

// ---- TCP ----

#[test]
fn tcp_echo_with_messages() {
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = srv.addr("tcp");
    let msgs = ["hello", "a second, longer message"];
    let r = client(&["tcp", &addr, "--message", msgs[0], "-m", msgs[1]], None);
    assert_echoed(&r, &msgs, &addr);
}

#[test]
fn tcp_echo_stdin_non_ascii_lines() {
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = srv.addr("tcp");
    // CRLF and a last line without a newline are handled too.
    let input = "héllo wörld\n日本語のテキスト\r\n🦀 crab\nno newline at the end";
    let r = client(&["tcp", &addr], Some(input.as_bytes()));
    let msgs = [
        "héllo wörld",
        "日本語のテキスト",
        "🦀 crab",
        "no newline at the end",
    ];
    assert_echoed(&r, &msgs, &addr);
    // Byte counts, not character counts.
    assert!(r.1.contains("SENT 日本語のテキスト (24 bytes)"), "{}", r.1);
}

/// Bytes that are not UTF-8 (Latin-1 text, binary with a NUL) are sent as they are, over
/// a stream and over datagrams, from standard input and from `-m`, and printed back raw.
#[test]
fn stdin_bytes_that_are_not_utf8_are_sent_and_echoed_raw() {
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    let lines: [&[u8]; 2] = [b"caf\xe9 cr\xe8me", b"\xff\xfe\x00bin"];
    let expected = |peer: &str, msgs: &[&[u8]]| -> Vec<u8> {
        let mut want = Vec::new();
        for m in msgs {
            for (head, tail) in [("SENT ", String::new()), ("RCVD ", format!(" from {peer}"))] {
                want.extend_from_slice(head.as_bytes());
                want.extend_from_slice(m);
                want.extend_from_slice(format!(" ({} bytes){tail}\n", m.len()).as_bytes());
            }
        }
        want
    };
    for kind in ["tcp", "udp"] {
        let addr = srv.addr(kind);
        let (status, out, err) = client_bytes(
            &[OsStr::new(kind), OsStr::new(&addr)],
            &[lines[0], b"\n", lines[1], b"\n"].concat(),
        );
        assert!(status.success(), "{kind}: exit {status}; stderr:\n{err}");
        assert_eq!(out, expected(&addr, &lines), "{kind}; stderr:\n{err}");
        let (status, out, err) = client_bytes(
            &[
                OsStr::new(kind),
                OsStr::new(&addr),
                OsStr::new("-m"),
                // An argument cannot hold a NUL: the first line, then.
                OsStr::from_bytes(lines[0]),
            ],
            b"",
        );
        assert!(status.success(), "{kind} -m: exit {status}; stderr:\n{err}");
        assert_eq!(
            out,
            expected(&addr, &lines[..1]),
            "{kind} -m; stderr:\n{err}"
        );
    }
}

#[test]
fn tcp_echo_reassembles_reply_in_pieces() {
    // Echoes one byte per write with a pause in between (Nagle off), so each echo reaches
    // the client in many pieces: a client that takes one read for the whole reply fails.
    let (addr, h) = tcp_server(|mut s| {
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 1024];
        let mut writes = 0usize;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                s.write_all(&[*b]).unwrap();
                writes += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(writes > 20, "the test server wrote in {writes} pieces");
    });
    let msgs = ["reassemble me, please", "and me too"];
    let r = send("tcp", &addr.to_string(), &[], &msgs);
    assert_echoed(&r, &msgs, &addr.to_string());
    h.join().unwrap();
}

#[test]
fn tcp_echo_mismatch_fails() {
    let (addr, h) = tcp_server(|mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n].to_ascii_uppercase()).unwrap();
        // Wait for the client to give up (EOF or reset), bounded by the read timeout.
        let _ = s.read(&mut buf);
    });
    let r = client(&["tcp", &addr.to_string(), "-m", "quiet"], None);
    let line = assert_failed(&r, "does not match");
    assert!(line.contains("\"QUIET\""), "{line}");
    assert!(r.1.contains("RCVD QUIET (5 bytes)"), "{}", r.1);
    h.join().unwrap();
}

#[test]
fn tcp_echo_timeout_is_bounded() {
    // Reads and never answers.
    let (addr, h) = tcp_server(|mut s| {
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let start = Instant::now();
    let r = send(
        "tcp",
        &addr.to_string(),
        &["--timeout", "0.3"],
        &["anyone?"],
    );
    let took = start.elapsed();
    let line = assert_failed(&r, "no complete echo of message 1");
    assert!(line.contains("received 0 of 7 bytes"), "{line}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    h.join().unwrap();
}

#[test]
fn tcp_server_closing_early_is_reported() {
    // Sends back half the message, then closes.
    let (addr, h) = tcp_server(|mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n / 2]).unwrap();
    });
    let r = client(&["tcp", &addr.to_string(), "-m", "0123456789"], None);
    let line = assert_failed(&r, "closed the connection");
    assert!(line.contains("after 5 of the 10 bytes"), "{line}");
    h.join().unwrap();
}

#[test]
fn tcp_server_not_closing_after_last_echo_is_reported() {
    // Echoes, then ignores the client's half-close and keeps the connection open.
    let (addr, h) = tcp_server(|mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
        // Returns at the client's EOF, then holds the socket a little longer than the
        // client's timeout before dropping it.
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_millis(800));
    });
    let r = send("tcp", &addr.to_string(), &["--timeout", "0.3"], &["x"]);
    assert_failed(&r, "did not close the connection");
    h.join().unwrap();
}

#[test]
fn tcp_connection_refused_is_one_line() {
    let addr = closed_tcp_port().to_string();
    let r = client(&["tcp", &addr, "-m", "hi"], None);
    let line = assert_failed(&r, "connection refused");
    assert!(line.contains(&addr), "{line}");
    assert_eq!(r.2.lines().count(), 1, "{}", r.2);
    assert!(r.1.is_empty(), "nothing sent: {}", r.1);
}

#[test]
fn tcp_connect_timeout_is_reported() {
    // A listener with a backlog of 0 that never accepts: once its queue holds one
    // connection, Linux drops further SYNs, so a connect neither succeeds nor is refused.
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    let filled =
        (0..64).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => {
                    held.push(s);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(
        filled,
        "could not fill the accept queue of a backlog-0 listener"
    );
    let start = Instant::now();
    let r = send("tcp", &addr.to_string(), &["--timeout", "0.5"], &["x"]);
    let took = start.elapsed();
    let line = assert_failed(&r, "no connection within 500ms");
    assert!(line.contains(&addr.to_string()), "{line}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[test]
fn tcp_host_name_resolves_and_connects() {
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let port = srv.sockaddr("tcp").port();
    // localhost may resolve to ::1 first, where nothing listens: the client then moves on.
    let r = send("tcp", &format!("localhost:{port}"), &[], &["by name"]);
    assert_echoed(&r, &["by name"], &format!("127.0.0.1:{port}"));
}

#[test]
fn tcp_host_name_names_every_failed_address() {
    let port = closed_tcp_port().port();
    let r = client(&["tcp", &format!("localhost:{port}"), "-m", "x"], None);
    let line = assert_failed(&r, &format!("cannot connect to localhost:{port}"));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("connection refused"), "{line}");
}

#[test]
fn tcp_invalid_address_is_reported() {
    let r = client(&["tcp", "no-port-here", "-m", "x"], None);
    assert_failed(&r, "invalid address");
}

#[test]
fn tcp_large_line_is_echoed_without_deadlock() {
    // 2 MiB in one message: far more than the socket buffers hold, so the client must read
    // the echo while it is still sending (no backpressure stall on its side).
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = srv.addr("tcp");
    let line: String = (0..2 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = client(&["tcp", &addr], Some(format!("{line}\nsmall\n").as_bytes()));
    let (status, out, err) = &r;
    assert!(status.success(), "stderr:\n{err}");
    assert!(
        out.contains(&format!("(2097152 bytes) from {addr}\n")),
        "tail: {}",
        &out[out.len() - 200..]
    );
    assert!(out.ends_with(&expected_lines(&["small"], &addr)));
}

#[test]
fn tcp_ipv6_loopback() {
    let srv = Proc::serve(&["--tcp", "[::1]:0"]);
    let addr = srv.addr("tcp");
    let r = client(&["tcp", &addr, "-m", "six"], None);
    assert_echoed(&r, &["six"], &addr);
}

#[test]
fn tcp_empty_input_only_connects_and_closes() {
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let r = client(&["tcp", &srv.addr("tcp")], Some(b""));
    assert_echoed(&r, &[], "");
}

// ---- UDP ----

#[test]
fn udp_echo_against_serve() {
    let srv = Proc::serve(&["--udp", "127.0.0.1:0"]);
    let addr = srv.addr("udp");
    let msgs = ["ping", "ünïcödé", "3"];
    let r = client(&["udp", &addr], Some("ping\nünïcödé\n3\n".as_bytes()));
    assert_echoed(&r, &msgs, &addr);
}

#[test]
fn udp_echo_ipv6() {
    let srv = Proc::serve(&["--udp", "[::1]:0"]);
    let addr = srv.addr("udp");
    let r = client(&["udp", &addr, "-m", "six"], None);
    assert_echoed(&r, &["six"], &addr);
}

/// A message no UDP datagram can carry is refused before anything is reported as sent,
/// naming the limit for the server's family; one at the limit still goes.
#[test]
fn udp_message_larger_than_a_datagram_is_refused_before_sent() {
    let srv = Proc::serve(&["--udp", "127.0.0.1:0"]);
    let addr = srv.addr("udp");
    let big = "x".repeat(65_508);
    let r = client(&["udp", &addr, "-m", &big], None);
    assert_failed(&r, "more than one UDP datagram can carry");
    assert!(r.2.contains("65507 bytes"), "{}", r.2);
    assert!(
        !r.1.contains("SENT"),
        "reported as sent: {}",
        &r.1[..r.1.len().min(80)]
    );
    let at_limit = "y".repeat(65_507);
    let (status, out, err) = client(&["udp", &addr, "-m", &at_limit], None);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("(65507 bytes)"),
        "{}",
        &out[..out.len().min(80)]
    );
}

#[test]
fn udp_echo_against_std_server() {
    let (addr, h) = udp_server(|s| {
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    let r = client(&["udp", &addr.to_string(), "-m", "one", "-m", "two"], None);
    assert_echoed(&r, &["one", "two"], &addr.to_string());
    h.join().unwrap();
}

#[test]
fn udp_silent_server_fails_in_bounded_time() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let start = Instant::now();
    let opts = ["--timeout", "0.2", "--retries", "2"];
    let r = send("udp", &addr, &opts, &["hello?"]);
    let took = start.elapsed();
    let line = assert_failed(&r, "no echo of message 1");
    assert!(line.contains("after 3 attempts"), "{line}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // Exactly retries + 1 datagrams were sent.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while let Ok((n, _)) = silent.recv_from(&mut buf) {
        assert_eq!(&buf[..n], b"hello?");
        got += 1;
    }
    assert_eq!(got, 3);
}

/// Nothing listens on the port: the ICMP "port unreachable" the kernel gets back is
/// reported as a refusal at once, not after timeout x (retries + 1) = 8 s of silence.
#[test]
fn udp_closed_port_is_refused_at_once() {
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let start = Instant::now();
    let r = send(
        "udp",
        &addr,
        &["--timeout", "2", "--retries", "3"],
        &["hello?"],
    );
    let took = start.elapsed();
    let line = assert_failed(&r, "refused");
    assert!(line.contains(&addr), "{line}");
    assert!(!r.2.contains("resending"), "{}", r.2);
    assert!(!r.2.contains("panicked"), "{}", r.2);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn udp_late_reply_is_resent_and_not_mistaken_later() {
    // Message 1 is answered only after its resend, and then twice: the late answer to the
    // first attempt arrives while the client already waits for message 2.
    let (addr, h) = udp_server(|s| {
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        let first = buf[..n].to_vec();
        let (n, _) = s.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &first[..], "the resend carries the same bytes");
        s.send_to(&first, from).unwrap();
        s.send_to(&first, from).unwrap();
        for _ in 0..2 {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..n], from).unwrap();
        }
    });
    let msgs = ["first", "second", "third"];
    let r = send("udp", &addr.to_string(), &["--timeout", "0.3"], &msgs);
    assert_echoed(&r, &msgs, &addr.to_string());
    assert!(r.2.contains("resending (attempt 2 of 4)"), "{}", r.2);
    h.join().unwrap();
}

#[test]
fn udp_stale_reply_before_the_right_one_is_ignored() {
    // For every message after the first, the previous message's echo comes first.
    let (addr, h) = udp_server(|s| {
        let mut buf = [0u8; 2048];
        let mut previous: Option<Vec<u8>> = None;
        for _ in 0..3 {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            if let Some(p) = &previous {
                s.send_to(p, from).unwrap();
            }
            s.send_to(&buf[..n], from).unwrap();
            previous = Some(buf[..n].to_vec());
        }
    });
    let msgs = ["alpha", "beta", "gamma"];
    let r = send("udp", &addr.to_string(), &[], &msgs);
    assert_echoed(&r, &msgs, &addr.to_string());
    // No resend was needed: the stale replies were skipped, not waited out.
    assert!(!r.2.contains("resending"), "{}", r.2);
    h.join().unwrap();
}

#[test]
fn udp_wrong_echo_is_never_accepted() {
    let (addr, h) = udp_server(|s| {
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (_, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(b"garbage", from).unwrap();
        }
    });
    let opts = ["--timeout", "0.2", "--retries", "1"];
    let r = send("udp", &addr.to_string(), &opts, &["real"]);
    let line = assert_failed(&r, "after 2 attempts");
    assert!(
        line.contains("did not match") && line.contains("garbage"),
        "{line}"
    );
    assert!(!r.1.contains("RCVD"), "{}", r.1);
    h.join().unwrap();
}

// ---- Unix sockets ----

#[test]
fn unix_stream_echo_against_serve() {
    let path = common::temp_sock("client-unix");
    let srv = Proc::serve(&["--unix", path.to_str().unwrap()]);
    let addr = srv.addr("unix");
    let r = client(&["unix", &addr], Some("über\nline two\n".as_bytes()));
    assert_echoed(&r, &["über", "line two"], &addr);
}

#[test]
fn unix_stream_abstract_name() {
    let name = format!("@echoloop-client-stream-{}", std::process::id());
    let srv = Proc::serve(&["--unix", &name]);
    let addr = srv.addr("unix");
    assert_eq!(addr, name);
    let r = client(&["unix", &addr, "-m", "abstract"], None);
    assert_echoed(&r, &["abstract"], &addr);
}

/// `@` is the abstract name with no bytes, which `serve` binds (not an autobound random
/// one): the client reaches it over both socket types. The name is one for the whole
/// network namespace, so this is the only test that uses it.
#[test]
fn unix_empty_abstract_name_is_reached() {
    let srv = Proc::serve(&["--unix", "@", "--unix-dgram", "@"]);
    assert_eq!(srv.addr("unix"), "@");
    assert_eq!(srv.addr("unix-dgram"), "@");
    for kind in ["unix", "unix-dgram"] {
        let r = client(&[kind, "@", "-m", "empty name"], None);
        assert_echoed(&r, &["empty name"], "@");
    }
}

#[test]
fn unix_stream_missing_socket_is_reported() {
    let path = common::temp_sock("client-missing");
    let r = client(&["unix", path.to_str().unwrap(), "-m", "x"], None);
    assert_failed(&r, "no such socket");
}

#[test]
fn unix_dgram_echo_against_serve() {
    let path = common::temp_sock("client-dgram");
    let srv = Proc::serve(&["--unix-dgram", path.to_str().unwrap()]);
    let addr = srv.addr("unix-dgram");
    let r = client(&["unix-dgram", &addr, "-m", "dgram", "-m", "ß"], None);
    assert_echoed(&r, &["dgram", "ß"], &addr);
}

#[test]
fn unix_dgram_abstract_name() {
    let name = format!("@echoloop-client-test-{}", std::process::id());
    let srv = Proc::serve(&["--unix-dgram", &name]);
    let addr = srv.addr("unix-dgram");
    let r = client(&["unix-dgram", &addr, "-m", "abstract"], None);
    assert_echoed(&r, &["abstract"], &addr);
}

#[test]
fn unix_dgram_missing_socket_is_reported() {
    let path = common::temp_sock("client-dgram-missing");
    let r = client(&["unix-dgram", path.to_str().unwrap(), "-m", "x"], None);
    assert_failed(&r, "no such socket");
}

// ---- TLS ----

fn tls_server(pki: &TestPki, client_ca: bool) -> Proc {
    if client_ca {
        common::serve_tls(pki, &[], &["--client-ca", pki.ca_pem.to_str().unwrap()])
    } else {
        common::serve_tls(pki, &[], &[])
    }
}

#[test]
fn tls_echo_verifies_ip_and_name() {
    let pki = TestPki::generate();
    let srv = tls_server(&pki, false);
    let addr = srv.addr("tls");
    let ca = pki.ca_pem.to_str().unwrap();
    // The default name is the host part of ADDR: an IP literal, in the certificate.
    let r = send("tls", &addr, &["--ca", ca], &["secret", "ünï"]);
    assert_echoed(&r, &["secret", "ünï"], &addr);
    let opts = ["--ca", ca, "--server-name", "localhost"];
    let r = send("tls", &addr, &opts, &["named"]);
    assert_echoed(&r, &["named"], &addr);
    // Through a host name: its host part is the name checked.
    let port = srv.sockaddr("tls").port();
    let r = send("tls", &format!("localhost:{port}"), &["--ca", ca], &["x"]);
    assert_echoed(&r, &["x"], &addr);
}

#[test]
fn tls_echo_ipv6_literal_is_the_name() {
    let pki = TestPki::generate();
    let srv = common::serve_tls(&pki, &["--tls", "[::1]:0"], &[]);
    let addr = srv.addr("tls");
    let ca = pki.ca_pem.to_str().unwrap();
    let r = client(&["tls", &addr, "--ca", ca, "-m", "v6"], None);
    assert_echoed(&r, &["v6"], &addr);
}

#[test]
fn tls_wrong_name_is_refused() {
    let pki = TestPki::generate();
    let srv = tls_server(&pki, false);
    let ca = pki.ca_pem.to_str().unwrap();
    let opts = ["--ca", ca, "--server-name", "wrong.example"];
    let r = send("tls", &srv.addr("tls"), &opts, &["x"]);
    let line = assert_failed(&r, "not valid for name \"wrong.example\"");
    assert!(line.contains("TLS handshake"), "{line}");
    assert!(r.1.is_empty(), "nothing may be sent: {}", r.1);
}

#[test]
fn tls_untrusted_ca_is_refused() {
    let pki = TestPki::generate();
    let srv = tls_server(&pki, false);
    let ca = pki.other_ca_pem.to_str().unwrap();
    let r = send("tls", &srv.addr("tls"), &["--ca", ca], &["x"]);
    assert_failed(&r, "not trusted (unknown issuer)");
    assert!(r.1.is_empty(), "nothing may be sent: {}", r.1);
}

/// Options trusting `ca` and presenting the client certificate `chain` with `key`.
fn with_cert<'a>(ca: &'a str, chain: &'a Path, key: &'a Path) -> [&'a str; 6] {
    let path = |p: &'a Path| p.to_str().unwrap();
    ["--ca", ca, "--cert", path(chain), "--key", path(key)]
}

#[test]
fn tls_client_certificate_required() {
    let pki = TestPki::generate();
    let srv = tls_server(&pki, true);
    let addr = srv.addr("tls");
    let ca = pki.ca_pem.to_str().unwrap();

    let r = client(&["tls", &addr, "--ca", ca, "-m", "x"], None);
    assert_failed(&r, "requires a client certificate");

    let opts = with_cert(ca, &pki.client_chain, &pki.client_key);
    let r = send("tls", &addr, &opts, &["mutual"]);
    assert_echoed(&r, &["mutual"], &addr);

    // A certificate from a CA the server does not trust is refused.
    let opts = with_cert(ca, &pki.other_client_chain, &pki.other_client_key);
    let r = send("tls", &addr, &opts, &["x"]);
    assert_failed(&r, "rejected our client certificate");
}

/// A TLS 1.3 server judges our certificate after our side of the handshake is over,
/// when the first message has gone out: its refusal is still the handshake's failure,
/// and nothing is reported as sent. Nor when the server's certificate is not trusted
/// (reading from standard input this time).
#[test]
fn tls_refused_handshake_reports_nothing_as_sent() {
    let pki = TestPki::generate();
    let srv = tls_server(&pki, true);
    let addr = srv.addr("tls");
    let ca = pki.ca_pem.to_str().unwrap();

    let r = client(&["tls", &addr, "--ca", ca, "-m", "x"], None);
    let line = assert_failed(&r, "requires a client certificate");
    assert!(line.contains("TLS handshake"), "{line}");
    assert!(!r.1.contains("SENT"), "reported as sent: {}", r.1);

    let r = client(&["tls", &addr, "--ca", ca], Some(b"x\ny\n"));
    assert_failed(&r, "requires a client certificate");
    assert!(r.1.is_empty(), "nothing may be printed: {}", r.1);

    let opts = with_cert(ca, &pki.other_client_chain, &pki.other_client_key);
    let r = send("tls", &addr, &opts, &["x"]);
    let line = assert_failed(&r, "rejected our client certificate");
    assert!(line.contains("TLS handshake"), "{line}");
    assert!(r.1.is_empty(), "nothing may be printed: {}", r.1);

    let untrusted = pki.other_ca_pem.to_str().unwrap();
    let r = client(&["tls", &addr, "--ca", untrusted], Some(b"x\n"));
    assert_failed(&r, "not trusted (unknown issuer)");
    assert!(r.1.is_empty(), "nothing may be printed: {}", r.1);
}

#[test]
fn tls_to_a_plain_tcp_server_fails_cleanly() {
    let pki = TestPki::generate();
    let srv = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let ca = pki.ca_pem.to_str().unwrap();
    let opts = ["--ca", ca, "--timeout", "2"];
    let r = send("tls", &srv.addr("tcp"), &opts, &["x"]);
    assert_failed(&r, "TLS");
}

// ---- Options ----

#[test]
fn options_for_another_transport_are_refused() {
    let r = client(&["tcp", "127.0.0.1:1", "--ca", "ca.pem", "-m", "x"], None);
    assert_failed(&r, "--ca only applies to the tls transport");
    let r = client(&["unix", "/nonexistent", "--retries", "2", "-m", "x"], None);
    assert_failed(&r, "--retries only applies to udp and unix-dgram");
    let r = client(&["udp", "127.0.0.1:1", "--timeout", "0", "-m", "x"], None);
    assert_failed(&r, "--timeout must be greater than zero");
    let (status, _, err) = client(&["tls", "127.0.0.1:1", "--cert", "c.pem", "-m", "x"], None);
    assert!(!status.success() && err.contains("--key"), "{err}");
}

/// Addresses no connect can reach are refused before anything is sent, with what is
/// wrong and how to write it: a missing port, a signed port, port 0, an IPv4 address
/// written as IPv6.
#[test]
fn unreachable_addresses_are_refused_with_the_reason() {
    for (kind, addr, needle) in [
        ("tcp", "[::1]", "missing port; write [::1]:PORT"),
        ("tls", "[::1]", "missing port; write [::1]:PORT"),
        ("udp", "127.0.0.1", "missing port; write 127.0.0.1:PORT"),
        ("tcp", "127.0.0.1:+80", "\"+80\" is not a port number"),
        ("udp", "127.0.0.1:0", "port 0 cannot be connected to"),
        (
            "tcp",
            "[::ffff:127.0.0.1]:0",
            "port 0 cannot be connected to",
        ),
        ("udp", "[::ffff:127.0.0.1]:7", "write 127.0.0.1:7 instead"),
        ("tcp", "[::ffff:127.0.0.1]:7", "write 127.0.0.1:7 instead"),
    ] {
        let r = client(&[kind, addr, "-m", "x"], None);
        assert_failed(&r, needle);
        assert!(!r.2.contains("panicked"), "{kind} {addr}: {}", r.2);
        assert!(!r.2.contains("os error"), "{kind} {addr}: {}", r.2);
        assert!(
            r.1.is_empty(),
            "{kind} {addr}: nothing may be sent: {}",
            r.1
        );
    }
}
