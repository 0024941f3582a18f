//! Rate limiting: atomic checks, one or many per request.

use std::time::Duration;

use crate::client::{millis, Client};
use crate::error::ClientError;
use crate::pb;
use crate::pb::rate_limiter_client::RateLimiterClient;

/// The algorithm and parameters of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimit {
    /// At most `limit` units per sliding `window` (sliding-window counter).
    SlidingWindow { limit: u64, window: Duration },
    /// `rate` units refill every `per`, at most `burst` stored.
    TokenBucket { rate: u64, per: Duration, burst: u64 },
    /// At most `limit` units per sliding `window` over all regions together: each region counts
    /// what it admits and ships its count to the others. Until a region's count arrives (a link
    /// latency, or a partition's length) others do not see it, so regions together may admit more
    /// than `limit` by what they admitted meanwhile; without regions it is a sliding window.
    GlobalSlidingWindow { limit: u64, window: Duration },
}

/// One check in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCheck {
    /// Any string the caller composes, e.g. `tenant:42/user:7/route:/search`.
    pub key: Vec<u8>,
    pub limit: RateLimit,
    pub cost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub remaining: u64,
    /// When refused: how long until the same check would pass.
    pub retry_after: Duration,
    /// Cluster time (ms since the Unix epoch) at which the key is back to its full allowance.
    pub reset_at_ms: u64,
}

impl From<RateCheck> for pb::RateCheck {
    fn from(c: RateCheck) -> pb::RateCheck {
        let algorithm = match c.limit {
            RateLimit::SlidingWindow { limit, window } => pb::rate_check::Algorithm::SlidingWindow(pb::SlidingWindow {
                limit,
                window_ms: millis(window),
            }),
            RateLimit::GlobalSlidingWindow { limit, window } => {
                pb::rate_check::Algorithm::GlobalSlidingWindow(pb::SlidingWindow {
                    limit,
                    window_ms: millis(window),
                })
            }
            RateLimit::TokenBucket { rate, per, burst } => pb::rate_check::Algorithm::TokenBucket(pb::TokenBucket {
                rate,
                per_ms: millis(per),
                burst,
            }),
        };
        pb::RateCheck {
            key: c.key,
            cost: c.cost,
            algorithm: Some(algorithm),
        }
    }
}

impl From<pb::RateDecision> for RateDecision {
    fn from(d: pb::RateDecision) -> RateDecision {
        RateDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after: Duration::from_millis(d.retry_after_ms),
            reset_at_ms: d.reset_at_ms,
        }
    }
}

/// Rate limiting. Get one with [`Client::rate_limiter`].
#[derive(Clone)]
pub struct RateLimiter {
    pub(crate) client: Client,
}

impl RateLimiter {
    /// Sliding-window check: consumes `cost` units of `limit` per `window` if they are available.
    ///
    /// # Errors
    /// `OUT_OF_RANGE` for a limit or window of 0, or a cost above the limit.
    pub async fn check(
        &self,
        key: impl Into<Vec<u8>>,
        limit: u64,
        window: Duration,
        cost: u64,
    ) -> Result<RateDecision, ClientError> {
        let check = RateCheck {
            key: key.into(),
            limit: RateLimit::SlidingWindow { limit, window },
            cost,
        };
        self.check_one(check).await
    }

    /// Sliding-window check against every region's count ([`RateLimit::GlobalSlidingWindow`]).
    pub async fn check_global(
        &self,
        key: impl Into<Vec<u8>>,
        limit: u64,
        window: Duration,
        cost: u64,
    ) -> Result<RateDecision, ClientError> {
        let check = RateCheck {
            key: key.into(),
            limit: RateLimit::GlobalSlidingWindow { limit, window },
            cost,
        };
        self.check_one(check).await
    }

    /// Token-bucket check.
    pub async fn check_token_bucket(
        &self,
        key: impl Into<Vec<u8>>,
        rate: u64,
        per: Duration,
        burst: u64,
        cost: u64,
    ) -> Result<RateDecision, ClientError> {
        let check = RateCheck {
            key: key.into(),
            limit: RateLimit::TokenBucket { rate, per, burst },
            cost,
        };
        self.check_one(check).await
    }

    async fn check_one(&self, check: RateCheck) -> Result<RateDecision, ClientError> {
        let decisions = self.check_many(vec![check]).await?;
        decisions
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("no decision in reply".into()))
    }

    /// Many checks in one request (one Raft entry), decided in order; one decision per check.
    pub async fn check_many(&self, checks: Vec<RateCheck>) -> Result<Vec<RateDecision>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::RateCheckRequest {
            header: Some(header),
            checks: checks.into_iter().map(pb::RateCheck::from).collect(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(RateLimiterClient, c).check(r).await
            })
            .await?;
        Ok(reply.decisions.into_iter().map(RateDecision::from).collect())
    }
}
