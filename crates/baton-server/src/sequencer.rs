//! The sequencer: one writer thread that owns the Log and the state machine.
//!
//! Loop: take every command that arrived while the last batch was being
//! written (up to `max_batch`), stamp them with one time, append them to the
//! log in one durable write (group commit), apply them in seq order, then
//! answer. A lock request that queues is answered when a later command grants
//! or fails it (a wakeup). When nothing arrives, the thread sleeps until the
//! core's next deadline and appends a Tick then.
//!
//! Storage failure is fail-stop: the batch is answered UNAVAILABLE, every
//! later write too, and `readyz` turns 503; a restart recovers from the log.

use baton_core::{Command, Error, ErrorCode, Limits, Op, Reply, StateMachine};
use baton_log::{Log, Snapshot, SnapshotStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

use crate::ServeConfig;
use crate::events::EventLog;
use crate::metrics_names as m;

/// The most encoded bytes one commit (one log frame) holds when it holds
/// more than one command: a larger batch is committed in parts.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How often the writer looks for waiters whose HTTP client went away, while
/// any wait is pending.
const DISCONNECT_SCAN_INTERVAL: Duration = Duration::from_millis(50);
/// How long a wait recovered from the log (its caller went with the
/// previous process) waits for a retry with its idempotency key to join it
/// before it is withdrawn. A client's retry after a restart comes well
/// within this.
const RECOVERED_WAIT_REJOIN: Duration = Duration::from_secs(10);
/// How long a batch made only of lock requests that will queue waits for
/// another command to share its commit. Short next to a lease, and the
/// requests' wait deadlines are stamped after it.
const QUEUEING_BATCH_HOLD: Duration = Duration::from_millis(1);
/// How often an idle writer checks whether a background snapshot finished.
const SNAPSHOT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Entries read per chunk when replaying the log at startup.
const REPLAY_CHUNK: usize = 8192;

/// The log written since the last snapshot, in commands and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SinceSnapshot {
    commands: u64,
    log_bytes: u64,
}

impl SinceSnapshot {
    fn add(&mut self, commands: u64, log_bytes: u64) {
        self.commands += commands;
        self.log_bytes += log_bytes;
    }

    /// What is left once a snapshot that covered `covered` is saved.
    fn minus(self, covered: SinceSnapshot) -> SinceSnapshot {
        SinceSnapshot {
            commands: self.commands.saturating_sub(covered.commands),
            log_bytes: self.log_bytes.saturating_sub(covered.log_bytes),
        }
    }

    /// Whether the log has earned a snapshot, the count or the clock aside.
    /// A snapshot costs its whole size to encode and write, so it waits
    /// until the log it replaces is at least as large (what Redis's
    /// `auto-aof-rewrite-percentage 100` does): with a large state and a
    /// small write rate, snapshots every N commands would rewrite the state
    /// over and over to save the replay of a little log. This keeps the
    /// cost per byte written bounded, and a restart replays at most about
    /// one snapshot's worth of log.
    fn outweighs(self, last_snapshot_bytes: u64) -> bool {
        self.commands > 0 && self.log_bytes >= last_snapshot_bytes
    }
}

/// A log entry: the command and the time the sequencer stamped on it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogRecord<'a> {
    #[serde(rename = "t")]
    time: u64,
    #[serde(rename = "c", borrow)]
    command: std::borrow::Cow<'a, Command>,
}

/// The bytes of one log entry: `command` stamped with `time`.
pub fn encode_record(time: u64, command: &Command) -> Vec<u8> {
    serde_json::to_vec(&LogRecord {
        time,
        command: std::borrow::Cow::Borrowed(command),
    })
    .expect("commands serialize")
}

/// Batches of at most one command in a row after which the writer polls
/// for the next request instead of sleeping at once ([`Polling`]).
const LONE_BATCHES_BEFORE_POLLING: u32 = 4;

/// When the writer polls for its next request before it sleeps. A run of
/// batches of at most one command means one caller at a time: the CPU is
/// idle and the next command is a round trip away, so polling saves the
/// kernel wake-up on that caller's path (lock-uncontended and kv-put x1 ran
/// 8-33% faster). Larger batches mean several callers keep the cores busy:
/// a polling writer would take a core from the very handlers and clients
/// it waits for (lock-uncontended x64 ran ~12% slower polling after every
/// batch). Under load about a fifth of batches still hold one command,
/// hence a run of them rather than the last one.
#[derive(Debug)]
struct Polling {
    /// At most this long ([`crate::ServeConfig::writer_spin_us`]).
    configured: Duration,
    /// Batches in a row of at most one command.
    lone_batches: u32,
}

