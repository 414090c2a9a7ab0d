//! `baton-bench`: the same coordination workloads against Baton and its
//! peers (etcd, Redis with `appendfsync always` and `everysec`, PostgreSQL)
//! in one run, printed as a Markdown table of absolute figures and
//! Baton/peer ratios and written to `<results-dir>/<date>.{json,md}`.
//!
//! It only measures servers that are already running on loopback;
//! `bench/run.sh` starts them (and stops what it started). A benchmark,
//! never a test: nothing here runs in the test suite.

mod extras;
mod floor;
mod report;
mod stats;
mod systems;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;

use crate::extras::Extras;

/// The load generator shares the machine with the servers it measures, so
/// it spends as little CPU per request as it can; the same allocator as
/// `baton serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::report::{CellFailure, Machine, Report, RunSettings, SystemInfo};
use crate::systems::{System, SystemName};
use crate::workload::{Settings, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    about = "Benchmarks Baton against etcd, Redis and PostgreSQL, side by side in one run",
    after_help = "\
Usually run through bench/run.sh, which starts the servers first.

Examples:
  baton-bench --quick
  baton-bench --duration 5s --clients 1,16,64 --results-dir bench/results
  baton-bench --systems baton,etcd --workloads lock-contended --clients 64 --no-extras
  baton-bench floor --listen 127.0.0.1:17713    (the transport floor's server)
  baton-bench floor --axum --listen 127.0.0.1:17714   (the same through axum)"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// How long each cell (system × workload × clients) runs
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Client counts, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// A short run that fits in about a minute: --duration 400ms, fewer extras
    #[arg(long)]
    quick: bool,
    /// Run the whole matrix this many times and show each cell's median
    /// round (the disk of a shared machine is noisy)
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where the disk probe writes (put it on the servers' disk)
    #[arg(long)]
    probe_dir: Option<PathBuf>,
    /// Before each cell, wait (up to 10 s) until the disk's fdatasync
    /// median is at most this many ms: cells then start on a quiet disk
    #[arg(long)]
    quiet_disk_ms: Option<f64>,
    /// How long operations in flight at the deadline may still take
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Systems, comma-separated: baton, etcd, redis-always, redis-everysec,
    /// postgres, and the transport floor's floor-sdk, floor-raw,
    /// floor-axum-sdk and floor-axum-raw (a server that does no work:
    /// lock-uncontended only)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baton,etcd,redis-always,redis-everysec,postgres,floor-sdk,floor-raw,floor-axum-sdk,floor-axum-raw"
    )]
    systems: Vec<SystemName>,
    /// Workloads, comma-separated: lock-uncontended, lock-contended, cas-counter, counter-add, kv-put
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lock-uncontended,lock-contended,cas-counter,counter-add,kv-put"
    )]
    workloads: Vec<Workload>,
    #[arg(long, default_value = "http://127.0.0.1:17711")]
    baton_url: String,
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    etcd_url: String,
    /// Redis with appendonly yes, appendfsync always (durable)
    #[arg(long, default_value = "redis://127.0.0.1:6380")]
    redis_always_url: String,
    /// Redis with appendonly yes, appendfsync everysec (not durable)
    #[arg(long, default_value = "redis://127.0.0.1:6381")]
    redis_everysec_url: String,
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    postgres: String,
    /// `baton-bench floor`, the server that does no work
    #[arg(long, default_value = "http://127.0.0.1:17713")]
    floor_url: String,
    /// `baton-bench floor --axum`, the same through axum
    #[arg(long, default_value = "http://127.0.0.1:17714")]
    floor_axum_url: String,
    /// A system's server process, as system=pid (repeatable): each cell then
    /// reports that process's CPU per operation beside the load generator's
    #[arg(long = "server-pid", value_parser = parse_server_pid)]
    server_pids: Vec<(String, u32)>,
    /// A second, fresh `baton serve` for the Baton-only measurements
    #[arg(long)]
    extras_url: Option<String>,
    /// The process id of that server, for its memory
    #[arg(long)]
    extras_pid: Option<u32>,
    /// Skip the Baton-only measurements
    #[arg(long)]
    no_extras: bool,
    /// The restart benchmark binary (target/release/examples/restart_bench)
    #[arg(long)]
    restart_bench: Option<PathBuf>,
    /// Commands in the restart benchmark's log
    #[arg(long, default_value_t = 1_000_000)]
    restart_commands: u64,
    /// Watchers in the watch delivery measurement
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Keys loaded for the memory measurement
    #[arg(long, default_value_t = 100_000)]
    memory_keys: u64,
    /// Live sessions opened for the memory measurement
    #[arg(long, default_value_t = 10_000)]
    memory_sessions: u64,
    /// Write <date>.json, <date>.md and latest.md here
    #[arg(long)]
    results_dir: Option<PathBuf>,
}

