//! Double-entry ledger apply, after TigerBeetle: accounts and transfers created in batches, each
//! event succeeding or failing with its own result code, `linked` events all-or-nothing,
//! two-phase transfers (pending, then post or void exactly once, or expiry).
//!
//! Invariants (property-tested in `tests.rs`): per ledger, the sum of debits_posted equals the sum
//! of credits_posted and the sum of debits_pending equals the sum of credits_pending; no account
//! crosses the limit its flags set; a transfer id applies at most once.

use serde::{Deserialize, Serialize};

use super::{corrupt, load, save, OpContext, View, WriteSet};
use crate::command::{LedgerOp, OpError, Response};
use crate::ledger::{
    account_flags as af, transfer_flags as tf, Account, AccountBalance, AccountFilter, AccountResult, PendingStatus,
    Transfer, TransferResult,
};
use crate::state::{KeyRange, KeyValue, StoreError, StoreRead, Table};

/// Applies one ledger op.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &LedgerOp,
) -> Result<Response, StoreError> {
    match op {
        LedgerOp::CreateAccounts { accounts } => create_accounts(view, ctx.now_ms, accounts),
        LedgerOp::CreateTransfers { transfers } => create_transfers(view, ctx.now_ms, transfers),
        LedgerOp::ExpirePending { limit } => expire_pending(view, ctx.now_ms, *limit),
    }
}

const LAST_TIMESTAMP_KEY: &[u8] = b"ledger_last_timestamp";
const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A transfer as stored: as created (with its timestamp), plus where it stands if pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTransfer {
    pub transfer: Transfer,
    pub status: Option<PendingStatus>,
}

/// Which side of a transfer an account was on, in the account-transfers index.
const SIDE_DEBIT: u8 = 0;
const SIDE_CREDIT: u8 = 1;

fn id_key(id: u128) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn account_time_key(account_id: u128, timestamp: u64) -> Vec<u8> {
    let mut k = id_key(account_id);
    k.extend_from_slice(&timestamp.to_be_bytes());
    k
}

fn expiry_key(expires_at: u64, transfer_id: u128) -> Vec<u8> {
    let mut k = expires_at.to_be_bytes().to_vec();
    k.extend_from_slice(&transfer_id.to_be_bytes());
    k
}

pub(crate) fn account<S: StoreRead + ?Sized>(store: &S, id: u128) -> Result<Option<Account>, StoreError> {
    load(store, Table::LedgerAccount, &id_key(id))
}

fn stored_transfer<S: StoreRead + ?Sized>(store: &S, id: u128) -> Result<Option<StoredTransfer>, StoreError> {
    load(store, Table::LedgerTransfer, &id_key(id))
}

/// Hands out unique, strictly increasing event timestamps: nanoseconds from the entry stamp,
/// bumped past the last one handed out.
struct Clock {
    last: u64,
    now_ns: u64,
}

impl Clock {
    fn load<S: StoreRead>(view: &View<'_, S>, now_ms: u64) -> Result<Clock, StoreError> {
        let last = view
            .get(Table::Meta, LAST_TIMESTAMP_KEY)?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Clock {
            last,
            now_ns: now_ms.saturating_mul(NANOS_PER_MS),
        })
    }

    fn next(&mut self) -> u64 {
        self.last = self.now_ns.max(self.last + 1);
        self.last
    }

    fn save<S: StoreRead>(&self, view: &mut View<'_, S>) {
        view.put(
            Table::Meta,
            LAST_TIMESTAMP_KEY.to_vec(),
            self.last.to_be_bytes().to_vec(),
        );
    }
}

