//! [`Applier`]: applies a batch of committed entries, one at a time: the stamp (monotonic across
//! leaders), the session check (a retry gets its saved answer), the fence check, then the op in its
//! data type's file, staged so that a refusal keeps none of its writes.

use super::{
    cache, corrupt, counter, group, kv, lease, ledger, queue, rate, replication, session, stream, topology, txn, View,
    WriteSet,
};
use crate::command::{Branch, Command, Fence, KvOp, Op, OpError, RegionError, RegionOp, Response, Session, TxnError};
use crate::hlc::HlcStamp;
use crate::state::{StoreError, StoreRead, Table};
use basalt_replication::{RegionId, RegionName};

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
            Op::Kv(KvOp::Merged { parts }) => match kv::validate_merged(parts) {
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
    /// requests apply at one index only when their keys are distinct ([`KvOp::Merged`]).
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
            let refusal = Response::Refused(OpError::Region(RegionError::NotHome {
                region: self.region.id,
                home: self.region.home,
            }));
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
                        first_message: 0,
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
                if let (Op::Region(RegionOp::MergeFeed { batch }), Response::ReplApplied { .. }) =
                    (request.op, &response)
                {
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
pub(super) struct OpContext {
    /// The entry's log index: the KV revision, the sequence of queue and stream writes.
    pub index: u64,
    /// The entry's HLC stamp in milliseconds: the only clock apply reads.
    pub now_ms: u64,
    pub stamp: HlcStamp,
    pub region: RegionRole,
    /// The number, within the entry, of the first queue message this op enqueues: message ids
    /// are `index << 16 | number`, unique across the log and across queues (a message keeps its
    /// id when it moves to a dead-letter queue). 0 but for the later ops of a transaction.
    pub first_message: u32,
}

/// Hands the op to its data type's file, which matches its variants.
fn apply_op<S: StoreRead>(view: &mut View<'_, S>, ctx: OpContext, op: &Op) -> Result<Response, StoreError> {
    match op {
        Op::Txn(txn) => txn::apply(view, ctx, txn),
        op => apply_single_op(view, ctx, op),
    }
}

/// [`apply_op`] for every op but a transaction, which is refused: what a transaction's branch
/// applies its ops with. Apart so that a transaction's apply, generic over a view of the view,
/// does not instantiate itself again without end.
pub(super) fn apply_single_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &Op,
) -> Result<Response, StoreError> {
    Ok(match op {
        // Refused when the outer transaction is validated; never reached.
        Op::Txn(_) => Response::Refused(OpError::Txn(TxnError::NotTransactional {
            branch: Branch::Then,
            op: 0,
            what: "a transaction inside a transaction".into(),
        })),
        Op::Kv(op) => kv::apply_op(view, ctx, op)?,
        Op::Counter { ops } => counter::apply(view, ctx.region, ctx.now_ms, ops)?,
        Op::CounterSweep { limit } => super::counter_window::sweep(view, ctx.now_ms, *limit)?,
        Op::Rate(op) => rate::apply_op(view, ctx, op)?,
        Op::Lease(op) => lease::apply_op(view, ctx, op)?,
        Op::Ledger(op) => ledger::apply_op(view, ctx, op)?,
        Op::Queue(op) => queue::apply_op(view, ctx, op)?,
        Op::Stream(op) => stream::apply_op(view, ctx, op)?,
        Op::Cache(op) => cache::apply_op(view, ctx, op)?,
        Op::Group(op) => group::apply_op(view, ctx, op)?,
        Op::Region(op) => replication::apply_op(view, ctx, op)?,
        Op::SessionSweep { idle_ms, after, limit } => session::sweep_idle(view, ctx.now_ms, *idle_ms, *after, *limit)?,
        Op::ClockTick => Response::None,
        Op::Auth(op) => super::auth::apply_op(view, op)?,
    })
}
