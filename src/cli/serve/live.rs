//! `serve --stats-interval`: one line of statistics per interval (or one JSON object), and
//! the same at exit for the whole run; also what SIGUSR1 prints.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cli::procfs::{clock_ticks_per_sec, proc_cpu_ticks};
use crate::cli::units::{format_bytes_per_sec, format_count};
use echoloop::stats::Stats;

/// Every worker's latest counters, for whoever reports on the whole server (the stats
/// line, the metrics endpoint). Workers publish a few times a second.
#[derive(Debug)]
pub(crate) struct Board {
    workers: Mutex<Vec<Stats>>,
    pub(crate) started: Instant,
}

impl Board {
    pub(crate) fn new(workers: usize) -> Board {
        Board {
            workers: Mutex::new(vec![Stats::default(); workers]),
            started: Instant::now(),
        }
    }

    /// Worker `w`'s counters now.
    pub(crate) fn publish(&self, w: usize, s: Stats) {
        // A poisoned lock only means another worker panicked mid-update of plain numbers.
        let mut all = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = all.get_mut(w) {
            *slot = s;
        }
    }

    /// The whole server's counters; `own` (worker `w`'s live counters) replaces its
    /// published ones.
    pub(crate) fn total(&self, own: Option<(usize, Stats)>) -> Stats {
        let all = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .enumerate()
            .fold(Stats::default(), |acc, (i, s)| match own {
                Some((w, o)) if w == i => acc.merged(&o),
                _ => acc.merged(s),
            })
    }
}

/// Turns successive totals into per-interval lines.
#[derive(Debug)]
pub(crate) struct Sampler {
    json: bool,
    started: Instant,
    last: Stats,
    last_at: Instant,
    start_cpu: u64,
    last_cpu: u64,
}

/// Which line a [`Sampler`] renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The interval since the last line.
    Interval,
    /// The whole run so far, on request (SIGUSR1).
    Summary,
    /// The whole run, at exit.
    Final,
}

impl Sampler {
    pub(crate) fn new(json: bool, started: Instant) -> Sampler {
        let cpu = own_cpu_ticks();
        Sampler {
            json,
            started,
            last: Stats::default(),
            last_at: started,
            start_cpu: cpu,
            last_cpu: cpu,
        }
    }

    /// The line for the interval since the last one, ending at `now` with totals `s`.
    pub(crate) fn interval(&mut self, s: &Stats) -> String {
        let now = Instant::now();
        let cpu = own_cpu_ticks();
        let line = self.render(
            s,
            &self.last.clone(),
            now - self.last_at,
            cpu.saturating_sub(self.last_cpu),
            Line::Interval,
        );
        self.last = *s;
        self.last_at = now;
        self.last_cpu = cpu;
        line
    }

    /// The summary of the whole run so far, for SIGUSR1: in JSON, `"summary": true` and
    /// `"final": false`, since the server goes on.
    pub(crate) fn summary(&self, s: &Stats) -> String {
        self.whole_run(s, false)
    }

    /// The summary at exit: in JSON, `"summary": true` and `"final": true`.
    pub(crate) fn final_summary(&self, s: &Stats) -> String {
        self.whole_run(s, true)
    }

    fn whole_run(&self, s: &Stats, last: bool) -> String {
        let cpu = own_cpu_ticks();
        let kind = if last { Line::Final } else { Line::Summary };
        self.render(
            s,
            &Stats::default(),
            self.started.elapsed(),
            cpu.saturating_sub(self.start_cpu),
            kind,
        )
    }

    fn render(
        &self,
        s: &Stats,
        before: &Stats,
        over: Duration,
        cpu_ticks: u64,
        kind: Line,
    ) -> String {
        let total = kind != Line::Interval;
        let secs = over.as_secs_f64().max(1e-9);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let cpu = cpu_ticks as f64 / clock_ticks_per_sec() as f64 / secs * 100.0;
        let closed: Vec<(&str, u64)> = s
            .closed_by
            .iter()
            .zip(before.closed_by.iter())
            .map(|((r, a), (_, b))| (r, a.saturating_sub(*b)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let closed_n = s.closed.saturating_sub(before.closed);
        let accepted = s.accepted.saturating_sub(before.accepted);
        // Once, for either form.
        let dgrams_in = rate(s.datagrams_in, before.datagrams_in);
        let dgrams_out = rate(s.datagrams_out, before.datagrams_out);
        let bytes_in = rate(
            s.bytes_in + dgram_bytes_in(s),
            before.bytes_in + dgram_bytes_in(before),
        );
        let bytes_out = rate(
            s.bytes_out + dgram_bytes_out(s),
            before.bytes_out + dgram_bytes_out(before),
        );
        let dropped = s.datagrams_dropped.saturating_sub(before.datagrams_dropped);
        let refused = s.datagrams_refused.saturating_sub(before.datagrams_refused);
        if self.json {
            let by_reason: serde_json::Map<String, serde_json::Value> = closed
                .iter()
                .map(|(r, n)| ((*r).to_string(), (*n).into()))
                .collect();
            return serde_json::json!({
                "elapsed_secs": self.started.elapsed().as_secs_f64(),
                "over_secs": secs,
                "final": kind == Line::Final,
                "summary": total,
                "connections_open": s.connections_open,
                "accepted": accepted,
                "closed": closed_n,
                "closed_by": by_reason,
                "datagrams_in_per_sec": dgrams_in,
                "datagrams_out_per_sec": dgrams_out,
                "bytes_in_per_sec": bytes_in,
                "bytes_out_per_sec": bytes_out,
                "datagrams_dropped": dropped,
                "datagrams_refused": refused,
                "cpu_percent": cpu,
            })
            .to_string();
        }
        let reasons = if closed.is_empty() {
            String::new()
        } else {
            let each: Vec<String> = closed.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(" ({})", each.join(", "))
        };
        format!(
            "{}: {} open, {accepted} accepted, {closed_n} closed{reasons}, in {} ({} datagrams/s), out {} ({} datagrams/s), {dropped} dropped, {refused} refused, cpu {cpu:.1}%",
            if total {
                format!("stats over {:.1} s", secs)
            } else {
                "stats".to_string()
            },
            s.connections_open,
            // Bytes first: they move on every transport. "Messages" would mean datagrams
            // here (a stream has none), and read `0 msgs/s` on a busy TCP server.
            format_bytes_per_sec(bytes_in),
            format_count(dgrams_in),
            format_bytes_per_sec(bytes_out),
            format_count(dgrams_out),
        )
    }
}

/// Datagram payload bytes (the stream totals count stream bytes only).
fn dgram_bytes_in(s: &Stats) -> u64 {
    s.traffic.udp.bytes_in + s.traffic.unix_dgram.bytes_in
}

fn dgram_bytes_out(s: &Stats) -> u64 {
    s.traffic.udp.bytes_out + s.traffic.unix_dgram.bytes_out
}

/// This process's CPU time so far, in clock ticks (0 if /proc cannot say).
fn own_cpu_ticks() -> u64 {
    proc_cpu_ticks(std::process::id()).unwrap_or(0)
}
