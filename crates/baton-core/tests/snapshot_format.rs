//! The snapshot's bytes are a stored format: a snapshot written by an earlier
//! build must restore, and the same state must encode to the same bytes
//! whatever collections hold it in memory. `fixtures/snapshot.json` is the
//! scenario below as encoded once the limits in force were recorded;
//! `BATON_BLESS=1` rewrites it (only ever on purpose).
//! `fixtures/snapshot-before-limits.json` is the same scenario written by
//! the build before that (and before the state moved to persistent maps),
//! and `fixtures/snapshot-before-kv-bytes.json` by the build before keys
//! and queues recorded what they count against `max_kv_bytes` and
//! `max_queue_bytes`: both must still restore, to the same state.

mod common;

use baton_core::*;
use common::*;
use serde_json::json;
use std::path::PathBuf;

/// Every collection of the state holds something: a session, held and
/// queued locks (one with an idempotency key), values with history and a
/// TTL, counters, ended locks, idempotency records, a quota and a
/// reservation, a token bucket with a waiter, a `once` claim with a waiter,
/// a queue with ready, claimed and dead items.
fn every_collection(h: &mut Harness, tag: &str) {
    let name = |base: &str| format!("{base}{tag}");
    let s = h.open_session("a", 60_000);
    h.acquire(
        "a",
        Some(s),
        &[&name("l/1"), &name("l/2")],
        LockMode::Exclusive,
        None,
        0,
    )
    .unwrap();
    h.run(
        Command::new(
            "b",
            Op::LockAcquire(LockAcquire {
                keys: vec![name("l/1")],
                mode: LockMode::Exclusive,
                ttl_ms: Some(30_000),
                wait_ms: 60_000,
                lock_delay_ms: 0,
                read: true,
            }),
        )
        .with_idempotency_key(name("wait-1")),
    )
    .unwrap();
    let done = h
        .acquire("c", None, &[&name("l/3")], LockMode::Shared, Some(5_000), 0)
        .unwrap();
    h.op(
        "c",
        Op::LockRelease {
            lock_id: lock(&Ok(done)).lock_id,
        },
    )
    .unwrap();
    for n in 0..3 {
        h.put(
            "a",
            &name("s/x"),
            json!({"n": n, "text": "ünïcødé \"quoted\""}),
        )
        .unwrap();
    }
    h.run(Command::new(
        "a",
        Op::Put {
            key: name("s/ttl"),
            value: json!(null),
            if_version: None,
            if_absent: false,
            ttl_ms: Some(90_000),
        },
    ))
    .unwrap();
    h.op(
        "a",
        Op::CounterAdd {
            key: name("s/c"),
            delta: -3,
            min: Some(-10),
            max: None,
        },
    )
    .unwrap();
    h.run(
        Command::new("a", put_op(&name("s/y"), json!([1, 2.5, true]), None))
            .with_idempotency_key(name("i1")),
    )
    .unwrap();
    h.op(
        "a",
        Op::QuotaSet {
            quota: name("q/tokens"),
            capacity: 1_000,
            reset_used: false,
        },
    )
    .unwrap();
    h.op(
        "a",
        Op::QuotaReserve {
            quota: name("q/tokens"),
            amount: 300,
            ttl_ms: 60_000,
        },
    )
    .unwrap();
    for wait_ms in [0, 60_000] {
        h.op(
            "a",
            Op::RateTake {
                bucket: name("r/api"),
                tokens: 5,
                rate_per_sec: 1,
                burst: 5,
                wait_ms,
            },
        )
        .unwrap();
    }
    for agent in ["a", "b"] {
        h.op(
            agent,
            Op::Once {
                key: name("o/token"),
                max_age_ms: 60_000,
                claim_ttl_ms: 30_000,
                wait_ms: 60_000,
            },
        )
        .unwrap();
    }
    for n in 0..3 {
        h.op(
            "a",
            Op::QueueEnqueue {
                queue: name("w/jobs"),
                item: json!({"job": n}),
                max_attempts: Some(1),
            },
        )
        .unwrap();
    }
    let Ok(Response::QueueItem(claimed)) = h.op(
        "a",
        Op::QueueClaim {
            queue: name("w/jobs"),
            visibility_ms: 60_000,
        },
    ) else {
        panic!("a ready item is claimed");
    };
    // One attempt allowed: a nack dead-letters it.
    h.op(
        "a",
        Op::QueueNack {
            queue: name("w/jobs"),
            item_id: claimed.item_id,
            claim_token: claimed.claim_token,
            delay_ms: 0,
        },
    )
    .unwrap();
    h.op(
        "a",
        Op::QueueClaim {
            queue: name("w/jobs"),
            visibility_ms: 60_000,
        },
    )
    .unwrap();
    h.advance(1_000);
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot.json")
}

