//! Receives other regions' feeds: each batch is proposed through this region's Raft (so every
//! replica merges it at the same log position) and answered with the new watermark once
//! committed. Batches are handled strictly in order: answering a later batch first could move the
//! watermark past an earlier one and skip it.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use basalt_client::ErrorCode;
use basalt_replication::feed::decode;
use basalt_replication::pb::region_feed_server::RegionFeed;
use basalt_replication::pb::{FeedAck, FeedBatch};
use basalt_replication::ShipBatch;
use basalt_storage::apply::replication::source_state;
use basalt_storage::apply::topology::{check_agreement, Disagreement};
use basalt_storage::command::{Command, Op, RegionOp, Response};
use basalt_storage::hlc::{wall_clock_ms, HlcStamp};
use futures::{FutureExt, Stream, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::Replication;
use crate::api::Api;
use crate::limits::{COALESCE_BYTES_MAX, COALESCE_ENTRIES_MAX, FRONTIER_STEP};

#[derive(Clone)]
pub struct FeedReceiver {
    pub api: Api,
    pub replication: Option<Arc<Replication>>,
}

fn ack_error(error: impl Into<String>) -> FeedAck {
    FeedAck {
        applied_upto: 0,
        not_leader: false,
        error: error.into(),
    }
}

fn not_leader() -> FeedAck {
    FeedAck {
        applied_upto: 0,
        not_leader: true,
        error: String::new(),
    }
}

impl FeedReceiver {
    /// Merges one (possibly coalesced) batch; the answer for it.
    async fn merge(&self, repl: &Replication, mut batch: ShipBatch) -> FeedAck {
        if !self.api.raft.is_leader() {
            return not_leader();
        }
        let clock = &self.api.clock;
        if let Err(ahead) = batch.bound_to(clock.ceiling().0) {
            // The source retries the batch after a pause, so it merges once this clock has
            // caught up with its stamps: a region whose clock is off is held back, not followed.
            let refused = clock.stats().refused_remote_batches.fetch_add(1, Ordering::Relaxed) + 1;
            let ahead_ms = HlcStamp(ahead).physical_ms().saturating_sub(clock.wall_ms());
            if refused.is_power_of_two() {
                tracing::warn!(
                    region = %repl.region_name(batch.source),
                    ahead_ms,
                    max_offset_ms = clock.max_offset_ms(),
                    refused,
                    "refusing a feed batch stamped ahead of this region's clock by more than the max offset"
                );
            }
            return ack_error(format!(
                "clock offset: an entry is stamped {ahead_ms} ms ahead of this region's clock (max offset {} ms)",
                clock.max_offset_ms()
            ));
        }
        if batch.entries.is_empty() && !batch.resync {
            // A heartbeat: the watermark is what is applied here, so no entry is needed, unless
            // the source's frontier moved on enough to be worth recording (tombstone collection
            // waits on it while the source writes nothing).
            match source_state(&self.api.store, batch.source) {
                Ok(state) if batch.frontier < state.frontier.saturating_add(FRONTIER_STEP) => {
                    return FeedAck {
                        applied_upto: state.applied_upto,
                        not_leader: false,
                        error: String::new(),
                    }
                }
                Ok(_) => {}
                Err(e) => return ack_error(format!("reading the watermark: {e}")),
            }
        }
        let stamps: Vec<u64> = if batch.resync {
            Vec::new()
        } else {
            batch.entries.iter().map(|e| e.stamp).collect()
        };
        let source = batch.source;
        let command = Command {
            stamp: self.api.clock.now(),
            session: None,
            fence: None,
            op: Op::Region(RegionOp::MergeFeed { batch }),
        };
        if let Err(e) = command.check_size() {
            // Coalescing stays far below this; a single batch this large the source must cut.
            return ack_error(e.to_string());
        }
        match self.api.raft.client_write(command).await {
            Ok(written) => match written.data {
                Response::ReplApplied { upto, .. } => {
                    let now = wall_clock_ms();
                    repl.record_lag(
                        source,
                        stamps
                            .into_iter()
                            .map(|s| now.saturating_sub(HlcStamp(s).physical_ms())),
                    );
                    FeedAck {
                        applied_upto: upto,
                        not_leader: false,
                        error: String::new(),
                    }
                }
                Response::Refused(e) => ack_error(e.to_string()),
                other => ack_error(format!("unexpected answer {other:?}")),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => not_leader(),
            Err(e) => ack_error(format!("raft: {e}")),
        }
    }
}

/// Whether a waiting batch of `more_bytes` may join a proposal of `entries` entries and `bytes`
/// bytes so far.
fn room_for(entries: usize, bytes: usize, more_bytes: usize) -> bool {
    entries < COALESCE_ENTRIES_MAX && bytes.saturating_add(more_bytes) <= COALESCE_BYTES_MAX
}

/// Appends `more` to `into` when both are ordinary batches from the same source.
fn coalesce(into: &mut ShipBatch, more: ShipBatch) -> Result<(), ShipBatch> {
    if into.resync || more.resync || into.source != more.source {
        return Err(more);
    }
    into.upto = into.upto.max(more.upto);
    into.frontier = into.frontier.max(more.frontier);
    into.entries.extend(more.entries);
    Ok(())
}

type AckStream = Pin<Box<dyn Stream<Item = Result<FeedAck, Status>> + Send>>;

#[tonic::async_trait]
impl RegionFeed for FeedReceiver {
    type ShipStream = AckStream;

    async fn ship(&self, request: Request<Streaming<FeedBatch>>) -> Result<GrpcResponse<AckStream>, Status> {
        let Some(repl) = self.replication.clone() else {
            return Err(Status::failed_precondition(
                "this node is not configured for regions (start it with --region)",
            ));
        };
        // A region of another data format would ship batches this build misreads.
        if let Err(mismatch) = basalt_codec::grpc::check_named_format(request.metadata()) {
            static REFUSED_FORMAT_STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let refused = REFUSED_FORMAT_STREAMS.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(%mismatch, refused, "refusing a feed stream from a region of another data format");
            }
            let mut refusal = Status::failed_precondition(format!(
                "the source region sends {mismatch}: the regions of a deployment must run builds of one data format"
            ));
            // Names this build's format, which is how the shipper tells this refusal from others.
            basalt_codec::grpc::name_format(refusal.metadata_mut());
            return Err(refusal);
        }
        // The source's id, home and escrow shares must fit this region's topology before
        // anything of it is merged. Checked by the leader (a follower answers "not the leader" to
        // the first batch, and the source tries another node): a follower behind on the
        // region's log could refuse a region its leader has added.
        // The opening leader's term (`None` from a build that does not name it).
        let leader_term: Option<u64> = request
            .metadata()
            .get(super::LEADER_TERM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut expected_source = None;
        if self.api.raft.is_leader() {
            let summary = request
                .metadata()
                .get(super::TOPOLOGY_HEADER)
                .map(|v| v.to_str().unwrap_or("(not ascii)"))
                .unwrap_or("(none)");
            let Some(topology) = repl.topology() else {
                return Err(crate::api::status(
                    ErrorCode::Unavailable,
                    "this region's topology is not committed yet",
                ));
            };
            match check_agreement(&topology, summary) {
                Ok(source) => expected_source = Some(source),
                Err(disagreement) => {
                    let code = match disagreement {
                        Disagreement::UnknownSource { .. } | Disagreement::Removed { .. } => ErrorCode::UnknownRegion,
                        _ => ErrorCode::InvalidTopology,
                    };
                    let refused = repl.refused_streams.fetch_add(1, Ordering::Relaxed) + 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%disagreement, refused, "refusing a feed stream: the regions' topologies disagree");
                    }
                    return Err(crate::api::status(code, disagreement.to_string()));
                }
            }
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let this = self.clone();
        tokio::spawn(async move {
            let mut pending: Option<(ShipBatch, usize)> = None;
            // This stream's number among its source's, once its first batch names the source.
            let mut stream_number: Option<(basalt_replication::RegionId, u64)> = None;
            loop {
                let (first, mut bytes) = match pending.take() {
                    Some(waiting) => waiting,
                    None => match incoming.next().await {
                        Some(Ok(message)) => match decode::<ShipBatch>("feed batch", &message.batch) {
                            Ok(b) => (b, message.batch.len()),
                            Err(e) => {
                                let _ = tx.send(Ok(ack_error(e.to_string()))).await;
                                return;
                            }
                        },
                        _ => return,
                    },
                };
                if expected_source.is_some_and(|source| source != first.source) {
                    let _ = tx
                        .send(Ok(ack_error(format!(
                            "a batch from region {} on a stream opened by region {}",
                            first.source,
                            expected_source.unwrap_or_default()
                        ))))
                        .await;
                    return;
                }
                let (source, number) = match stream_number {
                    Some(numbered) => numbered,
                    None => match repl.open_stream(first.source, leader_term) {
                        Some(number) => *stream_number.insert((first.source, number)),
                        None => {
                            let _ = tx
                                .send(Ok(ack_error(format!(
                                    "a leader of region {} of a later term than {} ships here: this node no longer leads it",
                                    first.source,
                                    leader_term.unwrap_or_default()
                                ))))
                                .await;
                            return;
                        }
                    },
                };
                if !repl.is_newest_stream(source, number) {
                    // A newer stream from the source replaced this one: what this one still
                    // carries was queued before, and must not merge after the newer one's.
                    let _ = tx
                        .send(Ok(ack_error(
                            "a newer feed stream from the same region replaced this one",
                        )))
                        .await;
                    return;
                }
                // Merge whatever else is already waiting into one proposal, answering each.
                let mut batch = first;
                let mut answers = 1usize;
                while batch.entries.len() < COALESCE_ENTRIES_MAX {
                    let Some(Some(Ok(message))) = incoming.next().now_or_never() else {
                        break;
                    };
                    let more_bytes = message.batch.len();
                    let more = match decode::<ShipBatch>("feed batch", &message.batch) {
                        Ok(more) => more,
                        Err(e) => {
                            let _ = tx.send(Ok(ack_error(e.to_string()))).await;
                            return;
                        }
                    };
                    if !room_for(batch.entries.len(), bytes, more_bytes) {
                        pending = Some((more, more_bytes));
                        break;
                    }
                    match coalesce(&mut batch, more) {
                        Ok(()) => {
                            answers += 1;
                            bytes += more_bytes;
                        }
                        Err(more) => {
                            pending = Some((more, more_bytes));
                            break;
                        }
                    }
                }
                let ack = this.merge(&repl, batch).await;
                let stop = ack.not_leader || !ack.error.is_empty();
                for _ in 0..answers {
                    if tx.send(Ok(ack.clone())).await.is_err() {
                        return;
                    }
                }
                if stop {
                    return;
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_batches_join_a_proposal_only_while_it_stays_inside_a_log_entry() {
        assert!(room_for(1, 0, 1 << 20));
        assert!(room_for(10, COALESCE_BYTES_MAX - 100, 100));
        assert!(!room_for(10, COALESCE_BYTES_MAX - 100, 101), "past the byte bound");
        assert!(!room_for(COALESCE_ENTRIES_MAX, 0, 1), "past the entry bound");
    }
}
