//! The change feed: what a region's applied entries changed in replicated state, in log order,
//! and the batches that carry it to another region.

use serde::{Deserialize, Serialize};

use crate::merge::{Component, EscrowBound, LwwValue, WindowCount};
use crate::version::RegionId;

/// One replicated change, as state rather than as an operation: the receiver merges it with the
/// merge rule of its type, so applying it twice, or after a later change, is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A KV key's register: a write, or a tombstone.
    Kv { key: Vec<u8>, value: LwwValue },
    /// One region's component of a counter, as that region last saw it.
    Counter {
        key: Vec<u8>,
        region: RegionId,
        component: Component,
    },
    /// Everything region `from` has given region `to` of a bounded counter's escrow toward `bound`.
    EscrowGiven {
        key: Vec<u8>,
        bound: EscrowBound,
        from: RegionId,
        to: RegionId,
        total: u128,
    },
    /// One region's count of a global rate limit, as that region last wrote it.
    RateWindow {
        key: Vec<u8>,
        region: RegionId,
        count: WindowCount,
    },
    /// A row of a mirrored stream topic (its settings, a partition's bounds or a record batch),
    /// `None` when the source deleted it, under the mirror's name: `key` already names the topic
    /// `topic@source`. The source is the topic's only writer, so the receiver copies rows.
    MirrorRow {
        table: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// A row of homed data (ledgers, leases, queues) as the home region wrote it, `None` when it
    /// deleted it. Homed data has a single writer, its home, and the feed carries its changes in
    /// log order: the receiver copies rows rather than merging them, and its copy is always the
    /// home's state as of some log position, so every invariant of the home's state holds in it.
    Row {
        table: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// The start of a full re-sync from the home region: the receiver forgets its copy of homed
    /// data, which the re-sync's rows rebuild (rows the home deleted while the receiver was
    /// behind must go too). Until the re-sync's last batch the copy is incomplete.
    RowsReset,
    /// A purge of the edge cache made in the source region (or, as [`PurgeTarget::Everything`],
    /// the opening of a re-sync: purges trimmed from the feed before this region got them are
    /// lost, so every edge forgets everything). A purge has no state to merge: the receiver
    /// records it, and every node of the receiving region removes what it matches from its edge.
    /// Receiving it twice removes nothing more.
    CachePurge { target: PurgeTarget },
    /// One region's component of one bucket of a windowed counter (`key` names the bucket: the
    /// counter, the window length and start, the retention, which fix when it is forgotten). The
    /// receiver merges it like a counter's, unless the bucket is already past its forget time
    /// there.
    CounterWindow {
        key: Vec<u8>,
        region: RegionId,
        component: Component,
    },
}

/// What an edge-cache purge removes (docs/data-types/edge-cache.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PurgeTarget {
    /// Every variant of this exact path (with its query), as clients ask for it.
    Url(String),
    /// Every object whose path starts with this.
    Prefix(String),
    /// Every object carrying this tag (`Surrogate-Key`, `Cache-Tag`), ASCII case-insensitively.
    Tag(String),
    /// Everything stored.
    Everything,
}

impl std::fmt::Display for PurgeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PurgeTarget::Url(url) => write!(f, "url {url:?}"),
            PurgeTarget::Prefix(prefix) => write!(f, "prefix {prefix:?}"),
            PurgeTarget::Tag(tag) => write!(f, "tag {tag:?}"),
            PurgeTarget::Everything => write!(f, "everything"),
        }
    }
}

/// The effects of one applied log entry of the source region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// The source region's log index: the feed's position.
    pub index: u64,
    /// The entry's HLC stamp, from which the receiver measures replication lag.
    pub stamp: u64,
    pub effects: Vec<Effect>,
}

/// A batch of the feed shipped from `source` to another region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipBatch {
    pub source: RegionId,
    /// In index order; the receiver skips those at or below its watermark for `source`.
    pub entries: Vec<FeedEntry>,
    /// The receiver's watermark for `source` moves up to this position (at least the last entry's
    /// index; more when the positions between carried no replicated change).
    pub upto: u64,
    /// A bound on the stamps still to come: every later change from `source` is stamped at or
    /// above it (the source's last applied stamp as of the batch, not its clock reading: see
    /// `basalt-storage`'s `apply::replication::next_batch`).
    pub frontier: u64,
    /// A chunk of a full re-sync (the receiver fell behind what the feed retains): applied
    /// whatever the watermark, which only the last chunk moves (to `upto`).
    pub resync: bool,
}

impl ShipBatch {
    /// An empty batch: asks the receiver for its watermark, or carries only a new frontier.
    pub fn heartbeat(source: RegionId, frontier: u64) -> ShipBatch {
        ShipBatch {
            source,
            entries: Vec::new(),
            upto: 0,
            frontier,
            resync: false,
        }
    }

