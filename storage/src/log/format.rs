//! The record frame: pure encode and decode, no I/O. Byte layout and recovery rules are in
//! `docs/log-format.md`.
//!
//! ```text
//! 0      4        8        16            16+len
//! | len  | crc32  | index  | payload ... |
//! ```
//! All integers little-endian. `crc32` covers `index` and `payload`, so a record read back at the
//! wrong position, a torn payload or a flipped bit are all caught.
//!
//! Every segment file starts with a header area of [`SEGMENT_HEADER_AREA_BYTES`] holding two
//! [`SegmentHeader`] slots (one per 512-byte sector, written alternately), so a torn header write
//! always leaves the other slot whole. Frames start after the header area.

use crate::limits::RECORD_BYTES_MAX;

/// Bytes of a frame header: `[len u32][crc32 u32][index u64]` (docs/log-format.md).
pub const HEADER_BYTES: usize = 16;

/// Why bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated frame: {available} bytes available, {needed} needed")]
    Truncated { available: usize, needed: usize },
    #[error("frame length {len} exceeds the limit of {RECORD_BYTES_MAX} bytes")]
    LengthTooLarge { len: u32 },
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("out-of-sequence record: expected index {expected}, found {found}")]
    UnexpectedIndex { expected: u64, found: u64 },
}

/// Bytes reserved at the start of a segment file for its header slots; frames start here.
pub const SEGMENT_HEADER_AREA_BYTES: u64 = 4096;
/// Bytes between the starts of the two header slots: one sector each.
pub const HEADER_SLOT_STRIDE_BYTES: u64 = 512;
/// Encoded size of one header slot.
pub const HEADER_SLOT_BYTES: usize = 48;
const SEGMENT_MAGIC: [u8; 8] = *b"BASALTSG";
/// The segment format this code writes and reads. Version 1 (no header) is not read; versions 2
/// and 3 had this layout with entries of data formats 1 (bincode) and 2 (postcard, flat ops), and
/// are refused so that a build of one data format never reads another's entries, even under a
/// wrong `FORMAT` stamp (and an older build refuses these segments by their version instead of
/// misreading them). The segment version moves with every data format for that reason.
pub const SEGMENT_FORMAT_VERSION: u32 = 4;

const _: () = assert!(HEADER_SLOT_BYTES as u64 <= HEADER_SLOT_STRIDE_BYTES);
const _: () = assert!(2 * HEADER_SLOT_STRIDE_BYTES <= SEGMENT_HEADER_AREA_BYTES);

/// One header slot: which segment this is and its durable mark, the records known to be fsynced.
///
/// The mark only ever names records whose fsync completed before the slot was written, so a crash
/// can never leave a mark above the durable data; recovery treats damage below the mark as
/// corruption of acknowledged records, never as a torn append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Increases with every slot write; the valid slot with the highest wins. Slot = `seq % 2`.
    pub seq: u64,
    pub first_index: u64,
    /// Records `first_index .. first_index + durable_count` are durable...
    pub durable_count: u64,
    /// ...and end at this file offset (`SEGMENT_HEADER_AREA_BYTES` when there are none).
    pub durable_end: u64,
}

impl SegmentHeader {
    /// File offset of the slot this header is written to.
    pub fn slot_offset(&self) -> u64 {
        (self.seq % 2) * HEADER_SLOT_STRIDE_BYTES
    }
}

/// Why a header slot is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header slot truncated")]
    Truncated,
    #[error("no segment header magic (not a segment, or one of format version 1)")]
    BadMagic,
    #[error("segment format version {0}, this build reads version {SEGMENT_FORMAT_VERSION}")]
    UnknownVersion(u32),
    #[error("header slot crc mismatch")]
    CrcMismatch,
    #[error("durable mark ends at offset {end}, before the header area")]
    MarkBeforeFrames { end: u64 },
}

pub fn encode_header(header: &SegmentHeader) -> [u8; HEADER_SLOT_BYTES] {
    let mut out = [0u8; HEADER_SLOT_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&header.seq.to_le_bytes());
    out[20..28].copy_from_slice(&header.first_index.to_le_bytes());
    out[28..36].copy_from_slice(&header.durable_count.to_le_bytes());
    out[36..44].copy_from_slice(&header.durable_end.to_le_bytes());
    let crc = crc32fast::hash(&out[..44]);
    out[44..48].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes one header slot. Never panics, whatever the input.
pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let bytes = bytes.get(..HEADER_SLOT_BYTES).ok_or(HeaderError::Truncated)?;
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let stored = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..44]) != stored {
        return Err(HeaderError::CrcMismatch);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Err(HeaderError::UnknownVersion(version));
    }
    let header = SegmentHeader {
        seq: u64_at(12),
        first_index: u64_at(20),
        durable_count: u64_at(28),
        durable_end: u64_at(36),
    };
    if header.durable_end < SEGMENT_HEADER_AREA_BYTES {
        return Err(HeaderError::MarkBeforeFrames {
            end: header.durable_end,
        });
    }
    Ok(header)
}

