//! Leases, counters, rate limits and the ledger on real three-node clusters.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use basalt_client::ledger::{account_flags, transfer_flags, Account, AccountFilter, Transfer};
use basalt_client::{Acquired, Client, ClientError, CounterOp, CounterOutcome, ErrorCode, ReadConsistency};
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn granted(acquired: Acquired) -> u64 {
    match acquired {
        Acquired::Granted(g) => g.token,
        held => panic!("expected a grant, got {held:?}"),
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    result.expect_err("must be refused").code()
}

#[test]
fn a_paused_lease_holder_cannot_write_once_its_lease_moved_on() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let lease = client.lease("orders/leader");
        let ttl = Duration::from_millis(800);

        let token_a = granted(lease.acquire("worker-a", ttl).await.expect("acquire"));
        let as_a = client.fenced("orders/leader", token_a);
        as_a.kv()
            .put("orders/state", "written by a")
            .await
            .expect("fenced put while live");

        // Another holder must wait: it is refused now, then gets the lease once A's expires.
        assert!(matches!(
            lease.acquire("worker-b", ttl).await.expect("acquire"),
            Acquired::Held { ref holder, .. } if holder == b"worker-a"
        ));
        assert_eq!(
            code(lease.renew("worker-b", token_a, ttl).await),
            Some(ErrorCode::LeaseNotHeld),
            "a non-holder cannot renew"
        );
        // A "pauses" (a GC pause, a stalled VM) past its TTL; B waits for the lease and takes it.
        let token_b = granted(
            lease
                .acquire_waiting("worker-b", ttl, Duration::from_secs(5))
                .await
                .expect("acquire waiting"),
        );
        assert!(
            token_b > token_a,
            "fencing tokens must increase: {token_a} then {token_b}"
        );
        let as_b = client.fenced("orders/leader", token_b);
        as_b.kv()
            .put("orders/state", "written by b")
            .await
            .expect("b's fenced put");

        // A wakes up and writes with its old token: every kind of write is refused.
        assert_eq!(
            code(as_a.kv().put("orders/state", "stale a").await),
            Some(ErrorCode::StaleFence)
        );
        assert_eq!(
            code(as_a.counter("orders/count").incr(1).await),
            Some(ErrorCode::StaleFence)
        );
        assert_eq!(
            code(as_a.kv().delete("orders/state").await),
            Some(ErrorCode::StaleFence)
        );
        let state = client.kv().get("orders/state").await.expect("get").expect("present");
        assert_eq!(state.value, b"written by b");
        assert_eq!(client.counter("orders/count").get().await.expect("get"), 0);

        // Tokens keep increasing across a leader change.
        assert!(lease.release("worker-b", token_b).await.expect("release"));
        let leader = cluster.leader(&client).await;
        cluster.kill(leader);
        let token_c = granted(lease.acquire("worker-c", ttl).await.expect("acquire after leader kill"));
        assert!(
            token_c > token_b,
            "token after a leader change {token_c} not above {token_b}"
        );
        assert_eq!(
            code(as_b.kv().put("orders/state", "stale b").await),
            Some(ErrorCode::StaleFence)
        );
        let held = lease
            .get(ReadConsistency::Linearizable)
            .await
            .expect("get")
            .expect("held");
        assert_eq!((held.holder.as_slice(), held.token), (b"worker-c".as_slice(), token_c));
        cluster.restart(leader);
    });
}

