//! The double-entry ledger (TigerBeetle's model): batched account and transfer creation with one
//! result per failed event, lookups and account history. Semantics: docs/data-types/ledger.md.

use crate::client::{Client, ReadConsistency};
use crate::error::ClientError;
use crate::pb;
use crate::pb::ledger_client::LedgerClient;

/// Account flags (TigerBeetle's bit values).
pub mod account_flags {
    pub const LINKED: u16 = 1 << 0;
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 1;
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 2;
    pub const HISTORY: u16 = 1 << 3;
    pub const CLOSED: u16 = 1 << 5;
}

/// Transfer flags (TigerBeetle's bit values).
pub mod transfer_flags {
    pub const LINKED: u16 = 1 << 0;
    pub const PENDING: u16 = 1 << 1;
    pub const POST_PENDING_TRANSFER: u16 = 1 << 2;
    pub const VOID_PENDING_TRANSFER: u16 = 1 << 3;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
}

/// A transfer as looked up: with, for a pending transfer, where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub transfer: Transfer,
    /// `pending`, `posted`, `voided` or `expired` for pending transfers; empty otherwise.
    pub pending_status: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountBalance {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub timestamp: u64,
}

/// A failed event of a batch: its index and its stable result code (e.g. `exceeds_credits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFailure {
    pub index: u32,
    pub result: String,
}

/// Which of an account's transfers or balances to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountFilter {
    pub account_id: u128,
    pub timestamp_min: u64,
    pub timestamp_max: u64,
    pub limit: u32,
    pub debits: bool,
    pub credits: bool,
    pub reversed: bool,
}

impl AccountFilter {
    /// Every transfer of `account_id`, oldest first, at most `limit`.
    pub fn all(account_id: u128, limit: u32) -> AccountFilter {
        AccountFilter {
            account_id,
            timestamp_min: 0,
            timestamp_max: 0,
            limit,
            debits: true,
            credits: true,
            reversed: false,
        }
    }
}

fn bytes(v: u128) -> Vec<u8> {
    if v == 0 {
        Vec::new()
    } else {
        v.to_be_bytes().to_vec()
    }
}

fn u128_from(b: &[u8]) -> Result<u128, ClientError> {
    if b.is_empty() {
        return Ok(0);
    }
    let array: [u8; 16] = b
        .try_into()
        .map_err(|_| ClientError::Protocol(format!("u128 field of {} bytes", b.len())))?;
    Ok(u128::from_be_bytes(array))
}

fn u16_from(v: u32) -> Result<u16, ClientError> {
    u16::try_from(v).map_err(|_| ClientError::Protocol(format!("u16 field holds {v}")))
}

impl From<&Account> for pb::Account {
    fn from(a: &Account) -> pb::Account {
        pb::Account {
            id: bytes(a.id),
            debits_pending: bytes(a.debits_pending),
            debits_posted: bytes(a.debits_posted),
            credits_pending: bytes(a.credits_pending),
            credits_posted: bytes(a.credits_posted),
            user_data_128: bytes(a.user_data_128),
            user_data_64: a.user_data_64,
            user_data_32: a.user_data_32,
            ledger: a.ledger,
            code: a.code.into(),
            flags: a.flags.into(),
            timestamp: a.timestamp,
        }
    }
}

impl TryFrom<pb::Account> for Account {
    type Error = ClientError;

    fn try_from(a: pb::Account) -> Result<Account, ClientError> {
        Ok(Account {
            id: u128_from(&a.id)?,
            debits_pending: u128_from(&a.debits_pending)?,
            debits_posted: u128_from(&a.debits_posted)?,
            credits_pending: u128_from(&a.credits_pending)?,
            credits_posted: u128_from(&a.credits_posted)?,
            user_data_128: u128_from(&a.user_data_128)?,
            user_data_64: a.user_data_64,
            user_data_32: a.user_data_32,
            ledger: a.ledger,
            code: u16_from(a.code)?,
            flags: u16_from(a.flags)?,
            timestamp: a.timestamp,
        })
    }
}

impl From<&Transfer> for pb::Transfer {
    fn from(t: &Transfer) -> pb::Transfer {
        pb::Transfer {
            id: bytes(t.id),
            debit_account_id: bytes(t.debit_account_id),
            credit_account_id: bytes(t.credit_account_id),
            amount: bytes(t.amount),
            pending_id: bytes(t.pending_id),
            user_data_128: bytes(t.user_data_128),
            user_data_64: t.user_data_64,
            user_data_32: t.user_data_32,
            timeout: t.timeout,
            ledger: t.ledger,
            code: t.code.into(),
            flags: t.flags.into(),
            timestamp: t.timestamp,
            pending_status: String::new(),
        }
    }
}

impl TryFrom<pb::Transfer> for TransferRecord {
    type Error = ClientError;

    fn try_from(t: pb::Transfer) -> Result<TransferRecord, ClientError> {
        Ok(TransferRecord {
            transfer: Transfer {
                id: u128_from(&t.id)?,
                debit_account_id: u128_from(&t.debit_account_id)?,
                credit_account_id: u128_from(&t.credit_account_id)?,
                amount: u128_from(&t.amount)?,
                pending_id: u128_from(&t.pending_id)?,
                user_data_128: u128_from(&t.user_data_128)?,
                user_data_64: t.user_data_64,
                user_data_32: t.user_data_32,
                timeout: t.timeout,
                ledger: t.ledger,
                code: u16_from(t.code)?,
                flags: u16_from(t.flags)?,
                timestamp: t.timestamp,
            },
            pending_status: t.pending_status,
        })
    }
}

