//! Work queues: ordering, visibility, receipts, dedup, dead-lettering, and a model-based property
//! test that no enqueued message is ever lost.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::queue::{delayed_key, message_key, ready_key, StoredMessage, StoredQueue};
use super::tests::{cmd, Harness};
use super::*;
use crate::queue::{Delivery, EnqueueOutcome, NewMessage, QueueConfig, Receipt};

pub(super) fn configure(h: &mut Harness, queue: &str, config: QueueConfig) {
    let r = h.apply(cmd(
        0,
        Op::Queue(QueueOp::Configure {
            queue: queue.into(),
            config,
        }),
    ));
    assert!(matches!(r, Response::QueueConfigured { .. }), "{r:?}");
}

pub(super) fn message(payload: &str, priority: u8) -> NewMessage {
    NewMessage {
        payload: payload.into(),
        dedup_id: None,
        delay_ms: 0,
        priority,
    }
}

pub(super) fn enqueue(h: &mut Harness, at: u64, queue: &str, messages: Vec<NewMessage>) -> Vec<EnqueueOutcome> {
    match h.apply(cmd(
        at,
        Op::Queue(QueueOp::Enqueue {
            queue: queue.into(),
            messages,
        }),
    )) {
        Response::Enqueued(o) => o,
        other => panic!("expected enqueued, got {other:?}"),
    }
}

pub(super) fn receive(h: &mut Harness, at: u64, queue: &str, max: u32, vt: Option<u64>) -> Vec<Delivery> {
    match h.apply(cmd(
        at,
        Op::Queue(QueueOp::Receive {
            queue: queue.into(),
            max,
            visibility_timeout_ms: vt,
        }),
    )) {
        Response::Received(d) => d,
        other => panic!("expected deliveries, got {other:?}"),
    }
}

pub(super) fn ack(h: &mut Harness, at: u64, queue: &str, receipt: Receipt) -> Response {
    h.apply(cmd(
        at,
        Op::Queue(QueueOp::Ack {
            queue: queue.into(),
            receipt,
        }),
    ))
}

pub(super) fn payloads(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

pub(super) fn stats(h: &Harness, queue: &str) -> StoredQueue {
    load(&h.store, Table::Queue, &named(queue.as_bytes()))
        .expect("load")
        .expect("queue exists")
}

/// Every message of `queue` sits in exactly one index, and the counts match; every row of its
/// dead-letter index names a dead letter it holds.
pub(super) fn check_indexes(h: &Harness, queue: &str) {
    let q = queue.as_bytes();
    let prefix = named(q);
    let letters = h
        .store
        .scan(
            Table::QueueDeadLetter,
            &KeyRange::prefix_from(&prefix, prefix.clone()),
            usize::MAX,
        )
        .expect("scan");
    for (key, value) in &letters {
        let stored = h.store.get(Table::QueueMessage, key).expect("get");
        let message: Option<StoredMessage> = stored.map(|v| basalt_codec::decode(&v).expect("decode"));
        assert!(
            message
                .as_ref()
                .is_some_and(|m| m.dead_lettered_from.is_some() && value.as_slice() == [m.priority]),
            "dead-letter index row {key:?} ({value:?}) names no dead letter of that priority"
        );
    }
    let messages = h
        .store
        .scan(
            Table::QueueMessage,
            &KeyRange::prefix_from(&prefix, prefix.clone()),
            usize::MAX,
        )
        .expect("scan");
    let mut in_flight = 0;
    for (key, value) in &messages {
        let id = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("id"));
        let m: StoredMessage = basalt_codec::decode(value).expect("decode");
        in_flight += u64::from(m.in_flight);
        let ready = h
            .store
            .get(Table::QueueReady, &ready_key(q, m.priority, id))
            .expect("get")
            .is_some();
        let delayed = m.visible_at_ms.map(|at| {
            h.store
                .get(Table::QueueDelayed, &delayed_key(q, at, id))
                .expect("get")
                .is_some()
        });
        match m.visible_at_ms {
            None => assert!(ready, "message {id} without visible_at is not in the ready index"),
            Some(_) => assert!(
                !ready && delayed == Some(true),
                "message {id} not in exactly the delayed index"
            ),
        }
    }
    let ready = h
        .store
        .scan(
            Table::QueueReady,
            &KeyRange::prefix_from(&prefix, prefix.clone()),
            usize::MAX,
        )
        .expect("scan");
    let delayed = h
        .store
        .scan(
            Table::QueueDelayed,
            &KeyRange::prefix_from(&prefix, prefix.clone()),
            usize::MAX,
        )
        .expect("scan");
    assert_eq!(ready.len() + delayed.len(), messages.len(), "stray index entries");
    let record = stats(h, queue);
    assert_eq!(record.stats.messages, messages.len() as u64);
    assert_eq!(record.stats.in_flight, in_flight);
}

