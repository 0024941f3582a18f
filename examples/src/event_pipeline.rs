//! # event-pipeline
//!
//! Order events flow from producers through a versioned, partitioned topic to a group of workers
//! that process them, as a team would build it on Kafka:
//! - producers publish each order's events to `orders.v1`, keyed by the order id, so one order's
//!   events land in one partition in the order they were published;
//! - a consumer group of workers (the SDK's managed consumer) processes them; one worker is
//!   killed mid-run (its runtime dropped: no leave, no last commit, as a crashed process) and a
//!   replacement joins;
//! - events the workers cannot handle (payment callbacks in a schema they do not know yet) go to
//!   the dead-letter topic `orders.v1.dlq`; once the fix is deployed, a replay worker re-drives
//!   them to `orders.v1`, where the workers process them.
//!
//! Invariant: every event is processed at least once, and in order per order id: no order's
//! event n+1 is handled (processed or dead-lettered) before its event n. A killed worker loses
//! nothing: what it had not committed, its partitions' next owner reads again (those are the
//! redeliveries the summary counts). A replayed event comes back after later events of its
//! order, as with any dead-letter topic: it is outside the order check, inside the "processed"
//! one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_client::consumer::dead_letter;
use basalt_client::{ConsumedRecord, Consumer, ConsumerOptions, ErrorCode, Record, ReplayOptions, TopicOptions};
use tokio_stream::StreamExt;

use crate::worker::{Closing, Worker};
use crate::{connect, joined, quantile, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "event-pipeline",
    summary: "order events through a partitioned topic to a consumer group (one worker killed \
              mid-run), poison events to a dead-letter topic, replayed after a fix",
    invariant: "every event processed at least once, in order per order id; the killed worker \
                lost nothing",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const TOPIC: &str = "orders.v1";
const GROUP: &str = "orders-processor";
const PARTITIONS: u32 = 4;
/// Workers at the start; one more joins when the first is killed.
const WORKERS: usize = 3;
/// A killed worker's partitions go to the others this long after its last heartbeat.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// What workers are done with is committed this often.
const AUTO_COMMIT: Duration = Duration::from_millis(200);
/// Producers, each publishing the events of its share of the orders.
const PRODUCERS: u64 = 2;
/// One event in this many is a payment callback in the schema the workers learn only from the
/// fix: dead-lettered until then.
const POISON_ONE_IN: u64 = 40;
/// The share of the events handled when a worker is killed, in percent.
const KILL_AT_PERCENT: u64 = 35;
/// How often the progress line is printed and the run's state looked at.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
/// After an error the consumer handed over, before asking again.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often the replay worker looks at the dead-letter topic once the fix is deployed.
const REPLAY_EVERY: Duration = Duration::from_millis(500);
/// The life of an order, in event order; a poison event replaces one of them.
const KINDS: [&str; 5] = ["created", "item-added", "paid", "packed", "shipped"];
const POISON_KIND: &str = "payment-callback-v2";

struct Plan {
    orders: u64,
    events_per_order: u64,
    /// Between two rounds of publishing (one event of every order per round).
    round_pause: Duration,
    /// The whole run, kill, fix and replay included.
    deadline: Duration,
}

impl Plan {
    fn of(scale: Scale) -> Plan {
        match scale {
            Scale::Short => Plan {
                orders: 60,
                events_per_order: 10,
                round_pause: Duration::from_millis(150),
                deadline: Duration::from_secs(90),
            },
            Scale::Full => Plan {
                orders: 400,
                events_per_order: 25,
                round_pause: Duration::from_millis(200),
                deadline: Duration::from_secs(180),
            },
        }
    }

    fn events(&self) -> u64 {
        self.orders * self.events_per_order
    }
}

/// One order event, as published: `order-ID SEQ KIND`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Event {
    order: u64,
    seq: u64,
    kind: String,
}

impl Event {
    fn planned(order: u64, seq: u64) -> Event {
        let kind = if is_poison(order, seq) {
            POISON_KIND.to_string()
        } else {
            KINDS[((seq - 1) as usize).min(KINDS.len() - 1)].to_string()
        };
        Event { order, seq, kind }
    }

    fn key(&self) -> String {
        format!("order-{}", self.order)
    }

    fn encode(&self) -> String {
        format!("{} {} {}", self.key(), self.seq, self.kind)
    }

