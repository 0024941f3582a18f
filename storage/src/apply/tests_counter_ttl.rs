//! Expiring counters (a plain counter created with a TTL) at the apply level: a fixed expiry,
//! reads and sweeps, refusals, and their merge across regions.

use super::counter::{read_counters, CounterRead};
use super::counter_window::incarnation_key;
use super::replication::digest;
use super::tests::{cmd, Harness};
use super::tests_counter_window::{counter, rows};
use super::tests_replication::{pick, region, ship};
use super::*;
use crate::command::{CounterAction, CounterError, CounterOp, CounterOutcome};

const MINUTE: u64 = 60_000;

fn expiring(delta: i64, ttl_ms: u64) -> CounterAction {
    CounterAction::IncrExpiring {
        delta,
        min: None,
        max: None,
        ttl_ms,
    }
}

fn incr(delta: i64) -> CounterAction {
    CounterAction::Incr {
        delta,
        min: None,
        max: None,
    }
}

fn apply(h: &mut Harness, now_ms: u64, key: &str, action: CounterAction) -> Response {
    let op = Op::Counter {
        ops: vec![CounterOp {
            key: key.into(),
            action,
        }],
    };
    h.apply(cmd(now_ms, op))
}

/// Asserts that every region reads counter `key` as `value`, expiring at `expires_at_ms`.
fn each_reads(regions: &[Harness], key: &str, value: i64, expires_at_ms: Option<u64>) {
    for (i, r) in regions.iter().enumerate() {
        assert_eq!(read(r, key), CounterRead { value, expires_at_ms }, "region {}", i + 1);
    }
}

/// Every region applies a clock tick at `at_ms` (so its reads judge expiry there).
fn tick_each(regions: &mut [Harness], at_ms: u64) {
    for r in regions {
        r.apply(cmd(at_ms, Op::ClockTick));
    }
}

fn read(h: &Harness, key: &str) -> CounterRead {
    read_counters(&h.store, &[key.as_bytes().to_vec()]).expect("read").0[0]
}

#[test]
fn an_expiring_counter_keeps_the_expiry_it_was_created_with_and_starts_again_after_it() {
    let mut h = Harness::new();
    let t0 = 100 * MINUTE;
    assert_eq!(
        counter(&mut h, t0, "fails/u1", expiring(1, 10 * MINUTE)),
        CounterOutcome::Applied { value: 1 }
    );
    // Later changes, with another TTL or none, count into it and do not move its expiry.
    counter(&mut h, t0 + MINUTE, "fails/u1", expiring(1, 60 * MINUTE));
    counter(&mut h, t0 + 2 * MINUTE, "fails/u1", incr(3));
    assert_eq!(
        counter(&mut h, t0 + 3 * MINUTE, "fails/u1", CounterAction::Set { value: 7 }),
        CounterOutcome::Applied { value: 7 }
    );
    assert_eq!(
        read(&h, "fails/u1"),
        CounterRead {
            value: 7,
            expires_at_ms: Some(t0 + 10 * MINUTE),
        }
    );
    assert_eq!(rows(&h, Table::Counter), 0, "no plain row");
    // At its expiry it reads 0, before any sweep.
    h.apply(cmd(t0 + 10 * MINUTE, Op::ClockTick));
    assert_eq!(
        read(&h, "fails/u1"),
        CounterRead {
            value: 0,
            expires_at_ms: None,
        }
    );
    // A change then creates it again, from 0, with a new expiry; one without a TTL after the
    // expiry makes a plain counter.
    assert_eq!(
        counter(&mut h, t0 + 10 * MINUTE, "fails/u1", expiring(2, 5 * MINUTE)),
        CounterOutcome::Applied { value: 2 }
    );
    assert_eq!(read(&h, "fails/u1").expires_at_ms, Some(t0 + 15 * MINUTE));
    counter(&mut h, t0 + 16 * MINUTE, "fails/u1", incr(4));
    assert_eq!(
        read(&h, "fails/u1"),
        CounterRead {
            value: 4,
            expires_at_ms: None,
        }
    );
    // The sweep forgets both incarnations and their index entries.
    let due = sweeps_due(&h.store, t0 + 16 * MINUTE, h.applier.region()).expect("due");
    assert_eq!(due, vec![Op::CounterSweep { limit: SWEEP_ITEMS_MAX }]);
    assert_eq!(
        h.apply(cmd(t0 + 16 * MINUTE, due[0].clone())),
        Response::Swept { removed: 2 }
    );
    assert_eq!(rows(&h, Table::CounterWindow), 0);
    assert_eq!(rows(&h, Table::CounterWindowExpiry), 0);
    assert_eq!(read(&h, "fails/u1").value, 4);
}

