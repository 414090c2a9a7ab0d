//! The state machine: `apply(seq, time, command) -> Output`. Everything here
//! is deterministic: the same commands with the same (seq, time) stamps give
//! byte-identical snapshots on every node.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::command::{Command, LockMode, Op};
use crate::error::{Error, ErrorCode};
use crate::event::{Event, EventKind, Outcome};
use crate::limits::Limits;
use crate::reply::{
    EndReason, HistoryEntry, LockInfo, LockStatus, Reply, Response, SessionInfo, Stats,
};
use crate::validate;

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The answer to the command's caller.
    pub reply: Reply,
    /// The audit trail of this command, in order.
    pub events: Vec<Event>,
    /// Waiting requests this command settled (granted or failed): the
    /// server answers their callers.
    pub wakeups: Vec<Wakeup>,
    /// Set when `reply` is provisional: the request waits, and its final
    /// reply will come as a [`Wakeup`] with this id (or be withdrawn with
    /// `Op::CancelWait`).
    pub pending: Option<u64>,
}

/// A queued lock request that has reached its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Wakeup {
    /// The waiting request's id: a lock id, or a `once` waiter's id.
    pub id: u64,
    pub reply: Reply,
}

/// Who a lock belongs to, for ownership and the wait-for graph: its session,
/// or, for a lock without a session, its agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Party {
    Session(u64),
    Agent(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub agent: String,
    pub ttl_ms: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LockPhase {
    Waiting { deadline: u64 },
    Held { fence_token: u64, granted_at: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lock {
    pub agent: String,
    pub session: Option<u64>,
    /// Sorted and deduplicated: the canonical order.
    pub keys: Vec<String>,
    pub mode: LockMode,
    pub ttl_ms: Option<u64>,
    pub lock_delay_ms: u64,
    pub phase: LockPhase,
    /// The lock's own lease end while held (None: lives with its session).
    pub expires_at: Option<u64>,
    /// For a semaphore: the permits it takes (its mode is shared).
    #[serde(default)]
    pub permits: Option<u64>,
    /// Its grant answers with the locked keys' values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

impl Lock {
    pub fn party(&self) -> Party {
        match self.session {
            Some(id) => Party::Session(id),
            None => Party::Agent(self.agent.clone()),
        }
    }

    pub fn fence_token(&self) -> Option<u64> {
        match self.phase {
            LockPhase::Held { fence_token, .. } => Some(fence_token),
            LockPhase::Waiting { .. } => None,
        }
    }

    pub fn is_held(&self) -> bool {
        matches!(self.phase, LockPhase::Held { .. })
    }
}

/// Per lock key: who holds it, who waits (FIFO), and any lock-delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct KeyLocks {
    pub holders: Vec<u64>,
    pub waiters: VecDeque<u64>,
    pub delayed_until: Option<u64>,
    /// Set while the key is used as a counting semaphore of this many permits.
    #[serde(default)]
    pub capacity: Option<u64>,
}

impl KeyLocks {
    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.delayed_until.is_none()
    }
}

/// A versioned JSON value and its recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub value: Arc<Value>,
    pub version: u64,
    pub created_revision: u64,
    pub expires_at: Option<u64>,
    /// When the value was last written (the core's time).
    #[serde(default)]
    pub updated_at: u64,
    /// Newest last; includes the current version.
    pub history: VecDeque<HistoryEntry>,
    /// What this key counts against `max_kv_bytes`: its name, and the
    /// compact JSON of every version kept (its history, or the current
    /// value alone when it keeps none). Recorded so that a version pushed
    /// out is subtracted without measuring the ones kept; 0 in snapshots
    /// from before it was recorded, and then measured on restore.
    #[serde(default)]
    pub bytes: u64,
}

/// Something due at a time. Every entry mirrors exactly one field of the
/// state (a session's expiry, a lock's lease or wait deadline, a key's TTL,
/// a key's lock-delay), and is replaced whenever that field changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Deadline {
    Session(u64),
    LockLease(u64),
    LockWait(u64),
    KeyTtl(String),
    LockDelay(String),
    Reservation(u64),
    OnceClaim(String),
    OnceWait(u64),
    /// A queue item becomes visible again (claim expiry or nack delay).
    QueueItem(String, u64),
    /// A bucket's head waiter can be served.
    BucketRefill(String),
    RateWait(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EndedKind {
    Session,
    Lock,
    Reservation,
}

/// A remembered end of a lock or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ended {
    pub kind: EndedKind,
    pub reason: EndReason,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    pub fingerprint: u64,
    /// The reply as sent (see `Response::Recorded`); for a request that
    /// still waits, its provisional reply.
    pub reply: Result<Value, Error>,
    pub time: u64,
    /// The id of the wait this request is in, until its wakeup replaces `reply`.
    #[serde(default)]
    pub waiting: Option<u64>,
}

/// Effects gathered while applying one command.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub events: Vec<Event>,
    pub wakeups: Vec<Wakeup>,
    pub pending: Option<u64>,
}

impl Effects {
    fn into_output(self, reply: Reply) -> Output {
        Output {
            reply,
            events: self.events,
            wakeups: self.wakeups,
            pending: self.pending,
        }
    }
}

/// The state's collections are persistent (structurally shared) maps: a
/// clone shares every node until one side writes to it, so the writer's copy
/// for a background snapshot is O(1) whatever the state's size (a deep copy of
/// 100,000 keys stalled every write for ~130 ms), and a write while a snapshot
/// is encoding copies only the nodes on its path, once.
pub(crate) type Map<K, V> = imbl::OrdMap<K, V>;
pub(crate) type Set<T> = imbl::OrdSet<T>;

