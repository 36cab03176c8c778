//! cargo run --release --example tail -- 127.0.0.1:7003 [--trace] -- sh -c 'for i in 1 2 3 4 5; do date; sleep 1; done'
//!
//! Runs a command and sends every line it prints to every TCP client connected at the time
//! (try it with `nc 127.0.0.1 7003` in a few terminals). When the command exits, each
//! client gets, after all of its output, one last line — `exited with status N`, or
//! `killed by signal N` — and the server stops: every client receives everything, then
//! EOF, and the process exits 0. It shows how the loop waits for things that are not
//! sockets, next to its sockets, on one thread:
//!
//! - **A pipe is a descriptor like a socket.** The command's stdout is watched with
//!   `add_fd`; the loop makes it non-blocking. Readiness is edge-triggered, so each time
//!   we read until `WouldBlock` — or until a read budget is spent: a command that
//!   refills the pipe as fast as we empty it (`yes`) may never let `WouldBlock` come, and
//!   every client and signal would wait meanwhile. Out of budget, a zero-delay loop timer
//!   brings us back after the loop has had its turn (no event would: the data is already
//!   there).
//! - **A process is a descriptor too.** A pidfd (Linux 5.3) becomes readable when the
//!   command exits, so the exit is learnt without blocking in `wait` and without SIGCHLD.
//!   The end of the output (EOF on the pipe) and the exit are separate events that come
//!   in either order; the status line goes out once both have been seen, so it always
//!   follows the last line. (Like a shell pipe, the output ends when every process
//!   holding the pipe has closed it: a background process the command leaves behind
//!   holds the status line back until it closes its stdout.)
//! - **Lines, not reads.** A read may end in the middle of a line; the unfinished line is
//!   kept until its newline, so a client that joins later starts at the beginning of a
//!   line. A line longer than `MAX_LINE` (64 KiB) is sent in pieces as it comes rather
//!   than held (the bytes are the same; only a client joining in its middle starts
//!   there). An unterminated last line gets its newline before the status line.
//! - **A client that does not read must not hurt the others.** Every chunk goes to every
//!   client with a plain `send`; what a client does not read waits in our memory. Once
//!   more than `MAX_BEHIND` (1 MiB) waits for one client, it is cut off: `close_with`
//!   drops its backlog and sends it a last line saying why, and the server logs
//!   `tail: cutting off #N (ADDR): more than 1 MiB behind`. The others never wait for it.
//! - **The command goes at the pace of the fastest client.** A command can print faster
//!   than any network delivers (`cat` of a big file): cutting off everyone who falls
//!   behind it would cut off healthy clients too. So while *every* client has more than
//!   `PACE` (256 KiB) waiting, we stop reading the pipe; it fills, and the command waits
//!   in its `write`, as it would writing into a shell pipe. A client draining
//!   (`on_drained`), joining or leaving resumes the reading. Only a client that falls
//!   1 MiB behind the others is cut off — or that fails to read alone, until someone
//!   else joins: until then it holds the command up, as a stuck reader of a shell pipe
//!   would, while our memory stays bounded.
//!
//! Clients' input is ignored. Ctrl-C (or SIGTERM) stops the server gracefully and kills
//! the command (its whole process group). Bad arguments: one line on stderr, exit code 2;
//! a command that cannot be started: one line, exit code 1.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::Duration;

use echoloop::net::resolve_one;
use echoloop::trace::Tracer;
use echoloop::{
    CloseReason, Config, ConnId, Ctx, Endpoint, EventLoop, FdInterest, Handler, ListenKind,
    LoopContext, LoopCtx, SourceId,
};

/// Bytes waiting for one client above which it is cut off.
const MAX_BEHIND: usize = 1024 * 1024;

/// Bytes waiting for every client above which we stop reading the command's output (well
/// below `MAX_BEHIND`, so that the fastest client is never cut off).
const PACE: usize = 256 * 1024;

/// The longest unfinished line we hold; more is sent as it comes.
const MAX_LINE: usize = 64 * 1024;

/// One read from the pipe (a pipe holds 64 KiB by default).
const READ_BUF: usize = 64 * 1024;

/// Bytes read from the pipe per turn of the loop, as the loop's own `read_budget` does for
/// each connection: then the others (clients arriving, signals) get their turn.
const READ_BUDGET: usize = 256 * 1024;

/// What a client that is cut off reads last. It starts with a newline because what the
/// kernel had already taken of its backlog may end in the middle of a line.
const CUT_OFF: &[u8] = b"\ntail: cut off: too far behind\n";

/// How long clients get to receive what they are owed when the server stops.
const GRACE: Duration = Duration::from_secs(5);

