//! Quotas with reservations, and shared token buckets.

mod common;

use baton_core::*;
use common::*;
use proptest::prelude::*;

fn reserve(h: &mut Harness, agent: &str, amount: u64, ttl_ms: u64) -> Reply {
    h.op(
        agent,
        Op::QuotaReserve {
            quota: "spend/llm".into(),
            amount,
            ttl_ms,
        },
    )
}

fn reservation(reply: &Reply) -> &ReservationInfo {
    match reply {
        Ok(Response::Reservation(r)) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

#[test]
fn reserve_then_commit_or_release_keeps_within_capacity() {
    let mut h = Harness::new();
    h.op(
        "admin",
        Op::QuotaSet {
            quota: "spend/llm".into(),
            capacity: 100,
            reset_used: false,
        },
    )
    .unwrap();
    let a = reservation(&reserve(&mut h, "a", 60, 10_000)).clone();
    assert_eq!(a.available, 40);
    let refused = reserve(&mut h, "b", 50, 10_000);
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::QuotaExceeded);
    assert_eq!(
        error.retry_after_ms,
        Some(10_000),
        "a's expiry would free enough"
    );
    let b = reservation(&reserve(&mut h, "b", 40, 10_000)).clone();

    let settled = h
        .op(
            "a",
            Op::QuotaCommit {
                reservation_id: a.reservation_id,
                actual: 25,
            },
        )
        .unwrap();
    assert!(matches!(
        settled,
        Response::Settled(SettleResult {
            committed: 25,
            returned: 35,
            settled: true,
            ..
        })
    ));
    let quota = h.machine.quota("spend/llm").unwrap();
    assert_eq!((quota.used, quota.reserved, quota.available), (25, 40, 35));

    h.op(
        "b",
        Op::QuotaRelease {
            reservation_id: b.reservation_id,
        },
    )
    .unwrap();
    let again = h
        .op(
            "b",
            Op::QuotaRelease {
                reservation_id: b.reservation_id,
            },
        )
        .unwrap();
    assert!(
        matches!(
            again,
            Response::Settled(SettleResult { settled: false, .. })
        ),
        "release is idempotent"
    );
    assert_eq!(h.machine.quota("spend/llm").unwrap().available, 75);

    // More than can ever fit: no retry hint.
    let never = reserve(&mut h, "c", 90, 10_000);
    assert_eq!(err(&never).retry_after_ms, None);
}

#[test]
fn an_expired_reservation_returns_to_the_pool_with_an_event() {
    let mut h = Harness::new();
    h.op(
        "admin",
        Op::QuotaSet {
            quota: "spend/llm".into(),
            capacity: 10,
            reset_used: false,
        },
    )
    .unwrap();
    let r = reservation(&reserve(&mut h, "a", 10, 1_000)).clone();
    h.advance(1_000);
    assert_eq!(h.machine.quota("spend/llm").unwrap().available, 10);
    assert!(
        h.take_events()
            .iter()
            .any(|e| e.kind == EventKind::ReservationExpired)
    );
    let late = h.op(
        "a",
        Op::QuotaCommit {
            reservation_id: r.reservation_id,
            actual: 5,
        },
    );
    assert_eq!(err(&late).code, ErrorCode::Fenced);
    assert_eq!(
        h.machine.quota("spend/llm").unwrap().used,
        0,
        "a late commit consumes nothing"
    );
}

#[test]
fn bad_quota_input_is_refused() {
    let mut h = Harness::new();
    assert_eq!(
        err(&reserve(&mut h, "a", 1, 1000)).code,
        ErrorCode::NotFound
    );
    h.op(
        "admin",
        Op::QuotaSet {
            quota: "spend/llm".into(),
            capacity: 10,
            reset_used: false,
        },
    )
    .unwrap();
    assert_eq!(
        err(&reserve(&mut h, "a", 0, 1000)).code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&reserve(&mut h, "a", 1, 0)).code,
        ErrorCode::InvalidArgument
    );
    let r = reservation(&reserve(&mut h, "a", 5, 1000)).clone();
    assert_eq!(
        err(&h.op(
            "a",
            Op::QuotaCommit {
                reservation_id: r.reservation_id,
                actual: 6
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&h.op(
            "mallory",
            Op::QuotaCommit {
                reservation_id: r.reservation_id,
                actual: 1
            }
        ))
        .code,
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        err(&h.op(
            "a",
            Op::QuotaRelease {
                reservation_id: 424_242
            }
        ))
        .code,
        ErrorCode::NotFound
    );
    assert_eq!(
        h.machine.quota("spend/llm").unwrap().reserved,
        5,
        "nothing applied"
    );
}

#[test]
fn a_bucket_refuses_with_an_exact_retry_hint_and_accounts_per_agent() {
    let mut h = Harness::new();
    let take = |n| Op::RateTake {
        bucket: "api/openai".into(),
        tokens: n,
        rate_per_sec: 10,
        burst: 5,
        wait_ms: 0,
    };
    for _ in 0..5 {
        h.op("noisy", take(1)).unwrap();
    }
    let refused = h.op("quiet", take(1));
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert_eq!(
        error.retry_after_ms,
        Some(100),
        "one token at 10/s is 100 ms away"
    );
    h.time += 99;
    assert_eq!(err(&h.op("quiet", take(1))).retry_after_ms, Some(1));
    h.time += 1;
    h.op("quiet", take(1)).unwrap();
    let status = h.machine.bucket("api/openai").unwrap();
    assert_eq!(
        status.usage[0],
        AgentUsage {
            agent: "noisy".into(),
            tokens: 5
        }
    );
    assert_eq!(
        status.usage[1],
        AgentUsage {
            agent: "quiet".into(),
            tokens: 1
        }
    );
    assert_eq!(
        err(&h.op("a", take(6))).code,
        ErrorCode::InvalidArgument,
        "more than the burst can never be granted"
    );
    assert_eq!(
        err(&h.op(
            "a",
            Op::RateTake {
                bucket: "api/x".into(),
                tokens: 1,
                rate_per_sec: 0,
                burst: 1,
                wait_ms: 0
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Reservations never let committed + reserved exceed the capacity.
    #[test]
    fn reservations_never_exceed_capacity(steps in proptest::collection::vec((0u8..4, 1u64..40, 1u64..2_000, any::<usize>()), 1..150)) {
        let mut h = Harness::new();
        h.op("admin", Op::QuotaSet { quota: "spend/llm".into(), capacity: 100, reset_used: false }).unwrap();
        let mut live: Vec<(u64, u64)> = Vec::new();
        for (kind, amount, ms, pick) in steps {
            match kind {
                0 => if let Ok(Response::Reservation(r)) = reserve(&mut h, "a", amount, 1_000) { live.push((r.reservation_id, r.amount)); },
                1 if !live.is_empty() => {
                    let (id, reserved) = live.remove(pick % live.len());
                    let _ = h.op("a", Op::QuotaCommit { reservation_id: id, actual: amount.min(reserved) });
                }
                2 if !live.is_empty() => {
                    let (id, _) = live.remove(pick % live.len());
                    h.op("a", Op::QuotaRelease { reservation_id: id }).unwrap();
                }
                _ => h.advance(ms),
            }
            let q = h.machine.quota("spend/llm").unwrap();
            prop_assert!(q.used + q.reserved <= q.capacity, "{q:?}");
        }
    }

    /// A bucket never grants more than burst + rate x elapsed.
    #[test]
    fn a_bucket_never_grants_more_than_burst_plus_refill(steps in proptest::collection::vec((1u64..4, 0u64..300), 1..300)) {
        let mut h = Harness::new();
        let start = h.time;
        let mut granted = 0u64;
        for (tokens, wait) in steps {
            h.time += wait;
            if h.op("a", Op::RateTake { bucket: "api/x".into(), tokens, rate_per_sec: 50, burst: 10, wait_ms: 0 }).is_ok() {
                granted += tokens;
            }
            let bound = 10 + 50 * (h.time - start) / 1000;
            prop_assert!(granted <= bound, "granted {granted} > {bound}");
        }
    }
}

#[test]
fn waiters_for_the_largest_bursts_do_not_overflow_the_retry_hint() {
    // burst may be as large as u64::MAX / 1000, and the tokens of several
    // waiters ahead add up past u64::MAX (found in review: a debug build
    // panicked on the writer thread, a release build wrapped the hint).
    let mut h = Harness::new();
    let huge = u64::MAX / 1000;
    let take = |wait_ms| Op::RateTake {
        bucket: "api/huge".into(),
        tokens: huge,
        rate_per_sec: 1,
        burst: huge,
        wait_ms,
    };
    h.op("a", take(0)).unwrap(); // empties the bucket
    for agent in ["b", "c"] {
        h.seq += 1;
        let out = h
            .machine
            .apply(h.seq, h.time, &Command::new(agent, take(60_000)));
        assert!(out.reply.is_ok());
        assert!(out.pending.is_some(), "queued");
    }
    let reply = h.op("d", take(0));
    let refused = err(&reply);
    assert_eq!(refused.code, ErrorCode::RateLimited);
    assert!(refused.retry_after_ms.unwrap() >= huge, "{refused:?}");
}

#[test]
fn waiting_takes_are_served_in_order_as_the_bucket_refills() {
    let mut h = Harness::new();
    let take = |tokens, wait_ms| Op::RateTake {
        bucket: "api/q".into(),
        tokens,
        rate_per_sec: 10,
        burst: 2,
        wait_ms,
    };
    h.op("a", take(2, 0)).unwrap(); // empties the bucket
    let mut ids = Vec::new();
    for (agent, tokens) in [("b", 2), ("c", 1)] {
        h.seq += 1;
        let out = h
            .machine
            .apply(h.seq, h.time, &Command::new(agent, take(tokens, 5_000)));
        assert!(out.reply.is_ok());
        ids.push(out.pending.expect("queued"));
    }
    // A newcomer may not barge ahead, even for one token that has refilled.
    h.time += 100;
    assert_eq!(err(&h.op("d", take(1, 0))).code, ErrorCode::RateLimited);
    assert_eq!(
        h.machine.next_deadline(),
        Some(h.time + 100),
        "b's 2 tokens are there 200 ms after the drain"
    );
    h.advance(100);
    let first = h.take_wakeups();
    assert_eq!(first.iter().map(|w| w.id).collect::<Vec<_>>(), vec![ids[0]]);
    h.advance(100);
    let second = h.take_wakeups();
    assert_eq!(
        second.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    let status = h.machine.bucket("api/q").unwrap();
    let taken: u64 = status.usage.iter().map(|u| u.tokens).sum();
    assert_eq!(taken, 5);

    // A wait that cannot be served in time fails with RATE_LIMITED.
    h.seq += 1;
    let out = h
        .machine
        .apply(h.seq, h.time, &Command::new("e", take(2, 50)));
    let id = out.pending.unwrap();
    h.advance(50);
    let failed = h.take_wakeups();
    assert_eq!(
        (failed[0].id, err(&failed[0].reply).code),
        (id, ErrorCode::RateLimited)
    );
}

#[test]
fn a_retried_waiting_request_joins_the_wait_and_later_gets_the_outcome() {
    let mut h = Harness::new();
    let take = |wait_ms| Op::RateTake {
        bucket: "api/i".into(),
        tokens: 1,
        rate_per_sec: 2,
        burst: 1,
        wait_ms,
    };
    h.op("a", take(0)).unwrap();
    let waiting = Command::new("b", take(5_000)).with_idempotency_key("k1");
    let apply = |h: &mut Harness, command: &Command| {
        h.seq += 1;
        let out = h.machine.apply(h.seq, h.time, command);
        h.wakeups.extend(out.wakeups.clone());
        out
    };
    let first = apply(&mut h, &waiting);
    let id = first.pending.expect("waits");
    let retry = apply(&mut h, &waiting);
    assert_eq!(
        retry.pending,
        Some(id),
        "the retry joins the same wait, it is not answered as done"
    );
    assert_eq!(
        h.machine
            .bucket("api/i")
            .unwrap()
            .usage
            .iter()
            .map(|u| u.tokens)
            .sum::<u64>(),
        1,
        "nothing taken twice"
    );
    h.advance(500);
    assert_eq!(h.take_wakeups()[0].id, id);
    let after = apply(&mut h, &waiting);
    assert_eq!(after.pending, None);
    assert!(
        envelope(&after.reply)["result"]["taken"] == 1,
        "the retry gets the outcome as sent: {:?}",
        after.reply
    );
    assert_eq!(
        h.machine
            .bucket("api/i")
            .unwrap()
            .usage
            .iter()
            .map(|u| u.tokens)
            .sum::<u64>(),
        2,
        "applied once"
    );
}
