//! Work queues: FIFO, visibility timeouts, claim tokens, dead letters.

mod common;

use baton_core::*;
use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

fn enqueue(h: &mut Harness, item: serde_json::Value, max_attempts: Option<u32>) -> u64 {
    match h
        .op(
            "producer",
            Op::QueueEnqueue {
                queue: "jobs/build".into(),
                item,
                max_attempts,
            },
        )
        .unwrap()
    {
        Response::Enqueued(e) => e.item_id,
        other => panic!("{other:?}"),
    }
}

fn claim(h: &mut Harness, agent: &str, visibility_ms: u64) -> Option<QueueItem> {
    match h
        .op(
            agent,
            Op::QueueClaim {
                queue: "jobs/build".into(),
                visibility_ms,
            },
        )
        .unwrap()
    {
        Response::QueueItem(item) => Some(item),
        Response::QueueEmpty(_) => None,
        other => panic!("{other:?}"),
    }
}

#[test]
fn items_are_claimed_in_fifo_order_and_acked_once() {
    let mut h = Harness::new();
    let first = enqueue(&mut h, json!("a"), None);
    let second = enqueue(&mut h, json!("b"), None);
    let one = claim(&mut h, "w1", 1000).unwrap();
    let two = claim(&mut h, "w2", 1000).unwrap();
    assert_eq!((one.item_id, two.item_id), (first, second));
    assert!(claim(&mut h, "w3", 1000).is_none(), "both are claimed");
    let ack = Op::QueueAck {
        queue: "jobs/build".into(),
        item_id: one.item_id,
        claim_token: one.claim_token,
    };
    h.op("w1", ack.clone()).unwrap();
    assert_eq!(
        err(&h.op("w1", ack)).code,
        ErrorCode::Fenced,
        "an item leaves the queue once"
    );
    let status = h.machine.queue_status("jobs/build").unwrap();
    assert_eq!((status.ready, status.in_flight), (0, 1));
}

#[test]
fn an_expired_claim_returns_the_item_ahead_of_newer_ones_and_fences_the_old_claim() {
    let mut h = Harness::new();
    let first = enqueue(&mut h, json!("a"), None);
    let stale = claim(&mut h, "slow", 1000).unwrap();
    enqueue(&mut h, json!("b"), None);
    h.advance(1000);
    assert!(
        h.take_events()
            .iter()
            .any(|e| e.kind == EventKind::QueueClaimExpired)
    );
    let again = claim(&mut h, "fast", 1000).unwrap();
    assert_eq!(
        (again.item_id, again.attempt),
        (first, 2),
        "FIFO: the returned item comes first"
    );
    let late = h.op(
        "slow",
        Op::QueueAck {
            queue: "jobs/build".into(),
            item_id: first,
            claim_token: stale.claim_token,
        },
    );
    assert_eq!(
        err(&late).code,
        ErrorCode::Fenced,
        "the zombie's ack must not count"
    );
    h.op(
        "fast",
        Op::QueueAck {
            queue: "jobs/build".into(),
            item_id: first,
            claim_token: again.claim_token,
        },
    )
    .unwrap();
}

#[test]
fn nack_delays_and_running_out_of_attempts_dead_letters() {
    let mut h = Harness::new();
    let id = enqueue(&mut h, json!({"job": 1}), Some(2));
    let c1 = claim(&mut h, "w", 1000).unwrap();
    let nack = |c: &QueueItem, delay_ms| Op::QueueNack {
        queue: "jobs/build".into(),
        item_id: c.item_id,
        claim_token: c.claim_token,
        delay_ms,
    };
    assert!(
        matches!(h.op("w", nack(&c1, 500)).unwrap(), Response::QueueSettled(QueueSettled { ref outcome, .. }) if outcome == "delayed")
    );
    assert!(claim(&mut h, "w", 1000).is_none(), "delayed");
    h.advance(500);
    let c2 = claim(&mut h, "w", 1000).unwrap();
    assert_eq!(c2.attempt, 2);
    assert!(
        matches!(h.op("w", nack(&c2, 0)).unwrap(), Response::QueueSettled(QueueSettled { ref outcome, .. }) if outcome == "dead_lettered")
    );
    let status = h.machine.queue_status("jobs/build").unwrap();
    assert_eq!(
        (
            status.ready,
            status.dead_lettered,
            status.dead_letters[0].item_id
        ),
        (0, 1, id)
    );
}

