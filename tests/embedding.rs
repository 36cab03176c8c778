//! The embedder's API for real servers (issue 17): output that coalesces, descriptors and
//! timers of the application's own, a stop handlers take part in, listeners by id, ids
//! that know their loop, flow control from other threads. In process, on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use echoloop::{
    Config, ConnError, ConnId, Ctx, Echo, Endpoint, EventLoop, FdInterest, Handler, ListenKind,
    LoopContext, LoopCtx, TimerId, TrySendError,
};

const DEADLINE: Duration = Duration::from_secs(20);

fn addr_of(ep: Endpoint) -> SocketAddr {
    match ep {
        Endpoint::Inet(a) => a,
        other => panic!("not an IP address: {other}"),
    }
}

fn any() -> Endpoint {
    Endpoint::Inet("127.0.0.1:0".parse().unwrap())
}

/// Turns the loop until `done`, bounded in time.
fn run_until<S>(el: &mut EventLoop<S>, mut done: impl FnMut(&mut EventLoop<S>) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(el) {
        assert!(Instant::now() < deadline, "not reached in time");
        el.run_once(Some(Duration::from_millis(20))).unwrap();
    }
}

/// Reads exactly `n` bytes (bounded by the socket's read timeout).
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

// ----- output that coalesces -----

/// The loop's state for a small broker: who subscribed.
#[derive(Default)]
struct Subs(Vec<ConnId>);

/// A subscriber's first byte `S`; a publisher's `P`, then messages of 8 bytes, each sent
/// to every subscriber one by one (message-major: sends to different connections
/// interleave).
#[derive(Default)]
struct Member {
    publisher: bool,
    known: bool,
}

impl Handler<Subs> for Member {
    fn on_data(&mut self, ctx: &mut Ctx<'_, Subs>, mut data: &[u8]) {
        if !self.known {
            self.known = true;
            self.publisher = data[0] == b'P';
            if !self.publisher {
                let me = ctx.id();
                ctx.state().0.push(me);
                ctx.send(b"A");
            }
            data = &data[1..];
        }
        if !self.publisher {
            return;
        }
        let subs = ctx.state().0.clone();
        for msg in data.chunks(8) {
            for &s in &subs {
                ctx.conn(s).send(msg).unwrap();
            }
        }
    }
}

/// A broker loop with `n` subscribers connected and acknowledged.
fn broker_with_subscribers(n: usize) -> (EventLoop<Subs>, SocketAddr, Vec<TcpStream>) {
    let mut el = EventLoop::with_state(Config::default(), Subs::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::<Member>::default())
            .unwrap()
            .addr,
    );
    let mut subs: Vec<TcpStream> = (0..n).map(|_| client(addr)).collect();
    for s in &mut subs {
        s.write_all(b"S").unwrap();
    }
    run_until(&mut el, |el| el.state().0.len() == n);
    for s in &mut subs {
        assert_eq!(read_n(s, 1), b"A");
    }
    (el, addr, subs)
}

#[test]
fn coalesce_interleaved_sends_to_many_connections_write_once_each() {
    const N: usize = 10;
    let (mut el, addr, mut subs) = broker_with_subscribers(N);
    let mut publisher = client(addr);
    let msgs: Vec<u8> = (0..100u64).flat_map(|i| i.to_le_bytes()).collect();
    let mut first = b"P".to_vec();
    first.extend_from_slice(&msgs);
    let before = el.stats().write_calls;
    publisher.write_all(&first).unwrap();
    run_until(&mut el, |el| {
        el.stats().bytes_out >= (N + N * msgs.len()) as u64
    });
    let writes = el.stats().write_calls - before;
    for s in &mut subs {
        assert_eq!(read_n(s, msgs.len()), msgs, "every message, in order");
    }
    // 1,000 sends (100 messages x 10 subscribers, interleaved): one write per subscriber
    // per read of the publisher (its 801 bytes may come in two reads at worst).
    assert!(writes <= 2 * N as u64, "{writes} writes for 1,000 sends");
}

