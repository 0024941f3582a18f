//! The lease service: acquire (optionally waiting), renew, release, get.

use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::lease_server::Lease;
use basalt_storage::apply::lease::{self, LeaseRecord};
use basalt_storage::command::{LeaseOp, LeaseOutcome, Op, Response};
use tokio::time::Instant;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{storage_status, unexpected_result, Api};
use crate::limits::{LEASE_WAIT_MAX, LEASE_WAIT_POLL};

pub(super) fn lease_response(outcome: LeaseOutcome) -> Result<pb::LeaseResponse, Status> {
    match outcome {
        LeaseOutcome::Granted { token, expires_at_ms } => Ok(pb::LeaseResponse {
            granted: true,
            token,
            expires_at_ms,
            holder: Vec::new(),
        }),
        LeaseOutcome::Held { holder, expires_at_ms } => Ok(pb::LeaseResponse {
            granted: false,
            token: 0,
            expires_at_ms,
            holder,
        }),
        other @ LeaseOutcome::Released { .. } => Err(unexpected_result(&Response::Lease(other))),
    }
}

pub(super) fn released_reply(response: Response) -> Result<pb::LeaseReleaseResponse, Status> {
    match response {
        Response::Lease(LeaseOutcome::Released { was_live }) => Ok(pb::LeaseReleaseResponse { was_live }),
        other => Err(unexpected_result(&other)),
    }
}

impl Api {
    fn local_lease(&self, name: &[u8]) -> Result<Option<LeaseRecord>, Status> {
        // One key, judged by the caller: no view or applied time needed.
        lease::record(&self.store, name).map_err(storage_status)
    }
}

#[tonic::async_trait]
impl Lease for Api {
    async fn acquire(
        &self,
        request: Request<pb::LeaseAcquireRequest>,
    ) -> Result<GrpcResponse<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(r.wait_ms).min(LEASE_WAIT_MAX);
        let op = Op::Lease(LeaseOp::Acquire {
            name: r.name.clone(),
            holder: r.holder.clone(),
            ttl_ms: r.ttl_ms,
        });
        // Only the first attempt carries the request's session. Later attempts go without one:
        // acquire is re-entrant for its holder, so a repeated grant returns the same token.
        let mut header = r.header;
        loop {
            let outcome = match self.write(header.take(), op.clone()).await? {
                Response::Lease(outcome) => outcome,
                other => return Err(unexpected_result(&other)),
            };
            let held_until = match &outcome {
                LeaseOutcome::Held { expires_at_ms, .. } if Instant::now() < deadline => *expires_at_ms,
                _ => return Ok(GrpcResponse::new(lease_response(outcome)?)),
            };
            // Wait until it expires or is released (seen in this replica's state), or the deadline.
            loop {
                let now_ms = self.clock.now().physical_ms();
                let until_expiry = Duration::from_millis(held_until.saturating_sub(now_ms));
                tokio::time::sleep(until_expiry.min(LEASE_WAIT_POLL)).await;
                if *self.stopping.borrow() {
                    // The node is stopping: the client asks another node, where the request's
                    // session answers its first attempt again and the wait goes on (an acquire
                    // is re-entrant for its holder, so a grant made meanwhile comes back as is).
                    return Err(super::status(
                        basalt_client::ErrorCode::Unavailable,
                        "the node is stopping",
                    ));
                }
                let still_held = self
                    .local_lease(&r.name)?
                    .is_some_and(|l| l.is_live_at(self.clock.now().physical_ms()) && l.holder != r.holder);
                if !still_held || Instant::now() >= deadline {
                    break;
                }
            }
        }
    }

    async fn renew(&self, request: Request<pb::LeaseRenewRequest>) -> Result<GrpcResponse<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Lease(LeaseOp::Renew {
            name: r.name,
            holder: r.holder,
            token: r.token,
            ttl_ms: r.ttl_ms,
        });
        match self.write(r.header, op).await? {
            Response::Lease(outcome) => Ok(GrpcResponse::new(lease_response(outcome)?)),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::LeaseReleaseRequest>,
    ) -> Result<GrpcResponse<pb::LeaseReleaseResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Lease(LeaseOp::Release {
            name: r.name,
            holder: r.holder,
            token: r.token,
        });
        Ok(GrpcResponse::new(released_reply(self.write(r.header, op).await?)?))
    }

    async fn get(&self, request: Request<pb::LeaseGetRequest>) -> Result<GrpcResponse<pb::LeaseResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.name)?;
        self.read_barrier(r.stale).await?;
        // The grant and the time it is judged at, from one view (`apply::lease::get`).
        let mut read = lease::get(&self.store, &r.name).map_err(storage_status)?;
        if self
            .settle_expiry(r.stale, read.judged_at_ms, [read.expiry()])
            .await?
            .is_some()
        {
            read = lease::get(&self.store, &r.name).map_err(storage_status)?;
        }
        let reply = match read.live() {
            None => pb::LeaseResponse::default(),
            Some(l) => pb::LeaseResponse {
                granted: true,
                token: l.token,
                expires_at_ms: l.expires_at_ms,
                holder: l.holder,
            },
        };
        Ok(GrpcResponse::new(reply))
    }
}
