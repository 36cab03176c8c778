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
//!
//! This file is the connection's handler; `http` reads the requests and writes the
//! answers, `page` renders the numbers.

mod http;
mod page;

use std::time::{Duration, Instant};

use echoloop::handler::{Ctx, Handler, TimerId};
use echoloop::stats::Stats;

use http::{head_end, parse, respond};
use page::render;

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
