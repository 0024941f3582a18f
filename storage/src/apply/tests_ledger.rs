//! The ledger: result codes, two-phase transfers, linked chains, and invariants over random batches.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::ledger::{get_account_balances, get_account_transfers, lookup_accounts, lookup_transfers};
use super::tests::{cmd, Harness};
use super::*;
use crate::ledger::{
    account_flags as af, transfer_flags as tf, Account, AccountFilter, AccountResult, PendingStatus, Transfer,
    TransferResult,
};

pub(super) fn account(id: u128, flags: u16) -> Account {
    Account {
        id,
        ledger: 1,
        code: 10,
        flags,
        ..Default::default()
    }
}

pub(super) fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

pub(super) fn create_accounts(h: &mut Harness, now_ms: u64, accounts: Vec<Account>) -> Vec<(u32, AccountResult)> {
    match h.apply(cmd(now_ms, Op::Ledger(LedgerOp::CreateAccounts { accounts }))) {
        Response::AccountResults(r) => r,
        other => panic!("expected account results, got {other:?}"),
    }
}

pub(super) fn create_transfers(h: &mut Harness, now_ms: u64, transfers: Vec<Transfer>) -> Vec<(u32, TransferResult)> {
    match h.apply(cmd(now_ms, Op::Ledger(LedgerOp::CreateTransfers { transfers }))) {
        Response::TransferResults(r) => r,
        other => panic!("expected transfer results, got {other:?}"),
    }
}

