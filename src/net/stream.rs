//! Connected stream sockets (TCP and Unix) and the non-blocking connect.
//!
//! Teaches: a non-blocking `read` or `write` does what it can now — possibly part of the
//! buffer (a partial send) — and answers `WouldBlock` when it can do nothing; a
//! non-blocking `connect` returns at once (`EINPROGRESS`) and completes later, on
//! writability, when `SO_ERROR` tells how it went.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::addr::{Endpoint, PeerAddr, UnixName};
use super::sys::retry;

/// A connected stream socket: TCP or Unix. An enum, not a trait object, so the hot path has
/// no indirect calls.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Reads what is there; `Err(WouldBlock)` means the receive queue is empty for now.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        })
    }

    /// Writes what the kernel will take, which may be less than `buf` (a partial send).
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry(|| match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        })
    }

    /// The socket's descriptor, for calls std and mio do not offer (`splice`).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Half-close: sends FIN after everything already queued; we can still read.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        let r = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
        // The peer may already be gone; there is nothing left to tell it then.
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }

    /// Makes the coming close a reset (`SO_LINGER` with a zero timeout): the kernel throws
    /// away what it still holds for the peer and answers with RST instead of FIN, so the
    /// peer sees `ECONNRESET`, not a clean end of a stream we cut short. Unix streams have
    /// no reset: their peer sees EOF whatever we do (Linux reports `ECONNRESET` to it only
    /// if we close with its data unread).
    pub(crate) fn reset_on_close(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO)),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Bytes we wrote that closing now could lose: for TCP, sent but not yet acknowledged
    /// by the peer, or not sent yet (`ioctl(SIOCOUTQ)`). Always 0 for a Unix stream: what
    /// we wrote is already in the peer's receive queue, and stays readable there after we
    /// close (SIOCOUTQ would count it until the peer reads it, though nothing is at risk).
    pub(crate) fn unsent_in_kernel(&self) -> io::Result<usize> {
        match self {
            Stream::Tcp(_) => self.queue_ioctl(libc::TIOCOUTQ),
            Stream::Unix(_) => Ok(0),
        }
    }

    /// Bytes the peer sent that wait unread in our receive queue (`ioctl(FIONREAD)`).
    pub(crate) fn unread_in_kernel(&self) -> io::Result<usize> {
        self.queue_ioctl(libc::FIONREAD)
    }

    fn queue_ioctl(&self, request: libc::c_ulong) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        let mut n: libc::c_int = 0;
        // SAFETY: both requests write one int through the pointer, which points at ours;
        // `fd` is this stream's own open descriptor.
        let rc = unsafe { libc::ioctl(fd, request, &mut n) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The pending socket error (`SO_ERROR`), which is how a non-blocking connect reports
    /// failure.
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(PeerAddr::Inet),
            Stream::Unix(s) => s.peer_addr().map(PeerAddr::Unix),
        }
    }

    /// Starts a non-blocking connect. It returns at once; completion is signalled by
    /// writability, and success must then be checked (see `event_loop::stream`'s
    /// `finish_connect`): writable does not mean connected.
    pub(crate) fn connect(to: &Endpoint, source: Option<IpAddr>) -> io::Result<Stream> {
        match to {
            Endpoint::Inet(a) => {
                let s = match source {
                    None => TcpStream::connect(*a)?,
                    Some(ip) => connect_from(ip, *a)?,
                };
                // Echo traffic is many small request/response messages: Nagle's algorithm
                // would hold the second of two small writes back for a round trip.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Endpoint::Unix(name) => connect_unix(name),
        }
    }
}

/// Starts a non-blocking connect to a Unix stream socket. Made by hand rather than with
/// mio's `connect_addr`, which sends the empty abstract name `@` as a bare address family
/// that Linux refuses (`EINVAL`).
fn connect_unix(name: &UnixName) -> io::Result<Stream> {
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&name.to_sockaddr()?) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let s: std::os::unix::net::UnixStream = std::os::fd::OwnedFd::from(s).into();
    Ok(Stream::Unix(UnixStream::from_std(s)))
}

/// Connects from a chosen local IP: binding first picks the source address, so many
/// connections to one server port can use more than one address's ~28,000 ephemeral ports.
fn connect_from(ip: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    match s.connect(&to.into()) {
        Ok(()) => {}
        // EINPROGRESS: the normal answer of a non-blocking connect.
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}
