//! Transactions across data types: conditions, then one of two op lists, all or nothing, in one
//! Raft entry (see `docs/transactions.md`).
//!
//! ```no_run
//! # async fn demo(client: basalt_client::Client) -> Result<(), basalt_client::ClientError> {
//! use basalt_client::txn::{Compare, Condition, TxnOp};
//! use basalt_client::CounterOp;
//! let outcome = client
//!     .txn()
//!     .when(Condition::counter("stock/sku-1", Compare::Ge, 1))
//!     .then(TxnOp::counter(CounterOp::bounded("stock/sku-1", -1, Some(0), None)))
//!     .then(TxnOp::put("order/42", "reserved"))
//!     .then(TxnOp::put("outbox/42", "order 42 reserved"))
//!     .otherwise(TxnOp::put("order/42", "out of stock"))
//!     .commit()
//!     .await?;
//! assert!(outcome.is_committed());
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::client::{millis, Client};
use crate::counter::{outcomes_of, CounterOp, CounterOutcome};
use crate::error::ClientError;
use crate::kv::{entry_of, KvEntry};
use crate::ledger::{failures, Account, EventFailure, Transfer};
use crate::pb;
use crate::pb::txn_client::TxnClient;
use crate::queue::{Enqueued, NewMessage};
use crate::rate::{RateCheck, RateDecision};
use crate::stream::{produce_record, Produced, Record, TrimRule};

/// How a condition compares what is stored (left) with its operand (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Compare {
    fn pb(self) -> i32 {
        (match self {
            Compare::Eq => pb::Compare::Eq,
            Compare::Ne => pb::Compare::Ne,
            Compare::Lt => pb::Compare::Lt,
            Compare::Le => pb::Compare::Le,
            Compare::Gt => pb::Compare::Gt,
            Compare::Ge => pb::Compare::Ge,
        }) as i32
    }
}

/// Which figure of a ledger account [`Condition::balance`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceField {
    /// `credits_posted - debits_posted`.
    CreditsMinusDebits,
    /// `debits_posted - credits_posted`.
    DebitsMinusCredits,
    CreditsPosted,
    DebitsPosted,
    CreditsPending,
    DebitsPending,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition(pb::TxnCondition);

impl Condition {
    fn of(condition: pb::txn_condition::Condition) -> Condition {
        Condition(pb::TxnCondition {
            condition: Some(condition),
        })
    }

    /// The key exists (live).
    pub fn exists(key: impl Into<Vec<u8>>) -> Condition {
        Condition::of(pb::txn_condition::Condition::KvExists(pb::KvExistsCondition {
            key: key.into(),
            exists: true,
        }))
    }

    /// The key does not exist (or has expired).
    pub fn absent(key: impl Into<Vec<u8>>) -> Condition {
        Condition::of(pb::txn_condition::Condition::KvExists(pb::KvExistsCondition {
            key: key.into(),
            exists: false,
        }))
    }

    /// The key's version (writes since it was created; 0 when absent).
    pub fn version(key: impl Into<Vec<u8>>, compare: Compare, version: u64) -> Condition {
        Condition::of(pb::txn_condition::Condition::KvVersion(pb::KvNumberCondition {
            key: key.into(),
            compare: compare.pb(),
            value: version,
        }))
    }

    /// The key's modification revision (0 when absent).
    pub fn mod_revision(key: impl Into<Vec<u8>>, compare: Compare, revision: u64) -> Condition {
        Condition::of(pb::txn_condition::Condition::KvModRevision(pb::KvNumberCondition {
            key: key.into(),
            compare: compare.pb(),
            value: revision,
        }))
    }

    /// The key's value, bytewise; never holds for an absent key.
    pub fn value(key: impl Into<Vec<u8>>, compare: Compare, value: impl Into<Vec<u8>>) -> Condition {
        Condition::of(pb::txn_condition::Condition::KvValue(pb::KvValueCondition {
            key: key.into(),
            compare: compare.pb(),
            value: value.into(),
        }))
    }

    /// A counter's value (0 when absent).
    pub fn counter(key: impl Into<Vec<u8>>, compare: Compare, value: i64) -> Condition {
        Condition::of(pb::txn_condition::Condition::Counter(pb::CounterCondition {
            key: key.into(),
            compare: compare.pb(),
            value,
        }))
    }

    /// `token` is the live grant of `lease`: a fence over the whole transaction's choice.
    pub fn fence(lease: impl Into<Vec<u8>>, token: u64) -> Condition {
        Condition::of(pb::txn_condition::Condition::Fence(pb::Fence {
            lease: lease.into(),
            token,
        }))
    }

