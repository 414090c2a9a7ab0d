//! A fault-injecting wrapper around any [`Log`], for testing that the server
//! stops acknowledging writes when its log fails (fail-stop) and never
//! assumes a failed append did not happen.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{Entry, Log, LogError, Seq, Snapshot, SnapshotStore};

/// Which faults to inject; shared between a [`FaultyLog`] and the test that
/// controls it, so faults can be flipped while the server owns the log.
///
/// Unless stated otherwise an injected failure leaves the inner log untouched.
#[derive(Debug, Default)]
pub struct FaultPlan {
    fail_all_appends: AtomicBool,
    fail_next_appends: AtomicU64,
    lose_next_append_acks: AtomicU64,
    fail_snapshot_saves: AtomicBool,
    injected: AtomicU64,
}

impl FaultPlan {
    /// Make the next `count` appends fail without writing (replaces any count
    /// set before).
    pub fn fail_next_appends(&self, count: u64) {
        self.fail_next_appends.store(count, Ordering::SeqCst);
    }

    /// Make every append from now on fail without writing, until [`Self::heal`].
    pub fn fail_all_appends(&self) {
        self.fail_all_appends.store(true, Ordering::SeqCst);
    }

    /// Make the next `count` appends reach the inner log and then report an
    /// error anyway: the batch *is* in the log. Models a commit whose fsync
    /// succeeded but whose acknowledgement was lost.
    pub fn lose_next_append_acks(&self, count: u64) {
        self.lose_next_append_acks.store(count, Ordering::SeqCst);
    }

    /// Make snapshot saves fail without writing (`true`) or succeed (`false`).
    pub fn fail_snapshot_saves(&self, fail: bool) {
        self.fail_snapshot_saves.store(fail, Ordering::SeqCst);
    }

    /// Clear every fault.
    pub fn heal(&self) {
        self.fail_all_appends.store(false, Ordering::SeqCst);
        self.fail_next_appends.store(0, Ordering::SeqCst);
        self.lose_next_append_acks.store(0, Ordering::SeqCst);
        self.fail_snapshot_saves.store(false, Ordering::SeqCst);
    }

    /// How many failures were injected so far.
    pub fn injected_failures(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn take_one(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn inject(&self, operation: &'static str, written: bool) -> LogError {
        self.injected.fetch_add(1, Ordering::SeqCst);
        LogError::Injected { operation, written }
    }
}

/// Wraps a [`Log`] and fails operations as its [`FaultPlan`] says; with no
/// fault set it behaves exactly like the inner log.
#[derive(Debug)]
pub struct FaultyLog<L: Log> {
    inner: L,
    plan: Arc<FaultPlan>,
}

impl<L: Log> FaultyLog<L> {
    /// Wraps `inner` with no fault set.
    pub fn new(inner: L) -> FaultyLog<L> {
        FaultyLog::with_plan(inner, Arc::default())
    }

    /// Wraps `inner`, obeying a plan the caller already holds.
    pub fn with_plan(inner: L, plan: Arc<FaultPlan>) -> FaultyLog<L> {
        FaultyLog { inner, plan }
    }

    /// The control handle; clone it freely.
    pub fn plan(&self) -> Arc<FaultPlan> {
        Arc::clone(&self.plan)
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }

    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl<L: Log> Log for FaultyLog<L> {
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
        let plan = &self.plan;
        if plan.fail_all_appends.load(Ordering::SeqCst)
            || FaultPlan::take_one(&plan.fail_next_appends)
        {
            return Err(plan.inject("append", false));
        }
        if FaultPlan::take_one(&plan.lose_next_append_acks) {
            self.inner.append(batch)?;
            return Err(plan.inject("append", true));
        }
        self.inner.append(batch)
    }

    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError> {
        self.inner.read_from(from, max)
    }

    fn last_seq(&self) -> Result<Seq, LogError> {
        self.inner.last_seq()
    }

    fn first_seq(&self) -> Result<Seq, LogError> {
        self.inner.first_seq()
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        if self.plan.fail_snapshot_saves.load(Ordering::SeqCst) {
            return Err(self.plan.inject("save_snapshot", false));
        }
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        self.inner.load_snapshot()
    }

    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError> {
        self.inner.truncate_before(seq)
    }

    fn snapshot_store(&self) -> Option<Arc<dyn SnapshotStore>> {
        let inner = self.inner.snapshot_store()?;
        Some(Arc::new(FaultyStore {
            inner,
            plan: Arc::clone(&self.plan),
        }))
    }
}

/// The inner log's snapshot store, failing saves as the plan says.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn SnapshotStore>,
    plan: Arc<FaultPlan>,
}

impl SnapshotStore for FaultyStore {
    fn save(&self, snapshot: &Snapshot) -> Result<(), LogError> {
        if self.plan.fail_snapshot_saves.load(Ordering::SeqCst) {
            return Err(self.plan.inject("save_snapshot", false));
        }
        self.inner.save(snapshot)
    }
}
