//! Queues, streams, consumer groups, pub/sub and KV watch on real three-node clusters, with a
//! leader kill in the middle where it matters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use basalt_client::{
    Client, ClientError, ClientOptions, ErrorCode, FetchOptions, JoinOptions, NewMessage, QueueOptions,
    ReadConsistency, ReceiveOptions, Record, TopicOptions, WatchEventKind,
};
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    result.expect_err("must be refused").code()
}

fn topic(partitions: u32) -> TopicOptions {
    TopicOptions {
        partitions,
        ..TopicOptions::default()
    }
}

#[test]
fn no_acknowledged_enqueue_is_lost_through_a_leader_kill() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let jobs = client.queue("jobs");
        assert!(jobs.create(QueueOptions::default()).await.expect("create"));

        let mut acknowledged = BTreeSet::new();
        let mut attempted = BTreeSet::new();
        let mut killed = None;
        for i in 0..120u32 {
            if i == 50 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
                killed = Some(leader);
            }
            let payload = format!("job-{i}");
            attempted.insert(payload.clone());
            // A dedup id makes the retry of an unknown outcome safe, as a producer would do.
            let message = NewMessage::new(payload.clone()).dedup_id(payload.clone());
            if jobs.enqueue_message(message).await.is_ok() {
                acknowledged.insert(payload);
            }
        }
        assert!(
            acknowledged.len() >= 100,
            "most enqueues succeed: {}",
            acknowledged.len()
        );

        // Drain with long-polls and short visibility: everything acknowledged must come out.
        let mut received = BTreeSet::new();
        let options = ReceiveOptions {
            visibility_timeout: Duration::from_secs(5),
            wait: Duration::from_millis(500),
        };
        loop {
            let batch = jobs.receive(50, options).await.expect("receive");
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let payload = String::from_utf8(m.payload).expect("utf8");
                assert!(
                    attempted.contains(&payload),
                    "received {payload} that was never enqueued"
                );
                jobs.ack(&m.receipt).await.expect("ack");
                received.insert(payload);
            }
        }
        let lost: Vec<_> = acknowledged.difference(&received).collect();
        assert!(lost.is_empty(), "acknowledged enqueues lost: {lost:?}");
        let stats = jobs.stats(ReadConsistency::Linearizable).await.expect("stats");
        assert_eq!((stats.messages, stats.in_flight), (0, 0));
        cluster.restart(killed.expect("killed"));
    });
}

#[test]
fn a_long_poll_receive_wakes_on_enqueue_and_stale_receipts_cannot_ack() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let q = client.queue("mail");
        q.create(QueueOptions::default()).await.expect("create");
        let producer = client.clone();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            producer.queue("mail").enqueue("hello").await.expect("enqueue")
        });
        let started = Instant::now();
        let got = q
            .receive(
                10,
                ReceiveOptions {
                    visibility_timeout: Duration::from_millis(300),
                    wait: Duration::from_secs(10),
                },
            )
            .await
            .expect("receive");
        let id = sender.await.expect("sender");
        assert_eq!(
            got.len(),
            1,
            "the long-poll returns the message enqueued while it waited"
        );
        assert_eq!((got[0].id, got[0].payload.as_slice()), (id, b"hello".as_slice()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woke before its wait ran out"
        );
        // Not acked within 300 ms: delivered again, and the first receipt is now stale.
        let again = q
            .receive(
                10,
                ReceiveOptions {
                    visibility_timeout: Duration::from_secs(30),
                    wait: Duration::from_secs(5),
                },
            )
            .await
            .expect("receive");
        assert_eq!((again.len(), again[0].delivery), (1, 2));
        assert_eq!(code(q.ack(&got[0].receipt).await), Some(ErrorCode::StaleReceipt));
        q.ack(&again[0].receipt).await.expect("ack the current delivery");
    });
}

#[test]
fn an_idempotent_producer_appends_each_record_exactly_once_through_a_leader_kill() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        assert!(streams.create_topic("orders", topic(3)).await.expect("create"));
        let producer = streams.producer("orders").await.expect("producer");
        let mut killed = None;
        let mut acknowledged = BTreeSet::new();
        for batch in 0..30u32 {
            if batch == 10 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
                killed = Some(leader);
            }
            let records: Vec<Record> = (0..20)
                .map(|j| Record::new(format!("customer-{}", j % 7), format!("b{batch}-r{j}")))
                .collect();
            if let Ok(out) = producer.send(records).await {
                assert_eq!(out.len(), 20);
                acknowledged.extend((0..20).map(|j| format!("b{batch}-r{j}")));
            }
        }
        // A batch whose outcome was unknown is resent (and deduplicated) by flush.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = producer.flush().await {
            assert!(Instant::now() < deadline, "flush: {e}");
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for partition in 0..3 {
            let fetched = streams
                .fetch("orders", partition, 0, FetchOptions::default())
                .await
                .expect("fetch");
            for (n, r) in fetched.records.iter().enumerate() {
                assert_eq!(r.offset, n as u64, "offsets are contiguous from 0");
                let key = String::from_utf8(r.key.clone()).expect("utf8");
                assert_eq!(
                    basalt_client::stream::partition_for_key(key.as_bytes(), 3),
                    partition,
                    "keys go to their hash partition"
                );
                *seen
                    .entry(String::from_utf8(r.value.clone()).expect("utf8"))
                    .or_default() += 1;
            }
            assert_eq!(fetched.high_watermark, fetched.records.len() as u64);
        }
        let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicated.is_empty(), "records appended twice: {duplicated:?}");
        let missing: Vec<_> = acknowledged.iter().filter(|v| !seen.contains_key(*v)).collect();
        assert!(missing.is_empty(), "acknowledged records missing: {missing:?}");
        assert_eq!(seen.len(), 600, "every batch, including any that failed, lands once");
        cluster.restart(killed.expect("killed"));
    });
}

