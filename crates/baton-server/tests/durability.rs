//! Restart, snapshots, fail-stop storage, and the single-owner data dir.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn state_survives_a_restart_and_snapshots_truncate_the_log() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let config = baton_server::ServeConfig {
        snapshot_every_commands: 50,
        ..config(dir)
    };
    let server = TestServer::start_in(dir, config.clone()).await;
    let api = server.client("agent");
    for i in 0..120 {
        api.put(&format!("r/{}", i % 10), json!({"value": i}))
            .await
            .ok();
    }
    let held = api
        .post("/v1/locks", json!({"keys": ["r/lock"], "ttl_ms": 600_000}))
        .await;
    let lock_id = held.ok()["lock_id"].clone();
    let before = api.get("/v1/kv?prefix=r/").await.ok().clone();
    server.stop().await;

    let server = TestServer::start_in(dir, config).await;
    let api = server.client("agent");
    let after = api.get("/v1/kv?prefix=r/").await.ok().clone();
    assert_eq!(after["entries"], before["entries"]);
    assert_eq!(
        api.get("/v1/locks?key=r/lock").await.ok()["holders"][0]["lock_id"],
        lock_id
    );
    let status = api.get("/v1/status").await.ok().clone();
    assert!(
        status["events_from_revision"].as_u64().unwrap() > 1,
        "a snapshot was taken: {status}"
    );
    // Writes go on with fresh revisions after the restart.
    let next = api.put("r/0", json!({"value": "new"})).await.ok()["version"]
        .as_u64()
        .unwrap();
    assert!(next > before["revision"].as_u64().unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_storage_failure_is_fail_stop_and_a_restart_recovers() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let server = TestServer::start_in(dir, config(dir)).await;
    let api = server.client("agent");
    let kept = api.put("f/kept", json!({"value": 1})).await.ok()["version"].clone();

    server.faults.fail_next_appends(1);
    let failed = api.put("f/lost", json!({"value": 2})).await;
    assert_eq!((failed.status, failed.code()), (503, "UNAVAILABLE"));
    assert_eq!(api.get("/readyz").await.status, 503);
    // Every later write is refused too: the node is fail-stop, not flaky.
    let refused = api.put("f/later", json!({"value": 3})).await;
    assert_eq!(refused.code(), "UNAVAILABLE");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart")
    );
    assert_eq!(
        api.get("/v1/kv/f/kept").await.ok()["version"],
        kept,
        "reads still work"
    );
    server.stop().await;

    let server = TestServer::start_in(dir, config(dir)).await;
    let api = server.client("agent");
    assert_eq!(
        api.get("/v1/kv/f/kept").await.ok()["version"],
        kept,
        "no acknowledged write is lost"
    );
    assert_eq!(
        api.get("/v1/kv/f/lost").await.status,
        404,
        "the failed batch was not stored"
    );
    assert_eq!(api.get("/v1/kv/f/later").await.status, 404);
    assert_eq!(api.get("/readyz").await.status, 200);
    api.put("f/after", json!({"value": 4})).await.ok();
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_outcome_is_reported_as_such_and_state_stays_consistent() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let server = TestServer::start_in(dir, config(dir)).await;
    let api = server.client("agent");
    // The batch reaches the disk but the append reports an error.
    server.faults.lose_next_append_acks(1);
    let reply = api.put("u/k", json!({"value": 1})).await;
    assert_eq!(reply.code(), "UNAVAILABLE");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not")
    );
    server.stop().await;
    let server = TestServer::start_in(dir, config(dir)).await;
    let api = server.client("agent");
    // After restart it is there (it was stored), and writes continue.
    assert_eq!(api.get("/v1/kv/u/k").await.ok()["value"], 1);
    api.put("u/k", json!({"value": 2})).await.ok();
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let server = TestServer::start_in(dir, config(dir)).await;
    let mut second = config(dir);
    second.listen = "127.0.0.1:0".parse().unwrap();
    let error = baton_server::run(second)
        .await
        .expect_err("the data dir is locked");
    let message = error.to_string();
    assert!(message.contains("locked"), "{message}");
    assert!(message.contains(&dir.display().to_string()), "{message}");
    // The first server is unharmed.
    server
        .client("a")
        .put("x/y", json!({"value": 1}))
        .await
        .ok();
    server.stop().await;
}