#[test]
fn higher_priority_first_and_fifo_within_a_priority() {
    let mut h = Harness::new();
    configure(&mut h, "jobs", QueueConfig::default());
    enqueue(
        &mut h,
        10,
        "jobs",
        vec![message("low-1", 0), message("high-1", 5), message("low-2", 0)],
    );
    enqueue(&mut h, 11, "jobs", vec![message("high-2", 5), message("mid", 3)]);
    let got = receive(&mut h, 12, "jobs", 10, None);
    assert_eq!(payloads(&got), ["high-1", "high-2", "mid", "low-1", "low-2"]);
    assert!(got.iter().all(|d| d.receipt.delivery == 1));
    check_indexes(&h, "jobs");
}

#[test]
fn unacknowledged_messages_come_back_and_stale_receipts_cannot_ack() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    enqueue(&mut h, 1000, "q", vec![message("m", 0)]);
    let first = receive(&mut h, 1000, "q", 1, Some(500));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].invisible_until_ms, 1500);
    assert!(
        receive(&mut h, 1499, "q", 1, None).is_empty(),
        "invisible until the timeout"
    );
    let second = receive(&mut h, 1500, "q", 1, Some(500));
    assert_eq!(payloads(&second), ["m"]);
    assert_eq!(second[0].receipt.delivery, 2);
    // The first receiver's late ack must not take the second delivery away.
    match ack(&mut h, 1600, "q", first[0].receipt) {
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { latest: Some(2), .. })) => {}
        other => panic!("expected a stale receipt, got {other:?}"),
    }
    assert_eq!(ack(&mut h, 1600, "q", second[0].receipt), Response::QueueDone);
    assert!(
        receive(&mut h, 10_000, "q", 10, None).is_empty(),
        "acknowledged for good"
    );
    assert!(matches!(
        ack(&mut h, 10_001, "q", second[0].receipt),
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { latest: None, .. }))
    ));
    check_indexes(&h, "q");
}

#[test]
fn nack_gives_a_message_back_after_its_delay() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    enqueue(&mut h, 0, "q", vec![message("a", 0), message("b", 0)]);
    let got = receive(&mut h, 0, "q", 1, None);
    let r = h.apply(cmd(
        0,
        Op::Queue(QueueOp::Nack {
            queue: "q".into(),
            receipt: got[0].receipt,
            delay_ms: 200,
        }),
    ));
    assert_eq!(r, Response::QueueDone);
    assert_eq!(payloads(&receive(&mut h, 100, "q", 10, None)), ["b"]);
    assert_eq!(payloads(&receive(&mut h, 200, "q", 10, None)), ["a"]);
    assert!(matches!(
        ack(&mut h, 200, "q", got[0].receipt),
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { .. }))
    ));
    check_indexes(&h, "q");
}

#[test]
fn delayed_messages_stay_invisible_until_due() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    let mut later = message("later", 9);
    later.delay_ms = 1000;
    enqueue(&mut h, 5000, "q", vec![later, message("now", 0)]);
    assert_eq!(payloads(&receive(&mut h, 5999, "q", 10, None)), ["now"]);
    assert_eq!(payloads(&receive(&mut h, 6000, "q", 10, None)), ["later"]);
}

