//! The HTTP/1.1 of the metrics endpoint: where a request head ends, what it asks for (or
//! what is wrong with it), and how an answer is written. Kept apart from the connection's
//! handler so that the rules a client must follow can be read, and tested, on their own.

use echoloop::handler::Ctx;

/// Where the request head ends (after its blank line), if it has. Lines may end in CRLF
/// or a bare LF, mixed (RFC 9112 lets a server accept LF alone): the head ends at the
/// first line that is empty or holds only `\r`.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            if matches!(&buf[start..i], b"" | b"\r") {
                return Some(i + 1);
            }
            start = i + 1;
        }
    }
    None
}

/// The parts of a request head that matter here.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) keep_alive: bool,
}

/// Parses a request head; the error says what is wrong with it.
pub(crate) fn parse(head: &[u8]) -> Result<Request<'_>, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "not text")?;
    let mut lines = text.lines();
    let line = lines.next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected METHOD PATH HTTP/1.x");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad method");
    }
    let path = target_path(method, path)?;
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let mut keep_alive = http11;
    let mut close = false;
    let mut hosts = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        // No obsolete line folding, no empty or padded names (RFC 9112, 5.1 and 5.2).
        if line.starts_with([' ', '\t']) {
            return Err("folded header lines are not accepted");
        }
        let (name, value) = line.split_once(':').ok_or("bad header line")?;
        // A field name is a token (RFC 9110, 5.1): no spaces, no controls.
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err("bad header name");
        }
        // Field values carry no controls but tab (RFC 9110, 5.5): a NUL or a lone CR
        // is how request smuggling starts.
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in a header value");
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            // A list of options: `close` anywhere in it wins, on any line (RFC 9110,
            // 7.6.1): a later `keep-alive` does not undo it.
            let has = |opt: &str| value.split(',').any(|o| o.trim().eq_ignore_ascii_case(opt));
            if has("close") {
                close = true;
            } else if has("keep-alive") {
                keep_alive = true;
            }
        } else if (name.eq_ignore_ascii_case("content-length") && value.parse::<u64>() != Ok(0))
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            // Nothing here takes a body, and skipping one would mean trusting its length.
            return Err("a request body is not accepted");
        }
    }
    // HTTP/1.1 requests name exactly one host; none may name two (RFC 9112, 3.2).
    if hosts > 1 || (http11 && hosts == 0) {
        return Err("a request must have one Host header");
    }
    let keep_alive = keep_alive && !close;
    Ok(Request {
        method,
        path,
        keep_alive,
    })
}

/// The path a request target names: origin-form (`/metrics`) as is, absolute-form
/// (`http://host/metrics`, which a server must accept: RFC 9112, 3.2.2) by its path, and
/// `*` for OPTIONS only.
fn target_path<'a>(method: &str, target: &'a str) -> Result<&'a str, &'static str> {
    if target.starts_with('/') {
        return Ok(target);
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(target)
        } else {
            Err("bad target")
        };
    }
    let scheme_end = target.find("://").ok_or("bad target")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("bad target");
    }
    let rest = &target[scheme_end + 3..];
    Ok(match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        // No path: the root (a query alone cannot be served here either way).
        _ => "/",
    })
}

/// A token character (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Sends one response (its body only if `with_body`).
pub(crate) fn respond<S>(
    ctx: &mut Ctx<'_, S>,
    status: u16,
    reason: &str,
    body: &str,
    keep_alive: bool,
    with_body: bool,
) {
    let content_type = if status == 200 {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    // A 405 must say what is allowed (RFC 9110, section 15.5.6).
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    ctx.send(head.as_bytes());
    if with_body {
        ctx.send(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{Request, head_end, parse};

    #[test]
    fn metrics_request_parsing() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Request {
                method: "GET",
                path: "/metrics",
                keep_alive: true
            })
        );
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            !parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\n\xff\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        // Line ends mixed: a bare LF, then CRLF for the blank line.
        assert_eq!(
            head_end(b"GET / HTTP/1.1\nConnection: close\n\r\nX"),
            Some(35)
        );
        // Options are a list; a zero length is a number, however written.
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n";
        assert!(!parse(req).unwrap().keep_alive);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n").is_ok());
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n folded: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }

        // issue 18, item 8: `close` wins on any line; absolute-form is accepted, and
        // `OPTIONS *`; Host must be there once; no NUL in values, no space in names.
        let req =
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n";
        assert!(!parse(req).unwrap().keep_alive);
        let abs = parse(b"GET http://127.0.0.1:9100/metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(abs.unwrap().path, "/metrics");
        let bare = parse(b"GET HTTP://example ?a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(bare.is_err(), "a space splits the line into four parts");
        let root = parse(b"GET http://example HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(root.unwrap().path, "/");
        let star = parse(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((star.method, star.path), ("OPTIONS", "*"));
        assert!(
            parse(b"GET / HTTP/1.0\r\n\r\n").is_ok(),
            "HTTP/1.0 needs no Host"
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET ftp://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config(256))]

        /// Whatever a client sends: an answer or an error, never a panic.
        #[test]
        fn metrics_fuzz_request_heads(head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&head);
            let _ = head_end(&head);
        }
    }
}
