//! The protocol side of the loop: what an application implements, and what its callbacks
//! may ask of the loop.
//!
//! Teaches: separating the protocol from the I/O. A [`Handler`] never sees a socket, a
//! `WouldBlock` or a partial write: it is told that bytes arrived, the peer half-closed, a
//! timer fired; it answers through a [`Ctx`] (send, close, half-close, pause reading, set a
//! timer) and can reach the rest of the loop from there: the loop-wide application state
//! ([`Ctx::state`]), any other connection by its id ([`Ctx::conn`]), new connections. The
//! reactor does the system calls and keeps the subtle rules. Echo is one implementation
//! ([`crate::echo`]); the client, the benchmark and the examples are others.
//!
//! The contexts are thin: each call goes to the loop through one internal interface
//! (`LoopOps`), which the reactor implements by calling methods of the connection's state
//! machine. That keeps this module free of the reactor's internals (it imports ids,
//! settings, errors, statistics, addresses and the close reasons of `conn`, never
//! `event_loop`), so the two do not depend on each other in a circle.
//!
//! # Reentrancy
//!
//! A callback never runs inside another: what a callback does to *another* connection
//! (sending to it, closing it) is applied at once to that connection's state, and the
//! callbacks it causes there (`on_drained`, `on_close`...) run after the current one
//! returns, in the same turn.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::config::ConnectOptions;
pub use crate::conn::CloseReason;
pub use crate::error::SendError;
use crate::error::{ConnError, ListenError};
pub use crate::id::{ConnId, ListenerId, SocketId, SourceId, TimerId};
use crate::net::{Endpoint, PeerAddr};
use crate::stats::Stats;

/// A stream protocol: one value per connection, called by the loop.
///
/// `S` is the loop's application state (see [`crate::EventLoop::with_state`]); it defaults
/// to `()`, so a handler that needs none writes `impl Handler for MyProtocol`.
///
/// Call order: `on_open` once (for TLS, after the handshake); then any number of `on_data`,
/// `on_drained` and `on_timer`, with at most one `on_peer_closed` among them (`on_drained`
/// and `on_timer` may still follow it, since our side may still be sending); then `on_close`
/// exactly once. A connection that fails before opening — its connect or handshake — gets
/// only `on_close`. Every id the loop hands out ends with exactly one `on_close`.
pub trait Handler<S = ()> {
    /// The connection is ready for application data.
    fn on_open(&mut self, ctx: &mut Ctx<'_, S>) {
        let _ = ctx;
    }

    /// Bytes arrived, in order. A message may arrive in several pieces or several messages
    /// in one: a stream has no message boundaries.
    fn on_data(&mut self, ctx: &mut Ctx<'_, S>, data: &[u8]);

    /// Whether this handler is a plain echo: it sends back every byte it is given,
    /// unchanged and in order, and does nothing else with them. Asked once, when a
    /// connection is accepted. If so, and the connection is plain TCP or Unix (not TLS),
    /// the loop may echo its large reads without copying them through user space
    /// (`splice(2)` through a pipe; see [`crate::Config::zero_copy_echo`]) and without
    /// calling [`Handler::on_data`] for those bytes. [`crate::Echo`] says yes; the
    /// default is no.
    fn is_plain_echo(&self) -> bool {
        false
    }

    /// Everything sent so far has been handed to the kernel after it had to wait: the
    /// socket had been full, output sent from outside this connection's own callbacks
    /// waited for the end of the turn, or `pending_output` was asked and said more than
    /// zero. A producer that paused because [`ConnRef::pending_output`] grew resumes here.
    fn on_drained(&mut self, ctx: &mut Ctx<'_, S>) {
        let _ = ctx;
    }

    /// The peer will send no more (EOF, or TLS `close_notify`). Half-close: it may still be
    /// reading. The default finishes our side too, after everything owed is sent.
    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_, S>) {
        ctx.close();
    }

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_, S>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// The loop has begun a graceful stop ([`crate::StopHandle::stop`], a signal,
    /// `stop_loop`). Listeners are closed; this connection may still do what it owes
    /// within the grace period — send a reply that a worker thread is still computing,
    /// say — and then close. The default closes at once, gracefully: everything already
    /// sent is delivered, then our FIN. A connection still open when the grace ends is
    /// closed then (reset if output was still owed). Connections that never opened are
    /// closed without this call.
    fn on_stopping(&mut self, ctx: &mut Ctx<'_, S>) {
        ctx.close();
    }

