//! The apply side of cross-region replication: recording this region's change feed, merging
//! another region's, trimming what every region has, and reading both for the shipper.
//!
//! The merge rules themselves are in `basalt-replication`; this module maps them onto the stored
//! records (KV records and tombstones, PN-counters) and keeps the revision history, expiry index
//! and per-source watermarks in step.

use basalt_replication::{Digest, Effect, EscrowTransfers, FeedEntry, LwwValue, PnCounter, RegionId, ShipBatch};
use serde::{Deserialize, Serialize};

use super::counter::{decode_pn, encode_pn};
use super::kv::{store_tombstone, store_value, tombstone};
use super::stream::{mirror_key, topic_of_key, MIRRORED_TABLES};
use super::{decode, load, named, save, OpContext, RegionRole, View, WriteSet};
use crate::command::{CacheOp, KvOp, Op, OpError, RegionError, RegionOp, Response};
use crate::state::{KeyRange, KvRecord, StoreError, StoreRead, Table};
use crate::stream::{is_mirror_name, TopicConfig};

/// Applies one cross-region op of entry `ctx.index`: a feed merge or trim here, a topology
/// change in `super::topology`.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &RegionOp,
) -> Result<Response, StoreError> {
    match op {
        RegionOp::MergeFeed { batch } => apply_remote(view, ctx.index, ctx.now_ms, ctx.region, batch),
        RegionOp::TrimFeed { upto, limit } => trim(view, *upto, *limit),
        RegionOp::Topology { change } => super::topology::apply(view, ctx.index, change),
    }
}

/// How far this region has merged one other region's feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// Every feed position of the source up to here has been merged.
    pub applied_upto: u64,
    /// The source's HLC as of its last batch: every change still to come from it is stamped later.
    pub frontier: u64,
}

fn source_key(region: RegionId) -> Vec<u8> {
    region.to_be_bytes().to_vec()
}

fn feed_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

pub fn source_state<S: StoreRead + ?Sized>(store: &S, region: RegionId) -> Result<SourceState, StoreError> {
    Ok(load(store, Table::ReplSource, &source_key(region))?.unwrap_or_default())
}

/// Every source region this one has merged from, with its state.
pub fn source_states<S: StoreRead + ?Sized>(store: &S) -> Result<Vec<(RegionId, SourceState)>, StoreError> {
    store
        .scan(Table::ReplSource, &KeyRange::all(), usize::MAX)?
        .into_iter()
        .filter_map(|(k, v)| {
            let region = RegionId::from_be_bytes(k.as_slice().try_into().ok()?);
            Some(decode(Table::ReplSource, &k, &v).map(|s| (region, s)))
        })
        .collect()
}

/// Derives the feed entry of log entry `index` from the writes `op` made (`staged`, over the
/// state `before` it), and adds it to them. Called in a replicating region for every applied op:
/// the writes of multi-region types if `op` replicates; in the home region every row of homed
/// data written or deleted (sweeps included: other regions do not sweep their copy); and every
/// row of a mirrored topic, under its mirror name.
pub(crate) fn record_feed<S: StoreRead + ?Sized>(
    before: &S,
    staged: &mut WriteSet,
    index: u64,
    stamp: u64,
    role: RegionRole,
    op: &Op,
) -> Result<(), StoreError> {
    let region = role.id;
    let merged_types = op.replicates();
    let homed_rows = role.is_home();
    let mut effects = Vec::new();
    if let Op::Cache(CacheOp::Purge { target }) = op {
        // The purge itself, not its row: the receiver numbers it in its own purge table.
        effects.push(Effect::CachePurge { target: target.clone() });
    }
    for (table, key, value) in staged.iter() {
        if table == Table::CachePurge {
            continue;
        }
        if MIRRORED_TABLES.contains(&table) {
            if let Some(effect) = mirror_row(before, staged, role, table, key, value)? {
                effects.push(effect);
            }
            continue;
        }
        if table.is_homed() {
            if homed_rows {
                effects.push(Effect::Row {
                    table: table.name().to_string(),
                    key: key.to_vec(),
                    value: value.map(<[u8]>::to_vec),
                });
            }
            continue;
        }
        if !merged_types {
            continue;
        }
        match (table, value) {
            (Table::Kv, Some(bytes)) => {
                let record: KvRecord = decode(table, key, bytes)?;
                effects.push(Effect::Kv {
                    key: key.to_vec(),
                    value: record.register(),
                });
            }
            (Table::KvTombstone, Some(bytes)) => {
                effects.push(Effect::Kv {
                    key: key.to_vec(),
                    value: LwwValue {
                        version: decode(table, key, bytes)?,
                        value: None,
                        expires_at_ms: None,
                    },
                });
            }
            (Table::Counter, Some(bytes)) => {
                let counter = decode_pn(bytes).map_err(|e| super::corrupt(table, key, e))?;
                effects.push(Effect::Counter {
                    key: key.to_vec(),
                    region,
                    component: counter.component(region),
                });
            }
            (Table::CounterEscrow, Some(bytes)) => {
                let escrow: EscrowTransfers = decode(table, key, bytes)?;
                effects.extend(escrow.given.iter().filter(|((_, from, _), _)| *from == region).map(
                    |((bound, from, to), total)| Effect::EscrowGiven {
                        key: key.to_vec(),
                        bound: *bound,
                        from: *from,
                        to: *to,
                        total: *total,
                    },
                ));
            }
            (Table::CounterWindow, Some(bytes)) => {
                effects.push(Effect::CounterWindow {
                    key: key.to_vec(),
                    region,
                    component: super::counter_window::own_component(bytes, key, region)?,
                });
            }
            (Table::RateGlobal, Some(bytes)) => effects.push(Effect::RateWindow {
                key: key.to_vec(),
                region,
                count: super::rate::own_global_count(bytes, key, region)?,
            }),
            _ => {}
        }
    }
    if !effects.is_empty() {
        let entry = FeedEntry { index, stamp, effects };
        staged.put(
            Table::ReplFeed,
            feed_key(index),
            basalt_replication::feed::encode(&entry),
        );
    }
    Ok(())
}

