//! Errors, one enum per concern, each message saying what went wrong and what to check.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// An address that could not be parsed or resolved.
#[derive(Debug)]
#[non_exhaustive]
pub enum AddrError {
    /// The text is not an address of the expected form.
    Invalid {
        /// What the user wrote.
        input: String,
        /// Why it is not accepted.
        reason: String,
    },
    /// The host name did not resolve.
    Resolve {
        /// What the user wrote.
        input: String,
        /// The resolver's answer.
        source: io::Error,
    },
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Invalid { input, reason } => {
                write!(f, "invalid address {input:?}: {reason}")
            }
            AddrError::Resolve { input, source } => {
                write!(f, "cannot resolve {input:?}: {source}")
            }
        }
    }
}

impl StdError for AddrError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            AddrError::Resolve { source, .. } => Some(source),
            AddrError::Invalid { .. } => None,
        }
    }
}

/// A listening or datagram socket that could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// `socket`, `bind` or `listen` failed.
    Bind {
        /// tcp, udp, tls, unix or unix-dgram.
        kind: &'static str,
        /// The address asked for.
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// A Unix socket path names something that is not a socket; it is never removed.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The address could not be parsed or resolved.
    Addr(AddrError),
    /// Registering with the poller failed.
    Register(io::Error),
}

impl ListenError {
    pub(crate) fn bind(
        kind: &'static str,
        addr: &dyn fmt::Display,
        source: io::Error,
    ) -> ListenError {
        ListenError::Bind {
            kind,
            addr: addr.to_string(),
            source,
        }
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Bind { kind, addr, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::AddrInUse => {
                        " (address already in use: is another server running?)"
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (permission denied: ports below 1024 need privileges, paths need write access)"
                    }
                    io::ErrorKind::AddrNotAvailable => {
                        " (address not available: is it one of this machine's addresses?)"
                    }
                    _ => "",
                };
                write!(f, "cannot listen on {kind} {addr}: {source}{hint}")
            }
            ListenError::NotASocket { path } => write!(
                f,
                "cannot listen on {}: the path exists and is not a socket (not removing it)",
                path.display()
            ),
            ListenError::Addr(e) => e.fmt(f),
            ListenError::Register(e) => write!(f, "cannot register socket with the poller: {e}"),
        }
    }
}

impl StdError for ListenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ListenError::Bind { source, .. } => Some(source),
            ListenError::Addr(e) => Some(e),
            ListenError::Register(e) => Some(e),
            ListenError::NotASocket { .. } => None,
        }
    }
}

impl From<AddrError> for ListenError {
    fn from(e: AddrError) -> Self {
        ListenError::Addr(e)
    }
}

/// Why an action on a connection by its [`crate::ConnId`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnError {
    /// No such connection: it has closed (its `on_close` has run or is about to), or the
    /// id was never one of this loop's.
    Gone,
    /// The id names something else: a listener, a datagram socket or a descriptor source
    /// where a stream connection was expected, or the other way round.
    NotStream,
    /// Still connecting or in its TLS handshake: it cannot take application data yet.
    NotOpen,
    /// Our sending side is shut (`shutdown_write` or `close` was called, or the loop is
    /// stopping): nothing more can be sent.
    WriteShut,
    /// The id was made by another loop: ids are only meaningful to the loop that made
    /// them (a connection lives on one loop's thread).
    OtherLoop,
    /// The loop has stopped: nothing it would do later can happen.
    Stopped,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnError::Gone => "no such connection (it has closed)",
            ConnError::NotStream => {
                "the id names another kind of entry (listener, socket, descriptor)"
            }
            ConnError::NotOpen => "the connection is not open yet",
            ConnError::WriteShut => "the connection's sending side is already shut",
            ConnError::OtherLoop => "the id belongs to another event loop",
            ConnError::Stopped => "the event loop has stopped",
        })
    }
}

impl StdError for ConnError {}

/// Why a datagram could not be sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The destination is an unnamed Unix socket: there is no address to reply to.
    Unaddressable,
    /// The send queue is full; the datagram was dropped.
    QueueFull,
    /// The socket is closed, or the id names no datagram socket of this loop.
    Closed,
    /// The system refused it (for example: message too long, network unreachable).
    Io(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Unaddressable => f.write_str("the sender has no address to reply to"),
            SendError::QueueFull => f.write_str("send queue full"),
            SendError::Closed => f.write_str("the datagram socket is closed"),
            SendError::Io(e) => e.fmt(f),
        }
    }
}

impl StdError for SendError {}

/// Why a message could not be handed to a loop through its [`crate::Sender`]. The message
/// comes back inside.
#[non_exhaustive]
pub enum TrySendError<M> {
    /// The channel holds as many messages as it was made for; try again later.
    Full(M),
    /// The loop has stopped (or was dropped): nothing will read the message.
    Closed(M),
}

impl<M> TrySendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m) | TrySendError::Closed(m) => m,
        }
    }
}

impl<M> fmt::Debug for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<M> fmt::Display for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "the loop's channel is full",
            TrySendError::Closed(_) => "the loop has stopped",
        })
    }
}

impl<M> StdError for TrySendError<M> {}
