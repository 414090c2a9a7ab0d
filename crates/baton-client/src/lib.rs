//! Baton's Rust client: one async method per endpoint of the HTTP API
//! (`docs/http-api.md`), for the `baton` CLI, the MCP server and any Rust
//! program that coordinates through Baton.
//!
//! Every call returns `Result<T, baton_core::Error>`: the server's envelope
//! error verbatim, or `UNAVAILABLE` naming the URL when the server cannot be
//! reached. It must never depend on the server crate or on a runtime choice
//! of its own (it runs on whatever tokio runtime the caller has), and it
//! never retries by itself: a retry is the caller's decision, made safe with
//! an idempotency key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton_core::Error> {
//! use baton_client::{Client, LockRequest};
//! let client = Client::new("http://127.0.0.1:7700", "order-bot")?;
//! let lock = client
//!     .lock_acquire(&LockRequest::exclusive(["inventory/sku-1"]).ttl_ms(30_000).wait_ms(5_000))
//!     .await?;
//! // The write is fenced, and releases the lock in its own commit.
//! let fenced = client
//!     .clone()
//!     .with_fence("inventory/sku-1", lock.fence_token.unwrap_or(0))
//!     .with_release(lock.lock_id);
//! fenced.kv_put("inventory/sku-1", &serde_json::json!({"stock": 3}), Default::default()).await?;
//! # Ok(()) }
//! ```

mod request;
pub mod sse;
mod transport;

use std::time::Duration;

use baton_core::{Error, ErrorCode, Event, Fence};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use baton_core::reply::{
    AgentUsage, BucketInfo, CounterResult, DeadLetter, DeleteResult, EnqueueResult, FenceCheck,
    GetResult, HistoryResult, KeyLocksInfo, ListResult, LockInfo, LockState, OnceResult,
    QueueEmpty, QueueItem, QueueSettled, QueueStatus, QuotaInfo, RateResult, ReleaseResult,
    ReservationInfo, SessionInfo, SettleResult, TxnResult, WriteResult,
};
pub use baton_core::{LockMode, Txn};
pub use hyper::Method;
pub use request::{
    ApiRequest, LockRequest, OnceRequest, PatchRequest, PutOptions, RateRequest, SemaphoreRequest,
    encode_key,
};
pub use transport::{IDLE_CONNECTION_TIMEOUT, MAX_IDLE_CONNECTIONS};

use hyper::header::{HeaderName, HeaderValue};
use transport::{Failure, Outgoing, Transport};

/// Where `baton serve` listens unless told otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7700";
/// How long to wait for a TCP connection before answering UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call may take, beyond any server-side wait it asked for.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do when the server is not there; every UNAVAILABLE says it.
const START_HINT: &str = "is `baton serve` running? start it with `baton serve` or set BATON_URL (--url) to a running server";

/// A connection to one Baton server, as one agent. Cheap to clone: clones
/// share the connection pool, so a per-call setting is
/// `client.clone().with_idempotency_key(..)`.
#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    /// `http://host:port`, as messages name the server.
    base: String,
    agent: String,
    /// `agent` as a header value, checked once.
    agent_header: HeaderValue,
    session: Option<u64>,
    idempotency_key: Option<String>,
    fence: Option<Fence>,
    release: Option<u64>,
}

/// The events of a watch, as they happen; ends with one `Err` (see [`Client::watch`]).
pub type EventStream = futures_util::stream::BoxStream<'static, Result<Event, Error>>;

/// `GET /v1/events`: one page of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `from_revision` to continue after this page.
    pub next_revision: u64,
}

/// `POST /v1/queues/claim`: the oldest ready item, or nothing ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueueClaim {
    Item(QueueItem),
    Empty(QueueEmpty),
}

/// `GET /v1/status`. Fields a newer server adds are kept in `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub revision: u64,
    pub time: u64,
    pub sessions: u64,
    pub locks_held: u64,
    pub locks_waiting: u64,
    pub keys: u64,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct Sessions {
    sessions: Vec<SessionInfo>,
}

#[derive(Deserialize)]
struct LockedKeys {
    keys: Vec<KeyLocksInfo>,
}

