//! The fuzz targets' bodies replayed by `cargo test` over random and mutated
//! inputs for a bounded time (`BATON_JEPSEN_FUZZ_SECONDS` each), for machines
//! without nightly Rust; with nightly, `scripts/fuzz-smoke` runs the same
//! bodies under libFuzzer. Also: mutated JSON bodies sent over HTTP to every
//! write endpoint of an in-process server: each gets an envelope, none a 5xx.
//! A failing input is saved under `target/jepsen-failures/` (feed it to the
//! libFuzzer target to reproduce).

use baton_jepsen::Knobs;
use baton_jepsen::fuzz::{apply_commands, decode_request};
use baton_jepsen::http::{Agent, Answer, Method};
use baton_jepsen::knobs::target_dir;
use baton_jepsen::rng::Rng;
use baton_jepsen::server::InProcessServer;
use baton_server::ServeConfig;
use std::time::{Duration, Instant};

/// Valid request bodies the mutator starts from.
const SEEDS: &[&str] = &[
    r#"{"agent":"a","op":{"op":"put","key":"k/1","value":{"v":1},"if_version":0}}"#,
    r#"{"agent":"a","session":3,"idempotency_key":"i","fence":{"key":"l/a","token":2},"op":{"op":"delete","key":"k/1"}}"#,
    r#"{"op":"lock_acquire","keys":["l/a","l/b"],"mode":"shared","ttl_ms":100,"wait_ms":50,"lock_delay_ms":10}"#,
    r#"{"op":"txn","compares":[{"key":"k/1","version":3,"op":"gt"}],"success":[{"op":"counter_add","key":"c","delta":-1,"min":0}],"failure":[{"op":"get","key":"k/1"}]}"#,
    r#"{"op":"patch","key":"k/1","patch":{"type":"json","ops":[{"op":"test","path":"/v","value":1},{"op":"add","path":"/w","value":[1,2]}]}}"#,
    r#"{"op":"patch","key":"k/1","patch":{"type":"merge","patch":{"a":null,"b":{"c":1.5e300}}}}"#,
    r#"{"t":1700000000000,"c":{"agent":"baton","op":{"op":"tick"}}}"#,
    r#"{"keys":["l/a"],"ttl_ms":18446744073709551615,"wait_ms":0}"#,
    r#"{"op":"counter_add","key":"c/0","delta":-9223372036854775808,"max":-1}"#,
    r#"{"op":"quota_reserve","quota":"q/a","amount":2,"ttl_ms":100}"#,
    r#"{"op":"once","key":"o/a","max_age_ms":10,"claim_ttl_ms":20,"wait_ms":5}"#,
    "",
    "   \n",
    "[]",
];

/// One random mutation of `input`: flip, insert, delete, duplicate or splice.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"-1",
        b"1e309",
        b"18446744073709551616",
        b"\"op\"",
        b"\"key\"",
        b"\\u0000",
        b"\xff",
        b"\"\xf0\x9f\x92\xa9\"",
        b"9223372036854775807",
    ];
    let at = if input.is_empty() {
        0
    } else {
        rng.below(input.len() as u64 + 1) as usize
    };
    match rng.below(5) {
        0 if !input.is_empty() => {
            let i = at.min(input.len() - 1);
            input[i] ^= 1 << rng.below(8);
        }
        1 => {
            let token = rng.pick(TOKENS);
            input.splice(at..at, token.iter().copied());
        }
        2 if !input.is_empty() => {
            let end = (at + 1 + rng.below(8) as usize).min(input.len());
            input.drain(at.min(end)..end);
        }
        3 if !input.is_empty() => {
            let start = rng.below(input.len() as u64) as usize;
            let end = (start + 1 + rng.below(16) as usize).min(input.len());
            let piece: Vec<u8> = input[start..end].to_vec();
            input.splice(at..at, piece);
        }
        _ => input.push(rng.below(256) as u8),
    }
    input.truncate(8192);
}

/// Runs `body` over inputs from `next` for `time`; saves and re-panics on a failure.
fn replay(name: &str, time: Duration, mut next: impl FnMut() -> Vec<u8>, body: fn(&[u8])) -> u64 {
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < time {
        let input = next();
        if std::panic::catch_unwind(|| body(&input)).is_err() {
            let dir = target_dir().join("jepsen-failures");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("fuzz-{name}-{}.bin", started.elapsed().as_nanos()));
            let _ = std::fs::write(&path, &input);
            panic!(
                "fuzz body {name} failed on input {} ({} bytes): {:?}",
                path.display(),
                input.len(),
                String::from_utf8_lossy(&input)
            );
        }
        runs += 1;
    }
    eprintln!(
        "fuzz replay {name}: {runs} inputs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    runs
}

