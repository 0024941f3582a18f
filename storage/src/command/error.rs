//! [`OpError`]: why an operation was refused: the checks every data type shares, and each type's
//! own refusals (its error enum is in its module). Encoded in saved answers by position: a new
//! variant goes last.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{CacheError, CounterError, KvError, LeaseError, QueueError, RegionError, StreamError, TxnError};

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
    #[error("{what} is empty")]
    Empty { what: Cow<'static, str> },
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: Cow<'static, str>,
        len: usize,
        max: usize,
    },
    #[error("batch of {len} items exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("a log entry of {len} bytes would exceed the limit of {max} bytes")]
    EntryTooLarge { len: usize, max: usize },
    #[error("{what} must be {expected}, got {got}")]
    OutOfRange {
        what: Cow<'static, str>,
        expected: String,
        got: String,
    },
    #[error(
        "request seq {seq} of client {client_id:032x} is older than its oldest kept answer; its outcome is unknown"
    )]
    SessionExpired { client_id: u128, seq: u64 },
    #[error("stored value for key {key:?} is unreadable: {reason}")]
    CorruptValue { key: String, reason: String },
    #[error("unknown {what} {name:?}")]
    NotFound { what: Cow<'static, str>, name: String },
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Counter(#[from] CounterError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// A change to users or roles refused (see `crate::apply::auth`).
    #[error(transparent)]
    Auth(#[from] basalt_auth::AuthError),
}
