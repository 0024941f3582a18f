//! What goes into the Raft log and what comes back: the deterministic input and output of apply.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use basalt_replication::ShipBatch;

use crate::hlc::HlcStamp;
use crate::ledger::{Account, AccountResult, Transfer, TransferResult};
use crate::queue::{Delivery, EnqueueOutcome, NewMessage, QueueConfig, Receipt};
use crate::stream::{Assignor, GroupView, ProduceRecord, Produced, TopicConfig};

/// Identifies a client request for exactly-once apply (the RIFL scheme): a retried request carries
/// the same `(client_id, seq)` and gets the first answer back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client_id: u128,
    pub seq: u64,
    /// Every seq below this one has been answered to the client; their saved answers may go.
    pub first_incomplete_seq: u64,
}

/// A condition a KV write needs to hold (compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key must not exist (or must have expired).
    Absent,
    /// The key must exist with this modification revision.
    Revision(u64),
}

/// A fencing token presented with a write: the write applies only while `token` is the live grant
/// of lease `lease` (see `docs/data-types/lease.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub lease: Vec<u8>,
    pub token: u64,
}

/// One counter change inside a [`Op::Counter`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterOp {
    pub key: Vec<u8>,
    pub action: CounterAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterAction {
    /// Adds `delta` unless the result would leave `[min, max]` (each bound optional).
    Incr {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Sets the counter to `value` (a reset is `Set { value: 0 }`).
    Set { value: i64 },
    /// Gives `amount` of this region's escrow of the counter to region `to`: room toward the
    /// upper bound `max` when it is given, else room toward the lower bound `min` (default 0);
    /// this region's balance must stay on its side of its share of that bound (see
    /// `EscrowTransfers`).
    Transfer {
        to: u16,
        amount: u64,
        min: Option<i64>,
        max: Option<i64>,
    },
}

/// What happened to one [`CounterOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterOutcome {
    /// Applied; the counter's new value.
    Applied { value: i64 },
    /// Refused, nothing changed: the result would have crossed a bound. `value` is the current value.
    BoundExceeded { value: i64 },
    /// Refused, nothing changed: the result would leave the i64 range.
    Overflow { value: i64 },
    /// Refused, nothing changed: this region's escrow does not cover the change (its balance
    /// would cross its share of the bound); another region can transfer it some. `balance` is
    /// this region's balance toward that bound.
    EscrowExceeded { value: i64, balance: i64 },
}

/// A rate-limit algorithm and its parameters, given with every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimit {
    /// At most `limit` units per sliding `window_ms`, estimated from the current and previous fixed
    /// windows (the previous weighted by how much of it still overlaps the sliding window).
    SlidingWindow { limit: u64, window_ms: u64 },
    /// `rate` units refill every `per_ms`, up to `burst` stored.
    TokenBucket { rate: u64, per_ms: u64, burst: u64 },
    /// A sliding window shared by all regions: each region counts what it admits and ships its
    /// count; a check weighs every region's count as last received (see docs/regions.md for the
    /// bound on what regions admit together before their counts arrive).
    GlobalSlidingWindow { limit: u64, window_ms: u64 },
}

/// One rate-limit decision request inside a [`Op::RateCheck`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCheck {
    pub key: Vec<u8>,
    pub limit: RateLimit,
    /// Units this request consumes when allowed (0: only look).
    pub cost: u64,
}

/// The answer to one [`RateCheck`]. Times are HLC milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    pub allowed: bool,
    /// Units still available after this decision.
    pub remaining: u64,
    /// When refused: how long until the same check would be allowed (0 when allowed).
    pub retry_after_ms: u64,
    /// When the key will be back to its full allowance if nothing more is consumed.
    pub reset_at_ms: u64,
}

/// The outcome of a lease operation that did not fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// The caller holds the lease with this fencing token until `expires_at_ms`.
    Granted { token: u64, expires_at_ms: u64 },
    /// Someone else holds it until `expires_at_ms`.
    Held { holder: Vec<u8>, expires_at_ms: u64 },
    /// Released; `was_live` is false when it had already expired.
    Released { was_live: bool },
}

