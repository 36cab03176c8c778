//! What the reactor's drivers share: the slab of entries, the loop-wide bookkeeping, the
//! pool of output buffers and the list of connections to write at the end of the turn.
//!
//! Teaches: slot reuse. Closed entries stay in the slab until the whole batch of events is
//! dispatched (`dead`, swept by the loop), so a later event in the same batch cannot reach
//! a new connection that took the slot (mio#172); ids carry a generation for everything
//! that outlives a batch (timers, other connections' handlers, messages from threads).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use mio::Poll;
use slab::Slab;

use crate::config::{Config, ListenKind};
use crate::conn::{Connection, Limits};
use crate::dgram::DgramQueue;
use crate::error::ConnError;
use crate::handler::{DatagramHandler, Handler, OnLoop, OnTimer, Watched};
use crate::id::{ConnId, TimerId};
use crate::net::{BindOptions, Datagram, Listener, PeerAddr, SendBatch, Stream};
use crate::sendbuf::BufPool;
use crate::stats::{Stats, Transport};
use crate::timer::{Timers, later};

/// Everything a callback can reach through its context: the loop minus its event buffer,
/// read buffers and channels (which only the dispatch code touches).
pub(crate) struct Inner<S> {
    pub(crate) poll: Poll,
    pub(crate) slab: Slab<Entry<S>>,
    pub(crate) core: Core,
    pub(crate) state: S,
    /// The callbacks of the loop's own timers (`LoopCtx::set_timer`), by timer.
    pub(crate) loop_timers: HashMap<TimerId, OnTimer<S>>,
    /// What the loop runs when a graceful stop begins (`EventLoop::on_stopping`).
    pub(crate) on_stopping: Option<OnLoop<S>>,
}

/// Loop-wide bookkeeping, kept apart from the slab so that a driver can borrow both an
/// entry and this.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    /// Where trace events go, if anywhere (see `crate::trace`).
    pub(crate) trace: crate::trace::Sink,
    pub(crate) limits: Limits,
    /// The clock, read once per turn (and at entry points called between turns).
    pub(crate) now: Instant,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    pub(crate) phase: Phase,
    /// Entries to read (or accept on) again without waiting for an event.
    pub(crate) ready: Vec<ConnId>,
    /// The zero-copy echo's pipe, made when first needed (`net::splice`).
    pub(crate) pipe: Option<crate::net::Pipe>,
    /// Reads that found input, ever: how a hot turn tells a read that found something
    /// (`hot`).
    pub(crate) input_seen: u64,
    /// TLS handshake steps in line for their share of the turn (fairness, see
    /// [`Handshakes`]).
    pub(crate) handshakes: Handshakes,
    /// Spare output buffers, lent to connections while they owe bytes.
    pub(crate) pool: BufPool,
    /// Connections sent to from outside their own callbacks this turn: written once each
    /// before the loop polls again (`stream::flush_listed`). Each is listed once
    /// (`StreamEntry::listed`).
    pub(crate) flush: Vec<ConnId>,
    pub(crate) flush_spare: Vec<ConnId>,
    /// The connection whose callback is running: what it sends to itself is written when
    /// the callback returns, without listing.
    pub(crate) current: Option<ConnId>,
    /// Entries acted on from elsewhere (another callback, another thread, the loop's own
    /// stop) whose consequences still need to run.
    pub(crate) touched: Vec<ConnId>,
    /// Slots to free after this batch of events.
    pub(crate) dead: Vec<usize>,
    pub(crate) stop_request: Option<Duration>,
    next_generation: u32,
    /// This loop's number, in the high bits of every generation it hands out.
    pub(crate) loop_no: u32,
    /// True while a UDP receive batch is being handled: replies are gathered in
    /// `dgram_batch` and sent together.
    pub(crate) batching: bool,
    /// A UDP socket has been added (from a callback too): the loop needs its receive
    /// batch buffers, which it makes on its next turn.
    pub(crate) udp_added: bool,
    pub(crate) dgram_batch: SendBatch,
    /// Warnings about connections rejected at `max_connections`: at most one a second.
    pub(crate) reject_log: WarnEvery,
    /// Warnings about out-of-descriptor accept failures: one line per interval with a
    /// count, not one per backoff.
    pub(crate) emfile_log: WarnEvery,
    /// Likewise for datagrams refused from loop-prone ports.
    pub(crate) refuse_log: WarnEvery,
    /// Likewise for connections closed for a missing or bad PROXY header.
    pub(crate) bad_header_log: WarnEvery,
    /// Likewise for connections refused by `Config::max_side_connections`.
    pub(crate) side_reject_log: WarnEvery,
    /// Connections open of listeners left out of the statistics (`counted` false).
    pub(crate) side_open: usize,
    /// The real clients of connections that came through a load balancer, as their
    /// PROXY headers said (only those: the map stays empty without PROXY listeners).
    pub(crate) proxied: HashMap<ConnId, PeerAddr>,
}

