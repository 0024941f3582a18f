//! `basalt cache ...`: purge the edge caches of the region (and, through replication, of every
//! region), and show every node's edge counters.

use std::time::Duration;

use basalt_client::{Client, NodeCacheStats, PurgeTarget};
use clap::{ArgGroup, Subcommand};

use super::err;
use crate::commands::parse_duration;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Purge by URL (exact path with query), prefix, tag, or everything. Returns once every node
    /// of the region applied it (exit 1, naming the nodes, if some had not within --wait).
    #[command(group(ArgGroup::new("target").required(true).args(["url", "prefix", "tag", "all"])))]
    Purge {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Everything stored.
        #[arg(long)]
        all: bool,
        /// How long to wait for every node of the region (at most 30s).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        wait: Duration,
    },
    /// Hits, misses, stale serves, hit ratio, bytes, objects, evictions and origin fetches, per
    /// node and summed.
    Stats,
}

pub async fn cache(client: &Client, command: CacheCommand) -> Result<(), String> {
    match command {
        CacheCommand::Purge {
            url,
            prefix,
            tag,
            all,
            wait,
        } => {
            let target = match (url, prefix, tag) {
                (Some(url), _, _) => PurgeTarget::Url(url),
                (_, Some(prefix), _) => PurgeTarget::Prefix(prefix),
                (_, _, Some(tag)) => PurgeTarget::Tag(tag),
                _ if all => PurgeTarget::Everything,
                _ => return Err("give --url, --prefix, --tag or --all".into()),
            };
            let receipt = client.cache().purge(target, Some(wait)).await.map_err(err)?;
            let applied: Vec<String> = receipt.applied.iter().map(u64::to_string).collect();
            crate::outln!("purged: seq {}  applied on nodes {}", receipt.seq, applied.join(","));
            for lag in &receipt.lagging {
                crate::outln!("  not yet on node {} ({}): {}", lag.node_id, lag.addr, lag.reason);
            }
            match receipt.complete() {
                true => Ok(()),
                false => Err(format!(
                    "purge {} is committed, but {} node(s) had not applied it; they apply it when they catch up",
                    receipt.seq,
                    receipt.lagging.len()
                )),
            }
        }
        CacheCommand::Stats => {
            let nodes = client.cache().stats().await.map_err(err)?;
            print_stats(&nodes);
            Ok(())
        }
    }
}

fn print_stats(nodes: &[NodeCacheStats]) {
    crate::outln!(
        "{:<6} {:<22} {:>10} {:>10} {:>8} {:>7} {:>9} {:>12} {:>9} {:>9} {:>8} {:>7}",
        "node",
        "addr",
        "hits",
        "misses",
        "stale",
        "ratio",
        "objects",
        "bytes",
        "evicted",
        "fetches",
        "errors",
        "purges"
    );
    let mut sum = NodeCacheStats::default();
    for node in nodes {
        if !node.error.is_empty() {
            crate::outln!("{:<6} {:<22} unreachable: {}", node.node_id, node.addr, node.error);
            continue;
        }
        if !node.edge {
            crate::outln!("{:<6} {:<22} no edge listener", node.node_id, node.addr);
            continue;
        }
        print_row(&node.node_id.to_string(), &node.addr, node);
        sum.hits += node.hits;
        sum.misses += node.misses;
        sum.stale += node.stale;
        sum.revalidated += node.revalidated;
        sum.objects += node.objects;
        sum.bytes += node.bytes;
        sum.evictions += node.evictions;
        sum.origin_fetches += node.origin_fetches;
        sum.origin_errors += node.origin_errors;
        sum.purges_applied = sum.purges_applied.max(node.purges_applied);
    }
    print_row("all", "", &sum);
}

fn print_row(node: &str, addr: &str, s: &NodeCacheStats) {
    // Hits and revalidations are served from the store; stale serves too.
    let served = s.hits + s.revalidated + s.stale;
    let asked = served + s.misses;
    let ratio = match asked {
        0 => "-".to_string(),
        n => format!("{:.1}%", served as f64 * 100.0 / n as f64),
    };
    crate::outln!(
        "{:<6} {:<22} {:>10} {:>10} {:>8} {:>7} {:>9} {:>12} {:>9} {:>9} {:>8} {:>7}",
        node,
        addr,
        s.hits,
        s.misses,
        s.stale,
        ratio,
        s.objects,
        s.bytes,
        s.evictions,
        s.origin_fetches,
        s.origin_errors,
        s.purges_applied
    );
}
