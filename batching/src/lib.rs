//! The queue behind write batching, shared by the SDK (which coalesces a client's concurrent KV
//! writes into one `Kv.Batch`) and the server (whose leader merges concurrent requests into one
//! log entry). Its own crate, so that neither links the other for it.
//!
//! Owns: batching order and bounds, and the byte budget of what waits. May not touch: the
//! network, Raft, or what an item means beyond its keys and size.
//!
//! Items wait while a bounded number of senders is busy; each sender takes everything queued,
//! in order and within limits, as its next batch. A [`QueueBudget`] bounds the bytes waiting or
//! on their way: a caller over it waits for room (backpressure) instead of growing the queue. Two items that write one key never share a
//! batch (their writes would share a revision): the later one waits for the next batch, behind
//! the earlier, so writes of a key keep their order.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Something that can be batched: the keys it writes and its size.
pub trait Batchable {
    /// Every key it writes.
    fn keys(&self) -> Vec<&[u8]>;
    /// Its number of writes, counted against [`BatchLimits::writes_max`].
    fn writes(&self) -> usize;
    /// Its bytes of keys and values, counted against [`BatchLimits::bytes_max`].
    fn bytes(&self) -> usize;
}

/// How large one batch may grow. A single item over a limit still leaves, alone.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub writes_max: usize,
    pub bytes_max: usize,
}

/// Bytes a queued item counts for beyond its keys and values (its reply channel, its key copy).
pub const ITEM_OVERHEAD_BYTES: usize = 256;

/// A bound on the bytes of the items waiting in a [`BatchQueue`] or in a batch on its way. Each
/// caller holds a [`QueuePermit`] for its item until its answer is back; a caller finding no
/// room waits for it. An item larger than the whole budget is admitted once nothing else holds
/// any of it.
///
/// Cancel safety: dropping [`QueueBudget::admit`]'s future while it waits takes nothing.
pub struct QueueBudget {
    room: tokio::sync::Semaphore,
    bytes_max: usize,
}

/// Room in a [`QueueBudget`], given back when dropped.
pub struct QueuePermit<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl QueueBudget {
    /// A budget of `bytes_max` bytes (at most `u32::MAX`).
    pub fn new(bytes_max: usize) -> QueueBudget {
        let bytes_max = bytes_max.min(u32::MAX as usize);
        QueueBudget {
            room: tokio::sync::Semaphore::new(bytes_max),
            bytes_max,
        }
    }

    /// Waits for room for an item of `bytes`, and holds it until the permit is dropped.
    pub async fn admit(&self, bytes: usize) -> QueuePermit<'_> {
        let cost = bytes.saturating_add(ITEM_OVERHEAD_BYTES).min(self.bytes_max).max(1);
        let permit = self
            .room
            .acquire_many(u32::try_from(cost).expect("cost capped at bytes_max, at most u32::MAX"))
            .await
            .expect("the budget's semaphore is never closed");
        QueuePermit { _permit: permit }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }
}

/// The queue of items waiting for a batch, and how many senders are draining it.
pub struct BatchQueue<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        BatchQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                senders: 0,
            }),
        }
    }
}