/// Fair TLS handshakes: a per-turn budget for the CPU-heavy part of the loop's work.
///
/// A TLS server's first handshake step (the client's hello in, our key share, certificate
/// and signature out) costs far more than an echo: about 175 µs with an ECDSA P-256 key
/// on this project's test machine, close to a millisecond with RSA-2048. A loop that runs
/// every ready handshake as it comes makes every plain connection wait behind all of them:
/// with 500 clients handshaking at once, tens of milliseconds per turn. So each turn
/// spends at most about `budget` on handshake steps (one step at least, so handshakes
/// always progress); a connection whose step would start past it is remembered as
/// readable and put in line, and the loop polls again without sleeping. Plain connections
/// are served between, and the line is served first come, first served at the next
/// turns (a connection that just became ready joins the back of a line that is not
/// empty, so a steady stream of new handshakes cannot starve the ones waiting).
///
/// A budget per turn is not enough when one step costs more than a plain connection can
/// wait: an RSA signature cannot be split, and a client that answers at once sends its
/// next message while the next signature runs, so every one of its round trips would wait
/// for one. So a turn that ran handshake steps is followed by a rest as long as they took,
/// during which steps wait — but only while other connections keep the loop busy: the
/// first turn that finds nothing else to do ends the rest. Handshakes thus get at most
/// half of the loop's time while others are waiting, and all of it otherwise.
///
/// The cost is measured, not guessed from the key type: the clock is read around each
/// handshake step, only for connections still handshaking, so plain traffic pays nothing.
#[derive(Debug)]
pub(crate) struct Handshakes {
    budget: Duration,
    /// Spent on handshake steps in this turn, and how many steps that was.
    spent: Duration,
    steps: u32,
    /// The turn's clock.
    now: Instant,
    /// Steps wait until then while other work keeps coming (the rest after a turn that
    /// ran steps).
    rest_until: Option<Instant>,
    /// In line, oldest first. A connection may be in it twice (a second readiness event
    /// while it waited, or a read scheduled for it meanwhile, which queues it again): the
    /// later entry finds its "maybe readable" already used and is skipped at no cost.
    /// The line is first come, first served but for that rare case.
    waiting: VecDeque<ConnId>,
    /// The line's front is being served: it does not queue behind the others.
    serving: bool,
}

impl Handshakes {
    pub(crate) fn new(budget: Duration) -> Handshakes {
        Handshakes {
            budget,
            spent: Duration::ZERO,
            steps: 0,
            now: Instant::now(),
            rest_until: None,
            waiting: VecDeque::new(),
            serving: false,
        }
    }

    /// A new turn: a new budget.
    pub(crate) fn new_turn(&mut self, now: Instant) {
        self.spent = Duration::ZERO;
        self.steps = 0;
        self.now = now;
    }

    /// Handshake steps this turn (each one a read that brought input).
    pub(crate) fn steps(&self) -> u64 {
        u64::from(self.steps)
    }

    fn resting(&self) -> bool {
        self.rest_until.is_some_and(|t| self.now < t)
    }

    /// Before the line is served: `others` says whether this turn read anything for a
    /// connection that is not handshaking. A turn with nothing else to do ends the rest.
    pub(crate) fn others_this_turn(&mut self, others: bool) {
        if !others {
            self.rest_until = None;
        }
    }

    /// After the line was served: a turn that ran steps is followed by a rest as long.
    pub(crate) fn turn_done(&mut self, end: Instant) {
        if self.steps > 0 {
            self.rest_until = Some(end + self.spent);
        }
    }

    /// This turn's budget is spent (one step is always allowed, even with a budget of 0).
    fn spent(&self) -> bool {
        self.steps > 0 && self.spent >= self.budget
    }

