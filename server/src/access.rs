//! Client authentication and permissions at the gRPC door (docs/security.md).
//!
//! A node started with a root token (`[auth] root_token_file`) authenticates every client
//! request: [`Gate::authenticate`] maps the `authorization: Bearer ...` header to an
//! [`Identity`] (the root token's, or a user's from the replicated users and roles), and
//! [`AccessLayer`] checks, before any handler runs, that the identity holds every [`Need`] of the
//! request. The needs are read from the decoded request message by [`needs_of`], one rule per
//! RPC path; a path without a rule is refused to everyone but the root (fail closed: a new RPC
//! is unusable until its rule is written here). The RESP and HTTP doors use the same gate and
//! the same needs (through the SDK, and [`Gate::check`]).
//!
//! Refusals: `UNAUTHENTICATED` (no token, or one the node does not know) and
//! `PERMISSION_DENIED` (naming the need missing). Neither reaches a handler, so neither changes
//! anything.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use basalt_auth::limits::TOKEN_BYTES_MAX;
use basalt_auth::token::{Token, TokenHash};
use basalt_auth::{Access, AuthTable, Denied, Identity, Need, Scope};
use basalt_client::{pb, ErrorCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

use crate::api::status;

/// Counts of refused requests, for /metrics.
#[derive(Default)]
pub struct AccessCounters {
    pub unauthenticated: AtomicU64,
    pub denied: AtomicU64,
}

/// Why a credential was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("no credentials: this node authenticates its clients (send a bearer token)")]
    Missing,
    #[error("the credentials are not a bearer token (expected `Bearer <token>`)")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("the client certificate names {0:?}, which is no user of this region")]
    UnknownCertificate(String),
    #[error(transparent)]
    ExpiredCertificate(#[from] basalt_tls::Expired),
    #[error("only the root token may act as another user")]
    ActAsNeedsRoot,
    #[error("{0:?} is no user of this region")]
    UnknownUser(String),
}

/// What authenticated a request: a bearer token (by its hash), or a user's name: the one a
/// client certificate of the client doors' CA gives (`[tls]`), or the one the root token acts
/// as (`basalt-act-as`, a node's RESP door for a certificate's user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    Token(TokenHash),
    User(Arc<str>),
}

/// Who may do what at this node's doors: the root token's hash and the replicated users and
/// roles. Cheap to share.
pub struct Gate {
    /// This node's Raft, once it runs: a refusal a follower would make (a token it does not
    /// know, a grant it lacks) may come from a change it has not applied yet, so it sends the
    /// client to the leader, whose answer is the region's.
    raft: std::sync::OnceLock<basalt_raft::Raft>,
    root: TokenHash,
    /// The root token as a header, for this node's own calls to other nodes' client ports.
    root_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    table: tokio::sync::watch::Receiver<Arc<AuthTable>>,
    pub counters: AccessCounters,
}

impl Gate {
    /// A gate admitting `root` and the users of `table`.
    ///
    /// # Errors
    /// When the token cannot travel in a header (not visible ASCII).
    pub fn new(root: &Token, table: tokio::sync::watch::Receiver<Arc<AuthTable>>) -> Result<Gate, String> {
        let mut root_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", root.as_str())
                .parse()
                .map_err(|_| "the root token holds characters a header cannot carry".to_string())?;
        root_header.set_sensitive(true);
        Ok(Gate {
            raft: std::sync::OnceLock::new(),
            root: root.hash(),
            root_header,
            table,
            counters: AccessCounters::default(),
        })
    }

    /// Makes refusals on a follower redirects to the leader (see the `raft` field).
    pub fn follow(&self, raft: basalt_raft::Raft) {
        let _ = self.raft.set(raft);
    }

    /// The refusal `refuse` makes (and counts) on a leader that has applied its term's first
    /// entry, so every change of users and roles committed before it. Any other node may miss a
    /// recent change (a follower behind, a node just restarted, a leader just elected): it
    /// answers `NOT_LEADER`, naming the leader when it knows it (the SDK goes there), else
    /// naming none (the SDK pauses and tries the next node); either way the request is known
    /// not to have been delivered.
    fn refuse_or_redirect(&self, refuse: impl FnOnce() -> Status) -> Status {
        let Some(raft) = self.raft.get() else {
            return refuse();
        };
        match crate::api::ensure_leader(raft) {
            Ok(()) if crate::api::leader_caught_up(raft) => refuse(),
            Ok(()) => crate::api::not_leader_status(None, None),
            Err(not_leader) => not_leader,
        }
    }

    /// The status of a missing permission (counted).
    pub fn denied(&self, denied: &Denied) -> Status {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
        status(ErrorCode::PermissionDenied, denied.to_string())
    }

    /// Gives `request` (this node's own call to another node's client port) the root token.
    pub fn sign<T>(&self, request: &mut tonic::Request<T>) {
        request.metadata_mut().insert("authorization", self.root_header.clone());
    }

