//! Hand-written histories with a known verdict: correct ones must pass, and
//! each classic bug must be rejected with a window that names it.

use baton_check::models::{
    BoundedCounter, CounterInput, CounterOutput, Lock, LockInput, LockOutput, RegisterInput,
    RegisterOutput, VersionedRegister,
};
use baton_check::{CheckOptions, CheckResult, HistoryError, Model, Operation, check, check_with};

type RegOp = Operation<RegisterInput, RegisterOutput>;
type CounterOp = Operation<CounterInput, CounterOutput>;
type LockOp = Operation<LockInput, LockOutput>;

fn put(value: &str) -> RegisterInput {
    RegisterInput::Put {
        value: value.to_string(),
    }
}

fn cas(value: &str, expected: u64) -> RegisterInput {
    RegisterInput::PutIfVersion {
        value: value.to_string(),
        expected,
    }
}

fn found(value: &str, version: u64) -> RegisterOutput {
    RegisterOutput::Found {
        value: value.to_string(),
        version,
    }
}

fn written(version: u64) -> RegisterOutput {
    RegisterOutput::Written { version }
}

fn op<I, O>(client: u64, invoke: u64, ret: u64, input: I, output: O) -> Operation<I, O> {
    Operation::returned(client, "k", invoke, ret, input, output)
}

fn value(value: i64) -> CounterOutput {
    CounterOutput::Value {
        value,
        version: None,
    }
}

fn add(delta: i64, max: i64) -> CounterInput {
    CounterInput::Add {
        delta,
        min: Some(0),
        max: Some(max),
    }
}

fn assert_linearizable<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) {
    let result = check(model, history).expect("well-formed history");
    assert_eq!(result, CheckResult::Linearizable, "{result}");
}

/// Asserts the history is illegal, that the window holds `must_hold`, is
/// smaller than the history, and is non-linearizable on its own.
fn assert_illegal<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    must_hold: &[usize],
) -> Vec<usize>
where
    M::Input: Clone,
    M::Output: Clone,
{
    let result = check(model, history).expect("well-formed history");
    let CheckResult::Illegal {
        window,
        explanation,
        minimal,
        ..
    } = &result
    else {
        panic!("expected a violation, got: {result}");
    };
    for index in must_hold {
        assert!(
            window.contains(index),
            "window {window:?} lacks #{index}:\n{explanation}"
        );
        assert!(explanation.contains(&format!("#{index} ")), "{explanation}");
    }
    assert!(
        window.len() < history.len(),
        "window {window:?} is the whole history"
    );
    assert!(*minimal, "{explanation}");
    let alone: Vec<_> = window.iter().map(|&i| history[i].clone()).collect();
    assert!(
        matches!(check(model, &alone), Ok(CheckResult::Illegal { .. })),
        "the window alone must be non-linearizable:\n{explanation}"
    );
    window.clone()
}

