//! Stream connections inside the reactor: reading, handing bytes to the session and the
//! handler, sending, half-close and close.
//!
//! Teaches: the life of one TCP, TLS or Unix stream connection under edge-triggered
//! readiness — read until `WouldBlock` (or a short read), partial writes kept in the
//! send buffer, backpressure, EOF as half-close, non-blocking connect completed on
//! writability, and TLS output that appears without application data.

use super::*;

/// Stands in for a handler while an entry is being made.
pub(super) struct NoopHandler;
impl Handler for NoopHandler {
    fn on_data(&mut self, _: &mut Ctx<'_>, _: &[u8]) {}
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Readiness {
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) error: bool,
    pub(super) read_closed: bool,
}

/// Runs a handler callback with a context, then sends what it produced and applies what
/// it asked for.
pub(super) fn call_handler(
    c: &mut ConnEntry,
    core: &mut Core,
    key: usize,
    f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>),
) {
    let id = ConnId::new(key, c.conn.generation);
    let mut ctx = Ctx {
        conn: Some(&mut c.conn),
        core,
        id,
    };
    f(c.handler.as_mut(), &mut ctx);
    commit_output(&mut c.conn, core);
    progress(c, core, key);
}

/// Sends what the callback queued. For a plain connection with nothing already waiting,
/// the bytes go straight to the socket (write right after processing instead of waiting for
/// a writable event); what the kernel does not take is kept in the send buffer.
pub(super) fn commit_output(conn: &mut Connection, core: &mut Core) {
    if core.out.is_empty() {
        return;
    }
    if conn.is_closed() {
        core.out.clear();
        return;
    }
    match &mut conn.session {
        Session::Plain => {
            let mut sent = 0;
            if conn.sendbuf.is_empty() && !conn.write_blocked {
                let stream = &mut conn.stream;
                let (n, result) = write_until_blocked(&core.out, |d| stream.try_write(d));
                sent = n;
                if n > 0 {
                    core.stats.bytes_out += n as u64;
                    conn.last_active = core.now;
                }
                match result {
                    // Partial send: the kernel's buffer is full; the rest waits below.
                    Ok(Flush::Blocked) => conn.write_blocked = true,
                    Ok(_) => {}
                    // Keep the rest; the error surfaces again on the next flush or read,
                    // where the connection is closed.
                    Err(e) => log::debug!("write: {e}"),
                }
            }
            conn.sendbuf.push(&core.out[sent..]);
        }
        Session::Tls(tls) => tls.write_plaintext(&core.out, &mut conn.sendbuf),
    }
    core.out.clear();
}

/// Moves a connection forward after anything happened: flush, backpressure, half-close,
/// close.
pub(super) fn progress(c: &mut ConnEntry, core: &mut Core, key: usize) {
    let conn = &mut c.conn;
    if conn.is_closed() {
        return;
    }
    if conn.abort_requested {
        close_now(c, core, key, CloseReason::Aborted);
        return;
    }
    if conn.write_shut == WriteShut::Requested {
        // TLS says goodbye inside the stream before TCP does; once, after all data.
        if let (Session::Tls(tls), State::Open) = (&mut conn.session, conn.state) {
            tls.send_close_notify(&mut conn.sendbuf);
        }
        conn.write_shut = WriteShut::Flushing;
    }
    if !conn.sendbuf.is_empty() && !conn.write_blocked {
        if let Err(e) = flush(conn, core) {
            close_now(c, core, key, CloseReason::Io(e));
            return;
        }
    }
    let conn = &mut c.conn;
    // Backpressure: stop reading while too much is owed; resume below the low mark.
    let owed = conn.sendbuf.len();
    if owed > core.config.high_water {
        conn.bp_paused = true;
    } else if conn.bp_paused && owed <= core.config.low_water {
        conn.bp_paused = false;
        // Edge-triggered: bytes that arrived while paused will not raise a new event, so
        // if we stopped with data possibly waiting, go back for it ourselves.
        if conn.maybe_readable {
            core.schedule_read(ConnId::new(key, conn.generation));
        }
    }
    if conn.write_shut == WriteShut::Flushing && conn.sendbuf.is_empty() {
        if conn.state == State::Open || conn.state == State::Handshaking {
            if let Err(e) = conn.stream.shutdown_write() {
                close_now(c, core, key, CloseReason::Io(e));
                return;
            }
        }
        c.conn.write_shut = WriteShut::Done;
        if c.conn.closing && !c.conn.read_eof {
            // Wait (bounded) for the peer to finish, reading and dropping what it sends.
            let id = ConnId::new(key, c.conn.generation);
            let at = crate::timer::later(core.now, core.config.close_timeout);
            arm_timer(core, &mut c.conn, id, Kind::Linger, at);
            // It may have sent everything already.
            core.schedule_read(id);
        }
    }
    let conn = &c.conn;
    if conn.write_shut == WriteShut::Done && conn.read_eof {
        close_now(c, core, key, CloseReason::Done);
    }
}

