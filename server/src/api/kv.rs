//! The KV service.

use basalt_client::pb;
use basalt_client::pb::kv_server::Kv;
use basalt_client::{ErrorCode, OLDEST_REVISION_KEY};
use basalt_storage::apply::kv::{history_events, history_start, revision_of, HistoryRowError};
use basalt_storage::apply::kv::{validate_batch, validate_write};
use basalt_storage::apply::kv_read::{self, KvScan};
use basalt_storage::command::{KvOp, KvWrite, Op, OpError, Response};
use basalt_storage::limits::{GET_MANY_KEYS_MAX, KEY_BYTES_MAX, SCAN_KEYS_DEFAULT, SCAN_KEYS_MAX};
use basalt_storage::state::{KeyValue, KvEvent, KvRecord};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{expect_of, op_error_status, status, storage_status, unexpected_result, write_refusal, Api};
use crate::limits::{WATCH_BUFFER_MESSAGES, WATCH_IDLE_CHECK, WATCH_PAGE_ROWS, WATCH_RESPONSE_BYTES_MAX};

fn compacted(requested: u64, oldest: u64) -> Status {
    let mut s = status(
        ErrorCode::Compacted,
        format!("revision {requested} is compacted; the oldest kept is {oldest}"),
    );
    s.metadata_mut().insert(
        OLDEST_REVISION_KEY,
        oldest.to_string().parse().expect("digits are ascii"),
    );
    s
}

fn event_of(revision: u64, key: &[u8], event: KvEvent) -> pb::WatchEvent {
    match event {
        KvEvent::Put {
            value,
            create_revision,
            version,
        } => pb::WatchEvent {
            kind: pb::watch_event::Kind::Put as i32,
            key: key.to_vec(),
            value,
            revision,
            create_revision,
            version,
        },
        KvEvent::Delete => pb::WatchEvent {
            kind: pb::watch_event::Kind::Delete as i32,
            key: key.to_vec(),
            value: Vec::new(),
            revision,
            create_revision: 0,
            version: 0,
        },
    }
}

/// One watch page's changes under `prefix` as the messages to send. A message holds whole
/// revisions only, and its `revision` is the last one it covers, so a watcher resuming after it
/// never skips or repeats a change; one goes out at a revision boundary once it holds
/// `bytes_max` of keys and values, and the last covers the page up to `upto`. No message when
/// nothing in the page is under the prefix.
fn watch_messages(
    page: &[KeyValue],
    prefix: &[u8],
    upto: u64,
    bytes_max: usize,
) -> Result<Vec<pb::WatchResponse>, HistoryRowError> {
    let mut messages = Vec::new();
    let mut events = Vec::new();
    let mut events_bytes = 0usize;
    let mut previous_revision = None;
    for (row_key, row) in page {
        let revision = revision_of(row_key);
        if let Some(done) = previous_revision.filter(|done| *done != revision) {
            if events_bytes >= bytes_max {
                messages.push(pb::WatchResponse {
                    events: std::mem::take(&mut events),
                    revision: done,
                });
                events_bytes = 0;
            }
        }
        previous_revision = Some(revision);
        for (user_key, event) in history_events(row_key, row)? {
            if user_key.starts_with(prefix) {
                let event = event_of(revision, user_key, event);
                events_bytes += event.key.len() + event.value.len();
                events.push(event);
            }
        }
    }
    if !events.is_empty() {
        messages.push(pb::WatchResponse { events, revision: upto });
    }
    Ok(messages)
}

/// What a watch on a stopping node is told (before it is live, or in place of its next message).
fn node_stopping() -> Status {
    status(ErrorCode::Unavailable, "the node is stopping: watch from another node")
}