/// Why a lease renew or release was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseLoss {
    /// Nobody holds it (never acquired, released, or expired and taken by nobody).
    NotHeld,
    /// It expired at `expires_at_ms`.
    Expired { expires_at_ms: u64 },
    /// Another holder, or a later grant to the same holder, has it now.
    Superseded { current_token: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    // Keys and values are byte strings to serde (`serde_bytes`): the codec copies them whole
    // instead of byte by byte, with the same encoding (a varint length, then the bytes).
    KvPut {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        expect: Option<Expect>,
    },
    KvDelete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expect: Option<Expect>,
    },
    /// Counter changes, each applied or refused on its own, in order.
    Counter {
        ops: Vec<CounterOp>,
    },
    /// Rate-limit decisions, each atomic on its own key, in order.
    RateCheck {
        checks: Vec<RateCheck>,
    },
    LeaseAcquire {
        name: Vec<u8>,
        holder: Vec<u8>,
        ttl_ms: u64,
    },
    LeaseRenew {
        name: Vec<u8>,
        holder: Vec<u8>,
        token: u64,
        ttl_ms: u64,
    },
    LeaseRelease {
        name: Vec<u8>,
        holder: Vec<u8>,
        token: u64,
    },
    LedgerCreateAccounts {
        accounts: Vec<Account>,
    },
    LedgerCreateTransfers {
        transfers: Vec<Transfer>,
    },
    /// Forgets rate-limit keys that are back to their full allowance (forgetting them changes no
    /// decision), at most `limit`. Proposed by the leader from time to time.
    RateSweep {
        limit: u32,
    },
    /// Voids pending transfers whose timeout has passed (judged by the entry stamp), at most
    /// `limit`. Proposed by the leader from time to time.
    LedgerExpirePending {
        limit: u32,
    },
    /// Removes expired KV keys. Proposed by the leader from time to time; the decision is made
    /// from the entry stamp, so every replica removes the same keys.
    KvSweepExpired {
        limit: u32,
    },
    /// Forgets the sessions of clients idle for at least `idle_ms` (judged by the entry stamp),
    /// visiting at most `limit` clients with ids after `after` (`None`: from the first). Proposed by
    /// the leader from time to time, walking the table with the cursor it gets back.
    SessionSweep {
        idle_ms: u64,
        after: Option<u128>,
        limit: u32,
    },
    /// Drops KV history older than revision `below` (at most `limit` changes). Proposed by the
    /// leader once the history holds more than its configured number of revisions.
    KvCompact {
        below: u64,
        limit: u32,
    },
    /// Creates a queue, or changes its settings.
    QueueConfigure {
        queue: Vec<u8>,
        config: QueueConfig,
    },
    QueueEnqueue {
        queue: Vec<u8>,
        messages: Vec<NewMessage>,
    },
    /// Hands out up to `max` visible messages, invisible for the visibility timeout.
    QueueReceive {
        queue: Vec<u8>,
        max: u32,
        visibility_timeout_ms: Option<u64>,
    },
    QueueAck {
        queue: Vec<u8>,
        receipt: Receipt,
    },
    /// Gives a delivery back: visible again after `delay_ms`.
    QueueNack {
        queue: Vec<u8>,
        receipt: Receipt,
        delay_ms: u64,
    },
    /// Moves up to `max` dead-lettered messages back to the queues they came from.
    QueueRedrive {
        queue: Vec<u8>,
        max: u32,
    },
    /// Forgets dedup ids whose window has passed. Proposed by the leader.
    QueueDedupSweep {
        limit: u32,
    },
    /// Creates a topic, or changes its retention or grows its partitions.
    StreamCreateTopic {
        topic: Vec<u8>,
        config: TopicConfig,
    },
    StreamProduce {
        topic: Vec<u8>,
        records: Vec<ProduceRecord>,
        /// An idempotent producer's id: every record then carries its partition sequence.
        producer: Option<u64>,
    },
    /// Removes records past their topic's retention. Proposed by the leader.
    StreamRetention {
        limit: u32,
    },
    GroupJoin {
        group: Vec<u8>,
        member: String,
        topics: Vec<Vec<u8>>,
        session_timeout_ms: u64,
        assignor: Assignor,
    },
    GroupHeartbeat {
        group: Vec<u8>,
        member: String,
    },
    GroupLeave {
        group: Vec<u8>,
        member: String,
    },
    /// Commits offsets `(topic, partition, offset)`; refused unless `generation` is current and
    /// the member owns each partition.
    GroupCommit {
        group: Vec<u8>,
        member: String,
        generation: u64,
        offsets: Vec<(Vec<u8>, u32, u64)>,
    },
    /// Drops group members whose session timed out. Proposed by the leader.
    GroupSweep {
        limit: u32,
    },
    /// Merges a batch of another region's change feed (see `docs/regions.md`). Proposed by the
    /// leader that receives the batch, so every replica merges it at the same log position.
    ReplApply {
        batch: ShipBatch,
    },
    /// Forgets KV tombstones stamped below `below` (at most `limit`): every other region has
    /// shipped past that stamp, so no write still to come can be older than them. Proposed by
    /// the leader for the region topology last changed at `topology_at`; applies as a no-op if
    /// the topology changed since (a region added meanwhile was not counted).
    KvTombstoneGc {
        below: u64,
        limit: u32,
        topology_at: u64,
    },
    /// Forgets this region's feed entries at or below `upto` (every other region has them), at
    /// most `limit`. Proposed by the leader.
    ReplTrim {
        upto: u64,
        limit: u32,
    },
    /// KV writes of distinct keys, each applied or refused on its own, in order, all at this
    /// entry's revision (as the operations of an etcd transaction). The SDK coalesces concurrent
    /// puts and deletes into one of these, so one Raft entry and one session answer serve many.
    KvBatch {
        writes: Vec<KvWrite>,
    },
    /// The KV writes of several client requests that reached the leader together, proposed as one
    /// entry (see `server/src/api/merge.rs`). Each part keeps its own session and answer, and is
    /// applied as if it were an entry of its own at this index: its writes share this revision
    /// with the other parts', which is why no key may appear in two parts. Proposed by the
    /// leader, never sent by a client.
    KvMerged {
        parts: Vec<KvPart>,
    },
    /// Changes nothing but the region's applied clock, which moves to this entry's stamp.
    /// Proposed by the leader: about once a second in a region among several while nothing else
    /// is applied (the frontier it ships is the last applied stamp, and other regions collect
    /// tombstones only once every region's frontier has passed them); and before answering a
    /// read that finds a TTL key or lease expired by the leader's clock but not yet by the
    /// applied time, so that expiry is in the log and never undone by a later read elsewhere.
    ClockTick,
    /// Changes the region topology: which regions exist, the home of homed data, the escrow
    /// shares (`apply::topology`). The only way the topology changes, so that every replica
    /// applies every later entry alike, whatever its flags say.
    RegionTopology {
        change: crate::apply::topology::TopologyChange,
    },
}

