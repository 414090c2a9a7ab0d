//! An in-memory [`Log`] with the same semantics as [`crate::FileLog`] and no
//! durability, for unit tests of the server and its glue to the core.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use crate::{Entry, Log, LogError, Seq, Snapshot};

/// In-memory log. `Clone` makes an independent copy: hand a clone to a new
/// server to simulate a restart from the same log.
#[derive(Clone, Debug)]
pub struct MemLog {
    /// Entries `first_seq ..= last_seq`, in order.
    entries: VecDeque<Vec<u8>>,
    /// Seq of `entries[0]`, or `last_seq + 1` when empty.
    first_seq: Seq,
    last_seq: Seq,
    snapshot: Option<Snapshot>,
}

impl MemLog {
    pub fn new() -> MemLog {
        MemLog {
            entries: VecDeque::new(),
            first_seq: 1,
            last_seq: 0,
            snapshot: None,
        }
    }

    fn check_invariants(&self) {
        assert_eq!(
            self.first_seq + self.entries.len() as u64,
            self.last_seq + 1,
            "MemLog entries must be exactly first_seq..=last_seq"
        );
    }
}

impl Default for MemLog {
    fn default() -> MemLog {
        MemLog::new()
    }
}

impl Log for MemLog {
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
        let range = crate::plan_append(self.last_seq, batch)?;
        self.entries.extend(batch.iter().cloned());
        if !batch.is_empty() {
            self.last_seq = *range.end();
        }
        self.check_invariants();
        Ok(range)
    }

    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError> {
        let first_seq = self.first_seq;
        let start = from.max(first_seq);
        let skip = usize::try_from(start - first_seq).unwrap_or(usize::MAX);
        Ok(self
            .entries
            .iter()
            .skip(skip)
            .take(max)
            .zip(start..)
            .map(|(data, seq)| Entry {
                seq,
                data: data.clone(),
            })
            .collect())
    }

    fn last_seq(&self) -> Result<Seq, LogError> {
        Ok(self.last_seq)
    }

    fn first_seq(&self) -> Result<Seq, LogError> {
        Ok(self.first_seq)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        crate::check_snapshot(snapshot, self.first_seq()?, self.last_seq)?;
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        Ok(self.snapshot.clone())
    }

    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError> {
        let first_seq = self.first_seq()?;
        let snapshot_seq = self.snapshot.as_ref().map(|s| s.seq);
        if let Some(new_first) = crate::plan_truncate(seq, first_seq, snapshot_seq)? {
            let drop_count = usize::try_from(new_first - first_seq).unwrap_or(usize::MAX);
            self.entries.drain(..drop_count.min(self.entries.len()));
            self.first_seq = new_first;
            self.check_invariants();
        }
        Ok(())
    }
}
