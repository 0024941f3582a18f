//! `basalt stream ...`: topics, produce, fetch, consumer-group offsets.

use std::time::Duration;

use std::time::SystemTime;

use basalt_client::{
    Client, ConsumerOptions, FetchOptions, ReadConsistency, Record, ReplayOptions, StartFrom, TopicOptions, TrimRule,
};
use clap::Subcommand;
use tokio_stream::StreamExt;

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
    /// Delete a topic with its records and every group's offsets for it.
    Delete { topic: String },
    /// Remove a partition's oldest records: keep the newest `--max-len N`, or the records from
    /// id `--min-id MS[-OFFSET]` on (stamp, then offset); prints how many were removed.
    Trim {
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        #[arg(long, conflicts_with = "min_id", required_unless_present = "min_id")]
        max_len: Option<u64>,
        #[arg(long, value_parser = parse_record_id)]
        min_id: Option<(u64, u64)>,
        /// Remove at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Every topic: name, partitions, retention, mirror.
    List,
    /// The offset of a partition's first record at or after a time (`--ago 1h`, or `--at-ms`).
    Seek {
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// How long ago.
        #[arg(long, value_parser = parse_duration, conflicts_with = "at_ms")]
        ago: Option<Duration>,
        /// Milliseconds since the Unix epoch.
        #[arg(long)]
        at_ms: Option<u64>,
    },
    /// Consume as a member of a group (joins, follows rebalances, commits); prints
    /// `topic partition offset key value` per record. Stops after `--max` records or when
    /// nothing arrives for `--idle`.
    Consume {
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        max: Option<u64>,
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        idle: Duration,
        /// Where partitions the group never committed start: earliest or latest.
        #[arg(long, default_value = "earliest")]
        start: String,
    },
    /// Re-drive a dead-letter topic's records (`TOPIC.dlq`) to the topics they came from.
    Replay {
        dlq: String,
        /// The group that keeps the replay's progress (default: `DLQ.replay`).
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        max: Option<u64>,
    },
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
            crate::outln!("{}", if created { "CREATED" } else { "UPDATED" });
        }
        StreamCommand::Describe { topic } => {
            let info = streams
                .describe(topic, ReadConsistency::Linearizable)
                .await
                .map_err(err)?;
            for p in info.partitions {
                crate::outln!(
                    "partition={} log_start={} high_watermark={} bytes={}",
                    p.partition,
                    p.log_start,
                    p.high_watermark,
                    p.bytes
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
                crate::outln!("partition={} offset={}", p.partition, p.offset);
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
                crate::outln!(
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
                crate::outln!("partition={partition} offset={offset}");
            }
        }
        StreamCommand::Delete { topic } => {
            streams.delete_topic(topic).await.map_err(err)?;
            crate::outln!("DELETED");
        }
        StreamCommand::Trim {
            topic,
            partition,
            max_len,
            min_id,
            limit,
        } => {
            let rule = match (max_len, min_id) {
                (Some(n), _) => TrimRule::MaxLen(n),
                (None, Some((timestamp_ms, offset))) => TrimRule::MinId { timestamp_ms, offset },
                (None, None) => return Err("give --max-len or --min-id".into()),
            };
            let removed = streams.trim(topic, partition, rule, limit).await.map_err(err)?;
            crate::outln!("TRIMMED {removed}");
        }
        StreamCommand::List => {
            for t in streams.list_topics().await.map_err(err)? {
                crate::outln!(
                    "{} partitions={} retention_ms={} retention_bytes={} mirror={}",
                    String::from_utf8_lossy(&t.name),
                    t.options.partitions,
                    t.options.retention.map_or(0, |d| d.as_millis()),
                    t.options.retention_bytes.unwrap_or(0),
                    t.options.mirror
                );
            }
        }
        StreamCommand::Seek {
            topic,
            partition,
            ago,
            at_ms,
        } => {
            let at = match (ago, at_ms) {
                (Some(ago), _) => SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
                (None, Some(ms)) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
                (None, None) => return Err("give --ago DURATION or --at-ms MS".into()),
            };
            let found = streams.offset_for_time(topic, partition, at).await.map_err(err)?;
            match found.timestamp_ms {
                Some(stamp) => crate::outln!("offset={} timestamp_ms={stamp}", found.offset),
                None => crate::outln!("offset={} (every record is older: the end)", found.offset),
            }
        }
        StreamCommand::Consume {
            topic,
            group,
            max,
            idle,
            start,
        } => {
            let start = match start.as_str() {
                "earliest" => StartFrom::Earliest,
                "latest" => StartFrom::Latest,
                other => return Err(format!("--start must be earliest or latest, got {other:?}")),
            };
            let options = ConsumerOptions {
                start,
                ..ConsumerOptions::default()
            };
            let mut consumer = streams
                .consumer(group, vec![topic.into_bytes()], options)
                .await
                .map_err(err)?;
            let mut consumed = 0u64;
            while max.is_none_or(|m| consumed < m) {
                match tokio::time::timeout(idle, consumer.next()).await {
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(err(e)),
                    Ok(Some(Ok(r))) => {
                        consumed += 1;
                        crate::outln!(
                            "{} {} {} {} {}",
                            String::from_utf8_lossy(&r.topic),
                            r.partition,
                            r.offset,
                            String::from_utf8_lossy(&r.key),
                            String::from_utf8_lossy(&r.value)
                        );
                    }
                }
            }
            consumer.close().await.map_err(err)?;
            eprintln!("consumed={consumed}");
        }
        StreamCommand::Replay { dlq, group, max } => {
            let options = ReplayOptions {
                group: group.map(String::into_bytes),
                max,
            };
            let summary = streams.replay_dead_letters(dlq, options).await.map_err(err)?;
            for (topic, count) in &summary.replayed {
                crate::outln!("{} replayed={count}", String::from_utf8_lossy(topic));
            }
            crate::outln!("replayed={} skipped={}", summary.total(), summary.skipped);
            if !summary.partitions_left.is_empty() {
                eprintln!(
                    "partitions left to another replay (run again to finish them): {:?}",
                    summary.partitions_left
                );
            }
        }
    }
    Ok(())
}

/// A record id as Redis streams write it: `MS-OFFSET`, or `MS` alone (offset 0).
fn parse_record_id(text: &str) -> Result<(u64, u64), String> {
    let number = |s: &str| s.parse::<u64>().map_err(|_| format!("{text:?} is not MS[-OFFSET]"));
    match text.split_once('-') {
        Some((ms, offset)) => Ok((number(ms)?, number(offset)?)),
        None => Ok((number(text)?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_record_id;

    #[test]
    fn record_ids_are_ms_then_an_optional_offset() {
        assert_eq!(parse_record_id("1700000000000-5"), Ok((1_700_000_000_000, 5)));
        assert_eq!(parse_record_id("42"), Ok((42, 0)));
        assert!(parse_record_id("x-1").is_err());
        assert!(parse_record_id("1-").is_err());
        assert!(parse_record_id("-1").is_err());
    }
}
