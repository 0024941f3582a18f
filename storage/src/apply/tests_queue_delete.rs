//! Queue deletion: a queue's rows removed in chunks with its name reserved until done, the
//! dead-letter references that refuse a deletion, and the dead letters a deleted queue leaves.

use super::queue::StoredQueue;
use super::sweep::sweeps_due;
use super::tests::{cmd, Harness};
use super::tests_queue::{ack, check_indexes, configure, enqueue, message, payloads, receive, stats};
use super::*;
use crate::limits::QUEUE_DELETE_ROWS_MAX;
use crate::queue::{EnqueueOutcome, NewMessage, QueueConfig};

fn delete(h: &mut Harness, at: u64, queue: &str) -> Response {
    h.apply(cmd(at, Op::Queue(QueueOp::Delete { queue: queue.into() })))
}

fn try_configure(h: &mut Harness, queue: &str, config: QueueConfig) -> Response {
    h.apply(cmd(
        0,
        Op::Queue(QueueOp::Configure {
            queue: queue.into(),
            config,
        }),
    ))
}

fn with_dead_letters(dlq: &str) -> QueueConfig {
    QueueConfig {
        max_deliveries: 1,
        dead_letter_queue: Some(dlq.as_bytes().to_vec()),
        ..QueueConfig::default()
    }
}

/// Rows of `table` under `queue`'s name.
fn rows(h: &Harness, table: Table, queue: &str) -> usize {
    let prefix = named(queue.as_bytes());
    h.store
        .scan(table, &KeyRange::prefix_from(&prefix, prefix.clone()), usize::MAX)
        .expect("scan")
        .len()
}

fn all_rows(h: &Harness, table: Table) -> usize {
    h.store.scan(table, &KeyRange::all(), usize::MAX).expect("scan").len()
}

fn not_found(r: &Response) -> bool {
    matches!(r, Response::Refused(OpError::NotFound { .. }))
}

#[test]
fn a_deleted_queue_is_gone_at_once_and_its_rows_are_removed_in_chunks_before_its_name_is_free() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    configure(&mut h, "other", QueueConfig::default());
    // More rows than one entry removes: 3000 messages (a message and an index row each), a
    // third with dedup ids (a dedup row and an expiry row each), some delayed, one in flight.
    for batch in 0..3u32 {
        let messages: Vec<NewMessage> = (0..1000u32)
            .map(|i| NewMessage {
                dedup_id: (i % 3 == 0).then(|| format!("d{batch}-{i}").into_bytes()),
                delay_ms: if i % 7 == 0 { 60_000 } else { 0 },
                ..message(&format!("m{batch}-{i}"), (i % 4) as u8)
            })
            .collect();
        enqueue(&mut h, 1_000, "q", messages);
    }
    enqueue(&mut h, 1_000, "other", vec![message("kept", 0)]);
    let in_flight = receive(&mut h, 1_000, "q", 1, None);
    assert_eq!(in_flight.len(), 1);

    assert_eq!(delete(&mut h, 2_000, "q"), Response::QueueDeleted { finished: false });
    // Unknown from the deleting entry on, to every operation and to the list.
    assert!(not_found(&h.apply(cmd(
        2_000,
        Op::Queue(QueueOp::Enqueue {
            queue: "q".into(),
            messages: vec![message("late", 0)],
        })
    ))));
    assert!(not_found(&ack(&mut h, 2_000, "q", in_flight[0].receipt)));
    assert!(not_found(&delete(&mut h, 2_000, "q")));
    let (listed, _) = super::queue::list_queues(&h.store, b"", 100).expect("list");
    assert_eq!(listed.iter().map(|(n, _)| n.as_slice()).collect::<Vec<_>>(), [b"other"]);
    // Its name is reserved while rows are left, so a new queue never sees them.
    assert_eq!(
        try_configure(&mut h, "q", QueueConfig::default()),
        Response::Refused(OpError::Queue(QueueError::BeingDeleted { queue: "q".into() }))
    );

    // The leader goes on with it until nothing is left, within its budget per entry.
    let mut entries = 0;
    loop {
        let due = sweeps_due(&h.store, 2_000, h.applier.region()).expect("due");
        let go_on = Op::Queue(QueueOp::ContinueDeletes {
            limit: QUEUE_DELETE_ROWS_MAX,
        });
        if !due.contains(&go_on) {
            break;
        }
        let before = all_rows(&h, Table::QueueMessage) + all_rows(&h, Table::QueueDedup);
        let Response::Swept { removed } = h.apply(cmd(2_000, go_on)) else {
            panic!("expected a sweep answer");
        };
        assert!(removed > 0 && removed <= QUEUE_DELETE_ROWS_MAX, "{removed}");
        assert!(all_rows(&h, Table::QueueMessage) + all_rows(&h, Table::QueueDedup) < before);
        entries += 1;
        assert!(entries < 10, "the deletion does not progress");
    }
    assert!(entries >= 1);
    for table in [
        Table::QueueMessage,
        Table::QueueReady,
        Table::QueueDelayed,
        Table::QueueDedup,
    ] {
        assert_eq!(rows(&h, table, "q"), 0, "{table:?}");
    }
    assert_eq!(all_rows(&h, Table::QueueDedupExpiry), 0);
    assert_eq!(all_rows(&h, Table::QueueDeleting), 0);
    // The other queue is untouched.
    assert_eq!(stats(&h, "other").stats.messages, 1);
    check_indexes(&h, "other");

    // The name is free: a new queue with nothing of the old one, not even its dedup ids.
    assert_eq!(
        try_configure(&mut h, "q", QueueConfig::default()),
        Response::QueueConfigured { created: true }
    );
    assert_eq!(stats(&h, "q"), StoredQueue::default());
    let again = enqueue(
        &mut h,
        3_000,
        "q",
        vec![NewMessage {
            dedup_id: Some(b"d0-0".to_vec()),
            ..message("new", 0)
        }],
    );
    assert!(matches!(again[0], EnqueueOutcome::Enqueued { .. }), "{again:?}");
    assert_eq!(payloads(&receive(&mut h, 3_000, "q", 10, None)), ["new"]);
}