    /// The identity a bearer token's text belongs to.
    pub fn identify_token(&self, token: &str) -> Result<Arc<Identity>, AuthRefusal> {
        if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
            return Err(AuthRefusal::Unknown);
        }
        let hash = basalt_auth::token::hash(token);
        if hash == self.root {
            return Ok(Arc::new(Identity::root()));
        }
        self.table.borrow().identify(&hash).ok_or(AuthRefusal::Unknown)
    }

    /// The identity of a gRPC request (see [`Gate::authenticate`]).
    fn authenticate_request(&self, parts: &http::request::Parts) -> Result<(Arc<Identity>, Credential), AuthRefusal> {
        self.authenticate(&parts.headers, parts.extensions.get::<basalt_tls::ConnectInfo>())
    }

    /// The identity of a request (gRPC or HTTP) with `headers`, on a connection whose TLS
    /// handshake found `connection`: its bearer token's, or, without an `authorization` header,
    /// the user the connection's client certificate names (never the root: only the root token
    /// is). A certificate that has expired since the handshake names no one.
    pub(crate) fn authenticate(
        &self,
        headers: &http::HeaderMap,
        connection: Option<&basalt_tls::ConnectInfo>,
    ) -> Result<(Arc<Identity>, Credential), AuthRefusal> {
        let certificate_name = || -> Result<Option<Arc<str>>, AuthRefusal> {
            match connection {
                Some(info) => Ok(info.client_name_at(std::time::SystemTime::now())?),
                None => Ok(None),
            }
        };
        match presented(headers) {
            Ok(Presented::Bearer(token)) => {
                let identity = self.identify_token(token)?;
                Ok((identity, Credential::Token(basalt_auth::token::hash(token))))
            }
            // A narrowing, never a widening: the root, which may do anything, runs the request
            // with one user's grants (a front door that authenticated that user itself); any
            // other token is refused for trying.
            Ok(Presented::ActAs { user, token }) => {
                if !self.identify_token(token)?.root {
                    return Err(AuthRefusal::ActAsNeedsRoot);
                }
                let identity = self
                    .table
                    .borrow()
                    .identify_user(user)
                    .ok_or_else(|| AuthRefusal::UnknownUser(user.to_string()))?;
                Ok((identity, Credential::User(user.into())))
            }
            Err(AuthRefusal::Missing) => {
                let name = certificate_name()?.ok_or(AuthRefusal::Missing)?;
                let identity = self
                    .table
                    .borrow()
                    .identify_user(&name)
                    .ok_or_else(|| AuthRefusal::UnknownCertificate(name.to_string()))?;
                Ok((identity, Credential::User(name)))
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// Checks `identity` against `needs` (counted by whoever returns the refusal:
    /// [`Gate::denied`]).
    pub fn check(&self, identity: &Identity, needs: &[Need]) -> Result<(), Denied> {
        identity.check_all(needs)
    }

    /// The status an authentication refusal travels as (and counts it).
    pub fn unauthenticated(&self, refusal: &AuthRefusal) -> Status {
        self.counters.unauthenticated.fetch_add(1, Ordering::Relaxed);
        status(ErrorCode::Unauthenticated, refusal.to_string())
    }

    /// Authenticates and authorizes one gRPC request; on success the identity rides in the
    /// request's extensions and the body is handed on as it came. For a stream the node keeps
    /// open (a watch, a subscription), also what to check again whenever users and roles change.
    async fn admit(&self, request: http::Request<Body>) -> Result<(http::Request<Body>, Option<Recheck>), Status> {
        let (mut parts, body) = request.into_parts();
        let (identity, credential) = match self.authenticate_request(&parts) {
            Ok(authenticated) => authenticated,
            // Not known here may be not applied here yet: a known token or user is never
            // refused for a follower's lag (a missing or malformed token is refused at once).
            Err(
                refusal @ (AuthRefusal::Unknown | AuthRefusal::UnknownCertificate(_) | AuthRefusal::UnknownUser(_)),
            ) => return Err(self.refuse_or_redirect(|| self.unauthenticated(&refusal))),
            Err(refusal) => return Err(self.unauthenticated(&refusal)),
        };
        let path = parts.uri.path().to_string();
        let root_only = || {
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            status(
                ErrorCode::PermissionDenied,
                format!("{path} is the root token's only (user {:?})", identity.user),
            )
        };
        let body = match rule(&path) {
            Some(Rule::Open) => body,
            Some(Rule::Root) | None if identity.root => body,
            Some(Rule::Root) | None => return Err(root_only()),
            Some(Rule::Fixed(need)) => {
                self.check(&identity, &[need])
                    .map_err(|d| self.refuse_or_redirect(|| self.denied(&d)))?;
                body
            }
            Some(Rule::Message(needs)) => {
                // A unary (or server-streaming) request: one message, bounded as the server's
                // decoders bound it and read within a deadline, checked here and handed on
                // unchanged.
                let limit = basalt_storage::limits::CLIENT_MESSAGE_BYTES_MAX + GRPC_FRAME_HEADER_BYTES;
                let collected = tokio::time::timeout(
                    crate::limits::REQUEST_BODY_READ_TIMEOUT,
                    http_body_util::Limited::new(body, limit).collect(),
                )
                .await
                .map_err(|_| {
                    status(
                        ErrorCode::InvalidArgument,
                        format!(
                            "request body not received within {:?}",
                            crate::limits::REQUEST_BODY_READ_TIMEOUT
                        ),
                    )
                })?;
                let bytes = match collected {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(status(ErrorCode::TooLarge, format!("request body over {limit} bytes")))
                    }
                    Err(e) => return Err(status(ErrorCode::Unavailable, format!("reading the request body: {e}"))),
                };
                let message = grpc_message(&bytes)?;
                let needs = needs(message).map_err(|e| status(ErrorCode::InvalidArgument, format!("{path}: {e}")))?;
                self.check(&identity, &needs)
                    .map_err(|d| self.refuse_or_redirect(|| self.denied(&d)))?;
                let recheck = (STREAMS.contains(&path.as_str()) && !identity.root).then(|| Recheck {
                    credential: credential.clone(),
                    needs,
                });
                parts.extensions.insert(identity);
                return Ok((
                    http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes))),
                    recheck,
                ));
            }
        };
        parts.extensions.insert(identity);
        Ok((http::Request::from_parts(parts, body), None))
    }

    /// Whether `recheck` still holds against the users and roles in `table`: the status that
    /// ends its stream when not.
    fn still_allowed(&self, table: &AuthTable, recheck: &Recheck) -> Result<(), Status> {
        let identity = match &recheck.credential {
            Credential::Token(hash) => table.identify(hash).ok_or(AuthRefusal::Unknown),
            Credential::User(name) => table
                .identify_user(name)
                .ok_or_else(|| AuthRefusal::UnknownUser(name.to_string())),
        };
        let identity = identity.map_err(|refusal| self.unauthenticated(&refusal))?;
        self.check(&identity, &recheck.needs).map_err(|d| self.denied(&d))
    }
}

/// How a node calls other nodes' client ports: over TLS (trusting `[tls] ca`, showing no
/// certificate) when it runs TLS there (every node of a deployment does, or none), and carrying
/// the root token when it authenticates clients (every node of a deployment holds the same one).
#[derive(Clone, Default)]
pub struct NodeCredentials {
    gate: Option<Arc<Gate>>,
    tls: Option<basalt_tls::Connector>,
}

impl NodeCredentials {
    pub fn new(gate: Option<Arc<Gate>>, tls: Option<Arc<basalt_tls::NodeTls>>) -> NodeCredentials {
        NodeCredentials {
            gate,
            tls: tls.map(basalt_tls::Connector::Node),
        }
    }