#[test]
fn a_log_entry_with_a_field_this_binary_does_not_know_stops_recovery() {
    // A newer Baton may add a field to commands (as `release` was added);
    // an older binary must refuse to replay such an entry, not apply it
    // without the field and diverge from the state that was acknowledged.
    use baton_log::{FileLog, Log};
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let known = baton_core::Command::new(
        "agent",
        baton_core::Op::Put {
            key: "app/x".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: None,
        },
    );
    let mut record: serde_json::Value =
        serde_json::from_slice(&baton_server::encode_record(1_000, &known)).unwrap();
    record["c"]["from_the_future"] = json!(7);
    {
        let mut log = FileLog::open(dir).unwrap();
        log.append(&[baton_server::encode_record(1_000, &known)])
            .unwrap();
        log.append(&[serde_json::to_vec(&record).unwrap()]).unwrap();
    }
    let log = FileLog::open(dir).unwrap();
    let Err(error) = baton_server::Sequencer::start(Box::new(log) as Box<dyn Log>, &config(dir))
    else {
        panic!("a log entry with an unknown field must stop recovery");
    };
    let message = format!("{error:#}");
    assert!(message.contains("log entry 2"), "{message}");
    assert!(message.contains("from_the_future"), "{message}");
    assert!(message.contains("newer Baton"), "{message}");
}

#[test]
fn a_snapshot_with_a_field_this_binary_does_not_know_stops_recovery() {
    // The snapshot side of the same gate: an older binary must not restore
    // a newer Baton's state without the fields it does not know.
    use baton_log::{FileLog, Log, Snapshot};
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let command = baton_core::Command::new(
        "agent",
        baton_core::Op::Put {
            key: "app/x".into(),
            value: json!(1),
            if_version: None,
            if_absent: false,
            ttl_ms: None,
        },
    );
    let mut machine = baton_core::StateMachine::new(baton_core::Limits::default());
    machine.apply(1, 1_000, &command);
    let mut state: serde_json::Value = serde_json::from_slice(&machine.snapshot()).unwrap();
    state["kv"]["app/x"]["from_the_future"] = json!(7);
    {
        let mut log = FileLog::open(dir).unwrap();
        log.append(&[baton_server::encode_record(1_000, &command)])
            .unwrap();
        log.save_snapshot(&Snapshot {
            seq: 1,
            data: serde_json::to_vec(&state).unwrap(),
        })
        .unwrap();
    }
    let log = FileLog::open(dir).unwrap();
    let Err(error) = baton_server::Sequencer::start(Box::new(log) as Box<dyn Log>, &config(dir))
    else {
        panic!("a snapshot with an unknown field must stop recovery");
    };
    let message = format!("{error:#}");
    assert!(message.contains("kv.app/x.from_the_future"), "{message}");
    assert!(message.contains("newer Baton"), "{message}");
}

