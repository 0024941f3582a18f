//! Runs one Basalt node: storage, Raft, the gRPC server (client API + Raft transport), the HTTP
//! endpoints and the background duties of a leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use basalt_client::pb::auth_server::AuthServer;
use basalt_client::pb::cache_server::CacheServer;
use basalt_client::pb::cluster_server::ClusterServer;
use basalt_client::pb::counter_server::CounterServer;
use basalt_client::pb::kv_server::KvServer;
use basalt_client::pb::lease_server::LeaseServer;
use basalt_client::pb::ledger_server::LedgerServer;
use basalt_client::pb::pub_sub_server::PubSubServer;
use basalt_client::pb::queue_server::QueueServer;
use basalt_client::pb::rate_limiter_server::RateLimiterServer;
use basalt_client::pb::stream_server::StreamServer;
use basalt_client::pb::txn_server::TxnServer;
use basalt_raft::cluster_guard::ClusterGuard;
use basalt_raft::log_store::LogStore;
use basalt_raft::network::{NetworkFactory, RaftGrpcService};
use basalt_raft::state_machine::StateMachine;
use basalt_raft::Raft;
use basalt_replication::pb::region_feed_server::RegionFeedServer;
use basalt_storage::cluster_id::ClusterId;
use basalt_storage::command::{Command, KvOp, Op, Response};
use basalt_storage::hlc::Hlc;
use basalt_storage::log::LogOptions;
use basalt_tls::{NodeTls, TlsRole};
use openraft::{BasicNode, SnapshotPolicy};

use crate::api::{Api, ApiCounters};
use crate::config::{ConfigError, NodeConfig};
use crate::limits::{
    CLIENT_DRAIN_MAX, COMPACT_CHANGES_MAX, COMPACT_STEPS_PER_TICK_MAX, DOORS_DRAIN_MAX, HTTP_DRAIN_MAX,
    IN_PROCESS_DRAIN_MAX, LISTEN_BACKLOG, PAGED_SWEEP_MS_PER_TICK_MAX, PAGED_SWEEP_STEPS_PER_TICK_MAX, PEER_DRAIN_MAX,
    RAFT_SHUTDOWN_MAX, SESSION_SWEEP_CLIENTS_MAX, SESSION_SWEEP_EVERY_S,
};
use crate::replication::{FeedReceiver, Homed, Replication};
use crate::stopping::{hand_off_leadership, wait_until, StopClock};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Descriptors(#[from] crate::descriptors::TooFewDescriptors),
    #[error("data directory {path} is in use by another process")]
    DataDirLocked { path: std::path::PathBuf },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    DataDir(#[from] basalt_storage::data_dir::DataDirError),
    #[error("opening the raft log: {0}")]
    Log(#[from] basalt_storage::log::LogError),
    #[error("raft: {0}")]
    Raft(String),
    /// Raft stopped by itself, on a storage error (a failed fsync, a corrupt log): the node
    /// stops too instead of serving without a working log. Restart it to recover from the disk.
    #[error("the Raft core stopped: {0}; the node stops (restart it to recover from what the disk holds)")]
    RaftStopped(String),
    #[error(
        "data directory {data_dir} belongs to cluster {kept}, but --cluster-id names cluster {given}: \
         this node's data is another cluster's"
    )]
    OtherCluster {
        data_dir: std::path::PathBuf,
        kept: basalt_storage::cluster_id::ClusterId,
        given: basalt_storage::cluster_id::ClusterId,
    },
    #[error("peer TLS: {0}")]
    PeerTls(basalt_tls::TlsError),
    #[error("client TLS: {0}")]
    ClientTls(basalt_tls::TlsError),
    #[error("serving gRPC on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        source: tonic::transport::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// Holds an exclusive flock on the data directory for the life of the node.
struct DataDirLock {
    _file: std::fs::File,
}

fn lock_data_dir(dir: &std::path::Path) -> Result<DataDirLock, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(NodeError::DataDirLocked {
            path: dir.to_path_buf(),
        });
    }
    Ok(DataDirLock { _file: file })
}

fn raft_config(config: &NodeConfig) -> Result<openraft::Config, NodeError> {
    let raft_config = openraft::Config {
        cluster_name: "basalt".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries),
        max_in_snapshot_log_to_keep: config.logs_to_keep,
        max_payload_entries: basalt_raft::limits::PAYLOAD_ENTRIES_MAX,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    raft_config.validate().map_err(|e| NodeError::Raft(e.to_string()))
}

