//! HTTP/JSON transport: turn requests into core commands or reads, and
//! replies into the envelope with the contract's status codes. No rule of
//! Baton lives here.

use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, extract::DefaultBodyLimit};
use baton_core::{
    Command, Compare, Envelope, Error, ErrorCode, Fence, LockAcquire, LockMode, Op, Patch, Txn,
    TxnOp,
};
use futures_util::stream::{self, Stream};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::ServeConfig;
use crate::events::{Stamped, Start};
use crate::metrics_names as m;
use crate::sequencer::Sequencer;

pub const AGENT_HEADER: &str = "baton-agent";
pub const SESSION_HEADER: &str = "baton-session";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Default and largest page for list-style reads.
const DEFAULT_PAGE: usize = 100;

/// What every handler shares. One `Arc` so that axum's per-request clone
/// of the state is one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

pub struct AppShared {
    sequencer: Arc<Sequencer>,
    config: ServeConfig,
    metrics: PrometheusHandle,
    watchers: AtomicUsize,
}

impl std::ops::Deref for AppState {
    type Target = AppShared;
    fn deref(&self) -> &AppShared {
        &self.0
    }
}

impl AppState {
    pub fn new(sequencer: Arc<Sequencer>, config: ServeConfig, metrics: PrometheusHandle) -> Self {
        AppState(Arc::new(AppShared {
            sequencer,
            config,
            metrics,
            watchers: AtomicUsize::new(0),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route(
            "/healthz",
            get(|| async { reply_json(Ok(json!({ "status": "up" }))) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/status", get(status))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sessions", post(session_open).get(session_list))
        .route("/v1/sessions/{id}", get(session_get).delete(session_close))
        .route("/v1/sessions/{id}/keepalive", post(session_keepalive))
        .route("/v1/sessions/{id}/kill", post(session_kill))
        .route("/v1/locks", post(lock_acquire).get(lock_list))
        .route("/v1/locks/{id}", get(lock_get).delete(lock_release))
        .route("/v1/locks/{id}/renew", post(lock_renew))
        .route("/v1/fence", get(fence_check))
        .route("/v1/kv", get(kv_list))
        .route(
            "/v1/kv/{*key}",
            get(kv_get).put(kv_put).patch(kv_patch).delete(kv_delete),
        )
        .route("/v1/history/{*key}", get(kv_history))
        .route("/v1/txn", post(txn))
        .route("/v1/counters/add", post(counter_add))
        .route("/v1/quotas/{*quota}", get(quota_get).put(quota_set))
        .route("/v1/reservations", post(quota_reserve))
        .route("/v1/reservations/{id}/commit", post(quota_commit))
        .route(
            "/v1/reservations/{id}",
            axum::routing::delete(quota_release),
        )
        .route("/v1/rate/take", post(rate_take))
        .route("/v1/queues/enqueue", post(queue_enqueue))
        .route("/v1/queues/claim", post(queue_claim))
        .route("/v1/queues/ack", post(queue_ack))
        .route("/v1/queues/nack", post(queue_nack))
        .route("/v1/queue-status/{*queue}", get(queue_status))
        .route("/v1/semaphores", post(semaphore_acquire))
        .route("/v1/once", post(once))
        .route("/v1/once/fulfil", post(once_fulfil))
        .route("/v1/once/abandon", post(once_abandon))
        .route("/v1/buckets/{*bucket}", get(bucket_get))
        .route("/v1/events", get(events))
        .route("/v1/watch", get(watch))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                reply_json::<Value>(Err(Error::invalid(
                    "method",
                    format!(
                        "{method} is not one of the methods of {}; see GET /v1/openapi.json",
                        uri.path()
                    ),
                )))
            },
        )
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The paths whose last segment is a name that may hold slashes, and what
/// that name is called in an error.
const NAMED_PATHS: [(&str, &str); 5] = [
    ("/v1/kv/", "key"),
    ("/v1/history/", "key"),
    ("/v1/quotas/", "quota"),
    ("/v1/queue-status/", "queue"),
    ("/v1/buckets/", "bucket"),
];

/// No route matched. A named path with the name left out (`PUT /v1/kv/`)
/// is bad input, as the same empty key is in a body, not a missing endpoint.
async fn no_such_endpoint(uri: axum::http::Uri) -> Response {
    let empty_name = NAMED_PATHS.iter().find(|(prefix, _)| uri.path() == *prefix);
    let error = match empty_name {
        Some((_, field)) => Error::invalid(field, "must not be empty"),
        None => Error::new(
            ErrorCode::NotFound,
            "no such endpoint; see GET /v1/openapi.json",
        ),
    };
    reply_json::<Value>(Err(error))
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = status_label(response.status());
    metrics::counter!(m::REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// Labels of the request counter without an allocation for the usual
/// values: this runs on every request.
fn method_label(method: &axum::http::Method) -> metrics::SharedString {
    use axum::http::Method;
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return metrics::SharedString::from(method.as_str().to_string()),
    };
    metrics::SharedString::const_str(name)
}

fn status_label(status: StatusCode) -> metrics::SharedString {
    let code = match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(code)
}

// ---- replies ----------------------------------------------------------------

/// The envelope with the contract's HTTP status, plus `Retry-After`.
pub fn reply_json<T: serde::Serialize>(reply: Result<T, Error>) -> Response {
    let status = match &reply {
        Ok(_) => StatusCode::OK,
        Err(error) => StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let retry_after = reply.as_ref().err().and_then(|e| e.retry_after_ms);
    // Straight to bytes: no `Value` tree between the reply and the wire.
    let body = serde_json::to_vec(&Envelope::of(&reply)).unwrap_or_else(|e| {
        let error = Error::new(ErrorCode::Internal, format!("cannot encode the reply: {e}"));
        serde_json::to_vec(&Envelope::<()>::of(&Err(error))).unwrap_or_default()
    });
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(ms) = retry_after
        && let Ok(value) = HeaderValue::from_str(&ms.div_ceil(1000).to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

// ---- extraction ---------------------------------------------------------------

/// Unwrap a parsed part of a request, or answer its error right away.
macro_rules! parsed {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => return reply_json::<Value>(Err(error)),
        }
    };
}

/// A JSON body; errors name the offending field. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "the request body is larger than the server's max_body_bytes".to_string()
                } else {
                    rejection.body_text()
                };
                reply_json::<Value>(Err(Error::invalid("body", message)))
            })?;
        decode_body(&bytes)
            .map(JsonBody)
            .map_err(|e| reply_json::<Value>(Err(e)))
    }
}

/// An optional field that, when sent, must hold a value: `"release": null`
/// or `"fence": null` is refused (naming the field) rather than read as
/// absent, since a client that meant to send one would then write without it.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Decode a request body, naming the field path of any error.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let decoded = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        Error::invalid(&field, error.into_inner())
    })?;
    // One JSON value and nothing after it: `{"value":1} {"if_version":7}`
    // must not write without the condition its sender meant.
    deserializer.end().map_err(|e| {
        Error::invalid(
            "body",
            format!("{e}: send one JSON object and nothing after it"),
        )
    })?;
    Ok(decoded)
}

