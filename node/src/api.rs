//! The client API (gRPC): KV, counters and cluster administration, over the local Raft node.
//!
//! Every error leaves through [`status`], which attaches the stable code the SDK understands.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use basalt_client::pb;
use basalt_client::pb::cluster_server::Cluster;
use basalt_client::pb::counter_server::Counter;
use basalt_client::pb::kv_server::Kv;
use basalt_client::{ErrorCode, ERROR_CODE_KEY, LEADER_KEY};
use basalt_raft::{Raft, TypeConfig};
use basalt_storage::apply::validate_op;
use basalt_storage::command::{Command, Expect, Op, OpError, Response, Session};
use basalt_storage::hlc::Hlc;
use basalt_storage::limits::SCAN_LIMIT_MAX;
use basalt_storage::state::rocks::RocksStore;
use basalt_storage::state::{KeyRange, KvRecord, StoreRead, Table};
use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState};
use tonic::{Request, Response as GrpcResponse, Status};

/// Request counters exposed on /metrics.
#[derive(Default)]
pub struct ApiCounters {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Clone)]
pub struct Api {
    pub raft: Raft,
    pub store: RocksStore,
    pub clock: Arc<Hlc>,
    pub counters: Arc<ApiCounters>,
    pub log_bounds: Arc<dyn Fn() -> (Option<u64>, Option<u64>) + Send + Sync>,
}

/// A copy of the node's current Raft metrics.
pub fn metrics_now(raft: &Raft) -> openraft::RaftMetrics<TypeConfig> {
    use openraft::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}

/// The one place an error becomes a gRPC status.
pub fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    let mut status = Status::new(code.grpc_code(), message.into());
    status
        .metadata_mut()
        .insert(ERROR_CODE_KEY, code.as_str().parse().expect("codes are ascii"));
    status
}

fn not_leader(forward: &ForwardToLeader<TypeConfig>) -> Status {
    let mut s = status(
        ErrorCode::NotLeader,
        format!("not the leader; leader is {:?}", forward.leader_id),
    );
    if let Some(node) = &forward.leader_node {
        if let Ok(value) = node.addr.parse() {
            s.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    s
}

fn op_error_status(e: &OpError) -> Status {
    let code = match e {
        OpError::EmptyKey => ErrorCode::EmptyKey,
        OpError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
        OpError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
        OpError::InvalidTtl { .. } => ErrorCode::InvalidTtl,
        OpError::CounterOverflow { .. } => ErrorCode::CounterOverflow,
        OpError::SessionExpired { .. } => ErrorCode::SessionExpired,
        OpError::CorruptValue { .. } => ErrorCode::CorruptValue,
    };
    status(code, e.to_string())
}

fn write_error_status(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        // Transient: a previous change, or a new leader's first entry, is not committed yet.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            c @ (ChangeMembershipError::InProgress(_) | ChangeMembershipError::UncommittedLeaderLog(_)),
        )) => status(ErrorCode::Unavailable, c.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            status(ErrorCode::MembershipRejected, c.to_string())
        }
        // The entry may or may not commit: the client retries with the same (client_id, seq).
        other => status(ErrorCode::Unavailable, other.to_string()),
    }
}

/// A response of the wrong kind for the request: a programming error between API and apply.
fn unexpected_result(response: &Response) -> Status {
    status(ErrorCode::Internal, format!("unexpected apply result {response:?}"))
}

fn storage_status(e: impl std::fmt::Display) -> Status {
    status(ErrorCode::Internal, format!("storage: {e}"))
}

fn session_of(header: Option<pb::RequestHeader>) -> Result<Option<Session>, Status> {
    let Some(h) = header else { return Ok(None) };
    let client_id: [u8; 16] = h.client_id.as_slice().try_into().map_err(|_| {
        status(
            ErrorCode::InvalidArgument,
            format!("client_id must be 16 bytes, got {}", h.client_id.len()),
        )
    })?;
    if h.seq == 0 {
        return Err(status(ErrorCode::InvalidArgument, "seq must be positive"));
    }
    Ok(Some(Session {
        client_id: u128::from_be_bytes(client_id),
        seq: h.seq,
        first_incomplete_seq: h.first_incomplete_seq,
    }))
}

