//! Once: single-flight refresh.

mod common;

use baton_core::*;
use common::*;
use proptest::prelude::*;
use serde_json::json;

fn once(h: &mut Harness, agent: &str, wait_ms: u64) -> (Reply, Option<u64>) {
    h.seq += 1;
    let out = h.machine.apply(
        h.seq,
        h.time,
        &Command::new(
            agent,
            Op::Once {
                key: "cred/token".into(),
                max_age_ms: 60_000,
                claim_ttl_ms: 5_000,
                wait_ms,
            },
        ),
    );
    h.events.extend(out.events);
    h.wakeups.extend(out.wakeups);
    (out.reply, out.pending)
}

/// `once` as `agent` in `session`.
fn once_in(h: &mut Harness, agent: &str, session: u64, wait_ms: u64) -> (Reply, Option<u64>) {
    let mut command = Command::new(
        agent,
        Op::Once {
            key: "cred/token".into(),
            max_age_ms: 60_000,
            claim_ttl_ms: 5_000,
            wait_ms,
        },
    );
    command.session = Some(session);
    h.seq += 1;
    let out = h.machine.apply(h.seq, h.time, &command);
    h.events.extend(out.events);
    h.wakeups.extend(out.wakeups);
    (out.reply, out.pending)
}

fn fulfil(h: &mut Harness, agent: &str, claim_id: u64) -> Reply {
    h.op(
        agent,
        Op::OnceFulfil {
            key: "cred/token".into(),
            claim_id,
            value: json!("token-from-".to_string() + agent),
        },
    )
}

fn result(reply: &Reply) -> &OnceResult {
    match reply {
        Ok(Response::Once(r)) => r,
        other => panic!("expected a once result, got {other:?}"),
    }
}

#[test]
fn one_caller_refreshes_and_the_others_wait_for_its_value() {
    let mut h = Harness::new();
    let (first, pending) = once(&mut h, "a", 10_000);
    let claim = result(&first).clone();
    assert_eq!((claim.status.as_str(), pending), ("claimed", None));
    let (second, waiting_id) = once(&mut h, "b", 10_000);
    assert_eq!(result(&second).status, "waiting");
    let waiting_id = waiting_id.expect("b waits");
    let (third, _) = once(&mut h, "c", 0);
    assert_eq!(
        err(&third).code,
        ErrorCode::ConcurrentModification,
        "without wait: told to come back"
    );

    let claim_id = claim.claim_id.unwrap();
    let fulfilled = h
        .op(
            "a",
            Op::OnceFulfil {
                key: "cred/token".into(),
                claim_id,
                value: json!("tok-2"),
            },
        )
        .unwrap();
    assert!(
        matches!(fulfilled, Response::Once(OnceResult { ref status, .. }) if status == "fresh")
    );
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].id, waiting_id);
    assert_eq!(
        result(&wakeups[0].reply).value.as_deref(),
        Some(&json!("tok-2"))
    );
    let (fourth, _) = once(&mut h, "d", 0);
    assert_eq!(result(&fourth).status, "fresh");
    assert_eq!(
        *h.machine.get("cred/token").unwrap().entry.value,
        json!("tok-2"),
        "an ordinary key holds it"
    );
}

#[test]
fn an_expired_or_abandoned_claim_passes_to_the_next_waiter() {
    let mut h = Harness::new();
    let claim = result(&once(&mut h, "a", 0).0).claim_id.unwrap();
    let b = once(&mut h, "b", 30_000).1.unwrap();
    let c = once(&mut h, "c", 30_000).1.unwrap();
    h.advance(5_000);
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(wakeups[0].id, b);
    let b_claim = result(&wakeups[0].reply).clone();
    assert_eq!(b_claim.status, "claimed");
    assert!(
        h.take_events()
            .iter()
            .any(|e| e.kind == EventKind::LeaseLost)
    );
    let late = h.op(
        "a",
        Op::OnceFulfil {
            key: "cred/token".into(),
            claim_id: claim,
            value: json!("stale"),
        },
    );
    assert_eq!(
        err(&late).code,
        ErrorCode::Fenced,
        "the expired claimant must not publish"
    );

    h.op(
        "b",
        Op::OnceAbandon {
            key: "cred/token".into(),
            claim_id: b_claim.claim_id.unwrap(),
        },
    )
    .unwrap();
    let wakeups = h.take_wakeups();
    assert_eq!(
        (wakeups[0].id, result(&wakeups[0].reply).status.as_str()),
        (c, "claimed")
    );
}

