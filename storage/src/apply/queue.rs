//! Work queue apply: enqueue with dedup, delay and priority; receive with a visibility timeout;
//! ack (one or a batch), nack and extend by receipt; dead-lettering after `max_deliveries`;
//! redrive; purge; delete.
//!
//! Every message sits in exactly one of two indexes: `QueueReady` (visible, keyed by priority then
//! id, so a scan yields the highest priority first and FIFO within it) or `QueueDelayed` (delayed,
//! in flight, or nacked; keyed by the time it becomes visible). A receive first moves what is due
//! from the second to the first, judged by the entry stamp, so every replica hands out the same
//! messages. That move is also where a message past `max_deliveries` goes to the dead-letter queue.

use serde::{Deserialize, Serialize};

use super::records::{continue_in_turn, name_in_key, remove_prefixed, DeleteBudget, DeletionCursor};
use super::{check_batch, decode, load, named, out_of_range, save, OpContext, View};
use crate::command::{OpError, QueueError, QueueOp, Response};
use crate::limits::{
    BATCH_BYTES_MAX, DELAY_MS_MAX, MESSAGE_BYTES_MAX, NAME_BYTES_MAX, PURGE_MESSAGES_MAX, QUEUE_DELETE_BYTES_MAX,
    QUEUE_DELETE_ROWS_MAX, QUEUE_DELETIONS_PER_ENTRY_MAX, RECEIVE_MESSAGES_MAX, REDRIVE_BYTES_MAX,
    REDRIVE_LOOKED_AT_MAX, VISIBILITY_MS_MAX,
};
use crate::queue::{Delivery, EnqueueOutcome, NewMessage, QueueConfig, QueueStats, Receipt};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// Applies one queue op of entry `ctx.index` (the index numbers the messages it enqueues).
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &QueueOp,
) -> Result<Response, StoreError> {
    let OpContext { index, now_ms, .. } = ctx;
    match op {
        QueueOp::Configure { queue, config } => configure(view, queue, config),
        QueueOp::Enqueue { queue, messages } => enqueue(
            view,
            (index << 16) | u64::from(ctx.first_message),
            now_ms,
            queue,
            messages,
        ),
        QueueOp::Receive {
            queue,
            max,
            visibility_timeout_ms,
        } => receive(view, now_ms, queue, *max, *visibility_timeout_ms),
        QueueOp::Ack { queue, receipt } => ack(view, queue, receipt),
        QueueOp::Nack {
            queue,
            receipt,
            delay_ms,
        } => nack(view, now_ms, queue, receipt, *delay_ms),
        QueueOp::Redrive { queue, max } => redrive(view, now_ms, queue, *max),
        QueueOp::DedupSweep { limit } => sweep_dedup(view, now_ms, *limit),
        QueueOp::Extend {
            queue,
            receipt,
            visibility_timeout_ms,
        } => extend(view, now_ms, queue, receipt, *visibility_timeout_ms),
        QueueOp::AckBatch { queue, receipts } => ack_batch(view, queue, receipts),
        QueueOp::Purge { queue, upto_id, limit } => {
            // Every message enqueued by an earlier entry has an id below this entry's first; a
            // client's watermark is held to it, so no purge entry removes what came after it.
            let watermark = (index << 16).saturating_sub(1);
            purge(view, queue, upto_id.map_or(watermark, |u| u.min(watermark)), *limit)
        }
        QueueOp::Delete { queue } => delete_queue(view, queue),
        QueueOp::ContinueDeletes { limit } => continue_deletes(view, *limit),
        QueueOp::BuildDeadLetterIndex { limit } => build_dead_letter_index(view, *limit),
    }
}

/// A queue's record: its settings and counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredQueue {
    pub config: QueueConfig,
    pub stats: QueueStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub(crate) payload: Vec<u8>,
    pub(crate) priority: u8,
    pub(crate) enqueued_at_ms: u64,
    /// Times received so far.
    pub(crate) deliveries: u32,
    /// Received and not acknowledged, nacked or timed out.
    pub(crate) in_flight: bool,
    /// When it becomes visible; `None` while it sits in the ready index.
    pub(crate) visible_at_ms: Option<u64>,
    /// The queue it was dead-lettered from, for redrive.
    pub(crate) dead_lettered_from: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DedupEntry {
    message_id: u64,
    expires_at_ms: u64,
}

/// How many due messages one receive moves to the ready index at most. Beyond it the rest move
/// with the next receive, so a receive stays bounded even after a long outage.
const PROMOTE_MESSAGES_MAX: usize = 4 * RECEIVE_MESSAGES_MAX as usize;

