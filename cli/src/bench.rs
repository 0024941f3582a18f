//! `basalt bench`: closed-loop load generators reporting throughput and latency percentiles.
//!
//! Every generator runs the same loop ([`closed_loop`]): each client task keeps one request in
//! flight; a request may carry a batch of items (counter changes, rate checks, transfers), and
//! throughput is reported in items per second, latency per request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_client::ledger::{Account, Transfer};
use basalt_client::{Client, ClientError, ClientOptions, CounterOp, RateCheck, RateLimit};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Concurrent client tasks, one request in flight each.
    #[arg(long)]
    clients: Option<u32>,
    #[arg(long, default_value = "10s", value_parser = crate::commands::parse_duration)]
    duration: Duration,
    /// Client tasks sharing one connection set.
    #[arg(long, default_value_t = 16)]
    clients_per_connection: u32,
    /// Send every KV write in its own RPC instead of coalescing the concurrent writes of the
    /// tasks sharing a connection set into batches.
    #[arg(long)]
    no_coalesce: bool,
    /// With coalescing: batches on their way at once per connection set.
    #[arg(long, default_value_t = ClientOptions::default().write_batches_in_flight)]
    batches_in_flight: usize,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// KV puts: each client task puts one value and waits for its answer; the SDK coalesces the
    /// concurrent puts of tasks sharing a connection set into batches (`--no-coalesce`: not).
    Kv {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Distinct keys written (spread over the clients).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
    },
    /// Counter increments, `--batch` per request.
    Counter {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
    },
    /// Sliding-window rate-limit decisions (100 per second per key), `--batch` per request.
    Ratelimit {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
    },
    /// Stream produce of `--batch` records of `--record-size` bytes per request, keyed across the
    /// topic's partitions.
    Stream {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value_t = 100)]
        record_size: usize,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
    },
    /// Ledger transfers between random accounts, `--batch` per request.
    Ledger {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
    },
}

pub struct BenchReport {
    pub requests: u64,
    pub items: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl BenchReport {
    pub fn items_per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    fn print(&self, unit: &str) {
        crate::outln!(
            "throughput {:.0} {unit}/s  requests {}  errors {}  request latency p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            self.items_per_second(),
            self.requests,
            self.errors,
            self.percentile_ms(0.5),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.histogram.max() as f64 / 1000.0
        );
    }
}

fn positive(values: &[(&str, u64)]) -> Result<(), String> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("--{name} must be positive")),
        None => Ok(()),
    }
}

/// The cluster a benchmark loads: its endpoints and how its clients connect (token, TLS).
pub struct BenchCluster {
    pub endpoints: Vec<String>,
    pub options: ClientOptions,
}

impl BenchCluster {
    fn options(&self) -> ClientOptions {
        self.options.clone()
    }
}

