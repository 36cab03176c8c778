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
//! # Embedding: state, other connections, other threads
//!
//! A loop can carry application state that every callback reaches (`ctx.state()`), act
//! on any of its connections by id (`ctx.conn(id)`), and take work from other threads
//! through a bounded channel that wakes it. Here a thread hands the loop a line, and the
//! loop sends it to every client it has:
//!
//! ```
//! use std::io::Read;
//! use std::time::Duration;
//! use echoloop::{Config, ConnId, Ctx, Endpoint, EventLoop, Handler, ListenKind, LoopCtx};
//!
//! /// Every connected client, in the loop's state.
//! #[derive(Default)]
//! struct Clients(Vec<ConnId>);
//!
//! struct Client;
//! impl Handler<Clients> for Client {
//!     fn on_open(&mut self, ctx: &mut Ctx<'_, Clients>) {
//!         let me = ctx.id();
//!         ctx.state().0.push(me);
//!     }
//!     fn on_data(&mut self, _: &mut Ctx<'_, Clients>, _: &[u8]) {}
//! }
//!
//! let mut el = EventLoop::with_state(Config::default(), Clients::default())?;
//! let any = Endpoint::Inet("127.0.0.1:0".parse()?);
//! let Endpoint::Inet(addr) = el.listen(&any, ListenKind::Tcp, || Box::new(Client))?.addr
//! else { unreachable!() };
//! // Messages from other threads arrive here, on the loop's thread.
//! let tx = el.channel(16, |ctx: &mut LoopCtx<'_, Clients>, line: String| {
//!     for id in ctx.state().0.clone() {
//!         let _ = ctx.conn(id).send(line.as_bytes()); // Err(Gone) if it left meanwhile
//!     }
//! });
//! let mut client = std::net::TcpStream::connect(addr)?;
//! while el.state().0.is_empty() {
//!     el.run_once(Some(Duration::from_millis(10)))?;
//! }
//! let stop = el.stop_handle();
//! std::thread::spawn(move || {
//!     tx.try_send("news\n".to_string()).expect("room in the channel");
//!     stop.stop(Duration::from_secs(1));
//! });
//! el.run()?;
//! let mut got = String::new();
//! client.read_to_string(&mut got)?;
//! assert_eq!(got, "news\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Sends to a connection from anywhere coalesce: one write per connection per loop turn,
//! however many callbacks sent to it. A descriptor of the application's own (a child's
//! pipe, a pidfd, a timerfd...) joins the loop with [`EventLoop::add_fd`]; the loop's own
//! timers come from [`LoopCtx::set_timer`]; a graceful stop asks every handler to finish
//! ([`Handler::on_stopping`]).
//!
//! `examples/proxy.rs` (a TCP proxy with backpressure both ways and half-close carried
//! across), `examples/chat.rs` (lines to every other client, slow readers cut off),
//! `examples/tail.rs` (a child process's output to every client, through a pipe),
//! `examples/host_poll.rs` (the loop inside a host's own poller) and `examples/embed.rs`
//! (work handed in from another thread) go further.
//!
//! # Layout
//!
//! Modules are layered: each uses only those above it in this table (the
//! `layering` test checks that no import goes in a circle), and the reactor at the bottom
//! is the only part that knows all the others.
//!
//! | module | what it does | socket concept it teaches |
//! |---|---|---|
//! | [`guide`] | documentation only | from a blocking echo server to the reactor |
//! | `id` | [`ConnId`] (also [`ListenerId`], [`SocketId`]), [`SourceId`], [`TimerId`] | why ids carry a generation (slot reuse) and their loop |
//! | [`error`] | errors per concern | — |
//! | `sendbuf` | unsent bytes of one connection | partial writes |
//! | `timer` | a deadline heap feeding the poll timeout | timers without threads |
//! | [`net`] | the only code making socket system calls | address families, backlog, `WouldBlock` and `EINTR`, non-blocking connect, stale Unix socket files, zero-copy echo with `splice` |
//! | `tls`, [`tls_config`] | rustls driven by hand; certificates, keys, trust | TLS as a state machine between byte streams; hostname verification |
//! | `config` | [`Config`], [`ConnectOptions`], [`ListenKind`] | — |
//! | `conn` | one stream connection's state machine, without I/O | connect, handshake, half-close either way, lingering, abort, deadlines, backpressure |
//! | [`stats`] | the loop's counters (closes counted by their reason) | — |
//! | `dgram` | a datagram socket's reply queue | datagram sends block too |
//! | [`handler`] | the protocol interface and its contexts | separating protocol from I/O; acting on other connections |
//! | [`echo`] | echo as a handler | — |
//! | [`event_loop`] | the reactor: poll, dispatch, drivers for streams, datagrams, listeners, descriptors of the application's own, other threads | edge-triggered readiness, fairness (reads and TLS handshakes), output that coalesces, EMFILE, slot reuse, `recvmmsg`, waking a loop, a stop in two phases, busy polling on the sockets |
//!
//! The `echoloop` command (feature `cli`, on by default) is not part of the library: it is
//! a client of the public API above, and its modules (`src/cli/`) belong to the binary
//! (`src/main.rs`).
//!
//! # Panics and errors
//!
//! A panic is a bug: no input from a peer or a user may cause one (the connection state
//! machine and the parsers of user input are fuzzed to keep it so: see the README). Errors
//! are typed (`#[non_exhaustive]` enums per concern: [`AddrError`], [`ListenError`],
//! [`ConnError`], [`SendError`], [`TrySendError`], [`tls_config::TlsConfigError`]) with
//! messages a user can act on. A panic in *your* handler unwinds to the caller of
//! [`EventLoop::run_once`] and leaves the loop poisoned: see [`event_loop`], "When a
//! handler panics".
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
mod sendbuf;
pub mod stats;
#[cfg(test)]
mod test_support;
mod timer;
mod tls;
pub mod tls_config;
pub mod trace;

pub use echo::{Echo, EchoDatagram};
pub use error::{AddrError, ConnError, ListenError, SendError, TrySendError};
pub use event_loop::{Bound, Config, ConnectOptions, EventLoop, ListenKind, Sender, StopHandle};
pub use handler::{
    CloseReason, ConnGuard, ConnId, ConnRef, Ctx, DatagramHandler, DgramCtx, FdInterest, FdReady,
    Handler, ListenerId, LoopContext, LoopCtx, SocketId, SourceId, TimerId,
};
pub use net::{Endpoint, PeerAddr, UnixName};
pub use stats::Stats;
