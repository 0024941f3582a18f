//! Counters: one at a time through [`CounterHandle`], or many per request through [`Counters`];
//! windowed counters (per-minute, per-hour, per-day buckets with a retention) through the same.

use std::time::Duration;

use crate::client::{millis, Client, ReadConsistency};
use crate::error::{ClientError, ErrorCode};
use crate::pb;
use crate::pb::counter_client::CounterClient;

/// A change to one counter, for [`Counters::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterOp {
    pub key: Vec<u8>,
    pub change: CounterChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterChange {
    /// Add `delta` unless the result would leave `[min, max]`. With regions, a change toward a
    /// bound must also stay within this region's escrow toward it (`ESCROW_EXCEEDED` otherwise),
    /// so that partitioned regions together never cross it.
    Incr {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Set the value (reset).
    Set(i64),
    /// With regions: give `amount` of this region's escrow to `to_region`, which may then take
    /// the counter that much closer to a bound: toward the upper bound `max` when it is given
    /// (this region's balance must stay at or below its share of it), else toward the lower bound
    /// `min` (default 0; the balance must stay at or above its share).
    Transfer {
        to_region: String,
        amount: u64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Add `delta` to the window of length `window` holding the event time `at_ms` (Unix ms;
    /// the cluster's time when `None`). Each window's bucket is kept `retention` after the window
    /// ends; an event for a window no longer kept is refused ([`CounterOutcome::TooLate`]), as
    /// is one dated more than five minutes ahead ([`CounterOutcome::TooEarly`]). Windows are
    /// aligned to the Unix epoch and live apart from the plain counter of the same key.
    Window {
        delta: i64,
        window: Duration,
        retention: Duration,
        at_ms: Option<u64>,
    },
    /// Delete the counter. Among regions it is set to 0 instead (its row stays, so another
    /// region's earlier changes cannot bring the old value back).
    Delete,
    /// As [`CounterChange::Incr`], for a counter that expires: a counter that does not exist is
    /// created expiring `ttl` after this change (at most a year); one that exists keeps the
    /// expiry it was created with (Redis's `INCR` then `EXPIRE ... NX`). Afterwards it reads 0
    /// and starts again. A counter holding a value without a TTL is refused
    /// (`COUNTER_NOT_EXPIRING`), and so is a zero TTL (`INVALID_TTL`); among regions a bound on
    /// an expiring counter is refused (`COUNTER_BOUND_ON_EXPIRING`: escrow keeps plain counters'
    /// bounds only; a rate limit is the bounded expiring count). Every other change of a live
    /// expiring counter keeps its expiry, a set included. A counter at 0 holds no TTL: reaching
    /// 0 by a change ends its expiry, as an absent counter reads 0 (among regions, a total that
    /// reaches 0 only by merging keeps its parts; see docs/data-types/counter.md).
    IncrExpiring {
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
        ttl: Duration,
    },
}

/// A counter as `get` reads it, with its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterValue {
    /// 0 for a counter never written or expired.
    pub value: i64,
    /// When an expiring counter expires (Unix ms); `None` without a TTL.
    pub expires_at_ms: Option<u64>,
}

/// Common window lengths for [`CounterChange::Window`].
pub mod window {
    use std::time::Duration;

    pub const MINUTE: Duration = Duration::from_secs(60);
    pub const HOUR: Duration = Duration::from_secs(3600);
    pub const DAY: Duration = Duration::from_secs(24 * 3600);
}

impl CounterOp {
    /// Adds `delta` to the window of length `window` holding `at_ms` (now when `None`), kept
    /// `retention` after it ends ([`CounterChange::Window`]).
    pub fn windowed(
        key: impl Into<Vec<u8>>,
        delta: i64,
        window: Duration,
        retention: Duration,
        at_ms: Option<u64>,
    ) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::Window {
                delta,
                window,
                retention,
                at_ms,
            },
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::Delete,
        }
    }

    pub fn incr(key: impl Into<Vec<u8>>, delta: i64) -> CounterOp {
        CounterOp::bounded(key, delta, None, None)
    }

    /// Adds `delta` to a counter that expires `ttl` after it is created
    /// ([`CounterChange::IncrExpiring`]).
    pub fn expiring(key: impl Into<Vec<u8>>, delta: i64, ttl: Duration) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::IncrExpiring {
                delta,
                min: None,
                max: None,
                ttl,
            },
        }
    }

    pub fn bounded(key: impl Into<Vec<u8>>, delta: i64, min: Option<i64>, max: Option<i64>) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::Incr { delta, min, max },
        }
    }

    pub fn set(key: impl Into<Vec<u8>>, value: i64) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::Set(value),
        }
    }

    /// Gives `amount` of this region's escrow of the counter toward `min` (or toward `max`, when
    /// given) to `to_region` (see [`CounterChange::Transfer`]).
    pub fn transfer(
        key: impl Into<Vec<u8>>,
        to_region: impl Into<String>,
        amount: u64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> CounterOp {
        CounterOp {
            key: key.into(),
            change: CounterChange::Transfer {
                to_region: to_region.into(),
                amount,
                min,
                max,
            },
        }
    }
}

