//! The edge-cache service: purges through the region's log, confirmed on every node of the
//! region before they are answered; each node's edge counters, one node's or the whole
//! region's. See docs/data-types/edge-cache.md.

use std::sync::Arc;
use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::cache_server::Cache;
use basalt_client::ErrorCode;
use basalt_raft::member_addr::MemberAddr;
use basalt_storage::command::{CacheOp, Op, PurgeTarget, Response};
use futures::future::join_all;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{metrics_now, status, unexpected_result, Api};
use crate::edge::{purges, Edge};
use crate::limits::{
    PEER_CONNECT_TIMEOUT, PEER_REPLY_MARGIN, PEER_STATS_TIMEOUT, PURGE_CONFIRM_WAIT_DEFAULT, PURGE_CONFIRM_WAIT_MAX,
};

/// The `Cache` gRPC service of one node.
#[derive(Clone)]
pub struct CacheService {
    pub api: Api,
    /// This node's edge, when it serves one (`--edge-listen`).
    pub edge: Option<Arc<Edge>>,
}

/// The purge a request names; `INVALID_ARGUMENT` when it names none.
pub fn purge_target(request: &pb::CachePurgeRequest) -> Result<PurgeTarget, Status> {
    use pb::cache_purge_request::Target;
    match &request.target {
        Some(Target::Url(url)) => Ok(PurgeTarget::Url(url.clone())),
        Some(Target::Prefix(prefix)) => Ok(PurgeTarget::Prefix(prefix.clone())),
        Some(Target::Tag(tag)) => Ok(PurgeTarget::Tag(tag.clone())),
        Some(Target::Everything(true)) => Ok(PurgeTarget::Everything),
        Some(Target::Everything(false)) | None => Err(status(
            ErrorCode::InvalidArgument,
            "a purge names a url, a prefix, a tag, or everything",
        )),
    }
}

impl CacheService {
    /// Proposes the purge, then waits until every member of the region (voters and learners) has
    /// applied it to its edge, all within the request's wait from now (plus a reply margin);
    /// members that had not are answered as lagging. Must run on the leader (`NOT_LEADER`
    /// otherwise). Nodes outside the membership (removed but still running, or not yet added)
    /// get no purges: docs/data-types/edge-cache.md.
    pub async fn purge(&self, request: pb::CachePurgeRequest) -> Result<pb::CachePurgeResponse, Status> {
        let target = purge_target(&request)?;
        let wait = match request.wait_ms {
            0 => PURGE_CONFIRM_WAIT_DEFAULT,
            ms => Duration::from_millis(ms).min(PURGE_CONFIRM_WAIT_MAX),
        };
        // One deadline for the write and the confirmations, so the caller's own deadline (its
        // attempt timeout plus the wait) is not passed: a caller that gave up would retry, and
        // each retry is one more purge.
        let deadline = tokio::time::Instant::now() + wait;
        let seq = match self
            .api
            .propose(None, None, Op::Cache(CacheOp::Purge { target }))
            .await?
        {
            Response::CachePurged { seq } => seq,
            other => return Err(unexpected_result(&other)),
        };
        let this = metrics_now(&self.api.raft).id;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let confirmations = self.api.members().into_iter().map(|member| async move {
            let outcome = if member.id == this {
                Ok(self.local_progress(seq, remaining).await)
            } else {
                let addr = self.api.node_links.member_addr(&member);
                self.api
                    .node_links
                    .await_purge(&addr, seq, remaining, PEER_REPLY_MARGIN)
                    .await
                    .map(|reply| reply.applied)
                    .map_err(|e| peer_failure(&e))
            };
            (member, outcome)
        });
        let mut response = pb::CachePurgeResponse {
            seq,
            applied: Vec::new(),
            lagging: Vec::new(),
        };
        for (member, outcome) in join_all(confirmations).await {
            let reason = match outcome {
                Ok(applied) if applied >= seq => {
                    response.applied.push(member.id);
                    continue;
                }
                Ok(applied) => format!("its edge has applied purges up to {applied}, not yet {seq}"),
                Err(e) => e,
            };
            response.lagging.push(pb::NodeLag {
                node_id: member.id,
                addr: member.addr,
                reason,
            });
        }
        if !response.lagging.is_empty() {
            tracing::warn!(seq, lagging = ?response.lagging, "purge committed, but not every node has applied it yet");
        }
        Ok(response)
    }

