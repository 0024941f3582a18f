//! The byte encoding of every record Basalt persists or ships, and the data format number that
//! names it.
//!
//! Owns: [`DATA_FORMAT`], [`encode`], [`decode`], [`encoded_len`] and [`DecodeError`]. Every
//! value Basalt writes to disk (log entries, state records, saved session answers, the Raft
//! metadata in `log.meta` and in snapshot packs) or sends between nodes and regions (Raft
//! messages, feed batches) goes through these functions, so one number says which encoding a
//! data directory, a snapshot pack or a peer speaks. May not touch: files, sockets, or any type's
//! meaning; framing and checksums belong to the containers (log segments, packs, gRPC).
//!
//! The encoding is [postcard] 1.x, whose wire format is specified and stable within 1.x
//! (<https://postcard.jamesmunns.com/wire-format>), chosen over bincode 1.x, which is
//! unmaintained (RUSTSEC-2025-0141). In short (byte diagrams in `docs/data-format.md`):
//! - unsigned integers wider than a byte are LEB128 varints, signed ones zigzag varints first;
//!   `u8` and `bool` are one byte;
//! - a struct is its fields in declaration order, with no names and no lengths;
//! - an enum is its variant index (varint) then the variant's fields;
//! - `Option` is `0` or `1` then the value; a sequence, string or byte string is its length
//!   (varint) then its elements.
//!
//! So the encoding is defined by the Rust type: reordering fields or enum variants, or changing a
//! field's type, changes the format. Such a change must bump [`DATA_FORMAT`]; the golden tests
//! next to each persisted type (and the fixture directory in `tests/fixtures/`) fail otherwise.

use serde::{Deserialize, Serialize};

/// The data format this build writes and reads. Format 1 was bincode 1.x (builds before the
/// change to postcard); format 2 is postcard 1.x with one flat `Op` and `OpError` enum; format 3
/// is postcard 1.x with `Op` and `OpError` nested by data type (`Op::Kv(KvOp::Put { .. })`).
pub const DATA_FORMAT: u32 = 3;

/// The gRPC metadata key under which a node or region names the data format of the payloads it
/// sends (Raft messages, snapshot transfers, feed batches). Builds before format 2 sent none.
pub const DATA_FORMAT_HEADER: &str = "basalt-data-format";

/// A peer, a directory or a pack of another data format than this build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("data format {found}, this build reads {reads}")]
pub struct FormatMismatch {
    pub found: u32,
    pub reads: u32,
}

/// Checks the data format a peer names in its [`DATA_FORMAT_HEADER`] (`None`: no header, as sent
/// by builds of format 1). Unparsable text is reported as format 0.
pub fn check_peer_format(header: Option<&str>) -> Result<(), FormatMismatch> {
    let found = match header {
        None => 1,
        Some(text) => text.trim().parse().unwrap_or(0),
    };
    check_format(found)
}

/// `Ok` when `found` is this build's [`DATA_FORMAT`].
pub fn check_format(found: u32) -> Result<(), FormatMismatch> {
    if found == DATA_FORMAT {
        Ok(())
    } else {
        Err(FormatMismatch {
            found,
            reads: DATA_FORMAT,
        })
    }
}

/// The data format in gRPC metadata: one way for every transport (Raft requests, feed streams and
/// their refusals) to name it and to check a peer's.
#[cfg(feature = "grpc")]
pub mod grpc {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::{check_peer_format, FormatMismatch, DATA_FORMAT, DATA_FORMAT_HEADER};

    /// Names this build's data format in `metadata`.
    pub fn name_format(metadata: &mut MetadataMap) {
        metadata.insert(DATA_FORMAT_HEADER, MetadataValue::from(DATA_FORMAT));
    }

    /// Whether `metadata` names a data format at all (this build's or another).
    pub fn names_a_format(metadata: &MetadataMap) -> bool {
        metadata.get(DATA_FORMAT_HEADER).is_some()
    }