    pub fn sign<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(gate) = &self.gate {
            gate.sign(request);
        }
    }

    /// The TLS connections are made with, if any.
    pub fn connector(&self) -> Option<&basalt_tls::Connector> {
        self.tls.as_ref()
    }

    /// A channel to the client port at `addr` (`host:port`), connected on first use, each
    /// (re)connection within `connect_timeout`.
    pub fn channel(
        &self,
        addr: &str,
        connect_timeout: std::time::Duration,
    ) -> Result<tonic::transport::Channel, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad node address {addr:?}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        Ok(basalt_tls::lazy_channel(
            endpoint,
            addr,
            self.tls.as_ref(),
            connect_timeout,
        ))
    }
}

/// What a request's `authorization` header presents.
enum Presented<'a> {
    /// `Bearer TOKEN`.
    Bearer(&'a str),
    /// `ActAs USER TOKEN` ([`basalt_client::Client::acting_as`]): the root token, running the
    /// request as `USER`. A scheme of its own rather than a header beside `Bearer`, so that a
    /// node of an earlier build, which knows only `Bearer`, refuses it instead of running the
    /// request as the root.
    ActAs { user: &'a str, token: &'a str },
}

/// What a request's `authorization` header presents (`Missing` without one).
fn presented(headers: &http::HeaderMap) -> Result<Presented<'_>, AuthRefusal> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or(AuthRefusal::Missing)?;
    let text = value.to_str().map_err(|_| AuthRefusal::Malformed)?;
    if let Some(token) = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")) {
        return Ok(Presented::Bearer(token.trim()));
    }
    let acting = text
        .strip_prefix(basalt_client::ACT_AS_SCHEME)
        .and_then(|rest| rest.strip_prefix(' '));
    match acting.and_then(|rest| rest.trim().split_once(' ')) {
        Some((user, token)) if !user.is_empty() && !token.is_empty() => Ok(Presented::ActAs {
            user,
            token: token.trim(),
        }),
        _ => Err(AuthRefusal::Malformed),
    }
}

/// The server-streaming RPCs a node keeps open for as long as the client reads: checked again
/// whenever users and roles change, and ended once their caller may no longer see them.
const STREAMS: [&str; 2] = ["/basalt.v1.Kv/Watch", "/basalt.v1.PubSub/Subscribe"];

/// What a long-lived stream is checked against again: its caller's credential and its needs.
#[derive(Debug)]
pub(crate) struct Recheck {
    credential: Credential,
    needs: Vec<Need>,
}

/// A stream's response body that ends, with `UNAUTHENTICATED` or `PERMISSION_DENIED` in its
/// trailers, as soon as a change of users and roles takes away its caller's token or grant
/// (between two messages: a message is never cut).
struct Revocable {
    inner: Body,
    gate: Arc<Gate>,
    recheck: Recheck,
    changes: tokio_stream::wrappers::WatchStream<Arc<AuthTable>>,
    ended: bool,
}