#[test]
fn bounded_counters_and_rate_limits_refuse_atomically() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let seats = client.counter("event/seats");
        assert_eq!(seats.incr_bounded(8, None, Some(10)).await.expect("incr"), 8);
        assert_eq!(
            code(seats.incr_bounded(3, None, Some(10)).await),
            Some(ErrorCode::BoundExceeded)
        );
        assert_eq!(seats.get().await.expect("get"), 8, "a refused change changes nothing");
        // Many keys in one request, each decided on its own, with the current value when refused.
        let outcomes = client
            .counters()
            .apply(vec![
                CounterOp::bounded("event/seats", 2, None, Some(10)),
                CounterOp::bounded("event/seats", 1, None, Some(10)),
                CounterOp::incr("event/other", -4),
                CounterOp::set("event/reset-me", 0),
            ])
            .await
            .expect("batch");
        assert_eq!(
            outcomes,
            vec![
                CounterOutcome::Applied { value: 10 },
                CounterOutcome::BoundExceeded { value: 10 },
                CounterOutcome::Applied { value: -4 },
                CounterOutcome::Applied { value: 0 },
            ]
        );
        seats.reset().await.expect("reset");
        assert_eq!(
            client
                .counters()
                .get(
                    vec![b"event/seats".to_vec(), b"event/other".to_vec()],
                    ReadConsistency::Linearizable
                )
                .await
                .expect("get many"),
            vec![0, -4]
        );
        assert_eq!(
            code(
                client
                    .counters()
                    .apply(vec![CounterOp::bounded("k", 1, Some(5), Some(1))])
                    .await
            ),
            Some(ErrorCode::OutOfRange)
        );

        let limiter = client.rate_limiter();
        let window = Duration::from_secs(30);
        for i in 0..5 {
            let d = limiter
                .check("tenant:1/user:7/route:/search", 5, window, 1)
                .await
                .expect("check");
            assert!(d.allowed, "request {i} refused");
            assert_eq!(d.remaining, 4 - i);
        }
        let denied = limiter
            .check("tenant:1/user:7/route:/search", 5, window, 1)
            .await
            .expect("check");
        assert!(!denied.allowed);
        assert!(denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_secs(60));
        // Other keys are independent.
        assert!(
            limiter
                .check("tenant:1/user:8/route:/search", 5, window, 1)
                .await
                .expect("check")
                .allowed
        );
        let bucket = limiter
            .check_token_bucket("bucket", 1, Duration::from_secs(60), 2, 2)
            .await
            .expect("bucket");
        assert!(bucket.allowed && bucket.remaining == 0);
        assert!(
            !limiter
                .check_token_bucket("bucket", 1, Duration::from_secs(60), 2, 1)
                .await
                .expect("bucket")
                .allowed
        );
        assert_eq!(
            code(limiter.check("k", 0, window, 1).await),
            Some(ErrorCode::OutOfRange),
            "limit 0"
        );
        assert_eq!(
            code(limiter.check("k", 5, Duration::ZERO, 1).await),
            Some(ErrorCode::OutOfRange),
            "window 0"
        );
        assert_eq!(code(limiter.check("", 5, window, 1).await), Some(ErrorCode::EmptyKey));
    });
}

