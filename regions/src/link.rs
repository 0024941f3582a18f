//! The state of every directed link between endpoints (nodes, or regions), shared by the proxies
//! that enforce it and the nemesis or topology that changes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::partition::Cuts;

/// An endpoint on the simulated network: a node id, or a region's index.
pub type EndpointId = u64;

/// One direction of a link. The default is a healthy link: nothing cut, no added delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Bytes sent this way are lost.
    pub cut: bool,
    /// Added to every byte's delivery time.
    pub latency: Duration,
    /// A further delay drawn uniformly from `[0, jitter]` per read; bytes stay in order.
    pub jitter: Duration,
    /// Packet loss, in parts per million of chunks. On a byte stream a lost packet is a late one:
    /// TCP resends it after a retransmission timeout, and everything behind it waits.
    #[serde(default)]
    pub loss_ppm: u32,
    /// Bytes per second this way (0: unlimited): each chunk waits for the ones before it to be
    /// sent at this rate.
    #[serde(default)]
    pub bandwidth_bytes_per_s: u64,
}

impl LinkState {
    pub fn is_healthy(&self) -> bool {
        *self == LinkState::default()
    }
}

/// Every directed link that is not healthy; links not listed are healthy.
#[derive(Debug)]
pub struct Links {
    table: Mutex<BTreeMap<(EndpointId, EndpointId), LinkState>>,
    /// Bumped on every change, so that proxies can close connections a cut or heal affects.
    version: watch::Sender<u64>,
}

impl Links {
    pub fn new() -> Arc<Links> {
        Arc::new(Links {
            table: Mutex::new(BTreeMap::new()),
            version: watch::Sender::new(0),
        })
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<(EndpointId, EndpointId), LinkState>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state of the link `from → to`.
    pub fn state(&self, from: EndpointId, to: EndpointId) -> LinkState {
        self.table().get(&(from, to)).copied().unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<(EndpointId, EndpointId), LinkState>)) {
        {
            let mut table = self.table();
            change(&mut table);
            table.retain(|_, state| !state.is_healthy());
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn set(&self, from: EndpointId, to: EndpointId, state: LinkState) {
        self.update(|table| {
            table.insert((from, to), state);
        });
    }

    /// Changes both directions between `a` and `b`, keeping what `change` leaves alone.
    pub fn change_pair(&self, a: EndpointId, b: EndpointId, change: impl Fn(&mut LinkState)) {
        self.update(|table| {
            change(table.entry((a, b)).or_default());
            change(table.entry((b, a)).or_default());
        });
    }

    /// Cuts every link in `cuts`, keeping their latency; other links are left as they are.
    pub fn apply_cuts(&self, cuts: &Cuts) {
        self.update(|table| {
            for (from, to) in cuts.iter() {
                table.entry((from, to)).or_default().cut = true;
            }
        });
    }

    /// Reconnects every cut link, keeping added latency.
    pub fn heal_cuts(&self) {
        self.update(|table| {
            for state in table.values_mut() {
                state.cut = false;
            }
        });
    }

    /// Adds `latency` and `jitter` to every directed link between distinct `endpoints`.
    pub fn set_delay(&self, endpoints: &[EndpointId], latency: Duration, jitter: Duration) {
        self.update(|table| {
            for &from in endpoints {
                for &to in endpoints {
                    if from != to {
                        let state = table.entry((from, to)).or_default();
                        state.latency = latency;
                        state.jitter = jitter;
                    }
                }
            }
        });
    }

    /// Every link healthy again.
    pub fn heal_all(&self) {
        self.update(BTreeMap::clear);
    }

    /// The unhealthy links.
    pub fn snapshot(&self) -> BTreeMap<(EndpointId, EndpointId), LinkState> {
        self.table().clone()
    }

    /// Changes whenever any link changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_latency_and_heal_restores_only_the_cut() {
        let links = Links::new();
        links.set_delay(&[1, 2], Duration::from_millis(30), Duration::from_millis(5));
        links.apply_cuts(&Cuts::isolate(1, &[1, 2, 3]));
        let one_two = links.state(1, 2);
        assert!(one_two.cut);
        assert_eq!(one_two.latency, Duration::from_millis(30));
        assert!(links.state(3, 1).cut && !links.state(2, 3).cut);
        links.heal_cuts();
        assert!(!links.state(1, 2).cut);
        assert_eq!(links.state(2, 1).latency, Duration::from_millis(30));
        assert!(
            links.state(3, 1).is_healthy(),
            "healed links with no delay are forgotten"
        );
        links.heal_all();
        assert!(links.snapshot().is_empty());
    }

    #[test]
    fn every_change_is_observable() {
        let links = Links::new();
        let mut changes = links.subscribe();
        assert!(!changes.has_changed().expect("sender alive"));
        links.set(
            1,
            2,
            LinkState {
                cut: true,
                ..Default::default()
            },
        );
        assert!(changes.has_changed().expect("sender alive"));
        changes.mark_unchanged();
        links.heal_all();
        assert!(changes.has_changed().expect("sender alive"));
    }
}
