//! Real three-node clusters, each node a child process.

use std::time::{Duration, Instant};

use basalt_client::pb::counter_client::CounterClient;
use basalt_client::pb::{CounterApplyRequest, CounterIncr, CounterOp, RequestHeader};
use basalt_client::{Client, ClientOptions, ErrorCode, ReadConsistency};
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// Writes `count` keys `prefix-i = v-i` and returns the acknowledged ones.
async fn write_keys(client: &Client, prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for i in range {
        let key = format!("{prefix}-{i:05}");
        if client.kv().put(&key, format!("v-{i}")).await.is_ok() {
            acknowledged.push(key);
        }
    }
    acknowledged
}

async fn assert_all_readable(client: &Client, keys: &[String]) {
    for key in keys {
        let i: u32 = key.rsplit('-').next().and_then(|s| s.parse().ok()).expect("key suffix");
        let entry = client
            .kv()
            .get(key)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
        assert_eq!(entry.value, format!("v-{i}").into_bytes(), "key {key}");
    }
}

#[test]
fn writes_through_any_node_are_redirected_and_reads_are_linearizable() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");

        // A client that only knows a follower still writes: the follower redirects it.
        let via_follower = Client::connect([cluster.addr(follower)])
            .await
            .expect("connect via follower");
        let revision = via_follower.kv().put("k", "v1").await.expect("put through follower");
        assert!(revision > 0);
        // Read-your-writes through another client, linearizable.
        assert_eq!(client.kv().get("k").await.expect("get").expect("present").value, b"v1");
        client.kv().put("k", "v2").await.expect("put");
        assert_eq!(
            via_follower.kv().get("k").await.expect("get").expect("present").value,
            b"v2"
        );
        // CAS on revision.
        let current = client.kv().get("k").await.expect("get").expect("present").mod_revision;
        assert!(matches!(
            client.kv().cas("k", Some(current + 100), "x").await.expect("cas"),
            basalt_client::CasOutcome::Conflict { .. }
        ));
        assert!(matches!(
            client.kv().cas("k", Some(current), "v3").await.expect("cas"),
            basalt_client::CasOutcome::Written { .. }
        ));
        assert!(client.kv().delete("k").await.expect("delete").deleted);
        assert!(client.kv().get("k").await.expect("get").is_none());

        // The node logs go to files here: plain text, no terminal colour codes.
        let logs = cluster.logs();
        if std::env::var_os("TEST_BASALT_LOG").is_none() {
            assert!(logs.contains("INFO"), "the nodes logged nothing at info:\n{logs}");
        }
        assert!(
            !logs.contains('\u{1b}'),
            "terminal escape codes in a log file:\n{logs:?}"
        );
    });
}

/// `Kv::get_many` answers each key in order from one point-in-time view: while transactions
/// move a token between two keys, every read finds it in exactly one of them.
#[test]
fn a_multi_key_read_sees_every_key_at_one_instant() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        client.kv().put("token/a", "t").await.expect("put");
        client
            .kv()
            .put_with(
                "ttl",
                "x",
                basalt_client::PutOptions {
                    ttl: Some(Duration::from_millis(200)),
                },
            )
            .await
            .expect("put");
        let read = client
            .kv()
            .get_many(&["token/b", "token/a", "missing"], ReadConsistency::Linearizable)
            .await
            .expect("get_many");
        let values: Vec<Option<Vec<u8>>> = read.into_iter().map(|e| e.map(|e| e.value)).collect();
        assert_eq!(values, vec![None, Some(b"t".to_vec()), None]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let expired = client.kv().get_many(&["ttl"], ReadConsistency::Linearizable).await;
        assert!(
            expired.expect("get_many")[0].is_none(),
            "an expired key reads as absent"
        );

        let too_many: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
        let refused = client.kv().get_many(&too_many, ReadConsistency::Linearizable).await;
        assert_eq!(refused.err().and_then(|e| e.code()), Some(ErrorCode::InvalidArgument));
        let empty = client.kv().get_many(&[""], ReadConsistency::Linearizable).await;
        assert_eq!(empty.err().and_then(|e| e.code()), Some(ErrorCode::EmptyKey));

        // A mover shifts the token back and forth in transactions; readers never see it in
        // both keys or in neither.
        let mover = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let (from, to) = if i % 2 == 0 {
                        ("token/a", "token/b")
                    } else {
                        ("token/b", "token/a")
                    };
                    client
                        .txn()
                        .then(basalt_client::TxnOp::delete(from))
                        .then(basalt_client::TxnOp::put(to, "t"))
                        .commit()
                        .await
                        .expect("move");
                }
            })
        };
        let mut reads = 0;
        while !mover.is_finished() {
            for consistency in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
                let read = client
                    .kv()
                    .get_many(&["token/a", "token/b"], consistency)
                    .await
                    .expect("get_many");
                let holding = read.iter().filter(|e| e.is_some()).count();
                assert_eq!(holding, 1, "the token in {holding} keys at once ({consistency:?})");
                reads += 1;
            }
        }
        mover.await.expect("mover");
        assert!(reads > 10, "only {reads} reads ran beside the mover");
    });
}

