//! Every limit of the caching rules, with its unit last. `docs/limits.md` lists them with the
//! limits of every other crate.

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: a larger or overflowing value is taken
/// as 2^31 seconds, about 68 years).
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// A heuristic freshness (a tenth of the time since `Last-Modified`, for a response with no
/// explicit freshness) is capped at this many seconds, so an old file is not served unrevalidated
/// for days.
pub const HEURISTIC_FRESHNESS_SECS_MAX: u64 = 24 * 3600;

/// Bytes of one tag (`Surrogate-Key`, `Cache-Tag`). A response with a longer tag is not stored:
/// cutting the tag would let a purge by it miss the object.
pub const TAG_BYTES_MAX: usize = 1024;

/// Tags of one response. A response with more is not stored, for the same reason.
pub const OBJECT_TAGS_MAX: usize = 256;

/// Request headers a response may `Vary` on. A response varying on more is not stored (each
/// variant is a separate object, and the key of each grows with them).
pub const VARY_HEADERS_MAX: usize = 8;

/// Bytes of the secondary key (the request's values of the `Vary` headers, normalised). A request
/// whose values are longer is passed to the origin and its answer not stored.
pub const VARY_KEY_BYTES_MAX: usize = 4096;

/// Bytes one stored object may weigh (body, headers, tags, key). A larger answer is served to
/// its requests and not stored.
pub const STORED_OBJECT_BYTES_MAX: u64 = 64 << 20;

/// Bytes every stored object is charged beyond its body, headers, tags and key (maps, counters,
/// the eviction policy's own entry), so that many tiny objects cannot exceed the budget unseen.
pub const OBJECT_OVERHEAD_BYTES: u64 = 256;

/// Purges the store remembers to check fetches in flight against. A fetch that began before
/// all of them stores nothing (its answer is still served to the requests that waited).
pub const PURGE_LOG_ENTRIES_MAX: usize = 4096;

const _: () = assert!(HEURISTIC_FRESHNESS_SECS_MAX < DELTA_SECONDS_MAX);
// Object weights are u32 in the eviction policy.
const _: () = assert!(STORED_OBJECT_BYTES_MAX <= u32::MAX as u64);
