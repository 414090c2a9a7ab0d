//! The four workloads (and the atomic-add variant of the counter), driven the
//! same way for every system: N clients, each with its own connection, run
//! one operation after another until the deadline; an operation started
//! before the deadline may finish after it (a queued lock waiter), but
//! never after the hard deadline. Then the correctness check of the
//! workload runs against the system's own state.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{Latency, Samples, jain};
use crate::systems::{Conn, OpError, System};

/// Operations per client at most, whatever the duration: a bound on every
/// load loop.
pub const MAX_OPS_PER_CLIENT: u64 = 10_000_000;
/// A client that has failed this often stops early (the cell reports it).
pub const MAX_ERRORS_PER_CLIENT: u64 = 100;
/// Keys each client cycles through in kv-put.
pub const KEYS_PER_CLIENT: u64 = 1000;
/// Bytes of every kv-put value.
pub const VALUE_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    LockUncontended,
    LockContended,
    CasCounter,
    CounterAdd,
    KvPut,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::LockUncontended,
        Workload::LockContended,
        Workload::CasCounter,
        Workload::CounterAdd,
        Workload::KvPut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::LockUncontended => "lock-uncontended",
            Workload::LockContended => "lock-contended",
            Workload::CasCounter => "cas-counter",
            Workload::CounterAdd => "counter-add",
            Workload::KvPut => "kv-put",
        }
    }

    /// What one completed operation is.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::LockUncontended => "acquire+release/s",
            Workload::LockContended => "critical sections/s",
            Workload::CasCounter => "successful increments/s",
            Workload::CounterAdd => "atomic adds/s",
            Workload::KvPut => "puts/s",
        }
    }

    /// What the latency columns time.
    pub fn latency_of(self) -> &'static str {
        match self {
            Workload::LockUncontended => "acquire + release",
            Workload::LockContended => "acquire (wait included)",
            Workload::CasCounter => "increment (retries included)",
            Workload::CounterAdd => "add",
            Workload::KvPut => "put",
        }
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!("unknown workload {s:?}: use lock-uncontended, lock-contended, cas-counter, counter-add or kv-put")
            })
    }
}

/// The keys of one cell (system × workload × client count): fresh for every
/// cell, so no cell sees another's state.
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(run_id: u64, workload: Workload, clients: usize) -> Keys {
        Keys {
            prefix: format!("bench/r{run_id}-{}-c{clients}", workload.name()),
        }
    }
    fn own_lock(&self, client: usize) -> String {
        format!("{}/lock-{client}", self.prefix)
    }
    fn shared_lock(&self) -> String {
        format!("{}/lock", self.prefix)
    }
    fn counter(&self) -> String {
        format!("{}/counter", self.prefix)
    }
    fn kv(&self, client: usize, seq: u64) -> String {
        format!("{}/kv-{client}-{}", self.prefix, seq % KEYS_PER_CLIENT)
    }
}

/// A 256-byte value that says who wrote it and when.
pub fn value_text(client: usize, seq: u64) -> String {
    let mut text = format!("client {client} write {seq} ");
    text.extend(std::iter::repeat_n(
        'x',
        VALUE_BYTES.saturating_sub(text.len()),
    ));
    text
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub duration: Duration,
    /// How long past the deadline in-flight operations may run.
    pub grace: Duration,
}

/// Did the system end in the state the completed operations imply?
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub passed: bool,
    pub detail: String,
}

/// One cell of the table.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub system: String,
    pub workload: Workload,
    pub clients: usize,
    pub durable: bool,
    pub elapsed_s: f64,
    pub completed: u64,
    pub throughput: f64,
    pub latency: Latency,
    /// Jain's index over per-client completions.
    pub fairness: f64,
    pub per_client_min: u64,
    pub per_client_max: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub check: Check,
    /// The disk's fdatasync latency just before this cell (median, ms):
    /// every durable figure here moves with it.
    pub disk_fsync_ms: f64,
    /// The same, just after the cell.
    pub disk_fsync_after_ms: f64,
    /// How long the cell waited for a quiet disk (`--quiet-disk-ms`).
    pub quiet_wait_s: f64,
    /// Throughput of every round; the cell shown is the median round.
    pub round_throughputs: Vec<f64>,
    /// CPU time per completed operation (user + system, µs): the server's
    /// process (when its pid was given) and the load generator's own.
    /// On a machine the two share, throughput is what these add up to.
    pub cpu: Option<CpuPerOp>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerOp {
    pub server_us: Option<f64>,
    pub client_us: f64,
}

