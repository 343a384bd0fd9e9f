//! The state machine: applies logged envelopes in index order and serves local reads.

use bytes::Bytes;
use ekmat_core::RequestId;

use crate::alarm::{AlarmMember, AlarmResponse, AlarmType, Alarms};
use crate::auth::{AuthState, Caller};
use crate::command::{Applied, Command, Envelope, Response, TickResponse};
use crate::error::{DecodeError, KvError};
use crate::lease::{
    LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    Leases,
};
use crate::mvcc::Mvcc;
use crate::range::range;
use crate::rpc::{CompactionResponse, RangeRequest, RangeResponse, ResponseHeader};
use crate::session::{Seen, Sessions};
use crate::snapshot::SnapshotSource;
use crate::txn::txn;
use crate::watch::{Event, events_between};
use crate::write::{Writer, check_delete_shape, check_put_shape, check_put_state};

/// What a lease adds to [`KvStore::size_bytes`] (etcd's `leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;

/// Who signed a request that executes (PBFT's registered clients, authenticated by
/// their signature rather than a token): the user, if the client's registration binds
/// it to one, whose permissions it executes with while auth is on. Unbound, it has
/// every right on keys. Every member must bind alike (the runtime compares them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignedBy {
    pub user: Option<String>,
}

/// etcd's v3 data model as a deterministic state machine: every replica that applies the
/// same log holds the same store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    pub(crate) mvcc: Mvcc,
    pub(crate) leases: Leases,
    pub(crate) sessions: Sessions,
    pub(crate) alarms: Alarms,
    pub(crate) auth: AuthState,
    /// The largest `now_ms` applied: the clock leases expire by.
    pub(crate) clock_ms: u64,
    pub(crate) applied: u64,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Log index of the last entry applied (or skipped).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The current revision (1 for an empty store).
    pub fn revision(&self) -> i64 {
        self.mvcc.revision
    }

    /// Reads and watches before this revision fail; 0 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.mvcc.compact_revision
    }

    /// The state machine's clock: the largest `now_ms` of any executed envelope.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// An estimate of the space the store takes, in bytes: every retained key version
    /// (key, value and a fixed overhead) and every lease (etcd's estimate of one). The same
    /// on every replica that applied the same log; what the space quota is checked against.
    pub fn size_bytes(&self) -> u64 {
        self.mvcc.bytes + self.leases.by_id.len() as u64 * LEASE_OVERHEAD
    }

    /// Client `client`'s latest executed request: its number and result (none for the
    /// anonymous client, whose requests are not remembered). What a host answers a
    /// client that signed its request with, since it holds no pending call for it.
    pub fn session(&self, client: u64) -> Option<(u64, &Result<Response, KvError>)> {
        self.sessions
            .by_client
            .get(&client)
            .map(|s| (s.seq, &s.result))
    }

    /// The raised alarms of type `alarm` ([`AlarmType::None`]: all), by member.
    pub fn alarms(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.alarms.get(alarm)
    }

    /// Users, roles, permissions and whether auth is on.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.mvcc.revision,
        }
    }

    /// Record that `index` was applied without a command (a protocol no-op).
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    /// Apply the log entry at `index`: the envelope `command` sent by request `id`.
    /// Indices must be consecutive. Repeated and superseded requests do not run (and do
    /// not move the clock); bytes that are not an envelope are skipped.
    pub fn apply(&mut self, index: u64, id: RequestId, command: &[u8]) -> Applied {
        self.apply_decoded(index, id, Envelope::decode(command))
    }

    /// [`KvStore::apply`] for a caller that has decoded the entry already.
    pub fn apply_decoded(
        &mut self,
        index: u64,
        id: RequestId,
        decoded: Result<Envelope, DecodeError>,
    ) -> Applied {
        self.apply_from(index, id, decoded, None)
    }

    /// [`KvStore::apply_decoded`] for a request its client signed (PBFT's registered
    /// clients), executed as [`SignedBy`] says.
    pub fn apply_signed(
        &mut self,
        index: u64,
        id: RequestId,
        decoded: Result<Envelope, DecodeError>,
        signer: &SignedBy,
    ) -> Applied {
        self.apply_from(index, id, decoded, Some(signer))
    }

    fn apply_from(
        &mut self,
        index: u64,
        id: RequestId,
        decoded: Result<Envelope, DecodeError>,
        signer: Option<&SignedBy>,
    ) -> Applied {
        self.advance(index);
        match self.sessions.check(id) {
            Seen::New => {}
            Seen::Repeated(result) => return Applied::Repeated(result),
            Seen::Superseded => return Applied::Superseded,
        }
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(e) => return Applied::Malformed(e),
        };
        let mut events = Vec::new();
        if envelope.command == Command::LeaseRenewAll {
            // Before the clock moves: the jump since the last leader's final entry is
            // exactly what must not expire these leases.
            self.leases.renew_all(envelope.now_ms.max(self.clock_ms));
        }
        self.advance_clock(envelope.now_ms, &mut events);
        let result = match signer {
            Some(signer) => self.execute_signed(envelope.command, signer, &mut events),
            None => self.execute(envelope.command, &mut events),
        };
        self.sessions.record(id, &result);
        Applied::Executed { result, events }
    }

    fn advance(&mut self, index: u64) {
        assert_eq!(
            index,
            self.applied + 1,
            "state machine applied out of order: {index} after {}",
            self.applied
        );
        self.applied = index;
    }

    /// Move the clock to `now_ms` if that is later, revoking the leases that expired, in
    /// id order, each in its own revision.
    fn advance_clock(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        if now_ms <= self.clock_ms {
            return;
        }
        if self.clock_ms == 0 {
            // A clock that never ran: deadlines counted from 0 (a store restored from a
            // backup) restart their TTLs now, whatever entry starts it.
            self.leases.renew_all(now_ms);
        }
        self.clock_ms = now_ms;
        if !self.leases.any_expired(now_ms) {
            return;
        }
        for id in self.leases.expired(now_ms) {
            let revoked = self.writer(events).revoke(id);
            debug_assert!(revoked.is_ok(), "an expiring lease exists");
            self.mvcc.finish();
        }
    }

    fn writer<'a>(&'a mut self, events: &'a mut Vec<Event>) -> Writer<'a> {
        Writer {
            mvcc: &mut self.mvcc,
            leases: &mut self.leases,
            events,
        }
    }

    /// A signed request's key is its credential: it never manages auth nor names a
    /// caller (checked here too, where every member decides alike, not only by the
    /// member it reached), and runs with its bound user's permissions, if any.
    fn execute_signed(
        &mut self,
        command: Command,
        signer: &SignedBy,
        events: &mut Vec<Event>,
    ) -> Result<Response, KvError> {
        if matches!(command, Command::Auth(_) | Command::As(..)) {
            return Err(KvError::PermissionDenied);
        }
        let Some(name) = &signer.user else {
            return self.execute(command, events);
        };
        if !self.auth.enabled() {
            return self.execute(command, events);
        }
        let generation = self
            .auth
            .user_generation(name)
            .ok_or(KvError::UserNotFound)?;
        let caller = Caller::User {
            name: name.clone(),
            generation,
        };
        self.execute(Command::As(caller, Box::new(command)), events)
    }

    fn execute(&mut self, command: Command, events: &mut Vec<Event>) -> Result<Response, KvError> {
        self.alarms.check(&command)?;
        let response = match command {
            Command::Tick => Response::Tick(TickResponse {
                header: self.header(),
            }),
            Command::LeaseRenewAll => Response::LeaseRenewAll(TickResponse {
                header: self.header(),
            }),
            Command::Range(req) => Response::Range(self.range(&req)?),
            Command::Put(req) => {
                check_put_shape(&req)?;
                check_put_state(&self.mvcc, &self.leases, &req)?;
                let mut resp = self.writer(events).put(req);
                self.mvcc.finish();
                resp.header = self.header();
                Response::Put(resp)
            }
            Command::DeleteRange(req) => {
                check_delete_shape(&req)?;
                let mut resp = self.writer(events).delete_range(req);
                self.mvcc.finish();
                resp.header = self.header();
                Response::DeleteRange(resp)
            }
            Command::Txn(req) => {
                let result = txn(&mut self.writer(events), req);
                // Finish even on error: a failed txn changed nothing, so this is a no-op.
                self.mvcc.finish();
                let mut resp = result?;
                resp.header = self.header();
                Response::Txn(resp)
            }
            Command::Compact(req) => {
                self.mvcc.compact(req.revision)?;
                Response::Compact(CompactionResponse {
                    header: self.header(),
                })
            }
            Command::LeaseGrant(req) => {
                let id = self.leases.grant(req.id, req.ttl, self.clock_ms)?;
                Response::LeaseGrant(LeaseGrantResponse {
                    header: self.header(),
                    id,
                    ttl: req.ttl,
                })
            }
            Command::LeaseRevoke(req) => {
                let result = self.writer(events).revoke(req.id);
                self.mvcc.finish();
                result?;
                Response::LeaseRevoke(LeaseRevokeResponse {
                    header: self.header(),
                })
            }
            Command::LeaseKeepAlive(req) => {
                let ttl = self.leases.keep_alive(req.id, self.clock_ms)?;
                Response::LeaseKeepAlive(LeaseKeepAliveResponse {
                    header: self.header(),
                    id: req.id,
                    ttl,
                })
            }
            Command::Alarm(req) => Response::Alarm(AlarmResponse {
                alarms: self.alarms.apply(&req),
                header: self.header(),
            }),
            Command::Auth(req) => Response::Auth(self.auth.apply(req, self.header())?),
            Command::As(caller, command) => {
                crate::permission::authorize(&self.auth, &self.leases, &caller, &command)?;
                return self.execute(*command, events);
            }
        };
        Ok(response)
    }

    /// Serve a range read locally (after a ReadIndex barrier, or a serializable read):
    /// nothing changes.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        range(&self.mvcc, req)
    }

    /// A lease's remaining time on the state machine's clock. etcd answers an unknown
    /// lease with TTL -1 rather than an error; the gRPC layer maps
    /// [`KvError::LeaseNotFound`] to that.
    pub fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, KvError> {
        self.lease_time_to_live_at(id, keys, self.clock_ms)
    }

    /// [`KvStore::lease_time_to_live`] with the remaining time measured at `now_ms` (a
    /// node's own clock: the log's clock stands still while nothing is proposed), never
    /// earlier than the log's clock.
    pub fn lease_time_to_live_at(
        &self,
        id: i64,
        keys: bool,
        now_ms: u64,
    ) -> Result<LeaseTimeToLiveResponse, KvError> {
        let mut resp = self
            .leases
            .time_to_live(id, keys, now_ms.max(self.clock_ms))?;
        resp.header = self.header();
        Ok(resp)
    }

    /// Milliseconds left on lease `id` at `now_ms` (never earlier than the log's clock),
    /// and the TTL it was granted, in seconds.
    pub fn lease_remaining_ms(&self, id: i64, now_ms: u64) -> Result<(u64, i64), KvError> {
        self.leases.remaining_ms(id, now_ms.max(self.clock_ms))
    }

    /// When the soonest lease expires on the log's clock, if any lease exists: the
    /// leader proposes a [`Command::Tick`] once its own clock passes it.
    pub fn next_lease_deadline(&self) -> Option<u64> {
        self.leases.next_deadline()
    }

    /// Every live lease's id, in order.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.by_id.keys().copied().collect()
    }

    /// Every event at revision `from` or later on keys in `(key, range_end)` (with the
    /// range conventions of [`RangeRequest`]), in revision order. Fails with
    /// [`KvError::Compacted`] if `from` is before the compaction point; starting at the
    /// compaction point itself works, as in etcd.
    pub fn events_between(
        &self,
        from: i64,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<Event>, KvError> {
        events_between(&self.mvcc, from, key, range_end)
    }

    /// Everything the state machine holds, for [`KvStore::restore`].
    pub fn snapshot(&self) -> Bytes {
        self.snapshot_source().encode()
    }

    /// What a snapshot is made of, in O(1): encode it elsewhere while this store goes on.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource::of(self)
    }

    /// The store a backup in etcd's layout describes, as of log index `applied`: every
    /// retained version in revision order, the leases (id, TTL in seconds), the
    /// compaction point, and users and roles. No client sessions, alarms or lease
    /// deadlines come with it.
    pub fn from_backup(
        applied: u64,
        records: Vec<crate::BackupRecord>,
        leases: &[(i64, i64)],
        compact_revision: i64,
        auth: AuthState,
    ) -> Result<KvStore, KvError> {
        crate::snapshot::from_backup(applied, records, leases, compact_revision, auth)
    }

    /// The store a [`KvStore::snapshot`] was taken of.
    pub fn restore(bytes: &[u8]) -> Result<KvStore, KvError> {
        crate::snapshot::decode(bytes)
    }

    /// A deterministic hash of the replicated state — data with its history since the
    /// compaction point, revisions, leases, clock and sessions — for comparing replicas.
    /// It leaves out the applied index (compare that separately). Stable across builds
    /// and platforms.
    pub fn hash(&self) -> u64 {
        crate::hash::hash(self)
    }

    /// [`KvStore::hash`] folded to 32 bits, as etcd's Maintenance.Hash answers.
    pub fn hash32(&self) -> u32 {
        crate::hash::fold(self.hash())
    }

    /// etcd's HashKV over key versions up to `revision` (0: now): the 32-bit hash and the
    /// revision it covers. Members that applied the same writes agree on it.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        self.key_history().hash_kv(revision)
    }

    /// The key history as it stands, in O(1): HashKV computed from it away from the
    /// apply path gives what [`KvStore::hash_kv`] gives now.
    pub fn key_history(&self) -> crate::KeyHistory {
        crate::KeyHistory::of(self)
    }
}

