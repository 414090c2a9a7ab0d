//! The PostgreSQL backend: the log, its head and the latest snapshot in
//! three tables of one schema, so that a `baton serve` keeps no state of
//! its own on the machine it runs on.
//!
//! One writer at a time. Opening takes a session-level advisory lock on
//! the schema and holds it on the log's one connection for as long as the
//! log is open: a second server on the same schema is refused with
//! [`LogError::InUse`]. If that connection breaks, PostgreSQL releases the
//! lock, and this handle never reconnects (every later call is refused, as
//! after any failed write), so a server that has lost the lock cannot
//! write behind the back of one that took it over. Seqs are also the
//! table's primary key: two writers can never store two entries at one seq.
//!
//! Every append is one transaction (`synchronous_commit = on` for the
//! session, whatever the server's default), so it is durable when it
//! returns, and all or nothing. Snapshots are saved on a second connection
//! from the server's snapshot thread ([`Log::snapshot_store`]), never over
//! a newer one.
//!
//! The connection is driven by the `postgres` crate, which runs its own
//! runtime: call this log from a plain thread (the server's writer, or
//! `spawn_blocking`), never from inside an async task.

use std::cell::RefCell;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::{Entry, Log, LogError, Seq, Snapshot, SnapshotStore};

/// The layout this build reads and writes, stored in the head row.
const FORMAT: i32 = 1;

/// The schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "baton";

/// How long a server waits for the schema's writer lock before it says
/// another server holds it: long enough for PostgreSQL to notice that a
/// crashed predecessor's connection is gone.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_SCHEMA_CHARS: usize = 63;

/// Largest snapshot PostgreSQL can store in one `bytea` field (and send in
/// one message): 1 GB less room for the rest of the row.
const MAX_PG_SNAPSHOT_BYTES: usize = (1 << 30) - (1 << 20);

/// Unless the connection string says otherwise: how long to wait for a
/// connection, and how soon a peer that vanished (a dead host, a dropped
/// NAT mapping) is noticed on either side, so the writer lock does not
/// outlive its holder by TCP's two-hour default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data older than this closes the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The log in PostgreSQL. See the module documentation.
pub struct PgLog {
    /// The one connection. `Log` reads through `&self`; a `RefCell` lets
    /// them use it (a log is used by one thread at a time: not `Sync`).
    client: RefCell<Client>,
    /// Where the log lives, as messages name it: `schema "baton" at host:port/db`.
    store: String,
    schema: String,
    /// The head, cached: this handle is the only writer (the advisory lock).
    first_seq: Seq,
    last_seq: Seq,
    /// This writer's epoch in the head row (see `open`).
    epoch: i64,
    /// Set by a write whose outcome is unknown, or once another writer
    /// took over; every write is refused since.
    poisoned: Option<String>,
    snapshots: Arc<PgSnapshots>,
}

/// Saves snapshots on a second connection ([`Log::snapshot_store`]).
struct PgSnapshots {
    client: Mutex<Client>,
    store: String,
}

impl std::fmt::Debug for PgSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshots")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl SnapshotStore for PgSnapshots {
    fn save(&self, snapshot: &Snapshot) -> Result<(), LogError> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        save_snapshot(&mut client, &self.store, snapshot)
    }
}

/// Upserts the one snapshot row, never over a newer one: a server that
/// lost the writer lock may still finish a snapshot on this connection,
/// and its snapshot (of a durable prefix of the same log) must not take
/// the place of its successor's, whose truncation may have removed the
/// entries after the older one.
fn save_snapshot(client: &mut Client, store: &str, snapshot: &Snapshot) -> Result<(), LogError> {
    if snapshot.data.len() > MAX_PG_SNAPSHOT_BYTES {
        return Err(LogError::SnapshotTooLarge {
            len: snapshot.data.len(),
            max: MAX_PG_SNAPSHOT_BYTES,
        });
    }
    let seq = to_i64(snapshot.seq)?;
    let saved = client
        .execute(
            "INSERT INTO baton_snapshot (id, seq, data) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, data = excluded.data
             WHERE baton_snapshot.seq <= excluded.seq",
            &[&seq, &snapshot.data],
        )
        .map_err(|e| LogError::Postgres {
            store: store.to_string(),
            operation: "save a snapshot",
            detail: cause(&e),
        })?;
    if saved == 0 {
        return Err(LogError::Postgres {
            store: store.to_string(),
            operation: "save a snapshot",
            detail: format!(
                "a snapshot newer than seq {} is already saved: another server has taken this log over",
                snapshot.seq
            ),
        });
    }
    Ok(())
}

