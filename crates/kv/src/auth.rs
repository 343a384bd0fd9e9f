//! etcd's authentication state: users, roles, their key permissions, and whether auth is
//! enabled. Changed only through the log ([`AuthRequest`]), so every replica holds the
//! same; which request may do what is `permission.rs`.
//!
//! Passwords arrive hashed (the member that took the request hashed it: bcrypt is salted,
//! so hashing here would make replicas differ). Tokens are the node's business; the state
//! holds what they are checked against: a secret chosen when auth was enabled, and each
//! user's generation, which moves when the user's password changes or the user is made
//! again, so older tokens stop working.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::range::KeyRange;
use crate::rpc::ResponseHeader;

/// The role that may do anything; it exists without being added.
pub const ROOT_ROLE: &str = "root";
/// The user that must exist, holding [`ROOT_ROLE`], before auth can be enabled.
pub const ROOT_USER: &str = "root";

/// What a permission allows on its keys (etcd's `authpb.Permission.Type`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PermissionType {
    Read,
    Write,
    ReadWrite,
}

impl PermissionType {
    fn allows(self, wanted: PermissionType) -> bool {
        self == PermissionType::ReadWrite || self == wanted
    }
}

/// Access to a key, a range `[key, range_end)`, or every key from `key` on
/// (`range_end == "\0"`), with [`crate::RangeRequest`]'s conventions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionType,
    pub key: Bytes,
    pub range_end: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct User {
    /// The password's hash, as the node's hasher wrote it; none: the user cannot log in
    /// with a password (etcd's `--no-password`).
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    /// The auth revision at which the user was made, last given a password, or auth
    /// last enabled: tokens name it, and older ones no longer count.
    pub generation: u64,
}

/// Users, roles and the switch, as every replica holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthState {
    pub(crate) enabled: bool,
    /// etcd's auth revision: one more per change.
    pub(crate) revision: u64,
    pub(crate) users: BTreeMap<String, User>,
    /// Each role's permissions, by (key, range_end).
    pub(crate) roles: BTreeMap<String, BTreeMap<(Bytes, Bytes), PermissionType>>,
    /// What tokens are signed with: chosen by the member that proposed the enabling.
    pub(crate) token_secret: Bytes,
}

/// A user as a backup holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// None: a user without a password.
    pub password_hash: Option<String>,
    pub roles: Vec<String>,
}

/// A role as a backup holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    pub permissions: Vec<Permission>,
}

/// Who sent a client's command, as the member that took it established.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Caller {
    /// No token came with the request.
    Anonymous,
    /// A token for `name` at `generation` came with it.
    User { name: String, generation: u64 },
}

/// A change to (or a read of) the auth state, ordered through the log as etcd orders them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Turn auth on; `token_secret` is fresh random bytes from the proposer. While auth
    /// is on with no secret (restored from a backup), it sets the secret only.
    Enable {
        token_secret: Bytes,
    },
    Disable,
    Status,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserGet {
        name: String,
    },
    UserList,
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleGet {
        name: String,
    },
    RoleList,
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
}

impl AuthRequest {
    /// Whether only an administrator (a holder of the root role) may send it while auth
    /// is on. Users may read themselves and their own roles (`permission.rs`).
    pub(crate) fn needs_admin(&self) -> bool {
        !matches!(
            self,
            AuthRequest::Status | AuthRequest::UserGet { .. } | AuthRequest::RoleGet { .. }
        )
    }
}

/// The answer to an [`AuthRequest`]: the fields its etcd response has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    pub header: ResponseHeader,
    /// Users (UserList), or roles (UserGet, RoleList), sorted.
    pub names: Vec<String>,
    /// RoleGet's permissions, by key.
    pub permissions: Vec<Permission>,
    /// Status's fields.
    pub enabled: bool,
    pub auth_revision: u64,
}

impl AuthState {
    /// Whether requests must prove who sent them.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// User `name`'s generation (what a token for it must name), if the user exists.
    pub fn user_generation(&self, name: &str) -> Option<u64> {
        self.users.get(name).map(|u| u.generation)
    }

