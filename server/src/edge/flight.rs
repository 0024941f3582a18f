//! Request coalescing: concurrent misses of one object make one origin fetch, whose outcome every
//! waiter gets.
//!
//! **Cancel safety.** The fetch runs inside the first waiter's request; if that request is
//! dropped (its client went away), the fetch is dropped with it and the next waiter starts its
//! own, so waiters never hang on a fetch nobody runs (tokio's `OnceCell::get_or_init`).
//! A flight is forgotten as soon as its outcome is known: a later request looks in the store,
//! and a request arriving in between gets the same, just-fetched outcome.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// What a flight is for: the path (with query) and the request's variant under the headers the
/// path varies on (empty while they are not known).
pub type FlightKey = (String, Vec<u8>);

/// The flights in the air, by key.
pub struct Flights<T = super::handler::Outcome> {
    flights: Mutex<HashMap<FlightKey, Arc<OnceCell<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// Joins the flight for `key`, or starts it with `fetch`. Returns the outcome and whether
    /// this call's `fetch` produced it (false: another waiter's did, and `fetch` never ran).
    pub async fn join<F: Future<Output = T>>(&self, key: FlightKey, fetch: F) -> (T, bool) {
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(flights.entry(key.clone()).or_default())
        };
        let mut led = false;
        let outcome = cell
            .get_or_init(|| {
                led = true;
                fetch
            })
            .await
            .clone();
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(&key).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            flights.remove(&key);
        }
        (outcome, led)
    }

    /// Flights in the air (for tests and metrics).
    pub fn len(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
                    .join(key("/a"), async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            }));
        }
        let mut leaders = 0;
        for waiter in waiters {
            let (outcome, led) = waiter.await.expect("waiter");
            assert_eq!(outcome, 7);
            leaders += usize::from(led);
        }
        assert_eq!((fetches.load(Ordering::SeqCst), leaders), (1, 1));
        assert!(flights.is_empty(), "a landed flight is forgotten");
        // The next miss flies again.
        let (_, led) = flights.join(key("/a"), async { 8 }).await;
        assert!(led);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_fetch_to_a_waiter() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let leader = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move {
                flights
                    .join(key("/b"), async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move { flights.join(key("/b"), async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (outcome, led) = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower does not hang")
            .expect("follower");
        assert_eq!((outcome, led), (2, true));
    }

    #[tokio::test]
    async fn different_keys_fly_apart() {
        let flights: Flights<u32> = Flights::default();
        let (a, b) = tokio::join!(
            flights.join(key("/x"), async { 1 }),
            flights.join(key("/y"), async { 2 })
        );
        assert_eq!((a, b), ((1, true), (2, true)));
    }
}
