//! Errors, one enum per concern, each message saying what went wrong and what to check.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::net::Endpoint;

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
    pub(crate) fn bind(kind: &'static str, addr: &Endpoint, source: io::Error) -> ListenError {
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
