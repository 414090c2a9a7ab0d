//! The history of a run: every operation as the checker models see it, plus
//! lock waits, injected faults and anomalies, all stamped with one monotonic
//! clock (µs since the run started).

use baton_check::Operation;
use baton_check::models::{
    CounterInput, CounterOutput, LockInput, LockOutput, RegisterInput, RegisterOutput,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub type RegisterOp = Operation<RegisterInput, RegisterOutput>;
pub type CounterOp = Operation<CounterInput, CounterOutput>;
pub type LockOp = Operation<LockInput, LockOutput>;

/// A lock request that waited (`wait_ms > 0`) and got an answer.
#[derive(Clone, Debug)]
pub struct WaitRecord {
    pub client: u64,
    pub key: String,
    pub invoke_us: u64,
    pub return_us: u64,
    pub wait_ms: u64,
    /// `granted`, or the error code.
    pub outcome: String,
}

/// One injected fault (kill, restart, storage failure, ...).
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub at_us: u64,
    pub kind: String,
    pub detail: String,
}

/// Something that must never happen, seen while the run was going on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: String,
    pub detail: String,
}

/// Everything recorded in one run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub registers: Vec<RegisterOp>,
    pub counters: Vec<CounterOp>,
    pub locks: Vec<LockOp>,
    pub waits: Vec<WaitRecord>,
    pub faults: Vec<FaultRecord>,
    pub anomalies: Vec<Anomaly>,
    /// Highest version each key was acknowledged at (writes, counter adds,
    /// fenced writes), for the "no acknowledged write lost" check.
    pub acknowledged: BTreeMap<String, u64>,
    /// Keys that ever had a delete sent: only they may be found absent.
    pub deletable: BTreeSet<String>,
    /// Atomic two-key reads of the transfer pair that were checked.
    pub atomic_reads: u64,
    /// Writes with a stale fence (released or lost lease) that were refused.
    pub stale_writes_fenced: u64,
    /// Known Baton bugs seen (tolerated unless `BATON_JEPSEN_STRICT` is set).
    pub known_bugs: BTreeMap<String, u64>,
}

impl History {
    pub fn operations(&self) -> usize {
        self.registers.len() + self.counters.len() + self.locks.len()
    }

    pub fn unknown(&self) -> usize {
        self.registers
            .iter()
            .filter(|o| o.return_time().is_none())
            .count()
            + self
                .counters
                .iter()
                .filter(|o| o.return_time().is_none())
                .count()
            + self
                .locks
                .iter()
                .filter(|o| o.return_time().is_none())
                .count()
    }

    /// The highest log sequence number a client saw acknowledged.
    pub fn max_acknowledged_seq(&self) -> u64 {
        let tokens = self.locks.iter().filter_map(|op| match &op.outcome {
            baton_check::Outcome::Returned {
                output: LockOutput::Granted { token },
                ..
            } => Some(*token),
            _ => None,
        });
        self.acknowledged
            .values()
            .copied()
            .chain(tokens)
            .max()
            .unwrap_or(0)
    }
}

/// Shared by every client of a run.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            history: Mutex::new(History::default()),
        })
    }

    /// µs since the run started: the one clock of every stamp.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.history.lock().expect("history lock"))
    }

    pub fn register(&self, op: RegisterOp) {
        self.with(|h| h.registers.push(op));
    }

    pub fn counter(&self, op: CounterOp) {
        self.with(|h| h.counters.push(op));
    }

    pub fn lock(&self, op: LockOp) {
        self.with(|h| h.locks.push(op));
    }

    pub fn wait(&self, wait: WaitRecord) {
        self.with(|h| h.waits.push(wait));
    }

    pub fn fault(&self, kind: &str, detail: impl Into<String>) {
        let at_us = self.now_us();
        let detail = detail.into();
        eprintln!(
            "jepsen: {:>8.3}s fault {kind}: {detail}",
            at_us as f64 / 1e6
        );
        self.with(|h| {
            h.faults.push(FaultRecord {
                at_us,
                kind: kind.to_string(),
                detail,
            })
        });
    }

    pub fn anomaly(&self, kind: &str, detail: impl Into<String>) {
        let detail = detail.into();
        eprintln!("jepsen: ANOMALY {kind}: {detail}");
        self.with(|h| {
            h.anomalies.push(Anomaly {
                kind: kind.to_string(),
                detail,
            })
        });
    }

    /// A write to `key` was acknowledged at `version`.
    pub fn acknowledged(&self, key: &str, version: u64) {
        self.with(|h| {
            let known = h.acknowledged.entry(key.to_string()).or_insert(0);
            *known = (*known).max(version);
        });
    }

    pub fn deletable(&self, key: &str) {
        self.with(|h| {
            h.deletable.insert(key.to_string());
        });
    }

    pub fn known_bug(&self, what: &str) {
        self.with(|h| *h.known_bugs.entry(what.to_string()).or_insert(0) += 1);
    }

    pub fn atomic_read(&self) {
        self.with(|h| h.atomic_reads += 1);
    }

    pub fn stale_write_fenced(&self) {
        self.with(|h| h.stale_writes_fenced += 1);
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        self.with(|h| h.clone())
    }
}
