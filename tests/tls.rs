//! Issue 3: TLS in the reactor, tested end to end on loopback.
//!
//! Servers are the real `echoloop serve --tls` binary with certificates generated per test
//! ([`common::certs::TestPki`]); clients are rustls `ClientConnection`s written here, either
//! blocking ([`Client`], for request/response checks) or driven by hand over a non-blocking
//! socket ([`Pump`], to send and receive at the same time, or to send without reading).
//! The last tests drive both TLS ends inside one in-process [`EventLoop`].

mod common;

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echoloop::tls_config::{
    ClientTlsOptions, ServerTlsOptions, client_config, load_certs, server_config, server_name,
};
use echoloop::{
    CloseReason, Config, ConnectOptions, Ctx, Echo, Endpoint, EventLoop, Handler, ListenKind,
};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore};

use common::certs::TestPki;
use common::{DEADLINE, Proc, serve_tls};

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Echo, certificate verification, half-close
// ---------------------------------------------------------------------------------------

#[test]
fn tls_echo_small_messages_verified_for_each_san() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &["--tls", "127.0.0.1:0", "--tls", "[::1]:0"], &[]);
    let cfg = trusting(&pki);
    for (_, addr) in &server.listeners {
        let addr: SocketAddr = addr.parse().unwrap();
        let ip_name = addr.ip().to_string();
        for name in ["localhost", ip_name.as_str()] {
            let mut c = Client::connect(addr, &cfg, name);
            for msg in [
                &b"x"[..],
                b"hello, tls\n",
                &[0u8, 255, 13, 10, 0][..],
                &[0xA5; 3000],
            ] {
                assert_eq!(
                    c.echo(msg).unwrap(),
                    msg,
                    "echo over {addr} verified as {name}"
                );
            }
            // Several messages written before reading any: still byte-exact and in order.
            c.stream().write_all(b"one,").unwrap();
            c.stream().write_all(b"two,").unwrap();
            c.stream().write_all(b"three").unwrap();
            let mut back = [0u8; 13];
            c.stream().read_exact(&mut back).unwrap();
            assert_eq!(&back, b"one,two,three");
        }
    }
}

#[test]
fn tls_client_refuses_wrong_name_and_unknown_ca() {
    // Proves the clients above really verify: the same server fails for a name it was not
    // issued for, and for a client that trusts another CA.
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let addr = server.sockaddr("tls");

    let err = Client::try_connect(addr, &trusting(&pki), "example.com").unwrap_err();
    let tls_err = rustls_error(&err).unwrap_or_else(|| panic!("not a TLS error: {err}"));
    assert!(
        matches!(tls_err, rustls::Error::InvalidCertificate(_)),
        "wrong name: {tls_err:?}"
    );

    let other = client_config(&ClientTlsOptions {
        ca: Some(&pki.other_ca_pem),
        client_cert: None,
    })
    .unwrap();
    let err = Client::try_connect(addr, &other, "localhost").unwrap_err();
    let tls_err = rustls_error(&err).unwrap_or_else(|| panic!("not a TLS error: {err}"));
    assert!(
        matches!(
            tls_err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "unknown CA: {tls_err:?}"
    );
}

#[test]
fn tls_echo_64mib_read_concurrently() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let mut p = Pump::connect(server.sockaddr("tls"), &trusting(&pki), 64 * MIB);
    p.close_after_send = true;
    let out = p.run_until(true, None, |p| p.got_close_notify && p.tcp_eof);
    assert_eq!(out, Outcome::Done);
    assert_eq!(p.sent, 64 * MIB);
    assert_eq!(
        p.received,
        64 * MIB,
        "every byte echoed (verified in order)"
    );
    assert!(!p.unclean_eof);
}

#[test]
fn tls_half_close_echoes_then_close_notify_then_eof() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let mut c = Client::connect(server.sockaddr("tls"), &trusting(&pki), "localhost");
    // Data, our close_notify and our FIN all leave before we read a single byte back.
    c.stream().write_all(b"last words").unwrap();
    c.conn.send_close_notify();
    c.stream().flush().unwrap();
    c.sock.shutdown(Shutdown::Write).unwrap();

    // read_to_end through rustls ends with Ok only on the server's close_notify; a bare TCP
    // EOF would be an UnexpectedEof error (a possible truncation attack).
    let mut back = Vec::new();
    c.stream().read_to_end(&mut back).unwrap();
    assert_eq!(back, b"last words");
    assert!(peer_sent_close_notify(&mut c.conn));
    // ...and after close_notify the TCP stream ends too.
    let mut rest = Vec::new();
    let n = c.sock.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0, "nothing after close_notify");
}

#[test]
fn tls_half_close_with_megabytes_in_flight() {
    // Half-close while the server still owes megabytes: its close_notify must wait behind
    // all of them, and its FIN behind that.
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let mut p = Pump::connect(server.sockaddr("tls"), &trusting(&pki), 2 * MIB);
    p.close_after_send = true;
    // Send everything, then close_notify and FIN, before reading anything. Loopback socket
    // buffers normally hold all of it; if they do not, the rest goes once we read.
    let _ = p.run_until(false, Some(Duration::from_millis(300)), |p| p.write_closed);
    let out = p.run_until(true, None, |p| p.got_close_notify && p.tcp_eof);
    assert_eq!(out, Outcome::Done);
    assert_eq!(p.received, 2 * MIB);
    assert!(p.write_closed);
}

// ---------------------------------------------------------------------------------------
// Orderly shutdown
// ---------------------------------------------------------------------------------------

