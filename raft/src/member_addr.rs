//! A member's addresses as Raft's membership keeps them: the client API's, and the peer
//! listener's when the node has one.
//!
//! openraft's membership gives each node one address string ([`openraft::BasicNode`]`::addr`),
//! which Basalt persists in its data format. So that members added before peer listeners existed
//! read as they always did, both addresses share that string: `CLIENT` alone (Raft goes to the
//! client port, as before peer listeners), or `CLIENT peer=PEER`. Words after the first that
//! this build does not know are skipped, so a later build can add some.

/// The separator between the client address and the named words after it.
const WORD_SEPARATOR: char = ' ';
const PEER_WORD: &str = "peer=";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Where clients reach the node (gRPC): leader redirects, the SDK, the CLI.
    pub client: String,
    /// Where other members reach it for Raft and their own calls (relays, purge confirmations);
    /// `None`: the client address serves those too.
    pub peer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member address {text:?}: {reason}")]
pub struct BadMemberAddr {
    pub text: String,
    pub reason: &'static str,
}

impl MemberAddr {
    /// Reads a membership address string. Never fails on what [`MemberAddr::to_membership`]
    /// wrote; fails on an empty client address or an empty `peer=`.
    pub fn parse(text: &str) -> Result<MemberAddr, BadMemberAddr> {
        let bad = |reason| BadMemberAddr {
            text: text.to_string(),
            reason,
        };
        let mut words = text.split(WORD_SEPARATOR).filter(|w| !w.is_empty());
        let client = words.next().ok_or_else(|| bad("no client address"))?.to_string();
        let mut peer = None;
        for word in words {
            if let Some(addr) = word.strip_prefix(PEER_WORD) {
                if addr.is_empty() {
                    return Err(bad("an empty peer address"));
                }
                peer = Some(addr.to_string());
            }
        }
        Ok(MemberAddr { client, peer })
    }

    /// The string kept in the membership.
    pub fn to_membership(&self) -> String {
        match &self.peer {
            None => self.client.clone(),
            Some(peer) => format!("{}{WORD_SEPARATOR}{PEER_WORD}{peer}", self.client),
        }
    }

    /// Where Raft traffic to this member goes.
    pub fn raft(&self) -> &str {
        self.peer.as_deref().unwrap_or(&self.client)
    }

    /// The client address in a membership string; the string itself when it does not parse (it
    /// then names nothing better).
    pub fn client_of(membership: &str) -> String {
        MemberAddr::parse(membership).map_or_else(|_| membership.to_string(), |m| m.client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_member_of_an_earlier_build_is_its_client_address() {
        let old = MemberAddr::parse("127.0.0.1:9101").expect("parses");
        assert_eq!(old.client, "127.0.0.1:9101");
        assert_eq!(old.peer, None);
        assert_eq!(old.raft(), "127.0.0.1:9101");
        assert_eq!(old.to_membership(), "127.0.0.1:9101");
    }

    #[test]
    fn the_peer_address_rides_after_the_client_s_and_unknown_words_are_skipped() {
        let member = MemberAddr::parse("127.0.0.1:9101 peer=127.0.0.1:9201 tls=node-1").expect("parses");
        assert_eq!(member.client, "127.0.0.1:9101");
        assert_eq!(member.raft(), "127.0.0.1:9201");
        assert_eq!(member.to_membership(), "127.0.0.1:9101 peer=127.0.0.1:9201");
        assert_eq!(MemberAddr::client_of("[::1]:9101 peer=[::1]:9201"), "[::1]:9101");
        assert!(MemberAddr::parse("").is_err());
        assert!(MemberAddr::parse("   ").is_err());
        assert!(MemberAddr::parse("a:1 peer=").is_err());
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(client in "[a-z0-9.:\\[\\]]{1,30}", peer in proptest::option::of("[a-z0-9.:\\[\\]]{1,30}")) {
            let member = MemberAddr { client, peer };
            prop_assert_eq!(MemberAddr::parse(&member.to_membership()), Ok(member));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_a_panic(text in "\\PC{0,60}") {
            let _ = MemberAddr::parse(&text);
            let _ = MemberAddr::client_of(&text);
        }
    }
}