pub(crate) fn message_key(queue: &[u8], id: u64) -> Vec<u8> {
    let mut k = named(queue);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Removes message `id` of `queue` (its row, and its row in the dead-letter index if it is a dead
/// letter); the caller removes its ready or delayed index row.
fn forget_message<S: StoreRead>(view: &mut View<'_, S>, queue: &[u8], id: u64, message: &StoredMessage) {
    view.delete(Table::QueueMessage, message_key(queue, id));
    if message.dead_lettered_from.is_some() {
        view.delete(Table::QueueDeadLetter, message_key(queue, id));
    }
}

pub(crate) fn ready_key(queue: &[u8], priority: u8, id: u64) -> Vec<u8> {
    let mut k = named(queue);
    k.push(u8::MAX - priority);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn delayed_key(queue: &[u8], visible_at_ms: u64, id: u64) -> Vec<u8> {
    let mut k = named(queue);
    k.extend_from_slice(&visible_at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn dedup_key(queue: &[u8], dedup_id: &[u8]) -> Vec<u8> {
    let mut k = named(queue);
    k.extend_from_slice(dedup_id);
    k
}

fn dedup_expiry_key(expires_at_ms: u64, queue: &[u8], dedup_id: &[u8]) -> Vec<u8> {
    let mut k = expires_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&dedup_key(queue, dedup_id));
    k
}

/// A row of [`Table::QueueDeadLetterSource`]: `source` names `dead_letter_queue`.
fn dead_letter_source_key(dead_letter_queue: &[u8], source: &[u8]) -> Vec<u8> {
    let mut k = named(dead_letter_queue);
    k.extend_from_slice(&named(source));
    k
}

fn trailing_id(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..]
        .try_into()
        .expect("queue index keys end with an id");
    u64::from_be_bytes(tail)
}

pub fn check_name(what: &'static str, name: &[u8]) -> Result<(), OpError> {
    if name.is_empty() {
        return Err(OpError::Empty { what: what.into() });
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: what.into(),
            len: name.len(),
            max: NAME_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_config(queue: &[u8], config: &QueueConfig) -> Result<(), OpError> {
    if config.visibility_timeout_ms == 0 || config.visibility_timeout_ms > VISIBILITY_MS_MAX {
        return Err(out_of_range(
            "visibility timeout (ms)",
            format!("1..={VISIBILITY_MS_MAX}"),
            config.visibility_timeout_ms,
        ));
    }
    if config.dedup_window_ms > DELAY_MS_MAX {
        return Err(out_of_range(
            "dedup window (ms)",
            format!("0..={DELAY_MS_MAX}"),
            config.dedup_window_ms,
        ));
    }
    match (&config.dead_letter_queue, config.max_deliveries) {
        (None, 0) => Ok(()),
        (None, n) => Err(out_of_range("max deliveries without a dead-letter queue", "0", n)),
        (Some(_), 0) => Err(out_of_range("max deliveries with a dead-letter queue", ">= 1", 0)),
        (Some(dlq), _) if dlq.as_slice() == queue => Err(out_of_range(
            "dead-letter queue",
            "another queue",
            String::from_utf8_lossy(dlq),
        )),
        (Some(dlq), _) => check_name("dead-letter queue name", dlq),
    }
}

pub(crate) fn validate_configure(queue: &[u8], config: &QueueConfig) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    check_config(queue, config)
}

pub(crate) fn validate_enqueue(queue: &[u8], messages: &[NewMessage]) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    check_batch(messages.len())?;
    let total: usize = messages.iter().map(|m| m.payload.len()).sum();
    if total > BATCH_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: "enqueue batch".into(),
            len: total,
            max: BATCH_BYTES_MAX,
        });
    }
    for m in messages {
        if m.payload.len() > MESSAGE_BYTES_MAX {
            return Err(OpError::TooLarge {
                what: "message".into(),
                len: m.payload.len(),
                max: MESSAGE_BYTES_MAX,
            });
        }
        if m.delay_ms > DELAY_MS_MAX {
            return Err(out_of_range("delay (ms)", format!("0..={DELAY_MS_MAX}"), m.delay_ms));
        }
        if let Some(dedup) = &m.dedup_id {
            check_name("dedup id", dedup)?;
        }
    }
    Ok(())
}

