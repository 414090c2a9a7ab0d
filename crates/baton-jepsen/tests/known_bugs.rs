//! Baton bugs this crate found, kept as regression tests now that they are fixed.

use baton_core::{
    Command, ErrorCode, Limits, LockAcquire, LockMode, LockStatus, Op, Response, StateMachine, Txn,
    TxnOp, envelope,
};

fn counter_add(key: &str, delta: i64) -> Op {
    Op::CounterAdd {
        key: key.to_string(),
        delta,
        min: None,
        max: None,
    }
}

/// Found by the `apply` fuzz body (snapshot → restore → snapshot changed the
/// bytes). Replies kept in the state for idempotency are `Response`, an
/// `#[serde(untagged)]` enum that lists `Write(WriteResult)` before
/// `Counter(CounterResult)`; `WriteResult` accepts unknown fields, so a
/// recorded `{"key","value","version"}` reads back from a snapshot as a
/// `WriteResult` without the value. A node restored from a snapshot then
/// answers an idempotent retry differently from one that replayed the log.
#[test]
fn an_idempotent_counter_add_replays_the_same_reply_after_a_snapshot_restore() {
    let mut machine = StateMachine::new(Limits::default());
    let add = Command::new("agent", counter_add("c/x", 5)).with_idempotency_key("add-once");
    let first = machine.apply(1, 1_000, &add).reply;
    assert_eq!(
        envelope(&machine.apply(2, 1_001, &add).reply),
        envelope(&first),
        "a replay from memory is exact"
    );

    let mut restored = StateMachine::restore(&machine.snapshot(), Limits::default()).unwrap();
    let replay = restored.apply(3, 1_002, &add).reply;
    assert_eq!(
        envelope(&replay),
        envelope(&first),
        "the same retry after a restart from a snapshot"
    );
}

#[test]
fn an_idempotent_txn_with_counters_replays_the_same_reply_after_a_snapshot_restore() {
    let mut machine = StateMachine::new(Limits::default());
    let txn = Op::Txn(Txn {
        compares: Vec::new(),
        success: vec![TxnOp::CounterAdd {
            key: "t/a".into(),
            delta: -2,
            min: None,
            max: None,
        }],
        failure: Vec::new(),
    });
    let command = Command::new("agent", txn).with_idempotency_key("txn-once");
    let first = machine.apply(1, 1_000, &command).reply;
    let mut restored = StateMachine::restore(&machine.snapshot(), Limits::default()).unwrap();
    assert_eq!(
        envelope(&restored.apply(2, 1_001, &command).reply),
        envelope(&first)
    );
}

/// Found by the crash workload: a lock request that queued, whose client lost
/// the answer, is retried with its idempotency key after the wait timed out.
/// The waiter itself was told CONCURRENT_MODIFICATION; the retry was told
/// FENCED ("you no longer hold it: stop writing with its fence"), for a lock
/// that was never granted. Fixed in 6360f45 (the retry got the waiter's
/// answer); since a wait that ends without applying leaves no idempotency
/// record, the retry runs again and queues anew. Kept as a regression test:
/// never FENCED for a lock that was never granted.
#[test]
fn a_retried_lock_wait_that_timed_out_replays_the_waiters_answer() {
    let acquire = |wait_ms| {
        Op::LockAcquire(LockAcquire {
            keys: vec!["l/x".into()],
            mode: LockMode::Exclusive,
            ttl_ms: Some(60_000),
            wait_ms,
            lock_delay_ms: 0,
            read: false,
        })
    };
    let mut machine = StateMachine::new(Limits::default());
    assert!(
        machine
            .apply(1, 1_000, &Command::new("holder", acquire(0)))
            .reply
            .is_ok()
    );
    let wait = Command::new("waiter", acquire(100)).with_idempotency_key("wait-once");
    assert!(machine.apply(2, 1_000, &wait).reply.is_ok(), "queued");
    let timed_out = machine.apply(3, 1_200, &Command::tick());
    let told = timed_out.wakeups[0].reply.as_ref().unwrap_err().code;
    assert_eq!(told, ErrorCode::ConcurrentModification);
    let retry = machine.apply(4, 1_300, &wait);
    let Ok(Response::Lock(queued)) = &retry.reply else {
        panic!("the retry runs again: {:?}", retry.reply);
    };
    assert_eq!(queued.status, LockStatus::Waiting);
    assert_eq!(retry.pending, Some(queued.lock_id), "queued anew");
}
