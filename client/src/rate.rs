//! Rate limiting: atomic checks, one or many per request, and what a check does when the cluster
//! cannot be reached ([`WhenUnreachable`]), chosen per check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// What [`RateLimiter::check_with`] does when no node of the cluster answers within the request
/// timeout (`UNAVAILABLE`), or one answers without a decision it can stand by (an outcome-unknown
/// error: the cluster may have counted the check). Errors of the check itself (`OUT_OF_RANGE`,
/// ...) are returned whatever the policy. A check under a policy is sent alone, never in a
/// coalesced batch, so the policy answers after one request timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Return the error, as [`RateLimiter::check_many`] does.
    Error,
    /// Admit: availability over the limit (a login page, a read path).
    FailOpen,
    /// Refuse: the limit over availability (a paid API, an expensive job).
    FailClosed,
    /// Decide in this client with its share of the limit: every count (limit, rate, burst)
    /// divided by `instances` (at least 1), rounded down, with the cluster's algorithm on this
    /// process's clock; kept per key until it has expired by itself. Within one fixed window of
    /// its own clock an instance admits at most its share; the cluster does not see what
    /// instances admitted alone (see docs/data-types/rate-limit.md for the bound).
    LocalShare { instances: u32 },
}

/// Who decided a [`RateVerdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    Cluster,
    FailOpen,
    FailClosed,
    LocalShare,
}

/// A decision and who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateVerdict {
    pub decision: RateDecision,
    pub decided_by: DecidedBy,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    /// One check, decided by the cluster when it answers, else as `when_unreachable` says.
    ///
    /// # Errors
    /// The check's own refusals (`OUT_OF_RANGE`, ...) always; `UNAVAILABLE` only with
    /// [`WhenUnreachable::Error`].
    pub async fn check_with(
        &self,
        check: RateCheck,
        when_unreachable: WhenUnreachable,
    ) -> Result<RateVerdict, ClientError> {
        if when_unreachable == (WhenUnreachable::LocalShare { instances: 0 }) {
            return Err(ClientError::Rejected {
                code: crate::error::ErrorCode::InvalidArgument,
                message: "a local share needs instances >= 1".into(),
            });
        }
        let local = check.clone();
        // Under a policy, alone: behind other callers' batches an outage would answer after
        // several request timeouts instead of one.
        let answer = match when_unreachable {
            WhenUnreachable::Error => self.check_one(check).await,
            _ => self.check_many(vec![check]).await.and_then(|decisions| {
                decisions
                    .first()
                    .copied()
                    .ok_or_else(|| ClientError::Protocol("no decision in reply".into()))
            }),
        };
        match answer {
            Ok(decision) => Ok(RateVerdict {
                decision,
                decided_by: DecidedBy::Cluster,
            }),
            // No node answered, or one answered without a decision it could stand by: the
            // cluster cannot be relied on for this check.
            Err(unreachable @ (ClientError::Unavailable { .. } | ClientError::OutcomeUnknown { .. })) => {
                if when_unreachable == WhenUnreachable::Error {
                    return Err(unreachable);
                }
                // Decided here: refused first as the cluster would refuse it.
                if let Some(refused) = crate::rate_shadow::refusal(&local) {
                    return Err(refused);
                }
                let fixed = |allowed, decided_by| RateVerdict {
                    decision: RateDecision {
                        allowed,
                        remaining: 0,
                        // Not a hot retry loop while the cluster is away.
                        retry_after: if allowed {
                            Duration::ZERO
                        } else {
                            Duration::from_secs(1)
                        },
                        reset_at_ms: now_ms(),
                    },
                    decided_by,
                };
                Ok(match when_unreachable {
                    WhenUnreachable::Error | WhenUnreachable::FailClosed => fixed(false, DecidedBy::FailClosed),
                    WhenUnreachable::FailOpen => fixed(true, DecidedBy::FailOpen),
                    WhenUnreachable::LocalShare { instances } => RateVerdict {
                        decision: self
                            .client
                            .shadow()
                            .check(&local.key, local.limit, instances, local.cost, now_ms()),
                        decided_by: DecidedBy::LocalShare,
                    },
                })
            }
            Err(other) => Err(other),
        }
    }

    /// One check: in the client's next batch of checks when it coalesces them, else alone.
    async fn check_one(&self, check: RateCheck) -> Result<RateDecision, ClientError> {
        if self.client.coalesces_checks() {
            return crate::coalesce::submit_check(&self.client, check)
                .await
                .map(RateDecision::from);
        }
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
