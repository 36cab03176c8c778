//! echoloop: a single-threaded, readiness-based event loop on [mio] that serves and drives
//! echo traffic over TCP, UDP, TLS and Unix sockets, on IPv4 and IPv6.
//!
//! It is three things: a fast, correct echo server and load generator (the `echoloop`
//! binary), a library event loop an application can put its own protocol on, and a
//! reference for non-blocking sockets in which every subtle point is named where it is
//! handled. New to non-blocking sockets? Start with the [`guide`].
//!
//! # Example
//!
//! An echo server on a free port, a client talking to it, and a stop from another thread:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind};
//!
//! let mut el = EventLoop::new(Config::default())?;
//! let bound = el.listen(&Endpoint::Inet("127.0.0.1:0".parse()?), ListenKind::Tcp, || Box::new(Echo))?;
//! let Endpoint::Inet(addr) = bound.addr else { unreachable!() };
//! let stop = el.stop_handle();
//! let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
//!     let mut s = std::net::TcpStream::connect(addr)?;
//!     s.write_all(b"ping")?;
//!     s.shutdown(std::net::Shutdown::Write)?;
//!     let mut back = Vec::new();
//!     s.read_to_end(&mut back)?;
//!     stop.stop(Duration::from_secs(1)); // from another thread, through mio's Waker
//!     Ok(back)
//! });
//! el.run()?;
//! assert_eq!(client.join().unwrap()?, b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! | module | what it does | socket concept it teaches |
//! |---|---|---|
//! | [`guide`] | documentation only | from a blocking echo server to the reactor |
//! | [`net`] | the only code making socket system calls | address families, backlog, `WouldBlock` and `EINTR`, stale Unix socket files |
//! | [`sendbuf`] | unsent bytes of one connection | partial writes |
//! | `conn` | one connection's state | connection life cycle, edge-triggered bookkeeping |
//! | [`event_loop`] | the reactor: poll, dispatch, timers, stop | readiness, backpressure, fairness, half-close, EMFILE, slot reuse |
//! | `event_loop/stream` | one stream connection's I/O | edge-triggered reads, partial writes, backpressure, half-close, non-blocking connect |
//! | `event_loop/datagram` | datagram sockets | whole datagrams, blocking sends, `recvmmsg`/`sendmmsg` when the queue runs deep |
//! | `net/mmsg` | many datagrams per system call | batching system calls |
//! | [`handler`] | the protocol interface | separating protocol from I/O |
//! | [`echo`] | echo as a handler | — |
//! | `tls` | rustls driven by hand | TLS as a state machine between byte streams |
//! | [`tls_config`] | certificates, keys, trust | secure default contexts, hostname verification |
//! | [`stats`] | counters | — |
//! | `cli` | the `echoloop` command (feature `cli`) | — |
//!
//! # Panics and errors
//!
//! A panic is a bug: no input from a peer or a user may cause one. Errors are typed
//! (`#[non_exhaustive]` enums per concern: [`AddrError`], [`ListenError`],
//! [`tls_config::TlsConfigError`]) with messages a user can act on.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod config;
mod conn;
mod dgram;
pub mod echo;
pub mod error;
pub mod event_loop;
pub mod guide;
pub mod handler;
mod id;
pub mod net;
pub mod sendbuf;
pub mod stats;
#[cfg(test)]
mod test_support;
mod timer;
mod tls;
pub mod tls_config;

#[cfg(feature = "cli")]
pub mod cli;

pub use echo::{Echo, EchoDatagram};
pub use error::{AddrError, ConnError, ListenError, SendError, TrySendError};
pub use event_loop::{Bound, Config, ConnectOptions, EventLoop, ListenKind, Sender, StopHandle};
pub use handler::{
    CloseReason, ConnId, ConnRef, Ctx, DatagramHandler, DgramCtx, Handler, LoopCtx, TimerId,
};
pub use net::{Endpoint, PeerAddr, UnixName};
pub use stats::Stats;
