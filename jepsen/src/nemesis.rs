//! The nemesis: a seeded schedule of faults, one at a time, each held for a few seconds and then
//! undone. Every start and stop is recorded in the history as a `nemesis` event.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_client::Client;
use basalt_regions::Cuts;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Mutex as AsyncMutex;

use crate::cluster::Cluster;
use crate::history::{EventType, Recorder, NEMESIS};
use crate::storage_fault::{self, StorageFault};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Network partitions through the link proxies: random halves, the leader isolated, a
    /// majority ring, a bridge, or one node muted one-way.
    Partition,
    /// Added latency and jitter on every link.
    Latency,
    /// kill -9 of a random node or of the leader, restarted when the fault ends.
    Kill,
    /// SIGSTOP of a random node or of the leader, SIGCONT when the fault ends.
    Pause,
    /// While a node is stopped: a bit flipped in one of its log records. It must refuse to start.
    Storage,
    /// A node's wall clock (the leader's or a random one; with regions, every node of one
    /// region) jumps forward or back by 2 s to 2 h, or strobes between that and the true time;
    /// set right when the fault ends. Peers refuse a node whose clock is off by more than the max
    /// offset, so it must neither lose data nor drag the others' time (TTLs, leases, sessions).
    Clock,
}

/// The clock jumps the clock nemesis picks from, in ms.
pub const CLOCK_JUMPS_MS: [i64; 8] = [
    -7_200_000, -60_000, -2_000, 2_000, 30_000, 600_000, 3_600_000, 7_200_000,
];

/// How often a strobing clock flips between its jump and the true time.
const STROBE_FLIP: Duration = Duration::from_millis(200);

/// Flips the clocks of the nodes at `http` between `skew_ms` and 0 every [`STROBE_FLIP`], until
/// aborted.
pub fn strobe_clocks(http: Vec<std::net::SocketAddr>, skew_ms: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut on = false;
        loop {
            tokio::time::sleep(STROBE_FLIP).await;
            on = !on;
            for addr in &http {
                let _ = crate::cluster::set_clock_skew(*addr, if on { skew_ms } else { 0 }).await;
            }
        }
    })
}

/// A label for a clock fault.
pub fn clock_label(target: &str, skew_ms: i64, strobe: bool) -> String {
    let sign = if skew_ms < 0 { "-" } else { "+" };
    let ms = skew_ms.unsigned_abs();
    let amount = if ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else if ms >= 1_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    format!("clock {target} {sign}{amount}{}", if strobe { " strobe" } else { "" })
}

/// A fault in effect, with what is needed to undo it.
#[derive(Debug)]
pub enum Fault {
    Partition {
        shape: &'static str,
        cuts: Cuts,
    },
    Latency {
        latency: Duration,
        jitter: Duration,
    },
    Kill {
        node: u64,
    },
    Pause {
        node: u64,
    },
    Storage {
        node: u64,
        fault: StorageFault,
        refused: bool,
    },
    Clock {
        node: u64,
        skew_ms: i64,
        strobe: Option<tokio::task::JoinHandle<()>>,
    },
}

impl Fault {
    pub fn label(&self) -> String {
        match self {
            Fault::Partition { shape, .. } => format!("partition {shape}"),
            Fault::Latency { latency, jitter } => format!("latency {}±{} ms", latency.as_millis(), jitter.as_millis()),
            Fault::Kill { node } => format!("kill n{node}"),
            Fault::Pause { node } => format!("pause n{node}"),
            Fault::Storage { node, .. } => format!("bitflip n{node}"),
            Fault::Clock { node, skew_ms, strobe } => clock_label(&format!("n{node}"), *skew_ms, strobe.is_some()),
        }
    }

