//! Stream apply: topics, produce (with idempotent producers), retention, trims; and the fetch read.
//!
//! A partition is a run of record batches, one per partition per produce entry, keyed by their
//! first offset (as Kafka stores record batches): a produce of 1000 records writes a handful of
//! keys, and a fetch seeks to the batch holding its offset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::queue::check_name;
use super::records::{continue_in_turn, remove_prefixed, DeleteBudget, DeletionCursor};
use super::{check_batch, decode, load, named, out_of_range, save, OpContext, View};
use crate::command::{OpError, Response, StreamError, StreamOp};
use crate::limits::{
    BATCH_BYTES_MAX, LIST_TOPICS_MAX, NAME_BYTES_MAX, PARTITIONS_MAX, RECORD_VALUE_BYTES_MAX, TOPIC_DELETE_BYTES_MAX,
    TOPIC_DELETE_ROWS_MAX, TOPIC_DELETIONS_PER_ENTRY_MAX, TRIM_BATCHES_MAX, TRIM_BYTES_MAX,
    TRIM_PARTITIONS_PER_ENTRY_MAX, TTL_MS_MAX,
};
use crate::state::{KeyRange, StoreError, StoreRead, Table, ViewSource};
use crate::stream::{
    is_mirror_name, partition_for_key, FetchedRecord, ProduceRecord, Produced, Record, TopicConfig, TrimRule,
    MIRROR_MARK,
};

/// Applies one stream op of entry `ctx.index`.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &StreamOp,
) -> Result<Response, StoreError> {
    let OpContext { index, now_ms, .. } = ctx;
    match op {
        StreamOp::CreateTopic { topic, config } => create_topic(view, topic, config),
        StreamOp::Produce {
            topic,
            records,
            producer,
        } => produce(view, index, now_ms, topic, records, *producer),
        StreamOp::Retention { limit } => apply_retention(view, now_ms, *limit),
        StreamOp::DeleteTopic { topic } => delete_topic(view, topic),
        StreamOp::Trim {
            topic,
            partition,
            rule,
            newer_kept,
            limit,
        } => trim(view, topic, *partition, *rule, *newer_kept, *limit),
    }
}

/// A partition's bounds: records `start_offset..next_offset` are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub start_offset: u64,
    pub next_offset: u64,
    /// Bytes of the stored batches.
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredBatch {
    timestamp_ms: u64,
    records: Vec<Record>,
}

/// An idempotent producer's last appended batch on one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerState {
    first_sequence: u64,
    last_sequence: u64,
    first_offset: u64,
}

/// What a fetch returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub records: Vec<FetchedRecord>,
    /// The offset the next produced record will get.
    pub high_watermark: u64,
    /// The first offset still stored.
    pub log_start: u64,
}

fn partition_key(topic: &[u8], partition: u32) -> Vec<u8> {
    let mut k = named(topic);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn batch_key(topic: &[u8], partition: u32, base_offset: u64) -> Vec<u8> {
    let mut k = partition_key(topic, partition);
    k.extend_from_slice(&base_offset.to_be_bytes());
    k
}

fn producer_key(topic: &[u8], partition: u32, producer_id: u64) -> Vec<u8> {
    let mut k = partition_key(topic, partition);
    k.extend_from_slice(&producer_id.to_be_bytes());
    k
}

fn base_offset_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("batch keys end with an offset"))
}

fn unknown_topic(topic: &[u8]) -> OpError {
    OpError::NotFound {
        what: "topic".into(),
        name: String::from_utf8_lossy(topic).into_owned(),
    }
}

pub(crate) fn validate_topic(topic: &[u8], config: &TopicConfig) -> Result<(), OpError> {
    check_name("topic name", topic)?;
    refuse_mirror_name(topic)?;
    // Its mirrors are named `topic@region`, which must fit a name too.
    let mirror_len = topic.len() + 1 + basalt_replication::RegionName::MAX;
    if config.mirror && mirror_len > NAME_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: "name of a mirrored topic (plus '@' and a region name of up to 32 bytes)".into(),
            len: mirror_len,
            max: NAME_BYTES_MAX,
        });
    }
    if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
        return Err(out_of_range(
            "partitions",
            format!("1..={PARTITIONS_MAX}"),
            config.partitions,
        ));
    }
    if let Some(ms) = config.retention_ms {
        if ms == 0 || ms > TTL_MS_MAX {
            return Err(out_of_range("retention (ms)", format!("1..={TTL_MS_MAX}"), ms));
        }
    }
    if config.retention_bytes == Some(0) {
        return Err(out_of_range("retention (bytes)", ">= 1", 0));
    }
    Ok(())
}

pub(crate) fn validate_delete(topic: &[u8]) -> Result<(), OpError> {
    check_name("topic name", topic)?;
    refuse_mirror_name(topic)
}

pub(crate) fn validate_trim(topic: &[u8]) -> Result<(), OpError> {
    check_name("topic name", topic)?;
    refuse_mirror_name(topic)
}

