//! `baton run` end to end: mutual exclusion of real processes doing a
//! read-modify-write on a file (and the lost updates without it), lease loss
//! stopping the command with exit 7, signal forwarding, and what the command
//! sees. Waits are on process exits and files, each with a bounded deadline.

mod server_support;

use std::process::{Child, Command};
use std::thread;
use std::time::Duration;

use server_support::{Reply, Server, wait_bounded, wait_for_file};

const ROUNDS: usize = 20;
const WORKERS: usize = 12;
/// Read, pause so that another writer can slip in, write back plus one.
const INCREMENT: &str = "n=$(cat count); sleep 0.01; echo $((${n:-0}+1)) > count";

fn read_count(server: &Server) -> usize {
    std::fs::read_to_string(server.path("count"))
        .expect("read count")
        .trim()
        .parse()
        .expect("count is a number")
}

#[test]
fn runs_under_one_lock_never_lose_an_update() {
    let server = Server::start();
    std::fs::write(server.path("count"), "0\n").unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let mut commands = Vec::new();
            for _ in 0..ROUNDS {
                let mut command = server.baton();
                command
                    .current_dir(server.dir.path())
                    .env("BATON_AGENT", format!("worker-{worker}"))
                    .args(["run", "--lock", "test/counter", "--wait", "60s", "--"])
                    .args(["sh", "-c", INCREMENT]);
                commands.push(command);
            }
            thread::spawn(move || {
                for mut command in commands {
                    let reply = Reply::of(&mut command);
                    assert_eq!(reply.code, 0, "baton run failed: {reply:?}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker failed");
    }
    assert_eq!(read_count(&server), WORKERS * ROUNDS);
    // Every run released its lock and closed its session.
    let status = server.run(&["status"]);
    assert_eq!(status.ok()["locks_held"], 0);
    assert_eq!(status.ok()["sessions"], 0);
}

#[test]
fn the_same_increments_without_a_lock_lose_updates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("count"), "0\n").unwrap();
    let script = format!("for i in $(seq {ROUNDS}); do {INCREMENT}; done");
    let children: Vec<Child> = (0..WORKERS)
        .map(|_| {
            Command::new("sh")
                .args(["-c", &script])
                .current_dir(dir.path())
                .spawn()
                .expect("spawn sh")
        })
        .collect();
    for child in children {
        wait_bounded(child);
    }
    let text = std::fs::read_to_string(dir.path().join("count")).unwrap();
    let count: usize = text.trim().parse().unwrap_or(0);
    assert!(
        count < WORKERS * ROUNDS,
        "{WORKERS} racing writers were expected to lose updates, got {count}"
    );
}

#[test]
fn a_lost_lease_stops_the_command_and_exits_7() {
    let server = Server::start();
    // The command writes its session id, then would run for a minute and
    // leave an end marker; killing the session must stop it first.
    let script =
        "echo $BATON_SESSION > started.tmp && mv started.tmp started; sleep 60; touch ended";
    let run = server
        .baton()
        .current_dir(server.dir.path())
        .args([
            "run",
            "--lock",
            "test/lost",
            "--ttl",
            "1s",
            "--grace",
            "2s",
            "--",
        ])
        .args(["sh", "-c", script])
        .spawn()
        .expect("spawn baton run");
    wait_for_file(&server.path("started"), Duration::from_secs(60));
    let session = std::fs::read_to_string(server.path("started")).unwrap();
    let killed = server.run(&["session", "kill", session.trim(), "--reason", "test"]);
    killed.ok();

    let reply = Reply::from_output(wait_bounded(run));
    let error = reply.err("FENCED", 7);
    assert!(
        error["message"].as_str().unwrap().contains("test/lost"),
        "{error}"
    );
    assert!(!server.path("ended").exists(), "the command ran to its end");
    // The whole process group was stopped: the `sleep 60` is gone too, so
    // the pipes closed (wait_bounded returned) without waiting a minute.
}

