//! A multi-region run: several regions, each a [`Cluster`] of node processes, replicating to each
//! other through WAN link proxies the nemesis controls. Clients in every region run the regions
//! workload while the nemesis partitions regions from each other, kills a region's leader or
//! slows the WAN; then everything heals, the run waits for every region to report the same
//! digest, and each region reads the final state. `checker::regions` judges the history.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use basalt_client::Client;
use basalt_regions::{LinkProxy, Links};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::cluster::{io, Cluster};
use crate::history::{EventType, Recorder, NEMESIS};
use crate::nemesis::{FaultKind, FaultWindow};
use crate::run::{create_dir, finish_run, spawn_workers, timestamp, Finished, RunError, RunOptions, RunOutcome};
use crate::workload::regions::final_read;
use crate::workload::{perform, Completion, Shared, FINAL_PROCESS};

pub const NAMES: [&str; 5] = ["us", "eu", "ap", "sa", "af"];

/// The jumps the clock nemesis gives every node of a region at once, in ms (see `nemesis`).
const WHOLE_REGION_CLOCK_JUMPS_MS: [i64; 4] = [-7_200_000, -60_000, -2_000, 300];
/// One-way latency between regions when no fault slows it.
const WAN_LATENCY: Duration = Duration::from_millis(20);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

struct Region {
    name: &'static str,
    cluster: Cluster,
}