    /// Whether a handshake step should wait for a later turn rather than run now.
    pub(crate) fn must_wait(&self) -> bool {
        self.spent() || self.resting() || (!self.serving && !self.waiting.is_empty())
    }

    /// Puts a connection in line.
    pub(crate) fn wait(&mut self, id: ConnId) {
        self.waiting.push_back(id);
    }

    /// Counts a step's cost against this turn's budget.
    pub(crate) fn charge(&mut self, cost: Duration) {
        self.spent += cost;
        self.steps += 1;
    }

    /// The next connection in line, while the budget lasts; [`Handshakes::done`] when it
    /// has been served.
    pub(crate) fn next(&mut self) -> Option<ConnId> {
        if self.spent() || self.resting() {
            return None;
        }
        let id = self.waiting.pop_front()?;
        self.serving = true;
        Some(id)
    }

    /// The connection [`Handshakes::next`] gave has had its turn.
    pub(crate) fn done(&mut self) {
        self.serving = false;
    }

    /// Whether any connection is in line (the loop must not sleep).
    pub(crate) fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Forgets the line (the loop has stopped; the connections are gone).
    pub(crate) fn clear(&mut self) {
        self.waiting.clear();
    }
}

/// Whether the loop is serving, winding down, or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Stopping { deadline: Instant },
    Stopped,
}

impl Core {
    pub(crate) fn new(config: Config) -> Core {
        Core {
            trace: crate::trace::Sink::new(config.trace.clone()),
            limits: Limits::new(&config),
            handshakes: Handshakes::new(config.handshake_budget),
            input_seen: 0,
            pipe: None,
            config,
            now: Instant::now(),
            timers: Timers::default(),
            stats: Stats::default(),
            phase: Phase::Running,
            // Preallocated so that steady-state work does not allocate.
            ready: Vec::with_capacity(64),
            pool: BufPool::default(),
            flush: Vec::with_capacity(64),
            flush_spare: Vec::with_capacity(64),
            current: None,
            touched: Vec::with_capacity(64),
            dead: Vec::with_capacity(64),
            stop_request: None,
            next_generation: 0,
            loop_no: crate::id::next_loop_no(),
            batching: false,
            udp_added: false,
            dgram_batch: SendBatch::default(),
            reject_log: WarnEvery::every(Duration::from_secs(1)),
            emfile_log: WarnEvery::default(),
            refuse_log: WarnEvery::default(),
            bad_header_log: WarnEvery::default(),
            side_reject_log: WarnEvery::default(),
            side_open: 0,
            proxied: HashMap::new(),
        }
    }

    /// A stop asked for (by a handle, a callback or a signal); the shortest grace wins.
    pub(crate) fn request_stop(&mut self, grace: Duration) {
        self.stop_request = Some(self.stop_request.map_or(grace, |g| g.min(grace)));
    }

    pub(crate) fn schedule_read(&mut self, id: ConnId) {
        self.ready.push(id);
    }

    pub(crate) fn bind_options(&self) -> BindOptions {
        BindOptions {
            backlog: self.config.backlog,
            reuse_port: self.config.reuse_port,
        }
    }

    /// A fresh id for slot `key`: the generation tells it from earlier users of the slot.
    pub(crate) fn next_id(&mut self, key: usize) -> ConnId {
        self.next_generation = crate::id::next_generation(self.loop_no, self.next_generation);
        ConnId::new(key, self.next_generation)
    }

    /// The id [`Core::next_id`] will hand out for slot `key` (for a trace line written
    /// before the entry is made).
    pub(crate) fn peek_id(&self, key: usize) -> ConnId {
        ConnId::new(
            key,
            crate::id::next_generation(self.loop_no, self.next_generation),
        )
    }

