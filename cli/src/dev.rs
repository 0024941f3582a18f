//! `basalt dev`: a local cluster of node processes, supervised until Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (one region).
    #[arg(long, default_value_t = 3, conflicts_with_all = ["topology", "regions"])]
    pub(crate) nodes: u16,
    /// Run several regions, as declared in this TOML file (see examples/three-regions.toml).
    #[arg(long, conflicts_with = "regions")]
    pub(crate) topology: Option<PathBuf>,
    /// Run these regions (`us,eu,ap`), every pair linked with --wan-latency.
    #[arg(long, value_delimiter = ',')]
    pub(crate) regions: Vec<String>,
    /// Nodes per region with --regions.
    #[arg(long, default_value_t = 3, requires = "regions")]
    pub(crate) nodes_per_region: u16,
    /// One-way latency of every WAN link with --regions.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "40ms", requires = "regions")]
    pub(crate) wan_latency: Duration,
    /// Jitter of every WAN link with --regions.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "5ms", requires = "regions")]
    pub(crate) wan_jitter: Duration,
    /// gRPC port of node 1; node N listens on base + N - 1 (region R adds 100 × R).
    #[arg(long, default_value_t = 7001)]
    pub(crate) base_port: u16,
    /// Peer port of node 1 (Raft between the nodes, apart from the client API); node N listens
    /// on base + N - 1 (region R adds 100 × R).
    #[arg(long, default_value_t = 12001)]
    pub(crate) peer_base_port: u16,
    /// HTTP port of node 1 (/metrics, /health).
    #[arg(long, default_value_t = 8001)]
    pub(crate) http_base_port: u16,
    /// First port of the WAN link proxies (multi-region).
    #[arg(long, default_value_t = 9001)]
    pub(crate) proxy_base_port: u16,
    /// Port of the control endpoint `basalt regions partition|heal|latency` talks to.
    #[arg(long, default_value_t = 7000)]
    pub(crate) control_port: u16,
    /// Data directory (default: $BASALT_HOME/dev, BASALT_HOME defaulting to ~/.basalt).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Remove existing data first.
    #[arg(long)]
    pub(crate) clean: bool,
    /// Mutual TLS between the nodes and TLS on every client door (a throwaway CA, a certificate
    /// per node and a client CA for `basalt certs client` under the data directory's `tls/`), and
    /// authenticated clients (a root token in `root.token`); the cluster file names the CA and
    /// the token, where the CLI picks them up; all made once, kept between runs
    /// (docs/security.md).
    #[arg(long, conflicts_with_all = ["regions", "topology"])]
    pub(crate) secure: bool,
    /// Serve the edge cache on every node with this origin: `PREFIX=http://host:port` (repeat).
    /// Node N's edge listens on --edge-base-port + N - 1 (with regions, + 100 per region, as the
    /// other ports).
    #[arg(long)]
    pub(crate) origin: Vec<String>,
    /// The edge port of node 1 with --origin.
    #[arg(long, default_value_t = 8080)]
    pub(crate) edge_base_port: u16,
    /// The Redis protocol's port of node 1 (docs/redis.md); node N listens on base + N - 1
    /// (with regions, + 100 per region, as the other ports). `redis-cli` reaches node 1 without
    /// options.
    #[arg(long, default_value_t = 6379)]
    pub(crate) resp_base_port: u16,
}

/// The root token of a `--secure` dev cluster, in its data directory.
pub(crate) const ROOT_TOKEN_FILE: &str = "root.token";

