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
mod resync;
mod shipper;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use basalt_replication::RegionId;

pub use home::{HomeRoute, Homed};
pub use receiver::FeedReceiver;

use basalt_storage::apply::topology::{load_topology, RegionTopology};

use crate::api::Api;
use crate::config::{RegionConfig, RemoteRegion};
use crate::limits::{LAG_SAMPLES, SUPERVISE_EVERY};

/// The feed stream's opening header: the source region's id, home and escrow shares
/// (`topology::agreement_summary`), which the receiver checks before merging anything.
pub(crate) const TOPOLOGY_HEADER: &str = "basalt-region-topology";
/// The feed stream's opening header: the Raft term of the source leader that opened it, so that
/// a deposed leader which has not noticed cannot displace its successor's stream. Absent (a
/// build before it): judged by arrival only.
pub(crate) const LEADER_TERM_HEADER: &str = "basalt-feed-leader-term";

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
    /// This node's region flags: which region it is (checked against the replicated topology at
    /// startup), its first topology, and local settings (feed retention).
    pub config: RegionConfig,
    /// The replicated region topology, as last applied here: which regions to ship to, where.
    topology: tokio::sync::watch::Receiver<Option<Arc<RegionTopology>>>,
    outgoing: Mutex<BTreeMap<RegionId, OutgoingLink>>,
    incoming: Mutex<BTreeMap<RegionId, IncomingLag>>,
    /// When this node last became leader: acknowledgements are learned again from then on.
    leader_since: Mutex<Option<Instant>>,
    /// Feed streams refused at open because the source's topology disagreed with this one's.
    pub refused_streams: std::sync::atomic::AtomicU64,
    /// Per source region, the highest leader term and the number of the newest feed stream
    /// opened here: an older stream still delivering merges nothing more (see
    /// [`Replication::open_stream`]).
    streams: Mutex<BTreeMap<RegionId, (u64, u64)>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a plain field write: a panic elsewhere cannot leave the value half-changed.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Replication {
    pub fn new(
        config: RegionConfig,
        topology: tokio::sync::watch::Receiver<Option<Arc<RegionTopology>>>,
    ) -> Arc<Replication> {
        Arc::new(Replication {
            config,
            topology,
            outgoing: Mutex::new(BTreeMap::new()),
            incoming: Mutex::new(BTreeMap::new()),
            leader_since: Mutex::new(None),
            refused_streams: Default::default(),
            streams: Mutex::new(BTreeMap::new()),
        })
    }

    /// Numbers a feed stream from `source`, opened by its leader of `term`, on this node: the
    /// newest from now on. A source opens a new stream when the last one broke or its leadership
    /// moved; what the old one still delivers (messages queued before it broke) must not merge
    /// after the new one's, or a re-sync begun anew could be overwritten by the tail of the old
    /// one. `None`: a leader of a later term has opened one, so this one comes from a deposed
    /// leader that has not noticed yet (refused, or the two would displace each other in turn).
    /// A stream naming no term (a build before it) is not judged by term, and sets none.
    pub(crate) fn open_stream(&self, source: RegionId, term: Option<u64>) -> Option<u64> {
        let mut streams = locked(&self.streams);
        let (highest_term, number) = streams.entry(source).or_insert((0, 0));
        if let Some(term) = term {
            if term < *highest_term {
                return None;
            }
            *highest_term = term;
        }
        *number += 1;
        Some(*number)
    }

    /// Whether stream `number` from `source` is still the newest opened on this node.
    pub(crate) fn is_newest_stream(&self, source: RegionId, number: u64) -> bool {
        locked(&self.streams)
            .get(&source)
            .is_some_and(|(_, newest)| *newest == number)
    }

    /// The replicated region topology; `None` until this region's first leader has committed it.
    pub fn topology(&self) -> Option<Arc<RegionTopology>> {
        self.topology.borrow().clone()
    }

    /// This region's id as the replicated topology says (the flags' until it is committed; a
    /// node whose flags name another region does not start).
    pub fn this_region(&self) -> RegionId {
        self.topology().map_or(self.config.id, |t| t.this)
    }

    /// The links to the regions of the topology (a region removed has none).
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
        // The topology read in the same view as the tombstones: the remotes they wait for.
        let view = store.view();
        let Some(topology) = load_topology(&view)? else {
            return Ok(None);
        };
        let remotes = topology.remote_ids();
        let outgoing = self.outgoing();
        let acknowledged = remotes
            .iter()
            .map(|id| outgoing.get(id).and_then(|link| link.acked_upto));
        let delivered = delivered_below(&view, acknowledged)?;
        tombstone_gc_due(&view, topology.role(), &remotes, delivered, limit)
    }

    pub fn region_name(&self, id: RegionId) -> String {
        if id == self.config.id {
            return self.config.name.clone();
        }
        self.topology()
            .and_then(|t| t.name_of(id).map(str::to_string))
            .unwrap_or_else(|| format!("region-{id}"))
    }

    /// Starts the background tasks: the supervisor of one shipper per remote region of the
    /// replicated topology, and the trimmer. They do work only while this node leads its region.
    pub fn spawn(
        self: &Arc<Self>,
        api: Api,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(supervise_shippers(self.clone(), api.clone(), stop.clone())),
            tokio::spawn(shipper::trimmer(self.clone(), api, stop)),
        ]
    }
}