#[test]
fn counter_batches_and_rate_checks_survive_a_leader_kill_exactly_once() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let keys: Vec<Vec<u8>> = (0..10).map(|k| format!("hits/{k}").into_bytes()).collect();
        let (mut acknowledged, mut attempted) = (0i64, 0i64);
        let (mut decisions_allowed, mut decisions_unknown) = (0u64, 0u64);
        let mut killed = None;
        for round in 0..60 {
            if round == 20 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
                killed = Some(leader);
            }
            // Every key +1, and key 0 bounded at 45: the bound must hold through the failover.
            let mut ops: Vec<CounterOp> = keys.iter().map(|k| CounterOp::incr(k.clone(), 1)).collect();
            ops.push(CounterOp::bounded("hits/bounded", 1, None, Some(45)));
            attempted += 1;
            match client.counters().apply(ops).await {
                Ok(outcomes) => {
                    assert_eq!(outcomes.len(), 11);
                    acknowledged += 1;
                }
                Err(ClientError::Unavailable { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
            match client
                .rate_limiter()
                .check("hits/limited", 30, Duration::from_secs(600), 1)
                .await
            {
                Ok(d) => decisions_allowed += u64::from(d.allowed),
                Err(ClientError::Unavailable { .. }) => decisions_unknown += 1,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(acknowledged >= 50, "too few acknowledged rounds: {acknowledged}");
        let values = client
            .counters()
            .get(keys.clone(), ReadConsistency::Linearizable)
            .await
            .expect("get");
        for (key, value) in keys.iter().zip(&values) {
            assert!(
                (acknowledged..=attempted).contains(value),
                "{}: {value} outside [{acknowledged}, {attempted}]: an increment was lost or applied twice",
                String::from_utf8_lossy(key)
            );
        }
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "one batch, one entry: {values:?}"
        );
        assert_eq!(client.counter("hits/bounded").get().await.expect("get"), 45);
        // 60 checks against a limit of 30 in a 10-minute window: 30 allowed, failover or not (less
        // only by checks whose answer was lost).
        assert!(
            (30 - decisions_unknown..=30).contains(&decisions_allowed),
            "{decisions_allowed} allowed, {decisions_unknown} unknown"
        );
        if let Some(id) = killed {
            cluster.restart(id);
        }
    });
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 7,
        code: 1,
        ..Default::default()
    }
}

const ACCOUNTS: u128 = 8;

async fn ledger_totals(client: &Client) -> (u128, u128, u128, u128) {
    let ids: Vec<u128> = (1..=ACCOUNTS).collect();
    let accounts = client.ledger().lookup_accounts(&ids).await.expect("lookup");
    assert_eq!(accounts.len(), ACCOUNTS as usize);
    accounts.iter().fold((0, 0, 0, 0), |t, a| {
        (
            t.0 + a.debits_posted,
            t.1 + a.credits_posted,
            t.2 + a.debits_pending,
            t.3 + a.credits_pending,
        )
    })
}

