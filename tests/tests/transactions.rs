//! Transactions across data types on real node processes: all or nothing across KV, counters,
//! the ledger, queues and streams, across a leader kill; put-if-absent; the CLI's document; and
//! a transaction mixing region-local and homed types run from another region.

use std::time::Duration;

use basalt_client::ledger::{account_flags, Account, Transfer};
use basalt_client::stream::{Record, TopicOptions};
use basalt_client::txn::{BalanceField, Compare, Condition, TxnOp, TxnOpResult, TxnOutcome};
use basalt_client::{
    Client, ClientError, CounterOp, ErrorCode, NewMessage, PutIfAbsent, QueueOptions, ReadConsistency,
};
use basalt_testkit::regions::{RegionSpec, TestRegions};
use basalt_testkit::{run_cli, runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn account(id: u128, flags: u16) -> Account {
    Account {
        id,
        ledger: 1,
        code: 1,
        flags,
        ..Default::default()
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

async fn counter(client: &Client, key: &str) -> i64 {
    client.counter(key).get().await.expect("counter")
}

async fn credits(client: &Client, id: u128) -> u128 {
    client.ledger().lookup_accounts(&[id]).await.expect("lookup")[0].credits_posted
}

async fn depth(client: &Client, queue: &str) -> u64 {
    client
        .queue(queue)
        .stats(ReadConsistency::Linearizable)
        .await
        .expect("stats")
        .messages
}

async fn high_watermark(client: &Client, topic: &str) -> u64 {
    client
        .streams()
        .describe(topic, ReadConsistency::Linearizable)
        .await
        .expect("describe")
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum()
}

/// An order paid in one transaction: stock reserved, payment transferred, state and an
/// idempotency record written, an email queued and an event produced; a second order whose
/// payment the ledger refuses changes nothing at all; bad transactions are refused with the
/// code and place of what is wrong.
#[test]
fn a_transaction_across_types_applies_whole_or_not_at_all() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let ledger = client.ledger();
        let accounts = [
            account(1, account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(2, 0),
            account(3, 0),
        ];
        assert_eq!(ledger.create_accounts(&accounts).await.expect("accounts"), vec![]);
        assert_eq!(
            ledger.create_transfers(&[transfer(1, 3, 1, 100)]).await.expect("fund"),
            vec![]
        );
        client.counter("stock/sku").incr(2).await.expect("stock");
        client
            .queue("emails")
            .create(QueueOptions::default())
            .await
            .expect("queue");
        let topic = TopicOptions {
            partitions: 1,
            ..Default::default()
        };
        client.streams().create_topic("orders.v1", topic).await.expect("topic");

        let order = |n: u128, amount: u128| {
            client
                .txn()
                .when(Condition::counter("stock/sku", Compare::Ge, 1))
                .when(Condition::absent(format!("idem/{n}")))
                .when(Condition::balance(1, BalanceField::CreditsMinusDebits, Compare::Ge, 0))
                .then(TxnOp::put(format!("order/{n}"), "paid"))
                .then(TxnOp::put_with_ttl(
                    format!("idem/{n}"),
                    format!("order/{n}"),
                    Duration::from_secs(24 * 3600),
                ))
                .then(TxnOp::counter(CounterOp::bounded("stock/sku", -1, Some(0), None)))
                .then(TxnOp::create_transfers(&[transfer(100 + n, 1, 2, amount)]))
                .then(TxnOp::enqueue("emails", vec![NewMessage::new(format!("receipt {n}"))]))
                .then(TxnOp::produce(
                    "orders.v1",
                    vec![Record::new(format!("order/{n}"), "paid")],
                ))
                .otherwise(TxnOp::get(format!("idem/{n}")))
        };

        match order(1, 30).commit().await.expect("order 1") {
            TxnOutcome::Committed {
                succeeded: true,
                results,
            } => {
                assert_eq!(results.len(), 6);
                let revisions: Vec<u64> = results
                    .iter()
                    .filter_map(|r| match r {
                        TxnOpResult::Written { revision, .. } => Some(*revision),
                        _ => None,
                    })
                    .collect();
                assert_eq!(revisions.len(), 2);
                assert_eq!(revisions[0], revisions[1], "one transaction, one revision");
                assert!(matches!(&results[3], TxnOpResult::Ledger(f) if f.is_empty()));
            }
            other => panic!("expected order 1 committed, got {other:?}"),
        }
        assert_eq!(counter(&client, "stock/sku").await, 1);
        assert_eq!(credits(&client, 2).await, 30);
        assert_eq!(depth(&client, "emails").await, 1);
        assert_eq!(high_watermark(&client, "orders.v1").await, 1);
        let idem = client
            .kv()
            .get("idem/1")
            .await
            .expect("get")
            .expect("idempotency record");
        assert!(idem.expires_at_ms.is_some(), "the idempotency record expires");

        // Order 1 again: its idempotency key exists, so the else branch answers the record.
        match order(1, 30).commit().await.expect("order 1 again") {
            TxnOutcome::Committed {
                succeeded: false,
                results,
            } => assert!(matches!(&results[..], [TxnOpResult::Read(Some(e))] if e.value == b"order/1")),
            other => panic!("expected the else branch, got {other:?}"),
        }

        // Order 2 overdraws account 1: the ledger refuses op 3, and nothing else applies.
        match order(2, 500).commit().await.expect("order 2") {
            TxnOutcome::Aborted {
                succeeded: true,
                op: 3,
                reason: TxnOpResult::Ledger(failures),
            } => assert_eq!(failures[0].result, "exceeds_credits"),
            other => panic!("expected order 2 aborted at the transfer, got {other:?}"),
        }
        assert_eq!(client.kv().get("order/2").await.expect("get"), None);
        assert_eq!(client.kv().get("idem/2").await.expect("get"), None);
        assert_eq!(counter(&client, "stock/sku").await, 1);
        assert_eq!(credits(&client, 2).await, 30);
        assert_eq!(depth(&client, "emails").await, 1);
        assert_eq!(high_watermark(&client, "orders.v1").await, 1);

        // Bad transactions: refused whole, naming the place and with the op's own code.
        let refused = |r: Result<TxnOutcome, ClientError>| match r {
            Err(ClientError::Rejected { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let (code, message) = refused(
            client
                .txn()
                .then(TxnOp::put("a", "1"))
                .then(TxnOp::put("a", "2"))
                .commit()
                .await,
        );
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(message.contains("then[1]"), "{message}");
        let (code, message) = refused(
            client
                .txn()
                .when(Condition::balance(99, BalanceField::CreditsPosted, Compare::Eq, 0))
                .then(TxnOp::put("a", "1"))
                .commit()
                .await,
        );
        assert_eq!(code, ErrorCode::NotFound);
        assert!(message.contains("condition 0"), "{message}");
        let (code, message) = refused(client.txn().otherwise(TxnOp::put("", "1")).commit().await);
        assert_eq!(code, ErrorCode::EmptyKey);
        assert!(message.contains("else[0]"), "{message}");
        let (code, _) = refused(client.txn().commit().await);
        assert_eq!(code, ErrorCode::InvalidArgument, "an empty transaction");
        let many = (0..300).fold(client.txn(), |t, i| t.then(TxnOp::put(format!("k{i}"), "v")));
        assert_eq!(refused(many.commit().await).0, ErrorCode::BatchTooLarge);
    });
}

/// Transfers that move one unit between two counters, a ledger's accounts and a KV key, all in
/// one transaction each, while the leader is killed: every transaction applied whole or not at
/// all (the four always agree), and none twice.
#[test]
fn transactions_stay_atomic_and_exactly_once_across_a_leader_kill() {
    runtime().block_on(async {
        let mut cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let ledger = client.ledger();
        assert_eq!(
            ledger
                .create_accounts(&[account(1, 0), account(2, 0)])
                .await
                .expect("accounts"),
            vec![]
        );
        client.counter("from").incr(1000).await.expect("seed");
        const TRANSFERS: u128 = 40;
        let mut committed = 0u64;
        let mut unknown = 0u64;
        for n in 1..=TRANSFERS {
            if n == TRANSFERS / 3 {
                let leader = cluster.leader(&client).await;
                cluster.kill(leader);
            }
            let outcome = client
                .txn()
                .then(TxnOp::counter(CounterOp::bounded("from", -1, Some(0), None)))
                .then(TxnOp::counter(CounterOp::incr("to", 1)))
                .then(TxnOp::create_transfers(&[transfer(n, 1, 2, 1)]))
                .then(TxnOp::put(format!("moved/{n}"), "1"))
                .commit()
                .await;
            match outcome {
                Ok(TxnOutcome::Committed { .. }) => committed += 1,
                Ok(other) => panic!("transfer {n}: {other:?}"),
                // The SDK gave up: it may or may not have applied, but whole or not at all.
                Err(ClientError::Unavailable { .. }) => unknown += 1,
                Err(e) => panic!("transfer {n}: {e}"),
            }
        }
        let to = counter(&client, "to").await;
        assert_eq!(counter(&client, "from").await + to, 1000, "units conserved");
        assert_eq!(
            credits(&client, 2).await,
            to as u128,
            "the ledger agrees with the counters"
        );
        let moved = client.kv().scan("moved/", 1000).await.expect("scan");
        assert_eq!(moved.len() as i64, to, "the KV writes agree too");
        assert!(to as u64 >= committed, "every acknowledged transaction applied");
        assert!(to as u64 <= committed + unknown, "none applied twice");
    });
}

/// `kv put --if-absent` and its SDK call answer "created" once and the first record after; the
/// CLI runs a transaction document and exits 1 when it aborts.
#[test]
fn put_if_absent_and_the_cli_transaction_document() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let kv = client.kv();
        let day = Some(Duration::from_secs(24 * 3600));
        assert!(matches!(
            kv.put_if_absent("idem/pay-1", "charge ch_1", day).await.expect("first"),
            PutIfAbsent::Created { .. }
        ));
        match kv.put_if_absent("idem/pay-1", "charge ch_2", day).await.expect("retry") {
            PutIfAbsent::Exists(entry) => {
                assert_eq!(entry.value, b"charge ch_1", "the first attempt's record");
                assert!(entry.expires_at_ms.is_some());
            }
            other => panic!("expected the existing record, got {other:?}"),
        }
        assert_eq!(
            kv.put_if_absent("", "x", None).await.expect_err("empty key").code(),
            Some(ErrorCode::EmptyKey)
        );

        let endpoints = cluster.endpoints();
        let run = |args: Vec<String>, stdin: Option<String>| {
            let endpoints = endpoints.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let run = run_cli(NODE, &endpoints, &args, stdin.as_deref()).await;
                (run.code, run.stdout, run.stderr)
            }
        };
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (code, out, _) = run(
            args(&["kv", "put", "--if-absent", "--ttl", "24h", "idem/cli", "v1"]),
            None,
        )
        .await;
        assert_eq!(code, Some(0));
        assert!(out.starts_with("CREATED"), "{out}");
        let (code, out, _) = run(args(&["kv", "put", "--if-absent", "idem/cli", "v2"]), None).await;
        assert_eq!(code, Some(0));
        assert!(out.starts_with("EXISTS v1"), "{out}");

        client.counter("credits").incr(5).await.expect("seed");
        let document = r#"{
            "when": [{"counter": {"key": "credits", "cmp": ">=", "value": 3}}],
            "then": [{"incr": {"key": "credits", "by": -3, "min": 0}}, {"put": {"key": "bought", "value": "yes"}}],
            "else": [{"get": {"key": "bought"}}]
        }"#;
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), document).expect("write document");
        let path = file.path().display().to_string();
        let (code, out, err) = run(args(&["txn", &path]), None).await;
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.starts_with("COMMITTED then"), "{out}");
        assert!(out.contains("then[0] value=2"), "{out}");
        // From stdin: 2 credits left, so the else branch reads what the first one wrote.
        let (code, out, err) = run(args(&["txn", "-"]), Some(document.to_string())).await;
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("COMMITTED else") && out.contains("\"yes\""), "{out}");
        // A bound crossed: aborted, exit 1, nothing applied.
        let overdraw =
            r#"{"then": [{"put": {"key": "x", "value": "1"}}, {"incr": {"key": "credits", "by": -9, "min": 0}}]}"#;
        let (code, _, err) = run(args(&["txn"]), Some(overdraw.to_string())).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("ABORTED: then[1]"), "{err}");
        assert_eq!(kv.get("x").await.expect("get"), None);
        assert_eq!(counter(&client, "credits").await, 2);
        let (code, _, err) = run(args(&["txn"]), Some("{\"then\": [{\"bogus\": {}}]}".to_string())).await;
        assert_eq!(code, Some(1));
        assert!(err.contains("transaction document"), "{err}");
    });
}