pub(crate) fn validate_receive(queue: &[u8], max: u32, visibility_timeout_ms: Option<u64>) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    if max == 0 || max > RECEIVE_MESSAGES_MAX {
        return Err(out_of_range("receive max", format!("1..={RECEIVE_MESSAGES_MAX}"), max));
    }
    if let Some(vt) = visibility_timeout_ms {
        if vt == 0 || vt > VISIBILITY_MS_MAX {
            return Err(out_of_range(
                "visibility timeout (ms)",
                format!("1..={VISIBILITY_MS_MAX}"),
                vt,
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_extend(queue: &[u8], visibility_timeout_ms: u64) -> Result<(), OpError> {
    validate_receive(queue, 1, Some(visibility_timeout_ms))
}

pub(crate) fn validate_ack_batch(queue: &[u8], receipts: &[Receipt]) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    check_batch(receipts.len())
}

pub(crate) fn validate_purge(queue: &[u8], limit: u32) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    if limit == 0 || limit > PURGE_MESSAGES_MAX {
        return Err(out_of_range("purge limit", format!("1..={PURGE_MESSAGES_MAX}"), limit));
    }
    Ok(())
}

pub(crate) fn validate_nack(queue: &[u8], delay_ms: u64) -> Result<(), OpError> {
    check_name("queue name", queue)?;
    if delay_ms > DELAY_MS_MAX {
        return Err(out_of_range("delay (ms)", format!("0..={DELAY_MS_MAX}"), delay_ms));
    }
    Ok(())
}

fn unknown_queue(queue: &[u8]) -> OpError {
    OpError::NotFound {
        what: "queue".into(),
        name: String::from_utf8_lossy(queue).into_owned(),
    }
}

/// The queue's record, or the refusal for an unknown queue.
pub fn stored_queue<S: StoreRead + ?Sized>(
    store: &S,
    queue: &[u8],
) -> Result<Result<StoredQueue, OpError>, StoreError> {
    Ok(load::<S, StoredQueue>(store, Table::Queue, &named(queue))?.ok_or_else(|| unknown_queue(queue)))
}

pub(crate) fn configure<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    config: &QueueConfig,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_configure(queue, config));
    if view.get(Table::QueueDeleting, &named(queue))?.is_some() {
        return Ok(Response::Refused(OpError::Queue(QueueError::BeingDeleted {
            queue: String::from_utf8_lossy(queue).into_owned(),
        })));
    }
    if let Some(dlq) = &config.dead_letter_queue {
        refuse_on_err!(stored_queue(view, dlq)?);
    }
    // On a store without queues the index is complete as it stands (empty): marked built, so a
    // new cluster never waits for a build.
    if !dead_letter_index_built(view)?
        && view.scan(Table::Queue, &KeyRange::all(), 1)?.is_empty()
        && view.scan(Table::QueueDeadLetterSource, &KeyRange::all(), 1)?.is_empty()
    {
        save(
            view,
            Table::Meta,
            DEAD_LETTER_INDEX_KEY.to_vec(),
            &DeadLetterIndex::Built,
        );
    }
    let (created, stats, old_dlq) = match load::<_, StoredQueue>(view, Table::Queue, &named(queue))? {
        Some(existing) => (false, existing.stats, existing.config.dead_letter_queue),
        None => (true, QueueStats::default(), None),
    };
    // The index a deletion checks: which queues name each dead-letter queue.
    if let Some(old) = old_dlq {
        view.delete(Table::QueueDeadLetterSource, dead_letter_source_key(&old, queue));
    }
    if let Some(dlq) = &config.dead_letter_queue {
        view.put(
            Table::QueueDeadLetterSource,
            dead_letter_source_key(dlq, queue),
            Vec::new(),
        );
    }
    let record = StoredQueue {
        config: config.clone(),
        stats,
    };
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::QueueConfigured { created })
}

fn place<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    id: u64,
    message: &mut StoredMessage,
    visible_at: u64,
    now_ms: u64,
) {
    if visible_at > now_ms {
        message.visible_at_ms = Some(visible_at);
        view.put(Table::QueueDelayed, delayed_key(queue, visible_at, id), Vec::new());
    } else {
        message.visible_at_ms = None;
        view.put(Table::QueueReady, ready_key(queue, message.priority, id), Vec::new());
    }
    save(view, Table::QueueMessage, message_key(queue, id), message);
}

/// Enqueues `messages`, numbered from `first_id` (see `OpContext::first_message`).
pub(crate) fn enqueue<S: StoreRead>(
    view: &mut View<'_, S>,
    first_id: u64,
    now_ms: u64,
    queue: &[u8],
    messages: &[NewMessage],
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_enqueue(queue, messages));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    let mut outcomes = Vec::with_capacity(messages.len());
    for (position, m) in messages.iter().enumerate() {
        // Unique across the log: the entry's index, then the message's number in the entry.
        let id = first_id + position as u64;
        if let Some(dedup) = &m.dedup_id {
            let key = dedup_key(queue, dedup);
            if let Some(seen) = load::<_, DedupEntry>(view, Table::QueueDedup, &key)? {
                if seen.expires_at_ms > now_ms {
                    outcomes.push(EnqueueOutcome::Duplicate { id: seen.message_id });
                    continue;
                }
                view.delete(
                    Table::QueueDedupExpiry,
                    dedup_expiry_key(seen.expires_at_ms, queue, dedup),
                );
            }
            let expires_at_ms = now_ms + record.config.dedup_window_ms.max(1);
            save(
                view,
                Table::QueueDedup,
                key,
                &DedupEntry {
                    message_id: id,
                    expires_at_ms,
                },
            );
            view.put(
                Table::QueueDedupExpiry,
                dedup_expiry_key(expires_at_ms, queue, dedup),
                Vec::new(),
            );
        }
        let mut message = StoredMessage {
            payload: m.payload.clone(),
            priority: m.priority,
            enqueued_at_ms: now_ms,
            deliveries: 0,
            in_flight: false,
            visible_at_ms: None,
            dead_lettered_from: None,
        };
        place(view, queue, id, &mut message, now_ms + m.delay_ms, now_ms);
        record.stats.messages += 1;
        outcomes.push(EnqueueOutcome::Enqueued { id });
    }
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::Enqueued(outcomes))
}

fn load_message<S: StoreRead + ?Sized>(store: &S, queue: &[u8], id: u64) -> Result<Option<StoredMessage>, StoreError> {
    load(store, Table::QueueMessage, &message_key(queue, id))
}

