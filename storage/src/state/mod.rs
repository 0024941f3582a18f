//! The state store: RocksDB with one column family per data type, behind [`StoreRead`] so the apply
//! logic can run against an in-memory model in tests.

pub mod cache;
pub mod model;
pub mod rocks;
pub mod snapshot;

use basalt_replication::{LwwValue, Version};
use serde::{Deserialize, Serialize};

/// A column family. Each data type owns one; `Meta` holds the applied log id and membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Meta,
    Kv,
    /// `(expires_at_ms BE, key)` for every KV key with a TTL, so expiry sweeps read only what is due.
    KvExpiry,
    Counter,
    Session,
    /// Lease name -> its current grant.
    Lease,
    /// Rate-limit key -> its window or bucket state.
    RateLimit,
    /// `(forget_at_ms BE, rate-limit key)`: when each key's state may be forgotten.
    RateExpiry,
    /// Account id (16 bytes BE) -> account.
    LedgerAccount,
    /// Transfer id (16 bytes BE) -> transfer and, if pending, its status.
    LedgerTransfer,
    /// `(expires_at timestamp BE, transfer id)` for every pending transfer with a timeout.
    LedgerExpiry,
    /// `(account id, timestamp BE)` -> `(transfer id, side)`: an account's transfers in order.
    LedgerAccountTransfers,
    /// `(account id, timestamp BE)` -> balances, for accounts with the history flag.
    LedgerHistory,
    /// `(revision BE, key)` -> [`KvEvent`]: the KV change history watchers read, compacted from the
    /// oldest end.
    KvHistory,
    /// Queue name -> its settings and counts. Names in every queue and stream key are prefixed by
    /// their length (one byte), so one name is never a prefix of another's keys.
    Queue,
    /// `(queue, message id BE)` -> message.
    QueueMessage,
    /// `(queue, 255 - priority, message id BE)`: visible messages, highest priority first, FIFO.
    QueueReady,
    /// `(queue, visible_at_ms BE, message id BE)`: delayed, in-flight and nacked messages.
    QueueDelayed,
    /// `(queue, dedup id)` -> the message id it produced and when it is forgotten.
    QueueDedup,
    /// `(forget_at_ms BE, queue, dedup id)`: when each dedup id may be forgotten.
    QueueDedupExpiry,
    /// Topic name -> its settings.
    StreamTopic,
    /// `(topic, partition BE)` -> the partition's offsets and size.
    StreamPartition,
    /// `(topic, partition BE, base offset BE)` -> one batch of records.
    StreamBatch,
    /// `(topic, partition BE, producer id BE)` -> the producer's last batch there.
    StreamProducer,
    /// Group name -> members, generation and assignment.
    StreamGroup,
    /// `(group, topic, partition BE)` -> committed offset.
    StreamOffset,
    /// `(deadline_ms BE, group)`: each group's earliest member deadline.
    StreamGroupExpiry,
    /// KV key -> the [`Version`] of the delete (or expiry) that removed it, so that an older
    /// write arriving from another region cannot bring it back. Kept only in multi-region mode.
    KvTombstone,
    /// `(tombstone stamp BE, key)`: tombstones in stamp order, for their collection. An entry may
    /// outlive its tombstone (a later write replaced it); collection checks.
    KvTombstoneByStamp,
    /// `(log index BE)` -> [`basalt_replication::FeedEntry`]: this region's change feed, kept
    /// until every other region has acknowledged it.
    ReplFeed,
    /// Source region (u16 BE) -> [`crate::apply::replication::SourceState`]: how far this region
    /// has merged each other region's feed.
    ReplSource,
    /// Rate-limit key -> every region's count of its global sliding window.
    RateGlobal,
    /// `(forget_at_ms BE, rate-limit key)`: when each global key's counts may be forgotten.
    RateGlobalExpiry,
    /// Counter key -> escrow its regions gave each other ([`basalt_replication::EscrowTransfers`]).
    CounterEscrow,
    /// Purge number (u64 BE) -> an edge-cache purge ([`crate::apply::cache::PurgeRecord`]): the
    /// last [`crate::limits::CACHE_PURGES_KEPT_MAX`] purges made in or merged into this region,
    /// which every node's edge follows.
    CachePurge,
    /// `(key length u16 BE, key, window ms BE, window start ms BE, retention ms BE)` -> one
    /// bucket of a windowed counter, a [`basalt_replication::PnCounter`]
    /// (`crate::apply::counter_window`).
    CounterWindow,
    /// `(forget_at_ms BE, bucket key)`: when each windowed-counter bucket is forgotten.
    CounterWindowExpiry,
    /// Topic name -> a topic being deleted: its settings as they were and how far the removal of
    /// its rows has come (`crate::apply::stream`). The name cannot be created again until done.
    StreamTopicDeleting,
    /// Queue name -> where the removal of its rows stands (a `DeletionCursor`; empty: from the
    /// first row left): a queue being deleted, whose rows the leader's
    /// `QueueOp::ContinueDeletes` entries still remove (`crate::apply::queue`). The name cannot
    /// be created again until done.
    QueueDeleting,
    /// `(dead-letter queue, source queue)`, both length-prefixed: which queues
    /// name a queue as their dead-letter queue, so deleting it can be refused while one does.
    QueueDeadLetterSource,
    /// `(queue, message id BE)` -> nothing: the dead letters a queue holds (messages moved into it
    /// after their deliveries ran out), which a redrive walks instead of the whole queue.
    QueueDeadLetter,
    /// `r/NAME` -> a role, `u/NAME` -> a user (`crate::apply::auth`): who may do what at this
    /// region's doors.
    Auth,
}

