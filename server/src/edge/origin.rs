//! Fetching from origins: which origin serves a path ([`Routes`]), one GET to it read whole
//! with a deadline and a per-origin bulkhead ([`OriginClient::fetch`]), and a request whose
//! answer streams through without being buffered, for bodies too large to store
//! ([`OriginClient::fetch_streaming`]).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Semaphore;

use basalt_edge::limits::STORED_OBJECT_BYTES_MAX;
use basalt_tls::{ConnectionBudget, ConnectionPermit};

use crate::config::{ConfigError, OriginConfig};

/// The origins by path prefix, longest first.
pub struct Routes {
    routes: Vec<(String, Authority)>,
}

impl Routes {
    pub fn new(origins: &[OriginConfig]) -> Result<Self, ConfigError> {
        let mut routes = origins
            .iter()
            .map(|o| Ok((o.prefix.clone(), o.authority()?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self { routes })
    }

    /// The index and authority of the origin serving `path`: the longest prefix it starts with.
    pub fn find(&self, path: &str) -> Option<(usize, &Authority)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, (prefix, _))| path.starts_with(prefix.as_str()))
            .map(|(i, (_, authority))| (i, authority))
    }
}

/// Why an origin gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("origin {origin} did not answer within {timeout_ms} ms")]
    Timeout { origin: String, timeout_ms: u128 },
    #[error("origin {origin} is unreachable: {reason}")]
    Unreachable { origin: String, reason: String },
    #[error("origin {origin} answered with something that is not HTTP: {reason}")]
    Garbage { origin: String, reason: String },
    /// Not a failure for the client: the handler streams such an answer through instead.
    #[error("origin {origin} answered a body over {max} bytes: streamed through, not stored")]
    TooLarge { origin: String, max: u64 },
    #[error("{0}")]
    Lost(String),
    /// A streamed answer holds an origin connection for as long as its client reads, so it
    /// takes a permit of the client doors' budget (the node's file descriptor plan); none was
    /// left.
    #[error("origin {origin} not asked: the node holds as many connections as its file descriptors allow")]
    NoConnectionLeft { origin: String },
}

