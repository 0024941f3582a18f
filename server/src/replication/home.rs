//! Homed data: ledgers, leases and queues have one home region that owns them (last-writer-wins
//! cannot merge a double-entry ledger or a lease's fencing tokens). A node in another region
//! serves their writes and linearizable reads by forwarding them, unchanged, to a node of the
//! home region; the answer comes back as the home gave it. When the home cannot be reached, the
//! request fails with `REGION_UNAVAILABLE` and nothing is applied here. Stale reads are served
//! from this region's copy, which the home's feed keeps up to date row by row.
//!
//! Requests carry the client's `(client_id, seq)`, so a client retrying a forwarded write after
//! an unknown outcome still applies it at most once, at the home.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::lease_client::LeaseClient;
use basalt_client::pb::lease_server::Lease;
use basalt_client::pb::ledger_client::LedgerClient;
use basalt_client::pb::ledger_server::Ledger;
use basalt_client::pb::queue_client::QueueClient;
use basalt_client::pb::queue_server::Queue;
use basalt_client::pb::txn_client::TxnClient;
use basalt_client::pb::txn_server::Txn;
use basalt_client::{ErrorCode, ERROR_CODE_KEY};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use basalt_storage::apply::replication::homed_copy_complete;
use basalt_storage::apply::topology::RegionEndpoint;

use crate::api::{status, Api};
use crate::config::RemoteRegion;
use crate::limits::{HOME_DEADLINE_MARGIN, HOME_FORWARD_BUDGET};

/// The caller's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn caller_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Where homed requests go when this region is not their home.
#[derive(Clone)]
pub struct HomeRoute {
    pub home: RemoteRegion,
    channels: Arc<Vec<(String, Channel)>>,
}

impl HomeRoute {
    pub fn new(home: RemoteRegion, credentials: &crate::access::NodeCredentials) -> Result<HomeRoute, String> {
        // Forwarded requests are client requests: they go to the home's client ports (a
        // region's endpoint names its peer listener for the feed only).
        let channels = home
            .endpoints
            .iter()
            .map(|named| {
                let addr = RegionEndpoint::parse(named)
                    .map_err(|e| format!("home region endpoint: {e}"))?
                    .client
                    .to_string();
                credentials
                    .channel(&addr, Duration::from_secs(2))
                    .map(|channel| (addr.clone(), channel))
                    .map_err(|e| format!("home region endpoint {addr}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HomeRoute {
            home,
            channels: Arc::new(channels),
        })
    }

    /// Sends `message` to the home region's leader (trying each node; a follower answers
    /// `NOT_LEADER`), within `wait` + [`HOME_FORWARD_BUDGET`] in all, and within the caller's deadline.
    async fn call<M, R, F, Fut>(
        &self,
        credentials: &crate::access::NodeCredentials,
        caller: Option<Duration>,
        message: M,
        wait: Duration,
        writes: bool,
        send: F,
    ) -> Result<Response<R>, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut budget = wait + HOME_FORWARD_BUDGET;
        if let Some(caller) = caller {
            budget = budget.min(caller.saturating_sub(HOME_DEADLINE_MARGIN));
        }
        let deadline = tokio::time::Instant::now() + budget;
        let mut failures = Vec::new();
        // Whether some attempt may have reached the home region's leader: then the request may
        // have applied there, and the answer must say "outcome unknown", not "refused".
        let mut maybe_delivered = false;
        for (addr, channel) in self.channels.iter() {
            let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
            if timeout.is_zero() {
                failures.push(format!("{addr}: not tried, out of time"));
                continue;
            }
            let mut request = Request::new(message.clone());
            request.set_timeout(timeout);
            credentials.sign(&mut request);
            match tokio::time::timeout(timeout, send(channel.clone(), request)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(s)) if is_not_leader(&s) => failures.push(format!("{addr}: not the leader")),
                // This node's own credential refused (the regions' root tokens differ, or one is
                // being rotated): the caller's request was admitted here, so not its refusal.
                Ok(Err(s)) if refuses_credentials(&s) => {
                    failures.push(format!("{addr}: refused this node's credentials ({})", s.message()))
                }
                // A typed answer from the home region (a refusal): pass it on as it is.
                Ok(Err(s)) if s.metadata().get(ERROR_CODE_KEY).is_some() && !is_unavailable(&s) => return Err(s),
                Ok(Err(s)) => {
                    maybe_delivered |= !basalt_client::never_sent(&s);
                    failures.push(format!("{addr}: {}", s.message()));
                }
                Err(_) => {
                    maybe_delivered = true;
                    failures.push(format!("{addr}: no answer within {timeout:?}"));
                }
            }
        }
        Err(unreachable_home(&self.home.name, writes && maybe_delivered, &failures))
    }
}

