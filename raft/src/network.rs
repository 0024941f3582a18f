//! The Raft network over tonic gRPC: [`NetworkFactory`] (client side) and [`RaftGrpcService`]
//! (server side), carrying openraft messages encoded by basalt-codec, each tagged with the data format.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::cluster_guard::{ClusterGuard, Side};
use crate::member_addr::MemberAddr;
use crate::pb::raft_service_client::RaftServiceClient;
use crate::pb::raft_service_server::{RaftService, RaftServiceServer};
use crate::pb::{RaftMessage, SnapshotChunk};
use crate::state_machine::{Snapshot, SnapshotPack};
use crate::{decode, encode, LogId, NodeId, Raft, SnapshotMeta, TypeConfig, Vote};
use basalt_storage::cluster_id::ClusterId;
use basalt_storage::hlc::{Hlc, PeerCheck};
use basalt_tls::NodeTls;

use crate::limits::{
    CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, RAFT_MESSAGE_BYTES_MAX, REOPEN_PAUSE_MAX, RPC_DEADLINE_MIN,
    SNAPSHOT_CHUNK_BYTES,
};

/// Creates one lazily connected gRPC channel per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    /// Addresses that replace a target's membership address (a link proxy in between).
    routes: Arc<BTreeMap<NodeId, String>>,
    stats: Arc<NetworkStats>,
    /// Every message carries this clock's wall-clock reading, for the receiver's offset check.
    clock: Arc<Hlc>,
    /// Every message names this node's cluster id; every reply's is checked.
    cluster: Arc<ClusterGuard>,
    /// Mutual TLS to the peers, when the node has it.
    tls: Option<Arc<NodeTls>>,
}

/// What the outgoing side of the Raft network counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Replication streams that failed to open (the target down or unreachable).
    pub stream_open_failures: AtomicU64,
    /// Replication streams opened (one per stretch of replication to a target, not per
    /// heartbeat: a heartbeat goes as one unary append).
    pub streams_opened: AtomicU64,
    /// Heartbeats (appends without entries, sent unary) that failed: the target down,
    /// unreachable or refusing.
    pub heartbeat_failures: AtomicU64,
}

impl NetworkFactory {
    pub fn new(
        routes: BTreeMap<NodeId, String>,
        clock: Arc<Hlc>,
        cluster: Arc<ClusterGuard>,
        tls: Option<Arc<NodeTls>>,
    ) -> NetworkFactory {
        NetworkFactory {
            routes: Arc::new(routes),
            stats: Arc::default(),
            clock,
            cluster,
            tls,
        }
    }

    pub fn stats(&self) -> Arc<NetworkStats> {
        self.stats.clone()
    }
}

