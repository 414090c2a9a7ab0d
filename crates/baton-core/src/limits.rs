//! Named bounds on everything the core keeps or accepts (TigerStyle). Each is
//! configurable; exceeding one is an INVALID_ARGUMENT (the request itself is
//! too big) or QUOTA_EXCEEDED (a shared capacity is full), never a panic.

use serde::{Deserialize, Serialize};

/// 1 GiB of JSON, which the server holds in memory at several times its
/// encoded size (bench/README.md measures bytes per key): a bound an agent
/// team reaches only by misuse, well before the machine runs out of memory.
pub const DEFAULT_MAX_KV_BYTES: u64 = 1024 * 1024 * 1024;

/// Queued work, bounded like the store (see [`DEFAULT_MAX_KV_BYTES`]).
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 1024 * 1024 * 1024;

/// Bounds enforced by [`crate::StateMachine`]. `Limits::default()` is what
/// `baton serve` runs with unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest key, in bytes (keys are `namespace/name`).
    pub max_key_bytes: usize,
    /// Largest JSON value, in bytes of its compact serialization.
    pub max_value_bytes: usize,
    /// Longest agent id, in bytes.
    pub max_agent_bytes: usize,
    /// Longest idempotency key, in bytes.
    pub max_idempotency_key_bytes: usize,
    /// Keys one lock request may take at once.
    pub max_keys_per_lock: usize,
    /// Compares plus operations in one txn.
    pub max_ops_per_txn: usize,
    /// Queued requests per lock key; a further waiter is refused.
    pub max_waiters_per_key: usize,
    /// Live sessions.
    pub max_sessions: usize,
    /// Live locks, held or waiting.
    pub max_locks: usize,
    /// Live state keys.
    pub max_keys: usize,
    /// Bytes of state keys and values, counting every version kept in
    /// their history (compact JSON). A write that would pass it is refused;
    /// deletes, and overwrites no larger than what they push out, go through.
    pub max_kv_bytes: u64,
    /// Recent versions kept per state key for `history`.
    pub history_depth: usize,
    /// Idempotency records kept (oldest dropped first).
    pub idempotency_entries: usize,
    /// How long an idempotency record is kept, in ms.
    pub idempotency_retention_ms: u64,
    /// Ended locks and sessions remembered, so a late release or keepalive can
    /// say what happened instead of "not found".
    pub ended_records: usize,
    /// Shortest lease (session, lock or key TTL), in ms.
    pub min_ttl_ms: u64,
    /// Longest lease, in ms.
    pub max_ttl_ms: u64,
    /// Longest lock wait, in ms.
    pub max_wait_ms: u64,
    /// Longest lock-delay after an expired lock, in ms.
    pub max_lock_delay_ms: u64,
    /// Entries returned by one `list` page at most.
    pub max_list_page: usize,
    /// Quotas plus rate-limit buckets.
    pub max_quotas_and_buckets: usize,
    /// Live reservations across all quotas.
    pub max_reservations: usize,
    /// Agents whose usage a bucket accounts by name; the rest are summed as `(other)`.
    pub max_usage_agents_per_bucket: usize,
    /// Items in all queues (ready, claimed or delayed).
    pub max_queue_items: usize,
    /// Bytes of the items in all queues and of their dead letters (compact
    /// JSON). An enqueue that would pass it is refused.
    pub max_queue_bytes: u64,
    /// Dead letters kept per queue (oldest dropped first).
    pub max_dead_letters_per_queue: usize,
    /// Deliveries before an item is dead-lettered, when enqueue does not say.
    pub default_max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_agent_bytes: 128,
            max_idempotency_key_bytes: 256,
            max_keys_per_lock: 64,
            max_ops_per_txn: 128,
            max_waiters_per_key: 1024,
            max_sessions: 100_000,
            max_locks: 1_000_000,
            max_keys: 10_000_000,
            max_kv_bytes: DEFAULT_MAX_KV_BYTES,
            history_depth: 16,
            idempotency_entries: 100_000,
            idempotency_retention_ms: 60 * 60 * 1000,
            ended_records: 100_000,
            min_ttl_ms: 10,
            max_ttl_ms: 7 * 24 * 60 * 60 * 1000,
            max_wait_ms: 10 * 60 * 1000,
            max_lock_delay_ms: 60 * 1000,
            max_list_page: 1000,
            max_quotas_and_buckets: 100_000,
            max_reservations: 1_000_000,
            max_usage_agents_per_bucket: 1024,
            max_queue_items: 1_000_000,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_dead_letters_per_queue: 1000,
            default_max_attempts: 5,
        }
    }
}

impl Limits {
    /// Limits as a snapshot or a logged `SetLimits` recorded them. A bound
    /// added since is absent from what older builds recorded, and those
    /// writes were accepted without it: replaying them must accept them
    /// again, so an absent byte bound is unbounded there (a configured
    /// server then logs its own limits once recovered), not the default.
    pub(crate) fn from_recorded(
        mut recorded: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Limits, serde_json::Error> {
        for added_later in ["max_kv_bytes", "max_queue_bytes"] {
            recorded
                .entry(added_later)
                .or_insert(serde_json::Value::from(u64::MAX));
        }
        serde_json::from_value(serde_json::Value::Object(recorded))
    }
}

/// `deserialize_with` for a logged `SetLimits`: see [`Limits::from_recorded`].
pub(crate) fn deserialize_recorded<'de, D>(deserializer: D) -> Result<Box<Limits>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let recorded = serde_json::Map::deserialize(deserializer)?;
    Limits::from_recorded(recorded)
        .map(Box::new)
        .map_err(serde::de::Error::custom)
}
