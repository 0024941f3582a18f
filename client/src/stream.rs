//! Streams (Kafka-like): topics with partitions, produce and fetch by offset, idempotent
//! producers, consumer groups with generations and committed offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::client::{millis, Client, ReadConsistency};
use crate::error::ClientError;
use crate::pb;
use crate::pb::stream_client::StreamClient;

/// Which of a partition's oldest records a trim hides ([`Streams::trim`], [`crate::TxnOp::trim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimRule {
    /// Keep the newest `n` records (Redis's `MAXLEN n`).
    MaxLen(u64),
    /// Keep the records stamped after `timestamp_ms`, and those stamped exactly then from
    /// `offset` on (Redis's `MINID timestamp_ms-offset`, an id being a record's stamp and offset).
    MinId { timestamp_ms: u64, offset: u64 },
}

impl TrimRule {
    pub(crate) fn request(
        self,
        topic: Vec<u8>,
        partition: u32,
        newer_kept: u64,
        limit: Option<u64>,
    ) -> pb::TrimRequest {
        pb::TrimRequest {
            header: None,
            topic,
            partition,
            rule: Some(match self {
                TrimRule::MaxLen(keep) => pb::trim_request::Rule::MaxLen(keep),
                TrimRule::MinId { timestamp_ms, offset } => {
                    pb::trim_request::Rule::MinId(pb::RecordId { timestamp_ms, offset })
                }
            }),
            newer_kept,
            limit,
        }
    }
}

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `None`: by the key's hash, or (without a key) one partition per request.
    pub partition: Option<u32>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Record {
        Record {
            key: key.into(),
            value: value.into(),
            ..Record::default()
        }
    }

    pub fn to_partition(mut self, partition: u32) -> Record {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Record {
        self.headers.push((key.into(), value.into()));
        self
    }
}

/// Where a produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    pub partition: u32,
    pub offset: u64,
    /// An idempotent producer's retry of records already written: nothing was appended.
    pub duplicate: bool,
    /// The record's stamp, as [`FetchedRecord::timestamp_ms`] gives it (0: unknown, for a
    /// retry whose first batch retention removed).
    pub timestamp_ms: u64,
}

impl From<pb::ProduceOutcome> for Produced {
    fn from(o: pb::ProduceOutcome) -> Produced {
        Produced {
            partition: o.partition,
            offset: o.offset,
            duplicate: o.duplicate,
            timestamp_ms: o.timestamp_ms,
        }
    }
}

/// A fetched record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub records: Vec<FetchedRecord>,
    /// The offset the next record will get.
    pub high_watermark: u64,
    /// The oldest offset still kept.
    pub log_start: u64,
}

/// How a fetch behaves. Zeros mean the server's defaults (1000 records, 4 MiB). `max_bytes`
/// counts keys, values and headers, and is at most 16 MiB (a larger value is lowered to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    pub max_records: u32,
    pub max_bytes: u64,
    /// Long-poll: wait up to this long when nothing is past the offset yet.
    pub wait: Duration,
    pub consistency: ReadConsistency,
}

/// A topic's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicOptions {
    pub partitions: u32,
    /// Records older than this are removed.
    pub retention: Option<Duration>,
    /// Oldest records are removed while a partition holds more than this.
    pub retention_bytes: Option<u64>,
    /// With regions: every other region gets a read-only copy named `topic@region` (this
    /// region's name), which its consumers read locally.
    pub mirror: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    pub high_watermark: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub options: TopicOptions,
    pub partitions: Vec<PartitionInfo>,
}

/// A topic in a [`Streams::list_topics`] answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicListing {
    pub name: Vec<u8>,
    pub options: TopicOptions,
}

/// Where a time falls in a partition ([`Streams::offset_for_time`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOffset {
    /// The first record stamped at or after the time, or the high watermark if none is.
    pub offset: u64,
    /// That record's stamp (`None`: every stored record is older).
    pub timestamp_ms: Option<u64>,
    pub high_watermark: u64,
}

/// Milliseconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How a group spreads partitions over members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Assignor {
    #[default]
    Range,
    Sticky,
}

/// A member's view of its group: its generation and partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub generation: u64,
    pub assigned: Vec<(Vec<u8>, u32)>,
    pub members: u32,
}

/// How a member joins.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinOptions {
    /// Zero: 10 s. Heartbeat well within it, or lose your partitions.
    pub session_timeout: Duration,
    /// Used when the group is created by this join.
    pub assignor: Assignor,
}

/// The partition a key goes to: the same stable hash (CRC-32) as the server.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

fn membership(reply: pb::GroupResponse) -> Membership {
    Membership {
        generation: reply.generation,
        assigned: reply.assigned.into_iter().map(|tp| (tp.topic, tp.partition)).collect(),
        members: reply.members,
    }
}

