//! What nodes send each other: the protocol's own messages, and client requests a
//! member forwards to the leader (as etcd forwards proposals), with the leader's answers
//! to them. Forwarding lives in the runtime because every protocol needs it and none
//! should implement it.

use ekmat_core::{Rejection, Request, RequestId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Wire<M> {
    Protocol(M),
    /// A client request the sender could not order. The leader proposes it under the
    /// sender's request id; once committed, every member applies it and the sender
    /// answers its client then.
    Forward(Request),
    /// The leader could not order a forwarded request either.
    Refused {
        id: RequestId,
        reason: Rejection,
    },
    /// A forwarded read barrier passed: serve the read once `index` is applied.
    ReadIndex {
        id: RequestId,
        index: u64,
    },
    /// A forwarded administrative request (a membership change) completed.
    Done {
        id: RequestId,
    },
    /// Round-trip measurement: the receiver echoes `sent_us` back as a `Pong`.
    Ping {
        sent_us: u64,
    },
    Pong {
        sent_us: u64,
    },
}