impl http_body::Body for Revocable {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        use tokio_stream::Stream;
        if self.ended {
            return Poll::Ready(None);
        }
        while let Poll::Ready(Some(table)) = Pin::new(&mut self.changes).poll_next(cx) {
            if let Err(refusal) = self.gate.still_allowed(&table, &self.recheck) {
                self.ended = true;
                let trailers = refusal.into_http::<Body>().into_parts().0.headers;
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            // The inner stream's own end: nothing may follow it, not even a refusal.
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.ended = true,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// A gRPC message's frame header: a compression flag and a 4-byte length.
const GRPC_FRAME_HEADER_BYTES: usize = 5;

/// The one message of a unary request body.
fn grpc_message(body: &Bytes) -> Result<&[u8], Status> {
    let bad = |why: &str| status(ErrorCode::InvalidArgument, format!("request body: {why}"));
    if body.len() < GRPC_FRAME_HEADER_BYTES {
        return Err(bad("shorter than a gRPC frame header"));
    }
    if body[0] != 0 {
        return Err(bad("compressed messages are not accepted"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != GRPC_FRAME_HEADER_BYTES + len {
        return Err(bad("not exactly one message"));
    }
    Ok(&body[GRPC_FRAME_HEADER_BYTES..])
}

/// What an RPC needs.
enum Rule {
    /// Anyone authenticated (status, who-am-I).
    Open,
    /// The root token only: the calls that make this node send its own credentials (the root
    /// token) to addresses the caller names (a region's endpoints), and other regions' nodes'
    /// calls (their feed, writes forwarded to this home region).
    Root,
    /// One need whatever the message says.
    Fixed(Need),
    /// The needs its decoded message names.
    Message(fn(&[u8]) -> Result<Vec<Need>, prost::DecodeError>),
}

/// The needs a decoded request names.
pub(crate) trait Needs {
    fn needs(&self) -> Vec<Need>;
}

fn decoded<M: prost::Message + Default + Needs>(bytes: &[u8]) -> Result<Vec<Need>, prost::DecodeError> {
    Ok(M::decode(bytes)?.needs())
}

/// A request whose field 1 is its `RequestHeader`, decoded for that alone.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<pb::RequestHeader>,
}

/// [`decoded`] for a request that carries a `RequestHeader` as its field 1: also read on the
/// lease its fence names (a fenced write's answer tells whether that lease's grant is live).
fn fenced<M: prost::Message + Default + Needs>(bytes: &[u8]) -> Result<Vec<Need>, prost::DecodeError> {
    let mut needs = decoded::<M>(bytes)?;
    if let Some(fence) = <HeaderOnly as prost::Message>::decode(bytes)?
        .header
        .and_then(|h| h.fence)
    {
        needs.push(Need::on(Access::Read, Scope::Key, fence.lease));
    }
    Ok(needs)
}

/// The rule of an RPC path; `None`: no rule (root only).
fn rule(path: &str) -> Option<Rule> {
    use Access::{Admin, Read};
    let message = Rule::Message;
    Some(match path {
        "/basalt.v1.Kv/Put" => message(fenced::<pb::KvPutRequest>),
        "/basalt.v1.Kv/Get" => message(decoded::<pb::KvGetRequest>),
        "/basalt.v1.Kv/GetMany" => message(decoded::<pb::KvGetManyRequest>),
        "/basalt.v1.Kv/Delete" => message(fenced::<pb::KvDeleteRequest>),
        "/basalt.v1.Kv/Batch" => message(fenced::<pb::KvBatchRequest>),
        "/basalt.v1.Kv/Scan" => message(decoded::<pb::KvScanRequest>),
        "/basalt.v1.Kv/Watch" => message(decoded::<pb::WatchRequest>),
        "/basalt.v1.Counter/Apply" => message(fenced::<pb::CounterApplyRequest>),
        "/basalt.v1.Counter/Get" => message(decoded::<pb::CounterGetRequest>),
        "/basalt.v1.Counter/Windows" => message(decoded::<pb::CounterWindowsRequest>),
        "/basalt.v1.RateLimiter/Check" => message(fenced::<pb::RateCheckRequest>),
        "/basalt.v1.Lease/Acquire" => message(fenced::<pb::LeaseAcquireRequest>),
        "/basalt.v1.Lease/Renew" => message(fenced::<pb::LeaseRenewRequest>),
        "/basalt.v1.Lease/Release" => message(fenced::<pb::LeaseReleaseRequest>),
        "/basalt.v1.Lease/Get" => message(decoded::<pb::LeaseGetRequest>),
        "/basalt.v1.Ledger/CreateAccounts" => message(fenced::<pb::CreateAccountsRequest>),
        "/basalt.v1.Ledger/CreateTransfers" => message(fenced::<pb::CreateTransfersRequest>),
        // Found by id: the ledger is known only once read, so every ledger's read is needed.
        "/basalt.v1.Ledger/LookupAccounts"
        | "/basalt.v1.Ledger/LookupTransfers"
        | "/basalt.v1.Ledger/GetAccountTransfers"
        | "/basalt.v1.Ledger/GetAccountBalances" => Rule::Fixed(Need::all(Read, Scope::Ledger)),
        "/basalt.v1.Queue/CreateQueue" => message(fenced::<pb::CreateQueueRequest>),
        "/basalt.v1.Queue/Enqueue" => message(fenced::<pb::EnqueueRequest>),
        "/basalt.v1.Queue/Receive" => message(fenced::<pb::ReceiveRequest>),
        "/basalt.v1.Queue/Ack" => message(fenced::<pb::AckRequest>),
        "/basalt.v1.Queue/Nack" => message(fenced::<pb::NackRequest>),
        "/basalt.v1.Queue/Redrive" => message(fenced::<pb::RedriveRequest>),
        "/basalt.v1.Queue/Stats" => message(decoded::<pb::QueueStatsRequest>),
        "/basalt.v1.Queue/Extend" => message(fenced::<pb::ExtendRequest>),
        "/basalt.v1.Queue/AckBatch" => message(fenced::<pb::AckBatchRequest>),
        "/basalt.v1.Queue/Purge" => message(fenced::<pb::PurgeRequest>),
        "/basalt.v1.Queue/ListQueues" => Rule::Fixed(Need::all(Read, Scope::Queue)),
        "/basalt.v1.Queue/DeleteQueue" => message(fenced::<pb::DeleteQueueRequest>),
        "/basalt.v1.Stream/CreateTopic" => message(fenced::<pb::CreateTopicRequest>),
        "/basalt.v1.Stream/DescribeTopic" => message(decoded::<pb::TopicRequest>),
        "/basalt.v1.Stream/Produce" => message(fenced::<pb::ProduceRequest>),
        "/basalt.v1.Stream/Fetch" => message(decoded::<pb::FetchRequest>),
        "/basalt.v1.Stream/JoinGroup" => message(fenced::<pb::JoinGroupRequest>),
        "/basalt.v1.Stream/Heartbeat" | "/basalt.v1.Stream/LeaveGroup" => message(fenced::<pb::GroupMemberRequest>),
        "/basalt.v1.Stream/CommitOffsets" => message(fenced::<pb::CommitOffsetsRequest>),
        "/basalt.v1.Stream/Committed" => message(decoded::<pb::CommittedRequest>),
        "/basalt.v1.Stream/DeleteTopic" => message(fenced::<pb::DeleteTopicRequest>),
        "/basalt.v1.Stream/ListTopics" => Rule::Fixed(Need::all(Read, Scope::Topic)),
        "/basalt.v1.Stream/OffsetForTime" => message(decoded::<pb::OffsetForTimeRequest>),
        "/basalt.v1.Stream/Trim" => message(fenced::<pb::TrimRequest>),
        "/basalt.v1.PubSub/Publish" => message(decoded::<pb::PublishRequest>),
        "/basalt.v1.PubSub/Subscribe" => message(decoded::<pb::SubscribeRequest>),
        "/basalt.v1.Cluster/Status" | "/basalt.v1.Auth/WhoAmI" => Rule::Open,
        "/basalt.v1.Cluster/Regions" => Rule::Fixed(Need::all(Read, Scope::Cluster)),
        // A member receives its region's Raft and the nodes' own calls (relays, purge
        // confirmations, stats), and a new region's endpoints this region's feed and forwarded
        // writes: only the root may name them.
        "/basalt.v1.Cluster/AddNode"
        | "/basalt.v1.Cluster/Promote"
        | "/basalt.v1.Cluster/RemoveNode"
        | "/basalt.v1.Cluster/ChangeRegions" => Rule::Root,
        "/basalt.v1.Cache/Purge" => message(decoded::<pb::CachePurgeRequest>),
        "/basalt.v1.Cache/Stats" => Rule::Fixed(Need::all(Read, Scope::Cache)),
        "/basalt.v1.Txn/Commit" => message(fenced::<pb::TxnRequest>),
        "/basalt.v1.Auth/PutRole"
        | "/basalt.v1.Auth/DeleteRole"
        | "/basalt.v1.Auth/PutUser"
        | "/basalt.v1.Auth/DeleteUser"
        | "/basalt.v1.Auth/AddToken"
        | "/basalt.v1.Auth/RemoveToken"
        | "/basalt.v1.Auth/List" => Rule::Fixed(Need::all(Admin, Scope::Cluster)),
        // Another region's nodes shipping their change feed (a client-streaming call: nothing
        // to decode up front).
        "/basalt.replication.RegionFeed/Ship" => Rule::Root,
        _ => return None,
    })
}

fn key(access: Access, key: &[u8]) -> Need {
    Need::on(access, Scope::Key, key)
}

/// The literal start of a glob pattern (up to its first special character): every channel the
/// pattern can match starts with it.
fn glob_literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

impl Needs for pb::KvPutRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Write, &self.key)]
    }
}

impl Needs for pb::KvDeleteRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Write, &self.key)]
    }
}

