//! The workload driver: many real HTTP clients, each its own agent, doing a
//! random mix of operations on a few contended keys, recording each one as
//! the checker models see it.
//!
//! Keys and how their operations are recorded:
//! - `r/N` (register): get, put, put-if-version, put-if-absent, delete, merge
//!   patch and JSON patch (`add` at the root) of `{"v": "<unique>"}`, and a
//!   txn "compare version, put, else get". Every value has the one field
//!   `v`, so a patch's result is known and it is recorded as the put it is.
//! - `c/N` (bounded counter in [-20, 20]): add, and reads with their versions.
//! - `t/a`, `t/b` (counters changed only by txns): a transfer txn adds -d and
//!   +d all-or-nothing; a two-key txn read must always see them sum to 0.
//! - `l/N` with resource `p/N` (lock): acquire (at once or waiting), read the
//!   resource, write it fenced with the token, release; sometimes pause until
//!   the server says the lease expired and then write with the old fence
//!   (must be FENCED); sometimes write with a released token (must be FENCED).
//!
//! A request with no answer, or 503, is an unknown outcome. 85% of them (all
//! lock requests and releases) are
//! retried with the same `Idempotency-Key` once the server is back: the
//! recorded reply (or the first real application) then spans the original
//! invoke to the final return, which is still exactly one application.

use baton_check::Operation;
use baton_check::models::{
    CounterInput, CounterOutput, LockInput, LockOutput, RegisterInput, RegisterOutput,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::http::{Agent, Answer, Gate, Method};
use crate::recorder::{Recorder, WaitRecord};
use crate::rng::Rng;

/// Register keys `r/0..`.
pub const REGISTER_KEYS: usize = 3;
/// Bounded counter keys `c/0..`.
pub const COUNTER_KEYS: usize = 3;
/// Lock keys `l/0..`, each guarding resource `p/N`.
pub const LOCK_KEYS: usize = 3;
/// Bounds of the `c/N` counters.
pub const COUNTER_MIN: i64 = -20;
pub const COUNTER_MAX: i64 = 20;
/// The two counters a transfer txn moves between.
pub const TRANSFER_KEYS: [&str; 2] = ["t/a", "t/b"];
/// Most retries of an unknown outcome with its idempotency key.
const MAX_RETRIES: usize = 6;
/// Slop between the server's ms wall clock and the recorder's µs monotonic
/// clock when bounding when a lease could have ended.
const CLOCK_SLOP_US: u64 = 5_000;

pub fn register_key(i: usize) -> String {
    format!("r/{i}")
}
pub fn counter_key(i: usize) -> String {
    format!("c/{i}")
}
pub fn lock_key(i: usize) -> String {
    format!("l/{i}")
}
pub fn resource_key(i: usize) -> String {
    format!("p/{i}")
}

/// The size and mix of one workload run.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    pub ops_per_client: usize,
    pub run_time: Duration,
    pub seed: u64,
    /// Client ids start here (distinct ids across runs of one test).
    pub first_client: u64,
    /// Lease of every lock the clients take.
    pub lock_ttl_ms: u64,
    /// Longest `wait_ms` a lock request asks for.
    pub max_wait_ms: u64,
    /// How late a waiter's answer may come after its deadline.
    pub waiter_slack_ms: u64,
    /// Per-request timeout on top of any lock wait.
    pub request_timeout: Duration,
    /// Percent of unknown outcomes retried with the same idempotency key.
    pub retry_percent: u64,
    /// Percent of lock-holding steps that pause until the lease is lost.
    pub pause_percent: u64,
}

impl WorkloadConfig {
    pub fn new(clients: usize, ops_per_client: usize, run_time: Duration, seed: u64) -> Self {
        WorkloadConfig {
            clients,
            ops_per_client,
            run_time,
            seed,
            first_client: 1,
            lock_ttl_ms: 1000,
            max_wait_ms: 800,
            waiter_slack_ms: 5000,
            request_timeout: Duration::from_secs(10),
            retry_percent: 85,
            pause_percent: 4,
        }
    }
}

