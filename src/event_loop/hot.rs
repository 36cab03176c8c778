//! Busy polling that polls the sockets: the hot set.
//!
//! Teaches: what a busy-polling loop should spin on. Spinning on `epoll_wait` with a zero
//! timeout keeps the loop awake, but every message still costs the `epoll_wait` that
//! reports it before the `recv` that reads it. A latency tool such as sockperf spins on
//! `recv` itself: a read that finds nothing costs one system call, and a read that finds
//! the message *is* the read that handles it. This file gives the loop the same spin for
//! the few connections that are talking right now (the *hot set*), without giving up
//! what a reactor is for, serving every other socket, timer and thread:
//!
//! * A connection or datagram socket joins the set when a readiness event says it is
//!   readable, and leaves it when it has been silent for a whole busy window (or is gone).
//!   At most [`HOT_CAP`] members; a newcomer replaces the stalest.
//! * Within the busy window, a turn whose poll would have a zero timeout reads the
//!   members directly instead of polling (a *hot turn*). A hot turn that finds nothing
//!   reads them again at once, without the rest of a turn's bookkeeping, until one has
//!   input, a timer is due or the host's timeout is over: an empty read then costs about
//!   what sockperf's costs, one `recv` and a clock read. Each read of the set counts as one
//!   hot turn; every [`TURNS_PER_POLL`] of them, and whenever the set is empty, the loop
//!   polls again as before (`epoll_wait(0)`).
//! * When a poll reports anything outside the set — another connection, a listener, a
//!   message from a thread, a signal — the loop stops spinning on the set and polls on
//!   every turn, until [`QUIET`] has passed without such news. A loop with dozens of busy
//!   connections therefore never spins on the set at all: its polls always report others,
//!   and the few it could spin on would keep the rest waiting.
//!
//! **Bounded delay.** Timers are looked at on every turn, hot or not, and a hot turn's
//! repeated reads end when the next one is due (the clock is read after each). Everything else that arrives through the poller — other sockets, channel
//! messages, the stop handle, signals — waits at most [`TURNS_PER_POLL`] hot turns, each
//! one read per member and the handling of what it found.
//!
//! **Stale readiness is harmless.** Data read in a hot turn still raised its edge in
//! epoll, and the next poll reports it though the data is gone. The read it causes finds
//! the queue empty (`WouldBlock`) and costs one system call, once per poll rather than
//! once per message: see the short-read shortcut in `stream::read_loop`, which is sound
//! for the same reason (a new arrival always raises a new edge, so nothing is missed
//! either way).

use std::time::{Duration, Instant};

use crate::id::ConnId;

/// Members of the hot set at most: a busy-polling loop serves few connections (with many,
/// the loop never idles and busy polling buys nothing).
pub(crate) const HOT_CAP: usize = 4;

/// Hot turns between two polls.
pub(crate) const TURNS_PER_POLL: u32 = 32;

/// How long after news from outside the set the loop polls on every turn.
pub(crate) const QUIET: Duration = Duration::from_millis(1);

/// The connections (or datagram sockets) the loop reads without waiting for readiness.
#[derive(Debug)]
pub(crate) struct HotSet {
    /// The busy window; `None` turns the whole thing off.
    window: Option<Duration>,
    /// Members, with when each last had input.
    members: [Option<(ConnId, Instant)>; HOT_CAP],
    /// Hot turns since the last poll.
    turns: u32,
    /// When a poll last reported something outside the set.
    others_at: Option<Instant>,
}

impl HotSet {
    pub(crate) fn new(window: Option<Duration>) -> HotSet {
        HotSet {
            window,
            members: [None; HOT_CAP],
            turns: 0,
            others_at: None,
        }
    }

    /// Whether busy polling is on at all (nothing here is done otherwise).
    pub(crate) fn on(&self) -> bool {
        self.window.is_some()
    }

    /// Whether this turn reads the members instead of polling: the loop would poll with a
    /// zero timeout anyway (`wait_zero`), within the busy window, with members to read,
    /// and nothing else was reported for [`QUIET`].
    pub(crate) fn spin_now(&mut self, wait_zero: bool, now: Instant, last_event: Instant) -> bool {
        let Some(window) = self.window else {
            return false;
        };
        let spin = wait_zero
            && self
                .others_at
                .is_none_or(|at| now.saturating_duration_since(at) >= QUIET)
            && now.saturating_duration_since(last_event) < window
            && self.read_allowed();
        if spin {
            self.turns += 1;
        } else {
            // This turn polls: start counting again.
            self.turns = 0;
        }
        spin
    }

    /// Members to read, and the poll not due yet: what every read of the set needs.
    fn read_allowed(&self) -> bool {
        self.turns < TURNS_PER_POLL && self.members.iter().any(Option::is_some)
    }

    /// Whether a hot turn that found nothing may read the set again at once: members are
    /// left and the poll is not due yet (this counts as one more hot turn).
    pub(crate) fn spin_more(&mut self) -> bool {
        let more = self.read_allowed();
        if more {
            self.turns += 1;
        }
        more
    }