/// Moves the messages of `queue` that are due at `now_ms` to the ready index, or to the
/// dead-letter queue once they have used up their deliveries.
fn promote_due<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    record: &mut StoredQueue,
) -> Result<(), StoreError> {
    let prefix = named(queue);
    let mut end = prefix.clone();
    end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
    let due = view.scan(
        Table::QueueDelayed,
        &KeyRange::between(prefix, end),
        PROMOTE_MESSAGES_MAX,
    )?;
    for (key, _) in due {
        let id = trailing_id(&key);
        view.delete(Table::QueueDelayed, key);
        let Some(mut message) = load_message(view, queue, id)? else {
            continue;
        };
        if message.in_flight {
            message.in_flight = false;
            record.stats.in_flight = record.stats.in_flight.saturating_sub(1);
        }
        let exhausted = record.config.max_deliveries > 0 && message.deliveries >= record.config.max_deliveries;
        match (&record.config.dead_letter_queue, exhausted) {
            // A dead-letter queue that is gone takes nothing: the message stays here, delivered
            // again. (A deletion is refused while a queue names it, so this is a guard: a
            // record that names a missing queue is not trusted to have one.)
            (Some(dlq), true) if view.get(Table::Queue, &named(dlq))?.is_some() => {
                forget_message(view, queue, id, &message);
                record.stats.messages = record.stats.messages.saturating_sub(1);
                move_into(view, now_ms, dlq, id, message, Some(queue.to_vec()))?;
            }
            _ => place(view, queue, id, &mut message, now_ms, now_ms),
        }
    }
    Ok(())
}

/// Puts an existing message (keeping its id) into `queue` as visible and never delivered.
fn move_into<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    id: u64,
    mut message: StoredMessage,
    dead_lettered_from: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    let Some(mut target) = load::<_, StoredQueue>(view, Table::Queue, &named(queue))? else {
        // Callers check that the target exists.
        return Err(StoreError::CorruptRecord {
            table: Table::Queue,
            key: String::from_utf8_lossy(queue).into_owned(),
            reason: "a message's target queue does not exist".into(),
        });
    };
    message.deliveries = 0;
    message.in_flight = false;
    if dead_lettered_from.is_some() {
        view.put(Table::QueueDeadLetter, message_key(queue, id), vec![message.priority]);
    }
    message.dead_lettered_from = dead_lettered_from;
    place(view, queue, id, &mut message, now_ms, now_ms);
    target.stats.messages += 1;
    save(view, Table::Queue, named(queue), &target);
    Ok(())
}

pub(crate) fn receive<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    max: u32,
    visibility_timeout_ms: Option<u64>,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_receive(queue, max, visibility_timeout_ms));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    promote_due(view, now_ms, queue, &mut record)?;
    let invisible_until_ms = now_ms + visibility_timeout_ms.unwrap_or(record.config.visibility_timeout_ms);
    let ready = view.scan(
        Table::QueueReady,
        &KeyRange::prefix_from(&named(queue), named(queue)),
        max as usize,
    )?;
    let mut deliveries = Vec::with_capacity(ready.len());
    for (key, _) in ready {
        let id = trailing_id(&key);
        view.delete(Table::QueueReady, key);
        let Some(mut message) = load_message(view, queue, id)? else {
            continue;
        };
        message.deliveries += 1;
        message.in_flight = true;
        place(view, queue, id, &mut message, invisible_until_ms, now_ms);
        record.stats.in_flight += 1;
        deliveries.push(Delivery {
            receipt: Receipt {
                message_id: id,
                delivery: message.deliveries,
            },
            payload: message.payload,
            priority: message.priority,
            enqueued_at_ms: message.enqueued_at_ms,
            invisible_until_ms,
        });
    }
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::Received(deliveries))
}

/// The message a receipt names, if that receipt is its latest delivery and still in flight.
fn current_delivery<S: StoreRead>(
    view: &View<'_, S>,
    queue: &[u8],
    receipt: &Receipt,
) -> Result<Result<StoredMessage, OpError>, StoreError> {
    let message = load_message(view, queue, receipt.message_id)?;
    Ok(match message {
        Some(m) if m.in_flight && m.deliveries == receipt.delivery => Ok(m),
        other => Err(OpError::Queue(QueueError::StaleReceipt {
            message_id: receipt.message_id,
            delivery: receipt.delivery,
            latest: other.map(|m| m.deliveries),
        })),
    })
}

pub(crate) fn ack<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    receipt: &Receipt,
) -> Result<Response, StoreError> {
    refuse_on_err!(check_name("queue name", queue));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    let message = refuse_on_err!(current_delivery(view, queue, receipt)?);
    if let Some(at) = message.visible_at_ms {
        view.delete(Table::QueueDelayed, delayed_key(queue, at, receipt.message_id));
    }
    forget_message(view, queue, receipt.message_id, &message);
    record.stats.messages = record.stats.messages.saturating_sub(1);
    record.stats.in_flight = record.stats.in_flight.saturating_sub(1);
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::QueueDone)
}

pub(crate) fn nack<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    receipt: &Receipt,
    delay_ms: u64,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_nack(queue, delay_ms));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    let mut message = refuse_on_err!(current_delivery(view, queue, receipt)?);
    message.in_flight = false;
    record.stats.in_flight = record.stats.in_flight.saturating_sub(1);
    // Always through the delayed index, even with no delay: the next receive's promotion is where
    // a message that used up its deliveries is dead-lettered.
    invisible_until(view, queue, receipt.message_id, &mut message, now_ms + delay_ms);
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::QueueDone)
}

/// Moves message `id` (sitting in the delayed index, or in flight) to the delayed index at
/// `visible_at_ms`, and stores it.
fn invisible_until<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    id: u64,
    message: &mut StoredMessage,
    visible_at_ms: u64,
) {
    if let Some(at) = message.visible_at_ms {
        view.delete(Table::QueueDelayed, delayed_key(queue, at, id));
    }
    message.visible_at_ms = Some(visible_at_ms);
    view.put(Table::QueueDelayed, delayed_key(queue, visible_at_ms, id), Vec::new());
    save(view, Table::QueueMessage, message_key(queue, id), &*message);
}

