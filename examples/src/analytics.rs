//! # analytics
//!
//! Page views from a stream aggregated into per-minute and per-hour windowed counters by a
//! consumer group, as a team would build it with Kafka and a counter store:
//! - producers publish page views to `pageviews.v1`, keyed by page, each stamped with the time
//!   it happened; one in ten arrives late (up to 45 minutes after it happened: a phone that was
//!   offline), and is counted in the window it happened in;
//! - a group of workers (the managed consumer) adds them to per-minute and per-hour windowed
//!   counters; one worker is killed mid-run and a replacement joins;
//! - exactly once: the transaction that adds a batch of a partition's records to the windows
//!   also moves that partition's applied offset (a counter), on the condition that it still
//!   holds what the worker read, and the consumer commits only what is applied. A record
//!   redelivered after the kill is recognised and skipped, and two workers briefly owning one
//!   partition during a rebalance cannot both add it.
//!
//! Invariant: every window of every page equals a recomputation from the stream itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_client::txn::{Compare, Condition, TxnOp};
use basalt_client::window;
use basalt_client::{
    Client, ConsumedRecord, ConsumerOptions, CounterOp, FetchOptions, ReadConsistency, Record, TopicOptions, TxnOutcome,
};
use tokio_stream::StreamExt;

use crate::worker::{Closing, Worker};
use crate::{connect, joined, mix, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "analytics",
    summary: "page views from a stream, late ones included, aggregated into per-minute and \
              per-hour windowed counters by a consumer group (one worker killed mid-run), \
              exactly once",
    invariant: "every per-minute and per-hour window of every page equals a recomputation from \
                the stream",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const TOPIC: &str = "pageviews.v1";
const GROUP: &str = "pageview-aggregator";
const PARTITIONS: u32 = 4;
const PAGES: u64 = 20;
/// Workers at the start; one more joins when the first is killed.
const WORKERS: usize = 2;
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// One view in this many arrives late.
const LATE_ONE_IN: u64 = 10;
/// The most a late view arrives after it happened, in ms.
const LATE_BY_MS_MAX: u64 = 45 * 60 * 1000;
/// How long a minute's window is kept after it ends: longer than any view is late.
const MINUTE_RETENTION: Duration = Duration::from_secs(2 * 3600);
const HOUR_RETENTION: Duration = Duration::from_secs(2 * 24 * 3600);
/// Records one aggregation transaction takes at most (of what the consumer already fetched).
const BATCH_RECORDS_MAX: usize = 200;
/// Tries of one batch's transaction when another worker moved the partition's applied offset.
const APPLY_ATTEMPTS_MAX: u32 = 8;
/// The share of the views applied when a worker is killed, in percent.
const KILL_AT_PERCENT: u64 = 40;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
/// After an error the consumer handed over, before asking again.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Records per fetch when the stream is read back for the recomputation.
const READ_BACK_RECORDS: u32 = 1000;

struct Plan {
    views: u64,
    /// Views each publish round sends.
    round: u64,
    round_pause: Duration,
    deadline: Duration,
}

impl Plan {
    fn of(scale: Scale) -> Plan {
        match scale {
            Scale::Short => Plan {
                views: 1_500,
                round: 100,
                round_pause: Duration::from_millis(100),
                deadline: Duration::from_secs(90),
            },
            Scale::Full => Plan {
                views: 20_000,
                round: 500,
                round_pause: Duration::from_millis(100),
                deadline: Duration::from_secs(180),
            },
        }
    }
}

/// One page view, as published: `page-N AT_MS VIEWS`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    page: u64,
    /// When it happened (Unix ms): the window it counts in.
    at_ms: u64,
    views: i64,
}

impl View {
    /// The `i`th view, published at `now_ms`: its page, count and lateness drawn from `i`.
    fn planned(i: u64, now_ms: u64) -> View {
        let draw = mix(i);
        let late = draw.is_multiple_of(LATE_ONE_IN);
        View {
            page: (draw >> 8) % PAGES,
            at_ms: if late {
                now_ms.saturating_sub((draw >> 16) % LATE_BY_MS_MAX)
            } else {
                now_ms
            },
            views: 1 + ((draw >> 40) % 3) as i64,
        }
    }

    fn encode(&self) -> String {
        format!("page-{} {} {}", self.page, self.at_ms, self.views)
    }

    fn decode(value: &[u8]) -> Option<View> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        let page = parts.next()?.strip_prefix("page-")?.parse().ok()?;
        let at_ms = parts.next()?.parse().ok()?;
        let views = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(View { page, at_ms, views })
    }
}

