//! Every limit of the server, and how they relate, asserted at compile time: every answer a client
//! service gives fits under `basalt_client::limits::RESPONSE_BYTES_MAX` (the SDK and the storage
//! crate do not depend on each other, so it is checked here), a feed batch fits the
//! region-to-region message cap, a watch message fits what the SDK decodes, and merged remote
//! batches fit one log entry. Each group below names the file that enforces it; `docs/limits.md`
//! lists every limit of every crate.

use std::time::Duration;

use basalt_client::limits as sdk;
use basalt_storage::limits as server;

/// Generous protobuf framing per item of an answer (tags, lengths, revisions, offsets, ids,
/// receipts, timestamps).
const ITEM_FRAMING_BYTES: usize = 1024;

// A scan answer: its byte budget (which its last item may not pass, but its first may fill)
// plus the framing of as many items as it may hold.
const _: () = assert!(
    server::SCAN_REPLY_BYTES_MAX
        + server::KEY_BYTES_MAX
        + server::VALUE_BYTES_MAX
        + server::SCAN_KEYS_MAX as usize * ITEM_FRAMING_BYTES
        <= sdk::RESPONSE_BYTES_MAX
);
// A multi-key get answer: every key and value at its largest.
const _: () = assert!(
    server::GET_MANY_KEYS_MAX * (server::KEY_BYTES_MAX + server::VALUE_BYTES_MAX + ITEM_FRAMING_BYTES)
        <= sdk::RESPONSE_BYTES_MAX
);
// A fetch answer: its byte budget plus one record past it (the first is always answered).
const _: () = assert!(
    server::FETCH_REPLY_BYTES_MAX as usize
        + server::ENTRY_COMMAND_BYTES_MAX
        + server::FETCH_RECORDS_MAX as usize * ITEM_FRAMING_BYTES
        <= sdk::RESPONSE_BYTES_MAX
);
// A receive answer: as many messages of the largest size as one receive may take.
const _: () = assert!(
    server::RECEIVE_MESSAGES_MAX as usize * (server::MESSAGE_BYTES_MAX + ITEM_FRAMING_BYTES) <= sdk::RESPONSE_BYTES_MAX
);
// A transaction's answer: its reads' budget, plus the other ops' answers, each a few bytes per
// item of the request (a counter outcome, an enqueue outcome, a produced offset: at most 16
// bytes of answer per byte of request).
const _: () = assert!(server::TXN_READ_BYTES_MAX + 16 * server::TXN_BYTES_MAX <= sdk::RESPONSE_BYTES_MAX);
// A windowed-counter read: each window a start (varint, at most 10 bytes), a value (at most 10)
// and 4 bytes of framing.
const _: () = assert!(server::COUNTER_WINDOWS_READ_MAX as usize * 24 + 64 <= sdk::RESPONSE_BYTES_MAX);
// A queue list: each a name and two counts, with framing.
const _: () = assert!(server::LIST_QUEUES_MAX as usize * (server::NAME_BYTES_MAX + 32) + 64 <= sdk::RESPONSE_BYTES_MAX);
// The SDK's local shadow limiter refuses what the cluster refuses.
const _: () = assert!(sdk::KEY_BYTES_MAX == server::KEY_BYTES_MAX);
const _: () = assert!(sdk::RATE_WINDOW_MS_MAX == server::RATE_WINDOW_MS_MAX);
const _: () = assert!(sdk::NAME_BYTES_MAX == server::NAME_BYTES_MAX);
// A scan with limit 0 returns as many keys whether the SDK or the server fills the default in.
const _: () = assert!(sdk::SCAN_KEYS_DEFAULT == server::SCAN_KEYS_DEFAULT);
const _: () = assert!(sdk::GET_MANY_KEYS_MAX == server::GET_MANY_KEYS_MAX);

/// Largest region-to-region feed message (a batch or an ack), both ways: gRPC refuses a larger
/// one and the shipper reopens the stream and retries.
pub const FEED_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most encoded bytes of feed entries one shipped batch carries: the batch stops before the entry
/// that would pass it (one entry alone may be larger).
pub const FEED_BATCH_BYTES_MAX: u64 = 4 * 1024 * 1024;
// A full batch plus one more entry (the effects of one log entry, at most about a record) fits.
const _: () = assert!(
    FEED_BATCH_BYTES_MAX as usize + 2 * server::RECORD_BYTES_MAX as usize + (1 << 20) <= FEED_MESSAGE_BYTES_MAX
);

