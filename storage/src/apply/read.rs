//! What every read of a data type shares: it reads one point-in-time view and judges expiry at
//! that view's applied time (the stamp of the last applied entry), never at a node's clock. So
//! every node, and every node after a failover, answers alike, and an entry applied while the
//! read runs is in the answer whole or not at all. The per-type reads (`kv_read.rs`, the lease
//! read in `lease.rs`) are built on [`read_judged`].

use super::last_applied_stamp;
use crate::state::{StoreError, ViewSource};

/// Whether something expiring at `expires_at_ms` (never: `None`) is live at applied time
/// `now_ms`: the one rule every data type's expiry follows, in apply and in reads.
pub fn is_live(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|at| now_ms < at)
}

/// Something that expires at an applied time.
pub trait Expiring {
    fn expires_at_ms(&self) -> Option<u64>;
}

/// A read's result and the applied time of the view it came from.
#[derive(Debug)]
pub struct Judged<T> {
    pub value: T,
    pub judged_at_ms: u64,
}

impl<T: Expiring> Judged<Option<T>> {
    /// The expiry of what was read, live or not: a linearizable read settles an expiry later
    /// than `judged_at_ms` but already due by the clock through the log before it answers.
    pub fn expiry(&self) -> Option<u64> {
        self.value.as_ref().and_then(Expiring::expires_at_ms)
    }

    /// What was read, if it is live at the view's applied time.
    pub fn live(self) -> Option<T> {
        let at = self.judged_at_ms;
        self.value.filter(|v| is_live(v.expires_at_ms(), at))
    }
}

/// `read` run against one view of `source`, with that view's applied time.
pub fn read_judged<S, T>(
    source: &S,
    read: impl FnOnce(&S::View<'_>) -> Result<T, StoreError>,
) -> Result<Judged<T>, StoreError>
where
    S: ViewSource + ?Sized,
{
    let view = source.view();
    let judged_at_ms = last_applied_stamp(&view)?.physical_ms();
    let value = read(&view)?;
    Ok(Judged { value, judged_at_ms })
}
