//! Merge rules. Each is a join: commutative, associative and idempotent, so a region may receive
//! remote changes in any order, any number of times, and still reach the state every other
//! region reaches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::version::{RegionId, Version};

/// A last-writer-wins register: the state of one KV key as far as merging is concerned.
///
/// `value: None` is a tombstone: the key was deleted (or expired) by the write `version`, and no
/// older write may bring it back. A TTL travels with the write that set it, so the winning write
/// decides both the value and when it expires (see `docs/regions.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwValue {
    pub version: Version,
    pub value: Option<Vec<u8>>,
    /// HLC milliseconds at which the value expires.
    pub expires_at_ms: Option<u64>,
}

impl LwwValue {
    /// Whether `self` wins over `other`. Two distinct writes never share a version; should equal
    /// versions ever carry different contents, the contents decide, so the rule stays a total
    /// order and merging stays commutative.
    pub fn wins_over(&self, other: &LwwValue) -> bool {
        (self.version, &self.value, self.expires_at_ms) > (other.version, &other.value, other.expires_at_ms)
    }

    /// The merge of two registers: the winner.
    pub fn merge(self, other: LwwValue) -> LwwValue {
        if other.wins_over(&self) {
            other
        } else {
            self
        }
    }
}

/// One region's part of a PN-counter: everything it ever added, and everything it ever took away.
/// Both only grow, which is what makes the merge a plain maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Component {
    pub added: u128,
    pub removed: u128,
}

impl Component {
    pub fn merge(self, other: Component) -> Component {
        Component {
            added: self.added.max(other.added),
            removed: self.removed.max(other.removed),
        }
    }

    pub fn value(self) -> i128 {
        // Both fit in 127 bits in practice: reaching 2^127 takes 2^64 increments of i64::MAX.
        (self.added as i128).wrapping_sub(self.removed as i128)
    }
}

/// A counter every region can change while partitioned: one [`Component`] per region; a region
/// changes only its own, and the value is the sum of all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    pub components: BTreeMap<RegionId, Component>,
}

impl PnCounter {
    pub fn value(&self) -> i128 {
        self.components.values().map(|c| c.value()).sum()
    }

    /// Adds `delta` to `region`'s component.
    pub fn add(&mut self, region: RegionId, delta: i128) {
        let component = self.components.entry(region).or_default();
        if delta >= 0 {
            component.added = component.added.saturating_add(delta.unsigned_abs());
        } else {
            component.removed = component.removed.saturating_add(delta.unsigned_abs());
        }
    }

    pub fn component(&self, region: RegionId) -> Component {
        self.components.get(&region).copied().unwrap_or_default()
    }

    /// Merges in one region's component as another region last saw it.
    pub fn merge_component(&mut self, region: RegionId, component: Component) {
        let mine = self.components.entry(region).or_default();
        *mine = mine.merge(component);
    }

    pub fn merge(mut self, other: PnCounter) -> PnCounter {
        for (region, component) in other.components {
            self.merge_component(region, component);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn lww() -> impl Strategy<Value = LwwValue> {
        (
            0u64..6,
            0u16..3,
            proptest::option::of(proptest::collection::vec(0u8..3, 0..2)),
            proptest::option::of(0u64..3),
        )
            .prop_map(|(stamp, region, value, expires_at_ms)| LwwValue {
                version: Version::new(stamp, region),
                value,
                expires_at_ms,
            })
    }

    fn counter() -> impl Strategy<Value = PnCounter> {
        proptest::collection::btree_map(0u16..4, (0u128..50, 0u128..50), 0..4).prop_map(|m| PnCounter {
            components: m
                .into_iter()
                .map(|(r, (added, removed))| (r, Component { added, removed }))
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn lww_merge_is_commutative(a in lww(), b in lww()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
        }

        #[test]
        fn lww_merge_is_associative(a in lww(), b in lww(), c in lww()) {
            prop_assert_eq!(
                a.clone().merge(b.clone()).merge(c.clone()),
                a.merge(b.merge(c))
            );
        }

        #[test]
        fn lww_merge_is_idempotent(a in lww(), b in lww()) {
            let once = a.clone().merge(b.clone());
            prop_assert_eq!(once.clone().merge(b), once.clone());
            prop_assert_eq!(a.clone().merge(a.clone()), a);
        }

        #[test]
        fn lww_keeps_the_greatest_version(writes in proptest::collection::vec(lww(), 1..8)) {
            let max_version = writes.iter().map(|w| w.version).max();
            let merged = writes.into_iter().reduce(LwwValue::merge);
            prop_assert_eq!(merged.map(|m| m.version), max_version);
        }

        #[test]
        fn counter_merge_is_commutative(a in counter(), b in counter()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
        }

        #[test]
        fn counter_merge_is_associative(a in counter(), b in counter(), c in counter()) {
            prop_assert_eq!(
                a.clone().merge(b.clone()).merge(c.clone()),
                a.merge(b.merge(c))
            );
        }

        #[test]
        fn counter_merge_is_idempotent(a in counter(), b in counter()) {
            let once = a.clone().merge(b.clone());
            prop_assert_eq!(once.clone().merge(b), once.clone());
            prop_assert_eq!(a.clone().merge(a.clone()), a);
        }

        /// Regions that each apply their own increments and then exchange state, in any order and
        /// any number of times, all end at the sum of every increment.
        #[test]
        fn counters_converge_to_the_sum_of_all_increments(
            increments in proptest::collection::vec((0u16..3, -100i128..100), 0..30),
            order in proptest::collection::vec(0usize..3, 0..12),
        ) {
            let mut regions: Vec<PnCounter> = vec![PnCounter::default(); 3];
            for (region, delta) in &increments {
                regions[*region as usize].add(*region, *delta);
            }
            // Gossip in a random order, then a full exchange so everyone has seen everyone.
            for (i, from) in order.iter().enumerate() {
                let to = (from + 1 + i % 2) % 3;
                let state = regions[*from].clone();
                regions[to] = regions[to].clone().merge(state);
            }
            let all = regions.iter().cloned().reduce(PnCounter::merge).unwrap_or_default();
            for region in &mut regions {
                *region = region.clone().merge(all.clone());
            }
            let expected: i128 = increments.iter().map(|(_, d)| d).sum();
            for region in &regions {
                prop_assert_eq!(region.value(), expected);
            }
        }
    }

    #[test]
    fn a_tombstone_beats_an_older_write_and_loses_to_a_newer_one() {
        let put = |stamp, v: &[u8]| LwwValue {
            version: Version::new(stamp, 1),
            value: Some(v.to_vec()),
            expires_at_ms: None,
        };
        let tomb = LwwValue {
            version: Version::new(5, 2),
            value: None,
            expires_at_ms: None,
        };
        assert_eq!(put(4, b"old").merge(tomb.clone()), tomb);
        assert_eq!(tomb.merge(put(6, b"new")), put(6, b"new"));
    }
}
