//! [`Op`]: every operation a command carries, one variant per operation of every data type, and
//! how each is named in logs.
//!
//! Variants are encoded by position (docs/data-format.md): a new one goes last.

use serde::{Deserialize, Serialize};

use basalt_replication::ShipBatch;

use super::{CounterOp, Expect, KvPart, KvWrite, RateCheck};
use crate::ledger::{Account, Transfer};
use crate::queue::{NewMessage, QueueConfig, Receipt};
use crate::stream::{Assignor, ProduceRecord, TopicConfig};

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
