//! The reactor: one thread, one `mio::Poll`, every socket registered in it.
//!
//! Teaches: readiness-based I/O. `poll` says which sockets *became* ready; the loop then
//! does the non-blocking calls until they would block. The rules that make this correct are
//! named where they are applied:
//!
//! * **Edge-triggered readiness** — mio reports a change, not a level. After a readable
//!   event we read until `WouldBlock` (or a short read, see `read_loop`); when we stop
//!   early (fairness cap, backpressure, a paused handler) we remember `maybe_readable` and
//!   come back ourselves, because no new event will come for bytes already waiting.
//! * **Interest registered once** — every connection is registered for both readable and
//!   writable when it is created and never re-registered: with edge triggering, writability
//!   is reported along with other wake-ups (and when a full send buffer gains room) rather
//!   than continuously, so asking for it all along costs little — a flag to ignore while
//!   nothing is owed — while re-registering would cost a system call per change.
//! * **Partial writes** — see [`crate::sendbuf`].
//! * **Backpressure** — a peer that sends but does not read would make us buffer without
//!   bound; above `high_water` bytes owed we stop reading it, below `low_water` we resume.
//! * **Slot reuse** — closed connections stay in the slab until the whole batch of events
//!   is dispatched, so a later event in the same batch cannot reach a new connection that
//!   took the slot (mio#172); ids carry a generation for timers that outlive a batch.
//! * **EMFILE on accept** — out of descriptors, `accept` fails while the connection stays
//!   queued; retrying at once spins the CPU, so the listener backs off on a timer.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::pki_types::ServerName;
use slab::Slab;

use crate::conn::{Connection, Session, State, WriteShut};
use crate::error::ListenError;
use crate::handler::{CloseReason, ConnId, Ctx, DatagramHandler, DgramCtx, Handler, SendError};
use crate::net::{
    self, BATCH, BindOptions, Datagram, Endpoint, Listener, PeerAddr, RecvBatch, SendBatch, Stream,
    UnixName,
};
use crate::sendbuf::{Flush, write_until_blocked};
use crate::stats::Stats;
use crate::timer::{Kind, Owner, Timers};
use crate::tls::TlsSession;

mod datagram;
mod stream;

pub(crate) use datagram::dgram_send;
use datagram::{call_dgram, close_dgram, dgram_ready, dgram_retry};
use stream::{
    NoopHandler, Readiness, arm_timer, call_handler, close_now, conn_ready, conn_ready_again,
    conn_timer, progress,
};

const WAKER: Token = Token(usize::MAX);
/// Connections accepted per listener per turn before other sockets get a go.
const ACCEPT_BUDGET: usize = 256;
const SIGNALS: Token = Token(usize::MAX - 1);

/// Large enough for the largest UDP datagram (65,507 bytes over IPv4): a smaller buffer
/// silently truncates datagrams.
const READ_BUF: usize = 64 * 1024;

/// Settings of one event loop.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Stop reading a connection when this many bytes are owed to it.
    pub high_water: usize,
    /// Resume reading when the bytes owed fall to this.
    pub low_water: usize,
    /// At most this many bytes are read from one connection per turn, so one busy peer
    /// cannot starve the others.
    pub read_budget: usize,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: Option<usize>,
    /// Close connections with no traffic for this long.
    pub idle_timeout: Option<Duration>,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// How long a closing connection waits for the peer to finish.
    pub close_timeout: Duration,
    /// Listen backlog (capped by the system at `net.core.somaxconn`).
    pub backlog: i32,
    /// Pause before accepting again after running out of descriptors.
    pub accept_backoff: Duration,
    /// Datagrams queued per socket while its send buffer is full.
    pub datagram_queue: usize,
    /// Bind IP sockets with `SO_REUSEPORT` (several loops sharing one address).
    pub reuse_port: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            read_budget: 256 * 1024,
            max_connections: None,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            backlog: 4096,
            accept_backoff: Duration::from_millis(100),
            datagram_queue: 1024,
            reuse_port: false,
        }
    }
}