/// Runs the clients until each has done its operations or the run time is
/// up. Requests wait at `gate` while the server is down.
pub async fn run(config: &WorkloadConfig, gate: Arc<Gate>, recorder: Arc<Recorder>) {
    let config = Arc::new(config.clone());
    let deadline = Instant::now() + config.run_time;
    let mut tasks = Vec::new();
    for index in 0..config.clients {
        let id = config.first_client + index as u64;
        let client = Client {
            id,
            agent: Agent::new(format!("jepsen-{id}")),
            rng: Rng::new(config.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            config: config.clone(),
            gate: gate.clone(),
            recorder: recorder.clone(),
            deadline,
            sent: 0,
            versions: HashMap::new(),
            held: None,
            old_tokens: Vec::new(),
        };
        tasks.push(tokio::spawn(client.run()));
    }
    for task in tasks {
        if let Err(error) = task.await {
            recorder.anomaly("client panicked", error.to_string());
        }
    }
}

/// A lock this client holds (as far as it knows).
#[derive(Clone, Copy, Debug)]
struct Held {
    key: usize,
    lock_id: u64,
    token: u64,
    invoke_us: u64,
}

/// A fence that is surely no longer current: released by us, or its lease
/// was seen expired.
#[derive(Clone, Copy, Debug)]
struct OldToken {
    key: usize,
    token: u64,
}

/// How a held lock ended, as far as its holder knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockEnd {
    /// We released it (`released: true`).
    Released,
    /// Its lease had ended before this moment (the server said so).
    ExpiredBefore(u64),
    /// We do not know.
    Unseen,
}

/// A request's result: when it was sent, the final answer, when that came.
struct Sent {
    invoke_us: u64,
    answer: Answer,
    return_us: u64,
    attempts: usize,
}

impl Sent {
    fn unknown(&self) -> bool {
        self.answer.outcome_unknown()
    }
}

struct Client {
    id: u64,
    agent: Agent,
    rng: Rng,
    config: Arc<WorkloadConfig>,
    gate: Arc<Gate>,
    recorder: Arc<Recorder>,
    deadline: Instant,
    /// Requests sent: makes idempotency keys and values unique.
    sent: u64,
    /// The last version this client saw per key (for if_version).
    versions: HashMap<String, u64>,
    held: Option<Held>,
    old_tokens: Vec<OldToken>,
}

