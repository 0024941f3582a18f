//! The Redis protocol in front of a Basalt region.
//!
//! Owns: the RESP2/RESP3 wire format ([`frame`]), Redis's glob patterns ([`glob`]), the command
//! table with Redis's replies and errors ([`command`]), and the server a node runs on
//! `--resp-listen` ([`server`], one task per [`connection`]), which runs each command as calls
//! of the Rust SDK: strings and keys in [`keys`], concurrent writes of one key combined into one
//! in [`combine`], `MULTI`/`EXEC` in [`multi`], pub/sub in [`pubsub`]; every command of one key (strings, hashes,
//! sorted sets) as a pure decision over the key as read in [`decide`], hashes and sorted sets
//! stored as one KV value each ([`typed`], queries in [`sorted_sets`]); streams as one-partition
//! topics in [`streams`] (ids, entries and group rows, pure, in [`stream_ids`]).
//!
//! May not touch: storage, Raft or the server's API internals. Every command reaches the
//! cluster through `basalt-client`, the way every other client does (sessions and
//! exactly-once retries, leader redirects, the leader's merging of concurrent writes), so RESP
//! is another door to the same request path, not a side door around it.

pub mod combine;
pub mod command;
pub mod connection;
pub mod decide;
pub mod frame;
pub mod glob;
pub mod keys;
pub mod limits;
pub mod multi;
pub mod pubsub;
pub mod reply_error;
pub mod server;
pub mod sorted_sets;
pub mod stream_append;
pub mod stream_ids;
pub mod streams;
pub mod typed;

pub use server::{serve, RespConfig, REDIS_VERSION};
