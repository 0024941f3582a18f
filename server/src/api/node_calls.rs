//! The nodes' own calls to each other within a region, besides Raft (`server/proto/node.proto`):
//! pub/sub relays, edge-cache purge confirmations and counters, and a purge a follower's HTTP
//! endpoint hands to its leader.
//!
//! They are served where Raft is, so they travel on the peer listener under its mutual TLS, and
//! through the fault harness's link proxies (`peer_routes`) as Raft does: a partition cuts them
//! too. A client door never serves them, and they never carry a client's credentials: a member
//! is who completes the peer listener's mutual TLS (docs/security.md). Every request names this
//! node's cluster id and every reply the callee's, so a node of another cluster (a wrong address
//! in the membership) is refused, with a log line on both sides, as Raft is.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_client::pb as client_pb;
use basalt_raft::cluster_guard::{ClusterGuard, Side};
use basalt_raft::member_addr::MemberAddr;
use basalt_tls::NodeTls;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::cache::CacheService;
use crate::limits::{PEER_CONNECT_TIMEOUT, PURGE_CONFIRM_WAIT_MAX};
use basalt_raft::limits::KEEP_ALIVE_INTERVAL;

pub mod pb {
    tonic::include_proto!("basalt.node");
}

use pb::node_client::NodeClient;
use pb::node_server::{Node, NodeServer};

/// How this node calls the other members: where its Raft reaches them (their route, else their
/// peer address, else, for a member listed without one, their client address), with the peer
/// listener's mutual TLS when the node has it. One channel per address, connected on first use.
pub struct NodeLinks {
    routes: Arc<BTreeMap<u64, String>>,
    tls: Option<basalt_tls::Connector>,
    cluster: Arc<ClusterGuard>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Calls that failed (unreachable, too slow, refused), for `/metrics`.
    failures: AtomicU64,
}

impl NodeLinks {
    pub fn new(routes: BTreeMap<u64, String>, tls: Option<Arc<NodeTls>>, cluster: Arc<ClusterGuard>) -> NodeLinks {
        NodeLinks {
            routes: Arc::new(routes),
            tls: tls.map(basalt_tls::Connector::Node),
            cluster,
            channels: Mutex::default(),
            failures: AtomicU64::new(0),
        }
    }

    /// Calls to other members that failed since the node started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Where node `id`, which the membership lists as `membership_addr`, takes the nodes' calls:
    /// where Raft reaches it.
    pub fn addr(&self, id: u64, membership_addr: &str) -> String {
        if let Some(route) = self.routes.get(&id) {
            return route.clone();
        }
        match MemberAddr::parse(membership_addr) {
            Ok(member) => member.raft().to_string(),
            // Dialing it fails, and the failure names the address.
            Err(_) => membership_addr.to_string(),
        }
    }

    /// Where `member`, another node of the region, takes the nodes' calls.
    pub fn member_addr(&self, member: &client_pb::Member) -> String {
        if let Some(route) = self.routes.get(&member.id) {
            return route.clone();
        }
        match member.peer_addr.is_empty() {
            true => member.addr.clone(),
            false => member.peer_addr.clone(),
        }
    }

    /// Delivers a publish to the subscribers of the node at `addr`; how many it reached.
    pub async fn relay(&self, addr: &str, channel: &[u8], payload: &[u8], timeout: Duration) -> Result<u32, Status> {
        let message = pb::RelayRequest {
            channel: channel.to_vec(),
            payload: payload.to_vec(),
        };
        self.call(addr, timeout, message, |mut c, r| async move { c.relay(r).await })
            .await
            .map(|reply| reply.receivers)
    }

