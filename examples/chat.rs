//! cargo run --release --example chat -- 127.0.0.1:9001 [--trace]
//!
//! A chat room over plain TCP (try it with `nc 127.0.0.1 9001` in a few terminals): every
//! line a member sends goes, unchanged, to every other member. It shows what a server
//! whose connections work together must get right:
//!
//! - **Shared state without shared pointers.** The set of members lives in the loop's
//!   state (`ctx.state()`), reachable from every callback; members are named by
//!   [`ConnId`], and sending to one that has just left is refused (`Gone`), not a crash.
//! - **Messages, not reads.** A stream has no message boundaries: one read may carry half
//!   a line or many. Complete lines are relayed; an unfinished one is kept, up to
//!   `MAX_LINE` bytes — a client sending more without a newline is told and closed,
//!   rather than allowed to grow our memory.
//! - **A slow reader must not hurt the others.** Sending never blocks: what a member does
//!   not read piles up in its send buffer, in our memory. One member that stops reading
//!   must neither stall the room (so we cannot wait for it) nor make us buffer without
//!   bound (so we cannot keep queueing for it): once `MAX_UNREAD` bytes (1 MiB) of chat
//!   are waiting for it in our memory — on top of what the kernel's buffers hold — it is
//!   disconnected with a reset, and the server logs `disconnecting #N: 1 MiB of chat
//!   unread`.
//! - **The room needs a bound of its own.** 1 MiB per member is still 1 GiB for 1,000
//!   members that all stop reading (a flood of idle connections, say). So the room also
//!   counts the memory all members' backlogs hold together (`held_output`: a line sent
//!   to everyone in one turn is kept once, so members that keep up hold nothing of their
//!   own), and before each line is relayed, if the room could then hold more than
//!   `ROOM_UNREAD` (32 MiB), the members furthest behind are disconnected, worst first
//!   (`disconnecting #N: furthest behind, 32 MiB of chat unread in the room`). What the
//!   room cannot see coming is the turn in which a member falls behind: the output of
//!   that turn it could not take becomes its own (up to 64 KiB). So the backlog stays
//!   under 32 MiB plus 64 KiB per member (about 94 MiB for 1,000 idle members, where
//!   1 MiB each would be 1 GiB), plus what the speaker itself holds (at most 1 MiB).
//!
//! Ctrl-C (or SIGTERM) stops it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{CloseReason, Config, ConnId, Ctx, Endpoint, EventLoop, Handler, ListenKind};

/// The longest unfinished line we keep for a member.
const MAX_LINE: usize = 64 * 1024;

/// Chat waiting to be read by one member, past which it is disconnected.
const MAX_UNREAD: usize = 1024 * 1024;

/// Chat waiting to be read by all members together, past which those furthest behind
/// are disconnected.
const ROOM_UNREAD: usize = 32 * 1024 * 1024;

/// The loop's state: who is in the room.
#[derive(Default)]
struct Room {
    members: BTreeSet<ConnId>,
}

/// One member's connection.
#[derive(Default)]
struct Member {
    /// The unfinished line received so far.
    partial: Vec<u8>,
    /// Scratch lists (the others; what each owes), kept to avoid an allocation per
    /// message.
    others: Vec<ConnId>,
    held: Vec<(usize, ConnId)>,
}

impl Member {
    /// Leaves the room now (no more chat is sent to us) and closes gracefully.
    fn leave(&mut self, ctx: &mut Ctx<'_, Room>) {
        let me = ctx.id();
        ctx.state().members.remove(&me);
        self.partial = Vec::new();
        ctx.close();
    }
}

