//! The edge-cache operations of a command ([`CacheOp`]) and why one is refused ([`CacheError`]).
//! Cached bodies never enter the log: only purges do, so that every node of every region removes
//! what a purge names (docs/data-types/edge-cache.md).

use serde::{Deserialize, Serialize};

pub use basalt_replication::PurgeTarget;

/// The edge-cache operations. Applied by `crate::apply::cache`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheOp {
    /// Records a purge in the region's purge table; every node's edge follows the table and
    /// removes what the purge matches. Replicates to every other region through the feed.
    Purge { target: PurgeTarget },
}

impl std::fmt::Display for CacheOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheOp::Purge { target } => write!(f, "cache purge of {target}"),
        }
    }
}

/// Why an edge-cache operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CacheError {
    #[error("a purge {what} must be a path starting with '/', in visible ASCII (percent-encoded as clients send it), got {got:?}")]
    NotAPath { what: String, got: String },
    #[error("a purge tag must be visible ASCII without spaces or commas, got {got:?}")]
    InvalidTag { got: String },
}
