//! etcd v3 through its HTTP/JSON gateway (keys and values base64): one lease
//! per client, locks through the Lock API (`/v3/lock/lock` queues on the
//! server until the owner key is first in line), fenced writes as a txn that
//! requires the owner key to exist, compare-and-set as a txn on
//! `mod_revision` whose failure branch reads the current value back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Held, LEASE, OpError, OpResult};

pub struct Conn {
    http: reqwest::Client,
    base: String,
    lease: String,
}

fn b64(text: &str) -> String {
    B64.encode(text)
}

fn unb64(text: &str) -> OpResult<String> {
    let bytes = B64
        .decode(text)
        .map_err(|e| OpError(format!("etcd sent bad base64: {e}")))?;
    String::from_utf8(bytes).map_err(|e| OpError(format!("etcd value is not UTF-8: {e}")))
}

/// etcd's JSON encodes int64 as strings; absent means 0.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Conn {
    pub async fn connect(url: &str) -> anyhow::Result<Conn> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        let mut conn = Conn {
            http,
            base: url.trim_end_matches('/').to_string(),
            lease: String::new(),
        };
        // The lease outlives any run's lock hold; the lock keys go with it.
        let ttl = LEASE.as_secs() * 4;
        let granted = conn
            .call("/v3/lease/grant", json!({ "TTL": ttl }))
            .await
            .map_err(|e| anyhow::anyhow!("etcd lease grant: {e}"))?;
        conn.lease = match &granted["ID"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(conn)
    }

    async fn call(&self, path: &str, body: Value) -> OpResult<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() || body.get("error").is_some() {
            return Err(OpError(format!("etcd {path}: HTTP {status}: {body}")));
        }
        Ok(body)
    }

    pub async fn acquire(&mut self, key: &str) -> OpResult<Held> {
        let locked = self
            .call(
                "/v3/lock/lock",
                json!({ "name": b64(key), "lease": self.lease }),
            )
            .await?;
        let owner_key = locked["key"]
            .as_str()
            .ok_or_else(|| OpError(format!("etcd lock answered without a key: {locked}")))?
            .to_string();
        Ok(Held::Etcd { owner_key })
    }

    pub async fn release(&mut self, owner_key: &str) -> OpResult<()> {
        self.call("/v3/lock/unlock", json!({ "key": owner_key }))
            .await?;
        Ok(())
    }

    fn put_op(key: &str, value: &str) -> Value {
        json!({ "request_put": { "key": b64(key), "value": b64(value) } })
    }

    /// Writes only while our owner key exists: etcd's fence.
    pub async fn increment_fenced(&mut self, owner_key: &str, counter: &str) -> OpResult<i64> {
        let (value, _) = self.read_counter(counter).await?;
        let next = value + 1;
        let txn = json!({
            "compare": [{
                "key": owner_key, "target": "CREATE", "result": "GREATER", "create_revision": "0"
            }],
            "success": [Self::put_op(counter, &next.to_string())],
        });
        let answer = self.call("/v3/kv/txn", txn).await?;
        if answer["succeeded"].as_bool() == Some(true) {
            Ok(next)
        } else {
            Err(OpError(format!("fenced: our lock key is gone ({answer})")))
        }
    }

    pub async fn cas_increment(&mut self, counter: &str) -> OpResult<u64> {
        let (mut value, mut mod_revision) = self.read_counter(counter).await?;
        let mut conflicts = 0;
        loop {
            let txn = json!({
                "compare": [{
                    "key": b64(counter), "target": "MOD", "result": "EQUAL",
                    "mod_revision": mod_revision.to_string()
                }],
                "success": [Self::put_op(counter, &(value + 1).to_string())],
                "failure": [{ "request_range": { "key": b64(counter) } }],
            });
            let answer = self.call("/v3/kv/txn", txn).await?;
            if answer["succeeded"].as_bool() == Some(true) {
                return Ok(conflicts);
            }
            conflicts += 1;
            let range = &answer["responses"][0]["response_range"];
            (value, mod_revision) = Self::counter_of(range)?;
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> OpResult<()> {
        self.call(
            "/v3/kv/put",
            json!({ "key": b64(key), "value": b64(value) }),
        )
        .await?;
        Ok(())
    }

    fn counter_of(range: &Value) -> OpResult<(i64, i64)> {
        match range["kvs"].get(0) {
            None => Ok((0, 0)),
            Some(kv) => {
                let text = unb64(kv["value"].as_str().unwrap_or_default())?;
                let value = text
                    .parse()
                    .map_err(|_| OpError(format!("counter holds {text:?}, not a number")))?;
                Ok((value, int(&kv["mod_revision"])))
            }
        }
    }

    /// The counter and its `mod_revision`; absent is (0, 0).
    pub async fn read_counter(&mut self, counter: &str) -> OpResult<(i64, i64)> {
        let range = self
            .call("/v3/kv/range", json!({ "key": b64(counter) }))
            .await?;
        Self::counter_of(&range)
    }

    pub async fn read_value(&mut self, key: &str) -> OpResult<Option<String>> {
        let range = self
            .call("/v3/kv/range", json!({ "key": b64(key) }))
            .await?;
        match range["kvs"].get(0) {
            None => Ok(None),
            Some(kv) => unb64(kv["value"].as_str().unwrap_or_default()).map(Some),
        }
    }

    /// Revokes the lease so nothing of this client lingers.
    pub async fn close(self) {
        let _ = self
            .call("/v3/lease/revoke", json!({ "ID": self.lease }))
            .await;
    }
}

pub async fn version(url: &str) -> anyhow::Result<String> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/version", url.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    Ok(format!(
        "etcd {}",
        body["etcdserver"].as_str().unwrap_or("unknown")
    ))
}
