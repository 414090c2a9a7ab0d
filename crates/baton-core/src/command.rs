//! Commands: the only way state changes. A command is what the sequencer
//! appends to the log, so it is plain serializable data; the same log applied
//! in the same order gives the same state everywhere.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The agent id the core uses for what it does by itself (expiries).
pub const SYSTEM_AGENT: &str = "baton";

/// One mutation, with who asked for it. Unknown fields are refused: a log
/// entry written by a newer Baton (a field this binary does not know, such
/// as `release` once was) must stop a replay loudly, not apply differently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The calling agent; idempotency keys and lock ownership are scoped to it.
    pub agent: String,
    /// The caller's session, if any. Locks taken with a session end with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// A retry with the same key gets the recorded reply instead of applying twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Refuse with FENCED unless this token is a current holder's of that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
    /// A lock the caller holds, released by this same command once its state
    /// mutation has applied: the write and the release (and the grant to the
    /// next waiter) share one seq. Only for `put`, `patch`, `delete`, `txn`
    /// and `counter_add`. All or nothing: an invalid release (unknown, ended,
    /// waiting or someone else's lock) refuses the mutation, a refused
    /// mutation releases nothing, and a txn whose compares failed
    /// (`succeeded: false`) keeps the lock, so the caller can retry under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    pub op: Op,
}

impl Command {
    pub fn new(agent: impl Into<String>, op: Op) -> Self {
        Command {
            agent: agent.into(),
            session: None,
            idempotency_key: None,
            fence: None,
            release: None,
            op,
        }
    }

    /// A time-only command: fires every expiry and wait deadline that is due.
    pub fn tick() -> Self {
        Command::new(SYSTEM_AGENT, Op::Tick)
    }

    pub fn set_limits(limits: crate::Limits) -> Self {
        Command::new(
            SYSTEM_AGENT,
            Op::SetLimits {
                limits: Box::new(limits),
            },
        )
    }

    pub fn with_session(mut self, session: u64) -> Self {
        self.session = Some(session);
        self
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn with_fence(mut self, key: impl Into<String>, token: u64) -> Self {
        self.fence = Some(Fence {
            key: key.into(),
            token,
        });
        self
    }

    /// Release the held lock `lock_id` in this command, after its mutation.
    pub fn with_release(mut self, lock_id: u64) -> Self {
        self.release = Some(lock_id);
        self
    }
}

/// A fencing token presented with a write: `token` must be the fence of a
/// lock that currently holds `key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    pub key: String,
    pub token: u64,
}

/// Lock modes: many shared holders, or one exclusive holder.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    #[default]
    Exclusive,
    Shared,
}

impl LockMode {
    pub fn compatible(self, other: LockMode) -> bool {
        self == LockMode::Shared && other == LockMode::Shared
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockAcquire {
    /// Keys to take, all or nothing. Order does not matter.
    pub keys: Vec<String>,
    #[serde(default)]
    pub mode: LockMode,
    /// Lease of the lock itself. Without it the lock lives as long as the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How long to queue if the keys are taken; 0 answers at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// After this lock expires (not released), keep its keys unavailable this long.
    #[serde(default)]
    pub lock_delay_ms: u64,
    /// Answer the grant with the locked keys' values as of the grant, so a
    /// holder can change what it locked without a separate read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

/// A change to a JSON value.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Patch {
    /// RFC 7396 JSON merge patch.
    Merge { patch: Value },
    /// RFC 6902 JSON Patch: an array of operations; a failing `test` is a conflict.
    Json { ops: Value },
}

/// One comparison of a txn. Exactly one of `version`, `value`, `exists` is given.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub key: String,
    /// The key's version; 0 means "absent".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// How to compare; `lt`/`gt` only for versions.
    #[serde(default)]
    pub op: CompareOp,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    #[default]
    Eq,
    Ne,
    Lt,
    Gt,
}

/// An operation inside a txn.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOp {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    Patch {
        key: String,
        patch: Patch,
    },
    Delete {
        key: String,
    },
    CounterAdd {
        key: String,
        delta: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Get { key }
            | TxnOp::Put { key, .. }
            | TxnOp::Patch { key, .. }
            | TxnOp::Delete { key }
            | TxnOp::CounterAdd { key, .. } => key,
        }
    }
}

