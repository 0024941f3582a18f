//! Users and roles.

use super::tests::{cmd, Harness};
use super::*;
use crate::command::AuthOp;
use basalt_auth::token::{hash, token_id};
use basalt_auth::{Access, AuthError, Grant, Need, Scope};

fn auth(op: AuthOp) -> Op {
    Op::Auth(op)
}

fn put_role(name: &str, grants: &[&str]) -> Op {
    auth(AuthOp::PutRole {
        name: name.into(),
        grants: grants.iter().map(|g| Grant::parse(g).expect("grant")).collect(),
    })
}

fn put_user(name: &str, roles: &[&str]) -> Op {
    auth(AuthOp::PutUser {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    })
}

fn add_token(user: &str, token: &str) -> Op {
    auth(AuthOp::AddToken {
        user: user.into(),
        token: hash(token),
    })
}

fn refusal(response: Response) -> AuthError {
    match response {
        Response::Refused(OpError::Auth(e)) => e,
        other => panic!("expected an auth refusal, got {other:?}"),
    }
}

#[test]
fn a_user_s_token_carries_its_roles_grants_and_changes_with_them() {
    let mut h = Harness::new();
    assert_eq!(h.apply(cmd(1, put_role("tenant-a", &["write:key:a/"]))), Response::None);
    assert_eq!(h.apply(cmd(2, put_user("alice", &["tenant-a"]))), Response::None);
    assert_eq!(h.apply(cmd(3, add_token("alice", "t1"))), Response::None);
    let table = auth::load_table(&h.store).expect("load");
    let alice = table.identify(&hash("t1")).expect("alice");
    assert!(alice.check(&Need::on(Access::Write, Scope::Key, "a/1")).is_ok());
    assert!(alice.check(&Need::on(Access::Read, Scope::Key, "b/1")).is_err());

    // The role's grants change: the user's follow; the token stays through a PutUser.
    h.apply(cmd(4, put_role("tenant-a", &["read:key:b/"])));
    h.apply(cmd(5, put_user("alice", &["tenant-a"])));
    let alice = auth::load_table(&h.store)
        .expect("load")
        .identify(&hash("t1"))
        .expect("alice");
    assert!(alice.check(&Need::on(Access::Write, Scope::Key, "a/1")).is_err());
    assert!(alice.check(&Need::on(Access::Read, Scope::Key, "b/1")).is_ok());

    // Removing the token, then the user, leaves no identity behind.
    let id = token_id(&hash("t1"));
    h.apply(cmd(6, add_token("alice", "t2")));
    assert_eq!(
        h.apply(cmd(
            7,
            auth(AuthOp::RemoveToken {
                user: "alice".into(),
                token_id: id.clone()
            })
        )),
        Response::None
    );
    let table = auth::load_table(&h.store).expect("load");
    assert!(table.identify(&hash("t1")).is_none());
    assert!(table.identify(&hash("t2")).is_some());
    assert_eq!(
        refusal(h.apply(cmd(
            8,
            auth(AuthOp::RemoveToken {
                user: "alice".into(),
                token_id: id.clone()
            })
        ))),
        AuthError::UnknownToken {
            user: "alice".into(),
            token_id: id
        }
    );
    h.apply(cmd(9, auth(AuthOp::DeleteUser { name: "alice".into() })));
    assert!(auth::load_table(&h.store)
        .expect("load")
        .identify(&hash("t2"))
        .is_none());
    // Deleting again changes nothing and is no error (a retried request).
    assert_eq!(
        h.apply(cmd(10, auth(AuthOp::DeleteUser { name: "alice".into() }))),
        Response::None
    );
}

#[test]
fn refusals_name_what_is_wrong_and_change_nothing() {
    let mut h = Harness::new();
    assert_eq!(
        refusal(h.apply(cmd(1, put_user("bob", &["missing"])))),
        AuthError::UnknownRole { role: "missing".into() }
    );
    assert_eq!(refusal(h.apply(cmd(2, put_user("root", &[])))), AuthError::ReservedName);
    assert_eq!(
        refusal(h.apply(cmd(3, add_token("nobody", "t")))),
        AuthError::UnknownUser { user: "nobody".into() }
    );
    h.apply(cmd(4, put_role("r", &["read:topic:"])));
    h.apply(cmd(5, put_user("bob", &["r"])));
    assert_eq!(
        refusal(h.apply(cmd(6, auth(AuthOp::DeleteRole { name: "r".into() })))),
        AuthError::RoleInUse {
            role: "r".into(),
            user: "bob".into()
        }
    );
    for (i, token) in ["a", "b", "c", "d"].iter().enumerate() {
        assert_eq!(h.apply(cmd(7 + i as u64, add_token("bob", token))), Response::None);
    }
    assert!(matches!(
        refusal(h.apply(cmd(20, add_token("bob", "e")))),
        AuthError::TooMany { .. }
    ));
    // Adding a token the user holds already is not a new one.
    assert_eq!(h.apply(cmd(21, add_token("bob", "a"))), Response::None);
    let table = auth::load_table(&h.store).expect("load");
    assert!(table.identify(&hash("e")).is_none());
    assert_eq!(table.users()["bob"].tokens.len(), 4);
    assert!(matches!(
        validate_op(&auth(AuthOp::PutRole {
            name: "bad name".into(),
            grants: vec![]
        })),
        Err(OpError::Auth(AuthError::InvalidName { .. }))
    ));
    // Once nobody holds it, the role goes.
    h.apply(cmd(22, put_user("bob", &[])));
    assert_eq!(
        h.apply(cmd(23, auth(AuthOp::DeleteRole { name: "r".into() }))),
        Response::None
    );
    assert!(auth::load_table(&h.store).expect("load").roles().is_empty());
}

#[test]
fn auth_ops_encode_after_every_older_op_and_stay_out_of_the_feed() {
    let op = auth(AuthOp::DeleteRole { name: "r".into() });
    // `Op::Auth` is the 15th variant (index 14), `DeleteRole` the 2nd of `AuthOp`.
    assert_eq!(basalt_codec::encode(&op), [0x0e, 0x01, 0x01, b'r']);
    assert!(!op.replicates());
    assert!(!op.is_homed());
    // The token's hash never shows in a log line.
    let shown = add_token("u", "secret-token").to_string();
    assert!(!shown.contains("secret") && !shown.contains(&basalt_auth::token::hex(&hash("secret-token"))));
}
