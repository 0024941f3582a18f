//! The deterministic apply logic: `(state, index, command) -> (writes, response)`.
//!
//! Pure: it reads through [`StoreRead`], collects its effects in a [`WriteSet`] and never looks
//! at a clock. Time is the entry's HLC stamp, made monotonic across leaders by taking the maximum
//! with the last applied stamp, so every replica decides every TTL the same way.

/// Returns `Response::Refused` from an apply function when a check fails: a refusal is an
/// answer, not an error.
macro_rules! refuse_on_err {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(refusal) => return Ok(Response::Refused(refusal)),
        }
    };
}

pub mod counter;
pub mod group;
pub mod kv;
pub mod kv_read;
pub mod lease;
pub mod ledger;
pub mod queue;
pub mod rate;
pub mod read;
pub mod replication;
mod session;
pub mod stream;
pub mod topology;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_homed;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_ledger;
#[cfg(test)]
mod tests_merged;
#[cfg(test)]
mod tests_mirror;
#[cfg(test)]
mod tests_queue;
#[cfg(test)]
mod tests_rate;
#[cfg(test)]
mod tests_replication;
#[cfg(test)]
mod tests_stream;
#[cfg(test)]
mod tests_topology;

use std::collections::BTreeMap;

use basalt_replication::{RegionId, RegionName};

use crate::command::{Command, Fence, Op, OpError, Response, Session};
use crate::hlc::HlcStamp;
use crate::limits::{BATCH_ITEMS_MAX, KEY_BYTES_MAX};
use crate::state::{KeyRange, KeyValue, StoreError, StoreRead, Table};

/// Writes collected while applying a batch of entries; later reads in the batch see them.
#[derive(Default, Debug)]
pub struct WriteSet {
    entries: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl WriteSet {
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert((table, key), Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.entries.insert((table, key), None);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.entries.iter().map(|((t, k), v)| (*t, k.as_slice(), v.as_deref()))
    }

    /// Adds `bytes` to the end of the value this set writes under `key`, or writes them as the
    /// value. The stored value is not read: only for a row created whole within one entry (the
    /// KV history row of the entry's revision), whose earlier parts can only be in this set.
    pub fn append(&mut self, table: Table, key: Vec<u8>, bytes: &[u8]) {
        debug_assert!(table.is_appended(), "{table:?} rows are not built by appending");
        match self.entries.entry((table, key)).or_insert_with(|| Some(Vec::new())) {
            Some(value) => value.extend_from_slice(bytes),
            slot @ None => *slot = Some(bytes.to_vec()),
        }
    }

    /// Takes over `other`'s writes (they win over this set's own), except that rows of appended
    /// tables ([`WriteSet::append`]) written by both are joined, this set's part first.
    pub fn absorb(&mut self, other: WriteSet) {
        for ((table, key), value) in other.entries {
            match (table.is_appended(), value) {
                (true, Some(tail)) => match self.entries.entry((table, key)).or_insert(None) {
                    Some(head) => head.extend_from_slice(&tail),
                    slot @ None => *slot = Some(tail),
                },
                (_, value) => {
                    self.entries.insert((table, key), value);
                }
            }
        }
    }

    pub(crate) fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.entries.is_empty() {
            return None;
        }
        // BTreeMap keyed by (Table, Vec<u8>) cannot be queried by (Table, &[u8]) without allocating.
        self.entries.get(&(table, key.to_vec())).map(|v| v.as_deref())
    }

    fn range_from<'a>(&'a self, table: Table, from: &[u8]) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.entries
            .range((table, from.to_vec())..)
            .take_while(move |((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
    }
}

/// The store as seen mid-batch: committed state overlaid with this batch's writes.
pub struct View<'a, S: StoreRead> {
    pub base: &'a S,
    pub writes: &'a mut WriteSet,
}

impl<S: StoreRead> View<'_, S> {
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.lookup(table, key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.base.get(table, key),
        }
    }

    /// Merged ordered scan of base and pending writes inside `range`, at most `limit` live entries.
    pub fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        // Over-read the base by the number of pending writes so the merge still yields `limit`.
        let pending: Vec<_> = self
            .writes
            .range_from(table, &range.start)
            .take_while(|(k, _)| range.contains(k))
            .collect();
        let base = self.base.scan(table, range, limit + pending.len())?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in pending {
            merged.insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes.put(table, key, value);
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.writes.delete(table, key);
    }

    /// See [`WriteSet::append`].
    pub fn append(&mut self, table: Table, key: Vec<u8>, bytes: &[u8]) {
        self.writes.append(table, key, bytes);
    }
}