/// Runs a batch of events chain by chain: a chain is a run of events with the linked flag plus the
/// event that closes it. Each chain's writes are staged and kept only if every event in it
/// succeeds. Returns the failures by index, or why the whole batch is refused.
fn run_batch<S, E, R, F>(
    view: &mut View<'_, S>,
    now_ms: u64,
    events: &[E],
    is_linked: impl Fn(&E) -> bool,
    (linked_failed, chain_open): (R, R),
    mut apply_one: F,
) -> Result<Result<Vec<(u32, R)>, OpError>, StoreError>
where
    S: StoreRead,
    R: Copy,
    F: FnMut(&mut View<'_, View<'_, S>>, &mut Clock, &E) -> Result<Result<(), R>, StoreError>,
{
    if let Err(e) = super::check_batch(events.len()) {
        return Ok(Err(e));
    }
    let mut clock = Clock::load(view, now_ms)?;
    let mut failures = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let end = events[start..]
            .iter()
            .position(|e| !is_linked(e))
            .map_or(events.len(), |offset| start + offset + 1);
        let chain_closed = !is_linked(&events[end - 1]);
        let mut staged = WriteSet::default();
        let mut failed_at = None;
        if chain_closed {
            let mut chain_view = View {
                base: &*view,
                writes: &mut staged,
            };
            for (i, event) in events.iter().enumerate().take(end).skip(start) {
                if let Err(code) = apply_one(&mut chain_view, &mut clock, event)? {
                    failed_at = Some((i, code));
                    break;
                }
            }
        } else {
            failed_at = Some((end - 1, chain_open));
        }
        match failed_at {
            None => view.writes.absorb(staged),
            Some((failed, code)) => {
                for i in start..end {
                    let result = if i == failed { code } else { linked_failed };
                    failures.push((i as u32, result));
                }
            }
        }
        start = end;
    }
    clock.save(view);
    Ok(Ok(failures))
}

pub(crate) fn create_accounts<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    accounts: &[Account],
) -> Result<Response, StoreError> {
    let failures = run_batch(
        view,
        now_ms,
        accounts,
        |a| a.has(af::LINKED),
        (AccountResult::LinkedEventFailed, AccountResult::LinkedEventChainOpen),
        // A closure, not the fn item: the view's lifetimes must stay higher-ranked.
        #[allow(clippy::redundant_closure)]
        |v, clock, a| create_account(v, clock, a),
    )?;
    Ok(failures.map_or_else(Response::Refused, Response::AccountResults))
}

/// The fields an existing account must match for a repeated create to be `Exists`.
fn account_identity(a: &Account) -> (u16, u128, u64, u32, u32, u16) {
    (
        a.flags & !af::LINKED,
        a.user_data_128,
        a.user_data_64,
        a.user_data_32,
        a.ledger,
        a.code,
    )
}

fn create_account<S: StoreRead>(
    view: &mut View<'_, S>,
    clock: &mut Clock,
    a: &Account,
) -> Result<Result<(), AccountResult>, StoreError> {
    use AccountResult as R;
    let checks = [
        (a.timestamp != 0, R::TimestampMustBeZero),
        (a.flags & !af::KNOWN != 0, R::ReservedFlag),
        (a.id == 0, R::IdMustNotBeZero),
        (a.id == u128::MAX, R::IdMustNotBeIntMax),
        (
            a.has(af::DEBITS_MUST_NOT_EXCEED_CREDITS) && a.has(af::CREDITS_MUST_NOT_EXCEED_DEBITS),
            R::FlagsAreMutuallyExclusive,
        ),
        (a.debits_pending != 0, R::DebitsPendingMustBeZero),
        (a.debits_posted != 0, R::DebitsPostedMustBeZero),
        (a.credits_pending != 0, R::CreditsPendingMustBeZero),
        (a.credits_posted != 0, R::CreditsPostedMustBeZero),
        (a.ledger == 0, R::LedgerMustNotBeZero),
        (a.code == 0, R::CodeMustNotBeZero),
    ];
    if let Some((_, code)) = checks.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    if let Some(existing) = account(view, a.id)? {
        return Ok(Err(if account_identity(&existing) == account_identity(a) {
            R::Exists
        } else {
            R::ExistsWithDifferentFields
        }));
    }
    let created = Account {
        timestamp: clock.next(),
        ..*a
    };
    save(view, Table::LedgerAccount, id_key(a.id), &created);
    Ok(Ok(()))
}

pub(crate) fn create_transfers<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    transfers: &[Transfer],
) -> Result<Response, StoreError> {
    let failures = run_batch(
        view,
        now_ms,
        transfers,
        |t| t.has(tf::LINKED),
        (TransferResult::LinkedEventFailed, TransferResult::LinkedEventChainOpen),
        #[allow(clippy::redundant_closure)]
        |v, clock, t| create_transfer(v, clock, t),
    )?;
    Ok(failures.map_or_else(Response::Refused, Response::TransferResults))
}

