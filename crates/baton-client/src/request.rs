//! Every endpoint of the HTTP API as data: method, path, query and body.
//! `Client`'s typed methods and the CLI's raw calls both build requests
//! here, so each endpoint is spelled exactly once.

use baton_core::LockMode;
use hyper::Method;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// One HTTP request to Baton, before the client adds its agent, session,
/// idempotency key and fence.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    /// Percent-encoded path, e.g. `/v1/kv/config/app`.
    pub path: String,
    /// Query parameters, not yet encoded.
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    /// How long the server may hold the request (a lock wait): the client's
    /// timeout is this plus its usual margin.
    pub wait_ms: u64,
}

/// `POST /v1/locks`: which keys, how, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRequest {
    /// Taken all or nothing; order does not matter.
    pub keys: Vec<String>,
    pub mode: LockMode,
    /// The lock's own lease. Without it the lock lives as long as the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long to queue if the keys are taken; 0 answers at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
    /// After this lock expires (not released), keep its keys unavailable this long.
    #[serde(skip_serializing_if = "is_zero")]
    pub lock_delay_ms: u64,
    /// Answer the grant with the locked keys' values (`LockInfo::values`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LockRequest {
    pub fn exclusive<K: Into<String>>(keys: impl IntoIterator<Item = K>) -> LockRequest {
        LockRequest {
            keys: keys.into_iter().map(Into::into).collect(),
            mode: LockMode::Exclusive,
            ttl_ms: None,
            wait_ms: 0,
            lock_delay_ms: 0,
            read: false,
        }
    }

    pub fn shared<K: Into<String>>(keys: impl IntoIterator<Item = K>) -> LockRequest {
        LockRequest {
            mode: LockMode::Shared,
            ..LockRequest::exclusive(keys)
        }
    }

    pub fn ttl_ms(mut self, ttl_ms: u64) -> LockRequest {
        self.ttl_ms = Some(ttl_ms);
        self
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> LockRequest {
        self.wait_ms = wait_ms;
        self
    }

    pub fn lock_delay_ms(mut self, lock_delay_ms: u64) -> LockRequest {
        self.lock_delay_ms = lock_delay_ms;
        self
    }

    /// The grant comes with the locked keys' values as they were at the
    /// grant (in `LockInfo::values`; a key not listed does not exist): the
    /// read that usually follows an acquire, without its round trip.
    pub fn read(mut self) -> LockRequest {
        self.read = true;
        self
    }
}

/// `POST /v1/semaphores`: take `permits` of a counting semaphore of
/// `capacity` permits on `key`. A semaphore is a shared lock with a weight:
/// release and renew it with the lock calls, by its `lock_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoreRequest {
    pub key: String,
    /// At least 1, at most `capacity`.
    pub permits: u64,
    /// The semaphore's permits in all; every holder and waiter names the same.
    pub capacity: u64,
    /// The permits' own lease. Without it they live as long as the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long to queue (FIFO) for the permits; 0 answers at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
}

impl SemaphoreRequest {
    pub fn new(key: impl Into<String>, permits: u64, capacity: u64) -> SemaphoreRequest {
        SemaphoreRequest {
            key: key.into(),
            permits,
            capacity,
            ttl_ms: None,
            wait_ms: 0,
        }
    }

    pub fn ttl_ms(mut self, ttl_ms: u64) -> SemaphoreRequest {
        self.ttl_ms = Some(ttl_ms);
        self
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> SemaphoreRequest {
        self.wait_ms = wait_ms;
        self
    }
}

/// `POST /v1/rate/take`: take `tokens` from a shared token bucket that
/// refills `rate_per_sec` tokens a second up to `burst`. The bucket is
/// created on first use; the latest rate and burst given win.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateRequest {
    pub bucket: String,
    /// At least 1, at most `burst`.
    pub tokens: u64,
    pub rate_per_sec: u64,
    pub burst: u64,
    /// Queue (strict FIFO, no barging) this long for the tokens instead of
    /// being refused at once; 0 answers at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
}

impl RateRequest {
    /// One token from `bucket`, answered at once.
    pub fn new(bucket: impl Into<String>, rate_per_sec: u64, burst: u64) -> RateRequest {
        RateRequest {
            bucket: bucket.into(),
            tokens: 1,
            rate_per_sec,
            burst,
            wait_ms: 0,
        }
    }

