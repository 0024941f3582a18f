//! The Rust SDK for Basalt, and the API contract (`proto/basalt.proto`) every server and client
//! shares. It depends on neither openraft nor RocksDB: an application links only this.
//!
//! ```no_run
//! # async fn demo() -> Result<(), basalt_client::ClientError> {
//! let client = basalt_client::Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! client.kv().put("greeting", "hello").await?;
//! let value = client.kv().get("greeting").await?;
//! assert_eq!(value.map(|v| v.value), Some(b"hello".to_vec()));
//! let visits = client.counter("visits").incr(5).await?;
//! # let _ = visits;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - Writes go to the leader (found and followed through redirects) and are acknowledged once
//!   committed on a majority, durably.
//! - Every mutating call carries `(client_id, seq)`; the SDK retries it with the same pair after a
//!   leader change or a lost connection, and the cluster applies it at most once.
//! - Reads are linearizable unless made with [`ReadConsistency::Stale`].
//! - A call that gives up after its deadline returns [`ClientError::Unavailable`] whose
//!   `outcome_unknown` tells whether a mutation may still have been applied.

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub mod auth;
pub mod cache;
mod client;
mod coalesce;
pub mod consumer;
mod counter;
mod error;
mod kv;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod pubsub;
pub mod queue;
mod rate;
mod rate_shadow;
pub mod stream;
pub mod txn;
pub mod watch;

pub mod pb {
    tonic::include_proto!("basalt.v1");
}

pub use auth::{Auth, RoleInfo, UserInfo, WhoAmI};
pub use basalt_auth::token::Token;
pub use basalt_auth::{Access, Grant, Scope};
pub use basalt_tls::{ClientTls, Connector as TlsConnector, TlsError};
pub use cache::{Cache, LaggingNode, NodeCacheStats, PurgeReceipt, PurgeTarget};
pub use client::{Client, ClientOptions, InProcessNode, ReadConsistency, RegionMap, Transport, TransportError};
pub use consumer::{ConsumedRecord, Consumer, ConsumerOptions, ReplayOptions, ReplaySummary, StartFrom};
pub use counter::window;
pub use counter::{CounterChange, CounterHandle, CounterOp, CounterOutcome, CounterValue, Counters, Windows};
pub use error::{never_sent, ClientError, ErrorCode, ERROR_CODE_KEY, LEADER_KEY, OLDEST_REVISION_KEY};

/// The `authorization` scheme of a root-token call run as a user ([`Client::acting_as`]):
/// `ActAs USER TOKEN`.
pub const ACT_AS_SCHEME: &str = "ActAs";
pub use kv::{CasOutcome, DeleteOutcome, Kv, KvEntry, PutIfAbsent, PutOptions, ScanPage};
pub use lease::{Acquired, LeaseGrant, LeaseHandle, LeaseState};
pub use ledger::Ledger;
pub use pubsub::{PubSub, Published, Subscription};
pub use queue::{
    AckResult, Enqueued, Message, NewMessage, QueueHandle, QueueInfo, QueueOptions, QueueStats, ReceiveOptions,
};
pub use rate::{DecidedBy, RateCheck, RateDecision, RateLimit, RateLimiter, RateVerdict, WhenUnreachable};
pub use rate_shadow::SHADOW_KEYS_MAX;
pub use stream::{
    Assignor, FetchOptions, Fetched, FetchedRecord, JoinOptions, Membership, Produced, Producer, Record, Streams,
    TimeOffset, TopicInfo, TopicListing, TopicOptions, TrimRule,
};
pub use txn::{TxnBuilder, TxnOp, TxnOpResult, TxnOutcome};
pub use watch::{Watch, WatchEvent, WatchEventKind};

/// Every request message of the API, decoded from random bytes: prost answers a message or a
/// `DecodeError`, never a panic, and never allocates by a length the bytes do not hold. (What a
/// decoded request may hold is then each handler's to check, with typed errors.)
#[cfg(test)]
mod request_decoding_tests {
    use proptest::prelude::*;
    use prost::Message;

    use crate::pb;

