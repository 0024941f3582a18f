//! The edge cache's HTTP listener (docs/data-types/edge-cache.md): GET and HEAD through this
//! node to the origin that serves the path, answered from the node's object store when the
//! caching rules allow. The rules and the store are `basalt-edge`'s; this module does the I/O:
//! accepting connections ([`serve`]), fetching origins ([`origin`]), coalescing concurrent misses
//! into one fetch ([`flight`]) and answering ([`handler`]).

pub mod flight;
pub mod handler;
pub mod origin;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_edge::freshness::StorePolicy;
use basalt_edge::store::EdgeStore;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{CacheConfig, ConfigError};

/// Everything a request of the edge needs; shared by every connection.
pub struct Edge {
    pub store: EdgeStore,
    pub routes: origin::Routes,
    pub origins: origin::OriginClient,
    pub flights: flight::Flights,
    pub policy: StorePolicy,
    pub stats: EdgeStats,
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

impl EdgeStats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Edge {
    pub fn new(config: &CacheConfig) -> Result<Arc<Edge>, ConfigError> {
        Ok(Arc::new(Edge {
            store: EdgeStore::new(config.bytes),
            routes: origin::Routes::new(&config.origins)?,
            origins: origin::OriginClient::new(
                config.origins.len(),
                Duration::from_millis(config.origin_timeout_ms),
                config.origin_requests_max,
            ),
            flights: flight::Flights::default(),
            policy: StorePolicy {
                negative_ttl: Duration::from_millis(config.negative_ttl_ms),
            },
            stats: EdgeStats::default(),
        }))
    }
}

/// Accepts HTTP/1.1 connections until `stop` resolves, each served on its own task. Malformed
/// requests are answered 400 by hyper before they reach the handler.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the connections we have.
                    tracing::warn!(error = %e, "edge accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let edge = Arc::clone(&edge);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let edge = Arc::clone(&edge);
                async move { Ok::<_, Infallible>(handler::handle(&edge, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "edge connection ended");
            }
        });
    }
}