/// Writes the send buffer until empty or `WouldBlock`.
pub(super) fn flush(conn: &mut Connection, core: &mut Core) -> io::Result<()> {
    let stream = &mut conn.stream;
    let (sent, state) = conn.sendbuf.flush_with(|d| stream.try_write(d))?;
    if sent > 0 {
        core.stats.bytes_out += sent as u64;
        conn.last_active = core.now;
    }
    conn.write_blocked = state == Flush::Blocked;
    Ok(())
}

/// Sets one of the loop's own timers on a connection, replacing the previous one of its
/// kind, and remembers it so that closing can cancel it.
pub(super) fn arm_timer(
    core: &mut Core,
    conn: &mut Connection,
    id: ConnId,
    kind: Kind,
    at: Instant,
) {
    disarm_timer(core, conn, kind);
    conn.timers[timer_slot(kind)] = Some(core.timers.add(at, Owner::Conn(id), kind));
}

/// Cancels the connection's timer of this kind, if any (a deadline that no longer applies
/// should not sit in the heap until it expires).
pub(super) fn disarm_timer(core: &mut Core, conn: &mut Connection, kind: Kind) {
    if let Some(old) = conn.timers[timer_slot(kind)].take() {
        core.timers.cancel(old);
    }
}

pub(super) fn timer_slot(kind: Kind) -> usize {
    match kind {
        Kind::Idle => 0,
        Kind::Handshake => 1,
        Kind::Connect => 2,
        _ => 3,
    }
}

pub(super) fn close_now(c: &mut ConnEntry, core: &mut Core, key: usize, reason: CloseReason) {
    if c.conn.is_closed() {
        return;
    }
    let was = c.conn.state;
    c.conn.state = State::Closed;
    core.stats.connections_open -= 1;
    core.stats.closed += 1;
    let id = ConnId::new(key, c.conn.generation);
    match (&reason, was) {
        (_, State::Connecting) => core.stats.connect_failures += 1,
        (_, State::Handshaking) => core.stats.tls_handshakes_failed += 1,
        _ => {}
    }
    log::debug!("{id} closed: {reason}");
    for t in c.conn.timers.iter_mut().filter_map(Option::take) {
        core.timers.cancel(t);
    }
    let mut ctx = Ctx {
        conn: Some(&mut c.conn),
        core,
        id,
    };
    c.handler.on_close(&mut ctx, &reason);
    core.out.clear();
    // Dropped (and the descriptor closed) after this batch; see `EventLoop::sweep`.
    core.dead.push(key);
}

pub(super) fn conn_ready(
    c: &mut ConnEntry,
    core: &mut Core,
    rbuf: &mut [u8],
    plain: &mut Vec<u8>,
    key: usize,
    r: Readiness,
) {
    if c.conn.is_closed() {
        return;
    }
    if c.conn.state == State::Connecting {
        if !(r.writable || r.error || r.read_closed) {
            return;
        }
        finish_connect(c, core, key);
        if c.conn.is_closed() || c.conn.state == State::Connecting {
            return;
        }
    }
    if r.writable && c.conn.write_blocked {
        c.conn.write_blocked = false;
        if let Err(e) = flush(&mut c.conn, core) {
            close_now(c, core, key, CloseReason::Io(e));
            return;
        }
        if c.conn.sendbuf.is_empty() && c.conn.state == State::Open {
            call_handler(c, core, key, |h, ctx| h.on_drained(ctx));
        } else {
            progress(c, core, key);
        }
        if c.conn.is_closed() {
            return;
        }
    }
    if r.readable || r.read_closed || r.error {
        // A short read proves the queue empty only if no FIN is pending behind it: with
        // EPOLLRDHUP set, read on until EOF.
        let trust_short_read = !r.read_closed && !r.error;
        read_loop(c, core, rbuf, plain, key, trust_short_read);
    }
}