    /// Checks the format a peer names in `metadata` against this build's (none named: format 1).
    pub fn check_named_format(metadata: &MetadataMap) -> Result<(), FormatMismatch> {
        check_peer_format(metadata.get(DATA_FORMAT_HEADER).map(|v| v.to_str().unwrap_or("")))
    }
}

/// A value that does not decode: damage, or bytes of another data format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end, or hold something the type does not allow (a bad varint, variant, UTF-8,
    /// boolean).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The value decoded but bytes are left after it: a record is exactly one value.
    #[error("{extra_bytes} bytes left after the value")]
    TrailingBytes { extra_bytes: usize },
}

/// Encodes `value`. Encoding cannot fail for Basalt's types (they have no sequences of unknown
/// length and no maps with non-serializable keys); a failure is a programming error and panics.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("Basalt's records have an encoding")
}

/// The length of `encode(value)`, without building it (to cut batches and answers by bytes).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .expect("Basalt's records have an encoding")
}

/// Decodes exactly one `T` from `bytes`: bytes left over are an error, as damage would be.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes {
            extra_bytes: rest.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Pair(u64, i64),
        Named {
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            ttl_ms: Option<u32>,
            tags: Vec<String>,
        },
    }

    /// The bytes of the format, pinned: a change here is a change of [`DATA_FORMAT`].
    #[test]
    fn the_encoding_is_the_documented_postcard_layout() {
        assert_eq!(encode(&0u64), [0x00]);
        assert_eq!(encode(&127u64), [0x7f]);
        assert_eq!(encode(&128u64), [0x80, 0x01]);
        assert_eq!(encode(&300u32), [0xac, 0x02]);
        assert_eq!(encode(&-1i64), [0x01], "zigzag");
        assert_eq!(encode(&1i64), [0x02], "zigzag");
        assert_eq!(encode(&7u8), [0x07]);
        assert_eq!(encode(&true), [0x01]);
        assert_eq!(encode(&Shape::Empty), [0x00]);
        assert_eq!(encode(&Shape::Pair(1, -2)), [0x01, 0x01, 0x03]);
        let named = Shape::Named {
            key: b"ab".to_vec(),
            ttl_ms: Some(5),
            tags: vec!["x".into()],
        };
        assert_eq!(encode(&named), [0x02, 0x02, b'a', b'b', 0x01, 0x05, 0x01, 0x01, b'x']);
        assert_eq!(encoded_len(&named), 9);
    }

    #[test]
    fn trailing_and_truncated_bytes_are_refused() {
        assert_eq!(
            decode::<u64>(&[0x05, 0x00]),
            Err(DecodeError::TrailingBytes { extra_bytes: 1 })
        );
        assert!(matches!(decode::<u64>(&[0x80]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode::<Shape>(&[0x09]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode::<bool>(&[0x02]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_peer_of_another_format_is_named_in_the_error() {
        assert_eq!(check_peer_format(Some("3")), Ok(()));
        let old = check_peer_format(None).expect_err("no header is format 1");
        assert_eq!(old.to_string(), "data format 1, this build reads 3");
        assert_eq!(check_peer_format(Some("2")).map_err(|e| e.found), Err(2));
        assert_eq!(check_peer_format(Some("4")).map_err(|e| e.found), Err(4));
        assert_eq!(check_peer_format(Some("x")).map_err(|e| e.found), Err(0));
    }

    proptest! {
        #[test]
        fn every_value_decodes_to_itself(a in any::<u64>(), b in any::<i64>(), key in proptest::collection::vec(any::<u8>(), 0..64),
                                        ttl in proptest::option::of(any::<u32>()), tags in proptest::collection::vec(".{0,8}", 0..4)) {
            for value in [Shape::Empty, Shape::Pair(a, b), Shape::Named { key: key.clone(), ttl_ms: ttl, tags: tags.clone() }] {
                let bytes = encode(&value);
                prop_assert_eq!(bytes.len(), encoded_len(&value));
                prop_assert_eq!(decode::<Shape>(&bytes), Ok(value));
            }
        }
    }
}
