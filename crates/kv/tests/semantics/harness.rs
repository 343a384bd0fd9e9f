//! A store driven through its public API, one envelope at a time, as the log would.

use bytes::Bytes;
use ekmat_core::RequestId;
use ekmat_kv::*;

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

pub struct Harness {
    pub kv: KvStore,
    /// The clock the next envelope carries.
    pub now_ms: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            kv: KvStore::new(),
            now_ms: 0,
        }
    }

    /// Apply `command` as an anonymous client's request.
    pub fn run(&mut self, command: Command) -> (Result<Response, KvError>, Vec<Event>) {
        self.run_as(RequestId { client: 0, seq: 0 }, command)
    }

    pub fn run_as(
        &mut self,
        id: RequestId,
        command: Command,
    ) -> (Result<Response, KvError>, Vec<Event>) {
        match self.apply_as(id, command) {
            Applied::Executed { result, events } => (result, events),
            other => panic!("expected execution, got {other:?}"),
        }
    }

    pub fn apply_as(&mut self, id: RequestId, command: Command) -> Applied {
        let bytes = Envelope::new(self.now_ms, command).encode();
        let index = self.kv.applied_index() + 1;
        self.kv.apply(index, id, &bytes)
    }

    /// Let the clock reach `now_ms` with a tick. Returns the events (lease expiries).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        self.now_ms = now_ms;
        let (result, events) = self.run(Command::Tick);
        assert!(matches!(result, Ok(Response::Tick(_))));
        events
    }

    pub fn put(&mut self, key: &str, value: &str) -> PutResponse {
        self.put_req(PutRequest::new(b(key), b(value))).unwrap()
    }

    pub fn put_req(&mut self, req: PutRequest) -> Result<PutResponse, KvError> {
        match self.run(Command::Put(req)).0? {
            Response::Put(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    pub fn delete(&mut self, key: &str, range_end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest {
            key: b(key),
            range_end: b(range_end),
            prev_kv: true,
        };
        self.delete_req(req).unwrap()
    }

    pub fn delete_req(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
        match self.run(Command::DeleteRange(req)).0? {
            Response::DeleteRange(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    pub fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, KvError> {
        match self.run(Command::Txn(req)).0? {
            Response::Txn(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    pub fn compact(&mut self, revision: i64) -> Result<CompactionResponse, KvError> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        match self.run(Command::Compact(req)).0? {
            Response::Compact(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    pub fn grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, KvError> {
        match self
            .run(Command::LeaseGrant(LeaseGrantRequest { ttl, id }))
            .0?
        {
            Response::LeaseGrant(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    pub fn revoke(&mut self, id: i64) -> (Result<Response, KvError>, Vec<Event>) {
        self.run(Command::LeaseRevoke(LeaseRevokeRequest { id }))
    }

    pub fn keep_alive(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, KvError> {
        match self
            .run(Command::LeaseKeepAlive(LeaseKeepAliveRequest { id }))
            .0?
        {
            Response::LeaseKeepAlive(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    /// The key's current version, if it exists.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.get_at(key, 0)
    }

    pub fn get_at(&self, key: &str, revision: i64) -> Option<KeyValue> {
        let req = RangeRequest {
            revision,
            ..RangeRequest::new(b(key))
        };
        let mut resp = self.kv.range(&req).unwrap();
        assert!(resp.kvs.len() <= 1);
        resp.kvs.pop()
    }

    /// The keys in `[key, range_end)` (etcd conventions), in key order.
    pub fn list(&self, key: &str, range_end: &str) -> Vec<String> {
        keys(
            &self
                .kv
                .range(&RangeRequest::range(b(key), b(range_end)))
                .unwrap()
                .kvs,
        )
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }
}
