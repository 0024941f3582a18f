//! The local shadow limiter: how an SDK instance decides a rate check on its own while the
//! cluster is unreachable ([`crate::WhenUnreachable::LocalShare`]), enforcing its share of the
//! limit (`limit / instances`) with the cluster's own algorithms, on this process's clock.
//!
//! The deciding functions are pure (state, limit, cost, time in; state and decision out) and
//! tested on their own; [`ShadowTable`] keeps one state per key, bounded by
//! [`SHADOW_KEYS_MAX`], until the state has expired by itself (both windows slid out, the bucket
//! full again): a key the cluster decides again keeps what this client admitted alone, so a link
//! that flaps does not hand out a fresh share at every cut.

use std::collections::HashMap;
use std::time::Duration;

use crate::client::millis;
use crate::error::{ClientError, ErrorCode};
use crate::limits::{KEY_BYTES_MAX, RATE_WINDOW_MS_MAX};
use crate::rate::{RateCheck, RateDecision, RateLimit};

/// Most keys one client decides locally at once. A new key beyond it is refused (failing
/// closed is the safe side of a limiter that cannot keep count).
pub const SHADOW_KEYS_MAX: usize = 10_000;

/// Longest `retry_after` a local decision answers (a share of 0 never refills).
const RETRY_AFTER_MS_MAX: u64 = crate::limits::RATE_WINDOW_MS_MAX;

/// One key's local state, with the parameters it was kept under: a check with other parameters
/// starts the key afresh, as the cluster does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShadowState {
    /// A sliding-window counter: the count of the current fixed window and of the one before,
    /// the estimate weighing the previous by how much of it still overlaps the sliding window.
    Window {
        window_ms: u64,
        index: u64,
        current: u64,
        previous: u64,
    },
    /// A token bucket: tokens times `per_ms` (exact integer refill), as of `last_ms`.
    Bucket {
        rate: u64,
        per_ms: u64,
        burst: u64,
        scaled: u128,
        last_ms: u64,
    },
}

impl ShadowState {
    /// Whether the state no longer changes any decision at `now_ms`: both windows slid out, or
    /// the bucket full again.
    fn expired(self, now_ms: u64) -> bool {
        match self {
            ShadowState::Window { window_ms, index, .. } => index.saturating_add(2) <= now_ms / window_ms.max(1),
            ShadowState::Bucket {
                rate,
                per_ms,
                burst,
                scaled,
                last_ms,
            } => {
                let refill = u128::from(now_ms.saturating_sub(last_ms)) * u128::from(rate);
                scaled + refill >= u128::from(burst) * u128::from(per_ms)
            }
        }
    }
}

/// This instance's share of `limit`: `limit / instances`, rounded down (0 with more instances
/// than the limit: every check that costs anything is refused).
pub(crate) fn share(limit: u64, instances: u32) -> u64 {
    limit / u64::from(instances.max(1))
}

/// The refusal the cluster gives `check` (its `validate_check`, in `storage/src/apply/rate.rs`),
/// repeated here so that a check decided locally is refused as the cluster would refuse it.
pub(crate) fn refusal(check: &RateCheck) -> Option<ClientError> {
    let refuse = |code, message: String| Some(ClientError::Rejected { code, message });
    if check.key.is_empty() {
        return refuse(ErrorCode::EmptyKey, "rate-limit key is empty".into());
    }
    if check.key.len() > KEY_BYTES_MAX {
        return refuse(
            ErrorCode::KeyTooLarge,
            format!("rate-limit key of {} bytes, over {KEY_BYTES_MAX}", check.key.len()),
        );
    }
    // (least count that must be >= 1, period, most a check may cost)
    let (least, period, most) = match check.limit {
        RateLimit::SlidingWindow { limit, window } | RateLimit::GlobalSlidingWindow { limit, window } => {
            (limit, window, limit)
        }
        RateLimit::TokenBucket { rate, per, burst } => (rate.min(burst), per, burst),
    };
    let period_ms = millis(period);
    if least == 0 || period_ms == 0 || period_ms > RATE_WINDOW_MS_MAX || check.cost > most {
        return refuse(
            ErrorCode::OutOfRange,
            format!(
                "rate check out of range: counts >= 1, period 1..={RATE_WINDOW_MS_MAX} ms, cost <= {most}; \
                 got {:?} with cost {}",
                check.limit, check.cost
            ),
        );
    }
    None
}