#[test]
fn tls_sigterm_sends_close_notify_after_echoed_data() {
    let pki = TestPki::generate();
    let mut server = serve_tls(&pki, &[], &["--shutdown-timeout", "10"]);
    let addr = server.sockaddr("tls");
    let mut c = Client::connect(addr, &trusting(&pki), "localhost");
    assert_eq!(c.echo(b"before").unwrap(), b"before");
    // A peer stuck in its handshake must not hold the shutdown up (to the handshake
    // deadline, 10 s by default, or the grace period).
    let mut stuck = TcpStream::connect(addr).unwrap();
    stuck.set_read_timeout(Some(DEADLINE)).unwrap();
    stuck.write_all(&client_hello(&pki)[..20]).unwrap();

    // An echo the client has not read yet when the signal arrives: wait until its bytes are
    // in our socket (so the server has read and answered it), then signal.
    c.stream().write_all(b"in flight").unwrap();
    c.stream().flush().unwrap();
    wait_readable(&c.sock);
    let signalled = Instant::now();
    server.signal("TERM");

    let mut back = Vec::new();
    c.stream()
        .read_to_end(&mut back)
        .expect("server's close_notify, not a bare EOF");
    assert_eq!(back, b"in flight");
    assert!(peer_sent_close_notify(&mut c.conn));

    // Answer in kind and close; the server then exits, successfully, well within its grace.
    c.conn.send_close_notify();
    c.stream().flush().unwrap();
    drop(c);
    let st = server.wait_exit(DEADLINE);
    assert!(
        st.success(),
        "exit status {st}; stderr:\n{}",
        server.stderr_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?}: waited for the stuck handshake or the grace period",
        signalled.elapsed()
    );
    match stuck.read(&mut [0u8; 64]) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("stuck handshake peer: {other:?}"),
    }
}

#[test]
fn tls_peer_close_notify_is_answered_and_connection_ends_clean() {
    // The peer's close_notify, with no TCP FIN: the server answers with its own and closes.
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &["--log-level", "debug"]);
    let mut c = Client::connect(server.sockaddr("tls"), &trusting(&pki), "localhost");
    let port = c.sock.local_addr().unwrap().port();
    assert_eq!(c.echo(b"bye soon").unwrap(), b"bye soon");
    c.conn.send_close_notify();
    c.stream().flush().unwrap();
    let mut back = Vec::new();
    c.stream().read_to_end(&mut back).unwrap();
    assert!(back.is_empty());
    assert!(peer_sent_close_notify(&mut c.conn));
    let reason = logged_close_reason(&server, port);
    assert!(
        reason.contains("closed cleanly"),
        "server logged {reason:?}"
    );
}

#[test]
fn tls_server_initiated_close_ends_on_peer_close_notify() {
    // The server closes (idle timeout here; SIGTERM takes the same path): close_notify, FIN,
    // then it waits for the peer to finish. A TLS peer finishes with its own close_notify,
    // and many keep TCP open until the server closes it: that must end the wait at once,
    // cleanly, not after the close timeout.
    let pki = TestPki::generate();
    let server = serve_tls(
        &pki,
        &[],
        &[
            "--idle-timeout",
            "0.3",
            "--shutdown-timeout",
            "3",
            "--log-level",
            "debug",
        ],
    );
    let mut c = Client::connect(server.sockaddr("tls"), &trusting(&pki), "localhost");
    let port = c.sock.local_addr().unwrap().port();
    assert_eq!(c.echo(b"then idle").unwrap(), b"then idle");
    let mut back = Vec::new();
    c.stream()
        .read_to_end(&mut back)
        .expect("server's close_notify after the idle timeout");
    assert!(back.is_empty());
    assert!(peer_sent_close_notify(&mut c.conn));

    c.conn.send_close_notify();
    c.stream().flush().unwrap();
    let answered = Instant::now();
    let reason = logged_close_reason(&server, port);
    // The close ended cleanly on our close_notify; why it began — the idle timeout — is
    // the reason it keeps (issue 18, item 11).
    assert!(
        reason.contains("idle timeout"),
        "server logged {reason:?} {:?} after our close_notify",
        answered.elapsed()
    );
    drop(c);
}

// ---------------------------------------------------------------------------------------
// Bad peers
// ---------------------------------------------------------------------------------------

#[test]
fn tls_bad_peers_close_only_their_connection() {
    let pki = TestPki::generate();
    let mut server = serve_tls(
        &pki,
        &[],
        &["--handshake-timeout", "0.5", "--log-level", "debug"],
    );
    let addr = server.sockaddr("tls");
    let mut good = Client::connect(addr, &trusting(&pki), "localhost");
    assert_eq!(good.echo(b"good before").unwrap(), b"good before");

    let hello = client_hello(&pki);
    let garbage: Vec<u8> = (0u32..64).map(|i| (i * 37 + 11) as u8).collect();
    let cases: [(&str, &[u8], bool, &str, bool); 6] = [
        // (case, bytes sent, then shutdown(Write), expected reason in the log, by timeout)
        ("garbage bytes", &garbage, false, "TLS error", false),
        (
            "garbage in a handshake record",
            &[0x16, 3, 1, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4],
            false,
            "TLS error",
            false,
        ),
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            false,
            "TLS error",
            false,
        ),
        (
            "truncated ClientHello, then FIN",
            &hello[..20],
            true,
            "peer closed during the handshake",
            false,
        ),
        (
            "truncated ClientHello, then silence",
            &hello[..20],
            false,
            "TLS handshake timed out",
            true,
        ),
        ("silent client", b"", false, "TLS handshake timed out", true),
    ];
    for (i, (case, bytes, fin, reason, by_timeout)) in cases.into_iter().enumerate() {
        let (port, waited) = bad_peer(addr, bytes, fin);
        if by_timeout {
            assert!(
                waited >= Duration::from_millis(400),
                "{case}: closed after {waited:?}, before the handshake deadline"
            );
        }
        let logged = logged_close_reason(&server, port);
        assert!(logged.contains(reason), "{case}: server logged {logged:?}");
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{case}: server exited; stderr:\n{}",
            server.stderr_text()
        );
        let msg = format!("good after case {i}");
        assert_eq!(good.echo(msg.as_bytes()).unwrap(), msg.as_bytes(), "{case}");
    }
    // New good clients are still served too.
    let mut late = Client::connect(addr, &trusting(&pki), "localhost");
    assert_eq!(late.echo(b"late").unwrap(), b"late");
}