#[test]
fn a_repeated_dedup_id_within_the_window_enqueues_nothing() {
    let mut h = Harness::new();
    configure(
        &mut h,
        "q",
        QueueConfig {
            dedup_window_ms: 1000,
            ..QueueConfig::default()
        },
    );
    let with_id = |p: &str| NewMessage {
        dedup_id: Some(b"order-7".to_vec()),
        ..message(p, 0)
    };
    let first = enqueue(&mut h, 100, "q", vec![with_id("one")]);
    let again = enqueue(&mut h, 500, "q", vec![with_id("two"), with_id("three")]);
    let EnqueueOutcome::Enqueued { id } = first[0] else {
        panic!("first enqueue must enqueue")
    };
    assert_eq!(
        again,
        vec![EnqueueOutcome::Duplicate { id }, EnqueueOutcome::Duplicate { id }]
    );
    assert_eq!(stats(&h, "q").stats.messages, 1);
    // After the window, the sweep forgets the id and it enqueues again.
    assert!(sweeps_due(&h.store, 1100, RegionRole::default())
        .expect("due")
        .contains(&Op::Queue(QueueOp::DedupSweep { limit: SWEEP_ITEMS_MAX })));
    h.apply(cmd(1100, Op::Queue(QueueOp::DedupSweep { limit: SWEEP_ITEMS_MAX })));
    assert!(matches!(
        enqueue(&mut h, 1200, "q", vec![with_id("four")])[0],
        EnqueueOutcome::Enqueued { .. }
    ));
    assert_eq!(payloads(&receive(&mut h, 1200, "q", 10, None)), ["one", "four"]);
}

