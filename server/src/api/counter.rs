//! The counter service: batched increments (with bounds, or into windows), resets and deletes;
//! batched reads, and reads of a range of windows.

use basalt_client::pb;
use basalt_client::pb::counter_server::Counter;
use basalt_client::ErrorCode;
use basalt_storage::apply::check_batch;
use basalt_storage::apply::{counter, counter_window};
use basalt_storage::command::{CounterAction, CounterOp, CounterOutcome, Op, Response};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{op_error_status, status, storage_status, unexpected_result, Api};

impl Api {
    pub(super) fn counter_op_of(&self, op: pb::CounterOp) -> Result<CounterOp, Status> {
        let action = match op.action {
            Some(pb::counter_op::Action::Transfer(t)) => CounterAction::Transfer {
                to: self.region_id(&t.to_region)?,
                amount: t.amount,
                min: t.min,
                max: t.max,
            },
            other => {
                return counter_op_of(pb::CounterOp {
                    key: op.key,
                    action: other,
                })
            }
        };
        Ok(CounterOp { key: op.key, action })
    }

    /// The id of the remote region named `name`.
    fn region_id(&self, name: &str) -> Result<u16, Status> {
        let Some(repl) = &self.replication else {
            return Err(status(
                ErrorCode::InvalidArgument,
                "escrow moves between regions; this node is not configured for regions (--region)",
            ));
        };
        repl.topology()
            .and_then(|t| t.id_of(name).filter(|id| *id != t.this))
            .ok_or_else(|| {
                status(
                    ErrorCode::UnknownRegion,
                    format!(
                        "{name:?} is not another region in the topology of this one ({:?})",
                        repl.config.name
                    ),
                )
            })
    }
}

fn counter_op_of(op: pb::CounterOp) -> Result<CounterOp, Status> {
    let action = match op.action {
        Some(pb::counter_op::Action::IncrExpiring(incr)) => CounterAction::IncrExpiring {
            delta: incr.delta,
            min: incr.min,
            max: incr.max,
            ttl_ms: incr.ttl_ms,
        },
        Some(pb::counter_op::Action::Incr(incr)) => CounterAction::Incr {
            delta: incr.delta,
            min: incr.min,
            max: incr.max,
        },
        Some(pb::counter_op::Action::Set(value)) => CounterAction::Set { value },
        Some(pb::counter_op::Action::Window(w)) => CounterAction::Window {
            delta: w.delta,
            window_ms: w.window_ms,
            retention_ms: w.retention_ms,
            at_ms: w.at_ms,
        },
        Some(pb::counter_op::Action::Delete(pb::CounterDelete {})) => CounterAction::Delete,
        Some(pb::counter_op::Action::Transfer(_)) | None => {
            return Err(status(
                ErrorCode::InvalidArgument,
                "a counter op needs incr, incr_expiring, set, transfer, window or delete",
            ))
        }
    };
    Ok(CounterOp { key: op.key, action })
}

pub(super) fn counters_reply(response: Response) -> Result<pb::CounterApplyResponse, Status> {
    match response {
        Response::Counters(outcomes) => Ok(pb::CounterApplyResponse {
            outcomes: outcomes.into_iter().map(outcome_of).collect(),
        }),
        other => Err(unexpected_result(&other)),
    }
}

fn outcome_of(outcome: CounterOutcome) -> pb::CounterOutcome {
    use pb::counter_outcome::Status as S;
    let mut reply = pb::CounterOutcome::default();
    let status = match outcome {
        CounterOutcome::Applied { value } => {
            reply.value = value;
            S::Applied
        }
        CounterOutcome::BoundExceeded { value } => {
            reply.value = value;
            S::BoundExceeded
        }
        CounterOutcome::Overflow { value } => {
            reply.value = value;
            S::Overflow
        }
        CounterOutcome::EscrowExceeded { value, balance } => {
            (reply.value, reply.balance) = (value, balance);
            S::EscrowExceeded
        }
        CounterOutcome::TooLate {
            window_start_ms,
            oldest_kept_ms,
        } => {
            (reply.event_ms, reply.accepted_ms) = (window_start_ms, oldest_kept_ms);
            S::TooLate
        }
        CounterOutcome::TooEarly {
            at_ms,
            latest_accepted_ms,
        } => {
            (reply.event_ms, reply.accepted_ms) = (at_ms, latest_accepted_ms);
            S::TooEarly
        }
    };
    reply.status = status as i32;
    reply
}

#[tonic::async_trait]
impl Counter for Api {
    async fn apply(
        &self,
        request: Request<pb::CounterApplyRequest>,
    ) -> Result<GrpcResponse<pb::CounterApplyResponse>, Status> {
        let r = request.into_inner();
        let ops = r
            .ops
            .into_iter()
            .map(|op| self.counter_op_of(op))
            .collect::<Result<_, _>>()?;
        Ok(GrpcResponse::new(counters_reply(
            self.write(r.header, Op::Counter { ops }).await?,
        )?))
    }

    async fn get(
        &self,
        request: Request<pb::CounterGetRequest>,
    ) -> Result<GrpcResponse<pb::CounterGetResponse>, Status> {
        let r = request.into_inner();
        check_batch(r.keys.len()).map_err(|e| op_error_status(&e))?;
        for key in &r.keys {
            Self::check_key(key)?;
        }
        self.read_barrier(r.stale).await?;
        // One view: a multi-key read sees every counter as of the same applied entry.
        let (mut reads, judged_at_ms) = counter::read_counters(&self.store, &r.keys).map_err(storage_status)?;
        // An expiry due by the clock but not yet applied is settled through the log first, as
        // for KV TTLs, so no later read finds the counter live again.
        let expiries = reads.iter().map(|read| read.expires_at_ms).collect::<Vec<_>>();
        if self.settle_expiry(r.stale, judged_at_ms, expiries).await?.is_some() {
            (reads, _) = counter::read_counters(&self.store, &r.keys).map_err(storage_status)?;
        }
        Ok(GrpcResponse::new(pb::CounterGetResponse {
            values: reads.iter().map(|read| read.value).collect(),
            expires_at_ms: reads.iter().map(|read| read.expires_at_ms.unwrap_or(0)).collect(),
        }))
    }

    async fn windows(
        &self,
        request: Request<pb::CounterWindowsRequest>,
    ) -> Result<GrpcResponse<pb::CounterWindowsResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.key)?;
        counter_window::check_read(r.window_ms, r.from_ms, r.to_ms).map_err(|e| op_error_status(&e))?;
        self.read_barrier(r.stale).await?;
        let read =
            counter_window::read(&self.store, &r.key, r.window_ms, r.from_ms, r.to_ms).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::CounterWindowsResponse {
            windows: read
                .windows
                .into_iter()
                .map(|(start_ms, value)| pb::CounterWindowValue { start_ms, value })
                .collect(),
            sum: read.sum,
        }))
    }
}
