//! The load thread's state model: the run's timeline and intervals, the counters, the
//! thread's shared state, and what a connection or socket is told to do next. The
//! drivers (`stream`, `dgram`) and the thread (`thread`) all use it; it uses none of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pattern::Pattern;
use super::settings::{Load, Settings};
use crate::cli::bench::recorder::Recorder;
use echoloop::ConnId;

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
    pub(super) serial: u64,
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
    pub(super) first_attempts_done: usize,
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
    /// Open loop: how late timer-driven sends left against their schedule, in the window.
    pub(super) send_lag: Recorder,
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
            if let Some(mut last) = self.cur.take() {
                // Ctrl-C moved the end into this interval: it ends there too.
                last.end = last.end.min(tl.end).max(last.start);
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
    pub(super) fn next_boundary(&self) -> Option<Instant> {
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

    /// A timer let an open-loop message due at `due` go out at `now`.
    pub(super) fn send_lag(&mut self, due: Instant, now: Instant) {
        if self.tl.is_some_and(|tl| tl.in_window(now)) {
            self.send_lag.record(now.saturating_duration_since(due));
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
    pub(super) template: Box<[u8]>,
}

impl Env {
    /// The payload of message `seq` of the connection with key `key` (its size drawn
    /// from `--size`).
    pub(super) fn pattern(&self, key: u64, seq: u64) -> Pattern<'_> {
        Pattern {
            template: &self.template,
            size: self.s.sizes.of(key, seq),
            payload: self.s.payload,
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