impl Client {
    /// A client of the server at `url` (`http://host:port`; a bare
    /// `host:port` means http) calling as `agent`.
    pub fn new(url: &str, agent: impl Into<String>) -> Result<Client, Error> {
        let agent = agent.into();
        if agent.is_empty() {
            return Err(Error::invalid(
                "agent",
                "every request names its agent: pass --agent or set BATON_AGENT",
            ));
        }
        let agent_header = HeaderValue::from_str(&agent).map_err(|_| {
            Error::invalid(
                "agent",
                format!("{agent:?} cannot go in an HTTP header: use printable ASCII"),
            )
        })?;
        let (transport, base) = parse_base_url(url)?;
        Ok(Client {
            transport,
            base,
            agent,
            agent_header,
            session: None,
            idempotency_key: None,
            fence: None,
            release: None,
        })
    }

    /// Sends `Baton-Session` with every request: locks end with the session.
    pub fn with_session(mut self, session_id: u64) -> Client {
        self.session = Some(session_id);
        self
    }

    /// Sends `Idempotency-Key` with mutations: a retry gets the recorded reply.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Client {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds `"fence": {key, token}` to mutation bodies: refused with FENCED
    /// once `token` is no longer the fence of a holder of `key`. Every
    /// mutation with a JSON body checks it; the two releases
    /// ([`Client::lock_release`], [`Client::quota_release`]) take no body on
    /// the server, so they are not fenced.
    pub fn with_fence(mut self, key: impl Into<String>, token: u64) -> Client {
        self.fence = Some(Fence {
            key: key.into(),
            token,
        });
        self
    }

    /// Adds `"release": lock_id` to mutation bodies: a state mutation
    /// ([`Client::kv_put`], [`Client::kv_patch`], [`Client::kv_delete`],
    /// [`Client::txn`], [`Client::counter_add`]) then releases that held lock
    /// in its own command once it applies, and the next waiter is granted in
    /// the same commit: no separate [`Client::lock_release`]. All or nothing:
    /// a release of a lock this agent does not hold refuses the mutation
    /// (NOT_FOUND, PERMISSION_DENIED, FENCED), and a refused mutation or a
    /// txn whose compares failed keeps the lock. The answer's
    /// `released_lock_id` says it was released. Other mutations refuse the
    /// field (INVALID_ARGUMENT); the two releases ignore it.
    pub fn with_release(mut self, lock_id: u64) -> Client {
        self.release = Some(lock_id);
        self
    }

    /// The server's base URL, as requests name it.
    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    pub fn session(&self) -> Option<u64> {
        self.session
    }

    // ---- sessions ----

    pub async fn session_open(&self, ttl_ms: u64) -> Result<SessionInfo, Error> {
        self.send(ApiRequest::session_open(ttl_ms)).await
    }

    pub async fn session_keepalive(&self, session_id: u64) -> Result<SessionInfo, Error> {
        self.send(ApiRequest::session_keepalive(session_id)).await
    }

    pub async fn session_close(&self, session_id: u64) -> Result<SessionInfo, Error> {
        self.send(ApiRequest::session_close(session_id)).await
    }

    /// Admin: ends the session as if it expired; its locks are taken away.
    pub async fn session_kill(
        &self,
        session_id: u64,
        reason: Option<&str>,
    ) -> Result<SessionInfo, Error> {
        self.send(ApiRequest::session_kill(session_id, reason))
            .await
    }

    pub async fn session_get(&self, session_id: u64) -> Result<SessionInfo, Error> {
        self.send(ApiRequest::session_get(session_id)).await
    }

    pub async fn session_list(&self) -> Result<Vec<SessionInfo>, Error> {
        let list: Sessions = self.send(ApiRequest::session_list()).await?;
        Ok(list.sessions)
    }

    // ---- locks and fencing ----

    /// Takes every key or none. With `wait_ms` > 0 this blocks until granted
    /// or the wait ends (CONCURRENT_MODIFICATION with the holders).
    pub async fn lock_acquire(&self, request: &LockRequest) -> Result<LockInfo, Error> {
        self.send(ApiRequest::lock_acquire(request)).await
    }