/// A view is itself readable, so an operation can stage its writes over it and keep them only if
/// it succeeds (a refusal, or a failed linked chain, changes nothing).
impl<S: StoreRead> StoreRead for View<'_, S> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        View::get(self, table, key)
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        View::scan(self, table, range, limit)
    }
}

pub(crate) const LAST_STAMP_KEY: &[u8] = b"last_stamp";

/// The stamp of the last entry applied in `store`. Apply stamps every later entry at or above it
/// (`max(proposed stamp, last applied)`), whatever clock proposed that entry: so it is a bound
/// that entries proposed but not yet applied respect too, which no node's clock reading is.
pub fn last_applied_stamp<S: StoreRead + ?Sized>(store: &S) -> Result<HlcStamp, StoreError> {
    match store.get(Table::Meta, LAST_STAMP_KEY)? {
        None => Ok(HlcStamp::default()),
        Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(stamp) => Ok(HlcStamp(u64::from_le_bytes(stamp))),
            // Read as 0, every TTL key and lease would be judged live again.
            Err(_) => Err(corrupt(
                Table::Meta,
                LAST_STAMP_KEY,
                format!("{} bytes, not 8", bytes.len()),
            )),
        },
    }
}

/// This region among regions: its id, and whether it replicates with other regions (then deletes
/// leave tombstones and replicated writes go into the change feed). Read from the replicated
/// [`topology::RegionTopology`], never from a node's flags, so every replica applies alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionRole {
    pub id: RegionId,
    pub replicated: bool,
    /// How many other regions there are: a tombstone is collected only once every one of them
    /// has shipped past it.
    pub remotes: u16,
    /// The region that owns homed data (ledgers, leases, queues); `id` when it is this one.
    pub home: RegionId,
    /// Mirrors of this region's topics are named `topic@name` elsewhere.
    pub name: RegionName,
    /// The part of every counter bound this region may use on its own (stored, not derived
    /// from the number of regions).
    pub escrow: topology::EscrowShare,
}

impl RegionRole {
    /// Whether homed data is written here (always, for a lone region).
    pub fn is_home(&self) -> bool {
        !self.replicated || self.home == self.id
    }
}

impl Default for RegionRole {
    /// A lone region.
    fn default() -> Self {
        RegionRole {
            id: 1,
            replicated: false,
            remotes: 0,
            home: 1,
            name: RegionName::default(),
            escrow: topology::EscrowShare::WHOLE,
        }
    }
}

/// Applies commands in log order. Holds the last applied stamp between batches.
#[derive(Debug, Default)]
pub struct Applier {
    last_stamp: HlcStamp,
    region: RegionRole,
}

impl Applier {
    /// Loads the last applied stamp and the region topology from the store.
    pub fn load<S: StoreRead>(store: &S) -> Result<Applier, StoreError> {
        let last_stamp = last_applied_stamp(store)?;
        let region = topology::region_role(store)?;
        Ok(Applier { last_stamp, region })
    }

    pub fn region(&self) -> RegionRole {
        self.region
    }

    pub fn last_stamp(&self) -> HlcStamp {
        self.last_stamp
    }

