//! The crash suite: the real log code over the simulated disk (`sim_file_system`). For random
//! sequences of appends (waited for or pipelined), truncations, purges and vote saves, the process
//! dies at every mutating call in turn (every write, fsync, create, remove, rename, directory
//! fsync), sometimes after an fsync that failed; the disk then keeps what a power loss could
//! leave, and recovery must
//! - start (never refuse a state a crash can produce),
//! - hold every acknowledged record that nothing removed since, and only records that were
//!   written (an interrupted truncation may leave the records it was cutting),
//! - keep the purge point and the vote that were saved,
//! - survive a second crash during recovery itself, and take appends afterwards.
//!
//! `BASALT_LOG_CRASH_SEEDS` sets how many random sequences run (each at every crash point);
//! `scripts/test` runs the default, a longer run is `BASALT_LOG_CRASH_SEEDS=2000 cargo nextest
//! run -p basalt-storage crash_suite --no-capture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use super::sim_file_system::{SimFileSystem, SimRng};
use super::*;

const DIR: &str = "/sim/log";
const SEEDS_DEFAULT: u64 = 40;

#[derive(Clone, Debug)]
enum Step {
    /// Records of these payload lengths; `wait`: block until the append is acknowledged.
    Append {
        lens: Vec<usize>,
        wait: bool,
    },
    /// Keep all but the last `back` records.
    Truncate {
        back: u64,
    },
    /// Purge the first `forward + 1` records.
    Purge {
        forward: u64,
    },
    SaveVote(u8),
}

struct Plan {
    options: LogOptions,
    steps: Vec<Step>,
    /// The `n`-th file sync fails (fsyncgate), if set.
    fail_sync_at: Option<u64>,
}

fn plan(seed: u64) -> Plan {
    let mut rng = SimRng::new(seed);
    let options = LogOptions {
        segment_bytes_max: format::SEGMENT_HEADER_AREA_BYTES + 256 + rng.below(2048),
        segment_entries_max: 2 + rng.below(10),
    };
    let steps = (0..4 + rng.below(24))
        .map(|_| match rng.below(10) {
            0..=5 => Step::Append {
                lens: (0..1 + rng.below(4)).map(|_| rng.below(400) as usize).collect(),
                wait: !rng.chance(3),
            },
            6 | 7 => Step::Truncate { back: rng.below(5) },
            8 => Step::Purge { forward: rng.below(6) },
            _ => Step::SaveVote(rng.below(256) as u8),
        })
        .collect();
    let fail_sync_at = rng.chance(4).then(|| 1 + rng.below(20));
    Plan {
        options,
        steps,
        fail_sync_at,
    }
}

