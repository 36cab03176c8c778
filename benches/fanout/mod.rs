//! Row h of `compare`: fan-out, one publisher to 100 subscribers, 64-byte messages.
//!
//! A broker relays every message its publisher sends to every subscriber. Three brokers
//! run in the same rounds, one after the other, as subprocesses of this binary pinned to
//! core 0 (`ECHOLOOP_BASELINE=fanout-send|fanout-outbox|fanout-tokio`):
//!
//! - (i) `send`: an echoloop broker written the natural way ([`broker`]): for each
//!   message, for each subscriber, `ctx.conn(sub).send(msg)`. How many write calls that
//!   costs is up to the library: one per message per subscriber unless it coalesces what
//!   one callback (or one loop turn) sends to a connection.
//! - (ii) `outbox`: the same broker gathering each callback's messages into one buffer by
//!   hand and sending that once per subscriber: what (i) can at best hope to match.
//! - (iii) `tokio`: a tokio current_thread broker ([`tokio_broker`]), the baseline.
//!
//! The protocol: a client's first byte is its role. `S` makes it a subscriber, which the
//! broker acknowledges with one byte `A` once it is registered, so the generator knows
//! without sleeping that every subscriber will see every message; `P` makes it the
//! publisher, whose further bytes are 64-byte messages. The generator ([`generator`], one
//! thread of this process pinned to core 1) connects the subscribers, then publishes for
//! the run's duration, in 16 KiB writes with at most 4096 messages (256 KiB) written but
//! not yet received by every subscriber, and then waits until every subscriber has
//! received and verified every message: each carries its sequence number in all eight of
//! its words, and each subscriber checks that it got every message, whole and in order.
//!
//! The measured window runs from the first publish to the last delivery. Figures per
//! delivery (one message to one subscriber, so messages × 100): deliveries/s; the
//! broker's CPU time (user+sys from /proc/PID/stat over the window, as the other rows);
//! and its write system calls (`write`, `writev`, `sendto`, `sendmsg`), counted by
//! `perf stat -e syscalls:sys_enter_*` attached to the broker with its events enabled and
//! disabled exactly around the window through perf's control FIFO ([`perf`]). This
//! needs perf and tracepoint access (root, or a low `perf_event_paranoid`); without them
//! the write column says n/a and the rest of the row still runs. Counting tracepoints
//! costs the broker a little CPU per system call, so its CPU figure includes that, alike
//! for all three.
//!
//! Under the row, the three targets, each the median of same-round values:
//! deliveries/s of (i) ÷ (ii) (≥ 0.9), CPU per delivery of (i) ÷ tokio (≤ 1.0), and
//! write calls per delivery of (i) (≤ 0.05).

mod broker;
mod generator;
mod perf;
mod tokio_broker;

use std::net::SocketAddr;

use crate::common::procfs::proc_cpu_split;

use crate::common::{self, median, pinned};

/// Subscribers per run.
pub(crate) const SUBSCRIBERS: usize = 100;
/// Bytes per message.
pub(crate) const MSG: usize = 64;

pub(crate) const TITLE: &str = "fan-out, 1 publisher -> 100 subscribers, 64 B";

/// The brokers, in the order each round runs them (`ECHOLOOP_BASELINE=fanout-NAME`).
const SERVERS: [&str; 3] = ["send", "outbox", "tokio"];

/// Serves as the broker `name` (one of [`SERVERS`]) when this binary runs as a server.
pub(crate) fn serve(name: &str) {
    let addr: SocketAddr = std::env::var("ECHOLOOP_BASELINE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()
        .expect("ECHOLOOP_BASELINE_ADDR: an IP address and port");
    match name {
        "send" => broker::serve(addr, broker::Style::PerMessage),
        "outbox" => broker::serve(addr, broker::Style::Outbox),
        "tokio" => tokio_broker::serve(addr),
        other => panic!("unknown fan-out broker {other:?}"),
    }
}

/// One measured run of one broker.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Broker CPU microseconds (user+sys) per delivery.
    cpu: f64,
    /// The user-space part of `cpu`.
    user: f64,
    deliveries_per_sec: f64,
    /// The generator thread's CPU time over the window, in % of the window.
    gen_cpu: f64,
    /// Broker write system calls per delivery; NaN when perf could not count them.
    writes: f64,
}

/// Runs `rounds` rounds of the three brokers and prints the row.
pub(crate) fn bench(secs: f64, rounds: usize, pin: bool) {
    let mut results: Vec<[Option<Sample>; 3]> = Vec::new();
    for _ in 0..rounds {
        let mut round = [None; 3];
        for (i, name) in SERVERS.into_iter().enumerate() {
            match run_one(name, secs, pin) {
                Ok(s) => round[i] = Some(s),
                Err(e) => eprintln!("h {name}: {e}"),
            }
        }
        results.push(round);
    }
    print_row(&results);
}

fn run_one(name: &str, secs: f64, pin: bool) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = pinned(pin, "0", &exe.to_string_lossy());
    cmd.env("ECHOLOOP_BASELINE", format!("fanout-{name}"))
        .env("ECHOLOOP_BASELINE_ADDR", "127.0.0.1:0");
    let (child, addr) = common::spawn_listening(&mut cmd)?;
    // Killed when dropped, whatever happens below.
    let server = super::Server { child, addr };
    let addr: SocketAddr = server.addr.parse().map_err(|e| format!("{e}"))?;
    // taskset execs the program, so the child's pid is the broker's.
    let pid = server.child.id();
    // A thread of its own, so that pinning it to core 1 leaves the main thread alone.
    std::thread::scope(|s| {
        s.spawn(|| measure(addr, pid, secs, pin))
            .join()
            .unwrap_or_else(|_| Err("the generator panicked".into()))
    })
}

