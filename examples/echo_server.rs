//! cargo run --example echo_server -- 127.0.0.1:8881 [--trace]
//!
//! The textbook TCP echo server, non-blocking: one thread, one poll loop, any number of
//! clients. Compare with the blocking version in `echoloop::guide` (section 2): the accept
//! loop, the per-client read/write loop and the thread pool are all replaced by one
//! `listen` call and the `Echo` handler. Stop it with Ctrl-C: it finishes what it owes.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind};

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let addr = args.first().map_or("127.0.0.1:8881", String::as_str);
    match serve(addr, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str, trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    // One factory call per accepted connection; Echo holds no state, so this is free.
    let bound = el.listen(&Endpoint::Inet(resolve_one(addr)?), ListenKind::Tcp, || {
        Box::new(Echo)
    })?;
    println!("listening tcp {}", bound.addr);
    std::io::stdout().flush()?;
    el.handle_signals(Duration::from_secs(5))?;
    el.run()?;
    Ok(())
}
