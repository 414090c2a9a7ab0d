//! Versioned state: JSON values under `namespace/name` keys.
//!
//! A key's version is the revision (log sequence number) of the command that
//! last wrote it. Versions are therefore never reused, even across delete and
//! re-create, so `if_version` cannot be fooled by an ABA change. Version 0
//! means "absent" in compares and `if_version`.

use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::command::{Command, CompareOp, Patch, Txn, TxnOp};
use crate::error::{Error, ErrorCode};
use crate::event::EventKind;
use crate::machine::{Deadline, Effects, StateMachine, Stored};
use crate::reply::{
    CounterResult, DeleteResult, Entry, GetResult, HistoryEntry, HistoryResult, ListResult, Reply,
    Response, TxnOpResult, TxnResult, WriteResult,
};
use crate::validate;

/// A key as a txn sees it part-way through: (value, version), or absent.
type View = Option<(Arc<Value>, u64)>;

/// A write decided but not yet applied (all of a txn is decided first).
enum Plan {
    Write {
        key: String,
        value: Arc<Value>,
        /// The value's compact JSON size, against `max_kv_bytes`.
        size: u64,
        ttl: Ttl,
        kind: EventKind,
    },
    Delete {
        key: String,
    },
}

/// What a write does to its key's expiry.
enum Ttl {
    /// Expire this many ms after the write, or never.
    Set(Option<u64>),
    /// Keep the expiry the key has when the write commits: a patch or a
    /// counter add changes the value, not its lease (in a txn too, after
    /// whatever earlier ops of the txn did to the key).
    Keep,
}

impl StateMachine {
    fn view(&self, overlay: &BTreeMap<String, View>, key: &str) -> View {
        match overlay.get(key) {
            Some(view) => view.clone(),
            None => self.kv.get(key).map(|s| (s.value.clone(), s.version)),
        }
    }

    fn conflict(key: &str, expected: Option<u64>, current: &View, why: &str) -> Error {
        let (current_version, current_value) = match current {
            Some((value, version)) => (*version, Value::clone(value)),
            None => (0, Value::Null),
        };
        Error::new(
            ErrorCode::ConcurrentModification,
            format!("{key:?} {why} (current version {current_version}); read it again, redo your change and retry"),
        )
        .with_retry_after(0)
        .with_details(json!({
            "key": key,
            "expected_version": expected,
            "current_version": current_version,
            "current_value": current_value,
        }))
    }

    fn check_version(
        key: &str,
        if_version: Option<u64>,
        if_absent: bool,
        current: &View,
    ) -> Result<(), Error> {
        let current_version = current.as_ref().map_or(0, |(_, v)| *v);
        if if_absent && current.is_some() {
            return Err(Self::conflict(key, Some(0), current, "already exists"));
        }
        match if_version {
            Some(expected) if expected != current_version => {
                let why = if expected == 0 {
                    "already exists"
                } else {
                    "changed since you read it"
                };
                Err(Self::conflict(key, Some(expected), current, why))
            }
            _ => Ok(()),
        }
    }

    fn check_ttl(&self, ttl_ms: Option<u64>) -> Result<(), Error> {
        match ttl_ms {
            Some(ttl) => validate::ttl("ttl_ms", ttl, &self.limits),
            None => Ok(()),
        }
    }

    fn apply_patch(key: &str, current: &View, patch: &Patch) -> Result<Value, Error> {
        let mut value = current
            .as_ref()
            .map_or(Value::Null, |(v, _)| Value::clone(v));
        match patch {
            Patch::Merge { patch } => json_patch::merge(&mut value, patch),
            Patch::Json { ops } => {
                let ops: json_patch::Patch = serde_json::from_value(ops.clone()).map_err(|e| {
                    Error::invalid("patch.ops", format!("not an RFC 6902 JSON Patch: {e}"))
                })?;
                json_patch::patch(&mut value, &ops.0).map_err(|e| match e.kind {
                    json_patch::PatchErrorKind::TestFailed => Self::conflict(
                        key,
                        None,
                        current,
                        &format!("failed the patch's test at {:?} (operation {})", e.path.as_str(), e.operation),
                    ),
                    _ => Error::invalid(
                        "patch.ops",
                        format!("operation {} at {:?} does not apply to {key:?}: {}", e.operation, e.path.as_str(), e.kind),
                    )
                    .with_details(json!({ "field": "patch.ops", "operation": e.operation, "current_version": current.as_ref().map_or(0, |(_, v)| *v) })),
                })?;
            }
        }
        Ok(value)
    }

