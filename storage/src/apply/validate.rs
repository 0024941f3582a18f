//! Validation of an op before it is proposed: every bad input refused here with a typed
//! [`OpError`], so nothing that apply would refuse for its shape reaches the log.

use super::{cache, counter, group, kv, lease, queue, rate, stream, topology, txn};
use crate::command::{
    CacheOp, GroupOp, KvError, KvOp, LeaseOp, LedgerOp, Op, OpError, QueueOp, RateOp, RegionOp, StreamOp,
};
use crate::limits::{BATCH_ITEMS_MAX, KEY_BYTES_MAX};

/// Checks a batch's size: non-empty, at most [`BATCH_ITEMS_MAX`].
pub fn check_batch(len: usize) -> Result<(), OpError> {
    if len == 0 {
        return Err(OpError::Empty { what: "batch".into() });
    }
    if len > BATCH_ITEMS_MAX {
        return Err(OpError::BatchTooLarge {
            len,
            max: BATCH_ITEMS_MAX,
        });
    }
    Ok(())
}

/// Checks a key against the limits every data type shares (non-empty, at most `KEY_BYTES_MAX`).
pub fn check_key(key: &[u8]) -> Result<(), OpError> {
    if key.is_empty() {
        return Err(OpError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(OpError::KeyTooLarge {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Validates an operation before it is proposed, so bad input never reaches the log. Apply checks
/// again (a refused entry changes nothing), because an entry may come from an older client.
pub fn validate_op(op: &Op) -> Result<(), OpError> {
    match op {
        Op::Kv(KvOp::Put { key, value, ttl_ms, .. }) => kv::validate_put(key, value, *ttl_ms),
        Op::Kv(KvOp::PutKeepTtl { key, value, .. }) => kv::validate_put(key, value, None),
        Op::Kv(KvOp::Delete { key, .. }) => check_key(key),
        Op::Kv(KvOp::Batch { writes }) => {
            kv::validate_batch(writes)?;
            writes.iter().try_for_each(kv::validate_write)
        }
        Op::Kv(KvOp::Merged { parts }) => {
            kv::validate_merged(parts)?;
            parts.iter().try_for_each(|part| validate_op(&part.op))
        }
        Op::Kv(op @ KvOp::Get { .. }) => Err(OpError::Kv(KvError::OnlyInTxn { op: op.to_string() })),
        Op::Txn(t) => txn::validate(t),
        Op::Counter { ops } => counter::validate(ops),
        Op::Cache(CacheOp::Purge { target }) => cache::validate_purge(target),
        Op::Region(RegionOp::Topology { change }) => topology::validate(change),
        Op::Rate(RateOp::Check { checks }) => rate::validate(checks),
        Op::Lease(LeaseOp::Acquire { name, holder, ttl_ms }) => lease::validate(name, holder, *ttl_ms),
        Op::Lease(LeaseOp::Renew {
            name, holder, ttl_ms, ..
        }) => lease::validate(name, holder, *ttl_ms),
        Op::Lease(LeaseOp::Release { name, holder, .. }) => lease::validate(name, holder, 1),
        Op::Ledger(LedgerOp::CreateAccounts { accounts }) => check_batch(accounts.len()),
        Op::Ledger(LedgerOp::CreateTransfers { transfers }) => check_batch(transfers.len()),
        Op::Queue(QueueOp::Configure { queue, config }) => queue::validate_configure(queue, config),
        Op::Queue(QueueOp::Enqueue { queue, messages }) => queue::validate_enqueue(queue, messages),
        Op::Queue(QueueOp::Receive {
            queue,
            max,
            visibility_timeout_ms,
        }) => queue::validate_receive(queue, *max, *visibility_timeout_ms),
        Op::Queue(QueueOp::Ack { queue, .. }) => queue::check_name("queue name", queue),
        Op::Queue(QueueOp::Nack { queue, delay_ms, .. }) => queue::validate_nack(queue, *delay_ms),
        Op::Queue(QueueOp::Redrive { queue, max }) => queue::validate_receive(queue, *max, None),
        Op::Queue(QueueOp::Extend {
            queue,
            visibility_timeout_ms,
            ..
        }) => queue::validate_extend(queue, *visibility_timeout_ms),
        Op::Queue(QueueOp::AckBatch { queue, receipts }) => queue::validate_ack_batch(queue, receipts),
        Op::Queue(QueueOp::Purge { queue, limit, .. }) => queue::validate_purge(queue, *limit),
        Op::Queue(QueueOp::Delete { queue }) => queue::check_name("queue name", queue),
        Op::Stream(StreamOp::CreateTopic { topic, config }) => stream::validate_topic(topic, config),
        Op::Stream(StreamOp::DeleteTopic { topic }) => stream::validate_delete(topic),
        Op::Stream(StreamOp::Trim { topic, .. }) => stream::validate_trim(topic),
        Op::Stream(StreamOp::Produce {
            topic,
            records,
            producer,
        }) => stream::validate_produce(topic, records, *producer),
        Op::Group(GroupOp::Join {
            group,
            member,
            topics,
            session_timeout_ms,
            ..
        }) => group::validate_join(group, member, topics, *session_timeout_ms),
        Op::Group(GroupOp::Heartbeat { group, member }) | Op::Group(GroupOp::Leave { group, member }) => {
            queue::check_name("group name", group).and_then(|_| queue::check_name("member id", member.as_bytes()))
        }
        Op::Group(GroupOp::Commit {
            group, member, offsets, ..
        }) => queue::check_name("group name", group)
            .and_then(|_| queue::check_name("member id", member.as_bytes()))
            .and_then(|_| check_batch(offsets.len())),
        Op::Kv(KvOp::SweepExpired { .. })
        | Op::SessionSweep { .. }
        | Op::Ledger(LedgerOp::ExpirePending { .. })
        | Op::Rate(RateOp::Sweep { .. })
        | Op::Kv(KvOp::Compact { .. })
        | Op::Queue(QueueOp::DedupSweep { .. })
        | Op::Queue(QueueOp::ContinueDeletes { .. })
        | Op::Queue(QueueOp::BuildDeadLetterIndex { .. })
        | Op::Stream(StreamOp::Retention { .. })
        | Op::Group(GroupOp::Sweep { .. })
        | Op::CounterSweep { .. }
        | Op::Region(RegionOp::TrimFeed { .. })
        | Op::Kv(KvOp::TombstoneGc { .. })
        | Op::ClockTick => Ok(()),
        Op::Auth(op) => super::auth::validate(op),
        Op::Region(RegionOp::MergeFeed { batch }) => {
            if batch.entries.len() > BATCH_ITEMS_MAX {
                return Err(OpError::BatchTooLarge {
                    len: batch.entries.len(),
                    max: BATCH_ITEMS_MAX,
                });
            }
            Ok(())
        }
    }
}
