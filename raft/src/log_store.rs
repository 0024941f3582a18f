//! openraft's `RaftLogStorage` over [`SegmentedLog`].
//!
//! Entries are encoded (basalt-codec) into log records. Appends write under a mutex and return at once;
//! the flusher thread completes openraft's `IOFlushed` callback after the group fsync, so an entry
//! is acknowledged to the leader only once it is durable.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use basalt_storage::log::{LogOptions, SegmentedLog};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::{decode, encode, Entry, LogId, TypeConfig, Vote};

const VOTE_KEY: &str = "vote";
use crate::limits::{APPEND_BYTES_BUDGET, APPEND_ENTRIES_MAX};
const PURGED_KEY: &str = "purged_log_id";

#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<SegmentedLog>>,
}

impl LogStore {
    pub fn open(dir: &Path, options: LogOptions) -> Result<LogStore, basalt_storage::log::LogError> {
        Ok(LogStore {
            log: Arc::new(Mutex::new(SegmentedLog::open(dir, options)?)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SegmentedLog> {
        self.log.lock().expect("log mutex poisoned: a log operation panicked")
    }

    /// First and last index present, for status output.
    pub fn bounds(&self) -> (Option<u64>, Option<u64>) {
        let log = self.lock();
        (log.first_index(), log.last_index())
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let records = self.lock().read_range(start, end)?;
        records.iter().map(|(_, payload)| decode::<Entry>(payload)).collect()
    }
}

fn to_range(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = to_range(range);
        self.read(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.lock().meta(VOTE_KEY).map(decode).transpose()
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        // Bound one replication message, by count and by bytes: entries of a few MiB each (large
        // values, merged batches) would otherwise pass the message cap, and the same range
        // would be sent again forever.
        let end = end.min(start.saturating_add(APPEND_ENTRIES_MAX));
        let end = self.lock().end_within_bytes(start, end, APPEND_BYTES_BUDGET);
        self.read(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.lock();
        let last_purged_log_id: Option<LogId> = log.meta(PURGED_KEY).map(decode).transpose()?;
        let last_log_id = match log.last_index() {
            Some(last) => {
                let records = log.read_range(last, last + 1)?;
                let (_, payload) = records.first().ok_or_else(|| io::Error::other("last entry vanished"))?;
                Some(decode::<Entry>(payload)?.log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.lock().save_meta(VOTE_KEY, &encode(vote))?;
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries.into_iter().map(|e| (e.index(), encode(&e))).collect();
        self.lock().append(
            encoded.iter().map(|(i, p)| (*i, p.as_slice())),
            Some(Box::new(move |result| callback.io_completed(result))),
        )?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.lock().truncate_after(last_log_id.map(|id| id.index()))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut log = self.lock();
        // Save the purged log id first: if we crash between the two steps, the log still answers
        // get_log_state with a purge point at or after what it physically lacks.
        log.save_meta(PURGED_KEY, &encode(&log_id))?;
        log.purge_upto(log_id.index())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_entry(index: u64, value_bytes: usize) -> Entry {
        crate::test_entries::put_entry(1, index, value_bytes)
    }

    /// Ten entries of 8 MiB would make an 80 MiB message, over the 64 MiB cap: replication gets
    /// them a few at a time.
    #[tokio::test]
    async fn replication_reads_are_bounded_by_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path(), LogOptions::default()).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| big_entry(i, 8 << 20)).collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries.iter().map(|e| (e.index(), encode(e))).collect();
        store
            .lock()
            .append(encoded.iter().map(|(i, p)| (*i, p.as_slice())), None)
            .expect("append");
        let first = store.limited_get_log_entries(1, 11).await.expect("read");
        let bytes: usize = first.iter().map(|e| encode(e).len()).sum();
        assert_eq!(first.len(), 3, "32 MiB of 8 MiB entries: three, not ten");
        assert!(bytes as u64 <= APPEND_BYTES_BUDGET);
        assert_eq!(store.limited_get_log_entries(4, 11).await.expect("read")[0].index(), 4);
        // Small entries: bounded by count.
        let small = store.limited_get_log_entries(10, 11).await.expect("read");
        assert_eq!(small.len(), 1);
    }
}