#[derive(Default)]
struct WorkerStats {
    completed: u64,
    samples: Samples,
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
    /// The last kv-put of this client: (key, value).
    last_put: Option<(String, String)>,
}

impl WorkerStats {
    fn failed(&mut self, error: &OpError) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

/// What the clients of one cell share.
struct Shared {
    keys: Keys,
    workload: Workload,
    deadline: Instant,
    hard_deadline: Instant,
    /// Set while a client is inside the contended lock: finding it already
    /// set means two clients were inside at once.
    inside: AtomicBool,
    violations: AtomicU64,
}

/// What one completed operation reports.
struct Done {
    latency: Duration,
    conflicts: u64,
}

async fn one_op(
    conn: &mut Conn,
    client: usize,
    seq: u64,
    shared: &Shared,
) -> Result<Done, OpError> {
    let started = Instant::now();
    let max_wait = shared.hard_deadline.saturating_duration_since(started);
    match shared.workload {
        Workload::LockUncontended => {
            let key = shared.keys.own_lock(client);
            let held = conn.acquire(&key, max_wait).await?;
            conn.release(&key, held).await?;
            Ok(Done {
                latency: started.elapsed(),
                conflicts: 0,
            })
        }
        Workload::LockContended => {
            let key = shared.keys.shared_lock();
            let counter = shared.keys.counter();
            let held = conn.acquire_guarding(&key, &counter, max_wait).await?;
            let acquired = started.elapsed();
            if shared.inside.swap(true, Ordering::SeqCst) {
                shared.violations.fetch_add(1, Ordering::SeqCst);
            }
            // Baton's write releases the lock and grants the next holder in
            // one commit, so the section is left before that write is sent.
            conn.increment_and_release(&key, held, &counter, || {
                shared.inside.store(false, Ordering::SeqCst)
            })
            .await?;
            Ok(Done {
                latency: acquired,
                conflicts: 0,
            })
        }
        Workload::CasCounter => {
            let conflicts = conn.cas_increment(&shared.keys.counter()).await?;
            Ok(Done {
                latency: started.elapsed(),
                conflicts,
            })
        }
        Workload::CounterAdd => {
            conn.atomic_add(&shared.keys.counter()).await?;
            Ok(Done {
                latency: started.elapsed(),
                conflicts: 0,
            })
        }
        Workload::KvPut => {
            let key = shared.keys.kv(client, seq);
            conn.put(&key, &value_text(client, seq)).await?;
            Ok(Done {
                latency: started.elapsed(),
                conflicts: 0,
            })
        }
    }
}

async fn worker(mut conn: Conn, client: usize, shared: Arc<Shared>) -> (Conn, WorkerStats) {
    let mut stats = WorkerStats::default();
    let mut seq = 0u64;
    while Instant::now() < shared.deadline && seq < MAX_OPS_PER_CLIENT {
        seq += 1;
        let op = one_op(&mut conn, client, seq, &shared);
        match tokio::time::timeout_at(shared.hard_deadline.into(), op).await {
            Ok(Ok(done)) => {
                stats.completed += 1;
                stats.conflicts += done.conflicts;
                stats.samples.record(done.latency);
                if shared.workload == Workload::KvPut {
                    stats.last_put = Some((shared.keys.kv(client, seq), value_text(client, seq)));
                }
            }
            Ok(Err(error)) => {
                stats.failed(&error);
                if stats.errors >= MAX_ERRORS_PER_CLIENT {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                stats.failed(&OpError(
                    "an operation was still running at the hard deadline".into(),
                ));
                break;
            }
        }
    }
    (conn, stats)
}

/// Runs one workload with `clients` clients against `system`.
pub async fn run_cell(
    system: &System,
    workload: Workload,
    clients: usize,
    settings: Settings,
    run_id: u64,
    disk_fsync_ms: f64,
) -> anyhow::Result<CellResult> {
    let keys = Keys::new(run_id, workload, clients);
    let connects = (0..clients).map(|client| system.connect(client));
    let mut conns = futures_util::future::try_join_all(connects).await?;
    if matches!(
        workload,
        Workload::CasCounter | Workload::CounterAdd | Workload::LockContended
    ) {
        conns[0]
            .prepare_counter(&keys.counter())
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the counter: {e}"))?;
    }

    let started = Instant::now();
    let deadline = started + settings.duration;
    let shared = Arc::new(Shared {
        keys,
        workload,
        deadline,
        hard_deadline: deadline + settings.grace,
        inside: AtomicBool::new(false),
        violations: AtomicU64::new(0),
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(client, conn)| tokio::spawn(worker(conn, client, shared.clone())))
        .collect();
    let mut conns = Vec::with_capacity(clients);
    let mut stats = Vec::with_capacity(clients);
    for task in tasks {
        let (conn, worker_stats) = task.await?;
        conns.push(conn);
        stats.push(worker_stats);
    }
    let elapsed = started.elapsed();

    let completions: Vec<u64> = stats.iter().map(|s| s.completed).collect();
    let completed: u64 = completions.iter().sum();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let conflicts: u64 = stats.iter().map(|s| s.conflicts).sum();
    let first_error = stats.iter().find_map(|s| s.first_error.clone());
    let last_puts: Vec<(String, String)> =
        stats.iter_mut().filter_map(|s| s.last_put.take()).collect();
    let latency = Samples::merge(stats.into_iter().map(|s| s.samples)).summary();

    let check = check(&mut conns[0], &shared, completed, errors, &last_puts).await;
    for conn in conns {
        conn.close().await;
    }
    Ok(CellResult {
        system: system.name().to_string(),
        workload,
        clients,
        durable: system.durable(),
        elapsed_s: elapsed.as_secs_f64(),
        completed,
        throughput: completed as f64 / elapsed.as_secs_f64(),
        latency,
        fairness: jain(&completions),
        per_client_min: completions.iter().copied().min().unwrap_or(0),
        per_client_max: completions.iter().copied().max().unwrap_or(0),
        conflicts,
        errors,
        first_error,
        check,
        disk_fsync_ms,
        disk_fsync_after_ms: 0.0,
        quiet_wait_s: 0.0,
        round_throughputs: Vec::new(),
        cpu: None,
    })
}

/// The median-throughput round of each cell, carrying every round's
/// throughput; a check that failed in any round fails the cell.
pub fn median_rounds(mut rounds: Vec<CellResult>) -> Option<CellResult> {
    rounds.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let throughputs: Vec<f64> = rounds.iter().map(|c| c.throughput).collect();
    let failed = rounds
        .iter()
        .find(|c| !c.check.passed)
        .map(|c| c.check.clone());
    let middle = rounds.len() / 2;
    let mut cell = rounds.into_iter().nth(middle)?;
    cell.round_throughputs = throughputs;
    if let Some(check) = failed {
        cell.check = check;
    }
    Some(cell)
}

async fn check(
    conn: &mut Conn,
    shared: &Shared,
    completed: u64,
    errors: u64,
    last_puts: &[(String, String)],
) -> Check {
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} operations failed"));
    }
    if completed == 0 {
        problems.push("nothing completed".to_string());
    }
    let mut facts = Vec::new();
    match shared.workload {
        Workload::LockUncontended => facts.push("every acquire and release succeeded".to_string()),
        Workload::LockContended | Workload::CasCounter | Workload::CounterAdd => {
            let violations = shared.violations.load(Ordering::SeqCst);
            if violations > 0 {
                problems.push(format!(
                    "{violations} times two clients were inside the lock at once"
                ));
            }
            match conn.read_counter(&shared.keys.counter()).await {
                Ok(value) if value == completed as i64 => {
                    facts.push(format!("counter = {value} = completed"));
                }
                Ok(value) => problems.push(format!(
                    "counter = {value} but {completed} increments completed"
                )),
                Err(error) => problems.push(format!("cannot read the counter: {error}")),
            }
        }
        Workload::KvPut => {
            let mut matching = 0;
            for (key, expected) in last_puts {
                match conn.read_value(key).await {
                    Ok(Some(value)) if &value == expected => matching += 1,
                    Ok(found) => problems.push(format!(
                        "{key} holds {:?}, not the last value written",
                        found.map(|v| v.chars().take(24).collect::<String>())
                    )),
                    Err(error) => problems.push(format!("cannot read {key}: {error}")),
                }
            }
            facts.push(format!("last put of {matching} clients read back"));
        }
    }
    if problems.is_empty() {
        Check {
            passed: true,
            detail: facts.join("; "),
        }
    } else {
        Check {
            passed: false,
            detail: problems.join("; "),
        }
    }
}