    /// What tokens are signed with (empty until auth is first enabled, and in a store
    /// restored from a backup until its first login chooses one).
    pub fn token_secret(&self) -> &[u8] {
        &self.token_secret
    }

    /// Every user, by name, as a backup holds them.
    pub fn user_records(&self) -> Vec<UserRecord> {
        self.users
            .iter()
            .map(|(name, u)| UserRecord {
                name: name.clone(),
                password_hash: u.password_hash.clone(),
                roles: u.roles.iter().cloned().collect(),
            })
            .collect()
    }

    /// Every role, by name, with its permissions by key.
    pub fn role_records(&self) -> Vec<RoleRecord> {
        self.roles
            .keys()
            .map(|name| RoleRecord {
                name: name.clone(),
                permissions: self.role_permissions(name).unwrap_or_default(),
            })
            .collect()
    }

    /// The state a backup describes. It has no token secret: the first login after
    /// the restore has one chosen through the log (see [`AuthRequest::Enable`]).
    pub fn from_records(
        enabled: bool,
        revision: u64,
        users: Vec<UserRecord>,
        roles: Vec<RoleRecord>,
    ) -> AuthState {
        let users = users
            .into_iter()
            .map(|u| {
                let user = User {
                    password_hash: u.password_hash,
                    roles: u.roles.into_iter().collect(),
                    generation: revision,
                };
                (u.name, user)
            })
            .collect();
        let roles = roles
            .into_iter()
            .map(|r| {
                let perms = r
                    .permissions
                    .into_iter()
                    .map(|p| ((p.key, p.range_end), p.kind))
                    .collect();
                (r.name, perms)
            })
            .collect();
        AuthState {
            enabled,
            revision,
            users,
            roles,
            token_secret: Bytes::new(),
        }
    }

    /// `name`'s password hash and generation, if `name` exists; the hash is none for a
    /// user without a password.
    pub fn credentials(&self, name: &str) -> Option<(Option<&str>, u64)> {
        self.users
            .get(name)
            .map(|u| (u.password_hash.as_deref(), u.generation))
    }

    /// Whether a token for `name` at `generation` still speaks for that user.
    pub fn is_current(&self, name: &str, generation: u64) -> bool {
        self.users
            .get(name)
            .is_some_and(|u| u.generation == generation)
    }

