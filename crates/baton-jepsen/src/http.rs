//! One HTTP client per agent, and the gate that tells clients whether and
//! where the server under test is up.

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub use reqwest::Method;

/// What a request got back.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The server answered with the envelope.
    Reply { status: u16, body: Value },
    /// No answer: a transport error, a timeout, or a body that is not the
    /// envelope (a reply cut short by a crash). The outcome is unknown.
    Lost(String),
}

impl Answer {
    /// The operation may or may not have happened: no answer, or 503
    /// UNAVAILABLE (a fail-stopped node says "may or may not have been stored").
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Answer::Lost(_) => true,
            Answer::Reply { status, .. } => *status == 503,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Reply { status, .. } => Some(*status),
            Answer::Lost(_) => None,
        }
    }

    /// `result` of an ok envelope.
    pub fn result(&self) -> Option<&Value> {
        match self {
            Answer::Reply { body, .. } if body["ok"] == true => Some(&body["result"]),
            _ => None,
        }
    }

    /// `error.code` of an error envelope.
    pub fn code(&self) -> Option<&str> {
        match self {
            Answer::Reply { body, .. } => body["error"]["code"].as_str(),
            Answer::Lost(_) => None,
        }
    }

    /// `error.details` of an error envelope.
    pub fn details(&self) -> &Value {
        match self {
            Answer::Reply { body, .. } => &body["error"]["details"],
            Answer::Lost(_) => &Value::Null,
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Answer::Reply { status, body } => {
                let mut text = format!("{status} {body}");
                text.truncate(400);
                text
            }
            Answer::Lost(why) => format!("no answer: {why}"),
        }
    }
}

/// One agent's HTTP client (`Baton-Agent` on every request).
#[derive(Clone, Debug)]
pub struct Agent {
    http: reqwest::Client,
    pub name: String,
    /// Sent as `Baton-Session` when set.
    pub session: Option<u64>,
}

impl Agent {
    pub fn new(name: impl Into<String>) -> Agent {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(4)
            .build()
            .expect("a plain HTTP client builds");
        Agent {
            http,
            name: name.into(),
            session: None,
        }
    }

    /// One request; never panics on what the server sends.
    pub async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .header("Baton-Agent", &self.name)
            .timeout(timeout);
        if let Some(session) = self.session {
            request = request.header("Baton-Session", session.to_string());
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Answer::Lost(error_chain(&error)),
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) if body["ok"].is_boolean() => Answer::Reply { status, body },
                _ => Answer::Lost(format!(
                    "HTTP {status} with a body that is not the envelope: {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )),
            },
            Err(error) => Answer::Lost(format!("HTTP {status}, body cut: {}", error_chain(&error))),
        }
    }

    pub async fn get(&self, base: &str, path: &str, timeout: Duration) -> Answer {
        self.call(base, Method::GET, path, None, None, timeout)
            .await
    }

    /// Waits (at most `timeout`) on `GET /v1/watch?prefix=..&from_revision=..`
    /// for the first event `matches` accepts, and returns it.
    pub async fn watch_for(
        &self,
        base: &str,
        prefix: &str,
        from_revision: u64,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        use futures_util::StreamExt;
        let url = format!("{base}/v1/watch?prefix={prefix}&from_revision={from_revision}");
        let watch = async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
            if response.status() != 200 {
                return Err(format!("GET {url}: HTTP {}", response.status()));
            }
            let mut stream = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| format!("watch stream broke: {}", error_chain(&e)))?;
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    if let Some(data) = line.trim_end().strip_prefix("data:")
                        && let Ok(event) = serde_json::from_str::<Value>(data.trim())
                        && matches(&event)
                    {
                        return Ok(event);
                    }
                }
            }
            Err("the watch stream ended".to_string())
        };
        tokio::time::timeout(timeout, watch)
            .await
            .unwrap_or_else(|_| Err(format!("no matching event on {url} within {timeout:?}")))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where the server is, while it is up. Clients wait at the gate before each
/// request; the fault injector closes it at a kill and opens it once the
/// restarted server is healthy and checked.
#[derive(Debug)]
pub struct Gate {
    state: watch::Sender<Option<String>>,
}

impl Gate {
    pub fn new(url: Option<String>) -> Arc<Gate> {
        Arc::new(Gate {
            state: watch::Sender::new(url),
        })
    }

    pub fn open(&self, url: String) {
        self.state.send_replace(Some(url));
    }

    pub fn close(&self) {
        self.state.send_replace(None);
    }

    /// The server's URL once it is up; `None` if `deadline` passes first.
    pub async fn url(&self, deadline: Instant) -> Option<String> {
        let mut receiver = self.state.subscribe();
        let wait = receiver.wait_for(Option::is_some);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(url)) => url.clone(),
            _ => None,
        }
    }
}

/// Polls `GET /healthz` until it answers 200, at most `timeout`.
pub async fn wait_healthy(url: &str, timeout: Duration) -> Result<(), String> {
    let agent = Agent::new("jepsen-health");
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never asked");
    while Instant::now() < deadline {
        match agent.get(url, "/healthz", Duration::from_secs(1)).await {
            Answer::Reply { status: 200, .. } => return Ok(()),
            other => last = other.describe(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "{url} was not healthy within {timeout:?}; last answer: {last}"
    ))
}
