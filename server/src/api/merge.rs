//! Merging of concurrent KV writes at the leader. A request that finds fewer than
//! `kv_merge_in_flight` proposals on their way is proposed at once, as its own entry; one that
//! arrives while they are waits, and every request waiting when a proposal returns leaves with
//! the next one, as a single `KvOp::Merged` entry. One log record, one replication message and
//! one apply pass then serve requests from many connections, where each would otherwise cost
//! its own: the server-side counterpart of the SDK's coalescing, for clients that do not share
//! a connection.
//!
//! Each request keeps its session (a retry still applies once) and its answer, given only once
//! the entry is committed and applied. Requests writing one key never share an entry: a later
//! one waits for the next, behind the earlier.

use std::sync::atomic::{AtomicU64, Ordering};

use basalt_batching::{BatchLimits, BatchQueue, Batchable, QueueBudget};
use basalt_storage::command::{Command, KvOp, KvPart, Op, Response};
use tokio::sync::oneshot;
use tonic::Status;

use super::{status, write_error_status, Api};
use crate::limits::MERGE_QUEUED_BYTES_MAX;
use basalt_client::ErrorCode;

/// Most writes and bytes of keys and values merged into one entry. A request over them (a large
/// client batch) is proposed alone.
const LIMITS: BatchLimits = BatchLimits {
    writes_max: 2048,
    bytes_max: 2 * 1024 * 1024,
};

struct Pending {
    part: KvPart,
    reply: oneshot::Sender<Result<Response, Status>>,
}

impl Batchable for Pending {
    fn keys(&self) -> Vec<&[u8]> {
        self.part.keys().unwrap_or_default()
    }
    fn writes(&self) -> usize {
        self.part.writes()
    }
    fn bytes(&self) -> usize {
        self.part.bytes()
    }
}

/// The requests waiting to be proposed, and how many may be on their way at once.
pub struct Merger {
    queue: BatchQueue<Pending>,
    budget: QueueBudget,
    in_flight_max: usize,
    /// Entries proposed with more than one request, for /metrics.
    merged_entries: AtomicU64,
    /// Requests that went into those entries, for /metrics.
    merged_requests: AtomicU64,
}

impl Merger {
    pub fn new(in_flight_max: usize) -> Merger {
        Merger {
            queue: BatchQueue::default(),
            budget: QueueBudget::new(MERGE_QUEUED_BYTES_MAX),
            in_flight_max,
            merged_entries: AtomicU64::new(0),
            merged_requests: AtomicU64::new(0),
        }
    }

    /// Whether `op` may be merged: merging is on, and it is a KV write (what apply takes as a part).
    pub(crate) fn takes(&self, op: &Op) -> bool {
        self.in_flight_max > 0 && op.kv_write_keys().is_some()
    }

    /// (entries proposed with several requests, requests in them)
    pub fn merged(&self) -> (u64, u64) {
        (
            self.merged_entries.load(Ordering::Relaxed),
            self.merged_requests.load(Ordering::Relaxed),
        )
    }
}

/// Proposes `part` with whatever else is waiting, and returns its own answer.
pub(crate) async fn submit(api: &Api, part: KvPart) -> Result<Response, Status> {
    // Held until the answer is back: the queue and the proposals on their way stay bounded.
    let _room = api.merger.budget.admit(part.bytes()).await;
    let (reply, answer) = oneshot::channel();
    if api.merger.queue.push(Pending { part, reply }, api.merger.in_flight_max) {
        tokio::spawn(drain(api.clone()));
    }
    answer.await.map_err(|_| {
        status(
            ErrorCode::OutcomeUnknown,
            "a merged proposal was dropped unanswered: it may have been applied",
        )
    })?
}

/// A proposer: proposes what is waiting until nothing is.
async fn drain(api: Api) {
    loop {
        // Let the requests the previous answer unblocked arrive first, so they leave together.
        tokio::task::yield_now().await;
        let batch = api.merger.queue.take(LIMITS);
        if batch.is_empty() {
            return;
        }
        propose(&api, batch).await;
    }
}

async fn propose(api: &Api, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let Pending { part, reply } = batch.remove(0);
        let command = Command {
            stamp: api.clock.now(),
            session: part.session,
            fence: None,
            op: part.op,
        };
        if let Err(e) = command.check_size() {
            let _ = reply.send(Err(super::op_error_status(&e)));
            return;
        }
        let result = api.raft.client_write(command).await;
        let _ = reply.send(result.map(|r| r.data).map_err(write_error_status));
        return;
    }
    api.merger.merged_entries.fetch_add(1, Ordering::Relaxed);
    api.merger
        .merged_requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let (parts, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.part, p.reply)).unzip();
    let command = Command {
        stamp: api.clock.now(),
        session: None,
        fence: None,
        op: Op::Kv(KvOp::Merged { parts }),
    };
    if let Err(e) = command.check_size() {
        // Cannot happen within LIMITS and the client message limit; refused, nothing proposed.
        let error = super::op_error_status(&e);
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    match api.raft.client_write(command).await {
        Ok(written) => match written.data {
            Response::KvMerged(answers) if answers.len() == replies.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            // Refused as a whole: every request gets the refusal.
            refused @ Response::Refused(_) => {
                for reply in replies {
                    let _ = reply.send(Ok(refused.clone()));
                }
            }
            other => {
                let error = super::unexpected_result(&other);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        },
        Err(e) => {
            // Each request's session makes its client's retry safe, whether or not the entry
            // commits.
            let error = write_error_status(e);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
