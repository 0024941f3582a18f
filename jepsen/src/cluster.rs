//! The cluster under test: real `basalt` node processes on loopback, each dialing its peers
//! through a link proxy per directed pair, so the nemesis can cut, slow or restore any link.
//! Clients talk to the nodes directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_client::{Client, ClientOptions};
use basalt_regions::{LinkProxy, Links};
use basalt_testkit::local_ports::{self, PortError, PortReservation};
use tokio::process::{Child, Command};

/// Set in a node process's environment: the harness binary then runs `basalt` itself, so a
/// `cargo run -p basalt-jepsen` needs no separately built node binary.
pub const NODE_ENV: &str = "BASALT_JEPSEN_NODE";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

pub struct Node {
    pub id: u64,
    pub addr: SocketAddr,
    /// The node's HTTP port: `/metrics`, and `/debug/clock-skew` for the clock nemesis.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    pub links: Arc<Links>,
    /// Kept alive for the cluster's lifetime: dropping a proxy closes its connections.
    _proxies: Vec<LinkProxy>,
    /// Held for the cluster's lifetime: no other cluster takes a port, even while its node is down.
    _ports: BTreeMap<u64, PortReservation>,
    _http_ports: BTreeMap<u64, PortReservation>,
    routes: BTreeMap<u64, String>,
    peers: String,
    binary: PathBuf,
    /// More `basalt start` arguments for every node (a region's flags).
    extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes (node 1 bootstraps) with their logs in `log_dir` and data in `data_dir`.
    pub async fn start(binary: &Path, n: u64, log_dir: &Path, data_dir: &Path) -> Result<Cluster, ClusterError> {
        Self::start_at(binary, Self::reserve(n)?, log_dir, data_dir, Vec::new()).await
    }

    /// Reserves an address for each of nodes `1..=n` before anything starts: a multi-region run
    /// needs every region's addresses to wire the regions together.
    pub fn reserve(n: u64) -> Result<BTreeMap<u64, PortReservation>, ClusterError> {
        (1..=n).map(|id| Ok((id, local_ports::reserve()?))).collect()
    }

    /// Starts a node at each of `ports` (node 1 bootstraps), each with `extra_args`.
    pub async fn start_at(
        binary: &Path,
        ports: BTreeMap<u64, PortReservation>,
        log_dir: &Path,
        data_dir: &Path,
        extra_args: Vec<String>,
    ) -> Result<Cluster, ClusterError> {
        std::fs::create_dir_all(log_dir).map_err(io(format!("creating {}", log_dir.display())))?;
        let links = Links::new();
        let addrs: BTreeMap<u64, SocketAddr> = ports.iter().map(|(id, p)| (*id, p.addr())).collect();
        let http_ports = Self::reserve(addrs.len() as u64)?;
        let n = addrs.len() as u64;
        let mut proxies = Vec::new();
        let mut routes: BTreeMap<u64, String> = BTreeMap::new();
        for from in 1..=n {
            let mut mine = Vec::new();
            for to in (1..=n).filter(|&to| to != from) {
                let listen = SocketAddr::from(([127, 0, 0, 1], 0));
                let proxy = LinkProxy::start(listen, from, to, addrs[&to], links.clone())
                    .await
                    .map_err(io("starting a link proxy"))?;
                mine.push(format!("{to}={}", proxy.local_addr()));
                proxies.push(proxy);
            }
            routes.insert(from, mine.join(","));
        }
        let peers = addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = addrs
            .iter()
            .map(|(&id, &addr)| {
                (
                    id,
                    Node {
                        id,
                        addr,
                        http: http_ports[&id].addr(),
                        data_dir: data_dir.join(format!("n{id}")),
                        log: log_dir.join(format!("n{id}.log")),
                        child: None,
                        paused: false,
                    },
                )
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            links,
            _proxies: proxies,
            _ports: ports,
            _http_ports: http_ports,
            routes,
            peers,
            binary: binary.to_path_buf(),
            extra_args,
        };
        for id in 1..=n {
            cluster.spawn(id, id == 1)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64, init: bool) -> Result<(), ClusterError> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| ClusterError::Io {
            what: format!("spawning node {id}"),
            source: std::io::Error::other("no such node"),
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("opening {}", node.log.display())))?;
        let log_err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut command = Command::new(&self.binary);
        command
            .env(NODE_ENV, "1")
            .env("BASALT_LOG", "info,openraft=warn")
            .arg("start")
            .args(["--id", &id.to_string(), "--listen", &node.addr.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peers", &self.peers])
            .args(["--peer-routes", &self.routes[&id]])
            .args(["--http", &node.http.to_string()])
            .arg("--allow-clock-control")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        if init {
            command.arg("--init");
        }
        node.child = Some(command.spawn().map_err(io(format!("starting node {id}")))?);
        node.paused = false;
        Ok(())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.to_string()).collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused)
    }