/// Streams the history under `prefix` from revision `from` to the watcher until it goes away.
/// Each step reads one page of history from one point-in-time view and sends whole revisions
/// only, so a watcher resuming from `last revision + 1` never skips a change.
async fn run_watch(api: Api, prefix: Vec<u8>, from: u64, outbox: mpsc::Sender<Result<pb::WatchResponse, Status>>) {
    let mut next = from;
    let mut applied = api.applied.clone();
    let mut stopping = api.stopping.clone();
    let _ = outbox
        .send(Ok(pb::WatchResponse {
            events: Vec::new(),
            revision: from.saturating_sub(1),
        }))
        .await;
    loop {
        applied.borrow_and_update();
        let stopped = *stopping.borrow();
        if stopped {
            let _ = outbox.send(Err(node_stopping())).await;
            return;
        }
        let (page, upto, full) = match kv_read::history_page(&api.store, next, WATCH_PAGE_ROWS) {
            Ok(step) => step,
            Err(e) => {
                let _ = outbox.send(Err(storage_status(e))).await;
                return;
            }
        };
        // Read after the page: a compaction that ran before the page was read shows here.
        match history_start(&api.store) {
            Ok(start) if start > next => {
                let _ = outbox.send(Err(compacted(next, start))).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = outbox.send(Err(storage_status(e))).await;
                return;
            }
        }
        let messages = match watch_messages(&page, &prefix, upto, WATCH_RESPONSE_BYTES_MAX) {
            Ok(messages) => messages,
            Err(e) => {
                let _ = outbox.send(Err(status(ErrorCode::CorruptValue, e.to_string()))).await;
                return;
            }
        };
        for message in messages {
            if outbox.send(Ok(message)).await.is_err() {
                return;
            }
        }
        next = next.max(upto + 1);
        if !full {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() {
                    // The state machine is gone with Raft: the node is stopping. Said, so the
                    // client watches on from another node now (it would spin here otherwise).
                    let _ = outbox.send(Err(node_stopping())).await;
                    return;
                },
                // The node begins to stop: said at once, so the client watches on from another
                // node instead of holding the stop until its bound.
                () = async {
                    let _ = stopping.wait_for(|stopping| *stopping).await;
                } => {
                    let _ = outbox.send(Err(node_stopping())).await;
                    return;
                },
                _ = outbox.closed() => return,
                _ = tokio::time::sleep(WATCH_IDLE_CHECK) => {}
            }
        }
    }
}

/// A batch write as the state machine takes it, or the status that refuses the whole batch.
fn kv_write_of(op: pb::KvWriteOp) -> Result<KvWrite, Status> {
    match op.op {
        Some(pb::kv_write_op::Op::Put(put)) => Ok(KvWrite::Put {
            key: put.key,
            value: put.value,
            ttl_ms: (put.ttl_ms > 0).then_some(put.ttl_ms),
            expect: expect_of(put.expect)?,
        }),
        Some(pb::kv_write_op::Op::Delete(delete)) => Ok(KvWrite::Delete {
            key: delete.key,
            expect: expect_of(delete.expect)?,
        }),
        None => Err(status(
            ErrorCode::InvalidArgument,
            "a batch write must be a put or a delete",
        )),
    }
}

pub(super) fn put_reply(response: Response) -> Result<pb::KvPutResponse, Status> {
    match response {
        Response::KvPut {
            revision,
            prev_revision,
        } => Ok(pb::KvPutResponse {
            succeeded: true,
            revision,
            prev_revision,
            current_revision: None,
        }),
        Response::KvConditionFailed { current } => Ok(pb::KvPutResponse {
            current_revision: current,
            ..Default::default()
        }),
        other => Err(unexpected_result(&other)),
    }
}

pub(super) fn delete_reply(response: Response) -> Result<pb::KvDeleteResponse, Status> {
    match response {
        Response::KvDelete { revision, deleted } => Ok(pb::KvDeleteResponse {
            succeeded: true,
            deleted,
            revision,
            current_revision: None,
        }),
        Response::KvConditionFailed { current } => Ok(pb::KvDeleteResponse {
            current_revision: current,
            ..Default::default()
        }),
        other => Err(unexpected_result(&other)),
    }
}

fn write_error(e: &OpError) -> pb::KvWriteResult {
    pb::KvWriteResult {
        result: Some(pb::kv_write_result::Result::Error(write_refusal(e))),
    }
}

/// A get's answer: the live record, if any.
pub(super) fn record_reply(record: Option<KvRecord>) -> pb::KvGetResponse {
    match record {
        None => pb::KvGetResponse::default(),
        Some(rec) => pb::KvGetResponse {
            found: true,
            value: rec.value,
            create_revision: rec.create_revision,
            mod_revision: rec.mod_revision,
            version: rec.version,
            expires_at_ms: rec.expires_at_ms.unwrap_or(0),
        },
    }
}

/// A put as the state machine takes it (the request's header aside).
pub(super) fn put_op(r: pb::KvPutRequest) -> Result<Op, Status> {
    Ok(Op::Kv(KvOp::Put {
        key: r.key,
        value: r.value,
        ttl_ms: (r.ttl_ms > 0).then_some(r.ttl_ms),
        expect: expect_of(r.expect)?,
    }))
}

/// A put keeping the key's expiry (a transaction's `put_keep_ttl` op), the header aside.
pub(super) fn put_keep_ttl_op(r: pb::KvPutRequest) -> Result<Op, Status> {
    if r.ttl_ms > 0 {
        return Err(status(
            ErrorCode::InvalidArgument,
            "a put keeping the key's ttl cannot give a ttl of its own",
        ));
    }
    Ok(Op::Kv(KvOp::PutKeepTtl {
        key: r.key,
        value: r.value,
        expect: expect_of(r.expect)?,
    }))
}