/// The feed effect of a write to a stream table, if its topic is mirrored: the row under the
/// mirror's name. Mirrors themselves (names with `@`) are never mirrored again.
fn mirror_row<S: StoreRead + ?Sized>(
    before: &S,
    staged: &WriteSet,
    role: RegionRole,
    table: Table,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Effect>, StoreError> {
    let Some(topic) = topic_of_key(key).filter(|t| !is_mirror_name(t)) else {
        return Ok(None);
    };
    let topic_key = named(topic);
    // The topic's settings as this entry leaves them, else as they were before it (an entry that
    // deletes the topic removes its rows from the mirrors too); for a topic being deleted, the
    // settings its deletion keeps (the removals of later entries reach the mirrors as well).
    let settings = |table: Table| -> Result<Option<Vec<u8>>, StoreError> {
        match staged.lookup(table, &topic_key) {
            Some(Some(written)) => Ok(Some(written.to_vec())),
            _ => before.get(table, &topic_key),
        }
    };
    let mirrored = match settings(Table::StreamTopic)? {
        Some(bytes) => decode::<TopicConfig>(Table::StreamTopic, &topic_key, &bytes)?.mirror,
        None => match settings(Table::StreamTopicDeleting)? {
            Some(bytes) => super::stream::TopicDeletion::decode(&topic_key, &bytes)?.config.mirror,
            None => false,
        },
    };
    if !mirrored {
        return Ok(None);
    }
    Ok(mirror_key(key, role.name.as_bytes()).map(|key| Effect::MirrorRow {
        table: table.name().to_string(),
        key,
        value: value.map(<[u8]>::to_vec),
    }))
}

/// Merges a batch of `batch.source`'s feed: entries at or below the watermark were merged before
/// and are skipped (a re-sync chunk merges everything: merging twice is harmless).
pub(crate) fn apply_remote<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    region: RegionRole,
    batch: &ShipBatch,
) -> Result<Response, StoreError> {
    if !region.replicated {
        return Ok(Response::Refused(OpError::Region(RegionError::NotReplicating {
            source_region: batch.source,
        })));
    }
    if batch.source == region.id {
        return Ok(Response::Refused(OpError::Region(RegionError::OwnFeed {
            region: region.id,
        })));
    }
    if !super::topology::load_topology(&*view)?.is_some_and(|t| t.regions.contains_key(&batch.source)) {
        // A region removed (or never added) merges nothing here, whatever it still sends.
        return Ok(Response::Refused(OpError::Region(RegionError::UnknownRegion {
            source_region: batch.source,
        })));
    }
    for effect in batch.entries.iter().flat_map(|e| &e.effects) {
        let row_table = match effect {
            Effect::Row { table, .. } => Some(table.as_str()),
            Effect::RowsReset => None,
            Effect::MirrorRow { table, key, .. } => {
                let stream_table = Table::from_name(table).filter(|t| MIRRORED_TABLES.contains(t));
                if stream_table.is_none() || !topic_of_key(key).is_some_and(is_mirror_name) {
                    return Ok(Response::Refused(OpError::Region(RegionError::NotMirrorRow {
                        table: table.clone(),
                    })));
                }
                continue;
            }
            Effect::Kv { .. }
            | Effect::Counter { .. }
            | Effect::EscrowGiven { .. }
            | Effect::RateWindow { .. }
            | Effect::CounterWindow { .. }
            | Effect::CachePurge { .. } => continue,
        };
        if !source_is_home(region, batch.source) {
            return Ok(Response::Refused(OpError::Region(RegionError::RowsFromNonHome {
                source_region: batch.source,
                home: region.home,
            })));
        }
        if let Some(table) = row_table.filter(|t| !Table::from_name(t).is_some_and(Table::is_homed)) {
            return Ok(Response::Refused(OpError::Region(RegionError::NotHomedTable {
                table: table.to_string(),
            })));
        }
    }
    let mut state = source_state(view, batch.source)?;
    let mut merged = 0u32;
    for entry in &batch.entries {
        if !batch.resync && entry.index <= state.applied_upto {
            continue;
        }
        for effect in &entry.effects {
            if batch.resync && resync_effect_merged_before(effect, state.frontier) {
                continue;
            }
            if let Effect::CachePurge { target } = effect {
                use super::cache::{PurgeOrigin, PurgeSource};
                let source = match batch.resync {
                    true => PurgeSource::Resync { region: batch.source },
                    false => PurgeSource::Merged(PurgeOrigin {
                        region: batch.source,
                        index: entry.index,
                        at_ms: crate::hlc::HlcStamp(entry.stamp).physical_ms(),
                    }),
                };
                // A purge this build would refuse (another build's limits) still purges: too
                // much is safe, too little is not.
                let target = match super::cache::validate_purge(target) {
                    Ok(()) => target.clone(),
                    Err(_) => basalt_replication::PurgeTarget::Everything,
                };
                super::cache::record(view, index, now_ms, target, source)?;
                continue;
            }
            merge_effect(view, index, now_ms, effect)?;
        }
        merged += 1;
    }
    if batch.resync && batch.upto > 0 && source_is_home(region, batch.source) {
        // The re-sync's last batch: the copy of homed data is whole again.
        view.delete(Table::Meta, ROWS_INCOMPLETE_KEY.to_vec());
    }
    let last = batch.entries.last().map_or(0, |e| e.index);
    let upto = if batch.resync { batch.upto } else { batch.upto.max(last) };
    state.applied_upto = state.applied_upto.max(upto);
    state.frontier = state.frontier.max(batch.frontier);
    save(view, Table::ReplSource, source_key(batch.source), &state);
    Ok(Response::ReplApplied {
        upto: state.applied_upto,
        merged,
    })
}

