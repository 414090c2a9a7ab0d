//! `baton quota`, `rate`, `once`, `queue` and `semaphore` end to end against
//! a real `baton serve`: each subcommand's JSON shape and exit code, refusals
//! with retry_after_ms (exit 9), bad arguments (exit 2), and many concurrent
//! processes: one refresh shared by 16 `once run`s, 16 reservations racing
//! for a capacity that fits 6, 16 workers claiming 10 items, 8 acquires of a
//! 3-permit semaphore. Waits are bounded (server_support).

mod server_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server_support::{Reply, Server};

fn u64_of(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// `baton ARGS` as `agent`.
fn as_agent(server: &Server, agent: &str, args: &[&str]) -> Reply {
    Reply::of(server.baton().env("BATON_AGENT", agent).args(args))
}

/// Runs every command at once (one thread each) and returns their replies in order.
fn run_all(commands: Vec<Command>) -> Vec<Reply> {
    let handles: Vec<_> = commands
        .into_iter()
        .map(|mut command| thread::spawn(move || Reply::of(&mut command)))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a runner thread panicked"))
        .collect()
}

#[test]
fn quotas_set_get_reserve_commit_and_release() {
    let server = Server::start();
    let set = server.run(&["quota", "set", "gpu/hours", "20"]);
    assert_eq!(
        set.ok(),
        &json!({"quota": "gpu/hours", "capacity": 20, "used": 0, "reserved": 0, "available": 20, "reservations": 0})
    );

    let reserved = server.run(&["quota", "reserve", "gpu/hours", "5", "--ttl", "5m"]);
    let reservation = reserved.ok();
    assert_eq!(reservation["quota"], "gpu/hours");
    assert_eq!(reservation["amount"], 5);
    assert_eq!(reservation["available"], 15);
    assert!(
        reservation["expires_at"].as_u64().is_some(),
        "{reservation}"
    );
    let id = u64_of(&reservation["reservation_id"]).to_string();

    let got = server.run(&["quota", "get", "gpu/hours"]);
    assert_eq!(got.ok()["reserved"], 5);
    assert_eq!(got.ok()["reservations"], 1);

    // More than is left, while a reservation could free enough: exit 9 with retry_after_ms.
    let over = server.run(&["quota", "reserve", "gpu/hours", "16", "--ttl", "5m"]);
    let error = over.err("QUOTA_EXCEEDED", 9);
    assert!(u64_of(&error["retry_after_ms"]) > 0, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("gpu/hours"),
        "{error}"
    );
    // More than the capacity ever holds: no retry would help, so no retry_after_ms.
    let never = server.run(&["quota", "reserve", "gpu/hours", "21", "--ttl", "5m"]);
    assert!(
        never
            .err("QUOTA_EXCEEDED", 9)
            .get("retry_after_ms")
            .is_none()
    );

    // Commit part; the rest returns. Committing again is FENCED (it ended).
    let committed = server.run(&["quota", "commit", &id, "3"]);
    assert_eq!(
        committed.ok(),
        &json!({"reservation_id": u64_of(&reservation["reservation_id"]), "settled": true, "outcome": "committed", "committed": 3, "returned": 2})
    );
    server.run(&["quota", "commit", &id, "1"]).err("FENCED", 7);
    let after = server.run(&["quota", "get", "gpu/hours"]);
    assert_eq!(after.ok()["used"], 3);
    assert_eq!(after.ok()["available"], 17);

    // Release returns everything; releasing twice says how it ended.
    let second = server.run(&["quota", "reserve", "gpu/hours", "4", "--ttl", "5m"]);
    let second_id = u64_of(&second.ok()["reservation_id"]).to_string();
    let released = server.run(&["quota", "release", &second_id]);
    assert_eq!(released.ok()["settled"], true);
    assert_eq!(released.ok()["outcome"], "released");
    assert_eq!(released.ok()["returned"], 4);
    let again = server.run(&["quota", "release", &second_id]);
    assert_eq!(again.ok()["settled"], false);

    // Someone else's reservation is not yours to settle.
    let theirs = as_agent(
        &server,
        "other",
        &["quota", "reserve", "gpu/hours", "1", "--ttl", "1m"],
    );
    let theirs_id = u64_of(&theirs.ok()["reservation_id"]).to_string();
    server
        .run(&["quota", "release", &theirs_id])
        .err("PERMISSION_DENIED", 4);

    // A new period forgets the committed use.
    let reset = server.run(&["quota", "set", "gpu/hours", "20", "--reset-used"]);
    assert_eq!(reset.ok()["used"], 0);
    server
        .run(&["quota", "get", "nope/none"])
        .err("NOT_FOUND", 3);
    server
        .run(&["quota", "reserve", "nope/none", "1", "--ttl", "1m"])
        .err("NOT_FOUND", 3);
}

#[test]
fn an_expired_reservation_returns_to_the_pool() {
    let server = Server::start();
    server.run(&["quota", "set", "q/short", "3"]).ok();
    let reserved = server.run(&["quota", "reserve", "q/short", "3", "--ttl", "200ms"]);
    let id = u64_of(&reserved.ok()["reservation_id"]).to_string();
    let refused = server.run(&["quota", "reserve", "q/short", "1", "--ttl", "1m"]);
    let retry_after = u64_of(&refused.err("QUOTA_EXCEEDED", 9)["retry_after_ms"]);
    assert!(retry_after <= 200, "{retry_after}");
    let started = Instant::now();
    loop {
        let quota = server.run(&["quota", "get", "q/short"]);
        if quota.ok()["available"] == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never expired");
        thread::sleep(Duration::from_millis(20));
    }
    let ended = server.run(&["quota", "release", &id]);
    assert_eq!(ended.ok()["settled"], false);
    assert_eq!(ended.ok()["outcome"], "expired");
    server.run(&["quota", "commit", &id, "1"]).err("FENCED", 7);
}

#[test]
fn rate_take_refuses_with_the_exact_retry_and_status_shows_who_spends() {
    let server = Server::start();
    let first = server.run(&[
        "rate", "take", "api/slow", "2", "--rate", "1", "--burst", "2",
    ]);
    assert_eq!(
        first.ok(),
        &json!({"bucket": "api/slow", "taken": 2, "remaining": 0, "rate_per_sec": 1, "burst": 2})
    );
    let limited = server.run(&["rate", "take", "api/slow", "--rate", "1", "--burst", "2"]);
    let error = limited.err("RATE_LIMITED", 9);
    let retry_after = u64_of(&error["retry_after_ms"]);
    assert!((1..=1000).contains(&retry_after), "{error}");
    // A --wait that ends before the tokens are there: exit 9 after the wait.
    let started = Instant::now();
    let short = server.run(&[
        "rate", "take", "api/slow", "--rate", "1", "--burst", "2", "--wait", "100ms",
    ]);
    assert!(u64_of(&short.err("RATE_LIMITED", 9)["retry_after_ms"]) > 0);
    assert!(started.elapsed() >= Duration::from_millis(100));

    as_agent(
        &server,
        "planner",
        &[
            "rate", "take", "api/fast", "3", "--rate", "100", "--burst", "10",
        ],
    )
    .ok();
    as_agent(
        &server,
        "coder",
        &["rate", "take", "api/fast", "--rate", "100", "--burst", "10"],
    )
    .ok();
    let status = server.run(&["rate", "status", "api/fast"]);
    let bucket = status.ok();
    assert_eq!(bucket["bucket"], "api/fast");
    assert_eq!(bucket["rate_per_sec"], 100);
    assert_eq!(bucket["burst"], 10);
    assert!(u64_of(&bucket["available"]) <= 10);
    assert_eq!(
        bucket["usage"],
        json!([{"agent": "planner", "tokens": 3}, {"agent": "coder", "tokens": 1}])
    );
    // For people: a table of who spends it.
    let text = Reply::of(
        server
            .baton()
            .env("BATON_OUTPUT", "text")
            .args(["rate", "status", "api/fast"]),
    );
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines[0].starts_with("bucket api/fast: "), "{text:?}");
    assert!(lines[1].starts_with("AGENT"), "{text:?}");
    assert!(
        lines[2].starts_with("planner") && lines[2].contains(" 3 "),
        "{text:?}"
    );
    assert!(lines[3].starts_with("coder"), "{text:?}");
    server
        .run(&["rate", "status", "api/never"])
        .err("NOT_FOUND", 3);
    // A take fenced by a lock nobody holds is refused, and takes nothing.
    server
        .run(&[
            "rate",
            "take",
            "api/fast",
            "--rate",
            "100",
            "--burst",
            "10",
            "--fence",
            "deploy/none:1",
        ])
        .err("FENCED", 7);
    // More than the burst could never be granted.
    server
        .run(&[
            "rate", "take", "api/fast", "11", "--rate", "100", "--burst", "10",
        ])
        .err("INVALID_ARGUMENT", 2);
}