/// Names with `@` are other regions' mirrors: read-only here.
fn refuse_mirror_name(topic: &[u8]) -> Result<(), OpError> {
    if is_mirror_name(topic) {
        return Err(OpError::Stream(StreamError::MirrorReadOnly {
            topic: String::from_utf8_lossy(topic).into_owned(),
        }));
    }
    Ok(())
}

pub(crate) fn validate_produce(topic: &[u8], records: &[ProduceRecord], producer: Option<u64>) -> Result<(), OpError> {
    check_name("topic name", topic)?;
    refuse_mirror_name(topic)?;
    check_batch(records.len())?;
    let mut total = 0usize;
    for r in records {
        if r.value.len() > RECORD_VALUE_BYTES_MAX {
            return Err(OpError::TooLarge {
                what: "record value".into(),
                len: r.value.len(),
                max: RECORD_VALUE_BYTES_MAX,
            });
        }
        total += r.key.len() + r.value.len() + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        match (producer, r.sequence) {
            (Some(_), None) => {
                return Err(OpError::Empty {
                    what: "sequence of a record from an idempotent producer".into(),
                })
            }
            (None, Some(_)) => {
                return Err(out_of_range(
                    "sequence without a producer id",
                    "no sequence",
                    "a sequence",
                ))
            }
            _ => {}
        }
    }
    if total > BATCH_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: "produce batch".into(),
            len: total,
            max: BATCH_BYTES_MAX,
        });
    }
    Ok(())
}

/// The topic's settings, or the refusal for an unknown topic.
pub fn topic_config<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
) -> Result<Result<TopicConfig, OpError>, StoreError> {
    Ok(load::<S, TopicConfig>(store, Table::StreamTopic, &named(topic))?.ok_or_else(|| unknown_topic(topic)))
}

/// A partition's bounds, or the refusal for an unknown topic or partition.
pub fn partition_state<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
) -> Result<Result<PartitionState, OpError>, StoreError> {
    let config = match topic_config(store, topic)? {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    if partition >= config.partitions {
        return Ok(Err(out_of_range(
            "partition",
            format!("0..{}", config.partitions),
            partition,
        )));
    }
    Ok(Ok(load(
        store,
        Table::StreamPartition,
        &partition_key(topic, partition),
    )?
    .unwrap_or_default()))
}

/// A topic's settings and every partition's offsets, from one view, so a produce or a retention
/// trim across partitions is seen whole or not at all: the read behind `describe_topic`.
pub fn describe<S: ViewSource + ?Sized>(
    source: &S,
    topic: &[u8],
) -> Result<Result<(TopicConfig, Vec<PartitionState>), OpError>, StoreError> {
    let view = source.view();
    let config = match topic_config(&view, topic)? {
        Ok(config) => config,
        Err(refused) => return Ok(Err(refused)),
    };
    let mut partitions = Vec::with_capacity(config.partitions as usize);
    for partition in 0..config.partitions {
        match partition_state(&view, topic, partition)? {
            Ok(state) => partitions.push(state),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    Ok(Ok((config, partitions)))
}

pub(crate) fn create_topic<S: StoreRead>(
    view: &mut View<'_, S>,
    topic: &[u8],
    config: &TopicConfig,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_topic(topic, config));
    if view.get(Table::StreamTopicDeleting, &named(topic))?.is_some() {
        return Ok(Response::Refused(OpError::Stream(StreamError::TopicBeingDeleted {
            topic: String::from_utf8_lossy(topic).into_owned(),
        })));
    }
    let existing = load::<_, TopicConfig>(view, Table::StreamTopic, &named(topic))?;
    if let Some(existing) = &existing {
        // Records are placed by `hash % partitions`: fewer partitions would lose records.
        if config.partitions < existing.partitions {
            return Ok(Response::Refused(out_of_range(
                "partitions (a topic's partitions can only grow)",
                format!(">= {}", existing.partitions),
                config.partitions,
            )));
        }
    }
    save(view, Table::StreamTopic, named(topic), config);
    Ok(Response::TopicCreated {
        created: existing.is_none(),
    })
}

pub(crate) fn produce<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    topic: &[u8],
    records: &[ProduceRecord],
    producer: Option<u64>,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_produce(topic, records, producer));
    let config = refuse_on_err!(topic_config(view, topic)?);
    // Records without key or partition all go to one partition per entry (a sticky partitioner).
    let keyless_partition = (index % u64::from(config.partitions)) as u32;
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (position, r) in records.iter().enumerate() {
        let partition = match r.partition {
            Some(p) if p >= config.partitions => {
                return Ok(Response::Refused(out_of_range(
                    "partition",
                    format!("0..{}", config.partitions),
                    p,
                )))
            }
            Some(p) => p,
            None if r.key.is_empty() => keyless_partition,
            None => partition_for_key(&r.key, config.partitions),
        };
        by_partition.entry(partition).or_default().push(position);
    }
    let mut outcomes = vec![
        (
            Produced {
                partition: 0,
                offset: 0,
                duplicate: false,
            },
            now_ms,
        );
        records.len()
    ];
    for (partition, positions) in by_partition {
        let mut state: PartitionState =
            load(view, Table::StreamPartition, &partition_key(topic, partition))?.unwrap_or_default();
        if let Some(producer_id) = producer {
            let sequences: Vec<u64> = positions.iter().filter_map(|&i| records[i].sequence).collect();
            let first = sequences[0];
            let last = sequences[sequences.len() - 1];
            if let Some(w) = sequences.windows(2).find(|w| w[1] != w[0].wrapping_add(1)) {
                return Ok(Response::Refused(OpError::Stream(StreamError::OutOfOrderSequence {
                    partition,
                    expected: w[0].wrapping_add(1),
                    got: w[1],
                    reason: "a partition's sequences in one request must be consecutive".into(),
                })));
            }
            let key = producer_key(topic, partition, producer_id);
            let previous: Option<ProducerState> = load(view, Table::StreamProducer, &key)?;
            match previous {
                Some(p) if p.first_sequence == first && p.last_sequence == last => {
                    // A retry of the producer's last batch: answer where it went the first time,
                    // and when (0 once retention removed the batch).
                    let first_batch: Option<StoredBatch> =
                        load(view, Table::StreamBatch, &batch_key(topic, partition, p.first_offset))?;
                    let stamp = first_batch.map_or(0, |b| b.timestamp_ms);
                    answer_batch(&mut outcomes, &positions, partition, p.first_offset, true, stamp);
                    continue;
                }
                Some(p) if first != p.last_sequence.wrapping_add(1) => {
                    return Ok(Response::Refused(OpError::Stream(StreamError::OutOfOrderSequence {
                        partition,
                        expected: p.last_sequence.wrapping_add(1),
                        got: first,
                        reason: "not the next sequence, nor a retry of the last batch".into(),
                    })));
                }
                _ => save(
                    view,
                    Table::StreamProducer,
                    key,
                    &ProducerState {
                        first_sequence: first,
                        last_sequence: last,
                        first_offset: state.next_offset,
                    },
                ),
            }
        }
        let batch = StoredBatch {
            timestamp_ms: now_ms,
            records: positions
                .iter()
                .map(|&i| Record {
                    key: records[i].key.clone(),
                    value: records[i].value.clone(),
                    headers: records[i].headers.clone(),
                })
                .collect(),
        };
        let bytes = basalt_codec::encode(&batch);
        answer_batch(&mut outcomes, &positions, partition, state.next_offset, false, now_ms);
        state.bytes += bytes.len() as u64;
        view.put(
            Table::StreamBatch,
            batch_key(topic, partition, state.next_offset),
            bytes,
        );
        state.next_offset += positions.len() as u64;
        save(view, Table::StreamPartition, partition_key(topic, partition), &state);
    }
    Ok(Response::ProducedStamped(outcomes))
}

