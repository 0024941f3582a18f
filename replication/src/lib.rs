//! Cross-region replication: what one region ships to another, and how the receiver merges it.
//!
//! Everything here is pure and deterministic, so every replica of the receiving region reaches
//! the same state whatever order and however many times remote changes arrive:
//! - [`version`]: the `(HLC stamp, region)` pair that orders concurrent writes;
//! - [`merge`]: the merge rules — last-writer-wins registers with tombstones, PN-counters —
//!   each commutative, associative and idempotent (property-tested);
//! - [`feed`]: the change feed's entries and the batches shipped between regions;
//! - [`digest`]: an order-independent fingerprint of replicated state, to tell whether regions
//!   agree.
//!
//! [`pb`] is the gRPC contract of the feed stream. The I/O around it (reading the feed, the
//! shipper and receiver tasks, proposing through Raft) lives in the node; the apply of a remote
//! batch lives with the rest of the apply logic in `basalt-storage`.

pub mod digest;
pub mod feed;
pub mod merge;
pub mod version;

/// The generated gRPC types of the region-to-region feed transport (feature `grpc`).
#[cfg(feature = "grpc")]
pub mod pb {
    #![allow(clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("basalt.replication");
}

pub use digest::Digest;
pub use feed::{Effect, FeedEntry, PurgeTarget, ShipBatch};
pub use merge::{Component, EscrowBound, EscrowTransfers, LwwValue, PnCounter, WindowCount, WindowCounts};
pub use version::{RegionId, RegionName, Version};