fn balances(h: &Harness, id: u128) -> (u128, u128, u128, u128) {
    let a = lookup_accounts(&h.store, &[id]).expect("lookup")[0];
    (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
}

/// The ledger invariants, checked over every account in the store.
pub(super) fn check_invariants(h: &Harness) {
    let mut per_ledger: BTreeMap<u32, (u128, u128, u128, u128)> = BTreeMap::new();
    for (_, bytes) in h
        .store
        .scan(Table::LedgerAccount, &KeyRange::all(), usize::MAX)
        .expect("scan")
    {
        let a: Account = basalt_codec::decode(&bytes).expect("account");
        let sums = per_ledger.entry(a.ledger).or_default();
        sums.0 += a.debits_pending;
        sums.1 += a.debits_posted;
        sums.2 += a.credits_pending;
        sums.3 += a.credits_posted;
        if a.has(af::DEBITS_MUST_NOT_EXCEED_CREDITS) {
            assert!(
                a.debits_pending + a.debits_posted <= a.credits_posted,
                "{a:?} exceeds credits"
            );
        }
        if a.has(af::CREDITS_MUST_NOT_EXCEED_DEBITS) {
            assert!(
                a.credits_pending + a.credits_posted <= a.debits_posted,
                "{a:?} exceeds debits"
            );
        }
    }
    for (ledger, (dp, dpo, cp, cpo)) in per_ledger {
        assert_eq!(dpo, cpo, "ledger {ledger}: posted debits != posted credits");
        assert_eq!(dp, cp, "ledger {ledger}: pending debits != pending credits");
    }
}

fn setup() -> Harness {
    let mut h = Harness::new();
    let results = create_accounts(
        &mut h,
        1000,
        vec![
            account(1, 0),
            account(2, af::DEBITS_MUST_NOT_EXCEED_CREDITS | af::HISTORY),
            account(3, 0),
        ],
    );
    assert_eq!(results, vec![]);
    h
}

#[test]
fn accounts_are_created_once_with_their_own_codes() {
    let mut h = setup();
    let mut different = account(1, 0);
    different.code = 11;
    let bad = [
        (
            Account {
                timestamp: 5,
                ..account(9, 0)
            },
            AccountResult::TimestampMustBeZero,
        ),
        (account(9, 1 << 12), AccountResult::ReservedFlag),
        (account(0, 0), AccountResult::IdMustNotBeZero),
        (account(u128::MAX, 0), AccountResult::IdMustNotBeIntMax),
        (
            account(
                9,
                af::DEBITS_MUST_NOT_EXCEED_CREDITS | af::CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
            AccountResult::FlagsAreMutuallyExclusive,
        ),
        (
            Account {
                credits_posted: 1,
                ..account(9, 0)
            },
            AccountResult::CreditsPostedMustBeZero,
        ),
        (
            Account {
                ledger: 0,
                ..account(9, 0)
            },
            AccountResult::LedgerMustNotBeZero,
        ),
        (
            Account {
                code: 0,
                ..account(9, 0)
            },
            AccountResult::CodeMustNotBeZero,
        ),
        (account(1, 0), AccountResult::Exists),
        (different, AccountResult::ExistsWithDifferentFields),
    ];
    for (a, code) in bad {
        assert_eq!(create_accounts(&mut h, 2000, vec![a]), vec![(0, code)], "{a:?}");
    }
    assert_eq!(lookup_accounts(&h.store, &[9]).expect("lookup"), vec![]);
}

#[test]
fn transfers_move_funds_once_and_respect_limits() {
    let mut h = setup();
    // Account 2 may not spend more than it was credited.
    assert_eq!(
        create_transfers(&mut h, 2000, vec![transfer(100, 2, 1, 5)]),
        vec![(0, TransferResult::ExceedsCredits)]
    );
    assert_eq!(create_transfers(&mut h, 2001, vec![transfer(101, 1, 2, 50)]), vec![]);
    assert_eq!(create_transfers(&mut h, 2002, vec![transfer(102, 2, 3, 30)]), vec![]);
    assert_eq!(balances(&h, 2), (0, 30, 0, 50));
    // The same id again is `Exists` and moves nothing; with other fields it is a conflict.
    assert_eq!(
        create_transfers(&mut h, 2003, vec![transfer(102, 2, 3, 30), transfer(102, 2, 3, 31)]),
        vec![
            (0, TransferResult::Exists),
            (1, TransferResult::ExistsWithDifferentFields)
        ]
    );
    assert_eq!(balances(&h, 2), (0, 30, 0, 50));
    assert_eq!(
        create_transfers(&mut h, 2004, vec![transfer(103, 2, 3, 21)]),
        vec![(0, TransferResult::ExceedsCredits)]
    );
    check_invariants(&h);
}

#[test]
fn every_bad_transfer_has_its_code_and_changes_nothing() {
    let mut h = setup();
    create_accounts(
        &mut h,
        1500,
        vec![
            Account {
                ledger: 2,
                ..account(7, 0)
            },
            account(8, af::CLOSED),
        ],
    );
    let before = h.store.clone();
    let cases = [
        (
            Transfer {
                timestamp: 1,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::TimestampMustBeZero,
        ),
        (
            Transfer {
                flags: 1 << 10,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::ReservedFlag,
        ),
        (transfer(0, 1, 3, 1), TransferResult::IdMustNotBeZero),
        (
            Transfer {
                flags: tf::PENDING | tf::VOID_PENDING_TRANSFER,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::FlagsAreMutuallyExclusive,
        ),
        (transfer(200, 0, 3, 1), TransferResult::DebitAccountIdMustNotBeZero),
        (transfer(200, 1, 0, 1), TransferResult::CreditAccountIdMustNotBeZero),
        (transfer(200, 1, 1, 1), TransferResult::AccountsMustBeDifferent),
        (
            Transfer {
                pending_id: 5,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::PendingIdMustBeZero,
        ),
        (
            Transfer {
                timeout: 5,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::TimeoutReservedForPendingTransfer,
        ),
        (transfer(200, 1, 3, 0), TransferResult::AmountMustNotBeZero),
        (
            Transfer {
                ledger: 0,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::LedgerMustNotBeZero,
        ),
        (
            Transfer {
                code: 0,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::CodeMustNotBeZero,
        ),
        (transfer(200, 42, 3, 1), TransferResult::DebitAccountNotFound),
        (transfer(200, 1, 42, 1), TransferResult::CreditAccountNotFound),
        (transfer(200, 1, 7, 1), TransferResult::AccountsMustHaveTheSameLedger),
        (
            Transfer {
                ledger: 2,
                ..transfer(200, 1, 3, 1)
            },
            TransferResult::TransferMustHaveTheSameLedgerAsAccounts,
        ),
        (transfer(200, 8, 3, 1), TransferResult::DebitAccountClosed),
        (transfer(200, 1, 8, 1), TransferResult::CreditAccountClosed),
        (
            Transfer {
                flags: tf::POST_PENDING_TRANSFER,
                ..transfer(200, 0, 0, 0)
            },
            TransferResult::PendingIdMustNotBeZero,
        ),
        (
            Transfer {
                flags: tf::POST_PENDING_TRANSFER,
                pending_id: 999,
                ..transfer(200, 0, 0, 0)
            },
            TransferResult::PendingTransferNotFound,
        ),
    ];
    for (t, code) in cases {
        assert_eq!(create_transfers(&mut h, 2000, vec![t]), vec![(0, code)], "{t:?}");
    }
    for table in [
        Table::LedgerAccount,
        Table::LedgerTransfer,
        Table::LedgerAccountTransfers,
    ] {
        assert_eq!(
            h.store.scan(table, &KeyRange::all(), usize::MAX).expect("scan"),
            before.scan(table, &KeyRange::all(), usize::MAX).expect("scan"),
            "{table:?} changed"
        );
    }
}

#[test]
fn pending_transfers_post_or_void_exactly_once() {
    let mut h = setup();
    let pending = Transfer {
        flags: tf::PENDING,
        ..transfer(300, 1, 3, 100)
    };
    assert_eq!(create_transfers(&mut h, 2000, vec![pending]), vec![]);
    assert_eq!(balances(&h, 1), (100, 0, 0, 0));
    assert_eq!(balances(&h, 3), (0, 0, 100, 0));
    let post = |id, amount| Transfer {
        flags: tf::POST_PENDING_TRANSFER,
        pending_id: 300,
        ..transfer(id, 0, 0, amount)
    };
    let void = |id| Transfer {
        flags: tf::VOID_PENDING_TRANSFER,
        pending_id: 300,
        ..transfer(id, 0, 0, 0)
    };
    assert_eq!(
        create_transfers(&mut h, 2001, vec![post(301, 101)]),
        vec![(0, TransferResult::ExceedsPendingTransferAmount)]
    );
    // Partial post: 60 moves, the other 40 is released.
    assert_eq!(create_transfers(&mut h, 2002, vec![post(302, 60)]), vec![]);
    assert_eq!(balances(&h, 1), (0, 60, 0, 0));
    assert_eq!(balances(&h, 3), (0, 0, 0, 60));
    assert_eq!(
        create_transfers(&mut h, 2003, vec![post(303, 0), void(304)]),
        vec![
            (0, TransferResult::PendingTransferAlreadyPosted),
            (1, TransferResult::PendingTransferAlreadyPosted)
        ]
    );
    let stored = lookup_transfers(&h.store, &[300, 302]).expect("lookup");
    assert_eq!(stored[0].status, Some(PendingStatus::Posted));
    assert_eq!(stored[1].transfer.amount, 60);
    assert_eq!(
        stored[1].transfer.debit_account_id, 1,
        "a post inherits the pending accounts"
    );
    check_invariants(&h);
}

#[test]
fn an_expired_pending_transfer_is_voided_by_the_sweep() {
    let mut h = setup();
    let pending = Transfer {
        flags: tf::PENDING,
        timeout: 2,
        ..transfer(400, 1, 3, 70)
    };
    assert_eq!(create_transfers(&mut h, 10_000, vec![pending]), vec![]);
    assert_eq!(
        h.apply(cmd(11_999, Op::Ledger(LedgerOp::ExpirePending { limit: 10 }))),
        Response::PendingExpired { expired: 0 }
    );
    assert_eq!(balances(&h, 1), (70, 0, 0, 0));
    let post = Transfer {
        flags: tf::POST_PENDING_TRANSFER,
        pending_id: 400,
        ..transfer(401, 0, 0, 0)
    };
    // Past the timeout a post is refused even before the sweep runs.
    assert_eq!(
        create_transfers(&mut h, 12_000, vec![post]),
        vec![(0, TransferResult::PendingTransferExpired)]
    );
    assert_eq!(
        h.apply(cmd(12_000, Op::Ledger(LedgerOp::ExpirePending { limit: 10 }))),
        Response::PendingExpired { expired: 1 }
    );
    assert_eq!(balances(&h, 1), (0, 0, 0, 0));
    assert_eq!(balances(&h, 3), (0, 0, 0, 0));
    assert_eq!(
        lookup_transfers(&h.store, &[400]).expect("lookup")[0].status,
        Some(PendingStatus::Expired)
    );
    assert_eq!(
        h.apply(cmd(13_000, Op::Ledger(LedgerOp::ExpirePending { limit: 10 }))),
        Response::PendingExpired { expired: 0 }
    );
    check_invariants(&h);
}

#[test]
fn linked_chains_apply_all_or_nothing() {
    let mut h = setup();
    let linked = |t: Transfer| Transfer {
        flags: t.flags | tf::LINKED,
        ..t
    };
    let results = create_transfers(
        &mut h,
        2000,
        vec![
            linked(transfer(500, 1, 3, 10)),
            linked(transfer(501, 3, 1, 4)),
            transfer(502, 2, 1, 1),         // exceeds credits: the whole chain fails
            transfer(503, 1, 3, 1),         // not in the chain: applies
            linked(transfer(504, 1, 3, 1)), // chain left open at the end of the batch
        ],
    );
    assert_eq!(
        results,
        vec![
            (0, TransferResult::LinkedEventFailed),
            (1, TransferResult::LinkedEventFailed),
            (2, TransferResult::ExceedsCredits),
            (4, TransferResult::LinkedEventChainOpen),
        ]
    );
    assert_eq!(
        lookup_transfers(&h.store, &[500, 501, 502, 504]).expect("lookup"),
        vec![]
    );
    assert_eq!(balances(&h, 1), (0, 1, 0, 0));
    // Within a chain, later events see earlier ones: fund account 2, then spend it.
    let results = create_transfers(
        &mut h,
        2001,
        vec![linked(transfer(510, 1, 2, 5)), transfer(511, 2, 3, 5)],
    );
    assert_eq!(results, vec![]);
    check_invariants(&h);
}

#[test]
fn account_transfers_and_history_are_queryable_in_order() {
    let mut h = setup();
    create_transfers(&mut h, 2000, vec![transfer(600, 1, 2, 10)]);
    create_transfers(&mut h, 2001, vec![transfer(601, 2, 3, 3), transfer(602, 1, 2, 1)]);
    let filter = |debits, credits, reversed, limit| AccountFilter {
        account_id: 2,
        timestamp_min: 0,
        timestamp_max: 0,
        limit,
        debits,
        credits,
        reversed,
    };
    let ids = |ts: Vec<Transfer>| ts.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(get_account_transfers(&h.store, &filter(true, true, false, 10)).expect("q")),
        vec![600, 601, 602]
    );
    assert_eq!(
        ids(get_account_transfers(&h.store, &filter(false, false, true, 2)).expect("q")),
        vec![602, 601]
    );
    assert_eq!(
        ids(get_account_transfers(&h.store, &filter(false, true, false, 10)).expect("q")),
        vec![600, 602]
    );
    assert_eq!(
        ids(get_account_transfers(&h.store, &filter(true, false, false, 1)).expect("q")),
        vec![601]
    );
    let history = get_account_balances(&h.store, &filter(true, true, false, 10)).expect("history");
    let credits: Vec<_> = history.iter().map(|b| (b.debits_posted, b.credits_posted)).collect();
    assert_eq!(credits, vec![(0, 10), (3, 10), (3, 11)]);
    assert!(history.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    let account = 1u128..6;
    (
        1u128..40,
        account.clone(),
        account,
        0u128..60,
        0u8..6,
        1u128..40,
        0u32..3,
        any::<bool>(),
    )
        .prop_map(|(id, debit, credit, amount, kind, pending_id, timeout, linked)| {
            let flags = match kind {
                0 | 1 => 0,
                2 => tf::PENDING,
                3 => tf::POST_PENDING_TRANSFER,
                4 => tf::VOID_PENDING_TRANSFER,
                _ => tf::PENDING | tf::POST_PENDING_TRANSFER,
            } | if linked { tf::LINKED } else { 0 };
            let resolves = kind == 3 || kind == 4;
            Transfer {
                id,
                debit_account_id: if resolves { 0 } else { debit },
                credit_account_id: if resolves { 0 } else { credit },
                amount,
                pending_id: if resolves { pending_id } else { 0 },
                timeout: if kind == 2 { timeout } else { 0 },
                ledger: 1,
                code: 1,
                flags,
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random batches of transfers (plain, pending, post, void, linked, with timeouts and expiry
    /// sweeps in between) never break the invariants, and a transfer id is applied at most once.
    #[test]
    fn ledger_invariants_hold_over_random_batches(
        batches in prop::collection::vec((prop::collection::vec(transfer_strategy(), 1..12), 0u64..1500, any::<bool>()), 1..20)
    ) {
        let mut h = Harness::new();
        let flags = [0, af::DEBITS_MUST_NOT_EXCEED_CREDITS, af::CREDITS_MUST_NOT_EXCEED_DEBITS, af::HISTORY, 0];
        let accounts = (1..6).map(|id| account(id, flags[id as usize - 1])).collect();
        prop_assert_eq!(create_accounts(&mut h, 1000, accounts), vec![]);
        let mut now = 1000;
        let mut applied: BTreeSet<u128> = BTreeSet::new();
        for (batch, advance, sweep) in batches {
            now += advance;
            if sweep {
                h.apply(cmd(now, Op::Ledger(LedgerOp::ExpirePending { limit: 100 })));
            }
            let failures: BTreeMap<u32, TransferResult> = create_transfers(&mut h, now, batch.clone()).into_iter().collect();
            for (i, t) in batch.iter().enumerate() {
                if !failures.contains_key(&(i as u32)) {
                    prop_assert!(applied.insert(t.id), "transfer {} applied twice", t.id);
                } else if failures[&(i as u32)] == TransferResult::Exists {
                    prop_assert!(applied.contains(&t.id));
                }
            }
            check_invariants(&h);
        }
    }
}
