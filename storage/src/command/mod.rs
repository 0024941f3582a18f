//! What goes into the Raft log and what comes back: the deterministic input and output of apply.
//!
//! - this file: [`Command`] (one log entry's payload: the leader's stamp, the session, the fence,
//!   the op) and what wraps every op ([`Session`], [`Fence`]);
//! - [`op`]: [`Op`], every operation, one variant per data type; [`response`]: [`Response`],
//!   what applying one yields; [`error`]: [`OpError`], why one was refused: the checks every type
//!   shares, and a variant per type for its own refusals;
//! - one module per data type with its operations (`KvOp`, `RateOp`, ...), its own refusals
//!   (`KvError`, `LeaseError`, ...) and its payloads: [`kv`], [`counter`], [`rate`], [`lease`],
//!   [`ledger`], [`queue`], [`stream`] (streams and consumer groups), [`region`] (merging other
//!   regions' feeds, the topology), [`cache`] (edge-cache purges), [`auth`] (users and roles), [`txn`] (transactions across types). The larger payloads of ledgers, queues and streams (accounts,
//!   messages, records) are in `crate::ledger`, `crate::queue` and `crate::stream`.
//!
//! All of it is persisted (log entries, saved answers) in the data format of `basalt-codec`:
//! moving a type between these files changes nothing, reordering fields or variants does.

mod auth;
mod cache;
mod counter;
mod error;
mod kv;
mod lease;
mod ledger;
mod op;
mod queue;
mod rate;
mod region;
mod response;
mod stream;
mod txn;

pub use auth::AuthOp;
pub use cache::{CacheError, CacheOp, PurgeTarget};
pub use counter::{CounterAction, CounterError, CounterOp, CounterOutcome};
pub use error::OpError;
pub use kv::{Expect, KvError, KvOp, KvPart, KvWrite};
pub use lease::{LeaseError, LeaseLoss, LeaseOp, LeaseOutcome};
pub use ledger::LedgerOp;
pub use op::Op;
pub use queue::{QueueError, QueueOp};
pub use rate::{RateCheck, RateDecision, RateLimit, RateOp};
pub use region::{RegionError, RegionOp};
pub use response::Response;
pub use stream::{GroupOp, StreamError, StreamOp};
pub use txn::{is_transactional, BalanceField, Branch, Compare, Condition, Txn, TxnError};

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

/// A fencing token presented with a write: the write applies only while `token` is the live grant
/// of lease `lease` (see `docs/data-types/lease.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub lease: Vec<u8>,
    pub token: u64,
}

/// The log entry payload: the leader's HLC stamp plus the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub stamp: HlcStamp,
    pub session: Option<Session>,
    /// When set, the op applies only if this fence is the live grant of its lease.
    pub fence: Option<Fence>,
    pub op: Op,
}

impl Command {
    /// Whether this command fits one log entry ([`crate::limits::ENTRY_COMMAND_BYTES_MAX`]).
    /// Checked before every proposal: a larger one would be refused by the log, stopping the
    /// leader's Raft, where this refusal changes nothing.
    pub fn check_size(&self) -> Result<(), OpError> {
        let max = crate::limits::ENTRY_COMMAND_BYTES_MAX;
        let len = basalt_codec::encoded_len(self);
        if len > max {
            return Err(OpError::EntryTooLarge { len, max });
        }
        Ok(())
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.op.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::state::KvRecord;

    /// Keys and values are `serde_bytes` for speed: the codec writes a byte string exactly as it
    /// writes a sequence of `u8`, so the choice is not part of the data format.
    #[test]
    fn byte_strings_encode_as_the_byte_sequences_did() {
        #[derive(Serialize)]
        enum PlainKvOp {
            Put {
                key: Vec<u8>,
                value: Vec<u8>,
                ttl_ms: Option<u64>,
                expect: Option<Expect>,
            },
        }
        let new = KvOp::Put {
            key: b"key".to_vec(),
            value: vec![7; 300],
            ttl_ms: Some(5),
            expect: Some(Expect::Revision(9)),
        };
        let old = PlainKvOp::Put {
            key: b"key".to_vec(),
            value: vec![7; 300],
            ttl_ms: Some(5),
            expect: Some(Expect::Revision(9)),
        };
        let encoded = basalt_codec::encode(&new);
        assert_eq!(encoded, basalt_codec::encode(&old));
        assert_eq!(basalt_codec::decode::<KvOp>(&encoded).expect("decode"), new);

        #[derive(Serialize)]
        struct OldRecord {
            value: Vec<u8>,
            create_revision: u64,
            mod_revision: u64,
            version: u64,
            expires_at_ms: Option<u64>,
            written: basalt_replication::Version,
        }
        let written = basalt_replication::Version::new(11, 2);
        let record = KvRecord {
            value: b"hello".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            expires_at_ms: None,
            written,
        };
        let old = OldRecord {
            value: b"hello".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            expires_at_ms: None,
            written,
        };
        assert_eq!(record.encode(), basalt_codec::encode(&old));
    }
}
