//! At-most-once execution: per client, its latest executed request and that request's
//! result. A client retries a request with the same sequence number and moves on to a
//! higher one only after the previous one ended.

use std::collections::BTreeMap;

use ekmat_core::RequestId;
use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::error::KvError;

/// The client id of requests that are never deduplicated (e.g. etcd clients over gRPC,
/// which carry no session).
pub const ANONYMOUS_CLIENT: u64 = 0;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub seq: u64,
    pub result: Result<Response, KvError>,
}

/// What the sessions say about a request about to run.
pub(crate) enum Seen {
    New,
    Repeated(Result<Response, KvError>),
    Superseded,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sessions {
    pub by_client: BTreeMap<u64, Session>,
}

impl Sessions {
    pub fn check(&self, id: RequestId) -> Seen {
        if id.client == ANONYMOUS_CLIENT {
            return Seen::New;
        }
        match self.by_client.get(&id.client) {
            Some(s) if id.seq == s.seq => Seen::Repeated(s.result.clone()),
            Some(s) if id.seq < s.seq => Seen::Superseded,
            _ => Seen::New,
        }
    }

    pub fn record(&mut self, id: RequestId, result: &Result<Response, KvError>) {
        if id.client == ANONYMOUS_CLIENT {
            return;
        }
        let session = Session {
            seq: id.seq,
            result: result.clone(),
        };
        self.by_client.insert(id.client, session);
    }
}