#[test]
fn rate_take_wait_queues_until_the_tokens_are_there() {
    let server = Server::start();
    // One token a second: the second take, a process start after the
    // first, must come well within that to be refused (at 20/s a loaded CI
    // machine once took the 50 ms a token needs between the two).
    let args = ["rate", "take", "api/w", "--rate", "1", "--burst", "1"];
    server.run(&args).ok();
    server.run(&args).err("RATE_LIMITED", 9);
    // 1/s refills one token in a second: well within the wait.
    let waited = server.run(&[&args[..], &["--wait", "10s"]].concat());
    assert_eq!(waited.ok()["taken"], 1);
    // Concurrent waiters each get their token as the bucket refills.
    let replies = run_all(
        (0..4)
            .map(|i| {
                let mut command = server.baton();
                command
                    .env("BATON_AGENT", format!("waiter-{i}"))
                    .args(args)
                    .args(["--wait", "20s"]);
                command
            })
            .collect(),
    );
    for reply in &replies {
        assert_eq!(reply.ok()["taken"], 1, "{reply:?}");
    }
    let status = server.run(&["rate", "status", "api/w"]);
    let usage = status.ok()["usage"].as_array().unwrap().clone();
    assert_eq!(usage.len(), 5, "{usage:?}");
    assert_eq!(usage[0], json!({"agent": "tester", "tokens": 2}));
}