fn query<T: DeserializeOwned>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Error::invalid("query", e.body_text()))
}

fn path_id(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    what: &str,
) -> Result<u64, Error> {
    let Path(raw) = path.map_err(|e| Error::invalid(what, e.body_text()))?;
    raw.parse().map_err(|_| {
        Error::invalid(
            what,
            format!("{raw:?} is not a {what} (a positive integer)"),
        )
    })
}

/// Who is asking: agent, session and idempotency key from the headers.
struct Caller {
    agent: String,
    session: Option<u64>,
    idempotency_key: Option<String>,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| Error::invalid(name, "header is not valid text")),
    }
}

fn caller(headers: &HeaderMap) -> Result<Caller, Error> {
    let agent = header_text(headers, AGENT_HEADER)?
        .ok_or_else(|| {
            Error::invalid(
                "Baton-Agent",
                "every write names its agent: send the Baton-Agent header",
            )
        })?
        .to_string();
    let session = match header_text(headers, SESSION_HEADER)? {
        None | Some("") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            Error::invalid(
                "Baton-Session",
                format!("{text:?} is not a session id (a positive integer)"),
            )
        })?),
    };
    let idempotency_key = header_text(headers, IDEMPOTENCY_HEADER)?.map(str::to_string);
    Ok(Caller {
        agent,
        session,
        idempotency_key,
    })
}

impl AppState {
    async fn run(&self, headers: &HeaderMap, op: Op, fence: Option<Fence>) -> Response {
        self.run_releasing(headers, op, fence, None).await
    }

    /// A state mutation, which may also release a lock the caller holds
    /// (`"release": <lock id>`) in the same command.
    async fn run_releasing(
        &self,
        headers: &HeaderMap,
        op: Op,
        fence: Option<Fence>,
        release: Option<u64>,
    ) -> Response {
        let reply = match caller(headers) {
            Ok(caller) => {
                let command = Command {
                    agent: caller.agent,
                    session: caller.session,
                    idempotency_key: caller.idempotency_key,
                    fence,
                    release,
                    op,
                };
                self.sequencer.submit(command).await
            }
            Err(error) => Err(error),
        };
        reply_json(reply)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&baton_core::StateMachine) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let machine = self
            .sequencer
            .shared()
            .machine
            .read()
            .map_err(|_| Error::new(ErrorCode::Internal, "state lock poisoned"))?;
        f(&machine)
    }
}

