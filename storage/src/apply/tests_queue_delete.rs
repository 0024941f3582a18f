//! Queue deletion: a queue's rows removed in chunks with its name reserved until done, the
//! dead-letter references that refuse a deletion, and the dead letters a deleted queue leaves.

use super::queue::StoredQueue;
use super::sweep::sweeps_due;
use super::tests::{cmd, Harness, ScanStarts};
use super::tests_queue::{ack, check_indexes, configure, enqueue, message, payloads, receive, stats};
use super::*;
use crate::limits::{QUEUE_DELETE_BYTES_MAX, QUEUE_DELETE_ROWS_MAX, QUEUE_INDEX_ROWS_MAX};
use crate::queue::{EnqueueOutcome, NewMessage, QueueConfig};

/// Builds the index of dead-letter references as the home's leader does (proposed by its sweeps
/// once there is a queue), `limit` rows per entry; answers the entries it took.
pub(super) fn build_index(h: &mut Harness, limit: u32) -> usize {
    let mut entries = 0;
    while super::queue::dead_letter_index_due(&h.store).expect("due") {
        assert!(sweeps_due(&h.store, 0, h.applier.region())
            .expect("due")
            .contains(&Op::Queue(QueueOp::BuildDeadLetterIndex {
                limit: QUEUE_INDEX_ROWS_MAX
            })));
        h.apply(cmd(0, Op::Queue(QueueOp::BuildDeadLetterIndex { limit })));
        entries += 1;
        assert!(entries < 1000, "the index build does not progress");
    }
    assert!(super::queue::dead_letter_index_built(&h.store).expect("built"));
    entries
}

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

/// Rows of every table a queue's messages use.
fn queue_rows(h: &Harness) -> usize {
    [
        Table::QueueMessage,
        Table::QueueReady,
        Table::QueueDelayed,
        Table::QueueDedup,
        Table::QueueDedupExpiry,
    ]
    .into_iter()
    .map(|table| all_rows(h, table))
    .sum()
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
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);

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
        let before = queue_rows(&h);
        let Response::Swept { removed } = h.apply(cmd(2_000, go_on)) else {
            panic!("expected a sweep answer");
        };
        // The answer counts every row removed (a dedup id's expiry row too), within the budget.
        assert!(removed > 0 && removed <= QUEUE_DELETE_ROWS_MAX, "{removed}");
        assert_eq!(before - queue_rows(&h), removed as usize);
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
    // The first configure of a store marked its (empty) index built: nothing to wait for.
    assert!(super::queue::dead_letter_index_built(&h.store).expect("built"));
    assert!(!super::queue::dead_letter_index_due(&h.store).expect("due"));
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
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
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
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
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
fn a_dead_letter_redriven_after_its_source_is_deleted_and_created_again_goes_to_the_new_queue() {
    // Not redriven while the source was gone: the dead letter still names it, so a redrive
    // once a queue of that name exists again moves it there (documented in queue.md).
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq"));
    enqueue(&mut h, 0, "work", vec![message("letter", 0)]);
    assert_eq!(receive(&mut h, 0, "work", 1, Some(100)).len(), 1);
    assert!(receive(&mut h, 200, "work", 1, None).is_empty());
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
    assert_eq!(delete(&mut h, 300, "work"), Response::QueueDeleted { finished: true });
    configure(&mut h, "work", QueueConfig::default());
    let moved = h.apply(cmd(
        400,
        Op::Queue(QueueOp::Redrive {
            queue: "dlq".into(),
            max: 10,
        }),
    ));
    assert_eq!(moved, Response::Redriven { moved: 1 });
    let delivered = receive(&mut h, 400, "work", 10, None);
    assert_eq!(payloads(&delivered), ["letter"]);
    assert_eq!(delivered[0].receipt.delivery, 1, "a redriven message starts afresh");
    assert_eq!(stats(&h, "dlq").stats.messages, 0);
    check_indexes(&h, "work");
    check_indexes(&h, "dlq");
}