/// What each connection sets first, before any statement that could take
/// long: settings every PostgreSQL version has.
const FIRST_SETTINGS: &str = "SET statement_timeout = 0; SET synchronous_commit = on;";

/// The session settings of both connections: durable commits whatever
/// the database's default, no server-side timeout that would end a long
/// snapshot or an idle writer (a role may set them), TCP keepalives from
/// the server's side too, and the schema (created by the lock holder when
/// missing). The name is checked to be `[a-z0-9_]` and quoted, so keywords
/// (`user`, `order`) are names like any other.
fn session_setup(schema: &str, create: bool) -> String {
    let create = if create {
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";")
    } else {
        String::new()
    };
    // set_config over pg_settings: a setting this PostgreSQL does not have
    // (idle_session_timeout came in 14) is skipped instead of failing.
    format!(
        "SELECT set_config(name, value, false)
           FROM (VALUES ('idle_session_timeout', '0'),
                        ('idle_in_transaction_session_timeout', '0'),
                        ('tcp_keepalives_idle', '{}'), ('tcp_keepalives_interval', '{}'),
                        ('tcp_keepalives_count', '{}')) AS wanted(name, value)
          WHERE name IN (SELECT name FROM pg_settings);
         {create} SET search_path = \"{schema}\";",
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_RETRIES
    )
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog")
            .field("store", &self.store)
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

