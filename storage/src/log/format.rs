//! The record frame: pure encode and decode, no I/O. Byte layout and recovery rules are in
//! `docs/log-format.md`.
//!
//! ```text
//! 0      4        8        16            16+len
//! | len  | crc32  | index  | payload ... |
//! ```
//! All integers little-endian. `crc32` covers `index` and `payload`, so a record read back at the
//! wrong position, a torn payload or a flipped bit are all caught.

use crate::limits::RECORD_BYTES_MAX;

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

    proptest! {
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
