//! Datagram sockets inside the reactor: UDP and Unix datagram.
//!
//! Teaches: no connection and no stream — every datagram stands alone, is received whole
//! (or, if too large, not at all) and answered to the address it came from. Sending can
//! block too, so replies wait in a bounded queue (`crate::dgram`); and when datagrams
//! queue up faster than they are read, many can move per system call
//! (`recvmmsg`/`sendmmsg`), while a shallow queue is better served one `recvfrom` at a
//! time.

use crate::trace::{TraceEvent, trace_event};
use std::io;
use std::time::Duration;

use mio::{Interest, Token};

use super::core::{Core, DgramEntry, Entry, Inner, TimerList, dgram_at};
use super::stream::ReadBufs;
use crate::dgram::DgramQueue;
use crate::error::{ListenError, SendError};
use crate::handler::{DatagramHandler, DgramCtx};
use crate::id::{ConnId, TimerId};
use crate::net::{BATCH, Datagram, Endpoint, PeerAddr, RecvBatch, UnixName};
use crate::stats::Transport;
use crate::timer::{Target, later};

/// A datagram socket's transport, for the statistics.
fn transport_of(sock: &Datagram) -> Transport {
    if sock.is_udp() {
        Transport::Udp
    } else {
        Transport::UnixDgram
    }
}

/// How often queued Unix datagram replies are tried again.
const UNIX_RETRY: Duration = Duration::from_millis(20);

/// Datagrams handled per socket per turn before others get a go (fairness cap).
const DGRAM_BUDGET: usize = 256;

/// A receive batch at least this full says the queue runs deep.
const DEEP: usize = 4;

/// Adds a bound datagram socket; its `on_ready` runs once the action that added it is
/// done (at once for the loop's own entry points, after the callback for one made from a
/// callback).
pub(crate) fn add<S>(
    inner: &mut Inner<S>,
    mut sock: Datagram,
    handler: Box<dyn DatagramHandler<S>>,
) -> Result<(ConnId, Endpoint), ListenError> {
    let addr = sock
        .local_endpoint()
        .unwrap_or(Endpoint::Unix(UnixName::Abstract(Vec::new())));
    let key = inner.slab.vacant_key();
    inner
        .poll
        .registry()
        .register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(ListenError::Register)?;
    let id = inner.core.next_id(key);
    inner.core.udp_added |= sock.is_udp();
    inner.slab.insert(Entry::Dgram(DgramEntry {
        sock,
        handler: Some(handler),
        queue: DgramQueue::default(),
        generation: id.generation,
        closed: false,
        close_requested: false,
        ready_pending: true,
        deep: false,
        user_timers: TimerList::default(),
    }));
    inner.core.touched.push(id);
    Ok((id, addr))
}

/// Runs what is owed to a socket after actions from elsewhere: its `on_ready`, or a close
/// asked for.
pub(crate) fn run_owed<S>(inner: &mut Inner<S>, key: usize) {
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return;
    };
    if d.closed {
        return;
    }
    if std::mem::take(&mut d.ready_pending) {
        // Let a client send its first datagram.
        if callback(inner, key, |h, ctx| h.on_ready(ctx)) {
            return;
        }
    }
    if matches!(inner.slab.get(key), Some(Entry::Dgram(d)) if d.close_requested) {
        close(inner, key);
    }
}

/// Runs a datagram handler callback, then closes the socket if it was asked to. Returns
/// true if the socket is closed.
fn callback<S>(
    inner: &mut Inner<S>,
    key: usize,
    f: impl FnOnce(&mut dyn DatagramHandler<S>, &mut DgramCtx<'_, S>),
) -> bool {
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return true;
    };
    let id = ConnId::new(key, d.generation);
    // Taken out for the call so the context can reach the rest of the loop; callbacks
    // never nest, so it is there.
    let Some(mut handler) = d.handler.take() else {
        return d.closed;
    };
    f(handler.as_mut(), &mut DgramCtx { ops: inner, id });
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return true;
    };
    d.handler = Some(handler);
    let close_now = d.close_requested && !d.closed;
    // What it sent to stream connections is written at the end of the turn.
    if close_now {
        close(inner, key);
    }
    matches!(inner.slab.get(key), Some(Entry::Dgram(d)) if d.closed)
}

