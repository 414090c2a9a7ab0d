//! The servers under test: the real `baton serve` binary, killed with
//! SIGKILL and restarted on the same data dir, and an in-process server
//! whose log injects storage failures.

use baton_log::{FaultPlan, FaultyLog, FileLog, Log};
use baton_server::{Sequencer, ServeConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::http::wait_healthy;

/// How long a (re)started server may take to answer `/healthz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `baton serve` child process on a fixed loopback port.
#[derive(Debug)]
pub struct ProcessServer {
    bin: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    address: SocketAddr,
    extra_args: Vec<String>,
    child: Option<tokio::process::Child>,
    /// How many times the process was started.
    pub starts: u64,
}

/// A free loopback port below the kernel's ephemeral range, so that while the
/// server is down no client connection can be given it as its own local port
/// (a TCP self-connect that would also keep the restart from binding it).
fn free_port() -> std::io::Result<SocketAddr> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20_000u16.min(ephemeral_start.saturating_sub(1000));
    let span = u64::from(ephemeral_start.saturating_sub(low).max(1));
    let mut rng = crate::rng::Rng::new(crate::rng::Rng::seed_from_time());
    for _ in 0..200 {
        let port = low + (rng.below(span) as u16);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl ProcessServer {
    /// Starts `bin serve` on a free loopback port with its data in
    /// `data_dir` and its output appended to `<data_dir>.log`; waits until
    /// it is healthy.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<ProcessServer, String> {
        if !bin.exists() {
            return Err(format!(
                "the baton binary is not at {}: build it first (`cargo build -p baton-cli`; scripts/test does) or point BATON_BIN at it",
                bin.display()
            ));
        }
        let address = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
        let mut log_path = data_dir.as_os_str().to_owned();
        log_path.push(".log");
        let mut server = ProcessServer {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log_path: PathBuf::from(log_path),
            address,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            starts: 0,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Starts the process (again) on the same port and data dir and waits
    /// until it is healthy. Returns how long that took.
    pub async fn spawn(&mut self) -> Result<Duration, String> {
        if self.child.is_some() {
            return Err("the server is already running".to_string());
        }
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("cannot open {}: {e}", self.log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", self.log_path.display()))?;
        let child = tokio::process::Command::new(&self.bin)
            .arg("serve")
            .arg("--listen")
            .arg(self.address.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env_remove("BATON_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let healthy = wait_healthy(&self.url(), START_TIMEOUT).await;
        if let Err(error) = healthy {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|status| format!(" (the process exited: {status})"))
                .unwrap_or_default();
            return Err(format!(
                "{error}{exited}; server output: {}\n{}",
                self.log_path.display(),
                self.log_tail()
            ));
        }
        Ok(started.elapsed())
    }

    /// SIGKILL, then wait for the process to be gone (so its data dir lock is free).
    pub async fn kill(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err("the server is not running".to_string());
        };
        child
            .start_kill()
            .map_err(|e| format!("cannot SIGKILL the server: {e}"))?;
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .map_err(|_| "the killed server did not exit within 20 s".to_string())?
            .map_err(|e| format!("waiting for the killed server: {e}"))?;
        Ok(())
    }

    /// Has the process exited by itself? (`Some(status)` if so.)
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// The last lines of the server's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Resident memory of the process, in KiB (`VmRSS` in /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Open file descriptors of the process (entries of /proc/<pid>/fd).
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))
            .ok()
            .map(|entries| entries.count())
    }
}

/// A server in this process whose log fails when told to
/// ([`FaultPlan::fail_next_appends`], [`FaultPlan::lose_next_append_acks`]).
pub struct InProcessServer {
    pub url: String,
    pub faults: Arc<FaultPlan>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl InProcessServer {
    /// Opens the log in `dir` (retrying while an earlier server in this
    /// process still releases it), recovers, and serves on a free loopback port.
    pub async fn start(dir: &Path, config: ServeConfig) -> Result<InProcessServer, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = loop {
            match FileLog::open(dir) {
                Ok(log) => break log,
                Err(error) if Instant::now() < deadline && error.to_string().contains("locked") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => {
                    return Err(format!("cannot open the log in {}: {error}", dir.display()));
                }
            }
        };
        let faults = Arc::new(FaultPlan::default());
        let log = FaultyLog::with_plan(log, faults.clone());
        let config = ServeConfig {
            data_dir: dir.to_path_buf(),
            ..config
        };
        let sequencer = Sequencer::start(Box::new(log) as Box<dyn Log>, &config)
            .map_err(|e| format!("recovery from {} failed: {e}", dir.display()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind loopback: {e}"))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            baton_server::serve_listener(listener, config, sequencer, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        wait_healthy(&url, START_TIMEOUT).await?;
        Ok(InProcessServer {
            url,
            faults,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Graceful stop: stop accepting, finish in-flight work, release the log.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .map_err(|_| "the in-process server did not stop within 30 s".to_string())?
                .map_err(|e| format!("the server task failed: {e}"))??;
        }
        Ok(())
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
