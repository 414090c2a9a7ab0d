//! Unit tests: request building, envelope decoding, and the client against
//! tiny canned HTTP servers (the real server is tested from the CLI's tests).

use super::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[test]
fn keys_are_encoded_with_their_slashes_kept() {
    assert_eq!(encode_key("config/app"), "config/app");
    assert_eq!(encode_key("app/a b?c#d%"), "app/a%20b%3Fc%23d%25");
    assert_eq!(encode_key("app/é"), "app/%C3%A9");
    assert_eq!(
        ApiRequest::kv_get("app/x y").path_and_query(),
        "/v1/kv/app/x%20y"
    );
}

#[test]
fn queries_are_encoded_and_empty_prefixes_left_out() {
    assert_eq!(
        ApiRequest::kv_list("app/", Some("app/b&c"), Some(10)).path_and_query(),
        "/v1/kv?prefix=app%2F&after=app%2Fb%26c&limit=10"
    );
    assert_eq!(
        ApiRequest::kv_list("", None, None).path_and_query(),
        "/v1/kv"
    );
    assert_eq!(
        ApiRequest::fence_check("inv/sku-1", 42).path_and_query(),
        "/v1/fence?key=inv%2Fsku-1&token=42"
    );
    assert_eq!(
        ApiRequest::events("", Some(7), Some(100)).path_and_query(),
        "/v1/events?from_revision=7&limit=100"
    );
    assert_eq!(
        ApiRequest::raw(Method::GET, "/v1/locks?key=a%2Fb", None).path_and_query(),
        "/v1/locks?key=a%2Fb"
    );
}

#[test]
fn bodies_follow_the_contract() {
    let lock = ApiRequest::lock_acquire(
        &LockRequest::shared(["a/1", "a/2"])
            .ttl_ms(30_000)
            .wait_ms(5_000),
    );
    assert_eq!(lock.method, Method::POST);
    assert_eq!(lock.path, "/v1/locks");
    assert_eq!(lock.wait_ms, 5_000);
    assert_eq!(
        lock.body,
        Some(json!({"keys": ["a/1", "a/2"], "mode": "shared", "ttl_ms": 30000, "wait_ms": 5000}))
    );
    assert_eq!(
        ApiRequest::lock_acquire(&LockRequest::exclusive(["a/1"]).read()).body,
        Some(json!({"keys": ["a/1"], "mode": "exclusive", "read": true}))
    );
    let put = ApiRequest::kv_put(
        "config/app",
        &json!({"region": "us"}),
        PutOptions {
            if_version: Some(4),
            if_absent: false,
            ttl_ms: None,
        },
    );
    assert_eq!(put.method, Method::PUT);
    assert_eq!(
        put.body,
        Some(json!({"value": {"region": "us"}, "if_version": 4}))
    );
    let patch = ApiRequest::kv_patch("c/a", &PatchRequest::JsonPatch(json!([])), None);
    assert_eq!(patch.body, Some(json!({"json_patch": []})));
    assert_eq!(ApiRequest::kv_delete("c/a", None).body, None);
    assert_eq!(
        ApiRequest::counter_add("q/slots", -1, Some(0), None).body,
        Some(json!({"key": "q/slots", "delta": -1, "min": 0}))
    );
    assert_eq!(
        ApiRequest::session_kill(9, Some("stuck")).path,
        "/v1/sessions/9/kill"
    );
}

