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

#[cfg(test)]
mod tests {
    use super::*;

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
