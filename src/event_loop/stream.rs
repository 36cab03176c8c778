//! Stream connections inside the reactor: the driver that does the system calls for each
//! connection's state machine (`crate::conn::Connection`).
//!
//! Teaches: the life of one TCP, TLS or Unix stream connection under edge-triggered
//! readiness — read until `WouldBlock` (or a short read), write straight after
//! processing, partial writes kept in the send buffer, half-close as `shutdown(Write)`,
//! non-blocking connect completed on writability, and a reset when output we owed is
//! thrown away. The rules themselves (what to send when, when to close, deadlines) are
//! the connection's; this file only carries them out.

use std::io;
use std::time::Instant;

use mio::{Interest, Token};

use super::core::{
    Core, Entry, FailedEntry, Inner, SpliceMode, StreamEntry, TimerList, as_stream, entry_at,
    stream_at,
};
use crate::config::ConnectOptions;
use crate::conn::{CloseReason, Connection, Event, Session, State, Teardown};
use crate::error::ConnError;
use crate::handler::{Ctx, Handler};
use crate::id::ConnId;
use crate::net::{Endpoint, PeerAddr, Stream};
use crate::sendbuf::{Flush, write_until_blocked};
use crate::stats::Transport;
use crate::timer::Target;
use crate::tls::TlsSession;
use crate::trace::{TraceEvent, trace_event};

/// Output sent to a connection from outside its own callbacks waits for the end of the
/// turn only up to this much: past it, little is saved by waiting (one write already
/// carries hundreds of small messages), and the buffer stays within what the pool of
/// spare buffers takes back (64 KiB), so steady fan-out allocates nothing.
const DEFER_LIMIT: usize = 48 * 1024;

/// The reactor's read buffers, shared by all connections: only unsent output is kept per
/// connection, so an idle connection costs no buffer memory.
pub(crate) struct ReadBufs {
    /// Large enough for the largest UDP datagram too (65,507 bytes over IPv4): a smaller
    /// buffer silently truncates datagrams.
    pub(crate) wire: Box<[u8]>,
    /// Decrypted TLS input.
    pub(crate) plain: Vec<u8>,
}

/// What one readiness event says about a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    pub(crate) error: bool,
    pub(crate) read_closed: bool,
}

/// What a connection takes from the listener that accepted it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromListener {
    /// Behind a load balancer: a PROXY protocol header comes first.
    pub(crate) proxy: bool,
    /// Counted in the loop's statistics and limits (false for a side listener's).
    pub(crate) counted: bool,
}

/// Adds a connection accepted from a listener; a plain one hears `on_open` at once
/// (behind a load balancer, once its PROXY header has been read).
pub(crate) fn add_accepted<S>(
    inner: &mut Inner<S>,
    mut stream: Stream,
    session: Session,
    transport: Transport,
    FromListener { proxy, counted }: FromListener,
    handler: Box<dyn Handler<S>>,
    peer: &PeerAddr,
) {
    let key = inner.slab.vacant_key();
    // Registered once for both directions and never changed: with edge triggering,
    // writability is reported only when a full send buffer gains room, so asking for it
    // all along costs nothing while nothing is owed, and re-registering would cost a
    // system call per change.
    if let Err(e) = inner.poll.registry().register(
        &mut stream,
        Token(key),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        log::warn!("cannot register connection from {peer}: {e}");
        return;
    }
    let id = inner.core.next_id(key);
    log::debug!("{id} open from {peer}");
    let splice = if inner.core.config.zero_copy_echo
        && matches!(session, Session::Plain)
        && handler.is_plain_echo()
    {
        SpliceMode::SMALL
    } else {
        SpliceMode::OFF
    };
    if matches!(session, Session::Tls(_)) {
        trace_event!(inner.core.trace, TraceEvent::HandshakeStarted { id });
    }
    let conn = Connection::accepted(session, inner.core.now, &inner.core.limits, proxy);
    inner.slab.insert(Entry::Stream(StreamEntry {
        conn,
        stream,
        handler: Some(handler),
        generation: id.generation,
        transport,
        counted,
        listed: false,
        splice,
        deadline: None,
        user_timers: TimerList::default(),
    }));
    if counted {
        inner.core.stats.connections_open += 1;
    } else {
        inner.core.side_open += 1;
    }
    // Data the client sent right after connecting is not missed: registering a socket
    // that is already readable produces an event at once.
    drive(inner, key);
}

