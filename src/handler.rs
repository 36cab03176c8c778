//! The protocol side of the loop: what an application implements.
//!
//! Teaches: separating the protocol from the I/O. A [`Handler`] never sees a socket, a
//! `WouldBlock` or a partial write: it is told that bytes arrived, the peer half-closed, a
//! timer fired; it answers through a [`Ctx`] (send, close, half-close, pause reading, set a
//! timer). The reactor does the system calls and keeps the subtle rules. Echo is one
//! implementation ([`crate::echo`]); the client and the benchmark are others.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::conn::{Connection, WriteShut};
use crate::event_loop::{ConnectOptions, Core, Deferred};
use crate::net::{Datagram, Endpoint, PeerAddr};
use crate::stats::Stats;

/// Identifies a connection within its loop. Slab slots are reused, so the id carries a
/// generation as well: a stale id never reaches a newer connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    pub(crate) fn new(key: usize, generation: u32) -> ConnId {
        ConnId {
            // Slab keys stay far below u32::MAX: each needs a file descriptor.
            key: key as u32,
            generation,
        }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.key)
    }
}

/// A timer set through a context; pass it to `cancel_timer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// Why a connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides finished sending and everything owed was delivered.
    Done,
    /// The handler (or the loop's shutdown) closed it at once, dropping unsent bytes.
    Aborted,
    /// An I/O error, such as a reset from the peer (`ECONNRESET`) or a broken pipe.
    Io(io::Error),
    /// The connection could not be established.
    ConnectFailed(io::Error),
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The TLS layer failed (bad record, failed certificate check, handshake refused...).
    /// The rustls error is kept whole so callers can tell the cases apart by variant.
    Tls(rustls::Error),
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// Nothing was read or written for the idle timeout.
    IdleTimeout,
    /// The peer did not finish closing within the grace period.
    CloseTimeout,
    /// The loop is stopping and the grace period ran out.
    Shutdown,
}

impl CloseReason {
    /// True for an orderly end.
    pub fn is_clean(&self) -> bool {
        matches!(self, CloseReason::Done)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => f.write_str("closed cleanly"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::ConnectTimeout => f.write_str("connect timed out"),
            CloseReason::Tls(e) => write!(f, "TLS error: {e}"),
            CloseReason::HandshakeTimeout => f.write_str("TLS handshake timed out"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::CloseTimeout => f.write_str("peer did not close in time"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// A stream protocol: one value per connection, called by the loop.
///
/// Call order: `on_open` once (for TLS, after the handshake), then any number of `on_data`,
/// `on_drained` and `on_timer`, then at most one `on_peer_closed`, then `on_close` exactly
/// once. A connection that fails before opening gets only `on_close`.
pub trait Handler {
    /// The connection is ready for application data.
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// Bytes arrived, in order. A message may arrive in several pieces or several messages
    /// in one: a stream has no message boundaries.
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]);

    /// Everything sent so far has been handed to the kernel after the socket had been full.
    fn on_drained(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// The peer will send no more (EOF, or TLS `close_notify`). Half-close: it may still be
    /// reading. The default finishes our side too, after everything owed is sent.
    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_>) {
        ctx.close();
    }

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// The connection is gone. Sending is no longer possible; loop-level calls
    /// ([`Ctx::connect`], [`Ctx::stop_loop`]) still work.
    fn on_close(&mut self, ctx: &mut Ctx<'_>, reason: &CloseReason) {
        let _ = (ctx, reason);
    }
}

/// What a stream handler can do from a callback.
pub struct Ctx<'a> {
    pub(crate) conn: Option<&'a mut Connection>,
    pub(crate) core: &'a mut Core,
    pub(crate) id: ConnId,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id).finish()
    }
}

impl Ctx<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The time the loop woke up for this batch of events (cheaper than the clock).
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The peer's address (a system call; meant for logs).
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.conn.as_ref().and_then(|c| c.stream.peer_addr().ok())
    }

    /// Queues bytes to send. They go out when the callback returns, together with anything
    /// else sent in the same callback; what the kernel does not take waits in the
    /// connection's send buffer. Ignored after [`Ctx::shutdown_write`] or [`Ctx::close`].
    pub fn send(&mut self, data: &[u8]) {
        match &self.conn {
            Some(c) if c.write_shut == WriteShut::Open && !c.is_closed() => {
                self.core.out.extend_from_slice(data);
            }
            _ => log::debug!("{}: send after close ignored", self.id),
        }
    }

    /// Bytes waiting for the kernel to take them (not counting this callback's sends).
    pub fn pending_output(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.sendbuf.len())
    }

    /// Half-close: after everything queued is sent, tell the peer we will send no more
    /// (TCP FIN, and TLS `close_notify` first). Reading goes on.
    pub fn shutdown_write(&mut self) {
        if let Some(c) = self.conn.as_deref_mut() {
            if c.write_shut == WriteShut::Open {
                c.write_shut = WriteShut::Requested;
            }
        }
    }

    /// Graceful close: send what is owed, half-close, then wait (bounded) for the peer to
    /// finish before closing. Input arriving meanwhile is read and dropped, because closing
    /// a socket with unread input makes the kernel reset the connection and discard output
    /// the peer has not received yet.
    pub fn close(&mut self) {
        if let Some(c) = self.conn.as_deref_mut() {
            c.closing = true;
            if c.write_shut == WriteShut::Open {
                c.write_shut = WriteShut::Requested;
            }
        }
    }

    /// Closes at once, dropping anything unsent.
    pub fn abort(&mut self) {
        if let Some(c) = self.conn.as_deref_mut() {
            c.abort_requested = true;
        }
    }

    /// Stops reading from this connection (the peer's data waits in the kernel, and TCP
    /// flow control eventually stops the peer).
    pub fn pause_reading(&mut self) {
        if let Some(c) = self.conn.as_deref_mut() {
            c.user_paused = true;
        }
    }

    /// Resumes reading. Readiness is edge-triggered: data that arrived while paused
    /// produces no new event, so the loop looks at the socket again by itself.
    pub fn resume_reading(&mut self) {
        if let Some(c) = self.conn.as_deref_mut() {
            if c.user_paused {
                c.user_paused = false;
                if c.maybe_readable {
                    self.core.schedule_read(self.id);
                }
            }
        }
    }

    /// Calls `on_timer` after `after`.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        let at = crate::timer::later(self.core.now, after);
        self.core.timers.add(
            at,
            crate::timer::Owner::Conn(self.id),
            crate::timer::Kind::User,
        )
    }

    /// Cancels a timer; cancelling one that fired already is harmless.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.core.timers.cancel(timer);
    }

    /// Opens a new outgoing connection served by `handler` (after this callback returns).
    pub fn connect(&mut self, to: Endpoint, opts: ConnectOptions, handler: Box<dyn Handler>) {
        self.core
            .deferred
            .push(Deferred::Connect(to, opts, handler));
    }

    /// Asks the whole loop to stop, giving connections `grace` to finish.
    pub fn stop_loop(&mut self, grace: Duration) {
        self.core.stop_request = Some(grace);
    }

    /// The loop's counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }
}

