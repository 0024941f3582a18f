//! The client API (gRPC) over the local Raft node: one file per service.
//!
//! Every error leaves through [`status`], which attaches the stable code the SDK understands.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod auth;
pub mod cache;
mod cluster;
mod counter;
mod kv;
mod lease;
mod ledger;
mod merge;
pub mod node_calls;
mod pubsub;
mod queue;
mod rate;
pub mod read_index;
mod stream;
mod txn;

pub use merge::Merger;
pub use pubsub::Broker;

use crate::limits::{WAIT_MAX, WAIT_POLL};
use basalt_auth::AuthError;
use basalt_client::pb;
use basalt_client::{ErrorCode, ERROR_CODE_KEY, LEADER_KEY};
use basalt_raft::member_addr::MemberAddr;
use basalt_raft::{Raft, TypeConfig};
use basalt_storage::apply::validate_op;
use basalt_storage::command::{
    Command, CounterError, Expect, Fence, KvError, KvPart, LeaseError, Op, OpError, QueueError, RegionError, RegionOp,
    Response, Session, StreamError, TxnError,
};
use basalt_storage::hlc::Hlc;
use basalt_storage::state::rocks::RocksStore;
use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::ReadPolicy;
use tonic::Status;

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
    /// The outgoing Raft network's counters, for /metrics.
    pub network: Arc<basalt_raft::network::NetworkStats>,
    pub log_bounds: Arc<dyn Fn() -> (Option<u64>, Option<u64>) + Send + Sync>,
    /// The last applied log index, updated after each applied batch (see `StateMachine`).
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// This node's live pub/sub subscribers.
    pub broker: Arc<Broker>,
    /// Turns true when the node begins to stop: a watch then ends with `UNAVAILABLE`, so that
    /// its client resumes on another node at once, instead of holding the stop.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Cross-region replication, when this node's region is one of several.
    pub replication: Option<Arc<crate::replication::Replication>>,
    /// Concurrent KV writes waiting to leave merged into one entry.
    pub merger: Arc<Merger>,
    /// Held while a read's expiry tick ([`Api::settle_expiry`]) is on its way.
    pub expiry_tick: Arc<tokio::sync::Mutex<()>>,
    /// The read-index rounds linearizable reads share ([`Api::read_barrier`]).
    pub read_index: Arc<read_index::SharedRounds<ReadIndexOutcome>>,
    /// This node's cluster id, for status.
    pub cluster: Arc<basalt_raft::cluster_guard::ClusterGuard>,
    /// The peer listener this node was started with (`--peer-listen`), for status.
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Mutual TLS on the peer listener, when the node has it (for /metrics).
    pub peer_tls: Option<Arc<basalt_tls::NodeTls>>,
    /// TLS on the client doors (`[tls]`), when the node has it: also how it calls other nodes'
    /// client ports (see [`Api::credentials`]).
    pub client_tls: Option<Arc<basalt_tls::NodeTls>>,
    /// The connections its listeners hold against the descriptor plan (for /metrics).
    pub connection_budgets: crate::descriptors::ConnectionBudgets,
    /// Client authentication, when the node has a root token (`[auth]`).
    pub gate: Option<Arc<crate::access::Gate>>,
    /// How this node makes its own calls to the other members (relays, purge confirmations,
    /// cache counters): where its Raft reaches them.
    pub node_links: Arc<node_calls::NodeLinks>,
}

/// Refuses with `NOT_LEADER` (and the leader's address, when known) unless `raft` leads.
pub(crate) fn ensure_leader(raft: &Raft) -> Result<(), Status> {
    let metrics = metrics_now(raft);
    if metrics.current_leader == Some(metrics.id) {
        return Ok(());
    }
    let membership = metrics.membership_config.membership();
    let leader_node = metrics.current_leader.and_then(|id| membership.get_node(&id));
    Err(not_leader_status(metrics.current_leader, leader_node))
}