/// How to open an outgoing connection.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Speak TLS, verifying the server as `server_name`.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Give up if not connected (and, for TLS, handshaken) within this.
    pub timeout: Option<Duration>,
    /// Bind to this local address first (spreads many connections over source IPs).
    pub source: Option<std::net::IpAddr>,
}

impl ConnectOptions {
    /// Plain connection, no timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a connect (and handshake) timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Speaks TLS to a server that must prove it is `name`.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> Self {
        self.tls = Some((config, name));
        self
    }

    /// Binds to a local IP before connecting.
    pub fn source(mut self, ip: std::net::IpAddr) -> Self {
        self.source = Some(ip);
        self
    }
}

/// What kind of stream listener to add.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ListenKind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP with this server configuration.
    Tls(Arc<rustls::ServerConfig>),
    /// Unix stream socket.
    Unix,
}

/// Work requested from inside a callback, done once the callback has returned.
pub(crate) enum Deferred {
    Connect(Endpoint, ConnectOptions, Box<dyn Handler>),
    AddUdp(mio::net::UdpSocket, Box<dyn DatagramHandler>),
}

/// State shared by all callbacks of a loop (kept apart from the slab so a callback can
/// borrow both its connection and this).
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) now: Instant,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    /// Connections and datagram sockets to read again without waiting for an event.
    ready: Vec<ConnId>,
    /// Output of the running callback, sent when it returns (batching small sends).
    pub(crate) out: Vec<u8>,
    /// Slots to free after this batch of events.
    dead: Vec<usize>,
    pub(crate) deferred: Vec<Deferred>,
    pub(crate) stop_request: Option<Duration>,
    next_generation: u32,
    /// True while a UDP receive batch is being handled: replies are gathered in
    /// `dgram_batch` and sent together.
    batching: bool,
    dgram_batch: SendBatch,
    /// When the next "rejecting connections" warning may be logged.
    reject_log: Option<Instant>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deferred::Connect(to, _, _) => write!(f, "Connect({to})"),
            Deferred::AddUdp(sock, _) => write!(f, "AddUdp({:?})", sock.local_addr()),
        }
    }
}

impl Core {
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
    fn next_id(&mut self, key: usize) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        ConnId::new(key, self.next_generation)
    }
}

/// A datagram socket's queue of replies the kernel could not take yet.
#[derive(Debug, Default)]
pub(crate) struct DgramQueue {
    items: VecDeque<Queued>,
    /// Receiving paused until the queue drains.
    paused: bool,
    /// Unix datagram sockets: when to try the queue again (see `flush_dgram_queue`).
    retry_timer: Option<crate::handler::TimerId>,
}

/// One reply waiting in a datagram queue.
#[derive(Debug)]
struct Queued {
    data: Vec<u8>,
    to: PeerAddr,
    /// When it was queued: replies a receiver leaves unread too long are dropped.
    since: Instant,
}

struct ListenerEntry {
    sock: Listener,
    kind: ListenKind,
    factory: Box<dyn FnMut() -> Box<dyn Handler>>,
    generation: u32,
    backing_off: bool,
}

struct ConnEntry {
    conn: Connection,
    handler: Box<dyn Handler>,
}

struct DgramEntry {
    sock: Datagram,
    handler: Box<dyn DatagramHandler>,
    queue: DgramQueue,
    generation: u32,
    closed: bool,
    /// UDP: datagrams have been queueing up (two single reads in a row found one, and no
    /// batch since came back nearly empty), so reads use `recvmmsg`, and the next wake-up
    /// starts with it straight away (see `datagram::dgram_read_udp`).
    deep: bool,
}

enum Entry {
    Listener(ListenerEntry),
    Conn(ConnEntry),
    Dgram(DgramEntry),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { deadline: Instant },
    Stopped,
}

/// Shared between the loop and its [`StopHandle`]s.
#[derive(Debug)]
struct StopShared {
    /// Grace period in milliseconds, or `u64::MAX` for "no request".
    grace_ms: AtomicU64,
    waker: Waker,
}