/// What happened to one [`CounterOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOutcome {
    Applied {
        value: i64,
    },
    /// Nothing changed: the change would have crossed a bound. `value` is the current value.
    BoundExceeded {
        value: i64,
    },
    /// Nothing changed: the result would leave the i64 range.
    Overflow {
        value: i64,
    },
    /// Nothing changed: with regions, this region's escrow `balance` toward a bound does not
    /// cover a change toward it; another region can transfer it some.
    EscrowExceeded {
        value: i64,
        balance: i64,
    },
    /// Nothing changed: the event's window (starting at `window_start_ms`) is past its
    /// retention; the oldest window still kept starts at `oldest_kept_ms`.
    TooLate {
        window_start_ms: u64,
        oldest_kept_ms: u64,
    },
    /// Nothing changed: the event (at `at_ms`) is dated after `latest_accepted_ms`, the
    /// cluster's time plus five minutes.
    TooEarly {
        at_ms: u64,
        latest_accepted_ms: u64,
    },
}

/// The windows of one windowed counter read at once ([`CounterHandle::windows`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    /// `(window start, Unix ms; value)` of every kept window with a bucket, oldest first.
    pub windows: Vec<(u64, i64)>,
    /// Their sum, clamped to the i64 range.
    pub sum: i64,
}

impl From<CounterOp> for pb::CounterOp {
    fn from(op: CounterOp) -> pb::CounterOp {
        pb::CounterOp {
            key: op.key,
            action: Some(match op.change {
                CounterChange::Incr { delta, min, max } => {
                    pb::counter_op::Action::Incr(pb::CounterIncr { delta, min, max })
                }
                CounterChange::IncrExpiring { delta, min, max, ttl } => {
                    pb::counter_op::Action::IncrExpiring(pb::CounterIncrExpiring {
                        delta,
                        min,
                        max,
                        // A zero TTL goes as 0 and is refused (INVALID_TTL); a TTL under 1 ms
                        // is 1 ms, as for KV.
                        ttl_ms: if ttl.is_zero() { 0 } else { millis(ttl).max(1) },
                    })
                }
                CounterChange::Set(value) => pb::counter_op::Action::Set(value),
                CounterChange::Transfer {
                    to_region,
                    amount,
                    min,
                    max,
                } => pb::counter_op::Action::Transfer(pb::CounterTransfer {
                    to_region,
                    amount,
                    min,
                    max,
                }),
                CounterChange::Window {
                    delta,
                    window,
                    retention,
                    at_ms,
                } => pb::counter_op::Action::Window(pb::CounterWindowIncr {
                    delta,
                    window_ms: millis(window),
                    retention_ms: millis(retention),
                    at_ms,
                }),
                CounterChange::Delete => pb::counter_op::Action::Delete(pb::CounterDelete {}),
            }),
        }
    }
}

