//! Follows the region's purge table (`basalt_storage::apply::cache`) into this node's object
//! store: every purge applied to the state, whether made in this region or merged from another's
//! feed, removes what it matches here. [`Edge::purges_applied`] tells how far it has come, which
//! is what a purge's caller waits for on every node before it is answered.

use std::sync::Arc;
use std::time::Duration;

use basalt_edge::store::PurgeTarget as EdgeTarget;
use basalt_storage::apply::cache::{purges_after, PurgesAfter};
use basalt_storage::command::PurgeTarget;
use basalt_storage::state::rocks::RocksStore;
use tokio::sync::watch;

use super::Edge;
use crate::limits::{PURGE_FOLLOW_BATCH_MAX, PURGE_FOLLOW_POLL, PURGE_FOLLOW_RETRY};

/// The edge store's form of a replicated purge target.
pub fn edge_target(target: PurgeTarget) -> EdgeTarget {
    match target {
        PurgeTarget::Url(url) => EdgeTarget::Url(url),
        PurgeTarget::Prefix(prefix) => EdgeTarget::Prefix(prefix),
        PurgeTarget::Tag(tag) => EdgeTarget::Tag(tag.into_bytes()),
        PurgeTarget::Everything => EdgeTarget::Everything,
    }
}

/// Applies to `edge` every purge after `seen`, looking again after every applied batch of the
/// log (and every [`PURGE_FOLLOW_POLL`]), until `stop`. `seen` must be the last purge recorded
/// before the edge stored anything: the store starts empty, so earlier purges have nothing to
/// remove. A purge the table no longer keeps ([`PurgesAfter::Gap`]) forgets everything.
pub async fn follow(
    edge: Arc<Edge>,
    store: RocksStore,
    mut applied: watch::Receiver<u64>,
    mut seen: u64,
    mut stop: watch::Receiver<bool>,
) {
    edge.purges_applied.send_replace(seen);
    while !*stop.borrow() {
        // Marked seen before reading, so a batch applied during the read wakes the next wait.
        applied.borrow_and_update();
        // RocksDB reads block: off the async workers.
        let reader = store.clone();
        let read =
            tokio::task::spawn_blocking(move || purges_after(&reader.view(), seen, PURGE_FOLLOW_BATCH_MAX)).await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "the purge table read panicked; retrying");
                tokio::time::sleep(PURGE_FOLLOW_RETRY).await;
                continue;
            }
        };
        match read {
            Ok(PurgesAfter::Purges(purges)) if purges.is_empty() => {
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() {
                        // Raft's state machine is gone: the node is stopping.
                        return;
                    },
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(PURGE_FOLLOW_POLL) => {}
                }
            }
            Ok(PurgesAfter::Purges(purges)) => {
                for (seq, record) in purges {
                    edge.store.purge(edge_target(record.target));
                    seen = seq;
                }
                edge.purges_applied.send_replace(seen);
            }
            Ok(PurgesAfter::Gap { last }) => {
                tracing::warn!(
                    seen,
                    last,
                    "the edge fell behind the purges the region keeps; forgetting every cached object"
                );
                edge.store.purge(EdgeTarget::Everything);
                seen = last;
                edge.purges_applied.send_replace(seen);
            }
            Err(e) => {
                // A snapshot being installed, or a read error: the purges are still there to
                // read on the next try.
                tracing::warn!(error = %e, "reading the purge table; retrying");
                tokio::time::sleep(PURGE_FOLLOW_RETRY).await;
            }
        }
    }
}

/// Waits until this node's edge has applied purge `seq`, for at most `wait`; answers how far it
/// has come.
pub async fn wait_applied(edge: &Edge, seq: u64, wait: Duration) -> u64 {
    let mut applied = edge.purges_applied.subscribe();
    let _ = tokio::time::timeout(wait, applied.wait_for(|applied| *applied >= seq)).await;
    let applied = *applied.borrow();
    applied
}
