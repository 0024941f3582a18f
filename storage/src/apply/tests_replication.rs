//! Cross-region merging at the apply level: regions are harnesses that ship their feeds to each
//! other by hand, in any order, any number of times.

use basalt_replication::{ShipBatch, Version};
use proptest::prelude::*;

use super::replication::{digest, feed_after, feed_first, source_state};
use super::tests::{cmd, counted, incr_op, put, Harness};
use super::*;
use crate::command::{CounterAction, CounterOp, CounterOutcome};
use crate::state::KvRecord;

/// Region `id` of three founding regions (us, eu, ap), homed in us.
pub(super) fn region(id: u16) -> Harness {
    Harness::in_region(&founded(id, 3))
}

/// The topology of region `this` among `count` founding regions, homed in region 1.
pub(super) fn founded(this: u16, count: u16) -> topology::RegionTopology {
    let names = ["us", "eu", "ap", "sa", "af"];
    topology::RegionTopology {
        this,
        home: 1,
        regions: (1..=count)
            .map(|id| {
                let member = topology::RegionMember {
                    name: names[usize::from(id - 1) % names.len()].to_string(),
                    endpoints: if id == this {
                        Vec::new()
                    } else {
                        vec![format!("127.0.0.1:{}", 7000 + id)]
                    },
                    escrow: Some(topology::EscrowShare {
                        parts: 1,
                        of: u32::from(count),
                    }),
                };
                (id, member)
            })
            .collect(),
        retired: Default::default(),
        changed_at: 0,
    }
}

fn delete(key: &str) -> Op {
    Op::Kv(KvOp::Delete {
        key: key.into(),
        expect: None,
    })
}

fn counter_value(h: &Harness, key: &str) -> i64 {
    h.store
        .get(Table::Counter, key.as_bytes())
        .expect("get")
        .and_then(|b| counter::decode_counter(&b))
        .unwrap_or(0)
}

/// `from`'s feed after `after`, as one batch, as the shipper reads it.
pub(super) fn batch(from: &Harness, source: u16, after: u64) -> ShipBatch {
    replication::next_batch(&from.store, source, after, usize::MAX, u64::MAX)
        .expect("feed")
        .expect("the feed holds what follows")
}

/// What the shipper sends a region `from`'s feed was trimmed past: the whole replicated state, in
/// chunks of a few effects each, so that the receiver sees a re-sync's chunks one by one.
pub(super) fn resync_batches(from: &Harness, source: u16) -> Vec<ShipBatch> {
    let mut batches = Vec::new();
    let limits = replication::ResyncChunkLimits {
        bytes: 1 << 20,
        effects: 2,
    };
    replication::resync_batches(&from.store, source, from.applier.region(), limits, |batch| {
        batches.push(batch);
        true
    })
    .expect("state")
    .expect("every chunk taken");
    batches
}

/// Ships `from`'s feed to `to` as the shipper would: from the feed when it still holds what `to`
/// is missing, by a full re-sync when it was trimmed past that.
pub(super) fn ship_or_resync(from: &Harness, source: u16, to: &mut Harness, at_ms: u64) -> Response {
    let after = source_state(&to.store, source).expect("state").applied_upto;
    if after < replication::feed_trimmed_upto(&from.store).expect("trimmed") {
        let mut last = Response::None;
        for batch in resync_batches(from, source) {
            last = to.apply(cmd(at_ms, Op::Region(RegionOp::MergeFeed { batch })));
        }
        return last;
    }
    to.apply(cmd(
        at_ms,
        Op::Region(RegionOp::MergeFeed {
            batch: batch(from, source, after),
        }),
    ))
}

/// Ships what region `from` (0-based) has to each of `targets`, at `at_ms`.
fn ship_to(regions: &mut [Harness], from: usize, targets: &[usize], at_ms: u64) {
    for &to in targets {
        let (src, dst) = pick(regions, from, to);
        ship(src, from as u16 + 1, dst, at_ms);
    }
}

/// Ships everything each region has to every other, as the shippers would, `rounds` times.
fn ship_all(regions: &mut [Harness], at_ms: u64, rounds: u64) {
    for round in 0..rounds {
        for from in 0..regions.len() {
            for to in 0..regions.len() {
                if from != to {
                    let (src, dst) = pick(regions, from, to);
                    ship_or_resync(src, from as u16 + 1, dst, at_ms + round);
                }
            }
        }
    }
}

/// The tombstone collection region `at` (0-based in `regions`) would propose: its leader knows
/// each other region's watermark of its feed, which the harness reads from their stores.
pub(super) fn gc_due(regions: &[Harness], at: usize) -> Option<Op> {
    let own = at as u16 + 1;
    let remotes: Vec<u16> = (1..=regions.len() as u16).filter(|r| *r != own).collect();
    let acknowledged = remotes.iter().map(|r| {
        Some(
            source_state(&regions[usize::from(*r) - 1].store, own)
                .expect("state")
                .applied_upto,
        )
    });
    let delivered = replication::delivered_below(&regions[at].store, acknowledged).expect("delivered");
    let role = regions[at].applier.region();
    replication::tombstone_gc_due(&regions[at].store, role, &remotes, delivered, 100).expect("due")
}

/// Ships everything `from` has that `to` has not merged yet; returns the response.
pub(super) fn ship(from: &Harness, source: u16, to: &mut Harness, at_ms: u64) -> Response {
    let after = source_state(&to.store, source).expect("state").applied_upto;
    to.apply(cmd(
        at_ms,
        Op::Region(RegionOp::MergeFeed {
            batch: batch(from, source, after),
        }),
    ))
}

fn value(h: &Harness, key: &str) -> Option<Vec<u8>> {
    h.kv(key).map(|r| r.value)
}

#[test]
fn a_lone_region_keeps_no_feed_and_no_tombstones() {
    let mut h = Harness::new();
    h.apply(cmd(1, put("a", "1")));
    h.apply(cmd(2, delete("a")));
    assert_eq!(feed_first(&h.store).expect("feed"), None);
    assert_eq!(kv::tombstone(&h.store, b"a").expect("get"), None);
    let refused = h.apply(cmd(
        3,
        Op::Region(RegionOp::MergeFeed {
            batch: ShipBatch::heartbeat(2, 0),
        }),
    ));
    assert!(matches!(
        refused,
        Response::Refused(OpError::Region(RegionError::NotReplicating { source_region: 2 }))
    ));
}

