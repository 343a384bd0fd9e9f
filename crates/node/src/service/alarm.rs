//! Maintenance.Alarm and the alarms Status reports. Listing reads the state machine after
//! a read barrier; raising and clearing go through the log, so every member agrees on
//! which alarms are raised and refuses the same writes (see `ekmat_kv`'s alarms).

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{AlarmAction, AlarmMember, AlarmRequest, AlarmType, Command, Response};
use tonic::Status;

use super::{Services, call_error, unexpected_answer};
use crate::query::{Answer, Query};

impl Services {
    pub(super) async fn alarm_request(
        &self,
        r: pb::AlarmRequest,
    ) -> Result<pb::AlarmResponse, Status> {
        let alarm = from_pb(r.alarm());
        let action = match r.action() {
            pb::alarm_request::AlarmAction::Get => return self.alarms(alarm, true).await,
            pb::alarm_request::AlarmAction::Activate => AlarmAction::Activate,
            pb::alarm_request::AlarmAction::Deactivate => AlarmAction::Deactivate,
        };
        let command = Command::Alarm(AlarmRequest {
            action,
            member_id: r.member_id,
            alarm,
        });
        match self.write(command).await.map_err(|e| call_error(&e))? {
            Response::Alarm(a) => Ok(pb::AlarmResponse {
                header: Some(self.header(a.header.revision)),
                alarms: a.alarms.iter().map(to_pb).collect(),
            }),
            _ => Err(unexpected_answer()),
        }
    }

    /// The raised alarms of type `alarm` (NONE: all).
    async fn alarms(
        &self,
        alarm: AlarmType,
        linearizable: bool,
    ) -> Result<pb::AlarmResponse, Status> {
        match self.read(Query::Alarms { alarm }, linearizable).await {
            Ok(Answer::Alarms { header, alarms }) => Ok(pb::AlarmResponse {
                header: Some(self.header(header.revision)),
                alarms: alarms.iter().map(to_pb).collect(),
            }),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }

    /// What Status lists as errors, as etcd does: "no leader" when this member knows
    /// none, then every alarm this member has applied, in protobuf text form.
    pub(super) async fn status_errors(&self, has_leader: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if !has_leader {
            errors.push("etcdserver: no leader".to_string());
        }
        if let Ok(r) = self.alarms(AlarmType::None, false).await {
            errors.extend(r.alarms.iter().map(text));
        }
        errors
    }
}

fn from_pb(alarm: pb::AlarmType) -> AlarmType {
    match alarm {
        pb::AlarmType::None => AlarmType::None,
        pb::AlarmType::Nospace => AlarmType::NoSpace,
        pb::AlarmType::Corrupt => AlarmType::Corrupt,
    }
}

fn to_pb(a: &AlarmMember) -> pb::AlarmMember {
    let alarm = match a.alarm {
        AlarmType::None => pb::AlarmType::None,
        AlarmType::NoSpace => pb::AlarmType::Nospace,
        AlarmType::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: alarm as i32,
    }
}

/// An alarm as etcd's Status prints it: gogoproto's compact text form of `AlarmMember`,
/// trailing space included.
fn text(a: &pb::AlarmMember) -> String {
    format!(
        "memberID:{} alarm:{} ",
        a.member_id,
        a.alarm().as_str_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_print_as_etcds_status_prints_them() {
        let a = to_pb(&AlarmMember {
            member_id: 12,
            alarm: AlarmType::NoSpace,
        });
        assert_eq!(text(&a), "memberID:12 alarm:NOSPACE ");
    }
}
