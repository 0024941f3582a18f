//! Workloads: what the clients do, and which checker reads the history.
//!
//! Each workload plans an operation from its worker's state (pure but for the random source),
//! then invokes it against the cluster; the runner records the invocation before the call and the
//! completion after it.

mod bank;
mod counter;
mod lease;
mod queue;
pub mod regions;
mod register;
mod stream;
mod txn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use basalt_client::{Client, ClientError};
use rand::rngs::StdRng;
use serde_json::Value;

use crate::checker::Verdict;
use crate::history::{operations, Event, EventType, Process, Recorder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Per-key read, write and compare-and-set; checked for linearizability.
    Register,
    /// Increments and reads of a counter, and of a bounded one.
    Counter,
    /// Transfers between ledger accounts; money conserved, nothing applied twice.
    Bank,
    /// Lease holders writing with fencing tokens; stale fences never land.
    Lease,
    /// Enqueue, receive and ack; nothing acknowledged lost or redelivered after its ack.
    Queue,
    /// Appends to a partitioned stream, read back in order without gaps (alias: set).
    #[value(alias = "set")]
    Stream,
    /// Transfers that move money in KV balances, counters and a ledger together, one transaction
    /// each; checked for conservation in each, agreement of the three, and exactly-once.
    Txn,
    /// Several regions (`--regions`): conflicting KV writes, counter increments and takes of an
    /// escrowed stock in every region under partitions between regions; checked for convergence
    /// and the merge rules.
    Regions,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::Register,
        Workload::Counter,
        Workload::Bank,
        Workload::Lease,
        Workload::Queue,
        Workload::Stream,
        Workload::Txn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Counter => "counter",
            Workload::Bank => "bank",
            Workload::Lease => "lease",
            Workload::Queue => "queue",
            Workload::Stream => "stream",
            Workload::Txn => "txn",
            Workload::Regions => "regions",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    Ok(Value),
    /// It certainly did not happen.
    Fail(String),
    /// It may or may not have happened.
    Info(String),
}

/// Maps a client result to a completion: a refusal did nothing; a timeout after the request may
/// have reached a node is unknown for a mutation, and simply failed for a read.
pub fn complete<T>(result: Result<T, ClientError>, mutation: bool, ok: impl FnOnce(T) -> Value) -> Completion {
    match result {
        Ok(v) => Completion::Ok(ok(v)),
        Err(e @ ClientError::Rejected { .. }) => Completion::Fail(e.to_string()),
        Err(
            e @ ClientError::Unavailable {
                outcome_unknown: false, ..
            },
        ) => Completion::Fail(e.to_string()),
        Err(e) if !mutation => Completion::Fail(e.to_string()),
        Err(e) => Completion::Info(e.to_string()),
    }
}

/// What a worker planned: the recorded function and value, and what the call needs besides.
pub struct Planned {
    pub f: &'static str,
    pub value: Value,
    pub mutation: bool,
    pub(crate) detail: Detail,
}

pub(crate) enum Detail {
    None,
    Revision(Option<u64>),
    Receipt(Vec<u8>),
}

/// Shared by every worker of a run.
#[derive(Default)]
pub struct Shared {
    unique: AtomicU64,
    started: AtomicU64,
}