#[test]
fn ledger_transfers_survive_a_leader_kill_exactly_once_with_totals_conserved() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let ledger = client.ledger();
        let accounts: Vec<Account> = (1..=ACCOUNTS)
            .map(|id| Account {
                id,
                ledger: 7,
                code: 1,
                flags: if id == 1 { account_flags::HISTORY } else { 0 },
                ..Default::default()
            })
            .collect();
        assert_eq!(ledger.create_accounts(&accounts).await.expect("create"), vec![]);
        let again = ledger.create_accounts(&accounts[..1]).await.expect("create again");
        assert_eq!(again[0].result, "exists");

        // Bad input gets its own code and moves nothing.
        let bad = ledger
            .create_transfers(&[
                transfer(9000, 1, 2, 0),
                transfer(9001, 1, 99, 5),
                transfer(9002, 3, 3, 5),
            ])
            .await
            .expect("bad batch");
        let results: Vec<&str> = bad.iter().map(|f| f.result.as_str()).collect();
        assert_eq!(
            results,
            vec![
                "amount_must_not_be_zero",
                "credit_account_not_found",
                "accounts_must_be_different"
            ]
        );

        // A stream of batches; the leader dies in the middle.
        let mut acknowledged: BTreeSet<u128> = BTreeSet::new();
        let mut unknown: BTreeSet<u128> = BTreeSet::new();
        let mut killed = None;
        for batch in 0..40u128 {
            if batch == 15 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
                killed = Some(leader);
            }
            let transfers: Vec<Transfer> = (0..25u128)
                .map(|i| {
                    let n = batch * 25 + i;
                    transfer(
                        1 + n,
                        1 + n % ACCOUNTS,
                        1 + (n + 1 + n / ACCOUNTS % 3) % ACCOUNTS,
                        1 + n % 5,
                    )
                })
                .collect();
            match ledger.create_transfers(&transfers).await {
                Ok(failures) => {
                    assert_eq!(failures, vec![], "batch {batch}");
                    acknowledged.extend(transfers.iter().map(|t| t.id));
                }
                Err(ClientError::Unavailable { .. }) => unknown.extend(transfers.iter().map(|t| t.id)),
                Err(e) => panic!("batch {batch}: {e}"),
            }
        }
        assert!(
            acknowledged.len() >= 30 * 25,
            "too few batches acknowledged: {}",
            acknowledged.len()
        );

        // Every acknowledged transfer is there; none applied twice (a re-submission is `exists`).
        let ids: Vec<u128> = acknowledged.iter().copied().collect();
        for chunk in ids.chunks(500) {
            assert_eq!(ledger.lookup_transfers(chunk).await.expect("lookup").len(), chunk.len());
            let resubmitted: Vec<Transfer> = chunk
                .iter()
                .map(|id| {
                    let n = id - 1;
                    transfer(
                        *id,
                        1 + n % ACCOUNTS,
                        1 + (n + 1 + n / ACCOUNTS % 3) % ACCOUNTS,
                        1 + n % 5,
                    )
                })
                .collect();
            let failures = ledger.create_transfers(&resubmitted).await.expect("resubmit");
            assert_eq!(failures.len(), chunk.len());
            assert!(failures.iter().all(|f| f.result == "exists"), "{failures:?}");
        }
        let (debits, credits, debits_pending, credits_pending) = ledger_totals(&client).await;
        assert_eq!(debits, credits, "posted totals conserved");
        assert_eq!(debits_pending, credits_pending);
        let expected: u128 = acknowledged.iter().map(|id| 1 + (id - 1) % 5).sum();
        let mut maybe = 0u128;
        if !unknown.is_empty() {
            let present = ledger
                .lookup_transfers(&unknown.iter().copied().collect::<Vec<_>>())
                .await
                .expect("lookup unknown");
            maybe = present.iter().map(|r| r.transfer.amount).sum();
        }
        assert_eq!(debits, expected + maybe, "exactly the applied transfers moved money");

        // Account 1 keeps its history; its transfers are queryable.
        let history = ledger
            .get_account_balances(&AccountFilter::all(1, 8000))
            .await
            .expect("history");
        let transfers = ledger
            .get_account_transfers(&AccountFilter::all(1, 8000))
            .await
            .expect("transfers");
        assert_eq!(history.len(), transfers.len());
        assert!(!history.is_empty());
        assert_eq!(
            code(ledger.get_account_transfers(&AccountFilter::all(1, 0)).await),
            Some(ErrorCode::OutOfRange),
            "limit 0"
        );
        if let Some(id) = killed {
            cluster.restart(id);
        }
    });
}

#[test]
fn a_pending_transfer_that_times_out_is_voided_by_the_cluster() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let ledger = client.ledger();
        let accounts: Vec<Account> = (1..=ACCOUNTS)
            .map(|id| Account {
                id,
                ledger: 7,
                code: 1,
                ..Default::default()
            })
            .collect();
        assert_eq!(ledger.create_accounts(&accounts).await.expect("create"), vec![]);
        let pending = Transfer {
            flags: transfer_flags::PENDING,
            timeout: 1,
            ..transfer(1, 1, 2, 40)
        };
        let held = Transfer {
            flags: transfer_flags::PENDING,
            ..transfer(2, 1, 2, 60)
        };
        assert_eq!(
            ledger.create_transfers(&[pending, held]).await.expect("pending"),
            vec![]
        );
        assert_eq!(ledger_totals(&client).await, (0, 0, 100, 100));
        // The leader's sweeper voids the first within about a second of its timeout.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = &ledger.lookup_transfers(&[1]).await.expect("lookup")[0].pending_status;
            if status == "expired" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pending transfer still {status:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ledger_totals(&client).await, (0, 0, 60, 60));
        let post = |id, pending_id| Transfer {
            flags: transfer_flags::POST_PENDING_TRANSFER,
            pending_id,
            ..transfer(id, 0, 0, 0)
        };
        let failures = ledger
            .create_transfers(&[post(3, 1), post(4, 2), post(5, 2)])
            .await
            .expect("post");
        let results: Vec<(u32, &str)> = failures.iter().map(|f| (f.index, f.result.as_str())).collect();
        assert_eq!(
            results,
            vec![(0, "pending_transfer_expired"), (2, "pending_transfer_already_posted")]
        );
        assert_eq!(ledger_totals(&client).await, (60, 60, 0, 0));
    });
}

