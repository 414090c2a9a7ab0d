//! Lock rules: modes, all-or-nothing, FIFO, leases, lock-delay, fencing,
//! deadlocks, ownership and bad input.

mod common;

use baton_core::*;
use common::*;
use serde_json::json;

const X: LockMode = LockMode::Exclusive;
const S: LockMode = LockMode::Shared;

#[test]
fn exclusive_lock_refuses_a_second_holder_with_who_and_when() {
    let mut h = Harness::new();
    let first = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(5_000), 0)).clone();
    assert_eq!(first.status, LockStatus::Held);
    assert_eq!(first.fence_token, Some(first.lock_id));
    let refused = h.acquire("b", None, &["inv/sku-1"], X, Some(5_000), 0);
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.retry_after_ms, Some(5_000));
    assert!(
        error.message.contains("held by agent \"a\""),
        "{}",
        error.message
    );
    assert_eq!(
        error.details.as_ref().unwrap()["holders"][0]["lock_id"],
        first.lock_id
    );
    // Nothing applied: the key still has exactly the first holder.
    let info = h.machine.key_locks("inv/sku-1").unwrap();
    assert_eq!(info.holders.len(), 1);
    assert!(info.waiters.is_empty());
}

#[test]
fn shared_holders_coexist_and_block_exclusive() {
    let mut h = Harness::new();
    assert!(h.acquire("a", None, &["db/t"], S, Some(1000), 0).is_ok());
    assert!(h.acquire("b", None, &["db/t"], S, Some(1000), 0).is_ok());
    assert_eq!(
        err(&h.acquire("c", None, &["db/t"], X, Some(1000), 0)).code,
        ErrorCode::ConcurrentModification
    );
    assert_eq!(h.machine.key_locks("db/t").unwrap().holders.len(), 2);
}

#[test]
fn multi_key_acquire_is_all_or_nothing() {
    let mut h = Harness::new();
    h.acquire("a", None, &["k/2"], X, Some(1000), 0).unwrap();
    let refused = h.acquire("b", None, &["k/1", "k/2", "k/3"], X, Some(1000), 0);
    assert_eq!(err(&refused).code, ErrorCode::ConcurrentModification);
    assert!(h.machine.key_locks("k/1").unwrap().holders.is_empty());
    assert!(h.machine.key_locks("k/3").unwrap().holders.is_empty());
    // Keys come back sorted and deduplicated: the canonical order.
    let granted = lock(&h.acquire("c", None, &["k/9", "k/4", "k/9"], X, Some(1000), 0)).clone();
    assert_eq!(granted.keys, vec!["k/4".to_string(), "k/9".to_string()]);
}

#[test]
fn waiters_are_served_fifo_and_woken_with_a_fresh_fence() {
    let mut h = Harness::new();
    let holder = lock(&h.acquire("a", None, &["q/k"], X, Some(10_000), 0)).lock_id;
    let w1 = lock(&h.acquire("b", None, &["q/k"], X, Some(10_000), 5_000)).clone();
    let w2 = lock(&h.acquire("c", None, &["q/k"], X, Some(10_000), 5_000)).clone();
    assert_eq!(w1.status, LockStatus::Waiting);
    assert_eq!(
        h.machine
            .key_locks("q/k")
            .unwrap()
            .waiters
            .iter()
            .map(|l| l.lock_id)
            .collect::<Vec<_>>(),
        vec![w1.lock_id, w2.lock_id]
    );

    h.op("a", Op::LockRelease { lock_id: holder }).unwrap();
    let release_seq = h.seq;
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].id, w1.lock_id);
    let granted = lock(&wakeups[0].reply).clone();
    assert_eq!(
        granted.fence_token,
        Some(release_seq),
        "the fence is the seq of the granting command"
    );
    assert!(granted.fence_token.unwrap() > holder);

    h.op(
        "b",
        Op::LockRelease {
            lock_id: w1.lock_id,
        },
    )
    .unwrap();
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups[0].id, w2.lock_id);
    assert!(lock(&wakeups[0].reply).fence_token.unwrap() > granted.fence_token.unwrap());
}

#[test]
fn a_waiting_exclusive_request_blocks_later_shared_ones() {
    let mut h = Harness::new();
    let reader = lock(&h.acquire("r1", None, &["doc/a"], S, Some(10_000), 0)).lock_id;
    let writer = lock(&h.acquire("w", None, &["doc/a"], X, Some(10_000), 5_000)).lock_id;
    let late_reader = lock(&h.acquire("r2", None, &["doc/a"], S, Some(10_000), 5_000)).clone();
    assert_eq!(
        late_reader.status,
        LockStatus::Waiting,
        "no barging past a waiting writer"
    );
    h.op("r1", Op::LockRelease { lock_id: reader }).unwrap();
    let wakeups = h.take_wakeups();
    assert_eq!(
        wakeups.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![writer]
    );
    h.op("w", Op::LockRelease { lock_id: writer }).unwrap();
    assert_eq!(h.take_wakeups()[0].id, late_reader.lock_id);
}

