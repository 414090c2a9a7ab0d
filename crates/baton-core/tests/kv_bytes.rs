//! `max_kv_bytes`: what the store's keys, values and their kept history
//! count, kept exact through every kind of write, delete and expiry, and
//! the limit that refuses a write past it with nothing applied.

mod common;

use baton_core::validate::json_size;
use baton_core::*;
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// The count measured from scratch through the public reads: each key's
/// name and every version it keeps (its history, or its value alone when
/// it keeps none).
fn measured(machine: &StateMachine) -> u64 {
    let mut total = 0;
    let mut after: Option<String> = None;
    loop {
        let page = machine.list("", after.as_deref(), 1000).unwrap();
        for entry in &page.entries {
            let history = machine.history(&entry.key, usize::MAX).unwrap();
            let versions: u64 = if history.versions.is_empty() {
                json_size(&entry.value) as u64
            } else {
                history
                    .versions
                    .iter()
                    .map(|v| json_size(&v.value) as u64)
                    .sum()
            };
            total += entry.key.len() as u64 + versions;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return total,
        }
    }
}

fn limited(max_kv_bytes: u64, history_depth: usize) -> Harness {
    Harness::with_limits(Limits {
        max_kv_bytes,
        history_depth,
        ..Limits::default()
    })
}

#[test]
fn a_write_past_the_limit_is_refused_with_nothing_applied_and_a_delete_makes_room() {
    // "k/a" + 100 bytes of string (102 with quotes) = 105 per version.
    let value = |c: char| json!(c.to_string().repeat(100));
    let mut h = limited(300, 2);
    h.op("a", put_op("k/a", value('a'), None)).unwrap();
    h.op("a", put_op("k/b", value('b'), None)).unwrap();
    assert_eq!(h.machine.stats().kv_bytes, 210);

    let refused = h.op("a", put_op("k/c", value('c'), None));
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::QuotaExceeded, "{error:?}");
    assert!(error.message.contains("max_kv_bytes"), "{}", error.message);
    assert_eq!(error.details.as_ref().unwrap()["adding"], 105);
    assert!(h.machine.get("k/c").is_err(), "nothing applied");
    assert_eq!(h.machine.stats().kv_bytes, 210);

    // A second version of k/a keeps the first in its history: +102, past it.
    let grows = h.op("a", put_op("k/a", value('x'), None));
    assert_eq!(err(&grows).code, ErrorCode::QuotaExceeded);
    // A smaller one fits: 105 + 82 for k/a.
    let smaller = |c: char| json!(c.to_string().repeat(80));
    h.op("a", put_op("k/a", smaller('c'), None)).unwrap();
    assert_eq!(h.machine.stats().kv_bytes, 292);
    // k/a keeps its 2 versions now: an overwrite of the same size pushes the
    // 100-byte one out, and goes through on the nearly full store.
    h.op("a", put_op("k/a", smaller('d'), None)).unwrap();
    assert_eq!(h.machine.stats().kv_bytes, 105 + 3 + 82 + 82);
    // k/b's second version would push nothing out.
    assert_eq!(
        err(&h.op("a", put_op("k/b", value('e'), None))).code,
        ErrorCode::QuotaExceeded
    );

    // A txn is all or nothing against the limit too.
    let txn = Op::Txn(Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: "k/d".into(),
                value: json!(1),
                ttl_ms: None,
            },
            TxnOp::Put {
                key: "k/e".into(),
                value: value('e'),
                ttl_ms: None,
            },
        ],
        failure: vec![],
    });
    assert_eq!(err(&h.op("a", txn.clone())).code, ErrorCode::QuotaExceeded);
    assert!(h.machine.get("k/d").is_err(), "nothing applied");

    // A delete frees the key with its whole history.
    h.op(
        "a",
        Op::Delete {
            key: "k/b".into(),
            if_version: None,
        },
    )
    .unwrap();
    assert_eq!(h.machine.stats().kv_bytes, 3 + 82 + 82);
    h.op("a", txn).unwrap();
    assert_eq!(h.machine.stats().kv_bytes, measured(&h.machine));
}

#[test]
fn counter_adds_and_patches_count_and_are_refused_on_a_full_store() {
    let mut h = limited(20, 16);
    h.op(
        "a",
        Op::CounterAdd {
            key: "c/n".into(),
            delta: 5,
            min: None,
            max: None,
        },
    )
    .unwrap();
    assert_eq!(h.machine.stats().kv_bytes, 3 + 1);
    for _ in 0..4 {
        h.op(
            "a",
            Op::CounterAdd {
                key: "c/n".into(),
                delta: 1,
                min: None,
                max: None,
            },
        )
        .unwrap();
    }
    // 5, 6, 7, 8, 9 kept: 3 + 5 = 8; "10" would add 2 more each time.
    assert_eq!(h.machine.stats().kv_bytes, 8);
    let patch = Op::Patch {
        key: "c/m".into(),
        patch: Patch::Merge {
            patch: json!({"a": "0123456789"}),
        },
        if_version: None,
    };
    assert_eq!(err(&h.op("a", patch)).code, ErrorCode::QuotaExceeded);
    assert_eq!(h.machine.stats().kv_bytes, measured(&h.machine));
}

