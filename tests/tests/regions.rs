//! Several regions replicating asynchronously through link proxies: convergence after a
//! partition, no loss across a leader change, and last-writer-wins under clock skew.

use std::collections::BTreeMap;
use std::time::Duration;

use basalt_client::{window, ReadConsistency};
use basalt_testkit::regions::{RegionSpec, TestRegions};
use basalt_testkit::runtime;

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// Whether a write failed with its outcome unknown (it may have applied): what a write forwarded
/// to an unreachable home region answers once the SDK's retries run out.
fn outcome_unknown(e: &basalt_client::ClientError) -> bool {
    matches!(
        e,
        basalt_client::ClientError::Unavailable {
            outcome_unknown: true,
            ..
        }
    )
}

fn one_node(name: &'static str) -> RegionSpec {
    RegionSpec {
        name,
        nodes: 1,
        extra_args: Vec::new(),
    }
}

/// Two one-node regions, us (home) and eu, eu's node started with `eu_args` as well.
async fn us_and_eu_started_with(eu_args: Vec<String>) -> TestRegions {
    let eu = RegionSpec {
        name: "eu",
        nodes: 1,
        extra_args: eu_args,
    };
    TestRegions::start(NODE, vec![one_node("us"), eu]).await
}

/// Two one-node regions, us (home) and eu, 20 ms apart.
async fn us_and_eu() -> TestRegions {
    let regions = TestRegions::start(NODE, vec![one_node("us"), one_node("eu")]).await;
    regions
        .links
        .set_delay(&[1, 2], Duration::from_millis(20), Duration::ZERO);
    regions
}

/// Three regions cut off from each other keep serving local reads and writes; conflicting
/// writes of KV keys and counters land in all three, each takes stock as far as its escrow and
/// checks a global rate limit, and the home keeps its ledger and a mirrored topic going. After
/// the heal every region reaches the same digest, counters hold every acknowledged increment from
/// every region, stock is exactly at its bound, every copy of the ledger and mirror is whole, the
/// global limit counts every region's admissions, and each KV key holds one of the values written
/// to it (the last one, where one region alone wrote it).
#[test]
fn partitioned_regions_keep_serving_and_converge_after_the_heal() {
    use basalt_client::ledger::{Account, Transfer};
    use basalt_client::{FetchOptions, Record, TopicOptions};

    runtime().block_on(async {
        let regions = TestRegions::start(NODE, vec![one_node("us"), one_node("eu"), one_node("ap")]).await;
        regions
            .links
            .set_delay(&[1, 2, 3], Duration::from_millis(20), Duration::from_millis(5));
        let names = ["us", "eu", "ap"];
        let mut clients = Vec::new();
        for name in names {
            clients.push(regions.client(name).await);
        }
        // Something replicated before the partition: KV, ledger accounts at the home (us), a
        // mirrored topic, and stock whose escrow us shares with the others.
        clients[0].kv().put("before", "us").await.expect("put");
        clients[0].kv().put("doomed", "us").await.expect("put");
        let accounts: Vec<Account> = (1..=2u128)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        assert_eq!(
            clients[0].ledger().create_accounts(&accounts).await.expect("accounts"),
            vec![]
        );
        let mirrored = TopicOptions {
            partitions: 1,
            mirror: true,
            ..TopicOptions::default()
        };
        clients[0]
            .streams()
            .create_topic("events", mirrored)
            .await
            .expect("topic");
        let stock = clients[0].counter("stock");
        stock.incr_bounded(30, Some(0), None).await.expect("stock");
        stock.transfer_escrow("eu", 10, None).await.expect("escrow to eu");
        stock.transfer_escrow("ap", 10, None).await.expect("escrow to ap");
        regions.wait_converged(Duration::from_secs(30)).await;
        assert_eq!(
            clients[2].kv().get("before").await.expect("get").map(|e| e.value),
            Some(b"us".to_vec())
        );

        regions.partition_all();
        let mut written: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut last_only: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut increments = 0i64;
        // Every region meters into the same hourly window while partitioned.
        let metered_at_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("ms");
        let (mut taken, mut admitted) = (0, 0);
        for round in 0..20 {
            for (r, client) in clients.iter().enumerate() {
                let region = names[r];
                // Shared keys: every region writes them (conflicts).
                let key = format!("shared-{}", round % 4);
                let value = format!("{region}-{round}").into_bytes();
                client
                    .kv()
                    .put(&key, &value)
                    .await
                    .expect("a partitioned region takes local writes");
                written.entry(key).or_default().push(value);
                // Keys of one region only: the last write must survive.
                let own = format!("own-{region}");
                let value = format!("{round}").into_bytes();
                client.kv().put(&own, &value).await.expect("put");
                last_only.insert(own, value);
                client.counter("hits").incr(1 + r as i64).await.expect("incr");
                client
                    .counter("metered")
                    .incr_window(1 + r as i64, window::HOUR, window::DAY, Some(metered_at_ms))
                    .await
                    .expect("windowed incr");
                increments += 1 + r as i64;
                // Everyone takes stock while its escrow lasts, and checks a global rate limit.
                if client.counter("stock").incr_bounded(-1, Some(0), None).await.is_ok() {
                    taken += 1;
                }
                if client
                    .rate_limiter()
                    .check_global("api", 5, Duration::from_secs(600), 1)
                    .await
                    .expect("global check")
                    .allowed
                {
                    admitted += 1;
                }
            }
            // The home keeps its ledger and its mirrored topic going.
            let transfer = Transfer {
                id: 100 + u128::from(round as u32),
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 5,
                ledger: 1,
                code: 1,
                ..Default::default()
            };
            assert_eq!(
                clients[0]
                    .ledger()
                    .create_transfers(&[transfer])
                    .await
                    .expect("transfer"),
                vec![]
            );
            clients[0]
                .streams()
                .produce("events", vec![Record::new("", format!("e-{round}")).to_partition(0)])
                .await
                .expect("produce");
        }
        assert_eq!(taken, 30, "each region took exactly its escrow of the stock, no more");
        assert_eq!(admitted, 15, "partitioned, each region admits up to the limit alone");
        // The link drops what crosses it: the forwarded transfer may have reached the home as far
        // as eu can tell, so the answer is "outcome unknown", never "refused".
        let cut_off = clients[1]
            .ledger()
            .create_transfers(&[Transfer {
                id: 999,
                ..Default::default()
            }])
            .await
            .expect_err("cut off from the home");
        assert!(outcome_unknown(&cut_off), "{cut_off}");
        // A delete in one region, racing a later write in another.
        clients[0].kv().delete("shared-1").await.expect("delete");
        tokio::time::sleep(Duration::from_millis(5)).await;
        clients[1]
            .kv()
            .put("shared-1", "eu-after-us-delete")
            .await
            .expect("put");
        written
            .entry("shared-1".into())
            .or_default()
            .push(b"eu-after-us-delete".to_vec());
        // A delete in ap alone: ap keeps its tombstone while it cannot hear from the others.
        clients[2].kv().delete("doomed").await.expect("delete");
        let ap = regions.status("ap").await.expect("ap status");
        assert!(ap.tombstones >= 1, "{ap:?}");
        // Local reads during the partition see local writes.
        assert_eq!(
            clients[1].kv().get("shared-1").await.expect("read").map(|e| e.value),
            Some(b"eu-after-us-delete".to_vec())
        );

        regions.links.heal_cuts();
        let digest = regions.wait_converged(Duration::from_secs(60)).await;
        assert!(!digest.is_empty());
        for client in &clients {
            assert_eq!(
                client
                    .counter("hits")
                    .get_with(ReadConsistency::Linearizable)
                    .await
                    .expect("get"),
                increments,
                "every acknowledged increment of every region, once"
            );
            let metered = client
                .counter("metered")
                .windows(window::HOUR, metered_at_ms, metered_at_ms + 1)
                .await
                .expect("windows");
            assert_eq!(metered.sum, increments, "every region's windowed increments, once");
            for (key, value) in &last_only {
                assert_eq!(
                    client.kv().get(key).await.expect("get").map(|e| e.value).as_ref(),
                    Some(value)
                );
            }
            for (key, values) in &written {
                if let Some(entry) = client.kv().get(key).await.expect("get") {
                    assert!(
                        values.contains(&entry.value),
                        "{key}: {:?} was never written",
                        entry.value
                    );
                }
            }
            assert_eq!(client.kv().get("doomed").await.expect("get"), None);
            assert_eq!(
                client.counter("stock").get().await.expect("stock"),
                0,
                "never below the bound"
            );
            let copy = client
                .ledger()
                .lookup_accounts_with(&[2], ReadConsistency::Stale)
                .await
                .expect("ledger copy");
            assert_eq!(copy[0].credits_posted, 100, "every region's copy has every transfer");
            let look = client
                .rate_limiter()
                .check_global("api", 5, Duration::from_secs(600), 0)
                .await
                .expect("look");
            assert_eq!(look.remaining, 0, "every region now counts all 15 admitted");
            // The delete came first and the later write won.
            assert_eq!(
                client.kv().get("shared-1").await.expect("get").map(|e| e.value),
                Some(b"eu-after-us-delete".to_vec())
            );
        }
        for client in &clients[1..] {
            let mirror = client
                .streams()
                .fetch("events@us", 0, 0, FetchOptions::default())
                .await
                .expect("the mirror");
            assert_eq!(
                mirror.records.len(),
                20,
                "every record produced at us during the partition"
            );
        }
        let status = regions.status("us").await.expect("status");
        assert_eq!(status.links.len(), 2);
        assert!(status.links.iter().all(|l| l.acked_upto.is_some() && l.merged_upto > 0));

        // The delete's tombstone is collected everywhere once every region has shipped past it
        // (idle regions record their frontier with a heartbeat every 5 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for name in names {
            loop {
                let kept = regions.status(name).await.map_or(u64::MAX, |s| s.tombstones);
                if kept == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} still keeps {kept} tombstones"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        assert_eq!(regions.wait_converged(Duration::from_secs(10)).await, digest);
    });
}