    /// [`CacheService::purge`] from any node: a follower hands the purge to the leader it knows
    /// (for the HTTP endpoint; gRPC clients follow `NOT_LEADER` themselves).
    pub async fn purge_via_leader(&self, request: pb::CachePurgeRequest) -> Result<pb::CachePurgeResponse, Status> {
        purge_target(&request)?;
        let Err(not_leader) = self.api.ensure_leader() else {
            return self.purge(request).await;
        };
        let metrics = metrics_now(&self.api.raft);
        let leader = metrics.current_leader.and_then(|id| {
            let node = metrics.membership_config.membership().get_node(&id)?;
            Some(self.api.node_links.addr(id, &node.addr))
        });
        let Some(addr) = leader else {
            return Err(not_leader);
        };
        // The leader answers within the wait (at most the maximum) once it has the write.
        self.api
            .node_links
            .purge(
                &addr,
                request,
                PURGE_CONFIRM_WAIT_MAX + PEER_CONNECT_TIMEOUT + PEER_REPLY_MARGIN,
            )
            .await
    }

    /// How far this node has applied purges, after waiting for `seq` at most `wait`. A node
    /// without an edge stores nothing: it counts as having applied everything recorded.
    pub(super) async fn local_progress(&self, seq: u64, wait: Duration) -> u64 {
        match &self.edge {
            Some(edge) => purges::wait_applied(edge, seq, wait).await,
            None => u64::MAX,
        }
    }

    pub(super) fn local_stats(&self) -> pb::NodeCacheStats {
        let metrics = metrics_now(&self.api.raft);
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&metrics.id)
            .map(|n| MemberAddr::client_of(&n.addr))
            .unwrap_or_default();
        let mut stats = pb::NodeCacheStats {
            node_id: metrics.id,
            addr,
            ..Default::default()
        };
        if let Some(edge) = &self.edge {
            let counted = edge.stats.snapshot();
            let store = edge.store.stats();
            stats.edge = true;
            stats.hits = counted.hits;
            stats.misses = counted.misses;
            stats.stale = counted.stale;
            stats.revalidated = counted.revalidated;
            stats.bypass = counted.bypass;
            stats.origin_fetches = counted.origin_fetches;
            stats.origin_errors = counted.origin_errors;
            stats.objects = store.objects;
            stats.bytes = store.bytes;
            stats.evictions = store.evictions;
            stats.purges_applied = *edge.purges_applied.borrow();
        }
        stats
    }
}

/// Why a call to another node failed, for an operator.
fn peer_failure(e: &Status) -> String {
    match e.code() {
        tonic::Code::DeadlineExceeded => "did not answer in time".into(),
        tonic::Code::Unavailable => format!("not reached: {}", e.message()),
        tonic::Code::Unimplemented => {
            "its build does not take the nodes' calls on its peer listener (an earlier build?)".into()
        }
        code => format!("{code:?}: {}", e.message()),
    }
}

/// The edge counters of `member`, another node of the region; an entry naming the error when
/// it could not be asked.
async fn peer_stats(api: &Api, member: &pb::Member) -> pb::NodeCacheStats {
    let addr = api.node_links.member_addr(member);
    match api.node_links.cache_stats(&addr, PEER_STATS_TIMEOUT).await {
        Ok(stats) => stats,
        Err(e) => pb::NodeCacheStats {
            node_id: member.id,
            addr: member.addr.clone(),
            error: peer_failure(&e),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn purge(
        &self,
        request: Request<pb::CachePurgeRequest>,
    ) -> Result<GrpcResponse<pb::CachePurgeResponse>, Status> {
        CacheService::purge(self, request.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn stats(
        &self,
        request: Request<pb::CacheStatsRequest>,
    ) -> Result<GrpcResponse<pb::CacheStatsResponse>, Status> {
        let mut nodes = vec![self.local_stats()];
        if request.into_inner().all_nodes {
            let this = nodes[0].node_id;
            let others = self
                .api
                .members()
                .into_iter()
                .filter(|m| m.id != this)
                .collect::<Vec<_>>();
            nodes.extend(join_all(others.iter().map(|m| peer_stats(&self.api, m))).await);
            nodes.sort_by_key(|n| n.node_id);
        }
        Ok(GrpcResponse::new(pb::CacheStatsResponse { nodes }))
    }
}
