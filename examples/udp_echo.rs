//! cargo run --example udp_echo -- server 127.0.0.1:8883 [--trace]
//! cargo run --example udp_echo -- client 127.0.0.1:8883 "a datagram" [--connected] [--trace]
//!
//! Connectionless echo. The server has no accept and no per-client socket: it answers
//! each datagram to the address it came from. The client shows why a datagram client
//! needs a timeout and retries: nothing tells it that a datagram (or its answer) was lost,
//! and an answer to an earlier try may still arrive, so it checks what it gets.
//!
//! Point the client at a port where nothing listens to see what a socket is told of it.
//! The kernel answers the datagram with an ICMP "port unreachable", but only a socket
//! connected to that address (`--connected`, which `connect(2)`s it, sending nothing)
//! hears of it: at once, as `ECONNREFUSED` in `on_error`; the client says `refused` and
//! gives up after one try. An unconnected socket is told nothing: it resends until it
//! gives up (`no answer after 4 tries`), as it would for a lost datagram.

mod common;

use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{Config, DatagramHandler, DgramCtx, EchoDatagram, EventLoop, PeerAddr, TimerId};

const TIMEOUT: Duration = Duration::from_millis(500);
const RETRIES: u32 = 3;

/// Sends one datagram, resends on timeout, stops on the matching answer or giving up.
struct Client {
    server: PeerAddr,
    /// Connect the socket to the server first, to hear ICMP errors about it.
    connected: bool,
    message: Vec<u8>,
    attempts: u32,
    timer: Option<TimerId>,
}

/// The loop's state: whether the answer came. `main` reads it after the loop ends; every
/// callback reaches it through `ctx.state()`.
type Answered = bool;

impl Client {
    fn attempt(&mut self, ctx: &mut DgramCtx<'_, Answered>) {
        self.attempts += 1;
        println!(
            "SENT {} (try {})",
            String::from_utf8_lossy(&self.message),
            self.attempts
        );
        if let Err(e) = ctx.send_to(&self.message, &self.server) {
            eprintln!("send: {e}");
        }
        self.timer = Some(ctx.set_timer(TIMEOUT));
    }
}

impl DatagramHandler<Answered> for Client {
    fn on_ready(&mut self, ctx: &mut DgramCtx<'_, Answered>) {
        if self.connected {
            if let Err(e) = ctx.connect_to(&self.server) {
                eprintln!("connect: {e}");
                ctx.stop_loop(Duration::ZERO);
                return;
            }
        }
        self.attempt(ctx);
    }

    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, Answered>, data: &[u8], from: &PeerAddr) {
        // Anyone can send us a datagram; only the server's copy of our message counts.
        if data != self.message.as_slice() {
            return;
        }
        println!("RCVD {} from {from}", String::from_utf8_lossy(data));
        *ctx.state() = true;
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        ctx.stop_loop(Duration::ZERO);
    }

    fn on_error(&mut self, ctx: &mut DgramCtx<'_, Answered>, error: &std::io::Error) {
        // Only a connected socket hears this: the ICMP "port unreachable" the kernel got
        // back for our datagram. No answer will come; retrying would only wait.
        if error.kind() == ErrorKind::ConnectionRefused {
            eprintln!(
                "refused: nothing listens on {} (ICMP port unreachable, told to the connected socket: {error})",
                self.server
            );
            if let Some(t) = self.timer.take() {
                ctx.cancel_timer(t);
            }
            ctx.stop_loop(Duration::ZERO);
        } else {
            eprintln!("receive: {error}");
        }
    }

    fn on_timer(&mut self, ctx: &mut DgramCtx<'_, Answered>, _timer: TimerId) {
        if self.attempts > RETRIES {
            eprintln!("no answer after {} tries", self.attempts);
            ctx.stop_loop(Duration::ZERO);
        } else {
            self.attempt(ctx);
        }
    }
}

fn main() -> ExitCode {
    let (mut args, trace) = common::setup();
    let given = args.len();
    args.retain(|a| a != "--connected");
    let connected = args.len() < given;
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", addr] if !connected => server(addr, trace),
        ["client", addr, message] => client(addr, message, connected, trace),
        _ => Err(
            "usage: udp_echo server ADDR [--trace] | udp_echo client ADDR MESSAGE [--connected] [--trace]"
                .into(),
        ),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("udp_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server(addr: &str, trace: Option<Tracer>) -> Result<bool, Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    let bound = el.bind_udp(resolve_one(addr)?, Box::new(EchoDatagram))?;
    println!("listening udp {}", bound.addr);
    std::io::stdout().flush()?;
    el.handle_signals(Duration::from_secs(1))?;
    el.run()?;
    Ok(true)
}

fn client(
    addr: &str,
    message: &str,
    connected: bool,
    trace: Option<Tracer>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let server = resolve_one(addr)?;
    // Bind an ephemeral port of the server's family: the server replies to it.
    let local: std::net::SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::with_state(config, false)?;
    el.bind_udp(
        local,
        Box::new(Client {
            server: PeerAddr::Inet(server),
            connected,
            message: message.as_bytes().to_vec(),
            attempts: 0,
            timer: None,
        }),
    )?;
    el.run()?;
    Ok(*el.state())
}
