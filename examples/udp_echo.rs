//! cargo run --example udp_echo -- server 127.0.0.1:8883
//! cargo run --example udp_echo -- client 127.0.0.1:8883 "a datagram"
//!
//! Connectionless echo. The server has no accept and no per-client socket: it answers
//! each datagram to the address it came from. The client shows why a datagram client
//! needs a timeout and retries: nothing tells it that a datagram (or its answer) was lost,
//! and an answer to an earlier try may still arrive, so it checks what it gets.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::{Config, DatagramHandler, DgramCtx, EchoDatagram, EventLoop, PeerAddr, TimerId};

const TIMEOUT: Duration = Duration::from_millis(500);
const RETRIES: u32 = 3;

/// Sends one datagram, resends on timeout, stops on the matching answer or giving up.
struct Client {
    server: PeerAddr,
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", addr] => server(addr),
        ["client", addr, message] => client(addr, message),
        _ => Err("usage: udp_echo server ADDR | udp_echo client ADDR MESSAGE".into()),
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

fn server(addr: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let mut el = EventLoop::new(Config::default())?;
    let bound = el.bind_udp(resolve_one(addr)?, Box::new(EchoDatagram))?;
    println!("listening udp {}", bound.addr);
    std::io::stdout().flush()?;
    el.handle_signals(Duration::from_secs(1))?;
    el.run()?;
    Ok(true)
}

fn client(addr: &str, message: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let server = resolve_one(addr)?;
    // Bind an ephemeral port of the server's family: the server replies to it.
    let local: std::net::SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut el = EventLoop::with_state(Config::default(), false)?;
    el.bind_udp(
        local,
        Box::new(Client {
            server: PeerAddr::Inet(server),
            message: message.as_bytes().to_vec(),
            attempts: 0,
            timer: None,
        }),
    )?;
    el.run()?;
    Ok(*el.state())
}