fn parse_server_pid(text: &str) -> Result<(String, u32), String> {
    let (system, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not system=pid, e.g. baton=1234"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} in {text:?} is not a process id"))?;
    Ok((system.to_string(), pid))
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve the transport floor: canned answers to lock acquire and
    /// release, no work, one thread (until killed)
    Floor {
        #[arg(long, default_value = "127.0.0.1:17713")]
        listen: std::net::SocketAddr,
        /// Serve through axum on a multi-thread runtime, as `baton serve`
        /// does, instead of one hand-written thread
        #[arg(long)]
        axum: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(Command::Floor { listen, axum }) = args.command {
        return if axum {
            floor::serve_axum(listen)
        } else {
            floor::serve(listen)
        };
    }
    if args.quick {
        args.duration = Duration::from_millis(400);
        args.grace = args.grace.min(Duration::from_secs(5));
    }
    anyhow::ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| (1..=1000).contains(&c)),
        "--clients must be between 1 and 1000"
    );
    anyhow::ensure!(
        (1..=20).contains(&args.rounds),
        "--rounds must be between 1 and 20"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn system_of(args: &Args, name: SystemName) -> System {
    match name {
        SystemName::Baton => System::Baton {
            url: args.baton_url.clone(),
        },
        SystemName::Etcd => System::Etcd {
            url: args.etcd_url.clone(),
        },
        SystemName::RedisAlways => System::Redis {
            name: "redis-always".into(),
            url: args.redis_always_url.clone(),
        },
        SystemName::RedisEverysec => System::Redis {
            name: "redis-everysec".into(),
            url: args.redis_everysec_url.clone(),
        },
        SystemName::Postgres => System::Postgres {
            conninfo: args.postgres.clone(),
        },
        SystemName::FloorSdk | SystemName::FloorRaw => System::Floor {
            url: args.floor_url.clone(),
            axum: false,
            raw: name == SystemName::FloorRaw,
        },
        SystemName::FloorAxumSdk | SystemName::FloorAxumRaw => System::Floor {
            url: args.floor_axum_url.clone(),
            axum: true,
            raw: name == SystemName::FloorAxumRaw,
        },
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = started_unix;
    let settings = Settings {
        duration: args.duration,
        grace: args.grace,
    };

    let mut systems = Vec::new();
    let mut infos = Vec::new();
    for &name in &args.systems {
        let system = system_of(&args, name);
        let version = tokio::time::timeout(Duration::from_secs(10), system.setup())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10 s")))
            .map_err(|e| format!("{e:#}"));
        match &version {
            Ok(v) => eprintln!("{:>15}: {v}", system.name()),
            Err(e) => eprintln!("{:>15}: UNREACHABLE, skipped: {e}", system.name()),
        }
        infos.push(SystemInfo {
            name: system.name().to_string(),
            durable: system.durable(),
            version: version.clone(),
        });
        if version.is_ok() {
            systems.push(system);
        }
    }

    let probe_dir = args.probe_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut rounds: Vec<workload::CellResult> = Vec::new();
    let mut failures = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        for &workload in &args.workloads {
            for &clients in &args.clients {
                for system in &systems {
                    if !system.runs(workload) {
                        continue;
                    }
                    let (disk_fsync_ms, quiet_wait) =
                        probe_disk(&probe_dir, args.quiet_disk_ms).await?;
                    let server_pid = args
                        .server_pids
                        .iter()
                        .find(|(name, _)| name == system.name())
                        .map(|&(_, pid)| pid);
                    let cpu_before = (
                        server_pid.and_then(|pid| stats::process_cpu_seconds(Some(pid))),
                        stats::process_cpu_seconds(None),
                    );
                    let cell = workload::run_cell(
                        system,
                        workload,
                        clients,
                        settings,
                        run_id * 100 + round as u64,
                        disk_fsync_ms,
                    )
                    .await;
                    match cell {
                        Ok(mut cell) => {
                            cell.cpu = cpu_per_op(cpu_before, server_pid, cell.completed);
                            cell.quiet_wait_s = quiet_wait.as_secs_f64();
                            cell.disk_fsync_after_ms = probe_disk(&probe_dir, None).await?.0;
                            eprintln!(
                                "{:>16} ×{clients:<3} {:>15}: {:>9.0} {}  p50 {:.2} ms  p99 {:.2} ms  fairness {:.3}  disk fsync {:.2}/{:.2} ms  {}",
                                workload.name(),
                                system.name(),
                                cell.throughput,
                                workload.unit(),
                                cell.latency.p50_ms,
                                cell.latency.p99_ms,
                                cell.fairness,
                                disk_fsync_ms,
                                cell.disk_fsync_after_ms,
                                if cell.check.passed {
                                    "check ok".to_string()
                                } else {
                                    format!("CHECK FAILED: {}", cell.check.detail)
                                }
                            );
                            rounds.push(cell);
                        }
                        Err(error) => {
                            eprintln!(
                                "{:>16} ×{clients:<3} {:>15}: did not run: {error:#}",
                                workload.name(),
                                system.name()
                            );
                            failures.push(CellFailure {
                                system: system.name().to_string(),
                                workload,
                                clients,
                                error: format!("{error:#}"),
                            });
                        }
                    }
                }
            }
        }
    }
    let mut cells = Vec::new();
    for &workload in &args.workloads {
        for &clients in &args.clients {
            for system in &systems {
                let (same, rest): (Vec<_>, Vec<_>) = rounds.into_iter().partition(|c| {
                    c.system == system.name() && c.workload == workload && c.clients == clients
                });
                rounds = rest;
                cells.extend(workload::median_rounds(same));
            }
        }
    }

    let extras = if args.no_extras {
        Extras::default()
    } else {
        run_extras(&args, run_id).await
    };

    let mut report = Report {
        date: report::utc_date(started_unix),
        started_unix,
        // bench/run.sh names itself, the command a reader would repeat.
        command: std::env::var("BATON_BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        settings: RunSettings {
            duration_s: args.duration.as_secs_f64(),
            grace_s: args.grace.as_secs_f64(),
            clients: args.clients.clone(),
            redis_retry_mean_ms: systems::redis::RETRY_MEAN.as_secs_f64() * 1000.0,
            rounds: args.rounds,
            quiet_disk_ms: args.quiet_disk_ms,
        },
        systems: infos,
        cells,
        cell_failures: failures,
        targets: Vec::new(),
        extras,
    };
    report.evaluate_targets();
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(dir) = &args.results_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = dir.join(format!("{}.json", report.date));
        let md = dir.join(format!("{}.md", report.date));
        std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", json.display()))?;
        std::fs::write(&md, &markdown).with_context(|| format!("cannot write {}", md.display()))?;
        std::fs::write(dir.join("latest.md"), &markdown)?;
        eprintln!("wrote {}, {} and latest.md", json.display(), md.display());
    }
    Ok(())
}

