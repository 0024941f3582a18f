//! One segment: a file of frames plus its memmap2 offset index.
//!
//! `NNNNNNNNNNNNNNNNNNNN.log` holds the frames of consecutive indexes starting at the number in the
//! name; `NNNNNNNNNNNNNNNNNNNN.idx` holds one little-endian `u64` file offset per entry. The index is
//! rebuilt from a full CRC scan whenever the log opens, so it never needs its own fsync: it is a
//! lookup structure, and the segment file is the only source of truth.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use super::format::{self, FrameError, HEADER_BYTES};
use super::LogError;
use crate::sync::Arc;

pub(crate) struct Segment {
    pub first_index: u64,
    /// Entries physically present, `first_index .. first_index + count`.
    pub count: u64,
    /// Length of the valid part of the file.
    pub bytes: u64,
    pub file: Arc<File>,
    pub path: PathBuf,
    index: MmapMut,
    index_path: PathBuf,
}

/// What a scan of a segment file found.
pub(crate) struct ScanOutcome {
    pub offsets: Vec<u64>,
    pub valid_bytes: u64,
    /// Bytes after the last valid frame, with the reason the first of them is not a frame.
    pub invalid_tail: Option<(u64, FrameError)>,
    /// Whether a well-formed frame with a later index follows the invalid tail: then the damage is
    /// not a torn append but corruption in the middle of the log.
    pub valid_frame_after_tail: bool,
}

pub(crate) fn segment_paths(dir: &Path, first_index: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{first_index:020}.log")),
        dir.join(format!("{first_index:020}.idx")),
    )
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// Scans frames from the start of `bytes`, expecting consecutive indexes from `first_index`.
/// Pure, so the recovery rules are unit-tested without files.
pub(crate) fn scan(bytes: &[u8], first_index: u64) -> ScanOutcome {
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let expected = first_index + offsets.len() as u64;
        match format::decode(&bytes[pos..]) {
            Ok(frame) if frame.index == expected => {
                offsets.push(pos as u64);
                pos += frame.encoded_len();
            }
            Ok(frame) => {
                let err = FrameError::UnexpectedIndex {
                    expected,
                    found: frame.index,
                };
                return tail_outcome(bytes, offsets, pos, err, expected);
            }
            Err(err) => return tail_outcome(bytes, offsets, pos, err, expected),
        }
    }
    ScanOutcome {
        offsets,
        valid_bytes: pos as u64,
        invalid_tail: None,
        valid_frame_after_tail: false,
    }
}

fn tail_outcome(bytes: &[u8], offsets: Vec<u64>, pos: usize, err: FrameError, expected: u64) -> ScanOutcome {
    // Look for any well-formed frame with an index at or after the expected one further on. A torn
    // append leaves only garbage (or nothing) after the last good frame; a valid later record means
    // acknowledged data sits behind the damage, which must never be dropped silently.
    let valid_frame_after_tail = (pos..bytes.len().saturating_sub(HEADER_BYTES - 1))
        .any(|p| matches!(format::decode(&bytes[p..]), Ok(f) if f.index >= expected));
    ScanOutcome {
        offsets,
        valid_bytes: pos as u64,
        invalid_tail: Some((pos as u64, err)),
        valid_frame_after_tail,
    }
}

fn open_index(index_path: &Path, entries_max: u64) -> Result<MmapMut, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(index_path)
        .map_err(|e| LogError::io("open index", index_path, e))?;
    file.set_len(entries_max * 8)
        .map_err(|e| LogError::io("size index", index_path, e))?;
    // SAFETY: the index file is private to this log directory, which one process opens at a time
    // (the node holds a lock on its data directory); no one truncates it while it is mapped.
    unsafe { MmapMut::map_mut(&file) }.map_err(|e| LogError::io("map index", index_path, e))
}

impl Segment {
    pub fn create(dir: &Path, first_index: u64, entries_max: u64) -> Result<Segment, LogError> {
        let (path, index_path) = segment_paths(dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io("create segment", &path, e))?;
        let index = open_index(&index_path, entries_max)?;
        Ok(Segment {
            first_index,
            count: 0,
            bytes: 0,
            file: Arc::new(file),
            path,
            index,
            index_path,
        })
    }

