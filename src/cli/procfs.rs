//! What `/proc` says about a process: CPU time used and peak memory, for the generator's
//! own cost and a server's (`--server-pid`), and serve's statistics; and the open-file
//! limit many connections need. Tests and benches include this file as their own.

use std::io;

/// A process's (or a thread's) CPU time in clock ticks, with the instant it was read.
pub type CpuReading = (std::time::Instant, u64);

/// Reads `id`'s CPU time now: a process id, or a thread id (`/proc/TID/stat` exists for
/// every thread, though `ls /proc` lists only processes).
pub fn cpu_reading(id: u32) -> Option<CpuReading> {
    proc_cpu_ticks(id)
        .ok()
        .map(|t| (std::time::Instant::now(), t))
}

/// CPU used between two readings: (percent of one core, seconds).
pub fn cpu_between(a: Option<CpuReading>, b: Option<CpuReading>) -> Option<(f64, f64)> {
    match (a, b) {
        (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
            let secs = b.saturating_sub(a) as f64 / clock_ticks_per_sec() as f64;
            Some((100.0 * secs / (t1 - t0).as_secs_f64(), secs))
        }
        _ => None,
    }
}

/// The clock ticks per second that `/proc/PID/stat` counts CPU time in (`USER_HZ`), as
/// the system says (`sysconf(_SC_CLK_TCK)`); 100 if it will not say.
pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf takes a plain integer and touches no memory of ours.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
    })
}

/// CPU time (user + system, all threads) that process `pid` has used so far, in ticks of
/// [`clock_ticks_per_sec`], read from `/proc/PID/stat`.
///
/// Sample it at the start and the end of a measured window: the difference divided by
/// `clock_ticks_per_sec()` is the CPU seconds the process spent in between.
///
/// # Errors
///
/// The process does not exist (any more), or the file is not in the expected format.
pub fn proc_cpu_ticks(pid: u32) -> io::Result<u64> {
    proc_cpu_split(pid).map(|t| t.user + t.system)
}

/// A process's CPU time split by where it was spent, in ticks of [`clock_ticks_per_sec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time running the program's own code (utime).
    pub user: u64,
    /// Time in the kernel on the program's behalf: system calls, and for a network server
    /// most of the network stack (stime).
    pub system: u64,
}

/// Like [`proc_cpu_ticks`], but user and system time apart: for a server on loopback the
/// system part is mostly the kernel's TCP/UDP work, the same for any server making the same
/// system calls, while the user part is what the server's own code costs.
///
/// # Errors
///
/// As [`proc_cpu_ticks`].
pub fn proc_cpu_split(pid: u32) -> io::Result<CpuTicks> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)?;
    parse_stat_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: unexpected format"),
        )
    })
}

/// utime and stime from the text of `/proc/PID/stat`.
fn parse_stat_ticks(stat: &str) -> Option<CpuTicks> {
    // Field 2, the command name, is in parentheses and may itself contain spaces and ')':
    // the fields after the *last* ')' are the unambiguous ones.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// The most memory process `pid` has had resident at once over its life (`VmHWM` in
/// `/proc/PID/status`), in KiB.
///
/// # Errors
///
/// The process does not exist (any more), or the file has no such line (a kernel thread).
pub fn peak_rss_kib(pid: u32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)?;
    parse_status_kib(&text, "VmHWM:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: no VmHWM line")))
}

/// The value of a `Name:   1234 kB` line of `/proc/PID/status`.
fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// Raises this process's soft limit on open files to its hard limit, and returns the
/// limit now in force. Each connection is a descriptor, and the usual soft limit (1024)
/// is far below what a load generator or a server opens; the hard limit is what the
/// administrator allows, so taking all of it needs no privilege.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::{CpuTicks, parse_stat_ticks, parse_status_kib, peak_rss_kib, proc_cpu_ticks};
    use std::time::{Duration, Instant};

    #[test]
    fn stat_parsing_uses_fields_after_the_last_paren() {
        // Field 2 holds a name with spaces and parentheses; utime=1234, stime=56.
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat_ticks(stat),
            Some(CpuTicks {
                user: 1234,
                system: 56
            })
        );
        assert_eq!(parse_stat_ticks("42 (x) S 1"), None);
        assert_eq!(parse_stat_ticks("no paren"), None);
    }

    #[test]
    fn own_cpu_ticks_grow_with_work() {
        let before = proc_cpu_ticks(std::process::id()).unwrap();
        let t0 = Instant::now();
        let mut x = 0_u64;
        while t0.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
        }
        let after = proc_cpu_ticks(std::process::id()).unwrap();
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn peak_memory_of_this_process() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(1234));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        // This test binary has at least a few hundred KiB resident.
        let own = peak_rss_kib(std::process::id()).unwrap();
        assert!(own > 100, "{own}");
        assert!(peak_rss_kib(u32::MAX).is_err());
    }
}