/// CPU per operation since `before` (the server's, the load generator's).
fn cpu_per_op(
    before: (Option<f64>, Option<f64>),
    server_pid: Option<u32>,
    completed: u64,
) -> Option<workload::CpuPerOp> {
    let ops = completed.max(1) as f64;
    let client = stats::process_cpu_seconds(None)? - before.1?;
    let server = match (
        before.0,
        server_pid.and_then(|p| stats::process_cpu_seconds(Some(p))),
    ) {
        (Some(before), Some(after)) => Some((after - before) / ops * 1e6),
        _ => None,
    };
    Some(workload::CpuPerOp {
        server_us: server,
        client_us: client / ops * 1e6,
    })
}

/// Longest wait for a quiet disk before one cell.
const QUIET_WAIT_MAX: Duration = Duration::from_secs(10);

/// The disk's fdatasync median now; with `quiet_ms`, first waits (bounded)
/// until it is at most that. Returns the last probe and the time waited.
async fn probe_disk(
    dir: &std::path::Path,
    quiet_ms: Option<f64>,
) -> anyhow::Result<(f64, Duration)> {
    let started = std::time::Instant::now();
    loop {
        let probe_in = dir.to_path_buf();
        let fsync_ms = tokio::task::spawn_blocking(move || stats::disk_probe(&probe_in))
            .await?
            .with_context(|| format!("disk probe in {}", dir.display()))?;
        let waited = started.elapsed();
        match quiet_ms {
            Some(limit) if fsync_ms > limit && waited < QUIET_WAIT_MAX => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => return Ok((fsync_ms, waited)),
        }
    }
}