/// The outcomes of a counter batch's answer.
pub(crate) fn outcomes_of(reply: pb::CounterApplyResponse) -> Result<Vec<CounterOutcome>, ClientError> {
    reply
        .outcomes
        .into_iter()
        .map(|o| {
            use pb::counter_outcome::Status;
            match Status::try_from(o.status) {
                Ok(Status::Applied) => Ok(CounterOutcome::Applied { value: o.value }),
                Ok(Status::BoundExceeded) => Ok(CounterOutcome::BoundExceeded { value: o.value }),
                Ok(Status::Overflow) => Ok(CounterOutcome::Overflow { value: o.value }),
                Ok(Status::EscrowExceeded) => Ok(CounterOutcome::EscrowExceeded {
                    value: o.value,
                    balance: o.balance,
                }),
                Ok(Status::TooLate) => Ok(CounterOutcome::TooLate {
                    window_start_ms: o.event_ms,
                    oldest_kept_ms: o.accepted_ms,
                }),
                Ok(Status::TooEarly) => Ok(CounterOutcome::TooEarly {
                    at_ms: o.event_ms,
                    latest_accepted_ms: o.accepted_ms,
                }),
                Err(_) => Err(ClientError::Protocol(format!("unknown counter status {}", o.status))),
            }
        })
        .collect()
}

/// Batched counter operations. Get one with [`Client::counters`].
#[derive(Clone)]
pub struct Counters {
    pub(crate) client: Client,
}

impl Counters {
    /// Applies `ops` in order in one Raft entry, each applied or refused on its own, exactly once
    /// even when retried. One outcome per op.
    ///
    /// # Errors
    /// A bad op (`EMPTY_KEY`, `KEY_TOO_LARGE`, min > max: `OUT_OF_RANGE`) or an empty or oversize
    /// batch (`BATCH_TOO_LARGE`) refuses the whole request; nothing changes.
    pub async fn apply(&self, ops: Vec<CounterOp>) -> Result<Vec<CounterOutcome>, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::CounterApplyRequest {
            header: Some(header),
            ops: ops.into_iter().map(pb::CounterOp::from).collect(),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(CounterClient, c).apply(r).await
            })
            .await?;
        outcomes_of(reply)
    }

    /// Reads many counters (absent and expired ones read 0).
    pub async fn get(&self, keys: Vec<Vec<u8>>, consistency: ReadConsistency) -> Result<Vec<i64>, ClientError> {
        Ok(self
            .read(keys, consistency)
            .await?
            .into_iter()
            .map(|read| read.value)
            .collect())
    }

    /// Reads many counters with their expiries, all as of one applied entry.
    pub async fn read(
        &self,
        keys: Vec<Vec<u8>>,
        consistency: ReadConsistency,
    ) -> Result<Vec<CounterValue>, ClientError> {
        let asked = keys.len();
        let message = pb::CounterGetRequest {
            keys,
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(CounterClient, c).get(r).await
            })
            .await?;
        if reply.values.len() != asked || !(reply.expires_at_ms.is_empty() || reply.expires_at_ms.len() == asked) {
            return Err(ClientError::Protocol(format!(
                "counter reply has {} values and {} expiries for {asked} keys",
                reply.values.len(),
                reply.expires_at_ms.len()
            )));
        }
        // A node without expiring counters sends no expiries.
        let expiries = reply.expires_at_ms.into_iter().chain(std::iter::repeat(0));
        Ok(reply
            .values
            .into_iter()
            .zip(expiries)
            .map(|(value, at)| CounterValue {
                value,
                expires_at_ms: (at > 0).then_some(at),
            })
            .collect())
    }
}

/// One counter. Get one with [`Client::counter`].
#[derive(Clone)]
pub struct CounterHandle {
    pub(crate) client: Client,
    pub(crate) key: Vec<u8>,
}

