//! Sockets: the only module that makes socket system calls.
//!
//! Teaches: address families (IPv4, IPv6, Unix paths and Linux abstract names), how a
//! listening socket is made by hand (`socket` → options → `bind` → `listen`) so that the
//! backlog and `IPV6_V6ONLY` are ours to choose, and the two results of a non-blocking call
//! that are not errors: `WouldBlock` ("done for now, wait for readiness") and `Interrupted`
//! ("a signal arrived, just try again"), both handled here so callers never see them
//! disguised as failures.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net as unix;
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{AddrError, ListenError};

mod mmsg;
pub(crate) use mmsg::{BATCH, RecvBatch, SendBatch};

/// Where a stream or datagram socket lives: an IP address and port, or a Unix socket name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix-domain socket name.
    Unix(UnixName),
}

/// The name of a Unix-domain socket: a file system path or a Linux abstract name.
///
/// Abstract names (written `@name`) live in a kernel namespace, not on disk: nothing to
/// unlink, nothing stale left behind when a server dies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnixName {
    /// A socket file at this path.
    Path(PathBuf),
    /// A Linux abstract-namespace name (the bytes after `@`).
    Abstract(Vec<u8>),
}

impl UnixName {
    /// Parses `@name` as an abstract name and anything else as a path.
    pub fn parse(s: &str) -> Result<UnixName, AddrError> {
        if s.is_empty() {
            return Err(AddrError::Invalid {
                input: s.to_owned(),
                reason: "a Unix socket path cannot be empty".into(),
            });
        }
        match s.strip_prefix('@') {
            Some(name) => Ok(UnixName::Abstract(name.as_bytes().to_vec())),
            None => Ok(UnixName::Path(PathBuf::from(s))),
        }
    }

    fn to_std(&self) -> io::Result<unix::SocketAddr> {
        match self {
            UnixName::Path(p) => unix::SocketAddr::from_pathname(p),
            UnixName::Abstract(name) => unix::SocketAddr::from_abstract_name(name),
        }
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "{}", p.display()),
            UnixName::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(a) => write!(f, "{a}"),
            Endpoint::Unix(u) => write!(f, "{u}"),
        }
    }
}

/// Resolves `host:port` (IPv6 as `[::1]:port`) to every address it names, in resolver order.
pub fn resolve_all(input: &str) -> Result<Vec<SocketAddr>, AddrError> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    // Catch the common mistakes before asking the resolver, so the message says what is wrong.
    let Some((host, port)) = input.rsplit_once(':') else {
        return Err(AddrError::Invalid {
            input: input.to_owned(),
            reason: "expected host:port (IPv6 as [addr]:port)".into(),
        });
    };
    if host.is_empty() {
        return Err(AddrError::Invalid {
            input: input.to_owned(),
            reason: "the host is missing".into(),
        });
    }
    if port.parse::<u16>().is_err() {
        return Err(AddrError::Invalid {
            input: input.to_owned(),
            reason: format!("{port:?} is not a port number (0-65535)"),
        });
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(AddrError::Invalid {
            input: input.to_owned(),
            reason: "write IPv6 addresses in brackets, as [::1]:port".into(),
        });
    }
    let addrs: Vec<SocketAddr> = input
        .to_socket_addrs()
        .map_err(|e| AddrError::Resolve {
            input: input.to_owned(),
            source: e,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(AddrError::Resolve {
            input: input.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses found"),
        });
    }
    Ok(addrs)
}

/// Resolves `host:port` to one address to bind (the resolver's first answer).
pub fn resolve_one(input: &str) -> Result<SocketAddr, AddrError> {
    // resolve_all never returns an empty list, so the first element exists.
    resolve_all(input).map(|v| v[0])
}

/// The address of the other end of a connection, or the sender of a datagram.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerAddr {
    /// An IPv4 or IPv6 peer.
    Inet(SocketAddr),
    /// A Unix-domain peer; may be unnamed (a socket that never bound a name).
    Unix(unix::SocketAddr),
}

impl PeerAddr {
    /// True when a reply can be addressed to this peer (unnamed Unix sockets cannot be).
    pub fn is_addressable(&self) -> bool {
        match self {
            PeerAddr::Inet(_) => true,
            PeerAddr::Unix(a) => !a.is_unnamed(),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Inet(a) => write!(f, "{a}"),
            PeerAddr::Unix(a) => {
                if let Some(p) = a.as_pathname() {
                    write!(f, "{}", p.display())
                } else if let Some(name) = a.as_abstract_name() {
                    write!(f, "@{}", String::from_utf8_lossy(name))
                } else {
                    f.write_str("(unnamed)")
                }
            }
        }
    }
}

/// Runs a system call again while it fails with `EINTR`: a signal interrupting a call is not
/// an error, only a reason to try again.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

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
    /// writability, and success must then be checked (see `EventLoop::finish_connect`).
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
            Endpoint::Unix(name) => Ok(Stream::Unix(UnixStream::connect_addr(&name.to_std()?)?)),
        }
    }
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
        Err(e) if e.raw_os_error() == Some(libc_errno::EINPROGRESS) => {}
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

/// A listening stream socket. A Unix listener remembers the file it created so that it can
/// remove it when it is dropped.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    /// Accepts one pending connection, or `Err(WouldBlock)` when the queue is empty.
    pub(crate) fn try_accept(&self) -> io::Result<(Stream, PeerAddr)> {
        retry(|| match self {
            Listener::Tcp(l) => {
                // TCP_NODELAY is inherited from the listener (set in `ip_socket`): no
                // system call per connection for it.
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

fn unix_endpoint(a: &unix::SocketAddr) -> io::Result<Endpoint> {
    if let Some(p) = a.as_pathname() {
        Ok(Endpoint::Unix(UnixName::Path(p.to_path_buf())))
    } else if let Some(n) = a.as_abstract_name() {
        Ok(Endpoint::Unix(UnixName::Abstract(n.to_vec())))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket has no name",
        ))
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
fn clear_stale_socket(path: &Path, kind: &'static str, datagram: bool) -> Result<(), ListenError> {
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

/// True for the accept errors that mean "out of descriptors or kernel memory": retrying at
/// once would fail the same way and spin the CPU.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The few errno values we name, without a dependency on the libc crate.
mod libc_errno {
    pub(super) const ENOMEM: i32 = 12;
    pub(super) const ENFILE: i32 = 23;
    pub(super) const EMFILE: i32 = 24;
    pub(super) const ENOBUFS: i32 = 105;
    pub(super) const EINPROGRESS: i32 = 115;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_parses_ipv4_ipv6_and_names() {
        assert_eq!(
            resolve_one("127.0.0.1:80").ok(),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            resolve_one("[::1]:0").ok(),
            Some("[::1]:0".parse().unwrap())
        );
        assert!(
            resolve_all("localhost:7")
                .unwrap()
                .iter()
                .all(|a| a.ip().is_loopback())
        );
    }

    #[test]
    fn addr_rejects_bad_input_with_reason() {
        for (input, needle) in [
            ("127.0.0.1", "host:port"),
            ("127.0.0.1:99999", "port"),
            (":80", "host is missing"),
            ("::1:80", "brackets"),
        ] {
            let e = resolve_one(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn unix_name_parses_abstract() {
        assert_eq!(
            UnixName::parse("@echo").unwrap(),
            UnixName::Abstract(b"echo".to_vec())
        );
        assert_eq!(UnixName::parse("@echo").unwrap().to_string(), "@echo");
        assert!(UnixName::parse("").is_err());
    }
}