/// The header in force in a header area: the valid slot with the highest `seq`, or why neither
/// slot is valid (the error of slot 0).
pub fn newest_header(area: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let slot = |i: u64| {
        let start = (i * HEADER_SLOT_STRIDE_BYTES) as usize;
        area.get(start..).map_or(Err(HeaderError::Truncated), decode_header)
    };
    match (slot(0), slot(1)) {
        (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        // A whole slot of another version says more than a torn or zeroed one: the file is
        // another build's, not a creation a crash cut short.
        (Err(HeaderError::UnknownVersion(v)), Err(_)) | (Err(_), Err(HeaderError::UnknownVersion(v))) => {
            Err(HeaderError::UnknownVersion(v))
        }
        (Err(e), Err(_)) => Err(e),
    }
}

/// A decoded record borrowing its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub index: u64,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }
}

/// Appends the frame for `(index, payload)` to `out`.
pub fn encode(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payload length checked against RECORD_BYTES_MAX");
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds RECORD_BYTES_MAX"
    );
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // Pair assertion: what we are about to write decodes to what we were given.
    debug_assert_eq!(
        decode(&out[start..]).map(|f| (f.index, f.payload.len())),
        Ok((index, payload.len()))
    );
}

/// Decodes the frame at the start of `bytes`. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FrameError::Truncated {
            available: bytes.len(),
            needed: HEADER_BYTES,
        });
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX {
        return Err(FrameError::LengthTooLarge { len });
    }
    let needed = HEADER_BYTES + len as usize;
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            available: bytes.len(),
            needed,
        });
    }
    let computed = crc32fast::hash(&bytes[8..needed]);
    if computed != stored {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    let index = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(Frame {
        index,
        payload: &bytes[HEADER_BYTES..needed],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(42, b"hello", &mut buf);
        assert_eq!(buf.len(), HEADER_BYTES + 5);
        let frame = decode(&buf).expect("valid frame");
        assert_eq!(
            frame,
            Frame {
                index: 42,
                payload: b"hello"
            }
        );
    }

    #[test]
    fn zeroed_bytes_are_not_a_record() {
        // A preallocated or zero-filled tail must never decode as an empty record at index 0.
        assert!(matches!(decode(&[0u8; 64]), Err(FrameError::CrcMismatch { .. })));
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode(7, &[0xAB; 100], &mut buf);
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Err(FrameError::Truncated { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(9, b"some payload bytes", &mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    decode(&flipped).is_err(),
                    "flip at byte {byte} bit {bit} decoded as valid"
                );
            }
        }
    }

    fn header(seq: u64) -> SegmentHeader {
        SegmentHeader {
            seq,
            first_index: 100,
            durable_count: 7,
            durable_end: SEGMENT_HEADER_AREA_BYTES + 700,
        }
    }

    fn area_with(headers: &[SegmentHeader]) -> Vec<u8> {
        let mut area = vec![0u8; SEGMENT_HEADER_AREA_BYTES as usize];
        for h in headers {
            let at = h.slot_offset() as usize;
            area[at..at + HEADER_SLOT_BYTES].copy_from_slice(&encode_header(h));
        }
        area
    }

    #[test]
    fn header_round_trip_and_newest_slot_wins() {
        assert_eq!(decode_header(&encode_header(&header(3))), Ok(header(3)));
        assert_eq!(newest_header(&area_with(&[header(4), header(5)])), Ok(header(5)));
        assert_eq!(newest_header(&area_with(&[header(7), header(6)])), Ok(header(7)));
    }

    #[test]
    fn a_torn_slot_leaves_the_other() {
        let mut area = area_with(&[header(4), header(5)]);
        let slot_of_5 = header(5).slot_offset() as usize;
        for byte in slot_of_5..slot_of_5 + HEADER_SLOT_BYTES {
            let mut torn = area.clone();
            torn[byte] ^= 0x40;
            assert_eq!(newest_header(&torn), Ok(header(4)), "damage at byte {byte}");
        }
        area[0..HEADER_SLOT_BYTES].fill(0);
        area[HEADER_SLOT_STRIDE_BYTES as usize..][..HEADER_SLOT_BYTES].fill(0);
        assert_eq!(newest_header(&area), Err(HeaderError::BadMagic));
        assert_eq!(newest_header(&[]), Err(HeaderError::Truncated));
    }

    #[test]
    fn every_header_bit_flip_is_detected() {
        let encoded = encode_header(&header(9));
        for byte in 0..encoded.len() {
            for bit in 0..8 {
                let mut flipped = encoded;
                flipped[byte] ^= 1 << bit;
                assert!(decode_header(&flipped).is_err(), "flip at byte {byte} bit {bit}");
            }
        }
    }

    proptest! {
        #[test]
        fn decode_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_header(&bytes);
            let _ = newest_header(&bytes);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(index in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = Vec::new();
            encode(index, &payload, &mut buf);
            let frame = decode(&buf).expect("valid");
            prop_assert_eq!(frame.index, index);
            prop_assert_eq!(frame.payload, &payload[..]);
        }
    }
}
