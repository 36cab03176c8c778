//! Listeners inside the reactor: accepting connections.
//!
//! Teaches: one readiness event may stand for many waiting connections, so a listener
//! accepts until `WouldBlock` — up to a budget, so that a connect flood cannot keep the
//! loop from the connections it already has. Out of file descriptors (`EMFILE`),
//! `accept` fails while the connection stays queued in the kernel and the listener stays
//! readable: retrying at once would spin the CPU, so the listener backs off on a timer
//! while established connections are served.

use std::io;

use mio::{Interest, Token};

use super::core::{Entry, Inner, ListenerEntry, entry_at};
use super::stream;
use crate::config::ListenKind;
use crate::conn::Session;
use crate::error::{ConnError, ListenError};
use crate::handler::{Handler, ListenerOp};
use crate::id::ConnId;
use crate::net::{self, Endpoint, Listener};
use crate::stats::Transport;
use crate::timer::{Target, later};
use crate::tls::TlsSession;
use crate::trace::{TraceEvent, trace_event};

/// Connections accepted per listener per turn before other sockets get a go.
const ACCEPT_BUDGET: usize = 256;

/// Registers a bound listener; returns its id and real address.
pub(crate) fn add<S>(
    inner: &mut Inner<S>,
    mut sock: Listener,
    kind: ListenKind,
    factory: Box<dyn FnMut() -> Box<dyn Handler<S>>>,
) -> Result<(ConnId, Endpoint), ListenError> {
    let addr = sock.local_endpoint().map_err(ListenError::Register)?;
    let key = inner.slab.vacant_key();
    inner
        .poll
        .registry()
        .register(&mut sock, Token(key), Interest::READABLE)
        .map_err(ListenError::Register)?;
    let id = inner.core.next_id(key);
    inner.slab.insert(Entry::Listener(ListenerEntry {
        sock,
        kind,
        factory,
        generation: id.generation,
        backoff: None,
        proxy: false,
        counted: true,
        paused: false,
        closed: false,
    }));
    Ok((id, addr))
}

/// Accepts until the queue is empty (`WouldBlock`) or the budget is spent.
pub(crate) fn accept_loop<S>(inner: &mut Inner<S>, key: usize) {
    for _ in 0..ACCEPT_BUDGET {
        let core = &mut inner.core;
        let Some(Entry::Listener(l)) = inner.slab.get_mut(key) else {
            return;
        };
        if l.backoff.is_some() || l.paused || !core.is_running() {
            return;
        }
        let (sock, peer) = match l.sock.try_accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if !net::is_per_connection(&e) => {
                // Out of descriptors, or a listener that fails whatever we do (`EINVAL`
                // from a socket that does not listen): the connection stays in the
                // kernel's queue and accepting again now would fail the same way,
                // spinning the CPU. Keep serving what we have; try again after a pause,
                // and say so at most once per interval.
                core.stats.accept_errors += 1;
                let pause = core.config.accept_backoff;
                if let Some(count) = core.emfile_log.note(core.now) {
                    log::warn!(
                        "accept: {e} ({count} time{} since the last warning); pausing accepts \
                         for {pause:?} at a time while existing connections are served",
                        if count == 1 { "" } else { "s" }
                    );
                }
                let id = ConnId::new(key, l.generation);
                trace_event!(
                    core.trace,
                    TraceEvent::EmfileBackoff {
                        listener: id,
                        ms: pause.as_millis() as u64,
                    }
                );
                l.backoff = Some(
                    core.timers
                        .add(later(core.now, pause), Target::AcceptBackoff(id)),
                );
                return;
            }
            Err(e) => {
                // The client gave up before we accepted (ECONNABORTED) and the like:
                // that connection is lost, the listener is fine (`is_per_connection`).
                core.stats.accept_errors += 1;
                log::debug!("accept: {e}");
                continue;
            }
        };
        if !l.counted && core.side_open >= core.config.max_side_connections {
            // A management endpoint has a small cap of its own: it is left out of
            // `max_connections` so that a full server still answers its monitoring, and
            // must not take the descriptors echo needs in exchange.
            let max = core.config.max_side_connections;
            log::debug!("rejecting connection from {peer}: {max} side connections already open");
            if let Some(count) = core.side_reject_log.note(core.now) {
                log::warn!(
                    "rejecting connections to a side listener: {max} already open ({count} \
                     rejected since the last such line)"
                );
            }
            drop(sock);
            continue;
        }
        if let (Some(max), true) = (core.config.max_connections, l.counted) {
            if core.stats.connections_open >= max as u64 {
                // Accept and close at once: left in the kernel's queue the client would
                // wait, believing it was connected.
                core.stats.rejected += 1;
                // One line per rejection would let a connect flood stall the loop on a
                // slow stderr: details at debug, a summary at most once a second.
                log::debug!("rejecting connection from {peer}: {max} connections already open");
                if core.reject_log.note(core.now).is_some() {
                    log::warn!(
                        "rejecting connections: {max} already open ({} rejected so far)",
                        core.stats.rejected
                    );
                }
                drop(sock);
                continue;
            }
        }
        let (session, transport) = match &l.kind {
            ListenKind::Tls(cfg) => match TlsSession::server(cfg) {
                Ok(s) => (Session::Tls(Box::new(s)), Transport::Tls),
                Err(e) => {
                    log::warn!("cannot start TLS session: {e}");
                    continue;
                }
            },
            ListenKind::Tcp => (Session::Plain, Transport::Tcp),
            ListenKind::Unix => (Session::Plain, Transport::Unix),
        };
        let handler = (l.factory)();
        let from = stream::FromListener {
            proxy: l.proxy,
            counted: l.counted,
        };
        if l.counted {
            core.stats.accepted += 1;
        }
        if core.trace.on {
            // The slot the connection takes, with the generation it will get.
            let listener = ConnId::new(key, l.generation);
            let id = core.peek_id(inner.slab.vacant_key());
            core.trace.emit(&TraceEvent::Accepted { listener, id });
        }
        stream::add_accepted(inner, sock, session, transport, from, handler, &peer);
    }
    // Fairness: the rest of the queue is taken on the next turn; no new event would come
    // for connections already queued.
    if let Some(Entry::Listener(l)) = inner.slab.get(key) {
        let id = ConnId::new(key, l.generation);
        inner.core.schedule_read(id);
    }
}

/// The pause after running out of descriptors is over.
pub(crate) fn backoff_over<S>(inner: &mut Inner<S>, id: ConnId) {
    match inner.slab.get_mut(id.key()) {
        Some(Entry::Listener(l)) if l.generation == id.generation => l.backoff = None,
        _ => return,
    }
    accept_loop(inner, id.key());
}

/// Pauses, resumes or closes a listener by id (its connections are not affected).
pub(crate) fn listener_op<S>(
    inner: &mut Inner<S>,
    id: ConnId,
    op: ListenerOp,
) -> Result<(), ConnError> {
    let Entry::Listener(l) = entry_at(&mut inner.slab, &inner.core, id)? else {
        return Err(ConnError::NotStream);
    };
    if l.closed {
        return Err(ConnError::Gone);
    }
    match op {
        ListenerOp::Pause => l.paused = true,
        ListenerOp::Resume => {
            if l.paused {
                l.paused = false;
                // Connections that queued while paused raise no new event (edge
                // triggering): look at the queue now.
                inner.core.schedule_read(id);
            }
        }
        ListenerOp::Close => l.close(&mut inner.core, id.key()),
    }
    Ok(())
}