/// Region `id` of `topology` as the shipper and the home route reach it.
pub(crate) fn remote_region(topology: &RegionTopology, id: RegionId) -> Option<RemoteRegion> {
    topology.regions.get(&id).map(|member| RemoteRegion {
        name: member.name.clone(),
        id,
        endpoints: member.endpoints.clone(),
    })
}

/// Every other region of `topology`, as [`remote_region`] gives it.
fn remote_regions(topology: &RegionTopology) -> impl Iterator<Item = RemoteRegion> + '_ {
    topology
        .remote_ids()
        .into_iter()
        .filter_map(|id| remote_region(topology, id))
}

/// Keeps one shipper running per remote region of the replicated topology, with the endpoints
/// the topology names: starts one for a region added, stops the one of a region removed, and
/// restarts one whose endpoints changed. While leader with no topology yet, proposes the
/// region's first topology from this node's flags.
async fn supervise_shippers(repl: Arc<Replication>, api: Api, stop: tokio::sync::watch::Receiver<bool>) {
    let mut running: BTreeMap<RegionId, (RemoteRegion, tokio::sync::watch::Sender<bool>)> = BTreeMap::new();
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when this region cannot take a first topology (it holds data): said once, not retried.
    let mut init_refused = false;
    while !*stop.borrow() {
        tick.tick().await;
        let Some(topology) = repl.topology() else {
            if api.raft.is_leader() && !init_refused {
                init_refused = !propose_initial_topology(&repl, &api).await;
            }
            continue;
        };
        let wanted: BTreeMap<RegionId, RemoteRegion> = remote_regions(&topology).map(|r| (r.id, r)).collect();
        running.retain(|id, (remote, stop_one)| {
            let keep = wanted.get(id) == Some(remote);
            if !keep {
                let _ = stop_one.send(true);
            }
            keep
        });
        locked(&repl.outgoing).retain(|id, _| wanted.contains_key(id));
        for (id, remote) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            locked(&repl.outgoing).entry(id).or_default();
            let (stop_one, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(shipper::run(
                repl.clone(),
                api.clone(),
                remote.clone(),
                either_stop(stop.clone(), stopped),
            ));
            running.insert(id, (remote, stop_one));
        }
    }
    for (_, stop_one) in running.values() {
        let _ = stop_one.send(true);
    }
}

