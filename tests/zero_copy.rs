//! Zero-copy echo (issue 23): a plain echo's large reads go socket → pipe → socket with
//! `splice(2)`. Everything else must behave exactly as with copies: every byte back in
//! order, backpressure on a peer that does not read, the FIN after the last byte owed,
//! the graceful stop delivering what was read, and the statistics.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use echoloop::trace::{TraceEvent, Tracer};
use echoloop::{Config, Echo, Endpoint, EventLoop, ListenKind, Stats, StopHandle};

/// An echo loop on its own thread; its trace lines are kept, and its statistics come
/// back when it stops.
struct Server {
    addr: SocketAddr,
    stop: StopHandle,
    lines: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<Stats>,
}

fn server(zero_copy: bool) -> Server {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&lines);
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut config = Config::default();
        config.zero_copy_echo = zero_copy;
        config.trace = Some(Tracer::new(move |ev: &TraceEvent<'_>| {
            // Only what these tests look for: a multi-megabyte echo traces thousands of
            // reads.
            let line = ev.to_string();
            if line.contains("spliced") || line.contains("paused reading") {
                keep.lock().unwrap().push(line);
            }
        }));
        let mut el = EventLoop::new(config).unwrap();
        let any = Endpoint::Inet("127.0.0.1:0".parse().unwrap());
        let bound = el.listen(&any, ListenKind::Tcp, || Box::new(Echo)).unwrap();
        tx.send((bound.addr, el.stop_handle())).unwrap();
        while el.run_once(Some(Duration::from_millis(100))).unwrap() {}
        el.stats()
    });
    let (addr, stop) = rx.recv_timeout(common::DEADLINE).unwrap();
    let Endpoint::Inet(addr) = addr else {
        panic!("not an IP listener")
    };
    Server {
        addr,
        stop,
        lines,
        thread,
    }
}

impl Server {
    fn count(&self, what: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(what)).count()
    }

    fn finish(self) -> Stats {
        self.stop.stop(Duration::from_secs(5));
        self.thread.join().unwrap()
    }
}

/// `len` bytes that make any misplaced byte visible.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(common::DEADLINE)).unwrap();
    c
}

/// Writes `data` in 64 KiB pieces from a thread, then does `end` to the stream (a
/// half-close, or nothing).
fn writer<W: Write + Send + 'static>(
    mut w: W,
    data: Vec<u8>,
    end: impl FnOnce(&mut W) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for piece in data.chunks(64 * 1024) {
            w.write_all(piece).unwrap();
        }
        end(&mut w);
    })
}

fn half_close(w: &mut TcpStream) {
    w.shutdown(Shutdown::Write).unwrap();
}

/// The echo is byte for byte what was sent (without printing megabytes when it is not).
fn assert_same_echo(back: &[u8], data: &[u8]) {
    assert!(
        back == data,
        "echo differs ({} of {} bytes)",
        back.len(),
        data.len()
    );
}

/// Sends `data` from a thread (then half-closes) while this thread reads the echo to EOF.
fn echo_all(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    let writer = writer(c.try_clone().unwrap(), data.to_vec(), half_close);
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

#[test]
fn zero_copy_echo_splices_bulk_and_copies_small_messages() {
    let s = server(true);
    let data = pattern(8 << 20);
    let back = echo_all(s.addr, &data);
    assert_same_echo(&back, &data);
    assert!(
        s.count("spliced") > 0,
        "8 MiB in 64 KiB writes was not spliced"
    );

    // One connection, bulk then small: it goes back to copying after a few messages.
    let mut c = connect(s.addr);
    let bulk = pattern(4 << 20);
    let writer = writer(c.try_clone().unwrap(), bulk.clone(), |_| {});
    let mut back = vec![0u8; bulk.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == bulk, "bulk echo differs");
    let mut buf = [0u8; 64];
    let mut ping = |i: u8| {
        c.write_all(&[i; 64]).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [i; 64]);
    };
    // A few calls that move little switch it back. How many pings that takes depends on
    // timing (one call goes on reading while the peer keeps answering at once), so ping
    // until 10 in a row were copied, within 100.
    let (mut i, mut quiet) = (0u8, 0);
    while quiet < 10 {
        assert!(i < 100, "64-byte messages still spliced after {i}");
        let before = s.count("spliced");
        ping(i);
        i += 1;
        quiet = if s.count("spliced") == before {
            quiet + 1
        } else {
            0
        };
    }
    let spliced = s.count("spliced");
    for i in 100..200u8 {
        ping(i);
    }
    assert_eq!(
        s.count("spliced"),
        spliced,
        "64-byte messages spliced again"
    );
    drop(c);
    let stats = s.finish();
    assert_eq!(stats.bytes_in, stats.bytes_out, "{stats:?}");
    assert_eq!(
        stats.bytes_in,
        (12 << 20) + (u64::from(i) + 100) * 64,
        "{stats:?}"
    );
}