    /// Takes permits of a counting semaphore: a shared lock of weight
    /// `permits` on a key of `capacity` permits, with the same FIFO queue,
    /// leases, fencing tokens and deadlock detection as any lock. The answer
    /// is a `LockInfo` with `permits`; release or renew it with
    /// [`Client::lock_release`] / [`Client::lock_renew`]. All permits taken:
    /// CONCURRENT_MODIFICATION with the holders (or, with `wait_ms`, a wait).
    pub async fn semaphore_acquire(&self, request: &SemaphoreRequest) -> Result<LockInfo, Error> {
        self.send(ApiRequest::semaphore_acquire(request)).await
    }

    /// Idempotent: releasing an ended lock says how it ended.
    pub async fn lock_release(&self, lock_id: u64) -> Result<ReleaseResult, Error> {
        self.send(ApiRequest::lock_release(lock_id)).await
    }

    /// Extends the lease by `ttl_ms` (or the lock's own TTL) from now.
    pub async fn lock_renew(&self, lock_id: u64, ttl_ms: Option<u64>) -> Result<LockInfo, Error> {
        self.send(ApiRequest::lock_renew(lock_id, ttl_ms)).await
    }

    /// "Am I still the holder?": the live lock, or how and when it ended.
    pub async fn lock_state(&self, lock_id: u64) -> Result<LockState, Error> {
        self.send(ApiRequest::lock_state(lock_id)).await
    }

    /// Holders and waiters of one key.
    pub async fn key_locks(&self, key: &str) -> Result<KeyLocksInfo, Error> {
        self.send(ApiRequest::key_locks(key)).await
    }

    /// Keys under `prefix` that are locked or awaited.
    pub async fn lock_list(
        &self,
        prefix: &str,
        limit: Option<u64>,
    ) -> Result<Vec<KeyLocksInfo>, Error> {
        let list: LockedKeys = self.send(ApiRequest::lock_list(prefix, limit)).await?;
        Ok(list.keys)
    }

    /// Whether `token` is the fence of a current holder of `key`: for
    /// systems outside Baton that accept fenced writes.
    pub async fn fence_check(&self, key: &str, token: u64) -> Result<FenceCheck, Error> {
        self.send(ApiRequest::fence_check(key, token)).await
    }

    // ---- versioned state ----

    pub async fn kv_get(&self, key: &str) -> Result<GetResult, Error> {
        self.send(ApiRequest::kv_get(key)).await
    }