/// Keeps the delivery `receipt` names invisible until `now_ms + visibility_timeout_ms`. A delivery
/// whose visibility already lapsed is due to be handed out again: extending it is refused as
/// stale (SQS's MessageNotInflight), whether or not a receive has taken it back yet, so the
/// answer does not depend on other receivers' timing and a message cannot dodge dead-lettering.
pub(crate) fn extend<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    receipt: &Receipt,
    visibility_timeout_ms: u64,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_extend(queue, visibility_timeout_ms));
    refuse_on_err!(stored_queue(view, queue)?);
    let mut message = refuse_on_err!(current_delivery(view, queue, receipt)?);
    if message.visible_at_ms.is_some_and(|at| at <= now_ms) {
        return Ok(Response::Refused(OpError::Queue(QueueError::StaleReceipt {
            message_id: receipt.message_id,
            delivery: receipt.delivery,
            latest: Some(message.deliveries),
        })));
    }
    let invisible_until_ms = now_ms.saturating_add(visibility_timeout_ms);
    invisible_until(view, queue, receipt.message_id, &mut message, invisible_until_ms);
    Ok(Response::QueueExtended { invisible_until_ms })
}

/// Acknowledges each of `receipts` on its own, in order.
pub(crate) fn ack_batch<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    receipts: &[Receipt],
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_ack_batch(queue, receipts));
    refuse_on_err!(stored_queue(view, queue)?);
    let mut answers = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        answers.push(match ack(view, queue, receipt)? {
            Response::QueueDone => None,
            Response::Refused(OpError::Queue(stale)) => Some(stale),
            other => {
                return Err(StoreError::CorruptRecord {
                    table: Table::Queue,
                    key: String::from_utf8_lossy(queue).into_owned(),
                    reason: format!("an ack of a checked queue answered {other:?}"),
                })
            }
        });
    }
    Ok(Response::QueueAcked(answers))
}

/// Removes up to `limit` messages of `queue` with ids at most `upto_id`, in id order, from
/// whichever index holds them.
pub(crate) fn purge<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    upto_id: u64,
    limit: u32,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_purge(queue, limit));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    let prefix = named(queue);
    // `upto_id` is below the entry's own ids, so it is below u64::MAX.
    let range = KeyRange::between(prefix.clone(), message_key(queue, upto_id.saturating_add(1)));
    // One past the limit, to tell whether any is left.
    let found = view.scan(Table::QueueMessage, &range, limit as usize + 1)?;
    let more = found.len() > limit as usize;
    let mut removed = 0u32;
    for (key, bytes) in found.into_iter().take(limit as usize) {
        let id = trailing_id(&key);
        let message: StoredMessage = super::decode(Table::QueueMessage, &key, &bytes)?;
        match message.visible_at_ms {
            Some(at) => view.delete(Table::QueueDelayed, delayed_key(queue, at, id)),
            None => view.delete(Table::QueueReady, ready_key(queue, message.priority, id)),
        }
        forget_message(view, queue, id, &message);
        record.stats.messages = record.stats.messages.saturating_sub(1);
        if message.in_flight {
            record.stats.in_flight = record.stats.in_flight.saturating_sub(1);
        }
        removed += 1;
    }
    save(view, Table::Queue, prefix, &record);
    Ok(Response::QueuePurged { removed, more, upto_id })
}

/// Moves up to `max` dead letters of `queue` back to the queues they came from, as fresh
/// deliveries, in id order, walking the queue's dead-letter index ([`Table::QueueDeadLetter`])
/// for up to [`REDRIVE_LOOKED_AT_MAX`] dead letters or [`REDRIVE_BYTES_MAX`] of them (at least
/// one). Messages enqueued directly into it are not in the index and stay. A dead letter in
/// flight (received from the dead-letter queue and not yet acked) stays, and counts toward the
/// looked-at bound only (its row holds its priority, so one ready-row lookup tells, without
/// reading it). A dead letter whose source queue is gone leaves the index and stays, as if enqueued
/// here. Refused (`IndexBuilding`) until the home region has indexed dead letters written by a
/// build before the index.
pub(crate) fn redrive<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    queue: &[u8],
    max: u32,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_receive(queue, max, None));
    let mut record = refuse_on_err!(stored_queue(view, queue)?);
    if !dead_letter_index_built(view)? {
        return Ok(Response::Refused(OpError::Queue(QueueError::IndexBuilding {
            queue: String::from_utf8_lossy(queue).into_owned(),
        })));
    }
    promote_due(view, now_ms, queue, &mut record)?;
    const PAGE_ROWS: usize = 256;
    let prefix = named(queue);
    let mut from = prefix.clone();
    let mut looked_at = 0usize;
    let mut bytes_read = 0usize;
    let mut moved = 0u32;
    let mut letters = Vec::new().into_iter();
    while moved < max && looked_at < REDRIVE_LOOKED_AT_MAX && bytes_read < REDRIVE_BYTES_MAX {
        let (key, priority) = match letters.next() {
            Some(row) => row,
            None => {
                // The next page starts after the last row looked at: rows removed are behind it.
                let want = PAGE_ROWS.min(REDRIVE_LOOKED_AT_MAX - looked_at);
                letters = view
                    .scan(
                        Table::QueueDeadLetter,
                        &KeyRange::prefix_from(&prefix, from.clone()),
                        want,
                    )?
                    .into_iter();
                match letters.next() {
                    Some(row) => row,
                    None => break,
                }
            }
        };
        from = key.clone();
        from.push(0);
        looked_at += 1;
        let id = trailing_id(&key);
        // A dead letter in flight (or given back with a delay) is not in the ready index: it
        // stays until it is visible again, and its payload is not read.
        if let [priority] = priority[..] {
            if view.get(Table::QueueReady, &ready_key(queue, priority, id))?.is_none() {
                continue;
            }
        }
        let message = load_message(view, queue, id)?;
        let Some((message, source)) = message.and_then(|m| m.dead_lettered_from.clone().map(|s| (m, s))) else {
            // Not a dead letter (any more): the row is stale, and goes.
            view.delete(Table::QueueDeadLetter, key);
            continue;
        };
        bytes_read = bytes_read.saturating_add(message.payload.len());
        if message.visible_at_ms.is_some() {
            // In flight (or given back with a delay): it stays until it is visible again.
            continue;
        }
        if view.get(Table::Queue, &named(&source))?.is_none() {
            // Its source was deleted: it stays here as if enqueued here (a queue of that name
            // created later does not get it), and leaves the index.
            view.delete(Table::QueueDeadLetter, key);
            continue;
        }
        view.delete(Table::QueueReady, ready_key(queue, message.priority, id));
        forget_message(view, queue, id, &message);
        record.stats.messages = record.stats.messages.saturating_sub(1);
        move_into(view, now_ms, &source, id, message, None)?;
        moved += 1;
    }
    save(view, Table::Queue, named(queue), &record);
    Ok(Response::Redriven { moved })
}

