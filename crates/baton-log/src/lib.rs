//! Baton's durable, totally ordered log: the sequencer appends batches of
//! serialized commands, and a restart loads the latest snapshot and replays
//! the entries after it.
//!
//! The log stores opaque bytes. It must never depend on `baton-core` (it does
//! not know what a command is), and its API never needs an async runtime
//! (the trait is blocking; the server calls it from its writer thread or
//! `spawn_blocking`). The PostgreSQL backend's driver runs a runtime of its
//! own inside, behind the optional `postgres` feature.
//!
//! Backends:
//! - [`FileLog`]: the embedded backend, append-only segment files and
//!   snapshot files in a data directory.
//! - [`MemLog`]: in memory, same semantics, no durability (tests).
//! - [`FaultyLog`]: wraps any [`Log`] and injects failures (fail-stop tests).
//!
//! - [`PgLog`] (feature `postgres`): the log in PostgreSQL tables, one
//!   writer at a time, so the server keeps no state on its own machine.
//!   Several servers appending to one shared log is the next step; the
//!   contract below is written for it.
//!
//! # Contract, in short
//! - Seqs start at 1 and are contiguous; 0 means "nothing".
//! - [`Log::append`] is all-or-nothing and durable when it returns `Ok`. An
//!   `Err` is an *unknown outcome*: after a restart the whole batch may be
//!   there or none of it, never a part. A storage error makes a [`FileLog`]
//!   refuse further writes until it is reopened ([`LogError::Poisoned`]).
//! - An empty batch writes nothing and returns the empty range
//!   `last_seq()+1 ..= last_seq()`.
//! - A snapshot must cover a seq in `first_seq()-1 ..= last_seq()`, so that
//!   replay from it is always possible.
//! - [`Log::truncate_before`] never deletes an entry the latest snapshot does
//!   not cover: `seq` may be at most `snapshot.seq + 1`. Truncating below
//!   `first_seq()` is a no-op.

mod faulty;
mod file;
mod mem;
#[cfg(feature = "postgres")]
mod pg;

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

pub use faulty::{FaultPlan, FaultyLog};
pub use file::{FileLog, FileLogOptions, LOCK_FILE_NAME, PREALLOCATE_BYTES, SEGMENT_BYTES};
pub use mem::MemLog;
#[cfg(feature = "postgres")]
pub use pg::{DEFAULT_SCHEMA, LOCK_WAIT, PgLog};

/// A log position. The first entry has seq 1; 0 means "nothing".
pub type Seq = u64;

/// Most entries one [`Log::append`] accepts: bounds the memory and the time of
/// one write transaction. The sequencer batches far fewer than this.
pub const MAX_BATCH_ENTRIES: usize = 65_536;

/// Largest single entry (one serialized command), in bytes.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

/// Largest snapshot, in bytes: a snapshot is written and read as one buffer.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

/// One log entry: an opaque, serialized command at its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: Seq,
    pub data: Vec<u8>,
}

/// The serialized state after applying every entry with a seq `<= seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: Seq,
    pub data: Vec<u8>,
}

