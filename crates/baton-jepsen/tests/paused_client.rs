//! The paused client: it holds a lock, stops (a GC pause, a stuck tool call)
//! past its lease, and wakes up to write with its old fencing token. Baton
//! must refuse that write with FENCED and must not apply it, while the next
//! holder's writes go through. The pause is a bounded wait for the server's
//! own `lease_lost` event, not a sleep.

use baton_jepsen::http::{Agent, Answer, Method};
use baton_jepsen::server::InProcessServer;
use baton_server::ServeConfig;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

async fn call(agent: &Agent, url: &str, method: Method, path: &str, body: Value) -> Answer {
    agent.call(url, method, path, Some(&body), None, T).await
}

fn ok(answer: &Answer) -> &Value {
    answer
        .result()
        .unwrap_or_else(|| panic!("expected ok, got {}", answer.describe()))
}

async fn resource(url: &str, key: &str) -> Value {
    let answer = Agent::new("reader")
        .get(url, &format!("/v1/kv/{key}"), T)
        .await;
    ok(&answer)["value"].clone()
}

/// Waits for `lease_lost` of `lock_id` on the watch stream (at most `T`).
async fn lease_lost(url: &str, key: &str, lock_id: u64, from_revision: u64) -> Value {
    Agent::new("watcher")
        .watch_for(url, key, from_revision, T, |event| {
            event["kind"] == "lease_lost" && event["lock_id"] == lock_id
        })
        .await
        .unwrap_or_else(|e| panic!("the lease of lock {lock_id} was never reported lost: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_paused_past_its_lease_is_fenced_and_its_write_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path(), ServeConfig::default())
        .await
        .unwrap();
    let url = server.url.clone();
    let (paused, next) = (Agent::new("paused"), Agent::new("next"));

    let grant = call(
        &paused,
        &url,
        Method::POST,
        "/v1/locks",
        json!({"keys": ["l/pause"], "ttl_ms": 300}),
    )
    .await;
    let (lock_id, old_token) = (
        ok(&grant)["lock_id"].as_u64().unwrap(),
        ok(&grant)["fence_token"].as_u64().unwrap(),
    );
    let fence = json!({"key": "l/pause", "token": old_token});
    let first = call(
        &paused,
        &url,
        Method::PUT,
        "/v1/kv/p/pause",
        json!({"value": "before the pause", "fence": fence}),
    )
    .await;
    ok(&first);

    // The pause: no renew, until the server itself says the lease is gone.
    let event = lease_lost(&url, "l/pause", lock_id, old_token).await;
    assert_eq!(event["fence_token"], old_token);

    let late = call(
        &paused,
        &url,
        Method::PUT,
        "/v1/kv/p/pause",
        json!({"value": "after the pause", "fence": fence}),
    )
    .await;
    assert_eq!(
        (late.status(), late.code()),
        (Some(409), Some("FENCED")),
        "{}",
        late.describe()
    );
    assert_eq!(
        resource(&url, "p/pause").await,
        "before the pause",
        "the fenced write was not applied"
    );

    // The next holder gets a larger token and its writes go through...
    let grant = call(
        &next,
        &url,
        Method::POST,
        "/v1/locks",
        json!({"keys": ["l/pause"], "ttl_ms": 30_000, "wait_ms": 5_000}),
    )
    .await;
    let new_token = ok(&grant)["fence_token"].as_u64().unwrap();
    assert!(
        new_token > old_token,
        "fencing tokens grow: {new_token} after {old_token}"
    );
    let write = call(
        &next,
        &url,
        Method::PUT,
        "/v1/kv/p/pause",
        json!({"value": "next holder", "fence": {"key": "l/pause", "token": new_token}}),
    )
    .await;
    ok(&write);

    // ... and every later move of the paused client with the old lock is refused.
    let again = call(
        &paused,
        &url,
        Method::PUT,
        "/v1/kv/p/pause",
        json!({"value": "zombie", "fence": fence}),
    )
    .await;
    assert_eq!(again.code(), Some("FENCED"), "{}", again.describe());
    let patch = call(
        &paused,
        &url,
        Method::PATCH,
        "/v1/kv/p/pause",
        json!({"merge": {"z": 1}, "fence": fence}),
    )
    .await;
    assert_eq!(patch.code(), Some("FENCED"), "{}", patch.describe());
    let counter = call(
        &paused,
        &url,
        Method::POST,
        "/v1/counters/add",
        json!({"key": "p/count", "delta": 1, "fence": fence}),
    )
    .await;
    assert_eq!(counter.code(), Some("FENCED"), "{}", counter.describe());
    let renew = call(
        &paused,
        &url,
        Method::POST,
        &format!("/v1/locks/{lock_id}/renew"),
        json!({}),
    )
    .await;
    assert_eq!(renew.code(), Some("FENCED"), "{}", renew.describe());
    let release = paused
        .call(
            &url,
            Method::DELETE,
            &format!("/v1/locks/{lock_id}"),
            None,
            None,
            T,
        )
        .await;
    assert_eq!(ok(&release)["released"], false);
    assert_eq!(ok(&release)["outcome"], "expired");
    let check = Agent::new("outsider")
        .get(&url, &format!("/v1/fence?key=l/pause&token={old_token}"), T)
        .await;
    assert_eq!(ok(&check)["valid"], false);
    assert_eq!(ok(&check)["current_tokens"], json!([new_token]));
    assert_eq!(resource(&url, "p/pause").await, "next holder");
    assert_eq!(
        Agent::new("reader")
            .get(&url, "/v1/kv/p/count", T)
            .await
            .status(),
        Some(404)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_session_expires_during_a_pause_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path(), ServeConfig::default())
        .await
        .unwrap();
    let url = server.url.clone();
    let mut paused = Agent::new("paused");
    let session = call(
        &paused,
        &url,
        Method::POST,
        "/v1/sessions",
        json!({"ttl_ms": 300}),
    )
    .await;
    let session_id = ok(&session)["session_id"].as_u64().unwrap();
    paused.session = Some(session_id);
    // The lock lives as long as the session: no TTL of its own.
    let grant = call(
        &paused,
        &url,
        Method::POST,
        "/v1/locks",
        json!({"keys": ["l/session"]}),
    )
    .await;
    let (lock_id, token) = (
        ok(&grant)["lock_id"].as_u64().unwrap(),
        ok(&grant)["fence_token"].as_u64().unwrap(),
    );
    let event = lease_lost(&url, "l/session", lock_id, token).await;
    assert_eq!(event["fence_token"], token);

    let fence = json!({"key": "l/session", "token": token});
    let late = call(
        &paused,
        &url,
        Method::PUT,
        "/v1/kv/p/session",
        json!({"value": 1, "fence": fence}),
    )
    .await;
    assert_eq!(late.code(), Some("FENCED"), "{}", late.describe());
    // Even without a fence, a write naming the ended session is refused.
    let unfenced = call(
        &paused,
        &url,
        Method::PUT,
        "/v1/kv/p/session",
        json!({"value": 2}),
    )
    .await;
    assert_eq!(unfenced.code(), Some("FENCED"), "{}", unfenced.describe());
    let keepalive = call(
        &paused,
        &url,
        Method::POST,
        &format!("/v1/sessions/{session_id}/keepalive"),
        json!({}),
    )
    .await;
    assert_eq!(keepalive.code(), Some("FENCED"), "{}", keepalive.describe());
    assert_eq!(
        Agent::new("reader")
            .get(&url, "/v1/kv/p/session", T)
            .await
            .status(),
        Some(404)
    );
    server.stop().await.unwrap();
}
