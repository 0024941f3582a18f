//! Bank: transfers between five accounts that may not go below zero, funded by an operator
//! account, with reads of every balance.

use std::time::Duration;

use basalt_client::ledger::{account_flags, Account, Transfer};
use basalt_client::Client;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{complete, perform, until_ok, Completion, Detail, Planned, Shared, FINAL_PROCESS, SETUP_PROCESS};
use crate::history::Recorder;

pub(super) const OPERATOR: u64 = 1000;
pub(super) const CUSTOMERS: u64 = 5;
pub(super) const FUNDING: u64 = 100;
pub(super) const LEDGER: u32 = 1;
/// Transfer ids below this are the funding transfers.
const FIRST_TRANSFER_ID: u64 = 100;

fn accounts() -> Vec<u128> {
    (1..=CUSTOMERS).chain([OPERATOR]).map(u128::from).collect()
}

fn transfer_of(value: &Value) -> Transfer {
    let field = |f: &str| u128::from(value[f].as_u64().unwrap_or_default());
    Transfer {
        id: field("id"),
        debit_account_id: field("from"),
        credit_account_id: field("to"),
        amount: field("amount"),
        ledger: LEDGER,
        code: 1,
        ..Default::default()
    }
}

async fn transfer(client: &Client, value: &Value) -> Completion {
    match client.ledger().create_transfers(&[transfer_of(value)]).await {
        Ok(failures) => match failures.first() {
            None => Completion::Ok(json!({})),
            // A retry of a transfer that exists (same id, same fields) did happen.
            Some(f) if f.result == "exists" => Completion::Ok(json!({ "existed": true })),
            Some(f) => Completion::Fail(f.result.clone()),
        },
        Err(e) => complete(Err::<(), _>(e), true, |_| Value::Null),
    }
}

pub(super) async fn setup(client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
    let accounts: Vec<Account> = accounts()
        .into_iter()
        .map(|id| Account {
            id,
            ledger: LEDGER,
            code: 1,
            flags: if id == u128::from(OPERATOR) {
                0
            } else {
                account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS
            },
            ..Default::default()
        })
        .collect();
    until_ok(Duration::from_secs(30), || async {
        match client.ledger().create_accounts(&accounts).await {
            Ok(failures) if failures.iter().all(|f| f.result == "exists") => Completion::Ok(Value::Null),
            Ok(failures) => Completion::Fail(format!("{failures:?}")),
            Err(e) => Completion::Fail(e.to_string()),
        }
    })
    .await
    .map_err(|e| format!("creating accounts: {e}"))?;
    for customer in 1..=CUSTOMERS {
        let value = json!({ "id": customer, "from": OPERATOR, "to": customer, "amount": FUNDING });
        until_ok(Duration::from_secs(30), || {
            perform(
                recorder,
                SETUP_PROCESS,
                "fund",
                value.clone(),
                true,
                transfer(client, &value),
            )
        })
        .await
        .map_err(|e| format!("funding account {customer}: {e}"))?;
    }
    // Transfer ids continue after the funding ones.
    while shared.unique_count() < FIRST_TRANSFER_ID {
        shared.unique();
    }
    Ok(())
}

fn read_op() -> Planned {
    Planned {
        f: "read",
        value: json!({}),
        mutation: false,
        detail: Detail::None,
    }
}

pub(super) fn plan(shared: &Shared, rng: &mut StdRng) -> Planned {
    if rng.gen_bool(0.3) {
        return read_op();
    }
    let from = rng.gen_range(1..=CUSTOMERS);
    let to = (from + rng.gen_range(1..CUSTOMERS) - 1) % CUSTOMERS + 1;
    Planned {
        f: "transfer",
        value: json!({ "id": shared.unique(), "from": from, "to": to, "amount": rng.gen_range(1..=20) }),
        mutation: true,
        detail: Detail::None,
    }
}

pub(super) async fn read(client: &Client) -> Completion {
    complete(client.ledger().lookup_accounts(&accounts()).await, false, |found| {
        let balances: Map<String, Value> = found
            .iter()
            .map(|a| {
                let balance = a.credits_posted as i128 - a.debits_posted as i128;
                (a.id.to_string(), json!(i64::try_from(balance).unwrap_or(i64::MAX)))
            })
            .collect();
        // Each account's posted totals, to check that a read misses no transfer acknowledged
        // before it began.
        let posted: Map<String, Value> = found
            .iter()
            .map(|a| {
                let total = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
                (
                    a.id.to_string(),
                    json!([total(a.credits_posted), total(a.debits_posted)]),
                )
            })
            .collect();
        json!({ "balances": balances, "posted": posted })
    })
}

pub(super) async fn invoke(client: &Client, planned: &Planned) -> Completion {
    match planned.f {
        "transfer" => transfer(client, &planned.value).await,
        "read" => read(client).await,
        other => Completion::Fail(format!("unknown bank operation {other}")),
    }
}

pub(super) async fn finish(client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || {
        perform(recorder, FINAL_PROCESS, "read", json!({}), false, read(client))
    })
    .await
    .map_err(|e| format!("final read: {e}"))?;
    let ids: Vec<u128> = (1..=shared.unique_count()).map(u128::from).collect();
    let lookup = || async {
        let mut found = Vec::new();
        for chunk in ids.chunks(500) {
            match client.ledger().lookup_transfers(chunk).await {
                Ok(records) => found.extend(records.iter().map(|r| r.transfer.id as u64)),
                Err(e) => return complete(Err::<(), _>(e), false, |_| Value::Null),
            }
        }
        Completion::Ok(json!({ "found": found }))
    };
    until_ok(Duration::from_secs(30), || {
        perform(recorder, FINAL_PROCESS, "final-transfers", json!({}), false, lookup())
    })
    .await
    .map_err(|e| format!("final transfer lookup: {e}"))?;
    Ok(())
}
