//! Windowed counters: one bucket per (key, window length, window start, retention), each a
//! PN-counter so that regions merge it like a plain counter, kept for its retention after its
//! window ends and then swept. Which bucket an event goes to, and whether it is still accepted,
//! are decided by the pure functions [`admit`] and [`oldest_kept_start`], tested on their own.
//!
//! Time is the entry's time (`OpContext::now_ms`, the leader's HLC), so every replica of a region
//! decides lateness alike. A bucket's life is a function of its key alone: it is forgotten at
//! `start + window + retention` ([`forget_at`]), in every region. A change asking another
//! retention goes to another bucket of the same window (reads add them up), so no change can
//! move a bucket's forget time. A change for a bucket past that time is refused, and a component
//! another region ships for one is dropped: once forgotten, a bucket never comes back.
//!
//! Expiring counters live here too. A plain counter created with a TTL is a series of window
//! length 0 beside its key's windowed series: one row per incarnation, keyed by its expiry
//! ([`incarnation_key`]) and forgotten then. Its expiry is fixed when it is created (a later
//! change does not move it, as with Redis's `EXPIRE ... NX`), so, as for a bucket, a row's life is
//! a function of its key: every region forgets it at once and drops components shipped for it
//! later, and the feed, the merge, the sweep and the digest are the buckets'. Regions that create
//! the same counter concurrently create two incarnations; the counter is their sum, each counted
//! until its own expiry.

use basalt_replication::{Component, PnCounter, RegionId};

use super::counter::{decode_pn, encode_pn, value_of};
use super::{last_applied_stamp, lossy, View};
use crate::command::{CounterOutcome, OpError, Response};
use crate::limits::{
    COUNTER_RETENTION_MS_MAX, COUNTER_WINDOWS_READ_MAX, COUNTER_WINDOW_AHEAD_MS, COUNTER_WINDOW_MS_MAX,
    COUNTER_WINDOW_MS_MIN,
};
use crate::state::{KeyRange, StoreError, StoreRead, Table, ViewSource};

/// The windows of one key and window length read at once: every bucket kept in the range, oldest
/// first, as `(window start ms, value)`, and their sum (clamped to the i64 range).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowsRead {
    pub windows: Vec<(u64, i64)>,
    pub sum: i64,
}

/// The start of the window of length `window_ms` holding `at_ms` (windows are aligned to the
/// Unix epoch, so every region and client agrees on them).
pub fn window_start(at_ms: u64, window_ms: u64) -> u64 {
    // A zero window is refused before any op or read gets here; it would be one window of all time.
    at_ms - at_ms.checked_rem(window_ms).unwrap_or(at_ms)
}

/// When the bucket of the window starting at `start_ms` kept `retention_ms` is forgotten.
pub fn forget_at(start_ms: u64, window_ms: u64, retention_ms: u64) -> u64 {
    start_ms.saturating_add(window_ms).saturating_add(retention_ms)
}

/// The start of the oldest window still kept at `now_ms`: the first whose end plus `retention_ms`
/// is after now.
pub fn oldest_kept_start(now_ms: u64, window_ms: u64, retention_ms: u64) -> u64 {
    match now_ms.checked_sub(window_ms.saturating_add(retention_ms)) {
        None => 0,
        Some(before) => (before / window_ms + 1) * window_ms,
    }
}

/// Where an event dated `at_ms` goes at `now_ms`: its window's start and the bucket's forget
/// time, or the refusal (too late: the window is past its retention; too early: dated beyond
/// [`COUNTER_WINDOW_AHEAD_MS`] ahead).
pub fn admit(now_ms: u64, at_ms: u64, window_ms: u64, retention_ms: u64) -> Result<(u64, u64), CounterOutcome> {
    let latest_accepted_ms = now_ms.saturating_add(COUNTER_WINDOW_AHEAD_MS);
    if at_ms > latest_accepted_ms {
        return Err(CounterOutcome::TooEarly {
            at_ms,
            latest_accepted_ms,
        });
    }
    let start = window_start(at_ms, window_ms);
    let forget_at_ms = forget_at(start, window_ms, retention_ms);
    if forget_at_ms <= now_ms {
        return Err(CounterOutcome::TooLate {
            window_start_ms: start,
            oldest_kept_ms: oldest_kept_start(now_ms, window_ms, retention_ms),
        });
    }
    Ok((start, forget_at_ms))
}

