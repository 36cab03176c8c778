//! The stream client (tcp, tls, unix): one connection, one message at a time.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use super::exchange::{Common, Shared, quoted, rcvd_line, say, sent_line};
use echoloop::net::Endpoint;
use echoloop::{CloseReason, ConnectOptions, Ctx, Handler, TimerId};

/// Where a stream exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connecting (and, for TLS, handshaking).
    Connecting,
    /// A message is sent; collecting its echo.
    Awaiting,
    /// Every echo is in and our side is half-closed; waiting for the server's EOF.
    Finishing,
    /// Over, successfully or not.
    Finished,
}

/// The stream client (tcp, tls, unix): one connection, messages strictly one at a time.
pub(super) struct StreamClient {
    pub(super) common: Common,
    /// ADDR as the user wrote it, for messages.
    pub(super) target: String,
    /// Addresses not tried yet.
    pub(super) remaining: VecDeque<Endpoint>,
    /// Each address that failed, with the reason.
    pub(super) failures: Vec<(Endpoint, String)>,
    /// The address this connection goes to.
    pub(super) endpoint: Endpoint,
    pub(super) opts: ConnectOptions,
    /// The name the server's certificate is checked against (TLS only).
    pub(super) tls_name: Option<String>,
    /// The server's address as the socket reports it.
    pub(super) peer: String,
    pub(super) phase: Phase,
    /// The current message's bytes.
    pub(super) expected: Vec<u8>,
    /// Its echo so far.
    pub(super) got: Vec<u8>,
    /// The running timeout (connect is the loop's own timer).
    pub(super) timer: Option<TimerId>,
    /// The server is known to have taken the connection: it sent a byte or closed
    /// cleanly. Until then a TLS 1.3 server may still refuse our certificate.
    pub(super) confirmed: bool,
    /// Lines to print once `confirmed`; dropped if the TLS handshake fails after all.
    pub(super) held: Vec<Vec<u8>>,
}

impl StreamClient {
    /// A fresh handler for a connect to `ep`, carrying on with the same messages and the
    /// record of addresses tried so far.
    pub(super) fn successor(&self, ep: Endpoint) -> StreamClient {
        let common = Common {
            timeout: self.common.timeout,
            index: 0,
        };
        let mut next = StreamClient::new(
            common,
            self.target.clone(),
            self.remaining.clone(),
            self.opts.clone(),
            self.tls_name.clone(),
        );
        next.failures = self.failures.clone();
        next.endpoint = ep;
        next
    }

    /// A client for `target` that has tried no address yet: `remaining` are the addresses
    /// to try, in order.
    pub(super) fn new(
        common: Common,
        target: String,
        remaining: VecDeque<Endpoint>,
        opts: ConnectOptions,
        tls_name: Option<String>,
    ) -> StreamClient {
        StreamClient {
            common,
            target,
            remaining,
            failures: Vec::new(),
            // Set by `successor` for each connect.
            endpoint: Endpoint::Inet(([0, 0, 0, 0], 0).into()),
            opts,
            tls_name,
            peer: String::new(),
            phase: Phase::Connecting,
            expected: Vec::new(),
            got: Vec::new(),
            timer: None,
            confirmed: false,
            held: Vec::new(),
        }
    }

    /// The message when every address failed: one line naming each.
    pub(super) fn connect_failure(&self) -> String {
        match self.failures.as_slice() {
            [] => format!("cannot connect to {}: no address to try", self.target),
            [(ep, why)] if ep.to_string() == self.target => {
                format!("cannot connect to {ep}: {why}")
            }
            [(ep, why)] => format!("cannot connect to {} ({ep}): {why}", self.target),
            many => {
                let each: Vec<String> = many
                    .iter()
                    .map(|(ep, why)| format!("{ep}: {why}"))
                    .collect();
                format!(
                    "cannot connect to {}: every address failed: {}",
                    self.target,
                    each.join("; ")
                )
            }
        }
    }

    /// Prints a line, or holds it back while the server may still refuse the handshake.
    pub(super) fn print(&mut self, line: Vec<u8>) -> Result<(), String> {
        if self.confirmed {
            say(&line)
        } else {
            self.held.push(line);
            Ok(())
        }
    }