#[test]
fn the_snapshot_format_is_unchanged_and_an_earlier_builds_snapshot_restores() {
    let mut h = Harness::new();
    every_collection(&mut h, "");
    let bytes = h.machine.snapshot();

    // The scenario reaches every collection, so the comparison covers each.
    let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for collection in [
        "sessions",
        "locks",
        "lock_keys",
        "kv",
        "deadlines",
        "ended",
        "idempotency",
        "idempotency_order",
        "quotas",
        "reservations",
        "buckets",
        "onces",
        "once_waiters",
        "queues",
        "rate_waiters",
        "idempotency_waits",
    ] {
        let held = &state[collection];
        let len = held
            .as_object()
            .map(|o| o.len())
            .or(held.as_array().map(|a| a.len()));
        assert!(
            len.is_some_and(|n| n > 0),
            "the scenario leaves {collection} empty: {held}"
        );
    }
    let queue = &state["queues"]["w/jobs"];
    for part in ["items", "ready", "dead"] {
        assert!(
            !queue[part].as_object().map_or_else(
                || queue[part].as_array().unwrap().is_empty(),
                |o| o.is_empty()
            ),
            "the queue's {part} is empty: {queue}"
        );
    }

    if std::env::var_os("BATON_BLESS").is_some() {
        std::fs::create_dir_all(fixture().parent().unwrap()).unwrap();
        std::fs::write(fixture(), &bytes).unwrap();
    }
    let earlier = std::fs::read(fixture()).expect("tests/fixtures/snapshot.json is checked in");
    assert!(
        bytes == earlier,
        "the same state no longer encodes to the same snapshot bytes:\n now:     {}\n earlier: {}",
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&earlier)
    );

    let restored = StateMachine::restore(&earlier, Limits::default()).unwrap();
    assert_eq!(restored.snapshot(), earlier);
    assert_eq!(restored.stats(), h.machine.stats());

    // A snapshot from before the limits were recorded restores under the
    // limits it is given, to the same state.
    let before = std::fs::read(fixture().with_file_name("snapshot-before-limits.json")).unwrap();
    assert!(!String::from_utf8_lossy(&before).contains("\"limits\""));
    let restored = StateMachine::restore(&before, Limits::default()).unwrap();
    assert_eq!(restored.snapshot(), bytes);

    // One from before keys recorded their bytes: measured on restore. Its
    // writes were accepted without a byte bound, so the limits it recorded
    // have none (the log after it must replay as it was accepted); all
    // else is the same state.
    let before = std::fs::read(fixture().with_file_name("snapshot-before-kv-bytes.json")).unwrap();
    assert!(!String::from_utf8_lossy(&before).contains("\"bytes\""));
    let restored = StateMachine::restore(&before, Limits::default()).unwrap();
    assert_eq!(restored.limits().max_kv_bytes, u64::MAX);
    assert_eq!(restored.limits().max_queue_bytes, u64::MAX);
    assert_eq!(restored.stats(), h.machine.stats());
    let mut unbounded = String::from_utf8(restored.snapshot()).unwrap();
    for (field, default) in [
        ("max_kv_bytes", Limits::default().max_kv_bytes),
        ("max_queue_bytes", Limits::default().max_queue_bytes),
    ] {
        unbounded = unbounded.replace(
            &format!("\"{field}\":{}", u64::MAX),
            &format!("\"{field}\":{default}"),
        );
    }
    assert_eq!(unbounded.as_bytes(), bytes.as_slice());
}

/// The limits in force are part of the state: a snapshot restores under its
/// own limits whatever the restoring server is configured with, and only a
/// logged `SetLimits` changes them.
#[test]
fn the_limits_in_force_are_recorded_and_changed_only_through_the_log() {
    let small = Limits {
        max_value_bytes: 64,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(small.clone());
    let big = json!("x".repeat(100));
    assert_eq!(
        err(&h.put("a", "l/k", big.clone())).code,
        ErrorCode::InvalidArgument
    );
    let restored = StateMachine::restore(&h.machine.snapshot(), Limits::default()).unwrap();
    assert_eq!(
        restored.limits(),
        &small,
        "the snapshot's, not the argument"
    );

    h.run(Command::set_limits(Limits::default())).unwrap();
    assert_eq!(h.machine.limits(), &Limits::default());
    h.put("a", "l/k", big).unwrap();
}

/// The background snapshot encodes a copy taken under the writer's read
/// lock while the writer goes on applying: the copy must be exactly the state
/// as of the copy, whatever is written after it, in every collection.
#[test]
fn a_copy_of_the_state_is_unchanged_by_every_later_write() {
    let mut h = Harness::new();
    every_collection(&mut h, "");
    let copy = h.machine.clone();
    let before = copy.snapshot();

    // Touch every collection of the original.
    every_collection(&mut h, "-later");
    h.put("z", "s/x", json!("overwritten")).unwrap();
    h.op(
        "z",
        Op::Delete {
            key: "s/y".into(),
            if_version: None,
        },
    )
    .unwrap();
    h.advance(120_000);
    assert_ne!(
        h.machine.snapshot(),
        before,
        "the later writes changed nothing"
    );

    assert_eq!(copy.snapshot(), before);
    let restored = StateMachine::restore(&before, Limits::default()).unwrap();
    assert_eq!(restored.snapshot(), before);
}
