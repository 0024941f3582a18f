//! Validation of an op before it is proposed: every bad input refused here with a typed
//! [`OpError`], so nothing that apply would refuse for its shape reaches the log.

use super::{counter, group, kv, lease, queue, rate, stream, topology};
use crate::command::{Op, OpError};
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
        Op::KvPut { key, value, ttl_ms, .. } => kv::validate_put(key, value, *ttl_ms),
        Op::KvDelete { key, .. } => check_key(key),
        Op::KvBatch { writes } => {
            kv::validate_batch(writes)?;
            writes.iter().try_for_each(kv::validate_write)
        }
        Op::KvMerged { parts } => {
            kv::validate_merged(parts)?;
            parts.iter().try_for_each(|part| validate_op(&part.op))
        }
        Op::Counter { ops } => counter::validate(ops),
        Op::RegionTopology { change } => topology::validate(change),
        Op::RateCheck { checks } => rate::validate(checks),
        Op::LeaseAcquire { name, holder, ttl_ms } => lease::validate(name, holder, *ttl_ms),
        Op::LeaseRenew {
            name, holder, ttl_ms, ..
        } => lease::validate(name, holder, *ttl_ms),
        Op::LeaseRelease { name, holder, .. } => lease::validate(name, holder, 1),
        Op::LedgerCreateAccounts { accounts } => check_batch(accounts.len()),
        Op::LedgerCreateTransfers { transfers } => check_batch(transfers.len()),
        Op::QueueConfigure { queue, config } => queue::validate_configure(queue, config),
        Op::QueueEnqueue { queue, messages } => queue::validate_enqueue(queue, messages),
        Op::QueueReceive {
            queue,
            max,
            visibility_timeout_ms,
        } => queue::validate_receive(queue, *max, *visibility_timeout_ms),
        Op::QueueAck { queue, .. } => queue::check_name("queue name", queue),
        Op::QueueNack { queue, delay_ms, .. } => queue::validate_nack(queue, *delay_ms),
        Op::QueueRedrive { queue, max } => queue::validate_receive(queue, *max, None),
        Op::StreamCreateTopic { topic, config } => stream::validate_topic(topic, config),
        Op::StreamProduce {
            topic,
            records,
            producer,
        } => stream::validate_produce(topic, records, *producer),
        Op::GroupJoin {
            group,
            member,
            topics,
            session_timeout_ms,
            ..
        } => group::validate_join(group, member, topics, *session_timeout_ms),
        Op::GroupHeartbeat { group, member } | Op::GroupLeave { group, member } => {
            queue::check_name("group name", group).and_then(|_| queue::check_name("member id", member.as_bytes()))
        }
        Op::GroupCommit {
            group, member, offsets, ..
        } => queue::check_name("group name", group)
            .and_then(|_| queue::check_name("member id", member.as_bytes()))
            .and_then(|_| check_batch(offsets.len())),
        Op::KvSweepExpired { .. }
        | Op::SessionSweep { .. }
        | Op::LedgerExpirePending { .. }
        | Op::RateSweep { .. }
        | Op::KvCompact { .. }
        | Op::QueueDedupSweep { .. }
        | Op::StreamRetention { .. }
        | Op::GroupSweep { .. }
        | Op::ReplTrim { .. }
        | Op::KvTombstoneGc { .. }
        | Op::ClockTick => Ok(()),
        Op::ReplApply { batch } => {
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