    /// Applies the command of log entry `index`.
    pub fn apply<S: StoreRead>(
        &mut self,
        store: &S,
        writes: &mut WriteSet,
        index: u64,
        command: &Command,
    ) -> Result<Response, StoreError> {
        // Stamps from a new leader whose clock is behind never move time backwards.
        let stamp = command.stamp.max(self.last_stamp);
        self.last_stamp = stamp;
        writes.put(Table::Meta, LAST_STAMP_KEY.to_vec(), stamp.0.to_le_bytes().to_vec());
        let mut view = View { base: store, writes };
        // The effects of the entry's requests, staged apart from their sessions so the feed
        // entry of a replicated region covers exactly what the requests changed.
        let mut effects = WriteSet::default();
        let response = match &command.op {
            Op::KvMerged { parts } => match kv::validate_merged(parts) {
                Err(e) => Response::Refused(e),
                Ok(()) => {
                    let mut answers = Vec::with_capacity(parts.len());
                    for part in parts {
                        let request = Request {
                            session: part.session.as_ref(),
                            fence: None,
                            op: &part.op,
                        };
                        answers.push(self.apply_request(&mut view, &mut effects, index, stamp, request)?);
                    }
                    Response::KvMerged(answers)
                }
            },
            op => {
                let request = Request {
                    session: command.session.as_ref(),
                    fence: command.fence.as_ref(),
                    op,
                };
                self.apply_request(&mut view, &mut effects, index, stamp, request)?
            }
        };
        if self.region.replicated && !effects.is_empty() {
            // One feed entry per log entry: its key is the index.
            replication::record_feed(&view, &mut effects, index, stamp.0, self.region, &command.op)?;
        }
        view.writes.absorb(effects);
        Ok(response)
    }

    /// Applies one client request at `index`: its session decides whether it applies at all, its
    /// effects go to `effects` unless refused, its answer is saved in its session. Several
    /// requests apply at one index only when their keys are distinct ([`Op::KvMerged`]).
    fn apply_request<S: StoreRead>(
        &mut self,
        view: &mut View<'_, S>,
        effects: &mut WriteSet,
        index: u64,
        stamp: HlcStamp,
        request: Request<'_>,
    ) -> Result<Response, StoreError> {
        let now_ms = stamp.physical_ms();
        let session_floor = match request.session {
            None => None,
            Some(session) => match session::begin(view, session)? {
                session::Begin::Answered(previous) => return Ok(previous),
                session::Begin::Apply { floor } => Some((session, floor)),
            },
        };
        if request.op.is_homed() && !self.region.is_home() {
            // Another region's copy of homed data changes only through its home's feed.
            let refusal = Response::Refused(OpError::NotHome {
                region: self.region.id,
                home: self.region.home,
            });
            if let Some((session, floor)) = session_floor {
                session::finish(view, session, floor, now_ms, &refusal)?;
            }
            return Ok(refusal);
        }
        let fenced = match request.fence {
            Some(fence) => lease::check_fence(view, now_ms, fence)?,
            None => Ok(()),
        };
        let response = match fenced {
            Err(refusal) => Response::Refused(refusal),
            Ok(()) => {
                // Staged so that a refusal changes nothing, whatever the op wrote before refusing.
                let mut staged = WriteSet::default();
                let response = {
                    // Sees what earlier requests of the entry changed, as a later entry would.
                    let before = View {
                        base: &*view,
                        writes: &mut *effects,
                    };
                    let mut op_view = View {
                        base: &before,
                        writes: &mut staged,
                    };
                    let ctx = OpContext {
                        index,
                        now_ms,
                        stamp,
                        region: self.region,
                    };
                    apply_op(&mut op_view, ctx, request.op)?
                };
                if !matches!(response, Response::Refused(_)) {
                    effects.absorb(staged);
                }
                if let Response::Topology(topology) = &response {
                    // Every later entry applies in the region's new role.
                    self.region = topology.role();
                }
                if let (Op::ReplApply { batch }, Response::ReplApplied { .. }) = (request.op, &response) {
                    // The clock observes what it receives: a write made here after merging
                    // another region's changes is stamped after them, whatever the wall clocks
                    // say, so last-writer-wins never lets a causally earlier write win.
                    let seen = batch.entries.iter().map(|e| e.stamp).chain([batch.frontier]).max();
                    if let Some(seen) = seen.filter(|s| *s > self.last_stamp.0) {
                        self.last_stamp = HlcStamp(seen);
                        view.writes
                            .put(Table::Meta, LAST_STAMP_KEY.to_vec(), seen.to_le_bytes().to_vec());
                    }
                }
                response
            }
        };
        if let Some((session, floor)) = session_floor {
            session::finish(view, session, floor, now_ms, &response)?;
        }
        Ok(response)
    }
}

/// A client request as apply sees it: a whole entry's command, or one part of a merged entry.
#[derive(Clone, Copy)]
struct Request<'a> {
    session: Option<&'a Session>,
    fence: Option<&'a Fence>,
    op: &'a Op,
}

