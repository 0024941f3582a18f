//! Errors and their stable codes. The node maps its errors to these codes in one place; the SDK
//! maps statuses back here.

use tonic::{Code, Status};

/// Metadata key carrying an error's stable code on every error status.
pub const ERROR_CODE_KEY: &str = "basalt-error";
/// Metadata key carrying the leader's address on a `NOT_LEADER` status.
pub const LEADER_KEY: &str = "basalt-leader";
/// Metadata key carrying the oldest revision still watchable on a `COMPACTED` status.
pub const OLDEST_REVISION_KEY: &str = "basalt-oldest-revision";

macro_rules! error_codes {
    ($($variant:ident = $text:literal => $grpc:ident,)*) => {
        /// A stable error code (the `basalt-error` metadata value).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text,)* }
            }

            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text { $($text => Some(ErrorCode::$variant),)* _ => None }
            }

            /// The gRPC status code this error travels with.
            pub fn grpc_code(self) -> Code {
                match self { $(ErrorCode::$variant => Code::$grpc,)* }
            }
        }
    };
}

error_codes! {
    NotLeader = "NOT_LEADER" => FailedPrecondition,
    EmptyKey = "EMPTY_KEY" => InvalidArgument,
    KeyTooLarge = "KEY_TOO_LARGE" => InvalidArgument,
    ValueTooLarge = "VALUE_TOO_LARGE" => InvalidArgument,
    InvalidTtl = "INVALID_TTL" => InvalidArgument,
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument,
    OutOfRange = "OUT_OF_RANGE" => InvalidArgument,
    BatchTooLarge = "BATCH_TOO_LARGE" => InvalidArgument,
    // A request (or a merge of requests) larger than one log entry holds; nothing was proposed.
    TooLarge = "TOO_LARGE" => InvalidArgument,
    CounterOverflow = "COUNTER_OVERFLOW" => FailedPrecondition,
    BoundExceeded = "BOUND_EXCEEDED" => FailedPrecondition,
    // With regions: a change toward a counter's lower bound beyond this region's escrow.
    EscrowExceeded = "ESCROW_EXCEEDED" => FailedPrecondition,
    // A windowed counter change for a window past its retention.
    WindowClosed = "WINDOW_CLOSED" => FailedPrecondition,
    // A windowed counter change dated too far ahead of the cluster's time.
    WindowNotOpen = "WINDOW_NOT_OPEN" => FailedPrecondition,
    StaleFence = "STALE_FENCE" => FailedPrecondition,
    LeaseNotHeld = "LEASE_NOT_HELD" => FailedPrecondition,
    SessionExpired = "SESSION_EXPIRED" => FailedPrecondition,
    CorruptValue = "CORRUPT_VALUE" => DataLoss,
    MembershipRejected = "MEMBERSHIP_REJECTED" => FailedPrecondition,
    NotFound = "NOT_FOUND" => NotFound,
    StaleReceipt = "STALE_RECEIPT" => FailedPrecondition,
    OffsetOutOfRange = "OFFSET_OUT_OF_RANGE" => OutOfRange,
    OutOfOrderSequence = "OUT_OF_ORDER_SEQUENCE" => FailedPrecondition,
    IllegalGeneration = "ILLEGAL_GENERATION" => FailedPrecondition,
    NotAssigned = "NOT_ASSIGNED" => FailedPrecondition,
    // Creating a topic whose earlier namesake is still being deleted: retry shortly.
    TopicBeingDeleted = "TOPIC_BEING_DELETED" => FailedPrecondition,
    // Creating a queue whose earlier namesake is still being deleted: retry shortly.
    QueueBeingDeleted = "QUEUE_BEING_DELETED" => FailedPrecondition,
    // Deleting a queue that another queue names as its dead-letter queue.
    QueueInUse = "QUEUE_IN_USE" => FailedPrecondition,
    // Deleting or redriving a queue before the home region's leader has built its dead-letter
    // indexes (once, on queues an older build wrote): `QueueHandle::delete` and `redrive` wait
    // for it; retry shortly.
    QueueIndexBuilding = "QUEUE_INDEX_BUILDING" => Unavailable,
    // A TTL given to a counter that holds a value without one (a TTL is set at creation).
    CounterNotExpiring = "COUNTER_NOT_EXPIRING" => FailedPrecondition,
    // Among regions, a bounded change of a counter that expires (or is created with a TTL):
    // bounds among regions are kept by escrow, which expiring counters do not have.
    CounterBoundOnExpiring = "COUNTER_BOUND_ON_EXPIRING" => FailedPrecondition,
    Compacted = "COMPACTED" => OutOfRange,
    // A region topology change that does not fit the replicated topology (`basalt regions`).
    InvalidTopology = "INVALID_TOPOLOGY" => FailedPrecondition,
    // A feed batch or escrow transfer naming a region this region's topology does not hold.
    UnknownRegion = "UNKNOWN_REGION" => FailedPrecondition,
    // A write to data homed in another region (ledgers, leases, queues) could not reach that
    // region, and no attempt can have reached it: nothing was applied anywhere. Not retried by
    // the SDK: the caller decides.
    RegionUnavailable = "REGION_UNAVAILABLE" => Unavailable,
    // The request reached a node (or the home region) and may or may not have been applied: a
    // retry with the same session applies it at most once. The SDK retries it like UNAVAILABLE.
    OutcomeUnknown = "OUTCOME_UNKNOWN" => Unavailable,
    Unavailable = "UNAVAILABLE" => Unavailable,
    Internal = "INTERNAL" => Internal,
    // No credentials, or ones the node does not know (a missing, wrong or removed token).
    Unauthenticated = "UNAUTHENTICATED" => Unauthenticated,
    // The caller's roles grant no access the request needs; the message names the one missing.
    PermissionDenied = "PERMISSION_DENIED" => PermissionDenied,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request was refused; nothing changed.
    #[error("{code}: {message}")]
    Rejected { code: ErrorCode, message: String },
    /// A mutation may or may not have been applied, and retrying here cannot tell: the node
    /// failed after proposing it (`INTERNAL`), or its session was forgotten before a retry could
    /// read the saved answer (`SESSION_EXPIRED`). Read the state to find out.
    #[error("outcome unknown ({code}): {message}")]
    OutcomeUnknown { code: ErrorCode, message: String },
    /// No node answered in time. For a mutation, `outcome_unknown` is true when some attempt
    /// reached a node: the write may or may not have been applied.
    #[error("cluster unavailable after {attempts} attempts (outcome unknown: {outcome_unknown}): {last_error}")]
    Unavailable {
        attempts: u32,
        outcome_unknown: bool,
        last_error: String,
    },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("no endpoints given")]
    NoEndpoints,
    /// A token that cannot travel in a header (it holds characters other than visible ASCII).
    #[error("the token holds characters a header cannot carry")]
    InvalidToken,
    #[error("unknown region {region:?} (the deployment has {known:?})")]
    UnknownRegion { region: String, known: Vec<String> },
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// A watch asked for history that is no longer kept; `oldest` is the oldest revision left.
    #[error("watch history is compacted: the oldest revision kept is {oldest}")]
    Compacted { oldest: u64, message: String },
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::OutcomeUnknown { code, .. } => Some(*code),
            ClientError::Unavailable { .. } => Some(ErrorCode::Unavailable),
            ClientError::Compacted { .. } => Some(ErrorCode::Compacted),
            _ => None,
        }
    }
}

