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

/// A plain exclusive lock with a wait, as `agent` without a session.
fn lock_x(h: &mut Harness, agent: &str, wait_ms: u64) -> Reply {
    h.acquire(
        agent,
        None,
        &["db/x"],
        LockMode::Exclusive,
        Some(10_000),
        wait_ms,
    )
}

#[test]
fn a_cycle_through_one_semaphore_holder_is_no_deadlock_while_another_can_free_the_permits() {
    let mut h = Harness::new();
    // alice and bob fill the 3 permits; alice then waits for carol's db/x.
    lock(&sem(&mut h, "alice", 1, 0));
    let bob = lock(&sem(&mut h, "bob", 2, 0)).clone();
    lock(&lock_x(&mut h, "carol", 0));
    assert_eq!(
        lock(&lock_x(&mut h, "alice", 30_000)).status,
        LockStatus::Waiting
    );
    // carol needs one permit: bob's release is enough, and bob waits for nobody.
    let carol = lock(&sem(&mut h, "carol", 1, 30_000)).clone();
    assert_eq!(carol.status, LockStatus::Waiting);

    // Now bob waits for db/x too: alice never releases (she waits for carol),
    // bob never releases (he waits for carol), carol waits for a permit of theirs.
    let refused = lock_x(&mut h, "bob", 30_000);
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::Deadlock, "{error:?}");
    let cycle = error.details.as_ref().unwrap()["cycle"]
        .as_array()
        .unwrap()
        .clone();
    let waiters: Vec<&str> = cycle
        .iter()
        .map(|step| step["waiter"].as_str().unwrap())
        .collect();
    assert!(
        waiters.iter().any(|w| w.contains("bob")) && waiters.iter().any(|w| w.contains("carol")),
        "{cycle:?}"
    );
    assert_eq!(
        h.machine.key_locks("db/x").unwrap().waiters.len(),
        1,
        "the refused wait is not queued"
    );

    h.take_wakeups();
    h.op(
        "bob",
        Op::LockRelease {
            lock_id: bob.lock_id,
        },
    )
    .unwrap();
    let granted: Vec<u64> = h.take_wakeups().iter().map(|w| w.id).collect();
    assert_eq!(granted, vec![carol.lock_id], "bob's permits go to carol");
}

#[test]
fn a_semaphore_wait_is_a_deadlock_when_the_permits_it_needs_are_held_in_the_cycle() {
    let mut h = Harness::new();
    lock(&sem(&mut h, "alice", 1, 0));
    let bob = lock(&sem(&mut h, "bob", 1, 0)).clone();
    lock(&lock_x(&mut h, "carol", 0));
    lock(&lock_x(&mut h, "alice", 30_000));
    // All 3 permits: alice's would have to go, and alice waits for carol.
    let all = h.op(
        "carol",
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits: 3,
            capacity: 3,
            ttl_ms: Some(10_000),
            wait_ms: 30_000,
        },
    );
    assert_eq!(err(&all).code, ErrorCode::Deadlock, "{all:?}");
    assert!(
        h.machine.key_locks("gpu/slots").unwrap().waiters.is_empty(),
        "nothing applied"
    );
    // 2 permits: bob's release frees enough, whatever alice does.
    let two = h.op(
        "carol",
        Op::SemaphoreAcquire {
            key: "gpu/slots".into(),
            permits: 2,
            capacity: 3,
            ttl_ms: Some(10_000),
            wait_ms: 30_000,
        },
    );
    let two = lock(&two).clone();
    assert_eq!(two.status, LockStatus::Waiting);
    h.take_wakeups();
    h.op(
        "bob",
        Op::LockRelease {
            lock_id: bob.lock_id,
        },
    )
    .unwrap();
    let granted: Vec<u64> = h.take_wakeups().iter().map(|w| w.id).collect();
    assert_eq!(granted, vec![two.lock_id]);
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

const GRAPH_AGENTS: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];
const GRAPH_KEYS: [&str; 5] = ["db/w", "db/x", "db/y", "db/z", "gpu/slots"];
/// The plain keys among `GRAPH_KEYS`.
const PLAIN_KEYS: usize = 4;

#[derive(Debug, Clone)]
enum GraphStep {
    Lock {
        agent: usize,
        keys: u8,
        shared: bool,
        wait: bool,
    },
    Permits {
        agent: usize,
        permits: u64,
        wait: bool,
    },
    Release {
        agent: usize,
        pick: usize,
    },
}

fn graph_step() -> impl Strategy<Value = GraphStep> {
    prop_oneof![
        (0..6usize, 1..16u8, any::<bool>(), any::<bool>()).prop_map(
            |(agent, keys, shared, wait)| {
                GraphStep::Lock {
                    agent,
                    keys,
                    shared,
                    wait,
                }
            }
        ),
        (0..6usize, 1..4u64, any::<bool>()).prop_map(|(agent, permits, wait)| GraphStep::Permits {
            agent,
            permits,
            wait
        }),
        (0..6usize, any::<usize>()).prop_map(|(agent, pick)| GraphStep::Release { agent, pick }),
    ]
}

fn graph_op(step: &GraphStep, wait_ms: u64) -> (usize, Op) {
    match *step {
        GraphStep::Lock {
            agent,
            keys,
            shared,
            ..
        } => {
            let keys = GRAPH_KEYS[..PLAIN_KEYS]
                .iter()
                .enumerate()
                .filter(|(i, _)| keys & (1 << i) != 0)
                .map(|(_, k)| k.to_string())
                .collect();
            let mode = if shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            let op = Op::LockAcquire(LockAcquire {
                keys,
                mode,
                ttl_ms: Some(60_000),
                wait_ms,
                lock_delay_ms: 0,
                read: false,
            });
            (agent, op)
        }
        GraphStep::Permits { agent, permits, .. } => (
            agent,
            Op::SemaphoreAcquire {
                key: "gpu/slots".into(),
                permits,
                capacity: 3,
                ttl_ms: Some(60_000),
                wait_ms,
            },
        ),
        GraphStep::Release { .. } => unreachable!("not a request"),
    }
}

