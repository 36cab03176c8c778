//! What the handler contexts do: the reactor's side of `handler::LoopOps`.
//!
//! Teaches: acting on a connection from anywhere — its own callback, another connection's,
//! a message from another thread — goes through the same few calls on its state machine
//! (`Connection::close`, `Connection::shutdown_write`...), so each rule lives in one place.
//! What an action causes (a FIN to send, an `on_close` to run) is not done inside the
//! caller's callback: the connection is marked "touched" and [`run_touched`] runs its outputs
//! once the callback has returned.

use crate::trace::{TraceEvent, trace_event};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::core::{Entry, Inner, Phase, StreamEntry, as_stream, dgram_at, entry_at, entry_view};
use super::{accept, datagram, source, stream};
use crate::config::ConnectOptions;
use crate::error::{ConnError, ListenError, SendError};
use crate::handler::{
    ConnOp, DatagramHandler, FdInterest, Handler, ListenerOp, LoopOps, OnTimer, Watched,
};
use crate::id::{ConnId, TimerId};
use crate::net::{self, Datagram, Endpoint, PeerAddr};
use crate::stats::Stats;
use crate::timer::{Target, later};

/// Runs everything actions have left to do: drives every touched entry (which may touch
/// more) until none is left. Output sent to connections from elsewhere waits for
/// [`flush`], at the end of the turn.
pub(crate) fn run_touched<S>(inner: &mut Inner<S>) {
    while let Some(id) = inner.core.touched.pop() {
        match inner.slab.get(id.key()) {
            Some(Entry::Stream(e)) if e.generation == id.generation => {
                stream::drive(inner, id.key());
            }
            Some(Entry::Dgram(d)) if d.generation == id.generation => {
                datagram::run_owed(inner, id.key());
            }
            Some(Entry::Failed(f)) if f.generation == id.generation => {
                stream::report_failed_connect(inner, id.key());
            }
            _ => {}
        }
    }
}

/// Ends a turn's work (or an action taken between turns): everything [`run_touched`] does,
/// then writes the output listed for the end of the turn, and runs what that caused.
///
/// One pass: output that the callbacks run here send in turn (an `on_drained` that sends
/// to others) waits for the next turn, which then does not sleep. A chain of such
/// callbacks must not keep the loop from polling: timers, signals and other sockets wait
/// meanwhile.
pub(crate) fn flush<S>(inner: &mut Inner<S>) {
    run_touched(inner);
    if !inner.core.flush.is_empty() {
        // What is sent while the listed connections are written waits for the next turn
        // in the connections' own buffers, not in the shared output, which is reset below.
        inner.core.pool.shared.close();
        stream::flush_listed(inner);
        run_touched(inner);
    }
    // Only listed connections hold spans of the turn's shared output, and each has been
    // written, with what the kernel did not take copied to its own buffer.
    inner.core.pool.shared.reset();
}

impl<S> Inner<S> {
    /// Looks `id` up as a stream connection, naming what it is otherwise.
    fn conn_entry(&mut self, id: ConnId) -> Result<&mut StreamEntry<S>, ConnError> {
        as_stream(entry_at(&mut self.slab, &self.core, id)?)
    }

    fn conn_view(&self, id: ConnId) -> Result<&StreamEntry<S>, ConnError> {
        match entry_view(&self.slab, &self.core, id)? {
            Entry::Stream(e) => Ok(e),
            Entry::Failed(_) => Err(ConnError::NotOpen),
            Entry::Listener(_) | Entry::Dgram(_) | Entry::Source(_) => Err(ConnError::NotStream),
        }
    }
}

impl<S> LoopOps<S> for Inner<S> {
    fn now(&self) -> Instant {
        self.core.now
    }

    fn stats(&self) -> Stats {
        self.core.stats
    }

    fn state(&mut self) -> &mut S {
        &mut self.state
    }

    fn stop_loop(&mut self, grace: Duration) {
        // The shortest grace asked for wins, whoever asked first.
        self.core.request_stop(grace);
    }

    fn connect(
        &mut self,
        to: &Endpoint,
        opts: ConnectOptions,
        handler: Box<dyn Handler<S>>,
    ) -> ConnId {
        stream::connect(self, to, opts, handler)
    }

    fn bind_udp(
        &mut self,
        addr: SocketAddr,
        handler: Box<dyn DatagramHandler<S>>,
    ) -> Result<ConnId, ListenError> {
        let sock = net::bind_udp(addr, self.core.bind_options())?;
        datagram::add(self, Datagram::Udp(sock), handler).map(|(id, _)| id)
    }

    fn set_timer(&mut self, owner: ConnId, after: Duration) -> TimerId {
        let at = later(self.core.now, after);
        let ms = after.as_millis() as u64;
        trace_event!(self.core.trace, TraceEvent::TimerSet { owner, ms });
        let timers = &mut self.core.timers;
        match self.slab.get_mut(owner.key()) {
            Some(Entry::Stream(e)) if e.generation == owner.generation => {
                let t = timers.add(at, Target::Conn(owner));
                if !e.conn.is_closed() {
                    e.user_timers.push(t);
                }
                t
            }
            Some(Entry::Dgram(d)) if d.generation == owner.generation => {
                let t = timers.add(at, Target::Dgram(owner));
                if !d.closed {
                    d.user_timers.push(t);
                }
                t
            }
            // A timer for something already gone (set from its `on_close`, say): it will
            // find nobody and do nothing.
            _ => timers.add(at, Target::Conn(owner)),
        }
    }

