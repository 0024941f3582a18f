//! KV apply: put / delete with compare-and-set and TTL, expiry sweep.

use basalt_replication::Version;

use std::collections::HashSet;

use super::{check_batch, check_key, lossy, OpContext, RegionRole, View};
use crate::command::{Expect, KvError, KvOp, KvPart, KvWrite, OpError, Response};
use crate::limits::{BATCH_BYTES_MAX, TTL_MS_MAX, VALUE_BYTES_MAX};
use crate::state::{KeyRange, KvEvent, KvRecord, StoreError, StoreRead, Table};

/// Applies one KV op of entry `ctx.index`.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &KvOp,
) -> Result<Response, StoreError> {
    let OpContext { index, now_ms, .. } = ctx;
    let writer = Writer {
        stamp: ctx.stamp.0,
        region: ctx.region,
    };
    Ok(match op {
        KvOp::Put {
            key,
            value,
            ttl_ms,
            expect,
        } => put(view, index, now_ms, writer, key, value, Expiry::In(*ttl_ms), *expect)?,
        KvOp::PutKeepTtl { key, value, expect } => put(view, index, now_ms, writer, key, value, Expiry::Keep, *expect)?,
        KvOp::Delete { key, expect } => delete(view, index, now_ms, writer, key, *expect)?,
        KvOp::Batch { writes } => batch(view, index, now_ms, writer, writes)?,
        // `Applier::apply` takes merged entries apart; a part that is one again is refused there.
        KvOp::Merged { .. } => Response::Refused(OpError::Kv(KvError::NotMergeable { op: op.to_string() })),
        KvOp::SweepExpired { limit } => sweep_expired(view, index, now_ms, ctx.region, *limit)?,
        KvOp::Compact { below, limit } => compact(view, *below, *limit)?,
        KvOp::TombstoneGc {
            below,
            limit,
            topology_at,
        } => super::replication::collect_tombstones(view, *below, *limit, *topology_at)?,
        KvOp::Get { key } => super::txn::get(view, key, now_ms)?,
    })
}

pub(crate) fn validate_put(key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> Result<(), OpError> {
    check_key(key)?;
    if value.len() > VALUE_BYTES_MAX {
        return Err(OpError::ValueTooLarge {
            len: value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    if let Some(ttl_ms) = ttl_ms {
        if ttl_ms == 0 || ttl_ms > TTL_MS_MAX {
            return Err(OpError::InvalidTtl {
                ttl_ms,
                max_ms: TTL_MS_MAX,
            });
        }
    }
    Ok(())
}

/// Checks one write of a batch as [`validate_put`] or [`check_key`] would on its own.
pub fn validate_write(write: &KvWrite) -> Result<(), OpError> {
    match write {
        KvWrite::Put { key, value, ttl_ms, .. } => validate_put(key, value, *ttl_ms),
        KvWrite::Delete { key, .. } => check_key(key),
    }
}

/// The limits a batch and a merged entry share: how many writes, how many bytes of keys and values.
fn check_size(what: &'static str, writes: usize, bytes: usize) -> Result<(), OpError> {
    check_batch(writes)?;
    if bytes > BATCH_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: what.into(),
            len: bytes,
            max: BATCH_BYTES_MAX,
        });
    }
    Ok(())
}

/// Checks what makes a batch as a whole acceptable: its size in writes and in bytes, and distinct
/// keys (two writes of one key at one revision would leave one of them out of the watch history).
pub fn validate_batch(writes: &[KvWrite]) -> Result<(), OpError> {
    check_size("kv batch", writes.len(), writes.iter().map(KvWrite::bytes).sum())?;
    let mut keys = HashSet::with_capacity(writes.len());
    match writes.iter().find(|w| !keys.insert(w.key())) {
        Some(twice) => Err(OpError::Kv(KvError::DuplicateKey {
            key: lossy(twice.key()),
        })),
        None => Ok(()),
    }
}

/// Checks a merged entry as a whole: at least one part, each a KV write request, no key in two
/// parts (they share one revision, as a batch's writes do), and all within one batch's limits.
/// Each part is checked on its own when it applies.
pub fn validate_merged(parts: &[KvPart]) -> Result<(), OpError> {
    if parts.is_empty() {
        return Err(OpError::Empty {
            what: "merged kv writes".into(),
        });
    }
    check_size(
        "merged kv writes",
        parts.iter().map(KvPart::writes).sum(),
        parts.iter().map(KvPart::bytes).sum(),
    )?;
    let mut keys = HashSet::new();
    for part in parts {
        let part_keys = part.keys().ok_or_else(|| {
            OpError::Kv(KvError::NotMergeable {
                op: part.op.to_string(),
            })
        })?;
        // Within a part a repeated key is the part's own refusal, answered when it applies.
        let part_keys: HashSet<&[u8]> = part_keys.into_iter().collect();
        for key in part_keys {
            if !keys.insert(key) {
                return Err(OpError::Kv(KvError::DuplicateKey { key: lossy(key) }));
            }
        }
    }
    Ok(())
}

/// Applies a batch's writes in order, each answered on its own; a refused or conditional write
/// that fails changes nothing and does not stop the others.
pub(crate) fn batch<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    writer: Writer,
    writes: &[KvWrite],
) -> Result<Response, StoreError> {
    if let Err(e) = validate_batch(writes) {
        return Ok(Response::Refused(e));
    }
    let mut answers = Vec::with_capacity(writes.len());
    for write in writes {
        answers.push(match write {
            KvWrite::Put {
                key,
                value,
                ttl_ms,
                expect,
            } => put(view, index, now_ms, writer, key, value, Expiry::In(*ttl_ms), *expect)?,
            KvWrite::Delete { key, expect } => delete(view, index, now_ms, writer, key, *expect)?,
        });
    }
    Ok(Response::KvBatch(answers))
}

