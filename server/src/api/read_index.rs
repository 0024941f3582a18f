//! Linearizable reads share read-index rounds.
//!
//! A linearizable read first confirms, through the Raft leader, that no newer leader can have
//! committed anything this node has not applied (openraft's read index: a quorum answers a
//! heartbeat sent after the read arrived, then the state machine catches up to the commit index
//! of that moment). One such round serves every read that had arrived before it started, so the
//! reads that arrive while a round is on its way wait for the next round, which starts when the
//! current one ends and answers all of them. A read is never answered by a round that started
//! before it arrived: that is what keeps the sharing linearizable.
//!
//! The rounds run on a task of their own, so a reader that stops waiting (its client went away)
//! never strands the readers behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Rounds of one confirmation (`round`) shared by the readers that wait for each.
pub struct SharedRounds<T> {
    round: Box<dyn Fn() -> BoxFuture<T> + Send + Sync>,
    state: Mutex<Rounds<T>>,
}

struct Rounds<T> {
    /// A round is on its way (its task takes the waiting readers when it ends).
    running: bool,
    /// Readers that arrived after the running round started, for the next one: the reads that
    /// arrived during one round (a reader that gave up stays until the next round takes it).
    waiting: Vec<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> SharedRounds<T> {
    pub fn new(round: impl Fn() -> BoxFuture<T> + Send + Sync + 'static) -> Arc<SharedRounds<T>> {
        Arc::new(SharedRounds {
            round: Box::new(round),
            state: Mutex::new(Rounds {
                running: false,
                waiting: Vec::new(),
            }),
        })
    }

    /// The outcome of a round that started after this call: the next one. `None` only if the
    /// rounds' task ended without answering (the runtime is shutting down).
    pub async fn next(self: &Arc<Self>) -> Option<T> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(answer);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // Armed before the spawn: a runner dropped unpolled (a runtime shutting down) resets
            // the rounds too.
            let reset = ResetUnlessDone {
                rounds: Arc::clone(self),
                done: false,
            };
            tokio::spawn(Arc::clone(self).run(reset));
        }
        answered.await.ok()
    }

    /// Runs rounds while readers wait; each round answers the readers that were waiting when it
    /// started.
    /// A round that panics, or a runner dropped with its runtime, must not leave the rounds
    /// marked running with no runner: `reset` then answers no one (`None`), and the next read
    /// starts a runner of its own.
    async fn run(self: Arc<Self>, mut reset: ResetUnlessDone<T>) {
        loop {
            let group = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.running = false;
                    // Under the lock: a runner started after it unlocks is not this one's to reset.
                    reset.done = true;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let outcome = (self.round)().await;
            for reader in group {
                // A reader that stopped waiting is simply not answered.
                let _ = reader.send(outcome.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds<T>> {
        // The state is whole after every step (a push, a flag, a take): a poisoned lock holds a
        // consistent one.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Marks the rounds idle and drops their waiting readers when a runner ends other than by
/// running out of readers (a panicking round, a runner dropped with its runtime).
struct ResetUnlessDone<T> {
    rounds: Arc<SharedRounds<T>>,
    done: bool,
}

impl<T> Drop for ResetUnlessDone<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self
            .rounds
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.running = false;
        state.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// Rounds that answer their own number once the test lets them end.
    fn gated_rounds() -> (Arc<SharedRounds<u64>>, Arc<AtomicU64>, Arc<Semaphore>) {
        let started = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let rounds = SharedRounds::new({
            let started = started.clone();
            let gate = gate.clone();
            move || {
                let number = started.fetch_add(1, Ordering::SeqCst) + 1;
                let gate = gate.clone();
                Box::pin(async move {
                    gate.acquire().await.expect("gate open").forget();
                    number
                })
            }
        });
        (rounds, started, gate)
    }

    /// A test's reads end within this, or the rounds are stuck.
    const STUCK_AFTER: Duration = Duration::from_secs(10);

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn reads_that_arrive_during_a_round_share_the_next_never_the_running_one() {
        let (rounds, started, gate) = gated_rounds();
        let first = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.next().await }
        });
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "the first read starts a round");
        let later: Vec<_> = (0..5)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move { rounds.next().await })
            })
            .collect();
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "reads during a round start none of their own"
        );
        gate.add_permits(1);
        let first = tokio::time::timeout(STUCK_AFTER, first).await.expect("not stuck");
        assert_eq!(first.expect("first"), Some(1));
        settle().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "the waiting reads' round started when the first ended"
        );
        gate.add_permits(1);
        for read in later {
            assert_eq!(
                read.await.expect("read"),
                Some(2),
                "answered by the round that started after it"
            );
        }
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "no round without readers");
        // Idle again: the next read starts a round at once.
        gate.add_permits(1);
        let third = tokio::time::timeout(STUCK_AFTER, rounds.next())
            .await
            .expect("not stuck");
        assert_eq!(third, Some(3));
    }

    #[tokio::test]
    async fn a_reader_that_stops_waiting_strands_no_one() {
        let (rounds, started, gate) = gated_rounds();
        let quitter = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.next().await }
        });
        settle().await;
        let stayer = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.next().await }
        });
        settle().await;
        // The reader that started the rounds goes away mid-round.
        quitter.abort();
        gate.add_permits(2);
        let stayer = tokio::time::timeout(STUCK_AFTER, stayer).await.expect("not stuck");
        assert_eq!(stayer.expect("stayer"), Some(2));
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_round_that_panics_answers_no_one_and_strands_no_later_read() {
        let calls = Arc::new(AtomicU64::new(0));
        let rounds = SharedRounds::new({
            let calls = calls.clone();
            move || {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Box::pin(async move {
                    assert!(call != 1, "the first round's bug");
                    call
                })
            }
        });
        let unanswered = tokio::time::timeout(STUCK_AFTER, rounds.next())
            .await
            .expect("not stuck");
        assert_eq!(unanswered, None, "the panicked round's reader is told it has no answer");
        let answered = tokio::time::timeout(STUCK_AFTER, rounds.next())
            .await
            .expect("not stuck");
        assert_eq!(answered, Some(2), "the next read starts a runner of its own");
    }
}
