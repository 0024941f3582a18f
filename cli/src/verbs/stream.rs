//! `basalt stream ...`: topics, produce, fetch, consumer-group offsets.

use std::time::Duration;

use basalt_client::{Client, FetchOptions, ReadConsistency, Record, TopicOptions};
use clap::Subcommand;

use super::err;
use crate::commands::parse_duration;

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
