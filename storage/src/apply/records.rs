//! What every data type's apply and read share: stored records encoded and decoded
//! (`basalt-codec`; an undecodable one is corruption naming its table and key), names as key
//! prefixes, and the errors they raise.

use super::View;
use crate::command::OpError;
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// A queue, topic or group name as a key prefix: its length (one byte), then the name, so no
/// name's keys are a prefix of another name's.
pub(crate) fn named(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 17);
    k.push(name.len().min(u8::MAX as usize) as u8);
    k.extend_from_slice(name);
    k
}

/// The name a [`named`] key starts with.
pub(crate) fn name_in_key(key: &[u8]) -> Option<&[u8]> {
    let (&len, rest) = key.split_first()?;
    rest.get(..usize::from(len))
}

/// A parameter outside its range.
pub(crate) fn out_of_range(what: &'static str, expected: impl Into<String>, got: impl ToString) -> OpError {
    OpError::OutOfRange {
        what: what.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// Decodes a record (basalt-codec) read from `table`; an undecodable one is a corrupt record.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    basalt_codec::decode(bytes).map_err(|e| corrupt(table, key, e))
}

pub(crate) fn corrupt(table: Table, key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptRecord {
        table,
        key: format!("{key:02x?}"),
        reason: e.to_string(),
    }
}

/// Reads and decodes a record (basalt-codec); an undecodable one is a [`StoreError::CorruptRecord`].
pub(crate) fn load<S: StoreRead + ?Sized, T: serde::de::DeserializeOwned>(
    store: &S,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(bytes) => decode(table, key, &bytes).map(Some),
    }
}

pub(crate) fn save<S: StoreRead, T: serde::Serialize>(view: &mut View<'_, S>, table: Table, key: Vec<u8>, value: &T) {
    view.put(table, key, basalt_codec::encode(value));
}

pub(crate) fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// A page of a table keyed by [`named`] names: `(name, record)` pairs and whether more follow.
pub type NamedPage<T> = (Vec<(Vec<u8>, T)>, bool);

/// Up to `limit` (clamped to `1..=max`) records of `table`, keyed by [`named`] names, whose keys
/// come after `after`'s (names are stored behind their length, so shorter names come first),
/// with whether more follow. The one paging rule of every list (queues, topics).
pub(crate) fn list_named<S: StoreRead + ?Sized, T: serde::de::DeserializeOwned>(
    store: &S,
    table: Table,
    after: &[u8],
    limit: u32,
    max: u32,
) -> Result<NamedPage<T>, StoreError> {
    let limit = limit.clamp(1, max) as usize;
    let start = match after.is_empty() {
        true => Vec::new(),
        false => {
            let mut start = named(after);
            start.push(0);
            start
        }
    };
    let rows = store.scan(table, &KeyRange::all_from(start), limit + 1)?;
    let more = rows.len() > limit;
    let page = rows
        .into_iter()
        .take(limit)
        .map(|(key, bytes)| Ok((key.get(1..).unwrap_or_default().to_vec(), decode(table, &key, &bytes)?)))
        .collect::<Result<_, StoreError>>()?;
    Ok((page, more))
}

/// What one entry may still remove of a deletion (a topic's rows, a queue's): rows, and bytes of
/// the values read to remove them.
pub(crate) struct DeleteBudget {
    pub(crate) rows: u32,
    pub(crate) bytes: u64,
    /// The rows it started with.
    granted_rows: u32,
}

impl DeleteBudget {
    pub(crate) fn new(rows: u32, bytes: u64) -> DeleteBudget {
        DeleteBudget {
            rows,
            bytes,
            granted_rows: rows,
        }
    }

    pub(crate) fn spent(&self) -> bool {
        self.rows == 0 || self.bytes == 0
    }

    /// Whether a removal that costs `rows_each` rows still fits: it does while the rows left
    /// cover it, and always for the entry's first removal, so a deletion always progresses.
    fn fits(&self, rows_each: u32) -> bool {
        !self.spent() && (self.rows >= rows_each || self.rows == self.granted_rows)
    }

    /// Rows spent so far.
    pub(crate) fn used(&self) -> u32 {
        self.granted_rows.saturating_sub(self.rows)
    }
}

/// Where a deletion that runs over several entries stands: the step it is at (an index into its
/// own list of tables) and the last key that step removed, so the next entry's scan starts after
/// it and never walks again over the rows (tombstones) removed before.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeletionCursor {
    pub(crate) step: u8,
    pub(crate) after: Option<Vec<u8>>,
}

impl DeletionCursor {
    /// Goes to the next step, from its first key.
    pub(crate) fn next_step(&mut self) {
        self.step = self.step.saturating_add(1);
        self.after = None;
    }
}

