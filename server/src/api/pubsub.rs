//! Pub/sub: live fan-out, not stored. Each node keeps its own subscribers; a publish delivers to
//! the local ones and relays once to every other member, so a subscriber on any node receives it
//! (as Redis Cluster broadcasts PUBLISH). Delivery is at most once: a subscriber that is not
//! connected, or too slow to keep up, misses messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use basalt_client::pb;
use basalt_client::pb::pub_sub_server::PubSub;
use basalt_client::ErrorCode;
use basalt_storage::apply::queue::check_name;
use basalt_storage::limits::MESSAGE_BYTES_MAX;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{metrics_now, op_error_status, status, Api};
use crate::limits::{RELAY_TIMEOUT, SUBSCRIBER_BUFFER_MESSAGES, SUBSCRIPTIONS_MAX};

type Outbox = mpsc::Sender<Result<pb::PubSubMessage, Status>>;

struct Subscriber {
    channels: Vec<Vec<u8>>,
    patterns: Vec<Vec<u8>>,
    outbox: Outbox,
}

/// This node's subscribers.
#[derive(Default)]
pub struct Broker {
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    next_id: AtomicU64,
    /// Set (under the subscribers' lock) once the node stops: no subscription is taken any more.
    ended: AtomicBool,
}

/// Glob match over bytes: `*` matches any run (including none), `?` exactly one byte.
pub fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last star swallow one more byte and try again.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

