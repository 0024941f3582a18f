//! A write-through cache of hot records for the apply path.
//!
//! Apply reads the record it is about to change on every KV put, counter change and ledger
//! transfer; in RocksDB each such read searches the memtable skiplists (~10% of a leader's CPU
//! under KV load). The state machine applies one batch at a time and commits it before the
//! next, so a cache that is filled only by apply's own reads and updated by every commit always
//! holds committed state: nothing else writes the store except a snapshot install, which clears
//! it. Reads served outside apply (client gets after a read-index check) do not use it, so no
//! reader can put an old value back after a commit.

use std::collections::HashMap;

use super::Table;

/// Tables whose records apply reads by key before writing them.
const CACHED_TABLES: [Table; 3] = [Table::Kv, Table::Counter, Table::LedgerAccount];

/// Most records kept; past it the cache starts over (cheaper than tracking recency, and a hot
/// set comes back within a batch or two).
pub const RECORDS_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub struct RecordCache {
    /// Per table, so a lookup borrows the key instead of copying it. `None`: known to be absent.
    records: HashMap<Table, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    len: usize,
}

impl RecordCache {
    pub fn caches(table: Table) -> bool {
        CACHED_TABLES.contains(&table)
    }

    /// What the cache knows of `key`: `None` when it does not know.
    pub fn get(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.records.get(&table)?.get(key).cloned()
    }

    /// Records what the store holds for `key` (after a read, or a committed write).
    pub fn insert(&mut self, table: Table, key: &[u8], value: Option<&[u8]>) {
        if !Self::caches(table) {
            return;
        }
        let value = value.map(<[u8]>::to_vec);
        if let Some(known) = self.records.get_mut(&table).and_then(|records| records.get_mut(key)) {
            *known = value;
            return;
        }
        if self.len >= RECORDS_MAX {
            self.clear();
        }
        self.records.entry(table).or_default().insert(key.to_vec(), value);
        self.len += 1;
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_read_before_write_tables_are_cached() {
        let mut cache = RecordCache::default();
        cache.insert(Table::Kv, b"k", Some(b"v"));
        cache.insert(Table::KvHistory, b"h", Some(b"v"));
        assert_eq!(cache.get(Table::Kv, b"k"), Some(Some(b"v".to_vec())));
        assert_eq!(cache.get(Table::KvHistory, b"h"), None);
        cache.insert(Table::Kv, b"k", None);
        assert_eq!(
            cache.get(Table::Kv, b"k"),
            Some(None),
            "a delete is remembered as absent"
        );
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let mut cache = RecordCache::default();
        for i in 0..RECORDS_MAX {
            cache.insert(Table::Counter, &(i as u64).to_be_bytes(), Some(b"1"));
        }
        assert_eq!(cache.len(), RECORDS_MAX);
        cache.insert(Table::Counter, &0u64.to_be_bytes(), Some(b"2"));
        assert_eq!(cache.len(), RECORDS_MAX, "updating a known key keeps the rest");
        cache.insert(Table::Counter, b"new", Some(b"3"));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(Table::Counter, b"new"), Some(Some(b"3".to_vec())));
    }
}
