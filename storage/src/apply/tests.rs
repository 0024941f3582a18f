use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::command::{CounterAction, CounterOp, CounterOutcome, Expect, KvWrite, Session};
use crate::state::model::MemStore;
use crate::state::{KeyRange, KvRecord, StoreError};

pub(super) fn cmd(stamp_ms: u64, op: Op) -> Command {
    Command {
        stamp: HlcStamp::from_parts(stamp_ms, 0),
        session: None,
        fence: None,
        op,
    }
}

pub(super) fn incr_op(key: impl Into<Vec<u8>>, delta: i64) -> Op {
    Op::Counter {
        ops: vec![CounterOp {
            key: key.into(),
            action: CounterAction::Incr {
                delta,
                min: None,
                max: None,
            },
        }],
    }
}

pub(super) fn counted(value: i64) -> Response {
    Response::Counters(vec![CounterOutcome::Applied { value }])
}

pub(super) fn put(key: &str, value: &str) -> Op {
    Op::Kv(KvOp::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms: None,
        expect: None,
    })
}

/// Applies commands one entry per batch, committing after each, like the state machine does.
pub(super) struct Harness {
    pub(super) store: MemStore,
    pub(super) applier: Applier,
    pub(super) index: u64,
}

impl Harness {
    pub(super) fn new() -> Self {
        Harness {
            store: MemStore::default(),
            applier: Applier::default(),
            index: 0,
        }
    }

    /// A region whose topology is `topology` from the start (written outside the log, so the
    /// first entry a test applies is still index 1).
    pub(super) fn in_region(topology: &topology::RegionTopology) -> Self {
        let mut writes = WriteSet::default();
        topology::seed(&mut writes, topology);
        let mut store = MemStore::default();
        store.commit(&writes);
        let applier = Applier::load(&store).expect("load");
        assert_eq!(applier.region(), topology.role());
        Harness {
            store,
            applier,
            index: 0,
        }
    }

    pub(super) fn last_stamp(&self) -> HlcStamp {
        self.applier.last_stamp()
    }

    pub(super) fn apply(&mut self, command: Command) -> Response {
        self.index += 1;
        let mut writes = WriteSet::default();
        let response = self
            .applier
            .apply(&self.store, &mut writes, self.index, &command)
            .expect("apply");
        self.store.commit(&writes);
        response
    }

    pub(super) fn kv(&self, key: &str) -> Option<KvRecord> {
        self.store
            .get(Table::Kv, key.as_bytes())
            .expect("get")
            .map(|b| KvRecord::decode(&b).expect("decode"))
    }
}

#[test]
fn put_sets_revisions_and_versions() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(cmd(1, put("a", "1"))),
        Response::KvPut {
            revision: 1,
            prev_revision: None
        }
    );
    assert_eq!(
        h.apply(cmd(2, put("a", "2"))),
        Response::KvPut {
            revision: 2,
            prev_revision: Some(1)
        }
    );
    let record = h.kv("a").expect("present");
    assert_eq!((record.create_revision, record.mod_revision, record.version), (1, 2, 2));
    assert_eq!(record.value, b"2");
}

#[test]
fn a_kv_batch_answers_each_write_at_one_revision() {
    let mut h = Harness::new();
    h.apply(cmd(1, put("taken", "old")));
    let batch = Op::Kv(KvOp::Batch {
        writes: vec![
            KvWrite::Put {
                key: "a".into(),
                value: "1".into(),
                ttl_ms: None,
                expect: None,
            },
            KvWrite::Put {
                key: "taken".into(),
                value: "new".into(),
                ttl_ms: None,
                expect: Some(Expect::Absent),
            },
            KvWrite::Put {
                key: "".into(),
                value: "x".into(),
                ttl_ms: None,
                expect: None,
            },
            KvWrite::Delete {
                key: "missing".into(),
                expect: None,
            },
        ],
    });
    assert_eq!(
        h.apply(cmd(2, batch)),
        Response::KvBatch(vec![
            Response::KvPut {
                revision: 2,
                prev_revision: None
            },
            Response::KvConditionFailed { current: Some(1) },
            Response::Refused(OpError::EmptyKey),
            Response::KvDelete {
                revision: 2,
                deleted: false
            },
        ])
    );
    assert_eq!(h.kv("a").expect("written").mod_revision, 2);
    assert_eq!(h.kv("taken").expect("kept").value, b"old");
    let revisions: Vec<(u64, String)> = history(&h).into_iter().map(|(rev, key, _)| (rev, key)).collect();
    assert_eq!(revisions, [(1, "taken".to_string()), (2, "a".to_string())]);

    let twice = Op::Kv(KvOp::Batch {
        writes: vec![
            KvWrite::Delete {
                key: "a".into(),
                expect: None,
            },
            KvWrite::Delete {
                key: "a".into(),
                expect: None,
            },
        ],
    });
    assert_eq!(
        h.apply(cmd(3, twice)),
        Response::Refused(OpError::Kv(KvError::DuplicateKey { key: "a".into() }))
    );
    assert!(h.kv("a").is_some(), "a refused batch deletes nothing");
}

#[test]
fn a_retried_kv_batch_applies_once() {
    let mut h = Harness::new();
    let batch = || {
        with_session(
            cmd(
                1,
                Op::Kv(KvOp::Batch {
                    writes: vec![KvWrite::Put {
                        key: "k".into(),
                        value: "v".into(),
                        ttl_ms: None,
                        expect: Some(Expect::Absent),
                    }],
                }),
            ),
            42,
            1,
            1,
        )
    };
    let first = h.apply(batch());
    assert_eq!(
        first,
        Response::KvBatch(vec![Response::KvPut {
            revision: 1,
            prev_revision: None
        }])
    );
    assert_eq!(h.apply(batch()), first, "the retry gets the first answer");
    assert_eq!(h.kv("k").expect("present").version, 1);
}

