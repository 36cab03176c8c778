//! The load: 100 subscribers and one publisher, all on one thread, on a bare mio loop.
//!
//! Message `n` is `n` as 8 little-endian bytes, eight times over, so a subscriber checks
//! every byte it receives: a message lost, repeated, reordered, torn or corrupted by the
//! broker fails the run.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::{MSG, SUBSCRIBERS};

/// Messages per publisher write (16 KiB).
const BATCH: u64 = 256;
/// At most this many messages are published but not yet received by every subscriber
/// (256 KiB each): the publisher pipelines, but the broker's buffers stay bounded.
const WINDOW: u64 = 4096;
/// How long the setup and, after publishing stops, the last deliveries may take before
/// the run counts as failed.
const PATIENCE: Duration = Duration::from_secs(10);
/// The publisher's token; subscriber `i` has token `i`.
const PUBLISHER: Token = Token(SUBSCRIBERS);

/// What a run did.
pub(super) struct Outcome {
    /// Messages published, each received and verified by every subscriber.
    pub(super) messages: u64,
    /// From the first publish to the last delivery.
    pub(super) elapsed: Duration,
}

struct Subscriber {
    sock: TcpStream,
    /// The sequence number of the message it expects next.
    next: u64,
    /// The start of a message whose rest has not arrived yet.
    carry: [u8; MSG],
    carry_len: usize,
}

pub(super) struct Generator {
    poll: Poll,
    subscribers: Vec<Subscriber>,
    publisher: TcpStream,
}

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Generator {
    /// Connects the subscribers, each acknowledged by the broker (so it will get every
    /// message), then the publisher.
    pub(super) fn connect(addr: SocketAddr) -> Result<Generator, String> {
        let poll = Poll::new().map_err(fail("poll"))?;
        let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
        for i in 0..SUBSCRIBERS {
            let what = format!("subscriber {i}");
            let mut s = StdStream::connect_timeout(&addr, PATIENCE).map_err(fail(&what))?;
            s.set_read_timeout(Some(PATIENCE)).map_err(fail(&what))?;
            s.write_all(b"S").map_err(fail(&what))?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).map_err(fail(&what))?;
            if ack != *b"A" {
                return Err(format!("{what}: acknowledged with {ack:?}"));
            }
            s.set_nonblocking(true).map_err(fail(&what))?;
            let mut sock = TcpStream::from_std(s);
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE)
                .map_err(fail(&what))?;
            subscribers.push(Subscriber {
                sock,
                next: 0,
                carry: [0; MSG],
                carry_len: 0,
            });
        }
        let mut p = StdStream::connect_timeout(&addr, PATIENCE).map_err(fail("publisher"))?;
        p.set_nodelay(true).map_err(fail("publisher"))?;
        p.write_all(b"P").map_err(fail("publisher"))?;
        p.set_nonblocking(true).map_err(fail("publisher"))?;
        let mut publisher = TcpStream::from_std(p);
        poll.registry()
            .register(&mut publisher, PUBLISHER, Interest::WRITABLE)
            .map_err(fail("publisher"))?;
        Ok(Generator {
            poll,
            subscribers,
            publisher,
        })
    }

    /// Publishes for `secs` seconds, then waits until every subscriber has every message.
    pub(super) fn run(&mut self, secs: f64) -> Result<Outcome, String> {
        let start = Instant::now();
        let stop_at = start + Duration::from_secs_f64(secs);
        let give_up = stop_at + PATIENCE;
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Outbound {
            batch: Vec::with_capacity(BATCH as usize * MSG),
            written: 0,
            published: 0,
            publishing: true,
        };
        loop {
            let now = Instant::now();
            out.publishing &= now < stop_at;
            // Every turn, not only on a writable event: room in the window comes from
            // the subscribers' reads, not from the publisher's socket.
            self.publish(&mut out)?;
            if !out.publishing
                && out.written == out.batch.len()
                && self.subscribers.iter().all(|s| s.next == out.published)
            {
                return Ok(Outcome {
                    messages: out.published,
                    elapsed: start.elapsed(),
                });
            }
            if now >= give_up {
                let behind = self.subscribers.iter().filter(|s| s.next < out.published);
                return Err(format!(
                    "{} subscribers still missing messages {PATIENCE:?} after publishing stopped",
                    behind.count()
                ));
            }
            let wake = if out.publishing { stop_at } else { give_up };
            match self.poll.poll(&mut events, Some(wake - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            for ev in events.iter() {
                if let Some(s) = self.subscribers.get_mut(ev.token().0) {
                    s.receive(ev.token().0, &mut buf)?;
                }
            }
        }
    }

    /// Writes until the socket is full or the window is, handing out new batches while
    /// publishing. A batch begun is always finished, so every message published is whole.
    fn publish(&mut self, out: &mut Outbound) -> Result<(), String> {
        loop {
            if out.written == out.batch.len() {
                let lowest = self.subscribers.iter().map(|s| s.next).min().unwrap_or(0);
                if !out.publishing || out.published + BATCH - lowest > WINDOW {
                    return Ok(());
                }
                out.batch.clear();
                for seq in out.published..out.published + BATCH {
                    for _ in 0..MSG / 8 {
                        out.batch.extend_from_slice(&seq.to_le_bytes());
                    }
                }
                out.published += BATCH;
                out.written = 0;
            }
            match self.publisher.write(&out.batch[out.written..]) {
                Ok(0) => return Err("publisher: the broker stopped reading".into()),
                Ok(n) => out.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("publisher: {e}")),
            }
        }
    }
}

/// The publisher's side of a run.
struct Outbound {
    /// The batch being written, and how much of it is.
    batch: Vec<u8>,
    written: usize,
    /// Messages handed out so far (the next sequence number).
    published: u64,
    /// False once the run's time is up: no new batches.
    publishing: bool,
}

impl Subscriber {
    /// Reads until the socket is empty (readiness is edge-triggered), checking every
    /// message.
    fn receive(&mut self, i: usize, buf: &mut [u8]) -> Result<(), String> {
        loop {
            match self.sock.read(buf) {
                Ok(0) => return Err(format!("subscriber {i}: the broker closed")),
                Ok(n) => self.check(i, &buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("subscriber {i}: {e}")),
            }
        }
    }

    fn check(&mut self, i: usize, mut data: &[u8]) -> Result<(), String> {
        if self.carry_len > 0 {
            let take = (MSG - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < MSG {
                return Ok(());
            }
            let msg = self.carry;
            self.carry_len = 0;
            self.verify(i, &msg)?;
        }
        let mut messages = data.chunks_exact(MSG);
        for msg in &mut messages {
            self.verify(i, msg)?;
        }
        let rest = messages.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        Ok(())
    }

    fn verify(&mut self, i: usize, msg: &[u8]) -> Result<(), String> {
        let want = self.next.to_le_bytes();
        if msg.chunks_exact(8).any(|w| w != want) {
            return Err(format!(
                "subscriber {i}: expected message {}, got {msg:02x?}",
                self.next
            ));
        }
        self.next += 1;
        Ok(())
    }
}