/// The refusal of a window length or retention out of range.
pub fn check_window(window_ms: u64, retention_ms: u64) -> Result<(), OpError> {
    if !(COUNTER_WINDOW_MS_MIN..=COUNTER_WINDOW_MS_MAX).contains(&window_ms) {
        return Err(OpError::OutOfRange {
            what: "counter window".into(),
            expected: format!("{COUNTER_WINDOW_MS_MIN}..={COUNTER_WINDOW_MS_MAX} ms"),
            got: format!("{window_ms} ms"),
        });
    }
    if retention_ms > COUNTER_RETENTION_MS_MAX {
        return Err(OpError::OutOfRange {
            what: "counter window retention".into(),
            expected: format!("<= {COUNTER_RETENTION_MS_MAX} ms"),
            got: format!("{retention_ms} ms"),
        });
    }
    Ok(())
}

/// The refusal of a read of windows `[from_ms, to_ms)` that is empty or covers more than
/// [`COUNTER_WINDOWS_READ_MAX`] windows.
pub fn check_read(window_ms: u64, from_ms: u64, to_ms: u64) -> Result<(), OpError> {
    check_window(window_ms, 0)?;
    if from_ms >= to_ms {
        return Err(OpError::OutOfRange {
            what: "counter window range".into(),
            expected: "from < to".into(),
            got: format!("from {from_ms} ms, to {to_ms} ms"),
        });
    }
    let windows = (to_ms - window_start(from_ms, window_ms)).div_ceil(window_ms);
    if windows > COUNTER_WINDOWS_READ_MAX {
        return Err(OpError::OutOfRange {
            what: "counter windows read at once".into(),
            expected: format!("<= {COUNTER_WINDOWS_READ_MAX}"),
            got: windows.to_string(),
        });
    }
    Ok(())
}

/// The key of the series of `key`'s windows of length `window_ms`: the key's length (u16 BE, so
/// one key is never a prefix of another's series), the key, the window length.
fn series_prefix(key: &[u8], window_ms: u64) -> Vec<u8> {
    // Keys are at most KEY_BYTES_MAX (4 KiB), checked before any op reaches here.
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let mut prefix = Vec::with_capacity(2 + key.len() + 8);
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(key);
    prefix.extend_from_slice(&window_ms.to_be_bytes());
    prefix
}

/// The key of one bucket: its series, the window start (BE, so a series reads in order), the
/// retention (BE; buckets of one window with different retentions sit side by side).
pub fn bucket_key(key: &[u8], window_ms: u64, start_ms: u64, retention_ms: u64) -> Vec<u8> {
    let mut bucket = series_prefix(key, window_ms);
    bucket.extend_from_slice(&start_ms.to_be_bytes());
    bucket.extend_from_slice(&retention_ms.to_be_bytes());
    bucket
}

/// One bucket key, taken apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket<'a> {
    pub key: &'a [u8],
    pub window_ms: u64,
    pub start_ms: u64,
    pub retention_ms: u64,
}

impl Bucket<'_> {
    pub fn forget_at_ms(&self) -> u64 {
        forget_at(self.start_ms, self.window_ms, self.retention_ms)
    }
}

/// A bucket key taken apart; `None` if it is not one (checked by its structure only: a limit
/// changed by a later build must not change what replicas of mixed builds decide).
pub fn split_bucket_key(bucket: &[u8]) -> Option<Bucket<'_>> {
    let (len, rest) = bucket.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (key, rest) = rest.split_at_checked(len)?;
    let (window, rest) = rest.split_first_chunk::<8>()?;
    let (start, rest) = rest.split_first_chunk::<8>()?;
    let retention: [u8; 8] = rest.try_into().ok()?;
    let parts = Bucket {
        key,
        window_ms: u64::from_be_bytes(*window),
        start_ms: u64::from_be_bytes(*start),
        retention_ms: u64::from_be_bytes(retention),
    };
    let window = parts.window_ms > 0 && parts.start_ms.is_multiple_of(parts.window_ms);
    let incarnation = parts.window_ms == 0 && parts.retention_ms == 0;
    (!key.is_empty() && (window || incarnation)).then_some(parts)
}

