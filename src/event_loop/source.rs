//! Descriptors of the application's own, watched beside the loop's sockets: a pipe from a
//! child process, a pidfd, a timerfd, a signalfd, an eventfd, an inotify descriptor, a
//! socket made elsewhere.
//!
//! Teaches: epoll watches any descriptor whose file supports polling, not only sockets, so
//! one thread can wait for a child's output, its exit and the network at once. The rules
//! are the sockets' rules: readiness is edge-triggered, so the callback reads until
//! `WouldBlock`; the descriptor must be non-blocking, or the read that finds nothing would
//! stop the whole loop; and a removed descriptor is deregistered *before* it is closed
//! (after closing, its number may already name a new file).

use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::core::{Entry, Inner, SourceEntry, entry_at};
use crate::error::ConnError;
use crate::handler::{FdInterest, FdReady, LoopCtx, Watched};
use crate::id::ConnId;

/// Registers `fd` (owned by `watched`) with the poller.
pub(crate) fn add<S>(
    inner: &mut Inner<S>,
    fd: RawFd,
    interest: FdInterest,
    watched: Box<dyn Watched<S>>,
) -> io::Result<ConnId> {
    set_nonblocking(fd)?;
    let key = inner.slab.vacant_key();
    let interest = match interest {
        FdInterest::Read => Interest::READABLE,
        FdInterest::Write => Interest::WRITABLE,
        FdInterest::ReadWrite => Interest::READABLE | Interest::WRITABLE,
    };
    inner
        .poll
        .registry()
        .register(&mut SourceFd(&fd), Token(key), interest)?;
    let id = inner.core.next_id(key);
    inner.slab.insert(Entry::Source(SourceEntry {
        watched: Some(watched),
        fd,
        generation: id.generation,
        removed: false,
    }));
    Ok(id)
}

/// `O_NONBLOCK`, so that a read with nothing to read says `WouldBlock`.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL reads and sets flags of a descriptor the caller
    // owns (it is borrowed from the value the loop now owns); no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Stops watching: deregistered now, closed when its slot is freed after the batch.
pub(crate) fn remove<S>(inner: &mut Inner<S>, id: ConnId) -> Result<(), ConnError> {
    let Entry::Source(w) = entry_at(&mut inner.slab, &inner.core, id)? else {
        return Err(ConnError::NotStream);
    };
    if w.removed {
        return Err(ConnError::Gone);
    }
    w.deregister(&inner.poll);
    inner.core.dead.push(id.key());
    Ok(())
}

/// Readiness for a watched descriptor: runs its callback.
pub(crate) fn ready<S>(inner: &mut Inner<S>, key: usize, ready: FdReady) {
    let Some(Entry::Source(w)) = inner.slab.get_mut(key) else {
        return;
    };
    if w.removed {
        // Removed earlier in this batch: its events are stale.
        return;
    }
    // Taken out for the call, so the context can reach the whole loop (this entry too:
    // the callback may remove it).
    let Some(mut watched) = w.watched.take() else {
        return;
    };
    watched.ready(&mut LoopCtx { ops: inner }, ready);
    if let Some(Entry::Source(w)) = inner.slab.get_mut(key) {
        w.watched = Some(watched);
    }
}
