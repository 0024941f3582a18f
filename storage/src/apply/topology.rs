//! The region topology as replicated state: which regions exist, which one is the home of homed
//! data, where each can be reached, and the share of every counter bound each region may use on
//! its own (its escrow share).
//!
//! Apply reads the region's role from here and nowhere else, so every replica applies every entry
//! alike whatever its command line says. The topology changes only through
//! [`RegionOp::Topology`](crate::command::RegionOp::Topology) entries: the first leader of a
//! region proposes [`TopologyChange::Init`] from its flags, and `basalt regions add | remove`
//! propose the rest.
//!
//! Escrow shares are stored, never derived from the number of regions: re-dividing a bound when a
//! region joins would give every region room the others have already used (bound 10, two regions
//! at 5 each, a third region and shares of 3: 13). The founding regions split each bound evenly;
//! a region added later, or one that starts as [`TopologyChange::Init::joining`], has a share of
//! zero and gets room only from escrow transfers, which move room that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use basalt_replication::{EscrowBound, RegionId, RegionName};
use serde::{Deserialize, Serialize};

use super::{RegionRole, View};
use crate::command::{OpError, RegionError, Response};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// Most regions in one deployment (this one included).
pub const REGIONS_MAX: usize = 64;
/// Most endpoints named for one region.
pub const REGION_ENDPOINTS_MAX: usize = 16;
/// Longest endpoint (`CLIENT` or `CLIENT/PEER`, see [`RegionEndpoint`]), in bytes.
pub const ENDPOINT_BYTES_MAX: usize = 256;

const TOPOLOGY_KEY: &[u8] = b"region_topology";
/// The first byte of a stored topology: its encoding, so a later one can be told apart.
const TOPOLOGY_FORMAT_V1: u8 = 1;

/// The part `parts / of` of every counter bound that a region may use without asking: of a lower
/// bound rounded up, of an upper bound rounded down, so the shares of regions whose parts sum to
/// at most `of` stay within the bound together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowShare {
    pub parts: u32,
    pub of: u32,
}

impl EscrowShare {
    /// The whole bound: a region alone.
    pub const WHOLE: EscrowShare = EscrowShare { parts: 1, of: 1 };
    /// No room of its own: a region that joined after the bounds were divided.
    pub const NONE: EscrowShare = EscrowShare { parts: 0, of: 1 };

    /// This share of `bound`.
    pub fn of_bound(self, bound: i64, kind: EscrowBound) -> i128 {
        let scaled = i128::from(bound) * i128::from(self.parts);
        let of = i128::from(self.of.max(1));
        match kind {
            EscrowBound::Floor => -((-scaled).div_euclid(of)),
            EscrowBound::Ceiling => scaled.div_euclid(of),
        }
    }
}

impl std::fmt::Display for EscrowShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.parts, self.of)
    }
}

/// Where a region's node is reached from the other regions: its client API, which takes the
/// requests this region forwards to its home (ledgers, leases, queues), and optionally its peer
/// listener, which takes this region's change feed under the peer listener's mutual TLS (no
/// token: another region is trusted by its certificate, as a member is). Without a peer address
/// the feed goes to the client port too, carrying the root token, as builds before peer
/// listeners shipped it.
///
/// Written `CLIENT` or `CLIENT/PEER`, each an `ip:port`, as `--peers` writes a member; the
/// topology keeps that text, so a topology of an earlier build (client addresses only) reads as
/// it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionEndpoint {
    pub client: SocketAddr,
    pub peer: Option<SocketAddr>,
}

impl RegionEndpoint {
    /// Reads `CLIENT` or `CLIENT/PEER`; the reason when `text` is neither.
    pub fn parse(text: &str) -> Result<RegionEndpoint, String> {
        if text.len() > ENDPOINT_BYTES_MAX {
            return Err(format!("endpoint {text:?} is longer than {ENDPOINT_BYTES_MAX} bytes"));
        }
        let (client, peer) = match text.split_once('/') {
            Some((client, peer)) => (client, Some(peer)),
            None => (text, None),
        };
        let address = |what: &str, addr: &str| {
            addr.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "endpoint {text:?}: the {what} address {addr:?} is not an ip:port (expected CLIENT or CLIENT/PEER)"
                )
            })
        };
        Ok(RegionEndpoint {
            client: address("client", client)?,
            peer: peer.map(|peer| address("peer", peer)).transpose()?,
        })
    }

    /// Where this region's feed goes: the peer listener when there is one.
    pub fn feed(&self) -> SocketAddr {
        self.peer.unwrap_or(self.client)
    }
}

