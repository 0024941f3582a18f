//! What goes into the Raft log and what comes back: the deterministic input and output of apply.

use serde::{Deserialize, Serialize};

use crate::hlc::HlcStamp;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    KvPut {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        expect: Option<Expect>,
    },
    KvDelete {
        key: Vec<u8>,
        expect: Option<Expect>,
    },
    CounterIncr {
        key: Vec<u8>,
        delta: i64,
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
}

/// The log entry payload: the leader's HLC stamp plus the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub stamp: HlcStamp,
    pub session: Option<Session>,
    pub op: Op,
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
    #[error("counter {key:?} would overflow: {value} + {delta}")]
    CounterOverflow { key: String, value: i64, delta: i64 },
    #[error(
        "request seq {seq} of client {client_id:032x} is older than its oldest kept answer; its outcome is unknown"
    )]
    SessionExpired { client_id: u128, seq: u64 },
    #[error("stored value for key {key:?} is unreadable: {reason}")]
    CorruptValue { key: String, reason: String },
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
    Counter {
        value: i64,
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
    Refused(OpError),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match &self.op {
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
            Op::CounterIncr { key, delta } => write!(f, "counter incr {:?} by {delta}", lossy(key)),
            Op::KvSweepExpired { limit } => write!(f, "kv sweep expired (limit {limit})"),
            Op::SessionSweep { idle_ms, after, limit } => {
                write!(f, "session sweep (idle {idle_ms} ms, after {after:?}, limit {limit})")
            }
        }
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