/// Closes a socket: flushes what can go now (a datagram socket has no half-close to wait
/// for), cancels its timers, runs its `on_close`.
pub(crate) fn close<S>(inner: &mut Inner<S>, key: usize) {
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return;
    };
    if d.closed {
        return;
    }
    let id = ConnId::new(key, d.generation);
    flush_queue(&mut inner.core, d, id);
    d.closed = true;
    for t in d
        .user_timers
        .take_all()
        .into_iter()
        .chain(d.queue.retry_timer.take())
    {
        inner.core.timers.cancel(t);
    }
    // `close` returns at once if called again from inside on_close.
    callback(inner, key, |h, ctx| h.on_close(ctx));
    inner.core.dead.push(key);
}

/// Sends queued replies, oldest first (see [`DgramQueue::flush`]), and arms the retry
/// timer a Unix socket needs: a full receiver's reading raises no event on our side.
fn flush_queue<S>(core: &mut Core, d: &mut DgramEntry<S>, id: ConnId) {
    let sock = &d.sock;
    let done = d.queue.flush(
        core.now,
        core.config.close_timeout,
        sock.is_udp(),
        |data, to| sock.try_send_to(data, to),
    );
    core.stats
        .dgram_out(transport_of(&d.sock), done.sent, done.sent_bytes);
    core.stats.datagrams_dropped += done.dropped;
    arm_retry(core, d, id);
}

fn arm_retry<S>(core: &mut Core, d: &mut DgramEntry<S>, id: ConnId) {
    if d.sock.is_udp() || d.queue.is_empty() || d.queue.retry_timer.is_some() {
        return;
    }
    let at = later(core.now, UNIX_RETRY);
    d.queue.retry_timer = Some(core.timers.add(at, Target::DgramRetry(id)));
}

/// The retry timer of a Unix datagram socket's queue fired.
pub(crate) fn retry_fired<S>(inner: &mut Inner<S>, id: ConnId) {
    let Some(d) = dgram_at(&mut inner.slab, id) else {
        return;
    };
    if d.closed {
        return;
    }
    d.queue.retry_timer = None;
    flush_queue(&mut inner.core, d, id);
    if d.queue.resume_if_drained(inner.core.config.datagram_queue) {
        // Edge-triggered: datagrams that arrived while paused raise no new event.
        inner.core.schedule_read(id);
    }
}

/// A handler timer of this socket fired.
pub(crate) fn user_timer_fired<S>(inner: &mut Inner<S>, id: ConnId, timer: TimerId) {
    let Some(d) = dgram_at(&mut inner.slab, id) else {
        return;
    };
    if d.closed {
        return;
    }
    d.user_timers.remove(timer);
    callback(inner, id.key(), |h, ctx| h.on_timer(ctx, timer));
}

/// Sends one datagram now, or queues it if the socket would block.
pub(crate) fn send<S>(
    core: &mut Core,
    d: &mut DgramEntry<S>,
    id: ConnId,
    data: &[u8],
    to: &PeerAddr,
) -> Result<(), SendError> {
    if d.closed {
        return Err(SendError::Closed);
    }
    if !to.is_addressable() {
        core.stats.datagrams_dropped += 1;
        return Err(SendError::Unaddressable);
    }
    if let (true, true, PeerAddr::Inet(a)) = (core.batching, d.queue.is_empty(), to) {
        // Inside a receive batch: gather, and send all replies with one call afterwards.
        core.dgram_batch.push(data, *a);
        return Ok(());
    }
    if !d.queue.must_wait(d.sock.is_udp(), to) {
        match d.sock.try_send_to(data, to) {
            Ok(_) => {
                core.stats.dgram_out(transport_of(&d.sock), 1, data.len());
                let (n, queued) = (data.len(), false);
                trace_event!(core.trace, TraceEvent::Sent { id, n, to, queued });
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                core.stats.datagrams_dropped += 1;
                return Err(SendError::Io(e));
            }
        }
    }
    // Datagram sockets can block too: keep it, and stop receiving once the queue is full
    // so that replies cannot pile up without bound.
    if d.queue
        .push(data, to, core.now, core.config.datagram_queue)
        .is_err()
    {
        core.stats.datagrams_dropped += 1;
        return Err(SendError::QueueFull);
    }
    let (n, queued) = (data.len(), true);
    trace_event!(core.trace, TraceEvent::Sent { id, n, to, queued });
    arm_retry(core, d, id);
    Ok(())
}

