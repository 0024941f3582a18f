//! The `basalt` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use basalt_client::Client;
use clap::{Args, Parser, Subcommand};

use basalt_server::config::{self, NodeConfig};

/// Most worker threads `basalt start --worker-threads` takes.
pub const WORKER_THREADS_MAX: u16 = 1024;

#[derive(Parser, Debug)]
#[command(
    name = "basalt",
    version,
    about = "Basalt: a distributed data node (Raft, KV, counters, ...)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// Cluster nodes, host:port[,host:port...]. Default: the local dev cluster (see `basalt dev`).
    #[arg(long, env = "BASALT_ENDPOINTS", global = true)]
    endpoints: Option<String>,
    /// With a multi-region dev cluster: talk to this region's nodes (default: the first region).
    #[arg(long, env = "BASALT_REGION", global = true)]
    region: Option<String>,
    /// The bearer token calls carry, for a cluster that authenticates its clients. Default:
    /// the token file the dev cluster's cluster file names (`basalt dev --secure`), if any.
    #[arg(long, env = "BASALT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// TLS, for a cluster whose client doors run it: the CA certificate(s) (PEM) the nodes'
    /// certificates must chain to. Default: the CA the dev cluster's cluster file names
    /// (`basalt dev --secure`), if any.
    #[arg(long, env = "BASALT_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// A client certificate (PEM; `basalt certs client`): calls then authenticate as the user it
    /// names, without a token. Needs --ca-file (or the dev cluster's CA) and --key-file.
    #[arg(long, env = "BASALT_CERT_FILE", global = true, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "BASALT_KEY_FILE", global = true, requires = "cert_file")]
    key_file: Option<PathBuf>,
}

/// A lease fence for mutations: `--fence NAME:TOKEN`.
#[derive(Args, Debug, Clone)]
pub struct FenceArg {
    /// Apply writes only while TOKEN is the live grant of lease NAME (else STALE_FENCE).
    #[arg(long, value_parser = parse_fence, global = true)]
    fence: Option<(String, u64)>,
}

