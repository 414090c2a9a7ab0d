//! What commands and queries answer. These are the `result` objects of the
//! `{"ok": true, "result": ...}` envelope on every transport.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::command::LockMode;
use crate::error::Error;

/// The answer to one command.
pub type Reply = Result<Response, Error>;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Session(SessionInfo),
    Lock(LockInfo),
    Release(ReleaseResult),
    Write(WriteResult),
    Delete(DeleteResult),
    Counter(CounterResult),
    Txn(TxnResult),
    Reservation(ReservationInfo),
    Settled(SettleResult),
    Quota(QuotaInfo),
    Rate(RateResult),
    Once(OnceResult),
    Enqueued(EnqueueResult),
    QueueItem(QueueItem),
    QueueEmpty(QueueEmpty),
    QueueSettled(QueueSettled),
    /// A reply replayed from an idempotency record, as it was sent. Stored
    /// as plain JSON so that a node restored from a snapshot answers a retry
    /// byte for byte like the node that recorded it (the untagged variants
    /// above cannot always be told apart when read back).
    Recorded(Value),
    /// Tick: nothing to say.
    Empty {},
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: u64,
    pub agent: String,
    pub ttl_ms: u64,
    pub expires_at: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockStatus {
    Held,
    Waiting,
}

/// A live lock: held (with its fencing token) or queued.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub lock_id: u64,
    pub status: LockStatus,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    pub keys: Vec<String>,
    pub mode: LockMode,
    /// The log sequence number of the grant; only ever grows per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<u64>,
    /// When the lease ends unless renewed (the lock's TTL or its session's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// For a waiting lock: when the wait gives up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_deadline: Option<u64>,
    /// For a semaphore: the permits this lock takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<u64>,
    /// Only in the grant of a lock acquired with `read`: its keys that
    /// exist, as they were at the grant, in key order. A locked key missing
    /// here did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Entry>>,
}

/// Why a lock or session is no longer live.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Released, or its session closed, by its owner.
    Released,
    /// A waiting lock withdrawn by its owner.
    Cancelled,
    /// Its TTL (or its session's) ran out.
    Expired,
    /// An admin killed its session.
    Killed,
    /// Its wait deadline passed without a grant.
    TimedOut,
    /// Refused as a deadlock while waiting.
    Deadlock,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Cancelled => "cancelled",
            EndReason::Expired => "expired",
            EndReason::Killed => "killed",
            EndReason::TimedOut => "timed_out",
            EndReason::Deadlock => "deadlock",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResult {
    pub lock_id: u64,
    /// True only if this call ended a live lock.
    pub released: bool,
    /// What the lock's end was: `released` or `cancelled` by this call, or an
    /// earlier `released`, `expired`, `killed`... when `released` is false.
    pub outcome: EndReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub key: String,
    /// The key's new version: the revision that wrote it (never reused).
    pub version: u64,
    /// The version it replaced; absent if the key was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The lock this command released after applying (the command's
    /// `release`); absent when it released none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_lock_id: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub key: String,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    /// The lock this command released after applying (the command's
    /// `release`); absent when it released none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_lock_id: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterResult {
    pub key: String,
    pub value: i64,
    pub version: u64,
    /// The lock this command released after applying (the command's
    /// `release`); absent when it released none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_lock_id: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether the compares held (and so `success` ran rather than `failure`).
    pub succeeded: bool,
    pub revision: u64,
    /// One result per op of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
    /// The lock this command released after applying (the command's
    /// `release`); absent when it released none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_lock_id: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TxnOpResult {
    Get { key: String, entry: Option<Entry> },
    Write(WriteResult),
    Delete(DeleteResult),
    Counter(CounterResult),
}

/// A state key as read.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub value: Arc<Value>,
    pub version: u64,
    pub created_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A read of one key, with the revision the state was read at.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    #[serde(flatten)]
    pub entry: Entry,
    pub revision: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult {
    pub entries: Vec<Entry>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
    pub revision: u64,
}

/// One past version of a key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub time: u64,
    pub agent: String,
    pub value: Arc<Value>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    pub key: String,
    /// Newest first.
    pub versions: Vec<HistoryEntry>,
    pub revision: u64,
}

