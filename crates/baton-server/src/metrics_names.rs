//! Prometheus metrics: names in one place, and the recorder install.

use baton_core::{Event, EventKind, Reply};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const REQUESTS: &str = "baton_http_requests_total";
pub const BATCH_SIZE: &str = "baton_batch_size";
pub const FSYNC_SECONDS: &str = "baton_log_append_seconds";
pub const LOCK_WAIT_SECONDS: &str = "baton_lock_wait_seconds";
pub const LOCK_WAITS_OVER_TWICE_TTL: &str = "baton_lock_waits_over_twice_hold_total";
pub const DEADLOCKS: &str = "baton_deadlocks_total";
pub const EXPIRATIONS: &str = "baton_expirations_total";
pub const LOCKS_HELD: &str = "baton_locks_held";
pub const LOCKS_WAITING: &str = "baton_locks_waiting";
pub const SESSIONS: &str = "baton_sessions";
pub const KEYS: &str = "baton_keys";
/// What the keys count against `max_kv_bytes` (names and kept versions).
pub const KV_BYTES: &str = "baton_kv_bytes";
/// What queued items and dead letters count against `max_queue_bytes`.
pub const QUEUE_BYTES: &str = "baton_queue_bytes";
pub const REVISION: &str = "baton_revision";
/// Seconds to take a snapshot, start to durable.
pub const SNAPSHOT_SECONDS: &str = "baton_snapshot_seconds";
/// Seconds the writer spent copying the state for a background snapshot
/// (the only part of a snapshot that blocks writes).
pub const SNAPSHOT_COPY_SECONDS: &str = "baton_snapshot_copy_seconds";

/// Install the process-wide recorder once; later calls share its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(FSYNC_SECONDS.into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(LOCK_WAIT_SECONDS.into()), &seconds)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SNAPSHOT_SECONDS.into()), &seconds)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(SNAPSHOT_COPY_SECONDS.into()), &seconds)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("one recorder per process")
        })
        .clone()
}

/// Count what an applied command did.
pub fn observe_event(event: &Event) {
    match event.kind {
        EventKind::LeaseLost | EventKind::SessionExpired | EventKind::KeyExpired => {
            metrics::counter!(EXPIRATIONS, "kind" => kind_name(event.kind)).increment(1);
        }
        EventKind::Refused
            if event.outcome == baton_core::Outcome::Error(baton_core::ErrorCode::Deadlock) =>
        {
            metrics::counter!(DEADLOCKS).increment(1);
        }
        _ => {}
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LeaseLost => "lock",
        EventKind::SessionExpired => "session",
        _ => "key",
    }
}

/// A queued lock request reached its outcome after `waited`.
pub fn observe_wait(namespace: &str, waited: Duration, reply: &Reply) {
    metrics::histogram!(LOCK_WAIT_SECONDS, "namespace" => namespace.to_string())
        .record(waited.as_secs_f64());
    // Contention alert: a wait longer than twice the lease the holder asked for.
    if let Ok(baton_core::Response::Lock(info)) = reply
        && let (Some(granted), Some(expires)) = (info.granted_at, info.expires_at)
    {
        let hold = Duration::from_millis(expires.saturating_sub(granted));
        if waited > hold * 2 {
            metrics::counter!(LOCK_WAITS_OVER_TWICE_TTL, "namespace" => namespace.to_string())
                .increment(1);
        }
    }
}

/// Gauges from the current state, set when /metrics is scraped.
pub fn set_gauges(stats: &baton_core::Stats) {
    metrics::gauge!(LOCKS_HELD).set(stats.locks_held as f64);
    metrics::gauge!(LOCKS_WAITING).set(stats.locks_waiting as f64);
    metrics::gauge!(SESSIONS).set(stats.sessions as f64);
    metrics::gauge!(KEYS).set(stats.keys as f64);
    metrics::gauge!(KV_BYTES).set(stats.kv_bytes as f64);
    metrics::gauge!(QUEUE_BYTES).set(stats.queue_bytes as f64);
    metrics::gauge!(REVISION).set(stats.revision as f64);
}