/// Whether a re-sync's KV effect is one this region merged before the feed was trimmed past it:
/// stamped below the source's frontier as recorded before the re-sync (every change the region
/// missed is stamped at or above that frontier, which the source promised before the gap). Such
/// a write is skipped, not merged again: this region may since have collected the tombstone of
/// a delete that beat it (from a third region, whose own feed brought the delete), and merging it
/// again would bring the key back here alone. Only the last chunk of a re-sync raises the
/// recorded frontier, so every chunk is judged against the frontier from before it.
fn resync_effect_merged_before(effect: &Effect, frontier_before: u64) -> bool {
    matches!(effect, Effect::Kv { value, .. } if value.version.stamp < frontier_before)
}

fn merge_effect<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    effect: &Effect,
) -> Result<(), StoreError> {
    match effect {
        Effect::Kv { key, value } => {
            let existing: Option<KvRecord> = load(view, Table::Kv, key)?;
            let current = match &existing {
                Some(record) => Some(record.register()),
                None => tombstone(view, key)?.map(|version| LwwValue {
                    version,
                    value: None,
                    expires_at_ms: None,
                }),
            };
            if current.as_ref().is_some_and(|c| !value.wins_over(c)) {
                return Ok(());
            }
            match &value.value {
                Some(bytes) => {
                    let live = existing.as_ref().is_some_and(|r| r.is_live_at(now_ms));
                    store_value(
                        view,
                        index,
                        key,
                        existing.as_ref(),
                        live,
                        bytes.clone(),
                        value.expires_at_ms,
                        value.version,
                        true,
                    );
                }
                None => store_tombstone(view, index, key, existing.as_ref(), value.version),
            }
        }
        Effect::Counter { key, region, component } => {
            let mut counter = match view.get(Table::Counter, key)? {
                None => PnCounter::default(),
                Some(bytes) => decode_pn(&bytes).map_err(|e| super::corrupt(Table::Counter, key, e))?,
            };
            counter.merge_component(*region, *component);
            view.put(Table::Counter, key.clone(), encode_pn(&counter));
        }
        Effect::MirrorRow { table, key, value } => {
            // Checked by `apply_remote` before any effect applies.
            let Some(table) = Table::from_name(table).filter(|t| MIRRORED_TABLES.contains(t)) else {
                return Ok(());
            };
            match value {
                Some(bytes) => view.put(table, key.clone(), bytes.clone()),
                None => view.delete(table, key.clone()),
            }
        }
        Effect::EscrowGiven {
            key,
            bound,
            from,
            to,
            total,
        } => {
            let mut escrow: EscrowTransfers = load(view, Table::CounterEscrow, key)?.unwrap_or_default();
            escrow.merge_pair(*bound, *from, *to, *total);
            save(view, Table::CounterEscrow, key.clone(), &escrow);
        }
        Effect::RateWindow { key, region, count } => super::rate::merge_global_count(view, key, *region, *count)?,
        Effect::CounterWindow { key, region, component } => {
            super::counter_window::merge(view, now_ms, key, *region, *component)?
        }
        Effect::Row { table, key, value } => {
            // Checked by `apply_remote` before any effect applies.
            let Some(table) = Table::from_name(table).filter(|t| t.is_homed()) else {
                return Ok(());
            };
            match value {
                Some(bytes) => view.put(table, key.clone(), bytes.clone()),
                None => view.delete(table, key.clone()),
            }
        }
        // Recorded by `apply_remote`, which knows the entry it came in.
        Effect::CachePurge { .. } => {}
        Effect::RowsReset => {
            for table in Table::HOMED {
                for (key, _) in view.scan(table, &KeyRange::all(), usize::MAX)? {
                    view.delete(table, key);
                }
            }
            view.put(Table::Meta, ROWS_INCOMPLETE_KEY.to_vec(), Vec::new());
        }
    }
    Ok(())
}