#[test]
fn replicated_writes_go_into_the_feed_with_their_versions() {
    let mut us = region(1);
    us.apply(cmd(10, put("a", "1")));
    us.apply(cmd(11, incr_op("c", 5)));
    us.apply(cmd(12, delete("a")));
    us.apply(cmd(13, Op::Kv(KvOp::SweepExpired { limit: 10 })));
    let feed = feed_after(&us.store, 0, 100).expect("feed");
    assert_eq!(feed.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    let tomb = kv::tombstone(&us.store, b"a").expect("get").expect("a tombstone");
    assert!(tomb > Version::new(HlcStamp::from_parts(10, 0).0, 1));
    let own = us.apply(cmd(
        14,
        Op::Region(RegionOp::MergeFeed {
            batch: batch(&us, 1, 0),
        }),
    ));
    assert!(matches!(
        own,
        Response::Refused(OpError::Region(RegionError::OwnFeed { region: 1 }))
    ));
}

#[test]
fn concurrent_puts_converge_on_the_later_version() {
    let mut us = region(1);
    let mut eu = region(2);
    us.apply(cmd(100, put("k", "us")));
    eu.apply(cmd(200, put("k", "eu")));
    ship(&us, 1, &mut eu, 300);
    ship(&eu, 2, &mut us, 300);
    assert_eq!(value(&us, "k"), Some(b"eu".to_vec()));
    assert_eq!(value(&eu, "k"), Some(b"eu".to_vec()));
    assert_eq!(digest(&us.store).expect("d"), digest(&eu.store).expect("d"));
}

#[test]
fn equal_stamps_are_decided_by_region() {
    let mut us = region(1);
    let mut eu = region(2);
    us.apply(cmd(100, put("k", "us")));
    eu.apply(cmd(100, put("k", "eu")));
    ship(&eu, 2, &mut us, 300);
    ship(&us, 1, &mut eu, 300);
    assert_eq!(value(&us, "k"), Some(b"eu".to_vec()));
    assert_eq!(value(&eu, "k"), Some(b"eu".to_vec()));
}

#[test]
fn a_delete_beats_an_older_put_that_arrives_after_it() {
    let mut us = region(1);
    let mut eu = region(2);
    eu.apply(cmd(100, put("k", "old")));
    us.apply(cmd(200, delete("k")));
    // us never had the key: its delete still wins over eu's older put.
    ship(&eu, 2, &mut us, 300);
    ship(&us, 1, &mut eu, 300);
    assert_eq!(value(&us, "k"), None);
    assert_eq!(value(&eu, "k"), None);
    // A later put wins over the tombstone everywhere.
    eu.apply(cmd(400, put("k", "new")));
    ship(&eu, 2, &mut us, 500);
    assert_eq!(value(&us, "k"), Some(b"new".to_vec()));
    assert_eq!(kv::tombstone(&us.store, b"k").expect("get"), None);
}

#[test]
fn a_batch_merged_twice_changes_nothing_the_second_time() {
    let mut us = region(1);
    let mut eu = region(2);
    us.apply(cmd(1, incr_op("c", 5)));
    us.apply(cmd(2, put("k", "v")));
    let b = batch(&us, 1, 0);
    assert_eq!(
        eu.apply(cmd(3, Op::Region(RegionOp::MergeFeed { batch: b.clone() }))),
        Response::ReplApplied { upto: 2, merged: 2 }
    );
    let before = digest(&eu.store).expect("digest");
    let history_before = eu.store.scan(Table::KvHistory, &KeyRange::all(), 100).expect("scan");
    assert_eq!(
        eu.apply(cmd(4, Op::Region(RegionOp::MergeFeed { batch: b.clone() }))),
        Response::ReplApplied { upto: 2, merged: 0 }
    );
    // Even as a re-sync chunk (merged whatever the watermark), it changes no value.
    eu.apply(cmd(
        5,
        Op::Region(RegionOp::MergeFeed {
            batch: ShipBatch { resync: true, ..b },
        }),
    ));
    assert_eq!(digest(&eu.store).expect("digest"), before);
    assert_eq!(counter_value(&eu, "c"), 5);
    assert_eq!(history_before.len(), 1);
}

#[test]
fn counters_sum_every_regions_changes_including_sets() {
    let mut regions: Vec<Harness> = (1..=3).map(region).collect();
    regions[0].apply(cmd(1, incr_op("c", 10)));
    regions[1].apply(cmd(1, incr_op("c", -3)));
    assert_eq!(regions[2].apply(cmd(1, incr_op("c", 7))), counted(7));
    for round in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    let (src, dst) = pick(&mut regions, from, to);
                    ship(src, from as u16 + 1, dst, 10 + round);
                }
            }
        }
    }
    for r in &regions {
        assert_eq!(counter_value(r, "c"), 14);
    }
    // A set is the change that reaches the value from what this region saw.
    regions[0].apply(cmd(
        20,
        Op::Counter {
            ops: vec![CounterOp {
                key: b"c".to_vec(),
                action: CounterAction::Set { value: 0 },
            }],
        },
    ));
    regions[1].apply(cmd(20, incr_op("c", 1)));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, 30);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, 30);
    assert_eq!(counter_value(&regions[0], "c"), 1);
    assert_eq!(counter_value(&regions[1], "c"), 1);
}

/// Two distinct harnesses borrowed at once.
pub(super) fn pick(regions: &mut [Harness], from: usize, to: usize) -> (&Harness, &mut Harness) {
    assert_ne!(from, to);
    if from < to {
        let (a, b) = regions.split_at_mut(to);
        (&a[from], &mut b[0])
    } else {
        let (a, b) = regions.split_at_mut(from);
        (&b[0], &mut a[to])
    }
}

#[test]
fn a_write_made_after_seeing_a_remote_one_wins_even_with_a_clock_behind() {
    // eu's clock is 5 s ahead of us's.
    let mut us = region(1);
    let mut eu = region(2);
    eu.apply(cmd(105_000, put("k", "eu-first")));
    ship(&eu, 2, &mut us, 100_000);
    assert_eq!(value(&us, "k"), Some(b"eu-first".to_vec()));
    // us now writes with its own (behind) wall clock: the write follows what it has seen.
    us.apply(cmd(100_001, put("k", "us-after")));
    assert!(us.last_stamp() >= HlcStamp::from_parts(105_000, 0));
    ship(&us, 1, &mut eu, 105_001);
    assert_eq!(value(&eu, "k"), Some(b"us-after".to_vec()));
    assert_eq!(value(&us, "k"), Some(b"us-after".to_vec()));
}