// ---- health, status, metrics ---------------------------------------------------

#[utoipa::path(get, path = "/readyz", summary = "Ready for writes (503 after a storage failure)", responses((status = 200, description = "ok envelope", body = OkEnvelope<serde_json::Value>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn readyz(State(state): State<AppState>) -> Response {
    match state
        .sequencer
        .shared()
        .failed
        .lock()
        .expect("failed lock")
        .clone()
    {
        None => reply_json(Ok(json!({ "status": "ready" }))),
        Some(why) => reply_json::<Value>(Err(Error::new(
            ErrorCode::Unavailable,
            format!("not ready for writes: {why}"),
        ))),
    }
}

#[utoipa::path(get, path = "/v1/status", summary = "Server health and counts", responses((status = 200, description = "ok envelope", body = OkEnvelope<serde_json::Value>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn status(State(state): State<AppState>) -> Response {
    let stats = state.read(|m| Ok(m.stats()));
    reply_json(stats.map(|stats| {
        let mut value = serde_json::to_value(stats).expect("stats serialize");
        value["version"] = json!(env!("CARGO_PKG_VERSION"));
        let kept = state.sequencer.shared().events.kept();
        value["events_from_revision"] = json!(kept.from_revision);
        value["events_kept"] = json!(kept);
        value["data_dir"] = json!(state.config.store());
        value["snapshot"] = json!(
            *state
                .sequencer
                .shared()
                .snapshot
                .lock()
                .expect("snapshot status lock")
        );
        value["writable"] = json!(
            state
                .sequencer
                .shared()
                .failed
                .lock()
                .expect("failed lock")
                .is_none()
        );
        value
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Ok(stats) = state.read(|m| Ok(m.stats())) {
        m::set_gauges(&stats);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    use utoipa::OpenApi;
    axum::Json(ApiDoc::openapi()).into_response()
}

// ---- sessions ---------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionOpenBody {
    ttl_ms: u64,
}

#[utoipa::path(post, path = "/v1/sessions", summary = "Open a session: an agent's identity and liveness", request_body = SessionOpenBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SessionInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_open(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SessionOpenBody>,
) -> Response {
    state
        .run(
            &headers,
            Op::SessionOpen {
                ttl_ms: body.ttl_ms,
            },
            None,
        )
        .await
}

#[utoipa::path(get, path = "/v1/sessions", summary = "Live sessions", responses((status = 200, description = "ok envelope", body = OkEnvelope<serde_json::Value>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_list(State(state): State<AppState>) -> Response {
    reply_json(state.read(|m| Ok(json!({ "sessions": m.sessions() }))))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", summary = "One session", params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SessionInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_get(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(path_id(id, "session_id").and_then(|id| state.read(|m| m.session(id))))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[utoipa::path(post, path = "/v1/sessions/{id}/keepalive", summary = "Keep a session alive", request_body = Empty, params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SessionInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_keepalive(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(_): JsonBody<Empty>,
) -> Response {
    let session_id = parsed!(path_id(id, "session_id"));
    state
        .run(&headers, Op::SessionKeepalive { session_id }, None)
        .await
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", summary = "Close a session and release what it holds", params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SessionInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_close(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let session_id = parsed!(path_id(id, "session_id"));
    state
        .run(&headers, Op::SessionClose { session_id }, None)
        .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/sessions/{id}/kill", summary = "Admin: end a session; its locks are taken away and its waiters fail", request_body = KillBody, params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SessionInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn session_kill(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<KillBody>,
) -> Response {
    let session_id = parsed!(path_id(id, "session_id"));
    state
        .run(
            &headers,
            Op::SessionKill {
                session_id,
                reason: body.reason,
            },
            None,
        )
        .await
}

// ---- locks ------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    keys: Vec<String>,
    #[serde(default)]
    mode: LockMode,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    lock_delay_ms: u64,
    /// Answer the grant with the locked keys' values (`values`).
    #[serde(default)]
    read: bool,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/locks", summary = "Acquire one or more keys, all or nothing; with wait_ms the request blocks until granted", request_body = AcquireBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::LockInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn lock_acquire(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AcquireBody>,
) -> Response {
    parsed!(state.check_wait(body.wait_ms));
    let acquire = LockAcquire {
        keys: body.keys,
        mode: body.mode,
        ttl_ms: body.ttl_ms,
        wait_ms: body.wait_ms,
        lock_delay_ms: body.lock_delay_ms,
        read: body.read,
    };
    state
        .run_waiting(&headers, Op::LockAcquire(acquire), body.fence)
        .await
}

