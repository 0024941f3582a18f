//! The group-commit queue between the log writer and the flusher thread.
//!
//! The writer appends records to the segment file (into the page cache, readable at once) and
//! pushes a [`FlushTicket`] here. The flusher takes *every* waiting ticket, syncs each distinct file
//! once, and only then completes the tickets. One fsync therefore covers every append queued while
//! the previous fsync ran: throughput comes from batching, never from skipping the fsync.
//!
//! Invariant (model-checked with loom in `tests`): a ticket is completed only by a flush that took
//! it from the queue, i.e. that started after the ticket's data was written; every ticket is
//! completed exactly once, in push order.

use crate::sync::{Arc, Condvar, Mutex};

/// Work the flusher does for a batch: make `targets` durable. Generic so loom can model it.
pub trait Flusher<F> {
    fn flush(&mut self, targets: &[F]) -> std::io::Result<()>;
}

pub struct FlushTicket<F, D> {
    pub target: F,
    pub done: D,
}

struct QueueState<F, D> {
    waiting: Vec<FlushTicket<F, D>>,
    closed: bool,
}

/// A bounded-by-construction queue: the writer pushes one ticket per append, and openraft bounds
/// the appends in flight.
pub struct FlushQueue<F, D> {
    state: Mutex<QueueState<F, D>>,
    wakeup: Condvar,
}

impl<F, D> FlushQueue<F, D> {
    pub fn new() -> Arc<Self> {
        Arc::new(FlushQueue {
            state: Mutex::new(QueueState {
                waiting: Vec::new(),
                closed: false,
            }),
            wakeup: Condvar::new(),
        })
    }

    pub fn push(&self, ticket: FlushTicket<F, D>) {
        let mut state = self.state.lock().expect("flush queue lock poisoned");
        assert!(!state.closed, "push after close");
        state.waiting.push(ticket);
        drop(state);
        self.wakeup.notify_one();
    }

    /// Blocks until tickets are waiting (returns all of them) or the queue is closed and drained
    /// (returns `None`).
    pub fn take_batch(&self) -> Option<Vec<FlushTicket<F, D>>> {
        let mut state = self.state.lock().expect("flush queue lock poisoned");
        loop {
            if !state.waiting.is_empty() {
                return Some(std::mem::take(&mut state.waiting));
            }
            if state.closed {
                return None;
            }
            state = self.wakeup.wait(state).expect("flush queue lock poisoned");
        }
    }

    pub fn close(&self) {
        self.state.lock().expect("flush queue lock poisoned").closed = true;
        self.wakeup.notify_all();
    }
}

/// The flusher loop: run on a dedicated thread until the queue closes.
pub fn run_flusher<F, D, S>(
    queue: &FlushQueue<F, D>,
    flusher: &mut S,
    mut complete: impl FnMut(D, &std::io::Result<()>),
) where
    F: PartialEq + Clone,
    S: Flusher<F>,
{
    while let Some(batch) = queue.take_batch() {
        let mut targets: Vec<F> = Vec::new();
        for ticket in &batch {
            if !targets.contains(&ticket.target) {
                targets.push(ticket.target.clone());
            }
        }
        let result = flusher.flush(&targets);
        for ticket in batch {
            complete(ticket.done, &result);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicU64, Ordering};

    /// Models a file: `written` is bumped by the writer before it pushes, `durable` is what the
    /// last flush covered.
    struct ModelFile {
        written: Arc<AtomicU64>,
        durable: Arc<AtomicU64>,
    }

    impl Flusher<u8> for ModelFile {
        fn flush(&mut self, _targets: &[u8]) -> std::io::Result<()> {
            let written = self.written.load(Ordering::SeqCst);
            self.durable.store(written, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn tickets_complete_once_in_order_after_their_data_is_durable() {
        loom::model(|| {
            let queue = FlushQueue::<u8, u64>::new();
            let written = Arc::new(AtomicU64::new(0));
            let durable = Arc::new(AtomicU64::new(0));

            let flusher_queue = queue.clone();
            let flusher_durable = durable.clone();
            let mut file = ModelFile {
                written: written.clone(),
                durable: durable.clone(),
            };
            let flusher = loom::thread::spawn(move || {
                let mut completed = Vec::new();
                run_flusher(&flusher_queue, &mut file, |seq, result| {
                    assert!(result.is_ok());
                    // The flush that completes `seq` covered at least the write of `seq`.
                    assert!(flusher_durable.load(Ordering::SeqCst) >= seq);
                    completed.push(seq);
                });
                completed
            });

            for seq in 1..=2u64 {
                written.store(seq, Ordering::SeqCst);
                queue.push(FlushTicket { target: 0, done: seq });
            }
            queue.close();
            let completed = flusher.join().expect("flusher thread");
            assert_eq!(completed, vec![1, 2]);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingFlusher(Arc<AtomicUsize>);
    impl Flusher<u8> for CountingFlusher {
        fn flush(&mut self, targets: &[u8]) -> std::io::Result<()> {
            self.0.fetch_add(targets.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn one_flush_per_distinct_target_in_a_batch() {
        let queue = FlushQueue::<u8, u32>::new();
        for (target, done) in [(1, 10), (1, 11), (2, 12), (1, 13)] {
            queue.push(FlushTicket { target, done });
        }
        queue.close();
        let flushes = Arc::new(AtomicUsize::new(0));
        let mut completed = Vec::new();
        run_flusher(&queue, &mut CountingFlusher(flushes.clone()), |d, r| {
            assert!(r.is_ok());
            completed.push(d);
        });
        assert_eq!(completed, vec![10, 11, 12, 13]);
        assert_eq!(flushes.load(Ordering::SeqCst), 2, "targets 1 and 2 synced once each");
    }
}
