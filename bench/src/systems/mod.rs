//! The systems under test and the handful of operations every workload is
//! made of. Each module speaks its system's native API the way a careful
//! user of it would; `Conn` dispatches so the workload driver stays one
//! piece of code for all of them.

pub mod baton;
pub mod etcd;
pub mod postgres;
pub mod redis;

use crate::floor;
use crate::workload::Workload;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How long a lock's lease lasts in every system: far longer than a run's
/// critical section, so a lease never expires while it is held.
pub const LEASE: Duration = Duration::from_secs(30);

/// Which system, and where it listens.
#[derive(Debug, Clone)]
pub enum System {
    Baton {
        url: String,
    },
    Etcd {
        url: String,
    },
    Redis {
        name: String,
        url: String,
    },
    Postgres {
        conninfo: String,
    },
    /// The transport floor (`crate::floor`): a server that does no work,
    /// hand-written (`floor-*`) or through axum as `baton serve` is
    /// (`floor-axum-*`), driven by Baton's client (`*-sdk`) or by raw
    /// bytes (`*-raw`).
    Floor {
        url: String,
        axum: bool,
        raw: bool,
    },
}

impl System {
    pub fn name(&self) -> &str {
        match self {
            System::Baton { .. } => "baton",
            System::Etcd { .. } => "etcd",
            System::Redis { name, .. } => name,
            System::Postgres { .. } => "postgres",
            System::Floor {
                axum: false,
                raw: false,
                ..
            } => "floor-sdk",
            System::Floor {
                axum: false,
                raw: true,
                ..
            } => "floor-raw",
            System::Floor {
                axum: true,
                raw: false,
                ..
            } => "floor-axum-sdk",
            System::Floor {
                axum: true,
                raw: true,
                ..
            } => "floor-axum-raw",
        }
    }

    /// Whether an acknowledged write survives a crash of the machine.
    pub fn durable(&self) -> bool {
        match self {
            System::Redis { name, .. } => name == "redis-always",
            System::Floor { .. } => false,
            _ => true,
        }
    }

    /// One client's connection. `client` numbers the clients of a run.
    pub async fn connect(&self, client: usize) -> anyhow::Result<Conn> {
        Ok(match self {
            System::Baton { url } => Conn::Baton(baton::Conn::connect(url, client)?),
            System::Etcd { url } => Conn::Etcd(etcd::Conn::connect(url).await?),
            System::Redis { url, .. } => Conn::Redis(redis::Conn::connect(url, client).await?),
            System::Postgres { conninfo } => Conn::Pg(postgres::Conn::connect(conninfo).await?),
            System::Floor {
                url, raw: false, ..
            } => Conn::Baton(baton::Conn::connect(url, client)?),
            System::Floor { url, raw: true, .. } => {
                Conn::Floor(floor::RawConn::connect(url, client).await?)
            }
        })
    }

    /// Whether the workload means anything here: etcd has no atomic add,
    /// and the floor answers only lock acquire and release.
    pub fn runs(&self, workload: Workload) -> bool {
        match self {
            System::Etcd { .. } => workload != Workload::CounterAdd,
            System::Floor { .. } => workload == Workload::LockUncontended,
            _ => true,
        }
    }

    /// Once per run, before the first workload: tables, and the version.
    pub async fn setup(&self) -> anyhow::Result<String> {
        match self {
            System::Baton { url } => baton::version(url).await,
            System::Etcd { url } => etcd::version(url).await,
            System::Redis { url, .. } => redis::version(url).await,
            System::Postgres { conninfo } => postgres::setup(conninfo).await,
            System::Floor { url, .. } => floor::version(url).await,
        }
    }
}

/// A lock the client holds, with what it needs to fence and release.
#[derive(Debug)]
pub enum Held {
    Baton {
        lock_id: u64,
        fence_token: u64,
        /// lock-contended: Baton locks the counter's own key with `read`,
        /// and this is the counter as its grant carried it.
        counter: Option<i64>,
    },
    /// The owner key etcd's Lock API made (base64): it exists while held.
    Etcd {
        owner_key: String,
    },
    /// The random token stored in the lock key.
    Redis {
        token: String,
    },
    Pg {
        lock_id: i64,
    },
    /// The floor's raw client: nothing to remember.
    Floor,
}

