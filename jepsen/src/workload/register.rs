//! Register: read, write and compare-and-set on a few keys at a time. Keys rotate every ~60
//! operations so each key's history stays small enough for an exhaustive linearizability search.

use basalt_client::{CasOutcome, Client};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::{complete, Completion, Detail, Planned, Shared, WorkerState};

const OPS_PER_KEY_WINDOW: u64 = 60;
const KEYS_AT_ONCE: u64 = 3;

fn value_of(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

pub(super) fn plan(shared: &Shared, state: &WorkerState, rng: &mut StdRng) -> Planned {
    let key = format!(
        "r{}",
        shared.next_op_number() / OPS_PER_KEY_WINDOW + rng.gen_range(0..KEYS_AT_ONCE)
    );
    let roll: f64 = rng.gen();
    let read = || Planned {
        f: "read",
        value: json!({ "key": key }),
        mutation: false,
        detail: Detail::None,
    };
    if roll < 0.4 {
        return read();
    }
    if roll < 0.7 {
        return Planned {
            f: "write",
            value: json!({ "key": key, "value": shared.unique() }),
            mutation: true,
            detail: Detail::None,
        };
    }
    match state.last_seen.get(&key) {
        Some(&(from, revision)) => Planned {
            f: "cas",
            value: json!({ "key": key, "from": from, "to": shared.unique() }),
            mutation: true,
            detail: Detail::Revision((revision > 0).then_some(revision)),
        },
        None => read(),
    }
}

pub(super) async fn invoke(client: &Client, planned: &Planned, state: &mut WorkerState) -> Completion {
    let kv = client.kv();
    let key = planned.value["key"].as_str().unwrap_or_default().to_string();
    match planned.f {
        "read" => {
            let result = kv.get(&key).await;
            if let Ok(entry) = &result {
                let seen = entry.as_ref().and_then(|e| value_of(&e.value));
                let revision = entry.as_ref().map_or(0, |e| e.mod_revision);
                state.last_seen.insert(key.clone(), (seen, revision));
            }
            complete(
                result,
                false,
                |entry| json!({ "value": entry.as_ref().and_then(|e| value_of(&e.value)) }),
            )
        }
        "write" => {
            let value = planned.value["value"].as_i64().unwrap_or_default();
            let result = kv.put(&key, value.to_string()).await;
            if let Ok(revision) = &result {
                state.last_seen.insert(key.clone(), (Some(value), *revision));
            }
            complete(result, true, |revision| json!({ "revision": revision }))
        }
        "cas" => {
            let Detail::Revision(expected) = planned.detail else {
                return Completion::Fail("cas planned without a revision".into());
            };
            let to = planned.value["to"].as_i64().unwrap_or_default();
            let result = kv.cas(&key, expected, to.to_string()).await;
            match &result {
                Ok(CasOutcome::Written { revision }) => {
                    state.last_seen.insert(key.clone(), (Some(to), *revision));
                }
                _ => {
                    state.last_seen.remove(&key);
                }
            }
            complete(result, true, |outcome| match outcome {
                CasOutcome::Written { revision } => json!({ "ok": true, "revision": revision }),
                CasOutcome::Conflict { .. } => json!({ "ok": false }),
            })
        }
        other => Completion::Fail(format!("unknown register operation {other}")),
    }
}
