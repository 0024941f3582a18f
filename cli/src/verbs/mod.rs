//! The `basalt` verbs of each data type, one file per type (and `cache`, `cluster`, `regions`), and what
//! they share. `commands.rs` parses the command line and hands each verb to its file.

pub mod auth;
pub mod cache;
pub mod cluster;
pub mod counter;
pub mod kv;
pub mod lease;
pub mod ledger;
pub mod pubsub;
pub mod queue;
pub mod rate_limit;
pub mod regions;
pub mod stream;
pub mod txn;

use basalt_client::ReadConsistency;

/// `-` for nothing.
pub(crate) fn show_optional(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(crate) const STALE_HELP: &str = "Read the answering node's own copy, possibly stale: in a region that is not the \
data's home, that region's copy, served even when the home is unreachable";

pub(crate) fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a receipt printed by [`hex`]. Works on bytes, so a non-ASCII character is "not hex"
/// rather than a slice through the middle of a character.
pub(crate) fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let not_hex = || format!("receipt {text:?} is not hex");
    let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(not_hex);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(not_hex());
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_that_is_not_hex_is_refused_not_a_panic() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Ok(vec![0, 1, 0xab, 0xff]));
        for bad in ["1é1", "é", "abc", "zz", "+1"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }
}