    fn counter_value(key: &str, current: &View) -> Result<i64, Error> {
        match current {
            None => Ok(0),
            Some((value, _)) => value.as_i64().ok_or_else(|| {
                Error::invalid("key", format!("{key:?} holds {value}, not an integer counter; use another key or delete it first"))
            }),
        }
    }

    fn add_within(
        key: &str,
        current: i64,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<i64, Error> {
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(Error::invalid(
                "min",
                format!("min {min} is greater than max {max}"),
            ));
        }
        let refused = |why: String| {
            Error::new(
                ErrorCode::QuotaExceeded,
                format!("{key:?} is {current}; adding {delta} {why}; nothing changed"),
            )
            .with_details(
                json!({ "key": key, "value": current, "delta": delta, "min": min, "max": max }),
            )
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| refused("overflows a 64-bit integer".to_string()))?;
        // Only a move away from a bound is refused: a counter already past
        // one (written by a put, or a bound given lower than before) can
        // still come back toward it.
        if let Some(max) = max
            && next > max
            && delta > 0
        {
            return Err(refused(format!("would exceed the maximum {max}")));
        }
        if let Some(min) = min
            && next < min
            && delta < 0
        {
            return Err(refused(format!("would go below the minimum {min}")));
        }
        Ok(next)
    }

