//! The managed consumer: a member of a consumer group that joins, heartbeats, follows
//! rebalances, fetches from its partitions starting at the group's committed offsets, and commits
//! what the application is done with; read as a `futures::Stream` of records, as rdkafka's
//! `StreamConsumer`. And the dead-letter convention: a record that cannot be processed goes to
//! `topic.dlq` with where it came from, and [`Streams::replay_dead_letters`] re-drives it.
//!
//! Delivery is at least once: a record is committed only after the application asked for the
//! next one (or committed it), so a member that dies, or loses a partition to a rebalance, hands
//! the records after its last commit to the partition's next owner, which reads them again.
//! Within a partition records arrive in offset order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;

use crate::client::ReadConsistency;
use crate::error::{ClientError, ErrorCode};
use crate::stream::{Assignor, FetchOptions, JoinOptions, Membership, Produced, Record, Streams, TopicOptions};

/// Where a consumer starts on a partition its group has never committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest record still kept.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// The first record stamped at or after this time.
    Time(SystemTime),
}

/// How a managed consumer behaves. Zeros mean the defaults named on each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// This member's id; `None`: a random one. A member that comes back under the same id within
    /// its session timeout finds its partitions still its own.
    pub member_id: Option<String>,
    /// Zero: 10 s. A member silent for longer loses its partitions to the others.
    pub session_timeout: Duration,
    /// Zero: a third of the session timeout.
    pub heartbeat_interval: Duration,
    pub assignor: Assignor,
    /// For partitions the group never committed.
    pub start: StartFrom,
    /// `Some(interval)`: what the application is done with (every record before the one it is
    /// now asking for) is committed this often, and when the consumer closes. `None`: only
    /// [`Consumer::commit`] commits. Default: every second.
    pub auto_commit: Option<Duration>,
    /// Records per fetch. Zero: 500.
    pub max_records: u32,
    /// How long a fetch waits for new records when a whole round over the member's partitions
    /// found none. Zero: 200 ms.
    pub poll_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> ConsumerOptions {
        ConsumerOptions {
            member_id: None,
            session_timeout: Duration::ZERO,
            heartbeat_interval: Duration::ZERO,
            assignor: Assignor::Sticky,
            start: StartFrom::Earliest,
            auto_commit: Some(Duration::from_secs(1)),
            max_records: 0,
            poll_wait: Duration::ZERO,
        }
    }
}

/// The session timeout when none is given.
const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Records per fetch when none is given.
const FETCH_RECORDS_DEFAULT: u32 = 500;
/// The long-poll wait when none is given.
const POLL_WAIT_DEFAULT: Duration = Duration::from_millis(200);
/// The pause after a failed heartbeat, join or fetch before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// "Not in this process's lifetime": the next auto-commit without auto-commit.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest session timeout the cluster takes (`SESSION_TIMEOUT_MS_MAX`).
const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// The shortest session timeout a managed consumer uses (a shorter one is raised to it): below
/// it a member expires between its own heartbeats and rejoins without end.
const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// The shortest heartbeat interval (a shorter one is raised to it; the longest is half the
/// session timeout).
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// The shortest auto-commit interval (each commit is a Raft entry); a shorter one is raised to it.
const AUTO_COMMIT_MIN: Duration = Duration::from_millis(50);
/// The longest auto-commit interval; a longer one is lowered to it.
const AUTO_COMMIT_MAX: Duration = Duration::from_secs(3600);

/// A record as the managed consumer delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: Vec<u8>,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The group generation it was fetched in.
    pub generation: u64,
}

impl ConsumedRecord {
    /// The value of header `name`, the first if repeated.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

type TopicPartition = (Vec<u8>, u32);

/// What the application, the stream and the driver task share.
#[derive(Default)]
struct Shared {
    member: String,
    generation: u64,
    assigned: BTreeSet<TopicPartition>,
    /// Per partition, the offset after the last record the application is done with.
    done: BTreeMap<TopicPartition, u64>,
    /// Per partition, the offset last committed by this member.
    committed: BTreeMap<TopicPartition, u64>,
    /// Seeks asked for by the application, applied by the driver before its next fetch.
    seeks: Vec<(TopicPartition, u64)>,
    /// Per partition, the read epoch its fetched batches carry. It changes whenever the
    /// partition's position is set anew (a seek, a restart from the committed offset), and a
    /// batch of another epoch is dropped instead of handed out: after a seek or a rebalance the
    /// application never sees records fetched from the old position.
    epochs: BTreeMap<TopicPartition, u64>,
    /// The last epoch given out, so every new one is unique.
    last_epoch: u64,
}

impl Shared {
    /// A new read epoch for `tp`: batches fetched before it are dropped.
    fn bump_epoch(&mut self, tp: &TopicPartition) -> u64 {
        self.last_epoch += 1;
        self.epochs.insert(tp.clone(), self.last_epoch);
        self.last_epoch
    }

