//! Grants and needs: what a role allows, what a request asks for, and whether one covers the
//! other.

use serde::{Deserialize, Serialize};

use crate::limits::PREFIX_BYTES_MAX;

/// An access level. Each includes the ones before it: admin allows write, write allows read.
///
/// Encoded by position in the replicated state (a new one goes last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
    Admin,
}

/// A namespace of names a grant applies to.
///
/// Encoded by position in the replicated state (a new one goes last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Keys of the key-named types: KV, counters, rate limits, leases.
    Key,
    Queue,
    /// Stream topics.
    Topic,
    /// Stream consumer groups.
    Group,
    /// Pub/sub channels.
    Channel,
    /// Ledgers, by their number (a grant's name is one ledger's number in decimal, or empty for
    /// every ledger; it matches whole, not as a prefix).
    Ledger,
    /// Edge-cache purges, by the purged key or tag.
    Cache,
    /// The cluster itself: membership, region topology, users and roles (the name is unused).
    Cluster,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::Read, Access::Write, Access::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Key,
        Scope::Queue,
        Scope::Topic,
        Scope::Group,
        Scope::Channel,
        Scope::Ledger,
        Scope::Cache,
        Scope::Cluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Queue => "queue",
            Scope::Topic => "topic",
            Scope::Group => "group",
            Scope::Channel => "channel",
            Scope::Ledger => "ledger",
            Scope::Cache => "cache",
            Scope::Cluster => "cluster",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `access` on every name of `scope` that starts with `prefix` (the empty prefix: every name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub access: Access,
    pub scope: Scope,
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
}

/// Why a grant's text (`ACCESS:SCOPE:PREFIX`) does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantParseError {
    #[error("grant {text:?} is not ACCESS:SCOPE:PREFIX (e.g. write:key:tenant-a/)")]
    Shape { text: String },
    #[error("grant {text:?}: unknown access {access:?} (read, write or admin)")]
    Access { text: String, access: String },
    #[error("grant {text:?}: unknown scope {scope:?} (key, queue, topic, group, channel, ledger, cache or cluster)")]
    Scope { text: String, scope: String },
    #[error("grant {text:?}: a ledger grant names one ledger number or none, not {name:?}")]
    Ledger { text: String, name: String },
    #[error("grant {text:?}: prefix of {len} bytes, at most {max}")]
    PrefixTooLong { text: String, len: usize, max: usize },
}

impl Grant {
    pub fn new(access: Access, scope: Scope, prefix: impl Into<Vec<u8>>) -> Grant {
        Grant {
            access,
            scope,
            prefix: prefix.into(),
        }
    }

    /// Parses `ACCESS:SCOPE:PREFIX`; the prefix is everything after the second colon (it may
    /// hold colons, and may be empty: every name of the scope).
    pub fn parse(text: &str) -> Result<Grant, GrantParseError> {
        let mut parts = text.splitn(3, ':');
        let (Some(access), Some(scope), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(GrantParseError::Shape { text: text.into() });
        };
        let access = Access::parse(access).ok_or_else(|| GrantParseError::Access {
            text: text.into(),
            access: access.into(),
        })?;
        let scope = Scope::parse(scope).ok_or_else(|| GrantParseError::Scope {
            text: text.into(),
            scope: scope.into(),
        })?;
        let grant = Grant::new(access, scope, prefix.as_bytes());
        grant.validate().map_err(|e| match e {
            GrantParseError::Ledger { name, .. } => GrantParseError::Ledger {
                text: text.into(),
                name,
            },
            GrantParseError::PrefixTooLong { len, max, .. } => GrantParseError::PrefixTooLong {
                text: text.into(),
                len,
                max,
            },
            other => other,
        })?;
        Ok(grant)
    }

