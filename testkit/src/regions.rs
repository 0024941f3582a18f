//! Several regions, each a [`TestCluster`], replicating to each other through link proxies, so a
//! test can partition regions and add WAN latency between them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_client::pb::RegionsResponse;
use basalt_client::{Client, ClientOptions};
use basalt_regions::{LinkProxy, Links};

use crate::{ClusterOptions, TestCluster};

pub struct RegionSpec {
    pub name: &'static str,
    pub nodes: u64,
    /// More `basalt start` arguments for this region's nodes (e.g. a clock skew).
    pub extra_args: Vec<String>,
}

pub struct TestRegions {
    /// In region-id order (ids are positions, from 1).
    pub regions: Vec<(&'static str, TestCluster)>,
    /// Endpoints are region ids.
    pub links: Arc<Links>,
    _proxies: Vec<LinkProxy>,
}

impl TestRegions {
    /// Starts every region; all traffic between regions crosses `links` (healthy at first).
    pub async fn start(binary: &str, specs: Vec<RegionSpec>) -> TestRegions {
        Self::start_with(binary, specs, |_| {}).await
    }

    /// [`TestRegions::start`], with `prepare` called on each region's cluster before it launches
    /// (to give its nodes edge listeners, say).
    pub async fn start_with(binary: &str, specs: Vec<RegionSpec>, prepare: impl Fn(&mut TestCluster)) -> TestRegions {
        let links = Links::new();
        let mut clusters: Vec<TestCluster> = specs
            .iter()
            .map(|s| {
                TestCluster::plan(
                    binary,
                    ClusterOptions {
                        nodes: s.nodes,
                        extra_args: s.extra_args.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut proxies = Vec::new();
        for (a, spec) in specs.iter().enumerate() {
            let mut args = vec!["--region".to_string(), format!("{}:{}", spec.name, a + 1)];
            for (b, other) in specs.iter().enumerate() {
                if a == b {
                    continue;
                }
                let mut endpoints = Vec::new();
                for (client, peer) in clusters[b].region_endpoints() {
                    // The client port (home forwarding) and the peer listener (the feed), each
                    // behind a proxy of the same link.
                    let mut proxied = Vec::new();
                    for target in std::iter::once(client).chain(peer) {
                        let proxy = LinkProxy::start(
                            "127.0.0.1:0".parse().expect("addr"),
                            a as u64 + 1,
                            b as u64 + 1,
                            target.parse().expect("node address"),
                            links.clone(),
                        )
                        .await
                        .expect("link proxy");
                        proxied.push(proxy.local_addr().to_string());
                        proxies.push(proxy);
                    }
                    endpoints.push(proxied.join("/"));
                }
                args.push("--remote-region".into());
                args.push(format!("{}:{}={}", other.name, b + 1, endpoints.join(",")));
            }
            clusters[a].push_args(args);
        }
        for cluster in &mut clusters {
            prepare(cluster);
            cluster.launch();
        }
        TestRegions {
            regions: specs.iter().map(|s| s.name).zip(clusters).collect(),
            links,
            _proxies: proxies,
        }
    }

    pub fn cluster(&self, name: &str) -> &TestCluster {
        &self.regions.iter().find(|(n, _)| *n == name).expect("known region").1
    }

    pub fn cluster_mut(&mut self, name: &str) -> &mut TestCluster {
        &mut self
            .regions
            .iter_mut()
            .find(|(n, _)| *n == name)
            .expect("known region")
            .1
    }

    pub fn id(&self, name: &str) -> u64 {
        self.regions.iter().position(|(n, _)| *n == name).expect("known region") as u64 + 1
    }

    /// A client of one region (its home region).
    pub async fn client(&self, name: &str) -> Client {
        self.cluster(name).client().await
    }

    /// Cuts every link between regions.
    pub fn partition_all(&self) {
        for a in 1..=self.regions.len() as u64 {
            for b in 1..=self.regions.len() as u64 {
                if a != b {
                    self.links.change_pair(a, b, |s| s.cut = true);
                }
            }
        }
    }

    /// `name`'s view of replication, from its leader (with the digest).
    pub async fn status(&self, name: &str) -> Option<RegionsResponse> {
        let cluster = self.cluster(name);
        let client = Client::lazy(
            cluster.endpoints(),
            ClientOptions {
                attempt_timeout: Duration::from_secs(2),
                token: cluster.root_token(),
                ..Default::default()
            },
        )
        .ok()?;
        for endpoint in cluster.endpoints() {
            if let Ok(answer) = client.node_regions(&endpoint, false).await {
                if answer.leader {
                    return client.node_regions(&endpoint, true).await.ok();
                }
            }
        }
        None
    }

    /// Waits until every region's leader reports the same digest; returns it.
    pub async fn wait_converged(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let mut digests = Vec::new();
            for (name, _) in &self.regions {
                digests.push(self.status(name).await.map(|s| s.digest));
            }
            if digests.iter().all(Option::is_some) && digests.windows(2).all(|w| w[0] == w[1]) {
                return digests[0].clone().unwrap_or_default();
            }
            if Instant::now() > deadline {
                let mut logs = String::new();
                for (name, cluster) in &self.regions {
                    logs.push_str(&format!("=== region {name} ===\n{}", cluster.logs()));
                }
                panic!("regions did not converge within {timeout:?}: {digests:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