    /// The server has taken the connection: what was held back is printed.
    pub(super) fn confirm(&mut self) -> Result<(), String> {
        self.confirmed = true;
        std::mem::take(&mut self.held)
            .iter()
            .try_for_each(|line| say(line))
    }

    /// Ends the exchange with an error; the close that follows stops the loop.
    pub(super) fn fail(&mut self, ctx: &mut Ctx<'_, Shared>, msg: String) {
        // Not the handshake's failure (that comes to `on_close`): what was held back did
        // happen, so it is printed before the error. A print error changes nothing now.
        let _ = self.confirm();
        ctx.state().record_outcome(Err(msg));
        self.phase = Phase::Finished;
        self.cancel_timer(ctx);
        ctx.abort();
    }

    pub(super) fn cancel_timer(&mut self, ctx: &mut Ctx<'_, Shared>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
    }

    /// Sends the next message, or half-closes after the last one.
    pub(super) fn send_next(&mut self, ctx: &mut Ctx<'_, Shared>) {
        loop {
            match self.common.next_message(ctx.state()) {
                None => {
                    // Our side is done; the server's EOF says it has echoed everything.
                    ctx.shutdown_write();
                    self.phase = Phase::Finishing;
                    self.timer = Some(ctx.set_timer(self.common.timer_delay(ctx.now())));
                    return;
                }
                Some(Err(e)) => return self.fail(ctx, e),
                Some(Ok(msg)) if msg.is_empty() => {
                    // Nothing to send is trivially echoed: a stream carries no empty message.
                    let lines = [sent_line(&msg), rcvd_line(&msg, &self.peer)];
                    if let Err(e) = lines.into_iter().try_for_each(|l| self.print(l)) {
                        return self.fail(ctx, e);
                    }
                }
                Some(Ok(msg)) => {
                    if let Err(e) = self.print(sent_line(&msg)) {
                        return self.fail(ctx, e);
                    }
                    ctx.send(&msg);
                    self.expected = msg;
                    self.got.clear();
                    self.phase = Phase::Awaiting;
                    self.timer = Some(ctx.set_timer(self.common.timer_delay(ctx.now())));
                    return;
                }
            }
        }
    }

    /// The whole echo is in: print and compare it.
    pub(super) fn echo_complete(&mut self, ctx: &mut Ctx<'_, Shared>) {
        self.cancel_timer(ctx);
        if let Err(e) = self.print(rcvd_line(&self.got, &self.peer)) {
            return self.fail(ctx, e);
        }
        if self.got != self.expected {
            let msg = format!(
                "echo of message {} does not match: sent {}, received {}",
                self.common.index,
                quoted(&self.expected),
                quoted(&self.got)
            );
            return self.fail(ctx, msg);
        }
        self.send_next(ctx);
    }

    /// Explains why the connection ended, for the user.
    pub(super) fn explain(&self, reason: &CloseReason) -> String {
        // Before the server has spoken, a TLS failure is its verdict on the handshake (in
        // TLS 1.3 on our certificate, after our side had finished).
        let during = if self.phase == Phase::Connecting || !self.confirmed {
            "handshake with"
        } else {
            "connection to"
        };
        match reason {
            CloseReason::Tls(detail) => {
                let name = self.tls_name.as_deref().unwrap_or("?");
                format!(
                    "TLS {during} {} failed: {}",
                    self.endpoint,
                    explain_tls(detail, name)
                )
            }
            CloseReason::HandshakeTimeout => format!(
                "TLS handshake with {} not finished within {:?}",
                self.endpoint, self.common.timeout
            ),
            CloseReason::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                format!("connection to {} reset by the server", self.endpoint)
            }
            CloseReason::Io(e) => format!("connection to {}: {}", self.endpoint, describe_io(e)),
            other => format!("connection to {}: {other}", self.endpoint),
        }
    }
}