/// The fields an existing transfer must match for a repeated create to be `Exists`. For a post
/// or void, zero in the request means "as the pending transfer", so it matches anything.
fn same_transfer(existing: &Transfer, t: &Transfer) -> bool {
    let resolves = t.has(tf::POST_PENDING_TRANSFER) || t.has(tf::VOID_PENDING_TRANSFER);
    let matches = |stored: u128, given: u128| stored == given || (resolves && given == 0);
    existing.flags & !tf::LINKED == t.flags & !tf::LINKED
        && existing.pending_id == t.pending_id
        && existing.user_data_128 == t.user_data_128
        && existing.user_data_64 == t.user_data_64
        && existing.user_data_32 == t.user_data_32
        && existing.timeout == t.timeout
        && matches(existing.debit_account_id, t.debit_account_id)
        && matches(existing.credit_account_id, t.credit_account_id)
        && matches(existing.amount, t.amount)
        && matches(u128::from(existing.ledger), u128::from(t.ledger))
        && matches(u128::from(existing.code), u128::from(t.code))
}

fn create_transfer<S: StoreRead>(
    view: &mut View<'_, S>,
    clock: &mut Clock,
    t: &Transfer,
) -> Result<Result<(), TransferResult>, StoreError> {
    use TransferResult as R;
    let phase_flags = [tf::PENDING, tf::POST_PENDING_TRANSFER, tf::VOID_PENDING_TRANSFER];
    let phases = phase_flags.iter().filter(|f| t.has(**f)).count();
    let common = [
        (t.timestamp != 0, R::TimestampMustBeZero),
        (t.flags & !tf::KNOWN != 0, R::ReservedFlag),
        (t.id == 0, R::IdMustNotBeZero),
        (t.id == u128::MAX, R::IdMustNotBeIntMax),
        (phases > 1, R::FlagsAreMutuallyExclusive),
    ];
    if let Some((_, code)) = common.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    if t.has(tf::POST_PENDING_TRANSFER) || t.has(tf::VOID_PENDING_TRANSFER) {
        return resolve_pending(view, clock, t);
    }
    let checks = [
        (t.debit_account_id == 0, R::DebitAccountIdMustNotBeZero),
        (t.debit_account_id == u128::MAX, R::DebitAccountIdMustNotBeIntMax),
        (t.credit_account_id == 0, R::CreditAccountIdMustNotBeZero),
        (t.credit_account_id == u128::MAX, R::CreditAccountIdMustNotBeIntMax),
        (t.debit_account_id == t.credit_account_id, R::AccountsMustBeDifferent),
        (t.pending_id != 0, R::PendingIdMustBeZero),
        (
            t.timeout != 0 && !t.has(tf::PENDING),
            R::TimeoutReservedForPendingTransfer,
        ),
        (t.amount == 0, R::AmountMustNotBeZero),
        (t.ledger == 0, R::LedgerMustNotBeZero),
        (t.code == 0, R::CodeMustNotBeZero),
    ];
    if let Some((_, code)) = checks.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    if let Some(existing) = stored_transfer(view, t.id)? {
        return Ok(Err(if same_transfer(&existing.transfer, t) {
            R::Exists
        } else {
            R::ExistsWithDifferentFields
        }));
    }
    let Some(mut dr) = account(view, t.debit_account_id)? else {
        return Ok(Err(R::DebitAccountNotFound));
    };
    let Some(mut cr) = account(view, t.credit_account_id)? else {
        return Ok(Err(R::CreditAccountNotFound));
    };
    let pending = t.has(tf::PENDING);
    let checks = [
        (dr.ledger != cr.ledger, R::AccountsMustHaveTheSameLedger),
        (t.ledger != dr.ledger, R::TransferMustHaveTheSameLedgerAsAccounts),
        (dr.has(af::CLOSED), R::DebitAccountClosed),
        (cr.has(af::CLOSED), R::CreditAccountClosed),
    ];
    if let Some((_, code)) = checks.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    let (dr_field, cr_field, dr_overflow, cr_overflow) = if pending {
        (
            dr.debits_pending.checked_add(t.amount),
            cr.credits_pending.checked_add(t.amount),
            R::OverflowsDebitsPending,
            R::OverflowsCreditsPending,
        )
    } else {
        (
            dr.debits_posted.checked_add(t.amount),
            cr.credits_posted.checked_add(t.amount),
            R::OverflowsDebitsPosted,
            R::OverflowsCreditsPosted,
        )
    };
    let (Some(dr_new), Some(cr_new)) = (dr_field, cr_field) else {
        return Ok(Err(if dr_field.is_none() { dr_overflow } else { cr_overflow }));
    };
    let timestamp = clock.next();
    let expires_at = if pending && t.timeout > 0 {
        match timestamp.checked_add(u64::from(t.timeout) * NANOS_PER_SECOND) {
            Some(at) => Some(at),
            None => return Ok(Err(R::OverflowsTimeout)),
        }
    } else {
        None
    };
    // Limits count what is reserved as well as what is posted.
    let dr_exceeds = dr.has(af::DEBITS_MUST_NOT_EXCEED_CREDITS)
        && dr
            .debits_pending
            .checked_add(dr.debits_posted)
            .and_then(|d| d.checked_add(t.amount))
            .is_none_or(|debits| debits > dr.credits_posted);
    if dr_exceeds {
        return Ok(Err(R::ExceedsCredits));
    }
    let cr_exceeds = cr.has(af::CREDITS_MUST_NOT_EXCEED_DEBITS)
        && cr
            .credits_pending
            .checked_add(cr.credits_posted)
            .and_then(|c| c.checked_add(t.amount))
            .is_none_or(|credits| credits > cr.debits_posted);
    if cr_exceeds {
        return Ok(Err(R::ExceedsDebits));
    }
    if pending {
        dr.debits_pending = dr_new;
        cr.credits_pending = cr_new;
    } else {
        dr.debits_posted = dr_new;
        cr.credits_posted = cr_new;
    }
    let created = Transfer { timestamp, ..*t };
    if let Some(at) = expires_at {
        view.put(Table::LedgerExpiry, expiry_key(at, t.id), Vec::new());
    }
    record_transfer(view, &created, pending.then_some(PendingStatus::Pending), &dr, &cr);
    Ok(Ok(()))
}