#[test]
fn release_is_idempotent_and_says_what_happened() {
    let mut h = Harness::new();
    let id = lock(&h.acquire("a", None, &["r/k"], X, Some(1000), 0)).lock_id;
    let first = h.op("a", Op::LockRelease { lock_id: id }).unwrap();
    assert_eq!(
        first,
        Response::Release(ReleaseResult {
            lock_id: id,
            released: true,
            outcome: EndReason::Released,
            ended_at: Some(h.time)
        })
    );
    let again = h.op("a", Op::LockRelease { lock_id: id }).unwrap();
    assert!(matches!(
        again,
        Response::Release(ReleaseResult {
            released: false,
            outcome: EndReason::Released,
            ..
        })
    ));

    let expiring = lock(&h.acquire("a", None, &["r/k"], X, Some(1000), 0)).lock_id;
    h.advance(1000);
    let after_expiry = h.op("a", Op::LockRelease { lock_id: expiring }).unwrap();
    assert!(matches!(
        after_expiry,
        Response::Release(ReleaseResult {
            released: false,
            outcome: EndReason::Expired,
            ..
        })
    ));
}

#[test]
fn release_and_renew_by_a_non_owner_are_refused() {
    let mut h = Harness::new();
    let id = lock(&h.acquire("a", None, &["r/k"], X, Some(1000), 0)).lock_id;
    assert_eq!(
        err(&h.op("mallory", Op::LockRelease { lock_id: id })).code,
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        err(&h.op(
            "mallory",
            Op::LockRenew {
                lock_id: id,
                ttl_ms: None
            }
        ))
        .code,
        ErrorCode::PermissionDenied
    );
    assert_eq!(h.machine.key_locks("r/k").unwrap().holders.len(), 1);
    assert_eq!(
        err(&h.op("a", Op::LockRelease { lock_id: 999_999 })).code,
        ErrorCode::NotFound
    );
}

#[test]
fn ttl_expiry_frees_the_key_and_reports_lease_lost() {
    let mut h = Harness::new();
    let id = lock(&h.acquire("a", None, &["t/k"], X, Some(1000), 0)).lock_id;
    assert_eq!(h.machine.next_deadline(), Some(h.time + 1000));
    h.advance(999);
    assert!(
        h.machine.key_locks("t/k").unwrap().holders.len() == 1,
        "not before its time"
    );
    h.take_events();
    h.advance(1);
    let events = h.take_events();
    let lost = events
        .iter()
        .find(|e| e.kind == EventKind::LeaseLost)
        .expect("a lease_lost event");
    assert_eq!((lost.lock_id, lost.agent.as_str()), (Some(id), "a"));
    assert!(h.machine.key_locks("t/k").unwrap().holders.is_empty());
    assert_eq!(
        err(&h.op(
            "a",
            Op::LockRenew {
                lock_id: id,
                ttl_ms: None
            }
        ))
        .code,
        ErrorCode::Fenced
    );
}

#[test]
fn renew_extends_the_lease() {
    let mut h = Harness::new();
    let id = lock(&h.acquire("a", None, &["t/k"], X, Some(1000), 0)).lock_id;
    h.advance(800);
    let renewed = lock(&h.op(
        "a",
        Op::LockRenew {
            lock_id: id,
            ttl_ms: None,
        },
    ))
    .clone();
    assert_eq!(renewed.expires_at, Some(h.time + 1000));
    h.advance(900);
    assert_eq!(h.machine.key_locks("t/k").unwrap().holders[0].lock_id, id);
}

#[test]
fn lock_delay_holds_an_expired_lock_keys() {
    let mut h = Harness::new();
    let acquire = LockAcquire {
        keys: vec!["d/k".into()],
        mode: X,
        ttl_ms: Some(1000),
        wait_ms: 0,
        lock_delay_ms: 500,
        read: false,
    };
    h.op("a", Op::LockAcquire(acquire)).unwrap();
    let waiter = lock(&h.acquire("b", None, &["d/k"], X, Some(1000), 5_000)).lock_id;
    h.advance(1000);
    assert!(h.take_wakeups().is_empty(), "the key is in its lock-delay");
    assert_eq!(
        h.machine.key_locks("d/k").unwrap().delayed_until,
        Some(h.time + 500)
    );
    assert_eq!(
        err(&h.acquire("c", None, &["d/k"], X, Some(1000), 0)).code,
        ErrorCode::ConcurrentModification
    );
    h.advance(500);
    assert_eq!(h.take_wakeups()[0].id, waiter);

    // A voluntary release applies no delay.
    let mut h = Harness::new();
    let acquire = LockAcquire {
        keys: vec!["d/k".into()],
        mode: X,
        ttl_ms: Some(1000),
        wait_ms: 0,
        lock_delay_ms: 500,
        read: false,
    };
    let id = lock(&h.op("a", Op::LockAcquire(acquire))).lock_id;
    h.op("a", Op::LockRelease { lock_id: id }).unwrap();
    assert!(h.acquire("b", None, &["d/k"], X, Some(1000), 0).is_ok());
}

