//! A walk from a blocking echo server to the reactor (documentation only, no code).
//!
//! This chapter is for readers who know what a socket is from a textbook and want to see
//! what changes when one thread serves thousands of them. Each section names the file in
//! this crate where the idea is put to work.
//!
//! # 1. Sockets, addresses and families
//!
//! A socket is one end of a conversation, made for an *address family* and a *type*:
//!
//! | family | address looks like | where in echoloop |
//! |---|---|---|
//! | IPv4 (`AF_INET`) | `127.0.0.1:8881` | [`crate::net::Endpoint::Inet`] |
//! | IPv6 (`AF_INET6`) | `[::1]:8881` (brackets keep the port apart from the colons) | same |
//! | Unix (`AF_UNIX`), path | `/run/echo.sock`, a file in the file system | [`crate::net::UnixName::Path`] |
//! | Unix, Linux abstract | `@echo`, a name in a kernel namespace, never on disk | [`crate::net::UnixName::Abstract`] |
//!
//! The type is a *stream* (`SOCK_STREAM`: TCP, Unix stream) — an ordered byte stream with
//! no message boundaries — or a *datagram* (`SOCK_DGRAM`: UDP, Unix datagram) — separate
//! messages, each delivered whole or not at all, possibly out of order or twice.
//!
//! A host name such as `localhost` may stand for several addresses (IPv6 `::1` and IPv4
//! `127.0.0.1`); a careful client tries each in turn ([`crate::net::resolve_all`]).
//!
//! # 2. The two classic flows
//!
//! Connection-oriented (TCP): the server calls `socket`, `bind`, `listen`, then `accept`
//! in a loop; each `accept` returns a *new* socket for one client while the listening
//! socket keeps waiting for others. The client calls `socket`, `connect`, then `send` /
//! `recv`. Connectionless (UDP): the server calls `socket`, `bind`, then `recvfrom` in a
//! loop, answering each datagram with `sendto` to the address it came from; there is no
//! accept and no per-client socket.
//!
//! A blocking echo server is a few lines, and it runs:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?; // port 0: the OS picks a free one
//! let addr = listener.local_addr()?;
//! let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
//!     let mut s = TcpStream::connect(addr)?;
//!     s.write_all(b"hello")?;
//!     s.shutdown(std::net::Shutdown::Write)?; // "I will send no more"
//!     let mut echoed = Vec::new();
//!     s.read_to_end(&mut echoed)?; // a reply may come in pieces: read until EOF
//!     Ok(echoed)
//! });
//! let (mut conn, _peer) = listener.accept()?; // blocks until a client arrives
//! let mut buf = [0u8; 1024];
//! loop {
//!     let n = conn.read(&mut buf)?; // blocks until bytes arrive
//!     if n == 0 {
//!         break; // EOF: the client half-closed
//!     }
//!     conn.write_all(&buf[..n])?; // blocks until the kernel took everything
//! }
//! drop(conn);
//! assert_eq!(client.join().unwrap()?, b"hello");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! It serves one client at a time: while it waits in `read` for one, nobody else is
//! accepted. The textbook answer is a thread per client, or a pool of them; each thread
//! costs a stack and a scheduler entry, and a pool of twenty serves at most twenty.
//!
//! # 3. Blocking, non-blocking and timeouts
//!
//! A socket is in one of three modes. *Blocking*: calls wait as long as needed. *Timeout*
//! (`SO_RCVTIMEO`/`set_read_timeout`): they wait at most that long, then fail. *Non-blocking*:
//! they never wait; if nothing can be done now they fail at once with `EAGAIN`
//! (`io::ErrorKind::WouldBlock`) — not an error, only "not now". `EINTR`
//! (`io::ErrorKind::Interrupted`) means a signal arrived mid-call: try again. Both are
//! handled in one place, [`crate::net`].
//!
//! # 4. Readiness: one thread, many sockets
//!
//! With non-blocking sockets, one thread asks the kernel "which of these sockets can make
//! progress?" — `epoll` on Linux, wrapped by `mio::Poll` — and does only the calls that
//! will not wait. That loop is the *reactor*: [`crate::event_loop::EventLoop`].
//!
//! mio is **edge-triggered**: it reports that a socket *became* readable, once. If we read
//! only part of what is waiting and go back to `poll`, no new event comes for the rest.
//! So after an event the reactor reads until `WouldBlock`, and when it stops early on
//! purpose (so one busy client cannot starve the others, or because of backpressure) it
//! remembers "maybe readable" and comes back by itself. One system call can be saved:
//! `epoll(7)` notes that a read returning less than asked for on a stream socket means the
//! queue is drained (see `read_loop` in `src/event_loop/stream.rs`). That goes beyond
//! mio's own contract, which asks callers to read until `WouldBlock`; it is sound on Linux
//! because mio registers sockets edge-triggered (`EPOLLET`) and the kernel raises a new
//! edge for every arrival after our read, so bytes that come later are never missed.
//!
//! Blocking in `epoll_wait` has a price too: the thread sleeps, and the next packet must
//! wake it: about 30–50 µs each way, measured on the 2-vCPU virtual machine this project
//! is developed on (README, "Latency at the machine's limit"), when the sender runs on
//! another core — ten times the cost of the echo itself. A latency tool or a low-latency server instead keeps asking with a zero timeout
//! for a while after the last event (*busy polling*, `Config::busy_poll`, `--busy-poll`):
//! it spends a whole core to be awake when the next message comes. That pays when
//! connections are few and their messages come closer together than the window; a loop
//! that always has an event waiting never sleeps anyway and gains nothing.
//!
//! Spinning on `epoll_wait` still costs one system call per message more than a program
//! that spins on one socket's `recv`, as sockperf does: the poll that reports the message
//! comes before the read that takes it. So while it spins, the loop reads the few
//! connections that are talking right now (the *hot set*) directly, and a read that finds
//! nothing is the spin (read again at once, with only a clock read between, so that a
//! message arriving mid-spin waits for one system call, not for a turn's bookkeeping); it
//! polls only every few dozen of those reads, or when something
//! else is about (`src/event_loop/hot.rs`, with the bound on how long other sockets,
//! timers and threads can wait). The edges epoll still raises for bytes already read
//! cost one `WouldBlock` read per poll, not per message, and miss nothing, for the same
//! reason as the short-read shortcut above.
//!
//! **The step between.** `examples/mio_echo.rs` is that loop and nothing more, on mio
//! alone: register, poll, accept until `WouldBlock`, read until `WouldBlock`, keep what
//! the kernel did not take in a per-connection buffer, and ask for writability only while
//! that buffer holds bytes (the counterpart of Python's `selectors` echo server). Read it
//! after section 2's blocking server: the blocking server gave each client a thread, or
//! served one at a time; this loop serves all of them on one thread. What it still gets
//! wrong is what `EventLoop` adds, one problem each: a client that sends and never reads
//! grows that buffer without bound (*backpressure*, section 6); a client's FIN closes the
//! connection at once, dropping what it is still owed (*half-close*, section 7); a client
//! that goes silent stays forever (*deadlines and timers*, section 3); and there is no
//! TLS (section 9). `--trace` on both shows the difference line by line.
//!
//! # 5. Partial writes
//!
//! `send` on a non-blocking socket takes what fits in the kernel's send buffer and says
//! how much that was. The rest is ours to keep: each connection has a send buffer
//! (`SendBuf` in `src/sendbuf.rs`) holding only unsent bytes, flushed when the socket
//! reports writable again. The textbook `sendall` hides this loop by blocking; a reactor cannot block.
//!
//! **Zero-copy echo.** An echo that never looks at its bytes need not have them at all:
//! `read` copies them from the kernel into our buffer and `write` copies them back.
//! `splice(2)` moves data between a descriptor and a pipe by reference (the pipe takes
//! the received buffers' pages, and the send path attaches them to outgoing packets), so
//! socket → pipe → socket echoes without a copy. Each call costs more than a `read` or
//! `write` of the same bytes, so it pays only for large reads: the loop splices a plain
//! echo's connection while its reads are large and copies otherwise. When the peer's
//! window is full, what the pipe still holds is read into the connection's send buffer,
//! so the partial write is the ordinary one above and the pipe never carries one
//! connection's bytes into another's turn (`splice_echo` in `src/event_loop/stream.rs`,
//! `src/net/splice.rs`; figures in the README, "Zero-copy echo").
//!
//! # 6. Backpressure
//!
//! An echo server's output is its input. A client that sends but never reads would make
//! the server buffer without end. So above a high-water mark of unsent bytes the reactor
//! stops reading that connection; the kernel's receive buffer fills, TCP's window closes,
//! and the client's own `send` blocks — the pressure travels back to its source. Below a
//! low-water mark reading resumes ([`crate::event_loop::Config::high_water`]).
//!
//! # 7. Half-close
//!
//! Reading EOF (`read` returns 0) means "the peer will send no more", not "the peer is
//! gone": it may still be reading. An echo server finishes sending what it owes, then
//! calls `shutdown(Write)` to send its own FIN, then closes. Closing a socket that still
//! has unread input makes the kernel send a reset (RST) and discard output the peer has
//! not received; so a server that closes on its own initiative first half-closes, then
//! *lingers*: reads and drops until the peer's EOF (bounded by a timeout). See
//! [`crate::Ctx::close`].
//!
//! The other way round, a reset is sometimes the honest answer. When the loop gives up on
//! output it owed — [`crate::Ctx::abort`], an idle timeout or the end of the shutdown
//! grace with a peer that stopped reading — a FIN would tell the peer "that was all",
//! and it would take a cut stream for a whole one. So the loop closes those with
//! `SO_LINGER` set to zero, which makes the kernel send RST: the peer's next read fails
//! with `ECONNRESET`. (Unix stream sockets have no reset; their peer sees EOF.)
//!
//! # 8. Datagrams: no connection, no guarantee
//!
//! A UDP datagram may be lost, duplicated or reordered, and nothing tells the sender. A
//! datagram client therefore waits with a timeout and sends again; and since an answer to
//! an earlier try may arrive late, it checks that a reply belongs to the current request.
//! The receive buffer must hold the largest datagram (65,507 bytes over IPv4), or the rest
//! is silently cut off. Sending can block too when the socket's buffer is full, so the
//! reactor keeps a bounded queue per socket. A Unix datagram sender that never bound a
//! name cannot be answered at all.
//!
//! # 9. TLS: contexts, certificates, names
//!
//! TLS runs over a connected stream. The server holds a certificate chain and its private
//! key; the client holds trust anchors (a CA file, or the system store) and the name it
//! meant to reach. The handshake proves the server owns a certificate, signed by a trusted
//! CA, *for that name* — without the name check any certificate from any trusted CA would
//! do. A secure default context (TLS 1.2 and 1.3 only, verification on) is built in
//! [`crate::tls_config`]; there is deliberately no switch to skip verification.
//!
//! In a reactor, TLS is a state machine between two byte streams: ciphertext in,
//! plaintext out, and the session may want to write when the application has nothing to
//! say (handshake, session tickets, alerts, `close_notify`). Only accepted sockets are
//! wrapped, never the listener. See `src/tls.rs`.
//!
//! A handshake is also the one piece of a TLS server's work that costs real CPU: the
//! server's first reply carries a key exchange and a signature (about 175 µs with an
//! ECDSA P-256 key, close to a millisecond with RSA-2048). A loop that runs every ready
//! handshake as it comes makes every other connection wait behind all of them: with 500
//! clients handshaking at once, a plain echo on the same loop waited 100 ms and more. So
//! each turn of the loop spends at most a budget on handshake steps
//! (`Config::handshake_budget`, `serve --handshake-budget`, 250 µs by default); the rest
//! wait in line, first come first served, remembered as readable as with the read budget
//! of section 4, while other connections are served between. One RSA signature cannot be
//! split, though, and a client that answers at once would wait for one on every round
//! trip: so while other connections keep the loop busy, a turn of handshake steps is
//! followed by a rest as long (`Handshakes` in `src/event_loop/core.rs`).
//!
//! # 10. Running out of descriptors
//!
//! Every socket is a file descriptor and a process has a limit (`ulimit -n`). When it is
//! reached, `accept` fails with `EMFILE` while the connection stays queued in the kernel;
//! the listener stays readable, so a loop that simply retries spins at 100% CPU. The
//! reactor logs it, keeps serving existing connections, and tries `accept` again after a
//! short timer ([`crate::event_loop::Config::accept_backoff`]).
//!
//! # 11. Non-blocking connect
//!
//! A blocking `connect` waits for the handshake (SYN, SYN-ACK, ACK). A non-blocking one
//! returns at once with `EINPROGRESS`: the handshake goes on in the kernel, and the socket
//! becomes *writable* when it is over — however it went. Writable does not mean
//! connected: the result waits in the socket's pending error, read with
//! `getsockopt(SO_ERROR)` (`take_error`); and a wake-up can come early, so `getpeername`
//! (`peer_addr`) succeeding is the proof that it is really connected (mio#1523). A peer
//! that never answers leaves the connect pending for minutes, so a timeout is ours to set
//! ([`crate::ConnectOptions::timeout`]). A connect can also fail at once — no route, no
//! descriptors left: echoloop reports that the same way as a later failure, to the
//! handler's `on_close`, so a program handles failures in one place. See
//! `finish_connect` in `src/event_loop/stream.rs`.
//!
//! # 12. A connection as a state machine
//!
//! Put together, sections 4 to 11 are rules about one connection: connecting, the TLS
//! handshake, data both ways, a half-close from either side, a graceful close that
//! lingers, an abort, deadlines for each phase. Written as flags ("EOF seen", "closing",
//! "write side shut"...) they allow combinations that mean nothing; written as one state
//! (`Open`, `PeerShut`, `WriteShut`, `Closing`, `Lingering`...) they cannot. echoloop's
//! connection (`src/conn/`) is such a state machine, and it does no I/O at all: bytes,
//! EOF and "the kernel took n bytes" go in, and "tell the handler this", "write these
//! bytes", "send FIN now" come out. The reactor does the system calls; the tests drive two
//! connections through an in-memory pipe of any capacity, with a clock they move, and a
//! fuzzer throws random interleavings and corrupted TLS records at them.
//!
//! # 13. Many connections, one loop, other threads
//!
//! Real servers make connections talk to each other: a proxy pairs two, a chat server
//! sends each line to everyone. A handler names another connection by its
//! [`crate::ConnId`] and acts on it through [`crate::Ctx::conn`]; the id carries a
//! generation, so one kept after that connection closed is refused
//! ([`crate::ConnError::Gone`]) instead of reaching whoever took its slab slot. What the
//! action causes over there (that connection's `on_close`, say) runs after the current
//! callback returns: callbacks never nest. State every callback needs lives in the loop
//! ([`crate::EventLoop::with_state`], `ctx.state()`).
//!
//! Other threads may not touch the loop; they leave messages in a bounded channel and
//! wake it ([`crate::EventLoop::channel`]): a write to an `eventfd` that makes the poll
//! return. And a program with its own poller can wait on the loop's epoll descriptor like
//! on a socket ([`crate::event_loop`], "Nesting").
//!
//! # 14. Stopping properly
//!
//! The textbook server stops with Ctrl-C, dropping whatever was in flight. Here SIGINT and
//! SIGTERM arrive through the poll loop (a self-pipe, [`crate::EventLoop::handle_signals`]);
//! the server stops accepting and reading, sends everything owed, half-closes each
//! connection and waits — bounded — for the peers to finish. Another thread can do the
//! same through a [`crate::StopHandle`].
//!
//! # 15. Watch it happen
//!
//! Every point above is a decision the loop makes, and `echoloop serve --trace` prints
//! each one as it is made, naming the section that explains it (embedders get the same
//! events from [`crate::Config::trace`], or from the `log` crate at trace level). Start a
//! server, then provoke each concept from another terminal. The transcripts below are
//! real; a test (`tests/trace.rs`, `guide_transcripts_are_what_the_loop_prints`) runs each
//! scenario and checks that these lines, numbers aside, are printed in this order.
//!
//! ```text
//! $ echoloop serve --tcp 127.0.0.1:8881 --udp 127.0.0.1:8883 --trace --high-water 64k --low-water 16k
//! ```
//!
//! ### Watch it: an echo
//!
//! `python3 -c "import socket; s=socket.create_connection(('127.0.0.1',8881)); s.sendall(b'x'*64); s.recv(64)"`
//! sends 64 bytes and reads them back. One read takes all 64 and comes back short of the
//! 64 KiB buffer, so the queue is empty and no second read is made; the kernel takes the
//! whole echo at once.
//!
//! ```text
//! trace: #2.3 accepted on #0.1 [guide: readiness]
//! trace: #2.3 readable writable [guide: readiness]
//! trace: #2.3 read 64 bytes [guide: readiness]
//! trace: #2.3 short read (64 of 65536): queue drained, no trailing read [guide: readiness (short reads)]
//! trace: #2.3 wrote 64 of 64 [guide: partial writes]
//! ```
//!
//! ### Watch it: a half-close
//!
//! `python3 -c "import socket; s=socket.create_connection(('127.0.0.1',8881)); s.sendall(b'bye'); s.shutdown(socket.SHUT_WR); print(s.recv(10))"`:
//! the client's FIN is not "close now". The server echoes what came before it, then sends
//! its own FIN; the connection ends clean when both sides are done.
//!
//! ```text
//! trace: #2.3 read 3 bytes [guide: readiness]
//! trace: #2.3 wrote 3 of 3 [guide: partial writes]
//! trace: #2.3 eof (the peer's FIN) [guide: half-close]
//! trace: #2.3 shutdown(write): our FIN after all output [guide: half-close]
//! trace: #2.3 close: closed cleanly [guide: a connection as a state machine]
//! ```
//!
//! ### Watch it: a slow reader
//!
//! A client with a small receive buffer sends megabytes and reads nothing for a second.
//! The kernel takes only part of an echo, the rest waits in the send buffer; once 64 KiB
//! are owed the server stops reading (the client's sends then block in its own kernel),
//! and when the client reads again and the backlog falls to 16 KiB, reading resumes.
//!
//! ```text
//! trace: #1.2 wrote 63487 of 65536 (partial write: 2049 buffered, waiting for writable) [guide: partial writes]
//! trace: #1.2 paused reading (high water: 67585 bytes owed) [guide: backpressure]
//! trace: #1.2 resumed reading (low water) [guide: backpressure]
//! ```
//!
//! ### Watch it: a reset
//!
//! With `--idle-timeout 1s`, a client that sends a lot and then stops reading is cut off
//! while the server still owes it bytes: the close is a reset, so the client cannot take
//! the truncated echo for a whole one.
//!
//! ```text
//! trace: #1.2 close: idle timeout [guide: a connection as a state machine]
//! trace: #1.2 reset (SO_LINGER 0: owed output dropped, RST not FIN) [guide: a connection as a state machine]
//! ```
//!
//! ### Watch it: a datagram
//!
//! `python3 -c "import socket; u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'hello', ('127.0.0.1', 8883)); print(u.recv(100))"`:
//! no connection, no accept; one datagram in, one out, to whoever sent it.
//!
//! ```text
//! trace: #1.2 received 5 bytes from 127.0.0.1:33015 [guide: datagrams]
//! trace: #1.2 sent 5 bytes to 127.0.0.1:33015 [guide: datagrams]
//! ```
//!
//! ### Watch it: a TLS handshake
//!
//! `echoloop serve --tls 127.0.0.1:8443 --cert cert.pem --key key.pem --trace`, then
//! `echo hi | openssl s_client -connect 127.0.0.1:8443 -servername localhost -quiet`:
//! handshake records go back and forth through the same reads and writes as any bytes,
//! then the echo; at the end each side sends `close_notify` before its FIN, so neither can
//! mistake a cut connection for the end of the stream.
//!
//! ```text
//! trace: #1.2 accepted on #0.1 [guide: readiness]
//! trace: #1.2 handshake started [guide: TLS]
//! trace: #1.2 read 315 bytes [guide: readiness]
//! trace: #1.2 wrote 715 of 715 [guide: partial writes]
//! trace: #1.2 handshake done (TLSv1_3, TLS13_AES_256_GCM_SHA384, no ALPN) [guide: TLS]
//! trace: #1.2 close_notify received [guide: TLS]
//! trace: #1.2 close_notify sent [guide: TLS]
//! trace: #1.2 shutdown(write): our FIN after all output [guide: half-close]
//! ```
//!
//! # 16. From the blocking API to the reactor
//!
//! For readers coming from a chapter on Python's `socket` and `ssl` modules (or C's
//! blocking calls), where each familiar call went:
//!
//! | blocking API | here | why it changes |
//! |---|---|---|
//! | `settimeout(t)`, a timeout on each call | deadlines on the connection ([`crate::Config::idle_timeout`], `handshake_timeout`, `close_timeout`) and timers ([`crate::Ctx::set_timer`]); the loop sleeps in `epoll_wait` until the nearest one | no call blocks, so there is nothing to time out: a deadline is a timer that fires in the loop (section 3) |
//! | `sendall(data)` | [`crate::Ctx::send`]: the kernel takes what fits, the rest waits in the connection's send buffer; [`crate::Handler::on_drained`] says when all of it is gone | `sendall` loops, blocking, until the kernel took everything; a reactor cannot block (section 5) |
//! | `with socket:` / `close()` | dropping the loop or the connection; [`crate::Ctx::close`] (FIN after everything owed) or [`crate::Ctx::abort`] (a reset, owed bytes dropped) | a close must say whether what is owed still goes out: FIN when it does, RST when it does not, so the peer cannot take a cut stream for a whole one (section 7) |
//! | `shutdown(SHUT_WR)` | [`crate::Ctx::shutdown_write`]: FIN after everything queued; reading goes on | `SHUT_RD` is never used: it sends the peer nothing, so the peer keeps sending, and what the kernel does with those bytes differs between systems; to stop reading, pause ([`crate::Ctx::pause_reading`]) or close |
//! | `ssl.create_default_context()` / `wrap_socket(sock, server_side=True)` | [`crate::tls_config::server_config`] and [`crate::tls_config::client_config`]; a listener of kind [`crate::ListenKind::Tls`], a connect with [`crate::ConnectOptions::tls`] | the handshake is not a call but a series of reads and writes the loop drives like any other bytes (section 9) |
//! | `getaddrinfo(host, port)` | [`crate::net::resolve_all`] (every address, for a connect) and `resolve_one` (one, to bind) | a name may have several addresses, IPv6 and IPv4; a client tries them in order |
//! | the IPv6 address tuple `(host, port, flowinfo, scope_id)` | a `std::net::SocketAddrV6` (`flowinfo()`, `scope_id()`) inside [`crate::Endpoint::Inet`] | a link-local peer (`fe80::…`) is reachable only through one interface, which the scope id names |
//! | `accept()` in a loop, one thread per client | a listener in the loop: accepted connections each get a [`crate::Handler`] | one thread serves all of them; `accept` runs until `WouldBlock` on each readiness event (section 4) |
//! | `recvfrom` / `sendto` with `settimeout` and retries | [`crate::DatagramHandler`], [`crate::DgramCtx::send_to`], a timer per message for the retry | datagrams can be lost: the client decides when to give up (section 8) |
