//! Mirror topics: a topic created with `mirror` is copied to every other region as the read-only
//! topic `topic@region`, records, bounds and retention included.

use super::stream::{fetch, topic_config};
use super::tests::{cmd, Harness};
use super::tests_replication::{region, ship};
use super::tests_stream::{produce, to};
use super::*;
use crate::stream::TopicConfig;

fn create(h: &mut Harness, topic: &str, config: TopicConfig) -> Response {
    h.apply(cmd(
        1,
        Op::Stream(StreamOp::CreateTopic {
            topic: topic.into(),
            config,
        }),
    ))
}

fn config(mirror: bool, retention_ms: Option<u64>) -> TopicConfig {
    TopicConfig {
        partitions: 2,
        retention_ms,
        retention_bytes: None,
        mirror,
    }
}

fn values(h: &Harness, topic: &str, partition: u32) -> Vec<String> {
    let start = stream::partition_state(&h.store, topic.as_bytes(), partition)
        .expect("read")
        .map_or(0, |p| p.start_offset);
    let fetched = fetch(&h.store, topic.as_bytes(), partition, start, 1000, u64::MAX)
        .expect("fetch")
        .unwrap_or_else(|e| panic!("fetch {topic}: {e}"));
    fetched
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.value).into_owned())
        .collect()
}

#[test]
fn a_mirrored_topic_is_readable_elsewhere_as_topic_at_region() {
    let mut us = region(1);
    let mut eu = region(2);
    assert!(matches!(
        create(&mut us, "orders", config(true, None)),
        Response::TopicCreated { created: true }
    ));
    create(&mut us, "audit", config(false, None));
    produce(
        &mut us,
        10,
        "orders",
        vec![to(0, "o-1"), to(1, "o-2"), to(0, "o-3")],
        None,
    );
    produce(&mut us, 11, "audit", vec![to(0, "a-1")], None);
    assert!(matches!(ship(&us, 1, &mut eu, 12), Response::ReplApplied { .. }));

    assert_eq!(values(&eu, "orders@us", 0), ["o-1", "o-3"]);
    assert_eq!(values(&eu, "orders@us", 1), ["o-2"]);
    assert_eq!(
        topic_config(&eu.store, b"orders@us")
            .expect("read")
            .map(|c| c.partitions),
        Ok(2)
    );
    // Not mirrored, not copied; and eu's own names are untouched.
    assert!(topic_config(&eu.store, b"audit@us").expect("read").is_err());
    assert!(topic_config(&eu.store, b"orders").expect("read").is_err());
    // A mirror is not mirrored back.
    assert!(matches!(ship(&eu, 2, &mut us, 13), Response::ReplApplied { .. }));
    assert!(topic_config(&us.store, b"orders@us@eu").expect("read").is_err());
}

#[test]
fn mirrors_are_read_only_and_names_with_at_are_reserved() {
    let mut us = region(1);
    let mut eu = region(2);
    create(&mut us, "orders", config(true, None));
    ship(&us, 1, &mut eu, 2);
    let refused = produce(&mut eu, 3, "orders@us", vec![to(0, "forged")], None);
    assert_eq!(
        refused,
        Response::Refused(OpError::Stream(StreamError::MirrorReadOnly {
            topic: "orders@us".into()
        }))
    );
    assert!(matches!(
        create(&mut eu, "mine@eu", config(false, None)),
        Response::Refused(OpError::Stream(StreamError::MirrorReadOnly { .. }))
    ));
    let long = "t".repeat(230);
    assert!(matches!(
        create(&mut us, &long, config(true, None)),
        Response::Refused(OpError::TooLarge { .. })
    ));
}

