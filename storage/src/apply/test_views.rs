//! Test support for reads: a [`ViewSource`] that commits a batch between a read's internal reads,
//! so a test can check that a read sees one view (the batch whole or not at all).

use std::cell::{Cell, RefCell};

use crate::apply::WriteSet;
use crate::state::rocks::{RocksStore, RocksView};
use crate::state::{KeyRange, KeyValue, StoreError, StoreRead, Table, ViewSource};

/// Internal pages a test scan may read before it is taken for a scan that never ends.
pub(crate) const TEST_SCAN_PAGES_MAX: usize = 64;

/// Hands out the store's own views, and commits `batch` to the store just after the view
/// read numbered `commit_after_read` (counted over every view it handed out): an entry
/// applied while a read runs, at the worst moment the test picks.
pub(crate) struct Meddler<'s> {
    store: &'s RocksStore,
    commit_after_read: usize,
    batch: RefCell<Option<WriteSet>>,
    reads: Cell<usize>,
    /// Scans read through the views handed out so far.
    pub(crate) scans: Cell<usize>,
}

impl<'s> Meddler<'s> {
    pub(crate) fn new(store: &'s RocksStore, commit_after_read: usize, batch: WriteSet) -> Meddler<'s> {
        Meddler {
            store,
            commit_after_read,
            batch: RefCell::new(Some(batch)),
            reads: Cell::new(0),
            scans: Cell::new(0),
        }
    }

    /// Whether the batch was committed in the middle of the reading: after the read it was to
    /// follow, and with at least one read after it (a commit after the last read tests nothing).
    pub(crate) fn landed(&self) -> bool {
        self.batch.borrow().is_none() && self.reads.get() > self.commit_after_read
    }

    fn after_read(&self) {
        self.reads.set(self.reads.get() + 1);
        if self.reads.get() == self.commit_after_read {
            if let Some(batch) = self.batch.borrow_mut().take() {
                self.store.commit(&batch).expect("commit");
            }
        }
    }
}

pub(crate) struct MeddledView<'v> {
    view: RocksView<'v>,
    meddler: &'v Meddler<'v>,
}

impl StoreRead for MeddledView<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.view.get(table, key);
        self.meddler.after_read();
        read
    }

    fn scan(&self, table: Table, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.meddler.scans.set(self.meddler.scans.get() + 1);
        assert!(
            self.meddler.scans.get() <= TEST_SCAN_PAGES_MAX,
            "the scan read {TEST_SCAN_PAGES_MAX} internal pages of a handful of keys: it never ends"
        );
        let read = self.view.scan(table, range, limit);
        self.meddler.after_read();
        read
    }
}

impl<'s> ViewSource for Meddler<'s> {
    type View<'a>
        = MeddledView<'a>
    where
        Self: 'a;

    fn view(&self) -> MeddledView<'_> {
        MeddledView {
            view: self.store.view(),
            meddler: self,
        }
    }
}

/// Applies `commands` in one batch on top of `store`'s state and returns the writes, uncommitted:
/// a batch for a [`Meddler`] to commit in the middle of a read.
pub(crate) fn batch_of(store: &RocksStore, first_index: u64, commands: &[crate::command::Command]) -> WriteSet {
    let mut applier = crate::apply::Applier::load(store).expect("load the applier");
    let mut writes = WriteSet::default();
    for (index, command) in (first_index..).zip(commands) {
        applier.apply(store, &mut writes, index, command).expect("apply");
    }
    writes
}

/// Commits what `commands` write, applied from index `first_index` on.
pub(crate) fn apply_all(store: &RocksStore, first_index: u64, commands: &[crate::command::Command]) {
    let writes = batch_of(store, first_index, commands);
    store.commit(&writes).expect("commit");
}

/// A fresh store in a temporary directory.
pub(crate) fn open_store() -> (tempfile::TempDir, RocksStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path().join("state")).expect("open");
    (dir, store)
}

