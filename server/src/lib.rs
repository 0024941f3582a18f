//! One Basalt node.
//!
//! Owns: the node's configuration ([`config`]), its start and stop ([`server`]: the data directory,
//! Raft, the listeners; `stopping`: the stop's bounded waits), the client gRPC API ([`api`]: one
//! file per service, each converting protobuf to `basalt-storage` calls and back), who may call it
//! ([`access`]: tokens and the needs of every RPC; what a grant means is `basalt-auth`'s),
//! `/metrics` and `/health` ([`http`]), the file descriptors it may open and how many connections
//! its listeners may hold ([`descriptors`]), the client API called in-process by the clients
//! running inside the node ([`in_process`]), the edge cache's HTTP listener ([`edge`]: origins,
//! coalescing, answers; the caching rules and the object store are `basalt-edge`'s), the
//! cross-region shipping runtime ([`replication`]: the feed shipper and receiver, homed data), and
//! the server's limits ([`limits`]). It may not hold apply or read logic of a data type (that is
//! `basalt-storage`'s), nor anything of the command line (`basalt-cli`).

pub mod access;
pub mod api;
pub mod config;
pub mod descriptors;
pub mod edge;
pub mod http;
pub mod in_process;
pub mod limits;
pub mod replication;
pub mod server;
pub(crate) mod stopping;
