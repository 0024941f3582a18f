//! The counter workload's checker.
//!
//! - An unbounded counter only grows (deltas are positive). Every value observed, by a read or as
//!   an increment's result, lies between the increments certainly applied before the observation
//!   began (acknowledged before its invocation) and those that may have been applied by its end
//!   (invoked before its completion, acknowledged or unknown).
//! - A bounded counter never leaves its bounds, in any observation.

use std::collections::BTreeMap;

use serde_json::json;

use super::{int, text, Verdict};
use crate::history::{Operation, Outcome};

struct Add {
    delta: i64,
    invoke: u64,
    /// `None` when unknown.
    acked_at: Option<u64>,
}

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("counter");
    let mut adds: BTreeMap<&str, Vec<Add>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "add" && o.outcome != Outcome::Fail) {
        let (Some(key), Some(delta)) = (text(&op.value, "key"), int(&op.value, "delta")) else {
            continue;
        };
        adds.entry(key).or_default().push(Add {
            delta,
            invoke: op.invoke_ns,
            acked_at: op.complete_ns.filter(|_| op.is_ok()),
        });
    }
    let mut observations = 0usize;
    for op in ops {
        let (Some(result), Some(key), Some(completed)) = (op.result(), text(&op.value, "key"), op.complete_ns) else {
            continue;
        };
        let Some(value) = int(result, "value") else { continue };
        observations += 1;
        match op.f.as_str() {
            "read" | "add" => {
                let key_adds = adds.get(key).map(Vec::as_slice).unwrap_or_default();
                let own = |a: &Add| op.f == "add" && a.invoke == op.invoke_ns;
                let lower: i64 = key_adds
                    .iter()
                    .filter(|a| own(a) || a.acked_at.is_some_and(|t| t < op.invoke_ns))
                    .map(|a| a.delta)
                    .sum();
                let upper: i64 = key_adds.iter().filter(|a| a.invoke < completed).map(|a| a.delta).sum();
                if value < lower || value > upper {
                    verdict.problem(format!(
                        "counter {key}: process {} `{}` saw {value} at {:.3}s, outside [{lower}, {upper}] \
                         (acknowledged before it .. attempted by its end)",
                        op.process,
                        op.f,
                        op.invoke_ns as f64 / 1e9
                    ));
                }
            }
            "add-bounded" | "read-bounded" => {
                let (Some(min), Some(max)) = (int(&op.value, "min"), int(&op.value, "max")) else {
                    continue;
                };
                if value < min || value > max {
                    verdict.problem(format!(
                        "bounded counter {key}: process {} `{}` saw {value}, outside its bounds [{min}, {max}]",
                        op.process, op.f
                    ));
                }
            }
            _ => {}
        }
    }
    let acked: i64 = adds
        .values()
        .flatten()
        .filter(|a| a.acked_at.is_some())
        .map(|a| a.delta)
        .sum();
    let unknown: i64 = adds
        .values()
        .flatten()
        .filter(|a| a.acked_at.is_none())
        .map(|a| a.delta)
        .sum();
    verdict.stats = json!({ "observations": observations, "acknowledged_sum": acked, "unknown_sum": unknown });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    fn add(h: &mut HistoryBuilder, p: u64, delta: i64, result: i64) {
        h.call(p, "add", json!({"key": "c", "delta": delta}), json!({"value": result}));
    }

    #[test]
    fn exact_sums_pass() {
        let mut h = HistoryBuilder::new();
        add(&mut h, 1, 2, 2);
        add(&mut h, 2, 3, 5);
        h.call(3, "read", json!({"key": "c"}), json!({"value": 5}));
        assert!(check(&h.ops()).is_valid());
    }

    #[test]
    fn an_unknown_increment_may_count_or_not() {
        for seen in [2, 7] {
            let mut h = HistoryBuilder::new();
            add(&mut h, 1, 2, 2);
            h.invoke(2, "add", json!({"key": "c", "delta": 5})).info(2, "add");
            h.call(3, "read", json!({"key": "c"}), json!({"value": seen}));
            assert!(check(&h.ops()).is_valid(), "saw {seen}");
        }
    }

    #[test]
    fn a_lost_increment_is_caught() {
        let mut h = HistoryBuilder::new();
        add(&mut h, 1, 2, 2);
        add(&mut h, 1, 3, 5);
        h.call(3, "read", json!({"key": "c"}), json!({"value": 2}));
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("outside [5, 5]"), "{:?}", v.problems);
    }

    #[test]
    fn an_increment_applied_twice_is_caught() {
        let mut h = HistoryBuilder::new();
        add(&mut h, 1, 2, 2);
        h.call(3, "read", json!({"key": "c"}), json!({"value": 4}));
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn a_failed_increment_must_not_count() {
        let mut h = HistoryBuilder::new();
        h.invoke(2, "add", json!({"key": "c", "delta": 5})).fail(2, "add");
        h.call(3, "read", json!({"key": "c"}), json!({"value": 5}));
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn a_bounded_counter_out_of_bounds_is_caught() {
        let mut h = HistoryBuilder::new();
        h.call(
            1,
            "add-bounded",
            json!({"key": "b", "delta": 1, "min": 0, "max": 3}),
            json!({"value": 3}),
        );
        assert!(check(&h.ops()).is_valid());
        h.call(
            1,
            "add-bounded",
            json!({"key": "b", "delta": 1, "min": 0, "max": 3}),
            json!({"value": 4}),
        );
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }
}