#[test]
fn decode_request_survives_random_and_mutated_bodies() {
    let knobs = Knobs::from_env();
    let mut rng = Rng::new(knobs.seed);
    eprintln!("seed {}", knobs.seed);
    let runs = replay(
        "decode_request",
        knobs.fuzz_time,
        || {
            let mut input = if rng.percent(10) {
                (0..rng.below(64)).map(|_| rng.below(256) as u8).collect()
            } else {
                rng.pick(SEEDS).as_bytes().to_vec()
            };
            for _ in 0..rng.below(6) {
                mutate(&mut rng, &mut input);
            }
            input
        },
        decode_request,
    );
    assert!(runs > 100, "only {runs} inputs in {:?}", knobs.fuzz_time);
}

#[test]
fn apply_survives_random_command_sequences_with_clock_jumps() {
    let knobs = Knobs::from_env();
    let mut rng = Rng::new(knobs.seed ^ 0xa991);
    eprintln!("seed {}", knobs.seed ^ 0xa991);
    let runs = replay(
        "apply",
        knobs.fuzz_time,
        || (0..rng.below(4096)).map(|_| rng.below(256) as u8).collect(),
        apply_commands,
    );
    assert!(runs > 20, "only {runs} inputs in {:?}", knobs.fuzz_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_get_an_envelope_and_never_a_server_error() {
    let knobs = Knobs::from_env();
    let mut rng = Rng::new(knobs.seed ^ 0x4774);
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path(), ServeConfig::default())
        .await
        .unwrap();
    let agent = Agent::new("fuzzer");
    let endpoints: &[(Method, &str, &str)] = &[
        (
            Method::PUT,
            "/v1/kv/f/a",
            r#"{"value":{"v":1},"if_version":0,"ttl_ms":1000}"#,
        ),
        (
            Method::PATCH,
            "/v1/kv/f/a",
            r#"{"merge":{"v":2},"if_version":1}"#,
        ),
        (
            Method::PATCH,
            "/v1/kv/f/a",
            r#"{"json_patch":[{"op":"add","path":"/w","value":1}]}"#,
        ),
        (Method::DELETE, "/v1/kv/f/a", r#"{"if_version":3}"#),
        (
            Method::POST,
            "/v1/txn",
            r#"{"compares":[{"key":"f/a","exists":true}],"success":[{"op":"put","key":"f/b","value":1}]}"#,
        ),
        (
            Method::POST,
            "/v1/counters/add",
            r#"{"key":"f/c","delta":1,"min":0,"max":5}"#,
        ),
        (
            Method::POST,
            "/v1/locks",
            r#"{"keys":["f/l"],"ttl_ms":50,"wait_ms":0}"#,
        ),
        (Method::POST, "/v1/sessions", r#"{"ttl_ms":1000}"#),
        (Method::POST, "/v1/sessions/1/keepalive", r#"{}"#),
        (Method::POST, "/v1/locks/1/renew", r#"{"ttl_ms":100}"#),
    ];
    let started = Instant::now();
    let mut sent = 0u64;
    let time = knobs.fuzz_time.min(Duration::from_secs(6));
    while started.elapsed() < time {
        let (method, path, seed) = rng.pick(endpoints).clone();
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..rng.below(5) {
            mutate(&mut rng, &mut body);
        }
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url))
            .header("Baton-Agent", "fuzzer")
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no answer to {path} {:?}: {e}",
                    String::from_utf8_lossy(&body)
                )
            });
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a whole body");
        let envelope: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{path} {:?} answered {status} without the envelope: {:?}",
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(envelope["ok"].is_boolean(), "{envelope}");
        assert!(
            status < 500,
            "{path} {:?} answered {status}: {envelope}",
            String::from_utf8_lossy(&body)
        );
        sent += 1;
    }
    let health = agent
        .get(&server.url, "/readyz", Duration::from_secs(5))
        .await;
    assert!(
        matches!(health, Answer::Reply { status: 200, .. }),
        "{}",
        health.describe()
    );
    eprintln!(
        "http fuzz: {sent} mutated bodies in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(sent > 50);
    server.stop().await.unwrap();
}