impl Needs for pb::KvGetRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Read, &self.key)]
    }
}

impl Needs for pb::KvGetManyRequest {
    fn needs(&self) -> Vec<Need> {
        self.keys.iter().map(|k| key(Access::Read, k)).collect()
    }
}

impl Needs for pb::KvBatchRequest {
    fn needs(&self) -> Vec<Need> {
        use pb::kv_write_op::Op;
        self.writes
            .iter()
            .filter_map(|w| match &w.op {
                Some(Op::Put(p)) => Some(key(Access::Write, &p.key)),
                Some(Op::Delete(d)) => Some(key(Access::Write, &d.key)),
                None => None,
            })
            .collect()
    }
}

impl Needs for pb::KvScanRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Read, &self.prefix)]
    }
}

impl Needs for pb::WatchRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Read, &self.prefix)]
    }
}

impl Needs for pb::CounterApplyRequest {
    fn needs(&self) -> Vec<Need> {
        self.ops.iter().map(|op| key(Access::Write, &op.key)).collect()
    }
}

impl Needs for pb::CounterGetRequest {
    fn needs(&self) -> Vec<Need> {
        self.keys.iter().map(|k| key(Access::Read, k)).collect()
    }
}

impl Needs for pb::CounterWindowsRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Read, &self.key)]
    }
}

impl Needs for pb::RateCheckRequest {
    fn needs(&self) -> Vec<Need> {
        // A check takes from the limit's budget: a write.
        self.checks.iter().map(|c| key(Access::Write, &c.key)).collect()
    }
}

impl Needs for pb::LeaseAcquireRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Write, &self.name)]
    }
}

impl Needs for pb::LeaseRenewRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Write, &self.name)]
    }
}

impl Needs for pb::LeaseReleaseRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Write, &self.name)]
    }
}

impl Needs for pb::LeaseGetRequest {
    fn needs(&self) -> Vec<Need> {
        vec![key(Access::Read, &self.name)]
    }
}

impl Needs for pb::CreateAccountsRequest {
    fn needs(&self) -> Vec<Need> {
        self.accounts
            .iter()
            .map(|a| Need::ledger(Access::Write, a.ledger))
            .collect()
    }
}

impl Needs for pb::CreateTransfersRequest {
    fn needs(&self) -> Vec<Need> {
        // A transfer that names no ledger (0: a pending transfer's post or void takes the
        // pending one's) could be in any: it needs every ledger.
        self.transfers
            .iter()
            .map(|t| match t.ledger {
                0 => Need::all(Access::Write, Scope::Ledger),
                ledger => Need::ledger(Access::Write, ledger),
            })
            .collect()
    }
}

fn queue(access: Access, name: &[u8]) -> Need {
    Need::on(access, Scope::Queue, name)
}

impl Needs for pb::CreateQueueRequest {
    fn needs(&self) -> Vec<Need> {
        let mut needs = vec![queue(Access::Admin, &self.queue)];
        if let Some(dead_letters) = self.config.as_ref().map(|c| &c.dead_letter_queue) {
            if !dead_letters.is_empty() {
                needs.push(queue(Access::Admin, dead_letters));
            }
        }
        needs
    }
}

macro_rules! queue_needs {
    ($access:ident: $($message:ty),*) => {$(
        impl Needs for $message {
            fn needs(&self) -> Vec<Need> {
                vec![queue(Access::$access, &self.queue)]
            }
        }
    )*};
}

queue_needs!(Write: pb::EnqueueRequest, pb::ReceiveRequest, pb::AckRequest, pb::NackRequest, pb::ExtendRequest,
    pb::AckBatchRequest);

impl Needs for pb::RedriveRequest {
    fn needs(&self) -> Vec<Need> {
        // Dead letters go back to whichever queues they came from: a write to every queue.
        vec![
            queue(Access::Write, &self.queue),
            Need::all(Access::Write, Scope::Queue),
        ]
    }
}
queue_needs!(Read: pb::QueueStatsRequest);
queue_needs!(Admin: pb::PurgeRequest, pb::DeleteQueueRequest);

fn topic(access: Access, name: &[u8]) -> Need {
    Need::on(access, Scope::Topic, name)
}

fn group(access: Access, name: &[u8]) -> Need {
    Need::on(access, Scope::Group, name)
}

macro_rules! topic_needs {
    ($access:ident: $($message:ty),*) => {$(
        impl Needs for $message {
            fn needs(&self) -> Vec<Need> {
                vec![topic(Access::$access, &self.topic)]
            }
        }
    )*};
}

topic_needs!(Admin: pb::CreateTopicRequest, pb::DeleteTopicRequest);
topic_needs!(Write: pb::ProduceRequest, pb::TrimRequest);
topic_needs!(Read: pb::TopicRequest, pb::FetchRequest, pb::OffsetForTimeRequest);

// A consumer group reads its topics; taking part in one (joining, committing) is a read of the
// group too, as Kafka's ACLs have it.
impl Needs for pb::JoinGroupRequest {
    fn needs(&self) -> Vec<Need> {
        let mut needs = vec![group(Access::Read, &self.group)];
        needs.extend(self.topics.iter().map(|t| topic(Access::Read, t)));
        needs
    }
}

impl Needs for pb::GroupMemberRequest {
    fn needs(&self) -> Vec<Need> {
        vec![group(Access::Read, &self.group)]
    }
}

impl Needs for pb::CommitOffsetsRequest {
    fn needs(&self) -> Vec<Need> {
        let mut needs = vec![group(Access::Read, &self.group)];
        needs.extend(self.offsets.iter().map(|o| topic(Access::Read, &o.topic)));
        needs
    }
}

impl Needs for pb::CommittedRequest {
    fn needs(&self) -> Vec<Need> {
        vec![group(Access::Read, &self.group), topic(Access::Read, &self.topic)]
    }
}

