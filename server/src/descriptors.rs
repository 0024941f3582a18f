//! The node's file descriptors: how many it may open, and how many of them its listeners may
//! hand to connections.
//!
//! A node needs descriptors of its own (its log segments, RocksDB's files, links to the other
//! members and regions, snapshots) and one per connection it accepts. If clients could open
//! connections until the process limit, the node's own next `open` would fail with `EMFILE`; a
//! log that cannot write its vote stops the node. So at start the node raises its soft limit to
//! the hard one (as Redis and Go programs do), keeps [`NODE_DESCRIPTORS_RESERVED`] for itself,
//! [`PEER_CONNECTIONS_MAX`] for the peer listener and [`HTTP_CONNECTIONS_MAX`] for the HTTP door
//! (so that a node flooded with clients can still be watched), and gives the client doors
//! (client gRPC, RESP, edge) together the rest, at most [`CLIENT_CONNECTIONS_MAX`]: each accepted
//! connection holds a permit of a [`basalt_tls::ConnectionBudget`] until it closes, and one beyond
//! it is refused at once. A limit too low to leave [`CLIENT_CONNECTIONS_MIN`] refuses to start,
//! saying which limit to raise.

use crate::limits::{
    CLIENT_CONNECTIONS_MAX, CLIENT_CONNECTIONS_MIN, HTTP_CONNECTIONS_MAX, NODE_DESCRIPTORS_RESERVED,
    PEER_CONNECTIONS_MAX,
};

/// How the descriptors the process may open are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorPlan {
    /// The process's (soft) limit on open descriptors.
    pub open_files_limit: u64,
    /// Connections the client doors may hold open together.
    pub client_connections: usize,
    /// Connections the peer listener may hold open.
    pub peer_connections: usize,
    /// Connections the HTTP door may hold open.
    pub http_connections: usize,
    /// Descriptors kept for the edge's requests to its origins (each in flight may hold a
    /// connection): the origins times `cache.origin_requests_max`, on top of the node's own.
    pub origin_connections: u64,
}

impl DescriptorPlan {
    /// The budgets of the plan's connections, one per group of listeners.
    pub fn budgets(&self) -> ConnectionBudgets {
        use basalt_tls::ConnectionBudget;
        ConnectionBudgets {
            client: ConnectionBudget::new("client doors", self.client_connections),
            http: ConnectionBudget::new("HTTP door", self.http_connections),
            peer: ConnectionBudget::new("peer listener", self.peer_connections),
        }
    }
}

/// The connections the node's listeners may hold against the plan: each accepted connection
/// holds a permit of its group's budget until it closes.
#[derive(Clone)]
pub struct ConnectionBudgets {
    /// The client doors together: client gRPC, RESP, edge (and Raft, on a node without a peer
    /// listener), and the origin connections of answers the edge streams through.
    pub client: std::sync::Arc<basalt_tls::ConnectionBudget>,
    /// The HTTP door (/metrics, /health, control).
    pub http: std::sync::Arc<basalt_tls::ConnectionBudget>,
    /// The peer listener (Raft and the calls between members).
    pub peer: std::sync::Arc<basalt_tls::ConnectionBudget>,
}