pub fn expiry_key(expires_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = expires_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The record stored under `key`, whether or not it has expired.
fn stored<S: StoreRead>(view: &View<'_, S>, key: &[u8]) -> Result<Result<Option<KvRecord>, OpError>, StoreError> {
    Ok(match view.get(Table::Kv, key)? {
        None => Ok(None),
        Some(bytes) => KvRecord::decode(&bytes).map(Some).map_err(|e| OpError::CorruptValue {
            key: lossy(key),
            reason: e.to_string(),
        }),
    })
}

fn expect_holds(expect: Option<Expect>, live: Option<&KvRecord>) -> bool {
    match (expect, live) {
        (None, _) => true,
        (Some(Expect::Absent), live) => live.is_none(),
        (Some(Expect::Revision(rev)), Some(record)) => record.mod_revision == rev,
        (Some(Expect::Revision(_)), None) => false,
    }
}

/// The history row of a revision: every change the revision made, one after another, each
/// `[key length u32 LE][key][event length u32 LE][event]`. One row per revision rather than per
/// change: a put costs one RocksDB memtable insert fewer, and compaction deletes one row per
/// revision. Rows of the earlier layout, keyed `(revision, key)` with one event, still read.
pub fn history_row_key(revision: u64) -> Vec<u8> {
    revision.to_be_bytes().to_vec()
}

pub(crate) fn record_event<S: StoreRead>(view: &mut View<'_, S>, revision: u64, key: &[u8], event: &KvEvent) {
    let event = event.encode();
    let mut change = Vec::with_capacity(8 + key.len() + event.len());
    change.extend_from_slice(&(key.len() as u32).to_le_bytes());
    change.extend_from_slice(key);
    change.extend_from_slice(&(event.len() as u32).to_le_bytes());
    change.extend_from_slice(&event);
    view.append(Table::KvHistory, history_row_key(revision), &change);
}

/// A history row that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("history row of revision {revision}: {reason}")]
pub struct HistoryRowError {
    pub revision: u64,
    pub reason: String,
}

/// The changes of one history row: `(key, event)`, a key's net change once (a merged remote batch
/// may change one key twice at one revision; the last change stands, where the key first
/// appeared), in the order the keys were first changed.
pub fn history_events<'a>(row_key: &'a [u8], row: &'a [u8]) -> Result<Vec<(&'a [u8], KvEvent)>, HistoryRowError> {
    let revision = revision_of(row_key);
    let corrupt = |reason: String| HistoryRowError { revision, reason };
    if row_key.len() > 8 {
        // The earlier layout: one change, its key after the revision.
        let event = KvEvent::decode(row).map_err(|e| corrupt(e.to_string()))?;
        return Ok(vec![(&row_key[8..], event)]);
    }
    let mut events = Vec::new();
    let mut rest = row;
    let take = |rest: &mut &'a [u8]| -> Result<&'a [u8], HistoryRowError> {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("truncated length".into()))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let field = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt(format!("field of {len} bytes past the row's end")))?;
        *rest = &rest[4 + len..];
        Ok(field)
    };
    let mut positions = std::collections::HashMap::new();
    while !rest.is_empty() {
        let key = take(&mut rest)?;
        let event = KvEvent::decode(take(&mut rest)?).map_err(|e| corrupt(e.to_string()))?;
        match positions.entry(key) {
            std::collections::hash_map::Entry::Occupied(at) => events[*at.get()] = (key, event),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(events.len());
                events.push((key, event));
            }
        }
    }
    Ok(events)
}