    /// Refuses an id made by another loop, before it is looked up: its slot here belongs
    /// to a stranger.
    pub(crate) fn check_ours(&self, id: ConnId) -> Result<(), ConnError> {
        if id.loop_no() == self.loop_no {
            Ok(())
        } else {
            Err(ConnError::OtherLoop)
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }
}

/// One slot of the slab.
pub(crate) enum Entry<S> {
    Listener(ListenerEntry<S>),
    Stream(StreamEntry<S>),
    Dgram(DgramEntry<S>),
    /// A connect that failed before it had a socket: its `on_close` is still to run.
    Failed(FailedEntry<S>),
    /// A descriptor of the application's own, watched for readiness.
    Source(SourceEntry<S>),
}

impl<S> Entry<S> {
    pub(crate) fn generation(&self) -> u32 {
        match self {
            Entry::Listener(l) => l.generation,
            Entry::Stream(c) => c.generation,
            Entry::Dgram(d) => d.generation,
            Entry::Failed(f) => f.generation,
            Entry::Source(w) => w.generation,
        }
    }
}

/// The entry `id` names in `slab`, if it is still the one the id was made for: `Gone`
/// once its slot was freed or reused, `OtherLoop` for another loop's id.
pub(crate) fn entry_at<'a, S>(
    slab: &'a mut Slab<Entry<S>>,
    core: &Core,
    id: ConnId,
) -> Result<&'a mut Entry<S>, ConnError> {
    core.check_ours(id)?;
    match slab.get_mut(id.key()) {
        Some(e) if e.generation() == id.generation => Ok(e),
        _ => Err(ConnError::Gone),
    }
}

/// The stream connection an entry is, naming what it is otherwise.
pub(crate) fn as_stream<S>(entry: &mut Entry<S>) -> Result<&mut StreamEntry<S>, ConnError> {
    match entry {
        Entry::Stream(e) => Ok(e),
        // A connect that failed at once: its on_close is on its way.
        Entry::Failed(_) => Err(ConnError::NotOpen),
        Entry::Listener(_) | Entry::Dgram(_) | Entry::Source(_) => Err(ConnError::NotStream),
    }
}

/// [`entry_at`] for reading only.
pub(crate) fn entry_view<'a, S>(
    slab: &'a Slab<Entry<S>>,
    core: &Core,
    id: ConnId,
) -> Result<&'a Entry<S>, ConnError> {
    core.check_ours(id)?;
    match slab.get(id.key()) {
        Some(e) if e.generation() == id.generation => Ok(e),
        _ => Err(ConnError::Gone),
    }
}

impl<S> SourceEntry<S> {
    /// Takes the descriptor out of the poller, once. Done before it is closed: once
    /// closed, its number may already name another file.
    pub(crate) fn deregister(&mut self, poll: &Poll) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        if let Err(e) = poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&self.fd))
        {
            log::debug!("deregistering descriptor {}: {e}", self.fd);
        }
    }
}

/// A descriptor source: the application's descriptor and callback, boxed together.
pub(crate) struct SourceEntry<S> {
    /// `None` only while its callback runs.
    pub(crate) watched: Option<Box<dyn Watched<S>>>,
    /// The descriptor as registered, to deregister it before it is closed.
    pub(crate) fd: std::os::fd::RawFd,
    pub(crate) generation: u32,
    /// Removed (by `remove_fd`, perhaps from its own callback): freed after the batch.
    pub(crate) removed: bool,
}

/// A listening socket and the factory of handlers for what it accepts.
pub(crate) struct ListenerEntry<S> {
    pub(crate) sock: Listener,
    pub(crate) kind: ListenKind,
    pub(crate) factory: Box<dyn FnMut() -> Box<dyn Handler<S>>>,
    pub(crate) generation: u32,
    /// Out of descriptors: accepting waits for this timer.
    pub(crate) backoff: Option<TimerId>,
    /// Connections start with a PROXY protocol header (behind a load balancer).
    pub(crate) proxy: bool,
    /// Its connections count in the loop's statistics and limits (see
    /// `EventLoop::count_in_stats`).
    pub(crate) counted: bool,
    /// Accepting is paused (`pause_listener`): connects wait in the kernel's queue.
    pub(crate) paused: bool,
    /// Closed (`close_listener`): freed after the batch.
    pub(crate) closed: bool,
}

impl<S> ListenerEntry<S> {
    /// Stops accepting for good: no more accepts, no backoff timer, and the slot `key` is
    /// freed (socket deregistered and closed) after this batch (`EventLoop::sweep`).
    /// Closing twice is harmless.
    pub(crate) fn close(&mut self, core: &mut Core, key: usize) {
        if let Some(t) = self.backoff.take() {
            core.timers.cancel(t);
        }
        if !self.closed {
            self.closed = true;
            self.paused = true;
            core.dead.push(key);
        }
    }
}

