//! `basalt ratelimit ...`: check a key against a rate limit.

use std::time::Duration;

use basalt_client::Client;
use clap::Subcommand;

use super::err;
use crate::commands::parse_duration;

#[derive(Subcommand, Debug)]
pub enum RateLimitCommand {
    /// One atomic check: sliding window (--limit, --window) or token bucket (--rate, --per, --burst).
    Check {
        key: String,
        #[arg(long, required_unless_present = "rate")]
        limit: Option<u64>,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        window: Duration,
        #[arg(long, conflicts_with = "limit", requires = "burst")]
        rate: Option<u64>,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        per: Duration,
        #[arg(long)]
        burst: Option<u64>,
        #[arg(long, default_value_t = 1)]
        cost: u64,
        /// A sliding window over every region's count (with --limit).
        #[arg(long, requires = "limit")]
        global: bool,
    },
}

pub async fn rate_limit(client: &Client, command: RateLimitCommand) -> Result<(), String> {
    let RateLimitCommand::Check {
        key,
        limit,
        window,
        rate,
        per,
        burst,
        cost,
        global,
    } = command;
    let limiter = client.rate_limiter();
    let decision = match (limit, rate, burst) {
        (Some(limit), _, _) if global => limiter.check_global(key, limit, window, cost).await,
        (Some(limit), _, _) => limiter.check(key, limit, window, cost).await,
        (None, Some(rate), Some(burst)) => limiter.check_token_bucket(key, rate, per, burst, cost).await,
        _ => return Err("give --limit (sliding window) or --rate and --burst (token bucket)".into()),
    }
    .map_err(err)?;
    crate::outln!(
        "{} remaining={} retry_after_ms={} reset_at_ms={}",
        if decision.allowed { "ALLOWED" } else { "DENIED" },
        decision.remaining,
        decision.retry_after.as_millis(),
        decision.reset_at_ms
    );
    if decision.allowed {
        Ok(())
    } else {
        Err("rate limited".into())
    }
}
