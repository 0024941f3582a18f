//! KV watch: every change under a prefix from a revision on, in order and without gaps,
//! resumed transparently on another node when a connection breaks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;

use crate::client::Client;
use crate::error::{classify_stream_error, ClientError};
use crate::pb;
use crate::pb::kv_client::KvClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    pub key: Vec<u8>,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The revision of the change (several keys may share one, e.g. an expiry sweep).
    pub revision: u64,
    pub create_revision: u64,
    pub version: u64,
}

/// A watch stream being opened (or reopened on another node): the stream and the revision its
/// first message confirms.
type Opening = Pin<Box<dyn Future<Output = Result<(tonic::Streaming<pb::WatchResponse>, u64), ClientError>> + Send>>;

/// Opens a watch of `prefix` from `from_revision` on whichever node answers.
fn open(client: Client, prefix: Vec<u8>, from_revision: u64) -> Opening {
    Box::pin(async move {
        let message = pb::WatchRequest { prefix, from_revision };
        client
            .call(false, Duration::ZERO, |channel, deadline| {
                let request = client.request(message.clone(), deadline, Duration::ZERO);
                async move {
                    let mut stream = crate::service_client!(KvClient, channel)
                        .watch(request)
                        .await?
                        .into_inner();
                    let first = stream.message().await?.unwrap_or_default();
                    Ok((stream, first.revision))
                }
            })
            .await
    })
}

/// A running watch. Read it with [`Watch::next`], or as a [`Stream`] (any `StreamExt`
/// combinator).
pub struct Watch {
    client: Client,
    prefix: Vec<u8>,
    /// The first revision not yet received: where a reconnect resumes.
    next_revision: u64,
    stream: Option<tonic::Streaming<pb::WatchResponse>>,
    /// Reopening after the connection broke, from `next_revision`.
    opening: Option<Opening>,
    buffered: VecDeque<WatchEvent>,
}

fn event_of(e: pb::WatchEvent) -> WatchEvent {
    WatchEvent {
        kind: if e.kind == pb::watch_event::Kind::Delete as i32 {
            WatchEventKind::Delete
        } else {
            WatchEventKind::Put
        },
        key: e.key,
        value: e.value,
        revision: e.revision,
        create_revision: e.create_revision,
        version: e.version,
    }
}

impl Watch {
    /// Starts watching; returns once the watch is live. `from_revision` 0 means "changes after
    /// now".
    pub(crate) async fn start(client: Client, prefix: Vec<u8>, from_revision: u64) -> Result<Watch, ClientError> {
        let (stream, confirmed) = open(client.clone(), prefix.clone(), from_revision).await?;
        let mut watch = Watch {
            client,
            prefix,
            next_revision: from_revision,
            stream: None,
            opening: None,
            buffered: VecDeque::new(),
        };
        watch.opened(stream, confirmed);
        Ok(watch)
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    fn opened(&mut self, stream: tonic::Streaming<pb::WatchResponse>, confirmed: u64) {
        // The first message confirms the start: every revision up to `confirmed` is before it.
        self.next_revision = self.next_revision.max(confirmed + 1);
        self.stream = Some(stream);
    }

    /// The next change.
    ///
    /// # Errors
    /// [`ClientError::Compacted`] when the watch fell behind the kept history;
    /// [`ClientError::Unavailable`] when no node could resume it within the request timeout.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

/// Cancel safe: an event is taken from the watch only when it is returned, and a reopening in
/// progress is kept for the next poll.
impl Stream for Watch {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(opening) = this.opening.as_mut() {
                let opened = ready!(opening.as_mut().poll(cx));
                this.opening = None;
                match opened {
                    Ok((stream, confirmed)) => this.opened(stream, confirmed),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                continue;
            }
            let Some(stream) = this.stream.as_mut() else {
                this.opening = Some(open(this.client.clone(), this.prefix.clone(), this.next_revision));
                continue;
            };
            match ready!(Pin::new(stream).poll_next(cx)) {
                Some(Ok(response)) => {
                    this.buffered.extend(response.events.into_iter().map(event_of));
                    this.next_revision = this.next_revision.max(response.revision + 1);
                }
                // The node went away or closed the stream: resume elsewhere from next_revision.
                None => this.stream = None,
                Some(Err(status)) => match classify_stream_error(&status) {
                    e @ ClientError::Compacted { .. } => return Poll::Ready(Some(Err(e))),
                    ClientError::Unavailable { .. } => this.stream = None,
                    other => return Poll::Ready(Some(Err(other))),
                },
            }
        }
    }
}

impl crate::Kv {
    /// Watches every key starting with `prefix` (empty: all keys) from `from_revision` on (0:
    /// from now). Changes come in revision order, with no gaps, across leader changes and node
    /// failures.
    pub async fn watch(&self, prefix: impl Into<Vec<u8>>, from_revision: u64) -> Result<Watch, ClientError> {
        Watch::start(self.client.clone(), prefix.into(), from_revision).await
    }
}