/// A transaction that mixes KV (replicated everywhere) with the ledger (homed) sent to another
/// region runs at the home, whole; its KV write reaches the other region through the feed. One
/// of KV and counters only runs in the region it is sent to.
#[test]
fn a_transaction_touching_homed_data_runs_at_the_home_region() {
    runtime().block_on(async {
        let one = |name| RegionSpec {
            name,
            nodes: 1,
            extra_args: Vec::new(),
        };
        let regions = TestRegions::start(NODE, vec![one("us"), one("eu")]).await;
        let eu = regions.client("eu").await;
        let us = regions.client("us").await;
        assert_eq!(
            eu.ledger()
                .create_accounts(&[account(1, 0), account(2, 0)])
                .await
                .expect("accounts"),
            vec![]
        );
        let outcome = eu
            .txn()
            .when(Condition::absent("invoice/7"))
            .then(TxnOp::put("invoice/7", "issued"))
            .then(TxnOp::create_transfers(&[transfer(7, 1, 2, 25)]))
            .then(TxnOp::counter(CounterOp::incr("invoices", 1)))
            .commit()
            .await
            .expect("invoice from eu");
        assert!(outcome.is_committed(), "{outcome:?}");
        // Applied at the home (us): its ledger and its KV have it at once.
        assert_eq!(credits(&us, 2).await, 25);
        assert_eq!(
            us.kv().get("invoice/7").await.expect("get").map(|e| e.value),
            Some(b"issued".to_vec())
        );
        // eu gets the KV write and its ledger copy through the feed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let kv = eu.kv().get("invoice/7").await.expect("get");
            let copy = eu
                .ledger()
                .lookup_accounts_with(&[2], ReadConsistency::Stale)
                .await
                .expect("stale lookup");
            if kv.is_some() && copy.first().is_some_and(|a| a.credits_posted == 25) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "eu never got the invoice");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Region-local types only: served in eu itself.
        assert!(eu
            .txn()
            .then(TxnOp::put("eu/only", "1"))
            .then(TxnOp::counter(CounterOp::incr("eu/n", 1)))
            .commit()
            .await
            .expect("local txn")
            .is_committed());
        assert!(eu.kv().get("eu/only").await.expect("get").is_some());
    });
}

