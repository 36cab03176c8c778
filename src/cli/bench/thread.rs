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
//!    every waiting connection ([`crate::LoopCtx::set_timer_for`]): they all start then.
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::dgram::DgramSock;
use super::pattern::{Pattern, SPREAD, connection_key, random_template};
use super::settings::{Load, Settings};
use super::stream::StreamConn;
use crate::cli::common::Transport;
use crate::cli::report::Recorder;
use crate::net::{Endpoint, PeerAddr, UnixName};
use crate::{ConnId, ConnectOptions, EventLoop, LoopCtx, Sender};

/// Connects a thread keeps in progress at once. Thousands of SYNs at once overflow a
/// server's SYN and accept queues (`tcp_max_syn_backlog`, `somaxconn`): the dropped ones
/// are retried by the kernel only after a second, then three, and a run of 17,000
/// connections turns into thousands of connect timeouts. Keeping this many in flight
/// connects as fast as the server accepts, with no tuning.
pub(super) const MAX_CONNECTING: usize = 256;
/// Pause before reopening a connection that failed or broke, so a refusing server does
/// not get a connect storm.
pub(super) const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// The instants that divide a run, the same for every thread.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeline {
    /// Traffic starts (every connection that is up starts sending).
    pub(super) start: Instant,
    /// End of the warm-up: measuring starts.
    pub(super) measure_start: Instant,
    /// End of the measured window: no new messages.
    pub(super) end: Instant,
    /// The last echoes have had their chance; whatever is left is closed.
    pub(super) grace_end: Instant,
    /// Length of an interval.
    pub(super) interval: Duration,
}

impl Timeline {
    pub(super) fn new(start: Instant, s: &Settings) -> Timeline {
        let measure_start = start + s.warmup;
        let end = measure_start + s.duration;
        Timeline {
            start,
            measure_start,
            end,
            grace_end: end + s.timeout + sweep_period(s.timeout) + Duration::from_millis(50),
            interval: s.interval,
        }
    }

    pub(super) fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }

    /// Where the interval starting at `from` ends.
    fn interval_end(&self, from: Instant) -> Instant {
        if from < self.measure_start {
            (from + self.interval).min(self.measure_start)
        } else {
            (from + self.interval).min(self.end)
        }
    }
}

/// How often a datagram socket looks for messages that timed out.
pub(super) fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// `base + secs`, or `None` when that is too far away to represent (treated as "never").
pub(super) fn after(base: Instant, secs: f64) -> Option<Instant> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| base.checked_add(d))
}

/// What one thread saw in one interval.
#[derive(Debug)]
pub(super) struct Interval {
    /// Position from traffic start: 0, 1, 2...; the same interval has the same index in
    /// every thread.
    pub(super) index: u32,
    pub(super) start: Instant,
    pub(super) end: Instant,
    /// Inside the warm-up (not measured).
    pub(super) warmup: bool,
    /// Round trips, from when each message was sent (closed loop) or due (open loop).
    pub(super) rtt: Recorder,
    /// Open loop only: round trips from when each message actually went out.
    pub(super) rtt_uncorrected: Recorder,
    /// Connects (with TLS handshakes) completed in the interval.
    pub(super) connect: Recorder,
    pub(super) messages: u64,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
}

impl Interval {
    fn new(index: u32, start: Instant, tl: &Timeline) -> Interval {
        Interval {
            index,
            start,
            end: tl.interval_end(start),
            warmup: start < tl.measure_start,
            rtt: Recorder::new(),
            rtt_uncorrected: Recorder::new(),
            connect: Recorder::new(),
            messages: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// Adds another thread's figures for the same interval.
    pub(super) fn merge(&mut self, o: &Interval) {
        self.rtt.merge(&o.rtt);
        self.rtt_uncorrected.merge(&o.rtt_uncorrected);
        self.connect.merge(&o.connect);
        self.messages += o.messages;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }
}

/// Counters of one thread (and, merged, of the run).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) messages: u64,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) verify_errors: u64,
    /// Messages still unanswered when their time ran out (the grace after the window).
    pub(super) timeouts: u64,
    /// Datagrams never answered within `--timeout`.
    pub(super) lost: u64,
    /// Datagram echoes that came after their message was declared lost.
    pub(super) late: u64,
    /// Datagram echoes for a message already answered.
    pub(super) duplicates: u64,
    /// Datagrams from somewhere other than the server.
    pub(super) wrong_source: u64,
    pub(super) connects_ok: u64,
    pub(super) connect_failures: u64,
    /// Connections the server closed while the run still wanted them.
    pub(super) closed_by_server: u64,
    /// Connections that ended in a reset or another I/O or TLS error mid-run.
    pub(super) broken: u64,
    /// Messages that were in flight on connections closed by the server or broken.
    pub(super) unanswered: u64,
    /// Connections established inside the measured window (for `--reconnect`).
    pub(super) opened_in_window: u64,
}

impl Counters {
    pub(super) fn add(&mut self, o: &Counters) {
        self.messages += o.messages;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.verify_errors += o.verify_errors;
        self.timeouts += o.timeouts;
        self.lost += o.lost;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.wrong_source += o.wrong_source;
        self.connects_ok += o.connects_ok;
        self.connect_failures += o.connect_failures;
        self.closed_by_server += o.closed_by_server;
        self.broken += o.broken;
        self.unanswered += o.unanswered;
        self.opened_in_window += o.opened_in_window;
    }

