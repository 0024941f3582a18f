//! Work queue types (SQS-like): what enqueue and receive carry, and what comes back.
//! The apply logic is in `apply/queue.rs`; the semantics in `docs/data-types/queue.md`.

use serde::{Deserialize, Serialize};

/// A queue's settings, given when it is created and changeable later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How long a received message stays invisible unless the receive asks otherwise.
    pub visibility_timeout_ms: u64,
    /// Deliveries after which an unacknowledged message moves to `dead_letter_queue`
    /// (0: redeliver forever).
    pub max_deliveries: u32,
    /// Where messages go after `max_deliveries`; required when `max_deliveries > 0`.
    pub dead_letter_queue: Option<Vec<u8>>,
    /// How long a `dedup_id` is remembered.
    pub dedup_window_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: 30_000,
            max_deliveries: 0,
            dead_letter_queue: None,
            dedup_window_ms: 5 * 60_000,
        }
    }
}

/// One message to enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub payload: Vec<u8>,
    /// A repeated id within the dedup window returns the first message's id and enqueues nothing.
    pub dedup_id: Option<Vec<u8>>,
    /// Invisible for this long after the enqueue.
    pub delay_ms: u64,
    /// Higher first; FIFO within a level.
    pub priority: u8,
}

/// Proof of one delivery: acks and nacks must present the receipt of the latest delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Receipt {
    pub message_id: u64,
    /// Which delivery of the message this receipt is for (1 for the first).
    pub delivery: u32,
}

impl Receipt {
    pub const BYTES: usize = 12;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.message_id.to_be_bytes().to_vec();
        out.extend_from_slice(&self.delivery.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Receipt> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        Some(Receipt {
            message_id: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            delivery: u32::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// What one enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnqueueOutcome {
    Enqueued {
        id: u64,
    },
    /// The dedup id was seen within the window: nothing enqueued; `id` is the first message's.
    Duplicate {
        id: u64,
    },
}

/// A message handed to a receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: Receipt,
    pub payload: Vec<u8>,
    pub priority: u8,
    pub enqueued_at_ms: u64,
    /// When it becomes visible again unless acknowledged.
    pub invisible_until_ms: u64,
}

/// A queue's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Messages in the queue (visible, delayed or in flight), not yet acknowledged.
    pub messages: u64,
    /// Of those, received and neither acknowledged nor back to visible.
    pub in_flight: u64,
}
