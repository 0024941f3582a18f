//! Node configuration: from flags or a TOML file, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use basalt_raft::member_addr::MemberAddr;
use basalt_storage::apply::topology::RegionEndpoint;
use basalt_storage::cluster_id::ClusterId;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// gRPC address: the client API (and the Raft transport when there is no `peer_listen`).
    pub listen: SocketAddr,
    /// The peer listener (gRPC): Raft and snapshot transfers between the members, apart from
    /// the client API, as etcd keeps 2380 apart from 2379. When set, the client port serves no
    /// Raft. This node's `peers` entry must then name it (`ID=CLIENT/PEER`).
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// The cluster this node must belong to (32 hex digits, as `basalt cluster status` prints
    /// it). A node without an id takes this one; a node whose data belongs to another refuses to
    /// start. Without it, `init` makes a new id and the other members take it from the first
    /// Raft message they get.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Mutual TLS on the peer listener (`[peer_tls]`: `cert`, `key`, `ca`, PEM files): peers
    /// must present a certificate of the cluster's CA, and this node presents `cert` to them.
    /// Reloaded when the files change. Needs `peer_listen`.
    #[serde(default)]
    pub peer_tls: Option<TlsConfig>,
    /// TLS on every client door: the client API, HTTP, RESP and the edge (`[tls]`: `cert`, `key`,
    /// `ca`, and optionally `client_ca`, PEM files). With `client_ca`, gRPC clients may show a
    /// certificate of it (its common name names the user they authenticate as) instead of a
    /// token. The node calls other regions' client ports (home forwarding, the feed) over TLS
    /// too, trusting `ca`: every node of a deployment runs client TLS or none (its own region's
    /// members it calls on their peer listeners). Reloaded when the files change. Needs `peer_listen` (Raft stays off TLS-less
    /// client ports).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Client authentication (`[auth]`: `root_token_file`): every request on the client port,
    /// RESP and the HTTP purge endpoint must carry a token, the root's or a user's, and is
    /// checked against its roles (docs/security.md). Needs `peer_listen`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// HTTP address for /metrics and /health.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The initial voters (id → `CLIENT` or `CLIENT/PEER`: the client address, and the peer
    /// listener's when the members have one), this node included. Used with `init`.
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
    /// Proposals of merged KV writes a leader keeps in flight: requests that arrive while that
    /// many are on their way wait and leave together as one log entry. 0 proposes every request
    /// as its own entry.
    #[serde(default = "defaults::kv_merge_in_flight")]
    pub kv_merge_in_flight: usize,
    /// Added to this node's wall clock, in ms: tests, demos and the partition harness give a node
    /// a clock that is off this way (changeable at run time through the HTTP control endpoint).
    #[serde(default)]
    pub clock_skew_ms: i64,
    /// The most any node's clock may read ahead of another's, in ms (CockroachDB's max offset).
    /// A Raft message from a peer whose clock is further off is refused, and a stamp further
    /// ahead of this node's clock (an applied entry, another region's batch) does not move it.
    /// Every node of every region must use the same value.
    #[serde(default = "defaults::max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
    /// Serve `PUT /debug/clock-skew` on the HTTP port, which changes this node's clock skew at
    /// run time: for the partition harness and tests only, never in production.
    #[serde(default)]
    pub allow_clock_control: bool,
    /// Dial peer N at this address instead of its membership address, for Raft traffic only
    /// (clients still use the membership address). The fault-injection harness routes every
    /// node-to-node connection through its link proxies this way.
    #[serde(default)]
    pub peer_routes: BTreeMap<u64, String>,
    /// This node's region, when it is one of several (see `docs/regions.md`). Every node of a
    /// region must name the same region and remote regions.
    #[serde(default)]
    pub region: Option<RegionConfig>,
    /// The edge cache (docs/data-types/edge-cache.md): served when `cache.listen` is set.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The Redis protocol (docs/redis.md): served when `resp.listen` is set.
    #[serde(default)]
    pub resp: RespListenConfig,
}

/// A listener's TLS files: the peer listener's (`[peer_tls]` in a config file; `--peer-tls-cert`,
/// `--peer-tls-key`, `--peer-tls-ca`) or the client doors' (`[tls]`; `--tls-cert`, `--tls-key`,
/// `--tls-ca`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The client doors only (`[tls] client_ca`, `--tls-client-ca`): the CA of client
    /// certificates, a CA of its own (see docs/security.md).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    pub fn files(&self) -> basalt_tls::TlsFiles {
        basalt_tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            client_ca: self.client_ca.clone(),
        }
    }
}

