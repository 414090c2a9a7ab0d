//! The `baton` client subcommands end to end against a real `baton serve`:
//! every subcommand's JSON shape and exit code, text mode, bad arguments,
//! and a server that is not there. Waits are on process exits and lines on
//! pipes, each with a bounded deadline.

mod server_support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use server_support::{Lines, Reply, Server, baton_command, wait_bounded};

fn u64_of(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn sessions_open_keepalive_get_list_close_and_kill() {
    let server = Server::start();
    let opened = server.run(&["session", "open", "--ttl", "30s"]);
    let session = opened.ok();
    assert_eq!(session["agent"], "tester");
    assert_eq!(session["ttl_ms"], 30_000);
    let id = u64_of(&session["session_id"]).to_string();

    let kept = server.run(&["session", "keepalive", &id]);
    assert_eq!(kept.ok()["session_id"], session["session_id"]);
    // The id may come from BATON_SESSION instead of the argument.
    let got = Reply::of(
        server
            .baton()
            .env("BATON_SESSION", &id)
            .args(["session", "get"]),
    );
    assert!(u64_of(&got.ok()["expires_at"]) >= u64_of(&session["expires_at"]));
    let listed = server.run(&["session", "list"]);
    assert_eq!(listed.ok()["sessions"].as_array().unwrap().len(), 1);

    let closed = server.run(&["session", "close", &id]);
    assert_eq!(closed.ok()["session_id"], session["session_id"]);
    // A session that ended is FENCED (exit 7), one never seen NOT_FOUND (exit 3).
    server.run(&["session", "get", &id]).err("FENCED", 7);
    server
        .run(&["session", "get", "999999"])
        .err("NOT_FOUND", 3);

    // Admin kill takes the locks of another agent's session away.
    let other = Reply::of(
        server
            .baton()
            .env("BATON_AGENT", "victim")
            .args(["session", "open"]),
    );
    let other_id = u64_of(&other.ok()["session_id"]).to_string();
    let held = Reply::of(server.baton().env("BATON_AGENT", "victim").args([
        "lock",
        "acquire",
        "jobs/x",
        "--session",
        &other_id,
    ]));
    let lock_id = u64_of(&held.ok()["lock_id"]).to_string();
    let killed = server.run(&["session", "kill", &other_id, "--reason", "stuck"]);
    assert_eq!(killed.ok()["agent"], "victim");
    let state = server.run(&["lock", "status", &lock_id]);
    assert_eq!(state.ok()["status"], "killed");
    // Without an id or BATON_SESSION: a usage error that names the argument.
    let missing = server.run(&["session", "keepalive"]);
    assert!(
        missing.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("BATON_SESSION")
    );
}

#[test]
fn locks_acquire_status_list_renew_release_and_fence() {
    let server = Server::start();
    let acquired = server.run(&[
        "lock",
        "acquire",
        "inv/a",
        "inv/b",
        "--ttl",
        "30s",
        "--lock-delay",
        "1s",
    ]);
    let lock = acquired.ok();
    assert_eq!(lock["status"], "held");
    assert_eq!(lock["mode"], "exclusive");
    assert_eq!(lock["keys"], json!(["inv/a", "inv/b"]));
    let lock_id = u64_of(&lock["lock_id"]).to_string();
    let fence = u64_of(&lock["fence_token"]);

    // Another agent waits, then gets CONCURRENT_MODIFICATION with the holders.
    let contended = Reply::of(
        server
            .baton()
            .env("BATON_AGENT", "rival")
            .args(["lock", "acquire", "inv/b", "--ttl", "5s", "--wait", "200ms"]),
    );
    let error = contended.err("CONCURRENT_MODIFICATION", 6);
    assert!(error["retry_after_ms"].as_u64().is_some(), "{error}");
    assert!(error["message"].as_str().unwrap().contains("inv/b"));

    let state = server.run(&["lock", "status", &lock_id]);
    assert_eq!(state.ok()["fence_token"], fence);
    let key = server.run(&["lock", "status", "--key", "inv/a"]);
    assert_eq!(key.ok()["holders"][0]["lock_id"], lock["lock_id"]);
    let list = server.run(&["lock", "list", "--prefix", "inv/"]);
    assert_eq!(list.ok()["keys"].as_array().unwrap().len(), 2);

    let renewed = server.run(&["lock", "renew", &lock_id, "--ttl", "1m"]);
    assert!(u64_of(&renewed.ok()["expires_at"]) > u64_of(&lock["expires_at"]));

    let valid = server.run(&["fence", "check", "inv/a", &fence.to_string()]);
    assert_eq!(valid.ok()["valid"], true);
    let stale = server.run(&["fence", "check", "inv/a", &(fence - 1).to_string()]);
    assert_eq!(stale.ok()["valid"], false);

    // A write fenced with the current token passes; after release it is FENCED.
    let fence_arg = format!("inv/a:{fence}");
    let fenced_put = server.run(&["kv", "put", "inv/a", "1", "--fence", &fence_arg]);
    fenced_put.ok();
    let released = server.run(&["lock", "release", &lock_id]);
    assert_eq!(released.ok()["released"], true);
    let again = server.run(&["lock", "release", &lock_id]);
    assert_eq!(again.ok()["released"], false);
    server
        .run(&["kv", "put", "inv/a", "2", "--fence", &fence_arg])
        .err("FENCED", 7);
    server.run(&["lock", "renew", &lock_id]).err("FENCED", 7);

    // Shared locks coexist.
    let first = server.run(&["lock", "acquire", "rep/q3", "--shared", "--ttl", "5s"]);
    first.ok();
    let second = Reply::of(
        server
            .baton()
            .env("BATON_AGENT", "reader-2")
            .args(["lock", "acquire", "rep/q3", "--shared", "--ttl", "5s"]),
    );
    assert_eq!(second.ok()["mode"], "shared");
}

#[test]
fn a_lock_acquired_with_read_answers_with_its_keys_values() {
    let server = Server::start();
    server.run(&["kv", "put", "cfg/a", r#"{"x":1}"#]).ok();
    let lock = server.run(&[
        "lock", "acquire", "cfg/a", "cfg/none", "--ttl", "5s", "--read",
    ]);
    let values = lock.ok()["values"].as_array().unwrap().clone();
    assert_eq!(values.len(), 1, "only the key that exists: {values:?}");
    assert_eq!(values[0]["key"], "cfg/a");
    assert_eq!(values[0]["value"], json!({"x": 1}));
    let id = u64_of(&lock.ok()["lock_id"]).to_string();
    server.run(&["lock", "release", &id]).ok();

    // Text mode lists every locked key; without --read there are no values.
    let text = Reply::of(server.baton().env("BATON_OUTPUT", "text").args([
        "lock", "acquire", "cfg/a", "cfg/none", "--ttl", "5s", "--read",
    ]));
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("\ncfg/a = {\"x\":1} (version "),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("\ncfg/none: does not exist"),
        "{}",
        text.stdout
    );
    let text_id = text.stdout.split_whitespace().nth(1).unwrap().to_string();
    server.run(&["lock", "release", &text_id]).ok();
    let plain = server.run(&["lock", "acquire", "cfg/a", "--ttl", "5s"]);
    assert!(plain.ok().get("values").is_none());
}

#[test]
fn a_write_with_release_hands_the_lock_to_the_next_waiter() {
    let server = Server::start();
    let lock = server.run(&["lock", "acquire", "rel/k", "--ttl", "30s"]);
    let (lock_id, fence) = (
        u64_of(&lock.ok()["lock_id"]).to_string(),
        u64_of(&lock.ok()["fence_token"]),
    );
    // A rival queues for the lock in the background ...
    let rival = server
        .baton()
        .env("BATON_AGENT", "rival")
        .args(["lock", "acquire", "rel/k", "--ttl", "30s", "--wait", "20s"])
        .spawn()
        .expect("spawn rival");
    let started = std::time::Instant::now();
    while server.run(&["lock", "status", "--key", "rel/k"]).ok()["waiters"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the wait never showed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // ... and is granted by the fenced write that releases our lock.
    let fence_arg = format!("rel/k:{fence}");
    let put = server.run(&[
        "kv",
        "put",
        "rel/count",
        "1",
        "--fence",
        &fence_arg,
        "--release",
        &lock_id,
    ]);
    assert_eq!(put.ok()["released_lock_id"], u64_of(&lock.ok()["lock_id"]));
    let granted = Reply::from_output(wait_bounded(rival));
    assert_eq!(granted.ok()["status"], "held");
    assert_eq!(granted.ok()["fence_token"], put.ok()["version"]);
    let released = server.run(&["lock", "status", &lock_id]);
    assert_eq!(released.ok()["status"], "released");
    let rival_id = u64_of(&granted.ok()["lock_id"]).to_string();

    // Someone else's lock: exit 4, and the counter is not written.
    server
        .run(&["counter", "add", "rel/n", "1", "--release", &rival_id])
        .err("PERMISSION_DENIED", 4);
    server.run(&["kv", "get", "rel/n"]).err("NOT_FOUND", 3);
    assert_eq!(
        server.run(&["lock", "status", &rival_id]).ok()["status"],
        "held"
    );
    // The rival's own counter add releases it (text mode says so).
    let added = Reply::of(
        server
            .baton()
            .env("BATON_AGENT", "rival")
            .env("BATON_OUTPUT", "text")
            .args(["counter", "add", "rel/n", "1", "--release", &rival_id]),
    );
    assert_eq!(added.code, 0, "{added:?}");
    assert_eq!(
        added.stdout.trim(),
        format!("rel/n: 1; released lock {rival_id}")
    );
    assert_eq!(
        server.run(&["lock", "status", &rival_id]).ok()["status"],
        "released"
    );

    // Only integers, and only on the state mutations.
    let bad = server.run(&["kv", "put", "rel/count", "2", "--release", "abc"]);
    assert!(
        bad.err("INVALID_ARGUMENT", 2)["details"]["argument"]
            .as_str()
            .unwrap()
            .contains("--release"),
        "{bad:?}"
    );
    let not_here = server.run(&["quota", "set", "rel/q", "5", "--release", "1"]);
    assert_eq!(not_here.code, 2, "{not_here:?}");
    assert_eq!(server.run(&["kv", "get", "rel/count"]).ok()["value"], 1);
}

#[test]
fn a_wait_that_would_close_a_cycle_is_a_deadlock() {
    let server = Server::start();
    let as_agent = |agent: &str, args: &[&str]| {
        let mut command = server.baton();
        command.env("BATON_AGENT", agent).args(args);
        command
    };
    Reply::of(&mut as_agent(
        "a",
        &["lock", "acquire", "dl/1", "--ttl", "30s"],
    ))
    .ok();
    Reply::of(&mut as_agent(
        "b",
        &["lock", "acquire", "dl/2", "--ttl", "30s"],
    ))
    .ok();
    // a waits for dl/2 (held by b) in the background ...
    let mut waiter = as_agent(
        "a",
        &["lock", "acquire", "dl/2", "--ttl", "30s", "--wait", "20s"],
    )
    .spawn()
    .expect("spawn waiter");
    // ... and once the server shows that wait, b asking for dl/1 closes the cycle.
    let started = std::time::Instant::now();
    loop {
        let key = server.run(&["lock", "status", "--key", "dl/2"]);
        if !key.ok()["waiters"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the wait never showed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cycle = Reply::of(&mut as_agent(
        "b",
        &["lock", "acquire", "dl/1", "--ttl", "30s", "--wait", "20s"],
    ));
    cycle.err("DEADLOCK", 8);
    let _ = waiter.kill();
    let _ = waiter.wait();
}

#[test]
fn kv_put_get_patch_list_history_delete_and_txn() {
    let server = Server::start();
    let put = server.run(&["kv", "put", "config/app", r#"{"region":"us-east-1"}"#]);
    let version = u64_of(&put.ok()["version"]);
    assert!(put.ok().get("previous_version").is_none());

    let got = server.run(&["kv", "get", "config/app"]);
    assert_eq!(got.ok()["value"], json!({"region": "us-east-1"}));
    assert_eq!(got.ok()["version"], version);

    // Compare-and-set: the right version passes, a stale one is exit 6 with the current state.
    let v = version.to_string();
    let cas = server.run(&[
        "kv",
        "put",
        "config/app",
        r#"{"region":"eu"}"#,
        "--if-version",
        &v,
    ]);
    let version2 = u64_of(&cas.ok()["version"]);
    let stale = server.run(&["kv", "put", "config/app", "{}", "--if-version", &v]);
    let error = stale.err("CONCURRENT_MODIFICATION", 6);
    assert_eq!(error["details"]["current_version"], version2);
    assert_eq!(error["details"]["current_value"], json!({"region": "eu"}));
    server
        .run(&["kv", "put", "config/app", "{}", "--if-absent"])
        .err("CONCURRENT_MODIFICATION", 6);

    let merged = server.run(&["kv", "patch", "config/app", "--merge", r#"{"replicas":3}"#]);
    assert_eq!(merged.ok()["previous_version"], version2);
    let patched = server.run(&[
        "kv",
        "patch",
        "config/app",
        "--json-patch",
        r#"[{"op":"replace","path":"/replicas","value":4}]"#,
    ]);
    patched.ok();
    let failed_test = server.run(&[
        "kv",
        "patch",
        "config/app",
        "--json-patch",
        r#"[{"op":"test","path":"/replicas","value":3}]"#,
    ]);
    assert_ne!(failed_test.code, 0, "{failed_test:?}");
    assert_eq!(
        server.run(&["kv", "get", "config/app"]).ok()["value"],
        json!({"region": "eu", "replicas": 4})
    );

    // Value from stdin, with a TTL.
    let from_stdin =
        server.run_with_stdin(&["kv", "put", "config/db", "-", "--ttl", "1h"], "\"pg\"\n");
    assert!(from_stdin.ok()["expires_at"].as_u64().is_some());

    let list = server.run(&["kv", "list", "config/", "--limit", "1"]);
    assert_eq!(list.ok()["entries"].as_array().unwrap().len(), 1);
    assert_eq!(list.ok()["next_after"], "config/app");
    let rest = server.run(&["kv", "list", "config/", "--after", "config/app"]);
    assert_eq!(rest.ok()["entries"][0]["key"], "config/db");

    let history = server.run(&["kv", "history", "config/app"]);
    assert_eq!(history.ok()["versions"].as_array().unwrap().len(), 4);
    assert_eq!(history.ok()["versions"][0]["agent"], "tester");

    let txn = json!({
        "compares": [{"key": "config/db", "exists": true}],
        "success": [{"op": "put", "key": "config/flag", "value": true}, {"op": "get", "key": "config/db"}],
        "failure": []
    })
    .to_string();
    let ran = server.run(&["kv", "txn", &txn]);
    assert_eq!(ran.ok()["succeeded"], true);
    assert_eq!(ran.ok()["results"].as_array().unwrap().len(), 2);
    let from_stdin = server.run_with_stdin(&["kv", "txn"], &txn.replace("true}", "false}"));
    assert_eq!(from_stdin.ok()["succeeded"], true);

    let deleted = server.run(&["kv", "del", "config/db"]);
    assert_eq!(deleted.ok()["deleted"], true);
    let gone = server.run(&["kv", "delete", "config/db"]);
    assert_eq!(gone.ok()["deleted"], false);
    server.run(&["kv", "get", "config/db"]).err("NOT_FOUND", 3);
}

#[test]
fn counters_stay_in_bounds_and_idempotency_keys_apply_once() {
    let server = Server::start();
    let added = server.run(&["counter", "add", "slots/gpu", "3", "--max", "4"]);
    assert_eq!(added.ok()["value"], 3);
    let over = server.run(&["counter", "add", "slots/gpu", "2", "--max", "4"]);
    assert!(
        over.err("QUOTA_EXCEEDED", 9)["message"]
            .as_str()
            .unwrap()
            .contains("slots/gpu")
    );
    let down = server.run(&["counter", "add", "slots/gpu", "-3", "--min", "0"]);
    assert_eq!(down.ok()["value"], 0);
    server
        .run(&["counter", "add", "slots/gpu", "-1", "--min", "0"])
        .err("QUOTA_EXCEEDED", 9);
    assert_eq!(
        server.run(&["counter", "get", "slots/gpu"]).ok()["value"],
        0
    );
    assert_eq!(
        server.run(&["counter", "get", "slots/never"]).ok()["value"],
        0
    );

    // The same idempotency key: one increment, the same answer twice.
    let args = [
        "counter",
        "add",
        "hits/x",
        "1",
        "--idempotency-key",
        "req-1",
    ];
    let first = server.run(&args);
    let second = server.run(&args);
    assert_eq!(first.ok(), second.ok());
    assert_eq!(server.run(&["counter", "get", "hits/x"]).ok()["value"], 1);
    // The same key for a different request is refused.
    server
        .run(&[
            "counter",
            "add",
            "hits/x",
            "5",
            "--idempotency-key",
            "req-1",
        ])
        .err("IDEMPOTENCY_MISMATCH", 2);

    // Without BATON_AGENT, USER or LOGNAME (as in most containers) the
    // default agent is still the same from one call to the next: a retry
    // with the same key applies once, and a lock is released by the next call.
    let anonymous = |args: &[&str]| {
        Reply::of(
            server
                .baton()
                .env_remove("BATON_AGENT")
                .env_remove("USER")
                .env_remove("LOGNAME")
                .args(args),
        )
    };
    let args = [
        "counter",
        "add",
        "hits/y",
        "1",
        "--idempotency-key",
        "req-2",
    ];
    anonymous(&args).ok();
    anonymous(&args).ok();
    assert_eq!(server.run(&["counter", "get", "hits/y"]).ok()["value"], 1);
    let held = anonymous(&["lock", "acquire", "anon/k", "--ttl", "30s"]);
    let lock_id = held.ok()["lock_id"].to_string();
    anonymous(&["lock", "release", &lock_id]).ok();
}

#[test]
fn events_watch_and_status() {
    let server = Server::start();
    for (key, value) in [("w/a", "1"), ("other/b", "2"), ("w/c", "3")] {
        server.run(&["kv", "put", key, value]).ok();
    }
    let page = server.run(&["events", "--prefix", "w/", "--from-revision", "1"]);
    let events = page.ok()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["keys"], json!(["w/a"]));
    assert!(u64_of(&page.ok()["next_revision"]) > u64_of(&events[1]["revision"]));
    let limited = server.run(&["events", "--limit", "1"]);
    assert_eq!(limited.ok()["events"].as_array().unwrap().len(), 1);

    // watch replays from a revision, then follows live writes, one NDJSON line each.
    let mut watch = server
        .baton()
        .args(["watch", "--prefix", "w/", "--from-revision", "1"])
        .spawn()
        .expect("spawn watch");
    let lines = Lines::of(&mut watch);
    let within = Duration::from_secs(20);
    let first: Value = serde_json::from_str(&lines.next(within)).unwrap();
    assert_eq!(first["keys"], json!(["w/a"]));
    let second: Value = serde_json::from_str(&lines.next(within)).unwrap();
    assert_eq!(second["keys"], json!(["w/c"]));
    server.run(&["kv", "put", "w/live", "4"]).ok();
    let live: Value = serde_json::from_str(&lines.next(within)).unwrap();
    assert_eq!(live["keys"], json!(["w/live"]));
    assert_eq!(live["kind"], "put");
    assert_eq!(live["value"], 4);
    let _ = watch.kill();
    let _ = watch.wait();

    let status = server.run(&["status"]);
    assert_eq!(status.ok()["keys"], 4);
    assert!(status.ok()["version"].is_string());
}

#[test]
fn text_mode_prints_for_people_and_errors_on_stderr() {
    let server = Server::start();
    let text = |args: &[&str]| Reply::of(server.baton().env("BATON_OUTPUT", "text").args(args));
    let put = text(&["kv", "put", "app/name", r#""dark""#]);
    assert_eq!(put.code, 0);
    assert!(put.stdout.starts_with("app/name: version "), "{put:?}");
    // Strings print bare, for $(baton kv get …).
    assert_eq!(text(&["kv", "get", "app/name"]).stdout, "dark\n");
    let lock = text(&["lock", "acquire", "app/name", "--ttl", "30s"]);
    assert!(lock.stdout.starts_with("lock "), "{lock:?}");
    assert!(
        lock.stdout.contains("held: app/name (exclusive), fence "),
        "{lock:?}"
    );
    let list = text(&["kv", "list", "app/"]);
    assert!(list.stdout.starts_with("KEY"), "{list:?}");

    let held = Reply::of(
        server
            .baton()
            .env("BATON_OUTPUT", "text")
            .env("BATON_AGENT", "rival")
            .args(["lock", "acquire", "app/name", "--ttl", "30s"]),
    );
    assert_eq!(held.code, 6);
    assert!(held.stdout.is_empty(), "{held:?}");
    assert!(held.stderr.contains("app/name"), "{held:?}");
    assert!(held.stderr.contains("retry after"), "{held:?}");
    assert!(
        held.stderr.contains("CONCURRENT_MODIFICATION (exit 6)"),
        "{held:?}"
    );

    let events = text(&["events", "--prefix", "app/"]);
    assert!(
        events
            .stdout
            .lines()
            .next()
            .unwrap()
            .contains(" put app/name "),
        "{events:?}"
    );
    let status = text(&["status"]);
    assert!(status.stdout.starts_with("baton "), "{status:?}");
}

#[test]
fn bad_arguments_exit_2_and_name_the_argument() {
    let server = Server::start();
    let cases: [(&[&str], &str); 10] = [
        // A session is not a lock: --fence would be refused by the server
        // (open, keepalive, kill) or ignored (close), so it is not offered.
        (&["session", "close", "1", "--fence", "a/b:1"], "--fence"),
        (&["session", "open", "--fence", "a/b:1"], "--fence"),
        (&["lock", "acquire", "a/b", "--ttl", "30"], "--ttl"),
        (&["lock", "acquire", "a/b", "--wait", "soon"], "--wait"),
        (&["lock", "acquire"], "KEY"),
        (&["kv", "put", "a/b", "1", "--fence", "nope"], "--fence"),
        (
            &["kv", "put", "a/b", "1", "--if-version", "x"],
            "--if-version",
        ),
        (&["kv", "patch", "a/b"], "--merge"),
        (&["counter", "add", "a/b", "one"], "DELTA"),
        (&["run", "--lock", "a/b"], "COMMAND"),
    ];
    for (args, named) in cases {
        let reply = server.run(args);
        let message = reply.err("INVALID_ARGUMENT", 2)["message"].to_string();
        assert!(
            message.contains(named),
            "{args:?} must name {named}: {reply:?}"
        );
    }
    // Input checked by the CLI: the envelope names the field.
    let not_json = server.run(&["kv", "put", "a/b", "not json"]);
    assert!(
        not_json.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .starts_with("value: ")
    );
    // Input checked by the server: its message, verbatim.
    let no_lease = server.run(&["lock", "acquire", "a/b"]);
    assert!(
        no_lease.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("ttl_ms")
    );
    let no_namespace = server.run(&["kv", "get", "plain"]);
    assert_eq!(no_namespace.code, 2, "{no_namespace:?}");
}

#[test]
fn a_server_that_is_not_there_is_unavailable_with_its_url() {
    // Bind and drop: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["status"][..],
        &["kv", "get", "a/b"][..],
        &["lock", "acquire", "a/b", "--ttl", "1s"][..],
        &["run", "--lock", "a/b", "--", "true"][..],
        &["watch"][..],
    ] {
        let reply = Reply::of(baton_command().env("BATON_URL", &url).args(args));
        let error = reply.err("UNAVAILABLE", 10);
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&url), "{args:?}: {message}");
        assert!(message.contains("baton serve"), "{args:?}: {message}");
    }
    let text = Reply::of(
        baton_command()
            .args(["status", "--url", &url])
            .env("BATON_OUTPUT", "text"),
    );
    assert_eq!(text.code, 10);
    assert!(text.stderr.contains(&url), "{text:?}");
    assert!(text.stderr.contains("UNAVAILABLE (exit 10)"), "{text:?}");
}

#[test]
fn every_client_command_has_an_example_in_its_help() {
    let commands: &[&[&str]] = &[
        &["session", "open"],
        &["session", "keepalive"],
        &["session", "close"],
        &["session", "kill"],
        &["session", "list"],
        &["session", "get"],
        &["lock", "acquire"],
        &["lock", "release"],
        &["lock", "renew"],
        &["lock", "status"],
        &["lock", "list"],
        &["kv", "get"],
        &["kv", "put"],
        &["kv", "patch"],
        &["kv", "del"],
        &["kv", "list"],
        &["kv", "history"],
        &["kv", "txn"],
        &["counter", "add"],
        &["counter", "get"],
        &["fence", "check"],
        &["watch"],
        &["events"],
        &["status"],
        &["run"],
        &["quota", "set"],
        &["quota", "get"],
        &["quota", "reserve"],
        &["quota", "commit"],
        &["quota", "release"],
        &["rate", "take"],
        &["rate", "status"],
        &["once", "get"],
        &["once", "fulfil"],
        &["once", "abandon"],
        &["once", "run"],
        &["queue", "enqueue"],
        &["queue", "claim"],
        &["queue", "ack"],
        &["queue", "nack"],
        &["queue", "status"],
        &["semaphore", "acquire"],
        &["semaphore", "status"],
        &["serve"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = wait_bounded(
            baton_command()
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn"),
        );
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}");
        assert!(help.contains("Example"), "{args:?} has no example:\n{help}");
        assert!(
            help.contains(&format!("baton {}", command.join(" "))),
            "{args:?}:\n{help}"
        );
    }
}
