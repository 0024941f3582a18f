//! The Raft layer's limits, in one place, with how they relate asserted at compile time. Storage
//! limits (record, entry and segment sizes) are `basalt_storage::limits`.

use std::time::Duration;

use basalt_storage::limits::RECORD_BYTES_MAX;

/// Largest Raft message (an append batch, a vote, one snapshot chunk), both ways: gRPC refuses a
/// larger one (RESOURCE_EXHAUSTED), which openraft takes as a network error and retries.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most entries one replication message carries, as the log store reads them for openraft.
pub const APPEND_ENTRIES_MAX: u64 = 4096;
/// Most entries openraft puts in one AppendEntries (`max_payload_entries`); the log store's read
/// bounds ([`APPEND_ENTRIES_MAX`], [`APPEND_BYTES_BUDGET`]) cut a message before either is passed.
pub const PAYLOAD_ENTRIES_MAX: u64 = 2048;
/// Most bytes of log records one replication message carries: the read stops before the record
/// that would pass it (one record alone may be larger, up to [`RECORD_BYTES_MAX`]).
pub const APPEND_BYTES_BUDGET: u64 = 32 * 1024 * 1024;
/// Bytes of a snapshot pack per chunk of a snapshot transfer.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// How long a snapshot pack verified whole (unchanged since: same file, length and modification
/// time) counts as intact: while it is offered, it is read whole again at most this often, in the
/// background, so damage that came later (a bad sector) is found and the pack rebuilt.
pub const PACK_REVERIFY_INTERVAL_MIN: Duration = Duration::from_secs(60);
/// The shortest deadline of an append or vote. openraft sets an append's hard TTL to one heartbeat
/// interval; on a loaded machine a large append (fsync included) can take longer, and timing it
/// out only makes the leader back off and send it again.
pub const RPC_DEADLINE_MIN: Duration = Duration::from_secs(2);
/// How long a connection to a peer may take to open; past it the peer counts as unreachable and
/// openraft retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive pings on an idle connection to a peer, so a dead peer's connection is found
/// and replaced.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// The longest pause between attempts to reopen a replication stream (see
/// `network::reopen_pause`).
pub const REOPEN_PAUSE_MAX: Duration = Duration::from_millis(100);
/// How long a peer connection lives before the server asks the peer to open a new one (HTTP/2
/// GOAWAY); its streams then have [`PEER_CONNECTION_AGE_GRACE`] to finish before it is closed
/// (a leader's replication stream never finishes by itself: it is reopened on a new
/// connection). So a connection made under certificates or a CA since replaced ends within the
/// sum.
pub const PEER_CONNECTION_AGE_MAX: Duration = Duration::from_secs(600);
/// See [`PEER_CONNECTION_AGE_MAX`]. Longer than the longest call the members make to each other
/// besides Raft (the server's purge confirmation: 30 s and a reply margin), so a connection
/// reaching its age never cuts one.
pub const PEER_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(45);

// A message of a full budget plus one more record, or of the largest record alone, fits the Raft
// message cap with room for the message's own fields.
const _: () = assert!(APPEND_BYTES_BUDGET + RECORD_BYTES_MAX as u64 + (1 << 20) <= RAFT_MESSAGE_BYTES_MAX as u64);
const _: () = assert!(PAYLOAD_ENTRIES_MAX <= APPEND_ENTRIES_MAX);
// A snapshot chunk and its message fields fit a message.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES + 4096 <= RAFT_MESSAGE_BYTES_MAX);