    /// A readiness event from the poll for `id` (`None`: not a connection or datagram
    /// socket — a listener, a descriptor source, the waker, a signal). Readable members
    /// join; anything not a member means the loop has more to serve than the set.
    pub(crate) fn saw(&mut self, id: Option<ConnId>, readable: bool, now: Instant) {
        let Some(id) = id else {
            self.others_at = Some(now);
            return;
        };
        if let Some(m) = self.members.iter_mut().flatten().find(|m| m.0 == id) {
            if readable {
                m.1 = now;
            }
            return;
        }
        self.others_at = Some(now);
        if readable {
            self.join(id, now);
        }
    }

    fn join(&mut self, id: ConnId, now: Instant) {
        let slot = match self.members.iter().position(Option::is_none) {
            Some(free) => free,
            // Full: the newcomer replaces the member silent for longest.
            None => {
                let mut stalest = 0;
                for (i, m) in self.members.iter().enumerate() {
                    if let (Some(a), Some(b)) = (m, &self.members[stalest]) {
                        if a.1 < b.1 {
                            stalest = i;
                        }
                    }
                }
                stalest
            }
        };
        self.members[slot] = Some((id, now));
    }

    /// The members, to read this hot turn.
    pub(crate) fn members(&self) -> [Option<ConnId>; HOT_CAP] {
        self.members.map(|m| m.map(|(id, _)| id))
    }

    /// A member's read in a hot turn found input.
    pub(crate) fn had_input(&mut self, id: ConnId, now: Instant) {
        if let Some(m) = self.members.iter_mut().flatten().find(|m| m.0 == id) {
            m.1 = now;
        }
    }

    /// A member that is gone (closed, or its slot reused) leaves.
    pub(crate) fn leave(&mut self, id: ConnId) {
        for m in &mut self.members {
            if m.is_some_and(|(member, _)| member == id) {
                *m = None;
            }
        }
    }

    /// Members silent for a whole busy window leave: spinning on them would only cost.
    pub(crate) fn expire(&mut self, now: Instant) {
        let Some(window) = self.window else {
            return;
        };
        for m in &mut self.members {
            if m.is_some_and(|(_, at)| now.saturating_duration_since(at) >= window) {
                *m = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnId, Duration, HOT_CAP, HotSet, Instant, QUIET, TURNS_PER_POLL};

    fn id(key: usize) -> ConnId {
        ConnId::new(key, 1)
    }

    #[test]
    fn spins_only_on_members_and_polls_every_so_often() {
        let t0 = Instant::now();
        let mut hot = HotSet::new(Some(Duration::from_millis(1)));
        // Empty: poll.
        assert!(!hot.spin_now(true, t0, t0));
        hot.saw(Some(id(3)), true, t0);
        // The newcomer was news: the loop polls on every turn for a while.
        assert!(!hot.spin_now(true, t0, t0));
        let t1 = t0 + QUIET;
        hot.saw(Some(id(3)), true, t1);
        for _ in 0..TURNS_PER_POLL {
            assert!(hot.spin_now(true, t1, t1));
        }
        assert!(
            !hot.spin_now(true, t1, t1),
            "a poll after {TURNS_PER_POLL} hot turns"
        );
        // A poll that reports a listener (None) or another connection: poll every turn.
        hot.saw(None, true, t1);
        assert!(!hot.spin_now(true, t1, t1));
        let t2 = t1 + QUIET;
        assert!(hot.spin_now(true, t2, t2), "quiet again");
        // Not when the loop would sleep or wait anyway, nor past the window.
        assert!(!hot.spin_now(false, t2, t2));
        let late = t2 + Duration::from_millis(2);
        assert!(!hot.spin_now(true, late, t2));
    }

    #[test]
    fn a_hot_turn_reads_again_until_the_poll_is_due() {
        let t0 = Instant::now();
        let mut hot = HotSet::new(Some(Duration::from_millis(1)));
        // No members: nothing to read again.
        assert!(!hot.spin_more());
        hot.saw(Some(id(3)), true, t0);
        let t1 = t0 + QUIET;
        assert!(hot.spin_now(true, t1, t1));
        // The turn's own read was the first; the rest of the allowance may follow at once,
        // and each counts toward the poll.
        let mut more = 0;
        while hot.spin_more() {
            more += 1;
        }
        assert_eq!(more, TURNS_PER_POLL - 1);
        assert!(!hot.spin_now(true, t1, t1), "the next turn polls");
        assert!(hot.spin_now(true, t1, t1), "and then spins again");
        hot.leave(id(3));
        assert!(!hot.spin_more(), "a set left empty stops the spin");
    }

    #[test]
    fn members_leave_when_silent_for_a_window_or_replaced_when_full() {
        let t0 = Instant::now();
        let w = Duration::from_millis(1);
        let mut hot = HotSet::new(Some(w));
        for k in 0..HOT_CAP {
            hot.saw(Some(id(k)), true, t0 + Duration::from_micros(k as u64));
        }
        hot.saw(Some(id(99)), true, t0 + w);
        let members = hot.members();
        assert!(members.contains(&Some(id(99))));
        assert!(!members.contains(&Some(id(0))), "the stalest made room");
        hot.had_input(id(1), t0 + w * 2);
        hot.expire(t0 + w * 2);
        let left: Vec<_> = hot.members().into_iter().flatten().collect();
        assert_eq!(left, vec![id(1)], "only the member with recent input stays");
        hot.leave(id(1));
        assert!(hot.members().iter().all(Option::is_none));
    }
}