#[test]
fn empty_and_sequential_histories_pass() {
    assert_linearizable(&VersionedRegister::<String>::new(), &[]);
    let history: Vec<RegOp> = vec![
        op(1, 0, 1, RegisterInput::Get, RegisterOutput::NotFound),
        op(1, 2, 3, put("a"), written(4)),
        op(2, 4, 5, RegisterInput::Get, found("a", 4)),
        op(2, 6, 7, cas("b", 4), written(9)),
        op(
            1,
            8,
            9,
            cas("c", 4),
            RegisterOutput::Conflict {
                current: Some(("b".into(), 9)),
            },
        ),
        op(
            1,
            10,
            11,
            RegisterInput::PutIfAbsent { value: "d".into() },
            RegisterOutput::Conflict {
                current: Some(("b".into(), 9)),
            },
        ),
        op(1, 12, 13, RegisterInput::Delete, RegisterOutput::Deleted),
        op(2, 14, 15, RegisterInput::Delete, RegisterOutput::NotFound),
        op(2, 16, 17, cas("e", 9), RegisterOutput::NotFound),
        op(2, 18, 19, cas("e", 0), written(12)),
        op(1, 20, 21, RegisterInput::Get, found("e", 12)),
    ];
    assert_linearizable(&VersionedRegister::new(), &history);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // B's write overlaps C's read, so C may see A's value or B's.
    for seen in [found("a", 5), found("b", 6)] {
        let history: Vec<RegOp> = vec![
            op(1, 0, 10, put("a"), written(5)),
            op(2, 2, 12, put("b"), written(6)),
            op(3, 11, 20, RegisterInput::Get, seen),
        ];
        assert_linearizable(&VersionedRegister::new(), &history);
    }
    // Overlapping writes: the versions fix their order, even against invoke order.
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("a"), written(8)),
        op(2, 1, 9, put("b"), written(7)),
        op(3, 11, 12, RegisterInput::Get, found("a", 8)),
    ];
    assert_linearizable(&VersionedRegister::new(), &history);
    // A call at the very instant another returns counts as concurrent with it.
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("a"), written(1)),
        op(2, 10, 20, RegisterInput::Get, RegisterOutput::NotFound),
    ];
    assert_linearizable(&VersionedRegister::new(), &history);
}

#[test]
fn unknown_outcomes_may_or_may_not_have_happened() {
    // It happened, long after its invoke; a read pins its unseen version.
    let happened: Vec<RegOp> = vec![
        op(1, 0, 1, put("a"), written(1)),
        Operation::unknown(2, "k", 2, put("b")),
        op(1, 3, 4, RegisterInput::Get, found("a", 1)),
        op(1, 50, 51, RegisterInput::Get, found("b", 7)),
        op(1, 52, 53, put("c"), written(8)),
    ];
    assert_linearizable(&VersionedRegister::new(), &happened);
    // It never happened.
    let never: Vec<RegOp> = vec![
        op(1, 0, 1, put("a"), written(1)),
        Operation::unknown(2, "k", 2, put("b")),
        op(1, 50, 51, RegisterInput::Get, found("a", 1)),
    ];
    assert_linearizable(&VersionedRegister::new(), &never);
    // An unseen version still orders later writes: version 2 cannot come
    // after a write that must have been given version >= 2 ... unless that
    // write never happened, so this is still fine.
    let still_fine: Vec<RegOp> = vec![
        op(1, 0, 1, put("a"), written(1)),
        Operation::unknown(2, "k", 2, put("b")),
        op(1, 60, 61, put("c"), written(2)),
    ];
    assert_linearizable(&VersionedRegister::new(), &still_fine);
    // But not once a read showed that it happened with version 5.
    let bad: Vec<RegOp> = vec![
        op(1, 0, 1, put("a"), written(1)),
        Operation::unknown(2, "k", 2, put("b")),
        op(1, 50, 51, RegisterInput::Get, found("b", 5)),
        op(1, 60, 61, put("c"), written(3)),
    ];
    assert_illegal(&VersionedRegister::new(), &bad, &[2, 3]);
}

#[test]
fn lost_update_is_rejected() {
    // Two clients read version 2 and both compare-and-set against it: both
    // cannot succeed. Unrelated traffic before and after must not end up in
    // the window.
    let history: Vec<RegOp> = vec![
        op(1, 0, 5, put("x0"), written(1)),
        op(2, 6, 8, RegisterInput::Get, found("x0", 1)),
        op(1, 9, 12, put("x1"), written(2)),
        op(1, 20, 25, RegisterInput::Get, found("x1", 2)),
        op(2, 21, 26, RegisterInput::Get, found("x1", 2)),
        op(1, 30, 40, cas("x1+a", 2), written(3)),
        op(2, 32, 42, cas("x1+b", 2), written(4)),
        op(3, 50, 55, RegisterInput::Get, found("x1+b", 4)),
    ];
    let window = assert_illegal(&VersionedRegister::new(), &history, &[5, 6]);
    assert_eq!(window, vec![5, 6]);
}

