//! The edge cache end to end: a node started with `--edge-listen` and `--origin`, a real origin
//! (an HTTP server this test runs, counting what it is asked), and a real HTTP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use basalt_testkit::local_ports::{self, PortReservation};
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// What the origin saw: requests per path, and the last `If-None-Match` per path.
#[derive(Default)]
struct Seen {
    requests: HashMap<String, usize>,
    if_none_match: HashMap<String, String>,
}

/// The test's origin. Paths choose the answer:
/// - `/fresh/*`: `max-age=60`, ETag `"v1"`, body = the path, after 200 ms (so concurrent misses
///   overlap);
/// - `/short/*`: `max-age=2`, ETag `"s1"`; answers 304 to `If-None-Match: "s1"` (2 s: the
///   origin's `Date` is whole seconds, so an answer may arrive up to a second old);
/// - `/swr/*`: `max-age=2, stale-while-revalidate=30`, after 200 ms;
/// - `/aged/*`: `max-age=600` and `Age: 100`;
/// - `/error/*`: 500 after 200 ms; `/error-cookie/*` the same with a `Set-Cookie`;
/// - `/revoked/*`: `max-age=2, stale-while-revalidate=30`; 403 while the origin is `failing`;
/// - `/fragile/*`: `max-age=1, stale-if-error=60`; 500 while the origin is `failing`;
/// - `/nostore/*`: `no-store`;
/// - `/vary/*`: `max-age=60`, `Vary: Accept-Encoding`, body = the request's Accept-Encoding;
/// - `/missing/*`: 404 with no caching headers;
/// - `/hang/*`: answers after 5 s;
/// - `/tagged/TAG/*`: `max-age=60`, `Surrogate-Key: TAG`;
/// - `/large/*`: `max-age=60`, a body of [`LARGE_BODY_BYTES`] (more than the edge stores).
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    failing: Arc<AtomicBool>,
    _port: PortReservation,
}

impl Origin {
    async fn start() -> Origin {
        let port = local_ports::reserve().expect("origin port");
        let listener = TcpListener::bind(port.addr()).await.expect("bind the origin");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let failing = Arc::new(AtomicBool::new(false));
        let (seen2, failing2) = (Arc::clone(&seen), Arc::clone(&failing));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, failing) = (Arc::clone(&seen2), Arc::clone(&failing2));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (seen, failing) = (Arc::clone(&seen), Arc::clone(&failing));
                        async move {
                            let response = match request.uri().path().starts_with("/chunked/") {
                                true => chunked(request.uri().path(), &seen).map(Either::Right),
                                false => answer(request, &seen, &failing).await.map(Either::Left),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr: port.addr(),
            seen,
            failing,
            _port: port,
        }
    }

    fn requests(&self, path: &str) -> usize {
        self.seen.lock().expect("seen").requests.get(path).copied().unwrap_or(0)
    }

    fn if_none_match(&self, path: &str) -> Option<String> {
        self.seen.lock().expect("seen").if_none_match.get(path).cloned()
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    seen: &Mutex<Seen>,
    failing: &AtomicBool,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let inm = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    {
        let mut seen = seen.lock().expect("seen");
        *seen.requests.entry(path.clone()).or_default() += 1;
        if let Some(inm) = &inm {
            seen.if_none_match.insert(path.clone(), inm.clone());
        }
    }
    let reply = |status: u16, headers: &[(&str, &str)], body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).expect("status");
        for (name, value) in headers {
            response.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        response
    };
    let top = path.split('/').nth(1).unwrap_or("");
    match top {
        "fresh" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")], path)
        }
        "short" if inm.as_deref() == Some("\"s1\"") => reply(
            304,
            &[("cache-control", "max-age=2"), ("etag", "\"s1\"")],
            String::new(),
        ),
        "short" => reply(200, &[("cache-control", "max-age=2"), ("etag", "\"s1\"")], path),
        "swr" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply(200, &[("cache-control", "max-age=2, stale-while-revalidate=30")], path)
        }
        "aged" => reply(200, &[("cache-control", "max-age=600"), ("age", "100")], path),
        "error" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply(500, &[], "broken".into())
        }
        "error-cookie" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply(500, &[("set-cookie", "session=secret")], "broken".into())
        }
        "revoked" if failing.load(Ordering::SeqCst) => reply(403, &[], "gone private".into()),
        "revoked" => reply(200, &[("cache-control", "max-age=2, stale-while-revalidate=30")], path),
        "fragile" if failing.load(Ordering::SeqCst) => reply(500, &[], "down".into()),
        "fragile" => reply(200, &[("cache-control", "max-age=1, stale-if-error=60")], path),
        "nostore" => reply(200, &[("cache-control", "no-store")], path),
        "vary" => {
            let encoding = request
                .headers()
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            reply(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
                encoding,
            )
        }
        "missing" => reply(404, &[], "not here".into()),
        "large" => {
            let mut response = reply(200, &[("cache-control", "max-age=60")], String::new());
            *response.body_mut() = Full::new(large_body());
            response
        }
        "tagged" => {
            let tag = path.split('/').nth(2).unwrap_or("none").to_owned();
            reply(200, &[("cache-control", "max-age=60"), ("surrogate-key", &tag)], path)
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply(200, &[("cache-control", "max-age=60")], path)
        }
        _ => reply(
            200,
            &[("cache-control", "max-age=60")],
            format!("{path}{}", "x".repeat(1000)),
        ),
    }
}

