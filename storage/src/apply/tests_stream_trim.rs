//! Stream trims (`StreamOp::Trim`, Redis's `XTRIM`): which records a rule hides, the bounds a
//! transaction and a limit put on it, and the removal of the hidden batches.

use super::stream::{fetch, partition_state};
use super::tests::{cmd, Harness};
use super::tests_stream::{produce, to};
use super::*;
use crate::command::is_transactional;
use crate::limits::TRIM_BATCHES_MAX;
use crate::stream::{TopicConfig, TrimRule};

fn create(h: &mut Harness, topic: &str, partitions: u32, retention_bytes: Option<u64>) {
    let r = h.apply(cmd(
        0,
        Op::Stream(StreamOp::CreateTopic {
            topic: topic.into(),
            config: TopicConfig {
                partitions,
                retention_ms: None,
                retention_bytes,
                mirror: false,
            },
        }),
    ));
    assert!(matches!(r, Response::TopicCreated { .. }), "{r:?}");
}

fn trim_op(topic: &str, rule: TrimRule, newer_kept: u64, limit: Option<u64>) -> Op {
    Op::Stream(StreamOp::Trim {
        topic: topic.into(),
        partition: 0,
        rule,
        newer_kept,
        limit,
    })
}

fn trim(h: &mut Harness, at: u64, topic: &str, rule: TrimRule, newer_kept: u64, limit: Option<u64>) -> u64 {
    match h.apply(cmd(at, trim_op(topic, rule, newer_kept, limit))) {
        Response::Trimmed { removed } => removed,
        other => panic!("expected trimmed, got {other:?}"),
    }
}

/// The partition's (log start, high watermark) and the values a fetch from its start reads.
fn kept(h: &Harness, topic: &str) -> (u64, u64, Vec<String>) {
    let state = partition_state(&h.store, topic.as_bytes(), 0)
        .expect("store")
        .expect("partition");
    let fetched = fetch(&h.store, topic.as_bytes(), 0, state.start_offset, 1000, u64::MAX)
        .expect("store")
        .expect("fetch");
    let values = fetched
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.value).into_owned())
        .collect();
    (state.start_offset, state.next_offset, values)
}

fn stored(h: &Harness) -> usize {
    h.store
        .scan(Table::StreamBatch, &KeyRange::all(), usize::MAX)
        .expect("scan")
        .len()
}

fn retention_due(h: &Harness, now_ms: u64) -> bool {
    sweeps_due(&h.store, now_ms, RegionRole::default())
        .expect("due")
        .contains(&Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX }))
}

/// Produces `batches` batches of `per_batch` records (values `0`, `1`, ...), batch `b` stamped
/// `b * 100` ms.
fn fill(h: &mut Harness, topic: &str, batches: u64, per_batch: u64) {
    for b in 0..batches {
        let records = (0..per_batch)
            .map(|n| to(0, &(b * per_batch + n).to_string()))
            .collect();
        let r = produce(h, b * 100, topic, records, None);
        assert!(matches!(r, Response::ProducedStamped(_)), "{r:?}");
    }
}

fn strings(values: &[u64]) -> Vec<String> {
    values.iter().map(u64::to_string).collect()
}