#[test]
fn a_wait_that_times_out_fails_with_holders_and_retry_hint() {
    let mut h = Harness::new();
    h.acquire("a", None, &["w/k"], X, Some(10_000), 0).unwrap();
    let waiter = lock(&h.acquire("b", None, &["w/k"], X, Some(1000), 2_000)).lock_id;
    h.advance(2_000);
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].id, waiter);
    let error = err(&wakeups[0].reply);
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.retry_after_ms, Some(8_000));
    assert!(h.machine.key_locks("w/k").unwrap().waiters.is_empty());
    assert!(matches!(
        h.machine.lock_state(waiter).unwrap(),
        LockState::Ended {
            status: EndReason::TimedOut,
            ..
        }
    ));
}

#[test]
fn reacquiring_a_held_key_is_refused_as_a_self_deadlock() {
    let mut h = Harness::new();
    let session = h.open_session("a", 10_000);
    let held = lock(&h.acquire("a", Some(session), &["re/k"], X, None, 0)).lock_id;
    let again = h.acquire("a", Some(session), &["re/k", "re/other"], X, None, 5_000);
    let error = err(&again);
    assert_eq!(error.code, ErrorCode::Deadlock);
    assert_eq!(error.details.as_ref().unwrap()["lock_id"], held);
    assert!(error.message.contains("not re-entrant"));
    assert!(h.machine.key_locks("re/other").unwrap().holders.is_empty());
}

#[test]
fn a_wait_that_would_close_a_cycle_is_refused_with_the_cycle() {
    let mut h = Harness::new();
    let sa = h.open_session("alice", 60_000);
    let sb = h.open_session("bob", 60_000);
    h.acquire("alice", Some(sa), &["res/x"], X, None, 0)
        .unwrap();
    h.acquire("bob", Some(sb), &["res/y"], X, None, 0).unwrap();
    let alice_waits = lock(&h.acquire("alice", Some(sa), &["res/y"], X, None, 30_000)).clone();
    assert_eq!(alice_waits.status, LockStatus::Waiting);
    let locks_before = h.machine.stats();
    let refused = h.acquire("bob", Some(sb), &["res/x"], X, None, 30_000);
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::Deadlock);
    let cycle = error.details.as_ref().unwrap()["cycle"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(cycle.len(), 2, "{cycle:?}");
    let keys: Vec<&str> = cycle.iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(&"res/x") && keys.contains(&"res/y"),
        "{keys:?}"
    );
    assert!(error.message.contains(&format!("session {sb}")));
    // Nothing else changed: alice still waits, bob's request does not exist.
    assert_eq!(h.machine.stats().locks_waiting, locks_before.locks_waiting);
    assert_eq!(h.machine.key_locks("res/x").unwrap().waiters.len(), 0);
    assert!(h.take_wakeups().is_empty());
}

#[test]
fn a_three_party_cycle_through_queued_waiters_is_found() {
    let mut h = Harness::new();
    let [s1, s2, s3] = ["p1", "p2", "p3"].map(|a| h.open_session(a, 60_000));
    h.acquire("p1", Some(s1), &["c/a"], X, None, 0).unwrap();
    h.acquire("p2", Some(s2), &["c/b"], X, None, 0).unwrap();
    h.acquire("p3", Some(s3), &["c/c"], X, None, 0).unwrap();
    h.acquire("p1", Some(s1), &["c/b"], X, None, 30_000)
        .unwrap();
    h.acquire("p2", Some(s2), &["c/c"], X, None, 30_000)
        .unwrap();
    let error = err(&h.acquire("p3", Some(s3), &["c/a"], X, None, 30_000)).clone();
    assert_eq!(error.code, ErrorCode::Deadlock);
    assert_eq!(error.details.unwrap()["cycle"].as_array().unwrap().len(), 3);
}

#[test]
fn fencing_tokens_grow_and_stale_tokens_are_fenced() {
    let mut h = Harness::new();
    let first = lock(&h.acquire("a", None, &["f/k"], X, Some(1000), 0)).clone();
    let token1 = first.fence_token.unwrap();
    let write = Command::new(
        "a",
        Op::Put {
            key: "f/data".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: None,
        },
    )
    .with_fence("f/k", token1);
    assert!(h.run(write.clone()).is_ok());
    h.advance(1000); // expires
    let second = lock(&h.acquire("b", None, &["f/k"], X, Some(1000), 0)).clone();
    assert!(second.fence_token.unwrap() > token1);
    let before = h.machine.get("f/data").unwrap();
    let stale = Command::new(
        "a",
        Op::Put {
            key: "f/data".into(),
            value: json!(2),
            if_version: None,
            if_absent: false,
            ttl_ms: None,
        },
    )
    .with_fence("f/k", token1);
    let error = err(&h.run(stale)).clone();
    assert_eq!(error.code, ErrorCode::Fenced);
    assert_eq!(
        error.details.unwrap()["current_tokens"],
        json!([second.fence_token.unwrap()])
    );
    assert_eq!(
        h.machine.get("f/data").unwrap().entry,
        before.entry,
        "nothing applied"
    );

    let check = h.machine.check_fence("f/k", token1).unwrap();
    assert!(!check.valid);
    assert!(
        h.machine
            .check_fence("f/k", second.fence_token.unwrap())
            .unwrap()
            .valid
    );
}