/// Writes a created transfer, both accounts, the account-transfers index and, for accounts with
/// the history flag, their balances after it.
fn record_transfer<S: StoreRead>(
    view: &mut View<'_, S>,
    t: &Transfer,
    status: Option<PendingStatus>,
    dr: &Account,
    cr: &Account,
) {
    save(
        view,
        Table::LedgerTransfer,
        id_key(t.id),
        &StoredTransfer { transfer: *t, status },
    );
    for (account, side) in [(dr, SIDE_DEBIT), (cr, SIDE_CREDIT)] {
        save(view, Table::LedgerAccount, id_key(account.id), account);
        let mut entry = id_key(t.id);
        entry.push(side);
        view.put(
            Table::LedgerAccountTransfers,
            account_time_key(account.id, t.timestamp),
            entry,
        );
        if account.has(af::HISTORY) {
            save(
                view,
                Table::LedgerHistory,
                account_time_key(account.id, t.timestamp),
                &account.balance(t.timestamp),
            );
        }
    }
}

/// Posts or voids a pending transfer.
fn resolve_pending<S: StoreRead>(
    view: &mut View<'_, S>,
    clock: &mut Clock,
    t: &Transfer,
) -> Result<Result<(), TransferResult>, StoreError> {
    use TransferResult as R;
    let post = t.has(tf::POST_PENDING_TRANSFER);
    let checks = [
        (t.pending_id == 0, R::PendingIdMustNotBeZero),
        (t.pending_id == u128::MAX, R::PendingIdMustNotBeIntMax),
        (t.pending_id == t.id, R::PendingIdMustBeDifferent),
        (t.timeout != 0, R::TimeoutReservedForPendingTransfer),
    ];
    if let Some((_, code)) = checks.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    if let Some(existing) = stored_transfer(view, t.id)? {
        return Ok(Err(if same_transfer(&existing.transfer, t) {
            R::Exists
        } else {
            R::ExistsWithDifferentFields
        }));
    }
    let Some(StoredTransfer { transfer: p, status }) = stored_transfer(view, t.pending_id)? else {
        return Ok(Err(R::PendingTransferNotFound));
    };
    let differs = |given: u128, pending: u128| given != 0 && given != pending;
    let checks = [
        (!p.has(tf::PENDING), R::PendingTransferNotPending),
        (
            differs(t.debit_account_id, p.debit_account_id),
            R::PendingTransferHasDifferentDebitAccountId,
        ),
        (
            differs(t.credit_account_id, p.credit_account_id),
            R::PendingTransferHasDifferentCreditAccountId,
        ),
        (
            differs(u128::from(t.ledger), u128::from(p.ledger)),
            R::PendingTransferHasDifferentLedger,
        ),
        (
            differs(u128::from(t.code), u128::from(p.code)),
            R::PendingTransferHasDifferentCode,
        ),
        (post && t.amount > p.amount, R::ExceedsPendingTransferAmount),
        (
            !post && differs(t.amount, p.amount),
            R::PendingTransferHasDifferentAmount,
        ),
        (status == Some(PendingStatus::Posted), R::PendingTransferAlreadyPosted),
        (status == Some(PendingStatus::Voided), R::PendingTransferAlreadyVoided),
        (status == Some(PendingStatus::Expired), R::PendingTransferExpired),
    ];
    if let Some((_, code)) = checks.iter().find(|(failed, _)| *failed) {
        return Ok(Err(*code));
    }
    let expires_at = (p.timeout > 0).then(|| p.timestamp.saturating_add(u64::from(p.timeout) * NANOS_PER_SECOND));
    if expires_at.is_some_and(|at| clock.now_ns >= at) {
        return Ok(Err(R::PendingTransferExpired));
    }
    let (Some(mut dr), Some(mut cr)) = (account(view, p.debit_account_id)?, account(view, p.credit_account_id)?) else {
        return Err(corrupt(
            Table::LedgerTransfer,
            &id_key(p.id),
            "pending transfer names a missing account",
        ));
    };
    let amount = if post && t.amount != 0 { t.amount } else { p.amount };
    dr.debits_pending -= p.amount;
    cr.credits_pending -= p.amount;
    if post {
        let (Some(debits), Some(credits)) = (
            dr.debits_posted.checked_add(amount),
            cr.credits_posted.checked_add(amount),
        ) else {
            return Ok(Err(if dr.debits_posted.checked_add(amount).is_none() {
                R::OverflowsDebitsPosted
            } else {
                R::OverflowsCreditsPosted
            }));
        };
        dr.debits_posted = debits;
        cr.credits_posted = credits;
    }
    let timestamp = clock.next();
    let resolved = Transfer {
        debit_account_id: p.debit_account_id,
        credit_account_id: p.credit_account_id,
        amount,
        ledger: p.ledger,
        code: p.code,
        timestamp,
        ..*t
    };
    let new_status = if post {
        PendingStatus::Posted
    } else {
        PendingStatus::Voided
    };
    save(
        view,
        Table::LedgerTransfer,
        id_key(p.id),
        &StoredTransfer {
            transfer: p,
            status: Some(new_status),
        },
    );
    if let Some(at) = expires_at {
        view.delete(Table::LedgerExpiry, expiry_key(at, p.id));
    }
    record_transfer(view, &resolved, None, &dr, &cr);
    Ok(Ok(()))
}