#[test]
fn bad_queue_input_is_refused() {
    let mut h = Harness::new();
    assert_eq!(
        err(&h.op(
            "p",
            Op::QueueEnqueue {
                queue: "nonamespace".into(),
                item: json!(1),
                max_attempts: None
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&h.op(
            "p",
            Op::QueueEnqueue {
                queue: "q/x".into(),
                item: json!(1),
                max_attempts: Some(0)
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&h.op(
            "p",
            Op::QueueClaim {
                queue: "q/x".into(),
                visibility_ms: 0
            }
        ))
        .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        err(&h.op(
            "p",
            Op::QueueAck {
                queue: "q/x".into(),
                item_id: 1,
                claim_token: 1
            }
        ))
        .code,
        ErrorCode::Fenced
    );
    assert_eq!(
        h.machine.queue_status("q/x").unwrap().ready,
        0,
        "nothing applied"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every enqueued item is acked or dead-lettered or still queued — never
    /// lost — and never held by two live claims at once.
    #[test]
    fn items_are_never_lost_nor_claimed_twice(steps in proptest::collection::vec((0u8..5, 0u64..1500, any::<usize>()), 1..200)) {
        let mut h = Harness::new();
        let mut enqueued = 0usize;
        let mut acked = 0usize;
        let mut live: BTreeMap<u64, QueueItem> = BTreeMap::new(); // item id -> the claim its worker believes live
        for (kind, n, pick) in steps {
            match kind {
                0 => { enqueue(&mut h, json!(n), Some(3)); enqueued += 1; }
                1 => if let Some(item) = claim(&mut h, "w", 200 + n) {
                    if let Some(previous) = live.get(&item.item_id) {
                        prop_assert!(h.time >= previous.visible_at, "claimed twice while a claim was live");
                    }
                    live.insert(item.item_id, item);
                },
                2 | 3 if !live.is_empty() => {
                    let id = *live.keys().nth(pick % live.len()).unwrap();
                    let item = live.remove(&id).unwrap();
                    let op = if kind == 2 {
                        Op::QueueAck { queue: "jobs/build".into(), item_id: id, claim_token: item.claim_token }
                    } else {
                        Op::QueueNack { queue: "jobs/build".into(), item_id: id, claim_token: item.claim_token, delay_ms: n % 300 }
                    };
                    let reply = h.op("w", op);
                    let current = h.time < item.visible_at;
                    prop_assert_eq!(reply.is_ok(), current, "only a live claim settles: {:?}", reply);
                    if kind == 2 && reply.is_ok() { acked += 1; }
                }
                _ => h.advance(n),
            }
            let status = h.machine.queue_status("jobs/build").unwrap();
            let present = status.ready + status.in_flight + status.delayed;
            prop_assert_eq!(enqueued, acked + status.dead_lettered + present, "items lost or duplicated: {:?}", status);
        }
    }
}

/// `queue_bytes` measured from scratch: every queue's items and dead
/// letters, as the snapshot holds them.
fn measured_queue_bytes(h: &Harness) -> u64 {
    let snapshot: serde_json::Value = serde_json::from_slice(&h.machine.snapshot()).unwrap();
    let size = |v: &serde_json::Value| baton_core::validate::json_size(v) as u64;
    snapshot["queues"]
        .as_object()
        .unwrap()
        .values()
        .map(|queue| {
            let items: u64 = queue["items"]
                .as_object()
                .unwrap()
                .values()
                .map(|i| size(&i["value"]))
                .sum();
            let dead: u64 = queue["dead"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| size(&d["item"]))
                .sum();
            items + dead
        })
        .sum()
}

#[test]
fn a_full_queue_store_refuses_an_enqueue_and_an_ack_makes_room() {
    let mut h = Harness::with_limits(Limits {
        max_queue_bytes: 250,
        ..Limits::default()
    });
    let item = json!("x".repeat(98)); // 100 bytes
    enqueue(&mut h, item.clone(), Some(1));
    enqueue(&mut h, item.clone(), Some(1));
    let refused = h.op(
        "producer",
        Op::QueueEnqueue {
            queue: "jobs/other".into(),
            item: item.clone(),
            max_attempts: None,
        },
    );
    let error = err(&refused);
    assert_eq!(error.code, ErrorCode::QuotaExceeded, "{error:?}");
    assert!(
        error.message.contains("max_queue_bytes"),
        "{}",
        error.message
    );
    assert_eq!(
        h.machine.queue_status("jobs/other").unwrap().ready,
        0,
        "nothing applied"
    );
    assert_eq!(h.machine.stats().queue_bytes, 200);

    // A dead letter still counts; an ack frees its item.
    let first = claim(&mut h, "w", 1000).unwrap();
    let nack = Op::QueueNack {
        queue: "jobs/build".into(),
        item_id: first.item_id,
        claim_token: first.claim_token,
        delay_ms: 0,
    };
    h.op("w", nack).unwrap();
    assert_eq!(
        h.machine.queue_status("jobs/build").unwrap().dead_lettered,
        1
    );
    assert_eq!(h.machine.stats().queue_bytes, 200);
    let second = claim(&mut h, "w", 1000).unwrap();
    let ack = Op::QueueAck {
        queue: "jobs/build".into(),
        item_id: second.item_id,
        claim_token: second.claim_token,
    };
    h.op("w", ack).unwrap();
    assert_eq!(h.machine.stats().queue_bytes, 100);
    enqueue(&mut h, item, None);
    assert_eq!(h.machine.stats().queue_bytes, measured_queue_bytes(&h));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever is enqueued, claimed, acked, nacked, expired or
    /// dead-lettered (and dropped past the dead-letter limit), the count is
    /// what the queues hold, never passes its limit, and survives a snapshot.
    #[test]
    fn queue_bytes_are_exact_and_never_pass_the_limit(steps in proptest::collection::vec((0u8..5, 0u64..600, any::<usize>()), 1..150)) {
        const LIMIT: u64 = 3_000;
        let mut h = Harness::with_limits(Limits {
            max_queue_bytes: LIMIT,
            max_dead_letters_per_queue: 2,
            ..Limits::default()
        });
        let mut live: Vec<QueueItem> = Vec::new();
        for (kind, n, pick) in steps {
            match kind {
                0 => {
                    let reply = h.op("producer", Op::QueueEnqueue {
                        queue: "jobs/build".into(),
                        item: json!("i".repeat(n as usize)),
                        max_attempts: Some(2),
                    });
                    if let Err(error) = &reply {
                        prop_assert_eq!(error.code, ErrorCode::QuotaExceeded);
                    }
                }
                1 => if let Some(item) = claim(&mut h, "w", 50 + n) { live.push(item) },
                2 | 3 if !live.is_empty() => {
                    let item = live.remove(pick % live.len());
                    let op = if kind == 2 {
                        Op::QueueAck { queue: "jobs/build".into(), item_id: item.item_id, claim_token: item.claim_token }
                    } else {
                        Op::QueueNack { queue: "jobs/build".into(), item_id: item.item_id, claim_token: item.claim_token, delay_ms: n % 100 }
                    };
                    let _ = h.op("w", op);
                }
                _ => h.advance(n),
            }
            let queue_bytes = h.machine.stats().queue_bytes;
            prop_assert_eq!(queue_bytes, measured_queue_bytes(&h));
            prop_assert!(queue_bytes <= LIMIT);
        }
        let restored = StateMachine::restore(&h.machine.snapshot(), Limits::default()).unwrap();
        prop_assert_eq!(restored.stats(), h.machine.stats());
    }
}

#[test]
fn max_queue_items_counts_every_queue_and_survives_a_restore() {
    let limits = Limits {
        max_queue_items: 3,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    let enqueue_to = |h: &mut Harness, queue: &str| {
        h.op(
            "producer",
            Op::QueueEnqueue {
                queue: queue.into(),
                item: json!(1),
                max_attempts: Some(1),
            },
        )
    };
    enqueue_to(&mut h, "jobs/build").unwrap();
    enqueue_to(&mut h, "jobs/a").unwrap();
    enqueue_to(&mut h, "jobs/b").unwrap();
    let full = enqueue_to(&mut h, "jobs/c");
    assert_eq!(err(&full).code, ErrorCode::QuotaExceeded, "{full:?}");
    assert!(err(&full).message.contains("max_queue_items"));
    assert_eq!(h.machine.queue_status("jobs/c").unwrap().ready, 0);

    // Acked and dead-lettered items leave the count.
    let item = claim(&mut h, "w", 1000).unwrap();
    let ack = Op::QueueAck {
        queue: "jobs/build".into(),
        item_id: item.item_id,
        claim_token: item.claim_token,
    };
    h.op("w", ack).unwrap();
    enqueue_to(&mut h, "jobs/c").unwrap();
    assert_eq!(
        err(&enqueue_to(&mut h, "jobs/d")).code,
        ErrorCode::QuotaExceeded
    );

    let mut restored = Harness::with_limits(limits);
    restored.machine = StateMachine::restore(&h.machine.snapshot(), Limits::default()).unwrap();
    restored.seq = h.seq;
    restored.time = h.time;
    assert_eq!(
        err(&enqueue_to(&mut restored, "jobs/d")).code,
        ErrorCode::QuotaExceeded,
        "the count is rebuilt on restore"
    );
    let item = restored
        .op(
            "w",
            Op::QueueClaim {
                queue: "jobs/a".into(),
                visibility_ms: 1000,
            },
        )
        .unwrap();
    let Response::QueueItem(item) = item else {
        panic!("{item:?}")
    };
    let nack = Op::QueueNack {
        queue: "jobs/a".into(),
        item_id: item.item_id,
        claim_token: item.claim_token,
        delay_ms: 0,
    };
    restored.op("w", nack).unwrap();
    assert_eq!(
        restored
            .machine
            .queue_status("jobs/a")
            .unwrap()
            .dead_lettered,
        1
    );
    enqueue_to(&mut restored, "jobs/d").unwrap();
}