#[test]
fn a_ttl_for_a_counter_holding_a_value_without_one_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    counter(&mut h, 1, "plain", incr(5));
    let before = digest(&h.store).expect("digest");
    assert_eq!(
        apply(&mut h, 2, "plain", expiring(1, MINUTE)),
        Response::Refused(OpError::Counter(CounterError::NotExpiring {
            key: "plain".into(),
            value: 5,
        }))
    );
    assert_eq!(digest(&h.store).expect("digest"), before);
    // A plain counter back at 0 may become an expiring one.
    counter(&mut h, 3, "plain", CounterAction::Set { value: 0 });
    assert_eq!(
        counter(&mut h, 4, "plain", expiring(1, MINUTE)),
        CounterOutcome::Applied { value: 1 }
    );
    assert_eq!(read(&h, "plain").expires_at_ms, Some(4 + MINUTE));
    // A TTL of zero or over a year refuses the request.
    for ttl_ms in [0, crate::limits::TTL_MS_MAX + 1] {
        assert!(matches!(
            apply(&mut h, 5, "other", expiring(1, ttl_ms)),
            Response::Refused(OpError::InvalidTtl { .. })
        ));
    }
}

#[test]
fn bounds_hold_on_a_lone_expiring_counter_and_a_delete_removes_it() {
    let mut h = Harness::new();
    let capped = |delta| CounterAction::IncrExpiring {
        delta,
        min: None,
        max: Some(3),
        ttl_ms: MINUTE,
    };
    for expected in 1..=3 {
        assert_eq!(
            counter(&mut h, 10, "attempts", capped(1)),
            CounterOutcome::Applied { value: expected }
        );
    }
    assert_eq!(
        counter(&mut h, 11, "attempts", capped(1)),
        CounterOutcome::BoundExceeded { value: 3 }
    );
    assert_eq!(
        counter(&mut h, 12, "attempts", CounterAction::Delete),
        CounterOutcome::Applied { value: 0 }
    );
    assert_eq!(rows(&h, Table::CounterWindow), 0);
    assert_eq!(
        counter(&mut h, 13, "attempts", capped(1)),
        CounterOutcome::Applied { value: 1 }
    );
    assert_eq!(read(&h, "attempts").expires_at_ms, Some(13 + MINUTE));
}

/// Two regions holding counter `key` created concurrently at `t0`: +3 until t0+10m (us) and +4
/// until t0+20m (eu), both shipped both ways, so each region reads 7 until t0+10m.
fn concurrent_incarnations(key: &str, t0: u64) -> Vec<Harness> {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    counter(&mut regions[0], t0, key, expiring(3, 10 * MINUTE));
    counter(&mut regions[1], t0, key, expiring(4, 20 * MINUTE));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t0 + 1);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t0 + 1);
    each_reads(&regions, key, 7, Some(t0 + 10 * MINUTE));
    regions
}

/// Two regions create one expiring counter concurrently: two incarnations, summed, each counted
/// until its own expiry; a component shipped after an incarnation's expiry is dropped.
#[test]
fn regions_sum_concurrent_incarnations_and_forget_each_at_its_own_expiry() {
    let t0 = 100 * MINUTE;
    let mut regions = concurrent_incarnations("hits", t0);
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d")
    );
    // eu's next change goes to the earliest incarnation (us's), and reaches us.
    counter(&mut regions[1], t0 + 2, "hits", incr(1));
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t0 + 3);
    assert_eq!(read(&regions[0], "hits").value, 8);
    // us changes its incarnation again, but its feed reaches eu after that incarnation expired
    // there: eu does not bring it back, and both read eu's incarnation alone.
    counter(&mut regions[0], t0 + 4, "hits", incr(10));
    let late = t0 + 10 * MINUTE;
    regions[1].apply(cmd(late, Op::CounterSweep { limit: SWEEP_ITEMS_MAX }));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, late + 1);
    regions[0].apply(cmd(late + 1, Op::ClockTick));
    each_reads(&regions, "hits", 4, Some(t0 + 20 * MINUTE));
    assert_eq!(rows(&regions[1], Table::CounterWindow), 1);
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d"),
        "an unswept expired incarnation is not part of the digest"
    );
}

