//! KV reads: a get and a scan, each answered from one point-in-time view and judged at that
//! view's applied time (the stamp of the last applied entry), so every node, and every node after
//! a failover, judges a TTL key's expiry alike. The writes are in `kv.rs`.

use super::read::{read_judged, Expiring, Judged};
use super::{corrupt, last_applied_stamp};
use crate::state::{KeyRange, KvRecord, StoreError, StoreRead, Table, ViewSource};

impl Expiring for KvRecord {
    fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }
}

/// A key's record (live or expired) and the applied time, from one view.
pub fn get<S: ViewSource + ?Sized>(source: &S, key: &[u8]) -> Result<Judged<Option<KvRecord>>, StoreError> {
    read_judged(source, |view| match view.get(Table::Kv, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(KvRecord::decode(&bytes).map_err(|e| corrupt(Table::Kv, key, e))?)),
    })
}

/// What a KV scan asks for.
#[derive(Clone, Copy, Debug)]
pub struct KvScan<'a> {
    /// Only keys with this prefix.
    pub prefix: &'a [u8],
    /// Resume after this key (empty: from the prefix on).
    pub start_after: &'a [u8],
    /// At most this many live items.
    pub limit: usize,
}

/// A KV scan's answer, all of it from one view.
#[derive(Debug)]
pub struct KvScanPage {
    /// The live keys in order, at most the limit.
    pub items: Vec<(Vec<u8>, KvRecord)>,
    /// More live keys follow the last item.
    pub more: bool,
    /// The expiry of every record the scan returned or stepped over (expired), so a linearizable
    /// read can settle the ones due by the clock but not yet by the applied time.
    pub expiries: Vec<Option<u64>>,
    /// The applied time the records were judged live at.
    pub judged_at_ms: u64,
}

/// Up to `limit` live keys under the prefix, in key order. Expired records are stepped over, so
/// the view is read in internal pages of `limit + 1` records until enough live ones are found:
/// every page, and the applied time, come from one view, so a batch applied while the scan runs
/// is in the answer whole or not at all.
pub fn scan<S: ViewSource + ?Sized>(source: &S, request: KvScan<'_>) -> Result<KvScanPage, StoreError> {
    let view = source.view();
    scan_in(&view, request)
}