/// Answers the records at `positions` of a produce request as one batch of `partition` from
/// `first_offset` on, stamped `stamp`.
fn answer_batch(
    outcomes: &mut [(Produced, u64)],
    positions: &[usize],
    partition: u32,
    first_offset: u64,
    duplicate: bool,
    stamp: u64,
) {
    for (n, &i) in positions.iter().enumerate() {
        outcomes[i] = (
            Produced {
                partition,
                offset: first_offset + n as u64,
                duplicate,
            },
            stamp,
        );
    }
}

/// Reads records from `offset` on: at most `max_records`, and no more than `max_bytes` of keys,
/// values and headers ([`Record::reply_bytes`](crate::stream::Record::reply_bytes)) unless the
/// first record alone is larger (a fetch always makes progress).
pub fn fetch<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
    offset: u64,
    max_records: u32,
    max_bytes: u64,
) -> Result<Result<Fetched, OpError>, StoreError> {
    let state = match partition_state(store, topic, partition)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    if offset < state.start_offset || offset > state.next_offset {
        return Ok(Err(OpError::Stream(StreamError::OffsetOutOfRange {
            offset,
            log_start: state.start_offset,
            high_watermark: state.next_offset,
        })));
    }
    let mut fetched = Fetched {
        records: Vec::new(),
        high_watermark: state.next_offset,
        log_start: state.start_offset,
    };
    if offset == state.next_offset || max_records == 0 {
        return Ok(Ok(fetched));
    }
    let prefix = partition_key(topic, partition);
    // The batch holding `offset` is the last one starting at or before it.
    let holding = store.scan_reverse(
        Table::StreamBatch,
        &KeyRange::between(prefix.clone(), batch_key(topic, partition, offset.saturating_add(1))),
        1,
    )?;
    let start = holding
        .first()
        .map_or_else(|| batch_key(topic, partition, offset), |(k, _)| k.clone());
    let mut bytes = 0u64;
    let mut from = start;
    'pages: loop {
        let page = store.scan(Table::StreamBatch, &KeyRange::prefix_from(&prefix, from.clone()), 16)?;
        if page.is_empty() {
            break;
        }
        for (key, value) in &page {
            let base = base_offset_of(key);
            let batch: StoredBatch = decode(Table::StreamBatch, key, value)?;
            for (n, record) in batch.records.into_iter().enumerate() {
                let at = base + n as u64;
                if at < offset {
                    continue;
                }
                let size = record.reply_bytes();
                let full = fetched.records.len() >= max_records as usize
                    || (!fetched.records.is_empty() && bytes + size > max_bytes);
                if full {
                    break 'pages;
                }
                bytes += size;
                fetched.records.push(FetchedRecord {
                    offset: at,
                    timestamp_ms: batch.timestamp_ms,
                    record,
                });
            }
        }
        let mut next = page[page.len() - 1].0.clone();
        next.push(0);
        from = next;
    }
    Ok(Ok(fetched))
}