/// What one failed attempt means for the retry loop.
pub(crate) enum Attempt {
    /// Retry at once on this address (the leader's).
    Redirect(Option<String>),
    /// Retry on another node after a pause; `reached` says the request may have been delivered.
    Retry {
        reached: bool,
        message: String,
    },
    Fail(ClientError),
}

/// What a status received in the middle of a stream means for its reader.
pub(crate) fn classify_stream_error(status: &Status) -> ClientError {
    match classify(status, false) {
        Attempt::Fail(e) => e,
        Attempt::Redirect(_) => ClientError::Unavailable {
            attempts: 1,
            outcome_unknown: false,
            last_error: status.message().to_string(),
        },
        Attempt::Retry { message, .. } => ClientError::Unavailable {
            attempts: 1,
            outcome_unknown: false,
            last_error: message,
        },
    }
}

/// Whether a failed call certainly never reached the remote node: a transport failure to
/// connect at all (refused, unresolvable). A typed status is an answer from a node, which may
/// have acted on the request; and a broken, reset or closed connection may have carried it
/// first ("connection reset", "connection closed before message completed"), so only the
/// phrases of a failed connect count.
pub fn never_sent(status: &Status) -> bool {
    if status.metadata().get(ERROR_CODE_KEY).is_some() {
        return false;
    }
    let message = status.message();
    [
        "error trying to connect",
        "tcp connect error",
        "Connection refused",
        "dns error",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// What a failed attempt means; `mutation` marks requests that change state, for which an
/// `INTERNAL` or `SESSION_EXPIRED` answer leaves the outcome unknown rather than refused.
pub(crate) fn classify(status: &Status, mutation: bool) -> Attempt {
    let code = status
        .metadata()
        .get(ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse);
    match code {
        Some(ErrorCode::NotLeader) => {
            let leader = status
                .metadata()
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Attempt::Redirect(leader.filter(|l| !l.is_empty()))
        }
        Some(ErrorCode::Compacted) => Attempt::Fail(ClientError::Compacted {
            oldest: status
                .metadata()
                .get(OLDEST_REVISION_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            message: status.message().to_string(),
        }),
        Some(ErrorCode::Unavailable | ErrorCode::OutcomeUnknown) => Attempt::Retry {
            reached: true,
            message: status.message().to_string(),
        },
        Some(code @ (ErrorCode::Internal | ErrorCode::SessionExpired)) if mutation => {
            Attempt::Fail(ClientError::OutcomeUnknown {
                code,
                message: status.message().to_string(),
            })
        }
        Some(code) => Attempt::Fail(ClientError::Rejected {
            code,
            message: status.message().to_string(),
        }),
        None => match status.code() {
            // Transport failures: the request may not have left this process, or the connection
            // broke after sending it. Treat both as maybe-delivered unless clearly a connect error.
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown | Code::Aborted => {
                Attempt::Retry {
                    reached: !never_sent(status),
                    message: status.message().to_string(),
                }
            }
            _ => Attempt::Fail(ClientError::Protocol(format!(
                "{}: {}",
                status.code(),
                status.message()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::KeyTooLarge,
            ErrorCode::SessionExpired,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    fn typed(code: ErrorCode) -> Status {
        let mut status = Status::new(code.grpc_code(), "refused");
        status
            .metadata_mut()
            .insert(ERROR_CODE_KEY, code.as_str().parse().expect("ascii"));
        status
    }

    /// Issue 15, part 5: no code that may follow an applied write is taken as a refusal.
    #[test]
    fn a_code_that_may_follow_an_applied_write_is_never_a_rejection() {
        for code in [ErrorCode::Internal, ErrorCode::SessionExpired] {
            assert!(
                matches!(classify(&typed(code), true), Attempt::Fail(ClientError::OutcomeUnknown { code: c, .. }) if c == code),
                "{code}"
            );
            // For a read, nothing was changed either way.
            assert!(matches!(
                classify(&typed(code), false),
                Attempt::Fail(ClientError::Rejected { .. })
            ));
        }
        assert!(matches!(
            classify(&typed(ErrorCode::OutcomeUnknown), true),
            Attempt::Retry { reached: true, .. }
        ));
        // Nothing was applied anywhere: a refusal.
        assert!(matches!(
            classify(&typed(ErrorCode::RegionUnavailable), true),
            Attempt::Fail(ClientError::Rejected {
                code: ErrorCode::RegionUnavailable,
                ..
            })
        ));
    }

    #[test]
    fn only_a_failed_connect_is_certainly_not_sent() {
        assert!(never_sent(&Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)"
        )));
        for maybe_sent in [
            "connection reset",
            "connection closed before message completed",
            "transport error: disconnected",
        ] {
            assert!(!never_sent(&Status::unavailable(maybe_sent)), "{maybe_sent}");
        }
        assert!(!never_sent(&typed(ErrorCode::Unavailable)));
    }

    #[test]
    fn not_leader_status_redirects_to_the_hinted_leader() {
        let mut status = Status::failed_precondition("not leader");
        status
            .metadata_mut()
            .insert(ERROR_CODE_KEY, "NOT_LEADER".parse().expect("ascii"));
        status
            .metadata_mut()
            .insert(LEADER_KEY, "127.0.0.1:7002".parse().expect("ascii"));
        assert!(matches!(classify(&status, true), Attempt::Redirect(Some(a)) if a == "127.0.0.1:7002"));
    }

    #[test]
    fn typed_rejection_is_not_retried() {
        let mut status = Status::invalid_argument("key too large");
        status
            .metadata_mut()
            .insert(ERROR_CODE_KEY, "KEY_TOO_LARGE".parse().expect("ascii"));
        assert!(matches!(
            classify(&status, true),
            Attempt::Fail(ClientError::Rejected {
                code: ErrorCode::KeyTooLarge,
                ..
            })
        ));
    }
}
