//! # feature-flags
//!
//! Feature flags with percentage rollouts across three regions, as a team would build it on a
//! flag service backed by etcd or Redis with a pub/sub invalidation channel:
//! - flags live in KV under `flags/`, written in the home region by an admin (each value carries
//!   its version, its rollout percentage and when it was written);
//! - every service instance keeps an SDK-side cache of all flags, filled by a watch of the
//!   prefix on its own region's nodes (no read goes across the WAN), and evaluates flags locally:
//!   a user is in a rollout of p % when a stable hash of (flag, user) falls below p, so raising
//!   p only adds users and every instance answers alike;
//! - writes reach the other regions through cross-region replication, and their watches there.
//!
//! Invariant: every flag change reaches every watcher in every region, in order (no watcher
//! ever sees a flag go back to an older version), and once the changes stop every cache holds the
//! last version of every flag and evaluates every user alike. The summary reports propagation
//! time (write to arrival in the cache) per region, p50 and p99.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_client::{Client, WatchEventKind};

use crate::{connect, joined, quantile, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "feature-flags",
    summary: "flags in KV under a prefix, SDK-side caches kept current by watches in three \
              regions, percentage rollouts by stable hashing",
    invariant: "every flag change reaches every watcher in every region, in order; all caches end \
                alike; propagation time p50/p99 per region reported",
    nodes: 1,
    regions: &["us", "eu", "ap"],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const PREFIX: &str = "flags/";
const FLAGS: u64 = 12;
const WATCHERS_PER_REGION: usize = 3;
/// Between two flag changes.
const CHANGE_EVERY: Duration = Duration::from_millis(40);
/// How long the caches may take to hold the last changes once writing stops.
const CONVERGE_WAIT: Duration = Duration::from_secs(30);
/// Users every cache evaluates at the end.
const USERS_EVALUATED: u64 = 2_000;
/// How far a rollout's share of the evaluated users may be from its percentage, in points.
const ROLLOUT_TOLERANCE_POINTS: f64 = 4.0;
const TICK: Duration = Duration::from_millis(50);

/// A flag's value: `vVERSION ROLLOUT WRITTEN_MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flag {
    version: u64,
    /// Percent of users it is on for.
    rollout: u64,
    written_ms: u64,
}

impl Flag {
    fn encode(&self) -> String {
        format!("v{} {} {}", self.version, self.rollout, self.written_ms)
    }

    fn decode(value: &[u8]) -> Option<Flag> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        let version = parts.next()?.strip_prefix('v')?.parse().ok()?;
        let rollout = parts.next()?.parse().ok()?;
        let written_ms = parts.next()?.parse().ok()?;
        Some(Flag {
            version,
            rollout,
            written_ms,
        })
    }
}

fn flag_key(flag: u64) -> String {
    format!("{PREFIX}flag-{flag}")
}

/// Whether `user` is in the rollout: a stable hash (FNV-1a) of flag and user, below the
/// percentage. The same answer on every instance, and a user in at p % stays in at any higher p.
fn enabled(key: &str, user: u64, rollout: u64) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(user.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100 < rollout
}

/// One SDK-side cache: the flags as its watch delivered them, and what it saw on the way.
#[derive(Default)]
struct Cache {
    flags: BTreeMap<String, Flag>,
    /// Per flag, the versions delivered, in order.
    seen: BTreeMap<String, Vec<u64>>,
    /// Write to arrival, per change, in ms.
    propagation_ms: Vec<u64>,
    errors: Vec<String>,
}

struct Watcher {
    region: String,
    cache: Arc<Mutex<Cache>>,
}

