//! The node's side of cross-region replication: the shipper that streams this region's change
//! feed to every other region (while this node leads its region), the receiver that merges other
//! regions' feeds through this region's Raft, the trimmer that forgets what every region has, and
//! the status `basalt regions status` shows.
//!
//! What is merged, and how, is decided by the pure apply logic (`basalt-storage`'s
//! `apply::replication`, over `basalt-replication`'s merge rules); this module only moves bytes
//! and proposes entries.

mod home;
mod receiver;
mod shipper;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use basalt_replication::RegionId;

pub use home::{HomeRoute, Homed};
pub use receiver::FeedReceiver;

use crate::api::Api;
use crate::config::RegionConfig;

/// What the shipper to one remote region knows, for status and trimming.
#[derive(Clone, Debug, Default)]
pub struct OutgoingLink {
    pub connected: bool,
    pub endpoint: String,
    /// The last feed position sent.
    pub shipped_upto: u64,
    /// The remote region's watermark for this region, as last acknowledged. `None` until this
    /// node (as leader) has heard from it.
    pub acked_upto: Option<u64>,
    pub resyncs: u64,
    /// Why the link needs attention (unreachable, behind the feed's retention), if it does.
    pub alarm: String,
    pub last_error: String,
}

/// Replication lag of the batches merged here from one source region: the time from the source
/// entry's stamp to its commit in this region, over the last [`LAG_SAMPLES`] entries.
#[derive(Debug, Default)]
pub struct IncomingLag {
    samples: VecDeque<u64>,
}

const LAG_SAMPLES: usize = 20_000;

impl IncomingLag {
    fn record(&mut self, lag_ms: u64) {
        if self.samples.len() == LAG_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(lag_ms);
    }

    /// `(p50, p99, max, samples)` in milliseconds.
    pub fn summary(&self) -> (u64, u64, u64, u64) {
        let mut sorted: Vec<u64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        (
            at(0.50),
            at(0.99),
            sorted.last().copied().unwrap_or(0),
            sorted.len() as u64,
        )
    }
}

