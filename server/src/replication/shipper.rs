//! Ships this region's change feed to one remote region, and trims what every region has.
//!
//! One bidirectional gRPC stream per remote region, opened by this region's leader: batches go
//! out in feed order without waiting for each answer (up to [`FEED_WINDOW_BATCHES`] unanswered), and the
//! remote leader answers each with its watermark once the batch is committed there. A new stream
//! starts with an empty batch whose answer is the remote watermark, so shipping resumes exactly
//! where the remote region is, after a leader change on either side or a broken link: nothing is
//! lost (the feed keeps everything not acknowledged) and nothing is merged twice (the receiver
//! skips what is at or below its watermark).

use std::time::{Duration, Instant};

use basalt_replication::feed::encode;
use basalt_replication::pb::region_feed_client::RegionFeedClient;
use basalt_replication::pb::{FeedAck, FeedBatch};
use basalt_replication::{RegionId, ShipBatch};
use basalt_storage::apply::last_applied_stamp;
use basalt_storage::apply::replication::{
    feed_trimmed_upto, heartbeat_after, next_batch, resync_batches, ResyncChunkLimits,
};
use basalt_storage::apply::topology::{agreement_summary, RegionEndpoint};
use basalt_storage::command::{Command, Op, RegionOp};
use basalt_storage::state::StoreError;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Replication;
use crate::api::Api;
use crate::config::RemoteRegion;
use basalt_raft::limits::PEER_CONNECTION_AGE_MAX;

use crate::limits::FEED_BATCH_BYTES_MAX;
use crate::limits::{
    FEED_ACK_TIMEOUT, FEED_BACKOFF_MAX, FEED_BATCH_ENTRIES_MAX, FEED_CLOCK_TICK_AFTER, FEED_CONNECT_TIMEOUT,
    FEED_DISAGREE_BACKOFF, FEED_HEARTBEAT_INTERVAL, FEED_LEARN_ACKS, FEED_TRIM_ENTRIES_MAX, FEED_WINDOW_BATCHES,
};

#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint} is not its region's leader")]
    NotLeader { endpoint: String },
    #[error("no answer from {endpoint} for {waited:?}")]
    Silent { endpoint: String, waited: Duration },
    #[error("stream to {endpoint} ended: {reason}")]
    Ended { endpoint: String, reason: String },
    #[error("{endpoint} refused a batch: {reason}")]
    Refused { endpoint: String, reason: String },
    #[error("reading the feed: {0}")]
    Store(#[from] StoreError),
    #[error("this node is no longer the leader")]
    LostLeadership,
    #[error("{endpoint} refused the stream: {reason}")]
    Disagrees { endpoint: String, reason: String },
    /// A re-sync sent to a peer listener outlived its connection (the listener renews them every
    /// [`PEER_CONNECTION_AGE_MAX`]): it starts again on the next stream, and is cut again while
    /// the state takes that long to cross.
    #[error(
        "a full re-sync to {endpoint} was cut after {after:?} ({cause}): the peer listener renews its connections every {PEER_CONNECTION_AGE_MAX:?}, so a state that takes longer to cross cannot re-sync there; name that region's nodes by their client addresses alone (CLIENT) until it has caught up"
    )]
    ResyncCut {
        endpoint: String,
        after: Duration,
        cause: String,
    },
    /// The remote node runs a build of another data format: retried (on the region's next node)
    /// only after [`FEED_DISAGREE_BACKOFF`].
    #[error("{endpoint} cannot take the stream: {reason}")]
    Incompatible { endpoint: String, reason: String },
}