#[test]
fn bad_input_gets_a_typed_error_and_writes_nothing() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        client.kv().put("before", "x").await.expect("put");
        let before = client.cluster_status().await.expect("status").last_log_index;
        let cases = [
            (client.kv().put(vec![b'k'; 5000], "v").await, ErrorCode::KeyTooLarge),
            (client.kv().put("", "v").await, ErrorCode::EmptyKey),
            (
                client.kv().put("k", vec![0u8; 2 * 1024 * 1024]).await,
                ErrorCode::ValueTooLarge,
            ),
        ];
        for (result, code) in cases {
            let err = result.expect_err("must be refused");
            assert_eq!(err.code(), Some(code), "{err}");
        }
        assert_eq!(
            client.counter("").incr(1).await.expect_err("empty key").code(),
            Some(ErrorCode::EmptyKey)
        );
        client.counter("c").incr(i64::MAX).await.expect("incr");
        assert_eq!(
            client.counter("c").incr(1).await.expect_err("overflow").code(),
            Some(ErrorCode::CounterOverflow)
        );
        assert_eq!(
            client.counter("c").get().await.expect("get"),
            i64::MAX,
            "refused increment changed nothing"
        );
        // Validation failures never reached the log: only the two counter entries were added.
        let after = client.cluster_status().await.expect("status").last_log_index;
        assert_eq!(after, before.map(|b| b + 2), "refused input must not be proposed");
    });
}

#[test]
fn concurrent_puts_of_one_client_share_entries_and_are_each_answered() {
    const TASKS: u32 = 32;
    const PUTS: u32 = 20;
    runtime().block_on(async {
        // The server's own merging off: this is about the SDK's coalescing.
        let options = ClusterOptions {
            extra_args: vec!["--kv-merge-in-flight".into(), "0".into()],
            ..ClusterOptions::default()
        };
        let cluster = TestCluster::start(NODE, options);
        let client = cluster.client().await;
        client.kv().put("before", "x").await.expect("put");
        let before = client
            .cluster_status()
            .await
            .expect("status")
            .last_log_index
            .expect("index");
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut revisions = Vec::new();
                    for i in 0..PUTS {
                        let key = format!("t{t:02}-{i:05}");
                        revisions.push(client.kv().put(&key, format!("v-{i}")).await.expect("put"));
                    }
                    // A bad write among good ones is refused alone.
                    let refused = client
                        .kv()
                        .put(format!("t{t:02}-big"), vec![0u8; 2 * 1024 * 1024])
                        .await;
                    assert_eq!(refused.expect_err("too large").code(), Some(ErrorCode::ValueTooLarge));
                    revisions
                })
            })
            .collect();
        let mut keys = Vec::new();
        for (t, task) in tasks.into_iter().enumerate() {
            let revisions = task.await.expect("task");
            assert!(
                revisions.windows(2).all(|w| w[0] < w[1]),
                "one task's puts apply in order"
            );
            keys.extend((0..PUTS).map(|i| format!("t{t:02}-{i:05}")));
        }
        assert_all_readable(&client, &keys).await;
        let after = client
            .cluster_status()
            .await
            .expect("status")
            .last_log_index
            .expect("index");
        let entries = after - before;
        // Each put alone would be one entry each; coalesced, many share one.
        assert!(
            entries < u64::from(TASKS * PUTS) / 2,
            "{entries} entries for {} puts",
            TASKS * PUTS
        );
    });
}

/// Clients on connections of their own, one put at a time each: nothing for the SDK to coalesce,
/// so it is the leader that merges their concurrent puts into shared entries.
#[test]
fn puts_of_separate_clients_are_merged_by_the_leader_and_each_answered() {
    const CLIENTS: u32 = 24;
    const PUTS: u32 = 15;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let first = cluster.client().await;
        first.kv().put("before", "x").await.expect("put");
        let leader = cluster.leader(&first).await;
        let index = |status: basalt_client::pb::StatusResponse| status.last_log_index.expect("index");
        let before = index(first.cluster_status().await.expect("status"));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(cluster.client().await);
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                tokio::spawn(async move {
                    let mut revisions = Vec::new();
                    let mut hot = Vec::new();
                    for i in 0..PUTS {
                        revisions.push(
                            client
                                .kv()
                                .put(format!("c{c:02}-{i:05}"), format!("v-{i}"))
                                .await
                                .expect("put"),
                        );
                        if i.is_multiple_of(3) {
                            // One key every client writes: two writes of it never share an entry.
                            hot.push(client.kv().put("hot", format!("{c}-{i}")).await.expect("hot put"));
                        }
                    }
                    (revisions, hot)
                })
            })
            .collect();
        let mut keys = Vec::new();
        let mut hot_revisions = Vec::new();
        for (c, task) in tasks.into_iter().enumerate() {
            let (revisions, hot) = task.await.expect("task");
            assert!(
                revisions.windows(2).all(|w| w[0] < w[1]),
                "one client's puts apply in order"
            );
            hot_revisions.extend(hot);
            keys.extend((0..PUTS).map(|i| format!("c{c:02}-{i:05}")));
        }
        assert_all_readable(&first, &keys).await;
        let distinct: std::collections::BTreeSet<_> = hot_revisions.iter().collect();
        assert_eq!(
            distinct.len(),
            hot_revisions.len(),
            "every write of the hot key has its own revision"
        );
        let last_hot = first.kv().get("hot").await.expect("get").expect("hot exists");
        assert_eq!(Some(&last_hot.mod_revision), hot_revisions.iter().max());

        let entries = index(first.cluster_status().await.expect("status")) - before;
        let puts = keys.len() + hot_revisions.len();
        // One entry each without merging; some wait in line behind the hot key's writes.
        assert!(entries < puts as u64 * 3 / 4, "{entries} entries for {puts} puts");
        assert!(
            cluster.metric(leader, "basalt_kv_merged_requests_total") > 0,
            "the leader reports the requests it merged"
        );
    });
}

