//! Why a stream connection ended.

use std::fmt;
use std::io;

/// Why a connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides finished sending and everything owed was delivered.
    Done,
    /// Closed at once by [`crate::Ctx::abort`] (or closed before it was open), dropping
    /// anything unsent. A TCP peer gets a reset, so it cannot mistake the end for a clean one.
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
    /// A closing connection made no progress within the close timeout (its peer neither
    /// read what we owed nor finished its side).
    CloseTimeout,
    /// The loop is stopping and the grace period ran out.
    Shutdown,
    /// A connection on a PROXY protocol listener did not start with a valid header (or
    /// not in time): it was closed before any of it reached the handler.
    BadProxyHeader(String),
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
            CloseReason::Shutdown => f.write_str("the loop stopped and its grace period ran out"),
            CloseReason::BadProxyHeader(why) => f.write_str(why),
        }
    }
}
