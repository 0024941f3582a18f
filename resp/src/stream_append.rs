//! Combining appends: concurrent `XADD`s of one stream from many connections become one
//! transaction, one produce of many records, as [`crate::combine`] does for writes of one key.
//!
//! Each `XADD` on its own is a Raft round (a transaction holding the produce and the condition
//! that no KV key has the stream's name); the leader cannot merge two of them into one entry.
//! So the appends of a stream that arrive while one round is on its way wait, and go next as
//! one transaction of many records, in arrival order: each gets its own offset, so its own id.
//! Every append of a round was sent before the round began and is answered after it committed,
//! so all of them may take effect at that instant, in that order: still linearizable.

use basalt_client::{Client, ErrorCode, Record, TxnOp, TxnOpResult, TxnOutcome};
use tokio::sync::oneshot;

use crate::combine::{KeyQueues, RunnerGuard};
use crate::frame::Reply;
use crate::keys::{op_refusal, WRONGTYPE};
use crate::limits::{STREAM_APPEND_BYTES_MAX, STREAM_APPEND_RECORDS_MAX, VALUE_BYTES_MAX};
use crate::reply_error::client_error;
use crate::stream_ids::StreamId;
use crate::streams::create_stream;
use basalt_client::txn::Condition;

struct Appending {
    /// The entry as the record's value.
    value: Vec<u8>,
    /// False with `NOMKSTREAM`.
    create: bool,
    reply: oneshot::Sender<Reply>,
}

/// The appends of one node's RESP server: per stream, the entries waiting for the next round.
#[derive(Clone, Default)]
pub struct Appender {
    waiting: KeyQueues<Appending>,
}

impl Appender {
    /// Appends `value` (an encoded entry) to the stream `key`, with whatever other connections
    /// append to it meanwhile: the entry's id, null when there is no stream and `create` is
    /// false, or the error.
    pub async fn append(&self, client: &Client, key: &[u8], value: Vec<u8>, create: bool) -> Reply {
        // Refused alone, before it could fail a round of others' entries.
        if value.len() > VALUE_BYTES_MAX {
            return Reply::error(format!(
                "ERR the entry is {} bytes encoded; a stream entry is at most {VALUE_BYTES_MAX}",
                value.len()
            ));
        }
        let (reply, answer) = oneshot::channel();
        if self.waiting.join(key, Appending { value, create, reply }) {
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
            let entries: Vec<(&[u8], bool)> = part.iter().map(|a| (a.value.as_slice(), a.create)).collect();
            let replies = append_part(&client, &key, &entries).await;
            guard.answering();
            for (appending, reply) in part.into_iter().zip(replies) {
                let _ = appending.reply.send(reply);
            }
        }
    }
}

/// A round cut into transactions of at most [`STREAM_APPEND_RECORDS_MAX`] entries and
/// [`STREAM_APPEND_BYTES_MAX`] bytes (one larger entry goes alone), in order.
fn parts(round: Vec<Appending>) -> Vec<Vec<Appending>> {
    let mut parts: Vec<Vec<Appending>> = Vec::new();
    let mut bytes = 0;
    for appending in round {
        let fits = parts.last().is_some_and(|part| {
            part.len() < STREAM_APPEND_RECORDS_MAX && bytes + appending.value.len() <= STREAM_APPEND_BYTES_MAX
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

/// One transaction: the entries appended in order, each answered its id; every reply the same
/// error when it fails. With no stream yet, the `NOMKSTREAM` entries before the first entry that
/// may create it answer null (they came before the stream existed), and that entry and those
/// after it are appended to the stream it creates.
async fn append_part(client: &Client, key: &[u8], entries: &[(&[u8], bool)]) -> Vec<Reply> {
    let mut replies = vec![Reply::Null; entries.len()];
    let mut start = 0;
    for attempt in 0..2 {
        let records: Vec<Record> = entries[start..]
            .iter()
            .map(|(value, _)| Record {
                partition: Some(0),
                value: value.to_vec(),
                ..Record::default()
            })
            .collect();
        let count = records.len();
        let outcome = client
            .txn()
            .when(Condition::absent(key.to_vec()))
            .then(TxnOp::produce(key.to_vec(), records))
            .commit()
            .await;
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
                let Some(creating) = entries[start..].iter().position(|(_, create)| *create) else {
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
            reply: oneshot::channel().0,
        }
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
