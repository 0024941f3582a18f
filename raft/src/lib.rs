//! openraft glue for Basalt: the type config, the log store and state machine adapters over
//! `basalt-storage`, and the gRPC Raft network.
//!
//! Owns: how openraft's storage and network traits map onto Basalt's log, state store and gRPC,
//! and who may talk Raft to this node (the cluster id in [`cluster_guard`], mutual TLS on the
//! peer listener through `basalt-tls`).
//! May not touch: what an op means (apply and reads are `basalt-storage`'s) or the client API
//! (`basalt-server`'s).

pub mod cluster_guard;
pub mod limits;
pub mod log_store;
pub mod member_addr;
pub mod network;
pub mod state_machine;

pub mod pb {
    tonic::include_proto!("basalt.raft");
}

use basalt_storage::command::{Command, Response};

openraft::declare_raft_types!(
    /// Basalt's Raft types: entries carry a [`Command`], apply yields a [`Response`].
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    basalt_codec::encode(value)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    basalt_codec::decode(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// What the crate's tests build entries from.
#[cfg(test)]
pub(crate) mod test_entries {
    use basalt_storage::command::{Command, KvOp, Op};
    use basalt_storage::hlc::HlcStamp;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use crate::{Entry, TypeConfig};

    /// Entry `index` of `term` (leader node 1): a put of key `index` (big-endian) with a value of
    /// `value_bytes` sevens.
    pub(crate) fn put_entry(term: u64, index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: log_id::<TypeConfig>(term, 1, index),
            payload: EntryPayload::Normal(Command {
                stamp: HlcStamp::default(),
                session: None,
                fence: None,
                op: Op::Kv(KvOp::Put {
                    key: index.to_be_bytes().to_vec(),
                    value: vec![7; value_bytes],
                    ttl_ms: None,
                    expect: None,
                }),
            }),
        }
    }
}
