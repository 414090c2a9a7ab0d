//! Applied commands per second on one core, straight into the state machine
//! (no log, no network): `cargo bench -p baton-core`.

use baton_core::*;
use serde_json::json;
use std::time::Instant;

const COMMANDS: u64 = 1_000_000;

fn report(name: &str, commands: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<40} {:>12.0} commands/s  ({commands} in {secs:.3} s)",
        commands as f64 / secs
    );
}

fn acquire(keys: Vec<String>, wait_ms: u64) -> Op {
    Op::LockAcquire(LockAcquire {
        keys,
        mode: LockMode::Exclusive,
        ttl_ms: Some(30_000),
        wait_ms,
        lock_delay_ms: 0,
        read: false,
    })
}

fn main() {
    // Build every command first so the timing covers apply only.
    let keys: Vec<String> = (0..1024).map(|i| format!("bench/key-{i}")).collect();

    let mut machine = StateMachine::default();
    let mut seq = 0;
    let started = Instant::now();
    for i in 0..COMMANDS / 2 {
        let key = &keys[(i % 1024) as usize];
        seq += 1;
        let out = machine.apply(
            seq,
            1_000 + seq,
            &Command::new("agent", acquire(vec![key.clone()], 0)),
        );
        let Ok(Response::Lock(info)) = out.reply else {
            panic!("{:?}", out.reply)
        };
        seq += 1;
        machine.apply(
            seq,
            1_000 + seq,
            &Command::new(
                "agent",
                Op::LockRelease {
                    lock_id: info.lock_id,
                },
            ),
        );
    }
    report("uncontended acquire + release", COMMANDS, started);

    let value = json!({"payload": "x".repeat(200)});
    let puts: Vec<Command> = (0..COMMANDS)
        .map(|i| {
            Command::new(
                "agent",
                Op::Put {
                    key: keys[(i % 1024) as usize].clone(),
                    value: value.clone(),
                    if_version: None,
                    if_absent: false,
                    ttl_ms: None,
                },
            )
        })
        .collect();
    let mut machine = StateMachine::default();
    let started = Instant::now();
    for (i, put) in puts.iter().enumerate() {
        machine.apply(i as u64 + 1, 1_000, put);
    }
    report("kv put (256-byte values, 1024 keys)", COMMANDS, started);

    // 64 waiters on one key: each release hands the lock to the next in line.
    let mut machine = StateMachine::default();
    let mut seq = 0;
    let mut holder = None;
    let mut applied = 0u64;
    let started = Instant::now();
    for round in 0..COMMANDS / 128 {
        for client in 0..64 {
            seq += 1;
            let agent = format!("client-{client}-{round}");
            let out = machine.apply(
                seq,
                1_000,
                &Command::new(agent.as_str(), acquire(vec!["bench/hot".into()], 60_000)),
            );
            if let Ok(Response::Lock(info)) = out.reply
                && info.status == LockStatus::Held
            {
                holder = Some((agent, info.lock_id));
            }
        }
        for _ in 0..64 {
            let (agent, lock_id) = holder.take().expect("someone holds the lock");
            seq += 1;
            let out = machine.apply(
                seq,
                1_000,
                &Command::new(agent.as_str(), Op::LockRelease { lock_id }),
            );
            if let Some(wakeup) = out.wakeups.first()
                && let Ok(Response::Lock(info)) = &wakeup.reply
            {
                holder = Some((info.agent.clone(), info.lock_id));
            }
        }
        applied += 128;
    }
    report("contended handoff (64 waiters, one key)", applied, started);

    // The writer is stalled while it copies the state for a background
    // snapshot; encoding the copy happens on another thread.
    for (keys, versions) in [(100_000u64, 1u64), (20_000, 16)] {
        let mut machine = StateMachine::default();
        let mut seq = 0;
        for v in 0..versions {
            for k in 0..keys {
                seq += 1;
                machine.apply(
                    seq,
                    1_000 + v,
                    &Command::new(
                        "agent",
                        Op::Put {
                            key: format!("bench/state-{k}"),
                            value: value.clone(),
                            if_version: None,
                            if_absent: false,
                            ttl_ms: None,
                        },
                    ),
                );
            }
        }
        let started = Instant::now();
        let copy = machine.clone();
        let copied = started.elapsed();
        let started = Instant::now();
        let bytes = copy.snapshot().len();
        println!(
            "state copy, {keys} keys x {versions} versions {:>9.1} µs  (encode {:.1} ms, {} MB)",
            copied.as_secs_f64() * 1e6,
            started.elapsed().as_secs_f64() * 1e3,
            bytes >> 20
        );
    }
}
