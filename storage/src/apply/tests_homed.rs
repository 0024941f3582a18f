//! Homed data across regions: the home region's feed copies every row of its ledgers, leases and
//! queues into the other regions, which never write them themselves.

use basalt_replication::{Effect, FeedEntry, ShipBatch};
use proptest::prelude::*;

use super::ledger::lookup_accounts;
use super::replication::{digest, feed_after, homed_copy_complete, resync_opening, resync_tables, state_as_effects};
use super::tests::{cmd, Harness};
use super::tests_lease::acquire;
use super::tests_ledger::{account, check_invariants, create_accounts, create_transfers, transfer};
use super::tests_queue::{ack, configure, enqueue, message, receive};
use super::tests_replication::{batch, region, ship};
use super::*;
use crate::ledger::{transfer_flags as tf, Transfer};
use crate::queue::{NewMessage, QueueConfig};

type Row = (Table, Vec<u8>, Vec<u8>);

fn homed_rows(h: &Harness) -> Vec<Row> {
    Table::HOMED
        .into_iter()
        .flat_map(|table| {
            h.store
                .scan(table, &KeyRange::all(), usize::MAX)
                .expect("scan")
                .into_iter()
                .map(move |(k, v)| (table, k, v))
        })
        .collect()
}

fn merged(r: &Response) -> bool {
    matches!(r, Response::ReplApplied { .. })
}

#[test]
fn the_homes_ledger_queue_and_lease_rows_are_copied_deletes_included() {
    let mut home = region(1);
    let mut eu = region(2);
    assert_eq!(
        create_accounts(&mut home, 1000, vec![account(1, 0), account(2, 0)]),
        vec![]
    );
    assert_eq!(create_transfers(&mut home, 1001, vec![transfer(10, 1, 2, 50)]), vec![]);
    configure(&mut home, "jobs", QueueConfig::default());
    enqueue(&mut home, 1002, "jobs", vec![message("a", 0), message("b", 0)]);
    assert!(matches!(
        home.apply(cmd(1003, acquire("scheduler", "n1", 10_000))),
        Response::Lease(_)
    ));
    assert!(merged(&ship(&home, 1, &mut eu, 1004)));
    assert_eq!(homed_rows(&eu), homed_rows(&home));
    assert_eq!(lookup_accounts(&eu.store, &[2]).expect("lookup")[0].credits_posted, 50);

    // A delivery and its ack delete rows at the home: the copy loses them too.
    let got = receive(&mut home, 1005, "jobs", 1, None);
    assert_eq!(ack(&mut home, 1006, "jobs", got[0].receipt), Response::QueueDone);
    let before = homed_rows(&eu).len();
    assert!(merged(&ship(&home, 1, &mut eu, 1007)));
    assert!(homed_rows(&eu).len() < before, "the acked message's rows are gone");
    assert_eq!(homed_rows(&eu), homed_rows(&home));
    assert_eq!(digest(&eu.store).expect("digest"), digest(&home.store).expect("digest"));
    check_invariants(&eu);
}

#[test]
fn a_queue_deleted_at_its_home_is_gone_from_the_copies_and_only_the_home_goes_on_with_it() {
    let mut home = region(1);
    let mut eu = region(2);
    configure(&mut home, "dlq", QueueConfig::default());
    configure(
        &mut home,
        "jobs",
        QueueConfig {
            max_deliveries: 1,
            dead_letter_queue: Some(b"dlq".to_vec()),
            ..QueueConfig::default()
        },
    );
    let many: Vec<NewMessage> = (0..3000).map(|i| message(&format!("m{i}"), 0)).collect();
    enqueue(&mut home, 1000, "jobs", many);
    // The home builds its index of dead-letter references (once, before its first deletion); a
    // copy does not.
    super::tests_queue_delete::build_index(&mut home, crate::limits::QUEUE_INDEX_ROWS_MAX);
    assert!(!sweeps_due(&eu.store, 1001, eu.applier.region())
        .expect("due")
        .iter()
        .any(|op| matches!(op, Op::Queue(QueueOp::BuildDeadLetterIndex { .. }))));
    assert!(merged(&ship(&home, 1, &mut eu, 1001)));
    // The copy refuses a deletion itself, like every homed write.
    assert!(matches!(
        eu.apply(cmd(1002, Op::Queue(QueueOp::Delete { queue: "jobs".into() }))),
        Response::Refused(OpError::Region(RegionError::NotHome { .. }))
    ));
    assert_eq!(
        home.apply(cmd(1002, Op::Queue(QueueOp::Delete { queue: "jobs".into() }))),
        Response::QueueDeleted { finished: false }
    );
    assert!(merged(&ship(&home, 1, &mut eu, 1003)));
    assert_eq!(homed_rows(&eu), homed_rows(&home));
    let go_on = Op::Queue(QueueOp::ContinueDeletes {
        limit: crate::limits::QUEUE_DELETE_ROWS_MAX,
    });
    assert!(!sweeps_due(&eu.store, 1004, eu.applier.region())
        .expect("due")
        .contains(&go_on));
    assert!(sweeps_due(&home.store, 1004, home.applier.region())
        .expect("due")
        .contains(&go_on));
    home.apply(cmd(1004, go_on));
    assert!(merged(&ship(&home, 1, &mut eu, 1005)));
    assert_eq!(homed_rows(&eu), homed_rows(&home));
    // Only the dead-letter queue is left, and its index row went with its source.
    assert_eq!(
        homed_rows(&eu).iter().map(|(table, _, _)| *table).collect::<Vec<_>>(),
        [Table::Queue]
    );
    assert_eq!(digest(&eu.store).expect("digest"), digest(&home.store).expect("digest"));
}