fn expect_of(expect: Option<pb::Expect>) -> Result<Option<Expect>, Status> {
    match expect.and_then(|e| e.condition) {
        None => Ok(None),
        Some(pb::expect::Condition::Absent(true)) => Ok(Some(Expect::Absent)),
        Some(pb::expect::Condition::Absent(false)) => Err(status(
            ErrorCode::InvalidArgument,
            "expect.absent must be true when set",
        )),
        Some(pb::expect::Condition::Revision(r)) => Ok(Some(Expect::Revision(r))),
    }
}

impl Api {
    /// Proposes `op` through Raft and returns the applied response. Bad input is refused before
    /// proposing, so it never reaches the log.
    async fn write(&self, session: Option<Session>, op: Op) -> Result<Response, Status> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = async {
            validate_op(&op).map_err(|e| op_error_status(&e))?;
            let command = Command {
                stamp: self.clock.now(),
                session,
                op,
            };
            let reply = self.raft.client_write(command).await.map_err(write_error_status)?;
            match reply.data {
                Response::Refused(e) => Err(op_error_status(&e)),
                other => Ok(other),
            }
        }
        .await;
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Waits until this node may serve a linearizable read (read index), unless `stale`.
    async fn read_barrier(&self, stale: bool) -> Result<(), Status> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if stale {
            return Ok(());
        }
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(f))) => Err(not_leader(&f)),
            Err(e) => Err(status(ErrorCode::Unavailable, e.to_string())),
        }
    }

    fn members(&self) -> Vec<pb::Member> {
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|m| m.as_ref().map_or(0, |l| l.index)),
            })
            .collect()
    }

    fn check_key(key: &[u8]) -> Result<(), Status> {
        basalt_storage::apply::check_key(key).map_err(|e| op_error_status(&e))
    }
}

#[tonic::async_trait]
impl Kv for Api {
    async fn put(&self, request: Request<pb::KvPutRequest>) -> Result<GrpcResponse<pb::KvPutResponse>, Status> {
        let r = request.into_inner();
        let op = Op::KvPut {
            key: r.key,
            value: r.value,
            ttl_ms: (r.ttl_ms > 0).then_some(r.ttl_ms),
            expect: expect_of(r.expect)?,
        };
        let reply = match self.write(session_of(r.header)?, op).await? {
            Response::KvPut {
                revision,
                prev_revision,
            } => pb::KvPutResponse {
                succeeded: true,
                revision,
                prev_revision,
                current_revision: None,
            },
            Response::KvConditionFailed { current } => pb::KvPutResponse {
                current_revision: current,
                ..Default::default()
            },
            other => return Err(unexpected_result(&other)),
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn get(&self, request: Request<pb::KvGetRequest>) -> Result<GrpcResponse<pb::KvGetResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.key)?;
        self.read_barrier(r.stale).await?;
        let now_ms = self.clock.now().physical_ms();
        let record = match self.store.get(Table::Kv, &r.key).map_err(storage_status)? {
            None => None,
            Some(bytes) => Some(KvRecord::decode(&bytes).map_err(|e| status(ErrorCode::CorruptValue, e.to_string()))?),
        };
        let reply = match record.filter(|rec| rec.is_live_at(now_ms)) {
            None => pb::KvGetResponse::default(),
            Some(rec) => pb::KvGetResponse {
                found: true,
                value: rec.value,
                create_revision: rec.create_revision,
                mod_revision: rec.mod_revision,
                version: rec.version,
                expires_at_ms: rec.expires_at_ms.unwrap_or(0),
            },
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn delete(
        &self,
        request: Request<pb::KvDeleteRequest>,
    ) -> Result<GrpcResponse<pb::KvDeleteResponse>, Status> {
        let r = request.into_inner();
        let op = Op::KvDelete {
            key: r.key,
            expect: expect_of(r.expect)?,
        };
        let reply = match self.write(session_of(r.header)?, op).await? {
            Response::KvDelete { revision, deleted } => pb::KvDeleteResponse {
                succeeded: true,
                deleted,
                revision,
                current_revision: None,
            },
            Response::KvConditionFailed { current } => pb::KvDeleteResponse {
                current_revision: current,
                ..Default::default()
            },
            other => return Err(unexpected_result(&other)),
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn scan(&self, request: Request<pb::KvScanRequest>) -> Result<GrpcResponse<pb::KvScanResponse>, Status> {
        let r = request.into_inner();
        if r.limit > SCAN_LIMIT_MAX {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("limit {} exceeds {SCAN_LIMIT_MAX}", r.limit),
            ));
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit } as usize;
        self.read_barrier(r.stale).await?;
        let now_ms = self.clock.now().physical_ms();
        let mut from = if r.start_after.is_empty() {
            r.prefix.clone()
        } else {
            r.start_after.clone()
        };
        let mut items = Vec::new();
        let mut more = false;
        'pages: loop {
            let range = KeyRange::prefix_from(&r.prefix, from.clone());
            let page = self.store.scan(Table::Kv, &range, limit + 1).map_err(storage_status)?;
            let page_len = page.len();
            for (key, bytes) in page {
                if !key.starts_with(&r.prefix) {
                    break 'pages;
                }
                if key == r.start_after {
                    continue;
                }
                let rec = KvRecord::decode(&bytes).map_err(|e| status(ErrorCode::CorruptValue, e.to_string()))?;
                if !rec.is_live_at(now_ms) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'pages;
                }
                from = key.clone();
                items.push(pb::KeyValue {
                    key,
                    value: rec.value,
                    mod_revision: rec.mod_revision,
                });
            }
            if page_len <= limit {
                break;
            }
            from.push(0);
        }
        Ok(GrpcResponse::new(pb::KvScanResponse { items, more }))
    }
}

