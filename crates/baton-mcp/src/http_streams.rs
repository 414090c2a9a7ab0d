//! When is an MCP-over-HTTP client gone? Streamable HTTP has no connection
//! that ends with the client: a client that crashes never sends its DELETE.
//! But a live client keeps its event stream (`GET /mcp`) open, and a dead
//! one's stream ends (the server's SSE pings fail). So `/mcp` counts the open
//! streams per MCP session, and a session whose stream stayed closed longer
//! than a reconnect takes has its Baton session closed, releasing its locks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::BatonMcp;

/// How long a client's event stream may stay closed before the client is
/// taken for gone: SDK clients reconnect within a few seconds (the server
/// asks for 3 s).
pub const STREAM_GRACE: Duration = Duration::from_secs(10);
/// Closed-stream records older than this are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Entry {
    open: usize,
    closed_at: Option<Instant>,
}

/// Open event streams per MCP session id.
#[derive(Default)]
pub struct Streams {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Streams {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn opened(self: &Arc<Self>, session: String) -> StreamGuard {
        let mut entries = self.entries();
        entries.retain(|_, e| e.open > 0 || e.closed_at.is_none_or(|t| t.elapsed() < FORGET_AFTER));
        let entry = entries.entry(session.clone()).or_default();
        entry.open += 1;
        entry.closed_at = None;
        StreamGuard {
            streams: self.clone(),
            session,
        }
    }

    /// How long the session has had no open stream; None if one is open or
    /// it never opened one (then only the idle timeout ends it).
    pub fn closed_for(&self, session: &str) -> Option<Duration> {
        let entries = self.entries();
        let entry = entries.get(session)?;
        if entry.open > 0 {
            return None;
        }
        entry.closed_at.map(|t| t.elapsed())
    }

    pub fn forget(&self, session: &str) {
        self.entries().remove(session);
    }
}

/// Counts one open stream until the response body is dropped.
struct StreamGuard {
    streams: Arc<Streams>,
    session: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.streams.entries().get_mut(&self.session) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 {
                entry.closed_at = Some(Instant::now());
            }
        }
    }
}

/// A response body that keeps its stream counted while it lives.
pub struct TrackedBody {
    inner: BoxBody<Bytes, Infallible>,
    _guard: Option<StreamGuard>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `/mcp` tower service: the SDK's streamable HTTP service, counting
/// each MCP session's open event streams.
#[derive(Clone)]
pub struct McpHttpService {
    inner: StreamableHttpService<BatonMcp, LocalSessionManager>,
    streams: Arc<Streams>,
}

impl McpHttpService {
    pub(crate) fn new(
        inner: StreamableHttpService<BatonMcp, LocalSessionManager>,
        streams: Arc<Streams>,
    ) -> McpHttpService {
        McpHttpService { inner, streams }
    }
}

impl<B> tower_service::Service<http::Request<B>> for McpHttpService
where
    B: Body + Send + 'static,
    B::Error: std::fmt::Display,
    B::Data: Send + 'static,
{
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let stream_of = (request.method() == http::Method::GET)
            .then(|| request.headers().get("mcp-session-id"))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let response = self.inner.call(request);
        let streams = self.streams.clone();
        Box::pin(async move {
            let response = response.await?;
            let guard = match stream_of {
                Some(session) if response.status().is_success() => Some(streams.opened(session)),
                _ => None,
            };
            Ok(response.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_gone_only_after_its_streams_closed() {
        let streams = Arc::new(Streams::default());
        assert_eq!(streams.closed_for("s"), None, "never opened");
        let first = streams.opened("s".into());
        let second = streams.opened("s".into());
        drop(first);
        assert_eq!(streams.closed_for("s"), None, "one still open");
        drop(second);
        assert!(streams.closed_for("s").is_some());
        let _again = streams.opened("s".into());
        assert_eq!(streams.closed_for("s"), None, "reconnected");
        streams.forget("s");
        assert_eq!(streams.closed_for("s"), None);
    }
}
