//! Transactions, the local half: a `TxnRequest` as the state machine takes it (each op converted
//! by its data type's own conversion, so an op means the same in a transaction as alone), and
//! its answer. Served by `replication::home::Homed`, which first sends a transaction touching
//! homed data (leases, ledgers, queues) to the home region.

use basalt_client::pb;
use basalt_client::ErrorCode;
use basalt_storage::command::{BalanceField, Branch, Compare, Condition, KvOp, LeaseOp, Op, Response, Txn};
use tonic::Status;

use super::{counter, kv, lease, ledger, queue, rate, stream, write_refusal};
use super::{status, unexpected_result, Api};

/// What kind of answer an op of a transaction gets (a put and a delete both answer
/// `KvConditionFailed`, so the op, not the answer, says which reply it is).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Put,
    Delete,
    Get,
    Counter,
    Rate,
    Lease,
    Release,
    Ledger,
    Enqueue,
    Done,
    Produce,
    Trim,
}

/// The kind of an op [`Api::txn_op_of`] built (`None` for one it never builds).
fn kind_of(op: &Op) -> Option<Kind> {
    use basalt_storage::command::{QueueOp, StreamOp};
    Some(match op {
        Op::Kv(KvOp::Put { .. } | KvOp::PutKeepTtl { .. }) => Kind::Put,
        Op::Kv(KvOp::Get { .. }) => Kind::Get,
        Op::Kv(KvOp::Delete { .. }) => Kind::Delete,
        Op::Counter { .. } => Kind::Counter,
        Op::Rate(_) => Kind::Rate,
        Op::Lease(LeaseOp::Release { .. }) => Kind::Release,
        Op::Lease(LeaseOp::Acquire { .. } | LeaseOp::Renew { .. }) => Kind::Lease,
        Op::Ledger(_) => Kind::Ledger,
        Op::Queue(QueueOp::Enqueue { .. }) => Kind::Enqueue,
        Op::Queue(QueueOp::Ack { .. } | QueueOp::Nack { .. }) => Kind::Done,
        Op::Stream(StreamOp::Produce { .. }) => Kind::Produce,
        Op::Stream(StreamOp::Trim { .. }) => Kind::Trim,
        _ => return None,
    })
}

/// A refusal of one op or condition, its place named first; the code is the one the op alone
/// would get.
fn at(place: impl std::fmt::Display, s: Status) -> Status {
    Status::with_metadata(s.code(), format!("{place}: {}", s.message()), s.metadata().clone())
}

fn invalid(message: impl Into<String>) -> Status {
    status(ErrorCode::InvalidArgument, message)
}

fn no_header(header: &Option<pb::RequestHeader>) -> Result<(), Status> {
    match header {
        None => Ok(()),
        Some(_) => Err(invalid(
            "an op of a transaction carries no header (the transaction's session and fence apply)",
        )),
    }
}

fn compare_of(value: i32) -> Result<Compare, Status> {
    Ok(match pb::Compare::try_from(value) {
        Ok(pb::Compare::Eq) => Compare::Eq,
        Ok(pb::Compare::Ne) => Compare::Ne,
        Ok(pb::Compare::Lt) => Compare::Lt,
        Ok(pb::Compare::Le) => Compare::Le,
        Ok(pb::Compare::Gt) => Compare::Gt,
        Ok(pb::Compare::Ge) => Compare::Ge,
        Err(_) => return Err(invalid(format!("unknown compare {value}"))),
    })
}

fn balance_field_of(value: i32) -> Result<BalanceField, Status> {
    Ok(match pb::BalanceField::try_from(value) {
        Ok(pb::BalanceField::CreditsMinusDebits) => BalanceField::CreditsMinusDebits,
        Ok(pb::BalanceField::DebitsMinusCredits) => BalanceField::DebitsMinusCredits,
        Ok(pb::BalanceField::CreditsPosted) => BalanceField::CreditsPosted,
        Ok(pb::BalanceField::DebitsPosted) => BalanceField::DebitsPosted,
        Ok(pb::BalanceField::CreditsPending) => BalanceField::CreditsPending,
        Ok(pb::BalanceField::DebitsPending) => BalanceField::DebitsPending,
        Err(_) => return Err(invalid(format!("unknown balance field {value}"))),
    })
}

/// An i128 as 16 big-endian bytes (two's complement); empty is 0.
fn i128_of(bytes: &[u8], field: &str) -> Result<i128, Status> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| invalid(format!("{field} must be 16 bytes, got {}", bytes.len())))?;
    Ok(i128::from_be_bytes(array))
}

