//! The SDK's limits, in one place. The server's own limits are in `basalt-storage`'s `limits`
//! and the server's; the server crate asserts at compile time that what it may answer fits
//! under what the SDK decodes.

/// Largest answer the SDK decodes (tonic's default is 4 MiB, which a scan or a receive of large
/// values passes). The largest answers the server gives are a receive of 1,000 messages of
/// 256 KiB (about 251 MiB), then scan, fetch and watch answers, each cut at 16 MiB by the server.
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most keys one [`crate::Kv::get_many`] reads (the server's limit too).
pub const GET_MANY_KEYS_MAX: usize = 16;

/// Keys a scan asked with limit 0 returns (the server's default too).
pub const SCAN_KEYS_DEFAULT: u32 = 1000;

/// How long `QueueHandle::delete` and `redrive` wait for the home region to build its dead-letter
/// indexes (`QUEUE_INDEX_BUILDING`, once, on queues an older build wrote) before they answer that
/// error.
pub const QUEUE_INDEX_WAIT_MS: u64 = 30_000;
/// Pause between the tries of that wait.
pub const QUEUE_INDEX_RETRY_MS: u64 = 200;

/// A generated gRPC client for `channel` that decodes answers up to [`RESPONSE_BYTES_MAX`]. Every
/// service client the SDK (and the server, forwarding) builds goes through this.
#[macro_export]
macro_rules! service_client {
    ($client:ident, $channel:expr) => {
        $client::new($channel).max_decoding_message_size($crate::limits::RESPONSE_BYTES_MAX)
    };
}

/// Largest key the cluster accepts; the local shadow limiter refuses a larger one as the cluster
/// would (the server asserts it equals its own).
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Longest name of a topic, queue or consumer group the cluster accepts, in bytes (the server
/// asserts it equals its own): a longer name cannot be a topic, so RESP does not look for one.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest rate-limit window and token-bucket period the cluster accepts (one day); likewise.
pub const RATE_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;
