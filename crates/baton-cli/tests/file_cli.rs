//! `baton file` end to end: the real binary, as real concurrent processes.
//! Waits are on events (a line on a pipe, a process exit) with bounded
//! deadlines; the only sleeps pick random SIGKILL moments in the crash test.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Upper bound for any one process in these tests; reaching it is a failure.
const PROCESS_DEADLINE: Duration = Duration::from_secs(120);

fn baton() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .env("BATON_OUTPUT", "json")
        .env_remove("BATON_INSTANCE_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` to exit, killing it and failing past the deadline.
fn wait_bounded(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > PROCESS_DEADLINE {
            let _ = child.kill();
            panic!("a baton process ran past {PROCESS_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The exit code and the JSON envelope a `baton` process printed.
struct Reply {
    code: i32,
    envelope: Value,
}

impl Reply {
    fn from_output(output: Output) -> Reply {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let envelope = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON envelope ({e}): {stdout:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        Reply {
            code: output.status.code().expect("baton exited by a signal"),
            envelope,
        }
    }

    fn result(&self) -> &Value {
        assert_eq!(self.envelope["ok"], true, "{}", self.envelope);
        &self.envelope["result"]
    }

    fn error(&self) -> &Value {
        assert_eq!(self.envelope["ok"], false, "{}", self.envelope);
        &self.envelope["error"]
    }

    /// Asserts the failure's code and exit code.
    fn assert_error(&self, code: &str, exit: i32) -> &Value {
        let error = self.error();
        assert_eq!(error["code"], code, "{}", self.envelope);
        assert_eq!(self.code, exit, "{}", self.envelope);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        error
    }
}

fn run(args: &[&str]) -> Reply {
    Reply::from_output(wait_bounded(
        baton().args(args).spawn().expect("spawn baton"),
    ))
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Reply {
    let mut child = baton()
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn baton");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    Reply::from_output(wait_bounded(child))
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).expect("the file is valid JSON")
}

fn temp_leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".baton-tmp."))
        .collect()
}

/// A process that holds `path`'s lock through `baton file exec` until told
/// to let go; its pid is the lock holder's.
struct Holder {
    child: Child,
    release: Option<ChildStdin>,
}

impl Holder {
    /// Returns once the lock is held: the command under the lock prints a
    /// line, which it can only do after baton took the lock.
    fn start(path: &Path) -> Holder {
        let mut child = baton()
            .args([
                "file",
                "exec",
                "--lock",
                s(path),
                "--",
                "sh",
                "-c",
                "echo held; read line",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(PROCESS_DEADLINE)
            .expect("the holder did not take the lock in time");
        assert_eq!(line.trim(), "held");
        let release = child.stdin.take();
        Holder { child, release }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the command finish; returns baton's exit code.
    fn release(mut self) -> i32 {
        if let Some(mut stdin) = self.release.take() {
            stdin.write_all(b"go\n").expect("tell the holder to finish");
        }
        let output = wait_bounded(self.child);
        output.status.code().expect("exit code")
    }
}

// --- The acceptance tests from the issue --------------------------------

#[test]
fn a_hundred_concurrent_sets_of_different_keys_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    fs::write(&path, "{\"existing\": true}\n").unwrap();
    // The wait is generous: this test is about merging, not speed.
    let children: Vec<Child> = (0..100)
        .map(|i| {
            baton()
                .args(["file", "--lock-timeout", "60s", "set", s(&path)])
                .arg(format!("key{i}={i}"))
                .spawn()
                .expect("spawn baton")
        })
        .collect();
    for child in children {
        let reply = Reply::from_output(wait_bounded(child));
        assert_eq!(reply.code, 0, "{}", reply.envelope);
        assert_eq!(reply.result()["changed"], true);
    }
    let value = read_json(&path);
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 101, "{value}");
    assert_eq!(object["existing"], true);
    for i in 0..100 {
        assert_eq!(object[&format!("key{i}")], i, "key{i} is missing or wrong");
    }
    assert!(temp_leftovers(dir.path()).is_empty());
}

#[test]
fn twenty_agents_times_twenty_optimistic_increments_make_400() {
    const AGENTS: usize = 20;
    const ROUNDS: usize = 20;
    const MAX_ATTEMPTS_PER_ROUND: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.json");
    fs::write(&path, "{\"n\": 0, \"note\": \"keep me\"}\n").unwrap();
    let agents: Vec<_> = (0..AGENTS)
        .map(|_| {
            let path = path.clone();
            thread::spawn(move || {
                let mut conflicts = 0;
                for _ in 0..ROUNDS {
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        assert!(attempts <= MAX_ATTEMPTS_PER_ROUND, "no progress");
                        let read = run(&["file", "get", s(&path), "n"]);
                        assert_eq!(read.code, 0, "{}", read.envelope);
                        let n = read.result()["value"].as_i64().unwrap();
                        let version = read.result()["version"].as_str().unwrap().to_owned();
                        let write = run(&[
                            "file",
                            "--lock-timeout",
                            "60s",
                            "set",
                            s(&path),
                            &format!("n={}", n + 1),
                            "--if-version",
                            &version,
                        ]);
                        match write.code {
                            0 => {
                                assert_eq!(write.result()["previous_version"], version.as_str());
                                break;
                            }
                            6 => {
                                let error = write.assert_error("CONCURRENT_MODIFICATION", 6);
                                assert_eq!(error["retry_after_ms"], 0);
                                assert_ne!(error["details"]["current_version"], version.as_str());
                                conflicts += 1;
                            }
                            _ => panic!("unexpected reply: {}", write.envelope),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: usize = agents.into_iter().map(|a| a.join().unwrap()).sum();
    let value = read_json(&path);
    assert_eq!(value["n"], (AGENTS * ROUNDS) as i64, "{value}");
    assert_eq!(value["note"], "keep me");
    eprintln!("{conflicts} version conflicts were retried");
}

#[test]
fn lock_timeout_zero_against_a_held_lock_is_exit_6_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    fs::write(&path, "{\"a\": 1}\n").unwrap();
    let before = fs::read(&path).unwrap();
    let holder = Holder::start(&path);

    let contenders: Vec<Child> = ["b=2", "c=3"]
        .iter()
        .map(|assignment| {
            baton()
                .args(["file", "--lock-timeout", "0", "set", s(&path), assignment])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in contenders {
        let reply = Reply::from_output(wait_bounded(child));
        let error = reply.assert_error("CONCURRENT_MODIFICATION", 6);
        assert!(error["retry_after_ms"].as_u64().is_some(), "{error}");
        let holder_info = &error["details"]["holder"];
        assert_eq!(holder_info["pid"], holder.pid(), "{error}");
        assert_eq!(holder_info["operation"], "exec");
        assert!(holder_info["since"].as_str().unwrap().ends_with('Z'));
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("pid {}", holder.pid()))
        );
    }
    // The other writes honour the lock too.
    run_with_stdin(&["file", "--lock-timeout", "0", "write", s(&path)], b"{}")
        .assert_error("CONCURRENT_MODIFICATION", 6);
    assert_eq!(fs::read(&path).unwrap(), before);

    assert_eq!(holder.release(), 0);
    let reply = run(&["file", "--lock-timeout", "0", "set", s(&path), "b=2"]);
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    assert_eq!(read_json(&path), json!({"a": 1, "b": 2}));
}

#[test]
fn a_waiting_writer_proceeds_once_the_lock_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let holder = Holder::start(&path);
    // The lock is held, so this writer can only succeed after the release.
    let waiter = baton()
        .args([
            "file",
            "--lock-timeout",
            "60s",
            "set",
            s(&path),
            "late=true",
        ])
        .spawn()
        .unwrap();
    assert_eq!(holder.release(), 0);
    let reply = Reply::from_output(wait_bounded(waiter));
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    assert_eq!(read_json(&path), json!({"late": true}));
}

#[test]
fn a_killed_exec_leaves_the_lock_with_its_command_and_then_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut holder = Holder::start(&path);
    holder.child.kill().unwrap(); // SIGKILL of baton: no cleanup runs
    holder.child.wait().unwrap();
    // Its command still runs, and still holds the lock it inherited: a
    // writer now would write under it (found in review: `timeout` or a
    // supervisor's SIGTERM used to free the lock under a running command).
    let refused = run(&["file", "--lock-timeout", "0", "set", s(&path), "x=1"]);
    refused.assert_error("CONCURRENT_MODIFICATION", 6);
    assert!(!path.exists(), "nothing applied");
    // Once the command exits too, the lock is free: nothing stale is left
    // for anyone to clean up.
    drop(holder.release.take()); // the orphaned `sh` reads EOF and exits
    let reply = run(&["file", "--lock-timeout", "30s", "set", s(&path), "x=1"]);
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    assert_eq!(read_json(&path), json!({"x": 1}));
}

#[test]
fn sigkill_during_rewrites_of_a_large_file_leaves_old_or_new_never_partial() {
    const KILLS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    let big = |tag: &str| -> Vec<u8> {
        let entries: serde_json::Map<String, Value> = (0..60_000)
            .map(|i| {
                (
                    format!("k{i:05}"),
                    json!(format!("{tag}-{i}-padding-padding")),
                )
            })
            .collect();
        serde_json::to_vec_pretty(&Value::Object(entries)).unwrap()
    };
    let contents = [big("old"), big("new")];
    let sources: Vec<PathBuf> = contents
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let source = dir.path().join(format!("source{i}"));
            fs::write(&source, bytes).unwrap();
            source
        })
        .collect();
    let writer = |which: usize| -> Child {
        baton()
            .args(["file", "--format", "raw", "write", s(&path)])
            .stdin(fs::File::open(&sources[which]).unwrap())
            .spawn()
            .unwrap()
    };
    fs::write(&path, &contents[0]).unwrap();

    // One uninterrupted write, to spread the kills over a whole write.
    let started = Instant::now();
    let reply = Reply::from_output(wait_bounded(writer(1)));
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    let full_write = started.elapsed();
    assert_eq!(fs::read(&path).unwrap(), contents[1]);

    let mut current = 1;
    let mut rng = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut interrupted = 0;
    let mut mid_write = 0;
    for _ in 0..KILLS {
        let next = 1 - current;
        let mut child = writer(next);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Spread over the whole run, weighted to its end where the temp
        // file is written, synced and renamed.
        let delay = full_write.mul_f64(0.2 + (rng % 1000) as f64 / 1000.0 * 0.9);
        thread::sleep(delay); // picks the moment to kill, not a synchronisation
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if !temp_leftovers(dir.path()).is_empty() {
            mid_write += 1;
        }
        let now = fs::read(&path).unwrap();
        if now == contents[next] {
            current = next;
        } else {
            assert!(
                now == contents[current],
                "the file is neither the old nor the new content ({} bytes)",
                now.len()
            );
            if status.code().is_none() {
                interrupted += 1;
            }
        }
        serde_json::from_slice::<Value>(&now).expect("the file always parses");
    }
    eprintln!(
        "{interrupted} of {KILLS} writers were killed before their rename, {mid_write} with a temp file written"
    );

    // Killed writers hold no lock, and the next write clears their temp files.
    let reply = Reply::from_output(wait_bounded(
        baton()
            .args([
                "file",
                "--lock-timeout",
                "0",
                "--format",
                "raw",
                "write",
                s(&path),
            ])
            .stdin(fs::File::open(&sources[0]).unwrap())
            .spawn()
            .unwrap(),
    ));
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    assert_eq!(fs::read(&path).unwrap(), contents[0]);
    assert!(
        temp_leftovers(dir.path()).is_empty(),
        "{:?}",
        temp_leftovers(dir.path())
    );
}

// --- Field-level edits, versions, formats --------------------------------

#[test]
fn get_set_unset_merge_write_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let set = run(&[
        "file",
        "set",
        s(&path),
        "server.port=8080",
        "theme=dark",
        "tags=[\"a\"]",
        "quoted=\"8080\"",
    ]);
    assert_eq!(set.result()["previous_version"], "absent");
    let version = set.result()["version"].as_str().unwrap().to_owned();
    assert!(version.starts_with("sha256:") && version.len() == 7 + 64);

    let got = run(&["file", "get", s(&path)]);
    assert_eq!(got.result()["version"], version.as_str());
    assert_eq!(got.result()["format"], "json");
    assert_eq!(
        got.result()["value"],
        json!({"server": {"port": 8080}, "theme": "dark", "tags": ["a"], "quoted": "8080"})
    );
    assert_eq!(
        run(&["file", "get", s(&path), "server.port"]).result()["value"],
        8080
    );
    let missing_key = run(&["file", "get", s(&path), "server.host"]);
    let error = missing_key.assert_error("NOT_FOUND", 3);
    assert_eq!(error["details"]["version"], version.as_str());

    run(&["file", "unset", s(&path), "tags", "not.there"]).result();
    let merged = run(&[
        "file",
        "merge",
        s(&path),
        r#"{"server": {"host": "h"}, "theme": null}"#,
    ]);
    assert_eq!(merged.result()["changed"], true);
    let merged = run_with_stdin(&["file", "merge", s(&path), "-"], br#"{"extra": 1}"#);
    assert_eq!(merged.result()["changed"], true);
    // Key order is the file's.
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "{\n  \"server\": {\n    \"port\": 8080,\n    \"host\": \"h\"\n  },\n  \"quoted\": \"8080\",\n  \"extra\": 1\n}\n"
    );

    let unchanged = run(&["file", "set", s(&path), "extra=1"]);
    assert_eq!(unchanged.result()["changed"], false);

    let written = run_with_stdin(&["file", "write", s(&path)], b"[1, 2]\n");
    assert_eq!(written.result()["changed"], true);
    assert_eq!(fs::read(&path).unwrap(), b"[1, 2]\n");
}

#[test]
fn if_version_conflicts_carry_the_current_version_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let created = run(&["file", "set", s(&path), "n=1", "--if-version", "absent"]);
    assert_eq!(created.code, 0, "{}", created.envelope);
    let version = created.result()["version"].as_str().unwrap().to_owned();
    let before = fs::read(&path).unwrap();

    let again = run(&["file", "set", s(&path), "n=1", "--if-version", "absent"]);
    let error = again.assert_error("CONCURRENT_MODIFICATION", 6);
    assert_eq!(error["details"]["current_version"], version.as_str());
    assert_eq!(error["details"]["current_value"], json!({"n": 1}));
    assert_eq!(error["retry_after_ms"], 0);

    let stale = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for reply in [
        run(&["file", "set", s(&path), "n=2", "--if-version", stale]),
        run(&["file", "unset", s(&path), "n", "--if-version", stale]),
        run(&["file", "merge", s(&path), "{}", "--if-version", stale]),
        run_with_stdin(&["file", "write", s(&path), "--if-version", stale], b"{}"),
    ] {
        reply.assert_error("CONCURRENT_MODIFICATION", 6);
    }
    assert_eq!(fs::read(&path).unwrap(), before);
    let ok = run(&["file", "set", s(&path), "n=2", "--if-version", &version]);
    assert_eq!(ok.code, 0, "{}", ok.envelope);
}

#[test]
fn toml_edits_keep_comments_and_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let original = "# My tool's settings\nname = \"demo\"   # shown in the title\n\n[server]\n# change with care\nport = 80\n";
    fs::write(&path, original).unwrap();
    let reply = run(&[
        "file",
        "set",
        s(&path),
        "server.port=8080",
        "server.tls=true",
    ]);
    assert_eq!(reply.code, 0, "{}", reply.envelope);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "# My tool's settings\nname = \"demo\"   # shown in the title\n\n[server]\n# change with care\nport = 8080\ntls = true\n"
    );
    assert_eq!(
        run(&["file", "get", s(&path)]).result()["value"],
        json!({"name": "demo", "server": {"port": 8080, "tls": true}})
    );
    run(&["file", "merge", s(&path), r#"{"server": {"tls": null}}"#]).result();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        original.replace("port = 80", "port = 8080")
    );
    // --format overrides the extension.
    let other = dir.path().join("settings.conf");
    fs::write(&other, "a = 1\n").unwrap();
    run(&["file", "get", s(&other), "a"]).assert_error("INVALID_ARGUMENT", 2);
    assert_eq!(
        run(&["file", "--format", "toml", "get", s(&other), "a"]).result()["value"],
        1
    );
}

#[test]
fn instance_id_keeps_each_agents_state_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    run(&["file", "--instance-id", "agent-1", "set", s(&path), "who=1"]).result();
    let reply = Reply::from_output(wait_bounded(
        baton()
            .args(["file", "set", s(&path), "who=2"])
            .env("BATON_INSTANCE_ID", "agent-2")
            .spawn()
            .unwrap(),
    ));
    assert_eq!(
        reply.result()["path"],
        s(&dir.path().join("instances/agent-2/state.json"))
    );
    assert_eq!(
        read_json(&dir.path().join("instances/agent-1/state.json")),
        json!({"who": 1})
    );
    assert_eq!(
        read_json(&dir.path().join("instances/agent-2/state.json")),
        json!({"who": 2})
    );
    assert!(!path.exists());
    run(&["file", "--instance-id", "../escape", "set", s(&path), "x=1"])
        .assert_error("INVALID_ARGUMENT", 2);
    let exec = wait_bounded(
        baton()
            .args([
                "file",
                "--instance-id",
                "agent-3",
                "exec",
                "--lock",
                s(&path),
                "--",
                "true",
            ])
            .spawn()
            .unwrap(),
    );
    assert_eq!(exec.status.code(), Some(0));
    assert!(
        exec.stdout.is_empty(),
        "exec prints only what the command prints"
    );
    assert!(
        dir.path()
            .join("instances/agent-3/state.json.lock")
            .exists()
    );
}

