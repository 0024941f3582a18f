//! Redis streams on Basalt topics: `XADD`, `XLEN`, `XRANGE`, `XREVRANGE`, `XREAD` (`BLOCK`),
//! `XGROUP CREATE | SETID | DESTROY | DELCONSUMER`, `XREADGROUP`, `XACK`, `XPENDING`, `XCLAIM`,
//! `XAUTOCLAIM` and `XINFO STREAM | GROUPS | CONSUMERS`, each as calls of the SDK.
//!
//! A stream `key` is partition 0 of the one-partition topic `key` (created by the first `XADD`,
//! or `XGROUP CREATE ... MKSTREAM`), so the SDK's and the CLI's stream commands read what RESP
//! wrote and the other way round. Ids are `stamp-offset` ([`crate::stream_ids`]). An entry is
//! appended by one transaction holding the produce and the condition that no KV key of that
//! name exists (a key has one type). Consumer groups are Basalt rows of their own (a group's
//! next offset; one row per pending entry), written by transactions: a delivery claims its
//! entries by moving the group's row on, conditioned on the row's revision, and writes their
//! pending rows in the same transaction; an `XACK` deletes pending rows.

use std::time::{Duration, UNIX_EPOCH};

use basalt_client::limits::{GET_MANY_KEYS_MAX, NAME_BYTES_MAX};
use basalt_client::stream::PartitionInfo;
use basalt_client::txn::{Compare, Condition};
use basalt_client::{
    Client, ClientError, ErrorCode, FetchOptions, FetchedRecord, ReadConsistency, TopicOptions, TxnOp, TxnOpResult,
    TxnOutcome,
};
use tokio::task::JoinSet;

use crate::command::{Bytes, StreamTrim, XInfo};
use crate::frame::Reply;
use crate::keys::{now_ms, op_refusal, WRONGTYPE};
use crate::limits::{
    CAS_ATTEMPTS_MAX, PENDING_SCAN_ROWS_MAX, REPLY_BYTES_MAX, STREAM_ABSENT_POLL_MS, STREAM_BLOCK_ROUND_MS,
    STREAM_CLAIM_ENTRIES_MAX, TXN_CONDITIONS_MAX, TXN_OPS_MAX, XINFO_GROUPS_MAX,
};
use crate::reply_error::client_error;
use crate::stream_ids::{
    encode_entry, entry_fields, first_offset_from, group_name, group_row, group_rows_of, pending_id, pending_row,
    pending_rows, pending_rows_from, pending_rows_of, stream_row, ClaimOptions, GroupState, Pending, PendingQuery,
    RangeEnd, ReadFrom, StreamId,
};

