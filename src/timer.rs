//! Timers: a deadline heap that feeds the poll timeout.
//!
//! Teaches: a single-threaded reactor needs no timer thread. `poll` takes a timeout; the
//! earliest deadline decides it, and expired timers run after each batch of events.
//! Cancelling only forgets the entry; its heap slot is skipped when it surfaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::handler::{ConnId, TimerId};

/// Who a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Conn(ConnId),
    Dgram(ConnId),
    Listener(ConnId),
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Set by a handler.
    User,
    /// Check whether a connection has been idle too long.
    Idle,
    /// The TLS handshake must be done by now.
    Handshake,
    /// A connect must have completed by now.
    Connect,
    /// A closing connection's peer must have finished by now.
    Linger,
    /// Try `accept` again after running out of descriptors.
    AcceptBackoff,
    /// Try a Unix datagram socket's queued replies again.
    DgramRetry,
}

/// `now + d`, saturating far in the future instead of overflowing: durations come from
/// users and handlers, and `Instant + Duration` panics on overflow.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, (Owner, Kind)>,
    next: u64,
}

impl Timers {
    pub(crate) fn add(&mut self, at: Instant, owner: Owner, kind: Kind) -> TimerId {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((at, id)));
        self.live.insert(id, (owner, kind));
        TimerId(id)
    }

    pub(crate) fn cancel(&mut self, id: TimerId) {
        if self.live.remove(&id.0).is_some()
            && self.heap.len() > 1024
            && self.heap.len() > 2 * self.live.len()
        {
            // Cancelled entries stay in the heap until they surface; with long timeouts and
            // many short connections they would pile up, so drop them all once they are
            // the majority (amortised O(1) per cancel).
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains_key(id));
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek() {
            if self.live.contains_key(id) {
                return Some(*at);
            }
            // Cancelled: drop it now so it does not shorten the poll timeout.
            self.heap.pop();
        }
        None
    }

    /// Marks the start of a pass over due timers: see [`Timers::pop_due`].
    pub(crate) fn mark(&self) -> u64 {
        self.next
    }

    /// Removes and returns one timer due at `now` that was set before `mark`.
    ///
    /// Why the mark: a callback may set a timer for "now" (a zero delay, a zero accept
    /// backoff). Fired in the same pass, it could be set again and again, and the loop would
    /// never get back to its sockets. Such timers wait for the next turn instead. Every
    /// timer is set for the loop's `now` or later, so the due timers from before the mark
    /// sort ahead of all later ones and stopping at the first later one skips none of them.
    pub(crate) fn pop_due(&mut self, now: Instant, mark: u64) -> Option<(TimerId, Owner, Kind)> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now || id >= mark {
                return None;
            }
            self.heap.pop();
            if let Some((owner, kind)) = self.live.remove(&id) {
                return Some((TimerId(id), owner, kind));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn owner() -> Owner {
        Owner::Conn(ConnId {
            key: 1,
            generation: 0,
        })
    }

    #[test]
    fn timers_fire_in_deadline_order_and_skip_cancelled() {
        let mut t = Timers::default();
        let now = Instant::now();
        let late = t.add(now + Duration::from_millis(20), owner(), Kind::User);
        let early = t.add(now + Duration::from_millis(10), owner(), Kind::Idle);
        let cancelled = t.add(now + Duration::from_millis(5), owner(), Kind::User);
        t.cancel(cancelled);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(10)));
        let mark = t.mark();
        assert!(t.pop_due(now, mark).is_none());
        let later = now + Duration::from_secs(1);
        assert_eq!(t.pop_due(later, mark).map(|x| x.0), Some(early));
        assert_eq!(t.pop_due(later, mark).map(|x| x.0), Some(late));
        assert!(t.pop_due(later, mark).is_none());
        assert!(t.next_deadline().is_none());
    }

    #[test]
    fn timers_cancelled_entries_do_not_pile_up() {
        let mut t = Timers::default();
        let now = Instant::now();
        for _ in 0..10_000 {
            let id = t.add(now + Duration::from_secs(3600), owner(), Kind::Idle);
            t.cancel(id);
        }
        assert!(
            t.heap.len() <= 2048,
            "heap holds {} dead entries",
            t.heap.len()
        );
        assert!(t.live.is_empty());
    }

    #[test]
    fn timers_set_during_a_pass_wait_for_the_next() {
        let mut t = Timers::default();
        let now = Instant::now();
        let first = t.add(now, owner(), Kind::User);
        let mark = t.mark();
        assert_eq!(t.pop_due(now, mark).map(|x| x.0), Some(first));
        // As a callback re-arming a zero delay would.
        let again = t.add(now, owner(), Kind::User);
        assert!(t.pop_due(now, mark).is_none());
        assert_eq!(t.next_deadline(), Some(now));
        assert_eq!(t.pop_due(now, t.mark()).map(|x| x.0), Some(again));
    }
}