/// Whether `raft`, leading, has applied an entry of its own term (the blank entry a new leader
/// commits first): then it has applied every entry committed before, by any leader.
pub(crate) fn leader_caught_up(raft: &Raft) -> bool {
    use openraft::vote::RaftLeaderId;
    let metrics = metrics_now(raft);
    metrics
        .last_applied
        .as_ref()
        .is_some_and(|applied| applied.committed_leader_id().term() == metrics.current_term)
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

/// How one read-index round ended, for every read that shared it.
#[derive(Clone, Debug)]
pub enum ReadIndexOutcome {
    /// This node led when a quorum answered; a read is linearizable once the state machine has
    /// applied what the linearizer names (the commit index when the round started).
    Confirmed(openraft::raft::linearizable_read::Linearizer<TypeConfig>),
    NotLeader {
        leader_id: Option<u64>,
        leader_node: Option<openraft::BasicNode>,
    },
    Unavailable(String),
}

/// The read-index rounds of `raft` (openraft's `ReadIndex` policy: a quorum answers a heartbeat
/// sent after the round started; bounded by the leader lease, then `QuorumNotEnough`).
pub fn read_index_rounds(raft: Raft) -> Arc<read_index::SharedRounds<ReadIndexOutcome>> {
    read_index::SharedRounds::new(move || {
        let raft = raft.clone();
        Box::pin(async move {
            match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                Ok(linearizer) => ReadIndexOutcome::Confirmed(linearizer),
                Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(f))) => {
                    ReadIndexOutcome::NotLeader {
                        leader_id: f.leader_id,
                        leader_node: f.leader_node,
                    }
                }
                Err(e) => ReadIndexOutcome::Unavailable(e.to_string()),
            }
        })
    })
}

fn not_leader(forward: &ForwardToLeader<TypeConfig>) -> Status {
    not_leader_status(forward.leader_id, forward.leader_node.as_ref())
}

pub(crate) fn not_leader_status(leader_id: Option<u64>, leader_node: Option<&openraft::BasicNode>) -> Status {
    let mut s = status(ErrorCode::NotLeader, format!("not the leader; leader is {leader_id:?}"));
    if let Some(node) = leader_node {
        if let Ok(value) = MemberAddr::client_of(&node.addr).parse() {
            s.metadata_mut().insert(LEADER_KEY, value);
        }
    }
    s
}

pub(crate) fn op_error_status(e: &OpError) -> Status {
    status(op_error_code(e), e.to_string())
}

/// A refusal inside an answer (one write of a batch, one op of a transaction).
pub(crate) fn write_refusal(e: &OpError) -> pb::WriteError {
    pb::WriteError {
        code: op_error_code(e).as_str().to_string(),
        message: e.to_string(),
    }
}