/// Set while a full re-sync of homed data is under way here: the copy lacks rows until it ends.
const ROWS_INCOMPLETE_KEY: &[u8] = b"repl_homed_rows_incomplete";

fn source_is_home(region: RegionRole, source: RegionId) -> bool {
    region.home == source && region.home != region.id
}

/// Whether this region's copy of homed data is whole (always, outside a re-sync): only then may
/// it serve reads of homed data that the home region cannot serve itself.
pub fn homed_copy_complete<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    Ok(store.get(Table::Meta, ROWS_INCOMPLETE_KEY)?.is_none())
}

/// The stamp below which this region may forget tombstones, as far as writes still to come from
/// other regions go: the lowest frontier over the configured `remotes` (`None` until each of them
/// has shipped at least once; a source row of a region that is not in `remotes`, left over from an
/// earlier topology, counts for nothing). Every write still to come from a region is stamped at or
/// above its frontier, and this region's own writes above what it has seen, so no write a
/// tombstone below the horizon would have to beat can still arrive.
pub fn tombstone_horizon<S: StoreRead + ?Sized>(
    store: &S,
    region: RegionRole,
    remotes: &[RegionId],
) -> Result<Option<u64>, StoreError> {
    if !region.replicated || remotes.is_empty() {
        return Ok(None);
    }
    let sources = source_states(store)?;
    let mut horizon = u64::MAX;
    for remote in remotes.iter().filter(|r| **r != region.id) {
        match sources.iter().find(|(id, _)| id == remote) {
            Some((_, state)) if state.frontier > 0 => horizon = horizon.min(state.frontier),
            _ => return Ok(None),
        }
    }
    Ok((horizon != u64::MAX).then_some(horizon))
}