#[test]
fn waits_time_out_and_can_be_cancelled() {
    let mut h = Harness::new();
    once(&mut h, "a", 0).0.unwrap();
    let b = once(&mut h, "b", 1_000).1.unwrap();
    let c = once(&mut h, "c", 4_000).1.unwrap();
    h.op("c", Op::CancelWait { id: c }).unwrap();
    assert_eq!(
        err(&h.take_wakeups()[0].reply).code,
        ErrorCode::ConcurrentModification
    );
    h.advance(1_000);
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups[0].id, b);
    let error = err(&wakeups[0].reply);
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.retry_after_ms, Some(4_000));
    assert_eq!(
        err(&once(&mut h, "a", 0).0).code,
        ErrorCode::ConcurrentModification,
        "without a session the claimant's second process cannot be told apart: it is told to wait"
    );
    // With a session, asking again while holding the claim is a self-deadlock.
    let session = h.open_session("s", 60_000);
    let mut ask = Command::new(
        "s",
        Op::Once {
            key: "cred/other".into(),
            max_age_ms: 1000,
            claim_ttl_ms: 5_000,
            wait_ms: 0,
        },
    );
    ask.session = Some(session);
    assert!(matches!(h.run(ask.clone()), Ok(Response::Once(ref r)) if r.status == "claimed"));
    assert_eq!(err(&h.run(ask)).code, ErrorCode::Deadlock);
    assert_eq!(
        h.machine.next_deadline(),
        Some(h.time + 4_000),
        "only the claim's lease is left"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Exactly one claim per staleness period, however many agents ask.
    #[test]
    fn exactly_one_refresh_per_staleness_period(steps in proptest::collection::vec((0usize..6, 0u64..3_000, any::<bool>()), 1..200)) {
        let mut h = Harness::new();
        let mut claims: Vec<(String, u64)> = Vec::new();
        let mut live_claim: Option<(String, u64)> = None;
        let mut fulfilled_at: Option<u64> = None;
        for (agent, wait, fulfil) in steps {
            let agent = format!("agent-{agent}");
            h.time += wait;
            let (reply, _) = once(&mut h, &agent, 0);
            let mut granted: Vec<(String, u64)> = Vec::new();
            if let Ok(Response::Once(r)) = &reply && r.status == "claimed" {
                let fresh = fulfilled_at.is_some_and(|t| h.time - t < 60_000);
                prop_assert!(!fresh, "claimed while the value was fresh");
                granted.push((agent.clone(), r.claim_id.unwrap()));
            }
            for wakeup in h.take_wakeups() {
                if let Ok(Response::Once(r)) = &wakeup.reply && r.status == "claimed" {
                    granted.push(("waiter".into(), r.claim_id.unwrap()));
                }
            }
            for event in h.take_events() {
                if event.kind == EventKind::LeaseLost {
                    live_claim = None;
                }
            }
            for claim in granted {
                prop_assert!(live_claim.is_none(), "a second claim {claim:?} while {live_claim:?} is live");
                live_claim = Some(claim.clone());
                claims.push(claim);
            }
            if fulfil && let Some((holder, id)) = live_claim.clone() && holder == agent {
                h.op(&agent, Op::OnceFulfil { key: "cred/token".into(), claim_id: id, value: json!(id) }).unwrap();
                live_claim = None;
                fulfilled_at = Some(h.time);
            }
        }
    }
}