#[test]
fn session_bound_locks_end_with_their_session() {
    let mut h = Harness::new();
    let s = h.open_session("a", 1000);
    let held = lock(&h.acquire("a", Some(s), &["s/k"], X, None, 0)).lock_id;
    assert_eq!(
        lock(&h.acquire("a", Some(s), &["s/j"], X, None, 0)).expires_at,
        Some(h.time + 1000)
    );
    let other = h.open_session("b", 60_000);
    let waiter = lock(&h.acquire("b", Some(other), &["s/k"], X, None, 30_000)).lock_id;
    h.advance(500);
    h.op("a", Op::SessionKeepalive { session_id: s }).unwrap();
    h.advance(999);
    assert!(
        h.take_wakeups().is_empty(),
        "keepalive extended the session"
    );
    h.take_events();
    h.advance(1);
    let events = h.take_events();
    assert!(events.iter().any(|e| e.kind == EventKind::SessionExpired));
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::LeaseLost && e.lock_id == Some(held))
    );
    assert_eq!(h.take_wakeups()[0].id, waiter);
    assert_eq!(
        err(&h.op("a", Op::SessionKeepalive { session_id: s })).code,
        ErrorCode::Fenced
    );
    // A command bound to the dead session is refused: the agent learns it lost its lease.
    let put = Command::new(
        "a",
        Op::Put {
            key: "s/x".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: None,
        },
    )
    .with_session(s);
    assert_eq!(err(&h.run(put)).code, ErrorCode::Fenced);
}

#[test]
fn kill_fails_the_sessions_waiters_and_close_releases_without_lease_lost() {
    let mut h = Harness::new();
    let a = h.open_session("a", 60_000);
    let b = h.open_session("b", 60_000);
    h.acquire("a", Some(a), &["k/1"], X, None, 0).unwrap();
    let b_waits = lock(&h.acquire("b", Some(b), &["k/1"], X, None, 30_000)).lock_id;
    h.op(
        "admin",
        Op::SessionKill {
            session_id: b,
            reason: Some("runaway".into()),
        },
    )
    .unwrap();
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups[0].id, b_waits);
    assert_eq!(err(&wakeups[0].reply).code, ErrorCode::Fenced);
    assert!(err(&wakeups[0].reply).message.contains("killed"));

    h.take_events();
    h.op("a", Op::SessionClose { session_id: a }).unwrap();
    let events = h.take_events();
    assert!(events.iter().any(|e| e.kind == EventKind::LockReleased));
    assert!(!events.iter().any(|e| e.kind == EventKind::LeaseLost));
    assert!(h.machine.key_locks("k/1").unwrap().holders.is_empty());
    assert_eq!(
        err(&h.op("b", Op::SessionClose { session_id: a })).code,
        ErrorCode::Fenced
    );
    assert_eq!(
        err(&h.op(
            "b",
            Op::SessionKeepalive {
                session_id: 424_242
            }
        ))
        .code,
        ErrorCode::NotFound
    );
}

#[test]
fn only_the_owner_may_keep_a_session_alive() {
    let mut h = Harness::new();
    let s = h.open_session("a", 1000);
    assert_eq!(
        err(&h.op("b", Op::SessionKeepalive { session_id: s })).code,
        ErrorCode::PermissionDenied
    );
    let mut cmd = Command::new(
        "b",
        Op::LockAcquire(LockAcquire {
            keys: vec!["x/y".into()],
            mode: X,
            ttl_ms: None,
            wait_ms: 0,
            lock_delay_ms: 0,
            read: false,
        }),
    );
    cmd.session = Some(s);
    assert_eq!(err(&h.run(cmd)).code, ErrorCode::PermissionDenied);
}

