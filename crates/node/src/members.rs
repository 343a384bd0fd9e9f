//! The member table: who is in the cluster, at which addresses, and who is a learner.
//!
//! It starts from the configuration file (the founding members, or for a node joining a
//! running cluster the members it was told of) and then follows the configurations the
//! protocol commits: an added member's record travels through the log as the change's
//! context, so every member learns the same addresses at the same log index. The table
//! is part of the state-machine snapshot, so a member restored from a snapshot knows
//! members whose changes were compacted away.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use ekmat_core::{ChangeAction, Membership, MembershipChange, NodeId};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: u32,
    /// Empty for a member added at run time that has not been named.
    pub name: String,
    pub peer: SocketAddr,
    /// Unknown for a member added at run time (etcd shows it as not started).
    pub client: Option<SocketAddr>,
    pub learner: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    records: BTreeMap<u32, MemberRecord>,
}

/// What the driver hands the protocol as a snapshot: the member table and the
/// key-value store's own snapshot.
#[derive(Serialize, Deserialize)]
struct NodeSnapshot {
    members: Vec<MemberRecord>,
    kv: Bytes,
}

impl Members {
    /// The members the configuration file names.
    pub fn from_config(cfg: &NodeConfig) -> Members {
        let records = cfg
            .members
            .iter()
            .map(|m| {
                let record = MemberRecord {
                    id: m.id,
                    name: m.name.clone(),
                    peer: m.peer,
                    client: Some(m.client),
                    learner: false,
                };
                (m.id, record)
            })
            .collect();
        Members { records }
    }

    /// This node's own record, as its configuration file gives it.
    pub fn own_record(cfg: &NodeConfig) -> MemberRecord {
        let me = cfg.me();
        MemberRecord {
            id: me.id,
            name: me.name.clone(),
            peer: me.peer,
            client: Some(me.client),
            learner: false,
        }
    }

    pub fn list(&self) -> Vec<MemberRecord> {
        self.records.values().cloned().collect()
    }

    pub fn get(&self, id: u32) -> Option<&MemberRecord> {
        self.records.get(&id)
    }

    /// Follow a committed configuration. Returns the members added or updated.
    pub fn apply(
        &mut self,
        membership: &Membership,
        changes: &[MembershipChange],
    ) -> Vec<MemberRecord> {
        let mut added = Vec::new();
        for c in changes {
            let carries_record = matches!(
                c.action,
                ChangeAction::AddVoter | ChangeAction::AddLearner | ChangeAction::Update
            );
            if carries_record && let Some(record) = decode_context(&c.context) {
                added.push(record.clone());
                self.records.insert(c.node.0, record);
            }
        }
        // The configuration is the truth about who is in and who is a learner.
        self.records
            .retain(|id, _| membership.contains(NodeId(*id)));
        for (id, r) in self.records.iter_mut() {
            r.learner = membership.learners.contains(&NodeId(*id));
        }
        added
    }

    /// The snapshot the protocol keeps: this table and the store's snapshot.
    pub fn wrap_snapshot(&self, kv: Bytes) -> Bytes {
        let buf = self.wrap_with(Vec::new(), kv.len(), |mut buf| {
            buf.extend_from_slice(&kv);
            buf
        });
        Bytes::from(buf)
    }

    /// [`Members::wrap_snapshot`] of `source.encode()`, with the store encoded straight
    /// into the snapshot's buffer: a copy of hundreds of megabytes fewer.
    pub fn snapshot_of(&self, source: &ekmat_kv::SnapshotSource) -> Bytes {
        Bytes::from(self.snapshot_into(Vec::new(), source, source.encoded_len()))
    }

    /// [`Members::snapshot_of`] a store whose encoding is `kv_len` bytes
    /// (`source.encoded_len()`, a walk of the store that encoding would repeat),
    /// written into `buf` (emptied first), which grows as it must.
    pub fn snapshot_into(
        &self,
        buf: Vec<u8>,
        source: &ekmat_kv::SnapshotSource,
        kv_len: usize,
    ) -> Vec<u8> {
        self.wrap_with(buf, kv_len, |buf| source.encode_into(buf))
    }

    /// The length of a snapshot whose store's encoding is `kv_len` bytes.
    pub fn snapshot_len(&self, kv_len: usize) -> usize {
        self.head_len(kv_len) + kv_len
    }

