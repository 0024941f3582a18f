//! `basalt txn [FILE]`: one transaction read from a JSON document (a file, or stdin with `-` or
//! no file). The document's format is in `docs/transactions.md`; [`parse`] turns it into the
//! SDK's builder steps, so the CLI and the SDK send the same request.

use std::time::Duration;

use basalt_client::ledger::{Account, Transfer};
use basalt_client::stream::Record;
use basalt_client::txn::{BalanceField, Compare, Condition, TxnOp, TxnOpResult, TxnOutcome};
use basalt_client::{Client, CounterChange, CounterOp, CounterOutcome, NewMessage, RateCheck, RateLimit};
use serde::Deserialize;

use super::{err, show_optional, unhex};
use crate::commands::parse_duration;

/// A transaction document: conditions, the ops when they all hold, the ops otherwise.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    when: Vec<ConditionDoc>,
    #[serde(default)]
    then: Vec<OpDoc>,
    #[serde(default, rename = "else")]
    otherwise: Vec<OpDoc>,
}

/// A number, or a decimal string for values past 2^64 (ledger ids and amounts are u128).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Wide {
    Number(i64),
    Text(String),
}

impl Wide {
    fn u128(&self, what: &str) -> Result<u128, String> {
        match self {
            Wide::Number(n) => u128::try_from(*n).map_err(|_| format!("{what} must not be negative, got {n}")),
            Wide::Text(t) => t.parse().map_err(|_| format!("{what} {t:?} is not a whole number")),
        }
    }

    fn i128(&self, what: &str) -> Result<i128, String> {
        match self {
            Wide::Number(n) => Ok(i128::from(*n)),
            Wide::Text(t) => t.parse().map_err(|_| format!("{what} {t:?} is not a whole number")),
        }
    }
}

fn compare_of(text: &str) -> Result<Compare, String> {
    Ok(match text {
        "==" | "eq" => Compare::Eq,
        "!=" | "ne" => Compare::Ne,
        "<" | "lt" => Compare::Lt,
        "<=" | "le" => Compare::Le,
        ">" | "gt" => Compare::Gt,
        ">=" | "ge" => Compare::Ge,
        other => return Err(format!("unknown comparison {other:?} (one of == != < <= > >=)")),
    })
}