    /// How far the edge of the node at `addr` has applied purges, once it has applied `seq` or
    /// `wait` has passed (its answer gets `margin` more to arrive).
    pub async fn await_purge(
        &self,
        addr: &str,
        seq: u64,
        wait: Duration,
        margin: Duration,
    ) -> Result<pb::AwaitPurgeResponse, Status> {
        let message = pb::AwaitPurgeRequest {
            seq,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        self.call(addr, wait + margin, message, |mut c, r| async move {
            c.await_purge(r).await
        })
        .await
    }

    /// The edge counters of the node at `addr`.
    pub async fn cache_stats(&self, addr: &str, timeout: Duration) -> Result<client_pb::NodeCacheStats, Status> {
        self.call(addr, timeout, pb::CacheStatsRequest {}, |mut c, r| async move {
            c.cache_stats(r).await
        })
        .await
    }

    /// Hands a purge to the leader at `addr`, which proposes it and waits for its confirmations.
    pub async fn purge(
        &self,
        addr: &str,
        request: client_pb::CachePurgeRequest,
        timeout: Duration,
    ) -> Result<client_pb::CachePurgeResponse, Status> {
        self.call(addr, timeout, request, |mut c, r| async move { c.purge(r).await })
            .await
    }

    /// One call to the node at `addr`, answered within `timeout` (the deadline also travels in
    /// the request, so the callee gives up too); its reply, unless it names another cluster.
    /// A failure is counted; one that may mean a dead connection (unreachable, no answer in
    /// time) drops the address's channel, so the next call connects afresh.
    async fn call<M, T, F, Fut>(&self, addr: &str, timeout: Duration, message: M, call: F) -> Result<T, Status>
    where
        F: FnOnce(NodeClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let reply = self.call_once(addr, timeout, message, call).await;
        if let Err(status) = &reply {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
                self.channels
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(addr);
            }
        }
        reply
    }

    async fn call_once<M, T, F, Fut>(&self, addr: &str, timeout: Duration, message: M, call: F) -> Result<T, Status>
    where
        F: FnOnce(NodeClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = NodeClient::new(self.channel(addr)?);
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        self.cluster.name(request.metadata_mut());
        let reply = match tokio::time::timeout(timeout, call(client, request)).await {
            Ok(reply) => reply,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "{addr} did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        let metadata = match &reply {
            Ok(response) => response.metadata(),
            Err(status) => status.metadata(),
        };
        // Only checked: a node takes its id from a leader's append, never from a reply.
        if let Err(refusal) = self.cluster.check(metadata, Side::Reply, addr) {
            return Err(Status::failed_precondition(format!("cluster id: {refusal}")));
        }
        reply.map(Response::into_inner)
    }

    /// The channel to `addr`, made on first use and kept: each (re)connection handshakes with
    /// the certificate files as they are then. Pinged while idle, so a connection that died
    /// silently (a host gone, a flow a firewall forgot) is found out within seconds rather than
    /// when TCP gives up.
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad node address {addr:?}: {e}")))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_INTERVAL)
            .keep_alive_while_idle(true);
        let channel = basalt_tls::lazy_channel(endpoint, addr, self.tls.as_ref(), PEER_CONNECT_TIMEOUT);
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// The server side: this node's answers to the other members' calls.
#[derive(Clone)]
pub struct NodeCalls {
    cache: CacheService,
}

impl NodeCalls {
    /// The `Node` gRPC service, for the listener Raft is served on.
    pub fn service(cache: CacheService) -> NodeServer<NodeCalls> {
        // A relay carries one pub/sub message; a purge, a client's request.
        NodeServer::new(NodeCalls { cache }).max_decoding_message_size(basalt_storage::limits::CLIENT_MESSAGE_BYTES_MAX)
    }

