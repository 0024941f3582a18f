//! The ledger operations of a command. Their payloads (accounts, transfers) are in `crate::ledger`.

use serde::{Deserialize, Serialize};

use crate::ledger::{Account, Transfer};

/// The ledger operations. Applied by `crate::apply::ledger`; homed (they apply in the home
/// region only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOp {
    CreateAccounts {
        accounts: Vec<Account>,
    },
    CreateTransfers {
        transfers: Vec<Transfer>,
    },
    /// Voids pending transfers whose timeout has passed (judged by the entry stamp), at most
    /// `limit`. Proposed by the leader from time to time.
    ExpirePending {
        limit: u32,
    },
}

impl std::fmt::Display for LedgerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerOp::CreateAccounts { accounts } => write!(f, "ledger create {} accounts", accounts.len()),
            LedgerOp::CreateTransfers { transfers } => write!(f, "ledger create {} transfers", transfers.len()),
            LedgerOp::ExpirePending { limit } => write!(f, "ledger expire pending (limit {limit})"),
        }
    }
}
