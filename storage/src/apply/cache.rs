//! Edge-cache purges in the replicated state. A purge is recorded in the region's purge table
//! under the next purge number, the same on every replica; each node's edge follows the table
//! ([`purges_after`]) and removes what each purge matches from its own object store. The table
//! keeps the last [`CACHE_PURGES_KEPT_MAX`] purges: an edge that has fallen further behind cannot
//! know what it missed and forgets everything ([`PurgesAfter::Gap`]).
//!
//! A purge made here goes into the change feed (`Effect::CachePurge`); one merged from another
//! region is recorded the same way, with where it came from, and is not shipped again.

use basalt_replication::{PurgeTarget, RegionId};
use serde::{Deserialize, Serialize};

use super::{decode, load, save, OpContext, View};
use crate::command::{CacheError, CacheOp, OpError, Response};
use crate::limits::{CACHE_PURGES_KEPT_MAX, PURGE_TARGET_BYTES_MAX};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// `Meta` key of the last purge number (0 or absent: none yet).
const LAST_PURGE_KEY: &[u8] = b"cache_purge_last";

/// One purge as the purge table holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub target: PurgeTarget,
    /// The log index of the entry that recorded it in this region.
    pub index: u64,
    /// That entry's HLC time, in ms: when the purge took effect in this region's state.
    pub at_ms: u64,
    /// Where it came from.
    pub source: PurgeSource,
}

/// Where a recorded purge came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeSource {
    /// Made in this region: it goes into the change feed.
    Local,
    /// Merged from another region's feed.
    Merged(PurgeOrigin),
    /// The opening of a full re-sync from `region` (a purge of everything): purges that region
    /// trimmed from its feed before this one got them are lost. Each re-sync, a restarted one
    /// too, records one.
    Resync { region: RegionId },
}

/// Where a merged purge was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeOrigin {
    pub region: RegionId,
    /// The source region's log index (its feed position).
    pub index: u64,
    /// The source entry's HLC time, in ms.
    pub at_ms: u64,
}

fn purge_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &CacheOp,
) -> Result<Response, StoreError> {
    match op {
        CacheOp::Purge { target } => {
            refuse_on_err!(validate_purge(target));
            let seq = record(view, ctx.index, ctx.now_ms, target.clone(), PurgeSource::Local)?;
            Ok(Response::CachePurged { seq })
        }
    }
}

/// Records `target` as the next purge, forgetting the one [`CACHE_PURGES_KEPT_MAX`] before it;
/// returns its number.
pub(super) fn record<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    at_ms: u64,
    target: PurgeTarget,
    source: PurgeSource,
) -> Result<u64, StoreError> {
    let seq = last_purge(view)? + 1;
    save(view, Table::Meta, LAST_PURGE_KEY.to_vec(), &seq);
    let record = PurgeRecord {
        target,
        index,
        at_ms,
        source,
    };
    save(view, Table::CachePurge, purge_key(seq), &record);
    if seq > CACHE_PURGES_KEPT_MAX {
        view.delete(Table::CachePurge, purge_key(seq - CACHE_PURGES_KEPT_MAX));
    }
    Ok(seq)
}

/// The number of the last purge recorded in this region (0: none).
pub fn last_purge<S: StoreRead + ?Sized>(store: &S) -> Result<u64, StoreError> {
    Ok(load(store, Table::Meta, LAST_PURGE_KEY)?.unwrap_or(0))
}

/// What an edge that has followed the purge table up to `seen` has to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgesAfter {
    /// The purges numbered after `seen`, in order, at most the `limit` asked for.
    Purges(Vec<(u64, PurgeRecord)>),
    /// Purges after `seen` are no longer kept: the edge cannot know what they removed and must
    /// forget everything, then go on from `last`.
    Gap { last: u64 },
}

/// The purges after `seen`, at most `limit` (read from one consistent view).
pub fn purges_after<S: StoreRead + ?Sized>(store: &S, seen: u64, limit: usize) -> Result<PurgesAfter, StoreError> {
    let last = last_purge(store)?;
    if last <= seen {
        return Ok(PurgesAfter::Purges(Vec::new()));
    }
    let oldest_kept = last.saturating_sub(CACHE_PURGES_KEPT_MAX - 1).max(1);
    if seen + 1 < oldest_kept {
        return Ok(PurgesAfter::Gap { last });
    }
    let rows = store.scan(Table::CachePurge, &KeyRange::all_from(purge_key(seen + 1)), limit)?;
    let mut purges = Vec::with_capacity(rows.len());
    for (key, bytes) in rows {
        let seq = key
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| super::corrupt(Table::CachePurge, &key, "a purge number is 8 bytes"))?;
        purges.push((seq, decode(Table::CachePurge, &key, &bytes)?));
    }
    Ok(PurgesAfter::Purges(purges))
}