#[test]
fn maxlen_keeps_the_newest_records_also_from_inside_a_batch_and_never_moves_the_start_back() {
    let mut h = Harness::new();
    create(&mut h, "s", 1, None);
    fill(&mut h, "s", 3, 3); // offsets 0..9 in batches at 0, 3, 6
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(5), 0, None), 4);
    assert_eq!(kept(&h, "s"), (4, 9, strings(&[4, 5, 6, 7, 8])));
    // The hidden records are out of range as retention's are, and their whole batch is gone.
    assert!(matches!(
        fetch(&h.store, b"s", 0, 3, 10, u64::MAX).expect("store"),
        Err(OpError::Stream(StreamError::OffsetOutOfRange { log_start: 4, .. }))
    ));
    assert_eq!(stored(&h), 3, "hidden at once, removed by the retention entries");
    h.apply(cmd(1000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(
        stored(&h),
        2,
        "the batch of offsets 0..3 is removed, 3..6 keeps 4 and 5"
    );
    // A longer length hides nothing and keeps the start where it is.
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(100), 0, None), 0);
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(5), 0, None), 0);
    assert_eq!(kept(&h, "s").0, 4);
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(0), 0, None), 5);
    assert_eq!(kept(&h, "s"), (9, 9, vec![]));
    h.apply(cmd(1000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(stored(&h), 0);
    let state = partition_state(&h.store, b"s", 0).expect("store").expect("partition");
    assert_eq!(state.bytes, 0, "every batch is removed and none is counted");
    // The next record goes on from the high watermark.
    fill(&mut h, "s", 1, 1);
    assert_eq!(kept(&h, "s").1, 10);
}

#[test]
fn minid_hides_the_records_whose_id_is_below_by_stamp_then_offset() {
    // Batches stamped 0, 100, 200, 300 of two records each: ids 0-0 0-1 100-2 100-3 200-4 ...
    for (timestamp_ms, offset, hidden) in [
        (0, 0, 0),
        (0, 1, 1),
        (100, 0, 2),
        (100, 3, 3),
        (100, 99, 4), // an offset past the stamp's records hides them all, no more
        (150, 0, 4),
        (300, 7, 7),
        (301, 0, 8),
        (u64::MAX, u64::MAX, 8),
    ] {
        let mut h = Harness::new();
        create(&mut h, "s", 1, None);
        fill(&mut h, "s", 4, 2);
        let rule = TrimRule::MinId { timestamp_ms, offset };
        assert_eq!(trim(&mut h, 1000, "s", rule, 0, None), hidden, "{rule:?}");
        assert_eq!(kept(&h, "s").0, hidden, "{rule:?}");
    }
}

#[test]
fn newer_records_of_the_transaction_and_the_limit_bound_what_a_trim_hides() {
    let mut h = Harness::new();
    create(&mut h, "s", 1, None);
    fill(&mut h, "s", 1, 10);
    // The last 3 records came after the command that trims: it keeps 2 of the 7 before them.
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(2), 3, None), 5);
    assert_eq!(kept(&h, "s").0, 5);
    // MINID past everything still leaves the newer records.
    let rule = TrimRule::MinId {
        timestamp_ms: u64::MAX,
        offset: 0,
    };
    assert_eq!(trim(&mut h, 1000, "s", rule, 2, None), 3);
    assert_eq!(kept(&h, "s").0, 8);
    // A limit hides at most that many.
    let mut h = Harness::new();
    create(&mut h, "s", 1, None);
    fill(&mut h, "s", 1, 10);
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(0), 0, Some(4)), 4);
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(0), 0, Some(0)), 0);
    assert_eq!(kept(&h, "s").0, 4);
    // More newer records than the partition holds hide nothing.
    assert_eq!(trim(&mut h, 1000, "s", TrimRule::MaxLen(0), 100, None), 0);
}

