//! Helpers shared by the integration tests: run the real `echoloop` binary, wait for its
//! `listening` lines (never sleep for readiness), send it signals, read its logs.
#![allow(dead_code)]

pub mod certs;
/// CPU time and memory of a process from /proc: the same file the command line uses.
#[path = "../../src/cli/procfs.rs"]
pub mod procfs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `echoloop` process.
pub struct Proc {
    pub child: Child,
    /// Lines printed on stdout after the `listening` lines.
    pub stdout: mpsc::Receiver<String>,
    /// Everything printed on stderr so far.
    pub stderr: Arc<Mutex<String>>,
    /// `(kind, address)` for each `listening <kind> <address>` line.
    pub listeners: Vec<(String, String)>,
    /// Says when stderr has reached its end (the process and its copies of it are gone).
    stderr_done: mpsc::Receiver<()>,
}

/// The path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_echoloop")
}

/// Number of listening lines `serve` will print for these arguments: one per listener
/// (the two defaults when none is given), plus `listening metrics ADDR` for `--metrics`.
fn expected_listeners(args: &[&str]) -> usize {
    let n = args
        .iter()
        .filter(|a| matches!(**a, "--tcp" | "--udp" | "--tls" | "--unix" | "--unix-dgram"))
        .count();
    let metrics = args.iter().filter(|a| **a == "--metrics").count();
    (if n == 0 { 2 } else { n }) + metrics
}

impl Proc {
    /// Spawns `echoloop <args>` with piped stdio.
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_command(command(args))
    }

    /// Spawns `cmd` with stdin closed and stdout/stderr collected: stdout line by line into
    /// [`Proc::stdout`], stderr into [`Proc::stderr`].
    pub fn spawn_command(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echoloop");
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let (done_tx, stderr_done) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
            let _ = done_tx.send(());
        });
        Proc {
            child,
            stdout: rx,
            stderr,
            listeners: Vec::new(),
            stderr_done,
        }
    }

    /// Starts `echoloop serve <args>` and waits for all its `listening` lines.
    pub fn serve(args: &[&str]) -> Proc {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let mut p = Proc::spawn(&full);
        p.wait_listening(expected_listeners(args));
        p
    }

    /// Reads `listening <kind> <address>` lines into [`Proc::listeners`] until there are
    /// `want`, failing (and killing the process) after `DEADLINE`.
    pub fn wait_listening(&mut self, want: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.listeners.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let mut parts = line.splitn(3, ' ');
                    assert_eq!(parts.next(), Some("listening"), "unexpected line {line:?}");
                    let kind = parts.next().unwrap_or_default().to_string();
                    let addr = parts.next().unwrap_or_default().to_string();
                    self.listeners.push((kind, addr));
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "server did not print its listening lines; stderr:\n{}",
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// The address of the first listener of `kind`.
    pub fn addr(&self, kind: &str) -> String {
        self.listeners
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.listeners))
    }

    /// The address of the first `kind` listener, as a socket address.
    pub fn sockaddr(&self, kind: &str) -> std::net::SocketAddr {
        self.addr(kind).parse().expect("socket address")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, ...).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                // Its last lines may still be on their way to our reader: after this,
                // `stderr_text` holds everything it wrote.
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status if the process exits within `limit`, `None` if it is still running
    /// then.
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Resident memory of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `echoloop <args>` with stdin closed and stdout/stderr piped (callers may change stdin).
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns `echoloop <args>` with piped output; stdin is piped only if `piped_stdin`.
fn spawn_for_run(args: &[&str], piped_stdin: bool) -> Child {
    let mut cmd = command(args);
    if piped_stdin {
        cmd.stdin(Stdio::piped());
    }
    cmd.spawn().expect("spawn echoloop")
}

/// Runs `echoloop <args>` to completion and returns (status, stdout, stderr).
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> (ExitStatus, String, String) {
    use std::io::Write;
    let mut child = spawn_for_run(args, stdin.is_some());
    if let Some(data) = stdin {
        let mut i = child.stdin.take().expect("stdin piped");
        i.write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`run`], but kills the process and fails the test if it has not exited within
/// `limit` (for commands that would run forever if a bad argument were accepted). The
/// output is read while it runs, so a chatty process cannot block on a full pipe.
pub fn run_bounded(
    args: &[&str],
    stdin: Option<&[u8]>,
    limit: Duration,
) -> (ExitStatus, String, String) {
    use std::io::Write;
    let mut child = spawn_for_run(args, stdin.is_some());
    if let Some(data) = stdin {
        let mut i = child.stdin.take().expect("stdin piped");
        let data = data.to_vec();
        // A writer thread, so a process that never reads its stdin cannot stall the deadline.
        std::thread::spawn(move || {
            let _ = i.write_all(&data);
        });
    }
    let out_t = read_in_background(child.stdout.take().expect("stdout piped"));
    let err_t = read_in_background(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("echoloop {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

/// Reads `r` to its end on a thread; the text (lossily decoded) is the thread's result.
fn read_in_background(
    mut r: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// `echoloop serve` with the test PKI's server identity: `listen` (by default one TLS
/// listener on 127.0.0.1 port 0), then `--cert` and `--key`, then `extra`.
pub fn serve_tls(pki: &certs::TestPki, listen: &[&str], extra: &[&str]) -> Proc {
    let mut args: Vec<&str> = if listen.is_empty() {
        vec!["--tls", "127.0.0.1:0"]
    } else {
        listen.to_vec()
    };
    args.extend([
        "--cert",
        pki.server_chain.to_str().expect("temp paths are UTF-8"),
        "--key",
        pki.server_key.to_str().expect("temp paths are UTF-8"),
    ]);
    args.extend_from_slice(extra);
    Proc::serve(&args)
}

/// A unique path under the temp dir for a Unix socket.
pub fn temp_sock(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "echoloop-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Sends signal `sig` (`TERM`, `INT`...) to process `pid`, as `kill -SIG PID` does.
#[allow(dead_code)]
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Connects with retries until `DEADLINE` (for servers started without a listening line).
pub fn connect_retry(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}
