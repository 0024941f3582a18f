//! The stream and consumer-group operations of a command and why one is refused. Their payloads
//! (topic settings, records, assignors, group views) are in `crate::stream`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::stream::{Assignor, ProduceRecord, TopicConfig, TrimRule};

/// The stream operations. Applied by `crate::apply::stream`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOp {
    /// Creates a topic, or changes its retention or grows its partitions.
    CreateTopic { topic: Vec<u8>, config: TopicConfig },
    Produce {
        topic: Vec<u8>,
        records: Vec<ProduceRecord>,
        /// An idempotent producer's id: every record then carries its partition sequence.
        producer: Option<u64>,
    },
    /// Removes records past their topic's retention, and goes on with topic deletions. Proposed
    /// by the leader.
    Retention { limit: u32 },
    /// Deletes a topic: from this entry on it is unknown (`NOT_FOUND`) and its name cannot be
    /// created again until its records, partitions, producers and committed offsets are all
    /// removed, a bounded number per entry, the rest by the leader's retention entries.
    DeleteTopic { topic: Vec<u8> },
    /// Hides a partition's oldest records by `rule`: its log start moves up to the first record
    /// kept, at once; the batches wholly before it are removed by the leader's retention entries
    /// (this entry only notes the partition for them). `newer_kept`: the newest records that
    /// came after the command that trims (appended earlier in the same transaction) and are
    /// never its to hide. `limit`: at most this many records hidden (`XTRIM ... LIMIT`). Never
    /// moves the log start back; answers the records it hid.
    Trim {
        topic: Vec<u8>,
        partition: u32,
        rule: TrimRule,
        newer_kept: u64,
        limit: Option<u64>,
    },
}

/// The consumer-group operations. Applied by `crate::apply::group`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOp {
    Join {
        group: Vec<u8>,
        member: String,
        topics: Vec<Vec<u8>>,
        session_timeout_ms: u64,
        assignor: Assignor,
    },
    Heartbeat {
        group: Vec<u8>,
        member: String,
    },
    Leave {
        group: Vec<u8>,
        member: String,
    },
    /// Commits offsets `(topic, partition, offset)`; refused unless `generation` is current and
    /// the member owns each partition.
    Commit {
        group: Vec<u8>,
        member: String,
        generation: u64,
        offsets: Vec<(Vec<u8>, u32, u64)>,
    },
    /// Drops members whose session timed out. Proposed by the leader.
    Sweep {
        limit: u32,
    },
}

impl std::fmt::Display for StreamOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            StreamOp::CreateTopic { topic, config } => write!(f, "stream create {:?} {config:?}", lossy(topic)),
            StreamOp::Produce {
                topic,
                records,
                producer,
            } => write!(
                f,
                "stream produce {} to {:?} (producer {producer:?})",
                records.len(),
                lossy(topic)
            ),
            StreamOp::Retention { limit } => write!(f, "stream retention (limit {limit})"),
            StreamOp::DeleteTopic { topic } => write!(f, "stream delete {:?}", lossy(topic)),
            StreamOp::Trim {
                topic,
                partition,
                rule,
                newer_kept,
                limit,
            } => write!(
                f,
                "stream trim {:?}/{partition} {rule:?} (newer kept {newer_kept}, limit {limit:?})",
                lossy(topic)
            ),
        }
    }
}

impl std::fmt::Display for GroupOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            GroupOp::Join { group, member, .. } => write!(f, "group {:?} join {member:?}", lossy(group)),
            GroupOp::Heartbeat { group, member } => write!(f, "group {:?} heartbeat {member:?}", lossy(group)),
            GroupOp::Leave { group, member } => write!(f, "group {:?} leave {member:?}", lossy(group)),
            GroupOp::Commit {
                group, member, offsets, ..
            } => write!(
                f,
                "group {:?} commit {} offsets by {member:?}",
                lossy(group),
                offsets.len()
            ),
            GroupOp::Sweep { limit } => write!(f, "group sweep (limit {limit})"),
        }
    }
}

/// Why a stream or group operation was refused, beyond the checks every type shares
/// ([`super::OpError`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StreamError {
    #[error("offset {offset} is out of range: the partition holds {log_start}..{high_watermark}")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        high_watermark: u64,
    },
    #[error("out-of-order sequence on partition {partition}: expected {expected}, got {got} ({reason})")]
    OutOfOrderSequence {
        partition: u32,
        expected: u64,
        got: u64,
        reason: Cow<'static, str>,
    },
    #[error("generation {given} of group {group:?} is not current (current: {current}); rejoin or heartbeat for the new assignment")]
    IllegalGeneration { group: String, given: u64, current: u64 },
    #[error("topic {topic:?} is read-only here: names with '@' are mirrors of another region's topic")]
    MirrorReadOnly { topic: String },
    #[error("partition {topic:?}/{partition} is not assigned to member {member:?}")]
    NotAssigned {
        topic: String,
        partition: u32,
        member: String,
    },
    #[error("topic {topic:?} is being deleted: its name can be created again once its records are removed")]
    TopicBeingDeleted { topic: String },
}