/// Whether a home region's node refused the forwarding node's own credentials.
fn refuses_credentials(s: &Status) -> bool {
    let code = s.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    matches!(code, Some("UNAUTHENTICATED" | "PERMISSION_DENIED"))
}

/// The answer when no node of the home region answered: `REGION_UNAVAILABLE` (nothing was
/// applied anywhere) only when no attempt can have reached it; otherwise `OUTCOME_UNKNOWN`,
/// since the home may have applied the request (a retry with the same session applies it at most
/// once).
fn unreachable_home(home: &str, maybe_delivered: bool, failures: &[String]) -> Status {
    let failures = failures.join("; ");
    if maybe_delivered {
        status(
            ErrorCode::OutcomeUnknown,
            format!(
                "home region {home:?} of this data did not answer: the request may have been applied there \
                 (a retry with the same session applies it at most once): {failures}"
            ),
        )
    } else {
        status(
            ErrorCode::RegionUnavailable,
            format!("home region {home:?} of this data is unreachable; the request was applied nowhere: {failures}"),
        )
    }
}

fn code_of(s: &Status) -> Option<ErrorCode> {
    s.metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
}

fn is_not_leader(s: &Status) -> bool {
    code_of(s) == Some(ErrorCode::NotLeader)
}

fn is_unavailable(s: &Status) -> bool {
    code_of(s) == Some(ErrorCode::Unavailable)
}

/// The Ledger, Lease and Queue services of this node: served here in the home region (or without
/// regions), forwarded to the home region elsewhere.
#[derive(Clone)]
pub struct Homed {
    pub api: Api,
    /// The route to the home region last built, kept while the topology names the same home
    /// with the same endpoints.
    route: Arc<std::sync::Mutex<Option<HomeRoute>>>,
}

impl Homed {
    pub fn new(api: Api) -> Homed {
        Homed {
            api,
            route: Arc::default(),
        }
    }

    /// Where homed requests go: `None` to serve them here (this region is the home, there are
    /// no regions, or the region's topology is not committed yet, when writes are refused).
    fn route(&self) -> Option<HomeRoute> {
        let topology = self.api.replication.as_ref()?.topology()?;
        if topology.home == topology.this {
            return None;
        }
        let home = super::remote_region(&topology, topology.home)?;
        let mut route = self.route.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if route.as_ref().map(|r| &r.home) != Some(&home) {
            match HomeRoute::new(home, &self.api.credentials()) {
                Ok(fresh) => *route = Some(fresh),
                Err(e) => {
                    // Apply checked every endpoint parses as ip:port; this cannot happen.
                    tracing::error!(error = %e, "no route to the home region");
                    *route = None;
                }
            }
        }
        route.clone()
    }

    /// Whether a read that accepts stale data may be served from this region's copy: not while a
    /// full re-sync is rebuilding it (it lacks rows until the re-sync ends).
    fn copy_serves_stale_reads(&self) -> bool {
        homed_copy_complete(&self.api.store).unwrap_or(false)
    }
}

