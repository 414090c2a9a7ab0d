//! The checks are not vacuous: a real history recorded from an in-process
//! server is clean, and the same history with one planted anomaly (a stale
//! read, a counter value no add could give, a reused fencing token, a write
//! accepted with a released fence, an acknowledged write missing after a
//! restart) is caught by the check meant for it.

use baton_check::models::{
    CounterInput, CounterOutput, LockInput, LockOutput, RegisterInput, RegisterOutput,
};
use baton_check::{Operation, Outcome};
use baton_jepsen::http::Gate;
use baton_jepsen::invariants;
use baton_jepsen::recorder::{History, Recorder};
use baton_jepsen::server::InProcessServer;
use baton_jepsen::workload::{self, WorkloadConfig};
use baton_server::ServeConfig;
use std::time::Duration;

fn illegal(history: &History) -> Vec<String> {
    invariants::linearizable(history)
        .1
        .into_iter()
        .map(|a| a.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_history_passes_and_each_planted_anomaly_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path(), ServeConfig::default())
        .await
        .unwrap();
    let recorder = Recorder::new();
    let config = WorkloadConfig::new(8, 150, Duration::from_secs(4), 7);
    workload::run(
        &config,
        Gate::new(Some(server.url.clone())),
        recorder.clone(),
    )
    .await;
    // The verifier's reads close the history with each key's final state.
    let clean = recorder.history();
    assert!(
        invariants::acknowledged_writes_survive(&server.url, &clean, &recorder)
            .await
            .is_empty()
    );
    let history = recorder.history();
    let end = recorder.now_us() + 1;
    assert!(history.anomalies.is_empty(), "{:?}", history.anomalies);
    assert!(
        illegal(&history).is_empty(),
        "the recorded history is linearizable"
    );
    assert!(invariants::fence_tokens_increase(&history).is_empty());
    assert_eq!(history.unknown(), 0, "no faults, no unknown outcomes");

    // A stale read: the first value ever written to a register, read at the end.
    let first_write = history
        .registers
        .iter()
        .filter_map(|op| match (&op.input, &op.outcome) {
            (
                RegisterInput::Put { value },
                Outcome::Returned {
                    output: RegisterOutput::Written { version },
                    ..
                },
            ) => Some((op.key.clone(), value.clone(), *version)),
            _ => None,
        })
        .min_by_key(|(_, _, version)| *version)
        .expect("some put succeeded");
    let mut stale = history.clone();
    let (key, value, version) = first_write;
    stale.registers.push(Operation::returned(
        99,
        key,
        end,
        end + 1,
        RegisterInput::Get,
        RegisterOutput::Found { value, version },
    ));
    assert_eq!(
        illegal(&stale),
        vec!["not linearizable"],
        "a stale read is caught"
    );

    // A counter value no sequence of the recorded adds could produce.
    let mut counter = history.clone();
    counter.counters.push(Operation::returned(
        99,
        "c/0",
        end,
        end + 1,
        CounterInput::Get,
        CounterOutput::Value {
            value: 1_000,
            version: None,
        },
    ));
    assert_eq!(
        illegal(&counter),
        vec!["not linearizable"],
        "an impossible counter value is caught"
    );

    // A grant, and a token handed out twice.
    let grant = history
        .locks
        .iter()
        .find(|op| {
            matches!(
                op.outcome,
                Outcome::Returned {
                    output: LockOutput::Granted { .. },
                    ..
                }
            )
        })
        .expect("some lock was granted")
        .clone();
    let Outcome::Returned {
        output: LockOutput::Granted { token },
        ..
    } = grant.outcome
    else {
        unreachable!()
    };
    let mut reused = history.clone();
    reused.locks.push(Operation::returned(
        99,
        grant.key.clone(),
        end,
        end + 1,
        LockInput::Acquire,
        LockOutput::Granted { token },
    ));
    assert!(
        !invariants::fence_tokens_increase(&reused).is_empty(),
        "a reused token is caught by the token check"
    );
    assert_eq!(
        illegal(&reused),
        vec!["not linearizable"],
        "and by the lock model"
    );

    // A write accepted with a fence that was released long ago.
    let mut zombie = history.clone();
    zombie.locks.push(Operation::returned(
        99,
        grant.key.clone(),
        end,
        end + 1,
        LockInput::FencedWrite {
            token,
            value: "zombie".into(),
        },
        LockOutput::Written,
    ));
    assert_eq!(
        illegal(&zombie),
        vec!["not linearizable"],
        "a stale fence accepted is caught"
    );

    // An acknowledged version the server does not have.
    let mut lost = history.clone();
    lost.acknowledged.insert("r/0".into(), u64::MAX / 2);
    let found = invariants::acknowledged_writes_survive(&server.url, &lost, &Recorder::new()).await;
    assert!(
        found.iter().any(|a| a.kind == "acknowledged write lost"),
        "{found:?}"
    );

    // The server's audit trail agrees: one holder at a time, tokens growing.
    let (summary, audit) = invariants::audit_trail(&server.url).await;
    assert!(audit.is_empty(), "{audit:?}");
    assert!(summary.grants > 0);
    server.stop().await.unwrap();
}