    /// A conflict (`if_version`, `if_absent`) is CONCURRENT_MODIFICATION with
    /// `details.current_version` and `details.current_value`.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &Value,
        options: PutOptions,
    ) -> Result<WriteResult, Error> {
        self.send(ApiRequest::kv_put(key, value, options)).await
    }

    pub async fn kv_patch(
        &self,
        key: &str,
        patch: &PatchRequest,
        if_version: Option<u64>,
    ) -> Result<WriteResult, Error> {
        self.send(ApiRequest::kv_patch(key, patch, if_version))
            .await
    }

    pub async fn kv_delete(
        &self,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<DeleteResult, Error> {
        self.send(ApiRequest::kv_delete(key, if_version)).await
    }

    /// One page of keys under `prefix`, after key `after`.
    pub async fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<ListResult, Error> {
        self.send(ApiRequest::kv_list(prefix, after, limit)).await
    }

    /// Past versions of `key`, newest first.
    pub async fn kv_history(&self, key: &str, limit: Option<u64>) -> Result<HistoryResult, Error> {
        self.send(ApiRequest::kv_history(key, limit)).await
    }

    /// If every compare holds run `success`, else `failure`; all or nothing.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult, Error> {
        let body = serde_json::to_value(txn)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot encode the txn: {e}")))?;
        self.send(ApiRequest::txn(body)).await
    }

    /// Adds `delta`, refusing with QUOTA_EXCEEDED if the result would leave
    /// `[min, max]`.
    pub async fn counter_add(
        &self,
        key: &str,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<CounterResult, Error> {
        self.send(ApiRequest::counter_add(key, delta, min, max))
            .await
    }

    // ---- quotas and rate limits ----

    /// Creates the quota or changes its capacity; `reset_used` forgets the
    /// committed use (a new period). Live reservations stay.
    pub async fn quota_set(
        &self,
        quota: &str,
        capacity: u64,
        reset_used: bool,
    ) -> Result<QuotaInfo, Error> {
        self.send(ApiRequest::quota_set(quota, capacity, reset_used))
            .await
    }

    pub async fn quota_get(&self, quota: &str) -> Result<QuotaInfo, Error> {
        self.send(ApiRequest::quota_get(quota)).await
    }

    /// Holds `amount` of the quota for `ttl_ms`, then commit or release it;
    /// an expired reservation returns to the pool. QUOTA_EXCEEDED if it does
    /// not fit, with `retry_after_ms` when expiring reservations would free
    /// enough.
    pub async fn quota_reserve(
        &self,
        quota: &str,
        amount: u64,
        ttl_ms: u64,
    ) -> Result<ReservationInfo, Error> {
        self.send(ApiRequest::quota_reserve(quota, amount, ttl_ms))
            .await
    }

    /// Consumes `actual` (at most the amount reserved); the rest returns to
    /// the pool. FENCED if the reservation already ended.
    pub async fn quota_commit(
        &self,
        reservation_id: u64,
        actual: u64,
    ) -> Result<SettleResult, Error> {
        self.send(ApiRequest::quota_commit(reservation_id, actual))
            .await
    }

    /// Returns the whole reservation to the pool. Idempotent: an ended
    /// reservation answers `settled: false` and how it ended.
    pub async fn quota_release(&self, reservation_id: u64) -> Result<SettleResult, Error> {
        self.send(ApiRequest::quota_release(reservation_id)).await
    }

    /// Takes tokens from a shared bucket, or RATE_LIMITED with the exact
    /// `retry_after_ms` after which they will be there. With `wait_ms` the
    /// request queues on the server (strict FIFO, no barging) until its
    /// tokens are there, or RATE_LIMITED when the wait ends.
    pub async fn rate_take(&self, request: &RateRequest) -> Result<RateResult, Error> {
        self.send(ApiRequest::rate_take(request)).await
    }

    /// A bucket's tokens and who has been spending them, largest first.
    pub async fn bucket(&self, bucket: &str) -> Result<BucketInfo, Error> {
        self.send(ApiRequest::bucket(bucket)).await
    }

    // ---- queues ----

    /// Appends `item` to `queue` (created on first use). Retry with the same
    /// idempotency key to enqueue it once; after `max_attempts` deliveries
    /// (default 5) an item is dead-lettered.
    pub async fn queue_enqueue(
        &self,
        queue: &str,
        item: &Value,
        max_attempts: Option<u32>,
    ) -> Result<EnqueueResult, Error> {
        self.send(ApiRequest::queue_enqueue(queue, item, max_attempts))
            .await
    }

    /// The oldest ready item, claimed for `visibility_ms`: ack or nack it with
    /// its `claim_token` within that time, or it is delivered again.
    pub async fn queue_claim(&self, queue: &str, visibility_ms: u64) -> Result<QueueClaim, Error> {
        self.send(ApiRequest::queue_claim(queue, visibility_ms))
            .await
    }

    /// Done with the item: it leaves the queue. FENCED if the claim expired
    /// (the item was or will be delivered again): its result must not be used.
    pub async fn queue_ack(
        &self,
        queue: &str,
        item_id: u64,
        claim_token: u64,
    ) -> Result<QueueSettled, Error> {
        self.send(ApiRequest::queue_ack(queue, item_id, claim_token))
            .await
    }

    /// Gives the item back, visible again after `delay_ms`; dead-lettered if
    /// it has had its `max_attempts`.
    pub async fn queue_nack(
        &self,
        queue: &str,
        item_id: u64,
        claim_token: u64,
        delay_ms: u64,
    ) -> Result<QueueSettled, Error> {
        self.send(ApiRequest::queue_nack(
            queue,
            item_id,
            claim_token,
            delay_ms,
        ))
        .await
    }

    /// Ready, in flight, delayed and dead-lettered counts, and the dead letters.
    pub async fn queue_status(&self, queue: &str) -> Result<QueueStatus, Error> {
        self.send(ApiRequest::queue_status(queue)).await
    }

    // ---- once (single-flight refresh) ----

    /// The value if fresh (`status: "fresh"`); else the refresh claim for
    /// the first caller (`"claimed"`: refresh, then [`Client::once_fulfil`]
    /// or [`Client::once_abandon`]); everyone else waits up to `wait_ms` for
    /// the claimant's value (`"fresh"`), or gets the claim if the claimant
    /// gives up (`"claimed"`). Without a wait, or when it ends:
    /// CONCURRENT_MODIFICATION. An agent asking while it holds the claim
    /// gets DEADLOCK with the `claim_id`.
    pub async fn once(&self, request: &OnceRequest) -> Result<OnceResult, Error> {
        self.send(ApiRequest::once(request)).await
    }

    /// Publishes the refreshed value under the claim and wakes the waiters.
    /// FENCED if the claim is no longer current: do not use the value.
    pub async fn once_fulfil(
        &self,
        key: &str,
        claim_id: u64,
        value: &Value,
    ) -> Result<OnceResult, Error> {
        self.send(ApiRequest::once_fulfil(key, claim_id, value))
            .await
    }

    /// Gives the claim up; the next waiter gets it.
    pub async fn once_abandon(&self, key: &str, claim_id: u64) -> Result<(), Error> {
        let _: Value = self.send(ApiRequest::once_abandon(key, claim_id)).await?;
        Ok(())
    }

    // ---- events ----

    /// One page of the audit trail under `prefix` from `from_revision`.
    pub async fn events(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
        limit: Option<u64>,
    ) -> Result<EventPage, Error> {
        self.send(ApiRequest::events(prefix, from_revision, limit))
            .await
    }

    /// Every event under `prefix` from `from_revision` (or from now), as
    /// they happen. Refusals before the stream starts (COMPACTED, bad
    /// arguments) are the `Err` of this call; once streaming, the stream
    /// ends with one `Err` item when the server cuts the watcher off or the
    /// connection ends, so a watcher never stops silently.
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<EventStream, Error> {
        let mut outgoing = self.outgoing(ApiRequest::watch(prefix, from_revision))?;
        let path = outgoing.uri.path().to_string();
        let url = format!("{}{}", self.base, outgoing.uri);
        outgoing.headers.push((
            hyper::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        ));
        // Only the answer's head is timed: the stream lives as long as the
        // caller wants.
        let (status, mut body) = self
            .transport
            .open_stream(outgoing, REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.transport_error(&path, e))?;
        if !(200..300).contains(&status) {
            // A refusal is a short envelope, read within the usual timeout.
            let whole = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut whole = Vec::new();
                while let Some(chunk) = body.next().await {
                    whole.extend_from_slice(&chunk?);
                }
                Ok(whole)
            })
            .await
            .unwrap_or(Err(Failure::Timeout(REQUEST_TIMEOUT)))
            .map_err(|e| self.transport_error(&path, e))?;
            return Err(match decode_envelope(status, &whole, &url) {
                Err(error) => error,
                Ok(_) => unexpected_answer(&url, status, "an event stream"),
            });
        }
        let state = WatchState {
            bytes: body,
            parser: sse::SseParser::new(),
            ready: std::collections::VecDeque::new(),
            url,
            resume_revision: from_revision,
            resume_repeats: false,
            done: false,
        };
        Ok(futures_util::stream::unfold(state, WatchState::next).boxed())
    }

    // ---- server ----

    /// Counts of sessions, locks and keys, and the server's version.
    pub async fn status(&self) -> Result<Status, Error> {
        self.send(ApiRequest::status()).await
    }

    /// Ok if the server answers `GET /healthz` with 200.
    pub async fn health(&self) -> Result<(), Error> {
        let (status, _, _) = self.exchange(ApiRequest::health()).await?;
        match status {
            200 => Ok(()),
            status => Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "Baton at {} is not healthy (HTTP {status}); check its log",
                    self.url()
                ),
            )),
        }
    }

    // ---- raw access ----

    /// Any request, answered with the envelope's `result` as JSON: what the
    /// CLI prints. `path` starts with `/` and may carry a query string.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        self.send_json(ApiRequest::raw(method, path, body)).await
    }

    /// Sends a described request and returns the `result` as JSON.
    pub async fn send_json(&self, request: ApiRequest) -> Result<Value, Error> {
        let (status, body, target) = self.exchange(request).await?;
        decode_envelope(status, &body, &format!("{}{target}", self.base))
    }

    /// Sends a request; returns the HTTP status, the body, and the request's
    /// target (`/path?query`) for messages.
    async fn exchange(
        &self,
        request: ApiRequest,
    ) -> Result<(u16, bytes::Bytes, hyper::Uri), Error> {
        let timeout = REQUEST_TIMEOUT + Duration::from_millis(request.wait_ms);
        let outgoing = self.outgoing(request)?;
        // A `Uri` clone shares its bytes: nothing is copied per request.
        let target = outgoing.uri.clone();
        let (status, body) = self
            .transport
            .exchange(outgoing, timeout)
            .await
            .map_err(|e| self.transport_error(target.path(), e))?;
        Ok((status, body, target))
    }

    /// Sends a described request and decodes its `result` as `T`.
    pub async fn send<T: DeserializeOwned>(&self, request: ApiRequest) -> Result<T, Error> {
        /// A success decoded straight into `T`, without a `Value` between.
        #[derive(Deserialize)]
        struct Success<T> {
            ok: bool,
            result: Option<T>,
        }
        let (status, body, target) = self.exchange(request).await?;
        if let Ok(Success {
            ok: true,
            result: Some(result),
        }) = serde_json::from_slice::<Success<T>>(&body)
        {
            return Ok(result);
        }
        // Errors, and answers of an unexpected shape: the general path.
        let url = format!("{}{target}", self.base);
        let result = decode_envelope(status, &body, &url)?;
        serde_json::from_value(result).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!(
                    "the answer of {url} does not have the expected shape ({e}); are client and server the same version?"
                ),
            )
        })
    }

    /// The request as it goes on the wire: target, this client's headers,
    /// and for a mutation its idempotency key, fence and release.
    fn outgoing(&self, request: ApiRequest) -> Result<Outgoing, Error> {
        let uri = request_target(&request)?;
        let mut headers = vec![(
            HeaderName::from_static("baton-agent"),
            self.agent_header.clone(),
        )];
        if let Some(session) = self.session {
            headers.push((
                HeaderName::from_static("baton-session"),
                HeaderValue::from(session),
            ));
        }
        let mutation = request.method != Method::GET && request.method != Method::HEAD;
        let body = if mutation {
            if let Some(key) = &self.idempotency_key {
                let value = HeaderValue::from_str(key).map_err(|_| {
                    Error::invalid(
                        "idempotency_key",
                        format!("{key:?} cannot go in an HTTP header: use printable ASCII"),
                    )
                })?;
                headers.push((HeaderName::from_static("idempotency-key"), value));
            }
            self.with_release_in(self.with_fence_in(request.body))
        } else {
            request.body
        };
        let body = match body {
            Some(body) => Some(serde_json::to_vec(&body).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot encode the request body: {e}"),
                )
            })?),
            None => None,
        };
        Ok(Outgoing {
            method: request.method,
            uri,
            headers,
            body,
        })
    }

    fn with_fence_in(&self, body: Option<Value>) -> Option<Value> {
        let Some(fence) = &self.fence else {
            return body;
        };
        let mut body = body.unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut body {
            map.insert(
                "fence".to_string(),
                serde_json::json!({ "key": fence.key, "token": fence.token }),
            );
        }
        Some(body)
    }

    fn with_release_in(&self, body: Option<Value>) -> Option<Value> {
        let Some(lock_id) = self.release else {
            return body;
        };
        let mut body = body.unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(map) = &mut body {
            map.insert("release".to_string(), Value::from(lock_id));
        }
        Some(body)
    }

    fn transport_error(&self, path: &str, failure: Failure) -> Error {
        transport_error(self.url(), path, failure)
    }
}

