//! `basalt dev --topology FILE` / `--regions us,eu,ap`: every node of every region as a local
//! process, with all traffic between regions through the link simulator's proxies, and a control
//! endpoint for `basalt regions partition|heal|latency`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use basalt_regions::link::EndpointId;
use basalt_regions::{LinkProxy, Links, Topology};

use crate::dev::{DevArgs, NodeLaunch};

/// The dev process's view of the simulated WAN, shared with the control endpoint.
#[derive(Clone)]
struct Wan {
    topology: Arc<Topology>,
    links: Arc<Links>,
}

impl Wan {
    fn id(&self, name: &str) -> Result<EndpointId, (StatusCode, String)> {
        self.topology
            .region_id(name)
            .map(EndpointId::from)
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("unknown region {name:?}\n")))
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for a in &self.topology.regions {
            for b in &self.topology.regions {
                let (Some(x), Some(y)) = (self.topology.region_id(&a.name), self.topology.region_id(&b.name)) else {
                    continue;
                };
                if x >= y {
                    continue;
                }
                let there = self.links.state(x.into(), y.into());
                let back = self.links.state(y.into(), x.into());
                out.push_str(&format!(
                    "{} <-> {}: {}latency {:?} jitter {:?} loss {:.2}% bandwidth {}\n",
                    a.name,
                    b.name,
                    match (there.cut, back.cut) {
                        (true, true) => "PARTITIONED ",
                        (true, false) | (false, true) => "PARTITIONED ONE WAY ",
                        _ => "",
                    },
                    there.latency,
                    there.jitter,
                    f64::from(there.loss_ppm) / 10_000.0,
                    if there.bandwidth_bytes_per_s == 0 {
                        "unlimited".to_string()
                    } else {
                        format!("{:.1} Mbit/s", there.bandwidth_bytes_per_s as f64 * 8.0 / 1e6)
                    },
                ));
            }
        }
        out
    }
}

type Reply = Result<String, (StatusCode, String)>;

async fn links(State(wan): State<Wan>) -> String {
    wan.describe()
}

async fn partition(State(wan): State<Wan>, Path((a, b)): Path<(String, String)>) -> Reply {
    let (x, y) = (wan.id(&a)?, wan.id(&b)?);
    wan.links.change_pair(x, y, |s| s.cut = true);
    Ok(format!("partitioned {a} and {b}\n"))
}

async fn heal_pair(State(wan): State<Wan>, Path((a, b)): Path<(String, String)>) -> Reply {
    let (x, y) = (wan.id(&a)?, wan.id(&b)?);
    wan.links.change_pair(x, y, |s| s.cut = false);
    Ok(format!("healed {a} and {b}\n"))
}

async fn heal_all(State(wan): State<Wan>) -> String {
    wan.links.heal_cuts();
    "healed every partition\n".into()
}

async fn latency(State(wan): State<Wan>, Path((a, b, ms)): Path<(String, String, u64)>) -> Reply {
    let (x, y) = (wan.id(&a)?, wan.id(&b)?);
    wan.links.change_pair(x, y, |s| s.latency = Duration::from_millis(ms));
    Ok(format!("{a} <-> {b} one-way latency is now {ms} ms\n"))
}

fn control_router(wan: Wan) -> Router {
    Router::new()
        .route("/links", get(links))
        .route("/partition/{a}/{b}", post(partition))
        .route("/heal/{a}/{b}", post(heal_pair))
        .route("/heal", post(heal_all))
        .route("/latency/{a}/{b}/{ms}", post(latency))
        .with_state(wan)
}

