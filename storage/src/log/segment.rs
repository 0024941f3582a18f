//! One segment: a file of frames after a header area, and its in-memory offset index.
//!
//! `NNNNNNNNNNNNNNNNNNNN.log` holds the frames of consecutive indexes starting at the number in the
//! name. Its header slots (see [`format::SegmentHeader`]) carry the durable mark: how many records
//! are known to be fsynced. The offset index is rebuilt from a full CRC scan whenever the log
//! opens, and lives in anonymous memory (memmap2: reserved up front, paged in as it fills), never
//! in a mapped file, so a disk error or a full disk is an `Err`, never a SIGBUS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::MmapMut;

use super::file_system::{LogFile, LogFileSystem};
use super::format::{self, FrameError, HeaderError, SegmentHeader, HEADER_BYTES, SEGMENT_HEADER_AREA_BYTES};
use super::{Failure, LogError};
use crate::limits::{RECORD_BYTES_MAX, SEGMENT_FILE_BYTES_MAX};

/// The records of a segment known to be durable: `count` records from the first, ending at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurableMark {
    pub count: u64,
    pub end: u64,
}

impl DurableMark {
    pub const NONE: DurableMark = DurableMark {
        count: 0,
        end: SEGMENT_HEADER_AREA_BYTES,
    };
}

/// What the flusher needs to raise a segment's mark once an append is durable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cover {
    /// The segment's truncation generation when the append was written: a truncation since then
    /// may have cut what the append wrote, so its cover no longer applies.
    pub generation: u64,
    pub mark: DurableMark,
}

struct MarkState {
    /// The mark in the newest header slot written.
    mark: DurableMark,
    /// Bumped by every truncation.
    generation: u64,
    /// `seq` of the newest header slot written.
    seq: u64,
    /// Header slot writes made, and how many of them a completed sync covers.
    slot_writes: u64,
    synced_slot_writes: u64,
    /// Set at open: the slot in force was read back, perhaps from the page cache only (a page a
    /// failed fsync left clean), so before the other slot is written it is written again and
    /// fsynced: a torn write of the other slot must leave a whole slot on the disk.
    rewrite_in_force: bool,
}

/// A segment file, shared between the writer and the flusher thread (which raises the mark).
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    file: Arc<dyn LogFile>,
    first_index: u64,
    mark: Mutex<MarkState>,
    /// Held across every fsync of the file. Two threads fsyncing one file description race for
    /// a writeback error (Linux reports it to one of them): serialized, and with the log's
    /// failure checked inside, no fsync can answer `Ok` after another one lost data.
    fsync_serial: Mutex<()>,
    failure: Failure,
}

impl SegmentFile {
    fn state(&self) -> MutexGuard<'_, MarkState> {
        // A panic while holding this lock is a bug in a few lines of arithmetic; keep going with
        // the state, which is only ever changed after its file write succeeded.
        self.mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The one place the file is fsynced. Refuses once the log failed; a failure here fails the
    /// log for good (see [`Failure`]).
    fn fsync(&self, op: &'static str) -> Result<(), LogError> {
        let _serial = self
            .fsync_serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(reason) = self.failure.get() {
            return Err(LogError::Failed(reason));
        }
        self.file.sync().map_err(|e| {
            let error = LogError::io(op, &self.path, e);
            self.failure.set(error.to_string());
            error
        })
    }

