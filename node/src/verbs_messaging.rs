//! CLI verbs for queues, streams and pub/sub (`basalt queue|stream|pubsub ...`).

use std::time::Duration;

use basalt_client::{
    Client, FetchOptions, NewMessage, QueueOptions, ReadConsistency, ReceiveOptions, Record, TopicOptions,
};
use clap::Subcommand;

use crate::cli::parse_duration;
use crate::verbs::{consistency, STALE_HELP};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a receipt printed by [`hex`]. Works on bytes, so a non-ASCII character is "not hex"
/// rather than a slice through the middle of a character.
fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let not_hex = || format!("receipt {text:?} is not hex");
    let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(not_hex);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(not_hex());
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_that_is_not_hex_is_refused_not_a_panic() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Ok(vec![0, 1, 0xab, 0xff]));
        for bad in ["1é1", "é", "abc", "zz", "+1"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue (or change its settings).
    Create {
        queue: String,
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        visibility_timeout: Duration,
        /// Move a message to --dead-letter-queue after this many deliveries (0: never).
        #[arg(long, default_value_t = 0)]
        max_deliveries: u32,
        #[arg(long)]
        dead_letter_queue: Option<String>,
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        dedup_window: Duration,
    },
    /// Enqueue one message; prints its id.
    Enqueue {
        queue: String,
        payload: String,
        #[arg(long)]
        dedup_id: Option<String>,
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
        #[arg(long, default_value_t = 0)]
        priority: u8,
    },
    /// Receive messages; prints id, receipt (hex), delivery and payload per line.
    Receive {
        queue: String,
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Long-poll up to this long.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
        #[arg(long, value_parser = parse_duration)]
        visibility_timeout: Option<Duration>,
    },
    Ack {
        queue: String,
        receipt: String,
    },
    Nack {
        queue: String,
        receipt: String,
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
    },
    /// Move dead-lettered messages back to their queues.
    Redrive {
        queue: String,
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
    Stats {
        queue: String,
        #[arg(long, help = STALE_HELP)]
        stale: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StreamCommand {
    /// Create a topic (or grow it, or change its retention).
    Create {
        topic: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, value_parser = parse_duration)]
        retention: Option<Duration>,
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// With regions: copy the topic to every other region as the read-only `TOPIC@REGION`.
        #[arg(long)]
        mirror: bool,
    },
    /// Partitions with their offsets.
    Describe { topic: String },
    /// Append one record; prints partition and offset.
    Produce {
        topic: String,
        value: String,
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Read records of a partition from an offset; prints offset, key and value per line.
    Fetch {
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        max: u32,
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
    /// A consumer group's committed offsets for a topic.
    Committed { group: String, topic: String },
}

#[derive(Subcommand, Debug)]
pub enum PubSubCommand {
    /// Publish; prints how many subscribers received it.
    Publish { channel: String, payload: String },
    /// Print messages on channels (and --pattern globs) until Ctrl-C.
    Subscribe {
        channels: Vec<String>,
        #[arg(long)]
        pattern: Vec<String>,
    },
}

pub async fn queue(client: &Client, command: QueueCommand) -> Result<(), String> {
    match command {
        QueueCommand::Create {
            queue,
            visibility_timeout,
            max_deliveries,
            dead_letter_queue,
            dedup_window,
        } => {
            let created = client
                .queue(queue)
                .create(QueueOptions {
                    visibility_timeout,
                    max_deliveries,
                    dead_letter_queue: dead_letter_queue.map(String::into_bytes),
                    dedup_window,
                })
                .await
                .map_err(err)?;
            println!("{}", if created { "CREATED" } else { "UPDATED" });
        }
        QueueCommand::Enqueue {
            queue,
            payload,
            dedup_id,
            delay,
            priority,
        } => {
            let mut message = NewMessage::new(payload).delay(delay).priority(priority);
            if let Some(id) = dedup_id {
                message = message.dedup_id(id);
            }
            let out = client.queue(queue).enqueue_message(message).await.map_err(err)?;
            println!("{} id={}", if out.duplicate { "DUPLICATE" } else { "ENQUEUED" }, out.id);
        }
        QueueCommand::Receive {
            queue,
            max,
            wait,
            visibility_timeout,
        } => {
            let options = ReceiveOptions {
                visibility_timeout: visibility_timeout.unwrap_or_default(),
                wait,
            };
            for m in client.queue(queue).receive(max, options).await.map_err(err)? {
                println!(
                    "id={} receipt={} delivery={} {}",
                    m.id,
                    hex(&m.receipt),
                    m.delivery,
                    String::from_utf8_lossy(&m.payload)
                );
            }
        }
        QueueCommand::Ack { queue, receipt } => {
            client.queue(queue).ack(&unhex(&receipt)?).await.map_err(err)?;
            println!("OK");
        }
        QueueCommand::Nack { queue, receipt, delay } => {
            client.queue(queue).nack(&unhex(&receipt)?, delay).await.map_err(err)?;
            println!("OK");
        }
        QueueCommand::Redrive { queue, max } => {
            println!("moved={}", client.queue(queue).redrive(max).await.map_err(err)?);
        }
        QueueCommand::Stats { queue, stale } => {
            let s = client.queue(queue).stats(consistency(stale)).await.map_err(err)?;
            println!("messages={} in_flight={}", s.messages, s.in_flight);
        }
    }
    Ok(())
}

pub async fn stream(client: &Client, command: StreamCommand) -> Result<(), String> {
    let streams = client.streams();
    match command {
        StreamCommand::Create {
            topic,
            partitions,
            retention,
            retention_bytes,
            mirror,
        } => {
            let created = streams
                .create_topic(
                    topic,
                    TopicOptions {
                        partitions,
                        retention,
                        retention_bytes,
                        mirror,
                    },
                )
                .await
                .map_err(err)?;
            println!("{}", if created { "CREATED" } else { "UPDATED" });
        }
        StreamCommand::Describe { topic } => {
            let info = streams
                .describe(topic, ReadConsistency::Linearizable)
                .await
                .map_err(err)?;
            for p in info.partitions {
                println!(
                    "partition={} log_start={} high_watermark={} bytes={}",
                    p.partition, p.log_start, p.high_watermark, p.bytes
                );
            }
        }
        StreamCommand::Produce {
            topic,
            value,
            key,
            partition,
        } => {
            let mut record = Record::new(key, value);
            record.partition = partition;
            let out = streams.produce(topic, vec![record]).await.map_err(err)?;
            if let Some(p) = out.first() {
                println!("partition={} offset={}", p.partition, p.offset);
            }
        }
        StreamCommand::Fetch {
            topic,
            partition,
            offset,
            max,
            wait,
        } => {
            let options = FetchOptions {
                max_records: max,
                wait,
                ..FetchOptions::default()
            };
            let fetched = streams.fetch(topic, partition, offset, options).await.map_err(err)?;
            for r in &fetched.records {
                println!(
                    "{} {} {}",
                    r.offset,
                    String::from_utf8_lossy(&r.key),
                    String::from_utf8_lossy(&r.value)
                );
            }
            eprintln!(
                "high_watermark={} log_start={}",
                fetched.high_watermark, fetched.log_start
            );
        }
        StreamCommand::Committed { group, topic } => {
            for (partition, offset) in streams.committed(group, topic).await.map_err(err)? {
                println!("partition={partition} offset={offset}");
            }
        }
    }
    Ok(())
}

pub async fn pubsub(client: &Client, command: PubSubCommand) -> Result<(), String> {
    match command {
        PubSubCommand::Publish { channel, payload } => {
            println!(
                "receivers={}",
                client.pubsub().publish(channel, payload).await.map_err(err)?
            );
        }
        PubSubCommand::Subscribe { channels, pattern } => {
            let mut subscription = client
                .pubsub()
                .subscribe(
                    channels.into_iter().map(String::into_bytes).collect(),
                    pattern.into_iter().map(String::into_bytes).collect(),
                )
                .await
                .map_err(err)?;
            eprintln!("subscribed");
            while let Some(message) = subscription.next().await {
                let m = message.map_err(err)?;
                println!(
                    "{} {}",
                    String::from_utf8_lossy(&m.channel),
                    String::from_utf8_lossy(&m.payload)
                );
            }
        }
    }
    Ok(())
}
