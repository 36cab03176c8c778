//! Standard error that never blocks the reactor.
//!
//! Teaches: a write to a pipe or terminal blocks when nobody reads it (a stopped
//! `journalctl`, a `2>pipe` whose reader is slow, a terminal scrolled with Ctrl-S), and a
//! log line written from the loop's thread then stops every connection with it: one
//! refused connection per line, a pipe read at 5 KB/s, and echo waits seconds. Setting
//! `O_NONBLOCK` on descriptor 2 is no cure: the flag belongs to the open file description,
//! shared with the shell and every other process writing there, which would then see
//! `EAGAIN` where they never expected it.
//!
//! So the command line's log lines and statistics lines go through an outlet: the loop's
//! thread only appends a finished line to a bounded queue (256 KiB); a
//! thread of its own writes the queue to stderr, several lines per `write` when they have
//! piled up, never a line in pieces. When the queue is full, a line is dropped and counted,
//! and the writer says how many were lost once it can write again. At exit,
//! [`drain`] waits a bounded time for what is queued.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of lines waiting at most; past it, lines are dropped (and counted).
pub(crate) const MAX_QUEUED: usize = 256 * 1024;

/// Lines joined into one `write` at most, when several wait.
const MAX_BATCH: usize = 64 * 1024;

/// How long [`drain`] waits at exit for a reader that does not read.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The queue between the threads that log and the one that writes.
pub(crate) struct Outlet {
    queue: Mutex<Queue>,
    /// Signalled when lines arrive (for the writer) and when the queue empties (for
    /// [`drain`]).
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    /// Lines dropped since the writer last said so.
    dropped: u64,
    /// Lines dropped since the start (for tests and reports).
    dropped_total: u64,
    /// The writer holds lines it took and has not finished writing.
    writing: bool,
}

impl Outlet {
    fn new() -> Outlet {
        Outlet {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }
    }

    /// Queues `text` as it is (a line ends with its newline); never waits for the writer.
    pub(crate) fn text(&self, text: String) {
        // A poisoned lock means a thread panicked while queueing: the queue itself is
        // still consistent (every change to it is one push or one take).
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.bytes + text.len() > MAX_QUEUED {
            q.dropped += 1;
            q.dropped_total += 1;
            return;
        }
        q.bytes += text.len();
        q.lines.push_back(text);
        drop(q);
        self.changed.notify_all();
    }

    /// The writer's loop: takes what waits, writes it to `out`, forever.
    fn write_forever(&self, out: &mut dyn Write) {
        let mut batch = String::with_capacity(MAX_BATCH);
        loop {
            let dropped = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while q.lines.is_empty() && q.dropped == 0 {
                    q.writing = false;
                    self.changed.notify_all();
                    q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                q.writing = true;
                batch.clear();
                // Whole lines only, up to MAX_BATCH (a longer line goes alone).
                while let Some(front) = q.lines.front() {
                    if !batch.is_empty() && batch.len() + front.len() > MAX_BATCH {
                        break;
                    }
                    let line = q.lines.pop_front().unwrap_or_default();
                    q.bytes -= line.len();
                    batch.push_str(&line);
                }
                std::mem::take(&mut q.dropped)
            };
            if dropped > 0 {
                batch.push_str(&format!(
                    "echoloop: {dropped} line{} of log and statistics dropped: standard error \
                     was not read fast enough\n",
                    if dropped == 1 { "" } else { "s" }
                ));
            }
            // An error (a closed pipe) loses the lines, as a terminal that went away would.
            let _ = out.write_all(batch.as_bytes());
        }
    }

    /// Waits until everything queued is written, at most `wait`.
    fn drain(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while !q.lines.is_empty() || q.dropped > 0 || q.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            q = self
                .changed
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    #[cfg(test)]
    fn dropped_total(&self) -> u64 {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dropped_total
    }
}

/// The process's outlet to stderr; its writer thread starts with the first line.
fn outlet() -> &'static Outlet {
    static OUTLET: OnceLock<&'static Outlet> = OnceLock::new();
    OUTLET.get_or_init(|| {
        let outlet: &'static Outlet = Box::leak(Box::new(Outlet::new()));
        let started = std::thread::Builder::new()
            .name("echoloop-stderr".into())
            .spawn(move || outlet.write_forever(&mut io::stderr()));
        if let Err(e) = started {
            // No thread, no outlet: lines would only pile up. Say so the blocking way.
            let _ = writeln!(
                io::stderr(),
                "echoloop: cannot start the stderr writer: {e}"
            );
        }
        outlet
    })
}

