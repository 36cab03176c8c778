//! The baseline broker (iii): tokio on a current_thread runtime, one core like echoloop.
//!
//! One task reads the publisher and appends each read's whole messages, as one shared
//! chunk, to a hub; one task per subscriber writes every chunk it has not written yet
//! with `write_all`, so a subscriber costs one write per publisher read, and a chunk is
//! copied once however many subscribers there are. The hub keeps the chunks until the
//! last subscriber has written them, and the publisher is not read while it holds more
//! than `CAP` bytes: a slow subscriber holds the publisher up instead of growing memory.
//! (The hub is written here because the dev-dependency tokio has no `sync` feature, so no
//! broadcast channel; on one thread it needs no lock, just `Rc<RefCell<_>>` and wakers.)

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::MSG;

/// Bytes published but not yet written to every subscriber, past which the publisher
/// waits.
const CAP: usize = 1024 * 1024;

/// The publisher reads into a buffer this large.
const READ: usize = 64 * 1024;

pub(super) fn serve(addr: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // A LocalSet: the tasks share the hub through an Rc, which never leaves this thread.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, accept(addr));
}

async fn accept(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    println!("listening tcp {}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    let hub = Rc::new(RefCell::new(Hub::default()));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let hub = hub.clone();
        tokio::task::spawn_local(async move {
            match sock.read_u8().await {
                Ok(b'S') => subscriber(sock, hub).await,
                Ok(b'P') => publisher(sock, hub).await,
                _ => {}
            }
        });
    }
}

async fn publisher(mut sock: TcpStream, hub: Rc<RefCell<Hub>>) {
    let mut buf = vec![0u8; READ];
    // Bytes of an unfinished message at the start of `buf`.
    let mut have = 0;
    loop {
        poll_fn(|cx| hub.borrow_mut().poll_room(cx)).await;
        match sock.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
        let whole = have / MSG * MSG;
        if whole > 0 {
            hub.borrow_mut().publish(Rc::from(&buf[..whole]));
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
    }
}

async fn subscriber(mut sock: TcpStream, hub: Rc<RefCell<Hub>>) {
    let slot = hub.borrow_mut().join();
    // Registered: the acknowledgement tells the generator it will get every message.
    if sock.write_all(b"A").await.is_ok() {
        loop {
            let chunk = poll_fn(|cx| hub.borrow_mut().poll_chunk(slot, cx)).await;
            if sock.write_all(&chunk).await.is_err() {
                break;
            }
            hub.borrow_mut().advance(slot);
        }
    }
    hub.borrow_mut().leave(slot);
}

/// The chunks published, from the oldest some subscriber still has to write.
#[derive(Default)]
struct Hub {
    chunks: VecDeque<Rc<[u8]>>,
    /// The number of the chunk at the front of `chunks` (chunks are numbered from 0).
    first: u64,
    /// Bytes in `chunks`.
    held: usize,
    /// One slot per subscriber; a slot is free again once its subscriber has left.
    readers: Vec<Option<Reader>>,
    /// The publisher, waiting for room.
    publisher: Option<Waker>,
}

struct Reader {
    /// The number of the next chunk this subscriber writes.
    next: u64,
    /// Its task, waiting for a chunk.
    waker: Option<Waker>,
}

impl Hub {
    fn end(&self) -> u64 {
        self.first + self.chunks.len() as u64
    }

    /// A new subscriber, which gets the chunks published from now on.
    fn join(&mut self) -> usize {
        let reader = Some(Reader {
            next: self.end(),
            waker: None,
        });
        match self.readers.iter().position(Option::is_none) {
            Some(slot) => {
                self.readers[slot] = reader;
                slot
            }
            None => {
                self.readers.push(reader);
                self.readers.len() - 1
            }
        }
    }

    fn leave(&mut self, slot: usize) {
        self.readers[slot] = None;
        self.trim();
    }

    fn publish(&mut self, chunk: Rc<[u8]>) {
        self.held += chunk.len();
        self.chunks.push_back(chunk);
        for reader in self.readers.iter_mut().flatten() {
            if let Some(w) = reader.waker.take() {
                w.wake();
            }
        }
    }

    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.held < CAP {
            return Poll::Ready(());
        }
        self.publisher = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_chunk(&mut self, slot: usize, cx: &mut Context<'_>) -> Poll<Rc<[u8]>> {
        let (first, end) = (self.first, self.end());
        // Invariant: a slot is only used by its own task, between join and leave.
        let reader = self.readers[slot].as_mut().expect("joined");
        if reader.next < end {
            // Invariant: chunks before the lowest `next` are the only ones trimmed.
            return Poll::Ready(self.chunks[(reader.next - first) as usize].clone());
        }
        reader.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The subscriber in `slot` has written its next chunk.
    fn advance(&mut self, slot: usize) {
        let Some(reader) = self.readers[slot].as_mut() else {
            return;
        };
        reader.next += 1;
        // Only the subscribers furthest behind, at `first`, hold chunks back (trimming
        // keeps `first` at the lowest `next`): the others need not look at all 100.
        if reader.next == self.first + 1 {
            self.trim();
        }
    }

    /// Drops the chunks every subscriber has written, and wakes the publisher if that
    /// made room.
    fn trim(&mut self) {
        let end = self.end();
        let lowest = self
            .readers
            .iter()
            .flatten()
            .map(|r| r.next)
            .min()
            .unwrap_or(end);
        while self.first < lowest {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.held -= chunk.len();
            self.first += 1;
        }
        if self.held < CAP {
            if let Some(w) = self.publisher.take() {
                w.wake();
            }
        }
    }
}