/// Connects, sends `bytes` (then FIN if `fin`), and waits for the server to close the
/// connection. Returns our port (to find the server's log lines) and how long the close took
/// after sending.
fn bad_peer(addr: SocketAddr, bytes: &[u8], fin: bool) -> (u16, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let port = s.local_addr().unwrap().port();
    let start = Instant::now();
    s.write_all(bytes).unwrap();
    if fin {
        s.shutdown(Shutdown::Write).unwrap();
    }
    // Whatever the server says (an alert, perhaps), it must end the connection: EOF, or a
    // reset if it closed with our bytes unread.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server did not close the connection from port {port}: {e}"),
        }
    }
    (port, start.elapsed())
}

// ---------------------------------------------------------------------------------------
// Mutual TLS
// ---------------------------------------------------------------------------------------

#[test]
fn tls_mtls_requires_a_client_cert_from_the_given_ca() {
    let pki = TestPki::generate();
    let ca = path_str(&pki.ca_pem);
    let server = serve_tls(&pki, &[], &["--client-ca", ca, "--log-level", "debug"]);
    let addr = server.sockaddr("tls");

    let mut right = Client::connect(addr, &with_client_cert(&pki, false), "localhost");
    assert_eq!(right.echo(b"mutual").unwrap(), b"mutual");

    let port = expect_refused(addr, &trusting(&pki), "no client certificate");
    let logged = logged_close_reason(&server, port);
    assert!(
        logged.contains("TLS error"),
        "no cert: server logged {logged:?}"
    );

    let port = expect_refused(
        addr,
        &with_client_cert(&pki, true),
        "certificate from another CA",
    );
    let logged = logged_close_reason(&server, port);
    assert!(
        logged.contains("TLS error"),
        "other CA: server logged {logged:?}"
    );

    // TLS 1.2 has the client's certificate checked before its handshake completes.
    expect_refused(addr, &tls12_only(&pki), "TLS 1.2 without a certificate");

    // Refusals end only those connections.
    assert_eq!(right.echo(b"still here").unwrap(), b"still here");
    let mut again = Client::connect(addr, &with_client_cert(&pki, false), "localhost");
    assert_eq!(again.echo(b"again").unwrap(), b"again");
}

#[test]
fn tls_without_client_ca_accepts_clients_with_or_without_certs() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let addr = server.sockaddr("tls");
    let mut plain = Client::connect(addr, &trusting(&pki), "localhost");
    assert_eq!(plain.echo(b"no cert").unwrap(), b"no cert");
    let mut other = Client::connect(addr, &with_client_cert(&pki, true), "localhost");
    assert_eq!(other.echo(b"unasked cert").unwrap(), b"unasked cert");
}

/// Connects with `cfg` and expects the server to refuse it with an alert, during the
/// handshake (TLS 1.2) or right after the client's last flight (TLS 1.3, where the client
/// finishes first). Returns our port.
fn expect_refused(addr: SocketAddr, cfg: &Arc<ClientConfig>, case: &str) -> u16 {
    let sock = TcpStream::connect(addr).unwrap();
    let port = sock.local_addr().unwrap().port();
    let err = match Client::handshake(sock, cfg, "localhost") {
        Err(e) => e,
        // Read without sending: the server has all our bytes when it refuses, so its alert
        // is not lost to a reset.
        Ok(mut c) => match c.stream().read(&mut [0u8; 64]) {
            Ok(n) => panic!("{case}: connection accepted (read {n} bytes)"),
            Err(e) => e,
        },
    };
    let tls_err = rustls_error(&err).unwrap_or_else(|| panic!("{case}: not a TLS error: {err}"));
    assert!(
        matches!(tls_err, rustls::Error::AlertReceived(_)),
        "{case}: {tls_err:?}"
    );
    port
}

// ---------------------------------------------------------------------------------------
// Protocol versions and resumption
// ---------------------------------------------------------------------------------------

#[test]
fn tls_negotiates_1_3_by_default_and_still_speaks_1_2() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let addr = server.sockaddr("tls");

    let mut c13 = Client::connect(addr, &trusting(&pki), "localhost");
    assert_eq!(c13.conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(c13.echo(b"thirteen").unwrap(), b"thirteen");

    let mut c12 = Client::connect(addr, &tls12_only(&pki), "localhost");
    assert_eq!(c12.conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(c12.echo(b"twelve").unwrap(), b"twelve");
    // Big enough for several records each way.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(c12.echo(&big).unwrap(), big);
}

#[test]
fn tls_session_resumption_for_1_3_and_1_2() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let addr = server.sockaddr("tls");
    for (version, cfg) in [("TLS 1.3", trusting(&pki)), ("TLS 1.2", tls12_only(&pki))] {
        let mut first = Client::connect(addr, &cfg, "localhost");
        assert_eq!(
            first.conn.handshake_kind(),
            Some(HandshakeKind::Full),
            "{version}"
        );
        // TLS 1.3 tickets arrive after the handshake: one round trip takes them in.
        assert_eq!(first.echo(b"first").unwrap(), b"first");
        first.conn.send_close_notify();
        first.stream().flush().unwrap();
        drop(first);

        let mut second = Client::connect(addr, &cfg, "localhost");
        assert_eq!(
            second.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{version}: second handshake from the same client config"
        );
        assert_eq!(second.echo(b"second").unwrap(), b"second");
    }
}

