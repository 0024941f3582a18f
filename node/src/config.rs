//! Node configuration: from flags or a TOML file, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// gRPC address: the client API and the Raft transport.
    pub listen: SocketAddr,
    /// HTTP address for /metrics and /health.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The initial voters (id → gRPC address), this node included. Used only with `init`.
    #[serde(default)]
    pub peers: BTreeMap<u64, String>,
    /// Bootstrap a new cluster from `peers` if this node's storage is empty. Set it on one node.
    #[serde(default)]
    pub init: bool,
    #[serde(default = "defaults::heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "defaults::election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "defaults::election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    #[serde(default = "defaults::snapshot_entries")]
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    #[serde(default = "defaults::logs_to_keep")]
    pub logs_to_keep: u64,
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// A client idle this long has its session (saved answers) forgotten: exactly-once holds for
    /// retries made within this time of the client's last request.
    #[serde(default = "defaults::session_idle_ms")]
    pub session_idle_ms: u64,
    /// KV revisions of change history kept for watchers; a watch from an older revision gets
    /// `COMPACTED`.
    #[serde(default = "defaults::kv_history_revisions")]
    pub kv_history_revisions: u64,
    /// Dial peer N at this address instead of its membership address, for Raft traffic only
    /// (clients still use the membership address). The fault-injection harness routes every
    /// node-to-node connection through its link proxies this way.
    #[serde(default)]
    pub peer_routes: BTreeMap<u64, String>,
}

pub mod defaults {
    pub fn heartbeat_ms() -> u64 {
        50
    }
    pub fn election_timeout_min_ms() -> u64 {
        150
    }
    pub fn election_timeout_max_ms() -> u64 {
        300
    }
    pub fn snapshot_entries() -> u64 {
        50_000
    }
    pub fn logs_to_keep() -> u64 {
        10_000
    }
    pub fn session_idle_ms() -> u64 {
        3_600_000
    }
    pub fn kv_history_revisions() -> u64 {
        basalt_storage::limits::KV_HISTORY_REVISIONS_DEFAULT
    }
    pub fn segment_bytes() -> u64 {
        basalt_storage::limits::SEGMENT_BYTES_DEFAULT
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks how the settings relate, as etcd's `Config.validate` does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.heartbeat_ms == 0 {
            return invalid("heartbeat_ms must be positive".into());
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_ms {
            return invalid(format!(
                "election_timeout_min_ms ({}) must be at least 3 × heartbeat_ms ({})",
                self.election_timeout_min_ms, self.heartbeat_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return invalid("election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if self.session_idle_ms < 60_000 {
            return invalid(format!(
                "session_idle_ms ({}) must be at least 60000: clients retry for seconds, and a shorter window \
                 risks applying a retry twice",
                self.session_idle_ms
            ));
        }
        if self.kv_history_revisions == 0 {
            return invalid("kv_history_revisions must be positive".into());
        }
        if self.snapshot_entries == 0 {
            return invalid("snapshot_entries must be positive".into());
        }
        if let Some((id, addr)) = self
            .peer_routes
            .iter()
            .find(|(_, addr)| addr.parse::<SocketAddr>().is_err())
        {
            return invalid(format!("peer route {id}={addr:?} is not host:port"));
        }
        if self.init && !self.peers.contains_key(&self.id) {
            return invalid(format!("init needs this node (id {}) among the peers", self.id));
        }
        basalt_storage::log::LogOptions {
            segment_bytes_max: self.segment_bytes,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The address other nodes and clients use to reach this node.
    pub fn advertised_addr(&self) -> String {
        self.peers
            .get(&self.id)
            .cloned()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("peer {part:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("peer id {id:?} is not a number")))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(ConfigError::Invalid(format!("peer id {id} given twice")));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NodeConfig {
        NodeConfig {
            id: 1,
            listen: "127.0.0.1:7001".parse().expect("addr"),
            http: None,
            data_dir: "/tmp/x".into(),
            peers: parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").expect("peers"),
            init: true,
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_entries: 100,
            logs_to_keep: 10,
            segment_bytes: 1 << 20,
            session_idle_ms: 3_600_000,
            kv_history_revisions: 1000,
            peer_routes: BTreeMap::new(),
        }
    }

    #[test]
    fn valid_config_passes() {
        base().validate().expect("valid");
    }

    #[test]
    fn related_settings_are_checked() {
        let mut c = base();
        c.election_timeout_min_ms = 100;
        assert!(c.validate().is_err());
        let mut c = base();
        c.election_timeout_max_ms = 250;
        assert!(c.validate().is_err());
        let mut c = base();
        c.id = 9;
        assert!(c.validate().is_err(), "init without self in peers");
        let mut c = base();
        c.peer_routes = parse_peers("2=not-an-address").expect("parses as a map");
        assert!(c.validate().is_err(), "a peer route must be host:port");
    }

    #[test]
    fn peers_parse_and_reject_garbage() {
        assert_eq!(parse_peers("1=a:1, 2=b:2").expect("ok").len(), 2);
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1").is_err());
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let text = "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp\"\nbogus = 1\n";
        assert!(toml::from_str::<NodeConfig>(text).is_err());
    }
}
