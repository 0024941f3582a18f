//! The double-entry ledger's data model, after TigerBeetle's: accounts, transfers, their flags and
//! one result code per rejection. The apply logic lives in `apply::ledger`.
//!
//! Amounts are u128 in the ledger's smallest unit. Timestamps are unique and strictly increasing
//! across all accounts and transfers: nanoseconds derived from the entry's HLC stamp, bumped by one
//! per event where several events share a millisecond.

use serde::{Deserialize, Serialize};

/// Flags of an [`Account`] (bit values as in TigerBeetle).
pub mod account_flags {
    /// This event and the next one succeed or fail together.
    pub const LINKED: u16 = 1 << 0;
    /// debits_pending + debits_posted may never exceed credits_posted.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 1;
    /// credits_pending + credits_posted may never exceed debits_posted.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 2;
    /// Keep the balances after every transfer, for `get_account_balances`.
    pub const HISTORY: u16 = 1 << 3;
    /// No transfer may debit or credit this account.
    pub const CLOSED: u16 = 1 << 5;
    pub const KNOWN: u16 = LINKED | DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS | HISTORY | CLOSED;
}

/// Flags of a [`Transfer`] (bit values as in TigerBeetle).
pub mod transfer_flags {
    /// This event and the next one succeed or fail together.
    pub const LINKED: u16 = 1 << 0;
    /// Reserve the amount (pending) instead of moving it.
    pub const PENDING: u16 = 1 << 1;
    /// Post the pending transfer `pending_id`, in full or in part.
    pub const POST_PENDING_TRANSFER: u16 = 1 << 2;
    /// Void the pending transfer `pending_id`.
    pub const VOID_PENDING_TRANSFER: u16 = 1 << 3;
    pub const KNOWN: u16 = LINKED | PENDING | POST_PENDING_TRANSFER | VOID_PENDING_TRANSFER;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Set by the cluster when created; must be 0 in a create request.
    pub timestamp: u64,
}

