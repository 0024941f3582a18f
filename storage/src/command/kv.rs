//! The KV operations of a command ([`KvOp`]), why one is refused ([`KvError`]), and their
//! payloads: compare-and-set conditions and the writes of a KV batch.

use serde::{Deserialize, Serialize};

use super::{Op, Session};

/// A condition a KV write needs to hold (compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key must not exist (or must have expired).
    Absent,
    /// The key must exist with this modification revision.
    Revision(u64),
}

/// One client request inside a [`KvOp::Merged`]: a `Put`, `Delete` or `Batch`, and the
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
            Op::Kv(KvOp::Batch { writes }) => writes.len(),
            _ => 1,
        }
    }

    /// The bytes of keys and values the part carries, for the merged entry's limits.
    pub fn bytes(&self) -> usize {
        match &self.op {
            Op::Kv(KvOp::Put { key, value, .. } | KvOp::PutKeepTtl { key, value, .. }) => key.len() + value.len(),
            Op::Kv(KvOp::Delete { key, .. }) => key.len(),
            Op::Kv(KvOp::Batch { writes }) => writes.iter().map(KvWrite::bytes).sum(),
            _ => 0,
        }
    }
}

/// One write of a [`KvOp::Batch`].
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

/// The KV operations: client writes, and the upkeep the leader proposes (expiry, compaction,
/// tombstone collection). Applied by `crate::apply::kv`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    // Keys and values are byte strings to serde (`serde_bytes`): the codec copies them whole
    // instead of byte by byte, with the same encoding (a varint length, then the bytes).
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
    /// Writes of distinct keys, each applied or refused on its own, in order, all at this
    /// entry's revision (as the operations of an etcd transaction). The SDK coalesces concurrent
    /// puts and deletes into one of these, so one Raft entry and one session answer serve many.
    Batch { writes: Vec<KvWrite> },
    /// The KV writes of several client requests that reached the leader together, proposed as one
    /// entry (see `server/src/api/merge.rs`). Each part keeps its own session and answer, and is
    /// applied as if it were an entry of its own at this index: its writes share this revision
    /// with the other parts', which is why no key may appear in two parts. Proposed by the
    /// leader, never sent by a client.
    Merged { parts: Vec<KvPart> },
    /// Removes expired keys. Proposed by the leader from time to time; the decision is made
    /// from the entry stamp, so every replica removes the same keys.
    SweepExpired { limit: u32 },
    /// Drops history older than revision `below` (at most `limit` changes). Proposed by the
    /// leader once the history holds more than its configured number of revisions.
    Compact { below: u64, limit: u32 },
    /// Forgets tombstones stamped below `below` (at most `limit`): every other region has
    /// shipped past that stamp, so no write still to come can be older than them. Proposed by
    /// the leader for the region topology last changed at `topology_at`; applies as a no-op if
    /// the topology changed since (a region added meanwhile was not counted).
    TombstoneGc { below: u64, limit: u32, topology_at: u64 },
    /// Reads a key as the entry applies: only inside a transaction (`Txn`), where its answer
    /// ([`crate::command::Response::KvRecord`]) is the record as the branch's earlier ops left it.
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A put that keeps the key's expiry as it is when the entry applies (none when the key is
    /// absent or never expires): a new value for a key with a time to live, without moving its
    /// deadline (Redis's `INCR`, `APPEND`, `SET ... KEEPTTL`). Answered as `Put`. Appended last:
    /// entries written before it decode as they did.
    PutKeepTtl {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expect: Option<Expect>,
    },
}

impl KvOp {
    /// The keys of a client write (`Put`, `Delete`, `Batch`): the ops that may be parts of a
    /// [`KvOp::Merged`]. `None` for every other op.
    pub fn write_keys(&self) -> Option<Vec<&[u8]>> {
        match self {
            KvOp::Put { key, .. } | KvOp::PutKeepTtl { key, .. } | KvOp::Delete { key, .. } => {
                Some(vec![key.as_slice()])
            }
            KvOp::Batch { writes } => Some(writes.iter().map(KvWrite::key).collect()),
            _ => None,
        }
    }

    /// Whether its effects go into the change feed other regions merge: the writes, not the
    /// upkeep (every region expires and compacts its own keys).
    pub fn replicates(&self) -> bool {
        matches!(
            self,
            KvOp::Put { .. } | KvOp::PutKeepTtl { .. } | KvOp::Delete { .. } | KvOp::Batch { .. } | KvOp::Merged { .. }
        )
    }
}

impl std::fmt::Display for KvOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            KvOp::Put {
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
            KvOp::Delete { key, expect } => write!(f, "kv delete {:?} (expect {expect:?})", lossy(key)),
            KvOp::Batch { writes } => write!(f, "kv batch of {} writes", writes.len()),
            KvOp::Merged { parts } => write!(f, "kv writes of {} requests", parts.len()),
            KvOp::SweepExpired { limit } => write!(f, "kv sweep expired (limit {limit})"),
            KvOp::Compact { below, limit } => write!(f, "kv compact below {below} (limit {limit})"),
            KvOp::TombstoneGc { below, limit, .. } => {
                write!(f, "kv tombstones below stamp {below} (limit {limit})")
            }
            KvOp::Get { key } => write!(f, "kv get {:?}", lossy(key)),
            KvOp::PutKeepTtl { key, value, expect } => write!(
                f,
                "kv put keeping the ttl {:?} ({} bytes, expect {expect:?})",
                lossy(key),
                value.len()
            ),
        }
    }
}

/// Why a KV write was refused, beyond the checks every type shares ([`super::OpError`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("key {key:?} appears more than once in one batch")]
    DuplicateKey { key: String },
    #[error("{op} cannot be part of merged kv writes")]
    NotMergeable { op: String },
    #[error("{op} is only an op of a transaction (a read on its own is KV Get)")]
    OnlyInTxn { op: String },
}