impl Handler<Shared> for StreamClient {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Shared>) {
        self.peer = ctx
            .peer_addr()
            .map_or_else(|| self.endpoint.to_string(), |p| p.to_string());
        // A plain stream is established once connected; TLS waits for the server's word.
        self.confirmed = self.tls_name.is_none();
        self.send_next(ctx);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Shared>, data: &[u8]) {
        if !self.confirmed && !data.is_empty() {
            if let Err(e) = self.confirm() {
                return self.fail(ctx, e);
            }
        }
        match self.phase {
            Phase::Awaiting => {
                // Take only what completes this echo: we send the next message only after
                // it, so anything beyond is not an echo of ours.
                let want = self.expected.len() - self.got.len();
                let take = want.min(data.len());
                self.got.extend_from_slice(&data[..take]);
                if self.got.len() == self.expected.len() {
                    self.echo_complete(ctx);
                    if take < data.len() && self.phase != Phase::Finished {
                        let msg = format!(
                            "received {} bytes more than the echo of message {}",
                            data.len() - take,
                            self.common.index
                        );
                        self.fail(ctx, msg);
                    }
                }
            }
            Phase::Finishing => {
                let msg = format!(
                    "received {} unexpected bytes after the last echo",
                    data.len()
                );
                self.fail(ctx, msg);
            }
            Phase::Connecting | Phase::Finished => {}
        }
    }

    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_, Shared>) {
        match self.phase {
            Phase::Finishing => {
                self.cancel_timer(ctx);
                if let Err(e) = self.confirm() {
                    return self.fail(ctx, e);
                }
                self.phase = Phase::Finished;
                ctx.state().record_outcome(Ok(()));
                ctx.close();
            }
            Phase::Awaiting => {
                let msg = format!(
                    "server {} closed the connection after {} of the {} bytes of the echo of message {}",
                    self.peer,
                    self.got.len(),
                    self.expected.len(),
                    self.common.index
                );
                self.fail(ctx, msg);
            }
            Phase::Connecting | Phase::Finished => ctx.close(),
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Shared>, timer: TimerId) {
        if self.timer != Some(timer) {
            return;
        }
        self.timer = None;
        let msg = match self.phase {
            Phase::Awaiting => format!(
                "no complete echo of message {} from {} within {:?} (received {} of {} bytes)",
                self.common.index,
                self.peer,
                self.common.timeout,
                self.got.len(),
                self.expected.len()
            ),
            Phase::Finishing => format!(
                "server {} did not close the connection within {:?} after the last echo",
                self.peer, self.common.timeout
            ),
            Phase::Connecting | Phase::Finished => return,
        };
        self.fail(ctx, msg);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Shared>, reason: &CloseReason) {
        self.cancel_timer(ctx);
        let connect_failed = matches!(
            reason,
            CloseReason::ConnectFailed(_) | CloseReason::ConnectTimeout
        );
        if self.phase == Phase::Connecting && connect_failed {
            let why = match reason {
                CloseReason::ConnectFailed(e) => describe_io(e),
                _ => format!("no connection within {:?}", self.common.timeout),
            };
            self.failures.push((self.endpoint.clone(), why));
            if let Some(ep) = self.remaining.pop_front() {
                let opts = self.opts.clone();
                let next = self.successor(ep.clone());
                ctx.connect(ep, opts, Box::new(next));
                return;
            }
            ctx.state().record_outcome(Err(self.connect_failure()));
        } else if !ctx.state().has_outcome() {
            if matches!(reason, CloseReason::Tls(_) | CloseReason::HandshakeTimeout) {
                // The handshake failed: nothing counts as sent on it.
                self.held.clear();
            } else {
                let _ = self.confirm();
            }
            let msg = self.explain(reason);
            ctx.state().record_outcome(Err(msg));
        }
        self.phase = Phase::Finished;
        ctx.stop_loop(Duration::ZERO);
    }
}

/// Words a failed TLS exchange (rustls's error text) for the user, saying which check
/// failed and what to do about it.
pub(super) fn explain_tls(err: &rustls::Error, name: &str) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
    match err {
        E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            format!(
                "the server's certificate is not valid for name {name:?} (check ADDR or --server-name)"
            )
        }
        E::InvalidCertificate(Cert::UnknownIssuer) => {
            "the server's certificate is not trusted (unknown issuer): give the CA that signed it \
             with --ca"
                .to_owned()
        }
        E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_owned()
        }
        E::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate: give one with --cert and --key".to_owned()
        }
        E::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired,
        ) => format!("the server rejected our client certificate ({err})"),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            format!("{err} (is the server speaking TLS?)")
        }
        other => other.to_string(),
    }
}

/// A system error in words a user can act on.
pub(super) fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
        io::ErrorKind::NotFound => "no such socket (is the server running?)".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}
