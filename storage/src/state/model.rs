//! An in-memory store: the reference model the apply logic is tested against.

use std::collections::BTreeMap;

use super::{KeyRange, KeyValue, StoreError, StoreRead, Table};
use crate::apply::WriteSet;

#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct MemStore {
    pub tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    pub fn commit(&mut self, writes: &WriteSet) {
        for (table, key, value) in writes.iter() {
            let t = self.tables.entry(table).or_default();
            match value {
                Some(v) => {
                    t.insert(key.to_vec(), v.to_vec());
                }
                None => {
                    t.remove(key);
                }
            }
        }
    }
}

impl StoreRead for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .tables
            .get(&table)
            .map(|t| {
                t.range(range.start.clone()..)
                    .take_while(|(k, _)| range.contains(k))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A view of the model is the model itself: it changes only through `commit`, which needs it
/// mutably, so nothing can change under a view.
impl super::ViewSource for MemStore {
    type View<'a> = MemView<'a>;

    fn view(&self) -> MemView<'_> {
        MemView(self)
    }
}

/// The model, read through [`super::ViewSource`].
pub struct MemView<'a>(&'a MemStore);

impl StoreRead for MemView<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.0.scan(table, range, limit)
    }
}
