//! Hybrid logical clock.
//!
//! A stamp is a `u64`: milliseconds since the Unix epoch in the upper 48 bits and a logical counter
//! in the lower 16. Stamps from one clock strictly increase, and a clock that observes a stamp never
//! issues a smaller one afterwards, so a new leader's stamps follow its predecessor's entries even
//! when its wall clock is behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
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
    let candidate = HlcStamp::from_parts(wall_ms.min(PHYSICAL_MS_MAX), 0);
    if candidate > last {
        candidate
    } else {
        // Saturates at the largest stamp: reachable only by a clock at the year 10889.
        HlcStamp(last.0.saturating_add(1))
    }
}

/// The largest physical part a stamp can carry, in ms since the epoch (year 10889).
const PHYSICAL_MS_MAX: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// The default bound on how far any node's clock may read ahead of another's, in ms.
pub const MAX_OFFSET_MS_DEFAULT: u64 = 500;

/// A peer's clock reading that is too far from this node's: see [`check_peer_clock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockOffsetError {
    #[error("the sender's clock reads {ahead_ms} ms ahead of this node's (max offset {max_offset_ms} ms)")]
    Ahead { ahead_ms: u64, max_offset_ms: u64 },
    #[error("the sender's clock reads {behind_ms} ms behind this node's (max offset {max_offset_ms} ms)")]
    Behind { behind_ms: u64, max_offset_ms: u64 },
}

/// Which way a peer's clock reading is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCheck {
    /// Ahead and behind, by the same bound: for a message read as it arrives (a request, a
    /// stream's opening). The same bound both ways means two nodes whose clocks are too far
    /// apart refuse each other alike: no link works one way only, which would let the node that
    /// hears nothing disturb the others' elections.
    Both,
    /// Ahead only: for messages a stream delivers after queueing, which delay makes look older.
    AheadOnly,
}

/// Whether a message sent by a peer whose clock read `sender_wall_ms` may be taken by a node
/// whose clock reads `local_wall_ms`. A peer ahead by more than `max_offset_ms` would drag this
/// node's clock (and through the log, every replica's) forward for good; a peer far behind would
/// freeze time while it leads. Either way the message is refused, and the node that is off is
/// left alone until its clock comes back. `sender_wall_ms == 0` is a sender that does not say:
/// accepted.
pub fn check_peer_clock(
    sender_wall_ms: u64,
    local_wall_ms: u64,
    max_offset_ms: u64,
    check: PeerCheck,
) -> Result<(), ClockOffsetError> {
    if sender_wall_ms == 0 {
        return Ok(());
    }
    let ahead_ms = sender_wall_ms.saturating_sub(local_wall_ms);
    if ahead_ms > max_offset_ms {
        return Err(ClockOffsetError::Ahead {
            ahead_ms,
            max_offset_ms,
        });
    }
    let behind_ms = local_wall_ms.saturating_sub(sender_wall_ms);
    if check == PeerCheck::Both && behind_ms > max_offset_ms {
        return Err(ClockOffsetError::Behind {
            behind_ms,
            max_offset_ms,
        });
    }
    Ok(())
}

/// How long a peer's clock reading counts, in ms: a node that hears from no peer for longer (a
/// partitioned leader, which cannot commit anyway) stamps by its own clock alone.
pub const PEER_READING_FRESH_MS: u64 = 2_000;

/// The wall-clock reading a node stamps with: its own, held within `max_offset_ms` of the median
/// of its own and its peers' readings. With most clocks right, one node's clock that jumps (ahead
/// or back) then moves none of its stamps by more than the bound, even in the moments before its
/// peers refuse it: a leader whose clock strobes would otherwise commit an entry stamped hours
/// ahead between two refusals, and one whose clock stepped back would freeze the cluster's time.
#[cfg(test)]
pub fn corrected_wall_ms(own_ms: u64, peers_ms: &[u64], max_offset_ms: u64) -> u64 {
    if peers_ms.is_empty() {
        return own_ms;
    }
    held_within(own_ms, median_with(own_ms, peers_ms), max_offset_ms)
}

/// The median of `own_ms` and `peers_ms`; of an even count the lower one, so that in a
/// two-node cluster a clock that jumped ahead, the one that would drag time, is still held.
fn median_with(own_ms: u64, peers_ms: &[u64]) -> u64 {
    let mut all: Vec<u64> = peers_ms.to_vec();
    all.push(own_ms);
    all.sort_unstable();
    all[(all.len() - 1) / 2]
}

