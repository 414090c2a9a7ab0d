//! Baton as an MCP server, so an agent in any MCP client coordinates with
//! other agents with no glue code: `baton mcp` serves the tools over stdio,
//! and `baton serve` mounts the same tools at `/mcp` (streamable HTTP).
//!
//! Every tool calls `baton_client`, the same functions the CLI uses, against
//! a running Baton server; this crate holds no coordination rule of its own
//! and must never depend on the server crate. One MCP connection is one
//! Baton session (see `session.rs`); the tool list and its contract are in
//! `tools.rs` and README.md.

mod guide;
mod handler;
mod http_streams;
mod reply;
mod session;
mod tools;

pub mod cli;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use baton_core::Limits;
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

pub use guide::{GUIDE, INSTRUCTIONS};
pub use handler::BatonMcp;
pub use http_streams::{McpHttpService, STREAM_GRACE};
pub use tools::all as tool_list;

/// Session TTL unless told otherwise: long enough to ride out a slow
/// keepalive, short enough that a crashed agent's locks come back soon.
pub const DEFAULT_SESSION_TTL_MS: u64 = 30_000;
/// An MCP-over-HTTP session with no request for this long is ended (and its
/// Baton session closed). A client that vanished without saying goodbye is
/// usually noticed sooner, when its event stream ends (`http_streams.rs`);
/// this bounds the rest.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// SSE ping period on `/mcp` streams: a write to a vanished client fails,
/// which ends its stream, so this bounds how long a crash goes unnoticed.
pub const HTTP_SSE_PING: Duration = Duration::from_secs(5);
/// Hosts `/mcp` accepts in the `Host` header unless configured: loopback
/// only, the SDK's guard against DNS rebinding.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How one MCP server reaches Baton and who it is there.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// The Baton server the tools call.
    pub url: String,
    /// The agent id; None: the MCP client's name plus a short unique suffix.
    pub agent: Option<String>,
    /// TTL of each connection's Baton session; it is kept alive every ttl/3.
    pub session_ttl_ms: u64,
    /// Bounds checked before a call is sent (value size); the server's own.
    pub limits: Limits,
}

impl McpConfig {
    pub fn new(url: impl Into<String>) -> McpConfig {
        McpConfig {
            url: url.into(),
            agent: None,
            session_ttl_ms: DEFAULT_SESSION_TTL_MS,
            limits: Limits::default(),
        }
    }

    /// For `/mcp` on a server listening on `address`: the tools call that
    /// server over loopback (an unspecified listen address such as 0.0.0.0
    /// is reached at 127.0.0.1 / ::1) and check its limits.
    pub fn for_server(address: SocketAddr, limits: Limits) -> McpConfig {
        let ip = match address.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        McpConfig {
            limits,
            ..McpConfig::new(format!("http://{}", SocketAddr::new(ip, address.port())))
        }
    }
}

/// Serves MCP over stdin/stdout until the client closes stdin (or the
/// process is told to stop), then closes the Baton session so its locks are
/// released at once. Logs go to stderr: stdout is the protocol.
pub async fn serve_stdio(config: McpConfig) -> Result<(), String> {
    let url = config.url.clone();
    warn_if_unreachable(&config).await;
    let handler = BatonMcp::new(Arc::new(config));
    let connection = handler.connection().clone();
    let service = handler
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(|e| format!("the MCP client did not complete the handshake: {e}"))?;
    tracing::info!(%url, "baton mcp: serving MCP on stdio");
    tokio::select! {
        quit = service.waiting() => {
            if let Err(e) = quit {
                tracing::warn!(error = %e, "MCP service ended with an error");
            }
        }
        _ = stop_signal() => tracing::info!("stopping on signal"),
    }
    connection.close().await;
    Ok(())
}

/// Says on stderr, at once and bounded in time, when no Baton answers at
/// the URL; the tools then answer UNAVAILABLE naming the URL.
async fn warn_if_unreachable(config: &McpConfig) {
    let Ok(client) = baton_client::Client::new(&config.url, "baton-mcp") else {
        return;
    };
    match tokio::time::timeout(baton_client::CONNECT_TIMEOUT * 2, client.health()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{}", e.message),
        Err(_) => tracing::warn!(
            "Baton at {} did not answer /healthz; is `baton serve` running?",
            config.url
        ),
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The `/mcp` endpoint of `baton serve` and the handle that stops it.
pub struct McpHttp {
    /// A tower service: mount it with `Router::nest_service("/mcp", ...)`.
    pub service: McpHttpService,
    pub shutdown: McpShutdown,
}

/// Ends every MCP-over-HTTP session (their open streams would otherwise
/// hold a graceful shutdown forever).
#[derive(Debug, Clone)]
pub struct McpShutdown(CancellationToken);

impl McpShutdown {
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// The streamable HTTP MCP service: one `BatonMcp` (one Baton session) per
/// MCP session. `allowed_hosts` is the `Host` header guard against DNS
/// rebinding: empty means loopback only (`DEFAULT_ALLOWED_HOSTS`), `["*"]`
/// turns the guard off.
pub fn http_service(config: McpConfig, allowed_hosts: &[String]) -> McpHttp {
    let config = Arc::new(config);
    let token = CancellationToken::new();
    let mut http_config = StreamableHttpServerConfig::default()
        .with_cancellation_token(token.clone())
        .with_sse_keep_alive(Some(HTTP_SSE_PING))
        .with_max_request_body_bytes(config.limits.max_value_bytes * 2 + 64 * 1024);
    http_config = if allowed_hosts.iter().any(|h| h == "*") {
        http_config.disable_allowed_hosts()
    } else if allowed_hosts.is_empty() {
        http_config.with_allowed_hosts(DEFAULT_ALLOWED_HOSTS)
    } else {
        http_config.with_allowed_hosts(allowed_hosts.iter().cloned())
    };
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(HTTP_IDLE_TIMEOUT);
    let streams = Arc::new(http_streams::Streams::default());
    let for_handlers = streams.clone();
    let service = StreamableHttpService::new(
        move || Ok(BatonMcp::new_http(config.clone(), for_handlers.clone())),
        Arc::new(sessions),
        http_config,
    );
    McpHttp {
        service: McpHttpService::new(service, streams),
        shutdown: McpShutdown(token),
    }
}
