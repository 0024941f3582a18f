//! `basalt counter ...`: increment (bounded or not), reset, read, and move escrow between regions.

use basalt_client::Client;
use clap::Subcommand;

use super::consistency;

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
    },
    /// Set a counter back to 0.
    Reset { key: String },
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
        CounterCommand::Incr { key, by, min, max } => {
            let value = client
                .counter(key)
                .incr_bounded(by, min, max)
                .await
                .map_err(|e| e.to_string())?;
            println!("{value}");
        }
        CounterCommand::Reset { key } => {
            client.counter(key).reset().await.map_err(|e| e.to_string())?;
            println!("0");
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
            println!("{value}");
        }
        CounterCommand::Get { key, stale } => {
            let consistency = consistency(stale);
            println!(
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