/// `/chunked/*`: `max-age=60`, [`large_body`] sent in 1 MiB chunks without a `Content-Length`.
fn chunked(path: &str, seen: &Mutex<Seen>) -> Response<Channel<Bytes>> {
    *seen.lock().expect("seen").requests.entry(path.to_owned()).or_default() += 1;
    let (mut sender, body) = Channel::new(4);
    tokio::spawn(async move {
        let body = large_body();
        for start in (0..body.len()).step_by(1 << 20) {
            let end = (start + (1 << 20)).min(body.len());
            if sender.send_data(body.slice(start..end)).await.is_err() {
                return; // the edge stopped reading
            }
        }
    });
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("max-age=60"));
    response
}

/// Larger than the edge stores (`STORED_OBJECT_BYTES_MAX`, 64 MiB).
const LARGE_BODY_BYTES: usize = 70 << 20;

fn large_body() -> Bytes {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| Bytes::from((0..LARGE_BODY_BYTES).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .clone()
}

/// A one-node cluster whose edge serves `/` from `origin`, with a 1 s origin timeout.
fn edge_node(origin: SocketAddr) -> (TestCluster, PortReservation) {
    let (mut cluster, edge) = edge_node_planned(origin, &["--origin-timeout-ms", "1000"]);
    cluster.launch();
    (cluster, edge)
}

/// A one-node cluster whose edge serves `/` from `origin`, with `flags`, planned and not started.
fn edge_node_planned(origin: SocketAddr, flags: &[&str]) -> (TestCluster, PortReservation) {
    let edge = local_ports::reserve().expect("edge port");
    let mut extra_args = vec![
        "--edge-listen".into(),
        edge.addr().to_string(),
        "--origin".into(),
        format!("/=http://{origin}"),
    ];
    extra_args.extend(flags.iter().map(|flag| flag.to_string()));
    let cluster = TestCluster::plan(
        NODE,
        ClusterOptions {
            nodes: 1,
            extra_args,
            ..Default::default()
        },
    );
    (cluster, edge)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, edge: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(client, edge, "GET", path, headers).await
}

/// `n` concurrent GETs of `path`, their answers in the order they were sent.
async fn get_concurrently(client: &HttpClient, edge: SocketAddr, path: &str, n: usize) -> Vec<Answer> {
    let waiters: Vec<_> = (0..n)
        .map(|_| {
            let (client, path) = (client.clone(), path.to_owned());
            tokio::spawn(async move { get(&client, edge, &path, &[]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for waiter in waiters {
        answers.push(waiter.await.expect("request"));
    }
    answers
}

async fn request(client: &HttpClient, edge: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::builder().method(method).uri(format!("http://{edge}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Empty::new()).expect("request");
    // The node may still be binding its edge listener just after start: retry a refused connect.
    let mut last = None;
    for _ in 0..100 {
        match client.request(request.clone()).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = body.collect().await.expect("body").to_bytes();
                return Answer {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                };
            }
            Err(e) if e.is_connect() => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    panic!("{method} {path}: the edge never accepted: {last:?}");
}

#[test]
fn a_miss_is_fetched_once_then_served_from_the_store() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        let first = get(&client, edge, "/plain/a", &[]).await;
        assert_eq!((first.status, first.header("x-cache")), (StatusCode::OK, "MISS"));
        let second = get(&client, edge, "/plain/a", &[]).await;
        assert_eq!((second.status, second.header("x-cache")), (StatusCode::OK, "HIT"));
        assert_eq!(second.body, first.body);
        assert!(second.header("age").parse::<u64>().is_ok(), "Age on a hit");
        assert_eq!(origin.requests("/plain/a"), 1);

        // HEAD: the headers of the stored object, no body.
        let head = request(&client, edge, "HEAD", "/plain/a", &[]).await;
        assert_eq!((head.status, head.header("x-cache")), (StatusCode::OK, "HIT"));
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), first.body.len().to_string());

        // Other methods are refused with the ones allowed.
        let post = request(&client, edge, "POST", "/plain/a", &[]).await;
        assert_eq!(
            (post.status, post.header("allow")),
            (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD")
        );

        assert_eq!(cluster.metric(1, "basalt_edge_hits_total"), 2);
        assert_eq!(cluster.metric(1, "basalt_edge_misses_total"), 1);
        assert!(cluster.metric(1, "basalt_edge_objects") >= 1);
    });
}

#[test]
fn a_hundred_concurrent_misses_make_one_origin_fetch() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());
        // Wait until the edge listens, on another path.
        get(&client, edge, "/plain/warm", &[]).await;

        let mut misses = 0;
        for answer in get_concurrently(&client, edge, "/fresh/one", 100).await {
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, "/fresh/one");
            misses += usize::from(answer.header("x-cache") == "MISS");
        }
        assert_eq!(
            origin.requests("/fresh/one"),
            1,
            "one origin fetch for 100 concurrent misses"
        );
        assert_eq!(misses, 100, "every waiter's answer came from the origin");

        // A failing origin is asked once for all the concurrent requests too.
        for answer in get_concurrently(&client, edge, "/error/one", 100).await {
            assert_eq!(
                (answer.status, answer.header("x-cache")),
                (StatusCode::INTERNAL_SERVER_ERROR, "BYPASS")
            );
        }
        assert_eq!(
            origin.requests("/error/one"),
            1,
            "one origin fetch for 100 concurrent failures"
        );
    });
}

