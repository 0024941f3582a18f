//! [`WriteSet`]: the writes collected while applying a batch of entries, and [`View`]: the store as
//! the apply of one entry sees it (committed state, then the batch's writes so far, then its own).

use std::collections::BTreeMap;

use crate::state::{KeyRange, KeyValue, StoreError, StoreRead, Table};

/// Writes collected while applying a batch of entries; later reads in the batch see them.
#[derive(Default, Debug)]
pub struct WriteSet {
    entries: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl WriteSet {
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert((table, key), Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.entries.insert((table, key), None);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.entries.iter().map(|((t, k), v)| (*t, k.as_slice(), v.as_deref()))
    }

    /// Adds `bytes` to the end of the value this set writes under `key`, or writes them as the
    /// value. The stored value is not read: only for a row created whole within one entry (the
    /// KV history row of the entry's revision), whose earlier parts can only be in this set.
    pub fn append(&mut self, table: Table, key: Vec<u8>, bytes: &[u8]) {
        debug_assert!(table.is_appended(), "{table:?} rows are not built by appending");
        match self.entries.entry((table, key)).or_insert_with(|| Some(Vec::new())) {
            Some(value) => value.extend_from_slice(bytes),
            slot @ None => *slot = Some(bytes.to_vec()),
        }
    }

    /// Takes over `other`'s writes (they win over this set's own), except that rows of appended
    /// tables ([`WriteSet::append`]) written by both are joined, this set's part first.
    pub fn absorb(&mut self, other: WriteSet) {
        for ((table, key), value) in other.entries {
            match (table.is_appended(), value) {
                (true, Some(tail)) => match self.entries.entry((table, key)).or_insert(None) {
                    Some(head) => head.extend_from_slice(&tail),
                    slot @ None => *slot = Some(tail),
                },
                (_, value) => {
                    self.entries.insert((table, key), value);
                }
            }
        }
    }

    pub(crate) fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.entries.is_empty() {
            return None;
        }
        // BTreeMap keyed by (Table, Vec<u8>) cannot be queried by (Table, &[u8]) without allocating.
        self.entries.get(&(table, key.to_vec())).map(|v| v.as_deref())
    }

    fn range_from<'a>(&'a self, table: Table, from: &[u8]) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.entries
            .range((table, from.to_vec())..)
            .take_while(move |((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
    }

    /// The pending writes of `table` inside `range`, last key first, read lazily (a caller that
    /// stops early reads no more).
    fn range_back<'a>(&'a self, table: Table, range: &KeyRange) -> PendingRows<'a> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let lower = Included((table, range.start.clone()));
        let rows: Box<dyn Iterator<Item = _>> = match &range.end {
            Some(end) if *end <= range.start => return Box::new(std::iter::empty()),
            Some(end) => Box::new(self.entries.range((lower, Excluded((table, end.clone())))).rev()),
            // To the end of the table: past the later tables' writes first.
            None => Box::new(
                self.entries
                    .range((lower, Unbounded))
                    .rev()
                    .skip_while(move |((t, _), _)| *t != table),
            ),
        };
        Box::new(
            rows.take_while(move |((t, _), _)| *t == table)
                .map(|((_, k), v)| (k.as_slice(), v.as_deref())),
        )
    }
}

/// A page of base rows with the pending writes over it (`None`: deleted), in key order; counts
/// into `hidden` the base rows a pending delete hides.
fn overlay<'a>(
    base: Vec<KeyValue>,
    pending: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    hidden: &mut usize,
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = base.into_iter().map(|(k, v)| (k, Some(v))).collect();
    for (k, v) in pending {
        if v.is_none() && merged.contains_key(k) {
            *hidden += 1;
        }
        merged.insert(k.to_vec(), v.map(<[u8]>::to_vec));
    }
    merged
}

/// Pending writes of a table, each key with its value (`None`: deleted).
type PendingRows<'a> = Box<dyn Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a>;

/// The store as seen mid-batch: committed state overlaid with this batch's writes.
pub struct View<'a, S: StoreRead> {
    pub base: &'a S,
    pub writes: &'a mut WriteSet,
}