    fn cancel_timer(&mut self, owner: ConnId, timer: TimerId) {
        let list = match self.slab.get_mut(owner.key()) {
            Some(Entry::Stream(e)) if e.generation == owner.generation => &mut e.user_timers,
            Some(Entry::Dgram(d)) if d.generation == owner.generation => &mut d.user_timers,
            // Gone: its timers were cancelled with it.
            _ => return,
        };
        // Only the owner's own timers: an id from elsewhere (another loop, a loop timer,
        // a connection's deadline) must not cancel what it happens to number.
        if list.remove(timer) {
            self.core.timers.cancel(timer);
        }
    }

    fn conn_send(&mut self, id: ConnId, data: &[u8]) -> Result<(), ConnError> {
        stream::send(self, id, data)
    }

    fn conn_op(&mut self, id: ConnId, op: ConnOp) -> Result<(), ConnError> {
        let (now, limits) = (self.core.now, self.core.limits);
        let conn = &mut self.conn_entry(id)?.conn;
        match op {
            ConnOp::ShutdownWrite => conn.shutdown_write(),
            ConnOp::Close => conn.close(now, &limits),
            ConnOp::Abort => conn.abort(),
            ConnOp::PauseReading => conn.pause_reading(),
            ConnOp::ResumeReading => conn.resume_reading(),
            ConnOp::Backpressure(on) => conn.set_backpressure(on, &limits),
        }?;
        if matches!(op, ConnOp::Close) && conn.state() == crate::conn::State::Lingering {
            trace_event!(self.core.trace, TraceEvent::Lingering { id });
        }
        // Its outputs (a FIN, `on_close`, a read to come back for) run after the caller.
        self.core.touched.push(id);
        Ok(())
    }

    fn conn_pending(&self, id: ConnId) -> Result<usize, ConnError> {
        Ok(self.conn_view(id)?.conn.observe_pending())
    }

    fn conn_held(&self, id: ConnId) -> Result<usize, ConnError> {
        Ok(self.conn_view(id)?.conn.observe_held())
    }

    fn conn_peer_addr(&self, id: ConnId) -> Result<PeerAddr, ConnError> {
        let view = self.conn_view(id)?;
        // Behind a load balancer the socket's peer is the balancer: the header's client
        // is the one that matters.
        if let Some(real) = self.core.proxied.get(&id) {
            return Ok(real.clone());
        }
        view.stream.peer_addr().map_err(|_| ConnError::Gone)
    }

    fn dgram_send(&mut self, id: ConnId, data: &[u8], to: &PeerAddr) -> Result<(), SendError> {
        let core = &mut self.core;
        match self.slab.get_mut(id.key()) {
            Some(Entry::Dgram(d)) if d.generation == id.generation => {
                datagram::send(core, d, id, data, to)
            }
            _ => Err(SendError::Closed),
        }
    }

    fn dgram_close(&mut self, id: ConnId) {
        if let Some(d) = dgram_at(&mut self.slab, id) {
            d.close_requested = true;
            self.core.touched.push(id);
        }
    }

    fn dgram_connect(&mut self, id: ConnId, to: &PeerAddr) -> io::Result<()> {
        match dgram_at(&mut self.slab, id) {
            Some(d) if !d.closed => d.sock.connect(to),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the socket is closed",
            )),
        }
    }

    fn dgram_local_addr(&self, id: ConnId) -> Option<PeerAddr> {
        match self.slab.get(id.key()) {
            Some(Entry::Dgram(d)) if d.generation == id.generation => d.sock.local_addr().ok(),
            _ => None,
        }
    }

    fn finish_actions(&mut self) {
        flush(self);
    }

    fn conn_close_with(&mut self, id: ConnId, last: &[u8]) -> Result<(), ConnError> {
        let conn = &mut self.conn_entry(id)?.conn;
        conn.can_send()?;
        conn.discard_unsent();
        stream::send(self, id, last)?;
        self.conn_op(id, ConnOp::Close)
    }

    fn listener_op(&mut self, id: ConnId, op: ListenerOp) -> Result<(), ConnError> {
        accept::listener_op(self, id, op)
    }

    fn add_source(
        &mut self,
        fd: RawFd,
        interest: FdInterest,
        watched: Box<dyn Watched<S>>,
    ) -> io::Result<ConnId> {
        source::add(self, fd, interest, watched)
    }

    fn remove_source(&mut self, id: ConnId) -> Result<(), ConnError> {
        source::remove(self, id)
    }

    fn set_loop_timer(&mut self, after: Duration, callback: OnTimer<S>) -> TimerId {
        let t = self
            .core
            .timers
            .add(later(self.core.now, after), Target::Loop);
        self.loop_timers.insert(t, callback);
        t
    }

    fn cancel_loop_timer(&mut self, timer: TimerId) {
        if self.loop_timers.remove(&timer).is_some() {
            self.core.timers.cancel(timer);
        }
    }

    fn is_stopping(&self) -> bool {
        matches!(self.core.phase, Phase::Stopping { .. })
    }
}
