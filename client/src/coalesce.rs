//! Coalescing of concurrent KV writes and of concurrent rate checks. While a batch is on its way,
//! requests from other tasks that share the client queue up and leave together as the next
//! `Kv.Batch` (or `RateLimiter.Check`): one RPC, one Raft entry and one saved session answer for
//! all of them, as TigerBeetle's clients batch their requests. A request that finds a sender slot
//! free leaves at once, so a lone caller waits for nobody.
//!
//! Each request is still answered on its own and acknowledged only once its batch is committed
//! and applied. Writes of one key never share a batch (the server refuses that): a later one
//! waits for the next batch, behind the earlier one. Rate checks of one key may (the cluster
//! decides a batch's checks in order, as one after another); a check the cluster would refuse is
//! refused before it is queued, since one bad check refuses the whole request.

use std::future::Future;

use tokio::sync::oneshot;

use crate::client::Client;
use crate::error::{ClientError, ErrorCode};
use crate::pb;
use crate::pb::kv_client::KvClient;
use crate::pb::rate_limiter_client::RateLimiterClient;
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

/// Most bytes of rate checks one client holds queued or on their way (about 50,000 checks of
/// short keys); a check over it waits for room.
pub(crate) const QUEUED_CHECK_BYTES_MAX: usize = 4 * 1024 * 1024;

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

/// One kind of request a client coalesces: where its items wait, and how a batch of them leaves.
trait Coalesced: Batchable + Sized + Send + 'static {
    fn queue(client: &Client) -> &BatchQueue<Self>;
    /// Sends one batch and answers each of its items.
    fn send(client: Client, batch: Vec<Self>) -> impl Future<Output = ()> + Send;
}

impl Coalesced for Pending {
    fn queue(client: &Client) -> &BatchQueue<Self> {
        client.coalescer()
    }

    async fn send(client: Client, batch: Vec<Pending>) {
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
        answer_each(replies, outcome.map(|reply| reply.results), "writes");
    }
}

type CheckReply = oneshot::Sender<Result<pb::RateDecision, ClientError>>;

/// A rate check waiting for a batch.
pub(crate) struct PendingCheck {
    bytes: usize,
    check: pb::RateCheck,
    reply: CheckReply,
}

impl Batchable for PendingCheck {
    // Checks of one key may share a batch: they are decided in order.
    fn keys(&self) -> Vec<&[u8]> {
        Vec::new()
    }
    fn writes(&self) -> usize {
        1
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The rate checks of one client waiting for a batch.
pub(crate) type CheckCoalescer = BatchQueue<PendingCheck>;

impl Coalesced for PendingCheck {
    fn queue(client: &Client) -> &BatchQueue<Self> {
        client.check_coalescer()
    }

    async fn send(client: Client, batch: Vec<PendingCheck>) {
        // A check whose caller gave up is not sent: nobody would see its decision, and counting
        // it would spend the limit of a request that was abandoned.
        let (checks, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .map(|p| (p.check, p.reply))
            .unzip();
        if checks.is_empty() {
            return;
        }
        let (header, _guard) = client.header();
        let message = pb::RateCheckRequest {
            header: Some(header),
            checks,
        };
        let outcome = client
            .unary(true, message, |c, r| async move {
                crate::service_client!(RateLimiterClient, c).check(r).await
            })
            .await;
        answer_each(replies, outcome.map(|reply| reply.decisions), "checks");
    }
}

/// Sends `check` in the client's next batch of checks and returns its own decision.
///
/// # Errors
/// The refusal the cluster would give the check alone (checked here, before it is queued); any
/// error of its batch's request.
pub(crate) async fn submit_check(client: &Client, check: crate::RateCheck) -> Result<pb::RateDecision, ClientError> {
    if let Some(refused) = crate::rate_shadow::refusal(&check) {
        return Err(refused);
    }
    let bytes = check.key.len() + 64;
    // A budget of their own: a backlog of KV writes never holds checks back, nor the reverse.
    let _room = client.check_budget().admit(bytes).await;
    let (reply, answer) = oneshot::channel();
    let pending = PendingCheck {
        bytes,
        check: check.into(),
        reply,
    };
    if client.check_coalescer().push(pending, client.write_batches_in_flight()) {
        tokio::spawn(drain::<PendingCheck>(client.unfenced()));
    }
    answer
        .await
        .map_err(|_| ClientError::Protocol("the check's batch was dropped unanswered".into()))?
}

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
        tokio::spawn(drain::<Pending>(client.unfenced()));
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

/// A sender: sends batches of `T` until its queue is empty.
async fn drain<T: Coalesced>(client: Client) {
    loop {
        // Let the tasks woken by the previous answer queue their next requests first, so they
        // leave together instead of one by one.
        tokio::task::yield_now().await;
        let batch = T::queue(&client).take(LIMITS);
        if batch.is_empty() {
            return;
        }
        T::send(client.clone(), batch).await;
    }
}

/// Gives each item of a batch its own answer: the answer at its place, or the batch's error (a
/// count of answers other than the items' is a protocol error for all).
fn answer_each<A>(
    replies: Vec<oneshot::Sender<Result<A, ClientError>>>,
    outcome: Result<Vec<A>, ClientError>,
    what: &str,
) {
    let error = match outcome {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
            return;
        }
        Ok(answers) => ClientError::Protocol(format!(
            "a batch of {} {what} got {} answers",
            replies.len(),
            answers.len()
        )),
        Err(error) => error,
    };
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
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