/// `{"v": "<text>"}` → the text.
fn register_value(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get("v")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Client {
    async fn run(mut self) {
        for _ in 0..self.config.ops_per_client {
            if Instant::now() >= self.deadline {
                break;
            }
            if self.held.is_some() {
                self.lock_step().await;
            } else {
                self.free_step().await;
            }
        }
        if let Some(held) = self.held.take() {
            self.release(held).await;
        }
    }

    fn unique(&mut self) -> String {
        self.sent += 1;
        format!("{}-{}", self.id, self.sent)
    }

    fn unexpected(&self, what: &str, answer: &Answer) {
        self.recorder.anomaly(
            "unexpected reply",
            format!("client {} {what}: {}", self.id, answer.describe()),
        );
    }

    /// Sends one request. Mutations carry an idempotency key; an unknown
    /// outcome is retried with it (sometimes) once the gate reopens. `None`
    /// if the request was never sent (the run ended while the server was down).
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        mutation: bool,
        timeout: Duration,
    ) -> Option<Sent> {
        let retry_percent = self.config.retry_percent;
        self.send_retrying(method, path, body, mutation, timeout, retry_percent)
            .await
    }

    /// [`Client::send`] with its own share of unknown outcomes retried.
    async fn send_retrying(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        mutation: bool,
        timeout: Duration,
        retry_percent: u64,
    ) -> Option<Sent> {
        let idempotency_key = mutation.then(|| format!("{}-k{}", self.agent.name, self.sent));
        self.sent += 1;
        let url = self.gate.url(self.deadline).await?;
        let invoke_us = self.recorder.now_us();
        let mut answer = self
            .agent
            .call(
                &url,
                method.clone(),
                path,
                body.as_ref(),
                idempotency_key.as_deref(),
                timeout,
            )
            .await;
        let mut attempts = 1;
        if mutation && answer.outcome_unknown() && self.rng.percent(retry_percent) {
            // Retries may run past the deadline (bounded): the injector keeps
            // the server up until every client is done.
            let retry_deadline = self.deadline + Duration::from_secs(20);
            while attempts <= MAX_RETRIES && answer.outcome_unknown() {
                if answer.status() == Some(503) {
                    // A fail-stopped node answers at once; give the injector a
                    // moment to restart it before the next try.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let Some(url) = self.gate.url(retry_deadline).await else {
                    break;
                };
                attempts += 1;
                answer = self
                    .agent
                    .call(
                        &url,
                        method.clone(),
                        path,
                        body.as_ref(),
                        idempotency_key.as_deref(),
                        timeout,
                    )
                    .await;
            }
        }
        Some(Sent {
            invoke_us,
            answer,
            return_us: self.recorder.now_us(),
            attempts,
        })
    }

    // ---- choosing ------------------------------------------------------------

    async fn free_step(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=9 => self.register_get().await,
            10..=14 => self.register_put().await,
            15..=22 => self.register_put_if_version().await,
            23..=25 => self.register_put_if_absent().await,
            26..=28 => self.register_delete().await,
            29..=32 => self.register_merge_patch().await,
            33..=35 => self.register_json_patch().await,
            36..=39 => self.register_txn_cas().await,
            40..=51 => self.counter_add().await,
            52..=59 => self.counter_read().await,
            60..=67 => self.transfer().await,
            68..=71 => self.transfer_read().await,
            72..=93 => self.lock_acquire().await,
            94..=96 => {
                let key = self.rng.below(LOCK_KEYS as u64) as usize;
                self.resource_read(key).await
            }
            _ => self.stale_write().await,
        }
    }

    async fn lock_step(&mut self) {
        let Some(held) = self.held else { return };
        let roll = self.rng.below(100);
        if roll < self.config.pause_percent {
            self.pause_past_lease(held).await;
        } else if roll < 35 {
            self.resource_read(held.key).await;
        } else if roll < 75 {
            self.fenced_write(held).await;
        } else {
            self.held = None;
            self.release(held).await;
        }
    }

    // ---- registers -----------------------------------------------------------

    fn pick_register(&mut self) -> String {
        register_key(self.rng.below(REGISTER_KEYS as u64) as usize)
    }

    /// An expected version: usually the last one seen, sometimes a stale or absent one.
    fn expected_version(&mut self, key: &str) -> u64 {
        let seen = self.versions.get(key).copied().unwrap_or(0);
        match self.rng.below(10) {
            0 => 0,
            1 => seen.saturating_sub(1 + self.rng.below(3)),
            _ => seen,
        }
    }

    fn record_register(
        &self,
        key: &str,
        sent: &Sent,
        input: RegisterInput,
        output: Option<RegisterOutput>,
    ) {
        let op = match output {
            Some(output) if !sent.unknown() => {
                Operation::returned(self.id, key, sent.invoke_us, sent.return_us, input, output)
            }
            _ => Operation::unknown(self.id, key, sent.invoke_us, input),
        };
        self.recorder.register(op);
    }

    /// A write's reply: Written with the version, or the conflict it reported.
    fn write_output(&mut self, key: &str, answer: &Answer, what: &str) -> Option<RegisterOutput> {
        if let Some(result) = answer.result() {
            let Some(version) = result["version"].as_u64() else {
                self.unexpected(what, answer);
                return None;
            };
            self.versions.insert(key.to_string(), version);
            self.recorder.acknowledged(key, version);
            return Some(RegisterOutput::Written { version });
        }
        match answer.code() {
            Some("CONCURRENT_MODIFICATION") => {
                let details = answer.details();
                let version = details["current_version"].as_u64();
                match version {
                    Some(0) => Some(RegisterOutput::Conflict { current: None }),
                    Some(version) => match register_value(&details["current_value"]) {
                        Some(value) => {
                            self.versions.insert(key.to_string(), version);
                            Some(RegisterOutput::Conflict {
                                current: Some((value, version)),
                            })
                        }
                        None => {
                            self.unexpected(what, answer);
                            None
                        }
                    },
                    None => {
                        self.unexpected(what, answer);
                        None
                    }
                }
            }
            _ => {
                if !answer.outcome_unknown() {
                    self.unexpected(what, answer);
                }
                None
            }
        }
    }

    async fn register_get(&mut self) {
        let key = self.pick_register();
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::GET, &format!("/v1/kv/{key}"), None, false, timeout)
            .await
        else {
            return;
        };
        let output = if let Some(result) = sent.answer.result() {
            match (register_value(&result["value"]), result["version"].as_u64()) {
                (Some(value), Some(version)) => {
                    self.versions.insert(key.clone(), version);
                    Some(RegisterOutput::Found { value, version })
                }
                _ => {
                    self.unexpected("get", &sent.answer);
                    None
                }
            }
        } else if sent.answer.code() == Some("NOT_FOUND") {
            Some(RegisterOutput::NotFound)
        } else {
            if !sent.unknown() {
                self.unexpected("get", &sent.answer);
            }
            None
        };
        self.record_register(&key, &sent, RegisterInput::Get, output);
    }

    async fn register_write(
        &mut self,
        key: String,
        method: Method,
        body: Value,
        input: RegisterInput,
        what: &str,
    ) {
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(method, &format!("/v1/kv/{key}"), Some(body), true, timeout)
            .await
        else {
            return;
        };
        let output = self.write_output(&key, &sent.answer, what);
        self.record_register(&key, &sent, input, output);
    }

    async fn register_put(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        let body = json!({ "value": { "v": value } });
        self.register_write(key, Method::PUT, body, RegisterInput::Put { value }, "put")
            .await;
    }

    async fn register_put_if_version(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        let expected = self.expected_version(&key);
        let body = json!({ "value": { "v": value }, "if_version": expected });
        let input = RegisterInput::PutIfVersion { value, expected };
        self.register_write(key, Method::PUT, body, input, "put if_version")
            .await;
    }

    async fn register_put_if_absent(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        let body = json!({ "value": { "v": value }, "if_absent": true });
        let input = RegisterInput::PutIfAbsent { value };
        self.register_write(key, Method::PUT, body, input, "put if_absent")
            .await;
    }

    /// A merge patch of `{"v": ..}` onto a value that is `{"v": ..}` or absent
    /// is exactly a put of `{"v": ..}`.
    async fn register_merge_patch(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        if self.rng.percent(50) {
            let expected = self.expected_version(&key);
            let body = json!({ "merge": { "v": value }, "if_version": expected });
            let input = RegisterInput::PutIfVersion { value, expected };
            self.register_write(key, Method::PATCH, body, input, "merge patch if_version")
                .await;
        } else {
            let body = json!({ "merge": { "v": value } });
            let input = RegisterInput::Put { value };
            self.register_write(key, Method::PATCH, body, input, "merge patch")
                .await;
        }
    }

    /// RFC 6902 `add` at the root replaces the whole document: a put.
    async fn register_json_patch(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        let body = json!({ "json_patch": [{ "op": "add", "path": "", "value": { "v": value } }] });
        let input = RegisterInput::Put { value };
        self.register_write(key, Method::PATCH, body, input, "json patch")
            .await;
    }

    /// `txn { compare version == e; success: put; failure: get }` is a
    /// put-if-version whose refusal reports the current value.
    async fn register_txn_cas(&mut self) {
        let key = self.pick_register();
        let value = self.unique();
        let expected = self.expected_version(&key);
        let body = json!({
            "compares": [{ "key": key, "version": expected }],
            "success": [{ "op": "put", "key": key, "value": { "v": value } }],
            "failure": [{ "op": "get", "key": key }],
        });
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::POST, "/v1/txn", Some(body), true, timeout)
            .await
        else {
            return;
        };
        let output = match sent.answer.result() {
            Some(result) => {
                let first = &result["results"][0];
                match (result["succeeded"].as_bool(), first["version"].as_u64()) {
                    (Some(true), Some(version)) => {
                        self.versions.insert(key.clone(), version);
                        self.recorder.acknowledged(&key, version);
                        Some(RegisterOutput::Written { version })
                    }
                    (Some(false), _) => {
                        let entry = &first["entry"];
                        if entry.is_null() {
                            Some(RegisterOutput::Conflict { current: None })
                        } else {
                            match (register_value(&entry["value"]), entry["version"].as_u64()) {
                                (Some(value), Some(version)) => {
                                    self.versions.insert(key.clone(), version);
                                    Some(RegisterOutput::Conflict {
                                        current: Some((value, version)),
                                    })
                                }
                                _ => {
                                    self.unexpected("txn cas", &sent.answer);
                                    None
                                }
                            }
                        }
                    }
                    _ => {
                        self.unexpected("txn cas", &sent.answer);
                        None
                    }
                }
            }
            None => {
                if !sent.unknown() {
                    self.unexpected("txn cas", &sent.answer);
                }
                None
            }
        };
        let input = RegisterInput::PutIfVersion { value, expected };
        self.record_register(&key, &sent, input, output);
    }

    async fn register_delete(&mut self) {
        let key = self.pick_register();
        self.recorder.deletable(&key);
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(
                Method::DELETE,
                &format!("/v1/kv/{key}"),
                None,
                true,
                timeout,
            )
            .await
        else {
            return;
        };
        let output = match sent.answer.result().map(|r| r["deleted"].as_bool()) {
            Some(Some(true)) => Some(RegisterOutput::Deleted),
            Some(Some(false)) => Some(RegisterOutput::NotFound),
            _ => {
                if !sent.unknown() {
                    self.unexpected("delete", &sent.answer);
                }
                None
            }
        };
        self.record_register(&key, &sent, RegisterInput::Delete, output);
    }

    // ---- counters ------------------------------------------------------------

    fn record_counter(
        &self,
        key: &str,
        sent: &Sent,
        input: CounterInput,
        output: Option<CounterOutput>,
    ) {
        let op = match output {
            Some(output) if !sent.unknown() => {
                Operation::returned(self.id, key, sent.invoke_us, sent.return_us, input, output)
            }
            _ => Operation::unknown(self.id, key, sent.invoke_us, input),
        };
        self.recorder.counter(op);
    }

    async fn counter_add(&mut self) {
        let key = counter_key(self.rng.below(COUNTER_KEYS as u64) as usize);
        let mut delta = self.rng.between(-4, 4);
        if delta == 0 {
            delta = 5;
        }
        let body = json!({ "key": key, "delta": delta, "min": COUNTER_MIN, "max": COUNTER_MAX });
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::POST, "/v1/counters/add", Some(body), true, timeout)
            .await
        else {
            return;
        };
        let output = if let Some(result) = sent.answer.result() {
            match (result["value"].as_i64(), result["version"].as_u64()) {
                (Some(value), Some(version)) => {
                    self.recorder.acknowledged(&key, version);
                    if !(COUNTER_MIN..=COUNTER_MAX).contains(&value) {
                        self.recorder.anomaly(
                            "counter out of bounds",
                            format!("{key} = {value} after adding {delta}"),
                        );
                    }
                    Some(CounterOutput::Value {
                        value,
                        version: Some(version),
                    })
                }
                _ => {
                    self.unexpected("counter add", &sent.answer);
                    None
                }
            }
        } else if sent.answer.code() == Some("QUOTA_EXCEEDED") {
            Some(CounterOutput::Refused)
        } else {
            if !sent.unknown() {
                self.unexpected("counter add", &sent.answer);
            }
            None
        };
        let input = CounterInput::Add {
            delta,
            min: Some(COUNTER_MIN),
            max: Some(COUNTER_MAX),
        };
        self.record_counter(&key, &sent, input, output);
    }

    async fn counter_read(&mut self) {
        let key = counter_key(self.rng.below(COUNTER_KEYS as u64) as usize);
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::GET, &format!("/v1/kv/{key}"), None, false, timeout)
            .await
        else {
            return;
        };
        let output = if let Some(result) = sent.answer.result() {
            match (result["value"].as_i64(), result["version"].as_u64()) {
                (Some(value), Some(version)) => Some(CounterOutput::Value {
                    value,
                    version: Some(version),
                }),
                _ => {
                    self.unexpected("counter read", &sent.answer);
                    None
                }
            }
        } else if sent.answer.code() == Some("NOT_FOUND") {
            Some(CounterOutput::Value {
                value: 0,
                version: Some(0),
            })
        } else {
            if !sent.unknown() {
                self.unexpected("counter read", &sent.answer);
            }
            None
        };
        self.record_counter(&key, &sent, CounterInput::Get, output);
    }

    /// Moves `d` from `t/a` to `t/b` in one txn.
    async fn transfer(&mut self) {
        let delta = self.rng.between(1, 5);
        let [from, to] = TRANSFER_KEYS;
        let body = json!({ "success": [
            { "op": "counter_add", "key": from, "delta": -delta },
            { "op": "counter_add", "key": to, "delta": delta },
        ]});
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::POST, "/v1/txn", Some(body), true, timeout)
            .await
        else {
            return;
        };
        let mut outputs = [None, None];
        if let Some(result) = sent.answer.result() {
            for (i, key) in TRANSFER_KEYS.iter().enumerate() {
                let item = &result["results"][i];
                match (item["value"].as_i64(), item["version"].as_u64()) {
                    (Some(value), Some(version)) if result["succeeded"] == true => {
                        self.recorder.acknowledged(key, version);
                        outputs[i] = Some(CounterOutput::Value {
                            value,
                            version: Some(version),
                        });
                    }
                    _ => self.unexpected("transfer txn", &sent.answer),
                }
            }
        } else if !sent.unknown() {
            self.unexpected("transfer txn", &sent.answer);
        }
        for (i, (key, output)) in TRANSFER_KEYS.iter().zip(outputs).enumerate() {
            let delta = if i == 0 { -delta } else { delta };
            let input = CounterInput::Add {
                delta,
                min: None,
                max: None,
            };
            self.record_counter(key, &sent, input, output);
        }
    }

    /// Reads both transfer counters in one txn: they must sum to 0.
    async fn transfer_read(&mut self) {
        let [a, b] = TRANSFER_KEYS;
        let body = json!({ "success": [{ "op": "get", "key": a }, { "op": "get", "key": b }] });
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send(Method::POST, "/v1/txn", Some(body), true, timeout)
            .await
        else {
            return;
        };
        let mut outputs = [None, None];
        if let Some(result) = sent.answer.result() {
            let mut sum = 0i64;
            let mut complete = true;
            for (i, output) in outputs.iter_mut().enumerate() {
                let entry = &result["results"][i]["entry"];
                let read = if entry.is_null() {
                    Some((0, 0))
                } else {
                    entry["value"].as_i64().zip(entry["version"].as_u64())
                };
                match read {
                    Some((value, version)) => {
                        sum += value;
                        *output = Some(CounterOutput::Value {
                            value,
                            version: Some(version),
                        });
                    }
                    None => complete = false,
                }
            }
            if !complete {
                self.unexpected("transfer read txn", &sent.answer);
            } else if sum != 0 {
                self.recorder.anomaly(
                    "txn not atomic",
                    format!(
                        "client {} read t/a + t/b = {sum} (must be 0): {}",
                        self.id,
                        sent.answer.describe()
                    ),
                );
            } else {
                self.recorder.atomic_read();
            }
        } else if !sent.unknown() {
            self.unexpected("transfer read txn", &sent.answer);
        }
        for (key, output) in TRANSFER_KEYS.iter().zip(outputs) {
            self.record_counter(key, &sent, CounterInput::Get, output);
        }
    }

    // ---- locks ---------------------------------------------------------------

    fn record_lock(&self, key: usize, sent: &Sent, input: LockInput, output: Option<LockOutput>) {
        let op = match output {
            Some(output) if !sent.unknown() => Operation::returned(
                self.id,
                lock_key(key),
                sent.invoke_us,
                sent.return_us,
                input,
                output,
            ),
            _ => Operation::unknown(self.id, lock_key(key), sent.invoke_us, input),
        };
        self.recorder.lock(op);
    }

    /// The earliest moment (recorder clock) a lease granted to a request
    /// invoked at `invoke_us` could end.
    fn lease_floor_us(&self, invoke_us: u64) -> u64 {
        (invoke_us + self.config.lock_ttl_ms * 1000).saturating_sub(CLOCK_SLOP_US)
    }

    /// Records how a lock we held ended, as far as we know: released by us
    /// (nothing to add: the release is in the history), seen ended by its
    /// lease before `Some(at)` (a returned `Expire`), or not seen (an unknown
    /// `Expire` that may happen any time after the lease could end).
    fn lock_done(&mut self, held: Held, end: LockEnd) {
        let input = LockInput::Expire {
            token: Some(held.token),
        };
        let floor = self.lease_floor_us(held.invoke_us);
        let expire = match end {
            LockEnd::Released => None,
            LockEnd::ExpiredBefore(at) => Some(Operation::returned(
                self.id,
                lock_key(held.key),
                floor.min(at),
                at,
                input,
                LockOutput::Released,
            )),
            LockEnd::Unseen => Some(Operation::unknown(
                self.id,
                lock_key(held.key),
                floor,
                input,
            )),
        };
        if let Some(expire) = expire {
            self.recorder.lock(expire);
        }
        if end != LockEnd::Unseen {
            self.old_tokens.push(OldToken {
                key: held.key,
                token: held.token,
            });
        }
    }

    async fn lock_acquire(&mut self) {
        let key = self.rng.below(LOCK_KEYS as u64) as usize;
        let wait_ms = match self.rng.below(3) {
            0 => 0,
            _ => self.rng.between(50, self.config.max_wait_ms as i64) as u64,
        };
        let body = json!({ "keys": [lock_key(key)], "ttl_ms": self.config.lock_ttl_ms, "wait_ms": wait_ms });
        let timeout = self.config.request_timeout + Duration::from_millis(wait_ms);
        // Always retried: an acquire whose outcome stays unknown may leave
        // an orphan holder, which makes the lock history expensive to check.
        let Some(sent) = self
            .send_retrying(Method::POST, "/v1/locks", Some(body), true, timeout, 100)
            .await
        else {
            return;
        };
        let answer = &sent.answer;
        let output = if let Some(result) = answer.result() {
            match (
                result["status"].as_str(),
                result["fence_token"].as_u64(),
                result["lock_id"].as_u64(),
            ) {
                (Some("held"), Some(token), Some(lock_id)) => {
                    self.held = Some(Held {
                        key,
                        lock_id,
                        token,
                        invoke_us: sent.invoke_us,
                    });
                    Some(LockOutput::Granted { token })
                }
                _ => {
                    self.unexpected("lock acquire", answer);
                    None
                }
            }
        } else {
            match answer.code() {
                // Held by someone else, or (after an acquire whose answer was
                // lost) by this very agent: either way the lock is held.
                Some("CONCURRENT_MODIFICATION" | "DEADLOCK") => Some(LockOutput::Busy),
                // A retry whose first attempt queued and has ended since
                // (the replay answers FENCED with how it ended): a wait that
                // timed out was refused while the lock was held, i.e. Busy;
                // a withdrawn one never took effect; otherwise it was granted
                // and ended since, with a token nobody saw: unknown.
                Some("FENCED") if sent.attempts > 1 => match answer.details()["status"].as_str() {
                    Some("timed_out") => Some(LockOutput::Busy),
                    Some("cancelled") => return,
                    _ => None,
                },
                _ => {
                    if !sent.unknown() {
                        self.unexpected("lock acquire", answer);
                    }
                    None
                }
            }
        };
        if wait_ms > 0 && !sent.unknown() && sent.attempts == 1 {
            self.check_wait(key, &sent, wait_ms);
        }
        // A grant nobody saw may end by its lease from then on. (A grant we
        // saw gets its end recorded when we are done with it: `lock_done`.)
        if output.is_none() {
            let expire = Operation::unknown(
                self.id,
                lock_key(key),
                self.lease_floor_us(sent.invoke_us),
                LockInput::Expire { token: None },
            );
            self.recorder.lock(expire);
        }
        self.record_lock(key, &sent, LockInput::Acquire, output);
    }

    /// A waiter is answered by its deadline (plus slack), and a "still held"
    /// answer does not come before the wait is over.
    fn check_wait(&self, key: usize, sent: &Sent, wait_ms: u64) {
        let elapsed_ms = (sent.return_us - sent.invoke_us) / 1000;
        let code = sent.answer.code().unwrap_or("granted").to_string();
        if elapsed_ms > wait_ms + self.config.waiter_slack_ms {
            self.recorder.anomaly(
                "waiter answered late",
                format!(
                    "client {} waited {elapsed_ms} ms for {} (wait_ms {wait_ms}, slack {} ms): {code}",
                    self.id,
                    lock_key(key),
                    self.config.waiter_slack_ms
                ),
            );
        }
        if code == "CONCURRENT_MODIFICATION" && elapsed_ms + 5 < wait_ms {
            self.recorder.anomaly(
                "waiter gave up early",
                format!(
                    "client {} was refused {} after {elapsed_ms} ms of a {wait_ms} ms wait: {}",
                    self.id,
                    lock_key(key),
                    sent.answer.describe()
                ),
            );
        }
        self.recorder.wait(WaitRecord {
            client: self.id,
            key: lock_key(key),
            invoke_us: sent.invoke_us,
            return_us: sent.return_us,
            wait_ms,
            outcome: code,
        });
    }

    async fn resource_read(&mut self, key: usize) {
        let timeout = self.config.request_timeout;
        let path = format!("/v1/kv/{}", resource_key(key));
        let Some(sent) = self.send(Method::GET, &path, None, false, timeout).await else {
            return;
        };
        let output = if let Some(result) = sent.answer.result() {
            match result["value"].as_str() {
                Some(value) => Some(LockOutput::Value(Some(value.to_string()))),
                None => {
                    self.unexpected("resource read", &sent.answer);
                    None
                }
            }
        } else if sent.answer.code() == Some("NOT_FOUND") {
            Some(LockOutput::Value(None))
        } else {
            if !sent.unknown() {
                self.unexpected("resource read", &sent.answer);
            }
            None
        };
        self.record_lock(key, &sent, LockInput::Read, output);
    }

    /// Writes the resource with `token` as the fence. Returns the output.
    async fn write_resource(
        &mut self,
        key: usize,
        token: u64,
    ) -> Option<(Sent, Option<LockOutput>)> {
        let value = self.unique();
        let body = json!({ "value": value, "fence": { "key": lock_key(key), "token": token } });
        let timeout = self.config.request_timeout;
        let path = format!("/v1/kv/{}", resource_key(key));
        let sent = self
            .send(Method::PUT, &path, Some(body), true, timeout)
            .await?;
        let output = if let Some(result) = sent.answer.result() {
            if let Some(version) = result["version"].as_u64() {
                self.recorder.acknowledged(&resource_key(key), version);
            }
            Some(LockOutput::Written)
        } else if sent.answer.code() == Some("FENCED") {
            Some(LockOutput::Fenced)
        } else {
            if !sent.unknown() {
                self.unexpected("fenced write", &sent.answer);
            }
            None
        };
        self.record_lock(
            key,
            &sent,
            LockInput::FencedWrite { token, value },
            output.clone(),
        );
        Some((sent, output))
    }

    async fn fenced_write(&mut self, held: Held) {
        if let Some((sent, Some(LockOutput::Fenced))) =
            self.write_resource(held.key, held.token).await
        {
            // Our lease ended (we were slow, or the server was down): stop
            // using this lock, as a real client must.
            self.held = None;
            self.lock_done(held, LockEnd::ExpiredBefore(sent.return_us));
        }
    }

    async fn release(&mut self, held: Held) {
        let path = format!("/v1/locks/{}", held.lock_id);
        let timeout = self.config.request_timeout;
        let Some(sent) = self
            .send_retrying(Method::DELETE, &path, None, true, timeout, 100)
            .await
        else {
            return self.lock_done(held, LockEnd::Unseen);
        };
        let output = match sent.answer.result().map(|r| r["released"].as_bool()) {
            Some(Some(true)) => Some(LockOutput::Released),
            Some(Some(false)) => Some(LockOutput::NotHolder),
            _ => {
                if !sent.unknown() {
                    self.unexpected("release", &sent.answer);
                }
                None
            }
        };
        let end = match output {
            _ if sent.unknown() => LockEnd::Unseen,
            Some(LockOutput::Released) => LockEnd::Released,
            // We did not release it: only its lease could have ended it.
            Some(LockOutput::NotHolder) => LockEnd::ExpiredBefore(sent.return_us),
            _ => LockEnd::Unseen,
        };
        self.lock_done(held, end);
        let input = LockInput::Release { token: held.token };
        self.record_lock(held.key, &sent, input, output);
    }

    /// A write with a fence that is surely not current must be FENCED.
    async fn stale_write(&mut self) {
        if self.old_tokens.is_empty() {
            return self.resource_read(0).await;
        }
        let old = *self.rng.pick(&self.old_tokens);
        if let Some((sent, output)) = self.write_resource(old.key, old.token).await {
            match output {
                Some(LockOutput::Fenced) => self.recorder.stale_write_fenced(),
                Some(LockOutput::Written) => self.recorder.anomaly(
                    "stale fence accepted",
                    format!(
                        "client {} wrote {} with token {} after releasing it or seeing its lease end: {}",
                        self.id,
                        resource_key(old.key),
                        old.token,
                        sent.answer.describe()
                    ),
                ),
                _ => {}
            }
        }
    }

    /// The paused client: stop, wait (bounded) until the server says the
    /// lease expired, then write with the old fence: it must be FENCED.
    async fn pause_past_lease(&mut self, held: Held) {
        self.held = None;
        let limit = Instant::now()
            + Duration::from_millis(self.config.lock_ttl_ms)
            + Duration::from_secs(10);
        let path = format!("/v1/locks/{}", held.lock_id);
        let mut seen = None;
        while Instant::now() < limit {
            let Some(url) = self.gate.url(limit).await else {
                break;
            };
            let answer = self.agent.get(&url, &path, Duration::from_secs(2)).await;
            let status = answer
                .result()
                .and_then(|r| r["status"].as_str())
                .map(str::to_string);
            match status.as_deref() {
                Some("held") | None => {}
                Some(other) => {
                    seen = Some((other.to_string(), self.recorder.now_us()));
                    break;
                }
            }
            // The lease runs on the server's clock: look again shortly.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let Some((status, seen_us)) = seen else {
            // Never confirmed (the server was down the whole time): drop it.
            return self.lock_done(held, LockEnd::Unseen);
        };
        if status != "expired" {
            self.recorder.anomaly(
                "lease ended oddly",
                format!(
                    "client {}'s lock {} on {} ended as {status:?} while it paused; only its TTL could end it",
                    self.id,
                    held.lock_id,
                    lock_key(held.key)
                ),
            );
            return self.lock_done(held, LockEnd::Unseen);
        }
        // The server said the lease is over: it ended between the earliest
        // moment it could and now.
        self.lock_done(held, LockEnd::ExpiredBefore(seen_us));
        if let Some((sent, output)) = self.write_resource(held.key, held.token).await {
            match output {
                Some(LockOutput::Fenced) => self.recorder.stale_write_fenced(),
                Some(LockOutput::Written) => self.recorder.anomaly(
                    "paused client not fenced",
                    format!(
                        "client {} paused past its lease on {} (token {}), the server said it expired, and its write was accepted: {}",
                        self.id,
                        lock_key(held.key),
                        held.token,
                        sent.answer.describe()
                    ),
                ),
                _ => {}
            }
        }
    }
}
