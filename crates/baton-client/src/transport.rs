//! The client's HTTP/1.1 connections to one server: hyper's connection API,
//! driven in the caller's own task, and a small pool of idle keep-alive
//! connections that the clones of a `Client` share.
//!
//! Why not a general HTTP client (reqwest, before): a request to Baton is
//! one small JSON body to one known server. Driving the connection in the
//! calling task means no background task per connection, no hand-off of
//! every request and answer between tasks, and no URL to parse per request;
//! bench/README.md has what that saved. The load generator shares the
//! machine with the server in every benchmark and in most agent teams.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept for reuse; more are closed once their answer is read.
pub const MAX_IDLE_CONNECTIONS: usize = 32;
/// An idle connection older than this is closed instead of reused: the
/// server, or a proxy between, may have dropped it without a word.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// No TCP connection (refused, unresolvable host).
    Connect(std::io::Error),
    /// No TCP connection within this long.
    ConnectTimeout(Duration),
    /// Connected, but no whole answer within this long.
    Timeout(Duration),
    /// The connection broke or carried something that is not HTTP.
    Exchange(String),
}

/// One request: origin-form target and the headers besides Host,
/// User-Agent and Content-Type, which the transport adds.
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
}

/// Where the server is and how requests name it.
#[derive(Clone)]
pub struct Transport {
    host: String,
    port: u16,
    authority: HeaderValue,
    /// How long to wait for a TCP connection.
    connect_timeout: Duration,
    idle: Arc<Mutex<Vec<Idle>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// One HTTP/1.1 connection: requests go in through `sender`; hyper moves
/// the bytes only while `driver` is polled, so every await on this
/// connection goes through [`Driver::drive`].
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
}

struct Driver {
    connection: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    /// The connection finished: it is closed and must not be polled again.
    ended: bool,
}

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("baton-client/", env!("CARGO_PKG_VERSION")));

impl Transport {
    /// `host` is a name or an IP address (IPv6 without brackets);
    /// `authority` is what the Host header says.
    pub fn new(
        host: String,
        port: u16,
        authority: HeaderValue,
        connect_timeout: Duration,
    ) -> Transport {
        Transport {
            host,
            port,
            authority,
            connect_timeout,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Sends `outgoing` and reads the whole answer: its status and body.
    /// `timeout` bounds everything after the TCP connection is made.
    pub async fn exchange(
        &self,
        outgoing: Outgoing,
        timeout: Duration,
    ) -> Result<(u16, Bytes), Failure> {
        let (mut connection, sent) = self.start(outgoing).await?;
        let driver = &mut connection.driver;
        // Dropped on a timeout or an error, so the connection closes: it is
        // mid-answer and cannot carry another request.
        let answer = tokio::time::timeout(timeout, async {
            let response = driver.drive(sent).await??;
            let status = response.status().as_u16();
            let body = driver
                .drive(response.into_body().collect())
                .await?
                .map_err(|e| Failure::Exchange(crate::root_cause(&e)))?;
            Ok::<_, Failure>((status, body.to_bytes()))
        })
        .await
        .map_err(|_| Failure::Timeout(timeout))??;
        self.put_back(connection);
        Ok(answer)
    }

    /// Sends `outgoing` and hands back the status and, as a stream, the body
    /// of the answer: for the server-sent events of a watch. The connection
    /// belongs to the stream and closes with it.
    pub async fn open_stream(
        &self,
        outgoing: Outgoing,
        timeout: Duration,
    ) -> Result<(u16, BodyStream), Failure> {
        let (mut connection, sent) = self.start(outgoing).await?;
        let response = tokio::time::timeout(timeout, connection.driver.drive(sent))
            .await
            .map_err(|_| Failure::Timeout(timeout))???;
        let status = response.status().as_u16();
        Ok((
            status,
            BodyStream {
                driver: connection.driver,
                body: response.into_body(),
                done: false,
            },
        ))
    }

    /// A ready connection with `outgoing` handed to it; the answer comes
    /// once the connection is driven.
    async fn start(
        &self,
        outgoing: Outgoing,
    ) -> Result<
        (
            Connection,
            impl Future<Output = Result<Response<Incoming>, Failure>> + use<>,
        ),
        Failure,
    > {
        let mut connection = self.ready_connection().await?;
        let sent = send(&mut connection.sender, self.request(outgoing));
        Ok((connection, sent))
    }

    fn request(&self, outgoing: Outgoing) -> Request<Full<Bytes>> {
        let has_body = outgoing.body.is_some();
        let mut request = Request::new(Full::new(
            outgoing.body.map(Bytes::from).unwrap_or_default(),
        ));
        *request.method_mut() = outgoing.method;
        *request.uri_mut() = outgoing.uri;
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.authority.clone());
        headers.insert(header::USER_AGENT, USER_AGENT);
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        for (name, value) in outgoing.headers {
            headers.insert(name, value);
        }
        request
    }

    /// An idle connection that is still open, or a new one.
    async fn ready_connection(&self) -> Result<Connection, Failure> {
        while let Some(mut connection) = self.take_idle() {
            // Ready only if the server has not closed it meanwhile; nothing
            // was sent on it yet, so trying the next one is safe.
            let sender = &mut connection.sender;
            let ready = poll_fn(|cx| sender.poll_ready(cx));
            let ready = connection.driver.drive(ready).await;
            if matches!(ready, Ok(Ok(()))) && !connection.driver.ended {
                return Ok(connection);
            }
        }
        self.connect().await
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_CONNECTION_TIMEOUT {
                return Some(entry.connection);
            }
        }
        None
    }