    /// Room for `creating` new keys and `adding` more bytes (`write_bytes`).
    pub(crate) fn check_capacity(&self, creating: usize, adding: u64) -> Result<(), Error> {
        if creating > 0 && self.kv.len() + creating > self.limits.max_keys {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the store holds {} keys, the limit (max_keys); delete keys you no longer need",
                    self.kv.len()
                ),
            ));
        }
        let limit = self.limits.max_kv_bytes;
        if adding > 0 && self.kv_bytes.saturating_add(adding) > limit {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the store holds {} bytes of keys and values with their history, and this write adds {adding}; the limit is {limit} (max_kv_bytes): delete keys you no longer need (a delete frees their history too)",
                    self.kv_bytes
                ),
            )
            .with_details(json!({ "kv_bytes": self.kv_bytes, "adding": adding, "max_kv_bytes": limit })));
        }
        Ok(())
    }

    /// What writing a value of `size` bytes to `key` adds to `kv_bytes`:
    /// exact near the limit, net of the versions the write pushes out of
    /// the key's history (so an overwrite no larger than what it replaces
    /// goes through on a full store); an upper bound when that fits anyway,
    /// which spares measuring the versions kept.
    pub(crate) fn write_bytes(&self, key: &str, size: u64) -> u64 {
        let Some(stored) = self.kv.get(key) else {
            return key.len() as u64 + size;
        };
        if self.kv_bytes.saturating_add(size) <= self.limits.max_kv_bytes {
            return size;
        }
        let depth = self.limits.history_depth;
        let kept: u64 = stored
            .history
            .iter()
            .rev()
            .take(depth.saturating_sub(1))
            .map(|entry| validate::json_size(&entry.value) as u64)
            .sum();
        let after = key.len() as u64 + size + kept;
        after.saturating_sub(stored.bytes)
    }

    /// Apply a decided write: new version `seq`, history, TTL index, event.
    fn commit(&mut self, seq: u64, command: &Command, plan: Plan, fx: &mut Effects) -> TxnOpResult {
        match plan {
            Plan::Write {
                key,
                value,
                size,
                ttl,
                kind,
            } => {
                let now = self.now;
                let expires_at = match ttl {
                    Ttl::Set(ttl_ms) => ttl_ms.map(|ttl| now.saturating_add(ttl)),
                    Ttl::Keep => self.kv.get(&key).and_then(|s| s.expires_at),
                };
                let history_depth = self.limits.history_depth;
                let entry = HistoryEntry {
                    version: seq,
                    time: now,
                    agent: command.agent.clone(),
                    value: value.clone(),
                };
                let (previous_version, old_expiry) = match self.kv.get_mut(&key) {
                    Some(stored) => {
                        let previous = (stored.version, stored.expires_at);
                        let before = stored.bytes;
                        let mut bytes = before;
                        if stored.history.is_empty() {
                            // Kept no history: the current value counted alone.
                            bytes -= validate::json_size(&stored.value) as u64;
                        }
                        stored.value = value.clone();
                        stored.version = seq;
                        stored.expires_at = expires_at;
                        stored.updated_at = now;
                        stored.history.push_back(entry);
                        bytes += size;
                        while stored.history.len() > history_depth {
                            let out = stored.history.pop_front().expect("longer than the depth");
                            bytes -= if Arc::ptr_eq(&out.value, &value) {
                                size
                            } else {
                                validate::json_size(&out.value) as u64
                            };
                        }
                        if stored.history.is_empty() {
                            bytes += size;
                        }
                        stored.bytes = bytes;
                        self.kv_bytes = self.kv_bytes - before + bytes;
                        (Some(previous.0), previous.1)
                    }
                    None => {
                        // Most keys are written once: room for one version,
                        // not the four a first push would reserve.
                        let mut history = VecDeque::with_capacity(1);
                        if history_depth > 0 {
                            history.push_back(entry);
                        }
                        let bytes = key.len() as u64 + size;
                        self.kv_bytes += bytes;
                        self.kv.insert(
                            key.clone(),
                            Stored {
                                value: value.clone(),
                                version: seq,
                                created_revision: seq,
                                expires_at,
                                updated_at: now,
                                history,
                                bytes,
                            },
                        );
                        (None, None)
                    }
                };
                self.set_deadline(old_expiry, expires_at, Deadline::KeyTtl(key.clone()));
                let mut event = self.event(
                    seq,
                    &command.agent,
                    command.session,
                    kind,
                    vec![key.clone()],
                );
                event.version = Some(seq);
                event.value = Some(value);
                fx.events.push(event);
                TxnOpResult::Write(WriteResult {
                    key,
                    version: seq,
                    previous_version,
                    expires_at,
                    released_lock_id: None,
                })
            }
            Plan::Delete { key } => {
                let Some(stored) = self.kv.remove(&key) else {
                    return TxnOpResult::Delete(DeleteResult {
                        key,
                        deleted: false,
                        previous_version: None,
                        released_lock_id: None,
                    });
                };
                self.kv_bytes -= stored.bytes;
                self.set_deadline(stored.expires_at, None, Deadline::KeyTtl(key.clone()));
                let mut event = self.event(
                    seq,
                    &command.agent,
                    command.session,
                    EventKind::Deleted,
                    vec![key.clone()],
                );
                event.version = Some(seq);
                fx.events.push(event);
                TxnOpResult::Delete(DeleteResult {
                    key,
                    deleted: true,
                    previous_version: Some(stored.version),
                    released_lock_id: None,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        value: &Value,
        if_version: Option<u64>,
        if_absent: bool,
        ttl_ms: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        let size = validate::value("value", value, &self.limits)? as u64;
        self.check_ttl(ttl_ms)?;
        if if_absent && if_version.is_some_and(|v| v != 0) {
            return Err(Error::invalid(
                "if_version",
                "give if_version or if_absent, not both",
            ));
        }
        let current = self.view(&BTreeMap::new(), key);
        Self::check_version(key, if_version, if_absent, &current)?;
        self.check_capacity(usize::from(current.is_none()), self.write_bytes(key, size))?;
        let plan = Plan::Write {
            key: key.to_string(),
            value: Arc::new(value.clone()),
            size,
            ttl: Ttl::Set(ttl_ms),
            kind: EventKind::Put,
        };
        match self.commit(seq, command, plan, fx) {
            TxnOpResult::Write(result) => Ok(Response::Write(result)),
            _ => unreachable!("a write plan commits as a write"),
        }
    }

    pub(crate) fn patch(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        patch: &Patch,
        if_version: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        let current = self.view(&BTreeMap::new(), key);
        Self::check_version(key, if_version, false, &current)?;
        let value = Self::apply_patch(key, &current, patch)?;
        let size = validate::value("value", &value, &self.limits)? as u64;
        self.check_capacity(usize::from(current.is_none()), self.write_bytes(key, size))?;
        let plan = Plan::Write {
            key: key.to_string(),
            value: Arc::new(value),
            size,
            ttl: Ttl::Keep,
            kind: EventKind::Patched,
        };
        match self.commit(seq, command, plan, fx) {
            TxnOpResult::Write(result) => Ok(Response::Write(result)),
            _ => unreachable!("a write plan commits as a write"),
        }
    }

    pub(crate) fn delete(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        if_version: Option<u64>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        let current = self.view(&BTreeMap::new(), key);
        Self::check_version(key, if_version, false, &current)?;
        match self.commit(
            seq,
            command,
            Plan::Delete {
                key: key.to_string(),
            },
            fx,
        ) {
            TxnOpResult::Delete(result) => Ok(Response::Delete(result)),
            _ => unreachable!("a delete plan commits as a delete"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn counter_add(
        &mut self,
        seq: u64,
        command: &Command,
        key: &str,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
        fx: &mut Effects,
    ) -> Reply {
        validate::key("key", key, &self.limits)?;
        let current = self.view(&BTreeMap::new(), key);
        let next = Self::add_within(key, Self::counter_value(key, &current)?, delta, min, max)?;
        let value = Value::from(next);
        let size = validate::json_size(&value) as u64;
        self.check_capacity(usize::from(current.is_none()), self.write_bytes(key, size))?;
        let plan = Plan::Write {
            key: key.to_string(),
            value: Arc::new(value),
            size,
            ttl: Ttl::Keep,
            kind: EventKind::CounterAdded,
        };
        match self.commit(seq, command, plan, fx) {
            TxnOpResult::Write(result) => Ok(Response::Counter(CounterResult {
                key: result.key,
                value: next,
                version: result.version,
                released_lock_id: None,
            })),
            _ => unreachable!("a write plan commits as a write"),
        }
    }

    pub(crate) fn txn(
        &mut self,
        seq: u64,
        command: &Command,
        txn: &Txn,
        fx: &mut Effects,
    ) -> Reply {
        let size = txn.compares.len() + txn.success.len() + txn.failure.len();
        if size > self.limits.max_ops_per_txn {
            return Err(Error::invalid(
                "txn",
                format!(
                    "{size} compares and ops; a txn takes at most {} (max_ops_per_txn)",
                    self.limits.max_ops_per_txn
                ),
            ));
        }
        for (i, compare) in txn.compares.iter().enumerate() {
            let field = format!("compares[{i}]");
            validate::key(&format!("{field}.key"), &compare.key, &self.limits)?;
            let given = usize::from(compare.version.is_some())
                + usize::from(compare.value.is_some())
                + usize::from(compare.exists.is_some());
            if given != 1 {
                return Err(Error::invalid(
                    &field,
                    "give exactly one of version, value, exists",
                ));
            }
            if compare.version.is_none() && !matches!(compare.op, CompareOp::Eq | CompareOp::Ne) {
                return Err(Error::invalid(
                    &format!("{field}.op"),
                    "lt and gt compare versions only",
                ));
            }
        }
        for (branch, ops) in [("success", &txn.success), ("failure", &txn.failure)] {
            for (i, op) in ops.iter().enumerate() {
                let field = format!("{branch}[{i}]");
                validate::key(&format!("{field}.key"), op.key(), &self.limits)?;
                match op {
                    TxnOp::Put { value, ttl_ms, .. } => {
                        validate::value(&format!("{field}.value"), value, &self.limits)?;
                        self.check_ttl(*ttl_ms)?;
                    }
                    TxnOp::Patch {
                        patch: Patch::Json { ops },
                        ..
                    } => {
                        serde_json::from_value::<json_patch::Patch>(ops.clone()).map_err(|e| {
                            Error::invalid(
                                &format!("{field}.patch.ops"),
                                format!("not an RFC 6902 JSON Patch: {e}"),
                            )
                        })?;
                    }
                    _ => {}
                }
            }
        }

        let empty = BTreeMap::new();
        let succeeded = txn.compares.iter().all(|c| {
            let current = self.view(&empty, &c.key);
            let ordering = match (&c.version, &c.value, &c.exists) {
                (Some(expected), _, _) => current.as_ref().map_or(0, |(_, v)| *v).cmp(expected),
                (_, Some(expected), _) => {
                    let equal = current.as_ref().is_some_and(|(v, _)| **v == *expected);
                    if equal {
                        std::cmp::Ordering::Equal
                    } else {
                        std::cmp::Ordering::Less
                    }
                }
                (_, _, Some(expected)) => {
                    if current.is_some() == *expected {
                        std::cmp::Ordering::Equal
                    } else {
                        std::cmp::Ordering::Less
                    }
                }
                _ => unreachable!("validated: exactly one target"),
            };
            match c.op {
                CompareOp::Eq => ordering.is_eq(),
                CompareOp::Ne => !ordering.is_eq(),
                CompareOp::Lt => ordering.is_lt(),
                CompareOp::Gt => ordering.is_gt(),
            }
        });
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };

        // Decide every op against a private overlay first: all or nothing.
        let mut overlay: BTreeMap<String, View> = BTreeMap::new();
        let mut steps: Vec<Result<Plan, TxnOpResult>> = Vec::with_capacity(ops.len());
        let mut creating = 0usize;
        // An upper bound: what the txn's writes add, before anything they
        // push out of history or delete.
        let mut adding = 0u64;
        for op in ops {
            let key = op.key();
            let current = self.view(&overlay, key);
            let next: Option<Value> = match op {
                TxnOp::Get { key } => {
                    let entry = current.map(|(value, version)| {
                        let stored = self.kv.get(key);
                        Entry {
                            key: key.clone(),
                            value,
                            version,
                            created_revision: stored.map_or(seq, |s| s.created_revision),
                            expires_at: stored.and_then(|s| s.expires_at),
                        }
                    });
                    steps.push(Err(TxnOpResult::Get {
                        key: key.clone(),
                        entry,
                    }));
                    continue;
                }
                TxnOp::Put { value, .. } => Some(value.clone()),
                TxnOp::Patch { patch, .. } => {
                    let value = Self::apply_patch(key, &current, patch)?;
                    validate::value("value", &value, &self.limits)?;
                    Some(value)
                }
                TxnOp::CounterAdd {
                    delta, min, max, ..
                } => {
                    let next = Self::add_within(
                        key,
                        Self::counter_value(key, &current)?,
                        *delta,
                        *min,
                        *max,
                    )?;
                    Some(Value::from(next))
                }
                TxnOp::Delete { .. } => None,
            };
            let in_store = self.kv.contains_key(key);
            let was_visible = current.is_some();
            match next {
                Some(value) => {
                    if !in_store && !overlay.contains_key(key) {
                        creating += 1;
                        adding += key.len() as u64;
                    }
                    let size = validate::json_size(&value) as u64;
                    adding += size;
                    let value = Arc::new(value);
                    overlay.insert(key.to_string(), Some((value.clone(), seq)));
                    let (ttl, kind) = match op {
                        TxnOp::Put { ttl_ms, .. } => (Ttl::Set(*ttl_ms), EventKind::Put),
                        TxnOp::Patch { .. } => (Ttl::Keep, EventKind::Patched),
                        _ => (Ttl::Keep, EventKind::CounterAdded),
                    };
                    steps.push(Ok(Plan::Write {
                        key: key.to_string(),
                        value,
                        size,
                        ttl,
                        kind,
                    }));
                }
                None => {
                    overlay.insert(key.to_string(), None);
                    if was_visible {
                        steps.push(Ok(Plan::Delete {
                            key: key.to_string(),
                        }));
                    } else {
                        steps.push(Err(TxnOpResult::Delete(DeleteResult {
                            key: key.to_string(),
                            deleted: false,
                            previous_version: None,
                            released_lock_id: None,
                        })));
                    }
                }
            }
        }
        self.check_capacity(creating, adding)?;

        let mut results = Vec::with_capacity(steps.len());
        let events_before = fx.events.len();
        for step in steps {
            results.push(match step {
                Ok(plan) => {
                    let counter = matches!(
                        &plan,
                        Plan::Write {
                            kind: EventKind::CounterAdded,
                            ..
                        }
                    );
                    match self.commit(seq, command, plan, fx) {
                        TxnOpResult::Write(w) if counter => TxnOpResult::Counter(CounterResult {
                            value: self.kv[&w.key].value.as_i64().unwrap_or_default(),
                            key: w.key,
                            version: w.version,
                            released_lock_id: None,
                        }),
                        other => other,
                    }
                }
                Err(result) => result,
            });
        }
        for event in &mut fx.events[events_before..] {
            event.detail = Some(json!({ "txn": true }));
        }
        if fx.events.len() == events_before {
            fx.events.push(self.event(
                seq,
                &command.agent,
                command.session,
                EventKind::Txn,
                command.op.keys(),
            ));
        }
        Ok(Response::Txn(TxnResult {
            succeeded,
            revision: seq,
            results,
            released_lock_id: None,
        }))
    }

    pub(crate) fn expire_key(&mut self, seq: u64, key: &str, fx: &mut Effects) {
        let Some(stored) = self.kv.remove(key) else {
            return;
        };
        self.kv_bytes -= stored.bytes;
        let mut event = self.event(
            seq,
            crate::command::SYSTEM_AGENT,
            None,
            EventKind::KeyExpired,
            vec![key.to_string()],
        );
        event.version = Some(stored.version);
        fx.events.push(event);
    }

    // ---- reads --------------------------------------------------------------

    pub(crate) fn entry(key: &str, stored: &Stored) -> Entry {
        Entry {
            key: key.to_string(),
            value: stored.value.clone(),
            version: stored.version,
            created_revision: stored.created_revision,
            expires_at: stored.expires_at,
        }
    }

    pub fn get(&self, key: &str) -> Result<GetResult, Error> {
        validate::key("key", key, &self.limits)?;
        match self.kv.get(key) {
            Some(stored) => Ok(GetResult {
                entry: Self::entry(key, stored),
                revision: self.last_seq,
            }),
            None => Err(
                Error::new(ErrorCode::NotFound, format!("key {key:?} does not exist"))
                    .with_details(json!({ "key": key, "revision": self.last_seq })),
            ),
        }
    }

    /// Keys starting with `prefix`, in order, after the key `after`, at most `limit`.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, Error> {
        if prefix.len() > self.limits.max_key_bytes {
            return Err(Error::invalid(
                "prefix",
                format!(
                    "longer than {} bytes (max_key_bytes)",
                    self.limits.max_key_bytes
                ),
            ));
        }
        if limit == 0 || limit > self.limits.max_list_page {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {} (max_list_page)", self.limits.max_list_page),
            ));
        }
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut entries: Vec<Entry> = self
            .kv
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit + 1)
            .map(|(k, s)| Self::entry(k, s))
            .collect();
        let next_after = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|e| e.key.clone())
        } else {
            None
        };
        Ok(ListResult {
            entries,
            next_after,
            revision: self.last_seq,
        })
    }

    /// Recent versions of a key, newest first.
    pub fn history(&self, key: &str, limit: usize) -> Result<HistoryResult, Error> {
        validate::key("key", key, &self.limits)?;
        let Some(stored) = self.kv.get(key) else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "key {key:?} does not exist (its history ends with it; watch events for deletes)"
                ),
            ));
        };
        Ok(HistoryResult {
            key: key.to_string(),
            versions: stored.history.iter().rev().take(limit).cloned().collect(),
            revision: self.last_seq,
        })
    }
}

/// What `stored` counts against `max_kv_bytes`, measured from its contents
/// (see `Stored::bytes`).
pub(crate) fn measure(key: &str, stored: &Stored) -> u64 {
    let versions: u64 = if stored.history.is_empty() {
        validate::json_size(&stored.value) as u64
    } else {
        stored
            .history
            .iter()
            .map(|entry| validate::json_size(&entry.value) as u64)
            .sum()
    };
    key.len() as u64 + versions
}