#[test]
fn exec_passes_the_commands_exit_status_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let output = wait_bounded(
        baton()
            .args([
                "file",
                "exec",
                "--lock",
                s(&path),
                "--",
                "sh",
                "-c",
                "echo \"$BATON_FILE_LOCK\"; exit 7",
            ])
            .spawn()
            .unwrap(),
    );
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        s(&dir.path().join("c.json.lock"))
    );
    run(&["file", "exec", "--lock", s(&path), "--", "/no/such/command"])
        .assert_error("NOT_FOUND", 3);
}

// --- Bad input: a clear error, and the file untouched --------------------

#[test]
fn unparseable_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("bad.json", &b"{\"a\": 1,"[..]), ("bad.toml", b"a = = 1\n")] {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        for reply in [
            run(&["file", "set", s(&path), "b=1"]),
            run(&["file", "unset", s(&path), "a"]),
            run(&["file", "merge", s(&path), "{\"b\":1}"]),
            run(&["file", "get", s(&path)]),
        ] {
            let error = reply.assert_error("INVALID_ARGUMENT", 2);
            assert!(error["message"].as_str().unwrap().contains(name), "{error}");
        }
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
    // New content that does not parse is not written either.
    let path = dir.path().join("good.json");
    fs::write(&path, "{}").unwrap();
    run_with_stdin(&["file", "write", s(&path)], b"{oops").assert_error("INVALID_ARGUMENT", 2);
    run(&["file", "merge", s(&path), "{oops"]).assert_error("INVALID_ARGUMENT", 2);
    run(&["file", "set", s(&path), "bad..key=1"]).assert_error("INVALID_ARGUMENT", 2);
    run(&["file", "set", s(&path), "no-equals-sign"]).assert_error("INVALID_ARGUMENT", 2);
    assert_eq!(fs::read(&path).unwrap(), b"{}");
}

