//! The classic partition shapes as sets of directed cuts, built by pure functions so that a seeded
//! nemesis replays the same faults.
//!
//! A cut `(a, b)` means bytes from `a` to `b` are lost. A two-way partition cuts both directions.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::link::EndpointId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cuts(BTreeSet<(EndpointId, EndpointId)>);

impl Cuts {
    pub fn iter(&self) -> impl Iterator<Item = (EndpointId, EndpointId)> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, from: EndpointId, to: EndpointId) -> bool {
        self.0.contains(&(from, to))
    }

    fn cut_both(&mut self, a: EndpointId, b: EndpointId) {
        if a != b {
            self.0.insert((a, b));
            self.0.insert((b, a));
        }
    }

    /// Endpoints in different groups cannot talk; endpoints in the same group can.
    pub fn between_groups(groups: &[Vec<EndpointId>]) -> Cuts {
        let mut cuts = Cuts::default();
        for (i, left) in groups.iter().enumerate() {
            for right in &groups[i + 1..] {
                for &a in left {
                    for &b in right {
                        cuts.cut_both(a, b);
                    }
                }
            }
        }
        cuts
    }

    /// Two random halves: a minority of `n / 2` endpoints and the majority.
    pub fn halves(endpoints: &[EndpointId], rng: &mut impl Rng) -> Cuts {
        let mut shuffled = endpoints.to_vec();
        shuffled.shuffle(rng);
        let (minority, majority) = shuffled.split_at(endpoints.len() / 2);
        Cuts::between_groups(&[minority.to_vec(), majority.to_vec()])
    }

    /// `node` alone on one side.
    pub fn isolate(node: EndpointId, endpoints: &[EndpointId]) -> Cuts {
        let others: Vec<EndpointId> = endpoints.iter().copied().filter(|&e| e != node).collect();
        Cuts::between_groups(&[vec![node], others])
    }

    /// Endpoints on a ring, each seeing only its nearest neighbours: every endpoint sees a
    /// majority (itself included), and no two see the same one (for five or more endpoints).
    pub fn majority_ring(endpoints: &[EndpointId], rng: &mut impl Rng) -> Cuts {
        let mut ring = endpoints.to_vec();
        ring.shuffle(rng);
        let n = ring.len();
        let reach = (n / 2).div_ceil(2).max(1);
        let mut cuts = Cuts::default();
        for i in 0..n {
            for j in i + 1..n {
                let distance = (j - i).min(n - (j - i));
                if distance > reach {
                    cuts.cut_both(ring[i], ring[j]);
                }
            }
        }
        cuts
    }

    /// Two halves joined by one endpoint that sees both.
    pub fn bridge(endpoints: &[EndpointId], rng: &mut impl Rng) -> Cuts {
        let mut shuffled = endpoints.to_vec();
        shuffled.shuffle(rng);
        let (left, rest) = shuffled.split_at(endpoints.len() / 2);
        let Some((&bridge, right)) = rest.split_first() else {
            return Cuts::default();
        };
        let mut cuts = Cuts::between_groups(&[left.to_vec(), right.to_vec()]);
        cuts.0.retain(|&(a, b)| a != bridge && b != bridge);
        cuts
    }

    /// `node` can hear everyone but nothing it sends arrives.
    pub fn mute(node: EndpointId, endpoints: &[EndpointId]) -> Cuts {
        Cuts(
            endpoints
                .iter()
                .filter(|&&e| e != node)
                .map(|&other| (node, other))
                .collect(),
        )
    }

    /// Which endpoints `node` can still send to.
    pub fn reachable_from(&self, node: EndpointId, endpoints: &[EndpointId]) -> Vec<EndpointId> {
        endpoints
            .iter()
            .copied()
            .filter(|&e| e != node && !self.contains(node, e))
            .collect()
    }

    /// A short text for reports: `1↛2 1↛3 …`.
    pub fn describe(&self) -> String {
        self.iter()
            .map(|(a, b)| format!("{a}↛{b}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn nodes(n: u64) -> Vec<EndpointId> {
        (1..=n).collect()
    }

    #[test]
    fn isolate_cuts_one_node_both_ways() {
        let cuts = Cuts::isolate(2, &nodes(3));
        assert_eq!(cuts.len(), 4);
        assert!(cuts.contains(2, 1) && cuts.contains(1, 2) && cuts.contains(3, 2) && cuts.contains(2, 3));
        assert!(!cuts.contains(1, 3));
    }

    #[test]
    fn mute_is_one_way() {
        let cuts = Cuts::mute(1, &nodes(3));
        assert!(cuts.contains(1, 2) && cuts.contains(1, 3));
        assert!(!cuts.contains(2, 1) && !cuts.contains(3, 1));
    }

    #[test]
    fn ring_of_five_sees_two_neighbours_each() {
        let mut rng = StdRng::seed_from_u64(3);
        let all = nodes(5);
        let cuts = Cuts::majority_ring(&all, &mut rng);
        let mut seen = BTreeSet::new();
        for &n in &all {
            let reach = cuts.reachable_from(n, &all);
            assert_eq!(reach.len(), 2, "node {n} sees {reach:?}");
            let mut view = reach.clone();
            view.push(n);
            view.sort_unstable();
            assert!(seen.insert(view), "two nodes see the same majority");
        }
    }

    proptest! {
        #[test]
        fn shapes_only_cut_between_distinct_known_endpoints(n in 2u64..10, seed in any::<u64>()) {
            let all = nodes(n);
            let mut rng = StdRng::seed_from_u64(seed);
            let shapes = [
                Cuts::halves(&all, &mut rng),
                Cuts::majority_ring(&all, &mut rng),
                Cuts::bridge(&all, &mut rng),
                Cuts::isolate(1, &all),
                Cuts::mute(n, &all),
            ];
            for cuts in &shapes {
                for (a, b) in cuts.iter() {
                    prop_assert!(a != b);
                    prop_assert!(all.contains(&a) && all.contains(&b));
                }
            }
        }

        #[test]
        fn halves_leave_no_two_majorities(n in 2u64..10, seed in any::<u64>()) {
            let all = nodes(n);
            let cuts = Cuts::halves(&all, &mut StdRng::seed_from_u64(seed));
            let majority = n as usize / 2 + 1;
            let with_majority = all
                .iter()
                .filter(|&&e| cuts.reachable_from(e, &all).len() + 1 >= majority)
                .count();
            // Exactly the nodes of the bigger side see a majority; the others cannot elect.
            prop_assert!(with_majority == n as usize - n as usize / 2 || (n % 2 == 0 && with_majority == 0));
        }

        #[test]
        fn ring_gives_everyone_a_majority(n in 3u64..10, seed in any::<u64>()) {
            let all = nodes(n);
            let cuts = Cuts::majority_ring(&all, &mut StdRng::seed_from_u64(seed));
            for &e in &all {
                prop_assert!(cuts.reachable_from(e, &all).len() + 1 > n as usize / 2);
            }
        }

        #[test]
        fn bridge_node_sees_everyone_and_the_halves_do_not_see_each_other(n in 3u64..10, seed in any::<u64>()) {
            let all = nodes(n);
            let cuts = Cuts::bridge(&all, &mut StdRng::seed_from_u64(seed));
            let bridges: Vec<_> = all.iter().filter(|&&e| cuts.reachable_from(e, &all).len() == all.len() - 1).collect();
            prop_assert!(!bridges.is_empty());
            if n >= 3 {
                prop_assert!(!cuts.is_empty());
            }
        }
    }
}
