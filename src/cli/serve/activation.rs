//! systemd socket activation: serving sockets someone else made.
//!
//! Teaches: a listening socket is just a descriptor, and descriptors survive `exec`.
//! systemd (or `systemd-socket-activate`) binds the sockets — port 7, say, which needs
//! privileges the server then never has — and starts the server with them open from
//! descriptor 3 on, saying so in `LISTEN_FDS` (how many), `LISTEN_PID` (for which process:
//! a variable inherited by a child is not meant for it) and `LISTEN_FDNAMES` (their
//! names). The server tells them apart by asking each socket itself: its type
//! (`SO_TYPE`: stream or datagram) and its address family (`getsockname`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use echoloop::net::{Adopted, check_adopted};

/// The first descriptor systemd passes (after stdin, stdout, stderr).
const FIRST_FD: RawFd = 3;

/// One socket handed over.
#[derive(Debug)]
pub(crate) struct Activated {
    /// `tcp`, `tls`, `udp`, `unix` or `unix-dgram`, as `serve`'s listening lines say.
    pub(crate) kind: &'static str,
    pub(crate) fd: OwnedFd,
}

/// The sockets systemd handed this process, if it did. A name of `tls` (from
/// `FileDescriptorName=tls` or `--fdname=tls`) makes a TCP socket a TLS listener.
pub(crate) fn take() -> Result<Vec<Activated>, String> {
    let Ok(fds) = std::env::var("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    match std::env::var("LISTEN_PID") {
        Ok(pid) if pid.trim() == std::process::id().to_string() => {}
        // Inherited from a parent that was activated: not ours. Said, so that a unit
        // whose sockets never arrive (a wrapper script in between) is not a mystery.
        other => {
            let pid = other.unwrap_or_else(|_| "(unset)".into());
            errln!(
                "echoloop: LISTEN_FDS is set, but LISTEN_PID={pid} is not this process ({}): \
                 its sockets are not ours and are left alone",
                std::process::id()
            );
            return Ok(Vec::new());
        }
    }
    // A count, not a descriptor: negative or absurd values are refused, not ignored.
    let n: RawFd = fds
        .trim()
        .parse::<u16>()
        .map(RawFd::from)
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number of descriptors"))?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n {
        let raw = FIRST_FD + i;
        // SAFETY: systemd's protocol says descriptors 3 .. 3+LISTEN_FDS are open sockets
        // handed to this process (LISTEN_PID checked above), and nothing else in the
        // process owns them: from here on we do.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = socket2::Socket::from(fd);
        let ty = sock
            .r#type()
            .map_err(|e| format!("descriptor {raw} (LISTEN_FDS): not a socket: {e}"))?;
        let stream = ty == socket2::Type::STREAM;
        // Served as the wrong thing, a socket fails on every event and spins the loop: a
        // connected socket (`Accept=yes`), a SOCK_SEQPACKET, a netlink socket, a TCP
        // socket that never called `listen` are refused here, by name.
        let want = if stream {
            Adopted::Listener
        } else {
            Adopted::Datagram
        };
        check_adopted(&sock, want).map_err(|e| format!("descriptor {raw} (LISTEN_FDS): {e}"))?;
        let addr = sock
            .local_addr()
            .map_err(|e| format!("descriptor {raw} (LISTEN_FDS): {e}"))?;
        let tls = names.get(i as usize).is_some_and(|n| n == "tls");
        if tls && (!stream || addr.is_unix()) {
            return Err(format!(
                "descriptor {raw} (LISTEN_FDS) is named `tls`, but TLS is served on TCP \
                 listeners only, and it is a {} socket",
                if addr.is_unix() { "Unix" } else { "UDP" }
            ));
        }
        let kind = match (addr.is_unix(), stream) {
            (true, true) => "unix",
            (true, false) => "unix-dgram",
            (false, true) if tls => "tls",
            (false, true) => "tcp",
            (false, false) => "udp",
        };
        out.push(Activated {
            kind,
            fd: sock.into(),
        });
    }
    Ok(out)
}