/// Drives one run against the broker `pid` at `addr`, on the calling thread.
fn measure(addr: SocketAddr, pid: u32, secs: f64, pin: bool) -> Result<Sample, String> {
    if pin {
        pin_this_thread(1);
    }
    let mut load = generator::Generator::connect(addr)?;
    // Attached before the window and enabled only for it: attaching takes perf a while.
    let mut writes = perf::WriteCounter::attach(pid);
    if let Ok(w) = writes.as_mut() {
        if let Err(e) = w.enable() {
            writes = Err(e);
        }
    }
    let cpu_before = proc_cpu_split(pid).map_err(|e| e.to_string())?;
    let gen_before = thread_cpu_secs();
    let outcome = load.run(secs)?;
    let gen_after = thread_cpu_secs();
    let cpu_after = proc_cpu_split(pid).map_err(|e| e.to_string())?;
    let writes = writes.and_then(perf::WriteCounter::finish);

    let deliveries = (outcome.messages * SUBSCRIBERS as u64) as f64;
    if deliveries == 0.0 {
        return Err("nothing was published".into());
    }
    let window = outcome.elapsed.as_secs_f64();
    let (cpu_us, user_us) = common::cpu_us_between(&cpu_before, &cpu_after);
    Ok(Sample {
        cpu: cpu_us / deliveries,
        user: user_us / deliveries,
        deliveries_per_sec: deliveries / window,
        gen_cpu: (gen_after - gen_before) / window * 100.0,
        writes: match writes {
            Ok(n) => n as f64 / deliveries,
            Err(e) => {
                eprintln!("h: write calls not counted: {e}");
                f64::NAN
            }
        },
    })
}

/// Pins the calling thread to `core`, as taskset pins the servers (a failure only costs
/// steadiness, so it is reported and the run goes on).
fn pin_this_thread(core: usize) {
    // SAFETY: `set` is a plain bitmask owned here; CPU_ZERO and CPU_SET only write into
    // it (CPU_SET ignores a core beyond its size), and sched_setaffinity(0, ..) reads it
    // for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "h: generator not pinned to core {core}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU seconds the calling thread has used (the generator runs on one thread).
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn print_row(r: &[[Option<Sample>; 3]]) {
    let m = |i: usize, f: fn(&Sample) -> f64| {
        median(r.iter().filter_map(|x| x[i]).map(|s| f(&s)).collect())
    };
    // As in the other rows: each run against the other run of the same round, then the
    // median of those ratios, so the machine's slow and fast phases cancel.
    let paired = |i: usize, base: usize, f: fn(&Sample) -> f64| {
        median(
            r.iter()
                .filter_map(|x| Some(f(&x[i]?) / f(&x[base]?)))
                .collect(),
        )
    };
    let fmt = |v: f64| format!("{v:.3} us/dlv");
    const TOKIO: usize = 2;
    println!(
        "{:<3} {TITLE} (per delivery = per message per subscriber)",
        "h"
    );
    for (i, label) in [
        (0, "  (i) send per message (vs tokio)"),
        (1, "  (ii) hand-gathered outbox (vs tokio)"),
    ] {
        println!(
            "{:<3} {:<38} {:>13} {:>13} {:>6.2}x | {:>11.0} {:>11.0} | {:>7.0}% {:>7.0}% | {:>8.3} {:>8.3} {:>5.2}x",
            "",
            label,
            fmt(m(i, |s| s.cpu)),
            fmt(m(TOKIO, |s| s.cpu)),
            paired(i, TOKIO, |s| s.cpu),
            m(i, |s| s.deliveries_per_sec),
            m(TOKIO, |s| s.deliveries_per_sec),
            m(i, |s| s.gen_cpu),
            m(TOKIO, |s| s.gen_cpu),
            m(i, |s| s.user),
            m(TOKIO, |s| s.user),
            paired(i, TOKIO, |s| s.user),
        );
    }
    let writes = |i: usize| {
        let w = m(i, |s| s.writes);
        if w.is_nan() {
            "n/a".to_string()
        } else {
            format!("{w:.4}")
        }
    };
    println!(
        "{:<3} {:<38} (i) {}  (ii) {}  tokio {}",
        "",
        "  write calls per delivery",
        writes(0),
        writes(1),
        writes(TOKIO)
    );
    let verdict = |v: f64, ok: bool| {
        if v.is_nan() {
            "n/a".to_string()
        } else {
            format!("{v:.2}{}", if ok { " met" } else { " MISSED" })
        }
    };
    let rate = paired(0, 1, |s| s.deliveries_per_sec);
    let cpu = paired(0, TOKIO, |s| s.cpu);
    let w = m(0, |s| s.writes);
    let w_text = if w.is_nan() {
        "n/a".to_string()
    } else {
        format!("{w:.4}{}", if w <= 0.05 { " met" } else { " MISSED" })
    };
    println!(
        "{:<3}   targets: deliveries/s (i) ÷ (ii) ≥ 0.9: {} | CPU/delivery (i) ÷ tokio ≤ 1.0: {} | write calls/delivery (i) ≤ 0.05: {}",
        "",
        verdict(rate, rate >= 0.9),
        verdict(cpu, cpu <= 1.0),
        w_text,
    );
}
