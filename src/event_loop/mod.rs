//! The reactor: one thread, one `mio::Poll`, every socket registered in it.
//!
//! Teaches: readiness-based I/O. `poll` says which sockets *became* ready; the loop then
//! does the non-blocking calls until they would block. The rules that make this correct are
//! named where they are applied:
//!
//! * **Edge-triggered readiness** — mio reports a change, not a level. After a readable
//!   event we read until `WouldBlock` (or a short read, see `stream::read_loop`); when we
//!   stop early (fairness cap, backpressure, a paused handler) the connection remembers
//!   "maybe readable" and the loop comes back by itself, because no new event will come
//!   for bytes already waiting.
//! * **Interest registered once** — every connection is registered for both readable and
//!   writable when it is created and never re-registered (`stream::add_accepted`).
//! * **Partial writes** — see `src/sendbuf.rs` and `stream::push_output`.
//! * **Output that coalesces** — a connection's replies to its own input are written
//!   when its callback returns; what other callbacks send it is written once per turn,
//!   just before the loop polls again (`stream::send`, `stream::flush_listed`). Bytes
//!   sent to many connections in one turn are kept once and written to each from the
//!   same memory (`sendbuf::Shared`, `Connection::queue_shared`).
//! * **Backpressure** — a peer that sends but does not read would make us buffer without
//!   bound; above `high_water` bytes owed we stop reading it, below `low_water` we resume.
//! * **Slot reuse** — see `core`: closed entries are freed only after the batch.
//! * **EMFILE on accept** — see `accept`.
//! * **Several connections at once** — a callback may act on any connection by id; what
//!   that causes runs after the callback returns (`ctx`), so callbacks never nest.
//!
//! # Layout
//!
//! | file | what it does |
//! |---|---|
//! | `mod.rs` | [`EventLoop`]: the turn (poll, dispatch, ready list, timers, stop, sweep) |
//! | `core` | the slab, its entries and the loop-wide bookkeeping every driver shares |
//! | `stream` | the stream driver: system calls for each `conn::Connection` |
//! | `datagram` | the datagram driver: UDP and Unix datagram sockets |
//! | `hot` | busy polling: the connections read without polling |
//! | `accept` | listeners and the accept loop; pausing and closing them by id |
//! | `source` | descriptors of the application's own (`add_fd`) |
//! | `ctx` | what the handler contexts do (`handler::LoopOps`), `run_touched` and `flush` |
//! | `wake` | [`StopHandle`] and [`Sender`]: reaching the loop from other threads |
//!
//! # Nesting in a host's poller
//!
//! The loop's poll descriptor is an epoll descriptor, and epoll descriptors can be waited
//! on like sockets: it becomes readable when the loop has events. A host with its own
//! poller registers it ([`AsRawFd`] / [`AsFd`]), waits at most [`EventLoop::timeout`] (the
//! loop's timers do not make its descriptor readable), and calls
//! `run_once(Some(Duration::ZERO))` when it is readable or the timeout has passed.
//! `examples/host_poll.rs` does exactly that.
//!
//! # Busy polling
//!
//! Waiting for an event costs time as well as saving it: a loop that blocks in
//! `epoll_wait` is put to sleep, and the next packet must wake it — on a virtual machine
//! often several times the cost of the echo itself (figures in the guide, section 4).
//! [`Config::busy_poll`] trades a core for that latency: after
//! the last event, the loop keeps going without sleeping for up to the given window
//! before it blocks (the idle strategy of latency tools and low-latency servers: sockperf's
//! spin, Aeron's busy-spin, Seastar's poll mode). While it spins it reads the few
//! connections talking right now directly, as sockperf spins on `recv`, and polls only
//! every few dozen turns or when anything else is about (`hot`: the hot set, and the bound
//! on how long a timer, a signal, the stop handle or a message from another thread can
//! wait — timers not at all, the others at most 32 of those turns).
//!
//! It helps when connections are few and the gaps between their messages are shorter than
//! the window: every message then finds the loop awake. It cannot help a loop that is
//! always busy — with hundreds of connections there is nearly always an event waiting, so
//! the loop never sleeps anyway — and it costs a whole core while it spins. When traffic
//! stops, spinning stops one window later.
//!
//! # When a handler panics
//!
//! A panic in a callback unwinds out of `run_once` (or whichever entry point ran the
//! callback, the drop of [`EventLoop::conn`]'s guard included). The loop does not catch it: the handler that panicked is gone and the
//! connection it served is half-updated. If the host catches the panic, the loop is
//! *poisoned*: every later `run_once` (and `run`) returns an error saying so, rather than
//! serve on in an unknown state. Dropping it is safe; make a new one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

mod accept;
mod core;
mod ctx;
mod datagram;
mod hot;
mod source;
mod stream;
mod wake;

pub use crate::config::{Config, ConnectOptions, ListenKind};
pub use wake::{Sender, StopHandle};

use self::core::{Core, Entry, Inner, ListenerEntry, Phase, entry_at};
use self::ctx::{flush, run_touched};
use self::stream::{ReadBufs, Readiness};
use self::wake::{Channel, Wake};
use crate::error::{AddrError, ConnError, ListenError};
use crate::handler::{
    ConnGuard, ConnRef, DatagramHandler, FdInterest, FdReady, Handler, LoopCtx, OnLoop, SourceId,
};
use crate::id::{ConnId, ListenerId, TimerId};
use crate::net::{self, Datagram, Endpoint, RecvBatch, UnixName};
use crate::stats::Stats;
use crate::timer::{Target, later};
use crate::trace::TraceEvent;

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);

/// One read buffer for every socket: 64 KiB, which holds the largest UDP datagram.
const READ_BUF: usize = 64 * 1024;

/// Events collected per `poll`.
const EVENTS: usize = 1024;

/// While stopping, how often lingering connections are looked at again (no event says
/// that the peer has acknowledged our last bytes).
const LINGER_CHECK: Duration = Duration::from_millis(10);

