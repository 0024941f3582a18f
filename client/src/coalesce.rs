//! Coalescing of concurrent KV writes. While a batch is on its way, writes from other tasks that
//! share the client queue up and leave together as the next `Kv.Batch`: one RPC, one Raft entry
//! and one saved session answer for all of them, as TigerBeetle's clients batch their requests.
//! A write that finds a sender slot free leaves at once, so a lone caller waits for nobody.
//!
//! Each write is still answered on its own and acknowledged only once its batch is committed and
//! applied. Writes of one key never share a batch (the server refuses that): a later one waits
//! for the next batch, behind the earlier one.

use tokio::sync::oneshot;

use crate::client::Client;
use crate::error::{ClientError, ErrorCode};
use crate::pb;
use crate::pb::kv_client::KvClient;
use basalt_batching::{BatchLimits, BatchQueue, Batchable};

/// Most writes and bytes of keys and values in one coalesced batch (the server takes up to 8190
/// writes and 8 MiB); a single larger write goes alone.
const LIMITS: BatchLimits = BatchLimits {
    writes_max: 1024,
    bytes_max: 1024 * 1024,
};

/// Most bytes of writes one client holds queued or on their way in coalesced batches; a write
/// over it waits for room.
pub(crate) const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;

type Reply = oneshot::Sender<Result<pb::KvWriteResult, ClientError>>;

pub(crate) struct Pending {
    key: Vec<u8>,
    bytes: usize,
    write: pb::KvWriteOp,
    reply: Reply,
}

impl Batchable for Pending {
    fn keys(&self) -> Vec<&[u8]> {
        vec![&self.key]
    }
    fn writes(&self) -> usize {
        1
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The writes of one client waiting for a batch.
pub(crate) type Coalescer = BatchQueue<Pending>;

/// Sends `write` in the client's next batch and returns its own answer.
pub(crate) async fn submit(
    client: &Client,
    key: &[u8],
    write: pb::KvWriteOp,
) -> Result<pb::KvWriteResult, ClientError> {
    let bytes = write_bytes(&write);
    // Held until the answer is back: the queue and the batches on their way stay bounded.
    let _room = client.coalesce_budget().admit(bytes).await;
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        key: key.to_vec(),
        bytes,
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
        let batch = client.coalescer().take(LIMITS);
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
        .unary(true, message, |c, r| async move {
            crate::service_client!(KvClient, c).batch(r).await
        })
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
