//! Leases and fenced writes.

use super::tests::{cmd, counted, incr_op, put, Harness};
use super::*;
use crate::command::{Fence, LeaseLoss, LeaseOutcome};

pub(super) fn acquire(name: &str, holder: &str, ttl_ms: u64) -> Op {
    Op::Lease(LeaseOp::Acquire {
        name: name.into(),
        holder: holder.into(),
        ttl_ms,
    })
}

fn fenced(stamp_ms: u64, op: Op, lease: &str, token: u64) -> Command {
    Command {
        fence: Some(Fence {
            lease: lease.into(),
            token,
        }),
        ..cmd(stamp_ms, op)
    }
}

fn granted(response: Response) -> (u64, u64) {
    match response {
        Response::Lease(LeaseOutcome::Granted { token, expires_at_ms }) => (token, expires_at_ms),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn a_held_lease_is_refused_to_others_until_it_expires() {
    let mut h = Harness::new();
    let (token_a, expires) = granted(h.apply(cmd(1000, acquire("job", "a", 500))));
    assert_eq!(expires, 1500);
    assert_eq!(
        h.apply(cmd(1499, acquire("job", "b", 500))),
        Response::Lease(LeaseOutcome::Held {
            holder: b"a".to_vec(),
            expires_at_ms: 1500
        })
    );
    let (token_b, _) = granted(h.apply(cmd(1500, acquire("job", "b", 500))));
    assert!(token_b > token_a, "tokens must grow: {token_a} then {token_b}");
}

#[test]
fn reacquire_by_the_holder_keeps_the_token_and_extends() {
    let mut h = Harness::new();
    let (token, _) = granted(h.apply(cmd(1000, acquire("job", "a", 500))));
    assert_eq!(granted(h.apply(cmd(1200, acquire("job", "a", 500)))), (token, 1700));
}

#[test]
fn renew_and_release_need_the_live_grant() {
    let mut h = Harness::new();
    let (token, _) = granted(h.apply(cmd(1000, acquire("job", "a", 500))));
    let renew = |holder: &str, token, ttl_ms| {
        Op::Lease(LeaseOp::Renew {
            name: b"job".to_vec(),
            holder: holder.into(),
            token,
            ttl_ms,
        })
    };
    let release = |holder: &str, token| {
        Op::Lease(LeaseOp::Release {
            name: b"job".to_vec(),
            holder: holder.into(),
            token,
        })
    };
    // A non-holder cannot renew or release, and nothing changes.
    let before = h.store.clone();
    for op in [renew("b", token, 500), release("b", token), renew("a", token + 1, 500)] {
        assert!(
            matches!(
                h.apply(cmd(1100, op)),
                Response::Refused(OpError::Lease(LeaseError::NotHeld {
                    reason: LeaseLoss::Superseded { .. },
                    ..
                }))
            ),
            "non-holder accepted"
        );
    }
    assert_eq!(
        h.store.get(Table::Lease, b"job").expect("get"),
        before.get(Table::Lease, b"job").expect("get")
    );
    assert_eq!(granted(h.apply(cmd(1400, renew("a", token, 500)))), (token, 1900));
    // Past its expiry, a renew is refused as expired.
    assert!(matches!(
        h.apply(cmd(1900, renew("a", token, 500))),
        Response::Refused(OpError::Lease(LeaseError::NotHeld {
            reason: LeaseLoss::Expired { expires_at_ms: 1900 },
            ..
        }))
    ));
    assert_eq!(
        h.apply(cmd(1901, release("a", token))),
        Response::Lease(LeaseOutcome::Released { was_live: false })
    );
    assert!(matches!(
        h.apply(cmd(1902, release("a", token))),
        Response::Refused(OpError::Lease(LeaseError::NotHeld {
            reason: LeaseLoss::NotHeld,
            ..
        }))
    ));
}

#[test]
fn a_stale_holder_cannot_write_after_its_lease_moved_on() {
    let mut h = Harness::new();
    let (old, _) = granted(h.apply(cmd(1000, acquire("job", "a", 100))));
    assert_eq!(h.apply(fenced(1050, incr_op("c", 1), "job", old)), counted(1));
    // "a" pauses; its lease expires and "b" takes it.
    let (new, _) = granted(h.apply(cmd(1200, acquire("job", "b", 100))));
    let before = h.store.clone();
    for op in [incr_op("c", 1), put("k", "v")] {
        assert!(matches!(
            h.apply(fenced(1210, op, "job", old)),
            Response::Refused(OpError::Lease(LeaseError::StaleFence {
                reason: LeaseLoss::Superseded { current_token },
                ..
            })) if current_token == new
        ));
    }
    assert_eq!(
        h.store.get(Table::Counter, b"c").expect("get"),
        before.get(Table::Counter, b"c").expect("get")
    );
    assert_eq!(h.store.get(Table::Kv, b"k").expect("get"), None);
    // The new holder's fenced writes land.
    assert_eq!(h.apply(fenced(1220, incr_op("c", 1), "job", new)), counted(2));
}

#[test]
fn fences_on_expired_or_released_leases_are_stale() {
    let mut h = Harness::new();
    let (token, _) = granted(h.apply(cmd(1000, acquire("job", "a", 100))));
    assert!(matches!(
        h.apply(fenced(1100, incr_op("c", 1), "job", token)),
        Response::Refused(OpError::Lease(LeaseError::StaleFence {
            reason: LeaseLoss::Expired { .. },
            ..
        }))
    ));
    let (token, _) = granted(h.apply(cmd(2000, acquire("job", "a", 100))));
    h.apply(cmd(
        2010,
        Op::Lease(LeaseOp::Release {
            name: b"job".to_vec(),
            holder: b"a".to_vec(),
            token,
        }),
    ));
    assert!(matches!(
        h.apply(fenced(2020, incr_op("c", 1), "job", token)),
        Response::Refused(OpError::Lease(LeaseError::StaleFence {
            reason: LeaseLoss::NotHeld,
            ..
        }))
    ));
    assert!(matches!(
        h.apply(fenced(2020, incr_op("c", 1), "never", 1)),
        Response::Refused(OpError::Lease(LeaseError::StaleFence {
            reason: LeaseLoss::NotHeld,
            ..
        }))
    ));
}

#[test]
fn bad_lease_input_is_refused() {
    for op in [
        acquire("", "a", 100),
        acquire("job", "", 100),
        acquire("job", "a", 0),
        acquire("job", "a", crate::limits::TTL_MS_MAX + 1),
    ] {
        assert!(validate_op(&op).is_err(), "{op:?} passes validation");
        let mut h = Harness::new();
        assert!(matches!(h.apply(cmd(1, op)), Response::Refused(_)));
        assert_eq!(h.store.scan(Table::Lease, &KeyRange::all(), 10).expect("scan"), vec![]);
    }
}

proptest::proptest! {
    /// Whatever the sequence of acquires, renews, releases and expiries, every new grant of a
    /// name carries a larger token than every earlier grant of it, and at most one holder is live.
    #[test]
    fn tokens_strictly_increase_and_one_holder_at_a_time(
        steps in proptest::collection::vec((0u8..3, 0u8..3, 1u64..40, 1u64..60), 1..80)
    ) {
        let mut h = Harness::new();
        let mut now = 1000;
        let mut highest = 0u64;
        let mut live: Option<(u8, u64, u64)> = None; // holder, token, expires
        for (kind, holder, advance, ttl) in steps {
            now += advance;
            let name = b"l".to_vec();
            let holder_bytes = vec![b'a' + holder];
            let op = match (kind, live) {
                (1, Some((_, token, _))) => Op::Lease(LeaseOp::Renew { name, holder: holder_bytes, token, ttl_ms: ttl }),
                (2, Some((_, token, _))) => Op::Lease(LeaseOp::Release { name, holder: holder_bytes, token }),
                _ => Op::Lease(LeaseOp::Acquire { name, holder: holder_bytes, ttl_ms: ttl }),
            };
            let is_acquire = matches!(op, Op::Lease(LeaseOp::Acquire { .. }));
            let response = h.apply(cmd(now, op));
            let current = live.filter(|(_, _, exp)| now < *exp);
            match response {
                Response::Lease(LeaseOutcome::Granted { token, expires_at_ms }) => {
                    match current {
                        Some((h0, t0, _)) => {
                            proptest::prop_assert_eq!(h0, holder, "granted while another holds it");
                            proptest::prop_assert_eq!(t0, token, "the live holder's token changed");
                        }
                        None => {
                            proptest::prop_assert!(is_acquire);
                            proptest::prop_assert!(token > highest, "token {} not above {}", token, highest);
                        }
                    }
                    highest = highest.max(token);
                    live = Some((holder, token, expires_at_ms));
                }
                Response::Lease(LeaseOutcome::Held { .. }) => {
                    proptest::prop_assert!(current.is_some_and(|(h0, _, _)| h0 != holder));
                }
                Response::Lease(LeaseOutcome::Released { .. }) => live = None,
                Response::Refused(OpError::Lease(LeaseError::NotHeld { .. })) => {}
                other => proptest::prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