impl std::fmt::Display for RegionEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer {
            None => write!(f, "{}", self.client),
            Some(peer) => write!(f, "{}/{peer}", self.client),
        }
    }
}

/// A region as named in a topology change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub id: RegionId,
    pub name: String,
    /// Its nodes (any of them: the shipper finds the leader), each a [`RegionEndpoint`]
    /// (`CLIENT` or `CLIENT/PEER`). Empty for this region itself.
    pub endpoints: Vec<String>,
}

/// One region of the topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionMember {
    pub name: String,
    pub endpoints: Vec<String>,
    /// Its escrow share as this region knows it: `None` for the other regions when this one
    /// joined an existing deployment (it knows only its own).
    pub escrow: Option<EscrowShare>,
}

/// The replicated topology of the regions, as this region knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionTopology {
    /// This region.
    pub this: RegionId,
    /// The region that owns ledgers, leases and queues.
    pub home: RegionId,
    /// Every region, this one included.
    pub regions: BTreeMap<RegionId, RegionMember>,
    /// Ids of regions removed: never used again, since what this region keeps under a region's
    /// id (its watermark, its counter components, escrow it gave or got) would be taken for the
    /// new region's.
    pub retired: BTreeSet<RegionId>,
    /// The log index of the last change.
    pub changed_at: u64,
}

impl RegionTopology {
    /// The other regions, by id.
    pub fn remotes(&self) -> impl Iterator<Item = (RegionId, &RegionMember)> {
        self.regions
            .iter()
            .filter(move |(id, _)| **id != self.this)
            .map(|(id, m)| (*id, m))
    }

    pub fn remote_ids(&self) -> Vec<RegionId> {
        self.remotes().map(|(id, _)| id).collect()
    }

    pub fn name_of(&self, id: RegionId) -> Option<&str> {
        self.regions.get(&id).map(|m| m.name.as_str())
    }

    pub fn id_of(&self, name: &str) -> Option<RegionId> {
        self.regions.iter().find(|(_, m)| m.name == name).map(|(id, _)| *id)
    }

    /// This region as apply sees it.
    pub fn role(&self) -> RegionRole {
        let this = self.regions.get(&self.this);
        RegionRole {
            id: self.this,
            replicated: true,
            remotes: u16::try_from(self.regions.len().saturating_sub(1)).unwrap_or(u16::MAX),
            home: self.home,
            name: this.and_then(|m| RegionName::new(&m.name)).unwrap_or_default(),
            escrow: this.and_then(|m| m.escrow).unwrap_or(EscrowShare::NONE),
        }
    }

    /// The escrow shares this region knows, by region id: what two regions compare to find a
    /// deployment whose regions divided the bounds differently.
    pub fn known_shares(&self) -> BTreeMap<RegionId, EscrowShare> {
        self.regions
            .iter()
            .filter_map(|(id, m)| m.escrow.map(|s| (*id, s)))
            .collect()
    }
}

/// A change of the topology, applied by every replica of the region from its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyChange {
    /// The region's first topology, proposed by its first leader from its flags; refused once
    /// the region has one, and in a region that already holds data (it was written without a
    /// feed, and its counters' escrow was never divided). Founding regions (`joining: false`) split every bound evenly among
    /// `this` and `remotes`; a region `joining` a running deployment starts with no share and
    /// does not know the others'.
    Init {
        this: RegionSpec,
        home: RegionId,
        remotes: Vec<RegionSpec>,
        joining: bool,
    },
    /// Adds a region with no escrow share, or changes the endpoints of one already known under
    /// the same id and name.
    Add { region: RegionSpec },
    /// Forgets a region: nothing more is shipped to it or merged from it. Its share stays
    /// spent: the room it may have used is not given to anyone else.
    Remove { region: RegionId },
}

impl std::fmt::Display for TopologyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyChange::Init {
                this, remotes, joining, ..
            } => write!(
                f,
                "region topology init ({}:{} with {} other regions{})",
                this.name,
                this.id,
                remotes.len(),
                if *joining { ", joining" } else { "" }
            ),
            TopologyChange::Add { region } => write!(f, "region add {}:{}", region.name, region.id),
            TopologyChange::Remove { region } => write!(f, "region remove {region}"),
        }
    }
}

/// The region topology in `store`; `None` for a region that replicates with no other (it was
/// never given one).
pub fn load_topology<S: StoreRead + ?Sized>(store: &S) -> Result<Option<RegionTopology>, StoreError> {
    let Some(bytes) = store.get(Table::Meta, TOPOLOGY_KEY)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| super::corrupt(Table::Meta, TOPOLOGY_KEY, reason);
    match bytes.split_first() {
        Some((&TOPOLOGY_FORMAT_V1, body)) => basalt_codec::decode(body).map(Some).map_err(|e| corrupt(e.to_string())),
        Some((format, _)) => Err(corrupt(format!("unknown topology format {format}"))),
        None => Err(corrupt("empty topology record".into())),
    }
}