#[test]
fn base_urls_are_checked() {
    assert_eq!(
        Client::new("127.0.0.1:7700", "a").unwrap().url(),
        "http://127.0.0.1:7700"
    );
    assert_eq!(Client::new("http://h:1/", "a").unwrap().url(), "http://h:1");
    for bad in [
        "https://h:1",
        "http://h:1/?x=1",
        "::nope",
        "http://h:1/baton",
    ] {
        let error = Client::new(bad, "a").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{bad}");
        assert!(error.message.starts_with("url: "), "{}", error.message);
    }
    assert_eq!(
        Client::new(DEFAULT_URL, "").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn envelopes_decode_to_results_and_verbatim_errors() {
    let ok = decode_envelope(200, br#"{"ok":true,"result":{"a":1}}"#, "u");
    assert_eq!(ok, Ok(json!({"a": 1})));
    let error = decode_envelope(
        409,
        br#"{"ok":false,"error":{"code":"FENCED","message":"stale","retry_after_ms":5,"details":{"x":1}}}"#,
        "u",
    )
    .unwrap_err();
    assert_eq!(
        error,
        Error::new(ErrorCode::Fenced, "stale")
            .with_retry_after(5)
            .with_details(json!({"x": 1}))
    );
    let proxy = decode_envelope(502, b"<html>bad gateway</html>", "http://h").unwrap_err();
    assert_eq!(proxy.code, ErrorCode::Unavailable);
    assert!(proxy.message.contains("http://h answered HTTP 502"));
    let future = decode_envelope(
        418,
        br#"{"ok":false,"error":{"code":"NEW_CODE","message":"m"}}"#,
        "u",
    )
    .unwrap_err();
    assert_eq!(future.code, ErrorCode::Internal);
    assert_eq!(
        future.details,
        Some(json!({"code": "NEW_CODE", "message": "m"}))
    );
}

#[test]
fn cut_off_uses_the_servers_error_when_it_sends_one() {
    let own = cut_off_error(r#"{"code":"RATE_LIMITED","message":"slow"}"#, "h");
    assert_eq!(own.code, ErrorCode::RateLimited);
    let plain = cut_off_error(
        "too slow",
        "watch again with from_revision 8 to miss nothing",
    );
    assert_eq!(plain.code, ErrorCode::Unavailable);
    assert!(plain.message.contains("from_revision 8"));
}

/// A stream that breaks inside a revision (a release and the grant it made
/// share one) must not be resumed after it: the hint names the last event's
/// own revision, so the rest of it is not skipped.
#[test]
fn a_broken_watch_resumes_at_the_last_events_revision() {
    let mut state = WatchState {
        bytes: futures_util::stream::empty::<Result<bytes::Bytes, transport::Failure>>(),
        parser: sse::SseParser::new(),
        ready: std::collections::VecDeque::new(),
        url: "http://h".into(),
        resume_revision: Some(5),
        resume_repeats: false,
        done: false,
    };
    assert_eq!(
        state.resume_hint(),
        "watch again with from_revision 5 to miss nothing"
    );
    let event = json!({
        "revision": 7, "time": 1, "agent": "a", "kind": "lock_released",
        "keys": ["k/a"], "outcome": "ok"
    });
    let message = sse::SseMessage {
        event: "baton".into(),
        id: Some("7.0".into()),
        data: event.to_string(),
    };
    assert_eq!(state.item(message).unwrap().unwrap().revision, 7);
    assert!(
        state
            .resume_hint()
            .starts_with("watch again with from_revision 7 "),
        "{}",
        state.resume_hint()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_named() {
    // Bind then drop: nothing listens on this port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::new(&url, "tester").unwrap();
    let error = client.kv_get("app/x").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(error.message.contains(&url), "{}", error.message);
    assert!(error.message.contains("baton serve"), "{}", error.message);
    assert_eq!(error.details, Some(json!({"url": url})));
}

#[tokio::test]
async fn dot_segments_in_keys_are_refused_before_sending() {
    let client = Client::new("http://127.0.0.1:9", "tester").unwrap();
    let error = client.kv_get("app/../etc").await.unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
}

/// Serves one canned HTTP response to the first connection and hands back
/// the request it read (head and body).
async fn serve_once(response: String) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let request = read_request(&mut socket, &mut Vec::new())
            .await
            .unwrap_or_default();
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        request
    });
    (url, task)
}

/// Reads one request (head, then as many body bytes as Content-Length
/// says) from `socket`; bytes already read past it stay in `pending`.
/// `None` once the client has closed the connection.
async fn read_request(socket: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(pending).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                let request: Vec<u8> = pending.drain(..end + 4 + length).collect();
                return Some(String::from_utf8_lossy(&request).to_string());
            }
        }
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// What the keep-alive test server does after one answer.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    KeepOpen,
    Close,
}

/// A server that answers any number of requests per connection, as `answer`
/// says for the n-th request of the server (from 0), and counts connections.
struct KeepAliveServer {
    url: String,
    accepted: Arc<AtomicUsize>,
    /// How many connections the server has closed.
    closed: tokio::sync::watch::Receiver<usize>,
    hang_up: Arc<tokio::sync::Notify>,
}

impl KeepAliveServer {
    /// Closes every connection that is waiting for its next request.
    fn hang_up(&self) {
        self.hang_up.notify_waiters();
    }

    /// Waits (at most 5 s) until the server has closed `count` connections.
    async fn closed(&mut self, count: usize) {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.closed.wait_for(|c| *c >= count),
        )
        .await
        .expect("the server did not close the connection within 5 s")
        .unwrap();
    }
}