/// A lone region keeps no tombstones, so a put must not write the delete of one: in RocksDB every
/// delete is a marker inserted into the memtable, one more per put for nothing.
#[test]
fn a_lone_region_put_touches_only_the_key_and_its_history() {
    let store = MemStore::default();
    let mut applier = Applier::default();
    let mut writes = WriteSet::default();
    applier
        .apply(&store, &mut writes, 1, &cmd(1, put("k", "v")))
        .expect("apply");
    let tables: Vec<Table> = writes.iter().map(|(table, _, _)| table).collect();
    assert_eq!(tables, [Table::Meta, Table::Kv, Table::KvHistory], "{writes:?}");
}

#[test]
fn cas_on_revision_and_absence() {
    let mut h = Harness::new();
    let cas = |expect, v: &str| {
        Op::Kv(KvOp::Put {
            key: "k".into(),
            value: v.into(),
            ttl_ms: None,
            expect: Some(expect),
        })
    };
    assert_eq!(
        h.apply(cmd(1, cas(Expect::Absent, "first"))),
        Response::KvPut {
            revision: 1,
            prev_revision: None
        }
    );
    assert_eq!(
        h.apply(cmd(2, cas(Expect::Absent, "again"))),
        Response::KvConditionFailed { current: Some(1) }
    );
    assert_eq!(
        h.apply(cmd(3, cas(Expect::Revision(7), "wrong"))),
        Response::KvConditionFailed { current: Some(1) }
    );
    assert_eq!(
        h.apply(cmd(4, cas(Expect::Revision(1), "second"))),
        Response::KvPut {
            revision: 4,
            prev_revision: Some(1)
        }
    );
    assert_eq!(h.kv("k").expect("present").value, b"second");
}

#[test]
fn ttl_expiry_is_decided_by_entry_stamps() {
    let mut h = Harness::new();
    h.apply(cmd(
        1_000,
        Op::Kv(KvOp::Put {
            key: "t".into(),
            value: "v".into(),
            ttl_ms: Some(500),
            expect: None,
        }),
    ));
    assert_eq!(h.kv("t").expect("stored").expires_at_ms, Some(1_500));
    // Before expiry the key counts as present for CAS.
    assert_eq!(
        h.apply(cmd(
            1_499,
            Op::Kv(KvOp::Put {
                key: "t".into(),
                value: "x".into(),
                ttl_ms: None,
                expect: Some(Expect::Absent)
            })
        )),
        Response::KvConditionFailed { current: Some(1) }
    );
    // At the expiry stamp it is gone, whatever any clock says.
    assert_eq!(
        h.apply(cmd(
            1_500,
            Op::Kv(KvOp::Put {
                key: "t".into(),
                value: "y".into(),
                ttl_ms: None,
                expect: Some(Expect::Absent)
            })
        )),
        Response::KvPut {
            revision: 3,
            prev_revision: None
        }
    );
    let record = h.kv("t").expect("present");
    assert_eq!(
        (record.create_revision, record.version, record.expires_at_ms),
        (3, 1, None)
    );
    assert!(
        h.store
            .scan(Table::KvExpiry, &KeyRange::all(), 10)
            .expect("scan")
            .is_empty(),
        "expiry index cleaned"
    );
}

/// A put keeping the ttl leaves the key's deadline where it was, however late it applies: a
/// counter rewritten every millisecond still expires on time (Redis's `INCR` on a key with a
/// ttl). On a key without one, or absent, it writes a key that never expires; and the old
/// deadline's expiry index row stays the one that sweeps it.
#[test]
fn a_put_keeping_the_ttl_never_moves_the_deadline() {
    let mut h = Harness::new();
    let keep = |value: &str| {
        Op::Kv(KvOp::PutKeepTtl {
            key: "c".into(),
            value: value.into(),
            expect: None,
        })
    };
    h.apply(cmd(
        1_000,
        Op::Kv(KvOp::Put {
            key: "c".into(),
            value: "0".into(),
            ttl_ms: Some(500),
            expect: None,
        }),
    ));
    for (i, stamp) in (1_100..1_500).step_by(100).enumerate() {
        let answer = h.apply(cmd(stamp, keep(&(i + 1).to_string())));
        assert!(matches!(answer, Response::KvPut { .. }), "{answer:?}");
        assert_eq!(h.kv("c").expect("live").expires_at_ms, Some(1_500));
    }
    let expiry_rows = h.store.scan(Table::KvExpiry, &KeyRange::all(), 10).expect("scan");
    assert_eq!(expiry_rows.len(), 1, "one expiry row, at the first deadline");
    // At the deadline the key is gone; a put keeping the ttl now creates one without a ttl.
    h.apply(cmd(1_500, keep("fresh")));
    let record = h.kv("c").expect("present");
    assert_eq!(
        (record.value.as_slice(), record.expires_at_ms, record.version),
        (&b"fresh"[..], None, 1)
    );
    // Like any put it obeys its expectation.
    assert_eq!(
        h.apply(cmd(
            1_600,
            Op::Kv(KvOp::PutKeepTtl {
                key: "c".into(),
                value: "x".into(),
                expect: Some(Expect::Absent),
            })
        )),
        Response::KvConditionFailed { current: Some(6) }
    );
}

#[test]
fn stamps_never_go_backwards_across_leaders() {
    let mut h = Harness::new();
    h.apply(cmd(
        10_000,
        Op::Kv(KvOp::Put {
            key: "t".into(),
            value: "v".into(),
            ttl_ms: Some(100),
            expect: None,
        }),
    ));
    // A new leader with a clock 5 s behind: its stamps are raised to the last applied one, so the
    // key (expiring at 10_100) is still live and its TTL is not extended by the skew.
    h.apply(cmd(
        5_000,
        Op::Kv(KvOp::Put {
            key: "u".into(),
            value: "v".into(),
            ttl_ms: Some(100),
            expect: None,
        }),
    ));
    assert_eq!(h.kv("u").expect("stored").expires_at_ms, Some(10_100));
    assert_eq!(h.applier.last_stamp().physical_ms(), 10_000);
}

