//! The node's client API called without the network, by the clients that run inside the node
//! (the RESP door's SDK handle).
//!
//! A call is the client port's own services and access layer called as a function: the caller
//! still presents its token and takes the same request path, with no connection, no TCP and no
//! HTTP/2 framing in between. The handler runs on the caller's task; a caller that stops waiting
//! drops it, as a client resetting its HTTP/2 stream makes the client port drop its handler. Each
//! call's `grpc-timeout` is enforced here, as a dialled channel enforces it.

use crate::access::{AccessLayer, Gate};
use basalt_client::{Transport, TransportError};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::service::Routes;
use tower::{Layer, ServiceExt};

/// The client API behind its access layer, as the in-process transport calls it.
type Api = crate::access::AccessService<Routes>;

/// The client API's `routes` behind the access layer `gate` keeps, as a transport for an SDK
/// client ([`basalt_client::InProcessNode`]), and the switch that turns it off.
pub fn transport(routes: Routes, gate: Option<Arc<Gate>>) -> (Transport, Switch) {
    let api = Arc::new(RwLock::new(Some(AccessLayer::new(gate).layer(routes.prepare()))));
    let running = Arc::new(Running::default());
    let deadline = Deadline {
        api: api.clone(),
        running: running.clone(),
    };
    (Transport::new(deadline), Switch { api, running })
}

/// Turns an in-process transport off: its calls from then on fail as a refused connection (never
/// sent: the SDK may resend them anywhere), and it no longer holds the node's API for them.
pub struct Switch {
    api: Arc<RwLock<Option<Api>>>,
    running: Arc<Running>,
}

/// The calls on their way (until their answers' headers), and a wakeup when one ends.
#[derive(Default)]
struct Running {
    calls: AtomicUsize,
    ended: tokio::sync::Notify,
}

/// One call on its way, counted from before it took the API until it is answered or dropped.
struct OnItsWay(Arc<Running>);