fn parse_fence(text: &str) -> Result<(String, u64), String> {
    let (name, token) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:TOKEN"))?;
    let token = token
        .parse()
        .map_err(|_| format!("token {token:?} in {text:?} is not a number"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has an empty lease name"));
    }
    Ok((name.to_string(), token))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Start(Box<StartArgs>),
    /// Run a local cluster of N node processes (default 3) until Ctrl-C.
    Dev(crate::dev::DevArgs),
    /// A cluster CA and node certificates for mutual TLS between the nodes (docs/security.md).
    Certs {
        #[command(subcommand)]
        command: crate::certs::CertsCommand,
    },
    /// Key-value operations.
    Kv {
        #[command(subcommand)]
        command: crate::verbs::kv::KvCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
        #[command(flatten)]
        fence: FenceArg,
    },
    /// Counter operations.
    Counter {
        #[command(subcommand)]
        command: crate::verbs::counter::CounterCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
        #[command(flatten)]
        fence: FenceArg,
    },
    /// Leases with fencing tokens.
    Lease {
        #[command(subcommand)]
        command: crate::verbs::lease::LeaseCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Rate-limit checks.
    Ratelimit {
        #[command(subcommand)]
        command: crate::verbs::rate_limit::RateLimitCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
        #[command(flatten)]
        fence: FenceArg,
    },
    /// The double-entry ledger.
    Ledger {
        #[command(subcommand)]
        command: crate::verbs::ledger::LedgerCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
        #[command(flatten)]
        fence: FenceArg,
    },
    /// Work queues: create, enqueue, receive, ack, nack, redrive, stats.
    Queue {
        #[command(subcommand)]
        command: crate::verbs::queue::QueueCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Streams: topics, produce, fetch, consumer-group offsets.
    Stream {
        #[command(subcommand)]
        command: crate::verbs::stream::StreamCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Pub/sub: publish, subscribe.
    Pubsub {
        #[command(subcommand)]
        command: crate::verbs::pubsub::PubSubCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// One transaction across data types from a JSON document (docs/transactions.md): conditions,
    /// then one of two op lists, all or nothing. Exit 1 when it aborted (nothing applied).
    Txn {
        /// The document's file; `-` or none reads stdin.
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        endpoints: EndpointArgs,
        #[command(flatten)]
        fence: FenceArg,
    },
    /// The edge cache: purge (by URL, prefix, tag, or everything) and per-node stats.
    Cache {
        #[command(subcommand)]
        command: crate::verbs::cache::CacheCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Users, roles and tokens: who may do what (docs/security.md).
    Auth {
        #[command(subcommand)]
        command: crate::verbs::auth::AuthCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Cluster status and membership.
    Cluster {
        #[command(subcommand)]
        command: crate::verbs::cluster::ClusterCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Regions: the replicated region topology (add, remove, show); with a multi-region dev
    /// cluster also replication status, partitions and latency between regions.
    Regions {
        #[command(subcommand)]
        command: crate::verbs::regions::RegionsCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
    /// Run one of the systems Basalt exists for and check its invariant (`--list` shows them).
    Demo(crate::demo::DemoArgs),
    /// Load generators.
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
        #[command(flatten)]
        endpoints: EndpointArgs,
    },
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// A TOML config file, which says everything: no other flag may be given with it (clap
    /// refuses the mix and names the flag, instead of ignoring it).
    #[arg(long, conflicts_with_all = [
        "id", "listen", "http", "data_dir", "peers", "init", "snapshot_entries", "logs_to_keep",
        "heartbeat_ms", "session_idle_ms", "kv_history_revisions", "kv_merge_in_flight",
        "peer_routes", "election_timeout_min_ms", "election_timeout_max_ms", "region",
        "remote_region", "feed_retain_entries", "clock_skew_ms", "max_clock_offset_ms",
        "allow_clock_control", "home_region", "joining_region", "edge_listen", "origin", "cache_bytes",
        "cache_negative_ttl_ms", "origin_timeout_ms", "origin_requests_max", "resp_listen",
        "resp_password", "resp_allow_flush", "peer_listen", "cluster_id", "peer_tls_cert",
        "peer_tls_key", "peer_tls_ca", "root_token_file", "tls_cert", "tls_key", "tls_ca", "tls_client_ca",
    ])]
    config: Option<PathBuf>,
    /// Threads that run the node's async work (Raft, the APIs, the RESP and edge doors): one
    /// per core when not given. A setting of the process, not of the node's config, so it may
    /// go with --config. `basalt dev` splits the machine's cores between the nodes it starts.
    /// With one thread, synchronous work on it (applying a large batch, a RocksDB write stall) also delays
    /// the node's Raft heartbeats: keep election timeouts well above the slowest such pause.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=WORKER_THREADS_MAX as i64))]
    pub(crate) worker_threads: Option<u16>,
    #[arg(long)]
    id: Option<u64>,
    /// gRPC listen address: the client API (and Raft, without --peer-listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The peer listener: Raft and snapshots between the members, apart from the client API
    /// (this node's --peers entry then names it: ID=CLIENT/PEER).
    #[arg(long)]
    peer_listen: Option<std::net::SocketAddr>,
    /// The cluster this node must belong to (32 hex digits, from `basalt cluster status`).
    #[arg(long)]
    cluster_id: Option<String>,
    /// Mutual TLS on the peer listener: this node's certificate (PEM; `basalt certs node`).
    #[arg(long, requires_all = ["peer_tls_key", "peer_tls_ca", "peer_listen"])]
    peer_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "peer_tls_cert")]
    peer_tls_key: Option<PathBuf>,
    /// The cluster's CA certificate(s) (PEM): peers must present a certificate it signed.
    #[arg(long, requires = "peer_tls_cert")]
    peer_tls_ca: Option<PathBuf>,
    /// TLS on every client door (client API, HTTP, RESP, edge): this node's certificate (PEM;
    /// `basalt certs node`). Clients then connect with the CA (`--ca-file`).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) of the nodes' client-door certificates, trusted when this
    /// node calls another's client port.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// The CA certificate(s) (PEM) of client certificates (`basalt certs client-ca`): a gRPC
    /// client showing one authenticates as the user its common name names. Use a CA of its own,
    /// never the peer listener's. Without it, clients use tokens only.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Authenticate clients: a file holding the root token (`basalt auth token > FILE`); users
    /// and roles come from `basalt auth` (docs/security.md). Needs --peer-listen.
    #[arg(long)]
    root_token_file: Option<PathBuf>,
    /// HTTP address for /metrics and /health.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial voters: 1=host:port,2=host:port,... or, with peer listeners, ID=CLIENT/PEER.
    #[arg(long, default_value = "")]
    peers: String,
    /// Bootstrap a new cluster from --peers if this node's storage is empty.
    #[arg(long)]
    init: bool,
    #[arg(long, default_value_t = config::defaults::snapshot_entries())]
    snapshot_entries: u64,
    #[arg(long, default_value_t = config::defaults::logs_to_keep())]
    logs_to_keep: u64,
    #[arg(long, default_value_t = config::defaults::heartbeat_ms())]
    heartbeat_ms: u64,
    /// Forget a client's session after it has been idle this long (ms).
    #[arg(long, default_value_t = config::defaults::session_idle_ms())]
    session_idle_ms: u64,
    /// KV revisions of change history kept for watchers.
    #[arg(long, default_value_t = config::defaults::kv_history_revisions())]
    kv_history_revisions: u64,
    /// KV write proposals a leader keeps in flight; later requests wait and leave merged into
    /// one log entry (0: every request is its own entry).
    #[arg(long, default_value_t = config::defaults::kv_merge_in_flight())]
    kv_merge_in_flight: usize,
    /// Reach peer N through ADDR for Raft traffic (`2=127.0.0.1:9102,3=…`): a proxy in between,
    /// as the fault-injection harness uses.
    #[arg(long, default_value = "")]
    peer_routes: String,
    #[arg(long, default_value_t = config::defaults::election_timeout_min_ms())]
    election_timeout_min_ms: u64,
    #[arg(long, default_value_t = config::defaults::election_timeout_max_ms())]
    election_timeout_max_ms: u64,
    /// This node's region, `name:id`, when it is one of several regions (docs/regions.md).
    #[arg(long)]
    region: Option<String>,
    /// Another region to replicate with: `name:id=ENDPOINT,ENDPOINT` (repeat per region), each
    /// ENDPOINT a node's `CLIENT/PEER` addresses (its feed goes to the peer listener) or `CLIENT`.
    #[arg(long, requires = "region")]
    remote_region: Vec<String>,
    /// Feed positions kept for a region that has not acknowledged them; past this it is re-synced.
    #[arg(long, default_value_t = config::defaults::feed_retain_entries())]
    feed_retain_entries: u64,
    /// Added to this node's wall clock, in ms (to try clock skew between nodes and regions).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_ms: i64,
    /// The most any node's clock may be off from another's, in ms; every node must use the same.
    #[arg(long, default_value_t = config::defaults::max_clock_offset_ms())]
    max_clock_offset_ms: u64,
    /// Serve PUT /debug/clock-skew on the HTTP port (tests and the partition harness only).
    #[arg(long)]
    allow_clock_control: bool,
    /// The region owning ledgers, leases and queues (default: the lowest region id).
    #[arg(long, requires = "region")]
    home_region: Option<String>,
    /// This region joins regions already running (added there with `basalt regions add`): it
    /// starts with no escrow share of counter bounds instead of an even split.
    #[arg(long, requires = "region")]
    joining_region: bool,
    /// Serve the Redis protocol (RESP2 and RESP3) on this address (docs/redis.md).
    #[arg(long)]
    resp_listen: Option<std::net::SocketAddr>,
    /// The password RESP clients give with AUTH (none: no AUTH needed).
    #[arg(long, env = "BASALT_RESP_PASSWORD", hide_env_values = true, requires = "resp_listen")]
    resp_password: Option<String>,
    /// Let RESP's FLUSHDB / FLUSHALL delete every key (development clusters only).
    #[arg(long, requires = "resp_listen")]
    resp_allow_flush: bool,
    /// Serve the edge cache (HTTP) on this address (docs/data-types/edge-cache.md).
    #[arg(long, requires = "origin")]
    edge_listen: Option<std::net::SocketAddr>,
    /// An origin of the edge cache: `PREFIX=http://host:port` (repeat; the longest matching
    /// prefix serves a path, which is passed to the origin unchanged).
    #[arg(long, requires = "edge_listen")]
    origin: Vec<String>,
    /// The edge cache's byte budget.
    #[arg(long, default_value_t = config::defaults::cache_bytes(), requires = "edge_listen")]
    cache_bytes: u64,
    /// How long the edge keeps a 404 or 410 without explicit freshness, in ms (0: not kept).
    #[arg(long, default_value_t = config::defaults::cache_negative_ttl_ms(), requires = "edge_listen")]
    cache_negative_ttl_ms: u64,
    /// The most one origin fetch may take, in ms (then 504, or a stale copy if allowed).
    #[arg(long, default_value_t = config::defaults::cache_origin_timeout_ms(), requires = "edge_listen")]
    origin_timeout_ms: u64,
    /// Requests in flight to one origin at most; more wait within the timeout.
    #[arg(long, default_value_t = config::defaults::cache_origin_requests_max(), requires = "edge_listen")]
    origin_requests_max: usize,
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `7d`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 250ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 24.0 * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use ms, s, m, h, d)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Where `basalt dev` keeps its data and cluster file: `$BASALT_HOME/dev` (default `~/.basalt`).
pub fn basalt_home() -> PathBuf {
    std::env::var_os("BASALT_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into())
            .join(".basalt")
    })
}

pub fn cluster_file() -> PathBuf {
    basalt_home().join("dev").join("cluster.json")
}

pub fn resolve_endpoints(args: &EndpointArgs) -> Result<Vec<String>, String> {
    if let Some(list) = &args.endpoints {
        return parse_endpoint_list(list);
    }
    let path = cluster_file();
    if !path.exists() {
        return Err(format!(
            "no endpoints: pass --endpoints host:port,... or start a local cluster with `basalt dev` (no {})",
            path.display()
        ));
    }
    cluster_file_endpoints(&path, args.region.as_deref())
}

/// `host:port,host:port,...` as `--endpoints` takes it.
pub fn parse_endpoint_list(list: &str) -> Result<Vec<String>, String> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    Ok(endpoints)
}

/// The endpoints a cluster file (as `basalt dev` writes it) lists: of `region` with several
/// regions, else the first region's.
pub fn cluster_file_endpoints(path: &std::path::Path, region: Option<&str>) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading the cluster file {}: {e}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(region) = region {
        return crate::verbs::regions::region_endpoints(&file, region).map_err(|e| format!("{}: {e}", path.display()));
    }
    let endpoints: Vec<String> = file["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if endpoints.is_empty() {
        return Err(format!("{} lists no endpoints", path.display()));
    }
    Ok(endpoints)
}

