//! Shared by the benches: a throwaway PKI for the TLS scenarios, starting a server that
//! says where it listens (pinned to a core), settings from the environment, medians.

// Each bench uses a part of this module.
#![allow(dead_code)]

/// CPU time and memory of a process from /proc: the same file the command line uses.
#[path = "../../src/cli/procfs.rs"]
// Its unit tests are not run from a bench (no test harness): their imports go unused.
#[allow(unused_imports)]
pub mod procfs;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Starts a server whose first stdout line is `listening KIND ADDR` (as `echoloop serve`
/// prints it once bound): returns the child and ADDR. Reading the line is the readiness
/// wait, so no sleep is needed.
pub fn spawn_listening(cmd: &mut Command) -> Result<(Child, String), String> {
    let (child, mut bound) = spawn_listening_n(cmd, 1)?;
    let (_, addr) = bound.pop().ok_or("no listening line")?;
    Ok((child, addr))
}

/// The same for a server with `n` listeners: their `(KIND, ADDR)`s, in order.
pub fn spawn_listening_n(
    cmd: &mut Command,
    n: usize,
) -> Result<(Child, Vec<(String, String)>), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut bound = Vec::with_capacity(n);
    for line in BufReader::new(out).lines().take(n) {
        let line = line.map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace().skip(1);
        match (words.next(), words.next()) {
            (Some(kind), Some(addr)) => bound.push((kind.to_string(), addr.to_string())),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("bad line {line:?}"));
            }
        }
    }
    Ok((child, bound))
}

/// A CA and a certificate for `localhost`, written to a temp dir that is removed on drop.
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub chain: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Pki {
    /// Makes the CA and the server certificate; `tag` keeps benches' temp dirs apart.
    pub fn generate(tag: &str) -> Pki {
        Pki::generate_with(tag, rcgen::KeyPair::generate().expect("key"))
    }

    /// The same with an RSA-2048 server key (made by `openssl genpkey`, as ring cannot make
    /// RSA keys); `None` without openssl.
    pub fn generate_rsa(tag: &str) -> Option<Pki> {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let pem = String::from_utf8(out.stdout).ok()?;
        let key = rcgen::KeyPair::from_pem(&pem).ok()?;
        Some(Pki::generate_with(tag, key))
    }

    /// A CA (ECDSA P-256) and a certificate for `localhost` with the server key `key`.
    pub fn generate_with(tag: &str, key: rcgen::KeyPair) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("echoloop-{tag}-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        let p = Pki {
            ca: dir.join("ca.pem"),
            chain: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        std::fs::write(&p.ca, ca.pem()).expect("write");
        std::fs::write(&p.chain, cert.pem()).expect("write");
        std::fs::write(&p.key, key.serialize_pem()).expect("write");
        p
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` run on `core` with `taskset` when `pin` (when taskset exists), else as is.
pub fn pinned(pin: bool, core: &str, program: &str) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", core, program]);
        c
    } else {
        Command::new(program)
    }
}

/// `echoloop serve` (the build at `program`) on one `transport` listener at
/// 127.0.0.1:0, logging only warnings, pinned to core 0 when `pin`: the server every
/// echoloop row measures. The caller adds what its row needs (certificates, busy polling).
pub fn serve_command(program: &str, transport: &str, pin: bool) -> Command {
    let mut c = pinned(pin, "0", program);
    c.args([
        "serve",
        "--log-level",
        "warn",
        &format!("--{transport}"),
        "127.0.0.1:0",
    ]);
    c
}

/// A number from the environment variable `name`, or `default` if unset or not a number.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (NaN for no values): rounds on this shared machine drift, and the median
/// ignores the odd slow or fast one.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Microseconds of CPU a process spent between two `/proc/PID/stat` readings: (user +
/// system, user alone).
pub fn cpu_us_between(before: &procfs::CpuTicks, after: &procfs::CpuTicks) -> (f64, f64) {
    let us = |ticks: u64| ticks as f64 / procfs::clock_ticks_per_sec() as f64 * 1e6;
    let user = us(after.user - before.user);
    (user + us(after.system - before.system), user)
}