fn condition_of(c: pb::TxnCondition) -> Result<Condition, Status> {
    use pb::txn_condition::Condition as C;
    Ok(match c.condition {
        Some(C::KvExists(c)) => Condition::KvExists {
            key: c.key,
            exists: c.exists,
        },
        Some(C::KvVersion(c)) => Condition::KvVersion {
            key: c.key,
            cmp: compare_of(c.compare)?,
            version: c.value,
        },
        Some(C::KvModRevision(c)) => Condition::KvModRevision {
            key: c.key,
            cmp: compare_of(c.compare)?,
            revision: c.value,
        },
        Some(C::KvValue(c)) => Condition::KvValue {
            key: c.key,
            cmp: compare_of(c.compare)?,
            value: c.value,
        },
        Some(C::Counter(c)) => Condition::Counter {
            key: c.key,
            cmp: compare_of(c.compare)?,
            value: c.value,
        },
        Some(C::Fence(f)) => Condition::Fence {
            lease: f.lease,
            token: f.token,
        },
        Some(C::Balance(b)) => Condition::Balance {
            account: ledger::u128_of(&b.account, "account")?,
            field: balance_field_of(b.field)?,
            cmp: compare_of(b.compare)?,
            amount: i128_of(&b.amount, "amount")?,
        },
        Some(C::QueueDepth(q)) => Condition::QueueDepth {
            queue: q.queue,
            cmp: compare_of(q.compare)?,
            depth: q.depth,
        },
        None => return Err(invalid("a condition needs one of its kinds")),
    })
}

impl Api {
    fn txn_op_of(&self, op: pb::TxnOp) -> Result<Op, Status> {
        use pb::txn_op::Op as O;
        match op.op {
            Some(O::Put(r)) => {
                no_header(&r.header)?;
                kv::put_op(r)
            }
            Some(O::PutKeepTtl(r)) => {
                no_header(&r.header)?;
                kv::put_keep_ttl_op(r)
            }
            Some(O::Delete(r)) => {
                no_header(&r.header)?;
                kv::delete_op(r)
            }
            Some(O::Get(r)) => match r.stale {
                true => Err(invalid(
                    "a get inside a transaction reads as the transaction applies; it cannot be stale",
                )),
                false => Ok(Op::Kv(KvOp::Get { key: r.key })),
            },
            Some(O::Counter(r)) => {
                no_header(&r.header)?;
                let ops = r
                    .ops
                    .into_iter()
                    .map(|op| self.counter_op_of(op))
                    .collect::<Result<_, _>>()?;
                Ok(Op::Counter { ops })
            }
            Some(O::RateCheck(r)) => {
                no_header(&r.header)?;
                let checks = r.checks.into_iter().map(rate::check_of).collect::<Result<_, _>>()?;
                Ok(Op::Rate(basalt_storage::command::RateOp::Check { checks }))
            }
            Some(O::LeaseAcquire(r)) => {
                no_header(&r.header)?;
                if r.wait_ms > 0 {
                    return Err(invalid(
                        "a lease acquire inside a transaction cannot wait (wait_ms must be 0)",
                    ));
                }
                Ok(Op::Lease(LeaseOp::Acquire {
                    name: r.name,
                    holder: r.holder,
                    ttl_ms: r.ttl_ms,
                }))
            }
            Some(O::LeaseRenew(r)) => {
                no_header(&r.header)?;
                Ok(Op::Lease(LeaseOp::Renew {
                    name: r.name,
                    holder: r.holder,
                    token: r.token,
                    ttl_ms: r.ttl_ms,
                }))
            }
            Some(O::LeaseRelease(r)) => {
                no_header(&r.header)?;
                Ok(Op::Lease(LeaseOp::Release {
                    name: r.name,
                    holder: r.holder,
                    token: r.token,
                }))
            }
            Some(O::CreateAccounts(r)) => {
                no_header(&r.header)?;
                let accounts = r
                    .accounts
                    .into_iter()
                    .map(ledger::account_of)
                    .collect::<Result<_, _>>()?;
                Ok(Op::Ledger(basalt_storage::command::LedgerOp::CreateAccounts {
                    accounts,
                }))
            }
            Some(O::CreateTransfers(r)) => {
                no_header(&r.header)?;
                let transfers = r
                    .transfers
                    .into_iter()
                    .map(ledger::transfer_of)
                    .collect::<Result<_, _>>()?;
                Ok(Op::Ledger(basalt_storage::command::LedgerOp::CreateTransfers {
                    transfers,
                }))
            }
            Some(O::Enqueue(r)) => {
                no_header(&r.header)?;
                queue::enqueue_op(r)
            }
            Some(O::Ack(r)) => {
                no_header(&r.header)?;
                queue::ack_op(r)
            }
            Some(O::Nack(r)) => {
                no_header(&r.header)?;
                queue::nack_op(r)
            }
            Some(O::Produce(r)) => {
                no_header(&r.header)?;
                Ok(stream::produce_op(r))
            }
            Some(O::Trim(r)) => {
                no_header(&r.header)?;
                stream::trim_op(r)
            }
            None => Err(invalid("an op needs one of its kinds")),
        }
    }