#[test]
fn the_sources_retention_reaches_the_mirror_which_never_sweeps_itself() {
    let mut us = region(1);
    let mut eu = region(2);
    create(&mut us, "clicks", config(true, Some(1_000)));
    produce(&mut us, 10, "clicks", vec![to(0, "old")], None);
    produce(&mut us, 5_000, "clicks", vec![to(0, "new")], None);
    ship(&us, 1, &mut eu, 5_001);
    assert_eq!(values(&eu, "clicks@us", 0), ["old", "new"]);
    // eu does not apply retention to a mirror on its own...
    assert!(!stream::retention_due(&eu.store, 5_500).expect("due"));
    // ...the source does, and its deletions arrive.
    assert!(stream::retention_due(&us.store, 5_500).expect("due"));
    us.apply(cmd(5_500, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    ship(&us, 1, &mut eu, 5_501);
    assert_eq!(values(&eu, "clicks@us", 0), ["new"]);
    assert_eq!(values(&eu, "clicks@us", 0), values(&us, "clicks", 0));
}

#[test]
fn the_sources_trim_reaches_the_mirror_which_may_not_be_trimmed_itself() {
    let mut us = region(1);
    let mut eu = region(2);
    create(&mut us, "clicks", config(true, None));
    produce(&mut us, 10, "clicks", vec![to(0, "a"), to(0, "b")], None);
    produce(&mut us, 20, "clicks", vec![to(0, "c")], None);
    ship(&us, 1, &mut eu, 21);
    assert_eq!(values(&eu, "clicks@us", 0), ["a", "b", "c"]);
    let trim = |topic: &str| {
        Op::Stream(StreamOp::Trim {
            topic: topic.into(),
            partition: 0,
            rule: crate::stream::TrimRule::MaxLen(1),
            newer_kept: 0,
            limit: None,
        })
    };
    assert!(matches!(
        eu.apply(cmd(22, trim("clicks@us"))),
        Response::Refused(OpError::Stream(StreamError::MirrorReadOnly { .. }))
    ));
    assert_eq!(us.apply(cmd(23, trim("clicks"))), Response::Trimmed { removed: 2 });
    ship(&us, 1, &mut eu, 24);
    assert_eq!(
        values(&eu, "clicks@us", 0),
        ["c"],
        "the moved log start reaches the mirror"
    );
    // The removal of the hidden batch, by the source's retention entry, too.
    us.apply(cmd(25, Op::Stream(StreamOp::Retention { limit: 0 })));
    ship(&us, 1, &mut eu, 26);
    let batches = |h: &Harness| {
        h.store
            .scan(Table::StreamBatch, &KeyRange::all(), usize::MAX)
            .expect("scan")
            .len()
    };
    assert_eq!((batches(&us), batches(&eu)), (1, 1));
    assert!(
        !stream::retention_due(&eu.store, 27).expect("due"),
        "no trim is pending in the mirror's region"
    );
}

#[test]
fn mirror_rows_must_be_stream_rows_under_a_mirror_name() {
    let mut eu = region(2);
    let forged = |table: &str, key: &[u8]| basalt_replication::ShipBatch {
        source: 1,
        entries: vec![basalt_replication::FeedEntry {
            index: 1,
            stamp: 1,
            effects: vec![basalt_replication::Effect::MirrorRow {
                table: table.into(),
                key: key.to_vec(),
                value: Some(b"x".to_vec()),
            }],
        }],
        upto: 1,
        frontier: 1,
        resync: false,
    };
    for (table, key) in [("stream_topic", named(b"orders")), ("kv", named(b"k@us"))] {
        let r = eu.apply(cmd(
            2,
            Op::Region(RegionOp::MergeFeed {
                batch: forged(table, &key),
            }),
        ));
        assert_eq!(
            r,
            Response::Refused(OpError::Region(RegionError::NotMirrorRow { table: table.into() }))
        );
    }
}

#[test]
fn deleting_a_mirrored_topic_removes_its_mirror_in_every_entry_of_the_deletion() {
    let mut us = region(1);
    let mut eu = region(2);
    create(&mut us, "orders", config(true, None));
    // More batches than one deletion entry removes, so the leader's retention entries finish it.
    let batches = crate::limits::TOPIC_DELETE_ROWS_MAX as u64 + 10;
    for n in 0..batches {
        produce(&mut us, 10 + n, "orders", vec![to((n % 2) as u32, "o")], None);
    }
    ship(&us, 1, &mut eu, 20_000);
    let mirrored = stream::partition_state(&eu.store, b"orders@us", 0)
        .expect("read")
        .expect("mirror");
    assert_eq!(mirrored.next_offset, batches / 2);
    let deleted = us.apply(cmd(
        20_001,
        Op::Stream(StreamOp::DeleteTopic { topic: "orders".into() }),
    ));
    assert_eq!(deleted, Response::TopicDeleted { finished: false });
    ship(&us, 1, &mut eu, 20_002);
    assert!(topic_config(&eu.store, b"orders@us").expect("read").is_err());
    while stream::retention_due(&us.store, 20_003).expect("due") {
        us.apply(cmd(20_003, Op::Stream(StreamOp::Retention { limit: SWEEP_ITEMS_MAX })));
    }
    ship(&us, 1, &mut eu, 20_004);
    for table in stream::MIRRORED_TABLES {
        let left = eu.store.scan(table, &KeyRange::all(), 1).expect("scan");
        assert!(left.is_empty(), "{table:?} still holds {left:?}");
    }
    // A mirror cannot be deleted by the region that holds it.
    assert!(matches!(
        eu.apply(cmd(
            20_005,
            Op::Stream(StreamOp::DeleteTopic {
                topic: "orders@us".into()
            })
        )),
        Response::Refused(OpError::Stream(StreamError::MirrorReadOnly { .. }))
    ));
}