#[test]
fn an_expiry_does_not_override_a_newer_write_from_another_region() {
    let mut us = region(1);
    let mut eu = region(2);
    us.apply(cmd(
        100,
        Op::Kv(KvOp::Put {
            key: "k".into(),
            value: "short".into(),
            ttl_ms: Some(50),
            expect: None,
        }),
    ));
    ship(&us, 1, &mut eu, 110);
    // eu writes a fresh value after the TTL; us has not heard of it when it sweeps.
    eu.apply(cmd(160, put("k", "fresh")));
    assert_eq!(
        us.apply(cmd(200, Op::Kv(KvOp::SweepExpired { limit: 10 }))),
        Response::Swept { removed: 1 }
    );
    assert_eq!(
        eu.apply(cmd(200, Op::Kv(KvOp::SweepExpired { limit: 10 }))),
        Response::Swept { removed: 0 }
    );
    ship(&eu, 2, &mut us, 210);
    ship(&us, 1, &mut eu, 210);
    assert_eq!(value(&us, "k"), Some(b"fresh".to_vec()));
    assert_eq!(value(&eu, "k"), Some(b"fresh".to_vec()));
}

#[test]
fn remote_writes_appear_in_the_watch_history() {
    let mut us = region(1);
    let mut eu = region(2);
    let events = |h: &Harness| -> Vec<crate::state::KvEvent> {
        h.store
            .scan(Table::KvHistory, &KeyRange::all(), 10)
            .expect("scan")
            .iter()
            .flat_map(|(k, v)| kv::history_events(k, v).expect("events"))
            .map(|(_, event)| event)
            .collect()
    };
    us.apply(cmd(1, put("k", "v")));
    ship(&us, 1, &mut eu, 2);
    us.apply(cmd(3, delete("k")));
    ship(&us, 1, &mut eu, 4);
    let seen = events(&eu);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(matches!(&seen[0], crate::state::KvEvent::Put { value, .. } if value == b"v"));
    assert!(matches!(seen[1], crate::state::KvEvent::Delete));
    // Changes of one key merged in one batch are one revision here: watchers see the net change.
    us.apply(cmd(5, put("k", "again")));
    us.apply(cmd(6, delete("k")));
    ship(&us, 1, &mut eu, 7);
    assert_eq!(events(&eu).len(), 3);
}

#[test]
fn trim_forgets_only_what_is_at_or_below_the_watermark() {
    let mut us = region(1);
    for i in 0..5 {
        us.apply(cmd(i, incr_op("c", 1)));
    }
    us.apply(cmd(10, Op::Region(RegionOp::TrimFeed { upto: 3, limit: 100 })));
    assert_eq!(feed_first(&us.store).expect("first"), Some(4));
    assert_eq!(feed_after(&us.store, 0, 10).expect("feed").len(), 2);
    assert_eq!(replication::feed_trimmed_upto(&us.store).expect("trimmed"), 3);
    // A limit that stops early records only what it removed.
    us.apply(cmd(11, Op::Region(RegionOp::TrimFeed { upto: 100, limit: 1 })));
    assert_eq!(replication::feed_trimmed_upto(&us.store).expect("trimmed"), 4);
    assert_eq!(feed_first(&us.store).expect("first"), Some(5));
}

#[test]
fn tombstones_are_collected_once_every_other_region_has_shipped_past_them() {
    let mut us = region(1);
    let mut eu = region(2);
    let mut ap = region(3);
    us.apply(cmd(100, put("k", "v")));
    us.apply(cmd(110, delete("k")));
    let tomb = kv::tombstone(&us.store, b"k").expect("get").expect("tombstone");
    let role = us.applier.region();
    // Delivery of us's own feed is taken as done here; the tests below cover it.
    let all_delivered = Some(u64::MAX);
    assert_eq!(
        replication::tombstone_horizon(&us.store, role, &[2, 3]).expect("horizon"),
        None
    );
    // eu has shipped, ap not yet: nothing may be collected.
    eu.apply(cmd(200, incr_op("c", 1)));
    ship(&eu, 2, &mut us, 210);
    assert_eq!(
        replication::tombstone_gc_due(&us.store, role, &[2, 3], all_delivered, 100).expect("due"),
        None
    );
    // An ap batch cut before the delete does not allow it either.
    ap.apply(cmd(105, incr_op("c", 1)));
    ship(&ap, 3, &mut us, 211);
    assert!(replication::tombstone_horizon(&us.store, role, &[2, 3]).expect("horizon") <= Some(tomb.stamp));
    assert_eq!(
        replication::tombstone_gc_due(&us.store, role, &[2, 3], all_delivered, 100).expect("due"),
        None
    );
    // Once ap's frontier is past the tombstone, it goes.
    ap.apply(cmd(300, incr_op("c", 1)));
    ship(&ap, 3, &mut us, 310);
    let gc = replication::tombstone_gc_due(&us.store, role, &[2, 3], all_delivered, 100)
        .expect("due")
        .expect("collectable");
    assert_eq!(us.apply(cmd(320, gc)), Response::Swept { removed: 1 });
    assert_eq!(kv::tombstone(&us.store, b"k").expect("get"), None);
    assert!(us
        .store
        .scan(Table::KvTombstoneByStamp, &KeyRange::all(), 10)
        .expect("scan")
        .is_empty());
    // A later write still lands, and wins everywhere.
    eu.apply(cmd(400, put("k", "new")));
    ship(&eu, 2, &mut us, 410);
    assert_eq!(value(&us, "k"), Some(b"new".to_vec()));
}

#[test]
fn a_source_row_of_a_region_not_configured_does_not_count_toward_the_horizon() {
    let mut us = region(1);
    let mut stale = region(9);
    us.apply(cmd(100, put("k", "v")));
    us.apply(cmd(110, delete("k")));
    // A region that was once configured (id 9) shipped past the tombstone; ap (3), a configured
    // remote, never shipped at all.
    let mut eu = region(2);
    eu.apply(cmd(300, incr_op("c", 1)));
    ship(&eu, 2, &mut us, 310);
    stale.apply(cmd(300, incr_op("c", 1)));
    ship(&stale, 9, &mut us, 311);
    let role = us.applier.region();
    assert_eq!(
        replication::tombstone_horizon(&us.store, role, &[2, 3]).expect("horizon"),
        None
    );
    assert_eq!(
        replication::tombstone_gc_due(&us.store, role, &[2, 3], Some(u64::MAX), 100).expect("due"),
        None
    );
}

