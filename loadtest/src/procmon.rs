//! Server resource use from `/proc`: peak resident memory and CPU time of one or more
//! process trees (a master and its workers, or nginx plus the registry behind it).
//!
//! A sampler thread reads `VmRSS` of every process in the trees every
//! [`SAMPLE_EVERY`]; the trees themselves are re-read every [`RESCAN_EVERY`] so workers
//! that start later are counted. CPU time is utime+stime (plus reaped children) summed
//! over the trees, as a delta between start and finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Samples at most (about 83 minutes): the sampler stops by itself even if never told.
const MAX_SAMPLES: u32 = 100_000;

/// What the monitored trees used while the monitor ran.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

pub struct Monitor {
    roots: Vec<u32>,
    cpu_start: f64,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<u64>,
}

impl Monitor {
    /// Starts sampling; fails if a root process does not exist.
    pub fn start(roots: &[u32]) -> Result<Monitor, String> {
        for pid in roots {
            if read_stat(*pid).is_none() {
                return Err(format!("--server-pid {pid}: no such process"));
            }
        }
        let roots = roots.to_vec();
        let cpu_start = tree_cpu(&roots);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let roots = roots.clone();
            let stop = stop.clone();
            std::thread::spawn(move || sample_until(&roots, &stop))
        };
        Ok(Monitor {
            roots,
            cpu_start,
            stop,
            sampler,
        })
    }

    pub fn finish(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        let peak_kib = self.sampler.join().unwrap_or(0);
        Usage {
            peak_rss_mib: peak_kib as f64 / 1024.0,
            cpu_seconds: (tree_cpu(&self.roots) - self.cpu_start).max(0.0),
        }
    }
}

/// CPU seconds this process has used so far (the load generator's own cost).
pub fn own_cpu_seconds() -> f64 {
    read_stat(std::process::id()).map_or(0.0, |s| s.cpu_seconds())
}

/// The summed resident memory of the trees right now, in MiB.
pub fn tree_rss_mib(roots: &[u32]) -> f64 {
    let kib: u64 = tree(roots).iter().filter_map(|pid| rss_kib(*pid)).sum();
    kib as f64 / 1024.0
}

/// Largest summed VmRSS (KiB) seen until `stop` is set.
fn sample_until(roots: &[u32], stop: &AtomicBool) -> u64 {
    let mut peak = 0;
    let mut pids = tree(roots);
    let mut scanned = Instant::now();
    for _ in 0..MAX_SAMPLES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if scanned.elapsed() >= RESCAN_EVERY {
            pids = tree(roots);
            scanned = Instant::now();
        }
        let total: u64 = pids.iter().filter_map(|pid| rss_kib(*pid)).sum();
        peak = peak.max(total);
        std::thread::sleep(SAMPLE_EVERY);
    }
    peak
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

struct Stat {
    ppid: u32,
    /// utime, stime, cutime, cstime in clock ticks.
    ticks: [u64; 4],
}

impl Stat {
    fn cpu_seconds(&self) -> f64 {
        self.ticks.iter().sum::<u64>() as f64 / clock_ticks()
    }
}

/// Linux reports times in USER_HZ, which is 100 on every architecture Linux supports
/// for userspace ABI purposes; `getconf CLK_TCK` confirms it when available.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &raw[raw.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as u32,
        ticks: [num(11)?, num(12)?, num(13)?, num(14)?],
    })
}

/// `roots` and all their descendants that are alive now.
fn tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        if let Some(kids) = children.get(&pid) {
            todo.extend(kids);
        }
    }
    out
}

fn tree_cpu(roots: &[u32]) -> f64 {
    tree(roots)
        .iter()
        .filter_map(|pid| read_stat(*pid))
        .map(|s| s.cpu_seconds())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_itself() {
        let me = std::process::id();
        let monitor = Monitor::start(&[me]).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::sleep(Duration::from_millis(120));
        let usage = monitor.finish();
        assert!(usage.peak_rss_mib > 0.0);
        assert!(tree_rss_mib(&[me]) > 0.0);
        assert!(usage.cpu_seconds >= 0.0);
        assert!(Monitor::start(&[u32::MAX]).is_err());
    }
}