#[test]
fn expiry_revalidation_and_client_conditionals() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        assert_eq!(get(&client, edge, "/short/a", &[]).await.header("x-cache"), "MISS");
        assert_eq!(get(&client, edge, "/short/a", &[]).await.header("x-cache"), "HIT");
        // max-age=2: stale after two seconds; the edge asks the origin with the ETag, gets 304.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let revalidated = get(&client, edge, "/short/a", &[]).await;
        assert_eq!(
            (revalidated.status, revalidated.header("x-cache")),
            (StatusCode::OK, "REVALIDATED")
        );
        assert_eq!(revalidated.body, "/short/a", "the stored body, confirmed");
        assert_eq!(origin.if_none_match("/short/a").as_deref(), Some("\"s1\""));
        assert_eq!(origin.requests("/short/a"), 2);

        // A client holding the same version gets 304 from the edge itself.
        let not_modified = get(&client, edge, "/short/a", &[("if-none-match", "\"s1\"")]).await;
        assert_eq!(
            (not_modified.status, not_modified.header("etag")),
            (StatusCode::NOT_MODIFIED, "\"s1\"")
        );
        assert!(not_modified.body.is_empty());
        let other = get(&client, edge, "/short/a", &[("if-none-match", "\"old\"")]).await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(origin.requests("/short/a"), 2, "both answered by the edge");
    });
}

#[test]
fn a_stale_copy_is_served_while_the_origin_fails() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        assert_eq!(get(&client, edge, "/fragile/a", &[]).await.header("x-cache"), "MISS");
        origin.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = get(&client, edge, "/fragile/a", &[]).await;
        assert_eq!((stale.status, stale.header("x-cache")), (StatusCode::OK, "STALE"));
        assert_eq!(stale.body, "/fragile/a");
        assert_eq!(origin.requests("/fragile/a"), 2, "the edge did ask");

        // Nothing stored and the origin failing: its answer is passed on.
        let down = get(&client, edge, "/fragile/b", &[]).await;
        assert_eq!(
            (down.status, down.header("x-cache")),
            (StatusCode::INTERNAL_SERVER_ERROR, "BYPASS")
        );
    });
}

#[test]
fn vary_ranges_negative_caching_and_what_is_never_stored() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        // One variant per Accept-Encoding.
        let gzip = get(&client, edge, "/vary/a", &[("accept-encoding", "gzip")]).await;
        let br = get(&client, edge, "/vary/a", &[("accept-encoding", "br")]).await;
        assert_eq!((gzip.body.as_ref(), br.body.as_ref()), (&b"gzip"[..], &b"br"[..]));
        let gzip_again = get(&client, edge, "/vary/a", &[("accept-encoding", "gzip")]).await;
        assert_eq!(
            (gzip_again.body.as_ref(), gzip_again.header("x-cache")),
            (&b"gzip"[..], "HIT")
        );
        assert_eq!(origin.requests("/vary/a"), 2);

        // A range of a stored object: 206; past its end: 416.
        let whole = get(&client, edge, "/plain/r", &[]).await;
        let part = get(&client, edge, "/plain/r", &[("range", "bytes=0-5")]).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.body, whole.body.slice(0..6));
        assert_eq!(part.header("content-range"), format!("bytes 0-5/{}", whole.body.len()));
        let past = get(&client, edge, "/plain/r", &[("range", "bytes=999999-")]).await;
        assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);

        // A 404 is kept for the negative TTL (10 s by default).
        assert_eq!(
            get(&client, edge, "/missing/a", &[]).await.status,
            StatusCode::NOT_FOUND
        );
        let again = get(&client, edge, "/missing/a", &[]).await;
        assert_eq!((again.status, again.header("x-cache")), (StatusCode::NOT_FOUND, "HIT"));
        assert_eq!(origin.requests("/missing/a"), 1);

        // no-store and authenticated requests reach the origin every time.
        for _ in 0..2 {
            assert_eq!(get(&client, edge, "/nostore/a", &[]).await.header("x-cache"), "BYPASS");
            assert_eq!(
                get(&client, edge, "/plain/auth", &[("authorization", "Bearer x")])
                    .await
                    .header("x-cache"),
                "BYPASS"
            );
        }
        assert_eq!(origin.requests("/nostore/a"), 2);
        assert_eq!(origin.requests("/plain/auth"), 2);
    });
}