fn remove<S: StoreRead>(view: &mut View<'_, S>, index: u64, key: &[u8], record: &KvRecord) {
    record_event(view, index, key, &KvEvent::Delete);
    view.delete(Table::Kv, key.to_vec());
    if let Some(at) = record.expires_at_ms {
        view.delete(Table::KvExpiry, expiry_key(at, key));
    }
}

/// Who writes, for last-writer-wins between regions: the entry's stamp and this region.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    pub stamp: u64,
    pub region: RegionRole,
}

impl Writer {
    /// The version of a write to a key whose current version is `current`: above it, so a write
    /// applied after another wins over it in every region, not only in this one.
    fn version_after(&self, current: Option<Version>) -> Version {
        let stamp = current.map_or(self.stamp, |c| self.stamp.max(c.stamp + 1));
        Version::new(stamp, self.region.id)
    }
}

/// The version of the key's current state: its record's, or its tombstone's.
fn current_version<S: StoreRead>(
    view: &View<'_, S>,
    key: &[u8],
    record: Option<&KvRecord>,
) -> Result<Option<Version>, StoreError> {
    Ok(match record {
        Some(r) => Some(r.written),
        None => tombstone(view, key)?,
    })
}

/// The version of the delete or expiry that removed `key`, if a tombstone is kept for it.
pub fn tombstone<S: StoreRead + ?Sized>(store: &S, key: &[u8]) -> Result<Option<Version>, StoreError> {
    super::load(store, Table::KvTombstone, key)
}

pub(crate) fn write_tombstone<S: StoreRead>(view: &mut View<'_, S>, key: &[u8], version: Version) {
    super::save(view, Table::KvTombstone, key.to_vec(), &version);
    view.put(
        Table::KvTombstoneByStamp,
        tombstone_index_key(version.stamp, key),
        Vec::new(),
    );
}