/// `Meta` key prefix of the partitions a trim hid batches of that are still stored (followed by
/// the partition's key): the leader's retention entries remove them, then the key.
const TRIM_PENDING_PREFIX: &[u8] = b"stream_trim_pending/";

fn trim_pending_key(partition_key: &[u8]) -> Vec<u8> {
    [TRIM_PENDING_PREFIX, partition_key].concat()
}

/// The first offset from which every record of the partition is stamped at or after `at_ms`
/// (its high watermark when none is).
fn first_stamped_from<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
    state: &PartitionState,
    at_ms: u64,
) -> Result<Result<u64, OpError>, StoreError> {
    Ok(offset_for_time(store, topic, partition, at_ms)?
        .map(|found| found.map_or(state.next_offset, |(offset, _)| offset)))
}

/// Where `rule` puts the log start of a partition in `state` whose newest `newer_kept` records
/// are out of its reach, at most `limit` records on from the current start; never below it.
fn trim_cut<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
    state: &PartitionState,
    rule: TrimRule,
    newer_kept: u64,
    limit: Option<u64>,
) -> Result<Result<u64, OpError>, StoreError> {
    let seen_end = state.next_offset.saturating_sub(newer_kept);
    let cut = match rule {
        TrimRule::MaxLen(keep) => seen_end.saturating_sub(keep),
        TrimRule::MinId { timestamp_ms, offset } => {
            // Offsets and stamps both grow along a partition, so the records whose id is below
            // (timestamp_ms, offset) are a prefix: those stamped before `timestamp_ms`, then
            // those stamped exactly `timestamp_ms` with an offset below `offset`.
            let stamped_at = match first_stamped_from(store, topic, partition, state, timestamp_ms)? {
                Ok(offset) => offset,
                Err(refused) => return Ok(Err(refused)),
            };
            let stamped_after = match timestamp_ms.checked_add(1) {
                Some(next_ms) => match first_stamped_from(store, topic, partition, state, next_ms)? {
                    Ok(offset) => offset,
                    Err(refused) => return Ok(Err(refused)),
                },
                None => state.next_offset,
            };
            stamped_at.max(offset.min(stamped_after))
        }
    };
    let cut = cut.min(seen_end);
    let cut = limit.map_or(cut, |most| cut.min(state.start_offset.saturating_add(most)));
    Ok(Ok(cut.max(state.start_offset)))
}

/// Applies [`StreamOp::Trim`]: moves the partition's log start to the first record `rule` keeps
/// and notes the partition for the retention entries, which remove the batches it hid
/// ([`continue_trims`]). Answers the records hidden.
pub(crate) fn trim<S: StoreRead>(
    view: &mut View<'_, S>,
    topic: &[u8],
    partition: u32,
    rule: TrimRule,
    newer_kept: u64,
    limit: Option<u64>,
) -> Result<Response, StoreError> {
    refuse_on_err!(validate_trim(topic));
    let config = refuse_on_err!(topic_config(view, topic)?);
    if partition >= config.partitions {
        return Ok(Response::Refused(out_of_range(
            "partition",
            format!("0..{}", config.partitions),
            partition,
        )));
    }
    let key = partition_key(topic, partition);
    let mut state: PartitionState = load(view, Table::StreamPartition, &key)?.unwrap_or_default();
    let cut = refuse_on_err!(trim_cut(view, topic, partition, &state, rule, newer_kept, limit)?);
    let removed = cut - state.start_offset;
    if removed == 0 {
        return Ok(Response::Trimmed { removed: 0 });
    }
    let old_start = state.start_offset;
    state.start_offset = cut;
    save(view, Table::StreamPartition, key.clone(), &state);
    // The batches it hid are removed by the retention entries (so that one entry's work stays
    // small whatever the trim and however many trims a transaction holds); a pending trim's
    // cursor stays where the removal stands.
    let marker = trim_pending_key(&key);
    if view.get(Table::Meta, &marker)?.is_none() {
        // No trim pending: no stored batch ends before the old start (removals keep to that),
        // so the removal starts at the batch holding it, not at the partition's first key
        // (past every batch removed since the store last compacted).
        let holding = view.scan_reverse(
            Table::StreamBatch,
            &KeyRange::between(key.clone(), batch_key(topic, partition, old_start.saturating_add(1))),
            1,
        )?;
        let from = holding.into_iter().next().map(|(k, _)| k).unwrap_or_default();
        view.put(Table::Meta, marker, from);
    }
    Ok(Response::Trimmed { removed })
}

