//! One run: start the cluster, set up the workload, drive clients while the nemesis injects
//! faults, heal, read the final state, check the history, and write the store directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;

use crate::checker::{Validity, Verdict};
use crate::cluster::{Cluster, ClusterError};
use crate::history::{write_jsonl, EventType, Recorder, NEMESIS};
use crate::nemesis::{FaultKind, Nemesis};
use crate::report::{self, Results};
use crate::workload::{perform, Completion, Shared, WorkerState, Workload};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workload: Workload,
    pub nemesis: Vec<FaultKind>,
    pub nodes: u64,
    pub time: Duration,
    /// Operations per second, over all clients.
    pub rate: f64,
    pub concurrency: u64,
    pub seed: u64,
    /// Runs are written under `store/<workload>/<timestamp>/`.
    pub store: PathBuf,
    /// The executable that runs a node when started with [`crate::cluster::NODE_ENV`] set.
    pub node_binary: PathBuf,
    /// Print a progress line every two seconds.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("creating {path}: {source}")]
    Store { path: PathBuf, source: std::io::Error },
    #[error("starting the cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("building a client: {0}")]
    Client(#[from] basalt_client::ClientError),
    #[error("setting up the {workload} workload: {reason}")]
    Setup { workload: &'static str, reason: String },
}

pub struct RunOutcome {
    pub dir: PathBuf,
    pub results: Results,
}

/// `YYYYMMDDTHHMMSSZ` from the system clock (UTC), without a date library.
pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn create_dir(path: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(path).map_err(|source| RunError::Store {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, contents).map_err(|source| RunError::Store {
        path: path.to_path_buf(),
        source,
    })
}

/// A node that panicked is a bug whatever the history says.
pub(crate) fn node_log_verdict(dir: &Path) -> Verdict {
    let mut verdict = Verdict::new("node-logs");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return verdict;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            verdict.problem(format!("{}: {line}", entry.file_name().to_string_lossy()));
        }
    }
    verdict
}

/// One client process loop; a process whose operation ended unknown is replaced by a new one.
struct Worker {
    workload: Workload,
    /// The region whose nodes `client` talks to (multi-region runs).
    region: Option<String>,
    client: basalt_client::Client,
    recorder: Recorder,
    shared: Arc<Shared>,
    first_process: u64,
    concurrency: u64,
    rng: StdRng,
    pause_mean: Duration,
    end_ns: u64,
    done: Arc<AtomicU64>,
}

impl Worker {
    async fn run(mut self) {
        let mut process = self.first_process;
        let fresh = |region: &Option<String>| WorkerState {
            region: region.clone(),
            ..WorkerState::default()
        };
        let mut state = fresh(&self.region);
        while self.recorder.elapsed_ns() < self.end_ns {
            let planned = self.workload.plan(&self.shared, &mut state, &mut self.rng, process);
            let call = self.workload.invoke(&self.client, &planned, &mut state);
            let completion = perform(
                &self.recorder,
                process,
                planned.f,
                planned.value.clone(),
                planned.mutation,
                call,
            )
            .await;
            self.done.fetch_add(1, Ordering::Relaxed);
            if matches!(completion, Completion::Info(_)) {
                // Its operation may still be in flight: this process never invokes again.
                process += self.concurrency;
                state = fresh(&self.region);
            }
            let pause = self.pause_mean.mul_f64(self.rng.gen_range(0.0..2.0));
            tokio::time::sleep(pause).await;
        }
    }
}

/// Starts one worker per client (with the region it talks to, if any), until `end_ns`; together
/// they aim at `options.rate` operations per second.
pub(crate) fn spawn_workers(
    options: &RunOptions,
    clients: Vec<(basalt_client::Client, Option<String>)>,
    recorder: &Recorder,
    shared: &Arc<Shared>,
    end_ns: u64,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let concurrency = clients.len() as u64;
    let pause_mean = Duration::from_secs_f64(concurrency as f64 / options.rate.max(0.1));
    clients
        .into_iter()
        .zip(0u64..)
        .map(|((client, region), w)| {
            let worker = Worker {
                workload: options.workload,
                region,
                client,
                recorder: recorder.clone(),
                shared: shared.clone(),
                first_process: w + 1,
                concurrency,
                rng: StdRng::seed_from_u64(options.seed.wrapping_mul(31).wrapping_add(w)),
                pause_mean,
                end_ns,
                done: done.clone(),
            };
            tokio::spawn(worker.run())
        })
        .collect()
}