/// The region's role as apply sees it now (a region alone when it has no topology).
pub fn region_role<S: StoreRead + ?Sized>(store: &S) -> Result<RegionRole, StoreError> {
    Ok(load_topology(store)?.map_or_else(RegionRole::default, |t| t.role()))
}

fn encode_topology(topology: &RegionTopology) -> Vec<u8> {
    let mut bytes = vec![TOPOLOGY_FORMAT_V1];
    bytes.extend(basalt_codec::encode(topology));
    bytes
}

/// Writes `topology` as it stands, outside the log: for tests that start from a region already
/// set up.
#[cfg(test)]
pub(crate) fn seed(writes: &mut super::WriteSet, topology: &RegionTopology) {
    writes.put(Table::Meta, TOPOLOGY_KEY.to_vec(), encode_topology(topology));
}

fn refuse(reason: String) -> Result<Response, StoreError> {
    Ok(Response::Refused(OpError::Region(RegionError::InvalidTopology {
        reason,
    })))
}

/// Why `spec` cannot be a region of a topology, if it cannot.
fn check_spec(spec: &RegionSpec, remote: bool) -> Result<(), String> {
    if spec.id == 0 {
        return Err("region id 0 is not allowed (1..=65535)".into());
    }
    if RegionName::new(&spec.name).is_none() {
        return Err(format!(
            "region name {:?} must be 1 to {} letters, digits, '_' or '-'",
            spec.name,
            RegionName::MAX
        ));
    }
    if remote && spec.endpoints.is_empty() {
        return Err(format!("region {:?} has no endpoints", spec.name));
    }
    if spec.endpoints.len() > REGION_ENDPOINTS_MAX {
        return Err(format!(
            "region {:?} names {} endpoints, more than {REGION_ENDPOINTS_MAX}",
            spec.name,
            spec.endpoints.len()
        ));
    }
    for endpoint in &spec.endpoints {
        RegionEndpoint::parse(endpoint).map_err(|reason| format!("region {:?}: {reason}", spec.name))?;
    }
    Ok(())
}

