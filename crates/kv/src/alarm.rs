//! etcd's alarms: a member raises one (NOSPACE when its store outgrows its quota,
//! CORRUPT when its data cannot be trusted) and, being part of the replicated state, every
//! member then refuses the same writes at the same log position, as etcd's capped and
//! corrupt appliers do.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::KvError;
use crate::rpc::{RequestOp, ResponseHeader, TxnRequest};

/// etcd's `AlarmType`, numbered as in its API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// No alarm; in a Get it means "every alarm".
    None,
    /// The store exceeded a member's space quota: writes that grow it are refused.
    NoSpace,
    /// A member's data is known to be inconsistent: every write is refused.
    Corrupt,
}

/// What an [`AlarmRequest`] does (etcd's `AlarmRequest.AlarmAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlarmAction {
    Get,
    Activate,
    Deactivate,
}

/// etcd's `AlarmRequest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlarmRequest {
    pub action: AlarmAction,
    /// The member the alarm is about (etcd's member id); 0 in a Get.
    pub member_id: u64,
    pub alarm: AlarmType,
}

/// One raised alarm (etcd's `AlarmMember`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    pub member_id: u64,
    pub alarm: AlarmType,
}

/// The answer to an [`AlarmRequest`]: for a Get the alarms asked for; for an Activate the
/// alarm, raised now or before (as etcd answers); for a Deactivate the alarm cleared, if
/// it was raised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmResponse {
    pub header: ResponseHeader,
    pub alarms: Vec<AlarmMember>,
}

/// The raised alarms, ordered by member then type so every replica lists them alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Alarms {
    pub active: BTreeSet<AlarmMember>,
}

impl Alarms {
    /// Carry out `req` and return the alarms for the response.
    pub fn apply(&mut self, req: &AlarmRequest) -> Vec<AlarmMember> {
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        match req.action {
            AlarmAction::Get => self.get(req.alarm),
            // Raising "no alarm" would refuse nothing and mean nothing: ignored.
            AlarmAction::Activate if req.alarm == AlarmType::None => Vec::new(),
            AlarmAction::Activate => {
                self.active.insert(member);
                vec![member]
            }
            AlarmAction::Deactivate => {
                if self.active.remove(&member) {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The alarms of type `alarm` ([`AlarmType::None`]: all of them).
    pub fn get(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|a| alarm == AlarmType::None || a.alarm == alarm)
            .copied()
            .collect()
    }

    fn raised(&self, alarm: AlarmType) -> bool {
        self.active.iter().any(|a| a.alarm == alarm)
    }

    /// Refuse `command` if a raised alarm forbids it. CORRUPT stops every write (etcd's
    /// corrupt applier); NOSPACE stops what adds data, but deletes, revocations and
    /// compaction still run, since they are how an operator frees space.
    pub fn check(&self, command: &Command) -> Result<(), KvError> {
        if self.active.is_empty() {
            return Ok(());
        }
        if self.raised(AlarmType::Corrupt) && writes(command) {
            return Err(KvError::Corrupt);
        }
        if self.raised(AlarmType::NoSpace) && grows(command) {
            return Err(KvError::NoSpace);
        }
        Ok(())
    }
}

/// Commands etcd's corrupt applier refuses (lease keep-alives and expiry are not applied
/// commands in etcd, so they go on here too).
fn writes(command: &Command) -> bool {
    matches!(
        command,
        Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
    )
}

/// Commands that can add data: etcd's capped applier refuses puts, lease grants and txns
/// with a put on either branch.
fn grows(command: &Command) -> bool {
    match command {
        Command::Put(_) | Command::LeaseGrant(_) => true,
        Command::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// Whether a txn puts on either branch, nested txns included (etcd looks only at the top
/// level, which lets a nested put through; counting them refuses what grows the store).
pub fn txn_puts(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(nested) => txn_puts(nested),
        _ => false,
    })
}
