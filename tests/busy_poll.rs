//! The busy-poll idle strategy (`Config::busy_poll`, `--busy-poll`): everything the loop
//! does still works while it spins, and it goes back to sleep when traffic stops.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Proc;
use echoloop::{CloseReason, Config, Ctx, Echo, Endpoint, EventLoop, Handler, ListenKind, TimerId};

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: `usage` is a plain C struct that getrusage fills in; all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer to a rusage the call may write.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One spinning test at a time: each keeps a core busy, and two of them measure how idle
/// a loop is or how fast it answers, which another test's spinning on this 2-core
/// machine would disturb.
static SPIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spin_alone() -> std::sync::MutexGuard<'static, ()> {
    SPIN.lock().unwrap_or_else(|e| e.into_inner())
}

fn busy_config(window: Duration) -> Config {
    let mut c = Config::default();
    c.busy_poll = Some(window);
    c
}

/// Echoes, and reports each close's reason on `tx`.
struct EchoReporting {
    tx: mpsc::Sender<String>,
}

impl Handler for EchoReporting {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.send(data);
    }
    fn on_close(&mut self, _: &mut Ctx<'_>, reason: &CloseReason) {
        let _ = self.tx.send(reason.to_string());
    }
}

/// Sets a 50 ms timer on open and writes `tick` when it fires.
struct Ticker;

impl Handler for Ticker {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(Duration::from_millis(50));
    }
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _: TimerId) {
        ctx.send(b"tick");
        ctx.close();
    }
}

/// A busy-polling loop on its own thread serving `handler`; returns its address, a stop
/// handle, and the thread, which reports its CPU time over its idle second.
fn spawn_loop(
    config: Config,
    handler: impl Fn() -> Box<dyn Handler> + Send + 'static,
    idle_probe: mpsc::Receiver<()>,
) -> (
    SocketAddr,
    echoloop::StopHandle,
    std::thread::JoinHandle<Option<(Duration, Duration)>>,
) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut el = EventLoop::new(config).unwrap();
        let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
        let bound = el.listen(&any, ListenKind::Tcp, handler).unwrap();
        tx.send((bound.addr, el.stop_handle())).unwrap();
        let mut probe = None;
        loop {
            // A probe asked for: measure this thread's CPU over the next idle second.
            if probe.is_none() && idle_probe.try_recv().is_ok() {
                probe = Some((Instant::now(), thread_cpu()));
            }
            if let Some((wall0, cpu0)) = probe {
                if wall0.elapsed() >= Duration::from_secs(1) {
                    let cpu = thread_cpu() - cpu0;
                    let wall = wall0.elapsed();
                    // Stop ourselves; the result goes back through the join.
                    el.stop(Duration::ZERO);
                    while el.run_once(Some(Duration::from_millis(10))).unwrap() {}
                    return Some((cpu, wall));
                }
            }
            if !el.run_once(Some(Duration::from_millis(100))).unwrap() {
                return None;
            }
        }
    });
    let (addr, stop) = rx.recv_timeout(common::DEADLINE).unwrap();
    let Endpoint::Inet(addr) = addr else {
        panic!("not an IP address")
    };
    (addr, stop, thread)
}

fn ping(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut buf = [0u8; 32];
    for i in 0..n {
        let msg = [i as u8; 32];
        s.write_all(&msg).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    }
}

#[test]
fn busy_poll_echoes_then_sleeps_when_traffic_stops() {
    let _alone = spin_alone();
    let (probe_tx, probe_rx) = mpsc::channel();
    let (addr, _stop, thread) = spawn_loop(
        busy_config(Duration::from_millis(1)),
        || Box::new(Echo),
        probe_rx,
    );
    ping(addr, 2000);
    // Traffic has stopped; the window is 1 ms: the loop must be asleep for nearly all of
    // the next second.
    probe_tx.send(()).unwrap();
    let (cpu, wall) = thread.join().unwrap().expect("the probe ran");
    assert!(
        cpu < wall / 10,
        "spent {cpu:?} of CPU in {wall:?} with no traffic"
    );
}

