//! TLS on the client doors (client gRPC, RESP, HTTP) against real node processes: clients that
//! do not speak TLS, trust another CA, or show a certificate not of the client CA are refused; a
//! certificate of the client CA names the user it authenticates as; files replaced on disk are served
//! without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_client::{Client, ClientError, ClientOptions, ClientTls, ErrorCode, Grant, TlsConnector, Token};
use basalt_testkit::{run_cli, runtime, ClusterOptions, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    TlsConnector::Client(ClientTls::from_files(ca, identity).expect("client TLS"))
}

fn client_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    basalt_cli::certs::make_client(dir, name).expect("client certificate")
}

async fn connect(
    cluster: &TestCluster,
    tls: Option<TlsConnector>,
    token: Option<&Token>,
) -> Result<Client, ClientError> {
    let options = ClientOptions {
        token: token.cloned(),
        tls,
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    Client::connect_with(cluster.endpoints(), options).await
}

/// One exchange over a TLS connection to `addr` with `client`: `request` sent, everything
/// answered until the server closes or goes quiet for a second.
async fn exchange(client: &ClientTls, addr: &str, request: &[u8]) -> std::io::Result<String> {
    let mut stream = client.connect(addr, Duration::from_secs(5)).await?;
    stream.write_all(request).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// What a plaintext client gets from a TLS door: never a protocol answer.
async fn plaintext(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    reply
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    request.into_bytes()
}

#[test]
fn every_client_door_speaks_tls_and_a_client_certificate_names_its_user() {
    let rt = runtime();
    let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
    cluster.enable_resp();
    let dir = cluster.dir.path().join("tls");
    basalt_cli::certs::make_ca(&dir).expect("CA");
    basalt_cli::certs::make_client_ca(&dir).expect("client CA");
    let mut flags = basalt_cli::certs::node_flags(&dir, "node", &["127.0.0.1".to_string()]).expect("node certificate");
    flags.extend(basalt_cli::certs::client_door_flags(&dir, "node"));
    cluster.push_args(flags);
    let root_token = cluster.enable_auth();
    let ca = dir.join(basalt_cli::certs::CA_CERT_FILE);
    cluster.set_client_tls(tls(&ca, None));
    cluster.launch();
    let other = tempfile::tempdir().expect("tempdir");
    basalt_cli::certs::make_ca(other.path()).expect("another CA");
    basalt_cli::certs::make_client_ca(other.path()).expect("another client CA");
    let other_ca = other.path().join(basalt_cli::certs::CA_CERT_FILE);
    rt.block_on(async {
        let root = cluster.client().await;
        root.kv().put("a/1", "one").await.expect("root writes over TLS");

        // Plaintext, a client that trusts another CA, and a certificate of another CA: no call
        // is served.
        assert!(connect(&cluster, None, Some(&root_token)).await.is_err(), "plaintext");
        assert!(
            connect(&cluster, Some(tls(&other_ca, None)), Some(&root_token))
                .await
                .is_err(),
            "the nodes' certificates are not of the CA the client trusts"
        );
        let (cert, key) = client_cert(other.path(), "alice");
        assert!(
            connect(&cluster, Some(tls(&ca, Some((&cert, &key)))), Some(&root_token))
                .await
                .is_err(),
            "a client certificate of another CA"
        );

        // A certificate of the client CA names a user: it authenticates as that user, no token
        // needed.
        let auth = root.auth();
        auth.put_role("tenant-a", &[Grant::parse("write:key:a/").expect("grant")])
            .await
            .expect("role");
        auth.put_user("alice", &["tenant-a"]).await.expect("alice");
        let (cert, key) = client_cert(&dir, "alice");
        let alice = connect(&cluster, Some(tls(&ca, Some((&cert, &key)))), None)
            .await
            .expect("alice by her certificate");
        assert_eq!(alice.auth().who_am_i().await.expect("whoami").user, "alice");
        alice.kv().put("a/2", "two").await.expect("her own prefix");
        let refused = alice.kv().put("b/1", "x").await.expect_err("not her prefix");
        assert_eq!(refused.code(), Some(ErrorCode::PermissionDenied), "{refused}");
        // A token, when sent, decides over the certificate.
        let as_root = connect(&cluster, Some(tls(&ca, Some((&cert, &key)))), Some(&root_token))
            .await
            .expect("root");
        as_root.kv().put("b/1", "x").await.expect("the token's identity");
        // A node's certificate (of the nodes' CA, not the client CA) is no client's.
        let node = (dir.join("node.pem"), dir.join("node-key.pem"));
        assert!(
            connect(&cluster, Some(tls(&ca, Some((&node.0, &node.1)))), None)
                .await
                .is_err(),
            "a node's certificate as a client's"
        );
        // A certificate naming no user is refused as unknown credentials.
        let (cert, key) = client_cert(&dir, "carol");
        let refused = connect(&cluster, Some(tls(&ca, Some((&cert, &key)))), None)
            .await
            .err()
            .expect("carol is no user");
        assert_eq!(refused.code(), Some(ErrorCode::Unauthenticated), "{refused}");

        // RESP over TLS (no ALPN, as redis-cli --tls connects), plaintext refused.
        let resp = cluster.resp(1).to_string();
        let resp_tls = ClientTls::from_files(&ca, None).expect("RESP TLS").with_alpn(&[]);
        let mut request = resp_command(&["AUTH", root_token.as_str()]);
        request.extend(resp_command(&["GET", "a/1"]));
        let reply = exchange(&resp_tls, &resp, &request).await.expect("RESP over TLS");
        assert!(reply.starts_with("+OK\r\n$3\r\none\r\n"), "{reply:?}");
        let reply = plaintext(&resp, &resp_command(&["PING"])).await;
        assert!(!String::from_utf8_lossy(&reply).contains("PONG"), "{reply:?}");
        // A client certificate authenticates a RESP connection too, no AUTH: alice's commands
        // run with her grants; carol's certificate names no user, so AUTH is still needed.
        let alice_files = (dir.join("alice.pem"), dir.join("alice-key.pem"));
        let alice_resp = ClientTls::from_files(&ca, Some((alice_files.0.as_path(), alice_files.1.as_path())))
            .expect("RESP TLS with alice's certificate")
            .with_alpn(&[]);
        let mut request = resp_command(&["GET", "a/1"]);
        request.extend(resp_command(&["SET", "b/9", "x"]));
        let reply = exchange(&alice_resp, &resp, &request).await.expect("RESP as alice");
        assert!(reply.starts_with("$3\r\none\r\n-ERR PERMISSION_DENIED"), "{reply:?}");
        let carol_resp = ClientTls::from_files(&ca, Some((cert.as_path(), key.as_path())))
            .expect("RESP TLS with carol's certificate")
            .with_alpn(&[]);
        let reply = exchange(&carol_resp, &resp, &resp_command(&["GET", "a/1"]))
            .await
            .expect("RESP as carol");
        assert!(reply.starts_with("-NOAUTH"), "{reply:?}");

        // HTTP over TLS, by a client offering HTTP/1.1 (as curl does, with h2 too).
        let http = cluster.specs[&1].http.clone();
        let http_tls = ClientTls::from_files(&ca, None)
            .expect("HTTP TLS")
            .with_alpn(&[b"h2", b"http/1.1"]);
        let reply = exchange(
            &http_tls,
            &http,
            b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("HTTP over TLS");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
        let reply = plaintext(&http, b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n").await;
        assert!(!reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");

        // The HTTP purge endpoint takes a client certificate as the gRPC door does: alice's
        // names her (outside her grants: 403, not 401), and once a role lets her purge under
        // /a/, her purge is done; with neither a token nor a certificate, 401.
        let purge = b"DELETE /cache?prefix=%2Fa%2F&wait_ms=500 HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";
        let (alice_cert, alice_key) = (dir.join("alice.pem"), dir.join("alice-key.pem"));
        let alice_http = ClientTls::from_files(&ca, Some((alice_cert.as_path(), alice_key.as_path())))
            .expect("HTTP TLS with alice's certificate")
            .with_alpn(&[b"http/1.1"]);
        // (carol's certificate, of the client CA, names no user: 401.)
        let carol_http = ClientTls::from_files(&ca, Some((cert.as_path(), key.as_path())))
            .expect("HTTP TLS with carol's certificate")
            .with_alpn(&[b"http/1.1"]);
        let reply = exchange(&carol_http, &http, purge).await.expect("purge");
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply:?}");
        let reply = exchange(&alice_http, &http, purge).await.expect("purge");
        assert!(reply.starts_with("HTTP/1.1 403"), "{reply:?}");
        assert!(reply.contains("PERMISSION_DENIED"), "{reply:?}");
        auth.put_role("purger", &[Grant::parse("admin:cache:/a/").expect("grant")])
            .await
            .expect("role");
        auth.put_user("alice", &["tenant-a", "purger"])
            .await
            .expect("alice purges");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Every node applies the change to alice soon after the leader (a follower answers
            // 403 until it has).
            let reply = exchange(&alice_http, &http, purge).await.expect("purge");
            if reply.starts_with("HTTP/1.1 200") {
                assert!(reply.contains("purged seq="), "{reply:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{reply:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reply = exchange(&http_tls, &http, purge).await.expect("purge");
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply:?}");

        // The CLI, given the CA (and a token), and without it.
        let endpoints = cluster.endpoints();
        let ca_arg = ca.display().to_string();
        let run = run_cli(
            NODE,
            &endpoints,
            &["kv", "get", "a/1", "--ca-file", &ca_arg, "--token", root_token.as_str()],
            None,
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("one"), "{run:?}");
        // Alice's certificate, made above (`basalt certs client` never writes over a file).
        let (cert, key) = (
            dir.join("alice.pem").display().to_string(),
            dir.join("alice-key.pem").display().to_string(),
        );
        assert!(
            basalt_cli::certs::make_client(&dir, "alice").is_err(),
            "a second certificate over the first"
        );
        let run = run_cli(
            NODE,
            &endpoints,
            &[
                "auth",
                "whoami",
                "--ca-file",
                &ca_arg,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
            ],
            None,
        )
        .await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("alice"), "{run:?}");
        let run = run_cli(
            NODE,
            &endpoints,
            &["kv", "get", "a/1", "--token", root_token.as_str()],
            None,
        )
        .await;
        assert_ne!(run.code, Some(0), "{run:?}");
        // ... and says what is likely missing.
        assert!(run.stderr.contains("--ca-file"), "{run:?}");

        // New certificates from a new CA, written over the files the nodes run with: served from
        // the next connection on, without a restart. The CA file (the peer listener's too) holds
        // both CAs first, so the members keep trusting each other throughout.
        let next = tempfile::tempdir().expect("tempdir");
        basalt_cli::certs::make_ca(next.path()).expect("the next CA");
        let next_ca = next.path().join(basalt_cli::certs::CA_CERT_FILE);
        let bundle = format!(
            "{}{}",
            std::fs::read_to_string(&ca).expect("CA"),
            std::fs::read_to_string(&next_ca).expect("next CA")
        );
        basalt_cli::certs::make_node(next.path(), "node", &["127.0.0.1".to_string()]).expect("next node");
        std::fs::write(&ca, bundle).expect("bundle");
        // Give the nodes a check interval to take the bundle before their certificates change.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for file in ["node.pem", "node-key.pem"] {
            std::fs::copy(next.path().join(file), dir.join(file)).expect("replace");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match connect(&cluster, Some(tls(&next_ca, None)), Some(&root_token)).await {
                Ok(client) => {
                    assert_eq!(
                        client.kv().get("a/1").await.expect("read").map(|e| e.value),
                        Some(b"one".to_vec())
                    );
                    break;
                }
                Err(e) if Instant::now() > deadline => panic!("the new certificates are not served: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        // The members still replicate (their peer handshakes now show the new certificates).
        let client = connect(&cluster, Some(tls(&next_ca, None)), Some(&root_token))
            .await
            .expect("client");
        client
            .kv()
            .put("a/3", "three")
            .await
            .expect("a write after the rotation");
    });
}