#[test]
fn a_consumer_that_stops_heartbeating_loses_its_partitions() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("clicks", topic(4)).await.expect("create");
        streams
            .produce("clicks", (0..4).map(|p| Record::new("", "x").to_partition(p)).collect())
            .await
            .expect("produce");
        let options = JoinOptions {
            session_timeout: Duration::from_millis(1500),
            ..JoinOptions::default()
        };
        let topics = vec![b"clicks".to_vec()];
        let a = streams
            .join_group("analytics", "a", topics.clone(), options.clone())
            .await
            .expect("join a");
        assert_eq!(a.assigned.len(), 4);
        let b = streams
            .join_group("analytics", "b", topics, options)
            .await
            .expect("join b");
        assert_eq!((b.assigned.len(), b.members), (2, 2));
        let a = streams.heartbeat("analytics", "a").await.expect("heartbeat");
        assert_eq!((a.generation, a.assigned.len()), (b.generation, 2));
        // a commits within its generation; a stale generation is fenced off.
        let (t, p) = a.assigned[0].clone();
        streams
            .commit("analytics", "a", a.generation, vec![(t.clone(), p, 1)])
            .await
            .expect("commit");
        assert_eq!(
            code(
                streams
                    .commit("analytics", "a", a.generation - 1, vec![(t.clone(), p, 1)])
                    .await
            ),
            Some(ErrorCode::IllegalGeneration)
        );
        // b disappears; a keeps heartbeating and inherits b's partitions.
        let deadline = Instant::now() + Duration::from_secs(15);
        let grown = loop {
            let m = streams.heartbeat("analytics", "a").await.expect("heartbeat");
            if m.assigned.len() == 4 {
                break m;
            }
            assert!(Instant::now() < deadline, "b's partitions never moved: {m:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert!(grown.generation > a.generation);
        assert_eq!(grown.members, 1);
        assert_eq!(
            code(streams.heartbeat("analytics", "b").await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(
                streams
                    .commit("analytics", "b", grown.generation, vec![(t.clone(), p, 1)])
                    .await
            ),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            streams.committed("analytics", t).await.expect("committed").get(&p),
            Some(&1)
        );
    });
}

#[test]
fn a_watch_resumes_without_gaps_across_a_leader_kill() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let kv = client.kv();
        let mut watch = kv.watch("flags/", 0).await.expect("watch");
        let mut killed = None;
        let mut written = Vec::new();
        for i in 0..60u32 {
            if i == 25 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
                killed = Some(leader);
            }
            let value = format!("v{i}");
            // Retried until acknowledged so that the expected sequence is known exactly.
            let revision = loop {
                match kv.put(format!("flags/f{}", i % 5), &value).await {
                    Ok(r) => break r,
                    Err(e) => eprintln!("retrying put {i}: {e}"),
                }
            };
            kv.put(format!("other/{i}"), "noise").await.ok();
            written.push((revision, value));
        }
        kv.delete("flags/f0").await.expect("delete");
        let mut events = Vec::new();
        while events.len() < 61 {
            // Read as a `Stream`: its poll resumes the watch on another node after the kill.
            let e = tokio::time::timeout(Duration::from_secs(30), tokio_stream::StreamExt::next(&mut watch))
                .await
                .expect("watch stalled")
                .expect("watch ended")
                .expect("watch event");
            events.push(e);
        }
        assert!(events.iter().all(|e| e.key.starts_with(b"flags/")));
        // Puts that were acknowledged more than once (a retry after an unknown outcome applies
        // once, by session) appear once; the values arrive in write order, without gaps.
        let values: Vec<String> = events[..60]
            .iter()
            .map(|e| String::from_utf8(e.value.clone()).expect("utf8"))
            .collect();
        assert_eq!(values, written.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions strictly increase");
        assert_eq!(events[60].kind, WatchEventKind::Delete);

        // A new watch from a past revision replays from exactly there.
        let from = events[30].revision;
        let mut replay = kv.watch("flags/", from).await.expect("watch from a revision");
        let first = replay.next().await.expect("event").expect("ok");
        assert_eq!((first.revision, first.value.clone()), (from, events[30].value.clone()));
        cluster.restart(killed.expect("killed"));
    });
}