impl AppState {
    /// A blocking wait may not exceed the server's `max_wait_ms`.
    fn check_wait(&self, wait_ms: u64) -> Result<(), Error> {
        if wait_ms > self.config.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!(
                    "at most {} ms on this server (--max-wait)",
                    self.config.max_wait_ms
                ),
            ));
        }
        Ok(())
    }

    /// Run a command that may wait (a lock or a `once`): the writer answers
    /// when it is granted or fails; if this future is dropped (client gone)
    /// the writer withdraws the request; at shutdown it is withdrawn too.
    async fn run_waiting(&self, headers: &HeaderMap, op: Op, fence: Option<Fence>) -> Response {
        let mut stop = self.sequencer.stop_signal();
        let run = self.run(headers, op, fence);
        match stop.as_mut() {
            Some(stop) => tokio::select! {
                response = run => response,
                _ = stop.wait_for(|stopping| *stopping) => reply_json::<Value>(Err(Error::new(
                    ErrorCode::Unavailable,
                    "the server is shutting down; your waiting request was withdrawn; retry against a running server",
                ))),
            },
            None => run.await,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LockListQuery {
    key: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/locks", summary = "Holders and waiters of a key (?key=) or of every locked key under a prefix (?prefix=)", params(LockListQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::KeyLocksInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn lock_list(
    State(state): State<AppState>,
    q: Result<Query<LockListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let reply = query(q).and_then(|q| match (q.key, q.prefix) {
        (Some(key), None) => state
            .read(|m| m.key_locks(&key))
            .map(|info| serde_json::to_value(info).expect("serializes")),
        (None, prefix) => state.read(|m| {
            let keys = m.locks_by_prefix(
                prefix.as_deref().unwrap_or(""),
                q.limit.unwrap_or(DEFAULT_PAGE),
            );
            Ok(json!({ "keys": keys }))
        }),
        (Some(_), Some(_)) => Err(Error::invalid("query", "give key or prefix, not both")),
    });
    reply_json(reply)
}

#[utoipa::path(get, path = "/v1/locks/{id}", summary = "A lock's state: live, or how it ended", params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::LockState>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn lock_get(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(path_id(id, "lock_id").and_then(|id| state.read(|m| m.lock_state(id))))
}

#[utoipa::path(delete, path = "/v1/locks/{id}", summary = "Release (or withdraw) a lock; idempotent", params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::ReleaseResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn lock_release(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let lock_id = parsed!(path_id(id, "lock_id"));
    state.run(&headers, Op::LockRelease { lock_id }, None).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[utoipa::path(post, path = "/v1/locks/{id}/renew", summary = "Renew a held lock's lease", request_body = RenewBody, params(("id" = u64, Path, description = "lock or session id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::LockInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn lock_renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<RenewBody>,
) -> Response {
    let lock_id = parsed!(path_id(id, "lock_id"));
    state
        .run(
            &headers,
            Op::LockRenew {
                lock_id,
                ttl_ms: body.ttl_ms,
            },
            None,
        )
        .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FenceQuery {
    key: String,
    token: u64,
}

#[utoipa::path(get, path = "/v1/fence", summary = "Is this fencing token a current holder's?", params(FenceQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::FenceCheck>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn fence_check(
    State(state): State<AppState>,
    q: Result<Query<FenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply_json(query(q).and_then(|q| state.read(|m| m.check_fence(&q.key, q.token))))
}

// ---- state ------------------------------------------------------------------

fn key_path(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, Error> {
    path.map(|Path(key)| key)
        .map_err(|e| Error::invalid("key", e.body_text()))
}

#[utoipa::path(get, path = "/v1/kv/{key}", summary = "Read a key", params(("key" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::GetResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_get(
    State(state): State<AppState>,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(key_path(key).and_then(|key| state.read(|m| m.get(&key))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: Value,
    #[serde(default)]
    if_version: Option<u64>,
    #[serde(default)]
    if_absent: bool,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
    /// A lock you hold (its `lock_id`), released in the same commit once this
    /// write applies: the next waiter is granted at once. Refused as a whole
    /// if the lock is not held by you; a refused write (or a txn whose
    /// compares failed) releases nothing.
    #[serde(default, deserialize_with = "present")]
    release: Option<u64>,
}

#[utoipa::path(put, path = "/v1/kv/{key}", summary = "Write a key (if_version / if_absent for compare-and-set)", request_body = PutBody, params(("key" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::WriteResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<PutBody>,
) -> Response {
    let key = parsed!(key_path(key));
    let op = Op::Put {
        key,
        value: body.value,
        if_version: body.if_version,
        if_absent: body.if_absent,
        ttl_ms: body.ttl_ms,
    };
    state
        .run_releasing(&headers, op, body.fence, body.release)
        .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default)]
    merge: Option<Value>,
    #[serde(default)]
    json_patch: Option<Value>,
    #[serde(default)]
    if_version: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
    /// A lock you hold (its `lock_id`), released in the same commit once this
    /// write applies: the next waiter is granted at once. Refused as a whole
    /// if the lock is not held by you; a refused write (or a txn whose
    /// compares failed) releases nothing.
    #[serde(default, deserialize_with = "present")]
    release: Option<u64>,
}

#[utoipa::path(patch, path = "/v1/kv/{key}", summary = "Change part of a value: RFC 7396 merge or RFC 6902 JSON Patch", request_body = PatchBody, params(("key" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::WriteResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_patch(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<PatchBody>,
) -> Response {
    let patch = match (body.merge, body.json_patch) {
        (Some(patch), None) => Patch::Merge { patch },
        (None, Some(ops)) => Patch::Json { ops },
        _ => {
            return reply_json::<Value>(Err(Error::invalid(
                "body",
                "give exactly one of merge (RFC 7396) or json_patch (RFC 6902)",
            )));
        }
    };
    let key = parsed!(key_path(key));
    state
        .run_releasing(
            &headers,
            Op::Patch {
                key,
                patch,
                if_version: body.if_version,
            },
            body.fence,
            body.release,
        )
        .await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    if_version: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
    /// A lock you hold (its `lock_id`), released in the same commit once this
    /// write applies: the next waiter is granted at once. Refused as a whole
    /// if the lock is not held by you; a refused write (or a txn whose
    /// compares failed) releases nothing.
    #[serde(default, deserialize_with = "present")]
    release: Option<u64>,
}

#[utoipa::path(delete, path = "/v1/kv/{key}", summary = "Delete a key", request_body = DeleteBody, params(("key" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::DeleteResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<DeleteBody>,
) -> Response {
    let key = parsed!(key_path(key));
    state
        .run_releasing(
            &headers,
            Op::Delete {
                key,
                if_version: body.if_version,
            },
            body.fence,
            body.release,
        )
        .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/kv", summary = "Keys under a prefix, paginated", params(ListQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::ListResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    reply_json(query(q).and_then(|q| {
        state.read(|m| {
            m.list(
                &q.prefix,
                q.after.as_deref(),
                q.limit.unwrap_or(DEFAULT_PAGE),
            )
        })
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/history/{key}", summary = "Recent versions of a key", params(("key" = String, Path, description = "namespace/name"), HistoryQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::HistoryResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn kv_history(
    State(state): State<AppState>,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let reply = key_path(key).and_then(|key| {
        let limit = query(q)?.limit.unwrap_or(DEFAULT_PAGE);
        state.read(|m| m.history(&key, limit))
    });
    reply_json(reply)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compares: Vec<Compare>,
    #[serde(default)]
    success: Vec<TxnOp>,
    #[serde(default)]
    failure: Vec<TxnOp>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
    /// A lock you hold (its `lock_id`), released in the same commit once this
    /// write applies: the next waiter is granted at once. Refused as a whole
    /// if the lock is not held by you; a refused write (or a txn whose
    /// compares failed) releases nothing.
    #[serde(default, deserialize_with = "present")]
    release: Option<u64>,
}

#[utoipa::path(post, path = "/v1/txn", summary = "Compares, then one branch of ops, all or nothing", request_body = TxnBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::TxnResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn txn(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TxnBody>,
) -> Response {
    let op = Op::Txn(Txn {
        compares: body.compares,
        success: body.success,
        failure: body.failure,
    });
    state
        .run_releasing(&headers, op, body.fence, body.release)
        .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CounterBody {
    key: String,
    delta: i64,
    #[serde(default)]
    min: Option<i64>,
    #[serde(default)]
    max: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
    /// A lock you hold (its `lock_id`), released in the same commit once this
    /// write applies: the next waiter is granted at once. Refused as a whole
    /// if the lock is not held by you; a refused write (or a txn whose
    /// compares failed) releases nothing.
    #[serde(default, deserialize_with = "present")]
    release: Option<u64>,
}

#[utoipa::path(post, path = "/v1/counters/add", summary = "Add to a counter without crossing its bounds", request_body = CounterBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::CounterResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn counter_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CounterBody>,
) -> Response {
    let op = Op::CounterAdd {
        key: body.key,
        delta: body.delta,
        min: body.min,
        max: body.max,
    };
    state
        .run_releasing(&headers, op, body.fence, body.release)
        .await
}