fn scan_in<R: StoreRead + ?Sized>(view: &R, request: KvScan<'_>) -> Result<KvScanPage, StoreError> {
    let KvScan {
        prefix,
        start_after,
        limit,
    } = request;
    let judged_at_ms = last_applied_stamp(view)?.physical_ms();
    let mut answer = KvScanPage {
        items: Vec::new(),
        more: false,
        expiries: Vec::new(),
        judged_at_ms,
    };
    let mut from = if start_after.is_empty() {
        prefix.to_vec()
    } else {
        start_after.to_vec()
    };
    loop {
        let page = view.scan(
            Table::Kv,
            &KeyRange::prefix_from(prefix, from.clone()),
            limit.saturating_add(1),
        )?;
        let page_len = page.len();
        for (key, bytes) in page {
            if !key.starts_with(prefix) {
                return Ok(answer);
            }
            if key == start_after {
                continue;
            }
            let record = KvRecord::decode(&bytes).map_err(|e| corrupt(Table::Kv, &key, e))?;
            answer.expiries.push(record.expires_at_ms);
            // The next internal page starts after the last key read, live or stepped over: a
            // page of expired records only must not be read again.
            from.clone_from(&key);
            if !record.is_live_at(judged_at_ms) {
                continue;
            }
            if answer.items.len() == limit {
                answer.more = true;
                return Ok(answer);
            }
            answer.items.push((key, record));
        }
        if page_len <= limit {
            return Ok(answer);
        }
        from.push(0);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::apply::{WriteSet, LAST_STAMP_KEY};
    use crate::hlc::HlcStamp;
    use crate::state::rocks::{RocksStore, RocksView};
    use crate::state::KeyValue;

    /// Internal pages a test scan may read before it is taken for a scan that never ends.
    const TEST_SCAN_PAGES_MAX: usize = 64;

    fn record(value: &str, expires_at_ms: Option<u64>) -> Vec<u8> {
        KvRecord {
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            expires_at_ms,
            written: Default::default(),
        }
        .encode()
    }

    fn put(writes: &mut WriteSet, key: &str, value: &str, expires_at_ms: Option<u64>) {
        writes.put(Table::Kv, key.as_bytes().to_vec(), record(value, expires_at_ms));
    }

    fn applied_time(writes: &mut WriteSet, ms: u64) {
        let stamp = HlcStamp::from_parts(ms, 0);
        writes.put(Table::Meta, LAST_STAMP_KEY.to_vec(), stamp.0.to_le_bytes().to_vec());
    }

    fn open() -> (tempfile::TempDir, RocksStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("state")).expect("open");
        (dir, store)
    }

    /// Hands out the store's own views, and commits `batch` to the store just after the view
    /// read numbered `commit_after_read` (counted over every view it handed out): an entry
    /// applied while a read runs, at the worst moment the test picks.
    struct Meddler<'s> {
        store: &'s RocksStore,
        commit_after_read: usize,
        batch: RefCell<Option<WriteSet>>,
        reads: Cell<usize>,
        scans: Cell<usize>,
    }

    impl<'s> Meddler<'s> {
        fn new(store: &'s RocksStore, commit_after_read: usize, batch: WriteSet) -> Meddler<'s> {
            Meddler {
                store,
                commit_after_read,
                batch: RefCell::new(Some(batch)),
                reads: Cell::new(0),
                scans: Cell::new(0),
            }
        }

        fn after_read(&self) {
            self.reads.set(self.reads.get() + 1);
            if self.reads.get() == self.commit_after_read {
                if let Some(batch) = self.batch.borrow_mut().take() {
                    self.store.commit(&batch).expect("commit");
                }
            }
        }
    }

    struct MeddledView<'v> {
        view: RocksView<'v>,
        meddler: &'v Meddler<'v>,
    }

    impl StoreRead for MeddledView<'_> {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let read = self.view.get(table, key);
            self.meddler.after_read();
            read
        }

        fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            self.meddler.scans.set(self.meddler.scans.get() + 1);
            assert!(
                self.meddler.scans.get() <= TEST_SCAN_PAGES_MAX,
                "the scan read {TEST_SCAN_PAGES_MAX} internal pages of a handful of keys: it never ends"
            );
            let read = self.view.scan(table, range, limit);
            self.meddler.after_read();
            read
        }
    }

    impl<'s> ViewSource for Meddler<'s> {
        type View<'a>
            = MeddledView<'a>
        where
            Self: 'a;

        fn view(&self) -> MeddledView<'_> {
            MeddledView {
                view: self.store.view(),
                meddler: self,
            }
        }
    }

    fn keys(page: &KvScanPage) -> Vec<String> {
        page.items
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// A batch that moves a key (deletes `k/a`, already returned by the first internal page, and
    /// writes `k/z`, read by a later one) lands between the scan's internal pages. One view: the
    /// answer holds exactly one of the two. Pages read from the live store (or from a view each)
    /// held neither or both.
    #[test]
    fn a_batch_applied_between_internal_pages_is_in_the_answer_whole_or_not_at_all() {
        let (_dir, store) = open();
        let mut setup = WriteSet::default();
        applied_time(&mut setup, 1_000);
        put(&mut setup, "k/a", "a", None);
        // Expired at 1000: the scan steps over them, so with limit 3 it reads a second page.
        for expired in ["k/b", "k/c", "k/d"] {
            put(&mut setup, expired, "old", Some(500));
        }
        put(&mut setup, "k/y", "y", None);
        store.commit(&setup).expect("commit");

        let mut moved = WriteSet::default();
        moved.delete(Table::Kv, b"k/a".to_vec());
        put(&mut moved, "k/z", "z", None);
        applied_time(&mut moved, 1_001);
        // Reads: the applied time, then page 1; the batch lands after page 1.
        let meddler = Meddler::new(&store, 2, moved);
        let request = KvScan {
            prefix: b"k/",
            start_after: b"",
            limit: 3,
        };
        let page = scan(&meddler, request).expect("scan");
        assert!(
            meddler.scans.get() >= 2,
            "the scan read one page only: the test misses its point"
        );
        assert_eq!(
            keys(&page),
            ["k/a", "k/y"],
            "the scan mixed the states before and after a batch"
        );
        assert!(!page.more);
        assert_eq!(page.judged_at_ms, 1_000);

        // After the batch, a new scan sees it whole.
        let after = scan(&store, request).expect("scan");
        assert_eq!(keys(&after), ["k/y", "k/z"]);
        assert_eq!(after.judged_at_ms, 1_001);
    }

    /// A full internal page of expired records was read again and again: the next page started
    /// just after the last *live* key, which did not move.
    #[test]
    fn a_scan_steps_over_pages_of_expired_records_and_ends() {
        let (_dir, store) = open();
        let mut setup = WriteSet::default();
        applied_time(&mut setup, 1_000);
        for (i, key) in ["k/a", "k/b", "k/c", "k/d", "k/e"].iter().enumerate() {
            put(&mut setup, key, "old", Some(100 + i as u64));
        }
        put(&mut setup, "k/f", "f", None);
        put(&mut setup, "k/g", "g", Some(5_000));
        put(&mut setup, "l/a", "other prefix", None);
        store.commit(&setup).expect("commit");
        let watched = Meddler::new(&store, usize::MAX, WriteSet::default());
        let page = scan(
            &watched,
            KvScan {
                prefix: b"k/",
                start_after: b"",
                limit: 1,
            },
        )
        .expect("scan");
        assert_eq!(keys(&page), ["k/f"]);
        assert!(page.more);
        assert_eq!(
            page.expiries,
            [Some(100), Some(101), Some(102), Some(103), Some(104), None, Some(5_000)]
        );

        let rest = scan(
            &watched,
            KvScan {
                prefix: b"k/",
                start_after: b"k/f",
                limit: 1,
            },
        )
        .expect("scan");
        assert_eq!(keys(&rest), ["k/g"]);
        assert!(!rest.more);
    }

    /// A record and the time it is judged at come from one view: a re-put with a shorter TTL
    /// applied between the two reads is judged at its own applied time (expired), never at the
    /// earlier one (where the new value never existed).
    #[test]
    fn a_get_judges_a_record_at_the_applied_time_of_its_own_view() {
        let (_dir, store) = open();
        let mut setup = WriteSet::default();
        applied_time(&mut setup, 1_000);
        put(&mut setup, "k", "first", Some(1_500));
        store.commit(&setup).expect("commit");

        let mut re_put = WriteSet::default();
        put(&mut re_put, "k", "second", Some(1_800));
        applied_time(&mut re_put, 2_000);
        // Reads: the applied time, then the record; the batch lands between them.
        let meddler = Meddler::new(&store, 1, re_put);
        let read = get(&meddler, b"k").expect("get");
        assert_eq!(read.judged_at_ms, 1_000);
        let live = read.live().expect("live at 1000");
        assert_eq!(live.value, b"first", "a value judged at a time it did not exist yet");

        let after = get(&store, b"k").expect("get");
        assert_eq!(after.judged_at_ms, 2_000);
        assert_eq!(after.value.as_ref().map(|r| r.value.as_slice()), Some(&b"second"[..]));
        assert!(after.live().is_none(), "expired at 1800, judged at 2000");
    }

    #[test]
    fn a_record_that_does_not_decode_is_corruption_naming_its_key() {
        let (_dir, store) = open();
        let mut setup = WriteSet::default();
        setup.put(Table::Kv, b"k/bad".to_vec(), vec![0xff]);
        store.commit(&setup).expect("commit");
        let err = get(&store, b"k/bad").expect_err("corrupt");
        assert!(
            matches!(err, StoreError::CorruptRecord { table: Table::Kv, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("6b, 2f, 62, 61, 64"), "{err}");
        let request = KvScan {
            prefix: b"k/",
            start_after: b"",
            limit: 10,
        };
        assert!(matches!(scan(&store, request), Err(StoreError::CorruptRecord { .. })));
    }
}
