//! Counting a process's write system calls over a window we choose, with `perf stat`.
//!
//! perf is started attached to the process with its events disabled (`-D -1`), and is
//! told `enable` and `disable` through a control FIFO (`--control fifo:CTL,ACK`), which
//! it answers with `ack` once done: the count covers the measured window exactly, and
//! attaching (which takes perf a while) happens before it, with no sleep to wait for it.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The system calls a TCP server may write with.
const EVENTS: &str = "syscalls:sys_enter_write,syscalls:sys_enter_writev,\
                      syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg";

/// How long perf may take to attach and to answer a command.
const PATIENCE: Duration = Duration::from_secs(10);

pub(super) struct WriteCounter {
    perf: Child,
    ctl: File,
    ack: File,
    dir: PathBuf,
}

impl WriteCounter {
    /// Starts perf attached to `pid`, counting nothing until [`WriteCounter::enable`].
    pub(super) fn attach(pid: u32) -> Result<WriteCounter, String> {
        let dir =
            std::env::temp_dir().join(format!("echoloop-fanout-perf-{}-{pid}", std::process::id()));
        // A leftover of a run that was killed would make mkfifo fail.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (ctl_path, ack_path) = (dir.join("ctl"), dir.join("ack"));
        mkfifo(&ctl_path)?;
        mkfifo(&ack_path)?;
        // Both ends opened read-write: on Linux that never blocks (opening a FIFO for one
        // direction waits for the other end), and perf's own opens then do not block
        // either, whatever it does first.
        let open = |p: &Path| {
            File::options()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let (ctl, ack) = (open(&ctl_path)?, open(&ack_path)?);
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", EVENTS, "-D", "-1", "--control"])
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .arg("-o")
            .arg(dir.join("out"))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        Ok(WriteCounter {
            perf,
            ctl,
            ack,
            dir,
        })
    }

    /// Starts counting; returns once perf says it does.
    pub(super) fn enable(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Stops counting and returns the number of write calls counted.
    pub(super) fn finish(mut self) -> Result<u64, String> {
        self.command("disable")?;
        // SIGINT is how perf stat is told to print its counts and exit.
        // SAFETY: kill takes plain integers; the pid is our own child's, not yet waited
        // for, so it cannot name another process.
        unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) };
        let status = self.perf.wait().map_err(|e| format!("perf: {e}"))?;
        let out = std::fs::read_to_string(self.dir.join("out"))
            .map_err(|e| format!("perf output ({status}): {e}"))?;
        // CSV lines `count,unit,event,...`; an event perf could not count has a count
        // like `<not counted>`, which is an error here rather than a silent zero.
        let mut total = 0;
        let mut seen = 0;
        for line in out.lines().filter(|l| l.contains("syscalls:")) {
            let count = line.split(',').next().unwrap_or("");
            total += count
                .parse::<u64>()
                .map_err(|_| format!("perf: {line:?}"))?;
            seen += 1;
        }
        if seen == 0 {
            return Err(format!("perf counted nothing ({status}): {out:?}"));
        }
        Ok(total)
    }

    /// Sends a control command and waits, bounded, for perf's `ack`.
    fn command(&mut self, cmd: &str) -> Result<(), String> {
        writeln!(self.ctl, "{cmd}").map_err(|e| format!("perf control: {e}"))?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Waiting in slices, so that perf dying (no permission, say) is noticed
            // before the deadline.
            let mut fd = libc::pollfd {
                fd: self.ack.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, which `fd` is, for the duration of the call.
            let ready = unsafe { libc::poll(&mut fd, 1, 100) };
            if ready > 0 {
                let mut buf = [0u8; 16];
                let n = self
                    .ack
                    .read(&mut buf)
                    .map_err(|e| format!("perf ack: {e}"))?;
                return if buf[..n].starts_with(b"ack") {
                    Ok(())
                } else {
                    Err(format!("perf answered {:?}", &buf[..n]))
                };
            }
            if let Ok(Some(status)) = self.perf.try_wait() {
                return Err(format!("perf exited ({status}) before counting"));
            }
            if Instant::now() >= deadline {
                return Err(format!("perf did not acknowledge {cmd:?}"));
            }
        }
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        // Already waited for when `finish` ran: then both are harmless no-ops.
        let _ = self.perf.kill();
        let _ = self.perf.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mkfifo(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