/// `(stamp BE, key)`: where a tombstone is found by its stamp.
pub fn tombstone_index_key(stamp: u64, key: &[u8]) -> Vec<u8> {
    let mut k = stamp.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The expiry a put gives its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// After this many ms from the entry's time (`None`: never).
    In(Option<u64>),
    /// The live record's, as it is (`KvOp::PutKeepTtl`).
    Keep,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn put<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    writer: Writer,
    key: &[u8],
    value: &[u8],
    expiry: Expiry,
    expect: Option<Expect>,
) -> Result<Response, StoreError> {
    let ttl_ms = match expiry {
        Expiry::In(ttl_ms) => ttl_ms,
        Expiry::Keep => None,
    };
    if let Err(e) = validate_put(key, value, ttl_ms) {
        return Ok(Response::Refused(e));
    }
    let existing = match stored(view, key)? {
        Ok(r) => r,
        Err(e) => return Ok(Response::Refused(e)),
    };
    let live = existing.as_ref().filter(|r| r.is_live_at(now_ms));
    if !expect_holds(expect, live) {
        return Ok(Response::KvConditionFailed {
            current: live.map(|r| r.mod_revision),
        });
    }
    let written = if writer.region.replicated {
        writer.version_after(current_version(view, key, existing.as_ref())?)
    } else {
        Version::new(writer.stamp, writer.region.id)
    };
    let prev_revision = live.map(|r| r.mod_revision);
    store_value(
        view,
        index,
        key,
        existing.as_ref(),
        live.is_some(),
        value.to_vec(),
        match expiry {
            Expiry::In(ttl_ms) => ttl_ms.map(|ttl| now_ms + ttl),
            Expiry::Keep => live.and_then(|r| r.expires_at_ms),
        },
        written,
        writer.region.replicated,
    );
    Ok(Response::KvPut {
        revision: index,
        prev_revision,
    })
}

/// Writes `value` as the key's new record (a local put, or a remote write that won the merge),
/// keeping the expiry index and the watch history in step and dropping any tombstone.
/// `tombstones`: whether this region keeps tombstones (only regions among several do); a lone
/// region skips the delete, which would otherwise add a deletion marker to RocksDB per put.
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_value<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    key: &[u8],
    existing: Option<&KvRecord>,
    existing_live: bool,
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
    written: Version,
    tombstones: bool,
) {
    let live = existing.filter(|_| existing_live);
    let record = KvRecord {
        value,
        create_revision: live.map_or(index, |r| r.create_revision),
        mod_revision: index,
        version: live.map_or(1, |r| r.version + 1),
        expires_at_ms,
        written,
    };
    if let Some(at) = existing.and_then(|old| old.expires_at_ms) {
        view.delete(Table::KvExpiry, expiry_key(at, key));
    }
    if let Some(at) = record.expires_at_ms {
        view.put(Table::KvExpiry, expiry_key(at, key), Vec::new());
    }
    record_event(
        view,
        index,
        key,
        &KvEvent::Put {
            value: record.value.clone(),
            create_revision: record.create_revision,
            version: record.version,
        },
    );
    view.put(Table::Kv, key.to_vec(), record.encode());
    if tombstones {
        view.delete(Table::KvTombstone, key.to_vec());
    }
}

/// Removes the key's record (if any) and, in multi-region mode, leaves a tombstone at `version`.
pub(crate) fn store_tombstone<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    key: &[u8],
    existing: Option<&KvRecord>,
    version: Version,
) {
    if let Some(record) = existing {
        remove(view, index, key, record);
    }
    write_tombstone(view, key, version);
}

pub(crate) fn delete<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    writer: Writer,
    key: &[u8],
    expect: Option<Expect>,
) -> Result<Response, StoreError> {
    if let Err(e) = check_key(key) {
        return Ok(Response::Refused(e));
    }
    let existing = match stored(view, key)? {
        Ok(r) => r,
        Err(e) => return Ok(Response::Refused(e)),
    };
    let live = existing.as_ref().filter(|r| r.is_live_at(now_ms));
    if !expect_holds(expect, live) {
        return Ok(Response::KvConditionFailed {
            current: live.map(|r| r.mod_revision),
        });
    }
    if writer.region.replicated {
        // A delete is a write: it beats every older write of the key, in every region, even where
        // the key does not exist yet.
        let version = writer.version_after(current_version(view, key, existing.as_ref())?);
        store_tombstone(view, index, key, existing.as_ref(), version);
    } else if let Some(record) = &existing {
        remove(view, index, key, record);
    }
    Ok(Response::KvDelete {
        revision: index,
        deleted: live.is_some(),
    })
}

