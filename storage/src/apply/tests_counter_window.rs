//! Windowed counters and counter delete at the apply level: buckets, lateness, sweeps, and
//! their merge across regions.

use super::counter_window::{read, WindowsRead};
use super::replication::digest;
use super::tests::{cmd, Harness};
use super::tests_replication::{pick, region, resync_batches, ship};
use super::*;
use crate::command::{CounterAction, CounterOp, CounterOutcome};
use crate::state::KeyRange;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

fn window(delta: i64, window_ms: u64, retention_ms: u64, at_ms: Option<u64>) -> CounterAction {
    CounterAction::Window {
        delta,
        window_ms,
        retention_ms,
        at_ms,
    }
}

pub(super) fn counter(h: &mut Harness, now_ms: u64, key: &str, action: CounterAction) -> CounterOutcome {
    let op = Op::Counter {
        ops: vec![CounterOp {
            key: key.into(),
            action,
        }],
    };
    match h.apply(cmd(now_ms, op)) {
        Response::Counters(outcomes) => outcomes[0],
        other => panic!("expected an outcome, got {other:?}"),
    }
}

fn minutes(h: &Harness, key: &str, from_ms: u64, to_ms: u64) -> WindowsRead {
    read(&h.store, key.as_bytes(), MINUTE, from_ms, to_ms).expect("read")
}

pub(super) fn rows(h: &Harness, table: Table) -> usize {
    h.store.scan(table, &KeyRange::all(), usize::MAX).expect("scan").len()
}

#[test]
fn events_land_in_their_windows_and_a_range_reads_each_and_the_sum() {
    let mut h = Harness::new();
    let now = 100 * MINUTE;
    // Three events in minute 98, one in 99, one now (minute 100); an hourly series apart.
    for at in [98 * MINUTE, 98 * MINUTE + 5, 98 * MINUTE + 59_999] {
        counter(&mut h, now, "usage", window(2, MINUTE, HOUR, Some(at)));
    }
    assert_eq!(
        counter(&mut h, now, "usage", window(5, MINUTE, HOUR, Some(99 * MINUTE + 1))),
        CounterOutcome::Applied { value: 5 }
    );
    assert_eq!(
        counter(&mut h, now, "usage", window(-1, MINUTE, HOUR, None)),
        CounterOutcome::Applied { value: -1 }
    );
    counter(&mut h, now, "usage", window(7, HOUR, HOUR, None));
    assert_eq!(
        minutes(&h, "usage", 98 * MINUTE + 30_000, 101 * MINUTE),
        WindowsRead {
            windows: vec![(98 * MINUTE, 6), (99 * MINUTE, 5), (100 * MINUTE, -1)],
            sum: 10,
        }
    );
    // A range is the windows overlapping it: [99 min, 100 min) is minute 99 alone.
    assert_eq!(minutes(&h, "usage", 99 * MINUTE, 100 * MINUTE).sum, 5);
    // Another key and another window length are other series; a plain counter too.
    assert_eq!(minutes(&h, "usage2", 0, 101 * MINUTE), WindowsRead::default());
    assert_eq!(
        read(&h.store, b"usage", HOUR, 0, 2 * HOUR).expect("read").windows,
        vec![(HOUR, 7)]
    );
    assert_eq!(
        counter::get_values(&h.store, &[b"usage".to_vec()]).expect("get"),
        vec![0]
    );
}

#[test]
fn a_late_or_early_event_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    let now = 100 * MINUTE;
    counter(&mut h, now, "usage", window(1, MINUTE, 10 * MINUTE, None));
    let before = digest(&h.store).expect("digest");
    let rows_before = rows(&h, Table::CounterWindow);
    assert_eq!(
        counter(&mut h, now, "usage", window(1, MINUTE, 10 * MINUTE, Some(89 * MINUTE))),
        CounterOutcome::TooLate {
            window_start_ms: 89 * MINUTE,
            oldest_kept_ms: 90 * MINUTE,
        }
    );
    assert!(matches!(
        counter(&mut h, now, "usage", window(1, MINUTE, 10 * MINUTE, Some(now + HOUR))),
        CounterOutcome::TooEarly { .. }
    ));
    assert!(matches!(
        counter(&mut h, now, "usage", window(i64::MAX, MINUTE, 10 * MINUTE, None)),
        CounterOutcome::Overflow { value: 1 }
    ));
    assert_eq!(digest(&h.store).expect("digest"), before);
    assert_eq!(rows(&h, Table::CounterWindow), rows_before);
    // The oldest kept window still takes events.
    assert_eq!(
        counter(&mut h, now, "usage", window(1, MINUTE, 10 * MINUTE, Some(90 * MINUTE))),
        CounterOutcome::Applied { value: 1 }
    );
}

