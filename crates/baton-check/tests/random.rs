//! Randomized tests: simulated clients run against obviously correct
//! sequential implementations, so every recorded history is linearizable and
//! must pass. Then one output is corrupted: where the corruption is certainly
//! impossible the checker must reject it, and whenever it rejects, the window
//! must hold the corrupted operation and be non-linearizable by itself.

mod common;

use baton_check::models::{
    BoundedCounter, CounterInput, CounterOutput, Lock, LockInput, LockOutput, RegisterInput,
    RegisterOutput, VersionedRegister,
};
use baton_check::{CheckResult, Model, Operation, Outcome, check};
use common::{COUNTER_MAX, CounterRef, LockRef, Reference, RegisterRef, Rng, SimConfig, simulate};

const SEEDS: u64 = 200;

fn random_config(rng: &mut Rng) -> SimConfig {
    SimConfig {
        clients: 2 + rng.below(6) as usize,
        ops: 5 + rng.below(60) as usize,
        keys: 1 + rng.below(3) as usize,
        max_latency: 1 + rng.below(30),
        max_think: rng.below(10),
        unknown_per_mille: [0, 0, 50, 150][rng.below(4) as usize],
    }
}

/// Runs every seed: the clean history must pass; then `corrupt` may change
/// one returned output (and say whether the change is certainly illegal).
/// Returns (corrupted, rejected).
fn run<M, R>(
    model: &M,
    mut make: impl FnMut() -> R,
    corrupt: impl Fn(&mut Rng, &M::Input, &M::Output) -> Option<(M::Output, bool)>,
) -> (u32, u32)
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
    R: Reference<Input = M::Input, Output = M::Output>,
{
    let (mut corrupted, mut rejected) = (0, 0);
    for seed in 0..SEEDS {
        let mut rng = Rng::new(seed);
        let config = random_config(&mut rng);
        let mut history = simulate(&mut make(), &mut rng, &config);
        let result = check(model, &history).expect("well-formed history");
        assert_eq!(
            result,
            CheckResult::Linearizable,
            "seed {seed} {config:?}: a correct history was rejected:\n{result}"
        );

        let returned: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].return_time().is_some())
            .collect();
        if returned.is_empty() {
            continue;
        }
        let index = returned[rng.below(returned.len() as u64) as usize];
        let Operation {
            input,
            outcome: Outcome::Returned { output, .. },
            ..
        } = &history[index]
        else {
            continue;
        };
        let Some((bad, certain)) = corrupt(&mut rng, input, output) else {
            continue;
        };
        if let Outcome::Returned { output, .. } = &mut history[index].outcome {
            *output = bad;
        }
        corrupted += 1;
        let result = check(model, &history).expect("well-formed history");
        match &result {
            CheckResult::Linearizable => {
                assert!(!certain, "seed {seed}: corrupting #{index} went unnoticed")
            }
            CheckResult::Illegal {
                window,
                explanation,
                minimal,
                ..
            } => {
                rejected += 1;
                // Reads and refusals outside the window count as changing
                // nothing (as recorded), and old writes as recorded: so a
                // window may prove the violation without the corrupted
                // operation only when it is one of those.
                let Outcome::Returned { output: bad, .. } = &history[index].outcome else {
                    unreachable!("the corrupted operation returned")
                };
                let few_writes = history
                    .iter()
                    .filter(|op| match &op.outcome {
                        Outcome::Returned { output, .. } => {
                            !model.is_read_only(&op.input, Some(output))
                        }
                        Outcome::Unknown => false,
                    })
                    .count()
                    <= baton_check::SHRINK_NEIGHBOURHOOD;
                assert!(
                    window.contains(&index)
                        || model.is_read_only(&history[index].input, Some(bad))
                        || !few_writes,
                    "seed {seed}: window lacks the corrupted #{index}:\n{explanation}"
                );
                assert!(*minimal, "seed {seed}: {explanation}");
                // With no older writes kept as context, the window is a
                // non-linearizable history on its own.
                let alone: Vec<_> = window.iter().map(|&i| history[i].clone()).collect();
                assert!(
                    !few_writes || matches!(check(model, &alone), Ok(CheckResult::Illegal { .. })),
                    "seed {seed}: the window alone is linearizable:\n{explanation}"
                );
            }
            CheckResult::Timeout { .. } => panic!("seed {seed}: small history timed out"),
        }
    }
    println!("corrupted {corrupted} histories, rejected {rejected}");
    (corrupted, rejected)
}