#[test]
fn a_watch_from_a_compacted_revision_says_so() {
    runtime().block_on(async {
        let cluster = TestCluster::start(
            NODE,
            ClusterOptions {
                extra_args: vec!["--kv-history-revisions".into(), "20".into()],
                ..ClusterOptions::default()
            },
        );
        let client = cluster.client().await;
        let kv = client.kv();
        let first = kv.put("k", "0").await.expect("put");
        for i in 1..60 {
            kv.put("k", i.to_string()).await.expect("put");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let oldest = loop {
            match kv.watch("", first).await {
                Err(ClientError::Compacted { oldest, .. }) => break oldest,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "history never compacted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        };
        assert!(oldest > first);
        // From the oldest kept revision, the watch works and starts right there. Compaction goes
        // on meanwhile (its own entries are revisions too, so the kept window moves up about one
        // revision a second): a watch that lost that race is told the new oldest and retries.
        let mut from = oldest;
        let mut watch = loop {
            match kv.watch("", from).await {
                Ok(watch) => break watch,
                Err(ClientError::Compacted { oldest, .. }) if Instant::now() < deadline => {
                    assert!(oldest > from, "the oldest kept revision only moves up");
                    from = oldest;
                }
                Err(e) => panic!("watch from the oldest kept ({from}): {e}"),
            }
        };
        let event = watch.next().await.expect("event").expect("ok");
        assert!(event.revision >= from);
    });
}

#[test]
fn pubsub_reaches_subscribers_on_every_node() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        // A client pinned to the follower (lazy clients do not move to the leader by themselves).
        let on_follower = Client::lazy([cluster.addr(follower)], ClientOptions::default()).expect("client");
        let mut by_channel = on_follower
            .pubsub()
            .subscribe(vec![b"orders.paid".to_vec()], Vec::new())
            .await
            .expect("subscribe on a follower");
        let mut by_pattern = client
            .pubsub()
            .subscribe(Vec::new(), vec![b"orders.*".to_vec()])
            .await
            .expect("subscribe on the leader");
        assert_eq!(client.pubsub().publish("orders.paid", "o-1").await.expect("publish"), 2);
        assert_eq!(
            client
                .pubsub()
                .publish("orders.refunded", "o-2")
                .await
                .expect("publish"),
            1
        );
        assert_eq!(client.pubsub().publish("users.new", "u-1").await.expect("publish"), 0);
        let got = by_channel.next().await.expect("message").expect("ok");
        assert_eq!(
            (got.channel.as_slice(), got.payload.as_slice()),
            (b"orders.paid".as_slice(), b"o-1".as_slice())
        );
        // A subscription is a `Stream`: the two pattern matches, taken with a combinator.
        let both: Vec<_> = tokio_stream::StreamExt::collect(tokio_stream::StreamExt::take(&mut by_pattern, 2)).await;
        let [p1, p2] = <[_; 2]>::try_from(both).expect("two messages");
        let (p1, p2) = (p1.expect("ok"), p2.expect("ok"));
        assert_eq!(
            (p1.payload.as_slice(), p2.payload.as_slice()),
            (b"o-1".as_slice(), b"o-2".as_slice())
        );
        assert_eq!(p1.pattern.as_deref(), Some(b"orders.*".as_slice()));
        // Unsubscribing (dropping) stops delivery.
        drop(by_channel);
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.pubsub().publish("orders.paid", "o-3").await.expect("publish") != 1 {
            assert!(Instant::now() < deadline, "a dropped subscriber is still counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            code(client.pubsub().publish("", "x").await),
            Some(ErrorCode::InvalidArgument)
        );
    });
}

/// A node that has not learned the membership yet (here: one started but never added) cannot
/// reach the other nodes' subscribers. It used to answer "0 receivers" for a publish that every
/// subscriber elsewhere missed; it refuses instead, and a client that knows another node
/// publishes there.
#[test]
fn a_node_outside_the_membership_refuses_a_publish_instead_of_reaching_no_one() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let (outsider, _) = cluster.spawn_new_node(4);
        // A refused connection is not the refusal under test: wait for the node to listen.
        cluster.wait_listening(4);
        let mut subscription = client
            .pubsub()
            .subscribe(vec![b"alerts".to_vec()], Vec::new())
            .await
            .expect("subscribe");
        let short = ClientOptions {
            request_timeout: Duration::from_millis(600),
            ..cluster.client_options()
        };
        let only_outsider = Client::lazy([outsider.clone()], short.clone()).expect("client");
        match only_outsider.pubsub().publish("alerts", "lost?").await {
            Err(ClientError::Unavailable { last_error, .. }) => {
                assert!(last_error.contains("membership"), "{last_error}")
            }
            other => panic!("a node outside the membership must refuse, got {other:?}"),
        }
        let outsider_first = Client::lazy([outsider, cluster.addr(leader)], short).expect("client");
        assert_eq!(
            outsider_first.pubsub().publish("alerts", "a-1").await.expect("publish"),
            1,
            "the retry on a member reaches the subscriber"
        );
        let got = subscription.next().await.expect("message").expect("ok");
        assert_eq!(got.payload, b"a-1", "the refused publish reached no one");
    });
}