impl Account {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    pub fn balance(&self, timestamp: u64) -> AccountBalance {
        AccountBalance {
            debits_pending: self.debits_pending,
            debits_posted: self.debits_posted,
            credits_pending: self.credits_pending,
            credits_posted: self.credits_posted,
            timestamp,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Unique; the idempotency key of the transfer.
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    /// For post: 0 posts the full pending amount. For void: 0 or the pending amount.
    pub amount: u128,
    /// The pending transfer a post or void resolves.
    pub pending_id: u128,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Seconds a pending transfer may stay pending before it is voided (0: never).
    pub timeout: u32,
    pub ledger: u32,
    pub code: u16,
    pub flags: u16,
    /// Set by the cluster when created; must be 0 in a create request.
    pub timestamp: u64,
}

impl Transfer {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Where a pending transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingStatus {
    Pending,
    Posted,
    Voided,
    Expired,
}

/// An account's balances at one moment (kept for accounts with the `HISTORY` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBalance {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub timestamp: u64,
}

macro_rules! result_codes {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable name (as in TigerBeetle), used on the wire and in docs.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

result_codes! {
    /// Why creating one account failed.
    AccountResult {
        LinkedEventFailed = "linked_event_failed",
        LinkedEventChainOpen = "linked_event_chain_open",
        TimestampMustBeZero = "timestamp_must_be_zero",
        ReservedFlag = "reserved_flag",
        IdMustNotBeZero = "id_must_not_be_zero",
        IdMustNotBeIntMax = "id_must_not_be_int_max",
        FlagsAreMutuallyExclusive = "flags_are_mutually_exclusive",
        DebitsPendingMustBeZero = "debits_pending_must_be_zero",
        DebitsPostedMustBeZero = "debits_posted_must_be_zero",
        CreditsPendingMustBeZero = "credits_pending_must_be_zero",
        CreditsPostedMustBeZero = "credits_posted_must_be_zero",
        LedgerMustNotBeZero = "ledger_must_not_be_zero",
        CodeMustNotBeZero = "code_must_not_be_zero",
        ExistsWithDifferentFields = "exists_with_different_fields",
        Exists = "exists",
    }
}

result_codes! {
    /// Why creating one transfer failed.
    TransferResult {
        LinkedEventFailed = "linked_event_failed",
        LinkedEventChainOpen = "linked_event_chain_open",
        TimestampMustBeZero = "timestamp_must_be_zero",
        ReservedFlag = "reserved_flag",
        IdMustNotBeZero = "id_must_not_be_zero",
        IdMustNotBeIntMax = "id_must_not_be_int_max",
        FlagsAreMutuallyExclusive = "flags_are_mutually_exclusive",
        DebitAccountIdMustNotBeZero = "debit_account_id_must_not_be_zero",
        DebitAccountIdMustNotBeIntMax = "debit_account_id_must_not_be_int_max",
        CreditAccountIdMustNotBeZero = "credit_account_id_must_not_be_zero",
        CreditAccountIdMustNotBeIntMax = "credit_account_id_must_not_be_int_max",
        AccountsMustBeDifferent = "accounts_must_be_different",
        PendingIdMustBeZero = "pending_id_must_be_zero",
        PendingIdMustNotBeZero = "pending_id_must_not_be_zero",
        PendingIdMustNotBeIntMax = "pending_id_must_not_be_int_max",
        PendingIdMustBeDifferent = "pending_id_must_be_different",
        TimeoutReservedForPendingTransfer = "timeout_reserved_for_pending_transfer",
        AmountMustNotBeZero = "amount_must_not_be_zero",
        LedgerMustNotBeZero = "ledger_must_not_be_zero",
        CodeMustNotBeZero = "code_must_not_be_zero",
        DebitAccountNotFound = "debit_account_not_found",
        CreditAccountNotFound = "credit_account_not_found",
        AccountsMustHaveTheSameLedger = "accounts_must_have_the_same_ledger",
        TransferMustHaveTheSameLedgerAsAccounts = "transfer_must_have_the_same_ledger_as_accounts",
        PendingTransferNotFound = "pending_transfer_not_found",
        PendingTransferNotPending = "pending_transfer_not_pending",
        PendingTransferHasDifferentDebitAccountId = "pending_transfer_has_different_debit_account_id",
        PendingTransferHasDifferentCreditAccountId = "pending_transfer_has_different_credit_account_id",
        PendingTransferHasDifferentLedger = "pending_transfer_has_different_ledger",
        PendingTransferHasDifferentCode = "pending_transfer_has_different_code",
        ExceedsPendingTransferAmount = "exceeds_pending_transfer_amount",
        PendingTransferHasDifferentAmount = "pending_transfer_has_different_amount",
        PendingTransferAlreadyPosted = "pending_transfer_already_posted",
        PendingTransferAlreadyVoided = "pending_transfer_already_voided",
        PendingTransferExpired = "pending_transfer_expired",
        ExistsWithDifferentFields = "exists_with_different_fields",
        Exists = "exists",
        OverflowsDebitsPending = "overflows_debits_pending",
        OverflowsCreditsPending = "overflows_credits_pending",
        OverflowsDebitsPosted = "overflows_debits_posted",
        OverflowsCreditsPosted = "overflows_credits_posted",
        OverflowsTimeout = "overflows_timeout",
        ExceedsCredits = "exceeds_credits",
        ExceedsDebits = "exceeds_debits",
        DebitAccountClosed = "debit_account_closed",
        CreditAccountClosed = "credit_account_closed",
    }
}

/// Which transfers of an account `get_account_transfers` / `get_account_balances` return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountFilter {
    pub account_id: u128,
    /// Inclusive bounds; 0 means unbounded.
    pub timestamp_min: u64,
    pub timestamp_max: u64,
    pub limit: u32,
    pub debits: bool,
    pub credits: bool,
    /// Newest first.
    pub reversed: bool,
}