pub async fn run(command: BenchCommand, cluster: BenchCluster) -> Result<(), String> {
    match command {
        BenchCommand::Kv { load, value_size, keys } => {
            positive(&[("keys", keys)])?;
            let clients = load.clients.unwrap_or(64);
            crate::outln!(
                "bench kv: {clients} clients, {value_size}-byte values, {keys} keys, {:?}",
                load.duration
            );
            let value = Arc::new(vec![b'x'; value_size]);
            let report = closed_loop(&cluster, &load, 64, move |client, c, i| {
                let value = value.clone();
                async move {
                    let key = format!("bench/{:08}", (u64::from(c) + i * u64::from(clients)) % keys);
                    client.kv().put(&key, value.as_slice()).await.map(|_| 1)
                }
            })
            .await?;
            report.print("puts");
        }
        BenchCommand::Counter { load, batch, keys } => {
            positive(&[("batch", batch.into()), ("keys", keys)])?;
            crate::outln!(
                "bench counter: batches of {batch} increments over {keys} keys, {:?}",
                load.duration
            );
            let report = closed_loop(&cluster, &load, 8, move |client, c, i| async move {
                let ops = (0..u64::from(batch))
                    .map(|j| CounterOp::incr(format!("bench/c/{}", spread(c, i, j) % keys), 1))
                    .collect();
                client.counters().apply(ops).await.map(|o| o.len() as u64)
            })
            .await?;
            report.print("increments");
        }
        BenchCommand::Ratelimit { load, batch, keys } => {
            positive(&[("batch", batch.into()), ("keys", keys)])?;
            crate::outln!(
                "bench ratelimit: batches of {batch} sliding-window checks (100/s) over {keys} keys, {:?}",
                load.duration
            );
            let limit = RateLimit::SlidingWindow {
                limit: 100,
                window: Duration::from_secs(1),
            };
            let report = closed_loop(&cluster, &load, 8, move |client, c, i| async move {
                let checks = (0..u64::from(batch))
                    .map(|j| RateCheck {
                        key: format!("bench/rl/{}", spread(c, i, j) % keys).into_bytes(),
                        limit,
                        cost: 1,
                    })
                    .collect();
                client.rate_limiter().check_many(checks).await.map(|d| d.len() as u64)
            })
            .await?;
            report.print("decisions");
        }
        BenchCommand::Stream {
            load,
            batch,
            record_size,
            partitions,
        } => {
            positive(&[("batch", batch.into()), ("partitions", partitions.into())])?;
            crate::outln!(
                "bench stream: batches of {batch} records of {record_size} bytes over {partitions} partitions, {:?}",
                load.duration
            );
            // A topic unique to this run, so repeated runs against one cluster start empty.
            let topic = format!("bench-{:08x}", rand::random::<u32>());
            let setup = Client::connect_with(&cluster.endpoints, cluster.options())
                .await
                .map_err(|e| e.to_string())?;
            setup
                .streams()
                .create_topic(
                    topic.clone(),
                    basalt_client::TopicOptions {
                        partitions,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            let value = Arc::new(vec![b'x'; record_size]);
            let report = closed_loop(&cluster, &load, 8, move |client, c, i| {
                let (topic, value) = (topic.clone(), value.clone());
                async move {
                    let records = (0..u64::from(batch))
                        .map(|j| basalt_client::Record::new(format!("k{}", spread(c, i, j) % 1024), value.as_slice()))
                        .collect();
                    client.streams().produce(topic, records).await.map(|o| o.len() as u64)
                }
            })
            .await?;
            report.print("records");
        }
        BenchCommand::Ledger { load, batch, accounts } => {
            positive(&[("batch", batch.into()), ("accounts", accounts)])?;
            crate::outln!(
                "bench ledger: batches of {batch} transfers between {accounts} accounts, {:?}",
                load.duration
            );
            // Ids unique to this run, so repeated runs against one cluster create new objects.
            let run = u128::from(rand::random::<u32>() | 1) << 96;
            create_accounts(&cluster, run, accounts).await?;
            let report = closed_loop(&cluster, &load, 4, move |client, c, i| async move {
                let transfers: Vec<Transfer> = (0..u64::from(batch))
                    .map(|j| {
                        let n = spread(c, i, j);
                        let debit = n % accounts;
                        let credit = (debit + 1 + (n / accounts) % (accounts - 1).max(1)) % accounts;
                        Transfer {
                            id: run | u128::from(c) << 64 | u128::from(i * u64::from(batch) + j),
                            debit_account_id: run | u128::from(debit + 1),
                            credit_account_id: run | u128::from(credit + 1),
                            amount: 1,
                            ledger: 1,
                            code: 1,
                            ..Default::default()
                        }
                    })
                    .collect();
                let failures = client.ledger().create_transfers(&transfers).await?;
                Ok(transfers.len() as u64 - failures.len() as u64)
            })
            .await?;
            report.print("transfers");
        }
    }
    Ok(())
}

/// A well-spread pseudo-random number for item `j` of request `i` of client `c`.
fn spread(c: u32, i: u64, j: u64) -> u64 {
    let mut x = (u64::from(c) << 40) ^ (i << 16) ^ j;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

async fn create_accounts(cluster: &BenchCluster, run: u128, accounts: u64) -> Result<(), String> {
    let client = Client::connect_with(&cluster.endpoints, cluster.options())
        .await
        .map_err(|e| e.to_string())?;
    let ids: Vec<u64> = (1..=accounts).collect();
    for chunk in ids.chunks(4096) {
        let batch: Vec<Account> = chunk
            .iter()
            .map(|id| Account {
                id: run | u128::from(*id),
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect();
        let failures = client
            .ledger()
            .create_accounts(&batch)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(f) = failures.first() {
            return Err(format!(
                "creating bench accounts: event {} failed: {}",
                f.index, f.result
            ));
        }
    }
    Ok(())
}

/// Runs `request(client, client_index, iteration)` in a closed loop from every client task until
/// the duration ends. `request` returns how many items the request carried.
pub async fn closed_loop<F, Fut>(
    cluster: &BenchCluster,
    load: &LoadArgs,
    default_clients: u32,
    request: F,
) -> Result<BenchReport, String>
where
    F: Fn(Client, u32, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, ClientError>> + Send,
{
    let clients = load.clients.unwrap_or(default_clients);
    positive(&[
        ("clients", clients.into()),
        ("clients-per-connection", load.clients_per_connection.into()),
        ("batches-in-flight", load.batches_in_flight as u64),
    ])?;
    let connections = clients.div_ceil(load.clients_per_connection);
    let mut pool = Vec::new();
    let options = ClientOptions {
        coalesce_writes: !load.no_coalesce,
        write_batches_in_flight: load.batches_in_flight,
        ..cluster.options()
    };
    for _ in 0..connections {
        pool.push(
            Client::connect_with(&cluster.endpoints, options.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let items = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = pool[(c / load.clients_per_connection) as usize].clone();
        let (items, requests, errors, request) = (items.clone(), requests.clone(), errors.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
            let mut i = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                match request(client.clone(), c, i).await {
                    Ok(n) => {
                        let _ = histogram.record(began.elapsed().as_micros() as u64);
                        items.fetch_add(n, Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            histogram
        }));
    }
    let progress = {
        let (items, errors) = (items.clone(), errors.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = items.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>4.0}s  {:>10} items  {:>8} items/s  {} errors",
                    start.elapsed().as_secs_f64(),
                    now,
                    now - last,
                    errors.load(Ordering::Relaxed)
                );
                last = now;
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    for task in tasks {
        let h = task.await.map_err(|e| e.to_string())?;
        histogram.add(h).map_err(|e| e.to_string())?;
    }
    progress.abort();
    Ok(BenchReport {
        requests: requests.load(Ordering::Relaxed),
        items: items.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        histogram,
    })
}
