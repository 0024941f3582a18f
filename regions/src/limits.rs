//! The limits of the region tools: the dev topologies `basalt dev` runs and the link proxy.

use std::time::Duration;

/// Most nodes per region `basalt dev` runs; a topology file with more is refused, naming it.
pub const NODES_PER_REGION_MAX: u16 = 9;
/// Most regions `basalt dev` runs; a topology file with more (or fewer than 2) is refused.
pub const REGIONS_MAX: usize = 9;
/// Bytes the proxy reads from a connection at a time (one chunk is delayed and forwarded whole).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight per direction of one connection before the proxy stops reading (backpressure).
pub const CHUNKS_IN_FLIGHT: usize = 64;
/// How long the proxy's connection to the real endpoint may take; past it the incoming connection
/// is closed, as a dead link would leave it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
