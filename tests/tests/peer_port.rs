//! The peer listener and the cluster id (issue 22, part 1), on real node processes: Raft is
//! served on the peer port only, every member holds the id fixed when the cluster was
//! bootstrapped, and a node of another cluster is refused on both sides.

use std::time::{Duration, Instant};

use basalt_raft::pb::raft_service_client::RaftServiceClient;
use basalt_raft::pb::RaftMessage;
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// Every running node's cluster id, as its status reports it.
async fn cluster_ids(cluster: &TestCluster, client: &basalt_client::Client, ids: &[u64]) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        // A member may serve Raft on its peer port before its client port listens.
        cluster.wait_listening(*id);
        let status = client.node_status(&cluster.addr(*id)).await.expect("status");
        found.push(status.cluster_id);
    }
    found
}

/// A vote request of no data format, straight to `addr`'s Raft service: the code it is refused
/// with says whether the port serves Raft at all.
async fn knock(addr: &str) -> tonic::Code {
    let mut client = RaftServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let refusal = client
        .vote(RaftMessage {
            data: vec![0xff; 8],
            sender_wall_ms: 0,
        })
        .await
        .expect_err("a vote of no data format is refused");
    refusal.code()
}

#[test]
fn raft_is_served_on_the_peer_port_only_and_every_member_keeps_the_cluster_s_id() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        client.kv().put("k", "v").await.expect("put");

        // The client port has no Raft service; the peer port has one (and refuses this vote for
        // naming no data format, before decoding it).
        assert_eq!(knock(&cluster.addr(1)).await, tonic::Code::Unimplemented);
        let peer = cluster.specs[&1].peer.clone();
        assert_eq!(knock(&peer).await, tonic::Code::FailedPrecondition);

        // Node 1 made the id when it bootstrapped the cluster; nodes 2 and 3 took it from their
        // first Raft message.
        let ids = cluster_ids(&cluster, &client, &[1, 2, 3]).await;
        let id = ids[0].clone();
        assert_eq!(id.len(), 32, "{ids:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(ids.iter().all(|other| *other == id), "{ids:?}");
        let status = client.cluster_status().await.expect("status");
        for member in &status.members {
            assert_eq!(member.peer_addr, cluster.specs[&member.id].peer, "{member:?}");
            assert_eq!(member.addr, cluster.specs[&member.id].addr, "{member:?}");
        }

        // A node added later takes the id too, and is reached on its peer port.
        let (addr, peer) = cluster.spawn_new_node(4);
        client.add_member(4, &addr, Some(&peer)).await.expect("add a learner");
        assert_eq!(cluster_ids(&cluster, &client, &[4]).await[0], id);

        // The id is kept: node 3 restarted with another --cluster-id refuses to start, naming
        // both; with its own it starts and serves.
        cluster.kill(3);
        let other = if id.starts_with('0') { "1" } else { "0" }.repeat(32);
        cluster.replace_args(vec!["--cluster-id".into(), other.clone()]);
        cluster.restart(3);
        let exit = cluster.wait_exit(3, Duration::from_secs(20));
        assert!(
            exit.is_some_and(|status| !status.success()),
            "{exit:?}\n{}",
            cluster.logs()
        );
        let log = std::fs::read_to_string(&cluster.specs[&3].log).expect("node 3's log");
        assert!(
            log.contains(&format!(
                "belongs to cluster {id}, but --cluster-id names cluster {other}"
            )),
            "{}",
            cluster.logs()
        );
        cluster.replace_args(vec!["--cluster-id".into(), id.clone()]);
        cluster.restart(3);
        cluster.wait_listening(3);
        assert_eq!(cluster_ids(&cluster, &client, &[3]).await, [id]);
        client.kv().put("k", "v2").await.expect("put after the restart");
    });
}

#[test]
fn a_node_of_another_cluster_is_refused_on_both_sides_and_disturbs_nothing() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        client.kv().put("k", "v").await.expect("put");
        let leader = cluster.leader(&client).await;
        let target = (1..=3).find(|id| *id != leader).expect("a follower");
        let term_before = client.cluster_status().await.expect("status").term;

        // Another cluster whose --peers list names a node of this one as its member 2 (a copied
        // config, a reused address): its node 1 bootstraps and asks that node for votes.
        let mut stranger = TestCluster::plan(
            NODE,
            ClusterOptions {
                nodes: 2,
                ..Default::default()
            },
        );
        let (target_client, target_peer) = (cluster.addr(target), cluster.specs[&target].peer.clone());
        stranger.set_member(2, &target_client, &target_peer);
        stranger.launch_node(1, true);
        stranger.wait_listening(1);

        let deadline = Instant::now() + Duration::from_secs(20);
        let refused = |c: &TestCluster, id| c.metric(id, "basalt_raft_cluster_refusals_total");
        loop {
            let (received, replied) = if stranger.is_running(1) {
                (refused(&cluster, target), refused(&stranger, 1))
            } else {
                panic!("the stranger stopped\n{}", stranger.logs())
            };
            if received > 0 && replied > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no refusal on both sides ({received}, {replied})\n{}\n{}",
                cluster.logs(),
                stranger.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let target_log = std::fs::read_to_string(&cluster.specs[&target].log).expect("log");
        assert!(
            target_log.contains("refusing raft messages from a node of another cluster"),
            "{target_log}"
        );
        let stranger_log = std::fs::read_to_string(&stranger.specs[&1].log).expect("log");
        assert!(
            stranger_log.contains("a peer refuses this node's raft messages"),
            "{stranger_log}"
        );

        // This cluster goes on as it was; the stranger has no leader (its member 2 never voted).
        client.kv().put("k", "v2").await.expect("put while the stranger knocks");
        let status = client.cluster_status().await.expect("status");
        assert_eq!(status.term, term_before, "the stranger moved this cluster's term");
        assert_eq!(status.members.len(), 3);
        let stranger_status = client
            .node_status(&stranger.addr(1))
            .await
            .expect("the stranger's status");
        assert_eq!(stranger_status.leader_id, None, "{stranger_status:?}");
        assert_ne!(stranger_status.cluster_id, status.cluster_id);
    });
}