/// What an op is applied with besides its own arguments.
#[derive(Clone, Copy, Debug)]
struct OpContext {
    index: u64,
    now_ms: u64,
    stamp: HlcStamp,
    region: RegionRole,
}

fn apply_op<S: StoreRead>(view: &mut View<'_, S>, ctx: OpContext, op: &Op) -> Result<Response, StoreError> {
    let OpContext { index, now_ms, .. } = ctx;
    let writer = kv::Writer {
        stamp: ctx.stamp.0,
        region: ctx.region,
    };
    Ok(match op {
        Op::KvPut {
            key,
            value,
            ttl_ms,
            expect,
        } => kv::put(view, index, now_ms, writer, key, value, *ttl_ms, *expect)?,
        Op::KvDelete { key, expect } => kv::delete(view, index, now_ms, writer, key, *expect)?,
        Op::KvBatch { writes } => kv::batch(view, index, now_ms, writer, writes)?,
        // `Applier::apply` takes merged entries apart; a part that is one again is refused there.
        Op::KvMerged { .. } => Response::Refused(OpError::NotMergeable { op: op.to_string() }),
        Op::KvSweepExpired { limit } => kv::sweep_expired(view, index, now_ms, ctx.region, *limit)?,
        Op::ReplApply { batch } => replication::apply_remote(view, index, now_ms, ctx.region, batch)?,
        Op::ReplTrim { upto, limit } => replication::trim(view, *upto, *limit)?,
        Op::KvTombstoneGc {
            below,
            limit,
            topology_at,
        } => replication::collect_tombstones(view, *below, *limit, *topology_at)?,
        Op::ClockTick => Response::None,
        Op::RegionTopology { change } => topology::apply(view, index, change)?,
        Op::KvCompact { below, limit } => kv::compact(view, *below, *limit)?,
        Op::QueueConfigure { queue, config } => queue::configure(view, queue, config)?,
        Op::QueueEnqueue { queue, messages } => queue::enqueue(view, index, now_ms, queue, messages)?,
        Op::QueueReceive {
            queue,
            max,
            visibility_timeout_ms,
        } => queue::receive(view, now_ms, queue, *max, *visibility_timeout_ms)?,
        Op::QueueAck { queue, receipt } => queue::ack(view, queue, receipt)?,
        Op::QueueNack {
            queue,
            receipt,
            delay_ms,
        } => queue::nack(view, now_ms, queue, receipt, *delay_ms)?,
        Op::QueueRedrive { queue, max } => queue::redrive(view, now_ms, queue, *max)?,
        Op::QueueDedupSweep { limit } => queue::sweep_dedup(view, now_ms, *limit)?,
        Op::StreamCreateTopic { topic, config } => stream::create_topic(view, topic, config)?,
        Op::StreamProduce {
            topic,
            records,
            producer,
        } => stream::produce(view, index, now_ms, topic, records, *producer)?,
        Op::StreamRetention { limit } => stream::apply_retention(view, now_ms, *limit)?,
        Op::GroupJoin {
            group,
            member,
            topics,
            session_timeout_ms,
            assignor,
        } => group::join(
            view,
            now_ms,
            group::Join {
                group,
                member,
                topics,
                session_timeout_ms: *session_timeout_ms,
                assignor: *assignor,
            },
        )?,
        Op::GroupHeartbeat { group, member } => group::heartbeat(view, now_ms, group, member)?,
        Op::GroupLeave { group, member } => group::leave(view, now_ms, group, member)?,
        Op::GroupCommit {
            group,
            member,
            generation,
            offsets,
        } => group::commit(
            view,
            now_ms,
            group::Commit {
                group,
                member,
                generation: *generation,
                offsets,
            },
        )?,
        Op::GroupSweep { limit } => group::sweep(view, now_ms, *limit)?,
        Op::SessionSweep { idle_ms, after, limit } => session::sweep_idle(view, now_ms, *idle_ms, *after, *limit)?,
        Op::Counter { ops } => counter::apply(view, ctx.region, ops)?,
        Op::RateCheck { checks } => rate::apply(view, now_ms, ctx.region.id, checks)?,
        Op::LeaseAcquire { name, holder, ttl_ms } => lease::acquire(view, index, now_ms, name, holder, *ttl_ms)?,
        Op::LeaseRenew {
            name,
            holder,
            token,
            ttl_ms,
        } => lease::renew(view, now_ms, name, holder, *token, *ttl_ms)?,
        Op::LeaseRelease { name, holder, token } => lease::release(view, now_ms, name, holder, *token)?,
        Op::LedgerCreateAccounts { accounts } => ledger::create_accounts(view, now_ms, accounts)?,
        Op::LedgerCreateTransfers { transfers } => ledger::create_transfers(view, now_ms, transfers)?,
        Op::LedgerExpirePending { limit } => ledger::expire_pending(view, now_ms, *limit)?,
        Op::RateSweep { limit } => rate::sweep(view, now_ms, *limit)?,
    })
}