#[test]
fn a_redrive_counts_only_dead_letters_toward_its_max() {
    // Messages that are not dead letters at the head of a dead-letter queue (enqueued directly,
    // more than a redrive looks at, or left by a deleted source) do not hide the dead letters:
    // the redrive walks the dead-letter index and moves `max` of them.
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "gone", with_dead_letters("dlq"));
    configure(&mut h, "live", with_dead_letters("dlq"));
    let direct = crate::limits::REDRIVE_LOOKED_AT_MAX + 1000;
    for first in (0..direct).step_by(1000) {
        let batch: Vec<NewMessage> = (first..first + 1000)
            .map(|i| message(&format!("direct{i}"), 0))
            .collect();
        enqueue(&mut h, 0, "dlq", batch);
    }
    let orphans: Vec<NewMessage> = (0..30).map(|i| message(&format!("orphan{i}"), 0)).collect();
    enqueue(&mut h, 0, "gone", orphans);
    let letters: Vec<NewMessage> = (0..5).map(|i| message(&format!("letter{i}"), 0)).collect();
    enqueue(&mut h, 0, "live", letters);
    assert_eq!(receive(&mut h, 0, "gone", 100, Some(100)).len(), 30);
    assert_eq!(receive(&mut h, 0, "live", 100, Some(100)).len(), 5);
    assert!(receive(&mut h, 200, "gone", 1, None).is_empty());
    assert!(receive(&mut h, 200, "live", 1, None).is_empty());
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
    assert_eq!(delete(&mut h, 300, "gone"), Response::QueueDeleted { finished: true });

    let redrive = |h: &mut Harness, max: u32| {
        h.apply(cmd(
            400,
            Op::Queue(QueueOp::Redrive {
                queue: "dlq".into(),
                max,
            }),
        ))
    };
    assert_eq!(redrive(&mut h, 2), Response::Redriven { moved: 2 });
    assert_eq!(redrive(&mut h, 10), Response::Redriven { moved: 3 });
    assert_eq!(redrive(&mut h, 10), Response::Redriven { moved: 0 });
    assert_eq!(receive(&mut h, 400, "live", 100, None).len(), 5);
    assert_eq!(stats(&h, "dlq").stats.messages, direct as u64 + 30);
    // The orphans left the index; the direct messages were never in it.
    assert_eq!(rows(&h, Table::QueueDeadLetter, "dlq"), 0);
    check_indexes(&h, "dlq");
    check_indexes(&h, "live");
}

#[test]
fn dead_letters_in_flight_in_the_dead_letter_queue_do_not_hide_the_visible_ones() {
    // 70 dead letters of 256 KiB received from the dead-letter queue to inspect (17.5 MiB, past
    // a redrive's 16 MiB), 10 visible behind them: the redrive reads none of the first 70.
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq"));
    let payload = vec![1u8; crate::limits::MESSAGE_BYTES_MAX];
    for _ in 0..8 {
        let batch = (0..10)
            .map(|_| NewMessage {
                payload: payload.clone(),
                ..message("", 0)
            })
            .collect();
        enqueue(&mut h, 0, "work", batch);
    }
    assert_eq!(receive(&mut h, 0, "work", 100, Some(100)).len(), 80);
    assert!(receive(&mut h, 200, "work", 1, None).is_empty());
    assert_eq!(stats(&h, "dlq").stats.messages, 80);
    assert_eq!(receive(&mut h, 300, "dlq", 70, Some(3_600_000)).len(), 70);
    let moved = h.apply(cmd(
        400,
        Op::Queue(QueueOp::Redrive {
            queue: "dlq".into(),
            max: 100,
        }),
    ));
    assert_eq!(moved, Response::Redriven { moved: 10 });
    assert_eq!(stats(&h, "dlq").stats.messages, 70);
    check_indexes(&h, "dlq");
    check_indexes(&h, "work");
}

#[test]
fn a_deletion_of_large_messages_stops_at_the_byte_budget_and_goes_on_later() {
    let mut h = Harness::new();
    configure(&mut h, "big", QueueConfig::default());
    // 300 messages of 256 KiB: 75 MiB, past one entry's 64 MiB.
    let payload = vec![7u8; crate::limits::MESSAGE_BYTES_MAX];
    for _ in 0..30 {
        let messages: Vec<NewMessage> = (0..10)
            .map(|_| NewMessage {
                payload: payload.clone(),
                ..message("", 0)
            })
            .collect();
        enqueue(&mut h, 0, "big", messages);
    }
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
    assert_eq!(delete(&mut h, 0, "big"), Response::QueueDeleted { finished: false });
    let left = rows(&h, Table::QueueMessage, "big");
    let per_entry = (QUEUE_DELETE_BYTES_MAX / crate::limits::MESSAGE_BYTES_MAX as u64) as usize;
    assert!(left > 0 && left <= 300 - per_entry + 1, "{left} messages left");
    let go_on = Op::Queue(QueueOp::ContinueDeletes {
        limit: QUEUE_DELETE_ROWS_MAX,
    });
    h.apply(cmd(0, go_on));
    assert_eq!(rows(&h, Table::QueueMessage, "big"), 0);
    assert!(!super::queue::deletions_due(&h.store).expect("due"));
}