#[test]
fn bad_queue_and_stream_input_gets_typed_errors_and_changes_nothing() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("t", topic(2)).await.expect("create");
        assert_eq!(
            code(streams.produce("nope", vec![Record::new("k", "v")]).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(streams.produce("t", vec![Record::new("k", "v").to_partition(2)]).await),
            Some(ErrorCode::OutOfRange)
        );
        assert_eq!(
            code(streams.fetch("t", 0, 5, FetchOptions::default()).await),
            Some(ErrorCode::OffsetOutOfRange)
        );
        assert_eq!(
            code(streams.fetch("t", 9, 0, FetchOptions::default()).await),
            Some(ErrorCode::OutOfRange)
        );
        assert_eq!(
            code(streams.create_topic("t", topic(1)).await),
            Some(ErrorCode::OutOfRange)
        );
        let info = streams
            .describe("t", ReadConsistency::Linearizable)
            .await
            .expect("describe");
        assert!(
            info.partitions.iter().all(|p| p.high_watermark == 0),
            "nothing appended"
        );

        assert_eq!(
            code(client.queue("").create(QueueOptions::default()).await),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            code(client.queue("").enqueue("x").await),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            code(client.queue("missing").enqueue("x").await),
            Some(ErrorCode::NotFound)
        );
        let q = client.queue("q");
        q.create(QueueOptions::default()).await.expect("create");
        let oversize = vec![0u8; 256 * 1024 + 1];
        assert_eq!(
            code(
                q.enqueue_batch(vec![NewMessage::new("fine"), NewMessage::new(oversize)])
                    .await
            ),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(code(q.ack(b"short").await), Some(ErrorCode::InvalidArgument));
        assert_eq!(q.stats(ReadConsistency::Linearizable).await.expect("stats").messages, 0);
    });
}

/// A worker extends a delivery it is still busy with, acknowledges many deliveries in one request
/// (each answered on its own), an operator purges what is queued and lists the queues, through
/// the SDK and the CLI.
#[test]
fn extend_batch_ack_purge_and_list_queues() {
    use basalt_client::AckResult;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let jobs = client.queue("jobs");
        jobs.create(QueueOptions::default()).await.expect("create");
        client
            .queue("mail")
            .create(QueueOptions::default())
            .await
            .expect("create");
        for i in 0..5 {
            jobs.enqueue(format!("job-{i}")).await.expect("enqueue");
        }
        let short = ReceiveOptions {
            visibility_timeout: Duration::from_millis(500),
            wait: Duration::ZERO,
        };
        let got = jobs.receive(3, short).await.expect("receive");
        assert_eq!(got.len(), 3);
        // Extended well past its first timeout: not handed out again meanwhile.
        let until = jobs
            .extend(&got[0].receipt, Duration::from_secs(60))
            .await
            .expect("extend");
        assert!(until >= got[0].invisible_until_ms + 50_000, "{until}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let again = jobs.receive(10, short).await.expect("receive");
        let ids: BTreeSet<u64> = again.iter().map(|m| m.id).collect();
        assert!(!ids.contains(&got[0].id), "an extended delivery came back: {ids:?}");
        assert!(ids.contains(&got[1].id) && ids.contains(&got[2].id), "{ids:?}");
        assert_eq!(
            code(jobs.extend(&got[1].receipt, Duration::from_secs(1)).await),
            Some(ErrorCode::StaleReceipt),
            "the redelivered message's old receipt cannot extend"
        );
        assert_eq!(
            code(jobs.extend(&got[0].receipt, Duration::ZERO).await),
            Some(ErrorCode::OutOfRange)
        );

        let mut receipts: Vec<Vec<u8>> = again.iter().map(|m| m.receipt.clone()).collect();
        receipts.push(got[1].receipt.clone());
        let results = jobs.ack_batch(&receipts).await.expect("ack batch");
        assert_eq!(results.len(), receipts.len());
        assert!(
            results[..again.len()].iter().all(|r| *r == AckResult::Acked),
            "{results:?}"
        );
        assert!(matches!(results[again.len()], AckResult::Stale { .. }), "{results:?}");
        assert_eq!(
            jobs.stats(ReadConsistency::Linearizable).await.expect("stats").messages,
            1,
            "only the extended one is left"
        );

        for i in 0..3 {
            jobs.enqueue(format!("more-{i}")).await.expect("enqueue");
        }
        assert_eq!(jobs.purge().await.expect("purge"), 4);
        let stats = jobs.stats(ReadConsistency::Linearizable).await.expect("stats");
        assert_eq!((stats.messages, stats.in_flight), (0, 0));
        assert_eq!(
            code(jobs.ack(&got[0].receipt).await),
            Some(ErrorCode::StaleReceipt),
            "a purged delivery's receipt is stale"
        );

        let listed = client.list_queues().await.expect("list");
        let names: Vec<&[u8]> = listed.iter().map(|q| q.name.as_slice()).collect();
        assert_eq!(names, vec![b"jobs".as_slice(), b"mail".as_slice()]);

        let endpoints = cluster.endpoints();
        jobs.enqueue("cli").await.expect("enqueue");
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["queue", "list"], None).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stdout.contains("jobs messages=1 in_flight=0"), "{}", run.stdout);
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["queue", "purge", "jobs"], None).await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "purged=1"), "{}", run.stderr);
    });
}

