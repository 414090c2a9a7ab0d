//! Baton's server: `baton serve`.
//!
//! The sequencer owns the Log and the core state machine on one writer
//! thread: it batches the commands that arrive while the previous batch is
//! being made durable (group commit: one fsync per batch), applies them in
//! log order, and only then answers. HTTP handlers turn requests into core
//! commands and read from the applied state. This crate holds no coordination
//! rule of its own: every rule lives in `baton-core`.

mod events;
mod http;
mod metrics_names;
mod sequencer;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use baton_core::Limits;
pub use events::EventLog;
pub use sequencer::{Sequencer, Shared, encode_record};

/// The longest `writer_spin_us` accepted: a polling writer holds a whole
/// core, and past a few milliseconds a kernel wake-up costs nothing by
/// comparison.
pub const MAX_WRITER_SPIN_US: u64 = 10_000;

/// Everything `baton serve` can be told. Flags override the TOML file, the
/// file overrides these defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on. Loopback by default: Baton has no authentication yet.
    pub listen: SocketAddr,
    /// Where the embedded log lives.
    pub data_dir: PathBuf,
    /// Keep the log and snapshots in this PostgreSQL database instead of
    /// `data_dir` (`postgres://user@host:port/db` or `host=... dbname=...`):
    /// the server then keeps no state on its own machine. One server per
    /// schema at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    /// The schema of that database the log lives in (created if missing).
    pub postgres_schema: String,
    /// Take a snapshot (and truncate the log before it) after this many
    /// commands, once the log written since the last snapshot is at least
    /// as large as that snapshot (so a large state is not rewritten to save
    /// the replay of a small log).
    pub snapshot_every_commands: u64,
    /// ... or after this many seconds with at least one new command, under
    /// the same size rule.
    pub snapshot_every_secs: u64,
    /// Most commands made durable in one batch (one fsync).
    pub max_batch: usize,
    /// Commands queued for the writer at most; beyond, requests get UNAVAILABLE.
    pub max_queued_commands: usize,
    /// How long the writer keeps polling for the next command before it
    /// sleeps, in µs, once it has had one caller at a time for a few
    /// batches. A sleeping writer is woken by the kernel, and on a lone
    /// caller's path that wake-up costs more than the commit's own work
    /// (one client's acquire + release ran 8-33% faster with 100 µs than
    /// with 0 here). Under load the writer does not poll: it would take CPU
    /// from the callers. The price is up to this much CPU per idle gap;
    /// 0 turns polling off; at most [`MAX_WRITER_SPIN_US`].
    pub writer_spin_us: u64,
    /// Longest lock wait one HTTP request may ask for, in ms.
    pub max_wait_ms: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Events kept in memory for `watch` and `events` from a past revision
    /// (each costs about its JSON: ~0.6 KB for a put of 256 bytes).
    pub event_buffer: usize,
    /// ... and fewer when they cost more than this many bytes (the newest
    /// is always kept): a put carries its value, up to 1 MB, so the count
    /// alone would let 100,000 large puts hold 100 GB.
    pub event_buffer_bytes: usize,
    /// Events a watcher may fall behind before it is cut off.
    pub watcher_lag: usize,
    /// Concurrent watch streams at most.
    pub max_watchers: usize,
    /// Bounds of the state machine.
    pub limits: Limits,
    /// Hosts `/mcp` accepts in the `Host` header, the MCP SDK's guard
    /// against DNS rebinding: loopback by default; `["*"]` accepts any.
    pub mcp_allowed_hosts: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("baton-data"),
            postgres: None,
            postgres_schema: baton_log::DEFAULT_SCHEMA.to_string(),
            snapshot_every_commands: 100_000,
            snapshot_every_secs: 300,
            max_batch: 4096,
            max_queued_commands: 65_536,
            writer_spin_us: 100,
            max_wait_ms: 5 * 60 * 1000,
            max_body_bytes: 2 * 1024 * 1024,
            event_buffer: 100_000,
            event_buffer_bytes: 64 * 1024 * 1024,
            watcher_lag: 4096,
            max_watchers: 10_000,
            limits: Limits::default(),
            mcp_allowed_hosts: baton_mcp::DEFAULT_ALLOWED_HOSTS.map(String::from).to_vec(),
        }
    }
}

/// Run `baton serve` until SIGTERM or Ctrl-C: stop accepting, finish
/// in-flight batches, snapshot, return.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let opening = config.clone();
    // Opening and replaying the log block (and PostgreSQL's driver runs a
    // runtime of its own, which cannot start on an async thread).
    let sequencer =
        tokio::task::spawn_blocking(move || Sequencer::start(open_log(&opening)?, &opening))
            .await??;
    serve(config, sequencer, shutdown_signal()).await
}

/// The log `config` names: PostgreSQL if it has `postgres`, else the
/// embedded log in `data_dir`. Blocking: call it off the async threads.
pub fn open_log(config: &ServeConfig) -> anyhow::Result<Box<dyn baton_log::Log>> {
    if let Some(conninfo) = &config.postgres {
        let log = baton_log::PgLog::open(conninfo, &config.postgres_schema, baton_log::LOCK_WAIT)?;
        return Ok(Box::new(log));
    }
    let log = baton_log::FileLog::open(&config.data_dir)?;
    if let Some(repaired) = log.repaired_tail() {
        tracing::warn!(repaired, "log tail repaired");
        eprintln!("baton: {repaired}");
    }
    Ok(Box::new(log))
}

impl ServeConfig {
    /// Where the log lives, as messages name it.
    pub fn store(&self) -> String {
        match &self.postgres {
            Some(_) => format!("PostgreSQL schema {:?}", self.postgres_schema),
            None => self.data_dir.display().to_string(),
        }
    }
}

/// Serve a started sequencer until `shutdown` resolves (tests pass their own).
pub async fn serve(
    config: ServeConfig,
    sequencer: Sequencer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; pick another address with --listen",
                config.listen
            )
        })?;
    serve_listener(listener, config, sequencer, shutdown).await
}

/// Serve on an already bound listener (tests bind port 0 and read the port).
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    sequencer: Sequencer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = metrics_names::install();
    let address = listener.local_addr()?;
    let sequencer = Arc::new(sequencer);
    // `/mcp`: the MCP tools, calling this server through its own HTTP API.
    let mcp = baton_mcp::http_service(
        baton_mcp::McpConfig::for_server(address, config.limits.clone()),
        &config.mcp_allowed_hosts,
    );
    let app = http::router(http::AppState::new(
        sequencer.clone(),
        config.clone(),
        metrics,
    ))
    .nest_service("/mcp", mcp.service);
    tracing::info!(%address, store = %config.store(), "baton serving");
    eprintln!(
        "baton: serving on http://{address} (data in {})",
        config.store()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    sequencer.set_stop(stop_rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            mcp.shutdown.shutdown();
            let _ = stop_tx.send(true);
        })
        .await?;
    // Not `Arc::try_unwrap`: a connection task still being dropped may hold
    // a clone, and the shutdown snapshot must be taken regardless.
    tokio::task::spawn_blocking(move || sequencer.shutdown()).await??;
    eprintln!("baton: stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
