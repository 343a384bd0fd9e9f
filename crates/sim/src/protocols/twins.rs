//! Twins (Bano et al., 2020): two honest copies of one replica, with one identity and
//! one key, each talking to half of the cluster. Each copy follows the protocol; together
//! they equivocate the way a real misconfiguration (a failover that left the old
//! instance running) does.

use ekmat_core::{Effect, Effects, Input, NodeId, Replica, Time};
use ekmat_pbft::message::Message;
use ekmat_pbft::{Pbft, Write};

/// Which copy a peer talks to: the first copy has the even ids, the twin the odd ones.
pub fn talks_to_twin(peer: NodeId) -> bool {
    !peer.0.is_multiple_of(2)
}

/// The second copy. Its writes are durable at once (it has a disk of its own), and what
/// it executes goes nowhere: only the first copy serves clients.
pub struct Twin {
    replica: Pbft,
    out: Effects<Message, Write>,
}

impl Twin {
    pub fn new(of: &Pbft) -> Option<Twin> {
        Some(Twin {
            replica: Pbft::new(of.config().clone()).ok()?,
            out: Effects::new(),
        })
    }

    /// Step the twin; the messages it sends to its half of the cluster.
    pub fn step(
        &mut self,
        now: Time,
        wall_ms: u64,
        input: Input<Message>,
    ) -> Vec<(NodeId, Message)> {
        self.replica.observe_clock(wall_ms);
        let mut sends = Vec::new();
        let mut next = Some(input);
        while let Some(input) = next.take() {
            self.replica.step(now, input, &mut self.out);
            for e in self.out.drain() {
                match e {
                    Effect::Send { to, msg } if talks_to_twin(to) => sends.push((to, msg)),
                    Effect::Persist { seq, .. } => next = Some(Input::Persisted { seq }),
                    _ => {}
                }
            }
        }
        sends
    }
}
