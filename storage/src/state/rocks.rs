//! The RocksDB state store.
//!
//! Apply writes go out with the WAL but without fsync: the Raft log is the durable record, and
//! after a crash the state machine re-applies from its last persisted applied index. A snapshot
//! is a checkpoint, which flushes memtables, so the log is only purged up to state that is on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, TryLockError};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::cache::RecordCache;
use super::{KeyRange, KeyValue, StoreError, StoreRead, Table};
use crate::apply::WriteSet;

/// Bytes of keys and values at which a snapshot install writes its batch: the install's memory is
/// bounded by this (plus one record), not by the size of the state.
pub const INSTALL_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A `Meta` key present while a snapshot install is incomplete: written, synced, before its first
/// batch, and gone with the old `Meta` table in its last.
const INSTALL_INCOMPLETE_KEY: &[u8] = b"snapshot_install_incomplete";

#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
    /// Hot records for the apply path (see [`RocksStore::apply_reads`]); every commit updates it.
    cache: Arc<Mutex<RecordCache>>,
    /// Held exclusively by a snapshot install, shared by reads: a read never sees a state half
    /// replaced; one that would is refused ([`StoreError::Installing`]), never made to wait.
    install: Arc<RwLock<()>>,
    /// An install began and has not completed (it failed, or a crash cut it and this is the
    /// restart before openraft installs the snapshot again): the data tables are a mix of two
    /// states and are not read. `Meta` is whole (the old one) and stays readable.
    install_incomplete: Arc<AtomicBool>,
}

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Rocks { op, source }
}

/// Per column family: a bloom filter on SST blocks and on the memtable, so the many point reads
/// that miss (a new transfer id, a new session answer, an unused rate-limit key) skip the search.
fn table_options() -> Options {
    let mut options = Options::default();
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&block);
    options.set_memtable_prefix_bloom_ratio(0.02);
    options.set_memtable_whole_key_filtering(true);
    options
}

/// RocksDB counts every key comparison into a thread-local perf context by default. With the
/// shared library each count is a `__tls_get_addr` call: ~10% of a write-heavy apply. The level
/// is per thread, so every thread that reads or writes turns it off (a cheap FFI store).
fn without_perf_counters() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(2);
    // Bounded, so that the node's descriptor plan (the server's `descriptors`) holds: beyond it
    // RocksDB closes the table files it used least (its table cache), at the cost of reopening.
    options.set_max_open_files(crate::limits::ROCKSDB_OPEN_FILES_MAX);
    options
}