    /// fsyncs the file: its frames and any header slot written before the call.
    pub fn sync(&self) -> Result<(), LogError> {
        let writes = self.state().slot_writes;
        self.fsync("sync")?;
        let mut state = self.state();
        state.synced_slot_writes = state.synced_slot_writes.max(writes);
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Writes `mark` into the next header slot. A slot is only overwritten once the write of the
    /// other one is durable, so a torn slot write always leaves a whole, older slot behind.
    fn write_mark(&self, state: &mut MarkState, mark: DurableMark) -> Result<(), LogError> {
        if state.rewrite_in_force {
            let in_force = SegmentHeader {
                seq: state.seq,
                first_index: self.first_index,
                durable_count: state.mark.count,
                durable_end: state.mark.end,
            };
            self.file
                .write_all_at(&format::encode_header(&in_force), in_force.slot_offset())
                .map_err(|e| LogError::io("write header", &self.path, e))?;
            state.slot_writes += 1;
            state.rewrite_in_force = false;
        }
        if state.synced_slot_writes < state.slot_writes {
            let writes = state.slot_writes;
            self.fsync("sync header")?;
            state.synced_slot_writes = writes;
        }
        let header = SegmentHeader {
            seq: state.seq + 1,
            first_index: self.first_index,
            durable_count: mark.count,
            durable_end: mark.end,
        };
        self.file
            .write_all_at(&format::encode_header(&header), header.slot_offset())
            .map_err(|e| LogError::io("write header", &self.path, e))?;
        state.seq = header.seq;
        state.slot_writes += 1;
        state.mark = mark;
        Ok(())
    }

    /// Raises the mark to `cover` (records already fsynced) unless a truncation came in between.
    /// The slot is written, not synced: the next sync of the file makes it durable. Returns
    /// whether a slot was written.
    pub fn raise_mark(&self, cover: Cover) -> Result<bool, LogError> {
        let mut state = self.state();
        if cover.generation != state.generation || cover.mark.count <= state.mark.count {
            return Ok(false);
        }
        self.write_mark(&mut state, cover.mark)?;
        Ok(true)
    }

    /// Raises the mark to `mark` durably, over records already fsynced: slot write, fsync.
    fn raise_mark_durably(&self, mark: DurableMark) -> Result<(), LogError> {
        let mut state = self.state();
        if mark.count <= state.mark.count {
            return Ok(());
        }
        self.write_mark_durably(&mut state, mark)
    }

    /// [`SegmentFile::write_mark`], then an fsync that makes the slot durable.
    fn write_mark_durably(&self, state: &mut MarkState, mark: DurableMark) -> Result<(), LogError> {
        self.write_mark(state, mark)?;
        let writes = state.slot_writes;
        self.fsync("sync header")?;
        state.synced_slot_writes = writes;
        Ok(())
    }

    /// Lowers the mark to at most `mark`, durably, and invalidates covers computed before. Called
    /// before a truncation cuts records, so the mark never names a record that is gone.
    fn lower_mark(&self, mark: DurableMark) -> Result<(), LogError> {
        let mut state = self.state();
        state.generation += 1;
        if state.mark.count <= mark.count {
            return Ok(());
        }
        self.write_mark_durably(&mut state, mark)
    }
}

pub(crate) struct Segment {
    pub first_index: u64,
    /// Entries physically present, `first_index .. first_index + count`.
    pub count: u64,
    /// Length of the valid part of the file, header area included.
    pub bytes: u64,
    pub file: Arc<SegmentFile>,
    /// Offsets of the entries, 8 bytes each, in anonymous memory.
    index: MmapMut,
}

/// What a scan of a segment's frames found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// File offsets of the valid frames.
    pub offsets: Vec<u64>,
    /// End of the last valid frame.
    pub valid_end: u64,
    /// Where the first invalid frame starts, and why it is not a frame.
    pub invalid_tail: Option<(u64, FrameError)>,
    /// Whether the record that should follow the invalid frame (at the offset its length field
    /// gives, with the next index) is intact: then the damage is not a torn append.
    pub next_record_intact: bool,
}

/// Why a segment cannot be used as it is.
pub(crate) enum OpenError {
    /// Neither header slot is valid and the file is no longer than the header area: a creation
    /// interrupted by a crash, holding no record.
    Unborn(HeaderError),
    Log(LogError),
}

impl From<LogError> for OpenError {
    fn from(e: LogError) -> Self {
        OpenError::Log(e)
    }
}

pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.log"))
}

