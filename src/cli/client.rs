//! `echoloop client`: sends messages and checks that each comes back unchanged, over TCP,
//! TLS, Unix streams, UDP and Unix datagrams.
//!
//! The client is two handlers on the library's own reactor, not a blocking program:
//!
//! * `StreamClient` (tcp, tls, unix) is a [`Handler`]. The socket is connected without
//!   blocking (the loop completes the connect on writability and checks `SO_ERROR`), so a
//!   connect timeout is just a timer. A host name may resolve to several addresses: they
//!   are tried in turn, each with the connect timeout, the next connect being started from
//!   `on_close` of the failed one (like a careful `create_connection`). Once open it sends a
//!   message, collects the echo until all of its bytes are in (a stream has no message
//!   boundaries: the echo may come in any number of pieces), compares, and only then sends
//!   the next message. After the last one it half-closes and expects the server's EOF.
//!   `--timeout` (default 5 s) bounds the connect (TLS handshake included), each whole
//!   echo, and the wait for that EOF. The default is longer than the datagram one because a
//!   lost TCP SYN is retransmitted after 1 s: a 1 s connect timeout would fail on one loss.
//!
//!   Over TLS 1.3 the client's side of the handshake is over before the server has judged
//!   the client's certificate (its verdict, an alert, comes after our first message went
//!   out). So until the server has sent a byte, or closed cleanly, what would be printed
//!   is held back: a server that then refuses the handshake gets only the error, nothing
//!   reported as sent. The first message's `SENT` line therefore shows with its echo.
//! * `DgramClient` (udp, unix-dgram) is a [`DatagramHandler`]. Each message is one
//!   datagram; if no matching reply comes within `--timeout` (default 1 s) it is sent again,
//!   up to `--retries` (default 3) more times, so a silent server is reported after about
//!   timeout × (retries + 1). The UDP socket is connected to the server (`connect(2)`
//!   sends nothing): the kernel then tells of an ICMP "port unreachable", and a port where
//!   nothing listens is reported as refused at once instead of after every retry. A UDP
//!   host name with several addresses (localhost is often `::1` and `127.0.0.1`) cannot
//!   be checked by a handshake: if the first message gets no answer at all from one
//!   address, or is refused there, it moves on to the next (on a new socket of that
//!   family), so a silent server is then reported after that time per address.
//!
//! **Stale replies.** Over datagrams a reply to an earlier attempt can arrive late, after
//! the message was resent or even after the next message was sent; the network may also
//! duplicate one. A reply is taken for the current message only if it comes from the
//! server's address (UDP) and its bytes are exactly the current message's; anything else is
//! counted as ignored and mentioned if the message finally fails. The payload is the user's
//! bytes with nothing added, so what this guarantees is: every accepted echo has the current
//! message's exact bytes, and a late echo of an earlier *different* message is never taken
//! for the current one. When two consecutive messages are identical, a late copy of the
//! first one's echo is indistinguishable from the second one's and may stand in for it.
//!
//! **Standard input** is read one line at a time, when the next message is due, so typing
//! lines by hand shows each echo at once and a long input is never held in memory. Reading
//! blocks the loop meanwhile, which is harmless: between two messages nothing is in flight
//! and no timer is armed. A line is whatever bytes precede its `\n` (or `\r\n`), UTF-8
//! or not: an echo tool sends bytes, and compares them byte for byte. The `SENT` and `RCVD`
//! lines carry the bytes as they are, as `nc` would print them. An empty line is an empty
//! message (over a stream it trivially echoes, over datagrams it is a real empty datagram).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::common::{CliError, TlsClientArgs, Transport, TransportArg, host_of};
use super::units::parse_duration;
use echoloop::net::{Endpoint, PeerAddr, UnixName, resolve_all};
use echoloop::tls_config::{client_config, server_name};
use echoloop::{
    CloseReason, Config, ConnectOptions, Ctx, DatagramHandler, DgramCtx, EventLoop, Handler,
    TimerId,
};