/// The limits a state machine applies commands under. Absent only from
/// snapshots written before limits were recorded; restoring one of those
/// puts the configured limits in force. Read as recorded
/// ([`Limits::from_recorded`]).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub(crate) struct InForce(Option<Limits>);

impl<'de> Deserialize<'de> for InForce {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let recorded = Option::<serde_json::Map<String, Value>>::deserialize(deserializer)?;
        recorded
            .map(Limits::from_recorded)
            .transpose()
            .map(InForce)
            .map_err(serde::de::Error::custom)
    }
}

impl std::ops::Deref for InForce {
    type Target = Limits;

    fn deref(&self) -> &Limits {
        self.0
            .as_ref()
            .expect("limits are set when a state machine is made or restored")
    }
}

/// Baton's whole replicated state. See the crate docs for the rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMachine {
    /// The limits in force. Recorded in snapshots, and changed only by a
    /// logged `SetLimits`: replaying the log must validate every command as
    /// it was validated when first applied, whatever the server is
    /// configured with now.
    #[serde(default)]
    pub(crate) limits: InForce,
    /// Sequence number of the last applied command: the current revision.
    pub(crate) last_seq: u64,
    /// The core's clock: the largest timestamp seen, never moving back.
    pub(crate) now: u64,
    pub(crate) sessions: Map<u64, Session>,
    pub(crate) locks: Map<u64, Lock>,
    pub(crate) lock_keys: Map<String, KeyLocks>,
    /// Highest fencing token ever granted per key that was ever locked.
    /// Bounded by the number of distinct lock keys in use; dropped with the
    /// key's KeyLocks when idle, which is safe because tokens are sequence
    /// numbers and so keep growing anyway.
    pub(crate) kv: Map<String, Stored>,
    pub(crate) deadlines: Set<(u64, Deadline)>,
    pub(crate) ended: Map<u64, Ended>,
    /// agent -> idempotency key -> record.
    pub(crate) idempotency: Map<String, Map<String, IdempotencyRecord>>,
    /// (time, agent, key) in insertion order, for retention.
    pub(crate) idempotency_order: imbl::Vector<(u64, String, String)>,
    #[serde(default)]
    pub(crate) quotas: Map<String, crate::quota::Quota>,
    #[serde(default)]
    pub(crate) reservations: Map<u64, crate::quota::Reservation>,
    #[serde(default)]
    pub(crate) buckets: Map<String, crate::quota::Bucket>,
    #[serde(default)]
    pub(crate) onces: Map<String, crate::once::OnceState>,
    #[serde(default)]
    pub(crate) once_waiters: Map<u64, crate::once::OnceWaiter>,
    #[serde(default)]
    pub(crate) queues: Map<String, crate::queue::Queue>,
    #[serde(default)]
    pub(crate) rate_waiters: Map<u64, crate::quota::RateWaiter>,
    /// Waiting requests made with an idempotency key: wait id -> (agent, key).
    #[serde(default)]
    pub(crate) idempotency_waits: Map<u64, (String, String)>,
    /// Derived from `locks`: every live lock of each party. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) party_locks: Map<Party, BTreeSet<u64>>,
    #[serde(skip)]
    pub(crate) locks_held: usize,
    /// Derived from `kv`: the sum of every key's `bytes`. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) kv_bytes: u64,
    /// Derived from `queues`: the sum of every queue's `bytes`. Rebuilt on restore.
    #[serde(skip)]
    pub(crate) queue_bytes: u64,
    /// Derived from `queues`: items in all of them, against
    /// `max_queue_items` without a walk over every queue per enqueue.
    /// Rebuilt on restore.
    #[serde(skip)]
    pub(crate) queue_items: usize,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(Limits::default())
    }
}

