//! One MCP connection as Baton sees it: an agent id, one Baton session that
//! is kept alive while the connection lives and closed when it ends, and the
//! locks taken through it. When the session or a lock is lost, the loss is
//! queued as a notice that the next tool result shows first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use baton_client::{Client, LockInfo, LockState, SessionInfo};
use baton_core::{Error, ErrorCode, LockMode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::McpConfig;
use crate::http_streams::{STREAM_GRACE, Streams};

/// Locks checked with the server on one keepalive tick at most; a tick must
/// stay short whatever an agent does.
const MAX_LOCKS_CHECKED_PER_TICK: usize = 32;
/// How long closing the session may take when the connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an HTTP connection checks that its client is still there.
const HTTP_LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// A lock this connection holds, as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct HeldLock {
    pub lock_id: u64,
    pub keys: Vec<String>,
    pub mode: LockMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Whether the lock has its own TTL (and so needs lock_renew).
    pub own_ttl: bool,
    /// For a semaphore grant: the permits it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permits: Option<u64>,
}

impl HeldLock {
    pub fn from_info(info: &LockInfo, own_ttl: bool) -> HeldLock {
        HeldLock {
            lock_id: info.lock_id,
            keys: info.keys.clone(),
            mode: info.mode,
            fence_token: info.fence_token,
            expires_at: info.expires_at,
            own_ttl,
            permits: info.permits,
        }
    }
}

/// A lost lease, as the next tool result reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// `session` or `lock`.
    pub what: &'static str,
    pub id: u64,
    /// How it ended: expired, killed, ...
    pub status: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Locks released with a lost session.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<HeldLock>,
    pub message: String,
}

struct Live {
    info: SessionInfo,
    /// Stops this session's keepalive task.
    stop: CancellationToken,
}

#[derive(Default)]
struct Tracked {
    held: BTreeMap<u64, HeldLock>,
    notices: Vec<Notice>,
}

/// The Baton side of one MCP connection.
pub struct Connection {
    config: Arc<McpConfig>,
    agent: OnceLock<String>,
    client: OnceLock<Client>,
    /// Held while a session is opened, so concurrent calls open one.
    session: tokio::sync::Mutex<Option<Live>>,
    tracked: Mutex<Tracked>,
    /// Set when the connection ended: no new session is opened after it.
    closed: CancellationToken,
    weak: Weak<Connection>,
    /// Over HTTP: the open event streams, and this connection's MCP session id.
    streams: Option<Arc<Streams>>,
    mcp_session: OnceLock<String>,
}

impl Connection {
    pub fn new(config: Arc<McpConfig>, streams: Option<Arc<Streams>>) -> Arc<Connection> {
        Arc::new_cyclic(|weak| Connection {
            config,
            agent: OnceLock::new(),
            client: OnceLock::new(),
            session: tokio::sync::Mutex::new(None),
            tracked: Mutex::new(Tracked::default()),
            closed: CancellationToken::new(),
            weak: weak.clone(),
            streams,
            mcp_session: OnceLock::new(),
        })
    }

    /// Over HTTP: the MCP session id, learned from the first tool call.
    pub fn set_mcp_session(&self, session: &str) {
        if self.streams.is_some() && self.mcp_session.get().is_none() {
            let _ = self.mcp_session.set(session.to_string());
        }
    }

    /// Over HTTP: has the client been without an event stream for longer
    /// than a reconnect takes? Then it is gone: close its Baton session now
    /// rather than keep its locks until the idle timeout.
    async fn client_gone(&self, session_id: u64) -> bool {
        let (Some(streams), Some(mcp_session)) = (&self.streams, self.mcp_session.get()) else {
            return false;
        };
        let Some(closed_for) = streams.closed_for(mcp_session) else {
            return false;
        };
        if closed_for < STREAM_GRACE {
            return false;
        }
        let gone = Error::new(
            ErrorCode::Fenced,
            format!(
                "the MCP client's event stream was closed for {} s (client crashed or disconnected), so its session was closed",
                closed_for.as_secs()
            ),
        )
        .with_details(json!({ "status": "client_gone" }));
        self.session_lost(session_id, &gone).await;
        if let Ok(base) = self.base_client() {
            close_session(base, session_id).await;
        }
        true
    }