/// Starts a non-blocking connect and returns its id. Whatever happens, `handler` hears
/// the outcome later — `on_open`, or `on_close` — never the caller, and never before the
/// current callback (or entry point) returns.
pub(crate) fn connect<S>(
    inner: &mut Inner<S>,
    to: &Endpoint,
    opts: ConnectOptions,
    handler: Box<dyn Handler<S>>,
) -> ConnId {
    let key = inner.slab.vacant_key();
    let id = inner.core.next_id(key);
    let made = open_socket(inner, to, &opts, key);
    let transport = match (to, &opts.tls) {
        (Endpoint::Unix(_), _) => Transport::Unix,
        (_, Some(_)) => Transport::Tls,
        _ => Transport::Tcp,
    };
    let entry = match made {
        Ok((stream, session)) => {
            let conn = Connection::connecting(session, inner.core.now, opts.timeout);
            inner.core.stats.connections_open += 1;
            Entry::Stream(StreamEntry {
                conn,
                stream,
                handler: Some(handler),
                generation: id.generation,
                transport,
                counted: true,
                listed: false,
                splice: SpliceMode::OFF,
                deadline: None,
                user_timers: TimerList::default(),
            })
        }
        Err(e) => Entry::Failed(FailedEntry {
            handler: Some(handler),
            error: Some(e),
            generation: id.generation,
        }),
    };
    inner.slab.insert(entry);
    // Arms the connect deadline, or reports the failure, once the caller is done.
    inner.core.touched.push(id);
    id
}

fn open_socket<S>(
    inner: &mut Inner<S>,
    to: &Endpoint,
    opts: &ConnectOptions,
    key: usize,
) -> io::Result<(Stream, Session)> {
    let session = match &opts.tls {
        Some((cfg, name)) => Session::Tls(Box::new(
            TlsSession::client(cfg, name.clone()).map_err(io::Error::other)?,
        )),
        None => Session::Plain,
    };
    let mut stream = Stream::connect(to, opts.source)?;
    inner.poll.registry().register(
        &mut stream,
        Token(key),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok((stream, session))
}

/// Tells the handler of a connect that failed before it had a socket.
pub(crate) fn report_failed_connect<S>(inner: &mut Inner<S>, key: usize) {
    let Some(Entry::Failed(f)) = inner.slab.get_mut(key) else {
        return;
    };
    let (Some(mut handler), Some(error)) = (f.handler.take(), f.error.take()) else {
        return; // reported already
    };
    let id = ConnId::new(key, f.generation);
    inner.core.stats.connect_failures += 1;
    log::debug!("{id} connect failed: {error}");
    handler.on_close(
        &mut Ctx { ops: inner, id },
        &CloseReason::ConnectFailed(error),
    );
    inner.core.dead.push(key);
}

/// One readiness event for a connection.
pub(crate) fn ready<S>(inner: &mut Inner<S>, bufs: &mut ReadBufs, key: usize, r: Readiness) {
    let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
        return;
    };
    if e.conn.is_closed() {
        return;
    }
    trace_event!(
        inner.core.trace,
        TraceEvent::Ready {
            id: ConnId::new(key, e.generation),
            readable: r.readable,
            writable: r.writable,
            hang_up: r.read_closed,
            error: r.error,
        }
    );
    if e.conn.state() == State::Connecting {
        if !(r.writable || r.error || r.read_closed) {
            return;
        }
        finish_connect(&mut inner.core, e);
        drive(inner, key);
        match inner.slab.get(key) {
            Some(Entry::Stream(e))
                if !e.conn.is_closed() && e.conn.state() != State::Connecting => {}
            // Failed, or a spurious wake-up: nothing to read yet.
            _ => return,
        }
    } else if r.writable {
        if let Some(Entry::Stream(e)) = inner.slab.get_mut(key) {
            if e.conn.is_write_blocked() {
                // Room in the kernel's send buffer again: flush what waited.
                e.conn.handle_writable();
                drive(inner, key);
            }
        }
    }
    if r.error {
        // A reset, say, after the peer's FIN: a connection that no longer reads would not
        // learn of it from a read, so take the socket's pending error (`SO_ERROR`) now.
        if let Some(Entry::Stream(e)) = inner.slab.get_mut(key) {
            if !e.conn.wants_read() {
                if let Ok(Some(err)) = e.stream.take_error() {
                    e.conn.handle_io_error(err);
                    drive(inner, key);
                    return;
                }
            }
        }
    }
    if r.readable || r.read_closed || r.error {
        // A short read proves the queue empty only if no FIN is pending behind it: with
        // EPOLLRDHUP set, read on until EOF.
        let trust_short_read = !r.read_closed && !r.error;
        read_loop(inner, bufs, key, trust_short_read);
    }
}

