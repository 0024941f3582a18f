//! A multi-region topology: regions, their nodes, and the WAN links between them, as declared in
//! a TOML file (`examples/three-regions.toml`) or built from `--regions us,eu,ap`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::link::{EndpointId, LinkState, Links};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The region owning ledgers, leases and queues (default: the first).
    #[serde(default)]
    pub home: Option<String>,
    #[serde(rename = "region")]
    pub regions: Vec<RegionSpec>,
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    #[serde(default = "default_nodes")]
    pub nodes: u16,
    /// Added to the wall clock of this region's nodes (to try clock skew).
    #[serde(default)]
    pub clock_skew_ms: i64,
}

/// Where `basalt dev --regions` puts node `node` (1-based) of region `region` (0-based) from a
/// listener's base port: base + 100 × region + node - 1 (so at most 100 nodes a region). Whoever
/// reserves ports for such a cluster (the test kit) uses the same offsets.
pub fn node_port_offset(region: usize, node: u16) -> Option<u16> {
    let region = u16::try_from(region).ok()?;
    100u16.checked_mul(region)?.checked_add(node.checked_sub(1)?)
}

/// How many link proxies `basalt dev --regions` runs for regions of these node counts: two per
/// (source region, node of another region), one to that node's client port (requests forwarded
/// to the home region) and one to its peer listener (the feed). Whoever reserves ports for such a
/// cluster (the test kit) takes exactly this many, so the one count serves both.
pub fn link_proxies_needed(region_nodes: &[u16]) -> usize {
    let nodes: usize = region_nodes.iter().map(|&n| usize::from(n)).sum();
    2 * region_nodes.iter().map(|&n| nodes - usize::from(n)).sum::<usize>()
}

fn default_nodes() -> u16 {
    3
}

/// A WAN link between two regions, the same both ways. Links not declared are healthy (no
/// added delay).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub between: [String; 2],
    /// One-way latency.
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    #[serde(default)]
    pub loss_percent: f64,
    /// 0: unlimited.
    #[serde(default)]
    pub bandwidth_mbit: f64,
}

