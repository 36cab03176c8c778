//! cargo run --release --example host_poll -- 127.0.0.1:7002 [--trace]
//!
//! Nesting the event loop in a program that already has its own poller: an echo server
//! whose loop is driven from the host's `mio::Poll`, next to the host's own work (a timer
//! printing `host tick N` to stderr). No second thread: one `poll` waits for both.
//!
//! How it works: the loop's poll descriptor is an epoll descriptor, and an epoll
//! descriptor can itself be waited on — it becomes readable when the loop has events. The
//! host registers it, and when it is readable calls `run_once(Some(Duration::ZERO))`,
//! which handles what is ready without blocking. Two things no event announces:
//!
//! - **The loop's timers** (connect, close and idle deadlines, a stop's grace period) do
//!   not make its descriptor readable. [`EventLoop::timeout`] says how long the host may
//!   wait; the host waits no longer than that.
//! - **Work left for later.** mio registers descriptors *edge-triggered*, and the host's
//!   poller is no exception: it reports the loop's descriptor when it *becomes* readable,
//!   not while it stays so. When the loop stops early on purpose (a batch of events
//!   that filled its buffer, a connection's read budget used up for fairness, messages
//!   left in a channel), it is still "readable" but no new edge will come, and a host
//!   that only waited for one would hang with work pending. So after being woken, the
//!   host runs the loop until it has nothing immediate left, which `el.timeout() ==
//!   Some(Duration::ZERO)` says (bounded, so the host's own work gets its turn too).
//!
//! Ctrl-C (or SIGTERM) stops the loop gracefully; the host exits when `run_once` says the
//! loop has stopped.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// The host's token for the loop's descriptor.
const LOOP: Token = Token(0);

/// The host's own periodic work.
const TICK: Duration = Duration::from_millis(200);

/// Turns of the loop per wake-up at most, before the host's own work gets a look in.
const MAX_TURNS: usize = 64;

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let [listen] = args.as_slice() else {
        eprintln!("host_poll: usage: host_poll LISTEN_ADDR [--trace]");
        return ExitCode::FAILURE;
    };
    match host(listen, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host_poll: {e}");
            ExitCode::FAILURE
        }
    }
}

fn host(addr: &str, trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    let bound = el.listen(&Endpoint::Inet(resolve_one(addr)?), ListenKind::Tcp, || {
        Box::new(Echo)
    })?;
    println!("listening tcp {}", bound.addr);
    std::io::stdout().flush()?;
    // The signals arrive through the loop's own poller (a self-pipe registered in it), so
    // they wake the host too.
    el.handle_signals(Duration::from_secs(2))?;

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    // Only borrowed: the loop keeps owning (and will close) its descriptor.
    poll.registry()
        .register(&mut SourceFd(&el.as_raw_fd()), LOOP, Interest::READABLE)?;

    let mut ticks = 0u64;
    let mut next_tick = Instant::now() + TICK;
    // When the loop wants to run even without an event (its timers do not make its
    // descriptor readable), as an instant, so that the host's own work between turns
    // counts against it.
    let mut loop_due = deadline(&mut el, Instant::now());
    loop {
        let now = Instant::now();
        let until = loop_due.map_or(next_tick, |d| d.min(next_tick));
        match poll.poll(&mut events, Some(until.saturating_duration_since(now))) {
            Ok(()) => {}
            // A signal (SIGTERM for the loop, say) interrupted the wait: look again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        let woken = events.iter().any(|e| e.token() == LOOP);
        if woken || loop_due.is_some_and(|d| d <= now) {
            if !run_loop(&mut el)? {
                break;
            }
            loop_due = deadline(&mut el, Instant::now());
        }
        if now >= next_tick {
            ticks += 1;
            eprintln!("host tick {ticks}");
            // From now, not from the missed tick: no burst of ticks after a long turn.
            next_tick = now + TICK;
        }
    }
    let s = el.stats();
    eprintln!(
        "loop stopped after {ticks} host ticks: {} accepted, {} bytes echoed",
        s.accepted, s.bytes_out
    );
    Ok(())
}

/// Runs the loop until it has nothing immediate left (or `MAX_TURNS` turns); false once
/// it has stopped.
fn run_loop(el: &mut EventLoop) -> std::io::Result<bool> {
    for _ in 0..MAX_TURNS {
        if !el.run_once(Some(Duration::ZERO))? {
            return Ok(false);
        }
        // Zero: work is waiting that no edge will announce (see the module docs).
        if el.timeout() != Some(Duration::ZERO) {
            break;
        }
    }
    // Still busy after MAX_TURNS: `deadline` is now, so the host polls without waiting.
    Ok(true)
}

/// The instant by which the loop must run again even if its descriptor stays quiet.
fn deadline(el: &mut EventLoop, now: Instant) -> Option<Instant> {
    // A wait too long to represent is no deadline at all.
    el.timeout().and_then(|t| now.checked_add(t))
}