/// Redis's error for a group the `XGROUP` and `XINFO` subcommands name that does not exist.
fn no_such_group(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

/// Redis's error for an `XGROUP` subcommand naming a stream that does not exist.
const XGROUP_NEEDS_KEY: &str = "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.";

/// Redis's error for a group that does not exist (`command`: where, as `XREADGROUP` names it;
/// empty for the commands whose error names none).
fn no_group(key: &[u8], group: &[u8], command: &str) -> Reply {
    let place = if command.is_empty() {
        String::new()
    } else {
        format!(" in {command}")
    };
    Reply::error(format!(
        "NOGROUP No such key '{}' or consumer group '{}'{place}",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// A pending row as read: the entry's state and the row's revision.
type Read = (Pending, u64);

/// The claimed entries as `XCLAIM` answers them: whole, or their ids (`JUSTID`).
fn claimed_reply(claimed: Vec<FetchedRecord>, just_id: bool) -> Reply {
    if just_id {
        Reply::Array(claimed.iter().map(|r| Reply::Bulk(id_of(r).bulk())).collect())
    } else {
        entries_reply(claimed)
    }
}

/// Creates the stream `key`'s topic (one partition) unless it exists, marked first as a stream
/// RESP created ([`stream_row`]; a mark without a topic, left by a failure in between, is
/// harmless: the name is looked up and not found).
pub(crate) async fn create_stream(client: &Client, key: &[u8]) -> Result<(), Reply> {
    if could_be_topic(key) {
        client
            .kv()
            .put(stream_row(key), b"")
            .await
            .map_err(|e| client_error(&e))?;
    }
    let options = TopicOptions {
        partitions: 1,
        ..TopicOptions::default()
    };
    match client.streams().create_topic(key.to_vec(), options).await {
        Ok(_) => Ok(()),
        Err(e) => Err(client_error(&e)),
    }
}

/// The mark's value while a `DEL` removes the stream (a created stream's mark is empty).
const MARK_DELETING: &[u8] = b"deleting";

/// Whether `key` can name a topic at all; a longer or empty one is never looked up.
fn could_be_topic(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= NAME_BYTES_MAX
}

fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    e.code() == Some(code)
}

/// A finished wait: the client left or the node is stopping.
pub type Gone<'a> = std::pin::Pin<&'a mut (dyn std::future::Future<Output = ()> + Send)>;

/// One stream's entries in a read's reply: `[key, [[id, [field, value ...]] ...]]`.
fn entries_reply(records: Vec<FetchedRecord>) -> Reply {
    Reply::Array(records.into_iter().map(entry_reply).collect())
}

fn entry_reply(record: FetchedRecord) -> Reply {
    let id = StreamId {
        ms: record.timestamp_ms,
        seq: record.offset,
    };
    let fields = entry_fields(&record.key, &record.value, &record.headers);
    Reply::Array(vec![
        Reply::Bulk(id.bulk()),
        Reply::Array(fields.into_iter().map(Reply::Bulk).collect()),
    ])
}

/// `XREAD`'s and `XREADGROUP`'s reply: streams with entries, as an array of pairs (RESP2) or a
/// map (RESP3).
fn streams_reply(streams: Vec<(Bytes, Reply)>, resp3: bool) -> Reply {
    if resp3 {
        Reply::Map(
            streams
                .into_iter()
                .map(|(key, entries)| (Reply::Bulk(key), entries))
                .collect(),
        )
    } else {
        Reply::Array(
            streams
                .into_iter()
                .map(|(key, entries)| Reply::Array(vec![Reply::Bulk(key), entries]))
                .collect(),
        )
    }
}

fn record_bytes(record: &FetchedRecord) -> usize {
    64 + record.key.len() + record.value.len() + record.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

fn too_large(what: &str) -> Reply {
    Reply::error(format!(
        "ERR the {what} reply would pass {REPLY_BYTES_MAX} bytes; read with COUNT"
    ))
}

/// Where a blocking read waits on one stream: the offset it fetches at, and the id entries must
/// come after (`XREAD` of an id: the first records fetched may be older).
struct Position {
    key: Bytes,
    offset: u64,
    after: Option<StreamId>,
}

fn id_of(record: &FetchedRecord) -> StreamId {
    StreamId {
        ms: record.timestamp_ms,
        seq: record.offset,
    }
}

/// The stream commands of one connection.
pub struct Streams<'a> {
    pub client: &'a Client,
    /// Where `XADD`s of one stream from many connections meet.
    pub appender: &'a crate::stream_append::Appender,
    pub reads: ReadConsistency,
}

impl Streams<'_> {
    /// The stream's partition (its bounds), `None` when no topic has the name.
    async fn partition(&self, key: &[u8]) -> Result<Option<PartitionInfo>, Reply> {
        if !could_be_topic(key) {
            return Ok(None);
        }
        match self.client.streams().describe(key.to_vec(), self.reads).await {
            Ok(info) if info.partitions.len() == 1 => Ok(info.partitions.into_iter().next()),
            Ok(info) => Err(Reply::error(format!(
                "ERR the topic '{}' has {} partitions; a Redis stream is a topic of one partition",
                String::from_utf8_lossy(key),
                info.partitions.len()
            ))),
            Err(e) if is_code(&e, ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// `WRONGTYPE` when a KV key (a string, hash or sorted set) has the stream's name.
    async fn check_not_a_key(&self, key: &[u8]) -> Result<(), Reply> {
        match self.client.kv().get_with(key, self.reads).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(Reply::error(WRONGTYPE)),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// Which of `keys` name a stream RESP created ([`stream_row`]) that exists (for `TYPE` and
    /// `EXISTS` of names no KV key holds): the marks are read 16 at a time, and only a marked
    /// name's topic is looked up.
    pub async fn exist(&self, keys: &[&Bytes]) -> Result<Vec<bool>, Reply> {
        let mut exist = vec![false; keys.len()];
        let candidates: Vec<usize> = (0..keys.len()).filter(|&i| could_be_topic(keys[i])).collect();
        for group in candidates.chunks(GET_MANY_KEYS_MAX) {
            let rows: Vec<Vec<u8>> = group.iter().map(|&i| stream_row(keys[i])).collect();
            let marks = self
                .client
                .kv()
                .get_many(&rows, self.reads)
                .await
                .map_err(|e| client_error(&e))?;
            for (&i, mark) in group.iter().zip(marks) {
                exist[i] = mark.is_some() && self.partition(keys[i]).await?.is_some();
            }
        }
        Ok(exist)
    }

    /// Deletes the stream `key` RESP created, with its consumer groups; whether its topic was
    /// there. The mark is taken first (written again: a new revision, so an `XGROUP CREATE`
    /// that read the old one fails), then the groups' rows go, then the topic, and last the
    /// mark, only if still at the revision taken (an `XADD` that created the stream again
    /// meanwhile wrote it anew, and keeps it). A deletion cut short is finished by the next
    /// `DEL` of the name.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, Reply> {
        if !could_be_topic(key) {
            return Ok(false);
        }
        let mark = stream_row(key);
        match self.client.kv().get(&mark).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(e) => return Err(client_error(&e)),
        }
        let taken = self
            .client
            .kv()
            .put(&mark, MARK_DELETING)
            .await
            .map_err(|e| client_error(&e))?;
        self.delete_rows(&group_rows_of(key)).await?;
        self.delete_rows(&pending_rows_of(key)).await?;
        let deleted = match self.client.streams().delete_topic(key.to_vec()).await {
            Ok(()) => true,
            Err(e) if is_code(&e, ErrorCode::NotFound) => false,
            Err(e) => return Err(client_error(&e)),
        };
        let outcome = self
            .client
            .txn()
            .when(Condition::mod_revision(mark.clone(), Compare::Eq, taken))
            .then(TxnOp::delete(mark))
            .commit()
            .await;
        match outcome {
            Ok(TxnOutcome::Committed { .. }) => Ok(deleted),
            Ok(TxnOutcome::Aborted { reason, .. }) => Err(op_refusal(reason)),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// Deletes every row under `prefix`, a transaction per page; how many there were.
    async fn delete_rows(&self, prefix: &[u8]) -> Result<u64, Reply> {
        let mut deleted = 0;
        loop {
            let page = self
                .client
                .kv()
                .scan_page(
                    prefix,
                    b"",
                    (TXN_OPS_MAX as u32).min(1000),
                    ReadConsistency::Linearizable,
                )
                .await
                .map_err(|e| client_error(&e))?;
            if page.items.is_empty() {
                return Ok(deleted);
            }
            let mut txn = self.client.txn();
            for (row, _) in &page.items {
                txn = txn.then(TxnOp::delete(row.clone()));
            }
            match txn.commit().await {
                Ok(TxnOutcome::Committed { results, .. }) => {
                    deleted += results
                        .iter()
                        .filter(|r| matches!(r, TxnOpResult::Deleted { deleted: true, .. }))
                        .count() as u64;
                }
                Ok(TxnOutcome::Aborted { reason, .. }) => return Err(op_refusal(reason)),
                Err(e) => return Err(client_error(&e)),
            }
            if !page.more {
                return Ok(deleted);
            }
        }
    }

    /// `XADD key [NOMKSTREAM] [MAXLEN|MINID ...] * field value ...`: appends the entry (with the
    /// other connections' appends to the stream meanwhile, [`crate::stream_append`]) and trims
    /// the stream in the same transaction, answers its id (null with `NOMKSTREAM` when there is
    /// no stream).
    pub async fn xadd(&self, key: &[u8], pairs: &[(Bytes, Bytes)], create: bool, trim: Option<StreamTrim>) -> Reply {
        self.appender
            .append(self.client, key, encode_entry(pairs), create, trim)
            .await
    }

    /// `XTRIM key MAXLEN|MINID ...`: the entries it removed (0 when there is no stream,
    /// `WRONGTYPE` when a KV key has the name). Trims partition 0, the one `XADD` writes.
    pub async fn xtrim(&self, key: &[u8], trim: StreamTrim) -> Reply {
        if !could_be_topic(key) {
            return match self.check_not_a_key(key).await {
                Ok(()) => Reply::Integer(0),
                Err(reply) => reply,
            };
        }
        match self.client.streams().trim(key.to_vec(), 0, trim.rule, trim.limit).await {
            Ok(removed) => Reply::Integer(i64::try_from(removed).unwrap_or(i64::MAX)),
            Err(e) if is_code(&e, ErrorCode::NotFound) => match self.check_not_a_key(key).await {
                Ok(()) => Reply::Integer(0),
                Err(reply) => reply,
            },
            Err(e) => client_error(&e),
        }
    }

    async fn create(&self, key: &[u8]) -> Result<(), Reply> {
        create_stream(self.client, key).await
    }

    /// `XLEN`: the entries the stream keeps.
    pub async fn xlen(&self, key: &[u8]) -> Reply {
        match self.partition(key).await {
            Ok(Some(p)) => Reply::Integer(p.high_watermark.saturating_sub(p.log_start) as i64),
            Ok(None) => match self.check_not_a_key(key).await {
                Ok(()) => Reply::Integer(0),
                Err(reply) => reply,
            },
            Err(reply) => reply,
        }
    }

    /// The first offset stamped at or after `ms` (the high watermark when none is).
    async fn offset_at(&self, key: &[u8], ms: u64, partition: &PartitionInfo) -> Result<u64, Reply> {
        let Some(at) = UNIX_EPOCH.checked_add(Duration::from_millis(ms)) else {
            return Ok(partition.high_watermark);
        };
        match self.client.streams().offset_for_time(key.to_vec(), 0, at).await {
            Ok(found) => Ok(found.offset),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// The first offset whose id is at or after `id`, within the partition's bounds.
    async fn first_offset(&self, key: &[u8], id: StreamId, partition: &PartitionInfo) -> Result<u64, Reply> {
        let (start, end) = (partition.log_start, partition.high_watermark);
        if id == StreamId::MIN {
            return Ok(start);
        }
        let at_ms = self.offset_at(key, id.ms, partition).await?;
        let after_ms = match id.ms.checked_add(1) {
            Some(next) => self.offset_at(key, next, partition).await?,
            None => end,
        };
        Ok(first_offset_from(id, at_ms, after_ms).clamp(start, end))
    }

    /// The first offset after `id`: one fetch when `id` names a record (a reader going on from
    /// the last id it got), else resolved through the stamps.
    async fn offset_after(&self, key: &[u8], id: StreamId, partition: &PartitionInfo) -> Result<u64, Reply> {
        if (partition.log_start..partition.high_watermark).contains(&id.seq) {
            let options = FetchOptions {
                max_records: 1,
                consistency: self.reads,
                ..FetchOptions::default()
            };
            if let Ok(fetched) = self.client.streams().fetch(key.to_vec(), 0, id.seq, options).await {
                if fetched
                    .records
                    .first()
                    .is_some_and(|r| r.offset == id.seq && r.timestamp_ms == id.ms)
                {
                    return Ok(id.seq + 1);
                }
            }
        }
        match id.next() {
            Some(next) => self.first_offset(key, next, partition).await,
            None => Ok(partition.high_watermark),
        }
    }

    /// Records `from..to` (at most `max`), page by page, within [`REPLY_BYTES_MAX`]: past it
    /// an error, or with `truncate` the records before it (at least one).
    async fn read_range(
        &self,
        key: &[u8],
        from: u64,
        to: u64,
        max: usize,
        what: &str,
        truncate: bool,
    ) -> Result<Vec<FetchedRecord>, Reply> {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut at = from;
        while at < to && records.len() < max {
            let wanted = (to - at).min((max - records.len()) as u64).min(10_000) as u32;
            let options = FetchOptions {
                max_records: wanted,
                consistency: self.reads,
                ..FetchOptions::default()
            };
            let fetched = match self.client.streams().fetch(key.to_vec(), 0, at, options).await {
                Ok(fetched) => fetched,
                // Retention removed records meanwhile: go on from the oldest kept.
                Err(e) if is_code(&e, ErrorCode::OffsetOutOfRange) => match self.partition(key).await? {
                    Some(p) if p.log_start > at => {
                        at = p.log_start;
                        continue;
                    }
                    _ => break,
                },
                Err(e) if is_code(&e, ErrorCode::NotFound) => break,
                Err(e) => return Err(client_error(&e)),
            };
            if fetched.records.is_empty() {
                break;
            }
            for record in fetched.records {
                if record.offset >= to || records.len() >= max {
                    break;
                }
                at = record.offset + 1;
                bytes += record_bytes(&record);
                if bytes > REPLY_BYTES_MAX {
                    if truncate && !records.is_empty() {
                        return Ok(records);
                    }
                    return Err(too_large(what));
                }
                records.push(record);
            }
        }
        Ok(records)
    }

    /// `XRANGE` and `XREVRANGE` (`rev`, whose ends are given high first).
    pub async fn xrange(&self, key: &[u8], start: RangeEnd, end: RangeEnd, count: Option<usize>, rev: bool) -> Reply {
        let what = if rev { "XREVRANGE" } else { "XRANGE" };
        // The whole stream from its start (`XRANGE key - + [COUNT n]`, a reader's first look):
        // one fetch from offset 0, without reading the bounds first.
        let whole = start == RangeEnd::From(StreamId::MIN) && end == RangeEnd::To(StreamId::MAX);
        if whole && !rev && count != Some(0) && could_be_topic(key) {
            match self
                .read_range(key, 0, u64::MAX, count.unwrap_or(usize::MAX), what, false)
                .await
            {
                Ok(records) if !records.is_empty() => return entries_reply(records),
                // Empty, or no stream: answered below (an empty array, or WRONGTYPE).
                Ok(_) => {}
                Err(reply) => return reply,
            }
        }
        let partition = match self.partition(key).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return match self.check_not_a_key(key).await {
                    Ok(()) => Reply::Array(Vec::new()),
                    Err(reply) => reply,
                }
            }
            Err(reply) => return reply,
        };
        let (RangeEnd::From(low), RangeEnd::To(high)) = (start, end) else {
            return Reply::Array(Vec::new());
        };
        if count == Some(0) || low > high {
            return Reply::Array(Vec::new());
        }
        let from = match self.first_offset(key, low, &partition).await {
            Ok(offset) => offset,
            Err(reply) => return reply,
        };
        let to = match high.next() {
            Some(after) => match self.first_offset(key, after, &partition).await {
                Ok(offset) => offset,
                Err(reply) => return reply,
            },
            None => partition.high_watermark,
        };
        let max = count.unwrap_or(usize::MAX);
        let records = if rev {
            // The last `max` of the range, newest first.
            let from = from.max(to.saturating_sub(max.min(u64::MAX as usize) as u64));
            self.read_range(key, from, to, max, what, false).await.map(|mut r| {
                r.reverse();
                r
            })
        } else {
            self.read_range(key, from, to, max, what, false).await
        };
        match records {
            Ok(records) => entries_reply(records),
            Err(reply) => reply,
        }
    }

    /// Where a plain read of each stream starts (`None`: no stream of that name yet, which a
    /// blocking read waits for from its start).
    async fn read_starts(&self, streams: &[(Bytes, ReadFrom)]) -> Result<Vec<Option<u64>>, Reply> {
        let mut starts = Vec::with_capacity(streams.len());
        for (key, from) in streams {
            let Some(partition) = self.partition(key).await? else {
                starts.push(None);
                continue;
            };
            starts.push(Some(match from {
                ReadFrom::End | ReadFrom::Undelivered => partition.high_watermark,
                ReadFrom::After(id) => self.offset_after(key, *id, &partition).await?,
            }));
        }
        Ok(starts)
    }

    /// `XREAD [COUNT n] [BLOCK ms] STREAMS key ... id ...`: entries after each id; with
    /// `BLOCK`, waits (0: without end) until one stream has some, the time passes, or `gone`
    /// (the client left, the node stops).
    pub async fn xread(
        &self,
        count: Option<usize>,
        block: Option<u64>,
        streams: &[(Bytes, ReadFrom)],
        resp3: bool,
        mut gone: Gone<'_>,
    ) -> Reply {
        let starts = match self.read_starts(streams).await {
            Ok(starts) => starts,
            Err(reply) => return reply,
        };
        let max = count.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        let mut bytes = 0usize;
        for ((key, _), start) in streams.iter().zip(&starts) {
            let Some(start) = *start else { continue };
            match self.read_range(key, start, u64::MAX, max, "XREAD", false).await {
                Ok(records) if records.is_empty() => {}
                Ok(records) => {
                    bytes += records.iter().map(record_bytes).sum::<usize>();
                    if bytes > REPLY_BYTES_MAX {
                        return too_large("XREAD");
                    }
                    found.push((key.clone(), entries_reply(records)));
                }
                Err(reply) => return reply,
            }
        }
        if !found.is_empty() {
            return streams_reply(found, resp3);
        }
        let Some(block_ms) = block else {
            return Reply::NullArray;
        };
        let deadline = (block_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(block_ms));
        // Where each stream is waited at: a stream created meanwhile is read from its start,
        // keeping only entries after the id asked for.
        let mut positions: Vec<Position> = streams
            .iter()
            .zip(&starts)
            .map(|((key, from), start)| Position {
                key: key.clone(),
                offset: start.unwrap_or(0),
                after: match from {
                    ReadFrom::After(id) => Some(*id),
                    ReadFrom::End | ReadFrom::Undelivered => None,
                },
            })
            .collect();
        let wait = self.wait_for_records(&mut positions, max.min(10_000), deadline);
        tokio::select! {
            woken = wait => match woken {
                Ok(Some((key, records))) => streams_reply(vec![(key, entries_reply(records))], resp3),
                Ok(None) => Reply::NullArray,
                Err(reply) => reply,
            },
            () = &mut gone => Reply::NullArray,
        }
    }

    /// Long-polls every position at once until one has records after its `after` id
    /// (answering them), or `deadline` passes (`None`). Each position is polled again as soon as
    /// its poll ends empty; a position retention passed, or of a stream deleted and created
    /// again, goes on from the oldest record kept (its `after` id keeps older ones out); a
    /// stream not created yet is looked at again after a pause.
    async fn wait_for_records(
        &self,
        positions: &mut [Position],
        max: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<(Bytes, Vec<FetchedRecord>)>, Reply> {
        let mut polls = JoinSet::new();
        for at in 0..positions.len() {
            if !self.poll(&mut polls, positions, at, max, deadline, Duration::ZERO) {
                return Ok(None);
            }
        }
        while let Some(joined) = polls.join_next().await {
            let Ok((at, fetched)) = joined else { continue };
            let mut pause = Duration::ZERO;
            match fetched {
                Ok(fetched) => {
                    let position = &mut positions[at];
                    if let Some(last) = fetched.records.last() {
                        position.offset = last.offset + 1;
                    }
                    let after = position.after;
                    let records: Vec<FetchedRecord> = fetched
                        .records
                        .into_iter()
                        .filter(|r| after.is_none_or(|after| id_of(r) > after))
                        .collect();
                    if !records.is_empty() {
                        return Ok(Some((position.key.clone(), records)));
                    }
                }
                Err(e) if is_code(&e, ErrorCode::OffsetOutOfRange) => {
                    let log_start = self.partition(&positions[at].key).await?.map(|p| p.log_start);
                    match log_start {
                        Some(log_start) if log_start != positions[at].offset => positions[at].offset = log_start,
                        // Nothing moved (a replica behind): look again after a pause.
                        _ => pause = Duration::from_millis(STREAM_ABSENT_POLL_MS),
                    }
                }
                Err(e) if is_code(&e, ErrorCode::NotFound) => pause = Duration::from_millis(STREAM_ABSENT_POLL_MS),
                Err(e) => return Err(client_error(&e)),
            }
            self.poll(&mut polls, positions, at, max, deadline, pause);
        }
        Ok(None)
    }

    /// Starts the next long poll of `positions[at]` (after `pause`), unless `deadline` has
    /// passed (false).
    fn poll(
        &self,
        polls: &mut JoinSet<(usize, Result<basalt_client::Fetched, ClientError>)>,
        positions: &[Position],
        at: usize,
        max: usize,
        deadline: Option<tokio::time::Instant>,
        pause: Duration,
    ) -> bool {
        let round = Duration::from_millis(STREAM_BLOCK_ROUND_MS);
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::MAX,
        };
        if left <= pause {
            return false;
        }
        let options = FetchOptions {
            max_records: max.max(1) as u32,
            wait: (left - pause).min(round),
            consistency: self.reads,
            ..FetchOptions::default()
        };
        let (client, key, offset) = (self.client.clone(), positions[at].key.clone(), positions[at].offset);
        polls.spawn(async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            (at, client.streams().fetch(key, 0, offset, options).await)
        });
        true
    }

    /// `XGROUP CREATE key group id|$ [MKSTREAM]`.
    pub async fn xgroup_create(&self, key: &[u8], group: &[u8], from: ReadFrom, create: bool) -> Reply {
        // Where the group starts is decided on the stream as it is now, not a replica's view.
        let this = self.linearizable();
        let partition = match this.partition(key).await {
            Ok(Some(p)) => p,
            Ok(None) if create => {
                if let Err(reply) = self.check_not_a_key(key).await {
                    return reply;
                }
                match self.create(key).await.and(Ok(())) {
                    Ok(()) => match this.partition(key).await {
                        Ok(Some(p)) => p,
                        Ok(None) => return Reply::error("ERR the stream was deleted while it was created"),
                        Err(reply) => return reply,
                    },
                    Err(reply) => return reply,
                }
            }
            Ok(None) => {
                return match self.check_not_a_key(key).await {
                    Ok(()) => Reply::error(XGROUP_NEEDS_KEY),
                    Err(reply) => reply,
                }
            }
            Err(reply) => return reply,
        };
        let state = match this.group_place(key, from, &partition).await {
            Ok(state) => state,
            Err(reply) => return reply,
        };
        // The group is written only while the stream is the one read: a DEL takes the mark
        // (a new revision) before it removes the groups.
        let mark = stream_row(key);
        let mark_condition = match self.client.kv().get(&mark).await {
            Ok(Some(entry)) => Condition::mod_revision(mark, Compare::Eq, entry.mod_revision),
            Ok(None) => Condition::absent(mark),
            Err(e) => return client_error(&e),
        };
        let row = group_row(key, group);
        match self
            .client
            .txn()
            .when(Condition::absent(row.clone()))
            .when(mark_condition)
            .then(TxnOp::put(row.clone(), state.encode()))
            .commit()
            .await
        {
            Ok(TxnOutcome::Committed { succeeded: true, .. }) => Reply::ok(),
            Ok(TxnOutcome::Committed { .. }) => match self.client.kv().get(&row).await {
                Ok(Some(_)) => Reply::error("BUSYGROUP Consumer Group name already exists"),
                Ok(None) => Reply::error("ERR the stream was deleted or created again meanwhile; try again"),
                Err(e) => client_error(&e),
            },
            Ok(TxnOutcome::Aborted { reason, .. }) => op_refusal(reason),
            Err(e) => client_error(&e),
        }
    }

    /// Where a group set at `from` (`$`: the end, as if it had delivered the last entry, whose
    /// id it keeps as Redis does; an id: after it) delivers next.
    async fn group_place(&self, key: &[u8], from: ReadFrom, partition: &PartitionInfo) -> Result<GroupState, Reply> {
        Ok(match from {
            ReadFrom::End | ReadFrom::Undelivered => GroupState {
                next_offset: partition.high_watermark,
                last_delivered: self
                    .last_entry(key, partition)
                    .await?
                    .as_ref()
                    .map_or(StreamId::MIN, id_of),
            },
            ReadFrom::After(id) => GroupState {
                next_offset: self.offset_after(key, id, partition).await?,
                last_delivered: id,
            },
        })
    }

    /// The stream's last entry, if retention kept it.
    async fn last_entry(&self, key: &[u8], partition: &PartitionInfo) -> Result<Option<FetchedRecord>, Reply> {
        let end = partition.high_watermark;
        match end.checked_sub(1) {
            Some(at) if at >= partition.log_start => Ok(self
                .read_range(key, at, end, 1, "XINFO", true)
                .await?
                .into_iter()
                .next()),
            _ => Ok(None),
        }
    }

    /// The stream's partition, or the reply for a name that is no stream: `absent` when no key
    /// has it, `WRONGTYPE` when a KV key does.
    async fn existing(&self, key: &[u8], absent: &str) -> Result<PartitionInfo, Reply> {
        match self.partition(key).await? {
            Some(partition) => Ok(partition),
            None => {
                self.check_not_a_key(key).await?;
                Err(Reply::error(absent))
            }
        }
    }

    /// `XGROUP SETID key group id|$`: the group delivers next what follows `id` (`$`: what is
    /// added from now on), whatever it delivered before; its pending entries stay pending. The
    /// place is decided on the stream as read after the group's row, and written only while the
    /// row and the stream are as read: a delivery that moved the group meanwhile (which a `$`
    /// read before it would undo, delivering its entries again), a group destroyed, or the
    /// stream deleted meanwhile make it read again.
    pub async fn xgroup_setid(&self, key: &[u8], group: &[u8], from: ReadFrom) -> Reply {
        let this = self.linearizable();
        let row = group_row(key, group);
        let mark = stream_row(key);
        for _ in 0..CAS_ATTEMPTS_MAX {
            let revision = match this.group_state(key, group).await {
                Ok(Some((_, revision))) => revision,
                Ok(None) => {
                    return match this.existing(key, XGROUP_NEEDS_KEY).await {
                        Ok(_) => no_such_group(key, group),
                        Err(reply) => reply,
                    }
                }
                Err(reply) => return reply,
            };
            let partition = match this.existing(key, XGROUP_NEEDS_KEY).await {
                Ok(partition) => partition,
                Err(reply) => return reply,
            };
            let state = match this.group_place(key, from, &partition).await {
                Ok(state) => state,
                Err(reply) => return reply,
            };
            let mark_condition = match self.client.kv().get(&mark).await {
                Ok(Some(entry)) => Condition::mod_revision(mark.clone(), Compare::Eq, entry.mod_revision),
                Ok(None) => Condition::absent(mark.clone()),
                Err(e) => return client_error(&e),
            };
            match self
                .client
                .txn()
                .when(Condition::mod_revision(row.clone(), Compare::Eq, revision))
                .when(mark_condition)
                .then(TxnOp::put(row.clone(), state.encode()))
                .commit()
                .await
            {
                Ok(TxnOutcome::Committed { succeeded: true, .. }) => return Reply::ok(),
                Ok(TxnOutcome::Committed { .. }) => continue,
                Ok(TxnOutcome::Aborted { reason, .. }) => return op_refusal(reason),
                Err(e) => return client_error(&e),
            }
        }
        Reply::error("TRYAGAIN the consumer group's place kept changing under XGROUP SETID")
    }

    /// `XGROUP DELCONSUMER key group consumer`: the consumer's pending entries are dropped (as
    /// if acknowledged); how many there were. A consumer exists only as the owner of pending
    /// entries, so one with none answers 0. Each row is deleted only while it is still the
    /// consumer's as read (an `XCLAIM` meanwhile gives it to another, which keeps it): a part
    /// whose transaction finds a row changed reads its rows again and deletes those still the
    /// consumer's. Parts already deleted stay deleted if a later one fails.
    pub async fn xgroup_delconsumer(&self, key: &[u8], group: &[u8], consumer: &[u8]) -> Reply {
        let this = self.linearizable();
        if let Err(reply) = this.existing(key, XGROUP_NEEDS_KEY).await {
            return reply;
        }
        match this.group_state(key, group).await {
            Ok(Some(_)) => {}
            Ok(None) => return no_such_group(key, group),
            Err(reply) => return reply,
        }
        let mut rows: Vec<(Bytes, Bytes)> = Vec::new();
        let scanned = this
            .scan_pending_rows(key, group, 0, |_, pending, row, value| {
                if pending.consumer == consumer {
                    rows.push((row.to_vec(), value.to_vec()));
                }
                true
            })
            .await;
        if let Err(reply) = scanned {
            return reply;
        }
        let mut deleted = 0i64;
        for part in rows.chunks(TXN_CONDITIONS_MAX.min(TXN_OPS_MAX)) {
            match this.delete_owned(part.to_vec(), consumer).await {
                Ok(n) => deleted += n,
                Err(reply) => return reply,
            }
        }
        Reply::Integer(deleted)
    }

    /// Deletes `rows` (pending rows with their values as read) in one transaction conditioned
    /// on each value; when one changed, reads them again and retries with those still
    /// `consumer`'s. How many were deleted.
    async fn delete_owned(&self, mut rows: Vec<(Bytes, Bytes)>, consumer: &[u8]) -> Result<i64, Reply> {
        for _ in 0..CAS_ATTEMPTS_MAX {
            if rows.is_empty() {
                return Ok(0);
            }
            let mut txn = self.client.txn();
            for (row, value) in &rows {
                txn = txn
                    .when(Condition::value(row.clone(), Compare::Eq, value.clone()))
                    .then(TxnOp::delete(row.clone()));
            }
            match txn.commit().await {
                Ok(TxnOutcome::Committed { succeeded: true, .. }) => return Ok(rows.len() as i64),
                Ok(TxnOutcome::Committed { .. }) => {}
                Ok(TxnOutcome::Aborted { reason, .. }) => return Err(op_refusal(reason)),
                Err(e) => return Err(client_error(&e)),
            }
            let keys: Vec<&Bytes> = rows.iter().map(|(row, _)| row).collect();
            let now = self
                .client
                .kv()
                .get_many(&keys, ReadConsistency::Linearizable)
                .await
                .map_err(|e| client_error(&e))?;
            rows = rows
                .iter()
                .zip(now)
                .filter_map(|((row, _), entry)| {
                    let entry = entry?;
                    let pending = Pending::decode(&entry.value)?;
                    (pending.consumer == consumer).then(|| (row.clone(), entry.value))
                })
                .collect();
        }
        Err(Reply::error(
            "TRYAGAIN the consumer's pending entries kept changing under XGROUP DELCONSUMER",
        ))
    }

    /// `XINFO STREAM | GROUPS | CONSUMERS`.
    pub async fn xinfo(&self, info: XInfo) -> Reply {
        let result = match info {
            XInfo::Stream(key) => self.xinfo_stream(&key).await,
            XInfo::Groups(key) => self.xinfo_groups(&key).await,
            XInfo::Consumers(key, group) => self.xinfo_consumers(&key, &group).await,
        };
        result.unwrap_or_else(|reply| reply)
    }

    /// `XINFO STREAM key`: its length, first and last entries, groups, and the ids Redis
    /// reports. Entries leave a stream only from its start (retention), never one by one, so
    /// `max-deleted-entry-id` is `0-0`; `entries-added` counts every entry ever added (the next
    /// offset). Redis's radix-tree counts describe its own memory layout and are not reported.
    async fn xinfo_stream(&self, key: &[u8]) -> Result<Reply, Reply> {
        let partition = self.existing(key, "ERR no such key").await?;
        let (start, end) = (partition.log_start, partition.high_watermark);
        let first = self
            .read_range(key, start, end, 1, "XINFO STREAM", true)
            .await?
            .into_iter()
            .next();
        let last = self.last_entry(key, &partition).await?;
        let groups = self.count_groups(key).await?;
        let id = |record: &Option<FetchedRecord>| Reply::Bulk(record.as_ref().map_or(StreamId::MIN, id_of).bulk());
        let entry = |record: Option<FetchedRecord>| record.map_or(Reply::Null, entry_reply);
        Ok(Reply::Map(vec![
            (
                Reply::bulk("length"),
                Reply::Integer(end.saturating_sub(start).min(i64::MAX as u64) as i64),
            ),
            (Reply::bulk("last-generated-id"), id(&last)),
            (Reply::bulk("max-deleted-entry-id"), Reply::Bulk(StreamId::MIN.bulk())),
            (
                Reply::bulk("entries-added"),
                Reply::Integer(end.min(i64::MAX as u64) as i64),
            ),
            (Reply::bulk("recorded-first-entry-id"), id(&first)),
            (
                Reply::bulk("groups"),
                Reply::Integer(groups.min(i64::MAX as u64) as i64),
            ),
            (Reply::bulk("first-entry"), entry(first)),
            (Reply::bulk("last-entry"), entry(last)),
        ]))
    }

    /// How many groups the stream has.
    async fn count_groups(&self, key: &[u8]) -> Result<u64, Reply> {
        let prefix = group_rows_of(key);
        let mut groups = 0u64;
        self.scan_rows(&prefix, prefix.clone(), |_, _| {
            groups += 1;
            Ok(true)
        })
        .await?;
        Ok(groups)
    }

    /// The stream's groups and their states, in name order; at most [`XINFO_GROUPS_MAX`].
    async fn groups_of(&self, key: &[u8]) -> Result<Vec<(Bytes, GroupState)>, Reply> {
        let prefix = group_rows_of(key);
        let mut groups = Vec::new();
        self.scan_rows(&prefix, prefix.clone(), |row, value| {
            if let (Some(name), Some(state)) = (group_name(row, &prefix), GroupState::decode(value)) {
                groups.push((name, state));
            }
            if groups.len() > XINFO_GROUPS_MAX {
                return Err(Reply::error(format!(
                    "ERR the stream has more than {XINFO_GROUPS_MAX} consumer groups, more than XINFO GROUPS lists"
                )));
            }
            Ok(true)
        })
        .await?;
        // Rows sort shorter names first; Redis lists groups in name order.
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(groups)
    }

    /// Visits the KV rows under `prefix` after `start_after`, in key order, page by page with
    /// these commands' read consistency, while `visit` answers true (or until its error).
    async fn scan_rows(
        &self,
        prefix: &[u8],
        mut start_after: Vec<u8>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, Reply>,
    ) -> Result<(), Reply> {
        loop {
            let page = self
                .client
                .kv()
                .scan_page(prefix, &start_after, 1000, self.reads)
                .await
                .map_err(|e| client_error(&e))?;
            for (row, value) in &page.items {
                if !visit(row, value)? {
                    return Ok(());
                }
            }
            match page.items.last() {
                Some((row, _)) if page.more => start_after = row.clone(),
                _ => return Ok(()),
            }
        }
    }

    /// `XINFO GROUPS key`: each group's name, consumers (those with pending entries), pending
    /// count, last delivered id, entries read (its next offset: entries are numbered from the
    /// stream's first) and lag (the entries still kept that it has not delivered).
    async fn xinfo_groups(&self, key: &[u8]) -> Result<Reply, Reply> {
        let partition = self.existing(key, "ERR no such key").await?;
        let mut replies = Vec::new();
        // One budget of pending rows for every group, as for one group's scan.
        let mut passed = 0usize;
        for (name, state) in self.groups_of(key).await? {
            let mut pending = 0i64;
            let mut consumers = std::collections::BTreeSet::new();
            self.scan_pending_rows(key, &name, 0, |_, entry, _, _| {
                pending += 1;
                consumers.insert(entry.consumer);
                passed += 1;
                passed <= PENDING_SCAN_ROWS_MAX
            })
            .await?;
            if passed > PENDING_SCAN_ROWS_MAX {
                return Err(Reply::error(format!(
                    "ERR the stream's groups have more than {PENDING_SCAN_ROWS_MAX} pending entries, more than XINFO GROUPS counts"
                )));
            }
            let lag = partition
                .high_watermark
                .saturating_sub(state.next_offset.max(partition.log_start));
            replies.push(Reply::Map(vec![
                (Reply::bulk("name"), Reply::Bulk(name)),
                (Reply::bulk("consumers"), Reply::Integer(consumers.len() as i64)),
                (Reply::bulk("pending"), Reply::Integer(pending)),
                (
                    Reply::bulk("last-delivered-id"),
                    Reply::Bulk(state.last_delivered.bulk()),
                ),
                (
                    Reply::bulk("entries-read"),
                    Reply::Integer(state.next_offset.min(i64::MAX as u64) as i64),
                ),
                (Reply::bulk("lag"), Reply::Integer(lag.min(i64::MAX as u64) as i64)),
            ]));
        }
        Ok(Reply::Array(replies))
    }

    /// `XINFO CONSUMERS key group`: each consumer with pending entries (a consumer exists only
    /// as their owner), its pending count, and the time since its latest delivery or claim as
    /// both `idle` and `inactive`.
    async fn xinfo_consumers(&self, key: &[u8], group: &[u8]) -> Result<Reply, Reply> {
        self.existing(key, "ERR no such key").await?;
        if self.group_state(key, group).await?.is_none() {
            return Err(no_such_group(key, group));
        }
        let now = now_ms().max(0) as u64;
        let mut consumers: std::collections::BTreeMap<Bytes, (i64, u64)> = std::collections::BTreeMap::new();
        self.scan_pending_rows(key, group, 0, |_, entry, _, _| {
            let (count, latest) = consumers.entry(entry.consumer).or_default();
            *count += 1;
            *latest = (*latest).max(entry.delivered_ms);
            true
        })
        .await?;
        Ok(Reply::Array(
            consumers
                .into_iter()
                .map(|(name, (pending, latest))| {
                    let idle = now.saturating_sub(latest).min(i64::MAX as u64) as i64;
                    Reply::Map(vec![
                        (Reply::bulk("name"), Reply::Bulk(name)),
                        (Reply::bulk("pending"), Reply::Integer(pending)),
                        (Reply::bulk("idle"), Reply::Integer(idle)),
                        (Reply::bulk("inactive"), Reply::Integer(idle)),
                    ])
                })
                .collect(),
        ))
    }

    /// `XGROUP DESTROY key group`: the group and its pending entries; 1 if it existed.
    pub async fn xgroup_destroy(&self, key: &[u8], group: &[u8]) -> Reply {
        match self.partition(key).await {
            Ok(Some(_)) => {}
            Ok(None) => return Reply::error(XGROUP_NEEDS_KEY),
            Err(reply) => return reply,
        }
        let existed = match self.client.kv().delete(group_row(key, group)).await {
            Ok(outcome) => outcome.deleted,
            Err(e) => return client_error(&e),
        };
        match self.delete_rows(&pending_rows(key, group)).await {
            Ok(_) => Reply::Integer(i64::from(existed)),
            Err(reply) => reply,
        }
    }

    /// `XACK key group id ...`: how many of the ids were pending (and are not any more).
    pub async fn xack(&self, key: &[u8], group: &[u8], ids: &[StreamId]) -> Reply {
        let mut acked = 0;
        // An id named twice is acknowledged once (a transaction writes a row once).
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<StreamId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        // One transaction per part: each ack stands on its own, as in Redis.
        for part in ids.chunks(TXN_OPS_MAX) {
            let mut txn = self.client.txn();
            for id in part {
                txn = txn.then(TxnOp::delete(pending_row(key, group, *id)));
            }
            match txn.commit().await {
                Ok(TxnOutcome::Committed { results, .. }) => {
                    acked += results
                        .iter()
                        .filter(|r| matches!(r, TxnOpResult::Deleted { deleted: true, .. }))
                        .count() as i64;
                }
                Ok(TxnOutcome::Aborted { reason, .. }) => return op_refusal(reason),
                Err(e) => return client_error(&e),
            }
        }
        Reply::Integer(acked)
    }

    /// `XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS key ... id ...`.
    /// `>` delivers entries the group never delivered (at most [`STREAM_CLAIM_ENTRIES_MAX`] per
    /// stream and call), recording each as pending for `consumer` unless `NOACK`; an id reads
    /// back the consumer's own pending entries after it.
    #[allow(clippy::too_many_arguments)]
    pub async fn xreadgroup(
        &self,
        group: &[u8],
        consumer: &[u8],
        count: Option<usize>,
        block: Option<u64>,
        no_ack: bool,
        streams: &[(Bytes, ReadFrom)],
        resp3: bool,
        mut gone: Gone<'_>,
    ) -> Reply {
        let max = count.unwrap_or(usize::MAX);
        // Every group must exist before anything is delivered.
        for (key, _) in streams {
            if let Err(reply) = self.require_group(key, group, "XREADGROUP with GROUP option").await {
                return reply;
            }
        }
        let mut found = Vec::new();
        let mut any_new = false;
        for (key, from) in streams {
            let entries = match from {
                ReadFrom::After(id) => self.pending_of(key, group, consumer, *id, max).await,
                ReadFrom::Undelivered | ReadFrom::End => {
                    match self.linearizable().claim(key, group, consumer, max, no_ack).await {
                        Ok(records) if records.is_empty() => continue,
                        Ok(records) => {
                            any_new = true;
                            Ok(entries_reply(records))
                        }
                        Err(reply) => Err(reply),
                    }
                }
            };
            match entries {
                Ok(entries) => found.push((key.clone(), entries)),
                Err(reply) => return reply,
            }
        }
        let only_new = streams.iter().all(|(_, from)| !matches!(from, ReadFrom::After(_)));
        if !found.is_empty() || !only_new {
            return streams_reply(found, resp3);
        }
        let Some(block_ms) = block else {
            return Reply::NullArray;
        };
        debug_assert!(!any_new);
        let deadline = (block_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(block_ms));
        loop {
            // Wait for records past each group's place, then claim them (another consumer of
            // the group may claim them first: then wait again).
            let mut positions = Vec::with_capacity(streams.len());
            for (key, _) in streams {
                let state = match self.group_state(key, group).await {
                    Ok(Some((state, _))) => state,
                    Ok(None) => return no_group(key, group, "XREADGROUP with GROUP option"),
                    Err(reply) => return reply,
                };
                // Entries retention removed are passed.
                let log_start = match self.partition(key).await {
                    Ok(partition) => partition.map_or(0, |p| p.log_start),
                    Err(reply) => return reply,
                };
                positions.push(Position {
                    key: key.clone(),
                    offset: state.next_offset.max(log_start),
                    after: None,
                });
            }
            let woken = tokio::select! {
                woken = self.wait_for_records(&mut positions, 1, deadline) => woken,
                () = &mut gone => return Reply::NullArray,
            };
            match woken {
                Ok(Some((key, _))) => match self.linearizable().claim(&key, group, consumer, max, no_ack).await {
                    Ok(records) if records.is_empty() => continue,
                    Ok(records) => return streams_reply(vec![(key, entries_reply(records))], resp3),
                    Err(reply) => return reply,
                },
                Ok(None) => return Reply::NullArray,
                Err(reply) => return reply,
            }
        }
    }

    /// The group's state and its row's revision.
    async fn group_state(&self, key: &[u8], group: &[u8]) -> Result<Option<(GroupState, u64)>, Reply> {
        match self.client.kv().get(group_row(key, group)).await {
            Ok(Some(entry)) => match GroupState::decode(&entry.value) {
                Some(state) => Ok(Some((state, entry.mod_revision))),
                None => Err(Reply::error("ERR a consumer group's row does not decode")),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// Delivers up to `max` entries the group never delivered to `consumer`: reads them from
    /// the group's place, then moves the place past them and records them as pending in one
    /// transaction conditioned on the group's row being as read (a consumer that lost the race
    /// reads again).
    async fn claim(
        &self,
        key: &[u8],
        group: &[u8],
        consumer: &[u8],
        max: usize,
        no_ack: bool,
    ) -> Result<Vec<FetchedRecord>, Reply> {
        let max = max.min(STREAM_CLAIM_ENTRIES_MAX);
        for _ in 0..CAS_ATTEMPTS_MAX {
            let Some((state, revision)) = self.group_state(key, group).await? else {
                return Err(no_group(key, group, "XREADGROUP with GROUP option"));
            };
            let Some(partition) = self.partition(key).await? else {
                return Ok(Vec::new());
            };
            let from = state.next_offset.max(partition.log_start);
            if state.next_offset > partition.high_watermark {
                // The group outlived its stream (a DEL cut short, then the name created again).
                return Err(no_group(key, group, "XREADGROUP with GROUP option"));
            }
            let records = self
                .read_range(key, from, partition.high_watermark, max, "XREADGROUP", true)
                .await?;
            let Some(last) = records.last() else {
                return Ok(records);
            };
            let moved = GroupState {
                next_offset: last.offset + 1,
                last_delivered: StreamId {
                    ms: last.timestamp_ms,
                    seq: last.offset,
                },
            };
            let row = group_row(key, group);
            let mut txn = self
                .client
                .txn()
                .when(Condition::mod_revision(row.clone(), Compare::Eq, revision))
                .then(TxnOp::put_keep_ttl(row, moved.encode()));
            if !no_ack {
                let now = now_ms().max(0) as u64;
                for record in &records {
                    let id = StreamId {
                        ms: record.timestamp_ms,
                        seq: record.offset,
                    };
                    let pending = Pending {
                        consumer: consumer.to_vec(),
                        delivered_ms: now,
                        deliveries: 1,
                    };
                    txn = txn.then(TxnOp::put(pending_row(key, group, id), pending.encode()));
                }
            }
            match txn.commit().await {
                Ok(TxnOutcome::Committed { succeeded: true, .. }) => return Ok(records),
                Ok(TxnOutcome::Committed { .. }) => continue,
                Ok(TxnOutcome::Aborted { reason, .. }) => return Err(op_refusal(reason)),
                Err(e) => return Err(client_error(&e)),
            }
        }
        Err(Reply::error(
            "TRYAGAIN the consumer group's place kept changing under this read",
        ))
    }

    /// Where the pending rows of ids at or after `id` begin: the first offset whose id is at or
    /// after it (rows sort by offset; ids grow with offsets), or 0 when that is not known
    /// better (an id of 0 ms, or before the oldest record kept).
    async fn rows_start(&self, key: &[u8], id: StreamId) -> Result<u64, Reply> {
        if id == StreamId::MIN {
            return Ok(0);
        }
        let Some(partition) = self.partition(key).await? else {
            return Ok(0);
        };
        let offset = self.first_offset(key, id, &partition).await?;
        Ok(if offset <= partition.log_start { 0 } else { offset })
    }

    /// Visits `group`'s pending rows from offset `from` on, in id order, while `visit` answers
    /// true; at most [`PENDING_SCAN_ROWS_MAX`] rows.
    async fn scan_pending(
        &self,
        key: &[u8],
        group: &[u8],
        from: u64,
        mut visit: impl FnMut(StreamId, Pending) -> bool,
    ) -> Result<(), Reply> {
        self.linearizable()
            .scan_pending_rows(key, group, from, |id, pending, _, _| visit(id, pending))
            .await
    }

    /// [`Streams::scan_pending`] with these commands' read consistency, giving each row's key
    /// and stored value too.
    async fn scan_pending_rows(
        &self,
        key: &[u8],
        group: &[u8],
        from: u64,
        mut visit: impl FnMut(StreamId, Pending, &[u8], &[u8]) -> bool,
    ) -> Result<(), Reply> {
        let prefix = pending_rows(key, group);
        let mut passed = 0usize;
        self.scan_rows(&prefix, pending_rows_from(key, group, from), |row, value| {
            passed += 1;
            if passed > PENDING_SCAN_ROWS_MAX {
                return Err(Reply::error(format!(
                    "ERR more than {PENDING_SCAN_ROWS_MAX} pending entries of the group to pass; acknowledge entries (or, reading them back, start from a later id)"
                )));
            }
            Ok(match (pending_id(row, &prefix), Pending::decode(value)) {
                (Some(id), Some(pending)) => visit(id, pending, row, value),
                _ => true,
            })
        })
        .await
    }

    /// `NOGROUP` unless the group exists (`WRONGTYPE` when a KV key has the name).
    async fn require_group(&self, key: &[u8], group: &[u8], command: &str) -> Result<(), Reply> {
        match self.client.kv().get(group_row(key, group)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.check_not_a_key(key).await?;
                Err(no_group(key, group, command))
            }
            Err(e) => Err(client_error(&e)),
        }
    }

    /// These commands with linearizable reads, whatever the connection's: for what decides a
    /// write (a claim, a pending row's removal).
    fn linearizable(&self) -> Streams<'_> {
        Streams {
            client: self.client,
            appender: self.appender,
            reads: ReadConsistency::Linearizable,
        }
    }

    /// `XPENDING key group`: how many entries are pending, the lowest and highest id, and the
    /// count per consumer; with a query, the pending entries in its range (each with its
    /// consumer, idle time and delivery count).
    pub async fn xpending(&self, key: &[u8], group: &[u8], query: Option<PendingQuery>) -> Reply {
        if let Err(reply) = self.require_group(key, group, "").await {
            return reply;
        }
        let now = now_ms().max(0) as u64;
        let Some(query) = query else {
            let mut count = 0i64;
            let (mut lowest, mut highest) = (None, None);
            let mut consumers: std::collections::BTreeMap<Bytes, u64> = std::collections::BTreeMap::new();
            let scanned = self
                .scan_pending(key, group, 0, |id, pending| {
                    count += 1;
                    lowest = lowest.or(Some(id));
                    highest = Some(id);
                    *consumers.entry(pending.consumer).or_default() += 1;
                    true
                })
                .await;
            if let Err(reply) = scanned {
                return reply;
            }
            let (Some(lowest), Some(highest)) = (lowest, highest) else {
                return Reply::Array(vec![Reply::Integer(0), Reply::Null, Reply::Null, Reply::NullArray]);
            };
            return Reply::Array(vec![
                Reply::Integer(count),
                Reply::Bulk(lowest.bulk()),
                Reply::Bulk(highest.bulk()),
                Reply::Array(
                    consumers
                        .into_iter()
                        .map(|(consumer, n)| Reply::Array(vec![Reply::Bulk(consumer), Reply::bulk(n.to_string())]))
                        .collect(),
                ),
            ]);
        };
        let (RangeEnd::From(low), RangeEnd::To(high)) = (query.start, query.end) else {
            return Reply::Array(Vec::new());
        };
        if query.count == 0 || low > high {
            return Reply::Array(Vec::new());
        }
        let from = match self.rows_start(key, low).await {
            Ok(from) => from,
            Err(reply) => return reply,
        };
        let mut found = Vec::new();
        let scanned = self
            .scan_pending(key, group, from, |id, pending| {
                if id > high {
                    return false;
                }
                let idle = now.saturating_sub(pending.delivered_ms);
                let wanted = id >= low
                    && idle >= query.min_idle_ms
                    && query.consumer.as_ref().is_none_or(|c| *c == pending.consumer);
                if wanted {
                    found.push(Reply::Array(vec![
                        Reply::Bulk(id.bulk()),
                        Reply::Bulk(pending.consumer),
                        Reply::Integer(idle.min(i64::MAX as u64) as i64),
                        Reply::Integer(pending.deliveries.min(i64::MAX as u64) as i64),
                    ]));
                }
                found.len() < query.count
            })
            .await;
        match scanned {
            Ok(()) => Reply::Array(found),
            Err(reply) => reply,
        }
    }

    /// `XCLAIM`: the pending entries among `ids` idle at least `min_idle_ms` (with `FORCE`,
    /// entries not pending too) become `consumer`'s.
    pub async fn xclaim(
        &self,
        key: &[u8],
        group: &[u8],
        consumer: &[u8],
        min_idle_ms: u64,
        ids: &[StreamId],
        options: &ClaimOptions,
    ) -> Reply {
        if let Err(reply) = self.require_group(key, group, "").await {
            return reply;
        }
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<StreamId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        match self
            .claim_pending(key, group, consumer, min_idle_ms, &ids, options, false)
            .await
        {
            Ok((claimed, _)) => claimed_reply(claimed, options.just_id),
            Err(reply) => reply,
        }
    }

    /// `XAUTOCLAIM`: from `start`, looks at up to ten times `count` pending entries and claims
    /// up to `count` idle at least `min_idle_ms`; answers where to go on (`0-0`: the end), the
    /// claimed entries, and the ids whose entries no longer exist (removed from the pending
    /// list).
    #[allow(clippy::too_many_arguments)]
    pub async fn xautoclaim(
        &self,
        key: &[u8],
        group: &[u8],
        consumer: &[u8],
        min_idle_ms: u64,
        start: StreamId,
        count: usize,
        just_id: bool,
    ) -> Reply {
        if let Err(reply) = self.require_group(key, group, "").await {
            return reply;
        }
        let count = count.min(STREAM_CLAIM_ENTRIES_MAX);
        let from = match self.rows_start(key, start).await {
            Ok(from) => from,
            Err(reply) => return reply,
        };
        let now = now_ms().max(0) as u64;
        // Every row looked at is a candidate (one whose entry is gone is removed, idle or
        // not, as in Redis); up to `count` idle ones are claimed.
        let (mut candidates, mut idle, mut next) = (Vec::new(), 0usize, None);
        let scanned = self
            .scan_pending(key, group, from, |id, pending| {
                if id < start {
                    return true;
                }
                if candidates.len() >= count.saturating_mul(10) || idle >= count {
                    next = Some(id);
                    return false;
                }
                candidates.push(id);
                if now.saturating_sub(pending.delivered_ms) >= min_idle_ms {
                    idle += 1;
                }
                true
            })
            .await;
        if let Err(reply) = scanned {
            return reply;
        }
        let options = ClaimOptions {
            just_id,
            ..ClaimOptions::default()
        };
        match self
            .claim_pending(key, group, consumer, min_idle_ms, &candidates, &options, true)
            .await
        {
            Ok((claimed, gone)) => Reply::Array(vec![
                Reply::Bulk(next.unwrap_or(StreamId::MIN).bulk()),
                claimed_reply(claimed, just_id),
                Reply::Array(gone.into_iter().map(|id| Reply::Bulk(id.bulk())).collect()),
            ]),
            Err(reply) => reply,
        }
    }

    /// Claims the pending entries among `ids` (in order) idle at least `min_idle_ms` for
    /// `consumer`: each claim rewrites the entry's row conditioned on the revision read (a
    /// concurrent claim of it wins or loses whole; a loser reads again) and on the group still
    /// existing, in transactions of up to [`TXN_CONDITIONS_MAX`] conditions. A row whose entry
    /// no longer exists (read linearizably: below the oldest record kept, or of a stream
    /// created again) is deleted instead, idle or not with `remove_gone`. Answers the claimed
    /// entries (with their records) and the ids deleted. Stops early, answering what it
    /// claimed, when the next part would pass [`REPLY_BYTES_MAX`] or fails after a part
    /// committed (the rest stay pending where they were).
    #[allow(clippy::too_many_arguments)]
    async fn claim_pending(
        &self,
        key: &[u8],
        group: &[u8],
        consumer: &[u8],
        min_idle_ms: u64,
        ids: &[StreamId],
        options: &ClaimOptions,
        remove_gone: bool,
    ) -> Result<(Vec<FetchedRecord>, Vec<StreamId>), Reply> {
        let (mut claimed, mut gone) = (Vec::new(), Vec::new());
        let mut claimed_bytes = 0usize;
        let group_key = group_row(key, group);
        for part in ids.chunks(TXN_CONDITIONS_MAX - 1) {
            let mut attempt = 0;
            let outcome: Result<(), Reply> = loop {
                attempt += 1;
                if attempt > CAS_ATTEMPTS_MAX {
                    break Err(Reply::error(
                        "TRYAGAIN the pending entries kept changing under this claim",
                    ));
                }
                let rows: Vec<Vec<u8>> = part.iter().map(|id| pending_row(key, group, *id)).collect();
                let mut entries = Vec::with_capacity(rows.len());
                for group_of_rows in rows.chunks(GET_MANY_KEYS_MAX) {
                    match self
                        .client
                        .kv()
                        .get_many(group_of_rows, ReadConsistency::Linearizable)
                        .await
                    {
                        Ok(read) => entries.extend(read),
                        Err(e) => return Err(client_error(&e)),
                    }
                }
                let now = now_ms().max(0) as u64;
                // Each row to look at: idle long enough to claim; or (`remove_gone`) any, to
                // remove if its entry is gone; or, with FORCE, an entry not pending.
                let mut chosen: Vec<(StreamId, &Vec<u8>, Option<Read>, bool)> = Vec::new();
                for ((id, row), entry) in part.iter().zip(&rows).zip(&entries) {
                    match entry {
                        Some(entry) => {
                            let Some(pending) = Pending::decode(&entry.value) else {
                                continue;
                            };
                            let idle = now.saturating_sub(pending.delivered_ms) >= min_idle_ms;
                            if idle || remove_gone {
                                chosen.push((*id, row, Some((pending, entry.mod_revision)), idle));
                            }
                        }
                        None if options.force => chosen.push((*id, row, None, true)),
                        None => {}
                    }
                }
                if chosen.is_empty() {
                    break Ok(());
                }
                let linear = self.linearizable();
                let records = linear
                    .records_of(key, chosen.iter().map(|(id, _, _, _)| *id), "XCLAIM")
                    .await?;
                let mut txn = self.client.txn().when(Condition::exists(group_key.clone()));
                let (mut took, mut removed, mut bytes) = (Vec::new(), Vec::new(), 0usize);
                for ((id, row, before, claim), record) in chosen.into_iter().zip(records) {
                    let condition = match &before {
                        Some((_, revision)) => Condition::mod_revision(row.clone(), Compare::Eq, *revision),
                        None => Condition::absent(row.clone()),
                    };
                    match record {
                        Some(record) if claim => {
                            let pending = options.claimed(consumer, before.as_ref().map(|(p, _)| p), now);
                            txn = txn.when(condition).then(TxnOp::put(row.clone(), pending.encode()));
                            bytes += record_bytes(&record);
                            took.push(record);
                        }
                        // Still there and not idle: left alone.
                        Some(_) => {}
                        // The entry is gone: its row goes (a forced id of no entry is passed).
                        None if before.is_some() => {
                            txn = txn.when(condition).then(TxnOp::delete(row.clone()));
                            removed.push(id);
                        }
                        None => {}
                    }
                }
                if took.is_empty() && removed.is_empty() {
                    break Ok(());
                }
                if !claimed.is_empty() && claimed_bytes + bytes > REPLY_BYTES_MAX {
                    return Ok((claimed, gone));
                }
                match txn.commit().await {
                    Ok(TxnOutcome::Committed { succeeded: true, .. }) => {
                        claimed_bytes += bytes;
                        claimed.extend(took);
                        gone.extend(removed);
                        break Ok(());
                    }
                    Ok(TxnOutcome::Committed { .. }) => match self.client.kv().get(&group_key).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Err(no_group(key, group, "")),
                        Err(e) => break Err(client_error(&e)),
                    },
                    Ok(TxnOutcome::Aborted { reason, .. }) => break Err(op_refusal(reason)),
                    Err(e) => break Err(client_error(&e)),
                }
            };
            match outcome {
                Ok(()) => {}
                // What committed stands: answered, the rest left pending.
                Err(_) if !claimed.is_empty() || !gone.is_empty() => return Ok((claimed, gone)),
                Err(reply) => return Err(reply),
            }
        }
        Ok((claimed, gone))
    }

    /// The records of `ids` (in order), `None` for one that no longer exists (below the oldest
    /// record kept, or of a stream created again); read per run of consecutive offsets, page by
    /// page, within [`REPLY_BYTES_MAX`] per run (`what` names the command in that error).
    async fn records_of(
        &self,
        key: &[u8],
        ids: impl Iterator<Item = StreamId>,
        what: &str,
    ) -> Result<Vec<Option<FetchedRecord>>, Reply> {
        let ids: Vec<StreamId> = ids.collect();
        let mut out = Vec::with_capacity(ids.len());
        let mut at = 0;
        while at < ids.len() {
            let first = ids[at].seq;
            let run = ids[at..]
                .iter()
                .enumerate()
                .take_while(|(n, id)| first.checked_add(*n as u64) == Some(id.seq))
                .count();
            let records = self
                .read_range(key, first, first.saturating_add(run as u64), run, what, false)
                .await?;
            let mut by_offset: std::collections::HashMap<u64, FetchedRecord> =
                records.into_iter().map(|r| (r.offset, r)).collect();
            for id in &ids[at..at + run] {
                out.push(by_offset.remove(&id.seq).filter(|r| id_of(r) == *id));
            }
            at += run;
        }
        Ok(out)
    }

    /// The consumer's pending entries after `after`, at most `max`: each as `[id, fields]`, or
    /// `[id, nil]` when retention removed the entry.
    async fn pending_of(
        &self,
        key: &[u8],
        group: &[u8],
        consumer: &[u8],
        after: StreamId,
        max: usize,
    ) -> Result<Reply, Reply> {
        let Some(first) = after.next() else {
            return Ok(Reply::Array(Vec::new()));
        };
        let from = self.rows_start(key, first).await?;
        let wanted = max.min(STREAM_CLAIM_ENTRIES_MAX);
        let mut ids = Vec::new();
        self.scan_pending(key, group, from, |id, pending| {
            if id > after && pending.consumer == consumer {
                ids.push(id);
            }
            ids.len() < wanted
        })
        .await?;
        // The entries, read per run of consecutive offsets; one not found (removed, or of a
        // stream created again) answers nil.
        let records = self.records_of(key, ids.iter().copied(), "XREADGROUP").await?;
        let mut entries = Vec::with_capacity(ids.len());
        let mut bytes = 0usize;
        for (id, record) in ids.into_iter().zip(records) {
            match record {
                Some(record) => {
                    bytes += record_bytes(&record);
                    if bytes > REPLY_BYTES_MAX {
                        return Err(too_large("XREADGROUP"));
                    }
                    entries.push(entry_reply(record));
                }
                None => entries.push(Reply::Array(vec![Reply::Bulk(id.bulk()), Reply::NullArray])),
            }
        }
        Ok(Reply::Array(entries))
    }
}