/// Client authentication (`[auth]` in a config file; `--root-token-file`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the root token (`basalt auth token` makes one): the identity allowed
    /// everything, and the credential the nodes use with other regions' client ports (forwarding
    /// to a home region, the cross-region feed), so every node of a deployment holds the same
    /// one. Read once at start.
    pub root_token_file: PathBuf,
}

impl AuthConfig {
    /// The root token the file holds.
    pub fn root_token(&self) -> Result<basalt_auth::token::Token, ConfigError> {
        let path = &self.root_token_file;
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Invalid(format!("reading the root token file {}: {e}", path.display())))?;
        let token = basalt_auth::token::Token::from_text(&text);
        let len = token.as_str().len();
        if len == 0
            || len > basalt_auth::limits::TOKEN_BYTES_MAX
            || !token.as_str().bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::Invalid(format!(
                "the root token file {} must hold one token of 1 to {} visible ASCII characters",
                path.display(),
                basalt_auth::limits::TOKEN_BYTES_MAX
            )));
        }
        Ok(token)
    }
}

/// The Redis protocol's listener (`[resp]` in a config file).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RespListenConfig {
    /// Where RESP clients connect (none: no RESP on this node).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The `default` user's password for `AUTH` (none: connections need no `AUTH`).
    #[serde(default)]
    pub password: Option<String>,
    /// Let `FLUSHDB` / `FLUSHALL` delete every key: for a development cluster only.
    #[serde(default)]
    pub allow_flush: bool,
}

/// The edge cache: where it listens, which origins serve which paths, and its bounds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The edge's HTTP address (none: no edge on this node).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Origins by path prefix (`[[cache.origin]]`); the longest matching prefix serves a path.
    #[serde(default, rename = "origin")]
    pub origins: Vec<OriginConfig>,
    /// The byte budget of stored objects.
    #[serde(default = "defaults::cache_bytes")]
    pub bytes: u64,
    /// How long a 404 or 410 without explicit freshness is kept, in ms (0: not kept).
    #[serde(default = "defaults::cache_negative_ttl_ms")]
    pub negative_ttl_ms: u64,
    /// The most one origin fetch (connect, head and body) may take, in ms; past it the request
    /// gets 504, or a stale copy its origin allows on error.
    #[serde(default = "defaults::cache_origin_timeout_ms")]
    pub origin_timeout_ms: u64,
    /// Requests in flight to one origin at most (a bulkhead: a slow origin cannot take the
    /// connections of the others); more wait, within the timeout.
    #[serde(default = "defaults::cache_origin_requests_max")]
    pub origin_requests_max: usize,
}

impl CacheConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut prefixes = std::collections::BTreeSet::new();
        for origin in &self.origins {
            origin.authority()?;
            if !prefixes.insert(origin.prefix.as_str()) {
                return invalid(format!("two origins serve the prefix {:?} (--origin)", origin.prefix));
            }
        }
        match (self.listen.is_some(), self.origins.is_empty()) {
            (true, true) => {
                return invalid("the edge cache listens (--edge-listen) but has no origin (--origin)".into())
            }
            (false, false) => {
                return invalid(
                    "origins are given (--origin) but the edge cache does not listen (--edge-listen)".into(),
                )
            }
            _ => {}
        }
        if self.bytes == 0 {
            return invalid("the edge cache's byte budget (--cache-bytes) must be positive".into());
        }
        if self.origin_timeout_ms == 0 {
            return invalid("--origin-timeout-ms (cache.origin_timeout_ms) must be positive".into());
        }
        let max = crate::limits::EDGE_ORIGIN_REQUESTS_MAX;
        if !(1..=max).contains(&self.origin_requests_max) {
            return invalid(format!(
                "--origin-requests-max (cache.origin_requests_max) must be in 1..={max}"
            ));
        }
        Ok(())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            listen: None,
            origins: Vec::new(),
            bytes: defaults::cache_bytes(),
            negative_ttl_ms: defaults::cache_negative_ttl_ms(),
            origin_timeout_ms: defaults::cache_origin_timeout_ms(),
            origin_requests_max: defaults::cache_origin_requests_max(),
        }
    }
}