/// Releases the reservations of pending transfers whose timeout has passed, at most `limit`.
pub(crate) fn expire_pending<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    limit: u32,
) -> Result<Response, StoreError> {
    let mut clock = Clock::load(view, now_ms)?;
    let due_range = KeyRange::between(Vec::new(), clock.now_ns.saturating_add(1).to_be_bytes().to_vec());
    let due = view.scan(Table::LedgerExpiry, &due_range, limit as usize)?;
    let mut expired = 0u32;
    for (key, _) in due {
        view.delete(Table::LedgerExpiry, key.clone());
        let id_bytes: [u8; 16] = key[8..]
            .try_into()
            .map_err(|_| corrupt(Table::LedgerExpiry, &key, "key is not 24 bytes"))?;
        let id = u128::from_be_bytes(id_bytes);
        let Some(StoredTransfer {
            transfer: p,
            status: Some(PendingStatus::Pending),
        }) = stored_transfer(view, id)?
        else {
            continue;
        };
        let (Some(mut dr), Some(mut cr)) = (account(view, p.debit_account_id)?, account(view, p.credit_account_id)?)
        else {
            return Err(corrupt(
                Table::LedgerTransfer,
                &id_key(id),
                "pending transfer names a missing account",
            ));
        };
        dr.debits_pending -= p.amount;
        cr.credits_pending -= p.amount;
        let timestamp = clock.next();
        save(
            view,
            Table::LedgerTransfer,
            id_key(id),
            &StoredTransfer {
                transfer: p,
                status: Some(PendingStatus::Expired),
            },
        );
        for account in [&dr, &cr] {
            save(view, Table::LedgerAccount, id_key(account.id), account);
            if account.has(af::HISTORY) {
                save(
                    view,
                    Table::LedgerHistory,
                    account_time_key(account.id, timestamp),
                    &account.balance(timestamp),
                );
            }
        }
        expired += 1;
    }
    clock.save(view);
    Ok(Response::PendingExpired { expired })
}

