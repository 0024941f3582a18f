//! Applying [`AuthOp`]s: users and roles in table `Auth`, keyed `r/NAME` (a [`Role`]) and
//! `u/NAME` (a [`UserRecord`]). Every check is made here, at apply, against the state the entry
//! finds: a user's roles exist, a role being deleted is held by no one, the limits of
//! `basalt_auth::limits`. A refusal changes nothing.

use std::collections::BTreeMap;

use basalt_auth::limits::{ROLES_MAX, USERS_MAX};
use basalt_auth::token::token_id;
use basalt_auth::{check_name, check_user_name, AuthError, AuthTable, Role, UserRecord};

use super::View;
use crate::command::{AuthOp, OpError, Response};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

const ROLE_PREFIX: &[u8] = b"r/";
const USER_PREFIX: &[u8] = b"u/";

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

/// Checks an op's shape before it is proposed (what needs no state).
pub fn validate(op: &AuthOp) -> Result<(), OpError> {
    let checked = match op {
        AuthOp::PutRole { name, grants } => {
            check_name("role", name).and_then(|()| Role { grants: grants.clone() }.validate())
        }
        AuthOp::DeleteRole { name } => check_name("role", name),
        AuthOp::PutUser { name, roles } => check_user_name(name).and_then(|()| {
            UserRecord {
                roles: roles.clone(),
                tokens: Vec::new(),
            }
            .validate()
        }),
        AuthOp::DeleteUser { name } | AuthOp::AddToken { user: name, .. } | AuthOp::RemoveToken { user: name, .. } => {
            check_user_name(name)
        }
    };
    checked.map_err(OpError::Auth)
}

fn read<T: serde::de::DeserializeOwned, S: StoreRead + ?Sized>(store: &S, key: &[u8]) -> Result<Option<T>, StoreError> {
    match store.get(Table::Auth, key)? {
        None => Ok(None),
        Some(bytes) => basalt_codec::decode(&bytes)
            .map(Some)
            .map_err(|e| super::corrupt(Table::Auth, key, e)),
    }
}

fn all<T: serde::de::DeserializeOwned, S: StoreRead + ?Sized>(
    store: &S,
    prefix: &[u8],
) -> Result<BTreeMap<String, T>, StoreError> {
    let range = KeyRange::prefix_from(prefix, prefix.to_vec());
    let mut out = BTreeMap::new();
    for (key, bytes) in store.scan(Table::Auth, &range, usize::MAX)? {
        let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let value = basalt_codec::decode(&bytes).map_err(|e| super::corrupt(Table::Auth, &key, e))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Every user and role `store` holds, as the table the doors look identities up in.
pub fn load_table<S: StoreRead + ?Sized>(store: &S) -> Result<AuthTable, StoreError> {
    Ok(AuthTable::new(all(store, ROLE_PREFIX)?, all(store, USER_PREFIX)?))
}

fn count<S: StoreRead>(view: &View<'_, S>, prefix: &[u8], max: usize) -> Result<usize, StoreError> {
    Ok(view
        .scan(Table::Auth, &KeyRange::prefix_from(prefix, prefix.to_vec()), max + 1)?
        .len())
}

pub(super) fn apply_op<S: StoreRead>(view: &mut View<'_, S>, op: &AuthOp) -> Result<Response, StoreError> {
    if let Err(refusal) = validate(op) {
        return Ok(Response::Refused(refusal));
    }
    let refused = |e: AuthError| Ok(Response::Refused(OpError::Auth(e)));
    match op {
        AuthOp::PutRole { name, grants } => {
            let key = role_key(name);
            if view.get(Table::Auth, &key)?.is_none() && count(view, ROLE_PREFIX, ROLES_MAX)? >= ROLES_MAX {
                return refused(AuthError::TooMany {
                    what: "roles".into(),
                    len: ROLES_MAX + 1,
                    max: ROLES_MAX,
                });
            }
            let role = Role { grants: grants.clone() };
            view.put(Table::Auth, key, basalt_codec::encode(&role));
        }
        AuthOp::DeleteRole { name } => {
            let users: BTreeMap<String, UserRecord> = all(&*view, USER_PREFIX)?;
            if let Some((user, _)) = users.iter().find(|(_, u)| u.roles.contains(name)) {
                return refused(AuthError::RoleInUse {
                    role: name.clone(),
                    user: user.clone(),
                });
            }
            view.delete(Table::Auth, role_key(name));
        }
        AuthOp::PutUser { name, roles } => {
            for role in roles {
                if view.get(Table::Auth, &role_key(role))?.is_none() {
                    return refused(AuthError::UnknownRole { role: role.clone() });
                }
            }
            let key = user_key(name);
            let existing: Option<UserRecord> = read(&*view, &key)?;
            if existing.is_none() && count(view, USER_PREFIX, USERS_MAX)? >= USERS_MAX {
                return refused(AuthError::TooMany {
                    what: "users".into(),
                    len: USERS_MAX + 1,
                    max: USERS_MAX,
                });
            }
            let mut roles = roles.clone();
            roles.sort();
            roles.dedup();
            let user = UserRecord {
                roles,
                tokens: existing.map(|u| u.tokens).unwrap_or_default(),
            };
            view.put(Table::Auth, key, basalt_codec::encode(&user));
        }
        AuthOp::DeleteUser { name } => view.delete(Table::Auth, user_key(name)),
        AuthOp::AddToken { user, token } => {
            let key = user_key(user);
            let Some(mut record) = read::<UserRecord, _>(&*view, &key)? else {
                return refused(AuthError::UnknownUser { user: user.clone() });
            };
            if !record.tokens.contains(token) {
                record.tokens.push(*token);
                if let Err(e) = record.validate() {
                    return refused(e);
                }
                view.put(Table::Auth, key, basalt_codec::encode(&record));
            }
        }
        AuthOp::RemoveToken { user, token_id: id } => {
            let key = user_key(user);
            let Some(mut record) = read::<UserRecord, _>(&*view, &key)? else {
                return refused(AuthError::UnknownUser { user: user.clone() });
            };
            let before = record.tokens.len();
            record.tokens.retain(|t| token_id(t) != *id);
            if record.tokens.len() == before {
                return refused(AuthError::UnknownToken {
                    user: user.clone(),
                    token_id: id.clone(),
                });
            }
            view.put(Table::Auth, key, basalt_codec::encode(&record));
        }
    }
    Ok(Response::None)
}