/// One origin: the paths starting with `prefix` are fetched from `upstream` (`http://host:port`),
/// unchanged (`/assets/app.js` is asked of the origin as `/assets/app.js`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    pub prefix: String,
    pub upstream: String,
}

/// Parses `--origin /assets/=http://127.0.0.1:9000`.
pub fn parse_origin(text: &str) -> Result<OriginConfig, ConfigError> {
    let (prefix, upstream) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("origin {text:?} is not PREFIX=http://host:port")))?;
    let origin = OriginConfig {
        prefix: prefix.trim().to_string(),
        upstream: upstream.trim().to_string(),
    };
    origin.authority()?;
    Ok(origin)
}

impl OriginConfig {
    /// The origin's `host:port`, checking the whole entry: the prefix starts with `/`, the
    /// upstream is `http://host[:port]` with no path beyond `/`, no query and no user info.
    pub fn authority(&self) -> Result<http::uri::Authority, ConfigError> {
        let invalid = |why: &str| {
            Err(ConfigError::Invalid(format!(
                "origin {}={}: {why}",
                self.prefix, self.upstream
            )))
        };
        if !self.prefix.starts_with('/') {
            return invalid("the prefix must start with /");
        }
        let Ok(uri) = self.upstream.parse::<http::Uri>() else {
            return invalid("the upstream is not a URL");
        };
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return invalid("https origins are not supported yet; use http://"),
            _ => return invalid("the upstream must be http://host:port"),
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
            return invalid("the upstream may not have a path or a query: paths are passed unchanged");
        }
        match uri.authority() {
            Some(authority) if !authority.as_str().contains('@') => Ok(authority.clone()),
            _ => invalid("the upstream must name a host, without user info"),
        }
    }
}

/// A region and the regions it replicates with.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    /// Unique among the regions; breaks ties between writes with equal stamps.
    pub id: u16,
    /// Every other region: where to ship this region's change feed.
    pub remotes: Vec<RemoteRegion>,
    /// Log positions of feed kept for a region that has not acknowledged them; a region further
    /// behind is re-synced in full instead.
    #[serde(default = "defaults::feed_retain_entries")]
    pub feed_retain_entries: u64,
    /// Added to this node's wall clock (tests and demos of clock skew between regions).
    #[serde(default)]
    pub clock_skew_ms: i64,
    /// The region that owns ledgers, leases and queues (other regions forward their requests
    /// there). Default: the region with the lowest id.
    #[serde(default)]
    pub home: Option<String>,
    /// This region joins regions that already run: it starts with no escrow share of counter
    /// bounds (the running regions give it room by escrow transfer), instead of splitting the
    /// bounds evenly with the others as founding regions do.
    #[serde(default)]
    pub joining: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteRegion {
    pub name: String,
    pub id: u16,
    /// Its nodes (any of them; the shipper finds the leader), each `CLIENT` or `CLIENT/PEER`
    /// ([`RegionEndpoint`]): the feed goes to the peer listener when one is named.
    pub endpoints: Vec<String>,
}

/// Parses `--region us:1`.
pub fn parse_region(text: &str) -> Result<(String, u16), ConfigError> {
    let (name, id) = text
        .split_once(':')
        .ok_or_else(|| ConfigError::Invalid(format!("region {text:?} is not name:id")))?;
    let id: u16 = id
        .trim()
        .parse()
        .map_err(|_| ConfigError::Invalid(format!("region id {id:?} is not a number in 1..=65535")))?;
    Ok((name.trim().to_string(), id))
}

/// Parses `--remote-region eu:2=127.0.0.1:7101,127.0.0.1:7102` (each endpoint may name the
/// node's peer listener after a `/`: `127.0.0.1:7101/127.0.0.1:7201`).
pub fn parse_remote_region(text: &str) -> Result<RemoteRegion, ConfigError> {
    let (region, endpoints) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("remote region {text:?} is not name:id=host:port,...")))?;
    let (name, id) = parse_region(region)?;
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    Ok(RemoteRegion { name, id, endpoints })
}

