//! Counting allocations on the reactor thread, shared by `tests/alloc.rs` (which asserts
//! the counts) and `benches/micro.rs` (which prints them per echoed message).
//!
//! A counting global allocator tallies allocations made on the reactor's thread only (a
//! thread-local switch), while a client on another thread ping-pongs through it and turns
//! counting on for the steady state only. Include with `#[path]`; it installs the global
//! allocator of whatever crate includes it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echoloop::{Config, Echo, EchoDatagram, Endpoint, EventLoop, ListenKind};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// True on the reactor thread (only its allocations are counted).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// bumps a counter, which neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) && COUNT_NOW.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's; forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) && COUNT_NOW.load(Ordering::SeqCst) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`; forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `client` against a loop set up by `setup` on another thread; counts the loop
/// thread's allocations between the client's `mark` signals.
pub fn count_allocs(
    setup: impl FnOnce(&mut EventLoop) -> Endpoint + Send + 'static,
    client: impl FnOnce(SocketAddr, &dyn Fn(bool)) + Send + 'static,
) -> u64 {
    // The switch and the tally are process-wide, and the test harness runs tests on
    // several threads: while one test counted, another's reactor (setting up, shaking
    // hands) was counted too. One count at a time keeps each figure its own.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ALLOCS.store(0, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let reactor = std::thread::spawn(move || {
        let mut el = EventLoop::new(Config::default()).unwrap();
        let addr = setup(&mut el);
        tx.send((addr, el.stop_handle())).unwrap();
        // The client switches counting on and off through COUNT_NOW; it stops counting
        // before it asks the loop to stop, so shutdown work is not counted.
        COUNTING.with(|c| c.set(true));
        el.run().unwrap();
        COUNTING.with(|c| c.set(false));
    });
    let (addr, stop) = rx.recv().unwrap();
    let Endpoint::Inet(addr) = addr else {
        panic!("expected an IP address, got {addr}")
    };
    let mark = |on: bool| COUNT_NOW.store(on, Ordering::SeqCst);
    client(addr, &mark);
    stop.stop(Duration::from_secs(1));
    reactor.join().unwrap();
    ALLOCS.swap(0, Ordering::SeqCst)
}

/// 64-byte ping-pongs over a stream: a warm-up (first-use allocations, buffers growing, are
/// not steady state), then `n` counted ones between `mark(true)` and `mark(false)`.
pub fn stream_ping_pong(s: &mut (impl Read + Write), n: u64, mark: &dyn Fn(bool)) {
    let mut buf = [0u8; 64];
    let mut ping = |i: u64| {
        let msg = [i as u8; 64];
        s.write_all(&msg).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    };
    for i in 0..200 {
        ping(i);
    }
    mark(true);
    for i in 0..n {
        ping(i);
    }
    mark(false);
}

static COUNT_NOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An echo listener of `kind` on a free loopback port.
fn echo_listener(el: &mut EventLoop, kind: ListenKind) -> Endpoint {
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    el.listen(&any, kind, || Box::new(Echo)).unwrap().addr
}

/// Allocations on the reactor thread during `n` steady-state 64-byte TCP echoes.
pub fn tcp_echo_allocs(n: u64) -> u64 {
    count_allocs(
        |el| echo_listener(el, ListenKind::Tcp),
        move |addr, mark| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            stream_ping_pong(&mut s, n, mark);
        },
    )
}

/// Allocations on the reactor thread during `rounds` rounds of `burst` 64-byte UDP
/// datagrams, each round sent whole before any echo is read. A burst of 1 is ping-pong
/// (the loop reads singly); bursts of 32 make the queue run deep, so the loop receives and
/// replies in batches (`recvmmsg`/`sendmmsg`).
pub fn udp_echo_allocs(burst: u64, rounds: u64) -> u64 {
    count_allocs(
        |el| {
            el.bind_udp("127.0.0.1:0".parse().unwrap(), Box::new(EchoDatagram))
                .unwrap()
                .addr
        },
        move |addr, mark| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 128];
            let mut round = |r: u64| {
                for i in 0..burst {
                    s.send_to(&[(r + i) as u8; 64], addr).unwrap();
                }
                for i in 0..burst {
                    let (got, _) = s.recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..got], &[(r + i) as u8; 64]);
                }
            };
            // Warm-up: about 200 datagrams.
            for r in 0..200_u64.div_ceil(burst) {
                round(r);
            }
            mark(true);
            for r in 0..rounds {
                round(r);
            }
            mark(false);
        },
    )
}

/// Allocations on the reactor thread during `n` steady-state 64-byte TLS echoes; the client
/// trusts `client` and asks for `localhost`.
pub fn tls_echo_allocs(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    n: u64,
) -> u64 {
    count_allocs(
        move |el| echo_listener(el, ListenKind::Tls(server)),
        move |addr, mark| {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(client, name).unwrap();
            let sock = TcpStream::connect(addr).unwrap();
            sock.set_nodelay(true).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            stream_ping_pong(&mut s, n, mark);
        },
    )
}
