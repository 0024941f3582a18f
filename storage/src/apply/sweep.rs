//! Sweeps: the entries a leader proposes on its own to expire what is due (KV keys, rate-limit
//! state, windowed-counter buckets, pending transfers, queue dedup ids, group members) and to go
//! on with deletions (topics, queues), found from the store alone.

use super::{queue, stream, RegionRole};
use crate::command::{GroupOp, KvOp, LedgerOp, Op, QueueOp, RateOp, StreamOp};
use crate::limits::{QUEUE_DELETE_ROWS_MAX, QUEUE_INDEX_ROWS_MAX};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// Most keys one sweep entry removes; the rest go with the next one.
pub const SWEEP_ITEMS_MAX: u32 = 1000;

/// The sweeps the leader should propose now: one per time-indexed table whose earliest entry is
/// due at `now_ms`. Each index starts with a big-endian due time; only the ledger's is in
/// nanoseconds.
pub fn sweeps_due<S: StoreRead + ?Sized>(store: &S, now_ms: u64, region: RegionRole) -> Result<Vec<Op>, StoreError> {
    let tables = [
        (
            Table::KvExpiry,
            now_ms,
            Op::Kv(KvOp::SweepExpired { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::RateExpiry,
            now_ms,
            Op::Rate(RateOp::Sweep { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::RateGlobalExpiry,
            now_ms,
            Op::Rate(RateOp::Sweep { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::LedgerExpiry,
            now_ms.saturating_mul(1_000_000),
            Op::Ledger(LedgerOp::ExpirePending { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::QueueDedupExpiry,
            now_ms,
            Op::Queue(QueueOp::DedupSweep { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::StreamGroupExpiry,
            now_ms,
            Op::Group(GroupOp::Sweep { limit: SWEEP_ITEMS_MAX }),
        ),
        (
            Table::CounterWindowExpiry,
            now_ms,
            Op::CounterSweep { limit: SWEEP_ITEMS_MAX },
        ),
    ];
    let mut due = Vec::new();
    for (table, now, op) in tables {
        let first = store.scan(table, &KeyRange::all(), 1)?;
        let earliest = first
            .first()
            .and_then(|(k, _)| k.get(..8))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        // Homed data is swept by its home, whose feed brings the result here.
        if earliest.is_some_and(|at| at <= now) && (region.is_home() || !op.is_homed()) && !due.contains(&op) {
            due.push(op);
        }
    }
    if stream::retention_due(store, now_ms)? {
        due.push(Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX }));
    }
    // Queues are homed: their home removes a deleted queue's rows, and builds the index its
    // deletions check (once, on queues a build before the index wrote).
    if region.is_home() && queue::deletions_due(store)? {
        due.push(Op::Queue(QueueOp::ContinueDeletes {
            limit: QUEUE_DELETE_ROWS_MAX,
        }));
    }
    if region.is_home() && queue::dead_letter_index_due(store)? {
        due.push(Op::Queue(QueueOp::BuildDeadLetterIndex {
            limit: QUEUE_INDEX_ROWS_MAX,
        }));
    }
    Ok(due)
}

/// The entry that goes on with `op`'s paged work within a tick (see [`more_due`]): the same,
/// except that stream retention's follow-ups go on with topic deletions and the removal of
/// batches trims hid only.
pub fn follow_up(op: &Op) -> Op {
    match op {
        Op::Stream(StreamOp::Retention { .. }) => Op::Stream(StreamOp::Retention { limit: 0 }),
        other => other.clone(),
    }
}

/// Whether `op`, a sweep just applied, has more of its work due at once: paged work that is not
/// bound to a time (deletions of topics and queues, batches stream trims hid, the dead-letter
/// index build), which the
/// leader goes on with for several entries a tick rather than one a second.
pub fn more_due<S: StoreRead + ?Sized>(store: &S, op: &Op) -> Result<bool, StoreError> {
    match op {
        Op::Queue(QueueOp::ContinueDeletes { .. }) => queue::deletions_due(store),
        Op::Queue(QueueOp::BuildDeadLetterIndex { .. }) => queue::dead_letter_index_due(store),
        Op::Stream(StreamOp::Retention { .. }) => Ok(stream::deletions_due(store)? || stream::trims_pending(store)?),
        _ => Ok(false),
    }
}