/// An operator deletes queues: a dead-letter queue in use is refused, a waiting receiver is
/// answered at once, a deleted queue is unknown everywhere (its in-flight receipts too), leaves the
/// list, and its name comes back empty; through the SDK and the CLI.
#[test]
fn deleting_a_queue_removes_it_with_its_messages_and_frees_its_name() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let dead = client.queue("orders-dlq");
        dead.create(QueueOptions::default()).await.expect("create dlq");
        let orders = client.queue("orders");
        let with_dlq = QueueOptions {
            max_deliveries: 3,
            dead_letter_queue: Some(b"orders-dlq".to_vec()),
            ..QueueOptions::default()
        };
        orders.create(with_dlq).await.expect("create");
        for i in 0..3 {
            orders.enqueue(format!("order-{i}")).await.expect("enqueue");
        }
        let in_flight = orders.receive(1, ReceiveOptions::default()).await.expect("receive");
        assert_eq!(in_flight.len(), 1);
        assert_eq!(
            code(dead.delete().await),
            Some(ErrorCode::QueueInUse),
            "orders names it as its dead-letter queue"
        );

        // A receiver long-polling an empty queue is answered when the queue goes, not at the end
        // of its wait.
        let idle = client.queue("idle");
        idle.create(QueueOptions::default()).await.expect("create idle");
        let waiter = {
            let idle = client.queue("idle");
            tokio::spawn(async move {
                let started = Instant::now();
                let wait = ReceiveOptions {
                    visibility_timeout: Duration::ZERO,
                    wait: Duration::from_secs(40),
                };
                (idle.receive(1, wait).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            idle.delete().await.expect("delete idle"),
            "an empty queue goes in one entry"
        );
        let (received, waited) = waiter.await.expect("waiter");
        assert_eq!(code(received), Some(ErrorCode::NotFound));
        assert!(
            waited < Duration::from_secs(30),
            "the receiver waited out its wait: {waited:?}"
        );

        assert!(orders.delete().await.expect("delete"), "three messages go in one entry");
        assert_eq!(code(orders.enqueue("late").await), Some(ErrorCode::NotFound));
        assert_eq!(code(orders.ack(&in_flight[0].receipt).await), Some(ErrorCode::NotFound));
        assert_eq!(
            code(orders.stats(ReadConsistency::Linearizable).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(orders.delete().await),
            Some(ErrorCode::NotFound),
            "deleted already"
        );
        let listed = client.list_queues().await.expect("list");
        let names: Vec<&[u8]> = listed.iter().map(|q| q.name.as_slice()).collect();
        assert_eq!(names, vec![b"orders-dlq".as_slice()]);

        // Its name comes back empty, and the dead-letter queue it named is free to go.
        orders.create(QueueOptions::default()).await.expect("re-create");
        let stats = orders.stats(ReadConsistency::Linearizable).await.expect("stats");
        assert_eq!((stats.messages, stats.in_flight), (0, 0));
        let fresh = orders.receive(10, ReceiveOptions::default()).await.expect("receive");
        assert!(fresh.is_empty(), "the old messages came back: {fresh:?}");
        assert!(dead.delete().await.expect("delete the dlq"));

        let endpoints = cluster.endpoints();
        orders.enqueue("cli").await.expect("enqueue");
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["queue", "delete", "orders"], None).await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "DELETED"), "{}", run.stderr);
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["queue", "delete", "orders"], None).await;
        assert_ne!(run.code, Some(0), "{}", run.stdout);
        assert!(run.stderr.contains("NOT_FOUND"), "{}", run.stderr);
        assert!(client.list_queues().await.expect("list").is_empty());
    });
}

/// One record a member of the managed-consumer test handled.
#[derive(Clone, Debug)]
struct Handled {
    member: &'static str,
    key: String,
    seq: u32,
    replayed: bool,
    dead_lettered: bool,
}

/// `(key, seq)` of a record of the managed-consumer test (`value` = "key:seq").
fn key_seq(value: &[u8]) -> (String, u32) {
    let text = String::from_utf8_lossy(value);
    let (key, seq) = text.split_once(':').expect("key:seq");
    (key.to_string(), seq.parse().expect("seq"))
}

/// The poison records: refused until `fixed`, then dead-lettered and replayed.
fn poison(key: &str, seq: u32) -> bool {
    seq == 3 && ["k0", "k1", "k2"].contains(&key)
}

/// A member's loop: handles records until `stop`, dead-lettering poison while it is not fixed.
async fn consume_as(
    member: &'static str,
    mut consumer: basalt_client::Consumer,
    log: std::sync::Arc<std::sync::Mutex<Vec<Handled>>>,
    fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio_stream::StreamExt;
    while !stop.load(Ordering::SeqCst) {
        let next = match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Err(_) => continue,
            Ok(next) => next,
        };
        let record = match next {
            None => break,
            Some(Err(e)) => panic!("{member}: {e}"),
            Some(Ok(record)) => record,
        };
        // Some work per record, so commits happen while a member is busy.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (key, seq) = key_seq(&record.value);
        let replayed = record
            .header(basalt_client::consumer::dead_letter::REPLAYS_HEADER)
            .is_some();
        let dead_lettered = poison(&key, seq) && !fixed.load(Ordering::SeqCst);
        if dead_lettered {
            consumer.dead_letter(&record, "poison").await.expect("dead letter");
        }
        log.lock().expect("log").push(Handled {
            member,
            key,
            seq,
            replayed,
            dead_lettered,
        });
    }
    consumer.close().await.expect("close");
}

