//! A linearizability checker: the Wing–Gong search with Lowe's memoisation, as porcupine and
//! Knossos implement it, run per key (P-compositionality: a history is linearizable if and only
//! if each key's sub-history is).
//!
//! Why not `stateright`'s `LinearizabilityTester`: it searches interleavings without caching
//! visited (linearized set, state) pairs, so histories of a few hundred concurrent operations with
//! crashed clients take exponential time, and it would bring a model checker into the harness.
//! The search here caches them, and bounds itself by a step budget, answering "unknown" rather
//! than running forever.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: `step` applies an operation, with its observed output, to a state,
/// and returns the next state, or `None` if that output is impossible from this state.
pub trait Model: Clone + Eq + Hash {
    type Op;
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// One operation of a history: its real-time window. `ret: None` is an operation of unknown
/// outcome (a crashed or timed-out client): its window never closes, so it may take effect at
/// any point after its call, or (being last) never be observed.
#[derive(Clone, Debug)]
pub struct TimedOp<O> {
    pub op: O,
    pub call: u64,
    pub ret: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearizability {
    Linearizable,
    /// No order exists. `deepest` is the most operations the search placed at once, and `stuck`
    /// the index of an operation that had to be placed then but could not be.
    NotLinearizable {
        deepest: usize,
        stuck: usize,
    },
    /// The step budget ran out.
    Unknown,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Head,
    Call(usize),
    Return(usize),
}

const NIL: usize = usize::MAX;

#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Entries of the history in time order, as a doubly linked list that the search unlinks and
/// relinks ("dancing links") as it places and takes back operations.
struct Entries {
    kind: Vec<Kind>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For a call entry, its return entry.
    partner: Vec<usize>,
}

impl Entries {
    fn new<O>(ops: &[TimedOp<O>]) -> Entries {
        // (time, return-after-call at equal times: concurrent, the permissive reading, op index, kind)
        let mut order: Vec<(u64, u8, usize, Kind)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, 0, i, Kind::Call(i)));
            order.push((op.ret.unwrap_or(u64::MAX), 1, i, Kind::Return(i)));
        }
        order.sort_by_key(|&(time, tie, i, _)| (time, tie, i));
        let n = order.len() + 1;
        let mut entries = Entries {
            kind: Vec::with_capacity(n),
            next: vec![NIL; n],
            prev: vec![NIL; n],
            partner: vec![NIL; n],
        };
        entries.kind.push(Kind::Head);
        let mut call_node = vec![NIL; ops.len()];
        for (position, &(_, _, i, kind)) in order.iter().enumerate() {
            let node = position + 1;
            entries.kind.push(kind);
            entries.prev[node] = node - 1;
            entries.next[node - 1] = node;
            match kind {
                Kind::Call(_) => call_node[i] = node,
                Kind::Return(_) => entries.partner[call_node[i]] = node,
                Kind::Head => {}
            }
        }
        entries
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes a call and its return; `restore` undoes exactly this (in reverse order).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.partner[call]);
    }

    fn restore(&mut self, call: usize) {
        self.relink(self.partner[call]);
        self.relink(call);
    }
}