/// Killing the sending region's leader while it ships loses nothing: the new leader resumes from
/// the receiver's watermark. Each put merged exactly once shows as the same KV version (the
/// number of writes since creation) in both regions.
#[test]
fn a_leader_change_in_the_sending_region_loses_nothing() {
    runtime().block_on(async {
        let mut regions = TestRegions::start(
            NODE,
            vec![
                RegionSpec {
                    name: "us",
                    nodes: 3,
                    extra_args: Vec::new(),
                },
                one_node("eu"),
            ],
        )
        .await;
        regions
            .links
            .set_delay(&[1, 2], Duration::from_millis(30), Duration::from_millis(5));
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        let mut acked = 0i64;
        let mut puts = 0u64;
        for i in 0..150 {
            if i == 60 {
                let leader = regions.cluster("us").leader(&us).await;
                regions.cluster_mut("us").kill(leader);
                tokio::time::sleep(Duration::from_millis(300)).await;
                regions.cluster_mut("us").restart(leader);
            }
            if us.counter("orders").incr(1).await.is_ok() {
                acked += 1;
            }
            if us.kv().put("last-order", format!("{i}")).await.is_ok() {
                puts += 1;
            }
        }
        regions.wait_converged(Duration::from_secs(60)).await;
        let at_us = us.counter("orders").get().await.expect("get");
        assert!(at_us >= acked, "us lost an acknowledged increment: {at_us} < {acked}");
        assert_eq!(eu.counter("orders").get().await.expect("get"), at_us);
        let us_entry = us.kv().get("last-order").await.expect("get").expect("present");
        let eu_entry = eu.kv().get("last-order").await.expect("get").expect("present");
        assert_eq!(eu_entry.value, us_entry.value);
        assert!(us_entry.version >= puts);
        assert_eq!(
            eu_entry.version, us_entry.version,
            "every put merged exactly once in eu"
        );
    });
}