#[cfg(test)]
mod signed_tests {
    use super::*;
    use crate::auth::{AuthRequest, Permission, PermissionType};
    use crate::rpc::PutRequest;

    /// Runs commands as members run them: each at the next index, the member's own
    /// (client 0) or signed by client `id` as `signer` says.
    struct Log {
        kv: KvStore,
        index: u64,
    }

    impl Log {
        fn run(
            &mut self,
            command: Command,
            signed: Option<(u64, &SignedBy)>,
        ) -> Result<Response, KvError> {
            self.index += 1;
            let decoded = Ok(Envelope::new(1, command));
            let applied = match signed {
                Some((client, signer)) => {
                    let id = RequestId {
                        client,
                        seq: self.index,
                    };
                    self.kv.apply_signed(self.index, id, decoded, signer)
                }
                None => self
                    .kv
                    .apply_decoded(self.index, RequestId { client: 0, seq: 0 }, decoded),
            };
            match applied {
                Applied::Executed { result, .. } => result,
                other => panic!("not executed: {other:?}"),
            }
        }

        fn auth(&mut self, request: AuthRequest) {
            self.run(Command::Auth(request), None)
                .expect("an auth change");
        }
    }

    fn put(key: &str) -> Command {
        Command::Put(PutRequest::new(key.to_string(), "v"))
    }