    fn decode_every_request(bytes: &[u8]) {
        let _ = pb::AccountFilter::decode(bytes);
        let _ = pb::AckBatchRequest::decode(bytes);
        let _ = pb::AckRequest::decode(bytes);
        let _ = pb::AddNodeRequest::decode(bytes);
        let _ = pb::AddTokenRequest::decode(bytes);
        let _ = pb::AuthListRequest::decode(bytes);
        let _ = pb::DeleteRoleRequest::decode(bytes);
        let _ = pb::DeleteUserRequest::decode(bytes);
        let _ = pb::PutRoleRequest::decode(bytes);
        let _ = pb::PutUserRequest::decode(bytes);
        let _ = pb::RemoveTokenRequest::decode(bytes);
        let _ = pb::WhoAmIRequest::decode(bytes);
        let _ = pb::CachePurgeRequest::decode(bytes);
        let _ = pb::CacheStatsRequest::decode(bytes);
        let _ = pb::ChangeRegionsRequest::decode(bytes);
        let _ = pb::CommitOffsetsRequest::decode(bytes);
        let _ = pb::CommittedRequest::decode(bytes);
        let _ = pb::CounterApplyRequest::decode(bytes);
        let _ = pb::CounterGetRequest::decode(bytes);
        let _ = pb::CounterWindowsRequest::decode(bytes);
        let _ = pb::CreateAccountsRequest::decode(bytes);
        let _ = pb::CreateQueueRequest::decode(bytes);
        let _ = pb::CreateTopicRequest::decode(bytes);
        let _ = pb::CreateTransfersRequest::decode(bytes);
        let _ = pb::DeleteQueueRequest::decode(bytes);
        let _ = pb::DeleteTopicRequest::decode(bytes);
        let _ = pb::TrimRequest::decode(bytes);
        let _ = pb::EnqueueRequest::decode(bytes);
        let _ = pb::ExtendRequest::decode(bytes);
        let _ = pb::FetchRequest::decode(bytes);
        let _ = pb::GroupMemberRequest::decode(bytes);
        let _ = pb::JoinGroupRequest::decode(bytes);
        let _ = pb::KvBatchRequest::decode(bytes);
        let _ = pb::KvDeleteRequest::decode(bytes);
        let _ = pb::KvGetManyRequest::decode(bytes);
        let _ = pb::KvGetRequest::decode(bytes);
        let _ = pb::KvPutRequest::decode(bytes);
        let _ = pb::KvScanRequest::decode(bytes);
        let _ = pb::LeaseAcquireRequest::decode(bytes);
        let _ = pb::LeaseGetRequest::decode(bytes);
        let _ = pb::LeaseReleaseRequest::decode(bytes);
        let _ = pb::LeaseRenewRequest::decode(bytes);
        let _ = pb::ListQueuesRequest::decode(bytes);
        let _ = pb::ListTopicsRequest::decode(bytes);
        let _ = pb::LookupRequest::decode(bytes);
        let _ = pb::NackRequest::decode(bytes);
        let _ = pb::OffsetForTimeRequest::decode(bytes);
        let _ = pb::ProduceRequest::decode(bytes);
        let _ = pb::PromoteRequest::decode(bytes);
        let _ = pb::PublishRequest::decode(bytes);
        let _ = pb::PurgeRequest::decode(bytes);
        let _ = pb::QueueStatsRequest::decode(bytes);
        let _ = pb::RateCheckRequest::decode(bytes);
        let _ = pb::ReceiveRequest::decode(bytes);
        let _ = pb::RedriveRequest::decode(bytes);
        let _ = pb::RegionsRequest::decode(bytes);
        let _ = pb::RemoveNodeRequest::decode(bytes);
        let _ = pb::StatusRequest::decode(bytes);
        let _ = pb::SubscribeRequest::decode(bytes);
        let _ = pb::TopicRequest::decode(bytes);
        let _ = pb::TxnRequest::decode(bytes);
        let _ = pb::WatchRequest::decode(bytes);
    }

    proptest! {
        #[test]
        fn random_bytes_decode_as_any_request_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_every_request(&bytes);
        }

        #[test]
        fn a_mutated_put_decodes_or_fails_cleanly(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let request = pb::KvPutRequest {
                key: b"orders/7".to_vec(),
                value: vec![3; 40],
                ..Default::default()
            };
            let mut bytes = request.encode_to_vec();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            decode_every_request(&bytes);
            bytes.truncate(cut.index(bytes.len() + 1));
            decode_every_request(&bytes);
        }
    }
}