/// The stamp below which every change of this region's own feed has reached every other region,
/// given each remote region's acknowledged watermark for this region's feed (`None`: not known,
/// as after a leader change). A tombstone this region wrote must live until every region has it:
/// a region the feed was trimmed past is re-synced from live records and surviving tombstones,
/// and a delete whose tombstone is gone would never reach it. `None` while any watermark is
/// unknown.
///
/// Feed entries are stamped in position order, so every entry at or below the lowest watermark
/// is stamped below the first entry after it; when that entry was trimmed (the slowest region
/// fell behind the feed's retention and waits for a re-sync), nothing is known to be delivered
/// and the bound is 0.
pub fn delivered_below<S: StoreRead + ?Sized>(
    store: &S,
    acknowledged: impl IntoIterator<Item = Option<u64>>,
) -> Result<Option<u64>, StoreError> {
    // Read before the feed: an entry applied after this read is stamped at or above it.
    let last_applied = super::last_applied_stamp(store)?.0;
    let newest = resync_upto(store)?;
    let mut lowest = u64::MAX;
    for ack in acknowledged {
        match ack {
            // Above anything this region's feed ever held: a watermark from an earlier life of
            // this region (rebuilt from nothing), which says nothing of what it has now.
            Some(ack) if ack > newest => return Ok(None),
            Some(ack) => lowest = lowest.min(ack),
            None => return Ok(None),
        }
    }
    if lowest == u64::MAX {
        return Ok(Some(last_applied));
    }
    if lowest < feed_trimmed_upto(store)? {
        return Ok(Some(0));
    }
    Ok(Some(
        feed_after(store, lowest, 1)?
            .first()
            .map_or(last_applied, |undelivered| undelivered.stamp),
    ))
}

/// The collection to propose now, if a tombstone lies below both the horizon of `remotes`
/// ([`tombstone_horizon`]) and the bound of what this region's feed has delivered to them
/// ([`delivered_below`]; `None` collects nothing).
pub fn tombstone_gc_due<S: StoreRead + ?Sized>(
    store: &S,
    region: RegionRole,
    remotes: &[RegionId],
    delivered_below: Option<u64>,
    limit: u32,
) -> Result<Option<Op>, StoreError> {
    let (Some(horizon), Some(delivered)) = (tombstone_horizon(store, region, remotes)?, delivered_below) else {
        return Ok(None);
    };
    let below = horizon.min(delivered);
    let first = store.scan(Table::KvTombstoneByStamp, &KeyRange::all(), 1)?;
    let oldest = first
        .first()
        .and_then(|(k, _)| k.get(..8))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes);
    let topology_at = super::topology::load_topology(store)?.map_or(0, |t| t.changed_at);
    Ok(oldest.filter(|s| *s < below).map(|_| {
        Op::Kv(KvOp::TombstoneGc {
            below,
            limit,
            topology_at,
        })
    }))
}

/// Forgets tombstones stamped below `below`, at most `limit` index entries; nothing if the
/// region topology changed since `topology_at` (the bound did not count a region added since).
pub(crate) fn collect_tombstones<S: StoreRead>(
    view: &mut View<'_, S>,
    below: u64,
    limit: u32,
    topology_at: u64,
) -> Result<Response, StoreError> {
    if super::topology::load_topology(&*view)?.map_or(0, |t| t.changed_at) != topology_at {
        return Ok(Response::Swept { removed: 0 });
    }
    let due = view.scan(
        Table::KvTombstoneByStamp,
        &KeyRange::between(Vec::new(), below.to_be_bytes().to_vec()),
        limit as usize,
    )?;
    let mut removed = 0u32;
    for (index_key, _) in due {
        let (Some(stamp), Some(key)) = (
            index_key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            index_key.get(8..),
        ) else {
            continue;
        };
        // Only the tombstone this entry was written for: a later tombstone has its own entry.
        if tombstone(view, key)?.is_some_and(|v| v.stamp == stamp) {
            view.delete(Table::KvTombstone, key.to_vec());
            removed += 1;
        }
        view.delete(Table::KvTombstoneByStamp, index_key);
    }
    Ok(Response::Swept { removed })
}

const TRIMMED_KEY: &[u8] = b"repl_feed_trimmed_upto";