/// Whether the store holds data of a replicated or homed type: a region that does cannot take a
/// first topology (see [`TopologyChange::Init`]).
pub fn holds_data<S: StoreRead + ?Sized>(store: &S) -> Result<bool, StoreError> {
    for table in super::replication::resync_tables(RegionRole::default()) {
        if !store.scan(table, &KeyRange::all(), 1)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks what a change says on its own, before it is proposed (apply checks it again, with the
/// topology it changes).
pub fn validate(change: &TopologyChange) -> Result<(), OpError> {
    let invalid = |reason: String| OpError::Region(RegionError::InvalidTopology { reason });
    match change {
        TopologyChange::Init { this, remotes, .. } => {
            check_spec(this, false).map_err(invalid)?;
            if remotes.len() >= REGIONS_MAX {
                return Err(invalid(format!(
                    "{} regions, more than {REGIONS_MAX}",
                    remotes.len() + 1
                )));
            }
            remotes.iter().try_for_each(|r| check_spec(r, true).map_err(invalid))
        }
        TopologyChange::Add { region } => check_spec(region, true).map_err(invalid),
        TopologyChange::Remove { region: 0 } => Err(invalid("region id 0 is not allowed (1..=65535)".into())),
        TopologyChange::Remove { .. } => Ok(()),
    }
}

/// Applies a topology change at log index `index`, answering the topology now in force (the
/// applier takes up its new role from it). A refusal changes nothing.
pub(crate) fn apply<S: StoreRead>(
    view: &mut View<'_, S>,
    index: u64,
    change: &TopologyChange,
) -> Result<Response, StoreError> {
    let current = load_topology(view)?;
    let next = match (change, current) {
        (
            TopologyChange::Init {
                this,
                home,
                remotes,
                joining,
            },
            None,
        ) => {
            let mut specs = vec![(this, false)];
            specs.extend(remotes.iter().map(|r| (r, true)));
            if specs.len() > REGIONS_MAX {
                return refuse(format!("{} regions, more than {REGIONS_MAX}", specs.len()));
            }
            let founders = u32::try_from(specs.len()).unwrap_or(u32::MAX);
            let mut regions = BTreeMap::new();
            for (spec, remote) in specs {
                if let Err(reason) = check_spec(spec, remote) {
                    return refuse(reason);
                }
                if regions.contains_key(&spec.id) {
                    return refuse(format!("region id {} is named twice", spec.id));
                }
                if regions.values().any(|m: &RegionMember| m.name == spec.name) {
                    return refuse(format!("region name {:?} is named twice", spec.name));
                }
                let escrow = match (*joining, spec.id == this.id) {
                    (false, _) => Some(EscrowShare { parts: 1, of: founders }),
                    (true, true) => Some(EscrowShare::NONE),
                    (true, false) => None,
                };
                regions.insert(
                    spec.id,
                    RegionMember {
                        name: spec.name.clone(),
                        endpoints: spec.endpoints.clone(),
                        escrow,
                    },
                );
            }
            if !regions.contains_key(home) {
                return refuse(format!("home region {home} is not one of the regions named"));
            }
            // Entries applied before this one were never recorded in the feed, their counter
            // components are not this region's, and their counters' escrow was never divided:
            // a region that already holds data cannot become one of several.
            if holds_data(view)? {
                return refuse(
                    "this region already holds data written without a region topology (a lone region, or a \
                     version before the replicated topology); a region must start empty to join others"
                        .into(),
                );
            }
            RegionTopology {
                this: this.id,
                home: *home,
                regions,
                retired: BTreeSet::new(),
                changed_at: index,
            }
        }
        (TopologyChange::Init { .. }, Some(existing)) => {
            return refuse(format!(
                "this region's topology was set at log index {}; change it with `basalt regions add` or `remove`",
                existing.changed_at
            ))
        }
        (_, None) => return refuse("this region has no region topology: it was not started with --region".into()),
        (TopologyChange::Add { region }, Some(mut topology)) => {
            if let Err(reason) = check_spec(region, true) {
                return refuse(reason);
            }
            if region.id == topology.this {
                return refuse(format!("region {} is this region", region.id));
            }
            if topology.retired.contains(&region.id) {
                return refuse(format!(
                    "region id {} belonged to a region removed earlier; a region added again needs a new id",
                    region.id
                ));
            }
            if let Some((other, _)) = topology
                .regions
                .iter()
                .find(|(id, m)| m.name == region.name && **id != region.id)
            {
                return refuse(format!("region name {:?} belongs to region {other}", region.name));
            }
            match topology.regions.get_mut(&region.id) {
                Some(known) if known.name != region.name => {
                    return refuse(format!(
                        "region {} is named {:?}, not {:?}",
                        region.id, known.name, region.name
                    ))
                }
                Some(known) => known.endpoints = region.endpoints.clone(),
                None => {
                    if topology.regions.len() >= REGIONS_MAX {
                        return refuse(format!("already {REGIONS_MAX} regions"));
                    }
                    topology.regions.insert(
                        region.id,
                        RegionMember {
                            name: region.name.clone(),
                            endpoints: region.endpoints.clone(),
                            escrow: Some(EscrowShare::NONE),
                        },
                    );
                }
            }
            topology.changed_at = index;
            topology
        }
        (TopologyChange::Remove { region }, Some(mut topology)) => {
            if *region == topology.this {
                return refuse(format!("region {region} is this region"));
            }
            if *region == topology.home {
                return refuse(format!(
                    "region {region} is the home of ledgers, leases and queues; the home cannot be removed"
                ));
            }
            if topology.regions.remove(region).is_none() {
                return refuse(format!("region {region} is not one of this region's regions"));
            }
            topology.retired.insert(*region);
            topology.changed_at = index;
            topology
        }
    };
    view.put(Table::Meta, TOPOLOGY_KEY.to_vec(), encode_topology(&next));
    Ok(Response::Topology(next))
}

/// Why two regions' topologies cannot work together: what a feed stream's receiver answers its
/// source at stream open, before anything is merged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Disagreement {
    #[error("region {source_region} is not in this region's topology (`basalt regions add` it first)")]
    UnknownSource { source_region: RegionId },
    #[error("the home region differs: region {source_region} says {theirs}, this region {ours}")]
    Home {
        source_region: RegionId,
        theirs: RegionId,
        ours: RegionId,
    },
    #[error(
        "region {region}'s escrow share differs: region {source_region} stores {theirs}, this region {ours}; \
         together the regions could cross a counter's bound"
    )]
    Share {
        source_region: RegionId,
        region: RegionId,
        theirs: EscrowShare,
        ours: EscrowShare,
    },
    #[error("region {source_region} was removed from this region's topology; a region added again needs a new id")]
    Removed { source_region: RegionId },
    #[error(
        "the escrow shares the two regions know of add up to more than one bound ({shares}): they were \
         founded with different region lists"
    )]
    Oversubscribed { source_region: RegionId, shares: String },
    #[error("unreadable topology summary {text:?}: {reason}")]
    Malformed { text: String, reason: String },
}