// KV watch (`api/kv.rs`).

/// History rows one watch step reads: one row per revision (several for a revision written
/// before rows held whole revisions).
pub(crate) const WATCH_PAGE_ROWS: usize = 256;
/// Key and value bytes after which a watch answer goes out at the next revision boundary: an
/// answer holds whole revisions, so it is at most this plus one revision (one log entry, under
/// `ENTRY_COMMAND_BYTES_MAX`), within what the SDK decodes.
pub(crate) const WATCH_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
const _: () = assert!(
    WATCH_RESPONSE_BYTES_MAX + basalt_storage::limits::ENTRY_COMMAND_BYTES_MAX + 1024 * 1024
        <= basalt_client::limits::RESPONSE_BYTES_MAX
);
/// Watch responses buffered per watcher before it waits for the client to read.
pub(crate) const WATCH_BUFFER_MESSAGES: usize = 64;
/// How often an idle watch checks that its client is still there.
pub(crate) const WATCH_IDLE_CHECK: Duration = Duration::from_secs(1);

// Leader-side merging of KV writes (`api/merge.rs`).

/// Most bytes of requests waiting to be merged or in merged proposals on their way; a request
/// over it waits for room (its RPC takes longer) instead of growing the queue.
pub(crate) const MERGE_QUEUED_BYTES_MAX: usize = 128 * 1024 * 1024;

// Long polls (`api/mod.rs`).

/// Longest a single long-poll (receive, fetch) may wait.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a long-poll looks again without an applied batch: some things become ready with time
/// alone (a delayed message turning visible).
pub(crate) const WAIT_POLL: Duration = Duration::from_millis(50);

// Lease acquire waits (`api/lease.rs`).

/// Longest a single acquire may wait; longer waits are a loop in the caller.
pub(crate) const LEASE_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often a waiting acquire looks at the lease between expiries it cannot foresee (releases).
pub(crate) const LEASE_WAIT_POLL: Duration = Duration::from_millis(20);

// Streams (`api/stream.rs`).

/// Records a fetch asked with `max_records` 0 answers, at most.
pub(crate) const FETCH_RECORDS_DEFAULT: u32 = 1000;
/// Bytes a fetch asked with `max_bytes` 0 answers, at most (the first record always).
pub(crate) const FETCH_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
const _: () = assert!(FETCH_BYTES_DEFAULT <= server::FETCH_REPLY_BYTES_MAX);
/// A consumer group member's session timeout when it asks for none: silent this long, it is
/// removed from the group and its partitions reassigned.
pub(crate) const SESSION_TIMEOUT_DEFAULT_MS: u64 = 10_000;

// Pub/sub (`api/pubsub.rs`).

/// Messages buffered per subscriber; a subscriber that falls this far behind is disconnected
/// (Redis's client-output-buffer-limit for pub/sub does the same).
pub(crate) const SUBSCRIBER_BUFFER_MESSAGES: usize = 4096;
/// How long a relay to a peer may take before its subscribers count as not reached.
pub(crate) const RELAY_TIMEOUT: Duration = Duration::from_secs(1);
/// Most channels plus patterns in one subscription.
pub(crate) const SUBSCRIPTIONS_MAX: usize = 1000;

// The leader's sweeper (`server.rs`).

/// How many clients one session sweep entry visits.
pub(crate) const SESSION_SWEEP_CLIENTS_MAX: u32 = 1000;
/// Seconds between session sweep steps.
pub(crate) const SESSION_SWEEP_EVERY_S: u64 = 10;
/// History changes one compaction entry removes at most.
pub(crate) const COMPACT_CHANGES_MAX: u32 = 4 * basalt_storage::apply::SWEEP_ITEMS_MAX;
/// Most history compaction steps proposed per sweeper tick: up to 64,000 changes a second.
pub(crate) const COMPACT_STEPS_PER_TICK_MAX: usize = 16;
/// Most entries per sweeper tick of paged work not bound to a time (deletions of topics and
/// queues, the queue dead-letter index build): up to 65,536 rows of a deletion a second.
pub(crate) const PAGED_SWEEP_STEPS_PER_TICK_MAX: usize = 16;
/// Time per sweeper tick after which no further entry of paged work is proposed (the first
/// always is), so large rows (256 KiB messages, big record batches) or a slow disk keep that
/// work to about a quarter of the apply loop's time.
pub(crate) const PAGED_SWEEP_MS_PER_TICK_MAX: u64 = 250;