/// Stops a loop from any thread: cloneable and `Send`.
#[derive(Debug, Clone)]
pub struct StopHandle {
    shared: Arc<StopShared>,
}

impl StopHandle {
    /// Asks the loop to stop: it stops accepting and reading new input, sends what it owes,
    /// closes connections gracefully, and returns from `run` when all are closed or `grace`
    /// has passed (then it closes the rest at once).
    pub fn stop(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1);
        self.shared.grace_ms.store(ms, Ordering::SeqCst);
        if let Err(e) = self.shared.waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
    }
}

/// An address a listener or datagram socket is bound to, as reported by the system.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The id of the listener or socket.
    pub id: ConnId,
    /// The real address (the chosen port when port 0 was asked for).
    pub addr: Endpoint,
}

/// A single-threaded reactor serving stream and datagram sockets through handlers.
///
/// Typical use: [`EventLoop::new`], add listeners, sockets or connections, then
/// [`EventLoop::run`]. Hosts that own their loop call [`EventLoop::run_once`] instead.
pub struct EventLoop {
    poll: Poll,
    events: Events,
    slab: Slab<Entry>,
    core: Core,
    /// One read buffer for all connections: only unsent output is kept per connection, so
    /// an idle connection costs no buffer memory.
    rbuf: Box<[u8]>,
    /// Decrypted TLS input, shared the same way.
    plain: Vec<u8>,
    /// Buffers for receiving UDP datagrams in batches; made with the first UDP socket.
    recv_batch: Option<Box<RecvBatch>>,
    /// The other half of `Core::ready`, swapped in each turn.
    ready_spare: Vec<ConnId>,
    phase: Phase,
    stop: Arc<StopShared>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    signal_grace: Duration,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("entries", &self.slab.len())
            .field("phase", &self.phase)
            .field("stats", &self.core.stats)
            .finish()
    }
}

