//! One suite, every backend: whatever passes here behaves the same for the
//! server. A new backend (PostgreSQL) adds a `Backend` impl and one test.

use baton_log::{
    Entry, FaultyLog, FileLog, FileLogOptions, Log, LogError, MAX_ENTRY_BYTES, MemLog, Seq,
    Snapshot,
};
use tempfile::TempDir;

/// How the suite makes and reopens logs of one backend.
trait Backend {
    type L: Log;
    /// A new, empty log.
    fn fresh(&mut self) -> Self::L;
    /// Close `log` and open it again, as a restart would. Backends without
    /// durability hand the same log back.
    fn reopen(&mut self, log: Self::L) -> Self::L;
}

struct Mem;
impl Backend for Mem {
    type L = MemLog;
    fn fresh(&mut self) -> MemLog {
        MemLog::new()
    }
    fn reopen(&mut self, log: MemLog) -> MemLog {
        log
    }
}

#[derive(Default)]
struct File {
    dirs: Vec<TempDir>,
    options: FileLogOptions,
}
impl Backend for File {
    type L = FileLog;
    fn fresh(&mut self) -> FileLog {
        let dir = tempfile::tempdir().expect("temp dir");
        let log =
            FileLog::open_with(&dir.path().join("data"), self.options).expect("open fresh FileLog");
        self.dirs.push(dir);
        log
    }
    fn reopen(&mut self, log: FileLog) -> FileLog {
        let dir = log.dir().to_path_buf();
        drop(log);
        FileLog::open_with(&dir, self.options).expect("reopen FileLog")
    }
}

/// A `FaultyLog` with no fault set must be indistinguishable from its inner log.
struct Faulty<B: Backend>(B);
impl<B: Backend> Backend for Faulty<B> {
    type L = FaultyLog<B::L>;
    fn fresh(&mut self) -> Self::L {
        FaultyLog::new(self.0.fresh())
    }
    fn reopen(&mut self, log: Self::L) -> Self::L {
        let plan = log.plan();
        FaultyLog::with_plan(self.0.reopen(log.into_inner()), plan)
    }
}

fn payload(seq: Seq) -> Vec<u8> {
    format!("command-{seq}").into_bytes()
}