// ---- quotas and rate limits ---------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QuotaSetBody {
    capacity: u64,
    #[serde(default)]
    reset_used: bool,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(put, path = "/v1/quotas/{quota}", summary = "Create a quota or change its capacity", request_body = QuotaSetBody, params(("quota" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::QuotaInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn quota_set(
    State(state): State<AppState>,
    headers: HeaderMap,
    quota: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<QuotaSetBody>,
) -> Response {
    let quota = parsed!(key_path(quota));
    state
        .run(
            &headers,
            Op::QuotaSet {
                quota,
                capacity: body.capacity,
                reset_used: body.reset_used,
            },
            body.fence,
        )
        .await
}

#[utoipa::path(get, path = "/v1/quotas/{quota}", summary = "A quota's capacity, use and reservations", params(("quota" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::QuotaInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn quota_get(
    State(state): State<AppState>,
    quota: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(key_path(quota).and_then(|quota| state.read(|m| m.quota(&quota))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    quota: String,
    amount: u64,
    ttl_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/reservations", summary = "Reserve part of a quota before spending it", request_body = ReserveBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::ReservationInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn quota_reserve(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReserveBody>,
) -> Response {
    let op = Op::QuotaReserve {
        quota: body.quota,
        amount: body.amount,
        ttl_ms: body.ttl_ms,
    };
    state.run(&headers, op, body.fence).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    actual: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/reservations/{id}/commit", summary = "Consume what was actually spent; the rest returns to the pool", request_body = CommitBody, params(("id" = u64, Path, description = "reservation id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SettleResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn quota_commit(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<CommitBody>,
) -> Response {
    let reservation_id = parsed!(path_id(id, "reservation_id"));
    state
        .run(
            &headers,
            Op::QuotaCommit {
                reservation_id,
                actual: body.actual,
            },
            body.fence,
        )
        .await
}

#[utoipa::path(delete, path = "/v1/reservations/{id}", summary = "Return a reservation to the pool; idempotent", params(("id" = u64, Path, description = "reservation id")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::SettleResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn quota_release(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let reservation_id = parsed!(path_id(id, "reservation_id"));
    state
        .run(&headers, Op::QuotaRelease { reservation_id }, None)
        .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RateTakeBody {
    bucket: String,
    #[serde(default = "one")]
    tokens: u64,
    rate_per_sec: u64,
    burst: u64,
    /// Queue (FIFO) up to this long for the tokens instead of refusing.
    #[serde(default)]
    wait_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

fn one() -> u64 {
    1
}

#[utoipa::path(post, path = "/v1/rate/take", summary = "Take tokens from a shared token bucket, or get RATE_LIMITED with retry_after_ms", request_body = RateTakeBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::RateResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn rate_take(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RateTakeBody>,
) -> Response {
    parsed!(state.check_wait(body.wait_ms));
    let op = Op::RateTake {
        bucket: body.bucket,
        tokens: body.tokens,
        rate_per_sec: body.rate_per_sec,
        burst: body.burst,
        wait_ms: body.wait_ms,
    };
    state.run_waiting(&headers, op, body.fence).await
}

#[utoipa::path(get, path = "/v1/buckets/{bucket}", summary = "A bucket's tokens and who spends them", params(("bucket" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::BucketInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn bucket_get(
    State(state): State<AppState>,
    bucket: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(key_path(bucket).and_then(|bucket| state.read(|m| m.bucket(&bucket))))
}

// ---- once (single-flight refresh) ------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OnceBody {
    key: String,
    max_age_ms: u64,
    claim_ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/once", summary = "Single-flight refresh: the fresh value, a refresh claim for the first caller, or a wait for the claimant's value", request_body = OnceBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::OnceResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn once(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<OnceBody>,
) -> Response {
    parsed!(state.check_wait(body.wait_ms));
    let op = Op::Once {
        key: body.key,
        max_age_ms: body.max_age_ms,
        claim_ttl_ms: body.claim_ttl_ms,
        wait_ms: body.wait_ms,
    };
    state.run_waiting(&headers, op, body.fence).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FulfilBody {
    key: String,
    claim_id: u64,
    value: Value,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/once/fulfil", summary = "Publish the refreshed value under your claim; waiters get it", request_body = FulfilBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::OnceResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn once_fulfil(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<FulfilBody>,
) -> Response {
    let op = Op::OnceFulfil {
        key: body.key,
        claim_id: body.claim_id,
        value: body.value,
    };
    state.run(&headers, op, body.fence).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AbandonBody {
    key: String,
    claim_id: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/once/abandon", summary = "Give up a refresh claim; the next waiter gets it", request_body = AbandonBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<serde_json::Value>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn once_abandon(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AbandonBody>,
) -> Response {
    state
        .run(
            &headers,
            Op::OnceAbandon {
                key: body.key,
                claim_id: body.claim_id,
            },
            body.fence,
        )
        .await
}

// ---- queues -----------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    queue: String,
    item: Value,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/queues/enqueue", summary = "Append an item to a FIFO work queue (use Idempotency-Key to dedupe retries)", request_body = EnqueueBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::EnqueueResult>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn queue_enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Response {
    let op = Op::QueueEnqueue {
        queue: body.queue,
        item: body.item,
        max_attempts: body.max_attempts,
    };
    state.run(&headers, op, body.fence).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    queue: String,
    visibility_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/queues/claim", summary = "Claim the oldest ready item for visibility_ms; {empty: true} when none is ready", request_body = ClaimBody, responses((status = 200, description = "ok envelope: a QueueItem or a QueueEmpty", body = OkEnvelope<baton_core::QueueItem>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn queue_claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Response {
    state
        .run(
            &headers,
            Op::QueueClaim {
                queue: body.queue,
                visibility_ms: body.visibility_ms,
            },
            body.fence,
        )
        .await
}

/// An ack takes no `delay_ms`: one given is refused as an unknown field,
/// not silently dropped (it belongs to a nack).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    queue: String,
    item_id: u64,
    claim_token: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NackBody {
    queue: String,
    item_id: u64,
    claim_token: u64,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/queues/ack", summary = "Done with a claimed item; FENCED if the claim expired", request_body = AckBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::QueueSettled>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn queue_ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AckBody>,
) -> Response {
    state
        .run(
            &headers,
            Op::QueueAck {
                queue: body.queue,
                item_id: body.item_id,
                claim_token: body.claim_token,
            },
            body.fence,
        )
        .await
}

#[utoipa::path(post, path = "/v1/queues/nack", summary = "Give a claimed item back (visible again after delay_ms; dead-lettered after max_attempts)", request_body = NackBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::QueueSettled>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn queue_nack(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NackBody>,
) -> Response {
    let op = Op::QueueNack {
        queue: body.queue,
        item_id: body.item_id,
        claim_token: body.claim_token,
        delay_ms: body.delay_ms,
    };
    state.run(&headers, op, body.fence).await
}

#[utoipa::path(get, path = "/v1/queue-status/{queue}", summary = "Depth, in-flight, delayed, dead letters and the oldest item's age", params(("queue" = String, Path, description = "namespace/name")), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::QueueStatus>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn queue_status(
    State(state): State<AppState>,
    queue: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    reply_json(key_path(queue).and_then(|queue| state.read(|m| m.queue_status(&queue))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SemaphoreBody {
    key: String,
    permits: u64,
    capacity: u64,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default, deserialize_with = "present")]
    fence: Option<Fence>,
}

#[utoipa::path(post, path = "/v1/semaphores", summary = "Take permits of a counting semaphore (a weighted shared lock: release and renew it as a lock)", request_body = SemaphoreBody, responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::LockInfo>), (status = "4XX", description = "error envelope", body = ErrorEnvelope)))]
async fn semaphore_acquire(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SemaphoreBody>,
) -> Response {
    parsed!(state.check_wait(body.wait_ms));
    let op = Op::SemaphoreAcquire {
        key: body.key,
        permits: body.permits,
        capacity: body.capacity,
        ttl_ms: body.ttl_ms,
        wait_ms: body.wait_ms,
    };
    state.run_waiting(&headers, op, body.fence).await
}

// ---- events and watch -----------------------------------------------------------

/// A page of the audit trail: the events' JSON as kept, not re-encoded.
#[derive(serde::Serialize)]
struct EventsPage {
    events: Vec<Stamped>,
    next_revision: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    #[serde(default)]
    prefix: String,
    from_revision: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/events", summary = "Audit trail: events from a revision", params(EventsQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<serde_json::Value>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let reply = query(q).and_then(|q| {
        let limit = match q.limit {
            Some(0) => return Err(Error::invalid("limit", "must be at least 1")),
            limit => limit
                .unwrap_or(DEFAULT_PAGE)
                .min(state.config.limits.max_list_page),
        };
        let start = q.from_revision.map_or(Start::Oldest, Start::Revision);
        let (events, next_revision) = state
            .sequencer
            .shared()
            .events
            .page(&q.prefix, start, limit)?;
        Ok(EventsPage {
            events,
            next_revision,
        })
    });
    reply_json(reply)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WatchQuery {
    #[serde(default)]
    prefix: String,
    from_revision: Option<u64>,
}

/// Decrements the live-watcher count when a stream ends.
struct WatcherSlot(AppState);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse_event_id(text: &str) -> Option<(u64, u32)> {
    let (revision, index) = text.split_once('.')?;
    Some((revision.parse().ok()?, index.parse().ok()?))
}

fn sse(stamped: &Stamped) -> SseEvent {
    SseEvent::default()
        .event("baton")
        .id(stamped.id())
        .data(stamped.json.get())
}

#[utoipa::path(get, path = "/v1/watch", summary = "Server-Sent Events: every event under a prefix, resumable with Last-Event-ID", params(WatchQuery), responses((status = 200, description = "ok envelope", body = OkEnvelope<baton_core::Event>), (status = "4XX", description = "error envelope", body = ErrorEnvelope), (status = "5XX", description = "error envelope", body = ErrorEnvelope)))]
async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return reply_json::<Value>(Err(e)),
    };
    let resume = match header_text(&headers, "last-event-id") {
        Ok(Some(text)) => match parse_event_id(text) {
            Some(position) => Some(position),
            None => {
                return reply_json::<Value>(Err(Error::invalid(
                    "Last-Event-ID",
                    "expected <revision>.<index>",
                )));
            }
        },
        Ok(None) => None,
        Err(e) => return reply_json::<Value>(Err(e)),
    };
    if state.watchers.fetch_add(1, Ordering::SeqCst) >= state.config.max_watchers {
        state.watchers.fetch_sub(1, Ordering::SeqCst);
        return reply_json::<Value>(Err(Error::new(
            ErrorCode::QuotaExceeded,
            format!(
                "{} watchers are connected, the limit (max_watchers); retry later",
                state.config.max_watchers
            ),
        )
        .with_retry_after(1000)));
    }
    let slot = WatcherSlot(state.clone());
    let start = match (resume, q.from_revision) {
        (Some(position), _) => Start::After(position),
        (None, Some(revision)) => Start::Revision(revision),
        (None, None) => Start::Now,
    };
    let watch = match state.sequencer.shared().events.watch(&q.prefix, start) {
        Ok(watch) => watch,
        Err(e) => return reply_json::<Value>(Err(e)),
    };
    let events = stream::unfold((watch, false, slot), |(mut watch, done, slot)| async move {
        if done {
            return None;
        }
        match watch.next().await {
            Ok(stamped) => Some((Ok::<_, Infallible>(sse(&stamped)), (watch, false, slot))),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                let (revision, index) = watch.last();
                let data = json!({
                    "code": "COMPACTED",
                    "message": format!("this watcher fell behind (by {missed} or more events, or past the events the server keeps) and was cut off; resume with Last-Event-ID or from_revision, or read current state if that answers COMPACTED"),
                    "last_event_id": format!("{revision}.{index}"),
                });
                let event = SseEvent::default().event("cut_off").data(data.to_string());
                Some((Ok(event), (watch, true, slot)))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[allow(dead_code)]
fn _assert_stream<S: Stream>(_: S) {}

/// `{"ok": true, "result": T}` (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct OkEnvelope<T> {
    ok: bool,
    result: T,
}

/// `{"ok": false, "error": {...}}` (documentation only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorEnvelope {
    ok: bool,
    error: baton_core::Error,
}

/// The OpenAPI document, derived from the handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Baton",
        description = "Coordination for multi-agent systems: locks with fencing tokens, versioned state, counters, events. Agent identity: header Baton-Agent; session: Baton-Session; retries: Idempotency-Key."
    ),
    paths(
        readyz,
        status,
        session_open,
        session_list,
        session_get,
        session_keepalive,
        session_close,
        session_kill,
        lock_acquire,
        lock_list,
        lock_get,
        lock_release,
        lock_renew,
        fence_check,
        kv_get,
        kv_put,
        kv_patch,
        kv_delete,
        kv_list,
        kv_history,
        txn,
        counter_add,
        events,
        watch,
        quota_set,
        quota_get,
        quota_reserve,
        quota_commit,
        quota_release,
        rate_take,
        bucket_get,
        once,
        once_fulfil,
        once_abandon,
        queue_enqueue,
        queue_claim,
        queue_ack,
        queue_nack,
        queue_status,
        semaphore_acquire
    )
)]
pub struct ApiDoc;
