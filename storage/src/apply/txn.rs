//! Transaction apply: the conditions are read, one branch is chosen, and its ops are applied one
//! after another over a staged view; if one is refused, the staged writes are dropped and the
//! answer names the op. Nothing here looks at a clock or at anything but the view, so every
//! replica chooses the same branch and the same outcome.
//!
//! All of a branch's ops share the entry's index: the KV revision of its writes, the fencing
//! token of a lease it grants, the id space of its queue messages (numbered across the branch's
//! enqueues, [`OpContext::first_message`]). That is why a branch may not write one KV key twice,
//! nor touch one lease twice (two grants of it would carry one token) ([`TxnError::Repeated`]).

use std::collections::HashSet;

use super::{apply_single_op, check_key, lease, ledger, queue, validate_op, OpContext, View, WriteSet};
use crate::command::{
    is_transactional, BalanceField, Branch, Condition, CounterOutcome, KvOp, LeaseOp, LeaseOutcome, Op, OpError,
    QueueOp, Response, Txn, TxnError,
};
use crate::limits::{TXN_BYTES_MAX, TXN_CONDITIONS_MAX, TXN_MESSAGES_MAX, TXN_OPS_MAX, TXN_READ_BYTES_MAX};
use crate::state::{KvRecord, StoreError, StoreRead, Table};

/// Checks a transaction's shape: its limits, every condition and op on its own, which ops may be
/// in it, and that no branch writes a KV key or enqueues to a queue twice.
pub fn validate(txn: &Txn) -> Result<(), OpError> {
    if txn.when.len() > TXN_CONDITIONS_MAX {
        return Err(too_many("conditions", txn.when.len(), TXN_CONDITIONS_MAX));
    }
    let ops = txn.then.len() + txn.otherwise.len();
    if ops == 0 {
        return Err(OpError::Empty {
            what: "transaction (no op in then or else)".into(),
        });
    }
    if ops > TXN_OPS_MAX {
        return Err(too_many("ops", ops, TXN_OPS_MAX));
    }
    let len = basalt_codec::encoded_len(txn);
    if len > TXN_BYTES_MAX {
        return Err(OpError::Txn(TxnError::TooLarge {
            len,
            max: TXN_BYTES_MAX,
        }));
    }
    for (index, condition) in txn.when.iter().enumerate() {
        validate_condition(condition).map_err(|reason| {
            OpError::Txn(TxnError::InvalidCondition {
                index: index as u32,
                reason: Box::new(reason),
            })
        })?;
    }
    validate_branch(Branch::Then, &txn.then)?;
    validate_branch(Branch::Otherwise, &txn.otherwise)
}

fn too_many(what: &str, len: usize, max: usize) -> OpError {
    OpError::Txn(TxnError::TooMany {
        what: what.to_string(),
        len,
        max,
    })
}

fn validate_condition(condition: &Condition) -> Result<(), OpError> {
    match condition {
        Condition::KvExists { key, .. }
        | Condition::KvVersion { key, .. }
        | Condition::KvModRevision { key, .. }
        | Condition::Counter { key, .. } => check_key(key),
        Condition::KvValue { key, value, .. } => super::kv::validate_put(key, value, None),
        Condition::Fence { lease, .. } => check_key(lease),
        Condition::Balance { .. } => Ok(()),
        Condition::QueueDepth { queue, .. } => queue::check_name("queue name", queue),
    }
}