/// Issue 15, part 1: the frontier a region ships must bound the stamps of writes it has not
/// applied yet. us proposes a put stamped before eu's delete, and ships a frontier before the put
/// applies; if that frontier were us's clock reading (after the delete), ap would collect the
/// tombstone, then store the late put that every other region deletes.
#[test]
fn a_shipped_frontier_bounds_writes_proposed_but_not_yet_applied() {
    let mut regions: Vec<Harness> = (1..=3).map(region).collect();
    let (us, eu, ap) = (0, 1, 2);
    regions[us].apply(cmd(100, put("k", "v")));
    ship_to(&mut regions, us, &[eu, ap], 101);
    regions[eu].apply(cmd(200, delete("k")));
    let deleted_at = kv::tombstone(&regions[eu].store, b"k")
        .expect("get")
        .expect("tombstone");
    regions[eu].apply(cmd(300, incr_op("c", 1)));
    ship_to(&mut regions, eu, &[ap], 301);
    // us has a put stamped 150 on its way through Raft (proposed, not applied) when its shipper
    // reads the feed: the frontier it ships must not pass 150.
    let late_put = cmd(150, put("k", "late"));
    let heartbeat = replication::next_batch(&regions[us].store, 1, 1, 512, 1 << 20)
        .expect("batch")
        .expect("not trimmed");
    assert!(heartbeat.entries.is_empty());
    assert!(
        heartbeat.frontier <= late_put.stamp.0,
        "frontier {} runs ahead of a write still to apply at {}",
        heartbeat.frontier,
        late_put.stamp.0
    );
    regions[ap].apply(cmd(302, Op::Region(RegionOp::MergeFeed { batch: heartbeat })));
    // ap may not collect eu's tombstone: us's frontier is below it.
    if let Some(op) = gc_due(&regions, ap) {
        let below = match op {
            Op::Kv(KvOp::TombstoneGc { below, .. }) => below,
            ref other => panic!("unexpected {other:?}"),
        };
        assert!(
            below <= deleted_at.stamp,
            "ap collects below {below}, past the tombstone at {}",
            deleted_at.stamp
        );
        regions[ap].apply(cmd(303, op));
    }
    assert!(kv::tombstone(&regions[ap].store, b"k").expect("get").is_some());
    // The put applies at us, and every region ships everything to every other.
    regions[us].apply(late_put);
    ship_all(&mut regions, 400, 2);
    for r in &regions {
        assert_eq!(value(r, "k"), None, "k came back in region {}", r.applier.region().id);
    }
    assert_eq!(
        digest(&regions[us].store).expect("d"),
        digest(&regions[ap].store).expect("d")
    );
}

/// Issue 15, part 2: a region the feed was trimmed past (a one-way cut) is re-synced from live
/// records and surviving tombstones, so a tombstone of ours must live until every region has it,
/// however far every region's frontier has moved.
#[test]
fn a_delete_reaches_a_region_that_is_re_synced_after_the_feed_was_trimmed_past_it() {
    let mut regions: Vec<Harness> = (1..=3).map(region).collect();
    let (us, eu, ap) = (0, 1, 2);
    regions[us].apply(cmd(100, put("k", "v")));
    ship_to(&mut regions, us, &[eu, ap], 101);
    // us deletes k; the link us -> ap is cut, so only eu hears of it.
    regions[us].apply(cmd(200, delete("k")));
    ship_to(&mut regions, us, &[eu], 201);
    // eu and ap keep writing and shipping to us: their frontiers pass the tombstone.
    for (at, from) in [(300, eu), (301, ap)] {
        regions[from].apply(cmd(at, incr_op("c", 1)));
        let (src, dst) = pick(&mut regions, from, us);
        ship(src, from as u16 + 1, dst, at + 10);
    }
    // The tombstone stays: ap has not received it.
    assert_eq!(gc_due(&regions, us), None);
    // The feed is trimmed past ap (it fell behind the retention): ap will be re-synced. The
    // tombstone still stays, since ap's watermark is below what was trimmed.
    let newest = replication::resync_upto(&regions[us].store).expect("newest");
    regions[us].apply(cmd(
        400,
        Op::Region(RegionOp::TrimFeed {
            upto: newest,
            limit: 100,
        }),
    ));
    assert_eq!(gc_due(&regions, us), None);
    assert!(kv::tombstone(&regions[us].store, b"k").expect("get").is_some());
    // The cut heals: ap is re-synced, and the delete reaches it.
    let (src, dst) = pick(&mut regions, us, ap);
    ship_or_resync(src, 1, dst, 410);
    assert_eq!(value(&regions[ap], "k"), None);
    // Now every region has the tombstone, and it may go.
    let gc = gc_due(&regions, us).expect("collectable once ap has it");
    assert_eq!(regions[us].apply(cmd(420, gc)), Response::Swept { removed: 1 });
    for r in &regions {
        assert_eq!(value(r, "k"), None);
    }
    assert_eq!(
        digest(&regions[us].store).expect("d"),
        digest(&regions[ap].store).expect("d")
    );
}

