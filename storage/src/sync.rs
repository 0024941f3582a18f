//! Synchronisation primitives, swapped for loom's under `cfg(loom)` so the concurrent parts can be
//! model-checked (see `log::group_commit`).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex};
