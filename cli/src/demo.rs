//! `basalt demo NAME`: runs one of the systems of `basalt-examples` on a temporary cluster (or
//! on `--endpoints`), prints what happens and the figures it measured, and exits 0 only if the
//! system's invariant held.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::net::SocketAddr;

use basalt_examples::{Demo, RegionEndpoints, Report, Scale, System, SYSTEMS};
use basalt_regions::{LinkProxy, Topology};
use basalt_testkit::local_ports::{self, PortReservation};
use clap::Args;
use futures::FutureExt;

use crate::dev::{spawn_node, stop_all, wait_for_leader, NodeLaunch, NodeProcess};
use crate::dev_regions::{launch, proxies_needed, RegionAddresses, RunningRegions};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The system to run (`basalt demo --list` shows them).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the systems and what each checks.
    #[arg(long, conflicts_with = "name")]
    list: bool,
    /// A short run of a few seconds (what the test suite runs).
    #[arg(long)]
    short: bool,
    /// Run on this cluster (host:port,...) instead of a temporary one.
    #[arg(long, conflicts_with = "cluster_file")]
    endpoints: Option<String>,
    /// Run on the cluster this file lists (as `basalt dev` writes it: ~/.basalt/dev/cluster.json).
    #[arg(long)]
    cluster_file: Option<PathBuf>,
    /// Keep the temporary cluster's directory (data and node logs) after the run; it is kept
    /// anyway when the run fails.
    #[arg(long)]
    keep: bool,
}

/// How long the temporary cluster may take to elect its first leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Violations printed at most; the rest are counted.
const VIOLATIONS_SHOWN_MAX: usize = 20;

