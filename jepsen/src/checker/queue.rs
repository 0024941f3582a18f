//! The queue workload's checker.
//!
//! - Nothing is received that was not enqueued (or whose enqueue failed).
//! - Every acknowledged enqueue is received, during the run or by the final drain.
//! - A message received again after its acknowledgement completed is a violation; any other
//!   redelivery (after a visibility timeout, or an ack that failed or timed out) is allowed, and
//!   counted.
//! - One payload under two message ids is a duplicate enqueue (a retry that applied twice): a
//!   violation.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{text, Verdict};
use crate::history::{Operation, Outcome};

fn received(op: &Operation) -> Vec<&str> {
    op.result()
        .and_then(|r| r.get("messages"))
        .and_then(Value::as_array)
        .map(|ms| ms.iter().filter_map(|m| text(m, "payload")).collect())
        .unwrap_or_default()
}

pub fn check(ops: &[Operation]) -> Verdict {
    let mut verdict = Verdict::new("queue");
    let mut enqueued: BTreeMap<&str, &Operation> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "enqueue") {
        if let Some(payload) = text(&op.value, "payload") {
            enqueued.insert(payload, op);
        }
    }
    let mut acked_at: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "ack" && o.is_ok()) {
        if let (Some(payload), Some(done)) = (text(&op.value, "payload"), op.complete_ns) {
            let at = acked_at.entry(payload).or_insert(done);
            *at = (*at).min(done);
        }
    }
    // Every message id each payload was seen under: the enqueue's answer and every delivery.
    let mut ids: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (payload, op) in &enqueued {
        if let Some(id) = op.result().and_then(|r| r.get("id")).and_then(Value::as_u64) {
            ids.entry(payload).or_default().insert(id);
        }
    }
    for op in ops.iter().filter(|o| o.f == "receive") {
        let messages = op.result().and_then(|r| r.get("messages")).and_then(Value::as_array);
        for m in messages.into_iter().flatten() {
            if let (Some(payload), Some(id)) = (text(m, "payload"), m.get("id").and_then(Value::as_u64)) {
                ids.entry(payload).or_default().insert(id);
            }
        }
    }
    for (payload, seen) in ids.iter().filter(|(_, seen)| seen.len() > 1) {
        verdict.problem(format!(
            "{payload:?} was enqueued more than once: it carries message ids {seen:?} (a retried enqueue applied twice)"
        ));
    }
    let mut deliveries: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "receive") {
        for payload in received(op) {
            *deliveries.entry(payload).or_insert(0) += 1;
            match enqueued.get(payload).map(|e| &e.outcome) {
                None => verdict.problem(format!(
                    "process {} received {payload:?}, which was never enqueued",
                    op.process
                )),
                Some(Outcome::Fail) => verdict.problem(format!(
                    "process {} received {payload:?}, whose enqueue failed",
                    op.process
                )),
                Some(_) => {}
            }
            if let Some(&acked) = acked_at.get(payload) {
                if op.invoke_ns > acked {
                    verdict.problem(format!(
                        "process {} received {payload:?} at {:.3}s, after its acknowledgement completed at {:.3}s",
                        op.process,
                        op.invoke_ns as f64 / 1e9,
                        acked as f64 / 1e9
                    ));
                }
            }
        }
    }
    let drained = ops.iter().any(|o| o.f == "drained" && o.is_ok());
    if drained {
        for (payload, op) in enqueued.iter().filter(|(_, op)| op.is_ok()) {
            if !deliveries.contains_key(payload) {
                verdict.problem(format!(
                    "{payload:?} was enqueued (acknowledged to process {}) but never received: lost",
                    op.process
                ));
            }
        }
    } else {
        verdict.undecided("the queue was not drained at the end".into());
    }
    let unknown_received = enqueued
        .iter()
        .filter(|(p, op)| op.outcome == Outcome::Info && deliveries.contains_key(*p))
        .count();
    let redelivered: BTreeSet<&&str> = deliveries.iter().filter(|(_, n)| **n > 1).map(|(p, _)| p).collect();
    verdict.stats = json!({
        "enqueued_ok": enqueued.values().filter(|o| o.is_ok()).count(),
        "enqueued_unknown": enqueued.values().filter(|o| o.outcome == Outcome::Info).count(),
        "unknown_enqueues_received": unknown_received,
        "received_distinct": deliveries.len(),
        "redelivered": redelivered.len(),
    });
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;
    use crate::history::build::HistoryBuilder;

    fn enqueue(h: &mut HistoryBuilder, p: u64, payload: &str) {
        h.call(p, "enqueue", json!({"payload": payload}), json!({"id": 1}));
    }

    fn receive(h: &mut HistoryBuilder, p: u64, payloads: &[&str]) {
        let messages: Vec<_> = payloads.iter().map(|m| json!({"payload": m})).collect();
        h.call(p, "receive", json!({}), json!({ "messages": messages }));
    }

    fn ack(h: &mut HistoryBuilder, p: u64, payload: &str) {
        h.call(p, "ack", json!({"payload": payload}), json!({}));
    }

    #[test]
    fn one_payload_under_two_ids_is_a_duplicate_enqueue() {
        let mut h = HistoryBuilder::new();
        h.call(1, "enqueue", json!({"payload": "a"}), json!({"id": 7}));
        h.call(
            2,
            "receive",
            json!({}),
            json!({"messages": [{"payload": "a", "id": 7}, {"payload": "a", "id": 8}]}),
        );
        drained(&mut h);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("more than once"), "{:?}", v.problems);
        // Redelivery of one id is fine.
        let mut h = HistoryBuilder::new();
        h.call(1, "enqueue", json!({"payload": "a"}), json!({"id": 7}));
        h.call(
            2,
            "receive",
            json!({}),
            json!({"messages": [{"payload": "a", "id": 7}]}),
        );
        h.call(
            3,
            "receive",
            json!({}),
            json!({"messages": [{"payload": "a", "id": 7}]}),
        );
        h.call(3, "ack", json!({"payload": "a"}), json!({}));
        drained(&mut h);
        assert_eq!(check(&h.ops()).validity, Validity::Valid);
    }

    fn drained(h: &mut HistoryBuilder) {
        h.call(9, "drained", json!({}), json!({}));
    }

    #[test]
    fn delivered_and_redelivered_before_ack_passes() {
        let mut h = HistoryBuilder::new();
        enqueue(&mut h, 1, "a");
        enqueue(&mut h, 1, "b");
        receive(&mut h, 2, &["a"]);
        h.invoke(2, "ack", json!({"payload": "a"})).info(2, "ack");
        receive(&mut h, 3, &["a", "b"]);
        ack(&mut h, 3, "a");
        ack(&mut h, 3, "b");
        drained(&mut h);
        let v = check(&h.ops());
        assert!(v.is_valid(), "{v:?}");
        assert_eq!(v.stats["redelivered"], 1);
    }

    #[test]
    fn a_lost_message_is_caught() {
        let mut h = HistoryBuilder::new();
        enqueue(&mut h, 1, "a");
        drained(&mut h);
        let v = check(&h.ops());
        assert_eq!(v.validity, Validity::Invalid);
        assert!(v.problems[0].contains("lost"));
    }

    #[test]
    fn a_message_back_after_its_ack_is_caught() {
        let mut h = HistoryBuilder::new();
        enqueue(&mut h, 1, "a");
        receive(&mut h, 2, &["a"]);
        ack(&mut h, 2, "a");
        receive(&mut h, 3, &["a"]);
        drained(&mut h);
        assert_eq!(check(&h.ops()).validity, Validity::Invalid);
    }

    #[test]
    fn phantom_and_failed_messages_are_caught() {
        let mut h = HistoryBuilder::new();
        h.invoke(1, "enqueue", json!({"payload": "f"})).fail(1, "enqueue");
        receive(&mut h, 2, &["f", "ghost"]);
        drained(&mut h);
        let v = check(&h.ops());
        assert_eq!(v.problem_count, 2, "{:?}", v.problems);
    }

    #[test]
    fn without_a_drain_the_verdict_is_unknown() {
        let mut h = HistoryBuilder::new();
        enqueue(&mut h, 1, "a");
        assert_eq!(check(&h.ops()).validity, Validity::Unknown);
    }
}