    /// Forgets the membership (expired, or left): no partition is this member's any more.
    fn forget_membership(&mut self) {
        self.assigned.clear();
        self.done.clear();
        self.committed.clear();
        self.epochs.clear();
    }
}

/// Records of one partition fetched in one read epoch.
struct Batch {
    epoch: u64,
    records: Vec<ConsumedRecord>,
}

struct Inner {
    streams: Streams,
    group: Vec<u8>,
    shared: Mutex<Shared>,
    /// Held across a commit, so two commits never apply out of order (an older offset after a
    /// newer one would move the group back).
    commit_lock: tokio::sync::Mutex<()>,
}

impl Inner {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves plain maps behind: still usable.
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits every partition whose done offset is past its committed one. A refusal because
    /// the partition moved to another member (a new generation) forgets those offsets: the next
    /// owner reads those records again.
    async fn commit_done(&self) -> Result<(), ClientError> {
        let _order = self.commit_lock.lock().await;
        let (member, generation, offsets) = {
            let shared = self.shared();
            let offsets: Vec<(Vec<u8>, u32, u64)> = shared
                .done
                .iter()
                .filter(|(tp, &offset)| shared.assigned.contains(*tp) && shared.committed.get(*tp) < Some(&offset))
                .map(|((topic, partition), &offset)| (topic.clone(), *partition, offset))
                .collect();
            (shared.member.clone(), shared.generation, offsets)
        };
        if offsets.is_empty() {
            return Ok(());
        }
        match self
            .streams
            .commit(self.group.clone(), member, generation, offsets.clone())
            .await
        {
            Ok(()) => {
                let mut shared = self.shared();
                for (topic, partition, offset) in offsets {
                    let entry = shared.committed.entry((topic, partition)).or_insert(offset);
                    *entry = (*entry).max(offset);
                }
                Ok(())
            }
            // A rebalance or an expiry: the next heartbeat adopts the change, which drops the
            // partitions lost (their next owner reads their records again).
            Err(e) => Err(e),
        }
    }
}

/// A commit refused because the member's partitions or membership changed.
fn moved_away(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::IllegalGeneration | ErrorCode::NotAssigned | ErrorCode::NotFound)
    )
}

/// An error worth retrying after a pause rather than reporting.
fn transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable { .. } | ClientError::OutcomeUnknown { .. })
        || e.code() == Some(ErrorCode::Unavailable)
}

/// A member of a consumer group, read as a [`Stream`] of records (`while let Some(record) =
/// consumer.next().await`). Get one with [`Streams::consumer`]. A background task joins,
/// heartbeats, follows rebalances and fetches. [`Consumer::close`] commits what the application
/// is done with and leaves the group; dropping the consumer does too, in the background, except
/// that the record returned last is not counted as done (the application may have dropped the
/// consumer while processing it, in a panic say), so the partition's next reader gets it again.
///
/// Cancel safe: a record is taken from the consumer only when `poll_next` returns it.
pub struct Consumer {
    inner: Arc<Inner>,
    records: mpsc::Receiver<Result<Batch, ClientError>>,
    /// Fetched records with their read epoch, not handed out yet.
    buffered: VecDeque<(u64, ConsumedRecord)>,
    /// The record returned last: done with once the application asks for the next.
    returned: Option<(TopicPartition, u64)>,
    auto_commit: bool,
    driver: tokio::task::JoinHandle<()>,
}

impl Streams {
    /// Joins `group` as a managed consumer of `topics` (see [`Consumer`]). Answers once the
    /// member has joined.
    ///
    /// # Errors
    /// `NOT_FOUND` (a topic), `INVALID_ARGUMENT` (names), as [`Streams::join_group`].
    pub async fn consumer(
        &self,
        group: impl Into<Vec<u8>>,
        topics: Vec<Vec<u8>>,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        let group = group.into();
        let member = options
            .member_id
            .clone()
            .unwrap_or_else(|| format!("consumer-{:016x}", rand::random::<u64>()));
        let session_timeout = match options.session_timeout {
            Duration::ZERO => SESSION_TIMEOUT_DEFAULT,
            t => t.clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX),
        };
        let auto_commit = options.auto_commit.map(|d| d.clamp(AUTO_COMMIT_MIN, AUTO_COMMIT_MAX));
        let join = JoinOptions {
            session_timeout,
            assignor: options.assignor,
        };
        let membership = self
            .join_group(group.clone(), member.clone(), topics.clone(), join.clone())
            .await?;
        let inner = Arc::new(Inner {
            streams: self.clone(),
            group,
            shared: Mutex::new(Shared {
                member,
                ..Shared::default()
            }),
            commit_lock: tokio::sync::Mutex::new(()),
        });
        // One batch in flight: a rebalance drops little that was fetched for a lost partition.
        let (sender, records) = mpsc::channel(1);
        let driver = Driver {
            inner: inner.clone(),
            topics,
            join,
            heartbeat_interval: match options.heartbeat_interval {
                Duration::ZERO => session_timeout / 3,
                // At least two beats per session, or the member expires between them.
                t => t.clamp(HEARTBEAT_INTERVAL_MIN, session_timeout / 2),
            },
            start: options.start,
            auto_commit,
            max_records: match options.max_records {
                0 => FETCH_RECORDS_DEFAULT,
                n => n,
            },
            poll_wait: match options.poll_wait {
                Duration::ZERO => POLL_WAIT_DEFAULT,
                t => t,
            },
            positions: BTreeMap::new(),
            sender,
            next_heartbeat: Instant::now(),
            next_commit: Instant::now(),
            pending_error: None,
        };
        let driver = tokio::spawn(driver.run(membership));
        Ok(Consumer {
            inner,
            records,
            buffered: VecDeque::new(),
            returned: None,
            auto_commit: auto_commit.is_some(),
            driver,
        })
    }
}

impl Consumer {
    pub fn member_id(&self) -> String {
        self.inner.shared().member.clone()
    }

    /// The generation and partitions this member owns now.
    pub fn assignment(&self) -> (u64, Vec<(Vec<u8>, u32)>) {
        let shared = self.inner.shared();
        (shared.generation, shared.assigned.iter().cloned().collect())
    }