    fn detail(&self) -> Value {
        match self {
            Fault::Partition { shape, cuts } => json!({ "shape": shape, "cuts": cuts.describe() }),
            Fault::Latency { latency, jitter } => {
                json!({ "latency_ms": latency.as_millis() as u64, "jitter_ms": jitter.as_millis() as u64 })
            }
            Fault::Kill { node } | Fault::Pause { node } => json!({ "node": node }),
            Fault::Clock { node, skew_ms, strobe } => {
                json!({ "node": node, "skew_ms": skew_ms, "strobe": strobe.is_some() })
            }
            Fault::Storage { node, fault, refused } => json!({
                "node": node,
                "file": fault.file.display().to_string(),
                "offset": fault.offset,
                "bit": fault.bit,
                "refused_to_start": refused,
            }),
        }
    }
}

/// One fault as it happened, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultWindow {
    pub label: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub detail: Value,
}

pub struct Nemesis {
    pub kinds: Vec<FaultKind>,
    pub rng: StdRng,
    pub cluster: Arc<AsyncMutex<Cluster>>,
    pub client: Client,
    pub recorder: Recorder,
    /// The label of the fault in effect, for the progress line.
    pub active: Arc<Mutex<Option<String>>>,
    pub windows: Vec<FaultWindow>,
    /// Storage faults a node did not refuse: each is a violation.
    pub undetected: Vec<String>,
    /// Why storage faults could not be injected: a run asked for them and got none tests
    /// nothing, and must not pass for one that did.
    pub storage_errors: Vec<String>,
}

fn set_active(active: &Mutex<Option<String>>, label: Option<String>) {
    *active.lock().unwrap_or_else(|p| p.into_inner()) = label;
}

impl Nemesis {
    /// Injects faults until `until` (on the recorder's clock, in ns), then undoes the last one.
    pub async fn run(&mut self, until_ns: u64) {
        if self.kinds.is_empty() {
            return;
        }
        loop {
            let quiet = Duration::from_millis(self.rng.gen_range(1500..3000));
            if !self.sleep_within(quiet, until_ns).await {
                return;
            }
            let kind = *self.kinds.choose(&mut self.rng).unwrap_or(&FaultKind::Partition);
            let fault = match self.start(kind).await {
                Ok(fault) => fault,
                Err(e) => {
                    if kind == FaultKind::Storage {
                        self.storage_errors.push(e.clone());
                    }
                    self.recorder.record(
                        NEMESIS,
                        EventType::Info,
                        "error",
                        json!({ "kind": kind, "error": e }),
                        None,
                    );
                    continue;
                }
            };
            let label = fault.label();
            let start = self.recorder.record(
                NEMESIS,
                EventType::Info,
                "start",
                json!({ "fault": label, "detail": fault.detail() }),
                None,
            );
            set_active(&self.active, Some(label.clone()));
            let hold = Duration::from_millis(self.rng.gen_range(2500..5000));
            self.sleep_within(hold, until_ns).await;
            let detail = fault.detail();
            if let Err(e) = self.stop(fault).await {
                self.recorder.record(
                    NEMESIS,
                    EventType::Info,
                    "error",
                    json!({ "fault": label, "error": e }),
                    None,
                );
            }
            let stop = self
                .recorder
                .record(NEMESIS, EventType::Info, "stop", json!({ "fault": label }), None);
            set_active(&self.active, None);
            self.windows.push(FaultWindow {
                label,
                start_ns: start.time_ns,
                end_ns: stop.time_ns,
                detail,
            });
        }
    }

    /// Sleeps `d`, or less if the run ends first; false if the run has ended.
    async fn sleep_within(&self, d: Duration, until_ns: u64) -> bool {
        let left = until_ns.saturating_sub(self.recorder.elapsed_ns());
        tokio::time::sleep(d.min(Duration::from_nanos(left))).await;
        self.recorder.elapsed_ns() < until_ns
    }

