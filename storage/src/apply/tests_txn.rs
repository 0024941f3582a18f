//! Transactions: conditions choose the branch, a branch applies whole or not at all, exactly
//! once, in the home region when it touches homed data; and, as a property, a transaction equals
//! its ops applied one by one when they all succeed and changes nothing when one is refused.

use std::collections::BTreeMap;

use basalt_replication::Effect;
use proptest::prelude::*;

use super::tests::{cmd, counted, incr_op, put, Harness};
use super::tests_lease::acquire;
use super::tests_ledger::{account, create_accounts, transfer};
use super::tests_queue::{configure, enqueue, message};
use super::tests_replication::{batch, region};
use super::*;
use crate::command::{BalanceField, Branch, Compare, Condition, CounterAction, CounterOp, Txn, TxnError};
use crate::ledger::{account_flags as af, TransferResult};
use crate::queue::QueueConfig;
use crate::state::model::MemStore;
use crate::state::KvRecord;

fn txn(when: Vec<Condition>, then: Vec<Op>, otherwise: Vec<Op>) -> Op {
    Op::Txn(Txn { when, then, otherwise })
}

fn exists(key: &str, exists: bool) -> Condition {
    Condition::KvExists {
        key: key.into(),
        exists,
    }
}

fn bounded_incr(key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> Op {
    Op::Counter {
        ops: vec![CounterOp {
            key: key.into(),
            action: CounterAction::Incr { delta, min, max },
        }],
    }
}

fn transfers(transfers: Vec<crate::ledger::Transfer>) -> Op {
    Op::Ledger(LedgerOp::CreateTransfers { transfers })
}

fn get(key: &str) -> Op {
    Op::Kv(KvOp::Get { key: key.into() })
}

/// Every row but the applied clock and saved answers: what a refused transaction may not touch.
fn data(store: &MemStore) -> BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut tables = store.tables.clone();
    tables.remove(&Table::Meta);
    tables.remove(&Table::Session);
    tables.retain(|_, rows| !rows.is_empty());
    tables
}

#[test]
fn the_conditions_choose_the_branch_and_every_op_of_it_applies_at_one_revision() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(cmd(1, put("order/1", "new"))),
        Response::KvPut {
            revision: 1,
            prev_revision: None
        }
    );
    let pay = txn(
        vec![
            exists("order/1", true),
            Condition::KvValue {
                key: b"order/1".to_vec(),
                cmp: Compare::Eq,
                value: b"new".to_vec(),
            },
            Condition::KvVersion {
                key: b"order/1".to_vec(),
                cmp: Compare::Eq,
                version: 1,
            },
        ],
        vec![
            put("order/1", "paid"),
            put("outbox/1", "order paid"),
            incr_op("paid", 1),
        ],
        vec![get("order/1")],
    );
    let answer = h.apply(cmd(2, pay.clone()));
    assert_eq!(
        answer,
        Response::Txn {
            branch: Branch::Then,
            results: vec![
                Response::KvPut {
                    revision: 2,
                    prev_revision: Some(1)
                },
                Response::KvPut {
                    revision: 2,
                    prev_revision: None
                },
                counted(1),
            ],
        }
    );
    assert_eq!(h.kv("order/1").expect("order").value, b"paid");
    assert_eq!(h.kv("outbox/1").expect("outbox").mod_revision, 2);

    // The same transaction again: the value is no longer "new", so the else branch reads it.
    match h.apply(cmd(3, pay)) {
        Response::Txn {
            branch: Branch::Otherwise,
            results,
        } => match results.as_slice() {
            [Response::KvRecord(Some(record))] => {
                assert_eq!((record.value.as_slice(), record.version), (&b"paid"[..], 2))
            }
            other => panic!("expected the record, got {other:?}"),
        },
        other => panic!("expected the else branch, got {other:?}"),
    }
    assert_eq!(h.kv("order/1").expect("order").value, b"paid", "a read changes nothing");
}