    /// A ledger account's figure. An unknown account refuses the transaction (`NOT_FOUND`).
    pub fn balance(account: u128, field: BalanceField, compare: Compare, amount: i128) -> Condition {
        let field = match field {
            BalanceField::CreditsMinusDebits => pb::BalanceField::CreditsMinusDebits,
            BalanceField::DebitsMinusCredits => pb::BalanceField::DebitsMinusCredits,
            BalanceField::CreditsPosted => pb::BalanceField::CreditsPosted,
            BalanceField::DebitsPosted => pb::BalanceField::DebitsPosted,
            BalanceField::CreditsPending => pb::BalanceField::CreditsPending,
            BalanceField::DebitsPending => pb::BalanceField::DebitsPending,
        };
        Condition::of(pb::txn_condition::Condition::Balance(pb::BalanceCondition {
            account: account.to_be_bytes().to_vec(),
            field: field as i32,
            compare: compare.pb(),
            amount: amount.to_be_bytes().to_vec(),
        }))
    }

    /// A queue's depth (messages not yet acked). An unknown queue refuses the transaction.
    pub fn queue_depth(queue: impl Into<Vec<u8>>, compare: Compare, depth: u64) -> Condition {
        Condition::of(pb::txn_condition::Condition::QueueDepth(pb::QueueDepthCondition {
            queue: queue.into(),
            compare: compare.pb(),
            depth,
        }))
    }
}

/// One op of a transaction: what the data type's own call does, applied with the others.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(pb::TxnOp);

impl TxnOp {
    fn of(op: pb::txn_op::Op) -> TxnOp {
        TxnOp(pb::TxnOp { op: Some(op) })
    }

    fn kv_put(key: Vec<u8>, value: Vec<u8>, ttl: Option<Duration>, expect: Option<pb::Expect>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Put(pb::KvPutRequest {
            header: None,
            key,
            value,
            ttl_ms: ttl.map_or(0, millis),
            expect,
        }))
    }

    /// A put that keeps the key's expiry as it is when the transaction applies (none when the
    /// key is absent or never expires): a new value without moving the key's deadline.
    pub fn put_keep_ttl(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::PutKeepTtl(pb::KvPutRequest {
            header: None,
            key: key.into(),
            value: value.into(),
            ttl_ms: 0,
            expect: None,
        }))
    }

    pub(crate) fn kv_put_raw(key: Vec<u8>, value: Vec<u8>, ttl: Option<Duration>) -> TxnOp {
        TxnOp::kv_put(key, value, ttl, None)
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::kv_put(key.into(), value.into(), None, None)
    }

    /// A put that expires after `ttl`.
    pub fn put_with_ttl(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, ttl: Duration) -> TxnOp {
        TxnOp::kv_put(key.into(), value.into(), Some(ttl), None)
    }

    /// A put only if the key is absent (else the transaction aborts at this op).
    pub fn put_if_absent(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, ttl: Option<Duration>) -> TxnOp {
        let expect = pb::Expect {
            condition: Some(pb::expect::Condition::Absent(true)),
        };
        TxnOp::kv_put(key.into(), value.into(), ttl, Some(expect))
    }

    /// A put only if the key's mod revision is `revision` (else the transaction aborts here).
    pub fn put_if_revision(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, revision: u64) -> TxnOp {
        let expect = pb::Expect {
            condition: Some(pb::expect::Condition::Revision(revision)),
        };
        TxnOp::kv_put(key.into(), value.into(), None, Some(expect))
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Delete(pb::KvDeleteRequest {
            header: None,
            key: key.into(),
            expect: None,
        }))
    }

    /// Reads the key as the transaction applies (after the branch's earlier ops).
    pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Get(pb::KvGetRequest {
            key: key.into(),
            stale: false,
        }))
    }

    /// Counter changes; one outside its bounds aborts the transaction.
    pub fn counters(ops: Vec<CounterOp>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Counter(pb::CounterApplyRequest {
            header: None,
            ops: ops.into_iter().map(pb::CounterOp::from).collect(),
        }))
    }

    pub fn counter(op: CounterOp) -> TxnOp {
        TxnOp::counters(vec![op])
    }

    /// Rate checks; one denied aborts the transaction, so several are all or nothing (a tenant,
    /// a user and a route limit consume together or not at all).
    pub fn rate_checks(checks: Vec<RateCheck>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::RateCheck(pb::RateCheckRequest {
            header: None,
            checks: checks.into_iter().map(pb::RateCheck::from).collect(),
        }))
    }

    /// Takes a lease (no waiting); held by another, it aborts the transaction. One list touches
    /// a lease once (acquire, renew or release).
    pub fn lease_acquire(name: impl Into<Vec<u8>>, holder: impl Into<Vec<u8>>, ttl: Duration) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::LeaseAcquire(pb::LeaseAcquireRequest {
            header: None,
            name: name.into(),
            holder: holder.into(),
            ttl_ms: millis(ttl),
            wait_ms: 0,
        }))
    }

    pub fn lease_renew(name: impl Into<Vec<u8>>, holder: impl Into<Vec<u8>>, token: u64, ttl: Duration) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::LeaseRenew(pb::LeaseRenewRequest {
            header: None,
            name: name.into(),
            holder: holder.into(),
            token,
            ttl_ms: millis(ttl),
        }))
    }

    pub fn lease_release(name: impl Into<Vec<u8>>, holder: impl Into<Vec<u8>>, token: u64) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::LeaseRelease(pb::LeaseReleaseRequest {
            header: None,
            name: name.into(),
            holder: holder.into(),
            token,
        }))
    }

    /// Ledger accounts; one that fails aborts the transaction.
    pub fn create_accounts(accounts: &[Account]) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::CreateAccounts(pb::CreateAccountsRequest {
            header: None,
            accounts: accounts.iter().map(pb::Account::from).collect(),
        }))
    }

    /// Ledger transfers; one that fails (e.g. `exceeds_credits`) aborts the transaction.
    pub fn create_transfers(transfers: &[Transfer]) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::CreateTransfers(pb::CreateTransfersRequest {
            header: None,
            transfers: transfers.iter().map(pb::Transfer::from).collect(),
        }))
    }

    /// Messages to one queue (at most 65,536 in one list of a transaction).
    pub fn enqueue(queue: impl Into<Vec<u8>>, messages: Vec<NewMessage>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Enqueue(pb::EnqueueRequest {
            header: None,
            queue: queue.into(),
            messages: messages.into_iter().map(pb::NewMessage::from).collect(),
        }))
    }

    pub fn ack(queue: impl Into<Vec<u8>>, receipt: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Ack(pb::AckRequest {
            header: None,
            queue: queue.into(),
            receipt: receipt.into(),
        }))
    }

    pub fn nack(queue: impl Into<Vec<u8>>, receipt: impl Into<Vec<u8>>, delay: Duration) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Nack(pb::NackRequest {
            header: None,
            queue: queue.into(),
            receipt: receipt.into(),
            delay_ms: millis(delay),
        }))
    }

    /// Records appended to a topic (an outbox, an event log).
    pub fn produce(topic: impl Into<Vec<u8>>, records: Vec<Record>) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Produce(pb::ProduceRequest {
            header: None,
            topic: topic.into(),
            records: records.into_iter().map(|r| produce_record(r, None)).collect(),
            producer_id: None,
        }))
    }

    /// The oldest records of a topic's partition hidden by `rule`, at most `limit` of them (see
    /// [`crate::Streams::trim`]). `newer_kept`: the newest records, appended by an earlier op of
    /// this transaction, that the trim leaves alone (Redis's `XADD ... MAXLEN` trims what is
    /// there once its own entry is in, not entries others add after it).
    pub fn trim(
        topic: impl Into<Vec<u8>>,
        partition: u32,
        rule: TrimRule,
        newer_kept: u64,
        limit: Option<u64>,
    ) -> TxnOp {
        TxnOp::of(pb::txn_op::Op::Trim(rule.request(
            topic.into(),
            partition,
            newer_kept,
            limit,
        )))
    }
}