impl ConnectionBudgets {
    /// Each budget with the prefix of its metrics and the listeners it covers (for /metrics).
    pub fn labelled(&self) -> [(&basalt_tls::ConnectionBudget, &'static str, &'static str); 3] {
        [
            (
                &self.client,
                "basalt_client_connections",
                "client doors (client gRPC, RESP, edge, and the origin connections of the edge's streamed answers) together",
            ),
            (&self.http, "basalt_http_connections", "HTTP door"),
            (&self.peer, "basalt_peer_connections", "peer listener"),
        ]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this process may open {limit} file descriptors; a node needs at least {needed} ({NODE_DESCRIPTORS_RESERVED} for its \
     own files and links, {PEER_CONNECTIONS_MAX} for peer connections, {HTTP_CONNECTIONS_MAX} for the HTTP door, \
     {origin_connections} for the edge's origin requests, {CLIENT_CONNECTIONS_MIN} for clients): raise the limit \
     (`ulimit -n`, or LimitNOFILE= in a systemd unit)"
)]
pub struct TooFewDescriptors {
    pub limit: u64,
    pub needed: u64,
    pub origin_connections: u64,
}

/// The plan for a process that may open `open_files_limit` descriptors, whose edge (if any)
/// may have `origin_connections` requests in flight to its origins together. Pure.
pub fn plan(open_files_limit: u64, origin_connections: u64) -> Result<DescriptorPlan, TooFewDescriptors> {
    let reserved = ((NODE_DESCRIPTORS_RESERVED + PEER_CONNECTIONS_MAX + HTTP_CONNECTIONS_MAX) as u64)
        .saturating_add(origin_connections);
    let needed = reserved.saturating_add(CLIENT_CONNECTIONS_MIN as u64);
    if open_files_limit < needed {
        return Err(TooFewDescriptors {
            limit: open_files_limit,
            needed,
            origin_connections,
        });
    }
    let left = usize::try_from(open_files_limit - reserved).unwrap_or(usize::MAX);
    Ok(DescriptorPlan {
        open_files_limit,
        client_connections: left.min(CLIENT_CONNECTIONS_MAX),
        peer_connections: PEER_CONNECTIONS_MAX,
        http_connections: HTTP_CONNECTIONS_MAX,
        origin_connections,
    })
}

/// Raises the process's soft limit on open descriptors to its hard limit (which an
/// unprivileged process may do; where the kernel refuses that, to the largest of a few smaller
/// steps it takes), and returns the soft limit in force afterwards. If raising fails, the limit
/// stays as it was (and is returned).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no memory is shared.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The hard limit first; where the kernel refuses it (macOS's hard limit is "unlimited",
    // above what a process may have), smaller steps, as Go's runtime does.
    let steps = [limit.rlim_max, 1 << 20, 65_536, 24_576, 10_240];
    for want in steps
        .into_iter()
        .filter(|want| *want > limit.rlim_cur && *want <= limit.rlim_max)
    {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = want;
            break;
        }
        tracing::warn!(
            soft = limit.rlim_cur,
            want,
            error = %std::io::Error::last_os_error(),
            "could not raise the open files limit"
        );
    }
    // RLIM_INFINITY is u64::MAX: any count is below it.
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_get_what_the_node_and_its_peers_leave_up_to_the_cap() {
        let reserved = (NODE_DESCRIPTORS_RESERVED + PEER_CONNECTIONS_MAX + HTTP_CONNECTIONS_MAX) as u64;
        let needed = reserved + CLIENT_CONNECTIONS_MIN as u64;
        assert_eq!(
            plan(needed - 1, 0),
            Err(TooFewDescriptors {
                limit: needed - 1,
                needed,
                origin_connections: 0,
            })
        );
        assert_eq!(
            plan(needed, 0).expect("enough").client_connections,
            CLIENT_CONNECTIONS_MIN
        );
        // An edge's origin requests come out of the clients' share.
        assert_eq!(
            plan(needed + 100, 100).expect("enough").client_connections,
            CLIENT_CONNECTIONS_MIN
        );
        assert!(plan(needed + 99, 100).is_err());
        let plan_4096 = plan(4096, 0).expect("4096");
        assert_eq!(plan_4096.client_connections as u64, 4096 - reserved);
        assert_eq!(plan_4096.peer_connections, PEER_CONNECTIONS_MAX);
        assert_eq!(plan_4096.http_connections, HTTP_CONNECTIONS_MAX);
        assert_eq!(
            plan(1 << 20, 0).expect("many").client_connections,
            CLIENT_CONNECTIONS_MAX
        );
        assert_eq!(
            plan(u64::MAX, 0).expect("unlimited").client_connections,
            CLIENT_CONNECTIONS_MAX
        );
        let message = plan(1024, 0).expect_err("too few").to_string();
        assert!(message.contains("1024") && message.contains("ulimit -n"), "{message}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_files_limit().expect("getrlimit");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