impl Broker {
    /// Delivers to this node's matching subscribers; returns how many got it.
    pub fn deliver(&self, channel: &[u8], payload: &[u8]) -> u32 {
        let mut subscribers = self.subscribers.lock().expect("subscribers lock");
        let mut reached = 0;
        subscribers.retain(|_, s| {
            let pattern = if s.channels.iter().any(|c| c == channel) {
                Some(Vec::new())
            } else {
                s.patterns.iter().find(|p| glob_matches(p, channel)).cloned()
            };
            let Some(pattern) = pattern else {
                return !s.outbox.is_closed();
            };
            let message = pb::PubSubMessage {
                channel: channel.to_vec(),
                payload: payload.to_vec(),
                pattern,
            };
            match s.outbox.try_send(Ok(message)) {
                Ok(()) => {
                    reached += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        "disconnecting a pub/sub subscriber that fell {SUBSCRIBER_BUFFER_MESSAGES} messages behind"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        reached
    }

    fn subscribe(
        &self,
        channels: Vec<Vec<u8>>,
        patterns: Vec<Vec<u8>>,
    ) -> Result<mpsc::Receiver<Result<pb::PubSubMessage, Status>>, Status> {
        let mut subscribers = self.subscribers.lock().expect("subscribers lock");
        if self.ended.load(Ordering::SeqCst) {
            return Err(node_stopping());
        }
        let (outbox, inbox) = mpsc::channel(SUBSCRIBER_BUFFER_MESSAGES);
        // The first message tells the subscriber it is live.
        let _ = outbox.try_send(Ok(pb::PubSubMessage::default()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        subscribers.insert(
            id,
            Subscriber {
                channels,
                patterns,
                outbox,
            },
        );
        Ok(inbox)
    }

    /// Ends every subscription with `UNAVAILABLE` and takes no new one: the node is stopping,
    /// and its subscribers subscribe again on another node at once (rather than when the stop's
    /// bound cuts their connection). A subscriber whose buffer is full just sees its stream end.
    pub fn end_all(&self) {
        // A poisoned lock still holds every subscriber: the stop ends them all the same.
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.ended.store(true, Ordering::SeqCst);
        for (_, subscriber) in subscribers.drain() {
            let _ = subscriber.outbox.try_send(Err(node_stopping()));
        }
    }

    /// Live subscribers on this node.
    pub fn subscriber_count(&self) -> usize {
        let mut subscribers = self.subscribers.lock().expect("subscribers lock");
        subscribers.retain(|_, s| !s.outbox.is_closed());
        subscribers.len()
    }
}

/// What a subscription on a stopping node is told.
fn node_stopping() -> Status {
    status(
        ErrorCode::Unavailable,
        "the node is stopping: subscribe on another node",
    )
}

impl Api {
    /// The addresses of the other members a publish is relayed to.
    ///
    /// A node that is not in its own copy of the membership (it has not received the log that
    /// adds it yet, or it was removed) does not know who else may hold subscribers: it refuses
    /// with `UNAVAILABLE`, so the client tries another node, rather than answer a count that
    /// leaves out every other node's subscribers.
    fn relay_peers(&self) -> Result<Vec<String>, Status> {
        let metrics = metrics_now(&self.raft);
        let membership = metrics.membership_config.membership();
        if membership.get_node(&metrics.id).is_none() {
            return Err(status(
                ErrorCode::Unavailable,
                format!(
                    "node {} is not in the membership it knows, so it cannot reach the other nodes' subscribers; publish through another node",
                    metrics.id
                ),
            ));
        }
        Ok(membership
            .nodes()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, node)| self.node_links.addr(*id, &node.addr))
            .collect())
    }

    /// Relays a publish to `peers` (on their peer listeners); returns the subscribers they
    /// reached. A peer that does not answer within [`RELAY_TIMEOUT`] counts as none.
    async fn relay(&self, peers: Vec<String>, channel: &[u8], payload: &[u8]) -> u32 {
        let relays = peers.iter().map(|addr| async move {
            self.node_links
                .relay(addr, channel, payload, RELAY_TIMEOUT)
                .await
                .unwrap_or(0)
        });
        futures::future::join_all(relays).await.into_iter().sum()
    }
}

/// Checks a publish's channel name and payload size (`INVALID_ARGUMENT`).
pub(super) fn check_publish(channel: &[u8], payload: &[u8]) -> Result<(), Status> {
    check_channel("channel", channel)?;
    if payload.len() > MESSAGE_BYTES_MAX {
        return Err(status(
            ErrorCode::InvalidArgument,
            format!(
                "message of {} bytes exceeds the limit of {MESSAGE_BYTES_MAX} bytes",
                payload.len()
            ),
        ));
    }
    Ok(())
}

fn check_channel(what: &'static str, name: &[u8]) -> Result<(), Status> {
    check_name(what, name).map_err(|e| op_error_status(&e))
}

#[tonic::async_trait]
impl PubSub for Api {
    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<GrpcResponse<pb::PublishResponse>, Status> {
        let r = request.into_inner();
        #[allow(deprecated)] // read only to refuse it
        let relayed = r.relayed;
        if relayed {
            return Err(status(
                ErrorCode::InvalidArgument,
                "a relayed publish is refused on the client port: nodes relay to each other on the peer listener \
                 (a node of an earlier build is relaying here; upgrade it)",
            ));
        }
        check_publish(&r.channel, &r.payload)?;
        // Checked before delivering: a refused publish reaches no one, so the client's retry on
        // another node does not deliver twice.
        let peers = self.relay_peers()?;
        let mut receivers = self.broker.deliver(&r.channel, &r.payload);
        receivers += self.relay(peers, &r.channel, &r.payload).await;
        Ok(GrpcResponse::new(pb::PublishResponse { receivers }))
    }

    type SubscribeStream = ReceiverStream<Result<pb::PubSubMessage, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<GrpcResponse<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        if r.channels.is_empty() && r.patterns.is_empty() {
            return Err(status(
                ErrorCode::InvalidArgument,
                "subscribe to at least one channel or pattern",
            ));
        }
        if r.channels.len() + r.patterns.len() > SUBSCRIPTIONS_MAX {
            return Err(status(
                ErrorCode::BatchTooLarge,
                format!("at most {SUBSCRIPTIONS_MAX} channels and patterns per subscription"),
            ));
        }
        for c in &r.channels {
            check_channel("channel", c)?;
        }
        for p in &r.patterns {
            check_channel("pattern", p)?;
        }
        Ok(GrpcResponse::new(ReceiverStream::new(
            self.broker.subscribe(r.channels, r.patterns)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn glob_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("news.*", "news.sport", true),
            ("news.*", "news.", true),
            ("news.*", "weather", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.eu.*", "orders.eu.paid", true),
            ("*.eu.*", "orders.us.paid", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_matches(pattern.as_bytes(), text.as_bytes()),
                *expected,
                "{pattern} ~ {text}"
            );
        }
    }
}
