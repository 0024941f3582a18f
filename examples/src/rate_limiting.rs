//! # rate-limiting
//!
//! Distributed rate limiting for an API across three regions, as a team would build it on Redis
//! (a Lua script per check, a Redis per region, and a choice of what to do when Redis is away):
//! - composite limits: a request passes only if its tenant (100/s), its user (25 a day) and its
//!   route (60/s) all have room, and then counts against all three, else against none: one
//!   transaction of three rate checks;
//! - a global limit (50/s over all regions): gateways in every region check one global sliding
//!   window; each region counts what it admits and ships its count to the others;
//! - while a gateway is cut off from its cluster (its network to the nodes cut by a link proxy),
//!   each of three gateways keeps its policy: fail open, fail closed, or decide locally with its
//!   share of the limit.
//!
//! Invariant: no key admits more than its limit in any of its fixed windows (the sliding-window
//! counter never lets the current window's count pass the limit), a refused composite request
//! consumed nothing, the regions together stay within the documented bound of the global limit,
//! and during the cut every gateway's answers follow its policy (a local share admits at most
//! its share per window), the cluster answering again after the heal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_client::txn::TxnOp;
use basalt_client::{
    Client, ClientOptions, DecidedBy, RateCheck, RateLimit, RateVerdict, TxnOpResult, TxnOutcome, WhenUnreachable,
};
use basalt_regions::{LinkProxy, Links};

use crate::{connect, joined, mix, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "rate-limiting",
    summary: "per-tenant, per-user and per-route limits checked all or nothing, a global limit \
              across three regions, and fail-open / fail-closed / local-share gateways while cut \
              off from the cluster",
    invariant: "admitted per window within each limit (the global one within its documented \
                bound); a refused request consumes nothing; each policy holds during the cut",
    nodes: 1,
    regions: &["us", "eu", "ap"],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);
const TENANTS: u64 = 3;
const USERS: u64 = 30;
const ROUTES: [&str; 3] = ["/search", "/orders", "/export"];
const TENANT_LIMIT: u64 = 100;
const USER_LIMIT: u64 = 25;
const ROUTE_LIMIT: u64 = 60;
const GLOBAL_LIMIT: u64 = 50;
/// Gateways sending composite requests at once (in the first region).
const COMPOSITE_GATEWAYS: u64 = 4;
/// The limit the cut-off gateways check, and the instances a local share divides it by.
const CUT_LIMIT: u64 = 20;
const CUT_INSTANCES: u32 = 3;
/// A gateway's request timeout: how long a check waits before its policy answers.
const GATEWAY_TIMEOUT: Duration = Duration::from_millis(300);
/// Between two checks of one request stream of a cut-off gateway.
const CUT_CHECK_EVERY: Duration = Duration::from_millis(20);
/// Request streams of one cut-off gateway.
const CUT_REQUESTS_IN_FLIGHT: usize = 8;
/// Link ids of the gateway's simulated network (any two distinct ids).
const GATEWAY_SIDE: u64 = 100;
const CLUSTER_SIDE: u64 = 101;

struct Scope {
    composite_requests: u64,
    global_for: Duration,
    before_cut: Duration,
    cut_for: Duration,
    after_cut: Duration,
}

impl Scope {
    fn of(scale: Scale) -> Scope {
        match scale {
            Scale::Short => Scope {
                composite_requests: 1_200,
                global_for: Duration::from_secs(3),
                before_cut: Duration::from_secs(1),
                cut_for: Duration::from_secs(3),
                after_cut: Duration::from_secs(2),
            },
            Scale::Full => Scope {
                composite_requests: 8_000,
                global_for: Duration::from_secs(10),
                before_cut: Duration::from_secs(2),
                cut_for: Duration::from_secs(8),
                after_cut: Duration::from_secs(3),
            },
        }
    }
}

fn sliding(limit: u64, window: Duration) -> RateLimit {
    RateLimit::SlidingWindow { limit, window }
}

fn check(key: String, limit: RateLimit) -> RateCheck {
    RateCheck {
        key: key.into_bytes(),
        limit,
        cost: 1,
    }
}