/// The first index a segment file name gives: `None` if the name is not a segment's (twenty
/// ASCII digits and `.log`), `Some(Err)` if it looks like one but the number is out of range.
pub(crate) fn parse_segment_name(name: &str) -> Option<Result<u64, ()>> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(stem.parse().map_err(|_| ()))
}

/// Scans frames of `bytes` (the file from `base` on), expecting consecutive indexes from
/// `first_index`. Pure, so the recovery rules are unit-tested without files. Its cost is one pass
/// over the bytes plus one frame decode past the damage: never a search.
pub(crate) fn scan(bytes: &[u8], base: u64, first_index: u64) -> ScanOutcome {
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let expected = first_index + offsets.len() as u64;
        let err = match format::decode(&bytes[pos..]) {
            Ok(frame) if frame.index == expected => {
                offsets.push(base + pos as u64);
                pos += frame.encoded_len();
                continue;
            }
            Ok(frame) => FrameError::UnexpectedIndex {
                expected,
                found: frame.index,
            },
            Err(err) => err,
        };
        return ScanOutcome {
            valid_end: base + pos as u64,
            next_record_intact: next_record_intact(&bytes[pos..], expected + 1),
            offsets,
            invalid_tail: Some((base + pos as u64, err)),
        };
    }
    ScanOutcome {
        offsets,
        valid_end: base + pos as u64,
        invalid_tail: None,
        next_record_intact: false,
    }
}

/// Whether, past the invalid frame at the start of `bytes`, the record `next_index` sits where
/// the invalid frame's length field says it ends. A torn append leaves nothing valid there; a
/// flipped bit in a complete record leaves its successor in place.
fn next_record_intact(bytes: &[u8], next_index: u64) -> bool {
    let Some(len) = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    else {
        return false;
    };
    if len > RECORD_BYTES_MAX {
        return false;
    }
    let next = HEADER_BYTES + len as usize;
    bytes
        .get(next..)
        .is_some_and(|rest| matches!(format::decode(rest), Ok(f) if f.index == next_index))
}

fn anonymous_index(entries_max: u64, path: &Path) -> Result<MmapMut, LogError> {
    MmapMut::map_anon((entries_max * 8) as usize).map_err(|e| LogError::io("reserve index memory", path, e))
}

impl Segment {
    /// Creates the file with its header, durably (file and directory entry), before any record is
    /// written to it.
    pub fn create(
        fs: &dyn LogFileSystem,
        dir: &Path,
        first_index: u64,
        entries_max: u64,
        failure: &Failure,
    ) -> Result<Segment, LogError> {
        let path = segment_path(dir, first_index);
        let file = fs
            .create_new(&path)
            .map_err(|e| LogError::io("create segment", &path, e))?;
        let header = SegmentHeader {
            seq: 0,
            first_index,
            durable_count: 0,
            durable_end: SEGMENT_HEADER_AREA_BYTES,
        };
        let mut area = vec![0u8; SEGMENT_HEADER_AREA_BYTES as usize];
        area[..format::HEADER_SLOT_BYTES].copy_from_slice(&format::encode_header(&header));
        file.write_all_at(&area, 0)
            .map_err(|e| LogError::io("write header", &path, e))?;
        let index = anonymous_index(entries_max, &path)?;
        let segment = Segment {
            first_index,
            count: 0,
            bytes: SEGMENT_HEADER_AREA_BYTES,
            file: Arc::new(SegmentFile {
                path,
                file,
                first_index,
                mark: Mutex::new(MarkState {
                    mark: DurableMark::NONE,
                    generation: 0,
                    seq: 0,
                    slot_writes: 1,
                    synced_slot_writes: 0,
                    rewrite_in_force: false,
                }),
                fsync_serial: Mutex::new(()),
                failure: failure.clone(),
            }),
            index,
        };
        segment.file.sync()?;
        fs.sync_dir(dir).map_err(|e| LogError::io("sync dir", dir, e))?;
        Ok(segment)
    }