    /// Whether a caller may read every key in `(key, range_end)` now: what a member
    /// checks before serving a read or starting a watch.
    pub fn may_read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
        self.check_keys(caller, key, range_end, PermissionType::Read)
    }

    /// Whether a caller may do what only administrators (holders of the root role) may:
    /// anyone may while auth is off.
    pub fn may_administer(&self, caller: &Caller) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        if AuthState::is_admin(self.user(caller)?) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// Apply `request`; `header` is the store's header after it (auth changes no keys).
    pub(crate) fn apply(
        &mut self,
        request: AuthRequest,
        header: ResponseHeader,
    ) -> Result<AuthResponse, KvError> {
        let mut response = AuthResponse {
            header,
            ..AuthResponse::default()
        };
        let changed = match request {
            AuthRequest::Status => {
                response.enabled = self.enabled;
                response.auth_revision = self.revision;
                false
            }
            AuthRequest::UserGet { name } => {
                let user = self.users.get(&name).ok_or(KvError::UserNotFound)?;
                response.names = user.roles.iter().cloned().collect();
                false
            }
            AuthRequest::UserList => {
                response.names = self.users.keys().cloned().collect();
                false
            }
            AuthRequest::RoleGet { name } => {
                response.permissions = self.role_permissions(&name)?;
                false
            }
            AuthRequest::RoleList => {
                response.names = self.roles.keys().cloned().collect();
                false
            }
            change => self.change(change)?,
        };
        if changed {
            self.revision += 1;
        }
        Ok(response)
    }

    /// Apply a change; whether it changed anything.
    fn change(&mut self, request: AuthRequest) -> Result<bool, KvError> {
        let next = self.revision + 1;
        match request {
            AuthRequest::Enable { token_secret } => {
                if self.enabled {
                    if !self.token_secret.is_empty() || token_secret.is_empty() {
                        return Ok(false);
                    }
                    self.token_secret = token_secret;
                    return Ok(true);
                }
                let root = self.users.get(ROOT_USER).ok_or(KvError::RootUserNotExist)?;
                if !root.roles.contains(ROOT_ROLE) {
                    return Err(KvError::RootRoleNotExist);
                }
                self.enabled = true;
                self.token_secret = token_secret;
                // Tokens from an earlier time auth was on end here, on every member,
                // even one that checked such a token before it applied this.
                for user in self.users.values_mut() {
                    user.generation = next;
                }
            }
            AuthRequest::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthRequest::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(KvError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(KvError::UserExists);
                }
                let user = User {
                    password_hash,
                    roles: BTreeSet::new(),
                    generation: next,
                };
                self.users.insert(name, user);
            }
            AuthRequest::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(KvError::InvalidAuthManagement);
                }
                self.users.remove(&name).ok_or(KvError::UserNotFound)?;
            }
            AuthRequest::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(&name).ok_or(KvError::UserNotFound)?;
                user.password_hash = Some(password_hash);
                user.generation = next;
            }
            AuthRequest::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(&role) {
                    // Checked after the user in etcd; the user first here too.
                    self.users.get(&user).ok_or(KvError::UserNotFound)?;
                    return Err(KvError::RoleNotFound);
                }
                let user = self.users.get_mut(&user).ok_or(KvError::UserNotFound)?;
                return Ok(user.roles.insert(role));
            }
            AuthRequest::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(KvError::InvalidAuthManagement);
                }
                let user = self.users.get_mut(&user).ok_or(KvError::UserNotFound)?;
                if !user.roles.remove(&role) {
                    return Err(KvError::RoleNotGranted);
                }
            }
            AuthRequest::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(KvError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(KvError::RoleExists);
                }
                self.roles.insert(name, BTreeMap::new());
            }
            AuthRequest::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(KvError::InvalidAuthManagement);
                }
                self.roles.remove(&name).ok_or(KvError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(&name);
                }
            }
            AuthRequest::RoleGrantPermission { role, permission } => {
                let perms = self.roles.get_mut(&role).ok_or(KvError::RoleNotFound)?;
                // The same keys granted again take the new type, as in etcd.
                perms.insert((permission.key, permission.range_end), permission.kind);
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let perms = self.roles.get_mut(&role).ok_or(KvError::RoleNotFound)?;
                perms
                    .remove(&(key, range_end))
                    .ok_or(KvError::PermissionNotGranted)?;
            }
            read => unreachable!("{read:?} is a read, answered by apply"),
        }
        Ok(true)
    }

    /// The root role, granted to a user though never added, is not found here (as in etcd).
    fn role_permissions(&self, name: &str) -> Result<Vec<Permission>, KvError> {
        let perms = self.roles.get(name).ok_or(KvError::RoleNotFound)?;
        Ok(perms
            .iter()
            .map(|((key, range_end), &kind)| Permission {
                kind,
                key: key.clone(),
                range_end: range_end.clone(),
            })
            .collect())
    }

    /// The user a caller names, if auth is on and the caller is a current user.
    pub(crate) fn user(&self, caller: &Caller) -> Result<&User, KvError> {
        match caller {
            Caller::Anonymous => Err(KvError::UserEmpty),
            Caller::User { name, generation } => match self.users.get(name) {
                Some(user) if user.generation == *generation => Ok(user),
                // Deleted, made again, or given a new password since the token was
                // checked: the token no longer speaks for anyone.
                _ => Err(KvError::InvalidAuthToken),
            },
        }
    }

    pub(crate) fn is_admin(user: &User) -> bool {
        user.roles.contains(ROOT_ROLE)
    }

    /// Whether `caller` may access every key of `(key, range_end)` for `wanted`: the
    /// range must be covered by the union of its roles' ranges that allow it.
    pub fn check_keys(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        wanted: PermissionType,
    ) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        let user = self.user(caller)?;
        if AuthState::is_admin(user) {
            return Ok(());
        }
        let granted: Vec<KeyRange<'_>> = user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flat_map(|perms| perms.iter())
            .filter(|(_, kind)| kind.allows(wanted))
            .map(|((k, end), _)| KeyRange::new(k, end))
            .collect();
        if covered(KeyRange::new(key, range_end), &granted) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }
}

