//! The lease operations of a command ([`LeaseOp`]), what they answer, and why one is refused
//! ([`LeaseError`]).

use serde::{Deserialize, Serialize};

/// The outcome of a lease operation that did not fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// The caller holds the lease with this fencing token until `expires_at_ms`.
    Granted { token: u64, expires_at_ms: u64 },
    /// Someone else holds it until `expires_at_ms`.
    Held { holder: Vec<u8>, expires_at_ms: u64 },
    /// Released; `was_live` is false when it had already expired.
    Released { was_live: bool },
}

/// Why a lease renew or release was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseLoss {
    /// Nobody holds it (never acquired, released, or expired and taken by nobody).
    NotHeld,
    /// It expired at `expires_at_ms`.
    Expired { expires_at_ms: u64 },
    /// Another holder, or a later grant to the same holder, has it now.
    Superseded { current_token: u64 },
}

/// The lease operations. Applied by `crate::apply::lease`; homed (they apply in the home region
/// only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    Acquire {
        name: Vec<u8>,
        holder: Vec<u8>,
        ttl_ms: u64,
    },
    Renew {
        name: Vec<u8>,
        holder: Vec<u8>,
        token: u64,
        ttl_ms: u64,
    },
    Release {
        name: Vec<u8>,
        holder: Vec<u8>,
        token: u64,
    },
}

impl std::fmt::Display for LeaseOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = crate::apply::lossy;
        match self {
            LeaseOp::Acquire { name, holder, ttl_ms } => write!(
                f,
                "lease acquire {:?} by {:?} for {ttl_ms} ms",
                lossy(name),
                lossy(holder)
            ),
            LeaseOp::Renew {
                name,
                holder,
                token,
                ttl_ms,
            } => write!(
                f,
                "lease renew {:?} by {:?} token {token} for {ttl_ms} ms",
                lossy(name),
                lossy(holder)
            ),
            LeaseOp::Release { name, holder, token } => write!(
                f,
                "lease release {:?} by {:?} token {token}",
                lossy(name),
                lossy(holder)
            ),
        }
    }
}

/// Why a lease operation, or a write fenced by a lease, was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaseError {
    #[error("stale fence: lease {lease:?} token {token} is no longer the live grant ({reason:?})")]
    StaleFence {
        lease: String,
        token: u64,
        reason: LeaseLoss,
    },
    #[error("lease {lease:?} is not held by this holder with token {token} ({reason:?})")]
    NotHeld {
        lease: String,
        token: u64,
        reason: LeaseLoss,
    },
}
