//! # notifications
//!
//! A notification service, as a team would build it on SQS or RabbitMQ, Redis and a websocket
//! fan-out:
//! - the service fans each notification out to one queue per channel (`notify.push`,
//!   `notify.email`, `notify.sms`) in one transaction, with the notification's priority
//!   (security alerts first) and a dedup id per channel, so a retried send enqueues nothing
//!   twice; marketing notifications pass a per-user rate limit first; every notification is also
//!   published on the user's in-app channel, live to whoever is subscribed;
//! - channel workers deliver through simulated providers that fail now and then (retried with
//!   exponential backoff through `nack`), are sometimes slower than the visibility timeout (the
//!   message comes back to another worker while the first still sends), and always fail for
//!   invalid phone numbers (dead-lettered after 5 deliveries);
//! - before sending, a worker claims the delivery (`notify/sent/ID/CHANNEL`, compare-and-set
//!   from absent); a worker finding a delivery claimed by another puts the message back for
//!   later, finding it sent acknowledges it; a failed send releases the claim.
//!
//! Invariant: every notification is delivered, once, on each of its channels, or dead-lettered;
//! no device gets one twice.
//!
//! Not covered: a worker that crashes between its claim and the provider's answer leaves the
//! claim, and the message then comes back every 500 ms until its deliveries run out and it is
//! dead-lettered, unsent (a provider idempotency key would let it resend safely); the run kills
//! no channel worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_client::txn::TxnOp;
use basalt_client::{
    CasOutcome, Client, ErrorCode, Message, NewMessage, QueueOptions, ReadConsistency, ReceiveOptions, TxnOpResult,
    TxnOutcome,
};

use crate::{
    connect, drain, joined, mix, quantile, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System,
};

