//! System call helpers: retrying a call that a signal interrupted (`EINTR`), and telling
//! the errors that mean "out of resources" (descriptors, memory) from the rest.

use std::io;

/// Runs a system call again while it fails with `EINTR`: a signal interrupting a call is not
/// an error, only a reason to try again.
pub(crate) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// An `accept` failure that concerns only the connection being accepted (it was reset or
/// gave up before we took it, a network error on its path): the listener is fine and
/// the next connection may be accepted at once. Anything else (`EINVAL` from a socket
/// that does not listen, `EBADF`...) would fail the same way on every try.
pub(crate) fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT
        )
    )
}

/// What a descriptor handed over from elsewhere must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adopted {
    /// A TCP or Unix stream socket that is listening.
    Listener,
    /// A UDP or Unix datagram socket.
    Datagram,
}

/// Checks a descriptor before the loop serves it: a socket of the right type and family,
/// listening if it is to be accepted on (`SO_TYPE`, `SO_DOMAIN`, `SO_PROTOCOL`,
/// `SO_ACCEPTCONN`). Served as the wrong thing, it would fail on every event — a
/// connected socket's `accept` says `EINVAL` forever — and spin the loop.
pub fn check_adopted(sock: &socket2::Socket, want: Adopted) -> io::Result<()> {
    use socket2::{Domain, Protocol, Type};
    let refuse = |what: String| {
        let wanted = match want {
            Adopted::Listener => "a listening TCP or Unix stream socket",
            Adopted::Datagram => "a UDP or Unix datagram socket",
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, where {wanted} was expected"),
        ))
    };
    let ty = sock
        .r#type()
        .map_err(|e| io::Error::new(e.kind(), format!("not a socket ({e})")))?;
    let domain = sock.domain()?;
    // With its article, for the messages.
    let (family, a_family) = match domain {
        Domain::IPV4 | Domain::IPV6 => ("IP", "an IP"),
        Domain::UNIX => ("Unix", "a Unix"),
        _ => return refuse(format!("a socket of another family ({domain:?})")),
    };
    match (want, ty) {
        (Adopted::Listener, Type::STREAM) => {
            if family == "IP" && sock.protocol()?.is_some_and(|p| p != Protocol::TCP) {
                return refuse("a stream socket of another protocol than TCP".into());
            }
            if !sock.is_listener()? {
                return refuse(format!(
                    "{a_family} stream socket that is not listening (connected, or bound \
                     without `listen`)"
                ));
            }
            Ok(())
        }
        (Adopted::Datagram, Type::DGRAM) => {
            if family == "IP" && sock.protocol()?.is_some_and(|p| p != Protocol::UDP) {
                return refuse("a datagram socket of another protocol than UDP".into());
            }
            Ok(())
        }
        (_, Type::STREAM) => refuse(format!("{a_family} stream socket")),
        (_, Type::DGRAM) => refuse(format!("{a_family} datagram socket")),
        (_, Type::SEQPACKET) => refuse(format!("{a_family} SOCK_SEQPACKET socket")),
        (_, other) => refuse(format!("{a_family} socket of type {other:?}")),
    }
}