/// Keeps `cache` current from a watch of the flags on `endpoints` until `stop`.
async fn watch(
    endpoints: Vec<String>,
    cache: Arc<Mutex<Cache>>,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: Arc<AtomicBool>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let kv = client.kv();
    // Watch first, then read what is there: nothing written between the two is missed, and the
    // cache keeps the higher version when the scan and the watch both carry one (every version
    // the watch delivers is checked: none may come twice or out of order).
    let mut changes = kv.watch(PREFIX, 0).await.doing(|| "watching the flags".into())?;
    for (key, value) in kv.scan(PREFIX, 0).await.doing(|| "reading the flags".into())? {
        if let Some(flag) = Flag::decode(&value) {
            cache
                .locked()
                .flags
                .insert(String::from_utf8_lossy(&key).into_owned(), flag);
        }
    }
    let _ = ready.send(());
    while !stop.load(Ordering::SeqCst) {
        let next = match tokio::time::timeout(TICK, changes.next()).await {
            Err(_) => continue,
            Ok(None) => return Err(DemoError::Setup("a flag watch ended".into())),
            Ok(Some(Err(e))) => {
                return Err(DemoError::Cluster {
                    doing: "watching the flags".into(),
                    source: e,
                })
            }
            Ok(Some(Ok(event))) => event,
        };
        let key = String::from_utf8_lossy(&next.key).into_owned();
        let mut cache = cache.locked();
        if next.kind == WatchEventKind::Delete {
            cache.flags.remove(&key);
            continue;
        }
        let Some(flag) = Flag::decode(&next.value) else {
            cache
                .errors
                .push(format!("{key} holds {:?}", String::from_utf8_lossy(&next.value)));
            continue;
        };
        cache.propagation_ms.push(unix_ms().saturating_sub(flag.written_ms));
        cache.seen.entry(key.clone()).or_default().push(flag.version);
        let newer = cache.flags.get(&key).is_none_or(|held| held.version < flag.version);
        if newer {
            cache.flags.insert(key, flag);
        }
    }
    Ok(())
}

