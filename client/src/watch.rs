//! KV watch: every change under a prefix from a revision on, in order and without gaps,
//! resumed transparently on another node when a connection breaks.

use std::collections::VecDeque;
use std::time::Duration;

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

/// A running watch. Read it with [`Watch::next`].
pub struct Watch {
    client: Client,
    prefix: Vec<u8>,
    /// The first revision not yet received: where a reconnect resumes.
    next_revision: u64,
    stream: Option<tonic::Streaming<pb::WatchResponse>>,
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
        let mut watch = Watch {
            client,
            prefix,
            next_revision: from_revision,
            stream: None,
            buffered: VecDeque::new(),
        };
        watch.open().await?;
        Ok(watch)
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    async fn open(&mut self) -> Result<(), ClientError> {
        let message = pb::WatchRequest {
            prefix: self.prefix.clone(),
            from_revision: self.next_revision,
        };
        let client = self.client.clone();
        let (stream, confirmed) = client
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
            .await?;
        // The first message confirms the start: every revision up to `confirmed` is before it.
        self.next_revision = self.next_revision.max(confirmed + 1);
        self.stream = Some(stream);
        Ok(())
    }

    /// The next change.
    ///
    /// # Errors
    /// [`ClientError::Compacted`] when the watch fell behind the kept history;
    /// [`ClientError::Unavailable`] when no node could resume it within the request timeout.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.open().await {
                    return Some(Err(e));
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) => {
                    self.buffered.extend(response.events.into_iter().map(event_of));
                    self.next_revision = self.next_revision.max(response.revision + 1);
                }
                // The node went away or closed the stream: resume elsewhere from next_revision.
                Ok(None) => self.stream = None,
                Err(status) => match classify_stream_error(&status) {
                    e @ ClientError::Compacted { .. } => return Some(Err(e)),
                    ClientError::Unavailable { .. } => self.stream = None,
                    other => return Some(Err(other)),
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
