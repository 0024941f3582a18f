//! Pub/sub: `SUBSCRIBE` / `PSUBSCRIBE` / `UNSUBSCRIBE` / `PUNSUBSCRIBE` / `PUBLISH` on Basalt's
//! pub/sub (docs/data-types/pubsub-watch.md).
//!
//! Each channel or pattern a connection subscribes to is one SDK subscription, read by a task
//! of its own that turns every message into a push for the connection (`message` / `pmessage`,
//! an array in RESP2, a push in RESP3). A subscription is live when its reply is sent: anything
//! published after that reaches it. Delivery is at most once, as in Redis: a message published
//! while a subscription is being re-established after a node failure is missed.

use std::collections::BTreeMap;
use std::time::Duration;

use basalt_client::Client;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::command::Bytes;
use crate::frame::Reply;
use crate::limits::SUBSCRIPTIONS_MAX;
use crate::reply_error::client_error;

/// What a subscription is to: an exact channel or a glob pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Channel,
    Pattern,
}

impl Kind {
    fn subscribed(self) -> &'static str {
        match self {
            Kind::Channel => "subscribe",
            Kind::Pattern => "psubscribe",
        }
    }

    fn unsubscribed(self) -> &'static str {
        match self {
            Kind::Channel => "unsubscribe",
            Kind::Pattern => "punsubscribe",
        }
    }
}

/// A message for the connection, from the subscription it names.
pub struct Push {
    kind: Kind,
    name: Bytes,
    /// Which subscription of that name: one dropped and taken again is another.
    generation: u64,
    pub reply: Reply,
}

/// A connection's subscriptions, each with the task that forwards its messages.
pub struct Subscriptions {
    forwarders: BTreeMap<(Kind, Bytes), (u64, JoinHandle<()>)>,
    next_generation: u64,
    pushes: mpsc::Sender<Push>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (_, task) in self.forwarders.values() {
            task.abort();
        }
    }
}

impl Subscriptions {
    /// Messages go to `pushes`, which the connection writes out between its replies.
    pub fn new(pushes: mpsc::Sender<Push>) -> Subscriptions {
        Subscriptions {
            forwarders: BTreeMap::new(),
            next_generation: 0,
            pushes,
        }
    }

    /// Whether `push` comes from a subscription the connection still has. Messages queued before
    /// an `UNSUBSCRIBE` are dropped here: in RESP2 a message after the last unsubscribe
    /// confirmation would be read as the reply of the client's next command.
    pub fn is_current(&self, push: &Push) -> bool {
        self.forwarders
            .get(&(push.kind, push.name.clone()))
            .is_some_and(|(generation, _)| *generation == push.generation)
    }

    /// How many channels and patterns the connection is subscribed to.
    pub fn count(&self) -> usize {
        self.forwarders.len()
    }

    /// Subscribes to each name not yet subscribed; one reply per name, as Redis sends them.
    pub async fn subscribe(&mut self, client: &Client, kind: Kind, names: Vec<Bytes>) -> Vec<Reply> {
        if names.len() > SUBSCRIPTIONS_MAX {
            return vec![too_many()];
        }
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            if !self.forwarders.contains_key(&(kind, name.clone())) {
                if self.forwarders.len() >= SUBSCRIPTIONS_MAX {
                    replies.push(too_many());
                    break;
                }
                let (channels, patterns) = match kind {
                    Kind::Channel => (vec![name.clone()], Vec::new()),
                    Kind::Pattern => (Vec::new(), vec![name.clone()]),
                };
                let subscription = match client.pubsub().subscribe(channels.clone(), patterns.clone()).await {
                    Ok(subscription) => subscription,
                    Err(e) => {
                        // The cluster refused or failed: the names after this one are not tried
                        // (one command costs at most one failed call).
                        replies.push(client_error(&e));
                        break;
                    }
                };
                let generation = self.next_generation;
                self.next_generation += 1;
                let task = tokio::spawn(forward(
                    client.clone(),
                    subscription,
                    Source {
                        kind,
                        name: name.clone(),
                        generation,
                        channels,
                        patterns,
                    },
                    self.pushes.clone(),
                ));
                self.forwarders.insert((kind, name.clone()), (generation, task));
            }
            replies.push(Reply::Push(vec![
                Reply::bulk(kind.subscribed()),
                Reply::Bulk(name),
                Reply::Integer(self.count() as i64),
            ]));
        }
        replies
    }

    /// Unsubscribes from `names`, or from every name of `kind` when none is given.
    pub fn unsubscribe(&mut self, kind: Kind, names: Vec<Bytes>) -> Vec<Reply> {
        if names.len() > SUBSCRIPTIONS_MAX {
            return vec![too_many()];
        }
        let names: Vec<Bytes> = if names.is_empty() {
            self.forwarders
                .keys()
                .filter(|(k, _)| *k == kind)
                .map(|(_, n)| n.clone())
                .collect()
        } else {
            names
        };
        if names.is_empty() {
            return vec![Reply::Push(vec![
                Reply::bulk(kind.unsubscribed()),
                Reply::Null,
                Reply::Integer(self.count() as i64),
            ])];
        }
        names
            .into_iter()
            .map(|name| {
                if let Some((_, task)) = self.forwarders.remove(&(kind, name.clone())) {
                    task.abort();
                }
                Reply::Push(vec![
                    Reply::bulk(kind.unsubscribed()),
                    Reply::Bulk(name),
                    Reply::Integer(self.count() as i64),
                ])
            })
            .collect()
    }
}

fn too_many() -> Reply {
    Reply::error(format!(
        "ERR at most {SUBSCRIPTIONS_MAX} channels and patterns per connection, and per command"
    ))
}

/// What one forwarder reads and how its messages are labelled.
struct Source {
    kind: Kind,
    name: Bytes,
    generation: u64,
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
}

/// Forwards one subscription's messages until the connection goes away (its pushes channel
/// closes) or the subscription is dropped; when the node it reads from fails, subscribes again.
async fn forward(
    client: Client,
    mut subscription: basalt_client::Subscription,
    source: Source,
    pushes: mpsc::Sender<Push>,
) {
    loop {
        while let Some(Ok(message)) = subscription.next().await {
            let reply = match message.pattern {
                Some(pattern) => Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::Bulk(pattern),
                    Reply::Bulk(message.channel),
                    Reply::Bulk(message.payload),
                ]),
                None => Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::Bulk(message.channel),
                    Reply::Bulk(message.payload),
                ]),
            };
            let push = Push {
                kind: source.kind,
                name: source.name.clone(),
                generation: source.generation,
                reply,
            };
            if pushes.send(push).await.is_err() {
                return;
            }
        }
        // The subscription ended (its node went away): subscribe again, pausing between tries.
        loop {
            if pushes.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(again) = client
                .pubsub()
                .subscribe(source.channels.clone(), source.patterns.clone())
                .await
            {
                subscription = again;
                break;
            }
        }
    }
}