#[test]
fn stale_read_is_rejected() {
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("old"), written(1)),
        op(2, 12, 14, RegisterInput::Get, found("old", 1)),
        op(1, 20, 30, put("new"), written(2)),
        op(2, 31, 35, RegisterInput::Get, found("new", 2)),
        op(3, 40, 50, RegisterInput::Get, found("old", 1)),
        op(2, 60, 70, RegisterInput::Get, found("new", 2)),
    ];
    let window = assert_illegal(&VersionedRegister::new(), &history, &[4]);
    assert!(window.len() <= 3, "{window:?}");
}

#[test]
fn read_after_delete_is_rejected() {
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("a"), written(1)),
        op(1, 11, 20, RegisterInput::Delete, RegisterOutput::Deleted),
        op(2, 21, 30, RegisterInput::Get, found("a", 1)),
    ];
    assert_illegal(&VersionedRegister::new(), &history, &[1, 2]);
}

#[test]
fn version_going_backwards_is_rejected() {
    let history: Vec<RegOp> = vec![
        op(2, 0, 1, RegisterInput::Get, RegisterOutput::NotFound),
        op(1, 2, 10, put("a"), written(5)),
        op(2, 20, 30, put("b"), written(4)),
    ];
    assert_eq!(
        assert_illegal(&VersionedRegister::new(), &history, &[1, 2]),
        vec![1, 2]
    );
}

#[test]
fn lock_histories_that_follow_the_rules_pass() {
    let history: Vec<LockOp> = vec![
        op(
            1,
            0,
            10,
            LockInput::Acquire,
            LockOutput::Granted { token: 3 },
        ),
        // B tries while A holds it: busy.
        op(2, 5, 15, LockInput::Acquire, LockOutput::Busy),
        op(
            1,
            11,
            20,
            LockInput::FencedWrite {
                token: 3,
                value: "a".into(),
            },
            LockOutput::Written,
        ),
        op(
            1,
            21,
            30,
            LockInput::Release { token: 3 },
            LockOutput::Released,
        ),
        // Overlaps the release: may come after it.
        op(
            2,
            25,
            40,
            LockInput::Acquire,
            LockOutput::Granted { token: 9 },
        ),
        op(
            1,
            41,
            45,
            LockInput::FencedWrite {
                token: 3,
                value: "zombie".into(),
            },
            LockOutput::Fenced,
        ),
        op(
            1,
            46,
            47,
            LockInput::Release { token: 3 },
            LockOutput::NotHolder,
        ),
        op(
            2,
            48,
            50,
            LockInput::Read,
            LockOutput::Value(Some("a".into())),
        ),
        op(
            2,
            51,
            52,
            LockInput::Release { token: 9 },
            LockOutput::Released,
        ),
        // A grant nobody saw, then its lease may expire.
        Operation::unknown(3, "k", 60, LockInput::Acquire),
        op(1, 61, 62, LockInput::Acquire, LockOutput::Busy),
        Operation::unknown(3, "k", 70, LockInput::Expire { token: None }),
        op(
            1,
            80,
            81,
            LockInput::Acquire,
            LockOutput::Granted { token: 20 },
        ),
    ];
    assert_linearizable(&Lock::new(), &history);
}

#[test]
fn two_lock_holders_are_rejected() {
    let history: Vec<LockOp> = vec![
        op(
            1,
            0,
            10,
            LockInput::Acquire,
            LockOutput::Granted { token: 3 },
        ),
        op(
            1,
            11,
            20,
            LockInput::Release { token: 3 },
            LockOutput::Released,
        ),
        op(
            1,
            30,
            40,
            LockInput::Acquire,
            LockOutput::Granted { token: 5 },
        ),
        op(
            2,
            35,
            45,
            LockInput::Acquire,
            LockOutput::Granted { token: 6 },
        ),
        op(
            1,
            50,
            60,
            LockInput::Release { token: 5 },
            LockOutput::Released,
        ),
    ];
    let window = assert_illegal(&Lock::new(), &history, &[2, 3]);
    assert_eq!(window, vec![2, 3]);
}