/// Answers larger than tonic's default 4 MiB reach the SDK: a scan, a watch and a fetch of
/// 20 values of 1 MiB each. The SDK decoded at most 4 MiB, so each of them failed; the server
/// now cuts scan and watch answers at 16 MiB (a scan is read in two answers, a watch in two
/// messages) and a fetch at its `max_bytes`, at most 16 MiB.
#[test]
fn answers_of_many_megabytes_reach_the_sdk_in_pieces_the_server_bounds() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        const VALUES: usize = 20;
        let value = |i: usize| vec![b'a' + i as u8; 1024 * 1024];
        let mut first_revision = 0;
        for i in 0..VALUES {
            let revision = client.kv().put(format!("big/{i:02}"), value(i)).await.expect("put");
            if i == 0 {
                first_revision = revision;
            }
        }

        let scanned = client.kv().scan("big/", 0).await.expect("a 20 MiB scan");
        assert_eq!(scanned.len(), VALUES);
        for (i, (key, v)) in scanned.iter().enumerate() {
            assert_eq!(key, format!("big/{i:02}").as_bytes());
            assert!(*v == value(i), "value of {}", String::from_utf8_lossy(key));
        }
        // A limit below the count still stops at the limit, across answers.
        assert_eq!(client.kv().scan("big/", 18).await.expect("scan").len(), 18);

        let mut watch = client.kv().watch("big/", first_revision).await.expect("watch");
        for i in 0..VALUES {
            let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .expect("a watch event in time")
                .expect("the watch goes on")
                .expect("a 20 MiB history");
            assert_eq!(event.key, format!("big/{i:02}").as_bytes());
            assert!(event.value == value(i));
        }

        let streams = client.streams();
        streams
            .create_topic(
                "big",
                basalt_client::TopicOptions {
                    partitions: 1,
                    ..Default::default()
                },
            )
            .await
            .expect("create topic");
        for i in 0..VALUES {
            streams
                .produce("big", vec![basalt_client::Record::new(format!("r{i}"), value(i))])
                .await
                .expect("produce");
        }
        let mut offset = 0;
        let mut answers = 0;
        while offset < VALUES as u64 {
            let options = basalt_client::FetchOptions {
                max_bytes: u64::MAX,
                ..Default::default()
            };
            let fetched = streams.fetch("big", 0, offset, options).await.expect("fetch");
            let bytes: usize = fetched.records.iter().map(|r| r.key.len() + r.value.len()).sum();
            assert!(bytes <= 16 * 1024 * 1024, "a fetch answer of {bytes} bytes");
            assert!(!fetched.records.is_empty());
            offset = fetched.records.last().expect("a record").offset + 1;
            answers += 1;
        }
        assert_eq!(answers, 2, "max_bytes lowered to 16 MiB: 15 records, then 5");
    });
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit u64")
}