#[test]
fn a_refused_op_aborts_the_whole_transaction_and_changes_nothing() {
    let mut h = Harness::new();
    h.apply(cmd(1, incr_op("stock", 2)));
    h.apply(cmd(2, put("a", "1")));
    let before = data(&h.store);
    // The counter may not go below 0: the third op is refused, the first two are undone.
    let order = txn(
        vec![],
        vec![
            put("a", "2"),
            put("reserved/1", "yes"),
            bounded_incr("stock", -3, Some(0), None),
        ],
        vec![],
    );
    assert_eq!(
        h.apply(cmd(3, order)),
        Response::TxnAborted {
            branch: Branch::Then,
            op: 2,
            answer: Box::new(Response::Counters(vec![CounterOutcome::BoundExceeded { value: 2 }])),
        }
    );
    assert_eq!(data(&h.store), before, "nothing of the transaction applied");

    // A failed compare-and-set aborts too, and so does a refusal of an op's own.
    let cas = txn(
        vec![],
        vec![
            incr_op("stock", 1),
            Op::Kv(KvOp::Put {
                key: b"a".to_vec(),
                value: b"3".to_vec(),
                ttl_ms: None,
                expect: Some(Expect::Absent),
            }),
        ],
        vec![],
    );
    assert_eq!(
        h.apply(cmd(4, cas)),
        Response::TxnAborted {
            branch: Branch::Then,
            op: 1,
            answer: Box::new(Response::KvConditionFailed { current: Some(2) }),
        }
    );
    let unknown_queue = txn(
        vec![],
        vec![
            incr_op("stock", 1),
            Op::Queue(QueueOp::Enqueue {
                queue: b"nope".to_vec(),
                messages: vec![message("x", 0)],
            }),
        ],
        vec![],
    );
    match h.apply(cmd(5, unknown_queue)) {
        Response::TxnAborted { op: 1, answer, .. } => assert!(
            matches!(*answer, Response::Refused(OpError::NotFound { .. })),
            "{answer:?}"
        ),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(data(&h.store), before);
}

#[test]
fn a_transaction_applies_once_and_a_retry_gets_its_answer() {
    let mut h = Harness::new();
    let mut c = cmd(1, txn(vec![], vec![incr_op("n", 5), put("k", "v")], vec![]));
    c.session = Some(Session {
        client_id: 7,
        seq: 1,
        first_incomplete_seq: 1,
    });
    let first = h.apply(c.clone());
    assert!(matches!(first, Response::Txn { .. }), "{first:?}");
    let after = data(&h.store);
    assert_eq!(h.apply(c), first, "the retry gets the saved answer");
    assert_eq!(data(&h.store), after, "and applies nothing");
}

#[test]
fn conditions_on_counters_fences_balances_and_queues() {
    let mut h = Harness::new();
    h.apply(cmd(1, incr_op("credits", 10)));
    let token = match h.apply(cmd(2, acquire("worker", "w1", 60_000))) {
        Response::Lease(crate::command::LeaseOutcome::Granted { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    assert_eq!(create_accounts(&mut h, 3, vec![account(1, 0), account(2, 0)]), vec![]);
    assert_eq!(
        h.apply(cmd(4, transfers(vec![transfer(10, 1, 2, 40)]))),
        Response::TransferResults(vec![])
    );
    configure(&mut h, "jobs", QueueConfig::default());
    enqueue(&mut h, 5, "jobs", vec![message("a", 0), message("b", 0)]);

    let branch_of = |h: &mut Harness, condition: Condition| match h
        .apply(cmd(6, txn(vec![condition], vec![get("x")], vec![get("x")])))
    {
        Response::Txn { branch, .. } => branch,
        other => panic!("{other:?}"),
    };
    let counter = |cmp, value| Condition::Counter {
        key: b"credits".to_vec(),
        cmp,
        value,
    };
    assert_eq!(branch_of(&mut h, counter(Compare::Ge, 10)), Branch::Then);
    assert_eq!(branch_of(&mut h, counter(Compare::Gt, 10)), Branch::Otherwise);
    assert_eq!(
        branch_of(
            &mut h,
            Condition::Counter {
                key: b"never".to_vec(),
                cmp: Compare::Eq,
                value: 0
            }
        ),
        Branch::Then,
        "an absent counter reads 0"
    );
    let fence = |token| Condition::Fence {
        lease: b"worker".to_vec(),
        token,
    };
    assert_eq!(branch_of(&mut h, fence(token)), Branch::Then);
    assert_eq!(branch_of(&mut h, fence(token + 1)), Branch::Otherwise);
    let balance = |account, field, cmp, amount| Condition::Balance {
        account,
        field,
        cmp,
        amount,
    };
    assert_eq!(
        branch_of(&mut h, balance(2, BalanceField::CreditsMinusDebits, Compare::Eq, 40)),
        Branch::Then
    );
    assert_eq!(
        branch_of(&mut h, balance(1, BalanceField::CreditsMinusDebits, Compare::Eq, -40)),
        Branch::Then
    );
    assert_eq!(
        branch_of(&mut h, balance(1, BalanceField::DebitsPosted, Compare::Lt, 40)),
        Branch::Otherwise
    );
    let depth = |queue: &str, cmp, depth| Condition::QueueDepth {
        queue: queue.into(),
        cmp,
        depth,
    };
    assert_eq!(branch_of(&mut h, depth("jobs", Compare::Eq, 2)), Branch::Then);
    assert_eq!(branch_of(&mut h, depth("jobs", Compare::Lt, 2)), Branch::Otherwise);
    assert_eq!(
        branch_of(
            &mut h,
            Condition::KvModRevision {
                key: b"absent".to_vec(),
                cmp: Compare::Eq,
                revision: 0
            }
        ),
        Branch::Then
    );

    // An unknown account or queue is an error, not a branch.
    for (unknown, what) in [
        (
            balance(99, BalanceField::CreditsPosted, Compare::Eq, 0),
            "ledger account",
        ),
        (depth("nope", Compare::Eq, 0), "queue"),
    ] {
        match h.apply(cmd(7, txn(vec![exists("x", false), unknown], vec![get("x")], vec![]))) {
            Response::Refused(OpError::Txn(TxnError::InvalidCondition { index: 1, reason })) => {
                assert!(
                    matches!(&*reason, OpError::NotFound { what: w, .. } if w == what),
                    "{reason:?}"
                )
            }
            other => panic!("expected the condition refused, got {other:?}"),
        }
    }
}

#[test]
fn bad_transactions_are_refused_with_typed_errors_before_and_at_apply() {
    let refusal = |op: &Op| validate_op(op).expect_err("refused");
    let nested = txn(vec![], vec![txn(vec![], vec![put("a", "1")], vec![])], vec![]);
    assert!(matches!(
        refusal(&nested),
        OpError::Txn(TxnError::NotTransactional { op: 0, .. })
    ));
    let upkeep = txn(vec![], vec![], vec![Op::Kv(KvOp::SweepExpired { limit: 1 })]);
    assert!(matches!(
        refusal(&upkeep),
        OpError::Txn(TxnError::NotTransactional {
            branch: Branch::Otherwise,
            ..
        })
    ));
    let twice = txn(vec![], vec![put("a", "1"), put("b", "1"), put("a", "2")], vec![]);
    assert!(matches!(
        refusal(&twice),
        OpError::Txn(TxnError::Repeated { op: 2, ref what, .. }) if what == "key"
    ));
    let enqueue_twice = |queue2: &str| {
        let enqueue = |q: &str| {
            Op::Queue(QueueOp::Enqueue {
                queue: q.into(),
                messages: vec![message("m", 0)],
            })
        };
        txn(vec![], vec![enqueue("q"), enqueue(queue2)], vec![])
    };
    validate_op(&enqueue_twice("q")).expect("two enqueues are numbered apart");
    validate_op(&enqueue_twice("r")).expect("two queues are fine");
    let lease_twice = txn(
        vec![],
        vec![
            acquire("l", "h1", 1000),
            Op::Lease(LeaseOp::Release {
                name: b"l".to_vec(),
                holder: b"h1".to_vec(),
                token: 1,
            }),
        ],
        vec![],
    );
    assert!(matches!(
        refusal(&lease_twice),
        OpError::Txn(TxnError::Repeated { op: 1, ref what, .. }) if what == "lease"
    ));
    let flood = |n: usize| {
        Op::Queue(QueueOp::Enqueue {
            queue: b"q".to_vec(),
            messages: (0..n).map(|_| message("", 0)).collect(),
        })
    };
    let too_many_messages = txn(
        vec![],
        (0..9).map(|_| flood(crate::limits::BATCH_ITEMS_MAX)).collect(),
        vec![],
    );
    assert!(matches!(
        refusal(&too_many_messages),
        OpError::Txn(TxnError::TooMany { .. })
    ));
    let in_both_branches = txn(vec![], vec![put("a", "1")], vec![put("a", "2")]);
    validate_op(&in_both_branches).expect("one key in each branch is fine");
    assert!(matches!(refusal(&txn(vec![], vec![], vec![])), OpError::Empty { .. }));
    let many = txn(
        vec![],
        (0..=crate::limits::TXN_OPS_MAX)
            .map(|i| incr_op(format!("c{i}"), 1))
            .collect(),
        vec![],
    );
    assert!(matches!(refusal(&many), OpError::Txn(TxnError::TooMany { .. })));
    let conditions = txn(
        (0..=crate::limits::TXN_CONDITIONS_MAX)
            .map(|_| exists("a", true))
            .collect(),
        vec![put("a", "1")],
        vec![],
    );
    assert!(matches!(refusal(&conditions), OpError::Txn(TxnError::TooMany { .. })));
    let big = Op::Kv(KvOp::Put {
        key: b"big".to_vec(),
        value: vec![0; crate::limits::VALUE_BYTES_MAX],
        ttl_ms: None,
        expect: None,
    });
    let huge = txn(
        vec![],
        (0..5)
            .map(|i| match &big {
                Op::Kv(KvOp::Put { value, .. }) => Op::Kv(KvOp::Put {
                    key: format!("big{i}").into_bytes(),
                    value: value.clone(),
                    ttl_ms: None,
                    expect: None,
                }),
                _ => unreachable!(),
            })
            .collect(),
        vec![],
    );
    assert!(matches!(refusal(&huge), OpError::Txn(TxnError::TooLarge { .. })));
    let bad_op = txn(vec![], vec![put("", "1")], vec![]);
    assert!(matches!(
        refusal(&bad_op),
        OpError::Txn(TxnError::InvalidOp { ref reason, .. }) if **reason == OpError::EmptyKey
    ));
    let bad_condition = txn(vec![exists("", true)], vec![put("a", "1")], vec![]);
    assert!(matches!(
        refusal(&bad_condition),
        OpError::Txn(TxnError::InvalidCondition { index: 0, .. })
    ));
    // A read is an op of a transaction only.
    assert!(matches!(refusal(&get("a")), OpError::Kv(KvError::OnlyInTxn { .. })));

    // Apply refuses what validation refuses (an entry of an older client), changing nothing.
    let mut h = Harness::new();
    assert!(matches!(h.apply(cmd(1, twice)), Response::Refused(OpError::Txn(_))));
    assert!(data(&h.store).is_empty());
}

#[test]
fn a_transaction_touching_homed_data_applies_only_at_the_home_and_ships_as_one_entry() {
    let mut home = region(1);
    let mut eu = region(2);
    assert_eq!(
        create_accounts(&mut home, 1000, vec![account(1, 0), account(2, 0)]),
        vec![]
    );
    let invoice = txn(
        vec![exists("invoice/7", false)],
        vec![
            put("invoice/7", "issued"),
            transfers(vec![transfer(70, 1, 2, 25)]),
            incr_op("invoices", 1),
        ],
        vec![get("invoice/7")],
    );
    // Elsewhere it is refused whole: a mix of replicated and homed types runs at the home.
    assert_eq!(
        eu.apply(cmd(1001, invoice.clone())),
        Response::Refused(OpError::Region(RegionError::NotHome { region: 2, home: 1 }))
    );
    assert!(eu.kv("invoice/7").is_none());
    assert!(matches!(
        home.apply(cmd(1002, invoice)),
        Response::Txn {
            branch: Branch::Then,
            ..
        }
    ));
    // One feed entry carries the KV write, the counter and the ledger rows together.
    let shipped = batch(&home, 1, 0);
    let entry = shipped.entries.last().expect("an entry");
    assert!(entry
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Kv { key, .. } if key == b"invoice/7")));
    assert!(entry
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Counter { key, .. } if key == b"invoices")));
    assert!(entry.effects.iter().any(|e| matches!(e, Effect::Row { .. })));
    assert!(matches!(
        eu.apply(cmd(1003, Op::Region(RegionOp::MergeFeed { batch: shipped }))),
        Response::ReplApplied { .. }
    ));
    assert_eq!(eu.kv("invoice/7").expect("merged").value, b"issued");
    assert_eq!(
        super::ledger::lookup_accounts(&eu.store, &[2]).expect("lookup")[0].credits_posted,
        25
    );

    // Region-local types alone apply in any region, and replicate from there.
    assert!(matches!(
        eu.apply(cmd(
            1004,
            txn(vec![], vec![put("eu/k", "v"), incr_op("eu/n", 1)], vec![])
        )),
        Response::Txn { .. }
    ));
    assert!(!batch(&eu, 2, 0).entries.is_empty());
}