    /// Opens an existing segment and scans it. Returns the segment (holding only its valid prefix
    /// in the index), its durable mark and the scan outcome, for the caller to decide what an
    /// invalid tail means.
    pub fn open(
        fs: &dyn LogFileSystem,
        dir: &Path,
        first_index: u64,
        entries_max: u64,
        failure: &Failure,
    ) -> Result<(Segment, DurableMark, ScanOutcome), OpenError> {
        let path = segment_path(dir, first_index);
        let corrupt = |offset: u64, reason: String| LogError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let file = fs.open(&path).map_err(|e| LogError::io("open segment", &path, e))?;
        let file_len = file.byte_len().map_err(|e| LogError::io("stat segment", &path, e))?;
        if file_len > SEGMENT_FILE_BYTES_MAX {
            return Err(corrupt(
                0,
                format!("{file_len} bytes, more than any segment holds ({SEGMENT_FILE_BYTES_MAX})"),
            )
            .into());
        }
        let read_len = usize::try_from(file_len).map_err(|_| corrupt(0, format!("{file_len} bytes")))?;
        let mut bytes = vec![0u8; read_len];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| LogError::io("read segment", &path, e))?;
        let header_area = &bytes[..read_len.min(SEGMENT_HEADER_AREA_BYTES as usize)];
        let header = match format::newest_header(header_area) {
            Ok(header) => header,
            // Frames from offset 0, starting with the file's index: format 1, never a header
            // write a crash cut short. Refused, never removed as if it held nothing.
            Err(_) if matches!(format::decode(&bytes), Ok(f) if f.index == first_index) => {
                return Err(corrupt(
                    0,
                    format!(
                        "a segment of format version 1 (frames from offset 0, no header); this build reads version \
                         {}",
                        format::SEGMENT_FORMAT_VERSION
                    ),
                )
                .into())
            }
            Err(HeaderError::UnknownVersion(found)) => {
                return Err(LogError::OtherVersion {
                    path: path.clone(),
                    found,
                    reads: format::SEGMENT_FORMAT_VERSION,
                }
                .into())
            }
            Err(e) if file_len <= SEGMENT_HEADER_AREA_BYTES => return Err(OpenError::Unborn(e)),
            Err(e) => return Err(corrupt(0, format!("no valid header slot: {e}")).into()),
        };
        if header.first_index != first_index {
            return Err(corrupt(
                header.slot_offset(),
                format!(
                    "the header names first index {}, the file name {first_index}",
                    header.first_index
                ),
            )
            .into());
        }
        let frames = bytes.get(SEGMENT_HEADER_AREA_BYTES as usize..).unwrap_or(&[]);
        let outcome = scan(frames, SEGMENT_HEADER_AREA_BYTES, first_index);
        // A segment written with a larger entry limit keeps its entries (and rolls at once).
        let capacity = entries_max.max(outcome.offsets.len() as u64);
        let mut index = anonymous_index(capacity, &path)?;
        for (i, offset) in outcome.offsets.iter().enumerate() {
            index[i * 8..i * 8 + 8].copy_from_slice(&offset.to_le_bytes());
        }
        let mark = DurableMark {
            count: header.durable_count,
            end: header.durable_end,
        };
        let segment = Segment {
            first_index,
            count: outcome.offsets.len() as u64,
            bytes: outcome.valid_end,
            file: Arc::new(SegmentFile {
                path,
                file,
                first_index,
                mark: Mutex::new(MarkState {
                    mark,
                    generation: 0,
                    seq: header.seq,
                    // The slot in force may so far be in the page cache only (a process crash,
                    // not a power loss): it is written again and fsynced before the other slot
                    // is overwritten.
                    slot_writes: 0,
                    synced_slot_writes: 0,
                    rewrite_in_force: true,
                }),
                fsync_serial: Mutex::new(()),
                failure: failure.clone(),
            }),
            index,
        };
        Ok((segment, mark, outcome))
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn last_index(&self) -> Option<u64> {
        (self.count > 0).then(|| self.first_index + self.count - 1)
    }

