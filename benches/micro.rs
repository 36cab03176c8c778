//! cargo bench --bench micro
//!
//! Micro benchmarks of the hot paths, with criterion: the send buffer's push/flush cycle
//! (partial writes), and one echo round trip through an in-process loop for plain TCP and
//! for TLS (the session's encrypt and decrypt on both ends). First it prints the reactor
//! thread's allocations per echoed message in steady state (target: zero), counted by the
//! allocator that `tests/alloc.rs` uses to assert them.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, mpsc};
use std::time::Duration;

mod common;
#[path = "../tests/common/counting.rs"]
mod counting;
// The send buffer is the library's own business, not its API: the bench compiles the
// file itself (it uses only `std`) rather than making the module public for it.
#[path = "../src/sendbuf.rs"]
// Its unit tests come along, unused in a bench built with `cargo test`.
#[allow(dead_code, unused_imports)]
mod sendbuf;
use sendbuf::{SendBuf, write_until_blocked};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind, StopHandle};

fn sendbuf(c: &mut Criterion) {
    let mut g = c.benchmark_group("sendbuf");
    let chunk = vec![7u8; 512];
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("push_then_flush_in_two_partial_writes_512B", |b| {
        let mut buf = SendBuf::new();
        b.iter(|| {
            buf.push(&chunk);
            // A kernel that takes 300 bytes, then blocks; then takes the rest.
            let mut budget = 300usize;
            // As the loop does it: offer the unsent bytes, then drop what went.
            let (sent, _) = write_until_blocked(buf.as_slice(), |d| {
                if budget == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = d.len().min(budget);
                budget -= n;
                Ok(n)
            });
            buf.consume(sent);
            let (sent, _) = write_until_blocked(buf.as_slice(), |d| Ok(d.len()));
            buf.consume(sent);
            assert!(buf.is_empty());
        });
    });
    g.finish();
}

/// Starts an echo loop on its own thread; returns its address and stop handle.
fn start_loop(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (
    std::net::SocketAddr,
    StopHandle,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut el = EventLoop::new(Config::default()).expect("loop");
        let kind = match tls {
            Some(cfg) => ListenKind::Tls(cfg),
            None => ListenKind::Tcp,
        };
        let b = el
            .listen(
                &Endpoint::Inet("127.0.0.1:0".parse().expect("addr")),
                kind,
                || Box::new(Echo),
            )
            .expect("listen");
        tx.send((b.addr, el.stop_handle())).expect("send");
        el.run().expect("run");
    });
    let (addr, stop) = rx.recv().expect("loop started");
    let Endpoint::Inet(addr) = addr else {
        panic!("inet")
    };
    (addr, stop, h)
}

fn echo_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("echo_round_trip");
    g.measurement_time(Duration::from_secs(3));

    let (addr, stop, h) = start_loop(None);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    g.throughput(Throughput::Elements(1));
    g.bench_function("tcp_64B", |b| {
        b.iter(|| {
            s.write_all(&msg).expect("write");
            s.read_exact(&mut back).expect("read");
        })
    });
    drop(s);
    stop.stop(Duration::from_secs(1));
    let _ = h.join();

    let pki = tls_pki();
    let (addr, stop, h) = start_loop(Some(pki.0));
    let conn = rustls::ClientConnection::new(
        pki.1,
        rustls::pki_types::ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let msg = [2u8; 1024];
    let mut back = [0u8; 1024];
    g.bench_function("tls_1KiB", |b| {
        b.iter(|| {
            tls.write_all(&msg).expect("write");
            tls.read_exact(&mut back).expect("read");
        })
    });
    drop(tls);
    stop.stop(Duration::from_secs(1));
    let _ = h.join();
    g.finish();
}

/// A server config and a client config that trusts it, made in memory.
fn tls_pki() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let pki = common::Pki::generate("micro");
    let server = echoloop::tls_config::server_config(&echoloop::tls_config::ServerTlsOptions {
        cert_chain: &pki.chain,
        key: &pki.key,
        client_ca: None,
    })
    .expect("server config");
    let client = echoloop::tls_config::client_config(&echoloop::tls_config::ClientTlsOptions {
        ca: Some(&pki.ca),
        client_cert: None,
    })
    .expect("client config");
    (server, client)
}

/// Not timed: counts the reactor thread's allocations over steady-state echoes and prints
/// them per message.
fn allocations(_: &mut Criterion) {
    const N: u64 = 2000;
    let per = |allocs: u64, messages: u64| allocs as f64 / messages as f64;
    let (server, client) = tls_pki();
    println!("allocations per echoed message on the reactor thread (steady state, {N} messages):");
    println!(
        "  tcp 64 B ping-pong          {:.3}",
        per(counting::tcp_echo_allocs(N), N)
    );
    println!(
        "  udp 64 B ping-pong          {:.3}",
        per(counting::udp_echo_allocs(1, N), N)
    );
    let bursts = N / 32;
    println!(
        "  udp 64 B bursts of 32       {:.3}  (batched: recvmmsg/sendmmsg)",
        per(counting::udp_echo_allocs(32, bursts), bursts * 32)
    );
    println!(
        "  tls 64 B ping-pong          {:.3}  (inside rustls's buffered record queues)",
        per(counting::tls_echo_allocs(server, client, N), N)
    );
}

criterion_group!(benches, allocations, sendbuf, echo_round_trip);
criterion_main!(benches);
