//! The MCP tools: their names, their descriptions for a language model, the
//! input schemas (generated from the argument types below) and the checks
//! that make bad input an INVALID_ARGUMENT naming the field, before anything
//! reaches Baton.

use std::borrow::Cow;

use baton_core::{Error, Limits};
use rmcp::handler::server::tool::schema_for_input;
use rmcp::model::{Tool, ToolAnnotations};
use rmcp::schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Longest lock wait one tool call may ask for. MCP clients time a call out
/// (often after 60 s or a few minutes), so a wait must stay below that.
pub const MAX_WAIT_MS: u64 = 5 * 60 * 1000;
/// Most entries, versions or events one call returns.
pub const MAX_PAGE: u64 = 1000;
/// Longest key, as Baton checks it (`max_key_bytes`).
pub const MAX_KEY_BYTES: u64 = 512;
/// Longest idempotency key (`max_idempotency_key_bytes`).
pub const MAX_IDEMPOTENCY_KEY_BYTES: u64 = 256;
/// Keys one lock_acquire may take (`max_keys_per_lock`).
pub const MAX_KEYS_PER_LOCK: u64 = 64;
/// Compares plus operations in one txn (`max_ops_per_txn`).
pub const MAX_OPS_PER_TXN: u64 = 128;
/// Shortest and longest lease in ms (`min_ttl_ms`, `max_ttl_ms`).
pub const MIN_TTL_MS: u64 = 10;
pub const MAX_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most permits one semaphore may have (baton-core's `MAX_SEMAPHORE_CAPACITY`).
pub const MAX_SEMAPHORE_CAPACITY: u64 = 1_000_000;
/// A refresh claim's lease and a queue item's visibility unless told otherwise.
pub const DEFAULT_CLAIM_TTL_MS: u64 = 30_000;

// ---- arguments ----

/// A fencing token to present with a write.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct FenceArg {
    /// The locked key the token was granted for.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The `fence_token` that lock_acquire returned.
    pub token: u64,
}

