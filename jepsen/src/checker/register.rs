//! The register workload's checker: per-key linearizability of read, write and compare-and-set.
//!
//! Values are unique per key (the workload never writes a value twice), so a compare-and-set on
//! the revision a read returned is a compare-and-set on the value that read saw: the model
//! tracks values only.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::linearizable::{check as search, Linearizability, Model, TimedOp};
use super::{int, text, Verdict};
use crate::history::{Operation, Outcome};

/// Steps the search may take per key before answering "unknown".
pub const SEARCH_BUDGET_PER_KEY: u64 = 5_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Register(Option<i64>);

#[derive(Clone, Debug, PartialEq)]
pub enum RegisterOp {
    Read(Option<i64>),
    Write(i64),
    /// `succeeded: None` when the outcome is unknown.
    Cas {
        from: Option<i64>,
        to: i64,
        succeeded: Option<bool>,
    },
}

impl Model for Register {
    type Op = RegisterOp;

    fn step(&self, op: &RegisterOp) -> Option<Register> {
        match *op {
            RegisterOp::Read(seen) => (self.0 == seen).then(|| self.clone()),
            RegisterOp::Write(v) => Some(Register(Some(v))),
            RegisterOp::Cas { from, to, succeeded } => match succeeded {
                Some(true) => (self.0 == from).then_some(Register(Some(to))),
                Some(false) => (self.0 != from).then(|| self.clone()),
                None if self.0 == from => Some(Register(Some(to))),
                None => Some(self.clone()),
            },
        }
    }
}

/// The model operation of a history operation, or `None` when it cannot matter (a failed
/// operation did not happen; a read of unknown outcome observed nothing).
fn model_op(op: &Operation) -> Option<RegisterOp> {
    let result = op.result();
    if op.outcome == Outcome::Fail {
        return None;
    }
    match op.f.as_str() {
        "read" => result.map(|r| RegisterOp::Read(int(r, "value"))),
        "write" => int(&op.value, "value").map(RegisterOp::Write),
        "cas" => Some(RegisterOp::Cas {
            from: int(&op.value, "from"),
            to: int(&op.value, "to")?,
            succeeded: result.and_then(|r| r.get("ok")).and_then(Value::as_bool),
        }),
        _ => None,
    }
}

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("linearizable-register");
    let mut by_key: BTreeMap<&str, Vec<(TimedOp<RegisterOp>, &Operation)>> = BTreeMap::new();
    for op in ops {
        let (Some(key), Some(model)) = (text(&op.value, "key"), model_op(op)) else {
            continue;
        };
        let timed = TimedOp {
            op: model,
            call: op.invoke_ns,
            ret: op.complete_ns.filter(|_| op.is_ok()),
        };
        by_key.entry(key).or_default().push((timed, op));
    }
    let mut unknown_keys = Vec::new();
    for (key, key_ops) in &by_key {
        let timed: Vec<TimedOp<RegisterOp>> = key_ops.iter().map(|(t, _)| t.clone()).collect();
        match search(&Register(None), &timed, SEARCH_BUDGET_PER_KEY) {
            Linearizability::Linearizable => {}
            Linearizability::Unknown => unknown_keys.push(key.to_string()),
            Linearizability::NotLinearizable { deepest, stuck } => {
                let op = key_ops[stuck].1;
                verdict.problem(format!(
                    "key {key}: no linearization of its {} operations; at most {deepest} could be ordered, \
                     then process {} `{}` {} (invoked at {:.3}s, result {}) could not be placed",
                    key_ops.len(),
                    op.process,
                    op.f,
                    op.value,
                    op.invoke_ns as f64 / 1e9,
                    op.result().map_or_else(|| "unknown".to_string(), Value::to_string),
                ));
            }
        }
    }
    if !unknown_keys.is_empty() {
        verdict.undecided(format!("search budget exhausted on keys {unknown_keys:?}"));
    }
    verdict.stats = json!({ "keys": by_key.len(), "operations": by_key.values().map(Vec::len).sum::<usize>() });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    #[test]
    fn reads_of_written_values_pass() {
        let mut h = HistoryBuilder::new();
        h.call(1, "write", json!({"key": "a", "value": 1}), json!({"revision": 5}))
            .call(2, "read", json!({"key": "a"}), json!({"value": 1}))
            .call(1, "cas", json!({"key": "a", "from": 1, "to": 2}), json!({"ok": true}))
            .call(2, "read", json!({"key": "a"}), json!({"value": 2}))
            .call(2, "cas", json!({"key": "a", "from": 1, "to": 3}), json!({"ok": false}))
            .call(3, "read", json!({"key": "b"}), json!({"value": null}));
        let v = check(&h.ops());
        assert!(v.is_valid(), "{v:?}");
        assert_eq!(v.stats["keys"], 2);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = HistoryBuilder::new();
        h.call(1, "write", json!({"key": "a", "value": 1}), json!({}))
            .call(1, "write", json!({"key": "a", "value": 2}), json!({}))
            .call(2, "read", json!({"key": "a"}), json!({"value": 1}));
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("key a"), "{:?}", v.problems);
    }

    #[test]
    fn a_lost_write_is_caught() {
        let mut h = HistoryBuilder::new();
        h.call(1, "write", json!({"key": "a", "value": 1}), json!({})).call(
            2,
            "read",
            json!({"key": "a"}),
            json!({"value": null}),
        );
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn a_cas_that_succeeded_against_the_wrong_value_is_caught() {
        let mut h = HistoryBuilder::new();
        h.call(1, "write", json!({"key": "a", "value": 1}), json!({})).call(
            1,
            "cas",
            json!({"key": "a", "from": 7, "to": 2}),
            json!({"ok": true}),
        );
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
        let mut h = HistoryBuilder::new();
        h.call(1, "write", json!({"key": "a", "value": 1}), json!({})).call(
            1,
            "cas",
            json!({"key": "a", "from": 1, "to": 2}),
            json!({"ok": false}),
        );
        assert_eq!(
            check(&h.ops()).validity,
            Validity::Invalid,
            "a cas that should have won"
        );
    }

    #[test]
    fn unknown_and_failed_writes_are_handled_as_maybe_and_never() {
        let mut h = HistoryBuilder::new();
        h.invoke(1, "write", json!({"key": "a", "value": 1}))
            .info(1, "write")
            .invoke(2, "write", json!({"key": "a", "value": 2}))
            .fail(2, "write")
            .call(3, "read", json!({"key": "a"}), json!({"value": 1}));
        assert!(check(&h.ops()).is_valid());
        let mut h = HistoryBuilder::new();
        h.invoke(2, "write", json!({"key": "a", "value": 2}))
            .fail(2, "write")
            .call(3, "read", json!({"key": "a"}), json!({"value": 2}));
        assert_eq!(check(&h.ops()).validity, Validity::Invalid, "a failed write was seen");
    }
}