/// Searches for a linearization of `ops` from `init`, taking at most `budget` steps.
pub fn check<M: Model>(init: &M, ops: &[TimedOp<M::Op>], budget: u64) -> Linearizability {
    let mut entries = Entries::new(ops);
    let mut placed = BitSet::new(ops.len());
    let mut placed_count = 0usize;
    let mut seen: HashSet<(BitSet, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = init.clone();
    let mut deepest = (0usize, 0usize);
    let mut entry = entries.next[0];
    let mut steps = 0u64;
    while entries.next[0] != NIL {
        steps += 1;
        if steps > budget {
            return Linearizability::Unknown;
        }
        match entries.kind[entry] {
            Kind::Call(i) => {
                if let Some(next_state) = state.step(&ops[i].op) {
                    let mut next_placed = placed.clone();
                    next_placed.set(i);
                    if seen.insert((next_placed.clone(), next_state.clone())) {
                        stack.push((entry, std::mem::replace(&mut state, next_state)));
                        placed = next_placed;
                        placed_count += 1;
                        entries.lift(entry);
                        entry = entries.next[0];
                        continue;
                    }
                }
                entry = entries.next[entry];
            }
            Kind::Return(i) => {
                // Operation i returned before it could be placed: take back the last placement.
                if placed_count >= deepest.0 {
                    deepest = (placed_count, i);
                }
                let Some((call, previous)) = stack.pop() else {
                    return Linearizability::NotLinearizable {
                        deepest: deepest.0,
                        stuck: deepest.1,
                    };
                };
                let Kind::Call(j) = entries.kind[call] else {
                    unreachable!("only call entries are stacked")
                };
                state = previous;
                placed.clear(j);
                placed_count -= 1;
                entries.restore(call);
                entry = entries.next[call];
            }
            Kind::Head => unreachable!("the head is never after another entry"),
        }
    }
    Linearizability::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of small integers, for testing the search itself.
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Reg(i64);

    enum RegOp {
        Write(i64),
        Read(i64),
    }

    impl Model for Reg {
        type Op = RegOp;
        fn step(&self, op: &RegOp) -> Option<Reg> {
            match *op {
                RegOp::Write(v) => Some(Reg(v)),
                RegOp::Read(v) => (self.0 == v).then(|| self.clone()),
            }
        }
    }

    fn op(op: RegOp, call: u64, ret: Option<u64>) -> TimedOp<RegOp> {
        TimedOp { op, call, ret }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [
            op(RegOp::Write(1), 0, Some(1)),
            op(RegOp::Read(1), 2, Some(3)),
            op(RegOp::Write(2), 4, Some(5)),
            op(RegOp::Read(2), 6, Some(7)),
        ];
        assert_eq!(check(&Reg(0), &ops, 1000), Linearizability::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let ops = [op(RegOp::Write(1), 0, Some(1)), op(RegOp::Read(0), 2, Some(3))];
        assert!(matches!(
            check(&Reg(0), &ops, 1000),
            Linearizability::NotLinearizable { stuck: 1, .. }
        ));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The write overlaps both reads: old then new is fine.
        let ops = [
            op(RegOp::Write(1), 0, Some(10)),
            op(RegOp::Read(0), 1, Some(2)),
            op(RegOp::Read(1), 3, Some(4)),
        ];
        assert_eq!(check(&Reg(0), &ops, 1000), Linearizability::Linearizable);
        // But new then old, with the reads in sequence, is not.
        let ops = [
            op(RegOp::Write(1), 0, Some(10)),
            op(RegOp::Read(1), 1, Some(2)),
            op(RegOp::Read(0), 3, Some(4)),
        ];
        assert!(matches!(
            check(&Reg(0), &ops, 1000),
            Linearizability::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_happen() {
        let happened = [op(RegOp::Write(7), 0, None), op(RegOp::Read(7), 5, Some(6))];
        assert_eq!(check(&Reg(0), &happened, 1000), Linearizability::Linearizable);
        let did_not = [op(RegOp::Write(7), 0, None), op(RegOp::Read(0), 5, Some(6))];
        assert_eq!(check(&Reg(0), &did_not, 1000), Linearizability::Linearizable);
        // Once seen, it cannot be unseen.
        let flicker = [
            op(RegOp::Write(7), 0, None),
            op(RegOp::Read(7), 5, Some(6)),
            op(RegOp::Read(0), 7, Some(8)),
        ];
        assert!(matches!(
            check(&Reg(0), &flicker, 1000),
            Linearizability::NotLinearizable { .. }
        ));
        // And it cannot take effect before it was invoked.
        let early = [op(RegOp::Read(7), 0, Some(1)), op(RegOp::Write(7), 2, None)];
        assert!(matches!(
            check(&Reg(0), &early, 1000),
            Linearizability::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_tiny_budget_gives_unknown_not_a_verdict() {
        let ops: Vec<_> = (0..20).map(|i| op(RegOp::Write(i), 0, Some(100))).collect();
        assert_eq!(check(&Reg(0), &ops, 5), Linearizability::Unknown);
    }

    #[test]
    fn many_concurrent_writers_are_searched_quickly_thanks_to_the_cache() {
        // 12 overlapping writes then a read of one of them: without memoisation this is 12!
        // orders; with it, a few thousand states.
        let mut ops: Vec<_> = (1..=12).map(|i| op(RegOp::Write(i), 0, Some(100))).collect();
        ops.push(op(RegOp::Read(9), 101, Some(102)));
        assert_eq!(check(&Reg(0), &ops, 2_000_000), Linearizability::Linearizable);
    }
}
