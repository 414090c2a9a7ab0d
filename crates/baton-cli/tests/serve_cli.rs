//! `baton serve` as a process: graceful SIGTERM (finish, snapshot, exit 0),
//! SIGKILL at random moments under concurrent write load with no
//! acknowledged write lost, its configuration, and one server per data dir.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::{Client, PutOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// Kill/restart cycles in the crash test.
const CRASH_CYCLES: usize = 20;
/// Concurrent writers during the crash test.
const WRITERS: usize = 4;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `baton serve` process that is killed when dropped, so a failing test
/// leaves no server behind.
struct ServerProcess(Child, u16);

impl std::ops::Deref for ServerProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `baton serve` on `dir`; returns once it listens (bounded).
fn start(dir: &Path, port: u16) -> ServerProcess {
    start_with(dir, port, &[])
}

/// [`start`] with extra `baton serve` flags.
fn start_with(dir: &Path, port: u16, flags: &[&str]) -> ServerProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = child.wait();
            panic!(
                "baton serve exited early ({status}):\n{}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return ServerProcess(child, port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("baton serve did not listen within 60 s");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "baton serve did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sigterm_finishes_snapshots_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port);
    let rt = runtime();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "writer").unwrap();
    let mut last = 0;
    for i in 0..50 {
        last = rt
            .block_on(client.kv_put(&format!("term/{i}"), &json!(i), PutOptions::default()))
            .unwrap()
            .version;
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("stopped cleanly"), "{log}");

    // The restart loads the shutdown snapshot: nothing left to replay.
    let mut child = start(dir.path(), port);
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains(&format!("snapshot at {last}, 0 commands replayed")),
        "{log}"
    );
    let value = rt.block_on(client.kv_get("term/49")).unwrap();
    assert_eq!(*value.entry.value, json!(49));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigkill_under_write_load_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 200 commands: kills also land while a snapshot is
    // being written off the writer thread and while the log is truncated.
    let mut child = crash_under_load(
        dir.path(),
        &["--snapshot-every-commands", "200"],
        CRASH_CYCLES,
    );
    let snapshots = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snap")
        })
        .count();
    assert_eq!(snapshots, 1, "snapshots were taken and older ones removed");
    let _ = child.kill();
    let _ = child.wait();
}

/// The same on PostgreSQL (`--postgres`, a schema of this test's own):
/// a SIGKILL between a commit and its answer, or during one, loses no
/// acknowledged write there either.
#[test]
fn sigkill_under_write_load_on_postgres_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let conninfo = std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("t_cli_crash_{}", std::process::id());
    /// Drops the test's schema however the test ends.
    struct DropSchema(String, String);
    impl Drop for DropSchema {
        fn drop(&mut self) {
            if let Ok(mut admin) = postgres::Client::connect(&self.0, postgres::NoTls) {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.1));
            }
        }
    }
    let _cleanup = DropSchema(conninfo.clone(), schema.clone());
    let mut child = crash_under_load(
        dir.path(),
        &[
            "--snapshot-every-commands",
            "200",
            "--postgres",
            &conninfo,
            "--postgres-schema",
            &schema,
        ],
        CRASH_CYCLES / 2,
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is kept in the data dir"
    );
    let status = runtime()
        .block_on(
            Client::new(&format!("http://127.0.0.1:{}", child.1), "checker")
                .unwrap()
                .status(),
        )
        .unwrap();
    assert!(
        status.other["snapshot"]["revision"].as_u64().unwrap() > 0,
        "snapshots were taken in PostgreSQL: {status:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills `baton serve` (with `flags`) `cycles` times at random moments
/// under concurrent writers, checking after every restart that each
/// acknowledged write is still there; returns the last server, running.
fn crash_under_load(dir: &Path, flags: &[&str], cycles: usize) -> ServerProcess {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let rt = runtime();
    // key -> highest acknowledged version, across all cycles.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let check = |cycle: usize| {
        let client = Client::new(&url, "checker").unwrap();
        for (key, version) in acked.lock().unwrap().iter() {
            let got = rt
                .block_on(client.kv_get(key))
                .unwrap_or_else(|e| panic!("cycle {cycle}: lost {key}: {e}"));
            assert!(
                got.entry.version >= *version,
                "cycle {cycle}: {key} went back from {version} to {}",
                got.entry.version
            );
        }
    };
    let mut total_acked = 0usize;
    for cycle in 0..cycles {
        let mut child = start_with(dir, port, flags);
        // Everything acknowledged before must have survived the kill.
        check(cycle);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (client, acked, stop) = (
                    Client::new(&url, format!("writer-{writer}")).unwrap(),
                    acked.clone(),
                    stop.clone(),
                );
                rt.spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) && n < 10_000 {
                        let key = format!("crash/{writer}-{}", n % 50);
                        n += 1;
                        // Only a reply counts as acknowledged; errors are unknown outcomes.
                        if let Ok(written) =
                            client.kv_put(&key, &json!(n), PutOptions::default()).await
                        {
                            let mut acked = acked.lock().unwrap();
                            let entry = acked.entry(key).or_insert(0);
                            *entry = (*entry).max(written.version);
                        }
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + next() % 250));
        child.kill().unwrap(); // SIGKILL: no shutdown path runs
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            total_acked += rt.block_on(writer).unwrap() as usize;
        }
    }
    let child = start_with(dir, port, flags);
    check(cycles);
    assert!(
        acked.lock().unwrap().len() > 10,
        "the load must have written under the kills ({total_acked} attempts)"
    );
    child
}

#[test]
fn print_config_merges_file_and_flags_and_a_second_server_on_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        "snapshot_every_commands = 1234\nmax_wait_ms = 9000\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:7799"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("snapshot_every_commands = 1234"),
        "{printed}"
    );
    assert!(printed.contains("127.0.0.1:7799"), "{printed}");
    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad config file is INVALID_ARGUMENT"
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(said.contains("no_such_setting"), "{said}");

    let port = free_port();
    let mut first = start(dir.path(), port);
    let mut second = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut second, Duration::from_secs(30));
    assert!(!status.success());
    let mut said = String::new();
    second
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(said.contains("locked"), "{said}");
    assert_eq!(status.code(), Some(10), "UNAVAILABLE");
    // The first server is unharmed.
    let rt = runtime();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "a").unwrap();
    rt.block_on(client.kv_put("ok/k", &json!(1), PutOptions::default()))
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
}