    /// The connection is gone. Sending on it is no longer possible (and ignored); the rest
    /// of the loop is still reachable through `ctx`.
    fn on_close(&mut self, ctx: &mut Ctx<'_, S>, reason: &CloseReason) {
        let _ = (ctx, reason);
    }
}

/// A datagram protocol: one value per socket, called for every datagram.
pub trait DatagramHandler<S = ()> {
    /// The socket is registered; a client can send its first datagram now.
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_, S>) {
        let _ = ctx;
    }

    /// A datagram arrived. Each one stands alone: there is no connection and no order.
    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, S>, data: &[u8], from: &PeerAddr);

    /// A timer set with [`DgramCtx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut DgramCtx<'_, S>, timer: TimerId) {
        let _ = (ctx, timer);
    }

    /// A receive on this socket failed; the socket stays open and goes on receiving. On a
    /// socket connected with [`DgramCtx::connect_to`] this is how ICMP news of the peer
    /// arrives: `ConnectionRefused` says nothing listens on its port. A Unix datagram too
    /// large to receive whole comes as `InvalidData` (it is dropped). The default ignores
    /// the error.
    fn on_error(&mut self, ctx: &mut DgramCtx<'_, S>, error: &io::Error) {
        let _ = (ctx, error);
    }

    /// The socket is being closed (the loop is stopping or the handler closed it).
    fn on_close(&mut self, ctx: &mut DgramCtx<'_, S>) {
        let _ = ctx;
    }
}

/// What can be done to a stream connection by id (the seam's verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnOp {
    ShutdownWrite,
    Close,
    Abort,
    PauseReading,
    ResumeReading,
    Backpressure(bool),
}

/// What can be done to a listener by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerOp {
    Pause,
    Resume,
    Close,
}

/// Which readiness of a descriptor to watch (see [`LoopCtx::add_fd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdInterest {
    /// Data to read (or, for a pidfd, the process has exited; for a timerfd, it fired).
    Read,
    /// Room to write.
    Write,
    /// Both.
    ReadWrite,
}

/// What a descriptor became ready for. Edge-triggered: this says what *changed*; the
/// callback reads (or writes) until `WouldBlock`, because nothing more is reported for
/// what is already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FdReady {
    /// Readable: read until `WouldBlock` (or EOF).
    pub readable: bool,
    /// Writable: there is room again.
    pub writable: bool,
    /// Hang-up: the other end is gone (a pipe's writer closed, a peer shut down). Read
    /// what is left; the next read returns EOF.
    pub hang_up: bool,
    /// An error is pending on the descriptor (for a socket, `SO_ERROR` says which).
    pub error: bool,
}

