//! Rate limits: both algorithms, against exact references.

use std::collections::VecDeque;

use proptest::prelude::any;

use super::rate::decide;
use super::tests::{cmd, Harness};
use super::*;
use crate::command::{RateCheck, RateDecision, RateLimit};

fn check(key: &str, limit: RateLimit, cost: u64) -> RateCheck {
    RateCheck {
        key: key.into(),
        limit,
        cost,
    }
}

fn decisions(response: Response) -> Vec<RateDecision> {
    match response {
        Response::RateDecisions(d) => d,
        other => panic!("expected decisions, got {other:?}"),
    }
}

const SLIDING: RateLimit = RateLimit::SlidingWindow {
    limit: 10,
    window_ms: 1000,
};

#[test]
fn sliding_window_allows_up_to_the_limit_then_says_when_to_retry() {
    let mut h = Harness::new();
    let batch: Vec<_> = (0..11).map(|_| check("user:1", SLIDING, 1)).collect();
    let d = decisions(h.apply(cmd(10_000, Op::Rate(RateOp::Check { checks: batch }))));
    assert!(d[..10].iter().all(|d| d.allowed));
    assert_eq!(d[9].remaining, 0);
    let refused = d[10];
    assert!(!refused.allowed);
    // All 10 were spent at the start of window 10: the next window starts with all of them
    // weighing fully, and one unit frees up after a tenth of it.
    assert_eq!(refused.retry_after_ms, 1000 + 100);
    assert_eq!(refused.reset_at_ms, 12_000);
    // Retrying exactly then is allowed, a millisecond earlier is not.
    let d = decisions(h.apply(cmd(
        11_099,
        Op::Rate(RateOp::Check {
            checks: vec![check("user:1", SLIDING, 1)],
        }),
    )));
    assert!(!d[0].allowed);
    let d = decisions(h.apply(cmd(
        11_100,
        Op::Rate(RateOp::Check {
            checks: vec![check("user:1", SLIDING, 1)],
        }),
    )));
    assert!(d[0].allowed);
}

#[test]
fn token_bucket_refills_at_its_rate_up_to_its_burst() {
    let bucket = RateLimit::TokenBucket {
        rate: 2,
        per_ms: 1000,
        burst: 5,
    };
    let (state, d) = decide(None, bucket, 5, 0);
    assert!(d.allowed && d.remaining == 0);
    let (state, d) = decide(Some(state), bucket, 1, 100);
    assert!(!d.allowed);
    assert_eq!(
        d.retry_after_ms, 400,
        "one token takes 500 ms at 2/s; 100 ms have passed"
    );
    let (state, d) = decide(Some(state), bucket, 1, 500);
    assert!(d.allowed);
    // Long idle: the bucket caps at its burst.
    let (_, d) = decide(Some(state), bucket, 0, 100_000);
    assert_eq!(d.remaining, 5);
}

#[test]
fn bad_rate_input_is_refused() {
    let cases = [
        check(
            "k",
            RateLimit::SlidingWindow {
                limit: 0,
                window_ms: 1000,
            },
            1,
        ),
        check("k", RateLimit::SlidingWindow { limit: 5, window_ms: 0 }, 1),
        check(
            "k",
            RateLimit::SlidingWindow {
                limit: 5,
                window_ms: 1000,
            },
            6,
        ),
        check(
            "k",
            RateLimit::TokenBucket {
                rate: 0,
                per_ms: 1000,
                burst: 5,
            },
            1,
        ),
        check(
            "k",
            RateLimit::TokenBucket {
                rate: 1,
                per_ms: 1000,
                burst: 0,
            },
            0,
        ),
        check("", SLIDING, 1),
    ];
    for c in cases {
        let op = Op::Rate(RateOp::Check {
            checks: vec![check("fine", SLIDING, 1), c],
        });
        assert!(validate_op(&op).is_err(), "{op:?} passes validation");
        let mut h = Harness::new();
        assert!(matches!(h.apply(cmd(1, op)), Response::Refused(_)));
        assert_eq!(
            h.store.scan(Table::RateLimit, &KeyRange::all(), 10).expect("scan"),
            vec![]
        );
    }
    assert!(validate_op(&Op::Rate(RateOp::Check { checks: vec![] })).is_err());
}