/// Default `--timeout` for tcp, tls and unix: connect, each echo, and the final EOF.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--timeout` for udp and unix-dgram: the wait before a datagram is resent.
const DGRAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `--retries` for udp and unix-dgram.
const DGRAM_RETRIES: u32 = 3;
/// Largest `--timeout` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Arguments of `echoloop client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Transport to use.
    #[arg(value_parser = TransportArg)]
    transport: Transport,
    /// Server address: host:port (IPv6 as [::1]:port) for tcp, tls and udp; a path or
    /// @name (Linux abstract name) for unix and unix-dgram.
    addr: String,
    /// Send TEXT (repeatable, sent in order). Without it, each line of standard input is a
    /// message.
    #[arg(long = "message", short = 'm', value_name = "TEXT")]
    messages: Vec<OsString>,
    /// Streams: connect (and TLS handshake) timeout, time allowed for each whole echo and
    /// for the server's EOF at the end (default 5). Datagrams: wait before resending
    /// (default 1). Seconds, or 500ms, 2m...
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Datagrams only: resend an unanswered message up to N times (default 3).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    #[command(flatten)]
    tls: TlsClientArgs,
}

/// Runs the client: exits 0 only if every message's echo arrived and matched.
pub fn run(args: ClientArgs) -> Result<ExitCode, CliError> {
    check_options(&args)?;
    let stream = args.transport.is_stream();
    let timeout = args.timeout.unwrap_or(if stream {
        STREAM_TIMEOUT
    } else {
        DGRAM_TIMEOUT
    });
    if timeout.is_zero() {
        return Err("--timeout must be greater than zero".into());
    }
    // Deadlines are `Instant + timeout`, which panics on overflow: keep it sane.
    if timeout > MAX_TIMEOUT {
        return Err("--timeout must be at most 24h".into());
    }
    let messages = if args.messages.is_empty() {
        Messages::from_reader(io::stdin().lock())
    } else {
        // The bytes as given: an argument need not be UTF-8 any more than a line is.
        Messages::from_list(
            args.messages
                .iter()
                .cloned()
                .map(OsString::into_vec)
                .collect(),
        )
    };

    let mut config = Config::default();
    // No backpressure for the client: it must keep reading its echo while it still owes
    // the server part of a long message, or both sides would stop, each waiting for the
    // other to read.
    config.high_water = usize::MAX;
    config.low_water = usize::MAX;
    config.close_timeout = timeout;
    let mut el = EventLoop::with_state(
        config,
        Shared {
            messages,
            outcome: None,
        },
    )?;
    let common = Common { timeout, index: 0 };
    match args.transport {
        Transport::Tcp | Transport::Tls | Transport::Unix => {
            start_stream(&mut el, &args, common)?;
        }
        Transport::Udp | Transport::UnixDgram => {
            start_dgram(&mut el, &args, common)?;
        }
        // The command line offers no other (the library's list may grow).
        other => return Err(format!("client does not speak {}", other.name()).into()),
    }
    // A zero wait first: a stop asked for while the socket was being set up (no messages at
    // all) is then applied at once instead of after the first event.
    if el.run_once(Some(Duration::ZERO))? {
        el.run()?;
    }
    let result = el.state_mut().outcome.take();
    match result {
        Some(Ok(())) => Ok(ExitCode::SUCCESS),
        Some(Err(msg)) => Err(msg.into()),
        None => Err("the event loop stopped before the exchange was over".into()),
    }
}

/// Rejects options that do not apply to the chosen transport, so a typo is not silently
/// ignored (a --ca meant for TLS on a plain TCP run would otherwise look like it worked).
fn check_options(args: &ClientArgs) -> Result<(), CliError> {
    if args.transport != Transport::Tls {
        if let Some(flag) = args.tls.given().first() {
            return Err(format!("{flag} only applies to the tls transport").into());
        }
    }
    if args.transport.is_stream() && args.retries.is_some() {
        return Err("--retries only applies to udp and unix-dgram (streams do not resend)".into());
    }
    Ok(())
}

/// Resolves the target and starts the first connect.
fn start_stream(
    el: &mut EventLoop<Shared>,
    args: &ClientArgs,
    common: Common,
) -> Result<(), CliError> {
    let endpoints: VecDeque<Endpoint> = match args.transport {
        Transport::Unix => VecDeque::from([Endpoint::Unix(UnixName::parse(&args.addr)?)]),
        _ => resolve_all(&args.addr)?
            .into_iter()
            .map(Endpoint::Inet)
            .collect(),
    };
    let mut opts = ConnectOptions::new().timeout(common.timeout);
    let mut tls_name = None;
    if args.transport == Transport::Tls {
        let name = match &args.tls.server_name {
            Some(n) => n.clone(),
            None => host_of(&args.addr).to_owned(),
        };
        let cfg = client_config(&args.tls.options())?;
        opts = opts.tls(cfg, server_name(&name)?);
        tls_name = Some(name);
    }
    let mut client = StreamClient {
        common,
        target: args.addr.clone(),
        remaining: endpoints,
        failures: Vec::new(),
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
    };
    // The first connect is started here; one that fails, at once (say, no IPv6 route) or
    // later, moves on to the next address in `on_close`.
    let Some(ep) = client.remaining.pop_front() else {
        return Err(client.connect_failure().into());
    };
    let opts = client.opts.clone();
    let next = client.successor(ep.clone());
    el.connect(&ep, opts, Box::new(next));
    Ok(())
}