impl Table {
    pub const ALL: [Table; 42] = [
        Table::Meta,
        Table::Kv,
        Table::KvExpiry,
        Table::Counter,
        Table::Session,
        Table::Lease,
        Table::RateLimit,
        Table::RateExpiry,
        Table::LedgerAccount,
        Table::LedgerTransfer,
        Table::LedgerExpiry,
        Table::LedgerAccountTransfers,
        Table::LedgerHistory,
        Table::KvHistory,
        Table::Queue,
        Table::QueueMessage,
        Table::QueueReady,
        Table::QueueDelayed,
        Table::QueueDedup,
        Table::QueueDedupExpiry,
        Table::StreamTopic,
        Table::StreamPartition,
        Table::StreamBatch,
        Table::StreamProducer,
        Table::StreamGroup,
        Table::StreamOffset,
        Table::StreamGroupExpiry,
        Table::KvTombstone,
        Table::KvTombstoneByStamp,
        Table::ReplFeed,
        Table::ReplSource,
        Table::RateGlobal,
        Table::RateGlobalExpiry,
        Table::CounterEscrow,
        Table::CachePurge,
        Table::CounterWindow,
        Table::CounterWindowExpiry,
        Table::StreamTopicDeleting,
        Table::QueueDeleting,
        Table::QueueDeadLetterSource,
        Table::QueueDeadLetter,
        Table::Auth,
    ];