#[test]
fn coalesce_sends_from_many_callbacks_of_one_turn_share_one_write() {
    let mut el = EventLoop::with_state(Config::default(), Subs::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::<Member>::default())
            .unwrap()
            .addr,
    );
    let mut sub = client(addr);
    sub.write_all(b"S").unwrap();
    run_until(&mut el, |el| el.state().0.len() == 1);
    assert_eq!(read_n(&mut sub, 1), b"A");
    let tx = el.channel(200, |ctx: &mut LoopCtx<'_, Subs>, line: String| {
        let id = ctx.state().0[0];
        let mut c = ctx.conn(id);
        c.send(line.as_bytes()).unwrap();
        // Counted at once, though it waits for the end of the turn.
        assert!(c.pending_output().unwrap() >= line.len());
    });
    // 100 messages waiting before the turn: 100 callbacks in one drain.
    for i in 0..100 {
        tx.try_send(format!("{i:03}\n")).unwrap();
    }
    let before = el.stats().write_calls;
    run_until(&mut el, |el| el.stats().bytes_out >= 401);
    assert_eq!(
        el.stats().write_calls - before,
        1,
        "one write for 100 callbacks"
    );
    let got = read_n(&mut sub, 400);
    let want: String = (0..100).map(|i| format!("{i:03}\n")).collect();
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

/// A message of `len` bytes that names itself (`tag`), so that a byte out of place in a
/// receiver's stream is seen.
fn tagged(tag: u64, len: usize) -> Vec<u8> {
    let mut m = tag.to_le_bytes().to_vec();
    m.extend((0..len.saturating_sub(8)).map(|i| (tag as usize * 31 + i) as u8));
    m.truncate(len.max(1));
    m
}

/// Fan-out keeps a message once per turn and gives receivers ranges of it; around that,
/// every receiver's stream must stay exactly what it was sent. Mixed on purpose: the same
/// message to all (shared), different messages to different subsets (ranges that do not
/// follow each other, copied), a message too large to share, more in one turn than the
/// shared buffer holds (written out early), and a receiver that reads nothing until the
/// end (partial writes: the rest must outlive the turn).
#[test]
fn shared_fan_out_keeps_every_receivers_stream_exact() {
    const N: usize = 6;
    let (mut el, _, mut subs) = broker_with_subscribers(N);
    let ids = el.state().0.clone();
    let mut want: Vec<Vec<u8>> = vec![Vec::new(); N];
    // Every receiver but the first reads all along, in its own thread.
    let slow = subs.remove(0);
    let mut tag = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..30 {
        el.with_ctx(|ctx| {
            let (count, len_max) = match round % 3 {
                // More than the shared buffer (256 KiB) in one turn, to everyone.
                0 => (6000, 120),
                _ => (200, 600),
            };
            for _ in 0..count {
                tag += 1;
                let r = next();
                let msg = tagged(tag, 1 + (r as usize >> 8) % len_max);
                // Everyone, or a subset that changes from message to message.
                let mask = if round % 3 == 0 || r % 4 == 0 {
                    0x3f
                } else {
                    (r >> 40) & 0x3f
                };
                for (i, &id) in ids.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        ctx.conn(id).send(&msg).unwrap();
                        want[i].extend_from_slice(&msg);
                    }
                }
            }
            if round == 7 {
                // Larger than the shared buffer: copied, between shared messages.
                tag += 1;
                let big = tagged(tag, 300 * 1024);
                for i in [1, 3] {
                    ctx.conn(ids[i]).send(&big).unwrap();
                    want[i].extend_from_slice(&big);
                }
            }
        })
        .unwrap();
        el.run_once(Some(Duration::ZERO)).unwrap();
    }
    let readers: Vec<_> = std::iter::once(slow)
        .chain(subs)
        .zip(want.iter().map(Vec::len))
        .map(|(mut s, n)| std::thread::spawn(move || read_n(&mut s, n)))
        .collect();
    run_until(&mut el, |_| readers.iter().all(|r| r.is_finished()));
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().unwrap();
        let at = got.iter().zip(&want[i]).position(|(a, b)| a != b);
        assert!(
            at.is_none(),
            "receiver {i}: first wrong byte at {at:?} of {}",
            want[i].len()
        );
    }
}

/// Sharing must not cost coalescing: 200 receivers each sent 10 messages of their own
/// (4 KiB, nothing in common) in one turn fill the shared buffer many times over, yet
/// each is still written once, as before there was sharing (found in review: each full
/// buffer wrote every connection holding a part of it, about one write per message).
#[test]
fn distinct_messages_per_receiver_still_write_once_per_connection_per_turn() {
    const N: usize = 200;
    const PER: usize = 10;
    const LEN: usize = 4096;
    let (mut el, _, subs) = broker_with_subscribers(N);
    let ids = el.state().0.clone();
    let before = el.stats().write_calls;
    el.with_ctx(|ctx| {
        for round in 0..PER {
            for (i, &id) in ids.iter().enumerate() {
                ctx.conn(id)
                    .send(&vec![(round * N + i) as u8; LEN])
                    .unwrap();
            }
        }
    })
    .unwrap();
    let writes = el.stats().write_calls - before;
    for (i, mut c) in subs.into_iter().enumerate() {
        let got = read_n(&mut c, PER * LEN);
        for round in 0..PER {
            let want = (round * N + i) as u8;
            assert!(
                got[round * LEN..(round + 1) * LEN]
                    .iter()
                    .all(|&b| b == want),
                "receiver {i}, message {round}"
            );
        }
    }
    assert!(
        writes <= N as u64,
        "{writes} writes for {N} receivers owed 40 KiB each in one turn"
    );
}

