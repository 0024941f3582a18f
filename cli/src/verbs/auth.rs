//! `basalt auth ...`: users, roles and tokens (docs/security.md), and `basalt auth token`, a new
//! root token for a node's `--root-token-file`.

use basalt_client::{Client, Grant, Token};
use clap::Subcommand;

use super::err;

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Print a new random token (e.g. `basalt auth token > root.token`, then `chmod 600`).
    Token,
    /// Who this CLI's token is to the cluster, and what it may do.
    Whoami,
    /// Every role with its grants, every user with its roles and token ids.
    List,
    /// Roles: named sets of grants.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Users: roles and bearer tokens.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Create a role, or replace its grants: `--grant ACCESS:SCOPE:PREFIX` (repeat), e.g.
    /// `--grant write:key:tenant-a/ --grant read:topic:events`. ACCESS: read, write, admin;
    /// SCOPE: key, queue, topic, group, channel, ledger, cache, cluster.
    Put {
        name: String,
        #[arg(long = "grant", value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
    /// Remove a role (refused while a user holds it).
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (printing its first token), or set an existing user's roles.
    Put {
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Remove a user and all its tokens.
    Delete { name: String },
    /// Make another token for a user and print it (up to 4 at once: rotate by adding the new
    /// one, moving clients to it, then revoking the old one).
    Token { name: String },
    /// Revoke one of a user's tokens by its id (`basalt auth list` shows them).
    Revoke { name: String, token_id: String },
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    Grant::parse(text).map_err(|e| e.to_string())
}

/// Runs `basalt auth token`, which needs no cluster.
pub fn new_token() {
    crate::outln!("{}", Token::generate().as_str());
}

/// Runs one `basalt auth` verb against the cluster.
pub async fn auth(client: &Client, command: AuthCommand) -> Result<(), String> {
    let auth = client.auth();
    match command {
        AuthCommand::Token => new_token(),
        AuthCommand::Whoami => {
            let me = auth.who_am_i().await.map_err(err)?;
            if !me.enabled {
                crate::outln!("this node authenticates nobody: every caller may do everything");
            } else if me.root {
                crate::outln!("{} (the root token: every access)", me.user);
            } else {
                crate::outln!("{}", me.user);
                for grant in &me.grants {
                    crate::outln!("  {grant}");
                }
            }
        }
        AuthCommand::List => {
            let (roles, users) = auth.list().await.map_err(err)?;
            crate::outln!("roles:");
            for role in roles {
                let grants: Vec<String> = role.grants.iter().map(ToString::to_string).collect();
                crate::outln!("  {}  {}", role.name, grants.join(" "));
            }
            crate::outln!("users:");
            for user in users {
                crate::outln!(
                    "  {}  roles [{}]  tokens [{}]",
                    user.name,
                    user.roles.join(", "),
                    user.token_ids.join(", ")
                );
            }
        }
        AuthCommand::Role { command } => match command {
            RoleCommand::Put { name, grants } => {
                auth.put_role(&name, &grants).await.map_err(err)?;
                crate::outln!("role {name}: {} grants", grants.len());
            }
            RoleCommand::Delete { name } => {
                auth.delete_role(&name).await.map_err(err)?;
                crate::outln!("role {name} deleted");
            }
        },
        AuthCommand::User { command } => match command {
            UserCommand::Put { name, roles } => {
                let (_, users) = auth.list().await.map_err(err)?;
                let exists = users.iter().any(|u| u.name == name);
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                auth.put_user(&name, &roles).await.map_err(err)?;
                if exists {
                    crate::outln!("user {name}: roles [{}]", roles.join(", "));
                } else {
                    let token = auth.add_token(&name).await.map_err(err)?;
                    crate::outln!("user {name} created; its token (shown once):");
                    crate::outln!("{}", token.as_str());
                }
            }
            UserCommand::Delete { name } => {
                auth.delete_user(&name).await.map_err(err)?;
                crate::outln!("user {name} deleted");
            }
            UserCommand::Token { name } => {
                let token = auth.add_token(&name).await.map_err(err)?;
                crate::outln!("{}", token.as_str());
            }
            UserCommand::Revoke { name, token_id } => {
                auth.remove_token(&name, &token_id).await.map_err(err)?;
                crate::outln!("token {token_id} of {name} revoked");
            }
        },
    }
    Ok(())
}
