//! Streams: produce and fetch, idempotent producers, retention, consumer groups and assignment.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::group::assign;
use super::stream::{fetch, list_topics, offset_for_time, partition_state, Fetched};
use super::tests::{cmd, Harness};
use super::*;
use crate::stream::{partition_for_key, Assignment, Assignor, GroupView, ProduceRecord, Produced, TopicConfig};

/// One partition whose records are removed 3 s after they were produced.
fn aged_config() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        retention_ms: Some(3_000),
        retention_bytes: None,
        mirror: false,
    }
}

fn create(h: &mut Harness, topic: &str, partitions: u32) {
    let r = h.apply(cmd(
        0,
        Op::Stream(StreamOp::CreateTopic {
            topic: topic.into(),
            config: TopicConfig {
                partitions,
                retention_ms: None,
                retention_bytes: None,
                mirror: false,
            },
        }),
    ));
    assert!(matches!(r, Response::TopicCreated { .. }), "{r:?}");
}

pub(super) fn record(key: &str, value: &str) -> ProduceRecord {
    ProduceRecord {
        partition: None,
        key: key.into(),
        value: value.into(),
        headers: Vec::new(),
        sequence: None,
    }
}

pub(super) fn to(partition: u32, value: &str) -> ProduceRecord {
    ProduceRecord {
        partition: Some(partition),
        ..record("", value)
    }
}

pub(super) fn produce(
    h: &mut Harness,
    at: u64,
    topic: &str,
    records: Vec<ProduceRecord>,
    producer: Option<u64>,
) -> Response {
    h.apply(cmd(
        at,
        Op::Stream(StreamOp::Produce {
            topic: topic.into(),
            records,
            producer,
        }),
    ))
}

fn stamps(r: Response) -> Vec<u64> {
    match r {
        Response::ProducedStamped(p) => p.into_iter().map(|(_, stamp)| stamp).collect(),
        other => panic!("expected produced, got {other:?}"),
    }
}

#[test]
fn produce_answers_each_record_s_stamp_and_a_retry_the_first_one_s() {
    let mut h = Harness::new();
    create(&mut h, "t", 1);
    let seq = |sequence: u64, v: &str| ProduceRecord {
        sequence: Some(sequence),
        ..to(0, v)
    };
    assert_eq!(
        stamps(produce(&mut h, 1_000, "t", vec![seq(0, "a"), seq(1, "b")], Some(7))),
        [1_000, 1_000]
    );
    // The retry is applied later, and answers when the records were written.
    assert_eq!(
        stamps(produce(&mut h, 2_000, "t", vec![seq(0, "a"), seq(1, "b")], Some(7))),
        [1_000, 1_000]
    );
    let fetched = read(&h, "t", 0, 0, 10);
    assert!(fetched.records.iter().all(|r| r.timestamp_ms == 1_000), "{fetched:?}");
    assert_eq!(stamps(produce(&mut h, 3_000, "t", vec![to(0, "c")], None)), [3_000]);
}

fn produced(r: Response) -> Vec<Produced> {
    match r {
        Response::ProducedStamped(p) => p.into_iter().map(|(produced, _)| produced).collect(),
        other => panic!("expected produced, got {other:?}"),
    }
}

fn read(h: &Harness, topic: &str, partition: u32, offset: u64, max: u32) -> Fetched {
    fetch(&h.store, topic.as_bytes(), partition, offset, max, u64::MAX)
        .expect("store")
        .expect("fetch")
}

fn values(f: &Fetched) -> Vec<String> {
    f.records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.value).into_owned())
        .collect()
}

