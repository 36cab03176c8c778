//! Datagram sockets: UDP and Unix datagram.
//!
//! Teaches: every datagram stands alone and arrives whole or not at all, so the receive
//! buffer must hold the largest one; sending can block too; a Unix datagram sender that
//! never bound a name cannot be answered.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net as unix;
use std::path::PathBuf;

use mio::event::Source;
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::addr::{Endpoint, PeerAddr, UnixName, unix_endpoint};
use super::listener::clear_stale_socket;
use super::mmsg::{self, RecvBatch, SendBatch};
use super::sys::retry;
use crate::error::ListenError;

/// A datagram socket: UDP, or Unix datagram.
///
/// The Unix one is kept as a std socket registered through its file descriptor because
/// replying to an abstract-named or autobound sender needs `send_to_addr`, which only the
/// std type offers.
#[derive(Debug)]
pub(crate) enum Datagram {
    Udp(UdpSocket),
    Unix(unix::UnixDatagram, Option<PathBuf>),
}

impl Datagram {
    pub(crate) fn bind_unix(name: &UnixName) -> Result<Datagram, ListenError> {
        let ep = Endpoint::Unix(name.clone());
        if let UnixName::Path(p) = name {
            clear_stale_socket(p, "unix-dgram", true)?;
        }
        let err = |e| ListenError::bind("unix-dgram", &ep, e);
        let s = unix::UnixDatagram::bind_addr(&name.to_std().map_err(err)?).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        let owned = match name {
            UnixName::Path(p) => Some(p.clone()),
            UnixName::Abstract(_) => None,
        };
        Ok(Datagram::Unix(s, owned))
    }

    /// A datagram socket made by someone else (systemd's socket activation): UDP or Unix,
    /// told apart by its address family. We never remove its file.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<Datagram> {
        let sock = socket2::Socket::from(fd);
        super::sys::check_adopted(&sock, super::sys::Adopted::Datagram)?;
        sock.set_nonblocking(true)?;
        if sock.local_addr()?.is_unix() {
            Ok(Datagram::Unix(
                std::os::fd::OwnedFd::from(sock).into(),
                None,
            ))
        } else {
            let s: std::net::UdpSocket = sock.into();
            Ok(Datagram::Udp(UdpSocket::from_std(s)))
        }
    }

    /// A Unix datagram socket with no name, for a client that only needs replies if the
    /// server can address them: the caller binds or autobinds as it sees fit.
    pub(crate) fn from_unix(s: unix::UnixDatagram) -> io::Result<Datagram> {
        s.set_nonblocking(true)?;
        Ok(Datagram::Unix(s, None))
    }

    /// Receives one datagram; a datagram larger than `buf` would be truncated, so callers
    /// pass a buffer that holds the largest one (65,507 bytes over IPv4).
    ///
    /// Unix datagrams, unlike UDP's, may be larger than any fixed buffer (up to the
    /// sender's socket buffer): the size is peeked first (`MSG_PEEK | MSG_TRUNC` returns the
    /// real length), and one that does not fit is consumed and reported as `InvalidData`
    /// rather than passed on cut short.
    pub(crate) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, PeerAddr)> {
        retry(|| match self {
            Datagram::Udp(s) => s.recv_from(buf).map(|(n, a)| (n, PeerAddr::Inet(a))),
            Datagram::Unix(s, _) => {
                let size = socket2::SockRef::from(s)
                    .recv_with_flags(&mut [], libc::MSG_PEEK | libc::MSG_TRUNC)?;
                let (n, a) = s.recv_from(buf)?;
                if size > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "dropped a {size}-byte datagram: larger than {} bytes",
                            buf.len()
                        ),
                    ));
                }
                Ok((n, PeerAddr::Unix(a)))
            }
        })
    }

    /// Sends one whole datagram (never partial); `Err(WouldBlock)` when the socket's send
    /// buffer is full: datagram sockets can block too.
    pub(crate) fn try_send_to(&self, buf: &[u8], to: &PeerAddr) -> io::Result<usize> {
        retry(|| match (self, to) {
            (Datagram::Udp(s), PeerAddr::Inet(a)) => s.send_to(buf, *a),
            (Datagram::Unix(s, _), PeerAddr::Unix(a)) => s.send_to_addr(buf, a),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family does not match the socket",
            )),
        })
    }

    /// Connects the socket to `to`: the kernel then delivers only `to`'s datagrams and
    /// reports ICMP errors about it (an unreachable port becomes `ConnectionRefused` on
    /// the next receive or send), which an unconnected socket never hears of.
    pub(crate) fn connect(&self, to: &PeerAddr) -> io::Result<()> {
        match (self, to) {
            (Datagram::Udp(s), PeerAddr::Inet(a)) => s.connect(*a),
            (Datagram::Unix(s, _), PeerAddr::Unix(a)) => s.connect_addr(a),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family does not match the socket",
            )),
        }
    }

    /// True for UDP, which can move many datagrams per system call (see [`mmsg`]).
    pub(crate) fn is_udp(&self) -> bool {
        matches!(self, Datagram::Udp(_))
    }

    /// UDP: receives up to [`BATCH`] datagrams with one `recvmmsg`.
    pub(crate) fn try_recv_batch(&self, b: &mut RecvBatch) -> io::Result<usize> {
        mmsg::recv_batch(self.fd(), b)
    }

    /// UDP: sends datagrams `from..` of `b` with one `sendmmsg`; returns how many went.
    pub(crate) fn try_send_batch(&self, b: &SendBatch, from: usize) -> io::Result<usize> {
        mmsg::send_batch(self.fd(), b, from)
    }

    pub(crate) fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Datagram::Udp(s) => s.local_addr().map(Endpoint::Inet),
            Datagram::Unix(s, _) => unix_endpoint(&s.local_addr()?),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Datagram::Udp(s) => s.local_addr().map(PeerAddr::Inet),
            Datagram::Unix(s, _) => s.local_addr().map(PeerAddr::Unix),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Datagram::Udp(s) => s.as_raw_fd(),
            Datagram::Unix(s, _) => s.as_raw_fd(),
        }
    }
}

impl Drop for Datagram {
    fn drop(&mut self) {
        if let Datagram::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Source for Datagram {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.fd()).deregister(r)
    }
}