// ----- descriptors of the application's own -----

/// A pipe as two owned descriptors (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass, which has room for two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just made by pipe2 and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[derive(Default)]
struct PipeLog {
    got: Vec<u8>,
    eof: bool,
    calls: usize,
}

#[test]
fn fd_source_reads_a_pipe_to_eof_and_is_removed() {
    let mut el = EventLoop::with_state(Config::default(), PipeLog::default()).unwrap();
    let (r, w) = pipe();
    let id = el
        .add_fd(
            std::fs::File::from(r),
            FdInterest::Read,
            |ctx: &mut LoopCtx<'_, PipeLog>, f: &mut std::fs::File, ready| {
                ctx.state().calls += 1;
                assert!(ready.readable || ready.hang_up, "{ready:?}");
                // Edge-triggered: read until WouldBlock or EOF.
                let mut buf = [0u8; 7];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => {
                            ctx.state().eof = true;
                            break;
                        }
                        Ok(n) => ctx.state().got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            },
        )
        .unwrap();
    let mut w = std::fs::File::from(w);
    w.write_all(b"hello from the other side").unwrap();
    run_until(&mut el, |el| el.state().got.len() == 25);
    drop(w);
    run_until(&mut el, |el| el.state().eof);
    assert_eq!(el.state().got, b"hello from the other side");
    el.remove_fd(id).unwrap();
    assert_eq!(el.remove_fd(id), Err(ConnError::Gone), "removed already");
    let calls = el.state().calls;
    el.run_once(Some(Duration::from_millis(50))).unwrap();
    assert_eq!(el.state().calls, calls, "no callback after removal");
    // A stopping loop ends though a descriptor is still watched.
    let (r2, _w2) = pipe();
    el.add_fd(
        r2,
        FdInterest::Read,
        |_: &mut LoopCtx<'_, PipeLog>, _, _| {},
    )
    .unwrap();
    el.stop(Duration::from_secs(5));
    let t = Instant::now();
    el.run().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    // Misuse says so.
    let (r3, _w3) = pipe();
    assert!(
        el.add_fd(
            r3,
            FdInterest::Read,
            |_: &mut LoopCtx<'_, PipeLog>, _, _| {}
        )
        .is_err()
    );
}

#[test]
fn fd_source_can_remove_itself_from_its_callback() {
    let mut el = EventLoop::with_state(Config::default(), PipeLog::default()).unwrap();
    let (r, w) = pipe();
    let cell = std::rc::Rc::new(std::cell::Cell::new(None));
    let me = std::rc::Rc::clone(&cell);
    let id = el
        .add_fd(
            std::fs::File::from(r),
            FdInterest::Read,
            move |ctx: &mut LoopCtx<'_, PipeLog>, _: &mut std::fs::File, _| {
                ctx.state().calls += 1;
                if let Some(id) = me.get() {
                    ctx.remove_fd(id).unwrap();
                }
            },
        )
        .unwrap();
    cell.set(Some(id));
    let mut w = std::fs::File::from(w);
    w.write_all(b"x").unwrap();
    run_until(&mut el, |el| el.state().calls == 1);
    // Removal closed the read end (after the batch): the pipe is broken.
    let e = w.write_all(b"y").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    el.run_once(Some(Duration::from_millis(50))).unwrap();
    assert_eq!(el.state().calls, 1, "removed from its own callback");
}

// ----- timers of the loop's own -----

