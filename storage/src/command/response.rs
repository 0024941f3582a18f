//! [`Response`]: what applying one command yields, saved as the session answer. Encoded by
//! position: a new variant goes last.

use serde::{Deserialize, Serialize};

use super::{CounterOutcome, LeaseOutcome, OpError, QueueError, RateDecision};
use crate::ledger::{AccountResult, TransferResult};
use crate::queue::{Delivery, EnqueueOutcome};
use crate::stream::{GroupView, Produced};

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
    /// One answer per write of a [`crate::command::KvOp::Batch`], in order: `KvPut`, `KvDelete`,
    /// `KvConditionFailed` or `Refused`.
    KvBatch(Vec<Response>),
    /// One answer per part of a [`crate::command::KvOp::Merged`], in order: what the part's op alone would have
    /// been answered.
    KvMerged(Vec<Response>),
    /// A region topology change took effect: the topology now in force.
    Topology(crate::apply::topology::RegionTopology),
    /// A purge was recorded as the region's purge number `seq`: once a node's edge has followed
    /// the purge table to `seq`, it no longer serves what the purge matches.
    CachePurged {
        seq: u64,
    },
    /// A transaction applied the ops of `branch` (`Then`: every condition held), all of them:
    /// one answer per op, in order, as the op alone would have been answered.
    Txn {
        branch: super::Branch,
        results: Vec<Response>,
    },
    /// A transaction chose `branch`, whose op `op` was refused (`answer`: what that op alone
    /// would have been answered, a refusal or a failed outcome): nothing of it applied.
    TxnAborted {
        branch: super::Branch,
        op: u32,
        answer: Box<Response>,
    },
    /// A [`crate::command::KvOp::Get`] inside a transaction: the live record, if any.
    KvRecord(Option<crate::state::KvRecord>),
    /// An extended delivery is invisible until `invisible_until_ms`.
    QueueExtended {
        invisible_until_ms: u64,
    },
    /// One answer per receipt of an ack batch, in order: `None` acknowledged, or why not.
    QueueAcked(Vec<Option<QueueError>>),
    /// A purge entry removed `removed` messages with ids at most `upto_id`; `more` when some are
    /// left (purge again with the same `upto_id`).
    QueuePurged {
        removed: u32,
        more: bool,
        upto_id: u64,
    },
    /// A topic was deleted; `finished` when all its rows are gone already (otherwise the leader's
    /// retention entries remove the rest, and the name stays reserved until then).
    TopicDeleted {
        finished: bool,
    },
    /// A queue was deleted; `finished` when all its rows are gone already (otherwise the leader's
    /// [`crate::command::QueueOp::ContinueDeletes`] entries remove the rest, and the name stays
    /// reserved until then).
    QueueDeleted {
        finished: bool,
    },
    /// Where each produced record landed, with the stamp of the batch it is in (the entry's time
    /// for new records; a retry answers its first batch's stamp, or 0 if retention or a trim
    /// removed it). Produce answers this since Redis stream ids were built on it; an older build's
    /// sessions may still hold [`Response::Produced`].
    ProducedStamped(Vec<(Produced, u64)>),
    /// A stream trim hid `removed` records.
    Trimmed {
        removed: u64,
    },
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