#[test]
fn a_managed_consumer_group_handles_every_record_in_key_order_through_a_member_crash_and_replays_dead_letters() {
    use basalt_client::{ConsumerOptions, StartFrom};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("orders.v1", topic(4)).await.expect("create");
        const KEYS: u32 = 12;
        const PER_KEY: u32 = 20;
        // Produced in rounds, so every partition holds many batches.
        for seq in 0..PER_KEY {
            let round = (0..KEYS)
                .map(|k| Record::new(format!("k{k}"), format!("k{k}:{seq}")))
                .collect();
            streams.produce("orders.v1", round).await.expect("produce");
        }
        let options = ConsumerOptions {
            session_timeout: Duration::from_millis(2000),
            auto_commit: Some(Duration::from_millis(100)),
            max_records: 7,
            start: StartFrom::Earliest,
            ..ConsumerOptions::default()
        };
        let log = Arc::new(Mutex::new(Vec::<Handled>::new()));
        let fixed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));

        // Member a runs on a runtime of its own, with its own client, so it can crash: shutting
        // the runtime down stops it mid-record, without a commit or a leave.
        let crashing = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let endpoints = cluster.endpoints();
        let (a_log, a_fixed, a_stop) = (log.clone(), fixed.clone(), Arc::new(AtomicBool::new(false)));
        let a_options = ConsumerOptions {
            member_id: Some("a".into()),
            ..options.clone()
        };
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
        crashing.spawn(async move {
            let client = Client::connect(endpoints).await.expect("connect");
            let consumer = client
                .streams()
                .consumer("workers", vec![b"orders.v1".to_vec()], a_options)
                .await
                .expect("a joins");
            let _ = joined_tx.send(());
            consume_as("a", consumer, a_log, a_fixed, a_stop).await;
        });
        joined_rx.await.expect("a joined");
        let b = streams
            .consumer(
                "workers",
                vec![b"orders.v1".to_vec()],
                ConsumerOptions {
                    member_id: Some("b".into()),
                    ..options.clone()
                },
            )
            .await
            .expect("b joins");
        let b_task = tokio::spawn(consume_as("b", b, log.clone(), fixed.clone(), stop.clone()));

        // a crashes once it has handled some records.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.lock().expect("log").iter().filter(|h| h.member == "a").count() < 40 {
            assert!(
                Instant::now() < deadline,
                "a never got going: {:?}",
                log.lock().expect("log").len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crashing.shutdown_background();

        // b inherits a's partitions after a's session timeout and handles everything.
        let all: BTreeSet<(String, u32)> = (0..KEYS)
            .flat_map(|k| (0..PER_KEY).map(move |s| (format!("k{k}"), s)))
            .collect();
        let handled = |log: &Mutex<Vec<Handled>>| -> BTreeSet<(String, u32)> {
            log.lock()
                .expect("log")
                .iter()
                .map(|h| (h.key.clone(), h.seq))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while handled(&log) != all {
            assert!(
                Instant::now() < deadline,
                "not every record was handled: {} of {}",
                handled(&log).len(),
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let poisoned = all.iter().filter(|(k, s)| poison(k, *s)).count();
        let dlq = basalt_client::consumer::dead_letter::topic_of(b"orders.v1");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let letters = streams.describe(dlq.clone(), ReadConsistency::Linearizable).await;
            let count: u64 = letters.map_or(0, |t| t.partitions.iter().map(|p| p.high_watermark).sum());
            if count >= poisoned as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "dead letters: {count} of {poisoned}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The fix is deployed; the dead letters are replayed and handled.
        fixed.store(true, Ordering::SeqCst);
        let summary = streams
            .replay_dead_letters(dlq.clone(), basalt_client::ReplayOptions::default())
            .await
            .expect("replay");
        assert!(summary.total() >= poisoned as u64, "{summary:?}");
        assert_eq!(summary.skipped, 0);
        // A second replay finds nothing new: progress is committed.
        let again = streams
            .replay_dead_letters(dlq.clone(), basalt_client::ReplayOptions::default())
            .await
            .expect("replay again");
        assert_eq!(again.total(), 0, "{again:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replayed_ok: BTreeSet<(String, u32)> = log
                .lock()
                .expect("log")
                .iter()
                .filter(|h| h.replayed && !h.dead_lettered)
                .map(|h| (h.key.clone(), h.seq))
                .collect();
            if replayed_ok.len() == poisoned {
                break;
            }
            assert!(Instant::now() < deadline, "replayed and handled: {replayed_ok:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::SeqCst);
        b_task.await.expect("b");

        // Per member, each key's first deliveries come in order, without repeats: a record is
        // read again only by the member that inherited its partition, after a's last commit.
        let log = log.lock().expect("log").clone();
        for member in ["a", "b"] {
            let mut last: BTreeMap<&str, u32> = BTreeMap::new();
            for h in log.iter().filter(|h| h.member == member && !h.replayed) {
                if let Some(&before) = last.get(h.key.as_str()) {
                    assert!(h.seq > before, "{member} got {}:{} after {before}", h.key, h.seq);
                }
                last.insert(&h.key, h.seq);
            }
        }
        let by_a = log.iter().filter(|h| h.member == "a").count();
        let again_by_b = log
            .iter()
            .filter(|h| h.member == "b" && !h.replayed)
            .filter(|h| log.iter().any(|x| x.member == "a" && x.key == h.key && x.seq == h.seq))
            .count();
        eprintln!("a handled {by_a} before its crash; b handled {again_by_b} of them again");
        assert!(
            again_by_b < by_a,
            "a's commits did not count: b handled all {by_a} of a's again"
        );

        // CLI: list, seek, consume with a group, delete.
        let endpoints = cluster.endpoints();
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["stream", "list"], None).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stdout.contains("orders.v1 partitions=4"), "{}", run.stdout);
        assert!(run.stdout.contains("orders.v1.dlq partitions=4"), "{}", run.stdout);
        let run = basalt_testkit::run_cli(
            NODE,
            &endpoints,
            &["stream", "consume", "orders.v1", "--group", "cli", "--max", "5"],
            None,
        )
        .await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(run.stdout.lines().count(), 5, "{}", run.stdout);
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["stream", "delete", "orders.v1.dlq"], None).await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "DELETED"), "{}", run.stderr);
        let listed = streams.list_topics().await.expect("list");
        assert_eq!(
            listed.iter().map(|t| t.name.as_slice()).collect::<Vec<_>>(),
            [b"orders.v1".as_slice()]
        );
        assert_eq!(
            code(streams.fetch(dlq.clone(), 0, 0, FetchOptions::default()).await),
            Some(ErrorCode::NotFound)
        );
        assert!(streams.create_topic(dlq, topic(1)).await.expect("created again"));
    });
}

