//! echoloop: a single-threaded, readiness-based event loop on mio that serves and drives
//! echo traffic over TCP, UDP, TLS and Unix sockets, on IPv4 and IPv6.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod conn;
pub mod echo;
pub mod error;
pub mod event_loop;
pub mod handler;
pub mod net;
pub mod sendbuf;
pub mod stats;
mod timer;
mod tls;
pub mod tls_config;

#[cfg(feature = "cli")]
pub mod cli;

pub use echo::{Echo, EchoDatagram};
pub use error::{AddrError, ListenError};
pub use event_loop::{Bound, Config, ConnectOptions, EventLoop, ListenKind, StopHandle};
pub use handler::{
    CloseReason, ConnId, Ctx, DatagramHandler, DgramCtx, Handler, SendError, TimerId,
};
pub use net::{Endpoint, PeerAddr, UnixName};
pub use stats::Stats;
