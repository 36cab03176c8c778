//! Listening sockets made by hand, and the Unix socket files they own.
//!
//! Teaches: `socket` → options → `bind` → `listen`, so that the backlog, `SO_REUSEADDR`,
//! `SO_REUSEPORT` and `IPV6_V6ONLY` are ours to choose; accepting until `WouldBlock`; and
//! telling a stale Unix socket file from a live one before binding over it.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net as unix;
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpListener, UdpSocket, UnixListener};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::addr::{Endpoint, PeerAddr, UnixName, unix_endpoint};
use super::stream::Stream;
use super::sys::{Adopted, check_adopted, retry};
use crate::error::ListenError;

/// A listening stream socket. A Unix listener remembers the file it created so that it can
/// remove it when it is dropped.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    /// A listening socket made by someone else (systemd's socket activation): TCP or
    /// Unix, told apart by its address family. We did not create its file, so we never
    /// remove it.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<Listener> {
        let sock = Socket::from(fd);
        check_adopted(&sock, Adopted::Listener)?;
        sock.set_nonblocking(true)?;
        if sock.local_addr()?.is_unix() {
            let l: unix::UnixListener = std::os::fd::OwnedFd::from(sock).into();
            Ok(Listener::Unix(UnixListener::from_std(l), None))
        } else {
            // As for our own listeners (`ip_socket`): accepted sockets inherit it.
            sock.set_tcp_nodelay(true)?;
            let l: std::net::TcpListener = sock.into();
            Ok(Listener::Tcp(TcpListener::from_std(l)))
        }
    }

    /// Accepts one pending connection, or `Err(WouldBlock)` when the queue is empty.
    pub(crate) fn try_accept(&self) -> io::Result<(Stream, PeerAddr)> {
        retry(|| match self {
            Listener::Tcp(l) => {
                // TCP_NODELAY is inherited from the listener (set in `ip_socket`, and
                // in `adopt` for handed-over ones): no system call per connection for it.
                let (s, a) = l.accept()?;
                Ok((Stream::Tcp(s), PeerAddr::Inet(a)))
            }
            Listener::Unix(l, _) => {
                let (s, a) = l.accept()?;
                Ok((Stream::Unix(s), PeerAddr::Unix(a)))
            }
        })
    }

    /// The address actually bound (the port the OS chose when port 0 was asked for).
    pub(crate) fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Endpoint::Inet),
            Listener::Unix(l, _) => unix_endpoint(&l.local_addr()?),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            // We created this file; leaving it would make the next start find a stale socket.
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(l, _) => l.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(l, _) => l.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(l, _) => l.deregister(r),
        }
    }
}

/// Options for binding an IP socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions {
    pub(crate) backlog: i32,
    pub(crate) reuse_port: bool,
}

/// Makes an IP socket by hand: mio's `TcpListener::bind` fixes the backlog at 128, and under
/// a burst of connects an overflowing accept queue drops SYNs, costing each client a 1 s
/// retransmit. The kernel caps our request at `net.core.somaxconn`.
fn ip_socket(addr: SocketAddr, ty: Type, opts: BindOptions) -> io::Result<Socket> {
    let proto = if ty == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if ty == Type::STREAM {
        // Lets a restarted server bind while old connections sit in TIME_WAIT.
        s.set_reuse_address(true)?;
        // Echo is many small request/response messages: Nagle's algorithm would hold a
        // small write back for a round trip. Accepted sockets inherit this on Linux.
        s.set_tcp_nodelay(true)?;
    }
    if opts.reuse_port {
        // Several reactors (threads) bind the same address; the kernel spreads
        // connections and datagrams across them.
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `[::]` then means IPv6 only, so `0.0.0.0:p` and `[::]:p` can both be served as
        // separate listeners, the same on every system whatever its default.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

pub(crate) fn bind_tcp(addr: SocketAddr, opts: BindOptions) -> Result<Listener, ListenError> {
    let err = |source| ListenError::bind("tcp", &Endpoint::Inet(addr), source);
    let s = ip_socket(addr, Type::STREAM, opts).map_err(err)?;
    s.listen(opts.backlog).map_err(err)?;
    Ok(Listener::Tcp(TcpListener::from_std(s.into())))
}

pub(crate) fn bind_udp(addr: SocketAddr, opts: BindOptions) -> Result<UdpSocket, ListenError> {
    let s = ip_socket(addr, Type::DGRAM, opts)
        .map_err(|e| ListenError::bind("udp", &Endpoint::Inet(addr), e))?;
    Ok(UdpSocket::from_std(s.into()))
}

/// A path that already exists may be a socket left by a server that died (stale: safe to
/// replace) or one a live server is using (stealing it would cut that server off from new
/// clients). Connecting tells the two apart. Anything that is not a socket is never removed.
pub(super) fn clear_stale_socket(
    path: &Path,
    kind: &'static str,
    datagram: bool,
) -> Result<(), ListenError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    let name = Endpoint::Unix(UnixName::Path(path.to_path_buf()));
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let probe = if datagram {
        unix::UnixDatagram::unbound().and_then(|d| d.connect(path))
    } else {
        unix::UnixStream::connect(path).map(drop)
    };
    match probe {
        Ok(()) => Err(ListenError::bind(
            kind,
            &name,
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "a live server is answering on this socket",
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket file {}", path.display());
            std::fs::remove_file(path).map_err(|e| ListenError::bind(kind, &name, e))
        }
        // EPROTOTYPE: a live socket of the other type (stream vs datagram) has the path.
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(ListenError::bind(
            kind,
            &name,
            io::Error::other(format!(
                "a Unix {} socket is already bound there; a stream and a datagram socket \
                 cannot share a path: give each its own",
                if datagram { "stream" } else { "datagram" }
            )),
        )),
        Err(e) => Err(ListenError::bind(kind, &name, e)),
    }
}

pub(crate) fn bind_unix(name: &UnixName) -> Result<Listener, ListenError> {
    let ep = Endpoint::Unix(name.clone());
    if let UnixName::Path(p) = name {
        clear_stale_socket(p, "unix", false)?;
    }
    let addr = name
        .to_std()
        .map_err(|e| ListenError::bind("unix", &ep, e))?;
    let l = unix::UnixListener::bind_addr(&addr).map_err(|e| ListenError::bind("unix", &ep, e))?;
    l.set_nonblocking(true)
        .map_err(|e| ListenError::bind("unix", &ep, e))?;
    let owned = match name {
        UnixName::Path(p) => Some(p.clone()),
        UnixName::Abstract(_) => None,
    };
    Ok(Listener::Unix(UnixListener::from_std(l), owned))
}
