//! The datagram client (udp, unix-dgram): one message in flight, resent on timeout.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use super::exchange::{Common, MAX_UDP_V4, MAX_UDP_V6, Shared, quoted, rcvd_line, say, sent_line};
use super::stream::describe_io;
use echoloop::net::PeerAddr;
use echoloop::{DatagramHandler, DgramCtx, TimerId};

/// The datagram client (udp, unix-dgram): one message in flight, resent on timeout.
pub(super) struct DgramClient {
    pub(super) common: Common,
    pub(super) server: PeerAddr,
    /// UDP: accept replies only from the server's address. Unix datagram sockets skip
    /// this: the server may have bound the same file under another spelling of its path,
    /// and only a process that learned our autobound name can send to it at all.
    pub(super) check_sender: bool,
    pub(super) retries: u32,
    /// The message waiting for its echo.
    pub(super) current: Option<Vec<u8>>,
    /// Times the current message was sent.
    pub(super) attempts: u32,
    pub(super) timer: Option<TimerId>,
    /// Replies not taken for the current message, and the last of them.
    pub(super) ignored: u32,
    pub(super) last_ignored: Option<String>,
    /// UDP: the server's other addresses, tried in turn while nothing has answered yet.
    pub(super) fallbacks: VecDeque<std::net::SocketAddr>,
    /// An echo has arrived: the address is right, no more moving on.
    pub(super) answered: bool,
    /// This socket handed the exchange to a successor on another address.
    pub(super) handed_over: bool,
}

impl DgramClient {
    pub(super) fn new(
        common: Common,
        server: PeerAddr,
        retries: u32,
        check_sender: bool,
    ) -> DgramClient {
        DgramClient {
            common,
            server,
            check_sender,
            retries,
            current: None,
            attempts: 0,
            timer: None,
            ignored: 0,
            last_ignored: None,
            fallbacks: VecDeque::new(),
            answered: false,
            handed_over: false,
        }
    }

    /// Moves the exchange to the server's next address, on a new socket of its family
    /// (the current message is sent again from there); `why` says what was wrong with this
    /// one. Returns false if there is none.
    pub(super) fn try_next_address(&mut self, ctx: &mut DgramCtx<'_, Shared>, why: &str) -> bool {
        if self.answered {
            return false;
        }
        let Some(next) = self.fallbacks.pop_front() else {
            return false;
        };
        errln!("echoloop: {why}; trying {next}");
        let successor = DgramClient {
            common: Common {
                timeout: self.common.timeout,
                index: self.common.index,
            },
            server: PeerAddr::Inet(next),
            check_sender: self.check_sender,
            retries: self.retries,
            current: self.current.clone(),
            attempts: 0,
            timer: None,
            ignored: 0,
            last_ignored: None,
            fallbacks: std::mem::take(&mut self.fallbacks),
            answered: false,
            handed_over: false,
        };
        if let Err(e) = ctx.bind_udp(unspecified_like(next), Box::new(successor)) {
            // No socket for that family (IPv6 disabled, say): report this address's
            // failure rather than hang.
            errln!("echoloop: cannot try {next}: {e}");
            return false;
        }
        self.current = None;
        self.handed_over = true;
        ctx.close();
        true
    }

    pub(super) fn finish(&mut self, ctx: &mut DgramCtx<'_, Shared>, result: Result<(), String>) {
        ctx.state().record_outcome(result);
        self.current = None;
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        ctx.close();
        ctx.stop_loop(Duration::ZERO);
    }

    pub(super) fn send_next(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
        match self.common.next_message(ctx.state()) {
            None => self.finish(ctx, Ok(())),
            Some(Err(e)) => self.finish(ctx, Err(e)),
            Some(Ok(msg)) => {
                // Refused before `SENT`: the kernel would refuse it (EMSGSIZE) anyway.
                let max = match &self.server {
                    PeerAddr::Inet(a) if a.is_ipv6() => MAX_UDP_V6,
                    PeerAddr::Inet(_) => MAX_UDP_V4,
                    // Unix datagrams (and whatever else): the kernel says.
                    _ => usize::MAX,
                };
                if msg.len() > max {
                    let e = format!(
                        "a message of {} bytes is more than one UDP datagram can carry to \
                         {} ({max} bytes)",
                        msg.len(),
                        self.server
                    );
                    return self.finish(ctx, Err(e));
                }
                if let Err(e) = say(&sent_line(&msg)) {
                    return self.finish(ctx, Err(e));
                }
                self.current = Some(msg);
                self.attempts = 0;
                self.ignored = 0;
                self.last_ignored = None;
                self.transmit(ctx);
            }
        }
    }

