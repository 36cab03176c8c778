//! Addresses: IP and Unix socket names, parsing and resolving them.
//!
//! Teaches: address families — IPv4, IPv6 (in brackets, so the port stays apart from the
//! colons), Unix paths and Linux abstract names — and that one host name may stand for
//! several addresses, to be tried in turn.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net as unix;
use std::path::PathBuf;

use crate::error::AddrError;

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

    pub(crate) fn to_std(&self) -> io::Result<unix::SocketAddr> {
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
    // Catch the common mistakes before asking the resolver, so the message says what is
    // wrong (and nothing malformed ever reaches it).
    split_host_port(input)?;
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

/// The syntax of `host:port`, checked without resolving anything: the host as written
/// (brackets kept for IPv6) and the port.
pub(crate) fn split_host_port(input: &str) -> Result<(&str, u16), AddrError> {
    let invalid = |reason: String| AddrError::Invalid {
        input: input.to_owned(),
        reason,
    };
    let (host, port) = if input.starts_with('[') {
        // `[v6]:port`: the colons inside the brackets are the address's own.
        let Some(close) = input.find(']') else {
            return Err(invalid("an opening [ without its closing ]".into()));
        };
        match input[close + 1..].strip_prefix(':') {
            Some(port) => (&input[..=close], port),
            None => {
                return Err(invalid(
                    "expected [addr]:port: the port is missing after ]".into(),
                ));
            }
        }
    } else {
        match input.rsplit_once(':') {
            Some(split) => split,
            None => return Err(invalid("expected host:port (IPv6 as [addr]:port)".into())),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid("the host is missing".into()));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(invalid(
            "write IPv6 addresses in brackets, as [::1]:port".into(),
        ));
    }
    // Digits only: `u16::from_str` would also take `+80`.
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(p) if port_ok => Ok((host, p)),
        _ => Err(invalid(format!("{port:?} is not a port number (0-65535)"))),
    }
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

/// The endpoint a Unix socket address names, if it has a name.
pub(crate) fn unix_endpoint(a: &unix::SocketAddr) -> io::Result<Endpoint> {
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

#[cfg(test)]
mod tests {
    use super::{SocketAddr, UnixName, resolve_all, resolve_one, split_host_port};

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
    fn addr_syntax_is_checked_before_any_resolver() {
        assert_eq!(split_host_port("[::1]:80").ok(), Some(("[::1]", 80)));
        assert_eq!(
            split_host_port("example.test:7").ok(),
            Some(("example.test", 7))
        );
        for (input, needle) in [
            ("[::1]", "port is missing"),
            ("[::1", "closing ]"),
            ("127.0.0.1:+80", "not a port"),
            ("h:", "not a port"),
            ("[]:80", "host is missing"),
        ] {
            let e = split_host_port(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config(256))]

        /// Any text: a clear answer, never a panic; and what is accepted really says
        /// `host:port` with a port in digits.
        #[test]
        fn addr_fuzz_split_host_port(input in ".{0,40}") {
            if let Ok((host, port)) = split_host_port(&input) {
                proptest::prop_assert!(!host.is_empty());
                let tail = &input[host.len()..];
                let digits = tail.strip_prefix(':').unwrap_or("");
                proptest::prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                proptest::prop_assert_eq!(digits.parse::<u16>().ok(), Some(port));
            }
        }

        #[test]
        fn addr_fuzz_socket_addrs_round_trip(ip in proptest::prelude::any::<std::net::IpAddr>(), port in proptest::prelude::any::<u16>()) {
            let text = SocketAddr::new(ip, port).to_string();
            proptest::prop_assert_eq!(split_host_port(&text).map(|(_, p)| p).ok(), Some(port));
        }

        #[test]
        fn addr_fuzz_unix_names(input in ".{0,40}") {
            match UnixName::parse(&input) {
                Ok(UnixName::Abstract(name)) => proptest::prop_assert_eq!(&name[..], &input.as_bytes()[1..]),
                Ok(UnixName::Path(p)) => proptest::prop_assert_eq!(p.to_string_lossy(), input.as_str()),
                Err(_) => proptest::prop_assert!(input.is_empty()),
            }
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