    pub fn tokens(mut self, tokens: u64) -> RateRequest {
        self.tokens = tokens;
        self
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> RateRequest {
        self.wait_ms = wait_ms;
        self
    }
}

/// `POST /v1/once`: the value of `key` if younger than `max_age_ms`; else
/// the refresh claim for the first caller, and a wait of up to `wait_ms` for
/// the claimant's value for everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnceRequest {
    pub key: String,
    pub max_age_ms: u64,
    /// How long a claim lasts: the refresh must be published within it, or
    /// the next waiter gets the claim (there is no renewal).
    pub claim_ttl_ms: u64,
    /// How long to wait for another agent's refresh; 0 answers at once
    /// (CONCURRENT_MODIFICATION while someone else refreshes).
    #[serde(skip_serializing_if = "is_zero")]
    pub wait_ms: u64,
}

impl OnceRequest {
    pub fn new(key: impl Into<String>, max_age_ms: u64, claim_ttl_ms: u64) -> OnceRequest {
        OnceRequest {
            key: key.into(),
            max_age_ms,
            claim_ttl_ms,
            wait_ms: 0,
        }
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> OnceRequest {
        self.wait_ms = wait_ms;
        self
    }
}

/// Conditions and lease of a `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Write only if the key is at this version (0: absent).
    pub if_version: Option<u64>,
    /// Write only if the key does not exist.
    pub if_absent: bool,
    /// The key disappears this long after the write.
    pub ttl_ms: Option<u64>,
}

/// The change of a `PATCH /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchRequest {
    /// RFC 7396 JSON merge patch: an object; `null` removes a member.
    Merge(Value),
    /// RFC 6902 JSON Patch: an array of operations; a failing `test` is a conflict.
    JsonPatch(Value),
}

impl ApiRequest {
    fn new(method: Method, path: String) -> ApiRequest {
        ApiRequest {
            method,
            path,
            query: Vec::new(),
            body: None,
            wait_ms: 0,
        }
    }

    fn get(path: String) -> ApiRequest {
        ApiRequest::new(Method::GET, path)
    }

    fn body(mut self, body: Value) -> ApiRequest {
        self.body = Some(body);
        self
    }

    fn query(mut self, name: &'static str, value: Option<impl ToString>) -> ApiRequest {
        if let Some(value) = value {
            self.query.push((name, value.to_string()));
        }
        self
    }

    /// `prefix=` only when there is one: an empty prefix means everything.
    fn prefix(self, prefix: &str) -> ApiRequest {
        self.query("prefix", (!prefix.is_empty()).then_some(prefix))
    }

    /// Any method and path; `path` may end in a `?query` (already encoded).
    pub fn raw(method: Method, path: &str, body: Option<Value>) -> ApiRequest {
        ApiRequest {
            body,
            ..ApiRequest::new(method, path.to_string())
        }
    }

