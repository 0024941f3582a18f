//! Stream types (Kafka-like): topics, records, idempotent producers and consumer groups.
//! The apply logic is in `apply/stream.rs` and `apply/group.rs`; the semantics in
//! `docs/data-types/stream.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A topic's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    /// Records older than this (by their entry stamp) are removed.
    pub retention_ms: Option<u64>,
    /// Oldest records are removed while a partition holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Copied to every other region as the read-only topic `name@region`.
    #[serde(default)]
    pub mirror: bool,
}

/// The character that marks a mirror of another region's topic (`orders@us`); other topic names
/// may not contain it.
pub const MIRROR_MARK: u8 = b'@';

/// Whether `topic` names another region's mirrored topic.
pub fn is_mirror_name(topic: &[u8]) -> bool {
    topic.contains(&MIRROR_MARK)
}

/// Which of a partition's oldest records a trim hides (Redis's `XTRIM`, Kafka's `DeleteRecords`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrimRule {
    /// Keep the newest `n` records (`MAXLEN n`).
    MaxLen(u64),
    /// Keep the records whose id `(batch stamp, offset)` is at least this one (`MINID`).
    MinId { timestamp_ms: u64, offset: u64 },
}

/// One record to produce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceRecord {
    /// `None`: chosen from the key's hash (or round-robin by entry for an empty key).
    pub partition: Option<u32>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// With an idempotent producer: this record's sequence number within its partition.
    pub sequence: Option<u64>,
}

/// Where one produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produced {
    pub partition: u32,
    pub offset: u64,
    /// A retry of records this producer already wrote: nothing was appended, `offset` is where
    /// the first write put it.
    pub duplicate: bool,
}

/// A record as stored and fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The bytes the record puts in a fetch answer (key, value, headers and their framing), what
    /// a fetch's `max_bytes` counts.
    pub fn reply_bytes(&self) -> u64 {
        // With the framing of each header and of the record (tags, lengths, offset, timestamp),
        // so a record of many empty headers is not counted as nothing.
        // Bytes counted per header beyond its key and value.
        const HEADER_FRAMING_BYTES: usize = 8;
        // Bytes counted per record beyond its key, value and headers.
        const RECORD_FRAMING_BYTES: usize = 32;
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + HEADER_FRAMING_BYTES)
            .sum();
        (self.key.len() + self.value.len() + headers + RECORD_FRAMING_BYTES) as u64
    }
}

/// A fetched record with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub record: Record,
}

/// How a consumer group spreads partitions over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignor {
    /// Per topic, members in id order take contiguous ranges of partitions.
    Range,
    /// Per topic, partitions stay with their previous owner where that keeps the spread even.
    Sticky,
}

/// A (topic, partition) pair.
pub type TopicPartition = (Vec<u8>, u32);

/// Which partitions a member owns, by member id.
pub type Assignment = BTreeMap<String, Vec<TopicPartition>>;

/// A member's view of its group after join or heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub generation: u64,
    pub assigned: Vec<TopicPartition>,
    pub members: u32,
}

/// The partition a key goes to: a stable hash (CRC-32, the same on every replica and in the SDK)
/// modulo the partition count.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}
