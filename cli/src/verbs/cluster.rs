//! `basalt cluster ...`: the region's status and its membership (add, promote, remove nodes).

use basalt_client::Client;
use clap::Subcommand;

use super::show_optional;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Leader, term, members, and each node's last log index and applied index.
    Status,
    /// Add a running node as a learner (it catches up before this returns).
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its client address (--listen).
        #[arg(long)]
        addr: String,
        /// Its peer listener (--peer-listen), where the members reach it for Raft.
        #[arg(long)]
        peer_addr: Option<String>,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster.
    RemoveNode { id: u64 },
}

/// Runs one `basalt cluster` verb.
pub async fn cluster(client: &Client, command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Status => print_status(client).await,
        ClusterCommand::AddNode { id, addr, peer_addr } => {
            let members = client
                .add_member(id, &addr, peer_addr.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            crate::outln!(
                "added node {id} ({addr}) as a learner; members: {}",
                describe_members(&members)
            );
            Ok(())
        }
        ClusterCommand::Promote { id } => {
            let members = client.promote(id).await.map_err(|e| e.to_string())?;
            crate::outln!("promoted node {id}; members: {}", describe_members(&members));
            Ok(())
        }
        ClusterCommand::RemoveNode { id } => {
            let members = client.remove_node(id).await.map_err(|e| e.to_string())?;
            crate::outln!("removed node {id}; members: {}", describe_members(&members));
            Ok(())
        }
    }
}

fn describe_members(members: &[basalt_client::pb::Member]) -> String {
    members
        .iter()
        .map(|m| {
            let peer = if m.peer_addr.is_empty() {
                String::new()
            } else {
                format!(" peer {}", m.peer_addr)
            };
            format!("{}@{}{peer}{}", m.id, m.addr, if m.voter { "" } else { " (learner)" })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn print_status(client: &Client) -> Result<(), String> {
    let status = client.cluster_status().await.map_err(|e| e.to_string())?;
    crate::outln!(
        "leader: {} ({})  term: {}  cluster: {}",
        show_optional(status.leader_id),
        if status.leader_addr.is_empty() {
            "-"
        } else {
            &status.leader_addr
        },
        status.term,
        if status.cluster_id.is_empty() {
            "-"
        } else {
            &status.cluster_id
        }
    );
    crate::outln!(
        "{:<6} {:<22} {:<9} {:<10} {:>10} {:>10} {:>10}",
        "id",
        "addr",
        "role",
        "state",
        "last_log",
        "applied",
        "snapshot"
    );
    for member in &status.members {
        let role = if member.voter { "voter" } else { "learner" };
        match client.node_status(&member.addr).await {
            Ok(s) => crate::outln!(
                "{:<6} {:<22} {:<9} {:<10} {:>10} {:>10} {:>10}",
                member.id,
                member.addr,
                role,
                s.state,
                show_optional(s.last_log_index),
                show_optional(s.applied_index),
                show_optional(s.snapshot_index)
            ),
            Err(e) => crate::outln!("{:<6} {:<22} {:<9} unreachable: {e}", member.id, member.addr, role),
        }
    }
    Ok(())
}
