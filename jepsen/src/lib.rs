//! Basalt's fault-injection harness, after Jepsen: it runs real `basalt` node processes on
//! loopback, routes every node-to-node connection through link proxies it controls
//! (`basalt-regions`), drives concurrent clients while a nemesis injects faults, records the
//! history, checks it, and writes a report.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod regions;
pub mod report;
pub mod run;
pub mod storage_fault;
pub mod workload;