/// A watched descriptor and its callback, boxed together so the loop need not know the
/// descriptor's type.
pub(crate) trait Watched<S> {
    fn ready(&mut self, ctx: &mut LoopCtx<'_, S>, ready: FdReady);
}

struct Watch<F, C> {
    fd: F,
    callback: C,
}

impl<S, F, C> Watched<S> for Watch<F, C>
where
    C: FnMut(&mut LoopCtx<'_, S>, &mut F, FdReady),
{
    fn ready(&mut self, ctx: &mut LoopCtx<'_, S>, ready: FdReady) {
        (self.callback)(ctx, &mut self.fd, ready);
    }
}

/// A loop timer's callback.
pub(crate) type OnTimer<S> = Box<dyn FnOnce(&mut LoopCtx<'_, S>)>;

/// A callback that belongs to no connection (SIGUSR1's, the loop's `on_stopping`).
pub(crate) type OnLoop<S> = Box<dyn FnMut(&mut LoopCtx<'_, S>)>;

/// Everything a callback may ask of its loop: the one interface between the contexts here
/// and the reactor (`event_loop::ctx` implements it). Object-safe, so the contexts need not
/// name the reactor's types.
pub(crate) trait LoopOps<S> {
    fn now(&self) -> Instant;
    fn stats(&self) -> Stats;
    fn state(&mut self) -> &mut S;
    fn stop_loop(&mut self, grace: Duration);
    fn connect(
        &mut self,
        to: &Endpoint,
        opts: ConnectOptions,
        handler: Box<dyn Handler<S>>,
    ) -> ConnId;
    fn bind_udp(
        &mut self,
        addr: SocketAddr,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<ConnId, ListenError>;
    fn set_timer(&mut self, owner: ConnId, after: Duration) -> TimerId;
    fn cancel_timer(&mut self, owner: ConnId, timer: TimerId);

    fn conn_send(&mut self, id: ConnId, data: &[u8]) -> Result<(), ConnError>;
    fn conn_op(&mut self, id: ConnId, op: ConnOp) -> Result<(), ConnError>;
    fn conn_pending(&self, id: ConnId) -> Result<usize, ConnError>;
    fn conn_held(&self, id: ConnId) -> Result<usize, ConnError>;
    fn conn_peer_addr(&self, id: ConnId) -> Result<PeerAddr, ConnError>;

    fn dgram_send(&mut self, id: ConnId, data: &[u8], to: &PeerAddr) -> Result<(), SendError>;
    fn dgram_close(&mut self, id: ConnId);
    fn dgram_connect(&mut self, id: ConnId, to: &PeerAddr) -> io::Result<()>;
    fn dgram_local_addr(&self, id: ConnId) -> Option<PeerAddr>;

    fn conn_close_with(&mut self, id: ConnId, last: &[u8]) -> Result<(), ConnError>;
    fn listener_op(&mut self, id: ConnId, op: ListenerOp) -> Result<(), ConnError>;
    fn add_source(
        &mut self,
        fd: RawFd,
        interest: FdInterest,
        watched: Box<dyn Watched<S>>,
    ) -> io::Result<ConnId>;
    fn remove_source(&mut self, id: ConnId) -> Result<(), ConnError>;
    fn set_loop_timer(&mut self, after: Duration, callback: OnTimer<S>) -> TimerId;
    fn cancel_loop_timer(&mut self, timer: TimerId);
    fn is_stopping(&self) -> bool;

    /// Runs the callbacks that actions taken outside any callback have caused.
    fn finish_actions(&mut self);
}

/// The loop-level half of every context: the same in [`Ctx`], [`DgramCtx`] and [`LoopCtx`].
macro_rules! loop_methods {
    () => {
        /// The time the loop woke up for this batch of events (cheaper than the clock).
        pub fn now(&self) -> Instant {
            self.ops.now()
        }

        /// The loop's application state, shared by every callback (see
        /// [`crate::EventLoop::with_state`]).
        pub fn state(&mut self) -> &mut S {
            self.ops.state()
        }

        /// Another stream connection of this loop, to send to, close, pause... Every
        /// action on it returns [`ConnError::Gone`] once it has closed.
        pub fn conn(&mut self, id: ConnId) -> ConnRef<'_, S> {
            ConnRef {
                ops: &mut *self.ops,
                id,
            }
        }

        /// Opens a new outgoing connection served by `handler`, and returns its id at once.
        /// The outcome always reaches `handler`, never the caller: `on_open` when it is
        /// established (after the TLS handshake for TLS), or `on_close` with
        /// [`CloseReason::ConnectFailed`] or [`CloseReason::ConnectTimeout`] — even when
        /// the connect fails at once (both run after the current callback returns).
        pub fn connect(
            &mut self,
            to: Endpoint,
            opts: ConnectOptions,
            handler: Box<dyn Handler<S>>,
        ) -> ConnId {
            self.ops.connect(&to, opts, handler)
        }

        /// Asks the whole loop to stop, giving connections `grace` to finish. It takes
        /// effect when the current callback returns.
        pub fn stop_loop(&mut self, grace: Duration) {
            self.ops.stop_loop(grace);
        }

        /// The loop's counters so far.
        pub fn stats(&self) -> Stats {
            self.ops.stats()
        }

        /// Sets a timer on another connection or datagram socket of this loop, named by
        /// id: when it fires, *that* handler's `on_timer` runs with the returned id. This
        /// is how a callback that owns no connection (a channel message, say) wakes one
        /// up: a scheduler starting many connections at one instant, a broadcaster
        /// pacing its listeners. A timer for an id that has closed fires for nobody.
        pub fn set_timer_for(&mut self, owner: ConnId, after: Duration) -> TimerId {
            self.ops.set_timer(owner, after)
        }

        /// Sets a timer of the loop's own, owned by no connection: `callback` runs on
        /// the loop's thread after `after` (never before the current callback returns).
        /// Cancel it with [`Self::cancel_loop_timer`]. A loop timer does not keep a
        /// stopping loop alive: once every connection is closed, the loop ends and its
        /// timers with it.
        pub fn set_loop_timer(
            &mut self,
            after: Duration,
            callback: impl FnOnce(&mut LoopCtx<'_, S>) + 'static,
        ) -> TimerId {
            self.ops.set_loop_timer(after, Box::new(callback))
        }

        /// Cancels a loop timer; cancelling one that fired already is harmless.
        pub fn cancel_loop_timer(&mut self, timer: TimerId) {
            self.ops.cancel_loop_timer(timer);
        }

        /// Watches a descriptor of the application's own — a pipe, a timerfd, a pidfd,
        /// a signalfd, an eventfd, an inotify descriptor, a socket made elsewhere — for
        /// `interest`; `callback` runs on the loop's thread with it whenever it becomes
        /// ready. The loop owns `fd` until [`Self::remove_fd`], which closes it (drops it).
        ///
        /// The descriptor is made non-blocking: a read with nothing to read must return
        /// `WouldBlock`, not stop the whole loop. Readiness is **edge-triggered** (mio
        /// registers with `EPOLLET`): the callback is told when readiness *changes*, so
        /// it must read until `WouldBlock` (or EOF) each time; what it leaves unread is
        /// never reported again. Closing the descriptor behind the loop's back (through
        /// a duplicate of its number) is a bug the loop cannot see: epoll forgets a
        /// descriptor only when its last duplicate closes, so the callback may still run,
        /// and its reads fail with `EBADF`; remove it instead.
        pub fn add_fd<F: AsFd + 'static>(
            &mut self,
            fd: F,
            interest: FdInterest,
            callback: impl FnMut(&mut LoopCtx<'_, S>, &mut F, FdReady) + 'static,
        ) -> io::Result<SourceId> {
            let raw = fd.as_fd().as_raw_fd();
            let watched = Box::new(Watch { fd, callback });
            self.ops.add_source(raw, interest, watched).map(SourceId)
        }

        /// Stops watching a descriptor added with [`Self::add_fd`] and closes it (after
        /// the current batch of events). From its own callback too. `Gone` if it was
        /// removed already.
        pub fn remove_fd(&mut self, id: SourceId) -> Result<(), ConnError> {
            self.ops.remove_source(id.0)
        }

        /// Stops accepting on a listener: new connections wait in the kernel's queue
        /// (up to its backlog) while the listener's connections go on — draining a
        /// server behind a load balancer, say.
        pub fn pause_listener(&mut self, listener: ListenerId) -> Result<(), ConnError> {
            self.ops.listener_op(listener, ListenerOp::Pause)
        }

        /// Accepts again on a paused listener, starting with what queued meanwhile.
        pub fn resume_listener(&mut self, listener: ListenerId) -> Result<(), ConnError> {
            self.ops.listener_op(listener, ListenerOp::Resume)
        }

        /// Closes a listener (its socket file too, if the loop bound it); the
        /// connections it accepted go on.
        pub fn close_listener(&mut self, listener: ListenerId) -> Result<(), ConnError> {
            self.ops.listener_op(listener, ListenerOp::Close)
        }

        /// True once a graceful stop has begun: listeners are closed, and connections are
        /// finishing within the grace period.
        pub fn is_stopping(&self) -> bool {
            self.ops.is_stopping()
        }
    };
}

/// What every context — [`Ctx`], [`DgramCtx`] and [`LoopCtx`] — can do for the loop as
/// a whole, as a trait: a helper written once (`fn broadcast<C: LoopContext<Room>>(ctx:
/// &mut C, ..)`) serves callbacks of every kind. The contexts also have these as
/// inherent methods, so calling them needs no import.
pub trait LoopContext<S> {
    /// See [`LoopCtx::now`].
    fn now(&self) -> Instant;
    /// See [`LoopCtx::state`].
    fn state(&mut self) -> &mut S;
    /// See [`LoopCtx::conn`].
    fn conn(&mut self, id: ConnId) -> ConnRef<'_, S>;
    /// See [`LoopCtx::connect`].
    fn connect(
        &mut self,
        to: Endpoint,
        opts: ConnectOptions,
        handler: Box<dyn Handler<S>>,
    ) -> ConnId;
    /// See [`LoopCtx::stop_loop`].
    fn stop_loop(&mut self, grace: Duration);
    /// See [`LoopCtx::stats`].
    fn stats(&self) -> Stats;
    /// See [`LoopCtx::set_timer_for`].
    fn set_timer_for(&mut self, owner: ConnId, after: Duration) -> TimerId;
    /// See [`LoopCtx::set_loop_timer`].
    fn set_loop_timer(
        &mut self,
        after: Duration,
        callback: impl FnOnce(&mut LoopCtx<'_, S>) + 'static,
    ) -> TimerId;
    /// See [`LoopCtx::cancel_loop_timer`].
    fn cancel_loop_timer(&mut self, timer: TimerId);
    /// See [`LoopCtx::remove_fd`].
    fn remove_fd(&mut self, id: SourceId) -> Result<(), ConnError>;
    /// See [`LoopCtx::is_stopping`].
    fn is_stopping(&self) -> bool;
}

/// The trait's methods are the contexts' inherent ones (`loop_methods!`), called by path
/// so that there is one body for each.
macro_rules! loop_context {
    ($ty:ident) => {
        impl<S> LoopContext<S> for $ty<'_, S> {
            fn now(&self) -> Instant {
                $ty::now(self)
            }
            fn state(&mut self) -> &mut S {
                $ty::state(self)
            }
            fn conn(&mut self, id: ConnId) -> ConnRef<'_, S> {
                $ty::conn(self, id)
            }
            fn connect(
                &mut self,
                to: Endpoint,
                opts: ConnectOptions,
                handler: Box<dyn Handler<S>>,
            ) -> ConnId {
                $ty::connect(self, to, opts, handler)
            }
            fn stop_loop(&mut self, grace: Duration) {
                $ty::stop_loop(self, grace);
            }
            fn stats(&self) -> Stats {
                $ty::stats(self)
            }
            fn set_timer_for(&mut self, owner: ConnId, after: Duration) -> TimerId {
                $ty::set_timer_for(self, owner, after)
            }
            fn set_loop_timer(
                &mut self,
                after: Duration,
                callback: impl FnOnce(&mut LoopCtx<'_, S>) + 'static,
            ) -> TimerId {
                $ty::set_loop_timer(self, after, callback)
            }
            fn cancel_loop_timer(&mut self, timer: TimerId) {
                $ty::cancel_loop_timer(self, timer);
            }
            fn remove_fd(&mut self, id: SourceId) -> Result<(), ConnError> {
                $ty::remove_fd(self, id)
            }
            fn is_stopping(&self) -> bool {
                $ty::is_stopping(self)
            }
        }
    };
}

loop_context!(Ctx);
loop_context!(DgramCtx);
loop_context!(LoopCtx);

/// What a stream handler can do from a callback: act on its own connection, and reach the
/// rest of the loop.
pub struct Ctx<'a, S = ()> {
    pub(crate) ops: &'a mut dyn LoopOps<S>,
    pub(crate) id: ConnId,
}

impl<S> fmt::Debug for Ctx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("id", &self.id).finish()
    }
}

impl<S> Ctx<'_, S> {
    loop_methods!();

    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address (a system call; meant for logs).
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.ops.conn_peer_addr(self.id).ok()
    }

