//! `basalt ledger ...`: double-entry accounts and transfers.

use basalt_client::ledger::{account_flags, transfer_flags, Account, AccountFilter, Transfer};
use basalt_client::Client;
use clap::Subcommand;

use super::{consistency, err, STALE_HELP};

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
            crate::outln!("OK");
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
            crate::outln!(
                "{:<12} {:>6} {:>6} {:>14} {:>14} {:>14} {:>14}",
                "id",
                "ledger",
                "code",
                "debits_pend",
                "debits_post",
                "credits_pend",
                "credits_post"
            );
            for a in ledger
                .lookup_accounts_with(&ids, consistency(stale))
                .await
                .map_err(err)?
            {
                crate::outln!(
                    "{:<12} {:>6} {:>6} {:>14} {:>14} {:>14} {:>14}",
                    a.id,
                    a.ledger,
                    a.code,
                    a.debits_pending,
                    a.debits_posted,
                    a.credits_pending,
                    a.credits_posted
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
                crate::outln!(
                    "id={} debit={} credit={} amount={} flags={:#x} pending_id={} timestamp={}",
                    t.id,
                    t.debit_account_id,
                    t.credit_account_id,
                    t.amount,
                    t.flags,
                    t.pending_id,
                    t.timestamp
                );
            }
            Ok(())
        }
    }
}