/// Ships to `remote` whenever this node leads its region, until `stop`.
pub(super) async fn run(
    repl: std::sync::Arc<Replication>,
    api: Api,
    remote: RemoteRegion,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next_endpoint = 0usize;
    let mut backoff = Duration::from_millis(50);
    while !*stop.borrow() {
        if !api.raft.is_leader() {
            repl.update_outgoing(remote.id, |l| {
                l.connected = false;
                l.acked_upto = None;
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let endpoint = remote.endpoints[next_endpoint % remote.endpoints.len()].clone();
        let mut answered = false;
        let outcome = session(&repl, &api, &remote, &endpoint, &stop, &mut answered).await;
        if answered && matches!(outcome, Err(ShipError::Ended { .. } | ShipError::Silent { .. })) {
            // The link worked until the stream ended (the peer listener renews its connections
            // every PEER_CONNECTION_AGE_MAX, a leader changed): reopened at once. A refusal keeps
            // backing off.
            backoff = Duration::from_millis(50);
        }
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(ShipError::NotLeader { .. }) => {
                // Not a broken link: the region's leader is another node; try it at once.
                next_endpoint += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                if matches!(
                    e,
                    ShipError::Connect { .. } | ShipError::Silent { .. } | ShipError::Incompatible { .. }
                ) {
                    // A node down or a silent link (a partition?): another node may answer.
                    next_endpoint += 1;
                }
                tracing::debug!(region = %remote.name, error = %e, "feed stream ended");
                let alarm = match &e {
                    ShipError::LostLeadership => String::new(),
                    ShipError::Disagrees { reason, .. } => format!("topology disagrees: {reason}"),
                    ShipError::Incompatible { reason, .. } => format!("incompatible: {reason}"),
                    other => format!("unreachable: {other}"),
                };
                if let ShipError::Disagrees { reason, .. } | ShipError::Incompatible { reason, .. } = &e {
                    tracing::warn!(region = %remote.name, reason, "the remote region refuses this region's feed stream");
                    repl.update_outgoing(remote.id, |l| {
                        l.connected = false;
                        l.alarm = alarm.clone();
                    });
                    tokio::time::sleep(FEED_DISAGREE_BACKOFF).await;
                    continue;
                }
                repl.update_outgoing(remote.id, |l| {
                    l.connected = false;
                    l.last_error = e.to_string();
                    if !alarm.is_empty() && !l.alarm.starts_with("behind") {
                        l.alarm = alarm;
                    }
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
            }
        }
    }
}

fn batch_message(batch: &ShipBatch) -> FeedBatch {
    FeedBatch { batch: encode(batch) }
}

/// One stream to one node of the remote region, until it breaks or this node stops leading.
async fn session(
    repl: &Replication,
    api: &Api,
    remote: &RemoteRegion,
    endpoint: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
    answered: &mut bool,
) -> Result<(), ShipError> {
    let named = endpoint;
    let target = RegionEndpoint::parse(named).map_err(|reason| ShipError::Connect {
        endpoint: named.to_string(),
        reason,
    })?;
    // The feed goes to the node's peer listener when the topology names one, as a member's Raft
    // does: this node's peer certificate is its credential there, and no token is sent. Otherwise
    // to its client port, as a client with the root token (a region named by client addresses
    // only, as before peer listeners).
    // Never in plaintext to a peer listener while this node's client doors run TLS: the feed
    // would cross in the clear where the client port would have carried it under TLS.
    let peer = target
        .peer
        .filter(|_| api.peer_tls.is_some() || api.client_tls.is_none());
    if target.peer.is_some() && peer.is_none() {
        tracing::warn!(region = %remote.name, endpoint = named, "this node has no peer TLS but its client doors run TLS: shipping the feed to the client port, under TLS, not to the peer listener in plaintext");
    }
    let on_peer_listener = peer.is_some();
    let (endpoint, connector, credentials) = match peer {
        Some(peer) => (peer.to_string(), api.peer_connector(), None),
        None => (
            target.client.to_string(),
            api.credentials().connector().cloned(),
            Some(api.credentials()),
        ),
    };
    let endpoint = endpoint.as_str();
    let connect_error = |reason: String| ShipError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let channel = basalt_tls::connected_channel(
        tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(FEED_CONNECT_TIMEOUT)
            .tcp_nodelay(true),
        endpoint,
        connector.as_ref(),
        FEED_CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| connect_error(e.to_string()))?;
    let mut client = RegionFeedClient::new(channel)
        .max_decoding_message_size(crate::limits::FEED_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::limits::FEED_MESSAGE_BYTES_MAX);
    let source = repl.this_region();
    let (tx, rx) = mpsc::channel::<FeedBatch>(FEED_WINDOW_BATCHES + 1);
    // The opening heartbeat carries no frontier: what the remote region has is not known yet.
    let _ = tx.send(batch_message(&ShipBatch::heartbeat(source, 0))).await;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(credentials) = &credentials {
        credentials.sign(&mut request);
    }
    // The receiver refuses a stream of another data format before decoding a batch of it.
    basalt_codec::grpc::name_format(request.metadata_mut());
    if let Some(topology) = repl.topology() {
        let summary = agreement_summary(&topology);
        match summary.parse() {
            Ok(value) => {
                request.metadata_mut().insert(super::TOPOLOGY_HEADER, value);
            }
            Err(e) => tracing::error!(error = %e, summary, "topology summary is not a header value"),
        }
    }
    let mut acks = tokio::time::timeout(FEED_ACK_TIMEOUT, client.ship(request))
        .await
        .map_err(|_| ShipError::Silent {
            endpoint: endpoint.to_string(),
            waited: FEED_ACK_TIMEOUT,
        })?
        .map_err(|status| {
            let code = status
                .metadata()
                .get(basalt_client::ERROR_CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(basalt_client::ErrorCode::parse);
            match code {
                Some(basalt_client::ErrorCode::InvalidTopology | basalt_client::ErrorCode::UnknownRegion) => {
                    ShipError::Disagrees {
                        endpoint: endpoint.to_string(),
                        reason: status.message().to_string(),
                    }
                }
                // Another data format (the receiver names its own): only an operator can change
                // it. Anything else refused at open goes the way of a failed connection.
                _ if basalt_codec::grpc::names_a_format(status.metadata()) => ShipError::Incompatible {
                    endpoint: endpoint.to_string(),
                    reason: status.message().to_string(),
                },
                _ => connect_error(status.to_string()),
            }
        })?
        .into_inner();
    let first = next_ack(&mut acks, endpoint, FEED_ACK_TIMEOUT).await?;
    *answered = true;
    let mut acked = first.applied_upto;
    let mut sent = acked;
    let mut unanswered = 0usize;
    let mut last_sent = Instant::now();
    let mut last_answer = Instant::now();
    repl.update_outgoing(remote.id, |l| {
        l.connected = true;
        l.endpoint = endpoint.to_string();
        l.acked_upto = Some(acked);
        l.shipped_upto = sent;
        l.last_error.clear();
        // Whatever kept the link down is gone; being behind the retention is cleared by the
        // re-sync.
        if !l.alarm.starts_with("behind") {
            l.alarm.clear();
        }
    });
    tracing::info!(region = %remote.name, endpoint, watermark = acked, "shipping the feed");
    let mut applied = api.applied.clone();
    // A re-sync in flight: when it started and the position its last chunk moves the watermark to.
    let mut resync_since: Option<(Instant, u64)> = None;
    let shipped: Result<(), ShipError> = async {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if !api.raft.is_leader() {
                return Err(ShipError::LostLeadership);
            }
            if unanswered == 0 && acked < feed_trimmed_upto(&api.store)? {
                // The feed no longer holds what the remote region is missing: send all state instead.
                resync_since = Some((Instant::now(), 0));
                let (upto, chunks) = resync(repl, api, remote, &tx, endpoint).await?;
                resync_since = Some((resync_since.map_or_else(Instant::now, |(since, _)| since), upto));
                sent = upto;
                unanswered += chunks;
                last_sent = Instant::now();
                // Sending a large state takes a while, with no answer read meanwhile: the wait for
                // one starts now, or the link would be taken as silent and the re-sync begun again.
                last_answer = Instant::now();
            }
            if unanswered < FEED_WINDOW_BATCHES {
                // `None`: the feed was trimmed past what was sent; the re-sync above follows once every
                // batch in flight is answered.
                let batch = next_batch(
                    &api.store.view(),
                    source,
                    sent,
                    FEED_BATCH_ENTRIES_MAX,
                    FEED_BATCH_BYTES_MAX,
                )?
                .unwrap_or_else(|| ShipBatch::heartbeat(source, 0));
                if !batch.entries.is_empty() {
                    let last = batch.upto;
                    if tx.send(batch_message(&batch)).await.is_err() {
                        return Err(ShipError::Ended {
                            endpoint: endpoint.to_string(),
                            reason: "request stream closed".into(),
                        });
                    }
                    sent = last;
                    unanswered += 1;
                    last_sent = Instant::now();
                    repl.update_outgoing(remote.id, |l| l.shipped_upto = sent);
                    continue;
                }
                if last_sent.elapsed() >= FEED_HEARTBEAT_INTERVAL && unanswered == 0 {
                    // Merged after every batch sent before it: its frontier may count on them.
                    let _ = tx
                        .send(batch_message(&heartbeat_after(&api.store.view(), source, sent)?))
                        .await;
                    unanswered += 1;
                    last_sent = Instant::now();
                }
            }
            if unanswered > 0 && last_answer.elapsed() >= FEED_ACK_TIMEOUT {
                return Err(ShipError::Silent {
                    endpoint: endpoint.to_string(),
                    waited: last_answer.elapsed(),
                });
            }
            tokio::select! {
                ack = acks.next(), if unanswered > 0 => {
                    let ack = check_ack(ack, endpoint)?;
                    unanswered -= 1;
                    last_answer = Instant::now();
                    acked = acked.max(ack.applied_upto);
                    if resync_since.is_some_and(|(_, upto)| upto > 0 && acked >= upto) {
                        resync_since = None;
                    }
                    // The remote may have merged past what this session sent (an earlier session's
                    // batches committing late): ship on from there.
                    sent = sent.max(acked);
                    repl.update_outgoing(remote.id, |l| l.acked_upto = Some(acked));
                }
                _ = applied.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    .await;
    match (shipped, resync_since) {
        // The peer listener renews its connections every PEER_CONNECTION_AGE_MAX (plus a grace):
        // a re-sync that takes longer is cut every time and begun again. Said plainly, with the
        // way out.
        (Err(cause), Some((since, _))) if on_peer_listener && since.elapsed() >= PEER_CONNECTION_AGE_MAX => {
            Err(ShipError::ResyncCut {
                endpoint: endpoint.to_string(),
                after: since.elapsed(),
                cause: cause.to_string(),
            })
        }
        (shipped, _) => shipped,
    }
}

async fn next_ack(acks: &mut tonic::Streaming<FeedAck>, endpoint: &str, wait: Duration) -> Result<FeedAck, ShipError> {
    let ack = tokio::time::timeout(wait, acks.next())
        .await
        .map_err(|_| ShipError::Silent {
            endpoint: endpoint.to_string(),
            waited: wait,
        })?;
    check_ack(ack, endpoint)
}

fn check_ack(ack: Option<Result<FeedAck, tonic::Status>>, endpoint: &str) -> Result<FeedAck, ShipError> {
    let ended = |reason: String| ShipError::Ended {
        endpoint: endpoint.to_string(),
        reason,
    };
    let ack = match ack {
        None => return Err(ended("closed by the receiver".into())),
        Some(Err(status)) => return Err(ended(status.to_string())),
        Some(Ok(ack)) => ack,
    };
    if ack.not_leader {
        return Err(ShipError::NotLeader {
            endpoint: endpoint.to_string(),
        });
    }
    if !ack.error.is_empty() {
        return Err(ShipError::Refused {
            endpoint: endpoint.to_string(),
            reason: ack.error,
        });
    }
    Ok(ack)
}

/// Sends the whole replicated state, read from one consistent view, as re-sync chunks; the last
/// one moves the remote watermark to the feed position the view was taken at. Returns that
/// position and the number of chunks sent (each will be answered).
async fn resync(
    repl: &Replication,
    api: &Api,
    remote: &RemoteRegion,
    tx: &mpsc::Sender<FeedBatch>,
    endpoint: &str,
) -> Result<(u64, usize), ShipError> {
    tracing::warn!(region = %remote.name, "region is behind what the feed retains: re-syncing it in full");
    repl.update_outgoing(remote.id, |l| {
        l.resyncs += 1;
        l.alarm = "re-syncing in full: it fell behind the feed's retention".into();
    });
    let store = api.store.clone();
    let source = repl.this_region();
    let tx = tx.clone();
    let sent = tokio::task::spawn_blocking(move || -> Result<Option<(u64, usize)>, StoreError> {
        let limits = ResyncChunkLimits {
            bytes: FEED_BATCH_BYTES_MAX,
            effects: FEED_BATCH_ENTRIES_MAX * 8,
        };
        // The role read in the same view as the state it ships (whether homed rows go too).
        let view = store.view();
        let role = basalt_storage::apply::topology::region_role(&view)?;
        resync_batches(&view, source, role, limits, |batch| {
            tx.blocking_send(batch_message(&batch)).is_ok()
        })
    })
    .await
    .map_err(|e| ShipError::Ended {
        endpoint: endpoint.to_string(),
        reason: format!("re-sync task: {e}"),
    })??;
    sent.ok_or_else(|| ShipError::Ended {
        endpoint: endpoint.to_string(),
        reason: "request stream closed during re-sync".into(),
    })
}

/// Proposes a clock tick when nothing was applied for [`FEED_CLOCK_TICK_AFTER`]: the frontier shipped
/// to other regions is the last applied stamp, so an idle region would otherwise hold every other
/// region's tombstones forever.
async fn tick_clock_when_idle(api: &Api) {
    let last = match last_applied_stamp(&api.store) {
        Ok(last) => last,
        Err(e) => {
            tracing::warn!(error = %e, "reading the last applied stamp");
            return;
        }
    };
    if api.clock.wall_ms().saturating_sub(last.physical_ms()) < FEED_CLOCK_TICK_AFTER.as_millis() as u64 {
        return;
    }
    let command = Command {
        stamp: api.clock.now(),
        session: None,
        fence: None,
        op: Op::ClockTick,
    };
    if let Err(e) = api.raft.client_write(command).await {
        tracing::debug!(error = %e, "clock tick not proposed");
    }
}

/// What the trimmer forgets: the feed up to `target`; `behind` are the regions that lose entries
/// they have not acknowledged (they will be re-synced in full).
#[derive(Debug, PartialEq, Eq)]
struct TrimPlan {
    target: u64,
    behind: Vec<RegionId>,
}

/// The trim to propose at applied position `applied`, given each remote region of the topology
/// with its acknowledged watermark (`None`: not heard from since this node became leader, or no
/// link yet). Nothing while `learning` watermarks and one is unknown; else up to the lowest
/// watermark, but at least up to `retain` positions behind `applied`. Pure, so tested alone.
fn trim_plan(applied: u64, retain: u64, acked: &[(RegionId, Option<u64>)], learning: bool) -> Option<TrimPlan> {
    let unknown = acked.iter().any(|(_, a)| a.is_none());
    if unknown && learning {
        return None;
    }
    let floor = applied.saturating_sub(retain);
    let lowest = acked.iter().map(|(_, a)| a.unwrap_or(0)).min().unwrap_or(applied);
    if lowest >= floor {
        return Some(TrimPlan {
            target: lowest,
            behind: Vec::new(),
        });
    }
    Some(TrimPlan {
        target: floor,
        behind: acked
            .iter()
            .filter(|(_, a)| a.unwrap_or(0) < floor)
            .map(|(id, _)| *id)
            .collect(),
    })
}

/// While leader, every second: forgets feed entries every remote region has acknowledged; past
/// the retention bound, forgets them anyway (those regions get a full re-sync), so a region that
/// is down or partitioned never makes this one hold its feed forever.
pub(super) async fn trimmer(repl: std::sync::Arc<Replication>, api: Api, stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        if !api.raft.is_leader() {
            *super::locked(&repl.leader_since) = None;
            continue;
        }
        let leader_since = *super::locked(&repl.leader_since).get_or_insert_with(Instant::now);
        tick_clock_when_idle(&api).await;
        let applied = *api.applied.borrow();
        let retain = repl.config.feed_retain_entries;
        // Every remote region of the topology counts, with or without a link yet: one whose
        // shipper has not started has acknowledged nothing.
        let Some(topology) = repl.topology() else {
            continue;
        };
        let outgoing = repl.outgoing();
        let acked: Vec<(RegionId, Option<u64>)> = topology
            .remote_ids()
            .into_iter()
            .map(|id| (id, outgoing.get(&id).and_then(|l| l.acked_upto)))
            .collect();
        let Some(plan) = trim_plan(applied, retain, &acked, leader_since.elapsed() < FEED_LEARN_ACKS) else {
            continue;
        };
        for id in &plan.behind {
            repl.update_outgoing(*id, |l| {
                l.alarm = format!("behind the feed's retention ({retain} positions): it will be re-synced in full");
            });
            tracing::warn!(region = %repl.region_name(*id), floor = plan.target, "a region fell behind the feed's retention");
        }
        let target = plan.target;
        let trimmed = match feed_trimmed_upto(&api.store) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading the feed");
                continue;
            }
        };
        if target > trimmed {
            let command = Command {
                stamp: api.clock.now(),
                session: None,
                fence: None,
                op: Op::Region(RegionOp::TrimFeed {
                    upto: target,
                    limit: FEED_TRIM_ENTRIES_MAX,
                }),
            };
            if let Err(e) = api.raft.client_write(command).await {
                tracing::debug!(error = %e, "feed trim not proposed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_not_heard_from_holds_the_feed_while_watermarks_are_learned() {
        // A region just added (no link, no watermark yet) keeps the feed whole, as one whose
        // watermark this new leader has not heard yet does.
        assert_eq!(trim_plan(100, 1000, &[(2, Some(90)), (3, None)], true), None);
        // With no remote region, nobody needs the feed.
        assert_eq!(
            trim_plan(100, 1000, &[], true),
            Some(TrimPlan {
                target: 100,
                behind: vec![]
            })
        );
        assert_eq!(
            trim_plan(100, 1000, &[(2, Some(90)), (3, Some(40))], false),
            Some(TrimPlan {
                target: 40,
                behind: vec![]
            })
        );
        // Past the retention, the feed is trimmed anyway and the regions behind are named.
        assert_eq!(
            trim_plan(5000, 1000, &[(2, Some(4900)), (3, None)], false),
            Some(TrimPlan {
                target: 4000,
                behind: vec![3]
            })
        );
    }
}
