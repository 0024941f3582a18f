//! The Redis protocol's limits, in one place. Each is checked where a request is read or a
//! command runs, and answered with the error Redis gives for it.

/// Largest bulk string of a request, in bytes. Redis's `proto-max-bulk-len` is 512 MiB; a Basalt
/// value is at most 1 MiB and a request at most 4 MiB, so a larger bulk could never be stored
/// and is refused before it is buffered (`ERR Protocol error: invalid bulk length`).
pub const BULK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most arguments in one request, Redis's own bound (`ERR Protocol error: invalid multibulk
/// length`).
pub const REQUEST_ARGS_MAX: usize = 1024 * 1024;

/// Most bytes one request may hold in all (its arguments and their framing). A request that
/// claims more is refused before it is buffered, so a connection never holds more than this plus
/// one read buffer.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Longest inline command (`PING\r\n` typed at a terminal) and longest count or length line of
/// a multibulk request, in bytes: Redis's `PROTO_INLINE_MAX_SIZE`.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Requests a connection runs before it writes their replies and looks at the rest: a client
/// pipelining faster than it reads replies is paced by its socket, not buffered without bound.
pub const PIPELINE_ROUND_REQUESTS_MAX: usize = 1024;

/// Keys `KEYS`, `DBSIZE` and `FLUSHDB` walk before they give up with an error: Redis answers
/// them from memory; here each is a scan of the cluster's keyspace.
pub const KEYSPACE_WALK_KEYS_MAX: usize = 1_000_000;

/// Keys one page of a cluster scan reads (the SDK's and the server's largest scan).
pub const SCAN_PAGE_KEYS: u32 = 10_000;

/// Open `SCAN` cursors one connection keeps (each remembers where its scan goes on); past this
/// the oldest is forgotten and using it again starts over, as a stale cursor would.
pub const SCAN_CURSORS_MAX: usize = 64;

/// Bytes of replies a connection holds before writing them out, even within one pipeline.
pub const REPLY_FLUSH_BYTES: usize = 1024 * 1024;

/// Bytes one reply may hold in all (`MGET`, `KEYS`): a larger one is refused with an error
/// instead of being built in the node's memory.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Keys and values of pipelined `SET`s sent as one transaction, in bytes, well under the
/// server's 4 MiB transaction bound; a longer run goes as several.
pub const SET_RUN_BYTES_MAX: usize = 1024 * 1024;

/// Conditions of one Basalt transaction (the server's `TXN_CONDITIONS_MAX`): the most keys one
/// `MSETNX` may name, and the most keys a connection may `WATCH`.
pub const TXN_CONDITIONS_MAX: usize = 64;

/// Largest value the cluster stores (the server's `VALUE_BYTES_MAX`), in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Longest time to live the cluster takes (the server's `TTL_MS_MAX`: 365 days), in ms. Redis
/// takes longer ones; here a longer `EX` is refused with the cluster's error.
pub const TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;

/// Channels and patterns one connection may subscribe to, and name in one command.
pub const SUBSCRIPTIONS_MAX: usize = 1024;

