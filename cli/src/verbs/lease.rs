//! `basalt lease ...`: acquire, renew, release and read leases with fencing tokens.

use std::time::Duration;

use basalt_client::{Acquired, Client};
use clap::Subcommand;

use super::{consistency, err, STALE_HELP};
use crate::commands::parse_duration;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Take a lease; prints the fencing token, or who holds it.
    Acquire {
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// If held, wait up to this long for it.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        wait: Duration,
    },
    Renew {
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long)]
        token: u64,
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
    },
    Release {
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long)]
        token: u64,
    },
    /// Who holds a lease.
    Get {
        name: String,
        #[arg(long, help = STALE_HELP)]
        stale: bool,
    },
}

pub async fn lease(client: &Client, command: LeaseCommand) -> Result<(), String> {
    match command {
        LeaseCommand::Acquire {
            name,
            holder,
            ttl,
            wait,
        } => {
            match client
                .lease(name)
                .acquire_waiting(holder, ttl, wait)
                .await
                .map_err(err)?
            {
                Acquired::Granted(g) => crate::outln!("GRANTED token={} expires_at_ms={}", g.token, g.expires_at_ms),
                Acquired::Held { holder, expires_at_ms } => {
                    return Err(format!(
                        "held by {:?} until {expires_at_ms}",
                        String::from_utf8_lossy(&holder)
                    ))
                }
            }
        }
        LeaseCommand::Renew {
            name,
            holder,
            token,
            ttl,
        } => {
            let g = client.lease(name).renew(holder, token, ttl).await.map_err(err)?;
            crate::outln!("RENEWED token={} expires_at_ms={}", g.token, g.expires_at_ms);
        }
        LeaseCommand::Release { name, holder, token } => {
            let was_live = client.lease(name).release(holder, token).await.map_err(err)?;
            crate::outln!("{}", if was_live { "RELEASED" } else { "RELEASED (had expired)" });
        }
        LeaseCommand::Get { name, stale } => {
            match client.lease(name.clone()).get(consistency(stale)).await.map_err(err)? {
                Some(s) => crate::outln!(
                    "holder={} token={} expires_at_ms={}",
                    String::from_utf8_lossy(&s.holder),
                    s.token,
                    s.expires_at_ms
                ),
                None => return Err(format!("lease {name:?} is not held")),
            }
        }
    }
    Ok(())
}
