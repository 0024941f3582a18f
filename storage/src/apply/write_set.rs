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
}

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
    pub fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        // Over-read the base by the number of pending writes so the merge still yields `limit`.
        let pending: Vec<_> = self
            .writes
            .range_from(table, &range.start)
            .take_while(|(k, _)| range.contains(k))
            .collect();
        let base = self.base.scan(table, range, limit.saturating_add(pending.len()))?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in pending {
            merged.insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
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
}
