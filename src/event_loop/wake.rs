//! Reaching the loop from other threads: a stop handle, and bounded channels of messages.
//!
//! Teaches: the only safe way into a single-threaded reactor from another thread is to
//! leave something where the loop will look, then wake it — mio's `Waker` makes the poll
//! return. Waking is a system call, so a wake-up already on its way is not repeated
//! (`notified`): a sender that finds the flag set knows the loop will look anyway. The
//! loop clears the flag *before* it empties the queues, so a message that arrives while
//! it drains either is seen by this drain or makes its own wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;

use super::core::Inner;
use super::ctx::run_touched;
use crate::error::TrySendError;
use crate::handler::LoopCtx;

/// Messages handled per channel per turn, so that a flooding thread cannot starve the
/// sockets; the rest wait for the next turn, which then does not block.
const DRAIN_BUDGET: usize = 1024;

/// What the loop and everyone who can wake it share.
#[derive(Debug)]
pub(crate) struct Wake {
    waker: Waker,
    /// A wake-up is on its way.
    notified: AtomicBool,
    /// A stop was asked for: the grace in milliseconds, or `u64::MAX` for none.
    grace_ms: AtomicU64,
    /// Senders blocked in [`Sender::send_timeout`] until a channel has room: the loop
    /// bumps the count after it took messages (or stopped) and wakes them. Only when
    /// someone waits (`waiting`), so a loop nobody waits on pays one atomic load.
    room: Mutex<u64>,
    room_changed: Condvar,
    waiting: AtomicUsize,
}

impl Wake {
    pub(crate) fn new(waker: Waker) -> Wake {
        Wake {
            waker,
            notified: AtomicBool::new(false),
            grace_ms: AtomicU64::new(u64::MAX),
            room: Mutex::new(0),
            room_changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The loop took messages (or will take none any more): wake blocked senders.
    pub(crate) fn room_made(&self) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        // A poisoned lock only means a sender panicked while holding it: the count is
        // still a count.
        let mut epoch = self.room.lock().unwrap_or_else(|e| e.into_inner());
        *epoch = epoch.wrapping_add(1);
        self.room_changed.notify_all();
    }

    fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("cannot wake the event loop: {e}");
            }
        }
    }

    /// The loop was woken: clear the flag first (see the module docs), then return the
    /// stop request, if any.
    pub(crate) fn woken(&self) -> Option<Duration> {
        self.notified.store(false, Ordering::Release);
        match self.grace_ms.swap(u64::MAX, Ordering::AcqRel) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// Stops a loop from any thread: cloneable and `Send`.
#[derive(Debug, Clone)]
pub struct StopHandle {
    pub(crate) wake: Arc<Wake>,
}

impl StopHandle {
    /// Asks the loop to stop: it stops accepting, tells every open connection's handler
    /// ([`crate::Handler::on_stopping`], by default a graceful close: what is owed is sent,
    /// new input is not read), and returns from `run` when all are closed or `grace` has
    /// passed (then it closes the rest at once, resetting those that still owed output).
    pub fn stop(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1);
        self.wake.grace_ms.store(ms, Ordering::Release);
        // A pending wake-up may be consumed before our store is seen: always wake.
        self.wake.notified.store(true, Ordering::Release);
        if let Err(e) = self.wake.waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
    }
}

/// Hands messages to a loop from any thread; made by [`crate::EventLoop::channel`].
///
/// Bounded: [`Sender::try_send`] never blocks, and says so when the channel is full or the
/// loop has stopped, handing the message back.
pub struct Sender<M> {
    tx: SyncSender<M>,
    wake: Arc<Wake>,
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

impl<M> std::fmt::Debug for Sender<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<M> Sender<M> {
    /// Queues `msg` for the loop's callback and wakes the loop.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake.wake();
                Ok(())
            }
            Err(mpsc::TrySendError::Full(m)) => Err(TrySendError::Full(m)),
            Err(mpsc::TrySendError::Disconnected(m)) => Err(TrySendError::Closed(m)),
        }
    }

    /// Queues `msg`, waiting up to `timeout` for room if the channel is full: flow control
    /// for a producer thread (a worker pool answering through the loop) that should slow
    /// down to the loop's pace rather than spin or drop. Blocks the calling thread — never
    /// call it on the loop's own thread, whose draining it would wait for. Gives the
    /// message back with `Full` when the time is up, `Closed` once the loop has stopped.
    pub fn send_timeout(&self, msg: M, timeout: Duration) -> Result<(), TrySendError<M>> {
        let deadline = Instant::now().checked_add(timeout);
        let wake = &*self.wake;
        wake.waiting.fetch_add(1, Ordering::AcqRel);
        let result = (|| {
            let mut msg = msg;
            loop {
                // Read the count before trying: room made after a failed try bumps it,
                // so the wait below cannot miss it.
                let seen = *wake.room.lock().unwrap_or_else(|e| e.into_inner());
                match self.try_send(msg) {
                    Err(TrySendError::Full(m)) => msg = m,
                    other => return other,
                }
                let left = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    None => Duration::MAX,
                };
                if left.is_zero() {
                    return Err(TrySendError::Full(msg));
                }
                let guard = wake.room.lock().unwrap_or_else(|e| e.into_inner());
                let _unused = wake
                    .room_changed
                    .wait_timeout_while(guard, left, |epoch| *epoch == seen)
                    .unwrap_or_else(|e| e.into_inner());
            }
        })();
        wake.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// The loop's end of one channel.
pub(crate) trait Channel<S> {
    /// Runs the callback for waiting messages, at most [`DRAIN_BUDGET`]; true if more wait.
    fn drain(&mut self, inner: &mut Inner<S>) -> bool;
}

/// A channel's callback on the loop's thread.
pub(crate) type OnMessage<S, M> = Box<dyn FnMut(&mut LoopCtx<'_, S>, M)>;

struct Receiving<S, M> {
    rx: Receiver<M>,
    callback: OnMessage<S, M>,
}

impl<S, M> Channel<S> for Receiving<S, M> {
    fn drain(&mut self, inner: &mut Inner<S>) -> bool {
        for _ in 0..DRAIN_BUDGET {
            match self.rx.try_recv() {
                Ok(msg) => {
                    (self.callback)(&mut LoopCtx { ops: inner }, msg);
                    run_touched(inner);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
            }
        }
        true
    }
}

/// Makes a channel of `capacity` messages (at least 1) delivered to `callback`.
pub(crate) fn channel<S: 'static, M: 'static>(
    wake: &Arc<Wake>,
    capacity: usize,
    callback: OnMessage<S, M>,
) -> (Sender<M>, Box<dyn Channel<S>>) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let sender = Sender {
        tx,
        wake: Arc::clone(wake),
    };
    (sender, Box::new(Receiving { rx, callback }))
}