/// Reading again without a fresh event (after a pause or the fairness cap).
pub(super) fn conn_ready_again(
    c: &mut ConnEntry,
    core: &mut Core,
    rbuf: &mut [u8],
    plain: &mut Vec<u8>,
    key: usize,
) {
    if c.conn.is_closed() || c.conn.state == State::Connecting {
        return;
    }
    // No event tells us whether EOF is pending: read until WouldBlock.
    read_loop(c, core, rbuf, plain, key, false);
}

/// Completes a non-blocking connect. Writable does not mean connected: the result is in
/// `SO_ERROR` (`take_error`), and `peer_addr` succeeds only once really connected.
pub(super) fn finish_connect(c: &mut ConnEntry, core: &mut Core, key: usize) {
    match c.conn.stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => {
            close_now(c, core, key, CloseReason::ConnectFailed(e));
            return;
        }
    }
    match c.conn.stream.peer_addr() {
        Ok(_) => {}
        // Spurious wake-up: still connecting.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
        Err(e) => {
            close_now(c, core, key, CloseReason::ConnectFailed(e));
            return;
        }
    }
    core.stats.connected += 1;
    c.conn.last_active = core.now;
    let id = ConnId::new(key, c.conn.generation);
    if let Some(idle) = core.config.idle_timeout {
        let at = crate::timer::later(core.now, idle);
        arm_timer(core, &mut c.conn, id, Kind::Idle, at);
    }
    if matches!(c.conn.session, Session::Tls(_)) {
        // Same deadline as an accepted handshake, so a server that never answers cannot
        // hold the connection forever.
        let at = crate::timer::later(core.now, core.config.handshake_timeout);
        arm_timer(core, &mut c.conn, id, Kind::Handshake, at);
    }
    if let Session::Tls(tls) = &mut c.conn.session {
        // The client speaks first: the ClientHello.
        c.conn.state = State::Handshaking;
        tls.poll_output(&mut c.conn.sendbuf);
        progress(c, core, key);
    } else {
        c.conn.state = State::Open;
        disarm_timer(core, &mut c.conn, Kind::Connect);
        call_handler(c, core, key, |h, ctx| h.on_open(ctx));
    }
}