    /// Marks `record` and everything before it in its partition as done, and commits every
    /// partition's done offset now.
    ///
    /// # Errors
    /// `ILLEGAL_GENERATION` or `NOT_ASSIGNED` when the partition moved to another member (which
    /// will read the record again), or the cluster's errors.
    pub async fn commit(&self, record: &ConsumedRecord) -> Result<(), ClientError> {
        let tp = (record.topic.clone(), record.partition);
        if !self.inner.shared().assigned.contains(&tp) {
            return Err(ClientError::Rejected {
                code: ErrorCode::NotAssigned,
                message: format!(
                    "partition {}/{} is no longer this member's: its next owner reads it from the group's committed offset",
                    String::from_utf8_lossy(&record.topic),
                    record.partition
                ),
            });
        }
        self.mark_done(tp, record.offset + 1);
        self.inner.commit_done().await
    }

    /// Reads `partition` of `topic` from `offset` on (it must be assigned to this member): the
    /// next fetch starts there, and records already fetched past it are dropped.
    pub fn seek(&mut self, topic: impl Into<Vec<u8>>, partition: u32, offset: u64) {
        let tp = (topic.into(), partition);
        let mut shared = self.inner.shared();
        if shared.assigned.contains(&tp) {
            // Batches already fetched, queued or in flight carry the old epoch: dropped.
            shared.bump_epoch(&tp);
            shared.seeks.push((tp, offset));
        }
    }

    /// Sends `record` to its topic's dead-letter topic (`topic.dlq`, created on first use with the
    /// source's partition count), with the original key, value and headers, plus headers saying
    /// where it came from and why ([`dead_letter`]). The record then counts as processed like
    /// any other; a replay ([`Streams::replay_dead_letters`]) re-drives it.
    pub async fn dead_letter(&self, record: &ConsumedRecord, reason: &str) -> Result<Produced, ClientError> {
        let streams = &self.inner.streams;
        let dlq = dead_letter::topic_of(&record.topic);
        let letter = dead_letter::letter(record, reason);
        match streams.produce(dlq.clone(), vec![letter.clone()]).await {
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                let partitions = streams
                    .describe(record.topic.clone(), ReadConsistency::Linearizable)
                    .await?
                    .options
                    .partitions;
                let options = TopicOptions {
                    partitions,
                    ..TopicOptions::default()
                };
                match streams.create_topic(dlq.clone(), options).await {
                    // Another member created it first, perhaps with more partitions: fine.
                    Ok(_) => {}
                    Err(e) if e.code() == Some(ErrorCode::OutOfRange) => {}
                    Err(e) => return Err(e),
                }
                let produced = streams.produce(dlq, vec![letter]).await?;
                first(produced)
            }
            other => first(other?),
        }
    }

    /// Commits what the application is done with (with auto-commit: every record returned
    /// before the last one, and the last one too), leaves the group and stops the background
    /// task.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.auto_commit {
            if let Some((tp, next)) = self.returned.take() {
                self.mark_done(tp, next);
            }
        }
        self.driver.abort();
        let committed = self.inner.commit_done().await;
        let member = self.member_id();
        self.inner.streams.leave_group(self.inner.group.clone(), member).await?;
        committed
    }

    fn mark_done(&self, tp: TopicPartition, next: u64) {
        let mut shared = self.inner.shared();
        let entry = shared.done.entry(tp).or_insert(next);
        *entry = (*entry).max(next);
    }
}

fn first(produced: Vec<Produced>) -> Result<Produced, ClientError> {
    produced
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("a produce of one record answered no outcome".into()))
}