/// A hot turn's read of a connection (busy polling, `super::hot`): as if a readiness
/// event said readable, for a connection that reads now.
pub(crate) fn read_hot<S>(inner: &mut Inner<S>, bufs: &mut ReadBufs, key: usize) {
    match inner.slab.get(key) {
        Some(Entry::Stream(e))
            if !e.conn.is_closed()
                && e.conn.state() != State::Connecting
                && e.conn.wants_read() =>
        {
            read_loop(inner, bufs, key, true);
        }
        _ => {}
    }
}

/// Completes a non-blocking connect. Writable does not mean connected (mio#1523): the
/// result is in `SO_ERROR` (`take_error`), and `getpeername` succeeds only once really
/// connected.
fn finish_connect<S>(core: &mut Core, e: &mut StreamEntry<S>) {
    match e.stream.take_error() {
        Ok(None) => {}
        Ok(Some(err)) | Err(err) => return e.conn.handle_connect_failed(err),
    }
    match e.stream.peer_addr() {
        Ok(_) => {
            core.stats.connected += 1;
            e.conn.handle_connected(core.now, &core.limits);
        }
        // Spurious wake-up: still connecting.
        Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
        Err(err) => e.conn.handle_connect_failed(err),
    }
}

/// Reads until the socket would block, the peer closes, or a limit says stop.
///
/// `trust_short_read`: epoll(7) notes that for stream sockets a read that returns less
/// than asked for means the receive queue is drained, so the trailing read that would
/// only return `WouldBlock` can be skipped (one system call less per message). This goes
/// beyond mio's documented contract, which asks callers to read until `WouldBlock`
/// ("Draining readiness" in mio's `Poll` docs): it is sound on Linux because mio registers
/// with `EPOLLET`, and the kernel raises a new edge for every arrival on the socket after
/// our read, so nothing that arrives later is missed. Two rare exceptions stall only the
/// peer that causes them: a Unix read stops early at passed file descriptors, a TCP read
/// at urgent data; their data waits for the peer's next bytes or the idle timeout.
pub(crate) fn read_loop<S>(
    inner: &mut Inner<S>,
    bufs: &mut ReadBufs,
    key: usize,
    trust_short_read: bool,
) {
    let mut budget = inner.core.config.read_budget;
    loop {
        let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
            return;
        };
        if !e.conn.wants_read() {
            // Paused (backpressure, the handler) or not reading in this state. Readiness
            // is edge-triggered: whoever resumes must come back for waiting data.
            // Said once per pause: later wake-ups while paused find it stopped already.
            let core = &inner.core;
            if core.trace.on && e.conn.is_backpressured() && !e.conn.is_read_stopped() {
                core.trace.emit(&TraceEvent::PausedReading {
                    id: ConnId::new(key, e.generation),
                    owed: e.conn.pending_output(),
                });
            }
            e.conn.handle_read_stopped();
            return;
        }
        if budget == 0 {
            // Fairness: let other connections have a turn; continue on the next turn
            // without waiting for an event (none will come for data already here).
            e.conn.handle_read_stopped();
            if e.conn.poll_read_again() {
                inner.core.schedule_read(ConnId::new(key, e.generation));
            }
            return;
        }
        // Fair handshakes (`core::Handshakes`): a step past this turn's budget waits in
        // line, remembered as readable like a read past the read budget.
        let handshaking = e.conn.state() == State::Handshaking;
        if handshaking && inner.core.handshakes.must_wait() {
            let id = ConnId::new(key, e.generation);
            e.conn.handle_read_stopped();
            trace_event!(inner.core.trace, TraceEvent::HandshakeWaits { id });
            inner.core.handshakes.wait(id);
            return;
        }
        let started = handshaking.then(Instant::now);
        // Zero-copy echo: large reads of a plain echo, with nothing else owed (which
        // would have to go first), move socket → pipe → socket.
        if e.splice.is_bulk() && e.conn.may_splice() {
            return splice_echo(inner, bufs, key, budget);
        }
        let core = &mut inner.core;
        match e.stream.try_read(&mut bufs.wire) {
            Ok(0) => {
                trace_event!(
                    core.trace,
                    TraceEvent::Eof {
                        id: ConnId::new(key, e.generation)
                    }
                );
                e.conn.handle_eof(core.now);
                drive(inner, key);
                return;
            }
            Ok(n) => {
                core.input_seen += 1;
                if n >= SPLICE_MIN && e.splice == SpliceMode::SMALL {
                    e.splice = SpliceMode::BULK;
                }
                budget = budget.saturating_sub(n);
                if e.counted {
                    core.stats.stream_in(e.transport, n);
                }
                let data =
                    e.conn
                        .handle_input(core.now, &bufs.wire[..n], &mut bufs.plain, &core.limits);
                let drained = trust_short_read && n < bufs.wire.len();
                if core.trace.on {
                    let id = ConnId::new(key, e.generation);
                    core.trace.emit(&TraceEvent::Read { id, n });
                    if drained {
                        let asked = bufs.wire.len();
                        core.trace.emit(&TraceEvent::ShortRead { id, n, asked });
                    }
                }
                if drained {
                    e.conn.handle_read_drained();
                }
                drive_input(inner, key, data);
                if let Some(t) = started {
                    inner.core.handshakes.charge(t.elapsed());
                }
                if drained {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                trace_event!(
                    core.trace,
                    TraceEvent::WouldBlock {
                        id: ConnId::new(key, e.generation)
                    }
                );
                e.conn.handle_read_drained();
                return;
            }
            Err(err) => {
                // ECONNRESET and friends: the peer is gone; only this connection ends.
                e.conn.handle_io_error(err);
                drive(inner, key);
                return;
            }
        }
    }
}

