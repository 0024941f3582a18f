//! The region topology as replicated state: apply takes the region's role from the log, escrow
//! shares are stored (a region added later has none of its own), and a change that does not fit
//! is refused and changes nothing.

use proptest::prelude::*;

use super::replication::{digest, feed_trimmed_upto};
use super::tests::{cmd, put, Harness};
use super::tests_replication::{founded, pick, region, ship};
use super::topology::{load_topology, EscrowShare, RegionEndpoint, RegionSpec, RegionTopology, TopologyChange};
use super::*;
use crate::command::{CounterAction, CounterOp, CounterOutcome};

fn spec(id: u16, name: &str) -> RegionSpec {
    RegionSpec {
        id,
        name: name.into(),
        endpoints: vec![format!("127.0.0.1:{}", 7000 + id)],
    }
}

fn init(this: RegionSpec, remotes: Vec<RegionSpec>, joining: bool) -> Op {
    Op::Region(RegionOp::Topology {
        change: TopologyChange::Init {
            this: RegionSpec {
                endpoints: Vec::new(),
                ..this
            },
            home: 1,
            remotes,
            joining,
        },
    })
}

fn add(id: u16, name: &str) -> Op {
    Op::Region(RegionOp::Topology {
        change: TopologyChange::Add { region: spec(id, name) },
    })
}

fn remove(id: u16) -> Op {
    Op::Region(RegionOp::Topology {
        change: TopologyChange::Remove { region: id },
    })
}

fn topology_of(h: &Harness) -> Option<RegionTopology> {
    load_topology(&h.store).expect("topology")
}

fn refused_topology(response: &Response) -> bool {
    matches!(
        response,
        Response::Refused(OpError::Region(RegionError::InvalidTopology { .. }))
    )
}

fn seats(h: &mut Harness, at_ms: u64, delta: i64) -> CounterOutcome {
    match h.apply(cmd(
        at_ms,
        Op::Counter {
            ops: vec![CounterOp {
                key: "seats".into(),
                action: CounterAction::Incr {
                    delta,
                    min: None,
                    max: Some(10),
                },
            }],
        },
    )) {
        Response::Counters(outcomes) => outcomes[0],
        other => panic!("unexpected {other:?}"),
    }
}

fn give(h: &mut Harness, at_ms: u64, to: u16, amount: u64) -> Response {
    h.apply(cmd(
        at_ms,
        Op::Counter {
            ops: vec![CounterOp {
                key: "seats".into(),
                action: CounterAction::Transfer {
                    to,
                    amount,
                    min: None,
                    max: Some(10),
                },
            }],
        },
    ))
}

fn seat_count(h: &Harness) -> i64 {
    h.store
        .get(Table::Counter, b"seats")
        .expect("get")
        .and_then(|b| counter::decode_counter(&b))
        .unwrap_or(0)
}

#[test]
fn the_region_role_comes_from_the_log_and_survives_a_restart() {
    let mut us = Harness::new();
    assert!(!us.applier.region().replicated, "no topology yet: a region alone");
    let answer = us.apply(cmd(1, init(spec(1, "us"), vec![spec(2, "eu")], false)));
    let Response::Topology(topology) = answer else {
        panic!("unexpected {answer:?}")
    };
    assert_eq!(topology.changed_at, 1);
    let role = us.applier.region();
    assert!(role.replicated && role.is_home());
    assert_eq!(
        (role.id, role.remotes, role.escrow),
        (1, 1, EscrowShare { parts: 1, of: 2 })
    );
    assert_eq!(
        feed_trimmed_upto(&us.store).expect("trimmed"),
        0,
        "the feed holds everything"
    );
    us.apply(cmd(2, put("after", "2")));
    assert!(us
        .store
        .get(Table::ReplFeed, &2u64.to_be_bytes())
        .expect("feed")
        .is_some());
    // A restarted replica (or one installing a snapshot) loads the same role from its state.
    assert_eq!(Applier::load(&us.store).expect("load").region(), role);
}

/// Data written without a topology was never recorded in the feed, its counter components are
/// region 1's whatever this region becomes, and its counters' bounds were never divided: a region
/// holding any cannot become one of several.
#[test]
fn a_region_that_already_holds_data_cannot_take_a_first_topology() {
    let mut lone = Harness::new();
    seats(&mut lone, 1, 8);
    let answer = lone.apply(cmd(2, init(spec(1, "us"), vec![spec(2, "eu")], false)));
    assert!(refused_topology(&answer), "{answer:?}");
    assert!(topology_of(&lone).is_none());
    assert!(!lone.applier.region().replicated);
}