/// Deletes `queue`: it is unknown from this entry on, and as many of its rows as one entry may
/// remove ([`QUEUE_DELETE_ROWS_MAX`], [`QUEUE_DELETE_BYTES_MAX`]) are removed; the rest are
/// removed by the leader's [`QueueOp::ContinueDeletes`] entries, and until then the name cannot
/// be created again (`BeingDeleted`), so a new queue never sees the old one's messages or dedup
/// ids. Refused (`DeadLetterInUse`) while another queue names it as its dead-letter queue.
/// Dead letters it left in its own dead-letter queue stay there; a redrive leaves them there
/// unless a queue of this name exists again by then.
pub(crate) fn delete_queue<S: StoreRead>(view: &mut View<'_, S>, queue: &[u8]) -> Result<Response, StoreError> {
    refuse_on_err!(check_name("queue name", queue));
    let record = refuse_on_err!(stored_queue(view, queue)?);
    if !dead_letter_index_built(view)? {
        return Ok(Response::Refused(OpError::Queue(QueueError::IndexBuilding {
            queue: String::from_utf8_lossy(queue).into_owned(),
        })));
    }
    let prefix = named(queue);
    let sources = view.scan(
        Table::QueueDeadLetterSource,
        &KeyRange::prefix_from(&prefix, prefix.clone()),
        1,
    )?;
    if let Some((key, _)) = sources.first() {
        let source = name_in_key(&key[prefix.len()..]).unwrap_or_default();
        return Ok(Response::Refused(OpError::Queue(QueueError::DeadLetterInUse {
            queue: String::from_utf8_lossy(queue).into_owned(),
            source_queue: String::from_utf8_lossy(source).into_owned(),
        })));
    }
    if let Some(dlq) = &record.config.dead_letter_queue {
        view.delete(Table::QueueDeadLetterSource, dead_letter_source_key(dlq, queue));
    }
    view.delete(Table::Queue, prefix.clone());
    let mut budget = DeleteBudget::new(QUEUE_DELETE_ROWS_MAX, QUEUE_DELETE_BYTES_MAX);
    let mut cursor = DeletionCursor::default();
    let finished = remove_queue_rows(view, queue, &mut cursor, &mut budget)?;
    if !finished {
        save(view, Table::QueueDeleting, prefix, &cursor);
    }
    Ok(Response::QueueDeleted { finished })
}

/// `Meta` key: the [`Table::QueueDeleting`] key the next [`QueueOp::ContinueDeletes`] entry
/// starts at (absent: the first), so deletions take turns and a small queue's deletion does not
/// wait behind a large one's.
const DELETION_TURN_KEY: &[u8] = b"queue_deletion_turn";

/// Where a queue deletion stands: its [`Table::QueueDeleting`] value (empty for a deletion
/// saved by a build before the cursor: it starts over, from the first row left).
fn load_cursor(key: &[u8], bytes: &[u8]) -> Result<DeletionCursor, StoreError> {
    if bytes.is_empty() {
        return Ok(DeletionCursor::default());
    }
    decode(Table::QueueDeleting, key, bytes)
}

