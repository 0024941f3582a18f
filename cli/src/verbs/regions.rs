//! `basalt regions ...`: the replicated region topology of one region (add, remove, show: through
//! the cluster API of the region `--endpoints` or `--region` names), and for a multi-region dev
//! cluster its replication status and run-time changes to its WAN links (through the control
//! endpoint `basalt dev` serves).

use std::time::Duration;

use basalt_client::{Client, ClientOptions};
use clap::Subcommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Subcommand, Debug)]
pub enum RegionsCommand {
    /// Add a region to this region's replicated topology, `name:id=ENDPOINT,...` (or change the
    /// endpoints of one it knows), each ENDPOINT a node's `CLIENT/PEER` addresses (the feed goes
    /// to its peer listener, under the peer listener's mutual TLS) or `CLIENT` alone (the feed goes
    /// to its client port with the root token). It gets no escrow share of counter bounds: give it room with
    /// `basalt counter transfer`. Run it in every region the new one replicates with.
    Add { region: String },
    /// Remove a region from this region's topology: nothing more is shipped to it or merged from
    /// it (its escrow share stays spent).
    Remove { name: String },
    /// This region's replicated topology: the regions, their endpoints, the home, escrow shares.
    Topology,
    /// Per region its leader and digest; per link the replication lag, shipped and acknowledged
    /// positions; whether every region's digest agrees.
    Status,
    /// The simulated WAN links between regions.
    Links,
    /// Cut the link between two regions (both ways).
    Partition { a: String, b: String },
    /// Reconnect two regions; with no regions, heal every partition.
    Heal { a: Option<String>, b: Option<String> },
    /// Set the one-way latency between two regions, e.g. `latency us eu 200ms`.
    Latency {
        a: String,
        b: String,
        #[arg(value_parser = crate::commands::parse_duration)]
        latency: Duration,
    },
}

/// The endpoints of region `name` in a dev cluster file.
pub fn region_endpoints(file: &serde_json::Value, name: &str) -> Result<Vec<String>, String> {
    let regions = file["regions"]
        .as_array()
        .ok_or("this dev cluster has one region (start one with `basalt dev --regions us,eu,ap`)")?;
    let region = regions
        .iter()
        .find(|r| r["name"].as_str() == Some(name))
        .ok_or_else(|| {
            let names: Vec<&str> = regions.iter().filter_map(|r| r["name"].as_str()).collect();
            format!("no region {name:?}; the regions are {}", names.join(", "))
        })?;
    let endpoints: Vec<String> = region["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if endpoints.is_empty() {
        return Err(format!("region {name:?} lists no endpoints"));
    }
    Ok(endpoints)
}

fn cluster() -> Result<serde_json::Value, String> {
    let path = crate::commands::cluster_file();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "no multi-region dev cluster: start one with `basalt dev --regions us,eu,ap` (no {})",
            path.display()
        )
    })?;
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file["regions"].as_array().is_none() {
        return Err("the running dev cluster has one region (start one with `basalt dev --regions us,eu,ap`)".into());
    }
    Ok(file)
}