    /// Queues bytes to send, after everything sent to this connection before. They go out
    /// when the callback returns, with anything else sent in the same callback (or, if
    /// other callbacks sent to this connection in the same turn, with theirs at the end
    /// of the turn); what the kernel does not take waits in the connection's send buffer.
    /// Ignored (and logged at debug level) once our sending side is shut: after
    /// [`Ctx::shutdown_write`], [`Ctx::close`] or [`Ctx::abort`]. Use
    /// `ctx.conn(ctx.id()).send(..)` to get the refusal as a result.
    pub fn send(&mut self, data: &[u8]) {
        if let Err(e) = self.ops.conn_send(self.id, data) {
            log::debug!("{}: send ignored: {e}", self.id);
        }
    }

    /// Bytes sent and not yet taken by the kernel, this callback's sends included. If it
    /// says more than zero, [`Handler::on_drained`] follows once they are all taken.
    pub fn pending_output(&self) -> usize {
        self.ops.conn_pending(self.id).unwrap_or(0)
    }

    /// Half-close: after everything queued is sent, tell the peer we will send no more
    /// (TCP FIN, and TLS `close_notify` first). Reading goes on.
    pub fn shutdown_write(&mut self) {
        let _ = self.ops.conn_op(self.id, ConnOp::ShutdownWrite);
    }

