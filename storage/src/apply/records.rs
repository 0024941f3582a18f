//! What every data type's apply and read share: stored records encoded and decoded
//! (`basalt-codec`; an undecodable one is corruption naming its table and key), names as key
//! prefixes, and the errors they raise.

use super::View;
use crate::command::OpError;
use crate::state::{StoreError, StoreRead, Table};

/// A queue, topic or group name as a key prefix: its length (one byte), then the name, so no
/// name's keys are a prefix of another name's.
pub(crate) fn named(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 17);
    k.push(name.len().min(u8::MAX as usize) as u8);
    k.extend_from_slice(name);
    k
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
