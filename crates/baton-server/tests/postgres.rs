//! `baton serve --postgres`: the server keeps its log and snapshots in a
//! real PostgreSQL (`BATON_TEST_POSTGRES`, default the local one, database
//! `test`), each test in a schema of its own.

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::*;

fn conninfo() -> String {
    std::env::var("BATON_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A schema of this test's own, dropped when the guard goes.
struct Schema(String);

impl Schema {
    fn new(what: &str) -> Schema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Schema(format!(
            "t_{what}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn config(&self) -> baton_server::ServeConfig {
        baton_server::ServeConfig {
            postgres: Some(conninfo()),
            postgres_schema: self.0.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            // Snapshots (and the truncation after them) go to PostgreSQL too.
            snapshot_every_commands: 40,
            ..baton_server::ServeConfig::default()
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = admin(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}

/// Runs `sql` on a connection of its own. The driver runs its own
/// runtime, so not on the test's async thread.
fn admin(sql: String) -> Result<(), postgres::Error> {
    std::thread::spawn(move || {
        postgres::Client::connect(&conninfo(), postgres::NoTls)?.batch_execute(&sql)
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_server_on_postgres_keeps_every_acknowledged_write_across_restarts() {
    let schema = Schema::new("restart");
    let config = schema.config();
    let server = TestServer::start_on(config.clone()).await;
    let status = server.client("a").get("/v1/status").await.ok().clone();
    assert!(
        status["data_dir"].as_str().unwrap().contains(&schema.0),
        "{status}"
    );

    // Real concurrent clients, each adding to one counter and writing its
    // own keys: every acknowledged write must be there after the restart.
    let (clients, adds) = (8, 25);
    let tasks = (0..clients).map(|c| {
        let api = server.client(&format!("agent-{c}"));
        tokio::spawn(async move {
            for i in 0..adds {
                api.post("/v1/counters/add", json!({"key": "pg/count", "delta": 1}))
                    .await
                    .ok();
                api.put(&format!("pg/own/{c}"), json!({"value": i}))
                    .await
                    .ok();
            }
        })
    });
    join_all_within(tasks.collect(), Duration::from_secs(60)).await;
    let lock = server
        .client("holder")
        .post("/v1/locks", json!({"keys": ["pg/lock"], "ttl_ms": 600_000}))
        .await
        .ok()["lock_id"]
        .clone();
    let before = server
        .client("a")
        .get("/v1/kv?prefix=pg/")
        .await
        .ok()
        .clone();
    server.stop().await;

    let server = TestServer::start_on(config).await;
    let api = server.client("a");
    let after = api.get("/v1/kv?prefix=pg/").await.ok().clone();
    assert_eq!(after["entries"], before["entries"]);
    assert_eq!(
        api.get("/v1/kv/pg/count").await.ok()["value"],
        json!(clients * adds)
    );
    assert_eq!(
        api.get("/v1/locks?key=pg/lock").await.ok()["holders"][0]["lock_id"],
        lock
    );
    let status = api.get("/v1/status").await.ok().clone();
    assert!(
        status["snapshot"]["revision"].as_u64().unwrap() > 0,
        "a snapshot was saved in PostgreSQL and recovered from: {status}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_schema_is_refused() {
    let schema = Schema::new("second");
    let server = TestServer::start_on(schema.config()).await;
    let error = baton_server::run(schema.config())
        .await
        .expect_err("the schema has its writer");
    let message = format!("{error:#}");
    assert!(
        message.contains("in use by another Baton server"),
        "{message}"
    );
    assert!(message.contains(&schema.0), "{message}");
    // The first server is unharmed.
    server
        .client("a")
        .put("x/y", json!({"value": 1}))
        .await
        .ok();
    server.stop().await;

    // Another schema is another log.
    let other = Schema::new("other");
    let server = TestServer::start_on(other.config()).await;
    assert_eq!(
        server.client("a").get("/v1/kv/x/y").await.code(),
        "NOT_FOUND"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_lost_its_postgres_connection_refuses_writes_until_restarted() {
    let schema = Schema::new("lost");
    let server = TestServer::start_on(schema.config()).await;
    let api = server.client("a");
    api.put("lost/before", json!({"value": 1})).await.ok();
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'baton-log {}'",
        schema.0
    ))
    .unwrap();
    let refused = api.put("lost/after", json!({"value": 2})).await;
    assert_eq!(refused.code(), "UNAVAILABLE", "{:?}", refused.body);
    let again = api.put("lost/after", json!({"value": 3})).await;
    assert_eq!(again.code(), "UNAVAILABLE");
    // Reads still answer from the applied state.
    assert_eq!(api.get("/v1/kv/lost/before").await.ok()["value"], json!(1));
    server.stop().await;

    // A restart recovers what was durable; the refused writes are not there.
    let server = TestServer::start_on(schema.config()).await;
    let api = server.client("a");
    assert_eq!(api.get("/v1/kv/lost/before").await.ok()["value"], json!(1));
    assert_eq!(api.get("/v1/kv/lost/after").await.code(), "NOT_FOUND");
    server.stop().await;
}
