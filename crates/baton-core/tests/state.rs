//! Versioned state, counters, txn, idempotency, events, time and snapshots.

mod common;

use baton_core::*;
use common::*;
use serde_json::json;

#[test]
fn versions_are_revisions_and_conflicts_carry_the_current_value() {
    let mut h = Harness::new();
    let v1 = write(&h.put("a", "cfg/app", json!({"region": "us"}))).version;
    assert_eq!(v1, h.seq);
    let got = h.machine.get("cfg/app").unwrap();
    assert_eq!(
        (got.entry.version, got.revision, &*got.entry.value),
        (v1, h.seq, &json!({"region": "us"}))
    );

    let v2 = write(&h.op("b", put_op("cfg/app", json!({"region": "eu"}), Some(v1)))).clone();
    assert_eq!(v2.previous_version, Some(v1));
    let stale = h.op("c", put_op("cfg/app", json!({"region": "ap"}), Some(v1)));
    let error = err(&stale);
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.retry_after_ms, Some(0));
    let details = error.details.as_ref().unwrap();
    assert_eq!(details["current_version"], v2.version);
    assert_eq!(details["current_value"], json!({"region": "eu"}));
    assert_eq!(
        *h.machine.get("cfg/app").unwrap().entry.value,
        json!({"region": "eu"})
    );
}

#[test]
fn versions_are_never_reused_across_delete_and_recreate() {
    let mut h = Harness::new();
    let v1 = write(&h.put("a", "k/x", json!(1))).version;
    h.op(
        "a",
        Op::Delete {
            key: "k/x".into(),
            if_version: None,
        },
    )
    .unwrap();
    let v2 = write(&h.put("a", "k/x", json!(1))).version;
    assert!(v2 > v1);
    assert_eq!(
        err(&h.op("a", put_op("k/x", json!(2), Some(v1)))).code,
        ErrorCode::ConcurrentModification
    );
}

#[test]
fn if_absent_and_if_version_zero_create_only() {
    let mut h = Harness::new();
    let create = Op::Put {
        key: "k/once".into(),
        value: json!(1),
        if_version: None,
        if_absent: true,
        ttl_ms: None,
    };
    assert!(h.op("a", create.clone()).is_ok());
    assert_eq!(
        err(&h.op("b", create)).code,
        ErrorCode::ConcurrentModification
    );
    assert_eq!(
        err(&h.op("b", put_op("k/once", json!(3), Some(0)))).code,
        ErrorCode::ConcurrentModification
    );
    assert_eq!(*h.machine.get("k/once").unwrap().entry.value, json!(1));
}