/// Sends `call` to the leader over a raw gRPC channel of its own (no SDK: the test controls
/// the request's session), and again after a refusal (leadership moving in a young cluster), as
/// the SDK would, for up to 20 s: the channel it was answered on and the answer.
async fn call_the_leader<T, F, Fut>(
    cluster: &TestCluster,
    client: &Client,
    mut call: F,
) -> (tonic::transport::Channel, T)
where
    F: FnMut(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster.leader(client).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(leader)))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        match call(channel.clone()).await {
            Ok(answer) => return (channel, answer),
            Err(status) if Instant::now() < deadline => {
                eprintln!("retrying after {status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("no leader accepted the call: {status}"),
        }
    }
}

#[test]
fn retried_request_with_the_same_session_applies_once() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let header = RequestHeader {
            client_id: 42u128.to_be_bytes().to_vec(),
            seq: 1,
            first_incomplete_seq: 1,
            fence: None,
        };
        let request = CounterApplyRequest {
            header: Some(header.clone()),
            ops: vec![CounterOp {
                key: b"once".to_vec(),
                action: Some(basalt_client::pb::counter_op::Action::Incr(CounterIncr {
                    delta: 7,
                    min: None,
                    max: None,
                })),
            }],
        };
        let value = |reply: basalt_client::pb::CounterApplyResponse| reply.outcomes[0].value;
        // Send to the leader; a NOT_LEADER refusal (leadership moving in a young cluster) is
        // retried with the same (client_id, seq), exactly as the SDK does.
        let (channel, first) = call_the_leader(&cluster, &client, |channel| {
            let request = request.clone();
            async move {
                CounterClient::new(channel)
                    .apply(request)
                    .await
                    .map(|r| value(r.into_inner()))
            }
        })
        .await;
        let mut raw = CounterClient::new(channel);
        let retry = value(raw.apply(request.clone()).await.expect("retry").into_inner());
        assert_eq!(first, 7);
        assert_eq!(retry, 7, "the retry returns the first answer");
        assert_eq!(
            client.counter("once").get().await.expect("get"),
            7,
            "applied exactly once"
        );

        // A new seq applies; the old one, once the client says it has its answer, is refused.
        let next = CounterApplyRequest {
            header: Some(RequestHeader {
                seq: 2,
                first_incomplete_seq: 2,
                ..header.clone()
            }),
            ..request.clone()
        };
        assert_eq!(value(raw.apply(next).await.expect("seq 2").into_inner()), 14);
        let status = raw
            .apply(request)
            .await
            .expect_err("seq 1 after its answer was released");
        assert_eq!(
            status
                .metadata()
                .get(basalt_client::ERROR_CODE_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("SESSION_EXPIRED")
        );
        assert_eq!(client.counter("once").get().await.expect("get"), 14);
    });
}

#[test]
fn leader_kill_elects_a_new_leader_without_losing_acknowledged_writes() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let mut acknowledged = write_keys(&client, "before", 0..200).await;
        assert_eq!(acknowledged.len(), 200);
        let old_leader = cluster.leader(&client).await;

        cluster.kill(old_leader);
        let killed_at = Instant::now();
        // The first write after the kill: the client finds the new leader by itself.
        client
            .kv()
            .put("after-kill", "x")
            .await
            .expect("write after leader kill");
        let failover = killed_at.elapsed();
        eprintln!("leader kill -> next successful write: {failover:?}");
        let new_leader = cluster.leader(&client).await;
        assert_ne!(new_leader, old_leader);

        acknowledged.extend(write_keys(&client, "during", 0..200).await);
        assert_all_readable(&client, &acknowledged).await;

        // The killed node restarts on its data and catches up.
        cluster.restart(old_leader);
        cluster.wait_caught_up(&client, old_leader).await;
        let stale = Client::connect_with([cluster.addr(old_leader)], cluster.client_options())
            .await
            .expect("connect");
        let entry = stale
            .kv()
            .get_with("during-00199", ReadConsistency::Stale)
            .await
            .expect("stale read");
        assert_eq!(entry.expect("caught up").value, b"v-199");
    });
}