/// Binds the client's datagram socket and registers it; the handler sends the first
/// message from `on_ready`.
fn start_dgram(
    el: &mut EventLoop<Shared>,
    args: &ClientArgs,
    common: Common,
) -> Result<(), CliError> {
    let retries = args.retries.unwrap_or(DGRAM_RETRIES);
    match args.transport {
        Transport::Udp => {
            // A name with several addresses (localhost is often ::1 and 127.0.0.1): there
            // is no connect to fail, so silence is the only sign of a wrong one. The first
            // message moves on to the next address when all its tries go unanswered.
            let mut servers: VecDeque<std::net::SocketAddr> = resolve_all(&args.addr)?.into();
            let server = servers
                .pop_front()
                .ok_or_else(|| format!("{} resolves to no address", args.addr))?;
            let mut client = DgramClient::new(common, PeerAddr::Inet(server), retries, true);
            client.fallbacks = servers;
            el.bind_udp(unspecified_like(server), Box::new(client))?;
        }
        _ => {
            let server = UnixName::parse(&args.addr)?
                .to_std()
                .map_err(|e| format!("invalid Unix socket name {:?}: {e}", args.addr))?;
            let sock = autobound_unix_datagram()
                .map_err(|e| format!("cannot create a Unix datagram socket: {e}"))?;
            let client = DgramClient::new(common, PeerAddr::Unix(server), retries, false);
            el.add_unix_datagram(sock, Box::new(client))?;
        }
    }
    Ok(())
}

/// The wildcard address of `server`'s family, port 0: where a client binds to reach it.
fn unspecified_like(server: std::net::SocketAddr) -> std::net::SocketAddr {
    (echoloop::net::wildcard_for(server), 0).into()
}

/// A Unix datagram socket with a name the server can reply to. Binding to an address that
/// holds only the address family asks Linux to pick a unique abstract name (autobind, see
/// unix(7)): nothing on disk to clean up, no name to invent.
fn autobound_unix_datagram() -> io::Result<UnixDatagram> {
    let sock = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    // socket2 gives an empty path an address length of just the family field.
    sock.bind(&SockAddr::unix("")?)?;
    Ok(UnixDatagram::from(OwnedFd::from(sock)))
}

/// The loop's state: what every handler of the exchange shares, and `run` reads after.
struct Shared {
    /// The messages still to send: a connect to the next address takes over where a
    /// failed one was.
    messages: Messages,
    /// The result, set once by whichever handler finishes the exchange.
    outcome: Option<Result<(), String>>,
}

impl Shared {
    /// Records the result unless one is already recorded (the first word is the true one:
    /// a failure is often followed by the close it caused).
    fn settle(&mut self, result: Result<(), String>) {
        if self.outcome.is_none() {
            self.outcome = Some(result);
        }
    }

    fn is_settled(&self) -> bool {
        self.outcome.is_some()
    }
}

/// What both handlers need besides the shared state: the timeout, the message count.
struct Common {
    timeout: Duration,
    /// Number of the current message (1-based once the first is sent).
    index: usize,
}

impl Common {
    /// The delay to pass to `set_timer` for a deadline `timeout` from now. Timers count
    /// from the moment the loop woke up for this batch of events, and reading the next line
    /// of standard input may have blocked since then: add the time spent.
    fn timer_delay(&self, loop_now: Instant) -> Duration {
        self.timeout + Instant::now().saturating_duration_since(loop_now)
    }

    /// The next message, or `None` at the end; a failure to read becomes `Err`. Printing
    /// its `SENT` line is the caller's: a stream may have to hold it back.
    fn next_message(&mut self, shared: &mut Shared) -> Option<Result<Vec<u8>, String>> {
        let next = shared.messages.next()?;
        if next.is_ok() {
            self.index += 1;
        }
        Some(next)
    }
}