#[test]
fn bad_lock_input_is_refused_and_nothing_applies() {
    let limits = Limits {
        max_keys_per_lock: 2,
        max_waiters_per_key: 1,
        max_sessions: 1,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    let cases: Vec<(Reply, &str)> = vec![
        (h.acquire("a", None, &[], X, Some(1000), 0), "keys"),
        (
            h.acquire("a", None, &["a/1", "a/2", "a/3"], X, Some(1000), 0),
            "keys",
        ),
        (
            h.acquire("a", None, &["nonamespace"], X, Some(1000), 0),
            "keys",
        ),
        (h.acquire("a", None, &["a/1"], X, None, 0), "ttl_ms"),
        (h.acquire("a", None, &["a/1"], X, Some(0), 0), "ttl_ms"),
        (
            h.acquire("a", None, &["a/1"], X, Some(1000), u64::MAX),
            "wait_ms",
        ),
        (h.acquire("", None, &["a/1"], X, Some(1000), 0), "agent"),
    ];
    for (reply, field) in cases {
        let error = err(&reply);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{error:?}");
        assert_eq!(error.details.as_ref().unwrap()["field"], field, "{error:?}");
    }
    assert_eq!(
        h.machine.stats().locks_held + h.machine.stats().locks_waiting,
        0
    );

    h.acquire("a", None, &["a/1"], X, Some(1000), 0).unwrap();
    h.acquire("b", None, &["a/1"], X, Some(1000), 1000).unwrap();
    let full = h.acquire("c", None, &["a/1"], X, Some(1000), 1000);
    assert_eq!(err(&full).code, ErrorCode::QuotaExceeded);
    h.open_session("a", 1000);
    assert_eq!(
        err(&h.op("b", Op::SessionOpen { ttl_ms: 1000 })).code,
        ErrorCode::QuotaExceeded
    );
    assert_eq!(
        err(&h.op("b", Op::SessionOpen { ttl_ms: 0 })).code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn cancelling_a_waiter_lets_the_ones_behind_it_go() {
    let mut h = Harness::new();
    h.acquire("r", None, &["c/k"], S, Some(10_000), 0).unwrap();
    let writer = lock(&h.acquire("w", None, &["c/k"], X, Some(10_000), 5_000)).lock_id;
    let reader = lock(&h.acquire("r2", None, &["c/k"], S, Some(10_000), 5_000)).lock_id;
    let cancelled = h.op("w", Op::LockRelease { lock_id: writer }).unwrap();
    assert!(matches!(
        cancelled,
        Response::Release(ReleaseResult {
            released: true,
            outcome: EndReason::Cancelled,
            ..
        })
    ));
    let wakeups = h.take_wakeups();
    let ids: Vec<u64> = wakeups.iter().map(|w| w.id).collect();
    assert_eq!(ids, vec![writer, reader]);
    assert!(wakeups[0].reply.is_err());
    assert_eq!(lock(&wakeups[1].reply).status, LockStatus::Held);
}

// ---- a mutation that releases the caller's lock in the same command ------------

fn held_by(h: &Harness, key: &str) -> Vec<u64> {
    h.machine
        .key_locks(key)
        .unwrap()
        .holders
        .iter()
        .map(|l| l.lock_id)
        .collect()
}

#[test]
fn a_grant_with_read_carries_the_locked_keys_as_of_the_grant() {
    let mut h = Harness::new();
    h.put("a", "inv/count", json!(41)).unwrap();
    let put_seq = h.seq;
    let acquire = |agent: &str, wait_ms: u64, read: bool| {
        Command::new(
            agent,
            Op::LockAcquire(LockAcquire {
                keys: vec!["inv/count".into(), "inv/absent".into()],
                mode: X,
                ttl_ms: Some(10_000),
                wait_ms,
                lock_delay_ms: 0,
                read,
            }),
        )
    };

    // Granted at once: the value as it is now; a key that does not exist
    // is not listed.
    let holder = lock(&h.run(acquire("a", 0, true))).clone();
    let values = holder.values.clone().expect("a grant with read has values");
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].key, "inv/count");
    assert_eq!(*values[0].value, json!(41));
    assert_eq!(values[0].version, put_seq);

    // Queued: nothing to read yet. Its grant reads in the step of the write
    // that released the keys, so it sees that write.
    let queued = lock(&h.run(acquire("b", 5_000, true))).clone();
    assert_eq!(queued.status, LockStatus::Waiting);
    assert_eq!(queued.values, None);
    h.run(
        Command::new("a", put_op("inv/count", json!(42), None))
            .with_fence("inv/count", holder.fence_token.unwrap())
            .with_release(holder.lock_id),
    )
    .unwrap();
    let release_seq = h.seq;
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    let granted = lock(&wakeups[0].reply);
    assert_eq!(granted.lock_id, queued.lock_id);
    let values = granted.values.as_ref().expect("the grant has values");
    assert_eq!(values.len(), 1);
    assert_eq!(*values[0].value, json!(42));
    assert_eq!(values[0].version, release_seq);

    // Only the grant carries them: the lock as looked up later does not.
    match h.machine.lock_state(queued.lock_id) {
        Ok(LockState::Live(info)) => assert_eq!(info.values, None),
        other => panic!("expected a live lock, got {other:?}"),
    }
    // Without read, a grant has none.
    h.run(Command::new(
        "b",
        Op::LockRelease {
            lock_id: queued.lock_id,
        },
    ))
    .unwrap();
    assert_eq!(lock(&h.run(acquire("c", 0, false))).values, None);
}

#[test]
fn a_write_with_release_applies_and_grants_the_next_waiter_at_its_seq() {
    let mut h = Harness::new();
    let holder = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).clone();
    let waiter = lock(&h.acquire("b", None, &["inv/sku-1"], X, Some(10_000), 5_000)).lock_id;
    h.take_events();

    let reply = h.run(
        Command::new("a", put_op("inv/count", json!(1), None))
            .with_fence("inv/sku-1", holder.fence_token.unwrap())
            .with_release(holder.lock_id),
    );
    let seq = h.seq;
    let written = write(&reply);
    assert_eq!(written.version, seq);
    assert_eq!(written.released_lock_id, Some(holder.lock_id));
    assert_eq!(*h.machine.get("inv/count").unwrap().entry.value, json!(1));

    // The release ended the lock and granted the waiter in the same command.
    assert!(matches!(
        h.machine.lock_state(holder.lock_id),
        Ok(LockState::Ended {
            status: EndReason::Released,
            ..
        })
    ));
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].id, waiter);
    assert_eq!(lock(&wakeups[0].reply).fence_token, Some(seq));
    assert_eq!(held_by(&h, "inv/sku-1"), vec![waiter]);

    // Events: the write, then the release, then the grant, all at one seq,
    // as if a put and a release had been applied back to back.
    let events = h.take_events();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Put,
            EventKind::LockReleased,
            EventKind::LockGranted
        ]
    );
    assert!(events.iter().all(|e| e.revision == seq));
    assert_eq!(events[1].lock_id, Some(holder.lock_id));
    assert_eq!(events[2].lock_id, Some(waiter));
}