    fn decode(value: &[u8]) -> Option<Event> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, ' ');
        let order = parts.next()?.strip_prefix("order-")?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let kind = parts.next()?.to_string();
        Some(Event { order, seq, kind })
    }
}

fn is_poison(order: u64, seq: u64) -> bool {
    (order * 7 + seq * 13).is_multiple_of(POISON_ONE_IN)
}

/// What a worker does with an event: `Err(reason)` when it cannot handle it yet.
fn process(event: &Event, fix_deployed: bool) -> Result<(), &'static str> {
    if event.kind == POISON_KIND && !fix_deployed {
        return Err("unknown payment callback schema v2");
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handling {
    Processed,
    DeadLettered,
    /// Processed after a replay from the dead-letter topic.
    ProcessedReplay,
}

/// Everything the workers did, as they did it.
#[derive(Default)]
struct Journal {
    /// Per order, each handling of one of its events (seq, how), in the order they happened.
    handled: BTreeMap<u64, Vec<(u64, Handling)>>,
    /// Events handled at least once (processed or dead-lettered, replays aside).
    first_handled: BTreeSet<(u64, u64)>,
    /// Events processed at least once.
    processed: BTreeSet<(u64, u64)>,
    /// Publish to first handling, per event, in ms.
    latencies_ms: Vec<u64>,
    /// Handlings of an event handled before (a replay aside): what a kill or a rebalance
    /// redelivered.
    redelivered: u64,
    dead_lettered: u64,
    replays_processed: u64,
    /// Records that were not order events (none are published; counted if any appear).
    unreadable: u64,
    /// Errors the consumers handed to the workers (they go on after each).
    consumer_errors: u64,
    per_worker: BTreeMap<String, u64>,
}

impl Journal {
    fn record(&mut self, worker: &str, event: &Event, how: Handling, published_ms: u64) {
        let id = (event.order, event.seq);
        self.handled.entry(event.order).or_default().push((event.seq, how));
        *self.per_worker.entry(worker.to_string()).or_default() += 1;
        match how {
            Handling::ProcessedReplay => self.replays_processed += 1,
            Handling::Processed | Handling::DeadLettered => {
                if self.first_handled.insert(id) {
                    self.latencies_ms.push(unix_ms().saturating_sub(published_ms));
                } else {
                    self.redelivered += 1;
                }
            }
        }
        match how {
            Handling::DeadLettered => self.dead_lettered += 1,
            Handling::Processed | Handling::ProcessedReplay => {
                self.processed.insert(id);
            }
        }
    }
}

/// What the run's tasks and workers share.
#[derive(Default)]
struct Shared {
    journal: Mutex<Journal>,
    fix_deployed: AtomicBool,
    published: AtomicU64,
}

impl Shared {
    fn journal(&self) -> MutexGuard<'_, Journal> {
        // A panicking worker leaves plain counters behind: still readable.
        self.journal.locked()
    }
}

/// The invariant, from what the workers did: each way it was broken, or nothing.
fn check(plan: &Plan, handled: &BTreeMap<u64, Vec<(u64, Handling)>>) -> Vec<String> {
    let mut violations = Vec::new();
    for (order, events) in handled {
        if *order >= plan.orders {
            violations.push(format!("order-{order} was never published, yet handled"));
        }
        let mut highest = 0;
        for &(seq, how) in events {
            if seq == 0 || seq > plan.events_per_order {
                violations.push(format!("order-{order}: event {seq} was never published, yet handled"));
                continue;
            }
            if how != Handling::ProcessedReplay {
                if seq > highest + 1 {
                    violations.push(format!(
                        "order-{order}: event {seq} handled before event {} (out of order)",
                        highest + 1
                    ));
                }
                highest = highest.max(seq);
            }
        }
    }
    for order in 0..plan.orders {
        let events = handled.get(&order).map(Vec::as_slice).unwrap_or_default();
        let missing: Vec<u64> = (1..=plan.events_per_order)
            .filter(|seq| {
                !events
                    .iter()
                    .any(|&(s, how)| s == *seq && how != Handling::DeadLettered)
            })
            .collect();
        if !missing.is_empty() {
            violations.push(format!("order-{order}: events {missing:?} never processed"));
        }
    }
    violations
}