fn batch(seqs: std::ops::RangeInclusive<Seq>) -> Vec<Vec<u8>> {
    seqs.map(payload).collect()
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

/// Asserts the log holds exactly `first..=last`, each with `payload(seq)`.
fn assert_holds<L: Log>(log: &L, first: Seq, last: Seq) {
    assert_eq!(log.first_seq().unwrap(), first, "first_seq");
    assert_eq!(log.last_seq().unwrap(), last, "last_seq");
    let entries = log.read_from(0, usize::MAX).unwrap();
    assert_eq!(seqs(&entries), (first..=last).collect::<Vec<_>>());
    for entry in &entries {
        assert_eq!(entry.data, payload(entry.seq), "data of seq {}", entry.seq);
    }
}

fn run_conformance<B: Backend>(backend: &mut B) {
    empty_log(backend.fresh());
    append_is_contiguous(backend.fresh());
    empty_batch_appends_nothing(backend.fresh());
    read_from_respects_from_and_max(backend.fresh());
    snapshot_replaces_and_loads(backend.fresh());
    snapshot_must_be_replayable(backend.fresh());
    truncate_needs_a_snapshot(backend.fresh());
    truncate_everything_keeps_the_head(backend);
    reopen_keeps_everything(backend);
    oversized_entry_leaves_log_untouched(backend.fresh());
}

fn empty_log<L: Log>(log: L) {
    assert_eq!(log.last_seq().unwrap(), 0);
    assert_eq!(log.first_seq().unwrap(), 1);
    assert!(log.read_from(0, 10).unwrap().is_empty());
    assert!(log.read_from(1, 10).unwrap().is_empty());
    assert!(log.load_snapshot().unwrap().is_none());
}

fn append_is_contiguous<L: Log>(mut log: L) {
    assert_eq!(log.append(&batch(1..=3)).unwrap(), 1..=3);
    assert_eq!(log.append(&batch(4..=4)).unwrap(), 4..=4);
    assert_eq!(log.append(&batch(5..=1004)).unwrap(), 5..=1004);
    assert_holds(&log, 1, 1004);
    // A zero-length entry is an entry like any other.
    assert_eq!(log.append(&[Vec::new()]).unwrap(), 1005..=1005);
    let last = log.read_from(1005, 10).unwrap();
    assert_eq!(
        last,
        vec![Entry {
            seq: 1005,
            data: Vec::new()
        }]
    );
}

fn empty_batch_appends_nothing<L: Log>(mut log: L) {
    let range = log.append(&[]).unwrap();
    assert!(range.is_empty());
    assert_eq!(
        (*range.start(), *range.end()),
        (1, 0),
        "the empty range sits just after the head"
    );
    log.append(&batch(1..=4)).unwrap();
    let range = log.append(&[]).unwrap();
    assert!(range.is_empty());
    assert_eq!((*range.start(), *range.end()), (5, 4));
    assert_holds(&log, 1, 4);
    assert_eq!(log.append(&batch(5..=5)).unwrap(), 5..=5);
}

fn read_from_respects_from_and_max<L: Log>(mut log: L) {
    log.append(&batch(1..=10)).unwrap();
    assert_eq!(seqs(&log.read_from(0, 3).unwrap()), vec![1, 2, 3]);
    assert_eq!(seqs(&log.read_from(4, 2).unwrap()), vec![4, 5]);
    assert_eq!(seqs(&log.read_from(9, 100).unwrap()), vec![9, 10]);
    assert!(log.read_from(11, 100).unwrap().is_empty());
    assert!(log.read_from(Seq::MAX, 100).unwrap().is_empty());
    assert!(log.read_from(1, 0).unwrap().is_empty());
}

fn snapshot_replaces_and_loads<L: Log>(mut log: L) {
    log.append(&batch(1..=5)).unwrap();
    let first = Snapshot {
        seq: 2,
        data: b"state@2".to_vec(),
    };
    log.save_snapshot(&first).unwrap();
    assert_eq!(log.load_snapshot().unwrap(), Some(first));
    let second = Snapshot {
        seq: 5,
        data: b"state@5".to_vec(),
    };
    log.save_snapshot(&second).unwrap();
    assert_eq!(log.load_snapshot().unwrap(), Some(second));
    // Saving a snapshot does not touch the entries.
    assert_holds(&log, 1, 5);
}

fn snapshot_must_be_replayable<L: Log>(mut log: L) {
    // Beyond the head: nothing to replay up to it.
    let err = log
        .save_snapshot(&Snapshot {
            seq: 1,
            data: vec![],
        })
        .unwrap_err();
    assert!(
        matches!(err, LogError::SnapshotOutOfRange { seq: 1, .. }),
        "{err}"
    );
    // Seq 0 (the empty state) is fine on a log that starts at 1.
    log.save_snapshot(&Snapshot {
        seq: 0,
        data: b"empty".to_vec(),
    })
    .unwrap();
    log.append(&batch(1..=6)).unwrap();
    log.save_snapshot(&Snapshot {
        seq: 4,
        data: vec![],
    })
    .unwrap();
    log.truncate_before(5).unwrap();
    // Below first_seq - 1: entries 3..=4 it would need are gone.
    let err = log
        .save_snapshot(&Snapshot {
            seq: 3,
            data: vec![],
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::SnapshotOutOfRange {
                seq: 3,
                first_seq: 5,
                last_seq: 6
            }
        ),
        "{err}"
    );
    assert_eq!(log.load_snapshot().unwrap().unwrap().seq, 4);
    // Exactly first_seq - 1 is replayable.
    log.save_snapshot(&Snapshot {
        seq: 4,
        data: b"again".to_vec(),
    })
    .unwrap();
}

fn truncate_needs_a_snapshot<L: Log>(mut log: L) {
    log.append(&batch(1..=10)).unwrap();
    // No snapshot: every entry is needed.
    let err = log.truncate_before(2).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::TruncateBeyondSnapshot {
                requested: 2,
                snapshot_seq: None
            }
        ),
        "{err}"
    );
    // Up to first_seq is a no-op, snapshot or not.
    log.truncate_before(0).unwrap();
    log.truncate_before(1).unwrap();
    assert_holds(&log, 1, 10);

    log.save_snapshot(&Snapshot {
        seq: 6,
        data: vec![],
    })
    .unwrap();
    // Seq 8 would delete entry 7, which the snapshot does not cover.
    let err = log.truncate_before(8).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::TruncateBeyondSnapshot {
                requested: 8,
                snapshot_seq: Some(6)
            }
        ),
        "{err}"
    );
    assert_holds(&log, 1, 10);

    log.truncate_before(4).unwrap();
    assert_holds(&log, 4, 10);
    assert_eq!(seqs(&log.read_from(2, 2).unwrap()), vec![4, 5]);
    // Going backwards is a no-op, not an error.
    log.truncate_before(2).unwrap();
    assert_holds(&log, 4, 10);
    log.truncate_before(7).unwrap();
    assert_holds(&log, 7, 10);
}