impl Needs for pb::PublishRequest {
    fn needs(&self) -> Vec<Need> {
        vec![Need::on(Access::Write, Scope::Channel, self.channel.clone())]
    }
}

impl Needs for pb::SubscribeRequest {
    fn needs(&self) -> Vec<Need> {
        let channels = self
            .channels
            .iter()
            .map(|c| Need::on(Access::Read, Scope::Channel, c.clone()));
        let patterns = self
            .patterns
            .iter()
            .map(|p| Need::on(Access::Read, Scope::Channel, glob_literal_prefix(p)));
        channels.chain(patterns).collect()
    }
}

impl Needs for pb::CachePurgeRequest {
    fn needs(&self) -> Vec<Need> {
        use pb::cache_purge_request::Target;
        // Cache grants name URL path prefixes; a tag can match any path, as can everything.
        vec![match &self.target {
            Some(Target::Url(path) | Target::Prefix(path)) => Need::on(Access::Admin, Scope::Cache, path.as_bytes()),
            _ => Need::all(Access::Admin, Scope::Cache),
        }]
    }
}

impl Needs for pb::TxnOp {
    fn needs(&self) -> Vec<Need> {
        use pb::txn_op::Op;
        match &self.op {
            None => Vec::new(),
            Some(Op::Put(r) | Op::PutKeepTtl(r)) => r.needs(),
            Some(Op::Delete(r)) => r.needs(),
            Some(Op::Get(r)) => r.needs(),
            Some(Op::Counter(r)) => r.needs(),
            Some(Op::RateCheck(r)) => r.needs(),
            Some(Op::LeaseAcquire(r)) => r.needs(),
            Some(Op::LeaseRenew(r)) => r.needs(),
            Some(Op::LeaseRelease(r)) => r.needs(),
            Some(Op::CreateAccounts(r)) => r.needs(),
            Some(Op::CreateTransfers(r)) => r.needs(),
            Some(Op::Enqueue(r)) => r.needs(),
            Some(Op::Ack(r)) => r.needs(),
            Some(Op::Nack(r)) => r.needs(),
            Some(Op::Produce(r)) => r.needs(),
            Some(Op::Trim(r)) => r.needs(),
        }
    }
}

impl Needs for pb::TxnCondition {
    fn needs(&self) -> Vec<Need> {
        use pb::txn_condition::Condition;
        match &self.condition {
            None => Vec::new(),
            Some(Condition::KvExists(c)) => vec![key(Access::Read, &c.key)],
            Some(Condition::KvVersion(c) | Condition::KvModRevision(c)) => vec![key(Access::Read, &c.key)],
            Some(Condition::KvValue(c)) => vec![key(Access::Read, &c.key)],
            Some(Condition::Counter(c)) => vec![key(Access::Read, &c.key)],
            Some(Condition::Fence(f)) => vec![key(Access::Read, &f.lease)],
            Some(Condition::Balance(_)) => vec![Need::all(Access::Read, Scope::Ledger)],
            Some(Condition::QueueDepth(c)) => vec![queue(Access::Read, &c.queue)],
        }
    }
}

impl Needs for pb::TxnRequest {
    fn needs(&self) -> Vec<Need> {
        let conditions = self.when.iter().flat_map(Needs::needs);
        let ops = self.then.iter().chain(&self.otherwise).flat_map(Needs::needs);
        conditions.chain(ops).collect()
    }
}

/// The tower layer that puts a [`Gate`] in front of every gRPC service of the client port;
/// without a gate (no root token configured) it hands requests on untouched.
#[derive(Clone)]
pub struct AccessLayer {
    gate: Option<Arc<Gate>>,
}