/// The feed holds every entry after this position: a region whose watermark is below it can no
/// longer be served from the feed and needs a full re-sync.
pub fn feed_trimmed_upto<S: StoreRead + ?Sized>(store: &S) -> Result<u64, StoreError> {
    Ok(store
        .get(Table::Meta, TRIMMED_KEY)?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// Forgets feed entries at or below `upto`, at most `limit`.
pub(crate) fn trim<S: StoreRead>(view: &mut View<'_, S>, upto: u64, limit: u32) -> Result<Response, StoreError> {
    let old = view.scan(
        Table::ReplFeed,
        &KeyRange::between(Vec::new(), feed_key(upto.saturating_add(1))),
        limit as usize,
    )?;
    let removed = old.len() as u32;
    // When the limit stopped it, the feed is complete only after the last entry removed.
    let trimmed = if removed == limit {
        old.last()
            .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    } else {
        upto
    };
    for (key, _) in old {
        view.delete(Table::ReplFeed, key);
    }
    let trimmed = trimmed.max(feed_trimmed_upto(view)?);
    view.put(Table::Meta, TRIMMED_KEY.to_vec(), trimmed.to_be_bytes().to_vec());
    Ok(Response::Swept { removed })
}

/// Feed entries after position `after`, at most `limit`, in order.
pub fn feed_after<S: StoreRead + ?Sized>(store: &S, after: u64, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
    store
        .scan(
            Table::ReplFeed,
            &KeyRange::all_from(feed_key(after.saturating_add(1))),
            limit,
        )?
        .into_iter()
        .map(|(k, v)| decode(Table::ReplFeed, &k, &v))
        .collect()
}

/// The next batch of this region's feed to ship after position `after`: at most `max_entries`
/// entries and `max_bytes` of them (at least one entry whenever the feed has one), or an empty
/// heartbeat batch (which moves no watermark). `None` when the feed was trimmed past `after`: what
/// follows it is gone, and the receiver needs a full re-sync (shipping what is left would move its
/// watermark past the gap). `store` must be one consistent view.
///
/// The batch's frontier promises that every feed entry after the batch is stamped at or above it,
/// entries not yet applied included; the receiver collects tombstones on the strength of it. It
/// is the last applied stamp as of this read, or, when the batch stops before the end of the
/// feed, the stamp of the first entry left out (entries are stamped in position order). The
/// proposing node's clock is no such bound: an entry proposed before the clock was read and
/// applied after it carries the earlier stamp, and a new leader's clock may be behind.
pub fn next_batch<S: StoreRead + ?Sized>(
    store: &S,
    source: RegionId,
    after: u64,
    max_entries: usize,
    max_bytes: u64,
) -> Result<Option<ShipBatch>, StoreError> {
    // Read before the feed, so an entry applied between the two reads is in the batch or after it.
    let last_applied = super::last_applied_stamp(store)?.0;
    if after < feed_trimmed_upto(store)? {
        return Ok(None);
    }
    let mut entries = feed_after(store, after, max_entries.max(1).saturating_add(1))?;
    let mut bytes = 0u64;
    let keep = entries
        .iter()
        .take(max_entries.max(1))
        .take_while(|e| {
            bytes = bytes.saturating_add(basalt_replication::feed::encoded_len(*e));
            bytes <= max_bytes
        })
        .count()
        .max(1)
        .min(entries.len());
    let frontier = entries.get(keep).map_or(last_applied, |left_out| left_out.stamp);
    entries.truncate(keep);
    let Some(upto) = entries.last().map(|e| e.index) else {
        return Ok(Some(ShipBatch::heartbeat(source, frontier)));
    };
    Ok(Some(ShipBatch {
        source,
        upto,
        entries,
        frontier,
        resync: false,
    }))
}

/// The frontier an empty batch (a heartbeat) may carry when the receiver will have merged every
/// feed position up to `after` before it (batches on one stream are merged in order): the stamp
/// of the first entry after `after`, or the last applied stamp when there is none (read first);
/// 0 when the feed was trimmed past `after`. Never the last applied stamp alone: entries not yet
/// shipped may be stamped below it.
pub fn heartbeat_after<S: StoreRead + ?Sized>(
    store: &S,
    source: RegionId,
    after: u64,
) -> Result<ShipBatch, StoreError> {
    let last_applied = super::last_applied_stamp(store)?.0;
    if after < feed_trimmed_upto(store)? {
        // Entries the receiver lacks are gone from the feed, their stamps with them: promise
        // nothing until a re-sync has brought it up to date.
        return Ok(ShipBatch::heartbeat(source, 0));
    }
    let frontier = feed_after(store, after, 1)?
        .first()
        .map_or(last_applied, |unshipped| unshipped.stamp);
    Ok(ShipBatch::heartbeat(source, frontier))
}

/// The position of the oldest entry still in the feed, if any.
pub fn feed_first<S: StoreRead + ?Sized>(store: &S) -> Result<Option<u64>, StoreError> {
    Ok(store
        .scan(Table::ReplFeed, &KeyRange::all(), 1)?
        .first()
        .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes)))
}