/// eu's clock is 5 s behind. A write eu makes after seeing us's write still wins everywhere: the
/// HLC observes the stamps it merges, so last-writer-wins follows causality, not wall clocks.
#[test]
fn a_region_with_a_clock_behind_still_overwrites_what_it_has_seen() {
    runtime().block_on(async {
        let regions = TestRegions::start(
            NODE,
            vec![
                RegionSpec {
                    name: "us",
                    nodes: 1,
                    extra_args: vec!["--max-clock-offset-ms=10000".into()],
                },
                RegionSpec {
                    name: "eu",
                    nodes: 1,
                    // 5 s off is past the default max offset (500 ms): eu would refuse us's
                    // batches as stamped in its future. This deployment allows 10 s.
                    extra_args: vec!["--clock-skew-ms=-5000".into(), "--max-clock-offset-ms=10000".into()],
                },
            ],
        )
        .await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        us.kv().put("config", "from-us").await.expect("put");
        regions.wait_converged(Duration::from_secs(30)).await;
        assert_eq!(
            eu.kv().get("config").await.expect("get").map(|e| e.value),
            Some(b"from-us".to_vec())
        );
        eu.kv().put("config", "from-eu-after-reading-us").await.expect("put");
        regions.wait_converged(Duration::from_secs(30)).await;
        for client in [&us, &eu] {
            assert_eq!(
                client.kv().get("config").await.expect("get").map(|e| e.value),
                Some(b"from-eu-after-reading-us".to_vec())
            );
        }
    });
}

/// A region cut off for longer than the sender's feed retention is not waited for: the feed is
/// trimmed past it, and once reachable it gets a full re-sync and converges.
#[test]
fn a_region_behind_the_feed_retention_is_resynced_in_full() {
    resynced_past_the_feed_retention(TestRegions::partition_all);
}

/// The same with only the link from us to eu cut (eu's batches and acknowledgements still
/// reach us): eu falls behind us's feed retention all the same, and the re-sync carries us's
/// delete, while what eu wrote meanwhile reaches us.
#[test]
fn a_region_cut_off_one_way_past_the_feed_retention_converges_deletes_included() {
    resynced_past_the_feed_retention(|regions| {
        regions.links.set(
            1,
            2,
            basalt_regions::LinkState {
                cut: true,
                ..Default::default()
            },
        );
    });
}

