//! Merged entries (`KvOp::Merged`): the KV writes of several client requests in one log entry.
//! The property that matters: a merged entry changes the state and answers each request exactly
//! as the same requests would, each as an entry of its own, at that one index.

use proptest::prelude::*;

use super::tests::{cmd, put, Harness};
use super::tests_replication::region;
use super::*;
use crate::command::{Expect, KvPart, KvWrite, Session};

fn session(client_id: u128, seq: u64) -> Option<Session> {
    Some(Session {
        client_id,
        seq,
        first_incomplete_seq: seq,
    })
}

fn part(session: Option<Session>, op: Op) -> KvPart {
    KvPart { session, op }
}

fn merged(parts: Vec<KvPart>) -> Op {
    Op::Kv(KvOp::Merged { parts })
}

/// Applies `command` as entry `index` and commits it.
fn apply_at(h: &mut Harness, index: u64, command: &Command) -> Response {
    let mut writes = WriteSet::default();
    let response = h.applier.apply(&h.store, &mut writes, index, command).expect("apply");
    h.store.commit(&writes);
    h.index = h.index.max(index);
    response
}

#[test]
fn each_part_is_answered_on_its_own_at_the_entry_revision() {
    let mut h = Harness::new();
    h.apply(cmd(1, put("taken", "old")));
    let entry = merged(vec![
        part(session(7, 1), put("a", "1")),
        part(
            session(8, 1),
            Op::Kv(KvOp::Put {
                key: "taken".into(),
                value: "new".into(),
                ttl_ms: None,
                expect: Some(Expect::Absent),
            }),
        ),
        part(
            None,
            Op::Kv(KvOp::Batch {
                writes: vec![
                    KvWrite::Put {
                        key: "b".into(),
                        value: "2".into(),
                        ttl_ms: None,
                        expect: None,
                    },
                    KvWrite::Delete {
                        key: "gone".into(),
                        expect: None,
                    },
                ],
            }),
        ),
    ]);
    assert_eq!(
        h.apply(cmd(2, entry)),
        Response::KvMerged(vec![
            Response::KvPut {
                revision: 2,
                prev_revision: None
            },
            Response::KvConditionFailed { current: Some(1) },
            Response::KvBatch(vec![
                Response::KvPut {
                    revision: 2,
                    prev_revision: None
                },
                Response::KvDelete {
                    revision: 2,
                    deleted: false
                },
            ]),
        ])
    );
    assert_eq!(h.kv("a").expect("written").mod_revision, 2);
    assert_eq!(h.kv("b").expect("written").mod_revision, 2);
    assert_eq!(h.kv("taken").expect("kept").value, b"old");
}

#[test]
fn a_part_retried_alone_gets_its_saved_answer_and_applies_once() {
    let mut h = Harness::new();
    let put_if_absent = |key: &str| {
        Op::Kv(KvOp::Put {
            key: key.into(),
            value: "v".into(),
            ttl_ms: None,
            expect: Some(Expect::Absent),
        })
    };
    let first = h.apply(cmd(
        1,
        merged(vec![
            part(session(7, 1), put_if_absent("a")),
            // The same client's next request, sent before the first was answered.
            part(session(7, 2), put_if_absent("b")),
            part(session(9, 1), put_if_absent("c")),
        ]),
    ));
    let Response::KvMerged(answers) = first else {
        panic!("a merged entry is answered part by part, got {first:?}");
    };
    // The client of the second part retries it as a request of its own.
    let mut retry = cmd(2, put_if_absent("b"));
    retry.session = session(7, 2);
    assert_eq!(h.apply(retry), answers[1], "the retry gets the saved answer");
    assert_eq!(h.kv("b").expect("present").version, 1, "and changes nothing");

    // A retry merged with a new request: the new one applies, the retry does not.
    let again = h.apply(cmd(
        3,
        merged(vec![
            part(session(9, 1), put_if_absent("c")),
            part(session(9, 2), put("d", "v")),
        ]),
    ));
    assert_eq!(
        again,
        Response::KvMerged(vec![
            answers[2].clone(),
            Response::KvPut {
                revision: 3,
                prev_revision: None
            },
        ])
    );
    assert_eq!(h.kv("c").expect("present").version, 1);
}

#[test]
fn a_key_in_two_parts_or_a_part_of_another_type_refuses_the_whole_entry() {
    let mut h = Harness::new();
    let before = h.store.clone();
    let twice = merged(vec![
        part(session(1, 1), put("k", "1")),
        part(session(2, 1), put("x", "1")),
        part(
            session(3, 1),
            Op::Kv(KvOp::Delete {
                key: "k".into(),
                expect: None,
            }),
        ),
    ]);
    assert_eq!(
        h.apply(cmd(1, twice)),
        Response::Refused(OpError::Kv(KvError::DuplicateKey { key: "k".into() }))
    );
    let counter = merged(vec![part(session(1, 1), super::tests::incr_op("c", 1))]);
    assert!(matches!(
        h.apply(cmd(2, counter)),
        Response::Refused(OpError::Kv(KvError::NotMergeable { .. }))
    ));
    assert!(matches!(
        h.apply(cmd(3, merged(vec![]))),
        Response::Refused(OpError::Empty { .. })
    ));
    let mut after = h.store.clone();
    after.tables.remove(&Table::Meta);
    let mut before = before;
    before.tables.remove(&Table::Meta);
    assert_eq!(after, before, "a refused entry writes no data and saves no answer");
}

