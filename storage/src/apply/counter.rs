//! Counter apply: signed 64-bit counters with optional bounds; a change that would cross a bound
//! or overflow is refused and changes nothing.

//!
//! A counter is stored as a PN-counter (one component per region), so that regions can change it
//! while partitioned and still agree once they merge. Its value is the sum of the components,
//! clamped to the i64 range (only merged concurrent changes can take it outside).

use basalt_replication::{PnCounter, RegionId};

use super::{check_key, lossy, View};
use crate::command::{CounterAction, CounterOp, CounterOutcome, OpError, Response};
use crate::state::{StoreError, StoreRead, Table};

pub fn decode_pn(bytes: &[u8]) -> Result<PnCounter, bincode::Error> {
    bincode::deserialize(bytes)
}

pub fn encode_pn(counter: &PnCounter) -> Vec<u8> {
    bincode::serialize(counter).expect("counters serialize")
}

/// The value of a stored counter.
pub fn decode_counter(bytes: &[u8]) -> Option<i64> {
    decode_pn(bytes).ok().map(|c| value_of(&c))
}

pub fn value_of(counter: &PnCounter) -> i64 {
    counter.value().clamp(i64::MIN.into(), i64::MAX.into()) as i64
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

pub(crate) fn apply<S: StoreRead>(
    view: &mut View<'_, S>,
    region: RegionId,
    ops: &[CounterOp],
) -> Result<Response, StoreError> {
    if let Err(e) = validate(ops) {
        return Ok(Response::Refused(e));
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let mut counter = match view.get(Table::Counter, &op.key)? {
            None => PnCounter::default(),
            Some(bytes) => match decode_pn(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Response::Refused(OpError::CorruptValue {
                        key: lossy(&op.key),
                        reason: format!("counter of {} bytes: {e}", bytes.len()),
                    }))
                }
            },
        };
        let current = value_of(&counter);
        let outcome = decide(current, op.action);
        if let CounterOutcome::Applied { value } = outcome {
            // A set is the change that reaches `value` from what this region sees now; changes
            // made concurrently in other regions still add to it once merged.
            counter.add(region, i128::from(value) - counter.value());
            view.put(Table::Counter, op.key.clone(), encode_pn(&counter));
        }
        outcomes.push(outcome);
    }
    Ok(Response::Counters(outcomes))
}