    /// The transaction a request carries, and its header. Each op is converted as its own call
    /// converts it; a bad one is refused naming its place (`then[2]: ...`).
    pub(crate) fn txn_of(&self, r: pb::TxnRequest) -> Result<(Option<pb::RequestHeader>, Txn), Status> {
        let when = r
            .when
            .into_iter()
            .enumerate()
            .map(|(index, c)| condition_of(c).map_err(|s| at(format!("condition {index}"), s)))
            .collect::<Result<_, _>>()?;
        let branch = |branch: Branch, ops: Vec<pb::TxnOp>| {
            ops.into_iter()
                .enumerate()
                .map(|(position, op)| self.txn_op_of(op).map_err(|s| at(format!("{branch}[{position}]"), s)))
                .collect::<Result<Vec<_>, _>>()
        };
        let then = branch(Branch::Then, r.then)?;
        let otherwise = branch(Branch::Otherwise, r.otherwise)?;
        Ok((r.header, Txn { when, then, otherwise }))
    }

    /// Applies a transaction here (the caller decided this region serves it) and answers it.
    pub(crate) async fn commit_txn(
        &self,
        header: Option<pb::RequestHeader>,
        txn: Txn,
    ) -> Result<pb::TxnResponse, Status> {
        let kinds = |ops: &[Op]| ops.iter().map(kind_of).collect::<Vec<_>>();
        let (then_kinds, else_kinds) = (kinds(&txn.then), kinds(&txn.otherwise));
        let kind = |branch: Branch, op: usize| {
            let kinds = match branch {
                Branch::Then => &then_kinds,
                Branch::Otherwise => &else_kinds,
            };
            kinds.get(op).copied().flatten()
        };
        match self.write(header, Op::Txn(txn)).await? {
            Response::Txn { branch, results } => {
                let results = results
                    .into_iter()
                    .enumerate()
                    .map(|(op, answer)| op_result(kind(branch, op), answer))
                    .collect::<Result<_, _>>()?;
                Ok(pb::TxnResponse {
                    succeeded: branch == Branch::Then,
                    committed: true,
                    results,
                    failed_op: 0,
                    failure: None,
                })
            }
            Response::TxnAborted { branch, op, answer } => Ok(pb::TxnResponse {
                succeeded: branch == Branch::Then,
                committed: false,
                results: Vec::new(),
                failed_op: op,
                failure: Some(op_result(kind(branch, op as usize), *answer)?),
            }),
            other => Err(unexpected_result(&other)),
        }
    }
}

/// One op's answer as its own call would have given it, or its refusal.
fn op_result(kind: Option<Kind>, answer: Response) -> Result<pb::TxnOpResult, Status> {
    use pb::txn_op_result::Result as R;
    let result = match (kind, answer) {
        (_, Response::Refused(e)) => R::Error(write_refusal(&e)),
        (Some(Kind::Put), answer) => R::Put(kv::put_reply(answer)?),
        (Some(Kind::Delete), answer) => R::Delete(kv::delete_reply(answer)?),
        (Some(Kind::Get), Response::KvRecord(record)) => R::Get(kv::record_reply(record)),
        (Some(Kind::Counter), answer) => R::Counter(counter::counters_reply(answer)?),
        (Some(Kind::Rate), answer) => R::RateCheck(rate::decisions_reply(answer)?),
        (Some(Kind::Lease), Response::Lease(outcome)) => R::Lease(lease::lease_response(outcome)?),
        (Some(Kind::Release), answer) => R::LeaseRelease(lease::released_reply(answer)?),
        (Some(Kind::Ledger), answer) => R::Ledger(ledger::created_reply(answer)?),
        (Some(Kind::Enqueue), answer) => R::Enqueue(queue::enqueued_reply(answer)?),
        (Some(Kind::Done), answer) => R::Ack(queue::done_reply(answer)?),
        (Some(Kind::Produce), answer) => R::Produce(stream::produced_reply(answer)?),
        (Some(Kind::Trim), answer) => R::Trim(stream::trimmed_reply(answer)?),
        (_, other) => return Err(unexpected_result(&other)),
    };
    Ok(pb::TxnOpResult { result: Some(result) })
}
