//! KV reads: a get and a scan, each answered from one point-in-time view and judged at that
//! view's applied time (the stamp of the last applied entry), so every node, and every node after
//! a failover, judges a TTL key's expiry alike. The writes are in `kv.rs`.

use super::kv::revision_of;
use super::read::{read_judged, Expiring, Judged};
use super::{corrupt, last_applied_stamp};
use crate::limits::SCAN_REPLY_BYTES_MAX;
use crate::state::{KeyRange, KeyValue, KvRecord, StoreError, StoreRead, Table, ViewSource};

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

/// Several keys' records (live or expired) and the applied time, all from one view: an entry
/// applied meanwhile is seen by every key or by none (what Redis's `MGET` and a `MULTI` block's
/// reads promise).
pub fn get_many<S: ViewSource + ?Sized>(
    source: &S,
    keys: &[Vec<u8>],
) -> Result<Judged<Vec<Option<KvRecord>>>, StoreError> {
    read_judged(source, |view| {
        keys.iter()
            .map(|key| match view.get(Table::Kv, key)? {
                None => Ok(None),
                Some(bytes) => Ok(Some(KvRecord::decode(&bytes).map_err(|e| corrupt(Table::Kv, key, e))?)),
            })
            .collect()
    })
}

impl Judged<Vec<Option<KvRecord>>> {
    /// Each record's expiry, live or not (see [`Judged::expiry`]).
    pub fn expiries(&self) -> Vec<Option<u64>> {
        self.value
            .iter()
            .map(|r| r.as_ref().and_then(|r| r.expires_at_ms))
            .collect()
    }

    /// Each record if it is live at the view's applied time.
    pub fn live(self) -> Vec<Option<KvRecord>> {
        let at = self.judged_at_ms;
        self.value.into_iter().map(|r| r.filter(|r| r.is_live_at(at))).collect()
    }
}

/// Fewest records one internal page of a scan reads.
const SCAN_PAGE_RECORDS_MIN: usize = 64;
/// Most records one internal page of a scan reads.
const SCAN_PAGE_RECORDS_MAX: usize = 256;

/// What a KV scan asks for.
#[derive(Clone, Copy, Debug)]
pub struct KvScan<'a> {
    /// Only keys with this prefix.
    pub prefix: &'a [u8],
    /// Resume after this key (empty: from the prefix on).
    pub start_after: &'a [u8],
    /// At most this many live items (and at most [`SCAN_REPLY_BYTES_MAX`] of keys and values).
    pub limit: usize,
}

/// A KV scan's answer, all of it from one view.
#[derive(Debug)]
pub struct KvScanPage {
    /// The live keys in order, at most the limit.
    pub items: Vec<(Vec<u8>, KvRecord)>,
    /// More live keys follow the last item: the limit or the byte budget was reached.
    pub more: bool,
    /// The expiry of every record the scan returned or stepped over (expired), so a linearizable
    /// read can settle the ones due by the clock but not yet by the applied time.
    pub expiries: Vec<Option<u64>>,
    /// The applied time the records were judged live at.
    pub judged_at_ms: u64,
}

/// Up to `limit` live keys under the prefix, in key order. Expired records are stepped over, so
/// the view is read in internal pages until enough live ones are found:
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
    // From the prefix, or from `start_after` when that lies inside or past it: a `start_after`
    // below the prefix would start the scan at keys outside it.
    let mut from = prefix.max(start_after).to_vec();
    let mut answer_bytes = 0usize;
    // One more than the limit, to know whether more follow; never tiny, so that stepping over
    // many expired keys not yet swept takes few seeks;
    // never huge either: a page is read whole into memory, and the answer's byte budget may
    // stop the scan long before a page of 10,000 values of 1 MiB is used.
    let page_size = limit
        .saturating_add(1)
        .clamp(SCAN_PAGE_RECORDS_MIN, SCAN_PAGE_RECORDS_MAX);
    loop {
        let page = view.scan(Table::Kv, &KeyRange::prefix_from(prefix, from.clone()), page_size)?;
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
            let item_bytes = key.len() + record.value.len();
            if answer.items.len() == limit
                || (!answer.items.is_empty() && answer_bytes + item_bytes > SCAN_REPLY_BYTES_MAX)
            {
                answer.more = true;
                return Ok(answer);
            }
            answer_bytes += item_bytes;
            answer.items.push((key, record));
        }
        if page_len < page_size {
            return Ok(answer);
        }
        from.push(0);
    }
}

