//! Whole runs: a workload plus a fault injector, then every check.
//!
//! - [`crash_run`]: the real `baton serve`, SIGKILLed at random moments
//!   under load and restarted on the same data dir.
//! - [`storage_fault_run`]: an in-process server whose log fails an append
//!   (nothing written) or loses an append's acknowledgement (written, but
//!   reported failed) at random moments; the node fail-stops and is
//!   restarted on the same data dir.
//!
//! After every restart, before clients resume, every acknowledged write must
//! still be there ([`invariants::acknowledged_writes_survive`]).

use baton_server::ServeConfig;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

use crate::http::{Agent, Gate};
use crate::invariants;
use crate::recorder::{Anomaly, Recorder};
use crate::report::RunReport;
use crate::rng::Rng;
use crate::server::{InProcessServer, ProcessServer};
use crate::workload::{self, WorkloadConfig};

/// How a crash run injects its kills.
#[derive(Clone, Debug)]
pub struct CrashPlan {
    /// Time between a restart and the next kill, in ms (uniform in this range).
    pub kill_every_ms: (u64, u64),
    /// Extra `baton serve` flags (e.g. frequent snapshots).
    pub serve_args: Vec<String>,
}

impl Default for CrashPlan {
    fn default() -> Self {
        CrashPlan {
            kill_every_ms: (400, 2500),
            serve_args: Vec::new(),
        }
    }
}

fn random_pause(rng: &mut Rng, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.between(lo as i64, hi as i64) as u64)
}

/// The workload against the real binary, killed with SIGKILL and restarted
/// at random moments until the run time is over.
pub async fn crash_run(
    name: &str,
    bin: &Path,
    data_dir: &Path,
    config: &WorkloadConfig,
    plan: &CrashPlan,
) -> RunReport {
    let started = std::time::Instant::now();
    let recorder = Recorder::new();
    let args: Vec<&str> = plan.serve_args.iter().map(String::as_str).collect();
    let mut server = match ProcessServer::start(bin, data_dir, &args).await {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    };
    let url = server.url();
    let gate = Gate::new(Some(url.clone()));
    let workload = {
        let (config, gate, recorder) = (config.clone(), gate.clone(), recorder.clone());
        tokio::spawn(async move { workload::run(&config, gate, recorder).await })
    };
    let mut rng = Rng::new(config.seed ^ 0x00c0_ffee);
    let deadline = Instant::now() + config.run_time;
    let mut extra: Vec<Anomaly> = Vec::new();
    loop {
        let next = Instant::now() + random_pause(&mut rng, plan.kill_every_ms);
        if next >= deadline || workload.is_finished() {
            break;
        }
        tokio::time::sleep_until(next).await;
        if let Some(status) = server.exited() {
            extra.push(Anomaly {
                kind: "server died".into(),
                detail: format!(
                    "baton serve exited by itself ({status}): {}",
                    server.log_tail()
                ),
            });
            break;
        }
        server.kill().await.unwrap_or_else(|e| panic!("{e}"));
        gate.close();
        recorder.fault("kill", format!("SIGKILL #{} of baton serve", server.starts));
        let before = recorder.history();
        match server.spawn().await {
            Ok(took) => recorder.fault(
                "restart",
                format!("healthy again after {} ms", took.as_millis()),
            ),
            Err(error) => {
                extra.push(Anomaly {
                    kind: "restart failed".into(),
                    detail: error,
                });
                break;
            }
        }
        extra.extend(invariants::acknowledged_writes_survive(&url, &before, &recorder).await);
        gate.open(url.clone());
    }
    if workload.await.is_err() {
        extra.push(Anomaly {
            kind: "workload panicked".into(),
            detail: "see the test output".into(),
        });
    }
    eprintln!(
        "jepsen: {name}: clients done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let audit = if server.exited().is_none() {
        Some(invariants::audit_trail(&url).await)
    } else {
        None
    };
    let _ = server.kill().await;
    RunReport::conclude(name, config.seed, started, &recorder, audit, extra)
}

