//! Events: every mutation, grant, expiry and kill, as watch and audit serve them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::error::ErrorCode;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SessionOpened,
    SessionKeepalive,
    SessionClosed,
    SessionKilled,
    SessionExpired,
    /// A lock was granted: at once or after a wait.
    LockGranted,
    LockQueued,
    LockReleased,
    /// A waiting lock was withdrawn, timed out, or failed with its session.
    LockWaitEnded,
    LockRenewed,
    /// A held lock ended without being released (TTL, session expiry, kill).
    /// The holder must stop writing: its fence is no longer current.
    LeaseLost,
    Put,
    Patched,
    Deleted,
    KeyExpired,
    CounterAdded,
    QuotaSet,
    Reserved,
    ReservationCommitted,
    ReservationReleased,
    /// A reservation's TTL ran out: its amount went back to the pool.
    ReservationExpired,
    RateTaken,
    /// An agent got the refresh claim of a `once` key.
    OnceClaimed,
    Enqueued,
    QueueClaimed,
    QueueAcked,
    QueueNacked,
    /// A claimed item was not acked in time and went back to the queue.
    QueueClaimExpired,
    /// An item ran out of attempts.
    DeadLettered,
    /// A txn that wrote nothing (or was refused).
    Txn,
    /// A command that was refused: `outcome` says why.
    Refused,
}

/// One entry of the audit trail. `revision` is the log sequence number of
/// the command that caused it; a command may cause several events.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub time: u64,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    pub kind: EventKind,
    /// The namespace of the first key, if the event names keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// `ok`, or the error code of a refused command.
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Arc<Value>>,
    /// Free-form facts: the refused op, an end reason, a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    Ok(OkOutcome),
    Error(ErrorCode),
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OkOutcome {
    Ok,
}

impl Outcome {
    pub const OK: Outcome = Outcome::Ok(OkOutcome::Ok);

    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

/// Whether a watcher of `prefix` should see an event with these keys: an
/// empty prefix sees everything; otherwise any key must start with it.
pub fn keys_match_prefix<K: AsRef<str>>(keys: &[K], prefix: &str) -> bool {
    prefix.is_empty() || keys.iter().any(|k| k.as_ref().starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::keys_match_prefix;

    #[test]
    fn an_empty_prefix_sees_every_event_and_a_prefix_any_of_its_keys() {
        let none: [&str; 0] = [];
        assert!(
            keys_match_prefix(&none, ""),
            "keyless events reach a watcher of everything"
        );
        assert!(!keys_match_prefix(&none, "a/"));
        assert!(keys_match_prefix(&["b/1", "a/2"], "a/"));
        assert!(!keys_match_prefix(&["b/1", "ab/2"], "a/"));
        assert!(
            keys_match_prefix(&["ab/2"], "a"),
            "a prefix, not a namespace"
        );
    }
}
