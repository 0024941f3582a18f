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
//! - Once an fsync (or any write) fails, the log is failed for good: every later call answers
//!   [`LogError::Failed`] and no later append is acknowledged, even if a later fsync succeeds
//!   (after a failed fsync the page cache no longer tells what is on disk). Restart the node.
//! - On [`SegmentedLog::open`], a torn tail of the last segment (a partial append that was never
//!   acknowledged) is cut off; damage below a segment's durable mark, damage followed by the
//!   intact next record, or damage in any earlier segment is [`LogError::Corrupt`] naming the
//!   file and offset. Nothing is skipped silently.

pub mod file_system;
pub mod format;
pub mod group_commit;
mod segment;
#[cfg(test)]
mod sim_file_system;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use file_system::{LogFileSystem, RealFileSystem};
use group_commit::{FlushQueue, FlushTicket, Flusher};
use segment::{Cover, OpenError, Segment, SegmentFile};

use crate::limits::{RECORD_BYTES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_LIMIT, SEGMENT_ENTRIES_MAX};
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
    /// A segment whose header is whole but of another segment format version: written by another
    /// Basalt build (docs/data-format.md). Refused, never removed or misread.
    #[error(
        "log file {path} is of segment format version {found}, this build reads version {reads}: it was written by \
         a Basalt build of another data format"
    )]
    OtherVersion { path: PathBuf, found: u32, reads: u32 },
    #[error("append out of order: expected index {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("record of {len} bytes exceeds the limit of {RECORD_BYTES_MAX} bytes")]
    RecordTooLarge { len: usize },
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    /// A write or fsync failed earlier; the log refuses everything until the node restarts and
    /// recovers from what the disk holds.
    #[error("the log stopped after a failed write or fsync ({0}); restart the node to recover from the disk")]
    Failed(String),
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
        if !(4096..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return Err(LogError::InvalidOptions(format!(
                "segment_bytes_max {} must be in 4096..={SEGMENT_BYTES_LIMIT}",
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
struct SyncTarget(std::sync::Arc<SegmentFile>);

impl PartialEq for SyncTarget {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A flush ticket's payload: whom to tell, and the durable mark the append reaches.
struct Durable {
    on_durable: OnDurable,
    cover: Cover,
}

/// The first write or fsync failure, shared by the writer and the flusher: once set, it stays.
#[derive(Clone, Default)]
pub(crate) struct Failure(std::sync::Arc<Mutex<Option<String>>>);

impl Failure {
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set(&self, reason: String) {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            tracing::error!(%reason, "the log stops: a write or fsync failed");
            *slot = Some(reason);
        }
    }
}

/// The flusher thread's side: fsyncs, acknowledges, then raises the durable marks.
///
/// The marks of a batch are written (one header slot per file) at the start of the next flush,
/// whose fsync then covers them, or by [`Flusher::idle`] when no append follows: never one fsync
/// per acknowledgement.
struct FileFlusher {
    failure: Failure,
    /// The highest cover acknowledged per file since its mark was last written.
    pending_marks: Vec<(SyncTarget, Cover)>,
}

impl FileFlusher {
    /// Writes the pending marks into their files' header slots; returns the files written, which
    /// the caller fsyncs.
    fn write_pending_marks(&mut self) -> Vec<SyncTarget> {
        let mut written = Vec::new();
        for (target, cover) in std::mem::take(&mut self.pending_marks) {
            match target.0.raise_mark(cover) {
                Ok(true) => written.push(target),
                Ok(false) => {}
                Err(e) => self.failure.set(e.to_string()),
            }
        }
        written
    }
}

impl Flusher<SyncTarget, Durable> for FileFlusher {
    fn flush(&mut self, targets: &[SyncTarget]) -> std::io::Result<()> {
        if let Some(reason) = self.failure.get() {
            // Never acknowledge after a failure, even if this fsync would now succeed: the
            // kernel may have dropped the pages whose writeback failed.
            return Err(std::io::Error::other(LogError::Failed(reason)));
        }
        // The marks of the previous batch (records already durable) ride along with this fsync.
        let mut files = self.write_pending_marks();
        files.retain(|f| !targets.contains(f));
        for target in targets.iter().chain(&files) {
            // A failed sync records the failure itself, under the file's fsync lock.
            target.0.sync().map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn complete(&mut self, target: &SyncTarget, done: Durable, result: &std::io::Result<()>) {
        match result {
            Ok(()) => {
                (done.on_durable)(Ok(()));
                let cover = done.cover;
                match self.pending_marks.iter_mut().find(|(t, _)| t == target) {
                    Some((_, pending)) => {
                        if (cover.generation, cover.mark.count) > (pending.generation, pending.mark.count) {
                            *pending = cover;
                        }
                    }
                    None => self.pending_marks.push((target.clone(), cover)),
                }
            }
            Err(e) => (done.on_durable)(Err(std::io::Error::new(e.kind(), e.to_string()))),
        }
    }

    fn has_idle_work(&self) -> bool {
        !self.pending_marks.is_empty()
    }

    /// With no append for a moment, the pending marks are written and made durable now.
    fn idle(&mut self) {
        if self.failure.get().is_some() {
            self.pending_marks.clear();
            return;
        }
        for target in self.write_pending_marks() {
            // A failure is recorded by the sync itself; there is no one to answer here.
            let _ = target.0.sync();
        }
    }
}

/// Small values persisted next to the log (the vote, the purge point): written atomically.
#[derive(Default, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct LogMeta {
    purged_upto: Option<u64>,
    blobs: BTreeMap<String, Vec<u8>>,
}

const META_FILE: &str = "log.meta";
const META_TMP_FILE: &str = "log.meta.tmp";

pub struct SegmentedLog {
    fs: std::sync::Arc<dyn LogFileSystem>,
    dir: PathBuf,
    options: LogOptions,
    /// Non-empty segments in index order, consecutive with no holes.
    segments: Vec<Segment>,
    meta: LogMeta,
    failure: Failure,
    flush_queue: Arc<FlushQueue<SyncTarget, Durable>>,
    flusher: Option<JoinHandle<()>>,
    encode_buf: Vec<u8>,
}

impl SegmentedLog {
    /// Opens (or creates) the log in `dir` on the real file system, recovering from a torn tail.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<SegmentedLog, LogError> {
        Self::open_on(std::sync::Arc::new(RealFileSystem), dir.as_ref(), options)
    }

    /// Opens (or creates) the log in `dir` on `fs`, recovering from a torn tail.
    pub fn open_on(
        fs: std::sync::Arc<dyn LogFileSystem>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<SegmentedLog, LogError> {
        options.validate()?;
        let dir = dir.to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(|e| LogError::io("create log dir", &dir, e))?;
        // A process that died before its last directory fsync (a crash, not a power loss) left
        // entries this one sees and builds on: a renamed meta file, removed segments. They are
        // made durable first, or a later power loss could bring back what this one builds past.
        fs.sync_dir(&dir).map_err(|e| LogError::io("sync dir", &dir, e))?;
        let meta = read_meta(fs.as_ref(), &dir)?;

        let mut firsts = Vec::new();
        for name in fs.list(&dir).map_err(|e| LogError::io("list log dir", &dir, e))? {
            match segment::parse_segment_name(&name) {
                Some(Ok(first)) => firsts.push(first),
                Some(Err(())) => {
                    return Err(LogError::Corrupt {
                        path: dir.join(&name),
                        offset: 0,
                        reason: "named like a segment, but the name is not an index".into(),
                    })
                }
                None => {}
            }
        }
        firsts.sort_unstable();

        let failure = Failure::default();
        let mut found = Vec::new();
        for first in firsts {
            let path = segment::segment_path(&dir, first);
            match Segment::open(fs.as_ref(), &dir, first, options.segment_entries_max, &failure) {
                Ok(opened) => found.push((path, Ok(opened))),
                Err(OpenError::Unborn(reason)) => found.push((path, Err(reason))),
                Err(OpenError::Log(e)) => return Err(e),
            }
        }
        // Trailing segments that hold no record (a roll a crash interrupted, or one whose only
        // records were a torn append) go first, durably: the last segment is then the one that
        // holds the last records, and no removed file can come back after a later crash.
        // A crash leaves at most one: a segment is only created once its predecessor holds
        // records, sealed. A second record-less segment before it is damage, refused below.
        let holds_nothing = |opened: &Result<(Segment, segment::DurableMark, segment::ScanOutcome), _>| match opened {
            Err(_) => true,
            Ok((_, mark, outcome)) => outcome.offsets.is_empty() && mark.count == 0 && !outcome.next_record_intact,
        };
        if found.last().is_some_and(|(_, opened)| holds_nothing(opened)) {
            let (path, _) = found.pop().expect("checked non-empty");
            tracing::warn!(path = %path.display(), "removing a last segment that holds no record (a crash interrupted it)");
            fs.remove(&path).map_err(|e| LogError::io("remove segment", &path, e))?;
            fs.sync_dir(&dir).map_err(|e| LogError::io("sync dir", &dir, e))?;
            if let Some((path, opened)) = found.last() {
                if holds_nothing(opened) {
                    return Err(LogError::Corrupt {
                        path: path.clone(),
                        offset: format::SEGMENT_HEADER_AREA_BYTES,
                        reason: "a segment without a record before the last one (a crash leaves at most one)".into(),
                    });
                }
            }
        }

        let mut segments: Vec<Segment> = Vec::new();
        let last_position = found.len().saturating_sub(1);
        for (position, (path, opened)) in found.into_iter().enumerate() {
            let is_last = position == last_position;
            let (mut seg, mark, outcome) = opened.map_err(|reason| LogError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("no valid header ({reason}) in a segment that later segments follow"),
            })?;
            let first = seg.first_index;
            if let Some(prev) = segments.last() {
                let expected = prev.first_index + prev.count;
                if first != expected {
                    return Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("segment starts at index {first}, expected {expected} (a hole in the log)"),
                    });
                }
            }
            let damage = outcome
                .invalid_tail
                .as_ref()
                .map(|(offset, reason)| (*offset, reason.to_string()));
            if outcome.valid_end < mark.end {
                // Records the flusher had seen fsynced are damaged or gone: acknowledged data.
                let (offset, reason) = damage.unwrap_or((outcome.valid_end, "the file ends".to_string()));
                return Err(LogError::Corrupt {
                    path,
                    offset,
                    reason: format!(
                        "{reason}, below the durable mark (records {first}..{} ending at offset {} were fsynced)",
                        first + mark.count,
                        mark.end
                    ),
                });
            }
            if let Some((offset, reason)) = damage {
                if !is_last || outcome.next_record_intact {
                    return Err(LogError::Corrupt {
                        path,
                        offset,
                        reason: format!(
                            "{reason}{}",
                            if is_last {
                                "; the next record is intact behind it"
                            } else {
                                "; not the last segment"
                            }
                        ),
                    });
                }
                tracing::warn!(path = %path.display(), offset, %reason, "truncating torn tail of the log");
                seg.drop_invalid_tail()?;
            }
            if seg.count == 0 {
                return Err(LogError::Corrupt {
                    path,
                    offset: format::SEGMENT_HEADER_AREA_BYTES,
                    reason: "a segment without records before the last one".into(),
                });
            }
            if is_last && outcome.valid_end > mark.end {
                // Records above the mark were read back, but perhaps from the page cache only
                // (a restart after a failed fsync): written again and fsynced, they are on disk
                // before anything builds on them, and the mark then covers them.
                seg.make_unmarked_tail_durable(mark)?;
            }
            segments.push(seg);
        }

        let flush_queue = FlushQueue::<SyncTarget, Durable>::new();
        let flusher_queue = flush_queue.clone();
        let mut file_flusher = FileFlusher {
            failure: failure.clone(),
            pending_marks: Vec::new(),
        };
        let flusher = std::thread::Builder::new()
            .name("basalt-log-flush".into())
            .spawn(move || group_commit::run_flusher(&flusher_queue, &mut file_flusher))
            .map_err(|e| LogError::io("spawn flusher", &dir, e))?;

        let mut log = SegmentedLog {
            fs,
            dir,
            options,
            segments,
            meta,
            failure,
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

    /// Refuses every call once a write or fsync failed.
    fn check_not_failed(&self) -> Result<(), LogError> {
        match self.failure.get() {
            Some(reason) => Err(LogError::Failed(reason)),
            None => Ok(()),
        }
    }

    /// Records a failed write or fsync (an I/O error of a mutating call) for good.
    fn note_failure<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e @ LogError::Io { .. }) = &result {
            self.failure.set(e.to_string());
        }
        result
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
        self.check_not_failed()?;
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let mut frame_offsets: Vec<u64> = Vec::new();
        let mut wrote = false;
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
                    self.flush_pending(&mut buf, &mut frame_offsets)?;
                    // The segment being sealed is made durable, and its mark raised over all of
                    // it, before its successor exists: a crash may then only ever tear the last
                    // segment, never leave a hole, and a sealed segment that becomes the last
                    // again (after a truncation) has every record under its mark.
                    if let Some(sealed) = self.segments.last() {
                        sealed.seal()?;
                    }
                    let seg = Segment::create(
                        self.fs.as_ref(),
                        &self.dir,
                        index,
                        self.options.segment_entries_max,
                        &self.failure,
                    )?;
                    self.segments.push(seg);
                }
                frame_offsets.push(buf.len() as u64);
                format::encode(index, payload, &mut buf);
                wrote = true;
                next = Some(index + 1);
            }
            self.flush_pending(&mut buf, &mut frame_offsets)
        })();
        self.encode_buf = buf;
        self.note_failure(result)?;
        if let Some(on_durable) = on_durable {
            match self.segments.last().filter(|_| wrote) {
                // Earlier segments touched by this append were synced when it rolled past them.
                Some(last) => self.flush_queue.push(FlushTicket {
                    target: SyncTarget(last.file.clone()),
                    done: Durable {
                        on_durable,
                        cover: last.cover(),
                    },
                }),
                None => on_durable(Ok(())),
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self, buf: &mut Vec<u8>, frame_offsets: &mut Vec<u64>) -> Result<(), LogError> {
        if frame_offsets.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .last_mut()
            .expect("a segment exists once a frame is pending");
        seg.write_frames(buf, frame_offsets)?;
        buf.clear();
        frame_offsets.clear();
        Ok(())
    }

    /// Makes every appended record durable now (used by tests and shutdown).
    pub fn sync(&self) -> Result<(), LogError> {
        self.check_not_failed()?;
        for seg in &self.segments {
            self.note_failure(seg.file.sync())?;
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

    /// The end of the longest range from `start` (at most up to `end`) whose records together
    /// take no more than `budget_bytes`, frames included; always at least one record. From the
    /// in-memory index, without reading. Bounds what one replication message carries.
    pub fn end_within_bytes(&self, start: u64, end: u64, budget_bytes: u64) -> u64 {
        // Outside the log there is nothing to bound: the range is left as asked.
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return end;
        };
        if start < first || start > last {
            return end;
        }
        let end = end.min(last + 1);
        let mut pos = self.segments.partition_point(|s| s.first_index + s.count <= start);
        let mut index = start;
        let mut used = 0u64;
        while index < end {
            let seg = &self.segments[pos];
            if index >= seg.first_index + seg.count {
                pos += 1;
                continue;
            }
            let bytes = seg.frame_bytes(index);
            if index > start && used + bytes > budget_bytes {
                break;
            }
            used += bytes;
            index += 1;
        }
        index
    }

    /// Removes every entry after `keep_last` (all of them when `None`), durably.
    pub fn truncate_after(&mut self, keep_last: Option<u64>) -> Result<(), LogError> {
        self.check_not_failed()?;
        let result = self.truncate_after_inner(keep_last);
        self.note_failure(result)?;
        self.validate();
        Ok(())
    }

    fn truncate_after_inner(&mut self, keep_last: Option<u64>) -> Result<(), LogError> {
        let mut removed_file = false;
        while let Some(seg) = self.segments.last() {
            if keep_last.is_some_and(|k| seg.first_index <= k) {
                break;
            }
            let seg = self.segments.pop().expect("checked non-empty");
            seg.remove_file(self.fs.as_ref())?;
            removed_file = true;
        }
        // The removals are made durable before the kept segment is cut: otherwise a crash could
        // bring a removed segment back behind a shorter predecessor, a hole that stops the node.
        if removed_file {
            self.sync_dir()?;
        }
        if let (Some(keep), Some(seg)) = (keep_last, self.segments.last_mut()) {
            if seg.last_index().is_some_and(|l| l > keep) {
                seg.truncate_after(keep)?;
            }
        }
        Ok(())
    }

    /// Forgets every entry up to and including `upto`, durably; whole segments are deleted.
    pub fn purge_upto(&mut self, upto: u64) -> Result<(), LogError> {
        self.check_not_failed()?;
        if self.meta.purged_upto.is_some_and(|p| p >= upto) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.purged_upto = Some(upto);
        let result = write_meta(self.fs.as_ref(), &self.dir, &meta);
        self.note_failure(result)?;
        self.meta = meta;
        let result = self.remove_purged_segments(upto);
        self.note_failure(result)
    }

    fn remove_purged_segments(&mut self, upto: u64) -> Result<(), LogError> {
        let mut removed = false;
        while self
            .segments
            .first()
            .is_some_and(|s| s.last_index().is_some_and(|l| l <= upto))
        {
            self.segments.remove(0).remove_file(self.fs.as_ref())?;
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("sync dir", &self.dir, e))
    }

    pub fn meta(&self, name: &str) -> Option<&[u8]> {
        self.meta.blobs.get(name).map(Vec::as_slice)
    }

    /// Saves a named value next to the log (the vote), durably.
    pub fn save_meta(&mut self, name: &str, value: &[u8]) -> Result<(), LogError> {
        self.check_not_failed()?;
        let mut meta = self.meta.clone();
        meta.blobs.insert(name.to_string(), value.to_vec());
        let result = write_meta(self.fs.as_ref(), &self.dir, &meta);
        self.note_failure(result)?;
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

fn read_meta(fs: &dyn LogFileSystem, dir: &Path) -> Result<LogMeta, LogError> {
    let path = dir.join(META_FILE);
    let file = match fs.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogMeta::default()),
        Err(e) => return Err(LogError::io("open meta", &path, e)),
    };
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    };
    let len = file.byte_len().map_err(|e| LogError::io("stat meta", &path, e))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= LOG_META_BYTES_MAX)
        .ok_or_else(|| {
            corrupt(format!(
                "meta file of {len} bytes, over the limit of {LOG_META_BYTES_MAX}"
            ))
        })?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| LogError::io("read meta", &path, e))?;
    if bytes.len() < 4 {
        return Err(corrupt("meta file shorter than its checksum".into()));
    }
    let stored = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[4..]) != stored {
        return Err(corrupt("meta file checksum mismatch".into()));
    }
    basalt_codec::decode(&bytes[4..]).map_err(|e| corrupt(format!("meta file undecodable: {e}")))
}

/// The log's meta file holds a few small values (the vote, the purge point).
const LOG_META_BYTES_MAX: usize = 1 << 20;

/// Replaces the meta file atomically and durably: write a temporary file, fsync it, rename it
/// over the old one, fsync the directory.
fn write_meta(fs: &dyn LogFileSystem, dir: &Path, meta: &LogMeta) -> Result<(), LogError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(META_TMP_FILE);
    let body = basalt_codec::encode(meta);
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let write = || -> std::io::Result<()> {
        match fs.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = fs.create_new(&tmp)?;
        file.write_all_at(&bytes, 0)?;
        file.sync()?;
        fs.rename(&tmp, &path)?;
        fs.sync_dir(dir)
    };
    write().map_err(|e| LogError::io("write meta", &path, e))
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