#[test]
fn origin_failures_are_502_and_504() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let nowhere = local_ports::reserve().expect("a port nobody listens on");
        let edge_port = local_ports::reserve().expect("edge port");
        let _cluster = TestCluster::start(
            NODE,
            ClusterOptions {
                nodes: 1,
                extra_args: vec![
                    "--edge-listen".into(),
                    edge_port.addr().to_string(),
                    "--origin".into(),
                    format!("/=http://{}", origin.addr),
                    "--origin".into(),
                    format!("/gone/=http://{}", nowhere.addr()),
                    "--origin-timeout-ms".into(),
                    "500".into(),
                ],
                ..Default::default()
            },
        );
        let (client, edge) = (client(), edge_port.addr());
        let gone = get(&client, edge, "/gone/a", &[]).await;
        assert_eq!(gone.status, StatusCode::BAD_GATEWAY, "{:?}", gone.body);
        let hang = get(&client, edge, "/hang/a", &[]).await;
        assert_eq!(hang.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", hang.body);
    });
}

/// `basalt dev --origin` gives every node an edge, prints it on the node's line and writes it to
/// the cluster file.
#[test]
fn basalt_dev_serves_the_edge_on_every_node() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let home = tempfile::tempdir().expect("home");
        let (mut command, ports) = basalt_testkit::dev_command(NODE, home.path());
        let mut dev = command
            .args(["--origin", &format!("/=http://{}", origin.addr)])
            .spawn()
            .expect("basalt dev");
        let line_rx = basalt_testkit::line_receiver(dev.stdout.take().expect("stdout"));
        let expected = format!("edge 127.0.0.1:{}", ports.edge.port());
        let mut printed = Vec::new();
        let node_line = loop {
            match line_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(&expected) => break Some(line),
                Ok(line) => printed.push(line),
                Err(_) => break None,
            }
        };
        let found = node_line.is_some();
        let cluster_file = std::fs::read_to_string(home.path().join("dev").join("cluster.json")).unwrap_or_default();
        let answer = if found {
            Some(get(&client(), ports.edge.addr(), "/plain/dev", &[]).await)
        } else {
            None
        };
        // SAFETY: kill(2) on our own child; it stops its nodes on SIGTERM.
        unsafe {
            libc::kill(dev.id() as i32, libc::SIGTERM);
        }
        let _ = dev.wait();
        assert!(found, "no `{expected}` in the node lines: {printed:?}");
        // The node's RESP port is on its line and in the cluster file (docs/redis.md).
        let resp = format!("127.0.0.1:{}", ports.resp.port());
        assert!(
            node_line.is_some_and(|l| l.contains(&format!("resp {resp}"))),
            "{printed:?}"
        );
        assert!(
            cluster_file.contains(&format!("\"resp\":[\"{resp}\"]")),
            "{cluster_file}"
        );
        assert!(
            cluster_file.contains(&format!("\"edges\":[\"127.0.0.1:{}\"]", ports.edge.port())),
            "{cluster_file}"
        );
        let answer = answer.expect("answered");
        assert_eq!((answer.status, answer.header("x-cache")), (StatusCode::OK, "MISS"));
    });
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        assert_eq!(get(&client, edge, "/swr/a", &[]).await.header("x-cache"), "MISS");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // Stale within the allowance: twenty concurrent requests all get the stale copy at once,
        // and one background revalidation runs (the origin takes 200 ms).
        for answer in get_concurrently(&client, edge, "/swr/a", 20).await {
            assert_eq!((answer.status, answer.header("x-cache")), (StatusCode::OK, "STALE"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            origin.requests("/swr/a"),
            2,
            "one background refresh for all the stale answers"
        );
        let refreshed = get(&client, edge, "/swr/a", &[]).await;
        assert_eq!(refreshed.header("x-cache"), "HIT");
        assert!(refreshed.header("age").parse::<u64>().expect("age") <= 1);
    });
}