/// Enqueues `count` messages into `queue`, 1000 per entry.
fn fill(h: &mut Harness, queue: &str, count: u32) {
    for first in (0..count).step_by(1000) {
        let messages = (first..count.min(first + 1000))
            .map(|i| message(&format!("m{i}"), 0))
            .collect();
        enqueue(h, 0, queue, messages);
    }
}

#[test]
fn deletions_take_turns_and_each_goes_on_where_it_stopped() {
    let mut h = Harness::new();
    for queue in ["a", "b"] {
        configure(&mut h, queue, QueueConfig::default());
        fill(&mut h, queue, 3000);
    }
    configure(&mut h, "small", QueueConfig::default());
    build_index(&mut h, QUEUE_INDEX_ROWS_MAX);
    assert_eq!(delete(&mut h, 0, "a"), Response::QueueDeleted { finished: false });
    assert_eq!(delete(&mut h, 0, "b"), Response::QueueDeleted { finished: false });
    let go_on = |limit| Op::Queue(QueueOp::ContinueDeletes { limit });
    // Each deleting entry removed the index rows and the first messages; the rest are left.
    let a = rows(&h, Table::QueueMessage, "a");
    let b = rows(&h, Table::QueueMessage, "b");
    assert!(a > 100 && b > 100, "{a} {b}");
    // The first entry works on "a" until its budget is spent; the next starts with "b".
    h.apply(cmd(0, go_on(100)));
    assert_eq!(
        (rows(&h, Table::QueueMessage, "a"), rows(&h, Table::QueueMessage, "b")),
        (a - 100, b)
    );
    h.apply(cmd(0, go_on(100)));
    assert_eq!(
        (rows(&h, Table::QueueMessage, "a"), rows(&h, Table::QueueMessage, "b")),
        (a - 100, b - 100)
    );
    // Then "a" again, from where it stopped: its scans start past the rows it removed.
    let recorder = ScanStarts {
        inner: &h.store,
        table: Table::QueueMessage,
        starts: Default::default(),
    };
    let mut writes = WriteSet::default();
    let mut view = View {
        base: &recorder,
        writes: &mut writes,
    };
    assert_eq!(
        super::queue::continue_deletes(&mut view, 100).expect("continue"),
        Response::Swept { removed: 100 }
    );
    let prefix = named(b"a");
    let starts = recorder.starts.into_inner();
    assert!(!starts.is_empty());
    assert!(
        starts.iter().all(|s| s.starts_with(&prefix) && s.len() > prefix.len()),
        "{starts:?}"
    );
    h.store.commit(&writes);
    assert_eq!(
        (rows(&h, Table::QueueMessage, "a"), rows(&h, Table::QueueMessage, "b")),
        (a - 200, b - 100)
    );
    // A queue deleted meanwhile in one entry does not wait, and the rest finish in turn, the
    // leader going on within its tick while more is due.
    fill(&mut h, "small", 10);
    assert_eq!(delete(&mut h, 0, "small"), Response::QueueDeleted { finished: true });
    let mut entries = 0;
    loop {
        let op = go_on(QUEUE_DELETE_ROWS_MAX);
        h.apply(cmd(0, op.clone()));
        entries += 1;
        assert!(entries < 10, "the deletions do not progress");
        if !super::sweep::more_due(&h.store, &op).expect("more") {
            break;
        }
    }
    assert!(!super::queue::deletions_due(&h.store).expect("due"));
    let build = Op::Queue(QueueOp::BuildDeadLetterIndex { limit: 1 });
    assert!(
        !super::sweep::more_due(&h.store, &build).expect("more"),
        "built already"
    );
    assert_eq!(all_rows(&h, Table::QueueMessage), 0);
    assert_eq!(all_rows(&h, Table::QueueReady), 0);
}

#[test]
fn a_deletion_cursor_names_its_step_by_its_place() {
    // Saved cursors name their step by number: reordering the steps changes the data format.
    let tables: Vec<Table> = super::queue::DELETE_STEPS.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(
        tables,
        [
            Table::QueueReady,
            Table::QueueDelayed,
            Table::QueueMessage,
            Table::QueueDedup,
            Table::QueueDeadLetter
        ]
    );
    assert_eq!(
        super::stream::DELETE_STEPS,
        [Table::StreamBatch, Table::StreamProducer, Table::StreamPartition]
    );
    let cursor = super::records::DeletionCursor {
        step: 2,
        after: Some(vec![1, b'q', 9]),
    };
    assert_eq!(basalt_codec::encode(&cursor), [2, 1, 3, 1, b'q', 9]);
}