impl StateMachine {
    pub fn new(limits: Limits) -> Self {
        StateMachine {
            limits: InForce(Some(limits)),
            last_seq: 0,
            now: 0,
            sessions: Map::new(),
            locks: Map::new(),
            lock_keys: Map::new(),
            kv: Map::new(),
            deadlines: Set::new(),
            ended: Map::new(),
            idempotency: Map::new(),
            idempotency_order: imbl::Vector::new(),
            quotas: Map::new(),
            reservations: Map::new(),
            buckets: Map::new(),
            onces: Map::new(),
            once_waiters: Map::new(),
            queues: Map::new(),
            rate_waiters: Map::new(),
            idempotency_waits: Map::new(),
            party_locks: Map::new(),
            locks_held: 0,
            kv_bytes: 0,
            queue_bytes: 0,
            queue_items: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every request that waits (queued lock requests, `once` and rate
    /// waits), as (id, agent): after a restart, the waits nobody is there to
    /// answer, to withdraw unless a retry joins them.
    pub fn waiting_requests(&self) -> Vec<(u64, String)> {
        let locks = self
            .locks
            .iter()
            .filter(|(_, lock)| !lock.is_held())
            .map(|(id, lock)| (*id, lock.agent.clone()));
        let onces = self
            .once_waiters
            .iter()
            .map(|(id, waiter)| (*id, waiter.agent.clone()));
        let rates = self
            .rate_waiters
            .iter()
            .map(|(id, waiter)| (*id, waiter.agent.clone()));
        locks.chain(onces).chain(rates).collect()
    }

    /// The revision: sequence number of the last applied command.
    pub fn revision(&self) -> u64 {
        self.last_seq
    }

    /// The core's current time (ms), as stamped by the sequencer.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// When the next expiry or wait deadline is due: apply a tick at or after it.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.get_min().map(|(time, _)| *time)
    }

    /// Serialize the whole state. Same history, same bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state machine always serializes")
    }

    /// Rebuild a state machine from [`StateMachine::snapshot`] bytes.
    ///
    /// A field this binary does not know is refused, not skipped: a newer
    /// Baton wrote it, and restoring without it would diverge from the state
    /// that was acknowledged (the same gate commands have). So a field can
    /// only ever be added with the layout staying readable by newer binaries;
    /// removing one means keeping it as a `#[serde(default, skip_serializing)]`
    /// placeholder, or older snapshots stop restoring.
    ///
    /// The limits in force are the snapshot's; `limits` only stands in for
    /// a snapshot written before they were recorded. A server configured
    /// differently logs the change ([`Op::SetLimits`]) once recovered.
    pub fn restore(bytes: &[u8], limits: Limits) -> Result<Self, Error> {
        let unreadable = |e: serde_json::Error| {
            Error::new(ErrorCode::Internal, format!("snapshot is unreadable: {e}"))
        };
        let mut unknown = Vec::new();
        let mut decoder = serde_json::Deserializer::from_slice(bytes);
        let mut machine: StateMachine =
            serde_ignored::deserialize(&mut decoder, |path| unknown.push(path.to_string()))
                .map_err(unreadable)?;
        decoder.end().map_err(unreadable)?;
        if !unknown.is_empty() {
            const SHOWN: usize = 5;
            let shown: Vec<&str> = unknown.iter().take(SHOWN).map(String::as_str).collect();
            return Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "snapshot has {} field(s) this Baton does not know ({}{}); a newer Baton wrote it: run that version on this data directory",
                    unknown.len(),
                    shown.join(", "),
                    if unknown.len() > SHOWN { ", ..." } else { "" }
                ),
            ));
        }
        if machine.limits.0.is_none() {
            machine.limits = InForce(Some(limits));
        }
        for (id, lock) in &machine.locks {
            machine
                .party_locks
                .entry(lock.party())
                .or_default()
                .insert(*id);
            if lock.is_held() {
                machine.locks_held += 1;
            }
        }
        let unmeasured: Vec<String> = machine
            .kv
            .iter()
            .filter(|(_, stored)| stored.bytes == 0)
            .map(|(key, _)| key.clone())
            .collect();
        for key in unmeasured {
            let stored = machine.kv.get_mut(&key).expect("listed above");
            stored.bytes = crate::kv::measure(&key, stored);
        }
        machine.kv_bytes = machine.kv.values().map(|stored| stored.bytes).sum();
        let unmeasured: Vec<String> = machine
            .queues
            .iter()
            .filter(|(_, queue)| queue.bytes == 0)
            .map(|(name, _)| name.clone())
            .collect();
        for name in unmeasured {
            let queue = machine.queues.get_mut(&name).expect("listed above");
            queue.bytes = queue.measure();
        }
        machine.queue_bytes = machine.queues.values().map(|queue| queue.bytes).sum();
        machine.queue_items = machine.queues.values().map(|queue| queue.items.len()).sum();
        Ok(machine)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            revision: self.last_seq,
            time: self.now,
            sessions: self.sessions.len(),
            locks_held: self.locks_held,
            locks_waiting: self.locks.len() - self.locks_held,
            keys: self.kv.len(),
            kv_bytes: self.kv_bytes,
            queue_bytes: self.queue_bytes,
            idempotency_records: self.idempotency_order.len(),
        }
    }

    /// Apply one command stamped with its log sequence number and time.
    ///
    /// `seq` must exceed every earlier one (the sequencer's job); `time` may
    /// go backwards, in which case the core keeps its own later time.
    pub fn apply(&mut self, seq: u64, time: u64, command: &Command) -> Output {
        assert!(
            seq > self.last_seq,
            "sequence numbers must increase: got {seq} after {}",
            self.last_seq
        );
        self.last_seq = seq;
        self.now = self.now.max(time);
        let mut fx = Effects::default();
        self.fire_due(seq, &mut fx);
        // Before a retry looks up its record: a wait that a deadline has just
        // settled must replay as settled, not join a wait that is over.
        self.settle_idempotent_waits(&fx.wakeups);
        self.expire_idempotency();
        if matches!(command.op, Op::Tick) {
            return self.finish(fx, Ok(Response::Empty {}));
        }

        let idempotency = match self.check_idempotency(command) {
            Ok(Some(recorded)) => {
                // A retry of a request that still waits joins the original wait.
                if let Some(id) = recorded.waiting {
                    fx.pending = Some(id);
                    return self.finish(fx, recorded.reply.map(Response::Recorded));
                }
                let reply = self.replay(recorded.reply);
                return self.finish(fx, reply);
            }
            Ok(None) => command
                .idempotency_key
                .as_ref()
                .map(|key| (key.clone(), fingerprint(command))),
            Err(error) => {
                self.refused(seq, command, &error, &mut fx);
                return self.finish(fx, Err(error));
            }
        };

        let reply = self.execute(seq, command, &mut fx);
        if let Err(error) = &reply {
            self.refused(seq, command, error, &mut fx);
        }
        if reply.is_err() {
            fx.pending = None;
        }
        // Only what applied is recorded. A refusal applied nothing, and many
        // say "retry after N ms" (a held lock, an empty bucket, a full
        // quota): replaying it would refuse the retry it invites for as long
        // as the record is kept. Run again, the retry applies at most once.
        if let Some((key, fingerprint)) = idempotency
            && reply.is_ok()
        {
            self.record_idempotency(&command.agent, key, fingerprint, &reply, fx.pending);
        }
        self.debug_check_invariants();
        self.finish(fx, reply)
    }

    /// Build the output; a wakeup of a request made with an idempotency key
    /// becomes that key's recorded reply, so a retry gets the outcome.
    fn finish(&mut self, fx: Effects, reply: Reply) -> Output {
        self.settle_idempotent_waits(&fx.wakeups);
        fx.into_output(reply)
    }

    /// The records of idempotent requests that `wakeups` settle take the
    /// wakeup's reply; a wait that ended without applying (timed out,
    /// withdrawn, its session gone) leaves no record, like any refusal.
    fn settle_idempotent_waits(&mut self, wakeups: &[Wakeup]) {
        for wakeup in wakeups {
            let Some((agent, key)) = self.idempotency_waits.remove(&wakeup.id) else {
                continue;
            };
            let Some(records) = self.idempotency.get_mut(&agent) else {
                continue;
            };
            if records
                .get(&key)
                .is_none_or(|r| r.waiting != Some(wakeup.id))
            {
                continue;
            }
            if wakeup.reply.is_err() {
                records.remove(&key);
                if records.is_empty() {
                    self.idempotency.remove(&agent);
                }
            } else if let Some(record) = records.get_mut(&key) {
                record.reply = as_recorded(&wakeup.reply);
                record.waiting = None;
            }
        }
    }

    fn execute(&mut self, seq: u64, command: &Command, fx: &mut Effects) -> Reply {
        validate::agent(&command.agent, &self.limits)?;
        if let Some(fence) = &command.fence {
            validate::key("fence.key", &fence.key, &self.limits)?;
            self.check_fence_current(&fence.key, fence.token)?;
        }
        let names_its_session = matches!(
            command.op,
            Op::SessionKeepalive { .. } | Op::SessionClose { .. } | Op::SessionKill { .. }
        );
        if let (Some(session), false) = (command.session, names_its_session) {
            self.check_session_owner(session, &command.agent)?;
        }
        let Some(lock_id) = command.release else {
            return self.execute_op(seq, command, fx);
        };
        // Checked before anything changes: a release that would be refused
        // refuses the mutation with it.
        self.check_release(command, lock_id)?;
        let mut response = self.execute_op(seq, command, fx)?;
        let released = match &mut response {
            // Failed compares keep the lock: the caller retries under it.
            Response::Txn(txn) if !txn.succeeded => None,
            Response::Txn(txn) => Some(&mut txn.released_lock_id),
            Response::Write(write) => Some(&mut write.released_lock_id),
            Response::Delete(delete) => Some(&mut delete.released_lock_id),
            Response::Counter(counter) => Some(&mut counter.released_lock_id),
            other => unreachable!("check_release admits only state mutations, got {other:?}"),
        };
        if let Some(released) = released {
            // A state mutation never ends a lock, so it is still held.
            assert!(
                self.locks.get(&lock_id).is_some_and(Lock::is_held),
                "lock {lock_id} ended during the mutation that releases it"
            );
            *released = Some(lock_id);
            self.end_lock(seq, lock_id, EndReason::Released, fx);
        }
        Ok(response)
    }

    /// A mutation's `release` must name a held lock of the caller's, with
    /// `Op::LockRelease`'s ownership rule and errors: NOT_FOUND for an
    /// unknown lock, PERMISSION_DENIED for another agent's, FENCED for one
    /// that has ended (the write would no longer be covered by it).
    fn check_release(&self, command: &Command, lock_id: u64) -> Result<(), Error> {
        if !matches!(
            command.op,
            Op::Put { .. }
                | Op::Patch { .. }
                | Op::Delete { .. }
                | Op::Txn(_)
                | Op::CounterAdd { .. }
        ) {
            return Err(Error::invalid(
                "release",
                format!(
                    "{} cannot release a lock; only put, patch, delete, txn and counter_add can (release the lock on its own)",
                    command.op.name()
                ),
            ));
        }
        let lock = self.owned_lock(lock_id, &command.agent)?;
        if !lock.is_held() {
            return Err(Error::invalid(
                "release",
                format!(
                    "lock {lock_id} is still waiting; only a held lock can be released with a write"
                ),
            ));
        }
        Ok(())
    }

    fn execute_op(&mut self, seq: u64, command: &Command, fx: &mut Effects) -> Reply {
        match &command.op {
            Op::Tick => Ok(Response::Empty {}),
            Op::SetLimits { limits } => {
                self.limits = InForce(Some(Limits::clone(limits)));
                Ok(Response::Empty {})
            }
            Op::SessionOpen { ttl_ms } => self.session_open(seq, command, *ttl_ms, fx),
            Op::SessionKeepalive { session_id } => {
                self.session_keepalive(seq, command, *session_id, fx)
            }
            Op::SessionClose { session_id } => self.session_close(seq, command, *session_id, fx),
            Op::SessionKill { session_id, reason } => {
                self.session_kill(seq, command, *session_id, reason.as_deref(), fx)
            }
            Op::LockAcquire(request) => self.lock_acquire(seq, command, request, fx),
            Op::SemaphoreAcquire {
                key,
                permits,
                capacity,
                ttl_ms,
                wait_ms,
            } => self.semaphore_acquire(
                seq, command, key, *permits, *capacity, *ttl_ms, *wait_ms, fx,
            ),
            Op::LockRelease { lock_id } => self.lock_release(seq, command, *lock_id, fx),
            Op::LockRenew { lock_id, ttl_ms } => {
                self.lock_renew(seq, command, *lock_id, *ttl_ms, fx)
            }
            Op::Put {
                key,
                value,
                if_version,
                if_absent,
                ttl_ms,
            } => self.put(
                seq,
                command,
                key,
                value,
                *if_version,
                *if_absent,
                *ttl_ms,
                fx,
            ),
            Op::Patch {
                key,
                patch,
                if_version,
            } => self.patch(seq, command, key, patch, *if_version, fx),
            Op::Delete { key, if_version } => self.delete(seq, command, key, *if_version, fx),
            Op::Txn(txn) => self.txn(seq, command, txn, fx),
            Op::CounterAdd {
                key,
                delta,
                min,
                max,
            } => self.counter_add(seq, command, key, *delta, *min, *max, fx),
            Op::QuotaSet {
                quota,
                capacity,
                reset_used,
            } => self.quota_set(seq, command, quota, *capacity, *reset_used, fx),
            Op::QuotaReserve {
                quota,
                amount,
                ttl_ms,
            } => self.quota_reserve(seq, command, quota, *amount, *ttl_ms, fx),
            Op::QuotaCommit {
                reservation_id,
                actual,
            } => self.quota_settle(seq, command, *reservation_id, Some(*actual), fx),
            Op::QuotaRelease { reservation_id } => {
                self.quota_settle(seq, command, *reservation_id, None, fx)
            }
            Op::Once {
                key,
                max_age_ms,
                claim_ttl_ms,
                wait_ms,
            } => self.once(seq, command, key, *max_age_ms, *claim_ttl_ms, *wait_ms, fx),
            Op::OnceFulfil {
                key,
                claim_id,
                value,
            } => self.once_fulfil(seq, command, key, *claim_id, value, fx),
            Op::OnceAbandon { key, claim_id } => {
                self.once_abandon(seq, command, key, *claim_id, fx)
            }
            Op::CancelWait { id } => self.cancel_wait(seq, command, *id, fx),
            Op::QueueEnqueue {
                queue,
                item,
                max_attempts,
            } => self.queue_enqueue(seq, command, queue, item, *max_attempts, fx),
            Op::QueueClaim {
                queue,
                visibility_ms,
            } => self.queue_claim(seq, command, queue, *visibility_ms, fx),
            Op::QueueAck {
                queue,
                item_id,
                claim_token,
            } => self.queue_settle(seq, command, queue, *item_id, *claim_token, None, fx),
            Op::QueueNack {
                queue,
                item_id,
                claim_token,
                delay_ms,
            } => self.queue_settle(
                seq,
                command,
                queue,
                *item_id,
                *claim_token,
                Some(*delay_ms),
                fx,
            ),
            Op::RateTake {
                bucket,
                tokens,
                rate_per_sec,
                burst,
                wait_ms,
            } => self.rate_take(
                seq,
                command,
                bucket,
                *tokens,
                *rate_per_sec,
                *burst,
                *wait_ms,
                fx,
            ),
        }
    }

    // ---- events -------------------------------------------------------------

    pub(crate) fn event(
        &self,
        seq: u64,
        agent: &str,
        session: Option<u64>,
        kind: EventKind,
        keys: Vec<String>,
    ) -> Event {
        Event {
            revision: seq,
            time: self.now,
            agent: agent.to_string(),
            session,
            kind,
            namespace: keys.first().map(|k| validate::namespace_of(k).to_string()),
            keys,
            outcome: Outcome::OK,
            lock_id: None,
            fence_token: None,
            version: None,
            value: None,
            detail: None,
        }
    }

    fn refused(&self, seq: u64, command: &Command, error: &Error, fx: &mut Effects) {
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::Refused,
            command.op.keys(),
        );
        event.outcome = Outcome::Error(error.code);
        event.detail = Some(json!({ "op": command.op.name(), "message": error.message }));
        fx.events.push(event);
    }

    // ---- time ---------------------------------------------------------------

    pub(crate) fn set_deadline(&mut self, old: Option<u64>, new: Option<u64>, what: Deadline) {
        if old == new {
            return;
        }
        if let Some(time) = old {
            let removed = self.deadlines.remove(&(time, what.clone()));
            debug_assert!(
                removed.is_some(),
                "deadline {what:?} at {time} was not indexed"
            );
        }
        if let Some(time) = new {
            self.deadlines.insert((time, what));
        }
    }

    /// Fire everything due at or before `now`, oldest first.
    fn fire_due(&mut self, seq: u64, fx: &mut Effects) {
        while let Some((time, _)) = self.deadlines.get_min() {
            if *time > self.now {
                break;
            }
            let Some((_, due)) = self.deadlines.remove_min() else {
                break;
            };
            match due {
                Deadline::Session(id) => {
                    if let Some(session) = self.sessions.get_mut(&id) {
                        // Popped already: clear the mirror so end_session does not unindex it.
                        session.expires_at = u64::MAX;
                        self.end_session(
                            seq,
                            id,
                            EndReason::Expired,
                            crate::command::SYSTEM_AGENT,
                            None,
                            fx,
                        );
                    }
                }
                Deadline::LockLease(id) => {
                    if let Some(lock) = self.locks.get_mut(&id) {
                        lock.expires_at = None;
                        self.end_lock(seq, id, EndReason::Expired, fx);
                    }
                }
                Deadline::LockWait(id) => {
                    if let Some(lock) = self.locks.get_mut(&id) {
                        lock.phase = LockPhase::Waiting { deadline: u64::MAX };
                        self.end_lock(seq, id, EndReason::TimedOut, fx);
                    }
                }
                Deadline::KeyTtl(key) => self.expire_key(seq, &key, fx),
                Deadline::Reservation(id) => self.expire_reservation(seq, id, fx),
                Deadline::OnceClaim(key) => self.expire_claim(seq, &key, fx),
                Deadline::QueueItem(queue, id) => self.queue_item_due(seq, &queue, id, fx),
                Deadline::BucketRefill(bucket) => self.refill_bucket(seq, &bucket, fx),
                Deadline::RateWait(id) => self.end_rate_wait(id, true, fx),
                Deadline::OnceWait(id) => {
                    if let Some(waiter) = self.once_waiters.get_mut(&id) {
                        // Popped already: clear the mirror so nothing unindexes it.
                        waiter.deadline = u64::MAX;
                    }
                    self.once_wait_timed_out(id, fx);
                }
                Deadline::LockDelay(key) => {
                    if let Some(state) = self.lock_keys.get_mut(&key) {
                        state.delayed_until = None;
                    }
                    self.grant_waiters(seq, std::slice::from_ref(&key), fx);
                    self.forget_idle_key(&key);
                }
            }
        }
    }

    // ---- sessions -----------------------------------------------------------

    fn check_session_owner(&self, session_id: u64, agent: &str) -> Result<&Session, Error> {
        match self.sessions.get(&session_id) {
            Some(session) if session.agent == agent => Ok(session),
            Some(session) => Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "session {session_id} belongs to agent {:?}, not {agent:?}",
                    session.agent
                ),
            )),
            None => Err(self.gone_error("session", session_id)),
        }
    }

    /// The error for a lock or session id that is not live: FENCED if we
    /// remember how it ended, NOT_FOUND if we never saw it (or forgot).
    pub(crate) fn gone_error(&self, what: &str, id: u64) -> Error {
        match self.ended.get(&id) {
            Some(ended) => {
                let next = match (what, ended.reason) {
                    ("session", _) => "everything it held was released; open a new session",
                    (_, EndReason::Released | EndReason::Cancelled) => {
                        "acquire the lock again if you need it"
                    }
                    _ => "you no longer hold it: stop writing with its fence and acquire again",
                };
                Error::new(
                    ErrorCode::Fenced,
                    format!(
                        "{what} {id} ended ({}) at {}; {next}",
                        ended.reason.as_str(),
                        validate::rfc3339(ended.at)
                    ),
                )
                .with_details(json!({ "id": id, "status": ended.reason, "ended_at": ended.at }))
            }
            None => Error::new(
                ErrorCode::NotFound,
                format!("{what} {id} is unknown (never existed, or ended long ago)"),
            )
            .with_details(json!({ "id": id })),
        }
    }

    pub(crate) fn remember_end(&mut self, id: u64, kind: EndedKind, reason: EndReason) {
        self.ended.insert(
            id,
            Ended {
                kind,
                reason,
                at: self.now,
            },
        );
        while self.ended.len() > self.limits.ended_records {
            let Some(&(oldest, _)) = self.ended.get_min() else {
                break;
            };
            self.ended.remove(&oldest);
        }
    }

    fn session_info(&self, id: u64, session: &Session) -> SessionInfo {
        SessionInfo {
            session_id: id,
            agent: session.agent.clone(),
            ttl_ms: session.ttl_ms,
            expires_at: session.expires_at,
        }
    }

    /// A live session, or why there is none.
    pub fn session(&self, session_id: u64) -> Result<SessionInfo, Error> {
        match self.sessions.get(&session_id) {
            Some(session) => Ok(self.session_info(session_id, session)),
            None => Err(self.gone_error("session", session_id)),
        }
    }

    /// Every live session, ordered by id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .map(|(id, s)| self.session_info(*id, s))
            .collect()
    }

    fn session_open(
        &mut self,
        seq: u64,
        command: &Command,
        ttl_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::ttl("ttl_ms", ttl_ms, &self.limits)?;
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} sessions are open, the limit (max_sessions); close idle sessions",
                    self.limits.max_sessions
                ),
            ));
        }
        let session = Session {
            agent: command.agent.clone(),
            ttl_ms,
            expires_at: self.now.saturating_add(ttl_ms),
        };
        self.set_deadline(None, Some(session.expires_at), Deadline::Session(seq));
        let info = self.session_info(seq, &session);
        self.sessions.insert(seq, session);
        let mut event = self.event(
            seq,
            &command.agent,
            Some(seq),
            EventKind::SessionOpened,
            Vec::new(),
        );
        event.detail = Some(json!({ "ttl_ms": ttl_ms }));
        fx.events.push(event);
        Ok(Response::Session(info))
    }

    fn session_keepalive(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        fx: &mut Effects,
    ) -> Reply {
        self.check_session_owner(id, &command.agent)?;
        let now = self.now;
        let session = self.sessions.get_mut(&id).expect("checked above");
        let old = session.expires_at;
        session.expires_at = now.saturating_add(session.ttl_ms);
        let new = session.expires_at;
        let info = SessionInfo {
            session_id: id,
            agent: session.agent.clone(),
            ttl_ms: session.ttl_ms,
            expires_at: new,
        };
        self.set_deadline(Some(old), Some(new), Deadline::Session(id));
        fx.events.push(self.event(
            seq,
            &command.agent,
            Some(id),
            EventKind::SessionKeepalive,
            Vec::new(),
        ));
        Ok(Response::Session(info))
    }

    fn session_close(&mut self, seq: u64, command: &Command, id: u64, fx: &mut Effects) -> Reply {
        let info = self.session_info(id, self.check_session_owner(id, &command.agent)?);
        self.end_session(seq, id, EndReason::Released, &command.agent, None, fx);
        Ok(Response::Session(info))
    }

    fn session_kill(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        reason: Option<&str>,
        fx: &mut Effects,
    ) -> Reply {
        let Some(session) = self.sessions.get(&id) else {
            return Err(self.gone_error("session", id));
        };
        let info = self.session_info(id, session);
        self.end_session(seq, id, EndReason::Killed, &command.agent, reason, fx);
        Ok(Response::Session(info))
    }

    /// End a session: its held locks end with `reason`, its waiters fail.
    pub(crate) fn end_session(
        &mut self,
        seq: u64,
        id: u64,
        reason: EndReason,
        by_agent: &str,
        message: Option<&str>,
        fx: &mut Effects,
    ) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let expires_at = (session.expires_at != u64::MAX).then_some(session.expires_at);
        self.set_deadline(expires_at, None, Deadline::Session(id));
        let lock_ids: Vec<u64> = self
            .party_locks
            .get(&Party::Session(id))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for lock_id in lock_ids {
            self.end_lock(seq, lock_id, reason, fx);
        }
        // Its `once` and rate waits fail with it, as its lock waits do: a
        // killed agent must not be handed a refresh or spend tokens later.
        let ended = |what: &str, wait: u64| {
            Error::new(
                ErrorCode::Fenced,
                format!(
                    "{what} {wait} failed: its session {id} ended ({}) while it waited",
                    reason.as_str()
                ),
            )
        };
        let once_waits: Vec<u64> = self
            .once_waiters
            .iter()
            .filter(|(_, waiter)| waiter.session == Some(id))
            .map(|(wait, _)| *wait)
            .collect();
        for wait in once_waits {
            self.fail_once_waiter(wait, ended("once wait", wait), fx);
        }
        let rate_waits: Vec<u64> = self
            .rate_waiters
            .iter()
            .filter(|(_, waiter)| waiter.session == Some(id))
            .map(|(wait, _)| *wait)
            .collect();
        for wait in rate_waits {
            self.fail_rate_wait(wait, ended("rate wait", wait), fx);
        }
        self.end_session_claims(seq, id, reason, fx);
        self.remember_end(id, EndedKind::Session, reason);
        let kind = match reason {
            EndReason::Expired => EventKind::SessionExpired,
            EndReason::Killed => EventKind::SessionKilled,
            _ => EventKind::SessionClosed,
        };
        let mut event = self.event(seq, by_agent, Some(id), kind, Vec::new());
        event.detail = Some(json!({ "agent": session.agent, "reason": message }));
        fx.events.push(event);
    }

    // ---- locks: shared helpers ----------------------------------------------

    /// When a held lock's lease ends: its own TTL or its session's, whichever first.
    pub(crate) fn effective_expiry(&self, lock: &Lock) -> Option<u64> {
        let session_expiry = lock
            .session
            .and_then(|id| self.sessions.get(&id))
            .map(|s| s.expires_at);
        match (lock.expires_at, session_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn lock_info(&self, id: u64, lock: &Lock) -> LockInfo {
        let (status, fence_token, granted_at, wait_deadline) = match lock.phase {
            LockPhase::Held {
                fence_token,
                granted_at,
            } => (LockStatus::Held, Some(fence_token), Some(granted_at), None),
            LockPhase::Waiting { deadline } => (LockStatus::Waiting, None, None, Some(deadline)),
        };
        LockInfo {
            lock_id: id,
            status,
            agent: lock.agent.clone(),
            session: lock.session,
            keys: lock.keys.clone(),
            mode: lock.mode,
            fence_token,
            granted_at,
            expires_at: if lock.is_held() {
                self.effective_expiry(lock)
            } else {
                None
            },
            wait_deadline,
            permits: lock.permits,
            values: None,
        }
    }

    pub(crate) fn forget_idle_key(&mut self, key: &str) {
        if self.lock_keys.get(key).is_some_and(KeyLocks::is_idle) {
            self.lock_keys.remove(key);
        }
    }

    /// FENCED unless `token` is the fence of a current holder of `key`.
    pub(crate) fn check_fence_current(&self, key: &str, token: u64) -> Result<(), Error> {
        let current = self.current_tokens(key);
        if current.contains(&token) {
            return Ok(());
        }
        let message = if current.is_empty() {
            format!(
                "fence token {token} for {key:?} is no longer current: the key is not locked now; stop writing and acquire the lock again"
            )
        } else {
            format!(
                "fence token {token} for {key:?} is no longer current (current: {current:?}); stop writing and acquire the lock again"
            )
        };
        Err(Error::new(ErrorCode::Fenced, message)
            .with_details(json!({ "key": key, "token": token, "current_tokens": current })))
    }

    pub(crate) fn current_tokens(&self, key: &str) -> Vec<u64> {
        self.lock_keys
            .get(key)
            .map(|state| {
                state
                    .holders
                    .iter()
                    .filter_map(|id| self.locks.get(id).and_then(Lock::fence_token))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ---- idempotency --------------------------------------------------------

    /// `Ok(Some(reply))` for a repeat, `Ok(None)` for a first use, `Err` for a mismatch.
    fn check_idempotency(&self, command: &Command) -> Result<Option<IdempotencyRecord>, Error> {
        let Some(key) = &command.idempotency_key else {
            return Ok(None);
        };
        if key.is_empty() || key.len() > self.limits.max_idempotency_key_bytes {
            return Err(Error::invalid(
                "idempotency_key",
                format!(
                    "must be 1 to {} bytes",
                    self.limits.max_idempotency_key_bytes
                ),
            ));
        }
        let Some(record) = self
            .idempotency
            .get(&command.agent)
            .and_then(|m| m.get(key))
        else {
            return Ok(None);
        };
        if record.fingerprint == fingerprint(command) {
            Ok(Some(record.clone()))
        } else {
            Err(Error::new(
                ErrorCode::IdempotencyMismatch,
                format!(
                    "idempotency key {key:?} was used by agent {:?} for a different request at {}; use a new key for a new request",
                    command.agent,
                    validate::rfc3339(record.time)
                ),
            )
            .with_details(json!({ "idempotency_key": key })))
        }
    }

    /// A recorded reply, refreshed where the thing it describes has moved on
    /// (a queued lock that has since been granted).
    fn replay(&self, recorded: Result<Value, Error>) -> Reply {
        let value = recorded?;
        // A lock grant replays as the lock's current state while it lives.
        if value.get("lock_id").is_some()
            && let Ok(info) = serde_json::from_value::<LockInfo>(value.clone())
            && let Some(lock) = self.locks.get(&info.lock_id)
        {
            return Ok(Response::Lock(self.lock_info(info.lock_id, lock)));
        }
        Ok(Response::Recorded(value))
    }

    fn record_idempotency(
        &mut self,
        agent: &str,
        key: String,
        fingerprint: u64,
        reply: &Reply,
        waiting: Option<u64>,
    ) {
        if let Some(id) = waiting {
            self.idempotency_waits
                .insert(id, (agent.to_string(), key.clone()));
        }
        let record = IdempotencyRecord {
            fingerprint,
            reply: as_recorded(reply),
            time: self.now,
            waiting,
        };
        self.idempotency
            .entry(agent.to_string())
            .or_default()
            .insert(key.clone(), record);
        self.idempotency_order
            .push_back((self.now, agent.to_string(), key));
        self.expire_idempotency();
    }

    fn expire_idempotency(&mut self) {
        let retention = self.limits.idempotency_retention_ms;
        while let Some((time, _, _)) = self.idempotency_order.front() {
            let too_many = self.idempotency_order.len() > self.limits.idempotency_entries;
            if !too_many && time.saturating_add(retention) > self.now {
                break;
            }
            let (time, agent, key) = self.idempotency_order.pop_front().expect("front exists");
            if let Some(records) = self.idempotency.get_mut(&agent) {
                // Only drop the record this order entry was made for.
                if records.get(&key).is_some_and(|r| r.time == time) {
                    records.remove(&key);
                }
                if records.is_empty() {
                    self.idempotency.remove(&agent);
                }
            }
        }
    }

    // ---- invariants ---------------------------------------------------------

    /// Cheap structural checks after every apply in debug builds: a broken
    /// invariant must fail loudly in tests, never silently corrupt state.
    fn debug_check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (key, state) in &self.lock_keys {
            let holders: Vec<&Lock> = state.holders.iter().map(|id| &self.locks[id]).collect();
            let exclusive = holders
                .iter()
                .filter(|l| l.mode == LockMode::Exclusive)
                .count();
            assert!(
                exclusive == 0 || holders.len() == 1,
                "key {key} has an exclusive holder among {} holders",
                holders.len()
            );
            assert!(
                holders.iter().all(|l| l.is_held()),
                "key {key} lists a non-held holder"
            );
            if let Some(capacity) = state.capacity {
                let held: u64 = holders.iter().filter_map(|l| l.permits).sum();
                assert!(
                    held <= capacity,
                    "semaphore {key} holds {held} of {capacity} permits"
                );
            }
            assert!(
                state.waiters.iter().all(|id| !self.locks[id].is_held()),
                "key {key} lists a held waiter"
            );
        }
        for (name, quota) in &self.quotas {
            let reserved: u64 = quota
                .reservations
                .iter()
                .map(|id| self.reservations[id].amount)
                .sum();
            assert_eq!(
                reserved, quota.reserved,
                "quota {name} reserved drifted from its reservations"
            );
        }
        for (name, queue) in &self.queues {
            for (id, item) in &queue.items {
                let ready = matches!(item.state, crate::queue::ItemState::Ready);
                assert_eq!(
                    ready,
                    queue.ready.contains(id),
                    "queue {name} item {id}: ready set and state disagree"
                );
            }
            assert!(
                queue.ready.iter().all(|id| queue.items.contains_key(id)),
                "queue {name} lists a missing item"
            );
        }
        let held = self.locks.values().filter(|l| l.is_held()).count();
        assert_eq!(held, self.locks_held, "held-lock count drifted");
    }
}

/// A reply as an idempotency record keeps it: the JSON that was sent.
fn as_recorded(reply: &Reply) -> Result<Value, Error> {
    reply
        .clone()
        .map(|response| serde_json::to_value(response).expect("responses serialize"))
}

/// FNV-1a over the request's canonical JSON: what makes "the same request".
fn fingerprint(command: &Command) -> u64 {
    // `release` joins only when set, so requests without one (and the
    // records made before it existed) keep their fingerprints.
    let bytes = match command.release {
        None => serde_json::to_vec(&(&command.session, &command.fence, &command.op)),
        Some(release) => {
            serde_json::to_vec(&(&command.session, &command.fence, &command.op, release))
        }
    }
    .expect("commands serialize");
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
