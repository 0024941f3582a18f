//! The rate-limit operations of a command ([`RateOp`]) and their payloads: the algorithm and its
//! parameters, a check, a decision.

use serde::{Deserialize, Serialize};

/// A rate-limit algorithm and its parameters, given with every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimit {
    /// At most `limit` units per sliding `window_ms`, estimated from the current and previous fixed
    /// windows (the previous weighted by how much of it still overlaps the sliding window).
    SlidingWindow { limit: u64, window_ms: u64 },
    /// `rate` units refill every `per_ms`, up to `burst` stored.
    TokenBucket { rate: u64, per_ms: u64, burst: u64 },
    /// A sliding window shared by all regions: each region counts what it admits and ships its
    /// count; a check weighs every region's count as last received (see docs/regions.md for the
    /// bound on what regions admit together before their counts arrive).
    GlobalSlidingWindow { limit: u64, window_ms: u64 },
}

/// One rate-limit decision request inside a [`crate::command::RateOp::Check`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCheck {
    pub key: Vec<u8>,
    pub limit: RateLimit,
    /// Units this request consumes when allowed (0: only look).
    pub cost: u64,
}

/// The answer to one [`RateCheck`]. Times are HLC milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    pub allowed: bool,
    /// Units still available after this decision.
    pub remaining: u64,
    /// When refused: how long until the same check would be allowed (0 when allowed).
    pub retry_after_ms: u64,
    /// When the key will be back to its full allowance if nothing more is consumed.
    pub reset_at_ms: u64,
}

/// The rate-limit operations. Applied by `crate::apply::rate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateOp {
    /// Decisions, each atomic on its own key, in order.
    Check { checks: Vec<RateCheck> },
    /// Forgets keys that are back to their full allowance (forgetting them changes no decision),
    /// at most `limit`. Proposed by the leader from time to time.
    Sweep { limit: u32 },
}

impl RateOp {
    /// Whether its effects go into the change feed: the checks (a global window counts every
    /// region's admissions), not the sweep.
    pub fn replicates(&self) -> bool {
        matches!(self, RateOp::Check { .. })
    }
}

impl std::fmt::Display for RateOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateOp::Check { checks } => write!(f, "rate check batch of {}", checks.len()),
            RateOp::Sweep { limit } => write!(f, "rate-limit sweep (limit {limit})"),
        }
    }
}