    /// Graceful close: send what is owed, half-close, then wait (bounded by
    /// [`crate::Config::close_timeout`]) for the peer to finish before closing. Input
    /// arriving meanwhile is read and dropped, because closing a socket with unread input
    /// makes the kernel reset the connection and discard output the peer has not received
    /// yet. Calling it twice is harmless.
    pub fn close(&mut self) {
        let _ = self.ops.conn_op(self.id, ConnOp::Close);
    }

    /// Replaces everything still owed with `last` and closes gracefully: for the line a
    /// slow consumer should read before it is cut off, which would otherwise wait
    /// behind its backlog (and [`Ctx::abort`] would drop). See [`ConnRef::close_with`].
    pub fn close_with(&mut self, last: &[u8]) {
        let _ = self.ops.conn_close_with(self.id, last);
    }

    /// Closes at once, dropping anything unsent — including what this callback sent
    /// before — and refusing what it sends after. A TCP peer gets a reset (RST), so it
    /// cannot mistake the end for a clean one.
    pub fn abort(&mut self) {
        let _ = self.ops.conn_op(self.id, ConnOp::Abort);
    }

    /// Stops reading from this connection (the peer's data waits in the kernel, and TCP
    /// flow control eventually stops the peer).
    pub fn pause_reading(&mut self) {
        let _ = self.ops.conn_op(self.id, ConnOp::PauseReading);
    }