impl Stream for Consumer {
    type Item = Result<ConsumedRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Asking for the next record means being done with the last one.
        if let Some((tp, next)) = this.returned.take() {
            if this.auto_commit {
                this.mark_done(tp, next);
            }
        }
        loop {
            if let Some((epoch, record)) = this.buffered.pop_front() {
                let tp = (record.topic.clone(), record.partition);
                // Fetched before a seek, or for a partition a rebalance gave to another member
                // (which reads it from the group's committed offset), or lost and regained since:
                // dropped.
                let current = {
                    let shared = this.inner.shared();
                    shared.assigned.contains(&tp) && shared.epochs.get(&tp) == Some(&epoch)
                };
                if !current {
                    continue;
                }
                this.returned = Some((tp, record.offset + 1));
                return Poll::Ready(Some(Ok(record)));
            }
            match ready!(this.records.poll_recv(cx)) {
                Some(Ok(batch)) => {
                    let epoch = batch.epoch;
                    this.buffered.extend(batch.records.into_iter().map(|r| (epoch, r)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// The background task of a [`Consumer`].
struct Driver {
    inner: Arc<Inner>,
    topics: Vec<Vec<u8>>,
    join: JoinOptions,
    heartbeat_interval: Duration,
    start: StartFrom,
    auto_commit: Option<Duration>,
    max_records: u32,
    poll_wait: Duration,
    /// The next offset to fetch, per assigned partition.
    positions: BTreeMap<TopicPartition, u64>,
    sender: mpsc::Sender<Result<Batch, ClientError>>,
    next_heartbeat: Instant,
    next_commit: Instant,
    /// An error for the application, raised while heartbeating.
    pending_error: Option<ClientError>,
}

impl Driver {
    async fn run(mut self, membership: Membership) {
        self.adopt(membership).await;
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
        self.next_commit = Instant::now() + self.auto_commit.unwrap_or(NEVER);
        // Whether the current round over the partitions found records; true at the start so the
        // first round does not wait.
        let mut round_had_records = true;
        let mut cursor: Option<TopicPartition> = None;
        while !self.sender.is_closed() {
            self.keep_alive().await;
            if let Some(e) = self.pending_error.take() {
                if !self.deliver(Err(e)).await {
                    break;
                }
            }
            if self.topics.is_empty() {
                // Every subscribed topic was deleted: nothing is left to consume.
                break;
            }
            let Some((tp, offset, epoch)) = self.next_fetch(cursor.as_ref()) else {
                // Nothing assigned (more members than partitions): wait for a rebalance.
                self.pause(self.next_heartbeat).await;
                continue;
            };
            let new_round = cursor.as_ref().is_none_or(|c| tp <= *c);
            cursor = Some(tp.clone());
            // Only the first fetch of a round after a round that found nothing waits (bounded by
            // the next heartbeat), so quiet partitions cost one long-poll per round.
            let mut wait = Duration::ZERO;
            if new_round {
                if !round_had_records {
                    wait = self
                        .poll_wait
                        .min(self.next_heartbeat.saturating_duration_since(Instant::now()));
                }
                round_had_records = false;
            }
            let options = FetchOptions {
                max_records: self.max_records,
                wait,
                ..FetchOptions::default()
            };
            let fetched = self.inner.streams.fetch(tp.0.clone(), tp.1, offset, options).await;
            match fetched {
                Ok(fetched) if fetched.records.is_empty() => {}
                Ok(fetched) => {
                    round_had_records = true;
                    let generation = self.inner.shared().generation;
                    let last = fetched.records.last().map_or(offset, |r| r.offset + 1);
                    let batch = fetched
                        .records
                        .into_iter()
                        .map(|r| ConsumedRecord {
                            topic: tp.0.clone(),
                            partition: tp.1,
                            offset: r.offset,
                            timestamp_ms: r.timestamp_ms,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                            generation,
                        })
                        .collect();
                    // Only a position still ours moves (a rebalance may have come meanwhile).
                    if self.positions.get(&tp) == Some(&offset) {
                        self.positions.insert(tp.clone(), last);
                        let batch = Batch { epoch, records: batch };
                        if !self.deliver(Ok(batch)).await {
                            break;
                        }
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => self.reset(&tp, offset).await,
                Err(e) if transient(&e) => tokio::time::sleep(RETRY_PAUSE).await,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    self.positions.remove(&tp);
                    self.topic_gone(&tp.0).await;
                    if !self.deliver(Err(e)).await {
                        break;
                    }
                }
                Err(e) => {
                    // Refused for good: stop fetching the partition (the next heartbeat starts it
                    // again from the committed offset if it is still assigned), and tell the
                    // application.
                    self.positions.remove(&tp);
                    if !self.deliver(Err(e)).await {
                        break;
                    }
                }
            }
        }
        // The application dropped the consumer: commit what it is done with, then leave.
        if self.auto_commit.is_some() {
            let _ = self.inner.commit_done().await;
        }
        let member = self.inner.shared().member.clone();
        let _ = self.inner.streams.leave_group(self.inner.group.clone(), member).await;
    }

    /// Hands a batch (or an error) to the application, heartbeating while it is busy. Answers
    /// false when the application dropped the consumer.
    async fn deliver(&mut self, item: Result<Batch, ClientError>) -> bool {
        // A second handle, so the heartbeat below may borrow the driver while waiting for room.
        let sender = self.sender.clone();
        loop {
            tokio::select! {
                permit = sender.reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(item);
                            true
                        }
                        Err(_) => false,
                    };
                }
                () = tokio::time::sleep_until(self.next_heartbeat.min(self.next_commit)) => self.keep_alive().await,
            }
        }
    }

    /// Sleeps until `until`, or until the application drops the consumer.
    async fn pause(&self, until: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = self.sender.closed() => {}
        }
    }

    /// Heartbeats and commits when due.
    async fn keep_alive(&mut self) {
        let now = Instant::now();
        if now >= self.next_commit {
            self.next_commit = now + self.auto_commit.unwrap_or(NEVER);
            if let Err(e) = self.inner.commit_done().await {
                tracing::debug!(error = %e, "consumer auto-commit failed; retried at the next interval");
                if moved_away(&e) {
                    // A rebalance: learn the new assignment now rather than at the next beat.
                    self.next_heartbeat = now;
                }
            }
        }
        if now < self.next_heartbeat {
            return;
        }
        let member = self.inner.shared().member.clone();
        let beat = self
            .inner
            .streams
            .heartbeat(self.inner.group.clone(), member.clone())
            .await;
        let membership = match beat {
            Ok(m) => Some(m),
            // Expired (a long pause, a partition from the cluster): nothing is this member's any
            // more (its partitions' next owners read them from the committed offsets); join again.
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                self.inner.shared().forget_membership();
                self.positions.clear();
                self.rejoin(member).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "consumer heartbeat failed; retried");
                None
            }
        };
        match membership {
            Some(m) => {
                let before = self.inner.shared().generation;
                self.adopt(m).await;
                if self.inner.shared().generation != before {
                    self.forget_deleted_topics().await;
                }
                self.next_heartbeat = Instant::now() + self.heartbeat_interval;
            }
            None => self.next_heartbeat = Instant::now() + RETRY_PAUSE,
        }
    }

    /// After a rebalance: a subscribed topic of which this member got no partition may have been
    /// deleted (the cluster drops a deleted topic's partitions from the assignment). Each such
    /// topic that is gone is dropped from the subscription and the application is told; with
    /// none left the stream ends.
    async fn forget_deleted_topics(&mut self) {
        let assigned: BTreeSet<Vec<u8>> = self.positions.keys().map(|(t, _)| t.clone()).collect();
        let unassigned: Vec<Vec<u8>> = self.topics.iter().filter(|t| !assigned.contains(*t)).cloned().collect();
        for topic in unassigned {
            let described = self
                .inner
                .streams
                .describe(topic.clone(), ReadConsistency::Linearizable)
                .await;
            if let Err(e) = described {
                if e.code() == Some(ErrorCode::NotFound) {
                    self.topics.retain(|t| *t != topic);
                    self.pending_error = Some(e);
                }
            }
        }
    }

    /// After a fetch answered `NOT_FOUND`: if `topic` is gone, the member stops subscribing to
    /// it (joining again with the topics left, so the group reassigns at once); with none left
    /// the stream ends.
    async fn topic_gone(&mut self, topic: &[u8]) {
        let streams = self.inner.streams.clone();
        let described = streams.describe(topic.to_vec(), ReadConsistency::Linearizable).await;
        if described.err().and_then(|e| e.code()) != Some(ErrorCode::NotFound) {
            return;
        }
        self.topics.retain(|t| t != topic);
        if self.topics.is_empty() {
            return;
        }
        let member = self.inner.shared().member.clone();
        let joined = streams
            .join_group(self.inner.group.clone(), member, self.topics.clone(), self.join.clone())
            .await;
        match joined {
            Ok(m) => self.adopt(m).await,
            // The next heartbeat learns the assignment instead.
            Err(e) => tracing::debug!(error = %e, "consumer could not rejoin without a deleted topic"),
        }
    }

    /// Joins again after the member expired. When a subscribed topic is gone (the join is
    /// refused with `NOT_FOUND`), the application is told and the member goes on with the
    /// topics left.
    async fn rejoin(&mut self, member: String) -> Option<Membership> {
        let group = self.inner.group.clone();
        let streams = self.inner.streams.clone();
        let joined = streams
            .join_group(group, member, self.topics.clone(), self.join.clone())
            .await;
        match joined {
            Ok(m) => Some(m),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                let mut left = Vec::new();
                for topic in &self.topics {
                    match streams.describe(topic.clone(), ReadConsistency::Linearizable).await {
                        Err(gone) if gone.code() == Some(ErrorCode::NotFound) => {}
                        // Exists, or cannot tell now: kept.
                        _ => left.push(topic.clone()),
                    }
                }
                if left.len() < self.topics.len() {
                    self.topics = left;
                    self.pending_error = Some(e);
                }
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "consumer rejoin failed; retried");
                None
            }
        }
    }

    /// Takes a membership answer. Partitions lost are dropped; partitions gained start at the
    /// group's committed offset (or [`ConsumerOptions::start`]); on a new generation a kept
    /// partition whose committed offset is not the one this member last saw (it was lost and
    /// regained between two heartbeats, and another member committed meanwhile) starts again
    /// from the committed offset too, so this member never commits an older offset over it. The
    /// new generation is published only once every partition is settled, so no commit goes out
    /// under it with offsets from before (commits under the old one are refused by the cluster).
    async fn adopt(&mut self, membership: Membership) {
        let assigned: BTreeSet<TopicPartition> = membership.assigned.into_iter().collect();
        let (new_generation, seen) = {
            let shared = self.inner.shared();
            let new_generation = shared.generation != membership.generation;
            let unchanged = !new_generation && shared.assigned == assigned;
            if unchanged && assigned.iter().all(|tp| self.positions.contains_key(tp)) {
                return;
            }
            (new_generation, shared.committed.clone())
        };
        self.positions.retain(|tp, _| assigned.contains(tp));
        // Per topic, the group's committed offsets (`None`: could not be read now).
        let mut committed_by_topic: BTreeMap<Vec<u8>, Option<BTreeMap<u32, u64>>> = BTreeMap::new();
        // Partitions (re)started here: where, and the committed offset they start from.
        let mut restarts: Vec<(TopicPartition, u64, Option<u64>)> = Vec::new();
        // Partitions not settled now: nothing of them is committed until they are.
        let mut unsettled: Vec<TopicPartition> = Vec::new();
        for tp in &assigned {
            let (topic, partition) = (tp.0.clone(), tp.1);
            if self.positions.contains_key(tp) && !new_generation {
                continue;
            }
            if !committed_by_topic.contains_key(&topic) {
                let read = self
                    .inner
                    .streams
                    .committed(self.inner.group.clone(), topic.clone())
                    .await;
                let read = read
                    .inspect_err(|e| tracing::debug!(error = %e, "consumer could not read committed offsets; retried"))
                    .ok();
                committed_by_topic.insert(topic.clone(), read);
            }
            let Some(Some(group_offsets)) = committed_by_topic.get(&topic) else {
                // Unknown now: the partition is not fetched until the next heartbeat checks it.
                self.positions.remove(tp);
                unsettled.push(tp.clone());
                continue;
            };
            let group_committed = group_offsets.get(&partition).copied();
            if self.positions.contains_key(tp) && group_committed == seen.get(tp).copied() {
                continue;
            }
            let start = match group_committed {
                Some(offset) => Some(offset),
                None => self.start_offset(&topic, partition).await,
            };
            self.positions.remove(tp);
            match start {
                Some(offset) => restarts.push((tp.clone(), offset, group_committed)),
                None => unsettled.push(tp.clone()),
            }
        }
        let mut shared = self.inner.shared();
        shared.generation = membership.generation;
        shared.assigned.clone_from(&assigned);
        shared.done.retain(|tp, _| assigned.contains(tp));
        shared.committed.retain(|tp, _| assigned.contains(tp));
        shared.epochs.retain(|tp, _| assigned.contains(tp));
        for tp in unsettled {
            shared.done.remove(&tp);
            shared.bump_epoch(&tp);
        }
        for (tp, offset, group_committed) in restarts {
            shared.done.remove(&tp);
            match group_committed {
                Some(c) => shared.committed.insert(tp.clone(), c),
                None => shared.committed.remove(&tp),
            };
            shared.bump_epoch(&tp);
            self.positions.insert(tp, offset);
        }
    }

    /// Where a partition the group never committed starts, by [`ConsumerOptions::start`].
    async fn start_offset(&self, topic: &[u8], partition: u32) -> Option<u64> {
        let streams = &self.inner.streams;
        let answer = match self.start {
            StartFrom::Time(at) => streams
                .offset_for_time(topic.to_vec(), partition, at)
                .await
                .map(|t| t.offset),
            StartFrom::Earliest | StartFrom::Latest => streams
                .describe(topic.to_vec(), ReadConsistency::Linearizable)
                .await
                .and_then(|info| {
                    let p = info.partitions.into_iter().find(|p| p.partition == partition);
                    let p = p.ok_or_else(|| ClientError::Protocol(format!("partition {partition} not described")))?;
                    Ok(match self.start {
                        StartFrom::Latest => p.high_watermark,
                        _ => p.log_start,
                    })
                }),
        };
        answer
            .inspect_err(|e| tracing::debug!(error = %e, "consumer could not find a start offset; retried"))
            .ok()
    }

    /// After `OFFSET_OUT_OF_RANGE`: retention removed the position's records (start from the
    /// oldest kept), or the position is past the end (the topic was re-created: start over).
    async fn reset(&mut self, tp: &TopicPartition, offset: u64) {
        let described = self
            .inner
            .streams
            .describe(tp.0.clone(), ReadConsistency::Linearizable)
            .await;
        let bounds = described
            .ok()
            .and_then(|info| info.partitions.into_iter().find(|p| p.partition == tp.1));
        match bounds {
            // Before the log start, retention removed the records; past the end, the topic was
            // deleted and created again: either way, read from the oldest record kept.
            Some(p) if self.positions.get(tp) == Some(&offset) => {
                if offset > p.high_watermark {
                    // Another incarnation of the topic: what was done or committed of the old one
                    // means nothing here, and must not be committed over the new one.
                    let mut shared = self.inner.shared();
                    shared.done.remove(tp);
                    shared.committed.remove(tp);
                    shared.bump_epoch(tp);
                }
                self.positions.insert(tp.clone(), p.log_start);
            }
            _ => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }

    /// Applies the application's seeks, then picks the next partition to fetch (the one after
    /// `cursor`, round robin) with its position and read epoch, all under one lock: a seek asked
    /// for later bumps the epoch again, so the batch this fetch brings is dropped.
    fn next_fetch(&mut self, cursor: Option<&TopicPartition>) -> Option<(TopicPartition, u64, u64)> {
        let inner = self.inner.clone();
        let mut shared = inner.shared();
        for (tp, offset) in std::mem::take(&mut shared.seeks) {
            if self.positions.contains_key(&tp) {
                self.positions.insert(tp, offset);
            }
        }
        let next = cursor
            .and_then(|c| {
                self.positions
                    .range::<TopicPartition, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next()
            })
            .or_else(|| self.positions.iter().next())
            .map(|(tp, &offset)| (tp.clone(), offset))?;
        let epoch = shared.epochs.get(&next.0).copied().unwrap_or(0);
        Some((next.0, next.1, epoch))
    }
}