    /// Sends (or resends) the current message and arms its timeout.
    pub(super) fn transmit(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
        let Some(msg) = &self.current else { return };
        self.attempts = self.attempts.saturating_add(1);
        if let Err(e) = ctx.send_to(msg, &self.server) {
            let why = match &e {
                // ICMP news the socket had not yet handed to `on_error`.
                echoloop::SendError::Io(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    return self.refused(ctx);
                }
                echoloop::SendError::Io(err) => describe_io(err),
                other => other.to_string(),
            };
            let text = format!(
                "cannot send message {} ({} bytes) to {}: {why}",
                self.common.index,
                msg.len(),
                self.server
            );
            return self.finish(ctx, Err(text));
        }
        self.timer = Some(ctx.set_timer(self.common.timer_delay(ctx.now())));
    }

    /// The server's address answered the current message with ICMP "port unreachable"
    /// (known on a connected socket only): resending would be refused again, so move on to
    /// the next address, or fail now.
    pub(super) fn refused(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        let why = format!(
            "{} refused message {}: connection refused, nothing listens on that UDP port \
             (is the server running?)",
            self.server, self.common.index
        );
        if !self.try_next_address(ctx, &why) {
            self.finish(ctx, Err(why));
        }
    }

    pub(super) fn is_from_server(&self, from: &PeerAddr) -> bool {
        if !self.check_sender {
            return true;
        }
        match (from, &self.server) {
            (PeerAddr::Inet(a), PeerAddr::Inet(b)) => a == b,
            _ => false,
        }
    }
}

impl DatagramHandler<Shared> for DgramClient {
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
        if matches!(self.server, PeerAddr::Inet(_)) {
            // Connected, the socket hears of ICMP "port unreachable" (see `on_error`), and
            // the kernel drops datagrams from anyone else (they would be ignored anyway).
            if let Err(e) = ctx.connect_to(&self.server) {
                let why = format!("cannot reach {}: {}", self.server, describe_io(&e));
                if !self.try_next_address(ctx, &why) {
                    self.finish(ctx, Err(why));
                }
                return;
            }
        }
        if self.current.is_some() {
            // Taking over from a socket on another address: the message is not answered yet.
            self.transmit(ctx);
        } else {
            self.send_next(ctx);
        }
    }

    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, Shared>, data: &[u8], from: &PeerAddr) {
        let Some(current) = &self.current else {
            // Between messages or after the end: a late duplicate, nothing waits for it.
            return;
        };
        if !self.is_from_server(from) || data != current.as_slice() {
            // A late reply to an earlier message, a stranger, or a wrong echo: not the
            // answer to this message. Keep waiting; the timeout decides.
            self.ignored = self.ignored.saturating_add(1);
            self.last_ignored = Some(format!(
                "{} from {from}",
                quoted(&data[..data.len().min(64)])
            ));
            return;
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        self.current = None;
        self.answered = true;
        if let Err(e) = say(&rcvd_line(data, from)) {
            return self.finish(ctx, Err(e));
        }
        self.send_next(ctx);
    }

    fn on_error(&mut self, ctx: &mut DgramCtx<'_, Shared>, error: &io::Error) {
        // Only a refusal says something of the server; other receive errors are left to
        // the timeout. With no message out, there is nothing to refuse.
        if error.kind() == io::ErrorKind::ConnectionRefused && self.current.is_some() {
            self.refused(ctx);
        }
    }

    fn on_timer(&mut self, ctx: &mut DgramCtx<'_, Shared>, timer: TimerId) {
        if self.timer != Some(timer) || self.current.is_none() {
            return;
        }
        self.timer = None;
        if self.attempts <= self.retries {
            errln!(
                "echoloop: no echo of message {} within {:?}; resending (attempt {} of {})",
                self.common.index,
                self.common.timeout,
                self.attempts.saturating_add(1),
                self.retries.saturating_add(1)
            );
            self.transmit(ctx);
            return;
        }
        let why = format!(
            "no echo from {} after {} attempts",
            self.server, self.attempts
        );
        if self.try_next_address(ctx, &why) {
            return;
        }
        let mut msg = format!(
            "no echo of message {} from {} after {} attempt{} ({:?} each)",
            self.common.index,
            self.server,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.common.timeout
        );
        if let Some(last) = &self.last_ignored {
            msg.push_str(&format!(
                "; ignored {} {} that did not match, the last {last}",
                self.ignored,
                if self.ignored == 1 {
                    "reply"
                } else {
                    "replies"
                }
            ));
        }
        self.finish(ctx, Err(msg));
    }

    fn on_close(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
        if self.handed_over {
            return;
        }
        ctx.state()
            .record_outcome(Err("the socket closed before the exchange was over".into()));
        ctx.stop_loop(Duration::ZERO);
    }
}

/// The wildcard address of `server`'s family, port 0: where a client binds to reach it.
pub(super) fn unspecified_like(server: std::net::SocketAddr) -> std::net::SocketAddr {
    (echoloop::net::wildcard_for(server), 0).into()
}
