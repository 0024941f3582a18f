//! Rate limiting as one atomic op per key: a sliding-window counter or a token bucket.
//!
//! Both are pure functions of `(state, limit, cost, now)` in integer arithmetic, so every replica
//! decides the same, and the state per key is a few words (no per-request log).

use basalt_replication::{RegionId, WindowCount, WindowCounts};
use serde::{Deserialize, Serialize};

use super::{check_key, decode, lossy, out_of_range, save, OpContext, View};
use crate::command::{OpError, RateCheck, RateDecision, RateLimit, RateOp, Response};
use crate::limits::RATE_WINDOW_MS_MAX;
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// Applies one rate-limit op.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &RateOp,
) -> Result<Response, StoreError> {
    match op {
        RateOp::Check { checks } => apply(view, ctx.now_ms, ctx.region.id, checks),
        RateOp::Sweep { limit } => sweep(view, ctx.now_ms, *limit),
    }
}

/// Forget times are rounded up to this, so a busy key moves in the expiry index about once a
/// minute instead of on every check.
const FORGET_GRANULE_MS: u64 = 60_000;

/// A key's state as stored, with the forget time under which it is indexed in `RateExpiry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRate {
    pub state: RateState,
    /// At or after this time the key is back to its full allowance: forgetting it then changes
    /// no decision (a new key starts empty / full).
    pub forget_at_ms: u64,
}

fn forget_key(forget_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = forget_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// What is stored per key. A check with other parameters than the stored state's (another
/// algorithm, window or bucket shape) starts the key afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateState {
    Window {
        window_ms: u64,
        /// The fixed window `current` counts: `now / window_ms`.
        index: u64,
        current: u64,
        previous: u64,
    },
    Bucket {
        rate: u64,
        per_ms: u64,
        burst: u64,
        /// Tokens times `per_ms`, so refills of `rate` per `per_ms` stay integral per millisecond.
        scaled_tokens: u128,
        last_ms: u64,
    },
}

pub(crate) fn validate_check(check: &RateCheck) -> Result<(), OpError> {
    check_key(&check.key)?;
    let window_range = format!("1..={RATE_WINDOW_MS_MAX}");
    match check.limit {
        RateLimit::SlidingWindow { limit, window_ms } | RateLimit::GlobalSlidingWindow { limit, window_ms } => {
            if limit == 0 {
                return Err(out_of_range("rate limit", ">= 1", limit));
            }
            if window_ms == 0 || window_ms > RATE_WINDOW_MS_MAX {
                return Err(out_of_range("rate window_ms", window_range.as_str(), window_ms));
            }
            if check.cost > limit {
                return Err(out_of_range("rate cost", format!("<= limit ({limit})"), check.cost));
            }
        }
        RateLimit::TokenBucket { rate, per_ms, burst } => {
            if rate == 0 {
                return Err(out_of_range("token bucket rate", ">= 1", rate));
            }
            if per_ms == 0 || per_ms > RATE_WINDOW_MS_MAX {
                return Err(out_of_range("token bucket per_ms", window_range.as_str(), per_ms));
            }
            if burst == 0 {
                return Err(out_of_range("token bucket burst", ">= 1", burst));
            }
            if check.cost > burst {
                return Err(out_of_range("rate cost", format!("<= burst ({burst})"), check.cost));
            }
        }
    }
    Ok(())
}

pub(crate) fn validate(checks: &[RateCheck]) -> Result<(), OpError> {
    super::check_batch(checks.len())?;
    checks.iter().try_for_each(validate_check)
}

fn div_ceil(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Decides one check of a region-local limit. `limit` must have passed [`validate_check`] with
/// `cost`; a global window is decided as a local one here (see [`decide_global`]).
pub fn decide(state: Option<RateState>, limit: RateLimit, cost: u64, now_ms: u64) -> (RateState, RateDecision) {
    match limit {
        RateLimit::SlidingWindow { limit, window_ms } | RateLimit::GlobalSlidingWindow { limit, window_ms } => {
            sliding_window(state, limit, window_ms, cost, now_ms)
        }
        RateLimit::TokenBucket { rate, per_ms, burst } => token_bucket(state, rate, per_ms, burst, cost, now_ms),
    }
}

/// Decides one check of a global sliding window in `region`: the sliding-window estimate over
/// every region's count as last received. Returns the decision and this region's new count, if
/// it admitted something.
pub fn decide_global(
    counts: &WindowCounts,
    region: RegionId,
    limit: u64,
    window_ms: u64,
    cost: u64,
    now_ms: u64,
) -> (Option<WindowCount>, RateDecision) {
    let index = now_ms / window_ms;
    let (previous, current) = counts.totals(window_ms, index);
    let everyone = RateState::Window {
        window_ms,
        index,
        current,
        previous,
    };
    let (_, decision) = sliding_window(Some(everyone), limit, window_ms, cost, now_ms);
    if !decision.allowed || cost == 0 {
        return (None, decision);
    }
    let mine = counts.get(region);
    let (previous, current) = mine.at(window_ms, index);
    let next = WindowCount {
        seq: mine.seq + 1,
        window_ms,
        index,
        current: current + cost,
        previous,
    };
    (Some(next), decision)
}

/// A global key's counts as stored, with the forget time under which `RateGlobalExpiry` indexes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGlobal {
    pub counts: WindowCounts,
    pub forget_at_ms: u64,
}