/// Bytes of keys and values one Basalt transaction writes (the server's `TXN_BYTES_MAX`): the
/// most a `MULTI` block may write in all, so at most about four hashes or sorted sets near their
/// 1 MiB bound.
pub const TXN_WRITE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Ops of one Basalt transaction (the server's `TXN_OPS_MAX`): the most keys one `MSET`, `DEL`
/// or `EXEC` may write.
pub const TXN_OPS_MAX: usize = 256;

/// Times a group of writes of one key (`INCR`, `APPEND`, `HSET`, ...), or a `MULTI` block,
/// retries its compare-and-set when another writer changed a key in between, before it answers
/// `TRYAGAIN`.
pub const CAS_ATTEMPTS_MAX: u32 = 100;

/// Commands `MULTI` may queue before `EXEC`.
pub const MULTI_QUEUED_MAX: usize = TXN_OPS_MAX;

/// Pub/sub messages waiting to be written to one connection; a subscriber that reads slower
/// than messages arrive makes its subscriptions wait (and Basalt's pub/sub drop for it, as for
/// any slow subscriber), rather than the node buffering without bound.
pub const PUSH_BUFFER_MESSAGES: usize = 1024;

/// Entries one `XREADGROUP` delivers from one stream per call (fewer than `COUNT` asks for is
/// Redis's contract too): each becomes a pending row written in the transaction that claims
/// them, with the group's row, so at most [`TXN_OPS_MAX`] less one.
pub const STREAM_CLAIM_ENTRIES_MAX: usize = 200;

/// Longest single wait of a blocking `XREAD` or `XREADGROUP`, in milliseconds: a longer `BLOCK`
/// (or `BLOCK 0`, without end) waits in rounds of this, so a stream created meanwhile is seen
/// and a departed client is noticed between rounds.
pub const STREAM_BLOCK_ROUND_MS: u64 = 5_000;

/// Streams one `XREAD` or `XREADGROUP` may name.
pub const STREAMS_PER_READ_MAX: usize = 64;

/// Pause between looks at a stream a blocking read waits on that does not exist yet, in
/// milliseconds (a stream that exists is long-polled instead).
pub const STREAM_ABSENT_POLL_MS: u64 = 250;

/// Pending rows of a group one `XREADGROUP ... ID` passes (other consumers' included) looking
/// for the consumer's own; past it an error asks for a later id or acknowledgements.
pub const PENDING_SCAN_ROWS_MAX: usize = 100_000;

/// Entries of one stream combined into one transaction (one produce) by the appends of many
/// connections; a longer round goes as several, in order (the cluster takes 8190 records a
/// produce).
pub const STREAM_APPEND_RECORDS_MAX: usize = 1000;

/// Entries with trimming options (`XADD ... MAXLEN|MINID`) combined into one transaction: each
/// may be a trim op of its own (a transaction takes 256 ops); a round with more goes as several.
pub const STREAM_APPEND_TRIMS_MAX: usize = 64;

/// Bytes of entries combined into one transaction, in bytes (the cluster takes 4 MiB a
/// transaction); one larger entry goes alone.
pub const STREAM_APPEND_BYTES_MAX: usize = 1024 * 1024;

/// Ids one `XCLAIM` may name (Redis takes any number; here each is a row read and a
/// transaction condition).
pub const XCLAIM_IDS_MAX: usize = 1000;

/// Consumer groups `XINFO GROUPS` lists (each counted from its pending rows); a stream of more
/// is answered an error.
pub const XINFO_GROUPS_MAX: usize = 1000;

/// How long a connection with a client certificate waits, before its first command, for the
/// node to say which user the certificate names; past it the connection is taken as that
/// user's (every command is checked by the node anyway).
pub const CERTIFICATE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a key's runner waits, between rounds, for the callers of the round just ended to come
/// back (see `combine`'s gathering); the wait is also about half the last round's time. Tokio's
/// timer rounds a deadline up to its next millisecond, so the wait never passes 2 ms.
pub const ROUND_GATHER_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// Most callers a key's runner gathers for before a round (more may join; it just stops waiting).
pub const ROUND_GATHER_CALLERS_MAX: usize = 1024;

/// Most items one round of a key takes, counted in whole callers (at least one caller): the
/// round is applied in one stretch on the node's async thread, a hash or sorted set re-encoded
/// per command, so it is bounded; the rest go in the next round.
pub const ROUND_ITEMS_MAX: usize = 1024;

/// Most commands of one pipeline's run of writes of one key that join a group together (see
/// `combine`'s `write_all`); a longer run goes as several. Bounds what one connection puts in a
/// group: the group is applied in one stretch, re-encoding a hash or sorted set per command.
pub const PIPELINE_KEY_WRITES_MAX: usize = 64;