#[test]
fn once_get_fulfil_and_abandon() {
    let server = Server::start();
    let fresh_args = [
        "once",
        "get",
        "cred/token",
        "--max-age",
        "10m",
        "--claim-ttl",
        "30s",
    ];
    // Nothing there yet: the first caller gets the claim (exit 0).
    let claimed = server.run(&fresh_args);
    let claim = claimed.ok();
    assert_eq!(claim["status"], "claimed");
    assert_eq!(claim["key"], "cred/token");
    assert!(claim["expires_at"].as_u64().is_some(), "{claim}");
    let claim_id = u64_of(&claim["claim_id"]).to_string();

    // Another agent, no wait: exit 6 with retry_after_ms. So is another
    // process of the claimant's agent without a session: nothing tells it
    // apart from the claimant, so it waits like anyone else.
    let busy = as_agent(&server, "other", &fresh_args);
    assert!(u64_of(&busy.err("CONCURRENT_MODIFICATION", 6)["retry_after_ms"]) > 0);
    server.run(&fresh_args).err("CONCURRENT_MODIFICATION", 6);
    // The claimant's own session asking again would wait for itself: exit 8.
    let session = server.run(&["session", "open", "--ttl", "30s"]);
    let session = u64_of(&session.ok()["session_id"]).to_string();
    let in_session = [
        "once",
        "get",
        "cred/session",
        "--max-age",
        "10m",
        "--session",
        &session,
    ];
    assert_eq!(server.run(&in_session).ok()["status"], "claimed");
    server.run(&in_session).err("DEADLOCK", 8);
    // Only the claimant publishes.
    as_agent(
        &server,
        "other",
        &["once", "fulfil", "cred/token", &claim_id, "\"x\""],
    )
    .err("PERMISSION_DENIED", 4);

    // A wait that ends before the claimant publishes: exit 6, after the wait.
    let started = Instant::now();
    let timed_out = as_agent(
        &server,
        "other",
        &[&fresh_args[..], &["--wait", "300ms"]].concat(),
    );
    assert!(
        timed_out.err("CONCURRENT_MODIFICATION", 6)["message"]
            .as_str()
            .unwrap()
            .contains("when the wait ended")
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A waiter gets the value the claimant publishes (woken, or fresh if it
    // arrives after the publish: both are the one published value).
    let mut waiter = server.baton();
    waiter
        .env("BATON_AGENT", "waiter")
        .args(fresh_args)
        .args(["--wait", "30s"]);
    let waiter = thread::spawn(move || Reply::of(&mut waiter));
    let published = server.run_with_stdin(
        &["once", "fulfil", "cred/token", &claim_id, "-"],
        r#"{"token": "tok-1"}"#,
    );
    let result = published.ok();
    assert_eq!(result["status"], "fresh");
    assert_eq!(result["value"], json!({"token": "tok-1"}));
    assert_eq!(result["age_ms"], 0);
    let waited = waiter.join().unwrap();
    assert_eq!(waited.ok()["status"], "fresh");
    assert_eq!(waited.ok()["value"], json!({"token": "tok-1"}));
    // Fresh now for everyone; the value is an ordinary key.
    let fresh = as_agent(&server, "other", &fresh_args);
    assert_eq!(fresh.ok()["status"], "fresh");
    assert_eq!(fresh.ok()["version"], result["version"]);
    assert_eq!(
        server.run(&["kv", "get", "cred/token"]).ok()["value"],
        json!({"token": "tok-1"})
    );
    // A published claim is over.
    server
        .run(&["once", "fulfil", "cred/token", &claim_id, "\"late\""])
        .err("FENCED", 7);

    // Stale (--max-age 1ms): claim, abandon, and the next caller gets a new claim.
    let stale = ["once", "get", "cred/token", "--max-age", "1ms"];
    thread::sleep(Duration::from_millis(5));
    let claimed = server.run(&stale);
    assert_eq!(claimed.ok()["status"], "claimed");
    assert_eq!(
        claimed.ok()["value"],
        json!({"token": "tok-1"}),
        "the stale value comes along"
    );
    let id = u64_of(&claimed.ok()["claim_id"]).to_string();
    let abandoned = server.run(&["once", "abandon", "cred/token", &id]);
    assert_eq!(abandoned.ok(), &json!({}));
    server
        .run(&["once", "abandon", "cred/token", &id])
        .err("FENCED", 7);
    let next = as_agent(&server, "other", &stale);
    assert_eq!(next.ok()["status"], "claimed");
    assert_ne!(next.ok()["claim_id"], claimed.ok()["claim_id"]);

    // Text mode: a fresh value prints bare; a claim says what to do next.
    let text = |agent: &str, args: &[&str]| {
        Reply::of(
            server
                .baton()
                .env("BATON_OUTPUT", "text")
                .env("BATON_AGENT", agent)
                .args(args),
        )
    };
    let mine = text("third", &["once", "get", "text/k", "--max-age", "1m"]);
    assert!(mine.stdout.starts_with("claim "), "{mine:?}");
    assert!(
        mine.stdout.contains("baton once fulfil text/k "),
        "{mine:?}"
    );
    let id = mine.stdout.split_whitespace().nth(1).unwrap().to_string();
    text("third", &["once", "fulfil", "text/k", &id, "\"plain\""]);
    assert_eq!(
        text("fourth", &["once", "get", "text/k", "--max-age", "1m"]).stdout,
        "plain\n"
    );
}

#[test]
fn once_run_prints_fresh_values_publishes_output_and_abandons_on_failure() {
    let server = Server::start();
    let run = |agent: &str, key: &str, script: &str| {
        Reply::of(
            server
                .baton()
                .current_dir(server.dir.path())
                .env("BATON_AGENT", agent)
                .args([
                    "once",
                    "run",
                    key,
                    "--max-age",
                    "10m",
                    "--claim-ttl",
                    "30s",
                    "--wait",
                    "10s",
                    "--",
                ])
                .args(["sh", "-c", script]),
        )
    };
    // A failing refresh: its exit code, nothing on stdout, and the claim is
    // abandoned (the next caller gets it at once instead of after 30 s).
    let failed = run("a", "cred/x", "echo partial; echo oops >&2; exit 3");
    assert_eq!(failed.code, 3, "{failed:?}");
    assert!(failed.stdout.is_empty(), "{failed:?}");
    assert!(
        failed.stderr.contains("oops"),
        "the command's stderr passes through: {failed:?}"
    );
    let next = server.run(&["once", "get", "cred/x", "--max-age", "10m"]);
    assert_eq!(next.ok()["status"], "claimed");
    let id = u64_of(&next.ok()["claim_id"]).to_string();
    server.run(&["once", "abandon", "cred/x", &id]).ok();

    // The command sees the key and claim; its output (JSON if it parses) is published.
    let published = run(
        "a",
        "cred/x",
        r#"printf '{"key":"%s","claim":%s}\n' "$BATON_ONCE_KEY" "$BATON_ONCE_CLAIM_ID""#,
    );
    let result = published.ok();
    assert_eq!(result["status"], "fresh");
    assert_eq!(result["value"]["key"], "cred/x");
    assert!(result["value"]["claim"].as_u64().is_some(), "{result}");
    // Fresh: printed without running the command.
    let again = run("b", "cred/x", "echo ran >> ran.log; echo other");
    assert_eq!(again.ok()["value"], result["value"]);
    assert!(!server.path("ran.log").exists());

    // A string when it is not JSON; bare in text mode.
    let text = Reply::of(server.baton().env("BATON_OUTPUT", "text").args([
        "once",
        "run",
        "cred/plain",
        "--max-age",
        "1m",
        "--",
        "echo",
        "  tok-9  ",
    ]));
    assert_eq!(text.stdout, "tok-9\n", "{text:?}");
    assert_eq!(
        server.run(&["kv", "get", "cred/plain"]).ok()["value"],
        "tok-9"
    );

    // Printing nothing publishes nothing: exit 2, and the claim is abandoned.
    let empty = run("a", "cred/empty", "true");
    assert!(
        empty.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("printed nothing")
    );
    assert_eq!(
        server
            .run(&["once", "get", "cred/empty", "--max-age", "1m"])
            .ok()["status"],
        "claimed"
    );
    let missing = run("c", "cred/missing", "exec /nonexistent/refresh");
    assert_eq!(missing.code, 127, "{missing:?}");
}

#[test]
fn once_run_stops_a_refresh_that_outlives_its_claim() {
    let server = Server::start();
    let started = Instant::now();
    let reply = server.run(&[
        "once",
        "run",
        "cred/slow",
        "--max-age",
        "10m",
        "--claim-ttl",
        "300ms",
        "--grace",
        "1s",
        "--",
        "sh",
        "-c",
        "sleep 30; echo late",
    ]);
    let error = reply.err("FENCED", 7);
    assert!(
        error["message"].as_str().unwrap().contains("--claim-ttl"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the command was not stopped"
    );
    server.run(&["kv", "get", "cred/slow"]).err("NOT_FOUND", 3);
    // The claim ran out on the server too: the next caller gets a new one.
    let next = server.run(&["once", "get", "cred/slow", "--max-age", "10m"]);
    assert_eq!(next.ok()["status"], "claimed");
}

/// The headline: N agents run the same line; exactly one refresh runs and
/// all of them print its token.
#[test]
fn sixteen_concurrent_once_runs_share_one_refresh() {
    let server = Server::start();
    let refresh = r#"echo refreshed >> refresh.log; sleep 0.5; echo "tok-$$""#;
    let command = |agent: String, key: &str| {
        let mut command = server.baton();
        command
            .current_dir(server.dir.path())
            .env("BATON_AGENT", agent)
            .args([
                "once",
                "run",
                key,
                "--max-age",
                "10m",
                "--claim-ttl",
                "30s",
                "--wait",
                "30s",
                "--",
            ])
            .args(["sh", "-c", refresh]);
        command
    };
    let replies = run_all(
        (0..16)
            .map(|i| command(format!("agent-{i}"), "cred/token"))
            .collect(),
    );
    let tokens: BTreeSet<String> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.ok()["status"], "fresh", "{reply:?}");
            reply.ok()["value"]
                .as_str()
                .expect("a string token")
                .to_string()
        })
        .collect();
    let log = std::fs::read_to_string(server.path("refresh.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "refresh ran more than once:\n{log}");
    assert_eq!(
        tokens.len(),
        1,
        "not everyone printed the same token: {tokens:?}"
    );
    assert!(tokens.first().unwrap().starts_with("tok-"));

    // Processes of one agent share its claim: the others poll until the value is there.
    std::fs::remove_file(server.path("refresh.log")).unwrap();
    let replies = run_all(
        (0..8)
            .map(|_| command("same-agent".into(), "cred/shared"))
            .collect(),
    );
    let tokens: BTreeSet<String> = replies
        .iter()
        .map(|reply| {
            reply.ok()["value"]
                .as_str()
                .expect("a string token")
                .to_string()
        })
        .collect();
    let log = std::fs::read_to_string(server.path("refresh.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "refresh ran more than once:\n{log}");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}

#[test]
fn sixteen_concurrent_reservations_never_exceed_the_capacity() {
    let server = Server::start();
    server.run(&["quota", "set", "pool/slots", "20"]).ok();
    let replies = run_all(
        (0..16)
            .map(|i| {
                let mut command = server.baton();
                command.env("BATON_AGENT", format!("agent-{i}")).args([
                    "quota",
                    "reserve",
                    "pool/slots",
                    "3",
                    "--ttl",
                    "5m",
                ]);
                command
            })
            .collect(),
    );
    let mut granted = BTreeSet::new();
    let mut refused = 0;
    for reply in &replies {
        if reply.code == 0 {
            granted.insert(u64_of(&reply.ok()["reservation_id"]));
        } else {
            let error = reply.err("QUOTA_EXCEEDED", 9);
            assert!(u64_of(&error["retry_after_ms"]) > 0, "{error}");
            refused += 1;
        }
    }
    // 6 x 3 = 18 fits in 20, a 7th would not; ids are distinct.
    assert_eq!(granted.len(), 6, "{replies:?}");
    assert_eq!(refused, 10);
    let quota = server.run(&["quota", "get", "pool/slots"]);
    assert_eq!(quota.ok()["reserved"], 18);
    assert_eq!(quota.ok()["available"], 2);
}

#[test]
fn bad_arguments_exit_2_and_name_the_argument() {
    let server = Server::start();
    let cases: [(&[&str], &str); 13] = [
        (&["quota", "set", "q/a", "lots"], "CAPACITY"),
        (&["quota", "reserve", "q/a", "3"], "--ttl"),
        (&["quota", "reserve", "q/a", "3", "--ttl", "5"], "--ttl"),
        (&["quota", "commit", "x", "1"], "RESERVATION_ID"),
        (&["rate", "take", "api/a", "--burst", "10"], "--rate"),
        (
            &[
                "rate", "take", "api/a", "two", "--rate", "1", "--burst", "2",
            ],
            "TOKENS",
        ),
        (
            &[
                "rate", "take", "api/a", "--rate", "1", "--burst", "2", "--wait", "soon",
            ],
            "--wait",
        ),
        (&["once", "get", "cred/a"], "--max-age"),
        (&["once", "get", "cred/a", "--max-age", "10"], "--max-age"),
        (&["once", "run", "cred/a", "--max-age", "1m"], "COMMAND"),
        (
            &["queue", "claim", "jobs/a", "--visibility", "30"],
            "--visibility",
        ),
        (&["queue", "ack", "jobs/a", "x", "1"], "ITEM_ID"),
        (&["queue", "nack", "jobs/a", "1"], "CLAIM_TOKEN"),
    ];
    for (args, named) in cases {
        let reply = server.run(args);
        let message = reply.err("INVALID_ARGUMENT", 2)["message"].to_string();
        assert!(
            message.contains(named),
            "{args:?} must name {named}: {reply:?}"
        );
    }
    // Checked by the CLI: the envelope names the field.
    let not_json = server.run(&["once", "fulfil", "cred/a", "1", "not json"]);
    assert!(
        not_json.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .starts_with("value: ")
    );
    let not_json = server.run(&["queue", "enqueue", "jobs/a", "not json"]);
    assert!(
        not_json.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .starts_with("item: ")
    );
    // Checked by the server: its message, verbatim, naming the field.
    let zero = server.run(&["rate", "take", "api/a", "--rate", "0", "--burst", "2"]);
    assert!(
        zero.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("rate_per_sec")
    );
    server.run(&["quota", "set", "q/a", "5"]).ok();
    let nothing = server.run(&["quota", "reserve", "q/a", "0", "--ttl", "1m"]);
    assert!(
        nothing.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("amount")
    );
}

#[test]
fn queues_enqueue_claim_ack_nack_and_status() {
    let server = Server::start();
    let enqueued = server.run(&[
        "queue",
        "enqueue",
        "jobs/mail",
        r#"{"to":"a"}"#,
        "--idempotency-key",
        "mail-1",
    ]);
    let first = enqueued.ok();
    assert_eq!(first["queue"], "jobs/mail");
    assert_eq!(first["depth"], 1);
    let first_id = u64_of(&first["item_id"]);
    // A retry with the same key enqueues nothing new.
    let retried = server.run(&[
        "queue",
        "enqueue",
        "jobs/mail",
        r#"{"to":"a"}"#,
        "--idempotency-key",
        "mail-1",
    ]);
    assert_eq!(retried.ok(), first);
    let second = server.run_with_stdin(
        &["queue", "enqueue", "jobs/mail", "-", "--max-attempts", "1"],
        "\"b\"",
    );
    assert_eq!(second.ok()["depth"], 2);

    // FIFO: the oldest first, with a claim token to settle it with.
    let claimed = server.run(&["queue", "claim", "jobs/mail", "--visibility", "30s"]);
    let item = claimed.ok();
    assert_eq!(item["item_id"], first_id);
    assert_eq!(item["item"], json!({"to": "a"}));
    assert_eq!(item["attempt"], 1);
    assert_eq!(item["max_attempts"], 5);
    let token = u64_of(&item["claim_token"]).to_string();
    let id = first_id.to_string();
    let acked = server.run(&["queue", "ack", "jobs/mail", &id, &token]);
    assert_eq!(
        acked.ok(),
        &json!({"queue": "jobs/mail", "item_id": first_id, "outcome": "acked"})
    );
    server
        .run(&["queue", "ack", "jobs/mail", &id, &token])
        .err("FENCED", 7);

    // One attempt allowed: a nack dead-letters it.
    let claimed = server.run(&["queue", "claim", "jobs/mail"]);
    let (id2, token2) = (
        u64_of(&claimed.ok()["item_id"]).to_string(),
        u64_of(&claimed.ok()["claim_token"]).to_string(),
    );
    let nacked = server.run(&["queue", "nack", "jobs/mail", &id2, &token2]);
    assert_eq!(nacked.ok()["outcome"], "dead_lettered");

    let empty = server.run(&["queue", "claim", "jobs/mail"]);
    assert_eq!(
        empty.ok(),
        &json!({"queue": "jobs/mail", "empty": true, "in_flight": 0, "delayed": 0})
    );
    let status = server.run(&["queue", "status", "jobs/mail"]);
    let status = status.ok();
    assert_eq!(status["ready"], 0);
    assert_eq!(status["dead_lettered"], 1);
    assert_eq!(status["dead_letters"][0]["item"], "b");

    // A claim that runs out: the item comes back, and the late ack is FENCED.
    server.run(&["queue", "enqueue", "jobs/slow", "1"]).ok();
    let stale = server.run(&["queue", "claim", "jobs/slow", "--visibility", "100ms"]);
    let stale_id = u64_of(&stale.ok()["item_id"]).to_string();
    let stale_token = u64_of(&stale.ok()["claim_token"]).to_string();
    let started = Instant::now();
    let again = loop {
        let claim = server.run(&["queue", "claim", "jobs/slow"]);
        if claim.ok().get("empty").is_none() {
            break claim;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never redelivered"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(again.ok()["attempt"], 2);
    server
        .run(&["queue", "ack", "jobs/slow", &stale_id, &stale_token])
        .err("FENCED", 7);
    let delayed_token = u64_of(&again.ok()["claim_token"]).to_string();
    let delayed = server.run(&[
        "queue",
        "nack",
        "jobs/slow",
        &stale_id,
        &delayed_token,
        "--delay",
        "1m",
    ]);
    assert_eq!(delayed.ok()["outcome"], "delayed");
    assert_eq!(
        server.run(&["queue", "status", "jobs/slow"]).ok()["delayed"],
        1
    );
}

#[test]
fn concurrent_workers_never_claim_one_item_twice() {
    let server = Server::start();
    for n in 0..10 {
        server
            .run(&["queue", "enqueue", "jobs/par", &n.to_string()])
            .ok();
    }
    let replies = run_all(
        (0..16)
            .map(|i| {
                let mut command = server.baton();
                command.env("BATON_AGENT", format!("worker-{i}")).args([
                    "queue",
                    "claim",
                    "jobs/par",
                    "--visibility",
                    "5m",
                ]);
                command
            })
            .collect(),
    );
    let mut items = BTreeSet::new();
    let mut empty = 0;
    for reply in &replies {
        match reply.ok().get("item") {
            Some(item) => assert!(items.insert(u64_of(item)), "claimed twice: {item}"),
            None => empty += 1,
        }
    }
    assert_eq!(items, (0..10).collect());
    assert_eq!(empty, 6);
}

#[test]
fn a_semaphore_grants_at_most_its_capacity_and_a_release_lets_a_waiter_in() {
    let server = Server::start();
    let acquire = [
        "semaphore",
        "acquire",
        "gpu/pool",
        "--permits",
        "1",
        "--capacity",
        "3",
        "--ttl",
        "30s",
    ];
    // 8 agents at once, no wait: exactly 3 get a permit, 5 exit 6.
    let replies = run_all(
        (0..8)
            .map(|i| {
                let mut command = server.baton();
                command
                    .env("BATON_AGENT", format!("worker-{i}"))
                    .args(acquire);
                command
            })
            .collect(),
    );
    let mut granted = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        if reply.code == 0 {
            let lock = reply.ok();
            assert_eq!(lock["status"], "held", "{lock}");
            assert_eq!(lock["permits"], 1, "{lock}");
            assert_eq!(lock["keys"], json!(["gpu/pool"]), "{lock}");
            assert_eq!(lock["agent"], format!("worker-{i}"), "{lock}");
            granted.push((i, u64_of(&lock["lock_id"]), u64_of(&lock["fence_token"])));
        } else {
            let error = reply.err("CONCURRENT_MODIFICATION", 6);
            assert!(u64_of(&error["retry_after_ms"]) > 0, "{error}");
        }
    }
    assert_eq!(granted.len(), 3, "{replies:?}");
    let tokens: BTreeSet<u64> = granted.iter().map(|g| g.2).collect();
    assert_eq!(tokens.len(), 3, "every grant has its own fence token");

    let status = server.run(&["semaphore", "status", "gpu/pool"]);
    let info = status.ok();
    assert_eq!(info["capacity"], 3, "{info}");
    assert_eq!(info["permits_held"], 3, "{info}");
    assert_eq!(info["holders"].as_array().unwrap().len(), 3, "{info}");

    // A waiting acquire queues; releasing one permit lets it in.
    let mut waiter = server.baton();
    waiter
        .env("BATON_AGENT", "waiter")
        .args(acquire)
        .args(["--wait", "30s"]);
    let waiter = thread::spawn(move || Reply::of(&mut waiter));
    let started = Instant::now();
    loop {
        let status = server.run(&["semaphore", "status", "gpu/pool"]);
        if status.ok()["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == 1)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never queued");
        thread::sleep(Duration::from_millis(20));
    }
    let (holder, lock_id, _) = granted[0];
    let released = as_agent(
        &server,
        &format!("worker-{holder}"),
        &["lock", "release", &lock_id.to_string()],
    );
    assert_eq!(released.ok()["released"], true);
    let waited = waiter.join().unwrap();
    let lock = waited.ok();
    assert_eq!(lock["status"], "held", "{lock}");
    assert_eq!(lock["permits"], 1, "{lock}");
    assert!(
        u64_of(&lock["fence_token"]) > *tokens.last().unwrap(),
        "{lock}"
    );
    let status = server.run(&["semaphore", "status", "gpu/pool"]);
    assert_eq!(status.ok()["permits_held"], 3);
    assert_eq!(status.ok()["waiters"], json!([]));

    // For people: permits held of the capacity, then who holds them.
    let text = Reply::of(server.baton().env("BATON_OUTPUT", "text").args([
        "semaphore",
        "status",
        "gpu/pool",
    ]));
    assert!(
        text.stdout
            .starts_with("semaphore gpu/pool: 3 of 3 permits held, 0 free, 0 waiting\nLOCK"),
        "{text:?}"
    );

    // Bad asks: more permits than the capacity, another capacity while in use.
    server
        .run(&[
            "semaphore",
            "acquire",
            "gpu/other",
            "--permits",
            "4",
            "--capacity",
            "3",
            "--ttl",
            "30s",
        ])
        .err("INVALID_ARGUMENT", 2);
    let other_capacity = as_agent(
        &server,
        "late",
        &[
            "semaphore",
            "acquire",
            "gpu/pool",
            "--capacity",
            "5",
            "--ttl",
            "30s",
        ],
    );
    assert!(
        other_capacity.err("INVALID_ARGUMENT", 2)["message"]
            .as_str()
            .unwrap()
            .contains("capacity"),
        "{other_capacity:?}"
    );
}