/// Every purge the table keeps, oldest first: at most [`CACHE_PURGES_KEPT_MAX`].
pub fn kept_purges<S: StoreRead + ?Sized>(store: &S) -> Result<Vec<(u64, PurgeRecord)>, StoreError> {
    match purges_after(
        store,
        last_purge(store)?.saturating_sub(CACHE_PURGES_KEPT_MAX),
        usize::MAX,
    )? {
        PurgesAfter::Purges(purges) => Ok(purges),
        PurgesAfter::Gap { .. } => Ok(Vec::new()),
    }
}

/// Checks a purge before it is proposed (and again at apply): a URL or prefix is a path of at
/// most [`PURGE_TARGET_BYTES_MAX`] bytes of visible ASCII starting with `/`, as clients send
/// it (percent-encoded); a tag is a non-empty token of
/// visible ASCII without commas (as `Surrogate-Key` and `Cache-Tag` carry them).
pub fn validate_purge(target: &PurgeTarget) -> Result<(), OpError> {
    let (what, text) = match target {
        PurgeTarget::Everything => return Ok(()),
        PurgeTarget::Url(url) => ("url", url),
        PurgeTarget::Prefix(prefix) => ("prefix", prefix),
        PurgeTarget::Tag(tag) => ("tag", tag),
    };
    if text.is_empty() {
        return Err(OpError::Empty {
            what: format!("purge {what}").into(),
        });
    }
    if text.len() > PURGE_TARGET_BYTES_MAX {
        return Err(OpError::TooLarge {
            what: format!("purge {what}").into(),
            len: text.len(),
            max: PURGE_TARGET_BYTES_MAX,
        });
    }
    match target {
        PurgeTarget::Tag(tag) => {
            if !tag.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(CacheError::InvalidTag { got: tag.clone() }.into());
            }
        }
        _ => {
            // Clients send request targets in visible ASCII (RFC 9112 §3.2): anything else
            // would match no stored path.
            if !text.starts_with('/') || !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CacheError::NotAPath {
                    what: what.to_string(),
                    got: text.clone(),
                }
                .into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::{cmd, Harness};

    fn purge(target: PurgeTarget) -> crate::command::Op {
        crate::command::Op::Cache(CacheOp::Purge { target })
    }

    #[test]
    fn purges_are_numbered_in_log_order_and_read_back_after_a_position() {
        let mut h = Harness::new();
        assert_eq!(
            h.apply(cmd(1, purge(PurgeTarget::Tag("product-42".into())))),
            Response::CachePurged { seq: 1 }
        );
        assert_eq!(
            h.apply(cmd(1, purge(PurgeTarget::Prefix("/assets/".into())))),
            Response::CachePurged { seq: 2 }
        );
        let PurgesAfter::Purges(after_one) = purges_after(&h.store, 1, 10).expect("read") else {
            panic!("no gap expected");
        };
        assert_eq!(after_one.len(), 1);
        assert_eq!(after_one[0].0, 2);
        assert_eq!(after_one[0].1.target, PurgeTarget::Prefix("/assets/".into()));
        assert_eq!(after_one[0].1.source, PurgeSource::Local);
        assert_eq!(
            purges_after(&h.store, 2, 10).expect("read"),
            PurgesAfter::Purges(Vec::new())
        );
    }

    #[test]
    fn an_edge_behind_what_the_table_keeps_is_told_to_forget_everything() {
        let mut h = Harness::new();
        for i in 0..CACHE_PURGES_KEPT_MAX + 2 {
            h.apply(cmd(1, purge(PurgeTarget::Url(format!("/p/{i}")))));
        }
        let last = CACHE_PURGES_KEPT_MAX + 2;
        assert_eq!(last_purge(&h.store).expect("read"), last);
        assert_eq!(kept_purges(&h.store).expect("read").len() as u64, CACHE_PURGES_KEPT_MAX);
        // Purges 1 and 2 are gone: an edge that saw none of them has a gap, one that saw 2 not.
        assert_eq!(purges_after(&h.store, 0, 10).expect("read"), PurgesAfter::Gap { last });
        assert_eq!(purges_after(&h.store, 1, 10).expect("read"), PurgesAfter::Gap { last });
        let PurgesAfter::Purges(from_two) = purges_after(&h.store, 2, 1).expect("read") else {
            panic!("purge 3 is kept");
        };
        assert_eq!(from_two[0].0, 3);
    }

    #[test]
    fn bad_purges_are_refused_with_typed_errors() {
        assert!(matches!(
            validate_purge(&PurgeTarget::Tag(String::new())),
            Err(OpError::Empty { .. })
        ));
        assert!(matches!(
            validate_purge(&PurgeTarget::Tag("a b".into())),
            Err(OpError::Cache(CacheError::InvalidTag { .. }))
        ));
        assert!(matches!(
            validate_purge(&PurgeTarget::Url("assets/app.js".into())),
            Err(OpError::Cache(CacheError::NotAPath { .. }))
        ));
        assert!(matches!(
            validate_purge(&PurgeTarget::Url("/search?q=a b".into())),
            Err(OpError::Cache(CacheError::NotAPath { .. }))
        ));
        assert!(matches!(
            validate_purge(&PurgeTarget::Prefix("/café".into())),
            Err(OpError::Cache(CacheError::NotAPath { .. }))
        ));
        assert!(matches!(
            validate_purge(&PurgeTarget::Prefix(format!("/{}", "a".repeat(PURGE_TARGET_BYTES_MAX)))),
            Err(OpError::TooLarge { .. })
        ));
        assert_eq!(validate_purge(&PurgeTarget::Everything), Ok(()));
        assert_eq!(validate_purge(&PurgeTarget::Prefix("/".into())), Ok(()));
        // Apply refuses what validation refuses, and records nothing.
        let mut h = Harness::new();
        assert!(matches!(
            h.apply(cmd(1, purge(PurgeTarget::Url("x".into())))),
            Response::Refused(OpError::Cache(_))
        ));
        assert_eq!(last_purge(&h.store).expect("read"), 0);
    }

    #[test]
    fn a_purge_reaches_every_region_once_with_where_it_came_from() {
        use crate::apply::tests_replication::{region, ship};
        use crate::command::{Op, RegionOp};
        let (mut us, mut eu) = (region(1), region(2));
        assert_eq!(
            us.apply(cmd(100, purge(PurgeTarget::Tag("product-42".into())))),
            Response::CachePurged { seq: 1 }
        );
        let purge_index = us.index;
        ship(&us, 1, &mut eu, 250);
        let PurgesAfter::Purges(merged) = purges_after(&eu.store, 0, 10).expect("read") else {
            panic!("no gap");
        };
        assert_eq!(merged.len(), 1);
        let (seq, record) = &merged[0];
        assert_eq!((*seq, &record.target), (1, &PurgeTarget::Tag("product-42".into())));
        assert_eq!(
            record.source,
            PurgeSource::Merged(PurgeOrigin {
                region: 1,
                index: purge_index,
                at_ms: 100
            })
        );
        assert_eq!(record.at_ms, 250, "recorded at the merging entry's time");
        // Shipped again (a retry): merged once.
        ship(&us, 1, &mut eu, 260);
        let batch = crate::apply::tests_replication::batch(&us, 1, 0);
        eu.apply(cmd(270, Op::Region(RegionOp::MergeFeed { batch })));
        assert_eq!(last_purge(&eu.store).expect("read"), 1);
        // The merged purge is not shipped back: us records no purge from eu.
        ship(&eu, 2, &mut us, 280);
        assert_eq!(last_purge(&us.store).expect("read"), 1);
    }

    #[test]
    fn a_re_sync_purges_everything_in_the_receiving_region() {
        use crate::apply::tests_replication::{region, ship_or_resync};
        use crate::command::{Op, RegionOp};
        let (mut us, mut ap) = (region(1), region(3));
        us.apply(cmd(100, purge(PurgeTarget::Url("/a".into()))));
        // The feed is trimmed past the purge before ap got it: ap learns of it only by re-sync.
        us.apply(cmd(110, Op::Region(RegionOp::TrimFeed { upto: 100, limit: 100 })));
        ship_or_resync(&us, 1, &mut ap, 300);
        let kept = kept_purges(&ap.store).expect("read");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.target, PurgeTarget::Everything);
        assert_eq!(kept[0].1.source, PurgeSource::Resync { region: 1 });
    }
}