#[test]
fn a_replicated_region_ships_one_feed_entry_with_every_part() {
    let writes = |keys: &[&str]| -> Vec<KvWrite> {
        keys.iter()
            .map(|k| KvWrite::Put {
                key: (*k).into(),
                value: "v".into(),
                ttl_ms: None,
                expect: None,
            })
            .collect()
    };
    let mut by_parts = region(1);
    by_parts.apply(cmd(
        5,
        merged(vec![
            part(session(1, 1), put("a", "v")),
            part(
                session(2, 1),
                Op::Kv(KvOp::Batch {
                    writes: writes(&["b", "c"]),
                }),
            ),
        ]),
    ));
    let mut as_batch = region(1);
    as_batch.apply(cmd(
        5,
        Op::Kv(KvOp::Batch {
            writes: writes(&["a", "b", "c"]),
        }),
    ));
    let feed = |h: &Harness| h.store.tables.get(&Table::ReplFeed).cloned().unwrap_or_default();
    assert_eq!(feed(&by_parts).len(), 1, "one feed entry for the log entry");
    assert_eq!(feed(&by_parts), feed(&as_batch), "carrying what each part changed");
}

/// A request of a generated merged entry: a put, a delete or a batch, over a few keys so that
/// conditions hold and fail, sometimes invalid on its own, sometimes a retry of an earlier one.
#[derive(Clone, Debug)]
struct Generated {
    client: u128,
    op: Op,
}

fn write_strategy() -> impl Strategy<Value = KvWrite> {
    let key = prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h", ""]);
    let expect = prop::option::of(prop_oneof![Just(Expect::Absent), (0u64..6).prop_map(Expect::Revision)]);
    prop_oneof![
        (key.clone(), 0usize..4, prop::option::of(1u64..5_000), expect.clone()).prop_map(|(k, len, ttl_ms, expect)| {
            KvWrite::Put {
                key: k.into(),
                value: vec![b'v'; len],
                ttl_ms,
                expect,
            }
        }),
        (key, expect).prop_map(|(k, expect)| KvWrite::Delete { key: k.into(), expect }),
    ]
}

fn request_strategy() -> impl Strategy<Value = Generated> {
    let op = prop_oneof![
        write_strategy().prop_map(|w| match w {
            KvWrite::Put {
                key,
                value,
                ttl_ms,
                expect,
            } => Op::Kv(KvOp::Put {
                key,
                value,
                ttl_ms,
                expect,
            }),
            KvWrite::Delete { key, expect } => Op::Kv(KvOp::Delete { key, expect }),
        }),
        prop::collection::vec(write_strategy(), 1..4).prop_map(|writes| Op::Kv(KvOp::Batch { writes })),
    ];
    (0u128..3, op).prop_map(|(client, op)| Generated { client, op })
}

/// Drops requests that share a key with an earlier one of the entry (the leader never merges
/// those), and gives each client's requests increasing seqs continuing from `next_seq`.
fn into_parts(requests: Vec<Generated>, next_seq: &mut [u64; 3]) -> Vec<KvPart> {
    let mut keys = std::collections::HashSet::new();
    let mut parts = Vec::new();
    for request in requests {
        let candidate = part(None, request.op);
        let own: std::collections::HashSet<Vec<u8>> = candidate
            .keys()
            .expect("kv ops only")
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        if own.iter().any(|k| keys.contains(k)) {
            continue;
        }
        keys.extend(own);
        let seq = &mut next_seq[request.client as usize];
        *seq += 1;
        parts.push(part(session(request.client, *seq), candidate.op));
    }
    parts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Merged entries and the same requests applied one entry each, at the same indexes, answer
    /// alike and leave identical stores (data, history, sessions and all).
    #[test]
    fn a_merged_entry_equals_its_parts_applied_one_by_one_at_its_index(
        entries in prop::collection::vec((prop::collection::vec(request_strategy(), 1..6), 0u64..3_000), 1..12),
        retry in any::<prop::sample::Index>(),
    ) {
        let mut merged_h = Harness::new();
        let mut split_h = Harness::new();
        let mut next_seq = [0u64; 3];
        let mut applied_parts: Vec<KvPart> = Vec::new();
        let mut now_ms = 1;
        for (index, (requests, advance_ms)) in entries.into_iter().enumerate() {
            let index = index as u64 + 1;
            now_ms += advance_ms;
            let mut parts = into_parts(requests, &mut next_seq);
            // Now and then a part is a retry of an earlier request (a fresh key keeps the entry's
            // keys distinct only if no other part writes it: skip the retry if one does).
            if index.is_multiple_of(3) && !applied_parts.is_empty() {
                let earlier = applied_parts[retry.index(applied_parts.len())].clone();
                let taken: Vec<Vec<u8>> = parts.iter().flat_map(|p| p.keys().expect("kv")).map(<[u8]>::to_vec).collect();
                if earlier.keys().expect("kv").iter().all(|k| !taken.iter().any(|t| t == k)) {
                    parts.push(earlier);
                }
            }
            let answers = match apply_at(&mut merged_h, index, &cmd(now_ms, merged(parts.clone()))) {
                Response::KvMerged(answers) => answers,
                other => panic!("entry {index} was refused as a whole: {other:?}"),
            };
            prop_assert_eq!(answers.len(), parts.len());
            // In one write set, as the state machine applies a run of entries: a revision's
            // history row is built within it.
            let mut writes = WriteSet::default();
            for (part, answer) in parts.iter().zip(&answers) {
                let mut alone = cmd(now_ms, part.op.clone());
                alone.session = part.session;
                let split_answer = split_h.applier.apply(&split_h.store, &mut writes, index, &alone).expect("apply");
                prop_assert_eq!(answer, &split_answer, "part {:?} of entry {}", part, index);
            }
            split_h.store.commit(&writes);
            applied_parts.extend(parts);
            prop_assert_eq!(&merged_h.store, &split_h.store, "after entry {}", index);
        }
    }
}
