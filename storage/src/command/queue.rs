//! The queue operations of a command and why one is refused. Their payloads (messages, settings,
//! receipts, deliveries) are in `crate::queue`.

use serde::{Deserialize, Serialize};

use crate::queue::{NewMessage, QueueConfig, Receipt};

/// The queue operations. Applied by `crate::apply::queue`; homed (they apply in the home region
/// only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueOp {
    /// Creates a queue, or changes its settings.
    Configure {
        queue: Vec<u8>,
        config: QueueConfig,
    },
    Enqueue {
        queue: Vec<u8>,
        messages: Vec<NewMessage>,
    },
    /// Hands out up to `max` visible messages, invisible for the visibility timeout.
    Receive {
        queue: Vec<u8>,
        max: u32,
        visibility_timeout_ms: Option<u64>,
    },
    Ack {
        queue: Vec<u8>,
        receipt: Receipt,
    },
    /// Gives a delivery back: visible again after `delay_ms`.
    Nack {
        queue: Vec<u8>,
        receipt: Receipt,
        delay_ms: u64,
    },
    /// Moves up to `max` dead-lettered messages back to the queues they came from.
    Redrive {
        queue: Vec<u8>,
        max: u32,
    },
    /// Forgets dedup ids whose window has passed. Proposed by the leader.
    DedupSweep {
        limit: u32,
    },
    /// Keeps an in-flight delivery invisible for `visibility_timeout_ms` more, counted from now
    /// (SQS's ChangeMessageVisibility): the receipt stays valid. A delivery whose visibility
    /// already lapsed is refused as stale.
    Extend {
        queue: Vec<u8>,
        receipt: Receipt,
        visibility_timeout_ms: u64,
    },
    /// Acknowledges many deliveries, each on its own: a stale receipt is answered as such and the
    /// others still take effect.
    AckBatch {
        queue: Vec<u8>,
        receipts: Vec<Receipt>,
    },
    /// Removes up to `limit` messages (visible, delayed or in flight) whose ids are at most
    /// `upto_id`, held to every message enqueued before this entry (also the value of `None`).
    /// Messages enqueued after the first purge entry are kept, as SQS's PurgeQueue keeps messages
    /// sent after it. Messages moved in meanwhile (dead-lettered here, or redriven back) keep
    /// their older ids and are removed by a later chunk if they are below the watermark.
    Purge {
        queue: Vec<u8>,
        upto_id: Option<u64>,
        limit: u32,
    },
    /// Deletes a queue: it is unknown from this entry on (its receipts go stale, its name leaves
    /// the list), and as many of its rows as one entry may remove are removed; the leader's
    /// [`QueueOp::ContinueDeletes`] entries remove the rest, and until then the name cannot be
    /// created again. Refused while another queue names it as its dead-letter queue.
    Delete {
        queue: Vec<u8>,
    },
    /// Goes on removing the rows of deleted queues, at most `limit`, taking the deletions in turn
    /// (each entry starts after the one the previous entry stopped in). Proposed by the leader.
    ContinueDeletes {
        limit: u32,
    },
    /// Builds the dead-letter indexes from the records, at most `limit` rows per entry: the
    /// references (which queues name each queue as their dead-letter queue; stale rows removed,
    /// then missing ones added), then each queue's dead letters. Deletions and redrives are
    /// refused (`IndexBuilding`) until it is done. Proposed by the home region's leader once, for
    /// queues written by a build that did not keep the indexes.
    BuildDeadLetterIndex {
        limit: u32,
    },
}

impl std::fmt::Display for QueueOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            QueueOp::Configure { queue, config } => write!(f, "queue configure {:?} {config:?}", lossy(queue)),
            QueueOp::Enqueue { queue, messages } => {
                write!(f, "queue enqueue {} into {:?}", messages.len(), lossy(queue))
            }
            QueueOp::Receive { queue, max, .. } => write!(f, "queue receive up to {max} from {:?}", lossy(queue)),
            QueueOp::Ack { queue, receipt } => write!(f, "queue ack {receipt:?} in {:?}", lossy(queue)),
            QueueOp::Nack {
                queue,
                receipt,
                delay_ms,
            } => write!(f, "queue nack {receipt:?} in {:?} (delay {delay_ms} ms)", lossy(queue)),
            QueueOp::Redrive { queue, max } => write!(f, "queue redrive up to {max} from {:?}", lossy(queue)),
            QueueOp::DedupSweep { limit } => write!(f, "queue dedup sweep (limit {limit})"),
            QueueOp::Extend {
                queue,
                receipt,
                visibility_timeout_ms,
            } => write!(
                f,
                "queue extend {receipt:?} in {:?} by {visibility_timeout_ms} ms",
                lossy(queue)
            ),
            QueueOp::AckBatch { queue, receipts } => {
                write!(f, "queue ack {} receipts in {:?}", receipts.len(), lossy(queue))
            }
            QueueOp::Purge { queue, upto_id, limit } => {
                write!(f, "queue purge {:?} up to id {upto_id:?} (limit {limit})", lossy(queue))
            }
            QueueOp::Delete { queue } => write!(f, "queue delete {:?}", lossy(queue)),
            QueueOp::ContinueDeletes { limit } => write!(f, "queue continue deletes (limit {limit})"),
            QueueOp::BuildDeadLetterIndex { limit } => write!(f, "queue build dead-letter index (limit {limit})"),
        }
    }
}

/// Why a queue operation was refused, beyond the checks every type shares ([`super::OpError`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    #[error("receipt for delivery {delivery} of message {message_id} is stale (latest delivery: {latest:?}); the message was redelivered, acknowledged or given back")]
    StaleReceipt {
        message_id: u64,
        delivery: u32,
        latest: Option<u32>,
    },
    /// Deleting a queue that another queue names as its dead-letter queue: that queue's
    /// exhausted messages would have nowhere to go. Configure `source` without it first.
    #[error("queue {queue:?} is the dead-letter queue of {source_queue:?}; configure that queue without it first")]
    DeadLetterInUse { queue: String, source_queue: String },
    /// Creating a queue whose earlier namesake is still being deleted: retry shortly.
    #[error("queue {queue:?} is being deleted; its name can be used again once its messages are removed")]
    BeingDeleted { queue: String },
    /// A deletion before the home region's leader has built the index of dead-letter references
    /// (once, after an upgrade or a move of the home): retry shortly.
    #[error(
        "queue {queue:?} cannot be deleted yet: the index of dead-letter references is being built; retry shortly"
    )]
    IndexBuilding { queue: String },
}