/// The row of the incarnation of expiring counter `key` that expires at `expires_at_ms`: a
/// bucket of window length 0 whose start is its expiry, so its forget time is that expiry.
pub fn incarnation_key(key: &[u8], expires_at_ms: u64) -> Vec<u8> {
    bucket_key(key, 0, expires_at_ms, 0)
}

/// One incarnation of an expiring counter: its row, its expiry and its components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    pub raw: Vec<u8>,
    pub expires_at_ms: u64,
    pub counter: PnCounter,
}

impl Incarnation {
    /// A new, empty incarnation of `key` expiring at `expires_at_ms`.
    pub fn new(key: &[u8], expires_at_ms: u64) -> Incarnation {
        Incarnation {
            raw: incarnation_key(key, expires_at_ms),
            expires_at_ms,
            counter: PnCounter::default(),
        }
    }
}

/// An incarnation row as stored: `(row key, expiry ms, stored bytes)`.
type IncarnationRow = (Vec<u8>, u64, Vec<u8>);

/// The incarnation rows of expiring counter `key` not expired at `now_ms` (expiring after it),
/// earliest expiry first, each as `(row key, expiry, stored bytes)`; rows past their expiry but
/// not yet swept are left out. Usually none or one; one more per region that created the
/// counter concurrently.
fn incarnation_rows<R: StoreRead + ?Sized>(
    reads: &R,
    key: &[u8],
    now_ms: u64,
) -> Result<Vec<IncarnationRow>, StoreError> {
    let range = KeyRange::between(
        incarnation_key(key, now_ms.saturating_add(1)),
        // The series of window length 1 sorts right after every incarnation of `key`.
        series_prefix(key, 1),
    );
    Ok(reads
        .scan(Table::CounterWindow, &range, usize::MAX)?
        .into_iter()
        .filter_map(|(raw, bytes)| {
            let expires_at_ms = split_bucket_key(&raw).filter(|b| b.window_ms == 0)?.start_ms;
            Some((raw, expires_at_ms, bytes))
        })
        .collect())
}

/// The incarnations of expiring counter `key` not expired at `now_ms`, earliest expiry first
/// (see [`incarnation_rows`]), zero-valued ones included; for reads, where a row that does not
/// decode is a [`StoreError::CorruptRecord`] naming it.
pub fn unexpired_incarnations<R: StoreRead + ?Sized>(
    reads: &R,
    key: &[u8],
    now_ms: u64,
) -> Result<Vec<Incarnation>, StoreError> {
    incarnation_rows(reads, key, now_ms)?
        .into_iter()
        .map(|(raw, expires_at_ms, bytes)| {
            let counter = decode_pn(&bytes).map_err(|e| super::corrupt(Table::CounterWindow, &raw, e))?;
            Ok(Incarnation {
                raw,
                expires_at_ms,
                counter,
            })
        })
        .collect()
}

/// As [`unexpired_incarnations`], for the apply logic: a row that does not decode is the
/// refusal naming it (`CorruptValue`), so one bad row refuses the ops on its counter instead of
/// halting the state machine.
pub(crate) fn unexpired_incarnations_or_refusal<R: StoreRead + ?Sized>(
    reads: &R,
    key: &[u8],
    now_ms: u64,
) -> Result<Result<Vec<Incarnation>, OpError>, StoreError> {
    let mut incarnations = Vec::new();
    for (raw, expires_at_ms, bytes) in incarnation_rows(reads, key, now_ms)? {
        match decode_pn(&bytes) {
            Ok(counter) => incarnations.push(Incarnation {
                raw,
                expires_at_ms,
                counter,
            }),
            Err(e) => {
                return Ok(Err(OpError::CorruptValue {
                    key: lossy(key),
                    reason: format!(
                    "expiring-counter incarnation (expiring at {expires_at_ms} ms, row {raw:02x?}) of {} bytes: {e}",
                    bytes.len()
                ),
                }))
            }
        }
    }
    Ok(Ok(incarnations))
}

/// Removes every unexpired incarnation row of `key` with its expiry index row, whether or not it
/// decodes (a lone region's delete). Expired rows are the sweep's.
pub(crate) fn remove_incarnations<S: StoreRead>(
    view: &mut View<'_, S>,
    key: &[u8],
    now_ms: u64,
) -> Result<(), StoreError> {
    for (raw, expires_at_ms, _) in incarnation_rows(&*view, key, now_ms)? {
        view.delete(
            Table::CounterWindowExpiry,
            expiry_key(forget_at(expires_at_ms, 0, 0), &raw),
        );
        view.delete(Table::CounterWindow, raw);
    }
    Ok(())
}

