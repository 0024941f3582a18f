//! The multi-region workload's checker: convergence and the merge rules, from the history.
//!
//! - **Convergence**: after the heal every region reports the same digest, and every region's
//!   final reads are identical.
//! - **Counters** (PN-counter): the converged value lies between the increments acknowledged in
//!   any region and those that may have been applied (acknowledged or unknown): none lost, none
//!   counted twice.
//! - **Bounded counter** (escrow): the stock, restocked and taken in every region with a lower
//!   bound of 0, converges at or above 0 — partitioned regions together never took more than
//!   was there — and within what the acknowledged and unknown restocks and takes allow.
//! - **KV** (last-writer-wins, deletes and TTLs): a key's converged value was written
//!   (acknowledged or unknown) — no phantom; a key with an acknowledged write has a value unless
//!   a delete or an expiring write of it was attempted — nothing lost; a value written with a TTL
//!   does not outlive it — no expired write comes back; and the winner was not overwritten
//!   *causally*: a value that a region had seen (written or read) before that same region
//!   acknowledged a later write or delete of the key cannot be the winner, since that later
//!   write's version (or the delete's tombstone) is above it in every region — no deleted key
//!   is resurrected, whatever the clocks and however long ago the tombstone was collected.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{int, text, Verdict};
use crate::history::{Operation, Outcome};