/// One client request inside an [`Op::KvMerged`]: a `KvPut`, `KvDelete` or `KvBatch`, and the
/// session it came with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPart {
    pub session: Option<Session>,
    pub op: Op,
}

impl KvPart {
    /// The keys the part writes; `None` for an op that may not be a part.
    pub fn keys(&self) -> Option<Vec<&[u8]>> {
        self.op.kv_write_keys()
    }

    /// How many writes the part carries, for the merged entry's limits.
    pub fn writes(&self) -> usize {
        match &self.op {
            Op::KvBatch { writes } => writes.len(),
            _ => 1,
        }
    }

    /// The bytes of keys and values the part carries, for the merged entry's limits.
    pub fn bytes(&self) -> usize {
        match &self.op {
            Op::KvPut { key, value, .. } => key.len() + value.len(),
            Op::KvDelete { key, .. } => key.len(),
            Op::KvBatch { writes } => writes.iter().map(KvWrite::bytes).sum(),
            _ => 0,
        }
    }
}

/// One write of a [`Op::KvBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        expect: Option<Expect>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expect: Option<Expect>,
    },
}

impl KvWrite {
    pub fn key(&self) -> &[u8] {
        match self {
            KvWrite::Put { key, .. } | KvWrite::Delete { key, .. } => key,
        }
    }

