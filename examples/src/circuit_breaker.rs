//! # circuit-breaker
//!
//! One breaker for a dependency (`payments-api`), shared by every instance of a service, as a
//! team would build it on Redis (a state key, an `INCR`ed failure count with `EXPIRE`, `SET NX PX`
//! for the probe):
//! - closed: instances call the dependency; each failure goes into a windowed counter (1 s
//!   buckets), and the failures of the last 10 s since the breaker last closed are summed;
//!   reaching the threshold opens the breaker with compare-and-set on its state key;
//! - open: calls fail fast until the reopen time, which is jittered so that breakers of many
//!   dependencies do not all probe at once;
//! - half-open: one instance takes the probe lease and calls the dependency once, within the
//!   lease's holder deadline; success closes the breaker, failure reopens it, both fenced by the
//!   lease's token, so a probe whose lease ran out changes nothing.
//!
//! The dependency is simulated in this process: it fails in phases the run sets, and it counts
//! the probes in flight at once and the calls that reached it while failing.
//!
//! Invariant: never more than one probe at a time across instances; in each failing phase at
//! most `THRESHOLD + INSTANCES - 1` calls fail on the dependency outside probes (the threshold,
//! plus at most one call in flight per other instance when it is reached); the breaker closes
//! again after each recovery.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_client::{Acquired, CasOutcome, Client, CounterOp, ErrorCode};

use crate::{connect, joined, mix, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "circuit-breaker",
    summary: "one breaker per dependency shared by many instances: failures in a windowed \
              counter, open / half-open / closed by compare-and-set, a lease for the single \
              half-open probe, jittered reopen",
    invariant: "never more than one probe at a time across instances; the breaker opens within \
                the configured failures (plus one call in flight per instance) and closes after \
                recovery",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const STATE_KEY: &str = "breaker/payments-api/state";
const FAILURES_KEY: &str = "breaker/payments-api/failures";
const PROBE_LEASE: &str = "breaker/payments-api/probe";
/// Failures within `FAILURE_WINDOW` that open the breaker.
const THRESHOLD: i64 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// The failure counter's buckets, summed over the window.
const FAILURE_BUCKET: Duration = Duration::from_secs(1);
const FAILURE_RETENTION: Duration = Duration::from_secs(60);
/// How long the breaker stays open before a probe, plus up to `REOPEN_JITTER_MAX`.
const COOLDOWN: Duration = Duration::from_millis(800);
const REOPEN_JITTER_MAX: Duration = Duration::from_millis(400);
/// The probe lease's TTL: the holder may probe until its grant's deadline, the TTL less twice
/// the cluster's max clock offset (1 s by default), so 1.5 s.
const PROBE_TTL: Duration = Duration::from_millis(2500);
/// A probe's call takes this long; one probe in each later failing phase hangs instead, past
/// its lease's deadline, and is abandoned there.
const PROBE_LATENCY: Duration = Duration::from_millis(150);
const HANGING_PROBE: Duration = Duration::from_secs(5);
const CALL_LATENCY: Duration = Duration::from_millis(3);
/// Between an instance's calls.
const CALL_EVERY: Duration = Duration::from_millis(20);
/// How long the breaker may take to close after the dependency recovers.
const CLOSE_WAIT: Duration = Duration::from_secs(15);
const TICK: Duration = Duration::from_millis(20);

struct Plan {
    instances: u64,
    failing_phases: usize,
    healthy_for: Duration,
    failing_for: Duration,
}

impl Plan {
    fn of(scale: Scale) -> Plan {
        match scale {
            Scale::Short => Plan {
                instances: 6,
                failing_phases: 2,
                healthy_for: Duration::from_millis(1500),
                failing_for: Duration::from_secs(3),
            },
            Scale::Full => Plan {
                instances: 12,
                failing_phases: 4,
                healthy_for: Duration::from_secs(2),
                failing_for: Duration::from_secs(5),
            },
        }
    }

    /// The most calls that may fail on the dependency outside probes in one failing phase.
    fn leak_bound(&self) -> u64 {
        THRESHOLD as u64 + self.instances - 1
    }
}

/// The breaker's state, as its key holds it. An absent key is closed since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Failures since `since_ms` count toward opening.
    Closed { since_ms: u64 },
    /// Calls fail fast until `reopen_at_ms`; then one probe.
    Open { reopen_at_ms: u64 },
}