/// The request's origin-form target (`/path?query`). A path with a `.` or
/// `..` segment is refused: every HTTP client and proxy on the way may
/// resolve it away, and the key would then name another key. Characters a
/// URI cannot carry are percent-encoded (raw paths from the CLI).
fn request_target(request: &ApiRequest) -> Result<hyper::Uri, Error> {
    let target = request.path_and_query();
    let path = target.split('?').next().unwrap_or_default();
    if path.split('/').any(is_dot_segment) {
        return Err(Error::invalid(
            "key",
            format!(
                "{path:?} has a '.' or '..' segment, which a URL path cannot carry; rename the key"
            ),
        ));
    }
    let mut escaped = String::with_capacity(target.len());
    for byte in target.bytes() {
        if byte.is_ascii_graphic() && !b"\"#<>\\^`{|}".contains(&byte) {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    hyper::Uri::try_from(escaped).map_err(|e| {
        Error::invalid(
            "path",
            format!("{path:?} is not a URL path ({e}); it must start with '/'"),
        )
    })
}

/// `.` or `..`, also percent-encoded (`%2e`), as URL parsers resolve them.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// Checks the base URL (an `http://` URL with no path, query or fragment)
/// and makes the transport to it; also the URL as messages name it.
fn parse_base_url(url: &str) -> Result<(Transport, String), Error> {
    let trimmed = url.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| {
        Error::invalid(
            "url",
            format!("{url:?} is not a URL ({e}); write it like {DEFAULT_URL}"),
        )
    })?;
    if parsed.scheme() != "http" {
        return Err(Error::invalid(
            "url",
            format!(
                "{url:?}: only http:// is supported; put TLS in a proxy in front of `baton serve`"
            ),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.path() != "/" {
        return Err(Error::invalid(
            "url",
            format!("{url:?} must not have a path, query or fragment; write it like {DEFAULT_URL}"),
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(name)) => name.to_string(),
        Some(url::Host::Ipv4(address)) => address.to_string(),
        Some(url::Host::Ipv6(address)) => address.to_string(),
        None => {
            return Err(Error::invalid(
                "url",
                format!("{url:?} names no host; write it like {DEFAULT_URL}"),
            ));
        }
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let base = parsed.as_str().trim_end_matches('/').to_string();
    let authority = base.trim_start_matches("http://");
    let authority = HeaderValue::from_str(authority).map_err(|_| {
        Error::invalid(
            "url",
            format!("{url:?} has a host that cannot go in a header"),
        )
    })?;
    Ok((Transport::new(host, port, authority, CONNECT_TIMEOUT), base))
}

/// Decodes `{"ok": true, "result": R}` into `R` and `{"ok": false, "error": E}`
/// into `E`; anything else (a proxy's page, an unknown route) is explained.
fn decode_envelope(status: u16, body: &[u8], url: &str) -> Result<Value, Error> {
    #[derive(Deserialize)]
    struct Envelope {
        ok: bool,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<Value>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return Err(unexpected_answer(url, status, "a Baton JSON envelope"));
    };
    if envelope.ok {
        return Ok(envelope.result.unwrap_or(Value::Null));
    }
    let error = envelope.error.unwrap_or(Value::Null);
    match serde_json::from_value::<Error>(error.clone()) {
        Ok(error) => Err(error),
        // A code this client does not know (a newer server): keep the facts.
        Err(_) => Err(Error::new(
            ErrorCode::Internal,
            format!(
                "{url} answered HTTP {status} with an error this client does not understand: {error}"
            ),
        )
        .with_details(error)),
    }
}

fn unexpected_answer(url: &str, status: u16, expected: &str) -> Error {
    let code = match status {
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    Error::new(
        code,
        format!(
            "{url} answered HTTP {status} without {expected}; is BATON_URL (--url) pointing at a `baton serve` of this version?"
        ),
    )
    .with_details(serde_json::json!({ "url": url, "http_status": status }))
}

/// UNAVAILABLE for a request that got no answer, naming the URL and what to do.
fn transport_error(base: &str, path: &str, failure: Failure) -> Error {
    let message = match failure {
        Failure::Connect(error) => {
            format!("cannot reach Baton at {base} ({error}); {START_HINT}")
        }
        Failure::ConnectTimeout(after) => format!(
            "cannot reach Baton at {base} (no connection within {} ms); {START_HINT}",
            after.as_millis()
        ),
        Failure::Timeout(after) => format!(
            "Baton at {base} did not answer {path} within {} ms; a mutation may or may not have been applied: retry it with the same idempotency key",
            after.as_millis()
        ),
        Failure::Exchange(cause) => format!(
            "the request to Baton at {base}{path} failed ({cause}); a mutation may or may not have been applied: retry it with the same idempotency key; {START_HINT}"
        ),
    };
    Error::new(ErrorCode::Unavailable, message).with_details(serde_json::json!({ "url": base }))
}

/// The innermost cause, e.g. "Connection refused (os error 111)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The state behind [`Client::watch`]'s stream.
struct WatchState<S> {
    bytes: S,
    parser: sse::SseParser,
    ready: std::collections::VecDeque<sse::SseMessage>,
    url: String,
    /// The revision to resume from, for the messages of a final error: the
    /// last event's own revision, not the next one. A revision's events
    /// (a release and the grant it makes) may be cut apart by a broken
    /// stream; resuming after it would skip the rest, so those already
    /// received may come again instead.
    resume_revision: Option<u64>,
    /// Whether an event of `resume_revision` was received already.
    resume_repeats: bool,
    done: bool,
}

impl<S> WatchState<S>
where
    S: Stream<Item = Result<bytes::Bytes, Failure>> + Unpin,
{
    async fn next(mut self) -> Option<(Result<Event, Error>, WatchState<S>)> {
        loop {
            if self.done {
                return None;
            }
            while let Some(message) = self.ready.pop_front() {
                if let Some(item) = self.item(message) {
                    return Some((item, self));
                }
            }
            match self.bytes.next().await {
                Some(Ok(chunk)) => self.ready.extend(self.parser.push(chunk.as_ref())),
                Some(Err(failure)) => {
                    self.done = true;
                    let cause = match failure {
                        Failure::Exchange(cause) => cause,
                        other => format!("{other:?}"),
                    };
                    let error = Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the watch stream from {} broke ({cause}); {}",
                            self.url,
                            self.resume_hint()
                        ),
                    );
                    return Some((Err(error), self));
                }
                None => {
                    self.done = true;
                    let error = Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "{} ended the watch stream (server stopped?); {}",
                            self.url,
                            self.resume_hint()
                        ),
                    );
                    return Some((Err(error), self));
                }
            }
        }
    }

    /// The stream item for one SSE message, if it is one.
    fn item(&mut self, message: sse::SseMessage) -> Option<Result<Event, Error>> {
        match message.event.as_str() {
            "baton" | "message" => match serde_json::from_str::<Event>(&message.data) {
                Ok(event) => {
                    self.resume_revision = Some(event.revision);
                    self.resume_repeats = true;
                    Some(Ok(event))
                }
                Err(e) => {
                    self.done = true;
                    Some(Err(Error::new(
                        ErrorCode::Internal,
                        format!(
                            "{} sent an event this client cannot read ({e}); are client and server the same version?",
                            self.url
                        ),
                    )))
                }
            },
            "cut_off" => {
                self.done = true;
                Some(Err(cut_off_error(&message.data, &self.resume_hint())))
            }
            _ => None,
        }
    }

    fn resume_hint(&self) -> String {
        match (self.resume_revision, self.resume_repeats) {
            (Some(revision), true) => format!(
                "watch again with from_revision {revision} to miss nothing (the events of revision {revision} received so far come again)"
            ),
            (Some(revision), false) => {
                format!("watch again with from_revision {revision} to miss nothing")
            }
            (None, _) => "watch again to go on".to_string(),
        }
    }
}

/// The error ending a watch that the server cut off: the server's own if
/// the data carries one, else a plain explanation.
fn cut_off_error(data: &str, resume_hint: &str) -> Error {
    if let Ok(error) = serde_json::from_str::<Error>(data) {
        return error;
    }
    #[derive(Deserialize)]
    struct Wrapped {
        error: Error,
    }
    if let Ok(wrapped) = serde_json::from_str::<Wrapped>(data) {
        return wrapped.error;
    }
    Error::new(
        ErrorCode::Unavailable,
        format!("the server cut this watcher off because it fell too far behind; {resume_hint}"),
    )
}

#[cfg(test)]
mod tests;