/// A request's three checks: tenant, user, route.
fn composite(run: u64, i: u64) -> [RateCheck; 3] {
    let draw = mix(i);
    let tenant = draw % TENANTS;
    let user = (draw >> 8) % USERS;
    let route = ROUTES[((draw >> 16) % ROUTES.len() as u64) as usize];
    [
        check(format!("rl/{run}/tenant-{tenant}"), sliding(TENANT_LIMIT, SECOND)),
        check(
            format!("rl/{run}/tenant-{tenant}/user-{user}"),
            sliding(USER_LIMIT, DAY),
        ),
        check(format!("rl/{run}/route{route}"), sliding(ROUTE_LIMIT, SECOND)),
    ]
}

/// The most admissions that surely fell in one fixed window of `window` (aligned to the Unix
/// epoch, as the cluster's counter): those whose request began and was answered inside it, by
/// this machine's clock (an admission straddling a window edge may be either's, so it is left
/// out).
fn most_in_one_window(admissions: &[(u64, u64)], window: Duration) -> u64 {
    let length = (window.as_millis() as u64).max(1);
    let mut per_window: BTreeMap<u64, u64> = BTreeMap::new();
    for &(began_ms, ended_ms) in admissions {
        if began_ms / length == ended_ms / length {
            *per_window.entry(began_ms / length).or_default() += 1;
        }
    }
    per_window.into_values().max().unwrap_or(0)
}

/// What the composite gateways were told: per key, the requests admitted.
#[derive(Default)]
struct Composite {
    /// Per key, each admission's (request began, answered), Unix ms.
    admitted: BTreeMap<String, Vec<(u64, u64)>>,
    requests_admitted: u64,
    requests_refused: u64,
}

async fn composite_gateway(
    endpoints: Vec<String>,
    run: u64,
    first: u64,
    requests: u64,
    tally: Arc<Mutex<Composite>>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    for i in (first..requests).step_by(COMPOSITE_GATEWAYS as usize) {
        let checks = composite(run, i);
        let began_ms = unix_ms();
        let outcome = client
            .txn()
            .then(TxnOp::rate_checks(checks.to_vec()))
            .commit()
            .await
            .doing(|| format!("checking request {i}"))?;
        let mut tally = tally.locked();
        match outcome {
            TxnOutcome::Committed { .. } => {
                tally.requests_admitted += 1;
                let ended_ms = unix_ms();
                for c in &checks {
                    tally
                        .admitted
                        .entry(String::from_utf8_lossy(&c.key).into_owned())
                        .or_default()
                        .push((began_ms, ended_ms));
                }
            }
            TxnOutcome::Aborted {
                reason: TxnOpResult::Rate(_),
                ..
            } => tally.requests_refused += 1,
            TxnOutcome::Aborted { reason, .. } => {
                return Err(DemoError::Setup(format!(
                    "request {i}'s checks were refused: {reason:?}"
                )))
            }
        }
    }
    Ok(())
}