/// Runs the node until `shutdown` resolves, then stops it cleanly.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    config.validate()?;
    // First, before the node opens anything: how many descriptors it has, and how many of them
    // its listeners may give to connections.
    let open_files_limit = crate::descriptors::raise_open_files_limit().map_err(io("reading the open files limit"))?;
    let origin_connections = match config.cache.listen {
        Some(_) => (config.cache.origins.len() as u64).saturating_mul(config.cache.origin_requests_max as u64),
        None => 0,
    };
    let descriptors = crate::descriptors::plan(open_files_limit, origin_connections)?;
    tracing::info!(
        open_files_limit,
        client_connections = descriptors.client_connections,
        peer_connections = descriptors.peer_connections,
        http_connections = descriptors.http_connections,
        origin_connections = descriptors.origin_connections,
        "file descriptors"
    );
    let budgets = descriptors.budgets();
    let _lock = lock_data_dir(&config.data_dir)?;
    basalt_storage::data_dir::check_or_stamp(&config.data_dir)?;
    let cluster = Arc::new(ClusterGuard::open(config.data_dir.clone())?);
    if let Some(given) = config.parsed_cluster_id()? {
        let kept = cluster.stamp_if_none(given)?;
        if kept != given {
            return Err(NodeError::OtherCluster {
                data_dir: config.data_dir.clone(),
                kept,
                given,
            });
        }
    }
    // The edge's listener is bound before Raft starts: a port in use stops the node here, with
    // nothing to shut down.
    let edge = match config.cache.listen {
        Some(addr) => {
            let edge = crate::edge::Edge::new(&config.cache, budgets.client.clone()).map_err(NodeError::Config)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("binding the edge cache on {addr}")))?;
            tracing::info!(%addr, origins = config.cache.origins.len(), "edge cache serving");
            Some((edge, listener))
        }
        None => None,
    };
    // The client API's and the peer listener's ports are bound too, but listened on only once
    // the node serves: until then a client or peer is refused at once (and tries another node)
    // instead of waiting in the backlog through the log replay.
    let client_socket = bind_socket(config.listen, "the client API")?;
    let peer_socket = match config.peer_listen {
        Some(addr) => Some(bind_socket(addr, "the peer listener")?),
        None => None,
    };
    // Likewise RESP's.
    let resp_listener = match config.resp.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("binding RESP on {addr}")))?,
        ),
        None => None,
    };
    let clock = Arc::new(Hlc::with_skew_and_offset(
        config.clock_skew_ms(),
        config.max_clock_offset_ms,
    ));
    let log_store = LogStore::open(
        &config.data_dir.join("log"),
        LogOptions {
            segment_bytes_max: config.segment_bytes,
            ..Default::default()
        },
    )?;
    let state_machine = StateMachine::open(&config.data_dir, clock.clone()).map_err(io("opening the state store"))?;
    let topology = state_machine.subscribe_topology();
    let store = state_machine.store().clone();
    check_region_flags(&config, topology.borrow().as_deref(), &store)?;
    let applied = state_machine.subscribe_applied();
    let gate = match &config.auth {
        Some(auth) => {
            let root = auth.root_token()?;
            let gate = crate::access::Gate::new(&root, state_machine.subscribe_auth())
                .map_err(|e| NodeError::Config(ConfigError::Invalid(e)))?;
            Some((Arc::new(gate), root))
        }
        None => None,
    };
    let applied_membership = state_machine
        .applied_membership()
        .map_err(io("reading the applied membership"))?;
    let also_on_client_port = raft_also_on_client_port(&config, &applied_membership)?;
    // Raft (and the members' own calls) on the client port would meet neither the client
    // doors' TLS nor their tokens.
    let client_port_protected = match (config.tls.is_some(), gate.is_some()) {
        (true, _) => Some("the client doors run TLS, so the members could not send Raft to its client port"),
        (false, true) => Some("client authentication is on, and Raft on the client port would take no tokens"),
        (false, false) => None,
    };
    if let (true, Some(why)) = (also_on_client_port, client_port_protected) {
        return Err(NodeError::Config(ConfigError::Invalid(format!(
            "the membership lists this node without a peer address, but {why}: re-add it with its peer address first"
        ))));
    }
    // Only a node that holds nothing yet takes a cluster id from a peer: one that holds data of a
    // cluster from before cluster ids, or lost its id file, must be given it (--cluster-id).
    let (first_index, last_index) = log_store.bounds();
    cluster.set_may_adopt(first_index.is_none() && last_index.is_none() && applied_membership.log_id().is_none());
    let incoming_dir = state_machine.snapshot_dir().to_path_buf();
    let peer_tls = (config.peer_tls.as_ref())
        .map(|tls| NodeTls::load(tls.files(), TlsRole::Peer).map(Arc::new))
        .transpose()
        .map_err(NodeError::PeerTls)?;
    let client_tls = (config.tls.as_ref())
        .map(|tls| NodeTls::load(tls.files(), TlsRole::ClientDoors).map(Arc::new))
        .transpose()
        .map_err(NodeError::ClientTls)?;
    let network = NetworkFactory::new(
        config.peer_routes.clone(),
        clock.clone(),
        cluster.clone(),
        peer_tls.clone(),
    );
    let network_stats = network.stats();
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        network,
        log_store.clone(),
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    if config.init
        && !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        let members: BTreeMap<u64, BasicNode> = config
            .members()?
            .into_iter()
            .map(|(id, member)| {
                (
                    id,
                    BasicNode {
                        addr: member.to_membership(),
                    },
                )
            })
            .collect();
        // Named on the first vote already: the other members take it from there.
        let new_id = ClusterId::random().map_err(io("making a cluster id"))?;
        let cluster_id = cluster.stamp_if_none(new_id)?;
        tracing::info!(?members, %cluster_id, "initializing a new cluster");
        if let Err(e) = raft.initialize(members).await {
            tracing::warn!(error = %e, "initialize refused (already initialized elsewhere?)");
        }
    }

    if let Some((gate, _)) = &gate {
        gate.follow(raft.clone());
    }
    let counters = Arc::new(ApiCounters::default());
    let bounds_store = log_store.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let api = Api {
        stopping: stop_rx.clone(),
        raft: raft.clone(),
        store,
        clock: clock.clone(),
        counters: counters.clone(),
        network: network_stats,
        log_bounds: Arc::new(move || bounds_store.bounds()),
        applied,
        broker: Arc::new(crate::api::Broker::default()),
        replication: config.region.clone().map(|region| Replication::new(region, topology)),
        merger: Arc::new(crate::api::Merger::new(config.kv_merge_in_flight)),
        expiry_tick: Arc::default(),
        read_index: crate::api::read_index_rounds(raft.clone()),
        cluster: cluster.clone(),
        peer_tls: peer_tls.clone(),
        client_tls: client_tls.clone(),
        connection_budgets: budgets.clone(),
        peer_listen: config.peer_listen,
        gate: gate.as_ref().map(|(gate, _)| Arc::clone(gate)),
        node_links: Arc::new(crate::api::node_calls::NodeLinks::new(
            config.peer_routes.clone(),
            peer_tls.clone(),
            cluster.clone(),
        )),
    };

    let shutdown_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    // The peer listener stops after Raft, not at the stop: until then this node still takes
    // part in its region (as a leader handing over, it must hear the vote of the node it hands
    // over to; as a follower, the leader's appends).
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let raft_stopped = Arc::new(std::sync::Mutex::new(None));
    let fail_stop = tokio::spawn(stop_when_raft_stops(
        raft.clone(),
        stop_tx.clone(),
        raft_stopped.clone(),
    ));
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let stop_clock = StopClock::default();
    // The client door stops accepting at the stop; but when it also serves this node's Raft, a
    // leader keeps it open until its handoff is over, to hear the vote and the appends of the
    // node it hands over to (the drain's bound still counts from the stop).
    let (client_door_stop_tx, client_door_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(tls) = &client_tls {
        tokio::spawn(tls.clone().keep_reloading(stop_rx.clone()));
    }
    // The HTTP door, RESP and the edge: plain, or TLS with the client doors' files.
    let door = |tcp: tokio::net::TcpListener,
                protocol: basalt_tls::Protocol,
                what: &str,
                budget: &Arc<basalt_tls::ConnectionBudget>| {
        basalt_tls::Listener::new(tcp, client_tls.clone(), protocol, stop_rx.clone(), budget.clone())
            .map_err(io(format!("reading {what}'s address")))
    };

    let edge_task = match edge {
        Some((edge, listener)) => {
            // Read before the edge stores anything: its store is empty, so the purges recorded
            // so far have nothing to remove, and every later one is followed.
            let purges_seen = basalt_storage::apply::cache::last_purge(&api.store)
                .map_err(|e| io("reading the purge table")(e.into()))?;
            let follower = tokio::spawn(crate::edge::purges::follow(
                Arc::clone(&edge),
                api.store.clone(),
                api.applied.clone(),
                purges_seen,
                stop_rx.clone(),
            ));
            let task = tokio::spawn(crate::edge::serve(
                door(listener, basalt_tls::Protocol::Http1, "the edge cache", &budgets.client)?,
                Arc::clone(&edge),
                wait_stop(stop_rx.clone()),
            ));
            Some((edge, task, follower))
        }
        None => None,
    };
    let edge = edge_task.as_ref().map(|(edge, _, _)| Arc::clone(edge));

    let http_task = match config.http {
        Some(addr) => {
            let listener = door(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io(format!("binding HTTP on {addr}")))?,
                basalt_tls::Protocol::Http1,
                "HTTP",
                &budgets.http,
            )?;
            let router = crate::http::router(api.clone(), config.allow_clock_control, edge.clone());
            let stop = wait_stop(stop_rx.clone());
            Some(tokio::spawn(async move {
                let router = router.into_make_service_with_connect_info::<crate::http::DoorConnection>();
                if let Err(e) = axum::serve(crate::http::Door(listener), router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "http server failed");
                }
            }))
        }
        None => None,
    };

    let homed = Homed::new(api.clone());
    // Other regions' feeds: on the peer listener when it runs mutual TLS (no cluster id there:
    // another region is another cluster; its peer certificate is its credential), and on the
    // client port with the root token, for regions that name this one by client addresses only
    // or have no peer TLS.
    let feed_receiver = || {
        RegionFeedServer::new(FeedReceiver {
            api: api.clone(),
            replication: api.replication.clone(),
        })
        .max_decoding_message_size(crate::limits::FEED_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::limits::FEED_MESSAGE_BYTES_MAX)
    };

    let cache_service = crate::api::cache::CacheService {
        api: api.clone(),
        edge: edge.clone(),
    };
    let raft_service = || RaftGrpcService::new(raft.clone(), incoming_dir.clone(), clock.clone(), cluster.clone());
    // The nodes' own calls are served beside Raft, wherever it is.
    let node_calls = || crate::api::node_calls::NodeCalls::service(cache_service.clone());
    // With a peer listener, Raft and the nodes' own calls are served there only: the client
    // port refuses them (UNIMPLEMENTED), so a client cannot vote, append or relay. Unless the
    // membership still sends this node's Raft to its client port (it was added before it had a
    // peer listener).
    let (raft_on_client_port, peer_task) = match peer_socket {
        None => (Some((raft_service(), node_calls())), None),
        Some(socket) => {
            let listener = socket
                .listen(LISTEN_BACKLOG)
                .map_err(io("listening on the peer listener"))?;
            let addr = listener
                .local_addr()
                .map_err(io("reading the peer listener's address"))?;
            tracing::info!(%addr, tls = peer_tls.is_some(), "serving raft and the members' own calls on the peer listener (and other regions' feeds, under peer TLS)");
            let stop = wait_stop(peer_stop_rx.clone());
            let server = tonic::transport::Server::builder()
                .max_connection_age(basalt_raft::limits::PEER_CONNECTION_AGE_MAX)
                .max_connection_age_grace(basalt_raft::limits::PEER_CONNECTION_AGE_GRACE)
                .add_service(raft_service())
                .add_service(node_calls())
                // Other regions' feeds only under mutual TLS: a plaintext peer port is open to
                // Raft, and is for a network only the members reach, not other regions.
                .add_optional_service(peer_tls.is_some().then(feed_receiver));
            let task = match &peer_tls {
                None => {
                    let incoming =
                        basalt_tls::listener::incoming_plain(listener, peer_stop_rx.clone(), budgets.peer.clone());
                    let serve = server.serve_with_incoming_shutdown(incoming, stop);
                    tokio::spawn(stop_when_done(stop_tx.clone(), async move {
                        serve.await.map_err(|source| NodeError::Serve { addr, source })
                    }))
                }
                Some(tls) => {
                    tokio::spawn(tls.clone().keep_reloading(peer_stop_rx.clone()));
                    let incoming = basalt_tls::listener::incoming(
                        listener,
                        tls.clone(),
                        peer_stop_rx.clone(),
                        budgets.peer.clone(),
                    );
                    let serve = server.serve_with_incoming_shutdown(incoming, stop);
                    tokio::spawn(stop_when_done(stop_tx.clone(), async move {
                        serve.await.map_err(|source| NodeError::Serve { addr, source })
                    }))
                }
            };
            (also_on_client_port.then(|| (raft_service(), node_calls())), Some(task))
        }
    };
    let raft_served_on_client_port = raft_on_client_port.is_some();
    let (raft_on_client_port, node_calls_on_client_port) = raft_on_client_port.unzip();
    let client_listener = client_socket
        .listen(LISTEN_BACKLOG)
        .map_err(io(format!("listening on the client API on {}", config.listen)))?;
    tracing::info!(id = config.id, listen = %config.listen, data_dir = %config.data_dir.display(), tls = client_tls.is_some(), "node serving");
    // Client requests are bounded so that one, or a merge of them, always fits a log entry.
    use basalt_storage::limits::CLIENT_MESSAGE_BYTES_MAX;
    // The client API: served on the client port, and called in-process by RESP.
    let mut client_routes = tonic::service::Routes::builder();
    client_routes.add_service(KvServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(CounterServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(RateLimiterServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(LeaseServer::new(homed.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(LedgerServer::new(homed.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(QueueServer::new(homed.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(TxnServer::new(homed).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(StreamServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(PubSubServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(ClusterServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(CacheServer::new(cache_service).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(AuthServer::new(api.clone()).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX));
    client_routes.add_service(feed_receiver());
    let client_routes = client_routes.routes();
    let mut in_process_switch = None;
    let resp_task = match resp_listener {
        Some(listener) => {
            // Every command goes through the SDK, starting at this node's own client API and
            // following the leader from there: the request path every client takes. This node's
            // API is called in-process (the same services and access checks, no loopback TCP or
            // HTTP/2); the other nodes over the network.
            // Keyed by the addresses the cluster may name this node by in its leader hints (the
            // membership's, when the node is already a member, and its configured one): when it
            // leads, the hint leads back to the in-process service, not to a dial of itself.
            let mut own_addrs: Vec<String> = applied_membership
                .membership()
                .get_node(&config.id)
                .map(|node| basalt_raft::member_addr::MemberAddr::client_of(&node.addr))
                .into_iter()
                .collect();
            for configured in [config.advertised_addr(), config.listen.to_string()] {
                if !own_addrs.contains(&configured) {
                    own_addrs.push(configured);
                }
            }
            let own_addr = own_addrs[0].clone();
            let (own_api, switch) = crate::in_process::transport(client_routes.clone(), api.gate.clone());
            in_process_switch = Some(switch);
            let options = basalt_client::ClientOptions {
                token: gate.as_ref().map(|(_, root)| root.clone()),
                tls: api.credentials().connector().cloned(),
                in_process: Some(basalt_client::InProcessNode {
                    addrs: own_addrs,
                    service: own_api,
                }),
                ..basalt_client::ClientOptions::default()
            };
            let client = basalt_client::Client::lazy([own_addr], options)
                .map_err(|e| NodeError::Config(ConfigError::Invalid(format!("RESP's client: {e}"))))?;
            let resp_config = basalt_resp::RespConfig {
                password: config.resp.password.clone(),
                allow_flush: config.resp.allow_flush,
                token_auth: gate.is_some(),
                node_id: config.id,
                basalt_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let listener = door(listener, basalt_tls::Protocol::Other, "RESP", &budgets.client)?;
            tracing::info!(addr = %listener.local_addr(), auth = resp_config.password.is_some(), tls = listener.is_tls(), "RESP serving");
            Some(tokio::spawn(basalt_resp::serve(
                listener,
                client,
                resp_config,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    // Spawned once nothing above can fail any more (a failure returns without stopping it).
    // At the stop: notes when the stop began, for the bounds of the doors' drains (see
    // `stopping`); ends the subscriptions at once (watches end by themselves, see
    // `Api::stopping`), so that their clients go on from another node instead of holding the
    // client door's drain; and hands a leader's leadership over, beside the doors' drains.
    let handoff = tokio::spawn({
        let stopped = wait_stop(stop_rx.clone());
        let clock = stop_clock.clone();
        let broker = Arc::clone(&api.broker);
        let raft = raft.clone();
        async move {
            stopped.await;
            clock.stopping();
            broker.end_all();
            if !raft_served_on_client_port {
                let _ = client_door_stop_tx.send(true);
            }
            let leader_seen = hand_off_leadership(&raft, &[]).await;
            let _ = client_door_stop_tx.send(true);
            leader_seen
        }
    });
    let sweeper = tokio::spawn(sweeper(api.clone(), config.clone(), stop_rx.clone()));
    let replication_tasks = match &api.replication {
        Some(repl) => repl.spawn(api.clone(), stop_rx.clone()),
        None => Vec::new(),
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(crate::access::AccessLayer::new(api.gate.clone()))
        .add_routes(client_routes.clone())
        .add_optional_service(raft_on_client_port)
        .add_optional_service(node_calls_on_client_port);

    // The client door stops gracefully: no new calls, and those open may finish. But a watch or
    // a subscription never finishes by itself, and SIGTERM must stop the node: once the stop has
    // waited CLIENT_DRAIN_MAX, the node goes on stopping without them (their connections end
    // with the process, and their clients resume on another node, as after a crash).
    let drain_bound = {
        let stopped = wait_stop(stop_rx.clone());
        let clock = stop_clock.clone();
        async move {
            stopped.await;
            tokio::time::sleep_until(clock.stopping().after_stop(CLIENT_DRAIN_MAX)).await;
        }
    };
    let serving = async {
        match &client_tls {
            None => {
                router
                    .serve_with_incoming_shutdown(
                        basalt_tls::listener::incoming_plain(
                            client_listener,
                            client_door_stop_rx.clone(),
                            budgets.client.clone(),
                        ),
                        wait_stop(client_door_stop_rx.clone()),
                    )
                    .await
            }
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(
                        basalt_tls::listener::incoming(
                            client_listener,
                            tls.clone(),
                            client_door_stop_rx.clone(),
                            budgets.client.clone(),
                        ),
                        wait_stop(client_door_stop_rx.clone()),
                    )
                    .await
            }
        }
    };
    let serve = tokio::select! {
        served = serving => served,
        () = drain_bound => {
            tracing::warn!(
                "client calls still open {CLIENT_DRAIN_MAX:?} after the stop (watches, subscriptions): stopping without them"
            );
            Ok(())
        }
    };

    // However the client door ended (a stop, or its accept loop gone), every other door and
    // task now stops too: the waits below are for doors that were told, each bounded from the
    // stop (see `stopping`), so that the whole stop fits NODE_STOP_MAX.
    let _ = stop_tx.send(true);
    let stopping = stop_clock.stopping();
    tracing::info!(id = config.id, "shutting down");
    sweeper.abort();
    for task in replication_tasks {
        task.abort();
    }
    if let Some(resp) = resp_task {
        // RESP's listener ends at the stop; its connections each finish the command they run.
        let _ = wait_until(stopping.after_stop(DOORS_DRAIN_MAX), "RESP's listener", resp).await;
    }
    // RESP's listener has stopped: a connection still finishing its command finds this node's API
    // refused (as it found the client port closed before); the calls already on their way are
    // answered, up to a bound, before Raft stops.
    if let Some(switch) = in_process_switch {
        switch.turn_off(stopping.starting_now(IN_PROCESS_DRAIN_MAX)).await;
    }
    if let Some(mut task) = http_task {
        // Its connections run on tasks of their own, which end with the process.
        if wait_until(stopping.after_stop(HTTP_DRAIN_MAX), "the HTTP door", &mut task)
            .await
            .is_none()
        {
            task.abort();
        }
    }
    if let Some((_, mut task, follower)) = edge_task {
        // The edge ends its connections itself once EDGE_SHUTDOWN_GRACE has passed.
        if wait_until(stopping.after_stop(DOORS_DRAIN_MAX), "the edge", &mut task)
            .await
            .is_none()
        {
            task.abort();
        }
        follower.abort();
    }
    // The handoff began at the stop; Raft stops once another node leads (or its bound ran out).
    let leader_seen = wait_until(stopping.after_stop(DOORS_DRAIN_MAX), "the leadership handoff", handoff)
        .await
        .and_then(Result::ok)
        .flatten();
    // A node that came to lead during its stop (it was handed the leadership by a leader stopping
    // beside it) hands it on in the time the doors had left, not back to that leader.
    let _ = wait_until(
        stopping.after_stop(DOORS_DRAIN_MAX),
        "the second leadership handoff",
        hand_off_leadership(&raft, leader_seen.as_slice()),
    )
    .await;
    // Until here a fatal Raft error was the node's failure; from here Raft stops by request.
    fail_stop.abort();
    // Raft first: a leader's replication streams into this node end with it, so the peer
    // server's graceful drain below has nothing left to wait for.
    if let Some(Err(e)) = wait_until(Instant::now() + RAFT_SHUTDOWN_MAX, "Raft", raft.shutdown()).await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = peer_stop_tx.send(true);
    let peer_served = match peer_task {
        Some(task) => match wait_until(Instant::now() + PEER_DRAIN_MAX, "the peer listener", task).await {
            Some(joined) => {
                joined.unwrap_or_else(|e| Err(NodeError::Raft(format!("the peer listener's task failed: {e}"))))
            }
            None => Ok(()),
        },
        None => Ok(()),
    };
    let stopped = raft_stopped
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(reason) = stopped {
        return Err(NodeError::RaftStopped(reason));
    }
    serve.map_err(|source| NodeError::Serve {
        addr: config.listen,
        source,
    })?;
    peer_served
}

/// Binds `addr` (SO_REUSEADDR, as tokio's listeners do) without listening yet: a port another
/// process listens on stops the node before anything is opened. (Two nodes starting together on
/// one port both bind; the second fails when it listens, later.)
fn bind_socket(addr: std::net::SocketAddr, what: &str) -> Result<tokio::net::TcpSocket, NodeError> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(io(format!("making a socket for {what}")))?;
    socket
        .set_reuseaddr(true)
        .map_err(io(format!("setting SO_REUSEADDR for {what}")))?;
    socket.bind(addr).map_err(io(format!("binding {what} on {addr}")))?;
    Ok(socket)
}

/// Runs a server until it ends, then stops the node: a listener that fails (or ends) must not
/// leave the node half serving.
async fn stop_when_done(
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    serve: impl Future<Output = Result<(), NodeError>>,
) -> Result<(), NodeError> {
    let served = serve.await;
    if let Err(e) = &served {
        tracing::error!(error = %e, "a listener failed; stopping the node");
    }
    let _ = stop.send(true);
    served
}

/// Whether Raft must be served on the client port too: the node has a peer listener, but the
/// membership lists it with no peer address (it was added, or bootstrapped, before it had one),
/// so the other members send its Raft to its client port. The reverse (the membership names a
/// peer address but the node has no peer listener) would cut the node off: it refuses to start.
fn raft_also_on_client_port(
    config: &NodeConfig,
    membership: &basalt_raft::StoredMembership,
) -> Result<bool, NodeError> {
    let Some(node) = membership.membership().get_node(&config.id) else {
        return Ok(false);
    };
    let member = match basalt_raft::member_addr::MemberAddr::parse(&node.addr) {
        Ok(member) => member,
        Err(_) => return Ok(false),
    };
    match (&member.peer, config.peer_listen) {
        (None, Some(_)) if config.peer_tls.is_some() => Err(NodeError::Config(ConfigError::Invalid(format!(
            "the membership lists this node (id {}) without a peer address ({}): its Raft would have to be served in \
             plaintext on the client port, which peer TLS forbids; replace the member with one added with --peer-addr \
             first (docs/security.md)",
            config.id, node.addr
        )))),
        (None, Some(peer_listen)) => {
            tracing::warn!(
                membership_addr = %node.addr,
                %peer_listen,
                "the membership lists this node without a peer address: its Raft is served on the client port too \
                 until it is replaced by a member added with --peer-addr (docs/security.md)"
            );
            Ok(true)
        }
        (Some(peer), None) => Err(NodeError::Config(ConfigError::Invalid(format!(
            "the membership lists this node (id {}) with peer address {peer}, where the other members send its \
             Raft: start it with --peer-listen",
            config.id
        )))),
        _ => Ok(false),
    }
}

/// Fail-stop: when the Raft core stops on its own (openraft stops on any storage error, such as
/// the log refusing after a failed fsync), the node stops serving and exits with the reason,
/// rather than keep answering with a dead log. A supervisor restarts it; the restart recovers
/// from what the disk holds.
async fn stop_when_raft_stops(
    raft: Raft,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    reason: Arc<std::sync::Mutex<Option<String>>>,
) {
    use openraft::async_runtime::WatchReceiver;
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            tracing::error!(error = %fatal, "the Raft core stopped; stopping the node");
            *reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fatal.to_string());
            let _ = stop.send(true);
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Compares this node's region flags with the replicated region topology, which is what apply
/// follows: a node whose data belongs to another region, or to a region among several when the
/// node was started without `--region`, does not start; other differences (a region added or
/// removed by `basalt regions`, endpoints moved) are logged, and the replicated topology wins.
fn check_region_flags(
    config: &NodeConfig,
    topology: Option<&basalt_storage::apply::topology::RegionTopology>,
    store: &basalt_storage::state::rocks::RocksStore,
) -> Result<(), NodeError> {
    let refuse = |message: String| NodeError::Config(ConfigError::Invalid(message));
    if store.install_incomplete() {
        // The data tables are a mix of two states until openraft installs the snapshot again,
        // which it does first thing in Raft::new; the topology comes with it.
        tracing::warn!("a snapshot install was cut short; the region flags are checked after the next restart");
        return Ok(());
    }
    match (&config.region, topology) {
        (None, None) => Ok(()),
        (Some(region), None) => {
            // Checked here for a clear error; apply refuses such a first topology anyway.
            let holds_data = basalt_storage::apply::topology::holds_data(store)
                .map_err(|e| NodeError::Config(ConfigError::Invalid(format!("reading the state store: {e}"))))?;
            match holds_data {
                true => Err(refuse(format!(
                    "this node's data was written without a region topology (a lone region, or a version before \
                     the replicated topology); it cannot become region {}:{}: a region starts empty",
                    region.name, region.id
                ))),
                false => Ok(()),
            }
        }
        (None, Some(topology)) => Err(refuse(format!(
            "this node's data belongs to region {}:{} of a multi-region deployment; start it with --region {}:{}",
            topology.name_of(topology.this).unwrap_or("?"),
            topology.this,
            topology.name_of(topology.this).unwrap_or("?"),
            topology.this
        ))),
        (Some(region), Some(topology)) => {
            let differences = region.compare_with(topology).map_err(refuse)?;
            for difference in &differences {
                tracing::warn!(
                    topology_changed_at = topology.changed_at,
                    "region flags differ from the replicated topology, which is what applies: {difference}"
                );
            }
            Ok(())
        }
    }
}

/// While leader: every second, proposes a sweep for each expiry index with something due (KV
/// TTLs, rate-limit keys back to full, timed-out pending transfers, dedup ids, group members,
/// stream retention) and a KV history compaction when it is longer than configured; every
/// `SESSION_SWEEP_EVERY_S` seconds, one step of the idle-session sweep. In a region among
/// several, also the collection of KV tombstones every other region has shipped past and has
/// received (see `Replication::tombstone_gc_due`). All decide from the entry
/// stamp (or carry their bound), so every replica removes the same keys at the same log position.
async fn sweeper(api: Api, config: NodeConfig, stop: tokio::sync::watch::Receiver<bool>) {
    let session_idle_ms = config.session_idle_ms;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut session_cursor = None;
    while !*stop.borrow() {
        tick.tick().await;
        ticks += 1;
        if !api.raft.is_leader() {
            session_cursor = None;
            continue;
        }
        let now_ms = api.clock.now().physical_ms();
        let role = match basalt_storage::apply::topology::region_role(&api.store) {
            Ok(role) => role,
            Err(e) => {
                tracing::warn!(error = %e, "reading the region topology");
                continue;
            }
        };
        match basalt_storage::apply::sweeps_due(&api.store, now_ms, role) {
            Ok(due) => {
                let paged_until = tokio::time::Instant::now() + Duration::from_millis(PAGED_SWEEP_MS_PER_TICK_MAX);
                for op in due {
                    // Paged work (deletions, the index build) goes on for several entries while
                    // more is due, within a time budget: one entry a second would hold a large
                    // queue's name for hours.
                    let mut next = op.clone();
                    for _ in 0..PAGED_SWEEP_STEPS_PER_TICK_MAX {
                        if propose_sweep(&api, next.clone()).await.is_none() {
                            break;
                        }
                        next = basalt_storage::apply::follow_up(&op);
                        if tokio::time::Instant::now() >= paged_until {
                            break;
                        }
                        match basalt_storage::apply::more_due(&api.store, &op) {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "reading what is left of a sweep");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading expiry indexes"),
        }
        let applied = *api.applied.borrow();
        match basalt_storage::apply::kv::compaction_due(&api.store, applied, config.kv_history_revisions) {
            Ok(Some(below)) => {
                // Several steps toward this tick's bound when one is not enough: under heavy
                // writes one step a second (COMPACT_CHANGES_MAX changes) falls behind. The bound stays
                // put: each step is itself a log entry, and chasing `applied` would eat into the
                // kept history one revision per step.
                for _ in 0..COMPACT_STEPS_PER_TICK_MAX {
                    let op = Op::Kv(KvOp::Compact {
                        below,
                        limit: COMPACT_CHANGES_MAX,
                    });
                    if propose_sweep(&api, op).await.is_none() {
                        break;
                    }
                    match basalt_storage::apply::kv::history_before(&api.store, below) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the kv history");
                            break;
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the kv history"),
        }
        if let Some(repl) = &api.replication {
            match repl.tombstone_gc_due(&api.store, COMPACT_CHANGES_MAX) {
                Ok(Some(op)) => {
                    propose_sweep(&api, op).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the kv tombstones"),
            }
        }
        if ticks.is_multiple_of(SESSION_SWEEP_EVERY_S) {
            let op = Op::SessionSweep {
                idle_ms: session_idle_ms,
                after: session_cursor,
                limit: SESSION_SWEEP_CLIENTS_MAX,
            };
            if let Some(Response::SessionsSwept { removed, resume_after }) = propose_sweep(&api, op).await {
                if removed > 0 {
                    tracing::info!(removed, "forgot idle client sessions");
                }
                session_cursor = resume_after;
            }
        }
    }
}

async fn propose_sweep(api: &Api, op: Op) -> Option<Response> {
    let command = Command {
        stamp: api.clock.now(),
        session: None,
        fence: None,
        op,
    };
    // Sweeps are bounded by their own limits; checked anyway, as every proposal is: one over
    // the log's record limit would stop the leader's Raft.
    if let Err(e) = command.check_size() {
        tracing::error!(error = %e, "sweep not proposed: too large for one log entry");
        return None;
    }
    match api.raft.client_write(command).await {
        Ok(written) => Some(written.data),
        Err(e) => {
            tracing::debug!(error = %e, "sweep not proposed");
            None
        }
    }
}