fn truncate_everything_keeps_the_head<B: Backend>(backend: &mut B) {
    let mut log = backend.fresh();
    log.append(&batch(1..=5)).unwrap();
    log.save_snapshot(&Snapshot {
        seq: 5,
        data: b"all".to_vec(),
    })
    .unwrap();
    log.truncate_before(6).unwrap();
    assert_eq!(log.first_seq().unwrap(), 6);
    assert_eq!(
        log.last_seq().unwrap(),
        5,
        "truncation never lowers the head"
    );
    assert!(log.read_from(0, 10).unwrap().is_empty());
    log = backend.reopen(log);
    assert_eq!(log.first_seq().unwrap(), 6);
    assert_eq!(log.last_seq().unwrap(), 5);
    assert_eq!(log.append(&batch(6..=7)).unwrap(), 6..=7);
    assert_holds(&log, 6, 7);
}

fn reopen_keeps_everything<B: Backend>(backend: &mut B) {
    let mut log = backend.fresh();
    log = backend.reopen(log);
    assert_eq!(log.last_seq().unwrap(), 0);
    log.append(&batch(1..=100)).unwrap();
    log.append(&batch(101..=200)).unwrap();
    let snapshot = Snapshot {
        seq: 150,
        data: vec![7; 10_000],
    };
    log.save_snapshot(&snapshot).unwrap();
    log.truncate_before(120).unwrap();

    let mut log = backend.reopen(log);
    assert_holds(&log, 120, 200);
    assert_eq!(log.load_snapshot().unwrap(), Some(snapshot));
    // The truncation rule holds across the restart too.
    assert!(log.truncate_before(152).is_err());
    assert_eq!(log.append(&batch(201..=201)).unwrap(), 201..=201);
    let log = backend.reopen(log);
    assert_holds(&log, 120, 201);
}

fn oversized_entry_leaves_log_untouched<L: Log>(mut log: L) {
    log.append(&batch(1..=2)).unwrap();
    let err = log
        .append(&[payload(3), vec![0; MAX_ENTRY_BYTES + 1]])
        .unwrap_err();
    assert!(
        matches!(err, LogError::EntryTooLarge { index: 1, .. }),
        "{err}"
    );
    assert_holds(&log, 1, 2);
    assert_eq!(log.append(&batch(3..=3)).unwrap(), 3..=3);
}

#[test]
fn mem_log_conforms() {
    run_conformance(&mut Mem);
}