/// Where every node and link proxy of a multi-region cluster listens, per region index.
pub(crate) struct RegionAddresses {
    pub(crate) grpc: BTreeMap<usize, Vec<String>>,
    /// Each node's peer listener (Raft within its region).
    pub(crate) peer: BTreeMap<usize, Vec<String>>,
    pub(crate) http: BTreeMap<usize, Vec<String>>,
    /// Empty for a region without edge caches.
    pub(crate) edges: BTreeMap<usize, Vec<String>>,
    /// Each node's RESP address; empty for a region without (a demo's regions).
    pub(crate) resp: BTreeMap<usize, Vec<String>>,
    /// Two per (source region, node of another region), taken in that order: one to the node's
    /// client port (requests forwarded to the home region), one to its peer listener (the feed).
    pub(crate) proxies: Vec<SocketAddr>,
}

/// How many link proxies a topology needs (see [`basalt_regions::topology::link_proxies_needed`]).
pub(crate) fn proxies_needed(topology: &Topology) -> usize {
    let region_nodes: Vec<u16> = topology.regions.iter().map(|r| r.nodes).collect();
    basalt_regions::topology::link_proxies_needed(&region_nodes)
}

/// A multi-region cluster running: its nodes, and the link proxies every byte between regions
/// crosses, obeying `links`.
pub(crate) struct RunningRegions {
    pub(crate) processes: Vec<crate::dev::NodeProcess>,
    pub(crate) proxies: Vec<LinkProxy>,
    pub(crate) links: Arc<Links>,
}