#[test]
fn key_paths_into_non_objects_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let original = b"{\"port\": 80, \"list\": [1, 2]}\n";
    fs::write(&path, original).unwrap();
    for reply in [
        run(&["file", "set", s(&path), "port.number=1"]),
        run(&["file", "set", s(&path), "list.0=1"]),
        run(&["file", "unset", s(&path), "port.number"]),
        run(&["file", "get", s(&path), "port.number"]),
    ] {
        let error = reply.assert_error("INVALID_ARGUMENT", 2);
        assert!(
            error["message"].as_str().unwrap().contains("not an object"),
            "{error}"
        );
    }
    // All or nothing: a good assignment next to a bad one is not applied.
    run(&["file", "set", s(&path), "ok=1", "port.x=1"]).assert_error("INVALID_ARGUMENT", 2);
    assert_eq!(fs::read(&path).unwrap(), original);
    let toml = dir.path().join("c.toml");
    fs::write(&toml, "a = 1\n").unwrap();
    run(&["file", "set", s(&toml), "b=null"]).assert_error("INVALID_ARGUMENT", 2);
    assert_eq!(fs::read(&toml).unwrap(), b"a = 1\n");
}

#[test]
fn missing_files_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.json");
    let error = run(&["file", "get", s(&path)])
        .assert_error("NOT_FOUND", 3)
        .clone();
    assert_eq!(error["details"]["version"], "absent");
    run(&["file", "unset", s(&path), "a"]).assert_error("NOT_FOUND", 3);
    let in_missing_dir = dir.path().join("no/such/dir/c.json");
    run(&["file", "set", s(&in_missing_dir), "a=1"]).assert_error("NOT_FOUND", 3);
    assert!(!path.exists());
    assert!(!dir.path().join("no").exists());
}