#[test]
fn file_log_conforms() {
    run_conformance(&mut File::default());
}

/// Segments of a few hundred bytes: every case then crosses segment
/// boundaries, and truncation deletes whole segments.
#[test]
fn file_log_with_tiny_segments_conforms() {
    run_conformance(&mut File {
        dirs: Vec::new(),
        options: FileLogOptions { segment_bytes: 300 },
    });
}

#[test]
fn faulty_log_without_faults_conforms() {
    run_conformance(&mut Faulty(Mem));
    run_conformance(&mut Faulty(File::default()));
}

#[test]
fn boxed_dyn_log_conforms() {
    struct Boxed;
    impl Backend for Boxed {
        type L = Box<dyn Log>;
        fn fresh(&mut self) -> Box<dyn Log> {
            Box::new(MemLog::new())
        }
        fn reopen(&mut self, log: Box<dyn Log>) -> Box<dyn Log> {
            log
        }
    }
    run_conformance(&mut Boxed);
}

/// The PostgreSQL backend, against a real server: `BATON_TEST_POSTGRES`
/// (default: the local one, database `test`). Each log gets a schema of
/// its own, dropped when the suite ends.
#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use baton_log::PgLog;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// How long a reopen waits for the previous handle's backend to go.
    pub const REOPEN_WAIT: Duration = Duration::from_secs(10);

    pub fn conninfo() -> String {
        std::env::var("BATON_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
    }

    /// A schema name no other test (or earlier run) uses.
    pub fn unique_schema(what: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "t_{what}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn admin() -> postgres::Client {
        postgres::Client::connect(&conninfo(), postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {:?} is needed for these tests ({e}); start it or set BATON_TEST_POSTGRES",
                conninfo()
            )
        })
    }

    #[derive(Default)]
    pub struct Pg {
        schemas: Vec<String>,
    }

    impl Backend for Pg {
        type L = PgLog;
        fn fresh(&mut self) -> PgLog {
            let schema = unique_schema("conformance");
            let log =
                PgLog::open(&conninfo(), &schema, Duration::ZERO).expect("open a fresh PgLog");
            self.schemas.push(schema);
            log
        }
        fn reopen(&mut self, log: PgLog) -> PgLog {
            let schema = log.schema().to_string();
            drop(log);
            // The dropped connection's backend frees the lock as it exits,
            // which may be a moment after the drop returns.
            PgLog::open(&conninfo(), &schema, REOPEN_WAIT).expect("reopen PgLog")
        }
    }

    impl Drop for Pg {
        fn drop(&mut self) {
            let mut admin = admin();
            for schema in &self.schemas {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }

    #[test]
    fn pg_log_conforms() {
        run_conformance(&mut Pg::default());
    }

    // What only this backend has: the writer lock, a lost connection, a
    // damaged head, and what it says about bad settings.

    fn open(schema: &str) -> Result<PgLog, LogError> {
        PgLog::open(&conninfo(), schema, Duration::ZERO)
    }

    fn drop_schema(schema: &str) {
        admin()
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .unwrap();
    }

    fn reopen(schema: &str) -> PgLog {
        PgLog::open(&conninfo(), schema, REOPEN_WAIT).unwrap()
    }

    #[test]
    fn a_second_writer_on_the_same_schema_is_refused_until_the_first_closes() {
        let schema = unique_schema("writer");
        let mut first = open(&schema).unwrap();
        first.append(&batch(1..=3)).unwrap();
        let err = open(&schema).unwrap_err();
        assert!(matches!(err, LogError::InUse { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&schema) && message.contains("--postgres-schema"),
            "{message}"
        );
        // The first writer is unharmed, and a log in another schema is independent.
        first.append(&batch(4..=4)).unwrap();
        let other = unique_schema("other");
        assert_eq!(open(&other).unwrap().last_seq().unwrap(), 0);
        drop(first);
        assert_holds(&reopen(&schema), 1, 4);
        drop_schema(&schema);
        drop_schema(&other);
    }

    #[test]
    fn a_writer_waits_for_the_lock_within_its_bound() {
        let schema = unique_schema("wait");
        let first = open(&schema).unwrap();
        let started = Instant::now();
        let err = PgLog::open(&conninfo(), &schema, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, LogError::InUse { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Freed during the wait: the waiter takes it over.
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let mut next = PgLog::open(&conninfo(), &schema, Duration::from_secs(10)).unwrap();
        freer.join().unwrap();
        // The session's lock_timeout is off again: appends do not time out.
        next.append(&batch(1..=1)).unwrap();
        drop(next);
        drop_schema(&schema);
    }

    #[test]
    fn a_lost_connection_refuses_every_later_write_and_frees_the_schema() {
        let schema = unique_schema("lost");
        let mut log = open(&schema).unwrap();
        log.append(&batch(1..=3)).unwrap();
        let terminated: i64 = admin()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("baton-log {schema}")],
            )
            .unwrap()
            .get(0);
        assert_eq!(terminated, 1, "the log's one connection");
        let err = log.append(&batch(4..=4)).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Postgres {
                    operation: "append",
                    ..
                }
            ),
            "{err}"
        );
        let err = log.append(&batch(4..=4)).unwrap_err();
        assert!(matches!(err, LogError::PostgresPoisoned { .. }), "{err}");
        assert!(err.to_string().contains("restart the server"), "{err}");
        assert!(
            log.save_snapshot(&Snapshot {
                seq: 3,
                data: vec![1]
            })
            .is_err()
        );
        // The lock went with the connection (once PostgreSQL has ended
        // that backend, hence the wait): another writer takes over, from
        // what was durable.
        let mut next = reopen(&schema);
        assert_holds(&next, 1, 3);
        assert_eq!(next.append(&batch(4..=4)).unwrap(), 4..=4);
        drop(log);
        drop(next);
        drop_schema(&schema);
    }

    #[test]
    fn snapshots_saved_off_the_writer_count_at_once_and_never_replace_a_newer_one() {
        let schema = unique_schema("snapshots");
        let mut log = open(&schema).unwrap();
        log.append(&batch(1..=10)).unwrap();
        let store = log.snapshot_store().expect("saves off the writer's thread");
        let newer = Snapshot {
            seq: 8,
            data: vec![8; 100],
        };
        store.save(&newer).unwrap();
        assert_eq!(log.load_snapshot().unwrap(), Some(newer.clone()));
        log.truncate_before(9).unwrap();
        assert_holds(&log, 9, 10);
        // A server that lost the log finishing an older snapshot: refused,
        // and the newer one stays (the entries after the older are gone).
        let err = store
            .save(&Snapshot {
                seq: 5,
                data: vec![5],
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("another server has taken"),
            "{err}"
        );
        let err = log
            .save_snapshot(&Snapshot {
                seq: 3,
                data: vec![3],
            })
            .unwrap_err();
        assert!(matches!(err, LogError::SnapshotOutOfRange { .. }), "{err}");
        assert_eq!(log.load_snapshot().unwrap(), Some(newer));
        drop(log);
        drop_schema(&schema);
    }

    #[test]
    fn a_head_that_disagrees_with_the_entries_refuses_to_open() {
        let schema = unique_schema("damaged");
        let mut log = open(&schema).unwrap();
        log.append(&batch(1..=3)).unwrap();
        drop(log);
        admin()
            .batch_execute(&format!("DELETE FROM {schema}.baton_log WHERE seq = 2"))
            .unwrap();
        let err = PgLog::open(&conninfo(), &schema, REOPEN_WAIT).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("damaged") && message.contains("1..=3"),
            "{message}"
        );
        drop_schema(&schema);
    }

    #[test]
    fn a_writer_whose_epoch_was_overtaken_stops_writing() {
        // What a pooler that moved the session (and its lock) away would
        // allow: another writer opened the log meanwhile.
        let schema = unique_schema("epoch");
        let mut log = open(&schema).unwrap();
        log.append(&batch(1..=3)).unwrap();
        admin()
            .batch_execute(&format!("UPDATE {schema}.baton_head SET epoch = epoch + 1"))
            .unwrap();
        let err = log.append(&batch(4..=4)).unwrap_err();
        assert!(
            err.to_string().contains("another server has opened"),
            "{err}"
        );
        let err = log.append(&batch(4..=4)).unwrap_err();
        assert!(matches!(err, LogError::PostgresPoisoned { .. }), "{err}");
        assert!(
            log.truncate_before(1).is_ok(),
            "a no-op truncate writes nothing"
        );
        drop(log);
        assert_holds(&reopen(&schema), 1, 3);
        drop_schema(&schema);
    }

    #[test]
    fn a_connection_lost_in_the_middle_of_an_append_applies_none_of_it() {
        let schema = unique_schema("midway");
        let mut log = open(&schema).unwrap();
        log.append(&batch(1..=3)).unwrap();
        // Hold the head row so the next append blocks inside its transaction.
        let mut blocker = admin();
        let mut hold = blocker.transaction().unwrap();
        hold.execute(
            &format!("SELECT 1 FROM {schema}.baton_head FOR UPDATE"),
            &[],
        )
        .unwrap();
        let appending = std::thread::spawn(move || {
            let result = log.append(&batch(4..=6));
            (log, result)
        });
        let mut watcher = admin();
        let name = format!("baton-log {schema}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&name],
                )
                .unwrap()
                .get(0);
            if waiting == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the append never blocked");
            std::thread::sleep(Duration::from_millis(10));
        }
        watcher
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .unwrap();
        let (log, result) = appending.join().unwrap();
        assert!(result.is_err(), "the append could not have committed");
        hold.rollback().unwrap();
        drop(log);
        assert_holds(&reopen(&schema), 1, 3);
        drop_schema(&schema);
    }

    #[test]
    fn a_schema_named_like_a_keyword_is_a_name_like_any_other() {
        let schema = "user";
        let _ = admin().batch_execute("DROP SCHEMA IF EXISTS \"user\" CASCADE");
        let mut log = open(schema).unwrap();
        log.append(&batch(1..=2)).unwrap();
        drop(log);
        assert_holds(&reopen(schema), 1, 2);
        drop_schema(schema);
    }

    #[test]
    fn a_statement_timeout_from_the_connection_or_role_does_not_apply() {
        // A role or connection default that would cut a large append or
        // snapshot short: the log's sessions turn it off.
        let schema = unique_schema("timeout");
        let conninfo = format!("{} options='-c statement_timeout=1'", conninfo());
        let mut log = PgLog::open(&conninfo, &schema, Duration::ZERO).unwrap();
        let big: Vec<Vec<u8>> = (1..=5_000).map(|_| vec![7; 1_000]).collect();
        assert_eq!(log.append(&big).unwrap(), 1..=5_000);
        log.save_snapshot(&Snapshot {
            seq: 5_000,
            data: vec![1; 20_000_000],
        })
        .unwrap();
        log.truncate_before(5_001).unwrap();
        drop(log);
        drop_schema(&schema);
    }

    #[test]
    fn bad_settings_say_what_to_give() {
        for schema in ["", "Baton", "1st", "a-b", "x; DROP TABLE y"] {
            let err = open(schema).unwrap_err();
            assert!(
                err.to_string().contains("a schema name is"),
                "{schema:?}: {err}"
            );
        }
        let err = PgLog::open("not a connection string", "baton", Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        // Nothing listens on port 1.
        let err = PgLog::open(
            "host=127.0.0.1 port=1 user=postgres",
            "baton",
            Duration::ZERO,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("connect") && message.contains("127.0.0.1:1"),
            "{message}"
        );
    }
}