impl OriginError {
    /// The status a client gets for it: 504 for a timeout, 503 when the node has no connection
    /// left for it, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            OriginError::NoConnectionLeft { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// An origin's answer, read whole.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    /// Without hop-by-hop headers and without `Content-Length` (the body says it).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

/// Request headers never passed to the origin: the connection's own; `Content-Length` and
/// `Expect` (the edge sends no body).
const NOT_FORWARDED: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// The conditions and ranges of the client: not passed to the origin when fetching an object to
/// store (the edge answers them itself from the whole object), passed when streaming through.
const CLIENT_CONDITIONS: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Headers that make an origin build another page than the one the cache keys it under (web
/// cache poisoning: the answer to one client's `X-Forwarded-Host: evil` stored for everyone).
/// Never forwarded: an origin behind Basalt sees the edge as the client.
const UNKEYED_OVERRIDES: [&str; 15] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-host",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// The client's headers without those its `Connection` names and the hop-by-hop ones: what the
/// edge keys and answers by.
pub fn without_hop_by_hop(mut request: HeaderMap) -> HeaderMap {
    for name in named_by_connection(&request) {
        request.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        request.remove(name);
    }
    request
}

/// The client's headers that go to the origin when fetching an object to store.
pub fn forwarded(request: &HeaderMap) -> HeaderMap {
    let mut out = forwarded_streaming(request);
    for name in &CLIENT_CONDITIONS {
        out.remove(name);
    }
    out
}

/// The client's headers that go to the origin for an answer streamed through: its conditions
/// and range included, which the origin answers.
pub fn forwarded_streaming(request: &HeaderMap) -> HeaderMap {
    let mut out = without_hop_by_hop(request.clone());
    for name in &NOT_FORWARDED {
        out.remove(name);
    }
    for name in UNKEYED_OVERRIDES {
        out.remove(name);
    }
    out
}

/// Response headers not stored or passed on: hop-by-hop ones, and `Content-Length` (the body
/// served says it).
fn strip_response(headers: &mut HeaderMap) {
    for name in named_by_connection(headers) {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
        header::TE,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// The HTTP client of the origins: pooled keep-alive connections, a deadline per fetch, and at
/// most `requests_max` fetches in flight per origin.
pub struct OriginClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// For answers streamed through: keeps no idle connection, so that a stream's origin
    /// connection closes with its body and never outlives the permit it held (see
    /// [`OriginClient::fetch_streaming`]); a body over 64 MiB gains nothing from reuse.
    streaming: Client<HttpConnector, Empty<Bytes>>,
    bulkheads: Vec<Arc<Semaphore>>,
    timeout: Duration,
}

impl OriginClient {
    pub fn new(origins: usize, timeout: Duration, requests_max: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // Idle connections kept per origin within what the descriptor plan counts for it
            // (`requests_max` per origin: see the server's `descriptors`).
            .pool_max_idle_per_host(requests_max)
            .build(connector.clone());
        let streaming = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self {
            client,
            streaming,
            bulkheads: (0..origins).map(|_| Arc::new(Semaphore::new(requests_max))).collect(),
            timeout,
        }
    }

    /// GETs `path` (with query) from origin `index` at `authority` with these headers; the
    /// whole answer (head and body) within the timeout, waiting for a bulkhead permit included.
    pub async fn fetch(
        &self,
        index: usize,
        authority: &Authority,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Fetched, OriginError> {
        let origin = authority.as_str().to_owned();
        let work = async {
            let _permit = match self.bulkheads.get(index) {
                Some(bulkhead) => Some(bulkhead.acquire().await.map_err(|_| OriginError::Unreachable {
                    origin: origin.clone(),
                    reason: "the edge is stopping".into(),
                })?),
                None => None,
            };
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(format!("http://{authority}{path}"))
                .body(Empty::<Bytes>::new())
                .map_err(|e| OriginError::Garbage {
                    origin: origin.clone(),
                    reason: format!("the request cannot be built: {e}"),
                })?;
            *request.headers_mut() = headers;
            let request_time = SystemTime::now();
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    OriginError::Unreachable {
                        origin: origin.clone(),
                        reason: error_chain(&e),
                    }
                } else {
                    OriginError::Garbage {
                        origin: origin.clone(),
                        reason: error_chain(&e),
                    }
                }
            })?;
            let response_time = SystemTime::now();
            let (parts, body) = response.into_parts();
            // Refused before reading when the origin says the body is too long.
            let announced = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if announced.is_some_and(|len| len > STORED_OBJECT_BYTES_MAX) {
                return Err(OriginError::TooLarge {
                    origin: origin.clone(),
                    max: STORED_OBJECT_BYTES_MAX,
                });
            }
            let body = Limited::new(body, STORED_OBJECT_BYTES_MAX as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        OriginError::TooLarge {
                            origin: origin.clone(),
                            max: STORED_OBJECT_BYTES_MAX,
                        }
                    } else {
                        OriginError::Garbage {
                            origin: origin.clone(),
                            reason: format!("reading the body: {e}"),
                        }
                    }
                })?
                .to_bytes();
            let mut headers = parts.headers;
            strip_response(&mut headers);
            Ok(Fetched {
                status: parts.status,
                headers,
                body,
                request_time,
                response_time,
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::Timeout {
                origin,
                timeout_ms: self.timeout.as_millis(),
            }),
        }
    }
}