#[test]
fn a_small_queue_is_deleted_in_one_entry_and_its_name_is_free_at_once() {
    let mut h = Harness::new();
    configure(&mut h, "q", QueueConfig::default());
    enqueue(&mut h, 1_000, "q", vec![message("a", 0), message("b", 0)]);
    assert_eq!(delete(&mut h, 1_000, "q"), Response::QueueDeleted { finished: true });
    assert!(!super::queue::deletions_due(&h.store).expect("due"));
    assert_eq!(rows(&h, Table::QueueMessage, "q"), 0);
    assert_eq!(
        try_configure(&mut h, "q", QueueConfig::default()),
        Response::QueueConfigured { created: true }
    );
    assert!(receive(&mut h, 1_000, "q", 10, None).is_empty());
    // Bad names are refused before anything is looked at.
    assert!(matches!(
        delete(&mut h, 1_000, ""),
        Response::Refused(OpError::Empty { .. })
    ));
    assert!(not_found(&delete(&mut h, 1_000, "never")));
}

#[test]
fn a_dead_letter_queue_cannot_be_deleted_while_a_queue_names_it() {
    let mut h = Harness::new();
    configure(&mut h, "dlq1", QueueConfig::default());
    configure(&mut h, "dlq2", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq1"));
    let in_use = |name: &str| {
        Response::Refused(OpError::Queue(QueueError::DeadLetterInUse {
            queue: name.into(),
            source_queue: "work".into(),
        }))
    };
    assert_eq!(delete(&mut h, 0, "dlq1"), in_use("dlq1"));
    assert_eq!(stats(&h, "dlq1"), StoredQueue::default());
    // Moved to another dead-letter queue: the first is free, the second is not.
    configure(&mut h, "work", with_dead_letters("dlq2"));
    assert_eq!(delete(&mut h, 0, "dlq2"), in_use("dlq2"));
    assert_eq!(delete(&mut h, 0, "dlq1"), Response::QueueDeleted { finished: true });
    // Without one: free.
    configure(&mut h, "work", QueueConfig::default());
    assert_eq!(delete(&mut h, 0, "dlq2"), Response::QueueDeleted { finished: true });
    // A deleted source lets go of its dead-letter queue too.
    configure(&mut h, "dlq3", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq3"));
    assert_eq!(delete(&mut h, 0, "work"), Response::QueueDeleted { finished: true });
    assert_eq!(delete(&mut h, 0, "dlq3"), Response::QueueDeleted { finished: true });
    assert_eq!(all_rows(&h, Table::QueueDeadLetterSource), 0);
}

#[test]
fn dead_letters_of_a_deleted_queue_stay_in_the_dead_letter_queue_at_redrive() {
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq"));
    configure(&mut h, "live", with_dead_letters("dlq"));
    enqueue(&mut h, 0, "work", vec![message("orphan", 0)]);
    enqueue(&mut h, 0, "live", vec![message("redriven", 0)]);
    // One delivery each, timed out: both are dead-lettered at the next receive.
    assert_eq!(receive(&mut h, 0, "work", 1, Some(100)).len(), 1);
    assert_eq!(receive(&mut h, 0, "live", 1, Some(100)).len(), 1);
    assert!(receive(&mut h, 200, "work", 1, None).is_empty());
    assert!(receive(&mut h, 200, "live", 1, None).is_empty());
    assert_eq!(stats(&h, "dlq").stats.messages, 2);
    assert_eq!(delete(&mut h, 300, "work"), Response::QueueDeleted { finished: true });

    let redrive = |h: &mut Harness| {
        h.apply(cmd(
            400,
            Op::Queue(QueueOp::Redrive {
                queue: "dlq".into(),
                max: 10,
            }),
        ))
    };
    assert_eq!(redrive(&mut h), Response::Redriven { moved: 1 });
    assert_eq!(payloads(&receive(&mut h, 400, "live", 10, None)), ["redriven"]);
    // The orphan stays, as if enqueued into the dead-letter queue, even once "work" exists again.
    configure(&mut h, "work", QueueConfig::default());
    assert_eq!(redrive(&mut h), Response::Redriven { moved: 0 });
    assert_eq!(payloads(&receive(&mut h, 400, "dlq", 10, None)), ["orphan"]);
    assert!(receive(&mut h, 400, "work", 10, None).is_empty());
    check_indexes(&h, "dlq");
}

#[test]
fn a_dead_letter_queue_that_is_gone_takes_nothing_and_the_message_stays() {
    // A dead-letter queue deleted by a build that kept no index of who names it: its sources'
    // exhausted messages are delivered again instead of moving nowhere.
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq"));
    let mut forget_index = WriteSet::default();
    let mut key = named(b"dlq");
    key.extend_from_slice(&named(b"work"));
    forget_index.delete(Table::QueueDeadLetterSource, key);
    h.store.commit(&forget_index);
    assert_eq!(delete(&mut h, 0, "dlq"), Response::QueueDeleted { finished: true });

    enqueue(&mut h, 0, "work", vec![message("stays", 0)]);
    assert_eq!(receive(&mut h, 0, "work", 1, Some(100)).len(), 1);
    let again = receive(&mut h, 200, "work", 1, None);
    assert_eq!(payloads(&again), ["stays"]);
    assert_eq!(again[0].receipt.delivery, 2);
    check_indexes(&h, "work");
}