    /// Resumes reading. Readiness is edge-triggered: data that arrived while paused
    /// produces no new event, so the loop looks at the socket again by itself.
    pub fn resume_reading(&mut self) {
        let _ = self.ops.conn_op(self.id, ConnOp::ResumeReading);
    }

    /// Whether the loop pauses reading this connection while more than
    /// [`crate::Config::high_water`] bytes are owed to it (on by default). That is right
    /// for a protocol whose output answers its input, like echo; a relay, whose output
    /// comes from *another* connection, turns it off and pauses that other connection
    /// itself, or the two directions would hold each other up (see `examples/proxy.rs`).
    pub fn set_backpressure(&mut self, on: bool) {
        let _ = self.ops.conn_op(self.id, ConnOp::Backpressure(on));
    }

    /// Calls `on_timer` after `after`. Timers are cancelled when the connection closes.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        self.ops.set_timer(self.id, after)
    }

    /// Cancels a timer; cancelling one that fired already is harmless.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.ops.cancel_timer(self.id, timer);
    }
}

/// What a datagram handler can do from a callback.
pub struct DgramCtx<'a, S = ()> {
    pub(crate) ops: &'a mut dyn LoopOps<S>,
    pub(crate) id: ConnId,
}

impl<S> fmt::Debug for DgramCtx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DgramCtx").field("id", &self.id).finish()
    }
}