#[test]
fn a_removed_regions_id_is_never_used_again() {
    let mut us = region(1);
    assert!(matches!(us.apply(cmd(1, remove(3))), Response::Topology(_)));
    let again = us.apply(cmd(2, add(3, "ap")));
    assert!(refused_topology(&again), "{again:?}");
    assert!(
        matches!(us.apply(cmd(3, add(4, "ap"))), Response::Topology(_)),
        "under a new id it may come back"
    );
}

#[test]
fn a_tombstone_collection_proposed_before_a_topology_change_collects_nothing() {
    let mut us = region(1);
    us.apply(cmd(1, put("k", "v")));
    us.apply(cmd(
        2,
        Op::Kv(KvOp::Delete {
            key: "k".into(),
            expect: None,
        }),
    ));
    assert_eq!(super::replication::tombstone_count(&us.store).expect("count"), 1);
    let stale = Op::Kv(KvOp::TombstoneGc {
        below: u64::MAX,
        limit: 100,
        topology_at: topology_of(&us).expect("topology").changed_at,
    });
    us.apply(cmd(3, add(4, "sa")));
    assert_eq!(us.apply(cmd(4, stale)), Response::Swept { removed: 0 });
    assert_eq!(super::replication::tombstone_count(&us.store).expect("count"), 1);
    let current = Op::Kv(KvOp::TombstoneGc {
        below: u64::MAX,
        limit: 100,
        topology_at: topology_of(&us).expect("topology").changed_at,
    });
    assert_eq!(us.apply(cmd(5, current)), Response::Swept { removed: 1 });
}

#[test]
fn two_replicas_of_one_log_apply_alike_through_every_topology_change() {
    let log = [
        init(spec(1, "us"), vec![spec(2, "eu")], false),
        put("k", "v"),
        add(3, "ap"),
        Op::Kv(KvOp::Delete {
            key: "k".into(),
            expect: None,
        }),
        remove(2),
        put("k", "w"),
    ];
    let replay = || {
        let mut h = Harness::new();
        for (i, op) in log.iter().enumerate() {
            h.apply(cmd(10 + i as u64, op.clone()));
        }
        h
    };
    let (a, b) = (replay(), replay());
    assert_eq!(a.store, b.store);
    let topology = topology_of(&a).expect("topology");
    assert_eq!(topology.remote_ids(), vec![3]);
    assert_eq!(topology.changed_at, 5);
}

#[test]
fn a_topology_change_that_does_not_fit_is_refused_and_changes_nothing() {
    let mut us = Harness::new();
    assert!(
        refused_topology(&us.apply(cmd(1, add(2, "eu")))),
        "no topology to add to"
    );
    us.apply(cmd(2, init(spec(1, "us"), vec![spec(2, "eu")], false)));
    let before = topology_of(&us);
    let refusals = [
        init(spec(1, "us"), vec![], false),
        add(1, "us"),
        add(3, "eu"),
        add(2, "ap"),
        remove(1),
        remove(9),
        Op::Region(RegionOp::Topology {
            change: TopologyChange::Add {
                region: RegionSpec {
                    id: 4,
                    name: "sa".into(),
                    endpoints: vec!["not-an-address".into()],
                },
            },
        }),
        Op::Region(RegionOp::Topology {
            change: TopologyChange::Add {
                region: RegionSpec {
                    id: 4,
                    name: "sa".into(),
                    endpoints: vec!["127.0.0.1:1/peer-host".into()],
                },
            },
        }),
        Op::Region(RegionOp::Topology {
            change: TopologyChange::Add {
                region: RegionSpec {
                    id: 4,
                    name: "bad name".into(),
                    endpoints: vec!["127.0.0.1:1".into()],
                },
            },
        }),
    ];
    for (i, op) in refusals.into_iter().enumerate() {
        let answer = us.apply(cmd(3 + i as u64, op.clone()));
        assert!(refused_topology(&answer), "{op} answered {answer:?}");
        assert_eq!(topology_of(&us), before, "{op} changed the topology");
    }
    // The home holds the homed data: removing it is refused even from another region.
    let mut eu = Harness::new();
    eu.apply(cmd(1, init(spec(2, "eu"), vec![spec(1, "us")], false)));
    assert!(refused_topology(&eu.apply(cmd(2, remove(1)))));
    // Adding a known region again under its own name changes only its endpoints.
    let moved = Op::Region(RegionOp::Topology {
        change: TopologyChange::Add {
            region: RegionSpec {
                id: 2,
                name: "eu".into(),
                endpoints: vec!["127.0.0.1:9999/127.0.0.1:9998".into()],
            },
        },
    });
    let Response::Topology(topology) = us.apply(cmd(20, moved)) else {
        panic!("refused")
    };
    assert_eq!(
        topology.regions[&2].endpoints,
        vec!["127.0.0.1:9999/127.0.0.1:9998".to_string()]
    );
    assert_eq!(topology.regions[&2].escrow, Some(EscrowShare { parts: 1, of: 2 }));
}

