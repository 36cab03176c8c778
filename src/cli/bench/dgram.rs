//! One datagram socket of the load (UDP, Unix datagram).
//!
//! A datagram carries its sequence number in its header, so `--size` is at least 8. The
//! socket keeps its messages in a queue covering a contiguous range of sequence numbers,
//! so an echo finds its entry by `seq - first`. Entries stay for `--timeout` after they
//! were sent (until the next sweep after that), answered or not: an echo for an entry already answered is a *duplicate*, one
//! for an entry already forgotten (declared lost, or answered long ago) is *late*, and neither is ever taken for
//! the answer to a newer message. Replies must come from the address the messages went
//! to, as a connected socket would insist: anything else is counted and ignored.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use super::model::{Env, Start, Step, ThreadState, Timeline, sweep_period};
use super::pattern::Pattern;
use super::settings::Load;
use echoloop::{DatagramHandler, DgramCtx, PeerAddr, TimerId};

/// Where a sent datagram stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// No echo yet.
    Pending,
    Answered,
    /// Its echo came after the timeout: declared lost, and the echo late.
    Lost,
    /// The send failed: it never left.
    Unsent,
}

/// One sent datagram.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When its latency starts counting: sent (closed loop) or due (open loop).
    due: Instant,
    /// When it went out; the timeout counts from here.
    sent: Instant,
    /// Sent inside the measured window: its loss counts.
    counted: bool,
    fate: Fate,
}

/// One datagram socket of the load.
pub(super) struct DgramSock {
    env: Rc<Env>,
    slot: usize,
    key: u64,
    target: PeerAddr,
    tl: Option<Timeline>,
    /// The outgoing datagram, rebuilt in place for each message.
    buf: Vec<u8>,
    /// Messages `first..first + inflight.len()`, oldest first.
    inflight: VecDeque<Sent>,
    first: u64,
    /// Entries still pending.
    pending: usize,
    finishing: bool,
    anchor: Instant,
    /// Open loop: number of the next message in the schedule.
    next_due: u64,
    schedule_timer: Option<TimerId>,
    sweep_timer: Option<TimerId>,
}

/// Whether a datagram from `from` comes from where we send to.
fn same_peer(from: &PeerAddr, target: &PeerAddr) -> bool {
    match (from, target) {
        (PeerAddr::Inet(a), PeerAddr::Inet(b)) => a == b,
        (PeerAddr::Unix(a), PeerAddr::Unix(b)) => {
            use std::os::linux::net::SocketAddrExt;
            a.as_pathname() == b.as_pathname() && a.as_abstract_name() == b.as_abstract_name()
        }
        _ => false,
    }
}

impl DgramSock {
    pub(super) fn new(env: Rc<Env>, slot: usize, key: u64, target: PeerAddr) -> DgramSock {
        let size = env.s.size;
        DgramSock {
            env,
            slot,
            key,
            target,
            tl: None,
            buf: vec![0; size],
            inflight: VecDeque::with_capacity(64),
            first: 0,
            pending: 0,
            finishing: false,
            anchor: Instant::now(),
            next_due: 0,
            schedule_timer: None,
            sweep_timer: None,
        }
    }

    fn next_seq(&self) -> u64 {
        self.first + self.inflight.len() as u64
    }

    /// The run's timeline once traffic started here: the thread's, which a Ctrl-C cuts
    /// short (`bench` then ends the window at once), not the copy taken at the start.
    fn timeline(&mut self, st: &ThreadState) -> Option<Timeline> {
        if self.tl.is_some() {
            self.tl = st.tl;
        }
        self.tl
    }

    /// Traffic starts on this socket.
    fn start(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, tl: Timeline, now: Instant) {
        self.tl = Some(tl);
        self.sweep_timer = Some(ctx.set_timer(sweep_period(self.env.s.timeout)));
        if now >= tl.end {
            self.finishing = true;
        } else if let Load::Open { .. } = self.env.s.load {
            self.anchor = self.env.anchor(&tl, self.slot);
            self.pump(ctx, tl, now, false);
        } else {
            self.top_up(ctx, tl, now);
        }
        self.maybe_finish(ctx);
    }