#[test]
fn patch_delete_and_counter_add_release_too() {
    let mut h = Harness::new();
    h.put("a", "doc/x", json!({"n": 1})).unwrap();
    let ops = [
        Op::Patch {
            key: "doc/x".into(),
            patch: Patch::Merge {
                patch: json!({"n": 2}),
            },
            if_version: None,
        },
        Op::CounterAdd {
            key: "doc/c".into(),
            delta: 1,
            min: None,
            max: None,
        },
        Op::Delete {
            key: "doc/x".into(),
            if_version: None,
        },
    ];
    for op in ops {
        let id = lock(&h.acquire("a", None, &["doc/lock"], X, Some(10_000), 0)).lock_id;
        let reply = h.run(Command::new("a", op).with_release(id)).unwrap();
        let released = match reply {
            Response::Write(w) => w.released_lock_id,
            Response::Counter(c) => c.released_lock_id,
            Response::Delete(d) => {
                assert!(d.deleted);
                d.released_lock_id
            }
            other => panic!("unexpected reply {other:?}"),
        };
        assert_eq!(released, Some(id));
        assert!(held_by(&h, "doc/lock").is_empty());
    }
    assert_eq!(*h.machine.get("doc/c").unwrap().entry.value, json!(1));
    assert_eq!(
        h.machine.get("doc/x").unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn a_refused_write_releases_nothing() {
    let mut h = Harness::new();
    h.put("a", "inv/count", json!(5)).unwrap();
    let version = h.machine.get("inv/count").unwrap().entry.version;
    let first = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).clone();
    h.op(
        "a",
        Op::LockRelease {
            lock_id: first.lock_id,
        },
    )
    .unwrap();
    let holder = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).clone();
    let waiter = lock(&h.acquire("b", None, &["inv/sku-1"], X, Some(10_000), 5_000)).lock_id;
    h.take_wakeups();
    h.take_events();

    // A stale if_version: CONCURRENT_MODIFICATION, and the lock stays held.
    let conflict = h.run(
        Command::new("a", put_op("inv/count", json!(6), Some(version + 100)))
            .with_release(holder.lock_id),
    );
    assert_eq!(err(&conflict).code, ErrorCode::ConcurrentModification);
    // A stale fence (the first lock's token): FENCED, and the lock stays held.
    let fenced = h.run(
        Command::new("a", put_op("inv/count", json!(6), None))
            .with_fence("inv/sku-1", first.fence_token.unwrap())
            .with_release(holder.lock_id),
    );
    assert_eq!(err(&fenced).code, ErrorCode::Fenced);

    assert!(h.take_wakeups().is_empty());
    assert_eq!(held_by(&h, "inv/sku-1"), vec![holder.lock_id]);
    let info = h.machine.key_locks("inv/sku-1").unwrap();
    assert_eq!(info.waiters[0].lock_id, waiter);
    let got = h.machine.get("inv/count").unwrap();
    assert_eq!((got.entry.version, &*got.entry.value), (version, &json!(5)));
    assert!(
        h.take_events()
            .iter()
            .all(|e| e.kind != EventKind::LockReleased)
    );
}

#[test]
fn an_invalid_release_refuses_the_whole_command() {
    let mut h = Harness::new();
    h.put("a", "inv/count", json!(5)).unwrap();
    let version = h.machine.get("inv/count").unwrap().entry.version;
    let theirs = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).lock_id;
    let waiting = lock(&h.acquire("b", None, &["inv/sku-1"], X, Some(10_000), 5_000)).lock_id;
    let ended = lock(&h.acquire("b", None, &["other/k"], X, Some(10_000), 0)).lock_id;
    h.op("b", Op::LockRelease { lock_id: ended }).unwrap();
    h.take_events();

    let cases = [
        (theirs, ErrorCode::PermissionDenied),
        (999_999, ErrorCode::NotFound),
        (ended, ErrorCode::Fenced),
        (waiting, ErrorCode::InvalidArgument),
    ];
    for (lock_id, code) in cases {
        let reply =
            h.run(Command::new("b", put_op("inv/count", json!(6), None)).with_release(lock_id));
        let error = err(&reply);
        assert_eq!(error.code, code, "release {lock_id}: {error:?}");
    }
    // Only state mutations carry a release.
    let other_op = h.run(
        Command::new(
            "a",
            Op::QuotaSet {
                quota: "q/x".into(),
                capacity: 1,
                reset_used: false,
            },
        )
        .with_release(theirs),
    );
    assert_eq!(err(&other_op).code, ErrorCode::InvalidArgument);
    assert!(err(&other_op).message.starts_with("release"));

    // Nothing applied: the key, the holder and the waiter are as they were.
    let got = h.machine.get("inv/count").unwrap();
    assert_eq!((got.entry.version, &*got.entry.value), (version, &json!(5)));
    assert_eq!(held_by(&h, "inv/sku-1"), vec![theirs]);
    assert!(matches!(
        h.machine.lock_state(waiting),
        Ok(LockState::Live(LockInfo {
            status: LockStatus::Waiting,
            ..
        }))
    ));
    assert!(h.machine.quota("q/x").is_err());
    assert!(h.take_events().iter().all(|e| e.kind == EventKind::Refused));
}

