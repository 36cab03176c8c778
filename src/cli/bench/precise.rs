//! Waking an open-loop generator to the microsecond instead of the millisecond.
//!
//! The loop sleeps in `epoll_wait`, whose timeout is whole milliseconds: mio rounds a
//! timer due in 300 µs up to 1 ms (strace shows `epoll_wait(…, 1)`). At `--rate 1k` on
//! one connection every send then leaves up to a millisecond late, and since open-loop
//! latency counts from when a message was *due*, the report measured our own timer, not
//! the server. Two ways out: spin for the last millisecond before each send (exact, but
//! up to a core burnt at any rate), or put a `timerfd` in the poll set, armed to the next
//! deadline with nanosecond resolution, so `epoll_wait` returns when the descriptor fires.
//! The timerfd alone still left sends some 60 µs late at low rates: the kernel may defer
//! a timer by the thread's *timer slack* (50 µs by default, to batch wake-ups; the load
//! thread sets its own to 1 ns), and waking a sleeping virtual CPU takes tens of
//! microseconds. So the timer fires [`PreciseWake::SPIN`] early and the driver polls
//! without sleeping for the rest: at most that much CPU per send.
//! Measured on a 2-vCPU VM: see the README's "Open-loop sends leave on time".

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use echoloop::{EventLoop, FdInterest, SourceId};

/// A timerfd watched by one loop, re-armed before each wait.
pub(super) struct PreciseWake {
    /// Our copy of the descriptor (a `dup`): the loop holds the other, reads it when it
    /// fires, and closes it when the source is removed.
    timer: OwnedFd,
    source: SourceId,
    /// The instant it is armed for, to skip a system call when nothing changed.
    armed: Option<Instant>,
}

impl PreciseWake {
    /// How long before a send is due the loop stops sleeping and polls without waiting:
    /// about what waking from `epoll_wait` costs on a virtual machine (50–60 µs measured
    /// on the 2-vCPU VM this was written on). Costs at most this much CPU per send.
    pub(super) const SPIN: Duration = Duration::from_micros(60);

    /// Adds a timerfd to `el` and makes this thread's timers exact.
    pub(super) fn new<S: 'static>(el: &mut EventLoop<S>) -> io::Result<PreciseWake> {
        // SAFETY: plain integer arguments; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just created and owned by nobody else.
        let theirs = unsafe { OwnedFd::from_raw_fd(fd) };
        let timer = theirs.try_clone()?;
        // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let source = el.add_fd(theirs, FdInterest::Read, |_, fd, _| {
            // It fired: read the expiry count so the descriptor is quiet again (edge
            // triggered: the next firing is a new edge). The loop's timers run on their
            // own, in this turn, because their time has come.
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8 from a descriptor the
            // loop owns for as long as this callback can run.
            let _ = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        })?;
        Ok(PreciseWake {
            timer,
            source,
            armed: None,
        })
    }

    /// Arms the timer to fire at `at` (relative to now: `Instant` has no absolute form).
    pub(super) fn arm(&mut self, at: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // At least 1 ns: a zero value would disarm it.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` lives across the call; the old value is not asked for (null).
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(at);
        Ok(())
    }

    /// Takes the timer out of the loop (it closes its copy), so the loop can be empty.
    pub(super) fn remove<S>(self, el: &mut EventLoop<S>) {
        let _ = el.remove_fd(self.source);
    }
}
