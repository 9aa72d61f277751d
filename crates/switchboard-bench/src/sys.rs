//! What the benchmarks read from the operating system: CPU time and resident memory of a
//! process (from `/proc`), the file descriptor limit, the machine's load.

use std::{fs, io, time::Duration};

/// CPU time a process has used so far, every thread included.
///
/// Summed from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU), which is exact where
/// `getrusage` and `/proc/<pid>/stat` count in scheduler ticks of 10 ms; falls back to
/// `/proc/<pid>/stat` where schedstat is missing.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let mut total = 0u64;
    let mut found = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may end between the listing and the read: it is simply not counted.
        if let Ok(text) = fs::read_to_string(path) {
            if let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            {
                total += ns;
                found = true;
            }
        }
    }
    if found {
        return Ok(Duration::from_nanos(total));
    }
    stat_cpu_time(pid)
}

/// `utime + stime` from `/proc/<pid>/stat`, assuming the usual 100 ticks per second.
fn stat_cpu_time(pid: u32) -> io::Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

/// The CPU time of the calling process.
pub fn own_cpu_time() -> io::Result<Duration> {
    cpu_time(std::process::id())
}

/// Resident memory of a process, in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc status"))
}

/// Raises this process's soft limit on open files to its hard limit (inherited by the
/// processes it starts); returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The hard limit on open files: the most connections one process can hold. Raising it
/// needs `CAP_SYS_RESOURCE`.
pub fn fd_hard_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The share of every CPU's time spent busy (not idle, not waiting for disk) over the
/// next `span`: what else runs on the machine right now. Unlike the load average, it
/// does not remember the build that just finished.
pub fn busy_share(span: Duration) -> f64 {
    let before = cpu_ticks();
    std::thread::sleep(span);
    let after = cpu_ticks();
    match (before, after) {
        (Some((total0, idle0)), Some((total1, idle1))) if total1 > total0 => {
            1.0 - (idle1 - idle0) as f64 / (total1 - total0) as f64
        }
        _ => f64::NAN,
    }
}

/// All CPUs' ticks so far, and those spent idle or waiting for disk.
fn cpu_ticks() -> Option<(u64, u64)> {
    let ticks = cpu_line()?;
    let idle = ticks.get(IDLE)? + ticks.get(IOWAIT)?;
    Some((ticks.iter().sum(), idle))
}

/// CPU time the hypervisor gave to others while this machine's CPUs wanted to run, all
/// CPUs together (the `steal` column of `/proc/stat`, in ticks of 10 ms); zero on bare
/// metal. Time stolen from a server slows it without showing in its CPU time.
pub fn steal_time() -> Duration {
    let ticks = cpu_line().and_then(|ticks| ticks.get(STEAL).copied());
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

/// Columns of the `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal (the guest columns after them are already counted in user and nice).
const IDLE: usize = 3;
const IOWAIT: usize = 4;
const STEAL: usize = 7;

/// The `cpu` line of `/proc/stat` (every CPU together), its first eight columns.
fn cpu_line() -> Option<Vec<u64>> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    // The first word is the line's name, `cpu`.
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(STEAL + 1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (ticks.len() == STEAL + 1).then_some(ticks)
}

/// The CPU model and the number of CPUs this process may run on.
pub fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_line() {
        let (total, idle) = cpu_ticks().expect("/proc/stat has a cpu line");
        assert!(idle <= total);
        let busy = busy_share(Duration::from_millis(50));
        assert!((0.0..=1.0).contains(&busy) || busy.is_nan(), "{busy}");
    }

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        assert!(stat_cpu_time(pid).is_ok());
    }
}
