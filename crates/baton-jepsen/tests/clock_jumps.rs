//! Clock jumps handed to the core. Time enters Baton only as the stamp the
//! sequencer puts on a command, so a wall clock that jumps is a sequence of
//! stamps that jumps. A stamp in the past must not move the core's time
//! backwards, revive a lease, or extend one; a jump forward fires everything
//! that fell due, in order; `next_deadline` always names the next thing due.

use baton_core::{
    Command, EventKind, Limits, LockAcquire, LockMode, LockState, Op, Response, StateMachine,
};
use serde_json::json;

fn acquire(agent: &str, key: &str, ttl_ms: u64, wait_ms: u64) -> Command {
    Command::new(
        agent,
        Op::LockAcquire(LockAcquire {
            keys: vec![key.to_string()],
            mode: LockMode::Exclusive,
            ttl_ms: Some(ttl_ms),
            wait_ms,
            lock_delay_ms: 0,
            read: false,
        }),
    )
}

fn put(agent: &str, key: &str, value: i64, ttl_ms: Option<u64>) -> Command {
    Command::new(
        agent,
        Op::Put {
            key: key.to_string(),
            value: json!(value),
            if_version: None,
            if_absent: false,
            ttl_ms,
        },
    )
}

fn kinds(events: &[baton_core::Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_stamp_in_the_past_neither_moves_time_back_nor_revives_or_stretches_a_lease() {
    let mut m = StateMachine::new(Limits::default());
    let granted = m.apply(1, 10_000, &acquire("a", "l/x", 1_000, 0));
    let Ok(Response::Lock(info)) = granted.reply else {
        panic!("{granted:?}")
    };
    assert_eq!((info.fence_token, info.expires_at), (Some(1), Some(11_000)));
    assert_eq!(m.next_deadline(), Some(11_000));

    // The clock jumps back before the lease end: nothing expires, time stays.
    let back = m.apply(2, 4_000, &Command::tick());
    assert!(back.events.is_empty(), "{back:?}");
    assert_eq!(
        m.now(),
        10_000,
        "a stamp in the past does not move time back"
    );
    // A renew stamped in the past extends from the core's time, not the stamp.
    let renewed = m.apply(
        3,
        5_000,
        &Command::new(
            "a",
            Op::LockRenew {
                lock_id: 1,
                ttl_ms: None,
            },
        ),
    );
    let Ok(Response::Lock(info)) = renewed.reply else {
        panic!("{renewed:?}")
    };
    assert_eq!(
        info.expires_at,
        Some(11_000),
        "renewed from now = 10000, not from the stamp"
    );

    // The lease ends at its time.
    let due = m.apply(4, 11_000, &Command::tick());
    assert_eq!(kinds(&due.events), vec![EventKind::LeaseLost]);
    assert_eq!(m.next_deadline(), None);

    // Stamps from before the expiry cannot bring the lock back.
    let late = m.apply(5, 9_000, &put("a", "p/x", 1, None).with_fence("l/x", 1));
    assert_eq!(late.reply.unwrap_err().code, baton_core::ErrorCode::Fenced);
    assert_eq!(m.now(), 11_000);
    assert!(matches!(m.lock_state(1), Ok(LockState::Ended { .. })));
    assert!(!m.check_fence("l/x", 1).unwrap().valid);

    // A new holder's lease counts from the core's time even with an old stamp.
    let next = m.apply(6, 9_500, &acquire("b", "l/x", 1_000, 0));
    let Ok(Response::Lock(info)) = next.reply else {
        panic!("{next:?}")
    };
    assert_eq!((info.fence_token, info.expires_at), (Some(6), Some(12_000)));
    assert_eq!(m.next_deadline(), Some(12_000));
    assert!(m.apply(7, 11_999, &Command::tick()).events.is_empty());
    assert!(m.apply(8, 1, &Command::tick()).events.is_empty());
    assert_eq!(
        kinds(&m.apply(9, 12_000, &Command::tick()).events),
        vec![EventKind::LeaseLost]
    );
}

#[test]
fn a_jump_forward_fires_everything_due_in_deadline_order() {
    let mut m = StateMachine::new(Limits::default());
    let session = m.apply(
        1,
        1_000,
        &Command::new("s", Op::SessionOpen { ttl_ms: 500 }),
    );
    assert!(session.reply.is_ok());
    // Held by the session (ends at 1500), a waiter (deadline 1000 + 5000),
    // a key with a TTL (ends at 1000 + 2000), a lock with its own TTL (1000 + 3000).
    let mut in_session = acquire("s", "l/a", 60_000, 0);
    in_session.session = Some(1);
    assert!(m.apply(2, 1_000, &in_session).reply.is_ok());
    let waiting = m.apply(3, 1_000, &acquire("w", "l/a", 10_000, 5_000));
    assert!(matches!(waiting.reply, Ok(Response::Lock(ref i)) if i.fence_token.is_none()));
    assert!(
        m.apply(4, 1_000, &put("k", "s/ttl", 1, Some(2_000)))
            .reply
            .is_ok()
    );
    assert!(
        m.apply(5, 1_000, &acquire("t", "l/b", 3_000, 0))
            .reply
            .is_ok()
    );
    assert_eq!(m.next_deadline(), Some(1_500));

    // One hour later in a single jump.
    let jump = m.apply(6, 3_601_000, &Command::tick());
    assert_eq!(m.now(), 3_601_000);
    let order: Vec<(EventKind, Vec<String>)> = jump
        .events
        .iter()
        .map(|e| (e.kind, e.keys.clone()))
        .collect();
    // The session ends first (its lock is lost and the waiter is granted),
    // then the key expires, then l/b's lease ends.
    assert_eq!(order[0].0, EventKind::LeaseLost, "{order:?}");
    assert_eq!(order[0].1, vec!["l/a".to_string()]);
    let position = |kind: EventKind, key: &str| {
        order
            .iter()
            .position(|(k, keys)| *k == kind && keys.iter().any(|x| x == key))
            .unwrap_or_else(|| panic!("no {kind:?} on {key} in {order:?}"))
    };
    assert!(
        order.iter().any(|(k, _)| *k == EventKind::SessionExpired),
        "{order:?}"
    );
    assert!(position(EventKind::LeaseLost, "l/a") < position(EventKind::LockGranted, "l/a"));
    assert!(position(EventKind::LockGranted, "l/a") < position(EventKind::KeyExpired, "s/ttl"));
    assert!(position(EventKind::KeyExpired, "s/ttl") < position(EventKind::LeaseLost, "l/b"));
    // The waiter was granted with this command's seq as its token, and its
    // lease runs from the jump, not from its request.
    let granted = jump
        .events
        .iter()
        .find(|e| e.kind == EventKind::LockGranted)
        .unwrap();
    assert_eq!(granted.fence_token, Some(6));
    assert_eq!(m.next_deadline(), Some(3_601_000 + 10_000));
    assert!(m.get("s/ttl").is_err(), "the key with a TTL is gone");
    // Jumping back afterwards changes nothing.
    assert!(m.apply(7, 2_000, &Command::tick()).events.is_empty());
    assert_eq!(m.next_deadline(), Some(3_611_000));
}

#[test]
fn next_deadline_is_exact_under_random_jumps() {
    // Every deadline is honoured at its exact time and not a millisecond
    // earlier, whatever stamps come in between.
    let mut m = StateMachine::new(Limits::default());
    let mut rng = baton_jepsen::rng::Rng::new(42);
    let mut seq = 0;
    let mut time = 100_000u64;
    for round in 0..300 {
        seq += 1;
        let command = match rng.below(4) {
            0 => acquire(
                &format!("a{}", rng.below(4)),
                &format!("l/{}", rng.below(3)),
                10 + rng.below(500),
                rng.below(2) * rng.below(400),
            ),
            1 => put(
                "p",
                &format!("k/{}", rng.below(3)),
                round,
                Some(10 + rng.below(500)),
            ),
            2 => Command::new(
                format!("s{}", rng.below(3)),
                Op::SessionOpen {
                    ttl_ms: 10 + rng.below(500),
                },
            ),
            _ => Command::tick(),
        };
        let before = m.now();
        m.apply(seq, time, &command);
        assert_eq!(m.now(), before.max(time));
        if let Some(deadline) = m.next_deadline() {
            assert!(
                deadline > m.now(),
                "round {round}: {deadline} is due at {} but did not fire",
                m.now()
            );
            // One ms early: nothing due fires.
            seq += 1;
            let early = m.apply(seq, deadline - 1, &Command::tick());
            assert_eq!(
                m.next_deadline(),
                Some(deadline),
                "round {round}: fired early: {early:?}"
            );
            // A stamp in the past: nothing either.
            seq += 1;
            m.apply(seq, deadline.saturating_sub(10_000), &Command::tick());
            assert_eq!(m.next_deadline(), Some(deadline));
            // At the deadline: it fires.
            seq += 1;
            m.apply(seq, deadline, &Command::tick());
            assert!(
                m.next_deadline().is_none_or(|next| next > deadline),
                "round {round}: {deadline} did not fire"
            );
        }
        time = match rng.below(5) {
            0 => time.saturating_sub(rng.below(5_000)),
            1 => time + 100_000,
            _ => time + rng.below(50),
        };
    }
}