/// One readiness event for a datagram socket (or a read scheduled without one).
pub(crate) fn ready<S>(
    inner: &mut Inner<S>,
    bufs: &mut ReadBufs,
    batch: Option<&mut RecvBatch>,
    key: usize,
    readable: bool,
    writable: bool,
) {
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return;
    };
    if d.closed {
        return;
    }
    let id = ConnId::new(key, d.generation);
    let mut readable = readable;
    if writable && !d.queue.is_empty() {
        flush_queue(&mut inner.core, d, id);
        if d.queue.resume_if_drained(inner.core.config.datagram_queue) {
            // Edge-triggered: datagrams that arrived while paused raise no new event.
            readable = true;
        }
    }
    if !readable {
        return;
    }
    if let (true, Some(batch)) = (d.sock.is_udp(), batch) {
        read_udp(inner, bufs, batch, id);
        return;
    }
    // Fairness cap, counted in datagrams.
    for _ in 0..DGRAM_BUDGET {
        match recv_one(inner, &mut bufs.wire, key) {
            One::Handled | One::Failed => {}
            One::Empty | One::Closed => return,
        }
    }
    inner.core.schedule_read(id);
}

/// What one `recvfrom` came to.
enum One {
    /// A datagram was received and handled.
    Handled,
    /// The socket is closed (by the handler), or paused until its queue drains.
    Closed,
    /// `WouldBlock`: the queue is empty, and edge-triggered readiness will say when it
    /// is not.
    Empty,
    /// The receive failed; the socket goes on.
    Failed,
}

