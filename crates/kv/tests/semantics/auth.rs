//! Auth as the state machine applies it: permissions are checked where a client's
//! command applies, against users and roles as they stand at that place in the log.

use bytes::Bytes;
use ekmat_kv::*;

use crate::harness::{Harness, b};

fn auth(h: &mut Harness, request: AuthRequest) -> Result<AuthResponse, KvError> {
    match h.run(Command::Auth(request)).0? {
        Response::Auth(r) => Ok(r),
        other => panic!("{other:?}"),
    }
}

/// root (with the root role) and alice, whose role `r` may write `a` and read `a`..`c`.
fn with_users() -> Harness {
    let mut h = Harness::new();
    for request in [
        AuthRequest::UserAdd {
            name: "root".into(),
            password_hash: Some("h".into()),
        },
        AuthRequest::UserGrantRole {
            user: "root".into(),
            role: ROOT_ROLE.into(),
        },
        AuthRequest::UserAdd {
            name: "alice".into(),
            password_hash: Some("h".into()),
        },
        AuthRequest::RoleAdd { name: "r".into() },
        AuthRequest::UserGrantRole {
            user: "alice".into(),
            role: "r".into(),
        },
        AuthRequest::RoleGrantPermission {
            role: "r".into(),
            permission: Permission {
                kind: PermissionType::Write,
                key: b("a"),
                range_end: Bytes::new(),
            },
        },
        AuthRequest::RoleGrantPermission {
            role: "r".into(),
            permission: Permission {
                kind: PermissionType::Read,
                key: b("a"),
                range_end: b("c"),
            },
        },
    ] {
        auth(&mut h, request).unwrap();
    }
    h
}

fn alice(h: &Harness) -> Caller {
    let (_, generation) = h.kv.auth().credentials("alice").unwrap();
    Caller::User {
        name: "alice".into(),
        generation,
    }
}

fn put(key: &str) -> Command {
    Command::Put(PutRequest::new(b(key), b("v")))
}

fn enable(h: &mut Harness) {
    let secret = Bytes::from_static(b"secret");
    auth(
        h,
        AuthRequest::Enable {
            token_secret: secret,
        },
    )
    .unwrap();
}

#[test]
fn a_write_taken_before_auth_was_enabled_is_checked_when_it_applies() {
    let mut h = with_users();
    // Proposed while auth was off (no token), ordered after the enabling.
    let late = put("a").from_caller(Caller::Anonymous);
    let early = put("a").from_caller(Caller::Anonymous);
    assert!(h.run(early).0.is_ok(), "auth is off: anyone writes");
    enable(&mut h);
    let revision = h.kv.revision();
    assert_eq!(h.run(late).0, Err(KvError::UserEmpty));
    assert_eq!(h.kv.revision(), revision, "refused writes change nothing");
}

#[test]
fn writes_need_write_permission_on_every_key_they_touch() {
    let mut h = with_users();
    enable(&mut h);
    let alice = alice(&h);
    let run = |h: &mut Harness, c: Command| h.run(c.from_caller(alice.clone())).0.map(|_| ());
    assert_eq!(run(&mut h, put("a")), Ok(()));
    assert_eq!(run(&mut h, put("b")), Err(KvError::PermissionDenied));
    let prev_kv = PutRequest {
        prev_kv: true,
        ..PutRequest::new(b("a"), b("w"))
    };
    assert_eq!(
        run(&mut h, Command::Put(prev_kv)),
        Ok(()),
        "a is readable too"
    );
    let range = DeleteRangeRequest {
        range_end: b("c"),
        ..DeleteRangeRequest::new(b("a"))
    };
    assert_eq!(
        run(&mut h, Command::DeleteRange(range)),
        Err(KvError::PermissionDenied),
        "only a of [a, c) is writable"
    );
    let txn = TxnRequest {
        compare: vec![Compare::new(
            b("z"),
            CompareResult::Equal,
            CompareTarget::Version(0),
        )],
        success: vec![RequestOp::Put(PutRequest::new(b("a"), b("t")))],
        failure: vec![],
    };
    assert_eq!(
        run(&mut h, Command::Txn(txn)),
        Err(KvError::PermissionDenied),
        "a compare reads z"
    );
    // A lease holding a key alice may not write: she may neither revoke it nor attach
    // it to her own key.
    let lease = match h
        .run(Command::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }))
        .0
    {
        Ok(Response::LeaseGrant(g)) => g.id,
        other => panic!("{other:?}"),
    };
    let with_lease = |key: &str| PutRequest {
        lease,
        ..PutRequest::new(b(key), b("l"))
    };
    h.run(Command::Put(with_lease("b"))).0.unwrap(); // the member's own write
    assert_eq!(
        run(&mut h, Command::Put(with_lease("a"))),
        Err(KvError::PermissionDenied)
    );
    assert_eq!(
        run(
            &mut h,
            Command::LeaseRevoke(LeaseRevokeRequest { id: lease })
        ),
        Err(KvError::PermissionDenied)
    );
    assert_eq!(h.value("b").as_deref(), Some("l"));
}

#[test]
fn a_new_password_or_a_revoked_role_counts_from_its_place_in_the_log() {
    let mut h = with_users();
    enable(&mut h);
    let alice = alice(&h);
    let change = AuthRequest::UserChangePassword {
        name: "alice".into(),
        password_hash: "new".into(),
    };
    auth(&mut h, change).unwrap();
    assert_eq!(
        h.run(put("a").from_caller(alice)).0.map(|_| ()),
        Err(KvError::InvalidAuthToken),
        "a token from before the change no longer speaks for alice"
    );
    let alice = self::alice(&h);
    let revoke = AuthRequest::UserRevokeRole {
        user: "alice".into(),
        role: "r".into(),
    };
    auth(&mut h, revoke).unwrap();
    assert_eq!(
        h.run(put("a").from_caller(alice)).0.map(|_| ()),
        Err(KvError::PermissionDenied)
    );
}

#[test]
fn only_administrators_manage_auth_once_it_is_on() {
    let mut h = with_users();
    let add = || Command::Auth(AuthRequest::RoleAdd { name: "q".into() });
    assert!(
        h.run(add().from_caller(Caller::Anonymous)).0.is_ok(),
        "auth off"
    );
    enable(&mut h);
    let alice = alice(&h);
    let root = Caller::User {
        name: "root".into(),
        generation: h.kv.auth().credentials("root").unwrap().1,
    };
    let list = || Command::Auth(AuthRequest::UserList);
    assert_eq!(
        h.run(list().from_caller(alice.clone())).0.map(|_| ()),
        Err(KvError::PermissionDenied)
    );
    assert_eq!(
        h.run(list().from_caller(Caller::Anonymous)).0.map(|_| ()),
        Err(KvError::UserEmpty)
    );
    assert!(h.run(list().from_caller(root)).0.is_ok());
    let own = Command::Auth(AuthRequest::UserGet {
        name: "alice".into(),
    });
    assert!(
        h.run(own.from_caller(alice)).0.is_ok(),
        "users read themselves"
    );
}

#[test]
fn auth_state_survives_a_snapshot_and_counts_in_the_hash() {
    let mut h = with_users();
    enable(&mut h);
    let restored = KvStore::restore(&h.kv.snapshot()).unwrap();
    assert_eq!(restored.auth(), h.kv.auth());
    assert_eq!(restored.hash(), h.kv.hash());
    let before = h.kv.hash();
    auth(&mut h, AuthRequest::RoleAdd { name: "q".into() }).unwrap();
    assert_ne!(
        h.kv.hash(),
        before,
        "replicas that differ in auth differ in hash"
    );
}
