//! A real `baton serve` for end-to-end tests: started on a free loopback
//! port with its own data directory, ready once `/healthz` answers, killed
//! when dropped. Plus helpers to run `baton` client commands against it.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for any one `baton` process in these tests; reaching it fails the test.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(120);
/// How long a fresh server may take to answer `/healthz`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

pub struct Server {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `baton serve` and waits until it is healthy.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        // A port picked by binding :0 can be taken again before the server
        // binds it; then the server exits and we try another.
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(dir.path().join("data"))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn baton serve");
            if wait_healthy(&mut child, port) {
                return Server {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "baton serve did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
    }

    /// A `baton` command aimed at this server, JSON output, agent `tester`.
    pub fn baton(&self) -> Command {
        let mut command = baton_command();
        command.env("BATON_URL", &self.url);
        command
    }

    /// Runs `baton ARGS` and returns its exit code and JSON envelope.
    pub fn run(&self, args: &[&str]) -> Reply {
        Reply::of(self.baton().args(args))
    }

    /// Like `run`, with `stdin` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Reply {
        let mut command = self.baton();
        command.args(args).stdin(Stdio::piped());
        let mut child = command.spawn().expect("spawn baton");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        Reply::from_output(wait_bounded(child))
    }

    /// Kills the server process; the data directory stays until drop.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `baton` with JSON output, agent `tester`, no session, stdin closed.
pub fn baton_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .env("BATON_OUTPUT", "json")
        .env("BATON_AGENT", "tester")
        .env_remove("BATON_SESSION")
        .env_remove("BATON_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Polls `/healthz` until 200 (true), or the server exits (false).
fn wait_healthy(child: &mut Child, port: u16) -> bool {
    let started = Instant::now();
    while started.elapsed() < STARTUP_DEADLINE {
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        if healthz(port) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("baton serve did not answer /healthz within {STARTUP_DEADLINE:?}");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    listener.local_addr().expect("local addr").port()
}

fn healthz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// Waits for `child` to exit, killing it and failing past the deadline.
/// Its output must go to pipes it does not fill (or to files).
pub fn wait_bounded(child: Child) -> Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PROCESS_DEADLINE) {
        Ok(output) => output.expect("collect output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("a baton process (pid {pid}) ran past {PROCESS_DEADLINE:?}");
        }
    }
}

/// The exit code, JSON envelope and stderr of one `baton` process.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub envelope: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn of(command: &mut Command) -> Reply {
        Reply::from_output(wait_bounded(command.spawn().expect("spawn baton")))
    }

    pub fn from_output(output: Output) -> Reply {
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let envelope = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        Reply {
            code: output.status.code().unwrap_or(-1),
            envelope,
            stdout,
            stderr,
        }
    }

    /// The `result` of a successful reply; fails the test otherwise.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        assert_eq!(self.envelope["ok"], true, "{self:?}");
        &self.envelope["result"]
    }

    /// The `error` of a failed reply, checking code and exit code.
    pub fn err(&self, code: &str, exit: i32) -> &Value {
        assert_eq!(self.code, exit, "expected exit {exit} ({code}): {self:?}");
        assert_eq!(self.envelope["ok"], false, "{self:?}");
        assert_eq!(self.envelope["error"]["code"], code, "{self:?}");
        &self.envelope["error"]
    }
}

/// Lines a child prints on stdout, as they come, with a bounded wait each.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    pub fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line; fails the test if none comes within `within`.
    pub fn next(&self, within: Duration) -> String {
        self.rx
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no line within {within:?}: {e}"))
    }
}

/// Waits until `path` exists; fails the test past `within`.
pub fn wait_for_file(path: &Path, within: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < within,
            "{} did not appear within {within:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}
