//! Measurements of Baton alone, on a server of their own (fresh state):
//! lock handoff latency, memory with many keys and sessions, watch delivery
//! latency with many watchers, restart time with a long log. Each is
//! bounded in count and in time.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_client::{Client, LockRequest, PutOptions, Txn};
use baton_core::TxnOp;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::stats::{Latency, Samples};
use crate::systems::LEASE;
use crate::workload::value_text;

/// Puts per txn when loading keys (the server allows 128 ops per txn).
const LOAD_TXN_OPS: usize = 100;
/// Concurrent loaders for keys and sessions.
const LOADERS: usize = 16;
/// Watchers opening their stream at once. A thousand connects in the same
/// millisecond overflow a loopback accept queue now and then, and a dropped
/// SYN is retried after 1 s, then 3 s: past the client's connect timeout.
/// Agents do not all arrive in one instant either.
const SUBSCRIBING_AT_ONCE: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Handoff {
    pub rounds: usize,
    /// From sending the holder's release to the waiter receiving its grant.
    pub handoff: Latency,
    /// The holder's release round trip, for comparison.
    pub release: Latency,
}

/// Lock handoff: a holder releases while a waiter is queued; how long until
/// the waiter holds the lock.
pub async fn handoff(
    url: &str,
    run_id: u64,
    rounds: usize,
    budget: Duration,
) -> anyhow::Result<Handoff> {
    let key = format!("bench/r{run_id}-handoff/lock");
    let mut holder = Client::new(url, "handoff-a")?;
    let mut waiter = Client::new(url, "handoff-b")?;
    let request = LockRequest::exclusive([key.as_str()]).ttl_ms(LEASE.as_millis() as u64);
    let mut held = holder.lock_acquire(&request).await?.lock_id;
    let mut handoffs = Samples::default();
    let mut releases = Samples::default();
    let until = Instant::now() + budget;
    let mut done = 0;
    while done < rounds && Instant::now() < until {
        let queued = request.clone().wait_ms(10_000);
        let next = waiter.clone();
        let grant = tokio::spawn(async move {
            let granted = next.lock_acquire(&queued).await;
            (Instant::now(), granted)
        });
        // Release only once the waiter is in the queue.
        let queue_deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if !holder.key_locks(&key).await?.waiters.is_empty() {
                break;
            }
            anyhow::ensure!(Instant::now() < queue_deadline, "the waiter never queued");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let released_at = Instant::now();
        holder.lock_release(held).await?;
        releases.record(released_at.elapsed());
        let (granted_at, granted) = grant.await?;
        held = granted?.lock_id;
        handoffs.record(granted_at - released_at);
        std::mem::swap(&mut holder, &mut waiter);
        done += 1;
    }
    holder.lock_release(held).await?;
    Ok(Handoff {
        rounds: done,
        handoff: handoffs.summary(),
        release: releases.summary(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub keys: u64,
    pub sessions: u64,
    pub value_bytes: usize,
    pub rss_start_mb: f64,
    pub rss_with_keys_mb: f64,
    pub rss_with_keys_and_sessions_mb: f64,
    pub peak_rss_mb: f64,
    pub bytes_per_key: f64,
    pub bytes_per_session: f64,
    pub load_seconds: f64,
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is that baton serve?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Loads `keys` keys (256-byte values) then opens `sessions` sessions, and
/// reads the server's RSS before, between and after.
pub async fn memory(
    url: &str,
    pid: u32,
    run_id: u64,
    keys: u64,
    sessions: u64,
) -> anyhow::Result<Memory> {
    let started = Instant::now();
    let (rss_start, _) = rss(pid)?;
    let mut loaders = Vec::new();
    for loader in 0..LOADERS as u64 {
        let client = Client::new(url, format!("loader-{loader}"))?;
        loaders.push(tokio::spawn(async move {
            let mut n = loader * LOAD_TXN_OPS as u64;
            while n < keys {
                let end = (n + LOAD_TXN_OPS as u64).min(keys);
                let success = (n..end)
                    .map(|i| TxnOp::Put {
                        key: format!("bench/r{run_id}-mem/key-{i}"),
                        value: Value::from(value_text(0, i)),
                        ttl_ms: None,
                    })
                    .collect();
                let txn = Txn {
                    compares: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                client.txn(&txn).await?;
                n += (LOADERS * LOAD_TXN_OPS) as u64;
            }
            anyhow::Ok(())
        }));
    }
    for loader in loaders {
        loader.await??;
    }
    let (rss_keys, _) = rss(pid)?;

    let mut openers = Vec::new();
    for opener in 0..LOADERS as u64 {
        let client = Client::new(url, format!("session-{opener}"))?;
        openers.push(tokio::spawn(async move {
            let mut n = opener;
            while n < sessions {
                client.session_open(10 * 60 * 1000).await?;
                n += LOADERS as u64;
            }
            anyhow::Ok(())
        }));
    }
    for opener in openers {
        opener.await??;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let (rss_all, peak) = rss(pid)?;
    let status = Client::new(url, "bench")?.status().await?;
    anyhow::ensure!(
        status.keys >= keys && status.sessions >= sessions,
        "the server reports {} keys and {} sessions, fewer than loaded",
        status.keys,
        status.sessions
    );
    Ok(Memory {
        keys,
        sessions,
        value_bytes: crate::workload::VALUE_BYTES,
        rss_start_mb: mb(rss_start),
        rss_with_keys_mb: mb(rss_keys),
        rss_with_keys_and_sessions_mb: mb(rss_all),
        peak_rss_mb: mb(peak),
        bytes_per_key: rss_keys.saturating_sub(rss_start) as f64 / keys.max(1) as f64,
        bytes_per_session: rss_all.saturating_sub(rss_keys) as f64 / sessions.max(1) as f64,
        load_seconds,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchDelivery {
    pub watchers: usize,
    pub events: usize,
    /// Deliveries seen / watchers × events.
    pub delivered_fraction: f64,
    /// Event received − put acknowledged, clamped at 0.
    pub after_ack: Latency,
    /// How many deliveries arrived before the writer had its ack.
    pub before_ack: u64,
    /// Event received − put sent.
    pub after_send: Latency,
    /// Per event, last watcher's receipt − first watcher's: the fan-out.
    pub fan_out: Latency,
}

/// `watchers` SSE watchers on one prefix; one writer puts `events` times,
/// `interval` apart; every (watcher, event) delivery is timed.
pub async fn watch(
    url: &str,
    run_id: u64,
    watchers: usize,
    events: usize,
    interval: Duration,
) -> anyhow::Result<WatchDelivery> {
    let prefix = format!("bench/r{run_id}-watch/");
    let key = format!("{prefix}key");
    let client = Client::new(url, "watcher")?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(watchers);
    let collect_for = interval * events as u32 + Duration::from_secs(15);
    let subscribing = std::sync::Arc::new(tokio::sync::Semaphore::new(SUBSCRIBING_AT_ONCE));
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let client = client.clone();
        let prefix = prefix.clone();
        let ready = ready_tx.clone();
        let subscribing = subscribing.clone();
        tasks.push(tokio::spawn(async move {
            let mut received = Vec::with_capacity(events);
            let permit = subscribing.acquire_owned().await;
            let stream = match client.watch(&prefix, None).await {
                Ok(stream) => stream,
                Err(error) => {
                    let _ = ready.send(Err(error.into())).await;
                    return received;
                }
            };
            drop(permit);
            let _ = ready.send(Ok(())).await;
            let mut stream = std::pin::pin!(stream);
            let give_up = tokio::time::Instant::now() + collect_for;
            while received.len() < events {
                match tokio::time::timeout_at(give_up, stream.next()).await {
                    Ok(Some(Ok(event))) => received.push((event.revision, Instant::now())),
                    _ => break,
                }
            }
            received
        }));
    }
    drop(ready_tx);
    let mut subscribed = 0;
    let ready_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while subscribed < watchers {
        match tokio::time::timeout_at(ready_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => subscribed += 1,
            Ok(Some(Err(error))) => {
                tasks.iter().for_each(|t| t.abort());
                return Err(error.context("a watcher could not subscribe"));
            }
            _ => {
                tasks.iter().for_each(|t| t.abort());
                anyhow::bail!("only {subscribed} of {watchers} watchers subscribed within 60 s");
            }
        }
    }
    // Let the server finish registering the last streams.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let writer = Client::new(url, "watch-writer")?;
    let mut sent: HashMap<u64, (Instant, Instant)> = HashMap::new();
    for i in 0..events {
        let sent_at = Instant::now();
        let written = writer
            .kv_put(&key, &Value::from(i as u64), PutOptions::default())
            .await?;
        sent.insert(written.version, (sent_at, Instant::now()));
        tokio::time::sleep(interval).await;
    }

    let mut after_ack = Samples::default();
    let mut after_send = Samples::default();
    let mut before_ack = 0;
    let mut delivered = 0u64;
    let mut spans: HashMap<u64, (Instant, Instant)> = HashMap::new();
    for task in tasks {
        for (revision, received_at) in task.await? {
            let Some(&(sent_at, acked_at)) = sent.get(&revision) else {
                continue;
            };
            delivered += 1;
            let span = spans.entry(revision).or_insert((received_at, received_at));
            span.0 = span.0.min(received_at);
            span.1 = span.1.max(received_at);
            after_send.record(received_at.saturating_duration_since(sent_at));
            if received_at < acked_at {
                before_ack += 1;
            }
            after_ack.record(received_at.saturating_duration_since(acked_at));
        }
    }
    Ok(WatchDelivery {
        watchers,
        events,
        delivered_fraction: delivered as f64 / (watchers * events).max(1) as f64,
        after_ack: after_ack.summary(),
        before_ack,
        after_send: after_send.summary(),
        fan_out: Samples::merge(spans.values().map(|&(first, last)| {
            let mut one = Samples::default();
            one.record(last - first);
            one
        }))
        .summary(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub commands: u64,
    pub total_ms: f64,
    /// What the restart benchmark printed.
    pub output: String,
}

/// Runs `crates/baton-server/examples/restart_bench` (built by the script)
/// and reads its "total N ms".
pub async fn restart(binary: &Path, commands: u64, timeout: Duration) -> anyhow::Result<Restart> {
    let run = tokio::process::Command::new(binary)
        .arg(commands.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .with_context(|| format!("{} ran longer than {timeout:?}", binary.display()))?
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {stdout} {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let total_ms = stdout
        .split("total ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no \"total N ms\" in {stdout:?}"))?;
    Ok(Restart {
        commands,
        total_ms,
        output: stdout.replace('\n', "; "),
    })
}

/// Everything measured on Baton alone; a part that failed says why.
#[derive(Debug, Default, Serialize)]
pub struct Extras {
    pub handoff: Option<Result<Handoff, String>>,
    pub memory: Option<Result<Memory, String>>,
    pub watch: Option<Result<WatchDelivery, String>>,
    pub restart: Option<Result<Restart, String>>,
}