fn duration_of(text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref().map(parse_duration).transpose()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Compared<T> {
    key: String,
    cmp: String,
    value: T,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ConditionDoc {
    Exists(String),
    Absent(String),
    Version(Compared<u64>),
    ModRevision(Compared<u64>),
    Value(Compared<String>),
    Counter(Compared<i64>),
    Fence {
        lease: String,
        token: u64,
    },
    Balance {
        account: Wide,
        field: String,
        cmp: String,
        amount: Wide,
    },
    QueueDepth {
        queue: String,
        cmp: String,
        depth: u64,
    },
}

impl ConditionDoc {
    fn condition(self) -> Result<Condition, String> {
        Ok(match self {
            ConditionDoc::Exists(key) => Condition::exists(key),
            ConditionDoc::Absent(key) => Condition::absent(key),
            ConditionDoc::Version(c) => Condition::version(c.key, compare_of(&c.cmp)?, c.value),
            ConditionDoc::ModRevision(c) => Condition::mod_revision(c.key, compare_of(&c.cmp)?, c.value),
            ConditionDoc::Value(c) => Condition::value(c.key, compare_of(&c.cmp)?, c.value),
            ConditionDoc::Counter(c) => Condition::counter(c.key, compare_of(&c.cmp)?, c.value),
            ConditionDoc::Fence { lease, token } => Condition::fence(lease, token),
            ConditionDoc::Balance {
                account,
                field,
                cmp,
                amount,
            } => {
                let field = match field.as_str() {
                    "credits_minus_debits" => BalanceField::CreditsMinusDebits,
                    "debits_minus_credits" => BalanceField::DebitsMinusCredits,
                    "credits_posted" => BalanceField::CreditsPosted,
                    "debits_posted" => BalanceField::DebitsPosted,
                    "credits_pending" => BalanceField::CreditsPending,
                    "debits_pending" => BalanceField::DebitsPending,
                    other => return Err(format!("unknown balance field {other:?}")),
                };
                Condition::balance(
                    account.u128("account")?,
                    field,
                    compare_of(&cmp)?,
                    amount.i128("amount")?,
                )
            }
            ConditionDoc::QueueDepth { queue, cmp, depth } => Condition::queue_depth(queue, compare_of(&cmp)?, depth),
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PutDoc {
    key: String,
    value: String,
    ttl: Option<String>,
    #[serde(default)]
    if_absent: bool,
    if_revision: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MessageDoc {
    payload: String,
    dedup_id: Option<String>,
    #[serde(default)]
    priority: u8,
    delay: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OpDoc {
    Put(PutDoc),
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
    Incr {
        key: String,
        by: i64,
        min: Option<i64>,
        max: Option<i64>,
        /// A windowed increment: the window (`minute`, `hour`, `day` or a duration) and how long
        /// each window is kept after it ends; `at_ms` dates the event (now when absent).
        window: Option<String>,
        retention: Option<String>,
        at_ms: Option<u64>,
        /// An expiring counter: created expiring this long after (`10m`).
        ttl: Option<String>,
    },
    CounterDelete {
        key: String,
    },
    Set {
        key: String,
        value: i64,
    },
    Rate {
        key: String,
        limit: u64,
        window: String,
        #[serde(default = "one")]
        cost: u64,
        #[serde(default)]
        global: bool,
    },
    TokenBucket {
        key: String,
        rate: u64,
        per: String,
        burst: u64,
        #[serde(default = "one")]
        cost: u64,
    },
    Acquire {
        lease: String,
        holder: String,
        ttl: String,
    },
    Renew {
        lease: String,
        holder: String,
        token: u64,
        ttl: String,
    },
    Release {
        lease: String,
        holder: String,
        token: u64,
    },
    Account {
        id: Wide,
        ledger: u32,
        code: u16,
        #[serde(default)]
        flags: u16,
    },
    Transfer {
        id: Wide,
        debit: Wide,
        credit: Wide,
        amount: Wide,
        ledger: u32,
        code: u16,
        #[serde(default)]
        flags: u16,
        pending_id: Option<Wide>,
        #[serde(default)]
        timeout: u32,
    },
    Enqueue {
        queue: String,
        messages: Vec<MessageDoc>,
    },
    Ack {
        queue: String,
        receipt: String,
    },
    Nack {
        queue: String,
        receipt: String,
        delay: Option<String>,
    },
    Produce {
        topic: String,
        #[serde(default)]
        key: String,
        value: String,
        partition: Option<u32>,
    },
}

fn one() -> u64 {
    1
}

impl OpDoc {
    fn op(self) -> Result<TxnOp, String> {
        Ok(match self {
            OpDoc::Put(p) => {
                let ttl = duration_of(&p.ttl)?;
                match (p.if_absent, p.if_revision, ttl) {
                    (true, Some(_), _) => return Err("a put takes if_absent or if_revision, not both".into()),
                    (true, None, ttl) => TxnOp::put_if_absent(p.key, p.value, ttl),
                    (false, Some(_), Some(_)) => return Err("a put with if_revision takes no ttl".into()),
                    (false, Some(revision), None) => TxnOp::put_if_revision(p.key, p.value, revision),
                    (false, None, Some(ttl)) => TxnOp::put_with_ttl(p.key, p.value, ttl),
                    (false, None, None) => TxnOp::put(p.key, p.value),
                }
            }
            OpDoc::Delete { key } => TxnOp::delete(key),
            OpDoc::Get { key } => TxnOp::get(key),
            OpDoc::Incr {
                key,
                by,
                min,
                max,
                window: None,
                retention: None,
                at_ms: None,
                ttl: None,
            } => TxnOp::counter(CounterOp::bounded(key, by, min, max)),
            OpDoc::Incr {
                key,
                by,
                min,
                max,
                window: None,
                retention: None,
                at_ms: None,
                ttl: Some(ttl),
            } => TxnOp::counter(CounterOp {
                key: key.into_bytes(),
                change: CounterChange::IncrExpiring {
                    delta: by,
                    min,
                    max,
                    ttl: parse_duration(&ttl)?,
                },
            }),
            OpDoc::Incr {
                key,
                by,
                min: None,
                max: None,
                window: Some(window),
                retention: Some(retention),
                at_ms,
                ttl: None,
            } => TxnOp::counter(CounterOp::windowed(
                key,
                by,
                super::counter::parse_window(&window)?,
                parse_duration(&retention)?,
                at_ms,
            )),
            OpDoc::Incr { .. } => {
                return Err("a windowed incr takes window and retention (and at_ms), without min, max or ttl".into())
            }
            OpDoc::CounterDelete { key } => TxnOp::counter(CounterOp::delete(key)),
            OpDoc::Set { key, value } => TxnOp::counter(CounterOp::set(key, value)),
            OpDoc::Rate {
                key,
                limit,
                window,
                cost,
                global,
            } => {
                let window = parse_duration(&window)?;
                let limit = match global {
                    true => RateLimit::GlobalSlidingWindow { limit, window },
                    false => RateLimit::SlidingWindow { limit, window },
                };
                TxnOp::rate_checks(vec![RateCheck {
                    key: key.into_bytes(),
                    limit,
                    cost,
                }])
            }
            OpDoc::TokenBucket {
                key,
                rate,
                per,
                burst,
                cost,
            } => TxnOp::rate_checks(vec![RateCheck {
                key: key.into_bytes(),
                limit: RateLimit::TokenBucket {
                    rate,
                    per: parse_duration(&per)?,
                    burst,
                },
                cost,
            }]),
            OpDoc::Acquire { lease, holder, ttl } => TxnOp::lease_acquire(lease, holder, parse_duration(&ttl)?),
            OpDoc::Renew {
                lease,
                holder,
                token,
                ttl,
            } => TxnOp::lease_renew(lease, holder, token, parse_duration(&ttl)?),
            OpDoc::Release { lease, holder, token } => TxnOp::lease_release(lease, holder, token),
            OpDoc::Account {
                id,
                ledger,
                code,
                flags,
            } => TxnOp::create_accounts(&[Account {
                id: id.u128("id")?,
                ledger,
                code,
                flags,
                ..Account::default()
            }]),
            OpDoc::Transfer {
                id,
                debit,
                credit,
                amount,
                ledger,
                code,
                flags,
                pending_id,
                timeout,
            } => TxnOp::create_transfers(&[Transfer {
                id: id.u128("id")?,
                debit_account_id: debit.u128("debit")?,
                credit_account_id: credit.u128("credit")?,
                amount: amount.u128("amount")?,
                pending_id: pending_id.map(|p| p.u128("pending_id")).transpose()?.unwrap_or(0),
                timeout,
                ledger,
                code,
                flags,
                ..Transfer::default()
            }]),
            OpDoc::Enqueue { queue, messages } => {
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let mut message = NewMessage::new(m.payload).priority(m.priority);
                        if let Some(id) = m.dedup_id {
                            message = message.dedup_id(id);
                        }
                        if let Some(delay) = duration_of(&m.delay)? {
                            message = message.delay(delay);
                        }
                        Ok::<_, String>(message)
                    })
                    .collect::<Result<_, _>>()?;
                TxnOp::enqueue(queue, messages)
            }
            OpDoc::Ack { queue, receipt } => TxnOp::ack(queue, unhex(&receipt)?),
            OpDoc::Nack { queue, receipt, delay } => {
                TxnOp::nack(queue, unhex(&receipt)?, duration_of(&delay)?.unwrap_or_default())
            }
            OpDoc::Produce {
                topic,
                key,
                value,
                partition,
            } => {
                let mut record = Record::new(key, value);
                record.partition = partition;
                TxnOp::produce(topic, vec![record])
            }
        })
    }
}

/// What a document stands for: the builder's steps.
#[derive(Debug)]
pub struct Steps {
    pub when: Vec<Condition>,
    pub then: Vec<TxnOp>,
    pub otherwise: Vec<TxnOp>,
}

/// The builder steps a document stands for, or what is wrong with it (naming the place).
pub fn parse(text: &str) -> Result<Steps, String> {
    let document: Document = serde_json::from_str(text).map_err(|e| format!("transaction document: {e}"))?;
    let when = document
        .when
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.condition().map_err(|e| format!("condition {i}: {e}")))
        .collect::<Result<_, _>>()?;
    let ops = |name: &str, ops: Vec<OpDoc>| {
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| op.op().map_err(|e| format!("{name}[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Steps {
        when,
        then: ops("then", document.then)?,
        otherwise: ops("else", document.otherwise)?,
    })
}

fn show(result: &TxnOpResult) -> String {
    match result {
        TxnOpResult::Written { revision, .. } => format!("OK revision={revision}"),
        TxnOpResult::Deleted { deleted, revision } => {
            format!("{} revision={revision}", if *deleted { "DELETED" } else { "NOT_FOUND" })
        }
        TxnOpResult::Conflict { current } => format!("CONFLICT current revision={}", show_optional(*current)),
        TxnOpResult::Read(None) => "NOT_FOUND".into(),
        TxnOpResult::Read(Some(entry)) => format!(
            "{:?} revision={} version={}",
            String::from_utf8_lossy(&entry.value),
            entry.mod_revision,
            entry.version
        ),
        TxnOpResult::Counters(outcomes) => outcomes
            .iter()
            .map(|o| match o {
                CounterOutcome::Applied { value } => format!("value={value}"),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        TxnOpResult::Rate(decisions) => decisions
            .iter()
            .map(|d| match d.allowed {
                true => format!("ALLOWED remaining={}", d.remaining),
                false => format!("DENIED retry_after_ms={}", d.retry_after.as_millis()),
            })
            .collect::<Vec<_>>()
            .join(" "),
        TxnOpResult::LeaseGranted { token, expires_at_ms } => {
            format!("GRANTED token={token} expires_at_ms={expires_at_ms}")
        }
        TxnOpResult::LeaseHeld { holder, expires_at_ms } => {
            format!("HELD by {:?} until {expires_at_ms}", String::from_utf8_lossy(holder))
        }
        TxnOpResult::Released { was_live } => format!("RELEASED was_live={was_live}"),
        TxnOpResult::Ledger(failures) if failures.is_empty() => "OK".into(),
        TxnOpResult::Ledger(failures) => failures
            .iter()
            .map(|f| format!("event {}: {}", f.index, f.result))
            .collect::<Vec<_>>()
            .join(", "),
        TxnOpResult::Enqueued(outcomes) => outcomes
            .iter()
            .map(|o| format!("id={}{}", o.id, if o.duplicate { " (duplicate)" } else { "" }))
            .collect::<Vec<_>>()
            .join(" "),
        TxnOpResult::Done => "OK".into(),
        TxnOpResult::Produced(produced) => produced
            .iter()
            .map(|p| format!("partition={} offset={}", p.partition, p.offset))
            .collect::<Vec<_>>()
            .join(" "),
        TxnOpResult::Trimmed(removed) => format!("TRIMMED {removed}"),
        TxnOpResult::Refused(e) => format!("REFUSED {e}"),
    }
}

/// Runs one transaction document: prints the branch and every op's answer; an aborted
/// transaction is an error (exit 1) naming the op and why.
pub async fn txn(client: &Client, text: &str) -> Result<(), String> {
    let Steps { when, then, otherwise } = parse(text)?;
    let mut builder = client.txn();
    for condition in when {
        builder = builder.when(condition);
    }
    for op in then {
        builder = builder.then(op);
    }
    for op in otherwise {
        builder = builder.otherwise(op);
    }
    let branch = |succeeded: bool| if succeeded { "then" } else { "else" };
    match builder.commit().await.map_err(err)? {
        TxnOutcome::Committed { succeeded, results } => {
            crate::outln!("COMMITTED {}", branch(succeeded));
            for (i, result) in results.iter().enumerate() {
                crate::outln!("{}[{i}] {}", branch(succeeded), show(result));
            }
            Ok(())
        }
        TxnOutcome::Aborted { succeeded, op, reason } => Err(format!(
            "ABORTED: {}[{op}] {} (nothing applied)",
            branch(succeeded),
            show(&reason)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_of_every_kind_parses_and_bad_ones_name_their_place() {
        let text = r#"{
            "when": [
                {"absent": "idem/1"}, {"exists": "order/1"},
                {"version": {"key": "k", "cmp": "==", "value": 0}},
                {"mod_revision": {"key": "k", "cmp": "<", "value": 9}},
                {"value": {"key": "order/1", "cmp": "==", "value": "new"}},
                {"counter": {"key": "stock", "cmp": ">=", "value": 1}},
                {"fence": {"lease": "worker", "token": 7}},
                {"balance": {"account": "340282366920938463463374607431768211455", "field": "credits_minus_debits", "cmp": ">=", "amount": -5}},
                {"queue_depth": {"queue": "jobs", "cmp": "<", "depth": 1000}}
            ],
            "then": [
                {"put": {"key": "idem/1", "value": "done", "ttl": "24h", "if_absent": true}},
                {"put": {"key": "order/1", "value": "paid", "if_revision": 3}},
                {"delete": {"key": "cart/1"}}, {"get": {"key": "order/1"}},
                {"incr": {"key": "stock", "by": -1, "min": 0}}, {"set": {"key": "c", "value": 0}},
                {"incr": {"key": "fails/u1", "by": 1, "max": 5, "ttl": "10m"}},
                {"rate": {"key": "tenant:1", "limit": 100, "window": "1s"}},
                {"token_bucket": {"key": "user:1", "rate": 10, "per": "1s", "burst": 20, "cost": 2}},
                {"acquire": {"lease": "l", "holder": "w", "ttl": "10s"}},
                {"renew": {"lease": "l", "holder": "w", "token": 3, "ttl": "10s"}},
                {"release": {"lease": "l", "holder": "w", "token": 3}},
                {"account": {"id": 1, "ledger": 1, "code": 10}},
                {"transfer": {"id": 5, "debit": 1, "credit": 2, "amount": 10, "ledger": 1, "code": 1}},
                {"enqueue": {"queue": "emails", "messages": [{"payload": "hi", "dedup_id": "n-1", "priority": 2, "delay": "1s"}]}},
                {"ack": {"queue": "q", "receipt": "00ff"}}, {"nack": {"queue": "q", "receipt": "00ff", "delay": "2s"}},
                {"produce": {"topic": "orders.v1", "key": "order/1", "value": "paid"}}
            ],
            "else": [{"get": {"key": "idem/1"}}]
        }"#;
        let steps = parse(text).expect("parses");
        assert_eq!((steps.when.len(), steps.then.len(), steps.otherwise.len()), (9, 18, 1));

        for (bad, place) in [
            (r#"{"then": [{"put": {"key": "k"}}]}"#, "transaction document"),
            (
                r#"{"when": [{"counter": {"key": "c", "cmp": "=~", "value": 1}}]}"#,
                "condition 0",
            ),
            (
                r#"{"then": [{"get": {"key": "a"}}, {"put": {"key": "k", "value": "v", "ttl": "soon"}}]}"#,
                "then[1]",
            ),
            (
                r#"{"else": [{"transfer": {"id": -1, "debit": 1, "credit": 2, "amount": 1, "ledger": 1, "code": 1}}]}"#,
                "else[0]",
            ),
            (r#"{"then": [{"ack": {"queue": "q", "receipt": "zz"}}]}"#, "then[0]"),
            (r#"{"then": [], "otherwise": []}"#, "transaction document"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.starts_with(place), "{bad}: {e}");
        }
    }
}