// ---------------------------------------------------------------------------------------
// Backpressure and memory
// ---------------------------------------------------------------------------------------

#[test]
fn tls_backpressure_bounds_server_memory() {
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    // Far more than all the socket buffers on the path can hold (tcp_rmem may allow 32 MiB
    // for the server's receive buffer), so a server that keeps reading shows in its RSS.
    let total = 64 * MIB;
    let mut p = Pump::connect(server.sockaddr("tls"), &trusting(&pki), total);
    let base = server.rss_kib();

    // Write without reading until the socket takes nothing more for a while.
    let out = p.run_until(false, Some(Duration::from_millis(500)), |p| {
        p.sent == p.total
    });
    assert_eq!(
        out,
        Outcome::Stalled,
        "all {total} bytes were taken without our reading any echo"
    );
    let grown_kib = server.rss_kib().saturating_sub(base);
    assert!(
        grown_kib < 16 * 1024,
        "server RSS grew by {grown_kib} KiB with {} MiB pushed at it and nothing read",
        p.sent / MIB
    );

    // Reading drains it all, intact and in order; then the rest flows.
    p.close_after_send = true;
    let out = p.run_until(true, None, |p| p.got_close_notify && p.tcp_eof);
    assert_eq!(out, Outcome::Done);
    assert_eq!(p.received, total);
}