impl State {
    fn encode(self) -> String {
        match self {
            State::Closed { since_ms } => format!("closed {since_ms}"),
            State::Open { reopen_at_ms } => format!("open {reopen_at_ms}"),
        }
    }

    fn decode(value: &[u8]) -> Option<State> {
        let text = std::str::from_utf8(value).ok()?;
        let (kind, ms) = text.split_once(' ')?;
        let ms = ms.parse().ok()?;
        match kind {
            "closed" => Some(State::Closed { since_ms: ms }),
            "open" => Some(State::Open { reopen_at_ms: ms }),
            _ => None,
        }
    }
}

/// The simulated dependency.
#[derive(Default)]
struct Dependency {
    failing: AtomicBool,
    /// The failing phase now or last (1-based; 0 before the first).
    phase: AtomicUsize,
    /// The next probe hangs past its lease.
    hang_next_probe: AtomicBool,
    probes_in_flight: AtomicU64,
    max_probes_in_flight: AtomicU64,
    probes: AtomicU64,
    probes_abandoned: AtomicU64,
    calls: AtomicU64,
    /// Per failing phase, calls outside probes that failed.
    leaked: Mutex<Vec<u64>>,
}

/// A probe in flight, counted until it ends or is abandoned.
struct ProbeInFlight<'a>(&'a Dependency);

impl Drop for ProbeInFlight<'_> {
    fn drop(&mut self) {
        self.0.probes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dependency {
    fn leaked(&self) -> MutexGuard<'_, Vec<u64>> {
        self.leaked.locked()
    }

    fn start_failing(&self, hang_a_probe: bool) {
        let phase = self.phase.fetch_add(1, Ordering::SeqCst) + 1;
        self.leaked().resize(phase, 0);
        self.hang_next_probe.store(hang_a_probe, Ordering::SeqCst);
        self.failing.store(true, Ordering::SeqCst);
    }

    fn recover(&self) {
        self.failing.store(false, Ordering::SeqCst);
    }

    async fn call(&self) -> Result<(), ()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(CALL_LATENCY).await;
        if self.failing.load(Ordering::SeqCst) {
            let phase = self.phase.load(Ordering::SeqCst);
            if let Some(leaked) = self.leaked().get_mut(phase.saturating_sub(1)) {
                *leaked += 1;
            }
            return Err(());
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), ()> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        let now = self.probes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_probes_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = ProbeInFlight(self);
        let hang = self.failing.load(Ordering::SeqCst) && self.hang_next_probe.swap(false, Ordering::SeqCst);
        tokio::time::sleep(if hang { HANGING_PROBE } else { PROBE_LATENCY }).await;
        if self.failing.load(Ordering::SeqCst) {
            Err(())
        } else {
            Ok(())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    Opened { failures: i64 },
    Reopened,
    Closed,
}

/// What the instances did.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    short_circuited: AtomicU64,
    transitions: Mutex<Vec<(Instant, Transition)>>,
}

impl Shared {
    fn transition(&self, what: Transition) {
        self.transitions.locked().push((Instant::now(), what));
    }

    fn transitions(&self) -> Vec<(Instant, Transition)> {
        self.transitions.locked().clone()
    }
}

/// The breaker's state and its key's revision (`None`: never written).
async fn read_state(client: &Client) -> Result<(State, Option<u64>), DemoError> {
    let entry = client
        .kv()
        .get(STATE_KEY)
        .await
        .doing(|| "reading the breaker".into())?;
    Ok(match entry {
        None => (State::Closed { since_ms: 0 }, None),
        Some(entry) => {
            let state = State::decode(&entry.value).ok_or_else(|| {
                DemoError::Setup(format!(
                    "{STATE_KEY} holds {:?}, not a breaker state",
                    String::from_utf8_lossy(&entry.value)
                ))
            })?;
            (state, Some(entry.mod_revision))
        }
    })
}

