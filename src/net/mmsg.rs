//! Many datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)` (Linux).
//!
//! Teaches: where a reactor's time goes. Serving a small datagram costs one `recvfrom` and
//! one `sendto`; most of that is the kernel's UDP work, but every call also pays a fixed
//! price to enter and leave the kernel. When several datagrams wait in the socket's queue
//! (many clients, one socket), one `recvmmsg` takes them all and one `sendmmsg` sends all
//! the replies. Because `recvmmsg` on a non-blocking socket stops at the first
//! would-block, receiving fewer than asked proves the queue empty: no extra call just to
//! hear `EAGAIN`. The batch calls are not free either — the kernel copies and checks each
//! message header — so for a queue holding one datagram they cost more than `recvfrom`;
//! the reactor uses them only when the queue runs deep (`event_loop::datagram`).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per batch.
pub(crate) const BATCH: usize = 16;
/// Each slot holds the largest UDP datagram (65,507 bytes over IPv4, 65,527 over IPv6), so
/// nothing is ever truncated.
const SLOT: usize = 65_536;

/// Buffers for one `recvmmsg`: BATCH slots and the sender of each.
pub(crate) struct RecvBatch {
    /// BATCH × SLOT bytes. Zeroed with `calloc`, so pages become resident only when the
    /// kernel writes a datagram into them: a large slot costs memory only when used.
    buf: Box<[u8]>,
    lens: [usize; BATCH],
    /// `None` for a sender address that is neither IPv4 nor IPv6 (never seen on UDP).
    from: [Option<SocketAddr>; BATCH],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").finish_non_exhaustive()
    }
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            buf: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            from: [None; BATCH],
        }
    }

    /// Datagram `i` of the last batch and its sender.
    pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * SLOT;
        (&self.buf[start..start + self.lens[i]], self.from[i])
    }
}

/// Receives up to [`BATCH`] datagrams. `Err(WouldBlock)` when none is waiting.
pub(crate) fn recv_batch(fd: RawFd, b: &mut RecvBatch) -> io::Result<usize> {
    // SAFETY: all-zero bytes are a valid value for these plain C structs (integers and
    // null pointers).
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let base = b.buf.as_mut_ptr();
    for i in 0..BATCH {
        // SAFETY: i * SLOT + SLOT <= buf.len(), so the pointer stays inside the buffer.
        iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
        iovs[i].iov_len = SLOT;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // EINTR is retried by `retry`; EAGAIN comes back as `WouldBlock`.
    let n = super::sys::retry(|| {
        // SAFETY: every header points at a live iovec over our buffer (SLOT bytes each) and
        // a live sockaddr_storage with its true size; all outlive the call, and the kernel
        // writes at most those sizes. No timeout pointer is passed.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    })?;
    for i in 0..n {
        b.lens[i] = hdrs[i].msg_len as usize;
        b.from[i] = to_socket_addr(&names[i]);
    }
    Ok(n)
}

/// Decodes an IPv4 or IPv6 sender address.
fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller
            // than sockaddr_storage and has no stricter alignment.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

/// Replies gathered while a receive batch is handled, sent together afterwards.
#[derive(Default)]
pub(crate) struct SendBatch {
    data: Vec<u8>,
    items: Vec<(usize, usize, SockAddr)>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("len", &self.items.len())
            .finish()
    }
}

impl SendBatch {
    /// Makes room for a whole batch of typical replies (up to 2 KiB each) at once, with
    /// the receive buffers: otherwise the first batch the loop ever takes — which may come
    /// long after start, whenever a queue first runs deep — would allocate mid-stream.
    pub(crate) fn reserve_batch(&mut self) {
        self.items.reserve(BATCH);
        self.data.reserve(BATCH * 2048);
    }

    pub(crate) fn push(&mut self, data: &[u8], to: SocketAddr) {
        let start = self.data.len();
        self.data.extend_from_slice(data);
        self.items.push((start, data.len(), SockAddr::from(to)));
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Datagram `i` and its destination.
    pub(crate) fn get(&self, i: usize) -> (&[u8], &SockAddr) {
        let (start, len, ref to) = self.items[i];
        (&self.data[start..start + len], to)
    }

    /// Empties the batch, keeping its memory for the next one.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }
}

/// Sends datagrams `from..` of the batch, up to [`BATCH`] per call. Returns how many the
/// kernel took; fewer than asked means the next one failed (call again to learn why).
pub(crate) fn send_batch(fd: RawFd, b: &SendBatch, from: usize) -> io::Result<usize> {
    debug_assert!(from < b.len(), "nothing left to send");
    let count = b.len().saturating_sub(from).min(BATCH);
    // SAFETY: all-zero bytes are a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for i in 0..count {
        let (data, to) = b.get(from + i);
        iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = data.len();
        hdrs[i].msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = to.len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    super::sys::retry(|| {
        // SAFETY: the first `count` headers point at live slices of the batch's data and at
        // live socket addresses with their true lengths; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    })
}