#[test]
fn batches_a_trim_hid_go_over_retention_entries_with_a_budget_of_their_own() {
    let mut h = Harness::new();
    create(&mut h, "big", 1, None);
    let batches = u64::from(TRIM_BATCHES_MAX) + 10;
    fill(&mut h, "big", batches, 1);
    // Another topic whose oldest batch is due for retention by age.
    let aged = Op::Stream(StreamOp::CreateTopic {
        topic: "aged".into(),
        config: TopicConfig {
            partitions: 1,
            retention_ms: Some(1000),
            retention_bytes: None,
            mirror: false,
        },
    });
    h.apply(cmd(0, aged));
    produce(&mut h, 0, "aged", vec![to(0, "old")], None);
    produce(&mut h, 99_500, "aged", vec![to(0, "new")], None);
    assert_eq!(trim(&mut h, 100_000, "big", TrimRule::MaxLen(1), 0, None), batches - 1);
    // Hidden at once, whatever is still stored.
    assert_eq!(kept(&h, "big"), (batches - 1, batches, strings(&[batches - 1])));
    assert!(retention_due(&h, 100_000));
    h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: 1 })));
    assert_eq!(
        stored(&h),
        10 + 1,
        "{TRIM_BATCHES_MAX} hidden batches removed, and retention still removed the aged batch"
    );
    assert!(more_due(&h.store, &Op::Stream(StreamOp::Retention { limit: 1 })).expect("more"));
    // A follow-up entry of a tick (limit 0) goes on with them.
    h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(stored(&h), 2, "the kept record's batch and the aged topic's newest");
    assert!(!retention_due(&h, 100_000));
    assert!(!more_due(&h.store, &Op::Stream(StreamOp::Retention { limit: 0 })).expect("more"));
    let state = partition_state(&h.store, b"big", 0).expect("store").expect("partition");
    let big = KeyRange::prefix_from(&named(b"big"), named(b"big"));
    let one_batch = h.store.scan(Table::StreamBatch, &big, 1).expect("scan")[0].1.len() as u64;
    assert_eq!(state.bytes, one_batch, "removed batches are counted out");
}

#[test]
fn partitions_with_hidden_batches_take_turns() {
    let mut h = Harness::new();
    create(&mut h, "a", 1, None);
    create(&mut h, "b", 1, None);
    let batches = u64::from(TRIM_BATCHES_MAX) * 2;
    fill(&mut h, "a", batches, 1);
    fill(&mut h, "b", 3, 1);
    trim(&mut h, 100_000, "a", TrimRule::MaxLen(0), 0, None);
    trim(&mut h, 100_000, "b", TrimRule::MaxLen(0), 0, None);
    // The first entry spends its budget on "a"; the next starts with "b".
    h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(stored(&h), TRIM_BATCHES_MAX as usize + 3);
    // "a"'s pending row says where its removal stands: the first batch left.
    let mut marker = b"stream_trim_pending/".to_vec();
    marker.extend_from_slice(&named(b"a"));
    marker.extend_from_slice(&0u32.to_be_bytes());
    let cursor = h.store.get(Table::Meta, &marker).expect("get").expect("a trim pending");
    let a = KeyRange::prefix_from(&named(b"a"), named(b"a"));
    assert_eq!(cursor, h.store.scan(Table::StreamBatch, &a, 1).expect("scan")[0].0);
    h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: 0 })));
    let b = KeyRange::prefix_from(&named(b"b"), named(b"b"));
    assert!(
        h.store.scan(Table::StreamBatch, &b, 1).expect("scan").is_empty(),
        "b had its turn"
    );
    h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(stored(&h), 0);
    assert!(!retention_due(&h, 100_000));
}

