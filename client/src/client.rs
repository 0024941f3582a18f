//! Connection handling: endpoints, leader tracking, retries with idempotency.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use tonic::Status;

use crate::error::{classify, Attempt, ClientError, ErrorCode};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole milliseconds, rounded up: what is left of a wait, sent on, never shortens it by
/// the fraction of a millisecond spent before the first attempt.
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A request the server may hold on purpose for the wait it carries (a long-poll): what
/// [`Client::unary_waiting`] sends, each attempt asking for what is left of the caller's wait.
pub(crate) trait LongPoll {
    /// Sets the wait this attempt asks the server for.
    fn set_wait(&mut self, wait: Duration);
}

impl LongPoll for pb::ReceiveRequest {
    fn set_wait(&mut self, wait: Duration) {
        self.wait_ms = millis_up(wait);
    }
}

impl LongPoll for pb::FetchRequest {
    fn set_wait(&mut self, wait: Duration) {
        self.wait_ms = millis_up(wait);
    }
}

impl LongPoll for pb::LeaseAcquireRequest {
    fn set_wait(&mut self, wait: Duration) {
        self.wait_ms = millis_up(wait);
    }
}

impl LongPoll for pb::CachePurgeRequest {
    /// At least 1 ms: a purge's 0 asks for the server's default wait, not none.
    fn set_wait(&mut self, wait: Duration) {
        self.wait_ms = millis_up(wait).max(1);
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may take in total, retries included.
    pub request_timeout: Duration,
    /// How long one attempt on one node may take.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Coalesce concurrent KV puts and deletes of this client (and its clones) into batches:
    /// one RPC and one Raft entry for many writes, each still answered on its own. Writes of a
    /// fenced handle ([`Client::fenced`]) always go one by one.
    pub coalesce_writes: bool,
    /// Coalesce concurrent single rate checks of this client (and its clones) into batches, as
    /// KV writes: one RPC and one Raft entry for many callers' checks, each decided on its own.
    /// Checks of a fenced handle, and [`crate::RateLimiter::check_many`], go as they are.
    pub coalesce_rate_checks: bool,
    /// With coalescing: how many batches (of writes; of checks) may be on their way at once.
    pub write_batches_in_flight: usize,
    /// The cluster's max clock offset (`--max-clock-offset-ms`): a lease grant's
    /// [`crate::LeaseGrant::deadline`] keeps twice this much margin.
    pub max_clock_offset: Duration,
    /// Talk only to the endpoints given, never to an address a node names as the leader's: for
    /// a client that reaches the cluster through a proxy, a tunnel or a load balancer, where the
    /// nodes' own addresses are not its way in (or not reachable at all). A leader hint naming
    /// one of the given endpoints is still followed; any other makes the client try its next
    /// endpoint. Default false: the client follows the leader wherever it is.
    pub pin_endpoints: bool,
    /// The bearer token every call carries (`authorization: Bearer ...`), for a cluster that
    /// authenticates its clients (docs/security.md). `None`: calls carry no credentials.
    pub token: Option<basalt_auth::token::Token>,
    /// TLS for a cluster whose client doors run it (`[tls]`, docs/security.md):
    /// `Some(TlsConnector::Client(ClientTls::from_files(ca, None)?))` trusts the nodes'
    /// certificates of that CA; with a certificate of the nodes' client CA (`--tls-client-ca`)
    /// (`ClientTls::from_files(ca, Some((cert, key)))`) the client authenticates as the user its
    /// common name names, without a token. `None`: plain TCP.
    pub tls: Option<basalt_tls::Connector>,
    /// The node this client runs inside, reached through its in-process channel wherever the
    /// client would dial the node's address (for a client inside a node: its RESP door). `None`:
    /// every address is dialled.
    pub in_process: Option<InProcessNode>,
}

/// A node reached without the network: calls to any of `addrs` go to `service` instead.
#[derive(Clone)]
pub struct InProcessNode {
    /// Every client address the cluster may name the node by (in its leader hints): the first is
    /// where a client built with this node as its endpoint starts.
    pub addrs: Vec<String>,
    /// The node's client API as a service called in this process (no connection, no HTTP/2
    /// framing). It must enforce each request's `grpc-timeout`, as a dialled channel does.
    pub service: Transport,
}

impl std::fmt::Debug for InProcessNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessNode")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// How calls reach one node: a dialled channel, or the node's own service in-process.
pub type Transport = tower::util::BoxCloneSyncService<
    tonic::codegen::http::Request<tonic::body::Body>,
    tonic::codegen::http::Response<tonic::body::Body>,
    TransportError,
>;

/// Why a [`Transport`] did not deliver a call: the channel's or the in-process service's own
/// error, as its source (tonic finds a status, a timeout or a refused connection in the chain and
/// answers the call with the code it would give the bare error).
#[derive(Debug)]
pub struct TransportError(pub tonic::codegen::StdError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            coalesce_writes: true,
            coalesce_rate_checks: true,
            write_batches_in_flight: 2,
            max_clock_offset: Duration::from_millis(500),
            pin_endpoints: false,
            token: None,
            tls: None,
            in_process: None,
        }
    }
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Linearizable: the leader confirms its leadership with a quorum (read index) first.
    #[default]
    Linearizable,
    /// Served by whichever node answers, from its local state: may lag behind recent writes.
    Stale,
}

