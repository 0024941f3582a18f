//! Counter apply: signed 64-bit counters with optional bounds; a change that would cross a bound
//! or overflow is refused and changes nothing.

//!
//! A counter is stored as a PN-counter (one component per region), so that regions can change it
//! while partitioned and still agree once they merge. Its value is the sum of the components,
//! clamped to the i64 range (only merged concurrent changes can take it outside).

use basalt_replication::{EscrowTransfers, PnCounter};

use super::{check_key, decode, lossy, save, RegionRole, View};
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
        if let CounterAction::Transfer { amount: 0, .. } = op.action {
            return Err(OpError::OutOfRange {
                what: "escrow transfer amount".into(),
                expected: ">= 1".into(),
                got: "0".into(),
            });
        }
    }
    Ok(())
}

/// A region's share of a lower bound `min` among `regions`: rounded up, so the shares sum to at
/// least `min`.
pub fn escrow_share(min: i64, regions: u16) -> i128 {
    let k = i128::from(regions.max(1));
    -((-i128::from(min)).div_euclid(k))
}

/// Whether a region whose escrow balance is `balance` may add `delta` under the lower bound
/// `min`: a change toward the bound must keep the balance at or above the region's share of it.
/// Changes away from the bound, and changes without one, never need escrow.
pub fn escrow_allows(balance: i128, delta: i64, min: Option<i64>, regions: u16) -> bool {
    match min {
        Some(min) if delta < 0 => balance.saturating_add(i128::from(delta)) >= escrow_share(min, regions),
        _ => true,
    }
}

/// The outcome of `action` on a counter whose value is `current`: pure, so the bound rules are
/// tested on their own.
pub fn decide(current: i64, action: CounterAction) -> CounterOutcome {
    match action {
        CounterAction::Set { value } => CounterOutcome::Applied { value },
        // Moves escrow, not value; decided by `apply` from the escrow state.
        CounterAction::Transfer { .. } => CounterOutcome::Applied { value: current },
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
    ops: &[CounterOp],
) -> Result<Response, StoreError> {
    if let Err(e) = validate(ops) {
        return Ok(Response::Refused(e));
    }
    // Escrow is kept only when other regions can change the counter concurrently.
    let regions = if role.replicated {
        role.remotes.saturating_add(1)
    } else {
        1
    };
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
        let escrow: EscrowTransfers = match view.get(Table::CounterEscrow, &op.key)? {
            None => EscrowTransfers::default(),
            Some(bytes) => decode(Table::CounterEscrow, &op.key, &bytes)?,
        };
        let balance = escrow.local_balance(&counter, role.id);
        let clamp = |b: i128| b.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        if let CounterAction::Transfer { to, amount, min } = op.action {
            if regions == 1 || to == role.id {
                return Ok(Response::Refused(OpError::InvalidTransfer {
                    reason: if regions == 1 {
                        "escrow moves between regions, and this one replicates with none".into()
                    } else {
                        format!("region {to} is this region")
                    },
                }));
            }
            if !escrow_allows(
                balance,
                i64::try_from(amount).unwrap_or(i64::MAX).saturating_neg(),
                Some(min.unwrap_or(0)),
                regions,
            ) {
                outcomes.push(CounterOutcome::EscrowExceeded {
                    value: current,
                    balance: clamp(balance),
                });
                continue;
            }
            let mut escrow = escrow;
            let total = escrow.given(role.id, to).saturating_add(u128::from(amount));
            escrow.merge_pair(role.id, to, total);
            save(view, Table::CounterEscrow, op.key.clone(), &escrow);
            outcomes.push(CounterOutcome::Applied { value: current });
            continue;
        }
        let mut outcome = decide(current, op.action);
        if let (CounterOutcome::Applied { .. }, CounterAction::Incr { delta, min, .. }) = (outcome, op.action) {
            if regions > 1 && !escrow_allows(balance, delta, min, regions) {
                outcome = CounterOutcome::EscrowExceeded {
                    value: current,
                    balance: clamp(balance),
                };
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