    /// Checks what parsing checks, for a grant that arrived as fields.
    pub fn validate(&self) -> Result<(), GrantParseError> {
        if self.prefix.len() > PREFIX_BYTES_MAX {
            return Err(GrantParseError::PrefixTooLong {
                text: self.to_string(),
                len: self.prefix.len(),
                max: PREFIX_BYTES_MAX,
            });
        }
        if self.scope == Scope::Ledger && !self.prefix.is_empty() {
            let ok = std::str::from_utf8(&self.prefix)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|n| n.to_string().as_bytes() == self.prefix.as_slice());
            if !ok {
                return Err(GrantParseError::Ledger {
                    text: self.to_string(),
                    name: String::from_utf8_lossy(&self.prefix).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether this grant allows `need`.
    pub fn allows(&self, need: &Need) -> bool {
        self.scope == need.scope && self.access >= need.access && self.covers(&need.target)
    }

    fn covers(&self, target: &Target) -> bool {
        if self.scope == Scope::Ledger && !self.prefix.is_empty() {
            // Ledger numbers match whole: ledger 1 is not a prefix of ledger 12.
            return matches!(target, Target::Prefix(name) if *name == self.prefix);
        }
        match target {
            Target::Prefix(name) => name.starts_with(&self.prefix),
            Target::Range { start, end } => {
                start.starts_with(&self.prefix)
                    && match prefix_end(&self.prefix) {
                        None => true,
                        Some(limit) => end.as_ref().is_some_and(|end| *end <= limit),
                    }
            }
        }
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.access,
            self.scope,
            String::from_utf8_lossy(&self.prefix)
        )
    }
}

/// The smallest byte string greater than every string that starts with `prefix`; `None` when
/// there is none (the empty prefix, or one of 0xff bytes only): the prefix covers to the end.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The names a request touches in one scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every name that starts with these bytes (one name: the name itself, which any grant
    /// covering it covers, since a grant covers whole prefixes).
    Prefix(Vec<u8>),
    /// The names in `[start, end)` (`end` `None`: to the end of the scope).
    Range { start: Vec<u8>, end: Option<Vec<u8>> },
}

/// What one request asks: `access` on `target` of `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub access: Access,
    pub scope: Scope,
    pub target: Target,
}

impl Need {
    /// `access` on one name (or every name starting with it).
    pub fn on(access: Access, scope: Scope, name: impl Into<Vec<u8>>) -> Need {
        Need {
            access,
            scope,
            target: Target::Prefix(name.into()),
        }
    }

    /// `access` on every name of `scope`.
    pub fn all(access: Access, scope: Scope) -> Need {
        Need::on(access, scope, Vec::new())
    }

    /// `access` on the names in `[start, end)`.
    pub fn range(access: Access, scope: Scope, start: Vec<u8>, end: Option<Vec<u8>>) -> Need {
        Need {
            access,
            scope,
            target: Target::Range { start, end },
        }
    }

