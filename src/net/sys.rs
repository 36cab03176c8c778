//! System call helpers: retrying a call that a signal interrupted (`EINTR`), and telling
//! the errors that mean "out of resources" (descriptors, memory) from the rest.

use std::io;

/// Runs a system call again while it fails with `EINTR`: a signal interrupting a call is not
/// an error, only a reason to try again.
pub(crate) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// True for the accept errors that mean "out of descriptors or kernel memory": retrying at
/// once would fail the same way and spin the CPU.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