/// Starts `count` regions of `nodes` nodes, wired through proxies on `wan` (endpoints: region ids).
async fn start_regions(
    options: &RunOptions,
    count: usize,
    wan: &Arc<Links>,
    dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<(Vec<Region>, Vec<LinkProxy>), RunError> {
    let ports: Vec<_> = (0..count)
        .map(|_| Cluster::reserve(options.nodes))
        .collect::<Result<_, _>>()?;
    let mut proxies = Vec::new();
    let mut args: Vec<Vec<String>> = Vec::new();
    for (a, name) in NAMES.iter().enumerate().take(count) {
        let mut mine = vec!["--region".to_string(), format!("{name}:{}", a + 1)];
        for (b, targets) in ports.iter().enumerate() {
            if a == b {
                continue;
            }
            // Client addresses only: these nodes run Raft on their client ports (no peer
            // listener), so the feed goes there too, the path regions of earlier builds take.
            let mut endpoints = Vec::new();
            for target in targets.values() {
                let proxy = LinkProxy::start(
                    ([127, 0, 0, 1], 0).into(),
                    a as u64 + 1,
                    b as u64 + 1,
                    target.addr(),
                    wan.clone(),
                )
                .await
                .map_err(io("starting a WAN proxy"))?;
                endpoints.push(proxy.local_addr().to_string());
                proxies.push(proxy);
            }
            mine.push("--remote-region".into());
            mine.push(format!("{}:{}={}", NAMES[b], b + 1, endpoints.join(",")));
        }
        args.push(mine);
    }
    let mut regions = Vec::new();
    for (a, (region_ports, region_args)) in ports.into_iter().zip(args).enumerate() {
        let name = NAMES[a];
        let cluster = Cluster::start_at(
            &options.node_binary,
            region_ports,
            &dir.join("nodes").join(name),
            &data_dir.join(name),
            region_args,
        )
        .await?;
        regions.push(Region { name, cluster });
    }
    Ok((regions, proxies))
}

/// The leader's digest in every region, once they are all equal.
async fn wait_converged(regions: &[Region], admins: &[Client]) -> Result<BTreeMap<String, String>, String> {
    let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
    let mut last = BTreeMap::new();
    while tokio::time::Instant::now() < deadline {
        last.clear();
        for (region, admin) in regions.iter().zip(admins) {
            if let Some(leader) = region.cluster.leader(admin).await {
                let addr = region.cluster.nodes[&leader].addr.to_string();
                if let Ok(Ok(answer)) =
                    tokio::time::timeout(Duration::from_secs(5), admin.node_regions(&addr, true)).await
                {
                    last.insert(region.name.to_string(), answer.digest);
                }
            }
        }
        let mut digests = last.values();
        if last.len() == regions.len() && digests.next().is_some_and(|first| digests.all(|d| d == first)) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("no agreement within {CONVERGE_WITHIN:?}: {last:?}"))
}

/// Runs the regions workload on `regions` regions of `options.nodes` nodes each.
pub async fn run(options: RunOptions, regions_count: usize) -> Result<RunOutcome, RunError> {
    let count = regions_count.clamp(2, NAMES.len());
    let dir =
        options
            .store
            .join("regions")
            .join(format!("{}-seed{}-{}", timestamp(), options.seed, std::process::id()));
    create_dir(&dir)?;
    let data_dir = dir.join("data");
    let wan = Links::new();
    let ids: Vec<u64> = (1..=count as u64).collect();
    wan.set_delay(&ids, WAN_LATENCY, Duration::from_millis(5));
    let (mut regions, _proxies) = start_regions(&options, count, &wan, &dir, &data_dir).await?;
    let admins: Vec<Client> = regions.iter().map(|r| r.cluster.client()).collect::<Result<_, _>>()?;
    for (region, admin) in regions.iter().zip(&admins) {
        region.cluster.wait_for_leader(admin, Duration::from_secs(30)).await?;
    }

    let recorder = Recorder::new();
    let shared = Arc::new(Shared::default());
    let end_ns = recorder.elapsed_ns() + u64::try_from(options.time.as_nanos()).unwrap_or(u64::MAX);
    let concurrency = options.concurrency.max(count as u64);
    let done = Arc::new(AtomicU64::new(0));
    let clients = (0..concurrency as usize)
        .map(|w| {
            let region = &regions[w % count];
            Ok((region.cluster.client()?, Some(region.name.to_string())))
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    let workers = spawn_workers(&options, clients, &recorder, &shared, end_ns, &done);

    let windows = nemesis(&options, &mut regions, &admins, &wan, &recorder, end_ns).await;
    for w in workers {
        let _ = w.await;
    }

    let mut errors = Vec::new();
    recorder.record(NEMESIS, EventType::Info, "heal", json!({}), None);
    wan.heal_cuts();
    for (region, admin) in regions.iter_mut().zip(&admins) {
        if let Err(e) = region.cluster.heal() {
            errors.push(format!("healing {}: {e}", region.name));
        }
        if let Err(e) = region.cluster.wait_for_leader(admin, Duration::from_secs(30)).await {
            errors.push(format!("{} after healing: {e}", region.name));
        }
    }
    let converged = wait_converged(&regions, &admins).await;
    perform(&recorder, FINAL_PROCESS - 1, "converge", json!({}), false, async {
        match converged {
            Ok(digests) => Completion::Ok(json!({ "digests": digests })),
            Err(e) => Completion::Fail(e),
        }
    })
    .await;
    for (region, admin) in regions.iter().zip(&admins) {
        if let Err(e) = final_read(admin, &recorder, region.name).await {
            errors.push(e);
        }
    }
    for region in &mut regions {
        region.cluster.stop().await;
    }

    let events = recorder.snapshot();
    let verdicts = vec![options.workload.check(&events)];
    finish_run(Finished {
        dir,
        data_dir,
        options: &options,
        nodes: options.nodes * count as u64,
        seconds: recorder.elapsed_ns() as f64 / 1e9,
        events,
        verdicts,
        errors,
        windows,
    })
}

/// Faults between regions until `end_ns`: a partition of two regions (both ways), one region cut
/// off from all others, a region's leader killed (restarted when the fault ends), or a WAN
/// latency spike. Quiet 1.5–3 s between faults; each holds 2.5–5 s.
async fn nemesis(
    options: &RunOptions,
    regions: &mut [Region],
    admins: &[Client],
    wan: &Links,
    recorder: &Recorder,
    end_ns: u64,
) -> Vec<FaultWindow> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let kinds: Vec<FaultKind> = options
        .nemesis
        .iter()
        .copied()
        .filter(|k| {
            matches!(
                k,
                FaultKind::Partition | FaultKind::Kill | FaultKind::Latency | FaultKind::Clock
            )
        })
        .collect();
    let mut windows = Vec::new();
    let ids: Vec<u64> = (1..=regions.len() as u64).collect();
    let sleep_within = |d: Duration| async move {
        let left = end_ns.saturating_sub(recorder.elapsed_ns());
        tokio::time::sleep(d.min(Duration::from_nanos(left))).await;
        recorder.elapsed_ns() < end_ns
    };
    if kinds.is_empty() {
        sleep_within(options.time).await;
        return windows;
    }
    loop {
        if !sleep_within(Duration::from_millis(rng.gen_range(1500..3000))).await {
            return windows;
        }
        let kind = *kinds.choose(&mut rng).unwrap_or(&FaultKind::Partition);
        let a = rng.gen_range(0..regions.len());
        let mut skewed: Option<(usize, Option<tokio::task::JoinHandle<()>>)> = None;
        let (label, detail, killed) = match kind {
            FaultKind::Clock => {
                // One node of the region, any jump: its peers refuse it. Or the whole region, but
                // only back (or ahead within the max offset): a region whose every clock runs
                // hours ahead commits stamps that hours ahead, which other regions refuse until
                // real time catches up (held back by design), so the run could not converge.
                let whole = rng.gen_bool(0.5);
                let skew_ms = if whole {
                    *WHOLE_REGION_CLOCK_JUMPS_MS.choose(&mut rng).unwrap_or(&-60_000)
                } else {
                    *crate::nemesis::CLOCK_JUMPS_MS.choose(&mut rng).unwrap_or(&3_600_000)
                };
                let strobe = rng.gen_bool(0.3);
                let mut http: Vec<_> = regions[a].cluster.nodes.values().map(|n| n.http).collect();
                if !whole {
                    let one = *http.choose(&mut rng).expect("a region has nodes");
                    http = vec![one];
                }
                for addr in &http {
                    if let Err(e) = crate::cluster::set_clock_skew(*addr, skew_ms).await {
                        recorder.record(NEMESIS, EventType::Info, "error", json!({ "error": e }), None);
                    }
                }
                let target = if whole {
                    regions[a].name.to_string()
                } else {
                    format!("{} {}", regions[a].name, http[0])
                };
                skewed = Some((a, strobe.then(|| crate::nemesis::strobe_clocks(http, skew_ms))));
                (
                    crate::nemesis::clock_label(&target, skew_ms, strobe),
                    json!({ "region": regions[a].name, "whole_region": whole, "skew_ms": skew_ms, "strobe": strobe }),
                    None,
                )
            }
            FaultKind::Kill => {
                let leader = regions[a].cluster.leader(&admins[a]).await;
                match leader {
                    Some(node) => {
                        regions[a].cluster.kill(node).await;
                        (
                            format!("kill {} leader n{node}", regions[a].name),
                            json!({ "region": regions[a].name, "node": node }),
                            Some((a, node)),
                        )
                    }
                    None => continue,
                }
            }
            FaultKind::Latency => {
                wan.set_delay(&ids, Duration::from_millis(200), Duration::from_millis(50));
                ("wan latency 200±50 ms".to_string(), json!({ "latency_ms": 200 }), None)
            }
            _ if rng.gen_bool(0.5) || regions.len() == 2 => {
                let b = (a + rng.gen_range(1..regions.len())) % regions.len();
                wan.change_pair(a as u64 + 1, b as u64 + 1, |s| s.cut = true);
                (
                    format!("partition {}|{}", regions[a].name, regions[b].name),
                    json!({ "regions": [regions[a].name, regions[b].name] }),
                    None,
                )
            }
            _ => {
                for b in 0..regions.len() {
                    if b != a {
                        wan.change_pair(a as u64 + 1, b as u64 + 1, |s| s.cut = true);
                    }
                }
                (
                    format!("isolate {}", regions[a].name),
                    json!({ "region": regions[a].name }),
                    None,
                )
            }
        };
        let start = recorder.record(NEMESIS, EventType::Info, "start", json!({ "fault": label }), None);
        sleep_within(Duration::from_millis(rng.gen_range(2500..5000))).await;
        if let Some((region, strobe)) = skewed.take() {
            if let Some(strobe) = strobe {
                strobe.abort();
                let _ = strobe.await;
            }
            for node in regions[region].cluster.nodes.values() {
                if let Err(e) = crate::cluster::set_clock_skew(node.http, 0).await {
                    recorder.record(NEMESIS, EventType::Info, "error", json!({ "error": e }), None);
                }
            }
        }
        match killed {
            Some((region, node)) => {
                if let Err(e) = regions[region].cluster.restart(node) {
                    recorder.record(
                        NEMESIS,
                        EventType::Info,
                        "error",
                        json!({ "error": e.to_string() }),
                        None,
                    );
                }
            }
            None => {
                wan.heal_cuts();
                wan.set_delay(&ids, WAN_LATENCY, Duration::from_millis(5));
            }
        }
        let stop = recorder.record(NEMESIS, EventType::Info, "stop", json!({ "fault": label }), None);
        windows.push(FaultWindow {
            label,
            start_ns: start.time_ns,
            end_ns: stop.time_ns,
            detail,
        });
        if recorder.elapsed_ns() >= end_ns {
            return windows;
        }
    }
}
