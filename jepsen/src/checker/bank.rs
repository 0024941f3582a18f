//! The bank (ledger) workload's checker.
//!
//! - Every read sees the money conserved: customer balances sum to what was funded, and each is
//!   non-negative (accounts may not debit past their credits).
//! - Every read is linearizable with the transfers: each account's posted credits and debits
//!   include every transfer acknowledged before the read began, and nothing that failed or began
//!   after the read completed.
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

/// Checks one read's posted totals against the transfers around it: for every account, what the
/// transfers acknowledged before the read began add up to is a floor, and what every transfer
/// that may have happened by the time it completed adds up to is a ceiling.
fn check_posted(
    verdict: &mut Verdict,
    read: &Operation,
    result: &Value,
    transfers: &BTreeMap<u64, (Move, &Operation)>,
) {
    let Some(posted) = result.get("posted").and_then(Value::as_object) else {
        return;
    };
    let done = read.complete_ns.unwrap_or(u64::MAX);
    for (account, totals) in posted {
        let (Ok(account), Some(credits), Some(debits)) = (
            account.parse::<u64>(),
            totals.get(0).and_then(Value::as_i64),
            totals.get(1).and_then(Value::as_i64),
        ) else {
            continue;
        };
        let (mut floor, mut ceiling) = ([0i64; 2], [0i64; 2]);
        for (m, op) in transfers.values() {
            let side = if m.to == account {
                0
            } else if m.from == account {
                1
            } else {
                continue;
            };
            if op.is_ok() && op.complete_ns.is_some_and(|c| c < read.invoke_ns) {
                floor[side] += m.amount;
            }
            if op.outcome != Outcome::Fail && op.invoke_ns < done {
                ceiling[side] += m.amount;
            }
        }
        for (side, seen) in [(0usize, credits), (1, debits)] {
            let what = if side == 0 { "credits" } else { "debits" };
            if seen < floor[side] {
                verdict.problem(format!(
                    "read by process {} at {:.3}s: account {account} shows {seen} {what} posted, but the transfers \
                     acknowledged before the read began post {}: it missed an acknowledged transfer",
                    read.process,
                    read.invoke_ns as f64 / 1e9,
                    floor[side]
                ));
            } else if seen > ceiling[side] {
                verdict.problem(format!(
                    "read by process {} at {:.3}s: account {account} shows {seen} {what} posted, more than every \
                     transfer that may have happened by then ({})",
                    read.process,
                    read.invoke_ns as f64 / 1e9,
                    ceiling[side]
                ));
            }
        }
    }
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
        check_posted(&mut verdict, op, result, &transfers);
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

    /// A read that shows `posted` totals for accounts 1 and 2 (credits, debits).
    fn read_posted(h: &mut HistoryBuilder, one: [i64; 2], two: [i64; 2]) {
        let (a, b) = (one[0] - one[1], two[0] - two[1]);
        h.call(
            9,
            "read",
            json!({}),
            json!({"balances": {"1": a, "2": b, "1000": -(a + b)}, "posted": {"1": one, "2": two}}),
        );
    }

    #[test]
    fn a_read_that_misses_an_acknowledged_transfer_is_caught() {
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        // The transfer was acknowledged before the read began, but the read shows the funding
        // only: conserved, yet stale.
        read_posted(&mut h, [10, 0], [10, 0]);
        let v = check(&h.ops(), OP);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(
            v.problems.iter().any(|p| p.contains("missed an acknowledged transfer")),
            "{:?}",
            v.problems
        );
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        read_posted(&mut h, [10, 3], [13, 0]);
        assert!(check(&h.ops(), OP).problems.is_empty());
        // A transfer still in flight may or may not show.
        let mut h = funded();
        h.invoke(1, "transfer", json!({"id": 10, "from": 1, "to": 2, "amount": 3}));
        read_posted(&mut h, [10, 0], [10, 0]);
        assert!(check(&h.ops(), OP).problems.is_empty());
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
