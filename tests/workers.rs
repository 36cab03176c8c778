//! `serve --workers N`: several reactors sharing addresses through SO_REUSEPORT.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::Duration;

use common::Proc;

/// Parses "worker N: A connections accepted, D datagrams received" lines.
fn per_worker(stderr: &str) -> Vec<(u64, u64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("worker ").nth(1)?;
            let (_, counts) = rest.split_once(": ")?;
            let mut nums = counts
                .split_whitespace()
                .filter_map(|w| w.parse::<u64>().ok());
            Some((nums.next()?, nums.next()?))
        })
        .collect()
}

#[test]
fn workers_share_tcp_and_udp_and_stop_together() {
    let mut p = Proc::serve(&[
        "--workers",
        "2",
        "--tcp",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
    ]);
    // One listening line per listener, not per worker.
    assert_eq!(p.listeners.len(), 2, "{:?}", p.listeners);
    let tcp = p.sockaddr("tcp");
    let udp = p.sockaddr("udp");

    // Every connection is served, whichever worker the kernel hands it to.
    const CONNS: u64 = 64;
    for i in 0..CONNS {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let msg = format!("connection {i}");
        s.write_all(msg.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    // UDP from several source ports: each socket hashes to one worker.
    const SOCKS: u64 = 16;
    for i in 0..SOCKS {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(common::DEADLINE)).unwrap();
        u.send_to(&[i as u8; 32], udp).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = u.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[i as u8; 32]);
    }
    // One SIGTERM stops every worker gracefully.
    // An idle client that behaves: it reads the server's EOF, then closes.
    let mut idle = TcpStream::connect(tcp).unwrap();
    idle.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    idle.set_read_timeout(Some(common::DEADLINE)).unwrap();
    idle.read_exact(&mut one).unwrap();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest);
        rest
    });
    p.signal("TERM");
    let st = p.wait_exit(Duration::from_secs(5));
    assert!(st.success(), "exit {st:?}; stderr:\n{}", p.stderr_text());
    assert!(reader.join().unwrap().is_empty());
    let counts = per_worker(&p.stderr_text());
    assert_eq!(counts.len(), 2, "stderr:\n{}", p.stderr_text());
    let accepted: u64 = counts.iter().map(|c| c.0).sum();
    let datagrams: u64 = counts.iter().map(|c| c.1).sum();
    assert_eq!(accepted, CONNS + 1);
    assert_eq!(datagrams, SOCKS);
    // 65 connections from distinct source ports all hashing to one worker would be a
    // 1 in 2^64 event: both must have taken some.
    assert!(
        counts.iter().all(|c| c.0 > 0),
        "one worker took every connection: {counts:?}"
    );
}

#[test]
fn workers_bad_count_is_an_error() {
    let (st, _, err) = common::run(&["serve", "--workers", "0", "--tcp", "127.0.0.1:0"], None);
    assert!(!st.success());
    assert!(err.contains("--workers"), "{err}");
}