/// A worker's life: join the group, handle records until asked to close.
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
        auto_commit: Some(AUTO_COMMIT),
        ..ConsumerOptions::default()
    };
    let mut consumer = client
        .streams()
        .consumer(GROUP, vec![TOPIC.into()], options)
        .await
        .doing(|| format!("{name} joining group {GROUP}"))?;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            () = closing.requested() => break,
        };
        match next {
            None => break,
            // The consumer retries what can be retried itself; what it hands over is counted
            // and passed (a partition refused for good is fetched again after a rebalance).
            Some(Err(_)) => {
                shared.journal().consumer_errors += 1;
                tokio::time::sleep(ERROR_PAUSE).await;
            }
            Some(Ok(record)) => handle(&name, &consumer, &record, &shared).await?,
        }
    }
    crate::worker::close_consumer(consumer, &name, GROUP).await
}

/// Starts worker `name` (see [`Worker`]).
fn spawn_worker(name: String, endpoints: &[String], shared: &Arc<Shared>) -> Result<Worker, DemoError> {
    let (endpoints, shared) = (endpoints.to_vec(), shared.clone());
    Worker::spawn(name.clone(), move |closing| work(name, endpoints, shared, closing))
}

/// Processes one record, or dead-letters it. It is committed only once the worker asks for the
/// next one, so a kill before that hands it to the partition's next owner again.
async fn handle(name: &str, consumer: &Consumer, record: &ConsumedRecord, shared: &Shared) -> Result<(), DemoError> {
    let Some(event) = Event::decode(&record.value) else {
        consumer
            .dead_letter(record, "not an order event")
            .await
            .doing(|| format!("{name} dead-lettering an unreadable record"))?;
        shared.journal().unreadable += 1;
        return Ok(());
    };
    let replayed = record.header(dead_letter::REPLAYS_HEADER).is_some();
    let how = match process(&event, shared.fix_deployed.load(Ordering::SeqCst)) {
        Ok(()) if replayed => Handling::ProcessedReplay,
        Ok(()) => Handling::Processed,
        Err(reason) => {
            consumer
                .dead_letter(record, reason)
                .await
                .doing(|| format!("{name} dead-lettering {}", event.encode()))?;
            Handling::DeadLettered
        }
    };
    shared.journal().record(name, &event, how, record.timestamp_ms);
    Ok(())
}