impl CounterHandle {
    /// Applies one change; returns the new value, or the refusal as an error (use
    /// [`Counters::apply`] to get refusals typed).
    pub async fn apply(&self, change: CounterChange) -> Result<i64, ClientError> {
        self.apply_one(change).await
    }

    async fn apply_one(&self, change: CounterChange) -> Result<i64, ClientError> {
        let op = CounterOp {
            key: self.key.clone(),
            change: change.clone(),
        };
        let outcome = self.client.counters().apply(vec![op]).await?;
        let key = String::from_utf8_lossy(&self.key);
        match outcome.as_slice() {
            [CounterOutcome::Applied { value }] => Ok(*value),
            [CounterOutcome::BoundExceeded { value }] => Err(ClientError::Rejected {
                code: ErrorCode::BoundExceeded,
                message: format!("counter {key:?}: {change:?} would cross a bound; current value {value}"),
            }),
            [CounterOutcome::EscrowExceeded { value, balance }] => Err(ClientError::Rejected {
                code: ErrorCode::EscrowExceeded,
                message: format!(
                    "counter {key:?}: {change:?} is beyond this region's escrow (balance {balance}); \
                     current value {value}"
                ),
            }),
            [CounterOutcome::Overflow { value }] => Err(ClientError::Rejected {
                code: ErrorCode::CounterOverflow,
                message: format!("counter {key:?}: {change:?} would overflow; current value {value}"),
            }),
            [CounterOutcome::TooLate {
                window_start_ms,
                oldest_kept_ms,
            }] => Err(ClientError::Rejected {
                code: ErrorCode::WindowClosed,
                message: format!(
                    "counter {key:?}: the window starting at {window_start_ms} ms is past its retention; \
                     the oldest kept starts at {oldest_kept_ms} ms"
                ),
            }),
            [CounterOutcome::TooEarly {
                at_ms,
                latest_accepted_ms,
            }] => Err(ClientError::Rejected {
                code: ErrorCode::WindowNotOpen,
                message: format!(
                    "counter {key:?}: an event at {at_ms} ms is dated after the latest accepted, \
                     {latest_accepted_ms} ms"
                ),
            }),
            other => Err(ClientError::Protocol(format!("expected one outcome, got {other:?}"))),
        }
    }

    /// Adds `delta` (may be negative); returns the new value. Applied exactly once, even when
    /// retried.
    ///
    /// # Errors
    /// `COUNTER_OVERFLOW` when the result would leave the i64 range (nothing changes).
    pub async fn incr(&self, delta: i64) -> Result<i64, ClientError> {
        self.apply_one(CounterChange::Incr {
            delta,
            min: None,
            max: None,
        })
        .await
    }

    /// Adds `delta` unless the result would leave `[min, max]`.
    ///
    /// # Errors
    /// `BOUND_EXCEEDED` (nothing changes; the message carries the current value; use
    /// [`Counters::apply`] to get it typed).
    pub async fn incr_bounded(&self, delta: i64, min: Option<i64>, max: Option<i64>) -> Result<i64, ClientError> {
        self.apply_one(CounterChange::Incr { delta, min, max }).await
    }

    /// With regions: gives `amount` of this region's escrow of the counter to `to_region`
    /// ([`CounterChange::Transfer`]); returns the counter's value.
    ///
    /// # Errors
    /// `ESCROW_EXCEEDED` when this region's balance would fall below its share of `min`;
    /// `INVALID_ARGUMENT` without regions or for an unknown region.
    pub async fn transfer_escrow(&self, to_region: &str, amount: u64, min: Option<i64>) -> Result<i64, ClientError> {
        self.apply_one(CounterChange::Transfer {
            to_region: to_region.to_string(),
            amount,
            min,
            max: None,
        })
        .await
    }

    /// With regions: gives `amount` of this region's room toward the upper bound `max` to
    /// `to_region`, which may then take the counter that much higher; returns the value.
    ///
    /// # Errors
    /// As [`CounterHandle::transfer_escrow`].
    pub async fn transfer_headroom(&self, to_region: &str, amount: u64, max: i64) -> Result<i64, ClientError> {
        self.apply_one(CounterChange::Transfer {
            to_region: to_region.to_string(),
            amount,
            min: None,
            max: Some(max),
        })
        .await
    }

