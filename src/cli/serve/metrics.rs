//! `serve --metrics ADDR`: Prometheus metrics served by the echo loop itself, as an
//! ordinary [`Handler`] — an example of a small HTTP/1.1 protocol on the loop.
//!
//! Teaches: a request/response protocol on a stream. Requests arrive in pieces and
//! back to back (pipelining), so they are framed by their blank line, answered in order,
//! and the connection stays open (HTTP/1.1 keep-alive) unless asked to close. Everything a
//! client controls is bounded: a request head larger than [`MAX_HEAD`] gets 431, one that
//! does not finish within [`REQUEST_TIMEOUT`] is dropped, anything malformed gets 400 and
//! a close; a client that sends requests without reading the answers is paused once
//! [`MAX_UNREAD_ANSWERS`] wait for it (backpressure). Its listener is left out of the
//! loop's statistics and limits (`EventLoop::count_in_stats`): a scrape is not an echo
//! connection, and a server at `--max-connections` still answers its monitoring. The echo
//! traffic shares the loop and is not to be disturbed, so the work metrics may do in one
//! turn of the loop is bounded: the page is rendered at most once per turn, whatever the
//! number of requests (all answers of a turn share the same numbers, [`RenderCache`]), and
//! each connection gets at most [`ANSWERS_PER_TURN`] answers per turn (a pipelined storm of
//! `HEAD`s waits for the next turns, and echo goes on between them).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use echoloop::handler::{Ctx, Handler, TimerId};
use echoloop::stats::Stats;

/// The largest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Answers a client may leave unread before its further requests wait (and reading
/// from it pauses) until it reads them.
pub(crate) const MAX_UNREAD_ANSWERS: usize = 64 * 1024;

/// Answers one connection gets per turn of the loop at most; pipelined requests beyond
/// it wait for the next turn.
pub(crate) const ANSWERS_PER_TURN: usize = 8;

/// A request must be complete this long after its first byte (or after the connection
/// opened, or after the previous answer).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the numbers come from: the whole server's counters now (all workers).
pub(crate) trait StatsSource {
    /// The whole server's counters, given this loop's own (fresher) ones.
    fn server_stats(&self, own: Stats) -> Stats;
    /// When the server started.
    fn started(&self) -> Instant;
    /// The page as last rendered, shared by all metrics connections of the loop.
    fn render_cache(&mut self) -> &mut RenderCache;
}

/// The metrics page of the current loop turn: rendering costs far more than copying, and
/// numbers a few microseconds apart say nothing new.
#[derive(Debug, Default)]
pub(crate) struct RenderCache {
    /// The loop's clock (read once per turn) when `text` was rendered.
    at: Option<Instant>,
    text: String,
}

impl RenderCache {
    /// Whether the page was rendered in the turn whose clock says `now`.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.at == Some(now)
    }

    /// The page of the turn whose clock says `now`.
    pub(crate) fn set(&mut self, now: Instant, page: String) {
        self.text = page;
        self.at = Some(now);
    }
}

/// One metrics connection.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Bytes of the request(s) not answered yet.
    buf: Vec<u8>,
    timer: Option<TimerId>,
    /// Reading is paused until the answers queued so far are taken.
    paused: bool,
    /// Goes on answering at the loop's next turn.
    next_turn: Option<TimerId>,
}

impl<S: StatsSource> Handler<S> for Metrics {
    fn on_open(&mut self, ctx: &mut Ctx<'_, S>) {
        self.timer = Some(ctx.set_timer(REQUEST_TIMEOUT));
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, S>, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.answer(ctx);
    }

    fn on_drained(&mut self, ctx: &mut Ctx<'_, S>) {
        // The client has read our answers: take up the requests it sent meanwhile.
        if self.paused {
            self.go_on(ctx);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, S>, timer: TimerId) {
        if self.timer == Some(timer) {
            // Too slow (or an idle keep-alive connection): free the slot.
            ctx.close();
        } else if self.next_turn == Some(timer) {
            self.next_turn = None;
            // The kernel took the last batch whole: go on. If it could not, the socket is
            // full and `on_drained` says when the client has read.
            if ctx.pending_output() == 0 {
                self.go_on(ctx);
            }
        }
    }
}

impl Metrics {
    fn go_on<S: StatsSource>(&mut self, ctx: &mut Ctx<'_, S>) {
        self.paused = false;
        ctx.resume_reading();
        self.answer(ctx);
    }

