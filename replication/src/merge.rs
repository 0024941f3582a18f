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

/// Which bound a region's escrow guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EscrowBound {
    /// A lower bound: escrow is room to take the counter down.
    Floor,
    /// An upper bound: escrow is room to take the counter up.
    Ceiling,
}

/// Escrow of one bounded counter moved between regions: `given[(bound, from, to)]` is everything
/// `from` ever gave `to` of its room toward `bound`. Only `from` writes its entries and they only
/// grow, so a merge is the per-entry maximum.
///
/// A region's **balance** toward a bound is its own net change of the counter, adjusted by the
/// escrow it moved: toward the floor, plus what it received minus what it gave; toward the
/// ceiling, minus what it received plus what it gave. Either way the balances of all regions sum
/// to the counter's value, so if every region keeps its balance on the right side of its share of
/// a bound (shares summing to the bound), the value never crosses the bound, however long regions
/// are partitioned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowTransfers {
    pub given: BTreeMap<(EscrowBound, RegionId, RegionId), u128>,
}

impl EscrowTransfers {
    pub fn merge_pair(&mut self, bound: EscrowBound, from: RegionId, to: RegionId, total: u128) {
        let mine = self.given.entry((bound, from, to)).or_default();
        *mine = (*mine).max(total);
    }

    pub fn merge(mut self, other: EscrowTransfers) -> EscrowTransfers {
        for ((bound, from, to), total) in other.given {
            self.merge_pair(bound, from, to, total);
        }
        self
    }

    /// What `from` has given `to` toward `bound` so far.
    pub fn given(&self, bound: EscrowBound, from: RegionId, to: RegionId) -> u128 {
        self.given.get(&(bound, from, to)).copied().unwrap_or(0)
    }

    /// `region`'s balance of `counter` toward `bound`.
    pub fn balance(&self, counter: &PnCounter, region: RegionId, bound: EscrowBound) -> i128 {
        let (received, gave) = self.given.iter().filter(|((b, _, _), _)| *b == bound).fold(
            (0i128, 0i128),
            |(r, g), ((_, from, to), total)| {
                let total = i128::try_from(*total).unwrap_or(i128::MAX);
                match (*from == region, *to == region) {
                    (true, false) => (r, g.saturating_add(total)),
                    (false, true) => (r.saturating_add(total), g),
                    _ => (r, g),
                }
            },
        );
        let own = counter.component(region).value();
        match bound {
            EscrowBound::Floor => own.saturating_add(received).saturating_sub(gave),
            EscrowBound::Ceiling => own.saturating_sub(received).saturating_add(gave),
        }
    }
}

/// One region's count of a global sliding-window rate limit, as that region last wrote it: the
/// fixed window `index` (`now / window_ms`) it counts in, its count there and in the window
/// before. Only the region itself writes it, each change with a higher `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowCount {
    pub seq: u64,
    pub window_ms: u64,
    pub index: u64,
    pub current: u64,
    pub previous: u64,
}

impl WindowCount {
    /// `(previous, current)` seen from window `index` of length `window_ms`: counts of older
    /// windows have slid out, and counts of another window length do not apply. A count already
    /// in a later window (the other region's clock is ahead) counts as this one's.
    pub fn at(self, window_ms: u64, index: u64) -> (u64, u64) {
        if self.window_ms != window_ms {
            (0, 0)
        } else if self.index >= index {
            (self.previous, self.current)
        } else if self.index + 1 == index {
            (self.current, 0)
        } else {
            (0, 0)
        }
    }
}

/// The counts of one global rate limit: one [`WindowCount`] per region. A merge keeps each
/// region's latest count (highest `seq`), so it is a join and regions converge on every count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounts {
    pub regions: BTreeMap<RegionId, WindowCount>,
}

impl WindowCounts {
    pub fn get(&self, region: RegionId) -> WindowCount {
        self.regions.get(&region).copied().unwrap_or_default()
    }

    /// Merges in one region's count as another region last saw it.
    pub fn merge_region(&mut self, region: RegionId, count: WindowCount) {
        let mine = self.regions.entry(region).or_default();
        *mine = (*mine).max(count);
    }

    pub fn merge(mut self, other: WindowCounts) -> WindowCounts {
        for (region, count) in other.regions {
            self.merge_region(region, count);
        }
        self
    }

