//! The bank (ledger) workload's checker.
//!
//! - Every read sees the money conserved: customer balances sum to what was funded, and each is
//!   non-negative (accounts may not debit past their credits).
//! - After the run, the transfers that exist are exactly the acknowledged ones plus some of the
//!   unknown ones (none that failed), and the final balances are what those transfers, each
//!   applied once, produce.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{int, uint, Verdict};
use crate::history::{Operation, Outcome};

#[derive(Clone, Copy)]
struct Move {
    from: u64,
    to: u64,
    amount: i64,
}

fn move_of(value: &Value) -> Option<Move> {
    Some(Move {
        from: uint(value, "from")?,
        to: uint(value, "to")?,
        amount: int(value, "amount")?,
    })
}

fn balances_of(result: &Value) -> BTreeMap<u64, i64> {
    result
        .get("balances")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn check(ops: &[Operation], operator: u64) -> Verdict {
    let mut verdict = Verdict::new("bank");
    let funded: i64 = ops
        .iter()
        .filter(|o| o.f == "fund" && o.is_ok())
        .filter_map(|o| int(&o.value, "amount"))
        .sum();
    let mut transfers: BTreeMap<u64, (Move, &Operation)> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "transfer" || o.f == "fund") {
        if let (Some(id), Some(m)) = (uint(&op.value, "id"), move_of(&op.value)) {
            transfers.insert(id, (m, op));
        }
    }
    let mut reads = 0usize;
    let mut last_read: Option<BTreeMap<u64, i64>> = None;
    for op in ops.iter().filter(|o| o.f == "read") {
        let Some(result) = op.result() else { continue };
        let balances = balances_of(result);
        reads += 1;
        let customers: i64 = balances.iter().filter(|(id, _)| **id != operator).map(|(_, b)| b).sum();
        let all: i64 = balances.values().sum();
        if all != 0 {
            verdict.problem(format!(
                "read by process {} at {:.3}s: balances sum to {all}, not 0: double-entry broken {balances:?}",
                op.process,
                op.invoke_ns as f64 / 1e9
            ));
        }
        if customers != funded {
            verdict.problem(format!(
                "read by process {} at {:.3}s: customer balances total {customers}, but {funded} was funded: {balances:?}",
                op.process,
                op.invoke_ns as f64 / 1e9
            ));
        }
        for (id, balance) in balances.iter().filter(|(id, b)| **id != operator && **b < 0) {
            verdict.problem(format!(
                "read by process {}: account {id} at {balance}, past its limit (debits may not exceed credits)",
                op.process
            ));
        }
        last_read = Some(balances);
    }

    let found: Option<BTreeSet<u64>> = ops
        .iter()
        .rev()
        .find(|o| o.f == "final-transfers" && o.is_ok())
        .and_then(|o| o.result())
        .and_then(|r| r.get("found"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect());
    match (found, last_read) {
        (Some(found), Some(final_balances)) => {
            let mut expected: BTreeMap<u64, i64> = final_balances.keys().map(|&id| (id, 0)).collect();
            for (id, (m, op)) in &transfers {
                let exists = found.contains(id);
                match (&op.outcome, exists) {
                    (Outcome::Ok(_), false) => verdict.problem(format!(
                        "transfer {id} ({} → {}, {}) was acknowledged but does not exist: lost",
                        m.from, m.to, m.amount
                    )),
                    (Outcome::Fail, true) => verdict.problem(format!(
                        "transfer {id} ({} → {}, {}) failed but exists",
                        m.from, m.to, m.amount
                    )),
                    _ => {}
                }
                if exists {
                    *expected.entry(m.from).or_insert(0) -= m.amount;
                    *expected.entry(m.to).or_insert(0) += m.amount;
                }
            }
            if expected != final_balances {
                verdict.problem(format!(
                    "final balances {final_balances:?} are not what the existing transfers, each applied once, give: {expected:?}"
                ));
            }
            for id in found.iter().filter(|id| !transfers.contains_key(id)) {
                verdict.problem(format!("transfer {id} exists but was never attempted"));
            }
        }
        _ => verdict.undecided("no final read of balances and transfers".into()),
    }
    verdict.stats = json!({ "reads": reads, "funded": funded, "transfers_attempted": transfers.len() });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    const OP: u64 = 1000;

    fn funded() -> HistoryBuilder {
        let mut h = HistoryBuilder::new();
        h.call(
            0,
            "fund",
            json!({"id": 1, "from": OP, "to": 1, "amount": 10}),
            json!({}),
        )
        .call(
            0,
            "fund",
            json!({"id": 2, "from": OP, "to": 2, "amount": 10}),
            json!({}),
        );
        h
    }

    fn read(h: &mut HistoryBuilder, a: i64, b: i64) {
        h.call(
            9,
            "read",
            json!({}),
            json!({"balances": {"1": a, "2": b, "1000": -(a + b)}}),
        );
    }

    fn finish(h: &mut HistoryBuilder, found: &[u64], a: i64, b: i64) {
        read(h, a, b);
        h.call(9, "final-transfers", json!({}), json!({"found": found}));
    }

    #[test]
    fn conserved_money_passes() {
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        h.invoke(2, "transfer", json!({"id": 11, "from": 2, "to": 1, "amount": 1}))
            .info(2, "transfer");
        read(&mut h, 7, 13);
        finish(&mut h, &[1, 2, 10], 7, 13);
        let v = check(&h.ops(), OP);
        assert!(v.is_valid(), "{v:?}");
    }

    #[test]
    fn a_read_that_creates_money_is_caught() {
        let mut h = funded();
        h.call(
            9,
            "read",
            json!({}),
            json!({"balances": {"1": 10, "2": 11, "1000": -20}}),
        );
        finish(&mut h, &[1, 2], 10, 10);
        let v = check(&h.ops(), OP);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems.iter().any(|p| p.contains("sum to 1")), "{:?}", v.problems);
    }

    #[test]
    fn a_double_spend_is_caught() {
        // Transfer 10 applied twice: account 1 would go to -6 and the final balances differ.
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 8}),
            json!({}),
        );
        finish(&mut h, &[1, 2, 10], -6, 26);
        let v = check(&h.ops(), OP);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(
            v.problems.iter().any(|p| p.contains("past its limit")),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems.iter().any(|p| p.contains("each applied once")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_lost_transfer_and_a_failed_one_that_landed_are_caught() {
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        h.invoke(2, "transfer", json!({"id": 11, "from": 2, "to": 1, "amount": 4}))
            .fail(2, "transfer");
        finish(&mut h, &[1, 2, 11], 14, 6);
        let v = check(&h.ops(), OP);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("transfer 10") && p.contains("lost")),
            "{:?}",
            v.problems
        );
        assert!(v
            .problems
            .iter()
            .any(|p| p.contains("transfer 11") && p.contains("failed but exists")));
    }

    #[test]
    fn no_final_read_is_unknown() {
        let h = funded();
        assert_eq!(check(&h.ops(), OP).validity, Validity::Unknown);
    }
}
