//! Hybrid logical clock.
//!
//! A stamp is a `u64`: milliseconds since the Unix epoch in the upper 48 bits and a logical counter
//! in the lower 16. Stamps from one clock strictly increase, and a clock that observes a stamp never
//! issues a smaller one afterwards, so a new leader's stamps follow its predecessor's entries even
//! when its wall clock is behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct HlcStamp(pub u64);

impl HlcStamp {
    pub fn from_parts(physical_ms: u64, logical: u16) -> Self {
        assert!(physical_ms < (1 << (64 - LOGICAL_BITS)), "physical time out of range");
        HlcStamp((physical_ms << LOGICAL_BITS) | u64::from(logical))
    }

    /// Wall-clock milliseconds of this stamp: the time TTLs and expiries are measured in.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
}

/// Returns the next stamp after `last` given the wall clock `wall_ms`: pure, so it is unit-tested.
pub fn next_stamp(last: HlcStamp, wall_ms: u64) -> HlcStamp {
    let candidate = HlcStamp::from_parts(wall_ms, 0);
    if candidate > last {
        candidate
    } else {
        HlcStamp(last.0 + 1)
    }
}

/// A thread-safe hybrid logical clock over the system wall clock.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
    /// Added to the wall clock: lets tests and `basalt dev` give one region a clock that is off
    /// by seconds, as real regions' clocks can be.
    skew_ms: i64,
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose wall-clock reading is off by `skew_ms`.
    pub fn with_skew(skew_ms: i64) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            skew_ms,
        }
    }

    /// The wall clock as this clock reads it (skew included), in milliseconds.
    pub fn wall_ms(&self) -> u64 {
        wall_clock_ms().saturating_add_signed(self.skew_ms)
    }

    /// Issues a stamp greater than every stamp issued or observed before.
    pub fn now(&self) -> HlcStamp {
        let wall_ms = self.wall_ms();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = next_stamp(HlcStamp(last), wall_ms);
            match self
                .last
                .compare_exchange_weak(last, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock forward past a stamp seen elsewhere (an applied entry).
    pub fn observe(&self, stamp: HlcStamp) {
        self.last.fetch_max(stamp.0, Ordering::AcqRel);
    }
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stamp_follows_wall_clock_when_ahead() {
        let last = HlcStamp::from_parts(1_000, 7);
        assert_eq!(next_stamp(last, 2_000), HlcStamp::from_parts(2_000, 0));
    }

    #[test]
    fn next_stamp_ticks_logically_when_wall_clock_is_behind() {
        let last = HlcStamp::from_parts(5_000, 3);
        let next = next_stamp(last, 4_000);
        assert_eq!(next, HlcStamp::from_parts(5_000, 4));
        assert_eq!(next.physical_ms(), 5_000);
    }

    #[test]
    fn observed_stamp_bounds_later_stamps() {
        let clock = Hlc::new();
        let far_future = HlcStamp::from_parts(wall_clock_ms() + 60_000, 0);
        clock.observe(far_future);
        assert!(clock.now() > far_future);
    }

    #[test]
    fn a_skewed_clock_reads_off_by_its_skew() {
        let behind = Hlc::with_skew(-5_000);
        let stamp = behind.now().physical_ms();
        let wall = wall_clock_ms();
        assert!(stamp + 4_000 < wall && stamp + 6_000 > wall, "{stamp} vs {wall}");
    }

    #[test]
    fn stamps_strictly_increase() {
        let clock = Hlc::new();
        let mut last = clock.now();
        for _ in 0..10_000 {
            let next = clock.now();
            assert!(next > last);
            last = next;
        }
    }
}
