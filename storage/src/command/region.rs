//! The cross-region operations of a command (merging another region's feed, trimming this
//! region's, changing the topology) and why one is refused. See `docs/regions.md`.

use serde::{Deserialize, Serialize};

use basalt_replication::ShipBatch;

/// The cross-region operations. Applied by `crate::apply::replication` and
/// `crate::apply::topology`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionOp {
    /// Merges a batch of another region's change feed. Proposed by the leader that receives the
    /// batch, so every replica merges it at the same log position.
    MergeFeed { batch: ShipBatch },
    /// Forgets this region's feed entries at or below `upto` (every other region has them), at
    /// most `limit`. Proposed by the leader.
    TrimFeed { upto: u64, limit: u32 },
    /// Changes the region topology: which regions exist, the home of homed data, the escrow
    /// shares (`apply::topology`). The only way the topology changes, so that every replica
    /// applies every later entry alike, whatever its flags say.
    Topology {
        change: crate::apply::topology::TopologyChange,
    },
}

impl std::fmt::Display for RegionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionOp::MergeFeed { batch } => write!(
                f,
                "merge {} feed entries of region {} up to {}{}",
                batch.entries.len(),
                batch.source,
                batch.upto,
                if batch.resync { " (re-sync)" } else { "" }
            ),
            RegionOp::TrimFeed { upto, limit } => write!(f, "feed trim up to {upto} (limit {limit})"),
            RegionOp::Topology { change } => change.fmt(f),
        }
    }
}

/// Why a cross-region operation, or a write of homed data outside its home, was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegionError {
    #[error("a region cannot merge its own feed (region {region})")]
    OwnFeed { region: u16 },
    #[error("this region does not replicate with other regions; it cannot merge region {source_region}'s feed")]
    NotReplicating { source_region: u16 },
    #[error("ledgers, leases and queues are homed in region {home}; region {region} holds a read-only copy")]
    NotHome { region: u16, home: u16 },
    #[error("region {source_region} shipped homed rows, but this region's home region is {home}")]
    RowsFromNonHome { source_region: u16, home: u16 },
    #[error("table {table:?} does not hold homed data")]
    NotHomedTable { table: String },
    #[error("a mirrored row must be in a stream table under a mirror name (table {table:?})")]
    NotMirrorRow { table: String },
    #[error("region {source_region} is not in this region's topology (`basalt regions add` it first)")]
    UnknownRegion { source_region: u16 },
    #[error("region topology change refused: {reason}")]
    InvalidTopology { reason: String },
}