impl Polling {
    fn new(configured: Duration) -> Polling {
        Polling {
            configured,
            lone_batches: 0,
        }
    }

    fn written(&mut self, batch_len: usize) {
        self.lone_batches = if batch_len <= 1 {
            self.lone_batches.saturating_add(1)
        } else {
            0
        };
    }

    fn spin(&self) -> Duration {
        if self.lone_batches >= LONE_BATCHES_BEFORE_POLLING {
            self.configured
        } else {
            Duration::ZERO
        }
    }
}

/// The next request within `timeout`: polled for up to `spin` first, then
/// slept for (see [`crate::ServeConfig::writer_spin_us`]).
fn spin_then_recv<T>(
    requests: &Receiver<T>,
    timeout: Duration,
    spin: Duration,
) -> Result<T, RecvTimeoutError> {
    if !spin.is_zero() {
        let until = Instant::now() + spin.min(timeout);
        loop {
            match requests.try_recv() {
                Ok(request) => return Ok(request),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= until {
                break;
            }
            std::hint::spin_loop();
        }
    }
    requests.recv_timeout(timeout)
}

/// A command in a batch, with its caller (none for ticks and cancels).
type Batched = (Command, Option<(oneshot::Sender<Reply>, Instant)>);

enum Request {
    Command {
        command: Box<Command>,
        reply: oneshot::Sender<Reply>,
        received: Instant,
    },
    Shutdown(oneshot::Sender<()>),
}

/// What handlers share with the writer thread.
pub struct Shared {
    pub machine: RwLock<StateMachine>,
    pub events: EventLog,
    /// Why writes are refused, after a storage failure.
    pub failed: Mutex<Option<String>>,
    /// Where snapshots stand, as the writer last published it.
    pub snapshot: Mutex<SnapshotStatus>,
}

/// Snapshots as `/v1/status` shows them (Redis's `INFO persistence`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotStatus {
    /// The revision of the last snapshot saved or restored (0: none yet).
    pub revision: u64,
    /// That snapshot's size.
    pub bytes: u64,
    /// Whether one is being written now.
    pub in_progress: bool,
    /// Commands in the log since that snapshot.
    pub commands_since: u64,
    /// Bytes of log since that snapshot; the next waits until this is at
    /// least `bytes`.
    pub log_bytes_since: u64,
}

