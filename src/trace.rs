//! Watching the reactor decide: one [`TraceEvent`] per decision the loop makes about a
//! socket — what happened, to which connection, the figures, and the concept it is.
//!
//! Teaches: what `strace` cannot show, *why* each system call is made or skipped. A short
//! read means the receive queue is drained, so no second read is made; a write that the
//! kernel took only part of leaves the rest in the send buffer until the socket says it
//! is writable again; a peer's FIN is not "close now". Each event names the section of
//! [`crate::guide`] that explains it.
//!
//! Off, tracing costs one test of a boolean per decision: the events are built only when
//! [`crate::Config::trace`] is set or the `log` crate's trace level is enabled for the
//! event's target (`echoloop::stream`, `echoloop::accept`, `echoloop::tls`, …), which the
//! loop checks once, when it is created. Nothing is formatted unless asked for (the
//! [`Display`](std::fmt::Display) of an event is the line `serve --trace` prints).

use std::fmt;
use std::sync::Arc;

use crate::conn::CloseReason;
use crate::id::ConnId;
use crate::net::PeerAddr;

/// One decision of the loop. Events borrow what they describe; copy out what you keep.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum TraceEvent<'a> {
    /// The poller reported readiness for a connection (edge-triggered: something changed).
    Ready {
        /// The connection.
        id: ConnId,
        /// Data (or an EOF) to read.
        readable: bool,
        /// Room in the send buffer.
        writable: bool,
        /// The peer shut its sending side (EPOLLRDHUP) or the socket hung up.
        hang_up: bool,
        /// An error is pending on the socket (`SO_ERROR`).
        error: bool,
    },
    /// A connection was accepted on a listener.
    Accepted {
        /// The listener.
        listener: ConnId,
        /// The new connection.
        id: ConnId,
    },
    /// `accept` failed for lack of descriptors (EMFILE/ENFILE): accepting pauses.
    EmfileBackoff {
        /// The listener.
        listener: ConnId,
        /// How long accepting waits, in milliseconds.
        ms: u64,
    },
    /// A read returned `n` bytes.
    Read {
        /// The connection.
        id: ConnId,
        /// Bytes read.
        n: usize,
    },
    /// The read returned less than the buffer held: the receive queue is drained, so the
    /// trailing read that would only say `WouldBlock` is skipped.
    ShortRead {
        /// The connection.
        id: ConnId,
        /// Bytes read.
        n: usize,
        /// The buffer's size.
        asked: usize,
    },
    /// A read said `WouldBlock`: nothing more to read until the next readiness event.
    WouldBlock {
        /// The connection.
        id: ConnId,
    },
    /// A read returned 0: the peer's FIN.
    Eof {
        /// The connection.
        id: ConnId,
    },
    /// The kernel took `n` of the `of` bytes offered.
    Wrote {
        /// The connection.
        id: ConnId,
        /// Bytes the kernel took.
        n: usize,
        /// Bytes offered.
        of: usize,
        /// Bytes still owed afterwards, waiting in our send buffer.
        buffered: usize,
    },
    /// Reading stopped: the bytes owed to the peer passed the high-water mark.
    PausedReading {
        /// The connection.
        id: ConnId,
        /// Bytes owed to the peer.
        owed: usize,
    },
    /// Reading resumes: what was owed fell to the low-water mark (or the handler asked).
    ResumedReading {
        /// The connection.
        id: ConnId,
    },
    /// `shutdown(Write)` sent our FIN after everything queued; reading goes on.
    ShutdownWrite {
        /// The connection.
        id: ConnId,
    },
    /// A TLS handshake begins: the connection reads and writes handshake records until
    /// it is done, before any application byte.
    HandshakeStarted {
        /// The connection.
        id: ConnId,
    },
    /// A TLS handshake step waits for a later turn: this turn's budget for handshakes
    /// is spent (`Config::handshake_budget`), and plain connections go first.
    HandshakeWaits {
        /// The connection.
        id: ConnId,
    },
    /// Bytes moved from the receive queue to the send queue without a copy (zero-copy
    /// echo through a pipe, `splice(2)`).
    Spliced {
        /// The connection.
        id: ConnId,
        /// Bytes moved.
        n: usize,
    },
    /// The TLS handshake finished.
    HandshakeDone {
        /// The connection.
        id: ConnId,
        /// The TLS version negotiated.
        version: Option<&'static str>,
        /// The cipher suite negotiated.
        cipher: Option<&'static str>,
        /// The application protocol agreed by ALPN, if any.
        alpn: Option<&'a [u8]>,
    },
    /// Our TLS `close_notify` is queued, before the TCP FIN: the peer can tell the end of
    /// the stream from a cut.
    CloseNotifySent {
        /// The connection.
        id: ConnId,
    },
    /// The peer's TLS `close_notify` arrived: its stream ended cleanly.
    CloseNotifyReceived {
        /// The connection.
        id: ConnId,
    },
    /// The application closed a connection that had already sent its FIN: it waits,
    /// reading and dropping, for the peer's FIN, so that its data cannot be met by a reset.
    Lingering {
        /// The connection.
        id: ConnId,
    },
    /// A timer was set for a connection or socket.
    TimerSet {
        /// Its owner.
        owner: ConnId,
        /// After how long, in milliseconds.
        ms: u64,
    },
    /// A timer fired.
    TimerFired {
        /// Its owner (`None` for a timer of the loop's own).
        owner: Option<ConnId>,
        /// What kind: `deadline` (connect, handshake, idle, close), `timer` (the
        /// application's), `retry` (a queued datagram), `accept back-off`, `loop timer`.
        kind: &'static str,
    },
    /// The connection closed, and why.
    Closed {
        /// The connection.
        id: ConnId,
        /// Why.
        reason: &'a CloseReason,
    },
    /// The close is a reset (`SO_LINGER` 0: RST instead of FIN), so that a cut stream never
    /// looks whole to the peer.
    Reset {
        /// The connection.
        id: ConnId,
    },
    /// A datagram socket received one datagram.
    Received {
        /// The socket.
        id: ConnId,
        /// Its size.
        n: usize,
        /// Its sender.
        from: &'a PeerAddr,
    },
    /// One `recvmmsg` brought several datagrams (the queue ran deep).
    Batch {
        /// The socket.
        id: ConnId,
        /// How many.
        k: usize,
    },
    /// A datagram went out at once (`sendto`), or was queued because the socket's send
    /// buffer was full (datagram sends block too).
    Sent {
        /// The socket.
        id: ConnId,
        /// Its size.
        n: usize,
        /// Where to.
        to: &'a PeerAddr,
        /// Queued, not sent yet.
        queued: bool,
    },
}