#[test]
fn loop_timer_fires_once_and_a_cancelled_one_never() {
    let mut el = EventLoop::with_state(Config::default(), Vec::<&str>::new()).unwrap();
    let start = Instant::now();
    el.set_timer(Duration::from_millis(30), |ctx| ctx.state().push("first"))
        .unwrap();
    let t = el
        .set_timer(Duration::from_millis(10), |ctx| {
            ctx.state().push("cancelled")
        })
        .unwrap();
    el.with_ctx(|ctx| ctx.cancel_timer(t)).unwrap();
    // Set from a callback: a chain.
    el.set_timer(Duration::from_millis(5), |ctx| {
        ctx.set_timer(Duration::from_millis(5), |ctx| ctx.state().push("chained"));
    })
    .unwrap();
    run_until(&mut el, |el| el.state().len() == 2);
    assert!(start.elapsed() >= Duration::from_millis(30));
    for _ in 0..3 {
        el.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert_eq!(el.state(), &["chained", "first"]);
    el.stop(Duration::ZERO);
    el.run().unwrap();
    assert_eq!(
        el.set_timer(Duration::ZERO, |_| {}).unwrap_err(),
        ConnError::Stopped
    );
}

// ----- a stop handlers take part in -----

/// Work in flight: a request's answer comes from a worker thread.
#[derive(Default)]
struct Pending {
    owed: Vec<ConnId>,
    workers: Option<std::sync::mpsc::Sender<ConnId>>,
}

struct Slow;

impl Handler<Pending> for Slow {
    fn on_data(&mut self, ctx: &mut Ctx<'_, Pending>, _: &[u8]) {
        let me = ctx.id();
        ctx.state().owed.push(me);
        if let Some(w) = &ctx.state().workers {
            w.send(me).unwrap();
        }
    }
    fn on_stopping(&mut self, ctx: &mut Ctx<'_, Pending>) {
        // An answer is on its way: keep the connection until it is sent.
        let me = ctx.id();
        if !ctx.state().owed.contains(&me) {
            ctx.close();
        }
    }
}

#[test]
fn stop_lets_a_handler_deliver_what_a_worker_still_owes() {
    let mut el = EventLoop::with_state(Config::default(), Pending::default()).unwrap();
    let slow = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Slow))
            .unwrap()
            .addr,
    );
    let echo = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Echo))
            .unwrap()
            .addr,
    );
    let answers = el.channel(4, |ctx: &mut LoopCtx<'_, Pending>, id: ConnId| {
        let mut c = ctx.conn(id);
        c.send(b"answer\n").unwrap();
        c.close().unwrap();
        ctx.state().owed.retain(|x| *x != id);
    });
    let (tx, rx) = std::sync::mpsc::channel::<ConnId>();
    el.state_mut().workers = Some(tx);
    let stop = el.stop_handle();
    let worker = std::thread::spawn(move || {
        let id = rx.recv().unwrap();
        // The stop comes while the answer is being worked out.
        stop.stop(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        answers.send_timeout(id, Duration::from_secs(5)).unwrap();
    });
    let mut idle = client(echo);
    let mut asker = client(slow);
    asker.write_all(b"question\n").unwrap();
    let start = Instant::now();
    el.run().unwrap();
    let took = start.elapsed();
    worker.join().unwrap();
    let mut got = String::new();
    asker.read_to_string(&mut got).unwrap();
    assert_eq!(got, "answer\n", "delivered during the grace, then EOF");
    // The loop ended once the answer was out, not at the end of the grace.
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The connection that owed nothing was closed at once.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn stop_calls_the_loop_callback_once_and_a_second_stop_only_shortens_the_grace() {
    let mut el = EventLoop::with_state(Config::default(), 0u32).unwrap();
    el.on_stopping(|ctx| *ctx.state() += 1);
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Echo))
            .unwrap()
            .addr,
    );
    let _c = client(addr);
    run_until(&mut el, |el| el.stats().accepted == 1);
    el.stop(Duration::from_secs(30));
    el.stop(Duration::from_secs(10));
    assert_eq!(*el.state(), 1);
    el.run().unwrap();
    assert_eq!(*el.state(), 1);
}

// ----- listeners by id -----

#[test]
fn listener_pause_resume_and_close_leave_its_connections_alone() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let bound = el
        .listen(&any(), ListenKind::Tcp, || Box::new(Echo))
        .unwrap();
    let addr = addr_of(bound.addr.clone());
    let mut first = client(addr);
    run_until(&mut el, |el| el.stats().accepted == 1);
    el.with_ctx(|ctx| ctx.pause_listener(bound.id))
        .unwrap()
        .unwrap();
    // The kernel completes the handshake (backlog); the loop does not accept.
    let mut waiting = client(addr);
    waiting.write_all(b"queued").unwrap();
    for _ in 0..5 {
        el.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert_eq!(el.stats().accepted, 1, "paused");
    el.with_ctx(|ctx| ctx.resume_listener(bound.id))
        .unwrap()
        .unwrap();
    run_until(&mut el, |el| el.stats().accepted == 2);
    run_until(&mut el, |el| el.stats().bytes_out >= 6);
    assert_eq!(read_n(&mut waiting, 6), b"queued");
    el.with_ctx(|ctx| ctx.close_listener(bound.id))
        .unwrap()
        .unwrap();
    el.run_once(Some(Duration::from_millis(20))).unwrap();
    let refused = TcpStream::connect(addr);
    assert!(refused.is_err(), "closed listener still accepts");
    // Its connections go on.
    first.write_all(b"still here").unwrap();
    run_until(&mut el, |el| el.stats().bytes_out >= 16);
    assert_eq!(read_n(&mut first, 10), b"still here");
    assert_eq!(
        el.with_ctx(|ctx| ctx.close_listener(bound.id)).unwrap(),
        Err(ConnError::Gone)
    );
}

