//! The KV write payloads of a command: compare-and-set conditions and the parts of a KV batch.

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
