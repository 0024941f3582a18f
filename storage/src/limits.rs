//! Every limit Basalt enforces, in one place, with how they relate asserted at compile time.

/// Largest key accepted by any data type.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value accepted by KV.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest single log record (one serialized Raft entry). A frame header claiming more is corrupt.
pub const RECORD_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Table (SST) files one RocksDB store keeps open at once (RocksDB's `max_open_files`); the
/// server's descriptor plan reserves room for two stores (the state and a snapshot being
/// installed). At RocksDB's 64 MiB files, ~32 GiB of state stays open without reopening.
pub const ROCKSDB_OPEN_FILES_MAX: i32 = 512;
/// Default size at which the log rolls to a new segment.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest `segment_bytes_max` a log accepts.
pub const SEGMENT_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// Largest segment file the log reads at open: a segment rolls before passing its size limit,
/// except for one record alone, plus the header area and a frame header. A larger file is not a
/// segment this log wrote, and is refused rather than read into memory.
pub const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_LIMIT + RECORD_BYTES_MAX as u64 + 4096 + 16;
/// Most entries a segment holds; sizes the in-memory offset index (8 bytes per entry).
pub const SEGMENT_ENTRIES_MAX: u64 = 1 << 20;
/// Most keys one scan returns.
pub const SCAN_KEYS_MAX: u32 = 10_000;
/// Keys a scan asked with limit 0 returns.
pub const SCAN_KEYS_DEFAULT: u32 = 1000;
/// Most key and value bytes one scan answer carries: a scan stops before the item that would
/// pass it (never before its first item) and answers `more`. The SDK's `scan` goes on from the
/// last key. Without it, 10,000 keys of 1 MiB would be a 10 GiB answer.
pub const SCAN_REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most keys one multi-key get (`Kv.GetMany`) reads: its answer, every value at its largest,
/// stays near a scan answer's size.
pub const GET_MANY_KEYS_MAX: usize = 16;
/// Longest TTL accepted (one year), so `stamp + ttl` never overflows the HLC's 48-bit clock.
pub const TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;

/// Largest serialized command one log entry may carry: the record limit less room for the
/// entry's own framing (log id, payload tag). Every proposal is checked against it before it is
/// proposed ([`crate::command::Command::check_size`]): a record over the limit is refused by the
/// log, which stops the leader's Raft.
pub const ENTRY_COMMAND_BYTES_MAX: usize = RECORD_BYTES_MAX as usize - 64 * 1024;
/// Largest client request message the API decodes (set on every client service): one request
/// alone, or merged with others up to the merger's own bound, stays far inside an entry.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX + 1024 < RECORD_BYTES_MAX as usize);
const _: () = assert!(SCAN_KEYS_DEFAULT <= SCAN_KEYS_MAX);
// One item alone always fits a scan answer.
const _: () = assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX <= SCAN_REPLY_BYTES_MAX);
const _: () = assert!(CLIENT_MESSAGE_BYTES_MAX * 3 < ENTRY_COMMAND_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= RECORD_BYTES_MAX as u64);

/// Most items (counter ops, rate checks, accounts, transfers) in one batched request, as in
/// TigerBeetle: big enough to amortize a Raft round, small enough to keep one entry under a few MB.
pub const BATCH_ITEMS_MAX: usize = 8190;
/// Shortest window of a windowed counter (one second).
pub const COUNTER_WINDOW_MS_MIN: u64 = 1000;
/// Longest window of a windowed counter (one week).
pub const COUNTER_WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Longest a windowed counter's bucket is kept after its window ends (one year). Checked at
/// apply, so a constant of its own: a change of another limit must not change what replicas
/// decide.
pub const COUNTER_RETENTION_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
/// How far ahead of the entry's time an event may be dated: producers' clocks run ahead of the
/// cluster's by up to this much before their events are refused as too early.
pub const COUNTER_WINDOW_AHEAD_MS: u64 = 5 * 60 * 1000;
/// Most windows one windowed-counter read covers (a week of minutes).
pub const COUNTER_WINDOWS_READ_MAX: u64 = 7 * 24 * 60;
/// Longest rate-limit window and token-bucket refill period (one day).
pub const RATE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;

const _: () = assert!(BATCH_ITEMS_MAX * (KEY_BYTES_MAX + 64) < RECORD_BYTES_MAX as usize * 3);

/// Most ops in one transaction, both branches together.
pub const TXN_OPS_MAX: usize = 256;
/// Most conditions in one transaction.
pub const TXN_CONDITIONS_MAX: usize = 64;
/// Largest transaction, encoded (conditions and both branches). Checked again at apply, so a
/// constant of its own (a transport setting may change between builds; this may not).
pub const TXN_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most bytes of keys and values the reads (KV gets) of one transaction may answer: the answer
/// is saved in the client's session and sent back whole. Past it the transaction is refused.
pub const TXN_READ_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most queue messages one transaction's branch enqueues: message ids number them within the
/// entry in 16 bits.
pub const TXN_MESSAGES_MAX: usize = 1 << 16;

const _: () = assert!(TXN_BYTES_MAX <= CLIENT_MESSAGE_BYTES_MAX);
const _: () = assert!(BATCH_ITEMS_MAX <= TXN_MESSAGES_MAX);