/// A deterministic pseudo-random generator, so the trace is the same on every run.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Runs the sliding-window counter and an exact sliding log, each deciding on its own, over the
/// same generated trace (phases under, at and over the limit) and reports how often they disagree,
/// how many each admitted, and the most the counter ever admitted within one sliding window.
/// Cloudflare reported 0.003% of decisions wrong on their traffic, most of it far from its
/// limits; a trace that hovers at the limit is the hard case, so the bounds here are looser.
#[test]
fn sliding_window_counter_stays_close_to_an_exact_sliding_log() {
    let (limit, window_ms) = (100u64, 1000u64);
    let spec = RateLimit::SlidingWindow { limit, window_ms };
    let mut seed = 7;
    let mut now = 0u64;
    let mut state = None;
    let mut exact_log: VecDeque<u64> = VecDeque::new();
    let mut counter_log: VecDeque<u64> = VecDeque::new();
    let (mut requests, mut exact_admitted, mut counter_admitted) = (0u64, 0u64, 0u64);
    let mut per_phase = [(0u64, 0u64); 3]; // (requests, disagreements)
    let mut most_in_window = 0usize;
    for _ in 0..300_000 {
        // Mean gaps of 40, 10 and 6 ms: 25, 100 and 167 requests per second against 100.
        let phase = (now / 7_000) % 3;
        let mean_gap = [40, 10, 6][phase as usize];
        now += lcg(&mut seed) % (2 * mean_gap);
        for log in [&mut exact_log, &mut counter_log] {
            while log.front().is_some_and(|t| *t + window_ms <= now) {
                log.pop_front();
            }
        }
        let exact_allowed = (exact_log.len() as u64) < limit;
        if exact_allowed {
            exact_log.push_back(now);
            exact_admitted += 1;
        }
        let (next, decision) = decide(state, spec, 1, now);
        state = Some(next);
        if decision.allowed {
            counter_log.push_back(now);
            counter_admitted += 1;
            most_in_window = most_in_window.max(counter_log.len());
        }
        requests += 1;
        per_phase[phase as usize].0 += 1;
        per_phase[phase as usize].1 += u64::from(decision.allowed != exact_allowed);
    }
    let share = |(n, d): (u64, u64)| d as f64 / n as f64;
    let disagreements: u64 = per_phase.iter().map(|p| p.1).sum();
    let disagreement = disagreements as f64 / requests as f64;
    let admitted_ratio = counter_admitted as f64 / exact_admitted as f64;
    println!(
        "sliding-window counter vs exact sliding log over {requests} requests: {:.3}% of decisions differ; \
         admitted {counter_admitted} vs {exact_admitted} (ratio {admitted_ratio:.4}); \
         at most {most_in_window} admitted in one sliding window (limit {limit}); \
         differing decisions by phase (25/s, 100/s, 167/s): {:.3}%, {:.3}%, {:.3}%",
        disagreement * 100.0,
        share(per_phase[0]) * 100.0,
        share(per_phase[1]) * 100.0,
        share(per_phase[2]) * 100.0
    );
    assert!(
        (0.97..=1.03).contains(&admitted_ratio),
        "admitted ratio {admitted_ratio}"
    );
    assert!(
        most_in_window as f64 <= limit as f64 * 1.2,
        "{most_in_window} in one window"
    );
    // Well under the limit both must agree; at and over it they disagree on *which* requests get
    // in (near-ties), which the totals above bound.
    assert!(
        share(per_phase[0]) < 0.001,
        "disagreement under the limit: {}",
        share(per_phase[0])
    );
}

fn sweep(h: &mut Harness, now_ms: u64) -> u32 {
    match h.apply(cmd(now_ms, Op::Rate(RateOp::Sweep { limit: 1000 }))) {
        Response::Swept { removed } => removed,
        other => panic!("expected a sweep, got {other:?}"),
    }
}

#[test]
fn keys_back_to_full_allowance_are_forgotten_by_the_sweep() {
    let mut h = Harness::new();
    h.apply(cmd(
        10_000,
        Op::Rate(RateOp::Check {
            checks: vec![check("k", SLIDING, 3)],
        }),
    ));
    assert_eq!(
        h.store
            .scan(Table::RateLimit, &KeyRange::all(), 10)
            .expect("scan")
            .len(),
        1
    );
    // reset_at is 12 000 (end of the next window), rounded up to the minute: 60 000.
    assert_eq!(sweep(&mut h, 59_999), 0);
    assert_eq!(sweep(&mut h, 60_000), 1);
    assert!(h
        .store
        .scan(Table::RateLimit, &KeyRange::all(), 10)
        .expect("scan")
        .is_empty());
    assert!(h
        .store
        .scan(Table::RateExpiry, &KeyRange::all(), 10)
        .expect("scan")
        .is_empty());
    // A key used again later moves in the index; the old index entry forgets nothing.
    h.apply(cmd(
        61_000,
        Op::Rate(RateOp::Check {
            checks: vec![check("k", SLIDING, 1)],
        }),
    ));
    h.apply(cmd(
        119_500,
        Op::Rate(RateOp::Check {
            checks: vec![check("k", SLIDING, 1)],
        }),
    ));
    assert_eq!(sweep(&mut h, 120_000), 0, "the key was used at 119.5 s: still counting");
    assert_eq!(
        h.store
            .scan(Table::RateExpiry, &KeyRange::all(), 10)
            .expect("scan")
            .len(),
        1
    );
}

proptest::proptest! {
    /// Forgetting keys is invisible: with sweeps interleaved at random, every decision equals the
    /// one made without any sweep.
    #[test]
    fn sweeps_never_change_a_decision(
        steps in proptest::collection::vec((0u8..3, 0u64..90_000, 1u64..4, any::<bool>()), 1..60)
    ) {
        let specs = [
            SLIDING,
            RateLimit::SlidingWindow { limit: 3, window_ms: 20_000 },
            RateLimit::TokenBucket { rate: 1, per_ms: 30_000, burst: 3 },
        ];
        let (mut swept, mut unswept) = (Harness::new(), Harness::new());
        let mut now = 1_000;
        for (key, advance, cost, sweep_first) in steps {
            now += advance;
            if sweep_first {
                sweep(&mut swept, now);
            }
            let c = check(["a", "b", "c"][key as usize], specs[key as usize], cost);
            let op = Op::Rate(RateOp::Check { checks: vec![c] });
            proptest::prop_assert_eq!(swept.apply(cmd(now, op.clone())), unswept.apply(cmd(now, op)));
        }
    }
}
