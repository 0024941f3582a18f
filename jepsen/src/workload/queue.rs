//! Queue: enqueue unique payloads, receive with a short visibility timeout, acknowledge most
//! deliveries (some are abandoned on purpose, to be redelivered), and drain the queue at the end.

use std::time::{Duration, Instant};

use basalt_client::{Client, QueueOptions, ReceiveOptions};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::{complete, perform, until_ok, Completion, Detail, Planned, Shared, WorkerState, FINAL_PROCESS};
use crate::history::Recorder;

const QUEUE: &str = "jepsen-queue";
const VISIBILITY: Duration = Duration::from_secs(2);

pub(super) async fn setup(client: &Client) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || async {
        let options = QueueOptions {
            visibility_timeout: VISIBILITY,
            ..Default::default()
        };
        complete(client.queue(QUEUE).create(options).await, true, |_| Value::Null)
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("creating the queue: {e}"))
}

pub(super) fn plan(shared: &Shared, state: &mut WorkerState, rng: &mut StdRng) -> Planned {
    if let Some((payload, receipt, delivery)) = state.to_ack.pop_front() {
        return Planned {
            f: "ack",
            value: json!({ "payload": payload, "delivery": delivery }),
            mutation: true,
            detail: Detail::Receipt(receipt),
        };
    }
    if rng.gen_bool(0.5) {
        Planned {
            f: "enqueue",
            value: json!({ "payload": format!("m{}", shared.unique()) }),
            mutation: true,
            detail: Detail::None,
        }
    } else {
        // One receive in ten abandons its deliveries, to be redelivered after the visibility timeout.
        Planned {
            f: "receive",
            value: json!({ "max": 3, "abandon": rng.gen_bool(0.1) }),
            mutation: true,
            detail: Detail::None,
        }
    }
}

async fn receive(
    client: &Client,
    max: u32,
    options: ReceiveOptions,
    state: &mut WorkerState,
    keep: impl Fn() -> bool,
) -> Completion {
    let result = client.queue(QUEUE).receive(max, options).await;
    if let Ok(messages) = &result {
        for m in messages.iter().filter(|_| keep()) {
            let payload = String::from_utf8_lossy(&m.payload).to_string();
            state.to_ack.push_back((payload, m.receipt.clone(), m.delivery));
        }
    }
    complete(result, true, |messages| {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({ "payload": String::from_utf8_lossy(&m.payload), "id": m.id, "delivery": m.delivery }))
            .collect();
        json!({ "messages": messages })
    })
}

pub(super) async fn invoke(client: &Client, planned: &Planned, state: &mut WorkerState) -> Completion {
    let queue = client.queue(QUEUE);
    match (planned.f, &planned.detail) {
        ("enqueue", _) => {
            let payload = planned.value["payload"].as_str().unwrap_or_default().to_string();
            complete(queue.enqueue(payload).await, true, |id| json!({ "id": id }))
        }
        ("receive", _) => {
            let options = ReceiveOptions {
                visibility_timeout: VISIBILITY,
                wait: Duration::ZERO,
            };
            let abandon = planned.value["abandon"].as_bool().unwrap_or(false);
            receive(client, 3, options, state, || !abandon).await
        }
        ("ack", Detail::Receipt(receipt)) => complete(queue.ack(receipt).await, true, |()| json!({})),
        (other, _) => Completion::Fail(format!("unknown queue operation {other}")),
    }
}

/// Receives and acknowledges until the queue stays empty for longer than a visibility timeout,
/// so that deliveries lost with a timed-out receive come back and are counted.
pub(super) async fn finish(client: &Client, recorder: &Recorder) -> Result<(), String> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut state = WorkerState::default();
    let options = ReceiveOptions {
        visibility_timeout: Duration::from_secs(30),
        wait: Duration::from_millis(500),
    };
    while started.elapsed() < Duration::from_secs(120) {
        let completion = perform(recorder, FINAL_PROCESS, "receive", json!({ "max": 100 }), true, async {
            receive(client, 100, options, &mut state, || true).await
        })
        .await;
        let got_some =
            matches!(&completion, Completion::Ok(v) if v["messages"].as_array().is_some_and(|m| !m.is_empty()));
        if got_some {
            quiet_since = Instant::now();
        }
        while let Some((payload, receipt, delivery)) = state.to_ack.pop_front() {
            let value = json!({ "payload": payload, "delivery": delivery });
            perform(recorder, FINAL_PROCESS, "ack", value, true, async {
                complete(client.queue(QUEUE).ack(&receipt).await, true, |()| json!({}))
            })
            .await;
        }
        if !got_some && quiet_since.elapsed() > VISIBILITY + Duration::from_secs(2) {
            perform(recorder, FINAL_PROCESS, "drained", json!({}), false, async {
                Completion::Ok(json!({}))
            })
            .await;
            return Ok(());
        }
    }
    Err("the queue did not drain within 120 s".into())
}