impl RegionConfig {
    /// The first region topology of this region, as its flags say: what its first leader
    /// proposes. Later changes go through `basalt regions add | remove`; the flags are then
    /// only compared with the replicated topology at startup.
    pub fn initial_topology(&self) -> basalt_storage::apply::topology::TopologyChange {
        use basalt_storage::apply::topology::{RegionSpec, TopologyChange};
        TopologyChange::Init {
            this: RegionSpec {
                id: self.id,
                name: self.name.clone(),
                endpoints: Vec::new(),
            },
            home: self.home_remote().map_or(self.id, |home| home.id),
            remotes: self
                .remotes
                .iter()
                .map(|r| RegionSpec {
                    id: r.id,
                    name: r.name.clone(),
                    endpoints: r.endpoints.clone(),
                })
                .collect(),
            joining: self.joining,
        }
    }

    /// Where these flags and the replicated topology disagree, one line each. Which region this
    /// is must agree (`Err`); the rest is reported, and the replicated topology is what applies.
    pub fn compare_with(
        &self,
        topology: &basalt_storage::apply::topology::RegionTopology,
    ) -> Result<Vec<String>, String> {
        let this_name = topology.name_of(topology.this).unwrap_or("?");
        if topology.this != self.id || this_name != self.name {
            return Err(format!(
                "this node's data belongs to region {this_name}:{} but its flags say --region {}:{}; \
                 a region cannot change its name or id: start it with --region {this_name}:{}",
                topology.this, self.name, self.id, topology.this
            ));
        }
        let mut differences = Vec::new();
        for remote in &self.remotes {
            match topology.regions.get(&remote.id) {
                None => differences.push(format!(
                    "--remote-region {}:{} is not in the replicated topology (add it with `basalt regions add`)",
                    remote.name, remote.id
                )),
                Some(known) if known.name != remote.name => differences.push(format!(
                    "--remote-region {}:{} is named {:?} in the replicated topology",
                    remote.name, remote.id, known.name
                )),
                Some(known) if known.endpoints != remote.endpoints => differences.push(format!(
                    "--remote-region {}:{} lists endpoints {:?}, the replicated topology {:?}",
                    remote.name, remote.id, remote.endpoints, known.endpoints
                )),
                Some(_) => {}
            }
        }
        for (id, member) in topology.remotes() {
            if !self.remotes.iter().any(|r| r.id == id) {
                differences.push(format!(
                    "region {}:{id} of the replicated topology is not among the flags' --remote-region",
                    member.name
                ));
            }
        }
        let flags_home = self.home_remote().map_or(self.id, |home| home.id);
        if flags_home != topology.home {
            differences.push(format!(
                "the flags make region {flags_home} the home region, the replicated topology region {}",
                topology.home
            ));
        }
        Ok(differences)
    }