/// Goes on with the deletions pending in `table` (one row each, keyed by the name being
/// deleted) within `budget`, taking turns: it starts at the row the last entry's turn key
/// (`Meta`, `turn_key`) names and wraps around, looking at up to `per_entry_max` of them, so
/// several deletions progress in turn and a small one does not wait behind a large one.
/// `go_on` works on one deletion (its key, the name it deletes, its saved progress) and answers
/// whether it is finished, saving its own progress when it is not; a finished deletion's row is
/// removed, as is a row whose key names nothing (it has nothing to remove, or it would be due
/// forever). A
/// deletion left unfinished stopped at the budget and ends the entry; the next entry starts after
/// it. Every step is decided from the view, so every replica takes the same turns.
pub(crate) fn continue_in_turn<S: StoreRead>(
    view: &mut View<'_, S>,
    table: Table,
    turn_key: &[u8],
    per_entry_max: usize,
    budget: &mut DeleteBudget,
    mut go_on: impl FnMut(&mut View<'_, S>, &[u8], &[u8], &[u8], &mut DeleteBudget) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let turn = view.get(Table::Meta, turn_key)?.unwrap_or_default();
    let mut pending = view.scan(table, &KeyRange::all_from(turn.clone()), per_entry_max)?;
    if pending.len() < per_entry_max && !turn.is_empty() {
        let wrapped = view.scan(
            table,
            &KeyRange::between(Vec::new(), turn),
            per_entry_max - pending.len(),
        )?;
        pending.extend(wrapped);
    }
    let looked_at = pending.len();
    let mut next_turn = None;
    let mut stopped = false;
    for (key, bytes) in pending {
        let finished = match name_in_key(&key).map(<[u8]>::to_vec) {
            Some(name) => go_on(view, &key, &name, &bytes, budget)?,
            None => true,
        };
        let mut after = key.clone();
        after.push(0);
        next_turn = Some(after);
        if finished {
            view.delete(table, key);
        }
        if !finished || budget.spent() {
            stopped = true;
            break;
        }
    }
    // Every pending deletion was looked at within the budget: the next entry starts at the first.
    match next_turn {
        Some(turn) if stopped || looked_at == per_entry_max => view.put(Table::Meta, turn_key.to_vec(), turn),
        _ => view.delete(Table::Meta, turn_key.to_vec()),
    }
    Ok(())
}

/// Removes the rows of `table` whose keys start with `prefix` and come after `after` (from the
/// first when `None`), in key order, `page_rows` per scan, within `budget`, charging
/// `rows_each` rows per removal (a row and the rows `also` removes with it); `also` sees each
/// removed row first. `after` is moved past every removed row. At least one row goes, whatever
/// its size, so a deletion always progresses. Answers whether none is left.
#[allow(clippy::too_many_arguments)]
pub(crate) fn remove_prefixed<S: StoreRead>(
    view: &mut View<'_, S>,
    table: Table,
    prefix: &[u8],
    after: &mut Option<Vec<u8>>,
    page_rows: u32,
    rows_each: u32,
    budget: &mut DeleteBudget,
    mut also: impl FnMut(&mut View<'_, S>, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    loop {
        if !budget.fits(rows_each) {
            return Ok(false);
        }
        let from = match after {
            None => prefix.to_vec(),
            Some(last) => {
                let mut from = last.clone();
                from.push(0);
                from
            }
        };
        let want = (budget.rows / rows_each.max(1)).clamp(1, page_rows.max(1));
        let page = view.scan(table, &KeyRange::prefix_from(prefix, from), want as usize)?;
        if page.is_empty() {
            return Ok(true);
        }
        for (key, value) in page {
            if !budget.fits(rows_each) {
                return Ok(false);
            }
            budget.rows = budget.rows.saturating_sub(rows_each.max(1));
            budget.bytes = budget.bytes.saturating_sub(value.len() as u64);
            also(view, &key, &value)?;
            view.delete(table, key.clone());
            *after = Some(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::WriteSet;
    use crate::state::model::MemStore;

    fn five_rows() -> MemStore {
        let mut writes = WriteSet::default();
        for k in 0..5u8 {
            writes.put(Table::QueueDedup, vec![1, b'q', k], vec![k]);
        }
        let mut store = MemStore::default();
        store.commit(&writes);
        store
    }

    #[test]
    fn a_removal_that_costs_more_rows_than_are_left_waits_for_the_next_entry() {
        let store = five_rows();
        let mut writes = WriteSet::default();
        let mut view = View {
            base: &store,
            writes: &mut writes,
        };
        // Removes rows two at a time within `budget`; answers whether none is left.
        let remove = |view: &mut View<'_, MemStore>, after: &mut Option<Vec<u8>>, budget: &mut DeleteBudget| {
            remove_prefixed(view, Table::QueueDedup, &[1, b'q'], after, 16, 2, budget, |_, _, _| {
                Ok(())
            })
            .expect("remove")
        };
        // Three rows, two per removal: one removal, then the row left does not cover another.
        let mut after = None;
        let mut budget = DeleteBudget::new(3, u64::MAX);
        assert!(!remove(&mut view, &mut after, &mut budget));
        assert_eq!(budget.used(), 2);
        assert_eq!(after, Some(vec![1, b'q', 0]));
        // The cursor goes on from there; one row granted still removes one, so it progresses.
        let mut budget = DeleteBudget::new(1, u64::MAX);
        assert!(!remove(&mut view, &mut after, &mut budget));
        assert_eq!(after, Some(vec![1, b'q', 1]));
        let left = view.scan(Table::QueueDedup, &KeyRange::all(), 10).expect("scan");
        assert_eq!(left.len(), 3);
    }
}
