//! Row i: fair TLS handshakes. One `echoloop serve` with a TLS and a plain TCP listener
//! (core 0); 500 clients handshake without pause (`bench tls --reconnect -c 500`) while 10
//! plain clients ping-pong 64 bytes (`bench tcp -c 10`, started 2 s later, once the
//! handshakers have built their backlog), both generators on core 1. The
//! echo clients run at real-time priority when the system allows it (`chrt -f`), so that
//! their wait for core 1 behind the handshake generator is not counted as the server's
//! delay. Printed: the plain echoes' p50 and p99 and the handshakes per second, for an
//! ECDSA P-256 and an RSA-2048 certificate; with `ECHOLOOP_BENCH_PREVIOUS`, the same for
//! that build, alternated round by round. The targets of issue 23 (p99 ≤ 5 ms, p50 ≤ 1 ms)
//! are printed under the row.

use std::process::{Child, Command, Stdio};

use crate::common::{Pki, median, pinned, spawn_listening_n};
use crate::{ECHOLOOP, json_num};

/// Clients handshaking at once.
const HANDSHAKERS: &str = "500";

/// How long the handshakers run before the echo clients start.
const HEAD_START: std::time::Duration = std::time::Duration::from_secs(2);

/// One run: the plain echoes' latency (µs) and the handshakes completed per second.
#[derive(Debug, Clone, Copy)]
struct Sample {
    p50: f64,
    p99: f64,
    handshakes: f64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bench(secs: f64, rounds: usize, pin: bool, previous: Option<&str>) {
    // Real-time priority for the echo clients, if this system grants it.
    let chrt = Command::new("chrt")
        .args(["-f", "10", "true"])
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "\ni   fair TLS handshakes: {HANDSHAKERS} clients handshaking, 10 plain tcp 64 B ping-pong on the same loop{}",
        if chrt {
            ""
        } else {
            " (chrt refused: echo clients at normal priority)"
        }
    );
    let mut builds = vec![("this build", ECHOLOOP)];
    if let Some(p) = previous {
        builds.push(("previous", p));
    }
    for (key, pki) in [
        ("ECDSA P-256", Some(Pki::generate("fair-ec"))),
        ("RSA-2048", Pki::generate_rsa("fair-rsa")),
    ] {
        let Some(pki) = pki else {
            println!("    {key}: openssl not found, skipped");
            continue;
        };
        let mut results: Vec<Vec<Sample>> = vec![Vec::new(); builds.len()];
        for _ in 0..rounds {
            for (i, (_, program)) in builds.iter().enumerate() {
                match run(program, &pki, secs, pin, chrt) {
                    Ok(s) => results[i].push(s),
                    Err(e) => eprintln!("i {key}: {e}"),
                }
            }
        }
        for ((name, _), r) in builds.iter().zip(&results) {
            let m = |f: fn(&Sample) -> f64| median(r.iter().map(f).collect());
            println!(
                "    {key:<12} {name:<11} echo p50 {:>8.0} us  p99 {:>8.0} us   handshakes/s {:>6.0}",
                m(|s| s.p50),
                m(|s| s.p99),
                m(|s| s.handshakes)
            );
        }
        let mine = &results[0];
        let p50 = median(mine.iter().map(|s| s.p50).collect());
        let p99 = median(mine.iter().map(|s| s.p99).collect());
        print!(
            "    {key:<12} targets: p50 <= 1 ms {}, p99 <= 5 ms {}",
            if p50 <= 1000.0 { "met" } else { "MISSED" },
            if p99 <= 5000.0 { "met" } else { "MISSED" }
        );
        if let Some(prev) = results.get(1) {
            let ratio = median(
                mine.iter()
                    .zip(prev)
                    .map(|(a, b)| a.handshakes / b.handshakes)
                    .collect(),
            );
            print!("; handshakes/s this/previous {ratio:.2}x (paired)");
        }
        println!();
    }
}

/// Starts the server on both listeners; returns it with its TCP and TLS addresses.
fn start(program: &str, pki: &Pki, pin: bool) -> Result<(Server, String, String), String> {
    let mut cmd = pinned(pin, "0", program);
    cmd.args(["serve", "--log-level", "warn"])
        .args(["--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&pki.chain)
        .arg("--key")
        .arg(&pki.key);
    // The `listening` lines are the readiness wait.
    let (child, bound) = spawn_listening_n(&mut cmd, 2)?;
    let server = Server(child);
    let addr = |kind: &str| {
        bound
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| a.clone())
    };
    match (addr("tcp"), addr("tls")) {
        (Some(tcp), Some(tls)) => Ok((server, tcp, tls)),
        _ => Err(format!("server did not report both listeners: {bound:?}")),
    }
}

fn run(program: &str, pki: &Pki, secs: f64, pin: bool, chrt: bool) -> Result<Sample, String> {
    let (_server, tcp, tls) = start(program, pki, pin)?;
    // The handshakes run from before the echo window opens until after it closes.
    let mut hs = pinned(pin, "1", ECHOLOOP);
    hs.args([
        "bench",
        "tls",
        &tls,
        "--reconnect",
        "--connections",
        HANDSHAKERS,
    ])
    .args(["--size", "64", "--warmup", "0", "--json"])
    .args([
        "--duration",
        &format!("{}s", secs + HEAD_START.as_secs_f64() + 1.0),
    ])
    .arg("--ca")
    .arg(&pki.ca)
    .args(["--server-name", "localhost"]);
    let mut hs = hs
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    // A head start: the handshakers' backlog builds up before the echoes are measured
    // (started together, the echo clients' priority on the shared core slows the
    // handshakers enough that the server never falls behind).
    std::thread::sleep(HEAD_START);
    let mut echo = if chrt {
        let mut c = Command::new("chrt");
        c.args(["-f", "10"]);
        if pin {
            c.args(["taskset", "-c", "1"]);
        }
        c.arg(ECHOLOOP);
        c
    } else {
        pinned(pin, "1", ECHOLOOP)
    };
    echo.args(["bench", "tcp", &tcp, "--connections", "10", "--size", "64"])
        .args(["--warmup", "200ms", "--json"])
        .args(["--duration", &format!("{secs}s")]);
    let echo = match echo.stderr(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) => {
            // Not left running into the next round.
            let _ = hs.kill();
            let _ = hs.wait();
            return Err(e.to_string());
        }
    };
    let hs = hs.wait_with_output().map_err(|e| e.to_string())?;
    let echo_json = String::from_utf8_lossy(&echo.stdout);
    let hs_json = String::from_utf8_lossy(&hs.stdout);
    if !echo.status.success() {
        return Err(format!("echo bench failed: {echo_json}"));
    }
    if !hs.status.success() {
        return Err(format!("handshake bench failed: {hs_json}"));
    }
    let lat = echo_json
        .find("\"latency_us\":")
        .map(|i| &echo_json[i..])
        .ok_or("no latency in report")?;
    Ok(Sample {
        p50: json_num(lat, "p50").ok_or("no p50")?,
        p99: json_num(lat, "p99").ok_or("no p99")?,
        handshakes: json_num(&hs_json, "reconnects_per_sec").ok_or("no reconnects_per_sec")?,
    })
}
