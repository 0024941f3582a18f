//! # cdn
//!
//! A multi-region CDN tier: every node of three regions serves the edge cache in front of an
//! origin (which this program serves itself), and the shop purges a product's pages by tag when
//! the product changes, as a team would do with Varnish or nginx per region and a purge fan-out
//! script (or a CDN vendor's purge API):
//! - the origin answers `/products/RUN/N` with the product's current version, cacheable for an
//!   hour, tagged `Surrogate-Key: product-RUN-N` (RUN: this run's own number, so an earlier run's
//!   pages still cached on a cluster the demo did not start are never taken for this run's);
//! - readers in every region ask their own nodes' edges for products (most for a few hot ones);
//! - a product changes: the origin's version moves on, then the shop purges tag `product-RUN-N`
//!   through its home region; the purge is a Raft write there and reaches the other regions
//!   through replication.
//!
//! Invariant: no node serves a purged object after the purge reached it: every answer a node
//! gives to a request that began once that node had applied the purge (its `purges_applied`
//! counter moved past the purge) carries the new version or a later one. The summary reports the
//! hit ratio and the purge propagation time per region.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use basalt_client::Client;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{connect, mix, quantile, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "cdn",
    summary: "the edge cache on every node of three regions in front of an origin this program \
              serves, product pages purged by tag when a product changes",
    invariant: "no node serves a purged object once the purge reached it; hit ratio and purge \
                propagation time per region reported",
    nodes: 2,
    regions: &["us", "eu", "ap"],
    origin: true,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const PRODUCTS: u64 = 100;
/// Most requests go to these first products.
const HOT_PRODUCTS: u64 = 10;
const HOT_PERCENT: u64 = 80;
/// Between two requests of one reader.
const READ_EVERY: Duration = Duration::from_millis(5);
/// How long the readers run before the first purge, and after the last.
const WARM_UP: Duration = Duration::from_secs(1);
const COOL_DOWN: Duration = Duration::from_secs(1);
/// Between two purges.
const PURGE_EVERY: Duration = Duration::from_millis(500);
/// How long one request to an edge may take before it counts as an error (an edge that stopped
/// answering must not hang the run).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a purge may take to reach every node of every region.
const PURGE_REACH_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>;

/// The origin's products: each one's current version.
struct Origin {
    /// This run's number: the first segment of every product's path.
    run: u64,
    versions: Mutex<BTreeMap<u64, u64>>,
    requests: AtomicU64,
}

impl Origin {
    fn version(&self, product: u64) -> u64 {
        self.versions.locked().get(&product).copied().unwrap_or(1)
    }

    fn bump(&self, product: u64) -> u64 {
        let mut versions = self.versions.locked();
        let version = versions.entry(product).or_insert(1);
        *version += 1;
        *version
    }
}

async fn product_page(
    State(origin): State<Arc<Origin>>,
    Path((run, product)): Path<(u64, u64)>,
) -> (StatusCode, HeaderMap, String) {
    let mut headers = HeaderMap::new();
    if run != origin.run {
        return (StatusCode::NOT_FOUND, headers, format!("no run {run} here"));
    }
    origin.requests.fetch_add(1, Ordering::SeqCst);
    headers.insert("cache-control", HeaderValue::from_static("public, max-age=3600"));
    if let Ok(tag) = HeaderValue::from_str(&tag(run, product)) {
        headers.insert("surrogate-key", tag);
    }
    (
        StatusCode::OK,
        headers,
        format!("product-{product} v{}", origin.version(product)),
    )
}

/// One answer a reader got.
#[derive(Clone, Debug)]
struct Answer {
    /// (region index, node index in the region).
    node: (usize, usize),
    product: u64,
    began: Instant,
    version: Option<u64>,
    hit: bool,
}

/// The surrogate key of a product's pages in run `run`.
fn tag(run: u64, product: u64) -> String {
    format!("product-{run}-{product}")
}

fn parse_version(body: &str) -> Option<u64> {
    body.trim().rsplit_once(" v")?.1.parse().ok()
}

