//! Storage faults, injected while a node is stopped: one bit flipped inside a log record that has
//! acknowledged records after it. Every frame is checksummed (crc32 over index and payload), so the
//! node must refuse to start rather than serve the record or silently drop what follows it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

use basalt_storage::log::format::{HEADER_BYTES as FRAME_HEADER_BYTES, SEGMENT_HEADER_AREA_BYTES};

#[derive(Debug)]
pub struct StorageFault {
    pub file: PathBuf,
    pub offset: u64,
    pub bit: u8,
    original: u8,
}

impl StorageFault {
    /// Puts the original byte back.
    pub fn repair(&self) -> std::io::Result<()> {
        write_byte(&self.file, self.offset, self.original)
    }
}

fn write_byte(file: &Path, offset: u64, byte: u8) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&[byte])?;
    f.sync_all()
}

/// Byte ranges of the whole frames in a segment file (they start after the header area).
pub fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_AREA_BYTES as usize;
    while pos + FRAME_HEADER_BYTES <= bytes.len() {
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[pos..pos + 4]);
        let end = pos + FRAME_HEADER_BYTES + u32::from_le_bytes(len) as usize;
        if end > bytes.len() {
            break;
        }
        frames.push((pos, end));
        pos = end;
    }
    frames
}

/// Flips one bit in a record of the newest segment that holds at least two, never in the last one
/// (a damaged last record is indistinguishable from a torn append and is legitimately cut off).
pub fn flip_bit(log_dir: &Path, rng: &mut impl Rng) -> std::io::Result<StorageFault> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(log_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    for file in segments.iter().rev() {
        let mut bytes = Vec::new();
        std::fs::File::open(file)?.read_to_end(&mut bytes)?;
        let frames = frames(&bytes);
        if frames.len() < 2 {
            continue;
        }
        let (start, end) = frames[rng.gen_range(0..frames.len() - 1)];
        // Anywhere the checksum covers, or the checksum itself.
        let offset = rng.gen_range(start + 4..end);
        let bit = rng.gen_range(0..8u8);
        let original = bytes[offset];
        write_byte(file, offset as u64, original ^ (1 << bit))?;
        return Ok(StorageFault {
            file: file.clone(),
            offset: offset as u64,
            bit,
            original,
        });
    }
    Err(std::io::Error::other("no segment with two or more records"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_flip_lands_in_a_record_that_is_not_the_last_and_repair_undoes_it() {
        let dir = std::env::temp_dir().join(format!("basalt-jepsen-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            // A real segment, as the node writes it (header area, then frames).
            let mut log = basalt_storage::log::SegmentedLog::open(&dir, Default::default()).expect("open log");
            let records: [&[u8]; 3] = [b"first record", b"second", b"third"];
            log.append(records.iter().enumerate().map(|(i, r)| (i as u64 + 1, *r)), None)
                .expect("append");
            log.sync().expect("sync");
        }
        let path = dir.join("00000000000000000001.log");
        let segment = std::fs::read(&path).expect("read");
        let last_start = segment.len() - (FRAME_HEADER_BYTES + b"third".len());
        assert_eq!(frames(&segment).len(), 3);
        for seed in 0..50 {
            let fault = flip_bit(&dir, &mut StdRng::seed_from_u64(seed)).expect("flip");
            let damaged = std::fs::read(&path).expect("read");
            let changed: Vec<usize> = (0..segment.len()).filter(|&i| damaged[i] != segment[i]).collect();
            assert_eq!(changed, vec![fault.offset as usize]);
            assert_eq!((damaged[changed[0]] ^ segment[changed[0]]).count_ones(), 1);
            assert!(changed[0] < last_start, "never in the last record");
            assert!(changed[0] >= SEGMENT_HEADER_AREA_BYTES as usize, "never in the header");
            fault.repair().expect("repair");
            assert_eq!(std::fs::read(&path).expect("read"), segment);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