pub struct Sequencer {
    requests: SyncSender<Request>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

/// A queued lock request whose HTTP caller(s) wait for the outcome.
struct PendingWait {
    agent: String,
    callers: Vec<oneshot::Sender<Reply>>,
    since: Instant,
    namespace: String,
    cancelling: bool,
    /// A wait recovered from the log has no caller until a retry with its
    /// idempotency key joins it; it is withdrawn if none has by then.
    rejoin_until: Option<Instant>,
}

struct Writer {
    log: Box<dyn Log>,
    shared: Arc<Shared>,
    requests: Receiver<Request>,
    pending: HashMap<u64, PendingWait>,
    max_batch: usize,
    /// Whether and how long to poll for a request before sleeping.
    polling: Polling,
    snapshot_every_commands: u64,
    snapshot_every: Duration,
    since_snapshot: SinceSnapshot,
    /// The revision and size of the last snapshot saved or restored (0: none yet).
    last_snapshot_seq: u64,
    last_snapshot_bytes: u64,
    last_snapshot: Instant,
    /// Limits configured other than those the recovered state is under:
    /// logged as the first command, so a replay applies the commands before
    /// it under the old limits and those after under these.
    limits_change: Option<baton_core::Limits>,
    /// Saves snapshots off this thread, where the log can.
    snapshot_store: Option<Arc<dyn SnapshotStore>>,
    /// The snapshot being serialized and saved by another thread.
    snapshot_in_flight: Option<SnapshotJob>,
}

/// A snapshot being taken off the writer thread, from a copy of the state.
struct SnapshotJob {
    seq: u64,
    /// The log counted towards the next snapshot when this one started.
    covered: SinceSnapshot,
    started: Instant,
    /// The snapshot's size, or why it failed.
    thread: JoinHandle<Result<usize, String>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sequencer {
    /// Recover state from `log` (snapshot + replay) and start the writer.
    pub fn start(log: Box<dyn Log>, config: &ServeConfig) -> Result<Self, anyhow::Error> {
        let started = Instant::now();
        let (mut machine, snapshot_seq, snapshot_bytes) = match log.load_snapshot()? {
            Some(snapshot) => (
                StateMachine::restore(&snapshot.data, config.limits.clone())?,
                snapshot.seq,
                snapshot.data.len() as u64,
            ),
            // A log replayed from its start begins under the default limits;
            // a server configured otherwise logged its limits first.
            None => (StateMachine::new(Limits::default()), 0, 0),
        };
        let events = EventLog::new(
            config.event_buffer,
            config.event_buffer_bytes,
            config.watcher_lag,
            snapshot_seq + 1,
        );
        let mut next = snapshot_seq + 1;
        let mut replayed = SinceSnapshot::default();
        loop {
            let entries = log.read_from(next, REPLAY_CHUNK)?;
            let Some(last) = entries.last() else { break };
            next = last.seq + 1;
            for entry in &entries {
                let record: LogRecord = serde_json::from_slice(&entry.data).map_err(|e| {
                    anyhow::anyhow!(
                        "log entry {} is unreadable ({e}); if a newer Baton wrote it, run that version on this data directory",
                        entry.seq
                    )
                })?;
                let out = machine.apply(entry.seq, record.time, &record.command);
                events.push(entry.seq, out.events);
                replayed.add(1, entry.data.len() as u64);
            }
        }
        let replayed_commands = replayed.commands;
        tracing::info!(
            snapshot_seq,
            replayed = replayed_commands,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state recovered"
        );
        eprintln!(
            "baton: recovered revision {} (snapshot at {snapshot_seq}, {replayed_commands} commands replayed) in {} ms",
            machine.revision(),
            started.elapsed().as_millis()
        );
        // Waits in the recovered state lost their callers with the process
        // that stopped. Left alone, one would be granted to nobody (and
        // held while its session lives); a retry with its idempotency key
        // may still join it for a while.
        let rejoin_until = Instant::now() + RECOVERED_WAIT_REJOIN;
        let pending = machine
            .waiting_requests()
            .into_iter()
            .map(|(id, agent)| {
                let wait = PendingWait {
                    agent,
                    callers: Vec::new(),
                    since: Instant::now(),
                    namespace: String::new(),
                    cancelling: false,
                    rejoin_until: Some(rejoin_until),
                };
                (id, wait)
            })
            .collect();
        let limits_change = (machine.limits() != &config.limits).then(|| config.limits.clone());
        let shared = Arc::new(Shared {
            machine: RwLock::new(machine),
            events,
            failed: Mutex::new(None),
            snapshot: Mutex::new(SnapshotStatus::default()),
        });
        let (requests, receiver) = std::sync::mpsc::sync_channel(config.max_queued_commands.max(1));
        let snapshot_store = log.snapshot_store();
        let mut writer = Writer {
            log,
            snapshot_store,
            snapshot_in_flight: None,
            shared: shared.clone(),
            requests: receiver,
            pending,
            max_batch: config.max_batch.max(1),
            polling: Polling::new(Duration::from_micros(config.writer_spin_us)),
            snapshot_every_commands: config.snapshot_every_commands.max(1),
            snapshot_every: Duration::from_secs(config.snapshot_every_secs.max(1)),
            since_snapshot: replayed,
            last_snapshot_seq: snapshot_seq,
            last_snapshot_bytes: snapshot_bytes,
            last_snapshot: Instant::now(),
            limits_change,
        };
        writer.publish_snapshot_status();
        let thread = std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn(move || writer.run())?;
        Ok(Sequencer {
            requests,
            shared,
            thread: Mutex::new(Some(thread)),
            stop: Mutex::new(None),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn set_stop(&self, stop: tokio::sync::watch::Receiver<bool>) {
        *self.stop.lock().expect("stop lock") = Some(stop);
    }

    /// A receiver that turns true when the server is shutting down.
    pub(crate) fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.stop.lock().expect("stop lock").clone()
    }

    /// Submit a command; resolves when it is durable and applied (or, for a
    /// queued lock request, when it is granted or fails).
    pub async fn submit(&self, command: Command) -> Reply {
        if let Some(why) = self.shared.failed.lock().expect("failed lock").clone() {
            return Err(unavailable(&why));
        }
        let (reply, answer) = oneshot::channel();
        match self.requests.try_send(Request::Command {
            command: Box::new(command),
            reply,
            received: Instant::now(),
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "the server's write queue is full; nothing was applied; retry shortly",
                )
                .with_retry_after(100));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(unavailable("the writer has stopped"));
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("the writer stopped before answering")))
    }

    /// Stop the writer after it has drained its queue, then snapshot. Later
    /// submissions are answered UNAVAILABLE. Takes `&self`: a request task
    /// that still holds the sequencer (a connection being torn down) must not
    /// keep the shutdown snapshot from being taken.
    pub fn shutdown(&self) -> Result<(), anyhow::Error> {
        let (done, finished) = oneshot::channel();
        if self.requests.send(Request::Shutdown(done)).is_ok() {
            let _ = finished.blocking_recv();
        }
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        }
        Ok(())
    }
}

fn unavailable(why: &str) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!(
            "this node refuses writes: {why}; restart it once storage is healthy (acknowledged writes are safe)"
        ),
    )
}