#[test]
fn an_idempotent_retry_of_a_write_with_release_does_not_release_twice() {
    let mut h = Harness::new();
    let holder = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).lock_id;
    let next = lock(&h.acquire("b", None, &["inv/sku-1"], X, Some(10_000), 5_000)).lock_id;
    let command = Command::new("a", put_op("inv/count", json!(1), None))
        .with_idempotency_key("put-1")
        .with_release(holder);
    let first = h.run(command.clone());
    assert_eq!(write(&first).released_lock_id, Some(holder));
    assert_eq!(held_by(&h, "inv/sku-1"), vec![next]);
    h.take_wakeups();
    h.take_events();

    // The retry replays the recorded reply byte for byte and changes nothing:
    // the next holder keeps its lock, the key keeps its version.
    let retry = h.run(command.clone());
    assert_eq!(
        serde_json::to_value(retry.unwrap()).unwrap(),
        serde_json::to_value(first.unwrap()).unwrap()
    );
    assert!(h.take_wakeups().is_empty());
    assert!(h.take_events().is_empty());
    assert_eq!(held_by(&h, "inv/sku-1"), vec![next]);

    // The same key with another release is another request.
    let other = h.run(
        Command::new("a", put_op("inv/count", json!(1), None))
            .with_idempotency_key("put-1")
            .with_release(next),
    );
    assert_eq!(err(&other).code, ErrorCode::IdempotencyMismatch);
    assert_eq!(held_by(&h, "inv/sku-1"), vec![next]);
}

#[test]
fn a_txn_releases_only_when_its_compares_held() {
    let mut h = Harness::new();
    let holder = lock(&h.acquire("a", None, &["inv/sku-1"], X, Some(10_000), 0)).lock_id;
    let waiter = lock(&h.acquire("b", None, &["inv/sku-1"], X, Some(10_000), 5_000)).lock_id;
    let txn = |exists: bool| {
        Op::Txn(Txn {
            compares: vec![Compare {
                key: "inv/count".into(),
                version: None,
                value: None,
                exists: Some(exists),
                op: CompareOp::Eq,
            }],
            success: vec![TxnOp::Put {
                key: "inv/count".into(),
                value: json!(1),
                ttl_ms: None,
            }],
            failure: vec![TxnOp::Get {
                key: "inv/count".into(),
            }],
        })
    };

    // The key does not exist: a compare of exists=true fails; the lock stays.
    let failed = h
        .run(Command::new("a", txn(true)).with_release(holder))
        .unwrap();
    let Response::Txn(failed) = failed else {
        panic!("expected a txn result, got {failed:?}");
    };
    assert!(!failed.succeeded);
    assert_eq!(failed.released_lock_id, None);
    assert_eq!(held_by(&h, "inv/sku-1"), vec![holder]);
    assert!(h.take_wakeups().is_empty());

    // Retried under the same lock with the right compare: applied and released.
    let done = h
        .run(Command::new("a", txn(false)).with_release(holder))
        .unwrap();
    let Response::Txn(done) = done else {
        panic!("expected a txn result, got {done:?}");
    };
    assert!(done.succeeded);
    assert_eq!(done.released_lock_id, Some(holder));
    assert_eq!(held_by(&h, "inv/sku-1"), vec![waiter]);
    assert_eq!(*h.machine.get("inv/count").unwrap().entry.value, json!(1));
}

#[test]
fn commands_without_release_encode_as_before() {
    let old = json!({"agent": "a", "op": {"op": "put", "key": "k/x", "value": 1}});
    let command: Command = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(command.release, None);
    assert_eq!(serde_json::to_value(&command).unwrap(), old);
    let with = command.with_release(7);
    assert_eq!(serde_json::to_value(&with).unwrap()["release"], 7);
}

