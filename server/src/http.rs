//! HTTP endpoints: `/health`, `/metrics` (Prometheus text format), `DELETE /cache` (an
//! edge-cache purge, as `basalt cache purge` makes it), and, only on a node started with
//! `--allow-clock-control`, `/debug/clock-skew` (the partition harness's clock nemesis).
//! On a node that authenticates clients, a purge and a clock change need a bearer token
//! granting them (`Authorization: Bearer ...`); health and metrics stay open.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::Extension;
use axum::Router;
use openraft::ServerState;

use crate::api::Api;
use crate::edge::Edge;

pub fn router(api: Api, clock_control: bool, edge: Option<Arc<Edge>>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/cache", delete(cache_purge));
    let router = if clock_control {
        router.route("/debug/clock-skew", get(clock_skew).put(set_clock_skew))
    } else {
        router
    };
    router.layer(Extension(edge)).with_state(api)
}

/// This node's clock skew, in ms.
async fn clock_skew(State(api): State<Api>) -> String {
    format!("{}\n", api.clock.skew_ms())
}

/// Sets this node's clock skew to the body's integer, in ms (as a clock stepped by NTP would
/// jump); at most ±[`CLOCK_SKEW_MS_MAX`].
async fn set_clock_skew(
    State(api): State<Api>,
    ConnectInfo(connection): ConnectInfo<DoorConnection>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let cluster_admin = [basalt_auth::Need::all(
        basalt_auth::Access::Admin,
        basalt_auth::Scope::Cluster,
    )];
    if let Err(refusal) = authorize(&api, &headers, &connection, &cluster_admin) {
        return refusal;
    }
    match body.trim().parse::<i64>() {
        Ok(skew) if skew.unsigned_abs() <= CLOCK_SKEW_MS_MAX => {
            let before = api.clock.skew_ms();
            api.clock.set_skew_ms(skew);
            tracing::warn!(
                before_ms = before,
                skew_ms = skew,
                "clock skew changed through the control endpoint"
            );
            (StatusCode::OK, format!("{skew}\n"))
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!("the body must be a skew in ms, within ±{CLOCK_SKEW_MS_MAX}\n"),
        ),
    }
}

/// `DELETE /cache?tag=T` (or `url=U`, `prefix=P`, `everything`; optionally `wait_ms=N`):
/// purges the edge caches of the region and, through replication, of every region (see
/// `CacheService::purge`). Any node takes it; a follower hands it to the leader. Answers 200
/// with the purge's number and the nodes that applied it, 202 when some node had not applied it
/// within the wait (they are listed), 400 for a bad purge, 503 when no leader can take it.
/// DELETE, not POST: a browser sends a cross-site DELETE only after a CORS preflight, which this
/// listener does not grant, so a web page cannot purge through a browser that reaches the node.
async fn cache_purge(
    State(api): State<Api>,
    Extension(edge): Extension<Option<Arc<Edge>>>,
    ConnectInfo(connection): ConnectInfo<DoorConnection>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> (StatusCode, String) {
    let request = match purge_request_of_query(uri.query().unwrap_or("")) {
        Ok(request) => request,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    if let Err(refusal) = authorize(&api, &headers, &connection, &crate::access::Needs::needs(&request)) {
        return refusal;
    }
    let service = crate::api::cache::CacheService { api, edge };
    match service.purge_via_leader(request).await {
        Ok(done) => {
            let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let mut text = format!("purged seq={} applied={}\n", done.seq, ids(&done.applied));
            for lag in &done.lagging {
                let _ = writeln!(text, "lagging node {} ({}): {}", lag.node_id, lag.addr, lag.reason);
            }
            let code = if done.lagging.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (code, text)
        }
        Err(e) if e.code() == tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, format!("{}\n", e.message())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", e.message())),
    }
}

/// On a node that authenticates clients: the request's bearer token (`Authorization: Bearer`)
/// must be known (else 401) and grant `needs` (else 403), by the rules of the gRPC door.
fn authorize(
    api: &Api,
    headers: &axum::http::HeaderMap,
    connection: &DoorConnection,
    needs: &[basalt_auth::Need],
) -> Result<(), (StatusCode, String)> {
    let Some(gate) = &api.gate else { return Ok(()) };
    let (identity, _) = gate.authenticate(headers, connection.0.as_ref()).map_err(|refusal| {
        gate.unauthenticated(&refusal);
        (StatusCode::UNAUTHORIZED, format!("UNAUTHENTICATED: {refusal}\n"))
    })?;
    gate.check(&identity, needs).map_err(|denied| {
        gate.denied(&denied);
        (StatusCode::FORBIDDEN, format!("PERMISSION_DENIED: {denied}\n"))
    })
}

/// The purge a query string names: exactly one of `url`, `prefix`, `tag` or `everything` (empty,
/// `1` or `true`), and optionally `wait_ms`. Values are percent-decoded once, `+` kept as it is
/// (a purge URL is matched against the path and query clients send, `+` included): to purge
/// `/a?q=x%20y`, send `url=%2Fa%3Fq%3Dx%2520y`.
fn purge_request_of_query(query: &str) -> Result<basalt_client::pb::CachePurgeRequest, String> {
    use basalt_client::pb::cache_purge_request::Target;
    let mut request = basalt_client::pb::CachePurgeRequest::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("the value of {name} is not UTF-8 once decoded"))?
            .into_owned();
        let target = match name {
            "url" => Target::Url(value),
            "prefix" => Target::Prefix(value),
            "tag" => Target::Tag(value),
            "everything" if matches!(value.as_str(), "" | "1" | "true") => Target::Everything(true),
            "everything" => return Err(format!("everything takes no value (or 1, true), got {value:?}")),
            "wait_ms" => {
                request.wait_ms = value
                    .parse()
                    .map_err(|_| format!("wait_ms must be a number of ms, got {value:?}"))?;
                continue;
            }
            other => {
                return Err(format!(
                    "unknown purge parameter {other:?} (url, prefix, tag, everything, wait_ms)"
                ))
            }
        };
        if request.target.replace(target).is_some() {
            return Err("a purge names one of url, prefix, tag or everything, once".into());
        }
    }
    if request.target.is_none() {
        return Err("a purge names one of url, prefix, tag or everything (e.g. ?tag=product-42)".into());
    }
    Ok(request)
}