async fn keep_alive_server<F>(answer: F) -> KeepAliveServer
where
    F: Fn(usize, &str) -> (String, Then) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counter = accepted.clone();
    let (closed_tx, closed) = tokio::sync::watch::channel(0);
    let closed_tx = Arc::new(closed_tx);
    let hang_up = Arc::new(tokio::sync::Notify::new());
    let hung_up = hang_up.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (answer, served, closed_tx) = (answer.clone(), served.clone(), closed_tx.clone());
            let hung_up = hung_up.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let request = tokio::select! {
                        request = read_request(&mut socket, &mut pending) => request,
                        () = hung_up.notified() => None,
                    };
                    let Some(request) = request else { break };
                    let (response, then) = answer(served.fetch_add(1, Ordering::SeqCst), &request);
                    if socket.write_all(response.as_bytes()).await.is_err() || then == Then::Close {
                        break;
                    }
                }
                drop(socket);
                closed_tx.send_modify(|c| *c += 1);
            });
        }
    });
    KeepAliveServer {
        url,
        accepted,
        closed,
        hang_up,
    }
}

/// A keep-alive 200 answer whose result is `result`.
fn keep_alive_ok(result: Value) -> String {
    let body = json!({"ok": true, "result": result}).to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn request_line(request: &str) -> String {
    request.lines().next().unwrap_or_default().to_string()
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn mutations_carry_agent_session_idempotency_key_and_fence() {
    let (url, server) = serve_once(http_response(
        "200 OK",
        "application/json",
        r#"{"ok":true,"result":{"key":"c/a","version":9}}"#,
    ))
    .await;
    let client = Client::new(&url, "bot-1")
        .unwrap()
        .with_session(12)
        .with_idempotency_key("k-1")
        .with_fence("c/a", 77);
    let written = client
        .kv_put("c/a", &json!(1), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(written.version, 9);
    let request = server.await.unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(request.starts_with("PUT /v1/kv/c/a HTTP/1.1"), "{request}");
    assert!(lower.contains("baton-agent: bot-1"), "{request}");
    assert!(lower.contains("baton-session: 12"), "{request}");
    assert!(lower.contains("idempotency-key: k-1"), "{request}");
    let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"value": 1, "fence": {"key": "c/a", "token": 77}})
    );
}

