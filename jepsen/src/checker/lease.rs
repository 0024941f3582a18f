//! The lease workload's checker: fencing tokens strictly increase with real time, and writes
//! fenced with a stale token never land.
//!
//! Clients acquire one lease, then write a key with the token as fence. The final history of that
//! key (every write that landed, in revision order, read back with a KV watch) must show tokens
//! that never go down: a lower token after a higher one is a write by a holder whose lease had
//! already been taken over, which the fence exists to refuse. Two holders with valid leases at
//! overlapping times would show up exactly so.

use serde_json::{json, Value};

use super::{uint, Verdict};
use crate::history::Operation;

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("lease");
    let grants: Vec<(&Operation, u64)> = ops
        .iter()
        .filter(|o| o.f == "acquire")
        .filter_map(|o| Some((o, uint(o.result()?, "token")?)))
        .collect();
    for (i, (a, ta)) in grants.iter().enumerate() {
        for (b, tb) in &grants[i + 1..] {
            if ta == tb {
                verdict.problem(format!(
                    "token {ta} granted twice: to process {} and to process {}",
                    a.process, b.process
                ));
            }
            for ((first, t1), (second, t2)) in [((a, ta), (b, tb)), ((b, tb), (a, ta))] {
                if first.complete_ns.is_some_and(|done| done < second.invoke_ns) && t1 >= t2 {
                    verdict.problem(format!(
                        "token {t2} granted to process {} after token {t1} had been granted to process {}: tokens must increase",
                        second.process, first.process
                    ));
                }
            }
        }
    }

    let acknowledged: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.f == "write")
        .filter_map(|o| Some((uint(o.result()?, "revision")?, uint(&o.value, "token")?)))
        .collect();
    let landed: Option<Vec<(u64, u64)>> = ops
        .iter()
        .rev()
        .find(|o| o.f == "final-history" && o.is_ok())
        .and_then(|o| o.result()?.get("writes")?.as_array().cloned())
        .map(|writes| {
            writes
                .iter()
                .filter_map(|w| Some((uint(w, "revision")?, uint(w, "token")?)))
                .collect()
        });
    let mut sequence = landed.clone().unwrap_or_else(|| acknowledged.clone());
    sequence.sort_unstable();
    for pair in sequence.windows(2) {
        let ((r1, t1), (r2, t2)) = (pair[0], pair[1]);
        if t2 < t1 {
            verdict.problem(format!(
                "a write fenced with token {t2} landed at revision {r2}, after one with token {t1} at revision {r1}: a stale fence was accepted"
            ));
        }
    }
    match &landed {
        Some(landed) => {
            for write in &acknowledged {
                if !landed.contains(write) {
                    verdict.problem(format!(
                        "the write with token {} acknowledged at revision {} is not in the key's history: lost",
                        write.1, write.0
                    ));
                }
            }
        }
        None => verdict.undecided("no final history of the fenced key".into()),
    }
    verdict.stats = json!({
        "grants": grants.len(),
        "writes_acknowledged": acknowledged.len(),
        "writes_landed": landed.as_ref().map_or(Value::Null, |l| json!(l.len())),
    });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    fn acquire(h: &mut HistoryBuilder, p: u64, token: u64) {
        h.call(
            p,
            "acquire",
            json!({"holder": format!("p{p}")}),
            json!({"token": token}),
        );
    }

    fn write(h: &mut HistoryBuilder, p: u64, token: u64, revision: u64) {
        h.call(p, "write", json!({"token": token}), json!({"revision": revision}));
    }

    fn landed(h: &mut HistoryBuilder, writes: &[(u64, u64)]) {
        let writes: Vec<_> = writes.iter().map(|(r, t)| json!({"revision": r, "token": t})).collect();
        h.call(9, "final-history", json!({}), json!({ "writes": writes }));
    }

    #[test]
    fn holders_in_turn_pass() {
        let mut h = HistoryBuilder::new();
        acquire(&mut h, 1, 1);
        write(&mut h, 1, 1, 10);
        acquire(&mut h, 2, 2);
        write(&mut h, 2, 2, 11);
        h.invoke(1, "write", json!({"token": 1})).fail(1, "write");
        landed(&mut h, &[(10, 1), (11, 2)]);
        assert!(check(&h.ops()).is_valid());
    }

    #[test]
    fn a_stale_fence_that_landed_is_caught_even_when_its_client_timed_out() {
        let mut h = HistoryBuilder::new();
        acquire(&mut h, 1, 1);
        acquire(&mut h, 2, 2);
        write(&mut h, 2, 2, 11);
        h.invoke(1, "write", json!({"token": 1})).info(1, "write");
        landed(&mut h, &[(11, 2), (12, 1)]);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("stale fence"), "{:?}", v.problems);
    }

    #[test]
    fn tokens_going_backwards_or_repeating_are_caught() {
        let mut h = HistoryBuilder::new();
        acquire(&mut h, 1, 5);
        acquire(&mut h, 2, 4);
        landed(&mut h, &[]);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
        let mut h = HistoryBuilder::new();
        acquire(&mut h, 1, 5);
        acquire(&mut h, 2, 5);
        landed(&mut h, &[]);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn a_lost_fenced_write_is_caught() {
        let mut h = HistoryBuilder::new();
        acquire(&mut h, 1, 1);
        write(&mut h, 1, 1, 10);
        landed(&mut h, &[]);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }
}
