//! Counter apply: signed 64-bit counters with optional bounds; a change that would cross a bound
//! or overflow is refused and changes nothing.

//!
//! A counter is stored as a PN-counter (one component per region), so that regions can change it
//! while partitioned and still agree once they merge. Its value is the sum of the components,
//! clamped to the i64 range (only merged concurrent changes can take it outside).

use basalt_replication::{EscrowBound, EscrowTransfers, PnCounter};

use super::counter_window::{
    remove_incarnations, store_incarnation, unexpired_incarnations, unexpired_incarnations_or_refusal, Incarnation,
};
use super::topology::{load_topology, EscrowShare};
use super::{check_key, decode, last_applied_stamp, lossy, save, RegionRole, View};
use crate::command::{CounterAction, CounterError, CounterOp, CounterOutcome, OpError, Response};
use crate::limits::TTL_MS_MAX;
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

/// A counter as it stands at one applied time: its plain row and the live incarnations of it as
/// an expiring counter (see `counter_window`). Its value is the sum of them all.
///
/// An incarnation is live while it is unexpired and not at 0. A counter at 0 holds no TTL, as an
/// absent counter reads 0: reaching 0 by a change made here (an increment, a set or a delete,
/// each taking every part to 0) ends its expiry, and the next change with a TTL starts a new
/// one. One rule for a lone region and for regions, where a delete cannot remove rows another
/// region still adds to. A total that reaches 0 only by merging other regions' changes keeps its
/// parts, each live until its own expiry (docs/data-types/counter.md).
#[derive(Clone, Debug, Default)]
pub struct CounterState {
    pub plain: PnCounter,
    /// Live incarnations, earliest expiry first.
    pub incarnations: Vec<Incarnation>,
    /// Unexpired incarnations at 0: not live. Kept so that a new incarnation with the same expiry
    /// adds to its row instead of overwriting the components other regions have in it.
    resting: Vec<Incarnation>,
}

impl CounterState {
    /// The state of a counter with `plain` and its unexpired incarnations `unexpired`.
    pub fn new(plain: PnCounter, unexpired: Vec<Incarnation>) -> CounterState {
        let (incarnations, resting) = unexpired.into_iter().partition(|i| i.counter.value() != 0);
        CounterState {
            plain,
            incarnations,
            resting,
        }
    }

    /// The exact sum, which only merged concurrent changes can take outside the i64 range.
    fn total(&self) -> i128 {
        self.incarnations
            .iter()
            .fold(self.plain.value(), |sum, i| sum.saturating_add(i.counter.value()))
    }

    /// The counter's value, clamped to the i64 range.
    pub fn value(&self) -> i64 {
        self.total().clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    /// When the counter expires: its earliest live incarnation's expiry; `None` without a TTL.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.incarnations.first().map(|i| i.expires_at_ms)
    }
}

/// Counter `key` at applied time `now_ms`. A row that does not decode (plain or incarnation) is
/// the refusal naming it, as an op answers it.
pub(crate) fn load_state<R: StoreRead + ?Sized>(
    reads: &R,
    key: &[u8],
    now_ms: u64,
) -> Result<Result<CounterState, OpError>, StoreError> {
    let plain = match reads.get(Table::Counter, key)? {
        None => PnCounter::default(),
        Some(bytes) => match decode_pn(&bytes) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(OpError::CorruptValue {
                    key: lossy(key),
                    reason: format!("counter of {} bytes: {e}", bytes.len()),
                }))
            }
        },
    };
    Ok(unexpired_incarnations_or_refusal(reads, key, now_ms)?.map(|unexpired| CounterState::new(plain, unexpired)))
}

/// The values alone of [`read_counters`].
pub fn get_values<S: ViewSource + ?Sized>(source: &S, keys: &[Vec<u8>]) -> Result<Vec<i64>, StoreError> {
    Ok(read_counters(source, keys)?.0.iter().map(|read| read.value).collect())
}

/// What `counter get` answers for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRead {
    /// 0 for a counter never written or expired.
    pub value: i64,
    /// When it expires, for an expiring counter.
    pub expires_at_ms: Option<u64>,
}

