//! The short partition-test runs of the README's test command: each workload for about 20 s on a
//! real three-node cluster, with fixed seeds, under partitions, kills and pauses (and latency,
//! storage or clock faults for some). A violation fails the test and names the report to read.

use std::path::PathBuf;
use std::time::Duration;

use basalt_jepsen::nemesis::FaultKind;
use basalt_jepsen::run::{run, RunOptions};
use basalt_jepsen::workload::Workload;

fn short_run(workload: Workload, seed: u64, extra: &[FaultKind]) {
    let mut nemesis = vec![FaultKind::Partition, FaultKind::Kill, FaultKind::Pause];
    nemesis.extend_from_slice(extra);
    let options = RunOptions {
        workload,
        nemesis,
        nodes: 3,
        time: Duration::from_secs(20),
        rate: 80.0,
        concurrency: 5,
        seed,
        store: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jepsen-store"),
        node_binary: PathBuf::from(env!("CARGO_BIN_EXE_basalt-jepsen")),
        progress: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime.block_on(run(options)).expect("the run completes");
    let results = &outcome.results;
    let summary = serde_json::to_string_pretty(&results.verdicts).unwrap_or_default();
    assert!(
        results.valid,
        "{} is not valid; report {}:\n{summary}\nerrors: {:?}",
        workload.name(),
        outcome.dir.join("report.html").display(),
        results.errors
    );
    assert!(
        results.operations.ok > 100,
        "too few operations succeeded to mean anything: {:?}",
        results.operations.ok
    );
    assert!(!results.faults.is_empty(), "no fault was injected");
}

#[test]
fn register_is_linearizable_under_faults() {
    short_run(Workload::Register, 7, &[FaultKind::Clock]);
}

#[test]
fn counter_stays_within_its_bounds_under_faults() {
    short_run(Workload::Counter, 11, &[FaultKind::Latency]);
}

#[test]
fn bank_conserves_money_under_faults() {
    short_run(Workload::Bank, 13, &[]);
}

#[test]
fn lease_fences_stale_holders_under_faults() {
    short_run(Workload::Lease, 17, &[FaultKind::Clock]);
}

#[test]
fn queue_loses_nothing_acknowledged_under_faults() {
    short_run(Workload::Queue, 19, &[FaultKind::Storage]);
}

#[test]
fn txn_moves_all_three_or_none_under_faults() {
    short_run(Workload::Txn, 31, &[]);
}

#[test]
fn stream_reads_back_every_append_under_faults() {
    short_run(Workload::Stream, 23, &[FaultKind::Storage]);
}

#[test]
fn regions_converge_under_partitions_and_leader_kills() {
    // Three regions of three nodes; partitions between regions, leader kills, clock jumps of a
    // node or a whole region (pauses are not used across regions).
    short_run(Workload::Regions, 29, &[FaultKind::Clock]);
}