/// Receives one datagram and hands it to the handler.
fn recv_one<S>(inner: &mut Inner<S>, buf: &mut [u8], key: usize) -> One {
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        return One::Closed;
    };
    if d.queue.is_paused() || d.closed {
        return One::Closed;
    }
    match d.sock.try_recv_from(buf) {
        Ok((n, from)) => {
            inner.core.input_seen += 1;
            inner.core.stats.dgram_in(transport_of(&d.sock), 1, n);
            let id = ConnId::new(key, d.generation);
            trace_event!(
                inner.core.trace,
                TraceEvent::Received { id, n, from: &from }
            );
            if refused(&mut inner.core, &from) {
                return One::Handled;
            }
            if callback(inner, key, |h, ctx| h.on_datagram(ctx, &buf[..n], &from)) {
                One::Closed
            } else {
                One::Handled
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => One::Empty,
        Err(e) => {
            // The socket goes on: InvalidData is one Unix datagram too large to receive
            // whole (see `try_recv_from`); other errors are ICMP news, which reach only
            // connected UDP sockets (or those with IP_RECVERR). The handler hears of both.
            if e.kind() == io::ErrorKind::InvalidData {
                inner.core.stats.datagrams_dropped += 1;
            }
            log::debug!("recv on {}: {e}", ConnId::new(key, d.generation));
            if callback(inner, key, |h, ctx| h.on_error(ctx, &e)) {
                One::Closed
            } else {
                One::Failed
            }
        }
    }
}

/// A datagram from a loop-prone source port (see [`crate::Config::udp_drop_ports`]): it
/// is dropped, counted and logged (at most once per interval), never answered.
fn refused(core: &mut Core, from: &PeerAddr) -> bool {
    let PeerAddr::Inet(a) = from else {
        return false;
    };
    if !core.config.udp_drop_ports.contains(&a.port()) {
        return false;
    }
    core.stats.datagrams_refused += 1;
    if let Some(count) = core.refuse_log.note(core.now) {
        log::warn!(
            "dropping UDP datagrams from loop-prone source ports ({count} since the last \
             warning, the last from {a}): answering them could bounce a datagram between \
             two services forever"
        );
    }
    true
}

/// UDP's receive path, which reads in one of two ways depending on how deep the socket's
/// queue runs:
///
/// - **Shallow** (datagrams trickle in, as from ping-pong clients): `recvfrom` one
///   datagram at a time, answer it at once with `sendto`, until `EAGAIN`. The batch
///   calls cost more per datagram inside the kernel (every message header is copied in and
///   checked), so a `recvmmsg` that finds a single datagram loses to a plain `recvfrom`.
/// - **Deep** (datagrams arrive faster than we get round to them): `recvmmsg` takes up to
///   [`BATCH`] at once, the handler answers each, and one `sendmmsg` sends all the replies.
///
/// Two single reads in a row that both found a datagram say the queue may be building up:
/// try a batch. A batch of [`DEEP`] or more confirms it; a full one means more may wait,
/// and one that comes back short has drained the queue (`recvmmsg` stops at the first
/// would-block), so stop and wait for the next edge instead of asking again just to hear
/// `EAGAIN` — the next wake-up starts with a batch straight away (`DgramEntry::deep`). A
/// batch of fewer than [`DEEP`] says datagrams only trickle in: read singly again until
/// `EAGAIN`, without another batch this wake-up.
///
/// Measured (`cargo bench --bench compare`, rows d and d8), server CPU per datagram against
/// a tokio server that reads one at a time: 16 ping-pong clients, parity (batching every
/// read cost 1.08×); the same clients with 8 datagrams in flight each, 0.80–0.87×.
fn read_udp<S>(inner: &mut Inner<S>, bufs: &mut ReadBufs, batch: &mut RecvBatch, id: ConnId) {
    let key = id.key();
    let mut budget = DGRAM_BUDGET;
    // Single reads in a row that found a datagram.
    let mut run = 0;
    // A batch this wake-up came back nearly empty: the queue is shallow after all.
    let mut shallow = false;
    while budget > 0 {
        let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
            return;
        };
        if d.queue.is_paused() || d.closed {
            return;
        }
        if !d.deep {
            budget -= 1;
            match recv_one(inner, &mut bufs.wire, key) {
                One::Handled => {
                    run += 1;
                    if let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) {
                        d.deep = run >= 2 && !shallow;
                    }
                }
                One::Failed => run = 0,
                One::Empty | One::Closed => return,
            }
            continue;
        }
        let n = match d.sock.try_recv_batch(batch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                d.deep = false;
                return;
            }
            Err(e) => {
                // As for single reads: one failed receive, the socket goes on.
                log::debug!("recv on {id}: {e}");
                budget -= 1;
                if callback(inner, key, |h, ctx| h.on_error(ctx, &e)) {
                    return;
                }
                continue;
            }
        };
        budget = budget.saturating_sub(n.max(1));
        inner.core.input_seen += 1;
        trace_event!(inner.core.trace, TraceEvent::Batch { id, k: n });
        let bytes = (0..n).map(|i| batch.get(i).0.len()).sum();
        inner.core.stats.dgram_in(Transport::Udp, n as u64, bytes);
        let mut closed = false;
        inner.core.batching = true;
        for i in 0..n {
            let (data, from) = batch.get(i);
            let Some(from) = from else {
                // A sender we cannot name cannot be answered.
                inner.core.stats.datagrams_dropped += 1;
                continue;
            };
            let from = PeerAddr::Inet(from);
            if refused(&mut inner.core, &from) {
                continue;
            }
            closed = callback(inner, key, |h, ctx| h.on_datagram(ctx, data, &from));
            if closed {
                // The rest of the batch was received but will never be handled.
                inner.core.stats.datagrams_dropped += (n - i - 1) as u64;
                break;
            }
        }
        inner.core.batching = false;
        // The replies go out even if the handler closed the socket: they were accepted.
        flush_send_batch(inner, key);
        if closed {
            return;
        }
        if n < DEEP {
            // Hardly worth a batch: read singly again until EAGAIN, as datagrams
            // trickling in are better met by `recvfrom` than by a trip through epoll.
            if let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) {
                d.deep = false;
            }
            shallow = true;
        } else if n < BATCH {
            // Drained: any datagram arriving from now on raises a new edge.
            return;
        }
    }
    inner.core.schedule_read(id);
}

