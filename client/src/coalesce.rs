//! Coalescing of concurrent KV writes. While a batch is on its way, writes from other tasks that
//! share the client queue up and leave together as the next `Kv.Batch`: one RPC, one Raft entry
//! and one saved session answer for all of them, as TigerBeetle's clients batch their requests.
//! A write that finds a sender slot free leaves at once, so a lone caller waits for nobody.
//!
//! Each write is still answered on its own and acknowledged only once its batch is committed and
//! applied. Writes of one key never share a batch (the server refuses that): a later one waits
//! for the next batch, behind the earlier one.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::client::Client;
use crate::error::{ClientError, ErrorCode};
use crate::pb;
use crate::pb::kv_client::KvClient;

/// Most writes in one coalesced batch (the server takes up to 8190).
const BATCH_WRITES_MAX: usize = 1024;
/// Most bytes of keys and values in one coalesced batch (the server takes up to 8 MiB); a single
/// larger write goes alone.
const BATCH_BYTES_MAX: usize = 1024 * 1024;

type Reply = oneshot::Sender<Result<pb::KvWriteResult, ClientError>>;

struct Pending {
    key: Vec<u8>,
    bytes: usize,
    write: pb::KvWriteOp,
    reply: Reply,
}

/// The queue of writes waiting for a batch, and how many senders are draining it.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    senders: usize,
}

impl Coalescer {
    /// Queues a write. Returns true when the caller must start a sender: fewer than
    /// `senders_max` are running. Under the same lock as [`Coalescer::take`], so a write is never
    /// left in the queue after the last sender has decided to stop.
    fn push(&self, pending: Pending, senders_max: usize) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queue.push_back(pending);
        if state.senders < senders_max {
            state.senders += 1;
            true
        } else {
            false
        }
    }

    /// The next batch: queued writes in order, up to the limits, skipping writes of a key already
    /// in it (they stay queued, in order, for the next batch). Empty when the queue is: the
    /// calling sender must then stop, and is no longer counted.
    fn take(&self) -> Vec<Pending> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut bytes = 0;
        let mut left = VecDeque::new();
        while let Some(pending) = state.queue.pop_front() {
            let full =
                batch.len() == BATCH_WRITES_MAX || (!batch.is_empty() && bytes + pending.bytes > BATCH_BYTES_MAX);
            if full {
                left.push_back(pending);
                break;
            }
            if keys.contains(&pending.key) {
                left.push_back(pending);
                continue;
            }
            keys.insert(pending.key.clone());
            bytes += pending.bytes;
            batch.push(pending);
        }
        left.append(&mut state.queue);
        state.queue = left;
        if batch.is_empty() {
            state.senders -= 1;
        }
        batch
    }
}

/// Sends `write` in the client's next batch and returns its own answer.
pub(crate) async fn submit(
    client: &Client,
    key: &[u8],
    write: pb::KvWriteOp,
) -> Result<pb::KvWriteResult, ClientError> {
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        key: key.to_vec(),
        bytes: write_bytes(&write),
        write,
        reply,
    };
    if client.coalescer().push(pending, client.write_batches_in_flight()) {
        tokio::spawn(drain(client.unfenced()));
    }
    answer
        .await
        .map_err(|_| ClientError::Protocol("the write's batch was dropped unanswered".into()))?
}

fn write_bytes(write: &pb::KvWriteOp) -> usize {
    match &write.op {
        Some(pb::kv_write_op::Op::Put(put)) => put.key.len() + put.value.len(),
        Some(pb::kv_write_op::Op::Delete(delete)) => delete.key.len(),
        None => 0,
    }
}

/// A sender: sends batches until the queue is empty.
async fn drain(client: Client) {
    loop {
        // Let the tasks woken by the previous answer queue their next writes first, so they
        // leave together instead of one by one.
        tokio::task::yield_now().await;
        let batch = client.coalescer().take();
        if batch.is_empty() {
            return;
        }
        send(&client, batch).await;
    }
}

