//! What the kernel says a process has used: CPU time, run-queue waits,
//! memory, and how busy the whole machine was.

use std::process::Command;

use anyhow::Context as _;

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let (user, system) = cpu_user_system(pid)?;
    Ok(user + system)
}

/// A process's user and system CPU seconds apart: the user part is the
/// program's own work, the system part mostly the kernel's TCP on its behalf.
pub fn cpu_user_system(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let (user, system) = (fields[11].parse::<f64>()?, fields[12].parse::<f64>()?);
    Ok((user / clock_ticks(), system / clock_ticks()))
}

/// This process's own user and system CPU seconds, to the microsecond
/// (`getrusage`): `/proc/<pid>/stat` counts in clock ticks of 10 ms, and the
/// bare loop at scenario a uses one or two of them in its window, too coarse
/// to compare with anything.
pub fn own_cpu_user_system() -> anyhow::Result<(f64, f64)> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, and RUSAGE_SELF.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((secs(usage.ru_utime), secs(usage.ru_stime)))
}

/// [`own_cpu_user_system`], user and system together.
pub fn own_cpu_seconds() -> anyhow::Result<f64> {
    let (user, system) = own_cpu_user_system()?;
    Ok(user + system)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux build),
/// asked once: `cpu_seconds` runs in every snapshot and round.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Seconds the threads of a process have waited on a run queue for a CPU
/// (the second field of `/proc/<pid>/task/<tid>/schedstat`). On a box where
/// everything shares two cores this is where scheduling tails come from:
/// a thread that is runnable but not running.
pub fn run_queue_wait_s(pid: u32) -> anyhow::Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between listing and reading; it is not counted.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(ns as f64 / 1e9)
}

/// Seconds during which at least one runnable task on the machine waited for
/// a CPU (pressure stall information, `/proc/pressure/cpu` "some total");
/// `None` on a kernel without it.
pub fn cpu_pressure_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let total = some
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))?;
    Some(total.parse::<f64>().ok()? / 1e6)
}

/// A `/proc/<pid>/status` field in KiB (VmHWM: peak resident set; VmRSS).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Held by each test here: a thread's wait leaves the process's sum when
    /// the thread ends, so the other test's spinning thread, ending between
    /// two readings of `run_queue_wait_s`, would make the sum go down. In
    /// the library's test binary hundreds of tests ran beside these and the
    /// spinner rarely ended at that moment; here they are nearly alone.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn own_cpu_counts_a_spinning_thread() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let total = || own_cpu_seconds().unwrap();
        let before = total();
        // Spins until 25 ms of CPU are counted (a thread that has ended is
        // still in RUSAGE_SELF), giving up after 5 s of wall time.
        let spun = std::thread::spawn(move || {
            let t = Instant::now();
            while total() - before < 0.025 {
                if t.elapsed() > Duration::from_secs(5) {
                    return false;
                }
            }
            true
        });
        assert!(spun.join().unwrap(), "25 ms of CPU never showed");
        assert!(total() - before >= 0.025);
    }

    #[test]
    fn proc_figures_of_this_process_are_read() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        // Every thread's wait is summed: a busy thread of ours adds its own.
        let before = run_queue_wait_s(std::process::id()).unwrap();
        let spin = std::thread::spawn(|| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(20) {}
        });
        spin.join().unwrap();
        assert!(run_queue_wait_s(std::process::id()).unwrap() >= before);
        if let Some(p) = cpu_pressure_s() {
            assert!(p >= 0.0);
        }
    }
}