    /// Answers every complete request, in order (pipelining), at most
    /// [`MAX_UNREAD_ANSWERS`] at a time: then reading pauses, and the rest waits for the
    /// next turn of the loop, or while the client is not reading, for `on_drained`. A
    /// client that sends requests without reading the answers is held up, not given all
    /// the memory it asks for.
    fn answer<S: StatsSource>(&mut self, ctx: &mut Ctx<'_, S>) {
        // What was answered is cut from the buffer once, at the end: cutting each request
        // as it is answered would move the rest of a pipelined burst every time.
        let mut pos = 0;
        self.answer_from(ctx, &mut pos);
        let done = pos.min(self.buf.len());
        self.buf.drain(..done);
    }

    /// [`Metrics::answer`], with the requests starting at `pos` in the buffer; moves `pos`
    /// past each one answered.
    fn answer_from<S: StatsSource>(&mut self, ctx: &mut Ctx<'_, S>, pos: &mut usize) {
        let mut answered = 0;
        loop {
            // Blank lines before a request line are ignored (RFC 9112, section 2.2).
            let blank = self.buf[*pos..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            *pos += blank;
            if *pos == self.buf.len() {
                return;
            }
            // Answers not yet taken by the kernel, this callback's included; or this
            // turn's share of the loop used up.
            if ctx.pending_output() >= MAX_UNREAD_ANSWERS || answered == ANSWERS_PER_TURN {
                self.paused = true;
                ctx.pause_reading();
                if self.next_turn.is_none() {
                    self.next_turn = Some(ctx.set_timer(Duration::ZERO));
                }
                return;
            }
            // A head still open past the limit, or one that ended past it: too large.
            let end = head_end(&self.buf[*pos..]);
            if end.unwrap_or(self.buf.len() - *pos) > MAX_HEAD {
                respond(ctx, 431, "Request Header Fields Too Large", "", false, true);
                self.buf = Vec::new();
                ctx.close();
                return;
            }
            let Some(end) = end else {
                return;
            };
            let head = self.buf[*pos..*pos + end].to_vec();
            *pos += end;
            let keep_alive = match parse(&head) {
                Ok(req) => {
                    let page = req.path == "/metrics" || req.path.starts_with("/metrics?");
                    let (status, reason, body) = if req.method != "GET" && req.method != "HEAD" {
                        (405, "Method Not Allowed", String::new())
                    } else if page {
                        let now = ctx.now();
                        if !ctx.state().render_cache().is_fresh(now) {
                            // The numbers too cost a copy and a sum over the workers: only
                            // once per turn.
                            let own = ctx.stats();
                            let state = ctx.state();
                            let page = render(&state.server_stats(own), state.started());
                            state.render_cache().set(now, page);
                        }
                        // Lent out for the answer and put back below: a copy of a few
                        // kilobytes per request would cost more than all the rest.
                        (
                            200,
                            "OK",
                            std::mem::take(&mut ctx.state().render_cache().text),
                        )
                    } else {
                        (404, "Not Found", "not found: try /metrics\n".to_string())
                    };
                    // HEAD: the same head as GET (Content-Length included), no body.
                    let with_body = req.method != "HEAD";
                    respond(ctx, status, reason, &body, req.keep_alive, with_body);
                    if status == 200 {
                        ctx.state().render_cache().text = body;
                    }
                    req.keep_alive
                }
                Err(why) => {
                    let body = format!("bad request: {why}\n");
                    respond(ctx, 400, "Bad Request", &body, false, true);
                    false
                }
            };
            answered += 1;
            if !keep_alive {
                self.buf = Vec::new();
                ctx.close();
                return;
            }
            // The next request gets its own time.
            if let Some(t) = self.timer.take() {
                ctx.cancel_timer(t);
            }
            self.timer = Some(ctx.set_timer(REQUEST_TIMEOUT));
        }
    }
}

/// Where the request head ends (after its blank line), if it has. Lines may end in CRLF
/// or a bare LF, mixed (RFC 9112 lets a server accept LF alone): the head ends at the
/// first line that is empty or holds only `\r`.
fn head_end(buf: &[u8]) -> Option<usize> {
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
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    keep_alive: bool,
}

/// Parses a request head; the error says what is wrong with it.
fn parse(head: &[u8]) -> Result<Request<'_>, &'static str> {
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
fn respond<S>(
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

/// The Prometheus text exposition (format 0.0.4) of `s`.
pub(crate) fn render(s: &Stats, started: Instant) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "echoloop_connections_open",
        "gauge",
        "Stream connections open now.",
        &one(s.connections_open),
    );
    metric(
        "echoloop_connections_accepted_total",
        "counter",
        "Stream connections accepted.",
        &one(s.accepted),
    );
    metric(
        "echoloop_connections_proxied_total",
        "counter",
        "Connections whose PROXY protocol header was read (--proxy-protocol).",
        &one(s.proxied),
    );
    metric(
        "echoloop_connections_rejected_total",
        "counter",
        "Connections accepted and closed at once because --max-connections was reached.",
        &one(s.rejected),
    );
    let closed: Vec<(String, u64)> = s
        .closed_by
        .iter()
        .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v))
        .collect();
    metric(
        "echoloop_connections_closed_total",
        "counter",
        "Stream connections closed, by reason.",
        &closed,
    );
    let per = |f: fn(&echoloop::stats::Traffic) -> u64| -> Vec<(String, u64)> {
        s.traffic
            .iter()
            .map(|(t, tr)| (format!("{{transport=\"{}\"}}", t.name()), f(tr)))
            .collect()
    };
    metric(
        "echoloop_received_bytes_total",
        "counter",
        "Bytes read from sockets (ciphertext for TLS), by transport.",
        &per(|t| t.bytes_in),
    );
    metric(
        "echoloop_sent_bytes_total",
        "counter",
        "Bytes written to sockets (ciphertext for TLS), by transport.",
        &per(|t| t.bytes_out),
    );
    let dgram = |f: fn(&echoloop::stats::Traffic) -> u64| -> Vec<(String, u64)> {
        s.traffic
            .iter()
            .filter(|(t, _)| {
                matches!(
                    t,
                    echoloop::stats::Transport::Udp | echoloop::stats::Transport::UnixDgram
                )
            })
            .map(|(t, tr)| (format!("{{transport=\"{}\"}}", t.name()), f(tr)))
            .collect()
    };
    metric(
        "echoloop_datagrams_received_total",
        "counter",
        "Datagrams received, by transport.",
        &dgram(|t| t.datagrams_in),
    );
    metric(
        "echoloop_datagrams_sent_total",
        "counter",
        "Datagrams sent, by transport.",
        &dgram(|t| t.datagrams_out),
    );
    metric(
        "echoloop_datagrams_dropped_total",
        "counter",
        "Datagrams dropped: a full send queue, a send error, or a sender with no address.",
        &one(s.datagrams_dropped),
    );
    metric(
        "echoloop_datagrams_refused_total",
        "counter",
        "UDP datagrams dropped unanswered because their source port is loop-prone (--udp-drop-ports).",
        &one(s.datagrams_refused),
    );
    metric(
        "echoloop_tls_handshakes_total",
        "counter",
        "TLS handshakes, by result.",
        &[
            ("{result=\"ok\"}".into(), s.tls_handshakes_ok),
            ("{result=\"failed\"}".into(), s.tls_handshakes_failed),
        ],
    );
    metric(
        "echoloop_accept_errors_total",
        "counter",
        "accept() calls that failed (out of descriptors, aborted connections...).",
        &one(s.accept_errors),
    );
    metric(
        "echoloop_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &one(started.elapsed().as_secs()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{Request, head_end, parse, render};
    use echoloop::stats::Stats;

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

    #[test]
    fn metrics_exposition_has_help_and_type_for_every_sample() {
        let mut s = Stats::default();
        s.accepted = 3;
        let text = render(&s, std::time::Instant::now());
        assert!(
            text.contains("echoloop_connections_accepted_total 3\n"),
            "{text}"
        );
        assert!(text.contains("echoloop_connections_closed_total{reason=\"done\"} 0\n"));
        assert!(text.contains("echoloop_received_bytes_total{transport=\"tcp\"} 0\n"));
        let mut named = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                named.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(named.contains(name), "sample before its TYPE: {line}");
            }
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