#[test]
fn age_counts_what_the_origin_said_and_bad_requests_are_400() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        get(&client, edge, "/aged/a", &[]).await;
        let hit = get(&client, edge, "/aged/a", &[]).await;
        let age: u64 = hit.header("age").parse().expect("age");
        assert!((100..=102).contains(&age), "the origin's Age plus the time here: {age}");

        // A GET announcing a body, and paths that could climb out of their prefix.
        let with_body = get(&client, edge, "/plain/b", &[("content-length", "5")]).await;
        assert_eq!(with_body.status, StatusCode::BAD_REQUEST);
        // That request's announced body never came: the connection is not reused.
        let client = self::client();
        for climbing in ["/plain/../admin", "/plain/%2e%2E/admin", "/plain/./x"] {
            assert_eq!(
                get(&client, edge, climbing, &[]).await.status,
                StatusCode::BAD_REQUEST,
                "{climbing}"
            );
        }
        assert_eq!(origin.requests("/plain/b"), 0);
    });
}

/// A failure that sets a cookie may be private to the request that got it: every waiter fetches
/// its own. A stored object the origin now refuses is dropped, not served stale again.
#[test]
fn private_failures_are_not_shared_and_a_revoked_object_is_dropped() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (_cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());
        get(&client, edge, "/plain/warm", &[]).await;

        for answer in get_concurrently(&client, edge, "/error-cookie/a", 10).await {
            assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(origin.requests("/error-cookie/a"), 10, "no waiter got another's cookie");

        assert_eq!(get(&client, edge, "/revoked/a", &[]).await.header("x-cache"), "MISS");
        origin.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // Stale within stale-while-revalidate: served once while the refresh learns the 403.
        assert_eq!(get(&client, edge, "/revoked/a", &[]).await.header("x-cache"), "STALE");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = get(&client, edge, "/revoked/a", &[]).await;
        assert_eq!(
            (after.status, after.header("x-cache")),
            (StatusCode::FORBIDDEN, "BYPASS")
        );
    });
}

/// A GET of `path` on every edge, warmed until each serves it as a HIT.
async fn warm(client: &HttpClient, edges: &[SocketAddr], path: &str) {
    for edge in edges {
        get(client, *edge, path, &[]).await;
        let again = get(client, *edge, path, &[]).await;
        assert_eq!(again.header("x-cache"), "HIT", "{path} on {edge}");
    }
}

/// What each edge answers for `path` now, in order.
async fn cache_states(client: &HttpClient, edges: &[SocketAddr], path: &str) -> Vec<String> {
    let mut states = Vec::new();
    for edge in edges {
        states.push(get(client, *edge, path, &[]).await.header("x-cache").to_owned());
    }
    states
}

