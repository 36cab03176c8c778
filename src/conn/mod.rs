//! One stream connection (TCP, TLS or Unix) as a state machine that does no I/O.
//!
//! Teaches: a connection's whole life — connect, TLS handshake, data both ways,
//! half-close in either direction, graceful close with lingering, abort, deadlines — is a
//! set of rules about *bytes and events*, not about sockets. Written without system calls
//! and without reading the clock ("sans-IO"), the rules can be tested byte by byte through
//! an in-memory pipe (`tests::Pair`), while the reactor's driver (`event_loop::stream`)
//! does the system calls and keeps its shortcuts.
//!
//! # The call order
//!
//! A driver owns the socket and one [`Connection`], and repeats:
//!
//! 1. **Inputs** (`handle_*`), as the socket reports them: [`Connection::handle_connected`]
//!    or [`Connection::handle_connect_failed`] once, then any number of
//!    [`Connection::handle_input`] (bytes read), [`Connection::handle_eof`] (read returned
//!    0), [`Connection::handle_writable`], [`Connection::handle_sent`] (how much the kernel
//!    took of [`Connection::poll_transmit`], and whether it would block),
//!    [`Connection::handle_io_error`] and [`Connection::handle_timeout`]. The application's
//!    requests are inputs too: [`Connection::queue`], [`Connection::queue_shared`] and
//!    [`Connection::unshare`], [`Connection::discard_unsent`],
//!    [`Connection::shutdown_write`], [`Connection::close`], [`Connection::abort`],
//!    [`Connection::pause_reading`], [`Connection::resume_reading`], and the loop's
//!    [`Connection::stop`]. So are the driver's notes on its own reading and writing:
//!    [`Connection::handle_read_stopped`] (it stopped before `WouldBlock`),
//!    [`Connection::handle_read_drained`] (the queue is empty) and
//!    [`Connection::handle_output_deferred`] (it holds the output back for a while).
//! 2. **Outputs** (`poll_*`), after every input, until they have nothing to say:
//!    [`Connection::poll_event`] (tell the application: open, data, drained, peer closed,
//!    closed), [`Connection::poll_transmit`] (bytes to write), [`Connection::poll_shutdown`]
//!    (send FIN now), [`Connection::poll_read_again`] (read without waiting for readiness),
//!    [`Connection::poll_timeout`] (when to call `handle_timeout` next; with
//!    [`Connection::poll_timeout_changed`], whether it changed since last asked), and once
//!    closed [`Connection::teardown`] (how to release the socket) and
//!    [`Connection::discarded_input`] (what was read and dropped while closing).
//!
//! [`Connection::wants_read`] says whether to read at all right now.
//!
//! Application output always goes through [`Connection::queue`] (TLS stages the plaintext
//! and encrypts it when it is next transmitted, so many small sends become few records),
//! or, sent from outside the connection's own callback, [`Connection::queue_shared`]
//! (bytes many connections are sent in the same turn are kept once, in the loop's shared
//! output, and the connection holds a range of them until [`Connection::unshare`] or the
//! write), and leaves through [`Connection::poll_transmit`]: one rule for every driver. *When* to
//! transmit is the driver's choice: the reactor writes a connection's own replies as soon
//! as its callback returns, and what other callbacks sent it once per loop turn, so that
//! output coalesces however sends to different connections interleave.
//!
//! # States
//!
//! ```text
//!  accepted ──(behind a load balancer)──► Preamble ──PROXY header──┐
//!     │                                                            ▼
//!     ├──TLS─────────────────────────────────────────────► Handshaking ──done──► Open
//!     └──plain───────────────────────────────────────────────────────────────► Open
//!  Connecting ──connected──► Handshaking (TLS) or Open (plain)
//!
//!  Open ──EOF──► PeerShut ──shutdown_write or close──► Closing { peer_eof: true }
//!  Open ──shutdown_write──► WriteShut ──EOF before our FIN──► Closing { peer_eof: true }
//!                              ├──EOF after our FIN──► Closed
//!                              └──close after our FIN──► Lingering
//!  Open, WriteShut ──close (or idle)──► Closing { peer_eof: false }
//!  Closing ──FIN sent──► Closed (peer's EOF seen) or Lingering ──EOF──► Closed
//!
//!  Preamble, Connecting, Handshaking ──failure, timeout, bad header──► Closed
//!  any state ──abort, I/O error, close or idle deadline──► Closed
//! ```

pub(crate) mod proxy;
mod reason;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use reason::CloseReason;

use crate::config::Config;
use crate::error::ConnError;
use crate::sendbuf::{BufPool, SendBuf, Span};
use crate::timer::later;
use crate::tls::TlsSession;
pub(crate) use proxy::ProxyHeader;

/// The loop-wide settings a connection obeys. Passed in rather than copied into every
/// connection: an idle connection should cost as few bytes as possible.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
}

impl Limits {
    pub(crate) fn new(c: &Config) -> Limits {
        Limits {
            high_water: c.high_water,
            low_water: c.low_water.min(c.high_water),
            idle_timeout: c.idle_timeout,
            handshake_timeout: c.handshake_timeout,
            close_timeout: c.close_timeout,
        }
    }
}

/// Where a connection is in its life. Each state says what both directions may still do,
/// so that no combination of flags can say, for example, "closing but still sending".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Accepted behind a load balancer: waiting for its PROXY protocol header, which must
    /// come before anything else (before the TLS ClientHello too).
    Preamble,
    /// Non-blocking connect in flight: it completes on writability.
    Connecting,
    /// TLS handshake in flight: no application data yet.
    Handshaking,
    /// Application data flows both ways.
    Open,
    /// The peer sent EOF (TCP FIN or TLS `close_notify`): it sends no more, but may still
    /// read, so we may still send. This is half-close, not "close now".
    PeerShut,
    /// We said we send no more ([`Connection::shutdown_write`]): the FIN goes after
    /// everything owed; reading goes on.
    WriteShut {
        /// The FIN (and for TLS `close_notify` before it) has been handed to the kernel.
        fin_sent: bool,
    },
    /// Graceful close: everything owed goes out, then the FIN. Input is read and dropped.
    Closing {
        /// The peer's EOF has arrived already: the FIN ends the connection.
        peer_eof: bool,
    },
    /// Our FIN is out; waiting (bounded) for the peer's EOF, reading and dropping input,
    /// because closing with unread input makes the kernel reset the connection and throw
    /// away output the peer has not received yet.
    Lingering,
    /// Gone; the driver releases the socket as [`Connection::teardown`] says.
    Closed,
}