    /// Sends the next datagram at the callback's time `now`; its latency counts from
    /// `due` (open loop) or from the clock read next to the send (closed loop), and bytes
    /// are counted at `now`, as in `StreamConn::send_one`.
    fn send_one(
        &mut self,
        ctx: &mut DgramCtx<'_, ThreadState>,
        due: Option<Instant>,
        now: Instant,
    ) {
        let seq = self.next_seq();
        let env = Rc::clone(&self.env);
        let p = env.pattern(self.key, seq);
        // The buffer holds the largest size; this message is its first `p.size` bytes.
        let msg = &mut self.buf[..p.size];
        p.fill(self.key, seq, msg);
        let counted = self.tl.is_some_and(|tl| tl.in_window(now));
        let handed = Instant::now();
        let result = ctx.send_to(msg, &self.target);
        let st = ctx.state();
        let fate = match result {
            Ok(()) => {
                self.pending += 1;
                st.sent(now, p.size);
                Fate::Pending
            }
            Err(e) => {
                // Never left: lost, without waiting for the timeout. The entry keeps the
                // sequence numbers contiguous.
                if counted {
                    st.c.lost += 1;
                }
                let target = &self.target;
                st.note_error(|| format!("send to {target}: {e}"));
                Fate::Unsent
            }
        };
        self.inflight.push_back(Sent {
            due: due.unwrap_or(handed),
            sent: handed,
            counted,
            fate,
        });
    }

    /// Closed loop: back to `pipeline` messages in flight.
    fn top_up(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, tl: Timeline, now: Instant) {
        if let Load::Closed { pipeline } = self.env.s.load {
            if now < tl.end {
                // Bounded: a failed send does not raise `pending`.
                for _ in self.pending..pipeline {
                    self.send_one(ctx, None, now);
                }
            } else {
                self.finishing = true;
            }
        }
    }

    /// Open loop: sends what is due and arms the timer for the next message.
    fn pump(
        &mut self,
        ctx: &mut DgramCtx<'_, ThreadState>,
        tl: Timeline,
        now: Instant,
        woken: bool,
    ) {
        loop {
            match self
                .env
                .open_loop_step(&tl, self.anchor, self.next_due, self.pending, now)
            {
                Step::Send(due) => {
                    if woken {
                        // How late the timer let us send: the generator's own delay,
                        // not the server's (a send held back by a full window is not
                        // woken by the timer).
                        ctx.state().send_lag(due, now);
                    }
                    self.send_one(ctx, Some(due), now);
                    self.next_due += 1;
                }
                Step::WaitUntil(due) => {
                    if self.schedule_timer.is_none() {
                        let after = due.saturating_duration_since(ctx.now());
                        self.schedule_timer = Some(ctx.set_timer(after));
                    }
                    return;
                }
                Step::Full => return,
                Step::Finish => {
                    self.finishing = true;
                    return;
                }
            }
        }
    }

    /// Declares pending entries past the timeout lost, and forgets entries (answered or
    /// not) once they are older than the timeout: an echo after that is late.
    fn sweep(&mut self, st: &mut ThreadState, now: Instant) {
        let timeout = self.env.s.timeout;
        let mut lost = 0;
        while let Some(front) = self.inflight.front() {
            if now.saturating_duration_since(front.sent) < timeout {
                // Entries are in sending order: everything behind this one is younger.
                break;
            }
            if front.fate == Fate::Pending {
                self.pending -= 1;
                if front.counted {
                    lost += 1;
                }
            }
            self.inflight.pop_front();
            self.first += 1;
        }
        st.c.lost += lost;
    }

    fn maybe_finish(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        if self.finishing && self.pending == 0 {
            ctx.close();
        }
    }