/// Every live lock on the test's keys, each once.
fn live_locks(h: &Harness) -> Vec<LockInfo> {
    let mut all: Vec<LockInfo> = GRAPH_KEYS
        .iter()
        .flat_map(|key| {
            let info = h.machine.key_locks(key).unwrap();
            info.holders.into_iter().chain(info.waiters)
        })
        .collect();
    all.sort_by_key(|l| l.lock_id);
    all.dedup_by_key(|l| l.lock_id);
    all
}

/// Let every agent that waits for nothing (other than `except`) release
/// all it holds, again and again as grants free more agents: what happens
/// if everyone who can finish does.
fn settle(h: &mut Harness, except: Option<&str>) {
    loop {
        let all = live_locks(h);
        let waiting: Vec<&str> = all
            .iter()
            .filter(|l| l.status == LockStatus::Waiting)
            .map(|l| l.agent.as_str())
            .collect();
        let free: Vec<(String, u64)> = all
            .iter()
            .filter(|l| !waiting.contains(&l.agent.as_str()) && Some(l.agent.as_str()) != except)
            .map(|l| (l.agent.clone(), l.lock_id))
            .collect();
        if free.is_empty() {
            return;
        }
        for (agent, lock_id) in free {
            h.op(&agent, Op::LockRelease { lock_id }).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Deadlock detection is exact over locks and semaphores together: an
    /// accepted wait always ends once everyone who can finish does, and a
    /// wait refused with DEADLOCK could never have been granted while its
    /// agent kept waiting.
    #[test]
    fn deadlock_is_reported_exactly_when_a_wait_could_never_end(steps in proptest::collection::vec(graph_step(), 1..80)) {
        let mut h = Harness::new();
        for step in steps {
            if let GraphStep::Release { agent, pick } = step {
                let mine: Vec<u64> = live_locks(&h)
                    .iter()
                    .filter(|l| l.agent == GRAPH_AGENTS[agent])
                    .map(|l| l.lock_id)
                    .collect();
                if !mine.is_empty() {
                    let lock_id = mine[pick % mine.len()];
                    h.op(GRAPH_AGENTS[agent], Op::LockRelease { lock_id }).unwrap();
                }
                continue;
            }
            let wait = matches!(step, GraphStep::Lock { wait: true, .. } | GraphStep::Permits { wait: true, .. });
            let (agent, op) = graph_op(&step, if wait { 30_000 } else { 0 });
            let name = GRAPH_AGENTS[agent];
            let reentrant = live_locks(&h)
                .iter()
                .any(|l| l.agent == name && l.keys.iter().any(|k| op.keys().contains(k)));
            let before = h.clone_machine();
            let reply = h.op(name, op);
            if let Err(error) = &reply
                && error.code == ErrorCode::Deadlock
                && !reentrant
            {
                // Everyone else who can finish does; the same request must
                // still not fit.
                let mut probe = before;
                settle(&mut probe, Some(name));
                let (_, now) = graph_op(&step, 0);
                let retried = probe.op(name, now);
                prop_assert!(
                    matches!(&retried, Err(e) if e.code == ErrorCode::ConcurrentModification),
                    "DEADLOCK for {name} {step:?} ({error:?}), yet it fits once the others finish: {retried:?}"
                );
            }
            let mut probe = h.clone_machine();
            settle(&mut probe, None);
            let stuck: Vec<LockInfo> = live_locks(&probe);
            prop_assert!(stuck.is_empty(), "waits that never end after {step:?}: {stuck:?}");
        }
    }
}

/// A cycle found early must not hide a longer one: every wait here depends
/// on r, one of them through three others.
#[test]
fn a_deadlock_through_a_longer_path_is_found_after_a_shorter_cycle() {
    let mut h = Harness::new();
    let plain = |h: &mut Harness, agent: &str, key: &str, wait_ms: u64| {
        h.acquire(
            agent,
            None,
            &[key],
            LockMode::Exclusive,
            Some(600_000),
            wait_ms,
        )
    };
    let permit = |h: &mut Harness, agent: &str, wait_ms: u64| {
        h.op(
            agent,
            Op::SemaphoreAcquire {
                key: "gpu/slots".into(),
                permits: 1,
                capacity: 2,
                ttl_ms: Some(600_000),
                wait_ms,
            },
        )
    };
    lock(&plain(&mut h, "r", "k/r", 0));
    lock(&permit(&mut h, "x", 0));
    lock(&permit(&mut h, "y", 0));
    lock(&plain(&mut h, "z", "k/z", 0));
    lock(&plain(&mut h, "w", "k/w", 0));
    for (agent, key) in [("x", "k/r"), ("w", "k/r"), ("z", "k/w"), ("y", "k/z")] {
        assert_eq!(
            lock(&plain(&mut h, agent, key, 600_000)).status,
            LockStatus::Waiting
        );
    }
    // x waits for r directly; y for z, z for w, w for r. Neither permit
    // holder can release while r waits for a permit.
    let refused = permit(&mut h, "r", 600_000);
    assert_eq!(err(&refused).code, ErrorCode::Deadlock, "{refused:?}");
    assert!(h.machine.key_locks("gpu/slots").unwrap().waiters.is_empty());
}
