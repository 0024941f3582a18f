//! Which cluster a Raft message belongs to: every request and every reply of the Raft transport
//! names the sender's cluster id (`basalt-cluster-id` metadata), and both sides apply
//! [`basalt_storage::cluster_id::admit`] to it. A message from a node of another cluster is
//! refused before openraft sees it, with a log line on each side naming both ids.
//!
//! The id lives in the data directory ([`basalt_storage::cluster_id`]). A node without one takes
//! the id of the first append or snapshot that passes every other check (never a vote's, which
//! any candidate sends, nor a reply's), and keeps it durably before that message is accepted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use basalt_storage::cluster_id::{self, admit, Admission, ClusterId};
use basalt_storage::data_dir::DataDirError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

/// The metadata key naming the sender's cluster id on Raft requests and replies.
pub const CLUSTER_ID_HEADER: &str = "basalt-cluster-id";

/// This node's cluster id, shared by the Raft network's two sides.
pub struct ClusterGuard {
    data_dir: PathBuf,
    /// Read by every message; written once, after the id file is durable.
    id: RwLock<Option<ClusterId>>,
    /// Held while an id is stamped, so two first messages cannot stamp two ids, and so that
    /// the readers of `id` never wait for the fsyncs.
    stamping: Mutex<()>,
    /// Messages (sent or received) refused for naming another cluster, since start.
    refused: AtomicU64,
    /// Whether this node may take an id from a peer: only while it holds nothing (set at start).
    may_adopt: std::sync::atomic::AtomicBool,
}

/// Which side of an exchange a check is on, for the log line.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// This node received a request.
    Request,
    /// This node received a reply (or a refusal) to its request.
    Reply,
}

/// A peer's message named another cluster (or no readable id).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterRefusal {
    #[error(
        "the peer belongs to cluster {}, this node to cluster {ours}: a node of another cluster \
         (check the --peers list and the addresses the members were added with)",
        theirs.map_or_else(|| "(none named: a cluster bootstrapped before cluster ids, or a node whose \
         CLUSTER_ID file is gone)".to_string(), |id| id.to_string())
    )]
    OtherCluster { ours: ClusterId, theirs: Option<ClusterId> },
    #[error(
        "the peer names cluster {theirs}, and this node holds data but no cluster id (a cluster bootstrapped \
         before cluster ids, or a lost CLUSTER_ID file): it takes no id from a peer; start it with --cluster-id"
    )]
    HoldsDataWithoutId { theirs: ClusterId },
    #[error("the peer names no readable cluster id ({found:?})")]
    Unreadable { found: String },
    #[error("keeping the adopted cluster id {id}: {reason}")]
    Adopting { id: ClusterId, reason: String },
}

impl ClusterRefusal {
    /// The refusal as the gRPC status a peer receives: FAILED_PRECONDITION, which the sender's
    /// openraft takes as a network error and retries (so nothing changes, and a node moved to the
    /// right cluster rejoins by itself).
    pub fn into_status(self, ours: Option<ClusterId>) -> Status {
        let mut status = Status::failed_precondition(format!("cluster id: {self}"));
        name_id(status.metadata_mut(), ours);
        status
    }
}

fn name_id(metadata: &mut MetadataMap, id: Option<ClusterId>) {
    if let Some(id) = id {
        if let Ok(value) = MetadataValue::try_from(id.to_string()) {
            metadata.insert(CLUSTER_ID_HEADER, value);
        }
    }
}

