//! cargo run --release --example embed -- [--trace]
//!
//! Running the event loop inside a larger program: the loop lives on its own thread and
//! serves clients, and the rest of the program hands it work. Nothing outside may touch a
//! single-threaded loop directly — its connections and handlers belong to its thread — so
//! the way in is to leave a message where the loop will look and wake it (mio's `Waker`):
//!
//! - `el.channel(..)` makes a bounded channel whose [`Sender`] any thread may use. Each
//!   message runs a callback on the loop's thread, with the loop's state and connections
//!   at hand: here a `Command` to broadcast a line to every connected client, or to say
//!   how many there are (the answer comes back over an ordinary channel).
//! - Bounded means a producer faster than the loop is told so (`TrySendError::Full`, the
//!   message handed back) instead of queueing without limit: it waits and retries.
//! - Once the loop has stopped, a send says `TrySendError::Closed`: nobody will read it.
//! - A [`echoloop::StopHandle`] stops the loop gracefully from any thread.
//!
//! The example plays both parts: the loop thread, and a main thread with plain blocking
//! clients that check what they receive.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use echoloop::trace::Tracer;
use echoloop::{
    CloseReason, Config, ConnId, Ctx, Endpoint, EventLoop, Handler, ListenKind, LoopCtx, Sender,
    TrySendError,
};

/// Messages waiting for the loop at most.
const CAPACITY: usize = 8;

/// Broadcasts sent in one burst, more than the channel holds.
const BURST: usize = 100;

/// Bytes waiting for a client above which a broadcast disconnects it instead of queueing
/// more (a client that never reads must not grow our memory).
const MAX_UNREAD: usize = 1024 * 1024;

/// How long the main thread waits for any answer before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// What the rest of the program may ask of the loop.
enum Command {
    /// Send this text to every connected client.
    Broadcast(String),
    /// Say how many clients are connected.
    Count(mpsc::Sender<usize>),
}

/// The loop's state: the clients connected now.
#[derive(Default)]
struct Clients {
    ids: BTreeSet<ConnId>,
}

/// Echoes what a client sends, and is listed in [`Clients`] while connected.
struct Client;

impl Handler<Clients> for Client {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Clients>) {
        let me = ctx.id();
        ctx.state().ids.insert(me);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Clients>, data: &[u8]) {
        ctx.send(data);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Clients>, _reason: &CloseReason) {
        let me = ctx.id();
        ctx.state().ids.remove(&me);
    }
}

/// Runs on the loop's thread for every message, in order.
fn on_command(lctx: &mut LoopCtx<'_, Clients>, cmd: Command) {
    match cmd {
        Command::Broadcast(text) => {
            // Copy the ids out: acting on a connection needs the context again.
            let ids: Vec<ConnId> = lctx.state().ids.iter().copied().collect();
            for id in ids {
                let mut client = lctx.conn(id);
                match client.pending_output() {
                    Ok(owed) if owed + text.len() > MAX_UNREAD => {
                        let _ = client.abort();
                    }
                    // Refused only if it is closing: it is leaving anyway.
                    Ok(_) => {
                        let _ = client.send(text.as_bytes());
                    }
                    Err(_) => {}
                }
            }
        }
        Command::Count(reply) => {
            // The asker may have given up waiting; nothing to do then.
            let _ = reply.send(lctx.state().ids.len());
        }
    }
}

fn main() -> ExitCode {
    let (_, trace) = common::setup();
    match run(trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Hands `cmd` to the loop, waiting while its channel is full. Returns how many times it
/// found the channel full.
fn send_retrying(tx: &Sender<Command>, mut cmd: Command) -> Result<u32, String> {
    let mut full = 0;
    while full < 10_000 {
        match tx.try_send(cmd) {
            Ok(()) => return Ok(full),
            // The loop is behind: the message comes back; give it a moment.
            Err(TrySendError::Full(back)) => {
                full += 1;
                cmd = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the loop's channel stayed full".into())
}

fn run(trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    // The loop is built on its thread (handlers and the channel callback need not be
    // Send); the thread hands back where it listens, how to stop it, and the Sender.
    let (tx, rx) = mpsc::channel();
    let reactor = std::thread::spawn(move || -> Result<echoloop::Stats, String> {
        let mut config = Config::default();
        config.trace = trace;
        let mut el =
            EventLoop::with_state(config, Clients::default()).map_err(|e| e.to_string())?;
        let bound = el
            .listen(
                &Endpoint::Inet(([127, 0, 0, 1], 0).into()),
                ListenKind::Tcp,
                || Box::new(Client),
            )
            .map_err(|e| e.to_string())?;
        let commands = el.channel(CAPACITY, on_command);
        let _ = tx.send((bound.addr, el.stop_handle(), commands));
        el.run().map_err(|e| e.to_string())?;
        Ok(el.stats())
    });
    let (addr, stop, commands) = rx.recv().map_err(|_| "the loop thread failed to start")?;
    let Endpoint::Inet(addr) = addr else {
        return Err("expected an IP address".into());
    };
    println!("loop running on {addr}");

    // Three plain blocking clients. An echo round trip each proves the loop has accepted
    // it (its on_open, which lists it, runs before its first on_data).
    let mut clients = Vec::new();
    for i in 0..3 {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(WAIT))?;
        let mut reader = BufReader::new(s.try_clone()?);
        let msg = format!("message {i}\n");
        (&s).write_all(msg.as_bytes())?;
        let mut back = String::new();
        reader.read_line(&mut back)?;
        if back != msg {
            return Err(format!("echo mismatch: {back:?}").into());
        }
        println!("RCVD {}", back.trim_end());
        clients.push(reader);
    }

    // A question and its answer: the reply travels back over an ordinary channel.
    let (reply_tx, reply_rx) = mpsc::channel();
    send_retrying(&commands, Command::Count(reply_tx))?;
    let n = reply_rx.recv_timeout(WAIT)?;
    println!("the loop has {n} clients");

    // More messages than the channel holds, as fast as we can: some find it full.
    let mut full = 0;
    for k in 0..BURST {
        full += send_retrying(&commands, Command::Broadcast(format!("broadcast {k}\n")))?;
    }
    println!("sent {BURST} broadcasts (channel of {CAPACITY}; found full {full} times)");
    for (i, reader) in clients.iter_mut().enumerate() {
        for k in 0..BURST {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line != format!("broadcast {k}\n") {
                return Err(format!("client {i}: expected broadcast {k}, got {line:?}").into());
            }
        }
        println!("client {i} RCVD {BURST} broadcasts in order");
    }

    // Graceful: the loop closes each connection (a FIN after what it owed), waits up to a
    // second for the clients to finish, then `run` returns.
    stop.stop(Duration::from_secs(1));
    for (i, mut reader) in clients.into_iter().enumerate() {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest)?;
        println!("client {i}: EOF from the stopping loop");
        // Dropping it closes our side: the loop's connection is then finished.
    }
    let stats = reactor.join().map_err(|_| "the loop thread panicked")??;

    // The loop is gone: a message now would never be read, and says so.
    match commands.try_send(Command::Broadcast("too late\n".into())) {
        Err(TrySendError::Closed(_)) => println!("after stop: Closed (the loop has stopped)"),
        Err(e) => return Err(format!("after stop: expected Closed, got {e}").into()),
        Ok(()) => return Err("after stop: the message was accepted".into()),
    }
    println!(
        "stopped: {} accepted, {} bytes in, {} bytes out",
        stats.accepted, stats.bytes_in, stats.bytes_out
    );
    Ok(())
}
