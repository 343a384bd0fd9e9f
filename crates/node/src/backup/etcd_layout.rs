//! etcd's backend layout: how etcd 3.4 keeps its key space, leases and compaction point
//! in bbolt buckets, from an ekmat snapshot and back.
//!
//! - `key`: one record per version, keyed by its revision (main as 8 bytes big-endian,
//!   `_`, sub as 8 bytes big-endian, then `t` for a deletion), the value a
//!   `mvccpb.KeyValue` (a deletion's holds only the key, as etcd writes it);
//! - `lease`: the lease id as 8 bytes big-endian to a `leasepb.Lease` (id, TTL);
//! - `meta`: `consistent_index` (the applied log index, 8 bytes big-endian; `etcdctl
//!   snapshot restore` rewrites it), and the compaction point under
//!   `finishedCompactRev` and `scheduledCompactRev` as revision keys.
//!
//! - `auth`: `authEnabled` (one byte, 1 or 0) and `authRevision` (8 bytes big-endian);
//!   `authUsers` and `authRoles`: a name to an `authpb.User` (its bcrypt hash as the
//!   password) or an `authpb.Role`.
//!
//! etcd's other buckets (members, alarms) are left out: `snapshot restore` creates the
//! members anew and etcd creates the rest empty.

use ekmat_api::{authpb, mvccpb};
use ekmat_kv::{HistoryRecord, SnapshotSource};
use prost::Message;

use super::bbolt::{Bucket, BucketSource, Entry};
use crate::service::convert;

const KEY: &[u8] = b"key";
const LEASE: &[u8] = b"lease";
const META: &[u8] = b"meta";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
/// A revision key: main, `_`, sub.
const REVISION_LEN: usize = 17;
const TOMBSTONE: u8 = b't';

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// One version as etcd's `key` bucket holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
    pub deleted: bool,
    pub kv: mvccpb::KeyValue,
}

/// What a backup holds, read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdState {
    /// In revision order.
    pub revisions: Vec<Revision>,
    /// (id, TTL in seconds), by id.
    pub leases: Vec<(i64, i64)>,
    pub compact_revision: i64,
    pub consistent_index: u64,
    /// Users, roles and the switch (no token secret: a restored cluster chooses one).
    pub auth: ekmat_kv::AuthState,
    /// Buckets with entries that ekmat does not restore (etcd's users and roles, its
    /// alarms), by name with their entry counts. Members are not listed: a restore
    /// always starts a new membership, as `etcdctl snapshot restore` does.
    pub left_out: Vec<(String, usize)>,
}

impl EtcdState {
    /// The store revision: that of the last record (as etcd's `snapshot status` reads
    /// it), or the compaction point if that is later.
    pub fn revision(&self) -> i64 {
        self.revisions
            .last()
            .map_or(0, |r| r.main)
            .max(self.compact_revision)
    }
}

fn revision_key(main: i64, sub: i64, deleted: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_LEN + 1);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if deleted {
        key.push(TOMBSTONE);
    }
    key
}

/// The buckets etcd would hold for the store `source` was taken from, `history` being
/// `source.history()`. The key space's records are encoded as they are written.
pub fn buckets<'a>(
    source: &SnapshotSource,
    history: &'a [HistoryRecord<'a>],
) -> Vec<BucketSource<'a>> {
    let keys = BucketSource {
        name: KEY.to_vec(),
        len: history.len(),
        entry: Box::new(move |i| key_record(&history[i])),
    };
    let mut leases: Vec<Entry> = source
        .lease_ttls()
        .map(|(id, ttl)| {
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            };
            (id.to_be_bytes().to_vec(), record.encode_to_vec())
        })
        .collect();
    // By key bytes, as bbolt orders them: a negative id sorts after the positive ones.
    leases.sort();
    let mut meta: Vec<Entry> = vec![(
        CONSISTENT_INDEX.to_vec(),
        source.applied().to_be_bytes().to_vec(),
    )];
    if source.compact_revision() > 0 {
        let rev = revision_key(source.compact_revision(), 0, false);
        meta.push((FINISHED_COMPACT.to_vec(), rev.clone()));
        meta.push((SCHEDULED_COMPACT.to_vec(), rev));
    }
    meta.sort();
    let mut buckets = vec![
        keys,
        BucketSource::of(LEASE, leases),
        BucketSource::of(META, meta),
    ];
    buckets.extend(auth_buckets(source.auth()));
    buckets
}

