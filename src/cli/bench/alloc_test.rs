//! `bench` allocates nothing per message in steady state: its allocations are counted
//! while it runs in this process against an echo server of the library's on a thread,
//! with its own payload and with `--sockperf`'s (against a stand-in for sockperf's server).
//!
//! The count is process-wide (a counting global allocator), so the measuring test runs
//! alone: it starts this test binary again with only itself selected, one test thread, and
//! an environment variable saying "measure" — no other test of the binary can allocate in
//! the meantime.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use clap::Parser;

use super::pattern::SOCKPERF_HEADER;

/// Counts allocations while `COUNT_NOW` is on.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNT_NOW: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// bumps a counter, which neither allocates nor touches the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_NOW.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's; forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT_NOW.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`; forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Set in the child that measures.
const MEASURE: &str = "ECHOLOOP_BENCH_ALLOC_MEASURE";

/// `echoloop bench` run in this process, with its allocations counted; returns
/// (allocations, messages in the report).
fn counted_run(addr: &str, duration: &str, extra: &[&str]) -> (u64, u64) {
    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: super::BenchArgs,
    }
    let hgrm = std::env::temp_dir().join(format!(
        "echoloop-bench-alloc-{}-{duration}.hgrm",
        std::process::id()
    ));
    let mut argv = vec!["bench", "tcp", addr, "--duration", duration, "--json"];
    argv.extend_from_slice(extra);
    let path = hgrm.to_str().expect("temp paths are UTF-8");
    argv.extend_from_slice(&["--hgrm", path]);
    let cmd = Cmd::try_parse_from(argv).expect("arguments");
    ALLOCS.store(0, Ordering::SeqCst);
    COUNT_NOW.store(true, Ordering::SeqCst);
    let code = super::run(cmd.args);
    COUNT_NOW.store(false, Ordering::SeqCst);
    assert_eq!(code.expect("bench ran"), std::process::ExitCode::SUCCESS);
    let text = std::fs::read_to_string(&hgrm).expect("hgrm written");
    let _ = std::fs::remove_file(&hgrm);
    // "#[Max     =   1234.000, Total count    =   5678]"
    let total = text
        .lines()
        .find_map(|l| l.split("Total count    =").nth(1))
        .and_then(|v| v.trim().trim_end_matches(']').trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in {text}"));
    (ALLOCS.load(Ordering::SeqCst), total)
}

/// A `sockperf server` in miniature, for the `--sockperf` runs: frames the stream by the
/// length in each message's header and echoes the message with the CLIENT flag cleared,
/// allocating nothing per message itself.
#[derive(Default)]
struct SockperfLike {
    /// Bytes of the current message seen so far.
    at: usize,
    /// Its length, once its header is in.
    len: usize,
    header: [u8; SOCKPERF_HEADER],
}

impl<S> echoloop::Handler<S> for SockperfLike {
    fn on_data(&mut self, ctx: &mut echoloop::Ctx<'_, S>, data: &[u8]) {
        let mut data = data;
        while !data.is_empty() {
            if self.at < SOCKPERF_HEADER {
                let n = (SOCKPERF_HEADER - self.at).min(data.len());
                self.header[self.at..self.at + n].copy_from_slice(&data[..n]);
                self.at += n;
                data = &data[n..];
                if self.at == SOCKPERF_HEADER {
                    // Flags are a big-endian u16 at 8: CLIENT is the low bit of byte 9.
                    self.header[9] &= !1;
                    let len: [u8; 4] = self.header[10..].try_into().expect("4 bytes");
                    self.len = u32::from_be_bytes(len) as usize;
                    ctx.send(&self.header);
                }
            } else {
                let n = (self.len - self.at).min(data.len());
                ctx.send(&data[..n]);
                self.at += n;
                data = &data[n..];
            }
            if self.at >= SOCKPERF_HEADER && self.at == self.len {
                self.at = 0;
            }
        }
    }
}

/// Allocations that a second of messages adds, short run against long, with `extra`
/// arguments (setup and per-connection costs are the same in both runs).
fn extra_allocations(addr: &str, extra: &[&str]) -> u64 {
    let (short_allocs, short_msgs) = counted_run(addr, "0.3", extra);
    let (long_allocs, long_msgs) = counted_run(addr, "1.3", extra);
    assert!(
        long_msgs > short_msgs + 10_000,
        "{extra:?}: {short_msgs} vs {long_msgs}"
    );
    let extra_allocs = long_allocs.saturating_sub(short_allocs);
    println!(
        "{extra:?}: {extra_allocs} more allocations for {} more messages ({short_allocs} -> \
         {long_allocs})",
        long_msgs - short_msgs
    );
    extra_allocs
}

#[test]
fn bench_steady_state_allocates_nothing_per_message() {
    if std::env::var_os(MEASURE).is_none() {
        // The parent: run the measurement alone, in a child.
        let me = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(me)
            .args([
                "cli::bench::alloc_test::bench_steady_state_allocates_nothing_per_message",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(MEASURE, "1")
            .output()
            .expect("run the measuring child");
        assert!(
            out.status.success(),
            "the measurement failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the measuring child ran no test"
        );
        return;
    }
    // The child: echo servers of the library's on a thread, then two runs against each.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut el = echoloop::EventLoop::new(echoloop::Config::default()).expect("loop");
        let any = echoloop::Endpoint::Inet(([127, 0, 0, 1], 0).into());
        let echo = el
            .listen(&any, echoloop::ListenKind::Tcp, || Box::new(echoloop::Echo))
            .expect("listen");
        let sockperf = el
            .listen(&any, echoloop::ListenKind::Tcp, || {
                Box::new(SockperfLike::default())
            })
            .expect("listen");
        let addrs = (echo.addr.to_string(), sockperf.addr.to_string());
        let _ = tx.send((addrs, el.stop_handle()));
        el.run()
    });
    let ((echo, sockperf), stop) = rx.recv().expect("the server started");
    let plain = extra_allocations(&echo, &["-c", "4", "--pipeline", "2"]);
    // Sizes that vary: each header carries its own message's length.
    let sockperf_args = [
        "-c",
        "4",
        "--pipeline",
        "2",
        "--sockperf",
        "--size",
        "14..200",
    ];
    let with_sockperf = extra_allocations(&sockperf, &sockperf_args);
    stop.stop(std::time::Duration::ZERO);
    let _ = server.join();
    // What differs between the runs is a second of messages and one progress line. One
    // allocation per message would be tens of thousands.
    for (what, extra_allocs) in [("plain", plain), ("--sockperf", with_sockperf)] {
        assert!(
            extra_allocs < 200,
            "{what}: {extra_allocs} more allocations"
        );
    }
}