#[tokio::test]
async fn watch_streams_events_and_ends_with_the_cut_off_error() {
    let event = |revision: u64| json!({"revision": revision, "time": 1, "agent": "a", "kind": "put", "keys": ["app/x"], "outcome": "ok"});
    let sse = format!(
        ": hello\n\nevent: baton\nid: 5.0\ndata: {}\n\nevent: baton\nid: 6.0\ndata: {}\n\nevent: cut_off\ndata: behind\n\n",
        event(5),
        event(6)
    );
    let (url, server) = serve_once(http_response("200 OK", "text/event-stream", &sse)).await;
    let client = Client::new(&url, "watcher").unwrap();
    let stream = client.watch("app/", Some(5)).await.unwrap();
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().revision, 5);
    assert_eq!(items[1].as_ref().unwrap().revision, 6);
    let error = items[2].as_ref().unwrap_err();
    assert!(
        error.message.contains("from_revision 6 "),
        "{}",
        error.message
    );
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /v1/watch?prefix=app%2F&from_revision=5 HTTP/1.1"),
        "{request}"
    );
}

#[tokio::test]
async fn a_watch_refused_before_streaming_is_the_calls_error() {
    let (url, _server) = serve_once(http_response(
        "410 Gone",
        "application/json",
        r#"{"ok":false,"error":{"code":"COMPACTED","message":"revision 3 is gone; the oldest kept is 10"}}"#,
    ))
    .await;
    let client = Client::new(&url, "watcher").unwrap();
    let Err(error) = client.watch("", Some(3)).await else {
        panic!("a compacted watch must fail");
    };
    assert_eq!(error.code, ErrorCode::Compacted);
}

#[tokio::test]
async fn a_watch_stream_that_just_ends_says_so() {
    let (url, _server) = serve_once(http_response("200 OK", "text/event-stream", "")).await;
    let client = Client::new(&url, "watcher").unwrap();
    let items: Vec<_> = client.watch("", None).await.unwrap().collect().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().code, ErrorCode::Unavailable);
}

#[test]
fn quota_rate_and_once_bodies_follow_the_contract() {
    let set = ApiRequest::quota_set("gpu/hours", 20, true);
    assert_eq!(
        (set.method.clone(), set.path.as_str()),
        (Method::PUT, "/v1/quotas/gpu/hours")
    );
    assert_eq!(set.body, Some(json!({"capacity": 20, "reset_used": true})));
    assert_eq!(
        ApiRequest::quota_set("gpu/hours", 20, false).body,
        Some(json!({"capacity": 20}))
    );
    assert_eq!(
        ApiRequest::quota_get("gpu/a b").path,
        "/v1/quotas/gpu/a%20b"
    );
    assert_eq!(
        ApiRequest::quota_reserve("gpu/hours", 3, 300_000).body,
        Some(json!({"quota": "gpu/hours", "amount": 3, "ttl_ms": 300000}))
    );
    let commit = ApiRequest::quota_commit(42, 2);
    assert_eq!(commit.path, "/v1/reservations/42/commit");
    assert_eq!(commit.body, Some(json!({"actual": 2})));
    let release = ApiRequest::quota_release(42);
    assert_eq!((release.method, release.body), (Method::DELETE, None));

    let take = ApiRequest::rate_take(&RateRequest::new("api/openai", 50, 10).tokens(3));
    assert_eq!(take.path, "/v1/rate/take");
    assert_eq!(
        take.body,
        Some(json!({"bucket": "api/openai", "tokens": 3, "rate_per_sec": 50, "burst": 10}))
    );
    let waiting = ApiRequest::rate_take(&RateRequest::new("api/openai", 50, 10).wait_ms(2_000));
    assert_eq!(
        waiting.wait_ms, 2_000,
        "the client's timeout covers the wait"
    );
    assert_eq!(waiting.body.unwrap()["wait_ms"], 2_000);
    assert_eq!(
        ApiRequest::bucket("api/openai").path,
        "/v1/buckets/api/openai"
    );

    let once = ApiRequest::once(&OnceRequest::new("cred/token", 600_000, 30_000).wait_ms(20_000));
    assert_eq!(once.wait_ms, 20_000, "the client's timeout covers the wait");
    assert_eq!(
        once.body,
        Some(
            json!({"key": "cred/token", "max_age_ms": 600000, "claim_ttl_ms": 30000, "wait_ms": 20000})
        )
    );
    assert_eq!(
        ApiRequest::once(&OnceRequest::new("cred/token", 1, 2)).body,
        Some(json!({"key": "cred/token", "max_age_ms": 1, "claim_ttl_ms": 2}))
    );
    assert_eq!(
        ApiRequest::once_fulfil("cred/token", 7, &json!("tok")).body,
        Some(json!({"key": "cred/token", "claim_id": 7, "value": "tok"}))
    );
    assert_eq!(
        ApiRequest::once_abandon("cred/token", 7).body,
        Some(json!({"key": "cred/token", "claim_id": 7}))
    );
}

