//! One load thread: its own reactor, its share of the connections, the run's phases.
//!
//! # Phases
//!
//! 1. **Connect.** The thread opens its connections (all at once, or at `--connect-rate`).
//!    Each one that opens waits, sending nothing. When every connection has had its first
//!    attempt (opened, or failed: a failure is retried later), the thread tells the main
//!    thread, handing it a [`Sender`] into its loop.
//! 2. **Go.** Once every thread is connected, the main thread fixes the [`Timeline`] (the
//!    same for all, at `--start-at` when given) and sends it through those channels. The
//!    channel's callback stores it and sets a timer, for the instant traffic starts, on
//!    every waiting connection ([`echoloop::LoopCtx::set_timer_for`]): they all start then.
//! 3. **Warm-up, window, grace.** Messages flow; what completes inside the window counts.
//!    After the window no new message is sent; the last echoes have `--timeout` to come.
//! 4. **Stop.** The loop is stopped; what is still owed counts as timed out. Nothing that
//!    happens because the generator itself stops counts as a failure.
//!
//! # Intervals
//!
//! Every sample lands in the [`Interval`] its completion time falls in: intervals run
//! every `--interval` from traffic start to the window's start, then from the window's
//! start to its end (the last one of each part may be shorter), so no interval straddles
//! the warm-up and the window. The thread rolls to the next interval when a sample or its
//! driver finds the current one over, and hands finished ones to the main thread, which
//! merges them across threads for the progress line, `--json-lines` and `--hlog`. The
//! final latency histogram is the sum of the window's intervals, so the interval log and
//! the report agree exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::dgram::DgramSock;
use super::model::{Counters, Env, Interval, ThreadState, Timeline, after};
use super::pattern::{SPREAD, connection_key, random_template};
use super::precise::PreciseWake;
use super::settings::Settings;
use super::stream::StreamConn;
use crate::cli::bench::recorder::Recorder;
use crate::cli::common::Transport;
use crate::cli::procfs::{CpuReading, cpu_between, cpu_reading};
use echoloop::net::{Endpoint, PeerAddr, UnixName};
use echoloop::{ConnectOptions, EventLoop, LoopCtx, Sender};

/// Connects a thread keeps in progress at once. Thousands of SYNs at once overflow a
/// server's SYN and accept queues (`tcp_max_syn_backlog`, `somaxconn`): the dropped ones
/// are retried by the kernel only after a second, then three, and a run of 17,000
/// connections turns into thousands of connect timeouts. Keeping this many in flight
/// connects as fast as the server accepts, with no tuning.
pub(super) const MAX_CONNECTING: usize = 256;
/// Messages from the load threads to the main thread.
#[derive(Debug)]
pub(super) enum Msg {
    /// Every connection of the thread has had its first attempt; send the timeline here.
    Connected {
        go: Sender<Timeline>,
        /// The connect latencies so far.
        phase: Recorder,
    },
    /// One finished interval of one thread, with its error count and connections then.
    Interval {
        thread: usize,
        iv: Box<Interval>,
        errors: u64,
        up: u64,
    },
    /// The thread is done.
    Done(usize, Box<Result<ThreadResult, String>>),
    /// Not from a load thread: the user pressed Ctrl-C (SIGINT) once.
    Interrupted,
}

/// A thread's totals.
#[derive(Debug)]
pub(super) struct ThreadResult {
    pub(super) c: Counters,
    pub(super) connect_phase: Recorder,
    pub(super) first_error: Option<String>,
    /// Open loop: how late the timer let sends go out.
    pub(super) send_lag: Recorder,
    /// The thread's CPU over the window, in percent of one core, if it could be read.
    pub(super) cpu_percent: Option<f64>,
    /// How much of the window the thread was running or waiting for a core (runnable,
    /// not idle), in percent, if the kernel says (`/proc/thread-self/schedstat`).
    pub(super) busy_percent: Option<f64>,
}

/// The calling thread's scheduler times so far (`/proc/thread-self/schedstat`: ns on a
/// core, ns runnable but waiting for one), with the instant they were read.
fn own_sched() -> Option<(Instant, u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let (Some(Ok(run)), Some(Ok(wait))) = (fields.next(), fields.next()) else {
        return None;
    };
    Some((Instant::now(), run, wait))
}

/// Percent of the time between two [`own_sched`] readings that the thread was not idle.
fn busy_between(a: Option<(Instant, u64, u64)>, b: Option<(Instant, u64, u64)>) -> Option<f64> {
    let ((t0, run0, wait0), (t1, run1, wait1)) = (a?, b?);
    let span = t1.checked_duration_since(t0)?.as_nanos() as f64;
    let busy = (run1.saturating_sub(run0) + wait1.saturating_sub(wait0)) as f64;
    (span > 0.0).then(|| 100.0 * busy / span)
}

/// The calling thread's CPU time so far (its id from `/proc/thread-self`, which links
/// to `PID/task/TID`).
fn own_cpu() -> Option<CpuReading> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    cpu_reading(link.file_name()?.to_str()?.parse().ok()?)
}