#[test]
fn a_seek_by_time_finds_the_records_produced_after_it() {
    use std::time::SystemTime;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("clicks", topic(1)).await.expect("create");
        let early = (0..5).map(|i| Record::new("", format!("early-{i}"))).collect();
        streams.produce("clicks", early).await.expect("produce");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cut = SystemTime::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = (0..3).map(|i| Record::new("", format!("late-{i}"))).collect();
        let landed = streams.produce("clicks", late).await.expect("produce");
        let found = streams.offset_for_time("clicks", 0, cut).await.expect("seek");
        assert_eq!(found.offset, landed[0].offset);
        assert_eq!(found.high_watermark, 8);
        assert!(found.timestamp_ms.is_some());
        let after_all = streams
            .offset_for_time("clicks", 0, SystemTime::now() + Duration::from_secs(60))
            .await
            .expect("seek");
        assert_eq!((after_all.offset, after_all.timestamp_ms), (8, None));
        assert_eq!(
            code(streams.offset_for_time("clicks", 1, cut).await),
            Some(ErrorCode::OutOfRange)
        );
        // A consumer starting from that time reads only the late records.
        let options = basalt_client::ConsumerOptions {
            start: basalt_client::StartFrom::Time(cut),
            ..basalt_client::ConsumerOptions::default()
        };
        let mut consumer = streams
            .consumer("late-readers", vec![b"clicks".to_vec()], options)
            .await
            .expect("consumer");
        use tokio_stream::StreamExt;
        let first = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a record in time")
            .expect("open")
            .expect("record");
        assert_eq!(first.value, b"late-0");
        consumer.close().await.expect("close");
        let endpoints = cluster.endpoints();
        let run = basalt_testkit::run_cli(NODE, &endpoints, &["stream", "seek", "clicks", "--ago", "1h"], None).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stdout.starts_with("offset=0 timestamp_ms="), "{}", run.stdout);
    });
}

/// The values of the next `n` records of `consumer`.
async fn take(consumer: &mut basalt_client::Consumer, n: usize) -> Vec<String> {
    use tokio_stream::StreamExt;
    let mut values = Vec::new();
    for _ in 0..n {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("record");
        values.push(String::from_utf8_lossy(&record.value).into_owned());
    }
    values
}

