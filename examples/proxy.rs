//! cargo run --release --example proxy -- 127.0.0.1:7000 127.0.0.1:8881 [--trace]
//!
//! A TCP relay (a port forwarder): every client accepted on the first address gets its own
//! connection to the second, and bytes flow both ways unchanged. Two connections per
//! client, one thread for all of them. A relay is where the subtle points of stream
//! sockets stop being theory:
//!
//! - **Backpressure across connections.** Each direction is a producer (the side we read)
//!   and a consumer (the side we write). A consumer that reads slowly, or not at all,
//!   would make us buffer everything the producer sends. So past `MAX_BUFFERED` bytes
//!   owed to one side we stop reading the other, and resume when the slow side has taken
//!   everything (`on_drained`). The producer's kernel buffers fill, TCP's window closes,
//!   and the producer itself is slowed down: memory stays bounded whatever the peers do.
//!   The two directions stay independent: a stuck request must not stop the answer,
//!   which is why each connection turns the loop's own backpressure off
//!   (`set_backpressure(false)`): that rule pauses a connection's *reading* while *its*
//!   output is owed, which is right for echo and couples the two directions of a relay.
//! - **Nothing to buffer before the upstream exists.** The client's reading is paused until
//!   the upstream connection is open, so bytes the client sends early wait in the kernel.
//! - **Half-close.** TCP has two directions that end separately: a client may send its
//!   request, `shutdown(Write)` (a FIN), and then read the answer. A relay must carry that
//!   FIN across — after every byte before it — instead of closing, or the answer is lost.
//!   Each side's EOF becomes a `shutdown_write` of the other; a connection ends by itself
//!   once both of its directions are finished.
//! - **Errors carried as errors.** A reset, an upstream that refuses or times out: the
//!   other side is aborted, which sends it a reset (RST). A clean FIN would tell it that
//!   everything had been delivered, which is not true.
//!
//! Ctrl-C (or SIGTERM) stops it gracefully: no new clients and no new input; what each
//! connection is owed is still delivered before it closes (within 5 seconds).

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{
    CloseReason, Config, ConnId, ConnectOptions, Ctx, Endpoint, EventLoop, Handler, ListenKind,
};

/// Bytes owed to one side above which we stop reading the other side.
const MAX_BUFFERED: usize = 256 * 1024;

/// An upstream that neither accepts nor refuses (a firewall dropping packets) must not
/// hold a client forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection of the loop shares: where to connect, and counters.
struct Proxy {
    upstream: Endpoint,
    clients: u64,
    upstream_failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// One side of a relayed pair: what arrives here is sent to `other`. The two handlers
/// know each other only by id, so either may close first without the other holding a
/// dangling reference: acting on a closed id just says `Gone`.
struct Relay {
    side: Side,
    /// The other side; a client learns its upstream's id in `on_open`.
    other: Option<ConnId>,
}

impl Handler<Proxy> for Relay {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Proxy>) {
        // What this connection is owed comes from the other one: pace that one instead
        // (in `on_data`), never this one's reading.
        ctx.set_backpressure(false);
        match self.side {
            Side::Client => {
                // Nowhere to put the client's bytes until the upstream is open: leave them
                // in the kernel (edge-triggered readiness is handled by the loop: resuming
                // goes back for data that arrived meanwhile).
                ctx.pause_reading();
                let state = ctx.state();
                state.clients += 1;
                let to = state.upstream.clone();
                let me = ctx.id();
                let peer = ctx
                    .peer_addr()
                    .map_or_else(|| "?".to_string(), |a| a.to_string());
                let upstream = Relay {
                    side: Side::Upstream,
                    other: Some(me),
                };
                let opts = ConnectOptions::new().timeout(CONNECT_TIMEOUT);
                // The id comes back at once; the outcome reaches the upstream's handler.
                let up = ctx.connect(to, opts, Box::new(upstream));
                self.other = Some(up);
                eprintln!("{me}: client {peer}, connecting upstream {up}");
            }
            Side::Upstream => {
                let Some(client) = self.other else { return };
                if ctx.conn(client).resume_reading().is_err() {
                    // The client left while we were connecting.
                    ctx.abort();
                    return;
                }
                eprintln!("{client} <-> {}: relaying", ctx.id());
            }
        }
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Proxy>, data: &[u8]) {
        let Some(other) = self.other else { return };
        let sent = {
            let mut out = ctx.conn(other);
            // What the other side is owed, this send included.
            out.send(data).map(|()| out.pending_output().unwrap_or(0))
        };
        let owed = match sent {
            Ok(owed) => owed,
            Err(e) => {
                // The other side cannot take bytes any more: nothing can carry these, and
                // dropping them silently would corrupt the stream.
                eprintln!("{}: {} {other} refused data: {e}", ctx.id(), self.side);
                ctx.abort();
                return;
            }
        };
        if owed > MAX_BUFFERED {
            // Backpressure: the other side is slower than this one. Stop reading here;
            // its `on_drained` resumes us.
            ctx.pause_reading();
        }
    }

    fn on_drained(&mut self, ctx: &mut Ctx<'_, Proxy>) {
        // Everything owed to this side has reached the kernel: the other side may send
        // again. Harmless if it was not paused.
        if let Some(other) = self.other {
            let _ = ctx.conn(other).resume_reading();
        }
    }

    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_, Proxy>) {
        // Not the default (closing): the other direction may still be busy. Carry the
        // FIN across; it goes after every byte already queued for the other side.
        if let Some(other) = self.other {
            eprintln!("{}: EOF from {}, half-closing {other}", ctx.id(), self.side);
            let _ = ctx.conn(other).shutdown_write();
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Proxy>, reason: &CloseReason) {
        let me = ctx.id();
        if self.side == Side::Upstream
            && matches!(
                reason,
                CloseReason::ConnectFailed(_) | CloseReason::ConnectTimeout
            )
        {
            ctx.state().upstream_failures += 1;
        }
        if reason.is_clean() {
            // Both directions finished: the other side finishes (or has) by itself.
            eprintln!("{me}: {} done", self.side);
            return;
        }
        eprintln!("{me}: {} {reason}", self.side);
        if let Some(other) = self.other {
            // A reset for a reset: the other peer must not take this for a clean end.
            if ctx.conn(other).abort().is_ok() {
                eprintln!("{me}: resetting {other}");
            }
        }
    }
}

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("proxy: usage: proxy LISTEN_ADDR UPSTREAM_ADDR [--trace]");
        return ExitCode::FAILURE;
    };
    match serve(listen, upstream, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    listen: &str,
    upstream: &str,
    trace: Option<Tracer>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listen = Endpoint::Inet(resolve_one(listen)?);
    let upstream = Endpoint::Inet(resolve_one(upstream)?);
    let mut config = Config::default();
    config.trace = trace;
    let state = Proxy {
        upstream: upstream.clone(),
        clients: 0,
        upstream_failures: 0,
    };
    let mut el = EventLoop::with_state(config, state)?;
    let bound = el.listen(&listen, ListenKind::Tcp, || {
        Box::new(Relay {
            side: Side::Client,
            other: None,
        })
    })?;
    println!("listening tcp {}", bound.addr);
    std::io::stdout().flush()?;
    eprintln!("relaying to {upstream}");
    el.handle_signals(Duration::from_secs(5))?;
    el.run()?;
    let s = el.state();
    eprintln!(
        "proxy stopped: {} clients, {} upstream failures",
        s.clients, s.upstream_failures
    );
    Ok(())
}