// The feed shipper (to other regions) (`replication/shipper.rs`).

/// How long a full re-sync in progress may go without an answered chunk (a broken link, a
/// connection renewed, a receiver too slow): past this its view, which pins the state store's
/// old versions, is let go, and the next stream starts a re-sync over.
pub(crate) const RESYNC_RESUME_WITHIN: Duration = Duration::from_secs(300);
/// How often a stream looks for a re-sync's next chunks when the task reading them was behind,
/// in milliseconds (also the stream's idle wake-up).
pub(crate) const RESYNC_POLL_MS: u64 = 100;
/// How long after its opening answer a feed stream must end for the end to be taken as a
/// renewal (reopened at once) rather than a failure (backed off).
pub(crate) const FEED_STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The slowest link between regions the feed allows for, in bytes per second: the oldest batch
/// in flight may take its size at this rate to cross, on top of [`FEED_ACK_TIMEOUT`], before the
/// link is taken as silent (2 Mbit/s: a 4 MiB batch gets about 19 s).
pub(crate) const FEED_LINK_BYTES_PER_S_MIN: u64 = 256 * 1024;
/// Batches sent and not yet answered, at most.
pub(crate) const FEED_WINDOW_BATCHES: usize = 32;
/// Feed entries read per batch, at most; batches are also cut at [`FEED_BATCH_BYTES_MAX`].
pub(crate) const FEED_BATCH_ENTRIES_MAX: usize = 512;
/// With batches unanswered this long (and the oldest batch's time to cross at
/// [`FEED_LINK_BYTES_PER_S_MIN`]), the link is considered broken and the stream reopened.
pub(crate) const FEED_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// An idle stream sends an empty batch this often, to learn the remote watermark and notice a
/// broken link.
pub(crate) const FEED_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long opening a connection to another region may take before the shipper tries its next
/// node.
pub(crate) const FEED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between attempts to reach another region.
pub(crate) const FEED_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the shipper waits before trying again a region that refused its topology: an
/// operator has to act (`basalt regions add` there, or rebuild a region founded with another
/// region list: see docs/regions.md).
pub(crate) const FEED_DISAGREE_BACKOFF: Duration = Duration::from_secs(5);
/// How far the last applied stamp may fall behind this node's clock before the leader proposes
/// an `Op::ClockTick`.
pub(crate) const FEED_CLOCK_TICK_AFTER: Duration = Duration::from_secs(1);
/// Feed entries removed per trim step.
pub(crate) const FEED_TRIM_ENTRIES_MAX: u32 = 10_000;
/// How long a new leader waits to hear each region's watermark before trimming without it.
pub(crate) const FEED_LEARN_ACKS: Duration = Duration::from_secs(30);

// Cross-region replication (`replication/mod.rs`).

/// Replication-lag samples kept for the percentiles `/metrics` reports; the oldest is dropped.
pub(crate) const LAG_SAMPLES: usize = 20_000;
/// How often the supervisor compares the running shippers with the topology.
pub(crate) const SUPERVISE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

// Homed data forwarding (`replication/home.rs`).

/// How long forwarding may take in all, for requests that do not wait; a long-poll (receive,
/// acquire with wait) gets its own wait on top. Shorter than the SDK's attempt timeout (3 s), so
/// the caller gets `REGION_UNAVAILABLE` rather than a timeout of its own.
pub(crate) const HOME_FORWARD_BUDGET: Duration = Duration::from_secs(2);
/// Kept back from the caller's own deadline (`grpc-timeout`), so the answer reaches it in time.
pub(crate) const HOME_DEADLINE_MARGIN: Duration = Duration::from_millis(300);

