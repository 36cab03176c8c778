//! `echoloop bench --slo` (issue 21, part 1) against a server whose capacity is known:
//! it spends a fixed time on every message, one at a time, so no rate above
//! 1 / that time can be served. The search must land within 15% below that capacity and
//! never above it.
//!
//! A test binary of its own: the search runs about twenty seconds of steps, and the
//! server's fixed time is only fixed while no other test takes its core.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The searches here take turns: two at once would share the cores the known capacity
/// depends on.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn my_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The search both tests run against the fixed-cost server: one connection, p99 within
/// 20 ms, 1 s steps from 1k/s, at most 10 of them.
const SEARCH: [&str; 10] = [
    "-c",
    "1",
    "--slo",
    "p99=20ms",
    "--rate",
    "1000",
    "--step-duration",
    "1",
    "--max-steps",
    "10",
];

/// What the server spends on each message: a capacity of 3,333 messages a second.
const SERVICE: Duration = Duration::from_micros(300);

/// Serves each connection on a thread of its own (the search opens fresh ones for every
/// step, one at a time): reads a 64-byte message, spins for [`SERVICE`], echoes it.
fn fixed_cost_server(stop: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut msg = [0u8; 64];
                let started = Instant::now();
                while conn.read_exact(&mut msg).is_ok() {
                    let t = Instant::now();
                    while t.elapsed() < SERVICE {
                        std::hint::spin_loop();
                    }
                    if conn.write_all(&msg).is_err() || started.elapsed() > common::DEADLINE {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn bench_slo_search_finds_the_knee_of_a_server_of_known_capacity() {
    let _turn = my_turn();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fixed_cost_server(Arc::clone(&stop));
    let capacity = 1.0 / SERVICE.as_secs_f64();
    let dir = std::env::temp_dir().join(format!("echoloop-slo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("knee.svg");
    let mut args = vec!["bench", "tcp", &addr];
    args.extend(SEARCH);
    args.extend(["--json", "--plot", plot.to_str().unwrap()]);
    let (status, out, err) = common::run(&args, None);
    stop.store(true, Ordering::SeqCst);
    assert!(status.success(), "{err}");
    let line = out.lines().find(|l| l.starts_with('{')).expect(&out);
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let slo = &v["slo"];
    assert_eq!(slo["percentile"].as_f64(), Some(99.0), "{v}");
    assert_eq!(slo["bound_us"].as_f64(), Some(20_000.0), "{v}");
    let steps = slo["steps"].as_array().expect("steps");
    assert!(steps.len() >= 3 && steps.len() <= 10, "{v}");
    for s in steps {
        for key in ["offered_rate", "achieved_rate", "value_us"] {
            assert!(s[key].as_f64().is_some(), "{key} in {s}");
        }
        assert!(s["passed"].is_boolean() && s["why"].is_string(), "{s}");
        // No step above the capacity passes.
        if s["offered_rate"].as_f64().unwrap() > capacity {
            assert_eq!(s["passed"], serde_json::Value::Bool(false), "{v}");
        }
    }
    let max = slo["max_rate"].as_f64().expect("a rate proven");
    assert!(
        max <= capacity && max >= 0.85 * capacity,
        "max rate {max} against a capacity of {capacity:.0}: {v}"
    );
    let summary = v["summary"].as_str().unwrap();
    assert!(summary.starts_with("max rate "), "{summary}");
    assert!(summary.contains("with p99 <= 20.00 ms"), "{summary}");
    // The plots: the distribution at the best rate with the bound, and p99 by rate
    // with the knee marked.
    let latency = std::fs::read_to_string(&plot).unwrap();
    assert!(
        latency.contains("bound 20000 µs") && latency.ends_with("</svg>\n"),
        "{latency}"
    );
    let rates = std::fs::read_to_string(dir.join("knee-rates.svg")).unwrap();
    for text in ["offered rate (msgs/s)", "p99 latency (µs)", "max rate "] {
        assert!(rates.contains(text), "no {text:?} in {rates}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The options a search cannot take are refused by name, before any load.
#[test]
fn bench_slo_refuses_what_it_cannot_do() {
    for (extra, word) in [
        (&["--pipeline", "4"][..], "--pipeline"),
        (&["--segment", "0/2"][..], "--segment"),
        (&["--hlog", "/tmp/x.hlog"][..], "--hlog"),
        (&["--reconnect"][..], "--reconnect"),
    ] {
        let mut args = vec!["bench", "tcp", "127.0.0.1:9", "--slo", "p99=2ms"];
        args.extend_from_slice(extra);
        let (status, _, err) = common::run(&args, None);
        assert!(!status.success(), "{extra:?} accepted");
        assert!(err.contains(word) && !err.contains("panicked"), "{err}");
    }
    for bad in ["p100=1ms", "99=1ms", "p99", "p99=0", "p99=fast"] {
        let (status, _, err) = common::run(&["bench", "tcp", "127.0.0.1:9", "--slo", bad], None);
        assert!(!status.success(), "{bad} accepted");
        assert!(
            err.contains("SLO") || err.contains("duration"),
            "{bad}: {err}"
        );
    }
}

/// Ctrl-C during a search ends it with the best rate proven so far, and status 130.
#[test]
fn bench_slo_ctrl_c_reports_the_best_rate_so_far() {
    let _turn = my_turn();
    use std::io::BufRead;
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fixed_cost_server(Arc::clone(&stop));
    let mut child = std::process::Command::new(common::bin())
        .args(["bench", "tcp", &addr])
        .args(SEARCH)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The first step that passes: then Ctrl-C.
    let first = loop {
        let Some(line) = lines.next() else {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("no step passed: {:?}\n{err}", child.wait());
        };
        let line = line.unwrap();
        if line.ends_with("pass") {
            break line;
        }
    };
    common::signal(child.id(), "INT");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let last = rest.last().expect("a result line");
    assert!(last.starts_with("max rate "), "{first}\n{rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
}

/// The search runs on every transport, with several load threads: one short step each
/// (an echoloop server is far from its knee at 2k/s), and the JSON says how it went.
#[test]
fn bench_slo_searches_every_transport_with_threads() {
    let _turn = my_turn();
    let pki = common::certs::TestPki::generate();
    let dir = std::env::temp_dir().join(format!("echoloop-slo-any-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (unix, dgram) = (dir.join("s.sock"), dir.join("d.sock"));
    let tls = common::serve_tls(&pki, &[], &[]);
    let plain = common::Proc::serve(&[
        "--tcp",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
        "--unix",
        unix.to_str().unwrap(),
        "--unix-dgram",
        dgram.to_str().unwrap(),
    ]);
    let ca = pki.ca_pem.to_str().unwrap().to_owned();
    for transport in ["tcp", "tls", "unix", "udp", "unix-dgram"] {
        let addr = if transport == "tls" {
            tls.addr("tls")
        } else {
            plain.addr(transport)
        };
        let mut args = vec!["bench", transport, &addr, "-c", "4", "--threads", "2"];
        args.extend([
            "--slo",
            "p50=500ms",
            "--rate",
            "2k",
            "--step-duration",
            "0.5",
        ]);
        args.extend(["--max-steps", "1", "--json"]);
        if transport == "tls" {
            args.extend(["--ca", &ca, "--server-name", "localhost"]);
        }
        let (status, out, err) = common::run(&args, None);
        assert!(status.success(), "{transport}: {err}");
        let line = out.lines().find(|l| l.starts_with('{')).expect(&out);
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let steps = v["slo"]["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 1, "{transport}: {v}");
        assert_eq!(
            steps[0]["passed"],
            serde_json::Value::Bool(true),
            "{transport}: {v}"
        );
        assert_eq!(
            v["slo"]["max_rate"].as_f64(),
            Some(2000.0),
            "{transport}: {v}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