    /// Whether rows are built by appending within one entry (see `WriteSet::append`): the KV
    /// history, one row per revision holding all of its changes.
    pub fn is_appended(self) -> bool {
        self == Table::KvHistory
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Kv => "kv",
            Table::KvExpiry => "kv_expiry",
            Table::Counter => "counter",
            Table::Session => "session",
            Table::Lease => "lease",
            Table::RateLimit => "rate_limit",
            Table::RateExpiry => "rate_expiry",
            Table::LedgerAccount => "ledger_account",
            Table::LedgerTransfer => "ledger_transfer",
            Table::LedgerExpiry => "ledger_expiry",
            Table::LedgerAccountTransfers => "ledger_account_transfers",
            Table::LedgerHistory => "ledger_history",
            Table::KvHistory => "kv_history",
            Table::Queue => "queue",
            Table::QueueMessage => "queue_message",
            Table::QueueReady => "queue_ready",
            Table::QueueDelayed => "queue_delayed",
            Table::QueueDedup => "queue_dedup",
            Table::QueueDedupExpiry => "queue_dedup_expiry",
            Table::StreamTopic => "stream_topic",
            Table::StreamPartition => "stream_partition",
            Table::StreamBatch => "stream_batch",
            Table::StreamProducer => "stream_producer",
            Table::StreamGroup => "stream_group",
            Table::StreamOffset => "stream_offset",
            Table::StreamGroupExpiry => "stream_group_expiry",
            Table::KvTombstone => "kv_tombstone",
            Table::KvTombstoneByStamp => "kv_tombstone_by_stamp",
            Table::ReplFeed => "repl_feed",
            Table::ReplSource => "repl_source",
            Table::RateGlobal => "rate_global",
            Table::RateGlobalExpiry => "rate_global_expiry",
            Table::CounterEscrow => "counter_escrow",
            Table::CachePurge => "cache_purge",
            Table::CounterWindow => "counter_window",
            Table::CounterWindowExpiry => "counter_window_expiry",
            Table::StreamTopicDeleting => "stream_topic_deleting",
            Table::QueueDeleting => "queue_deleting",
            Table::QueueDeadLetterSource => "queue_dead_letter_source",
            Table::QueueDeadLetter => "queue_dead_letter",
            Table::Auth => "auth",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The tables of homed data (ledgers, leases, queues): written only in their home region, and
    /// copied row by row into every other region (see `Effect::Row`).
    pub const HOMED: [Table; 15] = [
        Table::Lease,
        Table::LedgerAccount,
        Table::LedgerTransfer,
        Table::LedgerExpiry,
        Table::LedgerAccountTransfers,
        Table::LedgerHistory,
        Table::Queue,
        Table::QueueMessage,
        Table::QueueReady,
        Table::QueueDelayed,
        Table::QueueDedup,
        Table::QueueDedupExpiry,
        Table::QueueDeleting,
        Table::QueueDeadLetterSource,
        Table::QueueDeadLetter,
    ];

    pub fn is_homed(self) -> bool {
        Table::HOMED.contains(&self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb {op}: {source}")]
    Rocks {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in {table:?} at key {key}: {reason}")]
    CorruptRecord { table: Table, key: String, reason: String },
    #[error("corrupt snapshot {path}: {reason}")]
    CorruptSnapshot { path: std::path::PathBuf, reason: String },
    /// A snapshot pack written by a build of another data format (a node of another Basalt
    /// build in the region): its records would be misread, so it is refused whole.
    #[error("snapshot {path} is of {mismatch}")]
    SnapshotFormat {
        path: std::path::PathBuf,
        mismatch: basalt_codec::FormatMismatch,
    },
    /// A snapshot is being installed: the state is replaced in several batches, and is not read
    /// until the last one is in. Retry (or read elsewhere).
    #[error("a snapshot is being installed; the state is readable again when it is done")]
    Installing,
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Keys from `start` (inclusive) to `end` (exclusive; `None`: to the end of the table).
///
/// Every scan carries its end: RocksDB then stops at the bound instead of stepping over the
/// tombstones that lie beyond it (deleted session answers, swept expiries), which made every
/// write slower as history accumulated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn all() -> KeyRange {
        KeyRange::default()
    }

    /// Every key from `start` on.
    pub fn all_from(start: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: start.into(),
            end: None,
        }
    }

    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// Every key starting with `prefix`, from `start` on (which must itself have the prefix).
    pub fn prefix_from(prefix: &[u8], start: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: start.into(),
            end: prefix_successor(prefix),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// The smallest key greater than every key with this prefix (`None`: no such key).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key and its value, as scans return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Point reads the apply logic needs.
pub trait StoreRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries of `table` inside `range`, in key order, at most `limit`.
    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError>;

    /// Entries of `table` inside `range`, last key first, at most `limit`. The default reads the
    /// whole range forward; stores that can seek backwards override it.
    fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let mut all = self.scan(table, range, usize::MAX)?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }
}

/// A store that hands out point-in-time views. A read of more than one thing (a scan's internal
/// pages; a record and the applied time it is judged at) takes one view and reads all of it
/// there, so an entry applied meanwhile is seen whole or not at all.
pub trait ViewSource {
    type View<'a>: StoreRead
    where
        Self: 'a;

    fn view(&self) -> Self::View<'_>;
}

/// A KV record as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Log index of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Log index of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation.
    pub version: u64,
    /// HLC physical milliseconds at which the key expires.
    pub expires_at_ms: Option<u64>,
    /// When and in which region the value was written: what last-writer-wins compares when
    /// regions merge.
    pub written: Version,
}

impl KvRecord {
    /// The record as a last-writer-wins register.
    pub fn register(&self) -> LwwValue {
        LwwValue {
            version: self.written,
            value: Some(self.value.clone()),
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub fn is_live_at(&self, now_ms: u64) -> bool {
        crate::apply::read::is_live(self.expires_at_ms, now_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        basalt_codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<KvRecord, basalt_codec::DecodeError> {
        basalt_codec::decode(bytes)
    }
}

/// A change to a KV key, kept for watchers in its revision's `KvHistory` row (see
/// `apply::kv::history_events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    Put {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        create_revision: u64,
        version: u64,
    },
    Delete,
}

impl KvEvent {
    pub fn encode(&self) -> Vec<u8> {
        basalt_codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<KvEvent, basalt_codec::DecodeError> {
        basalt_codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of `docs/data-format.md`, byte for byte: a change of `KvRecord`'s encoding is a
    /// change of the data format.
    #[test]
    fn a_kv_record_encodes_as_documented() {
        let record = KvRecord {
            value: b"hi".to_vec(),
            create_revision: 5,
            mod_revision: 7,
            version: 2,
            expires_at_ms: None,
            written: Version::new(300, 1),
        };
        let bytes = record.encode();
        assert_eq!(bytes, [0x02, 0x68, 0x69, 0x05, 0x07, 0x02, 0x00, 0xac, 0x02, 0x01]);
        assert_eq!(KvRecord::decode(&bytes), Ok(record));
    }
}