#[test]
fn sweep_removes_only_due_keys() {
    let mut h = Harness::new();
    for (k, ttl) in [("a", 100), ("b", 200), ("c", 300)] {
        h.apply(cmd(
            1_000,
            Op::Kv(KvOp::Put {
                key: k.into(),
                value: "v".into(),
                ttl_ms: Some(ttl),
                expect: None,
            }),
        ));
    }
    h.apply(cmd(1_000, put("forever", "v")));
    // "b" was rewritten without TTL: its old expiry entry must not delete it.
    h.apply(cmd(1_050, put("b", "kept")));
    assert_eq!(
        h.apply(cmd(1_250, Op::Kv(KvOp::SweepExpired { limit: 100 }))),
        Response::Swept { removed: 1 }
    );
    assert!(h.kv("a").is_none());
    assert!(h.kv("b").is_some() && h.kv("c").is_some() && h.kv("forever").is_some());
    assert_eq!(
        h.apply(cmd(2_000, Op::Kv(KvOp::SweepExpired { limit: 100 }))),
        Response::Swept { removed: 1 }
    );
    assert!(h.kv("c").is_none());
}

#[test]
fn delete_reports_whether_a_live_key_existed() {
    let mut h = Harness::new();
    h.apply(cmd(1, put("d", "v")));
    assert_eq!(
        h.apply(cmd(
            2,
            Op::Kv(KvOp::Delete {
                key: "d".into(),
                expect: None
            })
        )),
        Response::KvDelete {
            revision: 2,
            deleted: true
        }
    );
    assert_eq!(
        h.apply(cmd(
            3,
            Op::Kv(KvOp::Delete {
                key: "d".into(),
                expect: None
            })
        )),
        Response::KvDelete {
            revision: 3,
            deleted: false
        }
    );
    assert!(h.kv("d").is_none());
}

#[test]
fn counters_add_and_refuse_overflow() {
    let mut h = Harness::new();
    let incr = |d| incr_op("c", d);
    assert_eq!(h.apply(cmd(1, incr(5))), counted(5));
    assert_eq!(h.apply(cmd(2, incr(-7))), counted(-2));
    let before = h.store.clone();
    assert!(matches!(
        h.apply(cmd(3, incr(i64::MIN))),
        Response::Counters(c) if c == vec![CounterOutcome::Overflow { value: -2 }]
    ));
    assert_eq!(
        h.store.get(Table::Counter, b"c").expect("get"),
        before.get(Table::Counter, b"c").expect("get")
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing_but_the_clock() {
    let mut h = Harness::new();
    let cases = [
        Op::Kv(KvOp::Put {
            key: vec![],
            value: vec![],
            ttl_ms: None,
            expect: None,
        }),
        Op::Kv(KvOp::Put {
            key: vec![b'k'; crate::limits::KEY_BYTES_MAX + 1],
            value: vec![],
            ttl_ms: None,
            expect: None,
        }),
        Op::Kv(KvOp::Put {
            key: b"k".to_vec(),
            value: vec![0; crate::limits::VALUE_BYTES_MAX + 1],
            ttl_ms: None,
            expect: None,
        }),
        Op::Kv(KvOp::Put {
            key: b"k".to_vec(),
            value: vec![],
            ttl_ms: Some(0),
            expect: None,
        }),
        incr_op(vec![], 1),
        Op::Kv(KvOp::Delete {
            key: vec![],
            expect: None,
        }),
    ];
    for op in cases {
        assert!(validate_op(&op).is_err(), "{op:?} passes validation");
        let response = h.apply(cmd(1, op.clone()));
        assert!(matches!(response, Response::Refused(_)), "{op:?} gave {response:?}");
        for table in [Table::Kv, Table::KvExpiry, Table::Counter, Table::Session] {
            assert!(
                h.store.scan(table, &KeyRange::all(), 10).expect("scan").is_empty(),
                "{op:?} wrote to {table:?}"
            );
        }
    }
}

fn with_session(mut c: Command, client_id: u128, seq: u64, first_incomplete_seq: u64) -> Command {
    c.session = Some(Session {
        client_id,
        seq,
        first_incomplete_seq,
    });
    c
}

#[test]
fn retried_request_applies_once_and_returns_first_answer() {
    let mut h = Harness::new();
    let incr = incr_op("c", 10);
    let first = h.apply(with_session(cmd(1, incr.clone()), 7, 1, 1));
    assert_eq!(first, counted(10));
    let retry = h.apply(with_session(cmd(2, incr.clone()), 7, 1, 1));
    assert_eq!(retry, first, "same answer");
    assert_eq!(h.apply(with_session(cmd(3, incr.clone()), 7, 2, 1)), counted(20));
    // Another client with the same seq is a different request.
    assert_eq!(h.apply(with_session(cmd(4, incr.clone()), 8, 1, 1)), counted(30));
}

#[test]
fn forgotten_answers_are_refused_not_reapplied() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    for seq in 1..=5 {
        h.apply(with_session(cmd(seq, incr.clone()), 1, seq, seq));
    }
    // seq 6 says the client has every answer below 6: 1..=5 are forgotten.
    h.apply(with_session(cmd(6, incr.clone()), 1, 6, 6));
    let saved = h.store.scan(Table::Session, &KeyRange::all(), 100).expect("scan");
    assert_eq!(saved.len(), 2, "the floor and the answer to seq 6: {saved:?}");
    let late_retry = h.apply(with_session(cmd(7, incr.clone()), 1, 3, 3));
    assert!(matches!(
        late_retry,
        Response::Refused(OpError::SessionExpired { seq: 3, .. })
    ));
    let stored = h.store.get(Table::Counter, b"c").expect("get");
    assert_eq!(stored.as_deref().and_then(counter::decode_counter), Some(6));
}

/// `session_answered` tells a request applied before (its answer kept, or forgotten below the
/// client's floor) from one never applied, without applying anything: what a long-poll's retry
/// asks before it waits.
#[test]
fn a_session_tells_whether_its_request_was_answered() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    let session = |client_id, seq| Session {
        client_id,
        seq,
        first_incomplete_seq: seq,
    };
    assert!(!session_answered(&h.store, &session(1, 1)).expect("read"), "never seen");
    for seq in 1..=3 {
        h.apply(with_session(cmd(seq, incr.clone()), 1, seq, 1));
    }
    assert!(session_answered(&h.store, &session(1, 2)).expect("read"), "kept");
    assert!(
        !session_answered(&h.store, &session(1, 4)).expect("read"),
        "not yet sent"
    );
    assert!(
        !session_answered(&h.store, &session(2, 2)).expect("read"),
        "another client"
    );
    // seq 5 says the client has every answer below 5: 1..=3 are forgotten, still answered.
    h.apply(with_session(cmd(5, incr.clone()), 1, 5, 5));
    assert!(session_answered(&h.store, &session(1, 2)).expect("read"), "forgotten");
    assert!(
        !session_answered(&h.store, &session(1, 6)).expect("read"),
        "above the floor"
    );
    let stored = h.store.get(Table::Counter, b"c").expect("get");
    assert_eq!(
        stored.as_deref().and_then(counter::decode_counter),
        Some(4),
        "asking applied nothing"
    );
}

