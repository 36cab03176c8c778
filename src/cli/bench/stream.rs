//! One stream connection of the load (TCP, TLS, Unix stream): sends, checks echoes byte
//! for byte as they arrive, in whatever pieces, and says precisely how it ended.
//!
//! The loop's backpressure is turned off for these connections: the generator must keep
//! reading echoes while its own messages wait to be written, or a message larger than the
//! socket buffers deadlocks — the server cannot write its echo because we do not read, so
//! it stops reading, so we cannot write. What a connection may have queued is bounded
//! instead by `--pipeline × --size`, or in open loop by the messages it may leave
//! unanswered (both set against a budget when the run starts: see `settings`).

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use super::model::{Env, RETRY_BACKOFF, Start, Step, ThreadState, Timeline};
use super::settings::Load;
use echoloop::{CloseReason, Ctx, Handler, TimerId};

/// A message in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// When its latency starts counting: sent (closed loop) or due (open loop).
    due: Instant,
    /// When it was handed to the connection.
    sent: Instant,
}

/// One stream connection of the load.
pub(super) struct StreamConn {
    env: Rc<Env>,
    slot: usize,
    key: u64,
    connect_started: Instant,
    /// The slot's first connection attempt (the connect phase waits for it).
    first: bool,
    opened: bool,
    /// Known once traffic has started on this connection.
    tl: Option<Timeline>,
    /// No more messages: close once the last echo is in. A connection that finishes
    /// like this is done for the run and is not reopened.
    finishing: bool,
    /// An echo was wrong: the stream's alignment cannot be trusted any more.
    broken: bool,
    /// The server closed its side.
    peer_closed: bool,
    inflight: VecDeque<InFlight>,
    /// Messages sent so far (the next sequence number).
    sent: u64,
    /// Open loop: number of the next message in the schedule.
    next_due: u64,
    /// Bytes of the oldest message in flight already received and checked.
    recv_off: usize,
    /// Start of the open-loop schedule.
    anchor: Instant,
    timer_armed: bool,
}

impl StreamConn {
    pub(super) fn new(
        env: Rc<Env>,
        slot: usize,
        key: u64,
        now: Instant,
        first: bool,
    ) -> StreamConn {
        let cap = match env.s.load {
            Load::Closed { pipeline } => pipeline,
            Load::Open { .. } => 16,
            Load::Reconnect => 1,
        };
        StreamConn {
            env,
            slot,
            key,
            connect_started: now,
            first,
            opened: false,
            tl: None,
            finishing: false,
            broken: false,
            peer_closed: false,
            inflight: VecDeque::with_capacity(cap),
            sent: 0,
            next_due: 0,
            recv_off: 0,
            anchor: now,
            timer_armed: false,
        }
    }

    /// The run's timeline once traffic started here: the thread's, which a Ctrl-C cuts
    /// short (`bench` then ends the window at once), not the copy taken at the start.
    fn timeline(&mut self, st: &ThreadState) -> Option<Timeline> {
        if self.tl.is_some() {
            self.tl = st.tl;
        }
        self.tl
    }

    /// Traffic starts on this connection.
    fn start(&mut self, ctx: &mut Ctx<'_, ThreadState>, tl: Timeline, now: Instant) {
        self.tl = Some(tl);
        if now >= tl.end {
            self.finishing = true;
            ctx.close();
            return;
        }
        match self.env.s.load {
            Load::Closed { pipeline } => {
                for _ in 0..pipeline {
                    self.send_one(ctx, None, now);
                }
            }
            Load::Reconnect => self.send_one(ctx, None, now),
            Load::Open { .. } => {
                self.anchor = self.env.anchor(&tl, self.slot);
                // A slot reopened mid-run goes on where its schedule stood.
                self.next_due = ctx.state().schedule.remove(&self.slot).unwrap_or(0);
                self.pump(ctx, tl, now, false);
                self.maybe_finish(ctx);
            }
        }
    }

    /// Sends the next message at the callback's time `now`. Its latency counts from `due`
    /// (open loop: when the schedule wanted it sent), or from when it is handed over
    /// (closed loop).
    ///
    /// That moment is read from the clock here, next to the send, rather than taken from
    /// the callback's start: checking the echo that came in and recording its latency
    /// take time that belongs to us, not to the round trip (sockperf takes its timestamps
    /// next to its system calls too). Bytes are still counted at `now`: the intervals
    /// move forward with the callbacks' times, and a later instant here would move them
    /// past echoes this callback has yet to count.
    fn send_one(&mut self, ctx: &mut Ctx<'_, ThreadState>, due: Option<Instant>, now: Instant) {
        let seq = self.sent;
        let p = self.env.pattern(self.key, seq);
        let handed = Instant::now();
        ctx.send(&p.header(self.key, seq)[..p.header_len()]);
        let body = p.body(self.key, seq);
        if !body.is_empty() {
            ctx.send(body);
        }
        let due = due.unwrap_or(handed);
        self.inflight.push_back(InFlight { due, sent: handed });
        self.sent += 1;
        ctx.state().sent(now, p.size);
    }

