//! The edge-cache service: purges through the region's log, confirmed on every node of the
//! region before they are answered; each node's edge counters, one node's or the whole
//! region's. See docs/data-types/edge-cache.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::cache_client::CacheClient;
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
    /// Where to reach other nodes instead of their membership address (`peer_routes`: the
    /// fault harness's link proxies), as Raft reaches them.
    pub routes: Arc<BTreeMap<u64, String>>,
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
                await_peer(self.route(&member), seq, remaining, self.api.credentials()).await
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
        let leader_addr = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .and_then(|n| MemberAddr::parse(&n.addr).ok())
        });
        let (Some(leader), Some(member)) = (metrics.current_leader, leader_addr) else {
            return Err(not_leader);
        };
        let addr = self
            .client_route(leader, member.peer.is_some(), &member.client)
            .to_string();
        let credentials = self.api.credentials();
        let channel = credentials
            .channel(&addr, PEER_CONNECT_TIMEOUT)
            .map_err(|e| status(ErrorCode::Unavailable, e))?;
        let mut forwarded = Request::new(request);
        credentials.sign(&mut forwarded);
        // The leader answers within the wait (at most the maximum) once it has the write.
        forwarded.set_timeout(PURGE_CONFIRM_WAIT_MAX + PEER_CONNECT_TIMEOUT + PEER_REPLY_MARGIN);
        CacheClient::new(channel)
            .purge(forwarded)
            .await
            .map(tonic::Response::into_inner)
    }

    /// How far this node has applied purges, after waiting for `seq` at most `wait`. A node
    /// without an edge stores nothing: it counts as having applied everything recorded.
    async fn local_progress(&self, seq: u64, wait: Duration) -> u64 {
        match &self.edge {
            Some(edge) => purges::wait_applied(edge, seq, wait).await,
            None => u64::MAX,
        }
    }

    /// The address to reach `member` at.
    fn route<'a>(&'a self, member: &'a pb::Member) -> &'a str {
        self.client_route(member.id, !member.peer_addr.is_empty(), &member.addr)
    }

    /// Where to reach node `id`'s client API: its route when it has no peer listener (the routes
    /// then lead to its one port), its client address otherwise (the routes lead to its peer
    /// listener, which serves Raft only).
    fn client_route<'a>(&'a self, id: u64, has_peer_listener: bool, client: &'a str) -> &'a str {
        match has_peer_listener {
            true => client,
            false => self.routes.get(&id).map_or(client, String::as_str),
        }
    }

    fn local_stats(&self) -> pb::NodeCacheStats {
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

/// Asks the node at `addr` how far its edge has applied purges, waiting for `seq` at most `wait`
/// (it answers by then; its answer gets [`PEER_REPLY_MARGIN`] more to arrive).
async fn await_peer(
    addr: &str,
    seq: u64,
    wait: Duration,
    credentials: crate::access::NodeCredentials,
) -> Result<u64, String> {
    let channel = credentials.channel(addr, PEER_CONNECT_TIMEOUT)?;
    let mut request = Request::new(pb::AwaitPurgeRequest {
        seq,
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    });
    request.set_timeout(wait + PEER_REPLY_MARGIN);
    credentials.sign(&mut request);
    match CacheClient::new(channel).await_purge(request).await {
        Ok(reply) => Ok(reply.into_inner().applied),
        Err(e) => Err(peer_failure(&e)),
    }
}

/// Why a call to another node failed, for an operator.
fn peer_failure(e: &Status) -> String {
    match e.code() {
        tonic::Code::DeadlineExceeded => "did not answer in time".into(),
        tonic::Code::Unavailable => format!("not reached: {}", e.message()),
        tonic::Code::Unimplemented => "its build has no edge-cache service (an older build?)".into(),
        code => format!("{code:?}: {}", e.message()),
    }
}

async fn peer_stats(
    member: &pb::Member,
    addr: &str,
    credentials: crate::access::NodeCredentials,
) -> pb::NodeCacheStats {
    let unreachable = |error: String| pb::NodeCacheStats {
        node_id: member.id,
        addr: member.addr.clone(),
        error,
        ..Default::default()
    };
    let channel = match credentials.channel(addr, PEER_CONNECT_TIMEOUT) {
        Ok(channel) => channel,
        Err(e) => return unreachable(e),
    };
    let mut request = Request::new(pb::CacheStatsRequest { all_nodes: false });
    request.set_timeout(PEER_STATS_TIMEOUT);
    credentials.sign(&mut request);
    match CacheClient::new(channel).stats(request).await {
        Ok(reply) => match reply.into_inner().nodes.into_iter().next() {
            Some(stats) => stats,
            None => unreachable("answered no counters".into()),
        },
        Err(e) => unreachable(peer_failure(&e)),
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
            nodes.extend(
                join_all(
                    others
                        .iter()
                        .map(|m| peer_stats(m, self.route(m), self.api.credentials())),
                )
                .await,
            );
            nodes.sort_by_key(|n| n.node_id);
        }
        Ok(GrpcResponse::new(pb::CacheStatsResponse { nodes }))
    }

    async fn await_purge(
        &self,
        request: Request<pb::AwaitPurgeRequest>,
    ) -> Result<GrpcResponse<pb::AwaitPurgeResponse>, Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(request.wait_ms).min(PURGE_CONFIRM_WAIT_MAX);
        let applied = self.local_progress(request.seq, wait).await;
        Ok(GrpcResponse::new(pb::AwaitPurgeResponse {
            applied,
            edge: self.edge.is_some(),
        }))
    }
}