// ----- ids that know their loop -----

#[test]
fn ids_from_another_loop_are_refused() {
    let mut a = EventLoop::new(Config::default()).unwrap();
    let mut b = EventLoop::new(Config::default()).unwrap();
    let la = a
        .listen(&any(), ListenKind::Tcp, || Box::new(Echo))
        .unwrap();
    let lb = b
        .listen(&any(), ListenKind::Tcp, || Box::new(Echo))
        .unwrap();
    // Same slot, same place in each loop's sequence: only the loop tells them apart.
    assert_eq!(la.id.to_string(), lb.id.to_string());
    assert_ne!(la.id, lb.id);
    assert_eq!(b.conn(la.id).send(b"x"), Err(ConnError::OtherLoop));
    assert_eq!(
        b.expect_proxy_header(la.id, true),
        Err(ConnError::OtherLoop)
    );
    assert_eq!(
        b.with_ctx(|ctx| ctx.pause_listener(la.id)).unwrap(),
        Err(ConnError::OtherLoop)
    );
    // Display tells slot reuses apart: `#slot.generation`.
    let shown = la.id.to_string();
    assert!(shown.starts_with('#') && shown.contains('.'), "{shown}");
}

// ----- the last word to a slow consumer -----

#[test]
fn close_with_replaces_the_backlog_with_one_last_line() {
    #[derive(Default)]
    struct One(Option<ConnId>);
    struct Quiet;
    impl Handler<One> for Quiet {
        fn on_open(&mut self, ctx: &mut Ctx<'_, One>) {
            let me = ctx.id();
            ctx.state().0 = Some(me);
        }
        fn on_data(&mut self, _: &mut Ctx<'_, One>, _: &[u8]) {}
    }
    let mut el = EventLoop::with_state(Config::default(), One::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Quiet))
            .unwrap()
            .addr,
    );
    let mut slow = client(addr);
    run_until(&mut el, |el| el.state().0.is_some());
    let id = el.state().0.unwrap();
    // 16 MiB owed to a client that does not read: most of it waits in our buffer.
    let block = vec![b'.'; 1 << 20];
    for _ in 0..16 {
        el.conn(id).send(&block).unwrap();
    }
    run_until(&mut el, |el| el.stats().bytes_out > 0);
    el.conn(id)
        .close_with(b"\ncut off: too far behind\n")
        .unwrap();
    assert_eq!(el.conn(id).send(b"more"), Err(ConnError::WriteShut));
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        slow.read_to_end(&mut all).unwrap();
        all
    });
    run_until(&mut el, |el| el.stats().closed == 1);
    let all = reader.join().unwrap();
    assert!(all.ends_with(b"\ncut off: too far behind\n"));
    assert!(
        all.len() < 16 << 20,
        "the backlog was dropped ({} bytes)",
        all.len()
    );
}

// ----- flow control from other threads -----

#[test]
fn sender_send_timeout_waits_for_room_and_says_closed() {
    let mut el = EventLoop::with_state(Config::default(), Vec::<u32>::new()).unwrap();
    let tx = el.channel(1, |ctx: &mut LoopCtx<'_, Vec<u32>>, m: u32| {
        ctx.state().push(m)
    });
    tx.try_send(1).unwrap();
    // Full, and nobody drains: the time runs out and the message comes back.
    let t = Instant::now();
    match tx.send_timeout(2, Duration::from_millis(100)) {
        Err(TrySendError::Full(2)) => {}
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(100));
    // A producer thread waits until the loop makes room.
    let producer = {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for m in 2..=20 {
                tx.send_timeout(m, DEADLINE).unwrap();
            }
        })
    };
    run_until(&mut el, |el| el.state().len() == 20);
    producer.join().unwrap();
    assert_eq!(el.state(), &(1..=20).collect::<Vec<_>>());
    // Once the loop is gone, a waiting sender hears so at once.
    tx.try_send(21).unwrap();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = tx.send_timeout(22, Duration::from_secs(30));
        (
            r.map_err(|e| matches!(e, TrySendError::Closed(22))),
            t.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(el);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, Err(true), "Closed");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

