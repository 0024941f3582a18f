//! Regions and the links between them.
//!
//! For now this crate holds the link simulator, which both the fault-injection harness
//! (`jepsen/`) and multi-region topologies use:
//! - [`link`]: the state of every directed link (cut, latency, jitter), shared and observable;
//! - [`partition`]: pure constructors of the link cuts for the classic partition shapes;
//! - [`proxy`]: a TCP proxy per directed pair of endpoints that enforces the link state on real
//!   connections.

pub mod link;
pub mod partition;
pub mod proxy;

pub use link::{LinkState, Links};
pub use partition::Cuts;
pub use proxy::LinkProxy;
