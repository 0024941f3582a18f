//! The cluster id: a random 128-bit name a cluster gets when it is bootstrapped, kept by every
//! member in its data directory (`CLUSTER_ID`) and named on every Raft message, so that a node of
//! another cluster (a wrong `--peers` list, a reused address) is refused instead of voting in or
//! appending to this one.
//!
//! The id is not a secret and not an authentication: anyone who can reach the peer port can name
//! it (mutual TLS on the peer port is what keeps strangers out). It guards against mistakes.
//!
//! The pure rule is [`admit`]; [`read`] and [`stamp`] keep the id in the data directory.

use std::path::Path;

use crate::data_dir::{read_small_file, write_file_durably, DataDirError, SmallFile};

/// The file holding a member's cluster id, in its data directory: the id's 32 hex digits and a
/// newline.
pub const CLUSTER_ID_FILE: &str = "CLUSTER_ID";
/// The longest `CLUSTER_ID` file read, in bytes.
const CLUSTER_ID_FILE_BYTES_MAX: u64 = 64;
/// The id's length as text, in hex digits.
const CLUSTER_ID_HEX_DIGITS: usize = 32;

/// A cluster's id, printed as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(u128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a cluster id: expected 32 hex digits (as `basalt cluster status` prints it)")]
pub struct NotAClusterId {
    pub text: String,
}

impl ClusterId {
    /// A new random id, from the operating system's random source.
    pub fn random() -> std::io::Result<ClusterId> {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(ClusterId(u128::from_be_bytes(bytes)))
    }

    /// Parses the id's printed form: exactly 32 hex digits (either case).
    pub fn parse(text: &str) -> Result<ClusterId, NotAClusterId> {
        let not = || NotAClusterId { text: text.to_string() };
        if text.len() != CLUSTER_ID_HEX_DIGITS || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not());
        }
        u128::from_str_radix(text, 16).map(ClusterId).map_err(|_| not())
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What a node does with a peer's message, given its own cluster id and the one the message
/// names (or the peer's reply names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// This node has no id yet and the peer names one: accepted, and the node may take the id
    /// (durably) once the message has passed every other check, if it is one a leader sends (an
    /// append or a snapshot; never a vote, which any candidate sends, nor a reply).
    MayAdopt(ClusterId),
    /// The peer belongs to another cluster, or names none while this node has one.
    Refuse {
        ours: ClusterId,
        theirs: Option<ClusterId>,
    },
}

/// The rule, on both sides of every Raft exchange:
/// - the same id, or none on either side (a cluster bootstrapped before cluster ids): accept;
/// - two ids: refuse;
/// - this node has an id and the peer names none: refuse. Such a peer is of a cluster from
///   before cluster ids, or lost its `CLUSTER_ID`; accepting it would let two clusters talk.
///   (An old cluster gets an id by a rolling restart with `--cluster-id` on every node.)
/// - this node has none and the peer names one: accept, and the caller may adopt it
///   ([`Admission::MayAdopt`]). A node is bootstrapped with an id or given one with
///   `--cluster-id`; every other member takes it from its first append or snapshot.
pub fn admit(ours: Option<ClusterId>, theirs: Option<ClusterId>) -> Admission {
    match (ours, theirs) {
        (Some(ours), theirs) if theirs != Some(ours) => Admission::Refuse { ours, theirs },
        (None, Some(theirs)) => Admission::MayAdopt(theirs),
        _ => Admission::Accept,
    }
}

/// The cluster id kept in `dir`, `None` when there is none yet.
pub fn read(dir: &Path) -> Result<Option<ClusterId>, DataDirError> {
    let path = dir.join(CLUSTER_ID_FILE);
    if !path.try_exists().map_err(crate::data_dir::io("stat", &path))? {
        return Ok(None);
    }
    let malformed = |content: String| DataDirError::MalformedClusterId {
        path: path.clone(),
        content,
    };
    match read_small_file(&path, CLUSTER_ID_FILE_BYTES_MAX)? {
        SmallFile::Bad(why) => Err(malformed(why)),
        SmallFile::Text(text) => match text.strip_suffix('\n').map(ClusterId::parse) {
            Some(Ok(id)) => Ok(Some(id)),
            _ => Err(malformed(text)),
        },
    }
}

/// Keeps `id` in `dir`, durably (written whole, fsynced, renamed, the directory fsynced) before
/// this returns: a node that accepted a message naming an id never restarts without it.
pub fn stamp(dir: &Path, id: ClusterId) -> Result<(), DataDirError> {
    write_file_durably(dir, CLUSTER_ID_FILE, format!("{id}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_id_parses_back_from_its_printed_form(raw: u128) {
            let id = ClusterId(raw);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 32);
            prop_assert_eq!(ClusterId::parse(&text), Ok(id));
            prop_assert_eq!(ClusterId::parse(&text.to_uppercase()), Ok(id));
        }

        #[test]
        fn any_other_text_is_refused_without_a_panic(text in ".{0,40}") {
            let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
            prop_assert_eq!(ClusterId::parse(&text).is_ok(), valid);
        }
    }

    #[test]
    fn two_ids_refuse_each_other_and_a_node_without_one_adopts() {
        let (a, b) = (ClusterId(1), ClusterId(2));
        assert_eq!(admit(Some(a), Some(a)), Admission::Accept);
        assert_eq!(
            admit(Some(a), Some(b)),
            Admission::Refuse {
                ours: a,
                theirs: Some(b)
            }
        );
        assert_eq!(admit(None, Some(b)), Admission::MayAdopt(b));
        assert_eq!(admit(Some(a), None), Admission::Refuse { ours: a, theirs: None });
        assert_eq!(admit(None, None), Admission::Accept);
    }

    #[test]
    fn random_ids_differ() {
        let a = ClusterId::random().expect("random");
        let b = ClusterId::random().expect("random");
        assert_ne!(a, b);
    }

    #[test]
    fn the_id_is_kept_whole_and_a_damaged_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        let id = ClusterId(0x00ab_cdef);
        stamp(dir.path(), id).expect("stamp");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CLUSTER_ID_FILE)).expect("file"),
            "00000000000000000000000000abcdef\n"
        );
        assert_eq!(read(dir.path()).expect("read"), Some(id));
        assert!(!dir.path().join("CLUSTER_ID.tmp").exists());
        for bad in [&b"abc\n"[..], b"00000000000000000000000000abcdef", &[b'0'; 100]] {
            std::fs::write(dir.path().join(CLUSTER_ID_FILE), bad).expect("write");
            let e = read(dir.path()).expect_err("damaged");
            assert!(e.to_string().contains(CLUSTER_ID_FILE), "{e}");
        }
    }
}