impl<S> DgramCtx<'_, S> {
    loop_methods!();

    /// This socket's id.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// The socket's own address.
    pub fn local_addr(&self) -> Option<PeerAddr> {
        self.ops.dgram_local_addr(self.id)
    }

    /// Sends one datagram. If the socket's buffer is full it waits in a bounded queue (and
    /// the loop stops receiving on this socket until the queue drains).
    ///
    /// While a batch of received UDP datagrams is being handled (the loop receives in
    /// batches when datagrams queue up), replies are gathered and sent together
    /// (`sendmmsg`) after the batch: `Ok` then means "accepted for sending",
    /// and a later send error is counted in [`Stats::datagrams_dropped`] instead.
    pub fn send_to(&mut self, data: &[u8], to: &PeerAddr) -> Result<(), SendError> {
        self.ops.dgram_send(self.id, data, to)
    }

    /// Calls `on_timer` after `after`. Timers are cancelled when the socket closes.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        self.ops.set_timer(self.id, after)
    }

    /// Cancels a timer.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.ops.cancel_timer(self.id, timer);
    }

    /// Closes this socket after the callback returns (its `on_close` runs then).
    pub fn close(&mut self) {
        self.ops.dgram_close(self.id);
    }

    /// Connects this socket to `to` (`connect(2)`; nothing is sent). A client talking to
    /// one server gains two things: the kernel drops datagrams from anyone else, and it
    /// reports what ICMP says about `to`, an unreachable port arriving as
    /// `ConnectionRefused` in [`DatagramHandler::on_error`] (and from the next send) where
    /// an unconnected socket hears nothing and can only time out. Sending to `to` with
    /// [`DgramCtx::send_to`] works as before.
    pub fn connect_to(&mut self, to: &PeerAddr) -> io::Result<()> {
        self.ops.dgram_connect(self.id, to)
    }

    /// Binds another UDP socket served by `handler`, for example one of the other address
    /// family when a client moves on to a server's next address. The socket is bound now
    /// (so a failure is returned here); its `on_ready` runs after this callback returns.
    pub fn bind_udp(
        &mut self,
        addr: SocketAddr,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<ConnId, ListenError> {
        self.ops.bind_udp(addr, handler)
    }
}

/// What a callback that belongs to no connection — a message from another thread (see
/// [`crate::EventLoop::channel`]) — can do: reach the loop's state and its connections.
pub struct LoopCtx<'a, S = ()> {
    pub(crate) ops: &'a mut dyn LoopOps<S>,
}

impl<S> fmt::Debug for LoopCtx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopCtx").finish_non_exhaustive()
    }
}

impl<S> LoopCtx<'_, S> {
    loop_methods!();

    /// A timer of the loop's own (as [`LoopCtx::set_loop_timer`]): `callback` runs after
    /// `after`, on the loop's thread.
    pub fn set_timer(
        &mut self,
        after: Duration,
        callback: impl FnOnce(&mut LoopCtx<'_, S>) + 'static,
    ) -> TimerId {
        self.set_loop_timer(after, callback)
    }

    /// Cancels a timer set with [`LoopCtx::set_timer`].
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.cancel_loop_timer(timer);
    }
}

/// A stream connection named by id, from a callback ([`Ctx::conn`]) or, wrapped in a
/// [`ConnGuard`], from outside the loop ([`crate::EventLoop::conn`]).
///
/// Every action returns [`ConnError::Gone`] once the connection has closed, so a handler
/// holding a stale id learns it instead of reaching a stranger that took the same slot.
/// From a callback, what the action causes on that connection (its `on_drained`,
/// `on_close`...) runs after the current callback returns.
pub struct ConnRef<'a, S = ()> {
    pub(crate) ops: &'a mut dyn LoopOps<S>,
    pub(crate) id: ConnId,
}

impl<S> fmt::Debug for ConnRef<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnRef").field("id", &self.id).finish()
    }
}