/// Stores `incarnation` of `key`, indexing its expiry when it is `new`.
pub(crate) fn store_incarnation<S: StoreRead>(
    view: &mut View<'_, S>,
    key: &[u8],
    incarnation: &Incarnation,
    new: bool,
) {
    let bucket = Bucket {
        key,
        window_ms: 0,
        start_ms: incarnation.expires_at_ms,
        retention_ms: 0,
    };
    store(view, &bucket, &incarnation.raw, new, &incarnation.counter);
}

fn expiry_key(forget_at_ms: u64, bucket: &[u8]) -> Vec<u8> {
    let mut index = forget_at_ms.to_be_bytes().to_vec();
    index.extend_from_slice(bucket);
    index
}

/// The bucket stored under `bucket`, if any; a row that does not decode is the refusal naming it.
fn load_bucket<S: StoreRead>(
    view: &View<'_, S>,
    bucket: &[u8],
) -> Result<Result<Option<PnCounter>, OpError>, StoreError> {
    Ok(match view.get(Table::CounterWindow, bucket)? {
        None => Ok(None),
        Some(bytes) => decode_pn(&bytes).map(Some).map_err(|e| OpError::CorruptValue {
            key: lossy(bucket),
            reason: format!("windowed-counter bucket of {} bytes: {e}", bytes.len()),
        }),
    })
}

/// Stores `counter` as `bucket`, indexing its forget time when the bucket is new.
fn store<S: StoreRead>(view: &mut View<'_, S>, bucket: &Bucket<'_>, raw: &[u8], new: bool, counter: &PnCounter) {
    if new {
        view.put(
            Table::CounterWindowExpiry,
            expiry_key(bucket.forget_at_ms(), raw),
            Vec::new(),
        );
    }
    view.put(Table::CounterWindow, raw.to_vec(), encode_pn(counter));
}

/// Adds `delta` to the bucket of the event dated `at_ms`, as region `region`'s change, at entry
/// time `now_ms`. The outcome is the bucket's new value, or the refusal (nothing changed); a
/// stored bucket that does not decode refuses the whole request.
#[allow(clippy::too_many_arguments)]
pub(crate) fn incr<S: StoreRead>(
    view: &mut View<'_, S>,
    region: RegionId,
    now_ms: u64,
    key: &[u8],
    delta: i64,
    window_ms: u64,
    retention_ms: u64,
    at_ms: u64,
) -> Result<Result<CounterOutcome, OpError>, StoreError> {
    let start_ms = match admit(now_ms, at_ms, window_ms, retention_ms) {
        Ok((start, _)) => start,
        Err(refused) => return Ok(Ok(refused)),
    };
    let raw = bucket_key(key, window_ms, start_ms, retention_ms);
    let stored = match load_bucket(view, &raw)? {
        Ok(stored) => stored,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let new = stored.is_none();
    let mut counter = stored.unwrap_or_default();
    let current = value_of(&counter);
    let Some(value) = current.checked_add(delta) else {
        return Ok(Ok(CounterOutcome::Overflow { value: current }));
    };
    counter.add(region, i128::from(delta));
    let bucket = Bucket {
        key,
        window_ms,
        start_ms,
        retention_ms,
    };
    store(view, &bucket, &raw, new, &counter);
    Ok(Ok(CounterOutcome::Applied { value }))
}

/// Merges region `region`'s `component` of bucket `raw` at entry time `now_ms`. A bucket past its
/// forget time here, or a key that is not a bucket, is dropped: it is never brought back.
pub(crate) fn merge<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    raw: &[u8],
    region: RegionId,
    component: Component,
) -> Result<(), StoreError> {
    let Some(bucket) = split_bucket_key(raw) else {
        return Ok(());
    };
    if bucket.forget_at_ms() <= now_ms {
        return Ok(());
    }
    let stored = match view.get(Table::CounterWindow, raw)? {
        None => None,
        Some(bytes) => Some(decode_pn(&bytes).map_err(|e| super::corrupt(Table::CounterWindow, raw, e))?),
    };
    let new = stored.is_none();
    let mut counter = stored.unwrap_or_default();
    counter.merge_component(region, component);
    store(view, &bucket, raw, new, &counter);
    Ok(())
}