#[test]
fn busy_poll_keeps_timers_idle_timeouts_and_stops() {
    let _alone = spin_alone();
    // Timers fire while spinning.
    let (_probe, probe_rx) = mpsc::channel();
    let (addr, stop, thread) = spawn_loop(
        busy_config(Duration::from_secs(5)),
        || Box::new(Ticker),
        probe_rx,
    );
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"tick");
    assert!(started.elapsed() >= Duration::from_millis(50));
    // The stop handle wakes a spinning loop as it wakes a sleeping one.
    stop.stop(Duration::from_secs(1));
    assert_eq!(thread.join().unwrap(), None, "stopped by the handle");

    // Idle timeouts still close idle connections.
    let mut config = busy_config(Duration::from_secs(5));
    config.idle_timeout = Some(Duration::from_millis(100));
    let (tx, rx) = mpsc::channel();
    let (_probe, probe_rx) = mpsc::channel();
    let (addr, stop, thread) = spawn_loop(
        config,
        move || Box::new(EchoReporting { tx: tx.clone() }),
        probe_rx,
    );
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    drop(idle); // our FIN ends the server's lingering close
    let reason = rx.recv_timeout(common::DEADLINE).unwrap();
    // Ended by our FIN, begun by the idle timeout: the reason it keeps (issue 18, item 11).
    assert!(reason.contains("idle timeout"), "{reason}");
    // Graceful stop with a connection still open: it is closed, the loop returns.
    let open = TcpStream::connect(addr).unwrap();
    open.shutdown(Shutdown::Write).unwrap();
    stop.stop(Duration::from_secs(2));
    assert_eq!(thread.join().unwrap(), None);
}

#[test]
fn busy_poll_serve_and_bench_flags() {
    let _alone = spin_alone();
    // Two workers: each loop spins on its own, and both go back to sleep.
    let mut p = Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--busy-poll",
        "1ms",
        "--workers",
        "2",
    ]);
    let addr = p.sockaddr("tcp");
    let (st, out, err) = common::run(
        &[
            "bench",
            "tcp",
            &addr.to_string(),
            "--duration",
            "500ms",
            "--busy-poll",
            "200us",
            "--json",
        ],
        None,
    );
    assert!(st.success(), "{err}");
    assert!(
        out.contains(r#""idle_strategy":"busy-poll 200µs""#),
        "{out}"
    );
    assert!(
        out.contains(r#""p99_99":"#) && out.contains(r#""min":"#),
        "{out}"
    );
    // Within a second of the last message the server is back asleep: under 1% of a core
    // over the next second (CPU time comes in 10 ms ticks).
    let pid = p.pid();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = common::procfs::proc_cpu_ticks(pid).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let t1 = common::procfs::proc_cpu_ticks(pid).unwrap();
    assert!(t1 - t0 <= 1, "{} ticks of CPU in an idle second", t1 - t0);
    p.signal("TERM");
    assert!(p.wait_exit(common::DEADLINE).success());
    assert!(p.stderr_text().contains("idle strategy: busy-poll 1ms"));

    // 0 means block, the default.
    let (st, out, _) = common::run(
        &[
            "bench",
            "tcp",
            "127.0.0.1:1",
            "--duration",
            "100ms",
            "--busy-poll",
            "0",
            "--json",
        ],
        None,
    );
    let _ = st;
    assert!(out.contains(r#""idle_strategy":"block""#), "{out}");
}

/// While one connection keeps the loop spinning, a message from another thread through a
/// loop channel and a second connection are served at once, not after the spin ends.
#[test]
fn busy_poll_serves_channels_and_other_sockets_while_spinning() {
    let _alone = spin_alone();
    let (tx, rx) = mpsc::channel();
    let (back_tx, back_rx) = mpsc::channel::<u32>();
    let thread = std::thread::spawn(move || {
        let mut el = EventLoop::new(busy_config(Duration::from_secs(5))).unwrap();
        let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
        let bound = el
            .listen(&any, ListenKind::Tcp, || Box::new(Echo) as Box<dyn Handler>)
            .unwrap();
        let sender = el.channel(16, move |_, n: u32| {
            let _ = back_tx.send(n + 1);
        });
        tx.send((bound.addr, el.stop_handle(), sender)).unwrap();
        while el.run_once(Some(Duration::from_millis(100))).unwrap() {}
    });
    let (addr, stop, sender) = rx.recv_timeout(common::DEADLINE).unwrap();
    let Endpoint::Inet(addr) = addr else {
        panic!("not an IP address")
    };
    // A steady stream of pings keeps the loop inside its 5 s window.
    let busy = std::thread::spawn(move || ping(addr, 3000));
    for n in 0..20u32 {
        let asked = Instant::now();
        sender.try_send(n).unwrap();
        let got = back_rx.recv_timeout(common::DEADLINE).unwrap();
        assert_eq!(got, n + 1);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a channel message waited {:?} behind the spin",
            asked.elapsed()
        );
    }
    let asked = Instant::now();
    ping(addr, 50);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a second connection waited {:?}",
        asked.elapsed()
    );
    busy.join().unwrap();
    stop.stop(Duration::from_secs(1));
    thread.join().unwrap();
}

/// The loop's own client: pings its server without pause while `on` (issue 23's busy
/// neighbour), counting round trips.
#[derive(Default)]
struct Neighbour {
    on: bool,
    trips: u64,
}

struct Pinger {
    got: usize,
}

const PING: [u8; 32] = [7; 32];

impl Handler<Neighbour> for Pinger {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Neighbour>) {
        ctx.send(&PING);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, Neighbour>, data: &[u8]) {
        self.got += data.len();
        if self.got < PING.len() {
            return;
        }
        self.got = 0;
        ctx.state().trips += 1;
        if ctx.state().on {
            ctx.send(&PING);
        } else {
            ctx.close();
        }
    }
}