/// Everything that can go wrong with a log. Each message says what happened
/// and, where there is one, what to do next.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum LogError {
    /// Another process (or another open log in this process) has the data
    /// directory open.
    #[error(
        "data directory {} is locked: another Baton process (or another open log in this process) is using it; stop that process or pass a different data directory",
        dir.display()
    )]
    Locked { dir: PathBuf },

    /// A file-system operation failed: disk full, I/O error, permissions.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A write failed earlier with an unknown outcome; this handle refuses
    /// every write since, because it no longer knows what is durable.
    #[error(
        "log in {} refuses writes: an earlier write failed ({cause}) and its outcome is unknown; reopen the log (restart the server) to recover what is durable",
        dir.display()
    )]
    Poisoned { dir: PathBuf, cause: String },

    /// The store's contents break an invariant of the log (e.g. a gap in seqs).
    #[error("log in {} is damaged: {detail}; restore the data directory from a backup", dir.display())]
    Corrupt { dir: PathBuf, detail: String },

    /// The store was written by a newer (or unknown) version of Baton.
    #[error(
        "log in {} has format version {found}, this build reads version {supported}; use a matching Baton version",
        dir.display()
    )]
    UnsupportedFormat {
        dir: PathBuf,
        found: u64,
        supported: u64,
    },

    #[error("batch of {len} entries exceeds the limit of {max} entries per append; split it")]
    BatchTooLarge { len: usize, max: usize },

    #[error("entry {index} of the batch is {len} bytes, over the limit of {max} bytes per entry")]
    EntryTooLarge {
        index: usize,
        len: usize,
        max: usize,
    },

    #[error("snapshot is {len} bytes, over the limit of {max} bytes")]
    SnapshotTooLarge { len: usize, max: usize },

    /// A snapshot must leave a replayable log behind it.
    #[error(
        "refusing a snapshot at seq {seq}: the log holds seqs {first_seq}..={last_seq}, so a snapshot must cover a seq from {} to {last_seq} to be replayable",
        first_seq.saturating_sub(1)
    )]
    SnapshotOutOfRange {
        seq: Seq,
        first_seq: Seq,
        last_seq: Seq,
    },

    /// Truncating would delete entries that no snapshot covers.
    #[error(
        "refusing to truncate entries before seq {requested}: {}; save a snapshot that covers seq {} first",
        match snapshot_seq {
            Some(s) => format!("the latest snapshot covers only up to seq {s}, and the entries after it are needed for replay"),
            None => "there is no snapshot, so every entry is needed for replay".to_string(),
        },
        requested.saturating_sub(1)
    )]
    TruncateBeyondSnapshot {
        requested: Seq,
        snapshot_seq: Option<Seq>,
    },

    /// Another Baton server holds the writer lock of this PostgreSQL log.
    #[error(
        "the log in {store} is in use by another Baton server (it holds the writer lock, and kept it while this one waited); stop that server, or give this one another schema with --postgres-schema"
    )]
    InUse { store: String },

    /// PostgreSQL refused or failed an operation.
    #[error("cannot {operation} the log in {store}: {detail}")]
    Postgres {
        store: String,
        operation: &'static str,
        detail: String,
    },

    /// A write to PostgreSQL failed earlier with an unknown outcome, or the
    /// connection (and with it the writer lock) is gone.
    #[error(
        "the log in {store} refuses writes: {cause}, so what is durable is unknown and another server may have taken over; restart the server to recover what is durable"
    )]
    PostgresPoisoned { store: String, cause: String },

    #[error("log seqs exhausted: cannot append {len} entries after seq {last_seq}")]
    SeqExhausted { last_seq: Seq, len: usize },

    /// A failure injected by [`FaultyLog`]. `written` says whether the inner
    /// log received the write anyway (a lost acknowledgement).
    #[error(
        "injected fault: {operation} failed{}",
        if *written { " after the write reached the log (lost acknowledgement)" } else { "; nothing was written" }
    )]
    Injected {
        operation: &'static str,
        written: bool,
    },
}

/// A durable, totally ordered log of opaque entries.
///
/// Blocking by design: the server owns one `Log` in its writer and calls it
/// outside the async runtime. On a backend shared by several servers (the
/// next step for PostgreSQL, which has one writer today and caches its
/// head) others append too: `append` then assigns seqs after the shared
/// head, and `last_seq` asks the store, so a reader can wait to apply up
/// to it.
pub trait Log: Send + 'static {
    /// Append a batch; assigned seqs are contiguous, starting at
    /// `last_seq()+1`. Durable (fsynced) when it returns `Ok`. On `Err` the
    /// outcome is unknown but all-or-nothing: after a restart either the whole
    /// batch is visible or none of it.
    ///
    /// An empty batch writes nothing and returns the empty range
    /// `last_seq()+1 ..= last_seq()`.
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError>;

    /// Up to `max` entries with seq `>= from`, in order. Entries truncated
    /// away are not returned (check [`Log::first_seq`]).
    ///
    /// Replay a long log in chunks (say 10,000 entries): holding a million
    /// entries in memory at once costs far more time than reading them.
    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError>;

    /// The seq of the last entry ever appended (0 if none). Truncation does
    /// not lower it.
    fn last_seq(&self) -> Result<Seq, LogError>;

    /// Lowest seq still stored (`last_seq()+1` if empty).
    fn first_seq(&self) -> Result<Seq, LogError>;

    /// Durably store a snapshot (replaces the previous one). Its seq must be
    /// in `first_seq()-1 ..= last_seq()`, otherwise
    /// [`LogError::SnapshotOutOfRange`].
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError>;

    /// The latest snapshot, if one was ever saved.
    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError>;

    /// Delete entries with seq `< seq`. `seq` may be at most the latest
    /// snapshot's seq + 1 ([`LogError::TruncateBeyondSnapshot`] otherwise);
    /// `seq <= first_seq()` is a no-op.
    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError>;

    /// Where snapshots can be saved from another thread while this log keeps
    /// appending, if the backend can: serializing and writing a large state
    /// then never stalls the writer. `None` (the default): save with
    /// [`Log::save_snapshot`] on the writer's thread.
    ///
    /// A snapshot saved through the store counts for [`Log::load_snapshot`]
    /// and [`Log::truncate_before`] as soon as `save` returns. The caller
    /// must only save the state after an entry this log holds, never
    /// truncate concurrently with a save, and save one at a time.
    fn snapshot_store(&self) -> Option<Arc<dyn SnapshotStore>> {
        None
    }
}

/// Saves snapshots for a [`Log`] from another thread; see
/// [`Log::snapshot_store`].
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// Durably store `snapshot`, replacing the previous one.
    fn save(&self, snapshot: &Snapshot) -> Result<(), LogError>;
}