#[test]
fn a_trim_starts_its_removal_at_the_batch_holding_the_old_start_and_keeps_a_cursor_it_finds() {
    let mut h = Harness::new();
    create(&mut h, "c", 1, None);
    fill(&mut h, "c", 4, 2); // batches at offsets 0, 2, 4, 6
    let mut marker = b"stream_trim_pending/".to_vec();
    marker.extend_from_slice(&named(b"c"));
    marker.extend_from_slice(&0u32.to_be_bytes());
    let pending = |h: &Harness| h.store.get(Table::Meta, &marker).expect("get");
    let batch = |base: u64| {
        let mut key = named(b"c");
        key.extend_from_slice(&0u32.to_be_bytes());
        key.extend_from_slice(&base.to_be_bytes());
        key
    };
    assert_eq!(trim(&mut h, 1000, "c", TrimRule::MaxLen(7), 0, None), 1);
    assert_eq!(pending(&h), Some(batch(0)), "from the batch holding offset 0");
    h.apply(cmd(1000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(pending(&h), None, "nothing wholly hidden: the row goes");
    assert_eq!(trim(&mut h, 1000, "c", TrimRule::MaxLen(3), 0, None), 4);
    assert_eq!(pending(&h), Some(batch(0)), "the batch holding the old start, 1");
    // A later trim keeps the row as it is (not the batch holding its own old start, 5).
    assert_eq!(trim(&mut h, 1000, "c", TrimRule::MaxLen(2), 0, None), 1);
    assert_eq!(pending(&h), Some(batch(0)));
    h.apply(cmd(1000, Op::Stream(StreamOp::Retention { limit: 0 })));
    assert_eq!(kept(&h, "c"), (6, 8, strings(&[6, 7])));
    assert_eq!(stored(&h), 1);
    assert_eq!(pending(&h), None);
    // Deleting the topic drops a pending row with it.
    trim(&mut h, 1000, "c", TrimRule::MaxLen(0), 0, None);
    assert!(pending(&h).is_some());
    h.apply(cmd(1000, Op::Stream(StreamOp::DeleteTopic { topic: "c".into() })));
    assert_eq!(pending(&h), None);
}

#[test]
fn a_deleted_topic_s_pending_trim_is_forgotten() {
    let mut h = Harness::new();
    create(&mut h, "gone", 1, None);
    fill(&mut h, "gone", u64::from(TRIM_BATCHES_MAX) + 2, 1);
    trim(&mut h, 100_000, "gone", TrimRule::MaxLen(0), 0, None);
    let r = h.apply(cmd(100_000, Op::Stream(StreamOp::DeleteTopic { topic: "gone".into() })));
    assert!(matches!(r, Response::TopicDeleted { .. }), "{r:?}");
    for _ in 0..3 {
        h.apply(cmd(100_000, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    }
    assert!(!retention_due(&h, 100_000));
}

#[test]
fn retention_by_size_after_a_trim_leaves_the_start_where_the_trim_put_it() {
    let mut h = Harness::new();
    create(&mut h, "sized", 1, Some(1));
    fill(&mut h, "sized", 1, 10);
    fill(&mut h, "sized", 1, 1);
    assert_eq!(trim(&mut h, 1000, "sized", TrimRule::MaxLen(1), 0, None), 10);
    // The first batch (offsets 0..10) is hidden and removed; retention then finds the newest
    // batch only, which it keeps.
    h.apply(cmd(1000, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    assert_eq!(kept(&h, "sized").0, 10);
}

#[test]
fn bad_trims_get_typed_refusals_and_a_trim_may_be_part_of_a_transaction() {
    let mut h = Harness::new();
    create(&mut h, "s", 2, None);
    let refused = |h: &mut Harness, op: Op| match h.apply(cmd(0, op)) {
        Response::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(matches!(
        refused(&mut h, trim_op("nope", TrimRule::MaxLen(1), 0, None)),
        OpError::NotFound { .. }
    ));
    assert!(matches!(
        refused(&mut h, trim_op("s@eu", TrimRule::MaxLen(1), 0, None)),
        OpError::Stream(StreamError::MirrorReadOnly { .. })
    ));
    assert!(matches!(
        refused(&mut h, trim_op("", TrimRule::MaxLen(1), 0, None)),
        OpError::Empty { .. } | OpError::OutOfRange { .. } | OpError::TooLarge { .. }
    ));
    let beyond = Op::Stream(StreamOp::Trim {
        topic: "s".into(),
        partition: 2,
        rule: TrimRule::MaxLen(0),
        newer_kept: 0,
        limit: None,
    });
    assert!(matches!(refused(&mut h, beyond), OpError::OutOfRange { .. }));
    assert!(is_transactional(&trim_op("s", TrimRule::MaxLen(0), 0, None)));
}