impl Handler<Room> for Member {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Room>) {
        let me = ctx.id();
        let room = &mut ctx.state().members;
        room.insert(me);
        eprintln!("{me} joined ({} online)", room.len());
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Room>, data: &[u8]) {
        // Everything up to the last newline is complete lines; the rest is kept.
        let (lines, rest) = match data.iter().rposition(|&b| b == b'\n') {
            Some(last) => data.split_at(last + 1),
            None => (&data[..0], data),
        };
        if !lines.is_empty() {
            if self.partial.is_empty() {
                // The common case: whole lines, relayed straight from the read buffer.
                broadcast(ctx, &mut self.others, &mut self.held, lines);
            } else {
                self.partial.extend_from_slice(lines);
                broadcast(ctx, &mut self.others, &mut self.held, &self.partial);
                self.partial.clear();
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE {
            eprintln!("{}: line longer than {MAX_LINE} bytes, closing", ctx.id());
            ctx.send(b"ERROR line too long\n");
            self.leave(ctx);
        }
    }

    fn on_peer_closed(&mut self, ctx: &mut Ctx<'_, Room>) {
        // EOF means leaving; an unfinished last line is not a line, so it is dropped.
        self.leave(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Room>, reason: &CloseReason) {
        let me = ctx.id();
        let room = &mut ctx.state().members;
        room.remove(&me);
        eprintln!("{me} left: {reason} ({} online)", room.len());
    }
}

/// Sends `bytes` (whole lines) to every member but the sender. Sending only queues: a
/// member that does not read costs memory, so the room's memory is checked first, then
/// each member's backlog.
fn broadcast(
    ctx: &mut Ctx<'_, Room>,
    others: &mut Vec<ConnId>,
    held_by: &mut Vec<(usize, ConnId)>,
    bytes: &[u8],
) {
    let me = ctx.id();
    // Copy the ids out: sending needs `ctx` again, so the set cannot stay borrowed.
    others.clear();
    others.extend(ctx.state().members.iter().copied().filter(|&id| id != me));
    // What the members' backlogs could hold once this line is queued. A member holding
    // memory of its own is behind (its socket is full), so the line is copied for it,
    // and a buffer that grows may double: counted so, the room stays under its bound
    // even when a thousand members fall behind in step.
    held_by.clear();
    let mut room_may_hold = 0;
    for &id in others.iter() {
        let held = ctx.conn(id).held_output().unwrap_or(0);
        let after = if held == 0 { 0 } else { 2 * held + bytes.len() };
        room_may_hold += after;
        held_by.push((after, id));
    }
    if room_may_hold > ROOM_UNREAD {
        // Furthest behind first: they are the likeliest never to catch up, and each cut
        // frees the most.
        held_by.sort_unstable_by_key(|&(after, _)| std::cmp::Reverse(after));
        for &(after, id) in held_by.iter() {
            if room_may_hold <= ROOM_UNREAD {
                break;
            }
            eprintln!(
                "disconnecting {id}: furthest behind, {} MiB of chat unread in the room",
                ROOM_UNREAD >> 20
            );
            cut_off(ctx, id);
            room_may_hold -= after;
        }
        // Those cut off are out of the room now (their connections answer queries until
        // the loop sweeps them, so ask the room, not them).
        let members = &ctx.state().members;
        others.retain(|id| members.contains(id));
    }
    for &id in others.iter() {
        let mut member = ctx.conn(id);
        match member.pending_output() {
            Ok(owed) if owed + bytes.len() > MAX_UNREAD => {
                eprintln!(
                    "disconnecting {id}: {} MiB of chat unread",
                    MAX_UNREAD >> 20
                );
                cut_off(ctx, id);
            }
            Ok(_) => {
                // Only refused if it is closing already (and leaving the room).
                let _ = member.send(bytes);
            }
            // Closing (gone, or leaving the room).
            Err(_) => {}
        }
    }
}

/// Disconnects a member with a reset, not a FIN: it has not received what was said, and
/// must not take the end for a clean one. Its `on_close` runs after this callback.
fn cut_off(ctx: &mut Ctx<'_, Room>, id: ConnId) {
    let _ = ctx.conn(id).abort();
    ctx.state().members.remove(&id);
}

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let [listen] = args.as_slice() else {
        eprintln!("chat: usage: chat LISTEN_ADDR [--trace]");
        return ExitCode::FAILURE;
    };
    match serve(listen, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: &str, trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::with_state(config, Room::default())?;
    let bound = el.listen(&Endpoint::Inet(resolve_one(addr)?), ListenKind::Tcp, || {
        Box::<Member>::default()
    })?;
    println!("listening tcp {}", bound.addr);
    std::io::stdout().flush()?;
    el.handle_signals(Duration::from_secs(2))?;
    el.run()?;
    Ok(())
}