/// A delete as the state machine takes it (the request's header aside).
pub(super) fn delete_op(r: pb::KvDeleteRequest) -> Result<Op, Status> {
    Ok(Op::Kv(KvOp::Delete {
        key: r.key,
        expect: expect_of(r.expect)?,
    }))
}

/// One write's answer within a batch answer.
fn batch_result(is_put: bool, response: Response) -> Result<pb::KvWriteResult, Status> {
    use pb::kv_write_result::Result as R;
    let result = match response {
        Response::Refused(e) => return Ok(write_error(&e)),
        response if is_put => R::Put(put_reply(response)?),
        response => R::Delete(delete_reply(response)?),
    };
    Ok(pb::KvWriteResult { result: Some(result) })
}

#[tonic::async_trait]
impl Kv for Api {
    async fn put(&self, request: Request<pb::KvPutRequest>) -> Result<GrpcResponse<pb::KvPutResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        Ok(GrpcResponse::new(put_reply(self.write(header, put_op(r)?).await?)?))
    }

    async fn get(&self, request: Request<pb::KvGetRequest>) -> Result<GrpcResponse<pb::KvGetResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.key)?;
        self.read_barrier(r.stale).await?;
        // The record and the time it is judged at, from one view (`apply::kv_read::get`).
        let mut read = kv_read::get(&self.store, &r.key).map_err(storage_status)?;
        if self
            .settle_expiry(r.stale, read.judged_at_ms, [read.expiry()])
            .await?
            .is_some()
        {
            read = kv_read::get(&self.store, &r.key).map_err(storage_status)?;
        }
        Ok(GrpcResponse::new(record_reply(read.live())))
    }

    async fn get_many(
        &self,
        request: Request<pb::KvGetManyRequest>,
    ) -> Result<GrpcResponse<pb::KvGetManyResponse>, Status> {
        let r = request.into_inner();
        if r.keys.len() > GET_MANY_KEYS_MAX {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("{} keys exceed the {GET_MANY_KEYS_MAX} one read takes", r.keys.len()),
            ));
        }
        for key in &r.keys {
            Self::check_key(key)?;
        }
        self.read_barrier(r.stale).await?;
        // Every record and the time they are judged at, from one view (`kv_read::get_many`).
        let mut read = kv_read::get_many(&self.store, &r.keys).map_err(storage_status)?;
        if self
            .settle_expiry(r.stale, read.judged_at_ms, read.expiries())
            .await?
            .is_some()
        {
            read = kv_read::get_many(&self.store, &r.keys).map_err(storage_status)?;
        }
        Ok(GrpcResponse::new(pb::KvGetManyResponse {
            records: read.live().into_iter().map(record_reply).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::KvDeleteRequest>,
    ) -> Result<GrpcResponse<pb::KvDeleteResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        Ok(GrpcResponse::new(delete_reply(
            self.write(header, delete_op(r)?).await?,
        )?))
    }

    /// Writes that are bad on their own are answered here and never proposed; the rest go to
    /// the log as one entry. Which writes are proposed depends only on the request, so a retry
    /// with the same session proposes the same batch and gets its saved answer.
    async fn batch(&self, request: Request<pb::KvBatchRequest>) -> Result<GrpcResponse<pb::KvBatchResponse>, Status> {
        let r = request.into_inner();
        let writes = r.writes.into_iter().map(kv_write_of).collect::<Result<Vec<_>, _>>()?;
        validate_batch(&writes).map_err(|e| op_error_status(&e))?;
        let mut results: Vec<Option<pb::KvWriteResult>> = Vec::with_capacity(writes.len());
        let mut proposed = Vec::with_capacity(writes.len());
        // Where each proposed write's answer goes, and whether it is a put.
        let mut slots = Vec::with_capacity(writes.len());
        for (position, write) in writes.into_iter().enumerate() {
            match validate_write(&write) {
                Err(e) => results.push(Some(write_error(&e))),
                Ok(()) => {
                    results.push(None);
                    slots.push((position, matches!(write, KvWrite::Put { .. })));
                    proposed.push(write);
                }
            }
        }
        if !proposed.is_empty() {
            let answers = match self.write(r.header, Op::Kv(KvOp::Batch { writes: proposed })).await? {
                Response::KvBatch(answers) if answers.len() == slots.len() => answers,
                other => return Err(unexpected_result(&other)),
            };
            for ((position, is_put), answer) in slots.into_iter().zip(answers) {
                results[position] = Some(batch_result(is_put, answer)?);
            }
        }
        let results = results
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| status(ErrorCode::Internal, "a batch write was left without an answer"))?;
        Ok(GrpcResponse::new(pb::KvBatchResponse { results }))
    }

    async fn scan(&self, request: Request<pb::KvScanRequest>) -> Result<GrpcResponse<pb::KvScanResponse>, Status> {
        let r = request.into_inner();
        if r.limit > SCAN_KEYS_MAX {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("limit {} exceeds {SCAN_KEYS_MAX}", r.limit),
            ));
        }
        let limit = if r.limit == 0 { SCAN_KEYS_DEFAULT } else { r.limit } as usize;
        self.read_barrier(r.stale).await?;
        let request = KvScan {
            prefix: &r.prefix,
            start_after: &r.start_after,
            limit,
        };
        // Every internal page, and the time it is judged at, from one view (`apply::kv_read`).
        let mut page = kv_read::scan(&self.store, request).map_err(storage_status)?;
        if self
            .settle_expiry(r.stale, page.judged_at_ms, page.expiries)
            .await?
            .is_some()
        {
            // Once: judged at the later time, what expires after it is live, as it should be.
            page = kv_read::scan(&self.store, request).map_err(storage_status)?;
        }
        let items = page
            .items
            .into_iter()
            .map(|(key, rec)| pb::KeyValue {
                key,
                value: rec.value,
                mod_revision: rec.mod_revision,
            })
            .collect();
        let more = page.more;
        Ok(GrpcResponse::new(pb::KvScanResponse { items, more }))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        let r = request.into_inner();
        if r.prefix.len() > KEY_BYTES_MAX {
            return Err(status(
                ErrorCode::KeyTooLarge,
                format!(
                    "prefix of {} bytes exceeds the limit of {KEY_BYTES_MAX} bytes",
                    r.prefix.len()
                ),
            ));
        }
        if *self.stopping.borrow() {
            // Refused before it is live, so the client opens it on another node.
            return Err(node_stopping());
        }
        self.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let from = match r.from_revision {
            0 => *self.applied.borrow() + 1,
            from => from,
        };
        let start = history_start(&self.store).map_err(storage_status)?;
        if from < start {
            return Err(compacted(from, start));
        }
        let (outbox, inbox) = mpsc::channel(WATCH_BUFFER_MESSAGES);
        tokio::spawn(run_watch(self.clone(), r.prefix, from, outbox));
        Ok(GrpcResponse::new(ReceiverStream::new(inbox)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history row of the earlier layout: one change, keyed `(revision, key)`.
    fn row(revision: u64, key: &str, value: &str) -> KeyValue {
        let mut row_key = revision.to_be_bytes().to_vec();
        row_key.extend_from_slice(key.as_bytes());
        let event = KvEvent::Put {
            value: value.as_bytes().to_vec(),
            create_revision: revision,
            version: 1,
        };
        (row_key, event.encode())
    }

    fn covered(messages: &[pb::WatchResponse]) -> Vec<(u64, Vec<(u64, String)>)> {
        messages
            .iter()
            .map(|m| {
                let events = m
                    .events
                    .iter()
                    .map(|e| (e.revision, String::from_utf8_lossy(&e.key).into_owned()))
                    .collect();
                (m.revision, events)
            })
            .collect()
    }

    /// Messages split at revision boundaries only, once at their budget: revision 2's three
    /// rows (the earlier layout, one row per change) stay in one message, and each message
    /// says the last revision it covers whole.
    #[test]
    fn watch_messages_split_at_revision_boundaries_once_at_their_budget() {
        let page = vec![
            row(1, "w/a", "1234"),
            row(2, "w/b", "1234"),
            row(2, "w/c", "1234"),
            row(2, "x/other", "1234"),
            row(2, "w/d", "1234"),
            row(3, "w/e", "1234"),
            row(4, "x/other", "1234"),
        ];
        // Every change is 7 bytes of key and value: a budget of 7 sends at each boundary.
        let messages = watch_messages(&page, b"w/", 5, 7).expect("rows decode");
        assert_eq!(
            covered(&messages),
            vec![
                (1, vec![(1, "w/a".to_string())]),
                (
                    2,
                    vec![(2, "w/b".to_string()), (2, "w/c".to_string()), (2, "w/d".to_string())]
                ),
                // Revision 4 changes nothing under the prefix: no message is owed for it (the
                // server's resume point moves past the page all the same).
                (3, vec![(3, "w/e".to_string())]),
            ]
        );
        // A budget no page reaches: one message covering the page.
        let whole = watch_messages(&page, b"w/", 5, usize::MAX).expect("rows decode");
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].revision, 5);
        assert_eq!(whole[0].events.len(), 5);
        // Nothing under the prefix: no message.
        assert!(watch_messages(&page, b"none/", 5, 7).expect("rows decode").is_empty());
    }
}