/// A heartbeat's frontier must not pass entries its receiver has not been sent: us has merged
/// eu's delete (its applied stamp is past it), but its own older put of the key is still on its
/// way to eu. Were the heartbeat's frontier us's applied stamp, eu would collect the tombstone,
/// and the put would then bring the key back in eu alone.
#[test]
fn a_heartbeat_frontier_waits_for_entries_not_yet_shipped() {
    let mut regions: Vec<Harness> = (1..=3).map(region).collect();
    let (us, eu, ap) = (0, 1, 2);
    regions[ap].apply(cmd(50, put("k", "ap")));
    ship_to(&mut regions, ap, &[us, eu], 51);
    // us writes k at 100; the link us -> eu is slow: eu has not received it.
    regions[us].apply(cmd(100, put("k", "us")));
    regions[eu].apply(cmd(200, delete("k")));
    let deleted_at = kv::tombstone(&regions[eu].store, b"k")
        .expect("get")
        .expect("tombstone");
    ship_to(&mut regions, eu, &[us, ap], 210);
    assert!(regions[us].last_stamp().0 > deleted_at.stamp);
    regions[ap].apply(cmd(300, incr_op("c", 1)));
    ship_to(&mut regions, ap, &[eu], 301);
    // us heartbeats eu, which has merged nothing of us yet.
    let heartbeat = replication::heartbeat_after(&regions[us].store, 1, 0).expect("heartbeat");
    assert!(
        heartbeat.frontier <= HlcStamp::from_parts(100, 0).0,
        "{}",
        heartbeat.frontier
    );
    regions[eu].apply(cmd(302, Op::Region(RegionOp::MergeFeed { batch: heartbeat })));
    assert_eq!(gc_due(&regions, eu), None, "eu may not collect the tombstone yet");
    // The put arrives, and loses to the delete everywhere.
    ship_all(&mut regions, 400, 2);
    for r in &regions {
        assert_eq!(value(r, "k"), None, "k came back in region {}", r.applier.region().id);
    }
}

/// A re-sync sends the source's whole state, old writes included. The receiver skips the KV
/// writes it merged before the gap (stamped below the frontier it had): eu may since have
/// collected the tombstone of a later delete from ap, which us has not heard of yet, and merging
/// us's old write again would bring the key back in eu alone.
#[test]
fn a_re_sync_does_not_bring_back_what_a_collected_tombstone_deleted() {
    let mut regions: Vec<Harness> = (1..=3).map(region).collect();
    let (us, eu, ap) = (0, 1, 2);
    regions[us].apply(cmd(100, put("k", "us")));
    ship_to(&mut regions, us, &[eu, ap], 101);
    // ap deletes k; the link ap -> us is cut, so only eu hears of it.
    regions[ap].apply(cmd(200, delete("k")));
    ship_to(&mut regions, ap, &[eu], 201);
    // us and ap move on; eu's horizon passes the tombstone, and eu collects it.
    regions[us].apply(cmd(300, incr_op("c", 1)));
    ship_to(&mut regions, us, &[eu], 301);
    regions[ap].apply(cmd(310, incr_op("c", 1)));
    ship_to(&mut regions, ap, &[eu], 311);
    ship_to(&mut regions, eu, &[us, ap], 312);
    let gc = gc_due(&regions, eu).expect("eu collects ap's tombstone");
    regions[eu].apply(cmd(320, gc));
    assert_eq!(kv::tombstone(&regions[eu].store, b"k").expect("get"), None);
    assert_eq!(value(&regions[eu], "k"), None);
    // us writes on, then forgets its feed past eu: eu is re-synced from us's state, which still
    // holds k (ap's delete has not reached us).
    regions[us].apply(cmd(400, incr_op("c", 1)));
    let newest = replication::resync_upto(&regions[us].store).expect("newest");
    regions[us].apply(cmd(
        401,
        Op::Region(RegionOp::TrimFeed {
            upto: newest,
            limit: 100,
        }),
    ));
    let (src, dst) = pick(&mut regions, us, eu);
    ship_or_resync(src, 1, dst, 410);
    assert_eq!(value(&regions[eu], "k"), None, "the re-sync brought k back in eu");
    assert_eq!(counter_value(&regions[eu], "c"), 3);
    // The cut heals: us hears of the delete, and every region agrees.
    ship_all(&mut regions, 500, 2);
    for r in &regions {
        assert_eq!(value(r, "k"), None, "k came back in region {}", r.applier.region().id);
    }
    assert_eq!(
        digest(&regions[us].store).expect("d"),
        digest(&regions[eu].store).expect("d")
    );
}

#[test]
fn nothing_is_delivered_while_a_watermark_is_unknown() {
    let mut us = region(1);
    us.apply(cmd(100, put("k", "v")));
    assert_eq!(
        replication::delivered_below(&us.store, [Some(1), None]).expect("d"),
        None
    );
    // Everything acknowledged: the bound is the last applied stamp.
    assert_eq!(
        replication::delivered_below(&us.store, [Some(1), Some(1)]).expect("d"),
        Some(us.last_stamp().0)
    );
    // The first undelivered entry bounds it.
    us.apply(cmd(200, delete("k")));
    assert_eq!(
        replication::delivered_below(&us.store, [Some(2), Some(1)]).expect("d"),
        Some(HlcStamp::from_parts(200, 0).0)
    );
}

#[test]
fn a_batch_cut_short_promises_only_the_stamp_of_the_first_entry_left_out() {
    let mut us = region(1);
    for (i, at) in [100, 200, 300].into_iter().enumerate() {
        us.apply(cmd(at, incr_op(format!("c{i}"), 1)));
    }
    let cut = replication::next_batch(&us.store, 1, 0, 1, u64::MAX)
        .expect("batch")
        .expect("not trimmed");
    assert_eq!(cut.entries.len(), 1);
    assert_eq!(cut.upto, 1);
    assert_eq!(cut.frontier, HlcStamp::from_parts(200, 0).0);
    let whole = replication::next_batch(&us.store, 1, 0, 10, u64::MAX)
        .expect("batch")
        .expect("not trimmed");
    assert_eq!(whole.upto, 3);
    assert_eq!(whole.frontier, us.last_stamp().0);
    // A byte limit cuts too, but never below one entry.
    let tiny = replication::next_batch(&us.store, 1, 0, 10, 1)
        .expect("batch")
        .expect("not trimmed");
    assert_eq!(tiny.entries.len(), 1);
    assert_eq!(tiny.frontier, HlcStamp::from_parts(200, 0).0);
    // Past a trim, the feed no longer says what follows: nothing is shipped, nothing promised.
    us.apply(cmd(400, Op::Region(RegionOp::TrimFeed { upto: 2, limit: 100 })));
    assert_eq!(
        replication::next_batch(&us.store, 1, 1, 10, u64::MAX).expect("batch"),
        None
    );
    assert_eq!(
        replication::heartbeat_after(&us.store, 1, 1)
            .expect("heartbeat")
            .frontier,
        0
    );
    assert!(replication::next_batch(&us.store, 1, 2, 10, u64::MAX)
        .expect("batch")
        .is_some());
}