#[test]
fn a_consumer_commits_what_was_handled_on_close_and_not_the_record_in_hand_on_drop() {
    use basalt_client::ConsumerOptions;
    use tokio_stream::StreamExt;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("events", topic(1)).await.expect("create");
        let records = (0..30).map(|i| Record::new("", format!("e{i}"))).collect();
        streams.produce("events", records).await.expect("produce");
        let options = ConsumerOptions {
            auto_commit: Some(Duration::from_secs(60)),
            ..ConsumerOptions::default()
        };
        // Closed after 10: all 10 are done and committed.
        let mut first = streams
            .consumer("g", vec![b"events".to_vec()], options.clone())
            .await
            .expect("consumer");
        assert_eq!(take(&mut first, 10).await.first().map(String::as_str), Some("e0"));
        first.close().await.expect("close");
        assert_eq!(
            streams.committed("g", "events").await.expect("committed").get(&0),
            Some(&10)
        );

        // Dropped with record 19 in hand: 10..=18 are done, 19 is read again by the next member.
        let mut second = streams
            .consumer("g", vec![b"events".to_vec()], options.clone())
            .await
            .expect("consumer");
        let got = take(&mut second, 10).await;
        assert_eq!((got[0].as_str(), got[9].as_str()), ("e10", "e19"));
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(10);
        while streams.committed("g", "events").await.expect("committed").get(&0) != Some(&19) {
            assert!(
                Instant::now() < deadline,
                "the dropped consumer's work was not committed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut third = streams
            .consumer("g", vec![b"events".to_vec()], options.clone())
            .await
            .expect("consumer");
        assert_eq!(take(&mut third, 1).await, ["e19"]);
        // A seek: what was fetched from the old position (e20.., queued already) is not handed out.
        third.seek("events", 0, 2);
        assert_eq!(take(&mut third, 2).await, ["e2", "e3"]);
        // Manual commit: exactly what was committed.
        let manual = ConsumerOptions {
            auto_commit: None,
            ..options
        };
        let mut fourth = streams
            .consumer("manual", vec![b"events".to_vec()], manual)
            .await
            .expect("consumer");
        let record = tokio::time::timeout(Duration::from_secs(10), fourth.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("record");
        fourth.commit(&record).await.expect("commit");
        assert_eq!(
            streams.committed("manual", "events").await.expect("committed").get(&0),
            Some(&1)
        );
        third.close().await.expect("close");
        fourth.close().await.expect("close");
    });
}

#[test]
fn a_consumer_whose_topic_is_deleted_says_so_goes_on_with_the_rest_and_ends_with_none_left() {
    use basalt_client::ConsumerOptions;
    use tokio_stream::StreamExt;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let streams = client.streams();
        streams.create_topic("kept", topic(1)).await.expect("create");
        streams.create_topic("doomed", topic(1)).await.expect("create");
        let mut consumer = streams
            .consumer(
                "g",
                vec![b"kept".to_vec(), b"doomed".to_vec()],
                ConsumerOptions::default(),
            )
            .await
            .expect("consumer");
        streams.delete_topic("doomed").await.expect("delete");
        streams
            .produce("kept", vec![Record::new("", "still here")])
            .await
            .expect("produce");
        // The deletion is reported, and the kept topic's record still arrives.
        let (mut refused, mut values) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while values.is_empty() || refused.is_empty() {
            assert!(Instant::now() < deadline, "refused {refused:?}, values {values:?}");
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(Ok(r))) => values.push(String::from_utf8_lossy(&r.value).into_owned()),
                Ok(Some(Err(e))) => refused.push(e.code()),
                Ok(None) => panic!("the stream ended with a topic left"),
                Err(_) => {}
            }
        }
        assert_eq!(values, ["still here"]);
        assert!(refused.iter().all(|c| *c == Some(ErrorCode::NotFound)), "{refused:?}");
        assert_eq!(consumer.assignment().1, [(b"kept".to_vec(), 0)]);
        // With no topic left the stream ends.
        streams.delete_topic("kept").await.expect("delete");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(r))) => panic!("a record after both topics were deleted: {r:?}"),
                Ok(Some(Err(e))) => assert_eq!(e.code(), Some(ErrorCode::NotFound)),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "the stream never ended");
        }
    });
}

/// A watch served by a follower that is stopped by SIGTERM ends there with UNAVAILABLE at the stop
/// and resumes on another node from its next revision: no change is missed or repeated, and the
/// watcher does not wait for the stop's bound.
#[test]
fn a_watch_resumes_without_gaps_across_a_sigterm_of_its_node() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let kv = client.kv();
        // A follower is stopped (the leader's handoff is tested apart), and the watch's own client
        // starts there without following the leader (a watch is served by any node).
        let leader = cluster.leader(&client).await;
        let stopped = if leader == 1 { 2 } else { 1 };
        let others: Vec<String> = (1..=3).filter(|&id| id != stopped).map(|id| cluster.addr(id)).collect();
        let watcher = basalt_client::Client::lazy(
            [cluster.addr(stopped), others[0].clone(), others[1].clone()],
            cluster.client_options(),
        )
        .expect("the watcher's client");
        let mut watch = watcher.kv().watch("flags/", 0).await.expect("watch");
        let mut written = Vec::new();
        for i in 0..40u32 {
            if i == 15 {
                cluster.terminate(stopped);
            }
            let value = format!("v{i}");
            // Written through the leader, which keeps running.
            kv.put(format!("flags/f{}", i % 5), &value).await.expect("put");
            written.push(value);
        }
        let mut values = Vec::new();
        let mut revisions = Vec::new();
        while values.len() < written.len() {
            let e = tokio::time::timeout(Duration::from_secs(30), tokio_stream::StreamExt::next(&mut watch))
                .await
                .expect("watch stalled")
                .expect("watch ended")
                .expect("watch event");
            revisions.push(e.revision);
            values.push(String::from_utf8(e.value).expect("utf8"));
        }
        assert_eq!(values, written);
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions strictly increase");
        let status = cluster.wait_exit(stopped, Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", cluster.logs());
        assert!(
            !cluster.log(stopped).contains("client calls still open"),
            "the watch held the stop until its bound:\n{}",
            cluster.logs()
        );
    });
}