/// An address a listener or datagram socket is bound to, as reported by the system.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The id of the listener ([`crate::ListenerId`]) or datagram socket
    /// ([`crate::SocketId`]).
    pub id: ConnId,
    /// The real address (the chosen port when port 0 was asked for).
    pub addr: Endpoint,
}

/// What a server does with a signal, by [`SignalPolicy`]: one rule for the loop's own
/// signal handling ([`EventLoop::handle_signals`]) and for a program that takes the
/// signals itself (`serve --workers`, which stops several loops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalAction {
    /// SIGUSR1: report the statistics so far, and go on.
    Report,
    /// SIGUSR2 (left alone it would kill the process): nothing.
    Ignore,
    /// SIGINT, SIGTERM, SIGHUP: stop, with this grace (zero for a second signal).
    Stop(Duration),
}

/// The signal policy of echoloop's servers: SIGUSR1 reports, SIGUSR2 is ignored, the
/// first SIGINT, SIGTERM or SIGHUP stops gracefully within the grace period, and a second
/// one stops at once (an operator who presses Ctrl-C twice means it). Each decision is
/// logged as it is taken.
#[derive(Debug, Clone, Copy)]
pub struct SignalPolicy {
    grace: Duration,
    stopping: bool,
}

impl SignalPolicy {
    /// The policy for a server whose graceful stop lasts at most `grace`.
    pub fn new(grace: Duration) -> SignalPolicy {
        SignalPolicy {
            grace,
            stopping: false,
        }
    }

    /// A stop has begun by other means: the next stop signal is the second.
    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// What to do with signal `sig` (one of [`HANDLED_SIGNALS`]).
    pub fn on_signal(&mut self, sig: libc::c_int) -> SignalAction {
        match sig {
            libc::SIGUSR1 => SignalAction::Report,
            libc::SIGUSR2 => {
                log::info!("SIGUSR2 ignored");
                SignalAction::Ignore
            }
            _ if !self.stopping => {
                self.stopping = true;
                log::info!("signal received: shutting down (grace {:?})", self.grace);
                SignalAction::Stop(self.grace)
            }
            _ => {
                log::warn!("second signal: stopping now");
                SignalAction::Stop(Duration::ZERO)
            }
        }
    }
}

/// The signals [`EventLoop::handle_signals`] takes over, for a program that must block
/// their default action before it starts its loops (as `serve --workers` does).
pub const HANDLED_SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// A single-threaded reactor serving stream and datagram sockets through handlers.
///
/// Typical use: [`EventLoop::new`] (or [`EventLoop::with_state`] for application state
/// shared by every callback), add listeners, sockets or connections, then
/// [`EventLoop::run`]. Hosts that own their loop call [`EventLoop::run_once`] instead,
/// possibly from their own poller (see the module docs, "Nesting").
///
/// Other threads reach it through a [`StopHandle`] and through [`Sender`]s made by
/// [`EventLoop::channel`]; the loop itself (and its handlers) stays on its thread.
pub struct EventLoop<S: 'static = ()> {
    inner: Inner<S>,
    events: Events,
    bufs: ReadBufs,
    /// Buffers for receiving UDP datagrams in batches; made with the first UDP socket.
    recv_batch: Option<Box<RecvBatch>>,
    /// The other half of `Core::ready`, swapped in each turn.
    ready_spare: Vec<ConnId>,
    wake: Arc<Wake>,
    channels: Vec<Box<dyn Channel<S>>>,
    /// A channel had more messages than one turn handles.
    messages_left: bool,
    /// The last poll filled the events buffer: more may be waiting.
    events_left: bool,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    signal_policy: SignalPolicy,
    /// What SIGUSR1 runs.
    info_signal: Option<OnLoop<S>>,
    /// An entry point that runs callbacks is under way. Still set when the next one
    /// starts only if a callback panicked out of the last: the loop is poisoned.
    running_callbacks: bool,
    /// When the last event arrived (for the busy-poll window).
    last_event: Instant,
    /// Busy polling: the connections read without polling (see `hot`).
    hot: hot::HotSet,
    /// Stopping, with connections lingering after their FIN: look at them again soon.
    lingering: bool,
}

impl<S> std::fmt::Debug for EventLoop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("entries", &self.inner.slab.len())
            .field("phase", &self.inner.core.phase)
            .field("stats", &self.inner.core.stats)
            .finish_non_exhaustive()
    }
}

impl EventLoop<()> {
    /// Creates a loop with its poller and waker, and no application state.
    pub fn new(config: Config) -> io::Result<EventLoop<()>> {
        EventLoop::with_state(config, ())
    }
}