/// Windowed counters meter usage: events land in the window holding their time, a range reads each
/// window and the sum in one call, an event past the retention or too far ahead is refused with a
/// typed error and changes nothing, buckets are forgotten after their retention, and the CLI reads
/// the same. A deleted counter reads 0.
#[test]
fn windowed_counters_meter_usage_and_refuse_late_events() {
    use basalt_client::window::{HOUR, MINUTE};
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let now = now_ms();
        let this_minute = now - now % 60_000;
        let previous = this_minute - 60_000;
        let outcomes = client
            .counters()
            .apply(vec![
                CounterOp::windowed("usage/t1", 2, MINUTE, HOUR, Some(previous + 5)),
                CounterOp::windowed("usage/t1", 1, MINUTE, HOUR, Some(this_minute - 1)),
                CounterOp::windowed("usage/t1", 4, MINUTE, HOUR, Some(this_minute)),
                CounterOp::windowed("usage/t1", 7, HOUR, HOUR, Some(this_minute)),
                CounterOp::windowed("usage/t1", 1, MINUTE, HOUR, Some(now - 2 * 3_600_000)),
            ])
            .await
            .expect("apply");
        assert_eq!(
            &outcomes[..4],
            &[
                CounterOutcome::Applied { value: 2 },
                CounterOutcome::Applied { value: 3 },
                CounterOutcome::Applied { value: 4 },
                CounterOutcome::Applied { value: 7 },
            ]
        );
        assert!(
            matches!(outcomes[4], CounterOutcome::TooLate { .. }),
            "{:?}",
            outcomes[4]
        );
        let usage = client.counter("usage/t1");
        let read = usage
            .windows(MINUTE, previous, this_minute + 60_000)
            .await
            .expect("read");
        assert_eq!(read.windows, vec![(previous, 3), (this_minute, 4)]);
        assert_eq!(read.sum, 7);
        assert_eq!(
            usage.get().await.expect("get"),
            0,
            "windows live apart from the counter"
        );

        assert_eq!(
            code(usage.incr_window(1, MINUTE, HOUR, Some(now - 3 * 3_600_000)).await),
            Some(ErrorCode::WindowClosed)
        );
        assert_eq!(
            code(usage.incr_window(1, MINUTE, HOUR, Some(now + 3_600_000)).await),
            Some(ErrorCode::WindowNotOpen)
        );
        assert_eq!(
            code(usage.incr_window(1, Duration::from_millis(10), HOUR, None).await),
            Some(ErrorCode::OutOfRange)
        );
        assert_eq!(code(usage.windows(MINUTE, 0, now).await), Some(ErrorCode::OutOfRange));
        assert_eq!(
            usage
                .windows(MINUTE, previous, this_minute + 60_000)
                .await
                .expect("read")
                .sum,
            7,
            "refusals changed nothing"
        );

        // A bucket of one second kept one second is forgotten by the leader's sweep.
        let brief = client.counter("usage/brief");
        brief
            .incr_window(1, Duration::from_secs(1), Duration::from_secs(1), None)
            .await
            .expect("incr");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let read = brief
                .windows(Duration::from_secs(1), now, now_ms() + 1000)
                .await
                .expect("read");
            if read.windows.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "bucket never swept: {read:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The CLI: a windowed increment, a range read, a refusal, a delete.
        let endpoints = cluster.endpoints();
        let cli = |args: Vec<String>| {
            let endpoints = endpoints.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                basalt_testkit::run_cli(NODE, &endpoints, &args, None).await
            }
        };
        let windowed = |by: &str, at: u64| {
            format!("counter incr usage/t1 --by {by} --window minute --retention 1h --at-ms {at}")
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let run = cli(windowed("5", this_minute)).await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "9"), "{}", run.stderr);
        let run = cli("counter windows usage/t1 --window minute --last 1h"
            .split(' ')
            .map(str::to_string)
            .collect())
        .await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(
            run.stdout.contains(&format!("{this_minute} 9")) && run.stdout.ends_with("sum 12\n"),
            "{}",
            run.stdout
        );
        let run = cli(windowed("1", 1000)).await;
        assert_eq!(run.code, Some(1));
        assert!(run.stderr.contains("WINDOW_CLOSED"), "{}", run.stderr);

        let plain = client.counter("plain");
        plain.incr(4).await.expect("incr");
        plain.delete().await.expect("delete");
        assert_eq!(plain.get().await.expect("get"), 0);
        let run = cli(vec!["counter".into(), "delete".into(), "usage/t1".into()]).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    });
}

