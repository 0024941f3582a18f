//! `basalt bench`: closed-loop load generators reporting throughput and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_client::{Client, ClientOptions};
use clap::Subcommand;
use hdrhistogram::Histogram;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// KV puts: each client writes in a loop, one request in flight per client.
    Kv {
        #[arg(long, default_value_t = 64)]
        clients: u32,
        #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Distinct keys written (spread over the clients).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Client tasks sharing one connection set.
        #[arg(long, default_value_t = 16)]
        clients_per_connection: u32,
    },
}

pub struct BenchReport {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn run(command: BenchCommand, endpoints: Vec<String>) -> Result<(), String> {
    match command {
        BenchCommand::Kv {
            clients,
            duration,
            value_size,
            keys,
            clients_per_connection,
        } => {
            if clients == 0 || keys == 0 || clients_per_connection == 0 {
                return Err("--clients, --keys and --clients-per-connection must be positive".into());
            }
            println!(
                "bench kv: {clients} clients, {value_size}-byte values, {keys} keys, {:?}",
                duration
            );
            let report = bench_kv(
                &endpoints,
                clients,
                duration,
                value_size,
                keys,
                clients_per_connection,
                true,
            )
            .await?;
            println!(
                "throughput {:.0} puts/s  ops {}  errors {}  latency p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
                report.throughput(),
                report.ops,
                report.errors,
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.percentile_ms(0.999),
                report.histogram.max() as f64 / 1000.0
            );
            Ok(())
        }
    }
}

pub async fn bench_kv(
    endpoints: &[String],
    clients: u32,
    duration: Duration,
    value_size: usize,
    keys: u64,
    clients_per_connection: u32,
    progress: bool,
) -> Result<BenchReport, String> {
    let connections = clients.div_ceil(clients_per_connection);
    let mut pool = Vec::new();
    for _ in 0..connections {
        pool.push(
            Client::connect_with(endpoints, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let value = vec![b'x'; value_size];
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = pool[(c / clients_per_connection) as usize].clone();
        let (ops, errors, value) = (ops.clone(), errors.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
            let kv = client.kv();
            let mut i = u64::from(c);
            while Instant::now() < deadline {
                let key = format!("bench/{:08}", i % keys);
                i += u64::from(clients);
                let began = Instant::now();
                match kv.put(&key, &value).await {
                    Ok(_) => {
                        let _ = histogram.record(began.elapsed().as_micros() as u64);
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }
    if progress {
        let ops = ops.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = ops.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>4.0}s  {:>9} ops  {:>7} ops/s  {} errors",
                    start.elapsed().as_secs_f64(),
                    now,
                    now - last,
                    errors.load(Ordering::Relaxed)
                );
                last = now;
            }
        });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    for task in tasks {
        let h = task.await.map_err(|e| e.to_string())?;
        histogram.add(h).map_err(|e| e.to_string())?;
    }
    Ok(BenchReport {
        ops: ops.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        histogram,
    })
}
