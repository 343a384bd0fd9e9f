//! The key-value state machine every protocol replicates. Commands arrive as opaque
//! bytes from the log, in order; applying them is deterministic, so every replica that
//! applies the same prefix holds the same map. Each client's requests execute at most
//! once: a repeated request id returns the recorded result instead of running again.

use std::collections::BTreeMap;

use bytes::Bytes;
use ekmat_core::RequestId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCommand {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    /// Swap in `new` if the current value equals `expected` (`None`: the key is absent).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    Delete {
        key: Bytes,
    },
}

impl KvCommand {
    pub fn key(&self) -> &Bytes {
        match self {
            KvCommand::Get { key }
            | KvCommand::Put { key, .. }
            | KvCommand::Cas { key, .. }
            | KvCommand::Delete { key } => key,
        }
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self, KvCommand::Get { .. })
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("commands always serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<KvCommand, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResult {
    Value(Option<Bytes>),
    Done,
    Swapped(bool),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value command: {0}")]
pub struct DecodeError(String);

/// What applying a logged command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Executed(KvResult),
    /// The same request ran before; this is its recorded result.
    Repeated(KvResult),
    /// An older request of a client that has since moved on: it never runs.
    Superseded,
    /// Bytes that are not a command. Deterministically ignored on every replica.
    Malformed(DecodeError),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
    /// Per client: its latest executed request and that request's result.
    sessions: BTreeMap<u64, (u64, KvResult)>,
    applied: u64,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Log index of the last command applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Record that `index` was applied without a command (a protocol no-op).
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    pub fn apply(&mut self, index: u64, id: RequestId, command: &[u8]) -> Applied {
        self.advance(index);
        if let Some((seq, result)) = self.sessions.get(&id.client) {
            if id.seq == *seq {
                return Applied::Repeated(result.clone());
            }
            if id.seq < *seq {
                return Applied::Superseded;
            }
        }
        let cmd = match KvCommand::decode(command) {
            Ok(cmd) => cmd,
            Err(e) => return Applied::Malformed(e),
        };
        let result = self.execute(cmd);
        self.sessions.insert(id.client, (id.seq, result.clone()));
        Applied::Executed(result)
    }

    fn advance(&mut self, index: u64) {
        assert_eq!(
            index,
            self.applied + 1,
            "state machine applied out of order: {index} after {}",
            self.applied
        );
        self.applied = index;
    }

    /// Run a read against the current state without logging it (ReadIndex reads).
    pub fn read(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    fn execute(&mut self, cmd: KvCommand) -> KvResult {
        match cmd {
            KvCommand::Get { key } => KvResult::Value(self.read(&key)),
            KvCommand::Put { key, value } => {
                self.map.insert(key, value);
                KvResult::Done
            }
            KvCommand::Cas { key, expected, new } => {
                let swapped = self.map.get(&key) == expected.as_ref();
                if swapped {
                    self.map.insert(key, new);
                }
                KvResult::Swapped(swapped)
            }
            KvCommand::Delete { key } => {
                self.map.remove(&key);
                KvResult::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn id(client: u64, seq: u64) -> RequestId {
        RequestId { client, seq }
    }

    fn run(kv: &mut KvStore, client: u64, seq: u64, cmd: KvCommand) -> Applied {
        let index = kv.applied_index() + 1;
        kv.apply(index, id(client, seq), &cmd.encode())
    }

    #[test]
    fn put_get_cas_delete() {
        let mut kv = KvStore::new();
        let k = b("k");
        run(
            &mut kv,
            1,
            1,
            KvCommand::Put {
                key: k.clone(),
                value: b("1"),
            },
        );
        let cas = |expected: Option<&str>, new: &str| KvCommand::Cas {
            key: b("k"),
            expected: expected.map(b),
            new: b(new),
        };
        assert_eq!(
            run(&mut kv, 1, 2, cas(Some("0"), "2")),
            Applied::Executed(KvResult::Swapped(false))
        );
        assert_eq!(
            run(&mut kv, 1, 3, cas(Some("1"), "2")),
            Applied::Executed(KvResult::Swapped(true))
        );
        assert_eq!(kv.read(b"k"), Some(b("2")));
        run(&mut kv, 1, 4, KvCommand::Delete { key: k.clone() });
        assert_eq!(
            run(&mut kv, 1, 5, cas(None, "3")),
            Applied::Executed(KvResult::Swapped(true))
        );
        assert_eq!(
            run(&mut kv, 1, 6, KvCommand::Get { key: k }),
            Applied::Executed(KvResult::Value(Some(b("3"))))
        );
    }

    #[test]
    fn requests_execute_at_most_once() {
        let mut kv = KvStore::new();
        let put = |v: &str| KvCommand::Put {
            key: b("k"),
            value: b(v),
        };
        assert_eq!(
            run(&mut kv, 7, 1, put("a")),
            Applied::Executed(KvResult::Done)
        );
        assert_eq!(
            run(&mut kv, 7, 2, put("b")),
            Applied::Executed(KvResult::Done)
        );
        assert_eq!(
            run(&mut kv, 7, 2, put("b")),
            Applied::Repeated(KvResult::Done)
        );
        assert_eq!(run(&mut kv, 7, 1, put("a")), Applied::Superseded);
        assert_eq!(kv.read(b"k"), Some(b("b")));
    }

    #[test]
    fn malformed_commands_are_skipped_not_fatal() {
        let mut kv = KvStore::new();
        assert!(matches!(
            kv.apply(1, id(1, 1), &[0xff, 0xff]),
            Applied::Malformed(_)
        ));
        assert_eq!(kv.applied_index(), 1);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn out_of_order_application_is_a_bug() {
        let mut kv = KvStore::new();
        kv.skip(2);
    }
}