    /// Every region's `(previous, current)` summed, seen from window `index` of `window_ms`.
    pub fn totals(&self, window_ms: u64, index: u64) -> (u64, u64) {
        self.regions.values().fold((0, 0), |(p, c), count| {
            let (previous, current) = count.at(window_ms, index);
            (p.saturating_add(previous), c.saturating_add(current))
        })
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

    fn window_counts() -> impl Strategy<Value = WindowCounts> {
        proptest::collection::btree_map(0u16..4, (0u64..4, 1u64..3, 0u64..4, 0u64..9, 0u64..9), 0..4).prop_map(|m| {
            WindowCounts {
                regions: m
                    .into_iter()
                    .map(|(r, (seq, window_ms, index, current, previous))| {
                        (
                            r,
                            WindowCount {
                                seq,
                                window_ms,
                                index,
                                current,
                                previous,
                            },
                        )
                    })
                    .collect(),
            }
        })
    }

    /// A merge is a join: commutative, associative and idempotent.
    fn join_laws<T: Clone + PartialEq + std::fmt::Debug>(
        a: T,
        b: T,
        c: T,
        merge: impl Fn(T, T) -> T,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(merge(a.clone(), b.clone()), merge(b.clone(), a.clone()));
        prop_assert_eq!(
            merge(merge(a.clone(), b.clone()), c.clone()),
            merge(a.clone(), merge(b.clone(), c))
        );
        let once = merge(a.clone(), b.clone());
        prop_assert_eq!(merge(once.clone(), b), once);
        prop_assert_eq!(merge(a.clone(), a.clone()), a);
        Ok(())
    }

    fn bound() -> impl Strategy<Value = EscrowBound> {
        prop_oneof![Just(EscrowBound::Floor), Just(EscrowBound::Ceiling)]
    }

    fn transfers() -> impl Strategy<Value = EscrowTransfers> {
        proptest::collection::btree_map((bound(), 0u16..3, 0u16..3), 0u128..20, 0..5)
            .prop_map(|given| EscrowTransfers { given })
    }

    proptest! {
        #[test]
        fn escrow_merge_is_commutative_associative_and_idempotent(
            a in transfers(), b in transfers(), c in transfers()
        ) {
            join_laws(a, b, c, EscrowTransfers::merge)?;
        }

        /// Transfers move balance between regions: the balances always sum to the value.
        #[test]
        fn balances_sum_to_the_value(
            counter in counter(),
            given in proptest::collection::btree_map((bound(), 0u16..4, 0u16..4), 0u128..20, 0..6),
        ) {
            let escrow = EscrowTransfers {
                given: given.into_iter().filter(|((_, from, to), _)| from != to).collect(),
            };
            for bound in [EscrowBound::Floor, EscrowBound::Ceiling] {
                let sum: i128 = (0u16..4).map(|r| escrow.balance(&counter, r, bound)).sum();
                prop_assert_eq!(sum, counter.value());
            }
        }

        #[test]
        fn window_counts_merge_is_commutative_associative_and_idempotent(
            a in window_counts(), b in window_counts(), c in window_counts()
        ) {
            join_laws(a, b, c, WindowCounts::merge)?;
        }

        /// A region's later count replaces its earlier one wherever it arrives, in any order.
        #[test]
        fn the_latest_count_of_each_region_wins(
            counts in proptest::collection::vec((0u16..3, 0u64..9), 1..12),
        ) {
            let mut seqs: BTreeMap<RegionId, u64> = BTreeMap::new();
            let mut merged = WindowCounts::default();
            let mut reversed = WindowCounts::default();
            let writes: Vec<(RegionId, WindowCount)> = counts
                .iter()
                .map(|(region, current)| {
                    let seq = seqs.entry(*region).or_default();
                    *seq += 1;
                    (*region, WindowCount { seq: *seq, window_ms: 1, index: 0, current: *current, previous: 0 })
                })
                .collect();
            for (region, count) in &writes {
                merged.merge_region(*region, *count);
            }
            for (region, count) in writes.iter().rev() {
                reversed.merge_region(*region, *count);
            }
            prop_assert_eq!(&merged, &reversed);
            for (region, count) in writes.iter().rev() {
                if seqs.remove(region).is_some() {
                    prop_assert_eq!(merged.get(*region), *count);
                }
            }
        }
    }

    #[test]
    fn totals_count_only_the_current_and_previous_windows_of_the_same_length() {
        let count = |window_ms, index, current, previous| WindowCount {
            seq: 1,
            window_ms,
            index,
            current,
            previous,
        };
        let counts = WindowCounts {
            regions: BTreeMap::from([
                (1, count(1000, 5, 3, 2)),
                (2, count(1000, 4, 7, 9)),
                (3, count(1000, 2, 50, 50)),
                (4, count(500, 5, 40, 40)),
            ]),
        };
        // Region 2's window 4 is the previous one now; region 3's and region 4's do not count.
        assert_eq!(counts.totals(1000, 5), (2 + 7, 3));
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