/// What one op of a transaction answered.
#[derive(Debug)]
pub enum TxnOpResult {
    /// A put took effect at `revision` (every write of a transaction shares it).
    Written {
        revision: u64,
        prev_revision: Option<u64>,
    },
    Deleted {
        deleted: bool,
        revision: u64,
    },
    /// A conditional put or delete whose condition did not hold: `current` is the key's revision.
    Conflict {
        current: Option<u64>,
    },
    Read(Option<KvEntry>),
    Counters(Vec<CounterOutcome>),
    Rate(Vec<RateDecision>),
    LeaseGranted {
        token: u64,
        expires_at_ms: u64,
    },
    LeaseHeld {
        holder: Vec<u8>,
        expires_at_ms: u64,
    },
    Released {
        was_live: bool,
    },
    /// The ledger events that failed (none when the op took effect).
    Ledger(Vec<EventFailure>),
    Enqueued(Vec<Enqueued>),
    /// An ack or nack took effect.
    Done,
    Produced(Vec<Produced>),
    /// A trim hid this many records.
    Trimmed(u64),
    /// The op was refused on its own (e.g. `STALE_RECEIPT`, `NOT_FOUND`).
    Refused(ClientError),
}

fn result_of(result: pb::TxnOpResult) -> Result<TxnOpResult, ClientError> {
    use pb::txn_op_result::Result as R;
    Ok(match result.result {
        Some(R::Put(p)) if p.succeeded => TxnOpResult::Written {
            revision: p.revision,
            prev_revision: p.prev_revision,
        },
        Some(R::Put(p)) => TxnOpResult::Conflict {
            current: p.current_revision,
        },
        Some(R::Delete(d)) if d.succeeded => TxnOpResult::Deleted {
            deleted: d.deleted,
            revision: d.revision,
        },
        Some(R::Delete(d)) => TxnOpResult::Conflict {
            current: d.current_revision,
        },
        Some(R::Get(g)) => TxnOpResult::Read(entry_of(g)),
        Some(R::Counter(c)) => TxnOpResult::Counters(outcomes_of(c)?),
        Some(R::RateCheck(r)) => TxnOpResult::Rate(r.decisions.into_iter().map(RateDecision::from).collect()),
        Some(R::Lease(l)) if l.granted => TxnOpResult::LeaseGranted {
            token: l.token,
            expires_at_ms: l.expires_at_ms,
        },
        Some(R::Lease(l)) => TxnOpResult::LeaseHeld {
            holder: l.holder,
            expires_at_ms: l.expires_at_ms,
        },
        Some(R::LeaseRelease(r)) => TxnOpResult::Released { was_live: r.was_live },
        Some(R::Ledger(l)) => TxnOpResult::Ledger(failures(l)),
        Some(R::Enqueue(e)) => TxnOpResult::Enqueued(e.outcomes.into_iter().map(Enqueued::from).collect()),
        Some(R::Ack(_)) => TxnOpResult::Done,
        Some(R::Produce(p)) => TxnOpResult::Produced(p.outcomes.into_iter().map(Produced::from).collect()),
        Some(R::Trim(t)) => TxnOpResult::Trimmed(t.removed),
        Some(R::Error(e)) => TxnOpResult::Refused(crate::coalesce::write_refused(e)),
        None => return Err(ClientError::Protocol("a transaction op answered nothing".into())),
    })
}