/// When an open breaker may be probed: after the cooldown and a jitter drawn from `seed`.
fn reopen_at(now_ms: u64, seed: u64) -> u64 {
    let jitter = mix(seed) % (REOPEN_JITTER_MAX.as_millis() as u64 + 1);
    now_ms + COOLDOWN.as_millis() as u64 + jitter
}

/// Counts a failure and, once the failures since the breaker closed reach the threshold, opens
/// it (compare-and-set on the state key, retried while it is still closed).
async fn count_failure(client: &Client, instance: u64, shared: &Shared) -> Result<(), DemoError> {
    let now = unix_ms();
    client
        .counters()
        .apply(vec![CounterOp::windowed(
            FAILURES_KEY,
            1,
            FAILURE_BUCKET,
            FAILURE_RETENTION,
            Some(now),
        )])
        .await
        .doing(|| "counting a failure".into())?;
    loop {
        let (state, revision) = read_state(client).await?;
        let State::Closed { since_ms } = state else {
            return Ok(());
        };
        let now = unix_ms();
        let from = since_ms.max(now.saturating_sub(FAILURE_WINDOW.as_millis() as u64));
        let failures = client
            .counter(FAILURES_KEY)
            .windows(FAILURE_BUCKET, from, now + 1)
            .await
            .doing(|| "summing the failures".into())?
            .sum;
        if failures < THRESHOLD {
            return Ok(());
        }
        let open = State::Open {
            reopen_at_ms: reopen_at(now, now ^ instance),
        };
        match client.kv().cas(STATE_KEY, revision, open.encode()).await {
            Ok(CasOutcome::Written { .. }) => {
                shared.transition(Transition::Opened { failures });
                return Ok(());
            }
            // Changed meanwhile (opened by another instance, or closed by a probe): look again.
            Ok(CasOutcome::Conflict { .. }) => continue,
            Err(e) => {
                return Err(DemoError::Cluster {
                    doing: "opening the breaker".into(),
                    source: e,
                })
            }
        }
    }
}