#[test]
fn a_leader_retries_a_down_follower_with_pauses_not_in_a_spin() {
    const FAILURES: &str = "basalt_raft_stream_open_failures_total";
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        write_keys(&client, "warm", 0..10).await;
        let leader = cluster.leader(&client).await;
        let follower = *cluster.specs.keys().find(|id| **id != leader).expect("a follower");
        let before = cluster.metric(leader, FAILURES);
        let beats_failed_before = cluster.metric(leader, "basalt_raft_heartbeat_failures_total");

        cluster.kill(follower);
        // The leader goes on with the other follower and keeps trying the dead one.
        assert_eq!(write_keys(&client, "down", 0..50).await.len(), 50);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let failures = cluster.metric(leader, FAILURES) - before;
        // Reopens are paused at least 5, 10, 20 .. 100 ms apart: a few dozen in these seconds. Without
        // the pause the leader reopened the stream hundreds of times a second (1,646 in one run).
        assert!(
            (1..=150).contains(&failures),
            "{failures} failed stream opens to a follower down for a few seconds"
        );
        // Heartbeats go on every 30 ms and fail: counted, and not a spin either.
        let beats_failed = cluster.metric(leader, "basalt_raft_heartbeat_failures_total") - beats_failed_before;
        assert!(
            (10..=400).contains(&beats_failed),
            "{beats_failed} failed heartbeats to a follower down for a few seconds"
        );
        assert_eq!(
            cluster.leader(&client).await,
            leader,
            "no election while a follower is down"
        );

        cluster.restart(follower);
        cluster.wait_caught_up(&client, follower).await;
    });
}

/// Heartbeats go as unary appends: an idle leader beats every 30 ms to two followers, and opens
/// no replication stream for it (each beat opened and closed one before, ~65 a second), while
/// writes still replicate, linearizable reads still confirm leadership, and a killed leader is
/// still replaced.
#[test]
fn heartbeats_are_unary_appends_not_a_stream_each() {
    const OPENED: &str = "basalt_raft_streams_opened_total";
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        write_keys(&client, "warm", 0..10).await;
        let leader = cluster.leader(&client).await;
        let before = cluster.metric(leader, OPENED);
        let terms: Vec<u64> = (1..=3).map(|id| cluster.metric(id, "basalt_raft_term")).collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let opened = cluster.metric(leader, OPENED) - before;
        assert!(
            opened <= 10,
            "{opened} replication streams opened by an idle leader in 2 s"
        );
        // The heartbeats arrived: no follower stood for election meanwhile.
        let terms_after: Vec<u64> = (1..=3).map(|id| cluster.metric(id, "basalt_raft_term")).collect();
        assert_eq!(terms_after, terms, "terms of nodes 1..3 over 2 idle seconds");
        assert_eq!(cluster.leader(&client).await, leader);
        // Linearizable reads with no write before them wait for a heartbeat round each.
        for i in 0..10 {
            let entry = client.kv().get(format!("warm-{i:05}")).await.expect("linearizable get");
            assert_eq!(entry.expect("written before").value, format!("v-{i}").into_bytes());
        }
        for i in 0..20 {
            let key = format!("read-{i}");
            client.kv().put(&key, b"v").await.expect("put");
            let entry = client.kv().get(&key).await.expect("linearizable get");
            assert_eq!(entry.expect("just written").value, b"v");
        }
        cluster.kill(leader);
        assert_eq!(
            write_keys(&client, "after", 0..10).await.len(),
            10,
            "a new leader took over"
        );
        assert_ne!(cluster.leader(&client).await, leader);
    });
}

#[test]
fn full_cluster_restart_keeps_every_acknowledged_write() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let acknowledged = write_keys(&client, "durable", 0..300).await;
        assert_eq!(acknowledged.len(), 300);
        client.counter("hits").incr(300).await.expect("incr");
        for id in 1..=3 {
            cluster.kill(id);
        }
        for id in 1..=3 {
            cluster.restart(id);
        }
        let client = cluster.client().await;
        assert_all_readable(&client, &acknowledged).await;
        assert_eq!(client.counter("hits").get().await.expect("get"), 300);
    });
}

/// Three nodes that snapshot every `snapshot_entries` entries and keep 10 entries behind, with
/// one follower killed: (cluster, client, leader, the stopped follower).
async fn snapshotting_cluster_with_a_follower_down(snapshot_entries: u64) -> (TestCluster, Client, u64, u64) {
    let mut cluster = TestCluster::start(
        NODE,
        ClusterOptions {
            snapshot_entries,
            logs_to_keep: 10,
            ..ClusterOptions::default()
        },
    );
    let client = cluster.client().await;
    let leader = cluster.leader(&client).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(lagging);
    (cluster, client, leader, lagging)
}

