//! Timers: a deadline heap that feeds the poll timeout.
//!
//! Teaches: a single-threaded reactor needs no timer thread. `poll` takes a timeout; the
//! earliest deadline decides it, and expired timers run after each batch of events.
//! Cancelling only forgets the entry; its heap slot is skipped when it surfaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use crate::id::{ConnId, TimerId};

/// What a timer is for, and whose it is: each kind of owner has its own variants, so a
/// timer can never reach the wrong kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A stream connection's own deadline (connect, handshake, idle, close): see
    /// `Connection::poll_timeout`. One per connection at most.
    Deadline(ConnId),
    /// A handler's timer on a stream connection.
    Conn(ConnId),
    /// A handler's timer on a datagram socket.
    Dgram(ConnId),
    /// Try a Unix datagram socket's queued replies again.
    DgramRetry(ConnId),
    /// Try `accept` again after running out of descriptors.
    AcceptBackoff(ConnId),
    /// A timer of the loop's own (`LoopCtx::set_timer`): its callback is kept by the loop.
    Loop,
}

/// `now + d`, saturating far in the future instead of overflowing: durations come from
/// users and handlers, and `Instant + Duration` panics on overflow.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, Target>,
    /// The next id to hand out; ids start at 1 and only grow, so they are never zero.
    next: NonZeroU64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            next: NonZeroU64::MIN,
        }
    }
}

impl Timers {
    pub(crate) fn add(&mut self, at: Instant, target: Target) -> TimerId {
        let id = self.next;
        // A u64 counter does not wrap in the life of a process (one timer per nanosecond
        // would take 584 years).
        self.next = self.next.saturating_add(1);
        self.heap.push(Reverse((at, id.get())));
        self.live.insert(id.get(), target);
        TimerId(id)
    }

    /// Timers still waiting (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn cancel(&mut self, id: TimerId) {
        if self.live.remove(&id.0.get()).is_some()
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
        self.next.get()
    }

    /// Removes and returns one timer due at `now` that was set before `mark`.
    ///
    /// Why the mark: a callback may set a timer for "now" (a zero delay, a zero accept
    /// backoff). Fired in the same pass, it could be set again and again, and the loop would
    /// never get back to its sockets. Such timers wait for the next turn instead. Every
    /// timer is set for the loop's `now` or later, so the due timers from before the mark
    /// sort ahead of all later ones and stopping at the first later one skips none of them.
    pub(crate) fn pop_due(&mut self, now: Instant, mark: u64) -> Option<(TimerId, Target)> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now || id >= mark {
                return None;
            }
            self.heap.pop();
            if let Some(target) = self.live.remove(&id) {
                // Every id in the heap was made from a NonZeroU64.
                return NonZeroU64::new(id).map(|n| (TimerId(n), target));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnId, Instant, Target, Timers};
    use std::time::Duration;

    fn owner() -> Target {
        Target::Conn(ConnId {
            key: 1,
            generation: 0,
        })
    }

    #[test]
    fn timers_fire_in_deadline_order_and_skip_cancelled() {
        let mut t = Timers::default();
        let now = Instant::now();
        let late = t.add(now + Duration::from_millis(20), owner());
        let early = t.add(now + Duration::from_millis(10), owner());
        let cancelled = t.add(now + Duration::from_millis(5), owner());
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
            let id = t.add(now + Duration::from_secs(3600), owner());
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
        let first = t.add(now, owner());
        let mark = t.mark();
        assert_eq!(t.pop_due(now, mark).map(|x| x.0), Some(first));
        // As a callback re-arming a zero delay would.
        let again = t.add(now, owner());
        assert!(t.pop_due(now, mark).is_none());
        assert_eq!(t.next_deadline(), Some(now));
        assert_eq!(t.pop_due(now, t.mark()).map(|x| x.0), Some(again));
    }
}
