//! Quotas and shared rate limits over real concurrent HTTP clients.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

const AGENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_agents_reserving_never_exceed_the_capacity() {
    let server = TestServer::start().await;
    let admin = server.client("admin");
    admin
        .call(
            "PUT",
            "/v1/quotas/spend/run-1",
            Some(json!({"capacity": 100})),
            None,
        )
        .await
        .ok();
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        let api = server.client(&format!("sub-{agent}"));
        tasks.push(tokio::spawn(async move {
            let mut committed = 0u64;
            for round in 0..6u64 {
                let amount = 1 + (agent as u64 * 7 + round * 3) % 9;
                let reply = api
                    .post(
                        "/v1/reservations",
                        json!({"quota": "spend/run-1", "amount": amount, "ttl_ms": 60_000}),
                    )
                    .await;
                if reply.body["ok"] != true {
                    assert_eq!(reply.code(), "QUOTA_EXCEEDED");
                    continue;
                }
                let id = reply.ok()["reservation_id"].as_u64().unwrap();
                let actual = amount / 2 + 1;
                let settled = api
                    .post(
                        &format!("/v1/reservations/{id}/commit"),
                        json!({"actual": actual.min(amount)}),
                    )
                    .await;
                committed += settled.ok()["committed"].as_u64().unwrap();
            }
            committed
        }));
    }
    let mut committed = 0;
    committed += join_all_within(tasks, Duration::from_secs(120))
        .await
        .into_iter()
        .sum::<u64>();
    let quota = admin.get("/v1/quotas/spend/run-1").await.ok().clone();
    assert_eq!(quota["used"], committed, "every commit counted once");
    assert!(
        committed <= 100,
        "committed {committed} beyond the capacity"
    );
    assert_eq!(quota["reserved"], 0);
    assert!(
        committed >= 90,
        "the quota should have been used nearly fully, got {committed}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_agents_on_one_bucket_get_at_most_rate_times_time_plus_burst() {
    let server = TestServer::start().await;
    let (rate, burst, seconds) = (50u64, 10u64, 3u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        let api = server.client(&format!("caller-{agent}"));
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            let mut refused = 0u64;
            let deadline = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < deadline {
                let reply = api
                    .post(
                        "/v1/rate/take",
                        json!({"bucket": "api/llm", "rate_per_sec": rate, "burst": burst}),
                    )
                    .await;
                if reply.body["ok"] == true {
                    granted += 1;
                } else {
                    assert_eq!(reply.code(), "RATE_LIMITED");
                    let wait = reply.body["error"]["retry_after_ms"].as_u64().unwrap();
                    assert!(
                        wait >= 1 && wait <= 1000 / rate + 1,
                        "retry_after_ms {wait}"
                    );
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
            (granted, refused)
        }));
    }
    let (mut granted, mut refused) = (0, 0);
    for (g, r) in join_all_within(tasks, Duration::from_secs(60)).await {
        granted += g;
        refused += r;
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let bound = burst + rate * elapsed_ms / 1000 + 1;
    assert!(granted <= bound, "granted {granted} > {bound}");
    assert!(refused > 0, "32 agents must have been throttled");
    let api = server.client("observer");
    let bucket = api.get("/v1/buckets/api/llm").await.ok().clone();
    let accounted: u64 = bucket["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        accounted, granted,
        "usage accounts every granted token to its agent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_agents_on_a_stale_token_trigger_exactly_one_refresh() {
    let server = TestServer::start().await;
    let refreshes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        let api = server.client(&format!("agent-{agent}"));
        let refreshes = refreshes.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"key": "cred/api-token", "max_age_ms": 600_000, "claim_ttl_ms": 10_000, "wait_ms": 20_000});
            let reply = api.post("/v1/once", body).await;
            let result = reply.ok().clone();
            match result["status"].as_str().unwrap() {
                "claimed" => {
                    // The refresh itself: slow enough that everyone else is queued.
                    refreshes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let fulfil = json!({"key": "cred/api-token", "claim_id": result["claim_id"], "value": format!("token-from-{agent}")});
                    api.post("/v1/once/fulfil", fulfil).await.ok()["value"].as_str().unwrap().to_string()
                }
                "fresh" => result["value"].as_str().unwrap().to_string(),
                other => panic!("unexpected once status {other}: {result}"),
            }
        }));
    }
    let mut tokens = Vec::new();
    tokens.extend(join_all_within(tasks, Duration::from_secs(60)).await);
    assert_eq!(
        refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "exactly one refresh"
    );
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "everyone got the one refreshed token: {tokens:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_workers_drain_a_queue_with_every_item_acked_exactly_once() {
    let server = TestServer::start().await;
    let producer = server.client("producer");
    const ITEMS: u64 = 200;
    for i in 0..ITEMS {
        let reply = producer
            .call(
                "POST",
                "/v1/queues/enqueue",
                Some(json!({"queue": "jobs/q", "item": {"n": i}})),
                Some(&format!("enq-{i}")),
            )
            .await;
        reply.ok();
    }
    // A retried enqueue with the same idempotency key adds nothing.
    producer
        .call(
            "POST",
            "/v1/queues/enqueue",
            Some(json!({"queue": "jobs/q", "item": {"n": 0}})),
            Some("enq-0"),
        )
        .await
        .ok();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let api = server.client(&format!("worker-{worker}"));
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let claimed = api.post("/v1/queues/claim", json!({"queue": "jobs/q", "visibility_ms": 30_000})).await;
                let item = claimed.ok().clone();
                if item["empty"] == true {
                    break;
                }
                let ack = json!({"queue": "jobs/q", "item_id": item["item_id"], "claim_token": item["claim_token"]});
                assert_eq!(api.post("/v1/queues/ack", ack).await.ok()["outcome"], "acked");
                done.push(item["item"]["n"].as_u64().unwrap());
            }
            done
        }));
    }
    let mut all = Vec::new();
    all.extend(
        join_all_within(tasks, Duration::from_secs(60))
            .await
            .into_iter()
            .flatten(),
    );
    all.sort_unstable();
    assert_eq!(
        all,
        (0..ITEMS).collect::<Vec<_>>(),
        "each item exactly once"
    );
    let status = producer.get("/v1/queue-status/jobs/q").await.ok().clone();
    assert_eq!(
        (status["ready"].as_u64(), status["in_flight"].as_u64()),
        (Some(0), Some(0))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semaphore_never_admits_more_than_its_capacity() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = TestServer::start().await;
    let inside = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for agent in 0..16 {
        let api = server.client(&format!("gpu-user-{agent}"));
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let body = json!({"key": "gpu/pool", "permits": 1, "capacity": 3, "ttl_ms": 30_000, "wait_ms": 60_000});
                let lock = api.post("/v1/semaphores", body).await.ok().clone();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                api.delete(&format!("/v1/locks/{}", lock["lock_id"])).await.ok();
            }
        }));
    }
    join_all_within(tasks, Duration::from_secs(120)).await;
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders at once with 3 permits");
    assert!(
        most >= 2,
        "16 clients should have shared the 3 permits, saw at most {most}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_takes_queue_fairly_instead_of_failing() {
    let server = TestServer::start().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for agent in 0..8 {
        let api = server.client(&format!("waiter-{agent}"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                let body = json!({"bucket": "api/slow", "rate_per_sec": 20, "burst": 1, "wait_ms": 20_000});
                assert_eq!(api.post("/v1/rate/take", body).await.ok()["taken"], 1);
            }
        }));
    }
    join_all_within(tasks, Duration::from_secs(60)).await;
    // 16 tokens at 20/s with a burst of 1 cannot all be had in under 750 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(740),
        "{:?}",
        started.elapsed()
    );
    let bucket = server
        .client("observer")
        .get("/v1/buckets/api/slow")
        .await
        .ok()
        .clone();
    assert_eq!(
        bucket["usage"].as_array().unwrap().len(),
        8,
        "every agent was served"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_new_primitives_take_a_fence_like_every_write() {
    let server = TestServer::start().await;
    let api = server.client("fenced");
    let stale = json!({"key": "guard/k", "token": 12345});
    let take = api
        .post(
            "/v1/rate/take",
            json!({"bucket": "api/f", "rate_per_sec": 1, "burst": 1, "fence": stale}),
        )
        .await;
    assert_eq!((take.status, take.code()), (409, "FENCED"));
    let enqueue = api
        .post(
            "/v1/queues/enqueue",
            json!({"queue": "jobs/f", "item": 1, "fence": stale}),
        )
        .await;
    assert_eq!(enqueue.code(), "FENCED");
    let once = api
        .post(
            "/v1/once",
            json!({"key": "cred/f", "max_age_ms": 1000, "claim_ttl_ms": 1000, "fence": stale}),
        )
        .await;
    assert_eq!(once.code(), "FENCED");
    assert_eq!(
        api.get("/v1/queue-status/jobs/f").await.ok()["ready"],
        0,
        "nothing applied"
    );
    assert_eq!(
        api.get("/v1/buckets/api/f").await.status,
        404,
        "nothing applied"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_ack_with_a_delay_is_refused_and_leaves_the_item_claimed() {
    let server = TestServer::start().await;
    let api = server.client("worker");
    api.post("/v1/queues/enqueue", json!({"queue": "jobs/d", "item": 1}))
        .await
        .ok();
    let item = api
        .post(
            "/v1/queues/claim",
            json!({"queue": "jobs/d", "visibility_ms": 30_000}),
        )
        .await
        .ok()
        .clone();
    let settle = |extra: Value| {
        let mut body = json!({"queue": "jobs/d", "item_id": item["item_id"], "claim_token": item["claim_token"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // A delay belongs to a nack; an ack that carries one was meant as
    // something else, so nothing is applied.
    let refused = api
        .post("/v1/queues/ack", settle(json!({"delay_ms": 5_000})))
        .await;
    assert_eq!((refused.status, refused.code()), (400, "INVALID_ARGUMENT"));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("delay_ms"), "{message}");
    let status = api.get("/v1/queue-status/jobs/d").await.ok().clone();
    assert_eq!(
        (status["ready"].as_u64(), status["in_flight"].as_u64()),
        (Some(0), Some(1)),
        "still claimed: {status}"
    );
    let nacked = api
        .post("/v1/queues/nack", settle(json!({"delay_ms": 5_000})))
        .await;
    assert_eq!(nacked.ok()["outcome"], "delayed");
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_store_refuses_an_enqueue_with_429_and_shows_in_status() {
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let mut limited = config(dir);
    limited.limits.max_queue_bytes = 250;
    let server = TestServer::start_in(dir, limited).await;
    let api = server.client("producer");
    let item = json!("x".repeat(98)); // 100 bytes
    for _ in 0..2 {
        api.post(
            "/v1/queues/enqueue",
            json!({"queue": "jobs/full", "item": item}),
        )
        .await
        .ok();
    }
    let refused = api
        .post(
            "/v1/queues/enqueue",
            json!({"queue": "jobs/full", "item": item}),
        )
        .await;
    assert_eq!((refused.status, refused.code()), (429, "QUOTA_EXCEEDED"));
    assert!(refused.body["error"]["retry_after_ms"].as_u64().is_some());
    assert_eq!(
        api.get("/v1/queue-status/jobs/full").await.ok()["ready"],
        2,
        "nothing applied"
    );
    assert_eq!(api.get("/v1/status").await.ok()["queue_bytes"], 200);
    server.stop().await;
}
