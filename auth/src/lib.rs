//! Basalt's access model: who a client is and what it may do.
//!
//! Owns: [`Grant`]s (an access level on a scope of names: `write:key:tenant-a/`), [`Role`]s
//! (named sets of grants), [`UserRecord`]s (roles and the SHA-256 of each bearer token), the
//! [`AuthTable`] built from them, and [`Identity::check`], the one decision every door makes
//! (the gRPC layer, RESP, the HTTP purge endpoint). Also bearer tokens themselves ([`token`]).
//!
//! May not touch: storage, the network, clocks. Users and roles are replicated state kept by
//! `basalt-storage`; this crate only says what they mean. Pure and deterministic, so the same
//! table answers the same on every node.

mod grant;
pub mod limits;
mod table;
pub mod token;

pub use grant::{Access, Grant, GrantParseError, Need, Scope, Target};
pub use table::{check_name, check_user_name, AuthError, AuthTable, Denied, Identity, Role, UserRecord, ROOT_USER};