#[test]
fn concurrent_requests_of_one_client_may_apply_out_of_order() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    h.apply(with_session(cmd(1, incr.clone()), 1, 2, 1));
    assert_eq!(h.apply(with_session(cmd(2, incr.clone()), 1, 1, 1)), counted(2));
    assert_eq!(
        h.apply(with_session(cmd(3, incr.clone()), 1, 2, 1)),
        counted(1),
        "retry of seq 2"
    );
}

// ---- property tests -------------------------------------------------------------------------

fn counter_action_strategy() -> impl Strategy<Value = CounterAction> {
    prop_oneof![
        4 => (-5i64..5, prop::option::of(-10i64..0), prop::option::of(0i64..10))
            .prop_map(|(delta, min, max)| CounterAction::Incr { delta, min, max }),
        1 => (-3i64..3).prop_map(|value| CounterAction::Set { value }),
        1 => Just(CounterAction::Delete),
        2 => (-5i64..5, prop::option::of(-10i64..0), prop::option::of(0i64..10), 1u64..60)
            .prop_map(|(delta, min, max, ttl_ms)| CounterAction::IncrExpiring { delta, min, max, ttl_ms }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(|k| k.as_bytes().to_vec());
    prop_oneof![
        3 => (key.clone(), any::<u8>(), prop::option::of(1u64..50), prop::option::of(prop_oneof![Just(Expect::Absent), (0u64..20).prop_map(Expect::Revision)]))
            .prop_map(|(key, v, ttl_ms, expect)| Op::Kv(KvOp::Put { key, value: vec![v], ttl_ms, expect })),
        1 => (key.clone(), prop::option::of((0u64..20).prop_map(Expect::Revision))).prop_map(|(key, expect)| Op::Kv(KvOp::Delete { key, expect })),
        2 => prop::collection::vec((key.clone(), counter_action_strategy()), 1..4)
            .prop_map(|ops| Op::Counter { ops: ops.into_iter().map(|(key, action)| CounterOp { key, action }).collect() }),
        1 => (1u32..4).prop_map(|limit| Op::Kv(KvOp::SweepExpired { limit })),
        // Mostly distinct keys; now and then one twice, which refuses the whole batch.
        2 => prop::collection::vec((key.clone(), kv_write_strategy()), 1..5)
            .prop_map(|writes| Op::Kv(KvOp::Batch { writes: writes.into_iter().map(|(key, write)| write(key)).collect() })),
    ]
}

/// A put or delete of a key still to be chosen.
fn kv_write_strategy() -> impl Strategy<Value = fn(Vec<u8>) -> KvWrite> {
    prop::sample::select(vec![
        (|key| KvWrite::Put {
            key,
            value: b"v".to_vec(),
            ttl_ms: None,
            expect: None,
        }) as fn(Vec<u8>) -> KvWrite,
        |key| KvWrite::Put {
            key,
            value: b"t".to_vec(),
            ttl_ms: Some(20),
            expect: None,
        },
        |key| KvWrite::Put {
            key,
            value: b"n".to_vec(),
            ttl_ms: None,
            expect: Some(Expect::Absent),
        },
        |key| KvWrite::Delete { key, expect: None },
        |key| KvWrite::Delete {
            key,
            expect: Some(Expect::Revision(3)),
        },
    ])
}

/// A straightforward model of KV and counters: a key's value, mod revision and expiry; a
/// counter's value and expiry.
#[derive(Default)]
struct Model {
    kv: BTreeMap<Vec<u8>, (Vec<u8>, u64, Option<u64>)>,
    counters: BTreeMap<Vec<u8>, (i64, Option<u64>)>,
}

impl Model {
    /// A counter as read at `now`: 0 without an expiry once expired; a counter at 0 holds none.
    fn counter(&self, key: &[u8], now: u64) -> (i64, Option<u64>) {
        match self.counters.get(key).copied().unwrap_or_default() {
            (_, Some(at)) if at <= now => (0, None),
            (0, _) => (0, None),
            live => live,
        }
    }

    fn counter_ops(&mut self, now: u64, ops: &[CounterOp]) -> Response {
        // A refusal refuses the whole request: nothing of it applies.
        let before = self.counters.clone();
        let mut outcomes = Vec::new();
        for op in ops {
            let (current, expiry) = self.counter(&op.key, now);
            let (outcome, expiry) = match op.action {
                CounterAction::Set { value } => (CounterOutcome::Applied { value }, expiry),
                // An absent counter reads 0, as a deleted one does.
                CounterAction::Delete => (CounterOutcome::Applied { value: 0 }, None),
                CounterAction::Window { .. } => unreachable!("the model generates no windowed changes"),
                // The model is a lone region, where escrow does not exist.
                CounterAction::Transfer { .. } => unreachable!("the model generates no transfers"),
                CounterAction::Incr { delta, min, max } => (bounded(current, delta, min, max), expiry),
                // The TTL is fixed when the counter is created; a counter holding a value
                // without one refuses it.
                CounterAction::IncrExpiring { .. } if expiry.is_none() && current != 0 => {
                    self.counters = before;
                    return Response::Refused(OpError::Counter(CounterError::NotExpiring {
                        key: lossy(&op.key),
                        value: current,
                    }));
                }
                CounterAction::IncrExpiring {
                    delta,
                    min,
                    max,
                    ttl_ms,
                } => (bounded(current, delta, min, max), expiry.or(Some(now + ttl_ms))),
            };
            if let CounterOutcome::Applied { value } = outcome {
                self.counters.insert(op.key.clone(), (value, expiry));
            }
            outcomes.push(outcome);
        }
        Response::Counters(outcomes)
    }

    fn live(&self, key: &[u8], now: u64) -> Option<&(Vec<u8>, u64, Option<u64>)> {
        self.kv.get(key).filter(|(_, _, exp)| exp.is_none_or(|e| now < e))
    }

    fn put(
        &mut self,
        index: u64,
        now: u64,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        expect: Option<Expect>,
    ) -> Response {
        let live = self.live(key, now).map(|(_, rev, _)| *rev);
        let ok = match expect {
            None => true,
            Some(Expect::Absent) => live.is_none(),
            Some(Expect::Revision(r)) => live == Some(r),
        };
        if !ok {
            return Response::KvConditionFailed { current: live };
        }
        self.kv
            .insert(key.to_vec(), (value.to_vec(), index, ttl_ms.map(|t| now + t)));
        Response::KvPut {
            revision: index,
            prev_revision: live,
        }
    }

    fn delete(&mut self, index: u64, now: u64, key: &[u8], expect: Option<Expect>) -> Response {
        let live = self.live(key, now).map(|(_, rev, _)| *rev);
        if let Some(Expect::Revision(r)) = expect {
            if live != Some(r) {
                return Response::KvConditionFailed { current: live };
            }
        }
        self.kv.remove(key);
        Response::KvDelete {
            revision: index,
            deleted: live.is_some(),
        }
    }

    fn apply(&mut self, index: u64, now: u64, op: &Op) -> Response {
        match op {
            Op::Kv(KvOp::Put {
                key,
                value,
                ttl_ms,
                expect,
            }) => self.put(index, now, key, value, *ttl_ms, *expect),
            Op::Kv(KvOp::Delete { key, expect }) => self.delete(index, now, key, *expect),
            Op::Kv(KvOp::Batch { writes }) => {
                let mut keys = std::collections::BTreeSet::new();
                if let Some(twice) = writes.iter().find(|w| !keys.insert(w.key())) {
                    return Response::Refused(OpError::Kv(KvError::DuplicateKey {
                        key: lossy(twice.key()),
                    }));
                }
                Response::KvBatch(
                    writes
                        .iter()
                        .map(|w| match w {
                            KvWrite::Put {
                                key,
                                value,
                                ttl_ms,
                                expect,
                            } => self.put(index, now, key, value, *ttl_ms, *expect),
                            KvWrite::Delete { key, expect } => self.delete(index, now, key, *expect),
                        })
                        .collect(),
                )
            }
            Op::Counter { ops } => self.counter_ops(now, ops),
            Op::Kv(KvOp::SweepExpired { .. }) => Response::Swept { removed: 0 },
            other => unreachable!("the strategy generates no {other:?}"),
        }
    }
}

/// An increment by `delta` of a counter at `current` within the bounds.
fn bounded(current: i64, delta: i64, min: Option<i64>, max: Option<i64>) -> CounterOutcome {
    let next = current + delta;
    if min.is_some_and(|m| next < m) || max.is_some_and(|m| next > m) {
        CounterOutcome::BoundExceeded { value: current }
    } else {
        CounterOutcome::Applied { value: next }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Apply agrees with the model on every response and on the live state (keys, counters
    /// with their expiry).
    #[test]
    fn apply_matches_model(ops in prop::collection::vec((0u64..30, op_strategy()), 1..60)) {
        let mut h = Harness::new();
        let mut model = Model::default();
        let mut now = 0;
        for (step, op) in ops {
            now += step;
            let response = h.apply(cmd(now, op.clone()));
            let expected = model.apply(h.index, now, &op);
            match (&response, &expected) {
                (Response::Swept { .. }, Response::Swept { .. }) => {}
                _ => prop_assert_eq!(&response, &expected, "op {:?}", op),
            }
            for key in [b"a", b"b", b"c", b"d"] {
                let actual = h.kv(std::str::from_utf8(key).expect("utf8")).filter(|r| r.is_live_at(now)).map(|r| (r.value, r.mod_revision));
                let wanted = model.live(key, now).map(|(v, rev, _)| (v.clone(), *rev));
                prop_assert_eq!(actual, wanted);
            }
            let keys: Vec<Vec<u8>> = [b"a", b"b", b"c", b"d"].iter().map(|k| k.to_vec()).collect();
            let (reads, judged_at) = counter::read_counters(&h.store, &keys).expect("read");
            prop_assert_eq!(judged_at, now);
            for (key, read) in keys.iter().zip(reads) {
                prop_assert_eq!((read.value, read.expires_at_ms), model.counter(key, now), "counter {:?}", key);
            }
        }
    }

    /// Splitting the log into batches anywhere gives the same state: the overlay of pending
    /// writes behaves exactly like committed state.
    #[test]
    fn batch_boundaries_do_not_matter(
        ops in prop::collection::vec((0u64..30, op_strategy()), 1..40),
        cuts in prop::collection::vec(any::<bool>(), 40),
    ) {
        let commands: Vec<_> = ops.iter().scan(0, |now, (step, op)| { *now += step; Some(cmd(*now, op.clone())) }).collect();
        let mut one_by_one = Harness::new();
        let responses_a: Vec<_> = commands.iter().map(|c| one_by_one.apply(c.clone())).collect();

        let mut store = MemStore::default();
        let mut applier = Applier::default();
        let mut writes = WriteSet::default();
        let mut responses_b = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            responses_b.push(applier.apply(&store, &mut writes, i as u64 + 1, c).expect("apply"));
            if cuts[i] {
                store.commit(&writes);
                writes = WriteSet::default();
            }
        }
        store.commit(&writes);
        prop_assert_eq!(responses_a, responses_b);
        prop_assert_eq!(one_by_one.store, store);
    }
}

/// Counts the entries scans return: the work apply asks of the store.
struct CountingStore {
    inner: MemStore,
    scanned: std::cell::Cell<usize>,
}

impl StoreRead for CountingStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<crate::state::KeyValue>, StoreError> {
        let out = self.inner.scan(table, range, limit)?;
        self.scanned.set(self.scanned.get() + out.len());
        Ok(out)
    }
}

/// Records where every scan of one table starts.
pub(super) struct ScanStarts<'a> {
    pub(super) inner: &'a MemStore,
    pub(super) table: Table,
    pub(super) starts: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl StoreRead for ScanStarts<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<crate::state::KeyValue>, StoreError> {
        if table == self.table {
            self.starts.borrow_mut().push(range.start.clone());
        }
        self.inner.scan(table, range, limit)
    }
}

/// Regression: history compaction, and the leader's check for it every second, scanned the
/// history from the table's beginning, where RocksDB keeps the tombstones of every earlier
/// compaction: each scan stepped over all of them, and puts got slower as history was
/// compacted. Both must start at the history's start.
#[test]
fn history_compaction_scans_from_the_history_start() {
    let mut h = Harness::new();
    for i in 0..10 {
        h.apply(cmd(i + 1, put("k", "v")));
    }
    h.apply(cmd(20, Op::Kv(KvOp::Compact { below: 6, limit: 100 })));
    assert_eq!(kv::history_start(&h.store).expect("start"), 6);
    let recorder = ScanStarts {
        inner: &h.store,
        table: Table::KvHistory,
        starts: Default::default(),
    };
    assert_eq!(kv::compaction_due(&recorder, 11, 2).expect("due"), Some(9));
    let mut writes = WriteSet::default();
    let mut view = View {
        base: &recorder,
        writes: &mut writes,
    };
    assert_eq!(
        kv::compact(&mut view, 9, 100).expect("compact"),
        Response::Swept { removed: 3 }
    );
    let starts = recorder.starts.into_inner();
    assert_eq!(starts.len(), 2);
    for start in starts {
        assert!(
            start.as_slice() >= 6u64.to_be_bytes().as_slice(),
            "a scan began at {start:?}"
        );
    }
}

/// Regression: session clean-up used to scan up to 256 entries from the client's floor with no
/// upper bound, walking into other clients' answers (in RocksDB: the tombstones of their forgotten
/// answers), so every write got slower as history grew (a 3-node cluster fell from ~4.4K to
/// ~300 puts/s after one benchmark run). It must visit only its own answers.
#[test]
fn session_cleanup_visits_only_the_clients_own_answers() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    for client in 1000..1200u128 {
        for seq in 1..=3 {
            h.apply(with_session(cmd(1, incr.clone()), client, seq, 1));
        }
    }
    let store = CountingStore {
        inner: h.store,
        scanned: std::cell::Cell::new(0),
    };
    let mut applier = Applier::default();
    for (index, seq) in (10_000u64..).zip(1..=4u64) {
        let mut writes = WriteSet::default();
        applier
            .apply(
                &store,
                &mut writes,
                index,
                &with_session(cmd(2, incr.clone()), 7, seq, seq),
            )
            .expect("apply");
        // (not committed: each request only needs to forget answers below its own floor)
    }
    assert!(
        store.scanned.get() <= 4,
        "scanned {} entries of other clients",
        store.scanned.get()
    );
}