#[test]
fn records_get_consecutive_offsets_per_partition_and_fetch_from_any_offset() {
    let mut h = Harness::new();
    create(&mut h, "events", 3);
    let first = produced(produce(
        &mut h,
        1,
        "events",
        vec![to(1, "a"), to(2, "x"), to(1, "b")],
        None,
    ));
    assert_eq!(
        first.iter().map(|p| (p.partition, p.offset)).collect::<Vec<_>>(),
        [(1, 0), (2, 0), (1, 1)]
    );
    let second = produced(produce(&mut h, 2, "events", vec![to(1, "c"), to(1, "d")], None));
    assert_eq!(second.iter().map(|p| p.offset).collect::<Vec<_>>(), [2, 3]);
    let all = read(&h, "events", 1, 0, 100);
    assert_eq!(values(&all), ["a", "b", "c", "d"]);
    assert_eq!(all.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(all.high_watermark, 4);
    // From the middle of a batch, and bounded by count.
    assert_eq!(values(&read(&h, "events", 1, 1, 2)), ["b", "c"]);
    assert_eq!(values(&read(&h, "events", 1, 3, 10)), ["d"]);
    assert!(
        read(&h, "events", 1, 4, 10).records.is_empty(),
        "at the end: nothing yet"
    );
    // max_bytes stops early but always returns one record.
    let one = fetch(&h.store, b"events", 1, 0, 100, 1).expect("store").expect("fetch");
    assert_eq!(values(&one), ["a"]);
}

#[test]
fn keys_hash_to_a_stable_partition() {
    let mut h = Harness::new();
    create(&mut h, "t", 8);
    let records: Vec<_> = (0..50)
        .map(|i| record(&format!("user-{}", i % 5), &i.to_string()))
        .collect();
    let out = produced(produce(&mut h, 1, "t", records, None));
    for (i, p) in out.iter().enumerate() {
        assert_eq!(p.partition, partition_for_key(format!("user-{}", i % 5).as_bytes(), 8));
    }
    // Per key, order is preserved within its partition.
    let p = partition_for_key(b"user-3", 8);
    let in_order: Vec<String> = values(&read(&h, "t", p, 0, 1000));
    let of_user_3: Vec<String> = (0..50).filter(|i| i % 5 == 3).map(|i| i.to_string()).collect();
    assert_eq!(
        in_order
            .into_iter()
            .filter(|v| of_user_3.contains(v))
            .collect::<Vec<_>>(),
        of_user_3
    );
}

#[test]
fn an_idempotent_producer_retry_appends_nothing_and_gaps_are_refused() {
    let mut h = Harness::new();
    create(&mut h, "t", 2);
    let seq = |partition: u32, sequence: u64, v: &str| ProduceRecord {
        sequence: Some(sequence),
        ..to(partition, v)
    };
    let first = produced(produce(
        &mut h,
        1,
        "t",
        vec![seq(0, 0, "a"), seq(0, 1, "b"), seq(1, 0, "x")],
        Some(7),
    ));
    // The same batch again (a retry after a lost answer): same offsets, flagged duplicate.
    let retry = produced(produce(
        &mut h,
        2,
        "t",
        vec![seq(0, 0, "a"), seq(0, 1, "b"), seq(1, 0, "x")],
        Some(7),
    ));
    assert_eq!(
        retry.iter().map(|p| (p.partition, p.offset)).collect::<Vec<_>>(),
        first.iter().map(|p| (p.partition, p.offset)).collect::<Vec<_>>()
    );
    assert!(retry.iter().all(|p| p.duplicate));
    assert_eq!(read(&h, "t", 0, 0, 10).high_watermark, 2);
    // A gap is refused, and the whole request changes nothing.
    match produce(&mut h, 3, "t", vec![seq(1, 1, "y"), seq(0, 5, "c")], Some(7)) {
        Response::Refused(OpError::Stream(StreamError::OutOfOrderSequence {
            partition: 0,
            expected: 2,
            got: 5,
            ..
        })) => {}
        other => panic!("expected an out-of-order refusal, got {other:?}"),
    }
    assert_eq!(read(&h, "t", 1, 0, 10).high_watermark, 1);
    let next = produced(produce(&mut h, 4, "t", vec![seq(0, 2, "c")], Some(7)));
    assert_eq!((next[0].offset, next[0].duplicate), (2, false));
    // Another producer has its own sequences.
    let other = produced(produce(&mut h, 5, "t", vec![seq(0, 0, "z")], Some(8)));
    assert_eq!((other[0].offset, other[0].duplicate), (3, false));
}

#[test]
fn bad_input_gets_typed_refusals() {
    let mut h = Harness::new();
    create(&mut h, "t", 2);
    let refused = |r: Response| match r {
        Response::Refused(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(matches!(
        refused(produce(&mut h, 1, "nope", vec![to(0, "a")], None)),
        OpError::NotFound { .. }
    ));
    assert!(matches!(
        refused(produce(&mut h, 1, "t", vec![to(2, "a")], None)),
        OpError::OutOfRange { .. }
    ));
    assert!(matches!(
        refused(produce(&mut h, 1, "", vec![to(0, "a")], None)),
        OpError::Empty { .. }
    ));
    let big = ProduceRecord {
        value: vec![0; crate::limits::RECORD_VALUE_BYTES_MAX + 1],
        ..to(0, "")
    };
    assert!(matches!(
        refused(produce(&mut h, 1, "t", vec![big], None)),
        OpError::TooLarge { .. }
    ));
    assert_eq!(read(&h, "t", 0, 0, 10).high_watermark, 0, "nothing appended");
    produce(&mut h, 1, "t", vec![to(0, "a")], None);
    let beyond = fetch(&h.store, b"t", 0, 2, 10, 100).expect("store");
    assert!(matches!(
        beyond,
        Err(OpError::Stream(StreamError::OffsetOutOfRange {
            offset: 2,
            log_start: 0,
            high_watermark: 1
        }))
    ));
    assert!(matches!(
        fetch(&h.store, b"t", 5, 0, 10, 100).expect("store"),
        Err(OpError::OutOfRange { .. })
    ));
    assert!(matches!(
        fetch(&h.store, b"x", 0, 0, 10, 100).expect("store"),
        Err(OpError::NotFound { .. })
    ));
    // Partitions only grow.
    let shrink = h.apply(cmd(
        2,
        Op::Stream(StreamOp::CreateTopic {
            topic: "t".into(),
            config: TopicConfig {
                partitions: 1,
                retention_ms: None,
                retention_bytes: None,
                mirror: false,
            },
        }),
    ));
    assert!(matches!(shrink, Response::Refused(OpError::OutOfRange { .. })));
}

#[test]
fn retention_by_age_and_by_size_removes_the_oldest_batches() {
    let mut h = Harness::new();
    h.apply(cmd(
        0,
        Op::Stream(StreamOp::CreateTopic {
            topic: "aged".into(),
            config: TopicConfig {
                partitions: 1,
                retention_ms: Some(1000),
                retention_bytes: None,
                mirror: false,
            },
        }),
    ));
    h.apply(cmd(
        0,
        Op::Stream(StreamOp::CreateTopic {
            topic: "sized".into(),
            config: TopicConfig {
                partitions: 1,
                retention_ms: None,
                retention_bytes: Some(250),
                mirror: false,
            },
        }),
    ));
    for t in 0..5u64 {
        produce(&mut h, t * 100, "aged", vec![to(0, &format!("a{t}"))], None);
        produce(&mut h, t * 100, "sized", vec![to(0, &"x".repeat(100))], None);
    }
    assert!(sweeps_due(&h.store, 1000, RegionRole::default())
        .expect("due")
        .contains(&Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    h.apply(cmd(1150, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    // Batches stamped 0 and 100 are 1000 ms old at 1150; 200.. stay.
    let aged = read(&h, "aged", 0, 2, 10);
    assert_eq!(
        (aged.log_start, values(&aged)),
        (2, vec!["a2".into(), "a3".into(), "a4".into()])
    );
    assert!(matches!(
        fetch(&h.store, b"aged", 0, 0, 10, 100).expect("store"),
        Err(OpError::Stream(StreamError::OffsetOutOfRange { log_start: 2, .. }))
    ));
    let sized = partition_state(&h.store, b"sized", 0)
        .expect("store")
        .expect("partition");
    assert!(sized.bytes <= 250, "{sized:?}");
    assert!(sized.start_offset >= 2 && sized.next_offset == 5, "{sized:?}");
    assert!(!sweeps_due(&h.store, 1150, RegionRole::default())
        .expect("due")
        .contains(&Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
}

fn join(h: &mut Harness, at: u64, member: &str, topics: &[&str], assignor: Assignor) -> GroupView {
    match h.apply(cmd(
        at,
        Op::Group(GroupOp::Join {
            group: "g".into(),
            member: member.into(),
            topics: topics.iter().map(|t| t.as_bytes().to_vec()).collect(),
            session_timeout_ms: 1000,
            assignor,
        }),
    )) {
        Response::Group(v) => v,
        other => panic!("expected a group view, got {other:?}"),
    }
}

fn heartbeat(h: &mut Harness, at: u64, member: &str) -> Response {
    h.apply(cmd(
        at,
        Op::Group(GroupOp::Heartbeat {
            group: "g".into(),
            member: member.into(),
        }),
    ))
}

#[test]
fn a_member_that_misses_its_session_timeout_loses_its_partitions() {
    let mut h = Harness::new();
    create(&mut h, "t", 4);
    let a = join(&mut h, 0, "a", &["t"], Assignor::Range);
    assert_eq!((a.generation, a.assigned.len()), (1, 4));
    let b = join(&mut h, 100, "b", &["t"], Assignor::Range);
    assert_eq!((b.generation, b.assigned.len()), (2, 2));
    // a learns the new generation from its heartbeat.
    match heartbeat(&mut h, 200, "a") {
        Response::Group(v) => assert_eq!((v.generation, v.assigned.len()), (2, 2)),
        other => panic!("{other:?}"),
    }
    // Commits are fenced by generation and by ownership.
    assert!(matches!(
        commit(&mut h, 300, "a", 1, &[("t", 0, 0)]),
        Response::Refused(OpError::Stream(StreamError::IllegalGeneration { current: 2, .. }))
    ));
    assert!(matches!(
        commit(&mut h, 300, "a", 2, &[("t", 3, 0)]),
        Response::Refused(OpError::Stream(StreamError::NotAssigned { .. }))
    ));
    assert_eq!(commit(&mut h, 300, "a", 2, &[("t", 0, 0)]), Response::OffsetsCommitted);
    // b keeps heartbeating; a stops. After a's timeout the sweep hands everything to b.
    heartbeat(&mut h, 900, "b");
    assert!(sweeps_due(&h.store, 1200, RegionRole::default())
        .expect("due")
        .contains(&Op::Group(GroupOp::Sweep { limit: SWEEP_ITEMS_MAX })));
    assert_eq!(
        h.apply(cmd(1200, Op::Group(GroupOp::Sweep { limit: SWEEP_ITEMS_MAX }))),
        Response::Swept { removed: 1 }
    );
    match heartbeat(&mut h, 1300, "b") {
        Response::Group(v) => assert_eq!((v.generation, v.assigned.len(), v.members), (3, 4, 1)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        heartbeat(&mut h, 1300, "a"),
        Response::GroupRefused(OpError::NotFound { .. })
    ));
    assert!(matches!(
        commit(&mut h, 1300, "a", 3, &[("t", 0, 0)]),
        Response::GroupRefused(OpError::NotFound { .. })
    ));
    assert_eq!(
        super::group::committed(&h.store, b"g", b"t").expect("read"),
        vec![(0, 0)]
    );
}

#[test]
fn an_expired_member_noticed_by_a_heartbeat_is_gone_for_good() {
    let mut h = Harness::new();
    create(&mut h, "t", 2);
    join(&mut h, 0, "a", &["t"], Assignor::Sticky);
    join(&mut h, 0, "b", &["t"], Assignor::Sticky);
    heartbeat(&mut h, 900, "b");
    // No sweep ran: b's heartbeat at 1500 still expires a, and that sticks.
    match heartbeat(&mut h, 1500, "b") {
        Response::Group(v) => assert_eq!((v.assigned.len(), v.members), (2, 1)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(heartbeat(&mut h, 1501, "a"), Response::GroupRefused(_)));
}

fn subscriptions(members: &[(&str, &[&str])]) -> BTreeMap<String, Vec<Vec<u8>>> {
    members
        .iter()
        .map(|(m, topics)| (m.to_string(), topics.iter().map(|t| t.as_bytes().to_vec()).collect()))
        .collect()
}

fn check_spread(
    assignment: &Assignment,
    subs: &BTreeMap<String, Vec<Vec<u8>>>,
    partitions: &BTreeMap<Vec<u8>, u32>,
) -> Result<(), TestCaseError> {
    for (topic, &count) in partitions {
        let eligible: Vec<&String> = subs.iter().filter(|(_, t)| t.contains(topic)).map(|(m, _)| m).collect();
        let mut owners = vec![0usize; count as usize];
        let mut per_member: BTreeMap<&String, u32> = eligible.iter().map(|m| (*m, 0)).collect();
        for (member, owned) in assignment {
            for (t, p) in owned.iter().filter(|(t, _)| t == topic) {
                prop_assert!(eligible.contains(&member), "{member} owns {t:?} without subscribing");
                owners[*p as usize] += 1;
                *per_member.entry(member).or_default() += 1;
            }
        }
        if !eligible.is_empty() {
            prop_assert!(
                owners.iter().all(|&n| n == 1),
                "every partition exactly once: {owners:?}"
            );
            let max = per_member.values().max().copied().unwrap_or(0);
            let min = per_member.values().min().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "uneven: {per_member:?}");
        }
    }
    Ok(())
}

fn topic_names() -> [&'static str; 3] {
    ["t0", "t1", "t2"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn both_assignors_give_every_partition_once_and_evenly(
        members in proptest::collection::btree_map("[a-f]{1,2}", proptest::collection::btree_set(0usize..3, 1..3), 0..7),
        counts in proptest::collection::vec(0u32..12, 3),
        sticky in any::<bool>(),
    ) {
        let names = topic_names();
        let subs: BTreeMap<String, Vec<Vec<u8>>> = members
            .iter()
            .map(|(m, ts)| (m.clone(), ts.iter().map(|&t| names[t].as_bytes().to_vec()).collect()))
            .collect();
        let partitions: BTreeMap<Vec<u8>, u32> = names.iter().zip(&counts).map(|(t, &c)| (t.as_bytes().to_vec(), c)).collect();
        let assignor = if sticky { Assignor::Sticky } else { Assignor::Range };
        let a = assign(assignor, &subs, &partitions, &Assignment::new());
        check_spread(&a, &subs, &partitions)?;
        prop_assert_eq!(a.keys().collect::<Vec<_>>(), subs.keys().collect::<Vec<_>>());
    }

    /// With the sticky assignor, a member leaving moves only its own partitions.
    #[test]
    fn sticky_moves_only_the_departed_members_partitions(
        members in proptest::collection::btree_set("[a-h]", 2..8),
        count in 1u32..40,
        leaver in any::<usize>(),
    ) {
        let all: Vec<&str> = members.iter().map(String::as_str).collect();
        let subs = subscriptions(&all.iter().map(|m| (*m, &["t"][..])).collect::<Vec<_>>());
        let partitions: BTreeMap<Vec<u8>, u32> = [(b"t".to_vec(), count)].into();
        let before = assign(Assignor::Sticky, &subs, &partitions, &Assignment::new());
        let gone = all[leaver % all.len()].to_string();
        let mut remaining = subs.clone();
        remaining.remove(&gone);
        let after = assign(Assignor::Sticky, &remaining, &partitions, &before);
        check_spread(&after, &remaining, &partitions)?;
        for (member, owned) in &before {
            if *member == gone {
                continue;
            }
            for tp in owned {
                prop_assert!(after[member].contains(tp), "{member} lost {tp:?}");
            }
        }
    }
}

#[test]
fn range_gives_contiguous_ranges_in_member_order() {
    let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
    let partitions: BTreeMap<Vec<u8>, u32> = [(b"t".to_vec(), 7)].into();
    let a = assign(Assignor::Range, &subs, &partitions, &Assignment::new());
    let owned = |m: &str| a[m].iter().map(|(_, p)| *p).collect::<Vec<_>>();
    assert_eq!(owned("a"), [0, 1, 2]);
    assert_eq!(owned("b"), [3, 4]);
    assert_eq!(owned("c"), [5, 6]);
}

fn delete(h: &mut Harness, at: u64, topic: &str) -> Response {
    h.apply(cmd(at, Op::Stream(StreamOp::DeleteTopic { topic: topic.into() })))
}

fn commit(h: &mut Harness, at: u64, member: &str, generation: u64, offsets: &[(&str, u32, u64)]) -> Response {
    h.apply(cmd(
        at,
        Op::Group(GroupOp::Commit {
            group: "g".into(),
            member: member.into(),
            generation,
            offsets: offsets
                .iter()
                .map(|(t, p, o)| (t.as_bytes().to_vec(), *p, *o))
                .collect(),
        }),
    ))
}

/// Rows of `topic` left in the tables a deletion empties.
fn rows_of(h: &Harness, topic: &str) -> usize {
    let prefix = named(topic.as_bytes());
    let mut rows = 0;
    for table in [Table::StreamBatch, Table::StreamPartition, Table::StreamProducer] {
        rows += h
            .store
            .scan(table, &KeyRange::prefix_from(&prefix, prefix.clone()), usize::MAX)
            .expect("scan")
            .len();
    }
    rows + super::group::committed(&h.store, b"g", topic.as_bytes())
        .expect("offsets")
        .len()
}

#[test]
fn a_deleted_topic_goes_with_its_records_producers_and_offsets_and_its_name_comes_back_empty() {
    let mut h = Harness::new();
    create(&mut h, "t", 2);
    create(&mut h, "kept", 1);
    // More batches than one entry removes: the deletion takes several entries.
    let batches = crate::limits::TOPIC_DELETE_ROWS_MAX as u64 + 100;
    for n in 0..batches {
        produce(&mut h, n, "t", vec![to((n % 2) as u32, "v")], None);
    }
    let mut sequenced = record("k", "idempotent");
    sequenced.sequence = Some(0);
    produce(&mut h, batches, "t", vec![sequenced], Some(7));
    produce(&mut h, batches, "kept", vec![to(0, "stays")], None);
    let member = join(&mut h, batches, "a", &["t", "kept"], Assignor::Range);
    assert_eq!(
        commit(&mut h, batches, "a", member.generation, &[("t", 0, 5), ("kept", 0, 1)]),
        Response::OffsetsCommitted
    );

    assert_eq!(
        delete(&mut h, batches + 1, "t"),
        Response::TopicDeleted { finished: false }
    );
    // Gone at once for every reader and writer, and its name is reserved until the rows are.
    assert!(matches!(
        fetch(&h.store, b"t", 0, 0, 10, u64::MAX).expect("store"),
        Err(OpError::NotFound { .. })
    ));
    assert!(matches!(
        produce(&mut h, batches + 2, "t", vec![to(0, "late")], None),
        Response::Refused(OpError::NotFound { .. })
    ));
    let late_commit = commit(&mut h, batches + 2, "a", member.generation, &[("t", 0, 6)]);
    assert!(
        matches!(late_commit, Response::Refused(OpError::NotFound { .. })),
        "{late_commit:?}"
    );
    let recreate = Op::Stream(StreamOp::CreateTopic {
        topic: "t".into(),
        config: TopicConfig {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            mirror: false,
        },
    });
    assert_eq!(
        h.apply(cmd(10_002, recreate.clone())),
        Response::Refused(OpError::Stream(StreamError::TopicBeingDeleted { topic: "t".into() }))
    );
    assert!(matches!(
        delete(&mut h, 10_002, "t"),
        Response::Refused(OpError::NotFound { .. })
    ));
    assert!(list_topics(&h.store, b"", 100)
        .expect("list")
        .0
        .iter()
        .all(|(name, _)| name != b"t"));

    // Retention of other topics goes on meanwhile: a deletion has a budget of its own.
    h.apply(cmd(
        10_003,
        Op::Stream(StreamOp::CreateTopic {
            topic: "aged".into(),
            config: aged_config(),
        }),
    ));
    produce(&mut h, 10_003, "aged", vec![to(0, "old")], None);
    produce(&mut h, 15_000, "aged", vec![to(0, "new")], None);
    h.apply(cmd(15_001, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    assert_eq!(
        read(&h, "aged", 0, 1, 10).log_start,
        1,
        "retention waited for the deletion"
    );
    // The leader's retention entries finish it, a bounded number of rows each.
    let mut entries = 0;
    while sweeps_due(&h.store, 10_003, RegionRole::default())
        .expect("due")
        .contains(&Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX }))
    {
        let before = rows_of(&h, "t");
        h.apply(cmd(10_003, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
        assert!(
            rows_of(&h, "t") < before || before == 0,
            "a deletion entry made no progress"
        );
        entries += 1;
        assert!(entries < 100, "the deletion never ends");
    }
    assert_eq!(rows_of(&h, "t"), 0);
    assert!(h
        .store
        .scan(Table::StreamTopicDeleting, &KeyRange::all(), 1)
        .expect("scan")
        .is_empty());
    // The other topic and its offsets are untouched.
    assert_eq!(values(&read(&h, "kept", 0, 0, 10)), ["stays"]);
    assert_eq!(
        super::group::committed(&h.store, b"g", b"kept").expect("offsets"),
        [(0, 1)]
    );

    // The name is free again, and the new topic starts empty, without the old offsets.
    assert_eq!(h.apply(cmd(10_004, recreate)), Response::TopicCreated { created: true });
    let fresh = read(&h, "t", 0, 0, 10);
    assert_eq!((fresh.log_start, fresh.high_watermark), (0, 0));
    assert!(super::group::committed(&h.store, b"g", b"t")
        .expect("offsets")
        .is_empty());
    // The idempotent producer's state went too: sequence 0 appends again instead of being a retry.
    let mut again = record("k", "new");
    again.sequence = Some(0);
    let landed = produced(produce(&mut h, 10_005, "t", vec![again], Some(7)));
    assert!(!landed[0].duplicate, "{landed:?}");
}

#[test]
fn topic_deletions_take_turns_and_each_goes_on_where_it_stopped() {
    let mut h = Harness::new();
    let batches = crate::limits::TOPIC_DELETE_ROWS_MAX as u64 + 300;
    for topic in ["a", "b"] {
        create(&mut h, topic, 1);
        for n in 0..batches {
            produce(&mut h, n, topic, vec![to(0, "v")], None);
        }
        assert_eq!(
            delete(&mut h, batches, topic),
            Response::TopicDeleted { finished: false }
        );
    }
    let (a, b) = (rows_of(&h, "a"), rows_of(&h, "b"));
    assert!(a > 200 && b > 200, "{a} {b}");
    let go_on = |h: &mut Harness, limit: u32| {
        let starts = super::tests::ScanStarts {
            inner: &h.store,
            table: Table::StreamBatch,
            starts: Default::default(),
        };
        let mut writes = WriteSet::default();
        let mut view = View {
            base: &starts,
            writes: &mut writes,
        };
        assert_eq!(
            super::stream::continue_deletions(&mut view, limit).expect("continue"),
            limit
        );
        let starts = starts.starts.into_inner();
        h.store.commit(&writes);
        starts
    };
    // "a" until the budget is spent, then "b", then "a" again from where it stopped: no scan
    // starts at the topic's first key, where the removed rows were.
    go_on(&mut h, 100);
    assert_eq!((rows_of(&h, "a"), rows_of(&h, "b")), (a - 100, b));
    go_on(&mut h, 100);
    assert_eq!((rows_of(&h, "a"), rows_of(&h, "b")), (a - 100, b - 100));
    let starts = go_on(&mut h, 100);
    assert_eq!((rows_of(&h, "a"), rows_of(&h, "b")), (a - 200, b - 100));
    let prefix = named(b"a");
    assert!(!starts.is_empty());
    assert!(
        starts.iter().all(|s| s.starts_with(&prefix) && s.len() > prefix.len()),
        "{starts:?}"
    );
}

#[test]
fn a_retention_entry_of_limit_zero_goes_on_with_deletions_only() {
    // The leader's follow-up entries within a tick: deletions, without walking every partition.
    let mut h = Harness::new();
    create(&mut h, "gone", 1);
    let batches = crate::limits::TOPIC_DELETE_ROWS_MAX as u64 + 10;
    for n in 0..batches {
        produce(&mut h, n, "gone", vec![to(0, "v")], None);
    }
    h.apply(cmd(
        batches,
        Op::Stream(StreamOp::CreateTopic {
            topic: "aged".into(),
            config: aged_config(),
        }),
    ));
    produce(&mut h, batches, "aged", vec![to(0, "old")], None);
    let later = batches + 5_000;
    produce(&mut h, later, "aged", vec![to(0, "new")], None);
    assert_eq!(
        delete(&mut h, later, "gone"),
        Response::TopicDeleted { finished: false }
    );
    let follow_up = super::sweep::follow_up(&Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX }));
    assert_eq!(follow_up, Op::Stream(StreamOp::Retention { limit: 0 }));
    assert!(super::sweep::more_due(&h.store, &follow_up).expect("more"));
    h.apply(cmd(later + 1, follow_up.clone()));
    assert_eq!(rows_of(&h, "gone"), 0);
    assert!(!super::sweep::more_due(&h.store, &follow_up).expect("more"));
    assert_eq!(
        read(&h, "aged", 0, 0, 10).log_start,
        0,
        "retention waits for a full entry"
    );
    h.apply(cmd(
        later + 2,
        Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX }),
    ));
    assert_eq!(read(&h, "aged", 0, 1, 10).log_start, 1);
}

#[test]
fn a_topic_deletion_saved_before_the_row_cursor_goes_on_from_the_first_row_left() {
    #[derive(serde::Serialize)]
    struct WithoutCursor {
        config: TopicConfig,
        offsets_after: Option<Vec<u8>>,
    }
    let config = TopicConfig {
        partitions: 2,
        retention_ms: None,
        retention_bytes: None,
        mirror: true,
    };
    let old = basalt_codec::encode(&WithoutCursor {
        config: config.clone(),
        offsets_after: Some(b"g".to_vec()),
    });
    let deletion = super::stream::TopicDeletion::decode(b"\x01t", &old).expect("decode");
    assert_eq!(deletion.config, config);
    // Neither shape: corruption, naming the table.
    assert!(matches!(
        super::stream::TopicDeletion::decode(b"\x01t", &[0xff, 0xff]),
        Err(crate::state::StoreError::CorruptRecord {
            table: Table::StreamTopicDeleting,
            ..
        })
    ));
}

#[test]
fn a_small_topic_is_deleted_in_one_entry_and_bad_deletes_are_refused() {
    let mut h = Harness::new();
    create(&mut h, "small", 3);
    produce(&mut h, 1, "small", vec![to(0, "a"), to(2, "b")], None);
    assert_eq!(delete(&mut h, 2, "small"), Response::TopicDeleted { finished: true });
    assert_eq!(rows_of(&h, "small"), 0);
    assert!(!stream::retention_due(&h.store, 3).expect("due"));
    create(&mut h, "small", 1);
    assert!(matches!(
        delete(&mut h, 4, "never"),
        Response::Refused(OpError::NotFound { .. })
    ));
    assert!(matches!(
        delete(&mut h, 4, ""),
        Response::Refused(OpError::Empty { .. })
    ));
}

#[test]
fn topics_are_listed_in_pages() {
    let mut h = Harness::new();
    for name in ["b", "a", "cc", "d"] {
        create(&mut h, name, 1);
    }
    let (first, more) = list_topics(&h.store, b"", 3).expect("list");
    let names: Vec<&[u8]> = first.iter().map(|(n, _)| n.as_slice()).collect();
    // Shorter names first (names are stored behind their length), then in byte order.
    assert_eq!(names, [b"a".as_slice(), b"b", b"d"]);
    assert!(more);
    let (rest, more) = list_topics(&h.store, b"d", 3).expect("list");
    assert_eq!(
        rest.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        [b"cc".to_vec()]
    );
    assert!(!more);
    assert_eq!(rest[0].1.partitions, 1);
}

/// The first offset stamped at or after `at_ms`, by reading the whole partition.
fn first_at_or_after(h: &Harness, topic: &str, at_ms: u64) -> Option<(u64, u64)> {
    let start = partition_state(&h.store, topic.as_bytes(), 0)
        .expect("store")
        .expect("partition");
    read(h, topic, 0, start.start_offset, u32::MAX)
        .records
        .iter()
        .find(|r| r.timestamp_ms >= at_ms)
        .map(|r| (r.offset, r.timestamp_ms))
}

#[test]
fn a_seek_by_time_finds_the_first_record_at_or_after_it() {
    let mut h = Harness::new();
    create(&mut h, "clicks", 1);
    for (at, count) in [(100, 3), (200, 1), (200, 2), (300, 4)] {
        produce(&mut h, at, "clicks", (0..count).map(|_| to(0, "c")).collect(), None);
    }
    let seek = |h: &Harness, at: u64| {
        offset_for_time(&h.store, b"clicks", 0, at)
            .expect("store")
            .expect("seek")
    };
    assert_eq!(seek(&h, 0), Some((0, 100)));
    assert_eq!(seek(&h, 100), Some((0, 100)));
    assert_eq!(seek(&h, 101), Some((3, 200)));
    assert_eq!(seek(&h, 250), Some((6, 300)));
    assert_eq!(seek(&h, 301), None);
    assert!(matches!(
        offset_for_time(&h.store, b"clicks", 1, 0).expect("store"),
        Err(OpError::OutOfRange { .. })
    ));
    assert!(matches!(
        offset_for_time(&h.store, b"nope", 0, 0).expect("store"),
        Err(OpError::NotFound { .. })
    ));
}

proptest! {
    #[test]
    fn a_seek_by_time_equals_a_scan_of_the_partition(
        batches in prop::collection::vec((0u64..5, 1usize..4), 1..40),
        queries in prop::collection::vec(0u64..250, 1..10),
        trimmed in 0usize..5,
    ) {
        let mut h = Harness::new();
        h.apply(cmd(0, Op::Stream(StreamOp::CreateTopic {
            topic: "t".into(),
            config: TopicConfig { partitions: 1, retention_ms: Some(1_000_000), retention_bytes: None, mirror: false },
        })));
        // Entry stamps never decrease along the log.
        let mut at = 0;
        for (step, count) in &batches {
            at += step;
            produce(&mut h, at, "t", (0..*count).map(|_| to(0, "x")).collect(), None);
        }
        // Retention removes whole batches from the front: the oldest `trimmed` stamps' batches.
        let mut stamps: Vec<u64> = Vec::new();
        let mut a = 0;
        for (step, _) in &batches { a += step; stamps.push(a); }
        if let Some(&cut) = stamps.get(trimmed.min(stamps.len() - 1)) {
            h.apply(cmd(cut + 1_000_000, Op::Stream(StreamOp::Retention { limit: trimmed as u32 })));
        }
        for q in queries {
            let got = offset_for_time(&h.store, b"t", 0, q).expect("store").expect("seek");
            prop_assert_eq!(got, first_at_or_after(&h, "t", q));
        }
    }
}
