//! [`Op`]: every operation a command carries, one variant per data type (each type's own enum is
//! in its module: [`super::kv`], [`super::rate`], ...), plus the two that belong to no type.
//!
//! Variants, here and in each type's enum, are encoded by position (docs/data-format.md): a new
//! one goes last.

use serde::{Deserialize, Serialize};

use super::{AuthOp, CacheOp, CounterOp, GroupOp, KvOp, LeaseOp, LedgerOp, QueueOp, RateOp, RegionOp, StreamOp, Txn};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Kv(KvOp),
    /// Counter changes, each applied or refused on its own, in order.
    Counter {
        ops: Vec<CounterOp>,
    },
    Rate(RateOp),
    Lease(LeaseOp),
    Ledger(LedgerOp),
    Queue(QueueOp),
    Stream(StreamOp),
    Group(GroupOp),
    Region(RegionOp),
    /// Forgets the sessions of clients idle for at least `idle_ms` (judged by the entry stamp),
    /// visiting at most `limit` clients with ids after `after` (`None`: from the first). Proposed by
    /// the leader from time to time, walking the table with the cursor it gets back.
    SessionSweep {
        idle_ms: u64,
        after: Option<u128>,
        limit: u32,
    },
    /// Changes nothing but the region's applied clock, which moves to this entry's stamp.
    /// Proposed by the leader: about once a second in a region among several while nothing else
    /// is applied (the frontier it ships is the last applied stamp, and other regions collect
    /// tombstones only once every region's frontier has passed them); and before answering a
    /// read that finds a TTL key or lease expired by the leader's clock but not yet by the
    /// applied time, so that expiry is in the log and never undone by a later read elsewhere.
    ClockTick,
    Cache(CacheOp),
    /// Conditions, then one of two op lists, all or nothing in this one entry (see [`Txn`]).
    Txn(Txn),
    /// Forgets windowed-counter buckets past their retention (judged by the entry stamp), at most
    /// `limit` of them. Proposed by the leader; every region sweeps its own buckets.
    CounterSweep {
        limit: u32,
    },
    /// Users and roles: the access model this region's doors enforce. Region-local (not in the
    /// change feed); not allowed in a transaction.
    Auth(AuthOp),
}

impl Op {
    /// The keys of a KV write request ([`KvOp::write_keys`]): the ops that may be parts of a
    /// [`KvOp::Merged`]. `None` for every other op.
    pub fn kv_write_keys(&self) -> Option<Vec<&[u8]>> {
        match self {
            Op::Kv(op) => op.write_keys(),
            _ => None,
        }
    }

    /// Whether this op's effects go into the change feed other regions merge: the writes of
    /// multi-region data types (KV, counters, rate limits). Upkeep is not shipped: every region
    /// expires keys itself, at the same HLC time.
    pub fn replicates(&self) -> bool {
        match self {
            Op::Kv(op) => op.replicates(),
            Op::Counter { .. } => true,
            Op::Rate(op) => op.replicates(),
            // A purge made here goes to every region; one merged from elsewhere is not an
            // `Op::Cache` and is not shipped again.
            Op::Cache(CacheOp::Purge { .. }) => true,
            Op::Txn(txn) => txn.replicates(),
            _ => false,
        }
    }

    /// Whether this op writes homed data (ledgers, leases, queues, their sweeps included): it
    /// applies only in the home region, whose feed copies the rows it wrote everywhere else.
    pub fn is_homed(&self) -> bool {
        match self {
            Op::Lease(_) | Op::Ledger(_) | Op::Queue(_) => true,
            Op::Txn(txn) => txn.is_homed(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            Op::Kv(op) => op.fmt(f),
            Op::Counter { ops } => match ops.as_slice() {
                [one] => write!(f, "counter {:?} {:?}", lossy(&one.key), one.action),
                many => write!(f, "counter batch of {}", many.len()),
            },
            Op::Rate(op) => op.fmt(f),
            Op::Lease(op) => op.fmt(f),
            Op::Ledger(op) => op.fmt(f),
            Op::Queue(op) => op.fmt(f),
            Op::Stream(op) => op.fmt(f),
            Op::Group(op) => op.fmt(f),
            Op::Region(op) => op.fmt(f),
            Op::SessionSweep { idle_ms, after, limit } => {
                write!(f, "session sweep (idle {idle_ms} ms, after {after:?}, limit {limit})")
            }
            Op::ClockTick => write!(f, "clock tick"),
            Op::Cache(op) => op.fmt(f),
            Op::Txn(txn) => txn.fmt(f),
            Op::CounterSweep { limit } => write!(f, "counter window sweep (limit {limit})"),
            Op::Auth(op) => op.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{LeaseError, LeaseLoss, OpError};
    use basalt_codec::encode;

    /// The nested layout of data format 3, pinned (docs/data-format.md): an op is its data
    /// type's index in [`Op`], then the op's index in that type's enum, then its fields; a
    /// refusal of one type is its index in [`OpError`], then the type's error.
    #[test]
    fn ops_and_refusals_encode_as_documented() {
        let put = Op::Kv(KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_ms: Some(300),
            expect: None,
        });
        assert_eq!(
            encode(&put),
            [0x00, 0x00, 0x01, b'k', 0x01, b'v', 0x01, 0xac, 0x02, 0x00]
        );
        assert_eq!(encode(&Op::ClockTick), [0x0a]);
        let stale = OpError::Lease(LeaseError::StaleFence {
            lease: "l".into(),
            token: 7,
            reason: LeaseLoss::NotHeld,
        });
        assert_eq!(encode(&stale), [0x0e, 0x00, 0x01, b'l', 0x07, 0x00]);
    }
}