    /// Refuses a call naming another cluster (or none, to a node that has an id). A node that
    /// has no id yet (it takes it from its first append, never from these calls) takes every
    /// call: its subscribers, if it has any yet, get the relays of the cluster that is adding it,
    /// and nothing else these calls do changes a node that holds nothing.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let cluster = &self.cache.api.cluster;
        let peer = basalt_tls::remote_addr(request).map_or_else(|| "unknown".to_string(), |a| a.to_string());
        match cluster.check(request.metadata(), Side::Request, &peer) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(refusal.into_status(cluster.id())),
        }
    }

    /// A reply, or a refusal, naming this node's cluster id, for the caller's check.
    fn reply<T>(&self, reply: Result<T, Status>) -> Result<Response<T>, Status> {
        let cluster = &self.cache.api.cluster;
        match reply {
            Ok(message) => {
                let mut response = Response::new(message);
                cluster.name(response.metadata_mut());
                Ok(response)
            }
            Err(mut status) => {
                cluster.name(status.metadata_mut());
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl Node for NodeCalls {
    async fn relay(&self, request: Request<pb::RelayRequest>) -> Result<Response<pb::RelayResponse>, Status> {
        self.admit(&request)?;
        let relay = request.into_inner();
        // The caller checked both before delivering; checked again, as from any caller.
        let delivered = super::pubsub::check_publish(&relay.channel, &relay.payload).map(|()| pb::RelayResponse {
            receivers: self.cache.api.broker.deliver(&relay.channel, &relay.payload),
        });
        self.reply(delivered)
    }

    async fn await_purge(
        &self,
        request: Request<pb::AwaitPurgeRequest>,
    ) -> Result<Response<pb::AwaitPurgeResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let wait = Duration::from_millis(request.wait_ms).min(PURGE_CONFIRM_WAIT_MAX);
        let applied = self.cache.local_progress(request.seq, wait).await;
        self.reply(Ok(pb::AwaitPurgeResponse {
            applied,
            edge: self.cache.edge.is_some(),
        }))
    }

    async fn cache_stats(
        &self,
        request: Request<pb::CacheStatsRequest>,
    ) -> Result<Response<client_pb::NodeCacheStats>, Status> {
        self.admit(&request)?;
        self.reply(Ok(self.cache.local_stats()))
    }

    async fn purge(
        &self,
        request: Request<client_pb::CachePurgeRequest>,
    ) -> Result<Response<client_pb::CachePurgeResponse>, Status> {
        self.admit(&request)?;
        let done = self.cache.purge(request.into_inner()).await;
        self.reply(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn links(routes: &[(u64, &str)]) -> (NodeLinks, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = Arc::new(ClusterGuard::open(dir.path().to_path_buf()).expect("guard"));
        let routes = routes.iter().map(|(id, addr)| (*id, addr.to_string())).collect();
        (NodeLinks::new(routes, None, cluster), dir)
    }

    #[test]
    fn a_member_is_called_where_raft_reaches_it() {
        let (links, _dir) = links(&[(3, "127.0.0.1:9003")]);
        let with_peer = MemberAddr {
            client: "127.0.0.1:7001".into(),
            peer: Some("127.0.0.1:8001".into()),
        }
        .to_membership();
        let without_peer = MemberAddr {
            client: "127.0.0.1:7002".into(),
            peer: None,
        }
        .to_membership();
        // Its peer listener; its client port when the membership lists none (it serves Raft
        // and the nodes' calls there); a route (a link proxy) before either.
        assert_eq!(links.addr(1, &with_peer), "127.0.0.1:8001");
        assert_eq!(links.addr(2, &without_peer), "127.0.0.1:7002");
        assert_eq!(links.addr(3, &with_peer), "127.0.0.1:9003");
        let member = |id, addr: &str, peer: &str| client_pb::Member {
            id,
            addr: addr.into(),
            peer_addr: peer.into(),
            ..Default::default()
        };
        assert_eq!(
            links.member_addr(&member(1, "127.0.0.1:7001", "127.0.0.1:8001")),
            "127.0.0.1:8001"
        );
        assert_eq!(links.member_addr(&member(2, "127.0.0.1:7002", "")), "127.0.0.1:7002");
        assert_eq!(
            links.member_addr(&member(3, "127.0.0.1:7003", "127.0.0.1:8003")),
            "127.0.0.1:9003"
        );
    }

    #[tokio::test]
    async fn a_member_that_cannot_be_reached_or_named_is_an_error_and_counted() {
        // A port nothing listens on: refused at once, well within the timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let (links, _dir) = links(&[]);
        let addr = format!("127.0.0.1:{port}");
        let refused = links
            .relay(&addr, b"c", b"m", Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(refused.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
            "{refused:?}"
        );
        let refused = links
            .cache_stats("not an address", Duration::from_secs(2))
            .await
            .expect_err("a bad address");
        assert!(!refused.message().is_empty());
        assert_eq!(links.failures(), 2);
        // The unreachable address's channel was dropped: the next call connects afresh.
        assert!(!links.channels.lock().expect("lock").contains_key(&addr));
    }

    proptest! {
        /// Every request a node takes from another decodes or is refused as a typed error, from
        /// any bytes, without a panic.
        #[test]
        fn any_bytes_decode_or_are_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = pb::RelayRequest::decode(bytes.as_slice());
            let _ = pb::AwaitPurgeRequest::decode(bytes.as_slice());
            let _ = pb::CacheStatsRequest::decode(bytes.as_slice());
            let _ = client_pb::CachePurgeRequest::decode(bytes.as_slice());
        }
    }
}
