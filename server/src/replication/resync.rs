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
//! Sending a chunk again is safe while nothing else from this region reached the receiver in
//! between: its effects merge idempotently (last-writer-wins registers, counter components,
//! rows as they were in the view), and each chunk is judged against the frontier the receiver
//! had before the re-sync, which only the last chunk raises. The first chunk also resets the
//! receiver's copy of homed rows; it is sent again only when no chunk after it was answered
//! (answers come in order), and then every chunk after it is sent again too. So a re-sync is
//! resumed only by the leader, in the term, that began it, and only when the receiver's
//! watermark is still what it was when it began (nothing else merged meanwhile); otherwise it is
//! let go and a new one begins from the start. Nothing of an older stream merges after a newer
//! one's: the shipper drops what a session queued when it ends, and the receiver merges only
//! from the newest stream of each source it has opened (`Replication::open_stream`).

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
    /// The last time one of its chunks was answered (or it began): a re-sync that makes no
    /// progress is let go after `RESYNC_RESUME_WITHIN`.
    pub(super) last_progress: Instant,
    /// The Raft term of this node's leadership that began it.
    pub(super) term: u64,
    /// The receiver's watermark for this region when it began; it moves only with the last chunk.
    pub(super) watermark: u64,
}

impl ResyncPump {
    /// Starts reading the whole replicated state of `store` (one view, taken now), as region
    /// `source`, in chunks of at most the feed's batch size.
    pub(super) fn start(
        store: basalt_storage::state::rocks::RocksStore,
        source: RegionId,
        term: u64,
        watermark: u64,
    ) -> ResyncPump {
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
            last_progress: Instant::now(),
            term,
            watermark,
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
        self.last_progress = Instant::now();
    }

    /// Whether the re-sync is over: every chunk handed out and answered, the last answer showing
    /// the receiver's watermark `acked` moved to where the last chunk puts it. The watermark
    /// alone does not tell (batches of an earlier stream committing late could move it).
    pub(super) fn finished(&self, acked: u64) -> Option<u64> {
        self.upto.filter(|upto| self.unanswered.is_empty() && acked >= *upto)
    }

    /// Whether a new stream, of this node's leadership in `term`, opened on a receiver whose
    /// watermark is `watermark`, may resume it (see the module doc).
    pub(super) fn resumable(&self, term: u64, watermark: u64) -> bool {
        self.term == term && self.watermark == watermark
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pump_fed(items: Vec<Pumped>) -> ResyncPump {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for item in items {
            assert!(tx.try_send(item).is_ok(), "room in the channel");
        }
        ResyncPump {
            chunks: rx,
            unanswered: VecDeque::new(),
            upto: None,
            last_progress: Instant::now(),
            term: 7,
            watermark: 40,
        }
    }

    fn chunk(n: u8) -> FeedBatch {
        FeedBatch { batch: vec![n] }
    }

    #[test]
    fn it_is_over_only_when_every_chunk_was_handed_out_and_answered() {
        let mut pump = pump_fed(vec![
            Pumped::Chunk(chunk(1)),
            Pumped::Chunk(chunk(2)),
            Pumped::Done { upto: 90 },
        ]);
        for n in [1, 2] {
            assert!(matches!(pump.next_chunk(), Ok(NextChunk::Chunk(c)) if c.batch == vec![n]));
        }
        assert!(matches!(pump.next_chunk(), Ok(NextChunk::NotReady)), "the end marker");
        assert!(matches!(pump.next_chunk(), Ok(NextChunk::NotReady)), "nothing after it");
        // The watermark alone (batches of an earlier stream committing late) does not end it.
        assert_eq!(pump.finished(95), None);
        pump.answered();
        assert_eq!(pump.finished(95), None, "a chunk still unanswered");
        assert_eq!(
            pump.unanswered().map(|c| c.batch.clone()).collect::<Vec<_>>(),
            vec![vec![2]]
        );
        pump.answered();
        assert_eq!(pump.finished(40), None, "answered, but the watermark did not move");
        assert_eq!(pump.finished(90), Some(90));
    }

    #[test]
    fn only_the_same_leadership_on_an_unmoved_watermark_resumes() {
        let pump = pump_fed(vec![]);
        assert!(pump.resumable(7, 40));
        assert!(!pump.resumable(8, 40), "another term");
        assert!(!pump.resumable(7, 41), "the receiver merged something meanwhile");
        assert!(!pump.resumable(7, 0), "the receiver was restored");
    }

    #[test]
    fn a_reader_that_failed_or_vanished_ends_the_re_sync() {
        let mut failed = pump_fed(vec![Pumped::Failed(StoreError::CorruptSnapshot {
            path: "test".into(),
            reason: "a test".into(),
        })]);
        assert!(matches!(failed.next_chunk(), Err(ResyncError::Store(_))));
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let mut gone = pump_fed(vec![]);
        gone.chunks = rx;
        assert!(matches!(gone.next_chunk(), Err(ResyncError::ReaderGone)));
    }
}
