//! Every endpoint over real HTTP against an in-process server with a real
//! embedded log: shapes, status codes, blocking waits, SSE, bad input.

mod support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn sessions_locks_and_fences_over_http() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice");
    let session = alice.open_session(30_000).await;
    let info = alice.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(info.ok()["agent"], "alice");

    let lock = alice
        .post("/v1/locks", json!({"keys": ["inv/sku-1"]}))
        .await;
    let lock = lock.ok().clone();
    assert_eq!(lock["status"], "held");
    let (lock_id, fence) = (
        lock["lock_id"].as_u64().unwrap(),
        lock["fence_token"].as_u64().unwrap(),
    );

    let bob = server.client("bob");
    let busy = bob
        .post("/v1/locks", json!({"keys": ["inv/sku-1"], "ttl_ms": 5000}))
        .await;
    assert_eq!((busy.status, busy.code()), (409, "CONCURRENT_MODIFICATION"));
    assert!(busy.body["error"]["retry_after_ms"].as_u64().is_some());
    assert_eq!(
        busy.body["error"]["details"]["holders"][0]["agent"],
        "alice"
    );

    let held = alice.get("/v1/locks?key=inv/sku-1").await;
    assert_eq!(held.ok()["holders"][0]["lock_id"], lock_id);
    let list = alice.get("/v1/locks?prefix=inv/").await;
    assert_eq!(list.ok()["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        alice.get(&format!("/v1/locks/{lock_id}")).await.ok()["status"],
        "held"
    );

    let fenced_put = alice
        .put(
            "inv/count",
            json!({"value": 1, "fence": {"key": "inv/sku-1", "token": fence}}),
        )
        .await;
    fenced_put.ok();
    let check = alice
        .get(&format!("/v1/fence?key=inv/sku-1&token={fence}"))
        .await;
    assert_eq!(check.ok()["valid"], true);
    let renewed = alice
        .post(&format!("/v1/locks/{lock_id}/renew"), json!({}))
        .await;
    assert_eq!(renewed.ok()["lock_id"], lock_id);

    let stolen = bob.delete(&format!("/v1/locks/{lock_id}")).await;
    assert_eq!((stolen.status, stolen.code()), (403, "PERMISSION_DENIED"));
    let released = alice.delete(&format!("/v1/locks/{lock_id}")).await;
    assert_eq!(released.ok()["released"], true);
    let again = alice.delete(&format!("/v1/locks/{lock_id}")).await;
    assert_eq!(
        (
            again.ok()["released"].clone(),
            again.ok()["outcome"].clone()
        ),
        (json!(false), json!("released"))
    );
    let stale = alice
        .put(
            "inv/count",
            json!({"value": 2, "fence": {"key": "inv/sku-1", "token": fence}}),
        )
        .await;
    assert_eq!((stale.status, stale.code()), (409, "FENCED"));
    assert_eq!(
        alice.get("/v1/kv/inv/count").await.ok()["value"],
        1,
        "a fenced write applies nothing"
    );

    assert_eq!(
        alice
            .post(&format!("/v1/sessions/{session}/keepalive"), json!({}))
            .await
            .ok()["session_id"],
        session
    );
    let sessions = alice.get("/v1/sessions").await;
    assert_eq!(sessions.ok()["sessions"].as_array().unwrap().len(), 1);
    let killed = bob
        .post(
            &format!("/v1/sessions/{session}/kill"),
            json!({"reason": "test"}),
        )
        .await;
    killed.ok();
    let gone = alice
        .post(&format!("/v1/sessions/{session}/keepalive"), json!({}))
        .await;
    assert_eq!((gone.status, gone.code()), (409, "FENCED"));
    assert_eq!(alice.get("/v1/sessions/99999").await.code(), "NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn a_blocking_wait_is_answered_when_the_lock_is_released() {
    let server = TestServer::start().await;
    let alice = server.client("alice");
    let held = alice
        .post("/v1/locks", json!({"keys": ["w/k"], "ttl_ms": 60_000}))
        .await;
    let lock_id = held.ok()["lock_id"].as_u64().unwrap();
    let bob = server.client("bob");
    let waiter = tokio::spawn(async move {
        bob.post(
            "/v1/locks",
            json!({"keys": ["w/k"], "ttl_ms": 60_000, "wait_ms": 30_000}),
        )
        .await
    });
    // Wait (bounded) until bob is queued, by watching the key's waiters.
    let mut queued = false;
    for _ in 0..200 {
        if alice.get("/v1/locks?key=w/k").await.ok()["waiters"]
            .as_array()
            .unwrap()
            .len()
            == 1
        {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued, "bob never queued");
    alice.delete(&format!("/v1/locks/{lock_id}")).await.ok();
    let granted = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("answered on release")
        .unwrap();
    assert_eq!(granted.ok()["status"], "held");
    assert_eq!(granted.ok()["agent"], "bob");
    assert!(granted.ok()["fence_token"].as_u64().unwrap() > lock_id);

    // The release revision holds two events (released, granted). Paging the
    // audit trail with any limit returns every event once, in order: a page
    // never ends inside a revision.
    let full = alice.get("/v1/events?prefix=w/&limit=1000").await.ok()["events"].clone();
    let full = full.as_array().unwrap().clone();
    assert!(full.len() >= 4, "{full:?}");
    for limit in 1..=4 {
        let mut paged = Vec::new();
        let mut from = 1;
        for _ in 0..100 {
            let page = alice
                .get(&format!(
                    "/v1/events?prefix=w/&from_revision={from}&limit={limit}"
                ))
                .await;
            let events = page.ok()["events"].as_array().unwrap().clone();
            if events.is_empty() {
                break;
            }
            paged.extend(events);
            from = page.ok()["next_revision"].as_u64().unwrap();
        }
        assert_eq!(paged, full, "limit {limit}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_waiter_whose_client_disconnects_leaves_the_queue() {
    let server = TestServer::start().await;
    let alice = server.client("alice");
    alice
        .post("/v1/locks", json!({"keys": ["d/k"], "ttl_ms": 60_000}))
        .await
        .ok();
    let http = reqwest::Client::new();
    let request = http
        .post(format!("{}/v1/locks", server.url))
        .header("Baton-Agent", "quitter")
        .json(&json!({"keys": ["d/k"], "ttl_ms": 60_000, "wait_ms": 60_000}))
        .timeout(Duration::from_millis(300))
        .send();
    assert!(request.await.is_err(), "the client gives up first");
    let mut left = false;
    for _ in 0..300 {
        if alice.get("/v1/locks?key=d/k").await.ok()["waiters"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left, "the disconnected waiter is still queued");
    let events = alice.get("/v1/events?prefix=d/&from_revision=1").await;
    let kinds: Vec<&str> = events.ok()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"lock_wait_ended"), "{kinds:?}");
    server.stop().await;
}

#[tokio::test]
async fn state_endpoints_and_conflicts() {
    let server = TestServer::start().await;
    let api = server.client("agent");
    let created = api.put("cfg/app", json!({"value": {"region": "us"}})).await;
    let version = created.ok()["version"].as_u64().unwrap();
    let got = api.get("/v1/kv/cfg/app").await;
    assert_eq!(
        (got.ok()["value"].clone(), got.ok()["version"].as_u64()),
        (json!({"region": "us"}), Some(version))
    );
    let conflict = api
        .put("cfg/app", json!({"value": 1, "if_version": version + 999}))
        .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (409, "CONCURRENT_MODIFICATION")
    );
    assert_eq!(
        conflict.body["error"]["details"]["current_value"],
        json!({"region": "us"})
    );
    let patched = api
        .call(
            "PATCH",
            "/v1/kv/cfg/app",
            Some(json!({"merge": {"tier": 2}, "if_version": version})),
            None,
        )
        .await;
    let v2 = patched.ok()["version"].as_u64().unwrap();
    let json_patch = json!({"json_patch": [{"op": "test", "path": "/tier", "value": 2}, {"op": "replace", "path": "/tier", "value": 3}]});
    api.call("PATCH", "/v1/kv/cfg/app", Some(json_patch), None)
        .await
        .ok();
    assert_eq!(
        api.get("/v1/kv/cfg/app").await.ok()["value"],
        json!({"region": "us", "tier": 3})
    );
    let history = api.get("/v1/history/cfg/app?limit=2").await;
    assert_eq!(history.ok()["versions"].as_array().unwrap().len(), 2);
    assert!(history.ok()["versions"][1]["version"].as_u64().unwrap() >= v2);

    for i in 0..3 {
        api.put(&format!("list/{i}"), json!({"value": i}))
            .await
            .ok();
    }
    let page = api.get("/v1/kv?prefix=list/&limit=2").await;
    assert_eq!(page.ok()["entries"].as_array().unwrap().len(), 2);
    let after = page.ok()["next_after"].as_str().unwrap().to_string();
    let rest = api.get(&format!("/v1/kv?prefix=list/&after={after}")).await;
    assert_eq!(rest.ok()["entries"][0]["key"], "list/2");

    let counter = api
        .post(
            "/v1/counters/add",
            json!({"key": "quota/x", "delta": 3, "max": 3}),
        )
        .await;
    assert_eq!(counter.ok()["value"], 3);
    let over = api
        .post(
            "/v1/counters/add",
            json!({"key": "quota/x", "delta": 1, "max": 3}),
        )
        .await;
    assert_eq!((over.status, over.code()), (429, "QUOTA_EXCEEDED"));

    let txn = api
        .post(
            "/v1/txn",
            json!({"compares": [{"key": "quota/x", "value": 3}],
                   "success": [{"op": "put", "key": "txn/a", "value": "yes"}, {"op": "get", "key": "quota/x"}],
                   "failure": [{"op": "put", "key": "txn/a", "value": "no"}]}),
        )
        .await;
    assert_eq!(txn.ok()["succeeded"], true);
    assert_eq!(api.get("/v1/kv/txn/a").await.ok()["value"], "yes");

    let deleted = api.call("DELETE", "/v1/kv/txn/a", None, None).await;
    assert_eq!(deleted.ok()["deleted"], true);
    assert_eq!(api.get("/v1/kv/txn/a").await.status, 404);

    // Idempotency over HTTP: the retry gets the recorded reply, applied once.
    let first = api
        .call(
            "POST",
            "/v1/counters/add",
            Some(json!({"key": "idem/n", "delta": 1})),
            Some("k1"),
        )
        .await;
    let retry = api
        .call(
            "POST",
            "/v1/counters/add",
            Some(json!({"key": "idem/n", "delta": 1})),
            Some("k1"),
        )
        .await;
    assert_eq!(first.body, retry.body);
    let mismatch = api
        .call(
            "POST",
            "/v1/counters/add",
            Some(json!({"key": "idem/n", "delta": 2})),
            Some("k1"),
        )
        .await;
    assert_eq!(
        (mismatch.status, mismatch.code()),
        (422, "IDEMPOTENCY_MISMATCH")
    );
    assert_eq!(api.get("/v1/kv/idem/n").await.ok()["value"], 1);

    let status = api.get("/v1/status").await;
    assert!(status.ok()["keys"].as_u64().unwrap() >= 5);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_applied() {
    let server = TestServer::start().await;
    let api = server.client("agent");
    let http = reqwest::Client::new();
    let raw = |body: &'static str, path: &str| {
        http.put(format!("{}{path}", server.url))
            .header("Baton-Agent", "agent")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, &str)> = vec![
        (raw("{not json", "/v1/kv/bad/k").await.unwrap(), "body"),
        (
            raw(r#"{"value": 1, "bogus": true}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "bogus",
        ),
        (
            raw(r#"{"value": 1, "ttl_ms": "soon"}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "ttl_ms",
        ),
        (
            raw(r#"{"value": 1, "ttl_ms": -5}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "ttl_ms",
        ),
        (
            raw(r#"{"value": 1}"#, "/v1/kv/nonamespace").await.unwrap(),
            "key",
        ),
        // A second JSON value after the first: its condition would be
        // dropped, so the whole request is refused.
        (
            raw(r#"{"value": 1} {"if_version": 7}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "nothing after it",
        ),
        (
            raw(r#"{"value": 1}garbage"#, "/v1/kv/bad/k").await.unwrap(),
            "nothing after it",
        ),
        // A release or fence sent as null is not taken as absent: the
        // write would go through without the release or fence meant.
        (
            raw(r#"{"value": 1, "release": null}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "release",
        ),
        (
            raw(r#"{"value": 1, "fence": null}"#, "/v1/kv/bad/k")
                .await
                .unwrap(),
            "fence",
        ),
    ];
    for (response, field) in cases {
        assert_eq!(response.status().as_u16(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_ARGUMENT", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
    // None of the refused writes applied.
    assert_eq!(api.get("/v1/kv/bad/k").await.code(), "NOT_FOUND");
    let huge = json!({"value": "x".repeat(3 * 1024 * 1024)});
    let oversize = api.put("bad/big", huge).await;
    assert_eq!(
        (oversize.status, oversize.code()),
        (400, "INVALID_ARGUMENT")
    );
    let no_agent = http
        .post(format!("{}/v1/sessions", server.url))
        .json(&json!({"ttl_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_agent.status().as_u16(), 400);
    let body: Value = no_agent.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Baton-Agent")
    );
    let bad_wait = api
        .post(
            "/v1/locks",
            json!({"keys": ["a/b"], "ttl_ms": 1000, "wait_ms": 999_999_999}),
        )
        .await;
    assert_eq!(bad_wait.code(), "INVALID_ARGUMENT");
    let bad_read = api
        .post(
            "/v1/locks",
            json!({"keys": ["a/b"], "ttl_ms": 1000, "read": "yes"}),
        )
        .await;
    assert_eq!(
        (bad_read.status, bad_read.code()),
        (400, "INVALID_ARGUMENT")
    );
    assert!(
        bad_read.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read"),
        "{:?}",
        bad_read.body
    );
    let nowhere = api.get("/v1/nowhere").await;
    assert_eq!((nowhere.status, nowhere.code()), (404, "NOT_FOUND"));
    assert_eq!(
        api.get("/v1/locks/notanumber").await.code(),
        "INVALID_ARGUMENT"
    );
    // An empty name in the path is bad input, as it is in a body.
    for (method, path, body, field) in [
        ("PUT", "/v1/kv/", Some(json!({"value": 1})), "key"),
        ("GET", "/v1/kv/", None, "key"),
        ("GET", "/v1/history/", None, "key"),
        ("GET", "/v1/buckets/", None, "bucket"),
        ("PUT", "/v1/quotas/", Some(json!({"capacity": 1})), "quota"),
        ("GET", "/v1/queue-status/", None, "queue"),
    ] {
        let reply = api.call(method, path, body, None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "INVALID_ARGUMENT"),
            "{method} {path}"
        );
        assert_eq!(
            reply.body["error"]["details"]["field"], field,
            "{method} {path}"
        );
    }
    // A method a path does not take: the envelope, naming the method.
    let wrong = api
        .call("POST", "/v1/kv/bad/k", Some(json!({})), None)
        .await;
    assert_eq!((wrong.status, wrong.code()), (400, "INVALID_ARGUMENT"));
    assert!(
        wrong.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST"),
        "{}",
        wrong.body
    );
    // Nothing of it was applied.
    assert_eq!(
        api.get("/v1/kv?prefix=bad/").await.ok()["entries"],
        json!([])
    );
    assert_eq!(api.get("/v1/status").await.ok()["locks_held"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_write_releases_the_lock_it_was_made_under_and_hands_it_on() {
    let server = TestServer::start().await;
    let alice = server.client("alice");
    let lock = alice
        .post("/v1/locks", json!({"keys": ["r/mutex"], "ttl_ms": 30_000}))
        .await;
    let (lock_id, fence) = (
        lock.ok()["lock_id"].as_u64().unwrap(),
        lock.ok()["fence_token"].as_u64().unwrap(),
    );
    let bob = server.client("bob");
    let waiting = tokio::spawn(async move {
        bob.post(
            "/v1/locks",
            json!({"keys": ["r/mutex"], "ttl_ms": 30_000, "wait_ms": 20_000}),
        )
        .await
    });
    // Bob is queued before alice writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alice.get("/v1/locks?key=r/mutex").await.ok()["waiters"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "bob never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let written = alice
        .put(
            "r/count",
            json!({"value": 1, "fence": {"key": "r/mutex", "token": fence}, "release": lock_id}),
        )
        .await;
    let version = written.ok()["version"].as_u64().unwrap();
    assert_eq!(written.ok()["released_lock_id"], lock_id);
    let granted = waiting.await.unwrap();
    assert_eq!(granted.ok()["status"], "held");
    assert_eq!(
        granted.ok()["fence_token"],
        version,
        "the next holder is granted by the write's own command"
    );
    assert_eq!(
        alice.get(&format!("/v1/locks/{lock_id}")).await.ok()["status"],
        "released"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_state_mutation_takes_a_release() {
    let server = TestServer::start().await;
    let api = server.client("agent");
    api.put("r/doc", json!({"value": {"n": 1}})).await.ok();
    let calls: [(&str, &str, Value); 5] = [
        ("PUT", "/v1/kv/r/doc", json!({"value": {"n": 2}})),
        ("PATCH", "/v1/kv/r/doc", json!({"merge": {"n": 3}})),
        (
            "POST",
            "/v1/txn",
            json!({"success": [{"op": "put", "key": "r/other", "value": 1}]}),
        ),
        (
            "POST",
            "/v1/counters/add",
            json!({"key": "r/n", "delta": 1}),
        ),
        ("DELETE", "/v1/kv/r/doc", json!({})),
    ];
    for (method, path, mut body) in calls {
        let lock = api
            .post("/v1/locks", json!({"keys": ["r/mutex"], "ttl_ms": 30_000}))
            .await;
        let lock_id = lock.ok()["lock_id"].as_u64().unwrap();
        body["release"] = json!(lock_id);
        let reply = api.call(method, path, Some(body), None).await;
        assert_eq!(reply.ok()["released_lock_id"], lock_id, "{method} {path}");
        assert_eq!(
            api.get(&format!("/v1/locks/{lock_id}")).await.ok()["status"],
            "released",
            "{method} {path}"
        );
    }
    // A txn whose compares fail keeps the lock.
    let lock = api
        .post("/v1/locks", json!({"keys": ["r/mutex"], "ttl_ms": 30_000}))
        .await;
    let lock_id = lock.ok()["lock_id"].as_u64().unwrap();
    let failed = api
        .post(
            "/v1/txn",
            json!({"compares": [{"key": "r/doc", "exists": true}], "release": lock_id}),
        )
        .await;
    assert_eq!(failed.ok()["succeeded"], false);
    assert!(failed.ok().get("released_lock_id").is_none());
    assert_eq!(
        api.get(&format!("/v1/locks/{lock_id}")).await.ok()["status"],
        "held"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bad_or_foreign_release_applies_nothing() {
    let server = TestServer::start().await;
    let alice = server.client("alice");
    alice.put("r/count", json!({"value": 5})).await.ok();
    let lock = alice
        .post("/v1/locks", json!({"keys": ["r/mutex"], "ttl_ms": 30_000}))
        .await;
    let lock_id = lock.ok()["lock_id"].as_u64().unwrap();

    for body in [
        json!({"value": 6, "release": "abc"}),
        json!({"value": 6, "release": -1}),
    ] {
        let bad = alice.put("r/count", body).await;
        assert_eq!((bad.status, bad.code()), (400, "INVALID_ARGUMENT"));
        assert_eq!(
            bad.body["error"]["details"]["field"], "release",
            "{}",
            bad.body
        );
        assert!(
            bad.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("release"),
            "{}",
            bad.body
        );
    }
    let bad_counter = alice
        .post(
            "/v1/counters/add",
            json!({"key": "r/n", "delta": 1, "release": "abc"}),
        )
        .await;
    assert_eq!(bad_counter.body["error"]["details"]["field"], "release");
    let not_for_quotas = alice
        .call(
            "PUT",
            "/v1/quotas/r/q",
            Some(json!({"capacity": 1, "release": lock_id})),
            None,
        )
        .await;
    assert_eq!(not_for_quotas.status, 400);

    let bob = server.client("bob");
    let foreign = bob
        .put("r/count", json!({"value": 6, "release": lock_id}))
        .await;
    assert_eq!((foreign.status, foreign.code()), (403, "PERMISSION_DENIED"));
    let unknown = alice
        .put("r/count", json!({"value": 6, "release": 999_999}))
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "NOT_FOUND"));

    // Nothing applied: the value, its version and alice's lock are as they were.
    let got = alice.get("/v1/kv/r/count").await;
    assert_eq!(got.ok()["value"], 5);
    assert_eq!(
        alice.get(&format!("/v1/locks/{lock_id}")).await.ok()["status"],
        "held"
    );
    assert!(alice.get("/v1/kv/r/n").await.code() == "NOT_FOUND");
    server.stop().await;
}

/// Read SSE events (id, event, data) from a streaming response until `count` arrive.
async fn read_sse(response: reqwest::Response, count: usize) -> Vec<(String, String, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line
                    .strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
                {
                    id = v.to_string();
                } else if let Some(v) = line
                    .strip_prefix("event: ")
                    .or_else(|| line.strip_prefix("event:"))
                {
                    kind = v.to_string();
                } else if let Some(v) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data.push_str(v);
                }
            }
            if !data.is_empty() {
                events.push((id, kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn watch_streams_resumes_and_answers_compacted() {
    let tempdir = tempfile::tempdir().unwrap();
    let config = baton_server::ServeConfig {
        event_buffer: 8,
        ..config(tempdir.path())
    };
    let server = TestServer::start_in(tempdir.path(), config).await;
    let api = server.client("watcher");
    let http = reqwest::Client::new();
    let live = http
        .get(format!("{}/v1/watch?prefix=w/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    api.put("w/a", json!({"value": 1})).await.ok();
    api.put("other/x", json!({"value": 1})).await.ok();
    api.put("w/b", json!({"value": 2})).await.ok();
    let seen = read_sse(live, 2).await;
    assert_eq!(
        seen.iter()
            .map(|(_, _, e)| e["keys"][0].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["w/a", "w/b"]
    );
    assert_eq!(seen[0].1, "baton");

    // Resume after the first event with Last-Event-ID: only the second comes.
    let resumed = http
        .get(format!("{}/v1/watch?prefix=w/", server.url))
        .header("Last-Event-ID", &seen[0].0)
        .send()
        .await
        .unwrap();
    api.put("w/c", json!({"value": 3})).await.ok();
    let after = read_sse(resumed, 2).await;
    assert_eq!(after[0].2["keys"][0], "w/b");
    assert_eq!(after[1].2["keys"][0], "w/c");

    // Push revision 1 out of the 8-event buffer: asking for it is COMPACTED (410).
    for i in 0..10 {
        api.put(&format!("fill/{i}"), json!({"value": i}))
            .await
            .ok();
    }
    let gone = http
        .get(format!("{}/v1/watch?from_revision=1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 410);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "COMPACTED");
    assert_eq!(api.get("/v1/events?from_revision=1").await.status, 410);
    server.stop().await;
}

/// Large values: the ring keeps what fits in `event_buffer_bytes`, says so in
/// `/v1/status`, answers COMPACTED for what it let go, and still hands every
/// kept event back as written.
#[tokio::test]
async fn large_events_are_kept_within_the_byte_budget() {
    let tempdir = tempfile::tempdir().unwrap();
    let config = baton_server::ServeConfig {
        event_buffer_bytes: 64 * 1024,
        ..config(tempdir.path())
    };
    let server = TestServer::start_in(tempdir.path(), config).await;
    let api = server.client("writer");
    let big = "x".repeat(16 * 1024);
    let mut last_revision = 0;
    for i in 0..20 {
        let written = api
            .put("docs/report", json!({"value": {"n": i, "text": big}}))
            .await;
        last_revision = written.ok()["version"].as_u64().unwrap();
    }
    let status = api.get("/v1/status").await;
    let kept = status.ok()["events_kept"].clone();
    assert!(kept["bytes"].as_u64().unwrap() <= 64 * 1024, "{kept}");
    assert_eq!(
        kept["events"], 3,
        "three events of ~16 KB fit in 64 KB: {kept}"
    );
    let from = kept["from_revision"].as_u64().unwrap();
    assert_eq!(status.ok()["events_from_revision"], from);

    let gone = api
        .get(&format!("/v1/events?from_revision={}", from - 1))
        .await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.code(), "COMPACTED");
    let page = api.get(&format!("/v1/events?from_revision={from}")).await;
    let events = page.ok()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 3);
    let newest = events.last().unwrap();
    assert_eq!(newest["revision"], last_revision);
    assert_eq!(newest["value"]["n"], 19);
    assert_eq!(newest["value"]["text"].as_str().unwrap().len(), big.len());
    server.stop().await;
}

/// `/v1/events` without `from_revision` reads from the oldest kept event,
/// as the MCP tool and the COMPACTED hint promise: after a restart the ring
/// starts past the snapshot, and a default of revision 1 answered COMPACTED
/// forever. `limit=0` is refused like everywhere else.
#[tokio::test]
async fn events_without_a_start_read_from_the_oldest_kept_even_after_a_restart() {
    let tempdir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(tempdir.path(), config(tempdir.path())).await;
    let api = server.client("writer");
    api.put("e/a", json!({"value": 1})).await.ok();
    server.stop().await; // snapshots: the ring restarts after revision 1

    let server = TestServer::start_in(tempdir.path(), config(tempdir.path())).await;
    let api = server.client("writer");
    let written = api.put("e/b", json!({"value": 2})).await;
    let revision = written.ok()["version"].as_u64().unwrap();
    let page = api.get("/v1/events").await;
    let events = page.ok()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["revision"], revision);
    assert_eq!(page.ok()["next_revision"], revision + 1);
    assert_eq!(
        api.get("/v1/events?from_revision=1").await.code(),
        "COMPACTED",
        "revision 1 went into the snapshot"
    );

    let zero = api.get("/v1/events?limit=0").await;
    assert_eq!((zero.status, zero.code()), (400, "INVALID_ARGUMENT"));
    assert!(
        zero.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    server.stop().await;
}

/// Paging `/v1/events` while others write returns every event exactly once.
/// The page's `next_revision` comes from the event ring itself: the writer
/// applies a command before it files its events, and a reader that took the
/// state's revision as how far the ring goes skipped the events filed after.
#[tokio::test]
async fn paging_events_during_writes_misses_nothing() {
    const WRITERS: usize = 4;
    const PUTS: usize = 150;
    let server = TestServer::start().await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let api = server.client(&format!("writer-{w}"));
            tokio::spawn(async move {
                let mut revisions = Vec::with_capacity(PUTS);
                for i in 0..PUTS {
                    let written = api.put(&format!("p/{w}/{i}"), json!({"value": i})).await;
                    revisions.push(written.ok()["version"].as_u64().unwrap());
                    // Other writes between, whose events the prefix skips.
                    api.put(&format!("q/{w}"), json!({"value": i})).await.ok();
                }
                revisions
            })
        })
        .collect();
    let reader = server.client("reader");
    let mut seen = Vec::new();
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < WRITERS * PUTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "paged {} events",
            seen.len()
        );
        let page = reader
            .get(&format!(
                "/v1/events?prefix=p/&from_revision={next}&limit=7"
            ))
            .await;
        for event in page.ok()["events"].as_array().unwrap() {
            seen.push(event["revision"].as_u64().unwrap());
        }
        next = page.ok()["next_revision"].as_u64().unwrap();
    }
    let mut written: Vec<u64> = join_all_within(writers, Duration::from_secs(60))
        .await
        .into_iter()
        .flatten()
        .collect();
    written.sort_unstable();
    assert_eq!(seen, written, "every put's event, once, in order");
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_cut_off_with_a_final_event() {
    let tempdir = tempfile::tempdir().unwrap();
    let config = baton_server::ServeConfig {
        watcher_lag: 4,
        ..config(tempdir.path())
    };
    let server = TestServer::start_in(tempdir.path(), config).await;
    let api = server.client("writer");
    let http = reqwest::Client::new();
    let slow = http
        .get(format!("{}/v1/watch", server.url))
        .send()
        .await
        .unwrap();
    // Write far more than the socket buffers hold while the watcher reads
    // nothing: the server can no longer hand it events and it falls behind.
    let big = "x".repeat(64 * 1024);
    for i in 0..400 {
        api.put(&format!("lag/{i}"), json!({"value": big}))
            .await
            .ok();
    }
    let mut stream = slow.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(next) = next else {
            panic!("stream did not end in time; got {} bytes", text.len())
        };
        match next {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => break,
        }
    }
    let tail = &text[text.len().saturating_sub(600)..];
    assert!(
        tail.contains("event: cut_off"),
        "the stream must end with cut_off: {tail}"
    );
    assert!(tail.contains("fell"), "{tail}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_health_and_openapi() {
    let server = TestServer::start().await;
    let api = server.client("agent");
    api.put("m/k", json!({"value": 1})).await.ok();
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "baton_http_requests_total",
        "baton_batch_size",
        "baton_log_append_seconds",
        "baton_locks_held",
        "baton_sessions",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // The request counter's labels (static strings on the hot path) name
    // the route, the method and the status.
    let put_counted = metrics.lines().any(|line| {
        line.starts_with("baton_http_requests_total{")
            && line.contains(r#"route="/v1/kv/{*key}""#)
            && line.contains(r#"method="PUT""#)
            && line.contains(r#"status="200""#)
    });
    assert!(put_counted, "no PUT 200 count for /v1/kv in\n{metrics}");
    assert_eq!(api.get("/healthz").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    let openapi: Value = http
        .get(format!("{}/v1/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Derived from the handlers and their types: every route, with schemas.
    for path in [
        "/v1/locks",
        "/v1/kv/{key}",
        "/v1/txn",
        "/v1/watch",
        "/v1/sessions/{id}/keepalive",
    ] {
        assert!(openapi["paths"][path].is_object(), "missing {path}");
    }
    let acquire = &openapi["paths"]["/v1/locks"]["post"];
    assert!(
        acquire["requestBody"].to_string().contains("AcquireBody"),
        "{acquire}"
    );
    for schema in ["AcquireBody", "LockInfo", "ErrorCode", "Event", "TxnOp"] {
        assert!(
            openapi["components"]["schemas"][schema].is_object(),
            "missing schema {schema}"
        );
    }
    // Every state mutation's body documents `release`.
    for body in [
        "PutBody",
        "PatchBody",
        "DeleteBody",
        "TxnBody",
        "CounterBody",
    ] {
        let release = &openapi["components"]["schemas"][body]["properties"]["release"];
        assert!(release.is_object(), "{body} has no release: {release}");
    }
    server.stop().await;
}
