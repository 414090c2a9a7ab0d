//! Redis the way its documentation builds a lock on one node: `SET key token
//! NX PX ttl`, retried after a jittered pause while taken (Redis cannot queue
//! a waiter), released by a compare-and-delete script. Compare-and-set is
//! WATCH / GET / MULTI SET EXEC; the atomic add is INCR. Redis has no fencing
//! token, so the write inside the lock is not fenced.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{Held, Jitter, LEASE, OpError, OpResult};

/// Deletes the lock key only if it still holds our token.
const RELEASE_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Mean pause between two tries of a taken lock.
pub const RETRY_MEAN: Duration = Duration::from_millis(2);

pub struct Conn {
    /// A connection of this client's own: WATCH is per connection.
    conn: MultiplexedConnection,
    client: usize,
    next_token: u64,
    jitter: Jitter,
}

impl Conn {
    pub async fn connect(url: &str, client: usize) -> anyhow::Result<Conn> {
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(Conn {
            conn,
            client,
            next_token: 0,
            jitter: Jitter::new(client as u64 + 1),
        })
    }

    pub async fn acquire(&mut self, key: &str, max_wait: Duration) -> OpResult<Held> {
        self.next_token += 1;
        let token = format!("{}-{}", self.client, self.next_token);
        let give_up = Instant::now() + max_wait;
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE.as_millis() as u64)
                .query_async(&mut self.conn)
                .await?;
            if set.is_some() {
                return Ok(Held::Redis { token });
            }
            if Instant::now() >= give_up {
                return Err(OpError(format!(
                    "lock {key} still taken after {max_wait:?}"
                )));
            }
            tokio::time::sleep(self.jitter.around(RETRY_MEAN)).await;
        }
    }

    pub async fn release(&mut self, key: &str, token: &str) -> OpResult<()> {
        let deleted: i64 = redis::cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(token)
            .query_async(&mut self.conn)
            .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(OpError(format!("lock {key} was no longer ours at release")))
        }
    }

    pub async fn increment_unfenced(&mut self, counter: &str) -> OpResult<i64> {
        let next = self.read_counter(counter).await? + 1;
        let _: () = redis::cmd("SET")
            .arg(counter)
            .arg(next)
            .query_async(&mut self.conn)
            .await?;
        Ok(next)
    }

    pub async fn cas_increment(&mut self, counter: &str) -> OpResult<u64> {
        let mut conflicts = 0;
        loop {
            let _: () = redis::cmd("WATCH")
                .arg(counter)
                .query_async(&mut self.conn)
                .await?;
            let next = self.read_counter(counter).await? + 1;
            let executed: Option<(String,)> = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(counter)
                .arg(next)
                .query_async(&mut self.conn)
                .await?;
            if executed.is_some() {
                return Ok(conflicts);
            }
            conflicts += 1;
        }
    }

    pub async fn atomic_add(&mut self, counter: &str) -> OpResult<()> {
        let _: i64 = redis::cmd("INCR")
            .arg(counter)
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    pub async fn put(&mut self, key: &str, value: &str) -> OpResult<()> {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    pub async fn read_counter(&mut self, counter: &str) -> OpResult<i64> {
        let value: Option<i64> = redis::cmd("GET")
            .arg(counter)
            .query_async(&mut self.conn)
            .await?;
        Ok(value.unwrap_or(0))
    }

    pub async fn read_value(&mut self, key: &str) -> OpResult<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn)
            .await?)
    }
}

/// The server's version and its persistence setting.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut conn)
        .await?;
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await?;
    Ok(format!(
        "redis {version} (appendonly {}, appendfsync {})",
        aof.get(1).map_or("?", String::as_str),
        fsync.get(1).map_or("?", String::as_str)
    ))
}
