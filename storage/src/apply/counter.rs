//! Counter apply: signed 64-bit counters with optional bounds; a change that would cross a bound
//! or overflow is refused and changes nothing.

//!
//! A counter is stored as a PN-counter (one component per region), so that regions can change it
//! while partitioned and still agree once they merge. Its value is the sum of the components,
//! clamped to the i64 range (only merged concurrent changes can take it outside).

use basalt_replication::{EscrowBound, EscrowTransfers, PnCounter};

use super::topology::{load_topology, EscrowShare};
use super::{check_key, decode, lossy, save, RegionRole, View};
use crate::command::{CounterAction, CounterError, CounterOp, CounterOutcome, OpError, Response};
use crate::state::{StoreError, StoreRead, Table, ViewSource};

pub fn decode_pn(bytes: &[u8]) -> Result<PnCounter, basalt_codec::DecodeError> {
    basalt_codec::decode(bytes)
}

pub fn encode_pn(counter: &PnCounter) -> Vec<u8> {
    basalt_codec::encode(counter)
}

/// The value of a stored counter.
pub fn decode_counter(bytes: &[u8]) -> Option<i64> {
    decode_pn(bytes).ok().map(|c| value_of(&c))
}

/// The values of `keys` (0 for a counter never written), all from one view, so a multi-key read
/// sees every counter as of the same applied entry: the read behind `counter get`. A stored
/// counter that does not decode is a [`StoreError::CorruptRecord`] naming its key.
pub fn get_values<S: ViewSource + ?Sized>(source: &S, keys: &[Vec<u8>]) -> Result<Vec<i64>, StoreError> {
    let view = source.view();
    keys.iter()
        .map(|key| {
            Ok(match view.get(Table::Counter, key)? {
                None => 0,
                Some(bytes) => value_of(&decode::<PnCounter>(Table::Counter, key, &bytes)?),
            })
        })
        .collect()
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
        if let CounterAction::Window {
            window_ms,
            retention_ms,
            ..
        } = op.action
        {
            super::counter_window::check_window(window_ms, retention_ms)?;
        }
        if let CounterAction::Transfer { amount, min, max, .. } = op.action {
            if amount == 0 {
                return Err(OpError::OutOfRange {
                    what: "escrow transfer amount".into(),
                    expected: ">= 1".into(),
                    got: "0".into(),
                });
            }
            if min.is_some() && max.is_some() {
                return Err(OpError::OutOfRange {
                    what: "escrow transfer bounds".into(),
                    expected: "min or max (one bound's escrow per transfer)".into(),
                    got: "both".into(),
                });
            }
        }
    }
    Ok(())
}

/// Whether a region may add `delta` to a counter bounded by `min`/`max`, given its balances
/// toward each bound (`floor`, `ceiling`) and its stored `share` of every bound: a change toward a
/// bound must keep the region's balance on its side of its share of it. Changes away from a bound
/// never need escrow. The refusal names the bound and the balance toward it.
pub fn escrow_allows(
    floor: i128,
    ceiling: i128,
    delta: i64,
    min: Option<i64>,
    max: Option<i64>,
    share: EscrowShare,
) -> Result<(), (EscrowBound, i128)> {
    let delta = i128::from(delta);
    match (min, max) {
        (Some(min), _) if delta < 0 && floor + delta < share.of_bound(min, EscrowBound::Floor) => {
            Err((EscrowBound::Floor, floor))
        }
        (_, Some(max)) if delta > 0 && ceiling + delta > share.of_bound(max, EscrowBound::Ceiling) => {
            Err((EscrowBound::Ceiling, ceiling))
        }
        _ => Ok(()),
    }
}

