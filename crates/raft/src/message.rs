//! What Raft replicas say to each other. The sender is known from the transport.

use crate::log::Entry;

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Message {
    Vote(VoteRequest),
    VoteResponse(VoteResponse),
    Append(AppendRequest),
    AppendResponse(AppendResponse),
    /// A piece of the leader's snapshot, for a follower whose next entries were compacted.
    Snapshot(SnapshotChunk),
    /// A follower's acknowledgement of snapshot bytes received so far. Once the whole
    /// snapshot is installed it answers with an accepting `AppendResponse` instead.
    SnapshotAck(SnapshotAck),
    /// The leader hands over: campaign now, without waiting for a timeout.
    TimeoutNow(TimeoutNow),
}

impl Message {
    pub fn term(&self) -> u64 {
        match self {
            Message::Vote(m) => m.term,
            Message::VoteResponse(m) => m.term,
            Message::Append(m) => m.term,
            Message::AppendResponse(m) => m.term,
            Message::Snapshot(m) => m.term,
            Message::SnapshotAck(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::Vote(m) if m.pre_vote => "PreVote",
            Message::Vote(_) => "Vote",
            Message::VoteResponse(m) if m.pre_vote => "PreVoteResp",
            Message::VoteResponse(_) => "VoteResp",
            Message::Append(m) if m.entries.is_empty() => "Heartbeat",
            Message::Append(_) => "Append",
            Message::AppendResponse(_) => "AppendResp",
            Message::Snapshot(_) => "Snapshot",
            Message::SnapshotAck(_) => "SnapshotAck",
            Message::TimeoutNow(_) => "TimeoutNow",
        }
    }
}

/// RequestVote, or a pre-vote: "would you vote for me in `term`?" asked without raising
/// the sender's own term.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VoteRequest {
    pub term: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub pre_vote: bool,
    /// The candidate's clock, echoed back to time the round trip (0: not timed).
    pub sent_at_us: u64,
    /// The candidate campaigns because the leader handed over: answer even if the
    /// leader was heard from recently.
    pub transfer: bool,
}

/// Leadership transfer: the leader's term, so a stale one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TimeoutNow {
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VoteResponse {
    /// For a granted pre-vote, the term asked about; otherwise the voter's term.
    pub term: u64,
    pub granted: bool,
    pub pre_vote: bool,
    pub sent_at_us: u64,
}

/// AppendEntries. With no entries it is a heartbeat that still carries the consistency
/// check, the commit index and a read-confirmation sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppendRequest {
    pub term: u64,
    pub prev_index: u64,
    pub prev_term: u64,
    pub entries: Vec<Entry>,
    pub commit: u64,
    /// Echoed back so the leader knows which ReadIndex rounds this follower confirmed.
    pub read_seq: u64,
    /// The leader's clock when it sent this, echoed back to time the round trip (0: not
    /// timed; only with adaptive timeouts).
    pub sent_at_us: u64,
    /// The election timeout the leader measured for the cluster (0: none).
    pub election_timeout_us: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AppendResponse {
    pub term: u64,
    pub outcome: AppendOutcome,
    pub read_seq: u64,
    pub sent_at_us: u64,
}

/// What a follower's answer echoes from the request it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Echo {
    pub read_seq: u64,
    pub sent_at_us: u64,
}

impl Echo {
    pub fn of(req: &AppendRequest) -> Echo {
        Echo {
            read_seq: req.read_seq,
            sent_at_us: req.sent_at_us,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `match_index`, durably.
    Accepted { match_index: u64 },
    /// The entry at `prev_index` did not match. The hint lets the leader skip a whole
    /// conflicting term at once: the follower's log ends before `hint_index`, or holds
    /// `hint_term` from `hint_index` up to `prev_index`.
    Rejected {
        prev_index: u64,
        hint_index: u64,
        hint_term: Option<u64>,
    },
}

/// InstallSnapshot (Raft §7), one chunk at a time: bytes `offset..offset + data.len()` of
/// the snapshot covering entries up to `index` (whose term is `last_term`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    pub term: u64,
    pub index: u64,
    pub last_term: u64,
    /// The configuration in force at `index`.
    pub membership: ekmat_core::Membership,
    pub offset: u64,
    pub total: u64,
    pub data: bytes::Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SnapshotAck {
    pub term: u64,
    pub index: u64,
    /// Bytes of the snapshot the follower holds, from the start.
    pub received: u64,
}