/// The dead-letter convention: the records a consumer cannot process go to `topic.dlq` with
/// headers saying where they came from; [`Streams::replay_dead_letters`] re-drives them.
pub mod dead_letter {
    use super::ConsumedRecord;
    use crate::stream::Record;

    /// What a topic's dead-letter topic is named after it.
    pub const SUFFIX: &str = ".dlq";
    /// Header: the topic the record was consumed from.
    pub const TOPIC_HEADER: &str = "basalt-dlq-topic";
    /// Header: its partition there (decimal).
    pub const PARTITION_HEADER: &str = "basalt-dlq-partition";
    /// Header: its offset there (decimal).
    pub const OFFSET_HEADER: &str = "basalt-dlq-offset";
    /// Header: why it was dead-lettered.
    pub const REASON_HEADER: &str = "basalt-dlq-reason";
    /// Header on a replayed record: how many times it was replayed (decimal).
    pub const REPLAYS_HEADER: &str = "basalt-dlq-replays";

    /// The dead-letter topic of `topic`.
    pub fn topic_of(topic: &[u8]) -> Vec<u8> {
        let mut dlq = topic.to_vec();
        dlq.extend_from_slice(SUFFIX.as_bytes());
        dlq
    }

    /// The dead-letter record of `record`: its key (so per-key order holds in the dead-letter
    /// topic), value and headers, and where it came from and why.
    pub fn letter(record: &ConsumedRecord, reason: &str) -> Record {
        let mut letter = Record::new(record.key.clone(), record.value.clone());
        letter.headers = record
            .headers
            .iter()
            .filter(|(name, _)| !is_dead_letter_header(name) || name == REPLAYS_HEADER)
            .cloned()
            .collect();
        letter
            .header(TOPIC_HEADER, record.topic.clone())
            .header(PARTITION_HEADER, record.partition.to_string())
            .header(OFFSET_HEADER, record.offset.to_string())
            .header(REASON_HEADER, reason)
    }

