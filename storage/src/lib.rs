//! Basalt's storage layer: everything a node keeps on disk, and the pure logic that changes and
//! reads it. No async, no Raft types, no network: those belong to `basalt-raft` and
//! `basalt-server`, which call in here.
//!
//! Two engines, kept apart as TiKV keeps its raft and kv engines:
//! - [`log`]: the Raft log as our own segment files (crc32-framed records, a durable mark in each
//!   segment's header, an in-memory offset index, torn-write recovery, group commit, fail-stop on
//!   a failed fsync), over a file-system trait the crash suite simulates. No RocksDB here.
//! - [`state`]: the state store on RocksDB (one column family per data type) plus snapshots.
//!
//! [`data_dir`] stamps a node's data directory with the data format its records are written in
//! ([`basalt_codec`]) and refuses a directory of another format; [`cluster_id`] keeps the id of
//! the cluster the node belongs to there.
//!
//! Between them sits [`apply`]: the pure, deterministic apply logic of each data type. It sees only
//! the [`state::StoreRead`] trait, so it is tested against an in-memory model.

pub mod apply;
pub mod cluster_id;
pub mod command;
pub mod data_dir;
pub mod hlc;
pub mod ledger;
pub mod limits;
pub mod log;
pub mod queue;
pub mod state;
pub mod stream;
mod sync;
