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
    // A client that never reads what it is owed (an idle one, owed nothing, is closed at
    // once): the loop must wait out the grace, then force the close.
    let idle = flood_without_reading(addr, 8 << 20);
    while el.stats().bytes_in <= el.stats().bytes_out + (200 << 10) {
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

/// `run()` (no timeout of its own) after a stop with a long grace returns as soon as
/// nothing is owed: at once with no connections, and promptly when the only client is
/// idle and owed nothing. Not after sleeping to the grace deadline.
#[test]
fn loop_stop_with_nothing_owed_does_not_wait_out_the_grace() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let _ = listen_echo(&mut el);
    let start = Instant::now();
    el.stop(Duration::from_secs(20));
    el.run().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "an empty loop took {:?} to stop",
        start.elapsed()
    );

    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = listen_echo(&mut el);
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    while el.stats().bytes_out < 4 {
        el.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    idle.read_exact(&mut back).unwrap();
    let start = Instant::now();
    el.stop(Duration::from_secs(20));
    el.run().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a loop with one idle client took {:?} to stop",
        start.elapsed()
    );
}

// ----- The embedding API: loop state, other connections by id, threads, misuse -----

use std::io::ErrorKind;
use std::net::Shutdown;
use std::sync::mpsc;

use echoloop::{ConnError, ConnId, LoopCtx, TrySendError};

/// Runs turns until `done` says so, bounded in time.
fn run_until<S>(el: &mut EventLoop<S>, mut done: impl FnMut(&mut EventLoop<S>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(el) {
        assert!(Instant::now() < deadline, "condition not reached in time");
        if !el.run_once(Some(Duration::from_millis(20))).unwrap() {
            return;
        }
    }
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(s: &mut TcpStream) -> (usize, std::io::Result<()>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n,
            Err(e) => return (total, Err(e)),
        }
    }
}

/// Sends `size` bytes on open, then aborts in the same callback, then sends more.
struct SendThenAbort {
    size: usize,
}

impl Handler for SendThenAbort {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        ctx.send(&vec![7u8; self.size]);
        ctx.abort();
        ctx.send(b"after abort");
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
}

#[test]
fn loop_abort_with_output_owed_resets_the_peer() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || {
            Box::new(SendThenAbort { size: 8 << 20 })
        })
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let mut client = TcpStream::connect(addr).unwrap();
    run_until(&mut el, |el| el.stats().closed == 1);
    let (got, end) = read_all(&mut client);
    // Whatever part of the first send the kernel had taken may or may not arrive; the
    // end must be a reset, never a clean EOF after a silently cut stream.
    let err = end.expect_err("a reset, not EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got < 8 << 20, "got {got} bytes");
}

#[test]
fn loop_bytes_sent_after_abort_never_go_out() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || {
            Box::new(SendThenAbort { size: 0 })
        })
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let mut client = TcpStream::connect(addr).unwrap();
    run_until(&mut el, |el| el.stats().closed == 1);
    let (got, end) = read_all(&mut client);
    assert_eq!(got, 0, "nothing sent after abort may arrive");
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

/// A client that sends `total` bytes to an echo server and never reads a byte back.
fn flood_without_reading(addr: SocketAddr, total: usize) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0;
        // Stops when the server's window closes for good (the write blocks until the
        // reset) or when everything went.
        while sent < total {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => return,
            }
        }
    });
    s
}

#[test]
fn loop_idle_timeout_with_output_owed_resets_the_peer() {
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::from_millis(300));
    config.close_timeout = Duration::from_secs(30);
    let mut el = EventLoop::new(config).unwrap();
    let addr = listen_echo(&mut el);
    let mut client = flood_without_reading(addr, 8 << 20);
    run_until(&mut el, |el| el.stats().closed == 1);
    let (got, end) = read_all(&mut client);
    let err = end.expect_err("an idle timeout that drops owed output must reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got < 8 << 20, "got {got}");
}

/// The TCP state of our side of a connection (`TCP_INFO`): 8 is `CLOSE_WAIT`, the peer's
/// FIN received.
fn tcp_state(s: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data, zeroed is a valid value; the length passed is its
    // size, and the descriptor is a live TCP socket.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO");
        info.tcpi_state
    }
}