/// This region's component of a stored bucket: what the feed ships.
pub(crate) fn own_component(bytes: &[u8], raw: &[u8], region: RegionId) -> Result<Component, StoreError> {
    let counter = decode_pn(bytes).map_err(|e| super::corrupt(Table::CounterWindow, raw, e))?;
    Ok(counter.component(region))
}

/// Forgets buckets whose forget time has come, at most `limit` of them.
pub(crate) fn sweep<S: StoreRead>(view: &mut View<'_, S>, now_ms: u64, limit: u32) -> Result<Response, StoreError> {
    let due_range = KeyRange::between(Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec());
    let mut removed = 0u32;
    for (index_key, _) in view.scan(Table::CounterWindowExpiry, &due_range, limit as usize)? {
        view.delete(Table::CounterWindowExpiry, index_key.clone());
        let Some((_, raw)) = index_key.split_first_chunk::<8>() else {
            continue;
        };
        // A bucket's forget time never moves: its index entry is its only one.
        if view.get(Table::CounterWindow, raw)?.is_some() {
            view.delete(Table::CounterWindow, raw.to_vec());
            removed += 1;
        }
    }
    Ok(Response::Swept { removed })
}

/// Whether a stored bucket is past its forget time at applied time `applied_ms`: kept until the
/// sweep removes it, but no longer one of the counter's windows.
pub(crate) fn forgotten(raw: &[u8], applied_ms: u64) -> bool {
    split_bucket_key(raw).is_none_or(|b| b.forget_at_ms() <= applied_ms)
}

