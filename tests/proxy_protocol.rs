//! `serve --proxy-protocol`: connections that start with a load balancer's PROXY header
//! (version 1 or 2), written by the tests themselves and by a real HAProxy.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Proc;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Polls `cond` until it holds, failing after the deadline (for log lines, which the
/// collector may deliver after the fact).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.0 GET; the whole response as text.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A version 2 header for a TCP over IPv4 client `src` talking to `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only here")
    };
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// Writes `first` (the header, and maybe data after it), then `rest`, half-closes, and
/// returns everything echoed until EOF (or the error that ended it).
fn exchange(addr: SocketAddr, first: &[u8], rest: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(common::DEADLINE))?;
    s.write_all(first)?;
    s.write_all(rest)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

#[test]
fn proxy_headers_are_read_removed_and_logged() {
    let mut p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--log-level",
        "debug",
    ]);
    let addr = p.sockaddr("tcp");
    // Version 1, with data in the same write.
    let back = exchange(
        addr,
        b"PROXY TCP4 192.0.2.10 198.51.100.1 51000 7\r\nfirst ",
        b"second",
    )
    .unwrap();
    assert_eq!(back, b"first second", "the header is never echoed");
    // Version 2, in pieces.
    let h = v2_header(
        "203.0.113.5:4242".parse().unwrap(),
        "198.51.100.1:7".parse().unwrap(),
    );
    let back = exchange(addr, &h[..5], &[&h[5..], b"v2 data"].concat()).unwrap();
    assert_eq!(back, b"v2 data");
    // A health check (LOCAL): served, with no client to name.
    let local = [V2_SIGNATURE, &[0x20, 0x00, 0, 0]].concat();
    assert_eq!(exchange(addr, &local, b"ping").unwrap(), b"ping");
    // The real clients are in the log.
    wait_for("the clients in the log", || {
        let log = p.stderr_text();
        log.contains("is from 192.0.2.10:51000") && log.contains("is from 203.0.113.5:4242")
    });
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
}

#[test]
fn proxy_missing_malformed_oversized_or_slow_headers_close_only_that_connection() {
    let mut p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--unix",
        common::temp_sock("proxy").to_str().unwrap(),
        "--proxy-protocol",
        "--handshake-timeout",
        "300ms",
        "--metrics",
        "127.0.0.1:0",
    ]);
    p.wait_listening(3); // the metrics line too
    let addr = p.sockaddr("tcp");
    for bad in [
        &b"hello without a header\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 7\r\nx",
        &[b'P'; 300],
        &[V2_SIGNATURE, &[0x21, 0x11, 0xff, 0xff]].concat(),
    ] {
        // Closed without an echo (EOF, or a reset if our bytes were unread).
        let back = exchange(addr, bad, b"").unwrap_or_default();
        assert!(back.is_empty(), "echoed {back:?} for {bad:?}");
    }
    // Too slow: half a header, then nothing. Closed by the handshake timeout.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"PROXY TCP4 1.2").unwrap();
    slow.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut buf = [0u8; 8];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The server goes on serving good connections, and counts what it closed.
    let good = exchange(addr, b"PROXY UNKNOWN\r\n", b"still fine").unwrap();
    assert_eq!(good, b"still fine");
    let metrics = http_get(p.sockaddr("metrics"), "/metrics");
    assert!(
        metrics.contains("echoloop_connections_closed_total{reason=\"bad_proxy_header\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("echoloop_connections_proxied_total 1"),
        "{metrics}"
    );
    // Unix stream listeners take the header too.
    let path = p.addr("unix");
    let mut u = std::os::unix::net::UnixStream::connect(&path).unwrap();
    u.set_read_timeout(Some(common::DEADLINE)).unwrap();
    u.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nover unix")
        .unwrap();
    u.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    u.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"over unix");
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
}

#[test]
fn proxy_header_comes_before_the_tls_client_hello() {
    let pki = common::certs::TestPki::generate();
    let mut p = common::serve_tls(&pki, &["--tls", "127.0.0.1:0"], &["--proxy-protocol"]);
    let addr = p.sockaddr("tls");
    let client_cfg = echoloop::tls_config::client_config(&echoloop::tls_config::ClientTlsOptions {
        ca: Some(&pki.ca_pem),
        client_cert: None,
    })
    .unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(common::DEADLINE)).unwrap();
    sock.write_all(b"PROXY TCP4 192.0.2.99 198.51.100.1 1234 443\r\n")
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(&client_cfg), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"secret behind a balancer").unwrap();
    let mut back = [0u8; 24];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"secret behind a balancer");
    drop(tls);
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
}

/// HAProxy in front (`send-proxy` and `send-proxy-v2` on its server lines): the echo
/// works through it, and the log names the real client (HAProxy's peer, 127.0.0.1).
#[test]
fn proxy_behind_a_real_haproxy() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        println!(
            "haproxy not found: install it with `apt-get install -y haproxy` (Debian package haproxy); skipping"
        );
        return;
    }
    let mut p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--proxy-protocol",
        "--log-level",
        "debug",
    ]);
    let echo = p.sockaddr("tcp");
    // HAProxy needs fixed ports: take two that were free a moment ago (a small race with
    // other programs, accepted in a test).
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (front1, front2) = (free(), free());
    let dir = std::env::temp_dir().join(format!("echoloop-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend v1\n  bind {front1}\n  default_backend echo_v1\n\
             frontend v2\n  bind {front2}\n  default_backend echo_v2\n\
             backend echo_v1\n  server e {echo} send-proxy\n\
             backend echo_v2\n  server e {echo} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for front in [front1, front2] {
        // HAProxy prints no ready line: wait (bounded) until its port accepts.
        let mut s = common::connect_retry(front);
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        s.write_all(b"through haproxy").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"through haproxy", "via {front}");
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let _ = std::fs::remove_dir_all(&dir);
    wait_for("the proxied client in the log", || {
        p.stderr_text().matches("is from 127.0.0.1:").count() >= 2
    });
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
}

/// issue 18, item 6 (part): a flood of connections without a PROXY header is logged once
/// per interval with a count, not once each (a slow stderr would stall the loop).
#[test]
fn issue_18_headerless_connections_are_logged_at_most_once_per_interval() {
    let mut p = Proc::serve(&["--tcp", "127.0.0.1:0", "--proxy-protocol"]);
    let addr = p.sockaddr("tcp");
    for _ in 0..50 {
        let back = exchange(addr, b"no header here\n", b"").unwrap_or_default();
        assert!(back.is_empty());
    }
    let good = exchange(addr, b"PROXY UNKNOWN\r\n", b"fine").unwrap();
    assert_eq!(good, b"fine");
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
    let text = p.stderr_text();
    let lines = text.lines().filter(|l| l.contains("PROXY")).count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} lines about bad headers for 50 connections:\n{text}"
    );
}
