//! PostgreSQL: session advisory locks (`pg_advisory_lock` queues in the
//! server; held in memory, never written to the WAL, and with no fencing
//! token), a counter row with a version column for compare-and-set
//! (`UPDATE … WHERE version = $v`), `SET value = value + 1` as the atomic
//! add, and an upsert per put. Every write commits on its own
//! (`synchronous_commit` as the server has it: on by default).

use tokio_postgres::{Client, NoTls, Statement};

use super::{Held, OpError, OpResult, stable_id};

const COUNTERS: &str = "baton_bench_counter";
const KV: &str = "baton_bench_kv";

pub struct Conn {
    client: Client,
    lock: Statement,
    unlock: Statement,
    read_counter: Statement,
    ensure_counter: Statement,
    write_counter: Statement,
    cas_counter: Statement,
    add_counter: Statement,
    put: Statement,
    read_value: Statement,
}

async fn connect_client(conninfo: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped; an error then is the run ending.
        let _ = connection.await;
    });
    Ok(client)
}

impl Conn {
    pub async fn connect(conninfo: &str) -> anyhow::Result<Conn> {
        let client = connect_client(conninfo).await?;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        Ok(Conn {
            lock: prepare("SELECT pg_advisory_lock($1)".into()).await?,
            unlock: prepare("SELECT pg_advisory_unlock($1)".into()).await?,
            read_counter: prepare(format!(
                "SELECT value, version FROM {COUNTERS} WHERE name = $1"
            ))
            .await?,
            ensure_counter: prepare(format!(
                "INSERT INTO {COUNTERS} (name, value, version) VALUES ($1, 0, 0) ON CONFLICT (name) DO NOTHING"
            ))
            .await?,
            write_counter: prepare(format!(
                "UPDATE {COUNTERS} SET value = $2, version = version + 1 WHERE name = $1"
            ))
            .await?,
            cas_counter: prepare(format!(
                "UPDATE {COUNTERS} SET value = $2, version = version + 1 WHERE name = $1 AND version = $3"
            ))
            .await?,
            add_counter: prepare(format!(
                "UPDATE {COUNTERS} SET value = value + 1, version = version + 1 WHERE name = $1"
            ))
            .await?,
            put: prepare(format!(
                "INSERT INTO {KV} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
            ))
            .await?,
            read_value: prepare(format!("SELECT v FROM {KV} WHERE k = $1")).await?,
            client,
        })
    }

    pub async fn acquire(&mut self, key: &str) -> OpResult<Held> {
        let lock_id = stable_id(key);
        self.client.execute(&self.lock, &[&lock_id]).await?;
        Ok(Held::Pg { lock_id })
    }

    pub async fn release(&mut self, lock_id: i64) -> OpResult<()> {
        let row = self.client.query_one(&self.unlock, &[&lock_id]).await?;
        if row.get::<_, bool>(0) {
            Ok(())
        } else {
            Err(OpError(format!("advisory lock {lock_id} was not held")))
        }
    }

    async fn ensure(&mut self, counter: &str) -> OpResult<()> {
        self.client
            .execute(&self.ensure_counter, &[&counter])
            .await?;
        Ok(())
    }

    pub async fn increment_unfenced(&mut self, counter: &str) -> OpResult<i64> {
        let (value, _) = self.read_counter(counter).await?;
        let next = value + 1;
        let updated = self
            .client
            .execute(&self.write_counter, &[&counter, &next])
            .await?;
        if updated == 0 {
            self.ensure(counter).await?;
            self.client
                .execute(&self.write_counter, &[&counter, &next])
                .await?;
        }
        Ok(next)
    }

    pub async fn cas_increment(&mut self, counter: &str) -> OpResult<u64> {
        let mut conflicts = 0;
        loop {
            let (value, version) = self.read_counter(counter).await?;
            let updated = self
                .client
                .execute(&self.cas_counter, &[&counter, &(value + 1), &version])
                .await?;
            if updated == 1 {
                return Ok(conflicts);
            }
            conflicts += 1;
        }
    }

    pub async fn atomic_add(&mut self, counter: &str) -> OpResult<()> {
        let updated = self.client.execute(&self.add_counter, &[&counter]).await?;
        if updated == 0 {
            return Err(OpError(format!("counter row {counter} is missing")));
        }
        Ok(())
    }

    pub async fn put(&mut self, key: &str, value: &str) -> OpResult<()> {
        self.client.execute(&self.put, &[&key, &value]).await?;
        Ok(())
    }

    /// The counter and its version, creating the row at (0, 0) if absent.
    pub async fn read_counter(&mut self, counter: &str) -> OpResult<(i64, i64)> {
        if let Some(row) = self
            .client
            .query_opt(&self.read_counter, &[&counter])
            .await?
        {
            return Ok((row.get(0), row.get(1)));
        }
        self.ensure(counter).await?;
        Ok((0, 0))
    }

    pub async fn read_value(&mut self, key: &str) -> OpResult<Option<String>> {
        let row = self.client.query_opt(&self.read_value, &[&key]).await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Before a workload: the counter row exists at 0, so every client's
    /// first statement is the same as its later ones.
    pub async fn prepare_counter(&mut self, counter: &str) -> OpResult<()> {
        self.ensure(counter).await
    }
}

/// The tables (emptied: each run starts clean) and the server version.
pub async fn setup(conninfo: &str) -> anyhow::Result<String> {
    let client = connect_client(conninfo).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {COUNTERS} (name text PRIMARY KEY, value bigint NOT NULL, version bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {KV} (k text PRIMARY KEY, v text NOT NULL);
             TRUNCATE {COUNTERS}, {KV};"
        ))
        .await?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let sync: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .get(0);
    Ok(format!("postgres {version} (synchronous_commit {sync})"))
}