/// Issue 18, item 11: a close begun by the idle timeout keeps that reason when the peer
/// answers our FIN with more input and then a reset (it closed with our echo unread).
#[test]
fn loop_idle_close_keeps_its_reason_when_the_peer_resets() {
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::from_millis(200));
    config.close_timeout = Duration::from_secs(30);
    let mut el = EventLoop::new(config).unwrap();
    let addr = listen_echo(&mut el);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"echo left unread").unwrap();
    // Until the idle timeout has sent our FIN.
    run_until(&mut el, |_| tcp_state(&c) == 8);
    c.write_all(&[7u8; 5000]).unwrap();
    // Unread data in its receive queue: closing sends a reset, not a FIN.
    drop(c);
    run_until(&mut el, |el| el.stats().closed == 1);
    let by = el.stats().closed_by;
    assert_eq!((by.idle_timeout, by.io, by.done), (1, 0, 0), "{by:?}");
}

#[test]
fn loop_end_of_shutdown_grace_resets_connections_still_owed_output() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = listen_echo(&mut el);
    let mut client = flood_without_reading(addr, 8 << 20);
    // Until our own send buffer holds output (the kernel's buffers are full): bytes read
    // but not yet handed back to the kernel.
    run_until(&mut el, |el| {
        el.stats().bytes_in > el.stats().bytes_out + (200 << 10)
    });
    el.stop(Duration::from_millis(200));
    run_until(&mut el, |el| el.is_stopped());
    let (_, end) = read_all(&mut client);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

/// A relay through loop state: what the first client sends goes to the second.
#[derive(Default)]
struct Room {
    members: Vec<ConnId>,
}

struct Member;

impl Handler<Room> for Member {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Room>) {
        let id = ctx.id();
        ctx.state().members.push(id);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, Room>, data: &[u8]) {
        let me = ctx.id();
        let others: Vec<ConnId> = ctx
            .state()
            .members
            .iter()
            .copied()
            .filter(|m| *m != me)
            .collect();
        for m in others {
            ctx.conn(m).send(data).unwrap();
        }
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_, Room>, _: &CloseReason) {
        let me = ctx.id();
        ctx.state().members.retain(|m| *m != me);
    }
}

#[test]
fn loop_state_reaches_every_callback_and_conns_act_on_each_other() {
    let mut el = EventLoop::with_state(Config::default(), Room::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || Box::new(Member))
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let mut a = TcpStream::connect(addr).unwrap();
    run_until(&mut el, |el| el.state().members.len() == 1);
    let mut b = TcpStream::connect(addr).unwrap();
    run_until(&mut el, |el| el.state().members.len() == 2);
    a.write_all(b"from a").unwrap();
    b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 6];
    let reader = std::thread::spawn(move || {
        b.read_exact(&mut buf).unwrap();
        (b, buf)
    });
    run_until(&mut el, |el| el.stats().bytes_out >= 6);
    let (b, buf) = reader.join().unwrap();
    assert_eq!(&buf, b"from a");

    // From outside any callback, by id: the send goes out before `conn` returns's handle
    // is dropped, with no callback running.
    let first = el.state().members[0];
    el.conn(first).send(b"hello from outside").unwrap();
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut back = [0u8; 18];
    a.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello from outside");

    // The listener's id is not a connection's.
    assert_eq!(el.conn(bound.id).send(b"x"), Err(ConnError::NotStream));

    // A connection that has gone: every action says so.
    drop(b);
    run_until(&mut el, |el| el.state().members.len() == 1);
    let gone = ConnId::clone(&first);
    a.shutdown(Shutdown::Both).unwrap();
    run_until(&mut el, |el| el.state().members.is_empty());
    run_until(&mut el, |el| el.stats().connections_open == 0);
    let mut c = el.conn(gone);
    assert_eq!(c.send(b"x"), Err(ConnError::Gone));
    assert_eq!(c.close(), Err(ConnError::Gone));
    assert_eq!(c.abort(), Err(ConnError::Gone));
    assert_eq!(c.pending_output(), Err(ConnError::Gone));
    assert_eq!(c.pause_reading(), Err(ConnError::Gone));
}

/// Records how a connection's life went.
#[derive(Default)]
struct Outcomes {
    opened: u32,
    closed: Vec<String>,
}

struct Recorder;