/// A stop signal raised when either `a` or `b` is.
fn either_stop(
    mut a: tokio::sync::watch::Receiver<bool>,
    mut b: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(*a.borrow() || *b.borrow());
    tokio::spawn(async move {
        tokio::select! {
            _ = a.wait_for(|s| *s) => {}
            _ = b.wait_for(|s| *s) => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// Proposes this region's first topology from this node's flags. Apply refuses it once the
/// region has one, so two leaders racing (or a retry) change nothing the second time. `false`
/// when the region can never take one.
async fn propose_initial_topology(repl: &Replication, api: &Api) -> bool {
    // Apply refuses a first topology in a region that holds data (the node refuses to start
    // then, so only a node without `--region` can have written it): do not fill the log.
    match basalt_storage::apply::topology::holds_data(&api.store) {
        Ok(false) => {}
        Ok(true) => {
            tracing::error!(region = %repl.config.name, "this region holds data written without a region topology; not proposing one (a region must start empty)");
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the state store");
            return true;
        }
    }
    let command = basalt_storage::command::Command {
        stamp: api.clock.now(),
        session: None,
        fence: None,
        op: basalt_storage::command::Op::Region(basalt_storage::command::RegionOp::Topology {
            change: repl.config.initial_topology(),
        }),
    };
    if let Err(e) = command.check_size() {
        tracing::error!(error = %e, "the region topology from this node's flags does not fit one log entry");
        return false;
    }
    match api.raft.client_write(command).await {
        Ok(written) => match written.data {
            basalt_storage::command::Response::Topology(topology) => {
                tracing::info!(region = %repl.config.name, regions = topology.regions.len(), home = topology.home, "committed the region topology from this node's flags");
            }
            other => tracing::warn!(answer = ?other, "this region's first topology was refused"),
        },
        Err(e) => tracing::debug!(error = %e, "initial region topology not proposed"),
    }
    true
}

/// The answer to `Cluster.Regions` on this node.
pub async fn status(api: &Api, with_digest: bool) -> Result<basalt_client::pb::RegionsResponse, tonic::Status> {
    use basalt_client::pb;
    use basalt_client::ErrorCode;
    use basalt_storage::apply::replication::{feed_after, feed_trimmed_upto, source_states};

    let internal = crate::api::storage_status;
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
    let (trimmed, sources, digest, tombstones, purges) = tokio::task::spawn_blocking(move || {
        let view = store.view();
        let trimmed = feed_trimmed_upto(&view)?;
        let sources = source_states(&view)?;
        let purges = basalt_storage::apply::cache::kept_purges(&view)?;
        let (digest, tombstones) = if with_digest {
            (
                basalt_storage::apply::replication::digest(&view)?.to_hex(),
                basalt_storage::apply::replication::tombstone_count(&view)?,
            )
        } else {
            (String::new(), 0)
        };
        Ok::<_, basalt_storage::state::StoreError>((trimmed, sources, digest, tombstones, purges))
    })
    .await
    .map_err(|e| crate::api::status(ErrorCode::Internal, e.to_string()))?
    .map_err(internal)?;
    let outgoing = repl.outgoing();
    let now_ms = basalt_storage::hlc::wall_clock_ms();
    let mut links = Vec::new();
    let topology = repl.topology();
    let remotes: Vec<RemoteRegion> = topology
        .as_deref()
        .map_or_else(Vec::new, |t| remote_regions(t).collect());
    for remote in &remotes {
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
        // Purges made here that region has not acknowledged (its acknowledgement is of feed
        // positions: this region's log indexes), and the last purge merged from it.
        use basalt_storage::apply::cache::PurgeSource;
        // Until that region acknowledges something to this leader (just after it took over),
        // the feed's trimmed position is what every region is known to have.
        let purges_acked = out.acked_upto.unwrap_or(trimmed);
        let pending: Vec<_> = purges
            .iter()
            .filter(|(_, p)| p.source == PurgeSource::Local && p.index > purges_acked)
            .collect();
        let purge_pending_ms = pending.first().map_or(0, |(_, p)| now_ms.saturating_sub(p.at_ms));
        let last_purge_lag_ms = purges.iter().rev().find_map(|(_, p)| match p.source {
            PurgeSource::Merged(origin) if origin.region == remote.id => Some(p.at_ms.saturating_sub(origin.at_ms)),
            _ => None,
        });
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
            purges_pending: leader.then_some(pending.len() as u64),
            purge_pending_ms: leader.then_some(purge_pending_ms),
            last_purge_lag_ms,
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
        topology: topology.as_deref().map(topology_message),
    })
}

/// The replicated topology as `Cluster.Regions` and `Cluster.ChangeRegions` answer it.
pub fn topology_message(topology: &RegionTopology) -> basalt_client::pb::RegionTopology {
    use basalt_client::pb;
    pb::RegionTopology {
        this_id: topology.this.into(),
        home_id: topology.home.into(),
        changed_at: topology.changed_at,
        regions: topology
            .regions
            .iter()
            .map(|(id, member)| pb::RegionMember {
                id: (*id).into(),
                name: member.name.clone(),
                endpoints: member.endpoints.clone(),
                escrow_share: member.escrow.map(|share| share.to_string()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_stream_of_a_source_merges() {
        let (_topology, watched) = tokio::sync::watch::channel(None);
        let repl = Replication::new(
            RegionConfig {
                name: "us".into(),
                id: 1,
                remotes: Vec::new(),
                feed_retain_entries: 100,
                clock_skew_ms: 0,
                home: None,
                joining: false,
            },
            watched,
        );
        let first = repl.open_stream(2, Some(5)).expect("a first stream");
        assert!(repl.is_newest_stream(2, first));
        let other_source = repl.open_stream(3, Some(1)).expect("another source's");
        assert!(repl.is_newest_stream(2, first), "another source's stream");
        let second = repl.open_stream(2, Some(5)).expect("the same leadership, reconnected");
        assert!(!repl.is_newest_stream(2, first), "replaced");
        assert!(repl.is_newest_stream(2, second));
        assert!(repl.is_newest_stream(3, other_source));
        let successor = repl.open_stream(2, Some(6)).expect("a later leadership");
        assert_eq!(
            repl.open_stream(2, Some(5)),
            None,
            "the deposed leader cannot displace it"
        );
        assert!(repl.is_newest_stream(2, successor));
        // A build that names no term: newest wins, and it sets no term.
        let unnamed = repl.open_stream(2, None).expect("no term named");
        assert!(repl.is_newest_stream(2, unnamed));
        assert!(repl.open_stream(2, Some(6)).is_some(), "the term seen is still 6");
    }
}
