//! The systems Basalt exists for, each a short program on the Rust SDK that runs against a
//! cluster, checks the system's business invariant itself and reports what it measured. `basalt
//! demo NAME` runs one (see `docs/systems/`).
//!
//! Owns: the systems ([`SYSTEMS`], one module each, readable in one sitting), the context a
//! system runs in ([`Demo`]) and what it answers ([`Report`]). It talks to Basalt only through
//! the SDK (`basalt-client`), as an application would, and never starts or stops nodes: the
//! `basalt demo` command (in `cli/`) gives it a running cluster's endpoints. Where a system
//! needs a network fault between an application and its cluster, it puts a link proxy of
//! `basalt-regions` (the link simulator) in between.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use basalt_client::{Client, ClientError, ClientOptions};

pub mod analytics;
pub mod billing;
pub mod cdn;
pub mod circuit_breaker;
pub mod event_pipeline;
pub mod feature_flags;
pub mod notifications;
pub mod orders;
pub mod rate_limiting;
pub mod rewards;
mod worker;

/// How much work a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// A few seconds: what the test suite runs (`basalt demo NAME --short`).
    Short,
    /// The default: enough work for the figures to mean something.
    Full,
}

/// A system's run, as a boxed future (the catalog holds plain function pointers).
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Report, DemoError>> + Send + 'a>>;

/// One system `basalt demo` can run.
pub struct System {
    /// The name `basalt demo` takes.
    pub name: &'static str,
    /// One line: what it is built from.
    pub summary: &'static str,
    /// The business invariant the run checks, in one sentence.
    pub invariant: &'static str,
    /// How many nodes the temporary cluster gets (per region, with regions).
    pub nodes: u16,
    /// The regions it runs in, the first the home; empty: one region.
    pub regions: &'static [&'static str],
    /// Whether every node serves the edge cache in front of an origin the system itself serves
    /// at [`Demo::origin`].
    pub origin: bool,
    pub run: for<'a> fn(&'a Demo) -> RunFuture<'a>,
}

/// Every system there is, in the order `basalt demo --list` shows them.
pub static SYSTEMS: &[System] = &[
    event_pipeline::SYSTEM,
    billing::SYSTEM,
    rewards::SYSTEM,
    notifications::SYSTEM,
    feature_flags::SYSTEM,
    rate_limiting::SYSTEM,
    orders::SYSTEM,
    analytics::SYSTEM,
    circuit_breaker::SYSTEM,
    cdn::SYSTEM,
];

/// The system named `name`.
pub fn find(name: &str) -> Option<&'static System> {
    SYSTEMS.iter().find(|s| s.name == name)
}

/// One region of a multi-region cluster: its name and its nodes' endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionEndpoints {
    pub name: String,
    pub endpoints: Vec<String>,
    /// Each node's edge-cache address, in node order, when the system asked for an origin.
    pub edges: Vec<String>,
}

/// Where a system runs and how it talks to the person watching.
pub struct Demo {
    endpoints: Vec<String>,
    regions: Vec<RegionEndpoints>,
    origin: Option<std::net::SocketAddr>,
    scale: Scale,
    say: Box<dyn Fn(&str) + Send + Sync>,
}