impl OriginClient {
    /// Sends `method` (GET or HEAD) for `path` to origin `index` and answers with the origin's
    /// head and its body as it arrives, never buffered whole: for answers too large to store.
    /// The head must arrive within the timeout (the bulkhead wait included); after it, the body
    /// may take as long as it needs, but fails if no byte arrives for a timeout's length while
    /// the client reads. The bulkhead permit is released once the head is in: a stream lasts as
    /// long as its client reads, and slow readers must not take the origin's slots from misses
    /// and revalidations. Instead the stream holds a permit of `connections` (the client doors'
    /// budget) until its body is dropped: its origin connection is a descriptor the plan does
    /// not count among the origins' share, and a client must not be able to open more of them
    /// than the node has. None left: [`OriginError::NoConnectionLeft`], nothing sent.
    pub async fn fetch_streaming(
        &self,
        connections: &Arc<ConnectionBudget>,
        index: usize,
        authority: &Authority,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<StreamedBody>, OriginError> {
        let origin = authority.as_str().to_owned();
        let is_head = method == Method::HEAD;
        let head = async {
            let permit = match self.bulkheads.get(index) {
                Some(bulkhead) => {
                    Some(
                        Arc::clone(bulkhead)
                            .acquire_owned()
                            .await
                            .map_err(|_| OriginError::Unreachable {
                                origin: origin.clone(),
                                reason: "the edge is stopping".into(),
                            })?,
                    )
                }
                None => None,
            };
            // Taken once the origin may be asked, so a stream queued on the bulkhead does not
            // hold a client's share meanwhile.
            let connection = connections
                .try_take()
                .ok_or_else(|| OriginError::NoConnectionLeft { origin: origin.clone() })?;
            let mut request = Request::builder()
                .method(method)
                .uri(format!("http://{authority}{path}"))
                .body(Empty::<Bytes>::new())
                .map_err(|e| OriginError::Garbage {
                    origin: origin.clone(),
                    reason: format!("the request cannot be built: {e}"),
                })?;
            *request.headers_mut() = headers;
            let response = self
                .streaming
                .request(request)
                .await
                .map_err(|e| match e.is_connect() {
                    true => OriginError::Unreachable {
                        origin: origin.clone(),
                        reason: error_chain(&e),
                    },
                    false => OriginError::Garbage {
                        origin: origin.clone(),
                        reason: error_chain(&e),
                    },
                })?;
            Ok((response, permit, connection))
        };
        let (response, _bulkhead, connection) = match tokio::time::timeout(self.timeout, head).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(OriginError::Timeout {
                    origin,
                    timeout_ms: self.timeout.as_millis(),
                })
            }
        };
        let (mut parts, body) = response.into_parts();
        // A GET's length goes with its body (hyper writes it from the body's exact size); a
        // HEAD's body is empty, so the origin's length is kept as it said it.
        let head_length = parts.headers.get(header::CONTENT_LENGTH).cloned();
        strip_response(&mut parts.headers);
        if let (true, Some(length)) = (is_head, head_length) {
            parts.headers.insert(header::CONTENT_LENGTH, length);
        }
        let body = StreamedBody {
            inner: body,
            _connection: connection,
            idle: Box::pin(tokio::time::sleep(self.timeout)),
            idle_timeout: self.timeout,
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// An origin's body passed through as it arrives. Ends with an error (the client's connection
/// is cut, so it cannot take a truncated body for a whole one) when the origin's stream fails or
/// stalls for longer than the idle timeout.
pub struct StreamedBody {
    inner: Incoming,
    /// The origin connection's share of the descriptor plan, given back with the body.
    _connection: ConnectionPermit,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "edge: a streamed origin body failed; the client's connection is cut");
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(timeout = ?this.idle_timeout, "edge: a streamed origin body stalled; the client's connection is cut");
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the origin sent nothing for {:?}", this.idle_timeout),
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_longest_prefix_serves_a_path() {
        let origins = [
            OriginConfig {
                prefix: "/".into(),
                upstream: "http://127.0.0.1:1".into(),
            },
            OriginConfig {
                prefix: "/assets/".into(),
                upstream: "http://127.0.0.1:2".into(),
            },
        ];
        let routes = Routes::new(&origins).expect("valid");
        assert_eq!(
            routes.find("/assets/app.js").map(|(_, a)| a.as_str()),
            Some("127.0.0.1:2")
        );
        assert_eq!(routes.find("/index.html").map(|(_, a)| a.as_str()), Some("127.0.0.1:1"));
        let only_assets = Routes::new(&origins[1..]).expect("valid");
        assert!(only_assets.find("/other").is_none());
    }

    #[test]
    fn hop_by_hop_and_conditional_headers_stay_here() {
        let mut request = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"a\""),
            ("host", "edge"),
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("x-forwarded-host", "evil.example"),
            ("accept-encoding", "gzip"),
        ] {
            request.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        let sent = forwarded(&request);
        let names: Vec<&str> = sent.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["accept-encoding"]);
    }
}