/// A stream connection: its socket, its state machine and its handler.
pub(crate) struct StreamEntry<S> {
    pub(crate) conn: Connection,
    pub(crate) stream: Stream,
    /// `None` only while one of its callbacks runs (the handler is taken out so that the
    /// callback's context can reach every other entry of the loop).
    pub(crate) handler: Option<Box<dyn Handler<S>>>,
    pub(crate) generation: u32,
    /// For the statistics by transport (fits beside the generation: no extra room).
    pub(crate) transport: Transport,
    /// Counted in the loop's statistics (false for a management listener's connections).
    pub(crate) counted: bool,
    /// On the loop's list to write at the end of the turn (`Core::flush`).
    pub(crate) listed: bool,
    /// Whether its reads may be echoed without a copy (`net::splice`), and whether they
    /// are large enough now for that to pay.
    pub(crate) splice: SpliceMode,
    /// The timer standing for `conn.poll_timeout()`.
    pub(crate) deadline: Option<TimerId>,
    /// The handler's timers, cancelled when the connection closes.
    pub(crate) user_timers: TimerList,
}

/// Zero-copy echo for one connection (`stream::splice_echo`), in one byte (the entry has
/// exactly one to spare): off (TLS, a handler that is not a plain echo, or switched off);
/// small (could splice, but its reads are small, and copying is cheaper); or bulk (its
/// reads are large: spliced while nothing else is owed to it), counting the calls in a
/// row that moved little — the tail of a large message arriving apart from the rest is
/// one, and only a run of them means the traffic has become small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpliceMode(u8);

impl SpliceMode {
    pub(crate) const OFF: SpliceMode = SpliceMode(0);
    pub(crate) const SMALL: SpliceMode = SpliceMode(1);
    /// Bulk, with no small turn yet.
    pub(crate) const BULK: SpliceMode = SpliceMode(2);

    pub(crate) fn is_bulk(self) -> bool {
        self.0 >= 2
    }

    /// Small calls in a row, while bulk.
    pub(crate) fn small_calls(self) -> u8 {
        self.0.saturating_sub(2)
    }

    pub(crate) fn one_more_small_call(self) -> SpliceMode {
        SpliceMode(self.0.saturating_add(1))
    }
}

/// The timers a handler has set on its connection or socket. Most connections never set
/// one, and every byte of an idle connection counts (10,000 of them should cost under
/// 2 MiB): the list is a pointer until the first timer.
// The box is the point: `Option<Box<Vec>>` is one word in the entry, a `Vec` three.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub(crate) struct TimerList(Option<Box<Vec<TimerId>>>);

impl TimerList {
    pub(crate) fn push(&mut self, t: TimerId) {
        self.0.get_or_insert_with(Box::default).push(t);
    }

    /// Forgets `t` (it fired or was cancelled); false if it was not in the list.
    pub(crate) fn remove(&mut self, t: TimerId) -> bool {
        if let Some(list) = self.0.as_deref_mut() {
            if let Some(i) = list.iter().position(|x| *x == t) {
                list.swap_remove(i);
                return true;
            }
        }
        false
    }

    /// Every timer still set, leaving the list empty.
    pub(crate) fn take_all(&mut self) -> Vec<TimerId> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
}

/// A datagram socket, its reply queue and its handler.
pub(crate) struct DgramEntry<S> {
    pub(crate) sock: Datagram,
    pub(crate) handler: Option<Box<dyn DatagramHandler<S>>>,
    pub(crate) queue: DgramQueue,
    pub(crate) generation: u32,
    pub(crate) closed: bool,
    /// `close` was asked for (by its handler or from elsewhere): it happens after the
    /// running callback.
    pub(crate) close_requested: bool,
    /// `on_ready` is still to run.
    pub(crate) ready_pending: bool,
    /// UDP: datagrams have been queueing up (two single reads in a row found one, and no
    /// batch since came back nearly empty), so reads use `recvmmsg`, and the next wake-up
    /// starts with it straight away (see `datagram::read_udp`).
    pub(crate) deep: bool,
    /// The handler's timers, cancelled when the socket closes.
    pub(crate) user_timers: TimerList,
}