impl<S: 'static> EventLoop<S> {
    /// Creates a loop whose callbacks all reach `state` (`ctx.state()`), for servers
    /// whose connections work together — a chat room's members, a proxy's pairs — without
    /// `Rc<RefCell<…>>` side channels.
    pub fn with_state(config: Config, state: S) -> io::Result<EventLoop<S>> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let config = config.sanitized();
        let busy_poll = config.busy_poll;
        Ok(EventLoop {
            inner: Inner {
                poll,
                slab: Slab::new(),
                core: Core::new(config),
                state,
                loop_timers: std::collections::HashMap::new(),
                on_stopping: None,
            },
            events: Events::with_capacity(EVENTS),
            bufs: ReadBufs {
                wire: vec![0u8; READ_BUF].into_boxed_slice(),
                plain: Vec::new(),
            },
            recv_batch: None,
            ready_spare: Vec::with_capacity(64),
            wake: Arc::new(Wake::new(waker)),
            channels: Vec::new(),
            messages_left: false,
            events_left: false,
            signals: None,
            signal_policy: SignalPolicy::new(Duration::from_secs(5)),
            info_signal: None,
            running_callbacks: false,
            last_event: Instant::now(),
            hot: hot::HotSet::new(busy_poll),
            lingering: false,
        })
    }

    /// A handle to stop this loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            wake: Arc::clone(&self.wake),
        }
    }

    /// A channel for other threads to hand this loop work: every message sent through the
    /// returned [`Sender`] (cloneable, `Send` when `M` is) wakes the loop and is passed to
    /// `callback` on the loop's thread, in order. At most `capacity` messages wait; past
    /// that [`Sender::try_send`] says the channel is full. Once the loop has stopped (or
    /// is dropped), it says so.
    pub fn channel<M: 'static>(
        &mut self,
        capacity: usize,
        callback: impl FnMut(&mut LoopCtx<'_, S>, M) + 'static,
    ) -> Sender<M> {
        let (tx, rx) = wake::channel(&self.wake, capacity, Box::new(callback));
        self.channels.push(rx);
        tx
    }

    /// Takes over the signals a server is sent. The signals arrive through the poll loop
    /// (a self-pipe), not in a signal handler, so the callbacks they cause are ordinary:
    ///
    /// | signal | what it does |
    /// |---|---|
    /// | SIGINT, SIGTERM, SIGHUP | a graceful stop with `grace`; a second one stops at once |
    /// | SIGUSR1 | runs the callback given to [`EventLoop::on_info_signal`] (as `dd` prints its progress); without one, logs the counters |
    /// | SIGUSR2 | nothing (logged): unhandled, it would kill the process |
    ///
    /// SIGHUP stops like SIGTERM because it says the terminal went away.
    pub fn handle_signals(&mut self, grace: Duration) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new(HANDLED_SIGNALS)?;
        self.inner
            .poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        self.signal_policy = SignalPolicy::new(grace);
        Ok(())
    }

    /// What SIGUSR1 does once [`EventLoop::handle_signals`] is on: runs `callback` on the
    /// loop's thread (to print the counters, say).
    pub fn on_info_signal(&mut self, callback: impl FnMut(&mut LoopCtx<'_, S>) + 'static) {
        self.info_signal = Some(Box::new(callback));
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.core.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.core.config
    }

    /// The application state.
    pub fn state(&self) -> &S {
        &self.inner.state
    }

    /// The application state, to change between turns.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.inner.state
    }

    /// True once the loop has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.core.phase == Phase::Stopped
    }

    /// Binds a stream listener; every accepted connection gets a handler from `factory`.
    pub fn listen(
        &mut self,
        addr: &Endpoint,
        kind: ListenKind,
        factory: impl FnMut() -> Box<dyn Handler<S>> + 'static,
    ) -> Result<Bound, ListenError> {
        self.inner.core.now = Instant::now();
        let opts = self.inner.core.bind_options();
        let sock = match (addr, &kind) {
            (Endpoint::Inet(a), ListenKind::Tcp | ListenKind::Tls(_)) => net::bind_tcp(*a, opts)?,
            (Endpoint::Unix(name), ListenKind::Unix) => net::bind_unix(name)?,
            (Endpoint::Unix(name), _) => return Err(unix_mismatch(name)),
            (Endpoint::Inet(a), ListenKind::Unix) => {
                return Err(ListenError::Addr(AddrError::Invalid {
                    input: a.to_string(),
                    reason: "a Unix listener needs a path or @name".into(),
                }));
            }
        };
        let (id, addr) = accept::add(&mut self.inner, sock, kind, Box::new(factory))?;
        Ok(Bound { id, addr })
    }

    /// Makes a stream listener expect the PROXY protocol (version 1 or 2): every
    /// connection it accepts must start with a load balancer's header naming the real
    /// client, which is read and removed before any byte reaches the handler (before the
    /// TLS handshake on a TLS listener) and which [`crate::Ctx::peer_addr`] then reports.
    /// A missing, malformed, oversized or late header (the handshake timeout) closes that
    /// connection with [`crate::CloseReason::BadProxyHeader`].
    pub fn expect_proxy_header(&mut self, listener: ListenerId, on: bool) -> Result<(), ConnError> {
        self.listener_mut(listener)?.proxy = on;
        Ok(())
    }

    /// Whether connections accepted on `listener` count in [`EventLoop::stats`] and
    /// against [`Config::max_connections`] (they do by default). Off, they are the
    /// server's own business — a metrics or admin endpoint next to the service: the
    /// monitoring does not inflate the numbers it reports, and a server full of clients
    /// still answers it.
    pub fn count_in_stats(&mut self, listener: ListenerId, on: bool) -> Result<(), ConnError> {
        self.listener_mut(listener)?.counted = on;
        Ok(())
    }

    /// The listener `id` names: `NotStream` for another kind of entry, `Gone` once its
    /// slot was freed (the generation tells a reused slot from the one asked for).
    fn listener_mut(&mut self, id: ListenerId) -> Result<&mut ListenerEntry<S>, ConnError> {
        match entry_at(&mut self.inner.slab, &self.inner.core, id)? {
            Entry::Listener(l) => Ok(l),
            _ => Err(ConnError::NotStream),
        }
    }

    /// Serves connections on a listening socket made elsewhere — handed over by systemd's
    /// socket activation, say: TCP (plain or TLS, as `kind` says) or Unix stream, told
    /// apart by its address. Its socket file, if any, is never removed by us.
    pub fn adopt_listener(
        &mut self,
        fd: std::os::fd::OwnedFd,
        kind: ListenKind,
        factory: impl FnMut() -> Box<dyn Handler<S>> + 'static,
    ) -> Result<Bound, ListenError> {
        self.inner.core.now = Instant::now();
        let sock = net::Listener::adopt(fd).map_err(ListenError::Register)?;
        let (id, addr) = accept::add(&mut self.inner, sock, kind, Box::new(factory))?;
        Ok(Bound { id, addr })
    }

    /// Serves a datagram socket made elsewhere (UDP or Unix datagram).
    pub fn adopt_datagram(
        &mut self,
        fd: std::os::fd::OwnedFd,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<Bound, ListenError> {
        let sock = Datagram::adopt(fd).map_err(ListenError::Register)?;
        self.add_datagram(sock, handler)
    }

    /// Binds a UDP socket served by `handler`; its `on_ready` runs before this returns.
    pub fn bind_udp(
        &mut self,
        addr: std::net::SocketAddr,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<Bound, ListenError> {
        let sock = net::bind_udp(addr, self.inner.core.bind_options())?;
        self.add_datagram(Datagram::Udp(sock), handler)
    }

    /// Binds a Unix datagram socket (path or `@abstract`) served by `handler`.
    pub fn bind_unix_datagram(
        &mut self,
        name: &UnixName,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<Bound, ListenError> {
        let sock = Datagram::bind_unix(name)?;
        self.add_datagram(sock, handler)
    }

    /// Adds an already-made Unix datagram socket (for example an autobound client socket).
    pub fn add_unix_datagram(
        &mut self,
        sock: std::os::unix::net::UnixDatagram,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<Bound, ListenError> {
        let sock = Datagram::from_unix(sock).map_err(ListenError::Register)?;
        self.add_datagram(sock, handler)
    }

    fn add_datagram(
        &mut self,
        sock: Datagram,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<Bound, ListenError> {
        // The handler's on_ready may set timers: count them from now.
        self.inner.core.now = Instant::now();
        let (id, addr) = datagram::add(&mut self.inner, sock, handler)?;
        self.with_callbacks(flush).map_err(ListenError::Register)?;
        Ok(Bound { id, addr })
    }

    /// Starts a non-blocking connect and returns the new connection's id at once.
    ///
    /// The outcome always reaches `handler`, never the caller — the same contract as
    /// [`crate::Ctx::connect`]: `on_open` once connected (after the TLS handshake for TLS),
    /// or `on_close` with [`crate::CloseReason::ConnectFailed`] or
    /// [`crate::CloseReason::ConnectTimeout`]. A connect that fails at once (no route, no
    /// descriptors) is reported the same way, by the next [`EventLoop::run_once`].
    pub fn connect(
        &mut self,
        to: &Endpoint,
        opts: ConnectOptions,
        handler: Box<dyn Handler<S>>,
    ) -> ConnId {
        // Called between turns, possibly long after the last poll: deadlines (the connect
        // timeout) must count from now, not from the loop's last wake-up.
        self.inner.core.now = Instant::now();
        stream::connect(&mut self.inner, to, opts, handler)
    }

    /// A stream connection of this loop, to act on from outside the callbacks: send to it,
    /// close it, pause it. What the action causes — its handler's callbacks included —
    /// runs when the returned [`ConnGuard`] is dropped.
    pub fn conn(&mut self, id: ConnId) -> ConnGuard<'_, S> {
        self.inner.core.now = Instant::now();
        ConnGuard {
            conn: ConnRef {
                ops: &mut self.inner,
                id,
            },
            running_callbacks: &mut self.running_callbacks,
        }
    }

    /// Runs `f` with a loop context, between turns: everything a callback without a
    /// connection can do ([`LoopCtx`]: timers, descriptors, listeners, connections by
    /// id), with what it causes run before this returns.
    pub fn with_ctx<R>(&mut self, f: impl FnOnce(&mut LoopCtx<'_, S>) -> R) -> io::Result<R> {
        self.inner.core.now = Instant::now();
        self.with_callbacks(|inner| {
            let out = f(&mut LoopCtx { ops: &mut *inner });
            flush(inner);
            out
        })
    }

    /// Watches a descriptor of the application's own; see [`LoopCtx::add_fd`].
    pub fn add_fd<F: AsFd + 'static>(
        &mut self,
        fd: F,
        interest: FdInterest,
        callback: impl FnMut(&mut LoopCtx<'_, S>, &mut F, FdReady) + 'static,
    ) -> io::Result<SourceId> {
        if self.is_stopped() {
            return Err(io::Error::other(ConnError::Stopped));
        }
        self.with_ctx(|ctx| ctx.add_fd(fd, interest, callback))?
    }

    /// Stops watching a descriptor and closes it; see [`LoopCtx::remove_fd`].
    pub fn remove_fd(&mut self, id: SourceId) -> Result<(), ConnError> {
        source::remove(&mut self.inner, id.0)
    }

    /// A timer of the loop's own: `callback` runs on the loop's thread after `after`
    /// (see [`LoopCtx::set_timer`]). Refused once the loop has stopped: it would never
    /// fire.
    pub fn set_timer(
        &mut self,
        after: Duration,
        callback: impl FnOnce(&mut LoopCtx<'_, S>) + 'static,
    ) -> Result<TimerId, ConnError> {
        if self.is_stopped() {
            return Err(ConnError::Stopped);
        }
        self.inner.core.now = Instant::now();
        Ok(LoopCtx {
            ops: &mut self.inner,
        }
        .set_timer(after, callback))
    }

    /// Runs `callback` when a graceful stop begins, before each open connection hears
    /// [`Handler::on_stopping`]: to tell workers, or stop a child process, say.
    pub fn on_stopping(&mut self, callback: impl FnMut(&mut LoopCtx<'_, S>) + 'static) {
        self.inner.on_stopping = Some(Box::new(callback));
    }

    /// Stops the loop (see [`StopHandle::stop`]). Callbacks run before this returns (the
    /// `on_close` of connections that were not open yet, say); `run_once` finishes the job.
    pub fn stop(&mut self, grace: Duration) {
        self.inner.core.now = Instant::now();
        if let Err(e) = self.with_callbacks(|inner| begin_stop(inner, grace)) {
            log::error!("{e}");
        }
    }

    /// Runs until stopped.
    pub fn run(&mut self) -> io::Result<()> {
        while self.run_once(None)? {}
        Ok(())
    }

    /// Waits for events at most `timeout` (or until the next timer) and handles them.
    /// Returns `false` once the loop has stopped. After a handler panicked out of an
    /// earlier call, returns an error: the loop is poisoned (see the module docs).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.enter()?;
        let result = self.turn(timeout);
        self.running_callbacks = false;
        result
    }

    /// How long a host may wait on the loop's descriptor before calling
    /// [`EventLoop::run_once`]: until the loop's next timer, zero if work is waiting that
    /// no event will announce, `None` for as long as it likes.
    pub fn timeout(&mut self) -> Option<Duration> {
        // Asked between turns, perhaps long after the last: count from now.
        self.inner.core.now = Instant::now();
        self.wait_for(None)
    }

    /// The time the loop last read the clock: after its last poll, or at the start of its
    /// last turn. A host that runs the loop turn by turn can use it instead of reading the
    /// clock again (the handlers' `ctx.now()` is the same instant).
    pub fn now(&self) -> Instant {
        self.inner.core.now
    }

    /// Number of live entries (listeners, sockets, connections).
    pub fn len(&self) -> usize {
        self.inner.slab.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.inner.slab.is_empty()
    }

    fn enter(&mut self) -> io::Result<()> {
        if self.running_callbacks {
            return Err(io::Error::other(
                "the event loop is poisoned: a handler panicked during an earlier call; drop it and make a new one",
            ));
        }
        self.running_callbacks = true;
        Ok(())
    }

    /// Runs `f`, which may call handlers, under the poison guard.
    fn with_callbacks<R>(&mut self, f: impl FnOnce(&mut Inner<S>) -> R) -> io::Result<R> {
        self.enter()?;
        let r = f(&mut self.inner);
        self.running_callbacks = false;
        Ok(r)
    }

    fn turn(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.is_stopped() {
            return Ok(false);
        }
        self.inner.core.now = Instant::now();
        // Work asked for between turns (a connect that failed at once, an action through
        // `conn`) must not wait for an event that may never come.
        flush(&mut self.inner);
        self.apply_stop_request();
        // UDP sockets, however added (by a callback too), read in batches when their
        // queue runs deep: the buffers are made once, with the first.
        if self.inner.core.udp_added && self.recv_batch.is_none() {
            self.recv_batch = Some(Box::new(RecvBatch::new()));
            self.inner.core.dgram_batch.reserve_batch();
        }
        // A stop begun between turns (`EventLoop::stop`) may have nothing left to wait
        // for: look before sleeping, or the wait could last the whole grace period.
        self.check_stopped();
        if self.is_stopped() {
            return Ok(false);
        }
        let wait = self.wait_for(timeout);
        // Busy polling: within the window, read the connections talking right now
        // instead of asking epoll about them (`hot`).
        let hot_turn = self.hot.on()
            && self.hot.spin_now(
                wait == Some(Duration::ZERO),
                self.inner.core.now,
                self.last_event,
            );
        if hot_turn {
            self.events.clear();
        } else {
            match self.inner.poll.poll(&mut self.events, wait) {
                Ok(()) => {}
                // A signal interrupted the wait: not an error, just look again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.inner.core.now = Instant::now();
        }
        let events = self.events.iter().count();
        self.events_left = events >= EVENTS;
        if events > 0 {
            self.last_event = self.inner.core.now;
        }
        let input_before = self.inner.core.input_seen;
        self.inner.core.handshakes.new_turn(self.inner.core.now);
        self.dispatch_events();
        if hot_turn {
            self.spin_hot(timeout);
        }
        self.run_handshakes(input_before);
        if self.messages_left {
            self.messages_left = drain(&mut self.inner, &mut self.channels);
            self.wake.room_made();
        }
        self.run_ready();
        self.run_timers();
        self.apply_stop_request();
        // Just before polling again: write what this turn sent to connections from
        // outside their own callbacks, once per connection.
        flush(&mut self.inner);
        self.sweep();
        self.check_stopped();
        Ok(!self.is_stopped())
    }

    /// How long the next poll may wait.
    fn wait_for(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        let core = &mut self.inner.core;
        let now = core.now;
        let mut wait = timeout;
        let mut cap = |until: Duration| wait = Some(wait.map_or(until, |w| w.min(until)));
        if let Some(at) = core.timers.next_deadline() {
            cap(at.saturating_duration_since(now));
        }
        if let Phase::Stopping { deadline } = core.phase {
            cap(deadline.saturating_duration_since(now));
            if self.lingering {
                cap(LINGER_CHECK);
            }
        }
        // Busy polling: within the window after the last event, look without sleeping.
        if core
            .config
            .busy_poll
            .is_some_and(|w| now < later(self.last_event, w))
        {
            cap(Duration::ZERO);
        }
        // Work left undone on purpose (fairness), or that no event will announce: only
        // look for new events.
        if !core.ready.is_empty()
            || !core.touched.is_empty()
            || !core.flush.is_empty()
            || core.stop_request.is_some()
            || self.messages_left
            || self.events_left
            || core.handshakes.any_waiting()
        {
            cap(Duration::ZERO);
        }
        wait
    }

    fn dispatch_events(&mut self) {
        let EventLoop {
            inner,
            events,
            bufs,
            recv_batch,
            wake,
            channels,
            messages_left,
            signals,
            signal_policy,
            info_signal,
            hot,
            ..
        } = self;
        for event in events.iter() {
            if hot.on() {
                let id = match (event.token(), inner.slab.get(event.token().0)) {
                    (Token(key), Some(e @ (Entry::Stream(_) | Entry::Dgram(_)))) => {
                        Some(ConnId::new(key, e.generation()))
                    }
                    _ => None,
                };
                hot.saw(id, event.is_readable(), inner.core.now);
            }
            match event.token() {
                WAKER => {
                    if let Some(grace) = wake.woken() {
                        inner.core.request_stop(grace);
                    }
                    *messages_left = drain(inner, channels);
                    wake.room_made();
                }
                SIGNALS => {
                    if take_signals(&mut inner.core, signals.as_mut(), signal_policy) {
                        match info_signal.as_mut() {
                            Some(cb) => cb(&mut LoopCtx { ops: inner }),
                            None => log::info!("SIGUSR1: {:?}", inner.core.stats),
                        }
                    }
                }
                Token(key) => dispatch(inner, bufs, recv_batch.as_deref_mut(), key, event),
            }
            run_touched(inner);
        }
    }

    /// The hot part of a hot turn: reads the members until one has input, or something
    /// else may want the loop, whichever comes first: a timer due, the host's `timeout`
    /// over, work scheduled, or [`hot::TURNS_PER_POLL`] reads of the set since the last
    /// poll. Spinning here rather than through whole turns keeps each empty read close to
    /// sockperf's bare `recv` loop: input found mid-spin waits for one system call, not
    /// for a turn's bookkeeping.
    fn spin_hot(&mut self, timeout: Option<Duration>) {
        let start = self.inner.core.now;
        let until = timeout.map(|t| later(start, t));
        let due = self.inner.core.timers.next_deadline();
        loop {
            let before = self.inner.core.input_seen;
            self.run_hot();
            let core = &self.inner.core;
            if core.input_seen != before || !core.ready.is_empty() || !self.hot.spin_more() {
                return;
            }
            let now = Instant::now();
            self.inner.core.now = now;
            if due.is_some_and(|at| now >= at) || until.is_some_and(|at| now >= at) {
                return;
            }
        }
    }

    /// A hot turn: reads every member of the hot set once, as a readiness event would
    /// (`hot`). A read that finds nothing costs one system call.
    fn run_hot(&mut self) {
        let now = self.inner.core.now;
        for id in self.hot.members().into_iter().flatten() {
            let inner = &mut self.inner;
            let before = inner.core.input_seen;
            match inner.slab.get(id.key()) {
                Some(e) if e.generation() != id.generation => self.hot.leave(id),
                Some(Entry::Stream(_)) => stream::read_hot(inner, &mut self.bufs, id.key()),
                Some(Entry::Dgram(_)) => {
                    let batch = self.recv_batch.as_deref_mut();
                    datagram::ready(inner, &mut self.bufs, batch, id.key(), true, false);
                }
                _ => self.hot.leave(id),
            }
            run_touched(&mut self.inner);
            if self.inner.core.input_seen != before {
                self.hot.had_input(id, now);
                self.last_event = now;
            }
        }
        self.hot.expire(now);
    }

    /// Serves the TLS handshake steps in line, oldest first, while this turn's budget
    /// lasts (`core::Handshakes`): after this turn's events, so that connections that
    /// became ready now go first (reads left over by the read budget come after).
    fn run_handshakes(&mut self, input_before: u64) {
        // Input this turn beyond the handshake steps' own: other connections are busy.
        let core = &mut self.inner.core;
        let others = core.input_seen - input_before > core.handshakes.steps();
        core.handshakes.others_this_turn(others);
        if !core.handshakes.any_waiting() && core.handshakes.steps() == 0 {
            return;
        }
        while let Some(id) = self.inner.core.handshakes.next() {
            let inner = &mut self.inner;
            if let Some(Entry::Stream(e)) = inner.slab.get_mut(id.key()) {
                if e.generation == id.generation && e.conn.poll_read_again() {
                    stream::read_loop(inner, &mut self.bufs, id.key(), false);
                }
            }
            inner.core.handshakes.done();
            run_touched(inner);
        }
        self.inner.core.handshakes.turn_done(Instant::now());
    }

    fn run_ready(&mut self) {
        // Swap in the spare list: entries scheduled while we work go to the next turn, and
        // both lists keep their capacity (no allocation per turn).
        let mut ready = std::mem::take(&mut self.ready_spare);
        std::mem::swap(&mut ready, &mut self.inner.core.ready);
        for id in &ready {
            let key = id.key();
            let inner = &mut self.inner;
            match inner.slab.get(key) {
                Some(e) if e.generation() != id.generation => continue,
                // No event tells us whether EOF is pending: read until WouldBlock.
                Some(Entry::Stream(_)) => stream::read_loop(inner, &mut self.bufs, key, false),
                Some(Entry::Dgram(_)) => {
                    let batch = self.recv_batch.as_deref_mut();
                    datagram::ready(inner, &mut self.bufs, batch, key, true, false);
                }
                Some(Entry::Listener(_)) => accept::accept_loop(inner, key),
                Some(Entry::Failed(_) | Entry::Source(_)) | None => continue,
            }
            run_touched(inner);
        }
        ready.clear();
        self.ready_spare = ready;
    }

    fn run_timers(&mut self) {
        let inner = &mut self.inner;
        // Timers set by these callbacks, even for "now", fire on the next turn (after a
        // poll), so a handler re-arming a zero delay cannot starve every socket.
        let mark = inner.core.timers.mark();
        while let Some((timer, target)) = inner.core.timers.pop_due(inner.core.now, mark) {
            if inner.core.trace.on {
                let (owner, kind) = match target {
                    Target::Deadline(id) => (Some(id), "deadline"),
                    Target::Conn(id) | Target::Dgram(id) => (Some(id), "timer"),
                    Target::DgramRetry(id) => (Some(id), "retry"),
                    Target::AcceptBackoff(id) => (Some(id), "accept back-off"),
                    Target::Loop => (None, "loop timer"),
                };
                inner
                    .core
                    .trace
                    .emit(&TraceEvent::TimerFired { owner, kind });
            }
            match target {
                Target::Deadline(id) => stream::deadline_fired(inner, id),
                Target::Conn(id) => stream::user_timer_fired(inner, id, timer),
                Target::Dgram(id) => datagram::user_timer_fired(inner, id, timer),
                Target::DgramRetry(id) => datagram::retry_fired(inner, id),
                Target::AcceptBackoff(id) => accept::backoff_over(inner, id),
                Target::Loop => {
                    if let Some(callback) = inner.loop_timers.remove(&timer) {
                        callback(&mut LoopCtx { ops: inner });
                    }
                }
            }
            run_touched(inner);
        }
    }

    fn apply_stop_request(&mut self) {
        if let Some(grace) = self.inner.core.stop_request.take() {
            begin_stop(&mut self.inner, grace);
        }
    }

    fn check_stopped(&mut self) {
        if matches!(self.inner.core.phase, Phase::Stopping { .. }) {
            self.lingering = finish_lingering(&mut self.inner);
            // What that closed must leave the slab now, so that an empty loop is seen
            // as stopped on this turn, not after sleeping to the grace deadline.
            self.sweep();
        }
        if let Phase::Stopping { deadline } = self.inner.core.phase {
            if self.inner.core.now >= deadline {
                force_close_all(&mut self.inner);
                self.sweep();
            }
            if only_sources_left(&self.inner) {
                // Descriptor sources and loop timers do not keep a stopping loop alive:
                // they end with it (the descriptors are closed).
                for (_, entry) in self.inner.slab.iter_mut() {
                    if let Entry::Source(w) = entry {
                        w.deregister(&self.inner.poll);
                    }
                }
                self.inner.slab.clear();
                self.inner.loop_timers.clear();
                self.inner.core.handshakes.clear();
                self.inner.core.phase = Phase::Stopped;
                // Senders learn that nobody will read their messages.
                self.channels.clear();
                self.wake.room_made();
            }
        }
    }

    /// Frees the slots of everything closed during this batch. Only now: a slot freed
    /// earlier could be reused by a new connection and receive a stale event.
    fn sweep(&mut self) {
        let inner = &mut self.inner;
        for key in inner.core.dead.drain(..) {
            match inner.slab.try_remove(key) {
                // Rare: deregister explicitly, tidy for embedders watching the poller.
                Some(Entry::Listener(mut l)) => {
                    let _ = inner.poll.registry().deregister(&mut l.sock);
                }
                Some(Entry::Dgram(mut d)) => {
                    let _ = inner.poll.registry().deregister(&mut d.sock);
                }
                // Dropping closes the descriptor, and closing removes it from epoll (we
                // never duplicate descriptors): one system call fewer per connection than
                // deregistering first.
                // Descriptor sources were deregistered when removed; dropping closes them.
                Some(Entry::Stream(_) | Entry::Failed(_) | Entry::Source(_)) | None => {}
            }
        }
    }
}

impl<S> Drop for EventLoop<S> {
    fn drop(&mut self) {
        // Senders waiting for room must learn now that none will come.
        self.channels.clear();
        self.wake.room_made();
    }
}

impl<S> AsRawFd for EventLoop<S> {
    /// The poll (epoll) descriptor, for a host's poller: readable when the loop has events.
    fn as_raw_fd(&self) -> RawFd {
        self.inner.poll.as_raw_fd()
    }
}

impl<S> AsFd for EventLoop<S> {
    /// The poll (epoll) descriptor, for a host's poller: readable when the loop has events.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.poll.registry().as_fd()
    }
}

/// One readiness event for an entry.
fn dispatch<S>(
    inner: &mut Inner<S>,
    bufs: &mut ReadBufs,
    batch: Option<&mut RecvBatch>,
    key: usize,
    event: &Event,
) {
    match inner.slab.get(key) {
        Some(Entry::Listener(_)) if event.is_readable() => accept::accept_loop(inner, key),
        Some(Entry::Stream(_)) => {
            let r = Readiness {
                readable: event.is_readable(),
                writable: event.is_writable(),
                error: event.is_error(),
                read_closed: event.is_read_closed(),
            };
            stream::ready(inner, bufs, key, r);
        }
        Some(Entry::Source(_)) => {
            let ready = FdReady {
                readable: event.is_readable(),
                writable: event.is_writable(),
                hang_up: event.is_read_closed() || event.is_write_closed(),
                error: event.is_error(),
            };
            source::ready(inner, key, ready);
        }
        Some(Entry::Dgram(_)) => {
            // A pending socket error (ICMP news on a connected UDP socket) raises EPOLLERR
            // without EPOLLIN: only a receive collects it and tells the handler.
            datagram::ready(
                inner,
                bufs,
                batch,
                key,
                event.is_readable() || event.is_error(),
                event.is_writable(),
            );
        }
        _ => {}
    }
}

/// Runs the channels' callbacks; true if messages are left for the next turn.
fn drain<S>(inner: &mut Inner<S>, channels: &mut [Box<dyn Channel<S>>]) -> bool {
    let mut left = false;
    for ch in channels.iter_mut() {
        left |= ch.drain(inner);
    }
    left
}

/// Acts on the signals that arrived; returns whether SIGUSR1 was among them.
fn take_signals(
    core: &mut Core,
    signals: Option<&mut signal_hook_mio::v1_0::Signals>,
    policy: &mut SignalPolicy,
) -> bool {
    let Some(signals) = signals else {
        return false;
    };
    // A stop begun elsewhere (a handle, a callback) makes the next signal the second.
    if matches!(core.phase, Phase::Stopping { .. }) || core.stop_request.is_some() {
        policy.stopping();
    }
    let mut info = false;
    for sig in signals.pending() {
        match policy.on_signal(sig) {
            SignalAction::Report => info = true,
            SignalAction::Ignore => {}
            SignalAction::Stop(grace) => core.request_stop(grace),
        }
    }
    info
}

/// Graceful stop: no new connections; the loop's `on_stopping`, then every open
/// connection's (by default a graceful close: what was read is answered, then each
/// connection is half-closed and closed when its peer finishes). A second request only
/// shortens the grace.
fn begin_stop<S>(inner: &mut Inner<S>, grace: Duration) {
    let core = &mut inner.core;
    let deadline = later(core.now, grace);
    match core.phase {
        Phase::Stopped => return,
        Phase::Stopping { deadline: d } => {
            if deadline < d {
                core.phase = Phase::Stopping { deadline };
                if grace.is_zero() {
                    force_close_all(inner);
                }
            }
            return;
        }
        Phase::Running => {}
    }
    core.phase = Phase::Stopping { deadline };
    let mut dgrams = Vec::new();
    let mut conns = Vec::new();
    for (key, entry) in inner.slab.iter_mut() {
        match entry {
            Entry::Listener(l) => l.close(core, key),
            Entry::Dgram(_) => dgrams.push(key),
            Entry::Stream(e) => conns.push(ConnId::new(key, e.generation)),
            Entry::Failed(_) | Entry::Source(_) => {}
        }
    }
    for key in dgrams {
        datagram::close(inner, key);
    }
    if let Some(mut callback) = inner.on_stopping.take() {
        callback(&mut LoopCtx { ops: inner });
        inner.on_stopping = Some(callback);
        run_touched(inner);
    }
    for id in conns {
        let Some(e) = self::core::stream_at(&mut inner.slab, id) else {
            continue;
        };
        if e.conn.has_opened() {
            stream::callback(inner, id.key(), |h, ctx| h.on_stopping(ctx));
        } else {
            // Never opened (connecting, handshaking, waiting for its PROXY header): it
            // owes nothing and its handler has not begun; close it now.
            e.conn.stop(inner.core.now, &inner.core.limits);
        }
        inner.core.touched.push(id);
        run_touched(inner);
    }
    flush(inner);
    if grace.is_zero() {
        force_close_all(inner);
    }
}

/// True when nothing but descriptor sources (and listeners closed in this batch) is left:
/// a stopping loop is done.
fn only_sources_left<S>(inner: &Inner<S>) -> bool {
    inner
        .slab
        .iter()
        .all(|(_, e)| matches!(e, Entry::Source(_)) || matches!(e, Entry::Listener(l) if l.closed))
}

/// The lingering close, cut short where nothing can be lost. A connection whose FIN is out
/// waits for the peer's EOF because closing with data still in flight (sent but not yet
/// acknowledged) or unread input would make the kernel reset the connection, and a reset
/// throws away what the peer has not read yet. But once the kernel holds nothing we sent
/// (`SIOCOUTQ` is 0: all acknowledged) and nothing unread (`FIONREAD` is 0), closing loses
/// nothing: an idle client (a `telnet` left open) need not hold up a stopping server for
/// the whole grace period. Returns whether any connection still lingers.
fn finish_lingering<S>(inner: &mut Inner<S>) -> bool {
    let core = &mut inner.core;
    let mut left = false;
    for (key, entry) in inner.slab.iter_mut() {
        let Entry::Stream(e) = entry else {
            continue;
        };
        if e.conn.state() != crate::conn::State::Lingering {
            continue;
        }
        let quiet = matches!(e.stream.unsent_in_kernel(), Ok(0))
            && matches!(e.stream.unread_in_kernel(), Ok(0));
        if quiet {
            e.conn.handle_quiet();
            core.touched.push(ConnId::new(key, e.generation));
        } else {
            left = true;
        }
    }
    flush(inner);
    left
}

/// The grace is over: whatever is left closes now, with a reset where output was owed.
fn force_close_all<S>(inner: &mut Inner<S>) {
    let core = &mut inner.core;
    for (key, entry) in inner.slab.iter_mut() {
        if let Entry::Stream(e) = entry {
            e.conn.stop_now();
            core.touched.push(ConnId::new(key, e.generation));
        }
    }
    flush(inner);
}

fn unix_mismatch(name: &UnixName) -> ListenError {
    ListenError::Addr(AddrError::Invalid {
        input: name.to_string(),
        reason: "TCP and TLS listeners need host:port".into(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::{Config, EventLoop, ListenKind};
    use crate::handler::{Ctx, Handler};
    use crate::net::Endpoint;

    /// Sets a long timer, and on its first bytes sends `reply` bytes back.
    struct TimerThenReply {
        reply: usize,
    }

    impl Handler for TimerThenReply {
        fn on_open(&mut self, ctx: &mut Ctx<'_>) {
            ctx.set_timer(Duration::from_secs(3600));
            ctx.set_timer(Duration::from_secs(7200));
        }
        fn on_data(&mut self, ctx: &mut Ctx<'_>, _: &[u8]) {
            ctx.send(&vec![9u8; self.reply]);
            ctx.close();
        }
    }

    fn serve(reply: usize) -> (EventLoop, std::net::SocketAddr) {
        let mut el = EventLoop::new(Config::default()).unwrap();
        let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
        let bound = el
            .listen(&any, ListenKind::Tcp, move || {
                Box::new(TimerThenReply { reply })
            })
            .unwrap();
        let Endpoint::Inet(addr) = bound.addr else {
            panic!("not an IP address")
        };
        (el, addr)
    }

    fn turn_until(el: &mut EventLoop, mut done: impl FnMut(&EventLoop) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(el) {
            assert!(Instant::now() < deadline, "not reached in time");
            el.run_once(Some(Duration::from_millis(20))).unwrap();
        }
    }

    #[test]
    fn loop_user_timers_are_cancelled_when_their_connection_ends() {
        let (mut el, addr) = serve(1);
        let mut s = TcpStream::connect(addr).unwrap();
        turn_until(&mut el, |el| el.inner.core.timers.len() == 2);
        s.write_all(b"x").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        turn_until(&mut el, |el| el.stats().closed == 1);
        // Hours-long timers of a connection that is gone do not wait in the heap.
        assert_eq!(el.inner.core.timers.len(), 0);
    }

    #[test]
    fn loop_output_buffers_keep_a_bounded_allocation_after_a_huge_send() {
        let (mut el, addr) = serve(64 << 20);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"x").unwrap();
        let reader = std::thread::spawn(move || {
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            back.len()
        });
        turn_until(&mut el, |el| el.stats().bytes_out > 0);
        turn_until(&mut el, |el| el.stats().closed == 1);
        assert_eq!(reader.join().unwrap(), 64 << 20);
        // The 64 MiB reply went through the connection's buffer; once sent, the loop
        // keeps no more than the pool's bound of spare output buffers.
        assert!(
            el.inner.core.pool.bytes() <= crate::sendbuf::BufPool::KEEP_BYTES,
            "spare buffers keep {} bytes",
            el.inner.core.pool.bytes()
        );
    }
}