/// Most keys one sweep entry removes; the rest go with the next one.
pub const SWEEP_LIMIT: u32 = 1000;

/// The sweeps the leader should propose now: one per time-indexed table whose earliest entry is
/// due at `now_ms`. Each index starts with a big-endian due time; only the ledger's is in
/// nanoseconds.
pub fn sweeps_due<S: StoreRead + ?Sized>(store: &S, now_ms: u64, region: RegionRole) -> Result<Vec<Op>, StoreError> {
    let tables = [
        (Table::KvExpiry, now_ms, Op::KvSweepExpired { limit: SWEEP_LIMIT }),
        (Table::RateExpiry, now_ms, Op::RateSweep { limit: SWEEP_LIMIT }),
        (Table::RateGlobalExpiry, now_ms, Op::RateSweep { limit: SWEEP_LIMIT }),
        (
            Table::LedgerExpiry,
            now_ms.saturating_mul(1_000_000),
            Op::LedgerExpirePending { limit: SWEEP_LIMIT },
        ),
        (
            Table::QueueDedupExpiry,
            now_ms,
            Op::QueueDedupSweep { limit: SWEEP_LIMIT },
        ),
        (Table::StreamGroupExpiry, now_ms, Op::GroupSweep { limit: SWEEP_LIMIT }),
    ];
    let mut due = Vec::new();
    for (table, now, op) in tables {
        let first = store.scan(table, &KeyRange::all(), 1)?;
        let earliest = first
            .first()
            .and_then(|(k, _)| k.get(..8))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        // Homed data is swept by its home, whose feed brings the result here.
        if earliest.is_some_and(|at| at <= now) && (region.is_home() || !op.is_homed()) && !due.contains(&op) {
            due.push(op);
        }
    }
    if stream::retention_due(store, now_ms)? {
        due.push(Op::StreamRetention { limit: SWEEP_LIMIT });
    }
    Ok(due)
}

/// Checks a batch's size: non-empty, at most [`BATCH_ITEMS_MAX`].
pub fn check_batch(len: usize) -> Result<(), OpError> {
    if len == 0 {
        return Err(OpError::Empty { what: "batch".into() });
    }
    if len > BATCH_ITEMS_MAX {
        return Err(OpError::BatchTooLarge {
            len,
            max: BATCH_ITEMS_MAX,
        });
    }
    Ok(())
}