fn session_keys(store: &MemStore, client_id: u128) -> usize {
    store
        .scan(Table::Session, &KeyRange::all(), 10_000)
        .expect("scan")
        .iter()
        .filter(|(k, _)| k.len() >= 16 && k[..16] == client_id.to_be_bytes())
        .count()
}

#[test]
fn idle_sessions_are_swept_and_active_ones_kept() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    // Client 1 last active at t=1 000, client 2 at t=5 000; both keep an in-flight answer.
    h.apply(with_session(cmd(1_000, incr.clone()), 1, 1, 1));
    h.apply(with_session(cmd(1_000, incr.clone()), 1, 2, 1));
    h.apply(with_session(cmd(5_000, incr.clone()), 2, 1, 1));
    assert_eq!(session_keys(&h.store, 1), 3, "floor and two answers");

    let sweep = |after| Op::SessionSweep {
        idle_ms: 3_000,
        after,
        limit: 10,
    };
    assert_eq!(
        h.apply(cmd(6_000, sweep(None))),
        Response::SessionsSwept {
            removed: 1,
            resume_after: None
        }
    );
    assert_eq!(session_keys(&h.store, 1), 0, "idle client 1 forgotten entirely");
    assert_eq!(session_keys(&h.store, 2), 2, "client 2 (idle 1 s) kept");

    // Client 2 is still deduplicated.
    assert_eq!(h.apply(with_session(cmd(6_100, incr.clone()), 2, 1, 1)), counted(3));
    // Client 1's old request is new again: the documented limit of exactly-once (retries must come
    // within idle_ms of the client's last request).
    assert_eq!(h.apply(with_session(cmd(6_200, incr.clone()), 1, 2, 1)), counted(4));
}