/// Where messages come from: the `--message` list or standard input, line by line.
struct Messages {
    source: Box<dyn Iterator<Item = Result<Vec<u8>, String>>>,
}

impl Messages {
    fn from_list(list: Vec<Vec<u8>>) -> Messages {
        Messages {
            source: Box::new(list.into_iter().map(Ok)),
        }
    }

    fn from_reader(input: impl BufRead + 'static) -> Messages {
        Messages {
            source: Box::new(Lines { input }),
        }
    }

    fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        self.source.next()
    }
}

/// Lines of bytes, UTF-8 or not, without their `\n` or `\r\n`.
struct Lines<R> {
    input: R,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.input.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(format!("cannot read standard input: {e}"))),
        }
    }
}

/// The largest UDP payload over IPv4: 65,535 less the IPv4 and UDP headers (20 + 8).
const MAX_UDP_V4: usize = 65_507;
/// Over IPv6 the 40-byte header is not counted in the payload length: 65,535 less 8.
const MAX_UDP_V6: usize = 65_527;

/// `SENT <bytes> (<n> bytes)`: the message's bytes as they are, not re-encoded.
fn sent_line(msg: &[u8]) -> Vec<u8> {
    report_line("SENT ", msg, &format!(" ({} bytes)", msg.len()))
}

/// `RCVD <bytes> (<n> bytes) from <peer>`.
fn rcvd_line(echo: &[u8], from: &dyn std::fmt::Display) -> Vec<u8> {
    report_line(
        "RCVD ",
        echo,
        &format!(" ({} bytes) from {from}", echo.len()),
    )
}

fn report_line(head: &str, bytes: &[u8], tail: &str) -> Vec<u8> {
    [head.as_bytes(), bytes, tail.as_bytes()].concat()
}

/// Message bytes quoted for an error message: as a string if they are UTF-8, with byte
/// escapes otherwise (a lossy decoding would hide the very bytes that differ).
fn quoted(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("b\"{}\"", bytes.escape_ascii()),
    }
}

/// Prints one line on standard output and flushes it, so each echo shows as it happens
/// (also through a pipe). The bytes go out unchanged, UTF-8 or not.
fn say(line: &[u8]) -> Result<(), String> {
    let mut out = io::stdout().lock();
    out.write_all(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}

/// Where a stream exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct StreamClient {
    common: Common,
    /// ADDR as the user wrote it, for messages.
    target: String,
    /// Addresses not tried yet.
    remaining: VecDeque<Endpoint>,
    /// Each address that failed, with the reason.
    failures: Vec<(Endpoint, String)>,
    /// The address this connection goes to.
    endpoint: Endpoint,
    opts: ConnectOptions,
    /// The name the server's certificate is checked against (TLS only).
    tls_name: Option<String>,
    /// The server's address as the socket reports it.
    peer: String,
    phase: Phase,
    /// The current message's bytes.
    expected: Vec<u8>,
    /// Its echo so far.
    got: Vec<u8>,
    /// The running timeout (connect is the loop's own timer).
    timer: Option<TimerId>,
    /// The server is known to have taken the connection: it sent a byte or closed
    /// cleanly. Until then a TLS 1.3 server may still refuse our certificate.
    confirmed: bool,
    /// Lines to print once `confirmed`; dropped if the TLS handshake fails after all.
    held: Vec<Vec<u8>>,
}