/// The feed position a full re-sync read from `store` (one consistent view) brings a region to:
/// every change up to the newest feed entry in the view is in the state it reads, and so is
/// every change the feed has already forgotten.
pub fn resync_upto<S: StoreRead + ?Sized>(store: &S) -> Result<u64, StoreError> {
    let newest = store
        .scan_reverse(Table::ReplFeed, &KeyRange::all(), 1)?
        .first()
        .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    Ok(feed_trimmed_upto(store)?.max(newest))
}

/// How large one chunk of a full re-sync may grow before it is sent.
#[derive(Clone, Copy, Debug)]
pub struct ResyncChunkLimits {
    /// Encoded effects, in bytes (a chunk may pass it by one key's effects).
    pub bytes: u64,
    /// Effects per chunk.
    pub effects: usize,
}

/// A full re-sync read from `store` (one consistent view): the whole replicated state as chunks,
/// each handed to `send` in order (`false` from it stops: the stream closed). Only the last
/// chunk moves the receiver's watermark (to [`resync_upto`]) and carries the frontier (the last
/// applied stamp of the view): the receiver judges every chunk against the frontier it had
/// before the re-sync. Returns that position and the number of chunks sent, or `None` if `send`
/// stopped.
pub fn resync_batches<S: StoreRead + ?Sized>(
    store: &S,
    source: RegionId,
    role: RegionRole,
    limits: ResyncChunkLimits,
    mut send: impl FnMut(ShipBatch) -> bool,
) -> Result<Option<(u64, usize)>, StoreError> {
    // Every change after this view is stamped at or above its last applied stamp, and everything
    // up to the newest feed position in it is in the state it reads.
    let frontier = super::last_applied_stamp(store)?.0;
    let upto = resync_upto(store)?;
    let mut chunks = 0usize;
    let mut chunk = |effects: Vec<Effect>, last: bool| {
        chunks += 1;
        let (upto, frontier) = if last { (upto, frontier) } else { (0, 0) };
        send(ShipBatch {
            source,
            // The entry is only a container: stamped 0, so a receiver whose clock is behind never
            // refuses a re-sync for it (and redoes the whole of it); a frontier ahead of its clock
            // is lowered instead.
            entries: vec![FeedEntry {
                index: upto,
                stamp: 0,
                effects,
            }],
            upto,
            frontier,
            resync: true,
        })
    };
    let mut pending = resync_opening(role);
    let mut bytes = 0u64;
    for table in resync_tables(role) {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = state_as_effects(store, table, after.as_deref(), 256)?;
            let Some((last_key, _)) = page.last() else { break };
            after = Some(last_key.clone());
            for (_, effects) in page {
                for effect in effects {
                    bytes = bytes.saturating_add(basalt_replication::feed::encoded_len(&effect));
                    pending.push(effect);
                }
                if bytes > limits.bytes || pending.len() >= limits.effects {
                    if !chunk(std::mem::take(&mut pending), false) {
                        return Ok(None);
                    }
                    bytes = 0;
                }
            }
        }
    }
    if !chunk(pending, true) {
        return Ok(None);
    }
    Ok(Some((upto, chunks)))
}

/// A stored key and the effects that rebuild it elsewhere.
pub type KeyEffects = (Vec<u8>, Vec<Effect>);