    /// Everything that went wrong, as the progress line counts it.
    pub(super) fn errors(&self) -> u64 {
        self.verify_errors
            + self.timeouts
            + self.lost
            + self.late
            + self.duplicates
            + self.wrong_source
            + self.connect_failures
            + self.closed_by_server
            + self.broken
    }
}

/// What the handlers of one thread record into (the loop's state).
#[derive(Debug, Default)]
pub(super) struct ThreadState {
    /// Connection keys handed out so far.
    serial: u64,
    pub(super) c: Counters,
    /// Known once the main thread says go.
    pub(super) tl: Option<Timeline>,
    cur: Option<Interval>,
    /// The window's last interval has been handed over: no more.
    intervals_over: bool,
    done: Vec<Interval>,
    /// Connect latency of the connections opened before traffic started.
    pub(super) connect_phase: Recorder,
    /// Connections opened before the timeline was known: woken when it is.
    pub(super) waiting: Vec<ConnId>,
    /// Slots whose first connection attempt has finished, either way.
    pub(super) settled: usize,
    /// Connections (or datagram sockets) up right now.
    pub(super) up: u64,
    /// Stream connects in progress.
    pub(super) connecting: usize,
    /// Connections to open again, not before the given instant.
    pub(super) requeue: Vec<(Instant, usize)>,
    /// Open loop: where each slot's schedule stands when its connection closed early, so
    /// the next one sends what came due meanwhile (late, with its latency counted from
    /// when it was due) instead of skipping it.
    pub(super) schedule: std::collections::HashMap<usize, u64>,
    pub(super) first_error: Option<String>,
    /// The run is over and the loop is being stopped: closes are ours, not failures.
    pub(super) stopping: bool,
}

impl ThreadState {
    /// The interval `now` falls in, rolling over finished ones; `None` outside traffic.
    fn interval_at(&mut self, now: Instant) -> Option<&mut Interval> {
        let tl = self.tl?;
        if now < tl.start || now >= tl.end {
            return None;
        }
        self.roll(now);
        self.cur.as_mut()
    }

    /// Closes every interval that ended by `now` (the driver calls this on time, so
    /// intervals without samples still come out).
    pub(super) fn roll(&mut self, now: Instant) {
        let Some(tl) = self.tl else { return };
        if now < tl.start || self.intervals_over {
            return;
        }
        let cur = self
            .cur
            .get_or_insert_with(|| Interval::new(0, tl.start, &tl));
        while now >= cur.end && cur.end < tl.end {
            let next = Interval::new(cur.index + 1, cur.end, &tl);
            self.done.push(std::mem::replace(cur, next));
        }
        if now >= tl.end && cur.end >= tl.end {
            if let Some(last) = self.cur.take() {
                self.done.push(last);
            }
            self.intervals_over = true;
        }
    }

    /// Finished intervals, for the main thread.
    pub(super) fn take_done(&mut self) -> Vec<Interval> {
        std::mem::take(&mut self.done)
    }

    /// When the current interval ends (the driver wakes then to roll it).
    fn next_boundary(&self) -> Option<Instant> {
        self.cur.as_ref().map(|iv| iv.end)
    }

    /// A message's echo is complete and correct: `due` is when its latency started
    /// counting, `sent` when it actually went out (the same in closed loop).
    pub(super) fn complete(&mut self, now: Instant, due: Instant, sent: Instant, open: bool) {
        let in_window = self.tl.is_some_and(|tl| tl.in_window(now));
        if let Some(iv) = self.interval_at(now) {
            iv.rtt.record(now.saturating_duration_since(due));
            if open {
                iv.rtt_uncorrected
                    .record(now.saturating_duration_since(sent));
            }
            iv.messages += 1;
        }
        if in_window {
            self.c.messages += 1;
        }
    }

    /// Payload bytes went out at `now`.
    pub(super) fn sent(&mut self, now: Instant, n: usize) {
        if self.tl.is_some_and(|tl| tl.in_window(now)) {
            self.c.bytes_sent += n as u64;
        }
        if let Some(iv) = self.interval_at(now) {
            iv.bytes_sent += n as u64;
        }
    }

    /// Payload bytes of correct echoes came in at `now`.
    pub(super) fn received(&mut self, now: Instant, n: usize) {
        if self.tl.is_some_and(|tl| tl.in_window(now)) {
            self.c.bytes_received += n as u64;
        }
        if let Some(iv) = self.interval_at(now) {
            iv.bytes_received += n as u64;
        }
    }