impl PgLog {
    /// Opens (creating if needed) the log in `schema` of the database
    /// `conninfo` names (`postgres://user@host:port/db` or
    /// `host=... dbname=...`), and takes the schema's writer lock, waiting
    /// up to `lock_wait` for it: a server restarted right after a crash
    /// can find its predecessor's connection not yet gone.
    pub fn open(conninfo: &str, schema: &str, lock_wait: Duration) -> Result<PgLog, LogError> {
        if schema.is_empty()
            || schema.chars().count() > MAX_SCHEMA_CHARS
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || schema.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(LogError::Postgres {
                store: format!("schema {schema:?}"),
                operation: "open",
                detail: format!(
                    "a schema name is 1 to {MAX_SCHEMA_CHARS} characters of a-z, 0-9 and _, not starting with a digit"
                ),
            });
        }
        let mut config: postgres::Config = conninfo.parse().map_err(|e| LogError::Postgres {
            store: "PostgreSQL".into(),
            operation: "parse the connection string",
            detail: format!("{e}; give postgres://user@host:port/dbname or host=... dbname=..."),
        })?;
        let store = describe(&config, schema);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        // Names the connection in pg_stat_activity: which server holds the lock.
        config.application_name(&format!("baton-log {schema}"));
        let mut client = config.connect(NoTls).map_err(|e| LogError::Postgres {
            store: store.clone(),
            operation: "connect",
            detail: cause(&e),
        })?;
        let failed = |operation: &'static str| {
            let store = store.clone();
            move |e: postgres::Error| LogError::Postgres {
                store,
                operation,
                detail: cause(&e),
            }
        };
        // Before anything else: a role's or the connection's statement
        // timeout would cut the lock wait, a large append or a snapshot.
        client
            .batch_execute(FIRST_SETTINGS)
            .map_err(failed("prepare the session"))?;
        let locked = if lock_wait.is_zero() {
            client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('baton-log'), hashtext($1))",
                    &[&schema],
                )
                .map_err(failed("take the writer lock"))?
                .get(0)
        } else {
            // The server waits for the lock; `lock_timeout` bounds the wait
            // (advisory locks honour it), then is off again for the session.
            client
                .batch_execute(&format!(
                    "SET lock_timeout = {}",
                    lock_wait.as_millis().max(1)
                ))
                .map_err(failed("take the writer lock"))?;
            let taken = client.execute(
                "SELECT pg_advisory_lock(hashtext('baton-log'), hashtext($1))",
                &[&schema],
            );
            let timed_out = matches!(&taken, Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE));
            if !timed_out {
                taken.map_err(failed("take the writer lock"))?;
            }
            client
                .batch_execute("SET lock_timeout = 0")
                .map_err(failed("take the writer lock"))?;
            !timed_out
        };
        if !locked {
            return Err(LogError::InUse { store });
        }
        // Only the lock holder creates the schema and tables, and only
        // what is missing: a role with no CREATE right can run on tables
        // made for it.
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(quote_ident($1) || '.baton_head') IS NOT NULL",
                &[&schema],
            )
            .map_err(failed("look for the tables"))?
            .get(0);
        client
            .batch_execute(&session_setup(schema, !exists))
            .map_err(failed("prepare the session"))?;
        if !exists {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS baton_log (
                         seq  bigint PRIMARY KEY,
                         data bytea  NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS baton_head (
                         id        int    PRIMARY KEY CHECK (id = 1),
                         format    int    NOT NULL,
                         first_seq bigint NOT NULL,
                         last_seq  bigint NOT NULL,
                         epoch     bigint NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS baton_snapshot (
                         id   int    PRIMARY KEY CHECK (id = 1),
                         seq  bigint NOT NULL,
                         data bytea  NOT NULL
                     );
                     INSERT INTO baton_head VALUES (1, {FORMAT}, 1, 0, 0) ON CONFLICT (id) DO NOTHING;"
                ))
                .map_err(failed("create the tables"))?;
        }
        // A new epoch per writer: every later change of the head names it,
        // so a writer that lost the lock without knowing (a pooler that
        // moved or reset its session) changes nothing once another opened.
        let head = client
            .query_one(
                "UPDATE baton_head SET epoch = epoch + 1 RETURNING format, first_seq, last_seq, epoch",
                &[],
            )
            .map_err(failed("read the head"))?;
        let format: i32 = head.get(0);
        if format != FORMAT {
            return Err(LogError::Postgres {
                store,
                operation: "open",
                detail: format!(
                    "the log has format version {format}, this build reads version {FORMAT}; use a matching Baton version"
                ),
            });
        }
        let (first, last, epoch): (i64, i64, i64) = (head.get(1), head.get(2), head.get(3));
        // The head must agree with what is stored, or replay would skip or
        // invent entries.
        let stored = client
            .query_one(
                "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM baton_log",
                &[],
            )
            .map_err(failed("check the log"))?;
        let (count, min, max): (i64, i64, i64) = (stored.get(0), stored.get(1), stored.get(2));
        let consistent = if count == 0 {
            first == last + 1
        } else {
            min == first && max == last && count == last - first + 1
        };
        if !consistent || first < 1 || last < 0 {
            return Err(LogError::Postgres {
                store,
                operation: "open",
                detail: format!(
                    "the head says seqs {first}..={last} but the table holds {count} entries from {min} to {max}; the log is damaged: restore the database from a backup"
                ),
            });
        }
        // Snapshots are saved on a connection of their own, from the
        // server's snapshot thread, so a large one never stalls appends.
        config.application_name(&format!("baton-log {schema} snapshots"));
        let mut snapshots = config.connect(NoTls).map_err(failed("connect"))?;
        snapshots
            .batch_execute(FIRST_SETTINGS)
            .map_err(failed("prepare the session"))?;
        snapshots
            .batch_execute(&session_setup(schema, false))
            .map_err(failed("prepare the session"))?;
        Ok(PgLog {
            snapshots: Arc::new(PgSnapshots {
                client: Mutex::new(snapshots),
                store: store.clone(),
            }),
            client: RefCell::new(client),
            store,
            schema: schema.to_string(),
            first_seq: first as Seq,
            last_seq: last as Seq,
            epoch,
            poisoned: None,
        })
    }

    /// The schema the log lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(cause) => Err(LogError::PostgresPoisoned {
                store: self.store.clone(),
                cause: cause.clone(),
            }),
            None if self.client.borrow().is_closed() => Err(LogError::PostgresPoisoned {
                store: self.store.clone(),
                cause: "the connection closed".into(),
            }),
            None => Ok(()),
        }
    }

    /// Runs a write transaction. An error the database answered means it
    /// rolled back: nothing changed, and the handle goes on. Any other (the
    /// connection broke, possibly during COMMIT) leaves the outcome
    /// unknown, and so does losing the head to another writer: the handle
    /// refuses writes from then on.
    fn write<T>(
        &mut self,
        operation: &'static str,
        work: impl FnOnce(&mut Client, i64) -> Result<T, WriteError>,
    ) -> Result<T, LogError> {
        self.writable()?;
        let epoch = self.epoch;
        let done = work(&mut self.client.borrow_mut(), epoch);
        done.map_err(|e| {
            let (detail, poison) = match e {
                WriteError::Db(e) => {
                    let unknown = e.as_db_error().is_none()
                        || e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION);
                    (cause(&e), unknown)
                }
                WriteError::TakenOver => (
                    "another server has opened this log since (its epoch is newer)".to_string(),
                    true,
                ),
            };
            if poison || self.client.borrow().is_closed() {
                self.poisoned = Some(format!("{operation}: {detail}"));
            }
            LogError::Postgres {
                store: self.store.clone(),
                operation,
                detail,
            }
        })
    }

    fn read_failed(&self, operation: &'static str) -> impl FnOnce(postgres::Error) -> LogError {
        let store = self.store.clone();
        move |e| LogError::Postgres {
            store,
            operation,
            detail: cause(&e),
        }
    }
}