#[test]
fn fenced_write_with_an_old_token_is_rejected() {
    let history: Vec<LockOp> = vec![
        op(
            1,
            0,
            10,
            LockInput::Acquire,
            LockOutput::Granted { token: 3 },
        ),
        op(
            1,
            11,
            20,
            LockInput::FencedWrite {
                token: 3,
                value: "a".into(),
            },
            LockOutput::Written,
        ),
        // A stalls; its lease runs out and B takes over.
        Operation::unknown(1, "k", 21, LockInput::Expire { token: Some(3) }),
        op(
            2,
            30,
            40,
            LockInput::Acquire,
            LockOutput::Granted { token: 7 },
        ),
        op(
            2,
            41,
            50,
            LockInput::FencedWrite {
                token: 7,
                value: "b".into(),
            },
            LockOutput::Written,
        ),
        // A wakes up and its stale write is accepted: the bug.
        op(
            1,
            60,
            70,
            LockInput::FencedWrite {
                token: 3,
                value: "zombie".into(),
            },
            LockOutput::Written,
        ),
    ];
    let window = assert_illegal(&Lock::new(), &history, &[5]);
    assert!(window.len() <= 2, "{window:?}");
}

#[test]
fn refused_fenced_write_that_took_effect_is_rejected() {
    let history: Vec<LockOp> = vec![
        op(
            1,
            0,
            10,
            LockInput::Acquire,
            LockOutput::Granted { token: 3 },
        ),
        op(
            2,
            20,
            30,
            LockInput::FencedWrite {
                token: 1,
                value: "zombie".into(),
            },
            LockOutput::Fenced,
        ),
        op(
            1,
            40,
            50,
            LockInput::Read,
            LockOutput::Value(Some("zombie".into())),
        ),
    ];
    assert_illegal(&Lock::new(), &history, &[2]);
}

#[test]
fn counter_histories_that_respect_bounds_pass() {
    let history: Vec<CounterOp> = vec![
        op(1, 0, 10, add(2, 3), value(2)),
        op(2, 1, 11, add(1, 3), value(3)),
        // Concurrent with both: refused because it came after them.
        op(3, 2, 12, add(1, 3), CounterOutput::Refused),
        op(3, 13, 14, CounterInput::Get, value(3)),
        op(1, 15, 16, add(-3, 3), value(0)),
        op(2, 17, 18, add(-1, 3), CounterOutput::Refused),
    ];
    assert_linearizable(&BoundedCounter::new(), &history);
}

#[test]
fn counter_versions_are_checked_when_recorded() {
    let versioned = |v: i64, version: u64| CounterOutput::Value {
        value: v,
        version: Some(version),
    };
    let good: Vec<CounterOp> = vec![
        op(1, 0, 10, add(1, 3), versioned(1, 4)),
        op(2, 5, 15, add(1, 3), versioned(2, 6)),
        op(3, 16, 17, CounterInput::Get, versioned(2, 6)),
    ];
    assert_linearizable(&BoundedCounter::new(), &good);
    // The values allow either order, but the versions say the +1 that
    // returned 2 came first: impossible.
    let bad: Vec<CounterOp> = vec![
        op(1, 0, 10, add(1, 3), versioned(1, 6)),
        op(2, 5, 15, add(1, 3), versioned(2, 4)),
        op(3, 16, 17, CounterInput::Get, versioned(2, 4)),
    ];
    assert_illegal(&BoundedCounter::new(), &bad, &[0, 1]);
}

#[test]
fn counter_over_its_max_is_rejected() {
    // Four concurrent reservations into three slots all succeed.
    let history: Vec<CounterOp> = vec![
        op(1, 0, 10, add(1, 3), value(1)),
        op(2, 1, 11, add(1, 3), value(2)),
        op(3, 2, 12, add(1, 3), value(3)),
        op(4, 3, 13, add(1, 3), value(4)),
        op(1, 20, 21, CounterInput::Get, value(4)),
    ];
    assert_illegal(&BoundedCounter::new(), &history, &[3]);
}