/// Sweeps idle sessions at `at_ms`, `limit` clients a step, from the start of the table until a
/// step says the whole table was walked: (clients removed, steps taken). Panics past `steps_max`.
fn sweep_sessions_to_the_end(h: &mut Harness, at_ms: u64, limit: u32, steps_max: usize) -> (u32, usize) {
    let mut after = None;
    let mut removed_total = 0;
    for steps in 1..=steps_max {
        let response = h.apply(cmd(
            at_ms,
            Op::SessionSweep {
                idle_ms: 1_000,
                after,
                limit,
            },
        ));
        let Response::SessionsSwept { removed, resume_after } = response else {
            panic!("{response:?}")
        };
        removed_total += removed;
        after = resume_after;
        if after.is_none() {
            return (removed_total, steps);
        }
    }
    panic!("the sweep did not walk the table in {steps_max} steps");
}

#[test]
fn session_sweep_walks_the_table_with_its_cursor() {
    let mut h = Harness::new();
    let incr = incr_op("c", 1);
    for client in 1..=5u128 {
        h.apply(with_session(cmd(1_000, incr.clone()), client, 1, 1));
    }
    let (removed_total, steps) = sweep_sessions_to_the_end(&mut h, 10_000, 2, 9);
    assert!(steps > 1, "two clients a step: the cursor carries the walk over steps");
    assert_eq!(removed_total, 5);
    assert!(h
        .store
        .scan(Table::Session, &KeyRange::all(), 10)
        .expect("scan")
        .is_empty());
}