/// Longest queue, topic, group, member or dedup-id name.
pub const NAME_BYTES_MAX: usize = 255;
/// Largest queue message (as SQS).
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Most messages one receive returns.
pub const RECEIVE_MESSAGES_MAX: u32 = 1000;
/// Most dead letters one redrive looks at (those in flight, and those whose source queue is gone,
/// included); messages enqueued into a dead-letter queue directly are not looked at.
pub const REDRIVE_LOOKED_AT_MAX: usize = 4 * RECEIVE_MESSAGES_MAX as usize;
/// Most payload bytes of the dead letters one redrive looks at (moved ones included; at least one
/// is looked at), so its entry and the feed rows it ships stay bounded; the answer says how many
/// moved, and a caller redrives again until it answers 0.
pub const REDRIVE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest visibility timeout (12 hours, as SQS).
pub const VISIBILITY_MS_MAX: u64 = 12 * 3600 * 1000;
/// Most queues one list answers.
pub const LIST_QUEUES_MAX: u32 = 1000;
/// Most topics one list answers.
pub const LIST_TOPICS_MAX: u32 = 1000;
/// Most rows (record batches, partitions, producers, committed offsets looked at) one entry
/// removes of a topic being deleted; the leader's retention entries remove the rest.
pub const TOPIC_DELETE_ROWS_MAX: u32 = 4096;

/// Record batches hidden by stream trims that one retention entry removes (a budget of its own,
/// so a large trim never holds back retention or topic deletions; the leader proposes up to 16
/// such entries a second while some are left).
pub const TRIM_BATCHES_MAX: u32 = 256;
/// Most bytes of record batches one retention entry reads to remove batches trims hid (it
/// always removes at least one).
pub const TRIM_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most partitions with batches hidden by trims that one retention entry works on; they take
/// turns, each entry starting after the one the previous entry stopped at.
pub const TRIM_PARTITIONS_PER_ENTRY_MAX: usize = 64;
/// Most bytes of record batches one entry of a topic deletion reads, so an entry deleting big
/// batches stays bounded (it always removes at least one).
pub const TOPIC_DELETE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most topic deletions one retention entry works on; deletions take turns, each entry starting
/// after the one the previous entry stopped in.
pub const TOPIC_DELETIONS_PER_ENTRY_MAX: usize = 256;
/// Most rows (messages, their index rows, dedup ids) one entry removes of a queue being deleted;
/// the leader's `ContinueDeletes` entries remove the rest.
pub const QUEUE_DELETE_ROWS_MAX: u32 = 4096;
/// Most bytes of messages one entry of a queue deletion reads, so an entry deleting big messages
/// stays bounded (it always removes at least one).
pub const QUEUE_DELETE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most queue deletions one `ContinueDeletes` entry works on; deletions take turns, each entry
/// starting after the one the previous entry stopped in.
pub const QUEUE_DELETIONS_PER_ENTRY_MAX: usize = 256;
/// Most rows (reference rows checked, queue records and messages read) one entry of the
/// dead-letter index build looks at (it also stops at `QUEUE_DELETE_BYTES_MAX` of messages);
/// the build runs once at the home region, on queues a build before the indexes wrote, and
/// deletions and redrives wait for it.
pub const QUEUE_INDEX_ROWS_MAX: u32 = 4096;
/// Most messages one purge entry removes; the SDK's purge goes on until none is left.
pub const PURGE_MESSAGES_MAX: u32 = 4096;
/// Longest enqueue or nack delay, and longest dedup window (one day).
pub const DELAY_MS_MAX: u64 = 24 * 3600 * 1000;
/// Most partitions per topic.
pub const PARTITIONS_MAX: u32 = 1024;
/// Largest stream record value (as Kafka's default).
pub const RECORD_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most records one fetch answers.
pub const FETCH_RECORDS_MAX: u32 = 10_000;
/// Most bytes of keys, values and headers one fetch answer carries (a larger `max_bytes` is
/// lowered to it); the first record is always answered, whatever its size.
pub const FETCH_REPLY_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most bytes of keys, values, headers and payloads in one produce or enqueue.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Longest consumer-group session timeout.
pub const SESSION_TIMEOUT_MS_MAX: u64 = 3600 * 1000;
/// Most topics one group member subscribes to.
pub const TOPICS_PER_MEMBER_MAX: usize = 100;
/// Most KV revisions of history kept for watchers, by default.
pub const KV_HISTORY_REVISIONS_DEFAULT: u64 = 100_000;

const _: () = assert!(BATCH_BYTES_MAX + BATCH_ITEMS_MAX * 64 < RECORD_BYTES_MAX as usize);
const _: () = assert!(RECORD_VALUE_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);

/// The longest purge target (a URL, a prefix or a tag) in bytes.
pub const PURGE_TARGET_BYTES_MAX: usize = 8 * 1024;
/// The purges a region keeps in its purge table for the nodes' edges to follow. An edge that
/// falls further behind (a node down for a while, a snapshot install) forgets its whole cache.
pub const CACHE_PURGES_KEPT_MAX: u64 = 4096;