/// us writes 100 keys and deletes one while `cut` keeps its feed from eu, until its feed is
/// trimmed past what eu has; after the heal eu is re-synced, deletes included.
fn resynced_past_the_feed_retention(cut: impl Fn(&TestRegions)) {
    runtime().block_on(async {
        let retain = || RegionSpec {
            name: "us",
            nodes: 1,
            extra_args: vec!["--feed-retain-entries".into(), "20".into()],
        };
        let regions = TestRegions::start(NODE, vec![retain(), one_node("eu")]).await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        us.kv().put("early", "1").await.expect("put");
        regions.wait_converged(Duration::from_secs(30)).await;

        cut(&regions);
        for i in 0..100 {
            us.kv().put(format!("key-{i}"), format!("{i}")).await.expect("put");
        }
        us.kv().delete("early").await.expect("delete");
        eu.kv().put("from-eu", "1").await.expect("put in eu");
        // The trimmer runs every second; wait until it has gone past what eu has.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = regions.status("us").await.expect("status");
            let acked = status.links[0].acked_upto.unwrap_or(0);
            if status.feed_trimmed_upto > acked {
                assert!(!status.links[0].alarm.is_empty(), "a lagging region is flagged");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "feed never trimmed past eu: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        regions.links.heal_cuts();
        regions.wait_converged(Duration::from_secs(60)).await;
        assert_eq!(
            eu.kv().get("key-99").await.expect("get").map(|e| e.value),
            Some(b"99".to_vec())
        );
        assert_eq!(
            eu.kv().get("early").await.expect("get"),
            None,
            "the tombstone came with the re-sync"
        );
        assert!(us.kv().get("from-eu").await.expect("get").is_some());
        let status = regions.status("us").await.expect("status");
        assert!(status.links[0].resyncs >= 1, "{status:?}");
    });
}

/// Ledgers, leases and queues live in their home region (us, the lowest id): eu forwards their
/// requests there, so there is one lease, one queue and one ledger for both regions. With the home
/// unreachable eu answers `REGION_UNAVAILABLE` and applies nothing, while its own KV writes keep
/// working.
#[test]
fn homed_data_is_written_at_its_home_and_read_from_a_copy_when_the_home_is_unreachable() {
    use basalt_client::ledger::{Account, Transfer};
    use basalt_client::{Acquired, ErrorCode, QueueOptions, ReceiveOptions};

    runtime().block_on(async {
        let regions = us_and_eu().await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;

        let ttl = Duration::from_secs(30);
        assert!(matches!(
            eu.lease("scheduler")
                .acquire("eu-worker", ttl)
                .await
                .expect("acquire from eu"),
            Acquired::Granted(_)
        ));
        match us
            .lease("scheduler")
            .acquire("us-worker", ttl)
            .await
            .expect("acquire from us")
        {
            Acquired::Held { holder, .. } => assert_eq!(holder, b"eu-worker"),
            other => panic!("two regions granted one lease: {other:?}"),
        }

        eu.queue("jobs")
            .create(QueueOptions::default())
            .await
            .expect("create from eu");
        eu.queue("jobs").enqueue("resize-42").await.expect("enqueue from eu");
        let got = us
            .queue("jobs")
            .receive(1, ReceiveOptions::default())
            .await
            .expect("receive in us");
        assert_eq!(got.first().map(|m| m.payload.clone()), Some(b"resize-42".to_vec()));

        let accounts: Vec<Account> = (1..=2u128)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        assert_eq!(eu.ledger().create_accounts(&accounts).await.expect("accounts"), vec![]);
        let transfer = Transfer {
            id: 9,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 70,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        assert_eq!(
            eu.ledger().create_transfers(&[transfer]).await.expect("transfer"),
            vec![]
        );
        let seen = us.ledger().lookup_accounts(&[1, 2]).await.expect("lookup in us");
        assert_eq!(seen.iter().map(|a| a.credits_posted).sum::<u128>(), 70);
        // eu's own copy of the home's ledger catches up through the feed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let copy = eu
                .ledger()
                .lookup_accounts_with(&[1, 2], ReadConsistency::Stale)
                .await
                .expect("stale lookup in eu");
            if copy.len() == 2 && copy[1].credits_posted == 70 {
                assert_eq!(copy[0].debits_posted, 70, "the copy is a state the home had");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "eu's copy never caught up: {copy:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        regions.partition_all();
        // Cut off from the home, eu still serves stale reads from its copy; linearizable ones
        // need the home.
        let copy = eu
            .ledger()
            .lookup_accounts_with(&[2], ReadConsistency::Stale)
            .await
            .expect("stale read while partitioned");
        assert_eq!(copy[0].credits_posted, 70);
        let holder = eu
            .lease("scheduler")
            .get(ReadConsistency::Stale)
            .await
            .expect("stale lease read while partitioned")
            .map(|l| l.holder);
        assert_eq!(holder.as_deref(), Some(b"eu-worker".as_slice()));
        let stats = eu
            .queue("jobs")
            .stats(ReadConsistency::Stale)
            .await
            .expect("stale queue stats while partitioned");
        assert_eq!((stats.messages, stats.in_flight), (1, 1), "the copy saw the delivery");
        assert_eq!(
            eu.ledger()
                .lookup_accounts(&[2])
                .await
                .expect_err("needs the home")
                .code(),
            Some(ErrorCode::RegionUnavailable)
        );
        let unanswered = eu.lease("other").acquire("eu-worker", ttl).await;
        let unanswered = unanswered.expect_err("the home is unreachable");
        assert!(outcome_unknown(&unanswered), "{unanswered}");
        eu.kv()
            .put("local", "still works")
            .await
            .expect("region-local writes go on");
        let failed_transfer = Transfer { id: 10, ..transfer };
        let unanswered = eu
            .ledger()
            .create_transfers(&[failed_transfer])
            .await
            .expect_err("unanswered");
        assert!(outcome_unknown(&unanswered), "{unanswered}");

        regions.links.heal_cuts();
        // The cut dropped the request, so nothing of it was applied: it can be created once, now
        // (had it applied, the same id would answer `exists` and change nothing).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match eu.ledger().create_transfers(&[failed_transfer]).await {
                Ok(failures) => {
                    assert_eq!(failures, vec![], "the refused transfer had not been applied");
                    break;
                }
                Err(e)
                    if (e.code() == Some(ErrorCode::RegionUnavailable) || outcome_unknown(&e))
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("after the heal: {e}"),
            }
        }
        let seen = us.ledger().lookup_accounts(&[2]).await.expect("lookup");
        assert_eq!(seen[0].credits_posted, 140);
    });
}

/// A global rate limit: what one region admitted counts against the limit in another once its
/// count has crossed the link.
#[test]
fn a_global_rate_limit_counts_what_other_regions_admitted() {
    runtime().block_on(async {
        let regions = us_and_eu().await;
        let us = regions.client("us").await.rate_limiter();
        let eu = regions.client("eu").await.rate_limiter();
        let window = Duration::from_secs(60);
        for _ in 0..6 {
            assert!(
                us.check_global("api", 10, window, 1)
                    .await
                    .expect("check in us")
                    .allowed
            );
        }
        // A look (cost 0) in eu: its remaining allowance drops once us's count arrives.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let look = eu.check_global("api", 10, window, 0).await.expect("look in eu");
            if look.remaining == 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "us's count never reached eu: {look:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut allowed = 0;
        for _ in 0..6 {
            if eu
                .check_global("api", 10, window, 1)
                .await
                .expect("check in eu")
                .allowed
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 4, "eu admits only what us left of the limit");
        // A region-local window of the same key is independent of the other region.
        assert!(eu.check("api", 10, window, 1).await.expect("local check").allowed);
    });
}

/// A mirrored topic produced in one region is read in another as `topic@region`, which is
/// read-only there.
#[test]
fn a_mirrored_topic_is_consumed_in_another_region_as_topic_at_region() {
    use basalt_client::{ErrorCode, FetchOptions, Record, TopicOptions};

    runtime().block_on(async {
        let regions = us_and_eu().await;
        let us = regions.client("us").await.streams();
        let eu = regions.client("eu").await.streams();
        let options = TopicOptions {
            partitions: 1,
            mirror: true,
            ..TopicOptions::default()
        };
        assert!(us.create_topic("orders", options).await.expect("create in us"));
        let sent: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
        for value in &sent {
            us.produce("orders", vec![Record::new("", value.as_str()).to_partition(0)])
                .await
                .expect("produce in us");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let got = loop {
            match eu.fetch("orders@us", 0, 0, FetchOptions::default()).await {
                Ok(f) if f.records.len() == sent.len() => break f,
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("the mirror never caught up: {other:?}"),
            }
        };
        let values: Vec<String> = got
            .records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        assert_eq!(values, sent, "the mirror holds the records in order");
        assert_eq!(
            got.records.last().map(|r| r.offset),
            Some(19),
            "with the source's offsets"
        );
        let refused = eu
            .produce("orders@us", vec![Record::new("", "forged").to_partition(0)])
            .await
            .expect_err("a mirror is read-only");
        assert_eq!(refused.code(), Some(ErrorCode::InvalidArgument));
    });
}

/// A bounded counter's escrow: a region takes stock only as far as its escrow covers, escrow is
/// given between regions, and partitioned regions together never take the stock below 0.
#[test]
fn partitioned_regions_take_a_bounded_counter_only_as_far_as_their_escrow() {
    use basalt_client::ErrorCode;

    runtime().block_on(async {
        let regions = us_and_eu().await;
        let us_client = regions.client("us").await;
        let eu_client = regions.client("eu").await;
        let us = us_client.counter("stock");
        let eu = eu_client.counter("stock");
        us.incr_bounded(10, Some(0), None).await.expect("stock in us");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while eu.get_with(ReadConsistency::Stale).await.expect("eu") != 10 {
            assert!(std::time::Instant::now() < deadline, "the stock never reached eu");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // eu sees 10 in stock, but us stocked it: the escrow is us's.
        let refused = eu.incr_bounded(-1, Some(0), None).await.expect_err("eu has no escrow");
        assert_eq!(refused.code(), Some(ErrorCode::EscrowExceeded));
        us.transfer_escrow("eu", 4, None).await.expect("give eu 4");
        assert_eq!(
            us.transfer_escrow("eu", 7, None)
                .await
                .expect_err("us has 6 left")
                .code(),
            Some(ErrorCode::EscrowExceeded)
        );
        // Once the transfer has crossed, eu may take 4.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while eu.incr_bounded(-1, Some(0), None).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the escrow never reached eu");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        regions.partition_all();
        let mut taken = 1;
        while eu.incr_bounded(-1, Some(0), None).await.is_ok() {
            taken += 1;
        }
        while us.incr_bounded(-1, Some(0), None).await.is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 10, "together exactly the stock, while partitioned");
        regions.links.heal_cuts();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (a, b) = (
                us.get_with(ReadConsistency::Stale).await.expect("us"),
                eu.get_with(ReadConsistency::Stale).await.expect("eu"),
            );
            if (a, b) == (0, 0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never converged: us {a}, eu {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // An upper bound: 4 seats, 2 per region, until us gives eu one of its own.
        let us_seats = us_client.counter("seats");
        let eu_seats = eu_client.counter("seats");
        for _ in 0..2 {
            eu_seats.incr_bounded(1, None, Some(4)).await.expect("eu's share");
        }
        let full = eu_seats
            .incr_bounded(1, None, Some(4))
            .await
            .expect_err("beyond eu's share");
        assert_eq!(full.code(), Some(ErrorCode::EscrowExceeded));
        us_seats.transfer_headroom("eu", 1, 4).await.expect("give eu a seat");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while eu_seats.incr_bounded(1, None, Some(4)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the headroom never reached eu");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        us_seats
            .incr_bounded(1, None, Some(4))
            .await
            .expect("us keeps one seat");
        assert_eq!(
            us_seats
                .incr_bounded(1, None, Some(4))
                .await
                .expect_err("us gave the other")
                .code(),
            Some(ErrorCode::EscrowExceeded)
        );
    });
}

/// The SDK connected to one region of a deployment: region-local data is written and read there,
/// homed data reaches its home through the region's nodes, and another region's client comes
/// from the same map.
#[test]
fn a_client_connected_to_a_region_works_there_and_reaches_the_others() {
    use basalt_client::ledger::Account;
    use basalt_client::{Client, ClientError, ClientOptions, RegionMap};

    runtime().block_on(async {
        let regions = us_and_eu().await;
        // Both regions have a leader before eu forwards anything to us.
        regions.client("us").await;
        let map: RegionMap = ["us", "eu"]
            .into_iter()
            .map(|name| (name.to_string(), regions.cluster(name).endpoints()))
            .collect();
        let unknown = Client::connect_region(map.clone(), "mars", ClientOptions::default()).await;
        assert!(
            matches!(unknown, Err(ClientError::UnknownRegion { .. })),
            "unknown region refused"
        );

        let eu = Client::connect_region(map, "eu", ClientOptions::default())
            .await
            .expect("connect to eu");
        assert_eq!(eu.region(), Some("eu"));
        // eu's node may still be electing itself (regions.client("us") waited for us only).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let eu_leader = loop {
            let leader = eu.cluster_status().await.expect("status").leader_addr;
            if !leader.is_empty() || std::time::Instant::now() > deadline {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            regions.cluster("eu").endpoints().contains(&eu_leader),
            "talks to eu's nodes"
        );

        eu.kv().put("greeting", "hello from eu").await.expect("put in eu");
        // Homed data: the account is created at the home (us), through eu's node.
        let account = Account {
            id: 7,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        assert_eq!(eu.ledger().create_accounts(&[account]).await.expect("create"), vec![]);

        let us = eu.region_client("us").expect("us client");
        assert_eq!(us.region(), Some("us"));
        assert_eq!(us.ledger().lookup_accounts(&[7]).await.expect("lookup in us").len(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let seen = us.kv().get("greeting").await.expect("get in us").map(|e| e.value);
            if seen.as_deref() == Some(b"hello from eu".as_slice()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "eu's write never reached us");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(matches!(
            eu.region_client("mars"),
            Err(ClientError::UnknownRegion { .. })
        ));
    });
}

/// eu's clock runs two hours ahead (issue 15, part 3). Merging its batches would move us's clock
/// two hours forward for good: every TTL key, lease and session in us would expire at once. us
/// refuses them instead (eu's changes wait until the clocks agree again), and its own time goes on.
#[test]
fn a_region_whose_clock_runs_hours_ahead_is_held_back_not_followed() {
    runtime().block_on(async {
        let regions = us_and_eu_started_with(vec![format!("--clock-skew-ms={}", 2 * 3_600_000)]).await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        let minute = basalt_client::PutOptions {
            ttl: Some(Duration::from_secs(60)),
        };
        us.kv().put_with("lives", "v", minute).await.expect("put");
        // Due in a second: the sweep that removes it is applied at the region's applied time,
        // and would remove "lives" too if that time had been dragged.
        us.kv()
            .put_with(
                "short",
                "v",
                basalt_client::PutOptions {
                    ttl: Some(Duration::from_secs(1)),
                },
            )
            .await
            .expect("put");
        eu.kv().put("from-the-future", "v").await.expect("put in eu");
        // eu ships within a second or two (its first leader commits its topology first, on a
        // machine shared with other tests); then a sweep or two of us's expiry index.
        let us_cluster = &regions.regions[0].1;
        let waited = std::time::Instant::now();
        while us_cluster.metric(1, "basalt_repl_clock_refusals_total") == 0
            && waited.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            us_cluster.metric(1, "basalt_repl_clock_refusals_total") > 0,
            "us never refused eu's batches\n{}",
            us_cluster.logs()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            us.kv().get("lives").await.expect("get").is_some(),
            "a key with a minute to live expired in us: eu's clock dragged it"
        );
        assert_eq!(us.kv().get("from-the-future").await.expect("get"), None);
        // us's own writes are stamped by its own clock.
        let written_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        us.kv()
            .put_with(
                "fresh",
                "v",
                basalt_client::PutOptions {
                    ttl: Some(Duration::from_secs(60)),
                },
            )
            .await
            .expect("put");
        let expires_at = us.kv().get("fresh").await.expect("get").expect("present").expires_at_ms;
        assert!(expires_at.expect("a TTL") <= written_at + 65_000);
    });
}

/// A region joins two running regions while a bounded counter is near its bound (issue 15 part 4):
/// the topology changes only through each region's log, the newcomer gets no share of the bound
/// (re-dividing it would let every region fill past it), the bound holds once everything has
/// merged, and a node restarted with flags that disagree with the replicated topology says so, or
/// refuses to start when it names another region.
#[test]
fn a_region_added_while_a_bounded_counter_is_near_its_bound_cannot_cross_it() {
    use basalt_client::ErrorCode;

    runtime().block_on(async {
        let mut regions = us_and_eu().await;
        let us_client = regions.client("us").await;
        let eu_client = regions.client("eu").await;
        let (us, eu) = (us_client.counter("seats"), eu_client.counter("seats"));
        // A capacity of 10, 5 per founding region: us fills 5, eu 4.
        for _ in 0..5 {
            us.incr_bounded(1, None, Some(10)).await.expect("us's share");
        }
        for _ in 0..4 {
            eu.incr_bounded(1, None, Some(10)).await.expect("eu's share");
        }
        // ap starts as a region joining the two; they add it through their logs.
        let direct = |name: &str, id: u16| format!("{name}:{id}={}", regions.cluster(name).endpoints().join(","));
        let mut ap = basalt_testkit::TestCluster::plan(
            NODE,
            basalt_testkit::ClusterOptions {
                nodes: 1,
                ..Default::default()
            },
        );
        ap.push_args([
            "--region".to_string(),
            "ap:3".into(),
            "--joining-region".into(),
            "--home-region".into(),
            "us".into(),
            "--remote-region".into(),
            direct("us", 1),
            "--remote-region".into(),
            direct("eu", 2),
        ]);
        ap.launch();
        let ap_endpoints = ap.endpoints();
        for client in [&us_client, &eu_client] {
            let topology = client.add_region("ap", 3, &ap_endpoints).await.expect("add ap");
            let ap_member = topology.regions.iter().find(|r| r.id == 3).expect("ap in the topology");
            assert_eq!(
                ap_member.escrow_share.as_deref(),
                Some("0/1"),
                "a region added later gets no share"
            );
        }
        let ap_client = ap.client().await;
        let ap_seats = ap_client.counter("seats");
        // ap's first leader commits its topology from its flags shortly after its election.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let topology = loop {
            if let Some(topology) = ap_client.region_topology().await.expect("topology") {
                break topology;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ap never committed its topology\n{}",
                ap.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let own = topology.regions.iter().find(|r| r.id == 3).expect("ap itself");
        assert_eq!(own.escrow_share.as_deref(), Some("0/1"));
        assert_eq!(
            ap_seats
                .incr_bounded(1, None, Some(10))
                .await
                .expect_err("ap has no room")
                .code(),
            Some(ErrorCode::EscrowExceeded)
        );
        assert_eq!(
            us.incr_bounded(1, None, Some(10))
                .await
                .expect_err("us used its 5")
                .code(),
            Some(ErrorCode::EscrowExceeded),
            "us's share is not re-divided when a region joins"
        );
        // eu gives ap its last seat; once that crossed, ap fills it, and nothing more.
        eu.transfer_headroom("ap", 1, 10).await.expect("eu gives ap a seat");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ap_seats.incr_bounded(1, None, Some(10)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the seat never reached ap\n{}",
                ap.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ap_seats.incr_bounded(1, None, Some(10)).await.is_err(),
            "ap took one seat only"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let values = (
                us.get_with(ReadConsistency::Stale).await.expect("us"),
                eu.get_with(ReadConsistency::Stale).await.expect("eu"),
                ap_seats.get_with(ReadConsistency::Stale).await.expect("ap"),
            );
            if values == (10, 10, 10) {
                break;
            }
            assert!(
                values.0 <= 10 && values.1 <= 10 && values.2 <= 10,
                "crossed the bound: {values:?}"
            );
            assert!(std::time::Instant::now() < deadline, "never converged: {values:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // us's node restarted with its old flags (no ap): it starts, says how its flags differ,
        // and keeps shipping to ap, which the replicated topology holds.
        let us_cluster = regions.cluster_mut("us");
        us_cluster.kill(1);
        us_cluster.restart(1);
        let us_client = regions.client("us").await;
        us_client
            .kv()
            .put("after-restart", "v")
            .await
            .expect("us serves after the restart");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ap_client
            .kv()
            .get_with("after-restart", ReadConsistency::Stale)
            .await
            .expect("get in ap")
            .is_none()
        {
            assert!(std::time::Instant::now() < deadline, "us no longer ships to ap");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = regions.cluster("us").logs();
        assert!(
            logs.contains("region flags differ from the replicated topology") && logs.contains("ap:3"),
            "the restarted node did not say its flags differ\n{logs}"
        );
        // Started as another region, it refuses to start at all.
        let us_cluster = regions.cluster_mut("us");
        us_cluster.kill(1);
        let renamed: Vec<String> = us_cluster
            .extra_args()
            .iter()
            .map(|a| if a == "us:1" { "sa:4".to_string() } else { a.clone() })
            .collect();
        us_cluster.replace_args(renamed);
        us_cluster.restart(1);
        let exited = us_cluster.wait_exit(1, Duration::from_secs(20));
        assert!(
            exited.is_some_and(|s| !s.success()),
            "a node whose data is region us started as sa"
        );
        let logs = us_cluster.logs();
        assert!(logs.contains("belongs to region us:1"), "{logs}");
    });
}

/// Regions bootstrapped with different region lists divided counter bounds differently (eu
/// believes in a third region, so it stores shares of 1/3 where us stores 1/2): each refuses the
/// other's feed stream at open, says why in `regions status` and a metric, and merges nothing,
/// instead of letting both fill bounded counters past their bound.
#[test]
fn regions_that_divided_bounds_differently_refuse_each_others_feed() {
    runtime().block_on(async {
        let regions = us_and_eu_started_with(vec!["--remote-region".into(), "ap:3=127.0.0.1:9".into()]).await;
        let us = regions.client("us").await;
        us.kv().put("from-us", "v").await.expect("put in us");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let alarm = loop {
            let status = regions.status("us").await;
            let alarm = status
                .and_then(|s| s.links.into_iter().find(|l| l.region == "eu"))
                .map(|l| l.alarm)
                .unwrap_or_default();
            if alarm.starts_with("topology disagrees") {
                break alarm;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "us never learned that eu refuses its topology (alarm {alarm:?})\n{}",
                regions.cluster("us").logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(alarm.contains("escrow share"), "{alarm}");
        assert!(regions.cluster("eu").metric(1, "basalt_repl_topology_refusals_total") > 0);
        let eu = regions.client("eu").await;
        assert_eq!(
            eu.kv().get("from-us").await.expect("get in eu"),
            None,
            "nothing is merged from a region whose topology disagrees"
        );
    });
}

/// Values of the largest size written while the link is cut reach the other region in many
/// large batches after the heal, and both regions keep serving.
#[test]
fn values_of_the_largest_size_cross_regions_after_a_partition() {
    runtime().block_on(async {
        let regions = us_and_eu().await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        us.kv().put("before", "v").await.expect("put");
        regions.wait_converged(Duration::from_secs(30)).await;
        regions.partition_all();
        let value = vec![b'x'; 1 << 20];
        for i in 0..24 {
            us.kv()
                .put(format!("large-{i}"), value.clone())
                .await
                .expect("put a large value");
        }
        regions.links.heal_cuts();
        regions.wait_converged(Duration::from_secs(60)).await;
        let last = eu.kv().get("large-23").await.expect("get in eu").expect("arrived");
        assert_eq!(last.value.len(), 1 << 20);
        eu.kv().put("after", "v").await.expect("eu still serves writes");
    });
}

/// A CA in `dir` and a peer certificate of it for 127.0.0.1 (every test node and link proxy
/// listens there); the `basalt start` flags that use them.
fn peer_tls_flags(dir: &std::path::Path) -> Vec<String> {
    basalt_cli::certs::make_ca(dir).expect("CA");
    basalt_cli::certs::node_flags(dir, "node", &["127.0.0.1".to_string()]).expect("node certificate")
}

/// Until `key` reads `value` through `client`, or `wait` passes; whether it did.
async fn reads_within(client: &basalt_client::Client, key: &str, value: &str, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Ok(Some(found)) = client.kv().get(key).await {
            if found.value == value.as_bytes() {
                return true;
            }
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The feed goes to the other region's peer listener, under its mutual TLS, and carries no
/// token: us and eu, whose peer certificates come from one CA but whose root tokens differ (each
/// would refuse the other's token on its client port), replicate both ways. ap, whose peer
/// certificate comes from another CA, reaches neither's peer listener: nothing of ap is merged in
/// us or eu, and nothing of theirs in ap.
#[test]
fn the_feed_crosses_to_peer_listeners_under_mutual_tls_without_a_token() {
    runtime().block_on(async {
        let deployment_ca = tempfile::tempdir().expect("tempdir");
        let stranger_ca = tempfile::tempdir().expect("tempdir");
        let deployment = peer_tls_flags(deployment_ca.path());
        let mut stranger = peer_tls_flags(stranger_ca.path());
        // ap trusts the deployment's CA as well as its own, so its handshakes to us and eu check
        // out on its side: only their peer listeners' check of ap's certificate keeps it out.
        let ca = |dir: &tempfile::TempDir| {
            std::fs::read(dir.path().join(basalt_cli::certs::CA_CERT_FILE)).expect("read a CA")
        };
        let bundle = stranger_ca.path().join("bundle.pem");
        std::fs::write(&bundle, [ca(&stranger_ca), ca(&deployment_ca)].concat()).expect("write the bundle");
        let flag = stranger.iter().position(|f| f == "--peer-tls-ca").expect("a CA flag");
        stranger[flag + 1] = bundle.display().to_string();
        let spec = |name, extra_args| RegionSpec {
            name,
            nodes: 1,
            extra_args,
        };
        let regions = TestRegions::start_with(
            NODE,
            vec![
                spec("us", deployment.clone()),
                spec("eu", deployment),
                spec("ap", stranger),
            ],
            |cluster| {
                // A root token of its own per region.
                cluster.enable_auth();
            },
        )
        .await;
        let tokens: Vec<String> = ["us", "eu", "ap"]
            .iter()
            .map(|name| regions.cluster(name).root_token().expect("token").as_str().to_string())
            .collect();
        assert!(
            tokens[0] != tokens[1] && tokens[1] != tokens[2],
            "each region has its own token"
        );
        let (us, eu, ap) = (
            regions.client("us").await,
            regions.client("eu").await,
            regions.client("ap").await,
        );
        us.kv().put("from-us", "1").await.expect("put in us");
        eu.kv().put("from-eu", "2").await.expect("put in eu");
        ap.kv().put("from-ap", "3").await.expect("put in ap");
        let wait = Duration::from_secs(30);
        assert!(reads_within(&eu, "from-us", "1", wait).await, "us -> eu");
        assert!(reads_within(&us, "from-eu", "2", wait).await, "eu -> us");

        // us ships to eu's peer listener (the endpoint's part after '/'), connected.
        let status = regions.status("us").await.expect("us status");
        let topology = status.topology.clone().expect("topology");
        let eu_endpoint = &topology
            .regions
            .iter()
            .find(|r| r.name == "eu")
            .expect("eu in us's topology")
            .endpoints[0];
        let (_, eu_peer) = eu_endpoint.split_once('/').expect("CLIENT/PEER");
        let link = |name: &str| status.links.iter().find(|l| l.region == name).cloned().expect("a link");
        assert!(link("eu").connected, "{status:?}");
        assert_eq!(link("eu").endpoint, eu_peer, "{status:?}");

        // ap's certificate is refused by us's and eu's peer listeners (and us and eu do not
        // trust ap's): ap's links to them stay down, and theirs to ap, seen so for 2 s on end
        // (a link that could connect would, within its backoff of at most 1 s).
        let deadline = std::time::Instant::now() + wait;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let down = |status: Option<&basalt_client::pb::RegionsResponse>, to: &str| {
                status.is_some_and(|status| {
                    status
                        .links
                        .iter()
                        .find(|l| l.region == to)
                        .is_some_and(|l| !l.connected && l.alarm.contains("unreachable"))
                })
            };
            // `None` while a node is busy or not yet leader: not yet.
            let (from_ap, from_us, from_eu) = (
                regions.status("ap").await,
                regions.status("us").await,
                regions.status("eu").await,
            );
            let all_down = down(from_ap.as_ref(), "us")
                && down(from_ap.as_ref(), "eu")
                && down(from_us.as_ref(), "ap")
                && down(from_eu.as_ref(), "ap");
            match (all_down, down_since) {
                (true, Some(since)) if since.elapsed() >= Duration::from_secs(2) => break,
                (true, None) => down_since = Some(std::time::Instant::now()),
                (true, Some(_)) => {}
                (false, _) => down_since = None,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "links with ap not refused: {from_ap:?} {from_us:?} {from_eu:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (client, key) in [(&us, "from-ap"), (&eu, "from-ap"), (&ap, "from-us"), (&ap, "from-eu")] {
            assert!(client.kv().get(key).await.expect("get").is_none(), "{key} crossed");
        }
    });
}

/// A full re-sync outlives a broken stream: us's state (20,000 keys and 100 ledger accounts,
/// homed in us: several re-sync chunks over a link of 512 KiB/s) is being re-synced to eu when
/// the regions are cut off again; after the heal the next stream sends the chunks not yet
/// answered and goes on from there. The re-sync is begun once, not again from the start (which
/// a state taking longer than a stream's life to cross would never finish), and eu's copy of
/// the homed rows, reset by the first chunk, is whole again (the digests compare every row).
#[test]
fn a_full_re_sync_cut_halfway_resumes_where_it_was() {
    runtime().block_on(async {
        // Retention below the log entries the writes make (about 150: puts are merged into
        // entries; the feed is trimmed past eu) and above the positions the leader's own ticks
        // and trims add while the re-sync runs (one or two a second), which would otherwise call
        // for another re-sync once this one is done.
        let us_spec = RegionSpec {
            name: "us",
            nodes: 1,
            extra_args: vec!["--feed-retain-entries".into(), "60".into()],
        };
        let regions = TestRegions::start(NODE, vec![us_spec, one_node("eu")]).await;
        let us = regions.client("us").await;
        let eu = regions.client("eu").await;
        us.kv().put("early", "1").await.expect("put");
        regions.wait_converged(Duration::from_secs(30)).await;

        regions.partition_all();
        let accounts: Vec<basalt_client::ledger::Account> = (1..=100)
            .map(|id| basalt_client::ledger::Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        assert_eq!(us.ledger().create_accounts(&accounts).await.expect("accounts"), vec![]);
        // Enough state for several chunks (a chunk carries at most 4,096 effects).
        let value = "v".repeat(64);
        for round in 0..40 {
            let mut puts = tokio::task::JoinSet::new();
            for i in 0..500 {
                let (us, value) = (us.clone(), value.clone());
                puts.spawn(async move { us.kv().put(format!("key-{round}-{i}"), value).await });
            }
            while let Some(put) = puts.join_next().await {
                put.expect("task").expect("put");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = regions.status("us").await;
            if status
                .as_ref()
                .is_some_and(|s| s.feed_trimmed_upto > s.links[0].acked_upto.unwrap_or(0))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "feed never trimmed past eu: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The link from us to eu runs at 512 KiB/s: the re-sync takes seconds.
        regions.links.set(
            1,
            2,
            basalt_regions::LinkState {
                bandwidth_bytes_per_s: 512 * 1024,
                ..Default::default()
            },
        );
        regions.links.heal_cuts();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = regions.status("us").await;
            let in_flight = status.as_ref().is_some_and(|s| {
                let link = &s.links[0];
                link.resyncs == 1 && link.connected && link.acked_upto.unwrap_or(0) < s.feed_trimmed_upto
            });
            if in_flight {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no re-sync began: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        regions.partition_all();
        let status = regions.status("us").await.expect("status");
        assert!(
            status.links[0].acked_upto.unwrap_or(0) < status.feed_trimmed_upto,
            "the re-sync was done before the cut (make the state larger): {status:?}"
        );
        // The cut resets the stream's connection; the shipper then fails to reconnect a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        regions.links.heal_cuts();
        regions.wait_converged(Duration::from_secs(90)).await;
        assert_eq!(
            eu.kv().get("key-39-499").await.expect("get").map(|e| e.value),
            Some(value.into_bytes())
        );
        let status = regions.status("us").await.expect("status");
        assert_eq!(status.links[0].resyncs, 1, "the re-sync began again: {status:?}");
        assert!(status.links[0].alarm.is_empty(), "caught up, no alarm: {status:?}");
        let logs = regions.cluster("us").logs();
        assert!(logs.contains("resuming a full re-sync"), "{logs}");
    });
}