    /// Users root and svc; svc's role may write app/ only.
    fn cluster() -> Log {
        let mut log = Log {
            kv: KvStore::new(),
            index: 0,
        };
        for name in ["root", "svc"] {
            log.auth(AuthRequest::UserAdd {
                name: name.into(),
                password_hash: Some("hash".into()),
            });
        }
        log.auth(AuthRequest::RoleAdd { name: "app".into() });
        log.auth(AuthRequest::RoleGrantPermission {
            role: "app".into(),
            permission: Permission {
                kind: PermissionType::ReadWrite,
                key: "app/".into(),
                range_end: "app0".into(),
            },
        });
        for (user, role) in [("root", "root"), ("svc", "app")] {
            log.auth(AuthRequest::UserGrantRole {
                user: user.into(),
                role: role.into(),
            });
        }
        log
    }

    fn enable(log: &mut Log) {
        log.auth(AuthRequest::Enable {
            token_secret: "secret".into(),
        });
    }

    #[test]
    fn a_client_bound_to_a_user_has_its_rights_once_auth_is_on() {
        let mut log = cluster();
        let svc = SignedBy {
            user: Some("svc".into()),
        };
        assert!(
            log.run(put("other"), Some((7, &svc))).is_ok(),
            "auth is off"
        );
        enable(&mut log);
        assert!(log.run(put("app/x"), Some((7, &svc))).is_ok());
        assert_eq!(
            log.run(put("other"), Some((7, &svc))),
            Err(KvError::PermissionDenied)
        );
        let unbound = SignedBy::default();
        assert!(
            log.run(put("other"), Some((8, &unbound))).is_ok(),
            "every right on keys"
        );
        let ghost = SignedBy {
            user: Some("ghost".into()),
        };
        assert_eq!(
            log.run(put("app/y"), Some((9, &ghost))),
            Err(KvError::UserNotFound)
        );
    }

    #[test]
    fn a_signed_request_never_manages_auth_nor_names_a_caller() {
        let mut log = cluster();
        let unbound = SignedBy::default();
        let disable = Command::Auth(AuthRequest::Disable);
        assert_eq!(
            log.run(disable, Some((7, &unbound))),
            Err(KvError::PermissionDenied)
        );
        enable(&mut log);
        let generation = log.kv.auth().user_generation("root").unwrap();
        let as_root = put("other").from_caller(Caller::User {
            name: "root".into(),
            generation,
        });
        let svc = SignedBy {
            user: Some("svc".into()),
        };
        assert_eq!(
            log.run(as_root.clone(), Some((7, &svc))),
            Err(KvError::PermissionDenied)
        );
        assert!(
            log.run(as_root, None).is_ok(),
            "a member's own caller stands"
        );
    }
}
