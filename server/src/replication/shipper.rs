//! Ships this region's change feed to one remote region, and trims what every region has.
//!
//! One bidirectional gRPC stream per remote region, opened by this region's leader: batches go
//! out in feed order without waiting for each answer (up to [`FEED_WINDOW_BATCHES`] unanswered), and the
//! remote leader answers each with its watermark once the batch is committed there. A new stream
//! starts with an empty batch whose answer is the remote watermark, so shipping resumes exactly
//! where the remote region is, after a leader change on either side or a broken link: nothing is
//! lost (the feed keeps everything not acknowledged) and nothing is merged twice (the receiver
//! skips what is at or below its watermark). A full re-sync (the feed trimmed past what the remote
//! region has) is kept across streams and resumed by the next one (`resync.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use basalt_replication::feed::encode;
use basalt_replication::pb::region_feed_client::RegionFeedClient;
use basalt_replication::pb::{FeedAck, FeedBatch};
use basalt_replication::{RegionId, ShipBatch};
use basalt_storage::apply::last_applied_stamp;
use basalt_storage::apply::replication::{feed_trimmed_upto, heartbeat_after, next_batch};
use basalt_storage::apply::topology::{agreement_summary, RegionEndpoint};
use basalt_storage::command::{Command, Op, RegionOp};
use basalt_storage::state::StoreError;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::resync::{NextChunk, ResyncPump};
use super::Replication;
use crate::api::Api;
use crate::config::RemoteRegion;
use crate::limits::{
    FEED_ACK_TIMEOUT, FEED_BACKOFF_MAX, FEED_BATCH_ENTRIES_MAX, FEED_CLOCK_TICK_AFTER, FEED_CONNECT_TIMEOUT,
    FEED_DISAGREE_BACKOFF, FEED_HEARTBEAT_INTERVAL, FEED_LEARN_ACKS, FEED_TRIM_ENTRIES_MAX, FEED_WINDOW_BATCHES,
};
use crate::limits::{
    FEED_BATCH_BYTES_MAX, FEED_LINK_BYTES_PER_S_MIN, FEED_STREAM_HEALTHY_AFTER, RESYNC_POLL_MS, RESYNC_RESUME_WITHIN,
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
    /// A full re-sync could not go on (the next stream starts one anew).
    #[error("{0}")]
    Resync(#[from] super::resync::ResyncError),
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
    // Streams in a row whose node said it does not lead its region.
    let mut not_leaders = 0usize;
    // A full re-sync in progress, kept for the next stream to resume.
    let mut resync: Option<ResyncPump> = None;
    while !*stop.borrow() {
        if resync
            .as_ref()
            .is_some_and(|pump| pump.last_progress.elapsed() >= RESYNC_RESUME_WITHIN)
        {
            // Its view pins the state store's old versions: let go, the next one starts over.
            tracing::warn!(region = %remote.name, "the full re-sync made no progress in time: it will start over");
            resync = None;
        }
        if !api.raft.is_leader() {
            // Another leader re-syncs from its own view.
            resync = None;
            repl.update_outgoing(remote.id, |l| {
                l.connected = false;
                l.acked_upto = None;
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let endpoint = remote.endpoints[next_endpoint % remote.endpoints.len()].clone();
        let mut answered = None;
        let outcome = session(&repl, &api, &remote, &endpoint, &stop, &mut answered, &mut resync).await;
        let lasted = answered.is_some_and(|since: Instant| since.elapsed() >= FEED_STREAM_HEALTHY_AFTER);
        if lasted && matches!(outcome, Err(ShipError::Ended { .. } | ShipError::Silent { .. })) {
            // The link worked for a while, then the stream ended (the peer listener renews its
            // connections every PEER_CONNECTION_AGE_MAX, a leader changed): reopened at once. A
            // refusal, or a stream that breaks as soon as it opens, keeps backing off.
            backoff = Duration::from_millis(50);
        }
        if !matches!(outcome, Err(ShipError::NotLeader { .. })) {
            not_leaders = 0;
        }
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(ShipError::NotLeader { .. }) => {
                // Not a broken link: the region's leader is another node; try it at once, and
                // back off once every node said so (the region is electing one).
                next_endpoint += 1;
                not_leaders += 1;
                if not_leaders < remote.endpoints.len() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    not_leaders = 0;
                    repl.update_outgoing(remote.id, |l| {
                        l.connected = false;
                        l.last_error = "no node of the region says it leads it".into();
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
                }
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

pub(super) fn batch_message(batch: &ShipBatch) -> FeedBatch {
    FeedBatch { batch: encode(batch) }
}

/// Where the feed to `target` goes: its peer listener when the topology names one and this node
/// runs peer TLS (its peer certificate is then its credential there, and no token is sent, as
/// between members); otherwise its client port, as a client with the root token (a region named
/// by client addresses only, as before peer listeners; or nodes without peer TLS, whose peer
/// listeners serve no feed: a plaintext peer port, open to Raft, is not for other regions).
fn feed_route(target: &RegionEndpoint, peer_tls: bool) -> Option<std::net::SocketAddr> {
    target.peer.filter(|_| peer_tls)
}

/// Ends a session's request stream at its next message once dropped (see `session`).
struct EndsStreamOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for EndsStreamOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Records a message of `bytes` sent; the wait for an answer starts with the first in flight.
fn sent_one(in_flight: &mut VecDeque<usize>, last_answer: &mut Instant, bytes: usize) {
    if in_flight.is_empty() {
        *last_answer = Instant::now();
    }
    in_flight.push_back(bytes);
}

/// How long the answer to a message of `bytes`, the oldest in flight, may take before the link
/// is taken as silent: [`FEED_ACK_TIMEOUT`], and the time the message takes to cross a link of
/// [`FEED_LINK_BYTES_PER_S_MIN`] (a large batch on a slow WAN link is not a dead link).
fn answer_allowance(bytes: usize) -> Duration {
    FEED_ACK_TIMEOUT + Duration::from_millis((bytes as u64).saturating_mul(1000) / FEED_LINK_BYTES_PER_S_MIN)
}

/// The link's alarm while a full re-sync is in flight.
const RESYNC_ALARM: &str = "re-syncing in full: it fell behind the feed's retention";

/// One stream to one node of the remote region, until it breaks or this node stops leading. A
/// full re-sync in `resync` (begun here or by an earlier stream) goes on here.
async fn session(
    repl: &Replication,
    api: &Api,
    remote: &RemoteRegion,
    endpoint: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
    answered: &mut Option<Instant>,
    resync: &mut Option<ResyncPump>,
) -> Result<(), ShipError> {
    let named = endpoint;
    let target = RegionEndpoint::parse(named).map_err(|reason| ShipError::Connect {
        endpoint: named.to_string(),
        reason,
    })?;
    let (endpoint, connector, credentials) = match feed_route(&target, api.peer_tls.is_some()) {
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
    // What this session queued and had not handed to the connection when it ends is dropped,
    // not delivered behind a newer stream's messages (a re-sync begun anew, another leader's).
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ends_stream = EndsStreamOnDrop(ended.clone());
    let body = tokio_stream::StreamExt::take_while(ReceiverStream::new(rx), move |_| {
        !ended.load(std::sync::atomic::Ordering::Relaxed)
    });
    let mut request = tonic::Request::new(body);
    if let Some(credentials) = &credentials {
        credentials.sign(&mut request);
    }
    // The receiver refuses a stream of another data format before decoding a batch of it.
    basalt_codec::grpc::name_format(request.metadata_mut());
    // And one of a leadership older than a stream it has taken from this region. The term is
    // read with the role, from one snapshot: a node's term also grows while it is a candidate,
    // and a term above its leadership's would shut out its successor's streams.
    let metrics = crate::api::metrics_now(&api.raft);
    if metrics.state != openraft::ServerState::Leader || metrics.current_leader != Some(metrics.id) {
        return Err(ShipError::LostLeadership);
    }
    let term = metrics.current_term;
    request
        .metadata_mut()
        .insert(super::LEADER_TERM_HEADER, tonic::metadata::MetadataValue::from(term));
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
    *answered = Some(Instant::now());
    let mut acked = first.applied_upto;
    let mut sent = acked;
    // Bytes of each message sent on this stream and not answered yet, oldest first.
    let mut in_flight: VecDeque<usize> = VecDeque::new();
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
    if acked >= feed_trimmed_upto(&api.store)? {
        // Not behind the retention (a re-sync whose last answer was lost got it there).
        repl.update_outgoing(remote.id, |l| {
            if l.alarm == RESYNC_ALARM || l.alarm.starts_with("behind") {
                l.alarm.clear();
            }
        });
    }
    if resync.as_ref().is_some_and(|pump| !pump.resumable(term, acked)) {
        // Another leadership's, or the receiver's watermark moved (the last chunk merged with
        // its answer lost, or something else merged, or a restore): begin anew if still needed.
        tracing::info!(region = %remote.name, watermark = acked, "letting go of a full re-sync that cannot be resumed");
        *resync = None;
    }
    if let Some(pump) = resync.as_mut() {
        // A re-sync an earlier stream began: its unanswered chunks first, then on from there.
        tracing::info!(region = %remote.name, chunks = pump.in_flight(), "resuming a full re-sync");
        for chunk in pump.unanswered() {
            if tx.send(chunk.clone()).await.is_err() {
                return Err(ShipError::Ended {
                    endpoint: endpoint.to_string(),
                    reason: "request stream closed".into(),
                });
            }
            sent_one(&mut in_flight, &mut last_answer, chunk.batch.len());
        }
        repl.update_outgoing(remote.id, |l| l.alarm = RESYNC_ALARM.into());
    }
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if !api.raft.is_leader() {
            return Err(ShipError::LostLeadership);
        }
        if resync
            .as_ref()
            .is_some_and(|pump| crate::api::metrics_now(&api.raft).current_term != pump.term)
        {
            // Deposed and elected again meanwhile: another leader may have re-synced since.
            *resync = None;
            return Err(ShipError::LostLeadership);
        }
        if let Some(upto) = resync.as_ref().and_then(|pump| pump.finished(acked)) {
            *resync = None;
            sent = sent.max(upto);
            tracing::info!(region = %remote.name, watermark = upto, "full re-sync done");
            repl.update_outgoing(remote.id, |l| {
                l.shipped_upto = sent;
                // Caught up: neither re-syncing nor behind the retention any more.
                if l.alarm == RESYNC_ALARM || l.alarm.starts_with("behind") {
                    l.alarm.clear();
                }
            });
        }
        if resync.is_none() && in_flight.is_empty() && acked < feed_trimmed_upto(&api.store)? {
            // The feed no longer holds what the remote region is missing: send all state instead.
            tracing::warn!(region = %remote.name, "region is behind what the feed retains: re-syncing it in full");
            repl.update_outgoing(remote.id, |l| {
                l.resyncs += 1;
                l.alarm = RESYNC_ALARM.into();
            });
            // Under the leadership this stream ships for (its term, read with the role).
            *resync = Some(ResyncPump::start(api.store.clone(), source, term, acked));
        }
        if let Some(pump) = resync.as_mut() {
            // Only chunks go while a re-sync is in flight: answers are matched to them in order.
            while in_flight.len() < FEED_WINDOW_BATCHES {
                let chunk = match pump.next_chunk() {
                    Ok(NextChunk::Chunk(chunk)) => chunk,
                    Ok(NextChunk::NotReady) => break,
                    Err(e) => {
                        *resync = None;
                        return Err(ShipError::Resync(e));
                    }
                };
                let bytes = chunk.batch.len();
                if tx.send(chunk).await.is_err() {
                    return Err(ShipError::Ended {
                        endpoint: endpoint.to_string(),
                        reason: "request stream closed".into(),
                    });
                }
                sent_one(&mut in_flight, &mut last_answer, bytes);
                last_sent = Instant::now();
            }
        } else if in_flight.len() < FEED_WINDOW_BATCHES {
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
                let message = batch_message(&batch);
                let bytes = message.batch.len();
                if tx.send(message).await.is_err() {
                    return Err(ShipError::Ended {
                        endpoint: endpoint.to_string(),
                        reason: "request stream closed".into(),
                    });
                }
                sent = last;
                sent_one(&mut in_flight, &mut last_answer, bytes);
                last_sent = Instant::now();
                repl.update_outgoing(remote.id, |l| l.shipped_upto = sent);
                continue;
            }
            if last_sent.elapsed() >= FEED_HEARTBEAT_INTERVAL && in_flight.is_empty() {
                // Merged after every batch sent before it: its frontier may count on them.
                let message = batch_message(&heartbeat_after(&api.store.view(), source, sent)?);
                let bytes = message.batch.len();
                let _ = tx.send(message).await;
                sent_one(&mut in_flight, &mut last_answer, bytes);
                last_sent = Instant::now();
            }
        }
        if in_flight
            .front()
            .is_some_and(|oldest| last_answer.elapsed() >= answer_allowance(*oldest))
        {
            return Err(ShipError::Silent {
                endpoint: endpoint.to_string(),
                waited: last_answer.elapsed(),
            });
        }
        tokio::select! {
            ack = acks.next(), if !in_flight.is_empty() => {
                let ack = check_ack(ack, endpoint)?;
                in_flight.pop_front();
                last_answer = Instant::now();
                if let Some(pump) = resync.as_mut() {
                    pump.answered();
                }
                acked = acked.max(ack.applied_upto);
                // The remote may have merged past what this session sent (an earlier session's
                // batches committing late): ship on from there.
                sent = sent.max(acked);
                repl.update_outgoing(remote.id, |l| l.acked_upto = Some(acked));
            }
            changed = applied.changed() => if changed.is_err() {
                // Raft's state machine is gone: this node no longer leads anything.
                return Err(ShipError::LostLeadership);
            },
            // Also how a re-sync's next chunks are picked up when the reading task was behind.
            _ = tokio::time::sleep(Duration::from_millis(RESYNC_POLL_MS)) => {}
        }
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
    fn a_large_batch_on_a_slow_link_is_given_the_time_to_cross() {
        assert_eq!(answer_allowance(0), FEED_ACK_TIMEOUT);
        let largest = answer_allowance(FEED_BATCH_BYTES_MAX as usize);
        assert_eq!(
            largest,
            FEED_ACK_TIMEOUT + Duration::from_millis(FEED_BATCH_BYTES_MAX * 1000 / FEED_LINK_BYTES_PER_S_MIN)
        );
        assert!(largest > Duration::from_secs(10), "{largest:?}");
    }

    #[test]
    fn the_feed_goes_to_a_peer_listener_only_under_peer_tls() {
        let both = RegionEndpoint::parse("127.0.0.1:7001/127.0.0.1:2380").expect("endpoint");
        let client_only = RegionEndpoint::parse("127.0.0.1:7001").expect("endpoint");
        assert_eq!(feed_route(&both, true), both.peer);
        assert_eq!(feed_route(&both, false), None, "never in plaintext to a peer listener");
        assert_eq!(feed_route(&client_only, true), None);
    }

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