/// The largest clock skew the control endpoint sets: 30 days, in ms.
pub const CLOCK_SKEW_MS_MAX: u64 = 30 * 24 * 3_600_000;

/// 200 when the node runs and knows a leader; 503 otherwise.
async fn health(State(api): State<Api>) -> (StatusCode, String) {
    let metrics = crate::api::metrics_now(&api.raft);
    match (&metrics.running_state, metrics.current_leader) {
        (Ok(()), Some(leader)) => (StatusCode::OK, format!("ok: leader {leader}\n")),
        (Ok(()), None) => (StatusCode::SERVICE_UNAVAILABLE, "no leader\n".into()),
        (Err(e), _) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")),
    }
}

async fn metrics(State(api): State<Api>, Extension(edge): Extension<Option<Arc<Edge>>>) -> String {
    let m = crate::api::metrics_now(&api.raft);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("basalt_raft_term", "Current Raft term.", m.current_term);
    gauge(
        "basalt_raft_is_leader",
        "1 if this node is the leader.",
        u64::from(m.state == ServerState::Leader),
    );
    gauge(
        "basalt_raft_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "basalt_raft_applied_index",
        "Index of the last applied entry.",
        m.last_applied.as_ref().map_or(0, |l| l.index),
    );
    gauge(
        "basalt_raft_snapshot_index",
        "Last index in the latest snapshot.",
        m.snapshot.as_ref().map_or(0, |l| l.index),
    );
    gauge(
        "basalt_raft_purged_index",
        "Last purged log index.",
        m.purged.as_ref().map_or(0, |l| l.index),
    );
    for (budget, prefix, whose) in api.connection_budgets.labelled() {
        gauge(
            &format!("{prefix}_open"),
            &format!("Connections the {whose} hold open."),
            budget.open() as u64,
        );
        gauge(
            &format!("{prefix}_max"),
            &format!("Connections the {whose} may hold open at once (the node's file descriptor plan)."),
            budget.capacity() as u64,
        );
    }
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter(
        "basalt_api_writes_total",
        "Mutating API requests.",
        api.counters.writes.load(Ordering::Relaxed),
    );
    counter(
        "basalt_api_reads_total",
        "Read API requests.",
        api.counters.reads.load(Ordering::Relaxed),
    );
    counter(
        "basalt_api_errors_total",
        "Mutating requests that failed.",
        api.counters.errors.load(Ordering::Relaxed),
    );
    counter(
        "basalt_raft_stream_open_failures_total",
        "Replication streams to a peer that failed to open (the peer down or unreachable).",
        api.network.stream_open_failures.load(Ordering::Relaxed),
    );
    counter(
        "basalt_raft_streams_opened_total",
        "Replication streams to a peer opened (a heartbeat is one unary append, not a stream).",
        api.network.streams_opened.load(Ordering::Relaxed),
    );
    counter(
        "basalt_raft_heartbeat_failures_total",
        "Heartbeats to a peer that failed (the peer down, unreachable or refusing).",
        api.network.heartbeat_failures.load(Ordering::Relaxed),
    );
    counter(
        "basalt_raft_cluster_refusals_total",
        "Messages between members (Raft, relays, purge confirmations; received, or replies to this node's) refused for naming another cluster id.",
        api.cluster.refused(),
    );
    counter(
        "basalt_node_call_failures_total",
        "Calls to the other members besides Raft (pub/sub relays, purge confirmations, edge counters, purges handed to the leader) that failed: unreachable, too slow or refused.",
        api.node_links.failures(),
    );
    for (budget, prefix, whose) in api.connection_budgets.labelled() {
        counter(
            &format!("{prefix}_refused_total"),
            &format!("Connections to the {whose} refused at once: as many were open as the plan allows."),
            budget.refused(),
        );
    }
    if let Some(gate) = &api.gate {
        counter(
            "basalt_auth_unauthenticated_total",
            "Client requests (gRPC, RESP, HTTP) refused for no or unknown credentials.",
            gate.counters.unauthenticated.load(Ordering::Relaxed),
        );
        counter(
            "basalt_auth_denied_total",
            "Client requests (gRPC, RESP, HTTP) refused for a permission their roles do not grant.",
            gate.counters.denied.load(Ordering::Relaxed),
        );
    }
    for (tls, prefix, whose) in [
        (&api.peer_tls, "basalt_peer_tls", "Peer"),
        (&api.client_tls, "basalt_client_tls", "Client-door"),
    ] {
        let Some(tls) = tls else { continue };
        counter(
            &format!("{prefix}_handshake_failures_total"),
            &format!("{whose} connections (either way) whose TLS handshake failed: a certificate of another CA, none where one is required, plaintext, a timeout."),
            tls.handshake_failures(),
        );
        counter(
            &format!("{prefix}_handshakes_dropped_total"),
            &format!("{whose} connections dropped unanswered: too many TLS handshakes in progress, in all or from their address."),
            tls.handshakes_dropped(),
        );
        counter(
            &format!("{prefix}_reloads_total"),
            &format!(
                "Times the {} TLS files changed and were loaded anew.",
                whose.to_lowercase()
            ),
            tls.reloads(),
        );
        counter(
            &format!("{prefix}_reload_failures_total"),
            &format!(
                "Times the {} TLS files changed but did not load (the previous ones stay).",
                whose.to_lowercase()
            ),
            tls.reload_failures(),
        );
    }
    let clock = api.clock.stats();
    counter(
        "basalt_clock_clamped_stamps_total",
        "Stamps seen further ahead of this node's clock than the max offset; the clock did not follow them.",
        clock.clamped_observations.load(Ordering::Relaxed),
    );
    counter(
        "basalt_raft_clock_refusals_total",
        "Raft messages refused because the sender's clock was further off than the max offset.",
        clock.refused_peer_messages.load(Ordering::Relaxed),
    );
    counter(
        "basalt_clock_corrected_stamps_total",
        "Stamps issued with this node's wall clock held within the max offset of its peers' (its own was further off).",
        clock.corrected_stamps.load(Ordering::Relaxed),
    );
    counter(
        "basalt_repl_clock_refusals_total",
        "Batches of another region refused because their stamps ran further ahead than the max offset.",
        clock.refused_remote_batches.load(Ordering::Relaxed),
    );
    counter(
        "basalt_repl_topology_refusals_total",
        "Feed streams of another region refused at open: its id, home or escrow shares disagree with this region's topology.",
        api.replication
            .as_ref()
            .map_or(0, |r| r.refused_streams.load(Ordering::Relaxed)),
    );
    let (merged_entries, merged_requests) = api.merger.merged();
    counter(
        "basalt_kv_merged_entries_total",
        "Log entries this node proposed as leader that merged several clients' KV write requests.",
        merged_entries,
    );
    counter(
        "basalt_kv_merged_requests_total",
        "KV write requests that went into those merged entries.",
        merged_requests,
    );
    if let Some(edge) = edge {
        edge_metrics(&mut out, &edge);
    }
    out
}

