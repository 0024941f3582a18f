//! The transaction payload of a command ([`Txn`]): conditions, then one of two op lists, all in
//! one log entry (etcd's `Txn`, extended across data types); and why one is refused
//! ([`TxnError`]). Applied by `crate::apply::txn`; the contract is in `docs/transactions.md`.

use serde::{Deserialize, Serialize};

use super::{KvOp, LeaseOp, LedgerOp, Op, QueueOp, RateOp, StreamOp};

/// Compare, then / else: when every condition of `when` holds, the ops of `then` apply, else
/// those of `otherwise`; all of the chosen branch or, if one of its ops is refused, nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub when: Vec<Condition>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

/// How a condition compares what is stored (left) with its operand (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Compare {
    pub fn holds<T: Ord + ?Sized>(self, stored: &T, operand: &T) -> bool {
        let order = stored.cmp(operand);
        match self {
            Compare::Eq => order.is_eq(),
            Compare::Ne => order.is_ne(),
            Compare::Lt => order.is_lt(),
            Compare::Le => order.is_le(),
            Compare::Gt => order.is_gt(),
            Compare::Ge => order.is_ge(),
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Compare::Eq => "==",
            Compare::Ne => "!=",
            Compare::Lt => "<",
            Compare::Le => "<=",
            Compare::Gt => ">",
            Compare::Ge => ">=",
        }
    }
}

/// Which figure of a ledger account a [`Condition::Balance`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceField {
    DebitsPending,
    DebitsPosted,
    CreditsPending,
    CreditsPosted,
    /// `credits_posted - debits_posted`: what a liability or income account holds.
    CreditsMinusDebits,
    /// `debits_posted - credits_posted`: what an asset or expense account holds.
    DebitsMinusCredits,
}

/// One condition of a [`Txn`]. What is absent compares as documented per variant; an unknown
/// ledger account or queue refuses the transaction (`NOT_FOUND`) rather than choosing `otherwise`,
/// so a misspelt name is an error, not a branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key exists (live) when `exists`, or does not.
    KvExists {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        exists: bool,
    },
    /// The key's version (writes since creation; 0 when absent) against `version`.
    KvVersion {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmp: Compare,
        version: u64,
    },
    /// The key's modification revision (0 when absent) against `revision`.
    KvModRevision {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmp: Compare,
        revision: u64,
    },
    /// The key's value, bytewise, against `value`; never holds for an absent key.
    KvValue {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmp: Compare,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// The counter's value (0 when absent) against `value`.
    Counter {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmp: Compare,
        value: i64,
    },
    /// `token` is the live grant of lease `lease` (a fence).
    Fence {
        #[serde(with = "serde_bytes")]
        lease: Vec<u8>,
        token: u64,
    },
    /// A ledger account's figure against `amount`.
    Balance {
        account: u128,
        field: BalanceField,
        cmp: Compare,
        amount: i128,
    },
    /// A queue's depth (messages not yet acked: ready, delayed and in flight) against `depth`.
    QueueDepth {
        #[serde(with = "serde_bytes")]
        queue: Vec<u8>,
        cmp: Compare,
        depth: u64,
    },
}

impl Condition {
    /// Whether it reads homed data (leases, ledgers, queues): then only the home region's copy
    /// is current, and the transaction runs there.
    pub fn is_homed(&self) -> bool {
        matches!(
            self,
            Condition::Fence { .. } | Condition::Balance { .. } | Condition::QueueDepth { .. }
        )
    }
}

impl Txn {
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.then.iter().chain(&self.otherwise)
    }

    /// Whether it touches homed data in a condition or an op: it applies in the home region.
    pub fn is_homed(&self) -> bool {
        self.when.iter().any(Condition::is_homed) || self.ops().any(Op::is_homed)
    }

    /// Whether one of its ops writes a multi-region type (its effects go into the feed).
    pub fn replicates(&self) -> bool {
        self.ops().any(Op::replicates)
    }
}

/// Whether an op may be part of a transaction: the client mutations of every data type (and a
/// KV read, whose answer is the record). Upkeep, region and group ops, purges and transactions
/// may not.
pub fn is_transactional(op: &Op) -> bool {
    match op {
        Op::Kv(op) => matches!(
            op,
            KvOp::Put { .. } | KvOp::PutKeepTtl { .. } | KvOp::Delete { .. } | KvOp::Batch { .. } | KvOp::Get { .. }
        ),
        Op::Counter { .. } => true,
        Op::Rate(op) => matches!(op, RateOp::Check { .. }),
        Op::Lease(op) => matches!(
            op,
            LeaseOp::Acquire { .. } | LeaseOp::Renew { .. } | LeaseOp::Release { .. }
        ),
        Op::Ledger(op) => matches!(op, LedgerOp::CreateAccounts { .. } | LedgerOp::CreateTransfers { .. }),
        Op::Queue(op) => matches!(op, QueueOp::Enqueue { .. } | QueueOp::Ack { .. } | QueueOp::Nack { .. }),
        Op::Stream(op) => matches!(op, StreamOp::Produce { .. } | StreamOp::Trim { .. }),
        _ => false,
    }
}

impl std::fmt::Display for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "txn of {} conditions, {} then ops, {} else ops",
            self.when.len(),
            self.then.len(),
            self.otherwise.len()
        )
    }
}

/// Which op list of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Branch {
    Then,
    Otherwise,
}

impl std::fmt::Display for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Branch::Then => "then",
            Branch::Otherwise => "else",
        })
    }
}

/// Why a transaction was refused as a whole (nothing applied), beyond the checks every type
/// shares ([`super::OpError`]). An op of the chosen branch refused at apply is not an error but
/// an answer (`Response::TxnAborted`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    #[error("{branch}[{op}]: {what} cannot be part of a transaction")]
    NotTransactional { branch: Branch, op: u32, what: String },
    #[error("a transaction has {len} {what}, more than the limit of {max}")]
    TooMany { what: String, len: usize, max: usize },
    #[error("a transaction of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("{branch}[{op}]: {what} {name:?} is written by an earlier op of the branch; write it once")]
    Repeated {
        branch: Branch,
        op: u32,
        what: String,
        name: String,
    },
    #[error("{branch}[{op}]: {reason}")]
    InvalidOp {
        branch: Branch,
        op: u32,
        reason: Box<super::OpError>,
    },
    #[error("condition {index}: {reason}")]
    InvalidCondition { index: u32, reason: Box<super::OpError> },
    #[error("the reads of a transaction answer {len} bytes, more than the limit of {max}: read fewer keys")]
    AnswerTooLarge { len: usize, max: usize },
}