/// Queues one line for stderr (`text` without its newline); never blocks on the reader.
pub fn line(mut text: String) {
    text.push('\n');
    outlet().text(text);
}

/// Queues `text` for stderr as it is (a terminal's progress line redrawn with `\r`).
pub fn text(text: String) {
    outlet().text(text);
}

/// Waits (at most two seconds) until the queued lines are written: called before the
/// process exits, so its last words are not lost to a reader that is merely slow.
pub fn drain() {
    outlet().drain(DRAIN_WAIT);
}

/// A `Write` for the logger: collects the pieces a log record is written in and queues
/// each finished line whole (simplelog writes a record as several small writes: level,
/// space, message, newline — several system calls per line if they went straight to an
/// unbuffered stderr).
pub(crate) struct LineWriter {
    pending: Vec<u8>,
    /// Where finished lines go: [`line()`], but for tests.
    submit: Box<dyn FnMut(String) + Send>,
}

impl LineWriter {
    pub(crate) fn new() -> LineWriter {
        LineWriter::to(Box::new(line))
    }

    fn to(submit: Box<dyn FnMut(String) + Send>) -> LineWriter {
        LineWriter {
            pending: Vec::new(),
            submit,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..nl]);
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            (self.submit)(text);
            rest = &rest[nl + 1..];
        }
        // A line still unfinished: bounded like the queue, so a record without newlines
        // cannot grow it without end.
        let room = MAX_QUEUED.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&rest[..rest.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_QUEUED, Outlet};
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A stderr that records each `write` call, and can be held shut (a reader that
    /// does not read).
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: Arc<Mutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _wait = self.shut.lock().unwrap();
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn start(rec: &Recorder) -> &'static Outlet {
        let outlet: &'static Outlet = Box::leak(Box::new(Outlet::new()));
        let mut out = rec.clone();
        std::thread::spawn(move || outlet.write_forever(&mut out));
        outlet
    }

    #[test]
    fn a_reader_that_does_not_read_costs_dropped_lines_not_a_blocked_caller() {
        let rec = Recorder::default();
        let outlet = start(&rec);
        let shut = rec.shut.lock().unwrap();
        // Far more than the queue holds; none of these calls may wait for the reader.
        let line = "x".repeat(99);
        let n = 3 * MAX_QUEUED / 100;
        for _ in 0..n {
            outlet.text(format!("{line}\n"));
        }
        let dropped = outlet.dropped_total();
        assert!(
            dropped > 0 && dropped < n as u64,
            "{dropped} of {n} dropped"
        );
        drop(shut);
        outlet.drain(Duration::from_secs(20));
        let writes = rec.writes.lock().unwrap();
        let text: Vec<u8> = writes.concat();
        let text = String::from_utf8(text).unwrap();
        let kept = text.lines().filter(|l| *l == line).count() as u64;
        assert_eq!(kept + dropped, n as u64, "every line written or counted");
        // The loss is said, in one notice or (if the writer woke in the middle of the
        // flood) a few, which add up.
        let said: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("echoloop: "))
            .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(said, dropped, "the loss is said");
        // Never a line in pieces: each write ends at a line's end (or with the notice).
        assert!(writes.iter().all(|w| w.ends_with(b"\n")));
        assert!(
            writes.len() < kept as usize,
            "lines that piled up share writes"
        );
    }

    #[test]
    fn a_record_written_in_pieces_is_queued_as_one_line() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let mut w = super::LineWriter::to(Box::new(move |l| sink.lock().unwrap().push(l)));
        // As simplelog writes a record: the level, a space, the message, the newline.
        for piece in [
            "[DEBUG]",
            " ",
            "#",
            "2",
            " open from 127.0.0.1:5",
            "\n",
            "[INFO] two\nthr",
        ] {
            w.write_all(piece.as_bytes()).unwrap();
        }
        assert_eq!(
            *lines.lock().unwrap(),
            ["[DEBUG] #2 open from 127.0.0.1:5", "[INFO] two"],
            "whole lines only; the unfinished one waits"
        );
        w.write_all(b"ee\n").unwrap();
        assert_eq!(lines.lock().unwrap()[2], "three");
    }
}
