//! [`OpError`]: why an operation was refused. Encoded in saved answers by position: a new
//! variant goes last.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::LeaseLoss;

/// Why an operation was refused. Refusals are deterministic results, applied identically on every
/// replica, and change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("ttl of {ttl_ms} ms is out of range (1..={max_ms})")]
    InvalidTtl { ttl_ms: u64, max_ms: u64 },
    #[error("{what} is empty")]
    Empty { what: Cow<'static, str> },
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: Cow<'static, str>,
        len: usize,
        max: usize,
    },
    #[error("batch of {len} items exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("{what} must be {expected}, got {got}")]
    OutOfRange {
        what: Cow<'static, str>,
        expected: String,
        got: String,
    },
    #[error("stale fence: lease {lease:?} token {token} is no longer the live grant ({reason:?})")]
    StaleFence {
        lease: String,
        token: u64,
        reason: LeaseLoss,
    },
    #[error("lease {lease:?} is not held by this holder with token {token} ({reason:?})")]
    LeaseNotHeld {
        lease: String,
        token: u64,
        reason: LeaseLoss,
    },
    #[error(
        "request seq {seq} of client {client_id:032x} is older than its oldest kept answer; its outcome is unknown"
    )]
    SessionExpired { client_id: u128, seq: u64 },
    #[error("stored value for key {key:?} is unreadable: {reason}")]
    CorruptValue { key: String, reason: String },
    #[error("unknown {what} {name:?}")]
    NotFound { what: Cow<'static, str>, name: String },
    #[error("receipt for delivery {delivery} of message {message_id} is stale (latest delivery: {latest:?}); the message was redelivered, acknowledged or given back")]
    StaleReceipt {
        message_id: u64,
        delivery: u32,
        latest: Option<u32>,
    },
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
    #[error("a region cannot merge its own feed (region {region})")]
    OwnFeed { region: u16 },
    #[error("this region does not replicate with other regions; it cannot merge region {source_region}'s feed")]
    NotReplicating { source_region: u16 },
    #[error("ledgers, leases and queues are homed in region {home}; region {region} holds a read-only copy")]
    NotHome { region: u16, home: u16 },
    #[error("region {source_region} shipped homed rows, but this region's home region is {home}")]
    RowsFromNonHome { source_region: u16, home: u16 },
    #[error("table {table:?} does not hold homed data")]
    NotHomedTable { table: String },
    #[error("escrow transfer refused: {reason}")]
    InvalidTransfer { reason: String },
    #[error("key {key:?} appears more than once in one batch")]
    DuplicateKey { key: String },
    #[error("topic {topic:?} is read-only here: names with '@' are mirrors of another region's topic")]
    MirrorReadOnly { topic: String },
    #[error("a mirrored row must be in a stream table under a mirror name (table {table:?})")]
    NotMirrorRow { table: String },
    #[error("partition {topic:?}/{partition} is not assigned to member {member:?}")]
    NotAssigned {
        topic: String,
        partition: u32,
        member: String,
    },
    #[error("{op} cannot be part of merged kv writes")]
    NotMergeable { op: String },
    #[error("region {source_region} is not in this region's topology (`basalt regions add` it first)")]
    UnknownRegion { source_region: u16 },
    #[error("region topology change refused: {reason}")]
    InvalidTopology { reason: String },
    // New variants go last: saved answers are encoded (basalt-codec), tagged by variant position.
    #[error("a log entry of {len} bytes would exceed the limit of {max} bytes")]
    EntryTooLarge { len: usize, max: usize },
}