/// etcd's three auth buckets, as etcd creates them (none for a store that never had
/// users, roles or auth on: etcd then has them empty).
fn auth_buckets<'a>(auth: &ekmat_kv::AuthState) -> Vec<BucketSource<'a>> {
    let users: Vec<Entry> = auth
        .user_records()
        .into_iter()
        .map(|u| {
            let record = authpb::User {
                name: u.name.clone().into_bytes(),
                password: u.password_hash.clone().unwrap_or_default().into_bytes(),
                roles: u.roles,
                options: Some(authpb::UserAddOptions {
                    no_password: u.password_hash.is_none(),
                }),
            };
            (u.name.into_bytes(), record.encode_to_vec())
        })
        .collect();
    let roles: Vec<Entry> = auth
        .role_records()
        .into_iter()
        .map(|r| {
            let record = authpb::Role {
                name: r.name.clone().into_bytes(),
                key_permission: r
                    .permissions
                    .into_iter()
                    .map(convert::permission_out)
                    .collect(),
            };
            (r.name.into_bytes(), record.encode_to_vec())
        })
        .collect();
    if users.is_empty() && roles.is_empty() && !auth.enabled() {
        return Vec::new();
    }
    let switch = vec![
        (AUTH_ENABLED.to_vec(), vec![u8::from(auth.enabled())]),
        (
            AUTH_REVISION.to_vec(),
            auth.revision().to_be_bytes().to_vec(),
        ),
    ];
    // Names are map keys, so each bucket is in key order already.
    vec![
        BucketSource::of(AUTH, switch),
        BucketSource::of(AUTH_USERS, users),
        BucketSource::of(AUTH_ROLES, roles),
    ]
}

