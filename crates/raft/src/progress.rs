//! A leader's view of each follower: how far its log matches, what to send next, and
//! how much is already on the wire.

use std::collections::VecDeque;

use ekmat_core::Time;

use crate::log::Snapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Searching for the last matching index: one message at a time.
    Probe,
    /// Matching index known: stream entries, up to the in-flight bound.
    Replicate,
    /// The entries the follower needs were compacted: sending the snapshot covering up
    /// to `index`, of which the follower has acknowledged `offset` bytes and has been
    /// sent `sent`.
    Snapshot { index: u64, offset: u64, sent: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log, durably on the follower.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    pub state: ReplicationState,
    /// In Probe: a probe is outstanding, so do not send another until it is answered or
    /// the next heartbeat.
    pub probe_sent: bool,
    /// The last probe sent carried entries: only an answer that advances the match
    /// ends probing then (a heartbeat's answer repeats the match already known).
    pub probe_carried: bool,
    /// Last index carried by each AppendEntries in flight, oldest first.
    inflight: VecDeque<u64>,
    /// When this follower last moved `match_index` forward (or we started tracking it).
    pub last_progress: Time,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest ReadIndex round this follower has confirmed.
    pub read_ack: u64,
    /// Highest commit index an append sent to this follower let it learn.
    pub commit_told: u64,
    /// The snapshot being sent, pinned until the transfer finishes (a newer one taken
    /// meanwhile would otherwise restart it forever).
    pub sending: Option<Snapshot>,
}

impl Progress {
    pub fn new(next_index: u64, now: Time) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            probe_carried: false,
            inflight: VecDeque::new(),
            last_progress: now,
            recent_active: false,
            read_ack: 0,
            commit_told: 0,
            sending: None,
        }
    }

    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ReplicationState::Probe => !self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() < max_inflight,
            ReplicationState::Snapshot { .. } => false,
        }
    }

    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// An AppendEntries covering up to `last` was sent.
    pub fn sent(&mut self, last: u64, carried_entries: bool) {
        match self.state {
            ReplicationState::Probe => {
                self.probe_sent = true;
                self.probe_carried = carried_entries;
            }
            ReplicationState::Replicate if carried_entries => {
                self.next_index = last + 1;
                self.inflight.push_back(last);
            }
            ReplicationState::Replicate | ReplicationState::Snapshot { .. } => {}
        }
    }

    /// The follower matches up to `index`. Returns true if that is news.
    pub fn accepted(&mut self, index: u64, now: Time) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.last_progress = now;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        match self.state {
            // Only an answer to the probe itself ends probing: one that advances the match,
            // or, for a probe without entries, one at its position. A heartbeat's answer
            // claims no more than the match already known.
            ReplicationState::Probe
                if advanced || (!self.probe_carried && index + 1 >= self.next_index) =>
            {
                self.become_replicate()
            }
            ReplicationState::Snapshot { index: at, .. } if index >= at => self.become_replicate(),
            _ => {}
        }
        advanced
    }

    /// The follower rejected a probe at `prev_index`; try `next` instead. Stale
    /// rejections (of messages sent before a newer decision) are ignored.
    pub fn rejected(&mut self, prev_index: u64, next: u64) -> bool {
        let stale = match self.state {
            ReplicationState::Replicate => prev_index < self.match_index,
            ReplicationState::Probe => prev_index + 1 != self.next_index,
            ReplicationState::Snapshot { .. } => true,
        };
        if stale {
            return false;
        }
        self.become_probe();
        self.next_index = next.clamp(self.match_index + 1, prev_index.max(self.match_index + 1));
        true
    }

    /// Start sending `snapshot`.
    pub fn become_snapshot(&mut self, snapshot: Snapshot) {
        self.state = ReplicationState::Snapshot {
            index: snapshot.index,
            offset: 0,
            sent: 0,
        };
        self.sending = Some(snapshot);
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.sending = None;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.sending = None;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_stream_within_the_inflight_bound() {
        let mut p = Progress::new(5, Time::ZERO);
        assert!(p.can_send(2));
        p.sent(6, true);
        assert!(!p.can_send(2), "one probe at a time");
        p.accepted(6, Time::ZERO);
        assert_eq!(p.state, ReplicationState::Replicate);
        p.sent(8, true);
        p.sent(10, true);
        assert!(!p.can_send(2));
        assert_eq!(p.next_index, 11);
        p.accepted(8, Time::ZERO);
        assert!(p.can_send(2));
    }

    #[test]
    fn rejection_backs_off_but_never_below_match() {
        let mut p = Progress::new(1, Time::ZERO);
        p.accepted(4, Time::ZERO);
        p.sent(9, true);
        assert!(p.rejected(9, 2));
        assert_eq!(p.state, ReplicationState::Probe);
        assert_eq!(p.next_index, 5);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(1, Time::ZERO);
        p.accepted(6, Time::ZERO);
        assert!(!p.rejected(3, 2));
        assert_eq!(p.state, ReplicationState::Replicate);
    }
}