/// One op of the property test, over a few keys, counters and accounts, so that some ops are
/// refused (a bound, a compare-and-set, a ledger limit).
fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..4, any::<bool>()).prop_map(|(k, v, absent)| Op::Kv(KvOp::Put {
            key: format!("k{k}").into_bytes(),
            value: vec![v; 3],
            ttl_ms: None,
            expect: absent.then_some(Expect::Absent),
        })),
        (0u8..6).prop_map(|k| Op::Kv(KvOp::Delete {
            key: format!("k{k}").into_bytes(),
            expect: None,
        })),
        (0u8..3, -5i64..6).prop_map(|(c, delta)| bounded_incr(&format!("c{c}"), delta, Some(0), Some(10))),
        (1u128..4, 1u128..4, 1u128..30, any::<u64>()).prop_map(|(debit, credit, amount, id)| {
            transfers(vec![transfer(u128::from(id), debit, credit, amount)])
        }),
    ]
}

fn apply_txn_or_each(setup: &[Op], ops: &[Op]) -> (Harness, Response, Harness, Option<usize>) {
    let fresh = || {
        let mut h = Harness::new();
        let accounts = vec![
            account(1, af::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(2, 0),
            account(3, af::CREDITS_MUST_NOT_EXCEED_DEBITS),
        ];
        assert_eq!(create_accounts(&mut h, 1, accounts), vec![]);
        for op in setup {
            h.apply(cmd(2, op.clone()));
        }
        h
    };
    let mut together = fresh();
    let answer = together.apply(cmd(3, txn(vec![], ops.to_vec(), vec![])));
    let mut each = fresh();
    let first_refused = ops.iter().position(|op| txn::refused(&each.apply(cmd(3, op.clone()))));
    (together, answer, each, first_refused)
}

/// Keys with their values and versions, counter rows, accounts.
type Visible = (
    Vec<(Vec<u8>, Vec<u8>, u64)>,
    Vec<(Vec<u8>, Vec<u8>)>,
    Vec<crate::ledger::Account>,
);

/// What a user reads back: values and versions of keys, counters, account balances.
fn visible(h: &Harness) -> Visible {
    let kv = h
        .store
        .scan(Table::Kv, &KeyRange::all(), usize::MAX)
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            let r = KvRecord::decode(&v).expect("decode");
            (k, r.value, r.version)
        })
        .collect();
    let counters = h
        .store
        .scan(Table::Counter, &KeyRange::all(), usize::MAX)
        .expect("scan");
    let accounts = super::ledger::lookup_accounts(&h.store, &[1, 2, 3])
        .expect("lookup")
        .into_iter()
        .map(|a| crate::ledger::Account { timestamp: 0, ..a })
        .collect();
    (kv, counters, accounts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A transaction equals its ops applied one by one when they all succeed; when one is
    /// refused, it aborts at that op (the first refused one by one) and changes nothing.
    #[test]
    fn a_transaction_is_its_ops_one_by_one_or_nothing(
        setup in proptest::collection::vec(arb_op(), 0..6),
        ops in proptest::collection::vec(arb_op(), 1..8),
    ) {
        // A branch writes each key once: keep the first write of each.
        let mut seen = std::collections::HashSet::new();
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|op| op.kv_write_keys().unwrap_or_default().iter().all(|k| seen.insert(k.to_vec())))
            .collect();
        prop_assume!(!ops.is_empty());
        let (together, answer, each, first_refused) = apply_txn_or_each(&setup, &ops);
        match (answer, first_refused) {
            (Response::Txn { branch: Branch::Then, results }, None) => {
                prop_assert_eq!(results.len(), ops.len());
                prop_assert_eq!(visible(&together), visible(&each));
            }
            (Response::TxnAborted { op, .. }, Some(at)) => {
                prop_assert_eq!(op as usize, at);
                let (untouched, _, _, _) = apply_txn_or_each(&setup, &[]);
                prop_assert_eq!(data(&together.store), data(&untouched.store));
            }
            (answer, first_refused) => prop_assert!(false, "txn answered {:?}, one by one refused at {:?}", answer, first_refused),
        }
    }
}