    pub fn config(&self) -> &McpConfig {
        &self.config
    }

    /// Fixes the agent id: `--agent`/`BATON_AGENT` (or a `Baton-Agent`
    /// header), else the MCP client's name plus a short unique suffix.
    pub fn set_agent(&self, header_agent: Option<&str>, client_name: &str) {
        let agent = self
            .config
            .agent
            .clone()
            .filter(|a| !a.is_empty())
            .or_else(|| header_agent.filter(|a| !a.is_empty()).map(str::to_string))
            .unwrap_or_else(|| generated_agent(client_name));
        let _ = self.agent.set(agent);
    }

    pub fn agent(&self) -> &str {
        self.agent.get_or_init(|| generated_agent("mcp")).as_str()
    }

    /// The client of this connection, without a session.
    pub fn base_client(&self) -> Result<Client, Error> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let client = Client::new(&self.config.url, self.agent())?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    /// The client bound to this connection's session, opening the session
    /// if there is none (first call, or the last one was lost).
    pub async fn client(&self) -> Result<Client, Error> {
        let base = self.base_client()?;
        let mut session = self.session.lock().await;
        if let Some(live) = session.as_ref() {
            return Ok(base.with_session(live.info.session_id));
        }
        if self.closed.is_cancelled() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "this MCP connection is closing; reconnect",
            ));
        }
        let info = base
            .session_open(self.config.session_ttl_ms)
            .await
            .map_err(|e| {
                tracing::warn!(url = %self.config.url, error = %e, "cannot open a Baton session");
                e
            })?;
        tracing::info!(
            agent = %info.agent,
            session = info.session_id,
            ttl_ms = info.ttl_ms,
            "opened Baton session"
        );
        let stop = self.closed.child_token();
        tokio::spawn(keepalive(
            self.weak.clone(),
            base.clone(),
            info.session_id,
            keepalive_every(info.ttl_ms),
            self.streams.is_some(),
            stop.clone(),
        ));
        let id = info.session_id;
        *session = Some(Live { info, stop });
        Ok(base.with_session(id))
    }

    /// The live session, if one is open.
    pub async fn session_info(&self) -> Option<SessionInfo> {
        self.session.lock().await.as_ref().map(|l| l.info.clone())
    }

    /// Takes the notices the next tool result must show.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut self.tracked().notices)
    }

    pub fn held(&self) -> Vec<HeldLock> {
        self.tracked().held.values().cloned().collect()
    }

    pub fn track_lock(&self, lock: HeldLock) {
        self.tracked().held.insert(lock.lock_id, lock);
    }

    pub fn untrack_lock(&self, lock_id: u64) -> Option<HeldLock> {
        self.tracked().held.remove(&lock_id)
    }

    /// A tracked lock ended without being released by us: report it.
    pub fn lock_lost(&self, lock_id: u64, status: &str, ended_at: Option<u64>) {
        let Some(lock) = self.untrack_lock(lock_id) else {
            return;
        };
        let when = ended_at.map_or_else(String::new, |t| format!(" at {t} ms"));
        let fence = lock.fence_token.map_or_else(String::new, |t| {
            format!(" fence token {t} is no longer valid:")
        });
        let message = format!(
            "LEASE LOST: your lock {lock_id} on {:?} ended ({status}){when};{fence} stop writing under it. Acquire the lock again (new fence token) and re-read the state before writing.",
            lock.keys
        );
        tracing::warn!(lock_id, status, "{message}");
        self.tracked().notices.push(Notice {
            what: "lock",
            id: lock_id,
            status: status.to_string(),
            keys: lock.keys,
            locks: Vec::new(),
            message,
        });
    }

    /// The session `session_id` is gone: forget it and its locks, and tell
    /// the agent on the next tool result. The next call opens a new session.
    pub async fn session_lost(&self, session_id: u64, error: &Error) {
        {
            let mut session = self.session.lock().await;
            match session.as_ref() {
                Some(live) if live.info.session_id == session_id => {
                    live.stop.cancel();
                    *session = None;
                }
                // Already handled, or a newer session: nothing to report.
                _ => return,
            }
        }
        let status = error
            .details
            .as_ref()
            .and_then(|d| d.get("status"))
            .and_then(Value::as_str)
            .unwrap_or(if error.code == ErrorCode::NotFound {
                "unknown to the server"
            } else {
                "ended"
            })
            .to_string();
        let locks: Vec<HeldLock> = std::mem::take(&mut self.tracked().held)
            .into_values()
            .collect();
        let lock_text = if locks.is_empty() {
            "it held no locks".to_string()
        } else {
            let list: Vec<String> = locks
                .iter()
                .map(|l| format!("lock {} on {:?}", l.lock_id, l.keys))
                .collect();
            format!(
                "these locks were released and their fence tokens are no longer valid: {}; stop writing under them, acquire again and re-read before writing",
                list.join(", ")
            )
        };
        let message = format!(
            "LEASE LOST: your Baton session {session_id} ended ({status}): {lock_text}. The next call opens a new session. ({})",
            error.message
        );
        tracing::warn!(session_id, "{message}");
        self.tracked().notices.push(Notice {
            what: "session",
            id: session_id,
            status,
            keys: locks.iter().flat_map(|l| l.keys.clone()).collect(),
            locks,
            message,
        });
    }

    /// After a FENCED or NOT_FOUND answer: is it our session that is gone?
    /// One cheap read tells; if so, the loss is recorded.
    pub async fn check_session_after(&self, error: &Error) {
        if !matches!(error.code, ErrorCode::Fenced | ErrorCode::NotFound) {
            return;
        }
        let Some(session_id) = self.session_info().await.map(|s| s.session_id) else {
            return;
        };
        let Ok(base) = self.base_client() else {
            return;
        };
        if let Err(gone) = base.session_get(session_id).await
            && matches!(gone.code, ErrorCode::Fenced | ErrorCode::NotFound)
        {
            self.session_lost(session_id, &gone).await;
        }
    }

    /// Checks every tracked lock with the server, reporting the lost ones.
    pub async fn verify_locks(&self, limit: usize) {
        let Ok(base) = self.base_client() else {
            return;
        };
        let ids: Vec<u64> = self.tracked().held.keys().copied().take(limit).collect();
        for lock_id in ids {
            match base.lock_state(lock_id).await {
                Ok(LockState::Live(info)) => {
                    if let Some(lock) = self.tracked().held.get_mut(&lock_id) {
                        lock.expires_at = info.expires_at;
                        lock.fence_token = info.fence_token.or(lock.fence_token);
                    }
                }
                Ok(LockState::Ended {
                    status, ended_at, ..
                }) => self.lock_lost(lock_id, status.as_str(), Some(ended_at)),
                Err(e) if e.code == ErrorCode::NotFound => {
                    self.lock_lost(lock_id, "unknown to the server", None)
                }
                Err(e) => {
                    tracing::debug!(lock_id, error = %e, "cannot check lock");
                    return;
                }
            }
        }
    }

    /// Ends the connection: stop the keepalive and close the session, which
    /// releases its locks at once. Bounded in time; if the server cannot be
    /// reached the session simply expires after its TTL.
    pub async fn close(&self) {
        self.closed.cancel();
        let live = self.session.lock().await.take();
        let Some(live) = live else {
            return;
        };
        live.stop.cancel();
        let Ok(base) = self.base_client() else {
            return;
        };
        close_session(base, live.info.session_id).await;
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // A panic while holding this lock leaves plain data behind: keep going.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Connection {
    /// The MCP transport dropped the connection (HTTP session ended): close
    /// the Baton session in the background.
    fn drop(&mut self) {
        self.closed.cancel();
        if let (Some(streams), Some(session)) = (&self.streams, self.mcp_session.get()) {
            streams.forget(session);
        }
        let live = self.session.get_mut().take();
        if let (Some(live), Some(client)) = (live, self.client.get()) {
            live.stop.cancel();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(close_session(client.clone(), live.info.session_id));
            }
        }
    }
}