    /// A connection opened after taking `took`.
    pub(super) fn connected(&mut self, now: Instant, took: Duration) {
        self.c.connects_ok += 1;
        self.up += 1;
        match self.tl {
            None => self.connect_phase.record(took),
            Some(tl) if now < tl.start => self.connect_phase.record(took),
            Some(tl) => {
                if tl.in_window(now) {
                    self.c.opened_in_window += 1;
                }
                if let Some(iv) = self.interval_at(now) {
                    iv.connect.record(took);
                }
            }
        }
    }

    /// When connection `id`, up at `now`, starts sending: the go has not come yet (it is
    /// put on the list the go wakes), or traffic starts later, or it has started.
    pub(super) fn start_for(&mut self, id: ConnId, now: Instant) -> Start {
        match self.tl {
            None => {
                self.waiting.push(id);
                Start::Waiting
            }
            Some(tl) if now < tl.start => Start::At(tl.start),
            Some(tl) => Start::Now(tl),
        }
    }

    pub(super) fn note_error(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            let msg = what();
            log::debug!("{msg}");
            self.first_error = Some(msg);
        }
    }
}

/// See [`ThreadState::start_for`].
pub(super) enum Start {
    /// Traffic is on: start now.
    Now(Timeline),
    /// Set a timer for this instant, and start then.
    At(Instant),
    /// The go's timer will come.
    Waiting,
}

/// What every handler of one thread reads: the run's settings and payload template.
/// Read-only, so handlers share it freely; what they count goes to the loop's state
/// ([`ThreadState`], reached through `ctx.state()`).
#[derive(Debug)]
pub(super) struct Env {
    pub(super) s: Arc<Settings>,
    pub(super) thread: usize,
    template: Box<[u8]>,
}

impl Env {
    pub(super) fn pattern(&self) -> Pattern<'_> {
        Pattern {
            template: &self.template,
            size: self.s.size,
        }
    }

    /// When open-loop message `k` of a schedule started at `anchor` is due (`None`: never).
    fn due(&self, anchor: Instant, k: u64) -> Option<Instant> {
        match self.s.load {
            Load::Open { interval, .. } => after(anchor, k as f64 * interval),
            _ => None,
        }
    }

    /// Open loop: what a sender with `in_flight` unanswered messages, whose next message is
    /// number `k` of a schedule started at `anchor`, should do at `now`.
    pub(super) fn open_loop_step(
        &self,
        tl: &Timeline,
        anchor: Instant,
        k: u64,
        in_flight: usize,
        now: Instant,
    ) -> Step {
        match self.due(anchor, k) {
            Some(due) if due < tl.end => {
                if due > now {
                    Step::WaitUntil(due)
                } else if in_flight >= self.s.open_loop_cap {
                    // The next echo asks again; the backlog keeps its due times.
                    Step::Full
                } else {
                    Step::Send(due)
                }
            }
            _ => Step::Finish,
        }
    }

    /// Where connection `slot`'s open-loop schedule starts: staggered over the run's
    /// connections (every segment's) so the total rate is smooth.
    pub(super) fn anchor(&self, tl: &Timeline, slot: usize) -> Instant {
        match self.s.load {
            Load::Open { rate, .. } => {
                after(tl.start, self.s.global_slot(slot) as f64 / rate).unwrap_or(tl.start)
            }
            _ => tl.start,
        }
    }
}

/// What an open-loop sender does next (see [`Env::open_loop_step`]).
pub(super) enum Step {
    /// Send the message that was due at this time.
    Send(Instant),
    /// Nothing is due yet: wake up then.
    WaitUntil(Instant),
    /// Too many in flight: wait for echoes.
    Full,
    /// The schedule ends inside the measured window: stop sending.
    Finish,
}

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
}

/// A thread's totals.
#[derive(Debug)]
pub(super) struct ThreadResult {
    pub(super) c: Counters,
    pub(super) connect_phase: Recorder,
    pub(super) first_error: Option<String>,
}

/// The target as a datagram destination.
pub(super) fn datagram_target(target: &Endpoint) -> io::Result<PeerAddr> {
    match target {
        Endpoint::Inet(a) => Ok(PeerAddr::Inet(*a)),
        Endpoint::Unix(UnixName::Path(p)) => {
            std::os::unix::net::SocketAddr::from_pathname(p).map(PeerAddr::Unix)
        }
        Endpoint::Unix(UnixName::Abstract(n)) => {
            std::os::unix::net::SocketAddr::from_abstract_name(n).map(PeerAddr::Unix)
        }
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
            let ip = s.source_for(slot).unwrap_or(if target.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            });
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
    let config = crate::Config {
        // A closing connection waits this long for the server's side of the close.
        close_timeout: s.timeout,
        // Every thread's loop spins on its own.
        busy_poll: s.busy_poll,
        ..crate::Config::default()
    };
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
        if !announced && el.state().settled >= slots.len() {
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
        el.run_once(Some(wake.saturating_duration_since(now)))
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
    })
}