/// What a region states about itself when it opens a feed stream: its id, its home, the escrow
/// shares it knows. `source=1;home=1;shares=1:1/2,2:1/2,3:0/1`.
pub fn agreement_summary(topology: &RegionTopology) -> String {
    let shares: Vec<String> = topology
        .known_shares()
        .iter()
        .map(|(id, share)| format!("{id}:{share}"))
        .collect();
    format!(
        "source={};home={};shares={}",
        topology.this,
        topology.home,
        shares.join(",")
    )
}

fn parse_summary(text: &str) -> Result<(RegionId, RegionId, BTreeMap<RegionId, EscrowShare>), String> {
    let short = |t: &str| t.chars().take(40).collect::<String>();
    let mut fields = BTreeMap::new();
    for part in text.split(';') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not name=value", short(part)))?;
        if fields.insert(name, value).is_some() {
            return Err(format!("{:?} is given twice", short(name)));
        }
    }
    let id = |name: &str| -> Result<RegionId, String> {
        fields
            .get(name)
            .ok_or_else(|| format!("no {name}"))?
            .parse()
            .map_err(|_| format!("{name} is not a region id"))
    };
    let (source, home) = (id("source")?, id("home")?);
    let mut shares = BTreeMap::new();
    for entry in fields
        .get("shares")
        .copied()
        .unwrap_or("")
        .split(',')
        .filter(|e| !e.is_empty())
    {
        let bad = || {
            format!(
                "share {:?} is not id:parts/of with parts <= of <= {REGIONS_MAX}",
                short(entry)
            )
        };
        let (id, share) = entry.split_once(':').ok_or_else(bad)?;
        let (parts, of) = share.split_once('/').ok_or_else(bad)?;
        let share = EscrowShare {
            parts: parts.parse().map_err(|_| bad())?,
            of: of.parse().map_err(|_| bad())?,
        };
        if share.of == 0 || share.of as usize > REGIONS_MAX || share.parts > share.of {
            return Err(bad());
        }
        if shares.insert(id.parse().map_err(|_| bad())?, share).is_some() {
            return Err(format!("region {:?} has two shares", short(id)));
        }
    }
    if !shares.contains_key(&source) {
        return Err(format!("no share for the source region {source}"));
    }
    Ok((source, home, shares))
}

/// Whether shares add up to more than one whole bound, computed exactly (every `of` is at most
/// [`REGIONS_MAX`], so the common denominator stays far inside a u128).
fn oversubscribed<'a>(shares: impl IntoIterator<Item = &'a EscrowShare>) -> bool {
    fn gcd(a: u128, b: u128) -> u128 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let (mut num, mut den) = (0u128, 1u128);
    for share in shares {
        let of = u128::from(share.of.max(1));
        num = num * of + u128::from(share.parts) * den;
        den *= of;
        let common = gcd(num, den).max(1);
        (num, den) = (num / common, den / common);
    }
    num > den
}

/// Whether this region (`ours`) may merge the feed of the region whose stream opened with
/// `summary`: the source must be in our topology, name the same home, store the same escrow share
/// for every region both know the share of, and the shares both know of together must not add up
/// to more than one bound. Regions bootstrapped with different region lists, or a joining region
/// started with another home, are told apart at their first contact.
pub fn check_agreement(ours: &RegionTopology, summary: &str) -> Result<RegionId, Disagreement> {
    let (source, home, theirs) = parse_summary(summary).map_err(|reason| Disagreement::Malformed {
        text: summary.chars().take(200).collect(),
        reason,
    })?;
    if source == ours.this || !ours.regions.contains_key(&source) {
        return Err(match ours.retired.contains(&source) {
            true => Disagreement::Removed { source_region: source },
            false => Disagreement::UnknownSource { source_region: source },
        });
    }
    if home != ours.home {
        return Err(Disagreement::Home {
            source_region: source,
            theirs: home,
            ours: ours.home,
        });
    }
    let mut combined = ours.known_shares();
    for (region, share) in &combined {
        if let Some(their_share) = theirs.get(region).filter(|s| *s != share) {
            return Err(Disagreement::Share {
                source_region: source,
                region: *region,
                theirs: *their_share,
                ours: *share,
            });
        }
    }
    combined.extend(theirs);
    if oversubscribed(combined.values()) {
        return Err(Disagreement::Oversubscribed {
            source_region: source,
            shares: combined
                .iter()
                .map(|(id, share)| format!("{id}:{share}"))
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(source)
}