#[test]
fn queue_bodies_follow_the_contract() {
    assert_eq!(
        ApiRequest::queue_enqueue("jobs/mail", &json!({"to": "a"}), Some(3)).body,
        Some(json!({"queue": "jobs/mail", "item": {"to": "a"}, "max_attempts": 3}))
    );
    assert_eq!(
        ApiRequest::queue_enqueue("jobs/mail", &json!(1), None).body,
        Some(json!({"queue": "jobs/mail", "item": 1}))
    );
    assert_eq!(
        ApiRequest::queue_claim("jobs/mail", 30_000).body,
        Some(json!({"queue": "jobs/mail", "visibility_ms": 30000}))
    );
    let ack = ApiRequest::queue_ack("jobs/mail", 7, 42);
    assert_eq!(ack.path, "/v1/queues/ack");
    assert_eq!(
        ack.body,
        Some(json!({"queue": "jobs/mail", "item_id": 7, "claim_token": 42}))
    );
    assert_eq!(
        ApiRequest::queue_nack("jobs/mail", 7, 42, 0).body,
        Some(json!({"queue": "jobs/mail", "item_id": 7, "claim_token": 42}))
    );
    assert_eq!(
        ApiRequest::queue_nack("jobs/mail", 7, 42, 500)
            .body
            .unwrap()["delay_ms"],
        500
    );
    assert_eq!(
        ApiRequest::queue_status("jobs/mail").path,
        "/v1/queue-status/jobs/mail"
    );
}

#[test]
fn a_claim_is_an_item_or_nothing_ready() {
    let item: QueueClaim = serde_json::from_value(json!({
        "queue": "q/a", "item_id": 7, "item": {"n": 1}, "attempt": 1, "max_attempts": 5,
        "claim_token": 42, "visible_at": 10, "enqueued_at": 1
    }))
    .unwrap();
    assert!(matches!(item, QueueClaim::Item(ref i) if i.claim_token == 42));
    let empty: QueueClaim = serde_json::from_value(
        json!({"queue": "q/a", "empty": true, "in_flight": 2, "delayed": 0}),
    )
    .unwrap();
    assert!(matches!(empty, QueueClaim::Empty(ref e) if e.in_flight == 2));
}

#[test]
fn semaphore_bodies_follow_the_contract() {
    let request = ApiRequest::semaphore_acquire(
        &SemaphoreRequest::new("gpu/pool", 2, 3)
            .ttl_ms(30_000)
            .wait_ms(10_000),
    );
    assert_eq!(
        (request.method.clone(), request.path.as_str()),
        (Method::POST, "/v1/semaphores")
    );
    assert_eq!(
        request.wait_ms, 10_000,
        "the client's timeout covers the wait"
    );
    assert_eq!(
        request.body,
        Some(
            json!({"key": "gpu/pool", "permits": 2, "capacity": 3, "ttl_ms": 30000, "wait_ms": 10000})
        )
    );
    assert_eq!(
        ApiRequest::semaphore_acquire(&SemaphoreRequest::new("gpu/pool", 1, 3)).body,
        Some(json!({"key": "gpu/pool", "permits": 1, "capacity": 3}))
    );
}

