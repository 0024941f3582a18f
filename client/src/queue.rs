//! Work queues (SQS-like): enqueue with dedup, delay and priority; receive with a visibility
//! timeout and long-poll; ack (one or a batch), nack and extend by receipt; dead-letter queues and
//! redrive; purge; list; delete.

use std::time::Duration;

use crate::client::{millis, Client, ReadConsistency};
use crate::error::ClientError;
use crate::pb;
use crate::pb::queue_client::QueueClient;

/// A queue's settings. Zero durations mean the server's defaults (30 s visibility, 5 min dedup).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueOptions {
    pub visibility_timeout: Duration,
    /// Deliveries after which a message moves to `dead_letter_queue` (0: redeliver forever).
    pub max_deliveries: u32,
    pub dead_letter_queue: Option<Vec<u8>>,
    pub dedup_window: Duration,
}

/// One message to enqueue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    pub payload: Vec<u8>,
    /// Within the queue's dedup window, a repeated id enqueues nothing and returns the first id.
    pub dedup_id: Option<Vec<u8>>,
    pub delay: Duration,
    /// Higher first; FIFO within a level.
    pub priority: u8,
}

impl NewMessage {
    pub fn new(payload: impl Into<Vec<u8>>) -> NewMessage {
        NewMessage {
            payload: payload.into(),
            ..NewMessage::default()
        }
    }

    pub fn dedup_id(mut self, id: impl Into<Vec<u8>>) -> NewMessage {
        self.dedup_id = Some(id.into());
        self
    }

    pub fn delay(mut self, delay: Duration) -> NewMessage {
        self.delay = delay;
        self
    }

    pub fn priority(mut self, priority: u8) -> NewMessage {
        self.priority = priority;
        self
    }
}

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub id: u64,
    /// The dedup id was seen in the window: nothing was enqueued; `id` is the first message's.
    pub duplicate: bool,
}

impl From<NewMessage> for pb::NewMessage {
    fn from(m: NewMessage) -> pb::NewMessage {
        pb::NewMessage {
            payload: m.payload,
            dedup_id: m.dedup_id.unwrap_or_default(),
            delay_ms: millis(m.delay),
            priority: u32::from(m.priority),
        }
    }
}

impl From<pb::EnqueueOutcome> for Enqueued {
    fn from(o: pb::EnqueueOutcome) -> Enqueued {
        Enqueued {
            id: o.id,
            duplicate: o.duplicate,
        }
    }
}

/// A delivered message. Ack or nack it with its `receipt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub receipt: Vec<u8>,
    pub payload: Vec<u8>,
    pub priority: u8,
    /// 1 for the first delivery.
    pub delivery: u32,
    pub enqueued_at_ms: u64,
    /// Unless acknowledged by then, the message becomes visible again at this time.
    pub invisible_until_ms: u64,
}

/// How a receive behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Zero: the queue's visibility timeout.
    pub visibility_timeout: Duration,
    /// Long-poll: wait up to this long for a message (zero: answer at once).
    pub wait: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u64,
    pub in_flight: u64,
    pub options: QueueOptions,
}

/// One receipt's answer in [`QueueHandle::ack_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckResult {
    Acked,
    /// Not acknowledged: the message was redelivered (its latest delivery is `Some`), or is gone
    /// (acknowledged or purged: `None`), since this receipt.
    Stale {
        latest_delivery: Option<u32>,
    },
}

/// A queue as listed by [`Client::list_queues`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: Vec<u8>,
    pub messages: u64,
    pub in_flight: u64,
}

impl Client {
    /// Every queue with its counts, paged through one request of up to 1000 at a time (each page
    /// linearizable; a queue created or removed meanwhile may or may not appear).
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        let mut queues = Vec::new();
        let mut after = Vec::new();
        loop {
            let message = pb::ListQueuesRequest {
                after: after.clone(),
                limit: 0,
                stale: false,
            };
            let reply = self
                .unary(false, message, |c, r| async move {
                    crate::service_client!(QueueClient, c).list_queues(r).await
                })
                .await?;
            let more = reply.more && !reply.queues.is_empty();
            for q in reply.queues {
                after.clone_from(&q.name);
                queues.push(QueueInfo {
                    name: q.name,
                    messages: q.messages,
                    in_flight: q.in_flight,
                });
            }
            if !more {
                return Ok(queues);
            }
        }
    }
}

/// One queue. Get one with [`Client::queue`].
#[derive(Clone)]
pub struct QueueHandle {
    pub(crate) client: Client,
    pub(crate) name: Vec<u8>,
}