pub(crate) fn produce_record(r: Record, sequence: Option<u64>) -> pb::ProduceRecord {
    pb::ProduceRecord {
        partition: r.partition,
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| pb::Header { key, value })
            .collect(),
        sequence,
    }
}

/// Stream operations. Get one with [`Client::streams`].
#[derive(Clone)]
pub struct Streams {
    pub(crate) client: Client,
}

impl Streams {
    /// Creates a topic, or changes its retention or grows its partitions (they never shrink).
    pub async fn create_topic(&self, topic: impl Into<Vec<u8>>, options: TopicOptions) -> Result<bool, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CreateTopicRequest {
            header: Some(header),
            topic: topic.into(),
            partitions: options.partitions,
            retention_ms: options.retention.map_or(0, |d| millis(d).max(1)),
            retention_bytes: options.retention_bytes.unwrap_or(0),
            mirror: options.mirror,
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).create_topic(r).await
            })
            .await?;
        Ok(reply.created)
    }

    pub async fn describe(
        &self,
        topic: impl Into<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<TopicInfo, ClientError> {
        let message = pb::TopicRequest {
            topic: topic.into(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(StreamClient, c).describe_topic(r).await
            })
            .await?;
        Ok(TopicInfo {
            options: TopicOptions {
                partitions: reply.partitions,
                retention: (reply.retention_ms > 0).then(|| Duration::from_millis(reply.retention_ms)),
                retention_bytes: (reply.retention_bytes > 0).then_some(reply.retention_bytes),
                mirror: reply.mirror,
            },
            partitions: reply
                .partition_info
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    log_start: p.log_start,
                    high_watermark: p.high_watermark,
                    bytes: p.bytes,
                })
                .collect(),
        })
    }

    /// Appends records in one Raft entry; one outcome each, in order. Retries inside this call
    /// never duplicate; across calls, use a [`Producer`].
    ///
    /// # Errors
    /// `NOT_FOUND` (topic), `OUT_OF_RANGE` (partition), `INVALID_ARGUMENT` (oversize),
    /// `BATCH_TOO_LARGE`: nothing is appended.
    pub async fn produce(&self, topic: impl Into<Vec<u8>>, records: Vec<Record>) -> Result<Vec<Produced>, ClientError> {
        let records = records.into_iter().map(|r| produce_record(r, None)).collect();
        self.send(topic.into(), records, None).await
    }

    async fn send(
        &self,
        topic: Vec<u8>,
        records: Vec<pb::ProduceRecord>,
        producer_id: Option<u64>,
    ) -> Result<Vec<Produced>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::ProduceRequest {
            header: Some(header),
            topic,
            records,
            producer_id,
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).produce(r).await
            })
            .await?;
        Ok(reply.outcomes.into_iter().map(Produced::from).collect())
    }

    /// Reads records of one partition from `offset` on.
    ///
    /// # Errors
    /// `OFFSET_OUT_OF_RANGE` when `offset` is past the end or before the oldest kept record.
    pub async fn fetch(
        &self,
        topic: impl Into<Vec<u8>>,
        partition: u32,
        offset: u64,
        options: FetchOptions,
    ) -> Result<Fetched, ClientError> {
        let message = pb::FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_records: options.max_records,
            max_bytes: options.max_bytes,
            wait_ms: millis(options.wait),
            stale: options.consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary_waiting(false, message, options.wait, Duration::ZERO, |c, r| async move {
                crate::service_client!(StreamClient, c).fetch(r).await
            })
            .await?;
        Ok(Fetched {
            records: reply
                .records
                .into_iter()
                .map(|r| FetchedRecord {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                })
                .collect(),
            high_watermark: reply.high_watermark,
            log_start: reply.log_start,
        })
    }

    /// Deletes a topic with its records, idempotent producers' state and every group's committed
    /// offsets. It is unknown (`NOT_FOUND`) from the answer on; a large topic's rows are removed
    /// in the background, and until they are, creating the name again is refused with
    /// `TOPIC_BEING_DELETED` (retry shortly). Consumer groups subscribed to it drop its
    /// partitions at their next heartbeat. A mirror (`topic@region`) is deleted by deleting its
    /// source in its own region.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such topic, or deleted already), `INVALID_ARGUMENT` (a mirror's name).
    pub async fn delete_topic(&self, topic: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::DeleteTopicRequest {
            header: Some(header),
            topic: topic.into(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).delete_topic(r).await
            })
            .await?;
        Ok(())
    }

    /// Every topic with its settings, this region's own and other regions' mirrors (`@` in the
    /// name), paged through requests of up to 1000 (each page linearizable; a topic created or
    /// deleted meanwhile may or may not appear).
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>, ClientError> {
        let mut topics = Vec::new();
        let mut after = Vec::new();
        loop {
            let message = pb::ListTopicsRequest {
                after: after.clone(),
                limit: 0,
                stale: false,
            };
            let reply = self
                .client
                .unary(false, message, |c, r| async move {
                    crate::service_client!(StreamClient, c).list_topics(r).await
                })
                .await?;
            let more = reply.more && !reply.topics.is_empty();
            for t in reply.topics {
                after.clone_from(&t.name);
                topics.push(TopicListing {
                    name: t.name,
                    options: TopicOptions {
                        partitions: t.partitions,
                        retention: (t.retention_ms > 0).then(|| Duration::from_millis(t.retention_ms)),
                        retention_bytes: (t.retention_bytes > 0).then_some(t.retention_bytes),
                        mirror: t.mirror,
                    },
                });
            }
            if !more {
                return Ok(topics);
            }
        }
    }

    /// Hides the oldest records of one partition by `rule`, at most `limit` of them: its log
    /// start moves to the first record kept at once (a fetch before it is `OFFSET_OUT_OF_RANGE`,
    /// as after retention; a consumer group's offset before it reads on from it), and the
    /// storage is freed in the background. Never moves the log start back. Answers how many
    /// records it hid. Not on a mirror (`topic@region`): trim its source. `limit: Some(0)` hides
    /// nothing (Redis's `LIMIT 0`, no limit, is `None`).
    ///
    /// # Errors
    /// `NOT_FOUND` (topic), `OUT_OF_RANGE` (partition), `INVALID_ARGUMENT` (a mirror's name).
    pub async fn trim(
        &self,
        topic: impl Into<Vec<u8>>,
        partition: u32,
        rule: TrimRule,
        limit: Option<u64>,
    ) -> Result<u64, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::TrimRequest {
            header: Some(header),
            ..rule.request(topic.into(), partition, 0, limit)
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).trim(r).await
            })
            .await?;
        Ok(reply.removed)
    }

    /// Where a reader of one partition starts to see records stamped at or after `at` (the
    /// cluster's time when they were appended): the first such record's offset, or the high
    /// watermark when every stored record is older (Kafka's offsets-for-times).
    ///
    /// # Errors
    /// `NOT_FOUND` (topic), `OUT_OF_RANGE` (partition).
    pub async fn offset_for_time(
        &self,
        topic: impl Into<Vec<u8>>,
        partition: u32,
        at: SystemTime,
    ) -> Result<TimeOffset, ClientError> {
        let message = pb::OffsetForTimeRequest {
            topic: topic.into(),
            partition,
            timestamp_ms: unix_millis(at),
            stale: false,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(StreamClient, c).offset_for_time(r).await
            })
            .await?;
        Ok(TimeOffset {
            offset: reply.offset,
            timestamp_ms: reply.found.then_some(reply.timestamp_ms),
            high_watermark: reply.high_watermark,
        })
    }

    /// An idempotent producer for `topic`: its sends never duplicate a record, even when one is
    /// retried after its outcome was lost.
    pub async fn producer(&self, topic: impl Into<Vec<u8>>) -> Result<Producer, ClientError> {
        let topic = topic.into();
        let partitions = self
            .describe(topic.clone(), ReadConsistency::Linearizable)
            .await?
            .options
            .partitions;
        Ok(Producer {
            streams: self.clone(),
            topic,
            partitions,
            producer_id: rand::random(),
            state: Arc::new(tokio::sync::Mutex::new(ProducerState::default())),
        })
    }

    /// Joins (or rejoins) `group` as `member`, subscribed to `topics`.
    pub async fn join_group(
        &self,
        group: impl Into<Vec<u8>>,
        member: impl Into<String>,
        topics: Vec<Vec<u8>>,
        options: JoinOptions,
    ) -> Result<Membership, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::JoinGroupRequest {
            header: Some(header),
            group: group.into(),
            member: member.into(),
            topics,
            session_timeout_ms: millis(options.session_timeout),
            assignor: match options.assignor {
                Assignor::Range => pb::join_group_request::Assignor::Range as i32,
                Assignor::Sticky => pb::join_group_request::Assignor::Sticky as i32,
            },
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).join_group(r).await
            })
            .await?;
        Ok(membership(reply))
    }

    /// Keeps a member alive; answers its current generation and partitions (a new generation
    /// means a rebalance: adopt the new assignment).
    ///
    /// # Errors
    /// `NOT_FOUND` when the member timed out (its partitions went to others): join again.
    pub async fn heartbeat(
        &self,
        group: impl Into<Vec<u8>>,
        member: impl Into<String>,
    ) -> Result<Membership, ClientError> {
        let (message, _guard) = self.member_request(group.into(), member.into());
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).heartbeat(r).await
            })
            .await?;
        Ok(membership(reply))
    }

    pub async fn leave_group(&self, group: impl Into<Vec<u8>>, member: impl Into<String>) -> Result<bool, ClientError> {
        let (message, _guard) = self.member_request(group.into(), member.into());
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).leave_group(r).await
            })
            .await?;
        Ok(reply.was_member)
    }

    fn member_request(&self, group: Vec<u8>, member: String) -> (pb::GroupMemberRequest, crate::client::SeqGuard) {
        let (header, guard) = self.client.header();
        let message = pb::GroupMemberRequest {
            header: Some(header),
            group,
            member,
        };
        (message, guard)
    }

    /// Commits `(topic, partition, next offset to read)` for the group.
    ///
    /// # Errors
    /// `ILLEGAL_GENERATION` (a rebalance happened: heartbeat for the new assignment),
    /// `NOT_ASSIGNED`, `NOT_FOUND` (member expired), `OFFSET_OUT_OF_RANGE`.
    pub async fn commit(
        &self,
        group: impl Into<Vec<u8>>,
        member: impl Into<String>,
        generation: u64,
        offsets: Vec<(Vec<u8>, u32, u64)>,
    ) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CommitOffsetsRequest {
            header: Some(header),
            group: group.into(),
            member: member.into(),
            generation,
            offsets: offsets
                .into_iter()
                .map(|(topic, partition, offset)| pb::CommittedOffset {
                    topic,
                    partition,
                    offset,
                })
                .collect(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(StreamClient, c).commit_offsets(r).await
            })
            .await?;
        Ok(())
    }

    /// The group's committed offsets for `topic`, by partition.
    pub async fn committed(
        &self,
        group: impl Into<Vec<u8>>,
        topic: impl Into<Vec<u8>>,
    ) -> Result<BTreeMap<u32, u64>, ClientError> {
        let message = pb::CommittedRequest {
            group: group.into(),
            topic: topic.into(),
            stale: false,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(StreamClient, c).committed(r).await
            })
            .await?;
        Ok(reply.offsets.into_iter().map(|o| (o.partition, o.offset)).collect())
    }
}