/// A client that never moved its floor keeps every answer: an idle one with more answers than
/// one sweep step removes is forgotten over several steps, and nothing of it is left behind (the
/// floor record went with the first step, and the rest leaked).
#[test]
fn an_idle_client_with_more_answers_than_one_step_removes_is_forgotten_entirely() {
    let mut h = Harness::new();
    let answers = 4096 * 2 + 10;
    for seq in 1..=answers {
        h.apply(with_session(cmd(1_000, incr_op("c", 1)), 7, seq, 1));
    }
    h.apply(with_session(cmd(1_000, incr_op("c", 1)), 9, 1, 1));
    let (removed_total, _) = sweep_sessions_to_the_end(&mut h, 60_000, 10, 9);
    assert_eq!(session_keys(&h.store, 7), 0, "answers left behind");
    assert_eq!(session_keys(&h.store, 9), 0);
    assert_eq!(removed_total, 2);
}

/// A saved answer that does not decode is corruption: the retry is not applied a second time.
#[test]
fn a_saved_answer_that_does_not_decode_stops_apply_instead_of_applying_again() {
    let mut h = Harness::new();
    h.apply(with_session(cmd(1_000, incr_op("c", 1)), 7, 1, 1));
    let mut key = 7u128.to_be_bytes().to_vec();
    key.extend_from_slice(&1u64.to_be_bytes());
    let mut damage = WriteSet::default();
    damage.put(Table::Session, key, vec![0xff; 3]);
    h.store.commit(&damage);
    let mut writes = WriteSet::default();
    let retried = h.applier.apply(
        &h.store,
        &mut writes,
        2,
        &with_session(cmd(1_100, incr_op("c", 1)), 7, 1, 1),
    );
    assert!(
        matches!(
            retried,
            Err(StoreError::CorruptRecord {
                table: Table::Session,
                ..
            })
        ),
        "{retried:?}"
    );
    // A damaged floor record too.
    let mut damage = WriteSet::default();
    damage.put(Table::Session, 7u128.to_be_bytes().to_vec(), vec![1, 2]);
    h.store.commit(&damage);
    let next = h.applier.apply(
        &h.store,
        &mut WriteSet::default(),
        3,
        &with_session(cmd(1_200, incr_op("c", 1)), 7, 2, 1),
    );
    assert!(
        matches!(
            next,
            Err(StoreError::CorruptRecord {
                table: Table::Session,
                ..
            })
        ),
        "{next:?}"
    );
}

#[test]
fn a_refusal_midway_through_a_batch_keeps_none_of_its_writes() {
    let mut h = Harness::new();
    // A counter whose stored value cannot be decoded refuses the batch it appears in, after
    // the batch already incremented another key: that earlier write must not survive.
    let mut damaged = WriteSet::default();
    damaged.put(Table::Counter, b"b".to_vec(), vec![1; 7]);
    h.store.commit(&damaged);
    let batch = Op::Counter {
        ops: vec![
            CounterOp {
                key: b"a".to_vec(),
                action: CounterAction::Incr {
                    delta: 1,
                    min: None,
                    max: None,
                },
            },
            CounterOp {
                key: b"b".to_vec(),
                action: CounterAction::Incr {
                    delta: 1,
                    min: None,
                    max: None,
                },
            },
        ],
    };
    assert!(matches!(
        h.apply(cmd(1, batch)),
        Response::Refused(OpError::CorruptValue { .. })
    ));
    assert_eq!(h.store.get(Table::Counter, b"a").expect("get"), None);
}