/// An operation that failed, and whether it was the system refusing (the
/// lock was lost, a fenced write) or the transport failing.
#[derive(Debug)]
pub struct OpError(pub String);

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for OpError {
    fn from(error: E) -> Self {
        OpError(error.to_string())
    }
}

pub type OpResult<T> = Result<T, OpError>;

/// One client's connection to one system.
pub enum Conn {
    Baton(baton::Conn),
    Etcd(etcd::Conn),
    Redis(redis::Conn),
    Pg(postgres::Conn),
    Floor(floor::RawConn),
}

impl Conn {
    /// Blocks (or retries) until `key` is held; `max_wait` bounds it.
    pub async fn acquire(&mut self, key: &str, max_wait: Duration) -> OpResult<Held> {
        match self {
            Conn::Baton(c) => c.acquire(key, max_wait).await,
            Conn::Etcd(c) => c.acquire(key).await,
            Conn::Redis(c) => c.acquire(key, max_wait).await,
            Conn::Pg(c) => c.acquire(key).await,
            Conn::Floor(c) => c.acquire().await,
        }
    }

    /// The lock of a critical section on `counter`. Baton locks the
    /// counter's own key and its grant carries the counter (`read`), so the
    /// section needs no read of its own; the others lock `lock_key`.
    pub async fn acquire_guarding(
        &mut self,
        lock_key: &str,
        counter: &str,
        max_wait: Duration,
    ) -> OpResult<Held> {
        match self {
            Conn::Baton(c) => c.acquire_reading(counter, max_wait).await,
            _ => self.acquire(lock_key, max_wait).await,
        }
    }

    pub async fn release(&mut self, key: &str, held: Held) -> OpResult<()> {
        match (self, held) {
            (Conn::Baton(c), Held::Baton { lock_id, .. }) => c.release(lock_id).await,
            (Conn::Etcd(c), Held::Etcd { owner_key }) => c.release(&owner_key).await,
            (Conn::Redis(c), Held::Redis { token }) => c.release(key, &token).await,
            (Conn::Pg(c), Held::Pg { lock_id }) => c.release(lock_id).await,
            (Conn::Floor(c), Held::Floor) => c.release().await,
            (_, held) => Err(OpError(format!("{held:?} is not this system's lock"))),
        }
    }

    /// The rest of a critical section: read the counter, write it + 1
    /// (fenced where the system has fences), release the lock even if the
    /// write failed. Baton's write carries the release itself (one command);
    /// the others release with a call of their own. `leave` runs when the
    /// client stops acting under the lock. Returns the value written.
    pub async fn increment_and_release(
        &mut self,
        lock_key: &str,
        held: Held,
        counter: &str,
        leave: impl FnOnce(),
    ) -> OpResult<i64> {
        if let (
            Conn::Baton(c),
            Held::Baton {
                lock_id,
                fence_token,
                counter: read,
            },
        ) = (&mut *self, &held)
        {
            let section = baton::Section {
                lock_id: *lock_id,
                fence_token: *fence_token,
                // A grant that carried the counter locked the counter's key.
                fence_key: if read.is_some() { counter } else { lock_key },
                read: *read,
            };
            return c.increment_and_release(section, counter, leave).await;
        }
        let written = match (&mut *self, &held) {
            (Conn::Etcd(c), Held::Etcd { owner_key }) => {
                c.increment_fenced(owner_key, counter).await
            }
            (Conn::Redis(c), _) => c.increment_unfenced(counter).await,
            (Conn::Pg(c), _) => c.increment_unfenced(counter).await,
            (_, held) => Err(OpError(format!("{held:?} is not this system's lock"))),
        };
        leave();
        let released = self.release(lock_key, held).await;
        let written = written?;
        released?;
        Ok(written)
    }

    /// Read + compare-and-set until it succeeds; returns the conflicts met.
    pub async fn cas_increment(&mut self, counter: &str) -> OpResult<u64> {
        match self {
            Conn::Baton(c) => c.cas_increment(counter).await,
            Conn::Etcd(c) => c.cas_increment(counter).await,
            Conn::Redis(c) => c.cas_increment(counter).await,
            Conn::Pg(c) => c.cas_increment(counter).await,
            Conn::Floor(_) => Err(floor::only_locks()),
        }
    }