fn validate_branch(branch: Branch, ops: &[Op]) -> Result<(), OpError> {
    let mut keys: HashSet<&[u8]> = HashSet::new();
    let mut leases: HashSet<&[u8]> = HashSet::new();
    let mut messages = 0usize;
    for (position, op) in ops.iter().enumerate() {
        let at = position as u32;
        if !is_transactional(op) {
            return Err(OpError::Txn(TxnError::NotTransactional {
                branch,
                op: at,
                what: op.to_string(),
            }));
        }
        let valid = match op {
            Op::Kv(KvOp::Get { key }) => check_key(key),
            op => validate_op(op),
        };
        valid.map_err(|reason| {
            OpError::Txn(TxnError::InvalidOp {
                branch,
                op: at,
                reason: Box::new(reason),
            })
        })?;
        let repeated = |what: &str, name: &[u8]| {
            OpError::Txn(TxnError::Repeated {
                branch,
                op: at,
                what: what.to_string(),
                name: super::lossy(name),
            })
        };
        for key in op.kv_write_keys().unwrap_or_default() {
            if !keys.insert(key) {
                return Err(repeated("key", key));
            }
        }
        if let Op::Lease(LeaseOp::Acquire { name, .. } | LeaseOp::Renew { name, .. } | LeaseOp::Release { name, .. }) =
            op
        {
            if !leases.insert(name) {
                return Err(repeated("lease", name));
            }
        }
        messages += enqueued(op);
    }
    if messages > TXN_MESSAGES_MAX {
        return Err(too_many("queue messages in one branch", messages, TXN_MESSAGES_MAX));
    }
    Ok(())
}

/// How many messages an op enqueues.
fn enqueued(op: &Op) -> usize {
    match op {
        Op::Queue(QueueOp::Enqueue { messages, .. }) => messages.len(),
        _ => 0,
    }
}

/// Applies a transaction at entry `ctx.index`: a refusal of its shape or of a condition
/// (`Refused`), the chosen branch applied whole (`Txn`), or nothing applied because one of the
/// branch's ops was refused (`TxnAborted`).
pub(super) fn apply<S: StoreRead>(view: &mut View<'_, S>, ctx: OpContext, txn: &Txn) -> Result<Response, StoreError> {
    refuse_on_err!(validate(txn));
    // Every condition is read, also after one fails, so an unknown account or queue is refused
    // whatever the others say.
    let mut holds = true;
    for (index, condition) in txn.when.iter().enumerate() {
        match condition_holds(view, ctx.now_ms, condition)? {
            Ok(held) => holds &= held,
            Err(reason) => {
                return Ok(Response::Refused(OpError::Txn(TxnError::InvalidCondition {
                    index: index as u32,
                    reason: Box::new(reason),
                })))
            }
        }
    }
    let (branch, ops) = match holds {
        true => (Branch::Then, &txn.then),
        false => (Branch::Otherwise, &txn.otherwise),
    };
    let mut staged = WriteSet::default();
    let mut results = Vec::with_capacity(ops.len());
    let mut read_bytes = 0usize;
    {
        let mut branch_view = View {
            base: &*view,
            writes: &mut staged,
        };
        let mut ctx = ctx;
        for (position, op) in ops.iter().enumerate() {
            let answer = apply_single_op(&mut branch_view, ctx, op)?;
            // Validation bounds the branch's messages to the 16 bits of a message number.
            ctx.first_message += enqueued(op) as u32;
            if let (Response::KvRecord(Some(record)), Op::Kv(KvOp::Get { key })) = (&answer, op) {
                read_bytes += key.len() + record.value.len();
                if read_bytes > TXN_READ_BYTES_MAX {
                    return Ok(Response::Refused(OpError::Txn(TxnError::AnswerTooLarge {
                        len: read_bytes,
                        max: TXN_READ_BYTES_MAX,
                    })));
                }
            }
            if refused(&answer) {
                return Ok(Response::TxnAborted {
                    branch,
                    op: position as u32,
                    answer: Box::new(answer),
                });
            }
            results.push(answer);
        }
    }
    view.writes.absorb(staged);
    Ok(Response::Txn { branch, results })
}

/// Whether an op's answer means it did not take effect (whole or in part): a refusal, a failed
/// compare-and-set, a counter change outside its bounds, a denied rate check, a lease held by
/// another, a ledger event that failed. Any of these aborts the transaction.
pub fn refused(answer: &Response) -> bool {
    match answer {
        Response::Refused(_) | Response::GroupRefused(_) | Response::KvConditionFailed { .. } => true,
        Response::KvBatch(answers) => answers.iter().any(refused),
        Response::Counters(outcomes) => outcomes.iter().any(|o| !matches!(o, CounterOutcome::Applied { .. })),
        Response::RateDecisions(decisions) => decisions.iter().any(|d| !d.allowed),
        Response::Lease(LeaseOutcome::Held { .. }) => true,
        Response::AccountResults(failures) => !failures.is_empty(),
        Response::TransferResults(failures) => !failures.is_empty(),
        _ => false,
    }
}

