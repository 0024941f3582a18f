//! How an SDK error reads to a Redis client.
//!
//! Redis clients look at the first word of an error. Refusals of bad input keep `ERR`, as Redis
//! would answer them; the two ways a cluster can fail a command get words of their own, because
//! a client must treat them differently: `TRYAGAIN` means nothing was applied (retry freely),
//! `UNCERTAIN` means a write may or may not have been applied (read before retrying a
//! non-idempotent command such as `INCR`).

use basalt_client::{ClientError, ErrorCode};

use crate::frame::Reply;

pub fn client_error(e: &ClientError) -> Reply {
    match e {
        ClientError::Rejected { code, message } => match code {
            ErrorCode::EmptyKey => Reply::error("ERR empty keys are not supported: Basalt keys are 1 to 4096 bytes"),
            ErrorCode::KeyTooLarge | ErrorCode::ValueTooLarge | ErrorCode::InvalidTtl | ErrorCode::InvalidArgument => {
                Reply::error(format!("ERR {message}"))
            }
            ErrorCode::TooLarge | ErrorCode::BatchTooLarge => Reply::error(format!("ERR {message}")),
            _ => Reply::error(format!("ERR {}: {message}", code.as_str())),
        },
        ClientError::Unavailable {
            outcome_unknown: false, ..
        } => Reply::error(format!("TRYAGAIN nothing was applied: {e}")),
        ClientError::Unavailable { .. } | ClientError::OutcomeUnknown { .. } => {
            Reply::error(format!("UNCERTAIN the write may or may not have been applied: {e}"))
        }
        other => Reply::error(format!("ERR {other}")),
    }
}