impl Writer {
    fn run(&mut self) {
        if let Some(limits) = self.limits_change.take() {
            self.write_batch(vec![(Command::set_limits(limits), None)], now_ms());
        }
        loop {
            let timeout = self.sleep_budget();
            let first = match spin_then_recv(&self.requests, timeout, self.polling.spin()) {
                Ok(request) => Some(request),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Batched> = Vec::new();
            let mut shutdown = None;
            let mut push = |request: Request, batch: &mut Vec<_>| match request {
                Request::Command {
                    command,
                    reply,
                    received,
                } => batch.push((*command, Some((reply, received)))),
                Request::Shutdown(done) => shutdown = Some(done),
            };
            if let Some(request) = first {
                push(request, &mut batch);
                while batch.len() < self.max_batch {
                    match self.requests.try_recv() {
                        Ok(request) => push(request, &mut batch),
                        Err(_) => break,
                    }
                }
                // A batch of lock requests that will only queue answers
                // nobody now: let it wait a moment for a command that does
                // need its commit (the holder's release, usually), so the
                // two share one fdatasync instead of the queueing request
                // delaying the release by a whole commit. No polling here:
                // that command is a round trip or more away, and its client
                // needs the CPU to send it.
                if self.only_queueing(&batch)
                    && let Ok(request) = self.requests.recv_timeout(QUEUEING_BATCH_HOLD)
                {
                    push(request, &mut batch);
                    while batch.len() < self.max_batch {
                        match self.requests.try_recv() {
                            Ok(request) => push(request, &mut batch),
                            Err(_) => break,
                        }
                    }
                }
            }
            for cancel in self.disconnected_waiters() {
                batch.push((cancel, None));
            }
            let now = now_ms();
            let deadline_due = self
                .read_machine()
                .next_deadline()
                .is_some_and(|d| d <= now);
            if batch.is_empty() && deadline_due {
                batch.push((Command::tick(), None));
            }
            self.polling.written(batch.len());
            if !batch.is_empty() {
                self.write_batch(batch, now);
            }
            if let Some(done) = shutdown {
                self.drain_for_shutdown();
                self.finish_snapshot(true);
                self.snapshot_here();
                let _ = done.send(());
                return;
            }
            self.finish_snapshot(false);
            if self.since_snapshot.outweighs(self.last_snapshot_bytes)
                && (self.since_snapshot.commands >= self.snapshot_every_commands
                    || self.last_snapshot.elapsed() >= self.snapshot_every)
            {
                self.start_snapshot();
            }
            self.publish_snapshot_status();
        }
    }

    fn publish_snapshot_status(&self) {
        *self.shared.snapshot.lock().expect("snapshot status lock") = SnapshotStatus {
            revision: self.last_snapshot_seq,
            bytes: self.last_snapshot_bytes,
            in_progress: self.snapshot_in_flight.is_some(),
            commands_since: self.since_snapshot.commands,
            log_bytes_since: self.since_snapshot.log_bytes,
        };
    }

    /// Whether every command in `batch` is a lock request that will queue.
    fn only_queueing(&self, batch: &[Batched]) -> bool {
        let machine = self.read_machine();
        !batch.is_empty()
            && batch
                .iter()
                .all(|(command, _)| machine.likely_queues(command))
    }

    fn read_machine(&self) -> std::sync::RwLockReadGuard<'_, StateMachine> {
        self.shared.machine.read().expect("state lock")
    }

    /// Sleep until the next deadline, the next disconnect scan, or the snapshot timer.
    fn sleep_budget(&self) -> Duration {
        let now = now_ms();
        let mut budget = match self.read_machine().next_deadline() {
            Some(deadline) => Duration::from_millis(deadline.saturating_sub(now)),
            None => Duration::from_secs(3600),
        };
        if !self.pending.is_empty() {
            budget = budget.min(DISCONNECT_SCAN_INTERVAL);
        }
        if self.snapshot_in_flight.is_some() {
            // Collect it soon after it finishes, so the log is truncated.
            budget = budget.min(SNAPSHOT_POLL_INTERVAL);
        } else if self.since_snapshot.outweighs(self.last_snapshot_bytes) {
            // Until then only a write can make a snapshot due.
            budget = budget.min(
                self.snapshot_every
                    .saturating_sub(self.last_snapshot.elapsed()),
            );
        }
        budget
    }