#[derive(Clone, Copy)]
enum Unary {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

pub struct NetworkConnection {
    target: NodeId,
    clock: Arc<Hlc>,
    cluster: Arc<ClusterGuard>,
    tls: Option<Arc<NodeTls>>,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
    /// Replication streams to this target that failed to open, in a row.
    stream_failures: u32,
    stats: Arc<NetworkStats>,
}

/// The pause before reopening a replication stream after `failures` failed opens in a row.
///
/// openraft applies its backoff while it pulls appends from the request stream, but only after
/// errors it ranks as the peer being unreachable: a stream refused for another reason (a clock
/// or cluster check) is retried at once, and while a peer is down, the leader could spin on
/// reconnects (tens of thousands a second, each logged), stealing CPU from the cluster that is
/// still serving. Doubling from 5 ms keeps the first retries quick (a restarted peer is caught up
/// at once) and bounds the spin; openraft's own backoff, when it applies, comes on top.
pub(crate) fn reopen_pause(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => (Duration::from_millis(5) * 2u32.saturating_pow(n - 1)).min(REOPEN_PAUSE_MAX),
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        // The peer listener's address when the member has one: Raft never goes to a client port
        // of a node that has a peer port.
        let addr = match self.routes.get(&target) {
            Some(route) => route.clone(),
            None => match MemberAddr::parse(&node.addr) {
                Ok(member) => member.raft().to_string(),
                // Dialing it fails, and the failure names the address.
                Err(_) => node.addr.clone(),
            },
        };
        NetworkConnection {
            target,
            clock: self.clock.clone(),
            cluster: self.cluster.clone(),
            tls: self.tls.clone(),
            client: None,
            addr,
            stream_failures: 0,
            stats: self.stats.clone(),
        }
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn network_error(e: impl std::error::Error + 'static) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

fn status_error(status: Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => unreachable(status),
        _ => network_error(status),
    }
}

impl NetworkConnection {
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(unreachable)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL);
        // With TLS, each (re)connection runs its own handshake with the files as they are then,
        // so a certificate reloaded since is used from the next connection on.
        let connector = self.tls.clone().map(basalt_tls::Connector::Node);
        let channel = basalt_tls::lazy_channel(endpoint, &self.addr, connector.as_ref(), CONNECT_TIMEOUT);
        let client = RaftServiceClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// One request-response RPC: encode, send with the RPC deadline, decode.
    async fn unary<Req, Resp>(
        &mut self,
        kind: Unary,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let mut client = self.client()?;
        let request = self.request(message(&self.clock, encode(rpc)), option);
        let reply = match kind {
            Unary::Append => client.append(request).await,
            Unary::Vote => client.vote(request).await,
            Unary::PreVote => client.pre_vote(request).await,
            Unary::TransferLeader => client.transfer_leader(request).await,
        };
        let reply = self.check_reply(reply)?.into_inner();
        self.clock.record_peer_wall(self.target, reply.sender_wall_ms);
        decode(&reply.data).map_err(network_error)
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> Request<T> {
        let mut request = self.named(message);
        request.set_timeout(option.hard_ttl().max(RPC_DEADLINE_MIN));
        request
    }

    /// A request naming this build's data format and this node's cluster id.
    fn named<T>(&self, message: T) -> Request<T> {
        let mut request = with_data_format(Request::new(message));
        self.cluster.name(request.metadata_mut());
        request
    }

    /// Checks the cluster id a reply (or a refusal) names: a peer of another cluster is refused
    /// here too, so this node logs it and openraft sees a network error.
    fn check_reply<T>(
        &self,
        reply: Result<tonic::Response<T>, Status>,
    ) -> Result<tonic::Response<T>, RPCError<TypeConfig>> {
        let metadata = match &reply {
            Ok(response) => response.metadata(),
            Err(status) => status.metadata(),
        };
        // A reply is only checked: a node takes an id from a leader's append, never from a reply.
        if let Err(refusal) = self.cluster.check(metadata, Side::Reply, &self.addr) {
            return Err(network_error(refusal));
        }
        reply.map_err(status_error)
    }
}

/// What an append covers, as openraft judges its answer: the log id it follows, and the last
/// it appends (that same id when it carries no entries, as a heartbeat).
fn appended_range(request: &AppendEntriesRequest<TypeConfig>) -> (Option<LogId>, Option<LogId>) {
    let prev = request.prev_log_id;
    let last = request.entries.last().map(|entry| entry.log_id).or(prev);
    (prev, last)
}

impl NetworkConnection {
    /// One append without entries (a heartbeat, or a commit index) as a unary call, answered as
    /// openraft's own sequential network answers it. A failure is counted: while a peer is down,
    /// the heartbeats to it fail (a caught-up peer has no stream to reopen).
    async fn heartbeat(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        let (prev, last) = appended_range(request);
        match self
            .unary::<_, AppendEntriesResponse<TypeConfig>>(Unary::Append, request, option)
            .await
        {
            // Nothing can conflict with an empty log: a peer that says so is not believed (and
            // openraft would take the conflict point from `prev`).
            Ok(AppendEntriesResponse::Conflict) if prev.is_none() => {
                self.stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                Err(network_error(std::io::Error::other(format!(
                    "node {} answered a conflict with an empty log",
                    self.target
                ))))
            }
            Ok(reply) => {
                // The peer answers: a stream to it may open again without a pause.
                self.stream_failures = 0;
                Ok(reply.into_stream_result(prev, last))
            }
            Err(e) => {
                self.stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

impl RaftNetworkV2<TypeConfig> for NetworkConnection {
    type SnapshotData = SnapshotPack;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::Append, &rpc, &option).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // A heartbeat is a stream of one request without entries (openraft's heartbeat
            // worker opens one per beat, and reports the beat only once the stream has ended):
            // sent as one unary append, it is one request and one answer, not a stream opened and
            // closed by both sides, and a linearizable read, which waits for a beat, waits that
            // much less. Anything carrying entries goes on a stream, as before.
            // Fused: an input that ended when looked at once more is never polled again.
            let mut input = input.fuse();
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let second = match futures::FutureExt::now_or_never(input.next()) {
                Some(None) if first.entries.is_empty() => {
                    let result = self.heartbeat(&first, &option).await;
                    return Ok(Box::pin(futures::stream::once(async move { result })) as BoxStream<'s, _>);
                }
                Some(next) => next,
                None => None,
            };
            let input = futures::stream::iter(std::iter::once(first).chain(second)).chain(input);
            tokio::time::sleep(reopen_pause(self.stream_failures)).await;
            let mut client = self.client()?;
            let clock = self.clock.clone();
            let requests = input.map(move |request| message(&clock, encode(&request)));
            // No deadline on the stream itself: it lives as long as replication to this target.
            // openraft times out the individual appends it is waiting for.
            let mut request = self.named(requests);
            // Checked when the stream opens too: a refused open counts as a failed one, so a node
            // whose clock is off retries with pauses instead of reopening in a spin.
            request
                .metadata_mut()
                .insert(SENDER_WALL_MS_HEADER, self.clock.wall_ms().into());
            let opened = client.stream_append(request).await;
            let refused = match &opened {
                Ok(replies) => self.cluster.check(replies.metadata(), Side::Reply, &self.addr).err(),
                Err(status) => self.cluster.check(status.metadata(), Side::Reply, &self.addr).err(),
            };
            if let Some(refusal) = refused {
                self.stream_failures = self.stream_failures.saturating_add(1);
                self.stats.stream_open_failures.fetch_add(1, Ordering::Relaxed);
                return Err(network_error(refusal));
            }
            let replies = match opened {
                Ok(replies) => {
                    self.stream_failures = 0;
                    self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                    replies.into_inner()
                }
                Err(status) => {
                    self.stream_failures = self.stream_failures.saturating_add(1);
                    self.stats.stream_open_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(status_error(status));
                }
            };
            let (clock, target) = (self.clock.clone(), self.target);
            let results = replies.map(move |reply| {
                let message = reply.map_err(status_error)?;
                // The peer's clock, for the wall clock this node stamps with as leader.
                clock.record_peer_wall(target, message.sender_wall_ms);
                decode::<StreamAppendResult<TypeConfig>>(&message.data).map_err(network_error)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Unary::TransferLeader, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self
            .client()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let header = encode(&(vote, snapshot.meta.clone()));
        let sender_wall_ms = self.clock.wall_ms();
        let path = snapshot.snapshot.path.clone();
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        tracing::info!(target = self.target, path = %path.display(), "sending snapshot");
        let chunks = futures::stream::unfold((file, Some(header)), move |(mut file, header)| async move {
            if let Some(header) = header {
                return Some((
                    SnapshotChunk {
                        header,
                        data: Vec::new(),
                        sender_wall_ms,
                    },
                    (file, None),
                ));
            }
            let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match file.read(&mut data).await {
                Ok(0) => None,
                Err(e) => {
                    // A client stream cannot carry an error: it ends here, and the follower,
                    // which verifies the whole pack before installing it, refuses it.
                    tracing::warn!(error = %e, "reading the snapshot pack failed; ending the transfer early");
                    None
                }
                Ok(n) => {
                    data.truncate(n);
                    Some((
                        SnapshotChunk {
                            header: Vec::new(),
                            data,
                            sender_wall_ms,
                        },
                        (file, None),
                    ))
                }
            }
        });
        let send = client.snapshot(self.named(chunks));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let reply = self.check_reply(reply).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
                decode(&reply.into_inner().data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        Some(openraft::network::Backoff::new(std::iter::repeat(
            Duration::from_millis(100),
        )))
    }
}

/// The metadata key of the sender's wall clock on a stream's opening request, in ms.
const SENDER_WALL_MS_HEADER: &str = "basalt-sender-wall-ms";

/// Names this build's data format on a request: a peer of another format refuses it whole
/// instead of misreading its payload.
fn with_data_format<T>(mut request: Request<T>) -> Request<T> {
    basalt_codec::grpc::name_format(request.metadata_mut());
    request
}

/// Raft requests refused for their data format, since start.
static REFUSED_FORMAT_MESSAGES: AtomicU64 = AtomicU64::new(0);

/// Refuses a request from a peer that sends another data format than this build reads (a node of
/// another Basalt build in the region): FAILED_PRECONDITION, named, before any payload is decoded.
fn check_data_format<T>(request: &Request<T>) -> Result<(), Status> {
    basalt_codec::grpc::check_named_format(request.metadata()).map_err(|mismatch| {
        // One line at the first refusal and then ever more rarely: the peer retries for as long
        // as it runs (a stream reopen every 100 ms at most, and votes).
        let refused = REFUSED_FORMAT_MESSAGES.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            let peer = basalt_tls::remote_addr(request).map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(%mismatch, peer, refused, "refusing raft messages from a peer of another data format");
        }
        Status::failed_precondition(format!(
            "the peer sends {mismatch}: every node of a region must run a build of one data format"
        ))
    })
}

/// A message stamped with the sender's wall clock.
fn message(clock: &Hlc, data: Vec<u8>) -> RaftMessage {
    RaftMessage {
        data,
        sender_wall_ms: clock.wall_ms(),
    }
}

/// The server side: hands incoming messages to the local [`Raft`], after checking that the
/// sender's clock is close enough to this node's.
pub struct RaftGrpcService {
    raft: Raft,
    incoming_dir: PathBuf,
    clock: Arc<Hlc>,
    cluster: Arc<ClusterGuard>,
}

impl RaftGrpcService {
    pub fn new(
        raft: Raft,
        incoming_dir: PathBuf,
        clock: Arc<Hlc>,
        cluster: Arc<ClusterGuard>,
    ) -> RaftServiceServer<RaftGrpcService> {
        RaftServiceServer::new(RaftGrpcService {
            raft,
            incoming_dir,
            clock,
            cluster,
        })
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }
}

/// Refuses a message whose sender's clock is too far from this node's (see
/// [`basalt_storage::hlc::check_peer_clock`]): the local Raft never sees it, so a node whose
/// clock jumped cannot lead (its appends and heartbeats are refused, and the others elect a
/// leader among themselves) nor win or disturb an election. FAILED_PRECONDITION, which the
/// sender's openraft takes as a network error and retries, so the node rejoins once its clock is
/// back.
fn check_sender_clock(clock: &Hlc, sender_wall_ms: u64, what: &str, check: PeerCheck) -> Result<(), Status> {
    clock.check_peer(sender_wall_ms, check).map_err(|e| {
        let refused = clock.stats().refused_peer_messages.load(Ordering::Relaxed);
        // One line at the first refusal and then ever more rarely: a node that is off sends
        // heartbeats every few tens of ms.
        if refused.is_power_of_two() {
            tracing::warn!(what, refused, error = %e, "refusing a raft message: the sender's clock is off");
        }
        Status::failed_precondition(format!("clock offset: {e}"))
    })
}

/// An id a request named that this node, having none, may take once the request passed every
/// check (only from an append or a snapshot: see [`ClusterGuard::adopt`]).
struct Adoptable {
    id: ClusterId,
    peer: String,
}

/// Checks what a request names before anything of it is decoded: this build's data format, and
/// this node's cluster.
fn check_request<T>(cluster: &ClusterGuard, request: &Request<T>) -> Result<Option<Adoptable>, Status> {
    check_data_format(request)?;
    let peer = basalt_tls::remote_addr(request).map_or_else(|| "unknown".to_string(), |a| a.to_string());
    match cluster.check(request.metadata(), Side::Request, &peer) {
        Ok(adoptable) => Ok(adoptable.map(|id| Adoptable { id, peer })),
        Err(refusal) => Err(refusal.into_status(cluster.id())),
    }
}

/// Adopts what a leader's append or snapshot named, now that it passed every other check.
fn adopt(cluster: &ClusterGuard, adoptable: Option<Adoptable>) -> Result<(), Status> {
    match adoptable {
        None => {
            // An append naming no id, accepted by a node without one: from now on it holds data
            // of a cluster from before cluster ids, and takes no id from anyone.
            if cluster.id().is_none() {
                cluster.set_may_adopt(false);
            }
            Ok(())
        }
        Some(Adoptable { id, peer }) => cluster
            .adopt(id, &peer)
            .map_err(|refusal| refusal.into_status(cluster.id())),
    }
}

/// A reply naming this node's cluster id, for the sender's check.
fn reply<T>(cluster: &ClusterGuard, message: T) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    cluster.name(response.metadata_mut());
    response
}

impl RaftGrpcService {
    /// Decodes a request, hands it to the local Raft, encodes the reply. `from_leader`: an
    /// append, whose cluster id a node without one takes.
    async fn serve_unary<Req, Resp, E, Fut>(
        &self,
        request: Request<RaftMessage>,
        from_leader: bool,
        call: impl FnOnce(Req) -> Fut,
    ) -> Result<tonic::Response<RaftMessage>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: serde::Serialize,
        E: std::fmt::Display,
        Fut: Future<Output = Result<Resp, E>>,
    {
        let adoptable = check_request(&self.cluster, &request)?;
        let request = request.into_inner();
        check_sender_clock(&self.clock, request.sender_wall_ms, "request", PeerCheck::Both)?;
        let rpc = decode(&request.data).map_err(bad_request)?;
        if from_leader {
            adopt(&self.cluster, adoptable)?;
        }
        let answer = call(rpc).await.map_err(raft_failure)?;
        Ok(reply(&self.cluster, message(&self.clock, encode(&answer))))
    }
}

fn bad_request(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

fn raft_failure(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

type ReplyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, Status> {
        // A message that does not decode, or whose sender's clock is off, ends the stream: the
        // leader sees it close and re-establishes replication, rather than the follower
        // skipping an entry batch.
        let adoptable = check_request(&self.cluster, &request)?;
        let opened_at = request
            .metadata()
            .get(SENDER_WALL_MS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        check_sender_clock(&self.clock, opened_at, "append stream", PeerCheck::Both)?;
        // Only a leader opens a replication stream.
        adopt(&self.cluster, adoptable)?;
        let clock = self.clock.clone();
        let requests = request
            .into_inner()
            .map(move |message| {
                message
                    .ok()
                    // Ahead only: a message queued in the stream looks older than it is.
                    .filter(|m| check_sender_clock(&clock, m.sender_wall_ms, "append", PeerCheck::AheadOnly).is_ok())
                    .and_then(|m| decode::<AppendEntriesRequest<TypeConfig>>(&m.data).ok())
            })
            .take_while(|decoded| futures::future::ready(decoded.is_some()))
            .filter_map(futures::future::ready);
        let clock = self.clock.clone();
        let replies = self.raft.stream_append(requests).map(move |result| match result {
            Ok(reply) => Ok(message(&clock, encode(&reply))),
            Err(fatal) => Err(Status::unavailable(format!("raft: {fatal}"))),
        });
        Ok(reply(&self.cluster, Box::pin(replies) as Self::StreamAppendStream))
    }

    async fn append(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        self.serve_unary(request, true, |rpc| self.raft.append_entries(rpc))
            .await
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        self.serve_unary(request, false, |rpc| self.raft.vote(rpc)).await
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        self.serve_unary(request, false, |rpc| self.raft.pre_vote(rpc)).await
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        self.serve_unary(request, false, |rpc| self.raft.handle_transfer_leader(rpc))
            .await
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let adoptable = check_request(&self.cluster, &request)?;
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        check_sender_clock(&self.clock, first.sender_wall_ms, "snapshot", PeerCheck::Both)?;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header).map_err(bad_request)?;
        adopt(&self.cluster, adoptable)?;
        let path = self
            .incoming_dir
            .join(format!("{INCOMING_PREFIX}{}{INCOMING_SUFFIX}", rand_suffix()));
        let io_err = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_err)?;
        // Removed on every way out: an error mid-stream, a refusal, a failed install. (An
        // installed pack was renamed away first; a crash leaves it to the sweep at startup.)
        let _incoming = RemoveOnDrop(path.clone());
        let mut received = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(io_err)?;
        }
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        tracing::info!(bytes = received, last_log_id = ?meta.last_log_id, "received snapshot");
        // Verified whole before openraft sees it: an install that fails is a storage error, which
        // stops this node's Raft. A bad transfer is refused with a retryable error instead.
        let verify_path = path.clone();
        let verified = tokio::task::spawn_blocking(move || verify_incoming(&verify_path, &meta).map(|()| meta))
            .await
            .map_err(|e| Status::internal(format!("verifying snapshot: {e}")))?;
        let meta = match verified {
            Ok(meta) => meta,
            Err(Refusal::Damaged(reason)) => {
                tracing::warn!(bytes = received, %reason, "refusing a snapshot that failed verification");
                return Err(Status::unavailable(format!(
                    "snapshot refused, not installed: {reason}; send it again"
                )));
            }
            Err(Refusal::OtherFormat(reason)) => {
                tracing::warn!(bytes = received, %reason, "refusing a snapshot of another data format");
                return Err(Status::failed_precondition(format!(
                    "snapshot refused, not installed: {reason}"
                )));
            }
        };
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotPack { path: path.clone() },
        };
        let result = self.raft.install_full_snapshot(vote, snapshot).await;
        let answer = result.map_err(raft_failure)?;
        Ok(reply(&self.cluster, message(&self.clock, encode(&answer))))
    }
}

/// File names of snapshots being received, in the snapshot directory.
pub const INCOMING_PREFIX: &str = "incoming-";
pub const INCOMING_SUFFIX: &str = ".part";

/// Removes a file when dropped (if it is still there).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.0.display(), error = %e, "removing an incoming snapshot"),
        }
    }
}

/// Checks a received pack whole (every crc, the end marker) and that it is the snapshot the
/// stream's header announced.
/// Why a received pack is refused: damage (send it again) or another data format (sending it
/// again cannot help).
enum Refusal {
    Damaged(String),
    OtherFormat(String),
}

fn verify_incoming(path: &std::path::Path, announced: &SnapshotMeta) -> Result<(), Refusal> {
    let packed = basalt_storage::state::snapshot::verify_pack(path).map_err(|e| match e {
        e @ basalt_storage::state::StoreError::SnapshotFormat { .. } => Refusal::OtherFormat(e.to_string()),
        e => Refusal::Damaged(e.to_string()),
    })?;
    let packed: SnapshotMeta =
        decode(&packed).map_err(|e| Refusal::Damaged(format!("undecodable snapshot metadata: {e}")))?;
    if &packed != announced {
        return Err(Refusal::Damaged(format!(
            "the pack holds snapshot {packed:?}, the stream announced {announced:?}"
        )));
    }
    Ok(())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log_id;
    use proptest::prelude::*;

    /// A real append as a leader sends it, encoded: what the mutations start from.
    fn encoded_append(entries: u64) -> Vec<u8> {
        let entries = (1..=entries)
            .map(|index| crate::test_entries::put_entry(3, index, 20))
            .collect();
        encode(&AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id::<TypeConfig>(3, 1, 0)),
            entries,
            leader_commit: Some(log_id::<TypeConfig>(3, 1, 1)),
        })
    }

    /// Every way a peer message is decoded (unary appends, votes, stream appends, a snapshot's
    /// header), on `bytes`: each answers a value or an error, never a panic.
    fn decode_every_peer_message(bytes: &[u8]) {
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(bytes);
        let _ = decode::<VoteRequest<TypeConfig>>(bytes);
        let _ = decode::<(Vote, SnapshotMeta)>(bytes);
        let _ = decode::<AppendEntriesResponse<TypeConfig>>(bytes);
        let _ = decode::<VoteResponse<TypeConfig>>(bytes);
        let _ = decode::<StreamAppendResult<TypeConfig>>(bytes);
        let _ = decode::<SnapshotResponse<TypeConfig>>(bytes);
    }

    proptest! {
        #[test]
        fn random_bytes_decode_as_no_peer_message_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_every_peer_message(&bytes);
        }

        #[test]
        fn a_mutated_append_decodes_or_fails_cleanly(
            entries in 0u64..6,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encoded_append(entries);
            prop_assert!(decode::<AppendEntriesRequest<TypeConfig>>(&bytes).is_ok());
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            decode_every_peer_message(&bytes);
            bytes.truncate(cut.index(bytes.len() + 1));
            decode_every_peer_message(&bytes);
        }
    }

    /// What a follower receives is checked whole before openraft sees it: an intact pack of the
    /// announced snapshot passes; one cut short, one with a flipped byte and one holding another
    /// snapshot than the stream announced are refused as damaged (the leader may send again).
    #[test]
    fn a_received_pack_is_refused_when_damaged_or_not_the_one_announced() {
        use basalt_storage::apply::WriteSet;
        use basalt_storage::state::rocks::RocksStore;
        use basalt_storage::state::snapshot::Checkpoint;
        use basalt_storage::state::Table;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("state")).expect("open");
        let mut writes = WriteSet::default();
        writes.put(Table::Kv, b"k".to_vec(), vec![1; 4096]);
        store.commit(&writes).expect("commit");
        let announced = crate::SnapshotMeta::default();
        let pack = dir.path().join("in.snap");
        Checkpoint::create(&store, dir.path().join("checkpoint"))
            .expect("checkpoint")
            .pack(&encode(&announced), &pack)
            .expect("pack");
        let intact = std::fs::read(&pack).expect("read");
        assert!(verify_incoming(&pack, &announced).is_ok());

        let other = crate::SnapshotMeta {
            last_log_id: Some(crate::LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
                3,
            )),
            ..announced.clone()
        };
        assert!(matches!(verify_incoming(&pack, &other), Err(Refusal::Damaged(_))));

        std::fs::write(&pack, &intact[..intact.len() / 2]).expect("cut");
        assert!(matches!(verify_incoming(&pack, &announced), Err(Refusal::Damaged(_))));

        let mut flipped = intact.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x5a;
        std::fs::write(&pack, &flipped).expect("flip");
        assert!(matches!(verify_incoming(&pack, &announced), Err(Refusal::Damaged(_))));
    }

    #[test]
    fn a_request_of_another_data_format_is_refused_by_name_before_decoding() {
        let old = check_data_format(&Request::new(())).expect_err("no header: data format 1");
        assert_eq!(old.code(), tonic::Code::FailedPrecondition);
        assert!(
            old.message().contains("data format 1, this build reads 3"),
            "{}",
            old.message()
        );
        assert!(check_data_format(&with_data_format(Request::new(()))).is_ok());
    }

    #[test]
    fn reopen_pauses_double_from_nothing_up_to_the_cap() {
        let pauses: Vec<u64> = (0..10).map(|n| reopen_pause(n).as_millis() as u64).collect();
        assert_eq!(pauses, [0, 5, 10, 20, 40, 80, 100, 100, 100, 100]);
        assert_eq!(reopen_pause(u32::MAX), REOPEN_PAUSE_MAX);
    }
}