pub fn lookup_accounts<S: StoreRead + ?Sized>(store: &S, ids: &[u128]) -> Result<Vec<Account>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(account(store, *id)?);
    }
    Ok(found)
}

pub fn lookup_transfers<S: StoreRead + ?Sized>(store: &S, ids: &[u128]) -> Result<Vec<StoredTransfer>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(stored_transfer(store, *id)?);
    }
    Ok(found)
}

fn filter_range(filter: &AccountFilter) -> KeyRange {
    let max = if filter.timestamp_max == 0 {
        u64::MAX
    } else {
        filter.timestamp_max
    };
    let end = match max.checked_add(1) {
        Some(after) => account_time_key(filter.account_id, after),
        None => id_key(filter.account_id.wrapping_add(1)),
    };
    KeyRange::between(account_time_key(filter.account_id, filter.timestamp_min), end)
}

fn scan_filtered<S: StoreRead + ?Sized>(
    store: &S,
    table: Table,
    filter: &AccountFilter,
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let range = filter_range(filter);
    if filter.reversed {
        store.scan_reverse(table, &range, limit)
    } else {
        store.scan(table, &range, limit)
    }
}

/// An account's transfers in timestamp order (newest first if `reversed`), debits and/or credits.
pub fn get_account_transfers<S: StoreRead + ?Sized>(
    store: &S,
    filter: &AccountFilter,
) -> Result<Vec<Transfer>, StoreError> {
    let (want_debits, want_credits) = match (filter.debits, filter.credits) {
        (false, false) => (true, true),
        sides => sides,
    };
    let mut out = Vec::new();
    if filter.limit == 0 {
        return Ok(out);
    }
    let mut scanned_to = None;
    // Filtering by side may skip entries: page through until `limit` match or the range ends.
    loop {
        let mut f = *filter;
        if let Some(last) = scanned_to {
            if f.reversed {
                f.timestamp_max = last;
            } else {
                f.timestamp_min = last;
            }
        }
        let page = scan_filtered(store, Table::LedgerAccountTransfers, &f, filter.limit as usize)?;
        let exhausted = page.len() < filter.limit as usize;
        for (key, value) in page {
            let ts = u64::from_be_bytes(
                key[16..24]
                    .try_into()
                    .map_err(|_| corrupt(Table::LedgerAccountTransfers, &key, "bad key"))?,
            );
            scanned_to = Some(if filter.reversed { ts.saturating_sub(1) } else { ts + 1 });
            let side = value.get(16).copied();
            let wanted = (side == Some(SIDE_DEBIT) && want_debits) || (side == Some(SIDE_CREDIT) && want_credits);
            if !wanted {
                continue;
            }
            let id = u128::from_be_bytes(
                value[..16]
                    .try_into()
                    .map_err(|_| corrupt(Table::LedgerAccountTransfers, &key, "bad value"))?,
            );
            if let Some(stored) = stored_transfer(store, id)? {
                out.push(stored.transfer);
                if out.len() == filter.limit as usize {
                    return Ok(out);
                }
            }
        }
        if exhausted || scanned_to == Some(0) {
            return Ok(out);
        }
    }
}

/// The balances of an account with the history flag after each of its transfers.
pub fn get_account_balances<S: StoreRead + ?Sized>(
    store: &S,
    filter: &AccountFilter,
) -> Result<Vec<AccountBalance>, StoreError> {
    let page = scan_filtered(store, Table::LedgerHistory, filter, filter.limit as usize)?;
    page.into_iter()
        .map(|(key, value)| basalt_codec::decode(&value).map_err(|e| corrupt(Table::LedgerHistory, &key, e)))
        .collect()
}