#[test]
fn a_window_out_of_range_refuses_the_request() {
    let mut h = Harness::new();
    for action in [
        window(1, 999, 0, None),
        window(1, crate::limits::COUNTER_WINDOW_MS_MAX + 1, 0, None),
        window(1, MINUTE, crate::limits::COUNTER_RETENTION_MS_MAX + 1, None),
    ] {
        let op = Op::Counter {
            ops: vec![CounterOp {
                key: "usage".into(),
                action,
            }],
        };
        assert!(
            matches!(h.apply(cmd(1, op)), Response::Refused(OpError::OutOfRange { .. })),
            "{action:?}"
        );
    }
    assert_eq!(rows(&h, Table::CounterWindow), 0);
}

#[test]
fn buckets_are_swept_once_past_their_retention_and_a_longer_retention_is_a_bucket_of_its_own() {
    let mut h = Harness::new();
    let now = 100 * MINUTE;
    counter(&mut h, now, "a", window(1, MINUTE, MINUTE, None));
    counter(&mut h, now, "b", window(1, MINUTE, MINUTE, None));
    // b's window also gets a change kept longer: a bucket of its own, read together.
    counter(&mut h, now + 1, "b", window(1, MINUTE, 5 * MINUTE, None));
    assert_eq!(minutes(&h, "b", now, now + MINUTE).sum, 2);
    assert!(sweeps_due(&h.store, now + 2 * MINUTE - 1, h.applier.region())
        .expect("due")
        .is_empty());
    let due = sweeps_due(&h.store, now + 2 * MINUTE, h.applier.region()).expect("due");
    assert_eq!(due, vec![Op::CounterSweep { limit: SWEEP_ITEMS_MAX }]);
    assert_eq!(
        h.apply(cmd(now + 2 * MINUTE, due[0].clone())),
        Response::Swept { removed: 2 }
    );
    assert_eq!(minutes(&h, "a", now, now + MINUTE), WindowsRead::default());
    assert_eq!(minutes(&h, "b", now, now + MINUTE).sum, 1, "the longer-kept bucket");
    // The short bucket, once forgotten, is never reopened: a change asking for it is too late,
    // while one asking for the longer retention still counts.
    assert!(matches!(
        counter(&mut h, now + 2 * MINUTE, "b", window(1, MINUTE, MINUTE, Some(now))),
        CounterOutcome::TooLate { .. }
    ));
    assert_eq!(
        counter(&mut h, now + 2 * MINUTE, "b", window(1, MINUTE, 5 * MINUTE, Some(now))),
        CounterOutcome::Applied { value: 2 }
    );
    assert_eq!(
        h.apply(cmd(now + 6 * MINUTE, Op::CounterSweep { limit: SWEEP_ITEMS_MAX })),
        Response::Swept { removed: 1 }
    );
    assert_eq!(rows(&h, Table::CounterWindow), 0);
    assert_eq!(rows(&h, Table::CounterWindowExpiry), 0);
}

#[test]
fn a_bucket_past_its_retention_is_not_read_before_the_sweep_removes_it() {
    let mut h = Harness::new();
    let now = 100 * MINUTE;
    counter(&mut h, now, "a", window(3, MINUTE, MINUTE, None));
    // The applied clock moves past the bucket's forget time; no sweep yet.
    h.apply(cmd(now + 2 * MINUTE, Op::ClockTick));
    assert_eq!(rows(&h, Table::CounterWindow), 1);
    assert_eq!(minutes(&h, "a", now, now + MINUTE), WindowsRead::default());
    let mut lone = Harness::new();
    lone.apply(cmd(now + 2 * MINUTE, Op::ClockTick));
    assert_eq!(digest(&h.store).expect("d"), digest(&lone.store).expect("d"));
}

