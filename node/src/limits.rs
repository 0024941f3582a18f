//! The server's answers against what the SDK decodes: every answer a client service gives fits
//! under `basalt_client::limits::RESPONSE_BYTES_MAX`, checked here at compile time. The limits
//! themselves live where they are enforced (`basalt_storage::limits`, the API files); this file
//! only relates the two crates, which do not depend on each other.

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
        + server::SCAN_LIMIT_MAX as usize * ITEM_FRAMING_BYTES
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
const _: () =
    assert!(server::RECEIVE_MAX as usize * (server::MESSAGE_BYTES_MAX + ITEM_FRAMING_BYTES) <= sdk::RESPONSE_BYTES_MAX);
// A scan with limit 0 returns as many keys whether the SDK or the server fills the default in.
const _: () = assert!(sdk::SCAN_KEYS_DEFAULT == server::SCAN_KEYS_DEFAULT);
