//! Roles, users and the table a door looks identities up in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::grant::{Grant, GrantParseError, Need};
use crate::limits::{GRANTS_PER_ROLE_MAX, NAME_BYTES_MAX, ROLES_PER_USER_MAX, TOKENS_PER_USER_MAX};
use crate::token::TokenHash;

/// The identity of the root token (a node's `[auth] root_token_file`): every access, and the
/// one credential nodes use with each other. No user may take the name.
pub const ROOT_USER: &str = "root";

/// A named set of grants (replicated state, table `Auth`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub grants: Vec<Grant>,
}

/// A user: its roles and the SHA-256 of each of its bearer tokens (replicated state, table
/// `Auth`). The tokens themselves are never stored or logged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub roles: Vec<String>,
    pub tokens: Vec<TokenHash>,
}

/// Why a change to users or roles is refused. Nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthError {
    #[error("{what} name {name:?} is invalid: 1 to {max} bytes of letters, digits, '.', '_', '-' and '@'", max = NAME_BYTES_MAX)]
    InvalidName { what: String, name: String },
    #[error("the user name {ROOT_USER:?} belongs to the root token")]
    ReservedName,
    #[error("{what}: {len}, at most {max}")]
    TooMany { what: String, len: usize, max: usize },
    #[error("invalid grant: {reason}")]
    InvalidGrant { reason: String },
    #[error("no role {role:?}")]
    UnknownRole { role: String },
    #[error("no user {user:?}")]
    UnknownUser { user: String },
    #[error("role {role:?} is held by user {user:?} (and maybe others): take it from them first")]
    RoleInUse { role: String, user: String },
    #[error("user {user:?} has no token {token_id:?}")]
    UnknownToken { user: String, token_id: String },
}

/// Checks a user or role name.
pub fn check_name(what: &str, name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidName {
            what: what.into(),
            name: name.into(),
        })
    }
}

/// Checks a user name: a valid name, and not the root's.
pub fn check_user_name(name: &str) -> Result<(), AuthError> {
    check_name("user", name)?;
    if name == ROOT_USER {
        return Err(AuthError::ReservedName);
    }
    Ok(())
}

impl Role {
    /// Checks the role's shape: at most [`GRANTS_PER_ROLE_MAX`] valid grants.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.grants.len() > GRANTS_PER_ROLE_MAX {
            return Err(AuthError::TooMany {
                what: "grants in a role".into(),
                len: self.grants.len(),
                max: GRANTS_PER_ROLE_MAX,
            });
        }
        for grant in &self.grants {
            grant
                .validate()
                .map_err(|e: GrantParseError| AuthError::InvalidGrant { reason: e.to_string() })?;
        }
        Ok(())
    }
}

impl UserRecord {
    /// Checks the user's shape: valid role names, at most [`ROLES_PER_USER_MAX`] roles and
    /// [`TOKENS_PER_USER_MAX`] tokens.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.roles.len() > ROLES_PER_USER_MAX {
            return Err(AuthError::TooMany {
                what: "roles of a user".into(),
                len: self.roles.len(),
                max: ROLES_PER_USER_MAX,
            });
        }
        if self.tokens.len() > TOKENS_PER_USER_MAX {
            return Err(AuthError::TooMany {
                what: "tokens of a user".into(),
                len: self.tokens.len(),
                max: TOKENS_PER_USER_MAX,
            });
        }
        self.roles.iter().try_for_each(|r| check_name("role", r))
    }
}

/// Who a request comes from, with every grant of its roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub grants: Vec<Grant>,
    /// The root token: allowed everything.
    pub root: bool,
}

/// A refusal: `user` lacks `need`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("user {user:?} lacks {need}")]
pub struct Denied {
    pub user: String,
    pub need: Need,
}

impl Identity {
    pub fn root() -> Identity {
        Identity {
            user: ROOT_USER.into(),
            grants: Vec::new(),
            root: true,
        }
    }

    /// Whether this identity may do what `need` asks: the root may do anything, anyone else
    /// when one grant of its roles allows it.
    pub fn check(&self, need: &Need) -> Result<(), Denied> {
        if self.root || self.grants.iter().any(|g| g.allows(need)) {
            return Ok(());
        }
        Err(Denied {
            user: self.user.clone(),
            need: need.clone(),
        })
    }

    /// [`Identity::check`] for every need, the first refusal first.
    pub fn check_all<'a>(&self, needs: impl IntoIterator<Item = &'a Need>) -> Result<(), Denied> {
        needs.into_iter().try_for_each(|n| self.check(n))
    }
}