#[test]
fn directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub.json");
    fs::create_dir(&sub).unwrap();
    for reply in [
        run(&["file", "get", s(&sub)]),
        run(&["file", "set", s(&sub), "a=1"]),
        run_with_stdin(&["file", "write", s(&sub)], b"{}"),
        run(&["file", "exec", "--lock", s(&sub), "--", "true"]),
    ] {
        let error = reply.assert_error("INVALID_ARGUMENT", 2);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("is a directory"),
            "{error}"
        );
    }
    assert!(sub.is_dir());
    assert_eq!(fs::read_dir(&sub).unwrap().count(), 0);
}

#[test]
fn no_permission_is_permission_denied_and_untouched() {
    // Root ignores file modes, so as root the commands run as `nobody`.
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    fs::write(&probe, "").unwrap();
    let as_root = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&probe).unwrap()) == 0;
    // `nobody` may not reach the build folder, so it runs a copy from here.
    let binary = dir.path().join("baton");
    fs::copy(env!("CARGO_BIN_EXE_baton"), &binary).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let restricted = |args: &[&str], stdin: Option<&[u8]>| -> Reply {
        let mut command = baton();
        command.args(args);
        if as_root {
            command = Command::new(&binary);
            command
                .args(args)
                .current_dir(dir.path())
                .env("BATON_OUTPUT", "json")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            std::os::unix::process::CommandExt::uid(&mut command, 65534);
            std::os::unix::process::CommandExt::gid(&mut command, 65534);
        }
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("spawn baton");
        if let Some(bytes) = stdin {
            child.stdin.take().unwrap().write_all(bytes).unwrap();
        }
        Reply::from_output(wait_bounded(child))
    };
    // The folder is open to everyone; the file is not writable (0444) or not
    // even readable (0000) by the caller.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let read_only = dir.path().join("read_only.json");
    fs::write(&read_only, "{\"a\": 1}").unwrap();
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o444)).unwrap();
    let secret = dir.path().join("secret.json");
    fs::write(&secret, "{\"token\": \"x\"}").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    if !as_root {
        // Without root, "not writable" must come from the mode alone.
        assert_eq!(
            fs::metadata(&read_only).unwrap().permissions().mode() & 0o222,
            0
        );
    }
    for reply in [
        restricted(&["file", "set", s(&read_only), "a=2"], None),
        restricted(&["file", "write", s(&read_only)], Some(b"{}")),
        restricted(&["file", "get", s(&secret)], None),
        restricted(&["file", "set", s(&secret), "a=2"], None),
    ] {
        reply.assert_error("PERMISSION_DENIED", 4);
    }
    assert_eq!(fs::read(&read_only).unwrap(), b"{\"a\": 1}");
    assert_eq!(fs::read(&secret).unwrap(), b"{\"token\": \"x\"}");

    // A folder the caller may not write: no lock file, no temp file.
    let locked_dir = dir.path().join("locked");
    fs::create_dir(&locked_dir).unwrap();
    let inside = locked_dir.join("c.json");
    fs::write(&inside, "{}").unwrap();
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o555)).unwrap();
    restricted(&["file", "set", s(&inside), "a=1"], None).assert_error("PERMISSION_DENIED", 4);
    assert_eq!(fs::read(&inside).unwrap(), b"{}");
    assert_eq!(fs::read_dir(&locked_dir).unwrap().count(), 1);
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o755)).unwrap();
}

