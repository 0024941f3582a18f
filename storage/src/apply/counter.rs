//! Counter apply: signed 64-bit counters with optional bounds; a change that would cross a bound
//! or overflow is refused and changes nothing.

use super::{check_key, lossy, View};
use crate::command::{CounterAction, CounterOp, CounterOutcome, OpError, Response};
use crate::state::{StoreError, StoreRead, Table};

pub fn decode_counter(bytes: &[u8]) -> Option<i64> {
    bytes.try_into().ok().map(i64::from_le_bytes)
}

pub(crate) fn validate(ops: &[CounterOp]) -> Result<(), OpError> {
    super::check_batch(ops.len())?;
    for op in ops {
        check_key(&op.key)?;
        if let CounterAction::Incr {
            min: Some(min),
            max: Some(max),
            ..
        } = op.action
        {
            if min > max {
                return Err(OpError::OutOfRange {
                    what: "counter bounds".into(),
                    expected: "min <= max".into(),
                    got: format!("min {min} > max {max}"),
                });
            }
        }
    }
    Ok(())
}

/// The outcome of `action` on a counter whose value is `current`: pure, so the bound rules are
/// tested on their own.
pub fn decide(current: i64, action: CounterAction) -> CounterOutcome {
    match action {
        CounterAction::Set { value } => CounterOutcome::Applied { value },
        CounterAction::Incr { delta, min, max } => match current.checked_add(delta) {
            None => CounterOutcome::Overflow { value: current },
            Some(next) if min.is_some_and(|m| next < m) || max.is_some_and(|m| next > m) => {
                CounterOutcome::BoundExceeded { value: current }
            }
            Some(next) => CounterOutcome::Applied { value: next },
        },
    }
}

pub(crate) fn apply<S: StoreRead>(view: &mut View<'_, S>, ops: &[CounterOp]) -> Result<Response, StoreError> {
    if let Err(e) = validate(ops) {
        return Ok(Response::Refused(e));
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let current = match view.get(Table::Counter, &op.key)? {
            None => 0,
            Some(bytes) => match decode_counter(&bytes) {
                Some(v) => v,
                None => {
                    return Ok(Response::Refused(OpError::CorruptValue {
                        key: lossy(&op.key),
                        reason: format!("counter value of {} bytes", bytes.len()),
                    }))
                }
            },
        };
        let outcome = decide(current, op.action);
        if let CounterOutcome::Applied { value } = outcome {
            view.put(Table::Counter, op.key.clone(), value.to_le_bytes().to_vec());
        }
        outcomes.push(outcome);
    }
    Ok(Response::Counters(outcomes))
}
