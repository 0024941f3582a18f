//! Pub/sub: publish to a channel, subscribe to channels and glob patterns. Live only: a
//! subscriber receives what is published while it is connected (at most once).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;

use crate::client::Client;
use crate::error::{classify_stream_error, ClientError};
use crate::pb;
use crate::pb::pub_sub_client::PubSubClient;

/// A message received by a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub channel: Vec<u8>,
    pub payload: Vec<u8>,
    /// The pattern it matched, when it came through one.
    pub pattern: Option<Vec<u8>>,
}

/// Pub/sub operations. Get one with [`Client::pubsub`].
#[derive(Clone)]
pub struct PubSub {
    pub(crate) client: Client,
}

/// A live subscription; read it with [`Subscription::next`], or as a [`Stream`] (`while let
/// Some(m) = sub.next().await`, or any `StreamExt` combinator). Dropping it unsubscribes.
pub struct Subscription {
    stream: tonic::Streaming<pb::PubSubMessage>,
}

impl PubSub {
    /// Publishes to `channel`; returns how many live subscribers, on every node, received it.
    pub async fn publish(&self, channel: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> Result<u32, ClientError> {
        let message = pb::PublishRequest {
            channel: channel.into(),
            payload: payload.into(),
            ..Default::default()
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(PubSubClient, c).publish(r).await
            })
            .await?;
        Ok(reply.receivers)
    }

    /// Subscribes to exact `channels` and glob `patterns` (`*`, `?`) on the node this client
    /// talks to. Returns once the subscription is live: anything published after that reaches it.
    pub async fn subscribe(&self, channels: Vec<Vec<u8>>, patterns: Vec<Vec<u8>>) -> Result<Subscription, ClientError> {
        let message = pb::SubscribeRequest { channels, patterns };
        let stream = self
            .client
            .call(false, Duration::ZERO, |channel, deadline| {
                let request = self.client.request(message.clone(), deadline, Duration::ZERO);
                async move {
                    let mut stream = crate::service_client!(PubSubClient, channel)
                        .subscribe(request)
                        .await?
                        .into_inner();
                    // The confirmation: from here on the node delivers to us.
                    stream.message().await?;
                    Ok(stream)
                }
            })
            .await?;
        Ok(Subscription { stream })
    }
}

impl Subscription {
    /// The next message; `None` when the node closed the subscription (it fell behind, or it
    /// is stopping): subscribe again, as after an error.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the connection broke or the node is stopping: subscribe
    /// again, the client then goes to another node (messages published meanwhile are missed).
    pub async fn next(&mut self) -> Option<Result<Published, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

/// Cancel safe: a message is taken from the connection only when it is returned.
impl Stream for Subscription {
    type Item = Result<Published, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx).map(|next| {
            next.map(|received| match received {
                Ok(m) => Ok(Published {
                    channel: m.channel,
                    payload: m.payload,
                    pattern: (!m.pattern.is_empty()).then_some(m.pattern),
                }),
                Err(status) => Err(classify_stream_error(&status)),
            })
        })
    }
}
