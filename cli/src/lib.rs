//! The `basalt` command.
//!
//! Owns: the command line ([`commands`]: parsing, `basalt start`, and the `kv`, `counter` and
//! `cluster` verbs), the verbs of the other data types ([`verbs`], one file per type), the local
//! multi-node and multi-region cluster ([`dev`], [`dev_regions`]), the load generator
//! ([`bench`]), certificates for peer TLS ([`certs`]), `basalt demo` ([`demo`]: the systems of `basalt-examples` on a temporary
//! cluster) and how every command writes to stdout ([`output`]). It talks to nodes only through
//! the SDK (`basalt-client`), and starts a node only through `basalt_server::server::run`: it
//! may not reach into the server's API, storage or Raft.

pub mod bench;
pub mod certs;
pub mod commands;
pub mod demo;
pub mod dev;
pub mod dev_regions;
pub mod output;
pub mod verbs;

pub use commands::{main, parse_duration};
