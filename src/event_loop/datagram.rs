//! Datagram sockets inside the reactor: UDP and Unix datagram.
//!
//! Teaches: no connection and no stream — every datagram stands alone, is received whole
//! (or, if too large, not at all) and answered to the address it came from. Sending can
//! block too, so replies wait in a bounded queue; and when datagrams queue up faster than
//! they are read, many can move per system call (`recvmmsg`/`sendmmsg`), while a shallow
//! queue is better served one `recvfrom` at a time.

use super::*;

/// Runs a datagram handler callback with a context, then closes the socket if the
/// handler asked to. Returns true if it did.
pub(super) fn call_dgram(
    d: &mut DgramEntry,
    core: &mut Core,
    key: usize,
    f: impl FnOnce(&mut dyn DatagramHandler, &mut DgramCtx<'_>),
) -> bool {
    let mut close = false;
    let mut ctx = DgramCtx {
        sock: &d.sock,
        queue: &mut d.queue,
        core,
        id: ConnId::new(key, d.generation),
        close_requested: &mut close,
    };
    f(d.handler.as_mut(), &mut ctx);
    if close {
        close_dgram(d, core, key);
    }
    close
}

pub(super) fn close_dgram(d: &mut DgramEntry, core: &mut Core, key: usize) {
    if d.closed {
        return;
    }
    // Flush what can go now; a datagram socket has no half-close to wait for.
    flush_dgram_queue(d, core, ConnId::new(key, d.generation));
    d.closed = true;
    // `close_dgram` returns at once if called again from inside on_close.
    call_dgram(d, core, key, |h, ctx| h.on_close(ctx));
    core.dead.push(key);
}

/// Sends queued replies, oldest first.
///
/// UDP: `WouldBlock` means *our* send buffer is full, so nothing else can go either: stop.
/// Unix datagrams: it means *that receiver's* queue is full, and no event will say when it
/// has room. Its replies stay queued (in order) while those to other receivers go on, a
/// retry timer looks again, and replies that have waited longer than `close_timeout` are
/// dropped — so one client that never reads cannot freeze the socket for everyone.
pub(super) fn flush_dgram_queue(d: &mut DgramEntry, core: &mut Core, id: ConnId) {
    let udp = d.sock.is_udp();
    let mut blocked: Vec<PeerAddr> = Vec::new();
    let mut i = 0;
    while let Some(q) = d.queue.items.get(i) {
        if crate::timer::later(q.since, core.config.close_timeout) <= core.now {
            log::debug!(
                "reply to {} dropped: its receiver has not read for too long",
                q.to
            );
            core.stats.datagrams_dropped += 1;
            d.queue.items.remove(i);
            continue;
        }
        if blocked.iter().any(|b| same_peer(b, &q.to)) {
            i += 1;
            continue;
        }
        match d.sock.try_send_to(&q.data, &q.to) {
            Ok(_) => {
                core.stats.datagrams_out += 1;
                d.queue.items.remove(i);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if udp {
                    break;
                }
                blocked.push(q.to.clone());
                i += 1;
            }
            Err(e) => {
                log::debug!("send to {}: {e}", q.to);
                core.stats.datagrams_dropped += 1;
                d.queue.items.remove(i);
            }
        }
    }
    arm_retry(d, core, id);
}

/// Unix datagram sockets with replies waiting get a timer: a full receiver's reading
/// raises no event on our side.
fn arm_retry(d: &mut DgramEntry, core: &mut Core, id: ConnId) {
    arm_queue_retry(&d.sock, &mut d.queue, core, id);
}

fn arm_queue_retry(sock: &Datagram, queue: &mut DgramQueue, core: &mut Core, id: ConnId) {
    if sock.is_udp() || queue.items.is_empty() || queue.retry_timer.is_some() {
        return;
    }
    let at = crate::timer::later(core.now, UNIX_RETRY);
    queue.retry_timer = Some(core.timers.add(at, Owner::Dgram(id), Kind::DgramRetry));
}

/// How often queued Unix datagram replies are tried again.
const UNIX_RETRY: Duration = Duration::from_millis(20);

/// The retry timer of a Unix datagram socket's queue fired.
pub(super) fn dgram_retry(d: &mut DgramEntry, core: &mut Core, key: usize) {
    let id = ConnId::new(key, d.generation);
    d.queue.retry_timer = None;
    flush_dgram_queue(d, core, id);
    if d.queue.paused && d.queue.items.len() <= core.config.datagram_queue / 2 {
        d.queue.paused = false;
        // Edge-triggered: datagrams that arrived while paused raise no new event.
        core.schedule_read(id);
    }
}

/// Same destination? (std's Unix `SocketAddr` has no `PartialEq`.)
fn same_peer(a: &PeerAddr, b: &PeerAddr) -> bool {
    use std::os::linux::net::SocketAddrExt;
    match (a, b) {
        (PeerAddr::Inet(x), PeerAddr::Inet(y)) => x == y,
        (PeerAddr::Unix(x), PeerAddr::Unix(y)) => {
            x.as_pathname() == y.as_pathname() && x.as_abstract_name() == y.as_abstract_name()
        }
        _ => false,
    }
}

/// Sends one datagram now, or queues it if the socket would block.
pub(crate) fn dgram_send(
    sock: &Datagram,
    queue: &mut DgramQueue,
    core: &mut Core,
    id: ConnId,
    data: &[u8],
    to: &PeerAddr,
) -> Result<(), SendError> {
    if !to.is_addressable() {
        core.stats.datagrams_dropped += 1;
        return Err(SendError::Unaddressable);
    }
    if let (true, true, PeerAddr::Inet(a)) = (core.batching, queue.items.is_empty(), to) {
        // Inside a receive batch: gather, and send all replies with one call afterwards.
        core.dgram_batch.push(data, *a);
        return Ok(());
    }
    // Replies to one receiver stay in order; for Unix sockets, a receiver with nothing
    // queued need not wait behind another that is full.
    let send_now = queue.items.is_empty()
        || (!sock.is_udp() && !queue.items.iter().any(|q| same_peer(&q.to, to)));
    if send_now {
        match sock.try_send_to(data, to) {
            Ok(_) => {
                core.stats.datagrams_out += 1;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                core.stats.datagrams_dropped += 1;
                return Err(SendError::Io(e));
            }
        }
    }
    if queue.items.len() >= core.config.datagram_queue {
        core.stats.datagrams_dropped += 1;
        return Err(SendError::QueueFull);
    }
    // Datagram sockets can block too: keep it, and stop receiving until the queue drains
    // so that replies cannot pile up without bound.
    queue.items.push_back(Queued {
        data: data.to_vec(),
        to: to.clone(),
        since: core.now,
    });
    if queue.items.len() >= core.config.datagram_queue {
        queue.paused = true;
    }
    arm_queue_retry(sock, queue, core, id);
    Ok(())
}

pub(super) fn dgram_ready(
    d: &mut DgramEntry,
    core: &mut Core,
    rbuf: &mut [u8],
    batch: Option<&mut RecvBatch>,
    key: usize,
    readable: bool,
    writable: bool,
) {
    if d.closed {
        return;
    }
    let id = ConnId::new(key, d.generation);
    let mut readable = readable;
    if writable && !d.queue.items.is_empty() {
        flush_dgram_queue(d, core, id);
        if d.queue.paused && d.queue.items.len() <= core.config.datagram_queue / 2 {
            d.queue.paused = false;
            // Edge-triggered: datagrams that arrived while paused raise no new event.
            readable = true;
        }
    }
    if !readable {
        return;
    }
    if let (true, Some(batch)) = (d.sock.is_udp(), batch) {
        dgram_read_udp(d, core, rbuf, batch, id, key);
        return;
    }
    // Fairness cap, counted in datagrams.
    for _ in 0..DGRAM_BUDGET {
        if d.queue.paused || d.closed {
            return;
        }
        match recv_one(d, core, rbuf, key) {
            One::Handled | One::Failed => {}
            One::Empty | One::Closed => return,
        }
    }
    core.schedule_read(id);
}

/// What one `recvfrom` came to.
enum One {
    /// A datagram was received and handled.
    Handled,
    /// The handler closed the socket.
    Closed,
    /// `WouldBlock`: the queue is empty, and edge-triggered readiness will say when it
    /// is not.
    Empty,
    /// The receive failed; the socket goes on.
    Failed,
}

/// Receives one datagram and hands it to the handler.
fn recv_one(d: &mut DgramEntry, core: &mut Core, rbuf: &mut [u8], key: usize) -> One {
    match d.sock.try_recv_from(rbuf) {
        Ok((n, from)) => {
            core.stats.datagrams_in += 1;
            if call_dgram(d, core, key, |h, ctx| h.on_datagram(ctx, &rbuf[..n], &from)) {
                One::Closed
            } else {
                One::Handled
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => One::Empty,
        Err(e) => {
            // An error here concerns one datagram, not the socket: InvalidData is a Unix
            // datagram too large to receive whole (see `try_recv_from`). UDP errors are rare
            // on an unconnected socket (ICMP errors such as "port unreachable" reach only
            // connected ones, or those with IP_RECVERR).
            if e.kind() == io::ErrorKind::InvalidData {
                core.stats.datagrams_dropped += 1;
            }
            log::debug!("recv on {}: {e}", ConnId::new(key, d.generation));
            One::Failed
        }
    }
}

/// Datagrams handled per socket per turn before others get a go (fairness cap).
const DGRAM_BUDGET: usize = 256;

/// A receive batch at least this full says the queue runs deep.
const DEEP: usize = 4;

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
pub(super) fn dgram_read_udp(
    d: &mut DgramEntry,
    core: &mut Core,
    rbuf: &mut [u8],
    batch: &mut RecvBatch,
    id: ConnId,
    key: usize,
) {
    let mut budget = DGRAM_BUDGET;
    // Single reads in a row that found a datagram.
    let mut run = 0;
    // A batch this wake-up came back nearly empty: the queue is shallow after all.
    let mut shallow = false;
    while budget > 0 {
        if d.queue.paused || d.closed {
            return;
        }
        if !d.deep {
            budget -= 1;
            match recv_one(d, core, rbuf, key) {
                One::Handled => {
                    run += 1;
                    d.deep = run >= 2 && !shallow;
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
                continue;
            }
        };
        budget = budget.saturating_sub(n.max(1));
        core.stats.datagrams_in += n as u64;
        let mut closed = false;
        core.batching = true;
        for i in 0..n {
            let (data, from) = batch.get(i);
            let Some(from) = from else {
                // A sender we cannot name cannot be answered.
                core.stats.datagrams_dropped += 1;
                continue;
            };
            let from = PeerAddr::Inet(from);
            closed = call_dgram(d, core, key, |h, ctx| h.on_datagram(ctx, data, &from));
            if closed {
                // The rest of the batch was received but will never be handled.
                core.stats.datagrams_dropped += (n - i - 1) as u64;
                break;
            }
        }
        core.batching = false;
        // The replies go out even if the handler closed the socket: they were accepted.
        flush_send_batch(d, core, key);
        if closed {
            return;
        }
        if n < DEEP {
            // Hardly worth a batch: read singly again until EAGAIN, as datagrams
            // trickling in are better met by `recvfrom` than by a trip through epoll.
            d.deep = false;
            shallow = true;
        } else if n < BATCH {
            // Drained: any datagram arriving from now on raises a new edge.
            return;
        }
    }
    core.schedule_read(id);
}

/// Sends the replies gathered during a batch. On the first refusal the rest go through
/// the one-at-a-time path, which queues on `WouldBlock` and drops on hard errors.
pub(super) fn flush_send_batch(d: &mut DgramEntry, core: &mut Core, key: usize) {
    let mut replies = std::mem::take(&mut core.dgram_batch);
    let total = replies.len();
    let mut i = 0;
    // One reply goes by `sendto` below: cheaper in the kernel than a batch of one.
    if total > 1 {
        while i < total {
            match d.sock.try_send_batch(&replies, i) {
                Ok(k) if k > 0 => {
                    core.stats.datagrams_out += k as u64;
                    i += k;
                }
                _ => break,
            }
        }
    }
    for j in i..total {
        let (data, to) = replies.get(j);
        let Some(to) = to.as_socket() else {
            continue;
        };
        let to = PeerAddr::Inet(to);
        if d.closed {
            // Accepted during a batch whose handler then closed the socket: one try now,
            // as a batch would have made, but nothing is queued for a socket that is going.
            match d.sock.try_send_to(data, &to) {
                Ok(_) => core.stats.datagrams_out += 1,
                Err(_) => core.stats.datagrams_dropped += 1,
            }
            continue;
        }
        // Errors are counted inside; there is no handler to tell any more.
        let id = ConnId::new(key, d.generation);
        let _ = dgram_send(&d.sock, &mut d.queue, core, id, data, &to);
    }
    replies.clear();
    core.dgram_batch = replies;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoDatagram;
    use std::net::UdpSocket;

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
        match &el.slab[id.key as usize] {
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
}