/// Reads until the socket would block, the peer closes, or a limit says stop.
///
/// `trust_short_read`: epoll(7) notes that for stream sockets a read that returns less
/// than asked for means the receive queue is drained, so the trailing read that would
/// only return `WouldBlock` can be skipped (one system call less per message). Any data
/// arriving later raises a new edge.
pub(super) fn read_loop(
    c: &mut ConnEntry,
    core: &mut Core,
    rbuf: &mut [u8],
    plain: &mut Vec<u8>,
    key: usize,
    trust_short_read: bool,
) {
    let mut budget = core.config.read_budget;
    let id = ConnId::new(key, c.conn.generation);
    loop {
        let conn = &mut c.conn;
        if conn.is_closed() || conn.read_eof {
            return;
        }
        if conn.is_reading_paused() && !conn.closing {
            // Backpressure or the handler paused us; whoever resumes must come back.
            conn.maybe_readable = true;
            return;
        }
        if budget == 0 {
            // Fairness: let other connections have a turn; continue on the next turn
            // without waiting for an event (none will come for data already here).
            conn.maybe_readable = true;
            core.schedule_read(id);
            return;
        }
        match conn.stream.try_read(rbuf) {
            Ok(0) => {
                conn.maybe_readable = false;
                on_eof(c, core, key);
                return;
            }
            Ok(n) => {
                budget = budget.saturating_sub(n);
                core.stats.bytes_in += n as u64;
                conn.last_active = core.now;
                deliver(c, core, &rbuf[..n], plain, key);
                // (Two rare exceptions stall only the peer that causes them: a Unix read
                // stops early at passed file descriptors, a TCP read at urgent data. Their
                // data waits for the peer's next bytes or the idle timeout.)
                if trust_short_read && n < rbuf.len() {
                    c.conn.maybe_readable = false;
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.maybe_readable = false;
                return;
            }
            Err(e) => {
                // ECONNRESET and friends: the peer is gone; only this connection ends.
                close_now(c, core, key, CloseReason::Io(e));
                return;
            }
        }
    }
}

/// Hands bytes read from the socket to the session and the handler.
pub(super) fn deliver(
    c: &mut ConnEntry,
    core: &mut Core,
    data: &[u8],
    plain: &mut Vec<u8>,
    key: usize,
) {
    if c.conn.closing && c.conn.write_shut == WriteShut::Done {
        // Closing gracefully: read and drop, waiting for the peer's EOF. For TLS the peer's
        // close_notify is that EOF (many peers keep TCP open until we close it), so the
        // session still reads the records, only to notice it.
        if let Session::Tls(tls) = &mut c.conn.session {
            plain.clear();
            match tls.handle_ciphertext(data, plain) {
                Ok(()) if tls.is_peer_closed() => on_eof(c, core, key),
                Ok(()) => {}
                Err(e) => close_now(c, core, key, CloseReason::Tls(e)),
            }
        }
        return;
    }
    match &mut c.conn.session {
        Session::Plain => {
            if c.conn.closing {
                return;
            }
            call_handler(c, core, key, |h, ctx| h.on_data(ctx, data));
        }
        Session::Tls(tls) => {
            let was_handshaking = tls.is_handshaking();
            plain.clear();
            let result = tls.handle_ciphertext(data, plain);
            // Handshake replies, tickets, alerts: the session may need to write even when
            // the application has nothing to say.
            tls.poll_output(&mut c.conn.sendbuf);
            if let Err(e) = result {
                log::debug!("#{key} TLS error: {e}");
                // Best effort to deliver the alert so the peer learns why.
                let _ = flush(&mut c.conn, core);
                close_now(c, core, key, CloseReason::Tls(e));
                return;
            }
            let now_open = was_handshaking && !tls.is_handshaking();
            let peer_closed = tls.is_peer_closed();
            if now_open {
                core.stats.tls_handshakes_ok += 1;
                log::debug!(
                    "#{key} TLS handshake done ({})",
                    tls.protocol().unwrap_or("?")
                );
                c.conn.state = State::Open;
                disarm_timer(core, &mut c.conn, Kind::Handshake);
                disarm_timer(core, &mut c.conn, Kind::Connect);
                call_handler(c, core, key, |h, ctx| h.on_open(ctx));
            } else {
                progress(c, core, key);
            }
            if !plain.is_empty() && !c.conn.is_closed() && !c.conn.closing {
                call_handler(c, core, key, |h, ctx| h.on_data(ctx, plain));
            }
            if peer_closed && !c.conn.is_closed() {
                on_eof(c, core, key);
            }
        }
    }
}

/// The peer will send no more. Half-close: not "close now" — what we owe still goes out.
pub(super) fn on_eof(c: &mut ConnEntry, core: &mut Core, key: usize) {
    if c.conn.read_eof {
        return;
    }
    c.conn.read_eof = true;
    match c.conn.state {
        State::Open if !c.conn.closing => {
            call_handler(c, core, key, |h, ctx| h.on_peer_closed(ctx))
        }
        State::Open => progress(c, core, key),
        _ => close_now(
            c,
            core,
            key,
            CloseReason::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the handshake",
            )),
        ),
    }
}

pub(super) fn conn_timer(
    c: &mut ConnEntry,
    core: &mut Core,
    key: usize,
    timer: crate::handler::TimerId,
    kind: Kind,
) {
    let id = ConnId::new(key, c.conn.generation);
    match kind {
        Kind::User => call_handler(c, core, key, |h, ctx| h.on_timer(ctx, timer)),
        Kind::Idle => {
            let Some(idle) = core.config.idle_timeout else {
                return;
            };
            let due = crate::timer::later(c.conn.last_active, idle);
            if due <= core.now {
                log::debug!("{id} idle for {idle:?}: closing");
                if c.conn.closing {
                    close_now(c, core, key, CloseReason::IdleTimeout);
                } else {
                    c.conn.closing = true;
                    if c.conn.write_shut == WriteShut::Open {
                        c.conn.write_shut = WriteShut::Requested;
                    }
                    progress(c, core, key);
                }
            } else {
                // Traffic since: check again when it could next expire (one heap entry per
                // connection instead of one per byte moved).
                arm_timer(core, &mut c.conn, id, Kind::Idle, due);
            }
        }
        Kind::Handshake => {
            if c.conn.state == State::Handshaking {
                close_now(c, core, key, CloseReason::HandshakeTimeout);
            }
        }
        Kind::Connect => {
            if c.conn.state == State::Connecting {
                close_now(c, core, key, CloseReason::ConnectTimeout);
            } else if c.conn.state == State::Handshaking {
                close_now(c, core, key, CloseReason::HandshakeTimeout);
            }
        }
        Kind::Linger => close_now(c, core, key, CloseReason::CloseTimeout),
        Kind::AcceptBackoff | Kind::DgramRetry => {}
    }
}