    async fn target(&mut self, cluster: &Cluster) -> u64 {
        let ids = cluster.ids();
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = cluster.leader(&self.client).await {
                return leader;
            }
        }
        *ids.choose(&mut self.rng).unwrap_or(&1)
    }

    async fn start(&mut self, kind: FaultKind) -> Result<Fault, String> {
        let cluster = self.cluster.clone();
        let mut cluster = cluster.lock().await;
        let ids = cluster.ids();
        match kind {
            FaultKind::Partition => {
                let shapes = ["halves", "isolate-leader", "majority-ring", "bridge", "mute-one-way"];
                let shape = *shapes.choose(&mut self.rng).unwrap_or(&"halves");
                let mut cuts = match shape {
                    "isolate-leader" => Cuts::isolate(self.target(&cluster).await, &ids),
                    "majority-ring" => Cuts::majority_ring(&ids, &mut self.rng),
                    "bridge" => Cuts::bridge(&ids, &mut self.rng),
                    "mute-one-way" => Cuts::mute(self.target(&cluster).await, &ids),
                    _ => Cuts::halves(&ids, &mut self.rng),
                };
                let mut shape = shape;
                if cuts.is_empty() {
                    // A ring or bridge of three nodes cuts nothing: halves instead.
                    cuts = Cuts::halves(&ids, &mut self.rng);
                    shape = "halves";
                }
                cluster.links.apply_cuts(&cuts);
                Ok(Fault::Partition { shape, cuts })
            }
            FaultKind::Latency => {
                let latency = Duration::from_millis(self.rng.gen_range(20..150));
                let jitter = Duration::from_millis(self.rng.gen_range(0..50));
                cluster.links.set_delay(&ids, latency, jitter);
                Ok(Fault::Latency { latency, jitter })
            }
            FaultKind::Kill => {
                let node = self.target(&cluster).await;
                cluster.kill(node).await;
                Ok(Fault::Kill { node })
            }
            FaultKind::Pause => {
                let node = self.target(&cluster).await;
                cluster.pause(node);
                Ok(Fault::Pause { node })
            }
            FaultKind::Clock => {
                let node = self.target(&cluster).await;
                let skew_ms = *CLOCK_JUMPS_MS.choose(&mut self.rng).unwrap_or(&3_600_000);
                cluster.set_clock_skew(node, skew_ms).await?;
                let strobe = self
                    .rng
                    .gen_bool(0.3)
                    .then(|| strobe_clocks(vec![cluster.nodes[&node].http], skew_ms));
                Ok(Fault::Clock { node, skew_ms, strobe })
            }
            FaultKind::Storage => {
                let node = *ids.choose(&mut self.rng).unwrap_or(&1);
                cluster.kill(node).await;
                let log_dir = log_dir(&cluster.nodes[&node].data_dir);
                let fault = match storage_fault::flip_bit(&log_dir, &mut self.rng) {
                    Ok(fault) => fault,
                    Err(e) => {
                        cluster.restart(node).map_err(|e| e.to_string())?;
                        return Err(format!("no record to corrupt on n{node}: {e}"));
                    }
                };
                cluster.restart(node).map_err(|e| e.to_string())?;
                let refused = wait_for_exit(&mut cluster, node, Duration::from_secs(5)).await;
                if !refused {
                    self.undetected.push(format!(
                        "n{node} started on a log with a flipped bit in {} at offset {}",
                        fault.file.display(),
                        fault.offset
                    ));
                }
                Ok(Fault::Storage { node, fault, refused })
            }
        }
    }

    async fn stop(&mut self, fault: Fault) -> Result<(), String> {
        let mut cluster = self.cluster.lock().await;
        match fault {
            Fault::Partition { .. } => cluster.links.heal_cuts(),
            Fault::Latency { .. } => cluster.links.set_delay(&cluster.ids(), Duration::ZERO, Duration::ZERO),
            Fault::Kill { node } => cluster.restart(node).map_err(|e| e.to_string())?,
            Fault::Pause { node } => cluster.resume(node),
            Fault::Clock { node, strobe, .. } => {
                if let Some(strobe) = strobe {
                    strobe.abort();
                    let _ = strobe.await;
                }
                cluster.set_clock_skew(node, 0).await?;
            }
            Fault::Storage { node, fault, .. } => {
                // The operator's repair: the damaged file is replaced by its intact copy.
                cluster.kill(node).await;
                fault
                    .repair()
                    .map_err(|e| format!("restoring {}: {e}", fault.file.display()))?;
                cluster.restart(node).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

async fn wait_for_exit(cluster: &mut Cluster, node: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cluster.exited(node).is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