#[tonic::async_trait]
impl Counter for Api {
    async fn incr(
        &self,
        request: Request<pb::CounterIncrRequest>,
    ) -> Result<GrpcResponse<pb::CounterResponse>, Status> {
        let r = request.into_inner();
        match self
            .write(
                session_of(r.header)?,
                Op::CounterIncr {
                    key: r.key,
                    delta: r.delta,
                },
            )
            .await?
        {
            Response::Counter { value } => Ok(GrpcResponse::new(pb::CounterResponse { value })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn get(&self, request: Request<pb::CounterGetRequest>) -> Result<GrpcResponse<pb::CounterResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.key)?;
        self.read_barrier(r.stale).await?;
        let value = match self.store.get(Table::Counter, &r.key).map_err(storage_status)? {
            None => 0,
            Some(bytes) => i64::from_le_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| status(ErrorCode::CorruptValue, "counter is not 8 bytes"))?,
            ),
        };
        Ok(GrpcResponse::new(pb::CounterResponse { value }))
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        let leader_addr = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let addr = membership
            .get_node(&metrics.id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let state = match metrics.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        let (first_log_index, _) = (self.log_bounds)();
        Ok(GrpcResponse::new(pb::StatusResponse {
            node_id: metrics.id,
            addr,
            state: state.to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr,
            members: self.members(),
            first_log_index,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.as_ref().map(|l| l.index),
            snapshot_index: metrics.snapshot.as_ref().map(|l| l.index),
            purged_index: metrics.purged.as_ref().map(|l| l.index),
        }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let r = request.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("addr {:?} is not host:port", r.addr),
            ));
        }
        self.raft
            .add_learner(r.id, BasicNode { addr: r.addr }, true)
            .await
            .map_err(write_error_status)?;
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        let metrics = metrics_now(&self.raft);
        if metrics.membership_config.membership().get_node(&id).is_none() {
            return Err(status(
                ErrorCode::MembershipRejected,
                format!("node {id} is not a member; add it first"),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error_status)?;
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(status(
                ErrorCode::MembershipRejected,
                format!("node {id} is not a member"),
            ));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error_status)?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error_status)?;
        }
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }
}
