//! The Raft log as segment files: see `docs/log-format.md` for the byte layout, the recovery rules
//! and what we assume of the disk.
//!
//! # Durability contract
//! - [`SegmentedLog::append`] writes the records to the segment file before it returns, so a reader
//!   sees them at once. They are durable when the `on_durable` callback runs with `Ok`: the flusher
//!   thread has fsynced every file they were written to. One fsync covers every append queued while
//!   the previous one ran (group commit).
//! - [`SegmentedLog::truncate_after`], [`SegmentedLog::purge_upto`] and
//!   [`SegmentedLog::save_meta`] are durable when they return.
//! - On [`SegmentedLog::open`], a torn tail of the last segment (a partial append that was never
//!   acknowledged) is cut off; damage followed by a valid record, or damage in any earlier segment,
//!   is [`LogError::Corrupt`] naming the file and offset. Nothing is skipped silently.

pub mod format;
pub mod group_commit;
mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use group_commit::{FlushQueue, FlushTicket, Flusher};
use segment::Segment;

use crate::limits::{RECORD_BYTES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_ENTRIES_MAX};
use crate::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log file {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("append out of order: expected index {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("record of {len} bytes exceeds the limit of {RECORD_BYTES_MAX} bytes")]
    RecordTooLarge { len: usize },
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<LogError> for std::io::Error {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Io { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogOptions {
    pub segment_bytes_max: u64,
    pub segment_entries_max: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            segment_entries_max: SEGMENT_ENTRIES_MAX,
        }
    }
}

impl LogOptions {
    pub fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes_max < 4096 {
            return Err(LogError::InvalidOptions(format!(
                "segment_bytes_max {} is below 4096",
                self.segment_bytes_max
            )));
        }
        if self.segment_entries_max == 0 || self.segment_entries_max > SEGMENT_ENTRIES_MAX {
            return Err(LogError::InvalidOptions(format!(
                "segment_entries_max {} must be in 1..={SEGMENT_ENTRIES_MAX}",
                self.segment_entries_max
            )));
        }
        Ok(())
    }
}

/// Called once the records of an append are durable (or the fsync failed).
pub type OnDurable = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

#[derive(Clone)]
struct SyncTarget(Arc<File>);

impl PartialEq for SyncTarget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

struct FileFlusher;

impl Flusher<SyncTarget> for FileFlusher {
    fn flush(&mut self, targets: &[SyncTarget]) -> std::io::Result<()> {
        for target in targets {
            target.0.sync_data()?;
        }
        Ok(())
    }
}

/// Small values persisted next to the log (the vote, the purge point): written atomically.
#[derive(Default, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct LogMeta {
    purged_upto: Option<u64>,
    blobs: BTreeMap<String, Vec<u8>>,
}

const META_FILE: &str = "log.meta";

pub struct SegmentedLog {
    dir: PathBuf,
    options: LogOptions,
    /// Non-empty segments in index order, consecutive with no holes.
    segments: Vec<Segment>,
    meta: LogMeta,
    flush_queue: Arc<FlushQueue<SyncTarget, OnDurable>>,
    flusher: Option<JoinHandle<()>>,
    encode_buf: Vec<u8>,
}