impl Handler<Outcomes> for Recorder {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Outcomes>) {
        ctx.state().opened += 1;
    }
    fn on_data(&mut self, _: &mut Ctx<'_, Outcomes>, _: &[u8]) {}
    fn on_close(&mut self, ctx: &mut Ctx<'_, Outcomes>, reason: &CloseReason) {
        let what = match reason {
            CloseReason::ConnectFailed(_) => "connect-failed".to_string(),
            other => other.to_string(),
        };
        ctx.state().closed.push(what);
    }
}

#[test]
fn loop_connect_failures_reach_the_handler_wherever_started() {
    let missing =
        std::env::temp_dir().join(format!("echoloop-missing-{}.sock", std::process::id()));
    let to = Endpoint::Unix(echoloop::UnixName::Path(missing));
    let mut el = EventLoop::with_state(Config::default(), Outcomes::default()).unwrap();
    // From the loop: the failure is immediate (no such file), yet it is reported the
    // same way as a later one, by on_close, after the call.
    let id = el.connect(&to, ConnectOptions::new(), Box::new(Recorder));
    assert!(el.state().closed.is_empty(), "never from inside connect");
    // Not open yet: a send is refused with a reason.
    assert_eq!(el.conn(id).send(b"x"), Err(ConnError::NotOpen));
    // From a callback of another thread's message: the same contract.
    let target = to.clone();
    let tx = el.channel(4, move |ctx: &mut LoopCtx<'_, Outcomes>, (): ()| {
        ctx.connect(target.clone(), ConnectOptions::new(), Box::new(Recorder));
    });
    tx.try_send(()).unwrap();
    run_until(&mut el, |el| el.state().closed.len() == 2);
    assert_eq!(el.state().closed, vec!["connect-failed", "connect-failed"]);
    assert_eq!(el.state().opened, 0);
    assert_eq!(el.stats().connect_failures, 2);
    // Once reported, the id is gone.
    run_until(&mut el, |el| el.is_empty());
    assert_eq!(el.conn(id).send(b"x"), Err(ConnError::Gone));
}

#[test]
fn loop_channel_is_bounded_delivers_in_order_and_says_when_stopped() {
    let mut el = EventLoop::with_state(Config::default(), Vec::<u32>::new()).unwrap();
    let tx = el.channel(2, |ctx: &mut LoopCtx<'_, Vec<u32>>, n: u32| {
        ctx.state().push(n)
    });
    let (done_tx, done_rx) = mpsc::channel();
    let sender = tx.clone();
    std::thread::spawn(move || {
        sender.try_send(1).unwrap();
        sender.try_send(2).unwrap();
        // The loop has not run yet: the channel holds two.
        let full = sender.try_send(3).unwrap_err();
        assert!(matches!(full, TrySendError::Full(3)), "{full:?}");
        done_tx.send(()).unwrap();
    });
    done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    run_until(&mut el, |el| el.state().len() == 2);
    assert_eq!(el.state(), &vec![1, 2]);
    // Another thread's message wakes a loop blocked in poll (no timeout given).
    let sender = tx.clone();
    std::thread::spawn(move || sender.try_send(9).unwrap());
    while el.state().len() < 3 {
        el.run_once(Some(Duration::from_secs(20))).unwrap();
    }
    assert_eq!(el.state(), &vec![1, 2, 9]);
    el.stop(Duration::ZERO);
    run_until(&mut el, |el| el.is_stopped());
    let closed = tx.try_send(4).unwrap_err();
    assert!(matches!(closed, TrySendError::Closed(4)), "{closed:?}");
    assert_eq!(closed.into_inner(), 4);
}

/// Panics on its first byte.
struct Bomb;

impl Handler for Bomb {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {
        panic!("handler bug");
    }
}

#[test]
fn loop_is_poisoned_after_a_handler_panics() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el.listen(&any, ListenKind::Tcp, || Box::new(Bomb)).unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"boom").unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            el.run_once(Some(Duration::from_millis(20))).unwrap();
        }
    }));
    assert!(caught.is_err(), "the panic reaches the host");
    // The loop says plainly that it cannot go on, every time; dropping it is fine.
    for _ in 0..2 {
        let e = el.run_once(Some(Duration::ZERO)).unwrap_err();
        assert!(e.to_string().contains("poisoned"), "{e}");
    }
    assert!(el.run().is_err());
    drop(el);
}