/// A plain HTTP request to a node's admin listener; the status and body.
async fn admin(client: &HttpClient, http: &str, method: &str, path_and_query: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{http}{path_and_query}"))
        .body(Empty::new())
        .expect("request");
    let response = client.request(request).await.expect("admin request");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A purge returns once every node of the region has applied it: right after, no node serves
/// what it matched from its store, and everything else is still a HIT. Purges by tag (SDK), by
/// prefix (the HTTP endpoint of a follower, handed to the leader), by URL; a purge of nothing
/// cached succeeds; bad purges are refused; a node that is down is named, not waited for.
#[test]
fn a_purge_is_applied_on_every_node_of_the_region_before_it_returns() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
        cluster.enable_edges(&[format!("/=http://{}", origin.addr)]);
        cluster.launch();
        let edges: Vec<SocketAddr> = (1..=3).map(|id| cluster.edge(id)).collect();
        let sdk = cluster.client().await;
        let http = client();

        let (tagged, other_tag, plain) = ("/tagged/product-42/a", "/tagged/product-7/a", "/assets/app.js");
        for path in [tagged, other_tag, plain] {
            warm(&http, &edges, path).await;
        }
        let receipt = sdk.cache().purge_tag("Product-42").await.expect("purge by tag");
        assert!(receipt.complete(), "{receipt:?}");
        assert_eq!(receipt.applied.len(), 3, "{receipt:?}");
        assert_eq!(cache_states(&http, &edges, tagged).await, ["MISS", "MISS", "MISS"]);
        assert_eq!(cache_states(&http, &edges, other_tag).await, ["HIT", "HIT", "HIT"]);
        assert_eq!(cache_states(&http, &edges, plain).await, ["HIT", "HIT", "HIT"]);

        // By prefix, through a follower's HTTP endpoint (any node takes it).
        let leader = sdk.cluster_status().await.expect("status").node_id;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        let (code, body) = admin(
            &http,
            &cluster.specs[&follower].http,
            "DELETE",
            "/cache?prefix=%2Fassets%2F",
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.starts_with("purged seq=2 applied=1,2,3"), "{body}");
        assert_eq!(cache_states(&http, &edges, plain).await, ["MISS", "MISS", "MISS"]);
        assert_eq!(cache_states(&http, &edges, other_tag).await, ["HIT", "HIT", "HIT"]);

        // By URL; and a purge of what nobody cached changes nothing and succeeds.
        let receipt = sdk.cache().purge_url(other_tag).await.expect("purge by url");
        assert_eq!(receipt.seq, 3);
        assert_eq!(cache_states(&http, &edges, other_tag).await, ["MISS", "MISS", "MISS"]);
        assert!(sdk.cache().purge_url("/never/cached").await.expect("purge").complete());
        assert_eq!(cache_states(&http, &edges, other_tag).await, ["HIT", "HIT", "HIT"]);

        // Bad purges: typed refusals, nothing recorded.
        let refused = sdk
            .cache()
            .purge_tag("two words")
            .await
            .expect_err("a tag with a space");
        assert!(refused.to_string().contains("visible ASCII"), "{refused}");
        let refused = sdk.cache().purge_prefix("assets/").await.expect_err("not a path");
        assert!(refused.to_string().contains("starting with '/'"), "{refused}");
        let (code, body) = admin(&http, &cluster.specs[&leader].http, "DELETE", "/cache?everything=false").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        let (code, _) = admin(&http, &cluster.specs[&leader].http, "POST", "/cache?everything").await;
        assert_eq!(
            code,
            StatusCode::METHOD_NOT_ALLOWED,
            "a cross-site form can POST; it cannot DELETE"
        );

        // Counters of every node, summed by the CLI.
        let stats = sdk.cache().stats().await.expect("stats");
        assert_eq!(stats.len(), 3);
        assert!(
            stats.iter().all(|n| n.edge && n.hits >= 3 && n.purges_applied == 4),
            "{stats:?}"
        );

        // A node that is down: the purge is committed and applied on the others, and the
        // receipt names the missing node instead of claiming the purge complete.
        cluster.kill(follower);
        let receipt = sdk
            .cache()
            .purge(basalt_client::PurgeTarget::Everything, Some(Duration::from_secs(1)))
            .await
            .expect("purge everything");
        assert!(!receipt.complete());
        assert_eq!(
            receipt.lagging.iter().map(|l| l.node_id).collect::<Vec<_>>(),
            [follower]
        );
        assert_eq!(receipt.applied.len(), 2, "{receipt:?}");
        let live: Vec<SocketAddr> = (1..=3)
            .filter(|id| *id != follower)
            .map(|id| cluster.edge(id))
            .collect();
        assert_eq!(cache_states(&http, &live, other_tag).await, ["MISS", "MISS"]);
    });
}

