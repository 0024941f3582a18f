//! HTTP endpoints: `/health`, `/metrics` (Prometheus text format), and, only on a node started
//! with `--allow-clock-control`, `/debug/clock-skew` (the partition harness's clock nemesis).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Extension;
use axum::Router;
use openraft::ServerState;

use crate::api::Api;
use crate::edge::Edge;

pub fn router(api: Api, clock_control: bool, edge: Option<Arc<Edge>>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
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
async fn set_clock_skew(State(api): State<Api>, body: String) -> (StatusCode, String) {
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
    let name = "basalt_edge_evictions_total";
    let _ = writeln!(
        out,
        "# HELP {name} Objects the edge store evicted for its byte budget.\n# TYPE {name} counter\n{name} {}",
        store.evictions
    );
}