    /// The path with its encoded query string, as it goes after the base URL.
    pub fn path_and_query(&self) -> String {
        let mut out = self.path.clone();
        for (i, (name, value)) in self.query.iter().enumerate() {
            out.push(if i == 0 && !self.path.contains('?') {
                '?'
            } else {
                '&'
            });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode(value, false));
        }
        out
    }

    pub fn session_open(ttl_ms: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/sessions".into()).body(json!({ "ttl_ms": ttl_ms }))
    }

    pub fn session_list() -> ApiRequest {
        ApiRequest::get("/v1/sessions".into())
    }

    pub fn session_get(session_id: u64) -> ApiRequest {
        ApiRequest::get(format!("/v1/sessions/{session_id}"))
    }

    pub fn session_keepalive(session_id: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, format!("/v1/sessions/{session_id}/keepalive"))
            .body(json!({}))
    }

    pub fn session_close(session_id: u64) -> ApiRequest {
        ApiRequest::new(Method::DELETE, format!("/v1/sessions/{session_id}"))
    }

    pub fn session_kill(session_id: u64, reason: Option<&str>) -> ApiRequest {
        let mut body = Map::new();
        if let Some(reason) = reason {
            body.insert("reason".into(), reason.into());
        }
        ApiRequest::new(Method::POST, format!("/v1/sessions/{session_id}/kill"))
            .body(Value::Object(body))
    }

    pub fn lock_acquire(request: &LockRequest) -> ApiRequest {
        let body = serde_json::to_value(request).expect("a LockRequest always serializes");
        ApiRequest {
            wait_ms: request.wait_ms,
            ..ApiRequest::new(Method::POST, "/v1/locks".into()).body(body)
        }
    }

    pub fn semaphore_acquire(request: &SemaphoreRequest) -> ApiRequest {
        let body = serde_json::to_value(request).expect("a SemaphoreRequest always serializes");
        ApiRequest {
            wait_ms: request.wait_ms,
            ..ApiRequest::new(Method::POST, "/v1/semaphores".into()).body(body)
        }
    }

    pub fn lock_state(lock_id: u64) -> ApiRequest {
        ApiRequest::get(format!("/v1/locks/{lock_id}"))
    }

    pub fn lock_release(lock_id: u64) -> ApiRequest {
        ApiRequest::new(Method::DELETE, format!("/v1/locks/{lock_id}"))
    }

    pub fn lock_renew(lock_id: u64, ttl_ms: Option<u64>) -> ApiRequest {
        let mut body = Map::new();
        if let Some(ttl_ms) = ttl_ms {
            body.insert("ttl_ms".into(), ttl_ms.into());
        }
        ApiRequest::new(Method::POST, format!("/v1/locks/{lock_id}/renew"))
            .body(Value::Object(body))
    }

    pub fn key_locks(key: &str) -> ApiRequest {
        ApiRequest::get("/v1/locks".into()).query("key", Some(key))
    }

    pub fn lock_list(prefix: &str, limit: Option<u64>) -> ApiRequest {
        ApiRequest::get("/v1/locks".into())
            .prefix(prefix)
            .query("limit", limit)
    }

    pub fn fence_check(key: &str, token: u64) -> ApiRequest {
        ApiRequest::get("/v1/fence".into())
            .query("key", Some(key))
            .query("token", Some(token))
    }

    pub fn kv_get(key: &str) -> ApiRequest {
        ApiRequest::get(format!("/v1/kv/{}", encode_key(key)))
    }

    pub fn kv_put(key: &str, value: &Value, options: PutOptions) -> ApiRequest {
        let mut body = Map::new();
        body.insert("value".into(), value.clone());
        if let Some(version) = options.if_version {
            body.insert("if_version".into(), version.into());
        }
        if options.if_absent {
            body.insert("if_absent".into(), true.into());
        }
        if let Some(ttl_ms) = options.ttl_ms {
            body.insert("ttl_ms".into(), ttl_ms.into());
        }
        ApiRequest::new(Method::PUT, format!("/v1/kv/{}", encode_key(key)))
            .body(Value::Object(body))
    }

    pub fn kv_patch(key: &str, patch: &PatchRequest, if_version: Option<u64>) -> ApiRequest {
        let mut body = Map::new();
        match patch {
            PatchRequest::Merge(merge) => body.insert("merge".into(), merge.clone()),
            PatchRequest::JsonPatch(ops) => body.insert("json_patch".into(), ops.clone()),
        };
        if let Some(version) = if_version {
            body.insert("if_version".into(), version.into());
        }
        ApiRequest::new(Method::PATCH, format!("/v1/kv/{}", encode_key(key)))
            .body(Value::Object(body))
    }

    pub fn kv_delete(key: &str, if_version: Option<u64>) -> ApiRequest {
        let request = ApiRequest::new(Method::DELETE, format!("/v1/kv/{}", encode_key(key)));
        match if_version {
            Some(version) => request.body(json!({ "if_version": version })),
            None => request,
        }
    }

    pub fn kv_list(prefix: &str, after: Option<&str>, limit: Option<u64>) -> ApiRequest {
        ApiRequest::get("/v1/kv".into())
            .prefix(prefix)
            .query("after", after)
            .query("limit", limit)
    }

    pub fn kv_history(key: &str, limit: Option<u64>) -> ApiRequest {
        ApiRequest::get(format!("/v1/history/{}", encode_key(key))).query("limit", limit)
    }

    /// `body` is `{"compares": [...], "success": [...], "failure": [...]}`.
    pub fn txn(body: Value) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/txn".into()).body(body)
    }

    pub fn counter_add(key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> ApiRequest {
        let mut body = Map::new();
        body.insert("key".into(), key.into());
        body.insert("delta".into(), delta.into());
        if let Some(min) = min {
            body.insert("min".into(), min.into());
        }
        if let Some(max) = max {
            body.insert("max".into(), max.into());
        }
        ApiRequest::new(Method::POST, "/v1/counters/add".into()).body(Value::Object(body))
    }

    pub fn quota_set(quota: &str, capacity: u64, reset_used: bool) -> ApiRequest {
        let mut body = Map::new();
        body.insert("capacity".into(), capacity.into());
        if reset_used {
            body.insert("reset_used".into(), true.into());
        }
        ApiRequest::new(Method::PUT, format!("/v1/quotas/{}", encode_key(quota)))
            .body(Value::Object(body))
    }

    pub fn quota_get(quota: &str) -> ApiRequest {
        ApiRequest::get(format!("/v1/quotas/{}", encode_key(quota)))
    }

    pub fn quota_reserve(quota: &str, amount: u64, ttl_ms: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/reservations".into())
            .body(json!({ "quota": quota, "amount": amount, "ttl_ms": ttl_ms }))
    }

    pub fn quota_commit(reservation_id: u64, actual: u64) -> ApiRequest {
        ApiRequest::new(
            Method::POST,
            format!("/v1/reservations/{reservation_id}/commit"),
        )
        .body(json!({ "actual": actual }))
    }

    pub fn quota_release(reservation_id: u64) -> ApiRequest {
        ApiRequest::new(Method::DELETE, format!("/v1/reservations/{reservation_id}"))
    }

    pub fn rate_take(request: &RateRequest) -> ApiRequest {
        let body = serde_json::to_value(request).expect("a RateRequest always serializes");
        ApiRequest {
            wait_ms: request.wait_ms,
            ..ApiRequest::new(Method::POST, "/v1/rate/take".into()).body(body)
        }
    }

    pub fn bucket(bucket: &str) -> ApiRequest {
        ApiRequest::get(format!("/v1/buckets/{}", encode_key(bucket)))
    }

    pub fn queue_enqueue(queue: &str, item: &Value, max_attempts: Option<u32>) -> ApiRequest {
        let mut body = Map::new();
        body.insert("queue".into(), queue.into());
        body.insert("item".into(), item.clone());
        if let Some(max_attempts) = max_attempts {
            body.insert("max_attempts".into(), max_attempts.into());
        }
        ApiRequest::new(Method::POST, "/v1/queues/enqueue".into()).body(Value::Object(body))
    }

    pub fn queue_claim(queue: &str, visibility_ms: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/queues/claim".into())
            .body(json!({ "queue": queue, "visibility_ms": visibility_ms }))
    }

    pub fn queue_ack(queue: &str, item_id: u64, claim_token: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/queues/ack".into())
            .body(json!({ "queue": queue, "item_id": item_id, "claim_token": claim_token }))
    }

    pub fn queue_nack(queue: &str, item_id: u64, claim_token: u64, delay_ms: u64) -> ApiRequest {
        let mut body = json!({ "queue": queue, "item_id": item_id, "claim_token": claim_token });
        if delay_ms > 0 {
            body["delay_ms"] = delay_ms.into();
        }
        ApiRequest::new(Method::POST, "/v1/queues/nack".into()).body(body)
    }

    pub fn queue_status(queue: &str) -> ApiRequest {
        ApiRequest::get(format!("/v1/queue-status/{}", encode_key(queue)))
    }

    pub fn once(request: &OnceRequest) -> ApiRequest {
        let body = serde_json::to_value(request).expect("a OnceRequest always serializes");
        ApiRequest {
            wait_ms: request.wait_ms,
            ..ApiRequest::new(Method::POST, "/v1/once".into()).body(body)
        }
    }

    pub fn once_fulfil(key: &str, claim_id: u64, value: &Value) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/once/fulfil".into())
            .body(json!({ "key": key, "claim_id": claim_id, "value": value }))
    }

    pub fn once_abandon(key: &str, claim_id: u64) -> ApiRequest {
        ApiRequest::new(Method::POST, "/v1/once/abandon".into())
            .body(json!({ "key": key, "claim_id": claim_id }))
    }

    pub fn events(prefix: &str, from_revision: Option<u64>, limit: Option<u64>) -> ApiRequest {
        ApiRequest::get("/v1/events".into())
            .prefix(prefix)
            .query("from_revision", from_revision)
            .query("limit", limit)
    }

    pub fn watch(prefix: &str, from_revision: Option<u64>) -> ApiRequest {
        ApiRequest::get("/v1/watch".into())
            .prefix(prefix)
            .query("from_revision", from_revision)
    }

    pub fn status() -> ApiRequest {
        ApiRequest::get("/v1/status".into())
    }

    pub(crate) fn health() -> ApiRequest {
        ApiRequest::get("/healthz".into())
    }
}

/// A key as it goes into a path: `/` kept, everything outside RFC 3986's
/// unreserved characters percent-encoded (`a b` → `a%20b`).
pub fn encode_key(key: &str) -> String {
    encode(key, true)
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