impl EventLoop {
    /// Creates a loop with its poller and waker.
    pub fn new(mut config: Config) -> io::Result<EventLoop> {
        // Settings that would make the loop spin (a zero read budget never reads) or flap
        // (resuming above the pause mark) are corrected rather than obeyed.
        config.read_budget = config.read_budget.max(1);
        config.low_water = config.low_water.min(config.high_water);
        config.datagram_queue = config.datagram_queue.max(1);
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(1024),
            slab: Slab::new(),
            core: Core {
                config,
                now: Instant::now(),
                timers: Timers::default(),
                stats: Stats::default(),
                // Preallocated so that the first fairness deferral in steady state does not
                // allocate.
                ready: Vec::with_capacity(64),
                out: Vec::new(),
                dead: Vec::with_capacity(64),
                deferred: Vec::new(),
                stop_request: None,
                next_generation: 0,
                batching: false,
                dgram_batch: SendBatch::default(),
                reject_log: None,
            },
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            plain: Vec::new(),
            ready_spare: Vec::with_capacity(64),
            recv_batch: None,
            phase: Phase::Running,
            stop: Arc::new(StopShared {
                grace_ms: AtomicU64::new(u64::MAX),
                waker,
            }),
            signals: None,
            signal_grace: Duration::from_secs(5),
        })
    }

    /// A handle to stop this loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.stop),
        }
    }

    /// SIGINT and SIGTERM start a graceful stop with `grace`; a second signal stops at once.
    /// The signals arrive through the poll loop (a self-pipe), not in a signal handler.
    pub fn handle_signals(&mut self, grace: Duration) -> io::Result<()> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        self.signal_grace = grace;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// True once the loop has stopped.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Binds a stream listener; every accepted connection gets a handler from `factory`.
    pub fn listen(
        &mut self,
        addr: &Endpoint,
        kind: ListenKind,
        factory: impl FnMut() -> Box<dyn Handler> + 'static,
    ) -> Result<Bound, ListenError> {
        self.core.now = Instant::now();
        let opts = self.bind_options();
        let sock = match (addr, &kind) {
            (Endpoint::Inet(a), ListenKind::Tcp | ListenKind::Tls(_)) => net::bind_tcp(*a, opts)?,
            (Endpoint::Unix(name), ListenKind::Unix) => net::bind_unix(name)?,
            (Endpoint::Unix(name), _) => return Err(unix_mismatch(name)),
            (Endpoint::Inet(a), ListenKind::Unix) => {
                return Err(ListenError::Addr(crate::error::AddrError::Invalid {
                    input: a.to_string(),
                    reason: "a Unix listener needs a path or @name".into(),
                }));
            }
        };
        self.add_listener(sock, kind, Box::new(factory))
    }

    fn bind_options(&self) -> BindOptions {
        self.core.bind_options()
    }

    fn add_listener(
        &mut self,
        mut sock: Listener,
        kind: ListenKind,
        factory: Box<dyn FnMut() -> Box<dyn Handler>>,
    ) -> Result<Bound, ListenError> {
        let addr = sock.local_endpoint().map_err(ListenError::Register)?;
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(&mut sock, Token(key), Interest::READABLE)
            .map_err(ListenError::Register)?;
        let id = self.core.next_id(key);
        entry.insert(Entry::Listener(ListenerEntry {
            sock,
            kind,
            factory,
            generation: id.generation,
            backing_off: false,
        }));
        Ok(Bound { id, addr })
    }

    /// Binds a UDP socket served by `handler`.
    pub fn bind_udp(
        &mut self,
        addr: std::net::SocketAddr,
        handler: Box<dyn DatagramHandler>,
    ) -> Result<Bound, ListenError> {
        let sock = net::bind_udp(addr, self.bind_options())?;
        self.add_datagram(Datagram::Udp(sock), handler)
    }

    /// Binds a Unix datagram socket (path or `@abstract`) served by `handler`.
    pub fn bind_unix_datagram(
        &mut self,
        name: &UnixName,
        handler: Box<dyn DatagramHandler>,
    ) -> Result<Bound, ListenError> {
        let sock = Datagram::bind_unix(name)?;
        self.add_datagram(sock, handler)
    }

    /// Adds an already-made Unix datagram socket (for example an autobound client socket).
    pub fn add_unix_datagram(
        &mut self,
        sock: std::os::unix::net::UnixDatagram,
        handler: Box<dyn DatagramHandler>,
    ) -> Result<Bound, ListenError> {
        let sock = Datagram::from_unix(sock).map_err(ListenError::Register)?;
        self.add_datagram(sock, handler)
    }

    fn add_datagram(
        &mut self,
        mut sock: Datagram,
        handler: Box<dyn DatagramHandler>,
    ) -> Result<Bound, ListenError> {
        // The handler's on_ready may set timers: count them from now.
        self.core.now = Instant::now();
        let addr = sock
            .local_endpoint()
            .unwrap_or(Endpoint::Unix(UnixName::Abstract(Vec::new())));
        if sock.is_udp() && self.recv_batch.is_none() {
            self.recv_batch = Some(Box::new(RecvBatch::new()));
        }
        let key = self.slab.vacant_key();
        let id = self.core.next_id(key);
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(ListenError::Register)?;
        self.slab.insert(Entry::Dgram(DgramEntry {
            sock,
            handler,
            queue: DgramQueue::default(),
            generation: id.generation,
            closed: false,
            deep: false,
        }));
        // Let a client send its first datagram.
        if let Some(Entry::Dgram(d)) = self.slab.get_mut(key) {
            call_dgram(d, &mut self.core, key, |h, ctx| h.on_ready(ctx));
        }
        self.run_deferred();
        Ok(Bound { id, addr })
    }

    /// Starts a non-blocking connect; `handler` hears `on_open` when it completes (after
    /// the TLS handshake for TLS) or `on_close` with the reason it failed.
    pub fn connect(
        &mut self,
        to: &Endpoint,
        opts: ConnectOptions,
        handler: Box<dyn Handler>,
    ) -> io::Result<ConnId> {
        // Called between turns, possibly long after the last poll: deadlines (the connect
        // timeout) must count from now, not from the loop's last wake-up.
        self.core.now = Instant::now();
        let stream = Stream::connect(to, opts.source)?;
        let session = match &opts.tls {
            Some((cfg, name)) => Session::Tls(Box::new(
                TlsSession::client(cfg, name.clone()).map_err(io::Error::other)?,
            )),
            None => Session::Plain,
        };
        let key = self.slab.vacant_key();
        let id = self.core.next_id(key);
        let mut conn = Connection::new(
            stream,
            session,
            State::Connecting,
            id.generation,
            self.core.now,
        );
        self.poll.registry().register(
            &mut conn.stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if let Some(t) = opts.timeout {
            let at = crate::timer::later(self.core.now, t);
            arm_timer(&mut self.core, &mut conn, id, Kind::Connect, at);
        }
        self.slab.insert(Entry::Conn(ConnEntry { conn, handler }));
        self.core.stats.connections_open += 1;
        Ok(id)
    }

    /// Stops the loop (see [`StopHandle::stop`]).
    pub fn stop(&mut self, grace: Duration) {
        self.core.now = Instant::now();
        self.begin_stop(grace);
    }

    /// Runs until stopped.
    pub fn run(&mut self) -> io::Result<()> {
        while self.run_once(None)? {}
        Ok(())
    }

    /// Waits for events at most `timeout` (or until the next timer) and handles them.
    /// Returns `false` once the loop has stopped.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.phase == Phase::Stopped {
            return Ok(false);
        }
        self.core.now = Instant::now();
        // Work requested outside a turn (a callback run while adding a socket, say) must
        // not wait for an event that may never come.
        self.run_deferred();
        if let Some(grace) = self.core.stop_request.take() {
            self.begin_stop(grace);
            self.sweep();
            self.check_stopped();
            if self.phase == Phase::Stopped {
                return Ok(false);
            }
        }
        // Read once above: deadlines only need the turn's clock.
        let now = self.core.now;
        let mut wait = timeout;
        if let Some(at) = self.core.timers.next_deadline() {
            let until = at.saturating_duration_since(now);
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        if let Phase::Stopping { deadline } = self.phase {
            let until = deadline.saturating_duration_since(now);
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        if !self.core.ready.is_empty() {
            // Work we left undone on purpose (fairness): only look for new events.
            wait = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            // A signal interrupted the wait: not an error, just look again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.core.now = Instant::now();
        self.dispatch_events();
        self.run_ready();
        self.run_timers();
        self.run_deferred();
        if let Some(grace) = self.core.stop_request.take() {
            self.begin_stop(grace);
        }
        self.sweep();
        self.check_stopped();
        Ok(self.phase != Phase::Stopped)
    }

    fn dispatch_events(&mut self) {
        // Events is borrowed while we dispatch: take it out for the duration.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                WAKER => self.take_stop_request(),
                SIGNALS => self.take_signals(),
                Token(key) => self.dispatch(key, event),
            }
        }
        self.events = events;
    }

    fn dispatch(&mut self, key: usize, event: &Event) {
        let Some(entry) = self.slab.get_mut(key) else {
            return;
        };
        match entry {
            Entry::Listener(_) => {
                if event.is_readable() {
                    self.accept_loop(key);
                }
            }
            Entry::Conn(c) => {
                let readiness = Readiness {
                    readable: event.is_readable(),
                    writable: event.is_writable(),
                    error: event.is_error(),
                    read_closed: event.is_read_closed(),
                };
                conn_ready(
                    c,
                    &mut self.core,
                    &mut self.rbuf,
                    &mut self.plain,
                    key,
                    readiness,
                );
            }
            Entry::Dgram(d) => {
                dgram_ready(
                    d,
                    &mut self.core,
                    &mut self.rbuf,
                    self.recv_batch.as_deref_mut(),
                    key,
                    event.is_readable(),
                    event.is_writable(),
                );
            }
        }
    }

    /// Accepts until the queue is empty (`WouldBlock`): with edge-triggered readiness, one
    /// event may stand for many waiting connections.
    fn accept_loop(&mut self, key: usize) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(Entry::Listener(l)) = self.slab.get_mut(key) else {
                return;
            };
            if l.backing_off || self.phase != Phase::Running {
                return;
            }
            let (stream, peer) = match l.sock.try_accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if net::is_resource_exhaustion(&e) => {
                    // Out of descriptors: the connection stays in the kernel's queue and
                    // accepting again now would fail the same way, spinning the CPU.
                    // Keep serving what we have; try again after a pause.
                    self.core.stats.accept_errors += 1;
                    log::warn!(
                        "accept: {e}; pausing accepts for {:?} while existing connections are served",
                        self.core.config.accept_backoff
                    );
                    l.backing_off = true;
                    let id = ConnId::new(key, l.generation);
                    let at = crate::timer::later(self.core.now, self.core.config.accept_backoff);
                    self.core
                        .timers
                        .add(at, Owner::Listener(id), Kind::AcceptBackoff);
                    return;
                }
                Err(e) => {
                    // The client gave up before we accepted (ECONNABORTED) and the like:
                    // that connection is lost, the listener is fine.
                    self.core.stats.accept_errors += 1;
                    log::debug!("accept: {e}");
                    continue;
                }
            };
            if let Some(max) = self.core.config.max_connections {
                if self.core.stats.connections_open >= max as u64 {
                    // Accept and close at once: left in the kernel's queue the client would
                    // wait, believing it was connected.
                    self.core.stats.rejected += 1;
                    // One line per rejection would let a connect flood stall the loop on a
                    // slow stderr: details at debug, a summary at most once a second.
                    log::debug!("rejecting connection from {peer}: {max} connections already open");
                    if self.core.reject_log.is_none_or(|t| self.core.now >= t) {
                        log::warn!(
                            "rejecting connections: {max} already open ({} rejected so far)",
                            self.core.stats.rejected
                        );
                        self.core.reject_log = Some(self.core.now + Duration::from_secs(1));
                    }
                    drop(stream);
                    continue;
                }
            }
            let session = match &l.kind {
                ListenKind::Tls(cfg) => match TlsSession::server(cfg) {
                    Ok(s) => Session::Tls(Box::new(s)),
                    Err(e) => {
                        log::warn!("cannot start TLS session: {e}");
                        continue;
                    }
                },
                _ => Session::Plain,
            };
            let handler = (l.factory)();
            self.core.stats.accepted += 1;
            self.add_accepted(stream, session, handler, &peer);
        }
        // Fairness: a flood of connects must not keep the loop here while established
        // connections wait. The rest of the queue is taken on the next turn; no new event
        // would come for connections already queued.
        if let Some(Entry::Listener(l)) = self.slab.get(key) {
            self.core.schedule_read(ConnId::new(key, l.generation));
        }
    }

    fn add_accepted(
        &mut self,
        stream: Stream,
        session: Session,
        handler: Box<dyn Handler>,
        peer: &PeerAddr,
    ) {
        let key = self.slab.vacant_key();
        let id = self.core.next_id(key);
        let tls = matches!(session, Session::Tls(_));
        let state = if tls { State::Handshaking } else { State::Open };
        let mut conn = Connection::new(stream, session, state, id.generation, self.core.now);
        // Registered once for both directions; see the module docs.
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register connection from {peer}: {e}");
            return;
        }
        log::debug!("{id} open from {peer}");
        let now = self.core.now;
        if tls {
            let at = crate::timer::later(now, self.core.config.handshake_timeout);
            arm_timer(&mut self.core, &mut conn, id, Kind::Handshake, at);
        }
        if let Some(idle) = self.core.config.idle_timeout {
            let at = crate::timer::later(now, idle);
            arm_timer(&mut self.core, &mut conn, id, Kind::Idle, at);
        }
        self.slab.insert(Entry::Conn(ConnEntry { conn, handler }));
        self.core.stats.connections_open += 1;
        if !tls {
            if let Some(Entry::Conn(c)) = self.slab.get_mut(key) {
                call_handler(c, &mut self.core, key, |h, ctx| h.on_open(ctx));
            }
        }
        // Data sent right after connecting is already queued: registering a socket that is
        // readable produces an event at once, so nothing is missed here.
    }

    fn run_ready(&mut self) {
        // Swap in the spare list: entries scheduled while we work go to the next turn, and
        // both lists keep their capacity (no allocation per turn).
        let mut ready = std::mem::take(&mut self.ready_spare);
        std::mem::swap(&mut ready, &mut self.core.ready);
        for id in &ready {
            let key = id.key as usize;
            match self.slab.get_mut(key) {
                Some(Entry::Conn(c)) if c.conn.generation == id.generation => {
                    conn_ready_again(c, &mut self.core, &mut self.rbuf, &mut self.plain, key);
                }
                Some(Entry::Dgram(d)) if d.generation == id.generation => {
                    let batch = self.recv_batch.as_deref_mut();
                    dgram_ready(d, &mut self.core, &mut self.rbuf, batch, key, true, false);
                }
                Some(Entry::Listener(l)) if l.generation == id.generation => {
                    self.accept_loop(key);
                }
                _ => {}
            }
        }
        ready.clear();
        self.ready_spare = ready;
    }

    fn run_timers(&mut self) {
        // Timers set by these callbacks, even for "now", fire on the next turn (after a
        // poll), so a handler re-arming a zero delay cannot starve every socket.
        let mark = self.core.timers.mark();
        while let Some((timer, owner, kind)) = self.core.timers.pop_due(self.core.now, mark) {
            match owner {
                Owner::Conn(id) => {
                    let key = id.key as usize;
                    let Some(Entry::Conn(c)) = self.slab.get_mut(key) else {
                        continue;
                    };
                    if c.conn.generation != id.generation || c.conn.is_closed() {
                        continue;
                    }
                    conn_timer(c, &mut self.core, key, timer, kind);
                }
                Owner::Dgram(id) => {
                    let key = id.key as usize;
                    if let Some(Entry::Dgram(d)) = self.slab.get_mut(key) {
                        if d.generation == id.generation && !d.closed {
                            if kind == Kind::DgramRetry {
                                dgram_retry(d, &mut self.core, key);
                            } else {
                                call_dgram(d, &mut self.core, key, |h, ctx| h.on_timer(ctx, timer));
                            }
                        }
                    }
                }
                Owner::Listener(id) => {
                    let key = id.key as usize;
                    if let Some(Entry::Listener(l)) = self.slab.get_mut(key) {
                        if l.generation == id.generation {
                            l.backing_off = false;
                            self.accept_loop(key);
                        }
                    }
                }
            }
        }
    }

    fn run_deferred(&mut self) {
        // In the order they were asked for.
        let mut deferred = std::mem::take(&mut self.core.deferred);
        for d in deferred.drain(..) {
            match d {
                Deferred::Connect(to, opts, mut handler) => {
                    if let Err(e) = self.connect(&to, opts, Box::new(NoopHandler)).map(|id| {
                        // Swap the real handler in now that the entry exists.
                        if let Some(Entry::Conn(c)) = self.slab.get_mut(id.key as usize) {
                            std::mem::swap(&mut c.handler, &mut handler);
                        }
                    }) {
                        self.core.stats.connect_failures += 1;
                        let id = ConnId {
                            key: u32::MAX,
                            generation: 0,
                        };
                        let mut ctx = Ctx {
                            conn: None,
                            core: &mut self.core,
                            id,
                        };
                        handler.on_close(&mut ctx, &CloseReason::ConnectFailed(e));
                    }
                }
                Deferred::AddUdp(sock, handler) => {
                    // Bound already (a bind error went to the caller); only registering is
                    // left, which fails only if the poller itself does.
                    if let Err(e) = self.add_datagram(Datagram::Udp(sock), handler) {
                        log::error!("{e}");
                    }
                }
            }
        }
        // Keep the allocation unless callbacks above asked for more work meanwhile.
        if self.core.deferred.is_empty() {
            self.core.deferred = deferred;
        }
    }

    fn take_stop_request(&mut self) {
        let ms = self.stop.grace_ms.swap(u64::MAX, Ordering::SeqCst);
        if ms != u64::MAX {
            self.begin_stop(Duration::from_millis(ms));
        }
    }

    fn take_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let count = signals.pending().count();
        if count == 0 {
            return;
        }
        if matches!(self.phase, Phase::Stopping { .. }) {
            log::warn!("second signal: stopping now");
            self.begin_stop(Duration::ZERO);
        } else {
            log::info!(
                "signal received: shutting down (grace {:?})",
                self.signal_grace
            );
            let grace = self.signal_grace;
            self.begin_stop(grace);
        }
    }

    /// Graceful stop: no new connections, no new input; what was read is answered, then
    /// each connection is half-closed and closed when its peer finishes.
    fn begin_stop(&mut self, grace: Duration) {
        let deadline = crate::timer::later(self.core.now, grace);
        match self.phase {
            Phase::Stopped => return,
            Phase::Stopping { deadline: d } if d <= deadline => return,
            _ => {}
        }
        self.phase = Phase::Stopping { deadline };
        for (key, entry) in self.slab.iter_mut() {
            match entry {
                Entry::Listener(_) => self.core.dead.push(key),
                Entry::Dgram(d) => close_dgram(d, &mut self.core, key),
                Entry::Conn(c) => {
                    if c.conn.is_closed() {
                        continue;
                    }
                    if c.conn.state == State::Open {
                        c.conn.closing = true;
                        if c.conn.write_shut == WriteShut::Open {
                            c.conn.write_shut = WriteShut::Requested;
                        }
                        progress(c, &mut self.core, key);
                    } else {
                        close_now(c, &mut self.core, key, CloseReason::Shutdown);
                    }
                }
            }
        }
        if grace.is_zero() {
            self.force_close_all();
        }
    }

    fn force_close_all(&mut self) {
        for (key, entry) in self.slab.iter_mut() {
            if let Entry::Conn(c) = entry {
                close_now(c, &mut self.core, key, CloseReason::Shutdown);
            }
        }
    }

    fn check_stopped(&mut self) {
        if let Phase::Stopping { deadline } = self.phase {
            if self.core.now >= deadline {
                self.force_close_all();
                self.sweep();
            }
            if self.slab.is_empty() {
                self.phase = Phase::Stopped;
            }
        }
    }

    /// Frees the slots of everything closed during this batch. Only now: a slot freed
    /// earlier could be reused by a new connection and receive a stale event.
    fn sweep(&mut self) {
        for key in self.core.dead.drain(..) {
            if let Some(entry) = self.slab.try_remove(key) {
                match entry {
                    // Rare: deregister explicitly, tidy for embedders watching the poller.
                    Entry::Listener(mut l) => {
                        let _ = self.poll.registry().deregister(&mut l.sock);
                    }
                    Entry::Dgram(mut d) => {
                        let _ = self.poll.registry().deregister(&mut d.sock);
                    }
                    // Dropping closes the descriptor, and closing removes it from epoll
                    // (we never duplicate descriptors): one system call fewer per
                    // connection than deregistering first.
                    Entry::Conn(_) => {}
                }
            }
        }
    }

    /// Number of live entries (listeners, sockets, connections).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

fn unix_mismatch(name: &UnixName) -> ListenError {
    ListenError::Addr(crate::error::AddrError::Invalid {
        input: name.to_string(),
        reason: "TCP and TLS listeners need host:port".into(),
    })
}