impl SegmentedLog {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<SegmentedLog, LogError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| LogError::io("create log dir", &dir, e))?;
        let meta = read_meta(&dir)?;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| LogError::io("list log dir", &dir, e))? {
            let entry = entry.map_err(|e| LogError::io("list log dir", &dir, e))?;
            if let Some(first) = entry.file_name().to_str().and_then(segment::parse_segment_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments: Vec<Segment> = Vec::new();
        let last_position = firsts.len().saturating_sub(1);
        for (position, first) in firsts.into_iter().enumerate() {
            let (mut seg, outcome) = Segment::open(&dir, first, options.segment_entries_max)?;
            if let Some(prev) = segments.last() {
                let expected = prev.first_index + prev.count;
                if first != expected {
                    return Err(LogError::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: format!("segment starts at index {first}, expected {expected} (a hole in the log)"),
                    });
                }
            }
            if let Some((offset, reason)) = &outcome.invalid_tail {
                let is_last = position == last_position;
                if !is_last || outcome.valid_frame_after_tail {
                    return Err(LogError::Corrupt {
                        path: seg.path.clone(),
                        offset: *offset,
                        reason: format!(
                            "{reason}{}",
                            if is_last {
                                "; valid records follow the damage"
                            } else {
                                "; not the last segment"
                            }
                        ),
                    });
                }
                tracing::warn!(path = %seg.path.display(), offset, %reason, "truncating torn tail of the log");
                seg.drop_invalid_tail()?;
            }
            if seg.count == 0 {
                seg.remove_files()?;
            } else {
                segments.push(seg);
            }
        }

        let flush_queue = FlushQueue::<SyncTarget, OnDurable>::new();
        let flusher_queue = flush_queue.clone();
        let flusher = std::thread::Builder::new()
            .name("basalt-log-flush".into())
            .spawn(move || {
                group_commit::run_flusher(&flusher_queue, &mut FileFlusher, |done: OnDurable, result| {
                    done(match result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    })
                })
            })
            .map_err(|e| LogError::io("spawn flusher", &dir, e))?;

        let mut log = SegmentedLog {
            dir,
            options,
            segments,
            meta,
            flush_queue,
            flusher: Some(flusher),
            encode_buf: Vec::new(),
        };
        // A purge whose meta was saved but whose files were not yet removed finishes now.
        if let Some(purged) = log.meta.purged_upto {
            log.remove_purged_segments(purged)?;
        }
        log.validate();
        Ok(log)
    }

    /// Checks the structural invariants; a failure is a programmer error.
    fn validate(&self) {
        for pair in self.segments.windows(2) {
            assert_eq!(
                pair[0].first_index + pair[0].count,
                pair[1].first_index,
                "hole between segments"
            );
        }
        for seg in &self.segments {
            assert!(seg.count > 0, "empty segment kept");
        }
    }

    /// First index readable, if any entry is present.
    pub fn first_index(&self) -> Option<u64> {
        let first = self.segments.first()?.first_index;
        let floor = self.meta.purged_upto.map_or(first, |p| first.max(p + 1));
        (Some(floor) <= self.last_index()).then_some(floor)
    }

    pub fn last_index(&self) -> Option<u64> {
        self.segments.last().and_then(Segment::last_index)
    }

    pub fn purged_upto(&self) -> Option<u64> {
        self.meta.purged_upto
    }

    fn next_index(&self) -> Option<u64> {
        match (self.last_index(), self.meta.purged_upto) {
            (Some(last), _) => Some(last + 1),
            (None, Some(purged)) => Some(purged + 1),
            (None, None) => None,
        }
    }

    /// Appends records (consecutive indexes following the last one). Readable on return; durable
    /// when `on_durable` is called with `Ok`.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
        on_durable: Option<OnDurable>,
    ) -> Result<(), LogError> {
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let mut frame_offsets: Vec<u64> = Vec::new();
        let mut touched: Vec<SyncTarget> = Vec::new();
        let mut next = self.next_index();
        let result = (|| {
            for (index, payload) in records {
                if payload.len() > RECORD_BYTES_MAX as usize {
                    return Err(LogError::RecordTooLarge { len: payload.len() });
                }
                if let Some(expected) = next {
                    if index != expected {
                        return Err(LogError::OutOfOrder { expected, got: index });
                    }
                }
                let frame_len = (format::HEADER_BYTES + payload.len()) as u64;
                let needs_roll = match self.segments.last() {
                    None => true,
                    Some(seg) => {
                        let pending = frame_offsets.len() as u64;
                        seg.count + pending >= self.options.segment_entries_max
                            || (seg.bytes + buf.len() as u64 + frame_len > self.options.segment_bytes_max
                                && seg.count + pending > 0)
                    }
                };
                if needs_roll {
                    self.flush_pending(&mut buf, &mut frame_offsets, &mut touched)?;
                    let seg = Segment::create(&self.dir, index, self.options.segment_entries_max)?;
                    self.segments.push(seg);
                    sync_dir(&self.dir)?;
                }
                frame_offsets.push(buf.len() as u64);
                format::encode(index, payload, &mut buf);
                next = Some(index + 1);
            }
            self.flush_pending(&mut buf, &mut frame_offsets, &mut touched)
        })();
        self.encode_buf = buf;
        result?;
        if let Some(done) = on_durable {
            match touched.pop() {
                // Only the last file needs a ticket: earlier ones (before a roll) are pushed below.
                Some(last) => {
                    for target in touched {
                        self.flush_queue.push(FlushTicket {
                            target,
                            done: Box::new(|_| {}),
                        });
                    }
                    self.flush_queue.push(FlushTicket { target: last, done });
                }
                None => done(Ok(())),
            }
        }
        Ok(())
    }

    fn flush_pending(
        &mut self,
        buf: &mut Vec<u8>,
        frame_offsets: &mut Vec<u64>,
        touched: &mut Vec<SyncTarget>,
    ) -> Result<(), LogError> {
        if frame_offsets.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .last_mut()
            .expect("a segment exists once a frame is pending");
        seg.write_frames(buf, frame_offsets)?;
        touched.push(SyncTarget(seg.file.clone()));
        buf.clear();
        frame_offsets.clear();
        Ok(())
    }

    /// Makes every appended record durable now (used by tests and shutdown).
    pub fn sync(&self) -> Result<(), LogError> {
        for seg in &self.segments {
            seg.file.sync_data().map_err(|e| LogError::io("sync", &seg.path, e))?;
        }
        Ok(())
    }

    /// Reads the records `start..end` that are present (a range reaching outside the log returns
    /// only what is inside it).
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Ok(out);
        };
        let start = start.max(first);
        let end = end.min(last + 1);
        if start >= end {
            return Ok(out);
        }
        let mut pos = self.segments.partition_point(|s| s.first_index + s.count <= start);
        let mut cursor = start;
        while cursor < end {
            let seg = &self.segments[pos];
            let seg_end = (seg.first_index + seg.count).min(end);
            seg.read_range(cursor, seg_end, &mut out)?;
            cursor = seg_end;
            pos += 1;
        }
        Ok(out)
    }

    /// Removes every entry after `keep_last` (all of them when `None`), durably.
    pub fn truncate_after(&mut self, keep_last: Option<u64>) -> Result<(), LogError> {
        let mut removed_file = false;
        while let Some(seg) = self.segments.last_mut() {
            let drop_whole = keep_last.is_none_or(|k| seg.first_index > k);
            if drop_whole {
                let seg = self.segments.pop().expect("checked non-empty");
                seg.remove_files()?;
                removed_file = true;
                continue;
            }
            let keep = keep_last.expect("checked above");
            if seg.last_index().is_some_and(|l| l > keep) {
                seg.truncate_after(keep)?;
            }
            break;
        }
        if removed_file {
            sync_dir(&self.dir)?;
        }
        self.validate();
        Ok(())
    }

    /// Forgets every entry up to and including `upto`, durably; whole segments are deleted.
    pub fn purge_upto(&mut self, upto: u64) -> Result<(), LogError> {
        if self.meta.purged_upto.is_some_and(|p| p >= upto) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.purged_upto = Some(upto);
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        self.remove_purged_segments(upto)
    }

    fn remove_purged_segments(&mut self, upto: u64) -> Result<(), LogError> {
        let mut removed = false;
        while self
            .segments
            .first()
            .is_some_and(|s| s.last_index().is_some_and(|l| l <= upto))
        {
            self.segments.remove(0).remove_files()?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn meta(&self, name: &str) -> Option<&[u8]> {
        self.meta.blobs.get(name).map(Vec::as_slice)
    }

    /// Saves a named value next to the log (the vote), durably.
    pub fn save_meta(&mut self, name: &str, value: &[u8]) -> Result<(), LogError> {
        let mut meta = self.meta.clone();
        meta.blobs.insert(name.to_string(), value.to_vec());
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Drop for SegmentedLog {
    fn drop(&mut self) {
        self.flush_queue.close();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("sync dir", dir, e))
}

fn read_meta(dir: &Path) -> Result<LogMeta, LogError> {
    let path = dir.join(META_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogMeta::default()),
        Err(e) => return Err(LogError::io("read meta", &path, e)),
    };
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    };
    if bytes.len() < 4 {
        return Err(corrupt("meta file shorter than its checksum".into()));
    }
    let stored = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[4..]) != stored {
        return Err(corrupt("meta file checksum mismatch".into()));
    }
    bincode::deserialize(&bytes[4..]).map_err(|e| corrupt(format!("meta file undecodable: {e}")))
}

fn write_meta(dir: &Path, meta: &LogMeta) -> Result<(), LogError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join("log.meta.tmp");
    let body = bincode::serialize(meta).expect("log meta serializes");
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| LogError::io("write meta", &path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests;