#[test]
fn deletions_wait_for_the_dead_letter_index_which_is_rebuilt_from_the_queue_records() {
    let mut h = Harness::new();
    // No queue, no build: a store without queues proposes nothing.
    assert!(!super::queue::dead_letter_index_due(&h.store).expect("due"));
    for queue in ["dlq1", "dlq2", "plain"] {
        configure(&mut h, queue, QueueConfig::default());
    }
    configure(&mut h, "work", with_dead_letters("dlq1"));
    configure(&mut h, "other", with_dead_letters("dlq2"));
    // A dead letter in dlq1.
    enqueue(&mut h, 0, "work", vec![message("letter", 0)]);
    assert_eq!(receive(&mut h, 0, "work", 1, Some(100)).len(), 1);
    assert!(receive(&mut h, 200, "work", 1, None).is_empty());
    assert_eq!(rows(&h, Table::QueueDeadLetter, "dlq1"), 1);
    // As an older build (or a replica running one while others ran this) left the indexes: the
    // reference row of "work" and the dead letter's row are missing, and a row names a reference
    // no record makes.
    let index_key = |dlq: &str, source: &str| {
        let mut key = named(dlq.as_bytes());
        key.extend_from_slice(&named(source.as_bytes()));
        key
    };
    let mut older = WriteSet::default();
    older.delete(Table::Meta, super::queue::DEAD_LETTER_INDEX_KEY.to_vec());
    older.delete(Table::QueueDeadLetterSource, index_key("dlq1", "work"));
    let letter = h
        .store
        .scan(Table::QueueDeadLetter, &KeyRange::all(), 1)
        .expect("scan")
        .remove(0)
        .0;
    older.delete(Table::QueueDeadLetter, letter);
    older.put(Table::QueueDeadLetterSource, index_key("plain", "work"), Vec::new());
    h.store.commit(&older);
    // Until the index is built, a deletion is refused and changes nothing.
    assert_eq!(
        delete(&mut h, 0, "plain"),
        Response::Refused(OpError::Queue(QueueError::IndexBuilding { queue: "plain".into() }))
    );
    assert_eq!(stats(&h, "plain"), StoredQueue::default());
    let redrive = |h: &mut Harness| {
        h.apply(cmd(
            300,
            Op::Queue(QueueOp::Redrive {
                queue: "dlq1".into(),
                max: 10,
            }),
        ))
    };
    assert_eq!(
        redrive(&mut h),
        Response::Refused(OpError::Queue(QueueError::IndexBuilding { queue: "dlq1".into() }))
    );
    // Built a row per entry; a configure between two steps keeps its own rows.
    h.apply(cmd(0, Op::Queue(QueueOp::BuildDeadLetterIndex { limit: 1 })));
    configure(&mut h, "other", QueueConfig::default());
    let entries = 1 + build_index(&mut h, 1);
    assert!(entries >= 5, "{entries} entries");
    let index: Vec<Vec<u8>> = h
        .store
        .scan(Table::QueueDeadLetterSource, &KeyRange::all(), usize::MAX)
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(index, [index_key("dlq1", "work")]);
    assert!(!super::queue::dead_letter_index_due(&h.store).expect("due"));
    assert_eq!(
        delete(&mut h, 0, "dlq1"),
        Response::Refused(OpError::Queue(QueueError::DeadLetterInUse {
            queue: "dlq1".into(),
            source_queue: "work".into(),
        }))
    );
    assert_eq!(delete(&mut h, 0, "plain"), Response::QueueDeleted { finished: true });
    assert_eq!(delete(&mut h, 0, "dlq2"), Response::QueueDeleted { finished: true });
    // The dead letter was indexed again: the redrive finds it.
    assert_eq!(redrive(&mut h), Response::Redriven { moved: 1 });
    assert_eq!(payloads(&receive(&mut h, 300, "work", 10, None)), ["letter"]);
    check_indexes(&h, "dlq1");
}

#[test]
fn a_dead_letter_queue_that_is_gone_takes_nothing_and_the_message_stays() {
    // A record naming a dead-letter queue that is not there (a deletion is refused while one
    // does, so this is a guard): its exhausted messages are delivered again, not moved nowhere.
    let mut h = Harness::new();
    configure(&mut h, "dlq", QueueConfig::default());
    configure(&mut h, "work", with_dead_letters("dlq"));
    let mut gone = WriteSet::default();
    gone.delete(Table::Queue, named(b"dlq"));
    h.store.commit(&gone);

    enqueue(&mut h, 0, "work", vec![message("stays", 0)]);
    assert_eq!(receive(&mut h, 0, "work", 1, Some(100)).len(), 1);
    let again = receive(&mut h, 200, "work", 1, None);
    assert_eq!(payloads(&again), ["stays"]);
    assert_eq!(again[0].receipt.delivery, 2);
    check_indexes(&h, "work");
}