#[test]
fn likely_queues_names_blocking_requests_on_taken_keys_only() {
    let mut h = Harness::new();
    let acquire = |keys: &[&str], wait_ms: u64| {
        Command::new(
            "b",
            Op::LockAcquire(LockAcquire {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                mode: X,
                ttl_ms: Some(10_000),
                wait_ms,
                lock_delay_ms: 0,
                read: false,
            }),
        )
    };
    assert!(
        !h.machine.likely_queues(&acquire(&["h/k"], 5_000)),
        "free key"
    );
    let held = lock(&h.acquire("a", None, &["h/k"], X, Some(10_000), 0)).lock_id;
    assert!(h.machine.likely_queues(&acquire(&["h/k"], 5_000)));
    assert!(h.machine.likely_queues(&acquire(&["h/free", "h/k"], 5_000)));
    assert!(
        !h.machine.likely_queues(&acquire(&["h/k"], 0)),
        "no wait: answered now"
    );
    assert!(
        !h.machine
            .likely_queues(&Command::new("b", Op::LockRelease { lock_id: held }))
    );
    // And the hint matches what apply does.
    let waiting = lock(&h.run(acquire(&["h/k"], 5_000))).clone();
    assert_eq!(waiting.status, LockStatus::Waiting);
    h.op("a", Op::LockRelease { lock_id: held }).unwrap();
    h.op(
        "b",
        Op::LockRelease {
            lock_id: waiting.lock_id,
        },
    )
    .unwrap();
    assert!(
        !h.machine.likely_queues(&acquire(&["h/k"], 5_000)),
        "free again"
    );
}

/// A token is the log sequence number of its grant, so two holders of a key
/// in a row must never be granted in the same step. Here one tick's
/// deadlines grant the key to a waiter (the holder's lease ended) and then
/// end that grant (the waiter's session expired in the same tick): the next
/// waiter is granted by a later command, with a larger token, and the ended
/// holder's token no longer passes the fence.
#[test]
fn a_key_granted_and_freed_in_one_step_is_granted_again_with_a_new_token() {
    let mut h = Harness::new();
    lock(&h.acquire("a", None, &["f/k"], X, Some(1000), 0));
    let session = h.open_session("b", 1500);
    let b = lock(&h.acquire("b", Some(session), &["f/k"], X, None, 60_000)).clone();
    let c = lock(&h.acquire("c", None, &["f/k"], X, Some(10_000), 60_000)).clone();
    assert_eq!(
        (b.status, c.status),
        (LockStatus::Waiting, LockStatus::Waiting)
    );

    h.advance(1500); // a's lease (due at 1000) and b's session (1500) both end
    let tick = h.seq;
    let wakeups = h.take_wakeups();
    let granted_b = wakeups
        .iter()
        .find(|w| w.id == b.lock_id)
        .map(|w| lock(&w.reply).clone())
        .expect("b was granted, then lost the lock with its session");
    assert_eq!(granted_b.fence_token, Some(tick));
    assert!(
        wakeups.iter().all(|w| w.id != c.lock_id),
        "c is not granted in the step that granted and freed the key: {wakeups:?}"
    );

    h.advance(1);
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1, "{wakeups:?}");
    assert_eq!(wakeups[0].id, c.lock_id);
    let granted_c = lock(&wakeups[0].reply).clone();
    assert!(granted_c.fence_token.unwrap() > granted_b.fence_token.unwrap());

    let stale = Command::new("b", put_op("f/data", json!("late"), None))
        .with_fence("f/k", granted_b.fence_token.unwrap());
    assert_eq!(err(&h.run(stale)).code, ErrorCode::Fenced);
    assert!(h.machine.get("f/data").is_err(), "nothing applied");
    assert!(
        !h.machine
            .check_fence("f/k", granted_b.fence_token.unwrap())
            .unwrap()
            .valid
    );
}

/// A retry of a queued acquire that arrives after the lock was freed but
/// before any tick granted it: the retry's own step grants the wait, and the
/// retry must get that grant, not join a wait that is already over (no
/// wakeup would ever come for it).
#[test]
fn a_retry_in_the_step_that_grants_its_wait_gets_the_grant() {
    let mut h = Harness::new();
    lock(&h.acquire("a", None, &["r/k"], X, Some(1000), 0));
    let acquire = Command::new(
        "b",
        Op::LockAcquire(LockAcquire {
            keys: vec!["r/k".into()],
            mode: X,
            ttl_ms: Some(5000),
            wait_ms: 60_000,
            lock_delay_ms: 0,
            read: false,
        }),
    )
    .with_idempotency_key("r");
    h.seq += 1;
    let first = h.machine.apply(h.seq, h.time, &acquire);
    let waiting = lock(&first.reply).clone();
    assert_eq!(waiting.status, LockStatus::Waiting);
    assert_eq!(first.pending, Some(waiting.lock_id));

    h.time += 1000; // a's lease is due; no tick has run yet
    h.seq += 1;
    let retry = h.machine.apply(h.seq, h.time, &acquire);
    assert_eq!(retry.pending, None, "the wait is over: {retry:?}");
    assert!(
        retry.wakeups.iter().any(|w| w.id == waiting.lock_id),
        "the original caller is woken in the same step"
    );
    let granted = lock(&retry.reply);
    assert_eq!(granted.lock_id, waiting.lock_id);
    assert_eq!(granted.status, LockStatus::Held);
    assert_eq!(granted.fence_token, Some(h.seq));
}
