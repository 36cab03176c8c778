//! The state of one stream connection.
//!
//! Teaches: a connection's life as a state machine (connecting → handshaking → open →
//! closed) plus independent facts the reactor must remember because readiness is
//! edge-triggered: "there may be more to read", "reading is paused", "the peer sent EOF",
//! "our write side is shut". The reactor (`event_loop`) acts on these; this module only
//! holds them.

use std::time::Instant;

use crate::handler::TimerId;
use crate::net::Stream;
use crate::sendbuf::SendBuf;
use crate::tls::TlsSession;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Non-blocking connect in progress: completes on writability.
    Connecting,
    /// TLS handshake in progress: no application data yet.
    Handshaking,
    /// Application data flows.
    Open,
    /// Gone; the slot is freed after the current batch of events.
    Closed,
}

/// Our write direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteShut {
    /// We may still send.
    Open,
    /// Asked for: queue TLS `close_notify` (if any), then flush.
    Requested,
    /// Send what is owed, then shut down the write side.
    Flushing,
    /// FIN queued (and `close_notify` before it, for TLS).
    Done,
}

/// Bytes between the wire and the handler.
#[derive(Debug)]
pub(crate) enum Session {
    /// Plaintext passes straight through.
    Plain,
    /// TLS (boxed: a rustls connection is large and plain connections should stay small).
    Tls(Box<TlsSession>),
}

/// One stream connection's state. Its handler is stored beside it, so a callback can
/// borrow both.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) stream: Stream,
    pub(crate) session: Session,
    pub(crate) sendbuf: SendBuf,
    pub(crate) state: State,
    pub(crate) generation: u32,
    pub(crate) write_shut: WriteShut,
    /// The peer sent EOF (or `close_notify`): it will send nothing more.
    pub(crate) read_eof: bool,
    /// A graceful close is under way: input is read and dropped.
    pub(crate) closing: bool,
    /// The handler asked to close at once.
    pub(crate) abort_requested: bool,
    /// Reading paused because too much output is owed (backpressure).
    pub(crate) bp_paused: bool,
    /// Reading paused by the handler.
    pub(crate) user_paused: bool,
    /// We stopped reading before `WouldBlock`; no new readiness event will come for the
    /// data already waiting, so we must come back to it ourselves.
    pub(crate) maybe_readable: bool,
    /// A write hit `WouldBlock`; tell the handler when the buffer drains.
    pub(crate) write_blocked: bool,
    /// The last time a byte moved in either direction (for the idle timeout).
    pub(crate) last_active: Instant,
    /// The loop's own timers on this connection (idle, handshake, connect, linger), so
    /// closing can cancel them instead of leaving them to expire.
    pub(crate) timers: [Option<TimerId>; 4],
}

impl Connection {
    pub(crate) fn new(
        stream: Stream,
        session: Session,
        state: State,
        generation: u32,
        now: Instant,
    ) -> Connection {
        Connection {
            stream,
            session,
            sendbuf: SendBuf::new(),
            state,
            generation,
            write_shut: WriteShut::Open,
            read_eof: false,
            closing: false,
            abort_requested: false,
            bp_paused: false,
            user_paused: false,
            maybe_readable: false,
            write_blocked: false,
            last_active: now,
            timers: [None; 4],
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn is_reading_paused(&self) -> bool {
        self.bp_paused || self.user_paused
    }
}