#[test]
fn a_ledger_failure_inside_a_transaction_names_the_op_and_its_result() {
    let mut h = Harness::new();
    assert_eq!(
        create_accounts(
            &mut h,
            1,
            vec![account(1, af::DEBITS_MUST_NOT_EXCEED_CREDITS), account(2, 0)]
        ),
        vec![]
    );
    let spend = txn(
        vec![],
        vec![put("spent", "yes"), transfers(vec![transfer(5, 1, 2, 10)])],
        vec![],
    );
    assert_eq!(
        h.apply(cmd(2, spend)),
        Response::TxnAborted {
            branch: Branch::Then,
            op: 1,
            answer: Box::new(Response::TransferResults(vec![(0, TransferResult::ExceedsCredits)])),
        }
    );
    assert!(h.kv("spent").is_none());
}

/// Messages enqueued by several ops of one transaction, to one queue or to a queue and its
/// dead-letter queue, get ids unique across queues: a message moved to the dead-letter queue
/// later overwrites nothing there.
#[test]
fn messages_of_one_transaction_are_numbered_apart_across_queues() {
    let mut h = Harness::new();
    configure(&mut h, "dead", QueueConfig::default());
    let jobs = QueueConfig {
        max_deliveries: 1,
        dead_letter_queue: Some(b"dead".to_vec()),
        visibility_timeout_ms: 10,
        ..QueueConfig::default()
    };
    configure(&mut h, "jobs", jobs);
    let enqueue = |queue: &str, payloads: &[&str]| {
        Op::Queue(QueueOp::Enqueue {
            queue: queue.into(),
            messages: payloads.iter().map(|p| message(p, 0)).collect(),
        })
    };
    let answer = h.apply(cmd(
        10,
        txn(
            vec![],
            vec![
                enqueue("jobs", &["j1", "j2"]),
                enqueue("dead", &["d1"]),
                enqueue("jobs", &["j3"]),
            ],
            vec![],
        ),
    ));
    let ids: Vec<u64> = match answer {
        Response::Txn { results, .. } => results
            .iter()
            .flat_map(|r| match r {
                Response::Enqueued(outcomes) => outcomes
                    .iter()
                    .map(|o| match o {
                        crate::queue::EnqueueOutcome::Enqueued { id }
                        | crate::queue::EnqueueOutcome::Duplicate { id } => *id,
                    })
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        4,
        "{ids:?}"
    );
    // Every jobs message is delivered once, then dead-lettered: the dead-letter queue holds all
    // four messages, none overwritten.
    for at in [20, 40, 60, 80] {
        let _ = super::tests_queue::receive(&mut h, at, "jobs", 10, None);
    }
    let dead = super::queue::stored_queue(&h.store, b"dead")
        .expect("read")
        .expect("queue");
    assert_eq!(dead.stats.messages, 4);
    for id in &ids {
        let row = h
            .store
            .get(Table::QueueMessage, &super::queue::message_key(b"dead", *id));
        assert!(row.expect("get").is_some(), "message {id} is in the dead-letter queue");
    }
}

#[test]
fn a_read_after_a_delete_sees_it_and_reads_past_their_budget_are_refused() {
    let mut h = Harness::new();
    h.apply(cmd(1, put("a", "1")));
    match h.apply(cmd(
        2,
        txn(
            vec![],
            vec![
                Op::Kv(KvOp::Delete {
                    key: b"a".to_vec(),
                    expect: None,
                }),
                get("a"),
            ],
            vec![],
        ),
    )) {
        Response::Txn { results, .. } => assert_eq!(results[1], Response::KvRecord(None)),
        other => panic!("{other:?}"),
    }
    let big = vec![7u8; crate::limits::VALUE_BYTES_MAX];
    for i in 0..17 {
        h.apply(cmd(
            3,
            Op::Kv(KvOp::Put {
                key: format!("big{i}").into_bytes(),
                value: big.clone(),
                ttl_ms: None,
                expect: None,
            }),
        ));
    }
    let reads = txn(vec![], (0..17).map(|i| get(&format!("big{i}"))).collect(), vec![]);
    assert!(matches!(
        h.apply(cmd(4, reads)),
        Response::Refused(OpError::Txn(TxnError::AnswerTooLarge { .. }))
    ));
}

/// A condition on homed data makes the transaction homed, even with region-local ops only.
#[test]
fn a_condition_on_homed_data_makes_the_transaction_run_at_the_home() {
    let mut eu = region(2);
    let fenced = txn(
        vec![Condition::Fence {
            lease: b"l".to_vec(),
            token: 1,
        }],
        vec![put("k", "v")],
        vec![],
    );
    assert!(Op::is_homed(&fenced));
    assert_eq!(
        eu.apply(cmd(1, fenced)),
        Response::Refused(OpError::Region(RegionError::NotHome { region: 2, home: 1 }))
    );
    assert!(!Op::is_homed(&txn(
        vec![exists("k", true)],
        vec![put("k", "v")],
        vec![]
    )));
}