struct Node {
    addr: String,
    channel: Transport,
}

struct Inner {
    nodes: RwLock<Vec<Node>>,
    leader: AtomicUsize,
    client_id: u128,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    options: ClientOptions,
    /// With regions: this client's region, and every region's nodes.
    place: Option<Arc<RegionPlace>>,
    /// KV writes waiting to leave in a batch.
    coalescer: crate::coalesce::Coalescer,
    /// Rate checks waiting to leave in a batch, and their byte budget.
    check_coalescer: crate::coalesce::CheckCoalescer,
    check_budget: basalt_batching::QueueBudget,
    coalesce_budget: basalt_batching::QueueBudget,
    /// Rate-limit keys this client decides alone while the cluster is unreachable.
    shadow: Mutex<crate::rate_shadow::ShadowTable>,
    /// The options' token as a header value.
    token: Option<Arc<AuthHeader>>,
}

/// Every region of a multi-region deployment by name, with the addresses of its nodes.
pub type RegionMap = BTreeMap<String, Vec<String>>;

struct RegionPlace {
    region: String,
    regions: RegionMap,
}

/// A handle to a Basalt cluster. Cheap to clone; clones share connections and the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Sent with every mutation of this handle (see [`Client::fenced`]).
    fence: Option<pb::Fence>,
    /// This handle's credentials when they are not the options' (see [`Client::with_token`]).
    token: Option<Arc<AuthHeader>>,
}

/// The `authorization` value of a bearer token, marked sensitive (never logged by tonic).
type AuthHeader = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