/// The loop's state, reached by every callback.
#[derive(Default)]
struct Tail {
    /// The clients receiving the output now.
    clients: BTreeSet<ConnId>,
    /// Scratch copy of `clients`, kept to avoid an allocation per chunk.
    scratch: Vec<ConnId>,
    /// The command, until it has been reaped.
    child: Option<Child>,
    /// Its output; `None` once it has ended (EOF).
    output: Option<Output>,
    /// The pidfd's source, removed once the exit is known.
    exit_watch: Option<SourceId>,
    /// The status line, from the exit until it is sent after the last line.
    exit_line: Option<String>,
}

/// The command's stdout and what reading it needs. It lives in the state, not in the
/// readiness callback, because the timer that resumes reading (after the budget is spent,
/// or once a client has caught up) needs it too: both call [`read_output`].
struct Output {
    /// The pipe. The loop holds the other `Rc` (it only waits on it), so one descriptor
    /// serves both; reading through `&File` needs no `&mut`.
    pipe: Rc<File>,
    /// The loop's id for it, to stop watching at EOF.
    source: SourceId,
    /// The unfinished line read so far.
    partial: Vec<u8>,
    buf: Box<[u8]>,
    /// A timer to read again is set already ([`read_soon`]).
    resume_set: bool,
    /// Reading stopped because every client is behind; a client's callback resumes it.
    paused: bool,
}

/// A connected client: listed in [`Tail::clients`] while open; its input is dropped.
struct Watcher;

impl Handler<Tail> for Watcher {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Tail>) {
        let me = ctx.id();
        let peer = ctx
            .peer_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let clients = &mut ctx.state().clients;
        clients.insert(me);
        eprintln!("tail: {me} ({peer}) joined ({} watching)", clients.len());
        // Behind nobody: if every other client held the reading up, it goes on now.
        unpause(ctx);
    }

    fn on_data(&mut self, _: &mut Ctx<'_, Tail>, _: &[u8]) {}

    fn on_drained(&mut self, ctx: &mut Ctx<'_, Tail>) {
        // It has caught up (everything sent to it is with the kernel).
        unpause(ctx);
    }

    fn on_peer_closed(&mut self, _: &mut Ctx<'_, Tail>) {
        // Not the default (closing): a client that has nothing to say may send its EOF at
        // once (`nc -N`, `< /dev/null`) and still read. It stays until the end, or until
        // a send finds it gone.
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Tail>, reason: &CloseReason) {
        let me = ctx.id();
        let clients = &mut ctx.state().clients;
        clients.remove(&me);
        eprintln!("tail: {me} left: {reason} ({} watching)", clients.len());
        // Perhaps it was the one holding the reading up.
        unpause(ctx);
    }
}

/// Resumes reading the command's output if it was paused for the clients.
fn unpause(ctx: &mut Ctx<'_, Tail>) {
    let paused = ctx
        .state()
        .output
        .as_mut()
        .is_some_and(|out| std::mem::take(&mut out.paused));
    if paused {
        read_soon(ctx);
    }
}

/// Reads the command's output again on the next turn, once however many ask: a
/// zero-delay loop timer, because what is already in the pipe raises no new event. Any
/// context can ask (a client's callback, the reading itself), hence the trait.
fn read_soon(ctx: &mut impl LoopContext<Tail>) {
    let Some(out) = ctx.state().output.as_mut() else {
        return;
    };
    if std::mem::replace(&mut out.resume_set, true) {
        return;
    }
    ctx.set_loop_timer(
        Duration::ZERO,
        Box::new(|ctx: &mut LoopCtx<'_, Tail>| {
            if let Some(out) = ctx.state().output.as_mut() {
                out.resume_set = false;
            }
            read_output(ctx);
        }),
    );
}

/// True when every client has more than `PACE` bytes waiting (false with no clients: the
/// output is then read and dropped).
fn all_behind(ctx: &mut LoopCtx<'_, Tail>) -> bool {
    let mut ids = std::mem::take(&mut ctx.state().scratch);
    ids.clear();
    ids.extend(ctx.state().clients.iter().copied());
    let least = ids
        .iter()
        .filter_map(|&id| ctx.conn(id).pending_output().ok())
        .min();
    ctx.state().scratch = ids;
    least.is_some_and(|owed| owed > PACE)
}