/// Malformed requests sent straight to the gRPC service: each refused with a typed code, none
/// proposed, the node still serving.
#[test]
fn malformed_transaction_requests_are_refused_with_typed_codes() {
    use basalt_client::pb;
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        let mut txn = pb::txn_client::TxnClient::connect(format!("http://{}", cluster.addr(leader)))
            .await
            .expect("connect");
        let put = |key: &str| pb::TxnOp {
            op: Some(pb::txn_op::Op::Put(pb::KvPutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        let with_condition = |condition: pb::txn_condition::Condition| pb::TxnRequest {
            when: vec![pb::TxnCondition {
                condition: Some(condition),
            }],
            then: vec![put("k")],
            ..Default::default()
        };
        let header = pb::RequestHeader {
            client_id: vec![1; 16],
            seq: 1,
            ..Default::default()
        };
        let cases: Vec<(&str, pb::TxnRequest, ErrorCode)> = vec![
            (
                "an op with no kind",
                pb::TxnRequest {
                    then: vec![pb::TxnOp { op: None }],
                    ..Default::default()
                },
                ErrorCode::InvalidArgument,
            ),
            (
                "a condition with no kind",
                pb::TxnRequest {
                    when: vec![pb::TxnCondition { condition: None }],
                    then: vec![put("k")],
                    ..Default::default()
                },
                ErrorCode::InvalidArgument,
            ),
            (
                "a header inside an op",
                pb::TxnRequest {
                    then: vec![pb::TxnOp {
                        op: Some(pb::txn_op::Op::Put(pb::KvPutRequest {
                            header: Some(header),
                            key: b"k".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                },
                ErrorCode::InvalidArgument,
            ),
            (
                "an unknown comparison",
                with_condition(pb::txn_condition::Condition::Counter(pb::CounterCondition {
                    key: b"c".to_vec(),
                    compare: 99,
                    value: 1,
                })),
                ErrorCode::InvalidArgument,
            ),
            (
                "an amount that is not 16 bytes",
                with_condition(pb::txn_condition::Condition::Balance(pb::BalanceCondition {
                    account: 1u128.to_be_bytes().to_vec(),
                    field: 0,
                    compare: 0,
                    amount: vec![1, 2, 3],
                })),
                ErrorCode::InvalidArgument,
            ),
            (
                "a waiting lease acquire",
                pb::TxnRequest {
                    then: vec![pb::TxnOp {
                        op: Some(pb::txn_op::Op::LeaseAcquire(pb::LeaseAcquireRequest {
                            name: b"l".to_vec(),
                            holder: b"h".to_vec(),
                            ttl_ms: 1000,
                            wait_ms: 5,
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                },
                ErrorCode::InvalidArgument,
            ),
            (
                "a key too large",
                pb::TxnRequest {
                    then: vec![put(&"k".repeat(5000))],
                    ..Default::default()
                },
                ErrorCode::KeyTooLarge,
            ),
        ];
        for (what, request, expected) in cases {
            let status = txn.commit(request).await.expect_err(what);
            let code = status
                .metadata()
                .get(basalt_client::ERROR_CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(ErrorCode::parse);
            assert_eq!(code, Some(expected), "{what}: {status:?}");
        }
        assert_eq!(
            client.kv().get("k").await.expect("still serving"),
            None,
            "nothing was applied"
        );
    });
}