impl<T: Batchable> BatchQueue<T> {
    /// Queues an item. Returns true when the caller must start a sender: fewer than
    /// `senders_max` are running. Under the same lock as [`BatchQueue::take`], so an item is
    /// never left in the queue after the last sender has decided to stop.
    pub fn push(&self, item: T, senders_max: usize) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queue.push_back(item);
        if state.senders < senders_max {
            state.senders += 1;
            true
        } else {
            false
        }
    }

    /// The next batch: queued items in order, up to the limits, skipping items that write a key
    /// already in it (they stay queued, in order, for the next batch). Empty when the queue is:
    /// the calling sender must then stop, and is no longer counted.
    pub fn take(&self, limits: BatchLimits) -> Vec<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch: Vec<T> = Vec::new();
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        let (mut writes, mut bytes) = (0, 0);
        let mut left = VecDeque::new();
        while let Some(item) = state.queue.pop_front() {
            let full = !batch.is_empty()
                && (writes + item.writes() > limits.writes_max || bytes + item.bytes() > limits.bytes_max);
            if full {
                left.push_back(item);
                break;
            }
            let item_keys = item.keys();
            if item_keys.iter().any(|k| keys.contains(*k)) {
                left.push_back(item);
                continue;
            }
            keys.extend(item_keys.into_iter().map(<[u8]>::to_vec));
            writes += item.writes();
            bytes += item.bytes();
            batch.push(item);
        }
        left.append(&mut state.queue);
        state.queue = left;
        if batch.is_empty() {
            state.senders -= 1;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_makes_callers_wait_until_room_is_given_back() {
        let budget = QueueBudget::new(1000);
        let a = budget.admit(400 - ITEM_OVERHEAD_BYTES).await;
        let b = budget.admit(400 - ITEM_OVERHEAD_BYTES).await;
        assert_eq!(budget.available(), 200);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), budget.admit(300)).await;
        assert!(waiting.is_err(), "no room: the third caller waits");
        drop(a);
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), budget.admit(300))
            .await
            .expect("room given back");
        drop((b, c));
        // One item larger than the whole budget still goes, alone.
        let huge = tokio::time::timeout(std::time::Duration::from_secs(5), budget.admit(5000))
            .await
            .expect("admitted alone");
        assert_eq!(budget.available(), 0);
        drop(huge);
        assert_eq!(budget.available(), 1000);
    }

    /// An item writing `keys`, `bytes` bytes each.
    struct Item {
        keys: Vec<String>,
        bytes: usize,
    }

    impl Batchable for Item {
        fn keys(&self) -> Vec<&[u8]> {
            self.keys.iter().map(|k| k.as_bytes()).collect()
        }
        fn writes(&self) -> usize {
            self.keys.len()
        }
        fn bytes(&self) -> usize {
            self.bytes * self.keys.len()
        }
    }

    fn item(keys: &[&str], bytes: usize) -> Item {
        Item {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            bytes,
        }
    }

    const LIMITS: BatchLimits = BatchLimits {
        writes_max: 8,
        bytes_max: 100,
    };

    fn names(batch: &[Item]) -> Vec<String> {
        batch.iter().map(|i| i.keys.join("+")).collect()
    }

    #[test]
    fn the_first_items_start_senders_up_to_the_limit_and_the_rest_wait() {
        let queue = BatchQueue::default();
        assert!(queue.push(item(&["a"], 1), 2));
        assert!(queue.push(item(&["b"], 1), 2));
        assert!(!queue.push(item(&["c"], 1), 2), "two senders already run");
        assert_eq!(names(&queue.take(LIMITS)), ["a", "b", "c"]);
        assert!(
            queue.take(LIMITS).is_empty(),
            "the other sender finds nothing and stops"
        );
        assert!(queue.push(item(&["d"], 1), 2), "a slot is free again");
    }

    #[test]
    fn an_item_queued_while_the_last_sender_runs_is_taken_by_it() {
        let queue = BatchQueue::default();
        assert!(queue.push(item(&["a"], 1), 1));
        assert_eq!(names(&queue.take(LIMITS)), ["a"]);
        assert!(!queue.push(item(&["b"], 1), 1), "the sender is still counted");
        assert_eq!(names(&queue.take(LIMITS)), ["b"]);
        assert!(queue.take(LIMITS).is_empty());
        assert!(
            queue.push(item(&["c"], 1), 1),
            "every sender stopped: the next item starts one"
        );
    }

    #[test]
    fn items_sharing_a_key_leave_in_successive_batches_in_order() {
        let queue = BatchQueue::default();
        for keys in [&["k"][..], &["x"], &["y", "k"], &["z"], &["k"]] {
            queue.push(item(keys, 1), 1);
        }
        assert_eq!(names(&queue.take(LIMITS)), ["k", "x", "z"]);
        assert_eq!(names(&queue.take(LIMITS)), ["y+k"]);
        assert_eq!(names(&queue.take(LIMITS)), ["k"]);
        assert!(queue.take(LIMITS).is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_write_and_byte_limits_but_takes_one_oversized_item() {
        let queue = BatchQueue::default();
        queue.push(item(&["a", "b", "c", "d", "e"], 1), 1);
        queue.push(item(&["f", "g", "h", "i"], 1), 1);
        queue.push(item(&["j"], 1), 1);
        assert_eq!(names(&queue.take(LIMITS)), ["a+b+c+d+e"], "4 more writes would make 9");
        assert_eq!(names(&queue.take(LIMITS)), ["f+g+h+i", "j"]);

        queue.push(item(&["big"], 101), 1);
        queue.push(item(&["half1"], 50), 1);
        queue.push(item(&["half2"], 50), 1);
        queue.push(item(&["one"], 1), 1);
        assert_eq!(names(&queue.take(LIMITS)), ["big"]);
        assert_eq!(names(&queue.take(LIMITS)), ["half1", "half2"]);
        assert_eq!(names(&queue.take(LIMITS)), ["one"]);
    }
}