// ----- one helper for every context -----

/// Written once for every kind of callback.
fn greet_all<C: LoopContext<Vec<ConnId>>>(ctx: &mut C, text: &[u8]) -> usize {
    let ids = ctx.state().clone();
    ids.iter()
        .filter(|&&id| ctx.conn(id).send(text).is_ok())
        .count()
}

#[test]
fn loop_context_helper_serves_stream_and_loop_callbacks() {
    struct Greeter;
    impl Handler<Vec<ConnId>> for Greeter {
        fn on_open(&mut self, ctx: &mut Ctx<'_, Vec<ConnId>>) {
            let me = ctx.id();
            ctx.state().push(me);
            greet_all(ctx, b"hi\n");
        }
        fn on_data(&mut self, _: &mut Ctx<'_, Vec<ConnId>>, _: &[u8]) {}
    }
    let mut el = EventLoop::with_state(Config::default(), Vec::new()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Greeter))
            .unwrap()
            .addr,
    );
    let mut c = client(addr);
    run_until(&mut el, |el| el.state().len() == 1);
    assert_eq!(read_n(&mut c, 3), b"hi\n");
    let sent = el.with_ctx(|ctx| greet_all(ctx, b"bye\n")).unwrap();
    assert_eq!(sent, 1);
    assert_eq!(read_n(&mut c, 4), b"bye\n");
}

/// An idle connection that a stop closes with nothing in flight ended cleanly: its
/// handler hears `Done`, not a grace period cut short.
#[test]
fn stop_closes_an_idle_connection_as_done() {
    struct Note;
    impl Handler<Vec<String>> for Note {
        fn on_data(&mut self, _: &mut Ctx<'_, Vec<String>>, _: &[u8]) {}
        fn on_close(&mut self, ctx: &mut Ctx<'_, Vec<String>>, reason: &echoloop::CloseReason) {
            ctx.state().push(format!("{reason:?}"));
        }
    }
    let mut el = EventLoop::with_state(Config::default(), Vec::new()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Note))
            .unwrap()
            .addr,
    );
    let _idle = client(addr);
    run_until(&mut el, |el| el.stats().accepted == 1);
    el.stop(Duration::from_secs(10));
    let t = Instant::now();
    el.run().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(el.state(), &["Done"]);
}

// ----- found by a review of this change (helper): each failed before its fix -----

fn run_for<S>(
    el: &mut EventLoop<S>,
    d: Duration,
    mut done: impl FnMut(&mut EventLoop<S>) -> bool,
) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if done(el) {
            return true;
        }
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    done(el)
}

/// The documented producer: send while pending_output is low, pause, resume in on_drained.
struct Producer {
    sent: usize,
}
const TOTAL: usize = 1 << 20;
const PAUSE_AT: usize = 8 * 1024;
impl Producer {
    fn fill(&mut self, ctx: &mut Ctx<'_>) {
        while self.sent < TOTAL && ctx.pending_output() < PAUSE_AT {
            ctx.send(&[7u8; 1024]);
            self.sent += 1024;
        }
        if self.sent == TOTAL {
            ctx.close();
        }
    }
}
impl Handler for Producer {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        self.fill(ctx);
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    fn on_drained(&mut self, ctx: &mut Ctx<'_>) {
        self.fill(ctx);
    }
}

#[test]
fn issue_17_review_producer_pausing_on_pending_output_in_own_callback_is_woken() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Producer { sent: 0 }))
            .unwrap()
            .addr,
    );
    let reader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    run_for(&mut el, Duration::from_secs(4), |el| el.stats().closed == 1);
    let got = reader.join().unwrap();
    assert_eq!(got, TOTAL, "the producer stalled after {got} bytes");
}

/// Fan-out paced by on_drained (as tail.rs paces its reading, but without the timer hop):
/// each subscriber's on_drained broadcasts the next message to every subscriber.
#[derive(Default)]
struct Fan {
    subs: Vec<ConnId>,
    sent: usize,
    drained_this_turn: usize,
    max_per_turn: usize,
}
const MSGS: usize = 20_000;
struct FanSub;
fn fan_broadcast<C: LoopContext<Fan>>(ctx: &mut C) {
    if ctx.state().sent >= MSGS {
        return;
    }
    ctx.state().sent += 1;
    let subs = ctx.state().subs.clone();
    for s in subs {
        let _ = ctx.conn(s).send(&[1u8; 512]);
    }
}
impl Handler<Fan> for FanSub {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Fan>) {
        let me = ctx.id();
        ctx.state().subs.push(me);
    }
    fn on_data(&mut self, _: &mut Ctx<'_, Fan>, _: &[u8]) {}
    fn on_drained(&mut self, ctx: &mut Ctx<'_, Fan>) {
        let st = ctx.state();
        st.drained_this_turn += 1;
        st.max_per_turn = st.max_per_turn.max(st.drained_this_turn);
        fan_broadcast(ctx);
    }
}

