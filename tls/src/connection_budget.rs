//! How many connections a group of listeners may hold open at once, so that clients can never
//! take the file descriptors the node needs for itself.
//!
//! Every accepted connection is a descriptor. A node that accepts without bound fails when a
//! client opens too many: its log, its RocksDB files and its links to the other members meet
//! `EMFILE`, and a log that cannot write its vote stops the node for good. So each listener
//! takes a [`ConnectionPermit`] from a shared [`ConnectionBudget`] for every connection it
//! accepts (before any TLS handshake: the descriptor exists from the accept on), holds it as
//! long as the connection lives, and refuses the connection at once when none is left. The
//! server sizes the budgets from the process's descriptor limit (see the server's
//! `descriptors` module): one for the client doors together, one for the peer listener.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The connections a group of listeners may hold open, and how many it holds now.
#[derive(Debug)]
pub struct ConnectionBudget {
    /// Which listeners share it, for logs ("client doors", "peer listener").
    name: &'static str,
    capacity: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionBudget {
    /// A budget of `capacity` connections open at once.
    pub fn new(name: &'static str, capacity: usize) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget {
            name,
            capacity,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A permit for one more connection, or `None` (counted as refused) when `capacity` are
    /// open. Never lets more than `capacity` be open, however many threads take at once.
    pub fn try_take(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < self.capacity).then_some(open + 1)
        });
        match taken {
            Ok(_) => Some(ConnectionPermit {
                budget: Arc::clone(self),
            }),
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Once per power of two: a flood is seen in the log without flooding it.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        listeners = self.name,
                        capacity = self.capacity,
                        refused,
                        "connection refused: the listeners hold as many connections as the node's file descriptors allow"
                    );
                }
                None
            }
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The most connections open at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One open connection's share of a [`ConnectionBudget`], given back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    budget: Arc<ConnectionBudget>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_counted_and_given_back() {
        let budget = ConnectionBudget::new("test", 2);
        let a = budget.try_take().expect("first");
        let b = budget.try_take().expect("second");
        assert!(budget.try_take().is_none());
        assert_eq!((budget.open(), budget.refused()), (2, 1));
        drop(a);
        let c = budget.try_take().expect("a permit given back is taken again");
        assert!(budget.try_take().is_none());
        drop((b, c));
        assert_eq!((budget.open(), budget.refused()), (0, 2));
        assert!(ConnectionBudget::new("none", 0).try_take().is_none());
    }

    #[test]
    fn threads_taking_at_once_never_exceed_the_capacity() {
        let budget = ConnectionBudget::new("test", 50);
        let held: Vec<Vec<ConnectionPermit>> = std::thread::scope(|scope| {
            let takers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..100).filter_map(|_| budget.try_take()).collect::<Vec<_>>()))
                .collect();
            takers.into_iter().map(|t| t.join().expect("taker")).collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 50);
        assert_eq!(budget.open(), 50);
        assert_eq!(budget.refused(), 8 * 100 - 50);
        drop(held);
        assert_eq!(budget.open(), 0);
    }
}