/// Removes the partition's oldest batches, from key `from` on (no batch before it is left), that
/// hold only records before its log start (which a trim hid), within `budget` (its first
/// removal always fits, so removal progresses), counting their bytes out of `state` (the caller
/// saves it). A batch is wholly hidden when the next one starts at or before the log start (the
/// newest: when the partition's end does), so no batch is decoded; each is read at most twice.
/// Answers how many it removed and, if such a batch is left, the key to go on from (so the next
/// entry does not step over the ones removed again).
fn remove_hidden_batches<S: StoreRead>(
    view: &mut View<'_, S>,
    topic: &[u8],
    partition: u32,
    state: &mut PartitionState,
    budget: &mut DeleteBudget,
    mut from: Vec<u8>,
) -> Result<(u32, Option<Vec<u8>>), StoreError> {
    let prefix = partition_key(topic, partition);
    if !from.starts_with(&prefix) {
        from = prefix.clone();
    }
    let mut removed = 0;
    loop {
        let page = view.scan(Table::StreamBatch, &KeyRange::prefix_from(&prefix, from.clone()), 2)?;
        let Some((key, value)) = page.first() else {
            return Ok((removed, None));
        };
        let end = page.get(1).map_or(state.next_offset, |(next, _)| base_offset_of(next));
        if end > state.start_offset {
            return Ok((removed, None));
        }
        if budget.spent() && budget.used() > 0 {
            return Ok((removed, Some(key.clone())));
        }
        let read: usize = page.iter().map(|(_, v)| v.len()).sum();
        budget.rows = budget.rows.saturating_sub(1);
        budget.bytes = budget.bytes.saturating_sub(read as u64);
        state.bytes = state.bytes.saturating_sub(value.len() as u64);
        view.delete(Table::StreamBatch, key.clone());
        removed += 1;
        from = key.clone();
        from.push(0);
    }
}

fn trim_pending_range() -> KeyRange {
    KeyRange::prefix_from(TRIM_PENDING_PREFIX, TRIM_PENDING_PREFIX.to_vec())
}

/// Whether a trim left hidden batches for the retention entries to remove.
pub fn trims_pending<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    Ok(!store.scan(Table::Meta, &trim_pending_range(), 1)?.is_empty())
}

/// `Meta` key: the pending-trim key the next entry's removal starts at (absent: the first), so
/// the partitions trims left batches in take turns.
const TRIM_TURN_KEY: &[u8] = b"stream_trim_turn";

/// Goes on with the batches trims hid, within a budget of its own ([`TRIM_BATCHES_MAX`] batches,
/// [`TRIM_BYTES_MAX`] bytes read), so a large trim never holds back retention or deletions,
/// and at most [`TRIM_PARTITIONS_PER_ENTRY_MAX`] partitions, taking turns. Answers the batches
/// removed. A pending partition whose topic is gone (deleted: the deletion removes its rows) is
/// forgotten.
fn continue_trims<S: StoreRead>(view: &mut View<'_, S>) -> Result<u32, StoreError> {
    let saved_turn = view.get(Table::Meta, TRIM_TURN_KEY)?;
    let had_turn = saved_turn.is_some();
    let turn = saved_turn
        .filter(|turn| turn.starts_with(TRIM_PENDING_PREFIX))
        .unwrap_or_else(|| TRIM_PENDING_PREFIX.to_vec());
    let mut pending = view.scan(
        Table::Meta,
        &KeyRange::prefix_from(TRIM_PENDING_PREFIX, turn.clone()),
        TRIM_PARTITIONS_PER_ENTRY_MAX,
    )?;
    if pending.len() < TRIM_PARTITIONS_PER_ENTRY_MAX {
        let wrapped = view.scan(
            Table::Meta,
            &KeyRange::between(TRIM_PENDING_PREFIX.to_vec(), turn),
            TRIM_PARTITIONS_PER_ENTRY_MAX - pending.len(),
        )?;
        pending.extend(wrapped);
    }
    let mut budget = DeleteBudget::new(TRIM_BATCHES_MAX, TRIM_BYTES_MAX);
    let mut next_turn = None;
    for (marker, cursor) in pending {
        if budget.spent() {
            break;
        }
        let key = marker[TRIM_PENDING_PREFIX.len()..].to_vec();
        // A partition key: the name's length, the name, the partition (4 bytes BE).
        let parsed = key.split_first().and_then(|(&len, rest)| {
            let (name, partition) = rest.split_at_checked(usize::from(len))?;
            Some((name.to_vec(), u32::from_be_bytes(partition.try_into().ok()?)))
        });
        let state: Option<PartitionState> = load(view, Table::StreamPartition, &key)?;
        let mut after = marker.clone();
        after.push(0);
        next_turn = Some(after);
        let (Some((topic, partition)), Some(mut state)) = (parsed, state) else {
            view.delete(Table::Meta, marker);
            continue;
        };
        let (done, left) = remove_hidden_batches(view, &topic, partition, &mut state, &mut budget, cursor)?;
        if done > 0 {
            save(view, Table::StreamPartition, key, &state);
        }
        match left {
            Some(go_on_from) => view.put(Table::Meta, marker, go_on_from),
            None => view.delete(Table::Meta, marker),
        }
    }
    match next_turn {
        Some(turn) => view.put(Table::Meta, TRIM_TURN_KEY.to_vec(), turn),
        None if had_turn => view.delete(Table::Meta, TRIM_TURN_KEY.to_vec()),
        None => {}
    }
    Ok(budget.used())
}

