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

pub mod auth;
pub mod cache;
pub mod counter;
pub mod counter_window;
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
pub mod txn;

mod applier;
mod records;
mod sweep;
#[cfg(test)]
mod test_views;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_counter_ttl;
#[cfg(test)]
mod tests_counter_window;
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
mod tests_queue_delete;
#[cfg(test)]
mod tests_rate;
#[cfg(test)]
mod tests_replication;
#[cfg(test)]
mod tests_stream;
#[cfg(test)]
mod tests_stream_trim;
#[cfg(test)]
mod tests_topology;
#[cfg(test)]
mod tests_txn;
mod validate;
mod write_set;

#[cfg(test)]
pub(crate) use applier::LAST_STAMP_KEY;
use applier::{apply_single_op, OpContext};
pub use applier::{last_applied_stamp, Applier, RegionRole};
pub(crate) use records::{corrupt, decode, load, lossy, named, out_of_range, save};
pub use session::answered as session_answered;
pub use sweep::{follow_up, more_due, sweeps_due, SWEEP_ITEMS_MAX};
pub use validate::{check_batch, check_key, validate_op};
pub use write_set::{View, WriteSet};

// What the test modules of this folder use from here (`use super::*`).
#[cfg(test)]
use crate::command::{
    Command, CounterError, CounterOutcome, Expect, GroupOp, KvError, KvOp, LeaseError, LeaseOp, LedgerOp, Op, OpError,
    QueueError, QueueOp, RateOp, RegionError, RegionOp, Response, Session, StreamError, StreamOp,
};
#[cfg(test)]
use crate::hlc::HlcStamp;
#[cfg(test)]
use crate::state::{KeyRange, StoreRead, Table};