/// Holders and waiters of one lock key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyLocksInfo {
    pub key: String,
    pub holders: Vec<LockInfo>,
    /// In queue order.
    pub waiters: Vec<LockInfo>,
    /// Lock-delay after an expiry: no grant before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_until: Option<u64>,
    /// The highest fencing token ever granted on this key, if remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fence_token: Option<u64>,
    /// For a semaphore: its permits in all, and those held now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits_held: Option<u64>,
}

/// The state of a lock id, live or ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LockState {
    Live(LockInfo),
    Ended {
        lock_id: u64,
        status: EndReason,
        ended_at: u64,
    },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceCheck {
    pub key: String,
    pub token: u64,
    /// True if `token` is the fence of a lock that holds `key` now.
    pub valid: bool,
    /// Fences of the current holders.
    pub current_tokens: Vec<u64>,
}

/// Counts for `status` and metrics.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub revision: u64,
    pub time: u64,
    pub sessions: usize,
    pub locks_held: usize,
    pub locks_waiting: usize,
    pub keys: usize,
    /// What the keys count against `max_kv_bytes`: names and every kept
    /// version's compact JSON.
    pub kv_bytes: u64,
    /// What queued items and dead letters count against `max_queue_bytes`.
    pub queue_bytes: u64,
    pub idempotency_records: usize,
}

/// A quota: a capacity shared by reservations and committed use.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub quota: String,
    pub capacity: u64,
    /// Committed use.
    pub used: u64,
    /// Held by live reservations.
    pub reserved: u64,
    /// `capacity - used - reserved`.
    pub available: u64,
    pub reservations: usize,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    pub reservation_id: u64,
    pub quota: String,
    pub amount: u64,
    pub expires_at: u64,
    /// What the quota has left after this reservation.
    pub available: u64,
}

/// The end of a reservation: committed (with `committed` consumed) or returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleResult {
    pub reservation_id: u64,
    /// True only if this call settled a live reservation.
    pub settled: bool,
    /// `committed`, `released` or, when `settled` is false, how it ended earlier (`expired`...).
    pub outcome: String,
    pub committed: u64,
    pub returned: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateResult {
    pub bucket: String,
    pub taken: u64,
    /// Whole tokens left right after this take.
    pub remaining: u64,
    pub rate_per_sec: u64,
    pub burst: u64,
}

/// A token bucket and who has been spending it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub bucket: String,
    pub rate_per_sec: u64,
    pub burst: u64,
    /// Whole tokens available now.
    pub available: u64,
    /// Tokens taken per agent since the bucket was created, largest first.
    pub usage: Vec<AgentUsage>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUsage {
    pub agent: String,
    pub tokens: u64,
}

/// What `once` answered: a `fresh` value, a refresh `claimed` by the caller
/// (fulfil it with `claim_id`), or `waiting` for another agent's refresh.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnceResult {
    pub key: String,
    /// `fresh`, `claimed` or `waiting`.
    pub status: String,
    /// The value: fresh, or the stale one a claimant is replacing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Arc<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// For `claimed`: the claim to fulfil (also its fencing token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<u64>,
    /// For `claimed`: when the claim lapses; for `waiting`: when the wait ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResult {
    pub queue: String,
    pub item_id: u64,
    /// Ready items in the queue after this one was added.
    pub depth: usize,
}

/// A claimed item: work on it, then ack (or nack) with `claim_token`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub queue: String,
    pub item_id: u64,
    pub item: Arc<Value>,
    /// This delivery's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Fences this delivery: a late ack from an earlier, expired claim is FENCED.
    pub claim_token: u64,
    /// When the item becomes visible again unless acked.
    pub visible_at: u64,
    pub enqueued_at: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEmpty {
    pub queue: String,
    /// Always true: nothing was ready to claim.
    pub empty: bool,
    /// Items claimed by others or delayed, that may come back.
    pub in_flight: usize,
    pub delayed: usize,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettled {
    pub queue: String,
    pub item_id: u64,
    /// `acked`, `requeued`, `delayed` or `dead_lettered`.
    pub outcome: String,
}

/// Depth and age of a queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub queue: String,
    pub ready: usize,
    pub in_flight: usize,
    pub delayed: usize,
    pub dead_lettered: usize,
    /// Age of the oldest item not yet acked or dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_ms: Option<u64>,
    /// The most recent dead-lettered items, newest last.
    pub dead_letters: Vec<DeadLetter>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub item_id: u64,
    pub item: Arc<Value>,
    pub attempts: u32,
    pub dead_at: u64,
}
