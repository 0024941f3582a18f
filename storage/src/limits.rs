//! Every limit Basalt enforces, in one place, with how they relate asserted at compile time.

/// Largest key accepted by any data type.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value accepted by KV.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest single log record (one serialized Raft entry). A frame header claiming more is corrupt.
pub const RECORD_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Default size at which the log rolls to a new segment.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Most entries a segment holds; sizes the mmap index (8 bytes per entry).
pub const SEGMENT_ENTRIES_MAX: u64 = 1 << 20;
/// Most keys one scan returns.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// Longest TTL accepted (one year), so `stamp + ttl` never overflows the HLC's 48-bit clock.
pub const TTL_MS_MAX: u64 = 365 * 24 * 3600 * 1000;

const _: () = assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX + 1024 < RECORD_BYTES_MAX as usize);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= RECORD_BYTES_MAX as u64);

/// Most items (counter ops, rate checks, accounts, transfers) in one batched request, as in
/// TigerBeetle: big enough to amortize a Raft round, small enough to keep one entry under a few MB.
pub const BATCH_ITEMS_MAX: usize = 8190;
/// Longest rate-limit window and token-bucket refill period (one day).
pub const RATE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;

const _: () = assert!(BATCH_ITEMS_MAX * (KEY_BYTES_MAX + 64) < RECORD_BYTES_MAX as usize * 3);