/// What every watcher must have seen: each flag's versions 1..=last, in order, once each.
fn check_seen(
    region: &str,
    watcher: usize,
    seen: &BTreeMap<String, Vec<u64>>,
    last: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (key, &versions) in last {
        let got = seen.get(key).map(Vec::as_slice).unwrap_or_default();
        let want: Vec<u64> = (1..=versions).collect();
        if got != want.as_slice() {
            let missing: Vec<u64> = want.iter().filter(|v| !got.contains(v)).copied().collect();
            let in_order = got.windows(2).all(|w| w[0] < w[1]);
            violations.push(format!(
                "{region} watcher {watcher}: {key} versions seen {}{}",
                if missing.is_empty() {
                    String::from("all")
                } else {
                    format!("without {missing:?}")
                },
                if in_order { "" } else { ", out of order" }
            ));
        }
    }
    violations
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let regions = demo.regions().to_vec();
    if regions.len() < 2 {
        return Err(DemoError::Setup("feature-flags needs several regions".into()));
    }
    let admin: Client = demo.connect().await?;
    if !admin
        .kv()
        .scan(PREFIX, 1)
        .await
        .doing(|| "reading the flags".into())?
        .is_empty()
    {
        return Err(DemoError::Setup(format!(
            "keys under {PREFIX} exist on this cluster (an earlier run?); run without --cluster-file on a temporary cluster"
        )));
    }
    let changes = match demo.scale() {
        Scale::Short => 60,
        Scale::Full => 400,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for region in &regions {
        for _ in 0..WATCHERS_PER_REGION {
            let cache = Arc::new(Mutex::new(Cache::default()));
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(watch(
                region.endpoints.clone(),
                cache.clone(),
                ready,
                stop.clone(),
            )));
            let _ = is_ready.await;
            watchers.push(Watcher {
                region: region.name.clone(),
                cache,
            });
        }
    }
    demo.say(&format!(
        "{} watchers ({WATCHERS_PER_REGION} per region in {}) cache {FLAGS} flags; {changes} changes written in {}",
        watchers.len(),
        regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        regions[0].name
    ));

    let started = Instant::now();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut finals: BTreeMap<String, Flag> = BTreeMap::new();
    for change in 0..changes {
        let key = flag_key(change % FLAGS);
        let version = last.get(&key).copied().unwrap_or(0) + 1;
        let flag = Flag {
            version,
            rollout: (version * 17 + change) % 101,
            written_ms: unix_ms(),
        };
        admin
            .kv()
            .put(&key, flag.encode())
            .await
            .doing(|| format!("writing {key}"))?;
        last.insert(key.clone(), version);
        finals.insert(key, flag);
        tokio::time::sleep(CHANGE_EVERY).await;
    }
    let written = started.elapsed();
    let stopped_writing = Instant::now();
    let converged = {
        let deadline = Instant::now() + CONVERGE_WAIT;
        loop {
            let all = watchers.iter().all(|w| {
                let cache = w.cache.locked();
                finals
                    .iter()
                    .all(|(k, f)| cache.flags.get(k).map(|h| h.version) == Some(f.version))
            });
            if all || Instant::now() > deadline {
                break all;
            }
            tokio::time::sleep(TICK).await;
        }
    };
    let convergence = stopped_writing.elapsed();
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        joined(task, "a watcher").await?;
    }

    let mut report = Report::default();
    if !converged {
        report.violations.push(format!(
            "not every cache held every flag's last version {CONVERGE_WAIT:?} after the last change"
        ));
    }
    let mut per_region: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut answers: BTreeSet<Vec<bool>> = BTreeSet::new();
    for (i, watcher) in watchers.iter().enumerate() {
        let cache = watcher.cache.locked();
        report.violations.extend(cache.errors.iter().cloned());
        report.violations.extend(check_seen(
            &watcher.region,
            i % WATCHERS_PER_REGION + 1,
            &cache.seen,
            &last,
        ));
        per_region
            .entry(watcher.region.clone())
            .or_default()
            .extend(cache.propagation_ms.iter().copied());
        let evaluated: Vec<bool> = cache
            .flags
            .iter()
            .flat_map(|(key, flag)| (0..USERS_EVALUATED).map(move |user| enabled(key, user, flag.rollout)))
            .collect();
        answers.insert(evaluated);
    }
    if answers.len() > 1 {
        report.violations.push(format!(
            "the caches answer {} different ways for the same users",
            answers.len()
        ));
    }
    for (key, flag) in &finals {
        let on = (0..USERS_EVALUATED).filter(|&u| enabled(key, u, flag.rollout)).count();
        let share = on as f64 * 100.0 / USERS_EVALUATED as f64;
        if (share - flag.rollout as f64).abs() > ROLLOUT_TOLERANCE_POINTS {
            report.violations.push(format!(
                "{key}: rollout {} % reaches {share:.1} % of {USERS_EVALUATED} users",
                flag.rollout
            ));
        }
    }
    report.figure("regions, watchers", format!("{}, {}", regions.len(), watchers.len()));
    report.figure(
        "flag changes",
        format!(
            "{changes} in {:.1}s, written in {}",
            written.as_secs_f64(),
            regions[0].name
        ),
    );
    for region in &regions {
        let values = per_region.entry(region.name.clone()).or_default();
        report.figure(
            format!("propagation to {} caches", region.name),
            format!(
                "p50 {} ms, p99 {} ms ({} arrivals)",
                quantile(values, 0.5),
                quantile(values, 0.99),
                values.len()
            ),
        );
    }
    report.figure(
        "every cache current after the last change",
        format!("{} ms", convergence.as_millis()),
    );
    report.figure(
        "users evaluated per cache",
        format!("{} ({FLAGS} flags x {USERS_EVALUATED})", FLAGS * USERS_EVALUATED),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        let flag = Flag {
            version: 3,
            rollout: 42,
            written_ms: 1_700_000_000_000,
        };
        assert_eq!(Flag::decode(flag.encode().as_bytes()), Some(flag));
        assert_eq!(Flag::decode(b"3 42 1"), None);
    }

    #[test]
    fn rollouts_are_stable_monotone_and_near_their_share() {
        for rollout in [0, 1, 10, 50, 99, 100] {
            let on = (0..10_000).filter(|&u| enabled("flags/flag-1", u, rollout)).count();
            assert!(
                (on as f64 / 100.0 - rollout as f64).abs() <= 2.0,
                "{rollout} %: {on} of 10000"
            );
        }
        for user in 0..1000 {
            for p in 0..100 {
                if enabled("flags/flag-2", user, p) {
                    assert!(enabled("flags/flag-2", user, p + 1));
                }
            }
        }
    }

    #[test]
    fn a_missed_or_reordered_version_is_found() {
        let last = BTreeMap::from([("flags/flag-0".to_string(), 3)]);
        let all = BTreeMap::from([("flags/flag-0".to_string(), vec![1, 2, 3])]);
        assert!(check_seen("eu", 1, &all, &last).is_empty());
        let missed = BTreeMap::from([("flags/flag-0".to_string(), vec![1, 3])]);
        assert_eq!(
            check_seen("eu", 1, &missed, &last),
            vec!["eu watcher 1: flags/flag-0 versions seen without [2]".to_string()]
        );
        let reordered = BTreeMap::from([("flags/flag-0".to_string(), vec![1, 3, 2])]);
        assert_eq!(
            check_seen("eu", 1, &reordered, &last),
            vec!["eu watcher 1: flags/flag-0 versions seen all, out of order".to_string()]
        );
    }
}