/// The oldest batch of a partition that retention removes at `now_ms`, with its record count.
fn expired_head<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
    config: &TopicConfig,
    state: &PartitionState,
    now_ms: u64,
) -> Result<Option<(Vec<u8>, u64, u64)>, StoreError> {
    let prefix = partition_key(topic, partition);
    let head = store.scan(Table::StreamBatch, &KeyRange::prefix_from(&prefix, prefix.clone()), 1)?;
    let Some((key, value)) = head.into_iter().next() else {
        return Ok(None);
    };
    let batch: StoredBatch = decode(Table::StreamBatch, &key, &value)?;
    let count = batch.records.len() as u64;
    let aged = config
        .retention_ms
        .is_some_and(|ms| batch.timestamp_ms.saturating_add(ms) <= now_ms);
    // The newest batch stays whatever its size, as Kafka keeps its active segment.
    let newest = base_offset_of(&key) + count >= state.next_offset;
    let oversize = config.retention_bytes.is_some_and(|max| state.bytes > max) && !newest;
    Ok((aged || oversize).then_some((key, count, value.len() as u64)))
}

fn topics_with_retention<S: StoreRead + ?Sized>(store: &S) -> Result<Vec<(Vec<u8>, TopicConfig)>, StoreError> {
    let mut out = Vec::new();
    for (key, value) in store.scan(Table::StreamTopic, &KeyRange::all(), usize::MAX)? {
        let config: TopicConfig = decode(Table::StreamTopic, &key, &value)?;
        // A mirror follows its source's retention, which the feed brings.
        if is_mirror_name(&key[1..]) {
            continue;
        }
        if config.retention_ms.is_some() || config.retention_bytes.is_some() {
            out.push((key[1..].to_vec(), config));
        }
    }
    Ok(out)
}