#[test]
fn validation_refuses_a_bad_change_before_it_is_proposed() {
    let bad = [
        TopologyChange::Remove { region: 0 },
        TopologyChange::Add {
            region: spec(0, "zero"),
        },
        TopologyChange::Add {
            region: RegionSpec {
                id: 2,
                name: "eu".into(),
                endpoints: Vec::new(),
            },
        },
        TopologyChange::Init {
            this: spec(1, "us"),
            home: 1,
            remotes: (2..=70).map(|id| spec(id, &format!("r{id}"))).collect(),
            joining: false,
        },
    ];
    for change in bad {
        assert!(
            matches!(
                topology::validate(&change),
                Err(OpError::Region(RegionError::InvalidTopology { .. }))
            ),
            "{change} passed"
        );
    }
    assert_eq!(
        topology::validate(&TopologyChange::Add { region: spec(3, "ap") }),
        Ok(())
    );
}

/// The example: a bound of 10, two regions fill 5 each, a third region joins. Re-dividing
/// the bound by three would let every region add up to 3 more (13 and beyond); with stored shares
/// the newcomer has no room until a region gives it some, and the bound holds.
#[test]
fn a_region_added_while_a_counter_is_near_its_bound_gets_no_room_of_its_own() {
    let mut us = Harness::in_region(&founded(1, 2));
    let mut eu = Harness::in_region(&founded(2, 2));
    assert_eq!(seats(&mut us, 1, 5), CounterOutcome::Applied { value: 5 });
    assert_eq!(seats(&mut eu, 1, 4), CounterOutcome::Applied { value: 4 });
    // ap joins: us and eu add it through their logs; ap starts as a joining region.
    assert!(matches!(us.apply(cmd(2, add(3, "ap"))), Response::Topology(_)));
    assert!(matches!(eu.apply(cmd(2, add(3, "ap"))), Response::Topology(_)));
    let mut ap = Harness::new();
    ap.apply(cmd(2, init(spec(3, "ap"), vec![spec(1, "us"), spec(2, "eu")], true)));
    assert_eq!(ap.applier.region().escrow, EscrowShare::NONE);
    assert_eq!(
        us.applier.region().escrow,
        EscrowShare { parts: 1, of: 2 },
        "shares are not re-divided"
    );
    assert!(matches!(seats(&mut ap, 3, 1), CounterOutcome::EscrowExceeded { .. }));
    assert!(matches!(seats(&mut us, 3, 1), CounterOutcome::EscrowExceeded { .. }));
    // eu gives ap the one seat it has left; ap fills it.
    assert!(matches!(give(&mut eu, 4, 3, 1), Response::Counters(_)));
    assert!(
        matches!(give(&mut eu, 4, 3, 1), Response::Counters(ref o) if matches!(o[0], CounterOutcome::EscrowExceeded { .. }))
    );
    ship(&eu, 2, &mut ap, 5);
    assert!(matches!(seats(&mut ap, 6, 1), CounterOutcome::Applied { .. }));
    assert!(matches!(seats(&mut ap, 6, 1), CounterOutcome::EscrowExceeded { .. }));
    let mut regions = [us, eu, ap];
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let (source, target) = pick(&mut regions, from, to);
            ship(source, from as u16 + 1, target, 10);
        }
    }
    assert!(
        regions.iter().all(|h| seat_count(h) == 10),
        "the bound holds once merged"
    );
}

#[test]
fn escrow_goes_only_to_a_region_of_the_topology() {
    let mut us = region(1);
    let answer = give(&mut us, 1, 9, 1);
    assert!(
        matches!(answer, Response::Refused(OpError::Counter(CounterError::InvalidTransfer { ref reason })) if reason.contains("not in this region's topology")),
        "{answer:?}"
    );
}