    /// The bytes before the store's in a snapshot whose store takes `kv_len`.
    fn head_len(&self, kv_len: usize) -> usize {
        postcard::experimental::serialized_size(&self.list())
            .and_then(|m| Ok(m + postcard::experimental::serialized_size(&kv_len)?))
            .expect("snapshots always serialize")
    }

    /// A [`NodeSnapshot`]'s encoding, written field by field: the table, then the
    /// store's `kv_len` bytes as postcard frames a byte string (its length as a varint,
    /// then the bytes), which `write_kv` appends to the buffer it is given.
    fn wrap_with(
        &self,
        mut buf: Vec<u8>,
        kv_len: usize,
        write_kv: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Vec<u8> {
        let members = self.list();
        let head = self.head_len(kv_len);
        buf.clear();
        buf.reserve_exact(head + kv_len);
        let buf = postcard::to_extend(&members, buf)
            .and_then(|buf| postcard::to_extend(&kv_len, buf))
            .expect("snapshots always serialize");
        let buf = write_kv(buf);
        assert_eq!(
            buf.len(),
            head + kv_len,
            "the store wrote the bytes it sized"
        );
        buf
    }

    /// Split a snapshot into the member table and the store's snapshot.
    pub fn unwrap_snapshot(data: &[u8]) -> Result<(Members, Bytes), String> {
        let s: NodeSnapshot =
            postcard::from_bytes(data).map_err(|e| format!("malformed node snapshot: {e}"))?;
        let records = s.members.into_iter().map(|r| (r.id, r)).collect();
        Ok((Members { records }, s.kv))
    }
}

/// An id above every member's in `records`, for a member being added.
pub fn next_id(records: &[MemberRecord]) -> u32 {
    records.iter().map(|r| r.id + 1).max().unwrap_or(0)
}

/// The record a membership change carries through the log.
pub fn encode_context(record: &MemberRecord) -> Bytes {
    Bytes::from(postcard::to_stdvec(record).expect("records always serialize"))
}

fn decode_context(context: &[u8]) -> Option<MemberRecord> {
    postcard::from_bytes(context).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32, learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            name: String::new(),
            peer: SocketAddr::from(([127, 0, 0, 1], 20_000 + id as u16)),
            client: None,
            learner,
        }
    }

    fn founders() -> Members {
        let records = (0..3).map(|i| (i, record(i, false))).collect();
        Members { records }
    }

    #[test]
    fn added_members_come_from_the_change_and_removed_ones_go() {
        let mut m = founders();
        assert_eq!(next_id(&m.list()), 3);
        let add = MembershipChange {
            action: ChangeAction::AddLearner,
            node: NodeId(3),
            context: encode_context(&record(3, true)),
        };
        let mut config = Membership::of([0, 1, 2].map(NodeId));
        config.learners.insert(NodeId(3));
        let added = m.apply(&config, &[add]);
        assert_eq!(added, vec![record(3, true)]);
        assert!(m.get(3).unwrap().learner);
        let promoted = Membership::of([0, 1, 3].map(NodeId));
        m.apply(&promoted, &[]);
        assert!(!m.get(3).unwrap().learner);
        assert!(m.get(2).is_none(), "no longer in the configuration");
    }

    #[test]
    fn a_snapshot_written_field_by_field_is_the_serialized_struct() {
        let m = founders();
        let kv = Bytes::from(vec![7u8; 300]);
        let whole = NodeSnapshot {
            members: m.list(),
            kv: kv.clone(),
        };
        let expected = postcard::to_stdvec(&whole).unwrap();
        assert_eq!(&m.wrap_snapshot(kv)[..], &expected[..]);
        let source = ekmat_kv::KvStore::default().snapshot_source();
        let store = source.encode();
        assert_eq!(m.snapshot_of(&source), m.wrap_snapshot(store));
        // A buffer used before (a spare snapshot's) is emptied, not appended to.
        let used = m.snapshot_into(vec![9; 4096], &source, source.encoded_len());
        assert_eq!(&used[..], &m.snapshot_of(&source)[..]);
        for members in [m, Members::default()] {
            let sized = members.snapshot_len(source.encoded_len());
            assert_eq!(sized, members.snapshot_of(&source).len());
        }
    }

    #[test]
    fn the_table_travels_with_the_snapshot() {
        let m = founders();
        let data = m.wrap_snapshot(Bytes::from_static(b"kv"));
        let (back, kv) = Members::unwrap_snapshot(&data).unwrap();
        assert_eq!((back, &kv[..]), (m, &b"kv"[..]));
        assert!(Members::unwrap_snapshot(b"\xff\xff").is_err());
    }
}