impl<S: StoreRead> View<'_, S> {
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.lookup(table, key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.base.get(table, key),
        }
    }

    /// Merged ordered scan of base and pending writes inside `range`, at most `limit` live entries.
    ///
    /// The base is read page by page, each page as large as still wanted or twice the rows this
    /// batch's deletions hid in the last one, whichever is more, so a batch that deleted many
    /// rows of the range (a purge, a deletion) does not make every later scan read that many rows
    /// (and their values) up front.
    pub fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut from = range.start.clone();
        let mut hidden = 0usize;
        while out.len() < limit {
            let window = KeyRange {
                start: from,
                end: range.end.clone(),
            };
            let page = (limit - out.len()).max(hidden.saturating_mul(2));
            let base = self.base.scan(table, &window, page)?;
            // Pending writes are merged up to the last base row read; past the base's end, all.
            let upto = (base.len() == page)
                .then(|| base.last().map(|(k, _)| k.clone()))
                .flatten();
            let pending = self
                .writes
                .range_from(table, &window.start)
                .take_while(|(k, _)| window.contains(k) && upto.as_deref().is_none_or(|u| *k <= u));
            let merged = overlay(base, pending, &mut hidden);
            out.extend(
                merged
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .take(limit - out.len()),
            );
            let Some(mut next) = upto else {
                break;
            };
            next.push(0);
            from = next;
        }
        Ok(out)
    }

    /// [`View::scan`] last key first: the base read backwards page by page (a page as large as
    /// still wanted or twice the rows this batch's deletions hid in the last one), the pending
    /// writes merged down to the last base row read, so finding the last row before a key reads
    /// a row or so, not the range (the trait's default reads it all forward).
    pub fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut end = range.end.clone();
        let mut hidden = 0usize;
        while out.len() < limit {
            let window = KeyRange {
                start: range.start.clone(),
                end: end.clone(),
            };
            let page = (limit - out.len()).max(hidden.saturating_mul(2));
            let base = self.base.scan_reverse(table, &window, page)?;
            // Pending writes are merged down to the last (lowest) base row read; past the
            // base's start, all.
            let downto = (base.len() == page)
                .then(|| base.last().map(|(k, _)| k.clone()))
                .flatten();
            let pending = self
                .writes
                .range_back(table, &window)
                .take_while(|(k, _)| downto.as_deref().is_none_or(|d| *k >= d));
            let merged = overlay(base, pending, &mut hidden);
            out.extend(
                merged
                    .into_iter()
                    .rev()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .take(limit - out.len()),
            );
            let Some(lowest) = downto else {
                break;
            };
            end = Some(lowest);
        }
        Ok(out)
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes.put(table, key, value);
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.writes.delete(table, key);
    }

    /// See [`WriteSet::append`].
    pub fn append(&mut self, table: Table, key: Vec<u8>, bytes: &[u8]) {
        self.writes.append(table, key, bytes);
    }
}

