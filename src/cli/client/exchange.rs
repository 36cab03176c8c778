//! What the stream and datagram clients share: the loop's state, the messages to send,
//! the lines they print.

use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

/// The loop's state: what every handler of the exchange shares, and `run` reads after.
pub(super) struct Shared {
    /// The messages still to send: a connect to the next address takes over where a
    /// failed one was.
    pub(super) messages: Messages,
    /// The result, set once by whichever handler finishes the exchange.
    pub(super) outcome: Option<Result<(), String>>,
}

impl Shared {
    /// Records the result unless one is already recorded (the first word is the true one:
    /// a failure is often followed by the close it caused).
    pub(super) fn record_outcome(&mut self, result: Result<(), String>) {
        if self.outcome.is_none() {
            self.outcome = Some(result);
        }
    }

    pub(super) fn has_outcome(&self) -> bool {
        self.outcome.is_some()
    }
}

/// What both handlers need besides the shared state: the timeout, the message count.
pub(super) struct Common {
    pub(super) timeout: Duration,
    /// Number of the current message (1-based once the first is sent).
    pub(super) index: usize,
}

impl Common {
    /// The delay to pass to `set_timer` for a deadline `timeout` from now. Timers count
    /// from the moment the loop woke up for this batch of events, and reading the next line
    /// of standard input may have blocked since then: add the time spent.
    pub(super) fn timer_delay(&self, loop_now: Instant) -> Duration {
        self.timeout + Instant::now().saturating_duration_since(loop_now)
    }

    /// The next message, or `None` at the end; a failure to read becomes `Err`. Printing
    /// its `SENT` line is the caller's: a stream may have to hold it back.
    pub(super) fn next_message(&mut self, shared: &mut Shared) -> Option<Result<Vec<u8>, String>> {
        let next = shared.messages.next()?;
        if next.is_ok() {
            self.index += 1;
        }
        Some(next)
    }
}

/// Where messages come from: the `--message` list or standard input, line by line.
pub(super) struct Messages {
    pub(super) source: Box<dyn Iterator<Item = Result<Vec<u8>, String>>>,
}

impl Messages {
    pub(super) fn from_list(list: Vec<Vec<u8>>) -> Messages {
        Messages {
            source: Box::new(list.into_iter().map(Ok)),
        }
    }

    pub(super) fn from_reader(input: impl BufRead + 'static) -> Messages {
        Messages {
            source: Box::new(Lines { input }),
        }
    }

    pub(super) fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        self.source.next()
    }
}

/// Lines of bytes, UTF-8 or not, without their `\n` or `\r\n`.
pub(super) struct Lines<R> {
    pub(super) input: R,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.input.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(format!("cannot read standard input: {e}"))),
        }
    }
}

/// The largest UDP payload over IPv4: 65,535 less the IPv4 and UDP headers (20 + 8).
pub(super) const MAX_UDP_V4: usize = 65_507;
/// Over IPv6 the 40-byte header is not counted in the payload length: 65,535 less 8.
pub(super) const MAX_UDP_V6: usize = 65_527;

/// `SENT <bytes> (<n> bytes)`: the message's bytes as they are, not re-encoded.
pub(super) fn sent_line(msg: &[u8]) -> Vec<u8> {
    report_line("SENT ", msg, &format!(" ({} bytes)", msg.len()))
}

/// `RCVD <bytes> (<n> bytes) from <peer>`.
pub(super) fn rcvd_line(echo: &[u8], from: &dyn std::fmt::Display) -> Vec<u8> {
    report_line(
        "RCVD ",
        echo,
        &format!(" ({} bytes) from {from}", echo.len()),
    )
}

pub(super) fn report_line(head: &str, bytes: &[u8], tail: &str) -> Vec<u8> {
    [head.as_bytes(), bytes, tail.as_bytes()].concat()
}

/// Message bytes quoted for an error message: as a string if they are UTF-8, with byte
/// escapes otherwise (a lossy decoding would hide the very bytes that differ).
pub(super) fn quoted(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("b\"{}\"", bytes.escape_ascii()),
    }
}

/// Prints one line on standard output and flushes it, so each echo shows as it happens
/// (also through a pipe). The bytes go out unchanged, UTF-8 or not.
pub(super) fn say(line: &[u8]) -> Result<(), String> {
    let mut out = io::stdout().lock();
    out.write_all(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}
