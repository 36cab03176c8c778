//! `echoloop bench` checks itself (issue 21, part 2): it says when the generator, not the
//! server, was the likely limit of a run, and how late its open-loop sends went out.
//!
//! A test binary of its own: the light run must not look saturated, which the many
//! parallel runs of `tests/bench.rs` could make it (its thread waiting for a core).

mod common;

use common::Proc;

type Json = serde_json::Value;

/// Runs `echoloop bench tcp ADDR <args> --json`, which must succeed; returns the report.
fn report(addr: &str, args: &[&str]) -> Json {
    let mut full = vec!["bench", "tcp", addr];
    full.extend_from_slice(args);
    full.push("--json");
    let (status, out, err) = common::run(&full, None);
    assert!(status.success(), "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report: {out}\n{err}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn per_thread(r: &Json, key: &str) -> Vec<f64> {
    r[key]
        .as_array()
        .unwrap_or_else(|| panic!("no per-thread CPU in {r}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn bench_says_when_the_generator_was_the_limit() {
    let server = Proc::serve(&["--tcp", "127.0.0.1:0"]);
    let addr = server.addr("tcp");

    // Closed loop, deep pipelines: the one load thread always has echoes to verify and
    // messages to send, so it is busy for the whole window.
    let busy = report(&addr, &["-c", "8", "--pipeline", "64", "--duration", "1"]);
    let cpu = per_thread(&busy, "generator_thread_cpu_percent");
    assert_eq!(cpu.len(), 1, "one load thread: {busy}");
    // Busy: on a core, or waiting for one while something else has it.
    let busy_share = per_thread(&busy, "generator_thread_busy_percent");
    assert!(
        busy_share[0] >= 90.0,
        "the load thread was not busy: {busy}"
    );
    assert!(cpu[0] > 0.0 && cpu[0] <= busy_share[0] + 2.0, "{busy}");
    assert_eq!(busy["generator_saturated"], Json::Bool(true), "{busy}");
    let note = busy["generator_note"].as_str().expect("a note saying why");
    assert!(note.contains("--threads"), "{note}");
    assert!(
        busy["send_lag_us"].is_null(),
        "no schedule in closed loop: {busy}"
    );

    // A light open-loop run: 50 messages a second on one connection.
    let light = report(&addr, &["-c", "1", "--rate", "50", "--duration", "1"]);
    assert_eq!(light["generator_saturated"], Json::Bool(false), "{light}");
    assert!(light.get("generator_note").is_none(), "{light}");
    assert!(
        per_thread(&light, "generator_thread_busy_percent")[0] < 50.0,
        "{light}"
    );
    let lag = &light["send_lag_us"];
    let (p99, max) = (lag["p99"].as_f64(), lag["max"].as_f64());
    let (Some(p99), Some(max)) = (p99, max) else {
        panic!("open loop reports its send lag: {light}")
    };
    // Well inside the 20 ms between a connection's sends.
    assert!(0.0 <= p99 && p99 <= max && max < 20_000.0, "{light}");
}