/// `/v1/status`'s snapshot section, polled until `done` holds (at most 10 s).
async fn wait_for_snapshot(
    api: &Api,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = api.get("/v1/status").await.ok()["snapshot"].clone();
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such snapshot within 10 s: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_snapshot_waits_until_the_log_since_the_last_one_is_as_large_as_it() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let config = baton_server::ServeConfig {
        snapshot_every_commands: 10,
        snapshot_every_secs: 3600,
        ..config(dir)
    };
    let server = TestServer::start_in(dir, config).await;
    let api = server.client("agent");
    let big = "x".repeat(4096);
    // Ten large values: with no snapshot yet, the first is due at once.
    for i in 0..10 {
        api.put(&format!("big/{i}"), json!({ "value": big }))
            .await
            .ok();
    }
    let first = wait_for_snapshot(&api, |s| s["revision"].as_u64() >= Some(10)).await;
    let first_bytes = first["bytes"].as_u64().unwrap();
    assert!(
        first_bytes >= 40_000,
        "the snapshot holds the values: {first}"
    );

    // Six times snapshot_every_commands, but far less log than the snapshot:
    // rewriting the state now would cost more than replaying this log.
    for i in 0..60 {
        api.put("s/small", json!({ "value": i })).await.ok();
    }
    // The writer has decided on every earlier batch before it answers this.
    api.put("s/small", json!({ "value": "last" })).await.ok();
    let status = api.get("/v1/status").await.ok()["snapshot"].clone();
    assert_eq!(status["revision"], first["revision"], "{status}");
    assert_eq!(status["in_progress"], false, "{status}");
    assert!(status["commands_since"].as_u64().unwrap() >= 60, "{status}");
    let since = status["log_bytes_since"].as_u64().unwrap();
    assert!(since > 0 && since < first_bytes, "{status}");

    // Once the log since outweighs the snapshot, the next one is taken.
    let mut written = since;
    let mut i = 0;
    while written < first_bytes {
        api.put(&format!("big/{}", i % 10), json!({ "value": big }))
            .await
            .ok();
        written += big.len() as u64;
        i += 1;
    }
    let next = wait_for_snapshot(&api, |s| {
        s["revision"].as_u64() > first["revision"].as_u64()
    })
    .await;
    assert!(next["bytes"].as_u64().unwrap() >= first_bytes, "{next}");
    server.stop().await;
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

async fn waiters(api: &Api, key: &str) -> Vec<u64> {
    api.get(&format!("/v1/locks?key={key}")).await.ok()["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["lock_id"].as_u64().unwrap())
        .collect()
}

async fn holders(api: &Api, key: &str) -> Vec<u64> {
    api.get(&format!("/v1/locks?key={key}")).await.ok()["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["lock_id"].as_u64().unwrap())
        .collect()
}

/// A lock request waiting when the server shuts down is told it was
/// withdrawn, and it is: after the restart it is not granted to a caller
/// that is gone (it would hold the key while its session lives).
#[tokio::test]
async fn a_wait_withdrawn_at_shutdown_is_not_granted_after_the_restart() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let server = TestServer::start_in(dir, config(dir)).await;
    let alice = server.client("alice");
    let held = alice
        .post("/v1/locks", json!({"keys": ["w/k"], "ttl_ms": 60_000}))
        .await
        .ok()["lock_id"]
        .as_u64()
        .unwrap();
    let mut bob = server.client("bob");
    bob.open_session(60_000).await;
    let waiting = tokio::spawn(async move {
        bob.post("/v1/locks", json!({"keys": ["w/k"], "wait_ms": 60_000}))
            .await
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            !waiters(&alice, "w/k").await.is_empty()
        })
        .await,
        "bob queues"
    );
    server.stop().await;
    let told = waiting.await.unwrap();
    assert_eq!((told.status, told.code()), (503, "UNAVAILABLE"));

    let server = TestServer::start_in(dir, config(dir)).await;
    let alice = server.client("alice");
    assert!(
        waiters(&alice, "w/k").await.is_empty(),
        "withdrawn in the log"
    );
    alice.delete(&format!("/v1/locks/{held}")).await.ok();
    assert!(holders(&alice, "w/k").await.is_empty(), "granted to nobody");
    server.stop().await;
}

/// Waits recovered from the log after a crash (here: storage failed, so the
/// shutdown could not withdraw them) have no caller. A retry with the
/// request's idempotency key joins its wait and gets the grant; a wait
/// nobody rejoins is withdrawn, not granted to nobody.
#[tokio::test]
async fn waits_recovered_after_a_crash_are_rejoined_or_withdrawn() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let server = TestServer::start_in(dir, config(dir)).await;
    let alice = server.client("alice");
    let held = alice
        .post("/v1/locks", json!({"keys": ["w/k"], "ttl_ms": 60_000}))
        .await
        .ok()["lock_id"]
        .as_u64()
        .unwrap();
    let acquire = json!({"keys": ["w/k"], "ttl_ms": 60_000, "wait_ms": 60_000});
    let retrier = server.client("retrier");
    let body = acquire.clone();
    let first = tokio::spawn(async move {
        retrier
            .call("POST", "/v1/locks", Some(body), Some("acquire-1"))
            .await
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            waiters(&alice, "w/k").await.len() == 1
        })
        .await
    );
    let gone = server.client("gone");
    let body = acquire.clone();
    let second = tokio::spawn(async move { gone.post("/v1/locks", body).await });
    assert!(
        eventually(Duration::from_secs(10), || async {
            waiters(&alice, "w/k").await.len() == 2
        })
        .await
    );
    let queued = waiters(&alice, "w/k").await;

    server.faults.fail_all_appends();
    server.faults.fail_snapshot_saves(true);
    assert_eq!(
        alice.put("w/x", json!({"value": 1})).await.code(),
        "UNAVAILABLE"
    );
    server.stop().await;
    assert_eq!(first.await.unwrap().code(), "UNAVAILABLE");
    assert_eq!(second.await.unwrap().code(), "UNAVAILABLE");

    let server = TestServer::start_in(dir, config(dir)).await;
    let alice = server.client("alice");
    assert_eq!(waiters(&alice, "w/k").await, queued, "both waits recovered");
    let retrier = server.client("retrier");
    let retried = tokio::spawn(async move {
        retrier
            .call("POST", "/v1/locks", Some(acquire), Some("acquire-1"))
            .await
    });
    // The retry joins the recovered wait (it does not queue a new request).
    assert!(
        eventually(Duration::from_secs(5), || async {
            alice.get("/v1/status").await.ok()["locks_waiting"] == 2
        })
        .await
    );
    alice.delete(&format!("/v1/locks/{held}")).await.ok();
    let granted = retried.await.unwrap();
    assert_eq!(granted.ok()["lock_id"], queued[0]);
    assert_eq!(granted.ok()["status"], "held");
    assert!(
        eventually(Duration::from_secs(20), || async {
            waiters(&alice, "w/k").await.is_empty()
        })
        .await,
        "the wait nobody rejoined is withdrawn"
    );
    assert_eq!(holders(&alice, "w/k").await, [queued[0]]);
    server.stop().await;
}

