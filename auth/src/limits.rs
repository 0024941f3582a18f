//! The access model's limits, each checked where users and roles are changed.

/// The longest user or role name.
pub const NAME_BYTES_MAX: usize = 64;
/// The longest prefix a grant may name.
pub const PREFIX_BYTES_MAX: usize = 1024;
/// How many grants one role may hold.
pub const GRANTS_PER_ROLE_MAX: usize = 64;
/// How many roles one user may hold.
pub const ROLES_PER_USER_MAX: usize = 16;
/// How many tokens one user may hold at once: a new one is added before the old one is
/// removed when tokens are rotated.
pub const TOKENS_PER_USER_MAX: usize = 4;
/// How many users a region may hold.
pub const USERS_MAX: usize = 10_000;
/// How many roles a region may hold.
pub const ROLES_MAX: usize = 1_000;
/// The longest bearer token a door reads; longer ones are refused before hashing.
pub const TOKEN_BYTES_MAX: usize = 256;