/// Whether `condition` holds at `now_ms`; an unknown account or queue is a refusal.
fn condition_holds<S: StoreRead>(
    view: &View<'_, S>,
    now_ms: u64,
    condition: &Condition,
) -> Result<Result<bool, OpError>, StoreError> {
    Ok(Ok(match condition {
        Condition::KvExists { key, exists } => live_record(view, key, now_ms)?.is_some() == *exists,
        Condition::KvVersion { key, cmp, version } => {
            let stored = live_record(view, key, now_ms)?.map_or(0, |r| r.version);
            cmp.holds(&stored, version)
        }
        Condition::KvModRevision { key, cmp, revision } => {
            let stored = live_record(view, key, now_ms)?.map_or(0, |r| r.mod_revision);
            cmp.holds(&stored, revision)
        }
        Condition::KvValue { key, cmp, value } => match live_record(view, key, now_ms)? {
            None => false,
            Some(record) => cmp.holds(record.value.as_slice(), value.as_slice()),
        },
        Condition::Counter { key, cmp, value } => match super::counter::load_state(view, key, now_ms)? {
            Ok(state) => cmp.holds(&state.value(), value),
            // As a counter op answers it: a refusal, not a halt of apply.
            Err(refusal) => return Ok(Err(refusal)),
        },
        Condition::Fence { lease: name, token } => {
            let record = lease::record(view, name)?;
            lease::standing(record.as_ref(), None, *token, now_ms).is_ok()
        }
        Condition::Balance {
            account,
            field,
            cmp,
            amount,
        } => {
            let Some(account) = ledger::account(view, *account)? else {
                return Ok(Err(OpError::NotFound {
                    what: "ledger account".into(),
                    name: account.to_string(),
                }));
            };
            let signed = |v: u128| i128::try_from(v).unwrap_or(i128::MAX);
            let stored = match field {
                BalanceField::DebitsPending => signed(account.debits_pending),
                BalanceField::DebitsPosted => signed(account.debits_posted),
                BalanceField::CreditsPending => signed(account.credits_pending),
                BalanceField::CreditsPosted => signed(account.credits_posted),
                BalanceField::CreditsMinusDebits => {
                    signed(account.credits_posted).saturating_sub(signed(account.debits_posted))
                }
                BalanceField::DebitsMinusCredits => {
                    signed(account.debits_posted).saturating_sub(signed(account.credits_posted))
                }
            };
            cmp.holds(&stored, amount)
        }
        Condition::QueueDepth {
            queue: name,
            cmp,
            depth,
        } => match queue::stored_queue(view, name)? {
            Ok(stored) => cmp.holds(&stored.stats.messages, depth),
            Err(refusal) => return Ok(Err(refusal)),
        },
    }))
}

/// The key's record if it is live at `now_ms`.
fn live_record<S: StoreRead>(view: &View<'_, S>, key: &[u8], now_ms: u64) -> Result<Option<KvRecord>, StoreError> {
    let Some(bytes) = view.get(Table::Kv, key)? else {
        return Ok(None);
    };
    let record = KvRecord::decode(&bytes).map_err(|e| super::corrupt(Table::Kv, key, e))?;
    Ok(record.is_live_at(now_ms).then_some(record))
}

/// A KV read inside a transaction: the live record as the branch's earlier ops left it.
pub(super) fn get<S: StoreRead>(view: &View<'_, S>, key: &[u8], now_ms: u64) -> Result<Response, StoreError> {
    refuse_on_err!(check_key(key));
    Ok(Response::KvRecord(live_record(view, key, now_ms)?))
}