/// A view is itself readable, so an operation can stage its writes over it and keep them only if
/// it succeeds (a refusal, or a failed linked chain, changes nothing).
impl<S: StoreRead> StoreRead for View<'_, S> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        View::get(self, table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        View::scan(self, table, range, limit)
    }

    fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        View::scan_reverse(self, table, range, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;
    use crate::state::model::MemStore;

    /// A store that counts the rows its scans return.
    struct Counted {
        inner: MemStore,
        rows_read: Cell<usize>,
    }

    impl StoreRead for Counted {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(table, key)
        }

        fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            let rows = self.inner.scan(table, range, limit)?;
            self.rows_read.set(self.rows_read.get() + rows.len());
            Ok(rows)
        }

        fn scan_reverse(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            let rows = self.inner.scan_reverse(table, range, limit)?;
            self.rows_read.set(self.rows_read.get() + rows.len());
            Ok(rows)
        }
    }

    fn store_of(keys: impl IntoIterator<Item = u16>) -> Counted {
        let mut writes = WriteSet::default();
        for k in keys {
            writes.put(Table::Kv, k.to_be_bytes().to_vec(), vec![1; 8]);
        }
        let mut inner = MemStore::default();
        inner.commit(&writes);
        Counted {
            inner,
            rows_read: Cell::new(0),
        }
    }

    #[test]
    fn rows_this_batch_deleted_past_what_a_scan_wants_are_not_read() {
        // A purge in the same batch deleted rows 500..1000; a scan for 16 rows from the start
        // reads 16 base rows, not 16 plus every deleted row of the range.
        let store = store_of(0..1000);
        let mut writes = WriteSet::default();
        for k in 500..1000u16 {
            writes.delete(Table::Kv, k.to_be_bytes().to_vec());
        }
        let view = View {
            base: &store,
            writes: &mut writes,
        };
        let rows = view.scan(Table::Kv, &KeyRange::all(), 16).expect("scan");
        assert_eq!(rows.len(), 16);
        assert_eq!(store.rows_read.get(), 16);
        // One row hidden among the first 16: the next page is two rows, not another 16.
        writes.delete(Table::Kv, 5u16.to_be_bytes().to_vec());
        let view = View {
            base: &store,
            writes: &mut writes,
        };
        store.rows_read.set(0);
        assert_eq!(view.scan(Table::Kv, &KeyRange::all(), 16).expect("scan").len(), 16);
        assert_eq!(store.rows_read.get(), 18);
        // Rows hidden where the scan starts are read past, in growing pages.
        store.rows_read.set(0);
        let from_deleted = KeyRange::all_from(490u16.to_be_bytes().to_vec());
        let rows = view.scan(Table::Kv, &from_deleted, 16).expect("scan");
        assert_eq!(rows.len(), 10);
        assert!(store.rows_read.get() <= 510 + 2 * 512, "read {}", store.rows_read.get());
    }

    #[test]
    fn a_reverse_scan_reads_back_from_its_end_not_the_whole_range() {
        let store = store_of(0..1000);
        let mut writes = WriteSet::default();
        // This batch deleted rows 990..1000 and put 2000.
        for k in 990..1000u16 {
            writes.delete(Table::Kv, k.to_be_bytes().to_vec());
        }
        writes.put(Table::Kv, 2000u16.to_be_bytes().to_vec(), vec![3]);
        let view = View {
            base: &store,
            writes: &mut writes,
        };
        let last_before = |end: u16| {
            let range = KeyRange::between(Vec::new(), end.to_be_bytes().to_vec());
            view.scan_reverse(Table::Kv, &range, 1).expect("scan")
        };
        assert_eq!(last_before(500)[0].0, 499u16.to_be_bytes().to_vec());
        assert_eq!(store.rows_read.get(), 1, "one row read, not 500");
        assert_eq!(last_before(3000)[0].0, 2000u16.to_be_bytes().to_vec(), "a pending put");
        store.rows_read.set(0);
        assert_eq!(
            last_before(1000)[0].0,
            989u16.to_be_bytes().to_vec(),
            "past pending deletes"
        );
        assert!(store.rows_read.get() <= 32, "read {}", store.rows_read.get());
        // Pending writes far below the end: a short reverse scan stops above them.
        let mut many = WriteSet::default();
        for k in 0..500u16 {
            many.delete(Table::Kv, k.to_be_bytes().to_vec());
        }
        let below_800 = KeyRange::between(Vec::new(), 800u16.to_be_bytes().to_vec());
        assert_eq!(many.range_back(Table::Kv, &below_800).count(), 500);
        assert_eq!(
            many.range_back(Table::Kv, &below_800).next().map(|(k, _)| k.to_vec()),
            Some(499u16.to_be_bytes().to_vec()),
            "last key first"
        );
        let view = View {
            base: &store,
            writes: &mut many,
        };
        let found = view.scan_reverse(Table::Kv, &below_800, 1).expect("scan");
        assert_eq!(found[0].0, 799u16.to_be_bytes().to_vec());
        let empty = KeyRange::between(9u16.to_be_bytes().to_vec(), 3u16.to_be_bytes().to_vec());
        assert!(view.scan_reverse(Table::Kv, &empty, 5).expect("scan").is_empty());
    }

    proptest! {
        /// A scan through the view, either way, equals one of the store the batch's writes would
        /// leave.
        #[test]
        fn a_view_scans_what_the_committed_batch_would_hold(
            base in proptest::collection::btree_set(0u16..64, 0..40),
            writes in proptest::collection::vec((0u16..64, any::<bool>()), 0..40),
            start in 0u16..64,
            end in proptest::option::of(0u16..70),
            limit in 0usize..20,
        ) {
            let store = store_of(base);
            let mut batch = WriteSet::default();
            for (k, put) in &writes {
                match put {
                    true => batch.put(Table::Kv, k.to_be_bytes().to_vec(), vec![2; 4]),
                    false => batch.delete(Table::Kv, k.to_be_bytes().to_vec()),
                }
                // Writes of the tables before and after, which a scan of `Kv` never sees.
                batch.put(Table::Meta, k.to_be_bytes().to_vec(), vec![5]);
                batch.put(Table::KvExpiry, k.to_be_bytes().to_vec(), vec![6]);
            }
            let mut after = store.inner.clone();
            after.commit(&batch);
            let range = KeyRange {
                start: start.to_be_bytes().to_vec(),
                end: end.map(|e| e.to_be_bytes().to_vec()),
            };
            let view = View { base: &store, writes: &mut batch };
            prop_assert_eq!(view.scan(Table::Kv, &range, limit)?, after.scan(Table::Kv, &range, limit)?);
            prop_assert_eq!(
                view.scan_reverse(Table::Kv, &range, limit)?,
                after.scan_reverse(Table::Kv, &range, limit)?
            );
        }
    }
}
