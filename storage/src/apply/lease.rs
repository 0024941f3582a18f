//! Leases with fencing tokens.
//!
//! A grant's fencing token is the log index of the entry that granted it. Log indexes only grow,
//! across leader changes, restarts and snapshots, so tokens strictly increase per lease name (and
//! across names) without any state kept for released leases. Expiry is judged from entry stamps,
//! so every replica agrees on when a lease ended.

use serde::{Deserialize, Serialize};

use super::read::{read_judged, Expiring, Judged};
use super::{check_key, corrupt, lossy, OpContext, View};
use crate::command::{Fence, LeaseError, LeaseLoss, LeaseOp, LeaseOutcome, OpError, Response};
use crate::limits::{KEY_BYTES_MAX, TTL_MS_MAX};
use crate::state::{StoreError, StoreRead, Table, ViewSource};

/// Applies one lease op of entry `ctx.index` (the index is the fencing token of a new grant).
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &LeaseOp,
) -> Result<Response, StoreError> {
    let OpContext { index, now_ms, .. } = ctx;
    match op {
        LeaseOp::Acquire { name, holder, ttl_ms } => acquire(view, index, now_ms, name, holder, *ttl_ms),
        LeaseOp::Renew {
            name,
            holder,
            token,
            ttl_ms,
        } => renew(view, now_ms, name, holder, *token, *ttl_ms),
        LeaseOp::Release { name, holder, token } => release(view, now_ms, name, holder, *token),
    }
}

/// The current grant of a lease. Deleted on release; overwritten by the next grant once expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Vec<u8>,
    pub token: u64,
    pub expires_at_ms: u64,
}

impl Expiring for LeaseRecord {
    fn expires_at_ms(&self) -> Option<u64> {
        Some(self.expires_at_ms)
    }
}

impl LeaseRecord {
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        super::read::is_live(Some(self.expires_at_ms), now_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<LeaseRecord> {
        basalt_codec::decode(bytes).ok()
    }

    fn encode(&self) -> Vec<u8> {
        basalt_codec::encode(self)
    }
}

pub(crate) fn validate(name: &[u8], holder: &[u8], ttl_ms: u64) -> Result<(), OpError> {
    check_key(name)?;
    if holder.is_empty() {
        return Err(OpError::Empty {
            what: "lease holder".into(),
        });
    }
    if holder.len() > KEY_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: "lease holder".into(),
            len: holder.len(),
            max: KEY_BYTES_MAX,
        });
    }
    if ttl_ms == 0 || ttl_ms > TTL_MS_MAX {
        return Err(OpError::InvalidTtl {
            ttl_ms,
            max_ms: TTL_MS_MAX,
        });
    }
    Ok(())
}

/// The lease's grant, or why it cannot be read.
fn load<S: StoreRead>(view: &View<'_, S>, name: &[u8]) -> Result<Result<Option<LeaseRecord>, OpError>, StoreError> {
    Ok(match view.get(Table::Lease, name)? {
        None => Ok(None),
        Some(bytes) => LeaseRecord::decode(&bytes)
            .map(Some)
            .ok_or_else(|| OpError::CorruptValue {
                key: lossy(name),
                reason: "undecodable lease record".into(),
            }),
    })
}

/// A lease's grant (live or expired) and the applied time, from one view: the read behind
/// `lease get` (see `read.rs`).
pub fn get<S: ViewSource + ?Sized>(source: &S, name: &[u8]) -> Result<Judged<Option<LeaseRecord>>, StoreError> {
    read_judged(source, |view| record(view, name))
}

/// A lease's grant as `store` holds it, live or expired, with no applied time: for a caller that
/// judges it otherwise (an acquire waiting for a holder to go).
pub fn record<S: StoreRead + ?Sized>(store: &S, name: &[u8]) -> Result<Option<LeaseRecord>, StoreError> {
    match store.get(Table::Lease, name)? {
        None => Ok(None),
        Some(bytes) => LeaseRecord::decode(&bytes)
            .map(Some)
            .ok_or_else(|| corrupt(Table::Lease, name, "undecodable lease record")),
    }
}