    /// Adds `delta` to a counter that expires `ttl` after it is created; returns the new value
    /// ([`CounterChange::IncrExpiring`]). An existing expiring counter keeps its expiry: the
    /// "N failed logins in 10 minutes" count.
    ///
    /// # Errors
    /// `COUNTER_NOT_EXPIRING` when the counter holds a value without a TTL; `INVALID_TTL` for a
    /// zero TTL or one over a year; among regions `COUNTER_BOUND_ON_EXPIRING` for a bound.
    pub async fn incr_expiring(&self, delta: i64, ttl: Duration) -> Result<i64, ClientError> {
        self.apply_one(CounterOp::expiring(Vec::new(), delta, ttl).change).await
    }

    /// The counter's value and expiry (linearizable).
    pub async fn read(&self) -> Result<CounterValue, ClientError> {
        let reads = self
            .client
            .counters()
            .read(vec![self.key.clone()], ReadConsistency::Linearizable)
            .await?;
        reads
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("no value in counter reply".into()))
    }

    /// Sets the counter to 0.
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.apply_one(CounterChange::Set(0)).await.map(|_| ())
    }

    /// Deletes the counter ([`CounterChange::Delete`]): it reads 0 afterwards.
    pub async fn delete(&self) -> Result<(), ClientError> {
        self.apply_one(CounterChange::Delete).await.map(|_| ())
    }

    /// Adds `delta` to the window of length `window` holding `at_ms` (now when `None`), kept
    /// `retention` after it ends; returns the new value of that window's bucket of this retention
    /// (changes asking other retentions are buckets of their own, which [`Self::windows`] adds).
    ///
    /// # Errors
    /// `WINDOW_CLOSED` when the window is past its retention, `WINDOW_NOT_OPEN` when `at_ms` is
    /// more than five minutes ahead (nothing changes; use [`Counters::apply`] to get them typed);
    /// `OUT_OF_RANGE` for a window outside one second ..= one week or a retention over a year.
    pub async fn incr_window(
        &self,
        delta: i64,
        window: Duration,
        retention: Duration,
        at_ms: Option<u64>,
    ) -> Result<i64, ClientError> {
        self.apply_one(CounterChange::Window {
            delta,
            window,
            retention,
            at_ms,
        })
        .await
    }

    /// The kept windows of length `window` overlapping `[from_ms, to_ms)` (Unix ms), each and
    /// their sum, in one read (linearizable).
    ///
    /// # Errors
    /// `OUT_OF_RANGE` when `from_ms >= to_ms`, the window is out of range, or the range covers
    /// more than 10,080 windows.
    pub async fn windows(&self, window: Duration, from_ms: u64, to_ms: u64) -> Result<Windows, ClientError> {
        self.windows_with(window, from_ms, to_ms, ReadConsistency::Linearizable)
            .await
    }

    pub async fn windows_with(
        &self,
        window: Duration,
        from_ms: u64,
        to_ms: u64,
        consistency: ReadConsistency,
    ) -> Result<Windows, ClientError> {
        let message = pb::CounterWindowsRequest {
            key: self.key.clone(),
            window_ms: millis(window),
            from_ms,
            to_ms,
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(CounterClient, c).windows(r).await
            })
            .await?;
        Ok(Windows {
            windows: reply.windows.into_iter().map(|w| (w.start_ms, w.value)).collect(),
            sum: reply.sum,
        })
    }

    pub async fn get(&self) -> Result<i64, ClientError> {
        self.get_with(ReadConsistency::Linearizable).await
    }

    pub async fn get_with(&self, consistency: ReadConsistency) -> Result<i64, ClientError> {
        let values = self.client.counters().get(vec![self.key.clone()], consistency).await?;
        values
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("no value in counter reply".into()))
    }
}