/// `with_fence` must reach the body of every mutation the server fences,
/// next to the body's own fields.
#[test]
fn the_fence_goes_into_every_mutation_body() {
    let client = Client::new("http://127.0.0.1:9", "bot")
        .unwrap()
        .with_fence("gpu/pool", 9);
    let fence = json!({"key": "gpu/pool", "token": 9});
    let requests = [
        ApiRequest::quota_set("q/a", 5, false),
        ApiRequest::quota_reserve("q/a", 1, 1_000),
        ApiRequest::quota_commit(1, 1),
        ApiRequest::rate_take(&RateRequest::new("b/a", 1, 1)),
        ApiRequest::once(&OnceRequest::new("c/a", 1, 10)),
        ApiRequest::once_fulfil("c/a", 1, &json!(1)),
        ApiRequest::once_abandon("c/a", 1),
        ApiRequest::queue_enqueue("q/a", &json!(1), None),
        ApiRequest::queue_claim("q/a", 1_000),
        ApiRequest::queue_ack("q/a", 1, 2),
        ApiRequest::queue_nack("q/a", 1, 2, 0),
        ApiRequest::semaphore_acquire(&SemaphoreRequest::new("gpu/pool", 1, 3)),
        ApiRequest::counter_add("c/n", 1, None, None),
        ApiRequest::kv_delete("c/a", None),
    ];
    for request in requests {
        let sent = client.with_fence_in(request.body.clone()).unwrap();
        assert_eq!(sent["fence"], fence, "{}", request.path);
        let mut own = sent.clone();
        own.as_object_mut().unwrap().remove("fence");
        assert_eq!(
            own,
            request.body.unwrap_or_else(|| json!({})),
            "{}",
            request.path
        );
    }
    // Reads never carry it.
    let plain = Client::new("http://127.0.0.1:9", "bot").unwrap();
    assert_eq!(plain.with_fence_in(None), None);
}

#[tokio::test]
async fn a_semaphore_acquire_sends_its_fence_and_reads_the_permits() {
    let (url, server) = serve_once(http_response(
        "200 OK",
        "application/json",
        r#"{"ok":true,"result":{"lock_id":7,"status":"held","agent":"bot","keys":["gpu/pool"],"mode":"shared","fence_token":7,"expires_at":100,"permits":2}}"#,
    ))
    .await;
    let client = Client::new(&url, "bot")
        .unwrap()
        .with_fence("deploy/prod", 3);
    let lock = client
        .semaphore_acquire(&SemaphoreRequest::new("gpu/pool", 2, 3).ttl_ms(30_000))
        .await
        .unwrap();
    assert_eq!((lock.lock_id, lock.permits), (7, Some(2)));
    let request = server.await.unwrap();
    assert!(
        request.starts_with("POST /v1/semaphores HTTP/1.1"),
        "{request}"
    );
    let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"key": "gpu/pool", "permits": 2, "capacity": 3, "ttl_ms": 30000, "fence": {"key": "deploy/prod", "token": 3}})
    );
}

/// `with_release` puts the lock id beside the state mutations' own fields
/// (and beside the fence); without it nothing is added.
#[test]
fn the_release_goes_into_state_mutation_bodies() {
    let client = Client::new("http://127.0.0.1:9", "bot")
        .unwrap()
        .with_release(5);
    let requests = [
        ApiRequest::kv_put("c/a", &json!(1), PutOptions::default()),
        ApiRequest::kv_patch("c/a", &PatchRequest::Merge(json!({"n": 1})), Some(3)),
        ApiRequest::kv_delete("c/a", None),
        ApiRequest::txn(json!({"success": []})),
        ApiRequest::counter_add("c/n", 1, None, Some(9)),
    ];
    for request in requests {
        let sent = client.with_release_in(request.body.clone()).unwrap();
        assert_eq!(sent["release"], 5, "{}", request.path);
        let mut own = sent.clone();
        own.as_object_mut().unwrap().remove("release");
        assert_eq!(
            own,
            request.body.unwrap_or_else(|| json!({})),
            "{}",
            request.path
        );
    }
    let plain = Client::new("http://127.0.0.1:9", "bot").unwrap();
    assert_eq!(
        plain.with_release_in(Some(json!({"value": 1}))),
        Some(json!({"value": 1}))
    );
}