/// `own_ms` held within `max_offset_ms` of `median_ms`.
fn held_within(own_ms: u64, median_ms: u64, max_offset_ms: u64) -> u64 {
    own_ms.clamp(
        median_ms.saturating_sub(max_offset_ms),
        median_ms.saturating_add(max_offset_ms),
    )
}

/// The median clock reading of a node and its peers, as of a moment on the node's monotonic
/// clock, so it can be carried forward whatever the node's wall clock does meanwhile.
#[derive(Debug, Default)]
struct PeerTime {
    /// Each peer's last reading and when it came (monotonic ms since the clock was made).
    readings: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// The median of the fresh readings and this node's own, in wall ms, as of `median_at`.
    median_ms: AtomicU64,
    /// When `median_ms` was taken, in monotonic ms since the clock was made; 0: never.
    median_at: AtomicU64,
}

/// What a clock counts for `/metrics`.
#[derive(Debug, Default)]
pub struct ClockStats {
    /// Stamps observed further ahead than the max offset, and clamped.
    pub clamped_observations: AtomicU64,
    /// Peer messages refused because the sender's clock was too far off.
    pub refused_peer_messages: AtomicU64,
    /// Batches of another region refused because their stamps ran too far ahead.
    pub refused_remote_batches: AtomicU64,
    /// Stamps issued by a wall clock held within the max offset of its peers' (this node's own
    /// clock was further off).
    pub corrected_stamps: AtomicU64,
}

/// A thread-safe hybrid logical clock over the system wall clock, with a bound on how far ahead
/// of the wall clock it lets anything move it: a stamp observed more than `max_offset_ms` ahead
/// (from a node or region whose clock jumped) moves it only that far, so one clock that is off
/// cannot drag this node's notion of now, and through it every TTL, lease and session.
#[derive(Debug)]
pub struct Hlc {
    last: AtomicU64,
    /// Added to the wall clock: lets tests, `basalt dev` and the partition harness give a node
    /// a clock that is off by seconds or hours, as real clocks can be; changeable at run time.
    skew_ms: AtomicI64,
    max_offset_ms: u64,
    stats: ClockStats,
    peers: PeerTime,
    /// The origin of this clock's monotonic readings.
    origin: Instant,
}

impl Default for Hlc {
    fn default() -> Self {
        Hlc::with_skew(0)
    }
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose wall-clock reading is off by `skew_ms`.
    pub fn with_skew(skew_ms: i64) -> Self {
        Hlc::with_skew_and_offset(skew_ms, MAX_OFFSET_MS_DEFAULT)
    }

