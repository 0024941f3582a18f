//! Client authentication and permissions against real node processes: the gRPC door (SDK and
//! CLI), RESP and the HTTP purge endpoint enforce one set of users and roles.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use basalt_client::{Client, ClientError, ClientOptions, ErrorCode, Grant, Token};
use basalt_testkit::{run_cli, runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// A CA and one certificate for every node (127.0.0.1): authentication needs mutual TLS
/// between the nodes.
fn peer_tls(cluster: &mut TestCluster) {
    let dir = cluster.dir.path().join("tls");
    basalt_cli::certs::make_ca(&dir).expect("CA");
    let flags = basalt_cli::certs::node_flags(&dir, "node", &["127.0.0.1".to_string()]).expect("node certificate");
    cluster.push_args(flags);
}

fn grants(texts: &[&str]) -> Vec<Grant> {
    texts.iter().map(|t| Grant::parse(t).expect("grant")).collect()
}

async fn client_with(cluster: &TestCluster, token: Option<&Token>) -> Result<Client, ClientError> {
    let options = ClientOptions {
        token: token.cloned(),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::connect_with(cluster.endpoints(), options).await
}

fn code<T>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Ok(_) => panic!("expected a refusal, got an answer"),
        Err(e) => e.code(),
    }
}

/// One HTTP request on a fresh connection; the status code and body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, reply)
}

fn purge(addr: &str, token: Option<&Token>) -> (u16, String) {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {}\r\n", t.as_str()));
    http(
        addr,
        &format!("DELETE /cache?prefix=/a/&wait_ms=500 HTTP/1.1\r\nHost: node\r\n{auth}Connection: close\r\n\r\n"),
    )
}