/// Whether `token` (of `holder`, when given) is the live grant: pure, shared by fences, renew and
/// release so all three agree on what "stale" means.
pub fn standing(record: Option<&LeaseRecord>, holder: Option<&[u8]>, token: u64, now_ms: u64) -> Result<(), LeaseLoss> {
    let Some(record) = record else {
        return Err(LeaseLoss::NotHeld);
    };
    let same_grant = record.token == token && holder.is_none_or(|h| h == record.holder.as_slice());
    match (same_grant, record.is_live_at(now_ms)) {
        (true, true) => Ok(()),
        (true, false) => Err(LeaseLoss::Expired {
            expires_at_ms: record.expires_at_ms,
        }),
        (false, true) => Err(LeaseLoss::Superseded {
            current_token: record.token,
        }),
        (false, false) => Err(LeaseLoss::NotHeld),
    }
}

/// Refuses a fenced write unless its token is the live grant of its lease.
pub(crate) fn check_fence<S: StoreRead>(
    view: &View<'_, S>,
    now_ms: u64,
    fence: &Fence,
) -> Result<Result<(), OpError>, StoreError> {
    let record = match load(view, &fence.lease)? {
        Ok(record) => record,
        Err(e) => return Ok(Err(e)),
    };
    Ok(standing(record.as_ref(), None, fence.token, now_ms).map_err(|reason| {
        OpError::Lease(LeaseError::StaleFence {
            lease: lossy(&fence.lease),
            token: fence.token,
            reason,
        })
    }))
}

pub(crate) fn acquire<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    now_ms: u64,
    name: &[u8],
    holder: &[u8],
    ttl_ms: u64,
) -> Result<Response, StoreError> {
    if let Err(e) = validate(name, holder, ttl_ms) {
        return Ok(Response::Refused(e));
    }
    let current = match load(view, name)? {
        Ok(record) => record.filter(|r| r.is_live_at(now_ms)),
        Err(e) => return Ok(Response::Refused(e)),
    };
    let grant = match current {
        // Held by someone else: the caller waits or gives up.
        Some(held) if held.holder != holder => {
            return Ok(Response::Lease(LeaseOutcome::Held {
                holder: held.holder,
                expires_at_ms: held.expires_at_ms,
            }))
        }
        // Re-entrant: the holder asking again keeps its token and gets the new expiry.
        Some(held) => LeaseRecord {
            expires_at_ms: now_ms + ttl_ms,
            ..held
        },
        None => LeaseRecord {
            holder: holder.to_vec(),
            token: index,
            expires_at_ms: now_ms + ttl_ms,
        },
    };
    view.put(Table::Lease, name.to_vec(), grant.encode());
    Ok(Response::Lease(LeaseOutcome::Granted {
        token: grant.token,
        expires_at_ms: grant.expires_at_ms,
    }))
}

fn not_held(name: &[u8], token: u64, reason: LeaseLoss) -> Response {
    Response::Refused(OpError::Lease(LeaseError::NotHeld {
        lease: lossy(name),
        token,
        reason,
    }))
}

pub(crate) fn renew<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    name: &[u8],
    holder: &[u8],
    token: u64,
    ttl_ms: u64,
) -> Result<Response, StoreError> {
    if let Err(e) = validate(name, holder, ttl_ms) {
        return Ok(Response::Refused(e));
    }
    let record = match load(view, name)? {
        Ok(record) => record,
        Err(e) => return Ok(Response::Refused(e)),
    };
    if let Err(reason) = standing(record.as_ref(), Some(holder), token, now_ms) {
        return Ok(not_held(name, token, reason));
    }
    let expires_at_ms = now_ms + ttl_ms;
    let renewed = LeaseRecord {
        holder: holder.to_vec(),
        token,
        expires_at_ms,
    };
    view.put(Table::Lease, name.to_vec(), renewed.encode());
    Ok(Response::Lease(LeaseOutcome::Granted { token, expires_at_ms }))
}

pub(crate) fn release<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    name: &[u8],
    holder: &[u8],
    token: u64,
) -> Result<Response, StoreError> {
    if let Err(e) = validate(name, holder, 1) {
        return Ok(Response::Refused(e));
    }
    let record = match load(view, name)? {
        Ok(record) => record,
        Err(e) => return Ok(Response::Refused(e)),
    };
    match standing(record.as_ref(), Some(holder), token, now_ms) {
        Ok(()) => {
            view.delete(Table::Lease, name.to_vec());
            Ok(Response::Lease(LeaseOutcome::Released { was_live: true }))
        }
        // Its own grant, already expired: releasing is a harmless no-op that tidies the record.
        Err(LeaseLoss::Expired { .. }) => {
            view.delete(Table::Lease, name.to_vec());
            Ok(Response::Lease(LeaseOutcome::Released { was_live: false }))
        }
        Err(reason) => Ok(not_held(name, token, reason)),
    }
}