/// The limits a command was applied under are the limits it is replayed
/// under: a 100 KB value acknowledged under the default limits is still there
/// after a restart (with no snapshot, so from the log) configured to refuse
/// values over 64 KB, and new writes follow the new limit, across a second
/// restart too.
#[tokio::test]
async fn a_restart_with_lower_limits_keeps_what_was_acknowledged() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let big = "x".repeat(100 * 1024);
    let server = TestServer::start_in(dir, config(dir)).await;
    let api = server.client("agent");
    api.put("l/big", json!({"value": big})).await.ok();
    server.faults.fail_snapshot_saves(true);
    server.stop().await; // no snapshot: the restart replays the log

    let lower = |dir: &std::path::Path| {
        let mut config = config(dir);
        config.limits.max_value_bytes = 64 * 1024;
        config
    };
    for restart in 0..2 {
        let server = TestServer::start_in(dir, lower(dir)).await;
        let api = server.client("agent");
        let kept = api.get("/v1/kv/l/big").await;
        assert_eq!(
            kept.status, 200,
            "restart {restart}: {}",
            kept.body["error"]
        );
        assert_eq!(kept.ok()["value"].as_str().unwrap().len(), big.len());
        let refused = api.put("l/big2", json!({"value": big})).await;
        assert_eq!(refused.code(), "INVALID_ARGUMENT", "restart {restart}");
        server.faults.fail_snapshot_saves(true);
        server.stop().await;
    }
}

#[tokio::test]
async fn a_full_store_refuses_writes_and_counts_the_same_after_a_restart() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let limited = |dir: &std::path::Path| {
        let mut config = config(dir);
        config.limits.max_kv_bytes = 4096;
        config
    };
    let kv_bytes = |status: &Value| status["kv_bytes"].as_u64().unwrap();
    let server = TestServer::start_in(dir, limited(dir)).await;
    let api = server.client("agent");
    let value = json!({"value": "v".repeat(1000)});
    let mut stored = 0;
    let refused = loop {
        let reply = api.put(&format!("full/{stored}"), value.clone()).await;
        if reply.status != 200 {
            break reply;
        }
        stored += 1;
        assert!(stored < 10, "4096 bytes hold fewer than 10 values of 1 KB");
    };
    assert_eq!((refused.status, refused.code()), (429, "QUOTA_EXCEEDED"));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_kv_bytes"), "{message}");
    assert_eq!(stored, 4);
    let before = kv_bytes(api.get("/v1/status").await.ok());
    assert!(before <= 4096 && before > 4 * 1000, "{before}");

    // A restart replaying the log (no snapshot), then one from the snapshot
    // its stop wrote, count the same and refuse the same.
    server.faults.fail_snapshot_saves(true);
    server.stop().await;
    for from_snapshot in [false, true] {
        let server = TestServer::start_in(dir, limited(dir)).await;
        let api = server.client("agent");
        let status = api.get("/v1/status").await.ok().clone();
        assert_eq!(
            status["snapshot"]["revision"]
                .as_u64()
                .is_some_and(|r| r > 0),
            from_snapshot,
            "{status}"
        );
        assert_eq!(
            kv_bytes(&status),
            before,
            "from a snapshot: {from_snapshot}"
        );
        assert_eq!(
            api.put("full/more", value.clone()).await.code(),
            "QUOTA_EXCEEDED"
        );
        if from_snapshot {
            // A delete makes room.
            api.delete("/v1/kv/full/0").await.ok();
            api.put("full/more", value.clone()).await.ok();
        }
        server.stop().await;
    }
}
