//! Txn: every transfer moves an amount between two customers in three representations at once,
//! in one transaction: their KV balances (guarded by the mod revisions the worker read), their
//! counters (bounded at 0) and their ledger accounts (may not debit past their credits). Funded
//! by the bank workload's setup, whose ledger checks apply too.

use std::time::Duration;

use basalt_client::ledger::Transfer;
use basalt_client::txn::{Compare, Condition, TxnOp, TxnOutcome};
use basalt_client::{Client, CounterOp, ReadConsistency};
use rand::rngs::StdRng;
use serde_json::{json, Map, Value};

use super::bank::{self, CUSTOMERS, FUNDING, LEDGER};
use super::{complete, perform, until_ok, Completion, Planned, Shared, FINAL_PROCESS, SETUP_PROCESS};
use crate::history::Recorder;

fn kv_key(customer: u64) -> String {
    format!("txn/kv/{customer}")
}

fn counter_key(customer: u64) -> String {
    format!("txn/counter/{customer}")
}

/// The ledger's funding (bank's setup), then each customer's KV balance and counter at the
/// same amount. Both are set, not added, so a retried setup step is harmless.
pub(super) async fn setup(client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
    bank::setup(client, recorder, shared).await?;
    for customer in 1..=CUSTOMERS {
        let value = json!({ "customer": customer, "amount": FUNDING });
        let seed = || async {
            let kv = client.kv().put(kv_key(customer), FUNDING.to_string()).await;
            let counter = match kv {
                Ok(_) => client
                    .counters()
                    .apply(vec![CounterOp::set(counter_key(customer), FUNDING as i64)])
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            complete(counter, true, |_| json!({}))
        };
        until_ok(Duration::from_secs(30), || {
            perform(recorder, SETUP_PROCESS, "seed", value.clone(), true, seed())
        })
        .await
        .map_err(|e| format!("seeding customer {customer}: {e}"))?;
    }
    Ok(())
}

/// The bank's plan: transfers between customers and reads, in the same proportions.
pub(super) fn plan(shared: &Shared, rng: &mut StdRng) -> Planned {
    bank::plan(shared, rng)
}

/// A KV balance and its mod revision.
async fn kv_balance(client: &Client, customer: u64) -> Result<(i64, u64), basalt_client::ClientError> {
    let entry = client.kv().get(kv_key(customer)).await?;
    Ok(entry.map_or((0, 0), |e| {
        let balance = String::from_utf8_lossy(&e.value).parse().unwrap_or(i64::MIN);
        (balance, e.mod_revision)
    }))
}

async fn transfer(client: &Client, value: &Value) -> Completion {
    let field = |f: &str| value[f].as_u64().unwrap_or_default();
    let (id, from, to, amount) = (field("id"), field("from"), field("to"), field("amount"));
    // Read outside the transaction; the transaction applies only if neither key changed since.
    let read =
        async { Ok::<_, basalt_client::ClientError>((kv_balance(client, from).await?, kv_balance(client, to).await?)) };
    let ((from_balance, from_revision), (to_balance, to_revision)) = match read.await {
        Ok(read) => read,
        Err(e) => return complete(Err::<(), _>(e), false, |_| Value::Null),
    };
    let delta = amount as i64;
    let outcome = client
        .txn()
        .when(Condition::mod_revision(kv_key(from), Compare::Eq, from_revision))
        .when(Condition::mod_revision(kv_key(to), Compare::Eq, to_revision))
        .then(TxnOp::put(kv_key(from), (from_balance - delta).to_string()))
        .then(TxnOp::put(kv_key(to), (to_balance + delta).to_string()))
        .then(TxnOp::counters(vec![
            CounterOp::bounded(counter_key(from), -delta, Some(0), None),
            CounterOp::incr(counter_key(to), delta),
        ]))
        .then(TxnOp::create_transfers(&[Transfer {
            id: u128::from(id),
            debit_account_id: u128::from(from),
            credit_account_id: u128::from(to),
            amount: u128::from(amount),
            ledger: LEDGER,
            code: 1,
            ..Default::default()
        }]))
        .commit()
        .await;
    match outcome {
        Ok(TxnOutcome::Committed { succeeded: true, .. }) => Completion::Ok(json!({})),
        // Nothing applied: a KV balance moved since the read, or a bound or the ledger refused.
        Ok(TxnOutcome::Committed { succeeded: false, .. }) => Completion::Fail("conflict".into()),
        // Includes a transfer id that exists: only a transaction applied twice could find one
        // (its KV revisions changed when it first applied), and the checker then reports a
        // failed transfer that exists.
        Ok(TxnOutcome::Aborted { op, reason, .. }) => Completion::Fail(format!("aborted at op {op}: {reason:?}")),
        Err(e) => complete(Err::<(), _>(e), true, |_| Value::Null),
    }
}

/// The three representations, each read in one request (one consistent view each). A `settled`
/// read (the final one) reads the ledger again at the end and fails if it moved meanwhile: a
/// transaction of unknown outcome may still commit after the faults heal, between the reads.
async fn read(client: &Client, settled: bool) -> Completion {
    let customers: Vec<u64> = (1..=CUSTOMERS).collect();
    let ledger = match bank::read(client).await {
        Completion::Ok(v) => v,
        other => return other,
    };
    let keys = customers.iter().map(|c| counter_key(*c).into_bytes()).collect();
    let counters = match client.counters().get(keys, ReadConsistency::Linearizable).await {
        Ok(values) => values,
        Err(e) => return complete(Err::<(), _>(e), false, |_| Value::Null),
    };
    let scanned = match client.kv().scan("txn/kv/", 100).await {
        Ok(items) => items,
        Err(e) => return complete(Err::<(), _>(e), false, |_| Value::Null),
    };
    let kv: Map<String, Value> = scanned
        .into_iter()
        .map(|(k, v)| {
            let customer = String::from_utf8_lossy(&k).trim_start_matches("txn/kv/").to_string();
            let balance: i64 = String::from_utf8_lossy(&v).parse().unwrap_or(i64::MIN);
            (customer, json!(balance))
        })
        .collect();
    let counters: Map<String, Value> = customers
        .iter()
        .zip(counters)
        .map(|(c, v)| (c.to_string(), json!(v)))
        .collect();
    if settled {
        match bank::read(client).await {
            Completion::Ok(again) if again["balances"] == ledger["balances"] => {}
            Completion::Ok(_) => return Completion::Fail("the ledger moved during the final read".into()),
            other => return other,
        }
    }
    let mut result = ledger;
    result["kv"] = Value::Object(kv);
    result["counters"] = Value::Object(counters);
    Completion::Ok(result)
}

pub(super) async fn invoke(client: &Client, planned: &Planned) -> Completion {
    match planned.f {
        "transfer" => transfer(client, &planned.value).await,
        "read" => read(client, false).await,
        other => Completion::Fail(format!("unknown txn operation {other}")),
    }
}

/// A final read of all three, then bank's final read and lookup of every transfer.
pub(super) async fn finish(client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || {
        perform(
            recorder,
            FINAL_PROCESS,
            "final-read",
            json!({}),
            false,
            read(client, true),
        )
    })
    .await
    .map_err(|e| format!("final read of the three representations: {e}"))?;
    bank::finish(client, recorder, shared).await
}
