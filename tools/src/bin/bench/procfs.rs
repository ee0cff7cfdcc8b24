//! Memory and CPU of a process, and of the machine, from `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports them in USER_HZ,
/// which is 100 on every architecture the kernel exports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
}

/// Reads `VmRSS`, `VmHWM` and user+system CPU of `pid`; `None` once it has gone.
pub fn read(pid: u32, t: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        t,
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        cpu_s: (utime + stime) as f64 / TICKS_PER_SECOND,
    })
}

/// User + system CPU seconds of `pids` together so far; `None` if any is gone or none is
/// given.
pub fn cpu_s_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| read(*pid, 0.0).map(|s| s.cpu_s))
        .sum()
}

/// Samples one process every `every` on a thread of its own until stopped.
pub struct Sampler {
    pub pid: u32,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match read(pid, started.elapsed().as_secs_f64()) {
                    Some(sample) => s
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(sample),
                    None => break,
                }
                std::thread::sleep(every);
            }
        });
        Sampler {
            pid,
            started,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// A reading right now (not stored), or the last stored one if the process is gone.
    pub fn now(&self) -> Option<Sample> {
        read(self.pid, self.started.elapsed().as_secs_f64()).or_else(|| self.last())
    }

    pub fn last(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .copied()
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The highest `VmHWM` seen.
    pub fn peak_kib(&self) -> u64 {
        self.samples().iter().map(|s| s.hwm_kib).max().unwrap_or(0)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Busy and total jiffies of all CPUs, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

pub fn machine_cpu() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Share of the machine's CPU time that was busy between two readings, 0 to 1.
pub fn busy_share(from: Option<CpuTimes>, to: Option<CpuTimes>) -> Option<f64> {
    let (a, b) = (from?, to?);
    let total = b.total.checked_sub(a.total)?;
    (total > 0).then(|| b.busy.saturating_sub(a.busy) as f64 / total as f64)
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Online CPUs.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