impl RocksStore {
    pub fn open(path: impl AsRef<Path>) -> Result<RocksStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let cfs = Table::ALL
            .iter()
            .map(|t| ColumnFamilyDescriptor::new(t.name(), table_options()));
        let db = DB::open_cf_descriptors(&db_options(), &path, cfs).map_err(rocks("open"))?;
        let store = RocksStore {
            db: Arc::new(db),
            path,
            cache: Arc::default(),
            install: Arc::default(),
            install_incomplete: Arc::default(),
        };
        let meta = store.cf(Table::Meta);
        if store
            .db
            .get_cf(meta, INSTALL_INCOMPLETE_KEY)
            .map_err(rocks("get"))?
            .is_some()
        {
            tracing::warn!(path = %store.path.display(), "a snapshot install was cut short: the state is not read until it is installed again");
            store.install_incomplete.store(true, Ordering::SeqCst);
        }
        Ok(store)
    }

    /// Opens a checkpoint directory read-only (for snapshot install).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<RocksStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        // A checkpoint written by an earlier build of this data format may lack the tables added
        // since (they were empty there): only the ones it holds are opened, and the install
        // reads a missing one as empty.
        let present = DB::list_cf(&Options::default(), &path).map_err(rocks("list column families"))?;
        let names = Table::ALL
            .iter()
            .map(|t| t.name())
            .filter(|name| present.iter().any(|p| p == name));
        let mut options = Options::default();
        // The second store of the server's descriptor plan.
        options.set_max_open_files(crate::limits::ROCKSDB_OPEN_FILES_MAX);
        let db = DB::open_cf_for_read_only(&options, &path, names, false).map_err(rocks("open read-only"))?;
        Ok(RocksStore {
            db: Arc::new(db),
            path,
            cache: Arc::default(),
            install: Arc::default(),
            install_incomplete: Arc::default(),
        })
    }

    /// Whether a snapshot install began and has not completed (see the field's doc).
    pub fn install_incomplete(&self) -> bool {
        self.install_incomplete.load(Ordering::SeqCst)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("every column family is created on open")
    }

    /// Writes a batch of effects atomically.
    pub fn commit(&self, writes: &WriteSet) -> Result<(), StoreError> {
        without_perf_counters();
        let mut batch = WriteBatch::default();
        for (table, key, value) in writes.iter() {
            match value {
                Some(v) => batch.put_cf(self.cf(table), key, v),
                None => batch.delete_cf(self.cf(table), key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(batch, &options).map_err(rocks("write"))?;
        let mut cache = self.cache();
        for (table, key, value) in writes.iter().filter(|(table, _, _)| RecordCache::caches(*table)) {
            cache.insert(table, key, value);
        }
        Ok(())
    }

    fn cache(&self) -> MutexGuard<'_, RecordCache> {
        // The cache holds no invariant a panicking holder could break halfway: every entry is
        // a whole record.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This store as the state machine's apply reads it: point reads of hot records are served
    /// from a cache that every commit updates. Only for the apply path, which commits each batch
    /// before reading for the next: a reader running beside commits could cache an old value.
    pub fn apply_reads(&self) -> ApplyReads<'_> {
        ApplyReads { store: self }
    }

    /// Creates a RocksDB checkpoint (hard-linked SST files plus flushed memtables) at `dir`.
    /// Waits for an install running beside it (openraft builds snapshots in a task of its own), so
    /// a checkpoint never holds a state half replaced; [`StoreError::Installing`] when the
    /// install it waited for (or one before a restart) did not complete.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        let _shared = self.install.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.install_incomplete() {
            return Err(StoreError::Installing);
        }
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(rocks("checkpoint"))?;
        checkpoint.create_checkpoint(dir).map_err(rocks("checkpoint"))
    }

    /// A read's share of the install lock, or [`StoreError::Installing`] while one runs or one
    /// is incomplete (`Meta` excepted from the latter: it is whole, and Raft reads it at open).
    fn read_guard(&self, table: Option<Table>) -> Result<RwLockReadGuard<'_, ()>, StoreError> {
        if self.install_incomplete() && table != Some(Table::Meta) {
            return Err(StoreError::Installing);
        }
        match self.install.try_read() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => Err(StoreError::Installing),
        }
    }

    /// Replaces the whole content of this store with `source`'s, durably, in batches of at most
    /// [`INSTALL_BATCH_BYTES_MAX`].
    ///
    /// Readers are refused while it runs. The `Meta` table, which holds the applied log id, is
    /// replaced last, in one synced batch: until it lands the store reports its old applied
    /// index, so after a crash halfway the snapshot, already in place as a pack, is newer than
    /// the state, and openraft installs it again before anything else at restart.
    pub fn replace_with(&self, source: &RocksStore) -> Result<(), StoreError> {
        self.replace_in_batches(source, INSTALL_BATCH_BYTES_MAX, None)
    }

    /// [`RocksStore::replace_with`] with a batch limit, and (for tests) a failure after
    /// `fail_after` batches, as a crash there would leave the store.
    fn replace_in_batches(
        &self,
        source: &RocksStore,
        batch_bytes_max: usize,
        fail_after: Option<usize>,
    ) -> Result<(), StoreError> {
        let _exclusive = self.install.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.install_incomplete.store(true, Ordering::SeqCst);
        let result = self.replace_tables(source, batch_bytes_max, fail_after);
        if result.is_ok() {
            self.install_incomplete.store(false, Ordering::SeqCst);
        }
        // Whether or not the install went through, what the cache knew may be gone.
        self.cache().clear();
        result
    }

    fn replace_tables(
        &self,
        source: &RocksStore,
        batch_bytes_max: usize,
        mut fail_after: Option<usize>,
    ) -> Result<(), StoreError> {
        // Marked first, durably: a crash from here on leaves a store that says so at open.
        let mut marker = WriteOptions::default();
        marker.set_sync(true);
        self.db
            .put_cf_opt(self.cf(Table::Meta), INSTALL_INCOMPLETE_KEY, [], &marker)
            .map_err(rocks("mark install"))?;
        let mut batch = WriteBatch::default();
        let mut batch_bytes = 0usize;
        let mut write = |batch: &mut WriteBatch, batch_bytes: &mut usize, sync: bool| -> Result<(), StoreError> {
            if let Some(left) = fail_after.as_mut() {
                if *left == 0 {
                    return Err(StoreError::Io {
                        op: "install snapshot (a test's crash)",
                        path: self.path.clone(),
                        source: std::io::Error::other("failure injected after a batch"),
                    });
                }
                *left -= 1;
            }
            let mut options = WriteOptions::default();
            options.set_sync(sync);
            self.db
                .write_opt(std::mem::take(batch), &options)
                .map_err(rocks("install snapshot"))?;
            *batch_bytes = 0;
            Ok(())
        };
        let tables = Table::ALL.iter().filter(|t| **t != Table::Meta).chain([&Table::Meta]);
        for &table in tables {
            if table == Table::Meta && !batch.is_empty() {
                write(&mut batch, &mut batch_bytes, false)?;
            }
            for item in self.db.iterator_cf(self.cf(table), IteratorMode::Start) {
                let (key, _) = item.map_err(rocks("iterate"))?;
                batch_bytes += key.len();
                batch.delete_cf(self.cf(table), key);
                if batch_bytes >= batch_bytes_max && table != Table::Meta {
                    write(&mut batch, &mut batch_bytes, false)?;
                }
            }
            let Some(source_cf) = source.db.cf_handle(table.name()) else {
                continue; // a table the snapshot's build did not have: empty there
            };
            for item in source.db.iterator_cf(source_cf, IteratorMode::Start) {
                let (key, value) = item.map_err(rocks("iterate snapshot"))?;
                batch_bytes += key.len() + value.len();
                batch.put_cf(self.cf(table), key, value);
                if batch_bytes >= batch_bytes_max && table != Table::Meta {
                    write(&mut batch, &mut batch_bytes, false)?;
                }
            }
        }
        // The Meta batch, synced: the WAL before it is synced with it.
        write(&mut batch, &mut batch_bytes, true)
    }

    /// Approximate number of keys per table, for status output.
    pub fn estimate_keys(&self, table: Table) -> u64 {
        self.db
            .property_int_value_cf(self.cf(table), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// A point-in-time view of the store: every read through it sees the state after the same
/// applied entry, however many keys it reads. A read of several keys straight from the store can
/// see one entry's writes to some keys and not to others, landing between two reads.
pub struct RocksView<'a> {
    store: &'a RocksStore,
    snapshot: Option<rocksdb::SnapshotWithThreadMode<'a, DB>>,
    /// The view was asked for while a snapshot install ran: its reads are refused.
    during_install: bool,
}

impl RocksStore {
    /// A consistent view for reads of more than one key.
    pub fn view(&self) -> RocksView<'_> {
        // Taken under the read share of the install lock, so no install is halfway: the view
        // shows the state before or after one, whatever happens while it is read.
        match self.read_guard(None) {
            Ok(_guard) => RocksView {
                store: self,
                snapshot: Some(self.db.snapshot()),
                during_install: false,
            },
            Err(_) => RocksView {
                store: self,
                snapshot: None,
                during_install: true,
            },
        }
    }
}