#[test]
fn a_node_behind_the_purged_log_catches_up_through_a_snapshot() {
    runtime().block_on(async {
        let (mut cluster, client, leader, lagging) = snapshotting_cluster_with_a_follower_down(50).await;

        let acknowledged = write_keys(&client, "snap", 0..400).await;
        assert_eq!(acknowledged.len(), 400);
        // The leader's log no longer holds what the stopped node needs.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = client.node_status(&cluster.addr(leader)).await.expect("status");
            if status.purged_index.unwrap_or(0) > 100 {
                break;
            }
            assert!(Instant::now() < deadline, "leader never purged its log: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        cluster.restart(lagging);
        cluster.wait_caught_up(&client, lagging).await;
        let status = client.node_status(&cluster.addr(lagging)).await.expect("status");
        assert!(
            status.snapshot_index.unwrap_or(0) > 100,
            "caught up through a snapshot: {status:?}"
        );
        let direct = Client::connect_with([cluster.addr(lagging)], cluster.client_options())
            .await
            .expect("connect");
        for key in ["snap-00000", "snap-00200", "snap-00399"] {
            let entry = direct
                .kv()
                .get_with(key, ReadConsistency::Stale)
                .await
                .expect("read")
                .expect("present");
            assert_eq!(
                entry.value,
                format!("v-{}", key[5..].parse::<u32>().expect("n")).into_bytes()
            );
        }
    });
}

#[test]
fn membership_grows_to_four_and_shrinks_to_three_under_writes() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let writer_client = client.clone();
        let writer = tokio::spawn(async move { write_keys(&writer_client, "member", 0..600).await });

        let (addr, peer) = cluster.spawn_new_node(4);
        // The leader asks the new node about itself before adding it.
        cluster.wait_listening(4);
        let members = client.add_member(4, &addr, Some(&peer)).await.expect("add learner");
        assert!(members.iter().any(|m| m.id == 4 && !m.voter));
        let members = client.promote(4).await.expect("promote");
        assert_eq!(members.iter().filter(|m| m.voter).count(), 4);

        let leader = cluster.leader(&client).await;
        let removed = (1..=3).find(|id| *id != leader).expect("a follower to remove");
        let members = client.remove_node(removed).await.expect("remove");
        assert_eq!(members.iter().filter(|m| m.voter).count(), 3);
        assert!(members.iter().all(|m| m.id != removed));
        cluster.kill(removed);

        let acknowledged = writer.await.expect("writer");
        assert!(
            acknowledged.len() >= 590,
            "writes kept succeeding: {} of 600",
            acknowledged.len()
        );
        assert_all_readable(&client, &acknowledged).await;
        cluster.wait_caught_up(&client, 4).await;
        assert_eq!(
            client.promote(99).await.expect_err("unknown node").code(),
            Some(ErrorCode::MembershipRejected)
        );
    });
}

/// A follower that comes back 90 MiB behind, in entries of 3 MiB, catches up: more than the
/// 64 MiB gRPC message cap is never sent to it at once. (Entries per append are capped by count,
/// not bytes, in our configuration; this shows openraft's reads keep them apart in practice, it
/// does not bound them.)
#[test]
fn a_follower_behind_many_large_entries_catches_up() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
        cluster.kill(lagging);
        // 30 entries of 3 MiB each (one batch request each): 90 MiB behind. Sent to the leader;
        // a refusal (leadership moving between the two nodes left, on a loaded machine) is sent
        // again to whichever leads then (the same puts: applying one twice changes nothing).
        let connect = |leader: u64| {
            let addr = cluster.addr(leader);
            async move {
                basalt_client::pb::kv_client::KvClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect to the leader")
                    .max_encoding_message_size(8 << 20)
            }
        };
        let mut kv = connect(leader).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..30 {
            let writes = (0..3)
                .map(|j| basalt_client::pb::KvWriteOp {
                    op: Some(basalt_client::pb::kv_write_op::Op::Put(
                        basalt_client::pb::KvPutRequest {
                            key: format!("big-{i}-{j}").into_bytes(),
                            value: vec![b'v'; 1 << 20],
                            ..Default::default()
                        },
                    )),
                })
                .collect();
            let request = basalt_client::pb::KvBatchRequest { header: None, writes };
            while let Err(status) = kv.batch(request.clone()).await {
                assert!(Instant::now() < deadline, "a 3 MiB batch: {status}");
                eprintln!("retrying after {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                kv = connect(cluster.leader(&client).await).await;
            }
        }
        cluster.restart(lagging);
        cluster.wait_caught_up(&client, lagging).await;
    });
}

/// Fail-stop: a node whose Raft log can no longer write (here its log directory is removed, so
/// the next purge after a snapshot cannot write the log's meta file) stops, with the reason in
/// its output, instead of staying up with a dead Raft core; the other two keep the cluster going.
#[test]
fn a_node_whose_log_fails_exits_and_the_cluster_goes_on() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(
            NODE,
            ClusterOptions {
                snapshot_entries: 100,
                logs_to_keep: 10,
                ..ClusterOptions::default()
            },
        );
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let broken = (1..=3).find(|id| *id != leader).expect("a follower");
        assert_eq!(write_keys(&client, "before", 0..20).await.len(), 20);
        let log_dir = cluster.specs[&broken].data_dir.join("log");
        std::fs::remove_dir_all(&log_dir).expect("remove the follower's log directory");

        let mut acknowledged = Vec::new();
        let mut exit = None;
        for round in 0..20u32 {
            acknowledged.extend(write_keys(&client, &format!("after{round}"), 0..50).await);
            exit = cluster.wait_exit(broken, Duration::from_millis(200));
            if exit.is_some() {
                break;
            }
        }
        let status = exit.unwrap_or_else(|| panic!("node {broken} kept running with a failed log"));
        assert!(!status.success(), "it exits with an error status: {status}");
        let output = std::fs::read_to_string(&cluster.specs[&broken].log).expect("node output");
        assert!(
            output.contains("the Raft core stopped"),
            "the node says why it stopped:\n{}",
            cluster.logs()
        );
        assert!(
            acknowledged.len() >= 50,
            "the cluster kept taking writes: {}",
            acknowledged.len()
        );
        assert_eq!(write_keys(&client, "still", 0..10).await.len(), 10);
        assert_all_readable(&client, &acknowledged).await;
    });
}