#[test]
fn issue_17_review_on_drained_chain_does_not_keep_the_loop_from_polling() {
    let mut el = EventLoop::with_state(Config::default(), Fan::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(FanSub))
            .unwrap()
            .addr,
    );
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            while total < MSGS * 512 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            total
        }));
    }
    assert!(run_for(&mut el, Duration::from_secs(5), |el| el
        .state()
        .subs
        .len()
        == 2));
    el.with_ctx(|ctx| fan_broadcast(ctx)).unwrap();
    let mut turns = 0;
    run_for(&mut el, Duration::from_secs(10), |el| {
        turns += 1;
        el.state_mut().drained_this_turn = 0;
        el.state().sent >= MSGS
    });
    for r in readers {
        r.join().unwrap();
    }
    let max = el.state().max_per_turn;
    let _ = turns;
    assert!(
        max < 1000,
        "{max} on_drained callbacks (and broadcasts) without polling once"
    );
}

/// A TimerId made by another loop, cancelled here, reaches this loop's own timer
/// (a connection's idle deadline): the connection never times out.
struct CancelForeign(TimerId);
impl Handler for CancelForeign {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, _: &[u8]) {
        ctx.cancel_timer(self.0);
    }
}

#[test]
fn issue_17_review_foreign_timer_id_cannot_cancel_a_connections_deadline() {
    let mut a = EventLoop::new(Config::default()).unwrap();
    let foreign = a.set_timer(Duration::from_secs(3600), |_| {}).unwrap();
    let mut cfg = Config::default();
    cfg.idle_timeout = Some(Duration::from_millis(200));
    cfg.close_timeout = Duration::from_millis(200);
    let mut b = EventLoop::new(cfg).unwrap();
    let addr = addr_of(
        b.listen(&any(), ListenKind::Tcp, move || {
            Box::new(CancelForeign(foreign))
        })
        .unwrap()
        .addr,
    );
    let mut s = TcpStream::connect(addr).unwrap();
    assert!(run_for(&mut b, Duration::from_secs(2), |b| b
        .stats()
        .connections_open
        == 1));
    s.write_all(b"x").unwrap();
    let closed = run_for(&mut b, Duration::from_secs(3), |b| b.stats().closed == 1);
    assert!(
        closed,
        "idle connection still open: its deadline timer was cancelled by loop A's TimerId"
    );
}

struct Stubborn;
impl Handler for Stubborn {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    fn on_stopping(&mut self, _: &mut Ctx<'_>) {} // waits for the grace
}

#[test]
fn issue_17_review_a_later_stop_request_does_not_lengthen_the_grace() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(Stubborn))
            .unwrap()
            .addr,
    );
    let _c = TcpStream::connect(addr).unwrap();
    assert!(run_for(&mut el, Duration::from_secs(2), |el| el
        .stats()
        .connections_open
        == 1));
    let tx = el.channel(4, |ctx: &mut LoopCtx<'_>, ()| {
        ctx.stop_loop(Duration::from_secs(60))
    });
    tx.try_send(()).unwrap();
    el.stop_handle().stop(Duration::ZERO); // "stop now"
    let stopped = run_for(&mut el, Duration::from_secs(2), |el| el.is_stopped());
    assert!(
        stopped,
        "stop(ZERO) was lengthened to 60 s by a stop_loop in the same turn"
    );
}

/// Echo with manual flow control: pause reading while replies are owed, resume in
/// on_drained (the pattern the docs describe).
struct PausingEcho;
impl Handler for PausingEcho {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.send(data);
        if ctx.pending_output() >= 16 * 1024 {
            ctx.pause_reading();
        }
    }
    fn on_drained(&mut self, ctx: &mut Ctx<'_>) {
        ctx.resume_reading();
    }
}