/// A connect that failed at once (no socket could be made, or registering it failed).
pub(crate) struct FailedEntry<S> {
    pub(crate) handler: Option<Box<dyn Handler<S>>>,
    pub(crate) error: Option<io::Error>,
    pub(crate) generation: u32,
}

/// The stream entry `id` names, if it is still that connection. (A function of the slab
/// alone, so that the caller can borrow the rest of `Inner` beside it.)
pub(crate) fn stream_at<S>(slab: &mut Slab<Entry<S>>, id: ConnId) -> Option<&mut StreamEntry<S>> {
    match slab.get_mut(id.key()) {
        Some(Entry::Stream(e)) if e.generation == id.generation => Some(e),
        _ => None,
    }
}

/// The datagram entry `id` names, if it is still that socket.
pub(crate) fn dgram_at<S>(slab: &mut Slab<Entry<S>>, id: ConnId) -> Option<&mut DgramEntry<S>> {
    match slab.get_mut(id.key()) {
        Some(Entry::Dgram(d)) if d.generation == id.generation => Some(d),
        _ => None,
    }
}

/// A warning about trouble that can come in floods (thousands of failed accepts or
/// refused datagrams a second): logged at most once per [`WarnEvery::INTERVAL`], with how
/// many times it happened since the last line, so a slow stderr never slows the loop.
#[derive(Debug)]
pub(crate) struct WarnEvery {
    count: u64,
    next: Option<Instant>,
    interval: Duration,
}

impl Default for WarnEvery {
    fn default() -> WarnEvery {
        WarnEvery::every(WarnEvery::INTERVAL)
    }
}

impl WarnEvery {
    const INTERVAL: Duration = Duration::from_secs(5);

    /// Lines at most once per `interval`.
    pub(crate) fn every(interval: Duration) -> WarnEvery {
        WarnEvery {
            count: 0,
            next: None,
            interval,
        }
    }

    /// Counts one more occurrence at `now`; returns how many to report if a line is due.
    pub(crate) fn note(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.next.is_some_and(|t| now < t) {
            return None;
        }
        self.next = Some(later(now, self.interval));
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    /// The first occurrence is logged at once; the rest of the interval only counts.
    #[test]
    fn warnings_come_once_per_interval_with_a_count() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut w = super::WarnEvery::default();
        assert_eq!(w.note(t0), Some(1));
        for i in 1..4 {
            assert_eq!(w.note(t0 + s(i)), None);
        }
        assert_eq!(w.note(t0 + s(5)), Some(4));
        assert_eq!(w.note(t0 + s(6)), None);
    }

    #[test]
    fn handshake_steps_rest_after_a_turn_of_them_only_while_others_are_busy() {
        use super::{ConnId, Duration, Handshakes, Instant};
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut h = Handshakes::new(Duration::from_micros(250));
        h.new_turn(t0);
        assert!(!h.must_wait(), "nothing spent, nobody in line");
        h.charge(ms(1));
        assert!(h.must_wait(), "one step spent the turn's budget");
        h.wait(ConnId::new(1, 1));
        h.turn_done(t0 + ms(1));
        // The next turns, while others keep the loop busy: the line rests as long as the
        // steps took.
        h.new_turn(t0 + ms(1));
        h.others_this_turn(true);
        assert!(h.must_wait() && h.next().is_none(), "resting");
        h.turn_done(t0 + ms(1));
        h.new_turn(t0 + ms(2));
        h.others_this_turn(true);
        assert_eq!(
            h.next(),
            Some(ConnId::new(1, 1)),
            "rested as long as it ran"
        );
        h.done();
        // A rest ends at once in a turn with nothing else to do.
        h.charge(ms(1));
        h.turn_done(t0 + ms(3));
        h.wait(ConnId::new(2, 1));
        h.new_turn(t0 + ms(3));
        h.others_this_turn(false);
        assert_eq!(
            h.next(),
            Some(ConnId::new(2, 1)),
            "nobody else to be fair to"
        );
    }

    /// An idle connection is one slab entry (and a socket): 10,000 of them should cost the
    /// server under 2 MiB. A field added carelessly (an enum losing its niche) shows here
    /// first; the PROXY protocol's first version added 8 bytes this way.
    #[test]
    fn a_stream_entry_stays_small() {
        let size = std::mem::size_of::<super::Entry<()>>();
        assert!(size <= 160, "a slab entry takes {size} bytes");
    }
}