/// A fulfil refused because the store is full changes nothing: the claim
/// stays the refresher's (its retry succeeds once there is room), and the
/// waiter is neither handed the claim nor woken with a value.
#[test]
fn a_refused_fulfil_keeps_the_claim() {
    let mut h = Harness::with_limits(Limits {
        max_keys: 1,
        ..Limits::default()
    });
    h.put("a", "x/a", json!(1)).unwrap();
    let (first, _) = once(&mut h, "a", 0);
    let claim_id = result(&first).claim_id.expect("a claims");
    let (_, waiting) = once(&mut h, "b", 10_000);
    assert!(waiting.is_some(), "b waits");
    let fulfil = Op::OnceFulfil {
        key: "cred/token".into(),
        claim_id,
        value: json!("tok"),
    };
    assert_eq!(
        err(&h.op("a", fulfil.clone())).code,
        ErrorCode::QuotaExceeded
    );
    assert!(h.take_wakeups().is_empty(), "nobody woken");
    let (third, _) = once(&mut h, "c", 0);
    assert_eq!(
        err(&third).code,
        ErrorCode::ConcurrentModification,
        "the claim is still taken: no second refresh"
    );

    h.op(
        "a",
        Op::Delete {
            key: "x/a".into(),
            if_version: None,
        },
    )
    .unwrap();
    let done = result(&h.op("a", fulfil)).clone();
    assert_eq!(done.value.as_deref(), Some(&json!("tok")));
    let wakeups = h.take_wakeups();
    assert_eq!(wakeups.len(), 1);
    assert_eq!(Some(wakeups[0].id), waiting);
}

/// A session's `once` and rate waits fail when it ends, as its lock waits
/// do: a killed agent is neither handed the refresh nor spends tokens later.
#[test]
fn a_sessions_once_and_rate_waits_fail_when_it_ends() {
    let mut h = Harness::new();
    let (first, _) = once(&mut h, "a", 0);
    assert_eq!(result(&first).status, "claimed");
    let session = h.open_session("b", 60_000);
    let mut wait = Command::new(
        "b",
        Op::Once {
            key: "cred/token".into(),
            max_age_ms: 60_000,
            claim_ttl_ms: 5_000,
            wait_ms: 10_000,
        },
    );
    wait.session = Some(session);
    h.seq += 1;
    let once_wait = h
        .machine
        .apply(h.seq, h.time, &wait)
        .pending
        .expect("b waits");
    let take = |tokens| Op::RateTake {
        bucket: "api/x".into(),
        tokens,
        rate_per_sec: 1,
        burst: 1,
        wait_ms: 10_000,
    };
    h.op("a", take(1)).unwrap();
    let mut rate = Command::new("b", take(1));
    rate.session = Some(session);
    h.seq += 1;
    let rate_wait = h
        .machine
        .apply(h.seq, h.time, &rate)
        .pending
        .expect("b queues");

    h.op(
        "admin",
        Op::SessionKill {
            session_id: session,
            reason: None,
        },
    )
    .unwrap();
    let wakeups = h.take_wakeups();
    for id in [once_wait, rate_wait] {
        let woken = wakeups.iter().find(|w| w.id == id).expect("woken");
        assert_eq!(err(&woken.reply).code, ErrorCode::Fenced, "{woken:?}");
    }
    // Nothing is left to hand it later: the claim passes to nobody, and the
    // refill serves nobody.
    h.op(
        "a",
        Op::OnceAbandon {
            key: "cred/token".into(),
            claim_id: result(&first).claim_id.unwrap(),
        },
    )
    .unwrap();
    h.advance(2_000);
    assert!(h.take_wakeups().is_empty());
}

#[test]
fn a_sessions_claim_ends_with_it_and_passes_to_the_next_waiter() {
    for (end, lease_lost) in [
        (
            Op::SessionKill {
                session_id: 0,
                reason: None,
            },
            true,
        ),
        (Op::SessionClose { session_id: 0 }, false),
    ] {
        let mut h = Harness::new();
        let session = h.open_session("a", 60_000);
        let (claimed, _) = once_in(&mut h, "a", session, 0);
        let old = result(&claimed).claim_id.unwrap();
        let (_, waiting) = once(&mut h, "b", 10_000);
        let waiting = waiting.expect("b waits for a's refresh");
        h.take_events();
        let end = match end {
            Op::SessionKill { reason, .. } => Op::SessionKill {
                session_id: session,
                reason,
            },
            _ => Op::SessionClose {
                session_id: session,
            },
        };
        h.op("a", end).unwrap();
        let wakeups = h.take_wakeups();
        let woken = wakeups
            .iter()
            .find(|w| w.id == waiting)
            .expect("b is woken");
        let passed = result(&woken.reply);
        assert_eq!(passed.status, "claimed", "{passed:?}");
        let new = passed.claim_id.unwrap();
        assert!(new > old, "a new claim, a new fence: {new} after {old}");
        let lost = h
            .take_events()
            .iter()
            .any(|e| e.kind == EventKind::LeaseLost && e.fence_token == Some(old));
        assert_eq!(lost, lease_lost, "LEASE_LOST for a kill, none for a close");

        assert_eq!(err(&fulfil(&mut h, "a", old)).code, ErrorCode::Fenced);
        let fresh = fulfil(&mut h, "b", new);
        assert_eq!(result(&fresh).value, Some(json!("token-from-b").into()));
    }
}