// --- Output contract -----------------------------------------------------

#[test]
fn text_mode_prints_values_for_people_and_errors_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    fs::write(&path, "{\"theme\": \"dark\", \"n\": 3}").unwrap();
    let text = |args: &[&str]| {
        wait_bounded(
            baton()
                .arg("--output")
                .arg("text")
                .args(args)
                .spawn()
                .unwrap(),
        )
    };
    let out = text(&["file", "get", s(&path), "theme"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dark\n");
    let out = text(&["file", "set", s(&path), "n.x=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_with_the_error_envelope_in_json_mode() {
    let run = |args: &[&str]| wait_bounded(baton().args(args).spawn().unwrap());
    let refused = |out: &Output| -> Value {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "JSON mode keeps stderr quiet: {out:?}"
        );
        let envelope: Value = serde_json::from_slice(&out.stdout).expect("one JSON envelope");
        assert_eq!(envelope["ok"], false);
        assert_eq!(envelope["error"]["code"], "INVALID_ARGUMENT", "{envelope}");
        envelope["error"].clone()
    };
    let missing = refused(&run(&["file", "set"]));
    assert!(
        missing["details"]["usage"]
            .as_str()
            .unwrap()
            .starts_with("baton file set"),
        "{missing}"
    );
    let bad_value = refused(&run(&["file", "--lock-timeout", "soon", "get", "x.json"]));
    assert!(
        bad_value["details"]["argument"]
            .as_str()
            .unwrap()
            .contains("--lock-timeout"),
        "{bad_value}"
    );
    assert!(
        bad_value["message"].as_str().unwrap().contains("soon"),
        "{bad_value}"
    );
    refused(&run(&["file", "exec", "--lock", "x.json"]));
    // Without BATON_OUTPUT (JSON by default, stdout being a pipe), clap
    // answers a bare command with its help, not a usage error.
    for alone in [&["file"][..], &["lock"][..], &[][..]] {
        let bare = baton()
            .env_remove("BATON_OUTPUT")
            .args(alone)
            .spawn()
            .unwrap();
        let missing = refused(&wait_bounded(bare));
        let message = missing["message"].as_str().unwrap();
        assert!(
            message.contains("subcommand") && !message.contains("Coordination for many agents"),
            "{alone:?}: {missing}"
        );
        assert!(
            missing["details"]["usage"]
                .as_str()
                .unwrap()
                .starts_with("baton"),
            "{missing}"
        );
    }
    refused(&run(&["lock", "acquire", "jobs/x", "--no-such-flag"]));

    // Text mode: clap's own words on stderr, same exit code; `-o` wins over
    // BATON_OUTPUT even on a line clap refused.
    let out = run(&["-o", "text", "file", "set"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Usage: baton file set"), "{stderr}");
    // `baton mcp` speaks the protocol on stdout: its usage errors stay on stderr.
    let out = run(&["mcp", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    // Help is an answer, not a failure.
    let help = run(&["file", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: baton file"));
}

#[test]
fn fifos_and_devices_are_refused_without_blocking_or_replacing_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // A read of a FIFO would block forever (with the lock held, for set);
    // wait_bounded fails the test if it does.
    for args in [
        vec!["file", "get", s(&fifo)],
        vec!["file", "set", s(&fifo), "a=1"],
        vec!["file", "--format", "raw", "write", s(&fifo)],
    ] {
        let reply = run_with_stdin(&args, b"x");
        let error = reply.assert_error("INVALID_ARGUMENT", 2);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("not a regular file"),
            "{error}"
        );
    }
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // Through a symlink too.
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    run(&["file", "set", s(&link), "a=1"]).assert_error("INVALID_ARGUMENT", 2);
}

#[test]
fn a_bracket_in_a_key_path_is_refused_not_taken_as_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    fs::write(&path, "{\"a\": {\"b\": [1, 2]}}\n").unwrap();
    let before = fs::read(&path).unwrap();
    let reply = run(&["file", "set", s(&path), "a.b[0]=9"]);
    let error = reply.assert_error("INVALID_ARGUMENT", 2);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no array indexing"),
        "{error}"
    );
    assert_eq!(fs::read(&path).unwrap(), before, "nothing applied");
    // Escaped, a bracket is part of a key name.
    run(&["file", "set", s(&path), r"a.b\[0\]=9"]).result();
    assert_eq!(read_json(&path), json!({"a": {"b": [1, 2], "b[0]": 9}}));
}