/// The half-open step: take the probe lease, probe once within its deadline, and close or
/// reopen the breaker fenced by the lease's token.
async fn probe(
    client: &Client,
    instance: u64,
    revision: Option<u64>,
    dependency: &Dependency,
    shared: &Shared,
) -> Result<(), DemoError> {
    let holder = format!("instance-{instance}");
    let lease = client.lease(PROBE_LEASE);
    let grant = match lease
        .acquire(holder.clone(), PROBE_TTL)
        .await
        .doing(|| "taking the probe lease".into())?
    {
        Acquired::Granted(grant) => grant,
        // Another instance probes: fail fast meanwhile.
        Acquired::Held { .. } => {
            shared.short_circuited.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
    };
    let outcome = match tokio::time::timeout(grant.remaining(), dependency.probe()).await {
        Ok(outcome) => outcome,
        Err(_) => {
            dependency.probes_abandoned.fetch_add(1, Ordering::SeqCst);
            Err(())
        }
    };
    let now = unix_ms();
    let next = match outcome {
        Ok(()) => State::Closed { since_ms: now },
        Err(()) => State::Open {
            reopen_at_ms: reopen_at(now, now ^ instance),
        },
    };
    let fenced = client.fenced(PROBE_LEASE, grant.token);
    match fenced.kv().cas(STATE_KEY, revision, next.encode()).await {
        Ok(CasOutcome::Written { .. }) => shared.transition(match next {
            State::Closed { .. } => Transition::Closed,
            State::Open { .. } => Transition::Reopened,
        }),
        // The lease ran out (another instance may probe now), or the state moved: the probe's
        // verdict is stale and changes nothing.
        Ok(CasOutcome::Conflict { .. }) => {}
        Err(e) if e.code() == Some(ErrorCode::StaleFence) => {}
        Err(e) => {
            return Err(DemoError::Cluster {
                doing: "recording the probe".into(),
                source: e,
            })
        }
    }
    // An expired grant is no longer ours to release: nothing to do then.
    let _ = lease.release(holder, grant.token).await;
    Ok(())
}

/// One instance of the service: calls the dependency through the breaker until told to stop.
async fn instance(
    id: u64,
    endpoints: Vec<String>,
    dependency: Arc<Dependency>,
    shared: Arc<Shared>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    while !shared.stop.load(Ordering::SeqCst) {
        let (state, revision) = read_state(&client).await?;
        match state {
            State::Closed { .. } => {
                if dependency.call().await.is_err() {
                    count_failure(&client, id, &shared).await?;
                }
            }
            State::Open { reopen_at_ms } if unix_ms() < reopen_at_ms => {
                shared.short_circuited.fetch_add(1, Ordering::SeqCst);
            }
            State::Open { .. } => probe(&client, id, revision, &dependency, &shared).await?,
        }
        tokio::time::sleep(CALL_EVERY).await;
    }
    Ok(())
}

/// Waits until `done` holds or `limit` passes; whether it held.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(TICK).await;
    }
    done()
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let plan = Plan::of(demo.scale());
    let client = demo.connect().await?;
    if client
        .kv()
        .get(STATE_KEY)
        .await
        .doing(|| "reading the breaker".into())?
        .is_some()
    {
        return Err(DemoError::Setup(format!(
            "{STATE_KEY} exists on this cluster (an earlier run?): its state would mix with this run's; \
             run without --endpoints on a temporary cluster"
        )));
    }
    demo.say(&format!(
        "{} instances share the breaker of payments-api: opens at {THRESHOLD} failures in {}s, probes after {}ms + up to {}ms of jitter",
        plan.instances,
        FAILURE_WINDOW.as_secs(),
        COOLDOWN.as_millis(),
        REOPEN_JITTER_MAX.as_millis()
    ));
    let dependency = Arc::new(Dependency::default());
    let shared = Arc::new(Shared::default());
    let instances: Vec<_> = (1..=plan.instances)
        .map(|id| {
            tokio::spawn(instance(
                id,
                demo.endpoints().to_vec(),
                dependency.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut report = Report::default();
    let mut to_open = Vec::new();
    let mut to_close = Vec::new();
    for phase in 1..=plan.failing_phases {
        tokio::time::sleep(plan.healthy_for).await;
        let hang = phase % 2 == 0;
        let opened_before = count(&shared, |t| matches!(t, Transition::Opened { .. }));
        dependency.start_failing(hang);
        let onset = Instant::now();
        demo.say(&format!(
            "phase {phase}: payments-api fails{}",
            if hang {
                " (and its next probe hangs past the probe lease)"
            } else {
                ""
            }
        ));
        let opened = wait_until(plan.failing_for, || {
            count(&shared, |t| matches!(t, Transition::Opened { .. })) > opened_before
        })
        .await;
        if opened {
            to_open.push(onset.elapsed());
            demo.say(&format!("  breaker open after {} ms", onset.elapsed().as_millis()));
        } else {
            report.violations.push(format!(
                "phase {phase}: the breaker did not open within {:?}",
                plan.failing_for
            ));
        }
        tokio::time::sleep(plan.failing_for.saturating_sub(onset.elapsed())).await;
        let closed_before = count(&shared, |t| t == Transition::Closed);
        dependency.recover();
        let recovered = Instant::now();
        demo.say(&format!("phase {phase}: payments-api recovers"));
        if wait_until(CLOSE_WAIT, || {
            count(&shared, |t| t == Transition::Closed) > closed_before
        })
        .await
        {
            to_close.push(recovered.elapsed());
            demo.say(&format!(
                "  breaker closed after {} ms",
                recovered.elapsed().as_millis()
            ));
        } else {
            report.violations.push(format!(
                "phase {phase}: the breaker did not close within {CLOSE_WAIT:?} of the recovery"
            ));
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for instance in instances {
        joined(instance, "an instance").await?;
    }
    let elapsed = started.elapsed();

    let max_probes = dependency.max_probes_in_flight.load(Ordering::SeqCst);
    if max_probes > 1 {
        report
            .violations
            .push(format!("{max_probes} probes were in flight at once"));
    }
    let leaked = dependency.leaked().clone();
    for (i, &calls) in leaked.iter().enumerate() {
        if calls > plan.leak_bound() {
            report.violations.push(format!(
                "phase {}: {calls} calls failed on payments-api outside probes, more than {} failures + {} instances - 1",
                i + 1,
                THRESHOLD,
                plan.instances
            ));
        }
    }
    let transitions = shared.transitions();
    let opened_at: Vec<i64> = transitions
        .iter()
        .filter_map(|(_, t)| match t {
            Transition::Opened { failures } => Some(*failures),
            _ => None,
        })
        .collect();
    report.figure("instances", plan.instances);
    report.figure("failing phases", plan.failing_phases);
    report.figure(
        "calls failed outside probes, per phase",
        format!("{leaked:?} (bound {})", plan.leak_bound()),
    );
    report.figure("failures counted when it opened", format!("{opened_at:?}"));
    report.figure("failure to open", millis(&to_open));
    report.figure("recovery to close", millis(&to_close));
    report.figure(
        "probes (abandoned at the lease deadline)",
        format!(
            "{} ({})",
            dependency.probes.load(Ordering::SeqCst),
            dependency.probes_abandoned.load(Ordering::SeqCst)
        ),
    );
    report.figure("most probes in flight at once", max_probes);
    report.figure(
        "reopened after a failed probe",
        count(&shared, |t| t == Transition::Reopened),
    );
    report.figure(
        "calls made, failed fast",
        format!(
            "{}, {}",
            dependency.calls.load(Ordering::SeqCst),
            shared.short_circuited.load(Ordering::SeqCst)
        ),
    );
    report.figure("run time", format!("{:.1}s", elapsed.as_secs_f64()));
    Ok(report)
}

fn count(shared: &Shared, which: impl Fn(Transition) -> bool) -> usize {
    shared.transitions().into_iter().filter(|(_, t)| which(*t)).count()
}

fn millis(durations: &[Duration]) -> String {
    let list: Vec<String> = durations.iter().map(|d| format!("{} ms", d.as_millis())).collect();
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            State::Closed { since_ms: 0 },
            State::Closed { since_ms: 17 },
            State::Open { reopen_at_ms: 99 },
        ] {
            assert_eq!(State::decode(state.encode().as_bytes()), Some(state));
        }
        assert_eq!(State::decode(b"half-open 3"), None);
        assert_eq!(State::decode(b"open"), None);
    }

    #[test]
    fn reopening_is_jittered_within_its_bound() {
        let times: Vec<u64> = (0..100).map(|seed| reopen_at(1_000, seed)).collect();
        let cooldown = COOLDOWN.as_millis() as u64;
        let jitter = REOPEN_JITTER_MAX.as_millis() as u64;
        assert!(times
            .iter()
            .all(|&t| (1_000 + cooldown..=1_000 + cooldown + jitter).contains(&t)));
        let distinct: std::collections::BTreeSet<_> = times.iter().collect();
        assert!(distinct.len() > 50, "{} distinct reopen times of 100", distinct.len());
    }

    #[tokio::test]
    async fn the_dependency_counts_probes_at_once_and_calls_leaked_per_phase() {
        let dependency = Arc::new(Dependency::default());
        assert!(dependency.call().await.is_ok());
        dependency.start_failing(false);
        assert!(dependency.call().await.is_err());
        assert!(dependency.call().await.is_err());
        let (a, b) = tokio::join!(dependency.probe(), dependency.probe());
        assert!(a.is_err() && b.is_err());
        assert_eq!(dependency.max_probes_in_flight.load(Ordering::SeqCst), 2);
        assert_eq!(dependency.probes_in_flight.load(Ordering::SeqCst), 0);
        dependency.recover();
        dependency.start_failing(false);
        assert!(dependency.call().await.is_err());
        assert_eq!(*dependency.leaked(), vec![2, 1]);
    }
}