/// Bytes between the wire and the application.
#[derive(Debug)]
pub(crate) enum Session {
    /// Plaintext passes straight through.
    Plain,
    /// TLS (boxed: a rustls connection is large and plain connections should stay small).
    Tls(Box<TlsSession>),
}

/// What the application should be told, in the order [`Connection::poll_event`] yields.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// The PROXY header named the real client (or said there is none to name).
    Proxied(ProxyHeader),
    /// Ready for application data (after the TLS handshake for TLS).
    Open,
    /// Application data: the slice [`Connection::handle_input`] returned, carried here so
    /// that the bytes travel with the event that announces them.
    Data(&'a [u8]),
    /// Everything owed was handed to the kernel after the socket had been full.
    Drained,
    /// The peer will send no more.
    PeerClosed,
    /// The connection is gone; nothing follows.
    Closed(CloseReason),
}

const EV_PROXIED: u8 = 1;
const EV_OPEN: u8 = 2;
const EV_DATA: u8 = 4;
const EV_DRAINED: u8 = 8;
const EV_PEER_CLOSED: u8 = 16;
const EV_CLOSED: u8 = 32;

/// What an event needs to carry, kept until `poll_event` takes it. Boxed: most
/// connections never carry either, and inline they would make every connection larger.
#[derive(Debug)]
enum Stash {
    /// `State::Preamble`: the PROXY header's first bytes, when it comes in pieces (kept
    /// here, not in the session, so that `Session` stays one word: 10,000 idle
    /// connections should cost little).
    Preamble(Vec<u8>),
    Proxied(ProxyHeader),
    /// The close reason until `poll_event` takes it, and the input discarded meanwhile.
    Closed(CloseReason, u64),
    /// Bytes of input read and dropped while closing (never handed to the application),
    /// for the driver's log line; kept after the close event too.
    Discarded(u64),
}

/// How the driver releases a closed connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Teardown {
    /// Just close it.
    Drop,
    /// Try once to write what is queued (a TLS alert telling the peer why), then close.
    Flush,
    /// Close with a reset (`SO_LINGER` 0): output we owed is being thrown away, and the
    /// peer must not mistake the end for a clean one.
    Reset,
}

/// One stream connection's state machine. See the module docs for the call order.
#[derive(Debug)]
pub(crate) struct Connection {
    state: State,
    session: Session,
    sendbuf: SendBuf,
    /// The last time a byte moved in either direction (for the idle timeout).
    last_active: Instant,
    /// The deadline of the current phase: connect (Connecting), handshake (Handshaking),
    /// close (Closing, Lingering).
    phase_deadline: Option<Instant>,
    /// When to look at the idle clock next. Traffic moves the idle deadline on every
    /// message; re-arming a timer each time would cost more than looking late and finding
    /// that the connection was busy after all.
    idle_check: Option<Instant>,
    /// The PROXY header's first pieces (while in Preamble), then the header (once read)
    /// or the close reason (once closed), until `poll_event` takes it.
    stash: Option<Box<Stash>>,
    /// The state the connection was in when it closed (for the loop's statistics).
    closed_from: State,
    teardown: Teardown,
    /// Pending `EV_*` events.
    events: u8,
    /// Yes/no facts, one bit each (see [`Flags`]).
    flags: Flags,
    /// This turn's output, when all of it is shared with other connections
    /// ([`crate::sendbuf::Shared`]): then `sendbuf` is empty, and the span goes out first.
    shared: Span,
    /// Tell the application (`Drained`) when the send buffer empties: a write blocked,
    /// the driver held output back, or the application saw output pending (a `Cell`: it
    /// is armed by a query, [`Connection::observe_pending`]).
    drain_pending: Cell<bool>,
}

/// Eight yes/no facts about a connection in one byte: every byte of a connection counts
/// (10,000 idle ones must cost under 2 MiB), and this makes room for [`Connection`]'s
/// shared-output span.
#[derive(Debug, Clone, Copy)]
struct Flags(u8);

impl Flags {
    /// Queued bytes reached the kernel since the close deadline was last set: the peer is
    /// reading what we owe, only slowly.
    const SENT_SINCE_CHECK: u8 = 1 << 0;
    /// Reading paused by the application.
    const USER_PAUSED: u8 = 1 << 1;
    /// Reading paused because too much output is owed (backpressure).
    const BP_PAUSED: u8 = 1 << 2;
    /// We stopped reading before the socket said `WouldBlock`. Readiness is
    /// edge-triggered: no new event comes for data already waiting, so whoever resumes
    /// reading must go back for it (see [`Connection::poll_read_again`]).
    const MAYBE_READABLE: u8 = 1 << 3;
    /// The kernel's send buffer was full at the last write: wait for writability.
    const WRITE_BLOCKED: u8 = 1 << 4;
    /// `poll_timeout` changed since the driver last asked.
    const DEADLINE_DIRTY: u8 = 1 << 5;
    /// The loop pauses reading while too much is owed (see
    /// [`Connection::set_backpressure`]).
    const BACKPRESSURE: u8 = 1 << 6;
    /// The close began because the connection was idle: however it ends, that is why.
    const IDLE_CLOSE: u8 = 1 << 7;

    fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }

    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.0 |= f;
        } else {
            self.0 &= !f;
        }
    }

    /// Whether `f` was set; clears it.
    fn take(&mut self, f: u8) -> bool {
        let was = self.has(f);
        self.set(f, false);
        was
    }
}