/// Decides `cost` against `limit` (already this instance's share) at `now_ms`.
pub(crate) fn decide(
    state: Option<ShadowState>,
    limit: RateLimit,
    cost: u64,
    now_ms: u64,
) -> (ShadowState, RateDecision) {
    match limit {
        RateLimit::SlidingWindow { limit, window } | RateLimit::GlobalSlidingWindow { limit, window } => {
            sliding_window(state, limit, millis(window).max(1), cost, now_ms)
        }
        RateLimit::TokenBucket { rate, per, burst } => {
            token_bucket(state, rate, millis(per).max(1), burst, cost, now_ms)
        }
    }
}

fn sliding_window(
    state: Option<ShadowState>,
    limit: u64,
    window_ms: u64,
    cost: u64,
    now_ms: u64,
) -> (ShadowState, RateDecision) {
    let mut index = now_ms / window_ms;
    let (current, previous) = match state {
        // A window at or after this one (the local clock stepped back): its counts still hold,
        // as on the cluster.
        Some(ShadowState::Window {
            window_ms: w,
            index: i,
            current,
            previous,
        }) if w == window_ms && i >= index => {
            index = i;
            (current, previous)
        }
        Some(ShadowState::Window {
            window_ms: w,
            index: i,
            current,
            ..
        }) if w == window_ms && i + 1 == index => (0, current),
        _ => (0, 0),
    };
    // With a clock stepped back, count as of the start of the kept window.
    let now_ms = now_ms.max(index * window_ms);
    let elapsed = now_ms - index * window_ms;
    let w = u128::from(window_ms);
    // The estimate, times the window.
    let used_w = u128::from(previous) * (w - u128::from(elapsed)) + u128::from(current) * w;
    let allowed = used_w + u128::from(cost) * w <= u128::from(limit) * w;
    let current = if allowed { current + cost } else { current };
    let used_w = u128::from(previous) * (w - u128::from(elapsed)) + u128::from(current) * w;
    let remaining = u64::try_from((u128::from(limit) * w).saturating_sub(used_w) / w).unwrap_or(u64::MAX);
    let window_end = (index + 1) * window_ms;
    let decision = RateDecision {
        allowed,
        remaining,
        // Conservative: by the end of the next window both counts have slid out.
        retry_after: if allowed {
            Duration::ZERO
        } else {
            Duration::from_millis((window_end + window_ms - now_ms).min(RETRY_AFTER_MS_MAX))
        },
        reset_at_ms: window_end + window_ms,
    };
    let state = ShadowState::Window {
        window_ms,
        index,
        current,
        previous,
    };
    (state, decision)
}

fn token_bucket(
    state: Option<ShadowState>,
    rate: u64,
    per_ms: u64,
    burst: u64,
    cost: u64,
    now_ms: u64,
) -> (ShadowState, RateDecision) {
    let capacity = u128::from(burst) * u128::from(per_ms);
    let (scaled, last_ms) = match state {
        Some(ShadowState::Bucket {
            rate: r,
            per_ms: p,
            burst: b,
            scaled,
            last_ms,
        }) if (r, p, b) == (rate, per_ms, burst) => {
            let refill = u128::from(now_ms.saturating_sub(last_ms)) * u128::from(rate);
            // A clock stepped back refills nothing, and the time already refilled is not
            // refilled again.
            ((scaled + refill).min(capacity), last_ms.max(now_ms))
        }
        _ => (capacity, now_ms),
    };
    let need = u128::from(cost) * u128::from(per_ms);
    let allowed = need <= scaled;
    let scaled = if allowed { scaled - need } else { scaled };
    let per_token_ms = |missing: u128| match rate {
        0 => RETRY_AFTER_MS_MAX,
        rate => u64::try_from(missing.div_ceil(u128::from(rate)))
            .unwrap_or(u64::MAX)
            .min(RETRY_AFTER_MS_MAX),
    };
    let decision = RateDecision {
        allowed,
        remaining: u64::try_from(scaled / u128::from(per_ms)).unwrap_or(u64::MAX),
        retry_after: if allowed {
            Duration::ZERO
        } else {
            Duration::from_millis(per_token_ms(need - scaled))
        },
        reset_at_ms: now_ms.saturating_add(per_token_ms(capacity - scaled)),
    };
    let state = ShadowState::Bucket {
        rate,
        per_ms,
        burst,
        scaled,
        last_ms,
    };
    (state, decision)
}