#[test]
fn register_histories() {
    let (corrupted, rejected) = run(
        &VersionedRegister::new(),
        RegisterRef::default,
        |rng, input, output| {
            use RegisterOutput as Out;
            Some(match (input, output) {
                // Nobody ever writes this value: certainly impossible.
                (RegisterInput::Get, _) => (
                    Out::Found {
                        value: "never-written".into(),
                        version: 1 + rng.below(3),
                    },
                    true,
                ),
                (_, Out::Written { version }) => (
                    Out::Written {
                        version: version.saturating_sub(rng.below(3)),
                    },
                    false,
                ),
                (_, Out::Conflict { .. }) => (Out::Written { version: 1_000_000 }, false),
                (_, Out::Deleted) => (Out::NotFound, false),
                (_, Out::NotFound) => (Out::Deleted, false),
                (_, Out::Found { .. }) => return None,
            })
        },
    );
    assert!(rejected > 0 && rejected <= corrupted);
}

#[test]
fn counter_histories() {
    // Half the runs record versions (as Baton returns them), half do not.
    let mut runs = 0;
    let make = || {
        runs += 1;
        CounterRef::new(runs % 2 == 0)
    };
    let (_, rejected) = run(&BoundedCounter::new(), make, |rng, input, output| {
        Some(match (input, output) {
            // Every client uses bounds [0, 10]: a value above 10 never exists.
            (_, CounterOutput::Value { version, .. }) if rng.chance(500) => (
                CounterOutput::Value {
                    value: COUNTER_MAX + 1,
                    version: *version,
                },
                true,
            ),
            (_, CounterOutput::Value { value, version }) if rng.chance(500) => (
                CounterOutput::Value {
                    value: value + 1,
                    version: *version,
                },
                false,
            ),
            (_, CounterOutput::Value { value, version }) => (
                CounterOutput::Value {
                    value: *value,
                    version: version.map(|v| v.saturating_sub(1 + rng.below(3))),
                },
                false,
            ),
            (CounterInput::Add { .. }, CounterOutput::Refused) => (
                CounterOutput::Value {
                    value: COUNTER_MAX,
                    version: None,
                },
                false,
            ),
            (CounterInput::Get, CounterOutput::Refused) => return None,
        })
    });
    assert!(rejected > 0);
}

#[test]
fn lock_histories() {
    let (_, rejected) = run(&Lock::new(), LockRef::default, |rng, input, output| {
        Some(match (input, output) {
            (LockInput::Read, _) => (LockOutput::Value(Some("never-written".into())), true),
            (_, LockOutput::Granted { token }) if rng.chance(500) => (LockOutput::Busy, false),
            (_, LockOutput::Granted { token }) => (
                LockOutput::Granted {
                    token: token.saturating_sub(1),
                },
                false,
            ),
            (_, LockOutput::Busy) => (LockOutput::Granted { token: 1_000_000 }, false),
            (_, LockOutput::Fenced) => (LockOutput::Written, false),
            (_, LockOutput::Written) => (LockOutput::Fenced, false),
            (_, LockOutput::Released) => (LockOutput::NotHolder, false),
            (_, LockOutput::NotHolder) => (LockOutput::Released, false),
            (_, LockOutput::Value(_)) => return None,
        })
    });
    assert!(rejected > 0);
}

#[test]
fn long_register_history_with_many_clients_passes() {
    // Not a timing test: a long, busy history must still get a verdict.
    let mut rng = Rng::new(7);
    let config = SimConfig {
        clients: 16,
        ops: 1500,
        keys: 2,
        max_latency: 100,
        max_think: 20,
        unknown_per_mille: 5,
    };
    let history = simulate(&mut RegisterRef::default(), &mut rng, &config);
    assert_eq!(
        check(&VersionedRegister::new(), &history),
        Ok(CheckResult::Linearizable)
    );
}