fn minute_key(page: u64) -> String {
    format!("views/minute/page-{page}")
}

fn hour_key(page: u64) -> String {
    format!("views/hour/page-{page}")
}

/// The counter holding partition `partition`'s applied offset: the next record to add.
fn applied_key(partition: u32) -> String {
    format!("views/applied/{TOPIC}/{partition}")
}

fn window_start(at_ms: u64, window: Duration) -> u64 {
    let length = window.as_millis() as u64;
    at_ms - at_ms % length
}

/// What the workers did.
#[derive(Default)]
struct Stats {
    applied: u64,
    transactions: u64,
    /// Records skipped because their partition's applied offset was already past them.
    skipped: u64,
    /// Transactions whose condition failed: another worker had moved the applied offset.
    conflicts: u64,
    /// Records that were not page views.
    unreadable: u64,
    consumer_errors: u64,
    /// Offsets a worker found missing (a record never delivered): each is a violation.
    gaps: Vec<String>,
}

#[derive(Default)]
struct Shared {
    stats: Mutex<Stats>,
    published: AtomicU64,
    /// Views published after the minute they happened in.
    late: AtomicU64,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.locked()
    }
}

async fn read_applied(client: &Client, partition: u32) -> Result<u64, DemoError> {
    let value = client
        .counter(applied_key(partition))
        .get()
        .await
        .doing(|| format!("reading partition {partition}'s applied offset"))?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Adds `records` (of one partition, in offset order) to the windows, exactly once: only those
/// at or past the partition's applied offset, in one transaction that moves the offset on the
/// condition that it still holds what was read.
async fn apply(
    client: &Client,
    records: &[ConsumedRecord],
    applied: &mut BTreeMap<u32, u64>,
    shared: &Shared,
) -> Result<(), DemoError> {
    let Some(partition) = records.first().map(|r| r.partition) else {
        return Ok(());
    };
    let key = applied_key(partition);
    let mut from = match applied.get(&partition) {
        Some(offset) => *offset,
        None => read_applied(client, partition).await?,
    };
    for _ in 0..APPLY_ATTEMPTS_MAX {
        let fresh: Vec<&ConsumedRecord> = records.iter().filter(|r| r.offset >= from).collect();
        let Some(last) = fresh.last().map(|r| r.offset) else {
            shared.stats().skipped += records.len() as u64;
            applied.insert(partition, from);
            return Ok(());
        };
        if let Some(first) = fresh.first().filter(|r| r.offset > from) {
            // The cached offset may be old (the partition went to another worker and came
            // back): only the cluster's says whether records were skipped.
            let current = read_applied(client, partition).await?;
            if current != from {
                from = current;
                continue;
            }
            shared.stats().gaps.push(format!(
                "partition {partition}: records {from}..{} were never delivered",
                first.offset
            ));
        }
        let mut ops = Vec::with_capacity(fresh.len() * 2 + 1);
        let mut unreadable = 0;
        for record in &fresh {
            let Some(view) = View::decode(&record.value) else {
                unreadable += 1;
                continue;
            };
            let at = Some(view.at_ms);
            ops.push(CounterOp::windowed(
                minute_key(view.page),
                view.views,
                window::MINUTE,
                MINUTE_RETENTION,
                at,
            ));
            ops.push(CounterOp::windowed(
                hour_key(view.page),
                view.views,
                window::HOUR,
                HOUR_RETENTION,
                at,
            ));
        }
        ops.push(CounterOp::set(key.clone(), (last + 1) as i64));
        let outcome = client
            .txn()
            .when(Condition::counter(key.clone(), Compare::Eq, from as i64))
            .then(TxnOp::counters(ops))
            .commit()
            .await
            .doing(|| format!("adding partition {partition}'s records {from}..={last}"))?;
        match outcome {
            TxnOutcome::Committed { succeeded: true, .. } => {
                let mut stats = shared.stats();
                stats.applied += fresh.len() as u64;
                stats.skipped += (records.len() - fresh.len()) as u64;
                stats.unreadable += unreadable;
                stats.transactions += 1;
                applied.insert(partition, last + 1);
                return Ok(());
            }
            TxnOutcome::Committed { succeeded: false, .. } => {
                shared.stats().conflicts += 1;
                from = read_applied(client, partition).await?;
            }
            TxnOutcome::Aborted { op, reason, .. } => {
                return Err(DemoError::Setup(format!(
                    "the transaction adding partition {partition}'s records was refused at op {op}: {reason:?}"
                )))
            }
        }
    }
    Err(DemoError::Contended {
        what: format!("adding partition {partition}'s records"),
        attempts: APPLY_ATTEMPTS_MAX,
    })
}

/// A worker's life: join the group, add what it receives to the windows, commit what is added.
async fn work(
    name: String,
    endpoints: Vec<String>,
    shared: Arc<Shared>,
    mut closing: Closing,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let options = ConsumerOptions {
        member_id: Some(name.clone()),
        session_timeout: SESSION_TIMEOUT,
        // Commits follow the transactions, never run ahead of them: a commit past what is added
        // would make the next owner skip records.
        auto_commit: None,
        ..ConsumerOptions::default()
    };
    let mut consumer = client
        .streams()
        .consumer(GROUP, vec![TOPIC.into()], options)
        .await
        .doing(|| format!("{name} joining group {GROUP}"))?;
    let mut applied = BTreeMap::new();
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            () = closing.requested() => break,
        };
        let mut batch = match next {
            None => break,
            Some(Err(_)) => {
                shared.stats().consumer_errors += 1;
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
            Some(Ok(record)) => vec![record],
        };
        // What the consumer has already fetched joins the batch, without waiting.
        while batch.len() < BATCH_RECORDS_MAX {
            match tokio::time::timeout(Duration::ZERO, consumer.next()).await {
                Ok(Some(Ok(record))) => batch.push(record),
                Ok(Some(Err(_))) => {
                    shared.stats().consumer_errors += 1;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_partition: BTreeMap<u32, Vec<ConsumedRecord>> = BTreeMap::new();
        for record in batch {
            by_partition.entry(record.partition).or_default().push(record);
        }
        for records in by_partition.values() {
            apply(&client, records, &mut applied, &shared).await?;
            if let Some(last) = records.last() {
                // Refused when the partition moved meanwhile: its next owner skips what is
                // applied by the offset in the cluster, whatever was committed.
                let _ = consumer.commit(last).await;
            }
        }
    }
    crate::worker::close_consumer(consumer, &name, GROUP).await
}

fn spawn_worker(name: String, endpoints: &[String], shared: &Arc<Shared>) -> Result<Worker, DemoError> {
    let (endpoints, shared) = (endpoints.to_vec(), shared.clone());
    Worker::spawn(name.clone(), move |closing| work(name, endpoints, shared, closing))
}

async fn publish(
    endpoints: Vec<String>,
    plan_views: u64,
    round: u64,
    pause: Duration,
    shared: Arc<Shared>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let producer = client
        .streams()
        .producer(TOPIC)
        .await
        .doing(|| format!("a producer of {TOPIC}"))?;
    let mut next = 0;
    while next < plan_views {
        let end = (next + round).min(plan_views);
        let now = unix_ms();
        let views: Vec<View> = (next..end).map(|i| View::planned(i, now)).collect();
        let late = views.iter().filter(|v| v.at_ms < now).count() as u64;
        let records: Vec<Record> = views
            .iter()
            .map(|view| Record::new(format!("page-{}", view.page), view.encode()))
            .collect();
        producer
            .send(records)
            .await
            .doing(|| format!("publishing views {next}..{end} to {TOPIC}"))?;
        shared.published.store(end, Ordering::SeqCst);
        shared.late.fetch_add(late, Ordering::SeqCst);
        next = end;
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// The windows recomputed from the views: per (page, window start), the views.
type Windows = BTreeMap<(u64, u64), i64>;

/// Every view in the topic, read back partition by partition.
async fn read_back(client: &Client) -> Result<Vec<View>, DemoError> {
    let streams = client.streams();
    let info = streams
        .describe(TOPIC, ReadConsistency::Linearizable)
        .await
        .doing(|| format!("describing {TOPIC}"))?;
    let mut views = Vec::new();
    for bounds in &info.partitions {
        let mut offset = bounds.log_start;
        while offset < bounds.high_watermark {
            let options = FetchOptions {
                max_records: READ_BACK_RECORDS,
                ..FetchOptions::default()
            };
            let fetched = streams
                .fetch(TOPIC, bounds.partition, offset, options)
                .await
                .doing(|| format!("reading back partition {} from {offset}", bounds.partition))?;
            let Some(last) = fetched.records.last().map(|r| r.offset) else {
                break;
            };
            views.extend(fetched.records.iter().filter_map(|r| View::decode(&r.value)));
            offset = last + 1;
        }
    }
    Ok(views)
}

fn recompute(views: &[View], window: Duration) -> Windows {
    let mut windows = Windows::new();
    for view in views {
        *windows
            .entry((view.page, window_start(view.at_ms, window)))
            .or_default() += view.views;
    }
    windows
}

/// Compares what the counters hold with the recomputation: each window that differs.
fn compare(what: &str, counted: &Windows, expected: &Windows) -> Vec<String> {
    let mut violations = Vec::new();
    for (&(page, start), &want) in expected {
        let got = counted.get(&(page, start)).copied().unwrap_or(0);
        if got != want {
            violations.push(format!(
                "page-{page}, {what} from {start}: counted {got}, the stream says {want}"
            ));
        }
    }
    for (&(page, start), &got) in counted {
        if !expected.contains_key(&(page, start)) && got != 0 {
            violations.push(format!(
                "page-{page}, {what} from {start}: counted {got}, the stream has no view in it"
            ));
        }
    }
    violations
}

/// What the counters hold for every page over the windows the views fall in.
async fn read_windows(
    client: &Client,
    views: &[View],
    window: Duration,
    key: fn(u64) -> String,
) -> Result<Windows, DemoError> {
    let mut counted = Windows::new();
    let (Some(from), Some(to)) = (
        views.iter().map(|v| window_start(v.at_ms, window)).min(),
        views.iter().map(|v| v.at_ms + 1).max(),
    ) else {
        return Ok(counted);
    };
    for page in 0..PAGES {
        let read = client
            .counter(key(page))
            .windows(window, from, to)
            .await
            .doing(|| format!("reading {}", key(page)))?;
        for (start, value) in read.windows {
            counted.insert((page, start), value);
        }
    }
    Ok(counted)
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let plan = Plan::of(demo.scale());
    let client = demo.connect().await?;
    let options = TopicOptions {
        partitions: PARTITIONS,
        ..TopicOptions::default()
    };
    let created = client
        .streams()
        .create_topic(TOPIC, options)
        .await
        .doing(|| format!("creating topic {TOPIC}"))?;
    if !created {
        return Err(DemoError::Setup(format!(
            "topic {TOPIC} already exists on this cluster (an earlier run?): its views and the counters under views/ \
             would mix with this run's; run without --endpoints on a temporary cluster"
        )));
    }
    demo.say(&format!(
        "topic {TOPIC}: {PARTITIONS} partitions; {} views of {PAGES} pages, one in {LATE_ONE_IN} late by up to {} min; \
         {WORKERS} workers in group {GROUP} add them to per-minute and per-hour windows",
        plan.views,
        LATE_BY_MS_MAX / 60_000
    ));
    let shared = Arc::new(Shared::default());
    let endpoints = demo.endpoints().to_vec();
    let mut workers = Vec::new();
    for i in 1..=WORKERS {
        workers.push(spawn_worker(format!("worker-{i}"), &endpoints, &shared)?);
    }
    let started = Instant::now();
    let mut producer = Some(tokio::spawn(publish(
        endpoints.clone(),
        plan.views,
        plan.round,
        plan.round_pause,
        shared.clone(),
    )));
    let mut killed: Option<(String, u64)> = None;
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let completed = loop {
        tokio::time::sleep(TICK).await;
        let applied = shared.stats().applied;
        // Done only once the kill happened: a run that never killed a worker showed nothing.
        if producer.is_none() && applied >= plan.views && killed.is_some() {
            break true;
        }
        if started.elapsed() > plan.deadline {
            break false;
        }
        if killed.is_none() && (applied * 100 >= plan.views * KILL_AT_PERCENT || applied >= plan.views) {
            let victim = workers.remove(0);
            let name = victim.name.clone();
            demo.say(&format!(
                "killing {name} after {applied} views applied (no leave, no last commit); worker-{} joins",
                WORKERS + 1
            ));
            victim.kill().await?;
            workers.push(spawn_worker(format!("worker-{}", WORKERS + 1), &endpoints, &shared)?);
            killed = Some((name, applied));
        }
        if producer.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
            if let Some(done) = producer.take() {
                joined(done, "the producer").await?;
            }
            demo.say(&format!(
                "published {} views in {:.1}s",
                plan.views,
                started.elapsed().as_secs_f64()
            ));
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + PROGRESS_EVERY;
            let stats = shared.stats();
            demo.say(&format!(
                "  published {}/{}  applied {}  transactions {}  redelivered and skipped {}  conflicts {}",
                shared.published.load(Ordering::SeqCst),
                plan.views,
                stats.applied,
                stats.transactions,
                stats.skipped,
                stats.conflicts
            ));
        }
    };
    let elapsed = started.elapsed();
    if let Some(producer) = producer {
        producer.abort();
    }
    for worker in workers {
        worker.close().await?;
    }

    demo.say("recomputing every window from the stream");
    let views = read_back(&client).await?;
    let expected_minutes = recompute(&views, window::MINUTE);
    let expected_hours = recompute(&views, window::HOUR);
    let minutes = read_windows(&client, &views, window::MINUTE, minute_key).await?;
    let hours = read_windows(&client, &views, window::HOUR, hour_key).await?;
    let stats = std::mem::take(&mut *shared.stats());
    let mut report = Report::default();
    if !completed {
        report.violations.push(format!(
            "{} of {} views applied within {:?}",
            stats.applied, plan.views, plan.deadline
        ));
    }
    if views.len() as u64 != plan.views {
        report.violations.push(format!(
            "the stream holds {} views, {} were published",
            views.len(),
            plan.views
        ));
    }
    report.violations.extend(stats.gaps.iter().cloned());
    report.violations.extend(compare("minute", &minutes, &expected_minutes));
    report.violations.extend(compare("hour", &hours, &expected_hours));

    report.figure("views published", plan.views);
    report.figure("late views", shared.late.load(Ordering::SeqCst));
    report.figure("views applied", stats.applied);
    if let Some((name, at)) = killed {
        report.figure("worker killed", format!("{name} after {at} views applied"));
    }
    report.figure(
        "aggregation transactions",
        format!(
            "{} ({:.1} views each)",
            stats.transactions,
            stats.applied as f64 / stats.transactions.max(1) as f64
        ),
    );
    report.figure("redelivered views skipped", stats.skipped);
    report.figure("conflicts with another worker", stats.conflicts);
    report.figure(
        "windows compared",
        format!("{} minutes, {} hours", expected_minutes.len(), expected_hours.len()),
    );
    if stats.consumer_errors > 0 || stats.unreadable > 0 {
        report.figure(
            "consumer errors, unreadable records",
            format!("{}, {}", stats.consumer_errors, stats.unreadable),
        );
    }
    report.figure("run time", format!("{:.1}s", elapsed.as_secs_f64()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_round_trip_and_some_are_late() {
        let now = 1_700_000_000_000;
        let views: Vec<View> = (0..1000).map(|i| View::planned(i, now)).collect();
        for view in &views {
            assert_eq!(View::decode(view.encode().as_bytes()), Some(view.clone()));
            assert!((1..=3).contains(&view.views) && view.page < PAGES);
            assert!(now - view.at_ms < LATE_BY_MS_MAX);
        }
        let late = views.iter().filter(|v| v.at_ms < now).count();
        assert!((50..200).contains(&late), "{late} late views of 1000");
        assert_eq!(View::decode(b"page-1 2 3 4"), None);
        assert_eq!(View::decode(b"page-1 2"), None);
    }

    #[test]
    fn recomputation_buckets_by_window_start() {
        let views = [
            View {
                page: 1,
                at_ms: 60_000,
                views: 2,
            },
            View {
                page: 1,
                at_ms: 119_999,
                views: 3,
            },
            View {
                page: 1,
                at_ms: 120_000,
                views: 1,
            },
            View {
                page: 2,
                at_ms: 60_000,
                views: 1,
            },
        ];
        let minutes = recompute(&views, window::MINUTE);
        assert_eq!(
            minutes,
            Windows::from([((1, 60_000), 5), ((1, 120_000), 1), ((2, 60_000), 1)])
        );
        let hours = recompute(&views, window::HOUR);
        assert_eq!(hours, Windows::from([((1, 0), 6), ((2, 0), 1)]));
    }

    #[test]
    fn a_window_counted_twice_or_missing_is_found() {
        let expected = Windows::from([((1, 0), 5), ((2, 0), 1)]);
        assert!(compare("minute", &expected.clone(), &expected).is_empty());
        let doubled = Windows::from([((1, 0), 10), ((2, 0), 1)]);
        assert_eq!(
            compare("minute", &doubled, &expected),
            vec!["page-1, minute from 0: counted 10, the stream says 5".to_string()]
        );
        let extra = Windows::from([((1, 0), 5), ((2, 0), 1), ((3, 60_000), 2)]);
        assert_eq!(
            compare("minute", &extra, &expected),
            vec!["page-3, minute from 60000: counted 2, the stream has no view in it".to_string()]
        );
        let missing = Windows::from([((1, 0), 5)]);
        assert_eq!(compare("minute", &missing, &expected).len(), 1);
    }
}
