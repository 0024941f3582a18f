//! The edge cache: purges by URL, prefix, tag or everything, and the region's edge counters.
//! See docs/data-types/edge-cache.md.

use std::time::Duration;

use crate::client::{millis, Client};
use crate::error::ClientError;
use crate::pb;
use crate::pb::cache_client::CacheClient;

/// How long a purge waits for every node of the region when not told.
pub const PURGE_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest a purge waits for every node of the region (the server's limit).
pub const PURGE_WAIT_MAX: Duration = Duration::from_secs(30);
/// What the SDK allows beyond the wait for the answer to arrive.
const PURGE_REPLY_MARGIN: Duration = Duration::from_secs(1);

/// What a purge removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeTarget {
    /// Every variant of this exact path with its query, as clients ask for it (`/assets/app.js`).
    Url(String),
    /// Every object whose path starts with this (`/assets/`).
    Prefix(String),
    /// Every object carrying this tag (`Surrogate-Key` or `Cache-Tag`), case-insensitively.
    Tag(String),
    /// Everything stored.
    Everything,
}

/// A node that had not applied a purge when the call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaggingNode {
    pub node_id: u64,
    pub addr: String,
    pub reason: String,
}

/// What a purge did in the region that took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeReceipt {
    /// The region's purge number.
    pub seq: u64,
    /// Nodes whose edge had applied it when the call returned: none of them serves what it
    /// matches from before the purge.
    pub applied: Vec<u64>,
    /// Nodes that had not (down, partitioned, slow). They apply it when they catch up and may
    /// serve what it matches until then. Other regions apply it once their link delivers it
    /// (`basalt regions status` shows what is pending).
    pub lagging: Vec<LaggingNode>,
}

impl PurgeReceipt {
    /// Whether every node of the region applied the purge before the call returned.
    pub fn complete(&self) -> bool {
        self.lagging.is_empty()
    }
}

/// One node's edge counters since it started.
pub type NodeCacheStats = pb::NodeCacheStats;

/// The edge cache. Get one with [`Client::cache`].
#[derive(Clone)]
pub struct Cache {
    pub(crate) client: Client,
}

impl Cache {
    /// Purges every object tagged `tag` (`Surrogate-Key` / `Cache-Tag`) from every node's edge
    /// in this region, and from every other region's once replication delivers it.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an empty tag or one with spaces or commas.
    pub async fn purge_tag(&self, tag: impl Into<String>) -> Result<PurgeReceipt, ClientError> {
        self.purge(PurgeTarget::Tag(tag.into()), None).await
    }

    /// Purges every variant of the exact path `url` (with its query).
    pub async fn purge_url(&self, url: impl Into<String>) -> Result<PurgeReceipt, ClientError> {
        self.purge(PurgeTarget::Url(url.into()), None).await
    }

    /// Purges every object whose path starts with `prefix`.
    pub async fn purge_prefix(&self, prefix: impl Into<String>) -> Result<PurgeReceipt, ClientError> {
        self.purge(PurgeTarget::Prefix(prefix.into()), None).await
    }

    /// Purges `target`, waiting at most `wait` (default 5 s, at most 30 s) for the purge to be
    /// committed and every node of the region to apply it. Retrying one whose outcome is unknown
    /// is safe: it records another purge, which removes at most what was stored since.
    pub async fn purge(&self, target: PurgeTarget, wait: Option<Duration>) -> Result<PurgeReceipt, ClientError> {
        use pb::cache_purge_request::Target;
        // The server's default when none is given; at most its maximum; at least 1 ms (0 asks
        // for the default).
        let wait = wait
            .unwrap_or(PURGE_WAIT_DEFAULT)
            .clamp(Duration::from_millis(1), PURGE_WAIT_MAX);
        let message = pb::CachePurgeRequest {
            target: Some(match target {
                PurgeTarget::Url(url) => Target::Url(url),
                PurgeTarget::Prefix(prefix) => Target::Prefix(prefix),
                PurgeTarget::Tag(tag) => Target::Tag(tag),
                PurgeTarget::Everything => Target::Everything(true),
            }),
            wait_ms: millis(wait),
        };
        // The server answers within the wait (write included) plus its peers' reply margin; the
        // attempt's own timeout comes on top of this.
        let reply = self
            .client
            .unary_waiting(true, message, wait, PURGE_REPLY_MARGIN, |c, r| async move {
                crate::service_client!(CacheClient, c).purge(r).await
            })
            .await?;
        Ok(PurgeReceipt {
            seq: reply.seq,
            applied: reply.applied,
            lagging: reply
                .lagging
                .into_iter()
                .map(|l| LaggingNode {
                    node_id: l.node_id,
                    addr: l.addr,
                    reason: l.reason,
                })
                .collect(),
        })
    }

    /// Every node's edge counters (a node that could not be asked has its `error` set), in node
    /// order.
    pub async fn stats(&self) -> Result<Vec<NodeCacheStats>, ClientError> {
        let reply = self
            .client
            .unary(false, pb::CacheStatsRequest { all_nodes: true }, |c, r| async move {
                crate::service_client!(CacheClient, c).stats(r).await
            })
            .await?;
        Ok(reply.nodes)
    }
}