/// The limit an instance enforces alone: every count of `limit` divided by `instances`.
pub(crate) fn shared(limit: RateLimit, instances: u32) -> RateLimit {
    match limit {
        RateLimit::SlidingWindow { limit, window } => RateLimit::SlidingWindow {
            limit: share(limit, instances),
            window,
        },
        RateLimit::GlobalSlidingWindow { limit, window } => RateLimit::GlobalSlidingWindow {
            limit: share(limit, instances),
            window,
        },
        RateLimit::TokenBucket { rate, per, burst } => RateLimit::TokenBucket {
            rate: share(rate, instances),
            per,
            burst: share(burst, instances),
        },
    }
}

/// Every key this client decides locally, bounded by [`SHADOW_KEYS_MAX`].
#[derive(Debug, Default)]
pub(crate) struct ShadowTable {
    keys: HashMap<Vec<u8>, ShadowState>,
}

impl ShadowTable {
    /// Decides one check locally with this instance's share of its limit.
    pub(crate) fn check(
        &mut self,
        key: &[u8],
        limit: RateLimit,
        instances: u32,
        cost: u64,
        now_ms: u64,
    ) -> RateDecision {
        let limit = shared(limit, instances);
        let state = self.keys.get(key).copied();
        if state.is_none() && self.keys.len() >= SHADOW_KEYS_MAX {
            // Room first from states that no longer change any decision.
            self.keys.retain(|_, state| !state.expired(now_ms));
            if self.keys.len() >= SHADOW_KEYS_MAX {
                return RateDecision {
                    allowed: false,
                    remaining: 0,
                    retry_after: Duration::from_secs(1),
                    reset_at_ms: now_ms,
                };
            }
        }
        let (next, decision) = decide(state, limit, cost, now_ms);
        // A new key refused or only looked at (cost 0) leaves nothing worth keeping.
        if state.is_some() || (decision.allowed && cost > 0) {
            self.keys.insert(key.to_vec(), next);
        }
        decision
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn an_instance_admits_its_share_of_a_window() {
        let mut table = ShadowTable::default();
        let limit = RateLimit::SlidingWindow {
            limit: 10,
            window: MINUTE,
        };
        let admitted = (0..10)
            .filter(|i| table.check(b"k", limit, 4, 1, 1_000 + i).allowed)
            .count();
        assert_eq!(admitted, 2, "10 / 4 instances, rounded down");
        // Two windows later everything has slid out.
        assert!(table.check(b"k", limit, 4, 1, 1_000 + 2 * 60_000).allowed);
        // More instances than the limit: a share of 0 refuses everything that costs.
        assert!(!table.check(b"other", limit, 11, 1, 1_000).allowed);
        assert_eq!(table.len(), 1, "a new key refused is not kept");
        // The local clock steps back a window: the counts still hold.
        for _ in 0..2 {
            table.check(b"stepped", limit, 4, 1, 10 * 60_000);
        }
        assert!(!table.check(b"stepped", limit, 4, 1, 9 * 60_000).allowed);
    }

    #[test]
    fn a_token_bucket_share_refills_at_its_share_of_the_rate() {
        let mut table = ShadowTable::default();
        let limit = RateLimit::TokenBucket {
            rate: 4,
            per: Duration::from_secs(1),
            burst: 8,
        };
        let burst = (0..10).filter(|_| table.check(b"k", limit, 2, 1, 0).allowed).count();
        assert_eq!(burst, 4);
        let refused = table.check(b"k", limit, 2, 1, 0);
        assert_eq!(refused.retry_after, Duration::from_millis(500), "2 tokens a second");
        assert!(table.check(b"k", limit, 2, 1, 500).allowed);
        // A clock stepped back and forward again does not refill the same time twice.
        assert!(!table.check(b"k", limit, 2, 1, 100).allowed);
        assert!(!table.check(b"k", limit, 2, 1, 500).allowed);
        // Another bucket shape starts afresh.
        let other = RateLimit::TokenBucket {
            rate: 4,
            per: Duration::from_secs(2),
            burst: 8,
        };
        assert!(table.check(b"k", other, 2, 1, 500).allowed);
    }

    #[test]
    fn a_check_the_cluster_would_refuse_is_refused_locally() {
        let check = |limit, cost| RateCheck {
            key: b"k".to_vec(),
            limit,
            cost,
        };
        let window = |limit, ms| RateLimit::SlidingWindow {
            limit,
            window: Duration::from_millis(ms),
        };
        assert!(refusal(&check(window(5, 1000), 5)).is_none());
        for bad in [
            check(window(0, 1000), 0),
            check(window(5, 0), 1),
            check(window(5, RATE_WINDOW_MS_MAX + 1), 1),
            check(window(5, 1000), 6),
            RateCheck {
                key: Vec::new(),
                ..check(window(5, 1000), 1)
            },
        ] {
            let code = refusal(&bad).and_then(|e| e.code());
            assert!(
                matches!(code, Some(ErrorCode::OutOfRange | ErrorCode::EmptyKey)),
                "{bad:?}"
            );
        }
        let bucket = RateLimit::TokenBucket {
            rate: 1,
            per: Duration::from_secs(1),
            burst: 0,
        };
        assert!(refusal(&check(bucket, 0)).is_some());
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_still_decides_known_ones() {
        let mut table = ShadowTable::default();
        let limit = RateLimit::SlidingWindow {
            limit: 100,
            window: MINUTE,
        };
        for i in 0..SHADOW_KEYS_MAX {
            table.check(format!("k{i}").as_bytes(), limit, 1, 1, 0);
        }
        assert!(!table.check(b"new", limit, 1, 1, 0).allowed);
        assert!(table.check(b"k0", limit, 1, 1, 0).allowed);
        assert_eq!(table.len(), SHADOW_KEYS_MAX);
        // Two windows later every state has expired: they make room.
        assert!(table.check(b"new", limit, 1, 1, 2 * 60_000).allowed);
        assert_eq!(table.len(), 1);
    }

    proptest! {
        /// Whatever the arrivals, an instance never admits more than its share in any one fixed
        /// window (the sliding estimate only ever admits less than a fixed window would).
        #[test]
        fn never_more_than_the_share_per_window(
            steps in proptest::collection::vec((0u64..5_000, 1u64..4), 1..200),
            limit in 1u64..50,
            instances in 1u32..6,
        ) {
            let window = Duration::from_secs(10);
            let share = share(limit, instances);
            let mut table = ShadowTable::default();
            let mut now = 0u64;
            let mut per_window: HashMap<u64, u64> = HashMap::new();
            for (advance, cost) in steps {
                now += advance;
                let d = table.check(b"k", RateLimit::SlidingWindow { limit, window }, instances, cost, now);
                if d.allowed {
                    *per_window.entry(now / 10_000).or_default() += cost;
                }
            }
            for (index, admitted) in per_window {
                prop_assert!(admitted <= share, "window {}: {} > {}", index, admitted, share);
            }
        }
    }
}