fn start_config(args: StartArgs) -> Result<NodeConfig, String> {
    if let Some(path) = args.config {
        return NodeConfig::from_file(&path).map_err(|e| e.to_string());
    }
    let missing = |flag: &str| format!("--{flag} is required (or pass --config FILE)");
    let config = NodeConfig {
        id: args.id.ok_or_else(|| missing("id"))?,
        listen: args.listen.ok_or_else(|| missing("listen"))?,
        peer_listen: args.peer_listen,
        cluster_id: args.cluster_id,
        peer_tls: match (args.peer_tls_cert, args.peer_tls_key, args.peer_tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(config::TlsConfig {
                cert,
                key,
                ca,
                client_ca: None,
            }),
            _ => None,
        },
        tls: match (args.tls_cert, args.tls_key, args.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(config::TlsConfig {
                cert,
                key,
                ca,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
        auth: args
            .root_token_file
            .map(|root_token_file| config::AuthConfig { root_token_file }),
        http: args.http,
        data_dir: args.data_dir.ok_or_else(|| missing("data-dir"))?,
        peers: config::parse_peers(&args.peers).map_err(|e| e.to_string())?,
        init: args.init,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_min_ms: args.election_timeout_min_ms,
        election_timeout_max_ms: args.election_timeout_max_ms,
        snapshot_entries: args.snapshot_entries,
        logs_to_keep: args.logs_to_keep,
        segment_bytes: config::defaults::segment_bytes(),
        session_idle_ms: args.session_idle_ms,
        kv_history_revisions: args.kv_history_revisions,
        kv_merge_in_flight: args.kv_merge_in_flight,
        clock_skew_ms: args.clock_skew_ms,
        max_clock_offset_ms: args.max_clock_offset_ms,
        allow_clock_control: args.allow_clock_control,
        peer_routes: config::parse_peers(&args.peer_routes).map_err(|e| e.to_string())?,
        cache: config::CacheConfig {
            listen: args.edge_listen,
            origins: args
                .origin
                .iter()
                .map(|o| config::parse_origin(o))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            bytes: args.cache_bytes,
            negative_ttl_ms: args.cache_negative_ttl_ms,
            origin_timeout_ms: args.origin_timeout_ms,
            origin_requests_max: args.origin_requests_max,
        },
        resp: config::RespListenConfig {
            listen: args.resp_listen,
            password: args.resp_password,
            allow_flush: args.resp_allow_flush,
        },
        region: match &args.region {
            None => None,
            Some(region) => {
                let (name, id) = config::parse_region(region).map_err(|e| e.to_string())?;
                let remotes = args
                    .remote_region
                    .iter()
                    .map(|r| config::parse_remote_region(r))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                Some(config::RegionConfig {
                    name,
                    id,
                    remotes,
                    feed_retain_entries: args.feed_retain_entries,
                    // The node's own skew (above) is the flag's: not added twice.
                    clock_skew_ms: 0,
                    home: args.home_region.clone(),
                    joining: args.joining_region,
                })
            }
        },
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BASALT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: logs written to a file or a pipe (every node
    // under `basalt dev`, the tests, a service manager) carry no escape codes.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default) in every command: see `output` for why, and for
    // how a closed stdout still ends a command the way it ends other Unix tools (except those
    // that own node processes, which must stop in order).
    if matches!(cli.command, Command::Dev(_) | Command::Bench { .. }) {
        crate::output::supervising();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Start(args) = &cli.command {
        if let Some(threads) = args.worker_threads {
            builder.worker_threads(usize::from(threads));
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Whatever still runs once the command has ended (a connection's task, a snapshot build on a
    // blocking thread of a node whose stop ran out of time) is not waited for: a node's stop is
    // bounded (`NODE_STOP_MAX`), and its exit with it, as after a crash, every acknowledged write
    // already on disk.
    runtime.shutdown_timeout(RUNTIME_EXIT_WAIT);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            if let Some(hint) = hint_for(&message) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// How long the process waits, once its command has ended, for the tasks still running.
const RUNTIME_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a failure's message most likely means, when it says little by itself.
fn hint_for(message: &str) -> Option<&'static str> {
    // What a plaintext HTTP/2 client reads from a TLS port: the handshake's bytes.
    message.contains("h2 protocol error").then_some(
        "the node may run TLS on its client port: give its CA with --ca-file (or BASALT_CA_FILE, or the cluster file's ca_file)",
    )
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C) delivered from the moment this is called, not from
/// when the future is first awaited: the handlers are installed here. A command that owns node
/// processes calls it before it starts any, so a signal at any moment stops them in order (a
/// signal arriving before a handler exists would end the process at once and leave its nodes
/// running). Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

/// The token the CLI's calls carry: `--token` / `BASALT_TOKEN`, else, for the local dev
/// cluster (no `--endpoints`), the token file its cluster file names.
pub fn resolve_token(args: &EndpointArgs) -> Result<Option<basalt_client::Token>, String> {
    if let Some(token) = &args.token {
        if args.cert_file.is_some() {
            // A token decides over a certificate: the call would not run as the certificate's
            // user.
            return Err("--token (or BASALT_TOKEN) and --cert-file both given: choose one".into());
        }
        return Ok(Some(basalt_client::Token::from_text(token)));
    }
    // With a certificate, the dev cluster's root token is not taken: the calls run as the
    // certificate's user.
    if args.endpoints.is_some() || args.cert_file.is_some() {
        return Ok(None);
    }
    cluster_file_token(&cluster_file())
}

/// The TLS the CLI's calls use: `--ca-file` (with `--cert-file` and `--key-file`), else, for the
/// local dev cluster (no `--endpoints`), the CA its cluster file names (`ca_file`).
pub fn resolve_tls(args: &EndpointArgs) -> Result<Option<basalt_client::TlsConnector>, String> {
    let ca = match (&args.ca_file, args.endpoints.is_some()) {
        (Some(ca), _) => Some(ca.clone()),
        (None, true) => None,
        (None, false) => cluster_file_field(&cluster_file(), "ca_file")?.map(PathBuf::from),
    };
    let Some(ca) = ca else {
        return match &args.cert_file {
            Some(_) => Err("--cert-file needs --ca-file: the CA the nodes' certificates chain to".into()),
            None => Ok(None),
        };
    };
    let identity = match (&args.cert_file, &args.key_file) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let tls = basalt_client::ClientTls::from_files(&ca, identity).map_err(|e| e.to_string())?;
    Ok(Some(basalt_client::TlsConnector::Client(tls)))
}

/// A text field of a cluster file, if the file exists and has it.
fn cluster_file_field(path: &std::path::Path, field: &str) -> Result<Option<String>, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file[field].as_str().map(str::to_string))
}

/// The token of the file a cluster file names (`token_file`), if it names one.
pub fn cluster_file_token(path: &std::path::Path) -> Result<Option<basalt_client::Token>, String> {
    let Some(token_file) = cluster_file_field(path, "token_file")? else {
        return Ok(None);
    };
    let token =
        std::fs::read_to_string(&token_file).map_err(|e| format!("reading the token file {token_file}: {e}"))?;
    Ok(Some(basalt_client::Token::from_text(&token)))
}

/// Client options with the CLI's token and TLS.
pub fn client_options(args: &EndpointArgs) -> Result<basalt_client::ClientOptions, String> {
    Ok(basalt_client::ClientOptions {
        token: resolve_token(args)?,
        tls: resolve_tls(args)?,
        ..basalt_client::ClientOptions::default()
    })
}

async fn connect(args: &EndpointArgs) -> Result<Client, String> {
    let endpoints = resolve_endpoints(args)?;
    Client::connect_with(&endpoints, client_options(args)?)
        .await
        .map_err(|e| e.to_string())
}

/// A client whose mutations carry `--fence`, when given.
async fn connect_fenced(args: &EndpointArgs, fence: &FenceArg) -> Result<Client, String> {
    let client = connect(args).await?;
    Ok(match &fence.fence {
        Some((lease, token)) => client.fenced(lease.as_bytes(), *token),
        None => client,
    })
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Start(args) => {
            init_tracing("info,openraft=warn");
            let config = start_config(*args)?;
            basalt_server::server::run(config, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Dev(args) => {
            init_tracing("warn");
            crate::dev::run(args).await
        }
        Command::Certs { command } => {
            init_tracing("error");
            crate::certs::certs(command)
        }
        Command::Kv {
            command,
            endpoints,
            fence,
        } => {
            init_tracing("error");
            let client = connect_fenced(&endpoints, &fence).await?;
            crate::verbs::kv::kv(&client, command).await
        }
        Command::Counter {
            command,
            endpoints,
            fence,
        } => {
            init_tracing("error");
            let client = connect_fenced(&endpoints, &fence).await?;
            crate::verbs::counter::counter(&client, command).await
        }
        Command::Lease { command, endpoints } => {
            init_tracing("error");
            crate::verbs::lease::lease(&connect(&endpoints).await?, command).await
        }
        Command::Ratelimit {
            command,
            endpoints,
            fence,
        } => {
            init_tracing("error");
            crate::verbs::rate_limit::rate_limit(&connect_fenced(&endpoints, &fence).await?, command).await
        }
        Command::Ledger {
            command,
            endpoints,
            fence,
        } => {
            init_tracing("error");
            crate::verbs::ledger::ledger(&connect_fenced(&endpoints, &fence).await?, command).await
        }
        Command::Queue { command, endpoints } => {
            init_tracing("error");
            crate::verbs::queue::queue(&connect(&endpoints).await?, command).await
        }
        Command::Stream { command, endpoints } => {
            init_tracing("error");
            crate::verbs::stream::stream(&connect(&endpoints).await?, command).await
        }
        Command::Pubsub { command, endpoints } => {
            init_tracing("error");
            crate::verbs::pubsub::pubsub(&connect(&endpoints).await?, command).await
        }
        Command::Txn { file, endpoints, fence } => {
            init_tracing("error");
            let text = match file.filter(|f| f.as_os_str() != "-") {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
                None => std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?,
            };
            crate::verbs::txn::txn(&connect_fenced(&endpoints, &fence).await?, &text).await
        }
        Command::Cache { command, endpoints } => {
            init_tracing("error");
            let client = connect(&endpoints).await?;
            crate::verbs::cache::cache(&client, command).await
        }
        Command::Auth {
            command: crate::verbs::auth::AuthCommand::Token,
            ..
        } => {
            crate::verbs::auth::new_token();
            Ok(())
        }
        Command::Auth { command, endpoints } => {
            init_tracing("error");
            let client = connect(&endpoints).await?;
            crate::verbs::auth::auth(&client, command).await
        }
        Command::Cluster { command, endpoints } => {
            init_tracing("error");
            let client = connect(&endpoints).await?;
            crate::verbs::cluster::cluster(&client, command).await
        }
        Command::Regions { command, endpoints } => {
            init_tracing("error");
            match crate::verbs::regions::topology_verb(&command) {
                true => crate::verbs::regions::change(command, connect(&endpoints).await?).await,
                false => crate::verbs::regions::run(command).await,
            }
        }
        Command::Demo(args) => {
            init_tracing("error");
            crate::demo::run(args).await
        }
        Command::Bench { command, endpoints } => {
            init_tracing("error");
            let cluster = crate::bench::BenchCluster {
                options: client_options(&endpoints)?,
                endpoints: resolve_endpoints(&endpoints)?,
            };
            crate::bench::run(command, cluster).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_client_at_a_tls_port_is_told_to_give_the_ca() {
        let hint = hint_for("unexpected response from the server: Internal error: h2 protocol error: http2 error");
        assert!(hint.is_some_and(|h| h.contains("--ca-file")));
        assert_eq!(hint_for("no node reachable: connection refused"), None);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 24 * 3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn fences_parse() {
        assert_eq!(parse_fence("jobs/nightly:42"), Ok(("jobs/nightly".to_string(), 42)));
        assert_eq!(parse_fence("a:b:7"), Ok(("a:b".to_string(), 7)));
        assert!(parse_fence("nightly").is_err());
        assert!(parse_fence(":7").is_err());
        assert!(parse_fence("nightly:x").is_err());
    }

    /// Worker threads are a setting of the process: taken with a config file, refused when 0
    /// or past the bound, with clap's error naming the flag.
    #[test]
    fn worker_threads_are_bounded_and_go_with_a_config_file() {
        use clap::Parser;
        let parsed = Cli::try_parse_from(["basalt", "start", "--config", "node.toml", "--worker-threads", "1"]);
        match parsed.map(|cli| cli.command) {
            Ok(Command::Start(args)) => assert_eq!(args.worker_threads, Some(1)),
            other => panic!("expected a start command, got {other:?}"),
        }
        for refused in ["0", "1025", "many"] {
            let error = Cli::try_parse_from(["basalt", "start", "--config", "n.toml", "--worker-threads", refused])
                .expect_err(refused)
                .to_string();
            assert!(error.contains("--worker-threads"), "{refused}: {error}");
        }
        let share = crate::dev::worker_threads_per_node(3);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert!(
            share >= 1 && usize::from(share) <= cores.max(1),
            "{share} of {cores} cores"
        );
        assert_eq!(crate::dev::worker_threads_per_node(1_000_000), 1, "at least one each");
    }

    #[test]
    fn a_config_file_is_not_mixed_with_flags() {
        use clap::Parser;
        assert!(Cli::try_parse_from(["basalt", "start", "--config", "node.toml"]).is_ok());
        for flag in [
            ["--region", "us:1"],
            ["--clock-skew-ms", "5"],
            ["--http", "127.0.0.1:8001"],
            ["--session-idle-ms", "1000"],
        ] {
            let mixed = Cli::try_parse_from(["basalt", "start", "--config", "node.toml", flag[0], flag[1]]);
            let error = mixed
                .err()
                .unwrap_or_else(|| panic!("{} was accepted with --config", flag[0]));
            assert!(error.to_string().contains("cannot be used with"), "{error}");
        }
    }
}