/// Which storage fault to inject next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFault {
    /// The append fails and writes nothing.
    FailAppend,
    /// The append is written but reports failure (lost acknowledgement).
    LoseAck,
}

/// The workload against an in-process server whose log fails at random
/// moments; each failure must fail-stop the node (UNAVAILABLE, readyz 503),
/// and a restart on the same data dir must lose nothing acknowledged.
pub async fn storage_fault_run(
    name: &str,
    data_dir: &Path,
    config: &WorkloadConfig,
    fault_every_ms: (u64, u64),
) -> RunReport {
    let started = std::time::Instant::now();
    let recorder = Recorder::new();
    let serve_config = ServeConfig {
        snapshot_every_commands: 3000,
        ..ServeConfig::default()
    };
    let mut server = InProcessServer::start(data_dir, serve_config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gate = Gate::new(Some(server.url.clone()));
    let workload = {
        let (config, gate, recorder) = (config.clone(), gate.clone(), recorder.clone());
        tokio::spawn(async move { workload::run(&config, gate, recorder).await })
    };
    let mut rng = Rng::new(config.seed ^ 0xd15c);
    let deadline = Instant::now() + config.run_time;
    let mut extra = Vec::new();
    let probe = Agent::new("jepsen-probe");
    loop {
        let next = Instant::now() + random_pause(&mut rng, fault_every_ms);
        if next >= deadline || workload.is_finished() {
            break;
        }
        tokio::time::sleep_until(next).await;
        let fault = if rng.percent(50) {
            StorageFault::FailAppend
        } else {
            StorageFault::LoseAck
        };
        let injected_before = server.faults.injected_failures();
        match fault {
            StorageFault::FailAppend => server.faults.fail_next_appends(1),
            StorageFault::LoseAck => server.faults.lose_next_append_acks(1),
        }
        // The next batch takes it (clients write all the time); bounded.
        let wait_until = Instant::now() + Duration::from_secs(10);
        while server.faults.injected_failures() == injected_before && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if server.faults.injected_failures() == injected_before {
            server.faults.heal();
            continue;
        }
        recorder.fault(
            match fault {
                StorageFault::FailAppend => "append failed",
                StorageFault::LoseAck => "append ack lost",
            },
            "the log reported an append error",
        );
        // Fail-stop: the node now refuses writes and says so on /readyz.
        let ready = probe
            .get(&server.url, "/readyz", Duration::from_secs(5))
            .await;
        if ready.status() != Some(503) {
            extra.push(Anomaly {
                kind: "not fail-stop".into(),
                detail: format!(
                    "after a storage failure /readyz answered {}",
                    ready.describe()
                ),
            });
        }
        gate.close();
        let before = recorder.history();
        if let Err(error) = server.stop().await {
            extra.push(Anomaly {
                kind: "stop failed".into(),
                detail: error,
            });
            return RunReport::conclude(name, config.seed, started, &recorder, None, extra);
        }
        let restart = Instant::now();
        server = match InProcessServer::start(data_dir, serve_config.clone()).await {
            Ok(server) => server,
            Err(error) => {
                extra.push(Anomaly {
                    kind: "restart failed".into(),
                    detail: error,
                });
                gate.close();
                let _ = workload.await;
                return RunReport::conclude(name, config.seed, started, &recorder, None, extra);
            }
        };
        recorder.fault(
            "restart",
            format!(
                "in-process server healthy after {} ms",
                restart.elapsed().as_millis()
            ),
        );
        extra
            .extend(invariants::acknowledged_writes_survive(&server.url, &before, &recorder).await);
        gate.open(server.url.clone());
    }
    if workload.await.is_err() {
        extra.push(Anomaly {
            kind: "workload panicked".into(),
            detail: "see the test output".into(),
        });
    }
    let audit = Some(invariants::audit_trail(&server.url).await);
    let _ = server.stop().await;
    RunReport::conclude(name, config.seed, started, &recorder, audit, extra)
}