/// An expiring counter counts until the expiry fixed when it was created, then reads 0 and starts
/// again, through the SDK and the CLI; a TTL for a counter holding a value without one is refused.
#[test]
fn expiring_counters_count_until_the_expiry_fixed_at_creation() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let fails = client.counter("fails/u1");
        let before = now_ms();
        assert_eq!(fails.incr_expiring(1, Duration::from_secs(3)).await.expect("incr"), 1);
        // A later TTL does not move the expiry; a plain incr counts into it.
        assert_eq!(fails.incr_expiring(1, Duration::from_secs(600)).await.expect("incr"), 2);
        assert_eq!(fails.incr(1).await.expect("incr"), 3);
        let read = fails.read().await.expect("read");
        assert_eq!(read.value, 3);
        let expires_at = read.expires_at_ms.expect("an expiry");
        assert!(
            (before + 3000..=now_ms() + 3000).contains(&expires_at),
            "expires at {expires_at}, created after {before}"
        );
        // A linearizable read after the expiry reads 0, swept or not; it starts again from 0.
        let deadline = Instant::now() + Duration::from_secs(20);
        while fails.get().await.expect("get") != 0 {
            assert!(Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(now_ms() >= expires_at, "read 0 before its expiry");
        assert_eq!(fails.read().await.expect("read").expires_at_ms, None);
        assert_eq!(fails.incr_expiring(5, Duration::from_secs(60)).await.expect("incr"), 5);

        let plain = client.counter("plain/u1");
        plain.incr(2).await.expect("incr");
        assert_eq!(
            code(plain.incr_expiring(1, Duration::from_secs(60)).await),
            Some(ErrorCode::CounterNotExpiring)
        );
        assert_eq!(plain.get().await.expect("get"), 2, "the refusal changed nothing");

        // The CLI: an expiring increment, its TTL, the refusal.
        let endpoints = cluster.endpoints();
        let cli = |args: &'static str| {
            let endpoints = endpoints.clone();
            async move {
                let args: Vec<&str> = args.split(' ').collect();
                basalt_testkit::run_cli(NODE, &endpoints, &args, None).await
            }
        };
        let run = cli("counter incr logins/u2 --by 2 --ttl 10m").await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "2"), "{}", run.stderr);
        let run = cli("counter ttl logins/u2").await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let left: u64 = run.stdout.trim().parse().expect("ms left");
        assert!((500_000..=600_000).contains(&left), "{left} ms left");
        let run = cli("counter ttl plain/u1").await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "none"), "{}", run.stderr);
        let run = cli("counter incr plain/u1 --ttl 1m").await;
        assert_eq!(run.code, Some(1));
        assert!(run.stderr.contains("COUNTER_NOT_EXPIRING"), "{}", run.stderr);
    });
}