impl StreamClient {
    /// A fresh handler for a connect to `ep`, carrying on with the same messages and the
    /// record of addresses tried so far.
    fn successor(&self, ep: Endpoint) -> StreamClient {
        StreamClient {
            common: Common {
                timeout: self.common.timeout,
                index: 0,
            },
            target: self.target.clone(),
            remaining: self.remaining.clone(),
            failures: self.failures.clone(),
            endpoint: ep,
            opts: self.opts.clone(),
            tls_name: self.tls_name.clone(),
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
    fn connect_failure(&self) -> String {
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
    fn print(&mut self, line: Vec<u8>) -> Result<(), String> {
        if self.confirmed {
            say(&line)
        } else {
            self.held.push(line);
            Ok(())
        }
    }

    /// The server has taken the connection: what was held back is printed.
    fn confirm(&mut self) -> Result<(), String> {
        self.confirmed = true;
        std::mem::take(&mut self.held)
            .iter()
            .try_for_each(|line| say(line))
    }

    /// Ends the exchange with an error; the close that follows stops the loop.
    fn fail(&mut self, ctx: &mut Ctx<'_, Shared>, msg: String) {
        // Not the handshake's failure (that comes to `on_close`): what was held back did
        // happen, so it is printed before the error. A print error changes nothing now.
        let _ = self.confirm();
        ctx.state().settle(Err(msg));
        self.phase = Phase::Finished;
        self.cancel_timer(ctx);
        ctx.abort();
    }

    fn cancel_timer(&mut self, ctx: &mut Ctx<'_, Shared>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
    }

    /// Sends the next message, or half-closes after the last one.
    fn send_next(&mut self, ctx: &mut Ctx<'_, Shared>) {
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
    fn echo_complete(&mut self, ctx: &mut Ctx<'_, Shared>) {
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
    fn explain(&self, reason: &CloseReason) -> String {
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
                ctx.state().settle(Ok(()));
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
            ctx.state().settle(Err(self.connect_failure()));
        } else if !ctx.state().is_settled() {
            if matches!(reason, CloseReason::Tls(_) | CloseReason::HandshakeTimeout) {
                // The handshake failed: nothing counts as sent on it.
                self.held.clear();
            } else {
                let _ = self.confirm();
            }
            let msg = self.explain(reason);
            ctx.state().settle(Err(msg));
        }
        self.phase = Phase::Finished;
        ctx.stop_loop(Duration::ZERO);
    }
}

/// Words a failed TLS exchange (rustls's error text) for the user, saying which check
/// failed and what to do about it.
fn explain_tls(err: &rustls::Error, name: &str) -> String {
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
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
        io::ErrorKind::NotFound => "no such socket (is the server running?)".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// The datagram client (udp, unix-dgram): one message in flight, resent on timeout.
struct DgramClient {
    common: Common,
    server: PeerAddr,
    /// UDP: accept replies only from the server's address. Unix datagram sockets skip
    /// this: the server may have bound the same file under another spelling of its path,
    /// and only a process that learned our autobound name can send to it at all.
    check_sender: bool,
    retries: u32,
    /// The message waiting for its echo.
    current: Option<Vec<u8>>,
    /// Times the current message was sent.
    attempts: u32,
    timer: Option<TimerId>,
    /// Replies not taken for the current message, and the last of them.
    ignored: u32,
    last_ignored: Option<String>,
    /// UDP: the server's other addresses, tried in turn while nothing has answered yet.
    fallbacks: VecDeque<std::net::SocketAddr>,
    /// An echo has arrived: the address is right, no more moving on.
    answered: bool,
    /// This socket handed the exchange to a successor on another address.
    handed_over: bool,
}

impl DgramClient {
    fn new(common: Common, server: PeerAddr, retries: u32, check_sender: bool) -> DgramClient {
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
    fn try_next_address(&mut self, ctx: &mut DgramCtx<'_, Shared>, why: &str) -> bool {
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

    fn finish(&mut self, ctx: &mut DgramCtx<'_, Shared>, result: Result<(), String>) {
        ctx.state().settle(result);
        self.current = None;
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        ctx.close();
        ctx.stop_loop(Duration::ZERO);
    }

    fn send_next(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
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
    fn transmit(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
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
    fn refused(&mut self, ctx: &mut DgramCtx<'_, Shared>) {
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

    fn is_from_server(&self, from: &PeerAddr) -> bool {
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
            .settle(Err("the socket closed before the exchange was over".into()));
        ctx.stop_loop(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Common, Config, DgramClient, Duration, EventLoop, Messages, PeerAddr, Shared, VecDeque,
        explain_tls, quoted, rcvd_line, sent_line, unspecified_like,
    };

    fn lines(input: &'static [u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut m = Messages::from_reader(input);
        std::iter::from_fn(|| m.next()).collect()
    }

    fn ok(line: &[u8]) -> Result<Vec<u8>, String> {
        Ok(line.to_vec())
    }

    #[test]
    fn stdin_lines_strip_newlines_and_keep_text() {
        assert_eq!(
            lines("a\r\nhé 日本\n\nlast".as_bytes()),
            vec![ok(b"a"), ok("hé 日本".as_bytes()), ok(b""), ok(b"last")]
        );
        assert!(lines(b"").is_empty());
    }

    /// An echo tool sends bytes: a line need not be UTF-8, and is passed on unchanged
    /// (a lone `\r` inside it, NUL, bytes no encoding would accept).
    #[test]
    fn stdin_lines_are_bytes_whatever_their_encoding() {
        assert_eq!(
            lines(b"ok\n\xff\xfe\r\n\x00bin\rary\ncaf\xe9"),
            vec![
                ok(b"ok"),
                ok(b"\xff\xfe"),
                ok(b"\x00bin\rary"),
                ok(b"caf\xe9")
            ]
        );
    }

    /// What is printed carries the bytes as they are; errors quote them readably, with
    /// escapes only when they are not UTF-8 (a lossy decoding would hide the difference).
    #[test]
    fn reports_keep_the_bytes_and_errors_escape_them() {
        assert_eq!(sent_line(b"caf\xe9"), b"SENT caf\xe9 (4 bytes)".to_vec());
        let peer = "127.0.0.1:7";
        assert_eq!(
            rcvd_line(b"\xff", &peer),
            b"RCVD \xff (1 bytes) from 127.0.0.1:7".to_vec()
        );
        assert_eq!(quoted("hé".as_bytes()), "\"hé\"");
        assert_eq!(quoted(b"caf\xe9\n"), "b\"caf\\xe9\\n\"");
    }

    #[test]
    fn tls_errors_say_which_check_failed() {
        use rustls::{AlertDescription, CertificateError, Error};
        let name = explain_tls(
            &Error::InvalidCertificate(CertificateError::NotValidForName),
            "x.test",
        );
        assert!(name.contains("not valid for name \"x.test\""), "{name}");
        let issuer = explain_tls(
            &Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "localhost",
        );
        assert!(issuer.contains("not trusted"), "{issuer}");
        let required = explain_tls(
            &Error::AlertReceived(AlertDescription::CertificateRequired),
            "localhost",
        );
        assert!(required.contains("--cert"), "{required}");
    }

    /// A UDP echo on ::1 for `times` datagrams, on a thread.
    fn ipv6_udp_echo(times: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let echo = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let addr = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            echo.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1500];
            for _ in 0..times {
                let (n, from) = echo.recv_from(&mut buf).unwrap();
                echo.send_to(&buf[..n], from).unwrap();
            }
        });
        (addr, server)
    }

    /// A name may stand for several addresses; when the first never answers, the first
    /// message moves on to the next, on a socket of that address's family.
    #[test]
    fn udp_moves_on_to_the_next_address_when_the_first_is_silent() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (echo_addr, server) = ipv6_udp_echo(2);
        let common = Common {
            timeout: Duration::from_millis(100),
            index: 0,
        };
        let first = PeerAddr::Inet(silent.local_addr().unwrap());
        let mut client = DgramClient::new(common, first, 1, true);
        client.fallbacks = VecDeque::from([echo_addr]);
        let shared = Shared {
            messages: Messages::from_list(vec!["one".into(), "two".into()]),
            outcome: None,
        };
        let mut el = EventLoop::with_state(Config::default(), shared).unwrap();
        el.bind_udp(
            unspecified_like(silent.local_addr().unwrap()),
            Box::new(client),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while el.run_once(Some(Duration::from_millis(50))).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "client never finished"
            );
        }
        server.join().unwrap();
        assert_eq!(el.state().outcome, Some(Ok(())));
    }

    /// A first address where nothing listens answers with ICMP "port unreachable": the
    /// client moves on to the next at once, without waiting out its retries there.
    #[test]
    fn udp_moves_on_at_once_when_the_first_address_refuses() {
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let refusing = gone.local_addr().unwrap();
        drop(gone);
        let (echo_addr, server) = ipv6_udp_echo(1);
        // Waiting out the retries would take 4 x 5 s.
        let common = Common {
            timeout: Duration::from_secs(5),
            index: 0,
        };
        let mut client = DgramClient::new(common, PeerAddr::Inet(refusing), 3, true);
        client.fallbacks = VecDeque::from([echo_addr]);
        let shared = Shared {
            messages: Messages::from_list(vec!["one".into()]),
            outcome: None,
        };
        let mut el = EventLoop::with_state(Config::default(), shared).unwrap();
        el.bind_udp(unspecified_like(refusing), Box::new(client))
            .unwrap();
        let start = std::time::Instant::now();
        while el.run_once(Some(Duration::from_millis(50))).unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(4),
                "the refusal was not noticed"
            );
        }
        server.join().unwrap();
        assert_eq!(el.state().outcome, Some(Ok(())));
    }
}