    pub(crate) fn is_dead_letter_header(name: &str) -> bool {
        [
            TOPIC_HEADER,
            PARTITION_HEADER,
            OFFSET_HEADER,
            REASON_HEADER,
            REPLAYS_HEADER,
        ]
        .contains(&name)
    }
}

/// How [`Streams::replay_dead_letters`] works through a dead-letter topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// The consumer group whose committed offsets say what was replayed already, so a replay
    /// stopped midway goes on where it stopped. `None`: the dead-letter topic's name followed by
    /// `.replay`, a group of its own per dead-letter topic.
    pub group: Option<Vec<u8>>,
    /// Stop after this many records (`None`: everything there when the replay started).
    pub max: Option<u64>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Records re-produced, by the topic they went back to.
    pub replayed: BTreeMap<Vec<u8>, u64>,
    /// Records passed without a replay: no source topic header (not written by
    /// [`Consumer::dead_letter`]), or their source topic no longer exists. They stay in the
    /// dead-letter topic.
    pub skipped: u64,
    /// Partitions of the dead-letter topic this replay did not finish: another replay running
    /// in the same group holds them (one that crashed holds them until its 30 s session ends).
    /// Run the replay again to finish them.
    pub partitions_left: Vec<u32>,
}

impl ReplaySummary {
    pub fn total(&self) -> u64 {
        self.replayed.values().sum()
    }
}

