//! Stream: unique values appended to a three-partition topic by key, with fetches during the run
//! and a full read of every partition at the end.

use std::time::Duration;

use basalt_client::{Client, FetchOptions, Record, TopicOptions};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{complete, perform, until_ok, Completion, Detail, Planned, Shared, WorkerState, FINAL_PROCESS};
use crate::history::Recorder;

const TOPIC: &str = "jepsen-stream";
const PARTITIONS: u32 = 3;

pub(super) async fn setup(client: &Client) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || async {
        let options = TopicOptions {
            partitions: PARTITIONS,
            ..Default::default()
        };
        complete(client.streams().create_topic(TOPIC, options).await, true, |_| {
            Value::Null
        })
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("creating the topic: {e}"))
}

pub(super) fn plan(shared: &Shared, state: &WorkerState, rng: &mut StdRng) -> Planned {
    if rng.gen_bool(0.75) {
        return Planned {
            f: "produce",
            value: json!({ "value": format!("v{}", shared.unique()), "key": format!("k{}", rng.gen_range(0..10)) }),
            mutation: true,
            detail: Detail::None,
        };
    }
    let partition = rng.gen_range(0..PARTITIONS);
    let high = state.high_watermarks.get(&partition).copied().unwrap_or(0);
    Planned {
        f: "fetch",
        value: json!({ "partition": partition, "offset": rng.gen_range(0..=high) }),
        mutation: false,
        detail: Detail::None,
    }
}

fn as_pairs(records: &[basalt_client::FetchedRecord]) -> Vec<Value> {
    records
        .iter()
        .map(|r| json!([r.offset, String::from_utf8_lossy(&r.value)]))
        .collect()
}

pub(super) async fn invoke(client: &Client, planned: &Planned, state: &mut WorkerState) -> Completion {
    let streams = client.streams();
    match planned.f {
        "produce" => {
            let value = planned.value["value"].as_str().unwrap_or_default();
            let key = planned.value["key"].as_str().unwrap_or_default();
            let result = streams.produce(TOPIC, vec![Record::new(key, value)]).await;
            match result {
                Ok(produced) => match produced.first() {
                    Some(p) => {
                        let high = state.high_watermarks.entry(p.partition).or_insert(0);
                        *high = (*high).max(p.offset);
                        Completion::Ok(json!({ "partition": p.partition, "offset": p.offset }))
                    }
                    None => Completion::Info("produce answered with no offset".into()),
                },
                Err(e) => complete(Err::<(), _>(e), true, |_| Value::Null),
            }
        }
        "fetch" => {
            let partition = planned.value["partition"].as_u64().unwrap_or_default() as u32;
            let offset = planned.value["offset"].as_u64().unwrap_or_default();
            let options = FetchOptions {
                max_records: 200,
                ..Default::default()
            };
            complete(
                streams.fetch(TOPIC, partition, offset, options).await,
                false,
                |f| json!({ "records": as_pairs(&f.records) }),
            )
        }
        other => Completion::Fail(format!("unknown stream operation {other}")),
    }
}

async fn read_all(client: &Client) -> Completion {
    let mut partitions = Map::new();
    for partition in 0..PARTITIONS {
        let mut records = Vec::new();
        let mut offset = 0;
        loop {
            let options = FetchOptions {
                max_records: 1000,
                ..Default::default()
            };
            let fetched = match client.streams().fetch(TOPIC, partition, offset, options).await {
                Ok(f) => f,
                Err(e) => return Completion::Fail(e.to_string()),
            };
            records.extend(as_pairs(&fetched.records));
            match fetched.records.last() {
                Some(last) if last.offset + 1 < fetched.high_watermark => offset = last.offset + 1,
                _ => break,
            }
        }
        partitions.insert(partition.to_string(), Value::Array(records));
    }
    Completion::Ok(json!({ "partitions": partitions }))
}

pub(super) async fn finish(client: &Client, recorder: &Recorder) -> Result<(), String> {
    until_ok(Duration::from_secs(30), || {
        perform(
            recorder,
            FINAL_PROCESS,
            "final-read",
            json!({}),
            false,
            read_all(client),
        )
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("reading every partition: {e}"))
}