impl TraceEvent<'_> {
    /// The `log` target of the area the event belongs to.
    pub fn target(&self) -> &'static str {
        match self {
            TraceEvent::Accepted { .. } | TraceEvent::EmfileBackoff { .. } => "echoloop::accept",
            TraceEvent::HandshakeStarted { .. }
            | TraceEvent::HandshakeWaits { .. }
            | TraceEvent::HandshakeDone { .. }
            | TraceEvent::CloseNotifySent { .. }
            | TraceEvent::CloseNotifyReceived { .. } => "echoloop::tls",
            TraceEvent::Received { .. } | TraceEvent::Batch { .. } | TraceEvent::Sent { .. } => {
                "echoloop::dgram"
            }
            _ => "echoloop::stream",
        }
    }

    /// The section of [`crate::guide`] that explains it.
    pub fn guide(&self) -> &'static str {
        match self {
            TraceEvent::Ready { .. } | TraceEvent::Read { .. } | TraceEvent::WouldBlock { .. } => {
                "readiness"
            }
            TraceEvent::ShortRead { .. } => "readiness (short reads)",
            TraceEvent::Accepted { .. } => "readiness",
            TraceEvent::EmfileBackoff { .. } => "running out of descriptors",
            TraceEvent::Wrote { .. } => "partial writes",
            TraceEvent::Spliced { .. } => "partial writes (zero-copy echo)",
            TraceEvent::PausedReading { .. } | TraceEvent::ResumedReading { .. } => "backpressure",
            TraceEvent::Eof { .. } | TraceEvent::ShutdownWrite { .. } => "half-close",
            TraceEvent::HandshakeStarted { .. }
            | TraceEvent::HandshakeWaits { .. }
            | TraceEvent::HandshakeDone { .. }
            | TraceEvent::CloseNotifySent { .. }
            | TraceEvent::CloseNotifyReceived { .. } => "TLS",
            TraceEvent::Closed { .. } | TraceEvent::Reset { .. } => {
                "a connection as a state machine"
            }
            TraceEvent::Lingering { .. } => "half-close",
            TraceEvent::TimerSet { .. } | TraceEvent::TimerFired { .. } => {
                "blocking, non-blocking and timeouts"
            }
            TraceEvent::Received { .. } | TraceEvent::Batch { .. } | TraceEvent::Sent { .. } => {
                "datagrams"
            }
        }
    }
}