/// Sends the replies gathered during a batch. On the first refusal the rest go through
/// the one-at-a-time path, which queues on `WouldBlock` and drops on hard errors.
fn flush_send_batch<S>(inner: &mut Inner<S>, key: usize) {
    let core = &mut inner.core;
    let mut replies = std::mem::take(&mut core.dgram_batch);
    let Some(Entry::Dgram(d)) = inner.slab.get_mut(key) else {
        replies.clear();
        core.dgram_batch = replies;
        return;
    };
    let id = ConnId::new(key, d.generation);
    let total = replies.len();
    let mut i = 0;
    // One reply goes by `sendto` below: cheaper in the kernel than a batch of one.
    if total > 1 {
        while i < total {
            match d.sock.try_send_batch(&replies, i) {
                Ok(k) if k > 0 => {
                    let bytes = (i..i + k).map(|j| replies.get(j).0.len()).sum();
                    core.stats.dgram_out(Transport::Udp, k as u64, bytes);
                    i += k;
                }
                _ => break,
            }
        }
    }
    for j in i..total {
        let (data, to) = replies.get(j);
        // Always an IP address: replies are gathered only for UDP senders (see `send`).
        let Some(to) = to.as_socket() else {
            continue;
        };
        let to = PeerAddr::Inet(to);
        if d.closed {
            // Accepted during a batch whose handler then closed the socket: one try now,
            // as a batch would have made, but nothing is queued for a socket that is going.
            match d.sock.try_send_to(data, &to) {
                Ok(_) => core.stats.dgram_out(Transport::Udp, 1, data.len()),
                Err(_) => core.stats.datagrams_dropped += 1,
            }
            continue;
        }
        // Errors are counted inside; there is no handler to tell any more.
        let _ = send(core, d, id, data, &to);
    }
    replies.clear();
    core.dgram_batch = replies;
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Instant;

    use super::{Duration, Entry};
    use crate::echo::EchoDatagram;
    use crate::handler::{DatagramHandler, DgramCtx};
    use crate::id::ConnId;
    use crate::net::{Endpoint, PeerAddr};
    use crate::{Config, EventLoop};

    /// Runs turns until `want` echoes have reached `client` (or a deadline passes).
    fn echoes(el: &mut EventLoop, client: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} echoes",
                got.len()
            );
            el.run_once(Some(Duration::from_millis(10))).unwrap();
            while let Ok(n) = client.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }

    fn deep(el: &EventLoop, id: ConnId) -> bool {
        match &el.inner.slab[id.key()] {
            Entry::Dgram(d) => d.deep,
            _ => panic!("not a datagram socket"),
        }
    }

    /// One datagram at a time keeps the socket on single reads; a burst switches it to
    /// batches, every datagram still answered once and in order; a lone datagram after
    /// that (a batch of one) switches it back.
    #[test]
    fn udp_reads_switch_between_single_and_batched_by_queue_depth() {
        let mut el = EventLoop::new(Config::default()).unwrap();
        let bound = el
            .bind_udp("127.0.0.1:0".parse().unwrap(), Box::new(EchoDatagram))
            .unwrap();
        let Endpoint::Inet(addr) = bound.addr else {
            panic!("udp bound to {}", bound.addr)
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        client.set_nonblocking(true).unwrap();

        for i in 0..5u8 {
            client.send(&[i; 10]).unwrap();
            assert_eq!(echoes(&mut el, &client, 1), vec![vec![i; 10]]);
            assert!(!deep(&el, bound.id), "ping-pong must stay on single reads");
        }

        // 40 queued before the loop looks: 2 single reads, then batches of 16, 16 and 6.
        let burst: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize]).collect();
        for m in &burst {
            client.send(m).unwrap();
        }
        assert_eq!(echoes(&mut el, &client, burst.len()), burst);
        assert!(
            deep(&el, bound.id),
            "a burst must leave the socket on batches"
        );
        assert_eq!(el.stats().datagrams_in, 45);
        assert_eq!(el.stats().datagrams_out, 45);

        client.send(b"lone").unwrap();
        assert_eq!(echoes(&mut el, &client, 1), vec![b"lone".to_vec()]);
        assert!(!deep(&el, bound.id), "a batch of one must switch back");
    }

    /// Binds a UDP echo socket from its `on_ready` and says which.
    struct Binder {
        bound: std::rc::Rc<std::cell::Cell<Option<ConnId>>>,
    }

    impl DatagramHandler for Binder {
        fn on_ready(&mut self, ctx: &mut DgramCtx<'_>) {
            let any = "127.0.0.1:0".parse().unwrap();
            self.bound
                .set(ctx.bind_udp(any, Box::new(EchoDatagram)).ok());
        }
        fn on_datagram(&mut self, _: &mut DgramCtx<'_>, _: &[u8], _: &PeerAddr) {}
    }

    /// A UDP socket bound from a callback, with no UDP socket added through the loop
    /// before it, still reads in batches when its queue runs deep.
    #[test]
    fn udp_socket_bound_from_a_callback_reads_in_batches() {
        let mut el = EventLoop::new(Config::default()).unwrap();
        let bound = std::rc::Rc::new(std::cell::Cell::new(None));
        let name = crate::net::UnixName::Abstract(
            format!("echoloop-binder-{}", std::process::id()).into_bytes(),
        );
        el.bind_unix_datagram(
            &name,
            Box::new(Binder {
                bound: bound.clone(),
            }),
        )
        .unwrap();
        el.run_once(Some(Duration::ZERO)).unwrap();
        let id = bound.get().expect("bound from on_ready");
        let Entry::Dgram(d) = &el.inner.slab[id.key()] else {
            panic!("not a datagram socket")
        };
        let Ok(PeerAddr::Inet(addr)) = d.sock.local_addr() else {
            panic!("not an IP socket")
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        client.set_nonblocking(true).unwrap();
        let burst: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 8]).collect();
        for m in &burst {
            client.send(m).unwrap();
        }
        assert_eq!(echoes(&mut el, &client, burst.len()), burst);
        assert!(deep(&el, id), "a burst must leave the socket on batches");
    }

    /// Echoes every datagram and closes its socket on the `n`-th.
    struct CloseOn {
        n: usize,
        seen: usize,
    }

    impl DatagramHandler for CloseOn {
        fn on_datagram(&mut self, ctx: &mut DgramCtx<'_>, data: &[u8], from: &PeerAddr) {
            ctx.send_to(data, from).unwrap();
            self.seen += 1;
            if self.seen == self.n {
                ctx.close();
            }
        }
    }

    /// A reply accepted before the handler closed the socket still goes out, whether it
    /// was gathered in a batch alone (the 3rd: two single reads, then a batch whose first
    /// datagram closes) or with others (the 4th), and nothing after the close is answered.
    #[test]
    fn udp_replies_accepted_before_a_close_go_out() {
        for n in [3usize, 4] {
            let mut el = EventLoop::new(Config::default()).unwrap();
            let bound = el
                .bind_udp(
                    "127.0.0.1:0".parse().unwrap(),
                    Box::new(CloseOn { n, seen: 0 }),
                )
                .unwrap();
            let Endpoint::Inet(addr) = bound.addr else {
                panic!("udp bound to {}", bound.addr)
            };
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(addr).unwrap();
            for i in 0..10u8 {
                client.send(&[i; 3]).unwrap();
            }
            let want: Vec<Vec<u8>> = (0..n as u8).map(|i| vec![i; 3]).collect();
            client.set_nonblocking(true).unwrap();
            assert_eq!(echoes(&mut el, &client, n), want, "closing on #{n}");
            // The socket is gone: a few more turns answer nothing more.
            for _ in 0..3 {
                el.run_once(Some(Duration::from_millis(5))).unwrap();
            }
            let mut buf = [0u8; 16];
            assert!(
                client.recv(&mut buf).is_err(),
                "answered after closing on #{n}"
            );
        }
    }

    /// Connects to a port where nothing listens, sends once, and records the errors it
    /// hears in the loop's state.
    struct Prober {
        to: PeerAddr,
    }

    impl DatagramHandler<Vec<std::io::ErrorKind>> for Prober {
        fn on_ready(&mut self, ctx: &mut DgramCtx<'_, Vec<std::io::ErrorKind>>) {
            ctx.connect_to(&self.to).unwrap();
            ctx.send_to(b"anyone?", &self.to).unwrap();
        }
        fn on_datagram(
            &mut self,
            _: &mut DgramCtx<'_, Vec<std::io::ErrorKind>>,
            _: &[u8],
            from: &PeerAddr,
        ) {
            panic!("a datagram from {from}");
        }
        fn on_error(
            &mut self,
            ctx: &mut DgramCtx<'_, Vec<std::io::ErrorKind>>,
            error: &std::io::Error,
        ) {
            ctx.state().push(error.kind());
        }
    }

    /// The ICMP "port unreachable" a connected UDP socket is told of raises an error event
    /// with no readability; the loop still receives it and hands it to `on_error`.
    #[test]
    fn udp_connected_socket_hears_of_a_closed_port() {
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = PeerAddr::Inet(gone.local_addr().unwrap());
        drop(gone);
        let mut el = EventLoop::with_state(Config::default(), Vec::new()).unwrap();
        el.bind_udp("127.0.0.1:0".parse().unwrap(), Box::new(Prober { to }))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while el.state().is_empty() {
            assert!(Instant::now() < deadline, "no error reached the handler");
            el.run_once(Some(Duration::from_millis(10))).unwrap();
        }
        assert_eq!(el.state(), &[std::io::ErrorKind::ConnectionRefused]);
    }
}
