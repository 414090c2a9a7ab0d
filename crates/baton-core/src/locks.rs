//! Locks: all-or-nothing multi-key acquire, exclusive/shared modes, strict
//! FIFO queues, leases, lock-delay, fencing tokens and deadlock detection.
//!
//! Rules a reader can rely on:
//! - A request is granted only if, on every key, it is compatible with all
//!   holders and with every request queued ahead of it (no barging, so a
//!   waiting exclusive request blocks later shared ones).
//! - The fencing token of a grant is the sequence number of the command that
//!   granted it, so tokens only ever grow, on every key.
//! - Locks are not re-entrant: a party (a session, or an agent without a
//!   session) that already holds or awaits a key and asks for it again gets
//!   DEADLOCK, because waiting on itself could never end. Re-entrancy with a
//!   count would hide agents that lost track of what they hold (typical after
//!   a context compaction) and make "which fence is current" ambiguous.
//! - A new request whose wait would close a cycle in the wait-for graph is
//!   refused with DEADLOCK and the cycle; nothing else changes. Grants never
//!   add wait-for edges (later waiters already waited on earlier ones), so
//!   checking at request time finds every cycle. A cycle is a deadlock only
//!   if its waits could really never end: a request queued ahead needs only
//!   to be granted, not to release, unless its mode conflicts, and a
//!   semaphore waiter needs only enough of its holders to release, not all
//!   of them.

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

use crate::command::{Command, LockAcquire};
use crate::error::{Error, ErrorCode};
use crate::event::{EventKind, Outcome};
use crate::machine::{
    Deadline, Effects, EndedKind, KeyLocks, Lock, LockPhase, Party, StateMachine, Wakeup,
};
use crate::reply::{
    EndReason, FenceCheck, KeyLocksInfo, LockState, ReleaseResult, Reply, Response,
};
use crate::validate;

/// Most permits one semaphore may have.
pub const MAX_SEMAPHORE_CAPACITY: u64 = 1_000_000;

/// Default retry hint when nothing better is known (e.g. a holder with no lease end).
const DEFAULT_RETRY_AFTER_MS: u64 = 1000;
/// How long keys granted and freed in the same step wait before their next
/// grant: any delay moves that grant to a later command, and so a new token.
pub(crate) const SAME_STEP_REGRANT_DELAY_MS: u64 = 1;

impl StateMachine {
    /// Whether `command` is a blocking lock request on a key that is held or
    /// has a queue, so that it will most likely wait rather than be answered
    /// now. The sequencer lets such a command wait briefly for company in a
    /// batch, since nobody awaits its immediate answer. A hint only: `apply`
    /// decides what really happens.
    pub fn likely_queues(&self, command: &Command) -> bool {
        match &command.op {
            crate::Op::LockAcquire(acquire) if acquire.wait_ms > 0 => {
                acquire.keys.iter().any(|key| {
                    self.lock_keys
                        .get(key)
                        .is_some_and(|state| !state.holders.is_empty() || !state.waiters.is_empty())
                })
            }
            _ => false,
        }
    }