pub async fn run(options: RunOptions) -> Result<RunOutcome, RunError> {
    let workload = options.workload;
    if workload == Workload::Regions {
        return Box::pin(crate::regions::run(options, 3)).await;
    }
    let dir = options.store.join(workload.name()).join(format!(
        "{}-seed{}-{}",
        timestamp(),
        options.seed,
        std::process::id()
    ));
    create_dir(&dir)?;
    let data_dir = dir.join("data");
    let cluster = Cluster::start(&options.node_binary, options.nodes, &dir.join("nodes"), &data_dir).await?;
    let cluster = Arc::new(AsyncMutex::new(cluster));
    let recorder = Recorder::new();
    let shared = Arc::new(Shared::default());
    let mut errors: Vec<String> = Vec::new();

    let admin = cluster.lock().await.client()?;
    cluster
        .lock()
        .await
        .wait_for_leader(&admin, Duration::from_secs(30))
        .await?;
    if let Err(reason) = workload.setup(&admin, &recorder, &shared).await {
        cluster.lock().await.stop().await;
        return Err(RunError::Setup {
            workload: workload.name(),
            reason,
        });
    }

    let end_ns = recorder.elapsed_ns() + u64::try_from(options.time.as_nanos()).unwrap_or(u64::MAX);
    let concurrency = options.concurrency.max(1);
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push((cluster.lock().await.client()?, None));
    }
    let workers = spawn_workers(&options, clients, &recorder, &shared, end_ns, &done);
    let active = Arc::new(Mutex::new(None));
    let mut nemesis = Nemesis {
        kinds: options.nemesis.clone(),
        rng: StdRng::seed_from_u64(options.seed),
        cluster: cluster.clone(),
        client: admin.clone(),
        recorder: recorder.clone(),
        active: active.clone(),
        windows: Vec::new(),
        undetected: Vec::new(),
        storage_errors: Vec::new(),
    };
    let progress = options.progress.then(|| {
        let (recorder, done, active) = (recorder.clone(), done.clone(), active.clone());
        let total = options.time.as_secs_f64();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let counts = recorder.counts();
                let fault = active.lock().unwrap_or_else(|p| p.into_inner()).clone();
                eprintln!(
                    "[{:>5.1}s / {total:.0}s] {} ops ({} ok, {} fail, {} unknown) | fault: {}",
                    recorder.elapsed_ns() as f64 / 1e9,
                    done.load(Ordering::Relaxed),
                    counts.get(&EventType::Ok).unwrap_or(&0),
                    counts.get(&EventType::Fail).unwrap_or(&0),
                    counts.get(&EventType::Info).unwrap_or(&0),
                    fault.as_deref().unwrap_or("none"),
                );
            }
        })
    });
    nemesis.run(end_ns).await;
    for w in workers {
        let _ = w.await;
    }
    if let Some(p) = progress {
        p.abort();
    }

    // Heal everything, let the cluster recover, then read the final state.
    recorder.record(NEMESIS, EventType::Info, "heal", json!({}), None);
    if let Err(e) = cluster.lock().await.heal() {
        errors.push(format!("healing: {e}"));
    }
    if let Err(e) = cluster
        .lock()
        .await
        .wait_for_leader(&admin, Duration::from_secs(30))
        .await
    {
        errors.push(format!("after healing: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Err(e) = workload.finish(&admin, &recorder, &shared).await {
        errors.push(e);
    }
    cluster.lock().await.stop().await;

    let events = recorder.snapshot();
    let mut verdicts = vec![workload.check(&events)];
    if options.nemesis.contains(&FaultKind::Storage) {
        let mut storage = Verdict::new("storage-faults");
        for problem in &nemesis.undetected {
            storage.problem(problem.clone());
        }
        let injected = nemesis
            .windows
            .iter()
            .filter(|w| w.label.starts_with("bitflip"))
            .count();
        if injected == 0 {
            if let Some(first) = nemesis.storage_errors.first() {
                storage.problem(format!(
                    "no storage fault could be injected ({} attempts; the first: {first})",
                    nemesis.storage_errors.len()
                ));
            }
        }
        storage.stats = json!({ "injected": injected, "not_injected": nemesis.storage_errors.len() });
        verdicts.push(storage);
    }
    let windows = nemesis.windows.clone();
    finish_run(Finished {
        dir,
        data_dir,
        options: &options,
        nodes: options.nodes,
        seconds: recorder.elapsed_ns() as f64 / 1e9,
        events,
        verdicts,
        errors,
        windows,
    })
}

/// What a finished run hands to [`finish_run`].
pub(crate) struct Finished<'a> {
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub options: &'a RunOptions,
    /// Nodes in all (every region's, for a multi-region run).
    pub nodes: u64,
    pub seconds: f64,
    pub events: Vec<crate::history::Event>,
    pub verdicts: Vec<Verdict>,
    pub errors: Vec<String>,
    pub windows: Vec<crate::nemesis::FaultWindow>,
}

/// Adds the node-log verdict, then writes `history.jsonl`, `results.json` and `report.html`.
pub(crate) fn finish_run(run: Finished<'_>) -> Result<RunOutcome, RunError> {
    let Finished {
        dir,
        data_dir,
        options,
        nodes,
        seconds,
        events,
        mut verdicts,
        errors,
        windows,
    } = run;
    let workload = options.workload;
    verdicts.push(node_log_verdict(&dir.join("nodes")));
    for e in &errors {
        if let Some(v) = verdicts.first_mut() {
            v.undecided(e.clone());
        }
    }
    let valid = verdicts.iter().all(|v| v.validity == Validity::Valid);
    let results = Results {
        workload: workload.name().to_string(),
        seed: options.seed,
        nodes,
        seconds,
        nemesis: options
            .nemesis
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect(),
        valid,
        operations: report::counts(&events),
        latency_ms: report::latency(&events),
        faults: windows,
        verdicts,
        errors,
    };
    write_jsonl(&events, &dir.join("history.jsonl")).map_err(|source| RunError::Store {
        path: dir.join("history.jsonl"),
        source,
    })?;
    let json = serde_json::to_vec_pretty(&results).unwrap_or_default();
    write_file(&dir.join("results.json"), &json)?;
    write_file(&dir.join("report.html"), report::html(&results, &events).as_bytes())?;
    if valid {
        // The data directories are only worth their space when something needs investigating.
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(RunOutcome { dir, results })
}