#[test]
fn exhausted_messages_move_to_the_dead_letter_queue_and_redrive_brings_them_back() {
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(
        &mut h,
        "work",
        QueueConfig {
            max_deliveries: 2,
            dead_letter_queue: Some(b"dlq".to_vec()),
            ..QueueConfig::default()
        },
    );
    enqueue(&mut h, 0, "work", vec![message("poison", 0), message("fine", 0)]);
    let first = receive(&mut h, 0, "work", 10, Some(100));
    assert_eq!(payloads(&first), ["poison", "fine"]);
    assert_eq!(ack(&mut h, 1, "work", first[1].receipt), Response::QueueDone);
    assert_eq!(payloads(&receive(&mut h, 100, "work", 10, Some(100))), ["poison"]);
    // Two deliveries used: the next time it would be delivered, it is dead-lettered instead.
    assert!(receive(&mut h, 200, "work", 10, Some(100)).is_empty());
    assert_eq!(stats(&h, "work").stats.messages, 0);
    let dead = receive(&mut h, 200, "dlq", 10, Some(100));
    assert_eq!(payloads(&dead), ["poison"]);
    assert_eq!(dead[0].receipt.delivery, 1);
    // Redrive (once visible again in the dead-letter queue) puts it back as a fresh message.
    let r = h.apply(cmd(
        300,
        Op::Queue(QueueOp::Redrive {
            queue: "dlq".into(),
            max: 10,
        }),
    ));
    assert_eq!(r, Response::Redriven { moved: 1 });
    let back = receive(&mut h, 300, "work", 10, None);
    assert_eq!(payloads(&back), ["poison"]);
    assert_eq!(back[0].receipt.delivery, 1);
    check_indexes(&h, "work");
    check_indexes(&h, "dlq");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    let before = h.store.clone();
    let refused = |h: &mut Harness, op: Op| match h.apply(cmd(10, op)) {
        Response::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let unknown = refused(
        &mut h,
        Op::Queue(QueueOp::Enqueue {
            queue: "nope".into(),
            messages: vec![message("x", 0)],
        }),
    );
    assert!(matches!(unknown, OpError::NotFound { .. }), "{unknown:?}");
    let empty = refused(
        &mut h,
        Op::Queue(QueueOp::Enqueue {
            queue: Vec::new(),
            messages: vec![message("x", 0)],
        }),
    );
    assert!(matches!(empty, OpError::Empty { .. }), "{empty:?}");
    let oversize = refused(
        &mut h,
        Op::Queue(QueueOp::Enqueue {
            queue: "q".into(),
            messages: vec![
                message("ok", 0),
                NewMessage {
                    payload: vec![0; crate::limits::MESSAGE_BYTES_MAX + 1],
                    ..message("", 0)
                },
            ],
        }),
    );
    assert!(matches!(oversize, OpError::TooLarge { .. }), "{oversize:?}");
    let no_dlq = refused(
        &mut h,
        Op::Queue(QueueOp::Configure {
            queue: "q".into(),
            config: QueueConfig {
                max_deliveries: 3,
                ..QueueConfig::default()
            },
        }),
    );
    assert!(matches!(no_dlq, OpError::OutOfRange { .. }), "{no_dlq:?}");
    let missing_dlq = refused(
        &mut h,
        Op::Queue(QueueOp::Configure {
            queue: "q".into(),
            config: QueueConfig {
                max_deliveries: 3,
                dead_letter_queue: Some(b"absent".to_vec()),
                ..QueueConfig::default()
            },
        }),
    );
    assert!(matches!(missing_dlq, OpError::NotFound { .. }), "{missing_dlq:?}");
    let zero = refused(
        &mut h,
        Op::Queue(QueueOp::Receive {
            queue: "q".into(),
            max: 0,
            visibility_timeout_ms: None,
        }),
    );
    assert!(matches!(zero, OpError::OutOfRange { .. }), "{zero:?}");
    assert_eq!(
        h.store.scan(Table::QueueMessage, &KeyRange::all(), 10).expect("scan"),
        before.scan(Table::QueueMessage, &KeyRange::all(), 10).expect("scan")
    );
    assert_eq!(stats(&h, "q").stats.messages, 0);
}

#[derive(Clone, Debug)]
enum Step {
    Enqueue { priority: u8, delay_ms: u64 },
    Receive { dead_letters: bool, max: u32, vt_ms: u64 },
    Ack(usize),
    Nack(usize, u64),
    Extend(usize, u64),
    AckBatch(usize),
    Redrive(u32),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, prop_oneof![Just(0u64), 1u64..500]).prop_map(|(priority, delay_ms)| Step::Enqueue { priority, delay_ms }),
        3 => (prop::bool::weighted(0.25), 1u32..4, 1u64..400).prop_map(|(dead_letters, max, vt_ms)| Step::Receive { dead_letters, max, vt_ms }),
        2 => any::<usize>().prop_map(Step::Ack),
        1 => (any::<usize>(), 0u64..300).prop_map(|(i, d)| Step::Nack(i, d)),
        1 => (any::<usize>(), 1u64..400).prop_map(|(i, vt)| Step::Extend(i, vt)),
        1 => (1usize..5).prop_map(Step::AckBatch),
        1 => (1u32..4).prop_map(Step::Redrive),
        2 => (1u64..300).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// At-least-once without loss: whatever the interleaving of receives, timeouts, acks, nacks,
    /// dead-lettering (after two deliveries) and redrives, every enqueued message is acknowledged
    /// exactly once in the end, nothing acknowledged comes back, each receive is in priority
    /// order, and the indexes (the dead-letter index too) stay consistent.
    #[test]
    fn no_enqueued_message_is_lost_or_returned_after_its_ack(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::new();
        configure(&mut h, "dlq", QueueConfig::default());
        configure(&mut h, "q", QueueConfig {
            max_deliveries: 2,
            dead_letter_queue: Some(b"dlq".to_vec()),
            ..QueueConfig::default()
        });
        let mut now = 1_000u64;
        let mut enqueued = BTreeSet::new();
        let mut acked = BTreeSet::new();
        let mut outstanding: Vec<(&str, Receipt)> = Vec::new();
        let mut seq = 0u32;
        for s in steps {
            match s {
                Step::Enqueue { priority, delay_ms } => {
                    seq += 1;
                    let m = NewMessage { delay_ms, ..message(&seq.to_string(), priority) };
                    if let EnqueueOutcome::Enqueued { id } = enqueue(&mut h, now, "q", vec![m])[0] {
                        enqueued.insert(id);
                    }
                }
                Step::Receive { dead_letters, max, vt_ms } => {
                    let queue = if dead_letters { "dlq" } else { "q" };
                    let got = receive(&mut h, now, queue, max, Some(vt_ms));
                    for pair in got.windows(2) {
                        prop_assert!(pair[0].priority >= pair[1].priority);
                    }
                    for d in got {
                        prop_assert!(!acked.contains(&d.receipt.message_id), "acked message redelivered");
                        outstanding.push((queue, d.receipt));
                    }
                }
                Step::Ack(i) if !outstanding.is_empty() => {
                    let (queue, receipt) = outstanding.remove(i % outstanding.len());
                    if ack(&mut h, now, queue, receipt) == Response::QueueDone {
                        prop_assert!(acked.insert(receipt.message_id), "acked twice");
                    }
                }
                Step::Nack(i, delay_ms) if !outstanding.is_empty() => {
                    let (queue, receipt) = outstanding.remove(i % outstanding.len());
                    h.apply(cmd(now, Op::Queue(QueueOp::Nack { queue: queue.into(), receipt, delay_ms })));
                }
                Step::Extend(i, vt) if !outstanding.is_empty() => {
                    let (queue, receipt) = outstanding[i % outstanding.len()];
                    let extended = h.apply(cmd(now, Op::Queue(QueueOp::Extend { queue: queue.into(), receipt, visibility_timeout_ms: vt })));
                    if let Response::QueueExtended { invisible_until_ms } = extended {
                        prop_assert_eq!(invisible_until_ms, now + vt);
                    }
                }
                Step::AckBatch(n) if !outstanding.is_empty() => {
                    let take = n.min(outstanding.len());
                    let (queue, _) = outstanding[0];
                    let receipts: Vec<Receipt> = outstanding.iter().filter(|(q, _)| *q == queue).take(take).map(|(_, r)| *r).collect();
                    outstanding.retain(|(q, r)| !(*q == queue && receipts.contains(r)));
                    let answer = h.apply(cmd(now, Op::Queue(QueueOp::AckBatch { queue: queue.into(), receipts: receipts.clone() })));
                    let Response::QueueAcked(answers) = answer else {
                        return Err(TestCaseError::fail(format!("expected acks, got {answer:?}")));
                    };
                    prop_assert_eq!(answers.len(), receipts.len());
                    for (receipt, answer) in receipts.iter().zip(answers) {
                        if answer.is_none() {
                            prop_assert!(acked.insert(receipt.message_id), "acked twice");
                        }
                    }
                }
                Step::Redrive(max) => {
                    let answer = h.apply(cmd(now, Op::Queue(QueueOp::Redrive { queue: "dlq".into(), max })));
                    prop_assert!(matches!(answer, Response::Redriven { moved } if moved <= max), "{:?}", answer);
                }
                Step::Advance(ms) => now += ms,
                _ => {}
            }
            check_indexes(&h, "q");
            check_indexes(&h, "dlq");
        }
        // Drain: everything not yet acknowledged must still come out, of either queue.
        for _ in 0..1000 {
            now += 1000;
            h.apply(cmd(now, Op::Queue(QueueOp::Redrive { queue: "dlq".into(), max: 100 })));
            let mut got: Vec<(&str, Receipt)> = Vec::new();
            for queue in ["q", "dlq"] {
                got.extend(receive(&mut h, now, queue, 100, Some(10)).into_iter().map(|d| (queue, d.receipt)));
            }
            let left = stats(&h, "q").stats.messages + stats(&h, "dlq").stats.messages;
            if got.is_empty() && left == 0 {
                break;
            }
            for (queue, receipt) in got {
                prop_assert_eq!(ack(&mut h, now, queue, receipt), Response::QueueDone);
                prop_assert!(acked.insert(receipt.message_id));
            }
        }
        prop_assert_eq!(acked, enqueued);
        let mut leftovers = BTreeMap::new();
        for table in [Table::QueueMessage, Table::QueueDeadLetter, Table::QueueReady, Table::QueueDelayed] {
            for (k, v) in h.store.scan(table, &KeyRange::all(), 10).expect("scan") {
                leftovers.insert((table, k), v);
            }
        }
        prop_assert!(leftovers.is_empty(), "{:?}", leftovers);
        let _ = message_key(b"q", 0);
    }
}

