//! Soak: mixed load against a real `baton serve` for a bounded time, sampling
//! the server's resident memory and open file descriptors every few seconds.
//! Fails (exit 1) if, after a warm-up, either grows beyond a bound, or if the
//! workload saw any anomaly (unexpected reply, torn txn, stale fence accepted).
//!
//! ```sh
//! cargo build --release -p baton-cli
//! cargo run --release -p baton-jepsen --bin soak -- --minutes 10
//! ```
//!
//! Options: `--minutes N` / `--seconds N` (default 10 minutes), `--clients N`
//! (default 16), `--bin PATH` (default `BATON_BIN`, else
//! `target/release/baton`, else `target/debug/baton`).
//!
//! The server runs with small in-memory bounds (10 000 buffered events,
//! idempotency records and ended-lock records) so they fill during the
//! warm-up (the first third of the run, at least 60 s); after that, memory
//! must stay flat.

use baton_jepsen::http::Gate;
use baton_jepsen::knobs::target_dir;
use baton_jepsen::recorder::Recorder;
use baton_jepsen::rng::Rng;
use baton_jepsen::server::ProcessServer;
use baton_jepsen::workload::{self, WorkloadConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// After the warm-up, RSS may exceed the warm-up's peak by this factor...
const RSS_GROWTH_FACTOR: f64 = 1.25;
/// ... plus this much (allocator slack), in KiB.
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// After the warm-up, open fds may exceed the warm-up's peak by this many.
const FD_SLACK: usize = 16;
/// Time between samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Length of one workload round (each round starts fresh client histories).
const ROUND: Duration = Duration::from_secs(30);

struct Args {
    run_time: Duration,
    clients: usize,
    bin: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut run_time = Duration::from_secs(600);
    let mut clients = 16;
    let mut bin = std::env::var_os("BATON_BIN").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag}: {text:?} is not a whole number"))
        };
        match flag.as_str() {
            "--minutes" => run_time = Duration::from_secs(60 * number(value()?)?),
            "--seconds" => run_time = Duration::from_secs(number(value()?)?),
            "--clients" => clients = number(value()?)? as usize,
            "--bin" => bin = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err(
                    "usage: soak [--minutes N | --seconds N] [--clients N] [--bin PATH]".into(),
                );
            }
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    let bin = bin.unwrap_or_else(|| {
        let release = target_dir().join("release").join("baton");
        if release.exists() {
            release
        } else {
            target_dir().join("debug").join("baton")
        }
    });
    Ok(Args {
        run_time,
        clients,
        bin,
    })
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    std::process::exit(soak(args).await);
}

async fn soak(args: Args) -> i32 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config_path = dir.path().join("baton.toml");
    std::fs::write(
        &config_path,
        "event_buffer = 10000\nsnapshot_every_commands = 20000\n\n[limits]\nidempotency_entries = 10000\nended_records = 10000\n",
    )
    .expect("the config file writes");
    let config_arg = config_path.display().to_string();
    let mut server = match ProcessServer::start(
        &args.bin,
        &dir.path().join("data"),
        &["--config", &config_arg],
    )
    .await
    {
        Ok(server) => server,
        Err(error) => {
            eprintln!("soak: {error}");
            return 2;
        }
    };
    let url = server.url();
    println!(
        "soak: {} clients against {} (pid {}) for {} s, sampling every {} s",
        args.clients,
        args.bin.display(),
        server.pid().unwrap_or(0),
        args.run_time.as_secs(),
        SAMPLE_EVERY.as_secs()
    );
    let started = Instant::now();
    let warm_up = (args.run_time / 3).max(Duration::from_secs(60));
    let mut samples: Vec<Sample> = Vec::new();
    let mut operations = 0usize;
    let mut anomalies = Vec::new();
    let mut seed = Rng::seed_from_time();
    let mut round = 0u64;
    while started.elapsed() < args.run_time {
        let remaining = args.run_time.saturating_sub(started.elapsed());
        let recorder = Recorder::new();
        let config = WorkloadConfig {
            first_client: 1 + round * 1000,
            ..WorkloadConfig::new(args.clients, usize::MAX, ROUND.min(remaining), seed)
        };
        let gate = Gate::new(Some(url.clone()));
        let load = {
            let (config, recorder) = (config.clone(), recorder.clone());
            tokio::spawn(async move { workload::run(&config, gate, recorder).await })
        };
        while !load.is_finished() {
            if samples
                .last()
                .is_none_or(|s| started.elapsed() >= s.at + SAMPLE_EVERY)
            {
                let (Some(rss_kib), Some(fds)) = (server.rss_kib(), server.open_fds()) else {
                    eprintln!("soak: the server is gone: {}", server.log_tail());
                    return 1;
                };
                let sample = Sample {
                    at: started.elapsed(),
                    rss_kib,
                    fds,
                };
                println!(
                    "soak: {:>5} s  rss {:>7} KiB  fds {:>4}  ops so far {operations}",
                    sample.at.as_secs(),
                    sample.rss_kib,
                    sample.fds
                );
                samples.push(sample);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = load.await;
        let history = recorder.history();
        operations += history.operations();
        anomalies.extend(history.anomalies);
        seed = seed.wrapping_add(1);
        round += 1;
    }
    let _ = server.kill().await;
    verdict(&samples, warm_up, operations, &anomalies)
}

fn verdict(
    samples: &[Sample],
    warm_up: Duration,
    operations: usize,
    anomalies: &[baton_jepsen::recorder::Anomaly],
) -> i32 {
    let (warm, steady): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.at < warm_up);
    let peak_rss = warm.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = warm.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_bound = (peak_rss as f64 * RSS_GROWTH_FACTOR) as u64 + RSS_SLACK_KIB;
    let fd_bound = peak_fds + FD_SLACK;
    let max_rss = steady.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = steady.iter().map(|s| s.fds).max().unwrap_or(0);
    let first_rss = steady.first().map_or(0, |s| s.rss_kib);
    let last_rss = steady.last().map_or(0, |s| s.rss_kib);
    println!(
        "soak: {operations} operations; warm-up ({} s): peak rss {peak_rss} KiB, peak fds {peak_fds}; after it ({} samples): rss {first_rss} → {last_rss} KiB (max {max_rss}, bound {rss_bound}), fds max {max_fds} (bound {fd_bound}); {} anomalies",
        warm_up.as_secs(),
        steady.len(),
        anomalies.len()
    );
    let mut failed = false;
    if steady.len() < 3 {
        println!("soak: FAIL: fewer than 3 samples after the warm-up; run longer");
        failed = true;
    }
    if max_rss > rss_bound {
        println!("soak: FAIL: memory grew past the bound after the warm-up");
        failed = true;
    }
    if max_fds > fd_bound {
        println!("soak: FAIL: open file descriptors grew past the bound after the warm-up");
        failed = true;
    }
    for anomaly in anomalies.iter().take(10) {
        println!("soak: ANOMALY {}: {}", anomaly.kind, anomaly.detail);
    }
    failed |= !anomalies.is_empty();
    if failed {
        1
    } else {
        println!("soak: OK");
        0
    }
}