    pub fn offset_of(&self, index: u64) -> u64 {
        assert!(index >= self.first_index && index < self.first_index + self.count);
        let i = (index - self.first_index) as usize;
        u64::from_le_bytes(self.index[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }

    /// Bytes of the frame of `index`, header included.
    pub fn frame_bytes(&self, index: u64) -> u64 {
        self.end_of(index) - self.offset_of(index)
    }

    /// End offset of the frame of `index`.
    fn end_of(&self, index: u64) -> u64 {
        if index + 1 < self.first_index + self.count {
            self.offset_of(index + 1)
        } else {
            self.bytes
        }
    }

    /// The mark covering every record written so far, for the flusher to raise once they are
    /// durable.
    pub fn cover(&self) -> Cover {
        Cover {
            generation: self.file.generation(),
            mark: DurableMark {
                count: self.count,
                end: self.bytes,
            },
        }
    }

    /// Makes the whole segment durable and raises its mark over all of it, before the log rolls
    /// past it.
    pub fn seal(&self) -> Result<(), LogError> {
        self.file.sync()?;
        self.file.raise_mark_durably(DurableMark {
            count: self.count,
            end: self.bytes,
        })
    }

    /// Writes the records above `mark` again and fsyncs them, then raises the mark over them.
    /// At open, what a read returns may come from the page cache only: after a failed fsync the
    /// kernel keeps the pages it could not write as clean, so no later fsync writes them. Written
    /// again, they are dirty, and the fsync puts them on disk.
    pub fn make_unmarked_tail_durable(&self, mark: DurableMark) -> Result<(), LogError> {
        if self.bytes <= mark.end {
            return Ok(());
        }
        let mut tail = vec![0u8; (self.bytes - mark.end) as usize];
        self.file
            .file
            .read_exact_at(&mut tail, mark.end)
            .map_err(|e| LogError::io("read", self.path(), e))?;
        self.file
            .file
            .write_all_at(&tail, mark.end)
            .map_err(|e| LogError::io("rewrite", self.path(), e))?;
        self.seal()
    }

    /// Writes pre-encoded frames (whose offsets relative to the buffer start are `frame_offsets`).
    pub fn write_frames(&mut self, buf: &[u8], frame_offsets: &[u64]) -> Result<(), LogError> {
        assert!(self.count + frame_offsets.len() as u64 <= (self.index.len() / 8) as u64);
        self.file
            .file
            .write_all_at(buf, self.bytes)
            .map_err(|e| LogError::io("append", self.path(), e))?;
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
            .file
            .read_exact_at(&mut buf, from)
            .map_err(|e| LogError::io("read", self.path(), e))?;
        let mut pos = 0usize;
        for index in start..end {
            // Pair assertion at the disk boundary: what we read back must be the frame we indexed.
            let frame = format::decode(&buf[pos..]).map_err(|e| LogError::Corrupt {
                path: self.path().to_path_buf(),
                offset: from + pos as u64,
                reason: e.to_string(),
            })?;
            if frame.index != index {
                return Err(LogError::Corrupt {
                    path: self.path().to_path_buf(),
                    offset: from + pos as u64,
                    reason: format!("expected index {index}, found {}", frame.index),
                });
            }
            out.push((index, frame.payload.to_vec()));
            pos += frame.encoded_len();
        }
        Ok(())
    }

    /// Drops entries after `keep_last` (which must be inside this segment), durably: the mark is
    /// lowered first, so no crash leaves a mark above the records that remain.
    pub fn truncate_after(&mut self, keep_last: u64) -> Result<(), LogError> {
        assert!(keep_last >= self.first_index && keep_last < self.first_index + self.count);
        let new_bytes = self.end_of(keep_last);
        let new_count = keep_last - self.first_index + 1;
        self.set_len_durably(new_count, new_bytes)
    }

    /// Truncates the file to its valid prefix (dropping a torn tail found by `open`), durably.
    pub fn drop_invalid_tail(&mut self) -> Result<(), LogError> {
        self.set_len_durably(self.count, self.bytes)
    }

    fn set_len_durably(&mut self, count: u64, bytes: u64) -> Result<(), LogError> {
        self.file.lower_mark(DurableMark { count, end: bytes })?;
        self.file
            .file
            .set_len(bytes)
            .map_err(|e| LogError::io("truncate", self.path(), e))?;
        self.file.fsync("sync")?;
        self.count = count;
        self.bytes = bytes;
        Ok(())
    }

    pub fn remove_file(self, fs: &dyn LogFileSystem) -> Result<(), LogError> {
        fs.remove(self.path())
            .map_err(|e| LogError::io("remove segment", self.path(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::HEADER_SLOT_STRIDE_BYTES;

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
        let out = scan(&buf, 4096, 10);
        assert_eq!(out.offsets, vec![4096, 4096 + 17, 4096 + 35]);
        assert_eq!(out.valid_end, 4096 + buf.len() as u64);
        assert!(out.invalid_tail.is_none());
    }

    #[test]
    fn scan_torn_tail_has_no_intact_successor() {
        let buf = frames(1, &[b"first", b"second"]);
        for cut in HEADER_BYTES + 5 + 1..buf.len() {
            let out = scan(&buf[..cut], 0, 1);
            assert_eq!(out.offsets.len(), 1);
            assert!(out.invalid_tail.is_some());
            assert!(!out.next_record_intact, "cut at {cut}");
        }
    }

    #[test]
    fn scan_damage_before_an_intact_record_is_flagged() {
        let mut buf = frames(1, &[b"first", b"second", b"third"]);
        buf[HEADER_BYTES + 2] ^= 0x01; // inside the first payload
        let out = scan(&buf, 0, 1);
        assert_eq!(out.offsets.len(), 0);
        assert!(out.next_record_intact, "record 2 is intact behind the damage");
    }

    /// A torn append whose garbage contains bytes that look like a frame (here: a whole encoded
    /// record with a later index, as a payload may hold) is still a torn tail.
    #[test]
    fn frame_like_bytes_inside_a_torn_payload_are_not_a_successor() {
        let inner = frames(3, &[b"looks like a record"]);
        let mut payload = vec![0xEEu8; 40];
        payload.extend_from_slice(&inner);
        payload.extend_from_slice(&[0xEE; 40]);
        let mut buf = frames(1, &[b"first"]);
        let second_start = buf.len();
        format::encode(2, &payload, &mut buf);
        for cut in second_start + HEADER_BYTES + 41..buf.len() {
            let out = scan(&buf[..cut], 0, 1);
            assert_eq!(out.offsets.len(), 1);
            assert!(!out.next_record_intact, "cut at {cut}");
        }
    }

    #[test]
    fn scan_rejects_out_of_sequence_index() {
        let mut buf = frames(1, &[b"a"]);
        format::encode(5, b"b", &mut buf);
        let out = scan(&buf, 0, 1);
        assert_eq!(out.offsets.len(), 1);
        assert!(matches!(
            out.invalid_tail,
            Some((17, FrameError::UnexpectedIndex { expected: 2, found: 5 }))
        ));
    }

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/x"), 42);
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf8");
        assert_eq!(parse_segment_name(name), Some(Ok(42)));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.idx"), None);
        assert_eq!(parse_segment_name("+0000000000000000042.log"), None);
        assert_eq!(parse_segment_name("99999999999999999999.log"), Some(Err(())));
    }

    #[test]
    fn slot_offsets_alternate() {
        let at = |seq| {
            SegmentHeader {
                seq,
                first_index: 1,
                durable_count: 0,
                durable_end: SEGMENT_HEADER_AREA_BYTES,
            }
            .slot_offset()
        };
        assert_eq!((at(0), at(1), at(2)), (0, HEADER_SLOT_STRIDE_BYTES, 0));
    }
}