#[test]
fn an_extended_delivery_stays_invisible_and_its_receipt_stays_valid() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    enqueue(&mut h, 1_000, "q", vec![message("a", 0)]);
    let got = receive(&mut h, 1_000, "q", 1, Some(100));
    let receipt = got[0].receipt;
    let extend = |h: &mut Harness, at, receipt, vt| {
        h.apply(cmd(
            at,
            Op::Queue(QueueOp::Extend {
                queue: "q".into(),
                receipt,
                visibility_timeout_ms: vt,
            }),
        ))
    };
    assert_eq!(
        extend(&mut h, 1_050, receipt, 500),
        Response::QueueExtended {
            invisible_until_ms: 1_550
        }
    );
    check_indexes(&h, "q");
    // Past the first timeout, not the extended one: still invisible.
    assert!(receive(&mut h, 1_200, "q", 1, None).is_empty());
    // Once lapsed, even before any receive takes it back, an extend is refused: it is due.
    assert!(matches!(
        extend(&mut h, 1_600, receipt, 500),
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { .. }))
    ));
    assert_eq!(ack(&mut h, 1_600, "q", receipt), Response::QueueDone);
    // A stale receipt (acknowledged) cannot extend; a zero or oversize timeout is refused.
    assert!(matches!(
        extend(&mut h, 1_400, receipt, 500),
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { .. }))
    ));
    assert!(matches!(
        extend(&mut h, 1_400, receipt, 0),
        Response::Refused(OpError::OutOfRange { .. })
    ));
    check_indexes(&h, "q");
}