    /// A clock off by `skew_ms` that lets observed stamps move it at most `max_offset_ms` ahead
    /// of its wall-clock reading.
    pub fn with_skew_and_offset(skew_ms: i64, max_offset_ms: u64) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            skew_ms: AtomicI64::new(skew_ms),
            max_offset_ms,
            stats: ClockStats::default(),
            peers: PeerTime::default(),
            origin: Instant::now(),
        }
    }

    /// Changes the skew at run time (the partition harness's clock nemesis).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Release);
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Acquire)
    }

    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    pub fn stats(&self) -> &ClockStats {
        &self.stats
    }

    /// The wall clock as this clock reads it (skew included), in milliseconds.
    pub fn wall_ms(&self) -> u64 {
        wall_clock_ms()
            .saturating_add_signed(self.skew_ms())
            .min(PHYSICAL_MS_MAX)
    }

    /// Monotonic ms since this clock was made, at least 1.
    fn monotonic_ms(&self) -> u64 {
        (self.origin.elapsed().as_millis() as u64).saturating_add(1)
    }

    /// Records a peer's wall-clock reading (sent with its Raft replies), for
    /// [`Hlc::stamp_wall_ms`]. 0 is a peer that does not say: ignored.
    pub fn record_peer_wall(&self, peer: u64, wall_ms: u64) {
        if wall_ms == 0 {
            return;
        }
        let now = self.monotonic_ms();
        let mut readings = self.peers.readings.lock().unwrap_or_else(|p| p.into_inner());
        readings.insert(peer, (wall_ms, now));
        let fresh: Vec<u64> = readings
            .values()
            .filter(|(_, at)| now.saturating_sub(*at) <= PEER_READING_FRESH_MS)
            .map(|(wall, at)| wall.saturating_add(now.saturating_sub(*at)))
            .collect();
        self.peers
            .median_ms
            .store(median_with(self.wall_ms(), &fresh), Ordering::Release);
        self.peers.median_at.store(now, Ordering::Release);
    }

    /// The wall clock this node stamps with: its own ([`Hlc::wall_ms`]), held within the max
    /// offset of the median of its own and its peers' last readings, carried forward on the
    /// monotonic clock (the rule `corrected_wall_ms` states at one instant, which the tests check).
    /// Its own alone when no peer was heard from lately.
    pub fn stamp_wall_ms(&self) -> u64 {
        let own = self.wall_ms();
        let at = self.peers.median_at.load(Ordering::Acquire);
        let now = self.monotonic_ms();
        if at == 0 || now.saturating_sub(at) > PEER_READING_FRESH_MS {
            return own;
        }
        let median = self
            .peers
            .median_ms
            .load(Ordering::Acquire)
            .saturating_add(now.saturating_sub(at));
        let corrected = held_within(own, median, self.max_offset_ms);
        if corrected != own {
            self.stats.corrected_stamps.fetch_add(1, Ordering::Relaxed);
        }
        corrected.min(PHYSICAL_MS_MAX)
    }

    /// The largest stamp this clock accepts now: `max_offset_ms` past the wall clock it stamps
    /// with ([`Hlc::stamp_wall_ms`]).
    pub fn ceiling(&self) -> HlcStamp {
        HlcStamp::from_parts(
            self.stamp_wall_ms()
                .saturating_add(self.max_offset_ms)
                .min(PHYSICAL_MS_MAX),
            0,
        )
    }

    /// Issues a stamp greater than every stamp issued or observed before, as long as those stay
    /// within [`Hlc::ceiling`]: a clock that ran ahead (its wall clock jumped, then came back)
    /// starts again from the ceiling rather than keep stamping from where it had run to. Stamps
    /// may then step back; apply never does (it stamps each entry at or above the last applied).
    pub fn now(&self) -> HlcStamp {
        let wall_ms = self.stamp_wall_ms();
        let ceiling_ms = wall_ms.saturating_add(self.max_offset_ms).min(PHYSICAL_MS_MAX);
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            // Only a millisecond past the ceiling restarts from it: ticks within the ceiling's
            // millisecond still increase.
            let base = if HlcStamp(last).physical_ms() > ceiling_ms {
                HlcStamp::from_parts(ceiling_ms, 0)
            } else {
                HlcStamp(last)
            };
            let next = next_stamp(base, wall_ms);
            match self
                .last
                .compare_exchange_weak(last, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock forward past a stamp seen elsewhere (an applied entry), but never past
    /// [`Hlc::ceiling`]: a stamp beyond it is counted, logged and clamped. Returns whether it was.
    /// Apply does not depend on this: it stamps every entry at or above the last applied one.
    pub fn observe(&self, stamp: HlcStamp) -> bool {
        let ceiling = self.ceiling();
        let clamped = stamp > ceiling;
        if clamped {
            let before = self.stats.clamped_observations.fetch_add(1, Ordering::Relaxed);
            // Every apply batch observes: say it at the first time and then ever more rarely.
            if (before + 1).is_power_of_two() {
                tracing::warn!(
                    times = before + 1,
                    stamp_ms = stamp.physical_ms(),
                    wall_ms = self.wall_ms(),
                    max_offset_ms = self.max_offset_ms,
                    "a stamp ahead of this node's clock by more than the max offset: not followed"
                );
            }
        }
        self.last.fetch_max(stamp.min(ceiling).0, Ordering::AcqRel);
        clamped
    }

    /// [`check_peer_clock`] against this clock, counting refusals.
    pub fn check_peer(&self, sender_wall_ms: u64, check: PeerCheck) -> Result<(), ClockOffsetError> {
        let verdict = check_peer_clock(sender_wall_ms, self.wall_ms(), self.max_offset_ms, check);
        if verdict.is_err() {
            self.stats.refused_peer_messages.fetch_add(1, Ordering::Relaxed);
        }
        verdict
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
        let far_future = HlcStamp::from_parts(wall_clock_ms() + 200, 0);
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
    fn an_observed_stamp_far_ahead_moves_the_clock_only_to_the_max_offset() {
        let clock = Hlc::with_skew_and_offset(0, 500);
        let two_hours_ahead = HlcStamp::from_parts(wall_clock_ms() + 7_200_000, 0);
        assert!(clock.observe(two_hours_ahead));
        let next = clock.now();
        assert!(next < two_hours_ahead);
        assert!(next.physical_ms() <= wall_clock_ms() + 500, "{next:?}");
        assert_eq!(clock.stats().clamped_observations.load(Ordering::Relaxed), 1);
        // Within the bound, it is followed.
        let close = HlcStamp::from_parts(wall_clock_ms() + 200, 0);
        assert!(!clock.observe(close));
        assert!(clock.now() > close);
    }

    #[test]
    fn the_largest_stamp_neither_overflows_nor_drags_the_clock() {
        let clock = Hlc::new();
        clock.observe(HlcStamp(u64::MAX));
        let next = clock.now();
        assert!(next.physical_ms() < wall_clock_ms() + 1_000);
        assert_eq!(next_stamp(HlcStamp(u64::MAX), 0), HlcStamp(u64::MAX));
        assert_eq!(next_stamp(HlcStamp(0), u64::MAX).physical_ms(), PHYSICAL_MS_MAX);
    }

    #[test]
    fn a_peer_clock_too_far_ahead_or_behind_is_refused() {
        use PeerCheck::{AheadOnly, Both};
        assert_eq!(check_peer_clock(10_500, 10_000, 500, Both), Ok(()));
        assert_eq!(
            check_peer_clock(10_501, 10_000, 500, Both),
            Err(ClockOffsetError::Ahead {
                ahead_ms: 501,
                max_offset_ms: 500
            })
        );
        assert!(check_peer_clock(10_501, 10_000, 500, AheadOnly).is_err());
        assert_eq!(check_peer_clock(10_000, 10_500, 500, Both), Ok(()));
        assert!(matches!(
            check_peer_clock(10_000, 10_501, 500, Both),
            Err(ClockOffsetError::Behind { behind_ms: 501, .. })
        ));
        // A queued message looks older than it is: not refused for that.
        assert_eq!(check_peer_clock(10_000, 15_000, 500, AheadOnly), Ok(()));
        // A sender that does not say is taken.
        assert_eq!(check_peer_clock(0, 11_501, 500, Both), Ok(()));
        let clock = Hlc::with_skew_and_offset(7_200_000, 500);
        let honest = wall_clock_ms();
        assert!(clock.check_peer(honest, Both).is_err());
        assert_eq!(clock.stats().refused_peer_messages.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_clock_that_jumped_ahead_and_came_back_stamps_from_its_ceiling_again() {
        let clock = Hlc::with_skew_and_offset(0, 500);
        clock.set_skew_ms(3_600_000);
        let ahead = clock.now();
        assert!(ahead.physical_ms() >= wall_clock_ms() + 3_599_000);
        clock.set_skew_ms(0);
        let back = clock.now();
        assert!(back.physical_ms() <= wall_clock_ms() + 500, "{back:?}");
        assert!(clock.now() > back);
    }

    #[test]
    fn a_clock_far_from_its_peers_stamps_within_the_max_offset_of_their_median() {
        // Two peers agree; this node's own reading is two hours ahead, or an hour behind.
        let peers = [10_000_000, 10_000_100];
        assert_eq!(corrected_wall_ms(10_000_050 + 7_200_000, &peers, 500), 10_000_100 + 500);
        assert_eq!(corrected_wall_ms(10_000_050 - 3_600_000, &peers, 500), 10_000_000 - 500);
        // Within the bound, or with no peer heard from, its own reading stands.
        assert_eq!(corrected_wall_ms(10_000_300, &peers, 500), 10_000_300);
        assert_eq!(corrected_wall_ms(42, &[], 500), 42);
        // Two nodes: a clock ahead of its one peer is held; one behind it is not.
        assert_eq!(
            corrected_wall_ms(10_000_000 + 7_200_000, &[10_000_000], 500),
            10_000_500
        );
        assert_eq!(
            corrected_wall_ms(10_000_000 - 7_200, &[10_000_000], 500),
            10_000_000 - 7_200
        );
        // One peer off does not move a right clock: the median is a right one.
        assert_eq!(corrected_wall_ms(1_000_000, &[1_000_050, 9_999_999], 500), 1_000_000);
    }

    #[test]
    fn a_leader_whose_clock_jumps_stamps_by_its_peers_until_they_fall_silent() {
        let clock = Hlc::with_skew_and_offset(0, 500);
        let honest = wall_clock_ms();
        clock.record_peer_wall(2, honest);
        clock.record_peer_wall(3, honest);
        clock.set_skew_ms(7_200_000);
        let stamp = clock.now();
        assert!(stamp.physical_ms() <= wall_clock_ms() + 1_000, "{stamp:?}");
        assert!(clock.stats().corrected_stamps.load(Ordering::Relaxed) > 0);
        clock.set_skew_ms(-3_600_000);
        assert!(clock.stamp_wall_ms() + 1_000 >= wall_clock_ms());
    }

    #[test]
    fn the_skew_changes_at_run_time() {
        let clock = Hlc::new();
        clock.set_skew_ms(3_600_000);
        assert!(clock.wall_ms() >= wall_clock_ms() + 3_599_000);
        clock.set_skew_ms(0);
        assert!(clock.wall_ms() < wall_clock_ms() + 1_000);
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
