//! `basalt counter ...`: increment (bounded, or into a window), reset, delete, read (a counter,
//! or a range of windows), and move escrow between regions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basalt_client::{window, Client, CounterChange};
use clap::Subcommand;

use super::consistency;
use crate::commands::parse_duration;

/// Parses a window length: `minute`, `hour`, `day`, or a duration (`15m`).
pub fn parse_window(text: &str) -> Result<Duration, String> {
    match text {
        "minute" => Ok(window::MINUTE),
        "hour" => Ok(window::HOUR),
        "day" => Ok(window::DAY),
        other => parse_duration(other),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Subcommand, Debug)]
pub enum CounterCommand {
    /// Add to a counter; with --min/--max, refuse a change that would cross them.
    Incr {
        key: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        #[arg(long, allow_negative_numbers = true)]
        min: Option<i64>,
        #[arg(long, allow_negative_numbers = true)]
        max: Option<i64>,
        /// Add into the window holding the event instead (`minute`, `hour`, `day` or a
        /// duration): a windowed counter, read with `basalt counter windows`.
        #[arg(long, value_parser = parse_window, requires = "retention", conflicts_with_all = ["min", "max"])]
        window: Option<Duration>,
        /// How long each window is kept after it ends (`7d`); older events are refused.
        #[arg(long, value_parser = parse_duration, requires = "window")]
        retention: Option<Duration>,
        /// The event's time, Unix ms (default: the cluster's time).
        #[arg(long, requires = "window")]
        at_ms: Option<u64>,
        /// An expiring counter: one this creates expires this long after (`10m`); an existing
        /// one keeps its expiry. Read it back with `basalt counter ttl`.
        #[arg(long, value_parser = parse_duration, conflicts_with = "window")]
        ttl: Option<Duration>,
    },
    /// How long until an expiring counter expires, in ms (`none` without a TTL).
    Ttl {
        key: String,
        #[arg(long)]
        stale: bool,
    },
    /// Set a counter back to 0.
    Reset { key: String },
    /// Delete a counter (among regions: set it to 0).
    Delete { key: String },
    /// Read a windowed counter: each kept window overlapping the range, and their sum.
    Windows {
        key: String,
        #[arg(long, value_parser = parse_window)]
        window: Duration,
        /// The range's start, Unix ms.
        #[arg(long, conflicts_with = "last", required_unless_present = "last")]
        from_ms: Option<u64>,
        /// The range's end, Unix ms, excluded (default: now).
        #[arg(long)]
        to_ms: Option<u64>,
        /// The range is this long, up to its end (`24h`).
        #[arg(long, value_parser = parse_duration)]
        last: Option<Duration>,
        #[arg(long)]
        stale: bool,
    },
    Get {
        key: String,
        #[arg(long)]
        stale: bool,
    },
    /// With regions: give some of this region's escrow of a counter to another region, which may
    /// then decrement it that much further toward a lower bound while partitioned.
    Transfer {
        key: String,
        /// The region that receives it.
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        /// The lower bound this region keeps its share of (default 0).
        #[arg(long, allow_negative_numbers = true, conflicts_with = "max")]
        min: Option<i64>,
        /// Give room toward this upper bound instead.
        #[arg(long, allow_negative_numbers = true)]
        max: Option<i64>,
    },
}

/// Runs one `basalt counter` verb.
pub async fn counter(client: &Client, command: CounterCommand) -> Result<(), String> {
    match command {
        CounterCommand::Incr {
            key,
            by,
            min,
            max,
            window,
            retention,
            at_ms,
            ttl,
        } => {
            let counter = client.counter(key);
            let value = match (window, retention, ttl) {
                (Some(window), Some(retention), _) => counter.incr_window(by, window, retention, at_ms).await,
                (_, _, Some(ttl)) => {
                    counter
                        .apply(CounterChange::IncrExpiring {
                            delta: by,
                            min,
                            max,
                            ttl,
                        })
                        .await
                }
                _ => counter.incr_bounded(by, min, max).await,
            }
            .map_err(|e| e.to_string())?;
            crate::outln!("{value}");
        }
        CounterCommand::Reset { key } => {
            client.counter(key).reset().await.map_err(|e| e.to_string())?;
            crate::outln!("0");
        }
        CounterCommand::Delete { key } => {
            client.counter(key).delete().await.map_err(|e| e.to_string())?;
            crate::outln!("deleted");
        }
        CounterCommand::Windows {
            key,
            window,
            from_ms,
            to_ms,
            last,
            stale,
        } => {
            let to_ms = to_ms.unwrap_or_else(now_ms);
            let from_ms = match (from_ms, last) {
                (Some(from), _) => from,
                (None, Some(last)) => to_ms.saturating_sub(u64::try_from(last.as_millis()).unwrap_or(u64::MAX)),
                (None, None) => return Err("give --from-ms or --last".into()),
            };
            let read = client
                .counter(key)
                .windows_with(window, from_ms, to_ms, consistency(stale))
                .await
                .map_err(|e| e.to_string())?;
            for (start_ms, value) in &read.windows {
                crate::outln!("{start_ms} {value}");
            }
            crate::outln!("sum {}", read.sum);
        }
        CounterCommand::Transfer {
            key,
            to,
            amount,
            min,
            max,
        } => {
            let counter = client.counter(key);
            let value = match max {
                Some(max) => counter.transfer_headroom(&to, amount, max).await,
                None => counter.transfer_escrow(&to, amount, min).await,
            }
            .map_err(|e| e.to_string())?;
            crate::outln!("{value}");
        }
        CounterCommand::Ttl { key, stale } => {
            let reads = client
                .counters()
                .read(vec![key.into_bytes()], consistency(stale))
                .await
                .map_err(|e| e.to_string())?;
            match reads.first().and_then(|read| read.expires_at_ms) {
                Some(at) => crate::outln!("{}", at.saturating_sub(now_ms())),
                None => crate::outln!("none"),
            }
        }
        CounterCommand::Get { key, stale } => {
            let consistency = consistency(stale);
            crate::outln!(
                "{}",
                client
                    .counter(key)
                    .get_with(consistency)
                    .await
                    .map_err(|e| e.to_string())?
            );
        }
    }
    Ok(())
}