#[tokio::test]
async fn a_write_with_release_sends_it_beside_the_fence_and_reads_what_was_released() {
    let (url, server) = serve_once(http_response(
        "200 OK",
        "application/json",
        r#"{"ok":true,"result":{"key":"c/a","version":9,"previous_version":4,"released_lock_id":5}}"#,
    ))
    .await;
    let written = Client::new(&url, "bot")
        .unwrap()
        .with_fence("c/lock", 5)
        .with_release(5)
        .kv_put("c/a", &json!(2), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(written.released_lock_id, Some(5));
    let request = server.await.unwrap();
    let body: Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"value": 2, "fence": {"key": "c/lock", "token": 5}, "release": 5})
    );
}

#[tokio::test]
async fn an_answer_of_an_unexpected_shape_is_an_error_not_a_default() {
    // `send` decodes successes straight into their type; anything else takes
    // the general path, which must still name the problem.
    let put_answered = |status: &'static str, body: &'static str| async move {
        let (url, server) = serve_once(http_response(status, "application/json", body)).await;
        let client = Client::new(&url, "bot").unwrap();
        let error = client
            .kv_put("c/a", &json!(1), PutOptions::default())
            .await
            .unwrap_err();
        server.await.unwrap();
        error
    };
    let error = put_answered(
        "200 OK",
        r#"{"ok":true,"result":{"key":"c/a","version":"nine"}}"#,
    )
    .await;
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(
        error.message.contains("expected shape") && error.message.contains("/v1/kv/c/a"),
        "{}",
        error.message
    );
    let error = put_answered(
        "409 Conflict",
        r#"{"ok":false,"error":{"code":"CONCURRENT_MODIFICATION","message":"version moved"}}"#,
    )
    .await;
    assert_eq!(error.code, ErrorCode::ConcurrentModification);
    assert_eq!(error.message, "version moved");
}

#[tokio::test]
async fn keys_with_query_or_fragment_characters_reach_the_path_encoded() {
    let (url, server) = serve_once(http_response(
        "200 OK",
        "application/json",
        r#"{"ok":true,"result":{"key":"c/a?b#c","version":1}}"#,
    ))
    .await;
    let client = Client::new(&url, "bot").unwrap();
    client
        .kv_put("c/a?b#c", &json!(1), PutOptions::default())
        .await
        .unwrap();
    let request = server.await.unwrap();
    let line = request.lines().next().unwrap();
    assert!(
        line.starts_with("PUT /v1/kv/c/a%3Fb%23c HTTP/1.1"),
        "{line}"
    );
}

