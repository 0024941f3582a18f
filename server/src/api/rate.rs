//! The rate-limiter service: batched atomic checks.

use basalt_client::pb;
use basalt_client::pb::rate_limiter_server::RateLimiter;
use basalt_client::ErrorCode;
use basalt_storage::command::{Op, RateCheck, RateLimit, RateOp, Response};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{status, unexpected_result, Api};

pub(super) fn check_of(check: pb::RateCheck) -> Result<RateCheck, Status> {
    let limit = match check.algorithm {
        Some(pb::rate_check::Algorithm::SlidingWindow(w)) => RateLimit::SlidingWindow {
            limit: w.limit,
            window_ms: w.window_ms,
        },
        Some(pb::rate_check::Algorithm::GlobalSlidingWindow(w)) => RateLimit::GlobalSlidingWindow {
            limit: w.limit,
            window_ms: w.window_ms,
        },
        Some(pb::rate_check::Algorithm::TokenBucket(b)) => RateLimit::TokenBucket {
            rate: b.rate,
            per_ms: b.per_ms,
            burst: b.burst,
        },
        None => {
            return Err(status(
                ErrorCode::InvalidArgument,
                "a rate check needs sliding_window, global_sliding_window or token_bucket",
            ))
        }
    };
    Ok(RateCheck {
        key: check.key,
        limit,
        cost: check.cost,
    })
}

#[tonic::async_trait]
impl RateLimiter for Api {
    async fn check(
        &self,
        request: Request<pb::RateCheckRequest>,
    ) -> Result<GrpcResponse<pb::RateCheckResponse>, Status> {
        let r = request.into_inner();
        let checks = r.checks.into_iter().map(check_of).collect::<Result<_, _>>()?;
        let response = self.write(r.header, Op::Rate(RateOp::Check { checks })).await?;
        Ok(GrpcResponse::new(decisions_reply(response)?))
    }
}

pub(super) fn decisions_reply(response: Response) -> Result<pb::RateCheckResponse, Status> {
    match response {
        Response::RateDecisions(decisions) => Ok(pb::RateCheckResponse {
            decisions: decisions
                .into_iter()
                .map(|d| pb::RateDecision {
                    allowed: d.allowed,
                    remaining: d.remaining,
                    retry_after_ms: d.retry_after_ms,
                    reset_at_ms: d.reset_at_ms,
                })
                .collect(),
        }),
        other => Err(unexpected_result(&other)),
    }
}
