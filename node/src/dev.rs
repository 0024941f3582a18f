//! `basalt dev`: a local cluster of node processes, supervised until Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// gRPC port of node 1; node N listens on base + N - 1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// HTTP port of node 1 (/metrics, /health).
    #[arg(long, default_value_t = 8001)]
    http_base_port: u16,
    /// Data directory (default: $BASALT_HOME/dev, BASALT_HOME defaulting to ~/.basalt).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Remove existing data first.
    #[arg(long)]
    clean: bool,
}

/// Polls the cluster until a leader is known.
async fn wait_for_leader(endpoints: &[String], timeout: Duration) -> Result<(u64, String), String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no answer");
    while Instant::now() < deadline {
        match basalt_client::Client::connect(endpoints).await {
            Ok(client) => match client.cluster_status().await {
                Ok(status) if status.leader_id.is_some() && !status.leader_addr.is_empty() => {
                    return Ok((status.leader_id.unwrap_or_default(), status.leader_addr));
                }
                Ok(_) => last_error = "election in progress".into(),
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error)
}

struct NodeProcess {
    id: u16,
    child: Child,
}

fn send_signal(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a child pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err(format!("--nodes must be in 1..=9, got {}", args.nodes));
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::cli::basalt_home().join("dev"));
    if args.clean && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("locating the basalt binary: {e}"))?;

    let addr = |i: u16| format!("127.0.0.1:{}", args.base_port + i - 1);
    let peers: Vec<String> = (1..=args.nodes).map(|i| format!("{i}={}", addr(i))).collect();
    let mut processes = Vec::new();
    for i in 1..=args.nodes {
        let node_dir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir).map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
        let log_path = dir.join(format!("node-{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&exe);
        command
            .arg("start")
            .args(["--id", &i.to_string()])
            .args(["--listen", &addr(i)])
            .args(["--http", &format!("127.0.0.1:{}", args.http_base_port + i - 1)])
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["--peers", &peers.join(",")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        if i == 1 {
            command.arg("--init");
        }
        let child = command.spawn().map_err(|e| format!("starting node {i}: {e}"))?;
        processes.push(NodeProcess { id: i, child });
    }

    let endpoints: Vec<String> = (1..=args.nodes).map(addr).collect();
    let pids: Vec<u32> = processes.iter().filter_map(|p| p.child.id()).collect();
    let cluster_file = crate::cli::cluster_file();
    if let Some(parent) = cluster_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let record = serde_json::json!({ "endpoints": endpoints, "pids": pids, "data_dir": dir });
    std::fs::write(&cluster_file, record.to_string())
        .map_err(|e| format!("writing {}: {e}", cluster_file.display()))?;

    println!("basalt dev: {} nodes, data in {}", args.nodes, dir.display());
    for (p, endpoint) in processes.iter().zip(&endpoints) {
        println!(
            "  node {}  grpc {}  http 127.0.0.1:{}  pid {}  log {}",
            p.id,
            endpoint,
            args.http_base_port + p.id - 1,
            p.child.id().map_or_else(|| "-".into(), |x| x.to_string()),
            dir.join(format!("node-{}.log", p.id)).display()
        );
    }
    println!("  cluster file {}", cluster_file.display());

    let started = Instant::now();
    match wait_for_leader(&endpoints, Duration::from_secs(15)).await {
        Ok((id, addr)) => println!(
            "leader: node {id} ({addr}) after {:.1}s. Try: basalt kv put greeting hello; basalt cluster status. Ctrl-C stops all nodes.",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("no leader yet: {e} (see the node logs)"),
    }

    // Supervise until a signal, reporting nodes that exit on their own.
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = poll.tick() => {
                for p in &mut processes {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        println!("node {} exited ({status}); see its log", p.id);
                    }
                }
                processes.retain_mut(|p| !matches!(p.child.try_wait(), Ok(Some(_))));
                if processes.is_empty() {
                    println!("every node has exited");
                    break;
                }
            }
        }
    }

    println!("stopping {} nodes...", processes.len());
    for p in &processes {
        send_signal(&p.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &mut processes {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, p.child.wait()).await.is_err() {
            println!("node {} did not stop in time; killing it", p.id);
            let _ = p.child.kill().await;
        }
    }
    let _ = std::fs::remove_file(&cluster_file);
    println!("stopped");
    Ok(())
}
