//! Addresses: IP and Unix socket names, parsing and resolving them.
//!
//! Teaches: address families — IPv4, IPv6 (in brackets, so the port stays apart from the
//! colons), Unix paths and Linux abstract names — and that one host name may stand for
//! several addresses, to be tried in turn.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
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

    /// The name as socket2 spells it, for sockets made by hand. Unlike mio's conversion of
    /// a std address, it keeps the empty abstract name `@` (the family, then one NUL byte):
    /// mio sends the family alone, an address Linux refuses to connect to (`EINVAL`).
    pub(crate) fn to_sockaddr(&self) -> io::Result<socket2::SockAddr> {
        match self {
            UnixName::Path(p) => socket2::SockAddr::unix(p),
            UnixName::Abstract(name) => {
                // socket2 takes an abstract name as a "path" that starts with NUL.
                let mut bytes = Vec::with_capacity(name.len() + 1);
                bytes.push(0);
                bytes.extend_from_slice(name);
                socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
        }
    }

    /// The name as the standard library's Unix socket address (to send datagrams to it,
    /// say). Fails for a path too long for `sun_path`.
    pub fn to_std(&self) -> io::Result<unix::SocketAddr> {
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

/// Resolves `host:port` (IPv6 as `[::1]:port`) to every address of a server to connect
/// or send to, in resolver order.
///
/// Unlike [`resolve_one`] (an address to bind), it refuses two addresses a connect cannot
/// be relied on to reach. Port 0 means "any free port" only when binding: a connect there
/// is refused and a UDP send fails with `EINVAL`. An IPv4-mapped IPv6 literal such as
/// `[::ffff:127.0.0.1]` is out of reach of an IPv6-only socket (as the UDP sockets bound
/// here are: `ENETUNREACH`) and within reach of a TCP one only as the system is set up;
/// the error gives the IPv4 spelling. A host name that resolves to mapped addresses gets
/// the IPv4 addresses they stand for instead: the user cannot spell those differently.
pub fn resolve_all(input: &str) -> Result<Vec<SocketAddr>, AddrError> {
    let invalid = |reason: String| AddrError::Invalid {
        input: input.to_owned(),
        reason,
    };
    let literal = input.parse::<SocketAddr>().is_ok();
    let mut addrs = lookup(input)?;
    // One port for all of them: it was written once.
    if addrs.iter().any(|a| a.port() == 0) {
        return Err(invalid(
            "port 0 cannot be connected to (it means \"any free port\" only when binding): \
             give the server's port"
                .into(),
        ));
    }
    for a in &mut addrs {
        let SocketAddr::V6(v6) = *a else { continue };
        let Some(v4) = v6.ip().to_ipv4_mapped() else {
            continue;
        };
        if literal {
            return Err(invalid(format!(
                "{} is an IPv4 address written as IPv6 (IPv4-mapped): whether an IPv6 \
                 socket reaches it depends on the system (IPV6_V6ONLY), and the UDP \
                 client's never does; write {v4}:{} instead",
                v6.ip(),
                v6.port()
            )));
        }
        *a = SocketAddr::new(v4.into(), v6.port());
    }
    Ok(addrs)
}

/// Every address `host:port` names, port 0 included; never an empty list.
fn lookup(input: &str) -> Result<Vec<SocketAddr>, AddrError> {
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
        let host = &input[..=close];
        match input[close + 1..].strip_prefix(':') {
            Some(port) => (host, port),
            None if close + 1 == input.len() => {
                return Err(invalid(format!("missing port; write {host}:PORT")));
            }
            None => {
                return Err(invalid(format!(
                    "expected {host}:PORT, found {:?} after ]",
                    &input[close + 1..]
                )));
            }
        }
    } else {
        match input.rsplit_once(':') {
            Some(split) => split,
            None if input.is_empty() => {
                return Err(invalid(
                    "empty; expected host:port (IPv6 as [addr]:port)".into(),
                ));
            }
            None => {
                return Err(invalid(format!(
                    "missing port; write {input}:PORT (host:port, IPv6 as [addr]:port)"
                )));
            }
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

/// The wildcard address of `peer`'s family (`0.0.0.0` or `::`): where a client binds
/// to reach `peer` from any local address.
pub fn wildcard_for(peer: SocketAddr) -> std::net::IpAddr {
    if peer.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

/// Resolves `host:port` to one address to bind (the resolver's first answer); port 0
/// lets the system choose. A server to reach is [`resolve_all`]'s.
pub fn resolve_one(input: &str) -> Result<SocketAddr, AddrError> {
    // lookup never returns an empty list, so the first element exists.
    lookup(input).map(|v| v[0])
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
            ("[::1]", "missing port; write [::1]:PORT"),
            ("127.0.0.1", "missing port; write 127.0.0.1:PORT"),
            ("[::1]x", "expected [::1]:PORT"),
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

    /// The port is decimal digits, 0 to 65535, and nothing else: no sign, no spaces, no
    /// other base, no digits of other scripts.
    #[test]
    fn addr_port_is_decimal_digits_only() {
        for port in [
            "+80",
            "-1",
            " 80",
            "80 ",
            "0x50",
            "\u{ff18}\u{ff10}",
            "65536",
            "",
            "1e3",
        ] {
            let input = format!("127.0.0.1:{port}");
            let e = split_host_port(&input).expect_err(&input).to_string();
            assert!(e.contains("not a port number"), "{input}: {e}");
        }
        assert_eq!(split_host_port("h:65535").ok(), Some(("h", 65535)));
        assert_eq!(split_host_port("h:080").ok(), Some(("h", 80)));
    }

    /// Port 0 means "any port" to bind; a server cannot be reached there.
    #[test]
    fn addr_port_zero_is_no_server_address() {
        for input in [
            "127.0.0.1:0",
            "[::1]:0",
            "[::ffff:127.0.0.1]:0",
            "localhost:0",
        ] {
            let e = resolve_all(input).expect_err(input).to_string();
            assert!(e.contains("port 0 cannot be connected to"), "{input}: {e}");
        }
        // Binding there is what port 0 is for.
        assert_eq!(
            resolve_one("127.0.0.1:0").ok(),
            Some("127.0.0.1:0".parse().unwrap())
        );
    }

    /// `[::ffff:127.0.0.1]:7` is 127.0.0.1:7 in disguise, which an IPv6-only socket cannot
    /// send to: the message gives the spelling that works.
    #[test]
    fn addr_ipv4_mapped_literal_names_its_ipv4_spelling() {
        let e = resolve_all("[::ffff:127.0.0.1]:7").unwrap_err().to_string();
        assert!(e.contains("IPv4-mapped"), "{e}");
        assert!(e.contains("write 127.0.0.1:7 instead"), "{e}");
        // Not every address with zeros in front is mapped.
        assert_eq!(
            resolve_all("[::1]:7").ok(),
            Some(vec!["[::1]:7".parse().unwrap()])
        );
    }

    /// `@` is the abstract name with no bytes: the address is the family and one NUL, not
    /// the family alone (which Linux takes as "no address" and refuses to connect to).
    #[test]
    fn unix_empty_abstract_name_is_one_nul_byte() {
        let empty = UnixName::parse("@").unwrap();
        assert_eq!(empty, UnixName::Abstract(Vec::new()));
        let sa = empty.to_sockaddr().unwrap();
        let family = std::mem::size_of::<libc::sa_family_t>();
        assert_eq!(sa.len() as usize, family + 1);
        assert_eq!(sa.as_abstract_namespace(), Some(&b""[..]));
        let named = UnixName::parse("@echo").unwrap().to_sockaddr().unwrap();
        assert_eq!(named.as_abstract_namespace(), Some(&b"echo"[..]));
        let path = UnixName::parse("/tmp/x.sock")
            .unwrap()
            .to_sockaddr()
            .unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/tmp/x.sock"))
        );
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
