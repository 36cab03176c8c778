//! Names for things that live inside a loop: connections, sockets, descriptors, timers.
//!
//! Teaches: why a reactor hands out ids with a *generation*. Connections live in a slab
//! whose slots are reused as soon as a connection is gone, so a bare slot number that
//! outlives its connection (in a timer, in another connection's handler, in a message from
//! another thread) would one day name a stranger. The generation tells the two apart.
//!
//! This module imports nothing from the crate: every other module may use it.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU32, Ordering};

/// Identifies a connection within its loop — and, under the names [`ListenerId`] and
/// [`SocketId`], a listener or a datagram socket: all three live in the loop's one slab
/// and share its slot-and-generation scheme. One type lets a message from another thread or
/// a timer name any of them; acting on a listener's or socket's id as a connection gives
/// [`crate::ConnError::NotStream`].
///
/// Slab slots are reused, so the id carries a generation as well: a stale id never reaches
/// a newer connection that took the same slot; acting on it gives [`crate::ConnError::Gone`].
/// The generation's high bits are the loop's number, so an id handed to another loop is
/// refused with [`crate::ConnError::OtherLoop`] instead of reaching a stranger there.
///
/// Displayed as `#slot.generation` (`#3.17`): two connections that used the same slot one
/// after the other are told apart in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) generation: u32,
}

/// Bits of a generation below the loop's number.
const LOOP_SHIFT: u32 = 24;
const COUNTER_MASK: u32 = (1 << LOOP_SHIFT) - 1;

/// Numbers for loops, 1 to 255, handed out in turn. Two loops alive at once share a
/// number only after 255 more were made; their ids are then still told apart by slot
/// and generation as far as those go (a foreign id is most likely `Gone`).
static NEXT_LOOP: AtomicU32 = AtomicU32::new(0);

/// A number for a new loop.
pub(crate) fn next_loop_no() -> u32 {
    NEXT_LOOP.fetch_add(1, Ordering::Relaxed) % 255 + 1
}

/// The generation that follows `prev` in loop `loop_no` (the counter wraps after 16.7
/// million ids; a stale id would have to be kept across that many to meet its slot's
/// new user).
pub(crate) fn next_generation(loop_no: u32, prev: u32) -> u32 {
    let counter = prev.wrapping_add(1) & COUNTER_MASK;
    (loop_no << LOOP_SHIFT) | counter
}

impl ConnId {
    pub(crate) fn new(key: usize, generation: u32) -> ConnId {
        ConnId {
            // Slab keys stay far below u32::MAX: each needs a file descriptor, and a
            // process has at most a few million of those.
            key: key as u32,
            generation,
        }
    }

    /// The slab slot.
    pub(crate) fn key(self) -> usize {
        self.key as usize
    }

    /// The number of the loop that made it.
    pub(crate) fn loop_no(self) -> u32 {
        self.generation >> LOOP_SHIFT
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.key, self.generation & COUNTER_MASK)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConnId(#{}.{} of loop {})",
            self.key,
            self.generation & COUNTER_MASK,
            self.loop_no()
        )
    }
}

/// A [`ConnId`] that names a listener (from [`crate::EventLoop::listen`] and
/// `adopt_listener`): what `pause_listener`, `close_listener`, `expect_proxy_header` and
/// `count_in_stats` take.
pub type ListenerId = ConnId;

/// A [`ConnId`] that names a datagram socket (from [`crate::EventLoop::bind_udp`] and the
/// other datagram binds, or [`crate::DgramCtx::id`]).
pub type SocketId = ConnId;

/// Identifies a descriptor watched by a loop (see [`crate::EventLoop::add_fd`]); pass it
/// to `remove_fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub(crate) ConnId);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd source {}", self.0)
    }
}

/// A timer set through a context; pass it to `cancel_timer`.
///
/// Never zero, so that an `Option<TimerId>` takes no more room than the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) NonZeroU64);