    fn signal(&self, id: u64, signal: i32) {
        let pid = self.nodes.get(&id).and_then(|n| n.child.as_ref()).and_then(Child::id);
        if let Some(pid) = pid {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// kill -9: no shutdown path runs.
    pub async fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill().await;
                let _ = child.wait().await;
            }
            node.paused = false;
        }
    }

    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        if self.is_running(id) {
            return Ok(());
        }
        self.spawn(id, false)
    }

    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = node.child.is_some();
        }
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = false;
        }
    }

    /// Whether the node's process has exited on its own (it refused to start, say).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id)?;
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
    }

    /// A client for the workload: short timeouts, so that a fault shows up as an unknown or
    /// failed operation within seconds instead of a stalled client.
    pub fn client(&self) -> Result<Client, basalt_client::ClientError> {
        Client::lazy(
            self.endpoints(),
            ClientOptions {
                request_timeout: Duration::from_secs(3),
                attempt_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_millis(300),
                ..ClientOptions::default()
            },
        )
    }

    /// The node that says it leads, among running, unpaused nodes.
    pub async fn leader(&self, client: &Client) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for node in self.nodes.values().filter(|n| n.child.is_some() && !n.paused) {
            let addr = node.addr.to_string();
            let status = tokio::time::timeout(Duration::from_millis(500), client.node_status(&addr)).await;
            if let Ok(Ok(status)) = status {
                if status.state == "Leader" && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, node.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    pub async fn wait_for_leader(&self, client: &Client, timeout: Duration) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(id) = self.leader(client).await {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NoLeader(timeout))
    }

    /// Sets node `id`'s clock skew, in ms (`PUT /debug/clock-skew`).
    pub async fn set_clock_skew(&self, id: u64, skew_ms: i64) -> Result<(), String> {
        let node = self.nodes.get(&id).ok_or_else(|| format!("no node {id}"))?;
        set_clock_skew(node.http, skew_ms).await
    }

    /// Undoes every fault: links healed, paused nodes resumed, stopped nodes restarted.
    pub fn heal(&mut self) -> Result<(), ClusterError> {
        self.links.heal_all();
        for id in self.ids() {
            if self.is_paused(id) {
                self.resume(id);
            }
            if !self.is_running(id) {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    pub async fn stop(&mut self) {
        for id in self.ids() {
            self.resume(id);
            self.kill(id).await;
        }
    }
}

/// Sets the clock skew of the node serving HTTP at `http`, in ms, within 2 s.
pub async fn set_clock_skew(http: SocketAddr, skew_ms: i64) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        let body = skew_ms.to_string();
        let request = format!(
            "PUT /debug/clock-skew HTTP/1.0\r\nHost: {http}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("no answer from {http} within 2 s"))?
        .map_err(|e| format!("setting the clock skew at {http}: {e}"))?;
    if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "{http} refused the clock skew: {}",
            reply.lines().next().unwrap_or("")
        ))
    }
}