pub(crate) fn sweep_expired<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    region: RegionRole,
    limit: u32,
) -> Result<Response, StoreError> {
    // Only what is due: expiry keys start with the big-endian expiry time.
    let due_range = KeyRange::between(Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec());
    let due = view.scan(Table::KvExpiry, &due_range, limit as usize)?;
    let mut removed = 0u32;
    for (expiry, _) in due {
        let at = u64::from_be_bytes(expiry[..8].try_into().expect("expiry keys start with 8 bytes"));
        if at > now_ms {
            break;
        }
        let key = &expiry[8..];
        view.delete(Table::KvExpiry, expiry.clone());
        if let Ok(Some(record)) = stored(view, key)? {
            // Only if the record still carries this expiry: a later put may have moved it.
            if record.expires_at_ms == Some(at) {
                record_event(view, index, key, &KvEvent::Delete);
                view.delete(Table::Kv, key.to_vec());
                if region.replicated {
                    // At the expired write's own version: an expiry is not a write, so a newer
                    // write of the key (which another region may not have seen yet) still wins,
                    // and an older one still loses, as it did to the write that expired.
                    write_tombstone(view, key, record.written);
                }
                removed += 1;
            }
        }
    }
    Ok(Response::Swept { removed })
}

const HISTORY_START_KEY: &[u8] = b"kv_history_start";

/// The oldest revision whose changes are still in the history (earlier ones were compacted).
pub fn history_start<S: StoreRead + ?Sized>(store: &S) -> Result<u64, StoreError> {
    Ok(store
        .get(Table::Meta, HISTORY_START_KEY)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Removes history older than revision `below`, at most `limit` rows; what remains starts at
/// `below` unless the limit stopped it earlier.
pub(crate) fn compact<S: StoreRead>(view: &mut View<'_, S>, below: u64, limit: u32) -> Result<Response, StoreError> {
    let start = history_start(view)?;
    if below <= start {
        return Ok(Response::Swept { removed: 0 });
    }
    // From the current start: below it lie only the tombstones of earlier compactions, which a
    // scan from the table's beginning would step over one by one, every time.
    let old = view.scan(
        Table::KvHistory,
        &KeyRange::between(start.to_be_bytes().to_vec(), below.to_be_bytes().to_vec()),
        limit as usize,
    )?;
    let complete = old.len() < limit as usize;
    let mut new_start = below;
    if !complete {
        // Stop on a revision boundary: the last revision seen may have more rows unread (rows of
        // the earlier layout hold one change each).
        let last = old.last().map(|(k, _)| revision_of(k)).unwrap_or(below);
        new_start = last;
    }
    let mut removed = 0u32;
    for (key, _) in old {
        if revision_of(&key) >= new_start {
            break;
        }
        view.delete(Table::KvHistory, key);
        removed += 1;
    }
    view.put(
        Table::Meta,
        HISTORY_START_KEY.to_vec(),
        new_start.max(start).to_be_bytes().to_vec(),
    );
    Ok(Response::Swept { removed })
}

/// The revision a history row belongs to.
pub fn revision_of(history_key: &[u8]) -> u64 {
    u64::from_be_bytes(history_key[..8].try_into().expect("history keys start with a revision"))
}

/// The compaction to propose when more than `keep` revisions of history precede `applied`.
pub fn compaction_due<S: StoreRead + ?Sized>(store: &S, applied: u64, keep: u64) -> Result<Option<u64>, StoreError> {
    let Some(below) = applied.checked_sub(keep) else {
        return Ok(None);
    };
    Ok(history_before(store, below)?.then_some(below))
}

/// Whether any history older than revision `below` is still kept.
pub fn history_before<S: StoreRead + ?Sized>(store: &S, below: u64) -> Result<bool, StoreError> {
    // From the current start, not the table's beginning: see `compact`.
    let start = history_start(store)?;
    let first = store.scan(Table::KvHistory, &KeyRange::all_from(start.to_be_bytes().to_vec()), 1)?;
    Ok(first.first().is_some_and(|(k, _)| revision_of(k) < below))
}