impl Log for PgLog {
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<RangeInclusive<Seq>, LogError> {
        let range = crate::plan_append(self.last_seq, batch)?;
        if batch.is_empty() {
            return Ok(range);
        }
        let seqs: Vec<i64> = range.clone().map(to_i64).collect::<Result<_, _>>()?;
        let last = *seqs.last().expect("a non-empty batch");
        self.write("append", |client, epoch| {
            let mut txn = client.transaction()?;
            // The head first: a writer that lost the log stops here.
            let moved = txn.execute(
                "UPDATE baton_head SET last_seq = $1 WHERE epoch = $2",
                &[&last, &epoch],
            )?;
            if moved != 1 {
                return Err(WriteError::TakenOver);
            }
            txn.execute(
                "INSERT INTO baton_log (seq, data) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                &[&seqs, &batch],
            )?;
            Ok(txn.commit()?)
        })?;
        self.last_seq = *range.end();
        Ok(range)
    }

    fn read_from(&self, from: Seq, max: usize) -> Result<Vec<Entry>, LogError> {
        if max == 0 || from > self.last_seq {
            return Ok(Vec::new());
        }
        let from = to_i64(from.max(self.first_seq))?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT seq, data FROM baton_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&from, &limit],
            )
            .map_err(self.read_failed("read entries"))?;
        Ok(rows
            .into_iter()
            .map(|row| Entry {
                seq: row.get::<_, i64>(0) as Seq,
                data: row.get(1),
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
        crate::check_snapshot(snapshot, self.first_seq, self.last_seq)?;
        self.writable()?;
        save_snapshot(&mut self.client.borrow_mut(), &self.store, snapshot)
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        let row = self
            .client
            .borrow_mut()
            .query_opt("SELECT seq, data FROM baton_snapshot", &[])
            .map_err(self.read_failed("load the snapshot"))?;
        Ok(row.map(|row| Snapshot {
            seq: row.get::<_, i64>(0) as Seq,
            data: row.get(1),
        }))
    }

    fn truncate_before(&mut self, seq: Seq) -> Result<(), LogError> {
        // The seq only: the snapshot itself may be a gigabyte.
        let snapshot_seq = self
            .client
            .borrow_mut()
            .query_opt("SELECT seq FROM baton_snapshot", &[])
            .map_err(self.read_failed("read the snapshot's seq"))?
            .map(|row| row.get::<_, i64>(0) as Seq);
        if let Some(new_first) = crate::plan_truncate(seq, self.first_seq, snapshot_seq)? {
            let first = to_i64(new_first)?;
            self.write("truncate", |client, epoch| {
                let mut txn = client.transaction()?;
                let moved = txn.execute(
                    "UPDATE baton_head SET first_seq = $1 WHERE epoch = $2",
                    &[&first, &epoch],
                )?;
                if moved != 1 {
                    return Err(WriteError::TakenOver);
                }
                txn.execute("DELETE FROM baton_log WHERE seq < $1", &[&first])?;
                Ok(txn.commit()?)
            })?;
            self.first_seq = new_first;
        }
        Ok(())
    }

    fn snapshot_store(&self) -> Option<Arc<dyn SnapshotStore>> {
        Some(self.snapshots.clone())
    }
}

/// Why a write transaction did not commit.
enum WriteError {
    Db(postgres::Error),
    /// The head row names a newer epoch: another writer opened the log.
    TakenOver,
}

impl From<postgres::Error> for WriteError {
    fn from(e: postgres::Error) -> WriteError {
        WriteError::Db(e)
    }
}

fn to_i64(seq: Seq) -> Result<i64, LogError> {
    i64::try_from(seq).map_err(|_| LogError::SeqExhausted {
        last_seq: seq,
        len: 1,
    })
}

/// `schema "baton" at host:port/db`, for messages (no password).
fn describe(config: &postgres::Config, schema: &str) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("schema {schema:?} at PostgreSQL {host}:{port}/{db}")
}

/// The database's own message, which says what went wrong, not the
/// driver's wrapper around it.
fn cause(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}