/// Checks a key against the limits every data type shares (non-empty, at most `KEY_BYTES_MAX`).
pub fn check_key(key: &[u8]) -> Result<(), OpError> {
    if key.is_empty() {
        return Err(OpError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(OpError::KeyTooLarge {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Validates an operation before it is proposed, so bad input never reaches the log. Apply checks
/// again (a refused entry changes nothing), because an entry may come from an older client.
pub fn validate_op(op: &Op) -> Result<(), OpError> {
    match op {
        Op::KvPut { key, value, ttl_ms, .. } => kv::validate_put(key, value, *ttl_ms),
        Op::KvDelete { key, .. } => check_key(key),
        Op::KvBatch { writes } => {
            kv::validate_batch(writes)?;
            writes.iter().try_for_each(kv::validate_write)
        }
        Op::KvMerged { parts } => {
            kv::validate_merged(parts)?;
            parts.iter().try_for_each(|part| validate_op(&part.op))
        }
        Op::Counter { ops } => counter::validate(ops),
        Op::RegionTopology { change } => topology::validate(change),
        Op::RateCheck { checks } => rate::validate(checks),
        Op::LeaseAcquire { name, holder, ttl_ms } => lease::validate(name, holder, *ttl_ms),
        Op::LeaseRenew {
            name, holder, ttl_ms, ..
        } => lease::validate(name, holder, *ttl_ms),
        Op::LeaseRelease { name, holder, .. } => lease::validate(name, holder, 1),
        Op::LedgerCreateAccounts { accounts } => check_batch(accounts.len()),
        Op::LedgerCreateTransfers { transfers } => check_batch(transfers.len()),
        Op::QueueConfigure { queue, config } => queue::validate_configure(queue, config),
        Op::QueueEnqueue { queue, messages } => queue::validate_enqueue(queue, messages),
        Op::QueueReceive {
            queue,
            max,
            visibility_timeout_ms,
        } => queue::validate_receive(queue, *max, *visibility_timeout_ms),
        Op::QueueAck { queue, .. } => queue::check_name("queue name", queue),
        Op::QueueNack { queue, delay_ms, .. } => queue::validate_nack(queue, *delay_ms),
        Op::QueueRedrive { queue, max } => queue::validate_receive(queue, *max, None),
        Op::StreamCreateTopic { topic, config } => stream::validate_topic(topic, config),
        Op::StreamProduce {
            topic,
            records,
            producer,
        } => stream::validate_produce(topic, records, *producer),
        Op::GroupJoin {
            group,
            member,
            topics,
            session_timeout_ms,
            ..
        } => group::validate_join(group, member, topics, *session_timeout_ms),
        Op::GroupHeartbeat { group, member } | Op::GroupLeave { group, member } => {
            queue::check_name("group name", group).and_then(|_| queue::check_name("member id", member.as_bytes()))
        }
        Op::GroupCommit {
            group, member, offsets, ..
        } => queue::check_name("group name", group)
            .and_then(|_| queue::check_name("member id", member.as_bytes()))
            .and_then(|_| check_batch(offsets.len())),
        Op::KvSweepExpired { .. }
        | Op::SessionSweep { .. }
        | Op::LedgerExpirePending { .. }
        | Op::RateSweep { .. }
        | Op::KvCompact { .. }
        | Op::QueueDedupSweep { .. }
        | Op::StreamRetention { .. }
        | Op::GroupSweep { .. }
        | Op::ReplTrim { .. }
        | Op::KvTombstoneGc { .. }
        | Op::ClockTick => Ok(()),
        Op::ReplApply { batch } => {
            if batch.entries.len() > BATCH_ITEMS_MAX {
                return Err(OpError::BatchTooLarge {
                    len: batch.entries.len(),
                    max: BATCH_ITEMS_MAX,
                });
            }
            Ok(())
        }
    }
}

/// A queue, topic or group name as a key prefix: its length (one byte), then the name, so no
/// name's keys are a prefix of another name's.
pub(crate) fn named(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 17);
    k.push(name.len().min(u8::MAX as usize) as u8);
    k.extend_from_slice(name);
    k
}

/// A parameter outside its range.
pub(crate) fn out_of_range(what: &'static str, expected: impl Into<String>, got: impl ToString) -> OpError {
    OpError::OutOfRange {
        what: what.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// Decodes a record (basalt-codec) read from `table`; an undecodable one is a corrupt record.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    basalt_codec::decode(bytes).map_err(|e| corrupt(table, key, e))
}

pub(crate) fn corrupt(table: Table, key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptRecord {
        table,
        key: format!("{key:02x?}"),
        reason: e.to_string(),
    }
}

/// Reads and decodes a record (basalt-codec); an undecodable one is a [`StoreError::CorruptRecord`].
pub(crate) fn load<S: StoreRead + ?Sized, T: serde::de::DeserializeOwned>(
    store: &S,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(bytes) => decode(table, key, &bytes).map(Some),
    }
}

pub(crate) fn save<S: StoreRead, T: serde::Serialize>(view: &mut View<'_, S>, table: Table, key: Vec<u8>, value: &T) {
    view.put(table, key, basalt_codec::encode(value));
}

pub(crate) fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
