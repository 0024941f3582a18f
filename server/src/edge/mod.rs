//! The edge cache's HTTP listener (docs/data-types/edge-cache.md): GET and HEAD through this
//! node to the origin that serves the path, answered from the node's object store when the
//! caching rules allow. The rules and the store are `basalt-edge`'s; this module does the I/O:
//! accepting connections ([`serve`]), fetching origins ([`origin`]), coalescing concurrent misses
//! into one fetch ([`flight`]), answering ([`handler`]) and applying the region's purges
//! ([`purges`]).

pub mod flight;
pub mod handler;
pub mod origin;
pub mod purges;
pub mod send_timeout;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_edge::freshness::StorePolicy;
use basalt_edge::store::EdgeStore;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;

use crate::config::{CacheConfig, ConfigError};
use crate::limits::{
    EDGE_HEADER_READ_TIMEOUT, EDGE_SEND_TIMEOUT, EDGE_SHUTDOWN_GRACE, EDGE_TOO_LARGE_PATHS_MAX, EDGE_TOO_LARGE_TTL,
};
use send_timeout::SendTimeout;

/// Everything a request of the edge needs; shared by every connection.
pub struct Edge {
    pub store: EdgeStore,
    pub routes: origin::Routes,
    pub origins: origin::OriginClient,
    pub flights: Arc<flight::Flights<handler::Outcome>>,
    pub policy: StorePolicy,
    pub stats: EdgeStats,
    /// Paths (by a keyed hash, so the memory is bounded whatever their length) whose answer was
    /// too large to store: streamed through from the origin without a fetch to store first, for
    /// [`EDGE_TOO_LARGE_TTL`] from when it was found (Varnish's hit-for-pass).
    too_large: moka::sync::Cache<u64, ()>,
    too_large_keys: std::hash::RandomState,
    /// The last purge of the region's purge table this node's store has applied
    /// ([`purges::follow`]).
    pub purges_applied: tokio::sync::watch::Sender<u64>,
    /// The client doors' connection budget: a streamed answer's origin connection takes a
    /// permit of it ([`origin::OriginClient::fetch_streaming`]).
    pub stream_connections: Arc<basalt_tls::ConnectionBudget>,
}

/// What `/metrics` and `basalt cache stats` report, counted since the node started.
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub revalidated: AtomicU64,
    pub bypass: AtomicU64,
    pub origin_fetches: AtomicU64,
    pub origin_errors: AtomicU64,
}

/// [`EdgeStats`] read at one moment (each counter on its own: they may be a request apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeCounts {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub bypass: u64,
    pub origin_fetches: u64,
    pub origin_errors: u64,
}

impl EdgeStats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> EdgeCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EdgeCounts {
            hits: read(&self.hits),
            misses: read(&self.misses),
            stale: read(&self.stale),
            revalidated: read(&self.revalidated),
            bypass: read(&self.bypass),
            origin_fetches: read(&self.origin_fetches),
            origin_errors: read(&self.origin_errors),
        }
    }
}

impl Edge {
    /// The edge of `config`, its streamed answers counted against `stream_connections` (the
    /// client doors' budget).
    pub fn new(
        config: &CacheConfig,
        stream_connections: Arc<basalt_tls::ConnectionBudget>,
    ) -> Result<Arc<Edge>, ConfigError> {
        Ok(Arc::new(Edge {
            store: EdgeStore::new(config.bytes),
            routes: origin::Routes::new(&config.origins)?,
            origins: origin::OriginClient::new(
                config.origins.len(),
                Duration::from_millis(config.origin_timeout_ms),
                config.origin_requests_max,
            ),
            flights: Arc::new(flight::Flights::default()),
            policy: StorePolicy {
                negative_ttl: Duration::from_millis(config.negative_ttl_ms),
            },
            stats: EdgeStats::default(),
            purges_applied: tokio::sync::watch::Sender::new(0),
            too_large: moka::sync::Cache::builder()
                .max_capacity(EDGE_TOO_LARGE_PATHS_MAX)
                .time_to_live(EDGE_TOO_LARGE_TTL)
                .build(),
            too_large_keys: std::hash::RandomState::new(),
            stream_connections,
        }))
    }
}

impl Edge {
    /// Whether `path`'s answer was found too large to store less than [`EDGE_TOO_LARGE_TTL`] ago.
    pub fn is_too_large(&self, path: &str) -> bool {
        use std::hash::BuildHasher;
        self.too_large.contains_key(&self.too_large_keys.hash_one(path))
    }

    /// Remembers `path` as too large to store, from now if it was not already (a mark is not
    /// renewed by the requests it sends to streaming, so the path is tried again in time).
    pub fn mark_too_large(&self, path: &str) {
        use std::hash::BuildHasher;
        self.too_large.get_with(self.too_large_keys.hash_one(path), || ());
    }
}

/// Accepts HTTP/1.1 connections until `stop` resolves, each served on its own task (the listener
/// holds them to the client doors' share of the node's descriptors); a client gets [`EDGE_HEADER_READ_TIMEOUT`] to send each
/// request's headers (an idle keep-alive connection is closed after it), and a connection whose
/// client takes nothing of its answer for [`EDGE_SEND_TIMEOUT`] is closed. Malformed requests are
/// answered 400 by hyper before they reach the handler. When `stop` resolves, connections finish
/// the request they serve and close.
pub async fn serve(mut listener: basalt_tls::Listener, edge: Arc<Edge>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let graceful = GracefulShutdown::new();
    // The connections' tasks, so a stop whose grace ran out can end them (reaped as they end).
    let mut served = tokio::task::JoinSet::new();
    loop {
        while served.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Some(accepted) => accepted,
                // The TLS handshakes ended: the node is stopping.
                None => break,
            },
        };
        let edge = Arc::clone(&edge);
        let service = hyper::service::service_fn(move |request| {
            let edge = Arc::clone(&edge);
            async move { Ok::<_, Infallible>(handler::handle(&edge, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(EDGE_HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(SendTimeout::new(stream, EDGE_SEND_TIMEOUT)), service);
        let connection = graceful.watch(connection);
        served.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "edge connection ended");
            }
        });
    }
    // A connection closes once its request is answered, but a client reading a long answer
    // slowly could hold one open: the stop waits at most this long, then ends what is left.
    if tokio::time::timeout(EDGE_SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = served.len(),
            "edge connections still open after {EDGE_SHUTDOWN_GRACE:?}: closed"
        );
        served.abort_all();
    }
}