/// The session timeout of a replay's member.
const REPLAY_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes one replay fetch reads: half of what one produce takes (8 MiB), so the records
/// fetched, with their replay header, always fit one produce.
const REPLAY_FETCH_BYTES_MAX: u64 = 4 * 1024 * 1024;

impl Streams {
    /// Re-drives the records of the dead-letter topic `dlq` to the topics they came from, in
    /// order per partition, with their key, value and original headers (and a replay count),
    /// up to the end the topic had when the replay started. Progress is committed in the group
    /// of [`ReplayOptions::group`] after each batch, so a replay stopped midway (or run again)
    /// goes on after what was replayed: each record is replayed at least once, and twice only
    /// if a replay stops between a batch's produce and its commit. Replays running at once in
    /// one group share the partitions; what one could not finish is in
    /// [`ReplaySummary::partitions_left`].
    ///
    /// # Errors
    /// `NOT_FOUND` (the dead-letter topic), the cluster's errors; what was replayed before the
    /// error stays committed.
    pub async fn replay_dead_letters(
        &self,
        dlq: impl Into<Vec<u8>>,
        options: ReplayOptions,
    ) -> Result<ReplaySummary, ClientError> {
        let dlq = dlq.into();
        let group = options.group.clone().unwrap_or_else(|| {
            let mut group = dlq.clone();
            group.extend_from_slice(b".replay");
            group
        });
        let member = format!("replay-{:016x}", rand::random::<u64>());
        let join = JoinOptions {
            session_timeout: REPLAY_SESSION_TIMEOUT,
            assignor: Assignor::Range,
        };
        self.join_group(group.clone(), member.clone(), vec![dlq.clone()], join)
            .await?;
        let replayed = self.replay_partitions(&dlq, &group, &member, options.max).await;
        let left = self.leave_group(group, member).await;
        let summary = replayed?;
        left?;
        Ok(summary)
    }

    async fn replay_partitions(
        &self,
        dlq: &[u8],
        group: &[u8],
        member: &str,
        max: Option<u64>,
    ) -> Result<ReplaySummary, ClientError> {
        let mut summary = ReplaySummary::default();
        let info = self.describe(dlq.to_vec(), ReadConsistency::Linearizable).await?;
        let mut budget = max.unwrap_or(u64::MAX);
        for bounds in &info.partitions {
            let partition = bounds.partition;
            let tp = (dlq.to_vec(), partition);
            // The group as it is now: another replay may have joined and taken this partition.
            let mut membership = self.heartbeat(group.to_vec(), member.to_string()).await?;
            if !membership.assigned.contains(&tp) {
                summary.partitions_left.push(partition);
                continue;
            }
            let committed = self.committed(group.to_vec(), dlq.to_vec()).await?;
            let mut position = committed
                .get(&partition)
                .copied()
                .unwrap_or(bounds.log_start)
                .max(bounds.log_start);
            while position < bounds.high_watermark && budget > 0 {
                let fetch = FetchOptions {
                    max_records: u32::try_from(budget.min(500)).unwrap_or(500),
                    // Half a produce's bytes: the replayed run (with its replay header) fits one.
                    max_bytes: REPLAY_FETCH_BYTES_MAX,
                    ..FetchOptions::default()
                };
                let fetched = self.fetch(dlq.to_vec(), partition, position, fetch).await?;
                let records: Vec<_> = fetched
                    .records
                    .into_iter()
                    .take_while(|r| r.offset < bounds.high_watermark)
                    .collect();
                let Some(last) = records.last().map(|r| r.offset) else {
                    break;
                };
                // Consecutive records bound for one topic go in one produce, in order.
                let mut run: Vec<Record> = Vec::new();
                let mut run_topic: Option<Vec<u8>> = None;
                for r in &records {
                    let source = r
                        .headers
                        .iter()
                        .find(|(n, _)| n == dead_letter::TOPIC_HEADER)
                        .map(|(_, v)| v.clone());
                    let Some(source) = source else {
                        summary.skipped += 1;
                        continue;
                    };
                    if run_topic.as_ref().is_some_and(|t| *t != source) {
                        if let Some(t) = run_topic.take() {
                            self.produce_replay(t, std::mem::take(&mut run), &mut summary).await?;
                        }
                    }
                    run_topic = Some(source);
                    run.push(replayed_record(r));
                }
                if let Some(t) = run_topic {
                    self.produce_replay(t, run, &mut summary).await?;
                }
                budget = budget.saturating_sub(records.len() as u64);
                position = last + 1;
                let progress = vec![(dlq.to_vec(), partition, position)];
                let committed = self
                    .commit(
                        group.to_vec(),
                        member.to_string(),
                        membership.generation,
                        progress.clone(),
                    )
                    .await;
                // Stay alive through a long replay, and stop where another replay took over.
                membership = self.heartbeat(group.to_vec(), member.to_string()).await?;
                match committed {
                    Ok(()) => {}
                    // Another replay joined meanwhile: commit under the new generation if the
                    // partition is still ours (below, it is left otherwise).
                    Err(e) if e.code() == Some(ErrorCode::IllegalGeneration) => {
                        if membership.assigned.contains(&tp) {
                            self.commit(group.to_vec(), member.to_string(), membership.generation, progress)
                                .await?;
                        }
                    }
                    Err(e) => return Err(e),
                }
                if !membership.assigned.contains(&tp) {
                    if position < bounds.high_watermark {
                        summary.partitions_left.push(partition);
                    }
                    break;
                }
            }
        }
        Ok(summary)
    }