    /// The system's own atomic add (`counter add`, INCR, `SET v = v + 1`).
    pub async fn atomic_add(&mut self, counter: &str) -> OpResult<()> {
        match self {
            Conn::Baton(c) => c.atomic_add(counter).await,
            Conn::Etcd(_) => Err(OpError("etcd has no atomic add".into())),
            Conn::Redis(c) => c.atomic_add(counter).await,
            Conn::Pg(c) => c.atomic_add(counter).await,
            Conn::Floor(_) => Err(floor::only_locks()),
        }
    }

    /// A durable write of `value` (256 bytes as stored) to `key`.
    pub async fn put(&mut self, key: &str, value: &str) -> OpResult<()> {
        match self {
            Conn::Baton(c) => c.put(key, value).await,
            Conn::Etcd(c) => c.put(key, value).await,
            Conn::Redis(c) => c.put(key, value).await,
            Conn::Pg(c) => c.put(key, value).await,
            Conn::Floor(_) => Err(floor::only_locks()),
        }
    }

    /// The counter's value; an absent counter is 0.
    pub async fn read_counter(&mut self, counter: &str) -> OpResult<i64> {
        match self {
            Conn::Baton(c) => c.read_counter(counter).await.map(|(value, _)| value),
            Conn::Etcd(c) => c.read_counter(counter).await.map(|(value, _)| value),
            Conn::Redis(c) => c.read_counter(counter).await,
            Conn::Pg(c) => c.read_counter(counter).await.map(|(value, _)| value),
            Conn::Floor(_) => Err(floor::only_locks()),
        }
    }

    pub async fn read_value(&mut self, key: &str) -> OpResult<Option<String>> {
        match self {
            Conn::Baton(c) => c.read_value(key).await,
            Conn::Etcd(c) => c.read_value(key).await,
            Conn::Redis(c) => c.read_value(key).await,
            Conn::Pg(c) => c.read_value(key).await,
            Conn::Floor(_) => Err(floor::only_locks()),
        }
    }

    /// Before a counter workload: PostgreSQL needs the row to exist.
    pub async fn prepare_counter(&mut self, counter: &str) -> OpResult<()> {
        match self {
            Conn::Pg(c) => c.prepare_counter(counter).await,
            _ => Ok(()),
        }
    }

    /// Gives back what the connection holds server-side (etcd's lease).
    pub async fn close(self) {
        if let Conn::Etcd(c) = self {
            c.close().await;
        }
    }
}

/// The systems by their names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemName {
    Baton,
    Etcd,
    RedisAlways,
    RedisEverysec,
    Postgres,
    FloorSdk,
    FloorRaw,
    FloorAxumSdk,
    FloorAxumRaw,
}

impl FromStr for SystemName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "baton" => SystemName::Baton,
            "etcd" => SystemName::Etcd,
            "redis-always" => SystemName::RedisAlways,
            "redis-everysec" => SystemName::RedisEverysec,
            "postgres" => SystemName::Postgres,
            "floor-sdk" => SystemName::FloorSdk,
            "floor-raw" => SystemName::FloorRaw,
            "floor-axum-sdk" => SystemName::FloorAxumSdk,
            "floor-axum-raw" => SystemName::FloorAxumRaw,
            other => {
                return Err(format!(
                    "unknown system {other:?}: use baton, etcd, redis-always, redis-everysec, postgres, floor-sdk, floor-raw, floor-axum-sdk or floor-axum-raw"
                ));
            }
        })
    }
}

/// FNV-1a: a stable 64-bit id for a string (PostgreSQL advisory lock ids).
pub fn stable_id(text: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// A small xorshift generator for retry jitter: no dependency needed.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A duration uniformly in [mean/2, 3·mean/2).
    pub fn around(&mut self, mean: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let micros = mean.as_micros() as u64;
        let half = micros / 2;
        Duration::from_micros(half + self.0 % micros.max(1))
    }
}
