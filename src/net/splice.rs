//! Zero-copy echo: moving a stream's bytes from its receive queue to its send queue
//! through a pipe with `splice(2)`, never through user space.
//!
//! Teaches: where the copies of a plain echo are, and how to skip them. `read` copies the
//! kernel's socket buffers into ours and `write` copies them back. `splice` moves data
//! between a descriptor and a pipe by reference: from a TCP socket the pipe takes the
//! received buffers' pages, and into a socket the pipe's pages are attached to the packets
//! to send. So an echo that never looks at its bytes can pass them socket → pipe → socket
//! with two calls and no copy.
//!
//! **When it pays.** Each call is dearer than a `read` or `write` of the same bytes (a pipe
//! to manage, pages to take and give back), so splicing wins only when the copies it
//! saves are large: bulk transfers, not small messages. The loop splices a connection only
//! while its reads are large (`stream::read_loop`), and the figures are in the README.
//!
//! **The pipe.** One per loop, made the first time it is needed: bytes are in it only
//! within one connection's turn. When the socket cannot take all of them (a full send
//! buffer), the rest is read out of the pipe into the connection's send buffer and goes
//! the usual way — backpressure, half-close and the graceful stop see ordinary owed
//! output, and the pipe is empty again for the next connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::stream::Stream;
use super::sys::retry;

/// The pipe's asked-for capacity. A pipe holds a number of pages (slots), not bytes, and
/// a fragmented socket buffer takes one slot per fragment: 64 slots are enough for one
/// 64 KiB read however it arrived (the kernel's default is 16; a larger pipe may be
/// refused, which only costs calls).
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// A pipe between a socket's receive queue and its send queue, and how many bytes it holds.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    capacity: usize,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for the call to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ / F_GETPIPE_SZ on a pipe we own; no pointers involved.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity: usize::try_from(capacity).unwrap_or(64 * 1024).max(4096),
        })
    }

    /// Bytes in the pipe.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Moves up to `max` bytes from `from`'s receive queue into the pipe. `Ok(0)` is the
    /// peer's EOF; `WouldBlock` means the queue is empty — or, with bytes held, possibly
    /// that the pipe is full (it fills by pages, not bytes): drain it before asking again.
    pub(crate) fn fill(&mut self, from: &Stream, max: usize) -> io::Result<usize> {
        let room = self.capacity.saturating_sub(self.held).min(max);
        let n = splice(from.raw_fd(), self.write.as_raw_fd(), room)?;
        self.held += n;
        Ok(n)
    }

    /// Moves what the pipe holds into `to`'s send queue, as much as it takes; `WouldBlock`
    /// means its send buffer is full.
    pub(crate) fn drain(&mut self, to: &Stream) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to.raw_fd(), self.held)?;
        self.held -= n;
        Ok(n)
    }

    /// Reads what the pipe still holds into `buf` (a copy, for the rare case of a full
    /// send buffer); returns how much.
    pub(crate) fn take_rest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.held.min(buf.len());
        let n = retry(|| {
            // SAFETY: `buf` is valid for writes of `want` bytes; the descriptor is our pipe.
            let rc = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as usize)
            }
        })?;
        self.held -= n;
        Ok(n)
    }
}

/// One non-blocking `splice` of up to `len` bytes; `Interrupted` is retried.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    retry(|| {
        // SAFETY: both descriptors are open for the call; null offsets mean "the
        // descriptor's own position", as pipes and sockets require.
        let rc = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    })
}