    /// `access` on one ledger, by number.
    pub fn ledger(access: Access, ledger: u32) -> Need {
        Need::on(access, Scope::Ledger, ledger.to_string())
    }
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match (&self.target, self.scope) {
            (_, Scope::Cluster) => write!(f, "{} on the cluster", self.access),
            (Target::Prefix(name), _) if name.is_empty() => write!(f, "{} on every {}", self.access, self.scope),
            (Target::Prefix(name), _) => write!(f, "{} on {} {:?}", self.access, self.scope, lossy(name)),
            (Target::Range { start, end }, _) => write!(
                f,
                "{} on {}s [{:?}, {})",
                self.access,
                self.scope,
                lossy(start),
                end.as_deref()
                    .map_or("the end".to_string(), |e| format!("{:?}", lossy(e)))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grants_parse_and_print_back() {
        let g = Grant::parse("write:key:tenant-a/").expect("parse");
        assert_eq!(g, Grant::new(Access::Write, Scope::Key, "tenant-a/"));
        assert_eq!(g.to_string(), "write:key:tenant-a/");
        assert_eq!(Grant::parse("admin:cluster:").expect("parse").prefix, b"");
        assert_eq!(Grant::parse("read:key:a:b").expect("parse").prefix, b"a:b");
        assert!(matches!(Grant::parse("write:key"), Err(GrantParseError::Shape { .. })));
        assert!(matches!(Grant::parse("own:key:x"), Err(GrantParseError::Access { .. })));
        assert!(matches!(
            Grant::parse("read:keys:x"),
            Err(GrantParseError::Scope { .. })
        ));
        assert!(matches!(
            Grant::parse("read:ledger:x"),
            Err(GrantParseError::Ledger { .. })
        ));
        assert!(matches!(
            Grant::parse("read:ledger:07"),
            Err(GrantParseError::Ledger { .. })
        ));
        assert!(Grant::parse("read:ledger:7").is_ok());
        let long = format!("read:key:{}", "x".repeat(PREFIX_BYTES_MAX + 1));
        assert!(matches!(
            Grant::parse(&long),
            Err(GrantParseError::PrefixTooLong { .. })
        ));
    }

    #[test]
    fn levels_include_the_ones_below_and_scopes_stay_apart() {
        let write = Grant::new(Access::Write, Scope::Key, "a/");
        assert!(write.allows(&Need::on(Access::Read, Scope::Key, "a/x")));
        assert!(write.allows(&Need::on(Access::Write, Scope::Key, "a/x")));
        assert!(!write.allows(&Need::on(Access::Admin, Scope::Key, "a/x")));
        assert!(!write.allows(&Need::on(Access::Read, Scope::Queue, "a/x")));
        assert!(!write.allows(&Need::on(Access::Read, Scope::Key, "b/x")));
        // A prefix asked for is covered only when the grant's prefix is a prefix of it.
        assert!(!write.allows(&Need::on(Access::Read, Scope::Key, "a")));
        assert!(!write.allows(&Need::all(Access::Read, Scope::Key)));
    }

    #[test]
    fn ledger_grants_match_whole_numbers() {
        let seven = Grant::parse("write:ledger:7").expect("parse");
        assert!(seven.allows(&Need::ledger(Access::Write, 7)));
        assert!(!seven.allows(&Need::ledger(Access::Write, 70)));
        assert!(!seven.allows(&Need::all(Access::Read, Scope::Ledger)));
        let every = Grant::parse("read:ledger:").expect("parse");
        assert!(every.allows(&Need::ledger(Access::Read, 70)));
        assert!(every.allows(&Need::all(Access::Read, Scope::Ledger)));
    }

    #[test]
    fn ranges_are_covered_only_inside_the_prefix() {
        let g = Grant::new(Access::Read, Scope::Key, "a/");
        assert!(g.allows(&Need::range(
            Access::Read,
            Scope::Key,
            b"a/".to_vec(),
            Some(b"a0".to_vec())
        )));
        assert!(g.allows(&Need::range(
            Access::Read,
            Scope::Key,
            b"a/k".to_vec(),
            Some(b"a/m".to_vec())
        )));
        assert!(!g.allows(&Need::range(
            Access::Read,
            Scope::Key,
            b"a/".to_vec(),
            Some(b"a1".to_vec())
        )));
        assert!(!g.allows(&Need::range(Access::Read, Scope::Key, b"a/".to_vec(), None)));
        assert!(!g.allows(&Need::range(
            Access::Read,
            Scope::Key,
            b"a".to_vec(),
            Some(b"a/z".to_vec())
        )));
        let all = Grant::new(Access::Read, Scope::Key, "");
        assert!(all.allows(&Need::range(Access::Read, Scope::Key, Vec::new(), None)));
    }

    proptest! {
        /// A covered range holds only names the grant covers, checked against brute force over
        /// short names of a small alphabet (with 0xff, where prefix ends carry).
        #[test]
        fn a_covered_range_holds_only_covered_names(
            prefix in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..3),
            start in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..4),
            end in proptest::option::of(proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..4)),
        ) {
            let grant = Grant::new(Access::Read, Scope::Key, prefix.clone());
            let need = Need::range(Access::Read, Scope::Key, start.clone(), end.clone());
            if grant.allows(&need) {
                let alphabet = [0u8, 1, 255];
                let mut names: Vec<Vec<u8>> = vec![Vec::new()];
                for len in 1..=4 {
                    let mut more = Vec::new();
                    for n in names.iter().filter(|n| n.len() == len - 1) {
                        for b in alphabet {
                            let mut m = n.clone();
                            m.push(b);
                            more.push(m);
                        }
                    }
                    names.extend(more);
                }
                for name in names {
                    let inside = name >= start && end.as_ref().is_none_or(|e| name < *e);
                    if inside {
                        prop_assert!(name.starts_with(&prefix), "{name:?} in range but not under {prefix:?}");
                    }
                }
            }
        }

        #[test]
        fn prefix_end_bounds_exactly_the_prefixed_names(
            prefix in proptest::collection::vec(any::<u8>(), 0..4),
            name in proptest::collection::vec(any::<u8>(), 0..6),
        ) {
            let under = name.starts_with(&prefix);
            let inside = name >= prefix && prefix_end(&prefix).is_none_or(|e| name < e);
            prop_assert_eq!(under, inside);
        }
    }
}