impl AccessLayer {
    pub fn new(gate: Option<Arc<Gate>>) -> AccessLayer {
        AccessLayer { gate }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for AccessService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(gate) = self.gate.clone() else {
            return Box::pin(self.inner.call(request));
        };
        // The service that was polled ready serves this request; the clone waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            match gate.admit(request).await {
                Ok((request, None)) => inner.call(request).await,
                Ok((request, Some(recheck))) => {
                    let response = inner.call(request).await?;
                    let changes = tokio_stream::wrappers::WatchStream::from_changes(gate.table.clone());
                    Ok(response.map(|inner| {
                        Body::new(Revocable {
                            inner,
                            gate,
                            recheck,
                            changes,
                            ended: false,
                        })
                    }))
                }
                Err(refusal) => Ok(refusal.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_auth::token::hash;
    use basalt_auth::{Grant, Role, UserRecord};
    use prost::Message;
    use std::collections::BTreeMap;

    fn gate_with(roles: &[(&str, &[&str])], users: &[(&str, &[&str], &str)]) -> Gate {
        let roles = roles
            .iter()
            .map(|(name, grants)| {
                (
                    name.to_string(),
                    Role {
                        grants: grants.iter().map(|g| Grant::parse(g).expect("grant")).collect(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let users = users
            .iter()
            .map(|(name, roles, token)| {
                (
                    name.to_string(),
                    UserRecord {
                        roles: roles.iter().map(|r| r.to_string()).collect(),
                        tokens: vec![hash(token)],
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let (_, table) = tokio::sync::watch::channel(Arc::new(AuthTable::new(roles, users)));
        Gate::new(&Token::from_text("root-token"), table).expect("gate")
    }

    fn request(path: &str, token: Option<&str>, message: &impl Message) -> http::Request<Body> {
        let encoded = message.encode_to_vec();
        let mut body = vec![0u8];
        body.extend((encoded.len() as u32).to_be_bytes());
        body.extend(encoded);
        let mut builder = http::Request::builder().uri(format!("http://node{path}"));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder
            .body(Body::new(http_body_util::Full::new(Bytes::from(body))))
            .expect("request")
    }

    fn code<T>(result: Result<T, Status>) -> Option<ErrorCode> {
        result.err().map(|s| {
            ErrorCode::parse(
                s.metadata()
                    .get(basalt_client::ERROR_CODE_KEY)
                    .and_then(|v| v.to_str().ok())
                    .expect("a typed refusal"),
            )
            .expect("a known code")
        })
    }

    /// A call without a token is judged by its connection's client certificate: the user it
    /// names, while it has not expired; a token, when sent, decides.
    #[tokio::test]
    async fn a_client_certificate_names_its_user_until_it_expires() {
        let gate = gate_with(&[("a", &["write:key:a/"])], &[("alice", &["a"], "alice-token")]);
        let put = |k: &str| pb::KvPutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let path = "/basalt.v1.Kv/Put";
        let now = std::time::SystemTime::now();
        let with_certificate = |name: &str, not_after: std::time::SystemTime, token: Option<&str>, key: &str| {
            let mut request = request(path, token, &put(key));
            request.extensions_mut().insert(basalt_tls::ConnectInfo {
                client_name: Some(Arc::from(name)),
                client_not_after: Some(not_after),
                ..basalt_tls::ConnectInfo::default()
            });
            request
        };
        let hour = std::time::Duration::from_secs(3600);
        let (admitted, _) = gate
            .admit(with_certificate("alice", now + hour, None, "a/1"))
            .await
            .expect("alice by her certificate");
        assert_eq!(
            admitted.extensions().get::<Arc<Identity>>().map(|i| i.user.clone()),
            Some("alice".to_string())
        );
        assert_eq!(
            code(gate.admit(with_certificate("alice", now + hour, None, "b/1")).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(gate.admit(with_certificate("alice", now - hour, None, "a/1")).await),
            Some(ErrorCode::Unauthenticated),
            "expired since the connection was made"
        );
        assert_eq!(
            code(gate.admit(with_certificate("carol", now + hour, None, "a/1")).await),
            Some(ErrorCode::Unauthenticated),
            "no such user"
        );
        assert_eq!(
            code(gate.admit(with_certificate("root", now + hour, None, "b/1")).await),
            Some(ErrorCode::Unauthenticated),
            "a certificate is never the root"
        );
        assert_eq!(
            code(
                gate.admit(with_certificate("alice", now + hour, Some("root-token"), "b/1"))
                    .await
            ),
            None,
            "the token decides"
        );
        assert_eq!(
            code(
                gate.admit(with_certificate("alice", now + hour, Some("guess"), "a/1"))
                    .await
            ),
            Some(ErrorCode::Unauthenticated),
            "an unknown token is not made good by a certificate"
        );
    }

    /// The root token acting as a user (a node's RESP door for a certificate's user) gets that
    /// user's grants and nothing more; no other token may act as anyone.
    #[tokio::test]
    async fn only_the_root_token_acts_as_a_user_and_only_with_that_user_s_grants() {
        let gate = gate_with(
            &[("a", &["write:key:a/"])],
            &[("alice", &["a"], "alice-token"), ("bob", &["a"], "bob-token")],
        );
        let put = |k: &str| pb::KvPutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let acting = |token: &str, user: &str, key: &str| {
            let mut request = request("/basalt.v1.Kv/Put", None, &put(key));
            request.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("ActAs {user} {token}")).expect("header"),
            );
            request
        };
        let (admitted, _) = gate
            .admit(acting("root-token", "alice", "a/1"))
            .await
            .expect("root as alice, within her grants");
        assert_eq!(
            admitted
                .extensions()
                .get::<Arc<Identity>>()
                .map(|i| (i.user.clone(), i.root)),
            Some(("alice".to_string(), false))
        );
        assert_eq!(
            code(gate.admit(acting("root-token", "alice", "b/1")).await),
            Some(ErrorCode::PermissionDenied),
            "narrowed to alice's grants"
        );
        assert_eq!(
            code(gate.admit(acting("root-token", "carol", "a/1")).await),
            Some(ErrorCode::Unauthenticated),
            "no such user"
        );
        assert_eq!(
            code(gate.admit(acting("root-token", "root", "b/1")).await),
            Some(ErrorCode::Unauthenticated),
            "the root is no user to act as"
        );
        assert_eq!(
            code(gate.admit(acting("bob-token", "alice", "a/1")).await),
            Some(ErrorCode::Unauthenticated),
            "a user's token acts as no one"
        );
        assert_eq!(
            code(gate.admit(acting("guess", "alice", "a/1")).await),
            Some(ErrorCode::Unauthenticated),
            "an unknown token acts as no one"
        );
        for malformed in ["ActAs alice", "ActAs  root-token", "ActAsalice root-token", "Basic x"] {
            let mut request = request("/basalt.v1.Kv/Put", None, &put("a/1"));
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, http::HeaderValue::from_static(malformed));
            assert_eq!(
                code(gate.admit(request).await),
                Some(ErrorCode::Unauthenticated),
                "{malformed}"
            );
        }
    }

    #[tokio::test]
    async fn requests_are_refused_without_a_known_token_and_outside_their_grants() {
        let gate = gate_with(
            &[("a", &["write:key:a/", "read:topic:events", "write:queue:a-"])],
            &[("alice", &["a"], "alice-token")],
        );
        let put = |k: &str| pb::KvPutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let path = "/basalt.v1.Kv/Put";
        assert_eq!(
            code(gate.admit(request(path, None, &put("a/1"))).await),
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            code(gate.admit(request(path, Some("guess"), &put("a/1"))).await),
            Some(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            code(gate.admit(request(path, Some("alice-token"), &put("a/1"))).await),
            None
        );
        let refused = gate
            .admit(request(path, Some("alice-token"), &put("b/1")))
            .await
            .expect_err("b/");
        assert!(
            refused.message().contains(r#"lacks write on key "b/1""#),
            "{}",
            refused.message()
        );
        assert_eq!(
            code(gate.admit(request(path, Some("root-token"), &put("b/1"))).await),
            None
        );
        // The body reaches the service as it came, with the identity alongside.
        let (admitted, recheck) = gate
            .admit(request(path, Some("alice-token"), &put("a/1")))
            .await
            .expect("admitted");
        assert!(recheck.is_none(), "a unary call is checked once");
        assert_eq!(
            admitted.extensions().get::<Arc<Identity>>().map(|i| i.user.clone()),
            Some("alice".to_string())
        );
        let bytes = admitted.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(pb::KvPutRequest::decode(&bytes[5..]).expect("decode"), put("a/1"));

        // A fence names a lease: reading whether its grant is live needs read on its name.
        let fenced_put = pb::KvPutRequest {
            header: Some(pb::RequestHeader {
                client_id: vec![1; 16],
                seq: 1,
                first_incomplete_seq: 1,
                fence: Some(pb::Fence {
                    lease: b"b/lock".to_vec(),
                    token: 1,
                }),
            }),
            ..put("a/1")
        };
        assert_eq!(
            code(gate.admit(request(path, Some("alice-token"), &fenced_put)).await),
            Some(ErrorCode::PermissionDenied)
        );

        // A transaction needs what each of its ops and conditions needs.
        let txn = pb::TxnRequest {
            then: vec![pb::TxnOp {
                op: Some(pb::txn_op::Op::Put(put("a/1"))),
            }],
            otherwise: vec![pb::TxnOp {
                op: Some(pb::txn_op::Op::Enqueue(pb::EnqueueRequest {
                    queue: b"b-jobs".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Txn/Commit", Some("alice-token"), &txn))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
        // Reading a topic is not writing it; admin verbs need admin on the cluster.
        let produce = pb::ProduceRequest {
            topic: b"events".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Stream/Produce", Some("alice-token"), &produce))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
        let add = pb::AddNodeRequest::default();
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Cluster/AddNode", Some("alice-token"), &add))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
        // Anyone authenticated may ask for the status; a path with no rule is the root's only.
        let status_request = pb::StatusRequest {};
        assert_eq!(
            code(
                gate.admit(request(
                    "/basalt.v1.Cluster/Status",
                    Some("alice-token"),
                    &status_request
                ))
                .await
            ),
            None
        );
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Kv/Unknown", Some("alice-token"), &status_request))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Kv/Unknown", Some("root-token"), &status_request))
                    .await
            ),
            None
        );
        assert_eq!(gate.counters.unauthenticated.load(Ordering::Relaxed), 2);
        assert_eq!(gate.counters.denied.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn calls_that_send_the_node_s_token_to_named_addresses_are_the_root_s_only() {
        let gate = gate_with(
            &[("admin", &["admin:cluster:", "admin:channel:", "admin:queue:"])],
            &[("ops", &["admin"], "ops-token")],
        );
        let change = pb::ChangeRegionsRequest::default();
        let refused = gate
            .admit(request("/basalt.v1.Cluster/ChangeRegions", Some("ops-token"), &change))
            .await
            .expect_err("root only");
        assert!(refused.message().contains("root token's only"), "{}", refused.message());
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Cluster/ChangeRegions", Some("root-token"), &change))
                    .await
            ),
            None
        );
        // So is adding a member: it would receive the nodes' relays and confirmations.
        let add = pb::AddNodeRequest::default();
        assert_eq!(
            code(
                gate.admit(request("/basalt.v1.Cluster/AddNode", Some("ops-token"), &add))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
        // A redrive moves dead letters back to their source queues: every queue's write.
        let narrow = gate_with(&[("q", &["write:queue:dlq"])], &[("q", &["q"], "q-token")]);
        let redrive = pb::RedriveRequest {
            queue: b"dlq".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            code(
                narrow
                    .admit(request("/basalt.v1.Queue/Redrive", Some("q-token"), &redrive))
                    .await
            ),
            Some(ErrorCode::PermissionDenied)
        );
    }

    #[tokio::test]
    async fn a_bad_body_is_refused_with_a_typed_error() {
        let gate = gate_with(&[], &[]);
        for body in [
            vec![],
            vec![1, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 9, 1],
            vec![0, 0, 0, 0, 2, 0xff, 0xff],
        ] {
            let request = http::Request::builder()
                .uri("http://node/basalt.v1.Kv/Put")
                .header("authorization", "Bearer root-token")
                .body(Body::new(http_body_util::Full::new(Bytes::from(body))))
                .expect("request");
            assert_eq!(code(gate.admit(request).await), Some(ErrorCode::InvalidArgument));
        }
    }

    #[test]
    fn subscriptions_need_the_literal_start_of_their_patterns() {
        assert_eq!(glob_literal_prefix(b"tenant-a.*"), b"tenant-a.");
        assert_eq!(glob_literal_prefix(b"a?b"), b"a");
        assert_eq!(glob_literal_prefix(b"[ab]x"), b"");
        assert_eq!(glob_literal_prefix(b"plain"), b"plain");
        let subscribe = pb::SubscribeRequest {
            channels: vec![b"a.1".to_vec()],
            patterns: vec![b"b.*".to_vec()],
        };
        let grant = Grant::parse("read:channel:a.").expect("grant");
        let needs = subscribe.needs();
        assert!(grant.allows(&needs[0]));
        assert!(!grant.allows(&needs[1]));
    }

    /// Every client RPC path of the proto.
    fn client_rpc_paths() -> Vec<String> {
        let proto = include_str!("../../client/proto/basalt.proto");
        let mut service = "";
        let mut paths = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches(" {").trim();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or_default();
                paths.push(format!("/basalt.v1.{service}/{method}"));
            }
        }
        paths
    }

    proptest::proptest! {
        /// Whatever bytes a request carries, every path's rule answers needs or a typed
        /// refusal (no panic), and a user without grants is never admitted where needs apply.
        #[test]
        fn any_body_on_any_path_is_admitted_or_refused_with_a_type(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let gate = gate_with(&[("none", &[])], &[("nobody", &["none"], "nobody-token")]);
            for path in client_rpc_paths() {
                let mut framed = vec![0u8];
                framed.extend((body.len() as u32).to_be_bytes());
                framed.extend(&body);
                for (token, raw) in [("root-token", &body), ("nobody-token", &framed)] {
                    let request = http::Request::builder()
                        .uri(format!("http://node{path}"))
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::new(http_body_util::Full::new(Bytes::from(raw.clone()))))
                        .expect("request");
                    let result = runtime.block_on(gate.admit(request));
                    if let Some(code) = code(result) {
                        proptest::prop_assert!(
                            matches!(code, ErrorCode::InvalidArgument | ErrorCode::PermissionDenied),
                            "{path}: {code:?}"
                        );
                    }
                }
            }
        }
    }

    /// Every RPC of the client API has a rule: a new one without a rule would be root-only, and
    /// this names it.
    #[test]
    fn every_client_rpc_has_a_rule() {
        let missing: Vec<String> = client_rpc_paths().into_iter().filter(|p| rule(p).is_none()).collect();
        assert!(!client_rpc_paths().is_empty());
        assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
    }
}