impl Drop for OnItsWay {
    fn drop(&mut self) {
        // Only the last call's end can end a drain's wait (it waits for none on their way).
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Switch {
    /// Refuses new calls, then waits until `deadline` (the stop gives it `IN_PROCESS_DRAIN_MAX`
    /// within the doors' bound) for the calls on their way to be answered (as the client port
    /// drains its connections), so that they end before Raft stops. A call's streamed answer (a
    /// subscription) is not waited for.
    pub async fn turn_off(self, deadline: tokio::time::Instant) {
        // A call counts itself under the read lock it takes the API with: once this write lock
        // has been held, every call that has the API is counted, and no later one gets it.
        *self.api.write().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let _ = tokio::time::timeout_at(deadline, async {
            loop {
                let ended = self.running.ended.notified();
                if self.running.calls.load(Ordering::SeqCst) == 0 {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }
}

/// Calls the API, ending a call whose `grpc-timeout` runs out before its answer (tonic's
/// `TimeoutExpired`, which the caller's client reads as `CANCELLED`, as over a channel).
#[derive(Clone)]
struct Deadline {
    api: Arc<RwLock<Option<Api>>>,
    running: Arc<Running>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for Deadline {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = BoxFuture<Result<http::Response<Body>, TransportError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // The API is always ready (the access layer over routes that are); each call takes its
        // own clone and waits on that.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let (api, on_its_way) = {
            let api = self.api.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(api) = api.clone() else {
                return Box::pin(async { Err(refused("the node's client API has stopped")) });
            };
            self.running.calls.fetch_add(1, Ordering::SeqCst);
            (api, OnItsWay(self.running.clone()))
        };
        let timeout = grpc_timeout(request.headers());
        // As on the wire, a request arrives with only what its headers and body say (the SDK's
        // own request extensions stay with the SDK).
        *request.extensions_mut() = http::Extensions::new();
        // A handler that panics ends its call, not the caller's task (on the client port it
        // ended only its HTTP/2 stream): the call fails as a reset stream does, to be retried.
        let answer = AssertUnwindSafe(api.oneshot(request)).catch_unwind();
        Box::pin(async move {
            let _on_its_way = on_its_way;
            // A call that completes without waiting still gives other tasks their turn.
            tokio::task::coop::consume_budget().await;
            let answered = match timeout {
                Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                    Ok(answered) => answered,
                    Err(_) => return Err(TransportError(Box::new(tonic::TimeoutExpired(())))),
                },
                None => answer.await,
            };
            match answered {
                // Its body (a stream's answers) is polled later, by the caller: a panic there
                // ends the answer, not the caller either.
                Ok(Ok(response)) => Ok(response.map(|body| Body::new(PanicEndsBody { inner: Some(body) }))),
                Ok(Err(e)) => Err(TransportError(e.into())),
                Err(_) => {
                    tracing::error!("a client API handler panicked on an in-process call");
                    Err(TransportError(Box::new(tonic::Status::cancelled(
                        "the node's handler for this call failed",
                    ))))
                }
            }
        })
    }
}

/// An answer's body whose poll panicking ends the answer with `CANCELLED` (on the client port
/// the panic ended only the HTTP/2 stream's task), instead of unwinding into the caller.
struct PanicEndsBody {
    /// `None` once it panicked: the answer has ended.
    inner: Option<Body>,
}

impl http_body::Body for PanicEndsBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll_frame(cx))) {
            Ok(polled) => polled,
            Err(_) => {
                // Dropped under the catch too: a body broken mid-poll may panic again on drop.
                let broken = self.inner.take();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(broken)));
                tracing::error!("a client API answer's body panicked on an in-process call");
                Poll::Ready(Some(Err(tonic::Status::cancelled(
                    "the node's answer to this call failed",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// A call refused before it was sent, as a refused connection (tonic answers `UNAVAILABLE` with
/// this message, which the SDK counts as never sent).
fn refused(why: &str) -> TransportError {
    TransportError(Box::new(tonic::ConnectError(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("Connection refused: {why}"),
    )))))
}

/// A request's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits, then H, M, S, m, u or n);
/// `None` when absent or malformed (the call then has no deadline here, as tonic's own parser
/// treats it).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_client::pb;
    use basalt_client::pb::rate_limiter_client::RateLimiterClient;
    use basalt_client::pb::rate_limiter_server::{RateLimiter, RateLimiterServer};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A rate limiter that answers one decision per check, `remaining` counting its calls; a
    /// check of the key `slow` takes a minute, one of `panic` panics.
    #[derive(Default)]
    struct Counting(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl RateLimiter for Counting {
        async fn check(
            &self,
            request: tonic::Request<pb::RateCheckRequest>,
        ) -> Result<tonic::Response<pb::RateCheckResponse>, tonic::Status> {
            let checks = request.into_inner().checks;
            if checks.iter().any(|c| c.key == b"slow") {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if checks.iter().any(|c| c.key == b"pause") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            assert!(!checks.iter().any(|c| c.key == b"panic"), "a handler's bug");
            let calls = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            let decisions = checks
                .iter()
                .map(|_| pb::RateDecision {
                    allowed: true,
                    remaining: calls,
                    ..Default::default()
                })
                .collect();
            Ok(tonic::Response::new(pb::RateCheckResponse { decisions }))
        }
    }

    fn counting_routes() -> Routes {
        Routes::new(RateLimiterServer::new(Counting::default()))
    }

    /// Routes whose calls answered are counted in `answered`.
    fn counted_routes(answered: Arc<AtomicU64>) -> Routes {
        Routes::new(RateLimiterServer::new(Counting(answered)))
    }

    fn check_of(key: &[u8]) -> pb::RateCheckRequest {
        pb::RateCheckRequest {
            checks: vec![pb::RateCheck {
                key: key.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A client of the node at `addr` that reaches it through `service`.
    fn client_of(addr: &str, service: Transport, token: Option<&str>) -> basalt_client::Client {
        let options = basalt_client::ClientOptions {
            request_timeout: Duration::from_secs(2),
            token: token.map(basalt_auth::token::Token::from_text),
            in_process: Some(basalt_client::InProcessNode {
                addrs: vec![addr.to_string()],
                service,
            }),
            ..basalt_client::ClientOptions::default()
        };
        basalt_client::Client::lazy([addr], options).expect("client")
    }

    #[tokio::test]
    async fn an_sdk_client_calls_its_in_process_node_without_dialling_it() {
        // Nothing listens on port 1: only the in-process service answers for it.
        let addr = "127.0.0.1:1";
        let client = client_of(addr, transport(counting_routes(), None).0, None);
        for call in 1..=3u64 {
            let decision = client
                .rate_limiter()
                .check("k", 10, Duration::from_secs(1), 1)
                .await
                .expect("checked in-process");
            assert_eq!(decision.remaining, call, "each call reached the one service");
        }
        // Without it the address is dialled, and refused.
        let dialled = basalt_client::Client::lazy(
            [addr],
            basalt_client::ClientOptions {
                request_timeout: Duration::from_millis(300),
                ..basalt_client::ClientOptions::default()
            },
        )
        .expect("client");
        dialled
            .rate_limiter()
            .check("k", 10, Duration::from_secs(1), 1)
            .await
            .expect_err("nothing listens on port 1");
    }

    #[tokio::test]
    async fn in_process_calls_pass_the_access_layer() {
        let (_, table) = tokio::sync::watch::channel(Arc::new(basalt_auth::AuthTable::default()));
        let gate = Arc::new(Gate::new(&basalt_auth::token::Token::from_text("root-token"), table).expect("gate"));
        let routes = counting_routes();
        let addr = "127.0.0.1:1";
        let anonymous = client_of(addr, transport(routes.clone(), Some(gate.clone())).0, None);
        let refused = anonymous
            .rate_limiter()
            .check("k", 10, Duration::from_secs(1), 1)
            .await
            .expect_err("no token");
        assert!(refused.to_string().contains("UNAUTHENTICATED"), "{refused}");
        let wrong = client_of(
            addr,
            transport(routes.clone(), Some(gate.clone())).0,
            Some("not-a-token"),
        );
        wrong
            .rate_limiter()
            .check("k", 10, Duration::from_secs(1), 1)
            .await
            .expect_err("unknown token");
        let root = client_of(addr, transport(routes, Some(gate)).0, Some("root-token"));
        let decision = root
            .rate_limiter()
            .check("k", 10, Duration::from_secs(1), 1)
            .await
            .expect("the root may check");
        assert_eq!(decision.remaining, 1, "refused calls never reached the service");
    }

    #[tokio::test]
    async fn an_in_process_call_past_its_grpc_timeout_is_cancelled() {
        let mut client = RateLimiterClient::new(transport(counting_routes(), None).0);
        let mut request = tonic::Request::new(check_of(b"slow"));
        request.set_timeout(Duration::from_millis(50));
        let started = std::time::Instant::now();
        let ended = client.check(request).await.expect_err("past its deadline");
        assert_eq!(ended.code(), tonic::Code::Cancelled, "{ended:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the deadline ended it, not the handler"
        );
        let answered = client.check(check_of(b"fast")).await.expect("no deadline, answered");
        assert_eq!(answered.into_inner().decisions.len(), 1);
    }

    #[tokio::test]
    async fn a_handler_that_panics_ends_its_call_not_the_caller() {
        let mut client = RateLimiterClient::new(transport(counting_routes(), None).0);
        let ended = client
            .check(check_of(b"panic"))
            .await
            .expect_err("the handler panicked");
        assert_eq!(ended.code(), tonic::Code::Cancelled, "{ended:?}");
        // The caller's task goes on, and so do the next calls.
        let answered = client.check(check_of(b"k")).await.expect("answered");
        assert_eq!(answered.into_inner().decisions.len(), 1);
    }

    #[tokio::test]
    async fn a_transport_turned_off_refuses_calls_as_never_sent_and_lets_the_api_go() {
        let routes = counting_routes();
        let (service, switch) = transport(routes, None);
        let mut client = RateLimiterClient::new(service.clone());
        client.check(check_of(b"k")).await.expect("on");
        let api = Arc::downgrade(&switch.api);
        switch
            .turn_off(tokio::time::Instant::now() + crate::limits::IN_PROCESS_DRAIN_MAX)
            .await;
        let refused = client.check(check_of(b"k")).await.expect_err("off");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(basalt_client::never_sent(&refused), "{refused:?}");
        assert!(
            api.upgrade().is_some_and(|api| api.read().expect("lock").is_none()),
            "the transport holds no API any more"
        );
    }

    #[tokio::test]
    async fn turning_off_waits_for_the_calls_on_their_way() {
        let answered = Arc::new(AtomicU64::new(0));
        let (service, switch) = transport(counted_routes(answered.clone()), None);
        let mut client = RateLimiterClient::new(service);
        let on_its_way = tokio::spawn(async move { client.check(check_of(b"pause")).await });
        for _ in 0..1000 {
            if switch.running.calls.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(switch.running.calls.load(Ordering::SeqCst), 1, "the call is on its way");
        switch
            .turn_off(tokio::time::Instant::now() + crate::limits::IN_PROCESS_DRAIN_MAX)
            .await;
        // The handler counts a call once its 300 ms pause is over: turning off waited for it.
        assert_eq!(
            answered.load(Ordering::SeqCst),
            1,
            "turned off before the call was answered"
        );
        let reply = on_its_way
            .await
            .expect("task")
            .expect("the call on its way was answered");
        assert_eq!(reply.into_inner().decisions.len(), 1);
    }

    /// A body that yields one frame, then panics.
    struct OneFrameThenPanic {
        sent: bool,
    }

    impl http_body::Body for OneFrameThenPanic {
        type Data = bytes::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
            assert!(!self.sent, "a stream's bug");
            self.sent = true;
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test]
    async fn a_body_that_panics_ends_its_answer_not_the_caller() {
        use http_body_util::BodyExt;
        let mut body = PanicEndsBody {
            inner: Some(Body::new(OneFrameThenPanic { sent: false })),
        };
        let first = body.frame().await.expect("a frame").expect("not an error");
        assert_eq!(first.into_data().expect("data"), bytes::Bytes::from_static(b"first"));
        let ended = body.frame().await.expect("an end").expect_err("the panic ends it");
        assert_eq!(ended.code(), tonic::Code::Cancelled, "{ended:?}");
        assert!(body.frame().await.is_none(), "nothing after the end");
        assert!(http_body::Body::is_end_stream(&body));
    }

    /// A pub/sub service whose subscriptions answer one message, then panic.
    struct PanickingSubscriptions;

    #[tonic::async_trait]
    impl basalt_client::pb::pub_sub_server::PubSub for PanickingSubscriptions {
        type SubscribeStream =
            Pin<Box<dyn futures::Stream<Item = Result<pb::PubSubMessage, tonic::Status>> + Send + 'static>>;

        async fn publish(
            &self,
            _: tonic::Request<pb::PublishRequest>,
        ) -> Result<tonic::Response<pb::PublishResponse>, tonic::Status> {
            Ok(tonic::Response::new(pb::PublishResponse::default()))
        }

        async fn subscribe(
            &self,
            _: tonic::Request<pb::SubscribeRequest>,
        ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
            // One message, then a pause (so that it goes out on its own), then the bug.
            let mut step = 0;
            let answers = futures::stream::poll_fn(move |cx| {
                step += 1;
                match step {
                    1 => Poll::Ready(Some(Ok(pb::PubSubMessage {
                        channel: b"first".to_vec(),
                        ..Default::default()
                    }))),
                    2 => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    _ => panic!("a stream's bug"),
                }
            });
            Ok(tonic::Response::new(Box::pin(answers)))
        }
    }

    #[tokio::test]
    async fn a_stream_that_panics_through_the_transport_ends_with_cancelled() {
        let routes = Routes::new(basalt_client::pb::pub_sub_server::PubSubServer::new(
            PanickingSubscriptions,
        ));
        let mut client = basalt_client::pb::pub_sub_client::PubSubClient::new(transport(routes, None).0);
        let mut answers = client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribed")
            .into_inner();
        let first = answers.message().await.expect("first answer").expect("a message");
        assert_eq!(first.channel, b"first");
        let ended = answers.message().await.expect_err("the stream's panic ends it");
        assert_eq!(ended.code(), tonic::Code::Cancelled, "{ended:?}");
    }

    #[test]
    fn grpc_timeouts_are_read_as_grpc_writes_them() {
        let read = |text: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", text.parse().expect("header value"));
            grpc_timeout(&headers)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("10S"), Some(Duration::from_secs(10)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("7n"), Some(Duration::from_nanos(7)));
        for malformed in ["", "S", "123456789S", "10s", "1.5S", "-1S", "10"] {
            assert_eq!(read(malformed), None, "{malformed:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
