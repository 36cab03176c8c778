//! A datagram socket's queue of replies the kernel could not take yet, as a plain type.
//!
//! Teaches: sending a datagram can block too (the socket's send buffer is full), and what
//! `WouldBlock` means differs by family. For UDP it is *our* buffer that is full, so
//! nothing else can go either. For Unix datagrams it is *that receiver's* queue, and no
//! readiness event will say when it has room: replies to other receivers may go on, the
//! full one's wait (in order) for a retry, and replies left unread too long are dropped —
//! so one client that never reads cannot freeze the socket for everyone. The queue is
//! bounded; when it fills, the socket stops receiving until it drains.
//!
//! No system calls here: the driver passes the send function in.

use std::collections::VecDeque;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::time::{Duration, Instant};

use crate::id::TimerId;
use crate::net::PeerAddr;
use crate::timer::later;

/// Replies waiting for room, oldest first.
#[derive(Debug, Default)]
pub(crate) struct DgramQueue {
    items: VecDeque<Queued>,
    /// Receiving paused until the queue drains.
    paused: bool,
    /// Unix datagram sockets: the timer that tries the queue again.
    pub(crate) retry_timer: Option<TimerId>,
}

/// One reply waiting in the queue.
#[derive(Debug)]
struct Queued {
    data: Vec<u8>,
    to: PeerAddr,
    /// When it was queued: replies a receiver leaves unread too long are dropped.
    since: Instant,
}

/// What a pass over the queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub(crate) sent: u64,
    pub(crate) sent_bytes: usize,
    pub(crate) dropped: u64,
}

/// The queue is at its bound: the datagram was not queued.
#[derive(Debug)]
pub(crate) struct QueueFull;

impl DgramQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Receiving is paused until the queue drains.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether a reply to `to` must wait behind queued ones rather than be tried now:
    /// replies to one receiver stay in order, and on UDP a full buffer holds everyone up.
    pub(crate) fn must_wait(&self, udp: bool, to: &PeerAddr) -> bool {
        !self.items.is_empty() && (udp || self.items.iter().any(|q| same_peer(&q.to, to)))
    }

    /// Keeps a reply the kernel would not take. At `cap` it refuses; reaching `cap`
    /// pauses receiving, so replies cannot pile up without bound.
    pub(crate) fn push(
        &mut self,
        data: &[u8],
        to: &PeerAddr,
        now: Instant,
        cap: usize,
    ) -> Result<(), QueueFull> {
        if self.items.len() >= cap {
            return Err(QueueFull);
        }
        self.items.push_back(Queued {
            data: data.to_vec(),
            to: to.clone(),
            since: now,
        });
        if self.items.len() >= cap {
            self.paused = true;
        }
        Ok(())
    }

    /// Offers queued replies to `send`, oldest first. `WouldBlock` stops everything on UDP
    /// and only that receiver's replies on Unix sockets; other errors drop the reply;
    /// replies older than `max_age` are dropped unsent.
    pub(crate) fn flush(
        &mut self,
        now: Instant,
        max_age: Duration,
        udp: bool,
        mut send: impl FnMut(&[u8], &PeerAddr) -> io::Result<usize>,
    ) -> Flushed {
        let mut done = Flushed::default();
        let mut blocked: Vec<PeerAddr> = Vec::new();
        let mut i = 0;
        while let Some(q) = self.items.get(i) {
            if later(q.since, max_age) <= now {
                log::debug!(
                    "reply to {} dropped: its receiver has not read for too long",
                    q.to
                );
                done.dropped += 1;
                self.items.remove(i);
                continue;
            }
            if blocked.iter().any(|b| same_peer(b, &q.to)) {
                i += 1;
                continue;
            }
            match send(&q.data, &q.to) {
                Ok(_) => {
                    done.sent += 1;
                    done.sent_bytes += q.data.len();
                    self.items.remove(i);
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
                    done.dropped += 1;
                    self.items.remove(i);
                }
            }
        }
        done
    }

    /// Unpauses receiving once the queue is down to half its bound; true if it did.
    pub(crate) fn resume_if_drained(&mut self, cap: usize) -> bool {
        if self.paused && self.items.len() <= cap / 2 {
            self.paused = false;
            return true;
        }
        false
    }
}

/// Same destination? (std's Unix `SocketAddr` has no `PartialEq`.)
fn same_peer(a: &PeerAddr, b: &PeerAddr) -> bool {
    match (a, b) {
        (PeerAddr::Inet(x), PeerAddr::Inet(y)) => x == y,
        (PeerAddr::Unix(x), PeerAddr::Unix(y)) => {
            x.as_pathname() == y.as_pathname() && x.as_abstract_name() == y.as_abstract_name()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{DgramQueue, Duration, Flushed, Instant, PeerAddr, io};

    fn peer(port: u16) -> PeerAddr {
        PeerAddr::Inet(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn dgram_queue_unix_blocked_receiver_does_not_hold_up_others() {
        let mut q = DgramQueue::default();
        let now = Instant::now();
        q.push(b"a1", &peer(1), now, 8).unwrap();
        q.push(b"b1", &peer(2), now, 8).unwrap();
        q.push(b"a2", &peer(1), now, 8).unwrap();
        let mut sent = Vec::new();
        let done = q.flush(now, Duration::from_secs(5), false, |d, to| {
            if matches!(to, PeerAddr::Inet(a) if a.port() == 1) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            sent.push(d.to_vec());
            Ok(d.len())
        });
        assert_eq!(
            done,
            Flushed {
                sent: 1,
                sent_bytes: 2,
                dropped: 0
            }
        );
        assert_eq!(sent, vec![b"b1".to_vec()]);
        assert_eq!(q.len(), 2, "the blocked receiver's replies stay, in order");
        assert!(q.must_wait(false, &peer(1)));
        assert!(!q.must_wait(false, &peer(2)));
        assert!(q.must_wait(true, &peer(2)), "on UDP everyone waits");
    }

    #[test]
    fn dgram_queue_bounded_pauses_and_expires() {
        let mut q = DgramQueue::default();
        let now = Instant::now();
        for i in 0..4 {
            q.push(&[i], &peer(1), now, 4).unwrap();
        }
        assert!(q.is_paused());
        assert!(q.push(b"x", &peer(1), now, 4).is_err());
        let late = now + Duration::from_secs(10);
        let done = q.flush(late, Duration::from_secs(5), true, |_, _| {
            panic!("expired replies are not sent")
        });
        assert_eq!(
            done,
            Flushed {
                sent: 0,
                sent_bytes: 0,
                dropped: 4
            }
        );
        assert!(q.resume_if_drained(4));
        assert!(!q.is_paused());
    }
}