/// Two regions ask one window with different retentions; one sweeps its short bucket before the
/// other's component of it arrives: it stays gone, and both converge on the longer bucket.
#[test]
fn regions_with_mixed_retentions_converge_and_a_swept_bucket_stays_gone() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let now = 100 * MINUTE;
    counter(&mut regions[0], now, "usage", window(3, MINUTE, MINUTE, None));
    counter(&mut regions[1], now, "usage", window(4, MINUTE, 10 * MINUTE, None));
    let late = now + 3 * MINUTE;
    regions[0].apply(cmd(late, Op::CounterSweep { limit: SWEEP_ITEMS_MAX }));
    regions[1].apply(cmd(late, Op::CounterSweep { limit: SWEEP_ITEMS_MAX }));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, late + 1);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, late + 1);
    for r in &regions {
        assert_eq!(minutes(r, "usage", now, now + MINUTE).sum, 4);
        assert_eq!(rows(r, Table::CounterWindow), 1);
    }
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d")
    );
}

#[test]
fn regions_sum_a_bucket_and_a_component_arriving_after_its_retention_is_dropped() {
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    let now = 100 * MINUTE;
    counter(&mut regions[0], now, "usage", window(3, MINUTE, MINUTE, None));
    counter(&mut regions[1], now, "usage", window(4, MINUTE, MINUTE, None));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, now + 1);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, now + 1);
    for r in &regions {
        assert_eq!(minutes(r, "usage", now, now + MINUTE).sum, 7);
    }
    assert_eq!(
        digest(&regions[0].store).expect("d"),
        digest(&regions[1].store).expect("d")
    );
    // us adds more, but its feed reaches eu only after the bucket's retention there: eu, which
    // swept it, does not bring it back.
    counter(&mut regions[0], now + 2, "usage", window(10, MINUTE, MINUTE, None));
    let late = now + 2 * MINUTE;
    regions[1].apply(cmd(late, Op::CounterSweep { limit: SWEEP_ITEMS_MAX }));
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, late + 1);
    assert_eq!(rows(&regions[1], Table::CounterWindow), 0);
    assert_eq!(rows(&regions[1], Table::CounterWindowExpiry), 0);
}

#[test]
fn a_re_sync_carries_every_bucket() {
    let mut us = region(1);
    let mut eu = region(2);
    let now = 100 * MINUTE;
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        counter(&mut us, now, key, window(i as i64 + 1, MINUTE, HOUR, None));
    }
    for batch in resync_batches(&us, 1) {
        eu.apply(cmd(now + 1, Op::Region(RegionOp::MergeFeed { batch })));
    }
    assert_eq!(minutes(&eu, "c", now, now + 1).sum, 3);
    assert_eq!(digest(&us.store).expect("d"), digest(&eu.store).expect("d"));
}

#[test]
fn a_delete_removes_a_lone_counter_and_resets_a_replicated_one() {
    let mut lone = Harness::new();
    counter(&mut lone, 1, "c", CounterAction::Set { value: 9 });
    assert_eq!(
        counter(&mut lone, 2, "c", CounterAction::Delete),
        CounterOutcome::Applied { value: 0 }
    );
    assert_eq!(rows(&lone, Table::Counter), 0);
    assert_eq!(
        counter::get_values(&lone.store, &[b"c".to_vec()]).expect("get"),
        vec![0]
    );

    // Among regions: eu's increment made before it saw the delete still counts; what us
    // deleted does not come back when eu's older component arrives.
    let mut regions: Vec<Harness> = (1..=2).map(region).collect();
    counter(&mut regions[0], 1, "c", CounterAction::Set { value: 5 });
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, 2);
    counter(
        &mut regions[1],
        3,
        "c",
        CounterAction::Incr {
            delta: 2,
            min: None,
            max: None,
        },
    );
    counter(&mut regions[0], 3, "c", CounterAction::Delete);
    let (us, eu) = pick(&mut regions, 0, 1);
    ship(us, 1, eu, 4);
    let (eu, us) = pick(&mut regions, 1, 0);
    ship(eu, 2, us, 4);
    for r in &regions {
        assert_eq!(counter::get_values(&r.store, &[b"c".to_vec()]).expect("get"), vec![2]);
    }
}

#[test]
fn a_window_of_several_retentions_adds_its_buckets_before_clamping() {
    let mut h = Harness::new();
    let now = 100 * MINUTE;
    counter(&mut h, now, "big", window(i64::MAX, MINUTE, HOUR, None));
    counter(&mut h, now, "big", window(5, MINUTE, 2 * HOUR, None));
    counter(&mut h, now, "big", window(-10, MINUTE, 3 * HOUR, None));
    assert_eq!(
        minutes(&h, "big", now, now + 1),
        WindowsRead {
            windows: vec![(now, i64::MAX - 5)],
            sum: i64::MAX - 5,
        }
    );
}