impl<S> ConnRef<'_, S> {
    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues bytes to send, after everything sent to this connection before. Sent from
    /// the connection's own callback, they go out when it returns (as [`Ctx::send`]);
    /// sent from anywhere else, once per loop turn, just before the loop polls again,
    /// together with everything else sent to it in that turn — one system call however
    /// many callbacks sent to it and however sends to other connections interleave.
    pub fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        self.ops.conn_send(self.id, data)
    }

    /// Bytes sent to it and not yet taken by the kernel, including what was sent a moment
    /// ago and waits for the end of the turn. A producer that sends to a slow connection
    /// watches this to stop in time, and resumes in that connection's `on_drained`, which
    /// follows whenever this has said more than zero.
    pub fn pending_output(&self) -> Result<usize, ConnError> {
        self.ops.conn_pending(self.id)
    }

    /// Bytes of memory its output holds on its own account: the capacity of its send
    /// buffer (at least what it owes past this turn) and, for TLS, the plaintext waiting to
    /// be encrypted. What a turn sends to many connections is kept once for all of them
    /// until the turn ends (fan-out), so 1,000 subscribers each owing the same 64 KiB this
    /// turn hold 64 KiB between them, not 64 MiB, and none of it here; what stays unsent
    /// past the turn (a full socket: a slow reader) is the connection's own. A server
    /// bounding its memory over many connections sums this, not `pending_output` (the
    /// chat example's room limit). Arms `on_drained` as `pending_output` does.
    pub fn held_output(&self) -> Result<usize, ConnError> {
        self.ops.conn_held(self.id)
    }

    /// Half-close, as [`Ctx::shutdown_write`].
    pub fn shutdown_write(&mut self) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::ShutdownWrite)
    }

    /// Graceful close, as [`Ctx::close`]. Closing twice is harmless (`Ok`).
    pub fn close(&mut self) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::Close)
    }

    /// Drops what is still owed, sends `last` instead and closes gracefully (as
    /// [`ConnRef::close`]): a slow consumer reads why it is cut off right after what it
    /// has already received, instead of behind its whole backlog. What the kernel has
    /// taken already cannot be recalled, so on a plain connection a message being
    /// written when this is called may arrive cut short before `last`; on TLS only
    /// output not yet encrypted is dropped (records already made must go whole).
    /// Refused like `send` once our side is shut.
    pub fn close_with(&mut self, last: &[u8]) -> Result<(), ConnError> {
        self.ops.conn_close_with(self.id, last)
    }

    /// Closes at once with a reset, as [`Ctx::abort`].
    pub fn abort(&mut self) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::Abort)
    }

    /// Stops reading from it, as [`Ctx::pause_reading`].
    pub fn pause_reading(&mut self) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::PauseReading)
    }

    /// Resumes reading, as [`Ctx::resume_reading`].
    pub fn resume_reading(&mut self) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::ResumeReading)
    }

    /// Turns the loop's own backpressure on or off, as [`Ctx::set_backpressure`].
    pub fn set_backpressure(&mut self, on: bool) -> Result<(), ConnError> {
        self.ops.conn_op(self.id, ConnOp::Backpressure(on))
    }

    /// The peer's address (a system call; meant for logs).
    pub fn peer_addr(&self) -> Result<PeerAddr, ConnError> {
        self.ops.conn_peer_addr(self.id)
    }
}

/// A [`ConnRef`] made outside any callback ([`crate::EventLoop::conn`]): what its
/// actions cause — writing what was sent, the handler's callbacks — runs when it is
/// dropped, so nothing waits for the next turn.
pub struct ConnGuard<'a, S = ()> {
    pub(crate) conn: ConnRef<'a, S>,
    /// The loop's poison flag: set while the callbacks run, so that a panic in one of
    /// them poisons the loop as a panic inside `run_once` would.
    pub(crate) running_callbacks: &'a mut bool,
}

impl<S> fmt::Debug for ConnGuard<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.conn.fmt(f)
    }
}

impl<'a, S> std::ops::Deref for ConnGuard<'a, S> {
    type Target = ConnRef<'a, S>;
    fn deref(&self) -> &ConnRef<'a, S> {
        &self.conn
    }
}

impl<S> std::ops::DerefMut for ConnGuard<'_, S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl<S> Drop for ConnGuard<'_, S> {
    fn drop(&mut self) {
        // Poisoned already: no more callbacks; `run_once` says why.
        if *self.running_callbacks {
            return;
        }
        *self.running_callbacks = true;
        self.conn.ops.finish_actions();
        *self.running_callbacks = false;
    }
}