#[derive(Clone, Debug)]
enum Action {
    Put {
        region: usize,
        key: u8,
        value: u8,
    },
    Delete {
        region: usize,
        key: u8,
    },
    Incr {
        region: usize,
        key: u8,
        delta: i8,
    },
    Ship {
        from: usize,
        to: usize,
        duplicate: bool,
    },
    Tick {
        region: usize,
        ms: u8,
    },
    CollectTombstones {
        region: usize,
    },
    /// The region forgets its whole feed, as when other regions fall behind its retention: they
    /// are re-synced from then on.
    TrimFeed {
        region: usize,
    },
    /// An empty batch from `from` to `to`, carrying only a frontier, as the shipper sends it.
    Heartbeat {
        from: usize,
        to: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0usize..3, 0u8..3, any::<u8>()).prop_map(|(region, key, value)| Action::Put { region, key, value }),
        (0usize..3, 0u8..3).prop_map(|(region, key)| Action::Delete { region, key }),
        (0usize..3, 0u8..2, any::<i8>()).prop_map(|(region, key, delta)| Action::Incr { region, key, delta }),
        (0usize..3, 0usize..3, any::<bool>()).prop_map(|(from, to, duplicate)| Action::Ship { from, to, duplicate }),
        (0usize..3, 0u8..50).prop_map(|(region, ms)| Action::Tick { region, ms }),
        (0usize..3).prop_map(|region| Action::CollectTombstones { region }),
        (0usize..3).prop_map(|region| Action::TrimFeed { region }),
        (0usize..3, 0usize..3).prop_map(|(from, to)| Action::Heartbeat { from, to }),
    ]
}

proptest! {
    /// Whatever the writes, clocks and shipping order (with batches shipped again), whenever
    /// tombstones are collected and feeds trimmed (re-syncing the regions behind), once every region has shipped everything to every other, all
    /// regions hold the same data, and every counter is the sum of every increment made anywhere.
    #[test]
    fn regions_converge_whatever_the_order(actions in proptest::collection::vec(action(), 1..60)) {
        let mut regions: Vec<Harness> = (1..=3).map(region).collect();
        let mut clocks = [1_000u64, 1_000, 1_000];
        let mut sums = [0i64; 2];
        for a in &actions {
            match *a {
                Action::Put { region, key, value } => {
                    clocks[region] += 1;
                    regions[region].apply(cmd(clocks[region], put(&format!("k{key}"), &value.to_string())));
                }
                Action::Delete { region, key } => {
                    clocks[region] += 1;
                    regions[region].apply(cmd(clocks[region], delete(&format!("k{key}"))));
                }
                Action::Incr { region, key, delta } => {
                    clocks[region] += 1;
                    regions[region].apply(cmd(clocks[region], incr_op(format!("c{key}"), delta.into())));
                    sums[key as usize] += i64::from(delta);
                }
                Action::Ship { from, to, duplicate } if from != to => {
                    clocks[to] += 1;
                    let (src, dst) = pick(&mut regions, from, to);
                    let after = if duplicate { 0 } else { source_state(&dst.store, from as u16 + 1).expect("s").applied_upto };
                    if after < replication::feed_trimmed_upto(&src.store).expect("trimmed") {
                        ship_or_resync(src, from as u16 + 1, dst, clocks[to]);
                    } else {
                        dst.apply(cmd(clocks[to], Op::Region(RegionOp::MergeFeed { batch: batch(src, from as u16 + 1, after) })));
                    }
                }
                Action::Ship { .. } => {}
                Action::Tick { region, ms } => clocks[region] += u64::from(ms),
                Action::CollectTombstones { region } => {
                    if let Some(op) = gc_due(&regions, region) {
                        clocks[region] += 1;
                        regions[region].apply(cmd(clocks[region], op));
                    }
                }
                Action::Heartbeat { from, to } if from != to => {
                    clocks[to] += 1;
                    let (src, dst) = pick(&mut regions, from, to);
                    let after = source_state(&dst.store, from as u16 + 1).expect("s").applied_upto;
                    let batch = replication::heartbeat_after(&src.store, from as u16 + 1, after).expect("heartbeat");
                    dst.apply(cmd(clocks[to], Op::Region(RegionOp::MergeFeed { batch })));
                }
                Action::Heartbeat { .. } => {}
                Action::TrimFeed { region } => {
                    clocks[region] += 1;
                    let upto = replication::resync_upto(&regions[region].store).expect("newest");
                    regions[region].apply(cmd(clocks[region], Op::Region(RegionOp::TrimFeed { upto, limit: u32::MAX })));
                }
            }
        }
        for _ in 0..2 {
            for from in 0..3 {
                for (to, clock) in clocks.iter_mut().enumerate() {
                    if from != to {
                        *clock += 1;
                        let (src, dst) = pick(&mut regions, from, to);
                        ship_or_resync(src, from as u16 + 1, dst, *clock);
                    }
                }
            }
        }
        let digests: Vec<_> = regions.iter().map(|r| digest(&r.store).expect("digest")).collect();
        prop_assert_eq!(digests[0], digests[1]);
        prop_assert_eq!(digests[1], digests[2]);
        for r in &regions {
            prop_assert_eq!(counter_value(r, "c0"), sums[0]);
            prop_assert_eq!(counter_value(r, "c1"), sums[1]);
            for key in 0..3u8 {
                let k = format!("k{key}");
                let records: Vec<Option<KvRecord>> = regions.iter().map(|r| r.kv(&k)).collect();
                prop_assert_eq!(records[0].as_ref().map(|r| (&r.value, r.written)), records[1].as_ref().map(|r| (&r.value, r.written)));
            }
        }
    }
}

fn global_check(h: &mut Harness, at_ms: u64, key: &str, limit: u64, cost: u64) -> bool {
    let check = crate::command::RateCheck {
        key: key.into(),
        limit: crate::command::RateLimit::GlobalSlidingWindow {
            limit,
            window_ms: 60_000,
        },
        cost,
    };
    match h.apply(cmd(at_ms, Op::Rate(RateOp::Check { checks: vec![check] }))) {
        Response::RateDecisions(d) => d[0].allowed,
        other => panic!("expected decisions, got {other:?}"),
    }
}

fn admitted(h: &mut Harness, at_ms: u64, key: &str, limit: u64, tries: usize) -> usize {
    (0..tries).filter(|_| global_check(h, at_ms, key, limit, 1)).count()
}