/// One watch step's history (at most `page_rows` rows, or one whole revision): the rows from
/// revision `next` on, whole revisions only; the last revision they cover (`next - 1` when there
/// is none yet); whether more may follow at once. The read behind `kv watch`.
pub fn history_page<S: ViewSource + ?Sized>(
    source: &S,
    next: u64,
    page_rows: usize,
) -> Result<(Vec<KeyValue>, u64, bool), StoreError> {
    // One view for the page and the rest of its last revision.
    let store = source.view();
    let mut page = store.scan(
        Table::KvHistory,
        &KeyRange::all_from(next.to_be_bytes().to_vec()),
        page_rows,
    )?;
    let full = page.len() == page_rows;
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return Ok((page, next.saturating_sub(1), false));
    };
    let (first, last) = (revision_of(&first.0), revision_of(&last.0));
    if !full {
        return Ok((page, last, false));
    }
    if first != last {
        // The last revision may have rows unread: rows of the earlier layout hold one change each.
        page.retain(|(k, _)| revision_of(k) < last);
        return Ok((page, last - 1, true));
    }
    // One revision of the earlier layout fills the page: read it whole.
    let whole = store.scan(
        Table::KvHistory,
        &KeyRange::between(first.to_be_bytes().to_vec(), (first + 1).to_be_bytes().to_vec()),
        usize::MAX,
    )?;
    Ok((whole, first, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::test_views::{open_store, Meddler};
    use crate::apply::{WriteSet, LAST_STAMP_KEY};
    use crate::hlc::HlcStamp;
    use crate::state::rocks::RocksStore;

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

    /// A store at applied time 1000 holding what `fill` writes.
    fn store_at_1000(fill: impl FnOnce(&mut WriteSet)) -> (tempfile::TempDir, RocksStore) {
        let (dir, store) = open_store();
        let mut setup = WriteSet::default();
        applied_time(&mut setup, 1_000);
        fill(&mut setup);
        store.commit(&setup).expect("commit");
        (dir, store)
    }

    /// A scan of the prefix `k/`.
    fn scan_k<S: ViewSource + ?Sized>(source: &S, start_after: &[u8], limit: usize) -> KvScanPage {
        let request = KvScan {
            prefix: b"k/",
            start_after,
            limit,
        };
        scan(source, request).expect("scan")
    }

    fn keys(page: &KvScanPage) -> Vec<String> {
        page.items
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// Keys `{stem}000`, `{stem}001`, ... expired at applied time 1000: a scan steps over them,
    /// and `count` above the page size makes it read more than one internal page.
    fn put_expired_run(writes: &mut WriteSet, stem: &str, count: usize) -> Vec<Option<u64>> {
        (0..count)
            .map(|i| {
                let expires_at_ms = 100 + i as u64;
                put(writes, &format!("{stem}{i:03}"), "old", Some(expires_at_ms));
                Some(expires_at_ms)
            })
            .collect()
    }

    /// More expired keys than two internal pages hold.
    const EXPIRED_RUN: usize = 2 * SCAN_PAGE_RECORDS_MIN + 5;

    /// A batch that moves a value from one key to another lands between a multi-key read's
    /// reads: one view, so the answer holds the state before it, on every key.
    #[test]
    fn a_multi_key_read_sees_a_batch_on_every_key_or_on_none() {
        let (_dir, store) = open_store();
        let mut setup = WriteSet::default();
        applied_time(&mut setup, 1_000);
        put(&mut setup, "a", "moving", None);
        put(&mut setup, "gone", "old", Some(900));
        store.commit(&setup).expect("commit");

        let mut moved = WriteSet::default();
        moved.delete(Table::Kv, b"a".to_vec());
        put(&mut moved, "b", "moving", None);
        applied_time(&mut moved, 1_001);
        let meddler = Meddler::new(&store, 2, moved);
        let keys = [b"a".to_vec(), b"b".to_vec(), b"gone".to_vec(), b"never".to_vec()];
        let read = get_many(&meddler, &keys).expect("read");
        assert!(meddler.landed(), "the batch landed between the reads");
        assert_eq!(read.judged_at_ms, 1_000);
        assert_eq!(read.expiries(), vec![None, None, Some(900), None]);
        let values: Vec<Option<Vec<u8>>> = read.live().into_iter().map(|r| r.map(|r| r.value)).collect();
        assert_eq!(values, vec![Some(b"moving".to_vec()), None, None, None]);
        // After it: on every key.
        let after: Vec<bool> = get_many(&store, &keys)
            .expect("read")
            .live()
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(after, vec![false, true, false, false]);
    }

    /// A batch that moves a key (deletes `k/a`, read before it lands, and writes `k/z`, read
    /// after) lands between the scan's reads: after its applied-time read, or after its first
    /// internal page. One view: the answer holds exactly one of the two keys, judged at the time
    /// before the batch. Reads from the live store (or a view each) mixed the two states.
    #[test]
    fn a_batch_applied_between_internal_pages_is_in_the_answer_whole_or_not_at_all() {
        for commit_after_read in [1, 2] {
            let (_dir, store) = open_store();
            let mut setup = WriteSet::default();
            applied_time(&mut setup, 1_000);
            put(&mut setup, "k/a", "a", None);
            put_expired_run(&mut setup, "k/b", EXPIRED_RUN);
            put(&mut setup, "k/y", "y", None);
            store.commit(&setup).expect("commit");

            let mut moved = WriteSet::default();
            moved.delete(Table::Kv, b"k/a".to_vec());
            put(&mut moved, "k/z", "z", None);
            applied_time(&mut moved, 1_001);
            let meddler = Meddler::new(&store, commit_after_read, moved);
            let request = KvScan {
                prefix: b"k/",
                start_after: b"",
                limit: 3,
            };
            let page = scan(&meddler, request).expect("scan");
            assert!(
                meddler.scans.get() >= 2,
                "one internal page only: the test misses its point"
            );
            assert!(meddler.landed(), "the batch never landed");
            assert_eq!(
                keys(&page),
                ["k/a", "k/y"],
                "the scan mixed the states before and after a batch (landing after read {commit_after_read})"
            );
            assert!(!page.more);
            assert_eq!(page.judged_at_ms, 1_000);

            // After the batch, a new scan sees it whole.
            let after = scan(&store, request).expect("scan");
            assert_eq!(keys(&after), ["k/y", "k/z"]);
            assert_eq!(after.judged_at_ms, 1_001);
        }
    }

    /// Full internal pages of expired records were read again and again: the next page started
    /// just after the last *live* key, which did not move.
    #[test]
    fn a_scan_steps_over_pages_of_expired_records_and_ends() {
        let mut expected_expiries = Vec::new();
        let (_dir, store) = store_at_1000(|setup| {
            expected_expiries = put_expired_run(setup, "k/a", EXPIRED_RUN);
            put(setup, "k/f", "f", None);
            put(setup, "k/g", "g", Some(5_000));
            put(setup, "l/a", "other prefix", None);
        });
        let watched = Meddler::new(&store, usize::MAX, WriteSet::default());
        let page = scan_k(&watched, b"", 1);
        assert_eq!(keys(&page), ["k/f"]);
        assert!(page.more);
        // Every record read once: the expired run, the item, and the next live key (for `more`).
        expected_expiries.extend([None, Some(5_000)]);
        assert_eq!(page.expiries, expected_expiries);

        let rest = scan_k(&watched, b"k/f", 1);
        assert_eq!(keys(&rest), ["k/g"]);
        assert!(!rest.more);
    }

    /// `more` is true when the next live key lies pages of expired keys past the last item.
    #[test]
    fn more_sees_a_live_key_past_pages_of_expired_ones() {
        let (_dir, store) = store_at_1000(|setup| {
            put(setup, "k/a", "a", None);
            put_expired_run(setup, "k/b", EXPIRED_RUN);
            put(setup, "k/z", "z", None);
        });
        let page = scan_k(&store, b"", 1);
        assert_eq!(keys(&page), ["k/a"]);
        assert!(page.more);
        assert_eq!(page.expiries.len(), EXPIRED_RUN + 2);
    }

    /// An answer stops before the item that would pass the byte budget (never before the first)
    /// and says more follow; resuming after its last key reads the rest.
    #[test]
    fn a_scan_answer_stops_at_its_byte_budget_and_resumes() {
        let value = "v".repeat(crate::limits::VALUE_BYTES_MAX);
        let count = SCAN_REPLY_BYTES_MAX / crate::limits::VALUE_BYTES_MAX + 3;
        let (_dir, store) = store_at_1000(|setup| {
            for i in 0..count {
                put(setup, &format!("k/{i:03}"), &value, None);
            }
        });
        let mut seen = Vec::new();
        let mut start_after = Vec::new();
        let mut answers = 0;
        loop {
            let page = scan_k(&store, &start_after, 10_000);
            answers += 1;
            let bytes: usize = page.items.iter().map(|(k, r)| k.len() + r.value.len()).sum();
            assert!(bytes <= SCAN_REPLY_BYTES_MAX, "an answer of {bytes} bytes");
            assert!(!page.items.is_empty());
            start_after = page.items.last().expect("an item").0.clone();
            seen.extend(keys(&page));
            if !page.more {
                break;
            }
        }
        assert_eq!(answers, 2);
        let expected: Vec<String> = (0..count).map(|i| format!("k/{i:03}")).collect();
        assert_eq!(seen, expected);
    }

    /// A `start_after` that sorts below the prefix starts the scan at the prefix: it started at
    /// `start_after`, met a key outside the prefix first, and answered nothing.
    #[test]
    fn a_start_after_below_the_prefix_scans_the_whole_prefix() {
        let (_dir, store) = store_at_1000(|setup| {
            put(setup, "k.x", "outside, between start_after and the prefix", None);
            put(setup, "k/a", "a", None);
            put(setup, "k/b", "b", None);
            put(setup, "k0", "outside, past the prefix", None);
        });
        let page = scan_k(&store, b"k", 10);
        assert_eq!(keys(&page), ["k/a", "k/b"]);
        assert!(!page.more);
        // Inside the prefix, start_after resumes after itself, present or not.
        for start_after in [&b"k/a"[..], b"k/a0"] {
            let page = scan_k(&store, start_after, 10);
            assert_eq!(keys(&page), ["k/b"]);
        }
    }

    /// A record and the time it is judged at come from one view: a re-put with a shorter TTL
    /// applied between the two reads is judged at its own applied time (expired), never at the
    /// earlier one (where the new value never existed).
    #[test]
    fn a_get_judges_a_record_at_the_applied_time_of_its_own_view() {
        let (_dir, store) = open_store();
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
        let (_dir, store) = open_store();
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