    /// Opens an existing segment and scans it. Returns the segment (holding only its valid prefix
    /// in the index) and the scan outcome, for the caller to decide what an invalid tail means.
    pub fn open(dir: &Path, first_index: u64, entries_max: u64) -> Result<(Segment, ScanOutcome), LogError> {
        let (path, index_path) = segment_paths(dir, first_index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open segment", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| LogError::io("stat segment", &path, e))?
            .len();
        let outcome = if file_len == 0 {
            scan(&[], first_index)
        } else {
            // SAFETY: read-only map of a file only this process writes, dropped before any write.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| LogError::io("map segment", &path, e))?;
            scan(&map, first_index)
        };
        if outcome.offsets.len() as u64 > entries_max {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "{} entries exceed the segment limit {entries_max}",
                    outcome.offsets.len()
                ),
            });
        }
        let mut index = open_index(&index_path, entries_max)?;
        for (i, offset) in outcome.offsets.iter().enumerate() {
            index[i * 8..i * 8 + 8].copy_from_slice(&offset.to_le_bytes());
        }
        let segment = Segment {
            first_index,
            count: outcome.offsets.len() as u64,
            bytes: outcome.valid_bytes,
            file: Arc::new(file),
            path,
            index,
            index_path,
        };
        Ok((segment, outcome))
    }

    pub fn last_index(&self) -> Option<u64> {
        (self.count > 0).then(|| self.first_index + self.count - 1)
    }

    pub fn offset_of(&self, index: u64) -> u64 {
        assert!(index >= self.first_index && index < self.first_index + self.count);
        let i = (index - self.first_index) as usize;
        u64::from_le_bytes(self.index[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }

    /// End offset of the frame of `index`.
    fn end_of(&self, index: u64) -> u64 {
        if index + 1 < self.first_index + self.count {
            self.offset_of(index + 1)
        } else {
            self.bytes
        }
    }

    /// Writes pre-encoded frames (whose offsets relative to the buffer start are `frame_offsets`).
    pub fn write_frames(&mut self, buf: &[u8], frame_offsets: &[u64]) -> Result<(), LogError> {
        assert!(self.count + frame_offsets.len() as u64 <= (self.index.len() / 8) as u64);
        self.file
            .write_all_at(buf, self.bytes)
            .map_err(|e| LogError::io("append", &self.path, e))?;
        for rel in frame_offsets {
            let i = self.count as usize;
            self.index[i * 8..i * 8 + 8].copy_from_slice(&(self.bytes + rel).to_le_bytes());
            self.count += 1;
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Reads and verifies the frames of `start..end` (all inside this segment).
    pub fn read_range(&self, start: u64, end: u64, out: &mut Vec<(u64, Vec<u8>)>) -> Result<(), LogError> {
        assert!(start < end && start >= self.first_index && end <= self.first_index + self.count);
        let from = self.offset_of(start);
        let to = self.end_of(end - 1);
        let mut buf = vec![0u8; (to - from) as usize];
        self.file
            .read_exact_at(&mut buf, from)
            .map_err(|e| LogError::io("read", &self.path, e))?;
        let mut pos = 0usize;
        for index in start..end {
            // Pair assertion at the disk boundary: what we read back must be the frame we indexed.
            let frame = format::decode(&buf[pos..]).map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                offset: from + pos as u64,
                reason: e.to_string(),
            })?;
            if frame.index != index {
                return Err(LogError::Corrupt {
                    path: self.path.clone(),
                    offset: from + pos as u64,
                    reason: format!("expected index {index}, found {}", frame.index),
                });
            }
            out.push((index, frame.payload.to_vec()));
            pos += frame.encoded_len();
        }
        Ok(())
    }

    /// Drops entries after `keep_last` (which must be inside this segment), durably.
    pub fn truncate_after(&mut self, keep_last: u64) -> Result<(), LogError> {
        assert!(keep_last >= self.first_index && keep_last < self.first_index + self.count);
        let new_bytes = self.end_of(keep_last);
        self.file
            .set_len(new_bytes)
            .map_err(|e| LogError::io("truncate", &self.path, e))?;
        self.file.sync_all().map_err(|e| LogError::io("sync", &self.path, e))?;
        self.count = keep_last - self.first_index + 1;
        self.bytes = new_bytes;
        Ok(())
    }

    /// Truncates the file to its valid prefix (dropping a torn tail found by `open`), durably.
    pub fn drop_invalid_tail(&mut self) -> Result<(), LogError> {
        self.file
            .set_len(self.bytes)
            .map_err(|e| LogError::io("truncate", &self.path, e))?;
        self.file.sync_all().map_err(|e| LogError::io("sync", &self.path, e))
    }

    pub fn remove_files(self) -> Result<(), LogError> {
        std::fs::remove_file(&self.path).map_err(|e| LogError::io("remove segment", &self.path, e))?;
        match std::fs::remove_file(&self.index_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io("remove index", &self.index_path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            format::encode(first + i as u64, p, &mut buf);
        }
        buf
    }

    #[test]
    fn scan_clean_segment() {
        let buf = frames(10, &[b"a", b"bb", b"ccc"]);
        let out = scan(&buf, 10);
        assert_eq!(out.offsets, vec![0, 17, 35]);
        assert_eq!(out.valid_bytes, buf.len() as u64);
        assert!(out.invalid_tail.is_none());
    }

    #[test]
    fn scan_torn_tail_has_no_valid_frame_after() {
        let buf = frames(1, &[b"first", b"second"]);
        let torn = &buf[..buf.len() - 3];
        let out = scan(torn, 1);
        assert_eq!(out.offsets.len(), 1);
        assert!(out.invalid_tail.is_some());
        assert!(!out.valid_frame_after_tail);
    }

    #[test]
    fn scan_damage_before_valid_frame_is_flagged() {
        let mut buf = frames(1, &[b"first", b"second", b"third"]);
        buf[HEADER_BYTES + 2] ^= 0x01; // inside the first payload
        let out = scan(&buf, 1);
        assert_eq!(out.offsets.len(), 0);
        assert!(
            out.valid_frame_after_tail,
            "records 2 and 3 are intact behind the damage"
        );
    }

    #[test]
    fn scan_rejects_out_of_sequence_index() {
        let mut buf = frames(1, &[b"a"]);
        format::encode(5, b"b", &mut buf);
        let out = scan(&buf, 1);
        assert_eq!(out.offsets.len(), 1);
        assert!(out.invalid_tail.is_some());
        assert!(out.valid_frame_after_tail);
    }

    #[test]
    fn segment_names_round_trip() {
        let (path, _) = segment_paths(Path::new("/x"), 42);
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf8");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.idx"), None);
    }
}
