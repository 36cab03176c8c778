//! Names for things that live inside a loop: connections, sockets and timers.
//!
//! Teaches: why a reactor hands out ids with a *generation*. Connections live in a slab
//! whose slots are reused as soon as a connection is gone, so a bare slot number that
//! outlives its connection (in a timer, in another connection's handler, in a message from
//! another thread) would one day name a stranger. The generation tells the two apart.
//!
//! This module imports nothing from the crate: every other module may use it.

use std::fmt;
use std::num::NonZeroU64;

/// Identifies a connection, listener or datagram socket within its loop.
///
/// Slab slots are reused, so the id carries a generation as well: a stale id never reaches
/// a newer connection that took the same slot; acting on it gives [`crate::ConnError::Gone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) generation: u32,
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
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.key)
    }
}

/// A timer set through a context; pass it to `cancel_timer`.
///
/// Never zero, so that an `Option<TimerId>` takes no more room than the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) NonZeroU64);