#[test]
fn a_batch_ack_answers_each_receipt_and_acks_the_current_ones() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    enqueue(
        &mut h,
        1_000,
        "q",
        vec![message("a", 0), message("b", 0), message("c", 0)],
    );
    let got = receive(&mut h, 1_000, "q", 3, Some(100));
    let stale = Receipt {
        delivery: 7,
        ..got[1].receipt
    };
    let answer = h.apply(cmd(
        1_010,
        Op::Queue(QueueOp::AckBatch {
            queue: "q".into(),
            receipts: vec![got[0].receipt, stale, got[2].receipt, got[0].receipt],
        }),
    ));
    let Response::QueueAcked(answers) = answer else {
        panic!("expected acks, got {answer:?}");
    };
    assert_eq!(answers[0], None);
    assert!(matches!(
        answers[1],
        Some(QueueError::StaleReceipt { latest: Some(1), .. })
    ));
    assert_eq!(answers[2], None);
    assert!(answers[3].is_some(), "the same receipt twice: the second is stale");
    assert_eq!(stats(&h, "q").stats.messages, 1);
    check_indexes(&h, "q");
    let empty = h.apply(cmd(
        1_020,
        Op::Queue(QueueOp::AckBatch {
            queue: "q".into(),
            receipts: Vec::new(),
        }),
    ));
    assert!(matches!(empty, Response::Refused(_)), "{empty:?}");
}

