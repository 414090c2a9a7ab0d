//! Restart time with a 1,000,000-command log and a snapshot near its end:
//! `cargo run --release -p baton-server --example restart_bench [-- COMMANDS]`.
//!
//! Builds the log directly (apply + append in batches, like the sequencer),
//! saves a snapshot 10,000 commands before the end, then times what
//! `baton serve` does at startup: open the store, load the snapshot, replay
//! the tail.

use baton_core::{Command, LockAcquire, LockMode, Op, Response, StateMachine};
use baton_log::{FileLog, Log, Snapshot};
use baton_server::{Sequencer, ServeConfig, encode_record};
use serde_json::json;
use std::time::Instant;

const BATCH: usize = 4096;
const TAIL: u64 = 10_000;

fn main() -> anyhow::Result<()> {
    let commands: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let mut log = FileLog::open(dir.path())?;
    let mut machine = StateMachine::default();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut held: Option<u64> = None;
    let mut seq = 0u64;
    let time = 1_800_000_000_000u64;
    while seq < commands {
        seq += 1;
        let agent = format!("agent-{}", seq % 64);
        let command = match (seq % 4, held) {
            (0, Some(lock_id)) => Command::new("locker", Op::LockRelease { lock_id }),
            (0, None) => Command::new(
                "locker",
                Op::LockAcquire(LockAcquire {
                    keys: vec!["bench/lock".into()],
                    mode: LockMode::Exclusive,
                    ttl_ms: Some(600_000),
                    wait_ms: 0,
                    lock_delay_ms: 0,
                    read: false,
                }),
            ),
            _ => Command::new(
                agent,
                Op::Put {
                    key: format!("bench/key-{}", seq % 10_000),
                    value: json!({"n": seq, "pad": "x".repeat(64)}),
                    if_version: None,
                    if_absent: false,
                    ttl_ms: None,
                },
            ),
        };
        let out = machine.apply(seq, time + seq, &command);
        match &out.reply {
            Ok(Response::Lock(info)) => held = Some(info.lock_id),
            Ok(Response::Release(_)) => held = None,
            _ => {}
        }
        batch.push(encode_record(time + seq, &command));
        if batch.len() == BATCH || seq == commands {
            log.append(&batch)?;
            batch.clear();
        }
        if seq == commands.saturating_sub(TAIL) {
            log.append(&batch)?;
            batch.clear();
            log.save_snapshot(&Snapshot {
                seq,
                data: machine.snapshot(),
            })?;
        }
    }
    println!(
        "built a {commands}-command log in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(log);

    let config = ServeConfig {
        data_dir: dir.path().to_path_buf(),
        ..ServeConfig::default()
    };
    {
        // The parts of a restart, one by one (the total below does them all).
        let log = FileLog::open(dir.path())?;
        let t = Instant::now();
        let snapshot = log.load_snapshot()?.expect("a snapshot was saved");
        let loaded = t.elapsed();
        let t = Instant::now();
        StateMachine::restore(&snapshot.data, Default::default())?;
        println!(
            "parts: load a {:.1} MB snapshot {:.0} ms, restore it {:.0} ms",
            snapshot.data.len() as f64 / 1e6,
            loaded.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let started = Instant::now();
    let log = FileLog::open(dir.path())?;
    let opened = started.elapsed();
    let sequencer = Sequencer::start(Box::new(log), &config)?;
    let recovered = started.elapsed();
    let revision = sequencer.shared().machine.read().expect("state").revision();
    assert_eq!(revision, commands, "recovered to the end of the log");
    println!(
        "restart: open {:.0} ms, snapshot + replay of {TAIL} commands, total {:.0} ms (revision {revision})",
        opened.as_secs_f64() * 1000.0,
        recovered.as_secs_f64() * 1000.0
    );
    sequencer.shutdown()?;
    Ok(())
}