async fn close_session(client: Client, session_id: u64) {
    match tokio::time::timeout(CLOSE_TIMEOUT, client.session_close(session_id)).await {
        Ok(Ok(_)) => tracing::info!(session_id, "closed Baton session"),
        Ok(Err(e)) => {
            tracing::warn!(session_id, error = %e, "could not close the Baton session; it ends with its TTL")
        }
        Err(_) => tracing::warn!(
            session_id,
            "closing the Baton session timed out; it ends with its TTL"
        ),
    }
}

/// Keepalive period: a third of the TTL, so two ticks may fail before the
/// session expires.
fn keepalive_every(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 3).max(5))
}

/// Keeps one session alive until `stop`; records its loss if the server says
/// it ended, and checks the tracked locks on every keepalive. Over HTTP it
/// also checks every second that the client is still there.
async fn keepalive(
    connection: Weak<Connection>,
    client: Client,
    session_id: u64,
    every: Duration,
    http: bool,
    stop: CancellationToken,
) {
    let tick = if http {
        every.min(HTTP_LIVENESS_EVERY)
    } else {
        every
    };
    let mut next_keepalive = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if http {
            let Some(connection) = connection.upgrade() else {
                return;
            };
            if connection.client_gone(session_id).await {
                return;
            }
        }
        if tokio::time::Instant::now() < next_keepalive {
            continue;
        }
        next_keepalive = tokio::time::Instant::now() + every;
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = client.session_keepalive(session_id) => answer,
        };
        let Some(connection) = connection.upgrade() else {
            return;
        };
        match answer {
            Ok(_) => connection.verify_locks(MAX_LOCKS_CHECKED_PER_TICK).await,
            Err(e) if matches!(e.code, ErrorCode::Fenced | ErrorCode::NotFound) => {
                connection.session_lost(session_id, &e).await;
                return;
            }
            // The server is away for now; if it stays away the session
            // expires and the next keepalive says FENCED.
            Err(e) => tracing::warn!(session_id, error = %e, "keepalive failed; retrying"),
        }
    }
}