/// Publishes the events of every `PRODUCERS`-th order from `first`, one round of events at a
/// time, each round acknowledged before the next (so an order's events are in order).
async fn publish(
    endpoints: Vec<String>,
    plan_orders: u64,
    events_per_order: u64,
    pause: Duration,
    first: u64,
    shared: Arc<Shared>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let producer = client
        .streams()
        .producer(TOPIC)
        .await
        .doing(|| format!("a producer of {TOPIC}"))?;
    for seq in 1..=events_per_order {
        let records: Vec<Record> = (first..plan_orders)
            .step_by(PRODUCERS as usize)
            .map(|order| {
                let event = Event::planned(order, seq);
                Record::new(event.key(), event.encode())
            })
            .collect();
        let count = records.len() as u64;
        producer
            .send(records)
            .await
            .doing(|| format!("publishing round {seq} to {TOPIC}"))?;
        shared.published.fetch_add(count, Ordering::SeqCst);
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let plan = Plan::of(demo.scale());
    let client = demo.connect().await?;
    let streams = client.streams();
    let topic_options = TopicOptions {
        partitions: PARTITIONS,
        ..TopicOptions::default()
    };
    let created = streams
        .create_topic(TOPIC, topic_options)
        .await
        .doing(|| format!("creating topic {TOPIC}"))?;
    if !created {
        return Err(DemoError::Setup(format!(
            "topic {TOPIC} already exists on this cluster (an earlier run?): delete {TOPIC} and {TOPIC}.dlq \
             (`basalt stream delete TOPIC`), or run without --endpoints on a temporary cluster"
        )));
    }
    demo.say(&format!(
        "topic {TOPIC}: {PARTITIONS} partitions; {} orders x {} events = {} events from {PRODUCERS} producers; \
         {WORKERS} workers in group {GROUP}",
        plan.orders,
        plan.events_per_order,
        plan.events()
    ));

    let shared = Arc::new(Shared::default());
    let endpoints = demo.endpoints().to_vec();
    let mut workers = Vec::new();
    for i in 1..=WORKERS {
        workers.push(spawn_worker(format!("worker-{i}"), &endpoints, &shared)?);
    }
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|first| {
            tokio::spawn(publish(
                endpoints.clone(),
                plan.orders,
                plan.events_per_order,
                plan.round_pause,
                first,
                shared.clone(),
            ))
        })
        .collect();
    let mut producers = Some(producers);
    let mut publish_seconds = 0.0;
    let mut killed: Option<(String, u64)> = None;
    let mut replayed = 0u64;
    let mut next_replay = Instant::now();
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let total = plan.events();
    let completed = loop {
        tokio::time::sleep(TICK).await;
        let (handled, processed) = {
            let journal = shared.journal();
            (journal.first_handled.len() as u64, journal.processed.len() as u64)
        };
        // Done only once the kill happened: a run that never killed a worker showed nothing.
        if processed == total && killed.is_some() {
            break true;
        }
        if started.elapsed() > plan.deadline {
            break false;
        }
        if killed.is_none() && (handled * 100 >= total * KILL_AT_PERCENT || handled == total) {
            let victim = workers.remove(0);
            let name = victim.name.clone();
            demo.say(&format!(
                "killing {name} after {handled} events handled (no leave, no last commit); worker-{} joins; \
                 {name}'s partitions move after its {}s session",
                WORKERS + 1,
                SESSION_TIMEOUT.as_secs()
            ));
            victim.kill().await?;
            workers.push(spawn_worker(format!("worker-{}", WORKERS + 1), &endpoints, &shared)?);
            killed = Some((name, handled));
        }
        if producers
            .as_ref()
            .is_some_and(|p| p.iter().all(tokio::task::JoinHandle::is_finished))
        {
            for producer in producers.take().into_iter().flatten() {
                joined(producer, "a producer").await?;
            }
            publish_seconds = started.elapsed().as_secs_f64();
            demo.say(&format!("published {total} events in {publish_seconds:.1}s"));
        }
        // The fix ships once every event was handled once: each poison event is in the
        // dead-letter topic by then, whatever the pace of the workers.
        if producers.is_none() && handled == total && !shared.fix_deployed.load(Ordering::SeqCst) {
            shared.fix_deployed.store(true, Ordering::SeqCst);
            let dead = shared.journal().dead_lettered;
            demo.say(&format!(
                "every event handled once; fix deployed, replaying {dead} dead letters"
            ));
        }
        if shared.fix_deployed.load(Ordering::SeqCst) && Instant::now() >= next_replay {
            next_replay = Instant::now() + REPLAY_EVERY;
            let dlq = dead_letter::topic_of(TOPIC.as_bytes());
            match streams.replay_dead_letters(dlq, ReplayOptions::default()).await {
                Ok(summary) => replayed += summary.total(),
                // No event was dead-lettered: there is no dead-letter topic.
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                Err(e) => {
                    return Err(DemoError::Cluster {
                        doing: "replaying the dead letters".into(),
                        source: e,
                    })
                }
            }
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + PROGRESS_EVERY;
            let journal = shared.journal();
            demo.say(&format!(
                "  published {}/{total}  handled {handled}  processed {processed}  dead-lettered {}  replayed {replayed}  redelivered {}",
                shared.published.load(Ordering::SeqCst),
                journal.dead_lettered,
                journal.redelivered
            ));
        }
    };
    let elapsed = started.elapsed();
    for producer in producers.into_iter().flatten() {
        producer.abort();
    }
    for worker in workers {
        worker.close().await?;
    }

    let mut journal = std::mem::take(&mut *shared.journal());
    let mut report = Report {
        violations: check(&plan, &journal.handled),
        ..Report::default()
    };
    if !completed {
        report
            .violations
            .insert(0, format!("not every event was processed within {:?}", plan.deadline));
    }
    report.figure("events published", total);
    if publish_seconds > 0.0 {
        report.figure(
            "publish rate (paced)",
            format!("{:.0} events/s", total as f64 / publish_seconds),
        );
    }
    report.figure("events processed", format!("{} of {total}", journal.processed.len()));
    report.figure(
        "publish to first handling",
        format!(
            "p50 {} ms, p99 {} ms",
            quantile(&mut journal.latencies_ms, 0.5),
            quantile(&mut journal.latencies_ms, 0.99)
        ),
    );
    if let Some((name, at)) = killed {
        report.figure("worker killed", format!("{name} after {at} events handled"));
    }
    report.figure("redelivered (after the kill and rebalances)", journal.redelivered);
    report.figure("dead-lettered", journal.dead_lettered);
    report.figure("replayed and processed", journal.replays_processed);
    report.figure(
        "handled per worker",
        journal
            .per_worker
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if journal.consumer_errors > 0 || journal.unreadable > 0 {
        report.figure(
            "consumer errors, unreadable records",
            format!("{}, {}", journal.consumer_errors, journal.unreadable),
        );
    }
    report.figure("run time", format!("{:.1}s", elapsed.as_secs_f64()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Handling::*;

    fn plan(orders: u64, events_per_order: u64) -> Plan {
        Plan {
            orders,
            events_per_order,
            round_pause: Duration::ZERO,
            deadline: Duration::ZERO,
        }
    }

    fn handled(entries: &[(u64, &[(u64, Handling)])]) -> BTreeMap<u64, Vec<(u64, Handling)>> {
        entries.iter().map(|(o, e)| (*o, e.to_vec())).collect()
    }

    #[test]
    fn events_round_trip_and_some_are_poison() {
        let plan = Plan::of(Scale::Short);
        let mut poison = 0;
        for order in 0..plan.orders {
            for seq in 1..=plan.events_per_order {
                let event = Event::planned(order, seq);
                assert_eq!(Event::decode(event.encode().as_bytes()), Some(event.clone()));
                poison += u64::from(event.kind == POISON_KIND);
            }
        }
        assert!(
            poison >= 5,
            "{poison} poison events: too few to see the dead-letter path"
        );
        assert_eq!(Event::decode(b"garbage"), None);
        assert_eq!(Event::decode(b"order-x 1 paid"), None);
    }

    #[test]
    fn a_clean_run_holds() {
        let log = handled(&[
            (0, &[(1, Processed), (2, Processed)]),
            (1, &[(1, Processed), (2, Processed)]),
        ]);
        assert_eq!(check(&plan(2, 2), &log), Vec::<String>::new());
    }

    #[test]
    fn redeliveries_and_replays_hold() {
        // Killed after 3 before committing 2: 2 and 3 come again; 2 was dead-lettered, then
        // replayed after 4.
        let log = handled(&[(
            0,
            &[
                (1, Processed),
                (2, DeadLettered),
                (3, Processed),
                (2, DeadLettered),
                (3, Processed),
                (4, Processed),
                (2, ProcessedReplay),
            ],
        )]);
        assert_eq!(check(&plan(1, 4), &log), Vec::<String>::new());
    }

    #[test]
    fn a_skipped_event_is_out_of_order() {
        let log = handled(&[(0, &[(1, Processed), (3, Processed), (2, Processed)])]);
        assert_eq!(
            check(&plan(1, 3), &log),
            vec!["order-0: event 3 handled before event 2 (out of order)".to_string()]
        );
    }

    #[test]
    fn a_lost_event_is_found() {
        // Event 2 dead-lettered and never replayed; order 1 never seen at all.
        let log = handled(&[(0, &[(1, Processed), (2, DeadLettered), (3, Processed)])]);
        assert_eq!(
            check(&plan(2, 3), &log),
            vec![
                "order-0: events [2] never processed".to_string(),
                "order-1: events [1, 2, 3] never processed".to_string(),
            ]
        );
    }

    #[test]
    fn a_phantom_event_is_found() {
        let log = handled(&[(0, &[(1, Processed), (2, Processed)]), (5, &[(1, Processed)])]);
        let violations = check(&plan(1, 1), &log);
        assert!(violations.contains(&"order-0: event 2 was never published, yet handled".to_string()));
        assert!(violations.contains(&"order-5 was never published, yet handled".to_string()));
    }

    #[test]
    fn the_journal_counts_redeliveries_apart_from_replays() {
        let mut journal = Journal::default();
        let event = Event::planned(0, 1);
        journal.record("w1", &event, Processed, 0);
        journal.record("w2", &event, Processed, 0);
        journal.record("w2", &event, ProcessedReplay, 0);
        assert_eq!(journal.redelivered, 1);
        assert_eq!(journal.replays_processed, 1);
        assert_eq!(journal.latencies_ms.len(), 1);
        assert_eq!(journal.processed.len(), 1);
    }
}