/// Users and roles as one region holds them, indexed by token and by user name.
#[derive(Clone, Debug, Default)]
pub struct AuthTable {
    roles: BTreeMap<String, Role>,
    users: BTreeMap<String, UserRecord>,
    by_token: HashMap<TokenHash, Arc<Identity>>,
    by_name: HashMap<String, Arc<Identity>>,
}

impl AuthTable {
    /// Builds the table. A role a user names that does not exist grants nothing (apply refuses
    /// such users and such role deletions, so it arises only from an older state).
    pub fn new(roles: BTreeMap<String, Role>, users: BTreeMap<String, UserRecord>) -> AuthTable {
        let mut by_token = HashMap::new();
        let mut by_name = HashMap::new();
        for (name, user) in &users {
            let grants = user
                .roles
                .iter()
                .filter_map(|r| roles.get(r))
                .flat_map(|r| r.grants.iter().cloned())
                .collect();
            let identity = Arc::new(Identity {
                user: name.clone(),
                grants,
                root: false,
            });
            for token in &user.tokens {
                by_token.insert(*token, Arc::clone(&identity));
            }
            by_name.insert(name.clone(), identity);
        }
        AuthTable {
            roles,
            users,
            by_token,
            by_name,
        }
    }

    /// The identity of the user named `name` (as a client certificate's common name names it):
    /// never the root, which only its token is.
    pub fn identify_user(&self, name: &str) -> Option<Arc<Identity>> {
        self.by_name.get(name).cloned()
    }

    /// The identity a token's hash belongs to.
    pub fn identify(&self, token: &TokenHash) -> Option<Arc<Identity>> {
        self.by_token.get(token).cloned()
    }

    pub fn roles(&self) -> &BTreeMap<String, Role> {
        &self.roles
    }

    pub fn users(&self) -> &BTreeMap<String, UserRecord> {
        &self.users
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Access, Scope};
    use crate::token::{hash, Token};

    #[test]
    fn a_token_maps_to_its_user_s_grants_and_nothing_else() {
        let alice = Token::generate();
        let bob = Token::generate();
        let mut roles = BTreeMap::new();
        roles.insert(
            "tenant-a".to_string(),
            Role {
                grants: vec![Grant::new(Access::Write, Scope::Key, "a/")],
            },
        );
        let mut users = BTreeMap::new();
        users.insert(
            "alice".to_string(),
            UserRecord {
                roles: vec!["tenant-a".into(), "gone".into()],
                tokens: vec![hash(alice.as_str())],
            },
        );
        users.insert(
            "bob".to_string(),
            UserRecord {
                roles: vec![],
                tokens: vec![hash(bob.as_str())],
            },
        );
        let table = AuthTable::new(roles, users);
        let a = table.identify(&hash(alice.as_str())).expect("alice");
        assert_eq!(a.user, "alice");
        assert!(a.check(&Need::on(Access::Write, Scope::Key, "a/1")).is_ok());
        let denied = a.check(&Need::on(Access::Read, Scope::Key, "b/1")).expect_err("b/");
        assert_eq!(denied.to_string(), r#"user "alice" lacks read on key "b/1""#);
        let b = table.identify(&hash(bob.as_str())).expect("bob");
        assert!(b.check(&Need::on(Access::Read, Scope::Key, "a/1")).is_err());
        assert!(table.identify(&hash("not a token")).is_none());
        assert!(Identity::root()
            .check(&Need::all(Access::Admin, Scope::Cluster))
            .is_ok());
    }

    #[test]
    fn names_and_shapes_are_checked() {
        assert!(check_name("role", "tenant-a.v2@x_y").is_ok());
        assert!(check_name("role", "").is_err());
        assert!(check_name("role", "a b").is_err());
        assert!(check_name("role", &"x".repeat(NAME_BYTES_MAX + 1)).is_err());
        assert_eq!(check_user_name(ROOT_USER), Err(AuthError::ReservedName));
        let user = UserRecord {
            roles: vec!["r".into(); ROLES_PER_USER_MAX + 1],
            tokens: vec![],
        };
        assert!(matches!(user.validate(), Err(AuthError::TooMany { .. })));
        let role = Role {
            grants: vec![Grant::new(Access::Read, Scope::Ledger, "x")],
        };
        assert!(matches!(role.validate(), Err(AuthError::InvalidGrant { .. })));
    }
}
