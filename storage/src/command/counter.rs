//! The counter payloads of a command (one change of a counter batch, [`super::Op::Counter`]), its
//! outcome, and why one is refused ([`CounterError`]).

use serde::{Deserialize, Serialize};

/// One counter change inside a [`crate::command::Op::Counter`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterOp {
    pub key: Vec<u8>,
    pub action: CounterAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterAction {
    /// Adds `delta` unless the result would leave `[min, max]` (each bound optional).
    Incr {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Sets the counter to `value` (a reset is `Set { value: 0 }`).
    Set { value: i64 },
    /// Gives `amount` of this region's escrow of the counter to region `to`: room toward the
    /// upper bound `max` when it is given, else room toward the lower bound `min` (default 0);
    /// this region's balance must stay on its side of its share of that bound (see
    /// `EscrowTransfers`).
    Transfer {
        to: u16,
        amount: u64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Adds `delta` to the window of length `window_ms` that holds the event time `at_ms` (the
    /// entry's time when `None`): a windowed counter, one bucket per window, each kept
    /// `retention_ms` after its window ends and then forgotten. An event whose window is no
    /// longer kept is refused ([`CounterOutcome::TooLate`]), as is one dated further ahead than
    /// [`crate::limits::COUNTER_WINDOW_AHEAD_MS`] ([`CounterOutcome::TooEarly`]). Buckets live
    /// apart from the plain counter of the same key.
    Window {
        delta: i64,
        window_ms: u64,
        retention_ms: u64,
        at_ms: Option<u64>,
    },
    /// Deletes the counter. Alone, its row (and any escrow row) goes; among regions, the counter is
    /// set to 0 instead and its row kept, so another region's earlier changes, merged later,
    /// cannot bring the old value back (see docs/data-types/counter.md).
    Delete,
    /// As [`CounterAction::Incr`], for a counter that expires: one that does not exist (or reads
    /// 0 without a TTL) is created expiring `ttl_ms` after the entry's time; one that exists keeps
    /// the expiry it was created with (as Redis's `EXPIRE ... NX`). A counter holding a value
    /// without a TTL is refused ([`CounterError::NotExpiring`]). Every change of a live expiring
    /// counter, with or without a TTL, changes it; at its expiry it reads 0 and is forgotten.
    IncrExpiring {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
        ttl_ms: u64,
    },
}

/// What happened to one [`CounterOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterOutcome {
    /// Applied; the counter's new value.
    Applied { value: i64 },
    /// Refused, nothing changed: the result would have crossed a bound. `value` is the current value.
    BoundExceeded { value: i64 },
    /// Refused, nothing changed: the result would leave the i64 range.
    Overflow { value: i64 },
    /// Refused, nothing changed: this region's escrow does not cover the change (its balance
    /// would cross its share of the bound); another region can transfer it some. `balance` is
    /// this region's balance toward that bound.
    EscrowExceeded { value: i64, balance: i64 },
    /// Refused, nothing changed: the event's window (starting at `window_start_ms`) is past its
    /// retention; the oldest window still kept starts at `oldest_kept_ms`.
    TooLate { window_start_ms: u64, oldest_kept_ms: u64 },
    /// Refused, nothing changed: the event is dated after `latest_accepted_ms` (the entry's
    /// time plus [`crate::limits::COUNTER_WINDOW_AHEAD_MS`]).
    TooEarly { at_ms: u64, latest_accepted_ms: u64 },
}

impl CounterOutcome {
    /// Whether the change was applied.
    pub fn is_applied(self) -> bool {
        matches!(self, CounterOutcome::Applied { .. })
    }
}

/// Why a counter change was refused, beyond the checks every type shares ([`super::OpError`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CounterError {
    #[error("escrow transfer refused: {reason}")]
    InvalidTransfer { reason: String },
    /// A TTL given to a counter that holds a value without one: its expiry is fixed when it is
    /// created. Delete it first, or change it without a TTL.
    #[error("counter {key:?} holds {value} without a TTL; a TTL is given when a counter is created (delete it first)")]
    NotExpiring { key: String, value: i64 },
    /// A bound on an expiring counter in a region among several: bounds among regions are kept
    /// by escrow, which expiring counters do not have (a rate limit is the bounded, expiring
    /// count across regions).
    #[error("counter {key:?} expires; among regions a bound on an expiring counter cannot be kept (use a rate limit)")]
    BoundOnExpiring { key: String },
}
