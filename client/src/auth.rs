//! Users, roles and bearer tokens (docs/security.md): the admin calls that change who may do
//! what, and [`Auth::who_am_i`]. Get one with [`Client::auth`].
//!
//! Tokens are made here, from the operating system's random source, and only their SHA-256
//! leaves the process: the cluster stores hashes, and [`Auth::add_token`] returns the one copy
//! of the token's text.

use basalt_auth::token::Token;
use basalt_auth::{Access, Grant, Scope};

use crate::client::Client;
use crate::error::ClientError;
use crate::pb;
use crate::pb::auth_client::AuthClient;

/// A role as the cluster holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    pub name: String,
    pub grants: Vec<Grant>,
}

/// A user as the cluster holds it: its roles and the ids of its tokens (never the tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
    pub token_ids: Vec<String>,
}

/// Who the caller is, as the node it reached sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    /// Whether the node authenticates its clients at all.
    pub enabled: bool,
    pub user: String,
    pub root: bool,
    pub grants: Vec<Grant>,
}

/// Users and roles. Every call but [`Auth::who_am_i`] needs admin on the cluster.
#[derive(Clone)]
pub struct Auth {
    pub(crate) client: Client,
}

/// A grant as the API carries it.
pub fn grant_to_pb(grant: &Grant) -> pb::AuthGrant {
    pb::AuthGrant {
        access: grant.access.as_str().into(),
        scope: grant.scope.as_str().into(),
        prefix: grant.prefix.clone(),
    }
}

/// A grant from the API's form; why not, when its access or scope is unknown.
pub fn grant_of_pb(grant: pb::AuthGrant) -> Result<Grant, String> {
    let access = Access::parse(&grant.access)
        .ok_or_else(|| format!("unknown access {:?} (read, write or admin)", grant.access))?;
    let scope = Scope::parse(&grant.scope).ok_or_else(|| {
        format!(
            "unknown scope {:?} (key, queue, topic, group, channel, ledger, cache or cluster)",
            grant.scope
        )
    })?;
    Ok(Grant::new(access, scope, grant.prefix))
}

fn grant_from_pb(grant: pb::AuthGrant) -> Result<Grant, ClientError> {
    grant_of_pb(grant).map_err(ClientError::Protocol)
}

impl Client {
    /// Users, roles and tokens.
    pub fn auth(&self) -> Auth {
        Auth { client: self.clone() }
    }
}

impl Auth {
    /// Creates role `name` with `grants`, or replaces the grants of the role of that name; the
    /// users holding it have the new grants at once.
    pub async fn put_role(&self, name: &str, grants: &[Grant]) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::PutRoleRequest {
            header: Some(header),
            name: name.into(),
            grants: grants.iter().map(grant_to_pb).collect(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).put_role(r).await
            })
            .await
            .map(|_| ())
    }

    /// Removes role `name` (nothing if there is none). Refused (`INVALID_ARGUMENT`) while a user
    /// holds it.
    pub async fn delete_role(&self, name: &str) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::DeleteRoleRequest {
            header: Some(header),
            name: name.into(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).delete_role(r).await
            })
            .await
            .map(|_| ())
    }

    /// Creates user `name` holding `roles`, or gives the user of that name these roles (its
    /// tokens stay). Every role must exist (else `NOT_FOUND`).
    pub async fn put_user(&self, name: &str, roles: &[&str]) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::PutUserRequest {
            header: Some(header),
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).put_user(r).await
            })
            .await
            .map(|_| ())
    }

    /// Removes user `name` and every token of it (nothing if there is none).
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::DeleteUserRequest {
            header: Some(header),
            name: name.into(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).delete_user(r).await
            })
            .await
            .map(|_| ())
    }

    /// Makes a new token for user `user` and returns it: the only copy of its text (the
    /// cluster keeps its SHA-256). A user holds at most 4; the older ones stay valid until
    /// removed ([`Auth::remove_token`]), so a token is rotated without a gap.
    pub async fn add_token(&self, user: &str) -> Result<Token, ClientError> {
        let token = Token::generate();
        self.add_token_hash(user, token.hash()).await?;
        Ok(token)
    }

    /// Adds a token the caller made, by its SHA-256.
    pub async fn add_token_hash(&self, user: &str, token_sha256: [u8; 32]) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::AddTokenRequest {
            header: Some(header),
            user: user.into(),
            token_sha256: token_sha256.to_vec(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).add_token(r).await
            })
            .await
            .map(|_| ())
    }

    /// Removes user `user`'s token `token_id` (as [`Auth::list`] shows it); `NOT_FOUND` if it
    /// holds none of that id.
    pub async fn remove_token(&self, user: &str, token_id: &str) -> Result<(), ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::RemoveTokenRequest {
            header: Some(header),
            user: user.into(),
            token_id: token_id.into(),
        };
        self.client
            .unary(true, message, |c, r| async move {
                crate::service_client!(AuthClient, c).remove_token(r).await
            })
            .await
            .map(|_| ())
    }

    /// Every role and user, by name.
    pub async fn list(&self) -> Result<(Vec<RoleInfo>, Vec<UserInfo>), ClientError> {
        let reply = self
            .client
            .unary(false, pb::AuthListRequest { stale: false }, |c, r| async move {
                crate::service_client!(AuthClient, c).list(r).await
            })
            .await?;
        let roles = reply
            .roles
            .into_iter()
            .map(|r| {
                Ok(RoleInfo {
                    name: r.name,
                    grants: r.grants.into_iter().map(grant_from_pb).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, ClientError>>()?;
        let users = reply
            .users
            .into_iter()
            .map(|u| UserInfo {
                name: u.name,
                roles: u.roles,
                token_ids: u.token_ids,
            })
            .collect();
        Ok((roles, users))
    }

    /// Who this client is to the node it reaches, and what it may do.
    pub async fn who_am_i(&self) -> Result<WhoAmI, ClientError> {
        let reply = self
            .client
            .unary(false, pb::WhoAmIRequest {}, |c, r| async move {
                crate::service_client!(AuthClient, c).who_am_i(r).await
            })
            .await?;
        Ok(WhoAmI {
            enabled: reply.enabled,
            user: reply.user,
            root: reply.root,
            grants: reply.grants.into_iter().map(grant_from_pb).collect::<Result<_, _>>()?,
        })
    }
}
