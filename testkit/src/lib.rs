//! What the integration tests (`tests/`) and the partition harness (`jepsen/`) share; `basalt
//! demo` (`cli/`) takes its port reservation for its temporary clusters.
//!
//! Owns: port reservation for local clusters ([`local_ports`]) and clusters of node processes
//! ([`TestCluster`], and [`regions::TestRegions`] for several regions): every node is a child
//! process of the test, so a test can kill -9 it, restart it on the same data, or add new nodes.
//! It starts nodes by running a binary (the `basalt` entry point) and talks to them through the
//! SDK and their HTTP port only: it may not link the server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt_client::{Client, ClientOptions};
use local_ports::PortReservation;

pub mod limits;
pub mod local_ports;
pub mod regions;

pub struct NodeSpec {
    pub id: u64,
    /// The client address (`--listen`).
    pub addr: String,
    /// The peer listener (`--peer-listen`): Raft between the nodes.
    pub peer: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Where the node serves `/metrics` and `/health`.
    pub http: String,
    /// Held while the cluster lives, so no other test takes the port, even while the node is down.
    _port: PortReservation,
    _peer_port: PortReservation,
    _http_port: PortReservation,
}

pub struct ClusterOptions {
    pub nodes: u64,
    pub snapshot_entries: u64,
    pub logs_to_keep: u64,
    /// More `basalt start` arguments for every node.
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            snapshot_entries: 50_000,
            logs_to_keep: 10_000,
            extra_args: Vec::new(),
        }
    }
}

/// The ports a one-node `basalt dev` of a test listens on, reserved while this lives.
pub struct DevPorts {
    pub grpc: PortReservation,
    pub peer: PortReservation,
    pub http: PortReservation,
    pub control: PortReservation,
    pub resp: PortReservation,
    pub edge: PortReservation,
}