/// The auth state etcd's three buckets describe.
fn read_auth(
    switch: &[Entry],
    users: Vec<Entry>,
    roles: Vec<Entry>,
) -> Result<ekmat_kv::AuthState, String> {
    let mut enabled = false;
    let mut revision = 0;
    for (key, value) in switch {
        match &key[..] {
            AUTH_ENABLED => enabled = value.as_slice() == [1],
            AUTH_REVISION => {
                let bytes = value
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("auth bucket: authRevision of {} bytes", value.len()))?;
                revision = u64::from_be_bytes(bytes);
            }
            _ => {}
        }
    }
    let users = users
        .into_iter()
        .map(|(_, value)| {
            let u =
                authpb::User::decode(&value[..]).map_err(|e| format!("authUsers bucket: {e}"))?;
            let no_password = u.options.is_some_and(|o| o.no_password) || u.password.is_empty();
            Ok(ekmat_kv::UserRecord {
                name: String::from_utf8(u.name).map_err(|e| format!("authUsers bucket: {e}"))?,
                password_hash: (!no_password)
                    .then(|| String::from_utf8(u.password))
                    .transpose()
                    .map_err(|e| format!("authUsers bucket: {e}"))?,
                roles: u.roles,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let roles = roles
        .into_iter()
        .map(|(_, value)| {
            let r =
                authpb::Role::decode(&value[..]).map_err(|e| format!("authRoles bucket: {e}"))?;
            Ok(ekmat_kv::RoleRecord {
                name: String::from_utf8(r.name).map_err(|e| format!("authRoles bucket: {e}"))?,
                permissions: r
                    .key_permission
                    .into_iter()
                    .map(|p| {
                        convert::permission_in(p)
                            .map_err(|kind| format!("authRoles bucket: permission type {kind}"))
                    })
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ekmat_kv::AuthState::from_records(
        enabled, revision, users, roles,
    ))
}

/// One version as etcd's `key` bucket holds it.
fn key_record(r: &HistoryRecord<'_>) -> Entry {
    let value = if r.deleted {
        mvccpb::KeyValue {
            key: r.kv.key.clone(),
            ..Default::default()
        }
    } else {
        crate::service::convert::key_value(r.kv.clone())
    };
    (
        revision_key(r.main, i64::from(r.sub), r.deleted),
        value.encode_to_vec(),
    )
}

/// Read etcd's layout back from `buckets` (from ekmat's backups or etcd's own), freeing
/// each entry once decoded.
pub fn read(buckets: Vec<Bucket>) -> Result<EtcdState, String> {
    // etcd's store creates both whenever it opens a backend.
    for needed in [KEY, META] {
        if !buckets.iter().any(|b| b.name == needed) {
            return Err(format!(
                "not an etcd backend database: no '{}' bucket",
                String::from_utf8_lossy(needed)
            ));
        }
    }
    let mut state = EtcdState::default();
    let (mut switch, mut users, mut roles) = (Vec::new(), Vec::new(), Vec::new());
    for bucket in buckets {
        match &bucket.name[..] {
            KEY => state.revisions = read_revisions(bucket.entries)?,
            LEASE => state.leases = read_leases(&bucket.entries)?,
            META => read_meta(&bucket.entries, &mut state)?,
            AUTH => switch = bucket.entries,
            AUTH_USERS => users = bucket.entries,
            AUTH_ROLES => roles = bucket.entries,
            b"members" | b"members_removed" | b"cluster" => {}
            name if !bucket.entries.is_empty() => state.left_out.push((
                String::from_utf8_lossy(name).into_owned(),
                bucket.entries.len(),
            )),
            _ => {}
        }
    }
    state.auth = read_auth(&switch, users, roles)?;
    Ok(state)
}

fn read_revisions(entries: Vec<Entry>) -> Result<Vec<Revision>, String> {
    entries
        .into_iter()
        .map(|(key, value)| {
            let deleted = key.len() == REVISION_LEN + 1 && key[REVISION_LEN] == TOMBSTONE;
            let (main, sub) = parse_revision(&key)
                .filter(|_| key.len() == REVISION_LEN || deleted)
                .ok_or_else(|| format!("key bucket: {key:?} is not a revision"))?;
            let kv = mvccpb::KeyValue::decode(&value[..])
                .map_err(|e| format!("key bucket: revision {main}: {e}"))?;
            Ok(Revision {
                main,
                sub,
                deleted,
                kv,
            })
        })
        .collect()
}

fn parse_revision(key: &[u8]) -> Option<(i64, i64)> {
    let main = key.get(..8)?.try_into().ok().map(i64::from_be_bytes)?;
    let sub = key.get(9..17)?.try_into().ok().map(i64::from_be_bytes)?;
    (key[8] == b'_').then_some((main, sub))
}

fn read_leases(entries: &[Entry]) -> Result<Vec<(i64, i64)>, String> {
    entries
        .iter()
        .map(|(_, value)| {
            LeaseRecord::decode(&value[..])
                .map(|l| (l.id, l.ttl))
                .map_err(|e| format!("lease bucket: {e}"))
        })
        .collect()
}

fn read_meta(entries: &[Entry], state: &mut EtcdState) -> Result<(), String> {
    for (key, value) in entries {
        match &key[..] {
            CONSISTENT_INDEX => {
                let bytes = value.as_slice().try_into().map_err(|_| {
                    format!("meta bucket: consistent_index of {} bytes", value.len())
                })?;
                state.consistent_index = u64::from_be_bytes(bytes);
            }
            // etcd records a compaction as scheduled, deletes the history below it in
            // batches, then records it finished; a backup taken in between already
            // misses part of that history, so the later of the two is the point.
            FINISHED_COMPACT | SCHEDULED_COMPACT => {
                let rev = parse_revision(value)
                    .ok_or("meta bucket: a compaction revision is not a revision")?
                    .0;
                state.compact_revision = state.compact_revision.max(rev);
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ekmat_core::RequestId;
    use ekmat_kv::{Command, Envelope, KvStore, LeaseGrantRequest, PutRequest};

    use super::*;
    use crate::backup::{bbolt, decode, encode};

    fn apply(kv: &mut KvStore, command: Command) {
        let index = kv.applied_index() + 1;
        let id = RequestId {
            client: 0,
            seq: index,
        };
        kv.apply(index, id, &Envelope::new(1, command).encode());
    }

    #[test]
    fn leases_with_negative_ids_are_written_in_bbolt_key_order() {
        let mut kv = KvStore::new();
        for id in [7, -5] {
            apply(
                &mut kv,
                Command::LeaseGrant(LeaseGrantRequest { ttl: 60, id }),
            );
        }
        apply(
            &mut kv,
            Command::Put(PutRequest {
                key: "k".into(),
                value: "v".into(),
                lease: -5,
                ..Default::default()
            }),
        );
        let file = encode(&kv.snapshot_source()).unwrap();
        let state = decode(&file).unwrap();
        assert_eq!(state.leases, vec![(7, 60), (-5, 60)]);
        assert_eq!(state.revisions[0].kv.lease, -5);
    }

    #[test]
    fn users_roles_and_the_switch_go_into_a_backup_and_come_back() {
        use ekmat_kv::{AuthRequest, Permission, PermissionType};
        let mut kv = KvStore::new();
        let perm = |kind, key: &'static str, end: &'static str| Permission {
            kind,
            key: key.into(),
            range_end: end.into(),
        };
        for request in [
            AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: Some("$2b$10$hash".into()),
            },
            AuthRequest::UserAdd {
                name: "nopw".into(),
                password_hash: None,
            },
            AuthRequest::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleGrantPermission {
                role: "r".into(),
                permission: perm(PermissionType::Read, "a", "b"),
            },
            AuthRequest::RoleGrantPermission {
                role: "r".into(),
                permission: perm(PermissionType::ReadWrite, "k", ""),
            },
            AuthRequest::UserGrantRole {
                user: "nopw".into(),
                role: "r".into(),
            },
            AuthRequest::Enable {
                token_secret: "secret".into(),
            },
        ] {
            apply(&mut kv, Command::Auth(request));
        }
        let file = encode(&kv.snapshot_source()).unwrap();
        let back = decode(&file).unwrap().auth;
        let auth = kv.auth();
        assert!(back.enabled());
        assert_eq!(back.revision(), auth.revision());
        assert_eq!(back.user_records(), auth.user_records());
        assert_eq!(back.role_records(), auth.role_records());
        assert!(
            back.token_secret().is_empty(),
            "the secret stays in the cluster"
        );
        let (hash, _) = back.credentials("root").unwrap();
        assert_eq!(hash, Some("$2b$10$hash"));
        // A store that never had auth writes no auth buckets, as etcd's are then empty.
        let plain = encode(&KvStore::new().snapshot_source()).unwrap();
        assert_eq!(decode(&plain).unwrap().auth, ekmat_kv::AuthState::default());
    }

    fn meta(entries: Vec<Entry>) -> Bucket {
        Bucket {
            name: META.to_vec(),
            entries,
        }
    }

    #[test]
    fn a_compaction_scheduled_but_not_finished_is_the_compaction_point() {
        let keys = Bucket {
            name: KEY.to_vec(),
            entries: vec![],
        };
        let state = read(vec![
            keys,
            meta(vec![
                (FINISHED_COMPACT.to_vec(), revision_key(5, 0, false)),
                (SCHEDULED_COMPACT.to_vec(), revision_key(10, 0, false)),
            ]),
        ])
        .unwrap();
        assert_eq!(state.compact_revision, 10);
        assert_eq!(state.revision(), 10);
    }

    #[test]
    fn a_bbolt_file_without_etcds_buckets_is_no_backup() {
        let other = bbolt::write(&[Bucket {
            name: b"something".to_vec(),
            entries: vec![(b"a".to_vec(), b"b".to_vec())],
        }]);
        let err = decode(&other).unwrap_err();
        assert!(err.contains("not an etcd backend database"), "{err}");
    }

    #[test]
    fn two_changes_at_one_revision_are_refused_on_restore() {
        let record = |key: &str| {
            let kv = mvccpb::KeyValue {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"v".to_vec().into(),
                lease: 0,
            };
            (revision_key(2, 0, false), kv.encode_to_vec())
        };
        // Two keys under one revision key cannot even be written as one bucket...
        let keys = Bucket {
            name: KEY.to_vec(),
            entries: vec![record("a"), record("b")],
        };
        let sources: Vec<BucketSource<'_>> = vec![BucketSource::of(KEY, keys.entries.clone())];
        assert!(bbolt::Plan::of(&sources).is_err());
        // ...and a store holding them is refused.
        let records = ["a", "b"]
            .map(|k| ekmat_kv::BackupRecord {
                main: 2,
                sub: 0,
                deleted: false,
                kv: ekmat_kv::KeyValue {
                    key: k.into(),
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                    value: "v".into(),
                    lease: 0,
                },
            })
            .to_vec();
        let err =
            ekmat_kv::KvStore::from_backup(1, records, &[], 0, Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("out of order or repeated"),
            "{err}"
        );
    }
}
