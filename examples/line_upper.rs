//! cargo run --example line_upper -- 127.0.0.1:7000 [--trace]
//!
//! Embedding echoloop with a protocol of your own: each line a client sends comes back in
//! upper case. It shows what a real protocol must do on a stream: bytes arrive in arbitrary
//! pieces, so a line may be split across reads (keep the partial line) and one read may
//! carry several lines (answer each). It also bounds what a client can make it hold.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{Config, Ctx, Endpoint, EventLoop, Handler, ListenKind};

/// The longest line we accept; a client sending more without a newline is cut off rather
/// than allowed to grow our memory.
const MAX_LINE: usize = 64 * 1024;

/// Per-connection state: the incomplete line received so far.
#[derive(Default)]
struct LineUpper {
    partial: Vec<u8>,
}

impl Handler for LineUpper {
    fn on_data(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..=nl]);
            self.partial.make_ascii_uppercase();
            // Everything sent in one callback goes out in one write.
            ctx.send(&self.partial);
            self.partial.clear();
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE {
            ctx.send(b"ERROR line too long\n");
            ctx.close();
        }
    }

    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_>) {
        // A last line without a newline is still a line.
        if !self.partial.is_empty() {
            self.partial.make_ascii_uppercase();
            ctx.send(&self.partial);
        }
        ctx.close();
    }
}

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let addr = args.first().map_or("127.0.0.1:7000", String::as_str);
    match serve(addr, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("line_upper: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str, trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    let bound = el.listen(&Endpoint::Inet(resolve_one(addr)?), ListenKind::Tcp, || {
        Box::<LineUpper>::default()
    })?;
    println!("listening tcp {}", bound.addr);
    std::io::stdout().flush()?;
    el.handle_signals(Duration::from_secs(5))?;
    el.run()?;
    Ok(())
}