/// Lets the server hold a `Box<dyn Log>` and still wrap it (e.g. in a
/// [`FaultyLog`]).
impl<L: Log + ?Sized> Log for Box<L> {
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
        (**self).append(batch)
    }
    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError> {
        (**self).read_from(from, max)
    }
    fn last_seq(&self) -> Result<Seq, LogError> {
        (**self).last_seq()
    }
    fn first_seq(&self) -> Result<Seq, LogError> {
        (**self).first_seq()
    }
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        (**self).save_snapshot(snapshot)
    }
    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        (**self).load_snapshot()
    }
    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError> {
        (**self).truncate_before(seq)
    }
    fn snapshot_store(&self) -> Option<Arc<dyn SnapshotStore>> {
        (**self).snapshot_store()
    }
}

// The checks below are shared by every backend so that they agree on every
// edge case; the conformance tests hold them to it.

/// Validates a batch and returns the seqs it will get after `last_seq`.
fn plan_append(last_seq: Seq, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
    if batch.len() > MAX_BATCH_ENTRIES {
        return Err(LogError::BatchTooLarge {
            len: batch.len(),
            max: MAX_BATCH_ENTRIES,
        });
    }
    if let Some((index, entry)) = batch
        .iter()
        .enumerate()
        .find(|(_, entry)| entry.len() > MAX_ENTRY_BYTES)
    {
        return Err(LogError::EntryTooLarge {
            index,
            len: entry.len(),
            max: MAX_ENTRY_BYTES,
        });
    }
    let exhausted = || LogError::SeqExhausted {
        last_seq,
        len: batch.len(),
    };
    let first = last_seq.checked_add(1).ok_or_else(exhausted)?;
    // batch.len() <= MAX_BATCH_ENTRIES, so the cast is lossless.
    let last = last_seq
        .checked_add(batch.len() as u64)
        .ok_or_else(exhausted)?;
    Ok(first..=last)
}

/// Checks that a snapshot at `snapshot.seq` leaves a replayable log.
fn check_snapshot(snapshot: &Snapshot, first_seq: Seq, last_seq: Seq) -> Result<(), LogError> {
    if snapshot.data.len() > MAX_SNAPSHOT_BYTES {
        return Err(LogError::SnapshotTooLarge {
            len: snapshot.data.len(),
            max: MAX_SNAPSHOT_BYTES,
        });
    }
    if snapshot.seq.saturating_add(1) < first_seq || snapshot.seq > last_seq {
        return Err(LogError::SnapshotOutOfRange {
            seq: snapshot.seq,
            first_seq,
            last_seq,
        });
    }
    Ok(())
}

/// Decides a `truncate_before(seq)`: `None` for a no-op, `Some(seq)` to
/// delete every entry below `seq`.
fn plan_truncate(
    seq: Seq,
    first_seq: Seq,
    snapshot_seq: Option<Seq>,
) -> Result<Option<Seq>, LogError> {
    if seq <= first_seq {
        return Ok(None);
    }
    match snapshot_seq {
        Some(covered) if seq <= covered.saturating_add(1) => Ok(Some(seq)),
        _ => Err(LogError::TruncateBeyondSnapshot {
            requested: seq,
            snapshot_seq,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<LogError>();
    }

    #[test]
    fn empty_batch_plans_the_empty_range_after_the_head() {
        let range = plan_append(7, &[]).unwrap();
        assert!(range.is_empty());
        assert_eq!((*range.start(), *range.end()), (8, 7));
    }

    #[test]
    fn seq_exhaustion_is_an_error_not_a_wrap() {
        let err = plan_append(Seq::MAX, &[vec![1]]).unwrap_err();
        assert!(matches!(err, LogError::SeqExhausted { .. }), "{err}");
    }

    #[test]
    fn oversized_entries_and_batches_are_refused() {
        let big = vec![0u8; MAX_ENTRY_BYTES + 1];
        let err = plan_append(0, &[vec![1], big]).unwrap_err();
        assert!(
            matches!(err, LogError::EntryTooLarge { index: 1, .. }),
            "{err}"
        );
        let many = vec![Vec::new(); MAX_BATCH_ENTRIES + 1];
        let err = plan_append(0, &many).unwrap_err();
        assert!(matches!(err, LogError::BatchTooLarge { .. }), "{err}");
    }

    #[test]
    fn truncate_messages_say_what_to_do() {
        let err = plan_truncate(10, 1, Some(5)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("covers only up to seq 5"), "{text}");
        assert!(text.contains("save a snapshot that covers seq 9"), "{text}");
        let text = plan_truncate(2, 1, None).unwrap_err().to_string();
        assert!(text.contains("there is no snapshot"), "{text}");
    }

    #[test]
    fn locked_message_names_the_directory_and_the_fix() {
        let err = LogError::Locked {
            dir: PathBuf::from("/var/lib/baton"),
        };
        let text = err.to_string();
        assert!(text.contains("/var/lib/baton"), "{text}");
        assert!(text.contains("is locked"), "{text}");
        assert!(text.contains("stop that process"), "{text}");
    }
}