/// Shared by the shipper, receiver, trimmer and status.
pub struct Replication {
    pub config: RegionConfig,
    outgoing: Mutex<BTreeMap<RegionId, OutgoingLink>>,
    incoming: Mutex<BTreeMap<RegionId, IncomingLag>>,
    /// When this node last became leader: acknowledgements are learned again from then on.
    leader_since: Mutex<Option<Instant>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a plain field write: a panic elsewhere cannot leave the value half-changed.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Replication {
    pub fn new(config: RegionConfig) -> Arc<Replication> {
        let outgoing = config.remotes.iter().map(|r| (r.id, OutgoingLink::default())).collect();
        Arc::new(Replication {
            config,
            outgoing: Mutex::new(outgoing),
            incoming: Mutex::new(BTreeMap::new()),
            leader_since: Mutex::new(None),
        })
    }

    pub fn outgoing(&self) -> BTreeMap<RegionId, OutgoingLink> {
        locked(&self.outgoing).clone()
    }

    fn update_outgoing(&self, region: RegionId, change: impl FnOnce(&mut OutgoingLink)) {
        change(locked(&self.outgoing).entry(region).or_default());
    }

    fn record_lag(&self, source: RegionId, lags_ms: impl IntoIterator<Item = u64>) {
        let mut incoming = locked(&self.incoming);
        let window = incoming.entry(source).or_default();
        for lag in lags_ms {
            window.record(lag);
        }
    }

    pub fn incoming_lag(&self, source: RegionId) -> (u64, u64, u64, u64) {
        locked(&self.incoming)
            .get(&source)
            .map_or((0, 0, 0, 0), |w| w.summary())
    }

    /// The tombstone collection to propose now, if any: below the lowest frontier of the
    /// configured remote regions and below what this region's feed has delivered to each of them
    /// (as this node, leading, last heard their watermarks; nothing is collected until it has
    /// heard every one). A region the feed was trimmed past keeps every tombstone in place until
    /// its re-sync has carried them.
    pub fn tombstone_gc_due(
        &self,
        store: &basalt_storage::state::rocks::RocksStore,
        limit: u32,
    ) -> Result<Option<basalt_storage::command::Op>, basalt_storage::state::StoreError> {
        use basalt_storage::apply::replication::{delivered_below, tombstone_gc_due};
        let remotes: Vec<RegionId> = self.config.remotes.iter().map(|r| r.id).collect();
        let outgoing = self.outgoing();
        let view = store.view();
        let acknowledged = remotes
            .iter()
            .map(|id| outgoing.get(id).and_then(|link| link.acked_upto));
        let delivered = delivered_below(&view, acknowledged)?;
        tombstone_gc_due(&view, self.config.role(), &remotes, delivered, limit)
    }

    pub fn region_name(&self, id: RegionId) -> String {
        if id == self.config.id {
            return self.config.name.clone();
        }
        self.config
            .remotes
            .iter()
            .find(|r| r.id == id)
            .map_or_else(|| format!("region-{id}"), |r| r.name.clone())
    }

    /// Starts the background tasks: a shipper per remote region and the trimmer. They do work
    /// only while this node leads its region.
    pub fn spawn(
        self: &Arc<Self>,
        api: Api,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for remote in self.config.remotes.clone() {
            tasks.push(tokio::spawn(shipper::run(
                self.clone(),
                api.clone(),
                remote,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(shipper::trimmer(self.clone(), api, stop)));
        tasks
    }
}

/// The answer to `Cluster.Regions` on this node.
pub async fn status(api: &Api, with_digest: bool) -> Result<basalt_client::pb::RegionsResponse, tonic::Status> {
    use basalt_client::pb;
    use basalt_client::ErrorCode;
    use basalt_storage::apply::replication::{feed_after, feed_trimmed_upto, source_states};

    let internal = |e: basalt_storage::state::StoreError| crate::api::status(ErrorCode::Internal, e.to_string());
    let metrics = crate::api::metrics_now(&api.raft);
    let applied_index = *api.applied.borrow();
    let Some(repl) = &api.replication else {
        return Ok(pb::RegionsResponse {
            node_id: metrics.id,
            leader: api.raft.is_leader(),
            leader_id: metrics.current_leader,
            applied_index,
            ..Default::default()
        });
    };
    let store = api.store.clone();
    let (trimmed, sources, digest, tombstones) = tokio::task::spawn_blocking(move || {
        let view = store.view();
        let trimmed = feed_trimmed_upto(&view)?;
        let sources = source_states(&view)?;
        let (digest, tombstones) = if with_digest {
            (
                basalt_storage::apply::replication::digest(&view)?.to_hex(),
                basalt_storage::apply::replication::tombstone_count(&view)?,
            )
        } else {
            (String::new(), 0)
        };
        Ok::<_, basalt_storage::state::StoreError>((trimmed, sources, digest, tombstones))
    })
    .await
    .map_err(|e| crate::api::status(ErrorCode::Internal, e.to_string()))?
    .map_err(internal)?;
    let outgoing = repl.outgoing();
    let now_ms = basalt_storage::hlc::wall_clock_ms();
    let mut links = Vec::new();
    for remote in &repl.config.remotes {
        let out = outgoing.get(&remote.id).cloned().unwrap_or_default();
        let acked = out.acked_upto.unwrap_or(0);
        let oldest_unacked = feed_after(&api.store, acked, 1).map_err(internal)?;
        let lag_ms = oldest_unacked.first().map_or(0, |e| {
            now_ms.saturating_sub(basalt_storage::hlc::HlcStamp(e.stamp).physical_ms())
        });
        let merged_upto = sources
            .iter()
            .find(|(id, _)| *id == remote.id)
            .map_or(0, |(_, s)| s.applied_upto);
        let (p50, p99, max, samples) = repl.incoming_lag(remote.id);
        let leader = api.raft.is_leader();
        links.push(pb::RegionLink {
            region: remote.name.clone(),
            region_id: remote.id.into(),
            connected: out.connected,
            endpoint: out.endpoint,
            shipped_upto: out.shipped_upto,
            acked_upto: out.acked_upto,
            lag_entries: if leader && !oldest_unacked.is_empty() {
                applied_index.saturating_sub(acked)
            } else {
                0
            },
            lag_ms: if leader { lag_ms } else { 0 },
            resyncs: out.resyncs,
            alarm: if out.alarm.is_empty() {
                out.last_error
            } else {
                out.alarm
            },
            merged_upto,
            incoming_lag_p50_ms: p50,
            incoming_lag_p99_ms: p99,
            incoming_lag_max_ms: max,
            incoming_samples: samples,
        });
    }
    Ok(pb::RegionsResponse {
        region: repl.config.name.clone(),
        region_id: repl.config.id.into(),
        node_id: metrics.id,
        leader: api.raft.is_leader(),
        leader_id: metrics.current_leader,
        applied_index,
        feed_trimmed_upto: trimmed,
        digest,
        links,
        tombstones,
    })
}