/// The outcome of `action` on a counter whose value is `current`: pure, so the bound rules are
/// tested on their own.
pub fn decide(current: i64, action: CounterAction) -> CounterOutcome {
    match action {
        CounterAction::Set { value } => CounterOutcome::Applied { value },
        CounterAction::Delete => CounterOutcome::Applied { value: 0 },
        // Moves escrow, not value; decided by `apply` from the escrow state. A windowed change
        // changes a bucket, not this counter; decided by `counter_window::incr`.
        CounterAction::Transfer { .. } | CounterAction::Window { .. } => CounterOutcome::Applied { value: current },
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
    role: RegionRole,
    now_ms: u64,
    ops: &[CounterOp],
) -> Result<Response, StoreError> {
    if let Err(e) = validate(ops) {
        return Ok(Response::Refused(e));
    }
    // Escrow is kept only in a region among several: a lone region's bound is its own.
    let escrowed = role.replicated;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        if let CounterAction::Window {
            delta,
            window_ms,
            retention_ms,
            at_ms,
        } = op.action
        {
            let at_ms = at_ms.unwrap_or(now_ms);
            match super::counter_window::incr(view, role.id, now_ms, &op.key, delta, window_ms, retention_ms, at_ms)? {
                Ok(outcome) => outcomes.push(outcome),
                Err(refusal) => return Ok(Response::Refused(refusal)),
            }
            continue;
        }
        // Alone, a delete removes the rows. Among regions it is a reset (below): the row keeps
        // every region's component, so one merged later cannot bring the old value back.
        if op.action == CounterAction::Delete && !role.replicated {
            view.delete(Table::Counter, op.key.clone());
            view.delete(Table::CounterEscrow, op.key.clone());
            outcomes.push(CounterOutcome::Applied { value: 0 });
            continue;
        }
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
        let escrow: EscrowTransfers = match view.get(Table::CounterEscrow, &op.key)? {
            None => EscrowTransfers::default(),
            Some(bytes) => decode(Table::CounterEscrow, &op.key, &bytes)?,
        };
        let floor = escrow.balance(&counter, role.id, EscrowBound::Floor);
        let ceiling = escrow.balance(&counter, role.id, EscrowBound::Ceiling);
        let clamp = |b: i128| b.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        if let CounterAction::Transfer { to, amount, min, max } = op.action {
            let known = match escrowed {
                true => load_topology(&*view)?.is_some_and(|t| t.regions.contains_key(&to)),
                false => false,
            };
            if !escrowed || to == role.id || !known {
                return Ok(Response::Refused(OpError::Counter(CounterError::InvalidTransfer {
                    reason: if !escrowed {
                        "escrow moves between regions, and this one replicates with none".into()
                    } else if to == role.id {
                        format!("region {to} is this region")
                    } else {
                        format!("region {to} is not in this region's topology (`basalt regions add` it first)")
                    },
                })));
            }
            // Giving room toward a bound spends it as a change toward that bound would.
            let amount_i64 = i64::try_from(amount).unwrap_or(i64::MAX);
            let (kind, check) = match max {
                Some(max) => (
                    EscrowBound::Ceiling,
                    escrow_allows(floor, ceiling, amount_i64, None, Some(max), role.escrow),
                ),
                None => (
                    EscrowBound::Floor,
                    escrow_allows(floor, ceiling, -amount_i64, Some(min.unwrap_or(0)), None, role.escrow),
                ),
            };
            if let Err((_, balance)) = check {
                outcomes.push(CounterOutcome::EscrowExceeded {
                    value: current,
                    balance: clamp(balance),
                });
                continue;
            }
            let mut escrow = escrow;
            let total = escrow.given(kind, role.id, to).saturating_add(u128::from(amount));
            escrow.merge_pair(kind, role.id, to, total);
            save(view, Table::CounterEscrow, op.key.clone(), &escrow);
            outcomes.push(CounterOutcome::Applied { value: current });
            continue;
        }
        let mut outcome = decide(current, op.action);
        if let (CounterOutcome::Applied { .. }, CounterAction::Incr { delta, min, max }) = (outcome, op.action) {
            if escrowed {
                if let Err((_, balance)) = escrow_allows(floor, ceiling, delta, min, max, role.escrow) {
                    outcome = CounterOutcome::EscrowExceeded {
                        value: current,
                        balance: clamp(balance),
                    };
                }
            }
        }
        if let CounterOutcome::Applied { value } = outcome {
            // A set is the change that reaches `value` from what this region sees now; changes
            // made concurrently in other regions still add to it once merged.
            counter.add(role.id, i128::from(value) - counter.value());
            view.put(Table::Counter, op.key.clone(), encode_pn(&counter));
        }
        outcomes.push(outcome);
    }
    Ok(Response::Counters(outcomes))
}