#[test]
fn tls_idle_connections_stay_small() {
    // After the handshake an idle TLS connection keeps only what rustls needs: 200 of them
    // must cost the server well under 50 KiB each.
    let pki = TestPki::generate();
    let server = serve_tls(&pki, &[], &[]);
    let addr = server.sockaddr("tls");
    let cfg = trusting(&pki);
    // Warm up allocator pools with one connection, then measure.
    let mut warm = Client::connect(addr, &cfg, "localhost");
    assert_eq!(warm.echo(b"warm").unwrap(), b"warm");
    let base = server.rss_kib();
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = Client::connect(addr, &cfg, "localhost");
        // A round trip proves the server finished its side (and sent its tickets).
        let msg = format!("idle {i}");
        assert_eq!(c.echo(msg.as_bytes()).unwrap(), msg.as_bytes());
        clients.push(c);
    }
    let grown_kib = server.rss_kib().saturating_sub(base);
    println!("200 idle TLS connections: +{grown_kib} KiB server RSS");
    assert!(
        grown_kib < 200 * 50,
        "200 idle TLS connections cost {grown_kib} KiB"
    );
    // They all still work.
    for (i, c) in clients.iter_mut().enumerate().step_by(37) {
        let msg = format!("still {i}");
        assert_eq!(c.echo(msg.as_bytes()).unwrap(), msg.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Bad configuration
// ---------------------------------------------------------------------------------------

#[test]
fn tls_bad_config_fails_before_binding_with_one_line_naming_the_file() {
    let pki = TestPki::generate();
    let missing = pki.dir.join("missing.pem");
    let no_cert = pki.dir.join("no-cert.pem");
    std::fs::write(&no_cert, "this file holds no certificate\n").unwrap();

    // (case, --cert, --key, --client-ca, the file the message must name)
    let cases: [(&str, &Path, &Path, Option<&Path>, &Path); 5] = [
        (
            "missing cert file",
            &missing,
            &pki.server_key,
            None,
            &missing,
        ),
        (
            "cert file without a certificate",
            &no_cert,
            &pki.server_key,
            None,
            &no_cert,
        ),
        (
            "key not matching the cert",
            &pki.server_chain,
            &pki.client_key,
            None,
            &pki.client_key,
        ),
        (
            "missing key file",
            &pki.server_chain,
            &missing,
            None,
            &missing,
        ),
        (
            "missing client CA file",
            &pki.server_chain,
            &pki.server_key,
            Some(&missing),
            &missing,
        ),
    ];
    for (case, cert, key, client_ca, named) in cases {
        // A Unix listener next to the TLS one shows whether anything was bound: binding it
        // would create the socket file.
        let sock = common::temp_sock("tls-badcfg");
        let sock_s = path_str(&sock);
        let mut args = vec![
            "serve",
            "--unix",
            sock_s,
            "--tls",
            "127.0.0.1:0",
            "--cert",
            path_str(cert),
            "--key",
            path_str(key),
        ];
        if let Some(ca) = client_ca {
            args.extend(["--client-ca", path_str(ca)]);
        }
        let (status, stdout, stderr) = common::run_bounded(&args, None, DEADLINE);
        assert!(!status.success(), "{case}: exit status {status}");
        assert!(stdout.is_empty(), "{case}: printed {stdout:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{case}: stderr {stderr:?}");
        assert!(
            lines[0].starts_with("echoloop: error: "),
            "{case}: {stderr:?}"
        );
        assert!(
            lines[0].contains(path_str(named)),
            "{case}: {:?} does not name {}",
            lines[0],
            named.display()
        );
        assert!(!sock.exists(), "{case}: the Unix listener was bound");
    }
}

// ---------------------------------------------------------------------------------------
// Library level: both TLS ends in one in-process loop
// ---------------------------------------------------------------------------------------

/// What the in-process client saw.
#[derive(Debug, Default)]
struct Seen {
    opened: bool,
    received: Vec<u8>,
    closed: Option<String>,
    clean: bool,
}

/// Sends `msg` once the handshake is done, closes when it has all come back, and stops the
/// loop when the connection is gone.
struct EchoCheck {
    msg: Vec<u8>,
    seen: Rc<RefCell<Seen>>,
}

impl Handler for EchoCheck {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        self.seen.borrow_mut().opened = true;
        ctx.send(&self.msg);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        let mut seen = self.seen.borrow_mut();
        seen.received.extend_from_slice(data);
        if seen.received.len() >= self.msg.len() {
            ctx.close();
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, reason: &CloseReason) {
        let mut seen = self.seen.borrow_mut();
        seen.closed = Some(reason.to_string());
        seen.clean = reason.is_clean();
        ctx.stop_loop(Duration::from_secs(2));
    }
}

/// A loop serving TLS echo on 127.0.0.1 with one client connection to it from the same loop;
/// runs until the client stops the loop.
fn run_loop_client(
    pki: &TestPki,
    client: Arc<ClientConfig>,
    name: &str,
    msg: Vec<u8>,
) -> (Seen, echoloop::Stats) {
    let server = server_with_test_cert(pki);
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_secs(5);
    let mut el = EventLoop::new(config).unwrap();
    let bound = el
        .listen(
            &Endpoint::Inet("127.0.0.1:0".parse().unwrap()),
            ListenKind::Tls(server),
            || Box::new(Echo),
        )
        .unwrap();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let opts = ConnectOptions::new()
        .timeout(Duration::from_secs(10))
        .tls(client, server_name(name).unwrap());
    el.connect(
        &bound.addr,
        opts,
        Box::new(EchoCheck {
            msg,
            seen: Rc::clone(&seen),
        }),
    );
    drive(&mut el, &seen, DEADLINE);
    let stats = el.stats();
    drop(el);
    let seen = Rc::try_unwrap(seen).unwrap().into_inner();
    (seen, stats)
}

#[test]
fn tls_loop_client_and_server_in_one_loop_echo() {
    let pki = TestPki::generate();
    let msg = pattern_vec(0, (MIB + 12_345) as usize);
    let (seen, stats) = run_loop_client(&pki, trusting(&pki), "localhost", msg.clone());
    assert!(seen.opened, "client handshake never finished: {seen:?}");
    assert!(
        seen.received == msg,
        "echo differs ({} bytes back)",
        seen.received.len()
    );
    assert!(seen.clean, "client closed with {:?}", seen.closed);
    assert_eq!(stats.tls_handshakes_ok, 2, "both ends: {stats:?}");
    assert_eq!(stats.tls_handshakes_failed, 0, "{stats:?}");
}

#[test]
fn tls_loop_client_rejects_wrong_server_name() {
    let pki = TestPki::generate();
    let (seen, stats) = run_loop_client(&pki, trusting(&pki), "example.com", b"never".to_vec());
    assert!(
        !seen.opened,
        "opened despite a certificate for another name"
    );
    let reason = seen.closed.expect("on_close called");
    assert!(reason.contains("TLS error"), "closed with {reason:?}");
    assert_eq!(stats.tls_handshakes_ok, 0, "{stats:?}");
    assert!(stats.tls_handshakes_failed >= 1, "{stats:?}");
}

#[test]
fn tls_loop_client_handshake_deadline_without_connect_timeout() {
    // A server that accepts TCP (the kernel does, from the backlog) but never answers the
    // ClientHello. The loop's handshake deadline must reap the client connection even when
    // no connect timeout was asked for.
    let pki = TestPki::generate();
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_millis(300);
    let opts = ConnectOptions::new().tls(trusting(&pki), server_name("localhost").unwrap());
    let (seen, took) = connect_to_silent_server(config, opts, Duration::from_secs(5));
    assert_handshake_timed_out(&seen);
    assert!(took >= Duration::from_millis(250));
}

#[test]
fn tls_loop_client_connect_timeout_covers_the_handshake() {
    let pki = TestPki::generate();
    let opts = ConnectOptions::new()
        .timeout(Duration::from_millis(300))
        .tls(trusting(&pki), server_name("localhost").unwrap());
    let (seen, _) = connect_to_silent_server(Config::default(), opts, DEADLINE);
    assert_handshake_timed_out(&seen);
}

/// Connects an [`EchoCheck`] client with `opts` from a loop built with `config` to a
/// listener that accepts TCP but never answers, and drives the loop until it stops (failing
/// after `limit`). Returns what the client saw and how long the driving took.
fn connect_to_silent_server(
    config: Config,
    opts: ConnectOptions,
    limit: Duration,
) -> (Seen, Duration) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut el = EventLoop::new(config).unwrap();
    let seen = Rc::new(RefCell::new(Seen::default()));
    el.connect(
        &Endpoint::Inet(silent.local_addr().unwrap()),
        opts,
        Box::new(EchoCheck {
            msg: b"never".to_vec(),
            seen: Rc::clone(&seen),
        }),
    );
    let start = Instant::now();
    drive(&mut el, &seen, limit);
    let took = start.elapsed();
    // The loop owns the client handler (and its clone of `seen`) until it is dropped.
    drop(el);
    drop(silent);
    (Rc::try_unwrap(seen).unwrap().into_inner(), took)
}

/// The client never opened and was closed by the handshake deadline.
fn assert_handshake_timed_out(seen: &Seen) {
    assert!(!seen.opened);
    let reason = seen.closed.as_deref().unwrap_or_default();
    assert!(
        reason.contains("handshake timed out"),
        "closed with {reason:?}"
    );
}

/// Runs `el` until it stops, failing after `limit`.
fn drive(el: &mut EventLoop, seen: &Rc<RefCell<Seen>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while el.run_once(Some(Duration::from_millis(100))).unwrap() {
        assert!(
            Instant::now() < deadline,
            "loop still running after {limit:?}: {:?}",
            seen.borrow()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Helpers: servers, configs, logs
// ---------------------------------------------------------------------------------------

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The server side of the in-process loops: the test CA's certificate for localhost, no
/// client certificates asked.
fn server_with_test_cert(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    server_config(&ServerTlsOptions {
        cert_chain: &pki.server_chain,
        key: &pki.server_key,
        client_ca: None,
    })
    .unwrap()
}

/// A client trusting the test CA, default protocol versions (TLS 1.3 preferred).
fn trusting(pki: &TestPki) -> Arc<ClientConfig> {
    client_config(&ClientTlsOptions {
        ca: Some(&pki.ca_pem),
        client_cert: None,
    })
    .unwrap()
}

/// A client trusting the test CA and presenting a client certificate: the one the test CA
/// issued, or (`other`) the one from the unrelated CA.
fn with_client_cert(pki: &TestPki, other: bool) -> Arc<ClientConfig> {
    let (chain, key): (&PathBuf, &PathBuf) = if other {
        (&pki.other_client_chain, &pki.other_client_key)
    } else {
        (&pki.client_chain, &pki.client_key)
    };
    client_config(&ClientTlsOptions {
        ca: Some(&pki.ca_pem),
        client_cert: Some((chain, key)),
    })
    .unwrap()
}

/// A client trusting the test CA that offers only TLS 1.2.
fn tls12_only(pki: &TestPki) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&pki.ca_pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The first flight of a real rustls client: a complete ClientHello record.
fn client_hello(pki: &TestPki) -> Vec<u8> {
    let mut conn = ClientConnection::new(trusting(pki), server_name("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    assert!(out.len() > 100, "a whole ClientHello");
    out
}

/// The rustls error inside an I/O error from a rustls client, if that is what it is.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Waits until the server has logged (at debug) how the connection from our `port` ended,
/// and returns that reason. The server logs `#N open from ADDR:PORT` and, later,
/// `#N closed: REASON`.
fn logged_close_reason(server: &Proc, port: u16) -> String {
    let deadline = Instant::now() + DEADLINE;
    let from = format!(":{port}");
    loop {
        let log = server.stderr_text();
        let lines: Vec<&str> = log.lines().collect();
        // The last connection from this port (ports may be reused within one server's life).
        let opened = lines
            .iter()
            .rposition(|l| l.contains(" open from ") && l.trim_end().ends_with(&from));
        if let Some(at) = opened {
            let words: Vec<&str> = lines[at].split_whitespace().collect();
            let id = words
                .iter()
                .position(|w| *w == "open")
                .and_then(|i| i.checked_sub(1))
                .map(|i| words[i])
                .expect("connection id before 'open from'");
            let closed = lines[at + 1..].iter().find_map(|l| {
                let mut w = l.split_whitespace().skip_while(|w| *w != id);
                match (w.next(), w.next()) {
                    (Some(_), Some("closed:")) => Some(w.collect::<Vec<_>>().join(" ")),
                    _ => None,
                }
            });
            if let Some(reason) = closed {
                return reason;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no close logged for the connection from port {port}; stderr:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Helpers: a blocking client
// ---------------------------------------------------------------------------------------

/// A blocking TLS client: one request, one answer. Every read and write is bounded by
/// socket timeouts, so a silent server fails the test instead of hanging it.
struct Client {
    conn: ClientConnection,
    sock: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr, cfg: &Arc<ClientConfig>, name: &str) -> Client {
        Client::try_connect(addr, cfg, name)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {name}: {e}"))
    }

    fn try_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>, name: &str) -> io::Result<Client> {
        Client::handshake(TcpStream::connect(addr)?, cfg, name)
    }

    fn handshake(sock: TcpStream, cfg: &Arc<ClientConfig>, name: &str) -> io::Result<Client> {
        sock.set_read_timeout(Some(DEADLINE))?;
        sock.set_write_timeout(Some(DEADLINE))?;
        let conn = ClientConnection::new(Arc::clone(cfg), server_name(name).unwrap()).unwrap();
        let mut c = Client { conn, sock };
        while c.conn.is_handshaking() {
            c.conn.complete_io(&mut c.sock)?;
        }
        Ok(c)
    }

    fn stream(&mut self) -> rustls::Stream<'_, ClientConnection, TcpStream> {
        rustls::Stream::new(&mut self.conn, &mut self.sock)
    }

    /// Sends `msg` and reads back as many bytes.
    fn echo(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = self.stream();
        s.write_all(msg)?;
        s.flush()?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("sock", &self.sock).finish()
    }
}

/// True once the peer's close_notify has been processed (rustls reports it as "peer has
/// closed"; a bare TCP EOF does not count).
fn peer_sent_close_notify(conn: &mut ClientConnection) -> bool {
    conn.process_new_packets()
        .map(|state| state.peer_has_closed())
        .unwrap_or(false)
}

/// Blocks until `sock` has bytes to read (without reading them), failing after `DEADLINE`.
fn wait_readable(sock: &TcpStream) {
    assert!(
        poll_fd(sock, libc::POLLIN, DEADLINE) & libc::POLLIN != 0,
        "nothing arrived"
    );
}

/// `poll(2)` on one socket: the events that are ready, or 0 after `timeout`.
fn poll_fd(sock: &TcpStream, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1;
    // the descriptor is owned by `sock`, which outlives the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        return 0;
    }
    pfd.revents
}

// ---------------------------------------------------------------------------------------
// Helpers: a non-blocking client that sends and receives at once
// ---------------------------------------------------------------------------------------

/// Period of the test pattern: a prime, so a lost, repeated or reordered TLS record (16 KiB)
/// or socket chunk shifts the pattern and is caught.
const PERIOD: usize = 65_521;

/// Pseudo-random bytes, two periods long so any window of up to `PERIOD` bytes is one slice.
fn pattern_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x: u32 = 0x9E37_79B9;
        let period: Vec<u8> = (0..PERIOD)
            .map(|_| {
                // xorshift32
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        [period.as_slice(), period.as_slice()].concat()
    })
}

/// The pattern's bytes at stream offsets `at..at + len` (`len <= PERIOD`).
fn pattern(at: u64, len: usize) -> &'static [u8] {
    let start = (at % PERIOD as u64) as usize;
    &pattern_table()[start..start + len]
}

fn pattern_vec(at: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut off = at;
    while v.len() < len {
        let n = (len - v.len()).min(PERIOD);
        v.extend_from_slice(pattern(off, n));
        off += n as u64;
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The condition became true.
    Done,
    /// Nothing moved for the stall period.
    Stalled,
}

/// A TLS client over a non-blocking socket, driven by hand like the server drives its own:
/// sends `total` pattern bytes, optionally followed by close_notify and FIN, and checks
/// every byte it receives against the same pattern.
struct Pump {
    sock: TcpStream,
    conn: ClientConnection,
    total: u64,
    /// Plaintext handed to rustls.
    sent: u64,
    /// Plaintext received and verified.
    received: u64,
    /// Send close_notify and shut down our write side after the last byte.
    close_after_send: bool,
    close_notify_queued: bool,
    /// close_notify flushed and FIN sent.
    write_closed: bool,
    got_close_notify: bool,
    tcp_eof: bool,
    /// TCP ended without close_notify.
    unclean_eof: bool,
    rbuf: Vec<u8>,
}

impl Pump {
    /// Connects and finishes the handshake (blocking), then switches to non-blocking.
    fn connect(addr: SocketAddr, cfg: &Arc<ClientConfig>, total: u64) -> Pump {
        let Client { conn, sock } = Client::connect(addr, cfg, "localhost");
        sock.set_nonblocking(true).unwrap();
        Pump {
            sock,
            conn,
            total,
            sent: 0,
            received: 0,
            close_after_send: false,
            close_notify_queued: false,
            write_closed: false,
            got_close_notify: false,
            tcp_eof: false,
            unclean_eof: false,
            rbuf: vec![0u8; 256 * 1024],
        }
    }

    /// Does all the I/O possible without blocking; returns whether any byte moved.
    fn step(&mut self, read: bool) -> bool {
        let mut moved = false;
        // Write: keep rustls's outgoing buffer small by encrypting only when it is empty.
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.sock) {
                    Ok(n) => moved |= n > 0,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write after {} bytes: {e}", self.sent),
                }
            }
            if self.conn.wants_write() {
                break; // the socket is full
            }
            if self.sent < self.total {
                let n = (self.total - self.sent).min(PERIOD as u64) as usize;
                let taken = self.conn.writer().write(pattern(self.sent, n)).unwrap();
                self.sent += taken as u64;
                if taken == 0 {
                    break;
                }
            } else if self.close_after_send && !self.close_notify_queued {
                self.conn.send_close_notify();
                self.close_notify_queued = true;
            } else {
                break;
            }
        }
        if self.close_notify_queued && !self.write_closed && !self.conn.wants_write() {
            self.sock.shutdown(Shutdown::Write).unwrap();
            self.write_closed = true;
        }
        if !read {
            return moved;
        }
        // Read: ciphertext in, plaintext out and checked, until the socket is empty.
        while !self.tcp_eof {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => self.tcp_eof = true,
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read after {} bytes: {e}", self.received),
            }
            if let Err(e) = self.conn.process_new_packets() {
                panic!("TLS error after {} bytes received: {e}", self.received);
            }
            self.drain_plaintext();
        }
        moved
    }

    fn drain_plaintext(&mut self) {
        loop {
            match self.conn.reader().read(&mut self.rbuf) {
                Ok(0) => {
                    self.got_close_notify = true;
                    return;
                }
                Ok(n) => {
                    let mut off = 0;
                    while off < n {
                        let len = (n - off).min(PERIOD);
                        let want = pattern(self.received, len);
                        if &self.rbuf[off..off + len] != want {
                            panic!(
                                "echo differs within bytes {}..{}",
                                self.received,
                                self.received + len as u64
                            );
                        }
                        self.received += len as u64;
                        off += len;
                    }
                    assert!(self.received <= self.sent, "more echoed than sent");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.unclean_eof = true;
                    return;
                }
                Err(e) => panic!("plaintext read: {e}"),
            }
        }
    }

    /// Steps until `done`, or until nothing has moved for `stall`; fails after `DEADLINE`.
    fn run_until(
        &mut self,
        read: bool,
        stall: Option<Duration>,
        done: impl Fn(&Pump) -> bool,
    ) -> Outcome {
        let deadline = Instant::now() + DEADLINE;
        let mut last_move = Instant::now();
        loop {
            if self.step(read) {
                last_move = Instant::now();
            }
            if done(self) {
                return Outcome::Done;
            }
            assert!(
                !self.tcp_eof || self.got_close_notify,
                "TCP ended without close_notify after {} of {} bytes",
                self.received,
                self.total
            );
            let now = Instant::now();
            if let Some(s) = stall {
                if now - last_move >= s {
                    return Outcome::Stalled;
                }
            }
            assert!(
                now < deadline,
                "no finish in time: sent {}, received {} of {}",
                self.sent,
                self.received,
                self.total
            );
            let mut events = 0;
            if read && !self.tcp_eof {
                events |= libc::POLLIN;
            }
            if self.conn.wants_write() {
                events |= libc::POLLOUT;
            }
            // Short waits: stall detection and the deadline are checked between them.
            poll_fd(&self.sock, events, Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fair handshakes (issue 23): a per-turn budget for handshake steps
// ---------------------------------------------------------------------------------------

/// What one loop did with `HELLOS` clients' hellos and one plain ping, all waiting before
/// its first turn.
struct FairRun {
    /// How many clients had the server's first flight when the ping's echo came back.
    answered_at_echo: usize,
    /// Clients in the order their first flight arrived (one turn at a time).
    order: Vec<usize>,
    stats: echoloop::Stats,
}

const HELLOS: usize = 40;

/// A loop with a TLS and a plain TCP echo listener and `budget` per turn for handshake
/// steps. `HELLOS` raw TCP clients send a rustls ClientHello each, then one plain client
/// sends a ping; the loop is run one turn at a time. Then every handshake is completed.
fn fair_run(pki: &TestPki, budget: Duration) -> FairRun {
    let server = server_with_test_cert(pki);
    let mut config = Config::default();
    config.handshake_budget = budget;
    let mut el = EventLoop::new(config).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let tls = el
        .listen(&any, ListenKind::Tls(server), || Box::new(Echo))
        .unwrap();
    let tcp = el.listen(&any, ListenKind::Tcp, || Box::new(Echo)).unwrap();
    let (Endpoint::Inet(tls_addr), Endpoint::Inet(tcp_addr)) = (tls.addr, tcp.addr) else {
        panic!("inet listeners");
    };
    let cfg = trusting(pki);
    let mut clients: Vec<(TcpStream, ClientConnection)> = (0..HELLOS)
        .map(|_| {
            let mut sock = TcpStream::connect(tls_addr).unwrap();
            let mut conn =
                ClientConnection::new(Arc::clone(&cfg), server_name("localhost").unwrap()).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            sock.set_nonblocking(true).unwrap();
            (sock, conn)
        })
        .collect();
    let mut plain = TcpStream::connect(tcp_addr).unwrap();
    plain.write_all(b"ping").unwrap();
    plain.set_nonblocking(true).unwrap();

    // Loopback delivers as the write returns: every hello and the ping wait for the loop.
    let has_bytes = |s: &TcpStream| s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    let mut answered = [false; HELLOS];
    let mut order = Vec::new();
    let mut answered_at_echo = None;
    let deadline = Instant::now() + DEADLINE;
    while order.len() < HELLOS || answered_at_echo.is_none() {
        assert!(Instant::now() < deadline, "stuck: {} answered", order.len());
        el.run_once(Some(Duration::from_millis(20))).unwrap();
        for (i, (sock, _)) in clients.iter().enumerate() {
            if !answered[i] && has_bytes(sock) {
                answered[i] = true;
                order.push(i);
            }
        }
        if answered_at_echo.is_none() && has_bytes(&plain) {
            let mut buf = [0u8; 4];
            plain.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            answered_at_echo = Some(order.len());
        }
    }
    // Every client finishes its handshake: nobody waits in line for ever.
    while clients.iter().any(|(_, c)| c.is_handshaking()) {
        assert!(Instant::now() < deadline, "handshakes did not finish");
        el.run_once(Some(Duration::from_millis(1))).unwrap();
        for (sock, conn) in clients.iter_mut() {
            match conn.read_tls(sock) {
                Ok(_) => {
                    conn.process_new_packets().unwrap();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client: {e}"),
            }
            while conn.wants_write() {
                conn.write_tls(sock).unwrap();
            }
        }
    }
    // The server counts a handshake when the client's Finished arrives.
    while el.stats().tls_handshakes_ok < HELLOS as u64 {
        assert!(
            Instant::now() < deadline,
            "server did not count: {:?}",
            el.stats()
        );
        el.run_once(Some(Duration::from_millis(1))).unwrap();
    }
    FairRun {
        answered_at_echo: answered_at_echo.unwrap_or(HELLOS),
        order,
        stats: el.stats(),
    }
}

#[test]
fn tls_handshake_steps_past_the_turn_budget_wait_behind_plain_echo() {
    let pki = TestPki::generate();
    // A budget smaller than any step: one handshake step per turn.
    let fair = fair_run(&pki, Duration::from_micros(1));
    assert!(
        fair.answered_at_echo <= 2,
        "the ping waited behind {} handshakes",
        fair.answered_at_echo
    );
    // First come, first served: the line is served in the order the hellos came.
    assert_eq!(
        fair.order,
        (0..HELLOS).collect::<Vec<_>>(),
        "order of service"
    );
    assert_eq!(
        fair.stats.tls_handshakes_ok, HELLOS as u64,
        "{:?}",
        fair.stats
    );
    assert_eq!(fair.stats.tls_handshakes_failed, 0, "{:?}", fair.stats);

    // Without a budget the same ping waits behind (nearly) every handshake: what the
    // budget is for, and proof that this test can tell.
    let unfair = fair_run(&pki, Duration::MAX);
    assert!(
        unfair.answered_at_echo >= HELLOS / 2,
        "without a budget only {} handshakes went first",
        unfair.answered_at_echo
    );
}