/// Where a grant's keys end (exclusive); `None`: they do not.
type End<'a> = Option<Cow<'a, [u8]>>;

/// Whether the union of `granted` covers every key of `wanted`.
fn covered(wanted: KeyRange<'_>, granted: &[KeyRange<'_>]) -> bool {
    let (start, end): (&[u8], Option<&[u8]>) = match wanted {
        KeyRange::Single(key) => return granted.iter().any(|g| g.contains(key)),
        KeyRange::From(key) => (key, None),
        KeyRange::Between(start, end) if start >= end => return true,
        KeyRange::Between(start, end) => (start, Some(end)),
    };
    // Each grant as [from, to) (`to` None: unbounded), sorted by `from` and swept once:
    // O(n log n) for a user with n permissions.
    let mut spans: Vec<(&[u8], End<'_>)> = granted
        .iter()
        .filter_map(|g| match *g {
            KeyRange::Single(k) => Some((k, Some(Cow::Owned([k, b"\0"].concat())))),
            KeyRange::From(k) => Some((k, None)),
            KeyRange::Between(s, e) if s < e => Some((s, Some(Cow::Borrowed(e)))),
            KeyRange::Between(..) => None,
        })
        .collect();
    spans.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut spans = spans.into_iter().peekable();
    // Every key before `at` is covered; each round takes the spans that start by `at`
    // and moves it to the furthest of their ends (spans taken earlier end before it).
    let mut at: Cow<'_, [u8]> = Cow::Borrowed(start);
    loop {
        let mut reach: Option<End<'_>> = None;
        while let Some((from, _)) = spans.peek()
            && *from <= at.as_ref()
        {
            let (_, to) = spans.next().expect("peeked");
            reach = Some(match (reach, to) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
        match reach {
            None => return false,
            Some(None) => return true,
            Some(Some(to)) if to.as_ref() <= at.as_ref() => return false,
            Some(Some(to)) => {
                if end.is_some_and(|e| to.as_ref() >= e) {
                    return true;
                }
                at = to;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r<'a>(key: &'a [u8], end: &'a [u8]) -> KeyRange<'a> {
        KeyRange::new(key, end)
    }

    #[test]
    fn ranges_are_covered_only_by_the_union_of_granted_ranges() {
        let granted = [r(b"a", b"c"), r(b"c", b"e"), r(b"x", b"")];
        assert!(covered(r(b"a", b"e"), &granted), "two adjacent ranges");
        assert!(covered(r(b"b", b""), &granted));
        assert!(covered(r(b"x", b""), &granted));
        assert!(!covered(r(b"a", b"f"), &granted), "past the end");
        assert!(!covered(r(b"0", b"b"), &granted), "before the start");
        assert!(!covered(r(b"a", b"\0"), &granted), "from a on");
        assert!(!covered(r(b"x", b"y"), &granted), "x alone is not [x, y)");
        assert!(covered(r(b"x", b"x\0"), &granted), "[x, x\\0) is just x");
        assert!(covered(r(b"a", b"\0"), &[r(b"a", b"b"), r(b"b", b"\0")]));
        assert!(covered(r(b"a", b"a\0\0"), &[r(b"a", b""), r(b"a\0", b"")]));
        assert!(covered(r(b"b", b"a"), &[]), "an empty range needs nothing");
        assert!(!covered(r(b"a", b""), &[]));
    }

    /// The walk `covered` replaced: from `start`, jump to the furthest end of any grant
    /// holding the current key (O(n) per step). The model the sweep is checked against.
    fn covered_by_walking(wanted: KeyRange<'_>, granted: &[KeyRange<'_>]) -> bool {
        let (start, end): (&[u8], Option<&[u8]>) = match wanted {
            KeyRange::Single(key) => return granted.iter().any(|g| g.contains(key)),
            KeyRange::From(key) => (key, None),
            KeyRange::Between(start, end) if start >= end => return true,
            KeyRange::Between(start, end) => (start, Some(end)),
        };
        // Walk from `start`, each step jumping to the furthest end of a granted range that
        // holds the current key, until past `end`. Each step moves forward, so it ends.
        let mut at: Vec<u8> = start.to_vec();
        loop {
            let mut furthest: Option<Option<Vec<u8>>> = None; // Some(None): unbounded
            for g in granted {
                let reach: Option<Vec<u8>> = match *g {
                    KeyRange::Single(k) if k == at.as_slice() => Some([k, b"\0"].concat()),
                    KeyRange::From(k) if k <= at.as_slice() => None,
                    KeyRange::Between(s, e) if s <= at.as_slice() && at.as_slice() < e => {
                        Some(e.to_vec())
                    }
                    _ => continue,
                };
                furthest = Some(match (furthest, reach) {
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some(a.max(b)),
                    (None, Some(b)) => Some(b),
                });
            }
            match furthest {
                None => return false,
                Some(None) => return true,
                Some(Some(reach)) => {
                    if end.is_some_and(|e| reach.as_slice() >= e) {
                        return true;
                    }
                    at = reach;
                }
            }
        }
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..3)
    }

    /// A key and a range end: none (the key alone), "\0" (from the key on), the key's
    /// successor (the key alone, as a range), or any key.
    fn range() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (key(), 0..4u8, key()).prop_map(|(k, kind, other)| match kind {
            0 => (k, vec![]),
            1 => (k, vec![0]),
            2 => {
                let next = [k.as_slice(), b"\0"].concat();
                (k, next)
            }
            _ => (k, other),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn the_sweep_agrees_with_the_walk(
            wanted in range(),
            granted in proptest::collection::vec(range(), 0..6),
        ) {
            let granted: Vec<KeyRange<'_>> = granted.iter().map(|(k, e)| r(k, e)).collect();
            let wanted = r(&wanted.0, &wanted.1);
            prop_assert_eq!(covered(wanted, &granted), covered_by_walking(wanted, &granted));
        }
    }

    fn secret() -> Bytes {
        Bytes::from_static(b"secret")
    }

    fn state_with_root() -> AuthState {
        let mut s = AuthState::default();
        let h = ResponseHeader::default();
        let add = |name: &str| AuthRequest::UserAdd {
            name: name.into(),
            password_hash: Some("hash".into()),
        };
        s.apply(add("root"), h).unwrap();
        s.apply(add("alice"), h).unwrap();
        s.apply(AuthRequest::RoleAdd { name: "r".into() }, h)
            .unwrap();
        let grant = |user: &str, role: &str| AuthRequest::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        s.apply(grant("root", "root"), h).unwrap();
        s.apply(grant("alice", "r"), h).unwrap();
        s
    }

    fn user(s: &AuthState, name: &str) -> Caller {
        Caller::User {
            name: name.into(),
            generation: s.users[name].generation,
        }
    }

    #[test]
    fn enabling_needs_root_with_the_root_role_and_then_guards_it() {
        let h = ResponseHeader::default();
        let mut s = AuthState::default();
        let enable = || AuthRequest::Enable {
            token_secret: secret(),
        };
        assert_eq!(s.apply(enable(), h), Err(KvError::RootUserNotExist));
        let root = AuthRequest::UserAdd {
            name: "root".into(),
            password_hash: None,
        };
        s.apply(root, h).unwrap();
        assert_eq!(s.apply(enable(), h), Err(KvError::RootRoleNotExist));
        let mut s = state_with_root();
        let before = s.revision;
        s.apply(enable(), h).unwrap();
        assert!(s.enabled && s.revision == before + 1);
        let delete_root = AuthRequest::UserDelete {
            name: "root".into(),
        };
        assert_eq!(s.apply(delete_root, h), Err(KvError::InvalidAuthManagement));
        let revoke = AuthRequest::UserRevokeRole {
            user: "root".into(),
            role: "root".into(),
        };
        assert_eq!(s.apply(revoke, h), Err(KvError::InvalidAuthManagement));
    }

    #[test]
    fn users_read_what_their_roles_grant_and_nothing_else() {
        let h = ResponseHeader::default();
        let mut s = state_with_root();
        let before = user(&s, "alice");
        let grant = AuthRequest::RoleGrantPermission {
            role: "r".into(),
            permission: Permission {
                kind: PermissionType::Read,
                key: Bytes::from_static(b"k"),
                range_end: Bytes::from_static(b"l"),
            },
        };
        s.apply(grant, h).unwrap();
        assert_eq!(
            s.may_read(&Caller::Anonymous, b"k1", b""),
            Ok(()),
            "auth off"
        );
        s.apply(
            AuthRequest::Enable {
                token_secret: secret(),
            },
            h,
        )
        .unwrap();
        assert_eq!(
            s.may_read(&before, b"k1", b""),
            Err(KvError::InvalidAuthToken),
            "enabling auth ends tokens from before"
        );
        let alice = user(&s, "alice");
        assert_eq!(s.may_read(&alice, b"k1", b""), Ok(()));
        assert_eq!(s.may_read(&alice, b"k", b"l"), Ok(()));
        assert_eq!(
            s.may_read(&alice, b"m", b""),
            Err(KvError::PermissionDenied)
        );
        assert_eq!(
            s.check_keys(&alice, b"k1", b"", PermissionType::Write),
            Err(KvError::PermissionDenied)
        );
        assert_eq!(s.may_read(&user(&s, "root"), b"m", b""), Ok(()));
        assert_eq!(
            s.may_read(&Caller::Anonymous, b"k1", b""),
            Err(KvError::UserEmpty)
        );
        let stale = AuthRequest::UserChangePassword {
            name: "alice".into(),
            password_hash: "new".into(),
        };
        s.apply(stale, h).unwrap();
        assert_eq!(
            s.may_read(&alice, b"k1", b""),
            Err(KvError::InvalidAuthToken)
        );
    }

    #[test]
    fn management_errors_are_etcds() {
        let h = ResponseHeader::default();
        let mut s = state_with_root();
        let cases = [
            (
                AuthRequest::UserAdd {
                    name: "alice".into(),
                    password_hash: None,
                },
                KvError::UserExists,
            ),
            (
                AuthRequest::UserAdd {
                    name: "".into(),
                    password_hash: None,
                },
                KvError::UserEmpty,
            ),
            (
                AuthRequest::UserGet { name: "bob".into() },
                KvError::UserNotFound,
            ),
            (
                AuthRequest::RoleAdd { name: "r".into() },
                KvError::RoleExists,
            ),
            (
                AuthRequest::RoleGet { name: "q".into() },
                KvError::RoleNotFound,
            ),
            (
                AuthRequest::UserGrantRole {
                    user: "alice".into(),
                    role: "q".into(),
                },
                KvError::RoleNotFound,
            ),
            (
                AuthRequest::UserRevokeRole {
                    user: "root".into(),
                    role: "r".into(),
                },
                KvError::RoleNotGranted,
            ),
            (
                AuthRequest::RoleRevokePermission {
                    role: "r".into(),
                    key: Bytes::from_static(b"k"),
                    range_end: Bytes::new(),
                },
                KvError::PermissionNotGranted,
            ),
        ];
        let revision = s.revision;
        for (request, error) in cases {
            assert_eq!(s.apply(request.clone(), h), Err(error), "{request:?}");
        }
        assert_eq!(s.revision, revision, "failed requests change nothing");
        s.apply(AuthRequest::RoleDelete { name: "r".into() }, h)
            .unwrap();
        assert!(
            s.users["alice"].roles.is_empty(),
            "a deleted role leaves its users"
        );
    }
}