/// One round trip of 32 bytes from a blocking client, in microseconds.
fn round_trip_us(s: &mut TcpStream) -> f64 {
    let mut buf = [0u8; 32];
    let t = Instant::now();
    s.write_all(&PING).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, PING);
    t.elapsed().as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn busy_poll_a_quiet_connection_is_not_slowed_by_a_busy_one() {
    let _alone = spin_alone();
    // The loop pings itself without pause on one connection (both ends in the loop, so
    // no other thread competes for the cores), while a client pings every 10 ms on
    // another: the quiet client's round trip must not grow with its busy neighbour.
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut el =
            EventLoop::with_state(busy_config(Duration::from_secs(5)), Neighbour::default())
                .unwrap();
        let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
        let bound = el
            .listen(&any, ListenKind::Tcp, || {
                Box::new(Echo) as Box<dyn Handler<Neighbour>>
            })
            .unwrap();
        let addr = bound.addr.clone();
        let switch = el.channel(4, move |ctx, on: bool| {
            ctx.state().on = on;
            if on {
                let pinger = Box::new(Pinger { got: 0 });
                ctx.connect(addr.clone(), echoloop::ConnectOptions::new(), pinger);
            }
        });
        let (trips_tx, trips_rx) = mpsc::channel::<u64>();
        let ask = el.channel(4, move |ctx, (): ()| {
            let _ = trips_tx.send(ctx.state().trips);
        });
        tx.send((bound.addr, el.stop_handle(), switch, ask, trips_rx))
            .unwrap();
        while el.run_once(Some(Duration::from_millis(100))).unwrap() {}
    });
    let (addr, stop, switch, ask, trips) = rx.recv_timeout(common::DEADLINE).unwrap();
    let Endpoint::Inet(addr) = addr else {
        panic!("not an IP address")
    };
    let mut quiet = TcpStream::connect(addr).unwrap();
    quiet.set_nodelay(true).unwrap();
    quiet.set_read_timeout(Some(common::DEADLINE)).unwrap();
    round_trip_us(&mut quiet);
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    let mut busy_trips = 0;
    // Alternating phases, so that the machine's slow and fast moments fall on both.
    for _ in 0..3 {
        for with_neighbour in [false, true] {
            switch.try_send(with_neighbour).unwrap();
            ask.try_send(()).unwrap();
            let before = trips.recv_timeout(common::DEADLINE).unwrap();
            for _ in 0..25 {
                std::thread::sleep(Duration::from_millis(10));
                let rtt = round_trip_us(&mut quiet);
                if with_neighbour {
                    beside.push(rtt);
                } else {
                    alone.push(rtt);
                }
            }
            ask.try_send(()).unwrap();
            let after = trips.recv_timeout(common::DEADLINE).unwrap();
            if with_neighbour {
                busy_trips += after - before;
            }
        }
    }
    switch.try_send(false).unwrap();
    stop.stop(Duration::from_secs(1));
    thread.join().unwrap();
    let (alone, beside) = (median(alone), median(beside));
    assert!(
        busy_trips > 3_000,
        "the neighbour was not busy: {busy_trips} round trips in 0.75 s"
    );
    assert!(
        beside <= alone * 1.2,
        "the quiet connection's round trip went from {alone:.1} µs alone to {beside:.1} µs \
         beside a busy one ({busy_trips} round trips)"
    );
}