    fn put_back(&self, connection: Connection) {
        if connection.driver.ended {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| Failure::ConnectTimeout(self.connect_timeout))?
        .map_err(Failure::Connect)?;
        // Requests are small and answered one at a time: send each at once.
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Exchange(crate::root_cause(&e)))?;
        Ok(Connection {
            sender,
            driver: Driver {
                connection: driver,
                ended: false,
            },
        })
    }
}

/// Hands `request` to the connection; the answer comes once the driver
/// has moved it. The future does not borrow the sender.
fn send(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> impl Future<Output = Result<Response<Incoming>, Failure>> + use<> {
    let sent = sender.send_request(request);
    async move {
        sent.await
            .map_err(|e| Failure::Exchange(crate::root_cause(&e)))
    }
}

impl Driver {
    /// Runs `work` (a request, a body read, a readiness check on this
    /// connection) to its end while polling the driver, which moves the bytes.
    /// The driver goes first, so that `work` sees everything that has arrived:
    /// a connection that the server closed while it sat idle is found closed
    /// before a request goes out on it.
    async fn drive<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Failure> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            let driver = self.poll_driver(cx);
            match (work.as_mut().poll(cx), driver) {
                (Poll::Ready(out), _) => Poll::Ready(Ok(out)),
                (Poll::Pending, Poll::Pending) => Poll::Pending,
                (Poll::Pending, Poll::Ready(ended)) => Poll::Ready(Err(ended)),
            }
        })
        .await
    }

    /// Polls the driver; `Ready` once the connection has closed, with why.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> Poll<Failure> {
        if self.ended {
            return Poll::Ready(closed());
        }
        match Pin::new(&mut self.connection).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.ended = true;
                Poll::Ready(match result {
                    Ok(()) => closed(),
                    Err(e) => Failure::Exchange(crate::root_cause(&e)),
                })
            }
        }
    }
}

fn closed() -> Failure {
    Failure::Exchange("the server closed the connection before answering".to_string())
}

/// The body of a streamed answer, chunk by chunk; ends with the connection.
pub struct BodyStream {
    driver: Driver,
    body: Incoming,
    done: bool,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, Failure>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Failure::Exchange(crate::root_cause(&e)))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            if this.driver.ended {
                // Nothing more can arrive.
                this.done = true;
                return Poll::Ready(if this.body.is_end_stream() {
                    None
                } else {
                    Some(Err(closed()))
                });
            }
            match this.driver.poll_driver(cx) {
                Poll::Pending => return Poll::Pending,
                // Closed: read what the last steps delivered, then end.
                Poll::Ready(_) => continue,
            }
        }
    }
}