/// A purge made in one region reaches the other through the feed over a simulated link: while
/// the link is cut the other region still serves its copy (and us's status shows the purge
/// pending there); once the link heals and the purge has reached it, none of its nodes serves
/// the object from its store, and eu's status shows how long the purge took to arrive.
#[test]
fn a_purge_by_tag_reaches_every_node_of_another_region() {
    use basalt_testkit::regions::{RegionSpec, TestRegions};

    runtime().block_on(async {
        let origin = Origin::start().await;
        let origins = [format!("/=http://{}", origin.addr)];
        let specs = vec![
            RegionSpec {
                name: "us",
                nodes: 1,
                extra_args: Vec::new(),
            },
            RegionSpec {
                name: "eu",
                nodes: 2,
                extra_args: Vec::new(),
            },
        ];
        let regions = TestRegions::start_with(NODE, specs, |cluster| cluster.enable_edges(&origins)).await;
        let us_edges = [regions.cluster("us").edge(1)];
        let eu_edges: Vec<SocketAddr> = (1..=2).map(|id| regions.cluster("eu").edge(id)).collect();
        let us = regions.client("us").await;
        regions.client("eu").await; // eu has a leader
        let http = client();
        let (tagged, untagged) = ("/tagged/sale/banner.png", "/tagged/other/logo.png");
        for path in [tagged, untagged] {
            warm(&http, &us_edges, path).await;
            warm(&http, &eu_edges, path).await;
        }

        regions.partition_all();
        let receipt = us.cache().purge_tag("sale").await.expect("purge in us");
        assert!(receipt.complete(), "{receipt:?}");
        assert_eq!(cache_states(&http, &us_edges, tagged).await, ["MISS"]);
        // Not delivered yet: eu still serves its copy; us knows the purge is pending there.
        assert_eq!(cache_states(&http, &eu_edges, tagged).await, ["HIT", "HIT"]);
        let pending = regions.status("us").await.expect("us status");
        let to_eu = pending.links.iter().find(|l| l.region == "eu").expect("link to eu");
        assert_eq!(to_eu.purges_pending, Some(1), "{to_eu:?}");

        regions.links.heal_cuts();
        regions.links.heal_all();
        let eu = regions.cluster("eu");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (1..=2).any(|id| eu.metric(id, "basalt_edge_purges_applied") < 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "the purge never reached eu's edges"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cache_states(&http, &eu_edges, tagged).await, ["MISS", "MISS"]);
        assert_eq!(cache_states(&http, &eu_edges, untagged).await, ["HIT", "HIT"]);
        let status = regions.status("eu").await.expect("eu status");
        let from_us = status.links.iter().find(|l| l.region == "us").expect("link from us");
        assert!(from_us.last_purge_lag_ms.is_some(), "{from_us:?}");
        // eu acknowledges what it merged with its next answer to us's shipper.
        loop {
            let acked = regions.status("us").await.expect("us status");
            let to_eu = acked.links.iter().find(|l| l.region == "eu").expect("link to eu");
            if to_eu.purges_pending == Some(0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "eu never acknowledged the purge: {to_eu:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// An answer larger than the edge stores is streamed through from the origin (not a 502, not
/// buffered whole, not stored): byte for byte, with its length, on GET and HEAD; after the first,
/// requests go straight to the origin instead of starting a fetch to store.
#[test]
fn an_answer_too_large_to_store_streams_through() {
    runtime().block_on(async {
        let origin = Origin::start().await;
        let (cluster, edge) = edge_node(origin.addr);
        let (client, edge) = (client(), edge.addr());

        let first = get(&client, edge, "/large/a", &[]).await;
        assert_eq!((first.status, first.header("x-cache")), (StatusCode::OK, "BYPASS"));
        assert_eq!(first.header("content-length"), LARGE_BODY_BYTES.to_string());
        assert!(
            first.body == large_body(),
            "the body streamed through whole and unchanged"
        );
        // One fetch to store, refused at its head (the length announced is too large), then the
        // streamed one.
        assert_eq!(origin.requests("/large/a"), 2);

        let second = get(&client, edge, "/large/a", &[]).await;
        assert_eq!((second.status, second.header("x-cache")), (StatusCode::OK, "BYPASS"));
        assert_eq!(second.body.len(), LARGE_BODY_BYTES);
        assert_eq!(
            origin.requests("/large/a"),
            3,
            "remembered as too large: streamed at once"
        );

        let head = request(&client, edge, "HEAD", "/large/a", &[]).await;
        assert_eq!((head.status, head.header("x-cache")), (StatusCode::OK, "BYPASS"));
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), LARGE_BODY_BYTES.to_string());

        // Without a length: the fetch to store stops past 64 MiB, the body is fetched again and
        // streamed through (chunked).
        let no_length = get(&client, edge, "/chunked/a", &[]).await;
        assert_eq!(
            (no_length.status, no_length.header("x-cache")),
            (StatusCode::OK, "BYPASS")
        );
        assert!(
            no_length.body == large_body(),
            "the chunked body streamed through whole"
        );
        assert_eq!(origin.requests("/chunked/a"), 2);

        // An authenticated request's large answer streams too, but is private to it: it does not
        // mark the path for everyone (the next plain request tries to store first).
        let bypass_before = cluster.metric(1, "basalt_edge_bypass_total");
        let private = get(&client, edge, "/large/b", &[("authorization", "Bearer t")]).await;
        assert_eq!((private.status, private.header("x-cache")), (StatusCode::OK, "BYPASS"));
        assert_eq!(private.body.len(), LARGE_BODY_BYTES);
        assert_eq!(
            cluster.metric(1, "basalt_edge_bypass_total"),
            bypass_before + 1,
            "counted once"
        );
        assert_eq!(origin.requests("/large/b"), 2);
        get(&client, edge, "/large/b", &[]).await;
        assert_eq!(origin.requests("/large/b"), 4, "not marked by the private request");

        assert_eq!(cluster.metric(1, "basalt_edge_objects"), 0);
        assert_eq!(cluster.metric(1, "basalt_edge_origin_errors_total"), 0);
        // Small objects are still stored beside it.
        get(&client, edge, "/plain/small", &[]).await;
        assert_eq!(get(&client, edge, "/plain/small", &[]).await.header("x-cache"), "HIT");
    });
}

/// A streamed answer holds an origin connection for as long as its client reads: a descriptor of
/// the node like a client's own, so it takes a permit of the client doors' budget (the node's
/// file descriptor plan) and gives it back with the body; with none left, the edge answers 503
/// without asking the origin, and serves again once one is given back.
#[test]
fn a_streamed_answer_holds_a_connection_of_the_node_s_plan() {
    use basalt_server::limits::{HTTP_CONNECTIONS_MAX, NODE_DESCRIPTORS_RESERVED, PEER_CONNECTIONS_MAX};
    const CLIENT_CONNECTIONS: u64 = 64;
    const ORIGIN_REQUESTS_MAX: u64 = 2;
    let limit = (NODE_DESCRIPTORS_RESERVED + PEER_CONNECTIONS_MAX + HTTP_CONNECTIONS_MAX) as u64
        + ORIGIN_REQUESTS_MAX
        + CLIENT_CONNECTIONS;
    runtime().block_on(async {
        let origin = Origin::start().await;
        let requests_max = ORIGIN_REQUESTS_MAX.to_string();
        let (mut cluster, edge) = edge_node_planned(origin.addr, &["--origin-requests-max", &requests_max]);
        cluster.set_open_files_limit(limit);
        cluster.launch();
        let client = cluster.client().await;
        cluster.leader(&client).await;
        // Its connections closed, the test's own are the only client connections of the node.
        drop(client);
        assert_eq!(cluster.metric(1, "basalt_client_connections_max"), CLIENT_CONNECTIONS);

        // A connection of its own per request, so the test knows which one holds what.
        let connect = || async {
            let stream = tokio::net::TcpStream::connect(edge.addr())
                .await
                .expect("connect to the edge");
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(connection);
            sender
        };
        let get = |path: &'static str| {
            Request::get(path)
                .header("host", "edge")
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        let open = || cluster.metric(1, "basalt_client_connections_open");
        let wait_open = |want: u64| async move {
            for _ in 0..100 {
                if open() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{} client connections open, not {want}", open());
        };

        wait_open(0).await;
        let mut reader = connect().await;
        let mut second = connect().await;
        wait_open(2).await;
        // The head only: the client does not read the body, so the stream stays open.
        let streaming = reader.send_request(get("/chunked/a")).await.expect("streamed head");
        assert_eq!(streaming.status(), StatusCode::OK);
        assert_eq!(streaming.headers()["x-cache"], "BYPASS");
        assert_eq!(open(), 3, "the stream's origin connection holds a permit");

        // Every other permit taken by idle connections: the next stream finds none.
        let fill = CLIENT_CONNECTIONS - open();
        let mut idle = Vec::new();
        for _ in 0..fill {
            idle.push(tokio::net::TcpStream::connect(edge.addr()).await.expect("connect"));
        }
        wait_open(CLIENT_CONNECTIONS).await;
        // The same path: known too large by now, so the edge goes straight to streaming it.
        let asked = origin.requests("/chunked/a");
        let refused = second.send_request(get("/chunked/a")).await.expect("an answer");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["x-cache"], "BYPASS");
        assert_eq!(refused.headers()["retry-after"], "1");
        let text = refused.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("file descriptors"), "{text:?}");
        assert_eq!(origin.requests("/chunked/a"), asked, "the origin was not asked");

        // The first stream read to its end gives its permit back: the second streams.
        let body = streaming
            .into_body()
            .collect()
            .await
            .expect("the streamed body")
            .to_bytes();
        assert!(body == large_body(), "the body streamed through whole");
        wait_open(CLIENT_CONNECTIONS - 1).await;
        let answered = second.send_request(get("/chunked/a")).await.expect("an answer");
        assert_eq!(answered.status(), StatusCode::OK);
        let body = answered
            .into_body()
            .collect()
            .await
            .expect("the streamed body")
            .to_bytes();
        assert_eq!(body.len(), LARGE_BODY_BYTES);
        wait_open(CLIENT_CONNECTIONS - 1).await;
        drop(idle);
        wait_open(2).await;

        // A HEAD's stream ends with its head; a client that goes away halfway through a body
        // gives back both its connection and its stream.
        let head = Request::head("/chunked/a")
            .header("host", "edge")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let headed = second.send_request(head).await.expect("an answer");
        assert_eq!(headed.status(), StatusCode::OK);
        wait_open(2).await;
        let mut halfway = reader.send_request(get("/chunked/a")).await.expect("streamed head");
        let first = halfway
            .body_mut()
            .frame()
            .await
            .expect("a frame")
            .expect("the first chunk");
        assert!(first.data_ref().is_some_and(|data| !data.is_empty()));
        assert_eq!(open(), 3);
        drop((halfway, reader));
        wait_open(1).await;
    });
}