/// Which op list ran and what came of it.
#[derive(Debug)]
pub enum TxnOutcome {
    /// The chosen list applied whole: one result per op, in order.
    Committed {
        /// Every condition held (`then` ran); false: `otherwise` ran.
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    /// Op `op` of the chosen list was refused (`reason`), so nothing of the transaction applied.
    Aborted {
        succeeded: bool,
        op: usize,
        reason: TxnOpResult,
    },
}

impl TxnOutcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }

    /// Whether every condition held (`then` was chosen), committed or not.
    pub fn succeeded(&self) -> bool {
        match self {
            TxnOutcome::Committed { succeeded, .. } | TxnOutcome::Aborted { succeeded, .. } => *succeeded,
        }
    }
}

/// A transaction being built. Get one with [`Client::txn`].
#[derive(Clone)]
pub struct TxnBuilder {
    client: Client,
    request: pb::TxnRequest,
}

impl TxnBuilder {
    pub(crate) fn new(client: Client) -> TxnBuilder {
        TxnBuilder {
            client,
            request: pb::TxnRequest::default(),
        }
    }

    /// Adds a condition; `then` runs when every one holds.
    pub fn when(mut self, condition: Condition) -> TxnBuilder {
        self.request.when.push(condition.0);
        self
    }

    /// Adds an op to the list applied when every condition holds.
    pub fn then(mut self, op: TxnOp) -> TxnBuilder {
        self.request.then.push(op.0);
        self
    }

    /// Adds an op to the list applied when a condition does not hold.
    pub fn otherwise(mut self, op: TxnOp) -> TxnBuilder {
        self.request.otherwise.push(op.0);
        self
    }

    /// Applies the transaction, exactly once even when retried (one session), with this
    /// client's fence if it has one ([`Client::fenced`]).
    ///
    /// # Errors
    /// A bad transaction is refused whole, naming the op or condition (`then[2]: ...`), with the
    /// code that op alone would get, or `INVALID_ARGUMENT` (an op that cannot be in a
    /// transaction, a key written twice in one list), `BATCH_TOO_LARGE` (over 256 ops or 64
    /// conditions), `TOO_LARGE` (over 4 MiB), `NOT_FOUND` (an unknown account or queue in a
    /// condition), `STALE_FENCE`. An op refused at apply is not an error: the outcome is
    /// [`TxnOutcome::Aborted`].
    pub async fn commit(self) -> Result<TxnOutcome, ClientError> {
        let (header, _guard) = self.client.header();
        let mut message = self.request;
        message.header = Some(header);
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(TxnClient, c).commit(r).await
            })
            .await?;
        if reply.committed {
            let results = reply.results.into_iter().map(result_of).collect::<Result<_, _>>()?;
            return Ok(TxnOutcome::Committed {
                succeeded: reply.succeeded,
                results,
            });
        }
        let reason = reply
            .failure
            .ok_or_else(|| ClientError::Protocol("an aborted transaction without its failure".into()))?;
        Ok(TxnOutcome::Aborted {
            succeeded: reply.succeeded,
            op: reply.failed_op as usize,
            reason: result_of(reason)?,
        })
    }
}