#[test]
fn issue_17_review_echo_that_pauses_on_pending_output_is_resumed() {
    let mut el = EventLoop::new(Config::default()).unwrap();
    let addr = addr_of(
        el.listen(&any(), ListenKind::Tcp, || Box::new(PausingEcho))
            .unwrap()
            .addr,
    );
    const N: usize = 1 << 20;
    let s = TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&vec![5u8; N]);
    });
    let reader = std::thread::spawn(move || {
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while total < N {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    let t0 = Instant::now();
    while !reader.is_finished() && t0.elapsed() < Duration::from_secs(5) {
        el.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let got = reader.join().unwrap();
    drop(el);
    let _ = writer.join();
    assert_eq!(
        got, N,
        "echo stalled after {got} bytes: reading paused, on_drained never came"
    );
}

// ----- issue 18, item 1: adopted descriptors that are not what they are served as -----

#[test]
fn issue_18_adopted_sockets_of_the_wrong_kind_are_refused_by_name() {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::OwnedFd;
    let mut el = EventLoop::new(Config::default()).unwrap();
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listening.local_addr().unwrap();
    // A connected socket (what `Accept=yes` units hand over): accept would say EINVAL
    // forever.
    let connected = TcpStream::connect(addr).unwrap();
    let err = el
        .adopt_listener(OwnedFd::from(connected), ListenKind::Tcp, || Box::new(Echo))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not listening"), "{err}");
    // Bound, never `listen`ed.
    let bound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    bound
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let err = el
        .adopt_listener(OwnedFd::from(bound), ListenKind::Tcp, || Box::new(Echo))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not listening"), "{err}");
    // A listener served as a datagram socket, and a SOCK_SEQPACKET one.
    let err = el
        .adopt_datagram(OwnedFd::from(listening), Box::new(echoloop::EchoDatagram))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stream socket") && err.contains("datagram"),
        "{err}"
    );
    let seq = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    let err = el
        .adopt_datagram(OwnedFd::from(seq), Box::new(echoloop::EchoDatagram))
        .unwrap_err()
        .to_string();
    assert!(err.contains("SEQPACKET"), "{err}");
    // A pipe is not a socket at all.
    let (r, _w) = pipe();
    let err = el
        .adopt_listener(r, ListenKind::Tcp, || Box::new(Echo))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a socket"), "{err}");
    // What is right is still served.
    let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bound = el
        .adopt_listener(OwnedFd::from(good), ListenKind::Tcp, || Box::new(Echo))
        .unwrap();
    let mut c = client(addr_of(bound.addr));
    c.write_all(b"ok").unwrap();
    run_until(&mut el, |el| el.stats().bytes_out >= 2);
    assert_eq!(read_n(&mut c, 2), b"ok");
}

/// issue 18, item 5: connections of a listener left out of the statistics (a metrics
/// endpoint) have a cap of their own: past it they are closed at once, and the service's
/// own listener goes on accepting.
#[test]
fn issue_18_side_listeners_have_a_cap_of_their_own() {
    struct Count;
    impl Handler<usize> for Count {
        fn on_open(&mut self, ctx: &mut Ctx<'_, usize>) {
            *ctx.state() += 1;
        }
        fn on_data(&mut self, _: &mut Ctx<'_, usize>, _: &[u8]) {}
    }
    let mut config = Config::default();
    config.max_side_connections = 3;
    config.max_connections = Some(2);
    let mut el = EventLoop::with_state(config, 0usize).unwrap();
    let side = el
        .listen(&any(), ListenKind::Tcp, || Box::new(Count))
        .unwrap();
    el.count_in_stats(side.id, false).unwrap();
    let main = el
        .listen(&any(), ListenKind::Tcp, || Box::new(Echo))
        .unwrap();
    let side_addr = addr_of(side.addr);
    let mut kept: Vec<TcpStream> = (0..5).map(|_| client(side_addr)).collect();
    run_until(&mut el, |el| *el.state() == 3);
    // The two past the cap were accepted and closed: they read EOF (or a reset).
    let mut ended = 0;
    for c in &mut kept {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        for _ in 0..5 {
            el.run_once(Some(Duration::from_millis(10))).unwrap();
        }
        let timed_out = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        match c.read(&mut b) {
            Ok(0) => ended += 1,
            Err(e) if !timed_out(&e) => ended += 1,
            _ => {}
        }
    }
    assert_eq!(*el.state(), 3, "opened: the cap");
    assert_eq!(ended, 2, "closed at once: the rest");
    // The service still takes connections (its own limit is 2, and it has none).
    let mut echo = client(addr_of(main.addr));
    echo.write_all(b"hi").unwrap();
    run_until(&mut el, |el| el.stats().bytes_out >= 2);
    assert_eq!(read_n(&mut echo, 2), b"hi");
}