pub const SYSTEM: System = System {
    name: "notifications",
    summary: "fan-out through a queue per channel with priorities, retries with backoff, a \
              dead-letter queue, dedup by notification id, a per-user rate limit, and pub/sub \
              for live in-app delivery",
    invariant: "every notification delivered on each of its channels or dead-lettered; none \
                delivered twice to one device",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const CHANNELS: [&str; 3] = ["push", "email", "sms"];
const VISIBILITY: Duration = Duration::from_secs(1);
const MAX_DELIVERIES: u32 = 5;
/// The first retry's delay; each later one doubles, up to `BACKOFF_MAX`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a message whose delivery another worker has claimed waits before coming back.
const CLAIMED_RETRY: Duration = Duration::from_millis(500);
const WORKERS_PER_CHANNEL: usize = 2;
const PRODUCERS: u64 = 2;
/// Marketing notifications per user per window.
const MARKETING_LIMIT: u64 = 3;
const MARKETING_WINDOW: Duration = Duration::from_secs(10);
/// One notification in this many is sent twice by the service (a retry after a timeout).
const RETRY_ONE_IN: u64 = 10;
/// Users with an invalid phone number: every SMS to them fails.
const INVALID_NUMBER_ONE_IN: u64 = 17;
/// A provider's send; a slow one takes longer than the visibility timeout.
const SEND_LATENCY: Duration = Duration::from_millis(4);
const SLOW_SEND: Duration = Duration::from_millis(1500);
/// Receives per worker call.
const RECEIVE_MAX: u32 = 10;
const TICK: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

struct Scope {
    users: u64,
    notifications: u64,
    deadline: Duration,
}

impl Scope {
    fn of(scale: Scale) -> Scope {
        match scale {
            Scale::Short => Scope {
                users: 40,
                notifications: 400,
                deadline: Duration::from_secs(60),
            },
            Scale::Full => Scope {
                users: 200,
                notifications: 2_000,
                deadline: Duration::from_secs(180),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Security,
    Transactional,
    Marketing,
}

impl Kind {
    fn priority(self) -> u8 {
        match self {
            Kind::Security => 9,
            Kind::Transactional => 5,
            Kind::Marketing => 1,
        }
    }

    fn channels(self) -> &'static [&'static str] {
        match self {
            Kind::Security => &CHANNELS,
            Kind::Transactional => &["push", "email"],
            Kind::Marketing => &["email", "push"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Security => "security",
            Kind::Transactional => "transactional",
            Kind::Marketing => "marketing",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Notification {
    id: u64,
    user: u64,
    kind: Kind,
}

impl Notification {
    fn planned(id: u64, users: u64) -> Notification {
        let draw = mix(id);
        let kind = match (draw >> 8) % 20 {
            0..=2 => Kind::Security,
            3..=11 => Kind::Transactional,
            _ => Kind::Marketing,
        };
        Notification {
            id,
            user: draw % users,
            kind,
        }
    }

    fn encode(&self) -> String {
        format!("{} {} {}", self.id, self.user, self.kind.name())
    }

    fn decode(payload: &[u8]) -> Option<Notification> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.split(' ');
        let id = parts.next()?.parse().ok()?;
        let user = parts.next()?.parse().ok()?;
        let kind = match parts.next()? {
            "security" => Kind::Security,
            "transactional" => Kind::Transactional,
            "marketing" => Kind::Marketing,
            _ => return None,
        };
        Some(Notification { id, user, kind })
    }
}

fn queue_of(channel: &str) -> String {
    format!("notify.{channel}")
}

fn dlq_of(channel: &str) -> String {
    format!("notify.{channel}.dlq")
}

fn claim_key(id: u64, channel: &str) -> String {
    format!("notify/sent/{id}/{channel}")
}

fn backoff(delivery: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << delivery.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The simulated providers and, behind them, the devices: what each device received.
#[derive(Default)]
struct Devices {
    /// Per (notification, channel), how many times its device got it.
    received: Mutex<BTreeMap<(u64, &'static str), u32>>,
    /// Enqueue to delivery, per priority, in ms.
    latencies: Mutex<BTreeMap<u8, Vec<u64>>>,
    sends: AtomicU64,
    failed_sends: AtomicU64,
    slow_sends: AtomicU64,
}

impl Devices {
    fn received(&self) -> MutexGuard<'_, BTreeMap<(u64, &'static str), u32>> {
        self.received.locked()
    }

    /// A provider's send: fails for invalid numbers and now and then; sometimes slow.
    async fn send(
        &self,
        n: &Notification,
        channel: &'static str,
        attempt: u64,
        enqueued_at_ms: u64,
    ) -> Result<(), &'static str> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        let draw = mix(n.id ^ (attempt << 40) ^ (channel.len() as u64) << 56);
        let (fail_percent, slow_percent) = match channel {
            "push" => (2, 0),
            "email" => (10, 3),
            _ => (25, 0),
        };
        let slow = draw % 100 < slow_percent;
        if slow {
            self.slow_sends.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(if slow { SLOW_SEND } else { SEND_LATENCY }).await;
        if channel == "sms" && n.user.is_multiple_of(INVALID_NUMBER_ONE_IN) {
            self.failed_sends.fetch_add(1, Ordering::SeqCst);
            return Err("invalid phone number");
        }
        if (draw >> 8) % 100 < fail_percent {
            self.failed_sends.fetch_add(1, Ordering::SeqCst);
            return Err("provider unavailable");
        }
        *self.received().entry((n.id, channel)).or_default() += 1;
        self.latencies
            .locked()
            .entry(n.kind.priority())
            .or_default()
            .push(unix_ms().saturating_sub(enqueued_at_ms));
        Ok(())
    }
}

/// What the service and the workers counted.
#[derive(Default)]
struct Counts {
    suppressed: AtomicU64,
    retried_sends: AtomicU64,
    duplicates_refused: AtomicU64,
    /// Redeliveries a worker found already sent (acknowledged without sending).
    already_sent: AtomicU64,
    /// Redeliveries a worker found claimed by another (put back for later).
    claimed_elsewhere: AtomicU64,
    inapp_published: AtomicU64,
    inapp_received: AtomicU64,
    stop: AtomicBool,
}

/// The notification service: rate limit, fan-out in one transaction, in-app publish.
async fn produce(
    endpoints: Vec<String>,
    scope_users: u64,
    ids: Vec<u64>,
    counts: Arc<Counts>,
    fanned: Arc<Mutex<Vec<Notification>>>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let limiter = client.rate_limiter();
    for id in ids {
        let n = Notification::planned(id, scope_users);
        if n.kind == Kind::Marketing {
            let decision = limiter
                .check(
                    format!("notify/marketing/user-{}", n.user),
                    MARKETING_LIMIT,
                    MARKETING_WINDOW,
                    1,
                )
                .await
                .doing(|| format!("rate-checking notification {id}"))?;
            if !decision.allowed {
                counts.suppressed.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        }
        let sends = if id.is_multiple_of(RETRY_ONE_IN) { 2 } else { 1 };
        for send in 0..sends {
            let mut fan_out = client.txn();
            for channel in n.kind.channels() {
                let message = NewMessage {
                    payload: n.encode().into_bytes(),
                    dedup_id: Some(format!("{id}:{channel}").into_bytes()),
                    priority: n.kind.priority(),
                    ..NewMessage::default()
                };
                fan_out = fan_out.then(TxnOp::enqueue(queue_of(channel), vec![message]));
            }
            let outcome = fan_out
                .commit()
                .await
                .doing(|| format!("fanning out notification {id}"))?;
            let TxnOutcome::Committed { results, .. } = outcome else {
                return Err(DemoError::Setup(format!(
                    "the fan-out of notification {id} was refused: {outcome:?}"
                )));
            };
            if send > 0 {
                counts.retried_sends.fetch_add(1, Ordering::SeqCst);
                for result in results {
                    if let TxnOpResult::Enqueued(enqueued) = result {
                        let refused = enqueued.iter().filter(|e| e.duplicate).count() as u64;
                        counts.duplicates_refused.fetch_add(refused, Ordering::SeqCst);
                    }
                }
            }
        }
        fanned.locked().push(n);
        let receivers = client
            .pubsub()
            .publish(format!("inapp.user-{}", n.user), n.encode())
            .await
            .doing(|| format!("publishing notification {id} in-app"))?;
        if receivers > 0 {
            counts.inapp_published.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// One message of a channel: claim, send, mark sent and acknowledge; or put it back.
async fn deliver(
    client: &Client,
    channel: &'static str,
    worker: &str,
    message: &Message,
    devices: &Devices,
    counts: &Counts,
) -> Result<(), DemoError> {
    let queue = client.queue(queue_of(channel));
    let Some(n) = Notification::decode(&message.payload) else {
        // Not ours to read: let it go to the dead-letter queue.
        let _ = queue.nack(&message.receipt, Duration::ZERO).await;
        return Ok(());
    };
    let kv = client.kv();
    let key = claim_key(n.id, channel);
    let claim = kv.get(&key).await.doing(|| format!("reading {key}"))?;
    match claim.as_ref().map(|entry| entry.value.as_slice()) {
        Some(b"sent") => {
            counts.already_sent.fetch_add(1, Ordering::SeqCst);
            // A stale receipt: another delivery of it already went.
            let _ = queue.ack(&message.receipt).await;
            return Ok(());
        }
        Some(_) => {
            counts.claimed_elsewhere.fetch_add(1, Ordering::SeqCst);
            let _ = queue.nack(&message.receipt, CLAIMED_RETRY).await;
            return Ok(());
        }
        None => {}
    }
    let revision = match kv
        .cas(&key, None, format!("claimed {worker}"))
        .await
        .doing(|| format!("claiming {key}"))?
    {
        CasOutcome::Written { revision } => revision,
        CasOutcome::Conflict { .. } => {
            counts.claimed_elsewhere.fetch_add(1, Ordering::SeqCst);
            let _ = queue.nack(&message.receipt, CLAIMED_RETRY).await;
            return Ok(());
        }
    };
    match devices
        .send(&n, channel, u64::from(message.delivery), message.enqueued_at_ms)
        .await
    {
        Ok(()) => {
            kv.cas(&key, Some(revision), "sent")
                .await
                .doing(|| format!("marking {key} sent"))?;
            // Stale when the message came back meanwhile: its next receiver finds it sent.
            let _ = queue.ack(&message.receipt).await;
        }
        Err(_) => {
            kv.delete(&key).await.doing(|| format!("releasing {key}"))?;
            let _ = queue.nack(&message.receipt, backoff(message.delivery)).await;
        }
    }
    Ok(())
}

async fn work(
    endpoints: Vec<String>,
    channel: &'static str,
    worker: String,
    devices: Arc<Devices>,
    counts: Arc<Counts>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let queue = client.queue(queue_of(channel));
    while !counts.stop.load(Ordering::SeqCst) {
        let options = ReceiveOptions {
            wait: TICK,
            ..ReceiveOptions::default()
        };
        let messages = match queue.receive(RECEIVE_MAX, options).await {
            Ok(messages) => messages,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                return Err(DemoError::Setup(format!("queue {} is gone", queue_of(channel))))
            }
            Err(e) => {
                return Err(DemoError::Cluster {
                    doing: format!("{worker} receiving"),
                    source: e,
                })
            }
        };
        // The messages of one receive go out side by side, as a provider client sends them.
        let deliveries = messages
            .iter()
            .map(|message| deliver(&client, channel, &worker, message, &devices, &counts));
        futures::future::try_join_all(deliveries).await?;
    }
    Ok(())
}

/// Every dead letter of every channel, received and acknowledged: (notification, channel).
async fn drain_dead_letters(client: &Client) -> Result<Vec<(u64, &'static str)>, DemoError> {
    let mut dead = Vec::new();
    for channel in CHANNELS {
        for payload in drain(client, &dlq_of(channel)).await? {
            if let Some(n) = Notification::decode(&payload) {
                dead.push((n.id, channel));
            }
        }
    }
    Ok(dead)
}

/// Each way the deliveries break the invariant.
fn check(
    fanned: &[Notification],
    received: &BTreeMap<(u64, &'static str), u32>,
    dead: &[(u64, &'static str)],
) -> Vec<String> {
    let mut violations = Vec::new();
    let dead: BTreeSet<(u64, &str)> = dead.iter().copied().collect();
    let mut expected = BTreeSet::new();
    for n in fanned {
        for &channel in n.kind.channels() {
            expected.insert((n.id, channel));
            let times = received.get(&(n.id, channel)).copied().unwrap_or(0);
            if times > 1 {
                violations.push(format!(
                    "notification {} reached its {channel} device {times} times",
                    n.id
                ));
            }
            if times == 0 && !dead.contains(&(n.id, channel)) {
                violations.push(format!(
                    "notification {} was neither delivered by {channel} nor dead-lettered",
                    n.id
                ));
            }
        }
    }
    for (id, channel) in received.keys().chain(dead.iter()) {
        if !expected.contains(&(*id, *channel)) {
            violations.push(format!(
                "notification {id} went by {channel}, which it was never sent to"
            ));
        }
    }
    violations
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let scope = Scope::of(demo.scale());
    let client = demo.connect().await?;
    for channel in CHANNELS {
        let dlq_created = client
            .queue(dlq_of(channel))
            .create(QueueOptions::default())
            .await
            .doing(|| format!("creating {}", dlq_of(channel)))?;
        if !dlq_created {
            return Err(DemoError::Setup(format!(
                "queue {} exists on this cluster (an earlier run?); run without --endpoints on a temporary cluster",
                dlq_of(channel)
            )));
        }
        let options = QueueOptions {
            visibility_timeout: VISIBILITY,
            max_deliveries: MAX_DELIVERIES,
            dead_letter_queue: Some(dlq_of(channel).into_bytes()),
            dedup_window: Duration::from_secs(600),
        };
        client
            .queue(queue_of(channel))
            .create(options)
            .await
            .doing(|| format!("creating {}", queue_of(channel)))?;
    }
    demo.say(&format!(
        "{} notifications to {} users over push, email and sms queues; {WORKERS_PER_CHANNEL} workers per channel; \
         visibility {}s, {MAX_DELIVERIES} deliveries then the dead-letter queue",
        scope.notifications,
        scope.users,
        VISIBILITY.as_secs()
    ));
    let devices = Arc::new(Devices::default());
    let counts = Arc::new(Counts::default());

    // The in-app gateway: one subscriber to every user's in-app channel, passing what it gets to
    // the user's open app.
    let mut inapp = client
        .pubsub()
        .subscribe(Vec::new(), vec![b"inapp.user-*".to_vec()])
        .await
        .doing(|| "subscribing to in-app channels".into())?;
    let inapp_counts = counts.clone();
    let listener = tokio::spawn(async move {
        while let Some(Ok(_)) = inapp.next().await {
            inapp_counts.inapp_received.fetch_add(1, Ordering::SeqCst);
        }
    });

    let started = Instant::now();
    let mut workers = Vec::new();
    for channel in CHANNELS {
        for i in 1..=WORKERS_PER_CHANNEL {
            workers.push(tokio::spawn(work(
                demo.endpoints().to_vec(),
                channel,
                format!("{channel}-worker-{i}"),
                devices.clone(),
                counts.clone(),
            )));
        }
    }
    let fanned = Arc::new(Mutex::new(Vec::new()));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ids: Vec<u64> = (1..=scope.notifications).filter(|id| id % PRODUCERS == p).collect();
            tokio::spawn(produce(
                demo.endpoints().to_vec(),
                scope.users,
                ids,
                counts.clone(),
                fanned.clone(),
            ))
        })
        .collect();
    for producer in producers {
        joined(producer, "a producer").await?;
    }
    let fanned = std::mem::take(&mut *fanned.locked());
    let expected: usize = fanned.iter().map(|n| n.kind.channels().len()).sum();
    demo.say(&format!(
        "fanned out {} notifications ({expected} deliveries) in {:.1}s; {} marketing ones suppressed by the rate limit",
        fanned.len(),
        started.elapsed().as_secs_f64(),
        counts.suppressed.load(Ordering::SeqCst)
    ));

    let mut next_progress = Instant::now();
    let completed = loop {
        let delivered = devices.received().len();
        let (mut dead, mut open) = (0, 0);
        for channel in CHANNELS {
            let stats = |queue: String| {
                let client = client.clone();
                async move {
                    client
                        .queue(queue.clone())
                        .stats(ReadConsistency::Linearizable)
                        .await
                        .doing(|| format!("reading {queue}"))
                }
            };
            dead += stats(dlq_of(channel)).await?.messages as usize;
            let main = stats(queue_of(channel)).await?;
            open += (main.messages + main.in_flight) as usize;
        }
        // Every message of every channel queue acknowledged or dead-lettered.
        if open == 0 {
            break true;
        }
        if started.elapsed() > scope.deadline {
            break false;
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + PROGRESS_EVERY;
            demo.say(&format!("  delivered {delivered}  dead-lettered {dead}  of {expected}"));
        }
        tokio::time::sleep(TICK).await;
    };
    let elapsed = started.elapsed();
    counts.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        joined(worker, "a worker").await?;
    }
    listener.abort();
    let dead = drain_dead_letters(&client).await?;
    let received = devices.received().clone();
    let mut report = Report {
        violations: check(&fanned, &received, &dead),
        ..Report::default()
    };
    if !completed {
        report
            .violations
            .insert(0, format!("not every delivery ended within {:?}", scope.deadline));
    }
    let mut latencies = std::mem::take(&mut *devices.latencies.locked());
    report.figure("notifications", format!("{} ({expected} deliveries)", fanned.len()));
    report.figure(
        "suppressed by the marketing rate limit",
        counts.suppressed.load(Ordering::SeqCst),
    );
    report.figure(
        "retried sends, enqueues refused as duplicates",
        format!(
            "{}, {}",
            counts.retried_sends.load(Ordering::SeqCst),
            counts.duplicates_refused.load(Ordering::SeqCst)
        ),
    );
    report.figure(
        "delivered, dead-lettered",
        format!("{}, {}", received.len(), dead.len()),
    );
    report.figure(
        "provider sends (failed, slower than visibility)",
        format!(
            "{} ({}, {})",
            devices.sends.load(Ordering::SeqCst),
            devices.failed_sends.load(Ordering::SeqCst),
            devices.slow_sends.load(Ordering::SeqCst)
        ),
    );
    report.figure(
        "redeliveries found sent, found claimed",
        format!(
            "{}, {}",
            counts.already_sent.load(Ordering::SeqCst),
            counts.claimed_elsewhere.load(Ordering::SeqCst)
        ),
    );
    for kind in [Kind::Security, Kind::Transactional, Kind::Marketing] {
        let values = latencies.entry(kind.priority()).or_default();
        report.figure(
            format!("enqueue to delivery, {} (priority {})", kind.name(), kind.priority()),
            format!("p50 {} ms, p99 {} ms", quantile(values, 0.5), quantile(values, 0.99)),
        );
    }
    report.figure(
        "in-app: published to a live subscriber, received",
        format!(
            "{}, {}",
            counts.inapp_published.load(Ordering::SeqCst),
            counts.inapp_received.load(Ordering::SeqCst)
        ),
    );
    report.figure("run time", format!("{:.1}s", elapsed.as_secs_f64()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_round_trip() {
        for id in 1..500 {
            let n = Notification::planned(id, 40);
            assert_eq!(Notification::decode(n.encode().as_bytes()), Some(n));
        }
        assert_eq!(Notification::decode(b"1 2 spam"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(6), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn the_check_finds_double_deliveries_losses_and_strays() {
        let fanned = [
            Notification {
                id: 1,
                user: 0,
                kind: Kind::Transactional,
            },
            Notification {
                id: 2,
                user: 0,
                kind: Kind::Security,
            },
        ];
        let received = BTreeMap::from([((1, "push"), 1), ((1, "email"), 1), ((2, "push"), 1), ((2, "email"), 1)]);
        assert_eq!(check(&fanned, &received, &[(2, "sms")]), Vec::<String>::new());
        assert_eq!(
            check(&fanned, &received, &[]),
            vec!["notification 2 was neither delivered by sms nor dead-lettered".to_string()]
        );
        let twice = BTreeMap::from([((1, "push"), 2), ((1, "email"), 1), ((2, "push"), 1), ((2, "email"), 1)]);
        assert_eq!(
            check(&fanned, &twice, &[(2, "sms")]),
            vec!["notification 1 reached its push device 2 times".to_string()]
        );
        assert_eq!(
            check(&fanned, &received, &[(2, "sms"), (1, "sms")]),
            vec!["notification 1 went by sms, which it was never sent to".to_string()]
        );
    }
}
