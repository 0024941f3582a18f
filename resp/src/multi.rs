//! `MULTI` / `EXEC` / `WATCH` as one Basalt transaction.
//!
//! The queued commands become the ops of one transaction, so they apply all or nothing at one
//! revision, and no other client's write lands between them (Redis runs them back to back for
//! the same reason). `WATCH` remembers each key's revision as read then; `EXEC` makes "every
//! watched key is still at that revision" the transaction's condition, and answers a null
//! array when it fails, as Redis does. The reads inside (`GET`, `EXISTS`, ...) see the block's
//! earlier writes, as in Redis.
//!
//! Only commands whose effect is fixed when they are queued can be queued: reads (`GET`, `MGET`,
//! `EXISTS`, `STRLEN`, `TYPE`), `SET` without conditions, `MSET`, `DEL`, `GETDEL`, `PING`,
//! `ECHO`. A command whose write depends on what it reads (`INCR`, `APPEND`, `SETNX`, `SET NX`,
//! ...) would need a transaction that computes, which Basalt's does not; it is refused when it
//! is queued, which discards the block at `EXEC` (`EXECABORT`), as a Redis queueing error does.
//! Basalt writes a key at most once per transaction: a block that writes a key twice is
//! refused at `EXEC` with nothing applied.

use std::collections::HashSet;

use basalt_client::txn::{Compare, Condition};
use basalt_client::{Client, TxnOp, TxnOpResult, TxnOutcome};

use crate::command::{Bytes, Command};
use crate::frame::Reply;
use crate::keys::{now_ms, op_refusal, ttl_of, Ttl};
use crate::limits::TXN_OPS_MAX;
use crate::reply_error::client_error;

/// How one queued command's reply is made from its ops' results.
enum Shape {
    /// A fixed reply, no ops (`PING`, `ECHO`).
    Fixed(Reply),
    /// `+OK` after a put.
    Ok,
    /// `GET`, and `GETDEL`'s read: the value or null.
    Value,
    /// `MGET`: an array of values.
    Values,
    /// `DEL`: how many existed.
    DeletedCount,
    /// `EXISTS`: how many reads found a key.
    FoundCount,
    /// `STRLEN`.
    Length,
    /// `TYPE`.
    Kind,
}

/// A queued command as transaction ops, or why it cannot be queued.
pub struct Queued {
    ops: Vec<TxnOp>,
    writes: Vec<Bytes>,
    shape: Shape,
}

/// Whether and how `command` can be part of a block, decided when it is queued.
pub fn queue(command: &Command, name: &str) -> Result<Queued, Reply> {
    let one = |ops: Vec<TxnOp>, writes: Vec<Bytes>, shape| Ok(Queued { ops, writes, shape });
    match command {
        Command::Ping(message) => one(
            vec![],
            vec![],
            Shape::Fixed(
                message
                    .clone()
                    .map_or_else(|| Reply::Simple("PONG".into()), Reply::Bulk),
            ),
        ),
        Command::Echo(message) => one(vec![], vec![], Shape::Fixed(Reply::Bulk(message.clone()))),
        Command::Get(key) => one(vec![TxnOp::get(key.clone())], vec![], Shape::Value),
        Command::MGet(keys) => one(
            keys.iter().map(|k| TxnOp::get(k.clone())).collect(),
            vec![],
            Shape::Values,
        ),
        Command::Exists(keys) => one(
            keys.iter().map(|k| TxnOp::get(k.clone())).collect(),
            vec![],
            Shape::FoundCount,
        ),
        Command::StrLen(key) => one(vec![TxnOp::get(key.clone())], vec![], Shape::Length),
        Command::Type(key) => one(vec![TxnOp::get(key.clone())], vec![], Shape::Kind),
        Command::Set {
            key,
            value,
            expiry,
            keep_ttl: false,
            condition: None,
            get: false,
        } => {
            let op = match expiry.map(|e| ttl_of(e, now_ms())) {
                Some(Ttl::Past) => TxnOp::delete(key.clone()),
                Some(Ttl::Live(ttl)) => TxnOp::put_with_ttl(key.clone(), value.clone(), ttl),
                None => TxnOp::put(key.clone(), value.clone()),
            };
            one(vec![op], vec![key.clone()], Shape::Ok)
        }
        Command::MSet(pairs) => one(
            pairs.iter().map(|(k, v)| TxnOp::put(k.clone(), v.clone())).collect(),
            pairs.iter().map(|(k, _)| k.clone()).collect(),
            Shape::Ok,
        ),
        Command::Del(keys) => one(
            keys.iter().map(|k| TxnOp::delete(k.clone())).collect(),
            keys.clone(),
            Shape::DeletedCount,
        ),
        Command::GetDel(key) => one(
            vec![TxnOp::get(key.clone()), TxnOp::delete(key.clone())],
            vec![key.clone()],
            Shape::Value,
        ),
        _ => Err(unsupported(&name.to_ascii_uppercase())),
    }
}