/// A copying connection starts splicing after one read of at least this much, and a
/// splicing one counts a call that moved less as small: below it, the two `splice` calls
/// cost more than the copies they save (README, "Zero-copy echo").
const SPLICE_MIN: usize = 32 * 1024;

/// A spliced connection goes back to copying after this many calls in a row that moved
/// something, but less than [`SPLICE_MIN`] (a call that finds nothing says nothing: a
/// stale readiness event, or a busy-polling loop's probe).
const SMALL_CALLS: u8 = 8;

/// Zero-copy echo (`net::splice`): moves what the socket has received into the loop's
/// pipe and from the pipe into the socket's send queue, until the receive queue is
/// empty, the turn's read budget is spent, or the send queue is full. In the last case
/// what the pipe still holds is read into the connection's send buffer, so it is owed
/// output like any other (backpressure, the FIN after it, the graceful stop) and the pipe
/// is empty for the next connection. The handler is not called for these bytes
/// ([`crate::Handler::is_plain_echo`]).
fn splice_echo<S>(inner: &mut Inner<S>, bufs: &mut ReadBufs, key: usize, mut budget: usize) {
    let Inner { slab, core, .. } = inner;
    let Some(Entry::Stream(e)) = slab.get_mut(key) else {
        return;
    };
    let id = ConnId::new(key, e.generation);
    if core.pipe.is_none() {
        match crate::net::Pipe::new() {
            Ok(p) => core.pipe = Some(p),
            Err(err) => {
                // Out of descriptors, say: copying works as well, only dearer.
                log::debug!("no pipe for zero-copy echo ({err}): copying instead");
                e.splice = SpliceMode::OFF;
                core.schedule_read(id);
                return;
            }
        }
    }
    let Some(pipe) = core.pipe.as_mut() else {
        return;
    };
    let mut moved = 0;
    loop {
        if budget == 0 {
            // Fairness, as in `read_loop`.
            e.conn.handle_read_stopped();
            if e.conn.poll_read_again() {
                core.schedule_read(id);
            }
            break;
        }
        // Every fill is drained before the next, so the pipe is empty here.
        // At most what one read takes in the copying path.
        match pipe.fill(&e.stream, budget.min(bufs.wire.len())) {
            Ok(0) => {
                trace_event!(core.trace, TraceEvent::Eof { id });
                e.conn.handle_eof(core.now);
                break;
            }
            Ok(n) => {
                core.input_seen += 1;
                budget = budget.saturating_sub(n);
                moved += n;
                if e.counted {
                    core.stats.stream_in(e.transport, n);
                }
                e.conn.handle_spliced(core.now, n);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                trace_event!(core.trace, TraceEvent::WouldBlock { id });
                e.conn.handle_read_drained();
                break;
            }
            Err(err) if moved == 0 && splice_unsupported(&err) => {
                // A kernel or socket that cannot splice (a sandbox, say): nothing was
                // moved, so copying takes over from here.
                log::debug!("{id}: no splice ({err}): copying instead");
                e.splice = SpliceMode::OFF;
                core.schedule_read(id);
                return;
            }
            Err(err) => {
                e.conn.handle_io_error(err);
                break;
            }
        }
        let mut failed = None;
        while pipe.held() > 0 {
            match pipe.drain(&e.stream) {
                Ok(n) if n > 0 => {
                    if e.counted {
                        core.stats.stream_out(e.transport, n);
                        core.stats.write_calls += 1;
                    }
                    trace_event!(core.trace, TraceEvent::Spliced { id, n });
                }
                // Nothing taken although bytes wait: a full send queue, as `WouldBlock`.
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = failed {
            // The connection is done for; what the pipe holds goes with the pipe.
            core.pipe = None;
            e.conn.handle_io_error(err);
            break;
        }
        if pipe.held() > 0 {
            // The peer's window is full: the rest is owed the ordinary way, and the
            // socket may hold more for the reads that follow (now through user space).
            while pipe.held() > 0 {
                match pipe.take_rest(&mut bufs.wire) {
                    Ok(n) if n > 0 => e.conn.queue(&bufs.wire[..n], &core.limits, &mut core.pool),
                    _ => {
                        // A pipe that cannot be read back (never expected): drop it
                        // and the connection, rather than echo out of order.
                        core.pipe = None;
                        e.conn
                            .handle_io_error(io::Error::other("zero-copy echo pipe failed"));
                        break;
                    }
                }
            }
            e.conn.handle_read_stopped();
            if e.conn.poll_read_again() {
                core.schedule_read(id);
            }
            break;
        }
    }
    e.splice = if moved >= SPLICE_MIN {
        SpliceMode::BULK
    } else if moved == 0 {
        e.splice
    } else if e.splice.small_calls() >= SMALL_CALLS {
        SpliceMode::SMALL
    } else {
        e.splice.one_more_small_call()
    };
    drive(inner, key);
}

/// Errors that say this socket (or kernel) cannot splice at all, rather than that the
/// connection failed.
fn splice_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Runs the connection's outputs until it has nothing more to say: events to its handler,
/// bytes to the socket, the FIN, its deadline timer, a read to come back for.
pub(crate) fn drive<S>(inner: &mut Inner<S>, key: usize) {
    drive_input(inner, key, &[]);
}

/// [`drive`] after a read: `input` is what `handle_input` returned, and the data event
/// carries it to the handler.
pub(crate) fn drive_input<S>(inner: &mut Inner<S>, key: usize, input: &[u8]) {
    loop {
        let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
            return;
        };
        match e.conn.poll_event(input) {
            Some(Event::Proxied(header)) => {
                let core = &mut inner.core;
                if e.counted {
                    core.stats.proxied += 1;
                }
                let id = ConnId::new(key, e.generation);
                match header.source {
                    Some(src) => {
                        log::debug!("{id} is from {src} (PROXY header)");
                        core.proxied.insert(id, PeerAddr::Inet(src));
                    }
                    None => log::debug!("{id}: PROXY header without a client address"),
                }
            }
            Some(Event::Open) => {
                if e.conn.is_tls() {
                    if e.counted {
                        inner.core.stats.tls_handshakes_ok += 1;
                    }
                    log::debug!(
                        "#{key} TLS handshake done ({})",
                        e.conn.tls_protocol().unwrap_or("?")
                    );
                    if inner.core.trace.on {
                        let (cipher, alpn) = e.conn.tls_details();
                        inner.core.trace.emit(&TraceEvent::HandshakeDone {
                            id: ConnId::new(key, e.generation),
                            version: e.conn.tls_protocol(),
                            cipher,
                            alpn,
                        });
                    }
                }
                callback(inner, key, |h, ctx| h.on_open(ctx));
            }
            Some(Event::Data(data)) => callback(inner, key, |h, ctx| h.on_data(ctx, data)),
            Some(Event::Drained) => callback(inner, key, |h, ctx| h.on_drained(ctx)),
            Some(Event::PeerClosed) => {
                if e.conn.is_tls() {
                    // A TLS stream ends with the peer's close_notify, not with its FIN.
                    let id = ConnId::new(key, e.generation);
                    trace_event!(inner.core.trace, TraceEvent::CloseNotifyReceived { id });
                }
                callback(inner, key, |h, ctx| h.on_peer_closed(ctx));
            }
            Some(Event::Closed(reason)) => return closed(inner, key, reason),
            None => {
                let core = &mut inner.core;
                let id = ConnId::new(key, e.generation);
                push_output(core, e, id);
                if e.conn.has_events() {
                    continue;
                }
                arm_deadline(core, e, id);
                if e.conn.poll_read_again() {
                    trace_event!(core.trace, TraceEvent::ResumedReading { id });
                    core.schedule_read(id);
                }
                return;
            }
        }
    }
}

/// Runs one handler callback. The handler is taken out of its slot for the call, so that
/// its context can reach every other entry of the loop (callbacks never nest, so it is
/// always there); what the callback sent is written when it returns.
pub(crate) fn callback<S>(
    inner: &mut Inner<S>,
    key: usize,
    f: impl FnOnce(&mut dyn Handler<S>, &mut Ctx<'_, S>),
) {
    let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
        return;
    };
    let id = ConnId::new(key, e.generation);
    let Some(mut handler) = e.handler.take() else {
        return;
    };
    // What the callback sends to its own connection is written when the callback returns
    // (the caller drives the connection next): not listed for the end of the turn.
    inner.core.current = Some(id);
    f(handler.as_mut(), &mut Ctx { ops: inner, id });
    inner.core.current = None;
    if let Some(Entry::Stream(e)) = inner.slab.get_mut(key) {
        e.handler = Some(handler);
    }
}

/// Queues application output for connection `id`: into its send buffer, in order, after
/// what is owed already. The bytes are written when the connection is next driven: at
/// once after its own callback, or — sent from anywhere else — once per loop turn, just
/// before the loop polls again (as Redis writes its replies in `beforeSleep`), so that
/// a connection that many callbacks send to in one turn is written with one system call,
/// however the sends to different connections interleave.
pub(crate) fn send<S>(inner: &mut Inner<S>, id: ConnId, data: &[u8]) -> Result<(), ConnError> {
    if inner.core.current != Some(id) && inner.core.pool.shared.needs_room(data) {
        if inner.core.pool.shared.pays() {
            write_spans(inner);
        } else {
            // Nothing was shared: writing every holder now would cost a write per
            // connection per 256 KiB instead of one per turn. Copy as without sharing.
            inner.core.pool.shared.close();
        }
    }
    let core = &mut inner.core;
    let e = as_stream(entry_at(&mut inner.slab, core, id)?)?;
    e.conn.can_send()?;
    if core.current == Some(id) {
        e.conn.queue(data, &core.limits, &mut core.pool);
    } else {
        // Output from elsewhere waits for the end of the turn, so other connections may
        // be sent the same bytes meanwhile (fan-out): they are kept once.
        e.conn.queue_shared(data, &core.limits, &mut core.pool);
        if !e.listed {
            e.listed = true;
            e.conn.handle_output_deferred();
            core.flush.push(id);
        }
    }
    if e.listed && e.conn.pending_output() >= DEFER_LIMIT {
        // Waiting saves system calls only while the output is small (see DEFER_LIMIT);
        // holding more would grow our memory and make a producer that watches
        // `pending_output` think the peer is slow. Write it now: a partial write keeps
        // the rest queued as usual, and the events it raises run when the end of the
        // turn drives the connection (no callback may run inside this send).
        transmit(core, e, id);
    }
    Ok(())
}

/// The turn's shared output is full: writes every listed connection's span now (as a
/// connection past `DEFER_LIMIT` is written) and starts the shared output afresh. Only
/// listed connections hold spans. No callback runs here: what the writes raise
/// (`Drained`, a close) waits for the end of the turn, which still drives them.
fn write_spans<S>(inner: &mut Inner<S>) {
    // Taken out for the walk and put back (`transmit` lists nothing): no allocation.
    let list = std::mem::take(&mut inner.core.flush);
    for &id in &list {
        if let Some(e) = stream_at(&mut inner.slab, id) {
            if e.conn.holds_span() {
                transmit(&mut inner.core, e, id);
            }
        }
    }
    inner.core.flush = list;
    inner.core.pool.shared.reset();
}

/// Writes what was sent to connections from elsewhere during this turn: once each, just
/// before the loop polls again. What that causes (`on_drained`, `on_close`) may send more;
/// that is listed anew and written on the next turn.
pub(crate) fn flush_listed<S>(inner: &mut Inner<S>) {
    // Swap in the spare list (no allocation per turn); sends made while we write go to
    // the other one.
    let mut list = std::mem::take(&mut inner.core.flush_spare);
    std::mem::swap(&mut list, &mut inner.core.flush);
    for &id in &list {
        if let Some(e) = stream_at(&mut inner.slab, id) {
            e.listed = false;
            drive(inner, id.key());
        }
    }
    list.clear();
    inner.core.flush_spare = list;
}

/// Writes what the connection has queued, and the FIN when it is due.
fn push_output<S>(core: &mut Core, e: &mut StreamEntry<S>, id: ConnId) {
    if e.listed {
        // Written (and its FIN sent) by `flush_listed` at the end of the turn, together
        // with whatever else is sent to it until then.
        return;
    }
    transmit(core, e, id);
}

/// [`push_output`] whether or not the connection waits for the end of the turn.
fn transmit<S>(core: &mut Core, e: &mut StreamEntry<S>, id: ConnId) {
    let bytes = e.conn.poll_transmit(&core.pool);
    if !bytes.is_empty() {
        let stream = &mut e.stream;
        let mut calls = 0;
        let (n, result) = write_until_blocked(bytes, |d| {
            calls += 1;
            stream.try_write(d)
        });
        if e.counted {
            core.stats.stream_out(e.transport, n);
            core.stats.write_calls += calls;
        }
        let offered = bytes.len();
        match result {
            Ok(flush) => e.conn.handle_sent(
                core.now,
                n,
                flush == Flush::Blocked,
                &core.limits,
                &mut core.pool,
            ),
            Err(err) => {
                e.conn
                    .handle_sent(core.now, n, false, &core.limits, &mut core.pool);
                e.conn.handle_io_error(err);
            }
        }
        trace_event!(
            core.trace,
            TraceEvent::Wrote {
                id,
                n,
                of: offered,
                buffered: e.conn.pending_output(),
            }
        );
    }
    // A span of the turn's shared output that could not be written now (the socket is
    // full) must not outlive the turn: it becomes the connection's own bytes.
    e.conn.unshare(&mut core.pool);
    if e.conn.poll_shutdown(core.now, &core.limits) {
        if e.conn.is_tls() {
            // Queued with the last records, just written: before the FIN.
            trace_event!(core.trace, TraceEvent::CloseNotifySent { id });
        }
        trace_event!(core.trace, TraceEvent::ShutdownWrite { id });
        // Half-close: FIN after everything already queued; we can still read.
        if let Err(err) = e.stream.shutdown_write() {
            e.conn.handle_io_error(err);
        }
    }
}

/// Keeps one timer per connection standing for its earliest deadline, changed only when
/// the deadline changes (not on every message).
fn arm_deadline<S>(core: &mut Core, e: &mut StreamEntry<S>, id: ConnId) {
    let changed = e.conn.poll_timeout_changed();
    let at = e.conn.poll_timeout();
    if !changed && (e.deadline.is_some() || at.is_none()) {
        return;
    }
    if let Some(t) = e.deadline.take() {
        core.timers.cancel(t);
    }
    if let Some(at) = at {
        e.deadline = Some(core.timers.add(at, Target::Deadline(id)));
    }
}

/// The connection has closed: statistics, timers, `on_close`, then the socket is released
/// after the batch (see `Core::dead`).
fn closed<S>(inner: &mut Inner<S>, key: usize, reason: CloseReason) {
    let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
        return;
    };
    let id = ConnId::new(key, e.generation);
    let core = &mut inner.core;
    if !e.counted {
        core.side_open = core.side_open.saturating_sub(1);
    }
    if e.counted {
        core.stats.connections_open = core.stats.connections_open.saturating_sub(1);
        core.stats.closed += 1;
        core.stats.closed_by.count(&reason);
        // A connect or handshake we gave up on ourselves (abort, stop) did not fail.
        let ours = matches!(reason, CloseReason::Aborted | CloseReason::Shutdown);
        match e.conn.closed_from() {
            _ if ours => {}
            State::Connecting => core.stats.connect_failures += 1,
            State::Handshaking => core.stats.tls_handshakes_failed += 1,
            _ => {}
        }
    }
    trace_event!(
        core.trace,
        TraceEvent::Closed {
            id,
            reason: &reason,
        }
    );
    match e.conn.discarded_input() {
        0 => log::debug!("{id} closed: {reason}"),
        n => log::debug!("{id} closed: {reason} ({n} bytes of input discarded unechoed)"),
    }
    if let CloseReason::BadProxyHeader(why) = &reason {
        // One line per bad header would let a flood of them stall the loop on a slow
        // stderr: the first of each interval, with how many since the last line.
        if let Some(count) = core.bad_header_log.note(core.now) {
            log::info!(
                "{id}: closed: {why} ({count} connection{} without a valid PROXY header since the last such line)",
                if count == 1 { "" } else { "s" }
            );
        }
    }
    if !core.proxied.is_empty() {
        core.proxied.remove(&id);
    }
    // Deadlines and the handler's timers no longer apply: they should not sit in the
    // heap until they expire.
    if let Some(t) = e.deadline.take() {
        core.timers.cancel(t);
    }
    for t in e.user_timers.take_all() {
        core.timers.cancel(t);
    }
    callback(inner, key, |h, ctx| h.on_close(ctx, &reason));
    let Some(Entry::Stream(e)) = inner.slab.get_mut(key) else {
        return;
    };
    match e.conn.teardown() {
        Teardown::Drop => {}
        Teardown::Flush => {
            // Best effort: the alert tells the peer why; if it does not fit, so be it.
            let stream = &mut e.stream;
            let (n, _) = write_until_blocked(e.conn.unsent(), |d| stream.try_write(d));
            if e.counted {
                inner.core.stats.stream_out(e.transport, n);
            }
        }
        Teardown::Reset => {
            trace_event!(inner.core.trace, TraceEvent::Reset { id });
            if let Err(err) = e.stream.reset_on_close() {
                log::debug!("{id}: cannot set a reset on close: {err}");
            }
        }
    }
    // Dropped (and the descriptor closed) after this batch; see `EventLoop::sweep`.
    inner.core.dead.push(key);
}

/// The connection's own deadline timer fired (connect, handshake, idle, close).
pub(crate) fn deadline_fired<S>(inner: &mut Inner<S>, id: ConnId) {
    let Some(e) = stream_at(&mut inner.slab, id) else {
        return;
    };
    // The timer has fired: whatever the connection says next needs a new one.
    e.deadline = None;
    e.conn.handle_timeout(inner.core.now, &inner.core.limits);
    drive(inner, id.key());
}

/// A handler timer of this connection fired.
pub(crate) fn user_timer_fired<S>(inner: &mut Inner<S>, id: ConnId, timer: crate::id::TimerId) {
    let Some(e) = stream_at(&mut inner.slab, id) else {
        return;
    };
    if e.conn.is_closed() {
        return;
    }
    e.user_timers.remove(timer);
    let key = id.key();
    callback(inner, key, |h, ctx| h.on_timer(ctx, timer));
    drive(inner, key);
}