/// The edge cache's counters and its store's size.
fn edge_metrics(out: &mut String, edge: &Edge) {
    let stats = &edge.stats;
    for (name, help, counter) in [
        (
            "basalt_edge_hits_total",
            "Edge answers from a fresh stored object.",
            &stats.hits,
        ),
        (
            "basalt_edge_misses_total",
            "Edge answers fetched from the origin and stored.",
            &stats.misses,
        ),
        (
            "basalt_edge_stale_total",
            "Edge answers from a stale object (while revalidating, or on origin error).",
            &stats.stale,
        ),
        (
            "basalt_edge_revalidated_total",
            "Edge answers from an object the origin confirmed with a 304.",
            &stats.revalidated,
        ),
        (
            "basalt_edge_bypass_total",
            "Edge answers not stored (not storable, authenticated, unkeyable).",
            &stats.bypass,
        ),
        (
            "basalt_edge_origin_fetches_total",
            "Requests the edge sent to origins.",
            &stats.origin_fetches,
        ),
        (
            "basalt_edge_origin_errors_total",
            "Origin requests that failed (timeout, unreachable, garbage, too large).",
            &stats.origin_errors,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let store = edge.store.stats();
    for (name, help, value) in [
        ("basalt_edge_objects", "Objects in the edge store.", store.objects),
        (
            "basalt_edge_bytes",
            "Bytes the edge store's objects weigh.",
            store.bytes,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    let name = "basalt_edge_purges_applied";
    let _ = writeln!(
        out,
        "# HELP {name} The last purge of the region's purge table this node's edge has applied.\n# TYPE {name} gauge\n{name} {}",
        *edge.purges_applied.borrow()
    );
    let name = "basalt_edge_evictions_total";
    let _ = writeln!(
        out,
        "# HELP {name} Objects the edge store evicted for its byte budget.\n# TYPE {name} counter\n{name} {}",
        store.evictions
    );
}

/// The HTTP door's listener for axum: plain or TLS (`[tls]`), see [`basalt_tls::Listener`].
pub struct Door(pub basalt_tls::Listener);

/// What the HTTP door's TLS handshake found about a connection's client (its certificate's
/// name, when it showed one of the client CA), for the handlers that authenticate: with no
/// `authorization` header, a client certificate names the user, as on the gRPC door.
#[derive(Clone, Debug, Default)]
pub struct DoorConnection(pub Option<basalt_tls::ConnectInfo>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Door>> for DoorConnection {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Door>) -> DoorConnection {
        DoorConnection(stream.io().tls_info().cloned())
    }
}

impl axum::serve::Listener for Door {
    type Io = basalt_tls::Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some(accepted) => accepted,
            // The TLS handshakes stopped with the node: nothing more comes, and the server's
            // graceful shutdown ends this wait.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_purge_query_names_one_target() {
        let request = purge_request_of_query("tag=product-42&wait_ms=500").expect("a tag");
        assert_eq!(request.wait_ms, 500);
        assert!(purge_request_of_query("tag=a&url=%2Fb").is_err(), "two targets");
        assert!(purge_request_of_query("wait_ms=5").is_err(), "no target");
        assert!(purge_request_of_query("url=%FF").is_err(), "not UTF-8");
    }

    proptest! {
        /// A purge request's query, any text: a purge naming one target, or a refusal with a
        /// message, never a panic.
        #[test]
        fn any_purge_query_parses_or_is_refused(query in "([a-z_]{0,10}=[a-zA-Z0-9%+./-]{0,12}&?){0,4}|\\PC{0,60}") {
            match purge_request_of_query(&query) {
                Ok(request) => prop_assert!(request.target.is_some()),
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }
    }
}
