//! Users and roles: [`AuthOp`], changes to the access model a region's doors enforce (see
//! `basalt-auth` for what a grant means). Refusals are `basalt_auth::AuthError`.

use basalt_auth::token::TokenHash;
use basalt_auth::Grant;
use serde::{Deserialize, Serialize};

/// A change to users or roles. Proposed under the caller's session, so a retry gets the first
/// answer back (a retried removal does not answer "not found", a delayed retry does not undo a
/// later change).
///
/// Variants are encoded by position (docs/data-format.md): a new one goes last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// Creates role `name` or replaces its grants.
    PutRole { name: String, grants: Vec<Grant> },
    /// Removes role `name` (refused while a user holds it); nothing if there is none.
    DeleteRole { name: String },
    /// Creates user `name` or replaces its roles (its tokens stay). Every role must exist.
    PutUser { name: String, roles: Vec<String> },
    /// Removes user `name` and its tokens; nothing if there is none.
    DeleteUser { name: String },
    /// Adds a token (by its SHA-256) to user `user`; nothing if it holds it already.
    AddToken { user: String, token: TokenHash },
    /// Removes user `user`'s token whose id (`basalt_auth::token::token_id`) is `token_id`.
    RemoveToken { user: String, token_id: String },
}

impl std::fmt::Display for AuthOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthOp::PutRole { name, grants } => write!(f, "auth put role {name:?} ({} grants)", grants.len()),
            AuthOp::DeleteRole { name } => write!(f, "auth delete role {name:?}"),
            AuthOp::PutUser { name, roles } => write!(f, "auth put user {name:?} roles {roles:?}"),
            AuthOp::DeleteUser { name } => write!(f, "auth delete user {name:?}"),
            // Never the token: a log line or a debug print holds no credential.
            AuthOp::AddToken { user, .. } => write!(f, "auth add a token to {user:?}"),
            AuthOp::RemoveToken { user, token_id } => write!(f, "auth remove token {token_id} of {user:?}"),
        }
    }
}
