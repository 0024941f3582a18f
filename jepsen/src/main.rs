//! `basalt-jepsen`: run workloads against a real local cluster under faults, and check them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use basalt_cli::parse_duration;
use basalt_jepsen::checker::Validity;
use basalt_jepsen::cluster::NODE_ENV;
use basalt_jepsen::nemesis::FaultKind;
use basalt_jepsen::run::{run, RunOptions};
use basalt_jepsen::workload::Workload;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "basalt-jepsen",
    about = "Partition-test a local Basalt cluster and check the history"
)]
struct Args {
    /// Workloads to run, one after another (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "register")]
    workload: Vec<Workload>,
    /// Faults to inject (comma-separated), or none.
    #[arg(long, value_delimiter = ',', default_value = "partition,kill,pause")]
    nemesis: Vec<NemesisArg>,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// How long clients run, e.g. 60s or 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    time: Duration,
    /// Operations per second over all clients.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Concurrent client processes (default: twice the nodes).
    #[arg(long)]
    concurrency: Option<u64>,
    /// Seed of the fault schedule and the operation mix (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where runs are written.
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// Regions for the `regions` workload (2..=5), each of --nodes nodes.
    #[arg(long, default_value_t = 3)]
    regions: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NemesisArg {
    None,
    Partition,
    Latency,
    Kill,
    Pause,
    Storage,
    Clock,
}

fn main() -> ExitCode {
    if std::env::var_os(NODE_ENV).is_some() {
        return basalt_cli::main();
    }
    let args = Args::parse();
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!("--nodes must be in 1..=9");
        return ExitCode::from(3);
    }
    if !(2..=basalt_jepsen::regions::NAMES.len()).contains(&args.regions) {
        eprintln!("--regions must be in 2..={}", basalt_jepsen::regions::NAMES.len());
        return ExitCode::from(3);
    }
    let nemesis: Vec<FaultKind> = args
        .nemesis
        .iter()
        .filter_map(|n| match n {
            NemesisArg::None => None,
            NemesisArg::Partition => Some(FaultKind::Partition),
            NemesisArg::Latency => Some(FaultKind::Latency),
            NemesisArg::Kill => Some(FaultKind::Kill),
            NemesisArg::Pause => Some(FaultKind::Pause),
            NemesisArg::Storage => Some(FaultKind::Storage),
            NemesisArg::Clock => Some(FaultKind::Clock),
        })
        .collect();
    let node_binary = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("locating this executable: {e}");
            return ExitCode::from(3);
        }
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let mut worst = 0u8;
    for workload in args.workload {
        let options = RunOptions {
            workload,
            nemesis: nemesis.clone(),
            nodes: args.nodes,
            time: args.time,
            rate: args.rate,
            concurrency: args.concurrency.unwrap_or(2 * args.nodes),
            seed,
            store: args.store.clone(),
            node_binary: node_binary.clone(),
            progress: true,
        };
        eprintln!(
            "basalt-jepsen: {} on {} nodes for {:?}, nemesis {:?}, seed {seed}",
            workload.name(),
            args.nodes,
            args.time,
            nemesis
        );
        let outcome = if workload == Workload::Regions {
            runtime.block_on(basalt_jepsen::regions::run(options, args.regions))
        } else {
            runtime.block_on(run(options))
        };
        match outcome {
            Ok(outcome) => {
                let r = &outcome.results;
                for v in &r.verdicts {
                    println!("  {:<22} {:?}", v.checker, v.validity);
                    for p in &v.problems {
                        println!("    - {p}");
                    }
                    if let Some(why) = &v.undecided {
                        println!("    ? {why}");
                    }
                }
                println!(
                    "{}: {} ({} ok, {} failed, {} unknown; {} faults). Report: {}",
                    workload.name(),
                    if r.valid { "VALID" } else { "NOT VALID" },
                    r.operations.ok,
                    r.operations.fail,
                    r.operations.info,
                    r.faults.len(),
                    outcome.dir.join("report.html").display()
                );
                // 1: a violation; 2: undecided (a search budget or a final read ran out).
                if r.verdicts.iter().any(|v| v.validity == Validity::Invalid) {
                    worst = worst.max(1);
                } else if !r.valid {
                    worst = worst.max(2);
                }
            }
            Err(e) => {
                eprintln!("{}: the run failed: {e}", workload.name());
                worst = worst.max(3);
            }
        }
    }
    ExitCode::from(worst)
}
