//! The Rust SDK for Basalt, and the API contract (`proto/basalt.proto`) every server and client
//! shares. It depends on neither openraft nor RocksDB: an application links only this.
//!
//! ```no_run
//! # async fn demo() -> Result<(), basalt_client::ClientError> {
//! let client = basalt_client::Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! client.kv().put("greeting", "hello").await?;
//! let value = client.kv().get("greeting").await?;
//! assert_eq!(value.map(|v| v.value), Some(b"hello".to_vec()));
//! let visits = client.counter("visits").incr(5).await?;
//! # let _ = visits;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - Writes go to the leader (found and followed through redirects) and are acknowledged once
//!   committed on a majority, durably.
//! - Every mutating call carries `(client_id, seq)`; the SDK retries it with the same pair after a
//!   leader change or a lost connection, and the cluster applies it at most once.
//! - Reads are linearizable unless made with [`ReadConsistency::Stale`].
//! - A call that gives up after its deadline returns [`ClientError::Unavailable`] whose
//!   `outcome_unknown` tells whether a mutation may still have been applied.

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub mod cache;
mod client;
mod coalesce;
pub mod consumer;
mod counter;
mod error;
mod kv;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod pubsub;
pub mod queue;
mod rate;
mod rate_shadow;
pub mod stream;
pub mod txn;
pub mod watch;

pub mod pb {
    tonic::include_proto!("basalt.v1");
}

pub use cache::{Cache, LaggingNode, NodeCacheStats, PurgeReceipt, PurgeTarget};
pub use client::{Client, ClientOptions, ReadConsistency, RegionMap};
pub use consumer::{ConsumedRecord, Consumer, ConsumerOptions, ReplayOptions, ReplaySummary, StartFrom};
pub use counter::window;
pub use counter::{CounterChange, CounterHandle, CounterOp, CounterOutcome, CounterValue, Counters, Windows};
pub use error::{never_sent, ClientError, ErrorCode, ERROR_CODE_KEY, LEADER_KEY, OLDEST_REVISION_KEY};
pub use kv::{CasOutcome, DeleteOutcome, Kv, KvEntry, PutIfAbsent, PutOptions, ScanPage};
pub use lease::{Acquired, LeaseGrant, LeaseHandle, LeaseState};
pub use ledger::Ledger;
pub use pubsub::{PubSub, Published, Subscription};
pub use queue::{
    AckResult, Enqueued, Message, NewMessage, QueueHandle, QueueInfo, QueueOptions, QueueStats, ReceiveOptions,
};
pub use rate::{DecidedBy, RateCheck, RateDecision, RateLimit, RateLimiter, RateVerdict, WhenUnreachable};
pub use rate_shadow::SHADOW_KEYS_MAX;
pub use stream::{
    Assignor, FetchOptions, Fetched, FetchedRecord, JoinOptions, Membership, Produced, Producer, Record, Streams,
    TimeOffset, TopicInfo, TopicListing, TopicOptions,
};
pub use txn::{TxnBuilder, TxnOp, TxnOpResult, TxnOutcome};
pub use watch::{Watch, WatchEvent, WatchEventKind};