async fn send(client: &Client, batch: Vec<Pending>) {
    let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    let (header, _guard) = client.header();
    let message = pb::KvBatchRequest {
        header: Some(header),
        writes,
    };
    let outcome = client
        .unary(true, message, |c, r| async move { KvClient::new(c).batch(r).await })
        .await;
    match outcome {
        Ok(reply) if reply.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(reply.results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(reply) => {
            let error = ClientError::Protocol(format!(
                "a batch of {} writes got {} answers",
                replies.len(),
                reply.results.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// A write refused on its own, as the error the single-write call would have returned.
pub(crate) fn write_refused(error: pb::WriteError) -> ClientError {
    match ErrorCode::parse(&error.code) {
        Some(code) => ClientError::Rejected {
            code,
            message: error.message,
        },
        None => ClientError::Protocol(format!("unknown error code {}: {}", error.code, error.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_bytes: usize) -> (Pending, oneshot::Receiver<Result<pb::KvWriteResult, ClientError>>) {
        let (reply, answer) = oneshot::channel();
        let write = pb::KvWriteOp {
            op: Some(pb::kv_write_op::Op::Put(pb::KvPutRequest {
                key: key.as_bytes().to_vec(),
                value: vec![0; value_bytes],
                ..Default::default()
            })),
        };
        let pending = Pending {
            key: key.as_bytes().to_vec(),
            bytes: write_bytes(&write),
            write,
            reply,
        };
        (pending, answer)
    }

    fn keys(batch: &[Pending]) -> Vec<String> {
        batch
            .iter()
            .map(|p| String::from_utf8_lossy(&p.key).into_owned())
            .collect()
    }

    #[test]
    fn the_first_writes_start_senders_up_to_the_limit_and_the_rest_wait() {
        let coalescer = Coalescer::default();
        assert!(coalescer.push(put("a", 1).0, 2));
        assert!(coalescer.push(put("b", 1).0, 2));
        assert!(!coalescer.push(put("c", 1).0, 2), "two senders already run");
        assert_eq!(keys(&coalescer.take()), ["a", "b", "c"]);
        assert!(coalescer.take().is_empty(), "the other sender finds nothing and stops");
        assert!(coalescer.push(put("d", 1).0, 2), "a slot is free again");
    }

    #[test]
    fn a_write_queued_while_the_last_sender_runs_is_taken_by_it() {
        let coalescer = Coalescer::default();
        assert!(coalescer.push(put("a", 1).0, 1));
        assert_eq!(keys(&coalescer.take()), ["a"]);
        assert!(!coalescer.push(put("b", 1).0, 1), "the sender is still counted");
        assert_eq!(keys(&coalescer.take()), ["b"]);
        assert!(coalescer.take().is_empty());
        assert!(
            coalescer.push(put("c", 1).0, 1),
            "every sender stopped: the next write starts one"
        );
    }

    #[test]
    fn writes_of_one_key_leave_in_successive_batches_in_order() {
        let coalescer = Coalescer::default();
        for key in ["k", "x", "k", "y", "k"] {
            coalescer.push(put(key, 1).0, 1);
        }
        assert_eq!(keys(&coalescer.take()), ["k", "x", "y"]);
        assert_eq!(keys(&coalescer.take()), ["k"]);
        assert_eq!(keys(&coalescer.take()), ["k"]);
        assert!(coalescer.take().is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_write_and_byte_limits_but_takes_one_oversized_write() {
        let coalescer = Coalescer::default();
        for i in 0..BATCH_WRITES_MAX + 5 {
            coalescer.push(put(&format!("k{i}"), 1).0, 1);
        }
        assert_eq!(coalescer.take().len(), BATCH_WRITES_MAX);
        assert_eq!(coalescer.take().len(), 5);

        coalescer.push(put("big", BATCH_BYTES_MAX + 1).0, 1);
        coalescer.push(put("half1", BATCH_BYTES_MAX / 2).0, 1);
        coalescer.push(put("half2", BATCH_BYTES_MAX / 2).0, 1);
        assert_eq!(keys(&coalescer.take()), ["big"]);
        assert_eq!(keys(&coalescer.take()), ["half1"]);
        assert_eq!(keys(&coalescer.take()), ["half2"]);
    }

    #[test]
    fn an_unknown_code_is_a_protocol_error_and_a_known_one_a_rejection() {
        let known = write_refused(pb::WriteError {
            code: "VALUE_TOO_LARGE".into(),
            message: "too big".into(),
        });
        assert_eq!(known.code(), Some(ErrorCode::ValueTooLarge));
        let unknown = write_refused(pb::WriteError {
            code: "NOPE".into(),
            message: "?".into(),
        });
        assert!(matches!(unknown, ClientError::Protocol(_)));
    }
}
