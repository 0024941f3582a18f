//! The txn workload's checker: the bank checker over the ledger (conservation, linearizable
//! reads, acknowledged transfers exist, failed ones do not, each applied once), and besides:
//!
//! - every read finds the KV balances and the counters each conserving what was funded, none
//!   negative (a transaction applied in part, or twice, breaks one of them);
//! - the final read, with nothing in flight, finds the three representations equal account by
//!   account: every transaction moved all three or none.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{bank, Verdict};
use crate::history::Operation;

fn numbers(result: &Value, field: &str) -> BTreeMap<u64, i64> {
    result
        .get(field)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn check(ops: &[Operation], operator: u64) -> Verdict {
    let mut verdict = bank::check(ops, operator);
    verdict.checker = "txn";
    let funded: i64 = ops
        .iter()
        .filter(|o| o.f == "fund" && o.is_ok())
        .filter_map(|o| super::int(&o.value, "amount"))
        .sum();
    let mut reads = 0usize;
    for op in ops.iter().filter(|o| o.f == "read" || o.f == "final-read") {
        let Some(result) = op.result() else { continue };
        for field in ["kv", "counters"] {
            let Some(values) = result.get(field).map(|_| numbers(result, field)) else {
                continue;
            };
            reads += 1;
            let total: i64 = values.values().sum();
            if total != funded {
                verdict.problem(format!(
                    "read by process {} at {:.3}s: the {field} balances total {total}, but {funded} was funded: {values:?}",
                    op.process,
                    op.invoke_ns as f64 / 1e9
                ));
            }
            for (customer, balance) in values.iter().filter(|(_, b)| **b < 0) {
                verdict.problem(format!(
                    "read by process {}: customer {customer}'s {field} balance is {balance}, below 0",
                    op.process
                ));
            }
        }
    }
    match ops
        .iter()
        .rev()
        .find(|o| o.f == "final-read" && o.is_ok())
        .and_then(|o| o.result())
    {
        Some(result) => {
            let ledger: BTreeMap<u64, i64> = numbers(result, "balances")
                .into_iter()
                .filter(|(id, _)| *id != operator)
                .collect();
            let (kv, counters) = (numbers(result, "kv"), numbers(result, "counters"));
            if kv != ledger || counters != ledger {
                verdict.problem(format!(
                    "after the run the three representations differ: a transaction applied in part. ledger {ledger:?}, \
                     kv {kv:?}, counters {counters:?}"
                ));
            }
        }
        None => verdict.undecided("no final read of the three representations".into()),
    }
    let bank_stats = std::mem::take(&mut verdict.stats);
    verdict.stats = json!({ "ledger": bank_stats, "kv_and_counter_reads": reads });
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
        for id in 1..=2 {
            h.call(
                0,
                "fund",
                json!({"id": id, "from": OP, "to": id, "amount": 10}),
                json!({}),
            );
        }
        h
    }

    fn read(h: &mut HistoryBuilder, f: &str, ledger: [i64; 2], kv: [i64; 2], counters: [i64; 2]) {
        h.call(
            9,
            f,
            json!({}),
            json!({
                "balances": {"1": ledger[0], "2": ledger[1], "1000": -(ledger[0] + ledger[1])},
                "kv": {"1": kv[0], "2": kv[1]},
                "counters": {"1": counters[0], "2": counters[1]},
            }),
        );
    }

    fn finish(h: &mut HistoryBuilder, found: &[u64], ledger: [i64; 2], kv: [i64; 2], counters: [i64; 2]) {
        read(h, "final-read", ledger, kv, counters);
        read(h, "read", ledger, kv, counters);
        h.call(9, "final-transfers", json!({}), json!({"found": found}));
    }

    #[test]
    fn transfers_applied_whole_pass() {
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        h.invoke(2, "transfer", json!({"id": 11, "from": 2, "to": 1, "amount": 5}))
            .fail(2, "transfer");
        read(&mut h, "read", [7, 13], [7, 13], [7, 13]);
        finish(&mut h, &[1, 2, 10], [7, 13], [7, 13], [7, 13]);
        let v = check(&h.ops(), OP);
        assert!(v.is_valid(), "{v:?}");
    }

    #[test]
    fn a_transaction_applied_in_part_is_caught() {
        // The ledger moved 3, the counters did not: conserved each, but they disagree.
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        finish(&mut h, &[1, 2, 10], [7, 13], [7, 13], [10, 10]);
        let v = check(&h.ops(), OP);
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems.iter().any(|p| p.contains("differ")), "{:?}", v.problems);
    }

    #[test]
    fn a_kv_balance_applied_twice_is_caught() {
        let mut h = funded();
        h.call(
            1,
            "transfer",
            json!({"id": 10, "from": 1, "to": 2, "amount": 3}),
            json!({}),
        );
        read(&mut h, "read", [7, 13], [4, 13], [7, 13]);
        finish(&mut h, &[1, 2, 10], [7, 13], [7, 13], [7, 13]);
        let v = check(&h.ops(), OP);
        assert!(
            v.problems.iter().any(|p| p.contains("kv balances total 17")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn no_final_read_is_unknown() {
        let mut h = funded();
        read(&mut h, "read", [10, 10], [10, 10], [10, 10]);
        h.call(9, "final-transfers", json!({}), json!({"found": [1, 2]}));
        assert_eq!(check(&h.ops(), OP).validity, Validity::Unknown);
    }
}
