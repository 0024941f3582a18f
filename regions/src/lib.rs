//! Regions and the links between them: how a multi-region deployment is laid out, and the
//! simulated WAN the tests, the harness and `basalt dev` put between regions. It holds no Raft,
//! storage or replication logic (the cross-region code map is in `docs/architecture.md`).
//!
//! - [`topology`]: regions, their nodes and the WAN links between them (`basalt dev --topology`);
//!
//! and the link simulator, which both the fault-injection harness (`jepsen/`) and multi-region
//! topologies use:
//! - [`link`]: the state of every directed link (cut, latency, jitter, loss, bandwidth), shared
//!   and observable;
//! - [`partition`]: pure constructors of the link cuts for the classic partition shapes;
//! - [`proxy`]: a TCP proxy per directed pair of endpoints that enforces the link state on real
//!   connections.

pub mod limits;
pub mod link;
pub mod partition;
pub mod proxy;
pub mod topology;

pub use link::{LinkState, Links};
pub use partition::Cuts;
pub use proxy::LinkProxy;
pub use topology::Topology;