fn payload(rng: &mut SimRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// What the process did and was told, for the check after the crash.
#[derive(Default)]
struct Model {
    /// The records as the process sees them: index -> (payload, batch).
    records: BTreeMap<u64, (Vec<u8>, usize)>,
    /// Records an interrupted or failed truncation was cutting: any of them may survive.
    maybe_kept: BTreeMap<u64, Vec<Vec<u8>>>,
    next: u64,
    /// The purge point of the last purge that returned, and of one that was interrupted.
    purged: Option<u64>,
    purging: Option<u64>,
    vote: Option<u8>,
    /// Votes whose save was interrupted or failed: any of them may be the one on disk.
    vote_saving: Vec<u8>,
    batches: usize,
}

/// Runs `plan` until the process dies (at `crash_at`, after a failed fsync, or at the end).
/// Returns the disk, the model, and the batches acknowledged.
fn drive(seed: u64, plan: &Plan, crash_at: Option<u64>) -> (SimFileSystem, Model, BTreeSet<usize>) {
    let disk = SimFileSystem::default();
    if let Some(at) = crash_at {
        disk.crash_after(at);
    }
    if let Some(nth) = plan.fail_sync_at {
        disk.fail_sync_at(nth);
    }
    let acked = std::sync::Arc::new(Mutex::new(BTreeSet::new()));
    let mut model = Model {
        next: 1,
        ..Model::default()
    };
    let mut rng = SimRng::new(seed ^ 0x5EED);
    let Ok(mut log) = SegmentedLog::open_on(std::sync::Arc::new(disk.clone()), Path::new(DIR), plan.options.clone())
    else {
        return (disk, model, BTreeSet::new());
    };
    for step in &plan.steps {
        let outcome = match step {
            Step::Append { lens, wait } => {
                let batch = model.batches;
                model.batches += 1;
                let records: Vec<(u64, Vec<u8>)> = lens
                    .iter()
                    .enumerate()
                    .map(|(k, len)| (model.next + k as u64, payload(&mut rng, *len)))
                    .collect();
                for (index, bytes) in &records {
                    model.records.insert(*index, (bytes.clone(), batch));
                }
                model.next += records.len() as u64;
                let (tx, rx) = mpsc::channel();
                let acked = acked.clone();
                let result = log.append(
                    records.iter().map(|(i, p)| (*i, p.as_slice())),
                    Some(Box::new(move |r| {
                        if r.is_ok() {
                            acked.lock().expect("acked").insert(batch);
                        }
                        let _ = tx.send(r.is_ok());
                    })),
                );
                match result {
                    Ok(()) if *wait => match rx.recv() {
                        Ok(true) => Ok(()),
                        _ => Err("the append was not acknowledged".to_string()),
                    },
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Step::Truncate { back } => {
                let Some((&first, _)) = model.records.first_key_value() else {
                    continue;
                };
                let keep = (model.next - 1).saturating_sub(*back).max(first);
                let cut: Vec<u64> = model.records.range(keep + 1..).map(|(i, _)| *i).collect();
                for index in cut {
                    let (bytes, _) = model.records.remove(&index).expect("listed");
                    model.maybe_kept.entry(index).or_default().push(bytes);
                }
                model.next = keep + 1;
                let result = log.truncate_after(Some(keep)).map_err(|e| e.to_string());
                if result.is_ok() {
                    model.maybe_kept.retain(|i, _| *i <= keep);
                }
                result
            }
            Step::Purge { forward } => {
                let Some((&first, _)) = model.records.first_key_value() else {
                    continue;
                };
                let upto = (first + forward).min(model.next - 1);
                let result = log.purge_upto(upto).map_err(|e| e.to_string());
                if result.is_ok() {
                    model.purged = Some(upto);
                    model.records.retain(|i, _| *i > upto);
                } else {
                    model.purging = model.purging.max(Some(upto));
                }
                result
            }
            Step::SaveVote(vote) => {
                let result = log.save_meta("vote", &[*vote]).map_err(|e| e.to_string());
                if result.is_ok() {
                    model.vote = Some(*vote);
                    model.vote_saving.clear();
                } else {
                    model.vote_saving.push(*vote);
                }
                result
            }
        };
        if let Err(e) = outcome {
            // Only a crash or an injected fsync failure may fail a call.
            assert!(
                disk.has_crashed() || plan.fail_sync_at.is_some_and(|n| disk.syncs() >= n),
                "seed {seed} crash_at {crash_at:?}: {step:?} failed on a healthy disk: {e}"
            );
            if disk.has_crashed() {
                break;
            }
            // After a failed fsync the process goes on calling: whatever it does, nothing more
            // may be acknowledged that the disk does not hold.
        }
    }
    // Power loss now (if the process still runs): nothing more reaches the disk.
    disk.kill();
    drop(log);
    let acked = acked.lock().expect("acked").clone();
    (disk, model, acked)
}

/// Recovery of `disk` against `model`: Ok, or what is wrong.
fn check_recovery(
    disk: SimFileSystem,
    plan: &Plan,
    model: &Model,
    acked: &BTreeSet<usize>,
    rng: &mut SimRng,
) -> Result<(), String> {
    let fs: std::sync::Arc<dyn LogFileSystem> = std::sync::Arc::new(disk.clone());
    let log = SegmentedLog::open_on(fs, Path::new(DIR), plan.options.clone())
        .map_err(|e| format!("recovery refused to start: {e}"))?;
    let got: BTreeMap<u64, Vec<u8>> = log
        .read_range(0, u64::MAX)
        .map_err(|e| format!("read after recovery: {e}"))?
        .into_iter()
        .collect();
    check_acknowledged(&got, model, acked)?;
    if log.purged_upto() < model.purged {
        return Err(format!(
            "purge point {:?} went back to {:?}",
            model.purged,
            log.purged_upto()
        ));
    }
    let vote = log.meta("vote").map(|v| v[0]);
    if vote != model.vote && !vote.is_some_and(|v| model.vote_saving.contains(&v)) {
        return Err(format!(
            "vote {vote:?}, saved {:?}, being saved {:?}",
            model.vote, model.vote_saving
        ));
    }
    // The recovered log takes an append, and keeps it, with everything acknowledged before,
    // through one more power loss.
    let mut log = log;
    let next = log.last_index().or(log.purged_upto()).map_or(1, |i| i + 1);
    let (tx, rx) = mpsc::channel();
    log.append(
        [(next, &b"after recovery"[..])],
        Some(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        })),
    )
    .map_err(|e| format!("append after recovery: {e}"))?;
    if rx.recv() != Ok(true) {
        return Err("append after recovery not acknowledged".into());
    }
    disk.kill();
    drop(log);
    let after = disk.crash(rng);
    let log = SegmentedLog::open_on(std::sync::Arc::new(after), Path::new(DIR), plan.options.clone())
        .map_err(|e| format!("a power loss after recovery and one append, then: {e}"))?;
    let mut got_again: BTreeMap<u64, Vec<u8>> = log
        .read_range(0, u64::MAX)
        .map_err(|e| format!("read after the second power loss: {e}"))?
        .into_iter()
        .collect();
    if got_again.get(&next).map(Vec::as_slice) != Some(&b"after recovery"[..]) {
        return Err(format!(
            "the append acknowledged after recovery is gone after a power loss ({:?}..{:?})",
            got_again.keys().next(),
            got_again.keys().last()
        ));
    }
    got_again.remove(&next);
    check_acknowledged(&got_again, model, acked).map_err(|e| format!("after the second power loss: {e}"))
}

/// Every recovered record was written at its index, and every acknowledged record nothing
/// removed since is there.
fn check_acknowledged(got: &BTreeMap<u64, Vec<u8>>, model: &Model, acked: &BTreeSet<usize>) -> Result<(), String> {
    for (index, bytes) in got {
        let written = model.records.get(index).map(|(b, _)| b) == Some(bytes);
        let cut_late = model.maybe_kept.get(index).is_some_and(|kept| kept.contains(bytes));
        if !written && !cut_late {
            return Err(format!("record {index} after recovery was never written there"));
        }
    }
    let floor = model.purged.max(model.purging).unwrap_or(0);
    for (index, (bytes, batch)) in model.records.range(floor + 1..) {
        if acked.contains(batch) && got.get(index) != Some(bytes) {
            return Err(format!(
                "acknowledged record {index} (batch {batch}) lost; recovered {:?}..{:?}",
                got.keys().next(),
                got.keys().last()
            ));
        }
    }
    Ok(())
}

/// One case: `seed`'s plan, the process dying at `crash_at`.
fn run_case(seed: u64, crash_at: Option<u64>) {
    let plan = plan(seed);
    let (disk, model, acked) = drive(seed, &plan, crash_at);
    let mut rng = SimRng::new(seed.wrapping_mul(31).wrapping_add(crash_at.unwrap_or(0)));
    // Mostly a power loss; sometimes only the process died, and the new one reads what the page
    // cache still holds (after a failed fsync: writes that never reached the disk).
    let process_only = rng.chance(3);
    let mut image = if process_only {
        disk.restart_process();
        disk.clone()
    } else {
        disk.crash(&mut rng)
    };
    let mut crashed_in_recovery = false;
    if rng.chance(2) {
        // A power loss while recovery runs (cutting a torn tail, removing a segment).
        image.crash_after(1 + rng.below(6));
        let _ = SegmentedLog::open_on(std::sync::Arc::new(image.clone()), Path::new(DIR), plan.options.clone());
        crashed_in_recovery = image.has_crashed();
        image.kill();
        image = image.crash(&mut rng);
    }
    if let Err(problem) = check_recovery(image, &plan, &model, &acked, &mut rng) {
        let trace = disk.trace();
        panic!(
            "seed {seed}, crash at call {crash_at:?} of {} (process only: {process_only}, crashed again in \
             recovery: {crashed_in_recovery}), fsync failure at {:?}: {problem}\nplan: {:?}\nlast calls:\n  {}",
            trace.len(),
            plan.fail_sync_at,
            plan.steps,
            trace[trace.len().saturating_sub(25)..].join("\n  ")
        );
    }
}

#[test]
fn crash_suite_recovers_exactly_what_was_acknowledged_at_every_crash_point() {
    let seeds = std::env::var("BASALT_LOG_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    let first_seed = std::env::var("BASALT_LOG_CRASH_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let mut cases = 0u64;
    for seed in first_seed..first_seed + seeds {
        // A run to the end tells how many mutating calls there are to crash at. The flusher
        // thread makes the count vary a little between runs; a few more points cover that.
        let plan_len = {
            let plan = plan(seed);
            let (disk, _, _) = drive(seed, &plan, None);
            disk.mutations()
        };
        run_case(seed, None);
        cases += 1;
        for at in 1..=plan_len + 3 {
            run_case(seed, Some(at));
            cases += 1;
        }
    }
    eprintln!("log crash suite: {seeds} sequences, {cases} crash cases, all recovered");
}

/// After a failed fsync nothing more is acknowledged, even though later fsyncs succeed (the
/// kernel dropped the failed pages), and the log refuses every call until a restart.
#[test]
fn a_failed_fsync_stops_the_log_for_good() {
    let disk = SimFileSystem::default();
    let fs: std::sync::Arc<dyn LogFileSystem> = std::sync::Arc::new(disk.clone());
    let options = LogOptions::default();
    let mut log = SegmentedLog::open_on(fs.clone(), Path::new(DIR), options.clone()).expect("open");
    let (tx, rx) = mpsc::channel();
    let ack = |tx: &mpsc::Sender<(u64, bool)>, index: u64| -> Option<OnDurable> {
        let tx = tx.clone();
        Some(Box::new(move |r| {
            let _ = tx.send((index, r.is_ok()));
        }))
    };
    log.append([(1, &b"one"[..])], ack(&tx, 1)).expect("append");
    assert_eq!(rx.recv().expect("ack"), (1, true));
    // The flusher's idle mark sync may still run: wait until the syncs settle.
    let mut settled = disk.syncs();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        if disk.syncs() == settled {
            break;
        }
        settled = disk.syncs();
    }
    disk.fail_sync_at(disk.syncs() + 1);
    log.append([(2, &b"two"[..])], ack(&tx, 2))
        .expect("append before the failure is seen");
    log.append([(3, &b"three"[..])], ack(&tx, 3))
        .or_else(|e| match e {
            // The failure may already be recorded: then the append is refused outright.
            LogError::Failed(_) => {
                tx.send((3, false)).expect("send");
                Ok(())
            }
            other => Err(other),
        })
        .expect("append or refusal");
    let mut outcomes = vec![rx.recv().expect("ack"), rx.recv().expect("ack")];
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        vec![(2, false), (3, false)],
        "nothing acknowledged after the failure"
    );
    assert!(matches!(
        log.append([(4, &b"four"[..])], None),
        Err(LogError::Failed(_))
    ));
    assert!(matches!(log.truncate_after(Some(1)), Err(LogError::Failed(_))));
    assert!(matches!(log.purge_upto(1), Err(LogError::Failed(_))));
    assert!(matches!(log.save_meta("vote", b"v"), Err(LogError::Failed(_))));
    assert!(matches!(log.sync(), Err(LogError::Failed(_))));
    assert!(
        disk.syncs() <= settled + 1,
        "no fsync after the failed one ({} syncs, failure at {})",
        disk.syncs(),
        settled + 1
    );
    drop(log);
    // A restart recovers from the disk: the acknowledged record is there.
    let image = disk.crash(&mut SimRng::new(7));
    let log = SegmentedLog::open_on(std::sync::Arc::new(image), Path::new(DIR), options).expect("restart");
    assert_eq!(log.read_range(1, 2).expect("read"), vec![(1, b"one".to_vec())]);
}

/// A read the disk fails is an error naming the file (it used to go through a memory map, where
/// it is a SIGBUS that kills the process).
#[test]
fn a_failed_read_is_an_error_naming_the_file() {
    let disk = SimFileSystem::default();
    let mut log =
        SegmentedLog::open_on(std::sync::Arc::new(disk.clone()), Path::new(DIR), LogOptions::default()).expect("open");
    log.append([(1, &b"one"[..])], None).expect("append");
    disk.fail_reads();
    match log.read_range(1, 2) {
        Err(LogError::Io { op, path, .. }) => {
            assert_eq!(op, "read");
            assert_eq!(path, Path::new(DIR).join(format!("{:020}.log", 1)));
        }
        other => panic!("expected an I/O error naming the segment, got {other:?}"),
    }
    drop(log);
    match SegmentedLog::open_on(std::sync::Arc::new(disk), Path::new(DIR), LogOptions::default()) {
        Err(LogError::Io {
            op: "read meta" | "read segment",
            ..
        }) => {}
        other => panic!("expected an I/O error at open, got {:?}", other.err()),
    }
}