/// The kept windows of `key` of length `window_ms` that overlap `[from_ms, to_ms)`, all from one
/// view, each the sum of its buckets (one per retention asked). Buckets past their forget time at
/// the view's applied time are left out, swept or not. Checked with [`check_read`] first.
pub fn read<S: ViewSource + ?Sized>(
    source: &S,
    key: &[u8],
    window_ms: u64,
    from_ms: u64,
    to_ms: u64,
) -> Result<WindowsRead, StoreError> {
    let view = source.view();
    let applied_ms = last_applied_stamp(&view)?.physical_ms();
    let range = KeyRange::between(
        bucket_key(key, window_ms, window_start(from_ms, window_ms), 0),
        bucket_key(key, window_ms, to_ms, 0),
    );
    let clamp = |v: i128| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
    // Totals in i128, clamped once: a window's buckets may pass the i64 range only together.
    let mut windows: Vec<(u64, i128)> = Vec::new();
    for (raw, bytes) in view.scan(Table::CounterWindow, &range, usize::MAX)? {
        let Some(bucket) = split_bucket_key(&raw).filter(|b| b.forget_at_ms() > applied_ms) else {
            continue;
        };
        let counter = decode_pn(&bytes).map_err(|e| super::corrupt(Table::CounterWindow, &raw, e))?;
        let value = i128::from(value_of(&counter));
        match windows.last_mut() {
            Some((start, total)) if *start == bucket.start_ms => *total += value,
            _ => windows.push((bucket.start_ms, value)),
        }
    }
    Ok(WindowsRead {
        sum: clamp(windows.iter().map(|(_, total)| total).sum()),
        windows: windows
            .into_iter()
            .map(|(start, total)| (start, clamp(total)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;

    #[test]
    fn an_event_goes_to_the_window_holding_it_and_is_kept_for_the_retention() {
        let now = 10 * MINUTE + 30_000;
        assert_eq!(admit(now, now, MINUTE, 5 * MINUTE), Ok((10 * MINUTE, 16 * MINUTE)));
        // Four minutes late is inside a five-minute retention.
        assert_eq!(
            admit(now, 6 * MINUTE + 1, MINUTE, 5 * MINUTE),
            Ok((6 * MINUTE, 12 * MINUTE))
        );
        // The window [4, 5) min ended 5.5 min ago: past a five-minute retention.
        assert_eq!(
            admit(now, 4 * MINUTE + 59_999, MINUTE, 5 * MINUTE),
            Err(CounterOutcome::TooLate {
                window_start_ms: 4 * MINUTE,
                oldest_kept_ms: 5 * MINUTE,
            })
        );
        // A retention of zero keeps only the open window.
        assert!(admit(now, 9 * MINUTE, MINUTE, 0).is_err());
        assert_eq!(
            admit(now, now + COUNTER_WINDOW_AHEAD_MS + 1, MINUTE, 0),
            Err(CounterOutcome::TooEarly {
                at_ms: now + COUNTER_WINDOW_AHEAD_MS + 1,
                latest_accepted_ms: now + COUNTER_WINDOW_AHEAD_MS,
            })
        );
        assert!(admit(now, now + COUNTER_WINDOW_AHEAD_MS, MINUTE, 0).is_ok());
    }

    #[test]
    fn bucket_keys_round_trip_and_keep_series_apart() {
        let bucket = bucket_key(b"usage/t1", MINUTE, 42 * MINUTE, HOUR);
        assert_eq!(
            split_bucket_key(&bucket),
            Some(Bucket {
                key: b"usage/t1",
                window_ms: MINUTE,
                start_ms: 42 * MINUTE,
                retention_ms: HOUR,
            })
        );
        assert_eq!(
            split_bucket_key(&bucket).map(|b| b.forget_at_ms()),
            Some(43 * MINUTE + HOUR)
        );
        // A zero window is an expiring counter's incarnation, forgotten at its expiry, if its
        // retention is 0.
        let raw = incarnation_key(b"k", 42);
        let incarnation = split_bucket_key(&raw).expect("incarnation");
        assert_eq!((incarnation.window_ms, incarnation.forget_at_ms()), (0, 42));
        assert_eq!(split_bucket_key(&bucket_key(b"k", 0, 42, 1)), None);
        // Not buckets: a start off the window's grid, an empty key.
        assert_eq!(split_bucket_key(&bucket_key(b"k", MINUTE, 5, 0)), None);
        assert_eq!(split_bucket_key(&bucket_key(b"", MINUTE, 0, 0)), None);
        // "a" with a window whose bytes start like "b..." cannot collide with key "ab": the
        // length comes first.
        assert!(!bucket_key(b"ab", MINUTE, 0, 0).starts_with(&series_prefix(b"a", MINUTE)));
        assert_eq!(split_bucket_key(&bucket[..bucket.len() - 1]), None);
        assert_eq!(split_bucket_key(&[0, 9, 1]), None);
    }

    #[test]
    fn reads_and_windows_out_of_range_are_refused() {
        assert!(check_window(COUNTER_WINDOW_MS_MIN - 1, 0).is_err());
        assert!(check_window(COUNTER_WINDOW_MS_MAX + 1, 0).is_err());
        assert!(check_window(MINUTE, COUNTER_RETENTION_MS_MAX + 1).is_err());
        assert!(check_window(MINUTE, COUNTER_RETENTION_MS_MAX).is_ok());
        assert!(check_read(MINUTE, 5, 5).is_err());
        assert!(check_read(MINUTE, 0, COUNTER_WINDOWS_READ_MAX * MINUTE).is_ok());
        assert!(check_read(MINUTE, 0, COUNTER_WINDOWS_READ_MAX * MINUTE + 1).is_err());
    }

    proptest! {
        /// Admission agrees with the oldest kept window: an event is too late exactly when its
        /// window starts before it, and an admitted bucket is forgotten after now.
        #[test]
        fn admission_and_the_oldest_kept_window_agree(
            now in 0u64..1u64 << 44,
            back in 0u64..1u64 << 34,
            window in COUNTER_WINDOW_MS_MIN..COUNTER_WINDOW_MS_MAX,
            retention in 0u64..COUNTER_RETENTION_MS_MAX,
        ) {
            let at = now.saturating_sub(back);
            let oldest = oldest_kept_start(now, window, retention);
            prop_assert_eq!(oldest % window, 0);
            match admit(now, at, window, retention) {
                Ok((start, forget_at)) => {
                    prop_assert!(start >= oldest);
                    prop_assert!(start <= at && at < start + window);
                    prop_assert!(forget_at > now);
                }
                Err(CounterOutcome::TooLate { window_start_ms, oldest_kept_ms }) => {
                    prop_assert!(window_start_ms < oldest_kept_ms);
                    prop_assert_eq!(oldest_kept_ms, oldest);
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