#[derive(Default)]
struct ProducerState {
    next_sequence: BTreeMap<u32, u64>,
    /// A batch whose outcome is unknown: sent again, with the same sequences, before anything
    /// else, so it lands exactly once and nothing after it lands first.
    pending: Option<Vec<pb::ProduceRecord>>,
    round_robin: u32,
}

/// An idempotent producer: every record carries its partition's sequence number, and the cluster
/// appends a sequence once. Sends are serialized. Get one with [`Streams::producer`].
#[derive(Clone)]
pub struct Producer {
    streams: Streams,
    topic: Vec<u8>,
    partitions: u32,
    producer_id: u64,
    state: Arc<tokio::sync::Mutex<ProducerState>>,
}

impl Producer {
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Sends `records`; one outcome each. If an earlier send failed, its batch is sent again
    /// first (the cluster drops whatever of it already landed).
    ///
    /// # Errors
    /// As [`Streams::produce`]. After an error whose outcome is unknown, the batch is kept and
    /// resent by the next `send` (or [`Producer::flush`]).
    pub async fn send(&self, records: Vec<Record>) -> Result<Vec<Produced>, ClientError> {
        let mut state = self.state.lock().await;
        self.deliver_pending(&mut state).await?;
        let keyless = state.round_robin % self.partitions.max(1);
        state.round_robin = state.round_robin.wrapping_add(1);
        let mut batch = Vec::with_capacity(records.len());
        for mut r in records {
            let partition = match r.partition {
                Some(p) => p,
                None if r.key.is_empty() => keyless,
                None => partition_for_key(&r.key, self.partitions),
            };
            r.partition = Some(partition);
            let next = state.next_sequence.entry(partition).or_insert(0);
            let sequence = *next;
            *next += 1;
            batch.push(produce_record(r, Some(sequence)));
        }
        state.pending = Some(batch.clone());
        let produced = self
            .streams
            .send(self.topic.clone(), batch, Some(self.producer_id))
            .await;
        match produced {
            Ok(out) => {
                state.pending = None;
                Ok(out)
            }
            Err(e @ ClientError::Rejected { .. }) => {
                // Refused as a whole: nothing landed, so its sequences are free again.
                if let Some(batch) = state.pending.take() {
                    for r in batch.iter().rev() {
                        if let (Some(p), Some(s)) = (r.partition, r.sequence) {
                            state.next_sequence.insert(p, s);
                        }
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Resends a batch whose outcome is unknown, if any.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let mut state = self.state.lock().await;
        self.deliver_pending(&mut state).await
    }

    async fn deliver_pending(&self, state: &mut ProducerState) -> Result<(), ClientError> {
        if let Some(batch) = state.pending.clone() {
            self.streams
                .send(self.topic.clone(), batch, Some(self.producer_id))
                .await?;
            state.pending = None;
        }
        Ok(())
    }
}