#[test]
fn a_claim_ended_in_the_step_that_granted_it_passes_on_later_with_a_new_id() {
    let mut h = Harness::new();
    let (first, _) = once(&mut h, "a", 0);
    let first = result(&first).claim_id.unwrap();
    let session = h.open_session("x", 600_000);
    let (_, x_waits) = once_in(&mut h, "x", session, 60_000);
    let x_waits = x_waits.expect("x waits");
    let (_, c_waits) = once(&mut h, "c", 60_000);
    let c_waits = c_waits.expect("c waits");

    // a's claim expires; the kill is the first command after it, so that
    // command's deadlines pass the claim to x and its body ends x's session.
    h.time += 5_000;
    let kill = h
        .op(
            "admin",
            Op::SessionKill {
                session_id: session,
                reason: None,
            },
        )
        .unwrap();
    drop(kill);
    let kill_seq = h.seq;
    let wakeups = h.take_wakeups();
    let to_x = wakeups.iter().find(|w| w.id == x_waits).expect("x woken");
    assert_eq!(
        result(&to_x.reply).claim_id,
        Some(kill_seq),
        "x got the claim in this step"
    );
    assert!(
        wakeups.iter().all(|w| w.id != c_waits),
        "c does not get a claim with x's id: {wakeups:?}"
    );
    assert_eq!(err(&fulfil(&mut h, "x", kill_seq)).code, ErrorCode::Fenced);

    // A newcomer does not jump the line meanwhile.
    let (newcomer, _) = once(&mut h, "d", 0);
    assert_eq!(err(&newcomer).code, ErrorCode::ConcurrentModification);

    h.advance(1);
    let wakeups = h.take_wakeups();
    let to_c = wakeups
        .iter()
        .find(|w| w.id == c_waits)
        .expect("c gets the claim");
    let claim = result(&to_c.reply).claim_id.unwrap();
    assert!(claim > kill_seq && claim != first, "{claim}");
    assert_eq!(err(&fulfil(&mut h, "x", kill_seq)).code, ErrorCode::Fenced);
    fulfil(&mut h, "c", claim).unwrap();
}

#[test]
fn a_claim_ended_in_the_step_that_granted_it_is_not_claimed_anew_in_that_step() {
    let mut h = Harness::new();
    once(&mut h, "a", 0).0.unwrap();
    let session = h.open_session("x", 6_000);
    let (_, x_waits) = once_in(&mut h, "x", session, 60_000);
    let x_waits = x_waits.expect("x waits");
    h.take_wakeups();
    // The first command after both deadlines: its deadlines pass a's
    // expired claim to x, then end x's session (and the claim with it); x
    // was the only one in line. The command itself asks again.
    h.time += 7_000;
    let (newcomer, _) = once(&mut h, "x", 0);
    let step = h.seq;
    let wakeups = h.take_wakeups();
    let to_x = wakeups.iter().find(|w| w.id == x_waits).expect("x woken");
    assert_eq!(result(&to_x.reply).claim_id, Some(step));
    assert_eq!(
        err(&newcomer).code,
        ErrorCode::ConcurrentModification,
        "no second claim {step} in the same step: {newcomer:?}"
    );
    assert_eq!(err(&fulfil(&mut h, "x", step)).code, ErrorCode::Fenced);

    h.advance(1);
    let (later, _) = once(&mut h, "x", 0);
    let claim = result(&later).claim_id.unwrap();
    assert!(claim > step, "{claim} after {step}");
    assert_eq!(err(&fulfil(&mut h, "x", step)).code, ErrorCode::Fenced);
    fulfil(&mut h, "x", claim).unwrap();
}