fn auth_header(token: &basalt_auth::token::Token) -> Result<AuthHeader, ClientError> {
    let mut value: AuthHeader = format!("Bearer {}", token.as_str())
        .parse()
        .map_err(|_| ClientError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Removes a seq from the in-flight set when its call ends, whatever the outcome.
pub(crate) struct SeqGuard {
    inner: Arc<Inner>,
    seq: u64,
}

impl Drop for SeqGuard {
    fn drop(&mut self) {
        // A poisoned lock still holds a consistent set (insert and remove are single steps): a
        // seq left in it would hold every later floor down, and the server would keep every
        // answer from then on.
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.remove(&self.seq);
    }
}

/// The channel calls to `addr` go through: the in-process node's own one for its address, else
/// a lazy connection to it.
fn channel_for(addr: &str, options: &ClientOptions) -> Result<Transport, ClientError> {
    if let Some(node) = options
        .in_process
        .as_ref()
        .filter(|node| node.addrs.iter().any(|a| a == addr))
    {
        return Ok(node.service.clone());
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::InvalidEndpoint {
            endpoint: addr.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = basalt_tls::lazy_channel(endpoint, addr, options.tls.as_ref(), options.connect_timeout);
    Ok(Transport::new(tower::ServiceExt::map_err(channel, |e| {
        TransportError(tonic::codegen::StdError::from(e))
    })))
}

impl Client {
    /// Connects to a cluster through any of its nodes (`host:port`) and finds the leader.
    ///
    /// # Errors
    /// [`ClientError::NoEndpoints`], [`ClientError::InvalidEndpoint`], or
    /// [`ClientError::Unavailable`] when no node answers within the request timeout.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let client = Self::lazy(endpoints, options)?;
        let status = client.cluster_status().await?;
        if !status.leader_addr.is_empty() {
            let _ = client.follow_leader(&status.leader_addr);
        }
        Ok(client)
    }

    /// Builds a client without contacting the cluster.
    pub fn lazy<I, S>(endpoints: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::build(endpoints, options, None)
    }

    fn build<I, S>(endpoints: I, options: ClientOptions, place: Option<Arc<RegionPlace>>) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nodes = Vec::new();
        for endpoint in endpoints {
            let addr = endpoint.as_ref().trim().to_string();
            if addr.is_empty() {
                continue;
            }
            nodes.push(Node {
                channel: channel_for(&addr, &options)?,
                addr,
            });
        }
        if nodes.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let client_id = u128::from(rand::random::<u64>()) << 64 | u128::from(rand::random::<u64>());
        let token = options.token.as_ref().map(auth_header).transpose()?.map(Arc::new);
        Ok(Client {
            inner: Arc::new(Inner {
                nodes: RwLock::new(nodes),
                leader: AtomicUsize::new(0),
                client_id,
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
                options,
                place,
                coalescer: Default::default(),
                check_coalescer: Default::default(),
                check_budget: basalt_batching::QueueBudget::new(crate::coalesce::QUEUED_CHECK_BYTES_MAX),
                coalesce_budget: basalt_batching::QueueBudget::new(crate::coalesce::QUEUED_BYTES_MAX),
                shadow: Mutex::default(),
                token,
            }),
            fence: None,
            token: None,
        })
    }

    /// Connects to region `region` of a multi-region deployment (`regions`: every region's nodes,
    /// as in `basalt dev --regions`' cluster file or a topology). Every call goes to that region:
    /// reads and region-local writes (KV, counters, rate limits, streams) are served there; writes
    /// and linearizable reads of homed data (ledgers, leases, queues) are forwarded by the
    /// region's nodes to the home region (`REGION_UNAVAILABLE` when it is cut off), and stale
    /// reads of it are served from the region's copy. [`Client::region_client`] gives a client of
    /// another region.
    ///
    /// # Errors
    /// [`ClientError::UnknownRegion`], or those of [`Client::connect_with`].
    pub async fn connect_region(
        regions: RegionMap,
        region: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client = Self::lazy_region(
            Arc::new(RegionPlace {
                region: region.to_string(),
                regions,
            }),
            options,
        )?;
        let status = client.cluster_status().await?;
        if !status.leader_addr.is_empty() {
            let _ = client.follow_leader(&status.leader_addr);
        }
        Ok(client)
    }

    fn lazy_region(place: Arc<RegionPlace>, options: ClientOptions) -> Result<Client, ClientError> {
        let Some(endpoints) = place.regions.get(&place.region) else {
            return Err(ClientError::UnknownRegion {
                region: place.region.clone(),
                known: place.regions.keys().cloned().collect(),
            });
        };
        Self::build(endpoints, options, Some(place.clone()))
    }

    /// The region this client talks to, if it was connected with [`Client::connect_region`].
    pub fn region(&self) -> Option<&str> {
        self.inner.place.as_ref().map(|p| p.region.as_str())
    }

    /// A client of another region of the same deployment, with the same options and a session of
    /// its own; it connects on first use.
    ///
    /// # Errors
    /// [`ClientError::UnknownRegion`] (also for a client not connected with
    /// [`Client::connect_region`]).
    pub fn region_client(&self, region: &str) -> Result<Client, ClientError> {
        let Some(place) = &self.inner.place else {
            return Err(ClientError::UnknownRegion {
                region: region.to_string(),
                known: Vec::new(),
            });
        };
        Self::lazy_region(
            Arc::new(RegionPlace {
                region: region.to_string(),
                regions: place.regions.clone(),
            }),
            self.inner.options.clone(),
        )
    }

    /// A handle whose every mutation carries the fence `(lease, token)`: the cluster applies it
    /// only while `token` is the live grant of `lease`, and refuses it with `STALE_FENCE` once the
    /// lease expired, was released or was granted again. Shares this client's connections.
    pub fn fenced(&self, lease: impl Into<Vec<u8>>, token: u64) -> Client {
        Client {
            inner: self.inner.clone(),
            fence: Some(pb::Fence {
                lease: lease.into(),
                token,
            }),
            token: self.token.clone(),
        }
    }

    /// A handle whose every call carries `token` instead of the options' (a server relaying
    /// many callers' requests, each with its own credentials). Shares this client's connections
    /// and session; its writes and rate checks are never coalesced with other handles' (a batch
    /// goes with one token).
    ///
    /// # Errors
    /// [`ClientError::InvalidToken`] when the token cannot be a header value.
    pub fn with_token(&self, token: &basalt_auth::token::Token) -> Result<Client, ClientError> {
        Ok(Client {
            inner: self.inner.clone(),
            fence: self.fence.clone(),
            token: Some(Arc::new(auth_header(token)?)),
        })
    }

    /// A handle whose every call, made with this handle's token (which must be the root's),
    /// runs as `user`: with that user's grants and nothing more (the server refuses it from any
    /// other token, and for a name that is no user, `UNAUTHENTICATED`). For a front door that
    /// authenticated the user itself, as a node's RESP door does a client certificate. The
    /// calls carry `authorization: ActAs USER TOKEN`, a scheme a node of an earlier build
    /// refuses rather than run as the root. Shares this client's connections and session; its
    /// writes and rate checks are never coalesced with other handles'. A later
    /// [`Client::with_token`] replaces it.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` when this handle has no token, or `user` is not a user name (letters,
    /// digits, `.`, `_`, `-`, `@`; not `root`).
    pub fn acting_as(&self, user: &str) -> Result<Client, ClientError> {
        let invalid = |message: String| ClientError::Rejected {
            code: ErrorCode::InvalidArgument,
            message,
        };
        if basalt_auth::check_user_name(user).is_err() {
            return Err(invalid(format!("{user:?} is not a user name")));
        }
        let token = self
            .token
            .as_ref()
            .or(self.inner.token.as_ref())
            .and_then(|header| Some(header.to_str().ok()?.strip_prefix("Bearer ")?.to_string()))
            .ok_or_else(|| invalid("acting as a user needs the root token".into()))?;
        let mut value: AuthHeader = format!("{} {user} {token}", crate::ACT_AS_SCHEME)
            .parse()
            .map_err(|_| ClientError::InvalidToken)?;
        value.set_sensitive(true);
        Ok(Client {
            inner: self.inner.clone(),
            fence: self.fence.clone(),
            token: Some(Arc::new(value)),
        })
    }

    /// A transaction across data types: conditions, then one of two op lists, all or nothing.
    pub fn txn(&self) -> crate::TxnBuilder {
        crate::TxnBuilder::new(self.clone())
    }

    pub fn kv(&self) -> crate::Kv {
        crate::Kv { client: self.clone() }
    }

    pub fn counter(&self, key: impl Into<Vec<u8>>) -> crate::CounterHandle {
        crate::CounterHandle {
            client: self.clone(),
            key: key.into(),
        }
    }

    /// Batched counter changes and reads.
    pub fn counters(&self) -> crate::Counters {
        crate::Counters { client: self.clone() }
    }

    /// The edge cache: purges and counters.
    pub fn cache(&self) -> crate::Cache {
        crate::Cache { client: self.clone() }
    }

    /// The local shadow limiter of this client (and its clones), locked. A poisoned lock still
    /// holds whole states (each update is one insert).
    pub(crate) fn shadow(&self) -> std::sync::MutexGuard<'_, crate::rate_shadow::ShadowTable> {
        self.inner
            .shadow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn rate_limiter(&self) -> crate::RateLimiter {
        crate::RateLimiter { client: self.clone() }
    }

    pub fn lease(&self, name: impl Into<Vec<u8>>) -> crate::LeaseHandle {
        crate::LeaseHandle {
            client: self.clone(),
            name: name.into(),
        }
    }

    pub fn ledger(&self) -> crate::Ledger {
        crate::Ledger { client: self.clone() }
    }

    pub fn queue(&self, name: impl Into<Vec<u8>>) -> crate::QueueHandle {
        crate::QueueHandle {
            client: self.clone(),
            name: name.into(),
        }
    }

    /// Topics, produce and fetch, consumer groups.
    pub fn streams(&self) -> crate::Streams {
        crate::Streams { client: self.clone() }
    }

    pub fn pubsub(&self) -> crate::PubSub {
        crate::PubSub { client: self.clone() }
    }

    /// The addresses this client knows, leader first.
    pub fn endpoints(&self) -> Vec<String> {
        let nodes = self.inner.nodes.read().expect("nodes lock");
        let leader = self.inner.leader.load(Ordering::Relaxed) % nodes.len();
        let mut out = vec![nodes[leader].addr.clone()];
        out.extend(
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .map(|(_, n)| n.addr.clone()),
        );
        out
    }

    /// Makes `addr` the node calls go to first, adding it unless the endpoints are pinned;
    /// whether it did.
    fn follow_leader(&self, addr: &str) -> bool {
        let mut nodes = self.inner.nodes.write().expect("nodes lock");
        let position = match nodes.iter().position(|n| n.addr == addr) {
            Some(p) => p,
            // Pinned: the hint is not a way in (the caller moves to the next endpoint).
            None if self.inner.options.pin_endpoints => return false,
            None => match channel_for(addr, &self.inner.options) {
                Ok(channel) => {
                    nodes.push(Node {
                        addr: addr.to_string(),
                        channel,
                    });
                    nodes.len() - 1
                }
                Err(_) => return false,
            },
        };
        self.inner.leader.store(position, Ordering::Relaxed);
        true
    }

    /// Whether `addr` is one of the nodes this client talks to.
    fn follows(&self, addr: &str) -> bool {
        self.inner
            .nodes
            .read()
            .expect("nodes lock")
            .iter()
            .any(|n| n.addr == addr)
    }

    fn current(&self) -> (usize, Transport) {
        let nodes = self.inner.nodes.read().expect("nodes lock");
        let i = self.inner.leader.load(Ordering::Relaxed) % nodes.len();
        (i, nodes[i].channel.clone())
    }

    fn rotate_from(&self, failed: usize) {
        let len = self.inner.nodes.read().expect("nodes lock").len();
        let _ = self
            .inner
            .leader
            .compare_exchange(failed, (failed + 1) % len, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A fresh `(client_id, seq)` header for a mutation, kept in flight until the guard drops.
    /// Whether this handle's KV writes are coalesced into batches.
    pub(crate) fn coalesces_writes(&self) -> bool {
        self.inner.options.coalesce_writes && self.fence.is_none() && self.token.is_none()
    }

    pub(crate) fn coalesce_budget(&self) -> &basalt_batching::QueueBudget {
        &self.inner.coalesce_budget
    }

    pub(crate) fn coalescer(&self) -> &crate::coalesce::Coalescer {
        &self.inner.coalescer
    }

    pub(crate) fn check_coalescer(&self) -> &crate::coalesce::CheckCoalescer {
        &self.inner.check_coalescer
    }

    pub(crate) fn check_budget(&self) -> &basalt_batching::QueueBudget {
        &self.inner.check_budget
    }

    /// Whether this handle's single rate checks are coalesced into batches.
    pub(crate) fn coalesces_checks(&self) -> bool {
        self.inner.options.coalesce_rate_checks && self.fence.is_none() && self.token.is_none()
    }

    pub(crate) fn max_clock_offset(&self) -> Duration {
        self.inner.options.max_clock_offset
    }

    pub(crate) fn write_batches_in_flight(&self) -> usize {
        self.inner.options.write_batches_in_flight.max(1)
    }

    /// This client without a fence: what a batch of many callers' writes is sent with.
    pub(crate) fn unfenced(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            fence: None,
            token: self.token.clone(),
        }
    }

    /// The session header of a new request: the next seq, and the lowest seq still in flight as
    /// the floor below which the server may forget this client's answers.
    ///
    /// Contract: no header carries a floor above a seq that is still in flight. The seq is taken
    /// and registered as in flight under one lock: taken before it, another request could take a
    /// later seq, find the earlier one not yet registered, and send a floor above it; the server
    /// would then refuse the earlier request as `SESSION_EXPIRED`.
    pub(crate) fn header(&self) -> (pb::RequestHeader, SeqGuard) {
        let (seq, first_incomplete_seq) = {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            in_flight.insert(seq);
            (seq, *in_flight.first().expect("just inserted"))
        };
        let header = pb::RequestHeader {
            client_id: self.inner.client_id.to_be_bytes().to_vec(),
            seq,
            first_incomplete_seq,
            fence: self.fence.clone(),
        };
        (
            header,
            SeqGuard {
                inner: self.inner.clone(),
                seq,
            },
        )
    }

    /// A request for one attempt; `wait` is how long the server may hold it on purpose (long-poll).
    pub(crate) fn request<T>(&self, message: T, deadline: Instant, wait: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.token.as_ref().or(self.inner.token.as_ref()) {
            request.metadata_mut().insert("authorization", AuthHeader::clone(token));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        request.set_timeout(
            remaining
                .min(self.inner.options.attempt_timeout + wait)
                .max(Duration::from_millis(1)),
        );
        request
    }

    /// Runs `attempt` against the leader, following redirects and retrying on failures until the
    /// request timeout. `mutation` marks calls whose outcome is unknown if every attempt fails
    /// after reaching a node.
    /// `wait` extends the deadline for calls the server may hold on purpose.
    pub(crate) async fn call<T, F, Fut>(&self, mutation: bool, wait: Duration, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(Transport, Instant) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.request_timeout + wait;
        let mut attempts = 0u32;
        let mut reached = false;
        let mut pause = Duration::from_millis(10);
        loop {
            attempts += 1;
            let (position, channel) = self.current();
            let last_error = match attempt(channel, deadline).await {
                Ok(value) => return Ok(value),
                Err(status) => match classify(&status, mutation) {
                    Attempt::Redirect(Some(leader)) => {
                        if self.follow_leader(&leader) && Instant::now() < deadline {
                            continue;
                        }
                        if !self.follows(&leader) {
                            // Pinned, and the leader is not among the endpoints: the next one.
                            self.rotate_from(position);
                        }
                        format!("redirected to {leader}")
                    }
                    Attempt::Redirect(None) => {
                        self.rotate_from(position);
                        "no leader known".to_string()
                    }
                    Attempt::Retry { reached: r, message } => {
                        reached |= r;
                        self.rotate_from(position);
                        message
                    }
                    Attempt::Fail(e) => return Err(refusal_after_attempts(e, mutation && reached, attempts)),
                },
            };
            let now = Instant::now();
            if now + pause >= deadline {
                return Err(ClientError::Unavailable {
                    attempts,
                    outcome_unknown: mutation && reached,
                    last_error,
                });
            }
            tokio::time::sleep(pause).await;
            // Short pauses: after a leader dies, followers point at it until the election ends (250-500 ms),
            // and a long backoff would only add to that.
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One unary RPC through [`Client::call`]: `rpc` sends the request on a channel; `message` is
    /// resent unchanged on every attempt (so a mutation keeps its `(client_id, seq)`).
    pub(crate) async fn unary<M, R, F, Fut>(&self, mutation: bool, message: M, rpc: F) -> Result<R, ClientError>
    where
        M: Clone,
        F: Fn(Transport, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.call(mutation, Duration::ZERO, |channel, deadline| {
            let reply = rpc(channel, self.request(message.clone(), deadline, Duration::ZERO));
            async move { reply.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// [`Client::unary`] for a long-poll: a call the server may hold for up to `wait`, plus
    /// `reply_margin` it may take on top to answer.
    ///
    /// Contract: every attempt asks for what is left of the caller's wait, counted from the
    /// first attempt. A retry (another node, after a stop or a failover) that asked for the whole
    /// wait again would outlive the call's deadline, which counts from the first attempt too,
    /// and end as `Unavailable` (outcome unknown) where the caller expected an answer at the end
    /// of its wait. A retry keeps the message's session (so a mutation replays the first attempt's
    /// answer where it had one); only its wait changes.
    pub(crate) async fn unary_waiting<M, R, F, Fut>(
        &self,
        mutation: bool,
        message: M,
        wait: Duration,
        reply_margin: Duration,
        rpc: F,
    ) -> Result<R, ClientError>
    where
        M: Clone + LongPoll,
        F: Fn(Transport, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let started = Instant::now();
        self.call(mutation, wait + reply_margin, |channel, deadline| {
            let left = wait.saturating_sub(started.elapsed());
            let mut message = message.clone();
            message.set_wait(left);
            let reply = rpc(channel, self.request(message, deadline, left + reply_margin));
            async move { reply.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The status of the node this client currently talks to (normally the leader).
    pub async fn cluster_status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.unary(false, pb::StatusRequest {}, |c, r| async move {
            crate::service_client!(ClusterClient, c).status(r).await
        })
        .await
    }

    /// The status of one specific node, without redirects or retries.
    pub async fn node_status(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        let channel = channel_for(addr, &self.inner.options)?;
        let deadline = Instant::now() + self.inner.options.attempt_timeout;
        crate::service_client!(ClusterClient, channel)
            .status(self.request(pb::StatusRequest {}, deadline, Duration::ZERO))
            .await
            .map(|r| r.into_inner())
            .map_err(one_attempt_failed)
    }

    /// Cross-region replication as the node at `addr` sees it (its region, links, lag and, with
    /// `digest`, a fingerprint of its replicated state). Ask a region's leader for the outgoing
    /// side of its links.
    pub async fn node_regions(&self, addr: &str, digest: bool) -> Result<pb::RegionsResponse, ClientError> {
        let channel = channel_for(addr, &self.inner.options)?;
        let deadline = Instant::now() + self.inner.options.attempt_timeout;
        crate::service_client!(ClusterClient, channel)
            .regions(self.request(pb::RegionsRequest { digest }, deadline, Duration::ZERO))
            .await
            .map(|r| r.into_inner())
            .map_err(one_attempt_failed)
    }

    /// Adds a node that serves Raft on its client port (no `--peer-listen`) as a learner;
    /// returns once it has caught up with the leader's log.
    pub async fn add_node(&self, id: u64, addr: &str) -> Result<Vec<pb::Member>, ClientError> {
        self.add_member(id, addr, None).await
    }

    /// Adds a node as a learner: `addr` is its client address, `peer_addr` its peer listener
    /// (`--peer-listen`), where the members reach it for Raft. Returns once it has caught up with
    /// the leader's log.
    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
        peer_addr: Option<&str>,
    ) -> Result<Vec<pb::Member>, ClientError> {
        let reply = self
            .unary(
                true,
                pb::AddNodeRequest {
                    id,
                    addr: addr.to_string(),
                    peer_addr: peer_addr.unwrap_or_default().to_string(),
                },
                |c, r| async move { crate::service_client!(ClusterClient, c).add_node(r).await },
            )
            .await?;
        Ok(reply.members)
    }

    /// The replicated region topology of the region this client talks to, as the node that
    /// answers has applied it; `None` without regions or before it is committed.
    pub async fn region_topology(&self) -> Result<Option<pb::RegionTopology>, ClientError> {
        let reply = self
            .unary(false, pb::RegionsRequest { digest: false }, |c, r| async move {
                crate::service_client!(ClusterClient, c).regions(r).await
            })
            .await?;
        Ok(reply.topology)
    }

    /// Adds region `name:id` to the replicated region topology of the region this client talks
    /// to (or changes the endpoints of the region known under that id and name). Each endpoint
    /// names a node `CLIENT/PEER` (its feed then goes to the peer listener) or `CLIENT`. The new region
    /// has no escrow share of counter bounds: give it room with an escrow transfer
    /// (`CounterHandle::transfer_escrow`). Run it in every region the new one replicates with. `INVALID_TOPOLOGY` when the change does not fit the topology.
    pub async fn add_region(
        &self,
        name: &str,
        id: u16,
        endpoints: &[String],
    ) -> Result<pb::RegionTopology, ClientError> {
        let change = pb::change_regions_request::Change::Add(pb::RegionSpec {
            id: id.into(),
            name: name.to_string(),
            endpoints: endpoints.to_vec(),
        });
        self.change_regions(change).await
    }

    /// Removes region `name` from the replicated region topology of the region this client talks
    /// to: nothing more is shipped to it or merged from it. Its escrow share stays spent.
    pub async fn remove_region(&self, name: &str) -> Result<pb::RegionTopology, ClientError> {
        self.change_regions(pb::change_regions_request::Change::Remove(name.to_string()))
            .await
    }

    async fn change_regions(
        &self,
        change: pb::change_regions_request::Change,
    ) -> Result<pb::RegionTopology, ClientError> {
        self.unary(
            true,
            pb::ChangeRegionsRequest { change: Some(change) },
            |c, r| async move { crate::service_client!(ClusterClient, c).change_regions(r).await },
        )
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<Vec<pb::Member>, ClientError> {
        let reply = self
            .unary(true, pb::PromoteRequest { id }, |c, r| async move {
                crate::service_client!(ClusterClient, c).promote(r).await
            })
            .await?;
        Ok(reply.members)
    }

    /// Removes a node (voter or learner) from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<Vec<pb::Member>, ClientError> {
        let reply = self
            .unary(true, pb::RemoveNodeRequest { id }, |c, r| async move {
                crate::service_client!(ClusterClient, c).remove_node(r).await
            })
            .await?;
        Ok(reply.members)
    }
}

/// The error of a call made to one node, once, without redirects or retries (status queries).
fn one_attempt_failed(status: tonic::Status) -> ClientError {
    ClientError::Unavailable {
        attempts: 1,
        outcome_unknown: false,
        last_error: status.message().to_string(),
    }
}

/// What a refusal means once an earlier attempt of the same mutation may have applied (it reached
/// a node and its answer was lost): a refusal speaks only for its own attempt. It may come from a
/// check the receiving node makes before proposing (a record it cannot read, a topology it has not
/// committed, a home region it cannot reach), which says nothing of the earlier attempt; and a
/// refusal the state machine saved for the earlier attempt cannot be told apart from one. So every
/// refusal then is "outcome unknown", never "nothing changed".
fn refusal_after_attempts(e: ClientError, earlier_may_have_applied: bool, attempts: u32) -> ClientError {
    match e {
        // The home region could not be reached this time: unavailable, as the earlier attempts.
        ClientError::Rejected {
            code: ErrorCode::RegionUnavailable,
            message,
        } if earlier_may_have_applied => ClientError::Unavailable {
            attempts,
            outcome_unknown: true,
            last_error: message,
        },
        ClientError::Rejected { code, message } if earlier_may_have_applied => ClientError::OutcomeUnknown {
            code,
            message: format!("an earlier attempt may have applied; this one was refused: {message}"),
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    /// What is left of a long-poll's wait is sent rounded up to whole milliseconds, and a purge
    /// never asks for 0 (its "server default"), so that no attempt waits less than the caller
    /// asked, and a spent wait is sent as none.
    #[test]
    fn a_long_polls_wait_is_sent_rounded_up() {
        let mut receive = pb::ReceiveRequest::default();
        for (left, sent) in [
            (0, 0),
            (1, 1),
            (999_999, 1),
            (1_000_000, 1),
            (1_500_000, 2),
            (8_000_000_000, 8_000),
        ] {
            receive.set_wait(Duration::from_nanos(left));
            assert_eq!(receive.wait_ms, sent, "{left} ns left");
        }
        let mut purge = pb::CachePurgeRequest::default();
        purge.set_wait(Duration::ZERO);
        assert_eq!(purge.wait_ms, 1);
    }

    #[tokio::test]
    async fn a_pinned_client_never_adds_the_address_a_leader_hint_names() {
        let pinned = ClientOptions {
            pin_endpoints: true,
            ..ClientOptions::default()
        };
        let client = Client::lazy(["127.0.0.1:1", "127.0.0.1:2"], pinned).expect("lazy");
        assert!(!client.follow_leader("127.0.0.1:9"));
        assert!(!client.follows("127.0.0.1:9"));
        assert_eq!(client.endpoints(), ["127.0.0.1:1", "127.0.0.1:2"]);
        // A hint naming a given endpoint is followed.
        assert!(client.follow_leader("127.0.0.1:2"));
        assert_eq!(client.endpoints(), ["127.0.0.1:2", "127.0.0.1:1"]);

        let free = Client::lazy(["127.0.0.1:1"], ClientOptions::default()).expect("lazy");
        assert!(free.follow_leader("127.0.0.1:9"));
        assert_eq!(free.endpoints(), ["127.0.0.1:9", "127.0.0.1:1"]);
    }

    #[test]
    fn a_refusal_after_an_attempt_that_may_have_applied_is_outcome_unknown() {
        for code in [
            ErrorCode::RegionUnavailable,
            ErrorCode::CorruptValue,
            ErrorCode::InvalidArgument,
        ] {
            let refused = || ClientError::Rejected {
                code,
                message: "refused".into(),
            };
            assert!(
                matches!(
                    refusal_after_attempts(refused(), false, 1),
                    ClientError::Rejected { .. }
                ),
                "{code:?} on a first attempt is a refusal"
            );
            let unknown = refusal_after_attempts(refused(), true, 3);
            let expected = if code == ErrorCode::RegionUnavailable {
                matches!(
                    unknown,
                    ClientError::Unavailable {
                        attempts: 3,
                        outcome_unknown: true,
                        ..
                    }
                )
            } else {
                matches!(unknown, ClientError::OutcomeUnknown { code: c, .. } if c == code)
            };
            assert!(expected, "{code:?} after an attempt that may have applied: {unknown:?}");
        }
    }

    use std::sync::atomic::AtomicBool;

    use super::*;

    /// The floor a header carries (`first_incomplete_seq`) tells the server it may forget the
    /// answers of every lower seq: each of them must be complete by then. Many threads take
    /// headers from one client at once and each checks, on receiving its header, that every seq
    /// below its floor is done; a seq is marked done before its guard is dropped. When the seq
    /// was taken before the in-flight set was locked, a header could carry a floor above a seq
    /// another thread had taken but not yet registered: that request was then refused by the
    /// server as `SESSION_EXPIRED` (issue 16, part 1).
    #[test]
    fn no_header_carries_a_floor_above_a_seq_still_in_flight() {
        const THREADS: usize = 8;
        const HEADERS_PER_THREAD: usize = 20_000;
        // Lazy channels need a runtime to be made in; nothing is ever sent.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in_runtime = runtime.enter();
        let client = Client::lazy(["127.0.0.1:1"], ClientOptions::default()).expect("client");
        let done: Arc<Vec<AtomicBool>> = Arc::new(
            (0..=THREADS * HEADERS_PER_THREAD + 1)
                .map(|_| AtomicBool::new(false))
                .collect(),
        );
        let violations = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (client, done, violations) = (client.clone(), done.clone(), violations.clone());
                std::thread::spawn(move || {
                    for _ in 0..HEADERS_PER_THREAD {
                        let (header, guard) = client.header();
                        assert!(header.first_incomplete_seq <= header.seq);
                        // Only the lowest seqs need checking: a violation is a floor just above
                        // a seq another thread still holds.
                        let lowest = header.first_incomplete_seq.saturating_sub(64).max(1);
                        if (lowest..header.first_incomplete_seq).any(|s| !done[s as usize].load(Ordering::SeqCst)) {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        done[header.seq as usize].store(true, Ordering::SeqCst);
                        drop(guard);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(
            violations.load(Ordering::Relaxed),
            0,
            "headers carried a floor above a seq still in flight"
        );
    }
}
