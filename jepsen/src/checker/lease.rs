//! The lease workload's checker: fencing tokens strictly increase with real time, and writes
//! fenced with a stale token never land.
//!
//! Clients acquire one lease, then write a key with the token as fence. The final history of that
//! key (every write that landed, in revision order, read back with a KV watch) must show tokens
//! that never go down: a lower token after a higher one is a write by a holder whose lease had
//! already been taken over, which the fence exists to refuse. Two holders with valid leases at
//! overlapping times would show up exactly so.
//!
//! A fenced write acknowledged although it began after its grant had surely expired (the grant's
//! acknowledgement, plus its TTL, plus twice the clock bound and some slack), with no renewal in
//! between, is also a violation: the fence must judge expiry, not just supersession. A clock
//! that drags time backwards, or a grant whose expiry is judged by a clock far behind, shows up
//! so.

use serde_json::{json, Value};

use super::{uint, Verdict};
use crate::history::Operation;

/// How long after its grant's acknowledgement plus TTL a fenced write may still be accepted:
/// the grant's stamp may be one max clock offset ahead of real time and the write's one behind
/// (2 × 500 ms), plus scheduling slack; in ms.
const EXPIRY_SLACK_MS: u64 = 1_500;

/// Fenced writes acknowledged although they began after their grant had surely expired.
fn writes_after_expiry(verdict: &mut Verdict, ops: &[Operation]) {
    for write in ops.iter().filter(|o| o.f == "write" && o.is_ok()) {
        let Some(token) = uint(&write.value, "token") else {
            continue;
        };
        let granted: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.f == "acquire" && o.result().and_then(|r| uint(r, "token")) == Some(token))
            .collect();
        let Some(first) = granted.first() else { continue };
        let (Some(holder), Some(ttl_ms)) = (
            first.value.get("holder").and_then(Value::as_str),
            uint(&first.value, "ttl_ms"),
        ) else {
            continue;
        };
        // A re-acquire by the holder extends the grant; one whose outcome is unknown may have.
        let renewed_unknown = ops.iter().any(|o| {
            o.f == "acquire"
                && o.outcome == crate::history::Outcome::Info
                && o.value.get("holder").and_then(Value::as_str) == Some(holder)
                && o.invoke_ns > first.invoke_ns
        });
        // The grant as renewed before the write began (a later re-acquire cannot excuse it).
        let Some(last_grant) = granted
            .iter()
            .filter_map(|o| o.complete_ns)
            .filter(|done| *done < write.invoke_ns)
            .max()
        else {
            continue;
        };
        let expired_by = last_grant + (ttl_ms + EXPIRY_SLACK_MS) * 1_000_000;
        if !renewed_unknown && write.invoke_ns > expired_by {
            verdict.problem(format!(
                "process {} wrote with token {token} at {:.3}s and was acknowledged, though that grant ({} ms, \
                 acknowledged at {:.3}s, never renewed) had expired: an expired fence was accepted",
                write.process,
                write.invoke_ns as f64 / 1e9,
                ttl_ms,
                last_grant as f64 / 1e9
            ));
        }
    }
}

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("lease");
    writes_after_expiry(&mut verdict, ops);
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
    fn a_fenced_write_acknowledged_long_after_its_grant_expired_is_caught() {
        let grant = |h: &mut HistoryBuilder| {
            h.call(
                1,
                "acquire",
                json!({"holder": "p1", "ttl_ms": 1000}),
                json!({"token": 1}),
            );
        };
        let mut h = HistoryBuilder::new();
        grant(&mut h);
        h.advance_ns(5_000_000_000);
        write(&mut h, 1, 1, 10);
        landed(&mut h, &[(10, 1)]);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("expired fence"), "{:?}", v.problems);
        // Within the TTL (and the clock bound), it is fine.
        let mut h = HistoryBuilder::new();
        grant(&mut h);
        h.advance_ns(1_500_000_000);
        write(&mut h, 1, 1, 10);
        landed(&mut h, &[(10, 1)]);
        assert!(check(&h.ops()).is_valid());
        // A re-acquire whose outcome is unknown may have renewed it: not judged.
        let mut h = HistoryBuilder::new();
        grant(&mut h);
        h.invoke(1, "acquire", json!({"holder": "p1", "ttl_ms": 1000}))
            .info(1, "acquire");
        h.advance_ns(5_000_000_000);
        write(&mut h, 1, 1, 10);
        landed(&mut h, &[(10, 1)]);
        assert!(check(&h.ops()).is_valid());
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