/// The reads of several records that the API serves from one view (`counter get`, `describe_topic`)
/// see a batch applied in the middle of them whole or not at all.
mod one_view_reads {
    use super::*;
    use crate::apply::tests::{cmd, incr_op};
    use crate::apply::{counter, stream};
    use crate::command::{Op, StreamOp};
    use crate::stream::{ProduceRecord, TopicConfig};

    #[test]
    fn counter_values_read_together_come_from_one_view() {
        let (_dir, store) = open_store();
        apply_all(&store, 1, &[cmd(1, incr_op("a", 1)), cmd(2, incr_op("b", 1))]);
        // One entry moves one unit from a to b: a reader must never see the sum change.
        let transfer = Op::Counter {
            ops: match (incr_op("a", -1), incr_op("b", 1)) {
                (Op::Counter { ops: mut a }, Op::Counter { ops: b }) => {
                    a.extend(b);
                    a
                }
                _ => unreachable!("incr_op builds counter ops"),
            },
        };
        let batch = batch_of(&store, 3, &[cmd(3, transfer)]);
        let meddler = Meddler::new(&store, 1, batch);
        let values = counter::get_values(&meddler, &[b"a".to_vec(), b"b".to_vec(), b"never".to_vec()]).expect("read");
        assert!(meddler.landed(), "the transfer committed in the middle of the read");
        assert_eq!(values, vec![1, 1, 0], "the view taken before the transfer, whole");
        assert_eq!(
            counter::get_values(&store, &[b"a".to_vec(), b"b".to_vec()]).expect("read"),
            vec![0, 2],
            "the transfer, once committed"
        );
    }

    #[test]
    fn a_counter_that_does_not_decode_is_corruption_naming_its_key() {
        let (_dir, store) = open_store();
        let mut writes = WriteSet::default();
        writes.put(Table::Counter, b"bad".to_vec(), vec![0xff; 3]);
        store.commit(&writes).expect("commit");
        let e = counter::get_values(&store, &[b"bad".to_vec()]).expect_err("corrupt");
        match &e {
            StoreError::CorruptRecord { table, key, .. } => {
                assert_eq!(*table, Table::Counter);
                assert_eq!(key, &format!("{:02x?}", b"bad"));
            }
            other => panic!("not a corrupt record: {other}"),
        }
    }

    #[test]
    fn a_topic_is_described_from_one_view() {
        let (_dir, store) = open_store();
        let create = Op::Stream(StreamOp::CreateTopic {
            topic: b"t".to_vec(),
            config: TopicConfig {
                partitions: 2,
                retention_ms: None,
                retention_bytes: None,
                mirror: false,
            },
        });
        apply_all(&store, 1, &[cmd(1, create)]);
        let record = |partition: u32| ProduceRecord {
            partition: Some(partition),
            key: Vec::new(),
            value: b"v".to_vec(),
            headers: Vec::new(),
            sequence: None,
        };
        // One entry appends to both partitions.
        let produce = Op::Stream(StreamOp::Produce {
            topic: b"t".to_vec(),
            records: vec![record(0), record(1)],
            producer: None,
        });
        let batch = batch_of(&store, 2, &[cmd(2, produce)]);
        let meddler = Meddler::new(&store, 2, batch);
        let (config, partitions) = stream::describe(&meddler, b"t").expect("read").expect("a topic");
        assert_eq!(config.partitions, 2);
        let ends: Vec<u64> = partitions.iter().map(|p| p.next_offset).collect();
        assert!(meddler.landed(), "the appends committed in the middle of the read");
        assert_eq!(ends, vec![0, 0], "the view taken before the appends, whole");
        let (_, partitions) = stream::describe(&store, b"t").expect("read").expect("a topic");
        assert_eq!(partitions.iter().map(|p| p.next_offset).collect::<Vec<_>>(), vec![1, 1]);
        assert!(
            stream::describe(&store, b"missing").expect("read").is_err(),
            "an unknown topic is refused"
        );
    }
}