/// A datagram protocol: one value per socket, called for every datagram.
pub trait DatagramHandler {
    /// The socket is registered; a client can send its first datagram now.
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_>) {
        let _ = ctx;
    }

    /// A datagram arrived. Each one stands alone: there is no connection and no order.
    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_>, data: &[u8], from: &PeerAddr);

    /// A timer set with [`DgramCtx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut DgramCtx<'_>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// The socket is being closed (the loop is stopping or the handler closed it).
    fn on_close(&mut self, ctx: &mut DgramCtx<'_>) {
        let _ = ctx;
    }
}

/// What a datagram handler can do from a callback.
pub struct DgramCtx<'a> {
    pub(crate) sock: &'a Datagram,
    pub(crate) queue: &'a mut crate::event_loop::DgramQueue,
    pub(crate) core: &'a mut Core,
    pub(crate) id: ConnId,
    pub(crate) close_requested: &'a mut bool,
}

impl fmt::Debug for DgramCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DgramCtx").field("id", &self.id).finish()
    }
}

/// Why a datagram could not be sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The destination is an unnamed Unix socket: there is no address to reply to.
    Unaddressable,
    /// The send queue is full; the datagram was dropped.
    QueueFull,
    /// The system refused it (for example: message too long, network unreachable).
    Io(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Unaddressable => f.write_str("the sender has no address to reply to"),
            SendError::QueueFull => f.write_str("send queue full"),
            SendError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

impl DgramCtx<'_> {
    /// This socket's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The time the loop woke up for this batch of events.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The socket's own address.
    pub fn local_addr(&self) -> Option<PeerAddr> {
        self.sock.local_addr().ok()
    }

    /// Sends one datagram. If the socket's buffer is full it waits in a bounded queue (and
    /// the loop stops receiving on this socket until the queue drains).
    ///
    /// While a batch of received UDP datagrams is being handled (the loop receives in
    /// batches when datagrams queue up), replies are gathered and sent together
    /// (`sendmmsg`) after the batch: `Ok` then means "accepted for sending",
    /// and a later send error is counted in [`Stats::datagrams_dropped`] instead.
    pub fn send_to(&mut self, data: &[u8], to: &PeerAddr) -> Result<(), SendError> {
        crate::event_loop::dgram_send(self.sock, self.queue, self.core, self.id, data, to)
    }

    /// Calls `on_timer` after `after`.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        let at = crate::timer::later(self.core.now, after);
        self.core.timers.add(
            at,
            crate::timer::Owner::Dgram(self.id),
            crate::timer::Kind::User,
        )
    }

    /// Cancels a timer.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.core.timers.cancel(timer);
    }

    /// Closes this socket after the callback returns.
    pub fn close(&mut self) {
        *self.close_requested = true;
    }

    /// Asks the whole loop to stop, giving connections `grace` to finish.
    pub fn stop_loop(&mut self, grace: Duration) {
        self.core.stop_request = Some(grace);
    }

    /// Opens a new outgoing stream connection served by `handler`.
    pub fn connect(&mut self, to: Endpoint, opts: ConnectOptions, handler: Box<dyn Handler>) {
        self.core
            .deferred
            .push(Deferred::Connect(to, opts, handler));
    }

    /// Binds another UDP socket served by `handler`, for example one of the other address
    /// family when a client moves on to a server's next address. The socket is bound now
    /// (so a failure is returned here) and joins the loop after this callback returns.
    pub fn bind_udp(
        &mut self,
        addr: std::net::SocketAddr,
        handler: Box<dyn DatagramHandler>,
    ) -> Result<(), crate::ListenError> {
        let sock = crate::net::bind_udp(addr, self.core.bind_options())?;
        self.core.deferred.push(Deferred::AddUdp(sock, handler));
        Ok(())
    }

    /// The loop's counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }
}
