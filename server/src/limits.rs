//! The server's limits that cross a crate boundary, and how they relate, asserted at compile time:
//! every answer a client service gives fits under `basalt_client::limits::RESPONSE_BYTES_MAX`
//! (the SDK and the storage crate do not depend on each other, so it is checked here), and a feed
//! batch fits the region-to-region message cap. Limits of one API file or task live beside the
//! code that enforces them; `docs/limits.md` lists every one.

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
// A scan with limit 0 returns as many keys whether the SDK or the server fills the default in.
const _: () = assert!(sdk::SCAN_KEYS_DEFAULT == server::SCAN_KEYS_DEFAULT);

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
