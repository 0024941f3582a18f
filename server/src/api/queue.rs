//! The queue service: create, enqueue, receive (long-poll), ack (one or a batch), nack, extend,
//! redrive, purge, stats, list, delete.

use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::queue_server::Queue;
use basalt_client::ErrorCode;
use basalt_storage::apply::queue::{has_visible, list_queues, stored_queue};
use basalt_storage::command::{Op, QueueError, QueueOp, Response};
use basalt_storage::limits::PURGE_MESSAGES_MAX;
use basalt_storage::queue::{EnqueueOutcome, NewMessage, QueueConfig, Receipt};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{header_of, op_error_status, status, storage_status, unexpected_result, Api};

fn config_of(c: Option<pb::QueueConfig>) -> QueueConfig {
    let defaults = QueueConfig::default();
    let Some(c) = c else { return defaults };
    QueueConfig {
        visibility_timeout_ms: if c.visibility_timeout_ms == 0 {
            defaults.visibility_timeout_ms
        } else {
            c.visibility_timeout_ms
        },
        max_deliveries: c.max_deliveries,
        dead_letter_queue: (!c.dead_letter_queue.is_empty()).then_some(c.dead_letter_queue),
        dedup_window_ms: if c.dedup_window_ms == 0 {
            defaults.dedup_window_ms
        } else {
            c.dedup_window_ms
        },
    }
}

fn receipt_of(bytes: &[u8]) -> Result<Receipt, Status> {
    Receipt::decode(bytes).ok_or_else(|| {
        status(
            ErrorCode::InvalidArgument,
            format!("a receipt is {} bytes, got {}", Receipt::BYTES, bytes.len()),
        )
    })
}

fn priority_of(p: u32) -> Result<u8, Status> {
    u8::try_from(p).map_err(|_| status(ErrorCode::OutOfRange, format!("priority must be 0..=255, got {p}")))
}