#[test]
fn among_regions_a_bound_on_an_expiring_counter_is_refused_and_a_delete_resets_it() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let bounded = CounterAction::IncrExpiring {
        delta: 1,
        min: None,
        max: Some(5),
        ttl_ms: MINUTE,
    };
    assert_eq!(
        apply(&mut regions[0], 1, "c", bounded),
        Response::Refused(OpError::Counter(CounterError::BoundOnExpiring { key: "c".into() }))
    );
    counter(&mut regions[0], 2, "c", expiring(5, 10 * MINUTE));
    // A bounded plain change of a live expiring counter is refused too.
    assert_eq!(
        apply(
            &mut regions[0],
            3,
            "c",
            CounterAction::Incr {
                delta: 1,
                min: None,
                max: Some(9),
            }
        ),
        Response::Refused(OpError::Counter(CounterError::BoundOnExpiring { key: "c".into() }))
    );
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, 4);
    // eu adds 2 before it sees us's delete; the delete resets what us saw, eu's 2 still counts.
    counter(&mut regions[1], 5, "c", incr(2));
    counter(&mut regions[0], 5, "c", CounterAction::Delete);
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, 6);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, 6);
    for r in &regions {
        assert_eq!(read(r, "c").value, 2);
    }
}

/// A counter at 0 holds no TTL: reaching 0 ends its expiry, and the next change with a TTL starts
/// a new one. A lone delete removes the incarnation with its expiry index row.
#[test]
fn a_counter_at_zero_holds_no_ttl_and_a_lone_delete_leaves_no_index_row() {
    let mut h = Harness::new();
    let t0 = 100 * MINUTE;
    counter(&mut h, t0, "c", expiring(2, 10 * MINUTE));
    assert_eq!(
        counter(&mut h, t0 + 1, "c", incr(-2)),
        CounterOutcome::Applied { value: 0 }
    );
    assert_eq!(
        read(&h, "c"),
        CounterRead {
            value: 0,
            expires_at_ms: None,
        }
    );
    // A TTL now starts a new expiry, and a set to 0 ends it as a decrement does.
    counter(&mut h, t0 + MINUTE, "c", expiring(1, 5 * MINUTE));
    assert_eq!(read(&h, "c").expires_at_ms, Some(t0 + 6 * MINUTE));
    counter(&mut h, t0 + 2 * MINUTE, "c", CounterAction::Set { value: 0 });
    assert_eq!(read(&h, "c").expires_at_ms, None);
    // A plain change of a counter at 0 makes it plain.
    counter(&mut h, t0 + 3 * MINUTE, "c", incr(4));
    assert_eq!(
        read(&h, "c"),
        CounterRead {
            value: 4,
            expires_at_ms: None,
        }
    );
    assert_eq!(
        rows(&h, Table::CounterWindowExpiry),
        2,
        "two zeroed incarnations, not yet due"
    );
    counter(&mut h, t0 + 4 * MINUTE, "c", CounterAction::Delete);
    assert_eq!(rows(&h, Table::CounterWindow), 0);
    assert_eq!(rows(&h, Table::CounterWindowExpiry), 0, "the index rows went with them");
    assert_eq!(read(&h, "c").value, 0);
}

/// An incarnation row that does not decode refuses the ops on its counter (nothing changed)
/// instead of halting the state machine; other counters go on.
#[test]
fn a_corrupt_incarnation_refuses_its_counter_and_halts_nothing() {
    let mut h = Harness::new();
    let mut damaged = WriteSet::default();
    damaged.put(Table::CounterWindow, incarnation_key(b"bad", 10 * MINUTE), vec![1; 7]);
    h.store.commit(&damaged);
    let before = digest(&h.store).expect("digest");
    let refused = apply(&mut h, MINUTE, "bad", incr(1));
    assert!(
        matches!(&refused, Response::Refused(OpError::CorruptValue { .. })),
        "{refused:?}"
    );
    assert_eq!(digest(&h.store).expect("digest"), before);
    assert_eq!(
        counter(&mut h, MINUTE, "good", incr(1)),
        CounterOutcome::Applied { value: 1 }
    );
    // A lone delete removes the row it cannot read.
    assert_eq!(
        counter(&mut h, MINUTE, "bad", CounterAction::Delete),
        CounterOutcome::Applied { value: 0 }
    );
    assert_eq!(
        counter(&mut h, MINUTE, "bad", expiring(2, MINUTE)),
        CounterOutcome::Applied { value: 2 }
    );
}