impl LinkSpec {
    pub fn state(&self) -> LinkState {
        LinkState {
            cut: false,
            latency: Duration::from_millis(self.latency_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            loss_ppm: (self.loss_percent * 10_000.0).round() as u32,
            bandwidth_bytes_per_s: (self.bandwidth_mbit * 1_000_000.0 / 8.0).round() as u64,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopologyError {
    #[error("parsing the topology: {0}")]
    Parse(String),
    #[error("invalid topology: {0}")]
    Invalid(String),
}

pub use crate::limits::{NODES_PER_REGION_MAX, REGIONS_MAX};

impl Topology {
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let topology: Topology = toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string()))?;
        topology.validate()?;
        Ok(topology)
    }

    /// `names` regions of `nodes` nodes each, every pair linked with `latency` ± `jitter`.
    pub fn uniform(
        names: &[String],
        nodes: u16,
        latency: Duration,
        jitter: Duration,
    ) -> Result<Topology, TopologyError> {
        let regions = names
            .iter()
            .map(|name| RegionSpec {
                name: name.clone(),
                nodes,
                clock_skew_ms: 0,
            })
            .collect();
        let mut links = Vec::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                links.push(LinkSpec {
                    between: [a.clone(), b.clone()],
                    latency_ms: latency.as_millis() as u64,
                    jitter_ms: jitter.as_millis() as u64,
                    loss_percent: 0.0,
                    bandwidth_mbit: 0.0,
                });
            }
        }
        let topology = Topology {
            home: None,
            regions,
            links,
        };
        topology.validate()?;
        Ok(topology)
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        let invalid = |m: String| Err(TopologyError::Invalid(m));
        if self.regions.len() < 2 || self.regions.len() > REGIONS_MAX {
            return invalid(format!("needs 2..={REGIONS_MAX} regions, has {}", self.regions.len()));
        }
        let mut names = BTreeSet::new();
        for r in &self.regions {
            if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return invalid(format!("region name {:?} must be letters, digits and '-'", r.name));
            }
            if !names.insert(r.name.as_str()) {
                return invalid(format!("region {:?} is declared twice", r.name));
            }
            if r.nodes == 0 || r.nodes > NODES_PER_REGION_MAX {
                return invalid(format!(
                    "region {:?} needs 1..={NODES_PER_REGION_MAX} nodes, has {}",
                    r.name, r.nodes
                ));
            }
        }
        if let Some(home) = &self.home {
            if !names.contains(home.as_str()) {
                return invalid(format!("home region {home:?} is not declared"));
            }
        }
        let mut pairs = BTreeSet::new();
        for link in &self.links {
            let [a, b] = &link.between;
            for end in [a, b] {
                if !names.contains(end.as_str()) {
                    return invalid(format!("link names unknown region {end:?}"));
                }
            }
            if a == b {
                return invalid(format!("link from {a:?} to itself"));
            }
            if !pairs.insert((a.min(b).clone(), a.max(b).clone())) {
                return invalid(format!("link {a:?}–{b:?} is declared twice"));
            }
            if !(0.0..100.0).contains(&link.loss_percent) {
                return invalid(format!("link {a:?}–{b:?} loss_percent must be in [0, 100)"));
            }
            if link.bandwidth_mbit < 0.0 {
                return invalid(format!("link {a:?}–{b:?} bandwidth_mbit must not be negative"));
            }
        }
        Ok(())
    }

    /// A region's id: its 1-based position in the file (ids break ties between equal stamps).
    pub fn region_id(&self, name: &str) -> Option<u16> {
        self.regions.iter().position(|r| r.name == name).map(|i| i as u16 + 1)
    }

    /// The region owning ledgers, leases and queues.
    pub fn home(&self) -> &str {
        self.home.as_deref().unwrap_or(&self.regions[0].name)
    }

    /// Sets every declared link, both ways, on `links` (endpoints are region ids).
    pub fn apply(&self, links: &Links) {
        for link in &self.links {
            let (Some(a), Some(b)) = (self.region_id(&link.between[0]), self.region_id(&link.between[1])) else {
                continue;
            };
            let state = link.state();
            links.set(EndpointId::from(a), EndpointId::from(b), state);
            links.set(EndpointId::from(b), EndpointId::from(a), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sit_a_hundred_ports_apart_per_region() {
        assert_eq!(node_port_offset(0, 1), Some(0));
        assert_eq!(node_port_offset(2, 3), Some(202));
        assert_eq!(node_port_offset(0, 0), None);
        assert_eq!(node_port_offset(700, 1), None);
    }

    #[test]
    fn two_link_proxies_run_per_source_region_and_node_of_another_region() {
        // us, eu, ap of two nodes: each region reaches the 4 nodes of the others, twice.
        assert_eq!(link_proxies_needed(&[2, 2, 2]), 24);
        assert_eq!(link_proxies_needed(&[3, 1]), 2 * (1 + 3));
        assert_eq!(link_proxies_needed(&[3]), 0);
        assert_eq!(link_proxies_needed(&[]), 0);
    }

    const THREE: &str = r#"
[[region]]
name = "us"

[[region]]
name = "eu"
nodes = 1
clock_skew_ms = -2000

[[region]]
name = "ap"

[[link]]
between = ["us", "eu"]
latency_ms = 40
jitter_ms = 5
loss_percent = 0.5
bandwidth_mbit = 80
"#;

    #[test]
    fn a_topology_file_parses_into_regions_and_links() {
        let t = Topology::parse(THREE).expect("valid");
        assert_eq!(t.regions.len(), 3);
        assert_eq!((t.regions[0].nodes, t.regions[1].nodes), (3, 1));
        assert_eq!(t.region_id("ap"), Some(3));
        let links = Links::new();
        t.apply(&links);
        let us_eu = links.state(1, 2);
        assert_eq!(us_eu.latency, Duration::from_millis(40));
        assert_eq!(us_eu.loss_ppm, 5_000);
        assert_eq!(us_eu.bandwidth_bytes_per_s, 10_000_000);
        assert_eq!(links.state(2, 1), us_eu);
        assert!(links.state(1, 3).is_healthy());
    }

    #[test]
    fn bad_topologies_are_refused_with_a_reason() {
        let bad = |text: &str| Topology::parse(text).expect_err(text);
        assert!(matches!(bad("[[region]]\nname = \"us\"\n"), TopologyError::Invalid(_)));
        assert!(matches!(bad("nonsense"), TopologyError::Parse(_)));
        let two = "[[region]]\nname = \"us\"\n[[region]]\nname = \"eu\"\n";
        Topology::parse(two).expect("two regions");
        assert!(matches!(
            bad(&format!("{two}[[link]]\nbetween = [\"us\", \"mars\"]\n")),
            TopologyError::Invalid(_)
        ));
        assert!(matches!(
            bad(&format!("{two}[[link]]\nbetween = [\"us\", \"us\"]\n")),
            TopologyError::Invalid(_)
        ));
        assert!(matches!(
            bad(&format!(
                "{two}[[link]]\nbetween = [\"us\", \"eu\"]\nloss_percent = 100\n"
            )),
            TopologyError::Invalid(_)
        ));
        assert!(matches!(
            bad("[[region]]\nname = \"us\"\n[[region]]\nname = \"us\"\n"),
            TopologyError::Invalid(_)
        ));
        assert!(matches!(
            bad(&two.replace("\"eu\"\n", "\"eu\"\nnodes = 0\n")),
            TopologyError::Invalid(_)
        ));
    }

    #[test]
    fn the_example_topology_is_valid() {
        let t = Topology::parse(include_str!("../../examples/three-regions.toml")).expect("valid example");
        assert_eq!(t.home(), "us");
        assert_eq!(t.regions.len(), 3);
        assert_eq!(t.links.len(), 3);
    }

    #[test]
    fn uniform_links_every_pair() {
        let names: Vec<String> = ["us", "eu", "ap"].iter().map(|s| s.to_string()).collect();
        let t = Topology::uniform(&names, 3, Duration::from_millis(40), Duration::from_millis(5)).expect("valid");
        assert_eq!(t.links.len(), 3);
        assert!(Topology::uniform(&names[..1], 3, Duration::ZERO, Duration::ZERO).is_err());
    }
}