/// The target as a datagram destination.
pub(super) fn datagram_target(target: &Endpoint) -> io::Result<PeerAddr> {
    match target {
        Endpoint::Inet(a) => Ok(PeerAddr::Inet(*a)),
        Endpoint::Unix(name) => name.to_std().map(PeerAddr::Unix),
        other => Err(io::Error::other(format!(
            "cannot send datagrams to {other}"
        ))),
    }
}

/// Starts connection (or socket) `slot` in `el`; `first` on its first attempt.
fn open_slot(
    el: &mut EventLoop<ThreadState>,
    env: &Rc<Env>,
    slot: usize,
    first: bool,
) -> Result<(), String> {
    let s = &env.s;
    let serial = el.state().serial;
    el.state_mut().serial += 1;
    let key = connection_key(s.segment.index, env.thread, serial);
    let now = Instant::now();
    match s.transport {
        Transport::Tcp | Transport::Tls | Transport::Unix => {
            let mut opts = ConnectOptions::new().timeout(s.connect_timeout);
            if let Some((cfg, name)) = &s.tls {
                opts = opts.tls(Arc::clone(cfg), name.clone());
            }
            if let Some(ip) = s.source_for(slot) {
                opts = opts.source(ip);
            }
            let handler = StreamConn::new(Rc::clone(env), slot, key, now, first);
            el.state_mut().connecting += 1;
            // A connect that fails, even at once (no descriptor, address unavailable...),
            // is counted and retried by the handler's `on_close`.
            el.connect(&s.target, opts, Box::new(handler));
            Ok(())
        }
        Transport::Udp => {
            let Endpoint::Inet(target) = &s.target else {
                return Err("udp needs host:port".into());
            };
            let ip = s
                .source_for(slot)
                .unwrap_or(echoloop::net::wildcard_for(*target));
            let handler = DgramSock::new(Rc::clone(env), slot, key, PeerAddr::Inet(*target));
            el.bind_udp(SocketAddr::new(ip, 0), Box::new(handler))
                .map(drop)
                .map_err(|e| format!("cannot open a udp socket: {e}"))
        }
        Transport::UnixDgram => {
            let target = datagram_target(&s.target).map_err(|e| format!("{}: {e}", s.target))?;
            // The server can only answer a named socket; an abstract name leaves no file
            // behind.
            let name = UnixName::Abstract(
                format!(
                    "echoloop-bench-{}-{}-{key:016x}",
                    std::process::id(),
                    env.thread
                )
                .into_bytes(),
            );
            let handler = DgramSock::new(Rc::clone(env), slot, key, target);
            el.bind_unix_datagram(&name, Box::new(handler))
                .map(drop)
                .map_err(|e| format!("cannot open a unix-dgram socket: {e}"))
        }
        // The command line offers no other (the library's list may grow).
        other => Err(format!("bench does not speak {}", other.name())),
    }
}