/// An enqueue as the state machine takes it (the request's header aside).
pub(super) fn enqueue_op(r: pb::EnqueueRequest) -> Result<Op, Status> {
    let messages = r
        .messages
        .into_iter()
        .map(|m| {
            Ok(NewMessage {
                payload: m.payload,
                dedup_id: (!m.dedup_id.is_empty()).then_some(m.dedup_id),
                delay_ms: m.delay_ms,
                priority: priority_of(m.priority)?,
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(Op::Queue(QueueOp::Enqueue {
        queue: r.queue,
        messages,
    }))
}

pub(super) fn enqueued_reply(response: Response) -> Result<pb::EnqueueResponse, Status> {
    match response {
        Response::Enqueued(outcomes) => Ok(pb::EnqueueResponse {
            outcomes: outcomes
                .into_iter()
                .map(|o| match o {
                    EnqueueOutcome::Enqueued { id } => pb::EnqueueOutcome { id, duplicate: false },
                    EnqueueOutcome::Duplicate { id } => pb::EnqueueOutcome { id, duplicate: true },
                })
                .collect(),
        }),
        other => Err(unexpected_result(&other)),
    }
}

pub(super) fn ack_op(r: pb::AckRequest) -> Result<Op, Status> {
    Ok(Op::Queue(QueueOp::Ack {
        queue: r.queue,
        receipt: receipt_of(&r.receipt)?,
    }))
}

pub(super) fn nack_op(r: pb::NackRequest) -> Result<Op, Status> {
    Ok(Op::Queue(QueueOp::Nack {
        queue: r.queue,
        receipt: receipt_of(&r.receipt)?,
        delay_ms: r.delay_ms,
    }))
}

/// The answer of an ack or a nack.
pub(super) fn done_reply(response: Response) -> Result<pb::AckResponse, Status> {
    match response {
        Response::QueueDone => Ok(pb::AckResponse {}),
        other => Err(unexpected_result(&other)),
    }
}

#[tonic::async_trait]
impl Queue for Api {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<GrpcResponse<pb::CreateQueueResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Queue(QueueOp::Configure {
            queue: r.queue,
            config: config_of(r.config),
        });
        match self.write(r.header, op).await? {
            Response::QueueConfigured { created } => Ok(GrpcResponse::new(pb::CreateQueueResponse { created })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn enqueue(&self, request: Request<pb::EnqueueRequest>) -> Result<GrpcResponse<pb::EnqueueResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        let response = self.write(header, enqueue_op(r)?).await?;
        Ok(GrpcResponse::new(enqueued_reply(response)?))
    }

    async fn receive(&self, request: Request<pb::ReceiveRequest>) -> Result<GrpcResponse<pb::ReceiveResponse>, Status> {
        let r = request.into_inner();
        let (mut session, fence) = header_of(r.header)?;
        let op = Op::Queue(QueueOp::Receive {
            queue: r.queue.clone(),
            max: r.max,
            visibility_timeout_ms: (r.visibility_timeout_ms > 0).then_some(r.visibility_timeout_ms),
        });
        basalt_storage::apply::validate_op(&op).map_err(|e| op_error_status(&e))?;
        // Waiting happens on the leader's own state, which is current: a follower would wait on
        // a lagging copy.
        self.ensure_leader()?;
        stored_queue(&self.store, &r.queue)
            .map_err(storage_status)?
            .map_err(|e| op_error_status(&e))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms).min(super::WAIT_MAX);
        // A retry of a receive that was applied before (its answer lost to a failover or a
        // node's stop) proposes as soon as this node has applied it, and gets that answer back:
        // the messages it delivered are invisible now, so waiting for visible ones would hold
        // them from their receiver until the wait ran out. (A new leader may apply the old
        // leader's entry a moment after the retry arrives: the wait looks again at each apply.)
        let answered = |session: &Option<basalt_storage::command::Session>| match session {
            Some(s) => basalt_storage::apply::session_answered(&self.store, s).map_err(storage_status),
            None => Ok(false),
        };
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let visible = self
                .wait_until(remaining, || {
                    // A queue deleted meanwhile ends the wait: the receive below answers NOT_FOUND.
                    let gone = stored_queue(&self.store, &r.queue).map_err(storage_status)?.is_err();
                    Ok(gone
                        || answered(&session)?
                        || has_visible(&self.store, &r.queue, self.clock.now().physical_ms())
                            .map_err(storage_status)?)
                })
                .await?;
            // Only the first attempt carries the session: a retry of this request gets its
            // messages back, while later attempts of this long-poll are new receives. A later
            // attempt is not made by a stopping node: an answer lost to its stop could not be
            // replayed, and the messages would stay hidden until their visibility timeout.
            if session.is_none() && *self.stopping.borrow() {
                return Err(status(ErrorCode::Unavailable, "the node is stopping"));
            }
            let response = self.propose(session.take(), fence.clone(), op.clone()).await?;
            let Response::Received(deliveries) = response else {
                return Err(unexpected_result(&response));
            };
            if !deliveries.is_empty() || !visible || tokio::time::Instant::now() >= deadline {
                return Ok(GrpcResponse::new(pb::ReceiveResponse {
                    messages: deliveries
                        .into_iter()
                        .map(|d| pb::QueueMessage {
                            id: d.receipt.message_id,
                            receipt: d.receipt.encode(),
                            payload: d.payload,
                            priority: u32::from(d.priority),
                            delivery: d.receipt.delivery,
                            enqueued_at_ms: d.enqueued_at_ms,
                            invisible_until_ms: d.invisible_until_ms,
                        })
                        .collect(),
                }));
            }
            // Another receiver took what we saw: wait again.
        }
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<GrpcResponse<pb::AckResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        Ok(GrpcResponse::new(done_reply(self.write(header, ack_op(r)?).await?)?))
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<GrpcResponse<pb::AckResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        Ok(GrpcResponse::new(done_reply(self.write(header, nack_op(r)?).await?)?))
    }

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<GrpcResponse<pb::RedriveResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Queue(QueueOp::Redrive {
            queue: r.queue,
            max: r.max,
        });
        match self.write(r.header, op).await? {
            Response::Redriven { moved } => Ok(GrpcResponse::new(pb::RedriveResponse { moved })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn stats(
        &self,
        request: Request<pb::QueueStatsRequest>,
    ) -> Result<GrpcResponse<pb::QueueStatsResponse>, Status> {
        let r = request.into_inner();
        basalt_storage::apply::queue::check_name("queue name", &r.queue).map_err(|e| op_error_status(&e))?;
        self.read_barrier(r.stale).await?;
        let record = stored_queue(&self.store, &r.queue)
            .map_err(storage_status)?
            .map_err(|e| op_error_status(&e))?;
        Ok(GrpcResponse::new(pb::QueueStatsResponse {
            messages: record.stats.messages,
            in_flight: record.stats.in_flight,
            config: Some(pb::QueueConfig {
                visibility_timeout_ms: record.config.visibility_timeout_ms,
                max_deliveries: record.config.max_deliveries,
                dead_letter_queue: record.config.dead_letter_queue.unwrap_or_default(),
                dedup_window_ms: record.config.dedup_window_ms,
            }),
        }))
    }

    async fn extend(&self, request: Request<pb::ExtendRequest>) -> Result<GrpcResponse<pb::ExtendResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Queue(QueueOp::Extend {
            queue: r.queue,
            receipt: receipt_of(&r.receipt)?,
            visibility_timeout_ms: r.visibility_timeout_ms,
        });
        match self.write(r.header, op).await? {
            Response::QueueExtended { invisible_until_ms } => {
                Ok(GrpcResponse::new(pb::ExtendResponse { invisible_until_ms }))
            }
            other => Err(unexpected_result(&other)),
        }
    }

    async fn ack_batch(
        &self,
        request: Request<pb::AckBatchRequest>,
    ) -> Result<GrpcResponse<pb::AckBatchResponse>, Status> {
        let r = request.into_inner();
        let receipts = r.receipts.iter().map(|b| receipt_of(b)).collect::<Result<_, _>>()?;
        let op = Op::Queue(QueueOp::AckBatch {
            queue: r.queue,
            receipts,
        });
        match self.write(r.header, op).await? {
            Response::QueueAcked(answers) => Ok(GrpcResponse::new(pb::AckBatchResponse {
                results: answers
                    .into_iter()
                    .map(|answer| match answer {
                        None => Ok(pb::AckResult {
                            acked: true,
                            latest_delivery: None,
                        }),
                        Some(QueueError::StaleReceipt { latest, .. }) => Ok(pb::AckResult {
                            acked: false,
                            latest_delivery: latest,
                        }),
                        // A batch answers each receipt as acked or stale; anything else refuses
                        // the whole batch in the apply logic and cannot be a per-receipt answer.
                        Some(other) => Err(op_error_status(&basalt_storage::command::OpError::Queue(other))),
                    })
                    .collect::<Result<_, _>>()?,
            })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn purge(&self, request: Request<pb::PurgeRequest>) -> Result<GrpcResponse<pb::PurgeResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Queue(QueueOp::Purge {
            queue: r.queue,
            upto_id: (r.upto_id > 0).then_some(r.upto_id),
            limit: if r.limit == 0 { PURGE_MESSAGES_MAX } else { r.limit },
        });
        match self.write(r.header, op).await? {
            Response::QueuePurged { removed, more, upto_id } => {
                Ok(GrpcResponse::new(pb::PurgeResponse { removed, more, upto_id }))
            }
            other => Err(unexpected_result(&other)),
        }
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<GrpcResponse<pb::DeleteQueueResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Queue(QueueOp::Delete { queue: r.queue });
        match self.write(r.header, op).await? {
            Response::QueueDeleted { finished } => Ok(GrpcResponse::new(pb::DeleteQueueResponse { finished })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<GrpcResponse<pb::ListQueuesResponse>, Status> {
        let r = request.into_inner();
        if !r.after.is_empty() {
            basalt_storage::apply::queue::check_name("queue name", &r.after).map_err(|e| op_error_status(&e))?;
        }
        self.read_barrier(r.stale).await?;
        let limit = if r.limit == 0 { u32::MAX } else { r.limit };
        let (queues, more) = list_queues(&self.store, &r.after, limit).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::ListQueuesResponse {
            queues: queues
                .into_iter()
                .map(|(name, record)| pb::QueueInfo {
                    name,
                    messages: record.stats.messages,
                    in_flight: record.stats.in_flight,
                })
                .collect(),
            more,
        }))
    }
}
