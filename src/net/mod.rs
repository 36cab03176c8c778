//! Sockets: the only module that makes socket system calls.
//!
//! Teaches: address families (`addr`: [`Endpoint`], [`UnixName`]), how a listening socket is made by hand
//! (`listener`), connected streams and the non-blocking connect (`stream`), echo without
//! a copy through a pipe (`splice`), datagram sockets (`datagram`, `mmsg`), and the two
//! results of a non-blocking call that are not
//! failures: `Interrupted` ("a signal arrived, just try again"), which is retried here and
//! never reaches a caller, and `WouldBlock` ("nothing can be done now, wait for
//! readiness"), which reaches callers as `Err(WouldBlock)` — every caller matches on it and
//! treats it as "done for now", never as an error.

mod addr;
mod datagram;
mod listener;
mod mmsg;
mod splice;
mod stream;
mod sys;

pub use addr::{Endpoint, PeerAddr, UnixName, resolve_all, resolve_one, wildcard_for};
pub(crate) use datagram::Datagram;
pub(crate) use listener::{BindOptions, Listener, bind_tcp, bind_udp, bind_unix};
pub(crate) use mmsg::{BATCH, RecvBatch, SendBatch};
pub(crate) use splice::Pipe;
pub(crate) use stream::Stream;
pub(crate) use sys::is_per_connection;
pub use sys::{Adopted, check_adopted};
