//! `basalt queue ...`: create queues, enqueue, receive, ack (one or many), nack, extend, redrive,
//! purge, stats, list, delete.

use std::time::Duration;

use basalt_client::{AckResult, Client, NewMessage, QueueOptions, ReceiveOptions};
use clap::Subcommand;

use super::{consistency, err, hex, unhex, STALE_HELP};
use crate::commands::parse_duration;

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
    /// Acknowledge one delivery, or many in one request (each answered on its own).
    Ack {
        queue: String,
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Keep an in-flight delivery invisible for longer, counted from now.
    Extend {
        queue: String,
        receipt: String,
        #[arg(long, value_parser = parse_duration)]
        visibility_timeout: Duration,
    },
    /// Remove every message enqueued before now (visible, delayed or in flight).
    Purge { queue: String },
    /// Every queue, with its counts.
    List,
    /// Delete a queue with its messages (refused while another queue names it as its
    /// dead-letter queue). Prints DELETED, or DELETING when the rest of its messages are removed
    /// in the background (its name is free again once they are).
    Delete { queue: String },
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
            crate::outln!("{}", if created { "CREATED" } else { "UPDATED" });
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
            crate::outln!("{} id={}", if out.duplicate { "DUPLICATE" } else { "ENQUEUED" }, out.id);
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
                crate::outln!(
                    "id={} receipt={} delivery={} {}",
                    m.id,
                    hex(&m.receipt),
                    m.delivery,
                    String::from_utf8_lossy(&m.payload)
                );
            }
        }
        QueueCommand::Ack { queue, receipts } => {
            let receipts = receipts.iter().map(|r| unhex(r)).collect::<Result<Vec<_>, _>>()?;
            if let [receipt] = receipts.as_slice() {
                client.queue(queue).ack(receipt).await.map_err(err)?;
                crate::outln!("OK");
                return Ok(());
            }
            let results = client.queue(queue).ack_batch(&receipts).await.map_err(err)?;
            let mut stale = 0;
            for (receipt, result) in receipts.iter().zip(results) {
                match result {
                    AckResult::Acked => crate::outln!("{} OK", hex(receipt)),
                    AckResult::Stale { latest_delivery } => {
                        stale += 1;
                        crate::outln!("{} STALE latest_delivery={latest_delivery:?}", hex(receipt));
                    }
                }
            }
            if stale > 0 {
                return Err(format!("{stale} of {} receipts were stale", receipts.len()));
            }
        }
        QueueCommand::Extend {
            queue,
            receipt,
            visibility_timeout,
        } => {
            let until = client
                .queue(queue)
                .extend(&unhex(&receipt)?, visibility_timeout)
                .await
                .map_err(err)?;
            crate::outln!("invisible_until_ms={until}");
        }
        QueueCommand::Purge { queue } => {
            crate::outln!("purged={}", client.queue(queue).purge().await.map_err(err)?);
        }
        QueueCommand::Delete { queue } => {
            let finished = client.queue(queue).delete().await.map_err(err)?;
            crate::outln!("{}", if finished { "DELETED" } else { "DELETING" });
        }
        QueueCommand::List => {
            for q in client.list_queues().await.map_err(err)? {
                crate::outln!(
                    "{} messages={} in_flight={}",
                    String::from_utf8_lossy(&q.name),
                    q.messages,
                    q.in_flight
                );
            }
        }
        QueueCommand::Nack { queue, receipt, delay } => {
            client.queue(queue).nack(&unhex(&receipt)?, delay).await.map_err(err)?;
            crate::outln!("OK");
        }
        QueueCommand::Redrive { queue, max } => {
            crate::outln!("moved={}", client.queue(queue).redrive(max).await.map_err(err)?);
        }
        QueueCommand::Stats { queue, stale } => {
            let s = client.queue(queue).stats(consistency(stale)).await.map_err(err)?;
            crate::outln!("messages={} in_flight={}", s.messages, s.in_flight);
        }
    }
    Ok(())
}