/// One HTTP/1.1 request to the dev process's control endpoint; the body of a 2xx answer.
async fn control(file: &serde_json::Value, method: &str, path: &str) -> Result<String, String> {
    let addr = file["control"]
        .as_str()
        .ok_or("the cluster file names no control endpoint")?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("the control endpoint {addr} did not answer"))?
        .map_err(|e| format!("the control endpoint {addr}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let ok = head.split_whitespace().nth(1).is_some_and(|code| code.starts_with('2'));
    if ok {
        Ok(body.to_string())
    } else {
        Err(body.trim().to_string())
    }
}

/// Whether `command` works on the replicated topology through the cluster API (and not on a dev
/// cluster's control endpoint).
pub fn topology_verb(command: &RegionsCommand) -> bool {
    matches!(
        command,
        RegionsCommand::Add { .. } | RegionsCommand::Remove { .. } | RegionsCommand::Topology
    )
}

/// Runs a topology verb against the region `client` talks to.
pub async fn change(command: RegionsCommand, client: Client) -> Result<(), String> {
    let topology = match command {
        RegionsCommand::Add { region } => {
            let remote = basalt_server::config::parse_remote_region(&region).map_err(|e| e.to_string())?;
            client
                .add_region(&remote.name, remote.id, &remote.endpoints)
                .await
                .map_err(|e| e.to_string())?
        }
        RegionsCommand::Remove { name } => client.remove_region(&name).await.map_err(|e| e.to_string())?,
        RegionsCommand::Topology => client
            .region_topology()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("this region has no region topology (not started with --region, or not committed yet)")?,
        other => return Err(format!("{other:?} is not a topology verb")),
    };
    print_topology(&topology);
    Ok(())
}

fn print_topology(topology: &basalt_client::pb::RegionTopology) {
    crate::outln!(
        "region topology (changed at log index {}), home region {}:",
        topology.changed_at,
        topology.home_id
    );
    for region in &topology.regions {
        crate::outln!(
            "  {}:{}{}  escrow share {}  endpoints {}",
            region.name,
            region.id,
            if region.id == topology.this_id {
                " (this region)"
            } else {
                ""
            },
            region.escrow_share.as_deref().unwrap_or("unknown here"),
            if region.endpoints.is_empty() {
                "-".to_string()
            } else {
                region.endpoints.join(",")
            }
        );
    }
}

pub async fn run(command: RegionsCommand) -> Result<(), String> {
    let file = cluster()?;
    match command {
        RegionsCommand::Add { .. } | RegionsCommand::Remove { .. } | RegionsCommand::Topology => {
            Err("a topology verb goes through the cluster API".into())
        }
        RegionsCommand::Status => status(&file).await,
        RegionsCommand::Links => {
            crate::out!("{}", control(&file, "GET", "/links").await?);
            Ok(())
        }
        RegionsCommand::Partition { a, b } => {
            crate::out!("{}", control(&file, "POST", &format!("/partition/{a}/{b}")).await?);
            Ok(())
        }
        RegionsCommand::Heal { a: Some(a), b: Some(b) } => {
            crate::out!("{}", control(&file, "POST", &format!("/heal/{a}/{b}")).await?);
            Ok(())
        }
        RegionsCommand::Heal { a: None, b: None } => {
            crate::out!("{}", control(&file, "POST", "/heal").await?);
            Ok(())
        }
        RegionsCommand::Heal { .. } => Err("heal takes two regions, or none to heal everything".into()),
        RegionsCommand::Latency { a, b, latency } => {
            let ms = latency.as_millis();
            crate::out!("{}", control(&file, "POST", &format!("/latency/{a}/{b}/{ms}")).await?);
            Ok(())
        }
    }
}

async fn status(file: &serde_json::Value) -> Result<(), String> {
    let regions = file["regions"].as_array().cloned().unwrap_or_default();
    let mut digests = Vec::new();
    for region in &regions {
        let name = region["name"].as_str().unwrap_or("?");
        let endpoints = region_endpoints(file, name)?;
        let client = Client::lazy(
            &endpoints,
            ClientOptions {
                attempt_timeout: Duration::from_secs(3),
                ..ClientOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        // The leader knows the outgoing side of the links; any node knows what it merged.
        let mut leader = None;
        for endpoint in &endpoints {
            if let Ok(answer) = client.node_regions(endpoint, false).await {
                if answer.leader {
                    leader = Some(endpoint.clone());
                    break;
                }
            }
        }
        let Some(leader) = leader else {
            crate::outln!("region {name}: no leader reachable");
            digests.push(None);
            continue;
        };
        let answer = client.node_regions(&leader, true).await.map_err(|e| e.to_string())?;
        crate::outln!(
            "region {} (id {}): leader node {} ({leader}), applied {}, feed trimmed to {}, digest {}",
            answer.region,
            answer.region_id,
            answer.node_id,
            answer.applied_index,
            answer.feed_trimmed_upto,
            answer.digest
        );
        for link in &answer.links {
            crate::outln!(
                "  -> {:<6} {}  shipped {}  acked {}  lag {} entries / {} ms  resyncs {}{}",
                link.region,
                if link.connected { "connected   " } else { "disconnected" },
                link.shipped_upto,
                link.acked_upto.map_or_else(|| "?".into(), |a| a.to_string()),
                link.lag_entries,
                link.lag_ms,
                link.resyncs,
                if link.alarm.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", link.alarm)
                }
            );
            crate::outln!(
                "  <- {:<6} merged up to {}  lag p50 {} ms  p99 {} ms  max {} ms  ({} entries)",
                link.region,
                link.merged_upto,
                link.incoming_lag_p50_ms,
                link.incoming_lag_p99_ms,
                link.incoming_lag_max_ms,
                link.incoming_samples
            );
            crate::outln!(
                "     purges: {} pending there (oldest {} ms)  last from there arrived after {}",
                super::show_optional(link.purges_pending),
                super::show_optional(link.purge_pending_ms),
                link.last_purge_lag_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms} ms"))
            );
        }
        digests.push(Some(answer.digest));
    }
    let agree = digests.iter().all(|d| d.is_some()) && digests.windows(2).all(|w| w[0] == w[1]);
    crate::outln!(
        "digests: {}",
        if agree {
            "every region agrees"
        } else {
            "regions DIFFER (still replicating, or partitioned)"
        }
    );
    if let Ok(links) = control(file, "GET", "/links").await {
        crate::out!("{links}");
    }
    Ok(())
}