/// Added to a write's TTL before its value must be gone: the clock bound between the node that
/// stamped it and the recorder, and the client's own latency, in ms.
const EXPIRY_SLACK_MS: u64 = 2_000;

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("regions");

    match ops.iter().find(|o| o.f == "converge") {
        Some(op) if op.is_ok() => {}
        Some(op) => verdict.problem(format!(
            "regions did not converge after the heal: {}",
            op.result()
                .map_or_else(|| format!("{:?}", op.outcome), Value::to_string)
        )),
        None => verdict.undecided("no convergence check in the history".into()),
    }

    let finals: Vec<&Value> = ops
        .iter()
        .filter(|o| o.f == "final")
        .filter_map(Operation::result)
        .collect();
    let Some(first) = finals.first() else {
        verdict.undecided("no final reads".into());
        return verdict;
    };
    for other in &finals[1..] {
        if other["keys"] != first["keys"] || other["hits"] != first["hits"] || other["stock"] != first["stock"] {
            verdict.problem(format!(
                "regions disagree after converging: {} has {}, {} has {}",
                text(first, "region").unwrap_or("?"),
                json!({"keys": first["keys"], "hits": first["hits"], "stock": first["stock"]}),
                text(other, "region").unwrap_or("?"),
                json!({"keys": other["keys"], "hits": other["hits"], "stock": other["stock"]}),
            ));
        }
    }

    // Counters: between what was acknowledged and what was attempted.
    let adds = ops.iter().filter(|o| o.f == "add");
    let (mut acked, mut maybe) = (0i64, 0i64);
    for op in adds {
        let delta = int(&op.value, "delta").unwrap_or(0);
        match op.outcome {
            Outcome::Ok(_) => acked += delta,
            Outcome::Info => maybe += delta,
            Outcome::Fail => {}
        }
    }
    for f in &finals {
        let hits = int(f, "hits").unwrap_or(0);
        if hits < acked || hits > acked + maybe {
            verdict.problem(format!(
                "counter in {}: {hits} outside [{acked}, {}] (acknowledged .. attempted in every region)",
                text(f, "region").unwrap_or("?"),
                acked + maybe
            ));
        }
    }

    // The stock: never below its bound, and only what restocks and takes explain.
    let sum = |f: &str| {
        ops.iter()
            .filter(|o| o.f == f)
            .fold((0i64, 0i64), |(acked, maybe), op| {
                let delta = int(&op.value, "delta").unwrap_or(0);
                match op.outcome {
                    Outcome::Ok(_) => (acked + delta, maybe),
                    Outcome::Info => (acked, maybe + delta),
                    Outcome::Fail => (acked, maybe),
                }
            })
    };
    let ((restocked, restock_maybe), (taken, take_maybe)) = (sum("restock"), sum("take"));
    let (stock_low, stock_high) = (restocked - taken - take_maybe, restocked + restock_maybe - taken);
    for f in &finals {
        let stock = int(f, "stock").unwrap_or(0);
        let region = text(f, "region").unwrap_or("?");
        if stock < 0 {
            verdict.problem(format!(
                "stock in {region}: {stock}, below its bound of 0 (regions together took more than their escrow)"
            ));
        } else if stock < stock_low || stock > stock_high {
            verdict.problem(format!(
                "stock in {region}: {stock} outside [{stock_low}, {stock_high}] (restocks minus takes)"
            ));
        }
    }

    // KV: no phantom, nothing acknowledged lost, no expired write back, no causally earlier winner.
    let mut written: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut acked_keys: BTreeMap<&str, bool> = BTreeMap::new();
    // Keys that may legitimately end with no value: a delete or an expiring write was attempted.
    let mut may_vanish: BTreeMap<&str, bool> = BTreeMap::new();
    // Values written with a TTL: when they were sure to have expired (the write's completion
    // plus its TTL plus the clock bound), on the recorder's clock.
    let mut expired_by: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| (o.f == "put" || o.f == "delete") && o.outcome != Outcome::Fail)
    {
        let Some(key) = text(&op.value, "key") else { continue };
        if op.f == "delete" {
            may_vanish.insert(key, true);
            continue;
        }
        let Some(v) = text(&op.value, "value") else { continue };
        written.entry(key).or_default().push(v);
        if op.is_ok() {
            acked_keys.insert(key, true);
        }
        if let Some(ttl_ms) = op.value.get("ttl_ms").and_then(Value::as_u64) {
            may_vanish.insert(key, true);
            if let Some(done) = op.complete_ns {
                expired_by.insert(v, done + (ttl_ms + EXPIRY_SLACK_MS) * 1_000_000);
            }
        }
    }
    let final_read_at = ops
        .iter()
        .filter(|o| o.f == "final")
        .map(|o| o.invoke_ns)
        .min()
        .unwrap_or(u64::MAX);
    // (region, key) -> (value seen, when the region had it): acknowledged puts and reads.
    let mut seen: Vec<(&str, &str, &str, u64)> = Vec::new();
    for op in ops.iter().filter(|o| o.is_ok() && (o.f == "put" || o.f == "read")) {
        let (Some(region), Some(key), Some(done)) = (text(&op.value, "region"), text(&op.value, "key"), op.complete_ns)
        else {
            continue;
        };
        let value = if op.f == "put" {
            text(&op.value, "value")
        } else {
            op.result().and_then(|r| text(r, "value"))
        };
        if let Some(value) = value {
            seen.push((region, key, value, done));
        }
    }
    let later_write = |region: &str, key: &str, after: u64, value: &str| {
        ops.iter().any(|o| {
            (o.f == "put" || o.f == "delete")
                && o.is_ok()
                && o.invoke_ns > after
                && text(&o.value, "region") == Some(region)
                && text(&o.value, "key") == Some(key)
                && text(&o.value, "value") != Some(value)
        })
    };
    let keys = first["keys"].as_object().cloned().unwrap_or_default();
    for (key, value) in &keys {
        match value.as_str() {
            None if acked_keys.contains_key(key.as_str()) && !may_vanish.contains_key(key.as_str()) => verdict.problem(
                format!("key {key}: an acknowledged write is lost (the key has no value, and it was never deleted)"),
            ),
            None => {}
            Some(v) => {
                if !written.get(key.as_str()).is_some_and(|w| w.contains(&v)) {
                    verdict.problem(format!("key {key}: converged on {v:?}, which was never written"));
                }
                if expired_by.get(v).is_some_and(|by| *by < final_read_at) {
                    verdict.problem(format!(
                        "key {key}: converged on {v:?}, a write whose TTL had run out before the final reads \
                         (an expired write came back)"
                    ));
                }
                for (region, _, _, at) in seen.iter().filter(|(_, k, s, _)| k == key && *s == v) {
                    if later_write(region, key, *at, v) {
                        verdict.problem(format!(
                            "key {key}: converged on {v:?}, though region {region} had it at {:.3}s and then \
                             acknowledged a later write or delete of the key (a causally earlier write won: \
                             a deleted or overwritten value came back)",
                            *at as f64 / 1e9
                        ));
                        break;
                    }
                }
            }
        }
    }
    verdict.stats = json!({
        "regions": finals.len(),
        "keys": keys.len(),
        "increments_acknowledged": acked,
        "increments_unknown": maybe,
        "stock_restocked": restocked,
        "stock_taken": taken,
    });
    verdict
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;
    use crate::workload::FINAL_PROCESS;

    fn finals(h: &mut HistoryBuilder, keys: Value, hits: i64) {
        finals_with_stock(h, keys, hits, 0);
    }

    /// A converged history's end: the convergence check, then the same final reads in us and eu.
    fn finals_with_stock(h: &mut HistoryBuilder, keys: Value, hits: i64, stock: i64) {
        h.call(FINAL_PROCESS - 1, "converge", json!({}), json!({"digests": {}}));
        for region in ["us", "eu"] {
            h.call(
                FINAL_PROCESS,
                "final",
                json!({"region": region}),
                json!({"region": region, "keys": keys, "hits": hits, "stock": stock}),
            );
        }
    }

    fn put(h: &mut HistoryBuilder, p: u64, region: &str, key: &str, value: &str) {
        let v = json!({"region": region, "key": key, "value": value});
        h.call(p, "put", v.clone(), v);
    }

    fn base() -> HistoryBuilder {
        let mut h = HistoryBuilder::new();
        put(&mut h, 1, "us", "k0", "us-1");
        put(&mut h, 2, "eu", "k0", "eu-1");
        h.call(
            1,
            "add",
            json!({"region": "us", "key": "hits", "delta": 2}),
            json!({"value": 2}),
        );
        h.invoke(2, "add", json!({"region": "eu", "key": "hits", "delta": 3}))
            .info(2, "add");
        h
    }

    #[test]
    fn a_converged_history_passes() {
        let mut h = base();
        finals(&mut h, json!({"k0": "eu-1"}), 5);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Valid, "{:?}", v.problems);
        let mut h = base();
        finals(&mut h, json!({"k0": "us-1"}), 2);
        assert_eq!(check(&h.ops()).validity, Validity::Valid, "the unknown add may be lost");
    }

    #[test]
    fn a_lost_increment_and_a_double_count_are_caught() {
        let mut h = base();
        finals(&mut h, json!({"k0": "eu-1"}), 1);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
        let mut h = base();
        finals(&mut h, json!({"k0": "eu-1"}), 8);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn phantoms_lost_writes_and_disagreement_are_caught() {
        let mut h = base();
        finals(&mut h, json!({"k0": "nobody-wrote-this"}), 5);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
        let mut h = base();
        finals(&mut h, json!({"k0": null}), 5);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
        let mut h = base();
        h.call(FINAL_PROCESS - 1, "converge", json!({}), json!({}));
        h.call(
            FINAL_PROCESS,
            "final",
            json!({"region": "us"}),
            json!({"region": "us", "keys": {"k0": "us-1"}, "hits": 5}),
        );
        h.call(
            FINAL_PROCESS,
            "final",
            json!({"region": "eu"}),
            json!({"region": "eu", "keys": {"k0": "eu-1"}, "hits": 5}),
        );
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn a_causally_earlier_winner_is_caught() {
        let mut h = HistoryBuilder::new();
        put(&mut h, 1, "us", "k0", "us-1");
        // eu reads us-1, then writes over it: us-1 can no longer win.
        h.call(
            2,
            "read",
            json!({"region": "eu", "key": "k0"}),
            json!({"region": "eu", "key": "k0", "value": "us-1"}),
        );
        put(&mut h, 2, "eu", "k0", "eu-2");
        finals(&mut h, json!({"k0": "us-1"}), 0);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("causally earlier"), "{:?}", v.problems);
    }

    fn stock(h: &mut HistoryBuilder, p: u64, f: &str, delta: i64, ok: bool) {
        let v = json!({"region": "us", "key": "stock", "delta": delta});
        h.invoke(p, f, v.clone());
        if ok {
            h.ok(p, f, json!({"value": 0}));
        } else {
            h.fail(p, f);
        }
    }

    #[test]
    fn stock_below_its_bound_or_unexplained_is_caught() {
        let history = |value| {
            let mut h = HistoryBuilder::new();
            stock(&mut h, 1, "restock", 3, true);
            stock(&mut h, 1, "take", 1, true);
            stock(&mut h, 2, "take", 1, true);
            stock(&mut h, 2, "take", 1, false);
            finals_with_stock(&mut h, json!({}), 0, value);
            check(&h.ops())
        };
        assert_eq!(history(1).validity, Validity::Valid, "{:?}", history(1).problems);
        let below = history(-1);
        assert_eq!(below.validity, Validity::Invalid);
        assert!(below.problems[0].contains("below its bound"), "{:?}", below.problems);
        assert_eq!(
            history(2).validity,
            Validity::Invalid,
            "a refused take cannot come back"
        );
    }

    #[test]
    fn a_deleted_value_that_comes_back_is_caught_and_a_deleted_key_may_end_empty() {
        let mut h = HistoryBuilder::new();
        put(&mut h, 1, "us", "k0", "us-1");
        // eu reads us-1, then deletes the key: us-1 can never win again.
        h.call(
            2,
            "read",
            json!({"region": "eu", "key": "k0"}),
            json!({"region": "eu", "key": "k0", "value": "us-1"}),
        );
        let delete = json!({"region": "eu", "key": "k0"});
        h.call(2, "delete", delete.clone(), delete);
        let mut resurrected = h.clone();
        finals(&mut resurrected, json!({"k0": "us-1"}), 0);
        let v = check(&resurrected.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("came back"), "{:?}", v.problems);
        finals(&mut h, json!({"k0": null}), 0);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Valid, "{:?}", v.problems);
    }

    #[test]
    fn an_expired_write_that_comes_back_is_caught() {
        let mut h = HistoryBuilder::new();
        let v = json!({"region": "us", "key": "k0", "value": "us-1-ttl", "ttl_ms": 500});
        h.call(1, "put", v.clone(), v);
        h.advance_ns(10_000_000_000);
        let mut back = h.clone();
        finals(&mut back, json!({"k0": "us-1-ttl"}), 0);
        let verdict = check(&back.ops());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert!(verdict.problems[0].contains("expired"), "{:?}", verdict.problems);
        // Gone, as it should be: not a lost write.
        finals(&mut h, json!({"k0": null}), 0);
        assert_eq!(check(&h.ops()).validity, Validity::Valid);
    }

    #[test]
    fn no_convergence_is_a_violation() {
        let mut h = base();
        h.invoke(FINAL_PROCESS - 1, "converge", json!({}))
            .fail(FINAL_PROCESS - 1, "converge");
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }
}