#[test]
fn the_count_survives_a_snapshot_and_is_measured_for_one_written_before_it_was_kept() {
    let mut h = limited(1 << 20, 3);
    for i in 0..20 {
        h.op("a", put_op(&format!("s/{}", i % 7), json!({"i": i}), None))
            .unwrap();
    }
    let bytes = h.machine.snapshot();
    let restored = StateMachine::restore(&bytes, Limits::default()).unwrap();
    assert_eq!(restored.stats(), h.machine.stats());

    let mut old: Value = serde_json::from_slice(&bytes).unwrap();
    for stored in old["kv"].as_object_mut().unwrap().values_mut() {
        assert!(stored.as_object_mut().unwrap().remove("bytes").is_some());
    }
    let restored =
        StateMachine::restore(&serde_json::to_vec(&old).unwrap(), Limits::default()).unwrap();
    assert_eq!(restored.stats().kv_bytes, measured(&h.machine));
    assert_eq!(restored.snapshot(), bytes, "measured to the same state");
}

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u16, Option<u64>),
    Patch(u8, u16),
    Add(u8, i64),
    Delete(u8),
    Txn(u8, u8, u16),
    Depth(usize),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6u8, 0..300u16, proptest::option::of(10..2_000u64)).prop_map(|(k, n, t)| Step::Put(k, n, t)),
        2 => (0..6u8, 0..300u16).prop_map(|(k, n)| Step::Patch(k, n)),
        2 => (0..6u8, -5..5i64).prop_map(|(k, d)| Step::Add(k, d)),
        1 => (0..6u8).prop_map(Step::Delete),
        1 => (0..6u8, 0..6u8, 0..300u16).prop_map(|(a, b, n)| Step::Txn(a, b, n)),
        1 => (0..4usize).prop_map(Step::Depth),
        1 => (0..1_500u64).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the writes, deletes, expiries and history depths, the count
    /// is what the store holds, never passes the limit, and a snapshot
    /// restores it.
    #[test]
    fn the_count_is_exact_and_never_passes_the_limit(steps in proptest::collection::vec(step(), 1..80)) {
        const LIMIT: u64 = 2_000;
        let mut h = limited(LIMIT, 2);
        let key = |k: u8| format!("p/{k}");
        for step in steps {
            let reply = match step {
                Step::Put(k, n, ttl_ms) => h.op("a", Op::Put {
                    key: key(k),
                    value: json!("x".repeat(n as usize)),
                    if_version: None,
                    if_absent: false,
                    ttl_ms,
                }),
                Step::Patch(k, n) => h.op("a", Op::Patch {
                    key: key(k),
                    patch: Patch::Merge { patch: json!({"p": "y".repeat(n as usize)}) },
                    if_version: None,
                }),
                Step::Add(k, delta) => h.op("a", Op::CounterAdd { key: key(k), delta, min: None, max: None }),
                Step::Delete(k) => h.op("a", Op::Delete { key: key(k), if_version: None }),
                Step::Txn(a, b, n) => h.op("a", Op::Txn(Txn {
                    compares: vec![],
                    success: vec![
                        TxnOp::Put { key: key(a), value: json!("z".repeat(n as usize)), ttl_ms: None },
                        TxnOp::Delete { key: key(b) },
                    ],
                    failure: vec![],
                })),
                Step::Depth(depth) => h.op("admin", Op::SetLimits {
                    limits: Box::new(Limits { max_kv_bytes: LIMIT, history_depth: depth, ..Limits::default() }),
                }),
                Step::Advance(ms) => {
                    h.advance(ms);
                    Ok(Response::Empty {})
                }
            };
            if let Err(error) = &reply {
                prop_assert!(error.code != ErrorCode::Internal, "{error:?}");
            }
            let kv_bytes = h.machine.stats().kv_bytes;
            prop_assert_eq!(kv_bytes, measured(&h.machine));
            prop_assert!(kv_bytes <= LIMIT, "{kv_bytes} past {LIMIT}");
        }
        let restored = StateMachine::restore(&h.machine.snapshot(), Limits::default()).unwrap();
        prop_assert_eq!(restored.stats(), h.machine.stats());
    }
}

/// Limits recorded by a build before `max_kv_bytes` (in a snapshot, or a
/// logged `SetLimits`) read as unbounded: the writes that followed them
/// were accepted without a byte bound and must replay the same.
#[test]
fn limits_recorded_before_the_byte_bound_read_as_unbounded() {
    let small = Limits {
        max_kv_bytes: 10,
        history_depth: 3,
        ..Limits::default()
    };
    let mut logged = serde_json::to_value(Command::set_limits(small)).unwrap();
    let limits = logged["op"]["limits"].as_object_mut().expect("op.limits");
    assert!(limits.remove("max_kv_bytes").is_some());
    assert!(limits.remove("max_queue_bytes").is_some());
    let command: Command = serde_json::from_value(logged).unwrap();
    let mut h = Harness::new();
    h.run(command).unwrap();
    assert_eq!(h.machine.limits().history_depth, 3, "the rest as recorded");
    assert_eq!(h.machine.limits().max_kv_bytes, u64::MAX);
    assert_eq!(h.machine.limits().max_queue_bytes, u64::MAX);
    h.op("a", put_op("big/one", json!("x".repeat(100)), None))
        .unwrap();

    // The same in a snapshot's limits.
    let mut snapshot: Value = serde_json::from_slice(&h.machine.snapshot()).unwrap();
    snapshot["limits"]
        .as_object_mut()
        .unwrap()
        .remove("max_kv_bytes");
    let restored =
        StateMachine::restore(&serde_json::to_vec(&snapshot).unwrap(), Limits::default()).unwrap();
    assert_eq!(restored.limits().max_kv_bytes, u64::MAX);
    // And a config file without it takes the default bound, as a new server should.
    let configured: Limits = serde_json::from_value(json!({"history_depth": 3})).unwrap();
    assert_eq!(configured.max_kv_bytes, Limits::default().max_kv_bytes);
}