#[test]
fn a_global_rate_limit_counts_what_every_region_admitted() {
    let mut us = region(1);
    let mut eu = region(2);
    assert_eq!(admitted(&mut us, 1_000, "api", 10, 6), 6);
    ship(&us, 1, &mut eu, 1_001);
    // eu sees us's 6 of 10: 4 more, then refusals (a region-local window would admit 10).
    assert_eq!(admitted(&mut eu, 1_002, "api", 10, 8), 4);
    ship(&eu, 2, &mut us, 1_003);
    assert_eq!(admitted(&mut us, 1_004, "api", 10, 3), 0, "us sees eu's 4 too");
    // Counts slide out with the window: two windows later both admit again.
    assert_eq!(admitted(&mut us, 121_000, "api", 10, 10), 10);
}

#[test]
fn partitioned_regions_each_admit_at_most_the_limit_and_agree_once_counts_arrive() {
    let mut us = region(1);
    let mut eu = region(2);
    // No shipping: each region sees only its own count (the documented bound: regions x limit).
    assert_eq!(admitted(&mut us, 1_000, "api", 5, 9), 5);
    assert_eq!(admitted(&mut eu, 1_000, "api", 5, 9), 5);
    // Shipping twice (duplicates) and in both directions: the counts merge, not add up twice.
    for _ in 0..2 {
        ship(&us, 1, &mut eu, 1_001);
        ship(&eu, 2, &mut us, 1_001);
    }
    for h in [&us, &eu] {
        let stored = h.store.get(Table::RateGlobal, b"api").expect("get").expect("stored");
        let counts: super::rate::StoredGlobal = basalt_codec::decode(&stored).expect("decode");
        assert_eq!(counts.counts.totals(60_000, 0), (0, 10));
    }
    assert_eq!(admitted(&mut eu, 1_002, "api", 5, 3), 0);
}

#[test]
fn a_global_key_is_forgotten_once_every_count_slid_out() {
    let mut us = region(1);
    let mut eu = region(2);
    admitted(&mut us, 1_000, "api", 5, 1);
    ship(&us, 1, &mut eu, 1_001);
    let later = 10 * 60_000;
    let due = sweeps_due(&eu.store, later, eu.applier.region()).expect("due");
    assert_eq!(due, vec![Op::Rate(RateOp::Sweep { limit: SWEEP_ITEMS_MAX })]);
    eu.apply(cmd(later, Op::Rate(RateOp::Sweep { limit: SWEEP_ITEMS_MAX })));
    assert_eq!(eu.store.get(Table::RateGlobal, b"api").expect("get"), None);
    assert!(sweeps_due(&eu.store, later, eu.applier.region())
        .expect("due")
        .is_empty());
}

