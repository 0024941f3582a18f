//! The Basalt server and the `basalt` command.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod dev_regions;
pub mod http;
pub mod limits;
pub mod local_ports;
pub mod replication;
pub mod server;
pub mod verbs;
pub mod verbs_messaging;
pub mod verbs_regions;
