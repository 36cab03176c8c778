//! The PROXY protocol header (versions 1 and 2) that load balancers put in front of a
//! connection to say who the client really is.
//!
//! Teaches: behind a load balancer (HAProxy, an AWS NLB, nginx's stream module) every
//! connection comes from the balancer, so `getpeername` names the balancer, not the
//! client. With the PROXY protocol the balancer starts each connection with one header
//! carrying the client's address — text in version 1 (`PROXY TCP4 1.2.3.4 5.6.7.8 1000
//! 80\r\n`), binary in version 2 (a 12-byte signature, then the command, the family and
//! the addresses). The header is the balancer's, not the client's: it is parsed and
//! removed before a single byte reaches the application (or, for TLS, before the
//! ClientHello), and whatever does not parse closes the connection.
//!
//! Everything here is a pure function of the bytes received so far, so it is fuzzed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 1 headers are at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// The largest version 2 header we accept: the addresses plus room for the usual TLVs
/// (the format allows 64 KiB, which a peer could use to make us buffer).
pub(crate) const V2_MAX: usize = 16 + 1024;

/// What a header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    /// The client's address; `None` for a health check from the balancer itself
    /// (`LOCAL`, `UNKNOWN`) or a family without one (Unix).
    pub(crate) source: Option<SocketAddr>,
}

/// Why a connection's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one but does not parse.
    Malformed(&'static str),
    /// Longer than any header we accept.
    Oversized,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            ProxyError::Oversized => f.write_str("PROXY protocol header too long"),
        }
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes are needed,
/// `Ok(Some((header, length)))` once complete (the application's bytes start at
/// `length`), an error as soon as `buf` cannot be the start of a valid header.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first {
        b'P' => parse_v1(buf),
        b'\r' => parse_v2(buf),
        _ => Err(ProxyError::Missing),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::Missing);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Oversized)
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::Oversized);
    }
    let line = std::str::from_utf8(&buf[prefix.len()..end])
        .map_err(|_| ProxyError::Malformed("not text"))?;
    let mut f = line.split(' ');
    let family = f.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The balancer could not tell (or it is its own health check): the rest of the
        // line is to be ignored.
        return Ok(Some((ProxyHeader { source: None }, end + 2)));
    }
    let (Some(src), Some(_dst), Some(sport), Some(_dport), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(ProxyError::Malformed(
            "expected PROXY TCP4|TCP6 SRC DST SPORT DPORT",
        ));
    };
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::Malformed("bad IPv4 source"))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::Malformed("bad IPv6 source"))?,
        _ => return Err(ProxyError::Malformed("unknown family")),
    };
    let port = port(sport).ok_or(ProxyError::Malformed("bad source port"))?;
    Ok(Some((
        ProxyHeader {
            source: Some(SocketAddr::new(ip, port)),
        },
        end + 2,
    )))
}

/// A decimal port as version 1 writes it: digits only, no leading zeros.
fn port(s: &str) -> Option<u16> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok { s.parse().ok() } else { None }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    if 16 + len > V2_MAX {
        return Err(ProxyError::Oversized);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    let source = match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (a health check); addresses are ignored.
        0x0 => None,
        0x1 => match family {
            // TCP or UDP over IPv4: source, destination (4 bytes each), then the ports.
            0x11 | 0x12 => {
                let a = body
                    .get(..12)
                    .ok_or(ProxyError::Malformed("IPv4 addresses cut short"))?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
            }
            0x21 | 0x22 => {
                let a = body
                    .get(..36)
                    .ok_or(ProxyError::Malformed("IPv6 addresses cut short"))?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(
                    Ipv6Addr::from(ip).into(),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // Unix sockets, or unspecified: no address to report.
            0x00 | 0x31 | 0x32 => None,
            _ => return Err(ProxyError::Malformed("unknown address family")),
        },
        _ => return Err(ProxyError::Malformed("unknown command")),
    };
    Ok(Some((ProxyHeader { source }, total)))
}

#[cfg(test)]
mod tests {
    use super::{ProxyError, ProxyHeader, V2_SIGNATURE, parse};

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn proxy_v1_headers() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 80\r\nhello";
        let (hdr, n) = parse(h).unwrap().unwrap();
        assert_eq!(hdr.source, Some("192.0.2.1:5000".parse().unwrap()));
        assert_eq!(&h[n..], b"hello");
        let (hdr, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 7 8\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(hdr.source, Some("[2001:db8::1]:7".parse().unwrap()));
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\n").unwrap().unwrap().0,
            ProxyHeader { source: None }
        );
        // In pieces: not yet, then complete.
        assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        for (bad, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], ProxyError::Missing),
            (b"PROXX TCP4", ProxyError::Missing),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
                ProxyError::Malformed("bad source port"),
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 80\r\n",
                ProxyError::Malformed("bad IPv4 source"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 80\r\n",
                ProxyError::Malformed("unknown family"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                ProxyError::Malformed("expected PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
            ),
        ] {
            assert_eq!(parse(bad), Err(want), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::Oversized));
    }

    #[test]
    fn proxy_v2_headers() {
        let body = [192, 0, 2, 1, 198, 51, 100, 2, 0x13, 0x88, 0, 80];
        let mut h = v2(0x21, 0x11, &body);
        h.extend_from_slice(b"data");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(hdr.source, Some("192.0.2.1:5000".parse().unwrap()));
        assert_eq!(&h[n..], b"data");
        // LOCAL: a health check, no address.
        assert_eq!(parse(&v2(0x20, 0x00, &[])).unwrap().unwrap().0.source, None);
        // Any prefix of a good header asks for more.
        for cut in 1..h.len() - 4 {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(matches!(
            parse(&v2(0x11, 0x11, &body)),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x11, &body[..5])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x51, &body)),
            Err(ProxyError::Malformed(_))
        ));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&big), Err(ProxyError::Oversized));
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config(512))]

        /// Whatever a peer sends: more needed, a header, or an error — never a panic, and
        /// a complete header never claims more bytes than were given.
        #[test]
        fn proxy_fuzz_headers(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), v2_prefix in proptest::prelude::any::<bool>()) {
            let input = if v2_prefix { [V2_SIGNATURE.as_slice(), &bytes].concat() } else { bytes };
            if let Ok(Some((_, n))) = parse(&input) {
                proptest::prop_assert!(n <= input.len());
            }
        }
    }
}