/// Sends `bytes` (whole lines, or a piece of an overlong one) to every client. Sending
/// only queues: a client that does not read costs memory, so its backlog is checked first.
fn broadcast(ctx: &mut LoopCtx<'_, Tail>, bytes: &[u8]) {
    if ctx.is_stopping() {
        // Stopped by a signal: every client is closing and takes nothing more.
        return;
    }
    // Copy the ids out: sending needs `ctx` again, so the set cannot stay borrowed.
    let mut ids = std::mem::take(&mut ctx.state().scratch);
    ids.clear();
    ids.extend(ctx.state().clients.iter().copied());
    for &id in &ids {
        let mut client = ctx.conn(id);
        match client.pending_output() {
            Ok(owed) if owed + bytes.len() > MAX_BEHIND => {
                let peer = client
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                eprintln!(
                    "tail: cutting off {id} ({peer}): more than {} MiB behind",
                    MAX_BEHIND >> 20
                );
                // Its backlog is dropped and it reads why; then a graceful close. Its
                // `on_close` runs after this callback; it gets nothing more meanwhile.
                let _ = client.close_with(CUT_OFF);
                ctx.state().clients.remove(&id);
            }
            Ok(_) => {
                // Refused only if it is closing already.
                let _ = client.send(bytes);
            }
            // Gone meanwhile: its `on_close` takes it off the list.
            Err(_) => {}
        }
    }
    ctx.state().scratch = ids;
}

/// How a round of reading the pipe ended.
enum Stop {
    /// `WouldBlock`: the next write raises an event.
    Drained,
    /// The budget is spent: come back on the next turn.
    Budget,
    /// Every client is behind: a client's callback resumes it.
    Paced,
    /// EOF (or a read error).
    Ended,
}

/// Reads the command's output: on readiness, and again from a timer after the budget ran
/// out or the clients caught up. Whole lines go to the clients; the unfinished one is kept.
fn read_output(ctx: &mut LoopCtx<'_, Tail>) {
    // Taken out of the state while we work, so that `ctx` is free for sending.
    let Some(mut out) = ctx.state().output.take() else {
        return; // ended already (a timer set before EOF)
    };
    let mut budget = READ_BUDGET;
    let stop = loop {
        if budget == 0 {
            break Stop::Budget;
        }
        if !ctx.is_stopping() && all_behind(ctx) {
            break Stop::Paced;
        }
        match (&*out.pipe).read(&mut out.buf) {
            Ok(0) => break Stop::Ended,
            Ok(n) => {
                budget = budget.saturating_sub(n);
                relay(ctx, &mut out.partial, &out.buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break Stop::Drained,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // Nothing more can be read: treat it as the end of the output.
                eprintln!("tail: reading the command's output: {e}");
                break Stop::Ended;
            }
        }
    };
    if matches!(stop, Stop::Ended) {
        // EOF: every process holding the pipe has closed it. A last line without its
        // newline is still a line.
        if !out.partial.is_empty() {
            out.partial.push(b'\n');
            broadcast(ctx, &out.partial);
        }
        // The loop deregisters and drops its handle; ours goes with `out`.
        let _ = ctx.remove_fd(out.source);
        finish_if_done(ctx);
        return;
    }
    out.paused = matches!(stop, Stop::Paced);
    ctx.state().output = Some(out);
    if matches!(stop, Stop::Budget) {
        // Edge-triggered: no event will come for data already in the pipe.
        read_soon(ctx);
    }
}

/// Sends the complete lines of `data` (joined to what `partial` holds), keeps the rest.
fn relay(ctx: &mut LoopCtx<'_, Tail>, partial: &mut Vec<u8>, data: &[u8]) {
    let (lines, rest) = match data.iter().rposition(|&b| b == b'\n') {
        Some(last) => data.split_at(last + 1),
        None => (&data[..0], data),
    };
    if !lines.is_empty() {
        if partial.is_empty() {
            // The common case: whole lines, sent straight from the read buffer.
            broadcast(ctx, lines);
        } else {
            partial.extend_from_slice(lines);
            broadcast(ctx, partial);
            partial.clear();
        }
    }
    partial.extend_from_slice(rest);
    if partial.len() >= MAX_LINE {
        // Holding it whole would let one endless line grow our memory without bound.
        broadcast(ctx, partial);
        partial.clear();
    }
}

/// The pidfd is readable: the command has exited. Reaps it (`try_wait` does not block)
/// and keeps its status line for after the last line of output.
fn on_exit(ctx: &mut LoopCtx<'_, Tail>) {
    let tail = ctx.state();
    let Some(child) = tail.child.as_mut() else {
        return;
    };
    let line = match child.try_wait() {
        // Not exited after all: the pidfd's next edge is the exit.
        Ok(None) => return,
        Ok(Some(status)) => status_line(status),
        Err(e) => format!("exit status unknown: {e}\n"),
    };
    tail.child = None;
    eprint!("tail: the command {line}");
    tail.exit_line = Some(line);
    if let Some(id) = tail.exit_watch.take() {
        let _ = ctx.remove_fd(id);
    }
    finish_if_done(ctx);
}

/// Once the output has ended *and* the command has exited: the status line, after every
/// line (each client's sends stay in order), then a graceful stop, which delivers what
/// each client is owed and then closes it.
fn finish_if_done(ctx: &mut LoopCtx<'_, Tail>) {
    let tail = ctx.state();
    if tail.output.is_some() || ctx.is_stopping() {
        return;
    }
    let Some(line) = ctx.state().exit_line.take() else {
        return;
    };
    broadcast(ctx, line.as_bytes());
    ctx.stop_loop(GRACE);
}

fn status_line(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}\n"),
        (None, Some(sig)) => format!("killed by signal {sig}\n"),
        (None, None) => format!("ended: {status}\n"),
    }
}

