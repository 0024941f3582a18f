//! Combining appends: concurrent `XADD`s of one stream from many connections become one
//! transaction, one produce of many records, as [`crate::combine`] does for writes of one key.
//!
//! Each `XADD` on its own is a Raft round (a transaction holding the produce and the condition
//! that no KV key has the stream's name); the leader cannot merge two of them into one entry.
//! So the appends of a stream that arrive while one round is on its way wait, and go next as
//! one transaction of many records, in arrival order: each gets its own offset, so its own id.
//! Every append of a round was sent before the round began and is answered after it committed,
//! so all of them may take effect at that instant, in that order: still linearizable.
//!
//! An `XADD` with `MAXLEN` / `MINID` trims the stream as it stands once its own entry is in: its
//! trim goes into the round's transaction after the produce and leaves alone the entries after
//! its own (`newer_kept`), so the round ends as the `XADD`s one after another would leave it
//! ([`trims_of`]).

use basalt_client::{Client, ErrorCode, Record, TrimRule, TxnOp, TxnOpResult, TxnOutcome};
use tokio::sync::oneshot;

use crate::combine::{KeyQueues, RunnerGuard};
use crate::command::StreamTrim;
use crate::frame::Reply;
use crate::keys::{op_refusal, WRONGTYPE};
use crate::limits::{STREAM_APPEND_BYTES_MAX, STREAM_APPEND_RECORDS_MAX, STREAM_APPEND_TRIMS_MAX, VALUE_BYTES_MAX};
use crate::reply_error::client_error;
use crate::stream_ids::StreamId;
use crate::streams::create_stream;
use basalt_client::txn::Condition;

struct Appending {
    /// The entry as the record's value.
    value: Vec<u8>,
    /// False with `NOMKSTREAM`.
    create: bool,
    /// `MAXLEN` / `MINID`: the trim once this entry is in.
    trim: Option<StreamTrim>,
    reply: oneshot::Sender<Reply>,
}

/// One entry of a transaction: its encoded value, whether it may create the stream, its trim.
type Entry<'a> = (&'a [u8], bool, Option<StreamTrim>);

/// The appends of one node's RESP server: per stream, the entries waiting for the next round.
#[derive(Clone, Default)]
pub struct Appender {
    waiting: KeyQueues<Appending>,
}

impl Appender {
    /// Appends `value` (an encoded entry) to the stream `key`, then trims it by `trim`, with
    /// whatever other connections append to it meanwhile: the entry's id, null when there is no
    /// stream and `create` is false, or the error.
    pub async fn append(
        &self,
        client: &Client,
        key: &[u8],
        value: Vec<u8>,
        create: bool,
        trim: Option<StreamTrim>,
    ) -> Reply {
        // Refused alone, before it could fail a round of others' entries.
        if value.len() > VALUE_BYTES_MAX {
            return Reply::error(format!(
                "ERR the entry is {} bytes encoded; a stream entry is at most {VALUE_BYTES_MAX}",
                value.len()
            ));
        }
        let (reply, answer) = oneshot::channel();
        if self.waiting.join(
            key,
            Appending {
                value,
                create,
                trim,
                reply,
            },
        ) {
            tokio::spawn(run(self.waiting.clone(), client.clone(), key.to_vec()));
        }
        answer
            .await
            .unwrap_or_else(|_| Reply::error("UNCERTAIN the node stopped while the entry was on its way"))
    }
}

async fn run(queues: KeyQueues<Appending>, client: Client, key: Vec<u8>) {
    let mut guard = RunnerGuard::new(&queues, &key, |a: Appending| {
        let _ = a
            .reply
            .send(Reply::error("ERR the append's round failed; nothing was appended"));
    });
    loop {
        let round = guard.next_round().await;
        if round.is_empty() {
            return;
        }
        for part in parts(round) {
            let entries: Vec<Entry<'_>> = part.iter().map(|a| (a.value.as_slice(), a.create, a.trim)).collect();
            let replies = append_part(&client, &key, &entries).await;
            guard.answering();
            for (appending, reply) in part.into_iter().zip(replies) {
                let _ = appending.reply.send(reply);
            }
        }
    }
}