/// Among regions a delete leaves zeroed rows behind: they are not live, so the counter is
/// created again with a new expiry, and `get` reports none meanwhile.
#[test]
fn among_regions_a_deleted_expiring_counter_is_created_again_with_a_new_expiry() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let t0 = 100 * MINUTE;
    counter(&mut regions[0], t0, "c", expiring(5, 10 * MINUTE));
    counter(&mut regions[0], t0 + 1, "c", CounterAction::Delete);
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t0 + 2);
    each_reads(&regions, "c", 0, None);
    assert_eq!(
        counter(&mut regions[1], t0 + MINUTE, "c", expiring(1, 20 * MINUTE)),
        CounterOutcome::Applied { value: 1 }
    );
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t0 + MINUTE + 1);
    each_reads(&regions, "c", 1, Some(t0 + 21 * MINUTE));
    // Past the old expiry nothing changes: the new incarnation alone counts.
    for r in &mut regions {
        r.apply(cmd(t0 + 10 * MINUTE, Op::ClockTick));
        assert_eq!(read(r, "c").value, 1);
    }
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d")
    );

    // A new incarnation with the expiry of a zeroed one adds to its row: overwriting it would
    // drop the other region's component, and the regions would disagree.
    let t1 = t0 + 30 * MINUTE;
    counter(&mut regions[0], t1, "e", expiring(3, 2 * MINUTE));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t1 + 1);
    counter(&mut regions[1], t1 + 2, "e", incr(-3));
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t1 + 3);
    assert_eq!(read(&regions[0], "e").expires_at_ms, None);
    assert_eq!(
        counter(&mut regions[0], t1 + MINUTE, "e", expiring(5, MINUTE)),
        CounterOutcome::Applied { value: 5 }
    );
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t1 + MINUTE + 1);
    each_reads(&regions, "e", 5, Some(t1 + 2 * MINUTE));
}

/// A set among regions takes the earliest incarnation to its value and every other part to 0:
/// when the counter expires it reads 0, not a plain part left behind.
#[test]
fn among_regions_a_set_takes_every_other_part_to_zero() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let t0 = 100 * MINUTE;
    // us counts plainly while eu creates the counter with a TTL: a plain part and an incarnation.
    counter(&mut regions[0], t0, "c", incr(10));
    counter(&mut regions[1], t0, "c", expiring(5, 10 * MINUTE));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t0 + 1);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t0 + 1);
    assert_eq!(
        read(&regions[0], "c"),
        CounterRead {
            value: 15,
            expires_at_ms: Some(t0 + 10 * MINUTE),
        }
    );
    assert_eq!(
        counter(&mut regions[0], t0 + 2, "c", CounterAction::Set { value: 7 }),
        CounterOutcome::Applied { value: 7 }
    );
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t0 + 3);
    each_reads(&regions, "c", 7, Some(t0 + 10 * MINUTE));
    // No part left behind comes back after the expiry.
    tick_each(&mut regions, t0 + 10 * MINUTE);
    each_reads(&regions, "c", 0, None);
}

/// Among regions, an increment that takes a counter of several parts to 0 takes every part to 0:
/// it reads 0 without a TTL, a TTL given next starts afresh, and nothing comes back later.
#[test]
fn among_regions_an_increment_to_zero_takes_every_part_to_zero() {
    let t0 = 100 * MINUTE;
    let mut regions = concurrent_incarnations("c", t0);
    assert_eq!(
        counter(&mut regions[1], t0 + 2, "c", incr(-7)),
        CounterOutcome::Applied { value: 0 }
    );
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, t0 + 3);
    each_reads(&regions, "c", 0, None);
    // A TTL now starts a new expiry, and the old parts stay at 0 past their expiries.
    assert_eq!(
        counter(&mut regions[0], t0 + 4, "c", expiring(1, 5 * MINUTE)),
        CounterOutcome::Applied { value: 1 }
    );
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, t0 + 5);
    each_reads(&regions, "c", 1, Some(t0 + 4 + 5 * MINUTE));
    // Past both old parts' expiries, none comes back.
    tick_each(&mut regions, t0 + 10 * MINUTE);
    each_reads(&regions, "c", 0, None);
    tick_each(&mut regions, t0 + 20 * MINUTE);
    each_reads(&regions, "c", 0, None);
}

/// A component shipped one ms before an incarnation's expiry counts; one shipped at the expiry
/// instant is dropped, and the regions agree.
#[test]
fn a_component_merged_at_the_expiry_instant_is_dropped() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let t0 = 100 * MINUTE;
    let expiry = t0 + 10 * MINUTE;
    counter(&mut regions[0], t0, "c", expiring(3, 10 * MINUTE));
    counter(&mut regions[0], t0 + 1, "c", incr(2));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, expiry - 1);
    assert_eq!(read(&regions[1], "c").value, 5);
    counter(&mut regions[0], t0 + 2, "c", incr(1));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, expiry);
    regions[0].apply(cmd(expiry, Op::ClockTick));
    each_reads(&regions, "c", 0, None);
    for r in &mut regions {
        r.apply(cmd(expiry, Op::CounterSweep { limit: SWEEP_ITEMS_MAX }));
        assert_eq!(rows(r, Table::CounterWindow), 0);
    }
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d")
    );
}