/// Arguments every mutation accepts.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct NoArgs {}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(crate = "rmcp::schemars")]
pub enum ModeArg {
    /// One holder at a time (writers).
    #[default]
    Exclusive,
    /// Many shared holders together, no exclusive one (readers).
    Shared,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct LockAcquireArgs {
    /// Keys to lock, `namespace/name`. All are taken together or none is:
    /// lock everything one piece of work needs in a single call.
    #[schemars(length(min = 1, max = MAX_KEYS_PER_LOCK))]
    pub keys: Vec<String>,
    /// `exclusive` (default) to write; `shared` to read with others.
    #[serde(default)]
    pub mode: ModeArg,
    /// How long to queue if the keys are taken, in ms. 0 (default) answers at
    /// once. Keep it below your MCP client's request timeout.
    #[serde(default)]
    #[schemars(range(max = MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// The lock's own lease in ms; renew it with lock_renew before it ends.
    /// Leave it out to keep the lock as long as this MCP connection lives.
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub ttl_ms: Option<u64>,
    /// After this lock expires (not when released), keep its keys unavailable
    /// this long, in ms, so a stalled holder's late writes cannot interleave.
    #[serde(default)]
    #[schemars(range(max = 60_000))]
    pub lock_delay_ms: u64,
    /// true: the grant also returns the locked keys' current values (in
    /// `values`; a key not listed does not exist), so you need no state_get
    /// before changing what you locked.
    #[serde(default)]
    pub read: bool,
    /// Any unique string: a retry with the same key (after your MCP client
    /// timed out, say) does not take a second lock; it gets the first
    /// request's grant, or joins its wait.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct LockIdArgs {
    /// The `lock_id` that lock_acquire returned.
    pub lock_id: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct LockRenewArgs {
    /// The `lock_id` that lock_acquire returned.
    pub lock_id: u64,
    /// New lease from now, in ms; default: the lock's own TTL.
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct LockStatusArgs {
    /// Ask about one lock you took: is it still held, or how did it end?
    pub lock_id: Option<u64>,
    /// Or ask about a key: do I (this connection's session) hold it now?
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct LocksListArgs {
    /// Only keys under this prefix (e.g. `inventory/`); empty: all.
    #[serde(default)]
    #[schemars(length(max = MAX_KEY_BYTES))]
    pub prefix: String,
    /// At most this many keys.
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct FenceCheckArgs {
    /// The locked key.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The fencing token to check.
    pub token: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct KeyArgs {
    /// The state key, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StatePutArgs {
    /// The state key, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The whole new JSON value (any JSON: object, array, string, number...).
    pub value: Value,
    /// Write only if the key is still at this version (the `version` state_get
    /// returned; 0 means "does not exist yet"). Use it whenever the new value
    /// was computed from a value you read.
    pub if_version: Option<u64>,
    /// Write only if the key does not exist.
    #[serde(default)]
    pub if_absent: bool,
    /// The key disappears this long after the write, in ms.
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub ttl_ms: Option<u64>,
    /// Refuse the write (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// A `lock_id` you hold: released together with this write, once it
    /// applies (the next waiter gets the lock at once; no lock_release
    /// needed). If the write is refused, or the lock is not held by you,
    /// nothing applies and the lock stays as it was.
    pub release: Option<u64>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StatePatchArgs {
    /// The state key, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// RFC 7396 merge patch: an object whose members replace the value's
    /// members; `null` removes one. E.g. `{"status": "done"}`.
    pub merge: Option<Value>,
    /// RFC 6902 JSON Patch: a list of operations, e.g.
    /// `[{"op": "test", "path": "/n", "value": 1}, {"op": "replace", "path": "/n", "value": 2}]`.
    /// A failing `test` is a CONCURRENT_MODIFICATION.
    pub json_patch: Option<Vec<Value>>,
    /// Apply only if the key is still at this version.
    pub if_version: Option<u64>,
    /// Refuse the write (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// A `lock_id` you hold: released together with this write, once it
    /// applies (the next waiter gets the lock at once; no lock_release
    /// needed). If the write is refused, or the lock is not held by you,
    /// nothing applies and the lock stays as it was.
    pub release: Option<u64>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StateDeleteArgs {
    /// The state key, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// Delete only if the key is still at this version.
    pub if_version: Option<u64>,
    /// Refuse the delete (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// A `lock_id` you hold: released together with this write, once it
    /// applies (the next waiter gets the lock at once; no lock_release
    /// needed). If the write is refused, or the lock is not held by you,
    /// nothing applies and the lock stays as it was.
    pub release: Option<u64>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StateListArgs {
    /// Only keys under this prefix (e.g. `tasks/`); empty: all.
    #[serde(default)]
    #[schemars(length(max = MAX_KEY_BYTES))]
    pub prefix: String,
    /// Continue after this key: the `next_after` of the previous page.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub after: Option<String>,
    /// At most this many entries.
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StateHistoryArgs {
    /// The state key, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// At most this many versions, newest first.
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct StateTxnArgs {
    /// Conditions, all of which must hold for `success` to run. Each is
    /// `{"key", "version": N}` (0 = absent) or `{"key", "value": V}` or
    /// `{"key", "exists": bool}`, with optional `"op": "eq"|"ne"|"lt"|"gt"`
    /// (lt/gt for versions only).
    #[serde(default)]
    #[schemars(length(max = MAX_OPS_PER_TXN))]
    pub compares: Vec<Value>,
    /// Operations run if every compare holds, all or nothing. Each is
    /// `{"op": "get", "key"}`, `{"op": "put", "key", "value", "ttl_ms"?}`,
    /// `{"op": "patch", "key", "patch": {"type": "merge", "patch": {...}}}`
    /// or `{"type": "json", "ops": [...]}`, `{"op": "delete", "key"}`,
    /// `{"op": "counter_add", "key", "delta", "min"?, "max"?}`.
    #[serde(default)]
    #[schemars(length(max = MAX_OPS_PER_TXN))]
    pub success: Vec<Value>,
    /// Operations run if any compare fails (same forms as `success`).
    #[serde(default)]
    #[schemars(length(max = MAX_OPS_PER_TXN))]
    pub failure: Vec<Value>,
    /// Refuse the txn (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// A `lock_id` you hold: released together with this write, once it
    /// applies (the next waiter gets the lock at once; no lock_release
    /// needed). If the write is refused, or the lock is not held by you,
    /// nothing applies and the lock stays as it was.
    pub release: Option<u64>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct CounterAddArgs {
    /// The counter key, `namespace/name` (created at 0).
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// What to add; negative to take away.
    pub delta: i64,
    /// Refuse (QUOTA_EXCEEDED) rather than go below this.
    pub min: Option<i64>,
    /// Refuse (QUOTA_EXCEEDED) rather than go above this.
    pub max: Option<i64>,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// A `lock_id` you hold: released together with this write, once it
    /// applies (the next waiter gets the lock at once; no lock_release
    /// needed). If the write is refused, or the lock is not held by you,
    /// nothing applies and the lock stays as it was.
    pub release: Option<u64>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct EventsArgs {
    /// Only events on keys under this prefix; empty: all.
    #[serde(default)]
    #[schemars(length(max = MAX_KEY_BYTES))]
    pub prefix: String,
    /// Start at this revision (the `next_revision` of a previous call);
    /// default: the oldest kept.
    pub from_revision: Option<u64>,
    /// At most this many events.
    #[schemars(range(min = 1, max = MAX_PAGE))]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct SemaphoreAcquireArgs {
    /// The semaphore's key, `namespace/name`, e.g. `gpu/pool`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// How many permits to take (default 1), at most `capacity`.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_SEMAPHORE_CAPACITY))]
    pub permits: u64,
    /// The pool's size: at most this many permits are held at once. Every
    /// agent must name the same capacity for the same key.
    #[schemars(range(min = 1, max = MAX_SEMAPHORE_CAPACITY))]
    pub capacity: u64,
    /// How long to queue (FIFO) if not enough permits are free, in ms. 0
    /// (default) answers at once. Keep it below your MCP client's request timeout.
    #[serde(default)]
    #[schemars(range(max = MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// The permits' own lease in ms; renew it with lock_renew before it ends.
    /// Leave it out to keep them as long as this MCP connection lives.
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub ttl_ms: Option<u64>,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

fn one() -> u64 {
    1
}

fn default_claim_ttl_ms() -> u64 {
    DEFAULT_CLAIM_TTL_MS
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QuotaSetArgs {
    /// The quota, `namespace/name`, e.g. `llm/tokens-per-day`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub quota: String,
    /// How much there is in total (in any unit you choose: tokens, dollars
    /// in cents, GPU-minutes...).
    pub capacity: u64,
    /// Forget what was committed so far: a new period (e.g. a new day).
    #[serde(default)]
    pub reset_used: bool,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QuotaArgs {
    /// The quota, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub quota: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QuotaReserveArgs {
    /// The quota, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub quota: String,
    /// The most the work may spend; held for you until committed, released
    /// or expired.
    #[schemars(range(min = 1))]
    pub amount: u64,
    /// How long the reservation holds, in ms: longer than the work takes.
    /// Unsettled, it returns to the pool when this ends.
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub ttl_ms: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key reserves once.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QuotaCommitArgs {
    /// The `reservation_id` quota_reserve returned.
    pub reservation_id: u64,
    /// What the work actually spent, at most the amount reserved; the rest
    /// returns to the pool.
    pub actual: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QuotaReleaseArgs {
    /// The `reservation_id` quota_reserve returned.
    pub reservation_id: u64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct RateTakeArgs {
    /// The shared bucket, named for the API it protects, e.g. `api/openai`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub bucket: String,
    /// Tokens to take (default 1: one call), at most `burst`.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub tokens: u64,
    /// Tokens the bucket gains per second: the API's sustained rate. Every
    /// agent must give the same rate_per_sec and burst for a bucket.
    #[schemars(range(min = 1))]
    pub rate_per_sec: u64,
    /// Tokens the bucket holds at most: the largest burst the API allows.
    #[schemars(range(min = 1))]
    pub burst: u64,
    /// How long to queue (FIFO) for the tokens, in ms; 0 (default) answers
    /// at once with RATE_LIMITED and the exact retry_after_ms.
    #[serde(default)]
    #[schemars(range(max = MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key takes once.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct BucketArgs {
    /// The bucket, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub bucket: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct OnceGetArgs {
    /// The key holding the shared value, `namespace/name`, e.g. `cred/token`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The value is fresh while younger than this, in ms (e.g. a bit less
    /// than the credential's lifetime); older or absent, it is refreshed.
    pub max_age_ms: u64,
    /// If you get the claim: how long it lasts, in ms (default 30000). It
    /// cannot be renewed, so it must cover the whole refresh.
    #[serde(default = "default_claim_ttl_ms")]
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub claim_ttl_ms: u64,
    /// How long to wait for another agent's refresh, in ms; 0 (default)
    /// answers at once (CONCURRENT_MODIFICATION while someone refreshes).
    #[serde(default)]
    #[schemars(range(max = MAX_WAIT_MS))]
    pub wait_ms: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key gets the first answer.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct OnceFulfilArgs {
    /// The key once_get gave you the claim for.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The `claim_id` once_get returned with status `claimed`.
    pub claim_id: u64,
    /// The refreshed value (any JSON), e.g. `{"token": "...", "expires_in": 3600}`.
    pub value: Value,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct OnceAbandonArgs {
    /// The key once_get gave you the claim for.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub key: String,
    /// The `claim_id` once_get returned with status `claimed`.
    pub claim_id: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QueueEnqueueArgs {
    /// The queue, `namespace/name`, e.g. `jobs/mail` (created on first use).
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub queue: String,
    /// The work item: any JSON the worker needs.
    pub item: Value,
    /// Deliveries before the item is dead-lettered (default 5).
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key enqueues once.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QueueClaimArgs {
    /// The queue, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub queue: String,
    /// How long the item is yours, in ms (default 30000): ack it before
    /// then, or it is delivered to another worker.
    #[serde(default = "default_claim_ttl_ms")]
    #[schemars(range(min = MIN_TTL_MS, max = MAX_TTL_MS))]
    pub visibility_ms: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key gets the same item.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QueueSettleArgs {
    /// The queue, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub queue: String,
    /// The `item_id` queue_claim returned.
    pub item_id: u64,
    /// The `claim_token` queue_claim returned.
    pub claim_token: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QueueNackArgs {
    /// The queue, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub queue: String,
    /// The `item_id` queue_claim returned.
    pub item_id: u64,
    /// The `claim_token` queue_claim returned.
    pub claim_token: u64,
    /// Keep the item out of reach this long before it is ready again, in ms
    /// (default 0: at once).
    #[serde(default)]
    #[schemars(range(max = MAX_TTL_MS))]
    pub delay_ms: u64,
    /// Refuse (FENCED) unless this lock token is still current.
    pub fence: Option<FenceArg>,
    /// Any unique string: a retry with the same key is not applied twice.
    #[schemars(length(min = 1, max = MAX_IDEMPOTENCY_KEY_BYTES))]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub struct QueueArgs {
    /// The queue, `namespace/name`.
    #[schemars(length(min = 1, max = MAX_KEY_BYTES))]
    pub queue: String,
}

// ---- checks the types cannot express ----

/// Bounds beyond what serde checks, each naming its field.
pub trait Check {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        let _ = limits;
        Ok(())
    }
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if value < min || value > max {
        return Err(Error::invalid(
            field,
            format!("{value} is out of range: it must be between {min} and {max}"),
        ));
    }
    Ok(())
}

fn at_least(field: &str, value: u64, min: u64) -> Result<(), Error> {
    if value < min {
        return Err(Error::invalid(
            field,
            format!("{value} is too small: it must be at least {min}"),
        ));
    }
    Ok(())
}

fn opt_range(field: &str, value: Option<u64>, min: u64, max: u64) -> Result<(), Error> {
    value.map_or(Ok(()), |v| range(field, v, min, max))
}

fn len(field: &str, text: &str, min: u64, max: u64) -> Result<(), Error> {
    let bytes = text.len() as u64;
    if bytes < min {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if bytes > max {
        return Err(Error::invalid(
            field,
            format!("is {bytes} bytes; the limit is {max}"),
        ));
    }
    Ok(())
}

fn key(field: &str, text: &str) -> Result<(), Error> {
    len(field, text, 1, MAX_KEY_BYTES)
}

fn count(field: &str, items: usize, max: u64) -> Result<(), Error> {
    if items as u64 > max {
        return Err(Error::invalid(
            field,
            format!("has {items} items; the limit is {max}"),
        ));
    }
    Ok(())
}

fn value_size(field: &str, value: &Value, limits: &Limits) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_or(0, |v| v.len());
    if bytes > limits.max_value_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "the value is {bytes} bytes of JSON; the limit is {} bytes (max_value_bytes): store less, or split it over several keys",
                limits.max_value_bytes
            ),
        ));
    }
    Ok(())
}

fn mutation(fence: &Option<FenceArg>, idempotency_key: &Option<String>) -> Result<(), Error> {
    if let Some(fence) = fence {
        key("fence.key", &fence.key)?;
    }
    if let Some(idempotency) = idempotency_key {
        len("idempotency_key", idempotency, 1, MAX_IDEMPOTENCY_KEY_BYTES)?;
    }
    Ok(())
}

impl Check for NoArgs {}

impl Check for LockAcquireArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        if self.keys.is_empty() {
            return Err(Error::invalid("keys", "name at least one key to lock"));
        }
        count("keys", self.keys.len(), MAX_KEYS_PER_LOCK)?;
        for (i, k) in self.keys.iter().enumerate() {
            key(&format!("keys[{i}]"), k)?;
        }
        range("wait_ms", self.wait_ms, 0, MAX_WAIT_MS)?;
        opt_range("ttl_ms", self.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        range("lock_delay_ms", self.lock_delay_ms, 0, 60_000)?;
        mutation(&None, &self.idempotency_key)
    }
}

impl Check for LockIdArgs {}

impl Check for LockRenewArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        opt_range("ttl_ms", self.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)
    }
}

impl Check for LockStatusArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        match (&self.lock_id, &self.key) {
            (None, None) | (Some(_), Some(_)) => Err(Error::invalid(
                "lock_id",
                "give exactly one of lock_id (a lock you took) or key (do I hold this key?)",
            )),
            (None, Some(k)) => key("key", k),
            (Some(_), None) => Ok(()),
        }
    }
}

impl Check for LocksListArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        len("prefix", &self.prefix, 0, MAX_KEY_BYTES)?;
        opt_range("limit", self.limit, 1, MAX_PAGE)
    }
}

impl Check for FenceCheckArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)
    }
}

impl Check for KeyArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)
    }
}

impl Check for StatePutArgs {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        value_size("value", &self.value, limits)?;
        if self.if_absent && self.if_version.is_some_and(|v| v != 0) {
            return Err(Error::invalid(
                "if_absent",
                "if_absent and a non-zero if_version contradict each other; give one",
            ));
        }
        opt_range("ttl_ms", self.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for StatePatchArgs {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        match (&self.merge, &self.json_patch) {
            (Some(merge), None) => {
                if !merge.is_object() {
                    return Err(Error::invalid(
                        "merge",
                        "a merge patch is a JSON object, e.g. {\"status\": \"done\"}; to replace the whole value use state_put",
                    ));
                }
                value_size("merge", merge, limits)?;
            }
            (None, Some(ops)) => {
                if ops.is_empty() {
                    return Err(Error::invalid("json_patch", "give at least one operation"));
                }
                value_size("json_patch", &Value::Array(ops.clone()), limits)?;
            }
            _ => {
                return Err(Error::invalid(
                    "merge",
                    "give exactly one of merge (an object) or json_patch (a list of operations)",
                ));
            }
        }
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for StateDeleteArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for StateListArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        len("prefix", &self.prefix, 0, MAX_KEY_BYTES)?;
        if let Some(after) = &self.after {
            key("after", after)?;
        }
        opt_range("limit", self.limit, 1, MAX_PAGE)
    }
}

impl Check for StateHistoryArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        opt_range("limit", self.limit, 1, MAX_PAGE)
    }
}

impl Check for StateTxnArgs {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        let ops = self.compares.len() + self.success.len() + self.failure.len();
        count("compares", ops, MAX_OPS_PER_TXN).map_err(|_| {
            Error::invalid(
                "compares",
                format!(
                    "compares + success + failure have {ops} items; the limit is {MAX_OPS_PER_TXN}"
                ),
            )
        })?;
        for (field, items) in [
            ("compares", &self.compares),
            ("success", &self.success),
            ("failure", &self.failure),
        ] {
            value_size(field, &Value::Array(items.clone()), limits)?;
        }
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for CounterAddArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(Error::invalid(
                "min",
                format!("min {min} is above max {max}"),
            ));
        }
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for EventsArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        len("prefix", &self.prefix, 0, MAX_KEY_BYTES)?;
        opt_range("limit", self.limit, 1, MAX_PAGE)
    }
}

impl Check for SemaphoreAcquireArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        range("capacity", self.capacity, 1, MAX_SEMAPHORE_CAPACITY)?;
        range("permits", self.permits, 1, self.capacity)?;
        range("wait_ms", self.wait_ms, 0, MAX_WAIT_MS)?;
        opt_range("ttl_ms", self.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QuotaSetArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("quota", &self.quota)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QuotaArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("quota", &self.quota)
    }
}

impl Check for QuotaReserveArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("quota", &self.quota)?;
        at_least("amount", self.amount, 1)?;
        range("ttl_ms", self.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QuotaCommitArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QuotaReleaseArgs {}

impl Check for RateTakeArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("bucket", &self.bucket)?;
        at_least("rate_per_sec", self.rate_per_sec, 1)?;
        at_least("burst", self.burst, 1)?;
        if self.tokens == 0 || self.tokens > self.burst {
            return Err(Error::invalid(
                "tokens",
                format!(
                    "take 1 to {} tokens (the burst); more could never be granted",
                    self.burst
                ),
            ));
        }
        range("wait_ms", self.wait_ms, 0, MAX_WAIT_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for BucketArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("bucket", &self.bucket)
    }
}

impl Check for OnceGetArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        range("claim_ttl_ms", self.claim_ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        range("wait_ms", self.wait_ms, 0, MAX_WAIT_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for OnceFulfilArgs {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        value_size("value", &self.value, limits)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for OnceAbandonArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("key", &self.key)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QueueEnqueueArgs {
    fn check(&self, limits: &Limits) -> Result<(), Error> {
        key("queue", &self.queue)?;
        value_size("item", &self.item, limits)?;
        if self.max_attempts == Some(0) {
            return Err(Error::invalid(
                "max_attempts",
                "at least 1 delivery; leave it out for the default (5)",
            ));
        }
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QueueClaimArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("queue", &self.queue)?;
        range("visibility_ms", self.visibility_ms, MIN_TTL_MS, MAX_TTL_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QueueSettleArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("queue", &self.queue)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QueueNackArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("queue", &self.queue)?;
        range("delay_ms", self.delay_ms, 0, MAX_TTL_MS)?;
        mutation(&self.fence, &self.idempotency_key)
    }
}

impl Check for QueueArgs {
    fn check(&self, _: &Limits) -> Result<(), Error> {
        key("queue", &self.queue)
    }
}

/// Decodes a tool's arguments, naming the field that is wrong: a missing
/// field, a wrong type, an unknown field or a value out of bounds.
pub fn parse<T: DeserializeOwned + Check>(arguments: Value, limits: &Limits) -> Result<T, Error> {
    let args: T = serde_path_to_error::deserialize(arguments).map_err(|error| {
        let path = error.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        let inner = error.into_inner().to_string();
        // "missing field `key`" / "unknown field `x`, expected ...": the
        // field is between the first pair of backticks, under `path`.
        let named = inner
            .starts_with("missing field")
            .then(|| inner.split('`').nth(1))
            .flatten()
            .or_else(|| {
                inner
                    .starts_with("unknown field")
                    .then(|| inner.split('`').nth(1))
                    .flatten()
            });
        let field = match (path, named) {
            (Some(path), Some(name)) if !path.ends_with(name) => format!("{path}.{name}"),
            (Some(path), _) => path,
            (None, Some(name)) => name.to_string(),
            (None, None) => "arguments".to_string(),
        };
        let message = if inner.starts_with("missing field") {
            "is required".to_string()
        } else {
            inner
        };
        Error::invalid(&field, message)
    })?;
    args.check(limits)?;
    Ok(args)
}

// ---- the tool list ----

/// A tool's name, what it is for, and its input type's schema.
fn tool<T: JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    annotations: ToolAnnotations,
) -> Tool {
    Tool::new(
        Cow::Borrowed(name),
        Cow::Borrowed(description),
        // Our own argument types: a failure is a bug that the tests catch.
        schema_for_input::<T>().unwrap_or_else(|e| panic!("input schema of {name}: {e}")),
    )
    .with_annotations(annotations)
}

fn read_only() -> ToolAnnotations {
    ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false)
}

fn writes(destructive: bool, idempotent: bool) -> ToolAnnotations {
    ToolAnnotations::new()
        .read_only(false)
        .destructive(destructive)
        .idempotent(idempotent)
        .open_world(false)
}

/// Every tool this server offers, in the order an agent meets them.
pub fn all() -> Vec<Tool> {
    vec![
        tool::<NoArgs>(
            "session_info",
            "Who you are to Baton: your agent id, your session (one per MCP connection, kept alive while the connection lives; everything it holds is released when it ends), the server URL, and the locks you hold. Call it when you start, or when unsure what you hold (e.g. after your context was compacted).",
            read_only(),
        ),
        tool::<LockAcquireArgs>(
            "lock_acquire",
            "Take a lock on one or more keys before changing what they protect; all keys are taken together or none is (lock everything one piece of work needs in ONE call, so two agents can never deadlock). Returns lock_id and fence_token: pass `fence: {key, token}` to every write made under the lock, so a write made after you lost the lock is refused instead of silently overwriting someone else's work. Always release when done: pass `release: lock_id` with your last write (state_put, state_patch, state_delete, state_txn, counter_add), or call lock_release. With wait_ms the call queues until granted. Errors: CONCURRENT_MODIFICATION = someone else holds it (details.holders): wait retry_after_ms and try again, or pass wait_ms; DEADLOCK = waiting would deadlock: release what you hold and take all keys in one call.",
            writes(false, false),
        ),
        tool::<LockIdArgs>(
            "lock_release",
            "Release a lock you took (or stop waiting for it) as soon as the work under it is done, so others can proceed. Idempotent: releasing an ended lock says how it ended (released, expired, killed).",
            writes(false, true),
        ),
        tool::<LockRenewArgs>(
            "lock_renew",
            "Extend the lease of a lock that you took with its own ttl_ms, before the lease runs out (e.g. every ttl/3 during long work). Locks taken without ttl_ms live as long as your connection and need no renewal. FENCED = the lock already ended: you no longer hold it; stop writing under it.",
            writes(false, true),
        ),
        tool::<LockStatusArgs>(
            "lock_status",
            "Cheaply ask 'do I still hold this?': by lock_id (is my lock still held, and its fence_token; or how and when it ended) or by key (does my session hold this key now?). Use it before a write whenever you are unsure, e.g. after a long pause or after your context was compacted. held=false means: stop writing, acquire again, re-read.",
            read_only(),
        ),
        tool::<LocksListArgs>(
            "locks_list",
            "List keys under a prefix that are locked or awaited, with holders (agent, session, fence_token, expiry) and waiters in queue order. Use it to see who blocks you.",
            read_only(),
        ),
        tool::<FenceCheckArgs>(
            "fence_check",
            "Check whether a fencing token is still current for a key (true only while its lock holds the key). For systems outside Baton that accept fenced writes; Baton's own writes check a `fence` argument themselves.",
            read_only(),
        ),
        tool::<KeyArgs>(
            "state_get",
            "Read a JSON value and its version. Remember the version: write back with state_put or state_patch with if_version = that version, so the write is refused (CONCURRENT_MODIFICATION) if anyone changed the key in between. NOT_FOUND = the key does not exist (create it with state_put if_absent or if_version 0).",
            read_only(),
        ),
        tool::<StatePutArgs>(
            "state_put",
            "Replace a key's whole JSON value. When the new value is computed from a value you read, ALWAYS pass if_version (the version you read; 0 = must not exist yet), or hold a lock and pass its fence (and `release: lock_id` on your last write under it). To change one field, prefer state_patch with a merge patch. Errors: CONCURRENT_MODIFICATION = the key changed since you read it (details.current_version and current_value hold the current state): redo your change on the current value and put again with if_version = current_version; FENCED = you no longer hold the lock: stop writing; QUOTA_EXCEEDED = the store is full (details.max_kv_bytes): nothing was written; delete keys you no longer need, or tell the operator.",
            writes(true, false),
        ),
        tool::<StatePatchArgs>(
            "state_patch",
            "Change part of a JSON value without sending all of it: `merge` (RFC 7396, e.g. {\"status\": \"done\"}; null removes a field) or `json_patch` (RFC 6902 operations; a failing `test` op is a conflict). Use state_patch to change one field; use state_put with if_version when you replace the whole value. Pass if_version when the change depends on what you read. CONCURRENT_MODIFICATION = re-read with state_get and redo the change.",
            writes(true, false),
        ),
        tool::<StateDeleteArgs>(
            "state_delete",
            "Delete a key. Pass if_version to delete only the version you read. deleted=false means it did not exist.",
            writes(true, true),
        ),
        tool::<StateListArgs>(
            "state_list",
            "List keys and values under a prefix, in key order, one page at a time (pass next_after as `after` to continue).",
            read_only(),
        ),
        tool::<StateHistoryArgs>(
            "state_history",
            "Recent past versions of a key, newest first, with the agent that wrote each and when. Use it to see who changed what.",
            read_only(),
        ),
        tool::<StateTxnArgs>(
            "state_txn",
            "Change several keys atomically: if every compare holds, run `success`, else run `failure`; all ops apply or none does. Use it to move a value between keys, or to write one key only if others are unchanged. Result `succeeded` says which branch ran. With `release`, the lock is released only if `succeeded` is true (otherwise you still hold it and may retry).",
            writes(true, false),
        ),
        tool::<CounterAddArgs>(
            "counter_add",
            "Atomically add delta to a counter (no read-modify-write needed, never loses an increment). With min/max the add is refused (QUOTA_EXCEEDED) instead of crossing the bound: use it to take a slot from a pool (delta -1, min 0). The same code with details.max_kv_bytes means the store is full, not the bound. Pass an idempotency_key if you may retry.",
            writes(false, false),
        ),
        tool::<SemaphoreAcquireArgs>(
            "semaphore_acquire",
            "Take permits of a counting semaphore: a pool of `capacity` identical slots shared by all agents (e.g. 3 GPUs, 5 browser sessions, 10 DB connections); at most `capacity` permits are held at once, whoever asks. Take a permit BEFORE using a slot, give it back with lock_release {lock_id} right after. Returns lock_id, fence_token and permits: the grant is a lock (renew it with lock_renew if you gave ttl_ms; without ttl_ms it ends with this connection). Every agent must name the same capacity for a key. Errors: CONCURRENT_MODIFICATION = not enough permits free (details.holders): wait retry_after_ms and call again, or pass wait_ms to queue FIFO; DEADLOCK = you already hold permits of this key (permits are not re-entrant): use that lock or release it first; INVALID_ARGUMENT on capacity = the semaphore is in use with another capacity: use that one.",
            writes(false, false),
        ),
        tool::<QuotaSetArgs>(
            "quota_set",
            "Create a shared quota (a capacity many agents draw from: LLM tokens per day, dollars of API spend, GPU-minutes) or change its capacity. reset_used=true starts a new period (forgets what was committed). Live reservations stay. Usually done once by whoever sets up the work; agents then use quota_reserve and quota_commit.",
            writes(false, true),
        ),
        tool::<QuotaArgs>(
            "quota_get",
            "Read a quota: capacity, used (committed), reserved (held by live reservations), available now, and how many reservations are live. NOT_FOUND = no such quota: quota_set creates it.",
            read_only(),
        ),
        tool::<QuotaReserveArgs>(
            "quota_reserve",
            "Reserve BEFORE a costly call (an LLM request, a paid API, a GPU job): hold the most it may spend from a shared quota, so agents together never overspend it. Then do the work and quota_commit {reservation_id, actual} with what it really spent (the rest returns at once), or quota_release {reservation_id} if you spent nothing. A reservation you forget returns to the pool when ttl_ms ends. Errors: QUOTA_EXCEEDED = not enough is available: do NOT make the costly call; wait retry_after_ms (given when expiring reservations will free enough) and reserve again, or reserve less; without retry_after_ms the amount cannot fit until the capacity grows or a new period starts. NOT_FOUND = the quota does not exist (quota_set creates it).",
            writes(false, false),
        ),
        tool::<QuotaCommitArgs>(
            "quota_commit",
            "After the costly call, record what it ACTUALLY spent under your reservation (at most the amount reserved); the rest returns to the pool at once. Errors: FENCED = the reservation had already ended (its ttl_ms ran out, or it was settled): nothing was recorded; do not commit again, and reserve with a longer ttl_ms next time. INVALID_ARGUMENT on actual = more than you reserved. PERMISSION_DENIED = another agent's reservation.",
            writes(false, false),
        ),
        tool::<QuotaReleaseArgs>(
            "quota_release",
            "Give a whole reservation back when you spent nothing (the call failed or was skipped), so others can use it at once. Idempotent: an ended reservation answers settled=false and how it ended (expired, committed, released).",
            writes(false, true),
        ),
        tool::<RateTakeArgs>(
            "rate_take",
            "Take from a shared token bucket BEFORE each call to a rate-limited API, so all agents together stay under its limit (no 429 storms). Name the bucket for the API (e.g. `api/openai`); every agent must give the same rate_per_sec and burst. ok = make the call now. RATE_LIMITED = do NOT make the call yet: wait retry_after_ms (exact: the tokens will be there then) and call rate_take again, or pass wait_ms to queue FIFO until the tokens are there. INVALID_ARGUMENT on tokens = more than the burst, which could never be granted.",
            writes(false, false),
        ),
        tool::<BucketArgs>(
            "rate_status",
            "A shared rate-limit bucket: its rate and burst, tokens available now, and who has been spending it (tokens per agent, largest first). Use it to find out who exhausts a shared limit. NOT_FOUND = nobody has taken from that bucket yet.",
            read_only(),
        ),
        tool::<OnceGetArgs>(
            "once_get",
            "Single-flight refresh of a shared value (an API credential, an access token, a cache entry), so that ONE agent refreshes it and the others reuse the result. Call it before you use or refresh the value. status=fresh: use `value`; do NOT refresh. status=claimed: YOU hold the refresh claim (claim_id; `value` is the stale one): refresh now, then once_fulfil {key, claim_id, value} before expires_at, or once_abandon if the refresh failed. Refresh ONLY if you got the claim. With wait_ms, while another agent refreshes, the call waits for its value (status fresh), or hands you the claim if that agent gave up. Errors: CONCURRENT_MODIFICATION = another agent is refreshing and you did not wait long enough: call again with wait_ms; never refresh it yourself; DEADLOCK = your session already holds the claim: fulfil or abandon it.",
            writes(false, false),
        ),
        tool::<OnceFulfilArgs>(
            "once_fulfil",
            "Publish the value you refreshed under your claim from once_get: it is stored in the key (state_get reads it) and every agent waiting in once_get gets it. FENCED = your claim is no longer current (claim_ttl_ms ran out, or it was passed to another agent): NOTHING was published; do not publish or use your refreshed value anywhere else, because another agent may have refreshed it since; call once_get to get the current value.",
            writes(true, false),
        ),
        tool::<OnceAbandonArgs>(
            "once_abandon",
            "Give up your refresh claim when the refresh failed, so the next waiting agent gets the claim at once instead of after claim_ttl_ms. FENCED = the claim had already ended; nothing to do.",
            writes(false, false),
        ),
        tool::<QueueEnqueueArgs>(
            "queue_enqueue",
            "Add a work item (any JSON) to a FIFO queue, created on first use: the single-writer pattern, where many agents hand work to the workers that claim it one item at a time instead of all acting at once. Pass an idempotency_key if you may retry, so the item is enqueued once. After max_attempts deliveries without an ack the item is dead-lettered (queue_status lists it).",
            writes(false, false),
        ),
        tool::<QueueClaimArgs>(
            "queue_claim",
            "Claim the oldest ready item of a queue for visibility_ms: claim -> do the work -> queue_ack {queue, item_id, claim_token}. Returns item_id, claim_token, item, attempt and max_attempts (attempt > 1: an earlier worker did not finish; its side effects may have happened, so check before repeating them). If you do not ack within visibility_ms, the item is delivered to another worker. empty=true = nothing ready now (in_flight and delayed say whether more may come); that is not an error.",
            writes(false, false),
        ),
        tool::<QueueSettleArgs>(
            "queue_ack",
            "Mark a claimed item done, after its work (and every side effect) is complete: it leaves the queue. FENCED = your claim expired (visibility_ms passed) and the item was redelivered to another worker: do NOT repeat its side effects and do not ack again; the other delivery will finish it. Next time claim with a longer visibility_ms.",
            writes(false, false),
        ),
        tool::<QueueNackArgs>(
            "queue_nack",
            "Give a claimed item back without finishing it (you cannot do it now, or it failed and may succeed later): it is ready again after delay_ms. After max_attempts deliveries it is dead-lettered instead; `outcome` says requeued, delayed or dead_lettered. FENCED = your claim had already expired and the item was redelivered.",
            writes(false, false),
        ),
        tool::<QueueArgs>(
            "queue_status",
            "A queue's counts: ready, in flight (claimed), delayed, dead-lettered, the oldest ready item's age, and the dead letters (item and attempts). Use it to see whether work piles up or keeps failing.",
            read_only(),
        ),
        tool::<EventsArgs>(
            "events_recent",
            "What happened: the audit trail of writes, grants, releases, expiries and refusals under a prefix, oldest first, with agent, time and revision. Continue with from_revision = next_revision. COMPACTED = that revision is no longer kept: start without from_revision.",
            read_only(),
        ),
        tool::<NoArgs>(
            "held",
            "List what you hold now: every lock your session holds, each checked with the server, with its keys and fence_token. A lock that ended is reported as LEASE LOST. Call it after your context was compacted or before resuming work.",
            read_only(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(tool_args: Value) -> String {
        let error = parse::<StatePutArgs>(tool_args, &Limits::default()).unwrap_err();
        assert_eq!(error.code, baton_core::ErrorCode::InvalidArgument);
        error.details.unwrap()["field"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn bad_input_names_the_field() {
        assert_eq!(field_of(json!({"value": 1})), "key");
        assert_eq!(field_of(json!({"key": 5, "value": 1})), "key");
        assert_eq!(field_of(json!({"key": "a/b"})), "value");
        assert_eq!(field_of(json!({"key": "a/b", "value": 1, "zz": 1})), "zz");
        assert_eq!(
            field_of(json!({"key": "a/b", "value": 1, "fence": {"key": "a/b"}})),
            "fence.token"
        );
        assert_eq!(
            field_of(json!({"key": "a/b", "value": 1, "if_version": -1})),
            "if_version"
        );
        assert_eq!(
            field_of(json!({"key": "a/b", "value": 1, "ttl_ms": 0})),
            "ttl_ms"
        );
        let big = "x".repeat(Limits::default().max_value_bytes + 1);
        assert_eq!(field_of(json!({"key": "a/b", "value": big})), "value");
    }

    /// The field an INVALID_ARGUMENT from parsing `T` names.
    fn field<T: DeserializeOwned + Check>(tool_args: Value) -> String {
        let Err(error) = parse::<T>(tool_args, &Limits::default()) else {
            panic!("accepted");
        };
        assert_eq!(error.code, baton_core::ErrorCode::InvalidArgument);
        error.details.unwrap()["field"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_coordination_tools_check_their_bounds() {
        let semaphore = |args| field::<SemaphoreAcquireArgs>(args);
        assert_eq!(semaphore(json!({"key": "gpu/pool"})), "capacity");
        assert_eq!(
            semaphore(json!({"key": "gpu/pool", "permits": 4, "capacity": 3})),
            "permits"
        );
        assert_eq!(
            semaphore(json!({"key": "gpu/pool", "capacity": 0})),
            "capacity"
        );
        let ok = parse::<SemaphoreAcquireArgs>(
            json!({"key": "gpu/pool", "capacity": 3}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((ok.permits, ok.wait_ms, ok.ttl_ms), (1, 0, None));

        assert_eq!(
            field::<QuotaReserveArgs>(json!({"quota": "q/a", "amount": 0, "ttl_ms": 1000})),
            "amount"
        );
        assert_eq!(
            field::<QuotaReserveArgs>(json!({"quota": "q/a", "amount": 1})),
            "ttl_ms"
        );
        assert_eq!(
            field::<QuotaCommitArgs>(json!({"reservation_id": 1, "actual": -1})),
            "actual"
        );
        assert_eq!(
            field::<RateTakeArgs>(
                json!({"bucket": "api/a", "tokens": 11, "rate_per_sec": 1, "burst": 10})
            ),
            "tokens"
        );
        assert_eq!(
            field::<RateTakeArgs>(json!({"bucket": "api/a", "rate_per_sec": 0, "burst": 10})),
            "rate_per_sec"
        );
        assert_eq!(
            field::<OnceGetArgs>(
                json!({"key": "cred/t", "max_age_ms": 1, "wait_ms": MAX_WAIT_MS + 1})
            ),
            "wait_ms"
        );
        let once = parse::<OnceGetArgs>(
            json!({"key": "cred/t", "max_age_ms": 1}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(once.claim_ttl_ms, DEFAULT_CLAIM_TTL_MS);
        let big = "x".repeat(Limits::default().max_value_bytes + 1);
        assert_eq!(
            field::<OnceFulfilArgs>(json!({"key": "cred/t", "claim_id": 1, "value": big})),
            "value"
        );
        assert_eq!(
            field::<QueueEnqueueArgs>(json!({"queue": "q/a", "item": 1, "max_attempts": 0})),
            "max_attempts"
        );
        assert_eq!(
            field::<QueueClaimArgs>(json!({"queue": "q/a", "visibility_ms": 1})),
            "visibility_ms"
        );
        assert_eq!(
            field::<QueueSettleArgs>(json!({"queue": "q/a", "item_id": 1})),
            "claim_token"
        );
        assert_eq!(
            field::<QuotaReleaseArgs>(
                json!({"reservation_id": 1, "fence": {"key": "a/b", "token": 1}})
            ),
            "fence"
        );
    }

    #[test]
    fn every_tool_has_an_object_schema_and_a_description() {
        let tools = all();
        assert_eq!(tools.len(), 33);
        for tool in tools {
            let schema = &tool.input_schema;
            assert_eq!(schema["type"], "object", "{}", tool.name);
            assert!(tool.description.unwrap().len() > 60, "{}", tool.name);
        }
    }

    #[test]
    fn schema_bounds_match_the_checks() {
        let schema = schema_for_input::<LockAcquireArgs>().unwrap();
        let keys = &schema["properties"]["keys"];
        assert_eq!(keys["maxItems"], MAX_KEYS_PER_LOCK);
        assert_eq!(schema["properties"]["wait_ms"]["maximum"], MAX_WAIT_MS);
        assert_eq!(schema["additionalProperties"], false);
        let too_many: Vec<String> = (0..=MAX_KEYS_PER_LOCK).map(|i| format!("a/{i}")).collect();
        let error =
            parse::<LockAcquireArgs>(json!({"keys": too_many}), &Limits::default()).unwrap_err();
        assert!(error.message.starts_with("keys:"), "{}", error.message);
    }
}