/// One gateway of a region checking the global limit as fast as it can for `length`.
async fn global_gateway(
    endpoints: Vec<String>,
    key: String,
    length: Duration,
) -> Result<(Vec<(u64, u64)>, u64), DemoError> {
    let client = connect(&endpoints).await?;
    let limiter = client.rate_limiter();
    let limit = RateLimit::GlobalSlidingWindow {
        limit: GLOBAL_LIMIT,
        window: SECOND,
    };
    let until = Instant::now() + length;
    let (mut admitted, mut refused) = (Vec::new(), 0);
    while Instant::now() < until {
        let began_ms = unix_ms();
        let decisions = limiter
            .check_many(vec![check(key.clone(), limit)])
            .await
            .doing(|| "checking the global limit".into())?;
        if decisions.first().is_some_and(|d| d.allowed) {
            admitted.push((began_ms, unix_ms()));
        } else {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok((admitted, refused))
}

/// A verdict of a cut-off gateway: when its check began and ended, and what it was told.
#[derive(Clone, Copy, Debug)]
struct Answer {
    began: Instant,
    ended: Instant,
    /// This machine's clock at the answer (ms), for the local share's windows.
    at_ms: u64,
    verdict: RateVerdict,
}

/// A gateway whose network to the cluster goes through a link proxy, checking until `until`.
async fn cut_gateway(
    proxy: SocketAddr,
    policy: WhenUnreachable,
    key: String,
    until: Instant,
) -> Result<Vec<Answer>, DemoError> {
    let options = ClientOptions {
        request_timeout: GATEWAY_TIMEOUT,
        attempt_timeout: GATEWAY_TIMEOUT,
        // Its way in is the proxy: a cut there must cut it off, not send it to the node directly.
        pin_endpoints: true,
        ..ClientOptions::default()
    };
    let client = Client::connect_with([proxy.to_string()], options)
        .await
        .doing(|| "connecting a gateway".into())?;
    let limiter = client.rate_limiter();
    // Several requests in flight at once, as a gateway serves them: during the cut each waits a
    // request timeout, and together they ask more than a local share admits.
    let one_stream = || async {
        let mut answers = Vec::new();
        while Instant::now() < until {
            let began = Instant::now();
            let verdict = limiter
                .check_with(check(key.clone(), sliding(CUT_LIMIT, SECOND)), policy)
                .await
                .doing(|| format!("checking {key} under {policy:?}"))?;
            answers.push(Answer {
                began,
                ended: Instant::now(),
                at_ms: unix_ms(),
                verdict,
            });
            tokio::time::sleep(CUT_CHECK_EVERY).await;
        }
        Ok::<_, DemoError>(answers)
    };
    let streams = futures::future::try_join_all((0..CUT_REQUESTS_IN_FLIGHT).map(|_| one_stream())).await?;
    Ok(streams.into_iter().flatten().collect())
}

/// Whether a gateway's answers follow `policy`: every check made wholly within the cut decided
/// by the policy (a local share admitting at most its share per second of this clock), and the
/// cluster deciding again after the heal.
fn check_policy(policy: WhenUnreachable, answers: &[Answer], cut: Instant, healed: Instant) -> Vec<String> {
    let mut violations = Vec::new();
    let during: Vec<&Answer> = answers.iter().filter(|a| a.began >= cut && a.ended <= healed).collect();
    if during.is_empty() {
        violations.push(format!("{policy:?}: no check was made during the cut"));
    }
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for answer in &during {
        let (by, allowed) = (answer.verdict.decided_by, answer.verdict.decision.allowed);
        let follows = match policy {
            WhenUnreachable::FailOpen => by == DecidedBy::FailOpen && allowed,
            WhenUnreachable::FailClosed => by == DecidedBy::FailClosed && !allowed,
            WhenUnreachable::LocalShare { .. } => by == DecidedBy::LocalShare,
            WhenUnreachable::Error => false,
        };
        if !follows {
            violations.push(format!(
                "{policy:?}: during the cut, answered {allowed} decided by {by:?}"
            ));
        }
        if by == DecidedBy::LocalShare && allowed {
            *per_second.entry(answer.at_ms / 1000).or_default() += 1;
        }
    }
    if let WhenUnreachable::LocalShare { instances } = policy {
        let share = CUT_LIMIT / u64::from(instances.max(1));
        for (second, admitted) in per_second {
            if admitted > share {
                violations.push(format!(
                    "{policy:?}: admitted {admitted} alone in second {second}, its share is {share}"
                ));
            }
        }
    }
    if !answers
        .iter()
        .any(|a| a.began > healed && a.verdict.decided_by == DecidedBy::Cluster)
    {
        violations.push(format!("{policy:?}: the cluster never decided again after the heal"));
    }
    violations
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let scope = Scope::of(demo.scale());
    let regions = demo.regions().to_vec();
    if regions.len() < 2 {
        return Err(DemoError::Setup("rate-limiting needs several regions".into()));
    }
    let mut report = Report::default();

    // 1. Composite limits, all or nothing, in the first region.
    demo.say(&format!(
        "{} requests from {COMPOSITE_GATEWAYS} gateways in {}: tenant {TENANT_LIMIT}/s, user {USER_LIMIT}/day, route {ROUTE_LIMIT}/s, all or nothing",
        scope.composite_requests, regions[0].name
    ));
    let day_at_start = unix_ms() / DAY.as_millis() as u64;
    // Every key of this run is under its own prefix: an earlier run's counts stay apart.
    let run = unix_ms();
    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Composite::default()));
    let gateways: Vec<_> = (0..COMPOSITE_GATEWAYS)
        .map(|first| {
            tokio::spawn(composite_gateway(
                regions[0].endpoints.clone(),
                run,
                first,
                scope.composite_requests,
                tally.clone(),
            ))
        })
        .collect();
    for gateway in gateways {
        joined(gateway, "a gateway").await?;
    }
    let composite_time = started.elapsed();
    let tally = std::mem::take(&mut *tally.locked());
    for (key, admissions) in &tally.admitted {
        let (limit, window) = if key.contains("/user-") {
            (USER_LIMIT, DAY)
        } else if key.contains("/route") {
            (ROUTE_LIMIT, SECOND)
        } else {
            (TENANT_LIMIT, SECOND)
        };
        let most = most_in_one_window(admissions, window);
        if most > limit {
            report.violations.push(format!(
                "{key}: admitted {most} in one window of {window:?}, its limit is {limit}"
            ));
        }
    }
    // A refused request consumed nothing: each user's day shows exactly the requests admitted.
    let same_day = unix_ms() / DAY.as_millis() as u64 == day_at_start;
    let client = demo.connect().await?;
    if same_day {
        for user_key in tally.admitted.keys().filter(|k| k.contains("/user-")) {
            let look = RateCheck {
                key: user_key.clone().into_bytes(),
                limit: sliding(USER_LIMIT, DAY),
                cost: 0,
            };
            let remaining = client
                .rate_limiter()
                .check_many(vec![look])
                .await
                .doing(|| format!("reading {user_key}"))?
                .first()
                .map_or(0, |d| d.remaining);
            let admitted = tally.admitted[user_key].len() as u64;
            if remaining + admitted != USER_LIMIT {
                report.violations.push(format!(
                    "{user_key}: {admitted} admitted but {} consumed: refused requests counted",
                    USER_LIMIT - remaining
                ));
            }
        }
    }

    // 2. The global limit, from every region at once.
    demo.say(&format!(
        "a global limit of {GLOBAL_LIMIT}/s checked from {} for {}s",
        regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        scope.global_for.as_secs()
    ));
    let started = Instant::now();
    let global: Vec<_> = regions
        .iter()
        .map(|r| {
            tokio::spawn(global_gateway(
                r.endpoints.clone(),
                format!("rl/{run}/global"),
                scope.global_for,
            ))
        })
        .collect();
    let mut per_region = Vec::new();
    for gateway in global {
        per_region.push(joined(gateway, "a gateway").await?);
    }
    let global_time = started.elapsed();
    let global_admitted: u64 = per_region.iter().map(|(a, _)| a.len() as u64).sum();
    let all_admissions: Vec<(u64, u64)> = per_region.iter().flat_map(|(a, _)| a.iter().copied()).collect();
    let global_most = most_in_one_window(&all_admissions, SECOND);
    let global_bound = regions.len() as u64 * GLOBAL_LIMIT;
    if global_most > global_bound {
        report.violations.push(format!(
            "the global limit admitted {global_most} in one second, over its bound of {global_bound} (regions x limit)"
        ));
    }

    // 3. Three gateways in the second region, cut off from the cluster for a while.
    let links = Links::new();
    // The proxy leads to the region's leader: a pinned client cannot follow a redirect.
    let leader = connect(&regions[1].endpoints)
        .await?
        .cluster_status()
        .await
        .doing(|| format!("finding {}'s leader", regions[1].name))?
        .leader_addr;
    let target: SocketAddr = leader
        .parse()
        .map_err(|e| DemoError::Setup(format!("{}'s leader address {leader:?}: {e}", regions[1].name)))?;
    let proxy = LinkProxy::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        GATEWAY_SIDE,
        CLUSTER_SIDE,
        target,
        links.clone(),
    )
    .await
    .map_err(|e| DemoError::Setup(format!("starting the gateways' link proxy: {e}")))?;
    let policies = [
        WhenUnreachable::FailOpen,
        WhenUnreachable::FailClosed,
        WhenUnreachable::LocalShare {
            instances: CUT_INSTANCES,
        },
    ];
    demo.say(&format!(
        "three gateways in {} (fail open, fail closed, local share of 1/{CUT_INSTANCES}) check {CUT_LIMIT}/s; cut off for {}s",
        regions[1].name,
        scope.cut_for.as_secs()
    ));
    let until = Instant::now() + scope.before_cut + scope.cut_for + scope.after_cut;
    let cut_gateways: Vec<_> = policies
        .iter()
        .enumerate()
        .map(|(i, &policy)| {
            tokio::spawn(cut_gateway(
                proxy.local_addr(),
                policy,
                format!("rl/{run}/cut/gateway-{i}"),
                until,
            ))
        })
        .collect();
    tokio::time::sleep(scope.before_cut).await;
    links.change_pair(GATEWAY_SIDE, CLUSTER_SIDE, |s| s.cut = true);
    // Taken after the cut and before the heal: a check inside the window surely met the cut.
    let cut = Instant::now();
    demo.say("  cut");
    tokio::time::sleep(scope.cut_for).await;
    let healed = Instant::now();
    links.change_pair(GATEWAY_SIDE, CLUSTER_SIDE, |s| s.cut = false);
    demo.say("  healed");
    let mut cut_figures = Vec::new();
    for (gateway, policy) in cut_gateways.into_iter().zip(policies) {
        let answers = joined(gateway, "a gateway").await?;
        report.violations.extend(check_policy(policy, &answers, cut, healed));
        let during: Vec<&Answer> = answers.iter().filter(|a| a.began >= cut && a.ended <= healed).collect();
        let allowed = during.iter().filter(|a| a.verdict.decision.allowed).count();
        cut_figures.push(format!("{policy:?} {allowed} of {}", during.len()));
    }
    drop(proxy);

    report.figure(
        "composite requests admitted, refused",
        format!(
            "{}, {} in {:.1}s",
            tally.requests_admitted,
            tally.requests_refused,
            composite_time.as_secs_f64()
        ),
    );
    report.figure("keys checked", tally.admitted.len());
    if !same_day {
        report.figure("refused-consume-nothing check", "skipped: the run crossed midnight UTC");
    }
    report.figure(
        "global limit: admitted per region",
        format!(
            "{} = {global_admitted} in {:.1}s (limit {GLOBAL_LIMIT}/s: {:.0}/s admitted, at most {global_most} in one second; bound {global_bound})",
            per_region
                .iter()
                .zip(&regions)
                .map(|((a, _), r)| format!("{} {}", r.name, a.len()))
                .collect::<Vec<_>>()
                .join(", "),
            global_time.as_secs_f64(),
            global_admitted as f64 / global_time.as_secs_f64()
        ),
    );
    report.figure("during the cut, admitted of checks", cut_figures.join("; "));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_count_in_the_window_they_surely_fell_in() {
        let admissions = [(100, 200), (900, 1_100), (1_000, 1_010), (1_500, 1_600), (1_999, 2_000)];
        // Window 0 holds one, window 1 two; the ones across an edge count nowhere.
        assert_eq!(most_in_one_window(&admissions, SECOND), 2);
        assert_eq!(most_in_one_window(&admissions, DAY), 5);
        assert_eq!(most_in_one_window(&[], SECOND), 0);
    }

    fn answer(began: Instant, ms: u64, decided_by: DecidedBy, allowed: bool, at_ms: u64) -> Answer {
        Answer {
            began: began + Duration::from_millis(ms),
            ended: began + Duration::from_millis(ms + 10),
            at_ms,
            verdict: RateVerdict {
                decision: basalt_client::RateDecision {
                    allowed,
                    remaining: 0,
                    retry_after: Duration::ZERO,
                    reset_at_ms: 0,
                },
                decided_by,
            },
        }
    }

    #[test]
    fn a_policy_broken_during_the_cut_is_found() {
        let t = Instant::now();
        let (cut, healed) = (t + Duration::from_millis(100), t + Duration::from_millis(1000));
        let open = [
            answer(t, 0, DecidedBy::Cluster, true, 0),
            answer(t, 200, DecidedBy::FailOpen, true, 0),
            answer(t, 1100, DecidedBy::Cluster, false, 0),
        ];
        assert!(check_policy(WhenUnreachable::FailOpen, &open, cut, healed).is_empty());
        assert_eq!(check_policy(WhenUnreachable::FailClosed, &open, cut, healed).len(), 1);
        // Never back to the cluster.
        assert_eq!(
            check_policy(WhenUnreachable::FailOpen, &open[..2], cut, healed).len(),
            1
        );
        // A local share admitting more than 20 / 3 = 6 in one second.
        let share = WhenUnreachable::LocalShare { instances: 3 };
        let mut local: Vec<Answer> = (0..7)
            .map(|i| answer(t, 200 + i, DecidedBy::LocalShare, true, 5_000))
            .collect();
        local.push(answer(t, 1100, DecidedBy::Cluster, true, 6_000));
        assert_eq!(check_policy(share, &local, cut, healed).len(), 1);
        local.remove(0);
        assert!(check_policy(share, &local, cut, healed).is_empty());
    }
}
