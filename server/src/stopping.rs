//! The node's stop: every wait of it bounded, and the doors' waits measured from the moment the
//! stop began.
//!
//! A stop tells every door at once (the client API, HTTP, RESP, the edge), so their drains run
//! side by side: each is bounded by a deadline counted from the stop, not from when the node got
//! round to waiting for it, and the bounds of five doors do not add up. Then Raft stops and the
//! peer listener drains, each bounded too, so that the whole stop fits [`NODE_STOP_MAX`] (below
//! an orchestrator's usual grace before it kills the process).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::{DOORS_DRAIN_MAX, LEADER_HANDOFF_MAX, NODE_STOP_MAX};

/// When the node was told to stop, noted by whoever sees the stop first (every later look finds
/// the same instant).
#[derive(Clone, Debug, Default)]
pub(crate) struct StopClock(Arc<OnceLock<Instant>>);

impl StopClock {
    /// The stop, begun now unless it began earlier.
    pub(crate) fn stopping(&self) -> Stopping {
        Stopping {
            began: *self.0.get_or_init(Instant::now),
        }
    }
}

/// A stop under way, and the deadlines of its waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopping {
    began: Instant,
}

impl Stopping {
    /// `limit` after the stop began: for a door that was told at the stop.
    pub(crate) fn after_stop(&self, limit: Duration) -> Instant {
        self.began + limit.min(DOORS_DRAIN_MAX)
    }

    /// `limit` from now, but not past the doors' deadline: for a drain that can only begin once
    /// another has ended (RESP's in-process calls, after RESP's listener).
    pub(crate) fn starting_now(&self, limit: Duration) -> Instant {
        (Instant::now() + limit).min(self.began + DOORS_DRAIN_MAX)
    }
}

/// Waits for `task` until `deadline`: its output, or `None` (logged, naming `what`) when it had
/// not ended by then and the stop goes on without it.
pub(crate) async fn wait_until<F: Future>(deadline: Instant, what: &str, task: F) -> Option<F::Output> {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(output) => Some(output),
        Err(_) => {
            tracing::warn!("{what} had not ended within its bound of the stop: stopping without it");
            None
        }
    }
}

/// Hands this node's leadership to another voter when it leads, so that a stopping leader (a
/// rolling restart, SIGTERM) costs the region no election timeout: the live voter whose log is
/// the most up to date (the lowest id among equals) campaigns once it holds the leader's last
/// entry, and the others let it win although this leader's lease still runs. From the handoff
/// on this node proposes nothing and sends no heartbeats (openraft's transfer, kept until Raft
/// stops): writes sent to it are redirected to the node it hands over to. Returns once another
/// node leads, or after [`LEADER_HANDOFF_MAX`] (then the region elects one by timeout, counted
/// from the handoff, as after a crash); a node that does not lead, or has no live voter to hand
/// over to, returns at once. Voters in `avoid` are not chosen (a leader seen since this node's
/// stop began is likely stopping too: it handed its leadership over).
///
/// Returns the leader this node saw when it did not lead itself, for a later call to avoid.
pub(crate) async fn hand_off_leadership(raft: &basalt_raft::Raft, avoid: &[u64]) -> Option<u64> {
    use openraft::Instant as _;
    let metrics = crate::api::metrics_now(raft);
    let me = metrics.id;
    if metrics.running_state.is_err() {
        return None;
    }
    if metrics.current_leader != Some(me) {
        return metrics.current_leader;
    }
    // A voter that acknowledged nothing for an election timeout is taken for down: handing over
    // to it would only cost the bound.
    let recent = Duration::from_millis(raft.config().election_timeout_min);
    let live: Vec<u64> = metrics
        .heartbeat
        .iter()
        .flatten()
        .filter(|(_, acked)| acked.as_ref().is_some_and(|at| at.elapsed() <= recent))
        .map(|(id, _)| *id)
        .collect();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let to = handoff_target(me, &voters, &live, avoid, metrics.replication.as_ref())?;
    if let Err(e) = raft.trigger().transfer_leader(to).await {
        tracing::warn!(error = %e, to, "could not hand leadership over");
        return None;
    }
    let handed = raft
        .wait(Some(LEADER_HANDOFF_MAX))
        .metrics(
            |m| m.current_leader.is_some_and(|leader| leader != me),
            "another node leads",
        )
        .await;
    match handed {
        Ok(m) => tracing::info!(to = m.current_leader, "handed leadership over before stopping"),
        Err(e) => tracing::warn!(error = %e, to, "leadership not handed over; the region elects a leader by timeout"),
    }
    None
}

/// The voter to hand leadership to: among the `live` voters other than `me` and those to
/// `avoid`, the one whose log this leader knows to reach furthest (`matched`: per node, the last
/// entry it holds), the lowest id among equals. Pure.
pub(crate) fn handoff_target(
    me: u64,
    voters: &[u64],
    live: &[u64],
    avoid: &[u64],
    matched: Option<&std::collections::BTreeMap<u64, Option<basalt_raft::LogId>>>,
) -> Option<u64> {
    let reach = |id: u64| matched.and_then(|m| m.get(&id).cloned().flatten());
    voters
        .iter()
        .copied()
        .filter(|&id| id != me && live.contains(&id) && !avoid.contains(&id))
        .min_by_key(|&id| (std::cmp::Reverse(reach(id)), id))
}