    /// The bytes of key and value it carries, for the batch's byte limit.
    pub fn bytes(&self) -> usize {
        match self {
            KvWrite::Put { key, value, .. } => key.len() + value.len(),
            KvWrite::Delete { key, .. } => key.len(),
        }
    }
}

impl Op {
    /// The keys of a KV write request (`KvPut`, `KvDelete`, `KvBatch`): the ops that may be parts
    /// of an [`Op::KvMerged`]. `None` for every other op.
    pub fn kv_write_keys(&self) -> Option<Vec<&[u8]>> {
        match self {
            Op::KvPut { key, .. } | Op::KvDelete { key, .. } => Some(vec![key.as_slice()]),
            Op::KvBatch { writes } => Some(writes.iter().map(KvWrite::key).collect()),
            _ => None,
        }
    }

    /// Whether this op's effects go into the change feed other regions merge: the writes of
    /// multi-region data types. Sweeps are not shipped: every region expires keys itself, at the
    /// same HLC time.
    pub fn replicates(&self) -> bool {
        matches!(
            self,
            Op::KvPut { .. }
                | Op::KvDelete { .. }
                | Op::KvBatch { .. }
                | Op::KvMerged { .. }
                | Op::Counter { .. }
                | Op::RateCheck { .. }
        )
    }

    /// Whether this op writes homed data (ledgers, leases, queues, their sweeps included): it
    /// applies only in the home region, whose feed copies the rows it wrote everywhere else.
    pub fn is_homed(&self) -> bool {
        matches!(
            self,
            Op::LeaseAcquire { .. }
                | Op::LeaseRenew { .. }
                | Op::LeaseRelease { .. }
                | Op::LedgerCreateAccounts { .. }
                | Op::LedgerCreateTransfers { .. }
                | Op::LedgerExpirePending { .. }
                | Op::QueueConfigure { .. }
                | Op::QueueEnqueue { .. }
                | Op::QueueReceive { .. }
                | Op::QueueAck { .. }
                | Op::QueueNack { .. }
                | Op::QueueRedrive { .. }
                | Op::QueueDedupSweep { .. }
        )
    }
}

/// The log entry payload: the leader's HLC stamp plus the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub stamp: HlcStamp,
    pub session: Option<Session>,
    /// When set, the op applies only if this fence is the live grant of its lease.
    pub fence: Option<Fence>,
    pub op: Op,
}