#[test]
fn other_regions_refuse_homed_writes_and_leave_homed_sweeps_to_the_home() {
    let mut home = region(1);
    let mut eu = region(2);
    assert_eq!(
        eu.apply(cmd(
            1,
            Op::Ledger(LedgerOp::CreateAccounts {
                accounts: vec![account(1, 0)]
            })
        )),
        Response::Refused(OpError::Region(RegionError::NotHome { region: 2, home: 1 }))
    );
    assert!(homed_rows(&eu).is_empty(), "the refusal wrote nothing");

    // A pending transfer that times out and a dedup id that expires: both due later.
    create_accounts(&mut home, 1000, vec![account(1, 0), account(2, 0)]);
    let pending = Transfer {
        flags: tf::PENDING,
        timeout: 1,
        ..transfer(10, 1, 2, 7)
    };
    assert_eq!(create_transfers(&mut home, 1001, vec![pending]), vec![]);
    configure(&mut home, "mail", QueueConfig::default());
    let deduped = NewMessage {
        dedup_id: Some(b"m-1".to_vec()),
        ..message("hello", 0)
    };
    enqueue(&mut home, 1002, "mail", vec![deduped]);
    ship(&home, 1, &mut eu, 1003);

    let later = 1_000_000_000;
    let at_home = sweeps_due(&home.store, later, home.applier.region()).expect("due");
    assert!(at_home
        .iter()
        .any(|op| matches!(op, Op::Ledger(LedgerOp::ExpirePending { .. }))));
    assert!(at_home
        .iter()
        .any(|op| matches!(op, Op::Queue(QueueOp::DedupSweep { .. }))));
    let elsewhere = sweeps_due(&eu.store, later, eu.applier.region()).expect("due");
    assert!(!elsewhere.iter().any(Op::is_homed), "{elsewhere:?}");

    // The home's sweeps reach the copy through the feed.
    for op in at_home {
        home.apply(cmd(later, op));
    }
    assert!(merged(&ship(&home, 1, &mut eu, later)));
    assert_eq!(homed_rows(&eu), homed_rows(&home));
    assert_eq!(lookup_accounts(&eu.store, &[1]).expect("lookup")[0].debits_pending, 0);
}

#[test]
fn homed_rows_are_taken_only_from_the_home_and_only_for_homed_tables() {
    let mut home = region(1);
    let mut eu = region(2);
    create_accounts(&mut home, 1000, vec![account(1, 0)]);
    // Region 3 claiming to ship the home's rows (a misconfigured home).
    let mut foreign = batch(&home, 1, 0);
    foreign.source = 3;
    assert_eq!(
        eu.apply(cmd(1001, Op::Region(RegionOp::MergeFeed { batch: foreign }))),
        Response::Refused(OpError::Region(RegionError::RowsFromNonHome {
            source_region: 3,
            home: 1
        }))
    );
    let into_kv = ShipBatch {
        source: 1,
        entries: vec![FeedEntry {
            index: 1,
            stamp: 1,
            effects: vec![Effect::Row {
                table: "kv".into(),
                key: b"k".to_vec(),
                value: Some(b"v".to_vec()),
            }],
        }],
        upto: 1,
        frontier: 1,
        resync: false,
    };
    assert_eq!(
        eu.apply(cmd(1002, Op::Region(RegionOp::MergeFeed { batch: into_kv }))),
        Response::Refused(OpError::Region(RegionError::NotHomedTable { table: "kv".into() }))
    );
    assert!(
        homed_rows(&eu).is_empty() && eu.kv("k").is_none(),
        "refusals change nothing"
    );
}

