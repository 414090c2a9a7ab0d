//! The embedded backend: one redb file in a data directory. Each `append` is
//! one write transaction, committed with an fsync: that is the group commit,
//! since the server hands us one batch per fsync.

use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use crate::{Entry, Log, LogError, Seq, Snapshot};

/// Name of the redb file inside the data directory.
pub const DB_FILE_NAME: &str = "baton.redb";

/// redb's page cache. Appends and tail reads touch few pages and the OS page
/// cache backs it, so this stays far below redb's 1 GiB default.
pub const DEFAULT_CACHE_SIZE_BYTES: usize = 64 * 1024 * 1024;

/// Entries by seq.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// At most one row: the latest snapshot, keyed by its seq.
const SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");
/// Small named numbers, see the `META_*` keys.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Layout version of the file; bump on an incompatible change.
const META_FORMAT_VERSION: &str = "format_version";
const FORMAT_VERSION: u64 = 1;
/// Lowest seq not truncated away. Needed because a fully truncated log has no
/// entry left to say where it ended.
const META_FIRST_SEQ: &str = "first_seq";

/// The embedded [`Log`]: a redb database in `<dir>/baton.redb`.
///
/// Only one `FileLog` may have a directory open at a time, across processes
/// and within one: a second [`FileLog::open`] fails with [`LogError::Locked`].
pub struct FileLog {
    db: Database,
    dir: PathBuf,
    /// Cached; this handle is the only writer.
    first_seq: Seq,
    last_seq: Seq,
    snapshot_seq: Option<Seq>,
    /// Set when a write failed with an unknown outcome; writes are refused
    /// from then on.
    poisoned: Option<String>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.dir)
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq)
            .field("snapshot_seq", &self.snapshot_seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl FileLog {
    /// Opens the log in `dir`, creating the directory and the file if missing.
    pub fn open(dir: &Path) -> Result<FileLog, LogError> {
        fs::create_dir_all(dir).map_err(|source| LogError::Io {
            operation: "creating data directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE_NAME);
        let is_new = !path.exists();
        let storage_error = |operation: &'static str| {
            let dir = dir.to_path_buf();
            move |err: redb::Error| LogError::Storage {
                operation,
                dir,
                source: Box::new(err),
            }
        };

        let db = match Database::builder()
            .set_cache_size(DEFAULT_CACHE_SIZE_BYTES)
            .create(&path)
        {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch) => {
                return Err(LogError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(err) => return Err(storage_error("opening the database")(err.into())),
        };
        if is_new {
            // The new file's directory entry must be durable too.
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| LogError::Io {
                    operation: "syncing data directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }

        let mut log = FileLog {
            db,
            dir: dir.to_path_buf(),
            first_seq: 1,
            last_seq: 0,
            snapshot_seq: None,
            poisoned: None,
        };
        log.init_tables()
            .map_err(storage_error("creating the tables"))?;
        log.load_positions()?;
        Ok(log)
    }

    /// The data directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates missing tables and stamps or checks the format version.
    fn init_tables(&mut self) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        let found_version = {
            txn.open_table(ENTRIES)?;
            txn.open_table(SNAPSHOT)?;
            let mut meta = txn.open_table(META)?;
            let found = meta.get(META_FORMAT_VERSION)?.map(|v| v.value());
            if found.is_none() {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
            }
            found
        };
        match found_version {
            // Nothing changed: no commit, no fsync.
            Some(_) => txn.abort()?,
            None => txn.commit()?,
        }
        Ok(())
    }

    /// Reads first/last seq and the snapshot seq, and checks the invariants
    /// the rest of the code relies on.
    fn load_positions(&mut self) -> Result<(), LogError> {
        let storage_error = |err: redb::Error| LogError::Storage {
            operation: "reading the log head",
            dir: self.dir.clone(),
            source: Box::new(err),
        };
        let corrupt = |detail: String| LogError::Corrupt {
            dir: self.dir.clone(),
            detail,
        };
        let (version, first_floor, first_key, last_key, count, snapshot_seq) = (|| {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let version = meta.get(META_FORMAT_VERSION)?.map(|v| v.value());
            let first_floor = meta.get(META_FIRST_SEQ)?.map_or(1, |v| v.value());
            let entries = txn.open_table(ENTRIES)?;
            let first_key = entries.first()?.map(|(k, _)| k.value());
            let last_key = entries.last()?.map(|(k, _)| k.value());
            let count = entries.len()?;
            let snapshot = txn.open_table(SNAPSHOT)?;
            let snapshot_seq = snapshot.first()?.map(|(k, _)| k.value());
            Ok::<_, redb::Error>((
                version,
                first_floor,
                first_key,
                last_key,
                count,
                snapshot_seq,
            ))
        })()
        .map_err(storage_error)?;

        let version = version.unwrap_or(0);
        if version != FORMAT_VERSION {
            return Err(LogError::UnsupportedFormat {
                dir: self.dir.clone(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if first_floor == 0 {
            return Err(corrupt("stored first_seq is 0".into()));
        }
        let (first_seq, last_seq) = match (first_key, last_key) {
            (Some(first), Some(last)) => {
                if first != first_floor {
                    return Err(corrupt(format!(
                        "first entry has seq {first}, expected {first_floor}"
                    )));
                }
                if last < first || last - first + 1 != count {
                    return Err(corrupt(format!(
                        "{count} entries between seq {first} and {last}: there is a gap"
                    )));
                }
                (first, last)
            }
            _ => (first_floor, first_floor - 1),
        };
        if let Some(seq) = snapshot_seq
            && (seq.saturating_add(1) < first_seq || seq > last_seq)
        {
            return Err(corrupt(format!(
                "snapshot at seq {seq} does not fit entries {first_seq}..={last_seq}"
            )));
        }
        self.first_seq = first_seq;
        self.last_seq = last_seq;
        self.snapshot_seq = snapshot_seq;
        Ok(())
    }

    fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(cause) => Err(LogError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `body` in one write transaction and commits it (durably: redb's
    /// default durability fsyncs on commit). Any storage error poisons the
    /// handle: after a failed commit or fsync nobody knows what is on disk.
    fn write(
        &mut self,
        operation: &'static str,
        body: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), LogError> {
        let result = (|| {
            let txn = self.db.begin_write()?;
            body(&txn)?;
            txn.commit()?;
            Ok::<_, redb::Error>(())
        })();
        result.map_err(|err| {
            self.poisoned = Some(format!("{operation}: {err}"));
            self.storage_error(operation, err)
        })
    }

    fn storage_error(&self, operation: &'static str, err: impl Into<redb::Error>) -> LogError {
        LogError::Storage {
            operation,
            dir: self.dir.clone(),
            source: Box::new(err.into()),
        }
    }
}

impl Log for FileLog {
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
        self.check_writable()?;
        let range = crate::plan_append(self.last_seq, batch)?;
        if batch.is_empty() {
            return Ok(range);
        }
        let seqs = range.clone();
        self.write("appending a batch", |txn| {
            let mut entries = txn.open_table(ENTRIES)?;
            for (seq, data) in seqs.zip(batch) {
                entries.insert(seq, data.as_slice())?;
            }
            Ok(())
        })?;
        self.last_seq = *range.end();
        Ok(range)
    }

    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError> {
        let start = from.max(self.first_seq);
        if max == 0 || start > self.last_seq {
            return Ok(Vec::new());
        }
        let read = || {
            let txn = self.db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let available = usize::try_from(self.last_seq - start + 1).unwrap_or(usize::MAX);
            let mut out = Vec::with_capacity(max.min(available));
            for item in entries.range(start..)?.take(max) {
                let (seq, data) = item?;
                out.push(Entry {
                    seq: seq.value(),
                    data: data.value().to_vec(),
                });
            }
            Ok::<_, redb::Error>(out)
        };
        read().map_err(|err| self.storage_error("reading entries", err))
    }

    fn last_seq(&self) -> Result<Seq, LogError> {
        Ok(self.last_seq)
    }

    fn first_seq(&self) -> Result<Seq, LogError> {
        Ok(self.first_seq)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), LogError> {
        self.check_writable()?;
        crate::check_snapshot(snapshot, self.first_seq, self.last_seq)?;
        self.write("saving a snapshot", |txn| {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.retain(|_, _| false)?;
            table.insert(snapshot.seq, snapshot.data.as_slice())?;
            Ok(())
        })?;
        self.snapshot_seq = Some(snapshot.seq);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        let read = || {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let snapshot = table.first()?.map(|(seq, data)| Snapshot {
                seq: seq.value(),
                data: data.value().to_vec(),
            });
            Ok::<_, redb::Error>(snapshot)
        };
        read().map_err(|err| self.storage_error("loading the snapshot", err))
    }

    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError> {
        self.check_writable()?;
        let Some(new_first) = crate::plan_truncate(seq, self.first_seq, self.snapshot_seq)? else {
            return Ok(());
        };
        self.write("truncating entries", |txn| {
            let mut entries = txn.open_table(ENTRIES)?;
            entries.retain_in(..new_first, |_, _| false)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_FIRST_SEQ, new_first)?;
            Ok(())
        })?;
        self.first_seq = new_first;
        Ok(())
    }
}
