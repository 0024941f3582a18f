//! The cluster administration service: status and membership changes.

use std::collections::BTreeSet;

use basalt_client::pb;
use basalt_client::pb::cluster_server::Cluster;
use basalt_client::ErrorCode;
use basalt_raft::member_addr::MemberAddr;
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{metrics_now, status, write_error_status, Api};

/// Asks the node being added whether it has a peer listener, and refuses an add whose
/// `peer_addr` does not fit, or a node that does not answer (a learner Raft cannot reach would
/// stay in the membership, and the add would wait for it forever).
async fn check_peer_listener(
    addr: &str,
    peer_addr: &str,
    credentials: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    tls: Option<&basalt_tls::Connector>,
) -> Result<(), Status> {
    use basalt_client::pb::cluster_client::ClusterClient;
    const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    // Not retried by clients (nothing changed), and not the transport's own words: the caller
    // learns the node did not answer, not why.
    let unreachable = |why: &str| {
        status(
            ErrorCode::MembershipRejected,
            format!("the node to add does not answer at {addr} ({why}): start it first, with the addresses given"),
        )
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| status(ErrorCode::InvalidArgument, format!("addr {addr:?}: {e}")))?;
    let mut request = Request::new(pb::StatusRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    // The caller's own credentials, never the node's: the address is the caller's to name (with
    // client TLS the probe shows no certificate either).
    if let Some(credentials) = credentials {
        request.metadata_mut().insert("authorization", credentials);
    }
    let channel = basalt_tls::lazy_channel(endpoint, addr, tls, PROBE_TIMEOUT);
    let probe = async { ClusterClient::new(channel).status(request).await };
    let reported = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(status)) => status.into_inner().peer_listen,
        Ok(Err(_)) => return Err(unreachable("its status request failed")),
        Err(_) => return Err(unreachable("no answer in time")),
    };
    match (peer_addr.is_empty(), reported.is_empty()) {
        (true, false) => Err(status(
            ErrorCode::MembershipRejected,
            format!(
                "the node at {addr} listens for peers on {reported}: add it with the address the members reach \
                 that listener at (peer_addr; `basalt cluster add-node --peer-addr`)"
            ),
        )),
        (false, true) => Err(status(
            ErrorCode::MembershipRejected,
            format!(
                "the node at {addr} has no peer listener: add it without peer_addr, or restart it with --peer-listen"
            ),
        )),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<GrpcResponse<pb::StatusResponse>, Status> {
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        let leader_addr = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| MemberAddr::client_of(&n.addr))
            .unwrap_or_default();
        let addr = membership
            .get_node(&metrics.id)
            .map(|n| MemberAddr::client_of(&n.addr))
            .unwrap_or_default();
        let state = match metrics.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        let (first_log_index, _) = (self.log_bounds)();
        Ok(GrpcResponse::new(pb::StatusResponse {
            node_id: metrics.id,
            addr,
            state: state.to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr,
            members: self.members(),
            first_log_index,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.as_ref().map(|l| l.index),
            snapshot_index: metrics.snapshot.as_ref().map(|l| l.index),
            purged_index: metrics.purged.as_ref().map(|l| l.index),
            cluster_id: self.cluster.id().map(|id| id.to_string()).unwrap_or_default(),
            peer_listen: self.peer_listen.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn regions(&self, request: Request<pb::RegionsRequest>) -> Result<GrpcResponse<pb::RegionsResponse>, Status> {
        crate::replication::status(self, request.into_inner().digest)
            .await
            .map(GrpcResponse::new)
    }

    async fn change_regions(
        &self,
        request: Request<pb::ChangeRegionsRequest>,
    ) -> Result<GrpcResponse<pb::RegionTopology>, Status> {
        use basalt_storage::apply::topology::{RegionSpec, TopologyChange};
        let Some(repl) = &self.replication else {
            return Err(status(
                ErrorCode::InvalidTopology,
                "this node is not configured for regions (start it with --region)",
            ));
        };
        let change = match request.into_inner().change {
            None => return Err(status(ErrorCode::InvalidArgument, "say which change: add or remove")),
            Some(pb::change_regions_request::Change::Add(spec)) => TopologyChange::Add {
                region: RegionSpec {
                    id: u16::try_from(spec.id).map_err(|_| {
                        status(
                            ErrorCode::InvalidArgument,
                            format!("region id {} is not in 1..=65535", spec.id),
                        )
                    })?,
                    name: spec.name,
                    endpoints: spec.endpoints,
                },
            },
            Some(pb::change_regions_request::Change::Remove(name)) => {
                let id = repl.topology().and_then(|t| t.id_of(&name)).ok_or_else(|| {
                    status(
                        ErrorCode::InvalidTopology,
                        format!("no region named {name:?} in this region's topology"),
                    )
                })?;
                TopologyChange::Remove { region: id }
            }
        };
        match self
            .propose(
                None,
                None,
                basalt_storage::command::Op::Region(basalt_storage::command::RegionOp::Topology { change }),
            )
            .await?
        {
            basalt_storage::command::Response::Topology(topology) => {
                Ok(GrpcResponse::new(crate::replication::topology_message(&topology)))
            }
            other => Err(super::unexpected_result(&other)),
        }
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let credentials = request.metadata().get("authorization").cloned();
        let r = request.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("addr {:?} is not host:port", r.addr),
            ));
        }
        if !r.peer_addr.is_empty() && r.peer_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("peer_addr {:?} is not host:port", r.peer_addr),
            ));
        }
        // On the leader only: a follower redirects without asking the node.
        self.ensure_leader()?;
        check_peer_listener(&r.addr, &r.peer_addr, credentials, self.credentials().connector()).await?;
        let member = MemberAddr {
            client: r.addr,
            peer: Some(r.peer_addr).filter(|peer| !peer.is_empty()),
        };
        self.raft
            .add_learner(
                r.id,
                BasicNode {
                    addr: member.to_membership(),
                },
                true,
            )
            .await
            .map_err(write_error_status)?;
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        self.ensure_leader()?;
        let metrics = metrics_now(&self.raft);
        if metrics.membership_config.membership().get_node(&id).is_none() {
            return Err(status(
                ErrorCode::MembershipRejected,
                format!("node {id} is not a member; add it first"),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error_status)?;
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<GrpcResponse<pb::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        self.ensure_leader()?;
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(status(
                ErrorCode::MembershipRejected,
                format!("node {id} is not a member"),
            ));
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error_status)?;
        } else {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error_status)?;
        }
        Ok(GrpcResponse::new(pb::MembershipResponse {
            members: self.members(),
        }))
    }
}