    pub(crate) fn lock_acquire(
        &mut self,
        seq: u64,
        command: &Command,
        request: &LockAcquire,
        fx: &mut Effects,
    ) -> Reply {
        let limits = &self.limits;
        if request.keys.is_empty() {
            return Err(Error::invalid("keys", "name at least one key to lock"));
        }
        if request.keys.len() > limits.max_keys_per_lock {
            return Err(Error::invalid(
                "keys",
                format!(
                    "{} keys; one lock takes at most {} (max_keys_per_lock)",
                    request.keys.len(),
                    limits.max_keys_per_lock
                ),
            ));
        }
        for key in &request.keys {
            validate::key("keys", key, limits)?;
        }
        match (request.ttl_ms, command.session) {
            (Some(ttl), _) => validate::ttl("ttl_ms", ttl, limits)?,
            (None, None) => {
                return Err(Error::invalid(
                    "ttl_ms",
                    "a lock needs a lease: give ttl_ms, or take it with a session",
                ));
            }
            (None, Some(_)) => {}
        }
        if request.wait_ms > limits.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!("at most {} ms (max_wait_ms)", limits.max_wait_ms),
            ));
        }
        if request.lock_delay_ms > limits.max_lock_delay_ms {
            return Err(Error::invalid(
                "lock_delay_ms",
                format!(
                    "at most {} ms (max_lock_delay_ms)",
                    limits.max_lock_delay_ms
                ),
            ));
        }
        let mut keys = request.keys.clone();
        keys.sort();
        keys.dedup();

        let lock = Lock {
            agent: command.agent.clone(),
            session: command.session,
            keys,
            mode: request.mode,
            ttl_ms: request.ttl_ms,
            lock_delay_ms: request.lock_delay_ms,
            phase: LockPhase::Waiting { deadline: u64::MAX },
            expires_at: None,
            permits: None,
            read: request.read,
        };
        if let Some(key) = lock
            .keys
            .iter()
            .find(|k| self.lock_keys.get(*k).is_some_and(|s| s.capacity.is_some()))
        {
            return Err(Error::invalid(
                "keys",
                format!(
                    "{key:?} is in use as a semaphore; take its permits with a semaphore request, or use another key"
                ),
            ));
        }
        self.acquire_lock(seq, command, lock, request.wait_ms, None, fx)
    }

    /// A counting semaphore: a shared lock of weight `permits` on a key of `capacity`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn semaphore_acquire(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        permits: u64,
        capacity: u64,
        ttl_ms: Option<u64>,
        wait_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        if capacity == 0 || capacity > MAX_SEMAPHORE_CAPACITY {
            return Err(Error::invalid(
                "capacity",
                format!("must be 1 to {MAX_SEMAPHORE_CAPACITY}"),
            ));
        }
        if permits == 0 || permits > capacity {
            return Err(Error::invalid(
                "permits",
                format!("take 1 to {capacity} permits (the capacity)"),
            ));
        }
        match (ttl_ms, command.session) {
            (Some(ttl), _) => validate::ttl("ttl_ms", ttl, &self.limits)?,
            (None, None) => {
                return Err(Error::invalid(
                    "ttl_ms",
                    "a semaphore permit needs a lease: give ttl_ms, or take it with a session",
                ));
            }
            (None, Some(_)) => {}
        }
        if wait_ms > self.limits.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!("at most {} ms (max_wait_ms)", self.limits.max_wait_ms),
            ));
        }
        if let Some(state) = self.lock_keys.get(key) {
            match state.capacity {
                Some(existing) if existing != capacity => {
                    return Err(Error::invalid(
                        "capacity",
                        format!(
                            "{key:?} is a semaphore of {existing} permits while in use; ask with capacity {existing}"
                        ),
                    ));
                }
                None if !state.holders.is_empty() || !state.waiters.is_empty() => {
                    return Err(Error::invalid(
                        "key",
                        format!("{key:?} is in use as a plain lock, not a semaphore"),
                    ));
                }
                _ => {}
            }
        }
        let lock = Lock {
            agent: command.agent.clone(),
            session: command.session,
            keys: vec![key.to_string()],
            mode: crate::command::LockMode::Shared,
            ttl_ms,
            lock_delay_ms: 0,
            phase: LockPhase::Waiting { deadline: u64::MAX },
            expires_at: None,
            permits: Some(permits),
            read: false,
        };
        self.acquire_lock(seq, command, lock, wait_ms, Some(capacity), fx)
    }

    /// Grant `lock` now, queue it, or refuse it: the one path every lock
    /// and semaphore request takes.
    fn acquire_lock(
        &mut self,
        seq: u64,
        command: &Command,
        lock: Lock,
        wait_ms: u64,
        capacity: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        if let Some(capacity) = capacity {
            // Set for the decision below; an idle entry is dropped again on refusal.
            self.lock_keys
                .entry(lock.keys[0].clone())
                .or_default()
                .capacity = Some(capacity);
        }
        let reply = self.decide_lock(seq, command, lock, wait_ms, fx);
        if reply.is_err()
            && let Some(key) = command.op.keys().first()
        {
            self.forget_idle_key(key);
        }
        reply
    }

    fn decide_lock(
        &mut self,
        seq: u64,
        command: &Command,
        lock: Lock,
        wait_ms: u64,
        fx: &mut Effects,
    ) -> Reply {
        let party = lock.party();
        if let Some(error) = self.reentry_error(&party, &lock) {
            return Err(error);
        }
        if self.locks.len() >= self.limits.max_locks {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} locks are live, the limit (max_locks); release locks you no longer need",
                    self.limits.max_locks
                ),
            ));
        }

        let blockers = self.blockers(&lock, None);
        if blockers.is_empty() && !self.delayed(&lock.keys) {
            self.insert_lock(seq, lock, &party);
            return Ok(Response::Lock(self.grant(seq, seq, fx)));
        }
        if wait_ms == 0 {
            return Err(self.busy_error(&lock, &blockers, false));
        }
        for key in &lock.keys {
            let queued = self
                .lock_keys
                .get(key)
                .map_or(0, |state| state.waiters.len());
            if queued >= self.limits.max_waiters_per_key {
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    format!("{queued} requests already wait for {key:?} (max_waiters_per_key); retry later"),
                )
                .with_retry_after(self.retry_after(&blockers, &lock.keys))
                .with_details(json!({ "key": key, "waiters": queued })));
            }
        }
        // Only a party that already holds or awaits something can be waited
        // on, so only then can its wait close a cycle (the common case skips this).
        let cycle = if self.party_locks.contains_key(&party) {
            self.find_deadlock(seq, &party, &lock, &blockers)
        } else {
            None
        };
        if let Some(cycle) = cycle {
            let description: Vec<String> = cycle
                .iter()
                .map(|step| {
                    let text = |field: &str| step[field].as_str().unwrap_or_default().to_string();
                    format!(
                        "{} waits for {:?} held by {}",
                        text("waiter"),
                        text("key"),
                        text("holder")
                    )
                })
                .collect();
            return Err(Error::new(
                ErrorCode::Deadlock,
                format!(
                    "waiting would deadlock: {}; release what you hold and retry, or take all keys in one request",
                    description.join(", ")
                ),
            )
            .with_details(json!({ "cycle": cycle })));
        }

        let deadline = self.now.saturating_add(wait_ms);
        let mut lock = lock;
        lock.phase = LockPhase::Waiting { deadline };
        for key in &lock.keys {
            self.lock_keys
                .entry(key.clone())
                .or_default()
                .waiters
                .push_back(seq);
        }
        let keys = lock.keys.clone();
        self.insert_lock(seq, lock, &party);
        self.set_deadline(None, Some(deadline), Deadline::LockWait(seq));
        let info = self.lock_info(seq, &self.locks[&seq]);
        fx.pending = Some(seq);
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::LockQueued,
            keys,
        );
        event.lock_id = Some(seq);
        fx.events.push(event);
        Ok(Response::Lock(info))
    }

    fn insert_lock(&mut self, id: u64, lock: Lock, party: &Party) {
        self.party_locks
            .entry(party.clone())
            .or_default()
            .insert(id);
        self.locks.insert(id, lock);
    }

    /// Non-re-entrancy: DEADLOCK if the party already holds or awaits a key.
    fn reentry_error(&self, party: &Party, lock: &Lock) -> Option<Error> {
        let mine = self.party_locks.get(party)?;
        for id in mine {
            let existing = &self.locks[id];
            if let Some(key) = lock
                .keys
                .iter()
                .find(|k| existing.keys.binary_search(k).is_ok())
            {
                let state = if existing.is_held() {
                    "holds"
                } else {
                    "already waits for"
                };
                return Some(
                    Error::new(
                        ErrorCode::Deadlock,
                        format!(
                            "{} {state} {key:?} as lock {id}; Baton locks are not re-entrant: use lock {id} or release it first",
                            describe_party(party)
                        ),
                    )
                    .with_details(json!({
                        "cycle": [{ "waiter": describe_party(party), "key": key, "holder": describe_party(party), "lock_id": id }],
                        "lock_id": id,
                    })),
                );
            }
        }
        None
    }

    /// Locks that stand in the way of `lock` on any of its keys: incompatible
    /// holders, and incompatible requests queued ahead of it (all queued
    /// requests if it is not queued yet). Returns (key, blocking lock id).
    fn blockers(&self, lock: &Lock, queued_as: Option<u64>) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        for key in &lock.keys {
            let Some(state) = self.lock_keys.get(key) else {
                continue;
            };
            if let (Some(permits), Some(capacity)) = (lock.permits, state.capacity) {
                // A semaphore: blocked by every holder if the permits do not
                // fit, and by everyone queued ahead (strict FIFO).
                let held: u64 = state
                    .holders
                    .iter()
                    .filter_map(|id| self.locks[id].permits)
                    .sum();
                if held + permits > capacity {
                    found.extend(state.holders.iter().map(|id| (key.clone(), *id)));
                }
                found.extend(
                    state
                        .waiters
                        .iter()
                        .take_while(|id| Some(**id) != queued_as)
                        .map(|id| (key.clone(), *id)),
                );
                continue;
            }
            for id in &state.holders {
                if !self.locks[id].mode.compatible(lock.mode) {
                    found.push((key.clone(), *id));
                }
            }
            for id in &state.waiters {
                if Some(*id) == queued_as {
                    break;
                }
                if !self.locks[id].mode.compatible(lock.mode) {
                    found.push((key.clone(), *id));
                }
            }
        }
        found
    }

    fn delayed(&self, keys: &[String]) -> bool {
        keys.iter().any(|k| {
            self.lock_keys
                .get(k)
                .is_some_and(|s| s.delayed_until.is_some())
        })
    }

    /// How long until the first blocker can end (its lease), or a lock-delay passes.
    fn retry_after(&self, blockers: &[(String, u64)], keys: &[String]) -> u64 {
        let lease_ends = blockers
            .iter()
            .filter_map(|(_, id)| self.effective_expiry(&self.locks[id]));
        let delays = keys
            .iter()
            .filter_map(|k| self.lock_keys.get(k).and_then(|s| s.delayed_until));
        lease_ends
            .chain(delays)
            .min()
            .map_or(DEFAULT_RETRY_AFTER_MS, |at| {
                at.saturating_sub(self.now).max(1)
            })
    }

    /// CONCURRENT_MODIFICATION naming who holds what and until when.
    fn busy_error(&self, lock: &Lock, blockers: &[(String, u64)], wait_ended: bool) -> Error {
        let retry_after_ms = self.retry_after(blockers, &lock.keys);
        let holders: Vec<serde_json::Value> = blockers
            .iter()
            .map(|(key, id)| {
                let info = self.lock_info(*id, &self.locks[id]);
                json!({ "key": key, "lock_id": id, "agent": info.agent, "session": info.session,
                        "status": info.status, "mode": info.mode, "expires_at": info.expires_at })
            })
            .collect();
        let semaphore = lock.permits.and_then(|permits| {
            let key = &lock.keys[0];
            let state = self.lock_keys.get(key)?;
            let capacity = state.capacity?;
            let held: u64 = state.holders.iter().filter_map(|id| self.locks[id].permits).sum();
            Some(format!(
                "semaphore {key:?} has {held} of {capacity} permits held and {} requests queued; {permits} asked",
                state.waiters.len()
            ))
        });
        let what = match (semaphore, blockers.first()) {
            (Some(text), _) => text,
            (None, Some((key, id))) => {
                let holder = &self.locks[id];
                let state = if holder.is_held() {
                    "held"
                } else {
                    "awaited first"
                };
                let until = self
                    .effective_expiry(holder)
                    .map(|t| format!(" until {}", validate::rfc3339(t)))
                    .unwrap_or_default();
                let session = holder
                    .session
                    .map(|s| format!(" (session {s})"))
                    .unwrap_or_default();
                format!(
                    "lock {key:?} is {state} by agent {:?}{session}{until}",
                    holder.agent
                )
            }
            (None, None) => {
                let key = lock.keys.iter().find(|k| {
                    self.lock_keys
                        .get(*k)
                        .is_some_and(|s| s.delayed_until.is_some())
                });
                format!(
                    "lock {:?} is in its lock-delay after an expired holder",
                    key.map_or("", String::as_str)
                )
            }
        };
        let waited = if wait_ended {
            " when the wait ended"
        } else {
            ""
        };
        Error::new(
            ErrorCode::ConcurrentModification,
            format!("{what}{waited}; retry after {retry_after_ms} ms"),
        )
        .with_retry_after(retry_after_ms)
        .with_details(json!({ "keys": lock.keys, "holders": holders }))
    }

    /// Make lock `id` a holder of its keys with fence `seq`; returns its info.
    fn grant(&mut self, seq: u64, id: u64, fx: &mut Effects) -> crate::reply::LockInfo {
        let now = self.now;
        let lock = self.locks.get_mut(&id).expect("granting a live lock");
        let old_wait = match lock.phase {
            LockPhase::Waiting { deadline } if deadline != u64::MAX => Some(deadline),
            _ => None,
        };
        lock.phase = LockPhase::Held {
            fence_token: seq,
            granted_at: now,
        };
        lock.expires_at = lock.ttl_ms.map(|ttl| now.saturating_add(ttl));
        let (expires_at, keys, agent, session) = (
            lock.expires_at,
            lock.keys.clone(),
            lock.agent.clone(),
            lock.session,
        );
        for key in &keys {
            let state = self.lock_keys.entry(key.clone()).or_default();
            state.waiters.retain(|w| *w != id);
            state.holders.push(id);
        }
        self.locks_held += 1;
        self.set_deadline(old_wait, None, Deadline::LockWait(id));
        self.set_deadline(None, expires_at, Deadline::LockLease(id));
        let mut event = self.event(seq, &agent, session, EventKind::LockGranted, keys);
        event.lock_id = Some(id);
        event.fence_token = Some(seq);
        fx.events.push(event);
        let lock = &self.locks[&id];
        let mut info = self.lock_info(id, lock);
        if lock.read {
            // Read in the grant's own step: whatever the command that freed
            // the keys wrote (a write that carries `release`) is in it.
            info.values = Some(
                lock.keys
                    .iter()
                    .filter_map(|key| self.kv.get(key).map(|stored| Self::entry(key, stored)))
                    .collect(),
            );
        }
        info
    }

    /// After keys were freed: grant every waiter that has become grantable,
    /// in queue (lock id) order. One pass suffices: a grant only adds holders
    /// that any later incompatible waiter was already queued behind.
    pub(crate) fn grant_waiters(&mut self, seq: u64, keys: &[String], fx: &mut Effects) {
        // Per key only the queue's compatible prefix can go: a waiter behind
        // an incompatible one stays blocked whether or not that one is granted.
        let mut candidates = BTreeSet::new();
        for state in keys.iter().filter_map(|k| self.lock_keys.get(k)) {
            let mut modes: Vec<crate::command::LockMode> = Vec::new();
            for id in &state.waiters {
                let mode = self.locks[id].mode;
                if modes.iter().any(|m| !m.compatible(mode)) {
                    break;
                }
                modes.push(mode);
                candidates.insert(*id);
            }
        }
        for id in candidates {
            let Some(lock) = self.locks.get(&id) else {
                continue;
            };
            if lock.is_held()
                || self.delayed(&lock.keys)
                || !self.blockers(lock, Some(id)).is_empty()
            {
                continue;
            }
            let info = self.grant(seq, id, fx);
            fx.wakeups.push(Wakeup {
                id,
                reply: Ok(Response::Lock(info)),
            });
        }
    }

    /// End a live lock for `reason`: free its keys (with lock-delay and a
    /// lease-lost event if it was taken away), or fail its wait; then grant
    /// whoever can go next.
    pub(crate) fn end_lock(&mut self, seq: u64, id: u64, reason: EndReason, fx: &mut Effects) {
        let Some(lock) = self.locks.remove(&id) else {
            return;
        };
        let party = lock.party();
        if let Some(mine) = self.party_locks.get_mut(&party) {
            mine.remove(&id);
            if mine.is_empty() {
                self.party_locks.remove(&party);
            }
        }
        match lock.phase {
            LockPhase::Held { fence_token, .. } => {
                self.locks_held -= 1;
                self.set_deadline(lock.expires_at, None, Deadline::LockLease(id));
                let taken_away = matches!(reason, EndReason::Expired | EndReason::Killed);
                // A token is the log sequence number of its grant. Keys granted
                // and freed in the same step (a lease that expired in the tick
                // that granted it, a session killed by the command whose
                // deadlines granted its lock) must not be granted again in
                // that step: the next holder would get the same token, and
                // the one just ended would still pass the fence. They wait a
                // millisecond, so the next grant is a later command's.
                let same_step = fence_token == seq;
                let delay_ms = match (taken_away, same_step) {
                    (true, _) if lock.lock_delay_ms > 0 => lock.lock_delay_ms,
                    (_, true) => SAME_STEP_REGRANT_DELAY_MS,
                    _ => 0,
                };
                let delay_until = (delay_ms > 0).then(|| self.now.saturating_add(delay_ms));
                for key in &lock.keys {
                    let state = self.lock_keys.get_mut(key).expect("a held key is indexed");
                    state.holders.retain(|h| *h != id);
                    if let Some(until) = delay_until {
                        let old = state.delayed_until;
                        let new = old.map_or(until, |o| o.max(until));
                        state.delayed_until = Some(new);
                        self.set_deadline(old, Some(new), Deadline::LockDelay(key.clone()));
                    }
                }
                let kind = if taken_away {
                    EventKind::LeaseLost
                } else {
                    EventKind::LockReleased
                };
                let mut event = self.event(seq, &lock.agent, lock.session, kind, lock.keys.clone());
                event.lock_id = Some(id);
                event.fence_token = Some(fence_token);
                event.detail = Some(json!({ "reason": reason, "lock_delay_until": delay_until }));
                fx.events.push(event);
            }
            LockPhase::Waiting { deadline } => {
                let old = (deadline != u64::MAX).then_some(deadline);
                self.set_deadline(old, None, Deadline::LockWait(id));
                for key in &lock.keys {
                    if let Some(state) = self.lock_keys.get_mut(key) {
                        state.waiters.retain(|w| *w != id);
                    }
                }
                let error = match reason {
                    EndReason::TimedOut => {
                        let blockers = self.blockers(&lock, None);
                        self.busy_error(&lock, &blockers, true)
                    }
                    EndReason::Cancelled | EndReason::Released => Error::new(
                        ErrorCode::ConcurrentModification,
                        format!(
                            "lock request {id} was cancelled by its owner before it was granted"
                        ),
                    ),
                    _ => Error::new(
                        ErrorCode::Fenced,
                        format!(
                            "lock request {id} failed: its session {} ended ({}) while it waited",
                            lock.session
                                .map_or_else(|| "-".to_string(), |s| s.to_string()),
                            reason.as_str()
                        ),
                    ),
                };
                let mut event = self.event(
                    seq,
                    &lock.agent,
                    lock.session,
                    EventKind::LockWaitEnded,
                    lock.keys.clone(),
                );
                event.lock_id = Some(id);
                event.outcome = Outcome::Error(error.code);
                event.detail = Some(json!({ "reason": reason }));
                fx.events.push(event);
                fx.wakeups.push(Wakeup {
                    id,
                    reply: Err(error),
                });
            }
        }
        self.remember_end(id, EndedKind::Lock, reason);
        self.grant_waiters(seq, &lock.keys, fx);
        for key in &lock.keys {
            self.forget_idle_key(key);
        }
    }

    /// The live lock `id` if `agent` owns it.
    pub(crate) fn owned_lock(&self, id: u64, agent: &str) -> Result<&Lock, Error> {
        match self.locks.get(&id) {
            Some(lock) if lock.agent == agent => Ok(lock),
            Some(lock) => Err(Error::new(
                ErrorCode::PermissionDenied,
                format!(
                    "lock {id} belongs to agent {:?}, not {agent:?}; only its owner may release or renew it",
                    lock.agent
                ),
            )),
            None => Err(self.gone_error("lock", id)),
        }
    }

    pub(crate) fn lock_release(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        fx: &mut Effects,
    ) -> Reply {
        match self.owned_lock(id, &command.agent) {
            Ok(lock) => {
                let reason = if lock.is_held() {
                    EndReason::Released
                } else {
                    EndReason::Cancelled
                };
                self.end_lock(seq, id, reason, fx);
                Ok(Response::Release(ReleaseResult {
                    lock_id: id,
                    released: true,
                    outcome: reason,
                    ended_at: Some(self.now),
                }))
            }
            Err(error) if error.code == ErrorCode::Fenced => {
                // Releasing an ended lock is not an error; say how it ended.
                let ended = self.ended[&id];
                Ok(Response::Release(ReleaseResult {
                    lock_id: id,
                    released: false,
                    outcome: ended.reason,
                    ended_at: Some(ended.at),
                }))
            }
            Err(error) => Err(error),
        }
    }

    pub(crate) fn lock_renew(
        &mut self,
        seq: u64,
        command: &Command,
        id: u64,
        ttl_ms: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        let lock = self.owned_lock(id, &command.agent)?;
        if !lock.is_held() {
            return Err(Error::invalid(
                "lock_id",
                format!("lock {id} is still waiting; only a held lock can be renewed"),
            ));
        }
        if let Some(ttl) = ttl_ms {
            validate::ttl("ttl_ms", ttl, &self.limits)?;
        }
        let (old, session) = (lock.expires_at, lock.session);
        let now = self.now;
        let lock = self.locks.get_mut(&id).expect("checked above");
        if lock.ttl_ms.is_some() || ttl_ms.is_some() {
            let ttl = ttl_ms.or(lock.ttl_ms).expect("one is set");
            lock.ttl_ms = Some(ttl);
            lock.expires_at = Some(now.saturating_add(ttl));
        }
        let new = lock.expires_at;
        self.set_deadline(old, new, Deadline::LockLease(id));
        if let Some(session_id) = session {
            // A lock that lives with its session is renewed by keeping the session alive.
            if let Some(s) = self.sessions.get_mut(&session_id) {
                let old = s.expires_at;
                s.expires_at = now.saturating_add(s.ttl_ms);
                let new = s.expires_at;
                self.set_deadline(Some(old), Some(new), Deadline::Session(session_id));
            }
        }
        let info = self.lock_info(id, &self.locks[&id]);
        let mut event = self.event(
            seq,
            &command.agent,
            command.session,
            EventKind::LockRenewed,
            info.keys.clone(),
        );
        event.lock_id = Some(id);
        event.fence_token = info.fence_token;
        fx.events.push(event);
        Ok(Response::Lock(info))
    }

    /// Breadth-first search of the wait-for graph from the parties that block
    /// a new request back to its own party. Returns the cycle's steps.
    /// The cycle `requester`'s wait for `lock` (to be lock `seq`) would
    /// close, if that wait could never end. First the wait-for graph with
    /// every blocker as a must-release edge: cheap, and a cycle in it is
    /// necessary for a deadlock. Then `stuck_waits` decides exactly: a
    /// request queued ahead only needs to be granted, not to release, unless
    /// its mode conflicts; and a semaphore needs only enough of its holders
    /// to release, not all of them.
    fn find_deadlock(
        &self,
        seq: u64,
        requester: &Party,
        lock: &Lock,
        blockers: &[(String, u64)],
    ) -> Option<Vec<serde_json::Value>> {
        let (cycle, reached) = self.search_cycle(requester, blockers, None);
        let cycle = cycle?;
        let (waits, parties) = self.stuck_waits(seq, requester, lock, reached);
        if !waits.contains(&seq) {
            return None;
        }
        // Describe the cycle through parties that are really stuck.
        let (within, _) = self.search_cycle(requester, blockers, Some(&parties));
        Some(within.unwrap_or(cycle))
    }

    /// Breadth-first over the wait-for graph from `requester`'s blockers
    /// (only through `within`, if given): the cycle back to `requester`,
    /// if any, and every party reached. The search goes on past the cycle:
    /// `stuck_waits` must see every party that depends on `requester`, or
    /// it would take one reached only later for a party that releases.
    fn search_cycle(
        &self,
        requester: &Party,
        blockers: &[(String, u64)],
        within: Option<&BTreeSet<Party>>,
    ) -> (Option<Vec<serde_json::Value>>, BTreeSet<Party>) {
        let allowed = |party: &Party| within.is_none_or(|set| set.contains(party));
        // parent[party] = (previous party, key, blocking lock id): how we reached it.
        let mut parent: BTreeMap<Party, (Party, String, u64)> = BTreeMap::new();
        let mut frontier: Vec<Party> = Vec::new();
        for (key, id) in blockers {
            let party = self.locks[id].party();
            if allowed(&party) && !parent.contains_key(&party) {
                parent.insert(party.clone(), (requester.clone(), key.clone(), *id));
                frontier.push(party);
            }
        }
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for party in frontier {
                // The requester's own other waits too: the set must be
                // closed under what its waits depend on.
                for (id, lock) in self.waits_of(&party) {
                    for (key, blocker) in self.blockers(lock, Some(id)) {
                        let blocking_party = self.locks[&blocker].party();
                        if allowed(&blocking_party) && !parent.contains_key(&blocking_party) {
                            parent.insert(blocking_party.clone(), (party.clone(), key, blocker));
                            next.push(blocking_party);
                        }
                    }
                }
            }
            frontier = next;
        }
        let cycle = parent
            .contains_key(requester)
            .then(|| self.cycle_steps(requester, &parent));
        (cycle, parent.into_keys().collect())
    }

    /// A party's locks that are waiting, with their ids.
    fn waits_of<'a>(&'a self, party: &Party) -> impl Iterator<Item = (u64, &'a Lock)> + 'a {
        self.party_locks
            .get(party)
            .into_iter()
            .flatten()
            .map(|id| (*id, &self.locks[id]))
            .filter(|(_, lock)| !lock.is_held())
    }

    /// The waits of `candidates` and `requester` (waiting for `lock`, as
    /// lock `seq`, besides its other waits) that could never be granted,
    /// and the parties that own them. A party with a wait that never ends
    /// is taken never to release what it holds; every other party is taken
    /// to end its waits and release eventually. The largest such set: start
    /// from every wait and drop those not `blocked_by` the rest until none
    /// drops.
    fn stuck_waits(
        &self,
        seq: u64,
        requester: &Party,
        lock: &Lock,
        candidates: BTreeSet<Party>,
    ) -> (BTreeSet<u64>, BTreeSet<Party>) {
        let mut waits: BTreeMap<u64, (&Lock, Option<u64>)> = BTreeMap::new();
        waits.insert(seq, (lock, None));
        for party in candidates.iter().chain([requester]) {
            for (id, wait) in self.waits_of(party) {
                waits.insert(id, (wait, Some(id)));
            }
        }
        let mut stuck: BTreeSet<u64> = waits.keys().copied().collect();
        loop {
            let parties: BTreeSet<Party> = stuck.iter().map(|id| waits[id].0.party()).collect();
            let still: BTreeSet<u64> = stuck
                .iter()
                .copied()
                .filter(|id| {
                    let (wait, queued_as) = waits[id];
                    self.blocked_by(wait, queued_as, &stuck, &parties)
                })
                .collect();
            if still.len() == stuck.len() {
                return (still, parties);
            }
            stuck = still;
        }
    }

    /// Whether `lock` (queued as `queued_as`) could never be granted if the
    /// `stuck` waits are never granted and the `parties` never release:
    /// - on a plain key, a conflicting holder is one of the parties, or a
    ///   conflicting request ahead is stuck or one of the parties (it must
    ///   be granted and then release);
    /// - on a semaphore, a request ahead is stuck (FIFO), or the permits
    ///   the parties hold or will be granted ahead of it leave too few even
    ///   after everyone else has released.
    fn blocked_by(
        &self,
        lock: &Lock,
        queued_as: Option<u64>,
        stuck: &BTreeSet<u64>,
        parties: &BTreeSet<Party>,
    ) -> bool {
        let kept = |id: &u64| parties.contains(&self.locks[id].party());
        let ahead = |state: &'_ KeyLocks| {
            state
                .waiters
                .iter()
                .copied()
                .take_while(move |id| Some(*id) != queued_as)
                .collect::<Vec<u64>>()
        };
        lock.keys.iter().any(|key| {
            let Some(state) = self.lock_keys.get(key) else {
                return false;
            };
            let ahead = ahead(state);
            if let (Some(permits), Some(capacity)) = (lock.permits, state.capacity) {
                let kept_permits: u64 = state
                    .holders
                    .iter()
                    .chain(&ahead)
                    .filter(|id| kept(id))
                    .filter_map(|id| self.locks[id].permits)
                    .sum();
                return ahead.iter().any(|id| stuck.contains(id))
                    || kept_permits + permits > capacity;
            }
            let conflicts = |id: &u64| !self.locks[id].mode.compatible(lock.mode);
            state.holders.iter().any(|id| conflicts(id) && kept(id))
                || ahead
                    .iter()
                    .any(|id| conflicts(id) && (stuck.contains(id) || kept(id)))
        })
    }

    fn cycle_steps(
        &self,
        requester: &Party,
        parent: &BTreeMap<Party, (Party, String, u64)>,
    ) -> Vec<serde_json::Value> {
        let mut steps = Vec::new();
        let mut at = requester.clone();
        // Walk back from the requester: each step is "waiter waits for key held by holder".
        for _ in 0..=parent.len() {
            let Some((previous, key, blocker)) = parent.get(&at) else {
                break;
            };
            steps.push(json!({
                "waiter": describe_party(previous),
                "key": key,
                "holder": describe_party(&at),
                "lock_id": blocker,
            }));
            at = previous.clone();
            if &at == requester {
                break;
            }
        }
        steps.reverse();
        steps
    }

    // ---- lock queries -------------------------------------------------------

    /// A lock id's state: live (held or waiting), or how it ended.
    pub fn lock_state(&self, lock_id: u64) -> Result<LockState, Error> {
        if let Some(lock) = self.locks.get(&lock_id) {
            return Ok(LockState::Live(self.lock_info(lock_id, lock)));
        }
        match self.ended.get(&lock_id) {
            Some(ended) if ended.kind == EndedKind::Lock => Ok(LockState::Ended {
                lock_id,
                status: ended.reason,
                ended_at: ended.at,
            }),
            _ => Err(Error::new(
                ErrorCode::NotFound,
                format!("lock {lock_id} is unknown (never existed, or ended long ago)"),
            )),
        }
    }

    /// Holders and waiters of one key.
    pub fn key_locks(&self, key: &str) -> Result<KeyLocksInfo, Error> {
        validate::key("key", key, &self.limits)?;
        Ok(self.key_locks_info(key, self.lock_keys.get(key)))
    }

    fn key_locks_info(&self, key: &str, state: Option<&KeyLocks>) -> KeyLocksInfo {
        let infos = |ids: &mut dyn Iterator<Item = &u64>| {
            ids.map(|id| self.lock_info(*id, &self.locks[id]))
                .collect::<Vec<_>>()
        };
        KeyLocksInfo {
            key: key.to_string(),
            holders: state
                .map(|s| infos(&mut s.holders.iter()))
                .unwrap_or_default(),
            waiters: state
                .map(|s| infos(&mut s.waiters.iter()))
                .unwrap_or_default(),
            delayed_until: state.and_then(|s| s.delayed_until),
            last_fence_token: state.and_then(|s| {
                s.holders
                    .iter()
                    .filter_map(|id| self.locks[id].fence_token())
                    .max()
            }),
            capacity: state.and_then(|s| s.capacity),
            permits_held: state.and_then(|s| {
                s.capacity.map(|_| {
                    s.holders
                        .iter()
                        .filter_map(|id| self.locks[id].permits)
                        .sum()
                })
            }),
        }
    }

    /// Every locked (or awaited) key under `prefix`, in key order, at most `limit`.
    pub fn locks_by_prefix(&self, prefix: &str, limit: usize) -> Vec<KeyLocksInfo> {
        self.lock_keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit.min(self.limits.max_list_page))
            .map(|(k, s)| self.key_locks_info(k, Some(s)))
            .collect()
    }

    /// Is `token` the fence of a current holder of `key`? For outside systems.
    pub fn check_fence(&self, key: &str, token: u64) -> Result<FenceCheck, Error> {
        validate::key("key", key, &self.limits)?;
        let current_tokens = self.current_tokens(key);
        Ok(FenceCheck {
            key: key.to_string(),
            token,
            valid: current_tokens.contains(&token),
            current_tokens,
        })
    }
}

fn describe_party(party: &Party) -> String {
    match party {
        Party::Session(id) => format!("session {id}"),
        Party::Agent(agent) => format!("agent {agent:?}"),
    }
}