/// A descriptor that becomes readable when `child` exits.
fn pidfd_open(child: &Child) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and passes no memory. The pid is our
    // child's and it is not reaped yet, so the number cannot have been reused by another
    // process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel has just made this descriptor for us (close-on-exec, as every
    // pidfd); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kills the command's whole process group: `sh -c 'a | b'` is three processes, and the
/// ones left behind would keep the pipe open. SIGKILL, so that reaping it cannot wait.
fn kill_command(child: &Child) {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) passes no memory. The child leads its own group (`process_group(0)`)
    // and is not reaped yet, so the group id cannot name anyone else's processes.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
        eprintln!(
            "tail: killing the command: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> ExitCode {
    common::init_logger();
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only before the `--`: what follows is the command's, `--trace` included.
    let trace = common::take_trace(&mut args);
    let [listen, sep, program, cmd_args @ ..] = args.as_slice() else {
        return usage();
    };
    if sep != "--" {
        return usage();
    }
    let listen = match listen.to_str().map(resolve_one) {
        Some(Ok(addr)) => addr,
        Some(Err(e)) => {
            eprintln!("tail: {e}");
            return ExitCode::from(2);
        }
        None => return usage(),
    };
    let mut cmd = Command::new(program);
    cmd.args(cmd_args);
    match serve(listen, cmd, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("tail: usage: tail LISTEN_ADDR [--trace] -- COMMAND [ARG...]");
    ExitCode::from(2)
}

fn serve(
    listen: std::net::SocketAddr,
    cmd: Command,
    trace: Option<Tracer>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::with_state(config, Tail::default())?;
    let bound = el.listen(&Endpoint::Inet(listen), ListenKind::Tcp, || {
        Box::new(Watcher)
    })?;
    // Before the command starts: a SIGTERM from now on is ours to handle, and the command
    // must not outlive us.
    el.handle_signals(GRACE)?;
    el.on_stopping(|ctx| {
        // A stop that the command's end did not cause (a signal): end the command too.
        if let Some(child) = &ctx.state().child {
            eprintln!("tail: stopping: killing the command");
            kill_command(child);
        }
    });
    let result = start(&mut el, cmd).and_then(|()| {
        println!("listening tcp {}", bound.addr);
        std::io::stdout().flush()?;
        el.run()?;
        Ok(())
    });
    // However we got here, a command still running is killed and reaped.
    if let Some(mut child) = el.state_mut().child.take() {
        kill_command(&child);
        // Cannot wait long: SIGKILL cannot be caught or ignored.
        match child.wait() {
            Ok(status) => eprint!("tail: the command {}", status_line(status)),
            Err(e) => eprintln!("tail: reaping the command: {e}"),
        }
    }
    result
}

/// Starts the command and watches its output and its exit.
fn start(el: &mut EventLoop<Tail>, mut cmd: Command) -> Result<(), Box<dyn std::error::Error>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        // Its input is not ours to give; its errors go where ours go.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group, so that stopping can kill all of it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take();
    let exited = pidfd_open(&child);
    el.state_mut().child = Some(child);
    let stdout = stdout.ok_or("the command's stdout was not piped")?;
    let exited = exited.map_err(|e| format!("pidfd_open (Linux 5.3 or later): {e}"))?;

    let pipe = Rc::new(File::from(OwnedFd::from(stdout)));
    let source = el.add_fd(Rc::clone(&pipe), FdInterest::Read, |ctx, _, _| {
        read_output(ctx)
    })?;
    let exit_watch = el.add_fd(exited, FdInterest::Read, |ctx, _, _| on_exit(ctx))?;
    let tail = el.state_mut();
    tail.output = Some(Output {
        pipe,
        source,
        partial: Vec::new(),
        buf: vec![0; READ_BUF].into_boxed_slice(),
        resume_set: false,
        paused: false,
    });
    tail.exit_watch = Some(exit_watch);
    Ok(())
}