fn unsupported(what: &str) -> Reply {
    Reply::error(format!(
        "ERR {what} cannot be queued in MULTI on Basalt: a block runs as one transaction of \
         reads, puts and deletes (see docs/redis.md)"
    ))
}

/// Runs a block: `watched` keys must still be at the revisions recorded (0: absent).
pub async fn exec(client: &Client, watched: &[(Bytes, u64)], queued: Vec<Queued>) -> Reply {
    let mut written = HashSet::new();
    for q in &queued {
        for key in &q.writes {
            if !written.insert(key.clone()) {
                return Reply::error(format!(
                    "EXECABORT Transaction discarded: Basalt runs a MULTI block as one transaction, which writes a key once; '{}' is written twice",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    let ops: usize = queued.iter().map(|q| q.ops.len()).sum();
    if ops > TXN_OPS_MAX {
        return Reply::error(format!(
            "EXECABORT Transaction discarded: {ops} operations, more than the {TXN_OPS_MAX} of one Basalt transaction"
        ));
    }
    let mut txn = client.txn();
    if ops == 0 {
        let Some((key, _)) = watched.first() else {
            return Reply::Array(queued.into_iter().map(|q| reply_of(q.shape, Vec::new())).collect());
        };
        // Nothing to apply, but the watches still decide: a read carries the conditions.
        txn = txn.then(TxnOp::get(key.clone()));
        for (key, revision) in watched {
            txn = txn.when(Condition::mod_revision(key.clone(), Compare::Eq, *revision));
        }
        return match txn.commit().await {
            Ok(TxnOutcome::Committed { succeeded: false, .. }) => Reply::NullArray,
            Ok(TxnOutcome::Committed { .. }) => {
                Reply::Array(queued.into_iter().map(|q| reply_of(q.shape, Vec::new())).collect())
            }
            Ok(TxnOutcome::Aborted { reason, .. }) => op_refusal(reason),
            Err(e) => client_error(&e),
        };
    }
    for (key, revision) in watched {
        txn = txn.when(Condition::mod_revision(key.clone(), Compare::Eq, *revision));
    }
    let mut shapes = Vec::with_capacity(queued.len());
    for q in queued {
        shapes.push((q.shape, q.ops.len()));
        for op in q.ops {
            txn = txn.then(op);
        }
    }
    match txn.commit().await {
        Ok(TxnOutcome::Committed { succeeded: false, .. }) => Reply::NullArray,
        Ok(TxnOutcome::Committed { results, .. }) => {
            let mut results = results.into_iter();
            Reply::Array(
                shapes
                    .into_iter()
                    .map(|(shape, n)| reply_of(shape, results.by_ref().take(n).collect()))
                    .collect(),
            )
        }
        Ok(TxnOutcome::Aborted { reason, .. }) => match op_refusal(reason) {
            Reply::Error(text) => Reply::error(format!("EXECABORT Transaction discarded, nothing applied: {text}")),
            other => other,
        },
        Err(e) => client_error(&e),
    }
}

/// One queued command's reply from the results of its own ops, in order.
fn reply_of(shape: Shape, results: Vec<TxnOpResult>) -> Reply {
    let value = |r: &TxnOpResult| match r {
        TxnOpResult::Read(entry) => entry.as_ref().map(|e| e.value.clone()),
        _ => None,
    };
    let first = results.first();
    match shape {
        Shape::Fixed(reply) => reply,
        Shape::Ok => Reply::ok(),
        Shape::Value => Reply::optional(first.and_then(value)),
        Shape::Values => Reply::Array(results.iter().map(|r| Reply::optional(value(r))).collect()),
        Shape::FoundCount => Reply::Integer(results.iter().filter(|r| value(r).is_some()).count() as i64),
        Shape::DeletedCount => Reply::Integer(
            results
                .iter()
                .filter(|r| matches!(r, TxnOpResult::Deleted { deleted: true, .. }))
                .count() as i64,
        ),
        Shape::Length => Reply::Integer(first.and_then(value).map_or(0, |v| v.len() as i64)),
        Shape::Kind => Reply::Simple(
            if first.and_then(value).is_some() {
                "string"
            } else {
                "none"
            }
            .into(),
        ),
    }
}
