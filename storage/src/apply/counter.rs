//! Counter apply: signed 64-bit counters, overflow refused.

use super::{check_key, lossy, View};
use crate::command::{OpError, Response};
use crate::state::{StoreError, StoreRead, Table};

pub fn decode_counter(bytes: &[u8]) -> Option<i64> {
    bytes.try_into().ok().map(i64::from_le_bytes)
}

pub(crate) fn incr<S: StoreRead>(view: &mut View<'_, S>, key: &[u8], delta: i64) -> Result<Response, StoreError> {
    if let Err(e) = check_key(key) {
        return Ok(Response::Refused(e));
    }
    let current = match view.get(Table::Counter, key)? {
        None => 0,
        Some(bytes) => match decode_counter(&bytes) {
            Some(v) => v,
            None => {
                return Ok(Response::Refused(OpError::CorruptValue {
                    key: lossy(key),
                    reason: format!("counter value of {} bytes", bytes.len()),
                }))
            }
        },
    };
    let Some(value) = current.checked_add(delta) else {
        return Ok(Response::Refused(OpError::CounterOverflow {
            key: lossy(key),
            value: current,
            delta,
        }));
    };
    view.put(Table::Counter, key.to_vec(), value.to_le_bytes().to_vec());
    Ok(Response::Counter { value })
}
