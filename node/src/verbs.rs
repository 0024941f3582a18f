//! CLI verbs for leases, rate limits and the ledger (`basalt lease|ratelimit|ledger ...`).

use std::time::Duration;

use basalt_client::ledger::{account_flags, transfer_flags, Account, AccountFilter, Transfer};
use basalt_client::{Acquired, Client, ReadConsistency};
use clap::Subcommand;

use crate::cli::parse_duration;

pub(crate) const STALE_HELP: &str = "Read the answering node's own copy, possibly stale: in a region that is not the \
data's home, that region's copy, served even when the home is unreachable";

pub(crate) fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

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

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Create an account.
    CreateAccount {
        #[arg(long)]
        id: u128,
        #[arg(long)]
        ledger: u32,
        #[arg(long)]
        code: u16,
        /// Comma-separated: debits_must_not_exceed_credits, credits_must_not_exceed_debits, history, closed.
        #[arg(long, default_value = "")]
        flags: String,
    },
    /// Create a transfer (plain, pending, or resolving a pending one).
    Transfer {
        #[arg(long)]
        id: u128,
        #[arg(long, default_value_t = 0)]
        debit: u128,
        #[arg(long, default_value_t = 0)]
        credit: u128,
        #[arg(long, default_value_t = 0)]
        amount: u128,
        #[arg(long, default_value_t = 0)]
        ledger: u32,
        #[arg(long, default_value_t = 0)]
        code: u16,
        /// Reserve the amount (two-phase); resolve later with --post or --void.
        #[arg(long)]
        pending: bool,
        /// Seconds a pending transfer may stay pending.
        #[arg(long, default_value_t = 0)]
        timeout: u32,
        /// Post this pending transfer (amount 0: in full).
        #[arg(long, conflicts_with_all = ["pending", "void"])]
        post: Option<u128>,
        /// Void this pending transfer.
        #[arg(long, conflicts_with = "pending")]
        void: Option<u128>,
    },
    /// Show accounts.
    Accounts {
        ids: Vec<u128>,
        #[arg(long, help = STALE_HELP)]
        stale: bool,
    },
    /// Show an account's transfers, oldest first.
    Transfers {
        account: u128,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
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
                Acquired::Granted(g) => println!("GRANTED token={} expires_at_ms={}", g.token, g.expires_at_ms),
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
            println!("RENEWED token={} expires_at_ms={}", g.token, g.expires_at_ms);
        }
        LeaseCommand::Release { name, holder, token } => {
            let was_live = client.lease(name).release(holder, token).await.map_err(err)?;
            println!("{}", if was_live { "RELEASED" } else { "RELEASED (had expired)" });
        }
        LeaseCommand::Get { name, stale } => {
            match client.lease(name.clone()).get(consistency(stale)).await.map_err(err)? {
                Some(s) => println!(
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
    println!(
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

fn parse_account_flags(text: &str) -> Result<u16, String> {
    let mut flags = 0;
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        flags |= match name {
            "debits_must_not_exceed_credits" => account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            "credits_must_not_exceed_debits" => account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            "history" => account_flags::HISTORY,
            "closed" => account_flags::CLOSED,
            other => return Err(format!("unknown account flag {other:?}")),
        };
    }
    Ok(flags)
}

fn report(failures: Vec<basalt_client::ledger::EventFailure>) -> Result<(), String> {
    match failures.first() {
        None => {
            println!("OK");
            Ok(())
        }
        Some(f) => Err(f.result.clone()),
    }
}

pub async fn ledger(client: &Client, command: LedgerCommand) -> Result<(), String> {
    let ledger = client.ledger();
    match command {
        LedgerCommand::CreateAccount {
            id,
            ledger: l,
            code,
            flags,
        } => {
            let account = Account {
                id,
                ledger: l,
                code,
                flags: parse_account_flags(&flags)?,
                ..Default::default()
            };
            report(ledger.create_accounts(&[account]).await.map_err(err)?)
        }
        LedgerCommand::Transfer {
            id,
            debit,
            credit,
            amount,
            ledger: l,
            code,
            pending,
            timeout,
            post,
            void,
        } => {
            let (flags, pending_id) = match (pending, post, void) {
                (true, _, _) => (transfer_flags::PENDING, 0),
                (_, Some(p), _) => (transfer_flags::POST_PENDING_TRANSFER, p),
                (_, _, Some(p)) => (transfer_flags::VOID_PENDING_TRANSFER, p),
                _ => (0, 0),
            };
            let transfer = Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                pending_id,
                timeout,
                ledger: l,
                code,
                flags,
                ..Default::default()
            };
            report(ledger.create_transfers(&[transfer]).await.map_err(err)?)
        }
        LedgerCommand::Accounts { ids, stale } => {
            println!(
                "{:<12} {:>6} {:>6} {:>14} {:>14} {:>14} {:>14}",
                "id", "ledger", "code", "debits_pend", "debits_post", "credits_pend", "credits_post"
            );
            for a in ledger
                .lookup_accounts_with(&ids, consistency(stale))
                .await
                .map_err(err)?
            {
                println!(
                    "{:<12} {:>6} {:>6} {:>14} {:>14} {:>14} {:>14}",
                    a.id, a.ledger, a.code, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted
                );
            }
            Ok(())
        }
        LedgerCommand::Transfers { account, limit } => {
            for t in ledger
                .get_account_transfers(&AccountFilter::all(account, limit))
                .await
                .map_err(err)?
            {
                println!(
                    "id={} debit={} credit={} amount={} flags={:#x} pending_id={} timestamp={}",
                    t.id, t.debit_account_id, t.credit_account_id, t.amount, t.flags, t.pending_id, t.timestamp
                );
            }
            Ok(())
        }
    }
}