/// A raw RESP exchange: one command, its reply as text.
fn resp_call(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).expect("write");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn resp_open(addr: std::net::SocketAddr) -> TcpStream {
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(addr) {
            stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            return stream;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no RESP listener on {addr}");
}

#[test]
fn tenants_reach_only_their_own_names_at_every_door() {
    let rt = runtime();
    let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
    cluster.enable_resp();
    peer_tls(&mut cluster);
    let root_token = cluster.enable_auth();
    cluster.launch();
    rt.block_on(async {
        let root = cluster.client().await;
        let auth = root.auth();
        auth.put_role(
            "tenant-a",
            &grants(&[
                "write:key:a/",
                "admin:queue:a-",
                "write:topic:a.",
                "read:group:a.",
                "write:channel:a.",
            ]),
        )
        .await
        .expect("role a");
        auth.put_role("tenant-b", &grants(&["write:key:b/", "admin:queue:b-"]))
            .await
            .expect("role b");
        auth.put_user("alice", &["tenant-a"]).await.expect("alice");
        auth.put_user("bob", &["tenant-b"]).await.expect("bob");
        let alice_token = auth.add_token("alice").await.expect("alice's token");
        let bob_token = auth.add_token("bob").await.expect("bob's token");
        root.kv().put("b/secret", "bob's").await.expect("root writes anywhere");

        // No token, or one the cluster does not know: refused before anything is served.
        assert_eq!(
            code(client_with(&cluster, None).await),
            Some(ErrorCode::Unauthenticated)
        );
        let stranger = Token::generate();
        assert_eq!(
            code(client_with(&cluster, Some(&stranger)).await),
            Some(ErrorCode::Unauthenticated)
        );

        let alice = client_with(&cluster, Some(&alice_token)).await.expect("alice connects");
        let me = alice.auth().who_am_i().await.expect("who am I");
        assert_eq!((me.enabled, me.user.as_str(), me.root), (true, "alice", false));
        alice.kv().put("a/1", "mine").await.expect("alice writes her prefix");
        // Tenant B's prefix, queue and topic: neither read nor written, and nothing changes.
        let denied = alice.kv().put("b/secret", "overwritten").await.expect_err("b/");
        assert_eq!(denied.code(), Some(ErrorCode::PermissionDenied));
        assert!(
            denied.to_string().contains(r#"lacks write on key "b/secret""#),
            "{denied}"
        );
        assert_eq!(
            code(alice.kv().get("b/secret").await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            root.kv().get("b/secret").await.expect("read").map(|e| e.value),
            Some(b"bob's".to_vec())
        );
        alice
            .queue("a-jobs")
            .create(Default::default())
            .await
            .expect("alice's queue");
        alice.queue("a-jobs").enqueue("job").await.expect("enqueue");
        assert_eq!(
            code(alice.queue("b-jobs").create(Default::default()).await),
            Some(ErrorCode::PermissionDenied)
        );
        let bob = client_with(&cluster, Some(&bob_token)).await.expect("bob connects");
        bob.queue("b-jobs")
            .create(Default::default())
            .await
            .expect("bob's queue");
        assert_eq!(
            code(alice.queue("b-jobs").enqueue("job").await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(bob.queue("a-jobs").receive(1, Default::default()).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(alice.streams().create_topic("b.events", Default::default()).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(alice.pubsub().publish("b.news", "hi").await),
            Some(ErrorCode::PermissionDenied)
        );
        alice.pubsub().publish("a.news", "hi").await.expect("her channel");
        // A transaction is refused whole when one op is outside the grants.
        let txn = alice
            .txn()
            .then(basalt_client::TxnOp::put("a/2", "x"))
            .then(basalt_client::TxnOp::put("b/2", "x"))
            .commit()
            .await;
        assert_eq!(code(txn), Some(ErrorCode::PermissionDenied));
        assert_eq!(root.kv().get("a/2").await.expect("read"), None);
        // Admin verbs need admin on the cluster.
        assert_eq!(
            code(alice.add_member(9, "127.0.0.1:1", None).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            code(alice.auth().put_user("mallory", &["tenant-b"]).await),
            Some(ErrorCode::PermissionDenied)
        );

        // The CLI: the token from BASALT_TOKEN's flag, refusals typed.
        let endpoints = cluster.endpoints();
        let run = run_cli(
            NODE,
            &endpoints,
            &["kv", "get", "a/1", "--token", alice_token.as_str()],
            None,
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        let run = run_cli(
            NODE,
            &endpoints,
            &["kv", "get", "b/secret", "--token", alice_token.as_str()],
            None,
        )
        .await;
        assert_ne!(run.code, Some(0));
        assert!(run.stderr.contains("PERMISSION_DENIED"), "{run:?}");
        let run = run_cli(
            NODE,
            &endpoints,
            &["auth", "whoami", "--token", root_token.as_str()],
            None,
        )
        .await;
        assert!(run.stdout.contains("root"), "{run:?}");

        // RESP: AUTH with a token; the same grants.
        let resp = cluster.resp(1);
        let mut redis = resp_open(resp);
        assert!(resp_call(&mut redis, &["GET", "a/1"]).starts_with("-NOAUTH"));
        assert!(resp_call(&mut redis, &["AUTH", stranger.as_str()]).starts_with("-WRONGPASS"));
        assert!(resp_call(&mut redis, &["AUTH", "bob", alice_token.as_str()]).starts_with("-WRONGPASS"));
        assert_eq!(
            resp_call(&mut redis, &["AUTH", "alice", alice_token.as_str()]),
            "+OK\r\n"
        );
        assert_eq!(resp_call(&mut redis, &["GET", "a/1"]), "$4\r\nmine\r\n");
        assert_eq!(resp_call(&mut redis, &["SET", "a/3", "v"]), "+OK\r\n");
        let refused = resp_call(&mut redis, &["SET", "b/secret", "v"]);
        assert!(
            refused.starts_with("-") && refused.contains("PERMISSION_DENIED"),
            "{refused}"
        );
        let refused = resp_call(&mut redis, &["GET", "b/secret"]);
        assert!(refused.contains("PERMISSION_DENIED"), "{refused}");
        assert_eq!(
            root.kv().get("b/secret").await.expect("read").map(|e| e.value),
            Some(b"bob's".to_vec())
        );
        // HELLO 3 AUTH: the same token, RESP3, on another node.
        let mut hello = resp_open(cluster.resp(2));
        let greeting = resp_call(&mut hello, &["HELLO", "3", "AUTH", "bob", bob_token.as_str()]);
        assert!(greeting.starts_with('%'), "{greeting}");
        assert_eq!(resp_call(&mut hello, &["SET", "b/2", "v"]), "+OK\r\n");
        assert!(resp_call(&mut hello, &["GET", "a/1"]).contains("PERMISSION_DENIED"));

        // HTTP purges: a bearer token with admin on the cache.
        let http_addr = cluster.specs[&1].http.clone();
        let (status, body) = purge(&http_addr, None);
        assert_eq!(status, 401, "{body}");
        let (status, body) = purge(&http_addr, Some(&alice_token));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("PERMISSION_DENIED"), "{body}");
        let (status, body) = purge(&http_addr, Some(&root_token));
        assert!(status == 200 || status == 202, "{body}");

        // Streams opened before a revocation end with it.
        let mut watch = alice.kv().watch("a/", 0).await.expect("alice watches her prefix");
        let mut news = alice
            .pubsub()
            .subscribe(vec![b"a.news".to_vec()], Vec::new())
            .await
            .expect("alice subscribes");
        assert_eq!(code(alice.kv().watch("b/", 0).await), Some(ErrorCode::PermissionDenied));

        // Revoked: the token stops working (on the leader at once; every node once applied).
        let listed = root.auth().list().await.expect("list");
        let alice_entry = listed.1.iter().find(|u| u.name == "alice").expect("alice listed");
        assert_eq!(alice_entry.token_ids.len(), 1);
        root.auth()
            .remove_token("alice", &alice_entry.token_ids[0])
            .await
            .expect("revoke");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match alice.kv().get("a/1").await {
                Err(e) if e.code() == Some(ErrorCode::Unauthenticated) => break,
                other => assert!(Instant::now() < deadline, "still served after revocation: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ended = |item: Option<Result<(), ClientError>>| match item {
            Some(Err(e)) => e.code(),
            other => panic!("the stream went on after the revocation: {other:?}"),
        };
        let watched = loop {
            match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
                // Events from before the revocation may come first.
                Ok(Some(Ok(_))) => continue,
                Ok(item) => break ended(item.map(|r| r.map(|_| ()))),
                Err(_) => panic!("the watch neither ended nor delivered within 10 s of the revocation"),
            }
        };
        assert_eq!(watched, Some(ErrorCode::Unauthenticated));
        let heard = loop {
            match tokio::time::timeout(Duration::from_secs(10), news.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(item) => break ended(item.map(|r| r.map(|_| ()))),
                Err(_) => panic!("the subscription neither ended nor delivered within 10 s of the revocation"),
            }
        };
        assert_eq!(heard, Some(ErrorCode::Unauthenticated));
        assert!(
            cluster.metric(1, "basalt_auth_denied_total")
                + cluster.metric(2, "basalt_auth_denied_total")
                + cluster.metric(3, "basalt_auth_denied_total")
                > 0
        );
        assert!(cluster.metric(1, "basalt_auth_unauthenticated_total") > 0);
    });
}

#[test]
fn users_and_roles_survive_restarts_and_a_node_without_a_peer_listener_is_refused() {
    let rt = runtime();
    let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
    peer_tls(&mut cluster);
    cluster.enable_auth();
    cluster.launch();
    rt.block_on(async {
        let root = cluster.client().await;
        root.auth()
            .put_role("reader", &grants(&["read:key:"]))
            .await
            .expect("role");
        root.auth().put_user("carol", &["reader"]).await.expect("user");
        let carol_token = root.auth().add_token("carol").await.expect("token");
        root.kv().put("k", "v").await.expect("put");
        for id in 1..=3 {
            cluster.kill(id);
        }
        for id in 1..=3 {
            cluster.restart(id);
        }
        let carol = loop {
            match client_with(&cluster, Some(&carol_token)).await {
                Ok(c) => break c,
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("carol after the restart: {e}"),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match carol.kv().get("k").await {
                Ok(entry) => {
                    assert_eq!(entry.map(|e| e.value), Some(b"v".to_vec()));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "carol after the restart: {e}"),
            }
        }
        assert_eq!(code(carol.kv().put("k", "w").await), Some(ErrorCode::PermissionDenied));
    });
    // Authentication without a peer listener would leave Raft on the client port, tokenless.
    cluster.kill(1);
    let mut lone = TestCluster::plan(NODE, ClusterOptions::default());
    lone.set_peer_listeners(false);
    lone.enable_auth();
    lone.launch_node(1, true);
    let status = lone.wait_exit(1, Duration::from_secs(20)).expect("refused to start");
    assert!(!status.success());
    assert!(lone.logs().contains("peer listener"), "{}", lone.logs());
}