    /// Checks the batch against the receiver's clock ceiling (its wall clock plus the max
    /// offset): an entry stamped beyond it is refused, since merging it would drag the receiving
    /// region's clock, and with it every TTL, lease and session, forward by the sender's error; a
    /// frontier beyond it is lowered to it (a lower frontier only delays tombstone collection).
    /// Returns the stamp of the first entry too far ahead, if any, and changes nothing then.
    pub fn bound_to(&mut self, ceiling: u64) -> Result<(), u64> {
        if let Some(ahead) = self.entries.iter().map(|e| e.stamp).find(|stamp| *stamp > ceiling) {
            return Err(ahead);
        }
        self.frontier = self.frontier.min(ceiling);
        Ok(())
    }

    pub fn effect_count(&self) -> usize {
        self.entries.iter().map(|e| e.effects.len()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: String,
}

/// The wire and storage encoding of feed records (basalt-codec; a feed stream names its data
/// format when it opens, so a region refuses a stream of another format before decoding a batch).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    basalt_codec::encode(value)
}

/// The encoded size of `value`, to cut batches by bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> u64 {
    u64::try_from(basalt_codec::encoded_len(value)).unwrap_or(u64::MAX)
}

pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    basalt_codec::decode(bytes).map_err(|e| DecodeError {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Version;

    #[test]
    fn a_batch_stamped_past_the_ceiling_is_refused_and_a_frontier_past_it_lowered() {
        let entry = |stamp| FeedEntry {
            index: 1,
            stamp,
            effects: Vec::new(),
        };
        let mut ok = ShipBatch {
            source: 2,
            entries: vec![entry(90), entry(100)],
            upto: 1,
            frontier: u64::MAX,
            resync: false,
        };
        assert_eq!(ok.bound_to(100), Ok(()));
        assert_eq!(ok.frontier, 100);
        let mut ahead = ShipBatch {
            entries: vec![entry(90), entry(101)],
            frontier: 95,
            ..ok.clone()
        };
        let before = ahead.clone();
        assert_eq!(ahead.bound_to(100), Err(101));
        assert_eq!(ahead, before);
    }

    #[test]
    fn batches_round_trip() {
        let batch = ShipBatch {
            source: 2,
            entries: vec![FeedEntry {
                index: 7,
                stamp: 99,
                effects: vec![
                    Effect::Kv {
                        key: b"k".to_vec(),
                        value: LwwValue {
                            version: Version::new(99, 2),
                            value: Some(b"v".to_vec()),
                            expires_at_ms: Some(5),
                        },
                    },
                    Effect::Counter {
                        key: b"c".to_vec(),
                        region: 2,
                        component: Component { added: 3, removed: 1 },
                    },
                ],
            }],
            upto: 9,
            frontier: 100,
            resync: false,
        };
        let back: ShipBatch = decode("batch", &encode(&batch)).expect("decodes");
        assert_eq!(back, batch);
        assert_eq!(back.effect_count(), 2);
        assert!(decode::<ShipBatch>("batch", &[1, 2, 3]).is_err());
    }

    proptest::proptest! {
        /// What another region sends is decoded from any bytes, changed or cut, into a batch or
        /// a typed error: never a panic.
        #[test]
        fn any_bytes_decode_as_a_batch_or_fail_cleanly(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..6,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let _ = decode::<ShipBatch>("batch", &random);
            let mut bytes = encode(&ShipBatch {
                source: 2,
                entries: vec![FeedEntry {
                    index: 7,
                    stamp: 99,
                    effects: vec![Effect::Kv {
                        key: b"k".to_vec(),
                        value: LwwValue {
                            version: Version::new(99, 2),
                            value: Some(b"v".to_vec()),
                            expires_at_ms: None,
                        },
                    }],
                }],
                upto: 9,
                frontier: 100,
                resync: false,
            });
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode::<ShipBatch>("batch", &bytes);
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode::<ShipBatch>("batch", &bytes);
        }
    }

    /// A windowed-counter effect's bytes, pinned: variants are encoded by position (it is the
    /// last), and a region of another build must read what this one ships.
    #[test]
    fn a_counter_window_effect_encodes_as_pinned() {
        let effect = Effect::CounterWindow {
            key: vec![0xab],
            region: 3,
            component: Component { added: 5, removed: 1 },
        };
        assert_eq!(encode(&effect), [0x08, 0x01, 0xab, 0x03, 0x05, 0x01]);
        assert_eq!(decode::<Effect>("effect", &encode(&effect)).expect("decodes"), effect);
    }
}
