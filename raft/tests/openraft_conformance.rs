//! openraft's own storage conformance suite (`openraft::testing::log::Suite`) run against
//! Basalt's log store (the segmented log) and state machine (RocksDB): vote, log reads, purge,
//! truncation, membership and applied state, snapshot build and transfer, as openraft expects
//! them. Every case opens a fresh store in a temporary directory.

use std::sync::Arc;

use basalt_raft::log_store::LogStore;
use basalt_raft::state_machine::StateMachine;
use basalt_raft::TypeConfig;
use basalt_storage::hlc::Hlc;
use basalt_storage::log::LogOptions;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

fn storage_error(e: impl std::error::Error + 'static) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&e))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(storage_error)?;
        // Small segments, so the suite's purges and truncations cross segment boundaries.
        let log = LogStore::open(
            &dir.path().join("log"),
            LogOptions {
                segment_bytes_max: 4096 + 512,
                segment_entries_max: 4,
            },
        )
        .map_err(storage_error)?;
        let state = StateMachine::open(dir.path(), Arc::new(Hlc::new())).map_err(storage_error)?;
        Ok((dir, log, state))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_store_and_state_machine_pass_openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage conformance suite");
}