fn load_global<S: StoreRead>(view: &View<'_, S>, key: &[u8]) -> Result<Option<StoredGlobal>, StoreError> {
    match view.get(Table::RateGlobal, key)? {
        None => Ok(None),
        Some(bytes) => decode(Table::RateGlobal, key, &bytes).map(Some),
    }
}

/// Merges `count` into `key`'s counts as `region`'s and stores them, re-indexing the forget time
/// (once every count has slid out of its window, forgetting the key changes no decision).
pub(crate) fn merge_global_count<S: StoreRead>(
    view: &mut View<'_, S>,
    key: &[u8],
    region: RegionId,
    count: WindowCount,
) -> Result<(), StoreError> {
    let stored = load_global(view, key)?;
    let mut counts = stored.as_ref().map(|s| s.counts.clone()).unwrap_or_default();
    counts.merge_region(region, count);
    let slid_out = counts
        .regions
        .values()
        .map(|c| c.index.saturating_add(2).saturating_mul(c.window_ms))
        .max()
        .unwrap_or(0);
    let forget_at_ms = slid_out.div_ceil(FORGET_GRANULE_MS) * FORGET_GRANULE_MS;
    let old_forget = stored.as_ref().map(|s| s.forget_at_ms);
    if old_forget != Some(forget_at_ms) {
        if let Some(old) = old_forget {
            view.delete(Table::RateGlobalExpiry, forget_key(old, key));
        }
        view.put(Table::RateGlobalExpiry, forget_key(forget_at_ms, key), Vec::new());
    }
    save(
        view,
        Table::RateGlobal,
        key.to_vec(),
        &StoredGlobal { counts, forget_at_ms },
    );
    Ok(())
}

/// This region's count of `key`'s global window, as stored (what the feed ships).
pub(crate) fn own_global_count(bytes: &[u8], key: &[u8], region: RegionId) -> Result<WindowCount, StoreError> {
    let stored: StoredGlobal = decode(Table::RateGlobal, key, bytes)?;
    Ok(stored.counts.get(region))
}