#[test]
fn zero_copy_echo_can_be_switched_off() {
    let s = server(false);
    let data = pattern(2 << 20);
    assert!(echo_all(s.addr, &data) == data);
    assert_eq!(s.count("spliced"), 0);
    s.finish();
}

#[test]
fn zero_copy_echo_keeps_backpressure_and_half_close_for_a_slow_reader() {
    let s = server(true);
    let data = pattern(16 << 20);
    let mut c = connect(s.addr);
    // Everything is sent before anything is read: the server must stop reading when its
    // peer stops, not hold megabytes for it.
    let writer = writer(c.try_clone().unwrap(), data.clone(), half_close);
    // Read only once the server has paused (bounded by the deadline, not a sleep).
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while s.count("paused reading") == 0 {
        assert!(std::time::Instant::now() < deadline, "never paused reading");
        std::thread::yield_now();
    }
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_same_echo(&back, &data);
    assert!(s.count("spliced") > 0, "never spliced");
    s.finish();
}

#[test]
fn zero_copy_echo_graceful_stop_delivers_what_was_read() {
    let s = server(true);
    let data = pattern(4 << 20);
    let mut c = connect(s.addr);
    let mut w = c.try_clone().unwrap();
    let send = data.clone();
    let writer = std::thread::spawn(move || {
        for piece in send.chunks(64 * 1024) {
            // The server stops reading once it is stopping: the rest may be refused.
            if w.write_all(piece).is_err() {
                break;
            }
        }
    });
    // Some echo first, so bytes are in flight when the stop comes.
    let mut back = vec![0u8; 256 * 1024];
    c.read_exact(&mut back).unwrap();
    s.stop.stop(Duration::from_secs(10));
    c.read_to_end(&mut back).unwrap();
    let stats = s.thread.join().unwrap();
    let _ = writer.join();
    assert!(back.len() >= 256 * 1024);
    assert!(
        back[..] == data[..back.len()],
        "the echo is not a prefix of what was sent"
    );
    assert_eq!(
        stats.bytes_out,
        back.len() as u64,
        "every byte counted out was delivered, and only those: {stats:?}"
    );
    assert!(
        stats.bytes_in >= stats.bytes_out,
        "more out than in: {stats:?}"
    );
}

#[test]
fn zero_copy_echo_over_a_unix_stream() {
    use std::os::unix::net::UnixStream;
    let path = common::temp_sock("zero-copy");
    let lines = Arc::new(Mutex::new(0usize));
    let keep = Arc::clone(&lines);
    let (tx, rx) = mpsc::channel();
    let listen_at = path.clone();
    let thread = std::thread::spawn(move || {
        let mut config = Config::default();
        config.trace = Some(Tracer::new(move |ev: &TraceEvent<'_>| {
            if matches!(ev, TraceEvent::Spliced { .. }) {
                *keep.lock().unwrap() += 1;
            }
        }));
        let mut el = EventLoop::new(config).unwrap();
        let at = Endpoint::Unix(echoloop::UnixName::parse(listen_at.to_str().unwrap()).unwrap());
        el.listen(&at, ListenKind::Unix, || Box::new(Echo)).unwrap();
        tx.send(el.stop_handle()).unwrap();
        while el.run_once(Some(Duration::from_millis(100))).unwrap() {}
    });
    let stop = rx.recv_timeout(common::DEADLINE).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let data = pattern(4 << 20);
    let writer = writer(c.try_clone().unwrap(), data.clone(), |w| {
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    stop.stop(Duration::from_secs(1));
    thread.join().unwrap();
    assert_same_echo(&back, &data);
    assert!(
        *lines.lock().unwrap() > 0,
        "a Unix stream's bulk was not spliced"
    );
}
