//! cargo run --example echo_client -- 127.0.0.1:8881 hello "second message" [--trace]
//!
//! The textbook TCP echo client, non-blocking. Two points the textbook glosses over:
//! `connect` on a non-blocking socket returns at once and completes later (the loop checks
//! the outcome when the socket becomes writable), and a reply may arrive in pieces, so
//! the client collects bytes until the whole echo is in rather than trusting one `recv`.

mod common;

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{CloseReason, Config, ConnectOptions, Ctx, Endpoint, EventLoop, Handler};

/// Sends each message in turn and waits for its full echo before the next.
struct Client {
    messages: Vec<String>,
    next: usize,
    received: Vec<u8>,
    report: mpsc::Sender<Result<String, String>>,
}

impl Client {
    fn send_next(&mut self, ctx: &mut Ctx<'_>) {
        match self.messages.get(self.next) {
            Some(m) => {
                println!("SENT {m}");
                ctx.send(m.as_bytes());
            }
            // Done: half-close, the server answers with its own EOF and the loop ends.
            None => ctx.shutdown_write(),
        }
    }
}

impl Handler for Client {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        self.send_next(ctx);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        self.received.extend_from_slice(data);
        let Some(want) = self.messages.get(self.next) else {
            let _ = self
                .report
                .send(Err("unexpected bytes after the last echo".into()));
            ctx.abort();
            return;
        };
        // A stream has no message boundaries: wait until the whole echo is in.
        if self.received.len() < want.len() {
            return;
        }
        let got = String::from_utf8_lossy(&self.received).into_owned();
        if got != *want {
            let _ = self
                .report
                .send(Err(format!("echo mismatch: sent {want:?}, got {got:?}")));
            ctx.abort();
            return;
        }
        let _ = self.report.send(Ok(got));
        self.received.clear();
        self.next += 1;
        self.send_next(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, reason: &CloseReason) {
        if !reason.is_clean() {
            let _ = self.report.send(Err(reason.to_string()));
        }
        ctx.stop_loop(Duration::ZERO);
    }
}

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let mut args = args.into_iter();
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8881".into());
    let mut messages: Vec<String> = args.collect();
    if messages.is_empty() {
        messages.push("hello".into());
    }
    match run(&addr, messages, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    addr: &str,
    messages: Vec<String>,
    trace: Option<Tracer>,
) -> Result<(), Box<dyn std::error::Error>> {
    let count = messages.len();
    let (tx, rx) = mpsc::channel();
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    let client = Client {
        messages,
        next: 0,
        received: Vec::new(),
        report: tx,
    };
    let opts = ConnectOptions::new().timeout(Duration::from_secs(3));
    el.connect(&Endpoint::Inet(resolve_one(addr)?), opts, Box::new(client));
    el.run()?;
    let mut ok = 0;
    for r in rx.try_iter() {
        match r {
            Ok(m) => {
                println!("RCVD {m}");
                ok += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if ok != count {
        return Err(format!("{ok} of {count} echoes received").into());
    }
    Ok(())
}