impl Connection {
    /// A connection just accepted from a listener: open at once (plain), or waiting for
    /// the client's TLS handshake — or, behind a load balancer (`proxy`), for its PROXY
    /// header first, within the handshake timeout.
    pub(crate) fn accepted(
        session: Session,
        now: Instant,
        limits: &Limits,
        proxy: bool,
    ) -> Connection {
        let mut c = Connection::new(session, State::Open, now);
        if proxy {
            // The session waits: nothing reaches it before the header is read.
            c.state = State::Preamble;
            c.set_phase_deadline(Some(later(now, limits.handshake_timeout)));
        } else {
            c.begin(now, limits);
        }
        c.set_idle_check(limits.idle_timeout.map(|d| later(now, d)));
        c
    }

    /// An accepted connection's life begins: open at once (plain), or waiting for the
    /// client's TLS handshake.
    fn begin(&mut self, now: Instant, limits: &Limits) {
        if self.is_tls() {
            self.state = State::Handshaking;
            // Behind a load balancer the handshake timeout already runs since the accept
            // (for the PROXY header): the header and the handshake share one deadline, or
            // a peer could stretch the preamble to twice the timeout.
            let hs = later(now, limits.handshake_timeout);
            self.set_phase_deadline(Some(self.phase_deadline.map_or(hs, |d| d.min(hs))));
        } else {
            self.become_open();
        }
    }