/// Whether some partition has a batch that retention would remove at `now_ms`, a topic deletion
/// has rows left to remove, or a trim hid batches still stored.
pub fn retention_due<S: StoreRead + ?Sized>(store: &S, now_ms: u64) -> Result<bool, StoreError> {
    if deletions_due(store)? || trims_pending(store)? {
        return Ok(true);
    }
    for (topic, config) in topics_with_retention(store)? {
        for partition in 0..config.partitions {
            let state: PartitionState =
                load(store, Table::StreamPartition, &partition_key(&topic, partition))?.unwrap_or_default();
            if expired_head(store, &topic, partition, &config, &state, now_ms)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Goes on with topic deletions (at most [`TOPIC_DELETE_ROWS_MAX`] rows, a budget of their own
/// so a large deletion never starves retention) and with the batches trims hid (a budget of
/// their own too, [`continue_trims`]), then removes batches past their topic's retention,
/// oldest first, at most `limit` batches (`0`: deletions and trims only, as the leader's
/// follow-up entries within a tick ask, so they do not walk every partition again).
pub(crate) fn apply_retention<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    limit: u32,
) -> Result<Response, StoreError> {
    let deleted = continue_deletions(view, TOPIC_DELETE_ROWS_MAX)?.saturating_add(continue_trims(view)?);
    if limit == 0 {
        return Ok(Response::Swept { removed: deleted });
    }
    let mut removed = 0u32;
    for (topic, config) in topics_with_retention(view)? {
        for partition in 0..config.partitions {
            let key = partition_key(&topic, partition);
            let mut state: PartitionState = load(view, Table::StreamPartition, &key)?.unwrap_or_default();
            let mut changed = false;
            while removed < limit {
                let Some((batch, count, bytes)) = expired_head(view, &topic, partition, &config, &state, now_ms)?
                else {
                    break;
                };
                // A trim may have moved the start past this batch already.
                state.start_offset = state.start_offset.max(base_offset_of(&batch) + count);
                state.bytes = state.bytes.saturating_sub(bytes);
                view.delete(Table::StreamBatch, batch);
                removed += 1;
                changed = true;
            }
            if changed {
                save(view, Table::StreamPartition, key, &state);
            }
        }
    }
    Ok(Response::Swept {
        removed: removed.saturating_add(deleted),
    })
}

/// A topic being deleted ([`Table::StreamTopicDeleting`]): its settings as they were (a mirrored
/// topic's removals are still shipped to its mirrors) and where the walk over committed offsets,
/// which are keyed by group first, stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicDeletion {
    pub(crate) config: TopicConfig,
    /// The last committed-offset key looked at (`None`: not started).
    offsets_after: Option<Vec<u8>>,
    /// Where the removal of the topic's own rows (batches, producers, partitions) stands.
    rows: DeletionCursor,
}

/// A [`TopicDeletion`] as builds before its row cursor saved it.
#[derive(Deserialize)]
struct TopicDeletionWithoutCursor {
    config: TopicConfig,
    offsets_after: Option<Vec<u8>>,
}

impl TopicDeletion {
    /// Decodes a [`Table::StreamTopicDeleting`] value, also one saved before the row cursor (its
    /// row removal starts over from the first row left).
    pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<TopicDeletion, StoreError> {
        decode(Table::StreamTopicDeleting, key, bytes).or_else(|e| {
            let old: TopicDeletionWithoutCursor = basalt_codec::decode(bytes).map_err(|_| e)?;
            Ok(TopicDeletion {
                config: old.config,
                offsets_after: old.offsets_after,
                rows: DeletionCursor::default(),
            })
        })
    }
}

/// `Meta` key: the [`Table::StreamTopicDeleting`] key the next entry's deletion work starts at
/// (absent: the first), so topic deletions take turns.
const DELETION_TURN_KEY: &[u8] = b"stream_topic_deletion_turn";

/// Deletes `topic`: it is unknown from this entry on, and as many of its rows as one entry may
/// remove ([`TOPIC_DELETE_ROWS_MAX`], [`TOPIC_DELETE_BYTES_MAX`]) are removed; the rest are
/// removed by the leader's retention entries, and until then the name cannot be created again
/// (`TopicBeingDeleted`), so a new topic never sees the old one's records or offsets.
pub(crate) fn delete_topic<S: StoreRead>(view: &mut View<'_, S>, topic: &[u8]) -> Result<Response, StoreError> {
    refuse_on_err!(validate_delete(topic));
    let config = refuse_on_err!(topic_config(view, topic)?);
    view.delete(Table::StreamTopic, named(topic));
    // Its partitions' pending trims go with it (their cursors would mislead a topic of the
    // same name created later).
    let pending = trim_pending_key(&named(topic));
    for (marker, _) in view.scan(
        Table::Meta,
        &KeyRange::prefix_from(&pending, pending.clone()),
        config.partitions as usize,
    )? {
        view.delete(Table::Meta, marker);
    }
    let mut deletion = TopicDeletion {
        config,
        offsets_after: None,
        rows: DeletionCursor::default(),
    };
    let mut budget = DeleteBudget::new(TOPIC_DELETE_ROWS_MAX, TOPIC_DELETE_BYTES_MAX);
    let finished = remove_topic_rows(view, topic, &mut deletion, &mut budget)?;
    if !finished {
        save(view, Table::StreamTopicDeleting, named(topic), &deletion);
    }
    Ok(Response::TopicDeleted { finished })
}

/// Goes on with topic deletions, within `limit` rows, starting with the deletion after the one
/// the last entry stopped in (wrapping around), so several deletions progress in turn; at most
/// [`TOPIC_DELETIONS_PER_ENTRY_MAX`] are looked at. Answers the rows removed.
pub(super) fn continue_deletions<S: StoreRead>(view: &mut View<'_, S>, limit: u32) -> Result<u32, StoreError> {
    let mut budget = DeleteBudget::new(limit, TOPIC_DELETE_BYTES_MAX);
    continue_in_turn(
        view,
        Table::StreamTopicDeleting,
        DELETION_TURN_KEY,
        TOPIC_DELETIONS_PER_ENTRY_MAX,
        &mut budget,
        |view, key, topic, bytes, budget| {
            let mut deletion = TopicDeletion::decode(key, bytes)?;
            let finished = remove_topic_rows(view, topic, &mut deletion, budget)?;
            if !finished {
                save(view, Table::StreamTopicDeleting, key.to_vec(), &deletion);
            }
            Ok(finished)
        },
    )?;
    Ok(budget.used())
}

/// Whether a topic deletion has rows left to remove.
pub fn deletions_due<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    Ok(!store.scan(Table::StreamTopicDeleting, &KeyRange::all(), 1)?.is_empty())
}

/// The tables a topic deletion empties of the topic's rows, in order; committed offsets follow.
/// A saved [`DeletionCursor`] names its step by its place here, so the order is part of the data
/// format.
pub(super) const DELETE_STEPS: [Table; 3] = [Table::StreamBatch, Table::StreamProducer, Table::StreamPartition];

/// Removes rows of the deleted `topic` within `budget`: record batches, partitions, producers,
/// then committed offsets. Answers whether none is left.
fn remove_topic_rows<S: StoreRead>(
    view: &mut View<'_, S>,
    topic: &[u8],
    deletion: &mut TopicDeletion,
    budget: &mut DeleteBudget,
) -> Result<bool, StoreError> {
    // Rows per scan: pages start after the rows removed so far, so a scan never re-reads them.
    const PAGE_ROWS: u32 = 64;
    // Record batches per scan: a scan reads their values (up to `BATCH_BYTES_MAX` each), so a
    // page stays small and the byte budget is checked between pages.
    const BATCH_PAGE_ROWS: u32 = 1;
    let prefix = named(topic);
    let cursor = &mut deletion.rows;
    while let Some(&table) = DELETE_STEPS.get(usize::from(cursor.step)) {
        let page_rows = if table == Table::StreamBatch {
            BATCH_PAGE_ROWS
        } else {
            PAGE_ROWS
        };
        let done = remove_prefixed(
            view,
            table,
            &prefix,
            &mut cursor.after,
            page_rows,
            1,
            budget,
            |_, _, _| Ok(()),
        )?;
        if !done {
            return Ok(false);
        }
        cursor.next_step();
    }
    // Committed offsets are keyed `(group, topic, partition)`: walk them all, removing this topic's.
    loop {
        if budget.spent() {
            return Ok(false);
        }
        let start = match &deletion.offsets_after {
            None => Vec::new(),
            Some(after) => {
                let mut start = after.clone();
                start.push(0);
                start
            }
        };
        let want = budget.rows.min(PAGE_ROWS * 16);
        let page = view.scan(Table::StreamOffset, &KeyRange::all_from(start), want as usize)?;
        let walked_all = page.len() < want as usize;
        for (key, _) in page {
            budget.rows -= 1;
            let owner = topic_of_key(&key).and_then(|group| topic_of_key(&key[1 + group.len()..]));
            if owner == Some(topic) {
                view.delete(Table::StreamOffset, key.clone());
            }
            deletion.offsets_after = Some(key);
        }
        if walked_all {
            return Ok(true);
        }
    }
}

/// A page of [`list_topics`]: topic names with their settings, and whether more follow.
pub type TopicPage = (Vec<(Vec<u8>, TopicConfig)>, bool);

/// Up to `limit` topics (at most [`LIST_TOPICS_MAX`]) whose stored names come after `after`'s
/// (shorter names first), with whether more follow. Mirrors of other regions' topics are listed
/// too (their names hold `@`); topics being deleted are not.
pub fn list_topics<S: StoreRead + ?Sized>(store: &S, after: &[u8], limit: u32) -> Result<TopicPage, StoreError> {
    super::records::list_named(store, Table::StreamTopic, after, limit, LIST_TOPICS_MAX)
}

/// The first record of a partition stamped at or after `at_ms`: its offset and timestamp, or
/// `None` when every stored record is older (Kafka's offsets-for-times). Records are stamped by
/// their entry, and entry stamps never decrease along the log, so timestamps never decrease
/// along a partition and a binary search over its batches finds it in `O(log records)` seeks.
pub fn offset_for_time<S: StoreRead + ?Sized>(
    store: &S,
    topic: &[u8],
    partition: u32,
    at_ms: u64,
) -> Result<Result<Option<(u64, u64)>, OpError>, StoreError> {
    let state = match partition_state(store, topic, partition)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let prefix = partition_key(topic, partition);
    let (mut low, mut high) = (state.start_offset, state.next_offset);
    let mut found = None;
    // Invariant: the answer, if any, is the first batch starting in `low..high` whose stamp is
    // at or after `at_ms`, or `found` if none is.
    while low < high {
        let middle = low + (high - low) / 2;
        let holding = store.scan_reverse(
            Table::StreamBatch,
            &KeyRange::between(prefix.clone(), batch_key(topic, partition, middle.saturating_add(1))),
            1,
        )?;
        let Some((key, value)) = holding.into_iter().next() else {
            // A partition's first batch starts at its log start; nothing holds `middle` only if
            // retention removed it meanwhile (a stale view): nothing at or before it counts.
            low = middle + 1;
            continue;
        };
        let base = base_offset_of(&key);
        let batch: StoredBatch = decode(Table::StreamBatch, &key, &value)?;
        if batch.timestamp_ms >= at_ms {
            found = Some((base.max(state.start_offset), batch.timestamp_ms));
            high = base;
        } else {
            // Every record of this batch is older: the answer starts after it.
            low = (base + batch.records.len() as u64).max(middle + 1);
        }
    }
    Ok(Ok(found))
}

/// The tables a mirrored topic's rows are in: its settings, partitions' bounds and record batches
/// (not producers, groups or offsets, which stay in their region).
pub const MIRRORED_TABLES: [Table; 3] = [Table::StreamTopic, Table::StreamPartition, Table::StreamBatch];

/// The topic a row of [`MIRRORED_TABLES`] belongs to: every key starts with the length-prefixed name.
pub(crate) fn topic_of_key(key: &[u8]) -> Option<&[u8]> {
    super::records::name_in_key(key)
}

/// `key` of a row of `topic`, re-keyed under the mirror name `topic@region`.
pub(crate) fn mirror_key(key: &[u8], region: &[u8]) -> Option<Vec<u8>> {
    let topic = topic_of_key(key)?;
    let mut name = topic.to_vec();
    name.push(MIRROR_MARK);
    name.extend_from_slice(region);
    if name.len() > NAME_BYTES_MAX {
        return None;
    }
    let mut mirrored = named(&name);
    mirrored.extend_from_slice(&key[1 + topic.len()..]);
    Some(mirrored)
}