pub async fn run(args: DemoArgs) -> Result<(), String> {
    if args.list {
        crate::out!("{}", listing());
        return Ok(());
    }
    let name = args.name.clone().unwrap_or_default();
    let system = basalt_examples::find(&name).ok_or_else(|| {
        format!(
            "no system named {name:?}; there are: {}",
            SYSTEMS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    let scale = if args.short { Scale::Short } else { Scale::Full };
    let given = match (&args.endpoints, &args.cluster_file) {
        (Some(_), _) if !system.regions.is_empty() => {
            return Err(format!(
                "{} runs in regions {}: pass --cluster-file of a `basalt dev --regions {}` cluster, or nothing for a temporary one",
                system.name,
                system.regions.join(", "),
                system.regions.join(",")
            ))
        }
        (Some(_), _) if system.origin => {
            return Err(format!(
                "{} serves the origin its nodes' edge caches front: pass --cluster-file of a `basalt dev --origin /=http://127.0.0.1:PORT` cluster, or nothing for a temporary one",
                system.name
            ))
        }
        (Some(list), _) => Some(Given {
            endpoints: crate::commands::parse_endpoint_list(list)?,
            regions: Vec::new(),
            origin: None,
        }),
        (None, Some(path)) => Some(given_cluster(system, path)?),
        (None, None) => None,
    };
    let Some(Given {
        endpoints,
        regions,
        origin,
    }) = given
    else {
        // It owns node processes from here: it must stop them in order whatever becomes of its
        // stdout (see `output`).
        crate::output::supervising();
        // Interrupted while starting: the nodes started so far are killed with their handles
        // (`kill_on_drop`), and the directory goes with its handle.
        // One handler for the whole run: a signal between the phases is not lost.
        let shutdown = crate::commands::shutdown_signal();
        tokio::pin!(shutdown);
        let mut cluster = tokio::select! {
            cluster = TempCluster::start(system) => cluster?,
            () = &mut shutdown => return Err("interrupted while starting the cluster".into()),
        };
        let outcome = tokio::select! {
            outcome = run_system(system, cluster.endpoints.clone(), cluster.regions.clone(), cluster.origin, scale) => outcome,
            () = &mut shutdown => Err("interrupted".to_string()),
        };
        crate::outln!("stopping the temporary cluster");
        stop_all(&mut cluster.nodes).await;
        drop(cluster.proxies);
        let dir = cluster.dir.path().display().to_string();
        if args.keep || outcome.is_err() {
            let _ = cluster.dir.keep();
            crate::outln!("its data and node logs are kept in {dir}");
        }
        return outcome;
    };
    crate::outln!("basalt demo {}: on {}", system.name, endpoints.join(","));
    run_system(system, endpoints, regions, origin, scale).await
}

/// The paths a system with an origin (`System::origin`: the cdn) serves: a given cluster's
/// `--origin` prefix must cover them.
const ORIGIN_PATHS: &str = "/products/";

/// A cluster the demo did not start: where its nodes are, and where the system must serve the
/// origin their edge caches front.
struct Given {
    endpoints: Vec<String>,
    regions: Vec<RegionEndpoints>,
    origin: Option<SocketAddr>,
}

/// The cluster a cluster file (as `basalt dev` writes it) describes, with what `system` needs of
/// it: each of its regions, and for a system with an origin each node's edge and the origin's
/// address.
fn given_cluster(system: &System, path: &std::path::Path) -> Result<Given, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading the cluster file {}: {e}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let mut regions = Vec::new();
    for name in system.regions {
        let region = file["regions"]
            .as_array()
            .and_then(|regions| regions.iter().find(|r| r["name"].as_str() == Some(name)));
        regions.push(RegionEndpoints {
            name: name.to_string(),
            endpoints: crate::commands::cluster_file_endpoints(path, Some(name))?,
            edges: region.map(|r| strings(&r["edges"])).unwrap_or_default(),
        });
    }
    let endpoints = match regions.first() {
        Some(first) => first.endpoints.clone(),
        None => crate::commands::cluster_file_endpoints(path, None)?,
    };
    let mut origin = None;
    if system.origin {
        let needs = || {
            format!(
                "{}: {} serves the origin its nodes' edge caches front: start the cluster with `basalt dev{} --origin /=http://127.0.0.1:PORT` (a prefix covering {ORIGIN_PATHS})",
                path.display(),
                system.name,
                match system.regions.is_empty() {
                    true => String::new(),
                    false => format!(" --regions {}", system.regions.join(",")),
                }
            )
        };
        if regions.iter().any(|r| r.edges.is_empty()) {
            return Err(needs());
        }
        origin = Some(origin_to_serve(&strings(&file["origins"])).ok_or_else(needs)??);
    }
    Ok(Given {
        endpoints,
        regions,
        origin,
    })
}

/// Where to serve the origin of `ORIGIN_PATHS`, among a cluster's `--origin` entries: the one
/// with the longest prefix covering them (as the edge routes), which must name an IP address
/// this machine can listen on. `None`: no entry covers them.
fn origin_to_serve(origins: &[String]) -> Option<Result<SocketAddr, String>> {
    let parsed: Vec<(&String, basalt_server::config::OriginConfig)> = origins
        .iter()
        .filter_map(|text| basalt_server::config::parse_origin(text).ok().map(|o| (text, o)))
        .collect();
    // A longer prefix inside the system's paths (`/products/1`) would take some of its pages
    // to another origin at the edge: refused rather than half served.
    if let Some((text, _)) = parsed
        .iter()
        .find(|(_, o)| o.prefix.len() > ORIGIN_PATHS.len() && o.prefix.starts_with(ORIGIN_PATHS))
    {
        return Some(Err(format!(
            "origin {text} takes part of {ORIGIN_PATHS} elsewhere: the demo must serve all of it"
        )));
    }
    let covering = parsed
        .into_iter()
        .filter(|(_, origin)| ORIGIN_PATHS.starts_with(&origin.prefix))
        .max_by_key(|(_, origin)| origin.prefix.len())?;
    let (text, origin) = covering;
    Some(match origin.authority() {
        Ok(authority) => authority
            .as_str()
            .parse::<SocketAddr>()
            .map_err(|_| format!("origin {text}: the demo serves the origin itself, so it must be http://IP:PORT")),
        Err(e) => Err(e.to_string()),
    })
}

/// The `--list` text: each system's name, what it is built from and what it checks.
fn listing() -> String {
    let mut out = String::new();
    for system in SYSTEMS {
        out.push_str(&format!(
            "{}\n    {}\n    checks: {}\n",
            system.name, system.summary, system.invariant
        ));
    }
    out
}

async fn run_system(
    system: &System,
    endpoints: Vec<String>,
    regions: Vec<RegionEndpoints>,
    origin: Option<SocketAddr>,
    scale: Scale,
) -> Result<(), String> {
    let mut demo = Demo::new(endpoints, scale, |line| crate::outln!("{line}")).with_regions(regions);
    if let Some(origin) = origin {
        demo = demo.with_origin(origin);
    }
    // A panic in a system is its failure, not the command's: the cluster is stopped and its
    // directory kept as for any failed run.
    let run = std::panic::AssertUnwindSafe((system.run)(&demo)).catch_unwind().await;
    let report = match run {
        Ok(report) => report.map_err(|e| format!("{}: {e}", system.name))?,
        Err(_) => return Err(format!("{}: the system panicked", system.name)),
    };
    crate::out!("{}", summary(system, &report));
    if report.held() {
        Ok(())
    } else {
        Err(format!("{}: invariant broken", system.name))
    }
}

/// The summary: the figures, then whether the invariant held and, if not, how it broke.
fn summary(system: &System, report: &Report) -> String {
    let width = report.figures.iter().map(|(what, _)| what.len()).max().unwrap_or(0);
    let mut out = format!("summary of {}:\n", system.name);
    for (what, value) in &report.figures {
        out.push_str(&format!("  {what:<width$}  {value}\n"));
    }
    if report.held() {
        out.push_str(&format!("invariant held: {}\n", system.invariant));
    } else {
        out.push_str(&format!("INVARIANT BROKEN: {}\n", system.invariant));
        for violation in report.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
            out.push_str(&format!("  - {violation}\n"));
        }
        if report.violations.len() > VIOLATIONS_SHOWN_MAX {
            out.push_str(&format!(
                "  ... and {} more\n",
                report.violations.len() - VIOLATIONS_SHOWN_MAX
            ));
        }
    }
    out
}

/// A cluster of node processes in a temporary directory, on ports no other local cluster takes.
struct TempCluster {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProcess>,
    endpoints: Vec<String>,
    /// With regions: each region's endpoints, and the link proxies between them.
    regions: Vec<RegionEndpoints>,
    proxies: Vec<LinkProxy>,
    /// Where the system serves the origin of the nodes' edge caches, when it asked for one.
    origin: Option<SocketAddr>,
    /// Held while the cluster runs, so no other reservation hands its ports out.
    _ports: Vec<PortReservation>,
}

/// Reserves a loopback port, kept in `ports`; its address.
fn reserve(ports: &mut Vec<PortReservation>) -> Result<String, String> {
    let port = local_ports::reserve().map_err(|e| e.to_string())?;
    let addr = port.addr().to_string();
    ports.push(port);
    Ok(addr)
}

/// Each WAN link's one-way latency and jitter in a temporary multi-region cluster, as `basalt dev
/// --regions` sets them.
const WAN_LATENCY: Duration = Duration::from_millis(40);
const WAN_JITTER: Duration = Duration::from_millis(5);

impl TempCluster {
    async fn start(system: &System) -> Result<TempCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("basalt-demo-{}-", system.name))
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        if !system.regions.is_empty() {
            return Self::start_regions(system, dir).await;
        }
        let exe = std::env::current_exe().map_err(|e| format!("locating the basalt binary: {e}"))?;
        let mut ports = Vec::new();
        let mut reserve = || reserve(&mut ports);
        let mut addresses = Vec::new();
        for _ in 0..system.nodes {
            addresses.push((reserve()?, reserve()?, reserve()?));
        }
        let endpoints: Vec<String> = addresses.iter().map(|(grpc, _, _)| grpc.clone()).collect();
        let peers: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, (grpc, _, peer))| crate::dev::member_flag(i + 1, grpc, peer))
            .collect();
        crate::outln!(
            "basalt demo {}: starting a temporary {}-node cluster in {}",
            system.name,
            system.nodes,
            dir.path().display()
        );
        let mut nodes = Vec::new();
        for (i, (grpc, http, peer)) in addresses.iter().enumerate() {
            let id = i as u16 + 1;
            let started = spawn_node(
                &exe,
                &NodeLaunch {
                    label: format!("node {id}"),
                    id,
                    grpc: grpc.clone(),
                    peer: peer.clone(),
                    http: http.clone(),
                    dir: dir.path().join(format!("node-{id}")),
                    log: dir.path().join(format!("node-{id}.log")),
                    peers: peers.join(","),
                    init: id == 1,
                    extra: Vec::new(),
                    worker_threads: crate::dev::worker_threads_per_node(addresses.len()),
                },
            );
            match started {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    stop_all(&mut nodes).await;
                    return Err(e);
                }
            }
        }
        let started = Instant::now();
        match wait_for_leader(&endpoints, &basalt_client::ClientOptions::default(), LEADER_WAIT).await {
            Ok((id, addr)) => crate::outln!(
                "cluster up: leader node {id} ({addr}) after {:.1}s",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                stop_all(&mut nodes).await;
                let kept = dir.keep();
                return Err(format!(
                    "the temporary cluster elected no leader within {LEADER_WAIT:?}: {e} (node logs in {})",
                    kept.display()
                ));
            }
        }
        Ok(TempCluster {
            dir,
            nodes,
            endpoints,
            regions: Vec::new(),
            proxies: Vec::new(),
            origin: None,
            _ports: ports,
        })
    }

    /// The system's regions, each of `system.nodes` nodes, linked through WAN proxies.
    async fn start_regions(system: &System, dir: tempfile::TempDir) -> Result<TempCluster, String> {
        let names: Vec<String> = system.regions.iter().map(|r| r.to_string()).collect();
        let topology = Topology::uniform(&names, system.nodes, WAN_LATENCY, WAN_JITTER).map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        let mut addresses = RegionAddresses {
            grpc: BTreeMap::new(),
            peer: BTreeMap::new(),
            http: BTreeMap::new(),
            edges: BTreeMap::new(),
            resp: BTreeMap::new(),
            proxies: Vec::new(),
        };
        let mut origins = Vec::new();
        let mut origin = None;
        if system.origin {
            let addr = reserve(&mut ports)?;
            origins.push(format!("/=http://{addr}"));
            origin = Some(addr.parse().map_err(|e| format!("origin address {addr}: {e}"))?);
        }
        for (r, region) in topology.regions.iter().enumerate() {
            let grpc = (0..region.nodes)
                .map(|_| reserve(&mut ports))
                .collect::<Result<_, _>>()?;
            let http = (0..region.nodes)
                .map(|_| reserve(&mut ports))
                .collect::<Result<_, _>>()?;
            let peer = (0..region.nodes)
                .map(|_| reserve(&mut ports))
                .collect::<Result<_, _>>()?;
            let edges = match system.origin {
                true => (0..region.nodes)
                    .map(|_| reserve(&mut ports))
                    .collect::<Result<_, _>>()?,
                false => Vec::new(),
            };
            addresses.grpc.insert(r, grpc);
            addresses.http.insert(r, http);
            addresses.peer.insert(r, peer);
            addresses.edges.insert(r, edges);
        }
        for _ in 0..proxies_needed(&topology) {
            let addr = reserve(&mut ports)?;
            addresses
                .proxies
                .push(addr.parse().map_err(|e| format!("proxy address {addr}: {e}"))?);
        }
        crate::outln!(
            "basalt demo {}: starting {} temporary regions ({}) of {} node{} each, {} ms apart, in {}",
            system.name,
            names.len(),
            names.join(", "),
            system.nodes,
            if system.nodes == 1 { "" } else { "s" },
            WAN_LATENCY.as_millis(),
            dir.path().display()
        );
        // A reservation is a lock file, not a listening socket: the proxies bind their ports.
        let RunningRegions {
            mut processes,
            proxies,
            links: _,
        } = launch(&topology, &addresses, dir.path(), &origins).await?;
        let started = Instant::now();
        let mut regions = Vec::new();
        for (r, name) in names.iter().enumerate() {
            let endpoints = addresses.grpc[&r].clone();
            if let Err(e) = wait_for_leader(&endpoints, &basalt_client::ClientOptions::default(), LEADER_WAIT).await {
                stop_all(&mut processes).await;
                let kept = dir.keep();
                return Err(format!(
                    "region {name} elected no leader within {LEADER_WAIT:?}: {e} (node logs in {})",
                    kept.display()
                ));
            }
            regions.push(RegionEndpoints {
                name: name.clone(),
                endpoints,
                edges: addresses.edges.get(&r).cloned().unwrap_or_default(),
            });
        }
        crate::outln!(
            "regions up: a leader in each after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(TempCluster {
            dir,
            nodes: processes,
            endpoints: regions[0].endpoints.clone(),
            regions,
            proxies,
            origin,
            _ports: ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_names_every_system_and_its_check() {
        let text = listing();
        for system in SYSTEMS {
            assert!(text.contains(system.name) && text.contains(system.invariant), "{text}");
        }
    }

    #[test]
    fn a_broken_invariant_is_shown_with_its_violations_bounded() {
        let system = &SYSTEMS[0];
        let report = Report {
            figures: vec![("events".into(), "3".into())],
            violations: (0..25).map(|i| format!("violation {i}")).collect(),
        };
        let text = summary(system, &report);
        assert!(text.contains("INVARIANT BROKEN"), "{text}");
        assert!(
            text.contains("violation 19") && !text.contains("violation 20"),
            "{text}"
        );
        assert!(text.contains("... and 5 more"), "{text}");
        let held = summary(system, &Report::default());
        assert!(held.contains("invariant held"), "{held}");
    }
}