/// While the cluster cannot commit (two of three nodes down), a check answers as its policy says:
/// the error, fail open, fail closed, or this client's share of the limit decided locally; once
/// the cluster is back it decides again.
#[test]
fn a_rate_check_follows_its_policy_while_the_cluster_is_unreachable() {
    use basalt_client::{DecidedBy, RateCheck, RateLimit, WhenUnreachable};
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        cluster.client().await;
        let options = basalt_client::ClientOptions {
            request_timeout: Duration::from_millis(1500),
            attempt_timeout: Duration::from_millis(400),
            ..cluster.client_options()
        };
        let client = Client::connect_with(cluster.endpoints(), options)
            .await
            .expect("connect");
        let limiter = client.rate_limiter();
        let check = || RateCheck {
            key: b"api/tenant-1".to_vec(),
            limit: RateLimit::SlidingWindow {
                limit: 8,
                window: Duration::from_secs(600),
            },
            cost: 1,
        };
        let verdict = limiter
            .check_with(check(), WhenUnreachable::FailClosed)
            .await
            .expect("check");
        assert_eq!(
            (verdict.decided_by, verdict.decision.allowed),
            (DecidedBy::Cluster, true)
        );

        cluster.kill(2);
        cluster.kill(3);
        assert_eq!(
            code(limiter.check_with(check(), WhenUnreachable::Error).await),
            Some(ErrorCode::Unavailable)
        );
        let open = limiter
            .check_with(check(), WhenUnreachable::FailOpen)
            .await
            .expect("open");
        assert_eq!((open.decided_by, open.decision.allowed), (DecidedBy::FailOpen, true));
        let closed = limiter
            .check_with(check(), WhenUnreachable::FailClosed)
            .await
            .expect("closed");
        assert_eq!(
            (closed.decided_by, closed.decision.allowed),
            (DecidedBy::FailClosed, false)
        );
        // A share of 8 / 4 instances: two admitted, then refused.
        let mut local = Vec::new();
        for _ in 0..3 {
            let v = limiter
                .check_with(check(), WhenUnreachable::LocalShare { instances: 4 })
                .await
                .expect("local");
            assert_eq!(v.decided_by, DecidedBy::LocalShare);
            local.push(v.decision.allowed);
        }
        assert_eq!(local, vec![true, true, false]);
        // Bad input is an error whatever the policy.
        let zero = RateCheck {
            cost: 0,
            limit: RateLimit::SlidingWindow {
                limit: 0,
                window: Duration::from_secs(1),
            },
            ..check()
        };
        assert!(limiter.check_with(zero, WhenUnreachable::FailOpen).await.is_err());
        assert_eq!(
            code(
                limiter
                    .check_with(check(), WhenUnreachable::LocalShare { instances: 0 })
                    .await
            ),
            Some(ErrorCode::InvalidArgument)
        );

        cluster.restart(2);
        cluster.restart(3);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = limiter
                .check_with(check(), WhenUnreachable::LocalShare { instances: 4 })
                .await
                .expect("check");
            // Only who decides: checks whose outcome was unknown during the cut may have been
            // counted once the cluster is back, so the count is not asserted.
            if v.decided_by == DecidedBy::Cluster {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never answered again");
        }
    });
}

/// Concurrent single rate checks of one client leave in shared batches (far fewer Raft entries
/// than checks), each decided on its own and in order: exactly the limit is admitted, and a bad
/// check among them is refused alone.
#[test]
fn concurrent_rate_checks_of_one_client_share_entries_and_admit_exactly_the_limit() {
    const TASKS: u32 = 32;
    const CHECKS: u32 = 10;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        // The node answering may be a follower that has not received the first entries yet.
        let last_index = |client: Client| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(index) = client.cluster_status().await.expect("status").last_log_index {
                    return index;
                }
                assert!(Instant::now() < deadline, "no node reports a log");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // One check first, as in the KV coalescing test: the node answering the status has a log.
        client
            .rate_limiter()
            .check("api/warm-up", 1, Duration::from_secs(1), 1)
            .await
            .expect("check");
        let before = last_index(client.clone()).await;
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let limiter = client.rate_limiter();
                tokio::spawn(async move {
                    let mut admitted = 0u32;
                    for _ in 0..CHECKS {
                        let d = limiter
                            .check("api/shared", 100, Duration::from_secs(600), 1)
                            .await
                            .expect("check");
                        admitted += u32::from(d.allowed);
                    }
                    if t == 0 {
                        let bad = limiter.check("api/shared", 100, Duration::from_secs(600), 101).await;
                        assert_eq!(code(bad), Some(ErrorCode::OutOfRange));
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += task.await.expect("task");
        }
        assert_eq!(admitted, 100, "exactly the limit of {} checks", TASKS * CHECKS);
        let entries = last_index(client.clone()).await - before;
        assert!(
            entries < u64::from(TASKS * CHECKS) / 2,
            "{entries} entries for {} checks",
            TASKS * CHECKS
        );
    });
}
