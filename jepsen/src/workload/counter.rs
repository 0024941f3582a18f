//! Counter: increments of an unbounded counter and ±1 steps of a bounded one, with reads.

use std::time::Duration;

use basalt_client::Client;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::{complete, perform, until_ok, Completion, Detail, Planned, FINAL_PROCESS};
use crate::history::Recorder;

const COUNTER: &str = "ctr";
const BOUNDED: &str = "bctr";
const MIN: i64 = 0;
const MAX: i64 = 5;

fn planned(f: &'static str, value: serde_json::Value, mutation: bool) -> Planned {
    Planned {
        f,
        value,
        mutation,
        detail: Detail::None,
    }
}

fn read_op() -> Planned {
    planned("read", json!({ "key": COUNTER }), false)
}

fn read_bounded_op() -> Planned {
    planned("read-bounded", json!({ "key": BOUNDED, "min": MIN, "max": MAX }), false)
}

pub(super) fn plan(rng: &mut StdRng) -> Planned {
    let roll: f64 = rng.gen();
    if roll < 0.45 {
        planned("add", json!({ "key": COUNTER, "delta": rng.gen_range(1..=5) }), true)
    } else if roll < 0.7 {
        read_op()
    } else if roll < 0.9 {
        let delta = if rng.gen_bool(0.5) { 1 } else { -1 };
        planned(
            "add-bounded",
            json!({ "key": BOUNDED, "delta": delta, "min": MIN, "max": MAX }),
            true,
        )
    } else {
        read_bounded_op()
    }
}

pub(super) async fn invoke(client: &Client, planned: &Planned) -> Completion {
    let value = |v: i64| json!({ "value": v });
    let delta = planned.value["delta"].as_i64().unwrap_or_default();
    match planned.f {
        "add" => complete(client.counter(COUNTER).incr(delta).await, true, value),
        "add-bounded" => complete(
            client.counter(BOUNDED).incr_bounded(delta, Some(MIN), Some(MAX)).await,
            true,
            value,
        ),
        "read" => complete(client.counter(COUNTER).get().await, false, value),
        "read-bounded" => complete(client.counter(BOUNDED).get().await, false, value),
        other => Completion::Fail(format!("unknown counter operation {other}")),
    }
}

pub(super) async fn finish(client: &Client, recorder: &Recorder) -> Result<(), String> {
    for op in [read_op(), read_bounded_op()] {
        until_ok(Duration::from_secs(30), || {
            perform(
                recorder,
                FINAL_PROCESS,
                op.f,
                op.value.clone(),
                false,
                invoke(client, &op),
            )
        })
        .await
        .map_err(|e| format!("final {}: {e}", op.f))?;
    }
    Ok(())
}