/// The counters `keys` (0 for a counter never written), all from one view, so a multi-key read
/// sees every counter as of the same applied entry, with expiry judged at that entry's time (the
/// returned ms): the read behind `counter get`. A stored counter that does not decode is a
/// [`StoreError::CorruptRecord`] naming its key.
pub fn read_counters<S: ViewSource + ?Sized>(
    source: &S,
    keys: &[Vec<u8>],
) -> Result<(Vec<CounterRead>, u64), StoreError> {
    let view = source.view();
    let judged_at_ms = last_applied_stamp(&view)?.physical_ms();
    let reads = keys
        .iter()
        .map(|key| {
            let plain = match view.get(Table::Counter, key)? {
                None => PnCounter::default(),
                Some(bytes) => decode::<PnCounter>(Table::Counter, key, &bytes)?,
            };
            let state = CounterState::new(plain, unexpired_incarnations(&view, key, judged_at_ms)?);
            Ok(CounterRead {
                value: state.value(),
                expires_at_ms: state.expires_at_ms(),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((reads, judged_at_ms))
}

pub fn value_of(counter: &PnCounter) -> i64 {
    counter.value().clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

pub(crate) fn validate(ops: &[CounterOp]) -> Result<(), OpError> {
    super::check_batch(ops.len())?;
    for op in ops {
        check_key(&op.key)?;
        if let CounterAction::IncrExpiring { ttl_ms, .. } = op.action {
            if ttl_ms == 0 || ttl_ms > TTL_MS_MAX {
                return Err(OpError::InvalidTtl {
                    ttl_ms,
                    max_ms: TTL_MS_MAX,
                });
            }
        }
        if let CounterAction::Incr {
            min: Some(min),
            max: Some(max),
            ..
        }
        | CounterAction::IncrExpiring {
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
        CounterAction::IncrExpiring { delta, min, max, .. } => decide(current, CounterAction::Incr { delta, min, max }),
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
            remove_incarnations(view, &op.key, now_ms)?;
            outcomes.push(CounterOutcome::Applied { value: 0 });
            continue;
        }
        let mut state = match load_state(&*view, &op.key, now_ms)? {
            Ok(state) => state,
            Err(refusal) => return Ok(Response::Refused(refusal)),
        };
        let current = state.value();
        let creates_expiring = matches!(op.action, CounterAction::IncrExpiring { .. }) && state.incarnations.is_empty();
        if creates_expiring && state.plain.value() != 0 {
            return Ok(Response::Refused(OpError::Counter(CounterError::NotExpiring {
                key: lossy(&op.key),
                value: current,
            })));
        }
        // Escrow keeps bounds among regions for plain counters only.
        let expiring = creates_expiring || !state.incarnations.is_empty();
        let bounded = matches!(
            op.action,
            CounterAction::Incr { min: Some(_), .. }
                | CounterAction::Incr { max: Some(_), .. }
                | CounterAction::IncrExpiring { min: Some(_), .. }
                | CounterAction::IncrExpiring { max: Some(_), .. }
        );
        if escrowed && expiring && bounded {
            return Ok(Response::Refused(OpError::Counter(CounterError::BoundOnExpiring {
                key: lossy(&op.key),
            })));
        }
        let counter = &state.plain;
        let escrow: EscrowTransfers = match view.get(Table::CounterEscrow, &op.key)? {
            None => EscrowTransfers::default(),
            Some(bytes) => decode(Table::CounterEscrow, &op.key, &bytes)?,
        };
        let floor = escrow.balance(counter, role.id, EscrowBound::Floor);
        let ceiling = escrow.balance(counter, role.id, EscrowBound::Ceiling);
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
            if escrowed && !expiring {
                if let Err((_, balance)) = escrow_allows(floor, ceiling, delta, min, max, role.escrow) {
                    outcome = CounterOutcome::EscrowExceeded {
                        value: current,
                        balance: clamp(balance),
                    };
                }
            }
        }
        if let CounterOutcome::Applied { value } = outcome {
            apply_change(view, role, now_ms, &op.key, op.action, &mut state, value);
        }
        outcomes.push(outcome);
    }
    Ok(Response::Counters(outcomes))
}

/// Writes an applied change that takes counter `key` (as `state`) to `value`. The change is a
/// region's own component's step, so changes made concurrently in other regions still add to it
/// once merged (a set reaches `value` from what this region sees now).
///
/// The target part: the counter's earliest live incarnation if it expires, else a new
/// incarnation for a counter created with a TTL, else the plain row; a delete's is the plain row.
/// A set or a delete takes every other part to 0, so no part left behind brings an old value
/// back when another expires (a set on an expiring counter keeps its expiry). So does an
/// increment that takes the counter to 0: among regions its parts may be, say, -4 and +4, and
/// only taking each to 0 keeps the rule that a counter reading 0 holds no TTL (and keeps the +4
/// from coming back when the -4 expires).
fn apply_change<S: StoreRead>(
    view: &mut View<'_, S>,
    role: RegionRole,
    now_ms: u64,
    key: &[u8],
    action: CounterAction,
    state: &mut CounterState,
    value: i64,
) {
    let action = match action {
        CounterAction::Incr { .. } | CounterAction::IncrExpiring { .. } if value == 0 => {
            CounterAction::Set { value: 0 }
        }
        other => other,
    };
    let target = match action {
        CounterAction::Delete => None,
        CounterAction::IncrExpiring { ttl_ms, .. } if state.incarnations.is_empty() => {
            let expires_at_ms = now_ms.saturating_add(ttl_ms);
            Some(match state.resting.iter().find(|i| i.expires_at_ms == expires_at_ms) {
                Some(resting) => (resting.clone(), false),
                None => (Incarnation::new(key, expires_at_ms), true),
            })
        }
        _ => state.incarnations.first().map(|i| (i.clone(), false)),
    };
    let change = if matches!(action, CounterAction::Set { .. } | CounterAction::Delete) {
        let is_target = |i: &Incarnation| target.as_ref().is_some_and(|(t, _)| t.raw == i.raw);
        for other in state.incarnations.iter_mut().filter(|i| !is_target(i)) {
            other.counter.add(role.id, -other.counter.value());
            store_incarnation(view, key, other, false);
        }
        match &target {
            Some((incarnation, _)) => {
                if state.plain.value() != 0 {
                    state.plain.add(role.id, -state.plain.value());
                    view.put(Table::Counter, key.to_vec(), encode_pn(&state.plain));
                }
                i128::from(value) - incarnation.counter.value()
            }
            None => i128::from(value) - state.plain.value(),
        }
    } else {
        i128::from(value) - state.total()
    };
    match target {
        Some((mut incarnation, new)) => {
            incarnation.counter.add(role.id, change);
            store_incarnation(view, key, &incarnation, new);
        }
        None => {
            state.plain.add(role.id, change);
            view.put(Table::Counter, key.to_vec(), encode_pn(&state.plain));
        }
    }
}