impl super::ViewSource for RocksStore {
    type View<'a> = RocksView<'a>;

    fn view(&self) -> RocksView<'_> {
        RocksStore::view(self)
    }
}

impl RocksView<'_> {
    fn check_not_during_install(&self) -> Result<(), StoreError> {
        if self.during_install {
            return Err(StoreError::Installing);
        }
        Ok(())
    }

    fn read_options(&self) -> ReadOptions {
        let mut options = ReadOptions::default();
        if let Some(snapshot) = &self.snapshot {
            options.set_snapshot(snapshot);
        }
        options
    }
}

impl RocksStore {
    /// Reads of the live store, for a caller holding the read share of the install lock.
    fn live(&self) -> RocksView<'_> {
        RocksView {
            store: self,
            snapshot: None,
            during_install: false,
        }
    }
}

impl StoreRead for RocksStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _shared = self.read_guard(Some(table))?;
        self.live().get(table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let _shared = self.read_guard(Some(table))?;
        self.live().scan(table, range, limit)
    }

    fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let _shared = self.read_guard(Some(table))?;
        self.live().scan_reverse(table, range, limit)
    }
}

/// See [`RocksStore::apply_reads`].
pub struct ApplyReads<'a> {
    store: &'a RocksStore,
}

impl StoreRead for ApplyReads<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if !RecordCache::caches(table) {
            return self.store.get(table, key);
        }
        if let Some(known) = self.store.cache().get(table, key) {
            return Ok(known);
        }
        let value = self.store.get(table, key)?;
        self.store.cache().insert(table, key, value.as_deref());
        Ok(value)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.store.scan(table, range, limit)
    }

    fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.store.scan_reverse(table, range, limit)
    }
}