    /// Reads the PROXY header from the connection's first bytes; what follows it goes on
    /// to the real session.
    fn handle_preamble<'a>(
        &mut self,
        now: Instant,
        wire: &'a [u8],
        plain: &'a mut Vec<u8>,
        limits: &Limits,
    ) -> &'a [u8] {
        // Usually the whole header comes in one read: parse it in place.
        let pieces = match self.stash.as_deref_mut() {
            Some(Stash::Preamble(buf)) => Some(buf),
            _ => None,
        };
        let before = pieces.as_ref().map_or(0, |b| b.len());
        let parsed = match pieces {
            None => proxy::parse(wire),
            Some(buf) => {
                buf.extend_from_slice(wire);
                proxy::parse(buf)
            }
        };
        match parsed {
            Ok(None) => {
                if before == 0 {
                    self.stash = Some(Box::new(Stash::Preamble(wire.to_vec())));
                }
                &[]
            }
            Ok(Some((header, len))) => {
                self.stash = Some(Box::new(Stash::Proxied(header)));
                self.events |= EV_PROXIED;
                self.begin(now, limits);
                // The header never reaches the application; what came after it does.
                // `len` counts from the first buffered byte, and the `before` bytes held
                // no whole header, so `len > before`: the header ends inside `wire`.
                let rest = &wire[len - before..];
                if rest.is_empty() {
                    &[]
                } else {
                    self.handle_input(now, rest, plain, limits)
                }
            }
            Err(e) => {
                self.finish(CloseReason::BadProxyHeader(e.to_string()), Teardown::Drop);
                &[]
            }
        }
    }

    /// A connection whose non-blocking connect is in flight. `timeout` bounds the connect
    /// and, for TLS, the handshake after it.
    pub(crate) fn connecting(
        session: Session,
        now: Instant,
        timeout: Option<Duration>,
    ) -> Connection {
        let mut c = Connection::new(session, State::Connecting, now);
        c.set_phase_deadline(timeout.map(|t| later(now, t)));
        c
    }

    fn new(session: Session, state: State, now: Instant) -> Connection {
        Connection {
            state,
            session,
            sendbuf: SendBuf::new(),
            last_active: now,
            phase_deadline: None,
            idle_check: None,
            stash: None,
            closed_from: state,
            teardown: Teardown::Drop,
            events: 0,
            flags: Flags(Flags::BACKPRESSURE),
            shared: Span::default(),
            drain_pending: Cell::new(false),
        }
    }

    // ----- inputs from the socket -----

    /// The non-blocking connect succeeded (the driver checked `SO_ERROR` and
    /// `getpeername`). A TLS client speaks first: its ClientHello is queued now.
    pub(crate) fn handle_connected(&mut self, now: Instant, limits: &Limits) {
        if self.state != State::Connecting {
            return;
        }
        self.last_active = now;
        self.set_idle_check(limits.idle_timeout.map(|d| later(now, d)));
        match &mut self.session {
            Session::Plain => {
                self.become_open();
            }
            Session::Tls(tls) => {
                self.state = State::Handshaking;
                tls.poll_output(&mut self.sendbuf);
                // The connect timeout, if any, still bounds the handshake; so does the
                // loop's handshake timeout, so that a server that never answers cannot
                // hold the connection forever.
                let hs = later(now, limits.handshake_timeout);
                self.set_phase_deadline(Some(self.phase_deadline.map_or(hs, |d| d.min(hs))));
            }
        }
    }

    /// The non-blocking connect failed.
    pub(crate) fn handle_connect_failed(&mut self, e: std::io::Error) {
        self.finish(CloseReason::ConnectFailed(e), Teardown::Drop);
    }

    /// Bytes read from the socket. Returns the application data they carry — `wire`
    /// itself for a plain connection, the decrypted bytes (in `plain`) for TLS — which the
    /// driver hands over when [`Event::Data`] comes out of [`Connection::poll_event`].
    pub(crate) fn handle_input<'a>(
        &mut self,
        now: Instant,
        wire: &'a [u8],
        plain: &'a mut Vec<u8>,
        limits: &Limits,
    ) -> &'a [u8] {
        self.last_active = now;
        let dropping = matches!(
            self.state,
            State::Closing { peer_eof: false } | State::Lingering
        );
        match self.state {
            State::Preamble => return self.handle_preamble(now, wire, plain, limits),
            State::Handshaking | State::Open | State::WriteShut { .. } => {}
            // Closing: read and drop. TLS still decrypts, only to notice the peer's
            // close_notify, which many peers send instead of a TCP FIN.
            _ if dropping => {}
            // Not reading in any other state: nothing to do with stray bytes.
            _ => return &[],
        }
        let Session::Tls(tls) = &mut self.session else {
            if dropping {
                self.note_discarded(wire.len());
                return &[];
            }
            self.events |= EV_DATA;
            return wire;
        };
        plain.clear();
        let was_handshaking = tls.is_handshaking();
        let result = tls.handle_ciphertext(wire, plain);
        // Handshake replies, session tickets, alerts: the session may need to write when
        // the application has nothing to say.
        tls.poll_output(&mut self.sendbuf);
        let handshake_done = was_handshaking && !tls.is_handshaking();
        let peer_closed = tls.is_peer_closed();
        if let Err(e) = result {
            // The alert is queued: the driver tries once to deliver it, so the peer learns
            // why.
            self.finish(CloseReason::Tls(e), Teardown::Flush);
            return &[];
        }
        if handshake_done {
            self.become_open();
        }
        self.update_backpressure(limits);
        let data: &'a [u8] = plain;
        if !data.is_empty() && !dropping {
            self.events |= EV_DATA;
        }
        if peer_closed {
            // Seen again on every later read (rustls keeps saying so): `handle_eof` is a
            // no-op once the state has moved past the EOF.
            self.handle_eof(now);
        }
        if dropping {
            self.note_discarded(data.len());
            return &[];
        }
        data
    }

    /// Counts input dropped while closing: a peer that kept sending after we stopped
    /// echoing should be told in the log how much it lost, not see a clean end only.
    fn note_discarded(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self.stash.as_deref_mut() {
            Some(Stash::Discarded(total)) => *total += n as u64,
            None => self.stash = Some(Box::new(Stash::Discarded(n as u64))),
            // A PROXY header not yet reported: rare enough to leave uncounted.
            Some(_) => {}
        }
    }

    /// The peer will send no more: read returned 0, or TLS `close_notify` arrived.
    pub(crate) fn handle_eof(&mut self, now: Instant) {
        self.last_active = now;
        self.flags.set(Flags::MAYBE_READABLE, false);
        match self.state {
            State::Preamble => self.finish(
                CloseReason::BadProxyHeader(
                    "the connection ended before its PROXY protocol header did".into(),
                ),
                Teardown::Drop,
            ),
            State::Handshaking => self.finish(
                CloseReason::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peer closed during the handshake",
                )),
                Teardown::Drop,
            ),
            State::Open => {
                self.state = State::PeerShut;
                self.events |= EV_PEER_CLOSED;
            }
            State::WriteShut { fin_sent: false } => {
                self.state = State::Closing { peer_eof: true };
                self.events |= EV_PEER_CLOSED;
            }
            State::WriteShut { fin_sent: true } => {
                // Both directions are done: the application still hears of the peer's
                // EOF, then of the end.
                self.events |= EV_PEER_CLOSED;
                self.finish(CloseReason::Done, Teardown::Drop);
            }
            State::Closing { peer_eof: false } => self.state = State::Closing { peer_eof: true },
            State::Lingering => self.finish(CloseReason::Done, Teardown::Drop),
            State::Connecting | State::PeerShut | State::Closing { .. } | State::Closed => {}
        }
    }

    /// The socket reported writability.
    pub(crate) fn handle_writable(&mut self) {
        self.flags.set(Flags::WRITE_BLOCKED, false);
    }

    /// The kernel took `n` bytes of [`Connection::poll_transmit`]; `blocked` if it would
    /// take no more now (a partial send: the rest stays in the send buffer).
    /// A plain connection's emptied buffer goes back to `pool` for the next connection
    /// with output, so that a connection between messages holds no buffer of its own.
    pub(crate) fn handle_sent(
        &mut self,
        now: Instant,
        n: usize,
        blocked: bool,
        limits: &Limits,
        pool: &mut BufPool,
    ) {
        if self.shared.is_empty() {
            self.sendbuf.consume(n);
            if self.sendbuf.is_empty() && matches!(self.session, Session::Plain) {
                pool.give(self.sendbuf.take_buffer());
            }
        } else {
            // The span went first (the send buffer is empty while there is one). Spans
            // last one turn: what the kernel did not take is copied to our own buffer.
            self.shared.start += n.min(self.shared.len()) as u32;
            self.unshare(pool);
        }
        self.note_sent(now, n, blocked);
        // Progress for the close deadline counts only after the instant the deadline was
        // set: the write that follows a close at once (the output of the callback that
        // closed) says nothing about whether a stuck peer reads.
        let after_set = self
            .phase_deadline
            .is_some_and(|d| later(now, limits.close_timeout) > d);
        if n > 0 && after_set {
            self.flags.set(Flags::SENT_SINCE_CHECK, true);
        }
        if !blocked && self.pending_output() == 0 && self.drain_pending.get() {
            self.drain_pending.set(false);
            if self.has_opened() {
                self.events |= EV_DRAINED;
            }
        }
        self.update_backpressure(limits);
    }

    /// Whether the driver may now echo input without a copy (zero-copy echo,
    /// `net::splice`), for a connection whose handler is a plain echo: only a plain
    /// stream, open both ways, owing nothing — whatever is owed must go out first, and
    /// bytes moved socket to socket pass no TLS session and no PROXY preamble.
    pub(crate) fn may_splice(&self) -> bool {
        self.state == State::Open
            && matches!(self.session, Session::Plain)
            && self.pending_output() == 0
    }

    /// The driver took `n` bytes from the socket to echo them without a copy (zero-copy
    /// echo, `net::splice`): traffic, for the idle clock. They never pass through here:
    /// they go out in the same call, or what the socket cannot take is queued as output.
    pub(crate) fn handle_spliced(&mut self, now: Instant, n: usize) {
        if n > 0 {
            self.last_active = now;
        }
    }

    fn note_sent(&mut self, now: Instant, n: usize, blocked: bool) {
        if n > 0 {
            self.last_active = now;
        }
        if blocked {
            self.flags.set(Flags::WRITE_BLOCKED, true);
            self.drain_pending.set(true);
        }
    }

    /// The driver holds the queued output back for a while (the reactor writes what
    /// other callbacks sent once per turn): like a full socket, that is a wait the
    /// application can observe in `pending_output`, so it hears `Drained` once the
    /// output has gone — a producer that paused on `pending_output` is never left waiting.
    pub(crate) fn handle_output_deferred(&mut self) {
        self.drain_pending.set(true);
    }

    /// A read, write or shutdown failed (a reset from the peer, a broken pipe...).
    pub(crate) fn handle_io_error(&mut self, e: std::io::Error) {
        self.finish(CloseReason::Io(e), Teardown::Drop);
    }

    /// A deadline from [`Connection::poll_timeout`] may have passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant, limits: &Limits) {
        if self.phase_deadline.is_some_and(|at| at <= now) {
            self.set_phase_deadline(None);
            match self.state {
                State::Preamble => self.finish(
                    CloseReason::BadProxyHeader(
                        "no PROXY protocol header within the handshake timeout".into(),
                    ),
                    Teardown::Drop,
                ),
                State::Connecting => self.finish(CloseReason::ConnectTimeout, Teardown::Drop),
                State::Handshaking => self.finish(CloseReason::HandshakeTimeout, Teardown::Drop),
                State::Closing { .. } if self.flags.has(Flags::SENT_SINCE_CHECK) => {
                    // The peer is reading what we owe, only slowly: give it more time.
                    self.flags.set(Flags::SENT_SINCE_CHECK, false);
                    self.set_phase_deadline(Some(later(now, limits.close_timeout)));
                }
                State::Closing { .. } | State::Lingering => {
                    let teardown = self.reset_if_owed();
                    self.finish(CloseReason::CloseTimeout, teardown);
                }
                _ => {}
            }
        }
        if self.idle_check.is_some_and(|at| at <= now) {
            self.set_idle_check(None);
            let Some(idle) = limits.idle_timeout else {
                return;
            };
            let due = later(self.last_active, idle);
            if due > now {
                // Traffic since: look again when it could next expire.
                self.set_idle_check(Some(due));
                return;
            }
            match self.state {
                State::Open | State::PeerShut | State::WriteShut { .. } => {
                    // Begin a graceful close; if even that makes no progress for another
                    // idle period, the connection is closed outright. Either way the
                    // reason stays the idle timeout, even if the peer then finishes cleanly.
                    self.flags.set(Flags::IDLE_CLOSE, true);
                    let _ = self.close(now, limits);
                    self.set_idle_check(Some(later(now, idle)));
                }
                State::Closing { .. } | State::Lingering => {
                    let teardown = self.reset_if_owed();
                    self.finish(CloseReason::IdleTimeout, teardown);
                }
                State::Handshaking | State::Preamble => {
                    self.finish(CloseReason::IdleTimeout, Teardown::Drop)
                }
                State::Connecting | State::Closed => {}
            }
        }
    }

    /// The driver stopped reading before `WouldBlock` (a pause or its fairness budget).
    pub(crate) fn handle_read_stopped(&mut self) {
        self.flags.set(Flags::MAYBE_READABLE, true);
    }

    /// The driver knows the receive queue is empty (`WouldBlock`, or a short read).
    pub(crate) fn handle_read_drained(&mut self) {
        self.flags.set(Flags::MAYBE_READABLE, false);
    }

    // ----- inputs from the application -----

    /// Whether application output may be accepted now.
    pub(crate) fn can_send(&self) -> Result<(), ConnError> {
        match self.state {
            State::Open | State::PeerShut => Ok(()),
            State::Preamble | State::Connecting | State::Handshaking => Err(ConnError::NotOpen),
            State::WriteShut { .. } | State::Closing { .. } | State::Lingering => {
                Err(ConnError::WriteShut)
            }
            State::Closed => Err(ConnError::Gone),
        }
    }

    /// Queues accepted application output, after everything queued before it. A plain
    /// connection with no buffer borrows one from `pool`; TLS stages the plaintext and
    /// encrypts all of it at the next [`Connection::poll_transmit`], so the sends of one
    /// turn become few records.
    pub(crate) fn queue(&mut self, data: &[u8], limits: &Limits, pool: &mut BufPool) {
        if data.is_empty() || matches!(self.state, State::Closed | State::Preamble) {
            // Nothing is accepted before the PROXY header (`can_send` says NotOpen).
            return;
        }
        match &mut self.session {
            Session::Plain => {
                // In order: a span this turn holds goes before these bytes.
                self.unshare(pool);
                if self.sendbuf.capacity() == 0 {
                    self.sendbuf.adopt(pool.take());
                }
                self.sendbuf.push(data);
            }
            Session::Tls(tls) => tls.stage(data),
        }
        self.update_backpressure(limits);
    }

    /// [`Connection::queue`] for output that other connections may be sent too in this
    /// turn (fan-out): kept once in the turn's shared output when this connection owes
    /// nothing else (see [`crate::sendbuf::Shared`]), else copied as by `queue`. The
    /// driver writes the connection before the shared output is reset at the turn's end.
    #[inline]
    pub(crate) fn queue_shared(&mut self, data: &[u8], limits: &Limits, pool: &mut BufPool) {
        let shareable = matches!(self.session, Session::Plain)
            && self.sendbuf.is_empty()
            && !self.flags.has(Flags::WRITE_BLOCKED)
            && !data.is_empty()
            && !matches!(self.state, State::Closed | State::Preamble);
        if shareable {
            if let Some(piece) = pool.shared.place(data, self.shared) {
                let joined = if self.shared.is_empty() {
                    self.shared = piece;
                    true
                } else if self.shared.end == piece.start {
                    // The pieces follow each other: one span, one write.
                    self.shared.end = piece.end;
                    true
                } else {
                    false
                };
                if joined {
                    self.update_backpressure(limits);
                    return;
                }
            }
        }
        self.queue(data, limits, pool);
    }

    /// Whether the connection holds a span of the turn's shared output.
    pub(crate) fn holds_span(&self) -> bool {
        !self.shared.is_empty()
    }

    /// Copies this turn's span, if any, into the connection's own buffer: it is to be
    /// followed by bytes that are not shared, or it must outlive the turn.
    #[inline]
    pub(crate) fn unshare(&mut self, pool: &mut BufPool) {
        // The common case (echo: a connection's own replies are never shared) costs one
        // comparison where it is called.
        if !self.shared.is_empty() {
            self.copy_span_out(pool);
        }
    }

    #[cold]
    fn copy_span_out(&mut self, pool: &mut BufPool) {
        if self.sendbuf.capacity() == 0 {
            self.sendbuf.adopt(pool.take());
        }
        self.sendbuf.push(pool.shared.get(self.shared));
        self.shared = Span::default();
    }

    /// Forgets output not yet handed to the kernel (a last message is to replace it).
    /// TLS keeps records already made: cutting one would break the stream.
    pub(crate) fn discard_unsent(&mut self) {
        match &mut self.session {
            Session::Plain => {
                self.shared = Span::default();
                self.sendbuf.consume(self.sendbuf.len());
            }
            Session::Tls(tls) => tls.discard_staged(),
        }
    }

    /// Half-close: after everything queued, tell the peer we send no more (TLS
    /// `close_notify`, then TCP FIN). Reading goes on. Calling it again changes nothing.
    pub(crate) fn shutdown_write(&mut self) -> Result<(), ConnError> {
        match self.state {
            State::Open => self.state = State::WriteShut { fin_sent: false },
            State::PeerShut => self.state = State::Closing { peer_eof: true },
            State::Preamble | State::Connecting | State::Handshaking => {
                return Err(ConnError::NotOpen);
            }
            State::Closed => return Err(ConnError::Gone),
            State::WriteShut { .. } | State::Closing { .. } | State::Lingering => {}
        }
        Ok(())
    }

    /// Graceful close: everything owed goes out, then the FIN, then we wait (bounded by
    /// the close timeout, counted from the last progress) for the peer's EOF, reading and
    /// dropping its input. The application hears no more data or EOF (`Drained` may still
    /// come as the output drains), then `Closed`. A connection that is not open yet owes
    /// nothing: it closes at once. Calling it again changes nothing; after a half-close
    /// both ways, which has no deadline, it sets the close timeout.
    pub(crate) fn close(&mut self, now: Instant, limits: &Limits) -> Result<(), ConnError> {
        self.state = match self.state {
            State::Open | State::WriteShut { fin_sent: false } => {
                State::Closing { peer_eof: false }
            }
            State::PeerShut => State::Closing { peer_eof: true },
            State::WriteShut { fin_sent: true } => State::Lingering,
            State::Preamble | State::Connecting | State::Handshaking => {
                self.finish(CloseReason::Aborted, Teardown::Drop);
                return Ok(());
            }
            State::Closing { .. } | State::Lingering => {
                // Reached by a half-close both ways (ours, and the peer's EOF), which has
                // no deadline of its own: a peer that never reads would hold the
                // connection and its buffer forever. Closing bounds it from now.
                if self.phase_deadline.is_none() {
                    self.flags.set(Flags::SENT_SINCE_CHECK, false);
                    self.set_phase_deadline(Some(later(now, limits.close_timeout)));
                }
                return Ok(());
            }
            State::Closed => return Err(ConnError::Gone),
        };
        self.events &= !(EV_DATA | EV_PEER_CLOSED);
        self.flags.set(Flags::SENT_SINCE_CHECK, false);
        self.set_phase_deadline(Some(later(now, limits.close_timeout)));
        Ok(())
    }

    /// Closes at once, dropping anything unsent; a TCP peer gets a reset.
    pub(crate) fn abort(&mut self) -> Result<(), ConnError> {
        if self.state == State::Closed {
            return Err(ConnError::Gone);
        }
        self.finish(CloseReason::Aborted, Teardown::Reset);
        Ok(())
    }

    /// Stops reading: the peer's data waits in the kernel, and TCP flow control
    /// eventually stops the peer.
    pub(crate) fn pause_reading(&mut self) -> Result<(), ConnError> {
        self.check_alive()?;
        self.flags.set(Flags::USER_PAUSED, true);
        Ok(())
    }

    /// Reading resumes; data that arrived meanwhile is read without waiting for an event
    /// (see [`Connection::poll_read_again`]).
    pub(crate) fn resume_reading(&mut self) -> Result<(), ConnError> {
        self.check_alive()?;
        self.flags.set(Flags::USER_PAUSED, false);
        Ok(())
    }

    /// Whether reading pauses while more than the high-water mark is owed (on by default).
    /// Right for a protocol whose output answers its input (echo, request/response);
    /// wrong for a relay, whose output comes from another connection: there it couples
    /// two independent directions and can deadlock them, so a relay turns it off and
    /// paces the *other* connection itself.
    pub(crate) fn set_backpressure(&mut self, on: bool, limits: &Limits) -> Result<(), ConnError> {
        self.check_alive()?;
        self.flags.set(Flags::BACKPRESSURE, on);
        self.update_backpressure(limits);
        Ok(())
    }

    /// The loop is stopping: open connections close gracefully, ones not yet open at once.
    pub(crate) fn stop(&mut self, now: Instant, limits: &Limits) {
        match self.state {
            State::Preamble | State::Connecting | State::Handshaking => {
                self.finish(CloseReason::Shutdown, Teardown::Drop)
            }
            State::Open | State::PeerShut | State::WriteShut { .. } => {
                let _ = self.close(now, limits);
            }
            State::Closing { .. } | State::Lingering | State::Closed => {}
        }
    }

    /// Lingering, and the kernel holds nothing either way (all we sent acknowledged,
    /// nothing unread): waiting for the peer's EOF could lose nothing, so the close is
    /// complete — a clean end, not a stop cut short.
    pub(crate) fn handle_quiet(&mut self) {
        if self.state == State::Lingering {
            self.finish(CloseReason::Done, Teardown::Drop);
        }
    }

    /// The loop's grace period is over.
    pub(crate) fn stop_now(&mut self) {
        if self.state != State::Closed {
            let teardown = self.reset_if_owed();
            self.finish(CloseReason::Shutdown, teardown);
        }
    }

    // ----- outputs -----

    /// The next thing to tell the application, in order: open, data, drained, peer
    /// closed, closed. Nothing follows `Closed`.
    /// `input` is what the last [`Connection::handle_input`] returned (empty after any
    /// other input): a data event carries it.
    pub(crate) fn poll_event<'a>(&mut self, input: &'a [u8]) -> Option<Event<'a>> {
        let ev = self.events;
        if ev == 0 {
            return None;
        }
        let bit = ev & ev.wrapping_neg(); // the lowest pending event comes first
        self.events &= !bit;
        Some(match bit {
            EV_PROXIED => match self.stash.take().map(|b| *b) {
                Some(Stash::Proxied(h)) => Event::Proxied(h),
                // Replaced by a close reason before it was told: moot.
                other => {
                    self.stash = other.map(Box::new);
                    return self.poll_event(input);
                }
            },
            EV_OPEN => Event::Open,
            EV_DATA => Event::Data(input),
            EV_DRAINED => Event::Drained,
            EV_PEER_CLOSED => Event::PeerClosed,
            _ => match self.stash.take().map(|b| *b) {
                Some(Stash::Closed(reason, discarded)) => {
                    if discarded > 0 {
                        self.stash = Some(Box::new(Stash::Discarded(discarded)));
                    }
                    Event::Closed(reason)
                }
                _ => Event::Closed(CloseReason::Done),
            },
        })
    }

    /// Whether [`Connection::poll_event`] has something to say.
    pub(crate) fn has_events(&self) -> bool {
        self.events != 0
    }

    /// Bytes to write now (empty: nothing, or the socket is full): this turn's span of
    /// the shared output in `pool`, if the connection holds one, else its own buffer.
    pub(crate) fn poll_transmit<'a>(&'a mut self, pool: &'a BufPool) -> &'a [u8] {
        if matches!(self.state, State::Connecting | State::Closed)
            || self.flags.has(Flags::WRITE_BLOCKED)
        {
            return &[];
        }
        if !self.shared.is_empty() {
            return pool.shared.get(self.shared);
        }
        self.seal_staged();
        self.queue_close_notify_if_due();
        self.sendbuf.as_slice()
    }

    /// True once, when the driver should shut the socket's write side (send FIN): our side
    /// is finishing and everything owed has been handed to the kernel.
    pub(crate) fn poll_shutdown(&mut self, now: Instant, limits: &Limits) -> bool {
        let finishing = matches!(
            self.state,
            State::WriteShut { fin_sent: false } | State::Closing { .. }
        );
        if !finishing {
            return false;
        }
        self.seal_staged();
        self.queue_close_notify_if_due();
        if self.pending_output() > 0 {
            return false;
        }
        match self.state {
            State::WriteShut { .. } => self.state = State::WriteShut { fin_sent: true },
            State::Closing { peer_eof: true } => self.finish(CloseReason::Done, Teardown::Drop),
            _ => {
                self.state = State::Lingering;
                self.set_phase_deadline(Some(later(now, limits.close_timeout)));
            }
        }
        true
    }

    /// True once, when reading should resume without waiting for a readiness event: we
    /// stopped early with data possibly waiting, and reading is wanted again.
    pub(crate) fn poll_read_again(&mut self) -> bool {
        if self.flags.has(Flags::MAYBE_READABLE) && self.wants_read() {
            self.flags.set(Flags::MAYBE_READABLE, false);
            return true;
        }
        false
    }

    /// True once after [`Connection::poll_timeout`] changed: the driver re-arms its timer
    /// only then, not after every message.
    pub(crate) fn poll_timeout_changed(&mut self) -> bool {
        self.flags.take(Flags::DEADLINE_DIRTY)
    }

    /// When [`Connection::handle_timeout`] should next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.phase_deadline, self.idle_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether to read from the socket now.
    pub(crate) fn wants_read(&self) -> bool {
        match self.state {
            // The handshake (and the PROXY header) must progress whatever the application
            // asked.
            State::Preamble | State::Handshaking => true,
            State::Open | State::WriteShut { .. } => {
                !(self.flags.has(Flags::USER_PAUSED) || self.flags.has(Flags::BP_PAUSED))
            }
            // Closing reads (and drops) regardless of pauses, to see the peer's EOF.
            State::Closing { peer_eof: false } | State::Lingering => true,
            State::Connecting | State::PeerShut | State::Closing { .. } | State::Closed => false,
        }
    }

    /// Everything still queued in the connection's own buffer, whatever the state (a
    /// closing driver's last, best-effort write of a TLS alert; TLS never holds a span of
    /// the shared output).
    pub(crate) fn unsent(&self) -> &[u8] {
        self.sendbuf.as_slice()
    }

    /// How to release the socket, once closed.
    pub(crate) fn teardown(&self) -> Teardown {
        self.teardown
    }

    // ----- queries -----

    /// Bytes of input read and dropped because the connection was closing.
    pub(crate) fn discarded_input(&self) -> u64 {
        match self.stash.as_deref() {
            Some(Stash::Discarded(n) | Stash::Closed(_, n)) => *n,
            _ => 0,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The state it was in when it closed.
    pub(crate) fn closed_from(&self) -> State {
        self.closed_from
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn is_tls(&self) -> bool {
        match &self.session {
            Session::Tls(_) => true,
            Session::Plain => false,
        }
    }

    /// [`Connection::pending_output`] for the application: if it sees bytes pending, it
    /// may pause until they are gone, so it will hear `Drained` when they are — even if
    /// the kernel then takes them all at once without a blocked write.
    pub(crate) fn observe_pending(&self) -> usize {
        let n = self.pending_output();
        if n > 0 && self.has_opened() {
            self.drain_pending.set(true);
        }
        n
    }

    /// Memory held for this connection's output alone: its send buffer's capacity (what
    /// the allocator gave, not only the bytes in it) and TLS's staged plaintext, but not
    /// this turn's span of the shared output. Arms `Drained` as `observe_pending` does.
    pub(crate) fn observe_held(&self) -> usize {
        let staged = match &self.session {
            Session::Plain => 0,
            Session::Tls(tls) => tls.staged(),
        };
        let _ = self.observe_pending();
        self.sendbuf.capacity() + staged
    }

    /// Bytes owed to the peer that the kernel has not taken yet.
    pub(crate) fn pending_output(&self) -> usize {
        match &self.session {
            Session::Plain => self.sendbuf.len() + self.shared.len(),
            Session::Tls(tls) => self.sendbuf.len() + tls.staged(),
        }
    }

    /// Whether a write is waiting for writability.
    /// Whether reading is paused because too much is owed to the peer (the high-water
    /// mark), not by the handler.
    pub(crate) fn is_backpressured(&self) -> bool {
        self.flags.has(Flags::BP_PAUSED)
    }

    /// Whether reading stopped with data perhaps still queued (see
    /// [`Connection::handle_read_stopped`]): a pause already seen by the driver.
    pub(crate) fn is_read_stopped(&self) -> bool {
        self.flags.has(Flags::MAYBE_READABLE)
    }

    pub(crate) fn is_write_blocked(&self) -> bool {
        self.flags.has(Flags::WRITE_BLOCKED)
    }

    /// The negotiated TLS version, for logs.
    pub(crate) fn tls_protocol(&self) -> Option<&'static str> {
        match &self.session {
            Session::Tls(t) => t.protocol(),
            Session::Plain => None,
        }
    }

    /// The negotiated TLS cipher suite and ALPN protocol, for traces.
    pub(crate) fn tls_details(&self) -> (Option<&'static str>, Option<&[u8]>) {
        match &self.session {
            Session::Tls(t) => (t.cipher(), t.alpn()),
            Session::Plain => (None, None),
        }
    }

    // ----- rules used by several inputs -----

    /// Application data may flow now (connected, handshake done, or PROXY header read):
    /// the phase's deadline is over and the application hears `Open`.
    fn become_open(&mut self) {
        self.state = State::Open;
        self.set_phase_deadline(None);
        self.events |= EV_OPEN;
    }

    fn set_phase_deadline(&mut self, at: Option<Instant>) {
        self.phase_deadline = at;
        self.flags.set(Flags::DEADLINE_DIRTY, true);
    }

    fn set_idle_check(&mut self, at: Option<Instant>) {
        self.idle_check = at;
        self.flags.set(Flags::DEADLINE_DIRTY, true);
    }

    /// Opened and not closed yet: its handler has heard `Open` and not `Closed`.
    pub(crate) fn has_opened(&self) -> bool {
        !matches!(
            self.state,
            State::Preamble | State::Connecting | State::Handshaking | State::Closed
        )
    }

    fn check_alive(&self) -> Result<(), ConnError> {
        if self.state == State::Closed {
            Err(ConnError::Gone)
        } else {
            Ok(())
        }
    }

    /// TLS: encrypts the plaintext staged since the last transmit, in one go (few records
    /// for many small sends). Not before the handshake is done: rustls would only buffer
    /// it (bounded by its limit), so it waits as plaintext, counted by backpressure.
    fn seal_staged(&mut self) {
        let Session::Tls(tls) = &mut self.session else {
            return;
        };
        if tls.staged() == 0 || tls.is_handshaking() {
            return;
        }
        if let Err(e) = tls.seal(&mut self.sendbuf) {
            self.finish(CloseReason::Tls(e), Teardown::Drop);
        }
    }

    /// TLS says goodbye inside the stream before TCP does: once, after all data.
    fn queue_close_notify_if_due(&mut self) {
        let shutting = matches!(
            self.state,
            State::WriteShut { fin_sent: false } | State::Closing { .. }
        );
        if let (true, Session::Tls(tls)) = (shutting, &mut self.session) {
            tls.send_close_notify(&mut self.sendbuf);
        }
    }

    /// Backpressure: stop reading while too much is owed; resume at the low mark.
    fn update_backpressure(&mut self, limits: &Limits) {
        let owed = self.pending_output();
        if !self.flags.has(Flags::BACKPRESSURE) {
            self.flags.set(Flags::BP_PAUSED, false);
        } else if owed > limits.high_water {
            self.flags.set(Flags::BP_PAUSED, true);
        } else if self.flags.has(Flags::BP_PAUSED) && owed <= limits.low_water {
            self.flags.set(Flags::BP_PAUSED, false);
        }
    }

    /// Closing drops output we owed: reset the peer rather than let it see a clean end.
    fn reset_if_owed(&self) -> Teardown {
        if self.pending_output() == 0 {
            Teardown::Drop
        } else {
            Teardown::Reset
        }
    }

    /// The one way into `Closed`. A clean end keeps the data and EOF still to be told
    /// (they came before it); any other end makes them moot.
    fn finish(&mut self, reason: CloseReason, teardown: Teardown) {
        if self.state == State::Closed {
            return;
        }
        // A close begun because the connection was idle ends for that reason, however
        // the peer takes it: a clean EOF, or a reset from a peer that closed with our
        // echo unread (the bytes it sent meanwhile are counted as discarded).
        let reason = match reason {
            CloseReason::Done | CloseReason::Io(_) if self.flags.has(Flags::IDLE_CLOSE) => {
                CloseReason::IdleTimeout
            }
            other => other,
        };
        let keep = if reason.is_clean() {
            self.events & (EV_DATA | EV_PEER_CLOSED)
        } else {
            0
        };
        self.closed_from = self.state;
        self.state = State::Closed;
        self.events = keep | EV_CLOSED;
        let discarded = self.discarded_input();
        self.stash = Some(Box::new(Stash::Closed(reason, discarded)));
        self.teardown = teardown;
        self.set_phase_deadline(None);
        self.set_idle_check(None);
        self.flags.set(Flags::MAYBE_READABLE, false);
        // Nothing more is written (whether owed output meant a reset was decided by the
        // caller): a span of the shared output would only be copied out for nothing.
        self.shared = Span::default();
    }
}
