//! A full re-sync to one remote region, kept across feed streams.
//!
//! When the feed no longer holds what a region is missing, the whole replicated state goes
//! instead, read from one consistent view. A blocking task holds that view and hands out chunks
//! on demand; the chunks sent and not yet answered are kept here. A stream that breaks halfway
//! (a cut link, a leader change on the other side, the peer listener renewing its connections
//! every `PEER_CONNECTION_AGE_MAX`) is followed by one that sends those chunks again and goes on
//! from there, instead of a re-sync begun again from the start, which a state taking longer than
//! one connection's life to cross would never finish.
//!
//! Sending a chunk again is safe: its effects merge idempotently (last-writer-wins registers,
//! counter components, rows as they were in the view), and each chunk is judged against the
//! frontier the receiver had before the re-sync, which only the last chunk raises. The first
//! chunk also resets the receiver's copy of homed rows; it is sent again only when no chunk after
//! it was answered (answers come in order), and then every chunk after it is sent again too.

use std::collections::VecDeque;
use std::time::Instant;

use basalt_replication::pb::FeedBatch;
use basalt_replication::RegionId;
use basalt_storage::apply::replication::{resync_batches, ResyncChunkLimits};
use basalt_storage::state::StoreError;
use tokio::sync::mpsc;

use crate::limits::{FEED_BATCH_BYTES_MAX, FEED_BATCH_ENTRIES_MAX, FEED_WINDOW_BATCHES};

/// What the reading task hands out, in order.
enum Pumped {
    Chunk(FeedBatch),
    /// Every chunk has been handed out; the last one moves the receiver's watermark to `upto`.
    Done {
        upto: u64,
    },
    /// Reading the view failed: the re-sync cannot go on.
    Failed(StoreError),
}

/// What [`ResyncPump::next_chunk`] found.
pub(super) enum NextChunk {
    Chunk(FeedBatch),
    /// None ready yet: the reading task is behind, or every chunk was handed out.
    NotReady,
}

/// A full re-sync in progress to one region (see the module doc).
pub(super) struct ResyncPump {
    chunks: mpsc::Receiver<Pumped>,
    /// Chunks sent on the current or an earlier stream and not answered, oldest first.
    unanswered: VecDeque<FeedBatch>,
    /// Set once every chunk was handed out: the watermark the last one moves the receiver to.
    upto: Option<u64>,
    /// The last time a stream sent or had answered one of its chunks.
    pub(super) last_used: Instant,
}

impl ResyncPump {
    /// Starts reading the whole replicated state of `store` (one view, taken now), as region
    /// `source`, in chunks of at most the feed's batch size.
    pub(super) fn start(store: basalt_storage::state::rocks::RocksStore, source: RegionId) -> ResyncPump {
        // Read ahead at most one window: the view is held, not the state copied into memory.
        let (tx, rx) = mpsc::channel(FEED_WINDOW_BATCHES);
        tokio::task::spawn_blocking(move || {
            let limits = ResyncChunkLimits {
                bytes: FEED_BATCH_BYTES_MAX,
                effects: FEED_BATCH_ENTRIES_MAX * 8,
            };
            let view = store.view();
            // The role read in the same view as the state it ships (whether homed rows go too).
            let read = basalt_storage::apply::topology::region_role(&view).and_then(|role| {
                resync_batches(&view, source, role, limits, |batch| {
                    tx.blocking_send(Pumped::Chunk(super::shipper::batch_message(&batch)))
                        .is_ok()
                })
            });
            // A send failing means the pump was dropped: nobody is left to tell.
            let _ = match read {
                Ok(Some((upto, _chunks))) => tx.blocking_send(Pumped::Done { upto }),
                Ok(None) => Ok(()),
                Err(e) => tx.blocking_send(Pumped::Failed(e)),
            };
        });
        ResyncPump {
            chunks: rx,
            unanswered: VecDeque::new(),
            upto: None,
            last_used: Instant::now(),
        }
    }

    /// The chunks a new stream must send first: those no stream has had answered.
    pub(super) fn unanswered(&self) -> impl Iterator<Item = &FeedBatch> {
        self.unanswered.iter()
    }

    /// The next chunk to send, taken as sent (kept until answered), without waiting.
    pub(super) fn next_chunk(&mut self) -> Result<NextChunk, ResyncError> {
        if self.upto.is_some() {
            return Ok(NextChunk::NotReady);
        }
        match self.chunks.try_recv() {
            Ok(Pumped::Chunk(chunk)) => {
                self.unanswered.push_back(chunk.clone());
                self.last_used = Instant::now();
                Ok(NextChunk::Chunk(chunk))
            }
            Ok(Pumped::Done { upto }) => {
                self.upto = Some(upto);
                Ok(NextChunk::NotReady)
            }
            Ok(Pumped::Failed(e)) => Err(ResyncError::Store(e)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(NextChunk::NotReady),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(ResyncError::ReaderGone),
        }
    }

    /// One of this stream's chunks was answered (answers come in the order chunks were sent).
    pub(super) fn answered(&mut self) {
        self.unanswered.pop_front();
        self.last_used = Instant::now();
    }

    /// Whether the receiver's watermark `acked` shows the last chunk merged: the re-sync is over.
    pub(super) fn finished(&self, acked: u64) -> Option<u64> {
        self.upto.filter(|upto| acked >= *upto)
    }

    /// How many chunks are sent and unanswered.
    pub(super) fn in_flight(&self) -> usize {
        self.unanswered.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ResyncError {
    #[error("reading the state to re-sync: {0}")]
    Store(StoreError),
    #[error("the task reading the state to re-sync ended before handing out every chunk")]
    ReaderGone,
}
