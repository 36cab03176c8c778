//! cargo run --example embed
//!
//! Running the event loop inside a larger program: the loop lives on its own thread, the
//! rest of the program talks to it over sockets, and stops it with a `StopHandle` — the
//! cross-thread way in (mio's `Waker`), since nothing else may touch the loop from outside.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The loop is built on its thread (handlers need not be Send); the thread hands back
    // where it listens and how to stop it.
    let (tx, rx) = mpsc::channel();
    let reactor = std::thread::spawn(move || -> Result<echoloop::Stats, String> {
        let mut el = EventLoop::new(Config::default()).map_err(|e| e.to_string())?;
        let bound = el
            .listen(
                &Endpoint::Inet(([127, 0, 0, 1], 0).into()),
                ListenKind::Tcp,
                || Box::new(Echo),
            )
            .map_err(|e| e.to_string())?;
        let _ = tx.send((bound.addr, el.stop_handle()));
        el.run().map_err(|e| e.to_string())?;
        Ok(el.stats())
    });
    let (addr, stop) = rx.recv().map_err(|_| "the loop thread failed to start")?;
    let Endpoint::Inet(addr) = addr else {
        return Err("expected an IP address".into());
    };
    println!("loop running on {addr}");

    // The host program: plain blocking clients, each half-closing and reading to EOF.
    for i in 0..3 {
        let mut s = TcpStream::connect(addr)?;
        let msg = format!("message {i}");
        s.write_all(msg.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut back = String::new();
        s.read_to_string(&mut back)?;
        println!("RCVD {back}");
        if back != msg {
            return Err(format!("echo mismatch: {back:?}").into());
        }
    }

    // Graceful: connections get up to a second to finish, then `run` returns.
    stop.stop(Duration::from_secs(1));
    let stats = reactor.join().map_err(|_| "the loop thread panicked")??;
    println!(
        "stopped: {} accepted, {} bytes in, {} bytes out",
        stats.accepted, stats.bytes_in, stats.bytes_out
    );
    Ok(())
}