/// Goes on with queue deletions, within `limit` rows, starting with the deletion after the one
/// the last entry stopped in (wrapping around), so several deletions progress in turn. Answers
/// the rows removed.
pub(crate) fn continue_deletes<S: StoreRead>(view: &mut View<'_, S>, limit: u32) -> Result<Response, StoreError> {
    let mut budget = DeleteBudget::new(limit, QUEUE_DELETE_BYTES_MAX);
    continue_in_turn(
        view,
        Table::QueueDeleting,
        DELETION_TURN_KEY,
        QUEUE_DELETIONS_PER_ENTRY_MAX,
        &mut budget,
        |view, key, queue, bytes, budget| {
            let mut cursor = load_cursor(key, bytes)?;
            let finished = remove_queue_rows(view, queue, &mut cursor, budget)?;
            if !finished {
                save(view, Table::QueueDeleting, key.to_vec(), &cursor);
            }
            Ok(finished)
        },
    )?;
    Ok(Response::Swept { removed: budget.used() })
}

/// Whether a queue deletion has rows left to remove (for the leader's sweeps).
pub fn deletions_due<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    Ok(!store.scan(Table::QueueDeleting, &KeyRange::all(), 1)?.is_empty())
}

/// The steps of a queue deletion, in order: (table, rows per scan, rows removed per row found).
/// A saved [`DeletionCursor`] names its step by its place here, so the order is part of the data
/// format (`a_deletion_cursor_names_its_step_by_its_place`).
pub(super) const DELETE_STEPS: [(Table, u32, u32); 5] = [
    // Index and dedup rows: small keys, empty or small values, 256 per scan.
    (Table::QueueReady, 256, 1),
    (Table::QueueDelayed, 256, 1),
    // Messages: a scan reads their payloads (up to `MESSAGE_BYTES_MAX` each), so a page stays
    // small and the byte budget is checked between pages.
    (Table::QueueMessage, 16, 1),
    // A dedup id goes with its expiry row.
    (Table::QueueDedup, 256, 2),
    // The dead-letter index (it names messages removed above).
    (Table::QueueDeadLetter, 256, 1),
];

/// Removes rows of the deleted `queue` within `budget`, from where `cursor` stands: the ready and
/// delayed indexes, the messages, the dedup ids with their expiry rows (two rows each), then its
/// dead-letter index ([`DELETE_STEPS`]). Answers whether none is left.
fn remove_queue_rows<S: StoreRead>(
    view: &mut View<'_, S>,
    queue: &[u8],
    cursor: &mut DeletionCursor,
    budget: &mut DeleteBudget,
) -> Result<bool, StoreError> {
    let prefix = named(queue);
    while let Some(&(table, page_rows, rows_each)) = DELETE_STEPS.get(usize::from(cursor.step)) {
        let done = remove_prefixed(
            view,
            table,
            &prefix,
            &mut cursor.after,
            page_rows,
            rows_each,
            budget,
            |view, key, value| {
                if table == Table::QueueDedup {
                    let seen: DedupEntry = decode(Table::QueueDedup, key, value)?;
                    let mut expiry = seen.expires_at_ms.to_be_bytes().to_vec();
                    expiry.extend_from_slice(key);
                    view.delete(Table::QueueDedupExpiry, expiry);
                }
                Ok(())
            },
        )?;
        if !done {
            return Ok(false);
        }
        cursor.next_step();
    }
    Ok(true)
}

/// `Meta` key: how far the build of the dead-letter index ([`QueueOp::BuildDeadLetterIndex`])
/// has come; absent before it starts.
pub(super) const DEAD_LETTER_INDEX_KEY: &[u8] = b"queue_dead_letter_indexes";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum DeadLetterIndex {
    /// Step 0 removes reference rows no queue record backs, step 1 adds the rows records name,
    /// step 2 indexes the dead letters.
    Building(DeletionCursor),
    /// Kept by every configure and delete from here on.
    Built,
}

fn dead_letter_index<S: StoreRead + ?Sized>(store: &S) -> Result<DeadLetterIndex, StoreError> {
    Ok(
        load(store, Table::Meta, DEAD_LETTER_INDEX_KEY)?
            .unwrap_or(DeadLetterIndex::Building(DeletionCursor::default())),
    )
}

/// Whether the index of dead-letter references is still to be built, for the leader's sweeps:
/// only on a store whose queues a build before the index wrote (a store's first configure marks
/// an empty one built).
pub fn dead_letter_index_due<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    if dead_letter_index_built(store)? {
        return Ok(false);
    }
    Ok(!store.scan(Table::Queue, &KeyRange::all(), 1)?.is_empty()
        || !store
            .scan(Table::QueueDeadLetterSource, &KeyRange::all(), 1)?
            .is_empty())
}

/// Whether the index of dead-letter references is complete, so a deletion can trust it.
pub fn dead_letter_index_built<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    Ok(dead_letter_index(store)? == DeadLetterIndex::Built)
}