#[test]
fn a_purge_removes_what_was_enqueued_before_it_in_chunks_and_keeps_later_messages() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    let early: Vec<NewMessage> = (0..5).map(|i| message(&i.to_string(), (i % 3) as u8)).collect();
    enqueue(&mut h, 1_000, "q", early);
    enqueue(
        &mut h,
        1_000,
        "q",
        vec![NewMessage {
            delay_ms: 10_000,
            ..message("delayed", 0)
        }],
    );
    // One in flight.
    let in_flight = receive(&mut h, 1_000, "q", 1, Some(10_000));
    assert_eq!(in_flight.len(), 1);
    let purge = |h: &mut Harness, upto_id| {
        h.apply(cmd(
            1_100,
            Op::Queue(QueueOp::Purge {
                queue: "q".into(),
                upto_id,
                limit: 4,
            }),
        ))
    };
    let Response::QueuePurged { removed, more, upto_id } = purge(&mut h, None) else {
        panic!("expected a purge");
    };
    assert_eq!((removed, more), (4, true));
    check_indexes(&h, "q");
    // Enqueued after the purge began: kept.
    let later = enqueue(&mut h, 1_200, "q", vec![message("later", 0)]);
    assert_eq!(
        purge(&mut h, Some(upto_id)),
        Response::QueuePurged {
            removed: 2,
            more: false,
            upto_id,
        }
    );
    check_indexes(&h, "q");
    assert_eq!(stats(&h, "q").stats.messages, 1);
    assert_eq!(stats(&h, "q").stats.in_flight, 0);
    let got = receive(&mut h, 1_300, "q", 10, None);
    assert_eq!(payloads(&got), vec!["later"]);
    assert!(matches!(later[0], EnqueueOutcome::Enqueued { id } if id == got[0].receipt.message_id));
    // The purged in-flight delivery's receipt is stale.
    assert!(matches!(
        ack(&mut h, 1_300, "q", in_flight[0].receipt),
        Response::Refused(OpError::Queue(QueueError::StaleReceipt { latest: None, .. }))
    ));
    assert!(matches!(
        h.apply(cmd(
            1_400,
            Op::Queue(QueueOp::Purge {
                queue: "q".into(),
                upto_id: None,
                limit: 0,
            }),
        )),
        Response::Refused(OpError::OutOfRange { .. })
    ));
    // A watermark past this entry is held to it: it removes what came before, and the answered
    // watermark keeps what is enqueued later.
    let before = h.index;
    enqueue(&mut h, 1_500, "q", vec![message("gone", 0)]);
    let Response::QueuePurged { upto_id, removed, .. } = purge(&mut h, Some(u64::MAX)) else {
        panic!("expected a purge");
    };
    // "gone", and "later", still in flight from above.
    assert_eq!((upto_id, removed), (((before + 2) << 16) - 1, 2));
    enqueue(&mut h, 1_600, "q", vec![message("after", 0)]);
    assert!(matches!(
        purge(&mut h, Some(upto_id)),
        Response::QueuePurged { removed: 0, .. }
    ));
    assert_eq!(payloads(&receive(&mut h, 1_700, "q", 10, None)), vec!["after"]);
}

#[test]
fn queues_list_in_pages_shorter_names_first() {
    let mut h = Harness::new();
    for name in ["bb", "a", "c"] {
        configure(&mut h, name, QueueConfig::default());
    }
    enqueue(&mut h, 1_000, "c", vec![message("x", 0)]);
    let names = |page: &[(Vec<u8>, StoredQueue)]| {
        page.iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    };
    let (page, more) = queue::list_queues(&h.store, b"", 2).expect("list");
    assert_eq!((names(&page), more), (vec!["a".to_string(), "c".to_string()], true));
    assert_eq!(page[1].1.stats.messages, 1);
    let (page, more) = queue::list_queues(&h.store, b"c", 2).expect("list");
    assert_eq!((names(&page), more), (vec!["bb".to_string()], false));
    let (page, _) = queue::list_queues(&h.store, b"", 0).expect("list");
    assert_eq!(page.len(), 1, "a limit of 0 lists one");
}
