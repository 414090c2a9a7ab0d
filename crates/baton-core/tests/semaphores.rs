//! Counting semaphores: weighted shared locks with the locks' queue, leases,
//! fencing and deadlock rules.

mod common;

use baton_core::*;
use common::*;
use proptest::prelude::*;

fn sem(h: &mut Harness, agent: &str, permits: u64, wait_ms: u64) -> Reply {
    h.op(
        agent,
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits,
            capacity: 3,
            ttl_ms: Some(10_000),
            wait_ms,
        },
    )
}

#[test]
fn permits_are_granted_up_to_capacity_then_queued_fifo() {
    let mut h = Harness::new();
    let a = lock(&sem(&mut h, "a", 1, 0)).clone();
    let b = lock(&sem(&mut h, "b", 2, 0)).clone();
    assert_eq!((a.permits, b.permits), (Some(1), Some(2)));
    assert_ne!(
        a.fence_token, b.fence_token,
        "every grant has its own fence"
    );
    let busy = sem(&mut h, "c", 1, 0);
    assert_eq!(err(&busy).code, ErrorCode::ConcurrentModification);
    assert!(
        err(&busy).message.contains("has 3 of 3 permits held"),
        "{}",
        err(&busy).message
    );
    assert_eq!(err(&busy).retry_after_ms, Some(10_000));
    let big = lock(&sem(&mut h, "big", 2, 10_000)).clone();
    let small = lock(&sem(&mut h, "small", 1, 10_000)).clone();
    assert_eq!(
        (big.status, small.status),
        (LockStatus::Waiting, LockStatus::Waiting)
    );
    h.op("a", Op::LockRelease { lock_id: a.lock_id }).unwrap();
    assert!(
        h.take_wakeups().is_empty(),
        "1 free permit: the 2-permit waiter at the head still waits, the 1-permit one behind it may not pass"
    );
    h.op("b", Op::LockRelease { lock_id: b.lock_id }).unwrap();
    let granted: Vec<u64> = h.take_wakeups().iter().map(|w| w.id).collect();
    assert_eq!(granted, vec![big.lock_id, small.lock_id]);
    let info = h.machine.key_locks("gpu/slots").unwrap();
    assert_eq!((info.capacity, info.permits_held), (Some(3), Some(3)));
}

#[test]
fn semaphores_and_locks_do_not_mix_and_bad_input_is_refused() {
    let mut h = Harness::new();
    sem(&mut h, "a", 1, 0).unwrap();
    let wrong_capacity = h.op(
        "b",
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits: 1,
            capacity: 5,
            ttl_ms: Some(1000),
            wait_ms: 0,
        },
    );
    assert_eq!(err(&wrong_capacity).code, ErrorCode::InvalidArgument);
    let as_lock = h.acquire(
        "b",
        None,
        &["gpu/slots"],
        LockMode::Exclusive,
        Some(1000),
        0,
    );
    assert_eq!(err(&as_lock).code, ErrorCode::InvalidArgument);
    assert_eq!(
        err(&sem(&mut h, "b", 4, 0)).code,
        ErrorCode::InvalidArgument,
        "more permits than capacity"
    );
    assert_eq!(
        err(&sem(&mut h, "b", 0, 0)).code,
        ErrorCode::InvalidArgument
    );
    h.acquire(
        "b",
        None,
        &["plain/lock"],
        LockMode::Exclusive,
        Some(1000),
        0,
    )
    .unwrap();
    let on_lock = h.op(
        "c",
        Op::SemaphoreAcquire {
            key: "plain/lock".into(),
            permits: 1,
            capacity: 2,
            ttl_ms: Some(1000),
            wait_ms: 0,
        },
    );
    assert_eq!(err(&on_lock).code, ErrorCode::InvalidArgument);
    assert_eq!(
        h.machine.key_locks("gpu/slots").unwrap().holders.len(),
        1,
        "nothing applied"
    );
}

#[test]
fn a_semaphore_wait_that_closes_a_cycle_is_a_deadlock() {
    let mut h = Harness::new();
    let sa = h.open_session("alice", 60_000);
    let sb = h.open_session("bob", 60_000);
    let mut cmd = Command::new(
        "alice",
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits: 3,
            capacity: 3,
            ttl_ms: None,
            wait_ms: 0,
        },
    );
    cmd.session = Some(sa);
    h.run(cmd).unwrap();
    h.acquire("bob", Some(sb), &["db/x"], LockMode::Exclusive, None, 0)
        .unwrap();
    h.acquire(
        "alice",
        Some(sa),
        &["db/x"],
        LockMode::Exclusive,
        None,
        30_000,
    )
    .unwrap();
    let mut cmd = Command::new(
        "bob",
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits: 1,
            capacity: 3,
            ttl_ms: None,
            wait_ms: 30_000,
        },
    );
    cmd.session = Some(sb);
    assert_eq!(err(&h.run(cmd)).code, ErrorCode::Deadlock);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Held permits never exceed the capacity; every waiter is settled by its deadline.
    #[test]
    fn permits_never_exceed_capacity(steps in proptest::collection::vec((0u8..3, 1u64..4, 0u64..800, any::<usize>()), 1..150)) {
        let mut h = Harness::new();
        let mut mine: Vec<(String, u64)> = Vec::new();
        for (i, (kind, permits, n, pick)) in steps.into_iter().enumerate() {
            match kind {
                0 => {
                    let agent = format!("agent-{i}");
                    if let Ok(Response::Lock(info)) = sem(&mut h, &agent, permits, n) {
                        mine.push((agent, info.lock_id));
                    }
                }
                1 if !mine.is_empty() => {
                    let (agent, id) = mine.remove(pick % mine.len());
                    h.op(&agent, Op::LockRelease { lock_id: id }).unwrap();
                }
                _ => h.advance(n),
            }
            let info = h.machine.key_locks("gpu/slots").unwrap();
            let held: u64 = info.holders.iter().filter_map(|l| l.permits).sum();
            prop_assert!(held <= 3);
            prop_assert!(info.waiters.iter().all(|w| w.wait_deadline.unwrap() > h.machine.now()));
        }
    }
}