/// One load thread: see the module docs. `run_start` is when connecting begins (the
/// `--connect-rate` ramp counts from it); `slots` are this thread's connections.
pub(super) fn drive(
    thread: usize,
    s: Arc<Settings>,
    run_start: Instant,
    slots: Vec<usize>,
    tx: &mpsc::Sender<Msg>,
) -> Result<ThreadResult, String> {
    let mut config = echoloop::Config::default();
    // A closing connection waits this long for the server's side of the close.
    config.close_timeout = s.timeout;
    // Every thread's loop spins on its own.
    config.busy_poll = s.busy_poll;
    if s.trace {
        config.trace = Some(crate::cli::common::tracer());
    }
    let mut el = EventLoop::with_state(config, ThreadState::default())
        .map_err(|e| format!("cannot create a poller: {e}"))?;
    // The segment is in the seed too: generators of one run send different bodies.
    let seed = (u64::from(s.segment.index) << 32) | thread as u64;
    let env = Rc::new(Env {
        s: Arc::clone(&s),
        thread,
        template: random_template(SPREAD + s.size, seed),
    });
    // Go: the timeline arrives from the main thread; every connection waiting for it is
    // woken by a timer at the instant traffic starts.
    let go = el.channel(1, |ctx: &mut LoopCtx<'_, ThreadState>, tl: Timeline| {
        let delay = tl.start.saturating_duration_since(ctx.now());
        let st = ctx.state();
        st.tl = Some(tl);
        for id in std::mem::take(&mut st.waiting) {
            ctx.set_timer_for(id, delay);
        }
    });

    // Connections to open, earliest first. With --connect-rate connection i is due at
    // i / rate: the poll timeout below is the ramp's timer.
    let mut queue: BinaryHeap<Reverse<(Instant, usize)>> = slots
        .iter()
        .map(|&i| {
            let at = match s.connect_rate {
                Some(r) => after(run_start, i as f64 / r).unwrap_or(run_start),
                None => run_start,
            };
            Reverse((at, i))
        })
        .collect();
    let mut tried = vec![false; s.connections];
    let mut announced = false;
    let (mut cpu_at_start, mut cpu_at_end) = (None, None);
    // Open loop: sends leave within microseconds of when they are due (see `precise`).
    let mut precise = if s.is_open_loop() && s.busy_poll.is_none() {
        match PreciseWake::new(&mut el) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("no timerfd ({e}): open-loop sends may leave up to 1 ms late");
                None
            }
        }
    } else {
        None
    };
    let (mut sched_at_start, mut sched_at_end) = (None, None);
    loop {
        let now = Instant::now();
        queue.extend(
            el.state_mut()
                .requeue
                .drain(..)
                .map(|(at, slot)| Reverse((at, slot))),
        );
        let tl = el.state().tl;
        let opening = tl.is_none_or(|tl| now < tl.end);
        if opening {
            while let Some(&Reverse((at, slot))) = queue.peek() {
                if at > now || el.state().connecting >= MAX_CONNECTING {
                    break;
                }
                queue.pop();
                let first = !std::mem::replace(&mut tried[slot], true);
                open_slot(&mut el, &env, slot, first)?;
            }
        }
        if !announced && el.state().first_attempts_done >= slots.len() {
            announced = true;
            let msg = Msg::Connected {
                go: go.clone(),
                phase: std::mem::take(&mut el.state_mut().connect_phase),
            };
            // The main thread only stops listening when it gave up on us.
            let _ = tx.send(msg);
        }
        let mut wake = now + Duration::from_secs(1);
        if let Some(tl) = tl {
            // This thread's own CPU at the window's edges, read by itself (the main
            // thread may run only after it ended, when it can no longer be read). The
            // loop wakes at both edges: they are interval boundaries.
            if cpu_at_start.is_none() && now >= tl.measure_start {
                cpu_at_start = own_cpu();
                sched_at_start = own_sched();
            }
            if cpu_at_end.is_none() && now >= tl.end {
                cpu_at_end = own_cpu();
                sched_at_end = own_sched();
            }
            let st = el.state_mut();
            st.roll(now);
            let (errors, up) = (st.c.errors(), st.up);
            for iv in st.take_done() {
                let _ = tx.send(Msg::Interval {
                    thread,
                    iv: Box::new(iv),
                    errors,
                    up,
                });
            }
            if now >= tl.end {
                // No more sends are due: the loop may now run empty.
                if let Some(p) = precise.take() {
                    p.remove(&mut el);
                }
            }
            if (now >= tl.end && el.is_empty()) || now >= tl.grace_end {
                break;
            }
            wake = wake.min(tl.grace_end);
            if now < tl.end {
                let boundary = el
                    .state()
                    .next_boundary()
                    .unwrap_or_else(|| tl.start.max(now));
                wake = wake.min(boundary).min(tl.end);
            }
        }
        if opening && el.state().connecting < MAX_CONNECTING {
            if let Some(&Reverse((at, _))) = queue.peek() {
                wake = wake.min(at);
            }
        }
        let mut timeout = wake.saturating_duration_since(now);
        if let Some(p) = precise.as_mut() {
            // The loop's own next timer (a connection's next send) or ours, whichever
            // comes first; the poll's millisecond timeout stays as a backstop. Waking
            // from sleep takes this machine tens of microseconds, so the timer fires
            // SPIN early and the last stretch is polled without sleeping.
            let next = el.timeout().map_or(wake, |d| wake.min(now + d));
            if next <= now + PreciseWake::SPIN {
                timeout = Duration::ZERO;
                // Polling, not sleeping: let a thread waiting for this core (a server
                // on the same machine) run first, rather than take its time.
                std::thread::yield_now();
            } else if let Err(e) = p.arm(next - PreciseWake::SPIN) {
                log::warn!("timerfd: {e}; open-loop sends may leave up to 1 ms late");
                if let Some(p) = precise.take() {
                    p.remove(&mut el);
                }
            }
        }
        el.run_once(Some(timeout))
            .map_err(|e| format!("event loop: {e}"))?;
    }
    // Whatever is still open has had its grace: a short graceful close, then a forced one.
    // Closing reports every connection's unanswered messages to its handler.
    el.state_mut().stopping = true;
    el.stop(Duration::from_millis(100));
    let hard_stop = Instant::now() + Duration::from_secs(2);
    while el
        .run_once(Some(Duration::from_millis(20)))
        .map_err(|e| format!("event loop: {e}"))?
    {
        if Instant::now() >= hard_stop {
            break;
        }
    }
    let st = std::mem::take(el.state_mut());
    drop(el);
    Ok(ThreadResult {
        c: st.c,
        connect_phase: st.connect_phase,
        first_error: st.first_error,
        send_lag: st.send_lag,
        cpu_percent: cpu_between(cpu_at_start, cpu_at_end).map(|(pct, _)| pct),
        busy_percent: busy_between(sched_at_start, sched_at_end),
    })
}