    /// Produces one run of replayed records to `topic`; a topic that no longer exists counts
    /// them as skipped.
    async fn produce_replay(
        &self,
        topic: Vec<u8>,
        records: Vec<Record>,
        summary: &mut ReplaySummary,
    ) -> Result<(), ClientError> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(());
        }
        match self.produce(topic.clone(), records).await {
            Ok(_) => *summary.replayed.entry(topic).or_insert(0) += count,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => summary.skipped += count,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// A dead letter as it goes back to its topic: its key and value, its original headers, and
/// its replay count one higher.
fn replayed_record(letter: &crate::stream::FetchedRecord) -> Record {
    let replays = letter
        .headers
        .iter()
        .find(|(n, _)| n == dead_letter::REPLAYS_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let mut record = Record::new(letter.key.clone(), letter.value.clone());
    record.headers = letter
        .headers
        .iter()
        .filter(|(n, _)| !dead_letter::is_dead_letter_header(n))
        .cloned()
        .collect();
    record.header(dead_letter::REPLAYS_HEADER, (replays + 1).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed(headers: Vec<(String, Vec<u8>)>) -> ConsumedRecord {
        ConsumedRecord {
            topic: b"orders.v1".to_vec(),
            partition: 3,
            offset: 41,
            timestamp_ms: 7,
            key: b"order-9".to_vec(),
            value: b"{}".to_vec(),
            headers,
            generation: 2,
        }
    }

    fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn a_dead_letter_says_where_it_came_from_and_a_replay_restores_the_record() {
        let original = consumed(vec![("trace".into(), b"abc".to_vec())]);
        assert_eq!(dead_letter::topic_of(&original.topic), b"orders.v1.dlq");
        let letter = dead_letter::letter(&original, "bad amount");
        assert_eq!(letter.key, original.key);
        assert_eq!(
            header(&letter, dead_letter::TOPIC_HEADER),
            Some(b"orders.v1".as_slice())
        );
        assert_eq!(header(&letter, dead_letter::PARTITION_HEADER), Some(b"3".as_slice()));
        assert_eq!(header(&letter, dead_letter::OFFSET_HEADER), Some(b"41".as_slice()));
        assert_eq!(
            header(&letter, dead_letter::REASON_HEADER),
            Some(b"bad amount".as_slice())
        );
        assert_eq!(header(&letter, "trace"), Some(b"abc".as_slice()));

        let fetched = crate::stream::FetchedRecord {
            offset: 0,
            timestamp_ms: 9,
            key: letter.key.clone(),
            value: letter.value.clone(),
            headers: letter.headers.clone(),
        };
        let replayed = replayed_record(&fetched);
        assert_eq!(
            (replayed.key.as_slice(), replayed.value.as_slice()),
            (original.key.as_slice(), original.value.as_slice())
        );
        assert_eq!(header(&replayed, "trace"), Some(b"abc".as_slice()));
        assert_eq!(header(&replayed, dead_letter::TOPIC_HEADER), None);
        assert_eq!(header(&replayed, dead_letter::REPLAYS_HEADER), Some(b"1".as_slice()));

        // Dead-lettered again after a replay: the count goes on, the old provenance is replaced.
        let again = dead_letter::letter(&consumed(replayed.headers.clone()), "still bad");
        let refetched = crate::stream::FetchedRecord {
            offset: 1,
            timestamp_ms: 10,
            key: again.key.clone(),
            value: again.value.clone(),
            headers: again.headers.clone(),
        };
        assert_eq!(
            again
                .headers
                .iter()
                .filter(|(n, _)| n == dead_letter::REASON_HEADER)
                .count(),
            1
        );
        assert_eq!(
            header(&replayed_record(&refetched), dead_letter::REPLAYS_HEADER),
            Some(b"2".as_slice())
        );
    }
}