/// etcd-style transaction: if every compare holds, run `success`, else
/// `failure`. All or nothing: if any op fails, nothing is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Txn {
    #[serde(default)]
    pub compares: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Nothing but the passage of time: fires what is due.
    Tick,
    /// The server's limits from here on, logged when a server starts with
    /// limits other than those in force, so that replaying the log applies
    /// every command under the limits it was first applied under. Only the
    /// server issues it.
    SetLimits {
        #[serde(deserialize_with = "crate::limits::deserialize_recorded")]
        limits: Box<crate::Limits>,
    },
    SessionOpen {
        ttl_ms: u64,
    },
    SessionKeepalive {
        session_id: u64,
    },
    SessionClose {
        session_id: u64,
    },
    /// Admin: end a session as if it expired, failing its waiters.
    SessionKill {
        session_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    LockAcquire(LockAcquire),
    /// Take `permits` of a counting semaphore of `capacity` permits on `key`.
    /// It is a shared lock with a weight: same queue (FIFO), leases, fencing,
    /// release/renew by lock id and deadlock detection as every lock.
    SemaphoreAcquire {
        key: String,
        permits: u64,
        capacity: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Release a held lock or cancel a waiting one. Idempotent.
    LockRelease {
        lock_id: u64,
    },
    LockRenew {
        lock_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    Put {
        key: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_absent: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    Patch {
        key: String,
        patch: Patch,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    Delete {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    Txn(Txn),
    CounterAdd {
        key: String,
        delta: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// Create a quota or change its capacity (`reset_used` starts a new period).
    QuotaSet {
        quota: String,
        capacity: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reset_used: bool,
    },
    /// Hold `amount` of a quota until committed, released or expired.
    QuotaReserve {
        quota: String,
        amount: u64,
        ttl_ms: u64,
    },
    /// Consume `actual` (at most the reserved amount); the rest returns to the pool.
    QuotaCommit {
        reservation_id: u64,
        actual: u64,
    },
    /// Return a reservation to the pool. Idempotent.
    QuotaRelease {
        reservation_id: u64,
    },
    /// Single-flight read of a shared credential or cache entry: its value if
    /// younger than `max_age_ms`, else a refresh claim for the first caller and
    /// a (bounded) wait for everyone else.
    Once {
        key: String,
        max_age_ms: u64,
        claim_ttl_ms: u64,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Publish the refreshed value under a current claim.
    OnceFulfil {
        key: String,
        claim_id: u64,
        value: Value,
    },
    /// Give a claim up: the next waiter gets it.
    OnceAbandon {
        key: String,
        claim_id: u64,
    },
    /// Withdraw a waiting request (a lock or a `once` wait), e.g. when its
    /// caller went away. Settled requests are left alone.
    CancelWait {
        id: u64,
    },
    /// Append an item to a FIFO work queue (created on first use). Retries
    /// are deduplicated with the command's idempotency key.
    QueueEnqueue {
        queue: String,
        item: Value,
        /// Deliveries before the item is dead-lettered (default 5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
    },
    /// Take the oldest ready item for `visibility_ms`; it returns to the
    /// queue if not acked in time.
    QueueClaim {
        queue: String,
        visibility_ms: u64,
    },
    /// Done with a claimed item: it leaves the queue.
    QueueAck {
        queue: String,
        item_id: u64,
        claim_token: u64,
    },
    /// Give a claimed item back, visible again after `delay_ms`.
    QueueNack {
        queue: String,
        item_id: u64,
        claim_token: u64,
        #[serde(default)]
        delay_ms: u64,
    },
    /// Take tokens from a shared token bucket (created on first use). With
    /// `wait_ms`, queue (FIFO) until the tokens are there instead of refusing.
    RateTake {
        bucket: String,
        tokens: u64,
        rate_per_sec: u64,
        burst: u64,
        #[serde(default)]
        wait_ms: u64,
    },
}

impl Op {
    /// The event kind a refused command of this op is audited under.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Tick => "tick",
            Op::SetLimits { .. } => "set_limits",
            Op::SessionOpen { .. } => "session_open",
            Op::SessionKeepalive { .. } => "session_keepalive",
            Op::SessionClose { .. } => "session_close",
            Op::SessionKill { .. } => "session_kill",
            Op::LockAcquire(_) => "lock_acquire",
            Op::SemaphoreAcquire { .. } => "semaphore_acquire",
            Op::LockRelease { .. } => "lock_release",
            Op::LockRenew { .. } => "lock_renew",
            Op::Put { .. } => "put",
            Op::Patch { .. } => "patch",
            Op::Delete { .. } => "delete",
            Op::Txn(_) => "txn",
            Op::CounterAdd { .. } => "counter_add",
            Op::QuotaSet { .. } => "quota_set",
            Op::QuotaReserve { .. } => "quota_reserve",
            Op::QuotaCommit { .. } => "quota_commit",
            Op::QuotaRelease { .. } => "quota_release",
            Op::RateTake { .. } => "rate_take",
            Op::Once { .. } => "once",
            Op::OnceFulfil { .. } => "once_fulfil",
            Op::OnceAbandon { .. } => "once_abandon",
            Op::CancelWait { .. } => "cancel_wait",
            Op::QueueEnqueue { .. } => "queue_enqueue",
            Op::QueueClaim { .. } => "queue_claim",
            Op::QueueAck { .. } => "queue_ack",
            Op::QueueNack { .. } => "queue_nack",
        }
    }

    /// Keys the op names, for auditing refused commands.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Op::LockAcquire(acquire) => acquire.keys.clone(),
            Op::Put { key, .. }
            | Op::Patch { key, .. }
            | Op::Delete { key, .. }
            | Op::CounterAdd { key, .. } => vec![key.clone()],
            Op::QuotaSet { quota, .. } | Op::QuotaReserve { quota, .. } => vec![quota.clone()],
            Op::RateTake { bucket, .. } => vec![bucket.clone()],
            Op::SemaphoreAcquire { key, .. } => vec![key.clone()],
            Op::QueueEnqueue { queue, .. }
            | Op::QueueClaim { queue, .. }
            | Op::QueueAck { queue, .. }
            | Op::QueueNack { queue, .. } => vec![queue.clone()],
            Op::Once { key, .. } | Op::OnceFulfil { key, .. } | Op::OnceAbandon { key, .. } => {
                vec![key.clone()]
            }
            Op::Txn(txn) => {
                let mut keys: Vec<String> = txn
                    .compares
                    .iter()
                    .map(|c| c.key.clone())
                    .chain(
                        txn.success
                            .iter()
                            .chain(&txn.failure)
                            .map(|op| op.key().to_string()),
                    )
                    .collect();
                keys.sort();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }
}