    /// Open loop: sends every message that is due, then arms the timer for the next one.
    fn pump(&mut self, ctx: &mut Ctx<'_, ThreadState>, tl: Timeline, now: Instant, woken: bool) {
        loop {
            match self
                .env
                .open_loop_step(&tl, self.anchor, self.next_due, self.inflight.len(), now)
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
                    if !self.timer_armed {
                        // Measured from the loop's clock, which the timer heap uses too.
                        ctx.set_timer(due.saturating_duration_since(ctx.now()));
                        self.timer_armed = true;
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

    fn maybe_finish(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        if self.finishing && self.inflight.is_empty() {
            ctx.close();
        }
    }

    /// A wrong byte: count it and drop the connection (on_close reopens it).
    fn verify_failed(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        self.broken = true;
        let st = ctx.state();
        st.c.verify_errors += 1;
        let slot = self.slot;
        st.note_error(|| format!("connection {slot}: echo differs from what was sent"));
        ctx.abort();
    }
}

/// A reset, as opposed to another failure.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

impl Handler<ThreadState> for StreamConn {
    fn on_open(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        let now = Instant::now();
        self.opened = true;
        // See the module docs: echoes must be read while our messages wait.
        ctx.set_backpressure(false);
        let took = now.saturating_duration_since(self.connect_started);
        let st = ctx.state();
        st.connecting -= 1;
        st.connected(now, took);
        if self.first {
            st.first_attempts_done += 1;
        }
        let id = ctx.id();
        match ctx.state().start_for(id, now) {
            Start::Now(tl) => self.start(ctx, tl, now),
            Start::At(t) => {
                ctx.set_timer(t.saturating_duration_since(ctx.now()));
            }
            Start::Waiting => {}
        }
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, ThreadState>, data: &[u8]) {
        if self.broken {
            return;
        }
        let Some(tl) = self.timeline(ctx.state()) else {
            // Bytes before we sent anything.
            self.verify_failed(ctx);
            return;
        };
        let now = Instant::now();
        let env = Rc::clone(&self.env);
        let open = env.s.is_open_loop();
        let mut data = data;
        let mut received = 0;
        while !data.is_empty() {
            let Some(&m) = self.inflight.front() else {
                // More bytes than we sent.
                self.verify_failed(ctx);
                return;
            };
            let seq = self.sent - self.inflight.len() as u64;
            let p = env.pattern(self.key, seq);
            let n = (p.size - self.recv_off).min(data.len());
            if !p.matches(self.key, seq, self.recv_off, &data[..n]) {
                self.verify_failed(ctx);
                return;
            }
            received += n;
            self.recv_off += n;
            data = &data[n..];
            if self.recv_off < p.size {
                continue;
            }
            self.recv_off = 0;
            self.inflight.pop_front();
            ctx.state().complete(now, m.due, m.sent, open);
            match env.s.load {
                Load::Closed { .. } if now < tl.end => self.send_one(ctx, None, now),
                Load::Open { .. } if !self.finishing => self.pump(ctx, tl, now, false),
                _ => self.finishing = true,
            }
        }
        ctx.state().received(now, received);
        self.maybe_finish(ctx);
    }

    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_, ThreadState>) {
        // The server will send nothing more: whatever it still owes will never come.
        self.peer_closed = true;
        ctx.close();
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, ThreadState>, _timer: TimerId) {
        let now = Instant::now();
        match self.timeline(ctx.state()) {
            None => {
                // The start timer (set from the main thread's go, or by on_open).
                if let Some(tl) = ctx.state().tl {
                    self.start(ctx, tl, now);
                }
            }
            Some(tl) => {
                self.timer_armed = false;
                if !self.finishing {
                    self.pump(ctx, tl, now, true);
                }
                self.maybe_finish(ctx);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, ThreadState>, reason: &CloseReason) {
        let now = Instant::now();
        let env = &self.env;
        let st = ctx.state();
        let slot = self.slot;
        let owed = self.inflight.len() as u64;
        if self.opened {
            st.up -= 1;
        } else {
            st.connecting -= 1;
            if self.first {
                st.first_attempts_done += 1;
            }
        }
        if st.stopping {
            // The run is over and we closed it: what is still owed had its grace.
            st.c.timeouts += owed;
            return;
        }
        let retry = !self.finishing;
        let reset = matches!(reason, CloseReason::Io(e) if is_reset(e));
        if !self.opened {
            st.c.connect_failures += 1;
            let target = &env.s.target_text;
            st.note_error(|| format!("connect to {target}: {reason}"));
        } else if self.broken {
            // Counted as a verify error already.
        } else if self.finishing && owed == 0 && reason.is_clean() {
            // Done for the run: no reconnect.
        } else if reset {
            st.c.broken += 1;
            st.c.unanswered += owed;
            st.note_error(|| format!("connection {slot} was reset with {owed} echoes owed"));
        } else if self.peer_closed || reason.is_clean() {
            st.c.closed_by_server += 1;
            st.c.unanswered += owed;
            st.note_error(|| {
                format!("the server closed connection {slot} with {owed} echoes owed")
            });
        } else {
            st.c.broken += 1;
            st.c.unanswered += owed;
            st.note_error(|| format!("connection {slot} failed with {owed} echoes owed: {reason}"));
        }
        let normal_reconnect = self.opened
            && !self.broken
            && self.finishing
            && owed == 0
            && matches!(env.s.load, Load::Reconnect);
        let still_running = st.tl.is_none_or(|tl| now < tl.end);
        if self.tl.is_some() && matches!(env.s.load, Load::Open { .. }) {
            st.schedule.insert(slot, self.next_due);
        }
        if still_running && (retry || normal_reconnect) {
            let at = if normal_reconnect {
                now
            } else {
                now + RETRY_BACKOFF
            };
            st.requeue.push((at, slot));
        }
    }
}
