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
        let snapshot = NodeSnapshot {
            members: self.list(),
            kv,
        };
        // One copy of the store's bytes, into a buffer of the right size (see
        // `SnapshotSource::encode`).
        let len =
            postcard::experimental::serialized_size(&snapshot).expect("snapshots always serialize");
        let bytes = postcard::to_extend(&snapshot, Vec::with_capacity(len))
            .expect("snapshots always serialize");
        Bytes::from(bytes)
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
    fn the_table_travels_with_the_snapshot() {
        let m = founders();
        let data = m.wrap_snapshot(Bytes::from_static(b"kv"));
        let (back, kv) = Members::unwrap_snapshot(&data).unwrap();
        assert_eq!((back, &kv[..]), (m, &b"kv"[..]));
        assert!(Members::unwrap_snapshot(b"\xff\xff").is_err());
    }
}
