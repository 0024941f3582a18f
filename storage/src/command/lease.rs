//! The lease outcomes a command answers.

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
