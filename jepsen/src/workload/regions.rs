//! Regions: clients in every region write the same few KV keys (each write a unique value, some
//! with a TTL of a second or two) and delete them, increment one counter, restock and take a stock counter bounded below by 0 (escrow), and read
//! keys locally, while regions are partitioned from each other and their leaders killed.
//! Checked by `checker::regions` after the regions converge.

use std::time::Duration;

use basalt_client::Client;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{complete, perform, until_ok, Completion, Detail, Planned, Shared, WorkerState, FINAL_PROCESS};
use crate::history::Recorder;

pub const KEYS: u64 = 4;
pub const COUNTER: &str = "hits";
/// A counter bounded below by 0: every region restocks it (which gives it escrow) and takes from
/// it; partitioned regions together must never take it below 0.
pub const STOCK: &str = "stock";
/// The TTLs of the workload's expiring puts, in ms.
pub const TTL_MS_MIN: u64 = 500;
pub const TTL_MS_MAX: u64 = 2_000;

fn planned(f: &'static str, value: Value, mutation: bool) -> Planned {
    Planned {
        f,
        value,
        mutation,
        detail: Detail::None,
    }
}

pub(super) fn plan(shared: &Shared, state: &WorkerState, rng: &mut StdRng) -> Planned {
    let region = state.region.clone().unwrap_or_default();
    let key = format!("k{}", rng.gen_range(0..KEYS));
    let roll: f64 = rng.gen();
    if roll < 0.35 {
        let value = format!("{region}-{}", shared.unique());
        planned("put", json!({ "region": region, "key": key, "value": value }), true)
    } else if roll < 0.40 {
        let value = format!("{region}-{}-ttl", shared.unique());
        let ttl_ms = rng.gen_range(TTL_MS_MIN..=TTL_MS_MAX);
        planned(
            "put",
            json!({ "region": region, "key": key, "value": value, "ttl_ms": ttl_ms }),
            true,
        )
    } else if roll < 0.47 {
        planned("delete", json!({ "region": region, "key": key }), true)
    } else if roll < 0.65 {
        planned(
            "add",
            json!({ "region": region, "key": COUNTER, "delta": rng.gen_range(1..=3) }),
            true,
        )
    } else if roll < 0.72 {
        planned(
            "restock",
            json!({ "region": region, "key": STOCK, "delta": rng.gen_range(1..=3) }),
            true,
        )
    } else if roll < 0.85 {
        planned("take", json!({ "region": region, "key": STOCK, "delta": 1 }), true)
    } else {
        planned("read", json!({ "region": region, "key": key }), false)
    }
}

pub(super) async fn invoke(client: &Client, planned: &Planned) -> Completion {
    let v = &planned.value;
    let key = v["key"].as_str().unwrap_or_default();
    match planned.f {
        "put" => {
            let value = v["value"].as_str().unwrap_or_default();
            let options = basalt_client::PutOptions {
                ttl: v["ttl_ms"].as_u64().map(Duration::from_millis),
            };
            complete(client.kv().put_with(key, value, options).await, true, |_| v.clone())
        }
        "delete" => complete(client.kv().delete(key).await, true, |_| v.clone()),
        "add" => {
            let delta = v["delta"].as_i64().unwrap_or_default();
            complete(client.counter(key).incr(delta).await, true, |n| json!({ "value": n }))
        }
        // Bounded below by 0; a take beyond the region's escrow is refused (ESCROW_EXCEEDED).
        "restock" | "take" => {
            let delta = v["delta"].as_i64().unwrap_or_default();
            let delta = if planned.f == "take" { -delta } else { delta };
            complete(
                client.counter(key).incr_bounded(delta, Some(0), None).await,
                true,
                |n| json!({ "value": n }),
            )
        }
        "read" => complete(client.kv().get(key).await, false, |entry| {
            json!({
                "region": v["region"],
                "key": key,
                "value": entry.map(|e| String::from_utf8_lossy(&e.value).into_owned()),
            })
        }),
        other => Completion::Fail(format!("unknown regions operation {other}")),
    }
}

/// Reads every key and the counter from one region, recorded as one `final` operation.
pub async fn final_read(client: &Client, recorder: &Recorder, region: &str) -> Result<(), String> {
    let read = || async {
        let mut keys = serde_json::Map::new();
        for k in 0..KEYS {
            let key = format!("k{k}");
            let entry = client.kv().get(&key).await.map_err(|e| e.to_string())?;
            keys.insert(
                key,
                entry.map_or(Value::Null, |e| {
                    Value::String(String::from_utf8_lossy(&e.value).into_owned())
                }),
            );
        }
        let hits = client.counter(COUNTER).get().await.map_err(|e| e.to_string())?;
        let stock = client.counter(STOCK).get().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(json!({ "region": region, "keys": keys, "hits": hits, "stock": stock }))
    };
    until_ok(Duration::from_secs(30), || {
        perform(
            recorder,
            FINAL_PROCESS,
            "final",
            json!({ "region": region }),
            false,
            async {
                match read().await {
                    Ok(v) => Completion::Ok(v),
                    Err(e) => Completion::Fail(e),
                }
            },
        )
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("final read in {region}: {e}"))
}