impl Shared {
    pub(crate) fn unique(&self) -> u64 {
        self.unique.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn unique_count(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    pub(crate) fn next_op_number(&self) -> u64 {
        self.started.fetch_add(1, Ordering::Relaxed)
    }
}

/// One worker's memory between operations.
#[derive(Default)]
pub struct WorkerState {
    /// Register: the last value and revision seen per key.
    pub(crate) last_seen: HashMap<String, (Option<i64>, u64)>,
    /// Lease: the token held.
    pub(crate) token: Option<u64>,
    /// Queue: deliveries to acknowledge.
    pub(crate) to_ack: VecDeque<(String, Vec<u8>, u32)>,
    /// Stream: the highest offset seen per partition.
    pub(crate) high_watermarks: BTreeMap<u32, u64>,
    /// Regions: the region this worker's client talks to.
    pub(crate) region: Option<String>,
}

/// How long one operation may take before it is recorded as unknown (or failed, for a read).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `call` as one recorded operation of `process`.
pub async fn perform<F>(recorder: &Recorder, process: u64, f: &str, value: Value, mutation: bool, call: F) -> Completion
where
    F: Future<Output = Completion>,
{
    recorder.record(Process::Client(process), EventType::Invoke, f, value.clone(), None);
    let completion = match tokio::time::timeout(OPERATION_TIMEOUT, call).await {
        Ok(c) => c,
        Err(_) if mutation => Completion::Info("timed out".into()),
        Err(_) => Completion::Fail("timed out".into()),
    };
    let (kind, result, error) = match &completion {
        Completion::Ok(v) => (EventType::Ok, v.clone(), None),
        Completion::Fail(e) => (EventType::Fail, value, Some(e.clone())),
        Completion::Info(e) => (EventType::Info, value, Some(e.clone())),
    };
    recorder.record(Process::Client(process), kind, f, result, error);
    completion
}

/// The process that runs setup and the final reads.
pub const SETUP_PROCESS: u64 = 0;
pub const FINAL_PROCESS: u64 = 1_000_000;

/// Retries `attempt` until it completes `ok` or `within` runs out.
pub(crate) async fn until_ok<F, Fut>(within: Duration, mut attempt: F) -> Result<Value, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Completion>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("not tried");
    while tokio::time::Instant::now() < deadline {
        match attempt().await {
            Completion::Ok(v) => return Ok(v),
            Completion::Fail(e) | Completion::Info(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

impl Workload {
    /// Creates what the workload needs, before any fault.
    pub async fn setup(self, client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
        match self {
            Workload::Register | Workload::Counter | Workload::Lease | Workload::Regions => Ok(()),
            Workload::Bank => bank::setup(client, recorder, shared).await,
            Workload::Queue => queue::setup(client).await,
            Workload::Stream => stream::setup(client).await,
            Workload::Txn => txn::setup(client, recorder, shared).await,
        }
    }

    pub fn plan(self, shared: &Shared, state: &mut WorkerState, rng: &mut StdRng, process: u64) -> Planned {
        match self {
            Workload::Register => register::plan(shared, state, rng),
            Workload::Counter => counter::plan(rng),
            Workload::Bank => bank::plan(shared, rng),
            Workload::Lease => lease::plan(shared, state, rng, process),
            Workload::Queue => queue::plan(shared, state, rng),
            Workload::Stream => stream::plan(shared, state, rng),
            Workload::Txn => txn::plan(shared, rng),
            Workload::Regions => regions::plan(shared, state, rng),
        }
    }

    pub async fn invoke(self, client: &Client, planned: &Planned, state: &mut WorkerState) -> Completion {
        match self {
            Workload::Register => register::invoke(client, planned, state).await,
            Workload::Counter => counter::invoke(client, planned).await,
            Workload::Bank => bank::invoke(client, planned).await,
            Workload::Lease => lease::invoke(client, planned, state).await,
            Workload::Queue => queue::invoke(client, planned, state).await,
            Workload::Stream => stream::invoke(client, planned, state).await,
            Workload::Txn => txn::invoke(client, planned).await,
            Workload::Regions => regions::invoke(client, planned).await,
        }
    }

    /// The reads after the faults are healed, recorded as operations of [`FINAL_PROCESS`].
    pub async fn finish(self, client: &Client, recorder: &Recorder, shared: &Shared) -> Result<(), String> {
        match self {
            Workload::Register => Ok(()),
            Workload::Counter => counter::finish(client, recorder).await,
            Workload::Bank => bank::finish(client, recorder, shared).await,
            Workload::Lease => lease::finish(client, recorder).await,
            Workload::Queue => queue::finish(client, recorder).await,
            Workload::Stream => stream::finish(client, recorder).await,
            Workload::Txn => txn::finish(client, recorder, shared).await,
            // Every region reads at the end; `crate::regions::run` does it with each region's client.
            Workload::Regions => Err("the regions workload runs with --regions".into()),
        }
    }

    pub fn check(self, events: &[Event]) -> Verdict {
        let ops = operations(events);
        match self {
            Workload::Register => crate::checker::register::check(&ops),
            Workload::Counter => crate::checker::counter::check(&ops),
            Workload::Bank => crate::checker::bank::check(&ops, bank::OPERATOR),
            Workload::Lease => crate::checker::lease::check(&ops),
            Workload::Queue => crate::checker::queue::check(&ops),
            Workload::Stream => crate::checker::stream::check(&ops),
            Workload::Txn => crate::checker::txn::check(&ops, bank::OPERATOR),
            Workload::Regions => crate::checker::regions::check(&ops),
        }
    }
}