/// `<client name>-<6 hex digits>`: readable in events and unique enough that
/// two copies of one client are two agents.
fn generated_agent(client_name: &str) -> String {
    let mut name: String = client_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let trimmed = name.trim_matches('-').to_string();
    name = if trimmed.is_empty() {
        "mcp".to_string()
    } else {
        trimmed
    };
    let random = uuid::Uuid::now_v7().as_u128() as u32 & 0xff_ffff;
    format!("{name}-{random:06x}")
}

/// What `held`, `session_info` and `baton://held` answer.
pub fn holdings(connection: &Connection, session: Option<&SessionInfo>) -> Value {
    json!({
        "agent": connection.agent(),
        "url": connection.config().url,
        "session": session,
        "locks": connection.held(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_agent_ids_are_readable_and_distinct() {
        let a = generated_agent("Claude Desktop");
        let b = generated_agent("Claude Desktop");
        assert!(a.starts_with("Claude-Desktop-"), "{a}");
        assert_eq!(a.len(), "Claude-Desktop-".len() + 6);
        assert_ne!(a, b);
        assert!(generated_agent("  ").starts_with("mcp-"));
    }

    #[test]
    fn keepalive_runs_three_times_per_ttl() {
        assert_eq!(keepalive_every(30_000), Duration::from_secs(10));
        assert_eq!(keepalive_every(1), Duration::from_millis(5));
    }
}