/// Says its id on open; panics when its connection closes.
struct BombOnClose;

impl Handler<Option<ConnId>> for BombOnClose {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Option<ConnId>>) {
        let id = ctx.id();
        *ctx.state() = Some(id);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, Option<ConnId>>, data: &[u8]) {
        ctx.send(data);
    }
    fn on_close(&mut self, _: &mut Ctx<'_, Option<ConnId>>, _: &CloseReason) {
        panic!("handler bug in on_close");
    }
}

/// A callback run by an action from outside the loop (`EventLoop::conn`) that panics
/// poisons the loop too.
#[test]
fn loop_is_poisoned_after_a_handler_panics_in_an_action_from_outside() {
    let mut el = EventLoop::with_state(Config::default(), None).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || {
            Box::new(BombOnClose) as Box<dyn Handler<Option<ConnId>>>
        })
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let _s = TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while el.state().is_none() {
        assert!(Instant::now() < deadline, "never opened");
        el.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    let id = el.state().expect("opened");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = el.conn(id).abort();
    }));
    assert!(caught.is_err(), "the panic reaches the host");
    let e = el.run_once(Some(Duration::ZERO)).unwrap_err();
    assert!(e.to_string().contains("poisoned"), "{e}");
}

/// Sends, closes twice, sends again, and stops the loop from inside its callback.
struct Misuse;

impl Handler for Misuse {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        ctx.send(b"before");
        ctx.close();
        ctx.close();
        ctx.send(b"after");
        let me = ctx.id();
        assert_eq!(ctx.conn(me).send(b"x"), Err(ConnError::WriteShut));
        assert!(ctx.conn(me).close().is_ok(), "closing again is harmless");
        ctx.stop_loop(Duration::from_secs(5));
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
}

#[test]
fn loop_misuse_from_callbacks_gives_results_not_panics() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || Box::new(Misuse))
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let mut s = TcpStream::connect(addr).unwrap();
    let reader = std::thread::spawn(move || {
        let mut back = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.read_to_end(&mut back).unwrap();
        back
    });
    run_until(&mut el, |el| el.is_stopped());
    assert_eq!(reader.join().unwrap(), b"before");
}

/// Stays half-open after the peer's EOF, sending nothing: it only waits.
struct StayHalfOpen;

impl Handler for StayHalfOpen {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    fn on_peer_closed(&mut self, _: &mut Ctx<'_>) {}
}

/// A reset after the peer's FIN reaches a connection that no longer reads: the loop takes
/// the socket's error on the error event instead of leaving the connection open forever.
#[test]
fn loop_reset_after_peer_eof_closes_a_connection_that_no_longer_reads() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || Box::new(StayHalfOpen))
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let client = TcpStream::connect(addr).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    run_until(&mut el, |el| {
        el.stats().bytes_in == 0 && el.stats().accepted == 1
    });
    // Let the EOF be read: the connection is then half-open, waiting.
    for _ in 0..5 {
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(el.stats().connections_open, 1);
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // RST
    run_until(&mut el, |el| el.stats().connections_open == 0);
}

/// A host asks how long it may wait between turns: the answer counts from the question,
/// not from the loop's last wake-up.
#[test]
fn loop_timeout_for_a_host_counts_from_now() {
    struct TimerOnOpen;
    impl Handler for TimerOnOpen {
        fn on_open(&mut self, ctx: &mut Ctx<'_>) {
            ctx.set_timer(Duration::from_secs(1));
        }
        fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    }
    let mut el = EventLoop::new(Config::default()).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let bound = el
        .listen(&any, ListenKind::Tcp, || Box::new(TimerOnOpen))
        .unwrap();
    let Endpoint::Inet(addr) = bound.addr else {
        panic!()
    };
    let _c = TcpStream::connect(addr).unwrap();
    run_until(&mut el, |el| el.stats().accepted == 1);
    std::thread::sleep(Duration::from_millis(400)); // the host does its own work
    let wait = el.timeout().expect("a timer is set");
    assert!(wait <= Duration::from_millis(650), "{wait:?}");
}

/// Records, per socket, the timers that fired for it.
struct Sleeper {
    name: &'static str,
}