/// The full re-sync the shipper sends from `home`, in two chunks: its opening, then every row.
fn resync_chunks(home: &Harness) -> (ShipBatch, ShipBatch) {
    let role = home.applier.region();
    let chunk = |effects: Vec<Effect>, upto: u64| ShipBatch {
        source: role.id,
        entries: vec![FeedEntry {
            index: upto,
            stamp: 1,
            effects,
        }],
        upto,
        frontier: home.last_stamp().0,
        resync: true,
    };
    let state: Vec<Effect> = resync_tables(role)
        .into_iter()
        .flat_map(|table| state_as_effects(&home.store, table, None, usize::MAX).expect("state"))
        .flat_map(|(_, effects)| effects)
        .collect();
    (chunk(resync_opening(role), 0), chunk(state, home.index))
}

#[test]
fn a_full_resync_drops_rows_the_home_deleted_and_the_copy_is_incomplete_until_it_ends() {
    let mut home = region(1);
    let mut eu = region(2);
    configure(&mut home, "jobs", QueueConfig::default());
    enqueue(&mut home, 1000, "jobs", vec![message("a", 0), message("b", 0)]);
    ship(&home, 1, &mut eu, 1001);
    // While eu is cut off, "a" is delivered and acked: its rows go at the home.
    let got = receive(&mut home, 1002, "jobs", 1, None);
    ack(&mut home, 1003, "jobs", got[0].receipt);

    let (opening, rows) = resync_chunks(&home);
    assert!(homed_copy_complete(&eu.store).expect("flag"));
    assert!(merged(
        &eu.apply(cmd(1004, Op::Region(RegionOp::MergeFeed { batch: opening })))
    ));
    assert!(!homed_copy_complete(&eu.store).expect("flag"), "incomplete mid-re-sync");
    assert!(homed_rows(&eu).is_empty());
    assert!(merged(
        &eu.apply(cmd(1005, Op::Region(RegionOp::MergeFeed { batch: rows })))
    ));
    assert!(homed_copy_complete(&eu.store).expect("flag"));
    assert_eq!(
        homed_rows(&eu),
        homed_rows(&home),
        "the acked message is gone from the copy"
    );
}

/// One ledger request at the home: a posted or pending transfer, or the post or void of an
/// earlier pending one (which may already be resolved: then it fails, changing nothing).
#[derive(Clone, Debug)]
enum LedgerStep {
    Move {
        debit: u128,
        credit: u128,
        amount: u128,
        pending: bool,
    },
    Resolve {
        of: usize,
        post: bool,
    },
}

fn ledger_step() -> impl Strategy<Value = LedgerStep> {
    prop_oneof![
        3 => (1u128..=4, 1u128..=4, 1u128..100, any::<bool>())
            .prop_map(|(debit, credit, amount, pending)| LedgerStep::Move { debit, credit, amount, pending }),
        1 => (0usize..40, any::<bool>()).prop_map(|(of, post)| LedgerStep::Resolve { of, post }),
    ]
}

proptest! {
    /// Whatever prefix of the home's feed a region has merged, its copy of the ledger satisfies
    /// every invariant, and once it has all of it, it equals the home's.
    #[test]
    fn a_copy_of_the_ledger_keeps_its_invariants_at_every_shipped_position(
        steps in prop::collection::vec(ledger_step(), 1..40),
        cuts in prop::collection::vec(1usize..8, 1..8),
    ) {
        let mut home = region(1);
        let mut eu = region(2);
        create_accounts(&mut home, 1000, (1..=4).map(|id| account(id, 0)).collect());
        for (i, step) in steps.iter().enumerate() {
            let id = 100 + i as u128;
            let t = match *step {
                LedgerStep::Move { debit, credit, amount, pending } => Transfer {
                    flags: if pending { tf::PENDING } else { 0 },
                    ..transfer(id, debit, credit, amount)
                },
                LedgerStep::Resolve { of, post } => Transfer {
                    pending_id: 100 + of as u128,
                    flags: if post { tf::POST_PENDING_TRANSFER } else { tf::VOID_PENDING_TRANSFER },
                    ..transfer(id, 0, 0, 0)
                },
            };
            create_transfers(&mut home, 1001 + i as u64, vec![t]);
        }
        let mut after = 0;
        for n in cuts.into_iter().chain([usize::MAX]) {
            let entries = feed_after(&home.store, after, n).expect("feed");
            let Some(last) = entries.last().map(|e| e.index) else { break };
            let step = ShipBatch { source: 1, entries, upto: last, frontier: home.last_stamp().0, resync: false };
            let merged_step = merged(&eu.apply(cmd(5000, Op::Region(RegionOp::MergeFeed { batch: step }))));
            prop_assert!(merged_step);
            check_invariants(&eu);
            after = last;
        }
        prop_assert_eq!(homed_rows(&eu), homed_rows(&home));
    }
}