impl Command {
    /// Whether this command fits one log entry ([`crate::limits::ENTRY_COMMAND_BYTES_MAX`]).
    /// Checked before every proposal: a larger one would be refused by the log, stopping the
    /// leader's Raft, where this refusal changes nothing.
    pub fn check_size(&self) -> Result<(), OpError> {
        let max = crate::limits::ENTRY_COMMAND_BYTES_MAX;
        let len = basalt_codec::encoded_len(self);
        if len > max {
            return Err(OpError::EntryTooLarge { len, max });
        }
        Ok(())
    }
}

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

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry.
    None,
    KvPut {
        revision: u64,
        prev_revision: Option<u64>,
    },
    KvDelete {
        revision: u64,
        deleted: bool,
    },
    /// A write whose `Expect` did not hold: nothing changed. `current` is the key's revision now.
    KvConditionFailed {
        current: Option<u64>,
    },
    Counters(Vec<CounterOutcome>),
    RateDecisions(Vec<RateDecision>),
    Lease(LeaseOutcome),
    /// The events that failed, by index in the batch; every other event succeeded.
    AccountResults(Vec<(u32, AccountResult)>),
    TransferResults(Vec<(u32, TransferResult)>),
    PendingExpired {
        expired: u32,
    },
    Swept {
        removed: u32,
    },
    /// `resume_after`: the last client visited when the sweep stopped at its limit (`None`: the
    /// whole table was walked).
    SessionsSwept {
        removed: u32,
        resume_after: Option<u128>,
    },
    QueueConfigured {
        created: bool,
    },
    Enqueued(Vec<EnqueueOutcome>),
    Received(Vec<Delivery>),
    /// An ack or nack took effect.
    QueueDone,
    Redriven {
        moved: u32,
    },
    TopicCreated {
        created: bool,
    },
    Produced(Vec<Produced>),
    Group(GroupView),
    GroupLeft {
        was_member: bool,
    },
    OffsetsCommitted,
    /// A group op refused because the member is gone, whose expiry of it must still take effect
    /// (unlike [`Response::Refused`], the entry's writes are kept).
    GroupRefused(OpError),
    /// A remote feed batch was merged: the watermark for its source is now `upto`; `merged`
    /// entries were new (the others had been merged before).
    ReplApplied {
        upto: u64,
        merged: u32,
    },
    Refused(OpError),
    /// One answer per write of a [`Op::KvBatch`], in order: `KvPut`, `KvDelete`,
    /// `KvConditionFailed` or `Refused`.
    KvBatch(Vec<Response>),
    /// One answer per part of a [`Op::KvMerged`], in order: what the part's op alone would have
    /// been answered.
    KvMerged(Vec<Response>),
    /// A region topology change took effect: the topology now in force.
    Topology(crate::apply::topology::RegionTopology),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.op.fmt(f)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            Op::KvPut {
                key,
                value,
                ttl_ms,
                expect,
            } => write!(
                f,
                "kv put {:?} ({} bytes, ttl {ttl_ms:?}, expect {expect:?})",
                lossy(key),
                value.len()
            ),
            Op::KvDelete { key, expect } => write!(f, "kv delete {:?} (expect {expect:?})", lossy(key)),
            Op::Counter { ops } => match ops.as_slice() {
                [one] => write!(f, "counter {:?} {:?}", lossy(&one.key), one.action),
                many => write!(f, "counter batch of {}", many.len()),
            },
            Op::RateCheck { checks } => write!(f, "rate check batch of {}", checks.len()),
            Op::LeaseAcquire { name, holder, ttl_ms } => {
                write!(
                    f,
                    "lease acquire {:?} by {:?} for {ttl_ms} ms",
                    lossy(name),
                    lossy(holder)
                )
            }
            Op::LeaseRenew {
                name,
                holder,
                token,
                ttl_ms,
            } => write!(
                f,
                "lease renew {:?} by {:?} token {token} for {ttl_ms} ms",
                lossy(name),
                lossy(holder)
            ),
            Op::LeaseRelease { name, holder, token } => {
                write!(
                    f,
                    "lease release {:?} by {:?} token {token}",
                    lossy(name),
                    lossy(holder)
                )
            }
            Op::LedgerCreateAccounts { accounts } => write!(f, "ledger create {} accounts", accounts.len()),
            Op::LedgerCreateTransfers { transfers } => write!(f, "ledger create {} transfers", transfers.len()),
            Op::LedgerExpirePending { limit } => write!(f, "ledger expire pending (limit {limit})"),
            Op::RateSweep { limit } => write!(f, "rate-limit sweep (limit {limit})"),
            Op::KvSweepExpired { limit } => write!(f, "kv sweep expired (limit {limit})"),
            Op::SessionSweep { idle_ms, after, limit } => {
                write!(f, "session sweep (idle {idle_ms} ms, after {after:?}, limit {limit})")
            }
            Op::KvCompact { below, limit } => write!(f, "kv compact below {below} (limit {limit})"),
            Op::QueueConfigure { queue, config } => write!(f, "queue configure {:?} {config:?}", lossy(queue)),
            Op::QueueEnqueue { queue, messages } => {
                write!(f, "queue enqueue {} into {:?}", messages.len(), lossy(queue))
            }
            Op::QueueReceive { queue, max, .. } => write!(f, "queue receive up to {max} from {:?}", lossy(queue)),
            Op::QueueAck { queue, receipt } => write!(f, "queue ack {receipt:?} in {:?}", lossy(queue)),
            Op::QueueNack {
                queue,
                receipt,
                delay_ms,
            } => {
                write!(f, "queue nack {receipt:?} in {:?} (delay {delay_ms} ms)", lossy(queue))
            }
            Op::QueueRedrive { queue, max } => write!(f, "queue redrive up to {max} from {:?}", lossy(queue)),
            Op::QueueDedupSweep { limit } => write!(f, "queue dedup sweep (limit {limit})"),
            Op::StreamCreateTopic { topic, config } => write!(f, "stream create {:?} {config:?}", lossy(topic)),
            Op::StreamProduce {
                topic,
                records,
                producer,
            } => {
                write!(
                    f,
                    "stream produce {} to {:?} (producer {producer:?})",
                    records.len(),
                    lossy(topic)
                )
            }
            Op::StreamRetention { limit } => write!(f, "stream retention (limit {limit})"),
            Op::GroupJoin { group, member, .. } => write!(f, "group {:?} join {member:?}", lossy(group)),
            Op::GroupHeartbeat { group, member } => write!(f, "group {:?} heartbeat {member:?}", lossy(group)),
            Op::GroupLeave { group, member } => write!(f, "group {:?} leave {member:?}", lossy(group)),
            Op::GroupCommit {
                group, member, offsets, ..
            } => {
                write!(
                    f,
                    "group {:?} commit {} offsets by {member:?}",
                    lossy(group),
                    offsets.len()
                )
            }
            Op::GroupSweep { limit } => write!(f, "group sweep (limit {limit})"),
            Op::ReplApply { batch } => write!(
                f,
                "merge {} feed entries of region {} up to {}{}",
                batch.entries.len(),
                batch.source,
                batch.upto,
                if batch.resync { " (re-sync)" } else { "" }
            ),
            Op::ReplTrim { upto, limit } => write!(f, "feed trim up to {upto} (limit {limit})"),
            Op::KvBatch { writes } => write!(f, "kv batch of {} writes", writes.len()),
            Op::KvMerged { parts } => write!(f, "kv writes of {} requests", parts.len()),
            Op::KvTombstoneGc { below, limit, .. } => write!(f, "kv tombstones below stamp {below} (limit {limit})"),
            Op::ClockTick => write!(f, "clock tick"),
            Op::RegionTopology { change } => change.fmt(f),
        }
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::state::KvRecord;

    /// Keys and values are `serde_bytes` for speed: the codec writes a byte string exactly as it
    /// writes a sequence of `u8`, so the choice is not part of the data format.
    #[test]
    fn byte_strings_encode_as_the_byte_sequences_did() {
        #[derive(Serialize)]
        enum OldOp {
            KvPut {
                key: Vec<u8>,
                value: Vec<u8>,
                ttl_ms: Option<u64>,
                expect: Option<Expect>,
            },
        }
        let new = Op::KvPut {
            key: b"key".to_vec(),
            value: vec![7; 300],
            ttl_ms: Some(5),
            expect: Some(Expect::Revision(9)),
        };
        let old = OldOp::KvPut {
            key: b"key".to_vec(),
            value: vec![7; 300],
            ttl_ms: Some(5),
            expect: Some(Expect::Revision(9)),
        };
        let encoded = basalt_codec::encode(&new);
        assert_eq!(encoded, basalt_codec::encode(&old));
        assert_eq!(basalt_codec::decode::<Op>(&encoded).expect("decode"), new);

        #[derive(Serialize)]
        struct OldRecord {
            value: Vec<u8>,
            create_revision: u64,
            mod_revision: u64,
            version: u64,
            expires_at_ms: Option<u64>,
            written: basalt_replication::Version,
        }
        let written = basalt_replication::Version::new(11, 2);
        let record = KvRecord {
            value: b"hello".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            expires_at_ms: None,
            written,
        };
        let old = OldRecord {
            value: b"hello".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            expires_at_ms: None,
            written,
        };
        assert_eq!(record.encode(), basalt_codec::encode(&old));
    }
}
