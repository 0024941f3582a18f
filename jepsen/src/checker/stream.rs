//! The stream (`set`) workload's checker: every acknowledged append is read back at the offset it
//! was given, partitions have no gaps, nothing appears twice or from nowhere, appends acknowledged
//! one after another keep their order, and every read during the run agrees with the final log.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{text, uint, Verdict};
use crate::history::{Operation, Outcome};

type Log = BTreeMap<u64, BTreeMap<u64, String>>;

fn records(value: Option<&Value>) -> Vec<(u64, String)> {
    value
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn final_log(ops: &[Operation]) -> Option<Log> {
    let result = ops.iter().rev().find(|o| o.f == "final-read" && o.is_ok())?.result()?;
    let partitions = result.get("partitions")?.as_object()?;
    Some(
        partitions
            .iter()
            .filter_map(|(p, rs)| Some((p.parse().ok()?, records(Some(rs)).into_iter().collect())))
            .collect(),
    )
}

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("stream");
    let Some(log) = final_log(ops) else {
        verdict.undecided("no final read of the partitions".into());
        return verdict;
    };
    let produced: BTreeMap<&str, &Operation> = ops
        .iter()
        .filter(|o| o.f == "produce")
        .filter_map(|o| Some((text(&o.value, "value")?, o)))
        .collect();

    let mut seen: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (partition, records) in &log {
        let mut expected = records.keys().next().copied().unwrap_or(0);
        for (offset, value) in records {
            if *offset != expected {
                verdict.problem(format!(
                    "partition {partition}: offsets jump from {expected} to {offset}: a gap"
                ));
            }
            expected = offset + 1;
            if let Some((p, o)) = seen.insert(value, (*partition, *offset)) {
                verdict.problem(format!(
                    "{value:?} appears twice: partition {p} offset {o} and partition {partition} offset {offset}"
                ));
            }
            match produced.get(value.as_str()).map(|op| &op.outcome) {
                None => verdict.problem(format!("{value:?} at {partition}/{offset} was never produced")),
                Some(Outcome::Fail) => verdict.problem(format!(
                    "{value:?} at {partition}/{offset} was produced, failed, yet is there"
                )),
                Some(_) => {}
            }
        }
    }

    let mut acked: Vec<(&Operation, u64, u64)> = Vec::new();
    for (value, op) in &produced {
        let Some(result) = op.result() else { continue };
        let (Some(partition), Some(offset)) = (uint(result, "partition"), uint(result, "offset")) else {
            continue;
        };
        acked.push((op, partition, offset));
        if log.get(&partition).and_then(|p| p.get(&offset)).map(String::as_str) != Some(*value) {
            verdict.problem(format!(
                "{value:?} was acknowledged at {partition}/{offset} to process {}, but the log has {:?} there: lost",
                op.process,
                log.get(&partition).and_then(|p| p.get(&offset))
            ));
        }
    }
    for (a, pa, oa) in &acked {
        for (b, pb, ob) in &acked {
            if pa == pb && a.complete_ns.is_some_and(|t| t < b.invoke_ns) && oa >= ob {
                verdict.problem(format!(
                    "partition {pa}: an append acknowledged at offset {oa} before another was invoked got the later offset {ob}"
                ));
            }
        }
    }

    let mut fetches = 0usize;
    for op in ops.iter().filter(|o| o.f == "fetch") {
        let (Some(result), Some(partition), Some(from)) =
            (op.result(), uint(&op.value, "partition"), uint(&op.value, "offset"))
        else {
            continue;
        };
        fetches += 1;
        let mut expected = from;
        for (offset, value) in records(result.get("records")) {
            if offset != expected {
                verdict.problem(format!(
                    "fetch of partition {partition} from {from} by process {} skipped from {expected} to {offset}",
                    op.process
                ));
            }
            expected = offset + 1;
            let in_log = log.get(&partition).and_then(|p| p.get(&offset));
            if in_log != Some(&value) {
                verdict.problem(format!(
                    "fetch by process {} read {value:?} at {partition}/{offset}; the final log has {in_log:?}",
                    op.process
                ));
            }
        }
    }
    let unknown_landed = produced
        .iter()
        .filter(|(v, op)| op.outcome == Outcome::Info && seen.contains_key(*v))
        .count();
    let partitions: BTreeSet<&u64> = log.keys().collect();
    verdict.stats = json!({
        "partitions": partitions.len(),
        "records": seen.len(),
        "acknowledged": acked.len(),
        "unknown_that_landed": unknown_landed,
        "fetches_checked": fetches,
    });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    fn produce(h: &mut HistoryBuilder, p: u64, value: &str, partition: u64, offset: u64) {
        h.call(
            p,
            "produce",
            json!({"value": value}),
            json!({"partition": partition, "offset": offset}),
        );
    }

    fn final_read(h: &mut HistoryBuilder, partitions: Value) {
        h.call(9, "final-read", json!({}), json!({ "partitions": partitions }));
    }

    #[test]
    fn a_complete_log_passes() {
        let mut h = HistoryBuilder::new();
        produce(&mut h, 1, "a", 0, 0);
        produce(&mut h, 1, "b", 0, 1);
        h.invoke(2, "produce", json!({"value": "c"})).info(2, "produce");
        h.call(
            3,
            "fetch",
            json!({"partition": 0, "offset": 1}),
            json!({"records": [[1, "b"]]}),
        );
        final_read(&mut h, json!({"0": [[0, "a"], [1, "b"], [2, "c"]], "1": []}));
        let v = check(&h.ops());
        assert!(v.is_valid(), "{v:?}");
        assert_eq!(v.stats["unknown_that_landed"], 1);
    }

    #[test]
    fn a_lost_append_is_caught() {
        let mut h = HistoryBuilder::new();
        produce(&mut h, 1, "a", 0, 0);
        produce(&mut h, 1, "b", 0, 1);
        final_read(&mut h, json!({"0": [[0, "a"]]}));
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("lost"));
    }

    #[test]
    fn gaps_duplicates_and_phantoms_are_caught() {
        let mut h = HistoryBuilder::new();
        produce(&mut h, 1, "a", 0, 0);
        final_read(&mut h, json!({"0": [[0, "a"], [2, "a"], [3, "zzz"]]}));
        let v = check(&h.ops());
        assert_eq!(v.problem_count, 3, "{:?}", v.problems);
    }

    #[test]
    fn a_fetch_that_disagrees_with_the_final_log_is_caught() {
        let mut h = HistoryBuilder::new();
        produce(&mut h, 1, "a", 0, 0);
        h.invoke(2, "produce", json!({"value": "x"})).info(2, "produce");
        // A read saw "x" at offset 1, which a later leader then overwrote with "b".
        h.call(
            3,
            "fetch",
            json!({"partition": 0, "offset": 0}),
            json!({"records": [[0, "a"], [1, "x"]]}),
        );
        produce(&mut h, 1, "b", 0, 1);
        final_read(&mut h, json!({"0": [[0, "a"], [1, "b"]]}));
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn appends_out_of_real_time_order_are_caught() {
        let mut h = HistoryBuilder::new();
        produce(&mut h, 1, "a", 0, 1);
        produce(&mut h, 1, "b", 0, 0);
        final_read(&mut h, json!({"0": [[0, "b"], [1, "a"]]}));
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }
}
