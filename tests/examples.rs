//! Runs every example the way its first line says, against real loopback sockets.
//! `cargo test` builds the examples before running this file.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