/// A snapshot pack damaged on the leader's disk (here cut short, as a bad sector or a read error
/// would leave it) is replaced: the leader verifies the pack it offers (in the background),
/// finds the damage, and builds a new pack from its state, so a follower behind the purged log
/// catches up although nothing is written after the damage (the leader used to send the damaged
/// pack, which every follower refused until a later write made the next snapshot). The
/// follower refuses the damaged pack if it was sent before the check ended (its own check is
/// tested in `basalt-raft`, `network::tests`), and keeps running.
#[test]
fn a_damaged_snapshot_pack_on_the_leader_is_rebuilt_and_the_follower_catches_up() {
    runtime().block_on(async {
        let (mut cluster, client, leader, lagging) = snapshotting_cluster_with_a_follower_down(100).await;
        let acknowledged = write_keys(&client, "before", 0..300).await;
        assert_eq!(acknowledged.len(), 300);

        // Let the leader's snapshot builds settle, then cut its newest pack in half.
        let snapshots = cluster.specs[&leader].data_dir.join("snapshots");
        let packs = || -> Vec<std::path::PathBuf> {
            let mut packs: Vec<_> = std::fs::read_dir(&snapshots)
                .expect("snapshot dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                .collect();
            packs.sort();
            packs
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = packs();
            if !now.is_empty() && now == seen {
                break;
            }
            assert!(Instant::now() < deadline, "the leader built no snapshot");
            seen = now;
        }
        let pack = seen.last().expect("a pack").clone();
        let bytes = std::fs::read(&pack).expect("read pack");
        // Replaced whole (a rename), never truncated in place: the test must not race the
        // leader's read of a file half written by the test itself.
        let cut = pack.with_extension("cut");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write the cut pack");
        std::fs::rename(&cut, &pack).expect("put the cut pack in place");

        // Nothing more is written: only a new pack of the leader's state can bring it back.
        cluster.restart(lagging);
        cluster.wait_caught_up(&client, lagging).await;
        assert!(cluster.is_running(lagging) && cluster.is_running(leader));
        let leader_log = cluster.log(leader);
        assert!(
            leader_log.contains("the newest snapshot pack is damaged"),
            "the leader did not find the damage:\n{leader_log}"
        );
        let status = client.node_status(&cluster.addr(lagging)).await.expect("status");
        assert!(
            status.snapshot_index.unwrap_or(0) > 100,
            "caught up through a snapshot: {status:?}"
        );
        assert_all_readable(&client, &acknowledged).await;
    });
}

/// SIGTERM stops a node although clients hold a watch, a subscription and a long-poll open on it
/// (calls that would wait on): they end at the stop with UNAVAILABLE, so their clients go on
/// from another node at once, and the client door's drain does not wait for its bound.
#[test]
fn a_node_stops_on_sigterm_ending_its_watches_subscriptions_and_long_polls() {
    let mut cluster = TestCluster::start(
        NODE,
        ClusterOptions {
            nodes: 1,
            ..Default::default()
        },
    );
    let rt = runtime();
    let (watch, mut subscription, receive) = rt.block_on(async {
        let client = cluster.client().await;
        client.kv().put("k", "v").await.expect("put");
        let watch = client.kv().watch("k", 0).await.expect("watch");
        let subscription = client
            .pubsub()
            .subscribe(vec![b"ch".to_vec()], Vec::new())
            .await
            .expect("subscribe");
        client
            .queue("jobs")
            .create(basalt_client::QueueOptions::default())
            .await
            .expect("create the queue");
        // A receive waiting 50 s for a message that never comes, open as the node stops.
        let receive = tokio::spawn(async move {
            let options = basalt_client::ReceiveOptions {
                wait: Duration::from_secs(50),
                ..Default::default()
            };
            client.queue("jobs").receive(1, options).await
        });
        (watch, subscription, receive)
    });
    // The receive is waiting on the node before it is told to stop.
    std::thread::sleep(Duration::from_millis(300));
    cluster.terminate(1);
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), subscription.next()).await });
    match ended {
        Ok(Some(Err(basalt_client::ClientError::Unavailable { last_error, .. }))) => {
            assert!(last_error.contains("stopping"), "{last_error}")
        }
        other => panic!(
            "the subscription was not ended by the stop: {other:?}\n{}",
            cluster.logs()
        ),
    }
    let status = cluster.wait_exit(1, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the node did not stop cleanly ({status:?}):\n{}",
        cluster.logs()
    );
    let log = cluster.log(1);
    assert!(
        !log.contains("client calls still open"),
        "the drain waited for its bound:\n{log}"
    );
    // (The SDK retries the receive until its own deadline, its wait included: no other node.)
    receive.abort();
    drop(watch);
}

