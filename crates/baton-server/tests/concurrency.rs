//! Real concurrent HTTP clients against one server, checking invariants.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const CLIENTS: usize = 16;
const INCREMENTS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_increments_are_never_lost() {
    let server = TestServer::start().await;
    server
        .client("setup")
        .put("c/cas", json!({"value": 0}))
        .await
        .ok();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let api = server.client(&format!("cas-{client}"));
        tasks.push(tokio::spawn(async move {
            let (mut done, mut conflicts) = (0, 0);
            while done < INCREMENTS {
                let current = api.get("/v1/kv/c/cas").await;
                let (value, version) = (
                    current.ok()["value"].as_i64().unwrap(),
                    current.ok()["version"].as_u64().unwrap(),
                );
                let put = api
                    .put("c/cas", json!({"value": value + 1, "if_version": version}))
                    .await;
                if put.body["ok"] == true {
                    done += 1;
                } else {
                    assert_eq!(put.code(), "CONCURRENT_MODIFICATION");
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    conflicts += join_all_within(tasks, Duration::from_secs(120))
        .await
        .into_iter()
        .sum::<u64>();
    let api = server.client("check");
    assert_eq!(
        api.get("/v1/kv/c/cas").await.ok()["value"],
        (CLIENTS * INCREMENTS) as i64
    );
    assert!(
        conflicts > 0,
        "16 clients on one key must have raced at least once"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_protected_read_modify_write_with_fence_is_exact() {
    let server = TestServer::start().await;
    server
        .client("setup")
        .put("c/locked", json!({"value": 0}))
        .await
        .ok();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let api = server.client(&format!("locker-{client}"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                let lock = api
                    .post(
                        "/v1/locks",
                        json!({"keys": ["c/mutex"], "ttl_ms": 30_000, "wait_ms": 60_000}),
                    )
                    .await;
                let lock = lock.ok().clone();
                let (lock_id, fence) = (
                    lock["lock_id"].as_u64().unwrap(),
                    lock["fence_token"].as_u64().unwrap(),
                );
                let value = api.get("/v1/kv/c/locked").await.ok()["value"]
                    .as_i64()
                    .unwrap();
                api.put(
                    "c/locked",
                    json!({"value": value + 1, "fence": {"key": "c/mutex", "token": fence}}),
                )
                .await
                .ok();
                api.delete(&format!("/v1/locks/{lock_id}")).await.ok();
            }
        }));
    }
    join_all_within(tasks, Duration::from_secs(120)).await;
    let api = server.client("check");
    assert_eq!(
        api.get("/v1/kv/c/locked").await.ok()["value"],
        (CLIENTS * INCREMENTS) as i64
    );
    // Fencing tokens strictly increased across the run: the audit trail shows every grant.
    let mut from = 1;
    let mut tokens = Vec::new();
    loop {
        let page = api
            .get(&format!(
                "/v1/events?prefix=c/mutex&from_revision={from}&limit=1000"
            ))
            .await;
        let events = page.ok()["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        tokens.extend(
            events
                .iter()
                .filter(|e| e["kind"] == "lock_granted")
                .map(|e| e["fence_token"].as_u64().unwrap()),
        );
        from = page.ok()["next_revision"].as_u64().unwrap();
    }
    assert_eq!(tokens.len(), CLIENTS * INCREMENTS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fence tokens must strictly increase"
    );
    server.stop().await;
}

/// The read rides on the grant: each client locks the counter's own key with
/// `read`, writes the value its grant carried + 1 (fenced, releasing), and
/// never calls GET. Every grant must carry the previous holder's write, so
/// the values read are exactly 0, 1, ..., sections - 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_that_reads_its_key_carries_the_last_holders_write() {
    let server = TestServer::start().await;
    server
        .client("setup")
        .put("c/read-grant", json!({"value": 0}))
        .await
        .ok();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let api = server.client(&format!("read-grant-{client}"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..INCREMENTS {
                let lock = api
                    .post(
                        "/v1/locks",
                        json!({"keys": ["c/read-grant"], "ttl_ms": 30_000, "wait_ms": 60_000, "read": true}),
                    )
                    .await;
                let lock = lock.ok().clone();
                let values = lock["values"].as_array().expect("a grant with read has values");
                assert_eq!(values.len(), 1);
                assert_eq!(values[0]["key"], "c/read-grant");
                let value = values[0]["value"].as_i64().unwrap();
                let written = api
                    .put(
                        "c/read-grant",
                        json!({
                            "value": value + 1,
                            "fence": {"key": "c/read-grant", "token": lock["fence_token"]},
                            "release": lock["lock_id"],
                        }),
                    )
                    .await;
                assert_eq!(written.ok()["released_lock_id"], lock["lock_id"]);
                seen.push(value);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    seen.extend(
        join_all_within(tasks, Duration::from_secs(120))
            .await
            .into_iter()
            .flatten(),
    );
    seen.sort();
    let expected: Vec<i64> = (0..(CLIENTS * INCREMENTS) as i64).collect();
    assert_eq!(seen, expected, "each grant carried the last holder's write");
    let api = server.client("check");
    assert_eq!(
        api.get("/v1/kv/c/read-grant").await.ok()["value"],
        expected.len() as i64
    );
}

/// The same critical sections, but the +1 write carries `release`: acquire,
/// read, write-and-release. No client ever calls DELETE /v1/locks/{id}.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_releases_its_lock_loses_no_increment() {
    let server = TestServer::start().await;
    server
        .client("setup")
        .put("c/handoff", json!({"value": 0}))
        .await
        .ok();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let api = server.client(&format!("handoff-{client}"));
        tasks.push(tokio::spawn(async move {
            let mut sections = Vec::new();
            for _ in 0..INCREMENTS {
                let lock = api
                    .post(
                        "/v1/locks",
                        json!({"keys": ["c/handoff-mutex"], "ttl_ms": 30_000, "wait_ms": 60_000}),
                    )
                    .await;
                let lock = lock.ok().clone();
                let (lock_id, fence) = (
                    lock["lock_id"].as_u64().unwrap(),
                    lock["fence_token"].as_u64().unwrap(),
                );
                let value = api.get("/v1/kv/c/handoff").await.ok()["value"]
                    .as_i64()
                    .unwrap();
                let written = api
                    .put(
                        "c/handoff",
                        json!({
                            "value": value + 1,
                            "fence": {"key": "c/handoff-mutex", "token": fence},
                            "release": lock_id,
                        }),
                    )
                    .await;
                assert_eq!(written.ok()["released_lock_id"], lock_id);
                sections.push((lock_id, written.ok()["version"].as_u64().unwrap()));
            }
            sections
        }));
    }
    let mut sections = Vec::new();
    sections.extend(
        join_all_within(tasks, Duration::from_secs(120))
            .await
            .into_iter()
            .flatten(),
    );
    let api = server.client("check");
    assert_eq!(sections.len(), CLIENTS * INCREMENTS);
    assert_eq!(
        api.get("/v1/kv/c/handoff").await.ok()["value"],
        sections.len() as i64,
        "final counter = completed critical sections"
    );
    let held = api.get("/v1/locks?key=c/handoff-mutex").await;
    assert_eq!(held.ok()["holders"], json!([]), "every lock was released");

    // The audit trail: every lock was released by the write of its own
    // section, at that write's revision; nothing else released one.
    let mut from = 1;
    let mut released = Vec::new();
    loop {
        let page = api
            .get(&format!(
                "/v1/events?prefix=c/handoff-mutex&from_revision={from}&limit=1000"
            ))
            .await;
        let events = page.ok()["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        released.extend(
            events
                .iter()
                .filter(|e| e["kind"] == "lock_released")
                .map(|e| {
                    (
                        e["lock_id"].as_u64().unwrap(),
                        e["revision"].as_u64().unwrap(),
                    )
                }),
        );
        from = page.ok()["next_revision"].as_u64().unwrap();
    }
    released.sort_unstable();
    sections.sort_unstable();
    assert_eq!(released, sections);
    server.stop().await;
}