/// The whole replicated state as effects, for a full re-sync of a region that fell behind what
/// the feed retains: every KV record and tombstone, and every region's component of every counter.
/// Read from one consistent view, at most `limit` keys per table after `after_key`.
pub fn state_as_effects<S: StoreRead + ?Sized>(
    store: &S,
    table: Table,
    after_key: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyEffects>, StoreError> {
    let range = match after_key {
        None => KeyRange::all(),
        Some(k) => {
            let mut start = k.to_vec();
            start.push(0);
            KeyRange::all_from(start)
        }
    };
    let rows = store.scan(table, &range, limit)?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, bytes) in rows {
        let effects = match table {
            Table::Kv => {
                let record: KvRecord = decode(table, &key, &bytes)?;
                vec![Effect::Kv {
                    key: key.clone(),
                    value: record.register(),
                }]
            }
            Table::KvTombstone => vec![Effect::Kv {
                key: key.clone(),
                value: LwwValue {
                    version: decode(table, &key, &bytes)?,
                    value: None,
                    expires_at_ms: None,
                },
            }],
            Table::Counter => {
                let counter = decode_pn(&bytes).map_err(|e| super::corrupt(table, &key, e))?;
                counter
                    .components
                    .iter()
                    .map(|(region, component)| Effect::Counter {
                        key: key.clone(),
                        region: *region,
                        component: *component,
                    })
                    .collect()
            }
            Table::CounterEscrow => {
                let escrow: EscrowTransfers = decode(table, &key, &bytes)?;
                escrow
                    .given
                    .iter()
                    .map(|((bound, from, to), total)| Effect::EscrowGiven {
                        key: key.clone(),
                        bound: *bound,
                        from: *from,
                        to: *to,
                        total: *total,
                    })
                    .collect()
            }
            Table::CounterWindow => {
                let counter = decode_pn(&bytes).map_err(|e| super::corrupt(table, &key, e))?;
                counter
                    .components
                    .iter()
                    .map(|(region, component)| Effect::CounterWindow {
                        key: key.clone(),
                        region: *region,
                        component: *component,
                    })
                    .collect()
            }
            homed if homed.is_homed() => vec![Effect::Row {
                table: homed.name().to_string(),
                key: key.clone(),
                value: Some(bytes),
            }],
            _ => Vec::new(),
        };
        out.push((key, effects));
    }
    Ok(out)
}

/// How many KV tombstones this region keeps.
pub fn tombstone_count<S: StoreRead + ?Sized>(store: &S) -> Result<u64, StoreError> {
    Ok(store.scan(Table::KvTombstone, &KeyRange::all(), usize::MAX)?.len() as u64)
}

/// The tables whose contents a full re-sync from `role`'s region ships: the multi-region types,
/// and homed data from its home.
pub fn resync_tables(role: RegionRole) -> Vec<Table> {
    let mut tables = vec![
        Table::Kv,
        Table::KvTombstone,
        Table::Counter,
        Table::CounterEscrow,
        Table::CounterWindow,
    ];
    if role.is_home() {
        tables.extend(Table::HOMED);
    }
    tables
}

/// What opens a full re-sync from `role`'s region: a purge of every edge cache of the receiver;
/// from the home, also the receiver's copy of homed data is rebuilt from nothing.
pub fn resync_opening(role: RegionRole) -> Vec<Effect> {
    // Purges trimmed from the feed before the receiver got them are lost: its edges forget
    // everything rather than serve what one of them removed.
    let mut opening = vec![Effect::CachePurge {
        target: basalt_replication::PurgeTarget::Everything,
    }];
    if role.is_home() {
        opening.push(Effect::RowsReset);
    }
    opening
}

/// A fingerprint of this region's replicated state: KV values with their version and expiry,
/// counters with every component, windowed-counter buckets not yet past their forget time,
/// escrow, and every row of homed data. Tombstones are left out: they are bookkeeping, and a region
/// may hold one for a key another region never heard of without their data differing.
pub fn digest<S: StoreRead + ?Sized>(store: &S) -> Result<Digest, StoreError> {
    let mut digest = Digest::default();
    for (key, bytes) in store.scan(Table::Kv, &KeyRange::all(), usize::MAX)? {
        let record: KvRecord = decode(Table::Kv, &key, &bytes)?;
        digest.add("kv", &key, &basalt_replication::feed::encode(&record.register()));
    }
    for (key, bytes) in store.scan(Table::Counter, &KeyRange::all(), usize::MAX)? {
        let counter = decode_pn(&bytes).map_err(|e| super::corrupt(Table::Counter, &key, e))?;
        digest.add("counter", &key, &encode_pn(&counter));
    }
    // Windowed-counter buckets past their forget time are left out: a region that has swept one
    // and a region that has not yet hold the same windows.
    let applied_ms = super::last_applied_stamp(store)?.physical_ms();
    for (key, bytes) in store.scan(Table::CounterWindow, &KeyRange::all(), usize::MAX)? {
        if !super::counter_window::forgotten(&key, applied_ms) {
            digest.add(Table::CounterWindow.name(), &key, &bytes);
        }
    }
    for table in Table::HOMED.into_iter().chain([Table::CounterEscrow]) {
        for (key, bytes) in store.scan(table, &KeyRange::all(), usize::MAX)? {
            digest.add(table.name(), &key, &bytes);
        }
    }
    Ok(digest)
}