/// Polls the cluster until a leader is known.
pub(crate) async fn wait_for_leader(
    endpoints: &[String],
    options: &basalt_client::ClientOptions,
    timeout: Duration,
) -> Result<(u64, String), String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no answer");
    while Instant::now() < deadline {
        match basalt_client::Client::connect_with(endpoints, options.clone()).await {
            Ok(client) => match client.cluster_status().await {
                Ok(status) if status.leader_id.is_some() && !status.leader_addr.is_empty() => {
                    return Ok((status.leader_id.unwrap_or_default(), status.leader_addr));
                }
                Ok(_) => last_error = "election in progress".into(),
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error)
}

pub(crate) struct NodeProcess {
    label: String,
    pub(crate) child: Child,
}

fn send_signal(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a child pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

/// One node to start: its id in its region, addresses, and extra flags.
pub(crate) struct NodeLaunch {
    pub(crate) label: String,
    pub(crate) id: u16,
    pub(crate) grpc: String,
    /// The peer listener: Raft goes there instead of the client port.
    pub(crate) peer: String,
    pub(crate) http: String,
    pub(crate) dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) peers: String,
    pub(crate) init: bool,
    pub(crate) extra: Vec<String>,
    /// The node's `--worker-threads` ([`worker_threads_per_node`]).
    pub(crate) worker_threads: u16,
}

/// Worker threads for each of `nodes` nodes started on this machine: its cores split between
/// them, at least one each. Three nodes of a default runtime (a thread per core each) on two
/// cores keep waking each other's idle threads to share work that one thread per node would
/// have done (on this repository's 2-core machines, about a quarter of the CPU per request
/// under RESP load went to that); a node on a machine of its own keeps one per core.
pub(crate) fn worker_threads_per_node(nodes: usize) -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let share = (cores / nodes.max(1)).clamp(1, usize::from(crate::commands::WORKER_THREADS_MAX));
    u16::try_from(share).unwrap_or(1)
}

/// One member of `--peers`: `ID=CLIENT/PEER`.
pub(crate) fn member_flag(id: impl std::fmt::Display, client: &str, peer: &str) -> String {
    format!("{id}={client}/{peer}")
}