    /// Waiting lock requests whose every caller has gone: withdraw them, so
    /// a client that disconnects while waiting leaves the queue.
    fn disconnected_waiters(&mut self) -> Vec<Command> {
        let mut cancels = Vec::new();
        for (lock_id, wait) in &mut self.pending {
            wait.callers.retain(|c| !c.is_closed());
            let rejoining = wait
                .rejoin_until
                .is_some_and(|until| Instant::now() < until);
            if wait.callers.is_empty() && !wait.cancelling && !rejoining {
                wait.cancelling = true;
                cancels.push(Command::new(
                    wait.agent.clone(),
                    Op::CancelWait { id: *lock_id },
                ));
            }
        }
        cancels
    }

    fn write_batch(&mut self, batch: Vec<Batched>, now: u64) {
        if let Some(why) = self.shared.failed.lock().expect("failed lock").clone() {
            for (_, caller) in batch {
                if let Some((reply, _)) = caller {
                    let _ = reply.send(Err(unavailable(&why)));
                }
            }
            return;
        }
        let entries: Vec<Vec<u8>> = batch
            .iter()
            .map(|(command, _)| encode_record(now, command))
            .collect();
        if batch.len() > 1 && entries.iter().map(Vec::len).sum::<usize>() > MAX_BATCH_BYTES {
            // Counted commands can still be large ones (4,096 bodies of 2 MB):
            // commit in halves, each its own frame, rather than one frame
            // holding them all again.
            drop(entries);
            let mut first = batch;
            let second = first.split_off(first.len() / 2);
            self.write_batch(first, now);
            self.write_batch(second, now);
            return;
        }
        let started = Instant::now();
        let appended = self.log.append(&entries);
        metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        let range = match appended {
            Ok(range) => range,
            Err(error) => {
                let why = format!("storage failed: {error}");
                tracing::error!(%error, "log append failed; refusing writes from now on (fail-stop)");
                eprintln!("baton: {why}; refusing writes until restarted");
                *self.shared.failed.lock().expect("failed lock") = Some(why.clone());
                let outcome_unknown = Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{why}; this write may or may not have been stored: read before retrying, or retry with the same idempotency key after a restart"
                    ),
                );
                for (_, caller) in batch {
                    if let Some((reply, _)) = caller {
                        let _ = reply.send(Err(outcome_unknown.clone()));
                    }
                }
                for (_, wait) in self.pending.drain() {
                    for caller in wait.callers {
                        let _ = caller.send(Err(unavailable(&why)));
                    }
                }
                return;
            }
        };
        debug_assert_eq!(range.clone().count(), batch.len());
        self.since_snapshot.add(
            batch.len() as u64,
            entries.iter().map(|e| e.len() as u64).sum(),
        );
        let mut outputs = Vec::with_capacity(batch.len());
        {
            let mut machine = self.shared.machine.write().expect("state lock");
            for (seq, (command, _)) in range.zip(batch.iter()) {
                outputs.push((seq, machine.apply(seq, now, command)));
            }
        }
        for ((seq, output), (command, caller)) in outputs.into_iter().zip(batch) {
            for event in &output.events {
                m::observe_event(event);
            }
            self.shared.events.push(seq, output.events);
            for wakeup in output.wakeups {
                if let Some(wait) = self.pending.remove(&wakeup.id) {
                    m::observe_wait(&wait.namespace, wait.since.elapsed(), &wakeup.reply);
                    for caller in wait.callers {
                        let _ = caller.send(wakeup.reply.clone());
                    }
                }
            }
            let Some((reply, received)) = caller else {
                continue;
            };
            match output.pending {
                // The request waits: its final reply comes as a wakeup.
                Some(id) => {
                    let namespace = command
                        .op
                        .keys()
                        .first()
                        .map(|k| baton_core::validate::namespace_of(k).to_string())
                        .unwrap_or_default();
                    let wait = self.pending.entry(id).or_insert_with(|| PendingWait {
                        agent: command.agent.clone(),
                        callers: Vec::new(),
                        since: received,
                        namespace,
                        cancelling: false,
                        rejoin_until: None,
                    });
                    wait.callers.push(reply);
                }
                None => {
                    let _ = reply.send(output.reply);
                }
            }
        }
    }

    /// Answer what is still queued, so no caller is left hanging at shutdown.
    fn drain_for_shutdown(&mut self) {
        let mut batch = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            if let Request::Command {
                command,
                reply,
                received,
            } = request
            {
                batch.push((*command, Some((reply, received))));
            }
        }
        if !batch.is_empty() {
            self.write_batch(batch, now_ms());
        }
        // Withdraw every wait in the log too: one kept in the state would be
        // granted after the restart to a caller told it was withdrawn.
        let waits: Vec<(u64, PendingWait)> = self.pending.drain().collect();
        let cancels = waits
            .iter()
            .map(|(id, wait)| {
                let cancel = Command::new(wait.agent.clone(), Op::CancelWait { id: *id });
                (cancel, None)
            })
            .collect::<Vec<Batched>>();
        if !cancels.is_empty() {
            self.write_batch(cancels, now_ms());
        }
        for (_, wait) in waits {
            for caller in wait.callers {
                let _ = caller.send(Err(Error::new(
                    ErrorCode::Unavailable,
                    "the server is shutting down; the request was withdrawn: retry once it is back",
                )));
            }
        }
    }

    /// Takes a snapshot: off this thread when the log has a snapshot store
    /// (only the copy of the state is made here), else right here.
    fn start_snapshot(&mut self) {
        if self.snapshot_in_flight.is_some() || self.snapshot_unwanted() {
            return;
        }
        let Some(store) = self.snapshot_store.clone() else {
            self.snapshot_here();
            return;
        };
        let started = Instant::now();
        // The state's maps are persistent: the clone shares their nodes and
        // takes microseconds whatever the state's size. Writes made while the
        // copy is encoding copy only the nodes they touch.
        let (seq, copy) = {
            let machine = self.read_machine();
            (machine.revision(), machine.clone())
        };
        metrics::histogram!(m::SNAPSHOT_COPY_SECONDS).record(started.elapsed().as_secs_f64());
        let thread = std::thread::Builder::new()
            .name("baton-snapshot".into())
            .spawn(move || {
                let data = copy.snapshot();
                let size = data.len();
                store
                    .save(&Snapshot { seq, data })
                    .map(|()| size)
                    .map_err(|e| e.to_string())
            });
        match thread {
            Ok(thread) => {
                self.snapshot_in_flight = Some(SnapshotJob {
                    seq,
                    covered: self.since_snapshot,
                    started,
                    thread,
                });
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the snapshot thread; snapshotting here");
                self.snapshot_here();
            }
        }
    }

    /// Collects a finished background snapshot (or waits for it when
    /// `wait`), then truncates the log up to it.
    fn finish_snapshot(&mut self, wait: bool) {
        let Some(job) = self.snapshot_in_flight.take() else {
            return;
        };
        if !wait && !job.thread.is_finished() {
            self.snapshot_in_flight = Some(job);
            return;
        }
        let saved = job
            .thread
            .join()
            .unwrap_or_else(|_| Err("the snapshot thread panicked".to_string()))
            .and_then(|size| {
                self.log
                    .truncate_before(job.seq + 1)
                    .map(|()| size)
                    .map_err(|e| e.to_string())
            });
        self.snapshot_done(job.seq, job.covered, job.started, saved);
    }

    fn snapshot_unwanted(&self) -> bool {
        self.shared.failed.lock().expect("failed lock").is_some()
            || self.since_snapshot.commands == 0
    }

    /// Serializes and saves a snapshot on this thread (at shutdown, and for
    /// logs without a snapshot store).
    fn snapshot_here(&mut self) {
        if self.snapshot_unwanted() {
            return;
        }
        let started = Instant::now();
        let (seq, data) = {
            let machine = self.read_machine();
            (machine.revision(), machine.snapshot())
        };
        let size = data.len();
        let saved = self
            .log
            .save_snapshot(&Snapshot { seq, data })
            .and_then(|()| self.log.truncate_before(seq + 1))
            .map(|()| size)
            .map_err(|e| e.to_string());
        self.snapshot_done(seq, self.since_snapshot, started, saved);
    }

    fn snapshot_done(
        &mut self,
        seq: u64,
        covered: SinceSnapshot,
        started: Instant,
        saved: Result<usize, String>,
    ) {
        self.last_snapshot = Instant::now();
        match saved {
            Ok(size) => {
                self.since_snapshot = self.since_snapshot.minus(covered);
                self.last_snapshot_seq = seq;
                self.last_snapshot_bytes = size as u64;
                metrics::histogram!(m::SNAPSHOT_SECONDS).record(started.elapsed().as_secs_f64());
                tracing::info!(
                    seq,
                    size,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot taken"
                );
            }
            Err(error) => {
                tracing::error!(%error, "snapshot failed; the log keeps growing until one succeeds");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn a_snapshot_is_earned_by_as_much_log_as_the_last_one_and_at_least_one_command() {
        let since = |commands, log_bytes| SinceSnapshot {
            commands,
            log_bytes,
        };
        // No snapshot yet: any command earns the first.
        assert!(since(1, 10).outweighs(0));
        assert!(!since(0, 0).outweighs(0));
        // After a 1 MB snapshot: a million small commands do not, 1 MB of log does.
        assert!(!since(1_000_000, 999_999).outweighs(1_000_000));
        assert!(since(3, 1_000_000).outweighs(1_000_000));

        // What a saved snapshot covered leaves what came after it.
        let mut now = since(0, 0);
        now.add(10, 500);
        now.add(5, 100);
        assert_eq!(now.minus(since(10, 500)), since(5, 100));
        assert_eq!(since(1, 1).minus(since(2, 2)), since(0, 0));
    }

    #[test]
    fn the_writer_polls_only_after_a_run_of_batches_of_one() {
        let configured = Duration::from_micros(100);
        let mut polling = Polling::new(configured);
        // A fresh writer sleeps: nothing says yet that it has a lone caller.
        assert_eq!(polling.spin(), Duration::ZERO);
        for _ in 1..LONE_BATCHES_BEFORE_POLLING {
            polling.written(1);
            assert_eq!(polling.spin(), Duration::ZERO);
        }
        // Empty wake-ups (deadline ticks) count as lone too.
        polling.written(0);
        assert_eq!(polling.spin(), configured);
        polling.written(1);
        assert_eq!(polling.spin(), configured);
        // One larger batch: callers are busy, the writer sleeps again.
        polling.written(2);
        assert_eq!(polling.spin(), Duration::ZERO);
        polling.written(1);
        assert_eq!(polling.spin(), Duration::ZERO);

        // Configured off: never polls.
        let mut off = Polling::new(Duration::ZERO);
        for _ in 0..2 * LONE_BATCHES_BEFORE_POLLING {
            off.written(1);
        }
        assert_eq!(off.spin(), Duration::ZERO);
    }

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_request_is_taken_whether_it_comes_while_polling_or_while_asleep() {
        for spin in [Duration::ZERO, Duration::from_micros(100), LONG] {
            let (send, requests) = sync_channel(1);
            let sender = std::thread::spawn(move || {
                send.send(7u32).unwrap();
                send
            });
            assert_eq!(
                spin_then_recv(&requests, LONG, spin),
                Ok(7),
                "spin {spin:?}"
            );
            drop(sender.join().unwrap());
            // The sender is gone: said at once, however long the poll.
            let started = Instant::now();
            assert_eq!(
                spin_then_recv(&requests, LONG, spin),
                Err(RecvTimeoutError::Disconnected)
            );
            assert!(started.elapsed() < LONG, "spin {spin:?}");
        }
    }

    #[test]
    fn the_poll_never_outlasts_the_timeout() {
        let (_send, requests) = sync_channel::<u32>(1);
        let started = Instant::now();
        let waited = spin_then_recv(&requests, Duration::from_millis(20), LONG);
        assert_eq!(waited, Err(RecvTimeoutError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(started.elapsed() < LONG);
    }

    /// A log over a shared [`MemLog`] (a second sequencer started on it is a
    /// restart) whose first append may wait for the test's go, and that
    /// records every append as (entries, bytes).
    #[derive(Default)]
    struct TestLog {
        inner: Arc<Mutex<baton_log::MemLog>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        appends: Arc<Mutex<Vec<(usize, usize)>>>,
    }

    impl TestLog {
        /// Another handle on the same log, as a restarted server opens it.
        fn reopen(&self) -> TestLog {
            TestLog {
                inner: self.inner.clone(),
                ..TestLog::default()
            }
        }
    }

    impl Log for TestLog {
        fn append(
            &mut self,
            batch: &[Vec<u8>],
        ) -> Result<std::ops::RangeInclusive<u64>, baton_log::LogError> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let bytes = batch.iter().map(Vec::len).sum();
            self.appends.lock().unwrap().push((batch.len(), bytes));
            self.inner.lock().unwrap().append(batch)
        }
        fn read_from(
            &self,
            from: u64,
            max: usize,
        ) -> Result<Vec<baton_log::Entry>, baton_log::LogError> {
            self.inner.lock().unwrap().read_from(from, max)
        }
        fn last_seq(&self) -> Result<u64, baton_log::LogError> {
            self.inner.lock().unwrap().last_seq()
        }
        fn first_seq(&self) -> Result<u64, baton_log::LogError> {
            self.inner.lock().unwrap().first_seq()
        }
        fn save_snapshot(
            &mut self,
            snapshot: &baton_log::Snapshot,
        ) -> Result<(), baton_log::LogError> {
            self.inner.lock().unwrap().save_snapshot(snapshot)
        }
        fn load_snapshot(&self) -> Result<Option<baton_log::Snapshot>, baton_log::LogError> {
            self.inner.lock().unwrap().load_snapshot()
        }
        fn truncate_before(&mut self, seq: u64) -> Result<(), baton_log::LogError> {
            self.inner.lock().unwrap().truncate_before(seq)
        }
    }

    fn acquire(agent: &str, ttl_ms: u64, wait_ms: u64) -> Command {
        Command::new(
            agent,
            Op::LockAcquire(baton_core::LockAcquire {
                keys: vec!["w/k".into()],
                mode: baton_core::LockMode::Exclusive,
                ttl_ms: Some(ttl_ms),
                wait_ms,
                lock_delay_ms: 0,
                read: false,
            }),
        )
    }

    /// Stops the sequencer off the runtime: shutdown blocks until the
    /// writer has stopped.
    fn stop(sequencer: Sequencer) {
        std::thread::spawn(move || sequencer.shutdown())
            .join()
            .unwrap()
            .unwrap();
    }

    /// A lock request still waiting, its caller still attached, when the
    /// writer drains for shutdown is answered UNAVAILABLE and withdrawn in
    /// the log: the restarted state holds no wait to grant to nobody.
    #[tokio::test]
    async fn a_wait_pending_at_shutdown_is_withdrawn_in_the_log() {
        let log = TestLog::default();
        let sequencer =
            Arc::new(Sequencer::start(Box::new(log.reopen()), &ServeConfig::default()).unwrap());
        sequencer
            .submit(acquire("holder", 60_000, 0))
            .await
            .unwrap();
        let mut waiting = Box::pin(sequencer.submit(acquire("waiter", 60_000, 60_000)));
        // Queued in the writer's channel ahead of the shutdown request.
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        let stopping = {
            let sequencer = sequencer.clone();
            std::thread::spawn(move || sequencer.shutdown())
        };
        let told = waiting.await.unwrap_err();
        assert_eq!(told.code, ErrorCode::Unavailable, "{told:?}");
        stopping.join().unwrap().unwrap();

        let restarted = Sequencer::start(Box::new(log.reopen()), &ServeConfig::default()).unwrap();
        let waits = restarted
            .shared()
            .machine
            .read()
            .unwrap()
            .waiting_requests();
        assert!(
            waits.is_empty(),
            "still queued after the restart: {waits:?}"
        );
        stop(restarted);
    }

    /// Commands queued behind a slow commit form one batch, whatever their
    /// size: 40 puts of 1 MB are committed in parts of at most
    /// MAX_BATCH_BYTES (a part of one command may be larger), all applied.
    #[tokio::test]
    async fn a_batch_of_large_commands_is_committed_in_parts() {
        let (go, gate) = sync_channel(1);
        let appends = Arc::new(Mutex::new(Vec::new()));
        let log = TestLog {
            gate: Some(gate),
            appends: appends.clone(),
            ..TestLog::default()
        };
        let sequencer = Sequencer::start(Box::new(log), &ServeConfig::default()).unwrap();
        let put = |key: String| {
            let value = serde_json::Value::String("x".repeat(1_000_000));
            Command::new(
                "a",
                Op::Put {
                    key,
                    value,
                    if_version: None,
                    if_absent: false,
                    ttl_ms: None,
                },
            )
        };
        let mut pending: Vec<_> = (0..41)
            .map(|i| Box::pin(sequencer.submit(put(format!("big/{i}")))))
            .collect();
        // The first poll queues each one: the first commit waits at the gate
        // while the rest line up behind it.
        for submit in &mut pending {
            assert!(futures_util::poll!(submit.as_mut()).is_pending());
        }
        go.send(()).unwrap();
        for submit in pending {
            submit.await.expect("applied");
        }
        let appends = appends.lock().unwrap().clone();
        assert_eq!(appends.iter().map(|(n, _)| n).sum::<usize>(), 41);
        for (entries, bytes) in &appends {
            assert!(*entries == 1 || *bytes <= MAX_BATCH_BYTES, "{appends:?}");
        }
        assert!(
            appends.len() >= 3,
            "40 MB in parts of at most 16 MB: {appends:?}"
        );
        stop(sequencer);
    }
}
