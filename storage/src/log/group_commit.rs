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

/// Work the flusher does. Generic so loom can model it.
pub trait Flusher<F, D> {
    /// Makes `targets` durable.
    fn flush(&mut self, targets: &[F]) -> std::io::Result<()>;
    /// Completes one ticket of the batch just flushed, with the flush's result.
    fn complete(&mut self, target: &F, done: D, result: &std::io::Result<()>);
    /// Whether there is work for [`Flusher::idle`]: work that rides along with the next flush if
    /// tickets keep coming, and is done by itself once none came for [`IDLE_WORK_DELAY`].
    fn has_idle_work(&self) -> bool {
        false
    }
    /// Does the idle work (the queue stayed empty for [`IDLE_WORK_DELAY`], or is closing).
    fn idle(&mut self) {}
}

/// How long the flusher waits for more tickets before it does its idle work on its own. Short
/// enough that the work is done soon after traffic stops; long enough that a client waiting for
/// one acknowledgement before its next write (a round trip) gets its next write in first, so the
/// work rides along with that write's fsync instead of costing one of its own.
pub const IDLE_WORK_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

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

    /// Takes every waiting ticket, if any, without blocking.
    pub fn try_take(&self) -> Option<Vec<FlushTicket<F, D>>> {
        let mut state = self.state.lock().expect("flush queue lock poisoned");
        (!state.waiting.is_empty()).then(|| std::mem::take(&mut state.waiting))
    }

    /// Waits up to `timeout` for tickets; `None` if none came (or the queue is closed and empty).
    pub fn take_batch_within(&self, timeout: std::time::Duration) -> Option<Vec<FlushTicket<F, D>>> {
        let mut state = self.state.lock().expect("flush queue lock poisoned");
        if state.waiting.is_empty() && !state.closed {
            state = self
                .wakeup
                .wait_timeout(state, timeout)
                .expect("flush queue lock poisoned")
                .0;
        }
        (!state.waiting.is_empty()).then(|| std::mem::take(&mut state.waiting))
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
pub fn run_flusher<F, D, S>(queue: &FlushQueue<F, D>, flusher: &mut S)
where
    F: PartialEq + Clone,
    S: Flusher<F, D>,
{
    loop {
        let batch = match queue.try_take() {
            Some(batch) => batch,
            None if flusher.has_idle_work() => match queue.take_batch_within(IDLE_WORK_DELAY) {
                Some(batch) => batch,
                None => {
                    flusher.idle();
                    continue;
                }
            },
            None => match queue.take_batch() {
                Some(batch) => batch,
                None => return,
            },
        };
        let mut targets: Vec<F> = Vec::new();
        for ticket in &batch {
            if !targets.contains(&ticket.target) {
                targets.push(ticket.target.clone());
            }
        }
        let result = flusher.flush(&targets);
        for ticket in batch {
            flusher.complete(&ticket.target, ticket.done, &result);
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
        completed: Vec<u64>,
    }

    impl Flusher<u8, u64> for ModelFile {
        fn flush(&mut self, _targets: &[u8]) -> std::io::Result<()> {
            let written = self.written.load(Ordering::SeqCst);
            self.durable.store(written, Ordering::SeqCst);
            Ok(())
        }

        fn complete(&mut self, _target: &u8, seq: u64, result: &std::io::Result<()>) {
            assert!(result.is_ok());
            // The flush that completes `seq` covered at least the write of `seq`.
            assert!(self.durable.load(Ordering::SeqCst) >= seq);
            self.completed.push(seq);
        }
    }

    #[test]
    fn tickets_complete_once_in_order_after_their_data_is_durable() {
        loom::model(|| {
            let queue = FlushQueue::<u8, u64>::new();
            let written = Arc::new(AtomicU64::new(0));
            let durable = Arc::new(AtomicU64::new(0));

            let flusher_queue = queue.clone();
            let mut file = ModelFile {
                written: written.clone(),
                durable,
                completed: Vec::new(),
            };
            let flusher = loom::thread::spawn(move || {
                run_flusher(&flusher_queue, &mut file);
                file.completed
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

    struct CountingFlusher {
        flushes: Arc<AtomicUsize>,
        completed: Vec<u32>,
        idles: usize,
        /// Set by every completion, cleared by `idle`.
        idle_work: bool,
    }
    impl Flusher<u8, u32> for CountingFlusher {
        fn flush(&mut self, targets: &[u8]) -> std::io::Result<()> {
            self.flushes.fetch_add(targets.len(), Ordering::SeqCst);
            Ok(())
        }

        fn complete(&mut self, _target: &u8, done: u32, result: &std::io::Result<()>) {
            assert!(result.is_ok());
            self.completed.push(done);
            self.idle_work = true;
        }

        fn has_idle_work(&self) -> bool {
            self.idle_work
        }

        fn idle(&mut self) {
            self.idles += 1;
            self.idle_work = false;
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
        let mut flusher = CountingFlusher {
            flushes: flushes.clone(),
            completed: Vec::new(),
            idles: 0,
            idle_work: false,
        };
        run_flusher(&queue, &mut flusher);
        assert_eq!(flusher.completed, vec![10, 11, 12, 13]);
        assert_eq!(flushes.load(Ordering::SeqCst), 2, "targets 1 and 2 synced once each");
        assert_eq!(
            flusher.idles, 1,
            "the idle work ran once the queue ran empty, before the loop ended"
        );
    }
}
