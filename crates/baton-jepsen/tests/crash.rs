//! CI's Jepsen run: the real `baton serve` under 16 concurrent clients,
//! SIGKILLed at random moments and restarted on the same data dir, several
//! runs. Every run's history must be linearizable, lose no acknowledged write,
//! keep fencing tokens increasing and locks exclusive, and answer every lock
//! waiter by its deadline. A failing run saves its history under
//! `target/jepsen-failures/` and keeps its data dir.
//!
//! The same once more with the log in PostgreSQL (`--postgres`, a real
//! server: `BATON_TEST_POSTGRES`, default the local one, database `test`).
//!
//! Needs the `baton` binary: `scripts/test` builds it first; alone, run
//! `cargo build -p baton-cli` (or set `BATON_BIN`). Sizes: `BATON_JEPSEN_*`
//! (see `baton_jepsen::Knobs`).

use baton_jepsen::Knobs;
use baton_jepsen::scenarios::{CrashPlan, crash_run};
use baton_jepsen::workload::WorkloadConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_linearizable_across_kill_9_and_restart() {
    let knobs = Knobs::from_env();
    let (mut kills, mut operations, mut unknown) = (0, 0, 0);
    for run in 0..knobs.runs {
        let seed = knobs.seed.wrapping_add(run as u64);
        let config = WorkloadConfig {
            first_client: 1 + 100 * run as u64,
            waiter_slack_ms: knobs.waiter_slack_ms,
            ..WorkloadConfig::new(knobs.clients, knobs.ops_per_client, knobs.run_time, seed)
        };
        // Odd runs snapshot (and truncate the log) every few hundred
        // commands, so kills also land during and after snapshots.
        let plan = CrashPlan {
            serve_args: if run % 2 == 1 {
                vec!["--snapshot-every-commands".into(), "400".into()]
            } else {
                Vec::new()
            },
            ..CrashPlan::default()
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let report = crash_run(
            &format!("crash-{run}"),
            &knobs.baton_bin,
            &dir.path().join("data"),
            &config,
            &plan,
        )
        .await;
        eprintln!("jepsen: {report}");
        if !report.anomalies.is_empty() {
            eprintln!(
                "jepsen: data dir and server log kept in {}",
                dir.keep().display()
            );
        }
        report.assert_clean();
        let run_kills = report.faults_by_kind().get("kill").copied().unwrap_or(0);
        assert!(run_kills > 0, "run {run} injected no kill");
        kills += run_kills;
        operations += report.history.operations();
        unknown += report.history.unknown();
    }
    eprintln!(
        "jepsen: crash runs: {} runs, {operations} operations checked ({unknown} with unknown outcome), {kills} kill -9 + restart cycles, 0 anomalies",
        knobs.runs
    );
    let planned = knobs.runs as u64 * knobs.run_time.as_secs();
    assert!(
        kills as u64 >= planned / 3,
        "only {kills} kills in {planned} s of runs; expected one every ~1.5 s"
    );
}

/// One run with the log in PostgreSQL: a kill lands between a commit in
/// PostgreSQL and its answer, or during the commit, and the restarted
/// server waits for the killed one's connection (and writer lock) to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_linearizable_across_kill_9_with_the_log_in_postgres() {
    let knobs = Knobs::from_env();
    let conninfo = std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("t_jepsen_{}", std::process::id());
    let _cleanup = DropSchema(conninfo.clone(), schema.clone());
    let config = WorkloadConfig {
        first_client: 10_001,
        waiter_slack_ms: knobs.waiter_slack_ms,
        ..WorkloadConfig::new(
            knobs.clients,
            knobs.ops_per_client,
            knobs.run_time,
            knobs.seed.wrapping_add(10_000),
        )
    };
    let plan = CrashPlan {
        serve_args: vec![
            "--postgres".into(),
            conninfo,
            "--postgres-schema".into(),
            schema,
            "--snapshot-every-commands".into(),
            "400".into(),
        ],
        ..CrashPlan::default()
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let report = crash_run(
        "crash-postgres",
        &knobs.baton_bin,
        &dir.path().join("data"),
        &config,
        &plan,
    )
    .await;
    eprintln!("jepsen: {report}");
    report.assert_clean();
    let kills = report.faults_by_kind().get("kill").copied().unwrap_or(0);
    assert!(
        kills as u64 >= knobs.run_time.as_secs() / 3,
        "only {kills} kills in {:?}",
        knobs.run_time
    );
}

/// Drops the run's schema however the test ends (on a thread of its own:
/// the driver runs its own runtime, which cannot start on an async thread).
struct DropSchema(String, String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (conninfo, schema) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = postgres::Client::connect(&conninfo, postgres::NoTls) {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        })
        .join();
    }
}