/// The Baton-only measurements, each bounded; a failure is reported, not fatal.
async fn run_extras(args: &Args, run_id: u64) -> Extras {
    let Some(url) = args.extras_url.as_deref() else {
        eprintln!("Baton-only measurements skipped: no --extras-url");
        return Extras::default();
    };
    let quick = args.quick;
    let mut extras = Extras::default();
    let (rounds, budget) = if quick { (100, 2) } else { (500, 10) };
    eprintln!("extras: lock handoff");
    extras.handoff = Some(
        extras::handoff(url, run_id, rounds, Duration::from_secs(budget))
            .await
            .map_err(|e| format!("{e:#}")),
    );
    if let Some(pid) = args.extras_pid {
        eprintln!(
            "extras: memory with {} keys and {} sessions",
            args.memory_keys, args.memory_sessions
        );
        let memory = extras::memory(url, pid, run_id, args.memory_keys, args.memory_sessions);
        extras.memory = Some(
            tokio::time::timeout(Duration::from_secs(300), memory)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("took longer than 300 s")))
                .map_err(|e| format!("{e:#}")),
        );
    }
    eprintln!("extras: watch delivery with {} watchers", args.watchers);
    let (events, interval) = if quick { (20, 25) } else { (100, 20) };
    extras.watch = Some(
        extras::watch(
            url,
            run_id,
            args.watchers,
            events,
            Duration::from_millis(interval),
        )
        .await
        .map_err(|e| format!("{e:#}")),
    );
    if let Some(binary) = &args.restart_bench {
        eprintln!(
            "extras: restart with a {}-command log",
            args.restart_commands
        );
        extras.restart = Some(
            extras::restart(binary, args.restart_commands, Duration::from_secs(600))
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    extras
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_pids_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(parse_server_pid("baton=1234"), Ok(("baton".into(), 1234)));
        let missing = parse_server_pid("baton").unwrap_err();
        assert!(missing.contains("system=pid"), "{missing}");
        let bad = parse_server_pid("baton=12x").unwrap_err();
        assert!(bad.contains("not a process id"), "{bad}");
    }
}