#[test]
fn a_removed_region_merges_nothing() {
    let mut us = region(1);
    let mut eu = region(2);
    eu.apply(cmd(1, put("k", "from eu")));
    us.apply(cmd(2, remove(2)));
    assert_eq!(
        ship(&eu, 2, &mut us, 3),
        Response::Refused(OpError::Region(RegionError::UnknownRegion { source_region: 2 }))
    );
    assert!(us.kv("k").is_none());
}

#[derive(Clone, Debug)]
enum Step {
    Fill { region: usize, amount: i64 },
    Free { region: usize, amount: i64 },
    Give { region: usize, to: usize, amount: u64 },
    Ship { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0usize..4, 1i64..4).prop_map(|(region, amount)| Step::Fill { region, amount }),
        1 => (0usize..4, 1i64..4).prop_map(|(region, amount)| Step::Free { region, amount }),
        2 => (0usize..4, 0usize..4, 1u64..4).prop_map(|(region, to, amount)| Step::Give { region, to, amount }),
        3 => (0usize..4, 0usize..4).prop_map(|(from, to)| Step::Ship { from, to }),
    ]
}

proptest! {
    /// Three founding regions fill a capacity of 10 while a fourth joins at any moment, as seen
    /// by each founder in its own time; escrow moves around and the feeds cross only now and then.
    /// Once everything has crossed, the capacity was never exceeded and every region agrees.
    #[test]
    fn a_region_joining_at_any_moment_never_lets_a_bound_be_crossed(
        steps in prop::collection::vec(step(), 1..100),
        added_at in [0usize..120, 0usize..120, 0usize..120],
    ) {
        let mut regions: Vec<Harness> = (1..=3).map(|id| Harness::in_region(&founded(id, 3))).collect();
        let mut newcomer = Harness::new();
        newcomer.apply(cmd(1, init(spec(4, "sa"), vec![spec(1, "us"), spec(2, "eu"), spec(3, "ap")], true)));
        regions.push(newcomer);
        let mut knows_newcomer = [false; 3];
        for (i, step) in steps.into_iter().enumerate() {
            let at = 2 + i as u64;
            // Each founder adds the newcomer through its own log, at its own moment.
            for founder in (0..3).filter(|f| added_at[*f] == i) {
                regions[founder].apply(cmd(at, add(4, "sa")));
                knows_newcomer[founder] = true;
            }
            match step {
                Step::Fill { region, amount } => { seats(&mut regions[region], at, amount); }
                Step::Free { region, amount } => { seats(&mut regions[region], at, -amount); }
                Step::Give { region, to, amount } if region != to => {
                    give(&mut regions[region], at, to as u16 + 1, amount);
                }
                Step::Ship { from, to } if from != to => {
                    let (source, target) = pick(&mut regions, from, to);
                    ship(source, from as u16 + 1, target, at);
                }
                _ => {}
            }
        }
        for (region, known) in knows_newcomer.iter().enumerate() {
            if !known {
                regions[region].apply(cmd(5_000, add(4, "sa")));
            }
        }
        for from in 0..4 {
            for to in (0..4).filter(|t| *t != from) {
                let (source, target) = pick(&mut regions, from, to);
                ship(source, from as u16 + 1, target, 10_000);
            }
        }
        let values: Vec<i64> = regions.iter().map(seat_count).collect();
        prop_assert!(values[0] <= 10, "the regions together crossed the bound: {values:?}");
        prop_assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
        let digests: Vec<_> = regions.iter().map(|h| digest(&h.store).expect("digest")).collect();
        prop_assert!(digests.iter().all(|d| *d == digests[0]), "escrow converges too");
    }
}

