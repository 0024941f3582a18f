//! Lease: workers compete for one lease and, while they hold it, write one key fenced with their
//! token. The final history of that key is read back with a KV watch.

use std::time::Duration;

use basalt_client::{Acquired, Client, ClientError, ErrorCode};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{complete, perform, until_ok, Completion, Detail, Planned, Shared, WorkerState, FINAL_PROCESS};
use crate::history::Recorder;

const LEASE: &str = "jepsen-lease";
const KEY: &str = "fenced";
const TTL: Duration = Duration::from_secs(1);

pub(super) fn plan(shared: &Shared, state: &WorkerState, rng: &mut StdRng, process: u64) -> Planned {
    let holder = format!("p{process}");
    let (f, value) = match state.token {
        None => ("acquire", json!({ "holder": holder, "ttl_ms": TTL.as_millis() as u64 })),
        Some(token) if rng.gen_bool(0.9) => ("write", json!({ "token": token, "n": shared.unique() })),
        Some(token) => ("release", json!({ "holder": holder, "token": token })),
    };
    Planned {
        f,
        value,
        mutation: true,
        detail: Detail::None,
    }
}

pub(super) async fn invoke(client: &Client, planned: &Planned, state: &mut WorkerState) -> Completion {
    let token = planned.value["token"].as_u64().unwrap_or_default();
    let holder = planned.value["holder"].as_str().unwrap_or_default().to_string();
    match planned.f {
        "acquire" => match client.lease(LEASE).acquire(holder, TTL).await {
            Ok(Acquired::Granted(grant)) => {
                state.token = Some(grant.token);
                Completion::Ok(json!({ "token": grant.token }))
            }
            Ok(Acquired::Held { .. }) => Completion::Fail("held by another".into()),
            Err(e) => complete(Err::<(), _>(e), true, |_| Value::Null),
        },
        "write" => {
            let n = planned.value["n"].as_u64().unwrap_or_default();
            let result = client.fenced(LEASE, token).kv().put(KEY, format!("{token}:{n}")).await;
            if let Err(ClientError::Rejected {
                code: ErrorCode::StaleFence,
                ..
            }) = &result
            {
                state.token = None;
            }
            complete(result, true, |revision| json!({ "revision": revision }))
        }
        "release" => {
            state.token = None;
            complete(
                client.lease(LEASE).release(holder, token).await,
                true,
                |released| json!({ "released": released }),
            )
        }
        other => Completion::Fail(format!("unknown lease operation {other}")),
    }
}

/// Every write that landed on the fenced key, in revision order, with its token.
async fn key_history(client: &Client) -> Completion {
    let current = match client.kv().get(KEY).await {
        Ok(Some(entry)) => entry.mod_revision,
        Ok(None) => return Completion::Ok(json!({ "writes": [] })),
        Err(e) => return Completion::Fail(e.to_string()),
    };
    let mut watch = match client.kv().watch(KEY, 1).await {
        Ok(w) => w,
        Err(e) => return Completion::Fail(e.to_string()),
    };
    let mut writes = Vec::new();
    while let Some(event) = watch.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => return Completion::Fail(e.to_string()),
        };
        if event.key == KEY.as_bytes() {
            let token = std::str::from_utf8(&event.value)
                .ok()
                .and_then(|v| v.split(':').next()?.parse::<u64>().ok());
            writes.push(json!({ "revision": event.revision, "token": token }));
        }
        if event.revision >= current {
            return Completion::Ok(json!({ "writes": writes }));
        }
    }
    Completion::Fail("watch ended before the current revision".into())
}

pub(super) async fn finish(client: &Client, recorder: &Recorder) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || {
        perform(
            recorder,
            FINAL_PROCESS,
            "final-history",
            json!({}),
            false,
            key_history(client),
        )
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("reading the fenced key's history: {e}"))
}
