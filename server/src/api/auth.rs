//! The auth service: users, roles and tokens (replicated through the log like any write), and
//! who-am-I. Who may call which of these is decided before a handler runs (`crate::access`).

use std::sync::Arc;

use basalt_auth::{Grant, Identity};
use basalt_client::auth::grant_to_pb;
use basalt_client::pb;
use basalt_client::pb::auth_server::Auth;
use basalt_client::ErrorCode;
use basalt_storage::command::{AuthOp, Op};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{header_of, status, storage_status, Api};

fn grant_of(grant: pb::AuthGrant) -> Result<Grant, Status> {
    basalt_client::auth::grant_of_pb(grant).map_err(|e| status(ErrorCode::InvalidArgument, e))
}

impl Api {
    /// Proposes a change to users or roles under the request's session: a retry gets the first
    /// answer back, and a delayed retry cannot undo a later change.
    async fn change_auth(
        &self,
        header: Option<pb::RequestHeader>,
        op: AuthOp,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let (session, fence) = header_of(header)?;
        self.propose(session, fence, Op::Auth(op)).await?;
        Ok(GrpcResponse::new(pb::AuthChangeResponse {}))
    }
}

#[tonic::async_trait]
impl Auth for Api {
    async fn put_role(
        &self,
        request: Request<pb::PutRoleRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        let grants = r.grants.into_iter().map(grant_of).collect::<Result<_, _>>()?;
        self.change_auth(r.header, AuthOp::PutRole { name: r.name, grants })
            .await
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        self.change_auth(r.header, AuthOp::DeleteRole { name: r.name }).await
    }

    async fn put_user(
        &self,
        request: Request<pb::PutUserRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        self.change_auth(
            r.header,
            AuthOp::PutUser {
                name: r.name,
                roles: r.roles,
            },
        )
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        self.change_auth(r.header, AuthOp::DeleteUser { name: r.name }).await
    }

    async fn add_token(
        &self,
        request: Request<pb::AddTokenRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        let token: [u8; 32] = r.token_sha256.as_slice().try_into().map_err(|_| {
            status(
                ErrorCode::InvalidArgument,
                format!("token_sha256 must be 32 bytes, got {}", r.token_sha256.len()),
            )
        })?;
        self.change_auth(r.header, AuthOp::AddToken { user: r.user, token })
            .await
    }

    async fn remove_token(
        &self,
        request: Request<pb::RemoveTokenRequest>,
    ) -> Result<GrpcResponse<pb::AuthChangeResponse>, Status> {
        let r = request.into_inner();
        self.change_auth(
            r.header,
            AuthOp::RemoveToken {
                user: r.user,
                token_id: r.token_id,
            },
        )
        .await
    }

    async fn list(&self, request: Request<pb::AuthListRequest>) -> Result<GrpcResponse<pb::AuthListResponse>, Status> {
        self.read_barrier(request.get_ref().stale).await?;
        let table = basalt_storage::apply::auth::load_table(&self.store).map_err(storage_status)?;
        let roles = table
            .roles()
            .iter()
            .map(|(name, role)| pb::AuthRole {
                name: name.clone(),
                grants: role.grants.iter().map(grant_to_pb).collect(),
            })
            .collect();
        let users = table
            .users()
            .iter()
            .map(|(name, user)| pb::AuthUser {
                name: name.clone(),
                roles: user.roles.clone(),
                token_ids: user.tokens.iter().map(basalt_auth::token::token_id).collect(),
            })
            .collect();
        Ok(GrpcResponse::new(pb::AuthListResponse { roles, users }))
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<GrpcResponse<pb::WhoAmIResponse>, Status> {
        let identity = request.extensions().get::<Arc<Identity>>();
        Ok(GrpcResponse::new(match identity {
            // A node that authenticates nobody: every caller may do everything.
            None => pb::WhoAmIResponse {
                enabled: self.gate.is_some(),
                user: String::new(),
                root: false,
                grants: Vec::new(),
            },
            Some(identity) => pb::WhoAmIResponse {
                enabled: true,
                user: identity.user.clone(),
                root: identity.root,
                grants: identity.grants.iter().map(grant_to_pb).collect(),
            },
        }))
    }
}