/// The stable code a refusal travels with.
pub(crate) fn op_error_code(e: &OpError) -> ErrorCode {
    match e {
        OpError::EmptyKey => ErrorCode::EmptyKey,
        OpError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
        OpError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
        OpError::InvalidTtl { .. } => ErrorCode::InvalidTtl,
        OpError::Empty { .. } | OpError::TooLarge { .. } => ErrorCode::InvalidArgument,
        OpError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        OpError::EntryTooLarge { .. } => ErrorCode::TooLarge,
        OpError::OutOfRange { .. } => ErrorCode::OutOfRange,
        OpError::Lease(LeaseError::StaleFence { .. }) => ErrorCode::StaleFence,
        OpError::Lease(LeaseError::NotHeld { .. }) => ErrorCode::LeaseNotHeld,
        OpError::SessionExpired { .. } => ErrorCode::SessionExpired,
        OpError::CorruptValue { .. } => ErrorCode::CorruptValue,
        OpError::NotFound { .. } => ErrorCode::NotFound,
        OpError::Queue(QueueError::StaleReceipt { .. }) => ErrorCode::StaleReceipt,
        OpError::Queue(QueueError::BeingDeleted { .. }) => ErrorCode::QueueBeingDeleted,
        OpError::Queue(QueueError::IndexBuilding { .. }) => ErrorCode::QueueIndexBuilding,
        OpError::Queue(QueueError::DeadLetterInUse { .. }) => ErrorCode::QueueInUse,
        OpError::Stream(StreamError::OffsetOutOfRange { .. }) => ErrorCode::OffsetOutOfRange,
        OpError::Stream(StreamError::OutOfOrderSequence { .. }) => ErrorCode::OutOfOrderSequence,
        OpError::Stream(StreamError::IllegalGeneration { .. }) => ErrorCode::IllegalGeneration,
        OpError::Stream(StreamError::NotAssigned { .. }) => ErrorCode::NotAssigned,
        OpError::Stream(StreamError::TopicBeingDeleted { .. }) => ErrorCode::TopicBeingDeleted,
        OpError::Counter(CounterError::NotExpiring { .. }) => ErrorCode::CounterNotExpiring,
        OpError::Counter(CounterError::BoundOnExpiring { .. }) => ErrorCode::CounterBoundOnExpiring,
        // Only region-to-region feed batches can be refused this way (a misconfigured topology).
        OpError::Region(RegionError::OwnFeed { .. })
        | OpError::Region(RegionError::NotReplicating { .. })
        | OpError::Region(RegionError::RowsFromNonHome { .. })
        | OpError::Region(RegionError::NotHomedTable { .. })
        | OpError::Region(RegionError::NotMirrorRow { .. })
        | OpError::Stream(StreamError::MirrorReadOnly { .. })
        | OpError::Counter(CounterError::InvalidTransfer { .. }) => ErrorCode::InvalidArgument,
        // Reached only if a homed write bypassed forwarding: the caller should go to the home.
        OpError::Region(RegionError::NotHome { .. }) => ErrorCode::RegionUnavailable,
        OpError::Region(RegionError::InvalidTopology { .. }) => ErrorCode::InvalidTopology,
        OpError::Region(RegionError::UnknownRegion { .. }) => ErrorCode::UnknownRegion,
        OpError::Kv(KvError::DuplicateKey { .. }) => ErrorCode::InvalidArgument,
        OpError::Cache(_) => ErrorCode::InvalidArgument,
        OpError::Kv(KvError::OnlyInTxn { .. }) => ErrorCode::InvalidArgument,
        // A bad op or condition gets the code it would get alone (an unknown account: NOT_FOUND).
        OpError::Txn(TxnError::InvalidOp { reason, .. } | TxnError::InvalidCondition { reason, .. }) => {
            op_error_code(reason)
        }
        OpError::Txn(TxnError::TooLarge { .. } | TxnError::AnswerTooLarge { .. }) => ErrorCode::TooLarge,
        OpError::Txn(TxnError::TooMany { .. }) => ErrorCode::BatchTooLarge,
        OpError::Txn(TxnError::NotTransactional { .. } | TxnError::Repeated { .. }) => ErrorCode::InvalidArgument,
        OpError::Auth(
            AuthError::UnknownRole { .. } | AuthError::UnknownUser { .. } | AuthError::UnknownToken { .. },
        ) => ErrorCode::NotFound,
        OpError::Auth(
            AuthError::InvalidName { .. }
            | AuthError::ReservedName
            | AuthError::TooMany { .. }
            | AuthError::InvalidGrant { .. }
            | AuthError::RoleInUse { .. },
        ) => ErrorCode::InvalidArgument,
        // Only a leader builds merged entries; a client cannot send one.
        OpError::Kv(KvError::NotMergeable { .. }) => ErrorCode::Internal,
    }
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
pub(crate) fn unexpected_result(response: &Response) -> Status {
    status(ErrorCode::Internal, format!("unexpected apply result {response:?}"))
}

pub(crate) fn storage_status(e: basalt_storage::state::StoreError) -> Status {
    match e {
        // A follower replacing its state from a snapshot: retry, here or on another node.
        basalt_storage::state::StoreError::Installing => status(ErrorCode::Unavailable, e.to_string()),
        // A stored record that does not decode: the same code an apply gives for one.
        basalt_storage::state::StoreError::CorruptRecord { .. } => status(ErrorCode::CorruptValue, e.to_string()),
        e => status(ErrorCode::Internal, format!("storage: {e}")),
    }
}

/// The session and fence a request header carries.
fn header_of(header: Option<pb::RequestHeader>) -> Result<(Option<Session>, Option<Fence>), Status> {
    let Some(h) = header else { return Ok((None, None)) };
    let fence = match h.fence {
        None => None,
        Some(f) if f.lease.is_empty() => {
            return Err(status(ErrorCode::InvalidArgument, "fence.lease must not be empty"));
        }
        Some(f) => Some(Fence {
            lease: f.lease,
            token: f.token,
        }),
    };
    let client_id: [u8; 16] = h.client_id.as_slice().try_into().map_err(|_| {
        status(
            ErrorCode::InvalidArgument,
            format!("client_id must be 16 bytes, got {}", h.client_id.len()),
        )
    })?;
    if h.seq == 0 {
        return Err(status(ErrorCode::InvalidArgument, "seq must be positive"));
    }
    let session = Session {
        client_id: u128::from_be_bytes(client_id),
        seq: h.seq,
        first_incomplete_seq: h.first_incomplete_seq,
    };
    Ok((Some(session), fence))
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
    async fn write(&self, header: Option<pb::RequestHeader>, op: Op) -> Result<Response, Status> {
        let (session, fence) = header_of(header)?;
        self.propose(session, fence, op).await
    }

    /// [`Api::write`] with the header already taken apart.
    async fn propose(&self, session: Option<Session>, fence: Option<Fence>, op: Op) -> Result<Response, Status> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = async {
            validate_op(&op).map_err(|e| op_error_status(&e))?;
            if let Some(repl) = &self.replication {
                if repl.topology().is_none() && !matches!(op, Op::Region(RegionOp::Topology { .. })) {
                    // Applied now, the write would not go into the change feed: no region
                    // would ever receive it. Nothing was proposed; the SDK retries.
                    return Err(status(
                        ErrorCode::Unavailable,
                        "this region's topology is not committed yet (its first leader proposes it); retry",
                    ));
                }
            }
            let response = if fence.is_none() && self.merger.takes(&op) {
                merge::submit(self, KvPart { session, op }).await?
            } else {
                let command = Command {
                    stamp: self.clock.now(),
                    session,
                    fence,
                    op,
                };
                command.check_size().map_err(|e| op_error_status(&e))?;
                self.raft.client_write(command).await.map_err(write_error_status)?.data
            };
            match response {
                Response::Refused(e) | Response::GroupRefused(e) => Err(op_error_status(&e)),
                other => Ok(other),
            }
        }
        .await;
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The time, in ms, at which a read judges TTLs and lease expiries: the last applied stamp.
    /// It is the same on every node that has applied as far, it never goes back after a failover
    /// (a new leader has applied at least as far before it serves a linearizable read), and no
    /// node's clock reading enters it. See [`Api::settle_expiry`] for how it keeps up with time.
    fn read_time_ms(&self) -> Result<u64, Status> {
        Ok(basalt_storage::apply::last_applied_stamp(&self.store)
            .map_err(storage_status)?
            .physical_ms())
    }

    /// For a linearizable read that found something whose expiry lies after the read time
    /// ([`Api::read_time_ms`]) but at or before this node's clock: moves the applied time on
    /// through the log (an [`Op::ClockTick`]) and returns the new read time, at or past that
    /// expiry. The read is then done again and answers "expired": that expiry is in the log, so
    /// no later read, on any node and after any failover, finds the thing live again (a node whose
    /// clock is behind would otherwise bring it back). `None` when nothing lies in that window, or
    /// for a stale read, which judges at the time its replica has applied.
    async fn settle_expiry(
        &self,
        stale: bool,
        read_ms: u64,
        expiries: impl IntoIterator<Item = Option<u64>>,
    ) -> Result<Option<u64>, Status> {
        if stale {
            return Ok(None);
        }
        // A reading, not a stamp: a read has nothing to order.
        let clock_ms = self.clock.stamp_wall_ms();
        let due: Vec<u64> = expiries
            .into_iter()
            .flatten()
            .filter(|at| *at > read_ms && *at <= clock_ms)
            .collect();
        if due.is_empty() {
            return Ok(None);
        }
        // One tick at a time: reads that wait here find the applied time moved on by the tick
        // before them, and propose none of their own.
        let _one_at_a_time = self.expiry_tick.lock().await;
        let now_read_ms = self.read_time_ms()?;
        if due.iter().all(|at| *at <= now_read_ms) {
            return Ok(Some(now_read_ms));
        }
        let command = Command {
            stamp: self.clock.now(),
            session: None,
            fence: None,
            op: Op::ClockTick,
        };
        match self.raft.client_write(command).await {
            Ok(_) => self.read_time_ms().map(Some),
            // The read stays an answer as of the applied time, as every node would give it.
            Err(e) => {
                tracing::debug!(error = %e, "expiry tick not applied; answering at the applied time");
                Ok(None)
            }
        }
    }

    /// Waits until this node may serve a linearizable read (read index), unless `stale`: the
    /// next read-index round, shared with the reads that arrive while the current one is on its
    /// way (see [`read_index`]).
    async fn read_barrier(&self, stale: bool) -> Result<(), Status> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if stale {
            return Ok(());
        }
        match self.read_index.next().await {
            // The round fixed what must be applied first; each reader waits for that itself (as
            // long as its call may), so a slow apply holds no later round back.
            Some(ReadIndexOutcome::Confirmed(linearizer)) => match linearizer.await_ready(&self.raft).await {
                Ok(_) => Ok(()),
                Err(fatal) => Err(status(ErrorCode::Unavailable, fatal.to_string())),
            },
            Some(ReadIndexOutcome::NotLeader { leader_id, leader_node }) => {
                Err(not_leader_status(leader_id, leader_node.as_ref()))
            }
            Some(ReadIndexOutcome::Unavailable(message)) => Err(status(ErrorCode::Unavailable, message)),
            None => Err(status(ErrorCode::Unavailable, "the read-index round ended unanswered")),
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
                addr: MemberAddr::client_of(&node.addr),
                peer_addr: MemberAddr::parse(&node.addr)
                    .ok()
                    .and_then(|member| member.peer)
                    .unwrap_or_default(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|m| m.as_ref().map_or(0, |l| l.index)),
            })
            .collect()
    }

    /// Refuses with `NOT_LEADER` (and the leader's address, when known) unless this node leads.
    /// For admin checks that read the membership: a follower's copy may lag the leader's.
    fn ensure_leader(&self) -> Result<(), Status> {
        ensure_leader(&self.raft)
    }

    /// Waits until `ready` says yes, looking again after every applied batch (and every
    /// `WAIT_POLL`), for at most `wait`. Returns its last answer; `UNAVAILABLE` once the node
    /// begins to stop (a long-poll must not hold the stop: its client asks another node).
    async fn wait_until(
        &self,
        wait: Duration,
        mut ready: impl FnMut() -> Result<bool, Status>,
    ) -> Result<bool, Status> {
        let deadline = tokio::time::Instant::now() + wait.min(WAIT_MAX);
        let mut applied = self.applied.clone();
        let mut stopping = self.stopping.clone();
        let node_stopping = || status(ErrorCode::Unavailable, "the node is stopping");
        loop {
            applied.borrow_and_update();
            if ready()? {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let stopped = *stopping.borrow();
            if stopped {
                return Err(node_stopping());
            }
            tokio::select! {
                changed = tokio::time::timeout((deadline - now).min(WAIT_POLL), applied.changed()) => {
                    if let Ok(Err(_)) = changed {
                        // The state machine is gone with Raft: nothing more will be applied here.
                        return Err(node_stopping());
                    }
                }
                () = async {
                    let _ = stopping.wait_for(|stopping| *stopping).await;
                } => return Err(node_stopping()),
            }
        }
    }

    /// What this node's own calls to other nodes' client ports carry (the root token when it
    /// authenticates clients).
    /// How this node connects to other nodes' peer listeners (its own region's, for its own
    /// calls; other regions', for the feed): TLS showing its peer certificate when it has one.
    pub(crate) fn peer_connector(&self) -> Option<basalt_tls::Connector> {
        self.peer_tls.clone().map(basalt_tls::Connector::Node)
    }

    pub(crate) fn credentials(&self) -> crate::access::NodeCredentials {
        crate::access::NodeCredentials::new(self.gate.clone(), self.client_tls.clone())
    }

    fn check_key(key: &[u8]) -> Result<(), Status> {
        basalt_storage::apply::check_key(key).map_err(|e| op_error_status(&e))
    }
}