impl ClusterGuard {
    /// The guard of the node whose data directory is `data_dir`, with the id kept there.
    pub fn open(data_dir: PathBuf) -> Result<ClusterGuard, DataDirError> {
        let id = cluster_id::read(&data_dir)?;
        Ok(ClusterGuard {
            data_dir,
            id: RwLock::new(id),
            stamping: Mutex::new(()),
            refused: AtomicU64::new(0),
            may_adopt: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether this node, while it has no id, may take one from a peer's append: true only for a
    /// node that holds nothing (no log, no membership). A node that holds data but no id (of a
    /// cluster from before cluster ids, or whose id file is gone) refuses every request naming an
    /// id instead, so a stranger's leader cannot claim it: it must be given its id
    /// (`--cluster-id`).
    pub fn set_may_adopt(&self, may_adopt: bool) {
        self.may_adopt.store(may_adopt, Ordering::Relaxed);
    }

    /// This node's cluster id, if it has one yet.
    pub fn id(&self) -> Option<ClusterId> {
        *self.id.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives this node `id` unless it has one, durably. Used when a cluster is bootstrapped, for
    /// `--cluster-id`, and by [`ClusterGuard::adopt`]; returns the id the node has afterwards.
    ///
    /// Blocking: writes and fsyncs the id file, once in a node's life.
    pub fn stamp_if_none(&self, id: ClusterId) -> Result<ClusterId, DataDirError> {
        let _stamping = self.stamping.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = self.id() {
            return Ok(current);
        }
        cluster_id::stamp(&self.data_dir, id)?;
        *self.id.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(id);
        tracing::info!(cluster_id = %id, "this node belongs to cluster {id}");
        Ok(id)
    }

    /// Names this node's id (if it has one) in a request's or a reply's metadata.
    pub fn name(&self, metadata: &mut MetadataMap) {
        name_id(metadata, self.id());
    }

    /// Checks the id a peer's request or reply names (a reply naming none is accepted: its
    /// sender has no id yet, and the request named this node's). `Ok(Some(id))`: this node has no id and
    /// the peer names `id`, which the caller adopts ([`ClusterGuard::adopt`]) once the message
    /// has passed its other checks, if it is an append or a snapshot.
    pub fn check(&self, metadata: &MetadataMap, side: Side, peer: &str) -> Result<Option<ClusterId>, ClusterRefusal> {
        let theirs = match metadata.get(CLUSTER_ID_HEADER) {
            None => None,
            Some(value) => {
                let text = value.to_str().unwrap_or("");
                match ClusterId::parse(text) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        let refusal = ClusterRefusal::Unreadable {
                            found: text.chars().take(64).collect(),
                        };
                        self.log_refusal(&refusal, side, peer);
                        return Err(refusal);
                    }
                }
            }
        };
        if theirs.is_none() && matches!(side, Side::Reply) {
            // A member that has not taken the id yet (it takes it from its first append) answers
            // the votes that elect the leader it will take it from; and a node that refuses this
            // one's request for naming no id names its own.
            return Ok(None);
        }
        match admit(self.id(), theirs) {
            Admission::Accept => Ok(None),
            Admission::MayAdopt(id) if self.may_adopt.load(Ordering::Relaxed) => Ok(Some(id)),
            Admission::MayAdopt(id) => {
                let refusal = ClusterRefusal::HoldsDataWithoutId { theirs: id };
                self.log_refusal(&refusal, side, peer);
                Err(refusal)
            }
            Admission::Refuse { ours, theirs } => {
                let refusal = ClusterRefusal::OtherCluster { ours, theirs };
                self.log_refusal(&refusal, side, peer);
                Err(refusal)
            }
        }
    }

    /// Takes `id` as this node's, durably, before the append or snapshot that named it is
    /// accepted. Refused if another message stamped another id first, or the stamp fails.
    ///
    /// Blocking: writes and fsyncs the id file, once in a node's life (its first append).
    pub fn adopt(&self, id: ClusterId, peer: &str) -> Result<(), ClusterRefusal> {
        let refusal = match self.stamp_if_none(id) {
            Ok(kept) if kept == id => {
                tracing::info!(cluster_id = %id, peer, "took the cluster id of the first leader that reached this node");
                return Ok(());
            }
            // Another message adopted an id first, between the check and the stamp.
            Ok(kept) => ClusterRefusal::OtherCluster {
                ours: kept,
                theirs: Some(id),
            },
            Err(e) => ClusterRefusal::Adopting {
                id,
                reason: e.to_string(),
            },
        };
        self.log_refusal(&refusal, Side::Request, peer);
        Err(refusal)
    }

    /// Messages refused for naming another cluster (or for an id this node could not keep),
    /// since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// One line at the first refusal and then ever more rarely: a stranger retries for as long as
    /// it runs (heartbeats every few tens of ms).
    fn log_refusal(&self, refusal: &ClusterRefusal, side: Side, peer: &str) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            match side {
                Side::Request => {
                    tracing::warn!(
                        peer,
                        refused,
                        "refusing peer messages from a node of another cluster: {refusal}"
                    )
                }
                Side::Reply => {
                    tracing::warn!(peer, refused, "a peer refuses this node's messages: {refusal}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata_naming(id: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(id) = id {
            metadata.insert(CLUSTER_ID_HEADER, MetadataValue::try_from(id).expect("ascii"));
        }
        metadata
    }

    const A: &str = "0000000000000000000000000000000a";
    const B: &str = "0000000000000000000000000000000b";

    #[test]
    fn a_new_node_adopts_only_when_told_to_durably_and_then_refuses_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = ClusterGuard::open(dir.path().to_path_buf()).expect("open");
        assert_eq!(guard.id(), None);
        assert_eq!(
            guard.check(&metadata_naming(None), Side::Request, "p").expect("no ids"),
            None
        );
        let a = ClusterId::parse(A).expect("id");
        // A vote naming A: accepted, not adopted.
        assert_eq!(
            guard.check(&metadata_naming(Some(A)), Side::Request, "p").expect("ok"),
            Some(a)
        );
        assert_eq!(guard.id(), None, "checking adopts nothing");
        guard.adopt(a, "p").expect("adopted");
        assert_eq!(guard.id(), Some(a));
        let refusal = guard
            .check(&metadata_naming(Some(B)), Side::Request, "p")
            .expect_err("another cluster");
        assert!(matches!(refusal, ClusterRefusal::OtherCluster { .. }), "{refusal}");
        assert!(
            refusal.to_string().contains(A) && refusal.to_string().contains(B),
            "{refusal}"
        );
        assert_eq!(guard.refused(), 1);
        let unnamed = guard
            .check(&metadata_naming(None), Side::Request, "p")
            .expect_err("a node with an id refuses a request naming none");
        assert_eq!(
            guard
                .check(&metadata_naming(None), Side::Reply, "p")
                .expect("a member without an id yet"),
            None
        );
        assert!(unnamed.to_string().contains("none named"), "{unnamed}");
        let late = guard
            .adopt(ClusterId::parse(B).expect("id"), "p")
            .expect_err("already has A");
        assert!(matches!(late, ClusterRefusal::OtherCluster { .. }), "{late}");

        // The adopted id survives a restart.
        let reopened = ClusterGuard::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(reopened.id(), Some(a));
        assert!(reopened.check(&metadata_naming(Some(B)), Side::Reply, "p").is_err());
        let bad = reopened
            .check(&metadata_naming(Some("zz")), Side::Request, "p")
            .expect_err("unreadable");
        assert!(matches!(bad, ClusterRefusal::Unreadable { .. }), "{bad}");
    }

    #[test]
    fn a_node_holding_data_without_an_id_takes_none_from_a_peer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = ClusterGuard::open(dir.path().to_path_buf()).expect("open");
        guard.set_may_adopt(false);
        let e = guard
            .check(&metadata_naming(Some(A)), Side::Request, "p")
            .expect_err("not pristine");
        assert!(matches!(e, ClusterRefusal::HoldsDataWithoutId { .. }), "{e}");
        assert_eq!(
            guard
                .check(&metadata_naming(None), Side::Request, "p")
                .expect("old peers"),
            None
        );
        assert_eq!(guard.id(), None);
    }

    #[test]
    fn a_stamp_that_fails_is_a_counted_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = ClusterGuard::open(dir.path().join("gone")).expect("open: no id yet");
        let e = guard
            .adopt(ClusterId::parse(A).expect("id"), "p")
            .expect_err("no directory");
        assert!(matches!(e, ClusterRefusal::Adopting { .. }), "{e}");
        assert_eq!(guard.refused(), 1);
        assert_eq!(guard.id(), None);
    }

    #[test]
    fn a_refusal_names_the_refusing_node_s_id_to_the_sender() {
        let ours = ClusterId::parse(A).expect("id");
        let status = ClusterRefusal::OtherCluster {
            ours,
            theirs: Some(ClusterId::parse(B).expect("id")),
        }
        .into_status(Some(ours));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.metadata().get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()),
            Some(A)
        );
    }

    #[test]
    fn stamping_keeps_the_first_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = ClusterGuard::open(dir.path().to_path_buf()).expect("open");
        let a = ClusterId::parse(A).expect("id");
        assert_eq!(guard.stamp_if_none(a).expect("stamp"), a);
        assert_eq!(guard.stamp_if_none(ClusterId::parse(B).expect("id")).expect("kept"), a);
    }
}
