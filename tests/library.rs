//! The library API used directly, in process, on loopback sockets.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use echoloop::{
    CloseReason, Config, ConnectOptions, Ctx, Echo, Endpoint, EventLoop, Handler, ListenKind,
};

/// Records how a connection ended and when.
struct Watcher {
    ended: Rc<RefCell<Option<(Instant, String)>>>,
}

impl Handler for Watcher {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    fn on_close(&mut self, ctx: &mut Ctx<'_>, reason: &CloseReason) {
        *self.ended.borrow_mut() = Some((Instant::now(), reason.to_string()));
        ctx.stop_loop(Duration::ZERO);
    }
}

/// A listener whose accept queue is full: further connects get no answer to their SYN and
/// stay pending, which is how a connect timeout can be tested on loopback.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 still admits one or two, depending on the kernel).
    let mut fill = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fill.push(TcpStream::from(s));
    }
    (l, fill, addr)
}

/// A TCP echo listener on a free loopback port; returns its address.
fn listen_echo(el: &mut EventLoop) -> SocketAddr {
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    match el
        .listen(&any, ListenKind::Tcp, || Box::new(Echo))
        .unwrap()
        .addr
    {
        Endpoint::Inet(addr) => addr,
        other => panic!("not an IP address: {other}"),
    }
}

#[test]
fn loop_connect_timeout_counts_from_the_call_not_the_last_wakeup() {
    let (_l, _fill, addr) = black_hole();
    let mut el = EventLoop::new(Config::default()).unwrap();
    // The loop has not run for a while (a slow resolver, say) when connect is called.
    std::thread::sleep(Duration::from_millis(300));
    let ended = Rc::new(RefCell::new(None));
    let start = Instant::now();
    let opts = ConnectOptions::new().timeout(Duration::from_millis(500));
    el.connect(
        &Endpoint::Inet(addr),
        opts,
        Box::new(Watcher {
            ended: Rc::clone(&ended),
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while el.run_once(Some(Duration::from_millis(50))).unwrap() && Instant::now() < deadline {}
    let (at, reason) = ended.borrow().clone().expect("connection ended");
    assert!(reason.contains("timed out"), "{reason}");
    let took = at - start;
    assert!(
        took >= Duration::from_millis(450),
        "timed out after {took:?}, before the 500 ms asked"
    );
}

#[test]
fn loop_zero_read_budget_and_inverted_marks_still_echo() {
    let mut config = Config::default();
    config.read_budget = 0;
    config.low_water = 1 << 20;
    config.high_water = 1024;
    let mut el = EventLoop::new(config).unwrap();
    let addr = listen_echo(&mut el);
    let stop = el.stop_handle();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let msg = vec![5u8; 256 * 1024];
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&msg).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        stop.stop(Duration::from_secs(1));
        back
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while el.run_once(Some(Duration::from_millis(50))).unwrap() {
        assert!(Instant::now() < deadline, "loop did not finish");
    }
    let back = client.join().unwrap();
    assert_eq!(back.len(), 256 * 1024);
    assert!(back.iter().all(|&b| b == 5));
}

#[test]
fn loop_stop_grace_counts_from_the_call() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = listen_echo(&mut el);
    // A client that never closes: the loop must wait out the grace, then force the close.
    let idle = TcpStream::connect(addr).unwrap();
    while el.stats().accepted == 0 {
        el.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // the loop sits idle, its clock stale
    let start = Instant::now();
    el.stop(Duration::from_millis(400));
    while el.run_once(Some(Duration::from_millis(50))).unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stop never finished"
        );
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "grace cut short: stopped after {took:?}"
    );
    drop(idle);
}