impl fmt::Display for TraceEvent<'_> {
    /// `#3.1 wrote 61440 of 65536 (partial write: 4096 buffered, waiting for writable) [guide: partial writes]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TraceEvent::Ready {
                id,
                readable,
                writable,
                hang_up,
                error,
            } => {
                write!(f, "{id}")?;
                for (on, word) in [
                    (readable, "readable"),
                    (writable, "writable"),
                    (hang_up, "hang-up"),
                    (error, "error"),
                ] {
                    if on {
                        write!(f, " {word}")?;
                    }
                }
            }
            TraceEvent::Accepted { listener, id } => write!(f, "{id} accepted on {listener}")?,
            TraceEvent::EmfileBackoff { listener, ms } => write!(
                f,
                "{listener} emfile: out of descriptors, accepting again in {ms} ms"
            )?,
            TraceEvent::Read { id, n } => write!(f, "{id} read {n} bytes")?,
            TraceEvent::ShortRead { id, n, asked } => write!(
                f,
                "{id} short read ({n} of {asked}): queue drained, no trailing read"
            )?,
            TraceEvent::WouldBlock { id } => write!(f, "{id} would block")?,
            TraceEvent::Eof { id } => write!(f, "{id} eof (the peer's FIN)")?,
            TraceEvent::Wrote {
                id,
                n,
                of,
                buffered,
            } => {
                write!(f, "{id} wrote {n} of {of}")?;
                if n < of {
                    write!(
                        f,
                        " (partial write: {buffered} buffered, waiting for writable)"
                    )?;
                }
            }
            TraceEvent::PausedReading { id, owed } => {
                write!(f, "{id} paused reading (high water: {owed} bytes owed)")?;
            }
            TraceEvent::ResumedReading { id } => write!(f, "{id} resumed reading (low water)")?,
            TraceEvent::ShutdownWrite { id } => {
                write!(f, "{id} shutdown(write): our FIN after all output")?;
            }
            TraceEvent::HandshakeStarted { id } => write!(f, "{id} handshake started")?,
            TraceEvent::Spliced { id, n } => {
                write!(
                    f,
                    "{id} spliced {n} bytes: socket -> pipe -> socket, no copy"
                )?;
            }
            TraceEvent::HandshakeWaits { id } => {
                write!(
                    f,
                    "{id} handshake step waits (this turn's handshake budget is spent)"
                )?;
            }
            TraceEvent::HandshakeDone {
                id,
                version,
                cipher,
                alpn,
            } => {
                write!(
                    f,
                    "{id} handshake done ({}, {}",
                    version.unwrap_or("version unknown"),
                    cipher.unwrap_or("cipher unknown")
                )?;
                match alpn {
                    Some(p) => write!(f, ", ALPN {})", String::from_utf8_lossy(p))?,
                    None => write!(f, ", no ALPN)")?,
                }
            }
            TraceEvent::CloseNotifySent { id } => write!(f, "{id} close_notify sent")?,
            TraceEvent::CloseNotifyReceived { id } => write!(f, "{id} close_notify received")?,
            TraceEvent::Lingering { id } => write!(
                f,
                "{id} lingering: our FIN is out, reading until the peer's"
            )?,
            TraceEvent::TimerSet { owner, ms } => write!(f, "{owner} timer set ({ms} ms)")?,
            TraceEvent::TimerFired { owner, kind } => match owner {
                Some(o) => write!(f, "{o} timer fired ({kind})")?,
                None => write!(f, "timer fired ({kind})")?,
            },
            TraceEvent::Closed { id, reason } => write!(f, "{id} close: {reason}")?,
            TraceEvent::Reset { id } => {
                write!(
                    f,
                    "{id} reset (SO_LINGER 0: owed output dropped, RST not FIN)"
                )?;
            }
            TraceEvent::Received { id, n, from } => {
                write!(f, "{id} received {n} bytes from {from}")?;
            }
            TraceEvent::Batch { id, k } => write!(f, "{id} batch of {k} (recvmmsg)")?,
            TraceEvent::Sent { id, n, to, queued } => {
                if queued {
                    write!(f, "{id} would block: {n} bytes to {to} queued")?;
                } else {
                    write!(f, "{id} sent {n} bytes to {to}")?;
                }
            }
        }
        write!(f, " [guide: {}]", self.guide())
    }
}

/// Receives every [`TraceEvent`] of a loop (see [`crate::Config::trace`]). Called on the
/// loop's thread, in the middle of its work: keep it short, and never block (hand the
/// event to a queue or a non-blocking writer).
#[derive(Clone)]
pub struct Tracer(pub Arc<dyn Fn(&TraceEvent<'_>) + Send + Sync>);

impl Tracer {
    /// A tracer calling `f`.
    pub fn new(f: impl Fn(&TraceEvent<'_>) + Send + Sync + 'static) -> Tracer {
        Tracer(Arc::new(f))
    }
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tracer(..)")
    }
}

/// Where a loop's events go: decided once, when the loop is made.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sink {
    /// Whether any event is wanted at all: the one test made per decision.
    pub(crate) on: bool,
    tracer: Option<Tracer>,
    log: bool,
}

impl Sink {
    pub(crate) fn new(tracer: Option<Tracer>) -> Sink {
        let log = log::log_enabled!(target: "echoloop::stream", log::Level::Trace)
            || log::log_enabled!(target: "echoloop::accept", log::Level::Trace)
            || log::log_enabled!(target: "echoloop::dgram", log::Level::Trace)
            || log::log_enabled!(target: "echoloop::tls", log::Level::Trace);
        Sink {
            on: tracer.is_some() || log,
            tracer,
            log,
        }
    }

    /// Hands `ev` to the tracer and to `log`.
    #[cold]
    pub(crate) fn emit(&self, ev: &TraceEvent<'_>) {
        if let Some(t) = &self.tracer {
            (t.0)(ev);
        }
        if self.log {
            log::trace!(target: ev.target(), "{ev}");
        }
    }
}

/// Emits an event if tracing is on; the event is built only then.
macro_rules! trace_event {
    ($sink:expr, $ev:expr) => {
        if $sink.on {
            $sink.emit(&$ev);
        }
    };
}
pub(crate) use trace_event;