impl echoloop::DatagramHandler<Vec<(&'static str, echoloop::TimerId)>> for Sleeper {
    fn on_datagram(
        &mut self,
        _: &mut echoloop::DgramCtx<'_, Vec<(&'static str, echoloop::TimerId)>>,
        _: &[u8],
        _: &echoloop::PeerAddr,
    ) {
    }

    fn on_timer(
        &mut self,
        ctx: &mut echoloop::DgramCtx<'_, Vec<(&'static str, echoloop::TimerId)>>,
        timer: echoloop::TimerId,
    ) {
        ctx.state().push((self.name, timer));
    }
}

#[test]
fn loop_channel_wakes_handlers_with_timers_set_for_them() {
    type Fired = Vec<(&'static str, echoloop::TimerId)>;
    let mut el = EventLoop::with_state(Config::default(), Fired::new()).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = el.bind_udp(any, Box::new(Sleeper { name: "a" })).unwrap();
    let b = el.bind_udp(any, Box::new(Sleeper { name: "b" })).unwrap();
    let set = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&set);
    // The message names which socket to wake; the timer fires in *its* handler.
    let tx = el.channel(4, move |ctx: &mut LoopCtx<'_, Fired>, who: ConnId| {
        let t = ctx.set_timer_for(who, Duration::ZERO);
        record.borrow_mut().push((who, t));
    });
    std::thread::spawn(move || {
        tx.try_send(b.id).unwrap();
        tx.try_send(a.id).unwrap();
    });
    run_until(&mut el, |el| el.state().len() == 2);
    let set = set.borrow();
    assert_eq!(set.len(), 2);
    let fired = el.state().clone();
    let name_of = |id: ConnId| if id == a.id { "a" } else { "b" };
    for (who, t) in set.iter() {
        assert!(
            fired.contains(&(name_of(*who), *t)),
            "{t:?} did not fire in {who:?}: {fired:?}"
        );
    }
}

#[test]
fn loop_leaves_a_management_listener_out_of_stats_and_limits() {
    let mut config = Config::default();
    config.max_connections = Some(1);
    let mut el = EventLoop::new(config).unwrap();
    let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
    let service = el.listen(&any, ListenKind::Tcp, || Box::new(Echo)).unwrap();
    let admin = el.listen(&any, ListenKind::Tcp, || Box::new(Echo)).unwrap();
    el.count_in_stats(admin.id, false).unwrap();
    let addr = |b: &echoloop::Bound| match &b.addr {
        Endpoint::Inet(a) => *a,
        _ => unreachable!("an IP listener"),
    };
    let echo = |el: &mut EventLoop, s: &mut TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        run_until(el, |_| {
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= msg.len()
        });
        assert_eq!(got, msg);
    };
    // The service is at its limit of one...
    let mut client = TcpStream::connect(addr(&service)).unwrap();
    echo(&mut el, &mut client, b"service");
    // ...and the management listener still answers, twice, uncounted.
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr(&admin)).unwrap();
        echo(&mut el, &mut c, b"admin");
    }
    let s = el.stats();
    assert_eq!(
        (s.accepted, s.connections_open, s.rejected),
        (1, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.bytes_in, 7, "only the service's bytes: {s:?}");
}

/// A listener handed over (socket activation) gets `TCP_NODELAY` like our own, so its
/// accepted connections inherit it: small replies are not held back by Nagle.
#[test]
fn loop_adopted_tcp_listener_gets_nodelay() {
    use std::os::fd::{AsRawFd, OwnedFd};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let watch = l.try_clone().unwrap(); // the same socket, kept to look at it
    let nodelay = |fd: i32| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        v != 0
    };
    assert!(
        !nodelay(watch.as_raw_fd()),
        "std's listener starts without it"
    );
    let mut el = EventLoop::new(Config::default()).unwrap();
    el.adopt_listener(OwnedFd::from(l), ListenKind::Tcp, || {
        Box::new(Echo) as Box<dyn Handler>
    })
    .unwrap();
    assert!(nodelay(watch.as_raw_fd()), "adopted without TCP_NODELAY");
    // And it serves.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    c.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        el.run_once(Some(Duration::from_millis(20))).unwrap();
        if c.read_exact(&mut back).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no echo");
    }
    assert_eq!(&back, b"hi");
}