impl QueueHandle {
    /// Creates the queue, or replaces its settings; returns whether it was created.
    pub async fn create(&self, options: QueueOptions) -> Result<bool, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CreateQueueRequest {
            header: Some(header),
            queue: self.name.clone(),
            config: Some(pb::QueueConfig {
                visibility_timeout_ms: millis(options.visibility_timeout),
                max_deliveries: options.max_deliveries,
                dead_letter_queue: options.dead_letter_queue.unwrap_or_default(),
                dedup_window_ms: millis(options.dedup_window),
            }),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).create_queue(r).await
            })
            .await?;
        Ok(reply.created)
    }

    /// Enqueues one message; returns its id. Acknowledged once durable on a majority.
    pub async fn enqueue(&self, payload: impl Into<Vec<u8>>) -> Result<u64, ClientError> {
        Ok(self.enqueue_message(NewMessage::new(payload)).await?.id)
    }

    pub async fn enqueue_message(&self, message: NewMessage) -> Result<Enqueued, ClientError> {
        let mut out = self.enqueue_batch(vec![message]).await?;
        out.pop()
            .ok_or_else(|| ClientError::Protocol("enqueue answered no outcome".into()))
    }

    /// Enqueues many messages in one Raft entry, in order; one outcome each.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such queue), `INVALID_ARGUMENT` (empty name, oversize message),
    /// `OUT_OF_RANGE` (delay), `BATCH_TOO_LARGE`: nothing is enqueued.
    pub async fn enqueue_batch(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::EnqueueRequest {
            header: Some(header),
            queue: self.name.clone(),
            messages: messages.into_iter().map(pb::NewMessage::from).collect(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).enqueue(r).await
            })
            .await?;
        Ok(reply.outcomes.into_iter().map(Enqueued::from).collect())
    }

    /// Receives up to `max` messages, highest priority first, waiting up to `options.wait` for
    /// one. Each stays invisible to other receivers until acked, nacked or timed out.
    pub async fn receive(&self, max: u32, options: ReceiveOptions) -> Result<Vec<Message>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::ReceiveRequest {
            header: Some(header),
            queue: self.name.clone(),
            max,
            visibility_timeout_ms: millis(options.visibility_timeout),
            wait_ms: millis(options.wait),
        };
        let reply = self
            .client
            .unary_waiting(true, message, options.wait, Duration::ZERO, |c, r| async move {
                crate::service_client!(QueueClient, c).receive(r).await
            })
            .await?;
        Ok(reply
            .messages
            .into_iter()
            .map(|m| Message {
                id: m.id,
                receipt: m.receipt,
                payload: m.payload,
                priority: u8::try_from(m.priority).unwrap_or(u8::MAX),
                delivery: m.delivery,
                enqueued_at_ms: m.enqueued_at_ms,
                invisible_until_ms: m.invisible_until_ms,
            })
            .collect())
    }

    /// Acknowledges a delivery: the message is gone.
    ///
    /// # Errors
    /// `STALE_RECEIPT` when the message was redelivered, acked or nacked since this receipt.
    pub async fn ack(&self, receipt: &[u8]) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::AckRequest {
            header: Some(header),
            queue: self.name.clone(),
            receipt: receipt.to_vec(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).ack(r).await
            })
            .await?;
        Ok(())
    }

    /// Gives a delivery back: visible again after `delay`.
    pub async fn nack(&self, receipt: &[u8], delay: Duration) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::NackRequest {
            header: Some(header),
            queue: self.name.clone(),
            receipt: receipt.to_vec(),
            delay_ms: millis(delay),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).nack(r).await
            })
            .await?;
        Ok(())
    }

    /// Keeps an in-flight delivery invisible for `visibility_timeout` more, counted from now (a
    /// worker still busy with it calls this before the timeout); returns the new invisible-until
    /// time (Unix ms). The receipt stays valid.
    ///
    /// # Errors
    /// `STALE_RECEIPT` when the message was redelivered, acked or nacked since this receipt;
    /// `OUT_OF_RANGE` for a timeout of zero or over 12 hours.
    pub async fn extend(&self, receipt: &[u8], visibility_timeout: Duration) -> Result<u64, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::ExtendRequest {
            header: Some(header),
            queue: self.name.clone(),
            receipt: receipt.to_vec(),
            visibility_timeout_ms: millis(visibility_timeout),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).extend(r).await
            })
            .await?;
        Ok(reply.invisible_until_ms)
    }

    /// Acknowledges many deliveries in one request, each on its own: one answer per receipt, in
    /// order; the current ones are acknowledged whatever the others are.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for no receipt or one that is not a receipt, `BATCH_TOO_LARGE` for more
    /// than 8190. Nothing is acknowledged then.
    pub async fn ack_batch(&self, receipts: &[Vec<u8>]) -> Result<Vec<AckResult>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::AckBatchRequest {
            header: Some(header),
            queue: self.name.clone(),
            receipts: receipts.to_vec(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(QueueClient, c).ack_batch(r).await
            })
            .await?;
        if reply.results.len() != receipts.len() {
            return Err(ClientError::Protocol(format!(
                "{} answers to {} receipts",
                reply.results.len(),
                receipts.len()
            )));
        }
        Ok(reply
            .results
            .into_iter()
            .map(|r| match r.acked {
                true => AckResult::Acked,
                false => AckResult::Stale {
                    latest_delivery: r.latest_delivery,
                },
            })
            .collect())
    }

    /// Removes every message enqueued before this call (visible, delayed or in flight; receipts
    /// of those in flight go stale), in entries of up to 4096 messages; returns how many it
    /// removed. Messages enqueued meanwhile are kept.
    pub async fn purge(&self) -> Result<u64, ClientError> {
        let mut upto_id = 0;
        let mut removed = 0u64;
        loop {
            let (header, _guard) = self.client.header();
            let message = pb::PurgeRequest {
                header: Some(header),
                queue: self.name.clone(),
                upto_id,
                limit: 0,
            };
            let reply = self
                .client
                .unary(true, message, |c, r| async move {
                    crate::service_client!(QueueClient, c).purge(r).await
                })
                .await?;
            removed += u64::from(reply.removed);
            upto_id = reply.upto_id;
            if !reply.more {
                return Ok(removed);
            }
        }
    }

    /// Deletes the queue with its messages (in flight too: their receipts go stale) and dedup
    /// ids. It is unknown (`NOT_FOUND`) from the answer on and leaves the list; a large queue's
    /// messages are removed in the background (up to about 65,000 rows a second, taken in turn
    /// with other deletions), and until they are,
    /// creating the name again is refused with `QUEUE_BEING_DELETED` (retry later). Returns
    /// whether everything was removed already. Messages it dead-lettered stay in its dead-letter
    /// queue; a redrive leaves them there unless a queue of this name exists again by then.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such queue, or deleted already), `QUEUE_IN_USE` (another queue names it
    /// as its dead-letter queue: configure that one without it first), `QUEUE_INDEX_BUILDING`
    /// (the home region is still building its dead-letter indexes, once, on queues an older
    /// build wrote: retried here for up to [`crate::limits::QUEUE_INDEX_WAIT_MS`]).
    pub async fn delete(&self) -> Result<bool, ClientError> {
        let reply = while_index_builds(|| async {
            let (header, _guard) = self.client.header();
            let message = pb::DeleteQueueRequest {
                header: Some(header),
                queue: self.name.clone(),
            };
            self.client
                .unary(true, message, |c, r| async move {
                    crate::service_client!(QueueClient, c).delete_queue(r).await
                })
                .await
        })
        .await?;
        Ok(reply.finished)
    }

    /// On a dead-letter queue: moves up to `max` dead letters back to the queues they came from,
    /// oldest first, and answers how many moved. Messages enqueued into it directly stay, and so
    /// do dead letters in flight and those whose source queue is gone. One call looks at up to
    /// 4000 dead letters or 16 MiB of them: call again until it answers 0. Waits out
    /// `QUEUE_INDEX_BUILDING` as [`QueueHandle::delete`] does.
    pub async fn redrive(&self, max: u32) -> Result<u32, ClientError> {
        let reply = while_index_builds(|| async {
            let (header, _guard) = self.client.header();
            let message = pb::RedriveRequest {
                header: Some(header),
                queue: self.name.clone(),
                max,
            };
            self.client
                .unary(true, message, |c, r| async move {
                    crate::service_client!(QueueClient, c).redrive(r).await
                })
                .await
        })
        .await?;
        Ok(reply.moved)
    }

    pub async fn stats(&self, consistency: ReadConsistency) -> Result<QueueStats, ClientError> {
        let message = pb::QueueStatsRequest {
            queue: self.name.clone(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(QueueClient, c).stats(r).await
            })
            .await?;
        let config = reply.config.unwrap_or_default();
        Ok(QueueStats {
            messages: reply.messages,
            in_flight: reply.in_flight,
            options: QueueOptions {
                visibility_timeout: Duration::from_millis(config.visibility_timeout_ms),
                max_deliveries: config.max_deliveries,
                dead_letter_queue: (!config.dead_letter_queue.is_empty()).then_some(config.dead_letter_queue),
                dedup_window: Duration::from_millis(config.dedup_window_ms),
            },
        })
    }
}

/// Calls `call` again while the home region builds its dead-letter indexes
/// (`QUEUE_INDEX_BUILDING`, once, on queues a build before the indexes wrote), for up to
/// [`crate::limits::QUEUE_INDEX_WAIT_MS`]. Each call is a new request (a new session sequence):
/// the refusal of the last one is its saved answer, which a retry of it would only read back.
async fn while_index_builds<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(crate::limits::QUEUE_INDEX_WAIT_MS);
    loop {
        match call().await {
            Err(e)
                if e.code() == Some(crate::ErrorCode::QueueIndexBuilding) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(crate::limits::QUEUE_INDEX_RETRY_MS)).await;
            }
            answer => return answer,
        }
    }
}