// The stop's phases run one after another: the doors (all told at once), then Raft, then the
// peer listener. Their bounds together fit the node's.
const _: () = assert!(
    DOORS_DRAIN_MAX.as_millis()
        + crate::limits::RAFT_SHUTDOWN_MAX.as_millis()
        + crate::limits::PEER_DRAIN_MAX.as_millis()
        <= NODE_STOP_MAX.as_millis()
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CLIENT_DRAIN_MAX, HTTP_DRAIN_MAX, IN_PROCESS_DRAIN_MAX};

    fn log_id(term: u64, index: u64) -> basalt_raft::LogId {
        openraft::testing::log_id::<basalt_raft::TypeConfig>(term, 1, index)
    }

    #[test]
    fn leadership_goes_to_the_live_voter_furthest_along_lowest_id_among_equals() {
        let matched = std::collections::BTreeMap::from([
            (2, Some(log_id(3, 90))),
            (3, Some(log_id(3, 100))),
            (4, Some(log_id(3, 100))),
            (5, None),
        ]);
        let all = [2, 3, 4, 5];
        assert_eq!(handoff_target(1, &[1, 2, 3, 4, 5], &all, &[], Some(&matched)), Some(3));
        // Order of the voters does not matter; a learner (not a voter) is never chosen.
        assert_eq!(handoff_target(1, &[5, 4, 1, 2], &all, &[], Some(&matched)), Some(4));
        // A voter that acknowledged nothing lately is passed over, however far its log reaches.
        assert_eq!(
            handoff_target(1, &[1, 2, 3, 4, 5], &[2, 4, 5], &[], Some(&matched)),
            Some(4)
        );
        assert_eq!(handoff_target(1, &[1, 2, 3], &[], &[], Some(&matched)), None);
        // A voter to avoid (a leader seen since the stop began, likely stopping) is passed over.
        assert_eq!(handoff_target(1, &[1, 2, 3, 4, 5], &all, &[3], Some(&matched)), Some(4));
        assert_eq!(handoff_target(1, &[1, 2], &[2], &[2], Some(&matched)), None);
        // A later term reaches further than a longer log of an earlier one.
        let matched = std::collections::BTreeMap::from([(2, Some(log_id(4, 10))), (3, Some(log_id(3, 100)))]);
        assert_eq!(handoff_target(1, &[1, 2, 3], &[2, 3], &[], Some(&matched)), Some(2));
        // Nothing known of the logs: the lowest live id.
        assert_eq!(handoff_target(2, &[3, 1, 2], &[1, 3], &[], None), Some(1));
        // Alone: nobody to hand over to.
        assert_eq!(handoff_target(1, &[1], &[], &[], None), None);
        assert_eq!(handoff_target(1, &[], &[], &[], None), None);
    }

    /// Doors that never end, waited one after another as the stop does: the waits end at the
    /// first door's bound after the stop, not at the sum of the bounds.
    #[tokio::test(start_paused = true)]
    async fn waits_of_doors_told_at_once_do_not_add_up() {
        let clock = StopClock::default();
        let stopping = clock.stopping();
        let began = Instant::now();
        // Someone seeing the stop later finds the same instant.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = clock.stopping();
        assert_eq!(
            later.after_stop(CLIENT_DRAIN_MAX),
            stopping.after_stop(CLIENT_DRAIN_MAX)
        );

        let never = std::future::pending::<()>;
        assert!(wait_until(stopping.after_stop(CLIENT_DRAIN_MAX), "client", never())
            .await
            .is_none());
        assert_eq!(began.elapsed(), CLIENT_DRAIN_MAX);
        assert!(wait_until(stopping.after_stop(HTTP_DRAIN_MAX), "http", never())
            .await
            .is_none());
        assert_eq!(began.elapsed(), CLIENT_DRAIN_MAX.max(HTTP_DRAIN_MAX));
        // A drain that begins only now gets its own bound, within the doors' deadline.
        assert!(
            wait_until(stopping.starting_now(IN_PROCESS_DRAIN_MAX), "in-process", never())
                .await
                .is_none()
        );
        assert!(began.elapsed() <= DOORS_DRAIN_MAX);
        // However late a door is waited for, its wait ends by the doors' deadline.
        tokio::time::sleep(DOORS_DRAIN_MAX).await;
        let at = Instant::now();
        assert!(wait_until(stopping.after_stop(HTTP_DRAIN_MAX), "late", never())
            .await
            .is_none());
        assert_eq!(Instant::now(), at, "a deadline already past does not wait");
        // A task that ends in time gives its output.
        assert_eq!(
            wait_until(Instant::now() + Duration::from_secs(1), "quick", async { 7 }).await,
            Some(7)
        );
    }
}
