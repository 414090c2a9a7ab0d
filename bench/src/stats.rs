//! Latency percentiles and Jain's fairness index: the few statistics the
//! report needs, computed exactly from every sample.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Samples kept per client at most; past that, throughput is still counted
/// but latency comes from the first samples (bounds memory on long runs).
pub const MAX_SAMPLES_PER_CLIENT: usize = 2_000_000;

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn record(&mut self, elapsed: Duration) {
        if self.0.len() < MAX_SAMPLES_PER_CLIENT {
            self.0
                .push(elapsed.as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }

    pub fn merge(samples: impl IntoIterator<Item = Samples>) -> Samples {
        Samples(samples.into_iter().flat_map(|s| s.0).collect())
    }

    pub fn summary(mut self) -> Latency {
        self.0.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            f64::from(self.0[rank - 1]) / 1000.0
        };
        Latency {
            samples: self.0.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Jain's fairness index, (Σx)² / (n·Σx²): 1 when every client completed
/// the same number, 1/n when one client did everything.
pub fn jain(completions: &[u64]) -> f64 {
    let n = completions.len() as f64;
    let sum: f64 = completions.iter().map(|&x| x as f64).sum();
    let squares: f64 = completions.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (n * squares)
}

/// fdatasync calls per disk probe.
const PROBE_SYNCS: u64 = 8;

/// The disk's fdatasync latency right now, in ms (median): rewrite one
/// 4 KiB page of a preallocated file, then fdatasync, `PROBE_SYNCS` times.
/// On a shared machine this moves by 10-100× from minute to minute, and
/// every durable system's throughput moves with it.
pub fn disk_probe(dir: &Path) -> std::io::Result<f64> {
    let path = dir.join(format!(".baton-bench-probe-{}", std::process::id()));
    let probe = || -> std::io::Result<f64> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(&[0u8; 16 * 4096])?;
        file.sync_all()?;
        let page = [0x5a_u8; 4096];
        let mut times = Samples::default();
        for i in 0..PROBE_SYNCS {
            let started = Instant::now();
            file.write_all_at(&page, (i % 16) * 4096)?;
            file.sync_data()?;
            times.record(started.elapsed());
        }
        Ok(times.summary().p50_ms)
    };
    let result = probe();
    let _ = std::fs::remove_file(&path);
    result
}

/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s CPU times, fixed at 100 by
/// Linux's ABI on every architecture this runs on.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, every thread) a process has used so far, or
/// None when it cannot be read (it ended, or another user's).
pub fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields count from after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_count_this_process_work() {
        let before = process_cpu_seconds(None).expect("this process's own stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        let after = process_cpu_seconds(None).expect("this process's own stat");
        // 200 ms of spinning, in 10 ms ticks, on a machine that may be busy.
        assert!(after - before >= 0.05, "{before} -> {after}");
        assert_eq!(process_cpu_seconds(Some(u32::MAX)), None);
    }

    #[test]
    fn jain_bounds() {
        assert!((jain(&[5, 5, 5, 5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[8, 0, 0, 0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.record(Duration::from_millis(ms));
        }
        let latency = samples.summary();
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
    }
}