fn filter(f: &AccountFilter, consistency: ReadConsistency) -> pb::AccountFilter {
    pb::AccountFilter {
        account_id: bytes(f.account_id),
        timestamp_min: f.timestamp_min,
        timestamp_max: f.timestamp_max,
        limit: f.limit,
        debits: f.debits,
        credits: f.credits,
        reversed: f.reversed,
        stale: consistency == ReadConsistency::Stale,
    }
}

pub(crate) fn failures(reply: pb::CreateResponse) -> Vec<EventFailure> {
    reply
        .failures
        .into_iter()
        .map(|f| EventFailure {
            index: f.index,
            result: f.result,
        })
        .collect()
}

/// The ledger. Get one with [`Client::ledger`].
#[derive(Clone)]
pub struct Ledger {
    pub(crate) client: Client,
}

impl Ledger {
    /// Creates accounts in one Raft entry; returns the events that failed (empty: all created).
    pub async fn create_accounts(&self, accounts: &[Account]) -> Result<Vec<EventFailure>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CreateAccountsRequest {
            header: Some(header),
            accounts: accounts.iter().map(pb::Account::from).collect(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(LedgerClient, c).create_accounts(r).await
            })
            .await?;
        Ok(failures(reply))
    }

    /// Creates transfers in one Raft entry, in order; returns the events that failed. A transfer
    /// id applies at most once, even across retries and leader changes.
    pub async fn create_transfers(&self, transfers: &[Transfer]) -> Result<Vec<EventFailure>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CreateTransfersRequest {
            header: Some(header),
            transfers: transfers.iter().map(pb::Transfer::from).collect(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(LedgerClient, c).create_transfers(r).await
            })
            .await?;
        Ok(failures(reply))
    }

    /// The accounts that exist among `ids`, in the order asked (a linearizable read).
    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, ClientError> {
        self.lookup_accounts_with(ids, ReadConsistency::Linearizable).await
    }

    /// [`Ledger::lookup_accounts`] at a chosen consistency. `Stale` is served by the node asked,
    /// from its own state: outside the ledger's home region, from that region's copy, a few
    /// link latencies behind the home but always a state the home had (every invariant holds).
    pub async fn lookup_accounts_with(
        &self,
        ids: &[u128],
        consistency: ReadConsistency,
    ) -> Result<Vec<Account>, ClientError> {
        let message = pb::LookupRequest {
            ids: ids.iter().map(|id| id.to_be_bytes().to_vec()).collect(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(LedgerClient, c).lookup_accounts(r).await
            })
            .await?;
        reply.accounts.into_iter().map(Account::try_from).collect()
    }

    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<TransferRecord>, ClientError> {
        self.lookup_transfers_with(ids, ReadConsistency::Linearizable).await
    }

    /// [`Ledger::lookup_transfers`] at a chosen consistency (see [`Ledger::lookup_accounts_with`]).
    pub async fn lookup_transfers_with(
        &self,
        ids: &[u128],
        consistency: ReadConsistency,
    ) -> Result<Vec<TransferRecord>, ClientError> {
        let message = pb::LookupRequest {
            ids: ids.iter().map(|id| id.to_be_bytes().to_vec()).collect(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(LedgerClient, c).lookup_transfers(r).await
            })
            .await?;
        reply.transfers.into_iter().map(TransferRecord::try_from).collect()
    }

    /// An account's transfers, oldest first (or newest first with `reversed`). Page by passing the
    /// last timestamp seen (+1, or -1 reversed) as the next bound.
    pub async fn get_account_transfers(&self, f: &AccountFilter) -> Result<Vec<Transfer>, ClientError> {
        self.get_account_transfers_with(f, ReadConsistency::Linearizable).await
    }

    /// [`Ledger::get_account_transfers`] at a chosen consistency (see
    /// [`Ledger::lookup_accounts_with`]).
    pub async fn get_account_transfers_with(
        &self,
        f: &AccountFilter,
        consistency: ReadConsistency,
    ) -> Result<Vec<Transfer>, ClientError> {
        let reply = self
            .client
            .unary(false, filter(f, consistency), |c, r| async move {
                crate::service_client!(LedgerClient, c).get_account_transfers(r).await
            })
            .await?;
        reply
            .transfers
            .into_iter()
            .map(|t| TransferRecord::try_from(t).map(|r| r.transfer))
            .collect()
    }

    /// The balances after each transfer of an account created with the `HISTORY` flag.
    pub async fn get_account_balances(&self, f: &AccountFilter) -> Result<Vec<AccountBalance>, ClientError> {
        self.get_account_balances_with(f, ReadConsistency::Linearizable).await
    }

    /// [`Ledger::get_account_balances`] at a chosen consistency (see
    /// [`Ledger::lookup_accounts_with`]).
    pub async fn get_account_balances_with(
        &self,
        f: &AccountFilter,
        consistency: ReadConsistency,
    ) -> Result<Vec<AccountBalance>, ClientError> {
        let reply = self
            .client
            .unary(false, filter(f, consistency), |c, r| async move {
                crate::service_client!(LedgerClient, c).get_account_balances(r).await
            })
            .await?;
        reply
            .balances
            .into_iter()
            .map(|b| {
                Ok(AccountBalance {
                    debits_pending: u128_from(&b.debits_pending)?,
                    debits_posted: u128_from(&b.debits_posted)?,
                    credits_pending: u128_from(&b.credits_pending)?,
                    credits_posted: u128_from(&b.credits_posted)?,
                    timestamp: b.timestamp,
                })
            })
            .collect()
    }
}
