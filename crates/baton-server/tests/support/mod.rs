//! An in-process `baton serve` on a free port, for HTTP tests.

#![allow(dead_code)]

use baton_log::{FaultPlan, FaultyLog, FileLog, Log};
use baton_server::{Sequencer, ServeConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// What every client task returned, in spawn order; a task still running
/// after `within` (all of them together) or one that panicked fails the test.
pub async fn join_all_within<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    within: Duration,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + within;
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        let joined = tokio::time::timeout_at(deadline, task)
            .await
            .unwrap_or_else(|_| panic!("client tasks still running after {within:?}"));
        results.push(joined.expect("a client task panicked"));
    }
    results
}

pub struct TestServer {
    pub url: String,
    pub dir: PathBuf,
    pub faults: Arc<FaultPlan>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tempdir: Option<tempfile::TempDir>,
}

pub fn config(dir: &Path) -> ServeConfig {
    ServeConfig {
        data_dir: dir.to_path_buf(),
        ..ServeConfig::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        let tempdir = tempfile::tempdir().unwrap();
        let dir = tempdir.path().to_path_buf();
        let mut server = Self::start_in(&dir, config(&dir)).await;
        server._tempdir = Some(tempdir);
        server
    }

    pub async fn start_in(dir: &Path, config: ServeConfig) -> Self {
        let faults = Arc::new(FaultPlan::default());
        let log = FaultyLog::with_plan(FileLog::open(dir).expect("data dir opens"), faults.clone());
        let sequencer = Sequencer::start(Box::new(log) as Box<dyn Log>, &config).expect("recovers");
        Self::serving(sequencer, config, faults).await
    }

    /// A server on the log `config` names (PostgreSQL when it has
    /// `postgres`), opened off the async threads as `baton serve` does.
    pub async fn start_on(config: ServeConfig) -> Self {
        let faults = Arc::new(FaultPlan::default());
        let plan = faults.clone();
        let opening = config.clone();
        let sequencer = tokio::task::spawn_blocking(move || {
            let log = FaultyLog::with_plan(baton_server::open_log(&opening)?, plan);
            Sequencer::start(Box::new(log) as Box<dyn Log>, &opening)
        })
        .await
        .unwrap()
        .expect("the log opens and recovers");
        Self::serving(sequencer, config, faults).await
    }

    async fn serving(sequencer: Sequencer, config: ServeConfig, faults: Arc<FaultPlan>) -> Self {
        let dir = config.data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(baton_server::serve_listener(
            listener,
            config,
            sequencer,
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            url,
            dir,
            faults,
            stop: Some(stop),
            task: Some(task),
            _tempdir: None,
        }
    }

    /// Graceful stop: finish in-flight work, snapshot, release the data dir.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("stops in time")
                .unwrap()
                .unwrap();
        }
        self._tempdir.take()
    }

    pub fn client(&self, agent: &str) -> Api {
        Api {
            url: self.url.clone(),
            agent: agent.to_string(),
            session: None,
            http: reqwest::Client::new(),
        }
    }
}

#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub agent: String,
    pub session: Option<u64>,
    pub http: reqwest::Client,
}

/// Status and envelope of one call.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.body["ok"], true,
            "expected ok, got {} {}",
            self.status, self.body
        );
        &self.body["result"]
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error, got {}", self.body))
    }
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("Baton-Agent", &self.agent)
            .timeout(Duration::from_secs(60));
        if let Some(session) = self.session {
            request = request.header("Baton-Session", session.to_string());
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("server answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("every reply is JSON");
        assert!(body["ok"].as_bool().is_some(), "envelope shape: {body}");
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), None).await
    }

    pub async fn put(&self, key: &str, body: Value) -> Reply {
        self.call("PUT", &format!("/v1/kv/{key}"), Some(body), None)
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, None).await
    }

    pub async fn open_session(&mut self, ttl_ms: u64) -> u64 {
        let session = self
            .post("/v1/sessions", json!({ "ttl_ms": ttl_ms }))
            .await
            .ok()["session_id"]
            .as_u64()
            .unwrap();
        self.session = Some(session);
        session
    }
}