// ---- the transport: keep-alive connections driven in the caller's task ----

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let server = keep_alive_server(|n, request| {
        (
            keep_alive_ok(json!({"n": n, "line": request_line(request)})),
            Then::KeepOpen,
        )
    })
    .await;
    let client = Client::new(&server.url, "bot").unwrap();
    for n in 0..5 {
        let answer = client
            .request_json(Method::GET, &format!("/v1/kv/k{n}"), None)
            .await
            .unwrap();
        assert_eq!(answer["n"], json!(n));
        assert_eq!(answer["line"], json!(format!("GET /v1/kv/k{n} HTTP/1.1")));
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_without_an_error() {
    let mut server =
        keep_alive_server(|n, _| (keep_alive_ok(json!({"n": n})), Then::KeepOpen)).await;
    let client = Client::new(&server.url, "bot").unwrap();
    let first = client.request_json(Method::GET, "/v1/status", None).await;
    assert_eq!(first.unwrap()["n"], json!(0));
    // The connection is idle in the client's pool when the server hangs up:
    // the client finds out only when it next takes it.
    server.hang_up();
    // Once the server has hung up, the end is in the client's socket (on
    // loopback, at once): the replacement is then deterministic, not a race.
    server.closed(1).await;
    let second = client.request_json(Method::GET, "/v1/status", None).await;
    assert_eq!(second.unwrap()["n"], json!(1));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_cut_off_midway_is_unavailable_and_the_next_call_reconnects() {
    let server = keep_alive_server(|n, _| {
        if n == 0 {
            // Promises 100 bytes, sends 10, hangs up.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"ok\":true".to_string(),
                Then::Close,
            )
        } else {
            (keep_alive_ok(json!({"n": n})), Then::KeepOpen)
        }
    })
    .await;
    let client = Client::new(&server.url, "bot").unwrap();
    let error = client
        .request_json(Method::PUT, "/v1/kv/a", Some(json!({"value": 1})))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(
        error.message.contains("may or may not have been applied"),
        "{}",
        error.message
    );
    let again = client.request_json(Method::GET, "/v1/kv/a", None).await;
    assert_eq!(again.unwrap()["n"], json!(1));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_calls_from_clones_each_get_their_own_answer() {
    // Every answer echoes its request line: a connection handed to two
    // calls at once, or an answer read by the wrong call, shows as a mismatch.
    const CALLS: usize = 64;
    let server = keep_alive_server(|_, request| {
        (
            keep_alive_ok(json!({"line": request_line(request)})),
            Then::KeepOpen,
        )
    })
    .await;
    let client = Client::new(&server.url, "bot").unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for round in 0..3 {
        for n in 0..CALLS {
            let client = client.clone();
            calls.spawn(async move {
                let path = format!("/v1/kv/r{round}/k{n}");
                let answer = client.request_json(Method::GET, &path, None).await.unwrap();
                assert_eq!(answer["line"], json!(format!("GET {path} HTTP/1.1")));
            });
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap();
        }
    }
    // Later rounds reuse what earlier rounds opened, up to the idle limit.
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= CALLS + 2 * (CALLS - MAX_IDLE_CONNECTIONS),
        "{accepted} connections for {} calls",
        3 * CALLS
    );
}

#[tokio::test]
async fn raw_paths_are_percent_encoded_where_a_uri_cannot_carry_them() {
    let (url, server) = serve_once(keep_alive_ok(json!({}))).await;
    let client = Client::new(&url, "bot").unwrap();
    client
        .request_json(Method::GET, "/v1/kv/a b\"c", None)
        .await
        .unwrap();
    let request = server.await.unwrap();
    assert_eq!(request_line(&request), "GET /v1/kv/a%20b%22c HTTP/1.1");
}

#[test]
fn agents_and_idempotency_keys_must_fit_in_a_header() {
    let error = Client::new(DEFAULT_URL, "bot\nx").unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.starts_with("agent: "), "{}", error.message);
    let client = Client::new(DEFAULT_URL, "bot")
        .unwrap()
        .with_idempotency_key("k\r\n1");
    let error = client
        .outgoing(ApiRequest::raw(Method::POST, "/v1/txn", None))
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
}

#[test]
fn dot_segments_are_found_also_percent_encoded() {
    for dotted in [
        "/v1/kv/a/./b",
        "/v1/kv/..",
        "/v1/kv/%2E%2e/x",
        "/v1/kv/.%2e",
    ] {
        let error = request_target(&ApiRequest::raw(Method::GET, dotted, None)).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{dotted}");
    }
    for fine in ["/v1/kv/a.b", "/v1/kv/...", "/v1/kv/.hidden"] {
        assert!(
            request_target(&ApiRequest::raw(Method::GET, fine, None)).is_ok(),
            "{fine}"
        );
    }
}