/// A receive retried after its answer was lost (a failover, a node's stop) gets that answer back
/// at once: the messages it delivered are invisible, so a retry that first waited for visible
/// ones held them from their receiver until its wait ran out (here 20 s).
#[test]
fn a_retried_receive_gets_its_lost_answer_back_without_waiting() {
    use basalt_client::pb::queue_client::QueueClient;
    use basalt_client::pb::ReceiveRequest;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let jobs = client.queue("jobs");
        jobs.create(basalt_client::QueueOptions::default())
            .await
            .expect("create the queue");
        let id = jobs.enqueue("job-1").await.expect("enqueue");
        let request = |wait_ms| ReceiveRequest {
            header: Some(RequestHeader {
                client_id: 44u128.to_be_bytes().to_vec(),
                seq: 1,
                first_incomplete_seq: 1,
                fence: None,
            }),
            queue: b"jobs".to_vec(),
            max: 1,
            visibility_timeout_ms: 60_000,
            wait_ms,
        };
        // The first attempt, whose answer the test treats as lost; a NOT_LEADER refusal
        // (leadership moving in a young cluster) is sent again, as the SDK does.
        let (channel, first) = call_the_leader(&cluster, &client, |channel| async move {
            QueueClient::new(channel)
                .receive(request(0))
                .await
                .map(|r| r.into_inner().messages)
        })
        .await;
        let mut raw = QueueClient::new(channel);
        assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
        let started = Instant::now();
        let retry = raw.receive(request(20_000)).await.expect("retry").into_inner().messages;
        let took = started.elapsed();
        assert_eq!(retry, first, "the retry gets the first attempt's answer");
        assert!(
            took < Duration::from_secs(10),
            "the retry waited {took:?} for new messages before answering"
        );
    });
}

/// A long-poll whose node stops late in its wait goes on at another node for what is left of
/// the wait, and ends as its caller asked: an empty answer when the wait runs out. Each retry
/// used to ask for the whole wait again while the call's deadline counted from the first
/// attempt, so the retry outlived the deadline and the call ended as `Unavailable` (outcome
/// unknown). The request timeout is shorter than the wait, as with a long wait on a client's
/// default timeout.
#[test]
fn a_long_poll_moved_by_a_stop_waits_only_what_is_left_of_its_wait() {
    let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
    let rt = runtime();
    let wait = Duration::from_secs(8);
    let (leader, receive, fetch, acquire, client) = rt.block_on(async {
        let client = cluster.client().await;
        client
            .queue("jobs")
            .create(basalt_client::QueueOptions::default())
            .await
            .expect("create the queue");
        let topic = basalt_client::TopicOptions {
            partitions: 1,
            ..Default::default()
        };
        client
            .streams()
            .create_topic("events", topic)
            .await
            .expect("create the topic");
        // A lease held by another for longer than the test: an acquire waits for it in vain.
        let held = client
            .lease("lock")
            .acquire("other", Duration::from_secs(120))
            .await
            .expect("acquire");
        assert!(matches!(held, basalt_client::Acquired::Granted(_)), "{held:?}");
        let leader = cluster.leader(&client).await;
        for id in (1..=3).filter(|&id| id != leader) {
            cluster.wait_caught_up(&client, id).await;
        }
        let options = ClientOptions {
            request_timeout: Duration::from_secs(3),
            ..cluster.client_options()
        };
        let waiting = Client::connect_with(cluster.endpoints(), options)
            .await
            .expect("connect");
        let receiver = waiting.clone();
        let acquirer = waiting.clone();
        let acquire = tokio::spawn(async move {
            let started = Instant::now();
            let lock = acquirer.lease("lock");
            (
                lock.acquire_waiting("me", Duration::from_secs(10), wait).await,
                started.elapsed(),
            )
        });
        let receive = tokio::spawn(async move {
            let started = Instant::now();
            let options = basalt_client::ReceiveOptions {
                wait,
                ..Default::default()
            };
            (receiver.queue("jobs").receive(1, options).await, started.elapsed())
        });
        let fetch = tokio::spawn(async move {
            let started = Instant::now();
            let options = basalt_client::FetchOptions {
                wait,
                ..Default::default()
            };
            (
                waiting.streams().fetch("events", 0, 0, options).await,
                started.elapsed(),
            )
        });
        (leader, receive, fetch, acquire, client)
    });
    // Half way through the wait (both calls wait on the leader), the leader stops; had the
    // leadership moved meanwhile, the calls would wait elsewhere and test nothing.
    std::thread::sleep(wait / 2);
    assert_eq!(rt.block_on(cluster.leader(&client)), leader, "the leadership moved");
    cluster.terminate(leader);
    let (received, fetched, acquired) = rt.block_on(async {
        (
            receive.await.expect("the receive's task"),
            fetch.await.expect("the fetch's task"),
            acquire.await.expect("the acquire's task"),
        )
    });
    let logs = cluster.logs();
    match received {
        (Ok(messages), took) => {
            assert!(messages.is_empty(), "{messages:?}");
            assert!(
                took >= wait - Duration::from_millis(500),
                "the receive ended early: {took:?}"
            );
        }
        (Err(e), took) => panic!("the receive failed after {took:?}: {e:?}\n{logs}"),
    }
    match fetched {
        (Ok(fetched), took) => {
            assert!(fetched.records.is_empty(), "{fetched:?}");
            assert!(
                took >= wait - Duration::from_millis(500),
                "the fetch ended early: {took:?}"
            );
        }
        (Err(e), took) => panic!("the fetch failed after {took:?}: {e:?}\n{logs}"),
    }
    match acquired {
        (Ok(basalt_client::Acquired::Held { holder, .. }), took) => {
            assert_eq!(holder, b"other".to_vec());
            assert!(
                took >= wait - Duration::from_millis(500),
                "the acquire ended early: {took:?}"
            );
        }
        (other, took) => panic!("the acquire answered {other:?} after {took:?}\n{logs}"),
    }
    let status = cluster.wait_exit(leader, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{logs}");
}

/// A leader stopped by SIGTERM hands its leadership over before Raft stops: by the time its
/// process has exited another node already leads, although the election timeout is far longer
/// than the stop. Without the handoff the others would learn of the stop only by missing its
/// heartbeats, and elect a leader an election timeout (here 8 to 9 s) after its exit.
#[test]
fn a_stopping_leader_hands_its_leadership_over() {
    a_stopping_leader_hands_over(true);
}

/// The same with Raft on the client ports (no peer listeners): the stopping leader's client port,
/// which carries its Raft, stays open until its handoff is over.
#[test]
fn a_stopping_leader_without_a_peer_listener_hands_its_leadership_over() {
    a_stopping_leader_hands_over(false);
}

fn a_stopping_leader_hands_over(peer_listeners: bool) {
    let mut cluster = TestCluster::plan(
        NODE,
        ClusterOptions {
            extra_args: vec![
                "--election-timeout-min-ms".into(),
                "8000".into(),
                "--election-timeout-max-ms".into(),
                "9000".into(),
            ],
            ..ClusterOptions::default()
        },
    );
    cluster.set_peer_listeners(peer_listeners);
    cluster.launch();
    let rt = runtime();
    let (client, leader) = rt.block_on(async {
        let client = cluster.client().await;
        client.kv().put("before", "1").await.expect("put before the stop");
        let leader = cluster.leader(&client).await;
        for id in 1..=3 {
            if id != leader {
                cluster.wait_caught_up(&client, id).await;
            }
        }
        (client, leader)
    });
    cluster.terminate(leader);
    let status = cluster.wait_exit(leader, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the leader did not stop cleanly ({status:?}):\n{}",
        cluster.logs()
    );
    rt.block_on(async {
        // One look, no waiting: the others' election timers have barely started.
        let mut leaders = Vec::new();
        for id in (1..=3).filter(|&id| id != leader) {
            let status = client.node_status(&cluster.addr(id)).await.expect("status");
            if status.state == "Leader" {
                leaders.push(id);
            }
        }
        assert_eq!(
            leaders.len(),
            1,
            "a new leader as the old one exits (old leader {leader}):\n{}",
            cluster.logs()
        );
        assert!(
            cluster.log(leader).contains("handed leadership over before stopping"),
            "the old leader saw the new one lead:\n{}",
            cluster.logs()
        );
        // It serves writes, and what was written before is there.
        client.kv().put("after", "2").await.expect("put after the handoff");
        let before = client.kv().get("before").await.expect("get").expect("present");
        assert_eq!(before.value, b"1");
    });
}

/// Every node of a region stopped at once (`basalt dev` on Ctrl-C, a scale-down): the handoffs
/// find no node that stays, and every node still stops cleanly, its leadership passed on (or
/// not) within its bounds.
#[test]
fn every_node_stopped_at_once_stops_cleanly() {
    let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
    let rt = runtime();
    rt.block_on(async {
        let client = cluster.client().await;
        client.kv().put("k", "v").await.expect("put");
    });
    for id in 1..=3 {
        cluster.terminate(id);
    }
    for id in 1..=3 {
        // NODE_STOP_MAX (20 s) and the exit, with room for a loaded machine.
        let status = cluster.wait_exit(id, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} did not stop cleanly ({status:?}):\n{}",
            cluster.logs()
        );
    }
}