// The feed receiver (from other regions) (`replication/receiver.rs`).

/// Entries merged in one proposal at most, when several batches wait: coalescing keeps a busy
/// link from being limited to one Raft commit per batch.
pub(crate) const COALESCE_ENTRIES_MAX: usize = 4096;
/// Bytes of encoded batches merged in one proposal at most: well inside one log entry
/// (`ENTRY_COMMAND_BYTES_MAX`); a batch that would take a proposal past it waits for the next.
pub(crate) const COALESCE_BYTES_MAX: usize = basalt_storage::limits::ENTRY_COMMAND_BYTES_MAX / 2;
// Checked in every build, not only under test: a merged proposal stays inside one log entry.
const _: () = assert!(COALESCE_BYTES_MAX * 2 <= basalt_storage::limits::ENTRY_COMMAND_BYTES_MAX);
/// How far (5 s of HLC time) an idle source's frontier must move before a heartbeat records it.
pub(crate) const FRONTIER_STEP: u64 = 5_000 << 16;

// The edge cache's listener (`edge/mod.rs`).

/// How long a client may take to send a request's headers (a slow-loris client is dropped), and
/// how long an idle keep-alive connection waits for its next request.
pub(crate) const EDGE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take none of an answer's bytes before its connection is closed
/// (nginx's `send_timeout`): a client that stops reading would otherwise hold its connection,
/// and a streamed answer's origin connection, for good.
pub(crate) const EDGE_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight to one origin at most, as configured (`cache.origin_requests_max`): a
/// semaphore cannot hold more permits than this.
pub(crate) const EDGE_ORIGIN_REQUESTS_MAX: usize = 100_000;
/// How long a stopping edge waits for its connections to finish their requests before dropping
/// them (a client that stops reading would otherwise hold the stop forever); a second below the
/// doors' bound (`DOORS_DRAIN_MAX`), so that the edge ends them itself and says how many.
pub(crate) const EDGE_SHUTDOWN_GRACE: Duration = Duration::from_secs(9);
/// Purges the edge's follower reads from the purge table at once.
pub(crate) const PURGE_FOLLOW_BATCH_MAX: usize = 256;
/// How often the follower looks at the purge table when no applied batch woke it.
pub(crate) const PURGE_FOLLOW_POLL: Duration = Duration::from_secs(1);
/// How long the follower waits after a failed read of the purge table before reading again.
pub(crate) const PURGE_FOLLOW_RETRY: Duration = Duration::from_millis(100);
/// How long a purge waits, by default, for every node of the region to apply it.
pub(crate) const PURGE_CONFIRM_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest a purge may be asked to wait for every node of the region.
pub(crate) const PURGE_CONFIRM_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long a node waits to connect to another member for its own calls (relays, purge
/// confirmations, edge counters).
pub(crate) const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `basalt cache stats` waits for each other node's counters.
pub(crate) const PEER_STATS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long past its wait a node's answer to another may take to arrive.
pub(crate) const PEER_REPLY_MARGIN: Duration = Duration::from_millis(500);
// A purge confirmation, or a purge handed to the leader, fits in the time a peer connection
// reaching its age is given to finish its calls.
const _: () = assert!(
    PURGE_CONFIRM_WAIT_MAX.as_millis() + PEER_CONNECT_TIMEOUT.as_millis() + PEER_REPLY_MARGIN.as_millis()
        < basalt_raft::limits::PEER_CONNECTION_AGE_GRACE.as_millis()
);
/// Paths the edge remembers as too large to store (streamed through without a first fetch).
pub(crate) const EDGE_TOO_LARGE_PATHS_MAX: u64 = 10_000;
/// How long the edge remembers a path as too large to store; after it, one fetch tries again.
pub(crate) const EDGE_TOO_LARGE_TTL: Duration = Duration::from_secs(60);

/// Pending connections the client API's and the peer listener's sockets queue (the kernel's
/// listen backlog).
pub const LISTEN_BACKLOG: u32 = 1024;

/// How long the access layer waits for a checked request's body (one message, sent at once by
/// any client): a caller that opens a request and sends nothing does not hold it longer.
pub const REQUEST_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a stopping node waits for the peer listener's open streams to end, after Raft
/// stopped.
pub const PEER_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The longest a stopping node waits for the client door's open calls to end (watches,
/// subscriptions and long-polls are ended at the stop; a client that takes nothing of its answer
/// could still hold one): then it stops without them.
pub const CLIENT_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The longest a stopping node waits for the HTTP door's open requests to be answered (a client
/// reading a response slowly must not hold the stop).
pub const HTTP_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The longest a stopping node waits for RESP's in-process calls on their way to be answered
/// before Raft stops (new ones are refused from the start of the wait).
pub const IN_PROCESS_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The longest the doors' drains (client API, HTTP, RESP and its in-process calls, the edge) take
/// together, counted from the stop: they are told at once and drain side by side.
pub const DOORS_DRAIN_MAX: Duration = Duration::from_secs(10);

/// The longest a stopping leader waits for the voter it hands its leadership to to lead (see
/// `stopping::hand_off_leadership`): then it stops anyway, and the region elects a leader by
/// timeout. It runs from the stop, beside the doors' drains.
pub const LEADER_HANDOFF_MAX: Duration = Duration::from_secs(3);

/// The longest a stopping node waits for Raft to stop (its core and replication tasks): then the
/// process exits without it, as after a crash (every acknowledged write is already on disk).
pub const RAFT_SHUTDOWN_MAX: Duration = Duration::from_secs(5);

/// The longest a stop takes, from SIGTERM to the process's exit: below the 30 s an orchestrator
/// usually grants before it kills the process (Kubernetes' default
/// `terminationGracePeriodSeconds`), so that a stop is never cut short.
pub const NODE_STOP_MAX: Duration = Duration::from_secs(20);

// Every door's drain fits the doors' bound.
const _: () = assert!(
    CLIENT_DRAIN_MAX.as_millis() <= DOORS_DRAIN_MAX.as_millis()
        && HTTP_DRAIN_MAX.as_millis() <= DOORS_DRAIN_MAX.as_millis()
        && IN_PROCESS_DRAIN_MAX.as_millis() <= DOORS_DRAIN_MAX.as_millis()
        && EDGE_SHUTDOWN_GRACE.as_millis() < DOORS_DRAIN_MAX.as_millis()
        && LEADER_HANDOFF_MAX.as_millis() <= DOORS_DRAIN_MAX.as_millis()
        && NODE_STOP_MAX.as_secs() < 30
);

// The node's file descriptors (enforced in `descriptors.rs` and by the listeners' budgets).

/// Descriptors a node keeps for itself, never handed to a connection: two RocksDB stores'
/// table files (the state and a snapshot being installed, each at most
/// `basalt_storage::limits::ROCKSDB_OPEN_FILES_MAX`), and 512 more for its log segments, RocksDB's
/// own logs, links to the other members and regions, snapshot files and its listeners (the
/// edge's origin requests are planned apart, from its configuration).
pub const NODE_DESCRIPTORS_RESERVED: usize = 2 * server::ROCKSDB_OPEN_FILES_MAX as usize + 512;
/// Connections the peer listener holds at once (the members' Raft and calls, other regions'
/// feeds); one more is closed at once.
pub const PEER_CONNECTIONS_MAX: usize = 256;
/// Connections the HTTP door (health, metrics, purges) holds at once, apart from the client
/// doors' so that a node flooded with clients can still be watched; one more is answered 503.
pub const HTTP_CONNECTIONS_MAX: usize = 128;
/// Connections the client doors (client gRPC, RESP, edge) hold at once, together, when the
/// descriptor limit leaves room for more; one more is refused at once (RESP is answered
/// `ERR max number of clients reached`, as Redis does at its default `maxclients` of 10,000;
/// the edge a 503).
pub const CLIENT_CONNECTIONS_MAX: usize = 10_000;
/// The fewest client connections a node starts with: a descriptor limit that leaves fewer
/// refuses to start.
pub const CLIENT_CONNECTIONS_MIN: usize = 64;

const _: () = assert!(server::ROCKSDB_OPEN_FILES_MAX > 0);
const _: () = assert!(CLIENT_CONNECTIONS_MIN <= CLIENT_CONNECTIONS_MAX);
