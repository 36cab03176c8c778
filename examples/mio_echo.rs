//! cargo run --example mio_echo -- 127.0.0.1:8890 [--trace]
//!
//! The step between a blocking echo server and `EventLoop`: a bare readiness loop on mio
//! alone, the counterpart of Python's `selectors` echo server. One thread, one poller;
//! every socket non-blocking; each readiness event handled until `WouldBlock`, because
//! mio's readiness is edge-triggered (an event says "something changed", not "something
//! is there", so whatever is left unread is never announced again). A write the kernel
//! takes only part of keeps the rest in a per-connection buffer, and write interest is
//! turned on until it is gone.
//!
//! What it leaves out is what `EventLoop` adds, each for a problem this loop has (the
//! guide, section 4): a peer that sends and never reads grows `pending` without bound
//! (backpressure); a peer's FIN closes the connection at once, dropping what is owed
//! (half-close); a silent peer stays forever (deadlines and timers); and no TLS.
//! `--trace` prints each decision, as `echoloop serve --trace` does.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(0);

/// One client: its socket and the echo bytes the kernel has not taken yet.
struct Client {
    sock: TcpStream,
    pending: Vec<u8>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let trace = args.iter().any(|a| a == "--trace");
    let Some(addr) = args.iter().find(|a| *a != "--trace") else {
        eprintln!("mio_echo: usage: mio_echo LISTEN_ADDR [--trace]");
        return ExitCode::FAILURE;
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mio_echo: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(addr, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mio_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: SocketAddr, trace: bool) -> io::Result<()> {
    let say = |what: String| {
        if trace {
            eprintln!("trace: {what}");
        }
    };
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening tcp {}", listener.local_addr()?);
    let (mut clients, mut next) = (HashMap::<Token, Client>::new(), 1);
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            // A signal interrupted the wait: nothing happened, wait again.
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events {
            if ev.token() == LISTENER {
                // Accept until WouldBlock: several clients may be queued behind one event.
                loop {
                    match listener.accept() {
                        Ok((mut sock, peer)) => {
                            let t = Token(next);
                            next += 1;
                            poll.registry().register(&mut sock, t, Interest::READABLE)?;
                            say(format!("#{} accepted from {peer}", t.0));
                            let pending = Vec::new();
                            clients.insert(t, Client { sock, pending });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // EMFILE and friends: this toy gives up on this round.
                        Err(e) => {
                            say(format!("accept: {e}"));
                            break;
                        }
                    }
                }
                continue;
            }
            let t = ev.token();
            let Some(c) = clients.get_mut(&t) else {
                continue;
            };
            let mut done = false;
            if ev.is_readable() {
                // Read until WouldBlock; echo each piece straight back.
                loop {
                    match c.sock.read(&mut buf) {
                        Ok(0) => {
                            say(format!(
                                "#{} eof: closing ({} bytes unsent)",
                                t.0,
                                c.pending.len()
                            ));
                            done = true;
                            break;
                        }
                        Ok(n) => {
                            say(format!("#{} read {n} bytes", t.0));
                            c.pending.extend_from_slice(&buf[..n]);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            done = true;
                            break;
                        }
                    }
                }
            }
            if !done && !c.pending.is_empty() {
                // Write what the kernel takes; keep the rest for the next writable event.
                let before = c.pending.len();
                match c.sock.write(&c.pending) {
                    Ok(n) => {
                        c.pending.drain(..n);
                        say(format!("#{} wrote {n} of {before}", t.0));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => done = true,
                }
                // Write interest only while bytes wait: otherwise every turn would report
                // a writable socket with nothing to write.
                let want = if c.pending.is_empty() {
                    Interest::READABLE
                } else {
                    say(format!(
                        "#{} partial write: {} buffered, write interest on",
                        t.0,
                        c.pending.len()
                    ));
                    Interest::READABLE | Interest::WRITABLE
                };
                poll.registry().reregister(&mut c.sock, t, want)?;
            }
            if done {
                if let Some(mut c) = clients.remove(&t) {
                    poll.registry().deregister(&mut c.sock)?;
                    say(format!("#{} close", t.0));
                }
            }
        }
    }
}