#[test]
fn regions_that_divided_bounds_differently_or_name_another_home_are_told_apart() {
    use super::topology::{agreement_summary, check_agreement, Disagreement};
    let us = founded(1, 2);
    let eu = founded(2, 2);
    assert_eq!(agreement_summary(&eu), "source=2;home=1;shares=1:1/2,2:1/2");
    assert_eq!(check_agreement(&us, &agreement_summary(&eu)), Ok(2));
    // eu founded with three regions: shares of 1/3 where us stores 1/2.
    let eu_of_three = founded(2, 3);
    assert!(matches!(
        check_agreement(&us, &agreement_summary(&eu_of_three)),
        Err(Disagreement::Share { region: 1, .. })
    ));
    // A joining region knows only its own share (0/1), which is what us stores for it.
    let mut with_ap = us.clone();
    with_ap.regions.insert(
        3,
        topology::RegionMember {
            name: "ap".into(),
            endpoints: vec!["127.0.0.1:7003".into()],
            escrow: Some(EscrowShare::NONE),
        },
    );
    let mut ap = Harness::new();
    let Response::Topology(ap_topology) =
        ap.apply(cmd(1, init(spec(3, "ap"), vec![spec(1, "us"), spec(2, "eu")], true)))
    else {
        panic!("init refused")
    };
    assert_eq!(check_agreement(&with_ap, &agreement_summary(&ap_topology)), Ok(3));
    assert!(matches!(
        check_agreement(&us, &agreement_summary(&ap_topology)),
        Err(Disagreement::UnknownSource { source_region: 3 })
    ));
    let mut other_home = ap_topology.clone();
    other_home.home = 2;
    assert!(matches!(
        check_agreement(&with_ap, &agreement_summary(&other_home)),
        Err(Disagreement::Home { theirs: 2, ours: 1, .. })
    ));
    // Four regions founded in pairs of lists of three: every region both sides know has the
    // same share, but together they know of 4/3 of a bound.
    let mut us_of_three = founded(1, 3);
    us_of_three.regions.get_mut(&3).expect("ap").name = "ap".into();
    let mut eu_with_sa = founded(2, 3);
    let sa = eu_with_sa.regions.remove(&3).expect("third");
    eu_with_sa.regions.insert(4, sa);
    assert!(matches!(
        check_agreement(&us_of_three, &agreement_summary(&eu_with_sa)),
        Err(Disagreement::Oversubscribed { .. })
    ));
    // A removed region is told it was removed.
    let mut without_eu = us.clone();
    without_eu.regions.remove(&2);
    without_eu.retired.insert(2);
    assert!(matches!(
        check_agreement(&without_eu, &agreement_summary(&eu)),
        Err(Disagreement::Removed { source_region: 2 })
    ));
    for bad in [
        "",
        "source=x;home=1",
        "source=2;home=1;shares=1:1",
        "source=2",
        "source=2;home=1;shares=1:1/2",
        "source=2;home=1;shares=2:3/2",
        "source=2;home=1;shares=2:1/0",
        "source=2;home=1;shares=2:1/2,2:1/2",
        "source=2;source=2;home=1;shares=2:1/2",
    ] {
        assert!(
            matches!(check_agreement(&us, bad), Err(Disagreement::Malformed { .. })),
            "{bad}"
        );
    }
}

#[test]
fn an_endpoint_is_a_client_address_and_maybe_a_peer_address() {
    let old = RegionEndpoint::parse("127.0.0.1:7001").expect("a client address alone");
    assert_eq!((old.client.port(), old.peer, old.feed().port()), (7001, None, 7001));
    let both = RegionEndpoint::parse("[::1]:7001/[::1]:7101").expect("client and peer");
    assert_eq!(both.feed(), "[::1]:7101".parse().expect("addr"));
    assert_eq!(both.to_string(), "[::1]:7001/[::1]:7101");
    for bad in [
        "",
        "host:7001",
        "127.0.0.1:7001/",
        "/127.0.0.1:7101",
        "127.0.0.1:7001/127.0.0.1:7101/127.0.0.1:7201",
        "127.0.0.1:7001 peer=127.0.0.1:7101",
    ] {
        assert!(RegionEndpoint::parse(bad).is_err(), "{bad:?} parsed");
    }
    let long = format!("127.0.0.1:7001/{}", "1".repeat(super::topology::ENDPOINT_BYTES_MAX));
    assert!(RegionEndpoint::parse(&long).is_err_and(|e| e.contains("longer than")));
}

proptest! {
    #[test]
    fn an_endpoint_written_reads_back_and_any_text_parses_or_is_refused(
        client in (any::<std::net::IpAddr>(), any::<u16>()),
        peer in proptest::option::of((any::<std::net::IpAddr>(), any::<u16>())),
        text in "\\PC{0,80}",
    ) {
        let address = |(ip, port)| std::net::SocketAddr::new(ip, port);
        let endpoint = RegionEndpoint { client: address(client), peer: peer.map(address) };
        prop_assert_eq!(RegionEndpoint::parse(&endpoint.to_string()), Ok(endpoint));
        let _ = RegionEndpoint::parse(&text);
    }
}