/// A measurement, not a check of speed: one SDK client writes without pause while the leader is
/// stopped by SIGTERM, and the longest gap between two acknowledged writes is printed (the
/// figures in docs/performance.md). What it checks: writes go on through the stop, and the old
/// leader exits cleanly.
#[test]
#[ignore = "a measurement printed on stderr; run: cargo nextest run -p basalt-tests --test cluster --run-ignored only --no-capture leader_stop_write_gap"]
fn leader_stop_write_gap() {
    for round in 1..=5 {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let rt = runtime();
        let (client, leader) = rt.block_on(async {
            let client = cluster.client().await;
            client.kv().put("before", "1").await.expect("put before the stop");
            let leader = cluster.leader(&client).await;
            for id in (1..=3).filter(|&id| id != leader) {
                cluster.wait_caught_up(&client, id).await;
            }
            (client, leader)
        });
        let stopped_at = Instant::now();
        cluster.terminate(leader);
        let (longest_gap, acknowledged) = rt.block_on(async {
            let mut last_acknowledged = Instant::now();
            let mut longest_gap = Duration::ZERO;
            let mut acknowledged = 0u64;
            while stopped_at.elapsed() < Duration::from_secs(3) {
                if client.kv().put(format!("k{acknowledged}"), "v").await.is_ok() {
                    longest_gap = longest_gap.max(last_acknowledged.elapsed());
                    last_acknowledged = Instant::now();
                    acknowledged += 1;
                }
            }
            (longest_gap, acknowledged)
        });
        let status = cluster.wait_exit(leader, Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", cluster.logs());
        rt.block_on(client.kv().put("after", "v"))
            .expect("a write after the old leader exited");
        eprintln!(
            "round {round}: longest gap between acknowledged writes {longest_gap:?} ({acknowledged} writes in 3 s)"
        );
    }
}