/// `basalt dev --nodes 1 --clean` of `binary` on reserved ports (none of the fixed defaults, so
/// tests never meet each other or a local redis-server), keeping its data and cluster file under
/// `home`, stdout piped for its node lines, stderr dropped. Add flags (`--origin`) and spawn.
pub fn dev_command(binary: &str, home: &std::path::Path) -> (Command, DevPorts) {
    let reserve = || local_ports::reserve().expect("reserve a port");
    let ports = DevPorts {
        grpc: reserve(),
        peer: reserve(),
        http: reserve(),
        control: reserve(),
        resp: reserve(),
        edge: reserve(),
    };
    let mut command = Command::new(binary);
    command
        .args(["dev", "--nodes", "1", "--clean"])
        .args(["--base-port", &ports.grpc.port().to_string()])
        .args(["--peer-base-port", &ports.peer.port().to_string()])
        .args(["--http-base-port", &ports.http.port().to_string()])
        .args(["--control-port", &ports.control.port().to_string()])
        .args(["--resp-base-port", &ports.resp.port().to_string()])
        .args(["--edge-base-port", &ports.edge.port().to_string()])
        .env("BASALT_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    (command, ports)
}

/// The lines a child writes to `stdout`, as they come (a thread reads them), so a test waits for
/// one with `recv_timeout` instead of blocking on a pipe.
pub fn line_receiver(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    line_rx
}

/// `basalt dev --regions REGIONS --nodes-per-region NODES --clean` of `binary` on reserved ports
/// (each listener's base with every region's and node's offset, the link proxies and the
/// control port), keeping its data and cluster file under `home`, stdout piped for its lines,
/// stderr dropped. Add flags (`--origin`) and spawn; hold the reservations while it runs.
pub fn dev_regions_command(
    binary: &str,
    home: &std::path::Path,
    regions: &[&str],
    nodes_per_region: u16,
) -> (Command, Vec<PortReservation>) {
    // Each node where `basalt dev` places it.
    let node_offsets: Vec<u16> = (0..regions.len())
        .flat_map(|r| (1..=nodes_per_region).map(move |n| basalt_regions::topology::node_port_offset(r, n)))
        .collect::<Option<_>>()
        .expect("the regions' nodes fit the port range");
    // Exactly the proxies `basalt dev` runs: a port it uses beyond the block reserved here could be
    // handed to another reservation (a test's origin once was, and the demo could not bind it).
    let region_nodes = vec![nodes_per_region; regions.len()];
    let proxies = basalt_regions::topology::link_proxies_needed(&region_nodes);
    let proxy_offsets: Vec<u16> = (0..u16::try_from(proxies).expect("proxy count fits a port offset")).collect();
    let block = |offsets: &[u16]| local_ports::reserve_block(offsets).expect("reserve ports");
    let mut held = Vec::new();
    let mut command = Command::new(binary);
    command.args(["dev", "--clean", "--regions", &regions.join(",")]);
    command.args(["--nodes-per-region", &nodes_per_region.to_string()]);
    for flag in [
        "--base-port",
        "--peer-base-port",
        "--http-base-port",
        "--resp-base-port",
        "--edge-base-port",
    ] {
        let ports = block(&node_offsets);
        command.args([flag, &ports[0].port().to_string()]);
        held.extend(ports);
    }
    for (flag, offsets) in [("--proxy-base-port", &proxy_offsets[..]), ("--control-port", &[0][..])] {
        if offsets.is_empty() {
            continue;
        }
        let ports = block(offsets);
        command.args([flag, &ports[0].port().to_string()]);
        held.extend(ports);
    }
    command
        .env("BASALT_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    (command, held)
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub specs: BTreeMap<u64, NodeSpec>,
    children: BTreeMap<u64, Child>,
    peers: String,
    options: ClusterOptions,
    binary: PathBuf,
    /// Each node's edge-cache listener, when [`TestCluster::enable_edges`] gave it one.
    edges: BTreeMap<u64, PortReservation>,
    /// Each node's RESP listener, when [`TestCluster::enable_resp`] gave it one.
    resp: BTreeMap<u64, PortReservation>,
    /// Whether the nodes started from now on have peer listeners (they do unless a test says).
    peer_listeners: bool,
    /// The root token, when [`TestCluster::enable_auth`] made the nodes authenticate clients.
    root_token: Option<basalt_client::Token>,
    /// How [`TestCluster::client`] connects when the nodes' client doors run TLS
    /// ([`TestCluster::set_client_tls`]).
    client_tls: Option<basalt_client::TlsConnector>,
    /// The open files limit (soft and hard) the nodes started from now on run with
    /// ([`TestCluster::set_open_files_limit`]); none: this process's.
    open_files_limit: Option<u64>,
}

impl TestCluster {
    /// Starts `options.nodes` processes of `binary` (the `basalt` entry point; integration tests
    /// pass `env!("CARGO_BIN_EXE_basalt-test-node")`); node 1 bootstraps the cluster.
    pub fn start(binary: &str, options: ClusterOptions) -> TestCluster {
        let mut cluster = Self::plan(binary, options);
        cluster.launch();
        cluster
    }

    /// Chooses every node's address and directory without starting anything, so that a test can
    /// wire clusters together (regions) before [`TestCluster::launch`].
    pub fn plan(binary: &str, options: ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut specs = BTreeMap::new();
        for id in 1..=options.nodes {
            specs.insert(id, Self::spec(&dir, id));
        }
        let peers = Self::peers_flag(&specs, true);
        TestCluster {
            dir,
            specs,
            children: BTreeMap::new(),
            peers,
            options,
            binary: binary.into(),
            edges: BTreeMap::new(),
            resp: BTreeMap::new(),
            peer_listeners: true,
            open_files_limit: None,
            root_token: None,
            client_tls: None,
        }
    }

    fn peers_flag(specs: &BTreeMap<u64, NodeSpec>, peer_listeners: bool) -> String {
        specs
            .values()
            .map(|s| match peer_listeners {
                true => format!("{}={}/{}", s.id, s.addr, s.peer),
                false => format!("{}={}", s.id, s.addr),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Makes every node started from now on authenticate its clients with a new root token
    /// (written to the cluster's directory); [`TestCluster::client`] carries it. Returns it.
    pub fn enable_auth(&mut self) -> basalt_client::Token {
        let token = basalt_client::Token::generate();
        let path = self.dir.path().join("root.token");
        std::fs::write(&path, token.as_str()).expect("write the root token");
        self.options
            .extra_args
            .extend(["--root-token-file".to_string(), path.display().to_string()]);
        self.root_token = Some(token.clone());
        token
    }

    /// Makes [`TestCluster::client`] connect with `tls`, for nodes whose client doors run TLS
    /// (the test gives them their `--tls-*` flags). [`TestCluster::metric`] and the clock
    /// controls speak plain HTTP and do not work with such nodes.
    pub fn set_client_tls(&mut self, tls: basalt_client::TlsConnector) {
        self.client_tls = Some(tls);
    }

    /// Whether the nodes started from now on listen for peers apart from clients
    /// (`--peer-listen`; on by default), as a build before peer listeners ran them when off.
    pub fn set_peer_listeners(&mut self, on: bool) {
        self.peer_listeners = on;
        self.peers = Self::peers_flag(&self.specs, on);
    }

    /// Gives every planned node an edge-cache listener of its own (`--edge-listen`), serving
    /// paths from `origins` (`PREFIX=URL`, as `--origin` takes them). Call before launching.
    pub fn enable_edges(&mut self, origins: &[String]) {
        for id in self.specs.keys() {
            self.edges
                .insert(*id, local_ports::reserve().expect("reserve an edge port"));
        }
        for origin in origins {
            self.options.extra_args.extend(["--origin".to_string(), origin.clone()]);
        }
    }

    /// Node `id`'s edge-cache address (see [`TestCluster::enable_edges`]).
    pub fn edge(&self, id: u64) -> std::net::SocketAddr {
        self.edges.get(&id).expect("the node has an edge listener").addr()
    }

    /// Gives every planned node a RESP listener of its own (`--resp-listen`). Call before
    /// launching; add `--resp-password` and the like with [`TestCluster::push_args`].
    pub fn enable_resp(&mut self) {
        for id in self.specs.keys() {
            self.resp
                .insert(*id, local_ports::reserve().expect("reserve a RESP port"));
        }
    }

    /// Node `id`'s RESP address (see [`TestCluster::enable_resp`]).
    pub fn resp(&self, id: u64) -> std::net::SocketAddr {
        self.resp.get(&id).expect("the node has a RESP listener").addr()
    }

    /// More `basalt start` arguments for every node started from now on.
    pub fn push_args(&mut self, args: impl IntoIterator<Item = String>) {
        self.options.extra_args.extend(args);
    }

    /// The extra `basalt start` arguments every node started from now on gets, instead of the
    /// ones it had (a restart with other flags).
    pub fn replace_args(&mut self, args: Vec<String>) {
        self.options.extra_args = args;
    }

    pub fn extra_args(&self) -> &[String] {
        &self.options.extra_args
    }

    /// Waits up to `timeout` for node `id`'s process to exit by itself; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.children.get_mut(&id)?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(&id);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes member `id` of this cluster's `--peers` list `client/peer` for the nodes started
    /// from now on: a wrong list, as a misconfigured node has.
    pub fn set_member(&mut self, id: u64, client: &str, peer: &str) {
        let mut members: BTreeMap<u64, String> = self
            .peers
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .filter_map(|(member, addrs)| Some((member.parse().ok()?, addrs.to_string())))
            .collect();
        members.insert(id, format!("{client}/{peer}"));
        self.peers = members
            .iter()
            .map(|(member, addrs)| format!("{member}={addrs}"))
            .collect::<Vec<_>>()
            .join(",");
    }

    /// Makes the nodes started from now on run with `limit` open files at most (soft and hard:
    /// they cannot raise it), as on a host with a low descriptor limit.
    pub fn set_open_files_limit(&mut self, limit: u64) {
        self.open_files_limit = Some(limit);
    }

    /// Starts planned node `id` alone (`init`: it bootstraps the cluster).
    pub fn launch_node(&mut self, id: u64, init: bool) {
        self.spawn(id, init);
    }

    /// Starts every planned node; node 1 bootstraps the cluster.
    pub fn launch(&mut self) {
        let ids: Vec<u64> = self.specs.keys().copied().collect();
        for id in ids {
            self.spawn(id, id == 1);
        }
    }

    fn spec(dir: &tempfile::TempDir, id: u64) -> NodeSpec {
        let port = local_ports::reserve().expect("reserve a port");
        let http_port = local_ports::reserve().expect("reserve a port");
        let peer_port = local_ports::reserve().expect("reserve a port");
        NodeSpec {
            id,
            addr: port.addr().to_string(),
            peer: peer_port.addr().to_string(),
            _peer_port: peer_port,
            data_dir: dir.path().join(format!("node-{id}")),
            log: dir.path().join(format!("node-{id}.log")),
            http: http_port.addr().to_string(),
            _port: port,
            _http_port: http_port,
        }
    }

    fn spawn(&mut self, id: u64, init: bool) {
        let spec = &self.specs[&id];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .expect("node log");
        let mut command = Command::new(&self.binary);
        command
            .arg("start")
            .args(["--id", &id.to_string(), "--listen", &spec.addr, "--http", &spec.http])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--peers", &self.peers])
            .args(["--snapshot-entries", &self.options.snapshot_entries.to_string()])
            .args(["--logs-to-keep", &self.options.logs_to_keep.to_string()])
            .args(&self.options.extra_args)
            .env(
                "BASALT_LOG",
                std::env::var("TEST_BASALT_LOG").unwrap_or("info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some(edge) = self.edges.get(&id) {
            command.args(["--edge-listen", &edge.addr().to_string()]);
        }
        if let Some(resp) = self.resp.get(&id) {
            command.args(["--resp-listen", &resp.addr().to_string()]);
        }
        if self.peer_listeners {
            command.args(["--peer-listen", &spec.peer]);
        }
        if init {
            command.arg("--init");
        }
        if let Some(limit) = self.open_files_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and reads only `limit`, copied into the
            // closure; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().expect("spawn node");
        self.children.insert(id, child);
    }

    /// Adds a node process that is not yet a member (for `add_member`): its client address and
    /// its peer listener's.
    pub fn spawn_new_node(&mut self, id: u64) -> (String, String) {
        let spec = Self::spec(&self.dir, id);
        let addrs = (spec.addr.clone(), spec.peer.clone());
        self.specs.insert(id, spec);
        self.spawn(id, false);
        addrs
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.specs.values().map(|s| s.addr.clone()).collect()
    }

    /// Each node's client address and, when the nodes listen for peers apart, its peer
    /// listener's: how other regions name this one's nodes (`CLIENT/PEER`).
    pub fn region_endpoints(&self) -> Vec<(String, Option<String>)> {
        self.specs
            .values()
            .map(|s| (s.addr.clone(), self.peer_listeners.then(|| s.peer.clone())))
            .collect()
    }

    /// The root token, when [`TestCluster::enable_auth`] made the nodes authenticate clients.
    pub fn root_token(&self) -> Option<basalt_client::Token> {
        self.root_token.clone()
    }

    pub fn addr(&self, id: u64) -> String {
        self.specs[&id].addr.clone()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.children.contains_key(&id)
    }

    /// SIGTERM: node `id` starts its clean stop; [`TestCluster::wait_exit`] waits for its end.
    pub fn terminate(&self, id: u64) {
        if let Some(child) = self.children.get(&id) {
            // SAFETY: kill(2) on our own child process, which has not been waited for.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// SIGKILL: no shutdown path runs, unsynced page cache survives as after a process crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "node {id} is running");
        self.spawn(id, false);
    }

    /// The options of [`TestCluster::client`]: a 15-s request timeout (room for an election or
    /// two on a loaded machine), the cluster's root token and its client TLS. A test that needs
    /// other timeouts or endpoints starts from these, so that it works on a secured cluster too:
    /// `ClientOptions { request_timeout, ..cluster.client_options() }`.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(15),
            token: self.root_token.clone(),
            tls: self.client_tls.clone(),
            ..Default::default()
        }
    }

    pub async fn client(&self) -> Client {
        let options = self.client_options();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_with(self.endpoints(), options.clone()).await {
                Ok(client) => {
                    // A test's first write must not race the first election: wait for a leader
                    // (and show the node logs if none comes).
                    self.leader(&client).await;
                    return client;
                }
                Err(e) if Instant::now() > deadline => panic!("cluster did not come up: {e}\n{}", self.logs()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits for a leader among the running nodes and returns its id.
    pub async fn leader(&self, client: &Client) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (id, spec) in &self.specs {
                if !self.is_running(*id) {
                    continue;
                }
                if let Ok(status) = client.node_status(&spec.addr).await {
                    if status.state == "Leader" {
                        return *id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, client: &Client, id: u64, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = client.node_status(&self.addr(id)).await {
                if status.applied_index.unwrap_or(0) >= index {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} within 60 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied everything the leader had logged when this was called.
    pub async fn wait_caught_up(&self, client: &Client, id: u64) {
        let status = client.cluster_status().await.expect("leader status");
        let target = status.last_log_index.expect("the leader has a log");
        self.wait_applied(client, id, target).await;
    }

    /// A connection to `addr` once a node listens there (it may still be starting), within 10 s.
    fn connect_when_listening(&self, addr: &str) -> std::net::TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(addr) {
                Ok(stream) => return stream,
                Err(e) if Instant::now() > deadline => panic!("connect to {addr}: {e}\n{}", self.logs()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Waits until node `id` listens on its client port, so that a first request with a short
    /// timeout meets the node rather than a refused connection.
    pub fn wait_listening(&self, id: u64) {
        drop(self.connect_when_listening(&self.specs[&id].addr));
    }

    /// Sets node `id`'s clock skew at run time, in ms (the node must run with
    /// `--allow-clock-control`).
    pub fn set_clock_skew(&self, id: u64, skew_ms: i64) {
        use std::io::{Read, Write};
        let addr = &self.specs[&id].http;
        // The node may still be starting its HTTP listener.
        let mut stream = self.connect_when_listening(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let body = skew_ms.to_string();
        write!(
            stream,
            "PUT /debug/clock-skew HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send the skew");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read the reply");
        assert!(
            reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
            "{reply}"
        );
    }

    /// The value of counter or gauge `name` on node `id`'s `/metrics`.
    pub fn metric(&self, id: u64, name: &str) -> u64 {
        use std::io::{Read, Write};
        let addr = &self.specs[&id].http;
        // The node may still be starting its HTTP listener.
        let mut stream = self.connect_when_listening(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send /metrics request");
        let mut page = String::new();
        stream.read_to_string(&mut page).expect("read /metrics");
        page.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{page}"))
    }

    /// Node `id`'s whole log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.specs[&id].log).unwrap_or_default()
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for spec in self.specs.values() {
            let text = std::fs::read_to_string(&spec.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- node {} ---\n", spec.id));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        // A failed test keeps its nodes' data and full logs, and prints where they are with the
        // tail of each log: a failure seen once in CI must be diagnosable from its output.
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("cluster kept in {}\n{}", kept.display(), self.logs());
        }
    }
}

/// The runtime every cluster test runs on: two workers, like the machines CI runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What one run of the CLI printed: its exit code, stdout and stderr.
#[derive(Clone, Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the CLI (`binary`, the `basalt` entry point) with `args` against `endpoints`, writing
/// `stdin` to it, on a blocking thread so the test's runtime keeps serving its cluster.
pub async fn run_cli(binary: &str, endpoints: &[String], args: &[&str], stdin: Option<&str>) -> CliRun {
    let mut command = Command::new(binary);
    command
        .args(args)
        .args(["--endpoints", &endpoints.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.unwrap_or_default().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = command.spawn().expect("run the CLI");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("CLI output");
        CliRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join the CLI's thread")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multi_region_command_reserves_every_port_basalt_dev_will_use() {
        let home = tempfile::tempdir().expect("home");
        let (command, held) = super::dev_regions_command("basalt", home.path(), &["us", "eu", "ap"], 2);
        // Five listeners per node (client, peer, HTTP, RESP, edge), the link proxies, the control port.
        assert_eq!(held.len(), 5 * 6 + 24 + 1);
        let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let flag = |name: &str| -> u16 {
            let at = args.iter().position(|a| a == name).expect(name);
            args[at + 1].parse().expect("port")
        };
        let proxy_base = flag("--proxy-base-port");
        for offset in 0..24 {
            assert!(
                held.iter().any(|r| r.port() == proxy_base + offset),
                "proxy port {} is not reserved",
                proxy_base + offset
            );
        }
    }
}