#[test]
fn a_lease_that_cannot_be_renewed_stops_the_command() {
    let mut server = Server::start();
    // A short lease, then the server goes away: no renewal can succeed, so
    // the command must be stopped once the lease would have ended.
    let script = "touch started; sleep 60; touch ended";
    let run = server
        .baton()
        .current_dir(server.dir.path())
        .args([
            "run",
            "--lock",
            "test/gone",
            "--ttl",
            "600ms",
            "--grace",
            "1s",
            "--",
        ])
        .args(["sh", "-c", script])
        .spawn()
        .expect("spawn baton run");
    wait_for_file(&server.path("started"), Duration::from_secs(60));
    server.stop();
    let reply = Reply::from_output(wait_bounded(run));
    let error = reply.err("FENCED", 7);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no renewal succeeded"),
        "{error}"
    );
    assert!(!server.path("ended").exists(), "the command ran to its end");
}

#[test]
fn the_command_sees_its_lock_and_its_exit_code_is_passed_on() {
    let server = Server::start();
    let script = "echo \"$BATON_LOCK_ID $BATON_FENCE $BATON_FENCE_KEY $BATON_SESSION\" > env; \
                  baton_out=$(\"$BATON_BIN\" kv put test/a 1 --fence \"$BATON_FENCE_KEY:$BATON_FENCE\"); \
                  echo \"$baton_out\" > put; exit 3";
    let run = Reply::of(
        server
            .baton()
            .current_dir(server.dir.path())
            .env("BATON_BIN", env!("CARGO_BIN_EXE_baton"))
            .args(["run", "--lock", "test/a", "--lock", "test/b", "--"])
            .args(["sh", "-c", script]),
    );
    assert_eq!(run.code, 3, "{run:?}");
    let env = std::fs::read_to_string(server.path("env")).unwrap();
    let fields: Vec<&str> = env.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{env:?}");
    assert_eq!(fields[2], "test/a");
    // The command's own fenced write went through while it held the lock.
    let put: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server.path("put")).unwrap()).unwrap();
    assert_eq!(put["ok"], true, "{put}");
    // And the lock was released after it, not expired.
    let state = server.run(&["lock", "status", fields[0]]);
    assert_eq!(state.ok()["status"], "released");
    assert_eq!(state.ok()["lock_id"].to_string(), fields[0]);
    let _ = fields[1].parse::<u64>().expect("BATON_FENCE is a number");
}

#[test]
fn sigterm_is_passed_to_the_command_and_the_lock_released() {
    let server = Server::start();
    let script = "trap 'touch terminated; exit 5' TERM; touch started; \
                  while :; do sleep 0.05; done";
    let run = server
        .baton()
        .current_dir(server.dir.path())
        .args(["run", "--lock", "test/sig", "--"])
        .args(["sh", "-c", script])
        .spawn()
        .expect("spawn baton run");
    wait_for_file(&server.path("started"), Duration::from_secs(60));
    let status = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reply = Reply::from_output(wait_bounded(run));
    assert_eq!(reply.code, 5, "the command's own exit code: {reply:?}");
    assert!(server.path("terminated").exists());
    let key = server.run(&["lock", "status", "--key", "test/sig"]);
    assert!(
        key.ok()["holders"].as_array().unwrap().is_empty(),
        "{key:?}"
    );
}

#[test]
fn keys_still_held_after_the_wait_are_exit_6_and_nothing_runs() {
    let server = Server::start();
    let holder = Reply::of(server.baton().env("BATON_AGENT", "holder").args([
        "lock",
        "acquire",
        "test/busy",
        "--ttl",
        "1m",
    ]));
    holder.ok();
    let run = Reply::of(server.baton().current_dir(server.dir.path()).args([
        "run",
        "--lock",
        "test/busy",
        "--wait",
        "200ms",
        "--",
        "touch",
        "ran",
    ]));
    let error = run.err("CONCURRENT_MODIFICATION", 6);
    assert!(error["retry_after_ms"].as_u64().is_some());
    assert!(!server.path("ran").exists());
}