#[test]
fn without_regions_a_global_window_decides_like_a_local_one() {
    let mut lone = Harness::new();
    let mut local = Harness::new();
    for (at, cost) in [(0, 3), (10_000, 4), (30_000, 5), (61_000, 2), (90_000, 6), (150_000, 1)] {
        let global = {
            let check = crate::command::RateCheck {
                key: "k".into(),
                limit: crate::command::RateLimit::GlobalSlidingWindow {
                    limit: 8,
                    window_ms: 60_000,
                },
                cost,
            };
            lone.apply(cmd(at, Op::Rate(RateOp::Check { checks: vec![check] })))
        };
        let sliding = {
            let check = crate::command::RateCheck {
                key: "k".into(),
                limit: crate::command::RateLimit::SlidingWindow {
                    limit: 8,
                    window_ms: 60_000,
                },
                cost,
            };
            local.apply(cmd(at, Op::Rate(RateOp::Check { checks: vec![check] })))
        };
        match (global, sliding) {
            (Response::RateDecisions(g), Response::RateDecisions(s)) => {
                assert_eq!(
                    (g[0].allowed, g[0].remaining),
                    (s[0].allowed, s[0].remaining),
                    "at {at}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

fn counter_op(h: &mut Harness, at_ms: u64, action: CounterAction) -> CounterOutcome {
    let op = Op::Counter {
        ops: vec![crate::command::CounterOp {
            key: "stock".into(),
            action,
        }],
    };
    match h.apply(cmd(at_ms, op)) {
        Response::Counters(o) => o[0],
        other => panic!("expected an outcome, got {other:?}"),
    }
}

fn take(amount: i64) -> CounterAction {
    CounterAction::Incr {
        delta: -amount,
        min: Some(0),
        max: None,
    }
}

fn give(to: u16, amount: u64) -> CounterAction {
    CounterAction::Transfer {
        to,
        amount,
        min: None,
        max: None,
    }
}

#[test]
fn a_region_takes_a_bounded_counter_down_only_as_far_as_its_escrow() {
    let mut us = region(1);
    let mut eu = region(2);
    counter_op(&mut us, 1, CounterAction::Set { value: 100 });
    ship(&us, 1, &mut eu, 2);
    assert_eq!(counter_value(&eu, "stock"), 100);
    // eu sees 100 in stock but has none of the escrow: us stocked it.
    assert_eq!(
        counter_op(&mut eu, 3, take(1)),
        CounterOutcome::EscrowExceeded { value: 100, balance: 0 }
    );
    assert_eq!(
        counter_op(&mut us, 4, give(2, 40)),
        CounterOutcome::Applied { value: 100 }
    );
    assert_eq!(
        counter_op(&mut us, 5, give(2, 61)),
        CounterOutcome::EscrowExceeded {
            value: 100,
            balance: 60
        },
        "us cannot give what it no longer has"
    );
    ship(&us, 1, &mut eu, 6);
    // Partitioned from here: each takes what its escrow covers, together never below 0.
    let taken_eu = (0..50)
        .filter(|_| matches!(counter_op(&mut eu, 7, take(1)), CounterOutcome::Applied { .. }))
        .count();
    let taken_us = (0..80)
        .filter(|_| matches!(counter_op(&mut us, 7, take(1)), CounterOutcome::Applied { .. }))
        .count();
    assert_eq!((taken_us, taken_eu), (60, 40));
    ship(&us, 1, &mut eu, 8);
    ship(&eu, 2, &mut us, 8);
    assert_eq!((counter_value(&us, "stock"), counter_value(&eu, "stock")), (0, 0));
    assert_eq!(digest(&us.store).expect("digest"), digest(&eu.store).expect("digest"));
    // Restocking anywhere gives that region escrow; taking away from the bound never needs it.
    assert_eq!(
        counter_op(
            &mut eu,
            9,
            CounterAction::Incr {
                delta: 5,
                min: Some(0),
                max: None
            }
        ),
        CounterOutcome::Applied { value: 5 }
    );
    assert_eq!(counter_op(&mut eu, 10, take(5)), CounterOutcome::Applied { value: 0 });
}

#[test]
fn escrow_is_refused_without_regions_and_to_oneself() {
    let mut lone = Harness::new();
    assert!(matches!(
        lone.apply(cmd(
            1,
            Op::Counter {
                ops: vec![crate::command::CounterOp {
                    key: "stock".into(),
                    action: give(2, 1)
                }]
            }
        )),
        Response::Refused(OpError::Counter(CounterError::InvalidTransfer { .. }))
    ));
    // Without regions, bounds are checked against the value alone.
    counter_op(&mut lone, 2, CounterAction::Set { value: 3 });
    assert_eq!(counter_op(&mut lone, 3, take(3)), CounterOutcome::Applied { value: 0 });
    let mut us = region(1);
    assert!(matches!(
        us.apply(cmd(
            4,
            Op::Counter {
                ops: vec![crate::command::CounterOp {
                    key: "stock".into(),
                    action: give(1, 1)
                }]
            }
        )),
        Response::Refused(OpError::Counter(CounterError::InvalidTransfer { .. }))
    ));
}

#[test]
fn partitioned_regions_fill_a_capacity_only_as_far_as_their_headroom() {
    let seat = |n: i64| CounterAction::Incr {
        delta: n,
        min: None,
        max: Some(10),
    };
    // Three regions (region() knows of two others): each may fill floor(10 / 3) = 3 seats.
    let mut us = region(1);
    let mut eu = region(2);
    let headroom = CounterAction::Transfer {
        to: 2,
        amount: 2,
        min: None,
        max: Some(10),
    };
    assert_eq!(counter_op(&mut us, 1, headroom), CounterOutcome::Applied { value: 0 });
    ship(&us, 1, &mut eu, 2);
    // Partitioned: us kept 1 seat of its 3, eu has 3 + 2.
    let filled_us = (0..10)
        .filter(|_| matches!(counter_op(&mut us, 3, seat(1)), CounterOutcome::Applied { .. }))
        .count();
    let filled_eu = (0..10)
        .filter(|_| matches!(counter_op(&mut eu, 3, seat(1)), CounterOutcome::Applied { .. }))
        .count();
    assert_eq!((filled_us, filled_eu), (1, 5));
    assert_eq!(
        counter_op(&mut eu, 4, seat(1)),
        CounterOutcome::EscrowExceeded { value: 5, balance: 3 },
        "the balance toward the ceiling counts the headroom received"
    );
    ship(&us, 1, &mut eu, 5);
    ship(&eu, 2, &mut us, 5);
    assert_eq!((counter_value(&us, "stock"), counter_value(&eu, "stock")), (6, 6));
    // Freeing a seat (away from the ceiling) never needs escrow, and makes room for the freer.
    assert_eq!(counter_op(&mut us, 6, seat(-1)), CounterOutcome::Applied { value: 5 });
    assert_eq!(counter_op(&mut us, 7, seat(1)), CounterOutcome::Applied { value: 6 });
}

#[derive(Clone, Debug)]
enum StockStep {
    Take {
        region: usize,
        amount: i64,
    },
    Restock {
        region: usize,
        amount: i64,
    },
    Give {
        region: usize,
        to: usize,
        amount: u64,
        ceiling: bool,
    },
    Ship {
        from: usize,
        to: usize,
    },
}

fn stock_step() -> impl Strategy<Value = StockStep> {
    prop_oneof![
        4 => (0usize..3, 1i64..15).prop_map(|(region, amount)| StockStep::Take { region, amount }),
        3 => (0usize..3, 1i64..15).prop_map(|(region, amount)| StockStep::Restock { region, amount }),
        2 => (0usize..3, 0usize..3, 1u64..30, any::<bool>())
            .prop_map(|(region, to, amount, ceiling)| StockStep::Give { region, to, amount, ceiling }),
        3 => (0usize..3, 0usize..3).prop_map(|(from, to)| StockStep::Ship { from, to }),
    ]
}

const STOCK_MAX: i64 = 60;

fn bounded(delta: i64) -> CounterAction {
    CounterAction::Incr {
        delta,
        min: Some(0),
        max: Some(STOCK_MAX),
    }
}

proptest! {
    /// Three regions take, restock and pass escrow of both bounds around while the feed reaches
    /// each other only now and then: however partitioned, once everything has crossed, the
    /// counter is within its bounds, and every region agrees on it.
    #[test]
    fn partitioned_regions_never_take_a_bounded_counter_past_its_bounds(
        steps in prop::collection::vec(stock_step(), 1..80),
    ) {
        let mut regions = vec![region(1), region(2), region(3)];
        for (i, step) in steps.into_iter().enumerate() {
            let at = 2 + i as u64;
            match step {
                StockStep::Take { region, amount } => { counter_op(&mut regions[region], at, bounded(-amount)); }
                StockStep::Restock { region, amount } => { counter_op(&mut regions[region], at, bounded(amount)); }
                StockStep::Give { region, to, amount, ceiling } if region != to => {
                    let action = CounterAction::Transfer {
                        to: to as u16 + 1,
                        amount,
                        min: None,
                        max: ceiling.then_some(STOCK_MAX),
                    };
                    counter_op(&mut regions[region], at, action);
                }
                StockStep::Ship { from, to } if from != to => {
                    let (source, target) = pick(&mut regions, from, to);
                    ship(source, from as u16 + 1, target, at);
                }
                _ => {}
            }
        }
        for from in 0..3 {
            for to in (0..3).filter(|t| *t != from) {
                let (source, target) = pick(&mut regions, from, to);
                ship(source, from as u16 + 1, target, 10_000);
            }
        }
        let values: Vec<i64> = regions.iter().map(|h| counter_value(h, "stock")).collect();
        prop_assert!((0..=STOCK_MAX).contains(&values[0]), "the regions together crossed a bound: {values:?}");
        prop_assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
        let digests: Vec<_> = regions.iter().map(|h| digest(&h.store).expect("digest")).collect();
        prop_assert!(digests.iter().all(|d| *d == digests[0]), "escrow converges too");
    }
}