/// Generates a service whose methods serve locally or forward. `|m| wait` computes a request's
/// own wait from its message `m` (long-polls); `Duration::ZERO` for the others. `|m| stale` says
/// whether a request is a read that accepts stale data, and `writes` whether it may change state
/// (what an unanswered forward may have done): outside the home region it is served
/// from this region's copy of homed data, which the home's feed keeps a few link latencies
/// behind; everything else (writes, linearizable reads) goes to the home.
macro_rules! homed_service {
    ($trait:ident, $client:ident, {
        $($method:ident($req:ty) -> $resp:ty, |$m:ident| wait: $wait:expr, stale: $stale:expr, writes: $writes:expr;)*
    }) => {
        #[tonic::async_trait]
        impl $trait for Homed {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let Some(route) = self.route() else {
                        return $trait::$method(&self.api, request).await;
                    };
                    let stale: bool = {
                        let $m = request.get_ref();
                        let _ = &$m;
                        $stale
                    };
                    if stale && self.copy_serves_stale_reads() {
                        return $trait::$method(&self.api, request).await;
                    }
                    let caller = caller_timeout(request.metadata());
                    let $m = request.into_inner();
                    let wait: Duration = $wait;
                    route
                        .call(&self.api.credentials(), caller, $m, wait, $writes, |c, r| async move { basalt_client::service_client!($client, c).$method(r).await })
                        .await
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_deadline_is_read_from_grpc_timeout() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(caller_timeout(&metadata), None);
        for (text, expected) in [
            ("2999m", Duration::from_millis(2999)),
            ("3S", Duration::from_secs(3)),
            ("1M", Duration::from_secs(60)),
            ("500000u", Duration::from_millis(500)),
        ] {
            metadata.insert("grpc-timeout", text.parse().expect("ascii"));
            assert_eq!(caller_timeout(&metadata), Some(expected), "{text}");
        }
        metadata.insert("grpc-timeout", "soon".parse().expect("ascii"));
        assert_eq!(caller_timeout(&metadata), None);
    }
}

homed_service!(Ledger, LedgerClient, {
    create_accounts(pb::CreateAccountsRequest) -> pb::CreateResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    create_transfers(pb::CreateTransfersRequest) -> pb::CreateResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    lookup_accounts(pb::LookupRequest) -> pb::AccountsResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
    lookup_transfers(pb::LookupRequest) -> pb::TransfersResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
    get_account_transfers(pb::AccountFilter) -> pb::TransfersResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
    get_account_balances(pb::AccountFilter) -> pb::BalancesResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
});

homed_service!(Lease, LeaseClient, {
    acquire(pb::LeaseAcquireRequest) -> pb::LeaseResponse, |m| wait: Duration::from_millis(m.wait_ms), stale: false, writes: true;
    renew(pb::LeaseRenewRequest) -> pb::LeaseResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    release(pb::LeaseReleaseRequest) -> pb::LeaseReleaseResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    get(pb::LeaseGetRequest) -> pb::LeaseResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
});

homed_service!(Queue, QueueClient, {
    create_queue(pb::CreateQueueRequest) -> pb::CreateQueueResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    enqueue(pb::EnqueueRequest) -> pb::EnqueueResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    receive(pb::ReceiveRequest) -> pb::ReceiveResponse, |m| wait: Duration::from_millis(m.wait_ms), stale: false, writes: true;
    ack(pb::AckRequest) -> pb::AckResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    nack(pb::NackRequest) -> pb::AckResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    redrive(pb::RedriveRequest) -> pb::RedriveResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    stats(pb::QueueStatsRequest) -> pb::QueueStatsResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
    extend(pb::ExtendRequest) -> pb::ExtendResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    ack_batch(pb::AckBatchRequest) -> pb::AckBatchResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    purge(pb::PurgeRequest) -> pb::PurgeResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    delete_queue(pb::DeleteQueueRequest) -> pb::DeleteQueueResponse, |_m| wait: Duration::ZERO, stale: false, writes: true;
    list_queues(pb::ListQueuesRequest) -> pb::ListQueuesResponse, |m| wait: Duration::ZERO, stale: m.stale, writes: false;
});

/// Transactions: one touching homed data (a lease, ledger or queue, in an op or a condition) is
/// sent whole to the home region, as the homed writes it carries would be; one of region-local
/// types only (KV, counters, rate limits, streams) applies here.
#[tonic::async_trait]
impl Txn for Homed {
    async fn commit(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = caller_timeout(request.metadata());
        let message = request.into_inner();
        // Converted here to learn what it touches; forwarded as it came (the home converts it
        // again, against its own topology).
        let (header, txn) = self.api.txn_of(message.clone())?;
        if txn.is_homed() {
            if let Some(route) = self.route() {
                return route
                    .call(
                        &self.api.credentials(),
                        caller,
                        message,
                        Duration::ZERO,
                        true,
                        |c, r| async move { basalt_client::service_client!(TxnClient, c).commit(r).await },
                    )
                    .await;
            }
        }
        self.api.commit_txn(header, txn).await.map(Response::new)
    }
}