impl StoreRead for RocksView<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_not_during_install()?;
        without_perf_counters();
        let db = &self.store.db;
        match &self.snapshot {
            Some(_) => db.get_cf_opt(self.store.cf(table), key, &self.read_options()),
            None => db.get_cf(self.store.cf(table), key),
        }
        .map_err(rocks("get"))
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.check_not_during_install()?;
        let mut options = self.read_options();
        if let Some(end) = &range.end {
            options.set_iterate_upper_bound(end.clone());
        }
        let mode = IteratorMode::From(&range.start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self
            .store
            .db
            .iterator_cf_opt(self.store.cf(table), options, mode)
            .take(limit)
        {
            let (k, v) = item.map_err(rocks("scan"))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.check_not_during_install()?;
        let mut options = self.read_options();
        options.set_iterate_lower_bound(range.start.clone());
        let mode = match &range.end {
            // The upper bound is exclusive: start just below it.
            Some(end) => {
                options.set_iterate_upper_bound(end.clone());
                IteratorMode::From(end, rocksdb::Direction::Reverse)
            }
            None => IteratorMode::End,
        };
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf_opt(self.store.cf(table), options, mode) {
            let (k, v) = item.map_err(rocks("scan reverse"))?;
            if !range.contains(&k) {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(store: &RocksStore, pairs: &[(&[u8], &[u8])]) {
        let mut writes = WriteSet::default();
        for (key, value) in pairs {
            writes.put(Table::Counter, key.to_vec(), value.to_vec());
        }
        store.commit(&writes).expect("commit");
    }

    /// The apply path's cached reads follow every commit, remember absence, and forget
    /// everything when a snapshot replaces the store.
    #[test]
    fn apply_reads_follow_commits_and_snapshot_installs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("state")).expect("open");
        let reads = store.apply_reads();
        assert_eq!(reads.get(Table::Counter, b"a").expect("get"), None);
        write(&store, &[(b"a", b"1")]);
        assert_eq!(reads.get(Table::Counter, b"a").expect("get"), Some(b"1".to_vec()));
        write(&store, &[(b"a", b"2")]);
        assert_eq!(reads.get(Table::Counter, b"a").expect("get"), Some(b"2".to_vec()));
        let mut delete = WriteSet::default();
        delete.delete(Table::Counter, b"a".to_vec());
        store.commit(&delete).expect("commit");
        assert_eq!(reads.get(Table::Counter, b"a").expect("get"), None);

        write(&store, &[(b"a", b"3")]);
        let other = RocksStore::open(dir.path().join("other")).expect("open");
        write(&other, &[(b"a", b"9")]);
        store.replace_with(&other).expect("install");
        assert_eq!(reads.get(Table::Counter, b"a").expect("get"), Some(b"9".to_vec()));
    }

    /// Found by the bank partition test: a ledger lookup read account after account from the live
    /// store, saw a transfer's debit but not its credit, and money seemed to vanish. A view reads
    /// every key as of one moment.
    #[test]
    fn a_view_sees_every_key_as_of_one_moment_while_writes_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("state")).expect("open");
        write(&store, &[(b"a", b"10"), (b"b", b"10")]);
        let view = store.view();
        assert_eq!(view.get(Table::Counter, b"a").expect("get"), Some(b"10".to_vec()));
        // A transfer of 3 lands between the view's two reads.
        write(&store, &[(b"a", b"7"), (b"b", b"13")]);
        assert_eq!(view.get(Table::Counter, b"b").expect("get"), Some(b"10".to_vec()));
        let all = view.scan(Table::Counter, &KeyRange::all(), 10).expect("scan");
        assert_eq!(
            all.iter().map(|(_, v)| v.as_slice()).collect::<Vec<_>>(),
            [b"10", b"10"]
        );
        assert_eq!(store.get(Table::Counter, b"b").expect("get"), Some(b"13".to_vec()));
        assert_eq!(
            store.view().get(Table::Counter, b"a").expect("get"),
            Some(b"7".to_vec())
        );
    }
}

#[cfg(test)]
mod install_tests {
    use super::*;
    use crate::state::KeyRange;

    /// A store with `n` keys in every table but Meta, and one Meta key naming `generation`.
    fn filled(dir: &Path, name: &str, n: u32, generation: &str) -> RocksStore {
        let store = RocksStore::open(dir.join(name)).expect("open");
        let mut writes = WriteSet::default();
        for table in Table::ALL.iter().filter(|t| **t != Table::Meta) {
            for i in 0..n {
                writes.put(*table, format!("{generation}-{i:05}").into_bytes(), vec![7; 100]);
            }
        }
        writes.put(Table::Meta, b"applied".to_vec(), generation.as_bytes().to_vec());
        store.commit(&writes).expect("commit");
        store
    }