    /// The home region of homed data: `None` when it is this region.
    pub fn home_remote(&self) -> Option<&RemoteRegion> {
        match &self.home {
            Some(name) if *name == self.name => None,
            Some(name) => self.remotes.iter().find(|r| r.name == *name),
            None => self.remotes.iter().filter(|r| r.id < self.id).min_by_key(|r| r.id),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return invalid("region id must be in 1..=65535".into());
        }
        if basalt_replication::RegionName::new(&self.name).is_none() {
            return invalid(format!(
                "region name {:?} must be 1 to 32 letters, digits, '_' or '-'",
                self.name
            ));
        }
        if self.feed_retain_entries == 0 {
            return invalid("feed_retain_entries must be positive".into());
        }
        if self.joining && self.home.is_none() {
            return invalid(
                "a joining region must name the home region of the regions it joins (--home-region)".into(),
            );
        }
        if let Some(home) = &self.home {
            if *home != self.name && !self.remotes.iter().any(|r| r.name == *home) {
                return invalid(format!("home region {home:?} is neither this region nor a remote one"));
            }
        }
        let mut ids = std::collections::BTreeSet::from([self.id]);
        let mut names = std::collections::BTreeSet::from([self.name.as_str()]);
        for remote in &self.remotes {
            if !ids.insert(remote.id) {
                return invalid(format!("region id {} is used twice", remote.id));
            }
            if !names.insert(remote.name.as_str()) {
                return invalid(format!("region name {:?} is used twice", remote.name));
            }
            if remote.endpoints.is_empty() {
                return invalid(format!("remote region {:?} has no endpoints", remote.name));
            }
            for endpoint in &remote.endpoints {
                if let Err(reason) = RegionEndpoint::parse(endpoint) {
                    return invalid(format!("remote region {:?}: {reason}", remote.name));
                }
            }
        }
        // What the first leader will propose must be a topology apply accepts.
        basalt_storage::apply::topology::validate(&self.initial_topology())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

/// Bounds of `max_clock_offset_ms`: below 10 ms loopback scheduling alone would trip it; above a
/// minute it no longer protects leases and sessions measured in seconds.
/// (`validate` refuses a config outside them, naming the bound.)
pub const MAX_CLOCK_OFFSET_MS_MIN: u64 = 10;
/// The upper bound of `max_clock_offset_ms` (see [`MAX_CLOCK_OFFSET_MS_MIN`]).
pub const MAX_CLOCK_OFFSET_MS_MAX: u64 = 60_000;

pub mod defaults {
    pub fn cache_bytes() -> u64 {
        256 << 20
    }
    pub fn cache_negative_ttl_ms() -> u64 {
        10_000
    }
    pub fn cache_origin_timeout_ms() -> u64 {
        10_000
    }
    pub fn cache_origin_requests_max() -> usize {
        64
    }
    pub fn heartbeat_ms() -> u64 {
        30
    }
    pub fn election_timeout_min_ms() -> u64 {
        100
    }
    pub fn election_timeout_max_ms() -> u64 {
        200
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
    pub fn max_clock_offset_ms() -> u64 {
        basalt_storage::hlc::MAX_OFFSET_MS_DEFAULT
    }
    pub fn kv_merge_in_flight() -> usize {
        2
    }
    pub fn segment_bytes() -> u64 {
        basalt_storage::limits::SEGMENT_BYTES_DEFAULT
    }
    pub fn feed_retain_entries() -> u64 {
        1_000_000
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
        if self.resp.listen.is_none() && (self.resp.password.is_some() || self.resp.allow_flush) {
            return invalid(
                "a RESP password or --resp-allow-flush is given but RESP does not listen (--resp-listen)".into(),
            );
        }
        if self.resp.password.as_deref() == Some("") {
            return invalid("the RESP password (--resp-password) must not be empty".into());
        }
        if self.heartbeat_ms == 0 {
            return invalid("heartbeat_ms must be positive".into());
        }
        if !(MAX_CLOCK_OFFSET_MS_MIN..=MAX_CLOCK_OFFSET_MS_MAX).contains(&self.max_clock_offset_ms) {
            return invalid(format!(
                "max_clock_offset_ms ({}) must be in {MAX_CLOCK_OFFSET_MS_MIN}..={MAX_CLOCK_OFFSET_MS_MAX}",
                self.max_clock_offset_ms
            ));
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
        if let Some(region) = &self.region {
            region.validate()?;
        }
        self.cache.validate()?;
        if self.init && !self.peers.contains_key(&self.id) {
            return invalid(format!("init needs this node (id {}) among the peers", self.id));
        }
        let members = self.members()?;
        if let (Some(peer_listen), Some(me)) = (self.peer_listen, members.get(&self.id)) {
            if me.peer.is_none() {
                return invalid(format!(
                    "this node listens for peers on {peer_listen} (--peer-listen) but its --peers entry {}={} names                      no peer address: write {}={}/{peer_listen} (CLIENT/PEER), or the members would send Raft to its                      client port, which serves none",
                    self.id, me.client, self.id, me.client
                ));
            }
        }
        self.parsed_cluster_id()?;
        if self.auth.is_some() && self.resp.password.is_some() {
            return invalid(
                "client authentication is on (--root-token-file): RESP's AUTH then takes tokens, so \
                 resp.password (--resp-password) must not be set"
                    .into(),
            );
        }
        if self.auth.is_some() && (self.peer_listen.is_none() || self.peer_tls.is_none()) {
            return invalid(
                "client authentication is on (--root-token-file) but the peer listener is missing or has no mutual \
                 TLS (--peer-listen, --peer-tls-cert/-key/-ca): Raft carries no client tokens, so whoever reaches \
                 it unauthenticated could append users and grants"
                    .into(),
            );
        }
        if self.peer_tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()) {
            return invalid("[peer_tls] takes no client_ca: only members and other regions' nodes connect to the peer listener, with certificates of its ca".into());
        }
        if let Some(client_ca) = self.tls.as_ref().and_then(|tls| tls.client_ca.as_ref()) {
            if self.auth.is_none() {
                return invalid(
                    "a client CA is given (--tls-client-ca) but clients are not authenticated (--root-token-file): \
                     a client certificate names a user, and without authentication there are none"
                        .into(),
                );
            }
            let node_cas = [self.tls.as_ref().map(|t| &t.ca), self.peer_tls.as_ref().map(|t| &t.ca)];
            if node_cas.into_iter().flatten().any(|ca| ca == client_ca) {
                return invalid(format!(
                    "the client CA file {} is also the nodes' CA file: use a CA of its own for client certificates \
                     (`basalt certs client-ca`), or a node's certificate could name a user",
                    client_ca.display()
                ));
            }
        }
        if self.tls.is_some() && self.peer_listen.is_none() {
            return invalid(
                "TLS on the client doors is given (--tls-cert/-key/-ca) but there is no peer listener (--peer-listen): \
                 the members' Raft would go to client ports that speak only TLS"
                    .into(),
            );
        }
        if self.peer_tls.is_some() && self.peer_listen.is_none() {
            return invalid(
                "peer TLS is given (--peer-tls-cert/-key/-ca) but there is no peer listener (--peer-listen): \
                 TLS between the members needs Raft apart from the client port"
                    .into(),
            );
        }
        basalt_storage::log::LogOptions {
            segment_bytes_max: self.segment_bytes,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// This node's clock skew: its own, plus its region's (a topology file skews a whole region).
    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew_ms
            .saturating_add(self.region.as_ref().map_or(0, |r| r.clock_skew_ms))
    }

    /// The client address other nodes and clients use to reach this node.
    pub fn advertised_addr(&self) -> String {
        match self.members().ok().and_then(|mut members| members.remove(&self.id)) {
            Some(member) => member.client,
            None => self.listen.to_string(),
        }
    }

    /// The `peers` entries read as member addresses.
    pub fn members(&self) -> Result<BTreeMap<u64, MemberAddr>, ConfigError> {
        self.peers
            .iter()
            .map(|(id, text)| parse_member(*id, text).map(|member| (*id, member)))
            .collect()
    }

    /// `cluster_id`, read.
    pub fn parsed_cluster_id(&self) -> Result<Option<ClusterId>, ConfigError> {
        self.cluster_id
            .as_deref()
            .map(|text| ClusterId::parse(text).map_err(|e| ConfigError::Invalid(format!("--cluster-id: {e}"))))
            .transpose()
    }
}

/// Reads one `peers` entry: `CLIENT` or `CLIENT/PEER`, each `host:port`.
pub fn parse_member(id: u64, text: &str) -> Result<MemberAddr, ConfigError> {
    let bad =
        |why: &str| ConfigError::Invalid(format!("peer {id}={text:?}: {why} (expected host:port or CLIENT/PEER)"));
    let (client, peer) = match text.split_once('/') {
        Some((client, peer)) => (client.trim(), Some(peer.trim())),
        None => (text.trim(), None),
    };
    let is_host_port = |addr: &str| {
        !addr.is_empty()
            && !addr.contains(|c: char| c.is_whitespace() || c == '/')
            && addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if !is_host_port(client) {
        return Err(bad("the client address is not host:port"));
    }
    if let Some(peer) = peer {
        if !is_host_port(peer) {
            return Err(bad("the peer address is not host:port"));
        }
    }
    Ok(MemberAddr {
        client: client.to_string(),
        peer: peer.map(str::to_string),
    })
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
            peer_listen: None,
            cluster_id: None,
            peer_tls: None,
            tls: None,
            auth: None,
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
            kv_merge_in_flight: 2,
            clock_skew_ms: 0,
            max_clock_offset_ms: 500,
            allow_clock_control: false,
            peer_routes: BTreeMap::new(),
            region: None,
            cache: CacheConfig::default(),
            resp: RespListenConfig::default(),
        }
    }

    #[test]
    fn origins_are_checked_whole() {
        let origin = parse_origin("/assets/=http://127.0.0.1:9000").expect("valid");
        assert_eq!(origin.authority().expect("authority").as_str(), "127.0.0.1:9000");
        assert!(parse_origin("/=http://origin.internal/").is_ok());
        for bad in [
            "/assets/",
            "assets/=http://127.0.0.1:9000",
            "/a/=https://127.0.0.1:9000",
            "/a/=ftp://h",
            "/a/=http://127.0.0.1:9000/base",
            "/a/=http://127.0.0.1:9000/?q=1",
            "/a/=http://user@127.0.0.1:9000",
            "/a/=not a url",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        let mut c = base();
        c.cache.listen = Some("127.0.0.1:0".parse().expect("addr"));
        assert!(c.validate().is_err(), "an edge with no origin");
        c.cache
            .origins
            .push(parse_origin("/=http://127.0.0.1:1").expect("valid"));
        c.validate().expect("valid");
        let mut twice = c.clone();
        twice
            .cache
            .origins
            .push(parse_origin("/=http://127.0.0.1:2").expect("valid"));
        assert!(twice.validate().is_err(), "one prefix, two origins");
        let mut silent = c.clone();
        silent.cache.listen = None;
        assert!(silent.validate().is_err(), "origins with no edge");
        for bad in [
            CacheConfig {
                bytes: 0,
                ..c.cache.clone()
            },
            CacheConfig {
                origin_timeout_ms: 0,
                ..c.cache.clone()
            },
            CacheConfig {
                origin_requests_max: 0,
                ..c.cache.clone()
            },
            CacheConfig {
                origin_requests_max: usize::MAX,
                ..c.cache.clone()
            },
        ] {
            let mut bad_config = c.clone();
            bad_config.cache = bad;
            assert!(bad_config.validate().is_err(), "{:?}", bad_config.cache);
        }
        let toml_text = r#"
            id = 1
            listen = "127.0.0.1:7001"
            data_dir = "/tmp/x"
            [cache]
            listen = "127.0.0.1:8080"
            bytes = 1048576
            [[cache.origin]]
            prefix = "/assets/"
            upstream = "http://127.0.0.1:9000"
        "#;
        let parsed: NodeConfig = toml::from_str(toml_text).expect("parses");
        assert_eq!(parsed.cache.origins[0].prefix, "/assets/");
        assert_eq!(parsed.cache.bytes, 1 << 20);
        assert_eq!(parsed.cache.origin_requests_max, defaults::cache_origin_requests_max());
    }

    #[test]
    fn regions_parse_and_are_checked() {
        let eu = parse_remote_region("eu:2=127.0.0.1:7101, 127.0.0.1:7102").expect("parses");
        assert_eq!((eu.name.as_str(), eu.id, eu.endpoints.len()), ("eu", 2, 2));
        assert!(parse_remote_region("eu:2").is_err());
        assert!(parse_region("us").is_err());
        assert!(parse_region("us:x").is_err());
        let region = |id, remotes| RegionConfig {
            name: "us".into(),
            id,
            remotes,
            feed_retain_entries: 10,
            clock_skew_ms: 0,
            home: None,
            joining: false,
        };
        let mut c = base();
        c.region = Some(region(1, vec![eu.clone()]));
        c.validate().expect("valid");
        c.region = Some(region(0, vec![eu.clone()]));
        assert!(c.validate().is_err(), "region id 0");
        c.region = Some(region(2, vec![eu.clone()]));
        assert!(c.validate().is_err(), "id used twice");
        let mut homed = region(3, vec![eu.clone()]);
        assert_eq!(
            homed.home_remote().map(|r| r.name.as_str()),
            Some("eu"),
            "lowest id by default"
        );
        homed.home = Some("us".into());
        assert!(homed.home_remote().is_none());
        homed.home = Some("mars".into());
        c.region = Some(homed);
        assert!(c.validate().is_err(), "unknown home region");
        let bad = parse_remote_region("ap:3=nowhere").expect("parses");
        c.region = Some(region(1, vec![bad]));
        assert!(c.validate().is_err(), "endpoint not host:port");
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
    fn a_member_names_its_client_address_and_maybe_its_peer_listener() {
        let member = parse_member(1, "127.0.0.1:7001/127.0.0.1:2380").expect("both");
        assert_eq!(member.client, "127.0.0.1:7001");
        assert_eq!(member.peer.as_deref(), Some("127.0.0.1:2380"));
        assert_eq!(parse_member(1, "node-1:7001").expect("a host name").peer, None);
        assert_eq!(
            parse_member(1, "[::1]:7001/[::1]:2380").expect("IPv6").client,
            "[::1]:7001"
        );
        for bad in ["", "a", "a:x", ":1", "a:1/", "a:1/b", "a:1/b:2/c:3", "a :1"] {
            assert!(parse_member(1, bad).is_err(), "{bad:?}");
        }
        let mut c = base();
        c.peers = parse_peers("1=127.0.0.1:7001/,2=127.0.0.1:7002").expect("parses as a map");
        assert!(c.validate().is_err(), "an empty peer address");
    }

    #[test]
    fn client_authentication_needs_a_tls_peer_listener_and_no_resp_password() {
        let mut c = base();
        c.auth = Some(AuthConfig {
            root_token_file: "/nonexistent/root.token".into(),
        });
        let e = c.validate().expect_err("no peer listener");
        assert!(e.to_string().contains("peer listener"), "{e}");
        c.peer_listen = Some("127.0.0.1:2380".parse().expect("addr"));
        c.peers = parse_peers("1=127.0.0.1:7001/127.0.0.1:2380,2=127.0.0.1:7002/127.0.0.1:2381").expect("peers");
        let e = c.validate().expect_err("no peer TLS");
        assert!(e.to_string().contains("mutual"), "{e}");
        c.peer_tls = Some(TlsConfig {
            cert: "c".into(),
            key: "k".into(),
            ca: "a".into(),
            client_ca: None,
        });
        c.validate().expect("valid");
        // Client TLS needs the peer listener; the peer listener takes no client CA.
        c.tls = c.peer_tls.clone();
        c.validate().expect("client TLS beside the peer listener");
        c.peer_tls.as_mut().expect("peer TLS").client_ca = Some("u".into());
        let e = c.validate().expect_err("a client CA on the peer listener");
        assert!(e.to_string().contains("client_ca"), "{e}");
        c.peer_tls.as_mut().expect("peer TLS").client_ca = None;
        c.tls.as_mut().expect("client TLS").client_ca = Some("a".into());
        let e = c.validate().expect_err("the nodes' CA as the client CA");
        assert!(e.to_string().contains("CA of its own"), "{e}");
        c.tls.as_mut().expect("client TLS").client_ca = Some("u".into());
        c.validate().expect("a client CA of its own");
        let mut no_auth = c.clone();
        no_auth.auth = None;
        let e = no_auth.validate().expect_err("a client CA without authentication");
        assert!(e.to_string().contains("--root-token-file"), "{e}");
        let mut no_peers = base();
        no_peers.tls = c.tls.clone().map(|tls| TlsConfig { client_ca: None, ..tls });
        let e = no_peers.validate().expect_err("client TLS without a peer listener");
        assert!(e.to_string().contains("--peer-listen"), "{e}");
        c.tls = None;
        c.resp.listen = Some("127.0.0.1:6379".parse().expect("addr"));
        c.resp.password = Some("s3cret".into());
        let e = c.validate().expect_err("a RESP password beside tokens");
        assert!(e.to_string().contains("resp.password"), "{e}");
        // The file is read at start: a missing or empty one is a clear error.
        assert!(c.auth.as_ref().expect("auth").root_token().is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("root.token");
        std::fs::write(&file, "\n").expect("write");
        let auth = AuthConfig {
            root_token_file: file.clone(),
        };
        assert!(auth.root_token().is_err());
        std::fs::write(&file, "bst_abc\n").expect("write");
        assert_eq!(auth.root_token().expect("token").as_str(), "bst_abc");
    }

    #[test]
    fn a_peer_listener_needs_this_node_s_entry_to_name_it_and_a_cluster_id_must_read() {
        let mut c = base();
        c.peer_listen = Some("127.0.0.1:2380".parse().expect("addr"));
        let e = c.validate().expect_err("the entry names no peer address");
        assert!(e.to_string().contains("1=127.0.0.1:7001/127.0.0.1:2380"), "{e}");
        c.peers = parse_peers("1=127.0.0.1:7001/127.0.0.1:2380,2=127.0.0.1:7002/127.0.0.1:2381").expect("peers");
        c.validate().expect("valid");
        assert_eq!(c.advertised_addr(), "127.0.0.1:7001", "clients get the client address");
        c.cluster_id = Some("not an id".into());
        assert!(c.validate().is_err());
        c.cluster_id = Some("0123456789abcdef0123456789ABCDEF".into());
        assert!(c.parsed_cluster_id().expect("reads").is_some());
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let text = "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp\"\nbogus = 1\n";
        assert!(toml::from_str::<NodeConfig>(text).is_err());
    }
}