fn sliding_window(
    state: Option<RateState>,
    limit: u64,
    window_ms: u64,
    cost: u64,
    now_ms: u64,
) -> (RateState, RateDecision) {
    let index = now_ms / window_ms;
    let elapsed = now_ms - index * window_ms;
    let (previous, current) = match state {
        Some(RateState::Window {
            window_ms: w,
            index: i,
            current,
            previous,
        }) if w == window_ms => {
            if i >= index {
                (previous, current)
            } else if i + 1 == index {
                (current, 0)
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    let (w, limit_w, cost_w) = (
        u128::from(window_ms),
        u128::from(limit) * u128::from(window_ms),
        u128::from(cost) * u128::from(window_ms),
    );
    // The estimate, times the window: the previous window weighted by its remaining overlap.
    let estimate_w = u128::from(previous) * (w - u128::from(elapsed)) + u128::from(current) * w;
    let allowed = estimate_w + cost_w <= limit_w;
    let (current, used_w) = if allowed {
        (current + cost, estimate_w + cost_w)
    } else {
        (current, estimate_w)
    };
    let remaining = to_u64(limit_w.saturating_sub(used_w) / w);
    let to_window_end = window_ms - elapsed;
    let retry_after_ms = if allowed {
        0
    } else {
        let room = u128::from(limit).checked_sub(u128::from(current) + u128::from(cost));
        match room {
            // Enough weight of the previous window slides out before this one ends.
            Some(room) if previous > 0 && room * w / u128::from(previous) > 0 => {
                let wait = u128::from(to_window_end) - (room * w / u128::from(previous)).min(u128::from(to_window_end));
                to_u64(wait.max(1))
            }
            // Wait for the next window, where this window's count becomes the decaying one.
            _ => {
                let spare = u128::from(limit - cost) * w;
                let into_next = if current == 0 {
                    0
                } else {
                    w.saturating_sub(spare / u128::from(current))
                };
                to_window_end + to_u64(into_next)
            }
        }
    };
    let reset_at_ms = if current > 0 {
        (index + 2) * window_ms
    } else if previous > 0 {
        (index + 1) * window_ms
    } else {
        now_ms
    };
    (
        RateState::Window {
            window_ms,
            index,
            current,
            previous,
        },
        RateDecision {
            allowed,
            remaining,
            retry_after_ms,
            reset_at_ms,
        },
    )
}

fn token_bucket(
    state: Option<RateState>,
    rate: u64,
    per_ms: u64,
    burst: u64,
    cost: u64,
    now_ms: u64,
) -> (RateState, RateDecision) {
    let capacity = u128::from(burst) * u128::from(per_ms);
    let scaled = match state {
        Some(RateState::Bucket {
            rate: r,
            per_ms: p,
            burst: b,
            scaled_tokens,
            last_ms,
        }) if (r, p, b) == (rate, per_ms, burst) => {
            let refill = u128::from(now_ms.saturating_sub(last_ms)) * u128::from(rate);
            (scaled_tokens + refill).min(capacity)
        }
        // A new key starts with a full bucket.
        _ => capacity,
    };
    let need = u128::from(cost) * u128::from(per_ms);
    let allowed = scaled >= need;
    let scaled = if allowed { scaled - need } else { scaled };
    let rate_w = u128::from(rate);
    let retry_after_ms = if allowed {
        0
    } else {
        to_u64(div_ceil(need - scaled, rate_w))
    };
    let reset_at_ms = now_ms.saturating_add(to_u64(div_ceil(capacity - scaled, rate_w)));
    (
        RateState::Bucket {
            rate,
            per_ms,
            burst,
            scaled_tokens: scaled,
            last_ms: now_ms,
        },
        RateDecision {
            allowed,
            remaining: to_u64(scaled / u128::from(per_ms)),
            retry_after_ms,
            reset_at_ms,
        },
    )
}

pub(crate) fn apply<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    region: RegionId,
    checks: &[RateCheck],
) -> Result<Response, StoreError> {
    if let Err(e) = validate(checks) {
        return Ok(Response::Refused(e));
    }
    let mut decisions = Vec::with_capacity(checks.len());
    for check in checks {
        if let RateLimit::GlobalSlidingWindow { limit, window_ms } = check.limit {
            let counts = load_global(view, &check.key)?.map(|s| s.counts).unwrap_or_default();
            let (mine, decision) = decide_global(&counts, region, limit, window_ms, check.cost, now_ms);
            if let Some(mine) = mine {
                merge_global_count(view, &check.key, region, mine)?;
            }
            decisions.push(decision);
            continue;
        }
        let stored = match view.get(Table::RateLimit, &check.key)? {
            None => None,
            Some(bytes) => match basalt_codec::decode::<StoredRate>(&bytes) {
                Ok(stored) => Some(stored),
                Err(e) => {
                    return Ok(Response::Refused(OpError::CorruptValue {
                        key: lossy(&check.key),
                        reason: e.to_string(),
                    }))
                }
            },
        };
        let (state, decision) = decide(stored.map(|s| s.state), check.limit, check.cost, now_ms);
        let forget_at_ms = decision.reset_at_ms.max(now_ms).div_ceil(FORGET_GRANULE_MS) * FORGET_GRANULE_MS;
        let next = StoredRate { state, forget_at_ms };
        if stored != Some(next) {
            if let Some(old) = stored.filter(|old| old.forget_at_ms != forget_at_ms) {
                view.delete(Table::RateExpiry, forget_key(old.forget_at_ms, &check.key));
            }
            if stored.is_none_or(|old| old.forget_at_ms != forget_at_ms) {
                view.put(Table::RateExpiry, forget_key(forget_at_ms, &check.key), Vec::new());
            }
            let bytes = basalt_codec::encode(&next);
            view.put(Table::RateLimit, check.key.clone(), bytes);
        }
        decisions.push(decision);
    }
    Ok(Response::RateDecisions(decisions))
}

/// Forgets keys whose forget time has come, at most `limit` of each kind (local, global).
pub(crate) fn sweep<S: StoreRead>(view: &mut View<'_, S>, now_ms: u64, limit: u32) -> Result<Response, StoreError> {
    let due_range = KeyRange::between(Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec());
    let mut removed = 0u32;
    for (index_key, _) in view.scan(Table::RateGlobalExpiry, &due_range, limit as usize)? {
        view.delete(Table::RateGlobalExpiry, index_key.clone());
        let Some((at, key)) = index_key.split_first_chunk::<8>() else {
            continue;
        };
        // Only if the key still carries this forget time: a later count may have moved it.
        if load_global(view, key)?.is_some_and(|g| g.forget_at_ms == u64::from_be_bytes(*at)) {
            view.delete(Table::RateGlobal, key.to_vec());
            removed += 1;
        }
    }
    let due = view.scan(Table::RateExpiry, &due_range, limit as usize)?;
    for (index_key, _) in due {
        view.delete(Table::RateExpiry, index_key.clone());
        let Some((at, key)) = index_key.split_first_chunk::<8>() else {
            continue;
        };
        let at = u64::from_be_bytes(*at);
        let current = view
            .get(Table::RateLimit, key)?
            .and_then(|bytes| basalt_codec::decode::<StoredRate>(&bytes).ok());
        // Only if the key still carries this forget time: a later check may have moved it.
        if current.is_some_and(|c| c.forget_at_ms == at) {
            view.delete(Table::RateLimit, key.to_vec());
            removed += 1;
        }
    }
    Ok(Response::Swept { removed })
}