#[test]
fn counter_double_count_is_rejected() {
    // Two adds both report 2: one increment was lost.
    let history: Vec<CounterOp> = vec![
        op(1, 0, 5, add(1, 10), value(1)),
        op(1, 10, 20, add(1, 10), value(2)),
        op(2, 11, 21, add(1, 10), value(2)),
        op(1, 30, 31, CounterInput::Get, value(2)),
    ];
    assert_illegal(&BoundedCounter::new(), &history, &[1, 2]);
}

#[test]
fn keys_are_checked_independently() {
    let mut history: Vec<RegOp> = vec![
        Operation::returned(1, "a", 0, 10, put("x"), written(1)),
        // Same version on another key is fine: each key is its own object.
        Operation::returned(2, "b", 0, 10, put("y"), written(1)),
        Operation::returned(1, "a", 20, 30, RegisterInput::Get, found("x", 1)),
        Operation::returned(2, "b", 20, 30, RegisterInput::Get, found("y", 1)),
    ];
    assert_linearizable(&VersionedRegister::new(), &history);
    // A read on "a" of "b"'s value is a violation on "a", reported as such.
    history.push(Operation::returned(
        3,
        "a",
        40,
        50,
        RegisterInput::Get,
        found("y", 1),
    ));
    let result = check(&VersionedRegister::new(), &history).expect("well-formed");
    let CheckResult::Illegal { key, window, .. } = &result else {
        panic!("{result}")
    };
    assert_eq!(key, "a");
    assert!(window.contains(&4));
}

#[test]
fn explanation_names_the_operations_and_the_state() {
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("a"), written(1)),
        op(7, 20, 30, RegisterInput::Get, RegisterOutput::NotFound),
    ];
    let result = check(&VersionedRegister::new(), &history).expect("well-formed");
    let text = result.to_string();
    assert!(text.contains("key \"k\""), "{text}");
    assert!(
        text.contains("#1 client 7 [20, 30] Get -> NotFound"),
        "{text}"
    );
    assert!(text.contains("after #0 of them took effect"), "{text}");
    assert!(text.contains("none of #1 could take effect"), "{text}");
}

#[test]
fn running_out_of_budget_is_a_timeout_not_a_verdict() {
    // Concurrent unknown writes make the search wide: to prove the read
    // impossible it must try every subset of them.
    let mut history: Vec<RegOp> = (0..12)
        .map(|c| Operation::unknown(c, "k", c, put(&format!("v{c}"))))
        .collect();
    history.push(op(
        99,
        100,
        110,
        RegisterInput::Get,
        found("nobody-wrote-this", 1),
    ));
    let tiny = CheckOptions {
        step_budget: 50,
        shrink_budget: 50,
    };
    let result = check_with(&VersionedRegister::new(), &history, &tiny).expect("well-formed");
    assert_eq!(
        result,
        CheckResult::Timeout {
            keys: vec!["k".to_string()]
        }
    );
    assert!(result.to_string().contains("step_budget"));
    // With the default budget the same history is decided.
    assert!(matches!(
        check(&VersionedRegister::new(), &history),
        Ok(CheckResult::Illegal { .. })
    ));
}

#[test]
fn malformed_histories_are_refused() {
    let history: Vec<RegOp> = vec![
        op(1, 0, 10, put("a"), written(1)),
        op(2, 30, 20, RegisterInput::Get, found("a", 1)),
    ];
    let error = check(&VersionedRegister::new(), &history).expect_err("return before invoke");
    assert_eq!(
        error,
        HistoryError::ReturnBeforeInvoke {
            index: 1,
            invoke: 30,
            ret: 20
        }
    );
    assert!(error.to_string().contains("#1"));
}