    fn everything(store: &RocksStore) -> Vec<(Table, KeyValue)> {
        Table::ALL
            .iter()
            .flat_map(|t| {
                store
                    .scan(*t, &KeyRange::all(), usize::MAX)
                    .expect("scan")
                    .into_iter()
                    .map(move |kv| (*t, kv))
            })
            .collect()
    }

    /// In small batches, the install ends with exactly the source's content.
    #[test]
    fn an_install_in_small_batches_replaces_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = filled(dir.path(), "target", 300, "old");
        let source = filled(dir.path(), "source", 200, "new");
        target.replace_in_batches(&source, 4096, None).expect("install");
        assert_eq!(everything(&target), everything(&source));
    }

    /// A checkpoint of an earlier build of this data format, which had no `cache_purge` table,
    /// installs: the table it lacks is read as empty.
    #[test]
    fn a_checkpoint_without_a_newer_table_installs_as_if_it_were_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_build = dir.path().join("old-build");
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let names = Table::ALL.iter().filter(|t| **t != Table::CachePurge).map(|t| t.name());
            let db = DB::open_cf(&options, &old_build, names).expect("open as an older build");
            db.put_cf(db.cf_handle("kv").expect("kv"), b"k", b"v").expect("put");
        }
        let target = filled(dir.path(), "target", 10, "old");
        let mut purge = WriteSet::default();
        purge.put(Table::CachePurge, 1u64.to_be_bytes().to_vec(), b"p".to_vec());
        target.commit(&purge).expect("commit");
        let source = RocksStore::open_read_only(&old_build).expect("open the older checkpoint");
        target.replace_in_batches(&source, 4096, None).expect("install");
        assert_eq!(everything(&target), vec![(Table::Kv, (b"k".to_vec(), b"v".to_vec()))]);
    }

    /// A crash halfway (here: an injected failure after a few batches) leaves the Meta table,
    /// and so the applied log id, as it was: the store still says it is at its old index, which
    /// is what makes openraft install the snapshot again at restart. That second install then
    /// ends with exactly the source's content.
    #[test]
    fn an_install_cut_halfway_keeps_the_old_applied_state_and_a_second_one_completes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = filled(dir.path(), "target", 300, "old");
        let source = filled(dir.path(), "source", 200, "new");
        assert!(target.replace_in_batches(&source, 4096, Some(5)).is_err());
        assert_eq!(
            target.get(Table::Meta, b"applied").expect("get"),
            Some(b"old".to_vec()),
            "the applied state is the old one until the last batch"
        );
        assert!(target.install_incomplete());
        assert!(
            matches!(target.get(Table::Kv, b"old-00001"), Err(StoreError::Installing)),
            "the mixed data tables are not read"
        );
        assert!(
            matches!(
                target.checkpoint(&dir.path().join("checkpoint")),
                Err(StoreError::Installing)
            ),
            "no snapshot is taken of the mixed state"
        );
        // As at a restart after a crash there: the store says so, Meta stays readable.
        let path = target.path().to_path_buf();
        drop(target);
        let target = RocksStore::open(&path).expect("reopen");
        assert!(target.install_incomplete());
        assert_eq!(target.get(Table::Meta, b"applied").expect("get"), Some(b"old".to_vec()));
        assert!(matches!(
            target.get(Table::Kv, b"old-00001"),
            Err(StoreError::Installing)
        ));
        assert!(matches!(
            target.view().get(Table::Kv, b"old-00001"),
            Err(StoreError::Installing)
        ));
        target.replace_with(&source).expect("install again");
        assert!(!target.install_incomplete());
        assert_eq!(everything(&target), everything(&source));
        drop(target);
        assert!(!RocksStore::open(&path).expect("reopen").install_incomplete());
    }

    /// While an install runs, reads are refused rather than shown a state half replaced; a view
    /// taken before it keeps reading the state it was taken on.
    #[test]
    fn reads_during_an_install_are_refused_and_earlier_views_keep_their_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = filled(dir.path(), "target", 10, "old");
        let before = store.view();
        let exclusive = store.install.write().expect("install lock");
        assert!(matches!(
            store.get(Table::Kv, b"old-00001"),
            Err(StoreError::Installing)
        ));
        assert!(matches!(
            store.scan(Table::Kv, &KeyRange::all(), 10),
            Err(StoreError::Installing)
        ));
        let during = store.view();
        assert!(matches!(
            during.get(Table::Kv, b"old-00001"),
            Err(StoreError::Installing)
        ));
        assert_eq!(
            before.get(Table::Kv, b"old-00001").expect("an earlier view reads on"),
            Some(vec![7; 100])
        );
        drop(exclusive);
        assert_eq!(store.get(Table::Kv, b"old-00001").expect("get"), Some(vec![7; 100]));
    }
}