#[test]
fn merge_patch_and_json_patch() {
    let mut h = Harness::new();
    h.put("a", "doc/1", json!({"a": 1, "b": {"c": 2}})).unwrap();
    let merge = Op::Patch {
        key: "doc/1".into(),
        patch: Patch::Merge {
            patch: json!({"b": {"c": null, "d": 3}}),
        },
        if_version: None,
    };
    h.op("a", merge).unwrap();
    assert_eq!(
        *h.machine.get("doc/1").unwrap().entry.value,
        json!({"a": 1, "b": {"d": 3}})
    );

    let ops = json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 10}]);
    h.op(
        "a",
        Op::Patch {
            key: "doc/1".into(),
            patch: Patch::Json { ops },
            if_version: None,
        },
    )
    .unwrap();
    assert_eq!(h.machine.get("doc/1").unwrap().entry.value["a"], 10);

    let before = h.machine.get("doc/1").unwrap();
    let failing_test = json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 99}]);
    let error = err(&h.op(
        "a",
        Op::Patch {
            key: "doc/1".into(),
            patch: Patch::Json { ops: failing_test },
            if_version: None,
        },
    ))
    .clone();
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.details.unwrap()["current_value"]["a"], 10);

    let malformed = json!([{"op": "frobnicate", "path": "/a"}]);
    let error = err(&h.op(
        "a",
        Op::Patch {
            key: "doc/1".into(),
            patch: Patch::Json { ops: malformed },
            if_version: None,
        },
    ))
    .clone();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    let missing_path = json!([{"op": "remove", "path": "/nope"}]);
    assert_eq!(
        err(&h.op(
            "a",
            Op::Patch {
                key: "doc/1".into(),
                patch: Patch::Json { ops: missing_path },
                if_version: None
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    let guarded = Op::Patch {
        key: "doc/1".into(),
        patch: Patch::Merge {
            patch: json!({"z": 1}),
        },
        if_version: Some(1),
    };
    assert_eq!(
        err(&h.op("a", guarded)).code,
        ErrorCode::ConcurrentModification
    );
    assert_eq!(
        h.machine.get("doc/1").unwrap().entry,
        before.entry,
        "refused patches apply nothing"
    );
}

#[test]
fn delete_is_idempotent_and_guarded() {
    let mut h = Harness::new();
    let v = write(&h.put("a", "d/k", json!(1))).version;
    assert_eq!(
        err(&h.op(
            "a",
            Op::Delete {
                key: "d/k".into(),
                if_version: Some(v + 100)
            }
        ))
        .code,
        ErrorCode::ConcurrentModification
    );
    let deleted = h
        .op(
            "a",
            Op::Delete {
                key: "d/k".into(),
                if_version: Some(v),
            },
        )
        .unwrap();
    assert_eq!(
        deleted,
        Response::Delete(DeleteResult {
            key: "d/k".into(),
            deleted: true,
            previous_version: Some(v),
            released_lock_id: None,
        })
    );
    let again = h
        .op(
            "a",
            Op::Delete {
                key: "d/k".into(),
                if_version: None,
            },
        )
        .unwrap();
    assert_eq!(
        again,
        Response::Delete(DeleteResult {
            key: "d/k".into(),
            deleted: false,
            previous_version: None,
            released_lock_id: None,
        })
    );
    assert_eq!(h.machine.get("d/k").unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn list_paginates_by_prefix_and_history_keeps_recent_versions() {
    let limits = Limits {
        history_depth: 3,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    for i in 0..5 {
        h.put("a", &format!("p/{i}"), json!(i)).unwrap();
    }
    h.put("a", "q/0", json!("other")).unwrap();
    let page1 = h.machine.list("p/", None, 2).unwrap();
    assert_eq!(
        page1
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["p/0", "p/1"]
    );
    let page2 = h
        .machine
        .list("p/", page1.next_after.as_deref(), 2)
        .unwrap();
    assert_eq!(
        page2
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["p/2", "p/3"]
    );
    let page3 = h
        .machine
        .list("p/", page2.next_after.as_deref(), 2)
        .unwrap();
    assert_eq!(page3.entries.len(), 1);
    assert_eq!(page3.next_after, None);
    assert_eq!(
        h.machine.list("p/", None, 0).unwrap_err().code,
        ErrorCode::InvalidArgument
    );

    for i in 0..5 {
        h.put("writer", "h/k", json!(i)).unwrap();
    }
    let history = h.machine.history("h/k", 10).unwrap();
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| v.value.as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert!(
        history
            .versions
            .windows(2)
            .all(|w| w[0].version > w[1].version)
    );
}

#[test]
fn keys_with_ttl_expire_with_an_event() {
    let mut h = Harness::new();
    h.op(
        "a",
        Op::Put {
            key: "tmp/k".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: Some(500),
        },
    )
    .unwrap();
    assert_eq!(h.machine.next_deadline(), Some(h.time + 500));
    h.advance(499);
    assert!(h.machine.get("tmp/k").is_ok());
    h.advance(1);
    assert_eq!(
        h.machine.get("tmp/k").unwrap_err().code,
        ErrorCode::NotFound
    );
    assert!(
        h.take_events()
            .iter()
            .any(|e| e.kind == EventKind::KeyExpired && e.keys == ["tmp/k"])
    );
    // A put without TTL clears an earlier TTL.
    h.op(
        "a",
        Op::Put {
            key: "tmp/j".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: Some(500),
        },
    )
    .unwrap();
    h.put("a", "tmp/j", json!(2)).unwrap();
    h.advance(1000);
    assert!(h.machine.get("tmp/j").is_ok());
    assert_eq!(h.machine.next_deadline(), None);
}

/// A patch or a counter add changes a key's value, not its lease: alone or
/// inside a txn, the key keeps its TTL and still expires on time. A put in
/// the same txn sets the TTL the later ops keep.
#[test]
fn patches_and_counter_adds_keep_the_ttl_in_a_txn_too() {
    let mut h = Harness::new();
    let put_with_ttl = |key: &str, value| Op::Put {
        key: key.into(),
        value,
        if_version: None,
        if_absent: false,
        ttl_ms: Some(1000),
    };
    h.op("a", put_with_ttl("tmp/doc", json!({"a": 1}))).unwrap();
    h.op("a", put_with_ttl("tmp/n", json!(1))).unwrap();
    let expires_at = h.machine.get("tmp/doc").unwrap().entry.expires_at;
    assert_eq!(expires_at, Some(h.time + 1000));
    h.advance(400);
    let txn = Txn {
        compares: vec![],
        success: vec![
            TxnOp::Patch {
                key: "tmp/doc".into(),
                patch: Patch::Merge {
                    patch: json!({"b": 2}),
                },
            },
            TxnOp::CounterAdd {
                key: "tmp/n".into(),
                delta: 1,
                min: None,
                max: None,
            },
            TxnOp::Put {
                key: "tmp/fresh".into(),
                value: json!(0),
                ttl_ms: Some(300),
            },
            TxnOp::CounterAdd {
                key: "tmp/fresh".into(),
                delta: 1,
                min: None,
                max: None,
            },
        ],
        failure: vec![],
    };
    h.op("a", Op::Txn(txn)).unwrap();
    assert_eq!(
        h.machine.get("tmp/doc").unwrap().entry.expires_at,
        expires_at
    );
    assert_eq!(h.machine.get("tmp/n").unwrap().entry.expires_at, expires_at);
    assert_eq!(
        h.machine.get("tmp/fresh").unwrap().entry.expires_at,
        Some(h.time + 300)
    );
    h.advance(300);
    assert_eq!(
        h.machine.get("tmp/fresh").unwrap_err().code,
        ErrorCode::NotFound
    );
    h.advance(300);
    for key in ["tmp/doc", "tmp/n"] {
        assert_eq!(
            h.machine.get(key).unwrap_err().code,
            ErrorCode::NotFound,
            "{key}"
        );
    }
    assert_eq!(h.machine.next_deadline(), None);
}

#[test]
fn counters_never_cross_their_bounds() {
    let mut h = Harness::new();
    let add = |delta| Op::CounterAdd {
        key: "quota/slots".into(),
        delta,
        min: Some(0),
        max: Some(3),
    };
    for expected in 1..=3 {
        match h.op("a", add(1)).unwrap() {
            Response::Counter(c) => assert_eq!(c.value, expected),
            other => panic!("{other:?}"),
        }
    }
    let error = err(&h.op("a", add(1))).clone();
    assert_eq!(error.code, ErrorCode::QuotaExceeded);
    assert_eq!(error.details.unwrap()["value"], 3);
    assert_eq!(*h.machine.get("quota/slots").unwrap().entry.value, json!(3));
    assert_eq!(err(&h.op("a", add(-4))).code, ErrorCode::QuotaExceeded);
    h.put("a", "quota/text", json!("x")).unwrap();
    assert_eq!(
        err(&h.op(
            "a",
            Op::CounterAdd {
                key: "quota/text".into(),
                delta: 1,
                min: None,
                max: None
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&h.op(
            "a",
            Op::CounterAdd {
                key: "quota/x".into(),
                delta: 1,
                min: Some(5),
                max: Some(1)
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    h.put("a", "quota/big", json!(i64::MAX)).unwrap();
    assert_eq!(
        err(&h.op(
            "a",
            Op::CounterAdd {
                key: "quota/big".into(),
                delta: 1,
                min: None,
                max: None
            }
        ))
        .code,
        ErrorCode::QuotaExceeded
    );

    // A counter already past a bound (a put wrote it) can move back toward
    // it, and not further away.
    h.put("a", "quota/over", json!(5)).unwrap();
    let toward = |delta| Op::CounterAdd {
        key: "quota/over".into(),
        delta,
        min: Some(0),
        max: Some(3),
    };
    match h.op("a", toward(-1)).unwrap() {
        Response::Counter(c) => assert_eq!(c.value, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(err(&h.op("a", toward(1))).code, ErrorCode::QuotaExceeded);
    assert_eq!(
        err(&h.op("a", toward(-5))).code,
        ErrorCode::QuotaExceeded,
        "4 - 5 crosses the minimum"
    );
}

#[test]
fn txn_runs_one_branch_all_or_nothing() {
    let mut h = Harness::new();
    let v = write(&h.put("a", "acct/a", json!(10))).version;
    h.put("a", "acct/b", json!(0)).unwrap();
    let transfer = |version| Txn {
        compares: vec![Compare {
            key: "acct/a".into(),
            version: Some(version),
            value: None,
            exists: None,
            op: CompareOp::Eq,
        }],
        success: vec![
            TxnOp::CounterAdd {
                key: "acct/a".into(),
                delta: -7,
                min: Some(0),
                max: None,
            },
            TxnOp::CounterAdd {
                key: "acct/b".into(),
                delta: 7,
                min: None,
                max: None,
            },
            TxnOp::Get {
                key: "acct/b".into(),
            },
        ],
        failure: vec![TxnOp::Get {
            key: "acct/a".into(),
        }],
    };
    let Response::Txn(done) = h.op("a", Op::Txn(transfer(v))).unwrap() else {
        panic!()
    };
    assert!(done.succeeded);
    assert_eq!(done.results.len(), 3);
    assert!(
        matches!(&done.results[2], TxnOpResult::Get { entry: Some(e), .. } if *e.value == json!(7))
    );
    let txn_events: Vec<_> = h
        .take_events()
        .into_iter()
        .filter(|e| e.revision == h.seq)
        .collect();
    assert_eq!(txn_events.len(), 2);

    // Stale compare: the failure branch runs.
    let Response::Txn(failed) = h.op("a", Op::Txn(transfer(v))).unwrap() else {
        panic!()
    };
    assert!(!failed.succeeded);
    assert!(
        matches!(&failed.results[0], TxnOpResult::Get { entry: Some(e), .. } if *e.value == json!(3))
    );

    // A bound crossed in the second op: nothing of the txn applies.
    let a_before = h.machine.get("acct/a").unwrap().entry;
    let v_now = a_before.version;
    let error = err(&h.op("a", Op::Txn(transfer(v_now)))).clone();
    assert_eq!(error.code, ErrorCode::QuotaExceeded);
    assert_eq!(h.machine.get("acct/a").unwrap().entry, a_before);
    assert_eq!(*h.machine.get("acct/b").unwrap().entry.value, json!(7));

    let bad = Txn {
        compares: vec![Compare {
            key: "acct/a".into(),
            version: Some(1),
            value: Some(json!(1)),
            exists: None,
            op: CompareOp::Eq,
        }],
        success: vec![],
        failure: vec![],
    };
    assert_eq!(
        err(&h.op("a", Op::Txn(bad))).code,
        ErrorCode::InvalidArgument
    );
    let exists = Txn {
        compares: vec![Compare {
            key: "acct/none".into(),
            version: None,
            value: None,
            exists: Some(false),
            op: CompareOp::Eq,
        }],
        success: vec![TxnOp::Put {
            key: "acct/none".into(),
            value: json!("created"),
            ttl_ms: None,
        }],
        failure: vec![],
    };
    let Response::Txn(created) = h.op("a", Op::Txn(exists)).unwrap() else {
        panic!()
    };
    assert!(created.succeeded);
}

#[test]
fn idempotency_replays_and_detects_mismatch() {
    let mut h = Harness::new();
    let cmd = Command::new(
        "a",
        Op::CounterAdd {
            key: "c/n".into(),
            delta: 1,
            min: None,
            max: None,
        },
    )
    .with_idempotency_key("req-1");
    let first = h.run(cmd.clone());
    let again = h.run(cmd.clone());
    assert_eq!(
        envelope(&first),
        envelope(&again),
        "the retry gets the recorded reply"
    );
    assert_eq!(
        *h.machine.get("c/n").unwrap().entry.value,
        json!(1),
        "applied once"
    );
    // Another agent's key space is separate.
    let mut other = cmd.clone();
    other.agent = "b".into();
    h.run(other).unwrap();
    assert_eq!(*h.machine.get("c/n").unwrap().entry.value, json!(2));
    let different = Command::new(
        "a",
        Op::CounterAdd {
            key: "c/n".into(),
            delta: 5,
            min: None,
            max: None,
        },
    )
    .with_idempotency_key("req-1");
    assert_eq!(err(&h.run(different)).code, ErrorCode::IdempotencyMismatch);
    assert_eq!(*h.machine.get("c/n").unwrap().entry.value, json!(2));
}

/// A refusal applied nothing and is not recorded: the retry it invites
/// ("retry after N ms"), made with the same key, runs again and applies
/// once. So does a retry of a wait that ended without applying.
#[test]
fn a_refused_request_retried_with_its_key_runs_again() {
    let mut h = Harness::new();
    let take = Command::new(
        "a",
        Op::RateTake {
            bucket: "api/x".into(),
            tokens: 1,
            rate_per_sec: 10,
            burst: 1,
            wait_ms: 0,
        },
    )
    .with_idempotency_key("take-1");
    h.op("other", take.op.clone()).unwrap(); // empties the bucket
    let refused = err(&h.run(take.clone())).clone();
    assert_eq!(refused.code, ErrorCode::RateLimited);
    h.advance(refused.retry_after_ms.expect("says when"));
    h.run(take.clone()).expect("the retry takes a token");
    assert_eq!(
        err(&h.op("a", take.op.clone())).code,
        ErrorCode::RateLimited,
        "one token taken by the retry"
    );
    h.run(take)
        .expect("and a second retry replays that success");

    // A queued acquire whose wait timed out: its retry queues again.
    lock(&h.acquire(
        "holder",
        None,
        &["w/k"],
        LockMode::Exclusive,
        Some(60_000),
        0,
    ));
    let acquire = Command::new(
        "a",
        Op::LockAcquire(LockAcquire {
            keys: vec!["w/k".into()],
            mode: LockMode::Exclusive,
            ttl_ms: Some(1000),
            wait_ms: 100,
            lock_delay_ms: 0,
            read: false,
        }),
    )
    .with_idempotency_key("acq-1");
    let queued = lock(&h.run(acquire.clone())).clone();
    h.advance(100);
    assert!(
        h.take_wakeups()
            .iter()
            .any(|w| w.id == queued.lock_id && w.reply.is_err())
    );
    let again = lock(&h.run(acquire)).clone();
    assert_eq!(again.status, LockStatus::Waiting);
    assert_ne!(again.lock_id, queued.lock_id, "a new request, queued again");
}

#[test]
fn idempotency_retention_is_bounded_in_count_and_time() {
    let limits = Limits {
        idempotency_entries: 2,
        idempotency_retention_ms: 10_000,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    let add = |key: &str| {
        Command::new(
            "a",
            Op::CounterAdd {
                key: "c/n".into(),
                delta: 1,
                min: None,
                max: None,
            },
        )
        .with_idempotency_key(key)
    };
    h.run(add("k1")).unwrap();
    h.run(add("k2")).unwrap();
    h.run(add("k3")).unwrap();
    assert_eq!(h.machine.stats().idempotency_records, 2);
    h.run(add("k1")).unwrap(); // forgotten: applies again
    assert_eq!(*h.machine.get("c/n").unwrap().entry.value, json!(4));
    h.advance(10_000);
    assert_eq!(h.machine.stats().idempotency_records, 0);
}

#[test]
fn every_mutation_and_refusal_is_an_event_with_its_namespace() {
    let mut h = Harness::new();
    h.put("a", "ns1/k", json!(1)).unwrap();
    let _ = h.op("b", put_op("ns1/k", json!(2), Some(12345)));
    let events = h.take_events();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (
            events[0].kind,
            events[0].namespace.as_deref(),
            events[0].outcome
        ),
        (EventKind::Put, Some("ns1"), Outcome::OK)
    );
    assert_eq!(events[1].kind, EventKind::Refused);
    assert_eq!(
        events[1].outcome,
        Outcome::Error(ErrorCode::ConcurrentModification)
    );
    assert_eq!(events[1].agent, "b");
    assert_eq!(
        serde_json::to_value(&events[1]).unwrap()["outcome"],
        "CONCURRENT_MODIFICATION"
    );
    assert_eq!(serde_json::to_value(&events[0]).unwrap()["outcome"], "ok");
}

#[test]
fn bad_state_input_is_refused_with_the_field_named() {
    let limits = Limits {
        max_value_bytes: 32,
        max_keys: 2,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    let big = json!("x".repeat(64));
    assert_eq!(
        err(&h.put("a", "k/big", big)).details.as_ref().unwrap()["field"],
        "value"
    );
    assert_eq!(
        err(&h.put("a", "nonamespace", json!(1)))
            .details
            .as_ref()
            .unwrap()["field"],
        "key"
    );
    assert_eq!(
        err(&h.op(
            "a",
            Op::Put {
                key: "k/a".into(),
                value: json!(1),
                if_version: None,
                if_absent: false,
                ttl_ms: Some(0)
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    h.put("a", "k/1", json!(1)).unwrap();
    h.put("a", "k/2", json!(1)).unwrap();
    assert_eq!(
        err(&h.put("a", "k/3", json!(1))).code,
        ErrorCode::QuotaExceeded
    );
    assert!(
        h.put("a", "k/1", json!(2)).is_ok(),
        "updates are fine at capacity"
    );
    assert_eq!(h.machine.stats().keys, 2);
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::new();
    h.op(
        "a",
        Op::Put {
            key: "t/k".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: Some(1000),
        },
    )
    .unwrap();
    let now = h.machine.now();
    h.time -= 500_000; // a caller stamps an older time
    h.put("a", "t/other", json!(1)).unwrap();
    assert_eq!(h.machine.now(), now);
    assert!(
        h.machine.get("t/k").is_ok(),
        "an old stamp does not revive or shift deadlines"
    );
    h.time = now + 1000;
    h.advance(0);
    assert!(h.machine.get("t/k").is_err());
}

fn scripted(h: &mut Harness) {
    let s = h.open_session("a", 5_000);
    h.acquire("a", Some(s), &["l/1", "l/2"], LockMode::Exclusive, None, 0)
        .unwrap();
    h.acquire("b", None, &["l/1"], LockMode::Exclusive, Some(1000), 10_000)
        .unwrap();
    h.put("a", "s/x", json!({"n": 1})).unwrap();
    h.op(
        "a",
        Op::CounterAdd {
            key: "s/c".into(),
            delta: 3,
            min: None,
            max: None,
        },
    )
    .unwrap();
    h.run(Command::new("a", put_op("s/y", json!([1, 2]), None)).with_idempotency_key("i1"))
        .unwrap();
    h.advance(2_000);
    h.op("a", Op::SessionKeepalive { session_id: s }).unwrap();
    h.advance(6_000);
}

#[test]
fn same_commands_give_byte_identical_snapshots_and_restore_round_trips() {
    let mut one = Harness::new();
    let mut two = Harness::new();
    scripted(&mut one);
    scripted(&mut two);
    assert_eq!(one.events, two.events);
    let bytes = one.machine.snapshot();
    assert_eq!(bytes, two.machine.snapshot());

    let mut restored = Harness::new();
    restored.machine = StateMachine::restore(&bytes, Limits::default()).unwrap();
    restored.seq = one.seq;
    restored.time = one.time;
    assert_eq!(restored.machine.snapshot(), bytes);
    assert_eq!(restored.machine.stats(), one.machine.stats());
    // And it goes on identically.
    for h in [&mut one, &mut restored] {
        h.acquire("c", None, &["l/2"], LockMode::Exclusive, Some(1000), 0)
            .unwrap();
        h.put("c", "s/x", json!(2)).unwrap();
    }
    assert_eq!(one.machine.snapshot(), restored.machine.snapshot());
    assert_eq!(
        StateMachine::restore(b"not json", Limits::default())
            .unwrap_err()
            .code,
        ErrorCode::Internal
    );
}

#[test]
fn a_snapshot_with_fields_this_binary_does_not_know_is_refused_and_an_older_one_restores() {
    let mut h = Harness::new();
    scripted(&mut h);
    let snapshot: serde_json::Value = serde_json::from_slice(&h.machine.snapshot()).unwrap();

    // A newer Baton's snapshot: a field at the top and one inside a lock.
    let mut newer = snapshot.clone();
    newer["from_the_future"] = json!(1);
    let (lock_id, _) = newer["locks"].as_object().unwrap().iter().next().unwrap();
    let lock_id = lock_id.clone();
    newer["locks"][&lock_id]["lease_class"] = json!("gold");
    let error =
        StateMachine::restore(&serde_json::to_vec(&newer).unwrap(), Limits::default()).unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("2 field(s)"), "{}", error.message);
    assert!(
        error.message.contains("from_the_future"),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains(&format!("locks.{lock_id}.lease_class")),
        "{}",
        error.message
    );
    assert!(error.message.contains("newer Baton"), "{}", error.message);

    // An older Baton's snapshot, written before quotas and queues existed,
    // still restores to the same state.
    let mut older = snapshot.clone();
    for added_later in ["quotas", "reservations", "buckets", "onces", "queues"] {
        older.as_object_mut().unwrap().remove(added_later);
    }
    let restored =
        StateMachine::restore(&serde_json::to_vec(&older).unwrap(), Limits::default()).unwrap();
    assert_eq!(restored.snapshot(), h.machine.snapshot());
}

#[test]
fn commands_round_trip_through_json() {
    let cmd = Command::new(
        "a",
        Op::Txn(Txn {
            compares: vec![Compare {
                key: "a/b".into(),
                version: Some(3),
                value: None,
                exists: None,
                op: CompareOp::Gt,
            }],
            success: vec![TxnOp::Patch {
                key: "a/b".into(),
                patch: Patch::Merge {
                    patch: json!({"x": 1}),
                },
            }],
            failure: vec![],
        }),
    )
    .with_fence("a/lock", 7)
    .with_session(9)
    .with_idempotency_key("k");
    let text = serde_json::to_string(&cmd).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
    let unknown_field = r#"{"agent":"a","op":{"op":"put","key":"a/b","value":1,"bogus":1}}"#;
    assert!(serde_json::from_str::<Command>(unknown_field).is_err());
    // Also beside `op`: a field from a newer Baton is refused, not dropped.
    let unknown_top = r#"{"agent":"a","op":{"op":"put","key":"a/b","value":1},"bogus":1}"#;
    assert!(serde_json::from_str::<Command>(unknown_top).is_err());
}