/// A round cut into transactions of at most [`STREAM_APPEND_RECORDS_MAX`] entries,
/// [`STREAM_APPEND_BYTES_MAX`] bytes (one larger entry goes alone) and
/// [`STREAM_APPEND_TRIMS_MAX`] entries that trim, in order.
fn parts(round: Vec<Appending>) -> Vec<Vec<Appending>> {
    let mut parts: Vec<Vec<Appending>> = Vec::new();
    let mut bytes = 0;
    for appending in round {
        let fits = parts.last().is_some_and(|part| {
            part.len() < STREAM_APPEND_RECORDS_MAX
                && bytes + appending.value.len() <= STREAM_APPEND_BYTES_MAX
                && (appending.trim.is_none()
                    || part.iter().filter(|a| a.trim.is_some()).count() < STREAM_APPEND_TRIMS_MAX)
        });
        if !fits {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += appending.value.len();
        if let Some(part) = parts.last_mut() {
            part.push(appending);
        }
    }
    parts
}

/// The trims of a transaction's entries, whose trimming options are `trims` in order, as
/// `(rule, newer_kept, limit)` ops to run after its produce: each entry's trim leaves alone the
/// entries after it (`newer_kept`), so the ops leave the stream as the entries' `XADD`s one
/// after another would. Without a `LIMIT` trims only ever move the log start up, in any order,
/// so all `MAXLEN`s become one (`next - min(newer + n)` is the highest of their cuts); with one,
/// each keeps its own op, in order (a limit counts from where the trims before it left the
/// start).
pub fn trims_of(trims: &[Option<StreamTrim>]) -> Vec<(TrimRule, u64, Option<u64>)> {
    let last = trims.len().saturating_sub(1);
    let each = trims
        .iter()
        .enumerate()
        .filter_map(|(at, trim)| trim.map(|t| (t.rule, (last - at) as u64, t.limit)));
    if trims.iter().flatten().any(|t| t.limit.is_some()) {
        return each.collect();
    }
    let mut ops: Vec<(TrimRule, u64, Option<u64>)> = Vec::new();
    let mut keep: Option<u64> = None;
    for (rule, newer, _) in each {
        match rule {
            TrimRule::MaxLen(n) => {
                let reach = newer.saturating_add(n);
                keep = Some(keep.map_or(reach, |k| k.min(reach)));
            }
            TrimRule::MinId { .. } => match ops.iter_mut().find(|(r, _, _)| *r == rule) {
                // Of two equal ids, the later entry's trim sees more: it decides.
                Some(op) => op.1 = op.1.min(newer),
                None => ops.push((rule, newer, None)),
            },
        }
    }
    if let Some(keep) = keep {
        ops.insert(0, (TrimRule::MaxLen(keep), 0, None));
    }
    ops
}

/// One transaction: the entries appended in order, each answered its id, and their trims; every
/// reply the same error when it fails. With no stream yet, the `NOMKSTREAM` entries before the
/// first entry that may create it answer null (they came before the stream existed, and trim
/// nothing), and that entry and those after it are appended to the stream it creates.
async fn append_part(client: &Client, key: &[u8], entries: &[Entry<'_>]) -> Vec<Reply> {
    let mut replies = vec![Reply::Null; entries.len()];
    let mut start = 0;
    for attempt in 0..2 {
        let records: Vec<Record> = entries[start..]
            .iter()
            .map(|(value, _, _)| Record {
                partition: Some(0),
                value: value.to_vec(),
                ..Record::default()
            })
            .collect();
        let count = records.len();
        let trims: Vec<Option<StreamTrim>> = entries[start..].iter().map(|(_, _, trim)| *trim).collect();
        let mut ops = vec![TxnOp::produce(key.to_vec(), records)];
        ops.extend(
            trims_of(&trims)
                .into_iter()
                .map(|(rule, newer_kept, limit)| TxnOp::trim(key.to_vec(), 0, rule, newer_kept, limit)),
        );
        let mut txn = client.txn().when(Condition::absent(key.to_vec()));
        for op in ops {
            txn = txn.then(op);
        }
        let outcome = txn.commit().await;
        let answer = match outcome {
            Ok(TxnOutcome::Committed { succeeded: false, .. }) => Reply::error(WRONGTYPE),
            Ok(TxnOutcome::Committed { results, .. }) => match results.into_iter().next() {
                Some(TxnOpResult::Produced(produced)) if produced.len() == count => {
                    for (reply, p) in replies[start..].iter_mut().zip(produced) {
                        *reply = Reply::Bulk(
                            StreamId {
                                ms: p.timestamp_ms,
                                seq: p.offset,
                            }
                            .bulk(),
                        );
                    }
                    return replies;
                }
                other => Reply::error(format!("ERR unexpected answer to a produce: {other:?}")),
            },
            Ok(TxnOutcome::Aborted {
                reason: TxnOpResult::Refused(e),
                ..
            }) if e.code() == Some(ErrorCode::NotFound) => {
                let Some(creating) = entries[start..].iter().position(|(_, create, _)| *create) else {
                    return replies;
                };
                if attempt > 0 {
                    // Created, then deleted before the append: nothing is created again here.
                    Reply::error("ERR the stream was deleted while XADD created it; try again")
                } else {
                    start += creating;
                    match create_stream(client, key).await {
                        Ok(()) => continue,
                        Err(reply) => reply,
                    }
                }
            }
            Ok(TxnOutcome::Aborted { reason, .. }) => op_refusal(reason),
            Err(e) => client_error(&e),
        };
        for reply in &mut replies[start..] {
            *reply = answer.clone();
        }
        return replies;
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appending(bytes: usize) -> Appending {
        Appending {
            value: vec![0; bytes],
            create: true,
            trim: None,
            reply: oneshot::channel().0,
        }
    }

    fn max_len(n: u64, limit: Option<u64>) -> Option<StreamTrim> {
        Some(StreamTrim {
            rule: TrimRule::MaxLen(n),
            limit,
        })
    }

    fn min_id(timestamp_ms: u64) -> Option<StreamTrim> {
        Some(StreamTrim {
            rule: TrimRule::MinId {
                timestamp_ms,
                offset: 0,
            },
            limit: None,
        })
    }

    /// The log start after the ops of [`trims_of`] run on a stream of `records` records starting
    /// at 0 (a model of the cluster's trim), and after each entry's own trim run one after
    /// another, the entries appended one by one; stamps are the offsets.
    fn starts(trims: &[Option<StreamTrim>], before: u64) -> (u64, u64) {
        let cut = |rule: TrimRule, seen_end: u64, start: u64, limit: Option<u64>| {
            let cut = match rule {
                TrimRule::MaxLen(n) => seen_end.saturating_sub(n),
                TrimRule::MinId { timestamp_ms, .. } => timestamp_ms.min(seen_end),
            };
            let cut = limit.map_or(cut, |l| cut.min(start + l));
            cut.max(start)
        };
        let end = before + trims.len() as u64;
        let mut combined = 0;
        for (rule, newer, limit) in trims_of(trims) {
            combined = cut(rule, end - newer, combined, limit);
        }
        let mut one_by_one = 0;
        for (at, trim) in trims.iter().enumerate() {
            if let Some(t) = trim {
                one_by_one = cut(t.rule, before + at as u64 + 1, one_by_one, t.limit);
            }
        }
        (combined, one_by_one)
    }

    #[test]
    fn a_round_s_trims_leave_the_stream_as_its_xadds_one_after_another() {
        let cases: Vec<Vec<Option<StreamTrim>>> = vec![
            vec![max_len(3, None); 5],
            vec![max_len(1, None), None, None, max_len(10, None)],
            vec![max_len(10, None), None, None, max_len(1, None), None],
            vec![min_id(4), max_len(2, None), min_id(4), None, min_id(100)],
            vec![max_len(0, Some(2)), max_len(0, None), max_len(1, Some(1))],
            vec![None, None],
        ];
        for trims in cases {
            for before in [0, 3, 20] {
                let (combined, one_by_one) = starts(&trims, before);
                assert_eq!(combined, one_by_one, "{trims:?} after {before} records");
            }
        }
        // All MAXLENs of a round without LIMIT are one op.
        assert_eq!(trims_of(&[max_len(3, None); 5]).len(), 1);
        assert_eq!(trims_of(&[min_id(4), min_id(4), max_len(2, None)]).len(), 2);
    }

    #[test]
    fn a_round_is_cut_after_its_most_trimming_entries() {
        let round: Vec<Appending> = (0..STREAM_APPEND_TRIMS_MAX + 3)
            .map(|_| Appending {
                trim: max_len(1, None),
                ..appending(1)
            })
            .collect();
        let sizes: Vec<usize> = parts(round).iter().map(Vec::len).collect();
        assert_eq!(sizes, [STREAM_APPEND_TRIMS_MAX, 3]);
    }

    #[test]
    fn a_round_is_cut_by_count_and_bytes_in_order() {
        let round: Vec<Appending> = (0..STREAM_APPEND_RECORDS_MAX + 5).map(|_| appending(1)).collect();
        let sizes: Vec<usize> = parts(round).iter().map(Vec::len).collect();
        assert_eq!(sizes, [STREAM_APPEND_RECORDS_MAX, 5]);
        let half = STREAM_APPEND_BYTES_MAX / 2 + 1;
        let round = vec![
            appending(half),
            appending(half),
            appending(STREAM_APPEND_BYTES_MAX * 2),
            appending(1),
        ];
        let sizes: Vec<Vec<usize>> = parts(round)
            .iter()
            .map(|p| p.iter().map(|a| a.value.len()).collect())
            .collect();
        assert_eq!(
            sizes,
            [vec![half], vec![half], vec![STREAM_APPEND_BYTES_MAX * 2], vec![1]]
        );
    }
}
