//! The transport floor: what a lock-uncontended operation costs when the
//! server does no work at all. `baton-bench floor` serves canned answers
//! to Baton's lock acquire and release, shaped and sized like the real
//! server's, from one thread (the cheapest server there is: no routing, no
//! JSON, no state, no disk). Two clients measure it in the same run as the
//! peers:
//!
//! - `floor-sdk`: Baton's own Rust client, exactly as the bench drives Baton;
//! - `floor-raw`: a client that writes canned request bytes and reads until
//!   the answer's length, with no HTTP library at all.
//!
//! Divided by redis-always, each is the most any server could reach on
//! this machine with that client and one HTTP/1.1 round trip per command:
//! the ceiling for the lock-uncontended target.

use std::net::SocketAddr;

use baton_core::{EndReason, Envelope, LockInfo, LockMode, LockStatus, ReleaseResult};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::systems::{Held, OpError, OpResult};

/// Longest request head the floor server accepts: far above what any
/// client here sends, and a bound on a connection's buffer.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The two canned answers, as the real server sends them (head and body).
struct Answers {
    acquire: Vec<u8>,
    release: Vec<u8>,
}

fn http_answer(body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: Mon, 23 Nov 2026 00:00:00 GMT\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

impl Answers {
    fn new() -> Answers {
        // What `baton serve` answers for the bench's own keys and lock ids.
        let lock = LockInfo {
            lock_id: 1_000_001,
            status: LockStatus::Held,
            agent: "bench-63".into(),
            session: None,
            keys: vec!["bench/r176391234501-lock-uncontended-c64/lock-63".into()],
            mode: LockMode::Exclusive,
            fence_token: Some(1_000_001),
            granted_at: Some(1_795_435_200_000),
            expires_at: Some(1_795_435_230_000),
            wait_deadline: None,
            permits: None,
            values: None,
        };
        let released = ReleaseResult {
            lock_id: 1_000_001,
            released: true,
            outcome: EndReason::Released,
            ended_at: Some(1_795_435_200_001),
        };
        Answers {
            acquire: canned(lock),
            release: canned(released),
        }
    }
}

/// `result` in the success envelope, as an HTTP answer.
fn canned<T: Serialize>(result: T) -> Vec<u8> {
    let reply: Result<T, baton_core::Error> = Ok(result);
    http_answer(&serde_json::to_vec(&Envelope::of(&reply)).expect("a canned answer serializes"))
}

/// Where the first complete HTTP/1.1 message (head and body) in `buffer`
/// ends, if it holds one: enough parsing for the floor, and no more.
fn message_end(buffer: &[u8]) -> Result<Option<usize>, String> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| "a head that is not UTF-8")?;
    let mut body = 0;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            body = value
                .trim()
                .parse()
                .map_err(|_| format!("a bad content-length {value:?}"))?;
        }
    }
    let end = head_end + 4 + body;
    Ok((buffer.len() >= end).then_some(end))
}

/// What a floor system says to any workload but lock-uncontended.
pub fn only_locks() -> OpError {
    OpError("the floor answers only lock acquire and release".into())
}

/// The floor's answer to a first acquire: proof it is up, and what it is.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let mut conn = RawConn::connect(url, 0).await?;
    conn.acquire().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    conn.release().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok("a server that does no work (canned answers, one thread)".into())
}

/// `baton-bench floor`: answers until killed.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("baton-bench floor: answering on {listen}");
            let answers: &'static Answers = Box::leak(Box::new(Answers::new()));
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(async move {
                    if let Err(error) = answer_connection(stream, answers).await {
                        eprintln!("baton-bench floor: a connection failed: {error}");
                    }
                });
            }
        })
}

/// `baton-bench floor --axum`: the same canned answers through Baton's own
/// transport stack (axum on hyper, tokio's multi-thread runtime with its
/// default workers, as `baton serve` runs), still with no JSON, state or
/// disk: the least a server built the way DESIGN.md prescribes can cost.
pub fn serve_axum(listen: SocketAddr) -> anyhow::Result<()> {
    use axum::routing::{delete, post};
    let answers: &'static Answers = Box::leak(Box::new(Answers::new()));
    let body = |answer: &'static [u8]| {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a canned answer has a head")
            + 4;
        &answer[at..]
    };
    let (acquire, release) = (body(&answers.acquire), body(&answers.release));
    let json = |bytes: &'static [u8]| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
    };
    let app = axum::Router::new()
        .route("/v1/locks", post(move || async move { json(acquire) }))
        .route(
            "/v1/locks/{id}",
            delete(move || async move { json(release) }),
        );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            eprintln!("baton-bench floor: answering through axum on {listen}");
            axum::serve(listener, app).await?;
            Ok(())
        })
}

async fn answer_connection(mut stream: TcpStream, answers: &Answers) -> anyhow::Result<()> {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        while let Some(end) = message_end(&buffer).map_err(anyhow::Error::msg)? {
            let answer = if buffer.starts_with(b"DELETE ") {
                &answers.release
            } else {
                &answers.acquire
            };
            stream.write_all(answer).await?;
            buffer.drain(..end);
        }
        anyhow::ensure!(
            buffer.len() <= MAX_REQUEST_BYTES,
            "a request over {MAX_REQUEST_BYTES} bytes"
        );
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    }
}

/// `floor-raw`: one connection that writes the bytes Baton's client would
/// write for an acquire and a release, and reads each answer to its end,
/// with no HTTP library: the least a client can do per round trip.
pub struct RawConn {
    stream: TcpStream,
    acquire: Vec<u8>,
    release: Vec<u8>,
    buffer: Vec<u8>,
}

impl RawConn {
    pub async fn connect(url: &str, client: usize) -> anyhow::Result<RawConn> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("the floor's URL {url:?} is not http://host:port"))?
            .trim_end_matches('/');
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let body = format!(
            r#"{{"keys":["bench/r176391234501-lock-uncontended-c64/lock-{client}"],"mode":"exclusive","ttl_ms":30000,"wait_ms":10000}}"#
        );
        let head = |method: &str, target: &str, body: &str| {
            format!(
                "{method} {target} HTTP/1.1\r\nbaton-agent: bench-{client}\r\nhost: {authority}\r\nuser-agent: baton-client/0.1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Ok(RawConn {
            stream,
            acquire: head("POST", "/v1/locks", &body),
            release: head("DELETE", "/v1/locks/1000001", ""),
            buffer: Vec::with_capacity(4096),
        })
    }

    async fn round_trip(&mut self, release: bool) -> OpResult<()> {
        let request = if release {
            &self.release
        } else {
            &self.acquire
        };
        self.stream.write_all(request).await?;
        loop {
            if let Some(end) = message_end(&self.buffer).map_err(OpError)? {
                let ok = self.buffer.starts_with(b"HTTP/1.1 200 ");
                self.buffer.drain(..end);
                return if ok {
                    Ok(())
                } else {
                    Err(OpError("the floor answered with an error".into()))
                };
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(OpError("the floor closed the connection".into()));
            }
        }
    }

    pub async fn acquire(&mut self) -> OpResult<Held> {
        self.round_trip(false).await?;
        Ok(Held::Floor)
    }

    pub async fn release(&mut self) -> OpResult<()> {
        self.round_trip(true).await
    }
}