/// Builds the dead-letter indexes from the records, within `limit` rows (and
/// [`QUEUE_DELETE_BYTES_MAX`] of messages read, at least one row): step 0 removes every
/// reference row whose source queue's record does not name that dead-letter queue (left by a
/// configure a build without the index applied), step 1 writes a reference row for every queue
/// that names one, step 2 a [`Table::QueueDeadLetter`] row for every message that is a dead
/// letter. Configures, dead-letterings, acks and redrives in between keep the rows they touch,
/// so the indexes equal the records once the build is done, on every replica alike.
pub(crate) fn build_dead_letter_index<S: StoreRead>(
    view: &mut View<'_, S>,
    limit: u32,
) -> Result<Response, StoreError> {
    const PAGE_ROWS: usize = 256;
    // Messages per scan: their payloads are read, so the byte bound is checked between pages.
    const MESSAGE_PAGE_ROWS: usize = 16;
    let DeadLetterIndex::Building(mut cursor) = dead_letter_index(view)? else {
        return Ok(Response::Swept { removed: 0 });
    };
    let limit = limit.max(1);
    let mut left = limit;
    let mut bytes_left = QUEUE_DELETE_BYTES_MAX;
    while left > 0 && bytes_left > 0 {
        let (table, page_rows) = match cursor.step {
            0 => (Table::QueueDeadLetterSource, PAGE_ROWS),
            1 => (Table::Queue, PAGE_ROWS),
            2 => (Table::QueueMessage, MESSAGE_PAGE_ROWS),
            _ => {
                save(
                    view,
                    Table::Meta,
                    DEAD_LETTER_INDEX_KEY.to_vec(),
                    &DeadLetterIndex::Built,
                );
                return Ok(Response::Swept { removed: limit - left });
            }
        };
        let start = cursor.after.clone().map_or_else(Vec::new, |mut k| {
            k.push(0);
            k
        });
        let want = page_rows.min(left as usize);
        let page = view.scan(table, &KeyRange::all_from(start), want)?;
        if page.is_empty() {
            cursor.next_step();
            continue;
        }
        for (key, bytes) in page {
            left -= 1;
            bytes_left = bytes_left.saturating_sub(bytes.len() as u64);
            match table {
                Table::QueueDeadLetterSource => {
                    let dlq = name_in_key(&key);
                    let source = dlq.and_then(|d| key.get(1 + d.len()..)).and_then(name_in_key);
                    let backed = match (dlq, source) {
                        (Some(dlq), Some(source)) => load::<_, StoredQueue>(view, Table::Queue, &named(source))?
                            .is_some_and(|r| r.config.dead_letter_queue.as_deref() == Some(dlq)),
                        _ => false,
                    };
                    if !backed {
                        view.delete(Table::QueueDeadLetterSource, key.clone());
                    }
                }
                Table::Queue => {
                    let record: StoredQueue = decode(Table::Queue, &key, &bytes)?;
                    if let (Some(dlq), Some(source)) = (&record.config.dead_letter_queue, name_in_key(&key)) {
                        view.put(
                            Table::QueueDeadLetterSource,
                            dead_letter_source_key(dlq, source),
                            Vec::new(),
                        );
                    }
                }
                _ => {
                    let message: StoredMessage = decode(Table::QueueMessage, &key, &bytes)?;
                    if message.dead_lettered_from.is_some() {
                        view.put(Table::QueueDeadLetter, key.clone(), vec![message.priority]);
                    }
                }
            }
            cursor.after = Some(key);
            if left == 0 || bytes_left == 0 {
                break;
            }
        }
    }
    save(
        view,
        Table::Meta,
        DEAD_LETTER_INDEX_KEY.to_vec(),
        &DeadLetterIndex::Building(cursor),
    );
    Ok(Response::Swept { removed: limit - left })
}

/// A page of [`list_queues`]: queue names with their records, and whether more follow.
pub type QueuePage = (Vec<(Vec<u8>, StoredQueue)>, bool);

/// Up to `limit` queues (at most [`crate::limits::LIST_QUEUES_MAX`]) whose stored names come
/// after `after`'s (names are stored behind their length, so shorter names come first), with
/// whether more follow.
pub fn list_queues<S: StoreRead + ?Sized>(store: &S, after: &[u8], limit: u32) -> Result<QueuePage, StoreError> {
    super::records::list_named(store, Table::Queue, after, limit, crate::limits::LIST_QUEUES_MAX)
}

/// Whether a receive on `queue` would find a message at `now_ms` (for long-polls, before
/// proposing one).
pub fn has_visible<S: StoreRead + ?Sized>(store: &S, queue: &[u8], now_ms: u64) -> Result<bool, StoreError> {
    let prefix = named(queue);
    if !store
        .scan(Table::QueueReady, &KeyRange::prefix_from(&prefix, prefix.clone()), 1)?
        .is_empty()
    {
        return Ok(true);
    }
    Ok(next_visible_at(store, queue)?.is_some_and(|at| at <= now_ms))
}

/// When the next delayed or in-flight message of `queue` becomes visible.
pub fn next_visible_at<S: StoreRead + ?Sized>(store: &S, queue: &[u8]) -> Result<Option<u64>, StoreError> {
    let prefix = named(queue);
    let first = store.scan(Table::QueueDelayed, &KeyRange::prefix_from(&prefix, prefix.clone()), 1)?;
    Ok(first.first().map(|(k, _)| {
        let at: [u8; 8] = k[prefix.len()..prefix.len() + 8]
            .try_into()
            .expect("delayed keys hold a time");
        u64::from_be_bytes(at)
    }))
}

/// Forgets dedup ids whose window has passed, at most `limit`.
pub(crate) fn sweep_dedup<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    limit: u32,
) -> Result<Response, StoreError> {
    let due_range = KeyRange::between(Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec());
    let due = view.scan(Table::QueueDedupExpiry, &due_range, limit as usize)?;
    let mut removed = 0u32;
    for (key, _) in due {
        let dedup = key[8..].to_vec();
        view.delete(Table::QueueDedupExpiry, key);
        view.delete(Table::QueueDedup, dedup);
        removed += 1;
    }
    Ok(Response::Swept { removed })
}
