//! Baton through its Rust client (HTTP/JSON): locks that queue server-side
//! (FIFO, granted on release), fenced writes that release their lock in the
//! same command, `if_version` compare-and-set whose conflict carries the
//! current value, and the atomic `counter add`.

use std::time::Duration;

use baton_client::{Client, LockInfo, LockRequest, PutOptions};
use baton_core::ErrorCode;
use serde_json::Value;

use super::{Held, LEASE, OpError, OpResult};

pub struct Conn {
    /// One client (and so one connection pool) per benchmark client.
    client: Client,
}

/// A held lock of a lock-contended section.
pub struct Section<'a> {
    pub lock_id: u64,
    pub fence_token: u64,
    /// The key the lock holds.
    pub fence_key: &'a str,
    /// The counter as the grant carried it, if it did.
    pub read: Option<i64>,
}

fn counter_value(counter: &str, value: &Value) -> OpResult<i64> {
    value
        .as_i64()
        .ok_or_else(|| OpError(format!("{counter} holds {value}, not a number")))
}

impl Conn {
    pub fn connect(url: &str, client: usize) -> anyhow::Result<Conn> {
        let client = Client::new(url, format!("bench-{client}"))?;
        Ok(Conn { client })
    }

    /// `key`, exclusively, waiting at most `max_wait`: the grant and its fence.
    async fn lock(
        &mut self,
        key: &str,
        max_wait: Duration,
        read: bool,
    ) -> OpResult<(LockInfo, u64)> {
        let mut request = LockRequest::exclusive([key])
            .ttl_ms(LEASE.as_millis() as u64)
            .wait_ms(max_wait.as_millis().max(1) as u64);
        if read {
            request = request.read();
        }
        let lock = self.client.lock_acquire(&request).await?;
        let fence_token = lock
            .fence_token
            .ok_or_else(|| OpError(format!("lock {} granted without a fence", lock.lock_id)))?;
        Ok((lock, fence_token))
    }

    pub async fn acquire(&mut self, key: &str, max_wait: Duration) -> OpResult<Held> {
        let (lock, fence_token) = self.lock(key, max_wait, false).await?;
        Ok(Held::Baton {
            lock_id: lock.lock_id,
            fence_token,
            counter: None,
        })
    }

    /// Locks `counter`'s own key; the grant carries the counter (`read`).
    pub async fn acquire_reading(&mut self, counter: &str, max_wait: Duration) -> OpResult<Held> {
        let (lock, fence_token) = self.lock(counter, max_wait, true).await?;
        let value = match lock.values.as_deref() {
            Some([entry]) => counter_value(counter, &entry.value)?,
            Some([]) => 0,
            other => {
                return Err(OpError(format!(
                    "lock {} on {counter} was granted with values {other:?}",
                    lock.lock_id
                )));
            }
        };
        Ok(Held::Baton {
            lock_id: lock.lock_id,
            fence_token,
            counter: Some(value),
        })
    }

    pub async fn release(&mut self, lock_id: u64) -> OpResult<()> {
        let released = self.client.lock_release(lock_id).await?;
        if released.released {
            Ok(())
        } else {
            Err(OpError(format!(
                "lock {lock_id} was not released by us: {:?}",
                released.outcome
            )))
        }
    }

    /// The rest of a critical section: read the counter, then one command
    /// that writes it + 1 (fenced) and releases the lock, granting the next
    /// waiter in the same commit. `leave` runs once the client stops acting
    /// under the lock: before that last command, which ends the lock itself.
    pub async fn increment_and_release(
        &mut self,
        section: Section<'_>,
        counter: &str,
        leave: impl FnOnce(),
    ) -> OpResult<i64> {
        let Section {
            lock_id,
            fence_token,
            fence_key,
            read,
        } = section;
        let read = match read {
            Some(value) => Ok((value, 0)),
            None => self.read_counter(counter).await,
        };
        leave();
        let next = match read {
            Ok((value, _)) => value + 1,
            Err(error) => {
                // The lock must not leak.
                let _ = self.client.lock_release(lock_id).await;
                return Err(error);
            }
        };
        let written = self
            .client
            .clone()
            .with_fence(fence_key, fence_token)
            .with_release(lock_id)
            .kv_put(counter, &Value::from(next), PutOptions::default())
            .await;
        match written {
            Ok(written) if written.released_lock_id == Some(lock_id) => Ok(next),
            Ok(_) => Err(OpError(format!(
                "the write under lock {lock_id} applied without releasing it"
            ))),
            Err(error) => {
                // Refused as a whole: the lock may still be held, so release it.
                let _ = self.client.lock_release(lock_id).await;
                Err(error.into())
            }
        }
    }

    /// Read, then `if_version`; a conflict answers with the current version
    /// and value, so a retry needs no second read.
    pub async fn cas_increment(&mut self, counter: &str) -> OpResult<u64> {
        let (mut value, mut version) = self.read_counter(counter).await?;
        let mut conflicts = 0;
        loop {
            let options = PutOptions {
                if_version: Some(version),
                ..PutOptions::default()
            };
            match self
                .client
                .kv_put(counter, &Value::from(value + 1), options)
                .await
            {
                Ok(_) => return Ok(conflicts),
                Err(error) if error.code == ErrorCode::ConcurrentModification => {
                    conflicts += 1;
                    let details = error.details.unwrap_or(Value::Null);
                    match (
                        details["current_version"].as_u64(),
                        &details["current_value"],
                    ) {
                        (Some(0), _) => (value, version) = (0, 0),
                        (Some(current), current_value) if current_value.is_i64() => {
                            (value, version) = (current_value.as_i64().unwrap_or(0), current)
                        }
                        _ => (value, version) = self.read_counter(counter).await?,
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub async fn atomic_add(&mut self, counter: &str) -> OpResult<()> {
        self.client.counter_add(counter, 1, None, None).await?;
        Ok(())
    }

    pub async fn put(&mut self, key: &str, value: &str) -> OpResult<()> {
        // Stored as a JSON string: with its quotes, `value.len() + 2` bytes.
        self.client
            .kv_put(key, &Value::from(value), PutOptions::default())
            .await?;
        Ok(())
    }

    /// The counter and its version; absent is (0, 0).
    pub async fn read_counter(&mut self, counter: &str) -> OpResult<(i64, u64)> {
        match self.client.kv_get(counter).await {
            Ok(got) => Ok((counter_value(counter, &got.entry.value)?, got.entry.version)),
            Err(error) if error.code == ErrorCode::NotFound => Ok((0, 0)),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn read_value(&mut self, key: &str) -> OpResult<Option<String>> {
        match self.client.kv_get(key).await {
            Ok(got) => Ok(got.entry.value.as_str().map(str::to_string)),
            Err(error) if error.code == ErrorCode::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

pub async fn version(url: &str) -> anyhow::Result<String> {
    let client = Client::new(url, "bench")?;
    let status = client.status().await?;
    Ok(format!("baton {}", status.version))
}