fn history(h: &Harness) -> Vec<(u64, String, crate::state::KvEvent)> {
    h.store
        .scan(Table::KvHistory, &KeyRange::all(), usize::MAX)
        .expect("scan")
        .into_iter()
        .flat_map(|(k, v)| {
            kv::history_events(&k, &v)
                .expect("decode")
                .into_iter()
                .map(|(key, event)| (kv::revision_of(&k), String::from_utf8_lossy(key).into_owned(), event))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_kv_change_lands_in_the_history_in_revision_order() {
    use crate::state::KvEvent;
    let mut h = Harness::new();
    h.apply(cmd(1, put("a", "1")));
    h.apply(cmd(2, put("a", "2")));
    h.apply(cmd(
        3,
        Op::Kv(KvOp::Delete {
            key: "a".into(),
            expect: None,
        }),
    ));
    h.apply(cmd(
        4,
        Op::Kv(KvOp::Delete {
            key: "never".into(),
            expect: None,
        }),
    ));
    h.apply(cmd(
        5,
        Op::Kv(KvOp::Put {
            key: "t".into(),
            value: "x".into(),
            ttl_ms: Some(10),
            expect: None,
        }),
    ));
    h.apply(cmd(100, Op::Kv(KvOp::SweepExpired { limit: 10 })));
    let put_event = |value: &str, create_revision, version| KvEvent::Put {
        value: value.into(),
        create_revision,
        version,
    };
    assert_eq!(
        history(&h),
        vec![
            (1, "a".into(), put_event("1", 1, 1)),
            (2, "a".into(), put_event("2", 1, 2)),
            (3, "a".into(), KvEvent::Delete),
            (5, "t".into(), put_event("x", 5, 1)),
            (6, "t".into(), KvEvent::Delete),
        ]
    );
}

#[test]
fn compaction_drops_old_history_and_moves_the_start() {
    let mut h = Harness::new();
    for i in 0..10 {
        h.apply(cmd(i, put("k", &i.to_string())));
    }
    assert_eq!(kv::history_start(&h.store).expect("start"), 0);
    assert_eq!(kv::compaction_due(&h.store, 10, 20).expect("due"), None);
    let below = kv::compaction_due(&h.store, 10, 4)
        .expect("due")
        .expect("something to compact");
    assert_eq!(below, 6);
    assert_eq!(
        h.apply(cmd(20, Op::Kv(KvOp::Compact { below, limit: 1000 }))),
        Response::Swept { removed: 5 }
    );
    assert_eq!(kv::history_start(&h.store).expect("start"), 6);
    assert_eq!(history(&h).first().map(|e| e.0), Some(6));
    // A small limit stops on a revision boundary.
    assert_eq!(
        h.apply(cmd(21, Op::Kv(KvOp::Compact { below: 10, limit: 2 }))),
        Response::Swept { removed: 1 }
    );
    assert_eq!(kv::history_start(&h.store).expect("start"), 7);
}

/// One history row per revision, however many keys it changed: a put costs one RocksDB insert for
/// its history, not one per key.
#[test]
fn a_revision_keeps_all_its_changes_in_one_history_row() {
    let mut h = Harness::new();
    let writes = ["a", "b", "c"]
        .iter()
        .map(|k| KvWrite::Put {
            key: (*k).into(),
            value: "v".into(),
            ttl_ms: None,
            expect: None,
        })
        .collect();
    h.apply(cmd(1, Op::Kv(KvOp::Batch { writes })));
    h.apply(cmd(2, put("d", "v")));
    let rows = h
        .store
        .scan(Table::KvHistory, &KeyRange::all(), usize::MAX)
        .expect("scan");
    assert_eq!(rows.len(), 2, "one row per revision");
    let keys: Vec<(u64, String)> = history(&h).into_iter().map(|(rev, key, _)| (rev, key)).collect();
    assert_eq!(
        keys,
        [(1, "a".into()), (1, "b".into()), (1, "c".into()), (2, "d".into())]
    );
}

#[test]
fn history_rows_decode_net_changes_the_earlier_layout_and_refuse_damage() {
    use crate::state::KvEvent;
    let put_event = |v: &str| KvEvent::Put {
        value: v.into(),
        create_revision: 1,
        version: 1,
    };
    let mut writes = WriteSet::default();
    let mut staged = WriteSet::default();
    {
        let store = MemStore::default();
        let mut view = View {
            base: &store,
            writes: &mut writes,
        };
        kv::record_event(&mut view, 9, b"x", &put_event("1"));
        kv::record_event(&mut view, 9, b"y", &put_event("2"));
        let mut later = View {
            base: &store,
            writes: &mut staged,
        };
        kv::record_event(&mut later, 9, b"x", &KvEvent::Delete);
    }
    // A later request's part of the row joins the earlier one.
    writes.absorb(staged);
    let row_key = kv::history_row_key(9);
    let row = writes
        .lookup(Table::KvHistory, &row_key)
        .flatten()
        .expect("row")
        .to_vec();
    let events = kv::history_events(&row_key, &row).expect("decode");
    assert_eq!(
        events,
        [(&b"x"[..], KvEvent::Delete), (&b"y"[..], put_event("2"))],
        "x's last change stands, where x first appeared"
    );

    let mut legacy_key = 9u64.to_be_bytes().to_vec();
    legacy_key.extend_from_slice(b"old");
    assert_eq!(
        kv::history_events(&legacy_key, &put_event("o").encode()).expect("legacy"),
        [(&b"old"[..], put_event("o"))]
    );

    // A row cut between two changes is a shorter row; cut anywhere else it does not decode.
    let change_len = |key: &[u8], event: &KvEvent| 8 + key.len() + event.encode().len();
    let first = change_len(b"x", &put_event("1"));
    let boundaries = [first, first + change_len(b"y", &put_event("2"))];
    for cut in 1..row.len() {
        let decoded = kv::history_events(&row_key, &row[..cut]);
        assert_eq!(decoded.is_ok(), boundaries.contains(&cut), "row cut at {cut} bytes");
    }
}

#[test]
fn a_command_larger_than_one_log_entry_is_refused_before_it_is_proposed() {
    let value = vec![0u8; crate::limits::VALUE_BYTES_MAX];
    let writes: Vec<KvWrite> = (0..20)
        .map(|i| KvWrite::Put {
            key: format!("k{i}").into_bytes(),
            value: value.clone(),
            ttl_ms: None,
            expect: None,
        })
        .collect();
    let large = cmd(1, Op::Kv(KvOp::Batch { writes }));
    assert!(
        matches!(large.check_size(), Err(OpError::EntryTooLarge { max, .. }) if max == crate::limits::ENTRY_COMMAND_BYTES_MAX)
    );
    assert_eq!(cmd(1, put("k", "v")).check_size(), Ok(()));
}