    /// Reacts to a datagram that claims to echo message `seq`.
    fn classify(&mut self, st: &mut ThreadState, data: &[u8], now: Instant) {
        let env = Rc::clone(&self.env);
        let valid = |seq: u64| {
            let p = env.pattern(self.key, seq);
            data.len() == p.size && p.matches(self.key, seq, 0, data)
        };
        let seq = Pattern::seq_of(self.key, data).filter(|&s| s < self.next_seq());
        let Some(seq) = seq else {
            // Too short, or a sequence number never sent: corrupted.
            st.c.verify_errors += 1;
            let slot = self.slot;
            st.note_error(|| format!("socket {slot}: echo differs from what was sent"));
            return;
        };
        if !valid(seq) {
            st.c.verify_errors += 1;
            let slot = self.slot;
            st.note_error(|| format!("socket {slot}: echo differs from what was sent"));
            return;
        }
        if seq < self.first {
            // Forgotten: older than the timeout, answered or declared lost long ago.
            st.c.late += 1;
            return;
        }
        let entry = &mut self.inflight[(seq - self.first) as usize];
        match entry.fate {
            // Past its timeout but not swept yet: lost, whatever the sweep's timing.
            Fate::Pending if now.saturating_duration_since(entry.sent) >= env.s.timeout => {
                entry.fate = Fate::Lost;
                self.pending -= 1;
                if entry.counted {
                    st.c.lost += 1;
                }
                st.c.late += 1;
            }
            Fate::Pending => {
                entry.fate = Fate::Answered;
                let (due, sent) = (entry.due, entry.sent);
                self.pending -= 1;
                st.complete(now, due, sent, env.s.is_open_loop());
                st.received(now, data.len());
            }
            Fate::Lost => st.c.late += 1,
            Fate::Answered => {
                st.c.duplicates += 1;
                let slot = self.slot;
                st.note_error(|| format!("socket {slot}: the same echo came twice"));
            }
            Fate::Unsent => {
                st.c.verify_errors += 1;
                let slot = self.slot;
                st.note_error(|| format!("socket {slot}: an echo for a message never sent"));
            }
        }
    }
}

impl DatagramHandler<ThreadState> for DgramSock {
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        let now = Instant::now();
        let st = ctx.state();
        st.c.connects_ok += 1;
        st.up += 1;
        st.first_attempts_done += 1;
        let id = ctx.id();
        match ctx.state().start_for(id, now) {
            Start::Now(tl) => self.start(ctx, tl, now),
            Start::At(t) => {
                ctx.set_timer(t.saturating_duration_since(ctx.now()));
            }
            Start::Waiting => {}
        }
    }

    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, data: &[u8], from: &PeerAddr) {
        let now = Instant::now();
        if !same_peer(from, &self.target) {
            let st = ctx.state();
            st.c.wrong_source += 1;
            let target = &self.target;
            st.note_error(|| format!("a reply came from {from}, not from {target}"));
            return;
        }
        let Some(tl) = self.timeline(ctx.state()) else {
            ctx.state().c.verify_errors += 1;
            return;
        };
        self.classify(ctx.state(), data, now);
        match self.env.s.load {
            Load::Open { .. } if !self.finishing => self.pump(ctx, tl, now, false),
            Load::Open { .. } => {}
            _ => self.top_up(ctx, tl, now),
        }
        self.maybe_finish(ctx);
    }

    fn on_timer(&mut self, ctx: &mut DgramCtx<'_, ThreadState>, timer: TimerId) {
        let now = Instant::now();
        let Some(tl) = self.timeline(ctx.state()) else {
            // The start timer.
            if let Some(tl) = ctx.state().tl {
                self.start(ctx, tl, now);
            }
            return;
        };
        if Some(timer) == self.schedule_timer {
            self.schedule_timer = None;
            if !self.finishing {
                self.pump(ctx, tl, now, true);
            }
        } else if Some(timer) == self.sweep_timer {
            self.sweep(ctx.state(), now);
            match self.env.s.load {
                Load::Open { .. } => {
                    if now >= tl.end {
                        self.finishing = true;
                    } else if !self.finishing {
                        self.pump(ctx, tl, now, false);
                    }
                }
                _ => self.top_up(ctx, tl, now),
            }
            self.sweep_timer = Some(ctx.set_timer(sweep_period(self.env.s.timeout)));
        }
        self.maybe_finish(ctx);
    }

    fn on_close(&mut self, ctx: &mut DgramCtx<'_, ThreadState>) {
        // Still unanswered when the run was cut off: lost.
        let lost = self
            .inflight
            .iter()
            .filter(|s| s.fate == Fate::Pending && s.counted)
            .count();
        let st = ctx.state();
        st.c.lost += lost as u64;
        st.up -= 1;
    }
}