/// How long one SDK call of a demo may take, retries included: long enough to ride out a leader
/// election on two busy cores.
const DEMO_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl Demo {
    /// A run against the cluster at `endpoints`, printing with `say`.
    pub fn new(endpoints: Vec<String>, scale: Scale, say: impl Fn(&str) + Send + Sync + 'static) -> Demo {
        Demo {
            endpoints,
            regions: Vec::new(),
            origin: None,
            scale,
            say: Box::new(say),
        }
    }

    /// A run against several regions (`endpoints` stays the first region's).
    pub fn with_regions(mut self, regions: Vec<RegionEndpoints>) -> Demo {
        self.regions = regions;
        self
    }

    /// The regions, when the cluster has several.
    pub fn regions(&self) -> &[RegionEndpoints] {
        &self.regions
    }

    /// A run whose nodes' edge caches fetch from `origin`, which the system serves.
    pub fn with_origin(mut self, origin: std::net::SocketAddr) -> Demo {
        self.origin = Some(origin);
        self
    }

    /// Where the system must serve its origin, when it asked for one.
    pub fn origin(&self) -> Option<std::net::SocketAddr> {
        self.origin
    }

    pub fn scale(&self) -> Scale {
        self.scale
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Prints one line for the person watching.
    pub fn say(&self, line: &str) {
        (self.say)(line);
    }

    /// A new connection to the cluster: each worker of a system has its own, as separate
    /// processes would.
    pub async fn connect(&self) -> Result<Client, DemoError> {
        connect(&self.endpoints).await
    }
}

/// A new connection to the cluster at `endpoints`.
pub async fn connect(endpoints: &[String]) -> Result<Client, DemoError> {
    let options = ClientOptions {
        request_timeout: DEMO_REQUEST_TIMEOUT,
        ..ClientOptions::default()
    };
    Client::connect_with(endpoints, options)
        .await
        .map_err(|source| DemoError::Cluster {
            doing: "connecting".into(),
            source,
        })
}

/// What a run found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The figures measured, as (what, value) lines of the summary.
    pub figures: Vec<(String, String)>,
    /// Each way the invariant was broken; empty: it held.
    pub violations: Vec<String>,
}

impl Report {
    pub fn held(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn figure(&mut self, what: impl Into<String>, value: impl std::fmt::Display) {
        self.figures.push((what.into(), value.to_string()));
    }
}

/// Why a run could not finish (as opposed to finishing with the invariant broken).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{doing}: {source}")]
    Cluster { doing: String, source: ClientError },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what}: gave up after {attempts} tries, each overtaken by another worker")]
    Contended { what: String, attempts: u32 },
    #[error("{0}")]
    Setup(String),
}

/// `Err(e)` with what was being done, for the SDK's errors.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, DemoError>;
}

impl<T> Doing<T> for Result<T, ClientError> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, DemoError> {
        self.map_err(|source| DemoError::Cluster { doing: what(), source })
    }
}

/// A lock that a panicking holder does not poison for good: the systems keep plain tallies
/// behind their mutexes, still readable after a task panicked (the run then fails anyway).
pub(crate) trait Locked<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> Locked<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The result of a task a run spawned (`what` names it): a panic there is the run's failure.
pub(crate) async fn joined<T>(task: tokio::task::JoinHandle<Result<T, DemoError>>, what: &str) -> Result<T, DemoError> {
    task.await
        .map_err(|e| DemoError::Setup(format!("{what} panicked: {e}")))?
}

/// Every message `queue` holds now, received and acknowledged: their payloads, in the order
/// received (what a run reads back at its end).
pub(crate) async fn drain(client: &Client, queue: &str) -> Result<Vec<Vec<u8>>, DemoError> {
    let handle = client.queue(queue);
    let mut payloads = Vec::new();
    loop {
        let messages = handle
            .receive(DRAIN_RECEIVE_MAX, basalt_client::ReceiveOptions::default())
            .await
            .doing(|| format!("draining {queue}"))?;
        if messages.is_empty() {
            return Ok(payloads);
        }
        for message in messages {
            handle
                .ack(&message.receipt)
                .await
                .doing(|| format!("acknowledging in {queue}"))?;
            payloads.push(message.payload);
        }
    }
}

/// Messages one receive of [`drain`] takes.
const DRAIN_RECEIVE_MAX: u32 = 100;

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fixed scramble of `i` (splitmix64): a run's "random" choices, the same every run.
pub(crate) fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `q`-quantile (0.0..=1.0) of `values` (sorted here), 0 when empty.
pub fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((values.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    values[rank.min(values.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for system in SYSTEMS {
            assert!(std::ptr::eq(find(system.name).expect("found"), system));
        }
        assert!(find("no-such-system").is_none());
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&mut [], 0.5), 0);
        let mut values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut values, 0.0), 1);
        assert_eq!(quantile(&mut values, 0.5), 51);
        assert_eq!(quantile(&mut values, 0.99), 99);
        assert_eq!(quantile(&mut values, 1.0), 100);
    }
}