/// Asks `edge` for products until `stop`, every answer recorded.
async fn read(
    run: u64,
    http: HttpClient,
    edge: SocketAddr,
    node: (usize, usize),
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    errors: Arc<AtomicU64>,
) {
    let mut i = (node.0 as u64) << 32 | (node.1 as u64) << 24;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let draw = mix(i);
        let product = if draw % 100 < HOT_PERCENT {
            (draw >> 8) % HOT_PRODUCTS
        } else {
            (draw >> 8) % PRODUCTS
        };
        let began = Instant::now();
        let uri = format!("http://{edge}/products/{run}/{product}");
        let answer = tokio::time::timeout(READ_TIMEOUT, async {
            let response = http.get(uri.parse().ok()?).await.ok()?;
            // An error page (a 502 while an origin fetch failed) carries no version: an error of
            // the read, not an answer to judge.
            if !response.status().is_success() {
                return None;
            }
            let hit = response
                .headers()
                .get("x-cache")
                .is_some_and(|v| v.as_bytes() == b"HIT");
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((hit, parse_version(&String::from_utf8_lossy(&body))))
        })
        .await
        .ok()
        .flatten();
        match answer {
            Some((hit, version)) => answers.locked().push(Answer {
                node,
                product,
                began,
                version,
                hit,
            }),
            None => {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(READ_EVERY).await;
    }
}

/// Each node's last applied purge number, per region, in node order.
async fn purges_applied(regions: &[Client]) -> Result<Vec<Vec<u64>>, DemoError> {
    let mut all = Vec::new();
    for client in regions {
        let stats = client.cache().stats().await.doing(|| "reading the edge stats".into())?;
        all.push(stats.iter().map(|n| n.purges_applied).collect());
    }
    Ok(all)
}

/// A purge and when each node applied it.
struct Purge {
    product: u64,
    version: u64,
    began: Instant,
    /// Per (region, node): when its stats first showed the purge applied.
    reached: BTreeMap<(usize, usize), Instant>,
}

/// Each answer that broke the invariant: an older version than a purge it began after.
fn check(answers: &[Answer], purges: &[Purge]) -> Vec<String> {
    let mut violations = Vec::new();
    for purge in purges {
        for answer in answers.iter().filter(|a| a.product == purge.product) {
            let Some(&reached) = purge.reached.get(&answer.node) else {
                continue;
            };
            if answer.began >= reached && answer.version.is_none_or(|v| v < purge.version) {
                violations.push(format!(
                    "region {} node {}: served product-{} {} {} ms after applying the purge for v{}",
                    answer.node.0,
                    answer.node.1 + 1,
                    purge.product,
                    answer.version.map_or("unreadable".to_string(), |v| format!("v{v}")),
                    answer.began.duration_since(reached).as_millis(),
                    purge.version
                ));
            }
        }
    }
    violations
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let regions = demo.regions().to_vec();
    let origin_addr = demo
        .origin()
        .ok_or_else(|| DemoError::Setup("cdn needs the address of the origin its nodes' edges fetch from".into()))?;
    if regions.iter().any(|r| r.edges.is_empty()) {
        return Err(DemoError::Setup("cdn needs every node to serve the edge cache".into()));
    }
    let purges_planned = match demo.scale() {
        Scale::Short => 6,
        Scale::Full => 30,
    };
    // The origin.
    let origin = Arc::new(Origin {
        run: crate::unix_ms(),
        versions: Mutex::default(),
        requests: AtomicU64::new(0),
    });
    let run = origin.run;
    let listener = tokio::net::TcpListener::bind(origin_addr)
        .await
        .map_err(|e| DemoError::Setup(format!("serving the origin on {origin_addr}: {e}")))?;
    let router = Router::new()
        .route("/products/{run}/{product}", get(product_page))
        .with_state(origin.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let mut clients = Vec::new();
    for region in &regions {
        clients.push(connect(&region.endpoints).await?);
    }
    let edges: Vec<((usize, usize), SocketAddr)> = regions
        .iter()
        .enumerate()
        .flat_map(|(r, region)| {
            region
                .edges
                .iter()
                .enumerate()
                .filter_map(move |(n, e)| e.parse().ok().map(|addr| ((r, n), addr)))
        })
        .collect();
    demo.say(&format!(
        "origin on {origin_addr}: {PRODUCTS} products ({HOT_PRODUCTS} hot), cacheable for an hour, tagged product-{run}-N; \
         a reader per edge ({} edges); {purges_planned} purges by tag from {}",
        edges.len(),
        regions[0].name
    ));
    let http: HttpClient = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = edges
        .iter()
        .map(|&(node, edge)| {
            tokio::spawn(read(
                run,
                http.clone(),
                edge,
                node,
                stop.clone(),
                answers.clone(),
                errors.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;

    let mut purges = Vec::new();
    let mut report = Report::default();
    for round in 0..purges_planned {
        let product = mix(1_000 + round) % HOT_PRODUCTS;
        let baseline = purges_applied(&clients).await?;
        let version = origin.bump(product);
        let began = Instant::now();
        let receipt = clients[0]
            .cache()
            .purge_tag(tag(run, product))
            .await
            .doing(|| format!("purging product-{product}"))?;
        let mut reached = BTreeMap::new();
        let deadline = Instant::now() + PURGE_REACH_WAIT;
        loop {
            let applied_now = purges_applied(&clients).await?;
            // Taken once the answers are in: a node that reports the purge applied did so before
            // it answered, so before this instant (an instant taken before asking could precede
            // the apply, and a request begun in between may rightly get the old page).
            let now = Instant::now();
            for (r, nodes) in applied_now.iter().enumerate() {
                for (n, &applied) in nodes.iter().enumerate() {
                    let before = baseline.get(r).and_then(|b| b.get(n)).copied().unwrap_or(0);
                    if applied > before {
                        reached.entry((r, n)).or_insert(now);
                    }
                }
            }
            if reached.len() >= edges.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if reached.len() < edges.len() {
            report.violations.push(format!(
                "the purge of product-{product} reached {} of {} nodes within {PURGE_REACH_WAIT:?}",
                reached.len(),
                edges.len()
            ));
        }
        demo.say(&format!(
            "  purge {}: product-{product} now v{version}; {}; every node of every region within {} ms",
            round + 1,
            if receipt.complete() {
                "every home node had applied it when the call returned"
            } else {
                "some home nodes were lagging when the call returned"
            },
            reached
                .values()
                .map(|t| t.duration_since(began).as_millis())
                .max()
                .unwrap_or(0)
        ));
        purges.push(Purge {
            product,
            version,
            began,
            reached,
        });
        tokio::time::sleep(PURGE_EVERY).await;
    }
    tokio::time::sleep(COOL_DOWN).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        let _ = reader.await;
    }
    server.abort();

    let answers = std::mem::take(&mut *answers.locked());
    report.violations.extend(check(&answers, &purges));
    let hits = answers.iter().filter(|a| a.hit).count();
    report.figure(
        "edges (regions x nodes)",
        match regions.iter().all(|r| r.edges.len() == regions[0].edges.len()) {
            true => format!("{} ({} x {})", edges.len(), regions.len(), regions[0].edges.len()),
            false => format!("{} ({} regions)", edges.len(), regions.len()),
        },
    );
    report.figure(
        "requests, hit ratio",
        format!(
            "{}, {:.1} % (origin fetched {} times)",
            answers.len(),
            hits as f64 * 100.0 / answers.len().max(1) as f64,
            origin.requests.load(Ordering::SeqCst)
        ),
    );
    for (r, region) in regions.iter().enumerate() {
        let mut times: Vec<u64> = purges
            .iter()
            .flat_map(|p| {
                p.reached
                    .iter()
                    .filter(move |((region, _), _)| *region == r)
                    .map(move |(_, t)| t.duration_since(p.began).as_millis() as u64)
            })
            .collect();
        report.figure(
            format!("purge applied on {} nodes", region.name),
            format!(
                "p50 {} ms, max {} ms",
                quantile(&mut times, 0.5),
                quantile(&mut times, 1.0)
            ),
        );
    }
    let errors = errors.load(Ordering::SeqCst);
    if errors > 0 {
        report.figure("requests that failed", errors);
    }
    report.figure("purges", purges.len());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_pages() {
        assert_eq!(parse_version("product-7 v12"), Some(12));
        assert_eq!(parse_version("product-7 v"), None);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn an_old_version_after_the_purge_reached_the_node_is_found() {
        let t = Instant::now();
        let purge = Purge {
            product: 3,
            version: 2,
            began: t,
            reached: BTreeMap::from([((0, 0), t + Duration::from_millis(10))]),
        };
        let answer = |ms: u64, version: u64| Answer {
            node: (0, 0),
            product: 3,
            began: t + Duration::from_millis(ms),
            version: Some(version),
            hit: true,
        };
        // Before the purge reached the node, the old version is fine; after, only the new.
        assert!(check(
            &[answer(5, 1), answer(20, 2), answer(30, 3)],
            std::slice::from_ref(&purge)
        )
        .is_empty());
        assert_eq!(check(&[answer(20, 1)], std::slice::from_ref(&purge)).len(), 1);
        // Another node, or another product, is not judged by this purge.
        let elsewhere = Answer {
            node: (1, 0),
            ..answer(20, 1)
        };
        let other = Answer {
            product: 4,
            ..answer(20, 1)
        };
        assert!(check(&[elsewhere, other], &[purge]).is_empty());
    }
}
