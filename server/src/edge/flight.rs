//! Request coalescing: concurrent misses of one object make one origin fetch, whose outcome every
//! waiter gets.
//!
//! The fetch runs on a task of its own, not inside the request that started it: a client that
//! goes away neither cancels the fetch the others wait for nor restarts its deadline, so a waiter
//! waits at most one fetch (bounded by the origin timeout). The task forgets its flight when it
//! lands, before any waiter sees the outcome; a later request looks in the store first.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// What a flight is for: the path (with query) and the request's variant under the headers the
/// path varies on (empty while they are not known).
pub type FlightKey = (String, Vec<u8>);

/// The fetch task ended without an outcome (it panicked, or the runtime is stopping).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the edge's fetch task ended without an answer: {0}")]
pub struct FlightLost(pub String);

type Landing<T> = Shared<BoxFuture<'static, Result<T, FlightLost>>>;

/// The flights in the air, by key.
pub struct Flights<T: Clone + Send + Sync + 'static> {
    flights: Mutex<HashMap<FlightKey, Landing<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Flights<T> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Joins the flight for `key`, or starts it with `fetch` on a task of its own. Returns the
    /// outcome and whether this call started the flight (false: `fetch` was dropped unrun).
    pub async fn join<F>(self: &Arc<Self>, key: FlightKey, fetch: F) -> (Result<T, FlightLost>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (landing, started) = {
            let mut flights = self.lock();
            match flights.get(&key) {
                Some(landing) => (landing.clone(), false),
                None => {
                    let this = Arc::clone(self);
                    let forget = key.clone();
                    let task = tokio::spawn(async move {
                        // Removed on the way out, a panic included: a key is never left holding a
                        // lost flight that every later miss would join.
                        let _forget = Forget {
                            flights: this,
                            key: forget,
                        };
                        fetch.await
                    });
                    let landing: Landing<T> = async move { task.await.map_err(|e| FlightLost(e.to_string())) }
                        .boxed()
                        .shared();
                    flights.insert(key, landing.clone());
                    (landing, true)
                }
            }
        };
        (landing.await, started)
    }

    /// Whether a flight for `key` is in the air.
    pub fn contains(&self, key: &FlightKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Flights in the air.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Landing<T>>> {
        // Each update is one insert or remove: a panic elsewhere leaves the map consistent.
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Forgets a flight when its task ends, however it ends. Only the task that inserted a key's
/// flight removes it, and no other flight for that key exists until it does.
struct Forget<T: Clone + Send + Sync + 'static> {
    flights: Arc<Flights<T>>,
    key: FlightKey,
}

impl<T: Clone + Send + Sync + 'static> Drop for Forget<T> {
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn key(path: &str) -> FlightKey {
        (path.to_string(), Vec::new())
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_fetch() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let (flights, fetches) = (Arc::clone(&flights), Arc::clone(&fetches));
            waiters.push(tokio::spawn(async move {
                flights
                    .join(key("/a"), async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            }));
        }
        let mut starters = 0;
        for waiter in waiters {
            let (outcome, started) = waiter.await.expect("waiter");
            assert_eq!(outcome, Ok(7));
            starters += usize::from(started);
        }
        assert_eq!((fetches.load(Ordering::SeqCst), starters), (1, 1));
        assert!(flights.is_empty(), "a landed flight is forgotten");
        // The next miss flies again.
        let (_, started) = flights.join(key("/a"), async { 8 }).await;
        assert!(started);
    }

    /// The request that started a flight goes away: the fetch goes on, the others get its
    /// outcome, and the flight is forgotten when it lands (no entry is left behind).
    #[tokio::test]
    async fn a_departed_starter_neither_cancels_nor_restarts_the_fetch() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let starter = {
            let (flights, fetches) = (Arc::clone(&flights), Arc::clone(&fetches));
            tokio::spawn(async move {
                flights
                    .join(key("/b"), async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        starter.abort();
        let (outcome, started) = flights.join(key("/b"), async { 2 }).await;
        assert_eq!((outcome, started), (Ok(1), false));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());

        // Nobody waits at all: the flight still lands and is forgotten.
        let lonely = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move { flights.join(key("/c"), async { 3 }).await })
        };
        lonely.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(flights.is_empty(), "no entry left behind");
    }

    #[tokio::test]
    async fn a_panicking_fetch_leaves_no_flight_behind() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let (outcome, _) = flights
            .join(key("/p"), async {
                if flights_panic() {
                    panic!("a fetch that panics");
                }
                0
            })
            .await;
        assert!(outcome.is_err(), "the waiter learns the flight was lost");
        assert!(flights.is_empty(), "and the key is free for the next miss");
        let (outcome, started) = flights.join(key("/p"), async { 5 }).await;
        assert_eq!((outcome, started), (Ok(5), true));
    }

    fn flights_panic() -> bool {
        true
    }

    #[tokio::test]
    async fn different_keys_fly_apart() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let (a, b) = tokio::join!(
            flights.join(key("/x"), async { 1 }),
            flights.join(key("/y"), async { 2 })
        );
        assert_eq!((a, b), ((Ok(1), true), (Ok(2), true)));
    }
}