pub(crate) fn spawn_node(exe: &std::path::Path, launch: &NodeLaunch) -> Result<NodeProcess, String> {
    std::fs::create_dir_all(&launch.dir).map_err(|e| format!("creating {}: {e}", launch.dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|e| format!("opening {}: {e}", launch.log.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command
        .arg("start")
        .args(["--id", &launch.id.to_string()])
        .args(["--listen", &launch.grpc])
        .args(["--peer-listen", &launch.peer])
        .args(["--http", &launch.http])
        .arg("--data-dir")
        .arg(&launch.dir)
        .args(["--peers", &launch.peers])
        .args(["--worker-threads", &launch.worker_threads.to_string()])
        .args(&launch.extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    if launch.init {
        command.arg("--init");
    }
    let child = command.spawn().map_err(|e| format!("starting {}: {e}", launch.label))?;
    Ok(NodeProcess {
        label: launch.label.clone(),
        child,
    })
}

pub(crate) fn prepare_dir(args: &DevArgs) -> Result<PathBuf, String> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::commands::basalt_home().join("dev"));
    if args.clean && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn write_cluster_file(record: &serde_json::Value) -> Result<PathBuf, String> {
    let cluster_file = crate::commands::cluster_file();
    if let Some(parent) = cluster_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&cluster_file, record.to_string())
        .map_err(|e| format!("writing {}: {e}", cluster_file.display()))?;
    Ok(cluster_file)
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    if args.topology.is_some() || !args.regions.is_empty() {
        return crate::dev_regions::run(args).await;
    }
    if args.nodes == 0 || args.nodes > 9 {
        return Err(format!("--nodes must be in 1..=9, got {}", args.nodes));
    }
    let dir = prepare_dir(&args)?;
    let tls_dir = dir.join("tls");
    if args.secure && !tls_dir.join(crate::certs::CA_CERT_FILE).exists() {
        // A key without its certificate: a run stopped between the two writes.
        let _ = std::fs::remove_file(tls_dir.join(crate::certs::CA_KEY_FILE));
        crate::certs::make_ca(&tls_dir).map_err(|e| e.to_string())?;
    }
    if args.secure && !tls_dir.join(crate::certs::CLIENT_CA_CERT_FILE).exists() {
        let _ = std::fs::remove_file(tls_dir.join(crate::certs::CLIENT_CA_KEY_FILE));
        crate::certs::make_client_ca(&tls_dir).map_err(|e| e.to_string())?;
    }
    let token_file = dir.join(ROOT_TOKEN_FILE);
    let root_token = if args.secure {
        if !token_file.exists() {
            let token = basalt_client::Token::generate();
            crate::certs::write(&token_file, &format!("{}\n", token.as_str()), true, true)
                .map_err(|e| e.to_string())?;
        }
        let text =
            std::fs::read_to_string(&token_file).map_err(|e| format!("reading {}: {e}", token_file.display()))?;
        Some(basalt_client::Token::from_text(&text))
    } else {
        None
    };
    let exe = std::env::current_exe().map_err(|e| format!("locating the basalt binary: {e}"))?;

    let addr = |i: u16| format!("127.0.0.1:{}", args.base_port + i - 1);
    let peer = |i: u16| format!("127.0.0.1:{}", u32::from(args.peer_base_port) + u32::from(i) - 1);
    if u32::from(args.peer_base_port) + u32::from(args.nodes) - 1 > u32::from(u16::MAX) {
        return Err(format!(
            "--peer-base-port {} leaves no port for node {}",
            args.peer_base_port, args.nodes
        ));
    }
    let peers: Vec<String> = (1..=args.nodes).map(|i| member_flag(i, &addr(i), &peer(i))).collect();
    // Checked here, before any node starts, for one clear error instead of one per node.
    for origin in &args.origin {
        basalt_server::config::parse_origin(origin).map_err(|e| e.to_string())?;
    }
    let edge = |i: u16| (!args.origin.is_empty()).then(|| format!("127.0.0.1:{}", args.edge_base_port + i - 1));
    let resp = |i: u16| format!("127.0.0.1:{}", u32::from(args.resp_base_port) + u32::from(i) - 1);
    if u32::from(args.resp_base_port) + u32::from(args.nodes) - 1 > u32::from(u16::MAX) {
        return Err(format!(
            "--resp-base-port {} leaves no port for node {}",
            args.resp_base_port, args.nodes
        ));
    }
    // Before any node starts: from here a signal stops the nodes in order.
    let shutdown = crate::commands::shutdown_signal();
    tokio::pin!(shutdown);
    let mut processes = Vec::new();
    for i in 1..=args.nodes {
        // Dev mode: FLUSHDB may empty the cluster, as on a developer's own redis-server.
        let mut extra = vec!["--resp-listen".to_string(), resp(i), "--resp-allow-flush".to_string()];
        if args.secure {
            let name = format!("node-{i}");
            let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
            extra.extend(crate::certs::node_flags(&tls_dir, &name, &hosts).map_err(|e| e.to_string())?);
            extra.extend(crate::certs::client_door_flags(&tls_dir, &name));
            extra.extend(["--root-token-file".to_string(), token_file.display().to_string()]);
        }
        if let Some(edge) = edge(i) {
            extra.extend(["--edge-listen".to_string(), edge]);
            for origin in &args.origin {
                extra.extend(["--origin".to_string(), origin.clone()]);
            }
        }
        processes.push(spawn_node(
            &exe,
            &NodeLaunch {
                label: format!("node {i}"),
                id: i,
                grpc: addr(i),
                peer: peer(i),
                http: format!("127.0.0.1:{}", args.http_base_port + i - 1),
                dir: dir.join(format!("node-{i}")),
                log: dir.join(format!("node-{i}.log")),
                peers: peers.join(","),
                init: i == 1,
                extra,
                worker_threads: worker_threads_per_node(usize::from(args.nodes)),
            },
        )?);
    }

    let endpoints: Vec<String> = (1..=args.nodes).map(addr).collect();
    let pids: Vec<u32> = processes.iter().filter_map(|p| p.child.id()).collect();
    let edges: Vec<String> = (1..=args.nodes).filter_map(edge).collect();
    let resp_addrs: Vec<String> = (1..=args.nodes).map(resp).collect();
    let mut record = serde_json::json!({
        "endpoints": endpoints, "pids": pids, "data_dir": dir, "edges": edges, "resp": resp_addrs,
        "origins": args.origin,
    });
    let ca_file = tls_dir.join(crate::certs::CA_CERT_FILE);
    let options = basalt_client::ClientOptions {
        token: root_token,
        tls: match args.secure {
            true => Some(basalt_client::TlsConnector::Client(
                basalt_client::ClientTls::from_files(&ca_file, None).map_err(|e| e.to_string())?,
            )),
            false => None,
        },
        ..basalt_client::ClientOptions::default()
    };
    if args.secure {
        record["token_file"] = serde_json::json!(token_file);
        record["ca_file"] = serde_json::json!(ca_file);
    }
    let cluster_file = write_cluster_file(&record)?;

    crate::outln!("basalt dev: {} nodes, data in {}", args.nodes, dir.display());
    if args.secure {
        crate::outln!(
            "  TLS on every port (peer ports: mutual TLS), CA {} (the CLI reads it through the cluster file; redis-cli --tls --cacert; curl --cacert)",
            ca_file.display()
        );
        crate::outln!(
            "  clients authenticate: root token in {} (the CLI reads it through the cluster file; RESP: AUTH <token>)",
            token_file.display()
        );
    }
    for (i, (p, endpoint)) in processes.iter().zip(&endpoints).enumerate() {
        let i = i as u16 + 1;
        crate::outln!(
            "  {}  grpc {}  peer {}  resp {}  http 127.0.0.1:{}{}  pid {}  log {}",
            p.label,
            endpoint,
            peer(i),
            resp(i),
            args.http_base_port + i - 1,
            edge(i).map_or_else(String::new, |e| format!("  edge {e}")),
            p.child.id().map_or_else(|| "-".into(), |x| x.to_string()),
            dir.join(format!("node-{i}.log")).display()
        );
    }
    crate::outln!("  cluster file {}", cluster_file.display());

    let started = Instant::now();
    let leader = tokio::select! {
        leader = wait_for_leader(&endpoints, &options, Duration::from_secs(15)) => Some(leader),
        () = &mut shutdown => None,
    };
    match leader {
        Some(Ok((id, addr))) => crate::outln!(
            "leader: node {id} ({addr}) after {:.1}s. Try: basalt kv put greeting hello; basalt cluster status. Ctrl-C stops all nodes.",
            started.elapsed().as_secs_f64()
        ),
        Some(Err(e)) => crate::outln!("no leader yet: {e} (see the node logs)"),
        None => {
            crate::outln!("stopping {} nodes...", processes.len());
            stop_all(&mut processes).await;
            let _ = std::fs::remove_file(&cluster_file);
            crate::outln!("stopped");
            return Ok(());
        }
    }
    supervise(processes, shutdown).await;
    let _ = std::fs::remove_file(&cluster_file);
    crate::outln!("stopped");
    Ok(())
}

/// Waits for `signal` (reporting nodes that exit on their own), then stops every node.
pub(crate) async fn supervise(mut processes: Vec<NodeProcess>, signal: impl std::future::Future<Output = ()>) {
    tokio::pin!(signal);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = poll.tick() => {
                for p in &mut processes {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        crate::outln!("{} exited ({status}); see its log", p.label);
                    }
                }
                processes.retain_mut(|p| !matches!(p.child.try_wait(), Ok(Some(_))));
                if processes.is_empty() {
                    crate::outln!("every node has exited");
                    break;
                }
            }
        }
    }

    crate::outln!("stopping {} nodes...", processes.len());
    stop_all(&mut processes).await;
}

/// SIGTERM to every node, then SIGKILL to those still running once a node's stop has had all
/// its time (`NODE_STOP_MAX`) and its exit too (three seconds more).
pub(crate) async fn stop_all(processes: &mut [NodeProcess]) {
    for p in processes.iter() {
        send_signal(&p.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + basalt_server::limits::NODE_STOP_MAX + Duration::from_secs(3);
    for p in processes.iter_mut() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, p.child.wait()).await.is_err() {
            crate::outln!("{} did not stop in time; killing it", p.label);
            let _ = p.child.kill().await;
        }
    }
}