/// Starts every region of `topology` as node processes under `dir` (a directory per region),
/// with a link proxy per (source region, node of another region) so that all traffic between
/// regions crosses the simulated WAN; nodes with an edge address serve `origins`.
pub(crate) async fn launch(
    topology: &Topology,
    addresses: &RegionAddresses,
    dir: &std::path::Path,
    origins: &[String],
) -> Result<RunningRegions, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the basalt binary: {e}"))?;
    let links = Links::new();
    topology.apply(&links);
    let grpc = &addresses.grpc;
    if addresses.proxies.len() < proxies_needed(topology) {
        return Err(format!(
            "{} link proxy addresses for the {} the topology needs",
            addresses.proxies.len(),
            proxies_needed(topology)
        ));
    }
    let mut proxies = Vec::new();
    let mut remote_endpoints: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    let mut proxy_addresses = addresses.proxies.iter();
    for (a, _) in topology.regions.iter().enumerate() {
        for (b, _) in topology.regions.iter().enumerate() {
            if a == b {
                continue;
            }
            for (client, peer) in grpc[&b].iter().zip(&addresses.peer[&b]) {
                // `CLIENT/PEER`, each behind a proxy of the link from a to b.
                let mut proxied = Vec::new();
                for target in [client, peer] {
                    let listen = *proxy_addresses.next().ok_or("ran out of proxy addresses")?;
                    let target: SocketAddr = target.parse().map_err(|e| format!("node address: {e}"))?;
                    let proxy = LinkProxy::start(listen, a as u64 + 1, b as u64 + 1, target, links.clone())
                        .await
                        .map_err(|e| format!("starting the link proxy on {listen}: {e}"))?;
                    proxied.push(listen.to_string());
                    proxies.push(proxy);
                }
                remote_endpoints.entry((a, b)).or_default().push(proxied.join("/"));
            }
        }
    }

    let mut processes = Vec::new();
    for (r, region) in topology.regions.iter().enumerate() {
        let region_dir = dir.join(&region.name);
        let peers: Vec<String> = grpc[&r]
            .iter()
            .zip(&addresses.peer[&r])
            .enumerate()
            .map(|(i, (client, peer))| crate::dev::member_flag(i + 1, client, peer))
            .collect();
        let mut extra = vec![
            "--region".to_string(),
            format!("{}:{}", region.name, r + 1),
            "--home-region".to_string(),
            topology.home().to_string(),
        ];
        for (b, other) in topology.regions.iter().enumerate() {
            if b != r {
                extra.push("--remote-region".into());
                extra.push(format!(
                    "{}:{}={}",
                    other.name,
                    b + 1,
                    remote_endpoints[&(r, b)].join(",")
                ));
            }
        }
        if region.clock_skew_ms != 0 {
            extra.push(format!("--clock-skew-ms={}", region.clock_skew_ms));
        }
        for i in 1..=region.nodes {
            let mut extra = extra.clone();
            if let Some(resp) = addresses.resp.get(&r).and_then(|e| e.get(usize::from(i) - 1)) {
                extra.extend([
                    "--resp-listen".to_string(),
                    resp.clone(),
                    "--resp-allow-flush".to_string(),
                ]);
            }
            if let Some(edge) = addresses.edges.get(&r).and_then(|e| e.get(usize::from(i) - 1)) {
                extra.extend(["--edge-listen".to_string(), edge.clone()]);
                for origin in origins {
                    extra.extend(["--origin".to_string(), origin.clone()]);
                }
            }
            let started = crate::dev::spawn_node(
                &exe,
                &NodeLaunch {
                    label: format!("{} node {i}", region.name),
                    id: i,
                    grpc: grpc[&r][usize::from(i) - 1].clone(),
                    peer: addresses.peer[&r][usize::from(i) - 1].clone(),
                    http: addresses.http[&r][usize::from(i) - 1].clone(),
                    dir: region_dir.join(format!("node-{i}")),
                    log: region_dir.join(format!("node-{i}.log")),
                    peers: peers.join(","),
                    init: i == 1,
                    extra,
                    worker_threads: crate::dev::worker_threads_per_node(
                        topology.regions.iter().map(|r| usize::from(r.nodes)).sum(),
                    ),
                },
            );
            match started {
                Ok(process) => processes.push(process),
                Err(e) => {
                    crate::dev::stop_all(&mut processes).await;
                    return Err(e);
                }
            }
        }
    }
    Ok(RunningRegions {
        processes,
        proxies,
        links,
    })
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    let topology = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            Topology::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Topology::uniform(&args.regions, args.nodes_per_region, args.wan_latency, args.wan_jitter)
            .map_err(|e| e.to_string())?,
    };
    for origin in &args.origin {
        basalt_server::config::parse_origin(origin).map_err(|e| e.to_string())?;
    }
    let dir = crate::dev::prepare_dir(&args)?;
    // Before any node starts: from here a signal stops the nodes in order.
    let shutdown = crate::commands::shutdown_signal();
    tokio::pin!(shutdown);

    let port = |base: u16, region: usize, node: u16| -> Result<u16, String> {
        basalt_regions::topology::node_port_offset(region, node)
            .and_then(|offset| base.checked_add(offset))
            .ok_or_else(|| format!("the port of node {node} of region {region} from base {base} overflows"))
    };
    let mut addresses = RegionAddresses {
        grpc: BTreeMap::new(),
        peer: BTreeMap::new(),
        http: BTreeMap::new(),
        edges: BTreeMap::new(),
        resp: BTreeMap::new(),
        proxies: Vec::new(),
    };
    let addrs = |base: u16, r: usize, nodes: u16| {
        (1..=nodes)
            .map(|i| port(base, r, i).map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<Vec<_>, _>>()
    };
    for (r, region) in topology.regions.iter().enumerate() {
        addresses.grpc.insert(r, addrs(args.base_port, r, region.nodes)?);
        addresses.peer.insert(r, addrs(args.peer_base_port, r, region.nodes)?);
        addresses.http.insert(r, addrs(args.http_base_port, r, region.nodes)?);
        let region_edges = match args.origin.is_empty() {
            true => Vec::new(),
            false => addrs(args.edge_base_port, r, region.nodes)?,
        };
        addresses.edges.insert(r, region_edges);
        addresses.resp.insert(r, addrs(args.resp_base_port, r, region.nodes)?);
    }
    for i in 0..proxies_needed(&topology) {
        let port = u16::try_from(i)
            .ok()
            .and_then(|i| args.proxy_base_port.checked_add(i))
            .ok_or("ran out of proxy ports")?;
        addresses.proxies.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let RunningRegions {
        processes,
        proxies,
        links,
    } = launch(&topology, &addresses, &dir, &args.origin).await?;
    let grpc = &addresses.grpc;
    let edges = &addresses.edges;
    let resp = &addresses.resp;

    let wan = Wan {
        topology: Arc::new(topology.clone()),
        links: links.clone(),
    };
    let control_addr: SocketAddr = format!("127.0.0.1:{}", args.control_port)
        .parse()
        .map_err(|e| format!("control address: {e}"))?;
    let listener = tokio::net::TcpListener::bind(control_addr)
        .await
        .map_err(|e| format!("binding the control endpoint on {control_addr}: {e}"))?;
    let control = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, control_router(wan)).await {
            tracing::error!(error = %e, "control endpoint failed");
        }
    });

    let regions_record: Vec<serde_json::Value> = topology
        .regions
        .iter()
        .enumerate()
        .map(|(r, region)| {
            serde_json::json!({
                "name": region.name, "id": r + 1, "endpoints": grpc[&r], "edges": edges[&r], "resp": resp[&r],
            })
        })
        .collect();
    let pids: Vec<u32> = processes.iter().filter_map(|p| p.child.id()).collect();
    let cluster_file = crate::dev::write_cluster_file(&serde_json::json!({
        "endpoints": grpc[&0],
        "regions": regions_record,
        "control": control_addr.to_string(),
        "origins": args.origin,
        "pids": pids,
        "data_dir": dir,
    }))?;

    crate::outln!(
        "basalt dev: {} regions, {} nodes, data in {}",
        topology.regions.len(),
        processes.len(),
        dir.display()
    );
    for (r, region) in topology.regions.iter().enumerate() {
        crate::outln!(
            "  region {} (id {}): grpc {}  peer {}  logs {}",
            region.name,
            r + 1,
            grpc[&r].join(" "),
            addresses.peer[&r].join(" "),
            dir.join(&region.name).display()
        );
        crate::outln!("    resp {}", resp[&r].join(" "));
        if !edges[&r].is_empty() {
            crate::outln!("    edge {}", edges[&r].join(" "));
        }
    }
    crate::out!(
        "{}",
        Wan {
            topology: Arc::new(topology.clone()),
            links: links.clone()
        }
        .describe()
    );
    crate::outln!(
        "  ledgers, leases and queues are homed in {} (other regions forward to it)",
        topology.home()
    );
    crate::outln!("  control {control_addr}, cluster file {}", cluster_file.display());
    let started = Instant::now();
    let mut processes = processes;
    for (r, region) in topology.regions.iter().enumerate() {
        let plain = basalt_client::ClientOptions::default();
        let leader = tokio::select! {
            leader = crate::dev::wait_for_leader(&grpc[&r], &plain, Duration::from_secs(20)) => leader,
            () = &mut shutdown => {
                // Signalled while the regions elect: stop now, not after every region's wait.
                crate::outln!("stopping {} nodes...", processes.len());
                crate::dev::stop_all(&mut processes).await;
                control.abort();
                drop(proxies);
                let _ = std::fs::remove_file(&cluster_file);
                crate::outln!("stopped");
                return Ok(());
            }
        };
        match leader {
            Ok((id, addr)) => crate::outln!(
                "  {} leader: node {id} ({addr}) after {:.1}s",
                region.name,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => crate::outln!("  {}: no leader yet: {e} (see the node logs)", region.name),
        }
    }
    crate::outln!(
        "Try: basalt kv --region {} put greeting hello; basalt kv --region {} get greeting; basalt regions status. Ctrl-C stops everything.",
        topology.regions[0].name, topology.regions[1].name
    );
    crate::dev::supervise(processes, shutdown).await;
    control.abort();
    drop(proxies);
    let _ = std::fs::remove_file(&cluster_file);
    crate::outln!("stopped");
    Ok(())
}
